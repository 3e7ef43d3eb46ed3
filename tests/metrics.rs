//! `[metrics] listen`: a running gateway serves Prometheus text on
//! `GET /metrics`; the test scrapes it over TCP and parses every sample.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use sensorgate::demo::pty::{Pty, sim_line};
use support::{GatewayProcess, Rig, excerpt, free_port, wait_for_records, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// One HTTP/1.0 GET; the status code and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    support::http_get(port, path)
}

/// `name{labels}` -> value, for every sample line; panics on a line that
/// is neither a comment nor a sample.
fn parse(body: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        out.insert(key.to_string(), value);
    }
    out
}

#[test]
fn a_scrape_shows_sensors_rejections_queues_spool_and_broker() {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().unwrap();
    let port = free_port();
    let config = rig.gateway_config(
        "gw.toml",
        &[("bike", pty.path())],
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut gw = GatewayProcess::start(&config);
    let mut w = pty.writer().unwrap();
    for i in 0..50 {
        writeln!(w, "{}", sim_line(i)).unwrap();
    }
    writeln!(w, "1,2").unwrap();
    assert_eq!(wait_for_records(&rig, &sub, 50, WAIT).count(), 50);

    let mut samples = BTreeMap::new();
    let settled = wait_until(WAIT, Duration::from_millis(100), || {
        let Some((200, body)) = get(port, "/metrics") else {
            return false;
        };
        samples = parse(&body);
        samples.get("sensorgate_records_acked_total") == Some(&50.0)
    });
    assert!(settled, "{samples:#?}\nlog:\n{}", excerpt(&gw.log()));
    let at = |k: &str| {
        *samples
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing in {samples:#?}"))
    };
    assert_eq!(at("sensorgate_sensor_records_total{sensor=\"bike\"}"), 50.0);
    assert_eq!(
        at("sensorgate_sensor_rejected_frames_total{sensor=\"bike\",reason=\"columns\"}"),
        1.0
    );
    assert_eq!(
        at("sensorgate_sensor_rejected_frames_total{sensor=\"bike\",reason=\"checksum\"}"),
        0.0
    );
    assert_eq!(at("sensorgate_sensor_open{sensor=\"bike\"}"), 1.0);
    assert_eq!(at("sensorgate_broker_connected"), 1.0);
    assert_eq!(at("sensorgate_queue_depth{queue=\"batches\"}"), 0.0);
    assert_eq!(at("sensorgate_spool_messages"), 0.0);
    assert!(at("sensorgate_acks_total") >= 1.0);
    assert!(at("sensorgate_publishes_total") >= at("sensorgate_acks_total"));
    assert_eq!(at("sensorgate_connects_total"), 1.0);
    let expiry = at("sensorgate_client_cert_expiry_seconds");
    assert!(
        expiry > 86_400.0,
        "the test certificate lasts longer: {expiry}"
    );
    assert!(
        samples
            .keys()
            .any(|k| k.starts_with("sensorgate_build_info{version=\"")),
        "{samples:#?}"
    );
    assert_eq!(get(port, "/").map(|(c, _)| c), Some(404));
    assert_eq!(gw.stop(), 0);
    assert!(
        get(port, "/metrics").is_none(),
        "the endpoint goes away with the process"
    );
}

#[test]
fn a_taken_port_is_logged_and_the_gateway_runs_without_metrics() {
    let rig = Rig::new();
    let pty = Pty::open().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = rig.gateway_config(
        "gw.toml",
        &[("bike", pty.path())],
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut gw = GatewayProcess::start(&config);
    assert!(
        gw.wait_for_log("cannot serve metrics; running without them", WAIT),
        "{}",
        excerpt(&gw.log())
    );
    assert!(gw.wait_for_log("connected to broker", WAIT), "{}", gw.log());
    assert_eq!(gw.stop(), 0);
}
