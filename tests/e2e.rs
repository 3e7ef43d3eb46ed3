//! End to end: a real `sensorgate run` process reads pseudo-terminals,
//! publishes over mutual TLS to a real mosquitto, and a subscriber opens
//! what arrived, record by record, by sequence number.

mod support;

use std::time::Duration;

use sensorgate::demo::pki::{self, Pki};
use sensorgate::demo::pty::{Pty, SimSensor, sim_line};
use sensorgate::serial::format::{Decode, Decoded};
use support::{ENCRYPTED, GatewayProcess, Rig, wait_for_records};

const WAIT: Duration = Duration::from_secs(60);

/// Writes lines `0..count` of the simulated sensor and waits for the
/// writer (it only finishes once the gateway has read them).
fn write_lines(pty: &Pty, count: u64) {
    let writer = SimSensor::spawn(pty.writer().unwrap(), count, None);
    assert_eq!(writer.join().unwrap().unwrap(), count);
}

/// The fields the simulated sensor wrote in line `i`, as JSON.
fn written(i: u64) -> Vec<(String, serde_json::Value)> {
    let decoder = sensorgate::demo::pty::sim_decoder();
    let Ok(Decoded::Fields(f)) = decoder.decode(sim_line(i).as_bytes()) else {
        panic!("sim line {i} does not decode")
    };
    f.into_iter()
        .map(|f| (f.name.to_string(), f.value.to_json()))
        .collect()
}

#[test]
fn records_arrive_verified_in_order_without_gaps_or_duplicates() {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().unwrap();
    let config = rig.gateway_config("gw.toml", &[("bike", pty.path())], "");
    let mut gw = GatewayProcess::start(&config);
    write_lines(&pty, 1000);

    let opened = wait_for_records(&rig, &sub, 1000, WAIT);
    assert!(
        opened.rejected.is_empty(),
        "rejected: {:?}",
        opened.rejected
    );
    assert_eq!(opened.duplicates, 0);
    assert_eq!(
        opened.seqs("bike"),
        (0..1000).collect::<Vec<_>>(),
        "log:\n{}",
        gw.log()
    );
    for r in &opened.records["bike"] {
        let fields: Vec<(String, serde_json::Value)> = r
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(fields, written(r.seq), "record {}", r.seq);
        assert_eq!(r.gateway, "test-gw");
    }

    // The encrypted columns are not readable in what the broker carried:
    // each message is a COSE_Sign1 (format version 2) whose payload names
    // the clear columns only.
    for payload in sub.received() {
        assert_eq!(payload[0], 0xd2, "a tagged COSE_Sign1");
        let text = String::from_utf8_lossy(&payload);
        for name in ENCRYPTED {
            assert!(!text.contains(name), "{name} in clear in the message");
        }
        // The text key "enc" (CBOR 0x63 'e' 'n' 'c').
        assert!(
            payload.windows(4).any(|w| w == b"\x63enc"),
            "every message carries encrypted columns"
        );
    }
    assert_eq!(gw.stop(), 0, "log:\n{}", gw.log());
    assert!(
        gw.log().contains("records_acked=1000"),
        "log:\n{}",
        gw.log()
    );
}

#[test]
fn several_sensors_run_at_once_each_with_its_own_sequence() {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let ptys: Vec<Pty> = (0..3).map(|_| Pty::open().unwrap()).collect();
    let names = ["bike", "rower", "treadmill"];
    let sensors: Vec<(&str, &std::path::Path)> = names
        .iter()
        .zip(&ptys)
        .map(|(n, p)| (*n, p.path()))
        .collect();
    let config = rig.gateway_config("gw.toml", &sensors, "");
    let mut gw = GatewayProcess::start(&config);
    let writers: Vec<_> = ptys
        .iter()
        .map(|p| SimSensor::spawn(p.writer().unwrap(), 300, None))
        .collect();
    for w in writers {
        assert_eq!(w.join().unwrap().unwrap(), 300);
    }
    let opened = wait_for_records(&rig, &sub, 900, WAIT);
    for name in names {
        assert_eq!(opened.seqs(name), (0..300).collect::<Vec<_>>(), "{name}");
    }
    assert_eq!(gw.stop(), 0);
}

