//! Spool benchmarks (issue 6): write and read throughput of the disk spool
//! under each `fsync` policy, and the drain of a 100 MiB backlog through a
//! real mosquitto with mutual TLS, each beside a baseline measured in the
//! same run on the same machine:
//!
//! - **write**: `Spool::push` of real sealed messages (a 100-record batch,
//!   ~26 KB, and a one-record one, ~1.4 KB) with `fsync = always |
//!   interval | never`, against plain sequential `write_all` of blocks of
//!   the same size to one file on the same filesystem with the same sync
//!   discipline (`sync_data` after every block / every second and at the
//!   end / never).
//! - **read**: `next_to_send` + `ack` until the spool is empty, after a
//!   restart (`Spool::open` scans the segments; timed as well) with a cold
//!   page cache, against a plain sequential read of the same segment files,
//!   also cold.
//! - **drain**: the uplink (`sensorgate::uplink::run`) empties a 100 MiB
//!   backlog, against a bare rumqttc QoS 1 publisher sending the same
//!   payloads from memory over the same kind of connection (same TLS
//!   configuration, same `max_inflight`). No subscriber in either run:
//!   PUBACK comes from the broker.
//!
//! Each figure is the median of `RUNS` runs; spool and baseline runs
//! alternate where the scenario allows (the read baseline always goes
//! first: the spool deletes what it has read). Figures go to stdout as
//! `name value unit` lines and to `target/bench/spool.json`; progress goes
//! to stderr. docs/BENCHMARKS.md says what each figure means.
//!
//! `cargo bench --bench spool [-- FILTER ...]` runs every scenario, or those
//! whose figure names start with a filter (`write`, `write_never_1rec`,
//! `read`, `drain`). Dropping the page cache needs root; without it the
//! JSON says `"page_cache": "warm (not root)"`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use sensorgate::config::{self, WhenFull};
use sensorgate::demo::pty::{sim_columns, sim_line};
use sensorgate::record::{Field, Record, Value};
use sensorgate::seal::{GatewayKey, RecipientKey, SealedMessage, Sealer};
use sensorgate::spool::{Fsync, Spool, SpoolSettings};
use sensorgate::telemetry::Stats;
use sensorgate::uplink::{self, UplinkSettings};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Runs per figure; the median is reported. Each run is short (well under
/// a second on an idle machine), so five cost little and steady the median.
const RUNS: usize = 5;
const MIB: u64 = 1 << 20;
/// The backlog of the read and drain scenarios.
const BACKLOG: u64 = 100 * MIB;
/// No timed run goes on longer than this (the count is what it reached).
const TIME_LIMIT: Duration = Duration::from_secs(4);
/// Sensor name of every message (the rig's configuration has it).
const SENSOR: &str = "bike";
/// Columns the sealer encrypts, as in the test rig.
const ENCRYPTED: [&str; 3] = ["heart_rate", "incline", "resistance"];
/// The `interval` policy's tick (the default `fsync_interval`).
const FSYNC_INTERVAL: Duration = Duration::from_secs(1);

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // `write` selects every write figure, `write_never` those of one policy,
    // `write_never_1rec` one of them.
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| name.starts_with(w.as_str()));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,rumqttc=error"))
        .with_writer(std::io::stderr)
        .init();

    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .to_path_buf();
    let work = target.join("bench").join("spool-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).expect("create target/bench/spool-work");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut report = Report::new(&work);
    report.selected = wanted.clone();
    let started = Instant::now();
    progress(&format!(
        "spool bench: {} runs per figure, work dir {} ({}), page cache drop: {}",
        RUNS,
        work.display(),
        report.machine["filesystem"].as_str().unwrap_or("?"),
        if can_drop_caches() {
            "yes"
        } else {
            "no (not root): read/drain run warm"
        }
    ));

    let pool = MessagePool::new();
    report.figure(
        "message_bytes_100rec",
        pool.large[0].bytes.len() as f64,
        "bytes",
        vec![],
    );
    report.figure(
        "message_bytes_1rec",
        pool.small[0].bytes.len() as f64,
        "bytes",
        vec![],
    );

    for fsync in [Fsync::Always, Fsync::Interval, Fsync::Never] {
        for (label, msgs) in [("100rec", &pool.large), ("1rec", &pool.small)] {
            if run(&format!("write_{}_{label}", fsync_name(fsync))) {
                bench_write(&rt, &mut report, &work, fsync, label, msgs);
            }
        }
    }
    if run("read_100rec") {
        bench_read(&rt, &mut report, &work, "100rec", &pool.large, BACKLOG);
    }
    if run("read_1rec") {
        bench_read(&rt, &mut report, &work, "1rec", &pool.small, 32 * MIB);
    }
    if run("drain") {
        bench_drain(&rt, &mut report, &work, &pool.large);
    }
    let _ = fs::remove_dir_all(&work);
    report.write(&target.join("bench").join("spool.json"), started.elapsed());
}

