//! systemd notifications (`sd_notify`) from a real `sensorgate run`, read
//! from a Unix datagram socket the test binds as `NOTIFY_SOCKET`: READY
//! once the stages run, STATUS, WATCHDOG pings while healthy and none once
//! a stage hangs (test-only fault injection), RELOADING/READY around a
//! SIGHUP, STOPPING on SIGTERM.

mod support;

use std::thread;
use std::time::Duration;

use sensorgate::demo::pty::{Pty, SimSensor};
use support::{GatewayProcess, NotifySocket, Rig, excerpt, wait_for_records, wait_until};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn ready_status_and_watchdog_pings_until_a_stage_hangs() {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().unwrap();
    let config = rig.gateway_config("gw.toml", &[("bike", pty.path())], "");
    let notify = NotifySocket::bind(&rig.dir.join("notify.sock"));
    let mut gw = GatewayProcess::start_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", notify.path()),
            // WatchdogSec=2s: pings every second; a stage busy for 5 s
            // (the floor) is stuck.
            ("WATCHDOG_USEC", "2000000"),
            ("SENSORGATE_FAULT", "hang-seal-after:150"),
        ],
    );

    let (ready_at, ready) = notify
        .wait_for("READY=1", WAIT)
        .unwrap_or_else(|| panic!("no READY; log:\n{}", excerpt(&gw.log())));
    assert!(ready.contains("STATUS=sensors "), "{ready}");
    assert!(
        gw.log().contains("started"),
        "READY only after the stages started"
    );

    let writer = SimSensor::spawn(pty.writer().unwrap(), 100, None);
    assert_eq!(writer.join().unwrap().unwrap(), 100);
    assert_eq!(wait_for_records(&rig, &sub, 100, WAIT).count(), 100);
    let pinged = wait_until(WAIT, Duration::from_millis(50), || {
        notify.count_after("WATCHDOG=1", ready_at) >= 3
    });
    assert!(pinged, "watchdog pings:\n{}", notify.shown());
    let status = notify
        .wait_for("broker connected", WAIT)
        .unwrap_or_else(|| panic!("no connected STATUS:\n{}", notify.shown()))
        .1;
    assert!(status.contains("sensors 1/1 open"), "{status}");
    assert!(status.contains("records/min"), "{status}");

    // Past 150 records the seal stage hangs mid-work: after the stuck limit
    // the pings stop and STATUS says where.
    let more = SimSensor::spawn(pty.writer().unwrap(), 100, None);
    assert!(
        gw.wait_for_log("fault injection: the seal stage hangs now", WAIT),
        "log:\n{}",
        excerpt(&gw.log())
    );
    let (stuck_at, stuck) = notify
        .wait_for("STUCK: stage seal", WAIT)
        .unwrap_or_else(|| panic!("no STUCK status:\n{}", notify.shown()));
    assert!(stuck.contains("watchdog pings stopped"), "{stuck}");
    // Two watchdog periods later: not one ping since.
    thread::sleep(Duration::from_secs(4));
    assert_eq!(
        notify.count_after("WATCHDOG=1", stuck_at),
        0,
        "pings after the hang:\n{}",
        notify.shown()
    );
    assert!(
        gw.log().contains("a stage is stuck"),
        "{}",
        excerpt(&gw.log())
    );

    // SIGTERM: STOPPING, then the drain gives up on the hung stage within
    // drain_timeout and the process exits.
    let code = gw.stop();
    assert!(
        notify
            .wait_for("STOPPING=1", Duration::from_secs(1))
            .is_some(),
        "{}",
        notify.shown()
    );
    assert_ne!(code, -1, "exited by itself, not killed");
    eprintln!("notifications:\n{}", notify.shown());
    drop(more);
}

#[test]
fn reload_and_stop_are_announced() {
    let rig = Rig::new();
    let pty = Pty::open().unwrap();
    let config = rig.gateway_config("gw.toml", &[("bike", pty.path())], "");
    let notify = NotifySocket::bind(&rig.dir.join("notify.sock"));
    let mut gw = GatewayProcess::start_with_env(&config, &[("NOTIFY_SOCKET", notify.path())]);
    let (ready_at, _) = notify
        .wait_for("READY=1", WAIT)
        .unwrap_or_else(|| panic!("no READY; log:\n{}", excerpt(&gw.log())));
    // No WATCHDOG_USEC: no pings, but STATUS keeps coming.
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    let (reload_at, reloading) = notify
        .wait_for("RELOADING=1", WAIT)
        .unwrap_or_else(|| panic!("no RELOADING:\n{}", notify.shown()));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready_again = wait_until(WAIT, Duration::from_millis(20), || {
        notify.count_after("READY=1", reload_at) >= 1
    });
    assert!(ready_again, "{}", notify.shown());
    assert!(
        notify
            .all()
            .iter()
            .any(|(t, m)| *t > reload_at && m.contains("STATUS=TLS material reloaded")),
        "{}",
        notify.shown()
    );
    assert_eq!(notify.count_after("WATCHDOG=1", ready_at), 0);
    assert_eq!(gw.stop(), 0);
    let (_, stopping) = notify
        .wait_for("STOPPING=1", Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no STOPPING:\n{}", notify.shown()));
    assert!(stopping.contains("STATUS=stopping: sending"), "{stopping}");
}
