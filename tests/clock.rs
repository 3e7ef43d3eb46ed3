//! Time without a real-time clock (issue 19): a real gateway whose clock
//! is days behind and not synchronised (a fake clock and a fake
//! synchronisation flag, `SENSORGATE_FAKE_CLOCK` and `[time]
//! synchronized_flag`), then set and synchronised. What a real subscriber
//! received is opened record by record: the records stamped before are
//! marked, and corrected from the first batch after.

mod support;

use std::time::{Duration, SystemTime};

use sensorgate::demo::pty::{Pty, SimSensor};
use support::{GatewayProcess, NotifySocket, Rig, excerpt, wait_until};

const WAIT: Duration = Duration::from_secs(60);
const DAYS_BEHIND: u64 = 3;

fn parse(ts: &serde_json::Value) -> SystemTime {
    sensorgate::record::parse_ts(ts.as_str().expect("a timestamp")).expect("RFC 3339")
}

/// `t` is within `slack` of `[from, to]`.
fn within(t: SystemTime, from: SystemTime, to: SystemTime, slack: Duration) -> bool {
    t + slack >= from && t <= to + slack
}

#[test]
fn records_stamped_before_the_clock_is_synchronised_are_marked_and_corrected() {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().unwrap();
    let flag = rig.dir.join("synchronized");
    let fake_clock = rig.dir.join("fake-clock");
    let behind = DAYS_BEHIND * 86_400;
    std::fs::write(&fake_clock, format!("-{behind}")).unwrap();
    let config = rig.gateway_config(
        "gw.toml",
        &[("bike", pty.path())],
        &format!("[time]\nsynchronized_by = \"flag\"\nsynchronized_flag = {flag:?}\n"),
    );
    let notify = NotifySocket::bind(&rig.dir.join("notify.sock"));
    let mut gw = GatewayProcess::start_with_env(
        &config,
        &[
            ("SENSORGATE_FAKE_CLOCK", fake_clock.to_str().unwrap()),
            ("NOTIFY_SOCKET", notify.path()),
        ],
    );
    assert!(
        gw.wait_for_log("clock not synchronised", WAIT),
        "{}",
        excerpt(&gw.log())
    );
    notify
        .wait_for("clock not synchronised", WAIT)
        .unwrap_or_else(|| panic!("STATUS never said it: {}", notify.shown()));

    // 200 records read while the clock is three days behind.
    let before_from = SystemTime::now();
    let writer = SimSensor::spawn(pty.writer().unwrap(), 200, None);
    assert_eq!(writer.join().unwrap().unwrap(), 200);
    assert!(
        wait_until(WAIT, Duration::from_millis(50), || gw
            .log()
            .contains("records_sealed=200")),
        "{}",
        excerpt(&gw.log())
    );
    let before_to = SystemTime::now();

    // NTP sets the clock and the time daemon says so.
    std::fs::write(&fake_clock, "0").unwrap();
    std::fs::write(&flag, "").unwrap();
    assert!(
        gw.wait_for_log("clock synchronised", WAIT),
        "{}",
        excerpt(&gw.log())
    );
    let after_from = SystemTime::now();
    let writer = SimSensor::spawn(pty.writer().unwrap(), 100, None);
    assert_eq!(writer.join().unwrap().unwrap(), 100);
    let payloads = wait_until(WAIT, Duration::from_millis(100), || {
        support::open_all(&rig, &sub.received()).count() >= 300
    });
    assert!(payloads, "{}", excerpt(&gw.log()));
    let after_to = SystemTime::now();
    assert_eq!(gw.stop(), 0, "{}", excerpt(&gw.log()));

    // `open`, as an operator runs it on what the broker carried.
    let stream: Vec<u8> = sub.received().concat();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let summary =
        sensorgate::seal::open_stream(&stream[..], &mut out, &mut err, &mut rig.opener()).unwrap();
    let err = String::from_utf8(err).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..300).collect::<Vec<_>>(), "{err}");
    assert_eq!((summary.unsynced, summary.corrected), (200, 200), "{err}");
    let behind = Duration::from_secs(behind);
    let slack = Duration::from_secs(2);
    for line in &lines {
        let seq = line["seq"].as_u64().unwrap();
        let ts = parse(&line["ts"]);
        if seq < 200 {
            assert_eq!(line["ts_synced"], false, "{line}");
            // Stamped three days early, corrected to when it was read.
            let stamped = parse(&line["ts_stamped"]);
            assert!(
                within(stamped + behind, before_from, before_to, slack),
                "{line}"
            );
            assert!(within(ts, before_from, before_to, slack), "{line}");
        } else {
            assert!(line.get("ts_synced").is_none(), "{line}");
            assert!(line.get("ts_stamped").is_none(), "{line}");
            assert!(within(ts, after_from, after_to, slack), "{line}");
        }
    }
    assert!(
        // Three days, to the millisecond the two clocks were read at.
        err.contains("corrected: test-gw/bike epoch")
            && ["+3days\n", "+3days 1ms\n", "+2days 23h 59m 59s 999ms\n"]
                .iter()
                .any(|shift| err.contains(&format!("times moved by {shift}"))),
        "{err}"
    );
}

