//! Serial ingestion on real pseudo-terminals: an NMEA receiver, a COBS
//! binary sensor and a CSV sensor at once, with line noise between their
//! frames; and a device that is unplugged and comes back behind its
//! by-id style symlink while another sensor keeps going.

mod support;

use std::fs::File;
use std::io::Write;
use std::time::Duration;

use sensorgate::config::{Crc, Endian};
use sensorgate::demo::pty::{Pty, sim_decoder, sim_line};
use sensorgate::serial::format::{Decode, Decoded};
use sensorgate::serial::framing::cobs::encode_frame;
use sensorgate::serial::framing::nmea::sentence;
use support::{
    GatewayProcess, Opened, Rig, assert_no_panic, excerpt, wait_for_records, wait_until,
};

const WAIT: Duration = Duration::from_secs(60);

/// Sentence `i` of the simulated receiver: GGA, RMC and VTG in turn; the
/// latitude's minutes grow with `i` so each record can be checked.
fn gps_sentence(i: u64) -> String {
    let minutes = 7.0 + i as f64 * 0.001;
    let lat = format!("48{minutes:06.3}");
    match i % 3 {
        0 => sentence(&format!(
            "GPGGA,123519.00,{lat},N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
        )),
        1 => sentence(&format!(
            "GPRMC,123519.00,A,{lat},S,01131.000,W,022.4,084.4,251126,003.1,W"
        )),
        _ => sentence("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K"),
    }
}

/// The binary frame `i` of the soil sensor: u32 counter, i16 temperature
/// in 0.01 °C, u16 humidity in 0.1 %.
fn soil_payload(i: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&(i as u32).to_le_bytes());
    p.extend_from_slice(&(-500 + i as i16).to_le_bytes());
    p.extend_from_slice(&(400 + i as u16).to_le_bytes());
    p
}

