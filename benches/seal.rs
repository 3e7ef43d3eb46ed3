//! Seal and open benchmarks (issue 5): the cost per sealed message of
//! `Sealer::seal` and `Opener::open` for batches of 1, 10 and 100 records
//! of the simulated bike sensor (six columns, three of them encrypted), the
//! bytes on the wire per record against the plain JSON of the same records,
//! and, as the baseline measured in the same run, the cost of one MQTT
//! QoS 1 publish of a message of the same size over mutual TLS to a real
//! mosquitto, until its PUBACK.
//!
//! - **seal / open**: `MESSAGES` messages of fresh records (contiguous
//!   sequence numbers) per run, timed together, divided by their count. A
//!   new `Opener` per run, so no message is a duplicate. With data-key
//!   reuse (`SealerOptions`) sealing is timed twice: a new data key per
//!   message (`rotate_after_messages = 1`, one ECDH each) and the default
//!   reuse (one ECDH per key).
//! - **bytes**: the sealed message's length divided by its records, against
//!   `{"seq":..,"ts":..,"fields":{..}}` per record (what `open` prints,
//!   without gateway and sensor), with the same values.
//! - **publish**: one rumqttc client over the gateway's TLS configuration;
//!   `rtt`: publish, wait for the PUBACK, publish the next (the latency of
//!   one message); `pipelined`: `PUBLISHES` messages with 100 in flight,
//!   timed until the last PUBACK, divided by their count (the throughput
//!   cost), with rumqttc's default socket options (as the gateway) and
//!   with TCP_NODELAY (`pipelined_nodelay`), and with TCP_NODELAY on both
//!   sides (`pipelined_broker_nodelay`: a second mosquitto, the rig's
//!   configuration plus `set_tcp_nodelay true`). No subscriber: the PUBACK
//!   comes from the broker.
//!
//! Each figure is the median of `RUNS` runs. Figures go to stdout as
//! `name value unit` lines and to `target/bench/seal.json`; progress goes
//! to stderr. `cargo bench --bench seal`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use sensorgate::config;
use sensorgate::demo::pty::{sim_decoder, sim_line};
use sensorgate::record::{Record, format_ts};
use sensorgate::seal::{self, SealedMessage, Sealer, SealerOptions};
use sensorgate::serial::format::csv::CsvDecoder;
use sensorgate::serial::format::{Decode, Decoded};
use sensorgate::uplink;
use serde_json::json;

