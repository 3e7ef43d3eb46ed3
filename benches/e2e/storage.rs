//! Storage: what the gateway writes to its SD card (issue 17). Cards wear
//! out from writes, so a gateway whose broker keeps up should write next
//! to nothing, and an idle one nothing at all.
//!
//! For each `[buffer] durability` (`write_through`, then `memory_first`),
//! on a fresh rig and the real release binary: one simulated sensor writes
//! `RATE` lines per second for `STREAM` with the broker up (every record
//! must reach the subscriber, checked by sequence number), then nothing for
//! `--idle` seconds. Two counts, as deltas over each phase:
//!
//! * the gateway's own (`storage_writes`, `storage_bytes` in its stats
//!   line): every write to a spool segment, the acknowledged position or
//!   the sequence state, and every fsync, rename and unlink, each counted
//!   as one write; bytes as written;
//! * the kernel's (`write_bytes` in `/proc/<pid>/io`): bytes this process
//!   caused to be sent to the block layer, whole pages, fsyncs and
//!   journal blocks not included; a cross-check of the first.
//!
//! Figures per durability: bytes and writes per record while streaming,
//! writes per hour while idle (the idle count scaled to an hour), and the
//! ratio of `memory_first`'s bytes per record to `write_through`'s.
//! Goals: ≤ 1 % of write-through's bytes in `memory_first` while the
//! broker keeps up; ≤ 60 writes an hour while idle.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use sensorgate::demo::pty::{Pty, SimSensor};

use crate::Options;
use crate::report::{Report, progress};
use crate::support::{GatewayProcess, Rig, excerpt, wait_for_records};

/// Lines per second: a sensor a second, the rate issue 17 takes as a
/// Pi's typical load (50 records/s), for long enough to see the periodic
/// writes (sequence reservations, the acknowledged position).
const RATE: f64 = 50.0;
const STREAM: Duration = Duration::from_secs(60);

pub fn run(opts: &Options, report: &mut Report) {
    let mut bytes_per_record = Vec::new();
    for mode in ["write_through", "memory_first"] {
        bytes_per_record.push(one(mode, opts.idle, report));
    }
    let ratio = bytes_per_record[1] / bytes_per_record[0];
    report.figure(
        "storage_memory_first_vs_write_through",
        ratio,
        "ratio",
        &[ratio],
    );
}

/// The gateway's storage counters and what the kernel saw, at one moment.
#[derive(Debug, Clone, Copy)]
struct Counts {
    writes: f64,
    bytes: f64,
    block_bytes: f64,
}

impl Counts {
    fn since(self, earlier: Counts) -> Counts {
        Counts {
            writes: self.writes - earlier.writes,
            bytes: self.bytes - earlier.bytes,
            block_bytes: self.block_bytes - earlier.block_bytes,
        }
    }
}

/// Returns `mode`'s bytes per record while streaming.
fn one(mode: &str, idle: Duration, report: &mut Report) -> f64 {
    let rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().expect("open a PTY");
    let config = rig.gateway_config(
        &format!("storage-{mode}.toml"),
        &[("bike", pty.path())],
        &format!("[buffer]\ndurability = \"{mode}\"\n"),
    );
    let gw = GatewayProcess::start(&config);
    assert!(
        gw.wait_for_log("connected to broker", Duration::from_secs(30)),
        "{}",
        excerpt(&gw.log())
    );
    let start = counts(&gw);
    let lines = (RATE * STREAM.as_secs_f64()) as u64;
    progress(&format!(
        "storage {mode}: {lines} lines at {RATE} a second, then {} s idle",
        idle.as_secs()
    ));
    let writer = SimSensor::spawn(pty.writer().expect("PTY writer"), lines, Some(RATE));
    let opened = wait_for_records(&rig, &sub, lines as usize, STREAM + Duration::from_secs(60));
    assert_eq!(
        opened.seqs("bike"),
        (0..lines).collect::<Vec<_>>(),
        "storage {mode}: records missing\n{}",
        excerpt(&gw.log())
    );
    writer.join().expect("writer thread").expect("writer");
    // Past the batch's linger and a stats line, everything acknowledged.
    thread::sleep(Duration::from_secs(3));
    let streamed = counts(&gw).since(start);
    let idle_start = counts(&gw);
    let began = Instant::now();
    thread::sleep(idle);
    let idled = counts(&gw).since(idle_start);
    let hours = began.elapsed().as_secs_f64() / 3600.0;

    let per = |v: f64| v / lines as f64;
    progress(&format!(
        "storage {mode}: streaming {} writes, {} bytes ({} at the block layer); idle {} writes",
        streamed.writes, streamed.bytes, streamed.block_bytes, idled.writes
    ));
    let name = |what: &str| format!("storage_{mode}_{what}");
    report.figure(
        &name("bytes_per_record"),
        per(streamed.bytes),
        "bytes",
        &[per(streamed.bytes)],
    );
    report.figure(
        &name("writes_per_record"),
        per(streamed.writes),
        "writes",
        &[per(streamed.writes)],
    );
    report.figure(
        &name("block_bytes_per_record"),
        per(streamed.block_bytes),
        "bytes",
        &[per(streamed.block_bytes)],
    );
    let idle_per_hour = idled.writes / hours;
    report.figure(
        &name("idle_writes_per_hour"),
        idle_per_hour,
        "writes",
        &[idle_per_hour],
    );
    per(streamed.bytes)
}

/// The counts now: the gateway's from its latest stats line (written every
/// second by the rig's configuration), the kernel's from `/proc`.
fn counts(gw: &GatewayProcess) -> Counts {
    // A fresh stats line, so the counts are at most a second old.
    let seen = gw.log().lines().filter(|l| l.contains(" stats ")).count();
    let fresh =
        crate::support::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            gw.log().lines().filter(|l| l.contains(" stats ")).count() > seen
        });
    assert!(fresh, "no stats line\n{}", excerpt(&gw.log()));
    let log = gw.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(" stats ") && l.contains("storage_writes="))
        .unwrap_or_else(|| panic!("no stats line with storage counts\n{}", excerpt(&log)));
    let io = fs::read_to_string(format!("/proc/{}/io", gw.pid()))
        .unwrap_or_else(|e| panic!("read /proc/{}/io: {e}", gw.pid()));
    Counts {
        writes: field(line, "storage_writes="),
        bytes: field(line, "storage_bytes="),
        block_bytes: io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("write_bytes in /proc/<pid>/io"),
    }
}

/// The number after `key` in a log line.
fn field(line: &str, key: &str) -> f64 {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("{key} missing in {line}"));
    line[at + key.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a number in {line}"))
}
