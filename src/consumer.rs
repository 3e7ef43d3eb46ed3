//! `open --mqtt`: the consumer subscribes to the gateways' topics over
//! mutual TLS and hands every sealed message to a sink: the same
//! [`MessageSink`](crate::seal::MessageSink) as stdin lines (JSON or CSV on
//! stdout), or PostgreSQL ([`crate::sink::postgres`], `[sink] postgres`).
//!
//! Its configuration file holds an `[mqtt]` table with the gateway's keys
//! and meaning (`host`, `port`, `client_id`, `ca_file`, `cert_file`,
//! `key_file`, `server_name`, `alpn`, `keepalive`, `clean_session`, ...),
//! an optional `[consumer]` table (`topic_filter`, `share_group`,
//! `session_expiry`) and an optional `[sink]` table. It speaks MQTT 5,
//! subscribes with QoS 1, and acknowledges each message only after the sink
//! took it (printed, or committed to the database), so with `clean_session
//! = false` (a persistent session, kept `session_expiry` by the broker) a
//! message cut off by a crash is delivered again. With `share_group`, it
//! subscribes to `$share/GROUP/<topic_filter>`: any number of consumers in
//! the group split the messages between them.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Mqtt, Problem};
use crate::seal::MessageSink;

/// What `open --mqtt` subscribes to unless `[consumer] topic_filter` says.
pub const DEFAULT_TOPIC_FILTER: &str = "sensorgate/+/+";

/// The consumer's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub mqtt: Mqtt,
    #[serde(default)]
    pub consumer: Consumer,
    #[serde(default)]
    pub sink: Sink,
}

/// The `[consumer]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    #[serde(default = "default_topic_filter")]
    pub topic_filter: String,
    /// Subscribe to `$share/GROUP/<topic_filter>`: the consumers of one
    /// group split the messages.
    #[serde(default)]
    pub share_group: Option<String>,
    /// How long the broker keeps a persistent session (`clean_session =
    /// false`) and what is queued for it while the consumer is away.
    #[serde(
        default = "default_session_expiry",
        deserialize_with = "crate::config::de_duration"
    )]
    pub session_expiry: Duration,
}

impl Default for Consumer {
    fn default() -> Self {
        Consumer {
            topic_filter: default_topic_filter(),
            share_group: None,
            session_expiry: default_session_expiry(),
        }
    }
}

fn default_topic_filter() -> String {
    DEFAULT_TOPIC_FILTER.to_string()
}

fn default_session_expiry() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}

/// The `[sink] table`: where opened records go instead of stdout.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sink {
    /// `postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=...]`.
    #[serde(default)]
    pub postgres: Option<String>,
    /// The CA certificate(s), PEM, the database's certificate must chain
    /// to: TLS to the database (as `sslmode` in the URL asks).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// Reads `path` (TOML). Relative `ca_file`, `cert_file` and `key_file` are
/// taken relative to the file's folder, as in the gateway's configuration.
pub fn load(path: &Path) -> Result<ConsumerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ConfigError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let problem = |key: &str, message: String| {
        ConfigError::Invalid(vec![Problem {
            source: path.display().to_string(),
            key: key.to_string(),
            message,
        }])
    };
    let mut cfg: ConsumerConfig = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .try_deserialize()
        .map_err(|e| problem("", e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let m = &mut cfg.mqtt;
    for file in [
        m.ca_file.as_mut(),
        m.cert_file.as_mut(),
        m.key_file
            .as_mut()
            .and_then(crate::config::KeyRef::path_mut),
    ]
    .into_iter()
    .flatten()
    {
        if file.is_relative() {
            *file = dir.join(&*file);
        }
    }
    if m.client_id.is_none() {
        if !m.clean_session {
            return Err(problem(
                "mqtt.client_id",
                "a persistent session (clean_session = false) needs a fixed client_id".into(),
            ));
        }
        m.client_id = Some(format!("sensorgate-open-{}", std::process::id()));
    }
    if cfg.consumer.topic_filter.is_empty() {
        return Err(problem("consumer.topic_filter", "must not be empty".into()));
    }
    if let Some(group) = &cfg.consumer.share_group
        && (group.is_empty() || group.contains(['/', '+', '#']))
    {
        return Err(problem(
            "consumer.share_group",
            format!("{group:?} is not a share name: one topic level, without / + #"),
        ));
    }
    if let Some(ca) = cfg.sink.ca_file.as_mut()
        && ca.is_relative()
    {
        *ca = dir.join(&*ca);
    }
    if cfg.sink.postgres.is_some() && !cfg!(feature = "postgres") {
        return Err(problem(
            "sink.postgres",
            "this build of sensorgate has no PostgreSQL sink (built without the `postgres` feature)"
                .into(),
        ));
    }
    Ok(cfg)
}

/// Whether `topic` is a gateway's status topic (not a sealed message): its
/// last level is `status`, or it matches the `status_topic` template with
/// `{gateway}` standing for any one level.
pub fn is_status_topic(template: &str, topic: &str) -> bool {
    if topic.rsplit('/').next() == Some("status") {
        return true;
    }
    let mut want = template.split('/');
    let mut got = topic.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.contains("{gateway}") || w == g => {}
            _ => return false,
        }
    }
}