/// Runs per figure; the median is reported.
const RUNS: usize = 7;
/// Messages sealed (and opened) per run.
const MESSAGES: usize = 200;
/// Messages published per run of each publish baseline.
const PUBLISHES: usize = 200;
/// Batch sizes, in records per message.
const BATCHES: [usize; 3] = [1, 10, 100];
const SENSOR: &str = "bike";
/// Columns the sealer encrypts, as in the test rig.
const ENCRYPTED: [&str; 3] = ["heart_rate", "incline", "resistance"];

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,rumqttc=error"))
        .with_writer(std::io::stderr)
        .init();
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .to_path_buf();
    fs::create_dir_all(target.join("bench")).expect("create target/bench");
    let started = Instant::now();
    let mut report = Report::new();
    progress(&format!(
        "seal bench: {RUNS} runs per figure, {MESSAGES} messages per seal/open run"
    ));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    progress("starting mosquitto with mutual TLS");
    // The rig's keys (written by `keygen`) and TLS files, as a gateway has.
    let rig = support::Rig::new();
    let cfg_path = rig.gateway_config("bench.toml", &[(SENSOR, Path::new("/dev/ttyBENCH0"))], "");
    let cfg = config::load_with_env(&cfg_path, &[]).expect("load the bench configuration");
    let tls = uplink::tls::load_client_config(&cfg.mqtt).expect("load the gateway's TLS files");
    let topic = cfg.topic_for(SENSOR);
    report.machine["mosquitto"] = json!(mosquitto_version());
    // A second broker like the rig's, with TCP_NODELAY on its client
    // sockets (`set_tcp_nodelay`, off by default): does Nagle's algorithm
    // on the broker's side hold back PUBACKs of pipelined publishes?
    let nodelay_broker =
        support::Mosquitto::start_with(&rig.pki, |_| "set_tcp_nodelay true".to_string());

    let recipient_public =
        seal::load_public_key(&rig.recipient.pub_path).expect("the recipient's public key");
    let encrypt = ENCRYPTED.map(String::from);
    let sealer = |options: SealerOptions| {
        Sealer::new(
            "test-gw",
            "bench-epoch",
            seal::load_signing_key(&rig.gateway_key.key_path).expect("the gateway key"),
            recipient_public.clone(),
            &encrypt,
        )
        .with_options(options)
    };
    let fresh_key = SealerOptions {
        rotate_after_messages: 1,
        ..SealerOptions::default()
    };
    let reuse = SealerOptions::default();
    report.machine["sealer_default"] = json!(format!("{reuse:?}"));
    let opener = || rig.opener();
    let mut records = RecordSource::new();

    for n in BATCHES {
        let label = format!("{n}rec");
        progress(&format!("{label}: seal, open, publish"));
        let (mut seal_fresh, mut seal_reuse, mut open_fresh, mut open_reuse) =
            (vec![], vec![], vec![], vec![]);
        let (mut rtt, mut pipelined, mut pipelined_nodelay) = (vec![], vec![], vec![]);
        let mut pipelined_broker_nodelay = vec![];
        let mut sample: Option<(SealedMessage, Vec<Record>)> = None;
        for _ in 0..RUNS {
            for (options, seal_runs, open_runs) in [
                (fresh_key, &mut seal_fresh, &mut open_fresh),
                (reuse, &mut seal_reuse, &mut open_reuse),
            ] {
                let batches: Vec<Vec<Record>> = (0..MESSAGES).map(|_| records.batch(n)).collect();
                let mut s = sealer(options);
                let start = Instant::now();
                let sealed: Vec<SealedMessage> = batches
                    .iter()
                    .map(|b| s.seal(b).expect("seal a batch"))
                    .collect();
                seal_runs.push(per_message_us(start.elapsed(), MESSAGES));
                let mut o = opener();
                let start = Instant::now();
                for m in &sealed {
                    let opened = o.open(&m.bytes).expect("open a sealed message");
                    assert_eq!(opened.records.len(), n);
                }
                open_runs.push(per_message_us(start.elapsed(), MESSAGES));
                if sample.is_none() {
                    sample = Some((sealed[0].clone(), batches[0].clone()));
                }
            }
            let (message, _) = sample.as_ref().expect("a sample message");
            rtt.push(rt.block_on(publish_rtt(
                tls.clone(),
                rig.broker.port(),
                &topic,
                &message.bytes,
            )));
            pipelined.push(rt.block_on(publish_pipelined(
                tls.clone(),
                rig.broker.port(),
                &topic,
                &message.bytes,
                false,
            )));
            pipelined_nodelay.push(rt.block_on(publish_pipelined(
                tls.clone(),
                rig.broker.port(),
                &topic,
                &message.bytes,
                true,
            )));
            pipelined_broker_nodelay.push(rt.block_on(publish_pipelined(
                tls.clone(),
                nodelay_broker.port(),
                &topic,
                &message.bytes,
                true,
            )));
        }
        let (message, batch) = sample.expect("a sample message");
        let wire = message.bytes.len() as f64 / n as f64;
        let plain = batch.iter().map(plain_json_len).sum::<usize>() as f64 / n as f64;
        report.figure(
            &format!("message_bytes_{label}"),
            message.bytes.len() as f64,
            "bytes",
            vec![],
        );
        report.figure(
            &format!("wire_bytes_per_record_{label}"),
            wire,
            "bytes",
            vec![],
        );
        report.figure(
            &format!("plain_json_bytes_per_record_{label}"),
            plain,
            "bytes",
            vec![],
        );
        report.figure(
            &format!("wire_over_plain_{label}"),
            wire / plain,
            "ratio",
            vec![],
        );
        report.median(&format!("seal_fresh_key_{label}"), "us/msg", &seal_fresh);
        report.median(&format!("seal_reused_key_{label}"), "us/msg", &seal_reuse);
        report.median(&format!("open_fresh_key_{label}"), "us/msg", &open_fresh);
        report.median(&format!("open_reused_key_{label}"), "us/msg", &open_reuse);
        report.median(&format!("publish_rtt_{label}"), "us/msg", &rtt);
        report.median(&format!("publish_pipelined_{label}"), "us/msg", &pipelined);
        report.median(
            &format!("publish_pipelined_nodelay_{label}"),
            "us/msg",
            &pipelined_nodelay,
        );
        report.median(
            &format!("publish_pipelined_broker_nodelay_{label}"),
            "us/msg",
            &pipelined_broker_nodelay,
        );
        for (name, runs) in [
            ("seal_fresh_key", &seal_fresh),
            ("seal_reused_key", &seal_reuse),
            ("open_fresh_key", &open_fresh),
            ("open_reused_key", &open_reuse),
        ] {
            for (base, base_runs) in [
                ("rtt", &rtt),
                ("pipelined", &pipelined),
                ("pipelined_nodelay", &pipelined_nodelay),
                ("pipelined_broker_nodelay", &pipelined_broker_nodelay),
            ] {
                let ratios: Vec<f64> = runs
                    .iter()
                    .zip(base_runs.iter())
                    .map(|(a, b)| a / b)
                    .collect();
                report.ratio(&format!("{name}_over_publish_{base}_{label}"), ratios);
            }
        }
    }
    report.write(&target.join("bench").join("seal.json"), started.elapsed());
}

