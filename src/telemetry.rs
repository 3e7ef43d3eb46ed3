//! Logging setup, counters, the periodic stats line and rate limits.
//!
//! # Where log lines go
//!
//! `[log] format` picks the sink ([`choose`] is the whole decision, a pure
//! function of the environment so it is unit-tested):
//!
//! - `journald`: native journal entries, one datagram per event, every
//!   event field as its own journal field (`sensor` → `SENSOR=`), so
//!   `journalctl -u sensorgate SENSOR=bike ERROR_KIND=tls` works. If the
//!   journal socket cannot be opened, text on stderr and one warning: a
//!   missing journal never stops the gateway.
//! - `auto`: the journal when systemd connected stderr to it
//!   (`JOURNAL_STREAM` names stderr's device and inode, see
//!   systemd.exec(5) and sd_journal_stream_fd(3)), or, when that variable is
//!   absent, when `INVOCATION_ID` says systemd started us and stderr is not
//!   a terminal; otherwise text, coloured only on a terminal.
//! - `text`, `json`: stderr; `json` is one object per line for log
//!   shippers.
//!
//! `RUST_LOG` overrides `[log] level` (both a level, or `target=level`
//! directives); the demo broker's own logs (`rumqttd`) stay off.
//!
//! # Why `tracing-journald`
//!
//! The code logs with `tracing` and its structured fields. A `log`-crate
//! journal backend such as `systemd-journal-logger` would only see what the
//! `tracing` → `log` bridge gives it: the fields flattened into the message
//! text, so nothing to filter on. The `tracing-journald` layer visits each
//! event's fields and sends each one as a journal field, speaks the native
//! protocol itself (no libsystemd to link, which keeps cross-compiling to
//! the Pi simple), and falls back to a sealed memfd for oversized entries as
//! journald expects.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Log, LogFormat};
use crate::serial::counters::SensorCounters;

/// The journal's `SYSLOG_IDENTIFIER` (`journalctl -t sensorgate`), fixed
/// rather than taken from argv[0] so a renamed or wrapped binary still
/// logs under the name the runbook uses.
pub const SYSLOG_IDENTIFIER: &str = "sensorgate";

/// Where log lines go, as decided by [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    /// Native journal entries with structured fields.
    Journald,
    /// Human-readable lines on stderr; `ansi` colours them.
    Text { ansi: bool },
    /// One JSON object per line on stderr.
    Json,
}

/// What the sink decision depends on, read from the process environment
/// by [`LogEnv::current`] and built by hand in tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEnv {
    /// `JOURNAL_STREAM`: `DEVICE:INODE` of the stream systemd connected
    /// stdout/stderr to.
    pub journal_stream: Option<String>,
    /// `INVOCATION_ID` is set: systemd started this process.
    pub invocation_id: bool,
    /// Device and inode of stderr (fd 2), if it is open.
    pub stderr: Option<(u64, u64)>,
    /// stderr is a terminal.
    pub stderr_is_tty: bool,
}

impl LogEnv {
    pub fn current() -> LogEnv {
        use std::io::IsTerminal;
        // fstat(2), as systemd does on its side when it writes the variable.
        // (The casts widen on 32-bit targets such as armhf.)
        #[allow(clippy::unnecessary_cast)]
        let stderr = nix::sys::stat::fstat(std::io::stderr())
            .ok()
            .map(|st| (st.st_dev as u64, st.st_ino as u64));
        LogEnv {
            journal_stream: std::env::var("JOURNAL_STREAM").ok(),
            invocation_id: std::env::var_os("INVOCATION_ID").is_some_and(|v| !v.is_empty()),
            stderr,
            stderr_is_tty: std::io::stderr().is_terminal(),
        }
    }

    /// stderr is the stream `JOURNAL_STREAM` names (`DEVICE:INODE`, both
    /// decimal, as systemd writes them).
    pub fn stderr_is_journal(&self) -> bool {
        let (Some(value), Some((dev, ino))) = (&self.journal_stream, self.stderr) else {
            return false;
        };
        let Some((d, i)) = value.trim().split_once(':') else {
            return false;
        };
        d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
    }
}