fn field<'a>(r: &'a sensorgate::seal::OpenedRecord, name: &str) -> &'a serde_json::Value {
    r.fields.get(name).unwrap_or_else(|| {
        panic!(
            "record {} of {} has no {name}: {:?}",
            r.seq, r.sensor, r.fields
        )
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// The `rejected="..."` text of a sensor's last stats line.
fn rejected(log: &str, sensor: &str) -> String {
    let needle = format!("sensor={sensor} ");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("sensor stats") && l.contains(&needle))
        .unwrap_or_else(|| panic!("no stats line for {sensor}:\n{}", excerpt(log)));
    let start = line.find("rejected=\"").expect("rejected field") + "rejected=\"".len();
    let end = start + line[start..].find('"').expect("closing quote");
    line[start..end].to_string()
}

fn write_all(w: &mut File, bytes: &[u8]) {
    w.write_all(bytes).expect("write to the pty master");
}

/// What a consumer received for `sensor`, checked to be exactly `0..n`.
fn assert_all(opened: &Opened, sensor: &str, n: u64, log: &str) {
    assert_eq!(
        opened.seqs(sensor),
        (0..n).collect::<Vec<_>>(),
        "{sensor}; log:\n{}",
        excerpt(log)
    );
}

#[test]
fn nmea_cobs_and_csv_sensors_at_once_with_noise_between_frames() {
    const N: u64 = 300;
    let rig = Rig::new();
    let sub = rig.subscriber();
    let (gps, soil, bike) = (
        Pty::open().unwrap(),
        Pty::open().unwrap(),
        Pty::open().unwrap(),
    );
    let tables = format!(
        "[[sensor]]\nname = \"gps\"\ndevice = {:?}\nbaud = 9600\nframing = \"nmea\"\nformat = \"nmea\"\nmax_frame = \"128B\"\n\n\
         [[sensor]]\nname = \"soil\"\ndevice = {:?}\nbaud = 115200\nparity = \"even\"\nframing = \"cobs\"\nformat = \"binary\"\ncrc = \"crc16\"\n\
         layout = [{{ name = \"n\", type = \"u32\" }}, {{ name = \"temp\", type = \"i16\", scale = 0.01 }}, {{ name = \"rh\", type = \"u16\", scale = 0.1 }}]\n\n\
         [[sensor]]\nname = \"bike\"\ndevice = {:?}\nbaud = 921600\ncolumns = [{}]\n\n",
        gps.path(),
        soil.path(),
        bike.path(),
        sensorgate::demo::pty::sim_columns()
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let config = rig.gateway_config_with("gw.toml", &tables, "");
    let mut gw = GatewayProcess::start(&config);

    // Every tenth frame is preceded by noise: for gps a run of junk and a
    // sentence with a wrong checksum, for soil a frame that is not valid
    // COBS/CRC and one whose CRC is wrong, for bike a line that is not
    // text and one with too few columns.
    let (mut g, mut s, mut b) = (
        gps.writer().unwrap(),
        soil.writer().unwrap(),
        bike.writer().unwrap(),
    );
    let mut noise = 0;
    for i in 0..N {
        if i % 10 == 5 {
            noise += 1;
            write_all(&mut g, b"\x01\x02junk\xff\r\n");
            let mut bad = gps_sentence(i).into_bytes();
            bad[8] ^= 0x01;
            write_all(&mut g, &bad);
            write_all(&mut s, &[0x07, 0x33, 0x44, 0x00]);
            let good = encode_frame(&soil_payload(i), Crc::Crc16, Endian::Little);
            let mut raw = cobs::decode_vec(&good[..good.len() - 1]).unwrap();
            *raw.last_mut().unwrap() ^= 0x10;
            let mut bad = cobs::encode_vec(&raw);
            bad.push(0);
            write_all(&mut s, &bad);
            write_all(&mut b, b"\xff\xfe\xfd\n1,2\n");
        }
        write_all(&mut g, gps_sentence(i).as_bytes());
        write_all(
            &mut s,
            &encode_frame(&soil_payload(i), Crc::Crc16, Endian::Little),
        );
        write_all(&mut b, format!("{}\n", sim_line(i)).as_bytes());
    }

    let opened = wait_for_records(&rig, &sub, 3 * N as usize, WAIT);
    let log = gw.log();
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
    support::sweep_delivery(
        &opened,
        &[("gps", N), ("soil", N), ("bike", N)],
        "garbage rejected and counted",
    );
    for sensor in ["gps", "soil", "bike"] {
        assert_all(&opened, sensor, N, &log);
    }
    for r in &opened.records["gps"] {
        let i = r.seq;
        let lat = 48.0 + (7.0 + i as f64 * 0.001) / 60.0;
        match i % 3 {
            0 => {
                assert_eq!(field(r, "sentence"), "GGA");
                assert!(close(field(r, "lat").as_f64().unwrap(), lat), "{r:?}");
                assert!(close(field(r, "lon").as_f64().unwrap(), 11.0 + 31.0 / 60.0));
                assert_eq!(field(r, "satellites"), 8);
                assert_eq!(field(r, "fix_quality"), 1);
            }
            1 => {
                assert_eq!(field(r, "sentence"), "RMC");
                assert!(close(field(r, "lat").as_f64().unwrap(), -lat), "{r:?}");
                assert!(close(
                    field(r, "lon").as_f64().unwrap(),
                    -(11.0 + 31.0 / 60.0)
                ));
                assert_eq!(field(r, "valid"), true);
                assert_eq!(field(r, "utc"), "2026-11-25T12:35:19.00Z");
            }
            _ => {
                assert_eq!(field(r, "sentence"), "VTG");
                assert!(close(field(r, "speed_kmh").as_f64().unwrap(), 10.2));
            }
        }
    }
    for r in &opened.records["soil"] {
        let i = r.seq;
        assert_eq!(field(r, "n"), i);
        let temp = field(r, "temp").as_f64().unwrap();
        assert!((temp - (-500.0 + i as f64) * 0.01).abs() < 1e-9, "{r:?}");
        let rh = field(r, "rh").as_f64().unwrap();
        assert!((rh - (400.0 + i as f64) * 0.1).abs() < 1e-9, "{r:?}");
    }
    let decoder = sim_decoder();
    for r in &opened.records["bike"] {
        let Ok(Decoded::Fields(want)) = decoder.decode(sim_line(r.seq).as_bytes()) else {
            panic!("sim line {}", r.seq)
        };
        for f in want {
            assert_eq!(field(r, &f.name), &f.value.to_json(), "bike {}", r.seq);
        }
    }

    assert_eq!(gw.stop(), 0, "log:\n{}", excerpt(&gw.log()));
    let log = gw.log();
    assert_no_panic(&log);
    assert_eq!(
        rejected(&log, "gps"),
        format!("garbage={noise} checksum={noise}")
    );
    let soil_rejected = rejected(&log, "soil");
    let soil_total: u64 = soil_rejected
        .split(' ')
        .filter(|p| p.starts_with("cobs=") || p.starts_with("crc="))
        .map(|p| p.split('=').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(soil_total, 2 * noise, "{soil_rejected}");
    assert!(
        soil_rejected.contains(&format!("crc={noise}")),
        "{soil_rejected}"
    );
    assert_eq!(
        rejected(&log, "bike"),
        format!("not_text={noise} columns={noise}")
    );
    assert!(log.contains("frame rejected"), "rejections are logged");
}

#[test]
fn an_unplugged_device_is_found_again_through_its_symlink_and_others_go_on() {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let link = rig.dir.join("usb-FTDI_test-if00-port0");
    let first = Pty::open().unwrap();
    std::os::unix::fs::symlink(first.path(), &link).unwrap();
    let other = Pty::open().unwrap();
    let config = rig.gateway_config(
        "gw.toml",
        &[("plugged", link.as_path()), ("steady", other.path())],
        "",
    );
    let mut gw = GatewayProcess::start(&config);

    let mut w = first.writer().unwrap();
    for i in 0..100 {
        write_all(&mut w, format!("{}\n", sim_line(i)).as_bytes());
    }
    let opened = wait_for_records(&rig, &sub, 100, WAIT);
    assert_eq!(opened.seqs("plugged").len(), 100);
    // Half a line, then the adapter is pulled: the half must be dropped and
    // counted, never glued to what comes after the replug.
    write_all(&mut w, b"12.5,8");
    std::thread::sleep(Duration::from_millis(300));
    drop(w);
    drop(first);
    std::fs::remove_file(&link).unwrap();
    assert!(
        gw.wait_for_log("serial device lost", WAIT),
        "log:\n{}",
        excerpt(&gw.log())
    );

    // The other sensor keeps going while the first is away.
    let steady = sensorgate::demo::pty::SimSensor::spawn(other.writer().unwrap(), 100, Some(100.0));
    let before = sub.received().len();
    let got_more = wait_until(WAIT, Duration::from_millis(50), || {
        support::open_all(&rig, &sub.received())
            .seqs("steady")
            .len()
            >= 100
    });
    assert!(
        got_more,
        "steady stalled while plugged was away; log:\n{}",
        excerpt(&gw.log())
    );
    assert!(sub.received().len() > before);
    assert!(
        !gw.log().contains("serial device back"),
        "plugged came back too early"
    );
    steady.join().unwrap().unwrap();

    // Plugged in again: another pty, the same link.
    let second = Pty::open().unwrap();
    std::os::unix::fs::symlink(second.path(), &link).unwrap();
    assert!(
        gw.wait_for_log("serial device back", WAIT),
        "log:\n{}",
        excerpt(&gw.log())
    );
    let mut w = second.writer().unwrap();
    for i in 100..200 {
        write_all(&mut w, format!("{}\n", sim_line(i)).as_bytes());
    }
    let opened = wait_for_records(&rig, &sub, 300, WAIT);
    let log = gw.log();
    support::sweep_delivery(
        &opened,
        &[("plugged", 200), ("steady", 100)],
        "device found again",
    );
    assert_all(&opened, "plugged", 200, &log);
    assert_all(&opened, "steady", 100, &log);
    let decoder = sim_decoder();
    for r in &opened.records["plugged"] {
        let Ok(Decoded::Fields(want)) = decoder.decode(sim_line(r.seq).as_bytes()) else {
            panic!("sim line {}", r.seq)
        };
        for f in want {
            assert_eq!(field(r, &f.name), &f.value.to_json(), "plugged {}", r.seq);
        }
    }
    assert_eq!(gw.stop(), 0);
    let log = gw.log();
    assert_no_panic(&log);
    assert_eq!(rejected(&log, "plugged"), "partial=1");
    assert_eq!(rejected(&log, "steady"), "none");
    let resolved = format!("resolved={}", second.path().display());
    assert!(
        log.contains(&resolved),
        "the log names the device behind the link"
    );
}

#[test]
fn a_required_device_that_is_missing_stops_the_start() {
    let rig = Rig::new();
    let missing = rig.dir.join("no-such-tty");
    let tables = format!(
        "[[sensor]]\nname = \"must\"\ndevice = {missing:?}\nrequired = true\ncolumns = [\"heart_rate\", \"incline\", \"resistance\"]\n\n"
    );
    let config = rig.gateway_config_with("gw.toml", &tables, "");
    let mut gw = GatewayProcess::start(&config);
    let code = gw.wait_for_exit(WAIT);
    let log = gw.log();
    assert_eq!(code, Some(66), "log:\n{}", excerpt(&log));
    assert!(log.contains("required = true"), "{log}");
    assert!(log.contains(&missing.display().to_string()), "{log}");

    // Not required: the start goes on and the device is retried.
    let config = rig.gateway_config_with("gw2.toml", &tables.replace("required = true\n", ""), "");
    let mut gw = GatewayProcess::start(&config);
    assert!(
        gw.wait_for_log("cannot open serial device; retrying", WAIT),
        "{}",
        gw.log()
    );
    assert_eq!(gw.stop(), 0);
}
