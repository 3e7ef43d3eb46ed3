//! Modbus RTU polling against the physical limit of the bus (issue 22):
//! `cargo bench --bench modbus` (about 4 minutes, plus the build).
//!
//! The real gateway (`sensorgate run`) polls N slaves of R holding
//! registers each, served by pymodbus on a pseudo-terminal pair. A PTY
//! moves bytes at once whatever its baud rate, so the server holds each
//! answer back as long as a real bus would take: the request's 8
//! characters, the silence between frames and the answer's 5 + 2R
//! characters, at 11 bits a character (8E1 or 8N2); the silence is 3.5
//! characters, 1.75 ms above 19200 baud (the Modbus serial line
//! specification, 2.5.1.1). The bus-limited maximum is then one poll per
//! request, silence, answer and the silence before the next request. The
//! gateway's polls per second come from its metrics
//! (`sensorgate_sensor_records_total`), counted over a window after a
//! warm-up.
//!
//! The baseline, in the same run and against the same server: a bare
//! synchronous client (below) that sends each request as soon as the
//! silence after the last answer is over, timed by the operating system's
//! sleep rather than an async timer. The gap between it and the limit is
//! the simulated server's own overhead (Python); the gap between the
//! gateway and it is the gateway's.
//!
//! Scenarios: all N slaves answering at 9600, 19200 and 115200 baud; and at
//! 19200 and 9600 with one of the N absent (its polls time out, then back
//! off): the others' polls per second against their share of the limit
//! (limit / N). Prints `name value unit` lines. Arguments that are baud
//! rates (`cargo bench --bench modbus -- 115200`) keep only those.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use std::io::{Read, Write};

use sensorgate::modbus::bus::silence;
use serde_json::json;
use support::modbus::Server;

const SLAVES: u32 = 4;
const REGISTERS: u16 = 100;
const BITS: f64 = 11.0;
const WARM_UP: Duration = Duration::from_secs(3);

/// Polls per second the bus allows at `baud`, all slaves together.
fn limit(baud: u32) -> f64 {
    let chars = 8.0 + 5.0 + 2.0 * f64::from(REGISTERS);
    let gaps = 2.0 * silence(baud, BITS as u32).as_secs_f64();
    1.0 / (chars * BITS / f64::from(baud) + gaps)
}

/// The server for `baud` with the slaves not in `absent`.
fn server(baud: u32, absent: &[u32]) -> Server {
    let regs: Vec<u16> = (0..REGISTERS).collect();
    let units: serde_json::Map<String, serde_json::Value> = (1..=SLAVES)
        .filter(|u| !absent.contains(u))
        .map(|u| (u.to_string(), json!({ "holding": regs })))
        .collect();
    Server::start(&json!({ "baud": baud, "pace_bits": BITS as u32, "units": units }))
}

/// The baseline: polls per second of a bare client that asks the slaves
/// in turn for their R registers, each request right after the silence.
fn bare_client(baud: u32, window: Duration) -> f64 {
    let server = server(baud, &[]);
    let mut port = tokio_serial::new(server.path().to_string_lossy(), baud)
        .timeout(Duration::from_secs(2))
        .open()
        .expect("the bus");
    let crc = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);
    let gap = silence(baud, BITS as u32);
    let mut answer = vec![0u8; 5 + 2 * usize::from(REGISTERS)];
    let mut poll = |unit: u8| {
        let mut request = vec![unit, 3, 0, 0];
        request.extend(REGISTERS.to_be_bytes());
        request.extend(crc.checksum(&request).to_le_bytes());
        port.write_all(&request).expect("a request");
        port.read_exact(&mut answer).expect("an answer");
        assert_eq!(&answer[..3], &[unit, 3, (2 * REGISTERS) as u8]);
        std::thread::sleep(gap);
    };
    let warm = Instant::now();
    while warm.elapsed() < WARM_UP {
        poll(1);
    }
    let (start, mut polls) = (Instant::now(), 0u32);
    while start.elapsed() < window {
        poll((polls % SLAVES) as u8 + 1);
        polls += 1;
    }
    f64::from(polls) / start.elapsed().as_secs_f64()
}