/// Why the consumer stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("I/O error while opening messages: {0}")]
    Output(#[from] io::Error),
    #[error("the broker refused the subscription to {0:?}")]
    Refused(String),
    #[error("MQTT client stopped: {0}")]
    Client(#[from] rumqttc::v5::ClientError),
    #[cfg(feature = "postgres")]
    #[error(transparent)]
    Sink(#[from] crate::sink::postgres::SinkError),
}

impl ConsumerError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ConsumerError::Output(_) => 74,
            ConsumerError::Refused(_) => 77,
            ConsumerError::Client(_) => 69,
            #[cfg(feature = "postgres")]
            ConsumerError::Sink(e) => e.exit_code(),
        }
    }
}

/// One sealed message as the broker delivered it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: String,
    pub payload: bytes::Bytes,
}

/// When a batch handed to a [`Handler`] may be acknowledged.
pub enum Taken {
    /// Now: the sink took it (printed it).
    Now,
    /// When this says `Ok(true)` (committed to the database). `Ok(false)`:
    /// the consumer is stopping before the batch was taken, so it is left
    /// for the broker to deliver again. Meanwhile the consumer reads and
    /// hands on the next batch.
    Later(tokio::sync::oneshot::Receiver<Result<bool, ConsumerError>>),
    /// The consumer is stopping before the batch was taken.
    Stopped,
}

/// What takes the sealed messages, a batch at a time, in the order they
/// were delivered.
pub trait Handler {
    fn handle(
        &mut self,
        batch: Vec<Delivery>,
        stop: &CancellationToken,
    ) -> impl std::future::Future<Output = Result<Taken, ConsumerError>>;
}

impl<W: Write, E: Write> Handler for MessageSink<'_, W, E> {
    async fn handle(
        &mut self,
        batch: Vec<Delivery>,
        _stop: &CancellationToken,
    ) -> Result<Taken, ConsumerError> {
        for d in &batch {
            self.message(&d.payload, format_args!("on topic {}", d.topic))?;
        }
        Ok(Taken::Now)
    }
}

/// The most messages in one batch handed to the handler (one database
/// transaction).
const BATCH_MESSAGES: usize = 512;

/// The most batches handed to the handler and not yet taken: one being
/// written while the next is verified.
const PENDING_BATCHES: usize = 2;

/// A batch handed to the handler, with the messages to acknowledge once it
/// is taken (status messages included, so that the acknowledgements go in
/// the order the messages came, as MQTT asks).
struct Pending {
    taken: Option<tokio::sync::oneshot::Receiver<Result<bool, ConsumerError>>>,
    publishes: Vec<Publish>,
}

impl Pending {
    /// Whether the batch may be acknowledged; `Ok(false)`: stopping first.
    async fn taken(&mut self) -> Result<bool, ConsumerError> {
        match self.taken.as_mut() {
            None => Ok(true),
            // A handler that went away took nothing.
            Some(rx) => rx.await.unwrap_or(Ok(false)),
        }
    }
}