// ---------------------------------------------------------------------
// Messages

/// Real sealed messages (signed, three fields encrypted) of the simulated
/// bike sensor, in two sizes; runs cycle through them.
struct MessagePool {
    large: Vec<SealedMessage>,
    small: Vec<SealedMessage>,
}

impl MessagePool {
    fn new() -> MessagePool {
        let mut sealer = Sealer::new(
            "bench-gw",
            "bench-epoch",
            GatewayKey::generate(),
            RecipientKey::generate().public(),
            &ENCRYPTED.map(String::from),
        );
        let columns: Vec<Arc<str>> = sim_columns()
            .iter()
            .map(|c| Arc::from(c.as_str()))
            .collect();
        let sensor: Arc<str> = Arc::from(SENSOR);
        let mut seq = 0u64;
        let mut batch = |n: u64| {
            let records: Vec<Record> = (seq..seq + n)
                .map(|i| Record {
                    sensor: sensor.clone(),
                    seq: i,
                    ts: SystemTime::now(),
                    clock: None,
                    fields: columns
                        .iter()
                        .zip(sim_line(i).split(','))
                        .map(|(name, raw)| Field {
                            name: name.clone(),
                            value: Value::parse(raw),
                        })
                        .collect(),
                })
                .collect();
            seq += n;
            sealer.seal(&records).expect("seal a batch")
        };
        // A full batch (`[batch] max_records = 100`, ~26 KB), and a batch
        // of one record (~1.4 KB: the JWS and JWE framing dominate).
        let large: Vec<SealedMessage> = (0..16).map(|_| batch(100)).collect();
        let small = (0..16).map(|_| batch(1)).collect();
        MessagePool { large, small }
    }
}

/// `count` messages cycling through `pool`, made before the clock starts
/// (the seal stage hands the spool a fresh message each time, too).
fn messages(pool: &[SealedMessage], count: usize) -> Vec<SealedMessage> {
    pool.iter().cycle().take(count).cloned().collect()
}

fn count_for(pool: &[SealedMessage], bytes: u64) -> usize {
    (bytes / pool[0].bytes.len() as u64).max(1) as usize
}

// ---------------------------------------------------------------------
// Write

fn bench_write(
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
    work: &Path,
    fsync: Fsync,
    label: &str,
    pool: &[SealedMessage],
) {
    let policy = fsync_name(fsync);
    let target_bytes = match (fsync, label) {
        (Fsync::Always, "100rec") => 16 * MIB,
        (Fsync::Always, _) => 2 * MIB,
        (_, "100rec") => 256 * MIB,
        _ => 32 * MIB,
    };
    let block = pool[0].bytes.len();
    let mut spool_runs = vec![];
    let mut raw_runs = vec![];
    for run in 0..RUNS {
        let dir = fresh_dir(work, &format!("write-{policy}-{label}-{run}"));
        let msgs = messages(pool, count_for(pool, target_bytes));
        let spool_first = run % 2 == 0;
        let spool_once = || {
            sync_all();
            let r = rt.block_on(spool_write(&dir.join("spool"), fsync, msgs.clone()));
            progress(&format!(
                "write {policy} {label} run {run}: spool {} messages in {:.3} s",
                r.messages, r.secs
            ));
            r
        };
        let (s, r) = if spool_first {
            let s = spool_once();
            let r = raw_write(
                &dir.join("raw.dat"),
                &pool[0].bytes,
                s.messages as usize,
                fsync,
            );
            (s, r)
        } else {
            // Raw first: same count as the byte target gives.
            let r = raw_write(&dir.join("raw.dat"), &pool[0].bytes, msgs.len(), fsync);
            (spool_once(), r)
        };
        progress(&format!(
            "write {policy} {label} run {run}: raw {} blocks of {block} in {:.3} s",
            r.messages, r.secs
        ));
        spool_runs.push(s);
        raw_runs.push(r);
        let _ = fs::remove_dir_all(&dir);
    }
    report.pair(
        &format!("write_{policy}_{label}"),
        "spool",
        &spool_runs,
        "raw",
        &raw_runs,
    );
}

