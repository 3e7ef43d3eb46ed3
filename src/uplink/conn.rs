//! One MQTT connection, whatever the protocol version: MQTT 3.1.1
//! (`protocol = 4`) or MQTT 5 (`protocol = 5`), both with rumqttc.
//!
//! The session logic (window, acknowledgements, dead-link detection) only
//! sees [`ConnEvent`]s; the version-specific client and event loop stay in
//! here. The event loop runs on its own task: `EventLoop::poll` is not
//! cancel-safe, so it must never be a branch of a `select!`.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5 as mqtt5;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::UplinkSettings;
use super::refusal::{self, TlsFiles};

/// rumqttc's own keepalive check (a ping still unanswered when the next
/// is due) may notice a dead link before ours; both say the same.
const DEAD_LINK: &str = "no answer to the last keepalive ping: the link is dead";

/// What the session needs to know of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// The broker accepted the connection; under MQTT 5 it may say the
    /// largest packet it takes.
    Connected { broker_max_packet: Option<u32> },
    /// The client sent the oldest pending publish under this packet id.
    Sent(u16),
    /// The broker acknowledged a publish. `refused` carries the reason
    /// when it refused it (MQTT 5 reason codes; MQTT 3.1.1 cannot refuse).
    Acked { pkid: u16, refused: Option<String> },
    /// Anything else heard from the broker (PINGRESP, ...).
    Heard,
}

/// Why the connection ended or could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnError {
    pub message: String,
    /// The broker answered and said no (credentials, authorization).
    pub refused: bool,
    /// A short stable word for the log's `error_kind` (`tls`, `network`,
    /// `timeout`, `refused`, `protocol`, ...; see
    /// [`crate::telemetry::error_kind`]).
    pub kind: &'static str,
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(mqtt5::AsyncClient),
}

/// A connection attempt and, once [`ConnEvent::Connected`], the session.
pub struct Conn {
    client: Client,
    events: mpsc::Receiver<Result<ConnEvent, ConnError>>,
    poller: JoinHandle<()>,
}

impl Conn {
    /// Starts connecting (the first event says how it went).
    pub fn open(settings: &UplinkSettings, tls: Option<&Arc<rustls::ClientConfig>>) -> Conn {
        let (tx, events) = mpsc::channel(256);
        let cap = usize::from(settings.max_inflight) + 8;
        let transport = tls.map(|tls| {
            rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone()))
        });
        let (client, poller) = if settings.protocol == 5 {
            let (client, eventloop) = mqtt5::AsyncClient::new(options_v5(settings, transport), cap);
            (
                Client::V5(client),
                tokio::spawn(poll_v5(eventloop, tx, settings.tls_files.clone())),
            )
        } else {
            let (client, mut eventloop) =
                rumqttc::AsyncClient::new(options_v4(settings, transport), cap);
            let mut net = eventloop.network_options();
            net.set_connection_timeout(settings.connect_timeout.as_secs().max(1));
            // Publishes are pipelined: do not let Nagle hold the next one
            // back waiting for the broker's ack of the last.
            net.set_tcp_nodelay(true);
            eventloop.set_network_options(net);
            (
                Client::V4(client),
                tokio::spawn(poll_v4(eventloop, tx, settings.tls_files.clone())),
            )
        };
        Conn {
            client,
            events,
            poller,
        }
    }

    /// Hands a QoS 1 publish to the client (never waits).
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), String> {
        match &self.client {
            Client::V4(c) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_publish(topic, mqtt5::mqttbytes::QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
        }
    }

    /// The next event; `None` once the connection is gone.
    pub async fn recv(&mut self) -> Option<Result<ConnEvent, ConnError>> {
        self.events.recv().await
    }

    /// Ends the connection at once.
    pub fn abort(&self) {
        self.poller.abort();
    }

    /// Asks for a clean DISCONNECT (after what was handed over before) and
    /// waits up to `wait` for it to go out.
    pub async fn close(self, wait: Duration) {
        let _ = match &self.client {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
        let poller = self.poller;
        let abort = poller.abort_handle();
        if tokio::time::timeout(wait, poller).await.is_err() {
            abort.abort();
        }
    }
}

fn options_v4(s: &UplinkSettings, transport: Option<rumqttc::Transport>) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(&s.client_id, &s.host, s.port);
    // What we send is split to fit `max_packet` before it is sealed; the
    // limit here is for what the broker sends us.
    let packet = s.max_packet.max(64 * 1024) + 1024;
    o.set_keep_alive(s.keepalive.max(Duration::from_secs(1)))
        .set_clean_session(s.clean_session)
        // One more than the window: the status message.
        .set_inflight(s.max_inflight.saturating_add(1))
        .set_max_packet_size(packet, packet)
        .set_request_channel_capacity(usize::from(s.max_inflight) + 8)
        .set_last_will(rumqttc::LastWill::new(
            &s.status_topic,
            s.status("offline"),
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
    if let Some((user, password)) = &s.credentials {
        o.set_credentials(user, password);
    }
    if let Some(t) = transport {
        o.set_transport(t);
    }
    o
}

fn options_v5(s: &UplinkSettings, transport: Option<rumqttc::Transport>) -> mqtt5::MqttOptions {
    let mut o = mqtt5::MqttOptions::new(&s.client_id, &s.host, s.port);
    let packet = u32::try_from(s.max_packet.max(64 * 1024) + 1024).unwrap_or(u32::MAX);
    o.set_keep_alive(s.keepalive.max(Duration::from_secs(1)))
        .set_clean_start(s.clean_session)
        .set_outgoing_inflight_upper_limit(s.max_inflight.saturating_add(1))
        .set_max_packet_size(Some(packet))
        .set_request_channel_capacity(usize::from(s.max_inflight) + 8)
        .set_connection_timeout(s.connect_timeout.as_secs().max(1))
        .set_network_options({
            let mut net = rumqttc::NetworkOptions::new();
            net.set_connection_timeout(s.connect_timeout.as_secs().max(1));
            net.set_tcp_nodelay(true);
            net
        })
        .set_last_will(mqtt5::mqttbytes::v5::LastWill::new(
            &s.status_topic,
            s.status("offline"),
            mqtt5::mqttbytes::QoS::AtLeastOnce,
            true,
            None,
        ));
    if let Some((user, password)) = &s.credentials {
        o.set_credentials(user, password);
    }
    if let Some(t) = transport {
        o.set_transport(t);
    }
    o
}

async fn poll_v4(
    mut eventloop: rumqttc::EventLoop,
    tx: mpsc::Sender<Result<ConnEvent, ConnError>>,
    files: TlsFiles,
) {
    use rumqttc::{Event, Outgoing, Packet};
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(ConnEvent::Connected {
                broker_max_packet: None,
            }),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Ok(ConnEvent::Acked {
                pkid: ack.pkid,
                refused: None,
            }),
            Ok(Event::Incoming(_)) => Ok(ConnEvent::Heard),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ok(ConnEvent::Sent(pkid)),
            Ok(Event::Outgoing(_)) => continue,
            Err(e) => Err(conn_error_v4(e, &files)),
        };
        let failed = ev.is_err();
        if tx.send(ev).await.is_err() || failed {
            return;
        }
    }
}

