//! The uplink: publishes sealed messages from the spool to the broker over
//! MQTT (QoS 1, mutual TLS), acknowledges them to the spool on PUBACK, and
//! reconnects with backoff when the broker goes away.
//!
//! Retransmission is ours, not the MQTT client's: each connection uses a
//! fresh rumqttc event loop with a clean session, and after a reconnect the
//! spool offers every unacknowledged message again, oldest first. So the
//! spool stays the single truth about what the broker has, and per-sensor
//! order is kept.

pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::spool::MessageId;
use crate::spool::Spool;
use crate::telemetry::{RateLimit, Stats};

/// A connection that lasted this long resets the reconnect backoff; one
/// that the broker drops sooner (say, right after CONNACK) does not, so a
/// broker that keeps refusing us is not hammered at `reconnect_min`.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// Largest MQTT packet we send or accept. A batch of 100 sealed records is
/// a few tens of KiB; brokers commonly allow 128 KiB (AWS IoT) or more.
const MAX_PACKET: usize = 1 << 20;

/// What the uplink needs from the configuration, resolved once.
#[derive(Clone)]
pub struct UplinkSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keepalive: Duration,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub max_inflight: u16,
    /// `None` only when the configuration says `tls = false`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Topic per sensor name.
    pub topics: HashMap<Arc<str>, String>,
}

impl UplinkSettings {
    pub fn new(cfg: &Config, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        UplinkSettings {
            host: cfg.mqtt.host.clone(),
            port: cfg.mqtt.port,
            client_id: cfg
                .mqtt
                .client_id
                .clone()
                .unwrap_or_else(|| cfg.gateway.id.clone()),
            keepalive: cfg.mqtt.keepalive,
            connect_timeout: cfg.mqtt.connect_timeout,
            reconnect_min: cfg.mqtt.reconnect_min,
            reconnect_max: cfg.mqtt.reconnect_max,
            max_inflight: cfg.mqtt.max_inflight.max(1),
            tls,
            topics: cfg
                .sensor
                .iter()
                .map(|s| (Arc::from(s.name.as_str()), cfg.topic_for(&s.name)))
                .collect(),
        }
    }

    fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(&self.client_id, &self.host, self.port);
        o.set_keep_alive(self.keepalive.max(Duration::from_secs(5)))
            .set_clean_session(true)
            .set_inflight(self.max_inflight)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_request_channel_capacity(usize::from(self.max_inflight) + 8);
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        o
    }

    fn topic(&self, sensor: &Arc<str>) -> String {
        self.topics
            .get(sensor)
            .cloned()
            .unwrap_or_else(|| format!("sensorgate/unknown/{sensor}"))
    }
}

/// How a connection ended.
enum SessionEnd {
    /// Spool closed and empty: we are done.
    Drained,
    /// Told to give up (shutdown deadline).
    Aborted,
    Lost(String),
}

/// Publishes until the spool is closed and drained, or `abort` fires.
pub async fn run(
    settings: UplinkSettings,
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    abort: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut refusals = RateLimit::new(Duration::from_secs(60));
    let mut down_since: Option<Instant> = None;
    loop {
        if abort.is_cancelled() || spool.is_drained() {
            return;
        }
        spool.rewind();
        let (client, mut eventloop) =
            AsyncClient::new(settings.options(), usize::from(settings.max_inflight) + 8);
        let mut net = eventloop.network_options();
        net.set_connection_timeout(settings.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(net);
        let (ev_tx, mut ev_rx) = mpsc::channel(256);
        let poller = tokio::spawn(poll_events(eventloop, ev_tx));

        let connected = tokio::select! {
            _ = abort.cancelled() => { poller.abort(); return; }
            ev = ev_rx.recv() => match ev {
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok(()),
                Some(Ok(other)) => Err(format!("unexpected first event {other:?}")),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("MQTT event loop ended".into()),
            },
        };
        let end = match connected {
            Ok(()) => {
                Stats::add(&stats.connects, 1);
                match down_since.take() {
                    Some(t) => info!(broker = %settings.host, port = settings.port,
                        after_s = t.elapsed().as_secs_f64(), "reconnected to broker"),
                    None => {
                        info!(broker = %settings.host, port = settings.port, "connected to broker")
                    }
                }
                let connected_at = Instant::now();
                let end = session(&settings, &client, &mut ev_rx, &spool, &stats, &abort).await;
                if connected_at.elapsed() >= STABLE_CONNECTION {
                    backoff.reset();
                }
                end
            }
            Err(error) => {
                Stats::add(&stats.connect_failures, 1);
                if let Some(suppressed) = refusals.check(Instant::now()) {
                    warn!(broker = %settings.host, port = settings.port, %error, suppressed,
                        "cannot connect to broker; data is kept, retrying");
                } else {
                    debug!(%error, "connect failed");
                }
                down_since.get_or_insert_with(Instant::now);
                SessionEnd::Lost(error)
            }
        };
        match end {
            SessionEnd::Drained => {
                let _ = client.try_disconnect();
                // Give the client a moment to send DISCONNECT.
                let _ = tokio::time::timeout(Duration::from_secs(1), poller).await;
                return;
            }
            SessionEnd::Aborted => {
                poller.abort();
                return;
            }
            SessionEnd::Lost(error) => {
                poller.abort();
                if down_since.is_none() {
                    Stats::add(&stats.connect_failures, 1);
                    warn!(broker = %settings.host, %error, "broker connection lost; reconnecting");
                    down_since = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            _ = abort.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Drives the MQTT event loop on its own task: `EventLoop::poll` is not
/// cancel-safe, so it must never be a branch of a `select!`.
async fn poll_events(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<Result<Event, rumqttc::ConnectionError>>,
) {
    loop {
        let ev = eventloop.poll().await;
        let failed = ev.is_err();
        if tx.send(ev).await.is_err() || failed {
            return;
        }
    }
}

/// One connected session: keep up to `max_inflight` messages unacknowledged.
async fn session(
    settings: &UplinkSettings,
    client: &AsyncClient,
    events: &mut mpsc::Receiver<Result<Event, rumqttc::ConnectionError>>,
    spool: &Spool,
    stats: &Stats,
    abort: &CancellationToken,
) -> SessionEnd {
    let window = usize::from(settings.max_inflight);
    // Published, waiting for the client to assign a packet id (in order).
    // (message id, records in it), for the acknowledgement.
    let mut unassigned: VecDeque<(MessageId, u32)> = VecDeque::new();
    let mut inflight: HashMap<u16, (MessageId, u32)> = HashMap::new();
    loop {
        while unassigned.len() + inflight.len() < window {
            let Some((id, msg)) = spool.next_to_send() else {
                break;
            };
            let topic = settings.topic(&msg.sensor);
            if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, msg.bytes.clone()) {
                return SessionEnd::Lost(format!("publish request refused: {e}"));
            }
            Stats::add(&stats.messages_published, 1);
            unassigned.push_back((id, msg.records));
        }
        if spool.is_drained() {
            return SessionEnd::Drained;
        }
        let window_open = unassigned.len() + inflight.len() < window;
        tokio::select! {
            _ = abort.cancelled() => return SessionEnd::Aborted,
            _ = spool.changed(), if window_open => {}
            ev = events.recv() => match ev {
                Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(sent) = unassigned.pop_front() {
                        inflight.insert(pkid, sent);
                    }
                }
                Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some((id, records)) = inflight.remove(&ack.pkid) {
                        spool.ack(id, records);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return SessionEnd::Lost(e.to_string()),
                None => return SessionEnd::Lost("MQTT event loop ended".into()),
            },
        }
    }
}