fn fsync_name(f: Fsync) -> &'static str {
    match f {
        Fsync::Always => "always",
        Fsync::Interval => "interval",
        Fsync::Never => "never",
    }
}

fn spool_settings(dir: &Path, fsync: Fsync, memory: usize) -> SpoolSettings {
    SpoolSettings {
        dir: dir.to_path_buf(),
        memory,
        disk: 4 << 30,
        when_full: WhenFull::Block,
        durability: sensorgate::config::Durability::WriteThrough,
        spill_after: std::time::Duration::from_secs(2),
        fsync,
        min_free: 0.05,
        stop_reserve: 0,
    }
}

/// Pushes `msgs` one after the other, as the seal stage does, until done or
/// `TIME_LIMIT`. `interval` runs the sync tick the pipeline runs, and ends
/// with a sync (what `interval` promises is on disk within the tick).
async fn spool_write(dir: &Path, fsync: Fsync, msgs: Vec<SealedMessage>) -> Run {
    let (spool, _) =
        Spool::open(spool_settings(dir, fsync, 8 << 20), Arc::default()).expect("open the spool");
    let spool = Arc::new(spool);
    let stop = CancellationToken::new();
    let tick =
        (fsync == Fsync::Interval).then(|| tokio::spawn(sync_tick(spool.clone(), stop.clone())));
    let start = Instant::now();
    let mut run = Run::default();
    for m in msgs {
        run.bytes += m.bytes.len() as u64;
        run.messages += 1;
        spool.push(m);
        if start.elapsed() > TIME_LIMIT {
            break;
        }
    }
    if fsync == Fsync::Interval {
        let s = spool.clone();
        tokio::task::spawn_blocking(move || s.sync())
            .await
            .expect("sync");
    }
    run.secs = start.elapsed().as_secs_f64();
    stop.cancel();
    if let Some(t) = tick {
        let _ = t.await;
    }
    run
}

/// What `pipeline::sync_loop` does for the `interval` policy.
async fn sync_tick(spool: Arc<Spool>, stop: CancellationToken) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + FSYNC_INTERVAL, FSYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let s = spool.clone();
                let _ = tokio::task::spawn_blocking(move || s.sync()).await;
            }
        }
    }
}

/// `count` blocks appended to one new file with the same sync discipline:
/// `sync_data` after each block (`always`, like `dd oflag=dsync`), every
/// second and at the end (`interval`, like `dd conv=fdatasync`), or never.
fn raw_write(path: &Path, block: &[u8], count: usize, fsync: Fsync) -> Run {
    sync_all();
    let start = Instant::now();
    let mut f = File::create(path).expect("create the raw file");
    let mut last_sync = Instant::now();
    for _ in 0..count {
        f.write_all(block).expect("raw write");
        match fsync {
            Fsync::Always => f.sync_data().expect("raw sync"),
            Fsync::Interval if last_sync.elapsed() >= FSYNC_INTERVAL => {
                f.sync_data().expect("raw sync");
                last_sync = Instant::now();
            }
            _ => {}
        }
    }
    if fsync == Fsync::Interval {
        f.sync_data().expect("raw sync");
    }
    Run {
        messages: count as u64,
        bytes: (block.len() * count) as u64,
        secs: start.elapsed().as_secs_f64(),
        ..Run::default()
    }
}

// ---------------------------------------------------------------------
// Read