/// The sink for `format` in the environment `env`, before trying the
/// journal socket (see [`init`] for the fallback when it does not work).
///
/// Under `auto`, a `JOURNAL_STREAM` that does not match stderr means stderr
/// was redirected on purpose (a wrapper script, `2>file`): respect that and
/// write text there, even if `INVOCATION_ID` is set. Only when
/// `JOURNAL_STREAM` is absent is `INVOCATION_ID` taken as the weaker hint
/// (systemd started us with stderr elsewhere, e.g. `StandardError=null`),
/// and then not when stderr is a terminal (`StandardError=tty`).
pub fn choose(format: LogFormat, env: &LogEnv) -> LogSink {
    let text = LogSink::Text {
        ansi: env.stderr_is_tty,
    };
    match format {
        LogFormat::Journald => LogSink::Journald,
        LogFormat::Json => LogSink::Json,
        LogFormat::Text => text,
        LogFormat::Auto => match &env.journal_stream {
            Some(_) if env.stderr_is_journal() => LogSink::Journald,
            Some(_) => text,
            None if env.invocation_id && !env.stderr_is_tty => LogSink::Journald,
            None => text,
        },
    }
}

/// How tracing levels become journal priorities.
///
/// `info` is Informational (6), not tracing-journald's default Notice (5):
/// the info lines are routine (connected, device opened, stats every
/// minute), systemd gives stderr lines of a service priority 6 by default
/// (`SyslogLevel=info`) so switching between text and native logging does
/// not move lines between `journalctl -p` levels, and `journalctl -p
/// notice` stays a view of what needs a look. `debug` and `trace` are both
/// Debug (7): tracing-journald's default would put debug at 6, mixed with
/// the operational lines.
pub fn priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// The journal layer: `SYSLOG_IDENTIFIER=sensorgate`, no prefix on field
/// names (tracing-journald's default `F_` would make operators type
/// `F_SENSOR=bike`), priorities from [`priorities`]. Fails when the journal
/// socket cannot be reached.
///
/// Without a prefix, an event field named like one of the journal's own
/// (`priority`, `message_id`, `unit`, `errno`, `syslog_*`, `code_*`,
/// `target`) would confuse `journalctl`; no log call uses such a name.
pub fn journald_layer() -> io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::Layer::new()?
        .with_field_prefix(None)
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string())
        .with_priority_mappings(priorities()))
}

/// The filter: `RUST_LOG` when it is set and valid, else `[log] level`.
/// A `Targets` filter (a default level and `target=level` directives), not
/// an `EnvFilter`: that one's span and field matching needs a regular
/// expression engine, about half a megabyte of the binary (issue 17).
fn filter(level: &str) -> tracing_subscriber::filter::Targets {
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::filter::Targets;
    // The demo's embedded broker logs every client disconnect as an error;
    // its own failures reach the demo as errors anyway. The Modbus client
    // warns at every byte of a frame it cannot decode (ten lines a poll for
    // a slave answering garbage); the poller logs the failure once, with
    // the bytes. Naming `tokio_modbus` in the level shows them again.
    let quiet = |t: Targets| {
        let modbus = t.iter().any(|(target, _)| target == "tokio_modbus");
        let t = t.with_target("rumqttd", LevelFilter::OFF);
        if modbus {
            t
        } else {
            t.with_target("tokio_modbus", LevelFilter::ERROR)
        }
    };
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .or_else(|| level.parse::<Targets>().ok())
        .map(quiet)
        .unwrap_or_else(|| quiet(Targets::new().with_default(tracing::Level::INFO)))
}