#[test]
fn a_broker_refused_on_certificate_dates_is_retried_as_soon_as_the_clock_is_set() {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().unwrap();
    let flag = rig.dir.join("synchronized");
    let fake_clock = rig.dir.join("fake-clock");
    // Three days behind: the broker's certificate (valid from an hour ago)
    // is not valid yet, as far as this gateway can tell.
    std::fs::write(&fake_clock, format!("-{}", DAYS_BEHIND * 86_400)).unwrap();
    let config = rig.gateway_config(
        "gw.toml",
        &[("bike", pty.path())],
        &format!("[time]\nsynchronized_by = \"flag\"\nsynchronized_flag = {flag:?}\n"),
    );
    // A backoff of ten minutes: only the clock can make it retry sooner.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("reconnect_min = \"100ms\"", "reconnect_min = \"10min\"")
        .replace("reconnect_max = \"1s\"", "reconnect_max = \"10min\"");
    assert!(text.contains("reconnect_max = \"10min\""));
    std::fs::write(&config, text).unwrap();
    let mut gw = GatewayProcess::start_with_env(
        &config,
        &[("SENSORGATE_FAKE_CLOCK", fake_clock.to_str().unwrap())],
    );
    assert!(
        gw.wait_for_log("cannot connect to broker", WAIT),
        "{}",
        excerpt(&gw.log())
    );
    let log = gw.log();
    assert!(
        log.contains("not valid now") && log.contains("clock is wrong"),
        "{}",
        excerpt(&log)
    );
    // What is read meanwhile is kept.
    let writer = SimSensor::spawn(pty.writer().unwrap(), 50, None);
    assert_eq!(writer.join().unwrap().unwrap(), 50);
    assert!(
        wait_until(WAIT, Duration::from_millis(50), || gw
            .log()
            .contains("records_sealed=50")),
        "{}",
        excerpt(&gw.log())
    );
    assert!(sub.received().is_empty());

    std::fs::write(&fake_clock, "0").unwrap();
    std::fs::write(&flag, "").unwrap();
    // Well within the ten minutes of backoff.
    let delivered = wait_until(WAIT, Duration::from_millis(100), || {
        support::open_all(&rig, &sub.received()).count() >= 50
    });
    assert!(delivered, "{}", excerpt(&gw.log()));
    let opened = support::open_all(&rig, &sub.received());
    assert_eq!(opened.seqs("bike"), (0..50).collect::<Vec<_>>());
    assert!(
        gw.log()
            .contains("clock synchronised: connecting to the broker again now")
    );
    assert_eq!(gw.stop(), 0, "{}", excerpt(&gw.log()));
}

/// What the records of one message say: the first seq and the spread of
/// their times.
fn message_times(rig: &Rig, payload: &[u8]) -> Vec<(u64, SystemTime)> {
    let opened = rig.opener().open_untracked(payload).expect("opens");
    opened
        .records
        .iter()
        .map(|r| (r.seq, sensorgate::record::parse_ts(&r.ts).unwrap()))
        .collect()
}

#[test]
fn wall_clock_jumps_of_hours_leave_batching_the_watchdog_and_delivery_alone() {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().unwrap();
    let fake_clock = rig.dir.join("fake-clock");
    std::fs::write(&fake_clock, "0").unwrap();
    // A trusted clock (an RTC, say) that someone sets by hand: forwards
    // five hours, then back ten.
    let config = rig.gateway_config(
        "gw.toml",
        &[("bike", pty.path())],
        "[time]\nsynchronized_by = \"trust\"\n",
    );
    let notify = NotifySocket::bind(&rig.dir.join("notify.sock"));
    let mut gw = GatewayProcess::start_with_env(
        &config,
        &[
            ("SENSORGATE_FAKE_CLOCK", fake_clock.to_str().unwrap()),
            ("NOTIFY_SOCKET", notify.path()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    notify
        .wait_for("READY=1", WAIT)
        .unwrap_or_else(|| panic!("no READY: {}", excerpt(&gw.log())));
    let hours = |h: i64| Duration::from_secs(h.unsigned_abs() * 3600);
    let mut phases = Vec::new();
    for (i, offset_h) in [0i64, 5, -5].into_iter().enumerate() {
        std::fs::write(&fake_clock, (offset_h * 3600).to_string()).unwrap();
        // The gateway rereads the fake clock every second.
        std::thread::sleep(Duration::from_millis(2500));
        let since = std::time::Instant::now();
        let from = SystemTime::now();
        let writer = SimSensor::spawn(pty.writer().unwrap(), 100, None);
        assert_eq!(writer.join().unwrap().unwrap(), 100);
        let total = 100 * (i + 1);
        assert!(
            wait_until(WAIT, Duration::from_millis(100), || {
                support::open_all(&rig, &sub.received()).count() >= total
            }),
            "phase {i}: {}",
            excerpt(&gw.log())
        );
        // The watchdog kept pinging through the jump (every second).
        let pinged = wait_until(WAIT, Duration::from_millis(100), || {
            notify.count_after("WATCHDOG=1", since) >= 2
        });
        assert!(pinged, "phase {i}: {}", notify.shown());
        phases.push((offset_h, from, SystemTime::now()));
    }
    assert_eq!(gw.stop(), 0, "{}", excerpt(&gw.log()));

    let opened = support::open_all(&rig, &sub.received());
    assert_eq!(opened.seqs("bike"), (0..300).collect::<Vec<_>>());
    assert_eq!(opened.duplicates, 0);
    // Each record carries the time its clock said; no message spans a jump.
    let slack = Duration::from_secs(2);
    let shifted = |t: SystemTime, h: i64| if h < 0 { t - hours(h) } else { t + hours(h) };
    for payload in sub.received() {
        let times = message_times(&rig, &payload);
        let phase = (times[0].0 / 100) as usize;
        let (offset_h, from, to) = phases[phase];
        for (seq, ts) in times {
            assert_eq!(seq / 100, phase as u64, "a message spans phases");
            assert!(
                within(ts, shifted(from, offset_h), shifted(to, offset_h), slack),
                "seq {seq} at {ts:?}, phase {phase}"
            );
        }
    }
}
