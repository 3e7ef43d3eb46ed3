//! The gateway's clock: what time it is, and whether that can be trusted.
//!
//! A Raspberry Pi has no real-time clock. After a boot without network its
//! clock starts where fake-hwclock last saved it (or at 1970) and jumps when
//! NTP sets it, possibly hours later. So every record the gateway stamps
//! also gets a [`ClockMark`]: whether the clock was synchronised then, and
//! the boot clock (`CLOCK_BOOTTIME`, which only counts up from this boot).
//! With the boot id, that lets the cloud side correct the records stamped
//! before synchronisation once it sees one stamped after
//! (`docs/FORMAT.md`, "Time").
//!
//! Timers (linger, backoff, watchdog, rotations) never read the wall clock:
//! they run on the monotonic clock, which a wall-clock jump leaves alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use nix::time::{ClockId, clock_gettime};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ClockCheck, Time};
use crate::telemetry::Stats;

/// How often the synchronisation state is read: a record stamped within
/// this long after the clock was set may still be marked unsynchronised
/// (the conservative side).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the gateway's clock said when it stamped a record: absent for a
/// time the device gave (a sensor's `time_field`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockMark {
    /// `CLOCK_BOOTTIME`, milliseconds since this boot.
    pub boot_ms: u64,
    /// The wall clock was synchronised.
    pub synced: bool,
}

/// Whether the clock is synchronised, as `synchronized_by` decides from
/// the kernel's view and the flag file. `kernel` is `None` when the kernel
/// could not be asked.
pub fn decide(by: ClockCheck, kernel: Option<bool>, flag: bool) -> bool {
    match by {
        ClockCheck::Auto => kernel == Some(true) || flag,
        ClockCheck::Kernel => kernel == Some(true),
        ClockCheck::Flag => flag,
        ClockCheck::Trust => true,
    }
}

/// Reads the synchronisation state as configured.
#[derive(Debug, Clone)]
pub struct SyncCheck {
    by: ClockCheck,
    flag: PathBuf,
}

impl SyncCheck {
    pub fn new(time: &Time) -> SyncCheck {
        SyncCheck {
            by: time.synchronized_by,
            flag: time.synchronized_flag.clone(),
        }
    }

    /// Synchronised now? A kernel that cannot be asked counts as "no".
    pub fn synced(&self) -> bool {
        let kernel = match self.by {
            ClockCheck::Auto | ClockCheck::Kernel => {
                kernel_clock::read().ok().map(|k| k.synchronised())
            }
            ClockCheck::Flag | ClockCheck::Trust => None,
        };
        let flag = matches!(self.by, ClockCheck::Auto | ClockCheck::Flag) && self.flag.exists();
        decide(self.by, kernel, flag)
    }

    /// What decides, for log lines.
    pub fn describe(&self) -> String {
        match self.by {
            ClockCheck::Auto => format!("the kernel (adjtimex) or {}", self.flag.display()),
            ClockCheck::Kernel => "the kernel (adjtimex)".to_string(),
            ClockCheck::Flag => self.flag.display().to_string(),
            ClockCheck::Trust => "nothing (synchronized_by = \"trust\")".to_string(),
        }
    }
}

/// The gateway's clock, shared by the stages: cheap to clone.
#[derive(Debug, Clone)]
pub struct Clock(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    synced: AtomicBool,
    boot_id: [u8; 16],
}

/// The wall clock now: what records are stamped with and what TLS checks
/// certificate dates against ([`TlsTime`]).
pub fn wall_now() -> SystemTime {
    #[cfg(feature = "fault-injection")]
    {
        let offset = fault::OFFSET_MS.load(Ordering::Relaxed);
        let now = SystemTime::now();
        let shift = Duration::from_millis(offset.unsigned_abs());
        if offset < 0 { now - shift } else { now + shift }
    }
    #[cfg(not(feature = "fault-injection"))]
    SystemTime::now()
}

/// The wall clock as rustls asks for it (certificate validity): the same
/// as its default, except in test builds with a fake clock.
#[derive(Debug)]
pub struct TlsTime;

impl rustls::time_provider::TimeProvider for TlsTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let since = wall_now().duration_since(SystemTime::UNIX_EPOCH).ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(since))
    }
}

impl Default for Clock {
    /// A clock taken as synchronised (tests, benches, `synchronized_by =
    /// "trust"`).
    fn default() -> Clock {
        Clock::new(true, boot_id())
    }
}

impl Clock {
    pub fn new(synced: bool, boot_id: [u8; 16]) -> Clock {
        #[cfg(feature = "fault-injection")]
        fault::reread();
        Clock(Arc::new(Shared {
            synced: AtomicBool::new(synced),
            boot_id,
        }))
    }

    /// The wall clock now ([`wall_now`]).
    pub fn now(&self) -> SystemTime {
        wall_now()
    }

    /// The wall clock and its mark, read together.
    pub fn stamp(&self) -> (SystemTime, ClockMark) {
        let wall = self.now();
        let mark = ClockMark {
            boot_ms: boot_ms(),
            synced: self.synced(),
        };
        (wall, mark)
    }

    pub fn synced(&self) -> bool {
        self.0.synced.load(Ordering::Relaxed)
    }

    /// This boot's id (`/proc/sys/kernel/random/boot_id`).
    pub fn boot_id(&self) -> [u8; 16] {
        self.0.boot_id
    }

    fn set_synced(&self, synced: bool) -> bool {
        self.0.synced.swap(synced, Ordering::Relaxed)
    }
}