/// Sets up `tracing` for the process as `[log] format` says (see the
/// module documentation) and returns the sink in use. A second call (tests,
/// the demo) keeps the first subscriber.
pub fn init(log: &Log) -> LogSink {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let env = LogEnv::current();
    let registry = tracing_subscriber::registry().with(filter(&log.level));
    let text = |ansi: bool| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    };
    let fallback = LogSink::Text {
        ansi: env.stderr_is_tty,
    };
    match choose(log.format, &env) {
        LogSink::Journald => match journald_layer() {
            Ok(layer) => {
                let _ = registry.with(layer).try_init();
                LogSink::Journald
            }
            Err(e) => {
                let _ = registry.with(text(env.stderr_is_tty)).try_init();
                // Forced: the operator expects the journal, so say why
                // not. Under `auto`, stderr is the fallback by design.
                if log.format == LogFormat::Journald {
                    tracing::warn!(error = %e, error_kind = io_error_kind(&e),
                        socket = "/run/systemd/journal/socket",
                        "cannot reach the journal (log.format = journald); logging text to stderr instead");
                }
                fallback
            }
        },
        LogSink::Json => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_writer(std::io::stderr),
                )
                .try_init();
            LogSink::Json
        }
        LogSink::Text { ansi } => {
            let _ = registry.with(text(ansi)).try_init();
            LogSink::Text { ansi }
        }
    }
}

/// A short, stable word for what kind of failure `e` is, logged as
/// `error_kind` so the journal can be filtered (`ERROR_KIND=tls`) without
/// matching message text. Looks through the error's sources (and inside
/// `io::Error`s) for the most telling cause:
///
/// `tls`, `network`, `timeout`, `refused` (the broker said no), `enospc`,
/// `permission`, `not_found`, `busy`, `corrupt`, `protocol`, `io`, `other`.
pub fn error_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<rustls::Error>() {
            return "tls";
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io_error_kind(io);
        }
        if let Some(s) = err.downcast_ref::<tokio_serial::Error>() {
            return match s.kind() {
                tokio_serial::ErrorKind::NoDevice => "busy",
                tokio_serial::ErrorKind::Io(kind) => io_error_kind(&io::Error::from(kind)),
                tokio_serial::ErrorKind::InvalidInput => "config",
                tokio_serial::ErrorKind::Unknown => "io",
            };
        }
        if err.is::<serde_json::Error>() {
            return "corrupt";
        }
        current = err.source();
    }
    "other"
}

/// [`error_kind`] of an `io::Error`: from its errno when it has one, from
/// its `ErrorKind` otherwise; a TLS failure wrapped in an `io::Error` (as
/// tokio-rustls reports a failed handshake) is `tls`.
pub fn io_error_kind(e: &io::Error) -> &'static str {
    use nix::errno::Errno;
    if let Some(inner) = e.get_ref() {
        if inner.is::<rustls::Error>() {
            return "tls";
        }
        if let Some(io) = inner.downcast_ref::<io::Error>() {
            return io_error_kind(io);
        }
    }
    if let Some(code) = e.raw_os_error() {
        match Errno::from_raw(code) {
            Errno::ENOSPC | Errno::EDQUOT => return "enospc",
            Errno::EACCES | Errno::EPERM | Errno::EROFS => return "permission",
            Errno::ENOENT | Errno::ENODEV | Errno::ENXIO => return "not_found",
            Errno::EBUSY => return "busy",
            Errno::ETIMEDOUT => return "timeout",
            Errno::ECONNREFUSED
            | Errno::ECONNRESET
            | Errno::ECONNABORTED
            | Errno::ENETUNREACH
            | Errno::EHOSTUNREACH
            | Errno::ENETDOWN
            | Errno::EPIPE => return "network",
            _ => {}
        }
    }
    match e.kind() {
        io::ErrorKind::StorageFull => "enospc",
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => "permission",
        io::ErrorKind::NotFound => "not_found",
        io::ErrorKind::ResourceBusy => "busy",
        io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::NotConnected
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::AddrNotAvailable
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::NetworkDown
        | io::ErrorKind::UnexpectedEof => "network",
        _ => "io",
    }
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

/// Writes to storage by this process's spool and state files: every write
/// to a file, fsync, rename and unlink (what wears an SD card), and the
/// bytes written. Process-wide, because they come from the spool's and the
/// sequence state's lowest layers, which know no [`Stats`].
pub mod storage {
    use std::sync::atomic::{AtomicU64, Ordering};

    static WRITES: AtomicU64 = AtomicU64::new(0);
    static BYTES: AtomicU64 = AtomicU64::new(0);

