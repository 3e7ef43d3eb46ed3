//! `open --mqtt`: the consumer subscribes to the gateways' topics over
//! mutual TLS and hands every sealed message to the same
//! [`MessageSink`](crate::seal::MessageSink) as stdin lines.
//!
//! Its configuration file holds an `[mqtt]` table with the gateway's keys
//! and meaning (`host`, `port`, `client_id`, `ca_file`, `cert_file`,
//! `key_file`, `server_name`, `alpn`, `keepalive`, `clean_session`, ...)
//! and an optional `[consumer]` table with `topic_filter`. It speaks MQTT
//! 3.1.1 whatever `protocol` says, subscribes with QoS 1, and acknowledges
//! each message only after it was printed (or rejected), so with
//! `clean_session = false` a message cut off by a crash is delivered again.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
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
}

/// The `[consumer]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    #[serde(default = "default_topic_filter")]
    pub topic_filter: String,
}

impl Default for Consumer {
    fn default() -> Self {
        Consumer {
            topic_filter: default_topic_filter(),
        }
    }
}

fn default_topic_filter() -> String {
    DEFAULT_TOPIC_FILTER.to_string()
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
    Client(#[from] rumqttc::ClientError),
}

impl ConsumerError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ConsumerError::Output(_) => 74,
            ConsumerError::Refused(_) => 77,
            ConsumerError::Client(_) => 69,
        }
    }
}

/// Subscribes and feeds every sealed message to `sink` until `stop` is
/// cancelled or `count` messages were handled (status topics not counted),
/// reconnecting after a lost connection. Leaves `sink` unfinished.
pub async fn run<W: Write, E: Write>(
    cfg: &ConsumerConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    sink: &mut MessageSink<'_, W, E>,
    count: Option<u64>,
    stop: CancellationToken,
) -> Result<(), ConsumerError> {
    let m = &cfg.mqtt;
    let filter = cfg.consumer.topic_filter.as_str();
    let client_id = m.client_id.clone().unwrap_or_default();
    let mut options = MqttOptions::new(client_id, &m.host, m.port);
    let packet = m.max_packet.max(64 * 1024) + 1024;
    options
        .set_keep_alive(m.keepalive.max(Duration::from_secs(1)))
        .set_clean_session(m.clean_session)
        .set_max_packet_size(packet, packet)
        .set_manual_acks(true);
    if let Some(user) = &m.username {
        let password = m.password.as_ref().map(|p| p.expose().to_string());
        options.set_credentials(user, password.unwrap_or_default());
    }
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut net = eventloop.network_options();
    net.set_connection_timeout(m.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(net);

    let mut handled: u64 = 0;
    let mut retry = m.reconnect_min;
    while count.is_none_or(|n| handled < n) {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                retry = m.reconnect_min;
                client.subscribe(filter, QoS::AtLeastOnce).await?;
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Err(ConsumerError::Refused(filter.to_string()));
                }
                eprintln!(
                    "sensorgate: subscribed to {filter:?} at {}:{}",
                    m.host, m.port
                );
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if !is_status_topic(&m.status_topic, &publish.topic) {
                    sink.message(&publish.payload, format_args!("on topic {}", publish.topic))?;
                    handled += 1;
                }
                client.ack(&publish).await?;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!(
                    "sensorgate: MQTT connection to {}:{}: {e}; retrying in {}",
                    m.host,
                    m.port,
                    humantime::format_duration(retry)
                );
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(m.reconnect_max.max(m.reconnect_min));
            }
        }
    }
    // Send the pending acknowledgements, then DISCONNECT (bounded).
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
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

        std::fs::write(&path, "[mqtt]\nhots = \"b\"\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("consumer.toml") && e.contains("hots"), "{e}");
    }
}
