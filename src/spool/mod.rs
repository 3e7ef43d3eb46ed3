//! The spool: sealed messages wait here until the broker acknowledges them.
//!
//! The newest messages are kept in memory, within `[buffer] memory`, so
//! that while the broker keeps up nothing is read back from disk; older
//! ones are in the disk log ([`disk`]), read back in order after an outage.
//! Which messages are written to disk is the `durability`:
//! - `write_through`: every message, before the spool accepts it, so a
//!   crash loses nothing accepted and a power cut nothing older than the
//!   `fsync` policy's window;
//! - `memory_first`: a message stays only in memory while the broker may
//!   still acknowledge it; the oldest are written when one has waited
//!   `spill_after` unacknowledged (checked at each sync tick) or when the
//!   memory is full, and all that are left at a stop. The disk log then
//!   holds the older part of the unacknowledged messages, the memory the
//!   newer part, ids in order; a crash or a power cut loses the messages
//!   only in memory ([`Spool::memory_only`]).
//!
//! The `when_full` policy applies when the disk budget is reached, the
//! filesystem is nearly full, or a write fails (ENOSPC): `drop_oldest`
//! deletes the oldest segment (counted, and logged with the sequence ranges
//! lost); `block` makes `push` wait, which stops the seal stage and the
//! serial reads behind it.

pub mod acks;
pub mod damage;
pub mod disk;
pub mod segment;
pub mod sequences;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::config::{Durability, WhenFull};
use crate::health::{Health, Stage};
use crate::seal::SealedMessage;
use crate::telemetry::{RateLimit, RateLimits, Stats};
use acks::AckTracker;
use damage::SeqRanges;
use disk::{AppendError, DiskLog, DiskSettings, Dropped, Recovery, Room};

pub use disk::Fsync;

/// A message's place in the spool. Ids grow by one per accepted message
/// and survive restarts.
pub type MessageId = u64;

/// A spool entry's bytes besides the message (framing, ids, a sensor
/// name), rounded up: for the room kept for a stop.
const ENTRY_OVERHEAD: u64 = 128;

/// What a queued message costs in memory besides its bytes: its
/// `SealedMessage` behind an `Arc`, its slot in the queue, the allocator's
/// headers and rounding. Counted in `[buffer] memory`, so that the budget
/// bounds what the queue really takes (the outage bench measured about
/// 240 bytes a message beyond the budget before it was counted).
const IN_MEMORY_OVERHEAD: usize = 256;

/// The memory a queued message takes, as counted against `[buffer] memory`.
fn in_memory(msg: &SealedMessage) -> usize {
    msg.bytes.len() + IN_MEMORY_OVERHEAD
}

/// `memory_first`: how often, at most, the acknowledged position and the
/// last sequence numbers delivered are recorded while nothing is on disk.
/// A start after a crash reports as possibly lost what came after the
/// record: at most this long of a sensor's numbers (the consumers count
/// only those they miss).
pub const ACK_INTERVAL_MEMORY_FIRST: Duration = Duration::from_secs(600);

/// How often a blocked push retries when no acknowledgement frees room:
/// space can also come back from outside (a full filesystem cleaned up).
const BLOCKED_RETRY: Duration = Duration::from_secs(1);

/// The spool's settings, from `[buffer]` and `[gateway] state_dir`.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    /// Memory for the newest messages (bytes).
    pub memory: usize,
    /// Disk budget for segments and index (bytes).
    pub disk: u64,
    pub when_full: WhenFull,
    pub durability: Durability,
    /// `memory_first`: how long a message may wait for its
    /// acknowledgement in memory only.
    pub spill_after: Duration,
    pub fsync: Fsync,
    /// Free-space floor of the filesystem, as a fraction (0.05 = 5%).
    pub min_free: f64,
    /// How many sealed messages a stop may have to store after the spool
    /// refused data: what sits in the batches and channels ahead of it
    /// ([`crate::pipeline::messages_in_flight_bound`]). Room for that many
    /// of the largest message seen is kept free (within the budget and
    /// above `min_free`) until the spool is closed, when a stop may use it
    /// and the `min_free` floor as well. 0 keeps nothing.
    pub stop_reserve: u64,
}

impl SpoolSettings {
    /// Segment size: 8 MiB, or less so that a small budget still holds
    /// several segments (a full segment is the unit that `drop_oldest`
    /// frees, and `block` needs one to drain while another fills).
    pub fn segment_size(&self) -> u64 {
        (self.disk / 8).clamp(64 * 1024, 8 << 20)
    }
}

#[derive(Debug)]
struct Inner {
    log: DiskLog,
    /// The newest messages, ids contiguous, within `memory` bytes, with
    /// the time each was stored.
    cache: VecDeque<(MessageId, Arc<SealedMessage>, Instant)>,
    cache_bytes: usize,
    /// The id the next accepted message gets.
    next_id: MessageId,
    /// Every message below this id is on disk or settled (acknowledged,
    /// given up); the cache holds every one from here up (`memory_first`;
    /// always `next_id` with `write_through`).
    written_below: MessageId,
    /// What the messages from `written_below` up take on disk: room the
    /// disk keeps for them, since a stop writes them.
    unwritten_bytes: u64,
    acks: AckTracker,
    /// The next id to hand to the uplink.
    send_cursor: MessageId,
    closed: bool,
    /// Why the last push could not be stored, while that lasts.
    refusing: Option<String>,
    /// Limits "spool cannot store anything" lines, per sensor.
    store_errors: RateLimits<Arc<str>>,
    /// Records that could not be stored once the spool was closed (a stop
    /// with the spool full): reported by [`Spool::lost_at_stop`].
    lost_at_stop: SeqRanges,
    /// The largest sealed message stored so far (bytes), for the room
    /// kept for a stop.
    largest: u64,
    /// Records dropped to make room (`drop_oldest`) that no gap notice has
    /// declared yet: taken by the seal stage ([`Spool::take_dropped`]).
    undeclared_drops: SeqRanges,
}

/// What `when_full` says to do when the disk has no room.
enum Refusal {
    /// `block`: wait for room.
    Wait,
    /// `drop_oldest` dropped a segment: try again.
    Retry,
    /// `drop_oldest`, and no segment is left to drop.
    NothingToDrop,
}

/// Whether the disk could take a message at a stop (`memory_first`).
enum Reserved {
    Yes,
    /// No room, and `when_full = "block"`.
    NoRoom,
    /// No room even after dropping everything else: the message is lost.
    Dropped,
}

impl Inner {
    /// The oldest message held only in memory that the broker has not
    /// acknowledged in order, with its id and when it was stored.
    fn oldest_memory_only(&self) -> Option<(MessageId, Arc<SealedMessage>, Instant)> {
        let &(front, _, _) = self.cache.front()?;
        let id = self.written_below.max(front).max(self.acks.below());
        let (_, msg, at) = self.cache.get((id - front) as usize)?;
        Some((id, msg.clone(), *at))
    }
}

/// What became of a message [`Spool::write`] was given.
enum Written {
    Yes,
    /// No room, and `when_full = "block"`.
    NoRoom,
    /// No room even after dropping everything else (`drop_oldest`): the
    /// message is lost, counted and logged.
    Dropped,
}

