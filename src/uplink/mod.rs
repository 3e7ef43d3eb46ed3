//! The uplink: publishes sealed messages from the spool to the broker over
//! MQTT (QoS 1, mutual TLS), acknowledges them to the spool on PUBACK, and
//! reconnects with backoff when the broker goes away.
//!
//! Retransmission is ours, not the MQTT client's: each connection uses a
//! fresh rumqttc event loop, and after a reconnect the spool offers every
//! unacknowledged message again, oldest first. So the spool stays the single
//! truth about what the broker has, and per-sensor order is kept. (Those
//! resends are new publishes of a new session, so MQTT's DUP flag, which
//! marks redelivery within one session, does not apply.)

pub mod conn;
pub mod csr;
pub mod inflight;
pub mod refusal;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::spool::Spool;
use crate::telemetry::{RateLimit, RateLimits, Stats};
use conn::{Conn, ConnEvent};
use inflight::{Inflight, Tracked};

/// A connection that lasted this long resets the reconnect backoff; one
/// that the broker drops sooner (say, right after CONNACK) does not, so a
/// broker that keeps refusing us is not hammered at `reconnect_min`.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// TLS client configuration as it is now; SIGHUP sends a new one.
pub type TlsWatch = watch::Receiver<Option<Arc<rustls::ClientConfig>>>;

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
    pub max_packet: usize,
    pub clean_session: bool,
    /// 4 (MQTT 3.1.1) or 5.
    pub protocol: u8,
    pub credentials: Option<(String, String)>,
    /// Topic per sensor name.
    pub topics: HashMap<Arc<str>, String>,
    /// Where the retained `online`/`offline` status goes.
    pub status_topic: String,
    pub gateway: String,
    /// When this process started, in the status message.
    pub started: SystemTime,
    /// The CA and client certificate files, named when the broker's TLS
    /// refuses us.
    pub tls_files: refusal::TlsFiles,
}

impl UplinkSettings {
    pub fn new(cfg: &Config) -> Self {
        let m = &cfg.mqtt;
        UplinkSettings {
            host: m.host.clone(),
            port: m.port,
            client_id: m.client_id(&cfg.gateway).to_string(),
            keepalive: m.keepalive,
            connect_timeout: m.connect_timeout,
            reconnect_min: m.reconnect_min,
            reconnect_max: m.reconnect_max,
            max_inflight: m.max_inflight.max(1),
            max_packet: m.max_packet,
            clean_session: m.clean_session,
            protocol: m.protocol,
            credentials: m.username.as_ref().map(|u| {
                (
                    u.clone(),
                    m.password
                        .as_ref()
                        .map(|p| p.expose().to_string())
                        .unwrap_or_default(),
                )
            }),
            topics: cfg
                .sensor
                .iter()
                .map(|s| (Arc::from(s.name.as_str()), cfg.topic_for(&s.name)))
                .collect(),
            status_topic: cfg.status_topic(),
            gateway: cfg.gateway.id.clone(),
            started: SystemTime::now(),
            tls_files: refusal::TlsFiles {
                ca_file: m.ca_file.clone(),
                cert_file: m.cert_file.clone(),
            },
        }
    }