fn per_message_us(elapsed: Duration, messages: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / messages as f64
}

/// Records of the simulated bike sensor, decoded from its CSV lines as the
/// gateway decodes them, with ascending sequence numbers.
struct RecordSource {
    decoder: CsvDecoder,
    sensor: Arc<str>,
    seq: u64,
}

impl RecordSource {
    fn new() -> RecordSource {
        RecordSource {
            decoder: sim_decoder(),
            sensor: Arc::from(SENSOR),
            seq: 0,
        }
    }

    fn batch(&mut self, n: usize) -> Vec<Record> {
        (0..n)
            .map(|_| {
                let seq = self.seq;
                self.seq += 1;
                let Ok(Decoded::Fields(fields)) = self.decoder.decode(sim_line(seq).as_bytes())
                else {
                    panic!("the simulated line {seq} does not decode");
                };
                Record {
                    sensor: Arc::clone(&self.sensor),
                    seq,
                    ts: SystemTime::now(),
                    clock: None,
                    fields,
                }
            })
            .collect()
    }
}

/// `{"seq":..,"ts":..,"fields":{..}}`: the record as plain JSON, fields in
/// column order.
fn plain_json_len(r: &Record) -> usize {
    let mut s = format!(
        r#"{{"seq":{},"ts":{},"fields":{{"#,
        r.seq,
        serde_json::to_string(&format_ts(r.ts)).expect("a string")
    );
    for (i, f) in r.fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&serde_json::to_string(&*f.name).expect("a string"));
        s.push(':');
        s.push_str(&f.value.to_json().to_string());
    }
    s.push_str("}}");
    s.len()
}

fn mqtt_options(tls: Arc<rustls::ClientConfig>, port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(100)
        .set_max_packet_size(support::MAX_PACKET, support::MAX_PACKET)
        .set_request_channel_capacity(PUBLISHES + 8);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    o
}