async fn poll_v5(
    mut eventloop: mqtt5::EventLoop,
    tx: mpsc::Sender<Result<ConnEvent, ConnError>>,
    files: TlsFiles,
) {
    use mqtt5::Event;
    use mqtt5::mqttbytes::v5::{Packet, PubAckReason};
    use rumqttc::Outgoing;
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Ok(ConnEvent::Connected {
                broker_max_packet: ack.properties.and_then(|p| p.max_packet_size),
            }),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Ok(ConnEvent::Acked {
                pkid: ack.pkid,
                refused: match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                    reason => Some(match ack.properties.and_then(|p| p.reason_string) {
                        Some(text) => format!("{reason:?}: {text}"),
                        None => format!("{reason:?}"),
                    }),
                },
            }),
            Ok(Event::Incoming(_)) => Ok(ConnEvent::Heard),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ok(ConnEvent::Sent(pkid)),
            Ok(Event::Outgoing(_)) => continue,
            Err(e) => Err(conn_error_v5(e, &files)),
        };
        let failed = ev.is_err();
        if tx.send(ev).await.is_err() || failed {
            return;
        }
    }
}

/// A TLS failure anywhere in the sources of `cause` (the error `e`, or
/// the part of it to look into), explained ([`refusal`]): whatever layer
/// of rumqttc reports it, it is `tls`, and the text names the file to
/// check; a TLS error without an explanation keeps `e`'s text.
fn tls_failure(
    e: &dyn std::fmt::Display,
    cause: &(dyn std::error::Error + 'static),
    files: &TlsFiles,
) -> Option<ConnError> {
    let tls = refusal::rustls_cause(cause)?;
    if let rustls::Error::Other(other) = tls
        && let Some(token) = other.0.downcast_ref::<crate::pkcs11::TokenError>()
    {
        return Some(ConnError {
            message: format!(
                "the TLS client key (mqtt.key_file) could not sign the handshake: {token}; \
                 what is read stays in the spool, and the gateway connects again when the \
                 token answers"
            ),
            refused: false,
            kind: "tls_key",
        });
    }
    Some(ConnError {
        message: refusal::explain(tls, files).unwrap_or_else(|| e.to_string()),
        refused: false,
        kind: "tls",
    })
}

/// What an MQTT 3.1.1 connection error means for the session and the log.
fn conn_error_v4(e: rumqttc::ConnectionError, files: &TlsFiles) -> ConnError {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError};
    if let Some(tls) = tls_failure(&e, &e, files) {
        return tls;
    }
    ConnError {
        kind: match &e {
            ConnectionError::ConnectionRefused(_) => "refused",
            ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => "timeout",
            ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp) => "timeout",
            ConnectionError::MqttState(_) | ConnectionError::NotConnAck(_) => "protocol",
            e => crate::telemetry::error_kind(e),
        },
        refused: matches!(
            e,
            ConnectionError::ConnectionRefused(
                Code::BadUserNamePassword | Code::NotAuthorized | Code::BadClientId
            )
        ),
        message: match e {
            ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp) => DEAD_LINK.to_string(),
            e => e.to_string(),
        },
    }
}

