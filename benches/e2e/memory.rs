//! Memory: how much RAM the gateway holds under load and while the broker
//! is away. A Pi Zero has 512 MiB for everything, so the gateway's resident
//! set must stay small and, above all, bounded: a broker outage must fill
//! the disk spool, not the memory.
//!
//! Two parts, each on a fresh rig (broker, keys, state directory) and the
//! real release binary, its resident set read from `/proc/<pid>/status`
//! (`VmRSS` now, `VmHWM` the peak since start):
//!
//! 1. **Full rate.** Four simulated sensors write lines as fast as the
//!    terminals take them for 10 s, with the broker up. Sampled every
//!    100 ms: the steady RSS is the median of the last half of the samples
//!    (after the allocator warmed up), the peak is `VmHWM`. The idle RSS
//!    (connected, devices open, nothing written yet) is the floor.
//! 2. **Broker outage.** `[buffer] memory = "8MiB"` with the disk spool
//!    (its disk budget raised so the whole outage fits and nothing is
//!    dropped). Four sensors write 2 000 lines per second each (8 000
//!    records/s, about 2 MB/s of sealed messages): 10 s with the broker up
//!    (the "before" RSS is the median of their last half), then the broker
//!    is stopped for `--outage` seconds while the writing goes on, sampled
//!    every second. Reported: the peak (`VmHWM`), the steady RSS and the
//!    least-squares slope of the last half of the outage (KiB per minute;
//!    once the memory queue is full it must be about flat: the fitted line
//!    may move by at most 5% of the budget over that half), and the growth
//!    over the "before" RSS against the 8 MiB memory budget (the queue
//!    plus what the allocator keeps around it). Then the
//!    writers stop, the broker is started again, and every record must
//!    reach the subscriber: the drain time runs from the broker's start to
//!    the arrival of the last missing record (the time to the first one,
//!    broker start-up and the gateway's reconnect backoff, is reported
//!    too: with the rig's `reconnect_max = "1s"` it can be most of it).
//!
//! The outage samples (with the phase around them) go to
//! `target/bench/e2e-memory.csv` for a plot. Goal (issue 9): steady RSS
//! ≤ 16 MiB with an 8 MiB memory queue, and flat during an outage.
//!
//! Both parts run once whatever `--runs` says: each is long, and the
//! quantities are sizes, not timings (the drain time is the exception; it
//! is one sample).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sensorgate::demo::pty::{Pty, SimSensor, sim_line};

use crate::Options;
use crate::latency::{Arrivals, wait_until_ready};
use crate::proc::{rss_kib, rss_split_kib};
use crate::report::{self, Report, median};
use crate::support::{self, GatewayProcess, Rig};

/// Sensors written at once.
const SENSORS: usize = 4;
/// How long the full-rate part writes.
const FULL_RATE: Duration = Duration::from_secs(10);
/// Lines per second per sensor during the outage part.
const OUTAGE_RATE: u64 = 2000;
/// Broker up, sensors writing, before the outage.
const BEFORE: Duration = Duration::from_secs(10);
/// The memory queue under test, as configured.
const MEMORY_BUDGET_KIB: f64 = 8.0 * 1024.0;
/// Goal: steady RSS with that queue.
const RSS_GOAL_KIB: f64 = 16.0 * 1024.0;
/// Bound on waiting for records after the writers stopped (full rate), and
/// on a drain (which also gets 1 s per 5 s of outage).
const WAIT: Duration = Duration::from_secs(60);

pub fn run(opts: &Options, report: &mut Report) {
    if opts.runs > 1 {
        report::progress("memory: runs once (long, and it measures sizes)");
    }
    full_rate(report);
    outage(opts, report);
}

/// Four sensors, three columns encrypted (the rig's), a fresh state
/// directory; `extra` is appended (e.g. `[buffer]`).
fn start(rig: &Rig, name: &str, extra: &str) -> (Vec<Pty>, GatewayProcess) {
    let ptys: Vec<Pty> = (0..SENSORS)
        .map(|_| Pty::open().expect("open a pseudo-terminal"))
        .collect();
    let names: Vec<String> = (0..SENSORS).map(|s| format!("s{s}")).collect();
    let sensors: Vec<(&str, &Path)> = names
        .iter()
        .zip(&ptys)
        .map(|(n, p)| (n.as_str(), p.path()))
        .collect();
    let config = rig.gateway_config(name, &sensors, extra);
    let gw = GatewayProcess::start(&config);
    wait_until_ready(&gw, SENSORS);
    (ptys, gw)
}