/// Subscribes and feeds every sealed message to `handler` until `stop` is
/// cancelled or `count` messages were handled (status topics not counted),
/// reconnecting after a lost connection. Messages that came together are
/// handed on together (up to [`BATCH_MESSAGES`]), and the next batch is
/// read while the handler stores the last one.
pub async fn run(
    cfg: &ConsumerConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    handler: &mut impl Handler,
    count: Option<u64>,
    stop: CancellationToken,
) -> Result<(), ConsumerError> {
    let m = &cfg.mqtt;
    let filter = match &cfg.consumer.share_group {
        Some(group) => format!("$share/{group}/{}", cfg.consumer.topic_filter),
        None => cfg.consumer.topic_filter.clone(),
    };
    let client_id = m.client_id.clone().unwrap_or_default();
    let mut options = MqttOptions::new(client_id, &m.host, m.port);
    let packet = u32::try_from(m.max_packet.max(64 * 1024) + 1024).unwrap_or(u32::MAX);
    options
        .set_keep_alive(m.keepalive.max(Duration::from_secs(1)))
        .set_clean_start(m.clean_session)
        .set_max_packet_size(Some(packet))
        // At most this many messages on their way to this consumer and not
        // acknowledged yet: what waits on the sink (the database) is bounded.
        .set_receive_maximum(Some(RECEIVE_MAXIMUM))
        .set_manual_acks(true);
    if !m.clean_session {
        let secs = u32::try_from(cfg.consumer.session_expiry.as_secs()).unwrap_or(u32::MAX);
        options.set_session_expiry_interval(Some(secs));
    }
    if let Some(user) = &m.username {
        let password = m.password.as_ref().map(|p| p.expose().to_string());
        options.set_credentials(user, password.unwrap_or_default());
    }
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    // Room for an acknowledgement of every message the broker may have
    // sent, and the subscription.
    let (client, mut eventloop) = AsyncClient::new(options, usize::from(RECEIVE_MAXIMUM) * 2);
    eventloop
        .options
        .set_connection_timeout(m.connect_timeout.as_secs().max(1));

    // The event loop runs in a task of its own, so that the connection
    // stays alive (keep-alive, acknowledgements) while the handler waits
    // on the sink. Its channel to the loop below must never make it wait:
    // it would then stop sending the acknowledgements the loop queues, and
    // the loop, waiting to queue more, would stop taking events. What it
    // holds is bounded by the broker: at most RECEIVE_MAXIMUM messages
    // unacknowledged (mosquitto 2.0 sends a resumed session's queue beyond
    // that; a warning says so when it grows past the bound).
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (min, max) = (m.reconnect_min, m.reconnect_max.max(m.reconnect_min));
    let poller = tokio::spawn(async move {
        let mut retry = min;
        loop {
            let event = eventloop.poll().await;
            let failed = event.is_err();
            // Only what the loop below acts on: the acknowledgements it
            // sends would otherwise come back as events, and a full
            // channel would stop this task from sending further ones.
            let wanted = matches!(
                &event,
                Ok(Event::Incoming(
                    Packet::ConnAck(_) | Packet::SubAck(_) | Packet::Publish(_)
                )) | Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))
                    | Err(_)
            );
            if wanted && tx.send(event).is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(max);
            } else {
                retry = min;
            }
        }
    });

    let mut session = Session {
        client: &client,
        filter: &filter,
        mqtt: m,
        flooded: false,
    };
    // Sealed messages handed to the handler (status messages not counted).
    let mut handed: u64 = 0;
    let mut pending: std::collections::VecDeque<Pending> = std::collections::VecDeque::new();
    let ended = async {
        loop {
            let more = count.is_none_or(|n| handed < n);
            if !more && pending.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                taken = async { pending.front_mut().expect("not empty").taken().await },
                    if !pending.is_empty() =>
                {
                    let batch = pending.pop_front().expect("not empty");
                    if !taken? {
                        break;
                    }
                    for publish in &batch.publishes {
                        ack(&client, publish).await?;
                    }
                }
                event = events.recv(), if more && pending.len() < PENDING_BATCHES => {
                    let Some(event) = event else { break };
                    let Some(first) = session.event(event).await? else { continue };
                    // Whatever else came meanwhile goes in the same batch.
                    let room = count.map_or(BATCH_MESSAGES, |n| {
                        usize::try_from(n - handed).unwrap_or(usize::MAX).min(BATCH_MESSAGES)
                    });
                    let mut publishes = vec![first];
                    let mut sealed = usize::from(!session.is_status(&publishes[0]));
                    while sealed < room {
                        let Ok(event) = events.try_recv() else { break };
                        if let Some(publish) = session.event(event).await? {
                            sealed += usize::from(!session.is_status(&publish));
                            publishes.push(publish);
                        }
                    }
                    if !session.flooded && events.len() > usize::from(RECEIVE_MAXIMUM) {
                        session.flooded = true;
                        eprintln!(
                            "sensorgate: warning: the broker sent {} messages beyond the {RECEIVE_MAXIMUM} \
                             unacknowledged it may (MQTT 5 Receive Maximum); they wait in memory",
                            events.len()
                        );
                    }
                    let batch: Vec<Delivery> = publishes
                        .iter()
                        .filter(|p| !session.is_status(p))
                        .map(|p| Delivery {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.clone(),
                        })
                        .collect();
                    handed += batch.len() as u64;
                    let taken = if batch.is_empty() {
                        None
                    } else {
                        match handler.handle(batch, &stop).await? {
                            Taken::Now => None,
                            Taken::Later(rx) => Some(rx),
                            Taken::Stopped => break,
                        }
                    };
                    pending.push_back(Pending { taken, publishes });
                }
            }
        }
        Ok(())
    }
    .await;
    // What the handler still has: acknowledged if it is taken soon (a
    // commit under way), else left for the broker to deliver again.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(mut batch) = pending.pop_front() {
            if !matches!(batch.taken().await, Ok(true)) {
                break;
            }
            for publish in &batch.publishes {
                if ack(&client, publish).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    // Send the pending acknowledgements, then DISCONNECT (bounded).
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(event) = events.recv().await {
                if matches!(
                    event,
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
                ) {
                    break;
                }
            }
        })
        .await;
    }
    poller.abort();
    ended
}

