//! Fleet load on the cloud side (issue 18): `cargo bench --bench fleet`
//! (a few minutes), or `cargo bench --bench fleet -- GATEWAYS SENSORS
//! RECORDS BATCH` (defaults 1000 8 100 10).
//!
//! GATEWAYS gateways × SENSORS sensors, each gateway with a key of its own
//! (its `.pub` in the consumers' trust folder), seal RECORDS records per
//! sensor in messages of BATCH (each gateway under one data key, so a
//! consumer unwraps 1000 keys: one ECDH per 80 messages by default, where
//! a gateway rotates its key every 1000 messages or hour), published to the tests' mosquitto (mutual
//! TLS) while the consumers are away, so that the broker queues them in
//! their persistent sessions. Then 1, and again 2, `sensorgate open
//! --mqtt` processes of one share group are started, and the time from
//! their start until the last commit into `sensorgate_records` is measured
//! (commit timestamps; the count is polled once a second to know when
//! every record is in).
//!
//! The baseline, in the same run and the same database: a plain `COPY` of
//! the same rows (psql `\copy` of a CSV) into a table of the same shape and
//! key, timed the same way, the median of three. CPU per record is the consumers' own (verify, decrypt, the client
//! side of the insert), PostgreSQL's (all its processes) and the broker's
//! (delivering the queued messages over TLS), from /proc.
//! Prints `name value unit` lines.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sensorgate::record::{Field, Record, Value};
use sensorgate::seal::{self, Sealer};
use support::Rig;
use support::postgres::{Consumer, Postgres, consumer_config};

const EPOCH: &str = "fleet-bench";
/// The longest a drain may take before the bench gives up.
const LIMIT: Duration = Duration::from_secs(900);

struct Shape {
    gateways: usize,
    sensors: usize,
    records: u64,
    batch: u64,
}

impl Shape {
    fn from_args() -> Shape {
        let args: Vec<u64> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        let arg = |i: usize, default: u64| args.get(i).copied().unwrap_or(default);
        Shape {
            gateways: arg(0, 1000) as usize,
            sensors: arg(1, 8) as usize,
            records: arg(2, 100),
            batch: arg(3, 10).max(1),
        }
    }

    fn total(&self) -> u64 {
        (self.gateways * self.sensors) as u64 * self.records
    }
}

fn record(sensor: &Arc<str>, seq: u64) -> Record {
    let f = |name: &str, value: Value| Field {
        name: Arc::from(name),
        value,
    };
    Record {
        sensor: sensor.clone(),
        seq,
        ts: SystemTime::UNIX_EPOCH + Duration::new(1_764_100_000 + seq, 500_000_000),
        clock: None,
        fields: vec![
            f("speed", Value::Float(20.5 + seq as f64)),
            f("heart_rate", Value::Int(100 + (seq % 80) as i64)),
            f("cadence", Value::Int(80 + (seq % 20) as i64)),
        ],
    }
}

/// The messages of the whole fleet, in the order a fleet whose gateways
/// all send at once publishes them (every gateway's first message of each
/// sensor, then the second, ...), and the same records as CSV rows for
/// the COPY baseline (the JSON the consumer stores for them).
fn seal_fleet(rig: &Rig, shape: &Shape, trust: &Path) -> (Vec<Vec<u8>>, String) {
    let recipient = seal::load_public_key(&rig.recipient.pub_path).unwrap();
    let mut sealers: Vec<(String, Sealer)> = (0..shape.gateways)
        .map(|g| {
            let gateway = format!("gw-{g:05}");
            let keys = seal::keygen(trust, &gateway).unwrap();
            let key = seal::load_signing_key(&keys.key_path).unwrap();
            std::fs::remove_file(&keys.key_path).unwrap();
            let sealer = Sealer::new(
                &gateway,
                EPOCH,
                key,
                recipient.clone(),
                &["heart_rate".to_string()],
            );
            (gateway, sealer)
        })
        .collect();
    let sensors: Vec<Arc<str>> = (0..shape.sensors)
        .map(|s| Arc::from(format!("s{s}").as_str()))
        .collect();
    let mut messages = Vec::new();
    let mut csv = String::new();
    let mut seq = 0;
    while seq < shape.records {
        let last = (seq + shape.batch).min(shape.records);
        for (gateway, sealer) in &mut sealers {
            for sensor in &sensors {
                let records: Vec<Record> = (seq..last).map(|n| record(sensor, n)).collect();
                messages.push(sealer.seal(&records).unwrap().bytes);
                for r in &records {
                    let ts = humantime::format_rfc3339_nanos(r.ts);
                    let _ = writeln!(
                        csv,
                        "{gateway},{sensor},{EPOCH},{},{ts},\"{{\"\"speed\"\": {}, \"\"heart_rate\"\": {}, \"\"cadence\"\": {}}}\"",
                        r.seq,
                        20.5 + r.seq as f64,
                        100 + r.seq % 80,
                        80 + r.seq % 20
                    );
                }
            }
        }
        seq = last;
    }
    (messages, csv)
}

/// Seconds from `start` to the last commit of a row of `table`
/// (`track_commit_timestamp` is on in the tests' clusters).
fn until_last_commit(pg: &Postgres, table: &str, start: SystemTime) -> f64 {
    let last: f64 = pg
        .query(&format!(
            "SELECT extract(epoch FROM max(pg_xact_commit_timestamp(xmin))) FROM {table}"
        ))
        .trim()
        .parse()
        .expect("a commit time");
    last - start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// CPU seconds (user + system) of the process `pid`, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command's closing parenthesis: utime is the 12th,
    // stime the 13th of those (man 5 proc), in clock ticks.
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every `postgres` process (the server and its backends;
/// a backend that ended meanwhile is not counted).
fn postgres_cpu_seconds() -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            total += cpu_seconds(pid);
        }
    }
    total
}