    /// `bytes` written to a file in one write.
    pub fn wrote(bytes: usize) {
        WRITES.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// An fsync, rename or unlink: no data, but a write all the same.
    pub fn touched() {
        WRITES.fetch_add(1, Ordering::Relaxed);
    }

    /// (writes, bytes) so far.
    pub fn counts() -> (u64, u64) {
        (
            WRITES.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        )
    }
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
    /// Gauge: 1 while the signing key's token fails; sealing waits for it
    /// and the queue holds what is read meanwhile.
    signing_key_unavailable,
    /// Gauge: 1 while the wall clock is not synchronised (records are
    /// marked so).
    clock_unsynchronized,
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
    /// Gauge: sealed messages held only in memory, not yet acknowledged
    /// (`durability = "memory_first"`): what a crash or power cut would
    /// lose now.
    spool_memory_only_messages,
    /// Gauge: seconds the oldest unacknowledged message has waited.
    spool_oldest_age_s,
    /// Spool entries found damaged (skipped) or unreadable.
    spool_corrupt_entries,
    /// Records in spool messages lost to damage, found at start-up (each
    /// range logged once).
    spool_records_lost,
    /// Failed writes to the spool (ENOSPC, I/O errors).
    spool_write_errors,
    /// Gauge: 1 while connected to the broker.
    broker_connected,
    /// Gauge: when the client certificate in use expires (Unix seconds;
    /// 0 when unknown or TLS is off).
    client_cert_not_after,
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
/// An `interval` of zero (`[log] stats_interval = "0s"`) turns the
/// periodic lines off: this returns at once (the final lines at a clean
/// stop are still logged by the pipeline).
pub async fn stats_loop(
    stats: std::sync::Arc<Stats>,
    sensors: Vec<std::sync::Arc<SensorCounters>>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
    refresh: impl Fn(),
) {
    if interval.is_zero() {
        return;
    }
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
    let (storage_writes, storage_bytes) = storage::counts();
    tracing::info!(
        records_read = s.records_read,
        records_sealed = s.records_sealed,
        records_acked = s.records_acked,
        records_dropped = s.records_dropped,
        frames_malformed = s.frames_malformed,
        frames_too_long = s.frames_too_long,
        frames_partial = s.frames_partial,
        spool_messages = s.spool_messages,
        spool_bytes = s.spool_bytes,
        spool_oldest_age_s = s.spool_oldest_age_s,
        spool_corrupt = s.spool_corrupt_entries,
        spool_records_lost = s.spool_records_lost,
        spool_write_errors = s.spool_write_errors,
        spool_memory_only = s.spool_memory_only_messages,
        storage_writes,
        storage_bytes,
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

/// A [`RateLimit`] per key (a sensor, a broker, a kind of error), so one
/// noisy source cannot hide another's first line. The keys are the
/// configured sensors and a few fixed words, so the map stays small.
#[derive(Debug)]
pub struct RateLimits<K> {
    period: Duration,
    limits: HashMap<K, RateLimit>,
}

impl<K: Hash + Eq> RateLimits<K> {
    pub fn new(period: Duration) -> Self {
        RateLimits {
            period,
            limits: HashMap::new(),
        }
    }

    /// [`RateLimit::check`] for `key`'s own limit.
    pub fn check(&mut self, key: K, now: Instant) -> Option<u64> {
        let period = self.period;
        self.limits
            .entry(key)
            .or_insert_with(|| RateLimit::new(period))
            .check(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modbus_clients_per_byte_warnings_are_off_unless_asked_for() {
        use tracing::Level;
        // RUST_LOG, when set, takes the place of the level.
        if std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        let f = filter("debug");
        assert!(f.would_enable("sensorgate::modbus::poller", &Level::DEBUG));
        assert!(!f.would_enable("tokio_modbus::codec::rtu", &Level::WARN));
        assert!(f.would_enable("tokio_modbus::codec::rtu", &Level::ERROR));
        let f = filter("info,tokio_modbus=debug");
        assert!(f.would_enable("tokio_modbus::codec::rtu", &Level::DEBUG));
    }

    #[test]
    fn rate_limit_counts_what_it_suppresses() {
        let mut r = RateLimit::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.check(t), Some(0));
        assert_eq!(r.check(t + Duration::from_secs(1)), None);
        assert_eq!(r.check(t + Duration::from_secs(2)), None);
        assert_eq!(r.check(t + Duration::from_secs(11)), Some(2));
    }

    #[test]
    fn rate_limits_are_kept_per_key() {
        let mut r = RateLimits::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.check("bike", t), Some(0));
        assert_eq!(r.check("gps", t), Some(0), "another key has its own limit");
        assert_eq!(r.check("bike", t + Duration::from_secs(1)), None);
        assert_eq!(r.check("bike", t + Duration::from_secs(2)), None);
        assert_eq!(r.check("gps", t + Duration::from_secs(3)), None);
        assert_eq!(r.check("bike", t + Duration::from_secs(10)), Some(2));
        assert_eq!(r.check("gps", t + Duration::from_secs(10)), Some(1));
    }

    const STDERR: (u64, u64) = (25, 1234);

    fn env(journal_stream: Option<&str>, invocation_id: bool, tty: bool) -> LogEnv {
        LogEnv {
            journal_stream: journal_stream.map(str::to_string),
            invocation_id,
            stderr: Some(STDERR),
            stderr_is_tty: tty,
        }
    }

    #[test]
    fn auto_uses_the_journal_when_journal_stream_names_stderr() {
        let e = env(Some("25:1234"), true, false);
        assert!(e.stderr_is_journal());
        assert_eq!(choose(LogFormat::Auto, &e), LogSink::Journald);
        // INVOCATION_ID is not needed when the stream matches.
        let e = env(Some("25:1234"), false, false);
        assert_eq!(choose(LogFormat::Auto, &e), LogSink::Journald);
    }

    #[test]
    fn auto_writes_text_where_stderr_was_redirected_away_from_the_journal() {
        // A wrapper redirected stderr: JOURNAL_STREAM is inherited but no
        // longer describes fd 2; INVOCATION_ID does not override that.
        for stream in [
            "25:9999",
            "26:1234",
            "garbage",
            "",
            "25",
            ":1234",
            "25:1234:1",
        ] {
            let e = env(Some(stream), true, false);
            assert!(!e.stderr_is_journal(), "{stream:?}");
            assert_eq!(
                choose(LogFormat::Auto, &e),
                LogSink::Text { ansi: false },
                "{stream:?}"
            );
        }
        // stderr closed: nothing to compare with.
        let mut e = env(Some("25:1234"), true, false);
        e.stderr = None;
        assert_eq!(choose(LogFormat::Auto, &e), LogSink::Text { ansi: false });
    }

    #[test]
    fn auto_takes_invocation_id_as_a_hint_only_without_journal_stream() {
        // Started by systemd with stderr elsewhere (StandardError=null).
        assert_eq!(
            choose(LogFormat::Auto, &env(None, true, false)),
            LogSink::Journald
        );
        // StandardError=tty: the operator is watching a console.
        assert_eq!(
            choose(LogFormat::Auto, &env(None, true, true)),
            LogSink::Text { ansi: true }
        );
    }

    #[test]
    fn auto_outside_systemd_is_text_coloured_only_on_a_terminal() {
        assert_eq!(
            choose(LogFormat::Auto, &env(None, false, true)),
            LogSink::Text { ansi: true }
        );
        assert_eq!(
            choose(LogFormat::Auto, &env(None, false, false)),
            LogSink::Text { ansi: false }
        );
    }

    #[test]
    fn explicit_formats_are_obeyed_whatever_the_environment() {
        for e in [
            env(None, false, true),
            env(Some("25:1234"), true, false),
            LogEnv::default(),
        ] {
            assert_eq!(choose(LogFormat::Journald, &e), LogSink::Journald);
            assert_eq!(choose(LogFormat::Json, &e), LogSink::Json);
            assert_eq!(
                choose(LogFormat::Text, &e),
                LogSink::Text {
                    ansi: e.stderr_is_tty
                }
            );
        }
    }

    #[test]
    fn journal_stream_tolerates_surrounding_whitespace() {
        assert!(env(Some(" 25:1234\n"), false, false).stderr_is_journal());
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        use tracing_journald::Priority;
        let p = priorities();
        assert_eq!(p.error, Priority::Error);
        assert_eq!(p.warn, Priority::Warning);
        assert_eq!(p.info, Priority::Informational);
        assert_eq!(p.debug, Priority::Debug);
        assert_eq!(p.trace, Priority::Debug);
        assert_eq!(
            [p.error, p.warn, p.info, p.debug].map(|p| p as u8 - b'0'),
            [3, 4, 6, 7]
        );
    }

    #[test]
    fn error_kinds_name_the_cause() {
        use nix::errno::Errno;
        let os = |e: Errno| io::Error::from_raw_os_error(e as i32);
        assert_eq!(io_error_kind(&os(Errno::ENOSPC)), "enospc");
        assert_eq!(io_error_kind(&os(Errno::EDQUOT)), "enospc");
        assert_eq!(io_error_kind(&os(Errno::EACCES)), "permission");
        assert_eq!(io_error_kind(&os(Errno::EROFS)), "permission");
        assert_eq!(io_error_kind(&os(Errno::ENOENT)), "not_found");
        assert_eq!(io_error_kind(&os(Errno::EBUSY)), "busy");
        assert_eq!(io_error_kind(&os(Errno::ECONNREFUSED)), "network");
        assert_eq!(io_error_kind(&os(Errno::ETIMEDOUT)), "timeout");
        assert_eq!(io_error_kind(&os(Errno::EIO)), "io");
        assert_eq!(
            io_error_kind(&io::Error::from(io::ErrorKind::TimedOut)),
            "timeout"
        );
        assert_eq!(io_error_kind(&io::Error::other("x")), "io");
        // A failed handshake as tokio-rustls reports it.
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(io_error_kind(&tls), "tls");
        assert_eq!(error_kind(&tls), "tls");
        // Found through the source chain of a wrapping error.
        #[derive(Debug, thiserror::Error)]
        #[error("cannot write segment")]
        struct Wrap(#[source] io::Error);
        assert_eq!(error_kind(&Wrap(os(Errno::ENOSPC))), "enospc");
        let bad_json = serde_json::from_str::<u8>("{").unwrap_err();
        assert_eq!(error_kind(&bad_json), "corrupt");
        let serial = tokio_serial::Error::new(tokio_serial::ErrorKind::NoDevice, "locked");
        assert_eq!(error_kind(&serial), "busy");
        let serial =
            tokio_serial::Error::new(tokio_serial::ErrorKind::Io(io::ErrorKind::NotFound), "gone");
        assert_eq!(error_kind(&serial), "not_found");
        #[derive(Debug, thiserror::Error)]
        #[error("plain")]
        struct Plain;
        assert_eq!(error_kind(&Plain), "other");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_stats_interval_disables_the_stats_line() {
        let stop = tokio_util::sync::CancellationToken::new();
        let refreshed = std::sync::Arc::new(AtomicU64::new(0));
        let r = refreshed.clone();
        // Returns by itself, without `stop`, and never ticks.
        tokio::time::timeout(
            Duration::from_secs(3600),
            stats_loop(
                std::sync::Arc::new(Stats::default()),
                Vec::new(),
                Duration::ZERO,
                stop,
                move || {
                    r.fetch_add(1, Ordering::Relaxed);
                },
            ),
        )
        .await
        .expect("stats_loop with a zero interval returns at once");
        assert_eq!(refreshed.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_stats_line_comes_every_interval() {
        let stop = tokio_util::sync::CancellationToken::new();
        let refreshed = std::sync::Arc::new(AtomicU64::new(0));
        let r = refreshed.clone();
        let task = tokio::spawn(stats_loop(
            std::sync::Arc::new(Stats::default()),
            Vec::new(),
            Duration::from_secs(60),
            stop.clone(),
            move || {
                r.fetch_add(1, Ordering::Relaxed);
            },
        ));
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(refreshed.load(Ordering::Relaxed), 0);
        tokio::time::sleep(Duration::from_secs(62)).await;
        assert_eq!(refreshed.load(Ordering::Relaxed), 2);
        stop.cancel();
        task.await.unwrap();
    }
}