fn bench_read(
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
    work: &Path,
    label: &str,
    pool: &[SealedMessage],
    backlog: u64,
) {
    let mut spool_runs = vec![];
    let mut raw_runs = vec![];
    let mut open_runs = vec![];
    for run in 0..RUNS {
        let root = fresh_dir(work, &format!("read-{label}-{run}"));
        let dir = root.join("spool");
        // The backlog, written with memory = 64KiB so that it is read back
        // from disk, not from the spool's memory.
        let settings = spool_settings(&dir, Fsync::Never, 64 << 10);
        let msgs = messages(pool, count_for(pool, backlog));
        let written = msgs.len() as u64;
        rt.block_on(async {
            let (spool, _) = Spool::open(settings.clone(), Arc::default()).expect("open the spool");
            let spool = Arc::new(spool);
            for m in msgs {
                spool.push(m);
            }
            spool.sync();
        });
        let segments = segment_files(&dir);
        let on_disk: u64 = segments
            .iter()
            .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
            .sum();

        // A restart after the outage: start-up scans every segment.
        drop_caches();
        let start = Instant::now();
        let (spool, recovery) = Spool::open(settings, Arc::default()).expect("reopen the spool");
        let open = Run {
            messages: recovery.messages,
            bytes: on_disk,
            secs: start.elapsed().as_secs_f64(),
            ..Run::default()
        };
        assert_eq!(recovery.messages, written, "every message found again");

        // The same files, read plainly, then by the spool (which deletes
        // them as it goes, so the raw read comes first), both cold.
        drop_caches();
        let mut raw = raw_read(&segments);
        raw.messages = written;
        drop_caches();
        let read = spool_read(&spool);
        assert_eq!(read.messages, written, "the spool gave back every message");
        progress(&format!(
            "read {label} run {run}: {written} messages, {:.1} MiB in {} segments; open {:.3} s, raw {:.3} s, spool {:.3} s",
            on_disk as f64 / MIB as f64,
            segments.len(),
            open.secs,
            raw.secs,
            read.secs
        ));
        spool_runs.push(read);
        raw_runs.push(raw);
        open_runs.push(open);
        drop(spool);
        let _ = fs::remove_dir_all(&root);
    }
    report.pair(
        &format!("read_{label}"),
        "spool",
        &spool_runs,
        "raw",
        &raw_runs,
    );
    report.rates(&format!("read_{label}_startup_scan"), &open_runs);
}

/// Takes and acknowledges every message, as the uplink does when the
/// broker acknowledges at once.
fn spool_read(spool: &Spool) -> Run {
    let start = Instant::now();
    let mut run = Run::default();
    while let Some((id, msg)) = spool.next_to_send() {
        run.messages += 1;
        run.bytes += msg.bytes.len() as u64;
        spool.ack(id, msg.records);
    }
    run.secs = start.elapsed().as_secs_f64();
    run
}