/// Connects, then waits for the CONNACK (not timed).
async fn connect(
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    id: &str,
    nodelay: bool,
) -> (AsyncClient, rumqttc::EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(mqtt_options(tls, port, id), PUBLISHES + 8);
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(nodelay);
    eventloop.set_network_options(net);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return (client, eventloop),
            Ok(_) => {}
            Err(e) => panic!("bench publisher: {e}"),
        }
    }
}

async fn wait_for_pubacks(eventloop: &mut rumqttc::EventLoop, count: usize) {
    let mut acked = 0;
    while acked < count {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("bench publisher: {e}"),
            Err(_) => panic!("no PUBACK within 30 s ({acked} of {count})"),
        }
    }
}

async fn disconnect(client: AsyncClient, mut eventloop: rumqttc::EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
}

/// Per message, µs: publish at QoS 1 and wait for its PUBACK, one at a time.
async fn publish_rtt(
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    topic: &str,
    payload: &[u8],
) -> f64 {
    let (client, mut eventloop) = connect(tls, port, "bench-seal-rtt", false).await;
    let start = Instant::now();
    for _ in 0..PUBLISHES {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .expect("queue a publish");
        wait_for_pubacks(&mut eventloop, 1).await;
    }
    let us = per_message_us(start.elapsed(), PUBLISHES);
    disconnect(client, eventloop).await;
    us
}

/// Per message, µs: `PUBLISHES` messages with up to 100 in flight.
/// `nodelay`: TCP_NODELAY on the client socket (rumqttc's default, and the
/// gateway's, is off: Nagle's algorithm on).
async fn publish_pipelined(
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    topic: &str,
    payload: &[u8],
    nodelay: bool,
) -> f64 {
    let (client, mut eventloop) = connect(tls, port, "bench-seal-pipelined", nodelay).await;
    let start = Instant::now();
    for _ in 0..PUBLISHES {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .expect("queue a publish");
    }
    wait_for_pubacks(&mut eventloop, PUBLISHES).await;
    let us = per_message_us(start.elapsed(), PUBLISHES);
    disconnect(client, eventloop).await;
    us
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
}

impl Report {
    fn new() -> Report {
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Report {
            machine: json!({
                "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
                "cpu": cpu,
                "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                "loadavg_at_start": loadavg(),
            }),
            figures: vec![],
        }
    }

    /// One `name value unit` line, and its entry in the JSON.
    fn figure(&mut self, name: &str, value: f64, unit: &str, runs: Vec<f64>) {
        let digits = match unit {
            "ratio" => 3,
            "us/msg" => 1,
            _ => 0,
        };
        println!("{name} {value:.digits$} {unit}");
        self.figures
            .push(json!({ "name": name, "value": value, "unit": unit, "runs": runs }));
    }

    fn median(&mut self, name: &str, unit: &str, runs: &[f64]) {
        self.figure(name, median(runs.to_vec()), unit, runs.to_vec());
    }

    /// The median of the per-run ratios.
    fn ratio(&mut self, name: &str, ratios: Vec<f64>) {
        self.figure(name, median(ratios.clone()), "ratio", ratios);
    }

    fn write(&self, path: &Path, took: Duration) {
        let doc = json!({
            "bench": "seal",
            "command": "cargo bench --bench seal",
            "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "runs_per_figure": RUNS,
            "messages_per_run": MESSAGES,
            "publishes_per_run": PUBLISHES,
            "statistic": "median",
            "duration_s": took.as_secs_f64(),
            "machine": self.machine,
            "loadavg_at_end": loadavg(),
            "figures": self.figures,
        });
        let text = serde_json::to_string_pretty(&doc).expect("the report serializes");
        fs::write(path, text + "\n").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        progress(&format!(
            "seal bench: done in {:.0} s; figures in {}",
            took.as_secs_f64(),
            path.display()
        ));
    }
}

/// `/proc/loadavg`: the machine is shared, so say how busy it was.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn mosquitto_version() -> String {
    std::process::Command::new("mosquitto")
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

fn progress(line: &str) {
    eprintln!("{line}");
}