/// The spool shared by the seal stage (pushing) and the uplink (taking and
/// acknowledging).
#[derive(Debug)]
pub struct Spool {
    inner: Mutex<Inner>,
    settings: SpoolSettings,
    /// Wakes the uplink: a message arrived, or the spool closed.
    data: Notify,
    /// Wakes a blocked pusher (a thread): room was made, or the spool
    /// closed.
    space: Condvar,
    stats: Arc<Stats>,
    read_errors: Mutex<RateLimit>,
    /// The watchdog's view of disk writes and reads ([`Spool::watch`]).
    stages: std::sync::OnceLock<SpoolStages>,
}

/// The spool's heartbeats: a write or read that never returns (a dead
/// SD card, a hung filesystem) makes the pipeline stuck, not idle.
#[derive(Debug)]
struct SpoolStages {
    write: Arc<Stage>,
    read: Arc<Stage>,
}

impl Spool {
    /// Registers the spool's disk writes and reads with `health`, so a
    /// hung disk stops the watchdog. Only the first call counts.
    pub fn watch(&self, health: &Health) {
        let _ = self.stages.set(SpoolStages {
            write: health.stage("spool write"),
            read: health.stage("spool read"),
        });
    }

    /// Opens the spool, recovering what the last run left on disk.
    /// Messages lost to damage are given up (so the acknowledged position
    /// moves past them), counted in `spool_records_lost` and logged once,
    /// per sensor and range.
    pub fn open(
        settings: SpoolSettings,
        stats: Arc<Stats>,
    ) -> Result<(Spool, Recovery), disk::DiskError> {
        let (mut log, recovery) = DiskLog::open(DiskSettings {
            dir: settings.dir.clone(),
            budget: settings.disk,
            segment_size: settings.segment_size(),
            min_free: settings.min_free,
            fsync: settings.fsync,
            ack_interval: match settings.durability {
                Durability::WriteThrough => None,
                Durability::MemoryFirst => Some(ACK_INTERVAL_MEMORY_FIRST),
            },
        })?;
        Stats::add(&stats.spool_corrupt_entries, recovery.corrupt_entries);
        let mut acks = AckTracker::new(recovery.resend_from);
        let mut given_up = 0;
        for ids in &recovery.lost_ids {
            given_up += acks.give_up(ids.clone());
        }
        for loss in &recovery.seq_losses {
            Stats::add(&stats.spool_records_lost, loss.records);
            error!(sensor = %loss.sensor, seq_first = loss.first_seq, seq_last = loss.last_seq,
                records = loss.records, exact = loss.exact, error_kind = "corrupt",
                "records lost to spool damage; they will not be sent");
        }
        if given_up > 0 {
            warn!(
                messages = given_up,
                records = recovery.seq_losses.iter().map(|l| l.records).sum::<u64>(),
                error_kind = "corrupt",
                "spool messages lost to damage given up; sending goes on after them"
            );
            // The acknowledged position may move past them right away.
            if log.release_acked(acks.below(), true) > 0 {
                log.delete_released();
            }
        }
        let inner = Inner {
            send_cursor: acks.next_unsettled(recovery.resend_from),
            acks,
            next_id: log.next_id(),
            written_below: log.next_id(),
            unwritten_bytes: 0,
            log,
            cache: VecDeque::new(),
            cache_bytes: 0,
            closed: false,
            refusing: None,
            store_errors: RateLimits::new(Duration::from_secs(60)),
            lost_at_stop: SeqRanges::default(),
            largest: 0,
            undeclared_drops: SeqRanges::default(),
        };
        let spool = Spool {
            inner: Mutex::new(inner),
            settings,
            data: Notify::new(),
            space: Condvar::new(),
            stages: std::sync::OnceLock::new(),
            stats,
            read_errors: Mutex::new(RateLimit::new(Duration::from_secs(60))),
        };
        spool.update_gauges(&spool.lock());
        Ok((spool, recovery))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long the oldest unacknowledged message has waited: exact while
    /// it is still in memory, otherwise the age of its segment (an upper
    /// bound, within one segment).
    fn oldest_unsent_age(s: &Inner) -> Duration {
        let below = s.acks.below();
        if below >= s.next_id {
            return Duration::ZERO;
        }
        match s.cache.front() {
            Some(&(front, _, _)) if below >= front => s.cache[(below - front) as usize].2.elapsed(),
            _ => s
                .log
                .segment_of(below)
                .map_or(Duration::ZERO, |seg| seg.created.elapsed()),
        }
    }

    fn update_gauges(&self, s: &Inner) {
        Stats::set(
            &self.stats.spool_messages,
            s.next_id.saturating_sub(s.acks.below()),
        );
        Stats::set(&self.stats.spool_bytes, s.log.bytes());
        Stats::set(&self.stats.spool_memory_bytes, s.cache_bytes as u64);
        Stats::set(
            &self.stats.spool_memory_only_messages,
            Self::memory_only_in(s),
        );
    }

    /// Messages held only in memory and not acknowledged (`memory_first`;
    /// counting the few acknowledged out of order too): what a crash or a
    /// power cut would lose now.
    fn memory_only_in(s: &Inner) -> u64 {
        s.next_id
            .saturating_sub(s.written_below.max(s.acks.below()))
    }

    /// [`Self::memory_only_in`], for tests and the stop.
    pub fn memory_only(&self) -> u64 {
        Self::memory_only_in(&self.lock())
    }

    fn memory_first(&self, s: &Inner) -> bool {
        self.settings.durability == Durability::MemoryFirst && !s.closed
    }

    /// Refreshes the age gauge (called by the stats line).
    pub fn refresh_age(&self) {
        let s = self.lock();
        Stats::set(
            &self.stats.spool_oldest_age_s,
            Self::oldest_unsent_age(&s).as_secs(),
        );
    }

    /// Stores a sealed message: on disk first (`write_through`), or in
    /// memory, making room by writing the oldest messages there to disk
    /// (`memory_first`). Blocks the calling thread for the disk write, and
    /// under `block` until there is room (which in turn stops the readers
    /// behind it), so the seal stage calls it from its own thread, never
    /// from an async task. Returns false only when the spool was closed (a
    /// stop) and even the filesystem's reserve could not take the message:
    /// it is not stored, it is counted as dropped, and
    /// [`Spool::lost_at_stop`] reports its range.
    ///
    /// Synchronous on purpose: a hand-off to the blocking pool per message
    /// cost two wake-ups per message at full rate (docs/BENCHMARKS.md).
    pub fn push(&self, msg: SealedMessage) -> bool {
        let msg = Arc::new(msg);
        let mut s = self.lock();
        loop {
            let stored = {
                let _busy = self.stages.get().map(|st| st.write.busy());
                self.try_push(&mut s, &msg)
            };
            if stored {
                drop(s);
                self.data.notify_one();
                return true;
            }
            if s.closed {
                self.count_lost_at_stop(&mut s, &msg);
                return false;
            }
            // Block policy: wait for room made by the sync tick (released
            // segments), by acknowledgements (memory), or by a close, or
            // retry anyway after a while (space may return from outside).
            s = self
                .space
                .wait_timeout(s, BLOCKED_RETRY)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A message the closed spool could not store: counted, its range
    /// reported by [`Spool::lost_at_stop`], and accounted for in the
    /// sequence record so the next start does not report it again.
    fn count_lost_at_stop(&self, s: &mut Inner, msg: &SealedMessage) {
        Stats::add(&self.stats.messages_dropped, 1);
        Stats::add(&self.stats.records_dropped, u64::from(msg.records));
        s.lost_at_stop.add(
            &msg.sensor,
            msg.first_seq,
            msg.last_seq,
            u64::from(msg.records),
        );
        s.log.note_dropped(&msg.sensor, msg.last_seq);
    }

    /// One attempt to store `msg`. Returns false only under `block` when
    /// there is no room; under `drop_oldest` it makes room (or, when the
    /// disk cannot take anything at all, drops a message, counted).
    fn try_push(&self, s: &mut Inner, msg: &Arc<SealedMessage>) -> bool {
        if self.memory_first(s) {
            match self.reserve(s, msg) {
                Reserved::Yes => {}
                Reserved::NoRoom => return false,
                Reserved::Dropped => return true,
            }
            if !self.make_memory_room(s, in_memory(msg)) {
                return false;
            }
            let id = s.next_id;
            s.next_id += 1;
            s.unwritten_bytes += disk::stored_len(msg);
            s.cache_bytes += in_memory(msg);
            s.cache.push_back((id, msg.clone(), Instant::now()));
            self.update_gauges(s);
            return true;
        }
        // After a close, what is still only in memory goes to disk first:
        // ids on disk only grow.
        if s.written_below < s.next_id && !self.spill_waiting(s, true) {
            return false;
        }
        let id = s.next_id;
        let pending = s.unwritten_bytes;
        match self.write(s, msg, id, pending) {
            Written::Yes => {
                s.next_id = id + 1;
                s.written_below = s.next_id;
                s.cache_bytes += in_memory(msg);
                s.cache.push_back((id, msg.clone(), Instant::now()));
                while s.cache_bytes > self.settings.memory && s.cache.len() > 1 {
                    let (_, old, _) = s.cache.pop_front().expect("not empty");
                    s.cache_bytes -= in_memory(&old);
                }
                self.update_gauges(s);
                true
            }
            Written::NoRoom => false,
            Written::Dropped => true,
        }
    }

    /// `memory_first`: frees memory for `incoming` more bytes by letting
    /// go of the oldest messages that are on disk (or settled), writing the
    /// oldest that are not. False when one could not be written under
    /// `block`.
    fn make_memory_room(&self, s: &mut Inner, incoming: usize) -> bool {
        while s.cache_bytes + incoming > self.settings.memory {
            let Some(&(front, _, _)) = s.cache.front() else {
                return true;
            };
            if front >= s.written_below && !self.spill_oldest(s) {
                return false;
            }
            if s.cache
                .front()
                .is_some_and(|&(id, _, _)| id < s.written_below)
            {
                let (_, old, _) = s.cache.pop_front().expect("not empty");
                s.cache_bytes -= in_memory(&old);
            }
        }
        self.update_gauges(s);
        true
    }

    /// `memory_first`: writes the oldest message held only in memory to
    /// disk. Settled ones are passed over. True when it is on disk, or
    /// lost under `drop_oldest` because the disk takes nothing (counted);
    /// false when there is no room under `block`, or nothing to write.
    fn spill_oldest(&self, s: &mut Inner) -> bool {
        let Some((id, msg, _)) = s.oldest_memory_only() else {
            // Everything below `next_id` is on disk or settled.
            s.written_below = s.next_id;
            return false;
        };
        // What the broker acknowledged in order needs no disk: the ids
        // skipped are below the acknowledged position the log records.
        s.log.release_acked(s.acks.below(), false);
        let len = disk::stored_len(&msg);
        let pending = s.unwritten_bytes.saturating_sub(len);
        match self.write(s, &msg, id, pending) {
            Written::Yes => {
                s.written_below = id + 1;
                s.unwritten_bytes = pending;
                true
            }
            Written::Dropped => {
                s.acks.give_up(id..id + 1);
                s.send_cursor = s.acks.next_unsettled(s.send_cursor);
                s.written_below = id + 1;
                s.unwritten_bytes = pending;
                true
            }
            Written::NoRoom => false,
        }
    }

    /// `memory_first`: writes the messages that have waited `spill_after`
    /// (the sync tick), or all of them (`all`, at a stop). Returns false
    /// when the disk had no room for one under `block`.
    fn spill_waiting(&self, s: &mut Inner, all: bool) -> bool {
        let now = Instant::now();
        loop {
            let Some((_, _, at)) = s.oldest_memory_only() else {
                return true;
            };
            if !all && now.saturating_duration_since(at) < self.settings.spill_after {
                return true;
            }
            if !self.spill_oldest(s) {
                return s.written_below >= s.next_id;
            }
        }
    }

    /// The room a disk write (or a reservation) must leave: what a stop
    /// may still have to store, and `pending` bytes promised to messages
    /// held only in memory. At a stop, what was already read may use the
    /// kept room and the filesystem's `min_free` floor too, rather than be
    /// lost; the budget always holds.
    fn room(&self, s: &mut Inner, msg: &SealedMessage, pending: u64) -> Room {
        s.largest = s.largest.max(msg.bytes.len() as u64 + ENTRY_OVERHEAD);
        if s.closed {
            Room {
                min_free: 0.0,
                keep: 0,
                pending,
            }
        } else {
            Room {
                min_free: self.settings.min_free,
                keep: self.settings.stop_reserve.saturating_mul(s.largest),
                pending,
            }
        }
    }

    /// Writes message `id` to the disk log, leaving `pending` bytes free
    /// besides the usual room, and applying `when_full` when there is no
    /// room.
    fn write(&self, s: &mut Inner, msg: &SealedMessage, id: MessageId, pending: u64) -> Written {
        loop {
            let room = self.room(s, msg, pending);
            match s.log.append(id, msg, room) {
                Ok(_) => {
                    self.accepting(s);
                    return Written::Yes;
                }
                Err(e) => match self.refuse(s, &e) {
                    Refusal::Wait => return Written::NoRoom,
                    Refusal::Retry => {}
                    Refusal::NothingToDrop => {
                        // Nothing left to drop and still no room: the disk
                        // itself refuses. This message is lost.
                        self.lose(s, msg, &e, "spool cannot store anything; message dropped");
                        return Written::Dropped;
                    }
                },
            }
        }
    }

    /// `memory_first`: makes sure the disk could take `msg` at a stop, with
    /// room for every other message held only in memory, before the spool
    /// takes it into memory; `when_full` applies when it could not. Under
    /// `drop_oldest` with nothing on disk left to drop, the oldest message
    /// held only in memory goes, then `msg` itself.
    fn reserve(&self, s: &mut Inner, msg: &SealedMessage) -> Reserved {
        loop {
            let room = self.room(s, msg, s.unwritten_bytes);
            let Err(e) = s.log.reserve(msg, room) else {
                self.accepting(s);
                return Reserved::Yes;
            };
            match self.refuse(s, &e) {
                Refusal::Wait => return Reserved::NoRoom,
                Refusal::Retry => {}
                Refusal::NothingToDrop => {
                    let Some((id, oldest, _)) = s.oldest_memory_only() else {
                        self.lose(s, msg, &e, "spool cannot store anything; message dropped");
                        return Reserved::Dropped;
                    };
                    s.acks.give_up(id..id + 1);
                    s.send_cursor = s.acks.next_unsettled(s.send_cursor);
                    s.written_below = id + 1;
                    s.unwritten_bytes = s.unwritten_bytes.saturating_sub(disk::stored_len(&oldest));
                    self.lose(
                        s,
                        &oldest,
                        &e,
                        "spool full; oldest message in memory dropped",
                    );
                }
            }
        }
    }

    /// The disk took data: says so once after it had refused.
    fn accepting(&self, s: &mut Inner) {
        if let Some(reason) = s.refusing.take() {
            info!(was = %reason, "spool accepts data again");
        }
    }

    /// The disk has no room for what the spool must store: logs it once
    /// per reason and applies `when_full`.
    fn refuse(&self, s: &mut Inner, e: &AppendError) -> Refusal {
        if let AppendError::Io { .. } = e {
            Stats::add(&self.stats.spool_write_errors, 1);
        }
        let reason = e.to_string();
        if s.refusing.as_deref() != Some(reason.as_str()) {
            match self.settings.when_full {
                WhenFull::Block => warn!(reason = %reason, error_kind = e.kind(),
                    "spool cannot take data; reading paused until there is room (when_full = block)"),
                WhenFull::DropOldest => warn!(reason = %reason, error_kind = e.kind(),
                    "spool full; dropping the oldest data (when_full = drop_oldest)"),
            }
            s.refusing = Some(reason);
        }
        if self.settings.when_full == WhenFull::Block {
            return Refusal::Wait;
        }
        match s.log.drop_oldest() {
            Some(d) => {
                self.dropped(s, &d, "spool full; oldest segment dropped");
                Refusal::Retry
            }
            None => Refusal::NothingToDrop,
        }
    }

    /// A message the spool gives up for lack of room (`drop_oldest`):
    /// counted, its range left for a gap notice, and logged (rate-limited
    /// per sensor).
    fn lose(&self, s: &mut Inner, msg: &SealedMessage, e: &AppendError, what: &str) {
        Stats::add(&self.stats.messages_dropped, 1);
        Stats::add(&self.stats.records_dropped, u64::from(msg.records));
        if msg.records > 0 {
            s.undeclared_drops.add(
                &msg.sensor,
                msg.first_seq,
                msg.last_seq,
                u64::from(msg.records),
            );
        }
        if let Some(suppressed) = s.store_errors.check(msg.sensor.clone(), Instant::now()) {
            error!(sensor = %msg.sensor, seq_first = msg.first_seq, seq_last = msg.last_seq,
                records = msg.records, error = %e, error_kind = e.kind(), suppressed, "{what}");
        }
    }

    /// Accounts for a segment that is gone: what of it was not
    /// acknowledged yet is lost (counted, and logged per sensor range);
    /// its ids are given up.
    fn dropped(&self, s: &mut Inner, d: &Dropped, what: &str) {
        let Some((first, last)) = d.info.ids else {
            return;
        };
        let mut lost = SeqRanges::default();
        let messages = match &d.entries {
            Some(entries) => {
                let mut n = 0;
                for e in entries.iter().filter(|e| !s.acks.is_acked(e.id)) {
                    if e.records == 0 {
                        // A gap notice, not records: what it declared is
                        // declared again (its whole range, as lost), so a
                        // notice dropped in a long outage is not a gap
                        // left unexplained.
                        s.undeclared_drops.add(
                            &e.sensor,
                            e.first_seq,
                            e.last_seq,
                            e.last_seq - e.first_seq + 1,
                        );
                        continue;
                    }
                    lost.add(&e.sensor, e.first_seq, e.last_seq, u64::from(e.records));
                    n += 1;
                }
                n
            }
            // Unreadable: what it held, as far as the index knows.
            None => {
                for (sensor, r) in &d.info.sensors {
                    lost.add(sensor, r.first_seq, r.last_seq, r.records);
                }
                d.info.messages
            }
        };
        Stats::add(&self.stats.messages_dropped, messages);
        Stats::add(&self.stats.records_dropped, lost.records());
        for (sensor, r) in lost.iter() {
            warn!(sensor = %sensor, seq_first = r.first_seq, seq_last = r.last_seq,
                records = r.records, "{what}");
            if r.records > 0 {
                s.undeclared_drops
                    .add(sensor, r.first_seq, r.last_seq, r.records);
            }
        }
        s.acks.give_up(first..last + 1);
        s.send_cursor = s.acks.next_unsettled(s.send_cursor);
        while s.cache.front().is_some_and(|(id, _, _)| *id <= last) {
            let (_, m, _) = s.cache.pop_front().expect("not empty");
            s.cache_bytes -= in_memory(&m);
        }
        self.update_gauges(s);
    }

    /// The records dropped to make room since the last call, per sensor
    /// range, for the gap notices that declare them.
    pub fn take_dropped(&self) -> SeqRanges {
        std::mem::take(&mut self.lock().undeclared_drops)
    }

    /// What a stop could not store (the spool was full and even the
    /// filesystem's reserve could not take it), per sensor range.
    pub fn lost_at_stop(&self) -> SeqRanges {
        self.lock().lost_at_stop.clone()
    }

    /// The next message to publish, if any: from memory when it is still
    /// there, otherwise read from disk. Messages found damaged on disk
    /// while reading are given up (logged and counted), never waited for.
    pub fn next_to_send(&self) -> Option<(MessageId, Arc<SealedMessage>)> {
        let _busy = self.stages.get().map(|s| s.read.busy());
        let mut s = self.lock();
        loop {
            let id = s.acks.next_unsettled(s.send_cursor);
            if id >= s.next_id {
                return None;
            }
            if let Some(&(front, _, _)) = s.cache.front() {
                if id >= front {
                    let msg = s.cache[(id - front) as usize].1.clone();
                    s.send_cursor = id + 1;
                    return Some((id, msg));
                }
            }
            match s.log.read_from(id) {
                Ok(Some(entry)) => {
                    if entry.id > id {
                        self.unreadable(&mut s, id..entry.id);
                    }
                    s.send_cursor = entry.id + 1;
                    if s.acks.is_acked(entry.id) {
                        continue;
                    }
                    let msg = SealedMessage {
                        sensor: entry.sensor,
                        first_seq: entry.first_seq,
                        last_seq: entry.last_seq,
                        records: entry.records,
                        bytes: entry.message,
                    };
                    return Some((entry.id, Arc::new(msg)));
                }
                Ok(None) => {
                    // Ids missing on disk: continue with what is in memory.
                    let next = s.cache.front().map_or(s.next_id, |(f, _, _)| *f);
                    if next <= id {
                        return None;
                    }
                    self.unreadable(&mut s, id..next);
                    s.send_cursor = next;
                }
                Err(e) => {
                    // An unreadable segment while sending: set it aside
                    // and report what it held as lost, then go on.
                    let path = s.log.segment_of(id).map(|seg| seg.path.clone());
                    if let Some(limit) = self
                        .read_errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .check(Instant::now())
                    {
                        error!(error = %e, error_kind = "corrupt", suppressed = limit,
                            "cannot read spool segment");
                    }
                    let info = path.and_then(|p| s.log.remove_segment(&p))?;
                    Stats::add(&self.stats.spool_corrupt_entries, info.messages);
                    let dropped = Dropped {
                        info,
                        entries: None,
                    };
                    self.dropped(&mut s, &dropped, "unreadable spool segment; records lost");
                }
            }
        }
    }

    /// Messages with these ids could not be read back (damaged on disk
    /// after they were written): given up, counted and logged.
    fn unreadable(&self, s: &mut Inner, ids: std::ops::Range<MessageId>) {
        let (first, last) = (ids.start, ids.end - 1);
        let lost = s.acks.give_up(ids);
        if lost == 0 {
            return;
        }
        Stats::add(&self.stats.spool_corrupt_entries, lost);
        if let Some(limit) = self
            .read_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(Instant::now())
        {
            error!(
                messages = lost,
                id_first = first,
                id_last = last,
                error_kind = "corrupt",
                suppressed = limit,
                "spool messages damaged on disk after they were written; given up"
            );
        }
        self.update_gauges(s);
    }

    /// Waits until something may have changed for the uplink (a message
    /// arrived or the spool was closed). May wake spuriously.
    pub async fn changed(&self) {
        self.data.notified().await
    }

    /// The broker acknowledged message `id`. Returns it when it was not
    /// acknowledged before, for the counters.
    pub fn ack(&self, id: MessageId, records: u32) -> bool {
        let mut s = self.lock();
        if !s.acks.ack(id) {
            return false;
        }
        let below = s.acks.below();
        let mut freed = false;
        while s.cache.front().is_some_and(|(i, _, _)| *i < below) {
            let (id, m, _) = s.cache.pop_front().expect("not empty");
            s.cache_bytes -= in_memory(&m);
            if id >= s.written_below {
                // Delivered from memory only: the disk log never saw it.
                s.log.note_delivered(&m.sensor, m.last_seq);
                s.unwritten_bytes = s.unwritten_bytes.saturating_sub(disk::stored_len(&m));
            }
            freed = true;
        }
        // Released segments are deleted, and the acknowledged position
        // recorded, at the next sync tick, not here: the unlink and two
        // fsyncs per segment stalled the uplink (benches/spool.rs).
        s.log.release_acked(below, false);
        self.update_gauges(&s);
        let memory_first = self.memory_first(&s);
        drop(s);
        if freed && memory_first {
            // A push may wait for memory (`block`, the disk full too).
            self.space.notify_all();
        }
        Stats::add(&self.stats.messages_acked, 1);
        Stats::add(&self.stats.records_acked, u64::from(records));
        true
    }

    /// Offer every unacknowledged message again (after a reconnect).
    pub fn rewind(&self) {
        let mut s = self.lock();
        s.send_cursor = s.acks.below();
    }

    /// The sync tick (every `fsync_interval`): writes the messages that
    /// waited `spill_after` in memory (`memory_first`), forces written data
    /// to disk and records the acknowledged position.
    pub fn sync(&self) {
        let freed = {
            let mut s = self.lock();
            if self.settings.durability == Durability::MemoryFirst {
                let all = s.closed;
                self.spill_waiting(&mut s, all);
            }
            let finishing = s.closed;
            let freed = s.log.sync(finishing);
            self.update_gauges(&s);
            freed
        };
        if freed > 0 {
            self.space.notify_all();
        }
    }

    /// No more messages will be pushed (shutting down). `memory_first`:
    /// every message still only in memory is written to disk now, so that
    /// what the broker does not take in time waits there for the next
    /// start (they are still sent from memory meanwhile), and what is
    /// pushed from now on goes straight to disk. What finds no room even
    /// in the filesystem's reserve is tried again at each sync tick and
    /// given up by [`Spool::finish`].
    pub fn close(&self) {
        {
            let mut s = self.lock();
            s.closed = true;
            if self.settings.durability == Durability::MemoryFirst {
                self.spill_waiting(&mut s, true);
            }
            self.update_gauges(&s);
        }
        self.data.notify_one();
        self.space.notify_all();
    }

    /// The last call of a stop, once the uplink is done: writes what is
    /// still only in memory (`memory_first`), counts what cannot be written
    /// as lost (reported by [`Spool::lost_at_stop`]), and syncs.
    pub fn finish(&self) {
        {
            let mut s = self.lock();
            s.closed = true;
            if self.settings.durability == Durability::MemoryFirst
                && !self.spill_waiting(&mut s, true)
            {
                while s.written_below < s.next_id {
                    let front = s.cache.front().map_or(s.next_id, |&(id, _, _)| id);
                    let id = s.written_below.max(front);
                    if id >= s.next_id {
                        s.written_below = s.next_id;
                        break;
                    }
                    if let Some((_, msg, _)) = s.cache.get((id - front) as usize).cloned() {
                        if !s.acks.is_acked(id) {
                            s.acks.give_up(id..id + 1);
                            self.count_lost_at_stop(&mut s, &msg);
                        }
                        s.unwritten_bytes =
                            s.unwritten_bytes.saturating_sub(disk::stored_len(&msg));
                    }
                    s.written_below = id + 1;
                }
            }
        }
        self.sync();
    }

    /// Closed and every message acknowledged.
    pub fn is_drained(&self) -> bool {
        let s = self.lock();
        s.closed && s.acks.below() >= s.next_id
    }

    /// Unacknowledged messages, and bytes on disk.
    pub fn backlog(&self) -> (u64, u64) {
        let s = self.lock();
        (s.next_id.saturating_sub(s.acks.below()), s.log.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path, when_full: WhenFull) -> SpoolSettings {
        SpoolSettings {
            dir: dir.to_path_buf(),
            memory: 64 * 1024,
            disk: 1 << 20,
            when_full,
            durability: crate::config::Durability::WriteThrough,
            spill_after: Duration::from_secs(2),
            fsync: Fsync::Never,
            min_free: 0.0,
            stop_reserve: 0,
        }
    }

    fn msg(seq: u64) -> SealedMessage {
        SealedMessage {
            sensor: Arc::from("bike"),
            first_seq: seq,
            last_seq: seq,
            records: 1,
            bytes: format!("message {seq:06} ").repeat(1000).into_bytes(),
        }
    }

    fn drain(spool: &Spool) -> Vec<(MessageId, u64)> {
        std::iter::from_fn(|| spool.next_to_send().map(|(id, m)| (id, m.first_seq))).collect()
    }

    fn memory_first(dir: &std::path::Path, spill_after: Duration) -> SpoolSettings {
        SpoolSettings {
            durability: Durability::MemoryFirst,
            spill_after,
            ..settings(dir, WhenFull::Block)
        }
    }

    fn segments(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let path = e.as_ref().unwrap().path();
                path.extension().is_some_and(|x| x == "seg")
            })
            .count()
    }

    #[test]
    fn memory_first_writes_nothing_while_the_broker_keeps_up() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (spool, _) = Spool::open(
            memory_first(dir.path(), Duration::from_secs(3600)),
            stats.clone(),
        )
        .unwrap();
        for seq in 0..100 {
            spool.push(msg(seq));
            let (id, m) = spool.next_to_send().unwrap();
            assert_eq!(m.first_seq, seq);
            assert!(spool.ack(id, 1));
            spool.sync();
        }
        spool.close();
        spool.finish();
        assert_eq!(segments(dir.path()), 0, "no segment was ever made");
        assert!(spool.is_drained());
        assert_eq!(stats.snapshot().spool_memory_only_messages, 0);
        // Only the stop recorded where the broker is (and what it has).
        let (_, rec) = Spool::open(
            memory_first(dir.path(), Duration::from_secs(3600)),
            Arc::default(),
        )
        .unwrap();
        assert_eq!(rec.resend_from, 100);
        assert_eq!(rec.last_seq.get("bike"), Some(&99));
    }

    #[test]
    fn memory_first_writes_what_waited_spill_after_and_a_restart_sends_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) =
                Spool::open(memory_first(dir.path(), Duration::ZERO), Arc::default()).unwrap();
            for seq in 0..4 {
                spool.push(msg(seq));
            }
            assert_eq!(spool.memory_only(), 4);
            assert_eq!(segments(dir.path()), 0);
            spool.sync();
            assert_eq!(spool.memory_only(), 0);
            // Two more that no sync tick saw: a crash (no close) loses them.
            spool.push(msg(4));
            spool.push(msg(5));
            assert_eq!(spool.memory_only(), 2);
        }
        let (spool, rec) =
            Spool::open(memory_first(dir.path(), Duration::ZERO), Arc::default()).unwrap();
        assert_eq!(rec.messages, 4);
        assert!(rec.seq_losses.is_empty() && rec.lost_ids.is_empty());
        let seqs: Vec<u64> = drain(&spool).into_iter().map(|s| s.1).collect();
        assert_eq!(seqs, (0..4).collect::<Vec<_>>());
    }

    #[test]
    fn memory_first_writes_the_oldest_when_the_memory_is_full_and_sends_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(
            memory_first(dir.path(), Duration::from_secs(3600)),
            Arc::default(),
        )
        .unwrap();
        // 15 KB messages, 64 KiB of memory: four fit.
        for seq in 0..20 {
            spool.push(msg(seq));
        }
        assert_eq!(spool.memory_only(), 4);
        assert!(segments(dir.path()) > 0);
        let sent = drain(&spool);
        assert_eq!(
            sent.iter().map(|s| s.1).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
        assert_eq!(
            sent.iter().map(|s| s.0).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
        for (id, _) in sent {
            spool.ack(id, 1);
        }
        assert_eq!(spool.memory_only(), 0);
    }

    #[test]
    fn memory_first_stop_writes_what_is_left_for_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(
                memory_first(dir.path(), Duration::from_secs(3600)),
                Arc::default(),
            )
            .unwrap();
            for seq in 0..6 {
                spool.push(msg(seq));
            }
            // The broker took the first two, from memory.
            for (id, _) in drain(&spool).into_iter().take(2) {
                spool.ack(id, 1);
            }
            spool.rewind();
            spool.close();
            // Pushed after the close (the intake's last batches): to disk,
            // after the others.
            spool.push(msg(6));
            spool.finish();
            assert!(spool.lost_at_stop().is_empty());
        }
        let (spool, rec) = Spool::open(
            memory_first(dir.path(), Duration::from_secs(3600)),
            Arc::default(),
        )
        .unwrap();
        assert!(rec.seq_losses.is_empty() && rec.lost_ids.is_empty());
        assert_eq!(rec.resend_from, 2);
        let seqs: Vec<u64> = drain(&spool).into_iter().map(|s| s.1).collect();
        assert_eq!(seqs, (2..7).collect::<Vec<_>>());
    }

    #[test]
    fn memory_first_holds_in_memory_only_what_a_stop_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let settings = SpoolSettings {
            memory: 8 << 20,
            when_full: WhenFull::DropOldest,
            ..memory_first(dir.path(), Duration::from_secs(3600))
        };
        let held = {
            let (spool, _) = Spool::open(settings.clone(), stats.clone()).unwrap();
            // 200 messages of 15 KB: 3 MB, the memory could hold them all,
            // the 1 MiB disk only 60-odd.
            for seq in 0..200 {
                assert!(spool.push(msg(seq)));
            }
            let held = spool.memory_only();
            assert!((50..70).contains(&held), "{held} held in memory");
            assert_eq!(stats.snapshot().messages_dropped, 200 - held);
            // Each dropped one waits to be declared.
            assert_eq!(spool.take_dropped().records(), 200 - held);
            spool.close();
            spool.finish();
            assert!(spool.lost_at_stop().is_empty(), "the stop wrote them all");
            held
        };
        let (spool, rec) = Spool::open(settings, Arc::default()).unwrap();
        assert_eq!(rec.messages, held);
        let seqs: Vec<u64> = drain(&spool).into_iter().map(|s| s.1).collect();
        assert_eq!(seqs, (200 - held..200).collect::<Vec<_>>());
    }

    #[test]
    fn memory_first_skips_delivered_ids_on_disk_without_taking_them_for_lost() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) =
                Spool::open(memory_first(dir.path(), Duration::ZERO), Arc::default()).unwrap();
            for seq in 0..5 {
                spool.push(msg(seq));
            }
            for (id, _) in drain(&spool) {
                spool.ack(id, 1);
            }
            // An outage: 5..8 wait and go to disk at the tick, ids 5..7
            // after five that never touched it.
            for seq in 5..8 {
                spool.push(msg(seq));
            }
            spool.sync();
            assert_eq!(spool.memory_only(), 0);
            // A crash: no close.
        }
        let (spool, rec) =
            Spool::open(memory_first(dir.path(), Duration::ZERO), Arc::default()).unwrap();
        assert!(rec.seq_losses.is_empty(), "{:?}", rec.seq_losses);
        assert!(rec.lost_ids.is_empty(), "{:?}", rec.lost_ids);
        assert_eq!(rec.resend_from, 5);
        let sent = drain(&spool);
        assert_eq!(sent, vec![(5, 5), (6, 6), (7, 7)]);
    }

    #[test]
    fn a_backlog_beyond_memory_is_sent_from_disk_in_order_and_again_after_rewind() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) =
            Spool::open(settings(dir.path(), WhenFull::Block), Arc::default()).unwrap();
        let spool = Arc::new(spool);
        for seq in 0..40 {
            spool.push(msg(seq));
        }
        let sent = drain(&spool);
        assert_eq!(
            sent.iter().map(|s| s.1).collect::<Vec<_>>(),
            (0..40).collect::<Vec<_>>()
        );
        assert_eq!(sent[7].0, 7);
        for (id, _) in &sent[..10] {
            assert!(spool.ack(*id, 1));
        }
        assert!(!spool.ack(3, 1), "a second ack counts once");
        spool.rewind();
        assert_eq!(drain(&spool).first().map(|s| s.1), Some(10));
    }

    #[test]
    fn the_age_gauge_follows_the_oldest_unacknowledged_message() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (spool, _) = Spool::open(settings(dir.path(), WhenFull::Block), stats.clone()).unwrap();
        let spool = Arc::new(spool);
        spool.push(msg(0));
        std::thread::sleep(Duration::from_millis(1100));
        spool.push(msg(1));
        spool.refresh_age();
        assert_eq!(stats.snapshot().spool_oldest_age_s, 1);
        let (id, _) = spool.next_to_send().unwrap();
        spool.ack(id, 1);
        spool.refresh_age();
        assert_eq!(stats.snapshot().spool_oldest_age_s, 0);
    }

    #[test]
    fn after_a_restart_everything_unacknowledged_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) =
                Spool::open(settings(dir.path(), WhenFull::Block), Arc::default()).unwrap();
            let spool = Arc::new(spool);
            for seq in 0..30 {
                spool.push(msg(seq));
            }
            for (id, _) in drain(&spool).into_iter().take(12) {
                spool.ack(id, 1);
            }
            spool.close();
            spool.sync();
        }
        let (spool, rec) =
            Spool::open(settings(dir.path(), WhenFull::Block), Arc::default()).unwrap();
        assert_eq!(rec.resend_from, 12);
        let seqs: Vec<u64> = drain(&spool).into_iter().map(|s| s.1).collect();
        assert_eq!(seqs, (12..30).collect::<Vec<_>>());
        assert!(!spool.is_drained());
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let (spool, _) =
            Spool::open(settings(dir.path(), WhenFull::DropOldest), stats.clone()).unwrap();
        let spool = Arc::new(spool);
        for seq in 0..200 {
            spool.push(msg(seq));
        }
        let dropped = stats.snapshot().records_dropped;
        assert!(dropped > 0);
        // What was dropped waits to be declared, exactly, once.
        let undeclared: Vec<(String, u64, u64, u64)> = spool
            .take_dropped()
            .iter()
            .map(|(s, r)| (s.to_string(), r.first_seq, r.last_seq, r.records))
            .collect();
        assert_eq!(
            undeclared,
            [("bike".to_string(), 0, dropped - 1, dropped)],
            "one range from seq 0, every record of it dropped"
        );
        assert!(spool.take_dropped().iter().next().is_none());
        let seqs: Vec<u64> = drain(&spool).into_iter().map(|s| s.1).collect();
        assert_eq!(seqs.len() as u64 + dropped, 200);
        assert_eq!(*seqs.last().unwrap(), 199);
        assert_eq!(seqs[0], dropped, "whole oldest segments went");
    }

    #[test]
    fn block_waits_for_room_resumes_after_acks_and_gives_up_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) =
            Spool::open(settings(dir.path(), WhenFull::Block), Arc::default()).unwrap();
        let spool = Arc::new(spool);
        // Pushes from a thread of their own, as the seal stage does; a push
        // that does not return within 300 ms is blocked.
        let (done_tx, done) = std::sync::mpsc::channel();
        let pusher = {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for seq in 0..10_000 {
                    let stored = spool.push(msg(seq));
                    done_tx.send((seq, stored)).unwrap();
                    if !stored {
                        return;
                    }
                }
            })
        };
        let quiet = Duration::from_millis(300);
        let last_before_block = |from: u64| {
            let mut last = from;
            while let Ok((seq, stored)) = done.recv_timeout(quiet) {
                assert!(stored, "push {seq} gave up while the spool was open");
                last = seq;
            }
            last
        };
        let full = last_before_block(0);
        assert!(full < 1000, "a 1 MiB spool must fill up: {full}");
        // Acknowledgements free segments at the sync tick, which wakes the
        // blocked push.
        for (id, _) in drain(&spool) {
            spool.ack(id, 1);
        }
        spool.sync();
        assert_eq!(
            done.recv_timeout(Duration::from_secs(5)),
            Ok((full + 1, true)),
            "push resumed"
        );
        spool.rewind();
        assert_eq!(drain(&spool).first().map(|s| s.1), Some(full + 1));
        // Full again; a close ends the blocked push without storing.
        let full = last_before_block(full + 1);
        spool.close();
        assert_eq!(
            done.recv_timeout(Duration::from_secs(5)),
            Ok((full + 1, false))
        );
        pusher.join().unwrap();
    }

    /// Random damage to a closed spool, then recovery and a full drain.
    mod damage_recovery {
        use super::*;
        use crate::spool::segment::{self, SEGMENT_HEADER_LEN};
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};
        use std::path::{Path, PathBuf};

        #[derive(Debug, Clone)]
        enum Damage {
            /// XOR these bytes at a fraction of the file's length.
            Flip { at: f64, len: usize, mask: u8 },
            /// Cut the file at a fraction of its length.
            Truncate { at: f64 },
            /// Garbage over the segment header (magic and version).
            Header,
        }

        fn damage() -> impl Strategy<Value = (prop::sample::Index, Damage)> {
            let kind = prop_oneof![
                (0.0..1.0f64, 1usize..64, 1u8..=255).prop_map(|(at, len, mask)| Damage::Flip {
                    at,
                    len,
                    mask
                }),
                (0.0..1.0f64).prop_map(|at| Damage::Truncate { at }),
                Just(Damage::Header),
            ];
            (any::<prop::sample::Index>(), kind)
        }

        fn settings(dir: &Path) -> SpoolSettings {
            SpoolSettings {
                dir: dir.to_path_buf(),
                memory: 16 * 1024,
                // Room for the most the test pushes (160 messages of up to
                // 3 KB), so that a push never blocks; 80 KiB segments, a
                // few dozen messages each.
                disk: 640 * 1024,
                when_full: WhenFull::Block,
                durability: crate::config::Durability::WriteThrough,
                spill_after: Duration::from_secs(2),
                fsync: Fsync::Never,
                min_free: 0.0,
                stop_reserve: 0,
            }
        }

        /// A message whose bytes say what it is, so a delivery can be
        /// checked against what was pushed.
        fn message(sensor: &str, first_seq: u64, records: u32, pad: usize) -> SealedMessage {
            let last_seq = first_seq + u64::from(records) - 1;
            let mut bytes = format!("{sensor}:{first_seq}-{last_seq};").into_bytes();
            bytes.resize(bytes.len() + pad, b'.');
            SealedMessage {
                sensor: Arc::from(sensor),
                first_seq,
                last_seq,
                records,
                bytes,
            }
        }

        fn segment_files(dir: &Path) -> Vec<PathBuf> {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect();
            files.sort();
            files
        }

        /// Bytes of `path` touched by `d`, as a range (a truncation touches
        /// everything after the cut).
        fn apply(path: &Path, d: &Damage) -> std::ops::Range<u64> {
            let mut bytes = std::fs::read(path).unwrap();
            let len = bytes.len() as u64;
            let touched = match *d {
                Damage::Flip { at, len: n, mask } => {
                    let start = ((len as f64 * at) as usize).min(bytes.len().saturating_sub(1));
                    let end = (start + n).min(bytes.len());
                    for b in &mut bytes[start..end] {
                        *b ^= mask;
                    }
                    start as u64..end as u64
                }
                Damage::Truncate { at } => {
                    let cut = (len as f64 * at) as usize;
                    bytes.truncate(cut);
                    cut as u64..u64::MAX
                }
                Damage::Header => {
                    let n = bytes.len().min(SEGMENT_HEADER_LEN as usize);
                    bytes[..n].copy_from_slice(&b"not a segment!!!"[..n]);
                    0..n as u64
                }
            };
            std::fs::write(path, bytes).unwrap();
            touched
        }

        fn drain_and_ack(spool: &Spool) -> Vec<Arc<SealedMessage>> {
            let mut sent = Vec::new();
            for _ in 0..100_000 {
                let Some((id, msg)) = spool.next_to_send() else {
                    break;
                };
                spool.ack(id, msg.records);
                sent.push(msg);
            }
            sent
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]

            #[test]
            fn damage_never_resends_acknowledged_or_loses_intact_messages(
                sizes in proptest::collection::vec((0usize..2, 1u32..20, 0usize..3000), 20..160),
                acked_fraction in 0.0..1.0f64,
                damages in proptest::collection::vec(damage(), 1..4),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let sensors = ["bike", "weather"];
                let mut next_seq = [0u64; 2];
                let mut pushed = Vec::new();
                {
                    let (spool, _) = Spool::open(settings(dir.path()), Arc::default()).unwrap();
                    for &(sensor, records, pad) in &sizes {
                        let msg = message(sensors[sensor], next_seq[sensor], records, pad);
                        next_seq[sensor] += u64::from(records);
                        pushed.push(msg.bytes.clone());
                        prop_assert!(spool.push(msg));
                    }
                    // The broker acknowledged a prefix, recorded at a tick.
                    let acked = (sizes.len() as f64 * acked_fraction) as usize;
                    for _ in 0..acked {
                        let (id, msg) = spool.next_to_send().unwrap();
                        spool.ack(id, msg.records);
                    }
                    spool.sync();
                    spool.close();
                    spool.sync();
                }
                // Where every entry lies, before the damage.
                let files = segment_files(dir.path());
                let mut layout = Vec::new();
                for (i, f) in files.iter().enumerate() {
                    for m in segment::scan(f).unwrap().0 {
                        layout.push((i, m.offset, m.offset + m.len, m.id));
                    }
                }
                let acked_ids: BTreeSet<u64> = {
                    let (_, rec) = DiskLog::open(crate::spool::disk::DiskSettings {
                        dir: dir.path().to_path_buf(),
                        budget: 640 * 1024,
                        segment_size: 80 * 1024,
                        min_free: 0.0,
                        fsync: Fsync::Never,
                        ack_interval: None,
                    }).unwrap();
                    (0..rec.resend_from).collect()
                };
                let mut touched: Vec<(usize, std::ops::Range<u64>)> = Vec::new();
                if !files.is_empty() {
                    for (index, d) in &damages {
                        let i = index.index(files.len());
                        if files[i].exists() {
                            touched.push((i, apply(&files[i], d)));
                        }
                    }
                }
                let intact: BTreeSet<u64> = layout
                    .iter()
                    .filter(|(i, start, end, _)| {
                        !touched.iter().any(|(j, r)| j == i && r.start < *end && r.end > *start)
                    })
                    .map(|&(_, _, _, id)| id)
                    .collect();

                let stats = Arc::new(Stats::default());
                let (spool, recovery) = Spool::open(settings(dir.path()), stats.clone()).unwrap();
                // Start-up finds every lost message up to the last intact
                // one and gives it up, and no intact one.
                let lost: BTreeSet<u64> = recovery.lost_ids.iter().cloned().flatten().collect();
                if let Some(&last_intact) = intact.range(recovery.resend_from..).next_back() {
                    let want: BTreeSet<u64> = (recovery.resend_from..last_intact)
                        .filter(|id| !intact.contains(id))
                        .collect();
                    prop_assert_eq!(&lost, &want);
                }
                prop_assert!(lost.is_disjoint(&intact));
                let corrupt_at_start = stats.snapshot().spool_corrupt_entries;
                // New messages after the recovery are numbered on.
                let mut after = Vec::new();
                for k in 0..5u64 {
                    let msg = message("bike", next_seq[0] + k, 1, 10);
                    after.push(msg.bytes.clone());
                    prop_assert!(spool.push(msg));
                }
                let sent = drain_and_ack(&spool);
                let sent_bytes: Vec<&[u8]> = sent.iter().map(|m| m.bytes.as_slice()).collect();
                let unique: BTreeSet<&[u8]> = sent_bytes.iter().copied().collect();
                prop_assert_eq!(unique.len(), sent_bytes.len(), "a message was sent twice");
                for (id, bytes) in pushed.iter().enumerate() {
                    let id = id as u64;
                    let was_sent = unique.contains(bytes.as_slice());
                    if acked_ids.contains(&id) {
                        prop_assert!(!was_sent, "acknowledged message {} sent again", id);
                    } else if intact.contains(&id) {
                        prop_assert!(was_sent, "intact message {} lost ({:?})", id, recovery);
                    }
                }
                for bytes in &after {
                    prop_assert!(unique.contains(bytes.as_slice()), "a new message was lost");
                }
                for m in &sent {
                    prop_assert!(pushed.contains(&m.bytes) || after.contains(&m.bytes));
                }
                // An exact loss range never holds a record that arrived.
                let delivered: BTreeMap<&str, BTreeSet<u64>> = sent.iter().fold(
                    BTreeMap::new(),
                    |mut acc, m| {
                        acc.entry(&*m.sensor).or_default().extend(m.first_seq..=m.last_seq);
                        acc
                    },
                );
                for loss in recovery.seq_losses.iter().filter(|l| l.exact) {
                    let arrived = delivered.get(&*loss.sensor).map_or(0, |d| {
                        d.range(loss.first_seq..=loss.last_seq).count()
                    });
                    prop_assert_eq!(arrived, 0, "{:?}", loss);
                }
                prop_assert_eq!(stats.snapshot().spool_corrupt_entries, corrupt_at_start,
                    "damage found only while sending");
                // The position reaches the end, and once idle the spool
                // holds no acknowledged bytes.
                {
                    let s = spool.lock();
                    prop_assert_eq!(s.acks.below(), s.log.next_id());
                }
                spool.sync();
                spool.sync();
                prop_assert_eq!(spool.lock().log.segments(), 0, "{:?}", segment_files(dir.path()));
                spool.close();
                spool.sync();
                drop(spool);
                // A restart after the drain sends nothing again.
                let (spool, recovery) = Spool::open(settings(dir.path()), Arc::default()).unwrap();
                prop_assert_eq!(recovery.messages, 0);
                prop_assert!(spool.next_to_send().is_none());
            }
        }
    }
}
