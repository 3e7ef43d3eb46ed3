//! Talking to systemd (`sd_notify`): `READY=1` once every stage runs,
//! a one-line `STATUS=` for `systemctl status`, `WATCHDOG=1` while no stage
//! is stuck, `RELOADING=1`/`READY=1` around a SIGHUP reload and
//! `STOPPING=1` when the drain begins.
//!
//! Everything here is a no-op when the process was not started by systemd
//! (no `NOTIFY_SOCKET`), so `sensorgate run` in a terminal behaves the same.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::health::Health;
use crate::serial::counters::SensorCounters;
use crate::telemetry::{RateLimit, Snapshot, Stats};

/// How often STATUS is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// A stage busy longer than this (or half the watchdog period, if longer)
/// is stuck: one stretch of work (a seal, a spool write or read) takes
/// milliseconds; a slow SD card's fsync a few seconds.
const STUCK_AFTER_MIN: Duration = Duration::from_secs(5);

/// Sends notifications to the service manager, if there is one.
#[derive(Debug, Clone)]
pub struct Notifier {
    active: bool,
    /// Set by [`Notifier::stopping`]: STATUS then tells how the drain goes.
    stopping: Arc<AtomicBool>,
}

impl Notifier {
    /// Active when `NOTIFY_SOCKET` is set (the process runs under systemd
    /// with `Type=notify`).
    pub fn from_env() -> Notifier {
        Notifier {
            active: std::env::var_os("NOTIFY_SOCKET").is_some(),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Before a SIGHUP reload; [`Notifier::ready`] follows when it is done.
    pub fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading];
        // systemd >= 253 (Type=notify-reload) wants the time of the request.
        if let Ok(t) = NotifyState::monotonic_usec_now() {
            states.push(t);
        }
        states.push(NotifyState::Status("reloading the TLS material (SIGHUP)"));
        self.send(&states);
    }

    pub fn stopping(&self, status: &str) {
        self.stopping.store(true, Ordering::Relaxed);
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.active {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            // The socket is systemd's: if it fails, systemd will notice the
            // missing READY or WATCHDOG itself; say why once in the log.
            static FAILURES: std::sync::Mutex<Option<RateLimit>> = std::sync::Mutex::new(None);
            let mut limit = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
            let limit = limit.get_or_insert_with(|| RateLimit::new(Duration::from_secs(60)));
            if let Some(suppressed) = limit.check(Instant::now()) {
                warn!(error = %e, suppressed, "cannot notify systemd (NOTIFY_SOCKET)");
            }
        }
    }
}

/// Records read per minute, over the last minute (or since start).
#[derive(Debug, Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn per_minute(&mut self, now: Instant, total: u64) -> u64 {
        self.samples.push_back((now, total));
        while let Some((t, _)) = self.samples.front() {
            if now.duration_since(*t) > Duration::from_secs(60) && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        let (t0, n0) = self.samples[0];
        let secs = now.duration_since(t0).as_secs_f64();
        if secs < 0.5 {
            return 0;
        }
        ((total - n0) as f64 * 60.0 / secs).round() as u64
    }
}

/// The one-line summary shown by `systemctl status`.
pub fn status_line(s: &Snapshot, sensors_total: usize, records_per_min: u64) -> String {
    format!(
        "sensors {}/{} open, broker {}, {} records/min, {} messages queued ({} in memory), spool {} on disk{}",
        s.sensors_open,
        sensors_total,
        connected(s),
        records_per_min,
        s.spool_messages,
        human_bytes(s.spool_memory_bytes),
        human_bytes(s.spool_bytes),
        if s.clock_unsynchronized > 0 {
            ", clock not synchronised"
        } else {
            ""
        },
    )
}

fn connected(s: &Snapshot) -> &'static str {
    if s.broker_connected > 0 {
        "connected"
    } else {
        "not connected"
    }
}

/// `812 B`, `3.0 KiB`, `1.5 MiB`: rounded for people, unlike the exact
/// sizes of the configuration.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Sends READY, then keeps STATUS current and pings the watchdog while no
/// stage is stuck, until `stop` is cancelled.
pub async fn supervise(
    notifier: Notifier,
    health: Arc<Health>,
    stats: Arc<Stats>,
    sensors: Vec<Arc<SensorCounters>>,
    stop: CancellationToken,
) {
    let watchdog = sd_notify::watchdog_enabled();
    let stuck_after = watchdog.map_or(STUCK_AFTER_MIN, |w| (w / 2).max(STUCK_AFTER_MIN));
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
    let mut rate = Rate::default();
    let stopping = notifier.stopping.clone();
    let status = |rate: &mut Rate| {
        let snap = stats.snapshot();
        let per_min = rate.per_minute(Instant::now(), snap.records_read);
        if stopping.load(Ordering::Relaxed) {
            format!(
                "stopping: {} messages left to send, broker {}",
                snap.spool_messages,
                connected(&snap)
            )
        } else {
            status_line(&snap, sensors.len(), per_min)
        }
    };
    notifier.ready(&status(&mut rate));
    if notifier.is_active() {
        info!(watchdog = ?watchdog, "systemd notified: ready");
    }
    let mut stuck_reported = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match health.stuck(stuck_after) {
            None => {
                if stuck_reported {
                    info!("no stage is stuck any more; watchdog pings resumed");
                    stuck_reported = false;
                }
                notifier.status(&status(&mut rate));
                if watchdog.is_some() {
                    notifier.watchdog();
                }
            }
            Some((stage, busy)) => {
                if !stuck_reported {
                    error!(stage = %stage, busy_s = busy.as_secs(), error_kind = "stuck",
                        "a stage is stuck; watchdog pings stopped so that systemd restarts the service");
                    stuck_reported = true;
                }
                notifier.status(&format!(
                    "STUCK: stage {stage} busy for {} s; watchdog pings stopped",
                    busy.as_secs()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_reads_well() {
        let s = Snapshot {
            sensors_open: 2,
            broker_connected: 1,
            spool_messages: 12,
            spool_memory_bytes: 3100,
            spool_bytes: 0,
            ..Snapshot::default()
        };
        assert_eq!(
            status_line(&s, 3, 1500),
            "sensors 2/3 open, broker connected, 1500 records/min, 12 messages queued (3.0 KiB in memory), spool 0 B on disk"
        );
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
        let s = Snapshot::default();
        assert!(status_line(&s, 1, 0).contains("broker not connected"));
        assert!(!status_line(&s, 1, 0).contains("clock"));
        let s = Snapshot {
            clock_unsynchronized: 1,
            ..s
        };
        assert!(status_line(&s, 1, 0).ends_with(", clock not synchronised"));
    }

    #[test]
    fn the_rate_is_per_minute_over_the_last_minute() {
        let mut r = Rate::default();
        let t = Instant::now();
        assert_eq!(r.per_minute(t, 0), 0);
        assert_eq!(r.per_minute(t + Duration::from_secs(30), 500), 1000);
        assert_eq!(r.per_minute(t + Duration::from_secs(60), 1000), 1000);
        // old samples fall out: the last minute only
        assert_eq!(r.per_minute(t + Duration::from_secs(90), 1000), 500);
        assert_eq!(r.per_minute(t + Duration::from_secs(180), 1000), 0);
    }
}