/// Each answering slave's polls per second over `window`, with the slaves
/// in `absent` configured but not on the bus.
fn measure(baud: u32, absent: &[u32], window: Duration) -> Vec<f64> {
    let server = server(baud, absent);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let keys = dir.path().join("keys");
    let gateway_key = sensorgate::seal::keygen(&keys, "gateway").expect("gateway key");
    let recipient = sensorgate::seal::keygen(&keys, "recipient").expect("recipient key");
    let metrics = support::free_port();
    let mut sensors = String::new();
    for u in 1..=SLAVES {
        sensors += &format!(
            "[[sensor]]\nname = \"m{u}\"\ndevice = {:?}\nbaud = {baud}\nframing = \"modbus_rtu\"\n\
             unit = {u}\npoll = \"10ms\"\nmax_gap = {REGISTERS}\nregisters = [{{ name = \"r\", address = 0 }}, \
             {{ name = \"s\", address = {} }}]\n\n",
            server.path(),
            REGISTERS - 1,
        );
    }
    // No broker: records wait in the memory queue; polling does not.
    let config = format!(
        "[gateway]\nid = \"bench\"\nstate_dir = {:?}\n\n{sensors}\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {}\ntls = false\n\n\
         [seal]\nsigning_key = {:?}\nrecipient_key = {:?}\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n[log]\nlevel = \"info\"\n",
        dir.path().join("state"),
        support::free_port(),
        gateway_key.key_path,
        recipient.pub_path,
    );
    let path = dir.path().join("sensorgate.toml");
    std::fs::write(&path, config).expect("the configuration");
    let mut gw = support::GatewayProcess::start(&path);
    let answering: Vec<u32> = (1..=SLAVES).filter(|u| !absent.contains(u)).collect();
    let count = || -> Vec<f64> {
        let (_, body) = support::http_get(metrics, "/metrics").expect("the metrics endpoint");
        answering
            .iter()
            .map(|u| {
                let name = format!("sensorgate_sensor_records_total{{sensor=\"m{u}\"}} ");
                body.lines()
                    .find_map(|l| l.strip_prefix(&name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0.0)
            })
            .collect()
    };
    let ready = support::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        support::http_get(metrics, "/metrics").is_some()
    });
    assert!(ready, "no metrics endpoint; log:\n{}", gw.log());
    std::thread::sleep(WARM_UP);
    let (t0, c0) = (Instant::now(), count());
    std::thread::sleep(window);
    let (t1, c1) = (Instant::now(), count());
    let seconds = (t1 - t0).as_secs_f64();
    assert_eq!(gw.stop(), 0, "the gateway's log:\n{}", gw.log());
    let rates: Vec<f64> = c0.iter().zip(&c1).map(|(a, b)| (b - a) / seconds).collect();
    assert!(
        rates.iter().all(|&r| r > 0.0),
        "a slave made no records: {rates:?}\n{}",
        gw.log()
    );
    rates
}

/// How long a scenario at `baud` counts polls: longer at 9600, where a
/// poll takes a quarter of a second.
fn window(baud: u32) -> Duration {
    Duration::from_secs(if baud == 9600 { 30 } else { 15 })
}

/// Polls per second, one per slave, for a `name value unit` line.
fn listed(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let start = Instant::now();
    // `cargo bench --bench modbus -- 115200`: only the scenarios at the
    // baud rates named (cargo adds `--bench` itself).
    let only: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let wanted = |baud: &u32| only.is_empty() || only.contains(baud);
    for baud in [9600, 19_200, 115_200].into_iter().filter(wanted) {
        let window = window(baud);
        let bare = bare_client(baud, window);
        let rates = measure(baud, &[], window);
        let total: f64 = rates.iter().sum();
        let max = limit(baud);
        println!("modbus_{baud}_limit_polls_per_s {max:.2} polls/s");
        println!("modbus_{baud}_bare_client_polls_per_s {bare:.2} polls/s");
        println!("modbus_{baud}_bare_client_vs_limit {:.3} ratio", bare / max);
        println!("modbus_{baud}_polls_per_s {total:.2} polls/s");
        println!("modbus_{baud}_vs_limit {:.3} ratio", total / max);
        println!("modbus_{baud}_vs_bare_client {:.3} ratio", total / bare);
        println!(
            "modbus_{baud}_per_slave_polls_per_s {} polls/s",
            listed(&rates)
        );
    }
    for baud in [9600, 19_200].into_iter().filter(wanted) {
        let window = window(baud);
        let rates = measure(baud, &[SLAVES], window);
        let share = limit(baud) / f64::from(SLAVES);
        let worst = rates.iter().copied().fold(f64::INFINITY, f64::min);
        println!("modbus_{baud}_one_dead_share_polls_per_s {share:.2} polls/s");
        println!(
            "modbus_{baud}_one_dead_others_polls_per_s {} polls/s",
            listed(&rates)
        );
        println!(
            "modbus_{baud}_one_dead_worst_vs_share {:.3} ratio",
            worst / share
        );
    }
    eprintln!(
        "modbus bench: done in {:.0} s",
        start.elapsed().as_secs_f64()
    );
}