fn rss(gw: &GatewayProcess) -> (u64, u64) {
    rss_kib(gw.pid().as_raw() as u32).unwrap_or_else(|| {
        panic!(
            "the gateway is gone (no /proc status)\n{}",
            support::excerpt(&gw.log())
        )
    })
}

fn full_rate(report: &mut Report) {
    let rig = Rig::new();
    let arrivals = Arrivals::connect(&rig);
    let (ptys, gw) = start(&rig, "memory-full.toml", "[buffer]\nmemory = \"8MiB\"\n");
    thread::sleep(Duration::from_secs(1));
    let (idle, _) = rss(&gw);
    let (idle_anon, idle_file) = rss_split_kib(gw.pid().as_raw() as u32).unwrap_or_default();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = ptys
        .iter()
        .map(|p| fast_writer(p.writer().expect("PTY writer"), stop.clone()))
        .collect();
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < FULL_RATE {
        samples.push(rss(&gw).0 as f64);
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let written: u64 = writers
        .into_iter()
        .map(|w| support::join_writer(w, WAIT, &gw))
        .sum();
    let wrote_for = started.elapsed();
    let (_, peak) = rss(&gw);
    arrivals.wait_for_distinct(written, WAIT);
    let tally = arrivals.tally();
    assert!(
        tally.distinct >= written && tally.rejected.is_empty(),
        "full rate: {} of {written} records arrived; rejected {:?}\n{}",
        tally.distinct,
        tally.rejected,
        support::excerpt(&gw.log())
    );
    support::assert_no_panic(&gw.log());
    let steady = median(&samples[samples.len() / 2..]);
    report::progress(&format!(
        "memory full rate: {written} records in {:.1} s ({:.0} records/s), {} RSS samples",
        wrote_for.as_secs_f64(),
        written as f64 / wrote_for.as_secs_f64(),
        samples.len()
    ));
    report.figure("memory_idle_rss_kib", idle as f64, "KiB", &[idle as f64]);
    for (name, kib) in [
        ("memory_idle_rss_anon_kib", idle_anon),
        ("memory_idle_rss_file_kib", idle_file),
    ] {
        report.figure(name, kib as f64, "KiB", &[kib as f64]);
    }
    report.figure("memory_full_rate_steady_rss_kib", steady, "KiB", &[steady]);
    report.figure(
        "memory_full_rate_peak_rss_kib",
        peak as f64,
        "KiB",
        &[peak as f64],
    );
}

/// Writes `sim_line(i)` for `i = 0, 1, ...` as fast as the terminal takes
/// them until `stop`; returns the number of lines written.
fn fast_writer(
    mut writer: std::fs::File,
    stop: Arc<AtomicBool>,
) -> JoinHandle<std::io::Result<u64>> {
    thread::Builder::new()
        .name("bench-sensor".into())
        .spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut line = sim_line(i);
                line.push('\n');
                writer.write_all(line.as_bytes())?;
                i += 1;
            }
            Ok(i)
        })
        .expect("spawn a writer thread")
}

/// One RSS sample of the outage part.
struct Sample {
    seconds: f64,
    rss_kib: u64,
    phase: &'static str,
}