/// What an MQTT 5 connection error means for the session and the log.
fn conn_error_v5(e: mqtt5::ConnectionError, files: &TlsFiles) -> ConnError {
    use mqtt5::ConnectionError;
    use mqtt5::mqttbytes::v5::ConnectReturnCode as Code;
    // rumqttc's MQTT 5 `StateError::Deserialization` does not give its
    // error as a source: look into it by hand.
    let cause: &(dyn std::error::Error + 'static) = match &e {
        ConnectionError::MqttState(mqtt5::StateError::Deserialization(inner)) => inner,
        e => e,
    };
    if let Some(tls) = tls_failure(&e, cause, files) {
        return tls;
    }
    ConnError {
        kind: match &e {
            ConnectionError::ConnectionRefused(_) => "refused",
            ConnectionError::Timeout(_) => "timeout",
            ConnectionError::MqttState(mqtt5::StateError::AwaitPingResp) => "timeout",
            ConnectionError::MqttState(_) | ConnectionError::NotConnAck(_) => "protocol",
            e => crate::telemetry::error_kind(e),
        },
        refused: matches!(
            e,
            ConnectionError::ConnectionRefused(
                Code::BadUserNamePassword
                    | Code::NotAuthorized
                    | Code::BadClientId
                    | Code::ClientIdentifierNotValid
                    | Code::Banned
                    | Code::BadAuthenticationMethod
            )
        ),
        message: match e {
            ConnectionError::MqttState(mqtt5::StateError::AwaitPingResp) => DEAD_LINK.to_string(),
            e => e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::uplink::refusal::tests::files;
    use rustls::AlertDescription as Alert;

    fn alert(alert: Alert) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(alert),
        )
    }

    /// Issue 21: a client certificate from another CA was logged as
    /// `Mqtt state: Mqtt serialization/deserialization error: IO: received
    /// fatal alert: UnknownCA` with `error_kind="protocol"`.
    #[test]
    fn a_client_certificate_rejected_by_the_broker_is_tls_and_names_the_file() {
        let want = "the broker rejected the client certificate /etc/sensorgate/tls/client.pem \
                    (mqtt.cert_file): it does not trust the CA that issued it (TLS alert \
                    UnknownCA); install a client certificate issued by a CA the broker trusts \
                    for clients (and its key in mqtt.key_file), then send SIGHUP";
        let v4 = conn_error_v4(
            rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::Error::Io(alert(Alert::UnknownCA)),
            )),
            &files(),
        );
        assert_eq!(
            (v4.kind, v4.message.as_str(), v4.refused),
            ("tls", want, false)
        );
        let v5 = conn_error_v5(
            mqtt5::ConnectionError::MqttState(mqtt5::StateError::Deserialization(
                mqtt5::mqttbytes::Error::Io(alert(Alert::UnknownCA)),
            )),
            &files(),
        );
        assert_eq!((v5.kind, v5.message.as_str()), ("tls", want));
        // In the handshake itself (TLS 1.2), or as a plain I/O error.
        for e in [
            rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(alert(Alert::UnknownCA))),
            rumqttc::ConnectionError::Io(alert(Alert::UnknownCA)),
        ] {
            let c = conn_error_v4(e, &files());
            assert_eq!((c.kind, c.message.as_str()), ("tls", want));
        }
    }

    #[test]
    fn other_tls_errors_are_tls_and_keep_their_text() {
        let e = rumqttc::ConnectionError::MqttState(rumqttc::StateError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::DecryptError,
        )));
        let text = e.to_string();
        let c = conn_error_v4(e, &files());
        assert_eq!((c.kind, c.message), ("tls", text));
    }

    #[test]
    fn errors_without_tls_keep_their_kind() {
        let c = conn_error_v4(
            rumqttc::ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp),
            &files(),
        );
        assert_eq!((c.kind, c.message.as_str()), ("timeout", DEAD_LINK));
        let c = conn_error_v4(
            rumqttc::ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted),
            &files(),
        );
        assert_eq!(c.kind, "protocol");
        let c = conn_error_v4(
            rumqttc::ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
            &files(),
        );
        assert_eq!(c.kind, "network");
        let c = conn_error_v4(
            rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized),
            &files(),
        );
        assert_eq!((c.kind, c.refused), ("refused", true));
    }
}