/// `CLOCK_BOOTTIME` in milliseconds: counts from boot, never jumps.
pub fn boot_ms() -> u64 {
    match clock_gettime(ClockId::CLOCK_BOOTTIME) {
        Ok(t) => t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000,
        // Linux has had it since 2.6.39; nothing else runs this.
        Err(_) => 0,
    }
}

/// The kernel's id of this boot, or a random one for this process when it
/// cannot be read (then only this process's records can be corrected).
pub fn boot_id() -> [u8; 16] {
    static BOOT_ID: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    *BOOT_ID.get_or_init(|| {
        let read = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
        match read.as_deref().map(parse_boot_id) {
            Ok(Some(id)) => id,
            other => {
                warn!(read = ?other.err(), "cannot read this boot's id; records stamped before the clock is synchronised can be corrected only with a time from this run");
                rand::random()
            }
        }
    })
}

/// `6f1c…-…` (a UUID as the kernel writes it) as 16 bytes.
pub fn parse_boot_id(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.trim().bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        id[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(id)
}

/// The boot id as the kernel writes it.
pub fn format_boot_id(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Reads the state at start, so that the first records are marked right,
/// and says it when the clock is not synchronised.
pub fn start(check: &SyncCheck, stats: &Stats) -> Clock {
    let clock = Clock::new(check.synced(), boot_id());
    report(&clock, check, stats, None);
    clock
}

/// Rereads the state every [`CHECK_EVERY`] until `stop`, logging and
/// counting each change, and sending it on `changes` (the uplink retries
/// at once when the clock becomes synchronised).
pub async fn watch(
    clock: Clock,
    check: SyncCheck,
    stats: Arc<Stats>,
    changes: tokio::sync::watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let since = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        #[cfg(feature = "fault-injection")]
        fault::reread();
        // A stat of a file in /run and a syscall: not worth a thread.
        let synced = check.synced();
        let was = clock.set_synced(synced);
        if was != synced {
            report(&clock, &check, &stats, Some(since.elapsed()));
            changes.send_replace(synced);
        }
    }
}

fn report(clock: &Clock, check: &SyncCheck, stats: &Stats, after: Option<Duration>) {
    let synced = clock.synced();
    Stats::set(&stats.clock_unsynchronized, u64::from(!synced));
    let now = humantime::format_rfc3339_millis(clock.now());
    let boot = format_boot_id(&clock.boot_id());
    if synced {
        if after.is_some() {
            info!(wall = %now, boot_id = %boot, "clock synchronised; records are stamped with trusted times again, and the next batch of each sensor anchors the earlier ones");
        }
    } else {
        warn!(wall = %now, boot_id = %boot, by = %check.describe(), error_kind = "clock",
            "clock not synchronised: records are marked so in the sealed messages until it is, and corrected on the cloud side from the first batch after");
    }
}

/// Test-only clock offsets, switched on by `SENSORGATE_FAKE_CLOCK` in
/// builds with the `fault-injection` feature (scripts/test); release builds
/// have none.
#[cfg(feature = "fault-injection")]
mod fault {
    use std::sync::atomic::{AtomicI64, Ordering};

    /// Added to the wall clock, milliseconds.
    pub static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

    /// `SENSORGATE_FAKE_CLOCK=FILE`: the file holds a number of seconds
    /// (may be negative) added to the wall clock; reread every check.
    pub fn reread() {
        let Some(path) = std::env::var_os("SENSORGATE_FAKE_CLOCK") else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        if let Ok(secs) = text.trim().parse::<f64>() {
            OFFSET_MS.store((secs * 1000.0) as i64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_trusts_either_source_and_the_others_only_theirs() {
        use ClockCheck::*;
        for (by, kernel, flag, synced) in [
            (Auto, Some(true), false, true),
            (Auto, Some(false), true, true),
            (Auto, None, true, true),
            (Auto, Some(false), false, false),
            (Auto, None, false, false),
            (Kernel, Some(true), false, true),
            (Kernel, Some(false), true, false),
            (Kernel, None, true, false),
            (Flag, Some(true), false, false),
            (Flag, Some(false), true, true),
            (Trust, Some(false), false, true),
        ] {
            assert_eq!(decide(by, kernel, flag), synced, "{by:?} {kernel:?} {flag}");
        }
    }

    #[test]
    fn the_flag_file_is_read_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("synchronized");
        let check = SyncCheck::new(&Time {
            synchronized_by: ClockCheck::Flag,
            synchronized_flag: flag.clone(),
        });
        assert!(!check.synced());
        std::fs::write(&flag, "").unwrap();
        assert!(check.synced());
        std::fs::remove_file(&flag).unwrap();
        assert!(!check.synced());
    }

    #[test]
    fn boot_ids_read_and_print_as_the_kernel_writes_them() {
        let text = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b\n";
        let id = parse_boot_id(text).unwrap();
        assert_eq!(id[0], 0x6f);
        assert_eq!(id[15], 0x4b);
        assert_eq!(format_boot_id(&id), text.trim());
        assert_eq!(parse_boot_id("6f1c"), None);
        assert_eq!(parse_boot_id("zz1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"), None);
        // This machine's, as the kernel has it.
        let here = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert_eq!(format_boot_id(&boot_id()), here.trim());
    }

    #[test]
    fn the_boot_clock_counts_up() {
        let a = boot_ms();
        std::thread::sleep(Duration::from_millis(5));
        let b = boot_ms();
        assert!(b >= a + 5, "{a} {b}");
    }
}