fn outage(opts: &Options, report: &mut Report) {
    let per_sensor = OUTAGE_RATE * (BEFORE + opts.outage).as_secs();
    let total = per_sensor * SENSORS as u64;
    // A sealed record takes about 260 bytes in the spool (a 100-record
    // message is 25.7 KB): give the disk budget twice that, so the outage
    // fits and `drop_oldest` never fires.
    let disk_mib = (total * 520 / (1024 * 1024)).max(256);
    let mut rig = Rig::new();
    let arrivals = Arrivals::connect(&rig);
    let (ptys, gw) = start(
        &rig,
        "memory-outage.toml",
        &format!("[buffer]\nmemory = \"8MiB\"\ndisk = \"{disk_mib}MiB\"\n"),
    );
    report::progress(&format!(
        "memory outage: {SENSORS} sensors x {OUTAGE_RATE} records/s, {} s before, {} s outage, {total} records, disk budget {disk_mib} MiB",
        BEFORE.as_secs(),
        opts.outage.as_secs()
    ));

    let t0 = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let sample = |samples: &mut Vec<Sample>, phase: &'static str| {
        samples.push(Sample {
            seconds: t0.elapsed().as_secs_f64(),
            rss_kib: rss(&gw).0,
            phase,
        })
    };
    let writers: Vec<_> = ptys
        .iter()
        .map(|p| {
            SimSensor::spawn(
                p.writer().expect("PTY writer"),
                per_sensor,
                Some(OUTAGE_RATE as f64),
            )
        })
        .collect();
    let mut next = t0;
    while t0.elapsed() < BEFORE {
        sample(&mut samples, "before");
        next += Duration::from_secs(1);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let before = median(
        &samples[samples.len() / 2..]
            .iter()
            .map(|s| s.rss_kib as f64)
            .collect::<Vec<_>>(),
    );

    rig.broker.stop();
    let stopped = Instant::now();
    report::progress(&format!(
        "memory outage: broker stopped at {:.1} s; {} records received before",
        t0.elapsed().as_secs_f64(),
        arrivals.distinct()
    ));
    // The writers end on their schedule, `BEFORE + outage` after t0; one
    // still blocked long after that means the gateway stopped reading.
    let writers_due = t0 + BEFORE + opts.outage;
    let limit = writers_due + WAIT;
    let mut last_progress = Instant::now();
    while !writers.iter().all(|w| w.is_finished()) {
        assert!(
            Instant::now() < limit,
            "the simulated sensors were still blocked {WAIT:?} after their schedule: the gateway stopped reading during the outage\n{}",
            support::excerpt(&gw.log())
        );
        sample(&mut samples, "outage");
        if last_progress.elapsed() >= Duration::from_secs(30) {
            last_progress = Instant::now();
            report::progress(&format!(
                "memory outage: {:.0} s into the outage, RSS {} KiB",
                stopped.elapsed().as_secs_f64(),
                samples.last().map_or(0, |s| s.rss_kib)
            ));
        }
        next += Duration::from_secs(1);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let written: u64 = writers
        .into_iter()
        .map(|w| w.join().expect("writer thread").expect("write to the PTY"))
        .sum();
    assert_eq!(written, total);
    // The last lines may still sit in the terminals; let the gateway take
    // them before the broker comes back, so the drain starts from a full
    // spool.
    thread::sleep(Duration::from_secs(1));
    sample(&mut samples, "outage");
    let (_, peak) = rss(&gw);
    let (outage_anon, outage_file) = rss_split_kib(gw.pid().as_raw() as u32).unwrap_or_default();
    let outage_samples: Vec<&Sample> = samples.iter().filter(|s| s.phase == "outage").collect();
    let last_half = &outage_samples[outage_samples.len() / 2..];
    let steady = median(
        &last_half
            .iter()
            .map(|s| s.rss_kib as f64)
            .collect::<Vec<_>>(),
    );
    let slope = slope_per_minute(last_half);
    let last_half_min = last_half
        .last()
        .zip(last_half.first())
        .map_or(0.0, |(l, f)| (l.seconds - f.seconds) / 60.0);
    let received_before_drain = arrivals.distinct();

    let drain_start = Instant::now();
    rig.broker.restart();
    let drain_limit = WAIT + opts.outage / 5;
    while arrivals.distinct() < total && drain_start.elapsed() < drain_limit {
        sample(&mut samples, "drain");
        arrivals.wait_for_distinct(total, Duration::from_secs(1));
    }
    let tally = arrivals.tally();
    let (_, peak_after_drain) = rss(&gw);
    support::assert_no_panic(&gw.log());
    let lost = total.saturating_sub(tally.distinct);
    let drained = total.saturating_sub(received_before_drain);
    let drain_s = tally.last_new.map_or(f64::NAN, |at| {
        at.saturating_duration_since(drain_start).as_secs_f64()
    });
    // Of the drain time, how much passed before the first record came:
    // the broker's start and the gateway's reconnect backoff
    // (`reconnect_max = "1s"` in the rig; 30 s by default).
    let first_new = tally
        .records
        .values()
        .flat_map(|seqs| seqs.iter().flatten())
        .map(|a| a.at)
        .filter(|at| *at >= drain_start)
        .min();
    let reconnect_s = first_new.map_or(f64::NAN, |at| (at - drain_start).as_secs_f64());
    report::progress(&format!(
        "memory outage: {} of {total} records arrived ({} duplicates, {} rejected messages); {drained} drained in {drain_s:.1} s",
        tally.distinct,
        tally.duplicates,
        tally.rejected.len()
    ));
    if lost > 0 || !tally.rejected.is_empty() {
        report::progress(&format!(
            "memory outage: RECORDS MISSING after {drain_limit:?}; rejected: {:?}\n{}",
            tally.rejected.iter().take(5).collect::<Vec<_>>(),
            support::excerpt(&gw.log())
        ));
    }
    write_csv(&samples);

    let growth = peak as f64 - before;
    report.figure("memory_outage_before_rss_kib", before, "KiB", &[before]);
    report.figure(
        "memory_outage_peak_rss_kib",
        peak as f64,
        "KiB",
        &[peak as f64],
    );
    report.figure("memory_outage_steady_rss_kib", steady, "KiB", &[steady]);
    for (name, kib) in [
        ("memory_outage_end_rss_anon_kib", outage_anon),
        ("memory_outage_end_rss_file_kib", outage_file),
    ] {
        report.figure(name, kib as f64, "KiB", &[kib as f64]);
    }
    report.figure(
        "memory_outage_slope_kib_per_min",
        slope,
        "KiB/min",
        &[slope],
    );
    report.figure("memory_outage_growth_kib", growth, "KiB", &[growth]);
    let ratio = growth / MEMORY_BUDGET_KIB;
    report.figure("memory_outage_growth_per_budget", ratio, "ratio", &[ratio]);
    report.figure(
        "memory_outage_records",
        total as f64,
        "records",
        &[total as f64],
    );
    report.figure(
        "memory_outage_lost_records",
        lost as f64,
        "records",
        &[lost as f64],
    );
    report.figure("memory_outage_drain_s", drain_s, "s", &[drain_s]);
    report.figure(
        "memory_outage_drain_first_record_s",
        reconnect_s,
        "s",
        &[reconnect_s],
    );
    let rate = drained as f64 / drain_s;
    report.figure(
        "memory_outage_drain_records_per_s",
        rate,
        "records/s",
        &[rate],
    );
    report.figure(
        "memory_after_drain_peak_rss_kib",
        peak_after_drain as f64,
        "KiB",
        &[peak_after_drain as f64],
    );

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    report::progress(&format!(
        "goal: steady RSS <= {RSS_GOAL_KIB:.0} KiB with an 8 MiB memory queue: {} (outage steady {steady:.0} KiB, peak {peak} KiB)",
        verdict(steady <= RSS_GOAL_KIB)
    ));
    // Flat: over the last half of the outage the fitted line moves by at
    // most 5% of the memory budget (so a longer outage bounds a leak more
    // tightly). The ceiling is the growth over the "before" RSS.
    let flat = (slope * last_half_min).abs() <= 0.05 * MEMORY_BUDGET_KIB;
    report::progress(&format!(
        "goal: flat during the outage: {} (slope of the last half {slope:.1} KiB/min over {:.1} min, allowed ±{:.0} KiB/min); growth over before {growth:.0} KiB = {ratio:.2} x the {MEMORY_BUDGET_KIB:.0} KiB memory budget",
        verdict(flat),
        last_half_min,
        0.05 * MEMORY_BUDGET_KIB / last_half_min.max(f64::MIN_POSITIVE),
    ));
    report::progress(&format!(
        "goal: every record arrives after the outage: {} ({lost} missing)",
        verdict(lost == 0)
    ));
}

/// Least-squares slope of RSS over time, in KiB per minute.
fn slope_per_minute(samples: &[&Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let mx = samples.iter().map(|s| s.seconds).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
    let sxy: f64 = samples
        .iter()
        .map(|s| (s.seconds - mx) * (s.rss_kib as f64 - my))
        .sum();
    let sxx: f64 = samples.iter().map(|s| (s.seconds - mx).powi(2)).sum();
    sxy / sxx * 60.0
}

/// `target/bench/e2e-memory.csv`: `seconds,rss_kib,phase` of the outage
/// part, seconds from the writers' start; phase is `before`, `outage` or
/// `drain`.
fn write_csv(samples: &[Sample]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    let path = dir.join("e2e-memory.csv");
    let mut text = String::from("seconds,rss_kib,phase\n");
    for s in samples {
        let _ = writeln!(text, "{:.2},{},{}", s.seconds, s.rss_kib, s.phase);
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    report::progress(&format!("memory: RSS samples in {}", path.display()));
}
