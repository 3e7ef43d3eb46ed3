//! `sensorgate demo`: the whole system on one machine with no hardware and
//! no installed broker. A simulated sensor writes CSV lines into a
//! pseudo-terminal; the real pipeline reads it as its serial device and
//! publishes over mutual TLS to an embedded broker (rumqttd) with throwaway
//! certificates; a consumer subscribes over mutual TLS, verifies and
//! decrypts every message, and checks each record against what was written.

pub mod broker;
pub mod pki;
pub mod pty;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Log, LogFormat};
use crate::seal::{self, Opener};
use crate::serial::format::csv::CsvDecoder;
use crate::serial::format::{Decode, Decoded};
use crate::telemetry::{self, Stats};

const GATEWAY: &str = "demo-pi";
const SENSOR: &str = "bike";
/// How long the demo waits without progress before calling records lost.
const IDLE_LIMIT: Duration = Duration::from_secs(20);

/// What the consumer saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    verified: BTreeSet<u64>,
    mismatched: u64,
    rejected: u64,
}

/// Runs the demo and returns the exit code: 0 when every record written
/// arrived verified and equal to what was written.
pub async fn run(count: u64, rate: Option<f64>) -> u8 {
    telemetry::init(&Log {
        level: "info".into(),
        format: LogFormat::Text,
        stats_interval: Duration::from_secs(60),
    });
    match run_inner(count, rate).await {
        Ok((sent, seen)) => {
            let verified = seen.verified.len() as u64;
            let lost = sent.saturating_sub(verified);
            if seen.mismatched > 0 || seen.rejected > 0 {
                eprintln!(
                    "demo: {} records differed from what was written, {} messages rejected",
                    seen.mismatched, seen.rejected
                );
            }
            println!("demo: {sent} records sent, {verified} verified, {lost} lost");
            if lost == 0 && verified == count && seen.mismatched == 0 && seen.rejected == 0 {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("sensorgate demo: {e:#}");
            70
        }
    }
}

async fn run_inner(count: u64, rate: Option<f64>) -> anyhow::Result<(u64, Seen)> {
    let dir = tempfile::Builder::new()
        .prefix("sensorgate-demo.")
        .tempdir()?;
    let root = dir.path();

    // Throwaway PKI: a CA, the broker's certificate, one client certificate
    // for the gateway and one for the consumer.
    let ca = pki::Pki::new("sensorgate demo CA")?;
    let server = ca.server(&["localhost", "127.0.0.1"])?;
    let gateway_id = ca.client(GATEWAY)?;
    let tls = pki::write_files(&root.join("tls"), &ca, &server, &gateway_id)?;
    let broker = broker::start(&root.join("broker"), &ca)?;
    tracing::info!(
        port = broker.port,
        "demo broker (rumqttd, mutual TLS) listening on 127.0.0.1"
    );

    // The gateway's signing key and the cloud side's recipient key.
    let keys = root.join("keys");
    let gw_key = seal::keygen(&keys, "gateway")?;
    let recipient = seal::keygen(&keys, "recipient")?;

    let pty = pty::Pty::open()?;
    let config_path = root.join("sensorgate.toml");
    std::fs::write(
        &config_path,
        demo_config(root, pty.path(), broker.port, &tls, &gw_key, &recipient),
    )?;
    let cfg = config::load_with_env(&config_path, &[])?;

    // The consumer: subscribe over mTLS before anything is sent.
    let consumer_id = ca.client("demo-consumer")?;
    let opener = Opener::new(
        vec![seal::load_public_key_from(
            &gw_key.pub_path,
            seal::KeyOrigin::Given,
        )?],
        Some(seal::load_recipient_key_from(
            &recipient.key_path,
            seal::KeyOrigin::Given,
        )?),
    );
    let client_tls = pki::rustls_client_config(&ca.ca_pem(), &consumer_id)?;
    let (seen_tx, mut seen_rx) = watch::channel(Seen::default());
    let consumer = start_consumer(broker.port, client_tls, opener, seen_tx).await?;

    // The gateway itself, in this process.
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let gateway = tokio::spawn(crate::pipeline::run(cfg, stats.clone(), stop.clone()));
    let opened = tokio::time::timeout(Duration::from_secs(10), async {
        while stats.sensors_open.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if opened.is_err() {
        stop.cancel();
        anyhow::bail!("the gateway did not open the simulated serial device within 10 s");
    }

    let writer = pty::SimSensor::spawn(pty.writer()?, count, rate);
    let sent = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("simulated sensor thread panicked"))??;

    // Wait for every record, giving up after IDLE_LIMIT without progress.
    loop {
        let done = seen_rx.borrow().verified.len() as u64 >= sent;
        if done {
            break;
        }
        match tokio::time::timeout(IDLE_LIMIT, seen_rx.changed()).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    stop.cancel();
    match gateway.await? {
        Ok(_) => {}
        Err(e) => anyhow::bail!("gateway failed to start: {e}"),
    }
    consumer.abort();
    let seen = seen_rx.borrow().clone();
    drop(broker);
    Ok((sent, seen))
}

fn demo_config(
    root: &Path,
    device: &Path,
    port: u16,
    tls: &pki::PkiFiles,
    gw_key: &seal::KeygenOutput,
    recipient: &seal::KeygenOutput,
) -> String {
    let columns = pty::sim_columns()
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = String::new();
    let _ = write!(
        s,
        r#"# Written by `sensorgate demo`; see config/sensorgate.toml for every option.
[gateway]
id = "{GATEWAY}"
state_dir = {state:?}

[[sensor]]
name = "{SENSOR}"
device = {device:?}
baud = 115200
columns = [{columns}]

[mqtt]
host = "127.0.0.1"
port = {port}
ca_file = {ca:?}
cert_file = {cert:?}
key_file = {key:?}
drain_timeout = "10s"

[batch]
max_records = 100
linger = "100ms"

[seal]
signing_key = {signing:?}
recipient_key = {recipient:?}
encrypt = ["heart_rate", "incline", "resistance"]

[time]
# The demo trusts this machine's clock (a VM's kernel often says it is not
# synchronised, having no NTP daemon); on a Pi, leave the default "auto".
synchronized_by = "trust"
"#,
        state = root.join("state"),
        device = device,
        ca = tls.ca,
        cert = tls.client_cert,
        key = tls.client_key,
        signing = gw_key.key_path,
        recipient = recipient.pub_path,
    );
    s
}

/// Subscribes to the gateway's topics and opens every message, printing
/// each verified record as one JSON line.
async fn start_consumer(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    mut opener: Opener,
    seen: watch::Sender<Seen>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut opts = MqttOptions::new("demo-consumer", "127.0.0.1", port);
    opts.set_transport(Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls),
    ))
    .set_max_packet_size(1 << 20, 1 << 20)
    .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    client
        .subscribe(format!("sensorgate/{GATEWAY}/{SENSOR}"), QoS::AtLeastOnce)
        .await?;
    // Wait for the SUBACK, so nothing published later is missed.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("demo consumer: no SUBACK within 10 s"))??;

    let decoder = pty::sim_decoder();
    Ok(tokio::spawn(async move {
        let _client = client;
        loop {
            let publish = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => p,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "demo consumer lost the broker; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match opener.open(&publish.payload) {
                Ok(msg) => seen.send_modify(|s| {
                    for r in msg.records {
                        if matches_written(&decoder, r.seq, &r.fields) {
                            println!("{}", serde_json::to_string(&r).unwrap_or_default());
                            s.verified.insert(r.seq);
                        } else {
                            eprintln!("demo: record {} differs from what was written", r.seq);
                            s.mismatched += 1;
                        }
                    }
                }),
                Err(e) => {
                    eprintln!("demo: message rejected: {e}");
                    seen.send_modify(|s| s.rejected += 1);
                }
            }
        }
    }))
}

/// True when the opened fields equal what the simulated sensor wrote for
/// record `seq`.
fn matches_written(decoder: &CsvDecoder, seq: u64, fields: &seal::FieldMap) -> bool {
    let Ok(Decoded::Fields(expected)) = decoder.decode(pty::sim_line(seq).as_bytes()) else {
        return false;
    };
    expected.len() == fields.len()
        && expected
            .iter()
            .all(|f| fields.get(&f.name) == Some(&f.value.to_json()))
}