/// Publishes every message with QoS 1 (the broker acknowledges each). One
/// topic for all: a message names its gateway and sensor itself.
fn publish_all(rig: &Rig, messages: &[Vec<u8>]) {
    let id = rig.pki.client("fleet-publisher").unwrap();
    let tls = sensorgate::demo::pki::rustls_client_config(&rig.pki.ca_pem(), &id).unwrap();
    support::publish_all(
        support::mqtt_options("fleet-publisher", rig.broker.port(), tls),
        "sensorgate/fleet/all",
        messages.to_vec(),
        LIMIT,
    );
}

fn main() {
    let shape = Shape::from_args();
    let total = shape.total();
    println!(
        "# {} gateways x {} sensors x {} records, {} a message: {total} records",
        shape.gateways, shape.sensors, shape.records, shape.batch
    );
    let rig = Rig::new();
    let pg = Postgres::start();
    let trust = rig.dir.join("trusted");
    let started = Instant::now();
    let (messages, csv) = seal_fleet(&rig, &shape, &trust);
    println!(
        "# sealed {} messages in {:.1} s",
        messages.len(),
        started.elapsed().as_secs_f64()
    );
    println!("fleet_records {total} records");
    println!("fleet_messages {} messages", messages.len());

    let mut rates = Vec::new();
    for consumers in [1usize, 2] {
        let group = format!("share_group = \"fleet-{consumers}\"");
        let sink = format!("postgres = {:?}", pg.url());
        let configs: Vec<_> = (0..consumers)
            .map(|i| consumer_config(&rig, &format!("fleet-{consumers}-{i}"), &group, &sink))
            .collect();
        // Subscribe once, then go away: the broker queues the messages in
        // the persistent sessions while they are published.
        for config in &configs {
            let mut c = Consumer::start(&rig, config, &trust);
            assert_eq!(c.stop(), 0, "{}", c.log());
        }
        eprintln!("# {consumers}: sessions made");
        pg.query("TRUNCATE sensorgate_records");
        publish_all(&rig, &messages);
        eprintln!("# {consumers}: published");

        pg.query("CHECKPOINT");
        let pg_cpu = postgres_cpu_seconds();
        let broker_pid = rig.broker.pid().expect("the broker runs");
        let broker_cpu = cpu_seconds(broker_pid);
        let start = SystemTime::now();
        let running: Vec<Consumer> = configs
            .iter()
            .map(|config| Consumer::start(&rig, config, &trust))
            .collect();
        // Polled once a second (a count of the whole table is work for
        // the database too); the time is the last commit's.
        let drained = support::wait_until(LIMIT, Duration::from_secs(1), || {
            pg.count("SELECT count(*) FROM sensorgate_records") >= total
        });
        assert!(drained, "not drained: {}", running[0].log());
        let elapsed = until_last_commit(&pg, "sensorgate_records", start);
        let consumer_cpu: f64 = running.iter().map(|c| cpu_seconds(c.pid())).sum();
        let pg_cpu = postgres_cpu_seconds() - pg_cpu;
        let broker_cpu = cpu_seconds(broker_pid) - broker_cpu;
        drop(running);
        let rate = total as f64 / elapsed;
        rates.push(rate);
        println!("fleet_{consumers}_consumers_records_per_s {rate:.0} records/s");
        println!(
            "fleet_{consumers}_consumers_records_per_s_per_consumer {:.0} records/s",
            rate / consumers as f64
        );
        println!(
            "fleet_{consumers}_consumers_consumer_cpu_us_per_record {:.1} us",
            consumer_cpu * 1e6 / total as f64
        );
        println!(
            "fleet_{consumers}_consumers_postgres_cpu_us_per_record {:.1} us",
            pg_cpu * 1e6 / total as f64
        );
        println!(
            "fleet_{consumers}_consumers_broker_cpu_us_per_record {:.1} us",
            broker_cpu * 1e6 / total as f64
        );
    }

    // The baseline: the same rows by COPY, into a table of the same shape;
    // the median of three.
    pg.query("CREATE TABLE copy_baseline (LIKE sensorgate_records INCLUDING ALL)");
    let file = rig.dir.join("rows.csv");
    std::fs::write(&file, &csv).unwrap();
    let mut copies: Vec<f64> = (0..3)
        .map(|_| {
            pg.query("TRUNCATE copy_baseline");
            pg.query("CHECKPOINT");
            let start = SystemTime::now();
            pg.query(&format!(
                "\\copy copy_baseline (gateway, sensor, epoch, seq, ts, fields) FROM '{}' WITH (FORMAT csv)",
                file.display()
            ));
            assert_eq!(pg.count("SELECT count(*) FROM copy_baseline"), total);
            total as f64 / until_last_commit(&pg, "copy_baseline", start)
        })
        .collect();
    copies.sort_by(f64::total_cmp);
    let copy = copies[1];
    println!(
        "fleet_copy_records_per_s {copy:.0} records/s (runs: {:.0}, {:.0}, {:.0})",
        copies[0], copies[1], copies[2]
    );
    for (consumers, rate) in [1, 2].iter().zip(&rates) {
        println!(
            "fleet_{consumers}_consumers_vs_copy {:.4} ratio",
            rate / copy
        );
    }
}