/// The connection's state as the loop of [`run`] sees it.
struct Session<'a> {
    client: &'a AsyncClient,
    filter: &'a str,
    mqtt: &'a Mqtt,
    /// A warning was logged about a broker sending beyond Receive Maximum.
    flooded: bool,
}

impl Session<'_> {
    /// Acts on an event of the connection; a message comes back.
    async fn event(
        &mut self,
        event: Result<Event, rumqttc::v5::ConnectionError>,
    ) -> Result<Option<Publish>, ConsumerError> {
        let m = self.mqtt;
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => return Ok(Some(publish)),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Also when the broker kept the session: subscribing
                // again replaces the subscription, and brings it back
                // where the broker lost it.
                self.client.subscribe(self.filter, QoS::AtLeastOnce).await?;
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(refused) = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                {
                    eprintln!(
                        "sensorgate: the broker refused {:?}: {refused:?}",
                        self.filter
                    );
                    return Err(ConsumerError::Refused(self.filter.to_string()));
                }
                eprintln!(
                    "sensorgate: subscribed to {:?} at {}:{}",
                    self.filter, m.host, m.port
                );
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!(
                    "sensorgate: MQTT connection to {}:{}: {e}; retrying",
                    m.host, m.port,
                );
            }
        }
        Ok(None)
    }

    fn is_status(&self, publish: &Publish) -> bool {
        is_status_topic(
            &self.mqtt.status_topic,
            &String::from_utf8_lossy(&publish.topic),
        )
    }
}

/// The most messages the broker may have on their way to the consumer
/// without an acknowledgement (MQTT 5 Receive Maximum): two batches.
const RECEIVE_MAXIMUM: u16 = 1024;

async fn ack(client: &AsyncClient, publish: &Publish) -> Result<(), ConsumerError> {
    client.ack(publish).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_topics_are_told_from_sealed_ones() {
        let t = "sensorgate/{gateway}/status";
        assert!(is_status_topic(t, "sensorgate/gw1/status"));
        assert!(is_status_topic("site/{gateway}/state", "site/gw1/state"));
        assert!(!is_status_topic(t, "sensorgate/gw1/bike"));
        assert!(!is_status_topic(t, "sensorgate/gw1/status/x"));
    }

    #[test]
    fn the_consumer_file_reuses_the_mqtt_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumer.toml");
        std::fs::write(
            &path,
            "[mqtt]\nhost = \"broker\"\nport = 8883\nca_file = \"ca.pem\"\nkeepalive = \"20s\"\n",
        )
        .unwrap();
        let cfg = load(&path).unwrap();
        assert_eq!(cfg.mqtt.host, "broker");
        assert_eq!(cfg.mqtt.keepalive, Duration::from_secs(20));
        assert_eq!(cfg.mqtt.ca_file, Some(dir.path().join("ca.pem")));
        assert_eq!(cfg.consumer.topic_filter, DEFAULT_TOPIC_FILTER);

        std::fs::write(&path, "[mqtt]\nhost = \"b\"\nclean_session = false\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("consumer.toml") && e.contains("client_id"),
            "{e}"
        );

        std::fs::write(
            &path,
            "[mqtt]\nhost = \"b\"\n[consumer]\nshare_group = \"in/gest\"\n",
        )
        .unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("consumer.share_group"), "{e}");

        std::fs::write(
            &path,
            "[mqtt]\nhost = \"b\"\n[consumer]\nshare_group = \"ingest\"\nsession_expiry = \"2h\"\n\
             [sink]\npostgres = \"postgresql://u@db/fleet\"\nca_file = \"db-ca.pem\"\n",
        )
        .unwrap();
        let cfg = load(&path).unwrap();
        assert_eq!(cfg.consumer.share_group.as_deref(), Some("ingest"));
        assert_eq!(cfg.consumer.session_expiry, Duration::from_secs(7200));
        assert_eq!(cfg.sink.ca_file, Some(dir.path().join("db-ca.pem")));

        std::fs::write(&path, "[mqtt]\nhots = \"b\"\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("consumer.toml") && e.contains("hots"), "{e}");
    }
}