    /// `host:port` (`[v6]:port`), the `broker` field of the log lines.
    pub fn broker(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn topic(&self, sensor: &Arc<str>) -> String {
        self.topics
            .get(sensor)
            .cloned()
            .unwrap_or_else(|| format!("sensorgate/{}/{sensor}", self.gateway))
    }

    /// The retained status payload: `{"status":"online","gateway":..,
    /// "version":..,"started":..}`.
    pub fn status(&self, status: &str) -> Vec<u8> {
        serde_json::json!({
            "status": status,
            "gateway": self.gateway,
            "version": env!("CARGO_PKG_VERSION"),
            "started": crate::record::format_ts(self.started),
        })
        .to_string()
        .into_bytes()
    }
}

/// How a connection ended.
enum SessionEnd {
    /// Spool closed and empty: we are done.
    Drained,
    /// Told to give up (shutdown deadline).
    Aborted,
    /// New TLS material (SIGHUP): reconnect now with it.
    Reload,
    /// The error text and its `error_kind`.
    Lost(String, &'static str),
}

/// At most one warning per this period for each repeating uplink fault
/// (per kind of connect failure; a refused message); the next line
/// carries `suppressed=N`. Every failure is still counted.
const UPLINK_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Whether the wall clock is synchronised ([`crate::clock::watch`]).
pub type ClockWatch = tokio::sync::watch::Receiver<bool>;

/// Publishes until the spool is closed and drained, or `abort` fires.
/// While it waits to reconnect, the clock becoming synchronised ends the
/// wait: a connection that failed on certificate dates (a clock still at
/// its boot time) is retried at once rather than after the backoff.
pub async fn run(
    settings: UplinkSettings,
    mut tls: TlsWatch,
    mut clock: ClockWatch,
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    abort: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let broker = settings.broker();
    let mut connect_failures = RateLimits::new(UPLINK_LOG_PERIOD);
    let mut small_packets = RateLimit::new(Duration::from_secs(3600));
    let mut refusals = RateLimit::new(UPLINK_LOG_PERIOD);
    // "connection lost" and "reconnected" are not rate-limited: each is one
    // line per state change, and a connection that keeps dropping is not
    // resumed faster than the backoff (which a short-lived connection does
    // not reset), so at most two lines per `reconnect_max`.
    let mut down_since: Option<Instant> = None;
    // The broker refused us: retry at the longest delay.
    let mut refused = false;
    loop {
        if abort.is_cancelled() || spool.is_drained() {
            return;
        }
        spool.rewind();
        let tls_now = tls.borrow_and_update().clone();
        let mut conn = Conn::open(&settings, tls_now.as_ref());
        let connected = tokio::select! {
            _ = abort.cancelled() => { conn.abort(); return; }
            ev = conn.recv() => match ev {
                Some(Ok(ConnEvent::Connected { broker_max_packet })) => {
                    if let Some(limit) = broker_max_packet {
                        if (limit as usize) < settings.max_packet {
                            if let Some(suppressed) = small_packets.check(Instant::now()) {
                                warn!(broker = %broker, broker_max_packet = limit,
                                    max_packet = settings.max_packet, suppressed,
                                    "the broker takes smaller packets than mqtt.max_packet; \
                                     larger messages will be refused: lower max_packet to at most its limit");
                            }
                        }
                    }
                    Ok(())
                }
                Some(Ok(other)) => Err((format!("unexpected first event {other:?}"), false, "protocol")),
                Some(Err(e)) => Err((e.message, e.refused, e.kind)),
                None => Err(("MQTT event loop ended".into(), false, "protocol")),
            },
        };
        let end = match connected {
            Ok(()) => {
                Stats::add(&stats.connects, 1);
                match down_since.take() {
                    Some(t) => info!(broker = %broker,
                        after_s = t.elapsed().as_secs_f64(), "reconnected to broker"),
                    None => info!(broker = %broker, "connected to broker"),
                }
                let connected_at = Instant::now();
                Stats::set(&stats.broker_connected, 1);
                let end = session(
                    &settings,
                    &mut conn,
                    &mut tls,
                    &spool,
                    &stats,
                    &abort,
                    &mut refusals,
                )
                .await;
                Stats::set(&stats.broker_connected, 0);
                if connected_at.elapsed() >= STABLE_CONNECTION {
                    backoff.reset();
                }
                end
            }
            Err((error, is_refused, error_kind)) => {
                Stats::add(&stats.connect_failures, 1);
                if is_refused {
                    // The broker answered and said no: retrying sooner
                    // will not change its mind.
                    backoff.to_max();
                    refused = true;
                }
                if let Some(suppressed) = connect_failures.check(error_kind, Instant::now()) {
                    warn!(broker = %broker, %error, error_kind, suppressed,
                        "cannot connect to broker; data is kept, retrying");
                } else {
                    debug!(broker = %broker, %error, error_kind, "connect failed");
                }
                down_since.get_or_insert_with(Instant::now);
                SessionEnd::Lost(error, error_kind)
            }
        };
        match end {
            SessionEnd::Drained => {
                // A clean stop: say so, then leave.
                let _ = conn.publish(&settings.status_topic, settings.status("offline"), true);
                conn.close(Duration::from_secs(2)).await;
                return;
            }
            SessionEnd::Aborted => {
                conn.abort();
                return;
            }
            SessionEnd::Reload => {
                conn.close(Duration::from_secs(1)).await;
                info!("reconnecting with the reloaded TLS material");
                continue;
            }
            SessionEnd::Lost(error, error_kind) => {
                conn.abort();
                if down_since.is_none() {
                    Stats::add(&stats.connect_failures, 1);
                    warn!(broker = %broker, %error, error_kind, "broker connection lost; reconnecting");
                    down_since = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            _ = abort.cancelled() => return,
            _ = tls_changed(&mut tls) => {}
            _ = synchronised(&mut clock) => {
                info!(broker = %broker, "clock synchronised: connecting to the broker again now, not after the backoff");
                backoff.reset();
                refused = false;
            }
            _ = tokio::time::sleep(if std::mem::take(&mut refused) {
                // Equal jitter at the ceiling: between max/2 and max.
                backoff.next_delay()
            } else {
                backoff.next_delay_full_jitter()
            }) => {}
        }
    }
}

/// Resolves when the clock becomes synchronised; never, once nobody can
/// say so.
async fn synchronised(clock: &mut ClockWatch) {
    loop {
        if clock.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if *clock.borrow_and_update() {
            return;
        }
    }
}

/// Resolves when new TLS material arrives; never, once nobody can send
/// any (the SIGHUP handler could not be installed, or has stopped).
async fn tls_changed(tls: &mut TlsWatch) {
    if tls.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One connected session: announce `online`, keep up to `max_inflight`
/// messages unacknowledged, and notice a link that silently stopped.
async fn session(
    settings: &UplinkSettings,
    conn: &mut Conn,
    tls: &mut TlsWatch,
    spool: &Spool,
    stats: &Stats,
    abort: &CancellationToken,
    refusals: &mut RateLimit,
) -> SessionEnd {
    let mut window = Inflight::new(usize::from(settings.max_inflight));
    if conn
        .publish(&settings.status_topic, settings.status("online"), true)
        .is_ok()
    {
        window.published(Tracked::Status);
    }
    // rumqttc pings every keepalive; the broker answers. Nothing heard for
    // 1.5 keepalives means the link is gone even if TCP has not noticed.
    let silence_limit = settings.keepalive.max(Duration::from_secs(1)) * 3 / 2;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        while window.has_room() {
            let Some((id, msg)) = spool.next_to_send() else {
                break;
            };
            let topic = settings.topic(&msg.sensor);
            if let Err(e) = conn.publish(&topic, msg.bytes.clone(), false) {
                return SessionEnd::Lost(format!("publish request refused: {e}"), "protocol");
            }
            Stats::add(&stats.messages_published, 1);
            window.published(Tracked::Message {
                id,
                records: msg.records,
            });
        }
        if spool.is_drained() {
            return SessionEnd::Drained;
        }
        let room = window.has_room();
        tokio::select! {
            _ = abort.cancelled() => return SessionEnd::Aborted,
            _ = tls_changed(tls) => return SessionEnd::Reload,
            _ = spool.changed(), if room => {}
            _ = tokio::time::sleep_until(last_heard + silence_limit) => {
                return SessionEnd::Lost(format!(
                    "nothing heard from the broker for {:.1} s (keepalive {} s): the link is dead",
                    silence_limit.as_secs_f64(), settings.keepalive.as_secs()
                ), "timeout");
            }
            ev = conn.recv() => match ev {
                Some(Ok(ConnEvent::Sent(pkid))) => window.assigned(pkid),
                Some(Ok(ConnEvent::Acked { pkid, refused })) => {
                    last_heard = tokio::time::Instant::now();
                    match (window.acked(pkid), refused) {
                        (Some(Tracked::Message { id, records }), None) => {
                            spool.ack(id, records);
                        }
                        (Some(Tracked::Message { .. }), Some(reason)) => {
                            // MQTT 5: the broker refused the message (an
                            // ACL, a quota). It stays in the spool and is
                            // offered again after a backoff; the operator
                            // sees why.
                            if let Some(suppressed) = refusals.check(Instant::now()) {
                                error!(broker = %settings.broker(), %reason, error_kind = "refused",
                                    suppressed, "broker refused a message; it stays queued and is retried");
                            }
                            return SessionEnd::Lost(format!("broker refused a message: {reason}"), "refused");
                        }
                        _ => {}
                    }
                }
                Some(Ok(ConnEvent::Heard)) => last_heard = tokio::time::Instant::now(),
                Some(Ok(ConnEvent::Connected { .. })) => {}
                Some(Err(e)) => return SessionEnd::Lost(e.message, e.kind),
                None => return SessionEnd::Lost("MQTT event loop ended".into(), "protocol"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reconnect wait, as `run` has it: the backoff, or the clock
    /// becoming synchronised. On tokio's paused clock, so what it measures
    /// is the monotonic time the wait took.
    async fn wait(backoff: Duration, clock: &mut ClockWatch) -> Duration {
        let start = tokio::time::Instant::now();
        tokio::select! {
            _ = synchronised(clock) => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_becoming_synchronised_ends_the_reconnect_wait() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let setter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            // Still not synchronised: the wait goes on.
            tx.send_replace(false);
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send_replace(true);
            tx
        });
        let ten_minutes = Duration::from_secs(600);
        assert_eq!(wait(ten_minutes, &mut rx).await, Duration::from_secs(10));
        let tx = setter.await.unwrap();
        // Synchronised already: the next wait is the backoff.
        assert_eq!(wait(ten_minutes, &mut rx).await, ten_minutes);
        // Nobody left to say so: the backoff again, never a busy loop.
        drop(tx);
        assert_eq!(wait(ten_minutes, &mut rx).await, ten_minutes);
    }
}