/// Reads `files` front to back, 256 KiB at a time (the segment reader's
/// request size).
fn raw_read(files: &[PathBuf]) -> Run {
    let start = Instant::now();
    let mut buf = vec![0u8; 256 << 10];
    let mut bytes = 0u64;
    for p in files {
        let mut f = File::open(p).expect("open a segment");
        loop {
            let n = f.read(&mut buf).expect("read a segment");
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    Run {
        bytes,
        secs: start.elapsed().as_secs_f64(),
        ..Run::default()
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list the spool")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------
// Drain

fn bench_drain(
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
    work: &Path,
    pool: &[SealedMessage],
) {
    progress("drain: starting mosquitto with mutual TLS");
    let rig = support::Rig::new();
    let cfg_path = rig.gateway_config("bench.toml", &[(SENSOR, Path::new("/dev/ttyBENCH0"))], "");
    let cfg = config::load_with_env(&cfg_path, &[]).expect("load the bench configuration");
    let tls = uplink::tls::load_client_config(&cfg.mqtt).expect("load the gateway's TLS files");
    let settings = UplinkSettings::new(&cfg);
    let topic = cfg.topic_for(SENSOR);
    let broker_pid = find_broker_pid(rig.broker.dir());
    if broker_pid.is_none() {
        progress("drain: mosquitto's pid not found; its CPU time is not reported");
    }
    report.machine["mosquitto"] = json!(mosquitto_version());
    report.machine["drain_settings"] = json!({
        "max_inflight": settings.max_inflight,
        "memory": cfg.buffer.memory,
        "fsync": format!("{:?}", cfg.buffer.fsync).to_lowercase(),
        "backlog_bytes": BACKLOG,
    });
    let count = count_for(pool, BACKLOG);
    let mut cold_runs = vec![];
    let mut warm_runs = vec![];
    let mut base_runs = vec![];
    for run in 0..RUNS {
        let root = fresh_dir(work, &format!("drain-{run}"));
        // `cold`: the page cache is dropped after the outage, so the
        // backlog comes from the disk (beyond the newest `memory` bytes,
        // which the spool keeps in memory); otherwise from the page cache.
        let gateway = |cold: bool| {
            let mut spool_settings = sensorgate::pipeline::spool_settings(&cfg);
            spool_settings.dir = root.join(if cold { "spool-cold" } else { "spool-warm" });
            // The outage: the backlog goes to the spool while no uplink runs.
            let stats = Arc::new(Stats::default());
            let (spool, _) = Spool::open(spool_settings, stats.clone()).expect("open the spool");
            let spool = Arc::new(spool);
            let msgs = messages(pool, count);
            let bytes = msgs.iter().map(|m| m.bytes.len() as u64).sum();
            rt.block_on(async {
                for m in msgs {
                    spool.push(m);
                }
            });
            spool.sync();
            spool.close();
            if cold {
                drop_caches();
            } else {
                sync_all();
            }
            let r = rt.block_on(gateway_drain(
                settings.clone(),
                tls.clone(),
                spool,
                stats,
                count as u64,
                bytes,
                broker_pid,
            ));
            progress(&format!(
                "drain run {run}: gateway ({}) {} messages in {:.3} s (cpu {:.2} s, broker cpu {:.2} s)",
                if cold { "cold cache" } else { "warm cache" },
                r.messages,
                r.secs,
                r.cpu_secs,
                r.broker_cpu_secs
            ));
            r
        };
        let baseline = || {
            let payloads: Vec<Vec<u8>> =
                messages(pool, count).into_iter().map(|m| m.bytes).collect();
            drop_caches();
            let r = rt.block_on(publisher(
                tls.clone(),
                rig.broker.port(),
                topic.clone(),
                payloads,
                settings.max_inflight,
                broker_pid,
            ));
            progress(&format!(
                "drain run {run}: publisher {} messages in {:.3} s (cpu {:.2} s, broker cpu {:.2} s)",
                r.messages, r.secs, r.cpu_secs, r.broker_cpu_secs
            ));
            r
        };
        // Alternate the order, so that drift favours no one.
        let (c, b, w) = if run % 2 == 0 {
            let c = gateway(true);
            let b = baseline();
            (c, b, gateway(false))
        } else {
            let w = gateway(false);
            let b = baseline();
            (gateway(true), b, w)
        };
        cold_runs.push(c);
        warm_runs.push(w);
        base_runs.push(b);
        let _ = fs::remove_dir_all(&root);
    }
    report.pair("drain", "gateway", &cold_runs, "publisher", &base_runs);
    report.pair("drain_warm", "gateway", &warm_runs, "publisher", &base_runs);
    for (who, runs) in [
        ("gateway", &cold_runs),
        ("gateway_warm", &warm_runs),
        ("publisher", &base_runs),
    ] {
        report.per_message_cpu(&format!("drain_{who}"), runs);
    }
    drop(rig);
}

/// The uplink empties the closed spool; timed from its start (connect
/// included) until the broker acknowledged every message.
async fn gateway_drain(
    settings: UplinkSettings,
    tls: Arc<rustls::ClientConfig>,
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    count: u64,
    bytes: u64,
    broker: Option<u32>,
) -> Run {
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let (cpu0, broker0) = (cpu_secs(None), broker.map(|p| cpu_secs(Some(p))));
    let start = Instant::now();
    let tick = tokio::spawn(sync_tick(spool.clone(), stop.clone()));
    // The sender stays alive for the run: a closed watch reads as a reload.
    let (_tls_tx, tls_rx) = tokio::sync::watch::channel(Some(tls));
    let (_clock_tx, clock_rx) = tokio::sync::watch::channel(true);
    let up = tokio::spawn(uplink::run(
        settings,
        tls_rx,
        clock_rx,
        spool.clone(),
        stats.clone(),
        abort.clone(),
    ));
    let deadline = start + Duration::from_secs(120);
    while stats.messages_acked.load(Ordering::Relaxed) < count {
        assert!(
            Instant::now() < deadline,
            "the gateway did not drain within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let run = Run {
        messages: count,
        bytes,
        secs: start.elapsed().as_secs_f64(),
        cpu_secs: cpu_secs(None) - cpu0,
        broker_cpu_secs: broker
            .zip(broker0)
            .map_or(0.0, |(p, b0)| cpu_secs(Some(p)) - b0),
    };
    // The uplink returns by itself once the closed spool is drained.
    let _ = tokio::time::timeout(Duration::from_secs(5), up).await;
    abort.cancel();
    stop.cancel();
    let _ = tick.await;
    assert!(spool.is_drained(), "closed and every message acknowledged");
    run
}

/// The baseline: a bare rumqttc QoS 1 publisher with the same TLS
/// configuration and inflight window, publishing `payloads` from memory;
/// timed from its start (connect included) until the last PUBACK.
async fn publisher(
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    topic: String,
    payloads: Vec<Vec<u8>>,
    inflight: u16,
    broker: Option<u32>,
) -> Run {
    let count = payloads.len() as u64;
    let bytes = payloads.iter().map(|p| p.len() as u64).sum();
    let (cpu0, broker0) = (cpu_secs(None), broker.map(|p| cpu_secs(Some(p))));
    let start = Instant::now();
    let mut o = MqttOptions::new("bench-publisher", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(inflight)
        .set_max_packet_size(support::MAX_PACKET, support::MAX_PACKET)
        .set_request_channel_capacity(usize::from(inflight) + 8);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(o, usize::from(inflight) + 8);
    // The same socket options as the gateway's uplink (src/uplink/conn.rs).
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let sender = tokio::spawn(async move {
        for p in payloads {
            if client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, p)
                .await
                .is_err()
            {
                break;
            }
        }
        // Kept until the end: a dropped client ends the event loop.
        client
    });
    let deadline = start + Duration::from_secs(120);
    let mut acked = 0;
    while acked < count {
        assert!(
            Instant::now() < deadline,
            "the publisher did not finish within 120 s"
        );
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("baseline publisher: {e}"),
        }
    }
    let run = Run {
        messages: count,
        bytes,
        secs: start.elapsed().as_secs_f64(),
        cpu_secs: cpu_secs(None) - cpu0,
        broker_cpu_secs: broker
            .zip(broker0)
            .map_or(0.0, |(p, b0)| cpu_secs(Some(p)) - b0),
    };
    let client = sender.await.expect("publisher task");
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
    run
}

/// The pid of the mosquitto started with the configuration in `dir`.
fn find_broker_pid(dir: &Path) -> Option<u32> {
    let conf = dir.join("mosquitto.conf");
    let conf = conf.to_str()?;
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(conf)
            .then_some(pid)
    })
}

fn mosquitto_version() -> String {
    Command::new("mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// User + system CPU seconds of this process (`None`) or of `pid`, from
/// `/proc/<pid>/stat` (clock ticks of 1/100 s).
fn cpu_secs(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let Ok(stat) = fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses: state is
    // field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(14) + ticks(15)) as f64 / 100.0
}

// ---------------------------------------------------------------------
// Runs, figures and the report

/// One timed run.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    messages: u64,
    /// Payload bytes (message bytes for the spool and MQTT runs; file
    /// bytes for the raw runs).
    bytes: u64,
    secs: f64,
    /// CPU seconds of this process during the run (drain only; the kernel
    /// counts in 10 ms ticks, so a 0.2 s run gives a rough figure).
    cpu_secs: f64,
    /// CPU seconds of mosquitto during the run (drain only).
    broker_cpu_secs: f64,
}

impl Run {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
    fn msg_s(&self) -> f64 {
        self.messages as f64 / self.secs
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct Report {
    machine: serde_json::Value,
    figures: Vec<serde_json::Value>,
    cold_cache: bool,
    /// The scenario filters given (none: all).
    selected: Vec<String>,
}

impl Report {
    fn new(work: &Path) -> Report {
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        // `df -T`: device, type, size, used, available, use%, mount point.
        let df = Command::new("df")
            .arg("-T")
            .arg(work)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .nth(1)
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default();
        let cols: Vec<&str> = df.split_whitespace().collect();
        Report {
            machine: json!({
                "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
                "cpu": cpu,
                "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                "memory_kib": fs::read_to_string("/proc/meminfo").ok().and_then(|m| m.lines().next()
                    .and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok())),
                "filesystem": cols.get(1).copied().unwrap_or("unknown"),
                "device": cols.first().copied().unwrap_or("unknown"),
                "mount": cols.last().copied().unwrap_or("unknown"),
                "work_dir": work,
                "loadavg_at_start": loadavg(),
            }),
            figures: vec![],
            cold_cache: can_drop_caches(),
            selected: vec![],
        }
    }

    /// One `name value unit` line, and its entry in the JSON.
    fn figure(&mut self, name: &str, value: f64, unit: &str, runs: Vec<f64>) {
        let digits = match unit {
            "ratio" => 3,
            "MB/s" | "MiB" => 1,
            "s" | "ms" | "cpu_ms/msg" => 3,
            _ => 0,
        };
        println!("{name} {value:.digits$} {unit}");
        self.figures
            .push(json!({ "name": name, "value": value, "unit": unit, "runs": runs }));
    }

    /// Throughput of `a` and of its baseline `b`, and a / b (the median of
    /// the per-run ratios of message rates: same messages, same blocks).
    fn pair(&mut self, prefix: &str, a_name: &str, a: &[Run], b_name: &str, b: &[Run]) {
        self.rates(&format!("{prefix}_{a_name}"), a);
        self.rates(&format!("{prefix}_{b_name}"), b);
        let ratios: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(x, y)| x.msg_s() / y.msg_s())
            .collect();
        self.figure(
            &format!("{prefix}_ratio"),
            median(ratios.clone()),
            "ratio",
            ratios,
        );
    }

    fn rates(&mut self, prefix: &str, runs: &[Run]) {
        let mb: Vec<f64> = runs.iter().map(Run::mb_s).collect();
        let msg: Vec<f64> = runs.iter().map(Run::msg_s).collect();
        let secs: Vec<f64> = runs.iter().map(|r| r.secs).collect();
        self.figure(&format!("{prefix}_mb_s"), median(mb.clone()), "MB/s", mb);
        self.figure(
            &format!("{prefix}_msg_s"),
            median(msg.clone()),
            "msg/s",
            msg,
        );
        self.figure(&format!("{prefix}_time"), median(secs.clone()), "s", secs);
    }

    /// CPU of this process and of the broker per message, during a drain.
    fn per_message_cpu(&mut self, prefix: &str, runs: &[Run]) {
        let own: Vec<f64> = runs
            .iter()
            .map(|r| r.cpu_secs * 1e3 / r.messages as f64)
            .collect();
        let broker: Vec<f64> = runs
            .iter()
            .map(|r| r.broker_cpu_secs * 1e3 / r.messages as f64)
            .collect();
        self.figure(
            &format!("{prefix}_cpu_per_msg"),
            median(own.clone()),
            "cpu_ms/msg",
            own,
        );
        self.figure(
            &format!("{prefix}_broker_cpu_per_msg"),
            median(broker.clone()),
            "cpu_ms/msg",
            broker,
        );
    }

    fn write(&self, path: &Path, took: Duration) {
        let doc = json!({
            "bench": "spool",
            "scenarios": if self.selected.is_empty() { json!("all") } else { json!(self.selected) },
            "command": "cargo bench --bench spool",
            "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "runs_per_figure": RUNS,
            "statistic": "median",
            "mb": "10^6 bytes",
            "page_cache": if self.cold_cache { "dropped before each read, scan and drain run" } else { "warm (not root)" },
            "duration_s": took.as_secs_f64(),
            "machine": self.machine,
            "loadavg_at_end": loadavg(),
            "figures": self.figures,
        });
        let text = serde_json::to_string_pretty(&doc).expect("the report serializes");
        fs::write(path, text + "\n").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        progress(&format!(
            "spool bench: done in {:.0} s; figures in {}",
            took.as_secs_f64(),
            path.display()
        ));
    }
}

// ---------------------------------------------------------------------
// Helpers

/// `/proc/loadavg`: the machine is shared, so say how busy it was.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn progress(line: &str) {
    eprintln!("{line}");
}

fn fresh_dir(work: &Path, name: &str) -> PathBuf {
    let dir = work.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Dirty pages to disk, so that one run's writeback does not land in the
/// next run's time.
fn sync_all() {
    nix::unistd::sync();
}

fn can_drop_caches() -> bool {
    fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .is_ok()
}

/// Empties the page cache (root only), so reads come from the disk.
fn drop_caches() {
    sync_all();
    if let Ok(mut f) = fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
    {
        let _ = f.write_all(b"3\n");
    }
}
