//! Logging setup, counters and the periodic stats line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Log, LogFormat};
use crate::serial::counters::SensorCounters;

/// Sets up `tracing` for the process: text on a terminal, JSON on request.
/// `RUST_LOG` overrides `[log] level` for debugging. Under systemd, stderr
/// goes to the journal, so text is the right default there too until the
/// native journald writer lands.
pub fn init(log: &Log) {
    use tracing_subscriber::EnvFilter;
    // The demo's embedded broker logs every client disconnect as an error;
    // its own failures reach the demo as errors anyway.
    let directives = format!("{},rumqttd=off", log.level);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
    });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Auto | LogFormat::Text | LogFormat::Journald => builder.try_init(),
    };
    // A second init (tests, demo) keeps the first subscriber.
    drop(result);
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Counters shared by the stages. Monotonic, except the gauges noted.
        #[derive(Debug, Default)]
        pub struct Stats { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// A copy of [`Stats`] at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot { $(pub $name: u64,)* }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Records decoded from frames.
    records_read,
    /// Frames that did not decode (any reason but too long and partial;
    /// per sensor and reason in [`SensorCounters`]).
    frames_malformed,
    /// Frames longer than `max_frame`, skipped.
    frames_too_long,
    /// Partial frames discarded when a device went away.
    frames_partial,
    /// Serial devices lost after being open.
    serial_lost,
    /// Gauge: serial devices open now.
    sensors_open,
    /// Sealed messages and the records in them.
    messages_sealed,
    records_sealed,
    /// Batches that could not be sealed (records lost, logged).
    seal_errors,
    /// Publishes handed to the MQTT client (resends included).
    messages_published,
    /// Messages and records acknowledged by the broker (PUBACK).
    messages_acked,
    records_acked,
    /// Messages and records dropped by the spool's `drop_oldest` policy.
    messages_dropped,
    records_dropped,
    /// Gauges: sealed messages not yet acknowledged, bytes of the spool on
    /// disk, and bytes of the newest messages kept in memory.
    spool_messages,
    spool_bytes,
    spool_memory_bytes,
    /// Gauge: seconds the oldest unacknowledged message has waited.
    spool_oldest_age_s,
    /// Spool entries found damaged (skipped) or unreadable.
    spool_corrupt_entries,
    /// Failed writes to the spool (ENOSPC, I/O errors).
    spool_write_errors,
    /// Gauge: 1 while connected to the broker.
    broker_connected,
    /// Successful broker connections, and connections lost or refused.
    connects,
    connect_failures,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Ordering::Relaxed);
    }
}

/// Logs the stats line every `interval` until cancelled; `refresh`
/// updates gauges that are computed rather than counted, just before.
pub async fn stats_loop(
    stats: std::sync::Arc<Stats>,
    sensors: Vec<std::sync::Arc<SensorCounters>>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
    refresh: impl Fn(),
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                refresh();
                log_stats(&stats.snapshot());
                for sensor in &sensors {
                    log_sensor(sensor);
                }
            }
        }
    }
}

pub fn log_stats(s: &Snapshot) {
    tracing::info!(
        records_read = s.records_read,
        records_sealed = s.records_sealed,
        records_acked = s.records_acked,
        records_dropped = s.records_dropped,
        frames_malformed = s.frames_malformed,
        frames_too_long = s.frames_too_long,
        spool_messages = s.spool_messages,
        spool_bytes = s.spool_bytes,
        spool_oldest_age_s = s.spool_oldest_age_s,
        spool_corrupt = s.spool_corrupt_entries,
        spool_write_errors = s.spool_write_errors,
        sensors_open = s.sensors_open,
        connects = s.connects,
        "stats"
    );
}

/// One sensor's line: whether its device is open, what it delivered and
/// why frames were rejected (`checksum=3 too_long=1`).
pub fn log_sensor(c: &SensorCounters) {
    tracing::info!(
        sensor = %c.name,
        open = c.open.load(Ordering::Relaxed),
        records = c.records.load(Ordering::Relaxed),
        skipped = c.skipped.load(Ordering::Relaxed),
        rejected = ?c.rejections_text(),
        opens = c.opens.load(Ordering::Relaxed),
        lost = c.lost.load(Ordering::Relaxed),
        "sensor stats"
    );
}

/// Lets one log line through per `period`, counting what it held back, so a
/// sensor spewing garbage cannot flood the journal.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(period: Duration) -> Self {
        RateLimit {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this event should be logged, `n` being the number of
    /// events suppressed since the last logged one; `None` to stay quiet.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_suppresses() {
        let mut r = RateLimit::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.check(t), Some(0));
        assert_eq!(r.check(t + Duration::from_secs(1)), None);
        assert_eq!(r.check(t + Duration::from_secs(2)), None);
        assert_eq!(r.check(t + Duration::from_secs(11)), Some(2));
    }
}