#[test]
fn records_read_while_the_broker_is_down_arrive_when_it_returns() {
    let mut rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().unwrap();
    let config = rig.gateway_config("gw.toml", &[("bike", pty.path())], "");
    let mut gw = GatewayProcess::start(&config);
    write_lines(&pty, 100);
    assert_eq!(wait_for_records(&rig, &sub, 100, WAIT).count(), 100);

    rig.broker.stop();
    assert!(
        gw.wait_for_log("broker connection lost", Duration::from_secs(20)),
        "log:\n{}",
        gw.log()
    );
    let writer = SimSensor::spawn(pty.writer().unwrap(), 400, None);
    // All 500 read and sealed while the broker is away: they wait in the spool.
    assert!(
        support::wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            gw.log().contains("records_sealed=500")
        }),
        "log:\n{}",
        gw.log()
    );
    rig.broker.restart();
    writer.join().unwrap().unwrap();

    // All 500: the 100 from before the outage and the 400 from during it
    // (waiting for only 400 raced the last messages of the backlog).
    let opened = wait_for_records(&rig, &sub, 500, WAIT);
    support::sweep_delivery(&opened, &[("bike", 500)], "spooled, sent on reconnect");
    // Lines 0..100 again, since the writer restarts at line 0; what
    // matters is the sequence: 100 before the outage, 400 during it.
    assert_eq!(
        opened.seqs("bike"),
        (0..500).collect::<Vec<_>>(),
        "log:\n{}",
        gw.log()
    );
    assert!(gw.log().contains("reconnected to broker"));
    assert_eq!(gw.stop(), 0);
}

#[test]
fn records_read_before_the_broker_was_ever_reachable_arrive_when_it_comes_up() {
    let mut rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().unwrap();
    let config = rig.gateway_config("gw.toml", &[("bike", pty.path())], "");
    // The broker is away before the gateway starts: starting offline is
    // normal, the spool keeps what is read.
    rig.broker.stop();
    let mut gw = GatewayProcess::start(&config);
    let writer = SimSensor::spawn(pty.writer().unwrap(), 500, None);
    assert!(
        support::wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
            gw.log().contains("records_sealed=500")
        }),
        "log:\n{}",
        gw.log()
    );
    assert!(
        gw.log().contains("cannot connect to broker"),
        "{}",
        gw.log()
    );
    rig.broker.restart();
    writer.join().unwrap().unwrap();
    let opened = wait_for_records(&rig, &sub, 500, WAIT);
    support::sweep_delivery(
        &opened,
        &[("bike", 500)],
        "spooled until the first connection",
    );
    assert_eq!(
        opened.seqs("bike"),
        (0..500).collect::<Vec<_>>(),
        "log:\n{}",
        gw.log()
    );
    assert!(gw.log().contains("connected to broker"));
    assert_eq!(gw.stop(), 0);
}

#[test]
fn sequence_numbers_continue_after_a_restart_in_the_same_epoch() {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().unwrap();
    let config = rig.gateway_config("gw.toml", &[("bike", pty.path())], "");
    let mut gw = GatewayProcess::start(&config);
    write_lines(&pty, 150);
    assert_eq!(wait_for_records(&rig, &sub, 150, WAIT).count(), 150);
    assert_eq!(gw.stop(), 0);

    let mut gw = GatewayProcess::start(&config);
    write_lines(&pty, 150);
    let opened = wait_for_records(&rig, &sub, 300, WAIT);
    assert_eq!(
        opened.seqs("bike"),
        (0..300).collect::<Vec<_>>(),
        "log:\n{}",
        gw.log()
    );
    let epochs: std::collections::BTreeSet<_> = sub
        .received()
        .iter()
        .map(|p| rig.opener().open(p).unwrap().epoch)
        .collect();
    assert_eq!(epochs.len(), 1, "one epoch across restarts");
    assert_eq!(gw.stop(), 0);
}

#[test]
fn gateway_with_a_certificate_from_another_ca_is_refused() {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let rogue = Pki::new("rogue CA").unwrap();
    let rogue_id = rogue.client("test-gateway").unwrap();
    let server = rogue.server(&["localhost"]).unwrap();
    let rogue_files = pki::write_files(&rig.dir.join("rogue"), &rogue, &server, &rogue_id).unwrap();
    let pty = Pty::open().unwrap();
    let config = rig.gateway_config("gw.toml", &[("bike", pty.path())], "");
    // Same configuration, but the client certificate and key of the rogue CA.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            &format!("{:?}", rig.tls.client_cert),
            &format!("{:?}", rogue_files.client_cert),
        )
        .replace(
            &format!("{:?}", rig.tls.client_key),
            &format!("{:?}", rogue_files.client_key),
        )
        .replace("drain_timeout = \"10s\"", "drain_timeout = \"1s\"");
    std::fs::write(&config, text).unwrap();

    let mut gw = GatewayProcess::start(&config);
    write_lines(&pty, 20);
    assert!(
        gw.wait_for_log("cannot connect to broker", Duration::from_secs(20)),
        "log:\n{}",
        gw.log()
    );
    assert!(sub.wait_for_count(1, Duration::from_secs(2)).is_empty());
    assert!(
        rig.broker.log().to_lowercase().contains("certificate"),
        "mosquitto log:\n{}",
        rig.broker.log()
    );
    // Refused, not crashed: it stops cleanly when told to.
    assert_eq!(gw.stop(), 0, "log:\n{}", gw.log());
}
