//! The disk log: every sealed message is appended to a segment file under
//! `state_dir/spool` before the spool accepts it, and stays there until the
//! broker has acknowledged it.
//!
//! Segment files are named after the id of their first message
//! (`00000000000000000042.seg`) so name order is message order. A segment
//! is deleted when every message in it is acknowledged (or, under
//! `drop_oldest`, when the disk budget needs its room). The acknowledged
//! position is kept in `acked.json` so a restart resends at most what was
//! in flight (duplicates, which consumers drop), never less.
//!
//! Start-up never fails because of spool contents: torn tails are
//! truncated, corrupt entries skipped, unreadable segments moved to
//! `corrupt/`; each is counted and logged.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use crate::seal::SealedMessage;
use crate::telemetry::{RateLimits, io_error_kind, storage};

use super::damage::{LossFinder, SeqLoss};
use super::segment::{
    self, Entry, EntryMeta, HeaderProblem, SEGMENT_HEADER_LEN, ScanReport, SegmentError,
    SegmentReader, SegmentWriter,
};

const ACK_FILE: &str = "acked.json";
const CORRUPT_DIR: &str = "corrupt";

/// When appended data is forced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every message: a power cut loses nothing the spool accepted.
    Always,
    /// Every `fsync_interval`: a power cut loses at most that window.
    Interval,
    /// Left to the kernel (about 30 s of dirty pages on Linux).
    Never,
}

/// The disk log's settings.
#[derive(Debug, Clone)]
pub struct DiskSettings {
    pub dir: PathBuf,
    /// Hard limit for segments plus the ack file, in bytes.
    pub budget: u64,
    /// A segment is closed once it reaches this size.
    pub segment_size: u64,
    /// Below this fraction of free space on the filesystem the log
    /// behaves as full.
    pub min_free: f64,
    pub fsync: Fsync,
    /// How often the acknowledged position is recorded while only it
    /// moved: `None` at every sync tick (`write_through`, so a restart
    /// resends at most a tick's worth); otherwise at most this often, and
    /// whenever segments are on disk or deleted, and at a stop
    /// (`memory_first`: a gateway whose broker keeps up writes nearly
    /// nothing).
    pub ack_interval: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "cannot use spool directory {path}: {source}; check [gateway] state_dir and its permissions"
    )]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why an append did not happen. Neither is fatal: the caller applies the
/// `when_full` policy.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("disk budget reached ({used} of {budget} bytes{})", kept_for_stop(*kept))]
    Budget { used: u64, budget: u64, kept: u64 },
    #[error("filesystem almost full ({free_percent:.1}% free, minimum {min_percent:.1}%{})", kept_for_stop(*kept))]
    LowSpace {
        free_percent: f64,
        min_percent: f64,
        kept: u64,
    },
    #[error("cannot write spool segment {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn kept_for_stop(kept: u64) -> String {
    if kept == 0 {
        String::new()
    } else {
        format!(", {kept} bytes kept for what a stop must store")
    }
}

impl AppendError {
    /// The log's `error_kind`: `budget` (the configured `[buffer] disk` is
    /// used up), `enospc` (the filesystem is nearly or really full), or the
    /// I/O error's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            AppendError::Budget { .. } => "budget",
            AppendError::LowSpace { .. } => "enospc",
            AppendError::Io { source, .. } => crate::telemetry::io_error_kind(source),
        }
    }
}

/// At most one line per this period for each disk fault that repeats on
/// every sync (each `fsync_interval`): sync, ack file, delete.
const DISK_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Per sensor, the sequence range and record count held in one segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SensorRange {
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
}

/// One segment file and what is in it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub path: PathBuf,
    /// Ids of the first and last message (inclusive); `None` when empty.
    pub ids: Option<(u64, u64)>,
    pub bytes: u64,
    pub messages: u64,
    pub sensors: BTreeMap<Arc<str>, SensorRange>,
    /// When the segment was started (no message in it is older), on the
    /// monotonic clock: a jump of the wall clock (a Pi's clock set by NTP
    /// hours after boot) does not age the spool by hours.
    pub created: Instant,
}

impl SegmentInfo {
    fn new(path: PathBuf, created: Instant) -> Self {
        SegmentInfo {
            path,
            ids: None,
            bytes: SEGMENT_HEADER_LEN,
            messages: 0,
            sensors: BTreeMap::new(),
            created,
        }
    }

    fn add(
        &mut self,
        id: u64,
        sensor: &Arc<str>,
        first_seq: u64,
        last_seq: u64,
        records: u32,
        len: u64,
    ) {
        self.ids = Some(match self.ids {
            None => (id, id),
            Some((a, _)) => (a, id),
        });
        self.bytes += len;
        self.messages += 1;
        let r = self.sensors.entry(sensor.clone()).or_insert(SensorRange {
            first_seq,
            last_seq,
            records: 0,
        });
        r.first_seq = r.first_seq.min(first_seq);
        r.last_seq = r.last_seq.max(last_seq);
        r.records += u64::from(records);
    }

    fn last_id(&self) -> Option<u64> {
        self.ids.map(|(_, b)| b)
    }
}

/// What start-up found on disk.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub segments: usize,
    pub messages: u64,
    pub bytes: u64,
    pub corrupt_entries: u64,
    pub torn_tail_bytes: u64,
    pub moved_aside: Vec<PathBuf>,
    /// The lowest id not acknowledged before the stop: sending resumes here.
    pub resend_from: u64,
    /// Per sensor, the highest sequence number ever spooled (on disk now,
    /// acknowledged and deleted, or reported dropped).
    pub last_seq: BTreeMap<String, u64>,
    /// Ids of unacknowledged messages lost to damage (corrupt entries,
    /// torn or unreadable segments before the last intact entry): never to
    /// be acknowledged, so the caller gives them up.
    pub lost_ids: Vec<Range<u64>>,
    /// What those messages held, per sensor, as far as the intact messages
    /// around them tell ([`damage`](super::damage)).
    pub seq_losses: Vec<SeqLoss>,
    /// `None` when nothing was lost; otherwise the sensors with an intact
    /// message after the last loss. For every other sensor, records after
    /// its `last_seq` may have been lost too: only the sequence state can
    /// bound them.
    pub intact_after_loss: Option<BTreeSet<String>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AckFile {
    /// Every message id below this was acknowledged.
    below: u64,
    /// Per sensor, the highest sequence number of deleted segments.
    last_seq: BTreeMap<String, u64>,
}

/// Where the sender reads on disk.
#[derive(Debug)]
struct Cursor {
    /// Index into `segments` is unstable (front deletions), so keep the path.
    path: PathBuf,
    reader: SegmentReader,
    /// The id the next `next_entry` is expected to return at least.
    next_id: u64,
}

/// The segment files.
#[derive(Debug)]
pub struct DiskLog {
    settings: DiskSettings,
    segments: VecDeque<SegmentInfo>,
    writer: Option<SegmentWriter>,
    /// The size at which the segment being written is closed: chosen when
    /// it was started, from the room there was then ([`Self::segment_limit`]).
    writer_limit: u64,
    next_id: u64,
    bytes: u64,
    dirty: bool,
    /// Something was appended since the last sync tick.
    appended: bool,
    cursor: Option<Cursor>,
    acked_below: u64,
    persisted_below: u64,
    last_seq: BTreeMap<String, u64>,
    /// Acknowledged segments whose files are not deleted yet.
    released: Vec<(PathBuf, u64)>,
    /// `last_seq` changed since the ack file was written.
    seq_dirty: bool,
    /// `last_seq` moved by messages delivered without touching the disk
    /// ([`Self::note_delivered`]): recorded lazily.
    delivered_dirty: bool,
    /// When the ack file was last written.
    persisted_at: Instant,
    /// Rate limits of the repeating warnings, per kind of fault.
    warnings: RateLimits<&'static str>,
}

/// A segment dropped to make room.
#[derive(Debug)]
pub struct Dropped {
    pub info: SegmentInfo,
    /// Its entries, read just before it was deleted (`None` if it could
    /// not be read).
    pub entries: Option<Vec<EntryMeta>>,
}

/// The bytes `msg` takes in a segment.
pub fn stored_len(msg: &SealedMessage) -> u64 {
    segment::encoded_len(&msg.sensor, msg.bytes.len())
}

/// The room an append must leave.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    /// The filesystem's free-space floor, as a fraction.
    pub min_free: f64,
    /// Bytes to keep free in the budget and above the floor (capped at a
    /// quarter of the spool's capacity).
    pub keep: u64,
    /// Bytes the spool has promised to write later, kept free in full:
    /// the messages held only in memory (`memory_first`), which a stop
    /// writes.
    pub pending: u64,
}

#[derive(Debug, Clone, Copy)]
struct FsSpace {
    total: u64,
    avail: u64,
}

/// The smallest segment [`DiskLog::segment_limit`] chooses.
pub const MIN_SEGMENT: u64 = 16 << 10;

impl DiskLog {
    /// Opens the log, recovering what a crash or power cut left behind.
    pub fn open(settings: DiskSettings) -> Result<(DiskLog, Recovery), DiskError> {
        let dir = settings.dir.clone();
        let dir_err = |source| DiskError::Dir {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(dir_err)?;
        let mut names: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(dir_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        names.sort();

        let ack = read_ack_file(&dir.join(ACK_FILE));
        let mut recovery = Recovery {
            resend_from: ack.below,
            ..Recovery::default()
        };
        let mut segments = VecDeque::new();
        let mut last_valid_len = None;
        let mut losses = LossFinder::new(ack.last_seq.clone());
        // The id the next intact entry should have; a larger one means the
        // ids between were lost. Ids below `ack.below` were acknowledged:
        // losing them costs nothing.
        let mut expected = ack.below;
        for path in names {
            let (metas, report) = match scan_or_salvage(&dir, &path, &mut recovery) {
                Scanned::Read(metas, report) => (metas, report),
                Scanned::Empty => continue,
                Scanned::Unreadable => {
                    // Whatever it held is lost. Ids after it show the loss
                    // as a gap; at the end only the sequence state can.
                    losses.lost_at_end();
                    last_valid_len = None;
                    continue;
                }
            };
            recovery.corrupt_entries += report.corrupt_entries;
            recovery.torn_tail_bytes += report.torn_tail_bytes;
            if report.corrupt_entries > 0 || report.torn_tail_bytes > 0 {
                warn!(segment = %path.display(), corrupt_entries = report.corrupt_entries,
                    skipped_bytes = report.skipped_bytes, torn_tail_bytes = report.torn_tail_bytes,
                    error_kind = "corrupt", "spool segment damaged (power cut or disk fault); damaged entries skipped, the rest kept");
            }
            // A segment from an earlier run: its age by the wall clock now,
            // then counted on the monotonic clock.
            let age = fs::metadata(&path)
                .and_then(|m| m.created().or_else(|_| m.modified()))
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            let now = Instant::now();
            let mut info = SegmentInfo::new(path, now.checked_sub(age).unwrap_or(now));
            for m in &metas {
                let from = expected.max(ack.below);
                if m.id > from {
                    losses.lost(from..m.id);
                }
                expected = expected.max(m.id + 1);
                losses.intact(&m.sensor, m.first_seq, m.last_seq);
                info.add(m.id, &m.sensor, m.first_seq, m.last_seq, m.records, m.len);
            }
            // Torn or skipped bytes still occupy the disk.
            info.bytes = fs::metadata(&info.path).map_or(report.valid_len, |m| m.len());
            last_valid_len = Some(report.valid_len);
            segments.push_back(info);
        }
        recovery.intact_after_loss = losses.intact_after_loss();
        let (lost_ids, seq_losses) = losses.finish();
        recovery.lost_ids = lost_ids;
        recovery.seq_losses = seq_losses;
        // Ids only grow; ids in a segment after a damaged one are still
        // larger than anything before it.
        let next_id = segments
            .iter()
            .filter_map(|s| s.last_id())
            .max()
            .map_or(ack.below, |m| (m + 1).max(ack.below));

        let mut log = DiskLog {
            settings,
            segments,
            writer: None,
            writer_limit: 0,
            next_id,
            bytes: 0,
            dirty: false,
            appended: false,
            cursor: None,
            acked_below: ack.below,
            persisted_below: ack.below,
            last_seq: ack.last_seq,
            released: Vec::new(),
            seq_dirty: false,
            delivered_dirty: false,
            persisted_at: Instant::now(),
            warnings: RateLimits::new(DISK_LOG_PERIOD),
        };
        // Segments acknowledged entirely before the stop. Their highest
        // sequence numbers move into the ack file's record.
        if log.release_acked(ack.below, false) > 0 {
            log.delete_released();
            log.persist_acks();
        }
        log.bytes = log.segments.iter().map(|s| s.bytes).sum::<u64>() + ACK_FILE_BUDGET;
        // Resume appending to the last segment when it has room.
        let limit = log.segment_limit();
        if let (Some(last), Some(valid_len)) = (log.segments.back(), last_valid_len) {
            if valid_len < limit {
                match SegmentWriter::open_append(&last.path, valid_len) {
                    Ok(w) => {
                        log.writer = Some(w);
                        log.writer_limit = limit;
                        if let Some(last) = log.segments.back_mut() {
                            last.bytes = valid_len;
                        }
                    }
                    Err(e) => warn!(segment = %last.path.display(), error = %e,
                        error_kind = crate::telemetry::error_kind(&e), "cannot reopen spool segment for appending; starting a new one"),
                }
            }
        }
        log.bytes = log.segments.iter().map(|s| s.bytes).sum::<u64>() + ACK_FILE_BUDGET;
        recovery.segments = log.segments.len();
        recovery.messages = log.segments.iter().map(|s| s.messages).sum();
        recovery.bytes = log.bytes;
        recovery.last_seq = log.last_seq.clone();
        for s in &log.segments {
            for (sensor, r) in &s.sensors {
                let e = recovery
                    .last_seq
                    .entry(sensor.to_string())
                    .or_insert(r.last_seq);
                *e = (*e).max(r.last_seq);
            }
        }
        Ok((log, recovery))
    }

    /// Appends message `id`, leaving `room`: the spool keeps some for what
    /// a stop has to store, and a stop may use it and the filesystem's
    /// `min_free` floor too; the budget holds whatever `room` says. When
    /// the spool is full (the budget, the floor, or a failed write),
    /// acknowledged data is freed first, the segment being written
    /// included, and the append tried once more.
    ///
    /// Ids only grow: `id` is at least [`Self::next_id`]. Ids skipped
    /// (messages that went from memory to the broker without touching the
    /// disk, `memory_first`) must be acknowledged as far as
    /// [`Self::release_acked`] was told; the acknowledged position is
    /// recorded before the first entry after them, so that a start never
    /// takes them for lost entries.
    pub fn append(&mut self, id: u64, msg: &SealedMessage, room: Room) -> Result<u64, AppendError> {
        debug_assert!(id >= self.next_id, "ids only grow");
        let id = id.max(self.next_id);
        if id > self.next_id && self.persisted_below < self.acked_below.min(id) {
            self.persist_acks();
        }
        let entry = Entry {
            id,
            sensor: msg.sensor.clone(),
            first_seq: msg.first_seq,
            last_seq: msg.last_seq,
            records: msg.records,
            message: msg.bytes.clone(),
        };
        match self.try_append(&entry, room) {
            Err(_) if self.free_acked() > 0 => self.try_append(&entry, room),
            result => result,
        }
    }

    fn try_append(&mut self, entry: &Entry, room: Room) -> Result<u64, AppendError> {
        let len = entry.encoded_len();
        let rotate = match &self.writer {
            Some(w) => w.len() + len > self.writer_limit && !w.is_empty(),
            None => true,
        };
        let needed = len + if rotate { SEGMENT_HEADER_LEN } else { 0 };
        self.check_room(needed, room)?;
        if rotate {
            self.rotate(entry.id)?;
        }
        let writer = self.writer.as_mut().expect("rotate opened a writer");
        let before = writer.len();
        writer.append(entry).map_err(|source| AppendError::Io {
            path: writer.path().to_path_buf(),
            source,
        })?;
        if self.settings.fsync == Fsync::Always {
            writer.sync().map_err(|source| AppendError::Io {
                path: writer.path().to_path_buf(),
                source,
            })?;
        } else {
            self.dirty = true;
        }
        self.appended = true;
        let grown = writer.len() - before;
        self.bytes += grown;
        let info = self.segments.back_mut().expect("a segment is open");
        info.add(
            entry.id,
            &entry.sensor,
            entry.first_seq,
            entry.last_seq,
            entry.records,
            grown,
        );
        self.next_id = entry.id + 1;
        Ok(entry.id)
    }

    /// Whether `needed` more bytes fit, leaving `room`. What is kept for a
    /// stop never takes more than a quarter of the spool's room, so it
    /// cannot stop the spool from taking anything; what is pending is
    /// kept in full. One statvfs, for both checks.
    fn check_room(&self, needed: u64, room: Room) -> Result<(), AppendError> {
        let fs = self.fs_space();
        let keep = room.keep.min(self.capacity_with(fs) / 4) + room.pending;
        if self.bytes + needed + keep > self.settings.budget {
            return Err(AppendError::Budget {
                used: self.bytes,
                budget: self.settings.budget,
                kept: keep,
            });
        }
        if let Some(fs) = fs {
            // With no floor and nothing to keep, the write itself finds
            // out (ENOSPC).
            let floor = (fs.total as f64 * room.min_free) as u64;
            if floor + keep > 0 && fs.avail < floor + needed + keep {
                return Err(AppendError::LowSpace {
                    free_percent: fs.avail as f64 * 100.0 / fs.total.max(1) as f64,
                    min_percent: room.min_free * 100.0,
                    kept: keep,
                });
            }
        }
        Ok(())
    }

    /// Whether `msg` could be appended later (in a new segment, say),
    /// leaving `room`; acknowledged data is freed first when it does not
    /// fit. `memory_first` asks before it takes a message into memory, so
    /// that a stop can write it.
    pub fn reserve(&mut self, msg: &SealedMessage, room: Room) -> Result<(), AppendError> {
        let needed = stored_len(msg) + SEGMENT_HEADER_LEN;
        match self.check_room(needed, room) {
            Err(_) if self.free_acked() > 0 => self.check_room(needed, room),
            result => result,
        }
    }

    /// Frees what is acknowledged now, the segment being written included
    /// when all of it is: the spool is out of room. Returns the bytes
    /// freed.
    fn free_acked(&mut self) -> u64 {
        self.release(true);
        self.delete_released()
    }

    /// The size for a new segment: an eighth of the spool's
    /// [capacity](Self::capacity), between [`MIN_SEGMENT`] and the
    /// configured size. So a filesystem smaller than the configured segment
    /// still holds several: `drop_oldest` drops a fraction of the spool,
    /// never all of it, and `block` has whole segments to free while
    /// another fills.
    fn segment_limit(&self) -> u64 {
        (self.capacity() / 8).clamp(MIN_SEGMENT, self.settings.segment_size.max(MIN_SEGMENT))
    }

    /// What the spool can hold at most now: the smaller of the budget and
    /// what it holds plus what the filesystem can still give it above the
    /// `min_free` floor.
    fn capacity(&self) -> u64 {
        self.capacity_with(self.fs_space())
    }

    /// [`Self::capacity`] with the filesystem's space already asked.
    fn capacity_with(&self, fs: Option<FsSpace>) -> u64 {
        let budget = self.settings.budget;
        fs.map_or(budget, |fs| {
            let floor = (fs.total as f64 * self.settings.min_free) as u64;
            self.bytes
                .saturating_add(fs.avail.saturating_sub(floor))
                .min(budget)
        })
    }

    /// The size of the spool's filesystem and the bytes still available
    /// there (`None` when it cannot be asked).
    fn fs_space(&self) -> Option<FsSpace> {
        let s = nix::sys::statvfs::statvfs(&self.settings.dir).ok()?;
        let frag = s.fragment_size() as u64;
        Some(FsSpace {
            total: (s.blocks() as u64).saturating_mul(frag),
            avail: (s.blocks_available() as u64).saturating_mul(frag),
        })
    }

    /// Closes the current segment and starts one named after `first_id`.
    fn rotate(&mut self, first_id: u64) -> Result<(), AppendError> {
        if let Some(mut w) = self.writer.take() {
            if self.settings.fsync != Fsync::Never {
                if let Err(e) = w.sync() {
                    if let Some(suppressed) = self.warnings.check("sync", Instant::now()) {
                        warn!(segment = %w.path().display(), error = %e,
                            error_kind = io_error_kind(&e), suppressed, "cannot sync spool segment");
                    }
                }
            }
        }
        let path = self.settings.dir.join(format!("{first_id:020}.seg"));
        let writer = SegmentWriter::create(&path).map_err(|source| AppendError::Io {
            path: path.clone(),
            source,
        })?;
        if self.settings.fsync != Fsync::Never {
            sync_dir(&self.settings.dir);
        }
        self.bytes += SEGMENT_HEADER_LEN;
        self.segments
            .push_back(SegmentInfo::new(path, Instant::now()));
        self.writer = Some(writer);
        self.writer_limit = self.segment_limit();
        Ok(())
    }

    /// Deletes the oldest segment to make room (`drop_oldest`). Returns
    /// what it held, or `None` when there is nothing to drop.
    pub fn drop_oldest(&mut self) -> Option<Dropped> {
        let front = self.segments.front()?;
        // Read what it holds before it goes, so the caller can report
        // exactly the unacknowledged ranges.
        let entries = segment::scan(&front.path).ok().map(|(metas, _)| metas);
        let info = self.segments.pop_front()?;
        if self.segments.is_empty() {
            self.writer = None;
        }
        self.forget(&info);
        if let Some((_, last)) = info.ids {
            self.acked_below = self.acked_below.max(last + 1);
        }
        self.persist_acks();
        Some(Dropped { info, entries })
    }

    /// Records that `sensor`'s numbers up to `last_seq` are accounted for
    /// although they are not in the spool (dropped at a stop, and
    /// reported): a later recovery must not report them again.
    pub fn note_dropped(&mut self, sensor: &str, last_seq: u64) {
        let e = self.last_seq.entry(sensor.to_string()).or_insert(last_seq);
        *e = (*e).max(last_seq);
        self.seq_dirty = true;
    }

    /// Records that `sensor`'s numbers up to `last_seq` reached the broker
    /// without ever being on disk (`memory_first`), so that a start after a
    /// crash reports as possibly lost only what came after them. Written
    /// with the acknowledged position, lazily ([`DiskSettings::ack_interval`]).
    pub fn note_delivered(&mut self, sensor: &str, last_seq: u64) {
        match self.last_seq.get_mut(sensor) {
            Some(e) if *e >= last_seq => return,
            Some(e) => *e = last_seq,
            None => {
                self.last_seq.insert(sensor.to_string(), last_seq);
            }
        }
        self.delivered_dirty = true;
    }

    fn forget(&mut self, info: &SegmentInfo) {
        remove_segment_file(&info.path);
        self.bytes = self.bytes.saturating_sub(info.bytes);
        self.forget_later(info);
    }

    /// Takes a segment out of the log; its file stays (and counts against
    /// the budget) until [`Self::delete_released`] removes it.
    fn forget_later(&mut self, info: &SegmentInfo) {
        for (sensor, r) in &info.sensors {
            let e = self
                .last_seq
                .entry(sensor.to_string())
                .or_insert(r.last_seq);
            *e = (*e).max(r.last_seq);
        }
        // The ack file must say it before the segment is deleted: a start
        // after a crash reports losses from there.
        self.seq_dirty |= !info.sensors.is_empty();
        if self.cursor.as_ref().is_some_and(|c| c.path == info.path) {
            self.cursor = None;
        }
    }

    /// Every id below `below` is acknowledged: release the segments that
    /// hold nothing else (their files go at the next sync tick, see
    /// [`Self::delete_released`]). The segment being appended to is kept
    /// until it is full, so a broker that keeps up does not cost a file
    /// per batch; [`Self::sync`] releases it once it is idle.
    pub fn release_acked(&mut self, below: u64, persist: bool) -> usize {
        self.acked_below = self.acked_below.max(below);
        let released = self.release(false);
        if released > 0 && persist {
            self.persist_acks();
        }
        released
    }

    /// Releases the acknowledged segments at the front; the segment being
    /// written too when `active` (if all of it is acknowledged and it holds
    /// something), or when it is full.
    fn release(&mut self, active: bool) -> usize {
        let mut released = 0;
        while let Some(front) = self.segments.front() {
            let done = match front.last_id() {
                Some(last) => last < self.acked_below,
                None => true,
            };
            let is_active = self.segments.len() == 1 && self.writer.is_some();
            let keep_active = match &self.writer {
                Some(w) => w.len() < self.writer_limit && !(active && front.ids.is_some()),
                None => false,
            };
            if !done || (is_active && keep_active) {
                break;
            }
            let info = self.segments.pop_front().expect("front exists");
            if self.segments.is_empty() {
                self.writer = None;
            }
            self.forget_later(&info);
            self.released.push((info.path, info.bytes));
            released += 1;
        }
        released
    }

    /// Deletes the files of released segments. Unlinking an 8 MiB file
    /// takes milliseconds, so this runs at the sync tick on the blocking
    /// pool, not on the uplink's acknowledgement path; until then the files
    /// still count against the budget. Returns the bytes freed.
    pub fn delete_released(&mut self) -> u64 {
        let mut freed = 0;
        for (path, bytes) in self.released.drain(..) {
            remove_segment_file(&path);
            freed += bytes;
        }
        self.bytes = self.bytes.saturating_sub(freed);
        freed
    }

    /// The first message with an id of at least `id`, read from disk.
    /// Reading is sequential: a drain after an outage reads each segment
    /// once, front to back.
    pub fn read_from(&mut self, id: u64) -> Result<Option<Entry>, SegmentError> {
        if id >= self.next_id {
            return Ok(None);
        }
        let mut cursor = match self.cursor.take() {
            Some(c) if c.next_id <= id => c,
            _ => match self.open_cursor(id)? {
                Some(c) => c,
                None => return Ok(None),
            },
        };
        loop {
            match cursor.reader.next_entry()? {
                Some((_, entry)) if entry.id < id => {}
                Some((_, entry)) => {
                    cursor.next_id = entry.id + 1;
                    self.cursor = Some(cursor);
                    return Ok(Some(entry));
                }
                None => {
                    let next = self
                        .segments
                        .iter()
                        .position(|s| s.path == cursor.path)
                        .and_then(|i| self.segments.get(i + 1))
                        .map(|s| s.path.clone());
                    let Some(path) = next else {
                        return Ok(None);
                    };
                    self.prefetch_after(&path);
                    cursor = Cursor {
                        reader: SegmentReader::open(&path)?,
                        path,
                        next_id: cursor.next_id,
                    };
                }
            }
        }
    }

    /// The segment holding `id` (or the first after it), for error handling.
    pub fn segment_of(&self, id: u64) -> Option<&SegmentInfo> {
        self.segments
            .iter()
            .find(|s| s.last_id().is_some_and(|last| last >= id))
    }

    /// Removes the segment at `path` (unreadable while sending); returns
    /// what it held so the caller can report the loss.
    pub fn remove_segment(&mut self, path: &Path) -> Option<SegmentInfo> {
        let i = self.segments.iter().position(|s| s.path == path)?;
        let info = self.segments.remove(i)?;
        if i == self.segments.len() {
            self.writer = None;
        }
        if let Some(moved) = move_aside(&self.settings.dir, &info.path) {
            error!(segment = %moved.display(), error_kind = "corrupt",
                "spool segment moved aside to corrupt/");
        }
        self.forget(&info);
        Some(info)
    }

    /// Asks the kernel to read `path` and the segment after it ahead, in
    /// the background: draining a backlog from a cold cache (after a
    /// restart) then waits on the disk far less.
    fn prefetch_after(&self, path: &Path) {
        let i = self.segments.iter().position(|s| s.path == path);
        let paths = std::iter::once(path).chain(
            i.and_then(|i| self.segments.get(i + 1))
                .map(|s| s.path.as_path()),
        );
        for p in paths {
            if let Ok(f) = File::open(p) {
                let _ = nix::fcntl::posix_fadvise(
                    &f,
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
                );
            }
        }
    }

    fn open_cursor(&self, id: u64) -> Result<Option<Cursor>, SegmentError> {
        let Some(seg) = self.segment_of(id) else {
            return Ok(None);
        };
        self.prefetch_after(&seg.path);
        Ok(Some(Cursor {
            reader: SegmentReader::open(&seg.path)?,
            path: seg.path.clone(),
            next_id: 0,
        }))
    }

    /// Forces appended data to disk (the `interval` policy's tick, and at
    /// stop) and records the acknowledged position.
    ///
    /// The segment being written is released too when every message in it
    /// is acknowledged and nothing was appended since the last tick (or
    /// `finishing`): an idle spool holds no acknowledged bytes, and a
    /// full filesystem gets its space back once the broker has drained it.
    pub fn sync(&mut self, finishing: bool) -> u64 {
        if !self.appended || finishing {
            self.release(true);
        }
        self.appended = false;
        let freed = self.delete_released();
        if self.dirty {
            if let Some(w) = self.writer.as_mut() {
                if let Err(e) = w.sync() {
                    if let Some(suppressed) = self.warnings.check("sync", Instant::now()) {
                        warn!(segment = %w.path().display(), error = %e,
                            error_kind = io_error_kind(&e), suppressed, "cannot sync spool segment");
                    }
                }
            }
            self.dirty = false;
        }
        let moved = self.acked_below != self.persisted_below || self.delivered_dirty;
        let due = match self.settings.ack_interval {
            None => true,
            Some(interval) => {
                finishing || !self.segments.is_empty() || self.persisted_at.elapsed() >= interval
            }
        };
        if self.seq_dirty || (moved && due) {
            self.persist_acks();
        }
        freed
    }

    fn persist_acks(&mut self) {
        let file = AckFile {
            below: self.acked_below,
            last_seq: self.last_seq.clone(),
        };
        match write_atomic(
            &self.settings.dir,
            ACK_FILE,
            &serde_json::to_vec(&file).expect("serializes"),
        ) {
            Ok(()) => {
                self.persisted_below = self.acked_below;
                self.seq_dirty = false;
                self.delivered_dirty = false;
                self.persisted_at = Instant::now();
            }
            Err(e) => {
                if let Some(suppressed) = self.warnings.check("acks", Instant::now()) {
                    warn!(error = %e, error_kind = io_error_kind(&e), suppressed,
                        "cannot record the acknowledged position; a restart may resend more")
                }
            }
        }
    }

    /// Bytes used on disk (segments and the ack file), as counted against
    /// the budget.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Messages held in segments (acknowledged ones included until their
    /// segment is deleted).
    pub fn messages(&self) -> u64 {
        self.segments.iter().map(|s| s.messages).sum()
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The id the next appended message gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Lowest id with a segment still on disk.
    pub fn oldest_id(&self) -> Option<u64> {
        self.segments.iter().find_map(|s| s.ids.map(|(a, _)| a))
    }
}

/// What start-up made of one segment file.
enum Scanned {
    Read(Vec<EntryMeta>, ScanReport),
    /// Cut short before its first entry: nothing was ever in it. Removed.
    Empty,
    /// Nothing in it can be read: moved aside to `corrupt/`.
    Unreadable,
}

/// Reads a segment at start-up. A damaged header does not cost the
/// entries behind it: they are salvaged and the header rewritten.
fn scan_or_salvage(dir: &Path, path: &Path, recovery: &mut Recovery) -> Scanned {
    let err = match segment::scan(path) {
        Ok((metas, report)) => return Scanned::Read(metas, report),
        Err(e) => e,
    };
    match &err {
        SegmentError::NotASegment {
            reason: HeaderProblem::Empty | HeaderProblem::TooShort { .. },
            ..
        } => {
            // Created, then the power went before its header was written.
            warn!(segment = %path.display(), error = %err, error_kind = "corrupt",
                "empty spool segment removed (cut short before its first entry)");
            remove_segment_file(path);
            return Scanned::Empty;
        }
        // Any other header damage (magic, version): the entries carry
        // their own marker and CRC, so those that check out are version 1
        // entries whatever the header says.
        SegmentError::NotASegment { .. } => match segment::scan_salvage(path) {
            Ok((metas, report)) if !metas.is_empty() => match segment::rewrite_header(path) {
                Ok(()) => {
                    error!(segment = %path.display(), error = %err, entries = metas.len(),
                        error_kind = "corrupt",
                        "spool segment header damaged; the entries behind it were read and the header rewritten");
                    return Scanned::Read(metas, report);
                }
                Err(e) => {
                    error!(segment = %path.display(), error = %e, error_kind = io_error_kind(&e),
                        "cannot rewrite a damaged spool segment header");
                }
            },
            Ok(_) => {}
            Err(e) => {
                error!(segment = %path.display(), error = %e, error_kind = "corrupt",
                    "cannot read a spool segment with a damaged header");
            }
        },
        _ => {}
    }
    error!(segment = %path.display(), error = %err, error_kind = "corrupt",
        "spool segment unreadable; moved aside to corrupt/");
    if let Some(moved) = move_aside(dir, path) {
        recovery.moved_aside.push(moved);
    }
    Scanned::Unreadable
}

fn remove_segment_file(path: &Path) {
    storage::touched();
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!(segment = %path.display(), error = %e, error_kind = io_error_kind(&e),
                "cannot delete spool segment");
        }
    }
}

/// Room kept in the budget for `acked.json`.
const ACK_FILE_BUDGET: u64 = 4096;

fn read_ack_file(path: &Path) -> AckFile {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            error!(path = %path.display(), error = %e, error_kind = "corrupt",
                "acknowledged position unreadable; everything on disk will be sent again");
            AckFile::default()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => AckFile::default(),
        Err(e) => {
            error!(path = %path.display(), error = %e, error_kind = io_error_kind(&e),
                "cannot read the acknowledged position; everything on disk will be sent again");
            AckFile::default()
        }
    }
}

fn move_aside(dir: &Path, path: &Path) -> Option<PathBuf> {
    let corrupt = dir.join(CORRUPT_DIR);
    let _ = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&corrupt);
    let target = corrupt.join(path.file_name()?);
    storage::touched();
    match fs::rename(path, &target) {
        Ok(()) => Some(target),
        Err(e) => {
            error!(segment = %path.display(), error = %e, error_kind = io_error_kind(&e),
                "cannot move unreadable segment aside; deleting it");
            let _ = fs::remove_file(path);
            None
        }
    }
}

/// Write-temp, fsync, rename, fsync the directory: after a power cut the
/// file is either the old or the new version.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    storage::wrote(bytes.len());
    storage::touched();
    f.sync_all()?;
    storage::touched();
    fs::rename(&tmp, dir.join(name))?;
    storage::touched();
    File::open(dir)?.sync_all()
}

fn sync_dir(dir: &Path) {
    storage::touched();
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        warn!(dir = %dir.display(), error = %e, error_kind = io_error_kind(&e),
            "cannot sync the spool directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, budget: u64) -> DiskSettings {
        DiskSettings {
            dir: dir.to_path_buf(),
            budget,
            segment_size: 64 * 1024,
            min_free: 0.0,
            fsync: Fsync::Never,
            ack_interval: None,
        }
    }

    /// No floor, nothing kept (the settings' min_free is 0 too).
    const ROOM: Room = Room {
        min_free: 0.0,
        keep: 0,
        pending: 0,
    };

    fn message(sensor: &str, first_seq: u64, last_seq: u64, records: u32) -> SealedMessage {
        SealedMessage {
            sensor: Arc::from(sensor),
            first_seq,
            last_seq,
            records,
            bytes: vec![b'x'; 10_000],
        }
    }

    fn append(log: &mut DiskLog, seq: u64) -> Result<u64, AppendError> {
        log.append(log.next_id(), &message("bike", seq, seq, 1), ROOM)
    }

    fn ids_from(log: &mut DiskLog, start: u64) -> Vec<u64> {
        let mut out = vec![];
        let mut id = start;
        while let Some(e) = log.read_from(id).unwrap() {
            out.push(e.id);
            id = e.id + 1;
        }
        out
    }

    #[test]
    fn messages_survive_a_restart_and_reading_crosses_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, rec) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        assert_eq!(rec.messages, 0);
        for seq in 0..20 {
            assert_eq!(append(&mut log, seq).unwrap(), seq);
        }
        assert!(log.segments() > 2, "10 KB messages in 64 KiB segments");
        assert_eq!(ids_from(&mut log, 0), (0..20).collect::<Vec<_>>());
        assert_eq!(ids_from(&mut log, 7), (7..20).collect::<Vec<_>>());
        log.sync(false);
        drop(log);

        let (mut log, rec) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        assert_eq!(rec.messages, 20);
        assert_eq!(rec.resend_from, 0);
        assert_eq!(rec.last_seq["bike"], 19);
        assert_eq!(log.next_id(), 20);
        assert_eq!(append(&mut log, 20).unwrap(), 20);
        assert_eq!(ids_from(&mut log, 0), (0..21).collect::<Vec<_>>());
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_the_position_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        for seq in 0..20 {
            append(&mut log, seq).unwrap();
        }
        let before = log.segments();
        let bytes = log.bytes();
        assert!(log.release_acked(13, true) > 0);
        assert!(log.segments() < before);
        assert_eq!(log.bytes(), bytes, "files are deleted at the sync tick");
        log.sync(false);
        assert!(log.bytes() < bytes);
        assert_eq!(log.oldest_id().map(|id| id <= 13), Some(true));
        drop(log);

        let (mut log, rec) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        assert_eq!(rec.resend_from, 13);
        assert_eq!(rec.last_seq["bike"], 19);
        assert_eq!(ids_from(&mut log, 13), (13..20).collect::<Vec<_>>());
    }

    #[test]
    fn the_budget_is_a_hard_limit_and_drop_oldest_frees_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 200 * 1024;
        let (mut log, _) = DiskLog::open(settings(dir.path(), budget)).unwrap();
        let mut seq = 0;
        let err = loop {
            match append(&mut log, seq) {
                Ok(_) => seq += 1,
                Err(e) => break e,
            }
            assert!(log.bytes() <= budget);
        };
        assert!(matches!(err, AppendError::Budget { .. }), "{err}");
        let on_disk: u64 = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= budget, "{on_disk} bytes on disk");
        let dropped = log.drop_oldest().unwrap();
        assert_eq!(dropped.info.ids.unwrap().0, 0);
        assert_eq!(dropped.info.sensors["bike"].first_seq, 0);
        append(&mut log, seq).unwrap();
        let first_left = dropped.info.ids.unwrap().1 + 1;
        assert_eq!(ids_from(&mut log, 0)[0], first_left);
    }

    #[test]
    fn segments_are_an_eighth_of_the_room_so_a_small_spool_holds_several() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 400 * 1024;
        let mut settings = settings(dir.path(), budget);
        settings.segment_size = 8 << 20;
        let (mut log, _) = DiskLog::open(settings).unwrap();
        let mut seq = 0;
        while append(&mut log, seq).is_ok() {
            seq += 1;
        }
        let sizes: Vec<u64> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .collect();
        assert!(sizes.len() >= 6, "{sizes:?}");
        let limit = budget / 8;
        assert!(
            sizes.iter().all(|&len| len <= limit),
            "a segment over {limit} bytes: {sizes:?}"
        );
    }

    #[test]
    fn an_acknowledged_segment_being_written_is_released_once_idle() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        for seq in 0..3 {
            append(&mut log, seq).unwrap();
        }
        log.release_acked(3, false);
        log.sync(false);
        assert_eq!(log.segments(), 1, "kept at the tick it was appended to");
        log.sync(false);
        assert_eq!(log.segments(), 0, "released at the next, idle tick");
        assert_eq!(log.bytes(), ACK_FILE_BUDGET);
        assert_eq!(append(&mut log, 3).unwrap(), 3, "ids go on");
        drop(log);
        let (_, rec) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        assert_eq!((rec.resend_from, rec.messages), (3, 1));
        assert_eq!(rec.last_seq["bike"], 3);
    }

    #[test]
    fn ids_lost_to_damage_are_found_with_what_they_held() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        let (a, b) = ("a", "b");
        for i in 0..20u64 {
            let sensor = if i % 2 == 0 { a } else { b };
            let seq = i / 2 * 10;
            log.append(log.next_id(), &message(sensor, seq, seq + 9, 10), ROOM)
                .unwrap();
        }
        log.sync(false);
        drop(log);
        // Cut the first segment in the middle: ids after the cut are lost.
        let seg = dir.path().join(format!("{:020}.seg", 0));
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let (_, rec) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        assert_eq!(rec.lost_ids.len(), 1, "{rec:?}");
        let lost = rec.lost_ids[0].clone();
        assert!(lost.start > 0 && lost.end < 20, "{lost:?}");
        let want: u64 = lost.clone().count() as u64 * 10;
        let got: u64 = rec.seq_losses.iter().map(|l| l.records).sum();
        assert_eq!(got, want, "{:?}", rec.seq_losses);
        assert!(rec.seq_losses.iter().all(|l| l.exact));
        assert_eq!(rec.intact_after_loss, Some(["a".into(), "b".into()].into()));
    }

    #[test]
    fn a_torn_tail_is_truncated_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        for seq in 0..3 {
            append(&mut log, seq).unwrap();
        }
        drop(log);
        let seg = dir.path().join(format!("{:020}.seg", 0));
        let len = fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 100).unwrap();
        drop(f);

        let (mut log, rec) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        assert!(rec.torn_tail_bytes > 0);
        assert_eq!(rec.messages, 2);
        assert_eq!(
            append(&mut log, 3).unwrap(),
            2,
            "the torn message's id is reused: it never existed"
        );
        assert_eq!(ids_from(&mut log, 0), vec![0, 1, 2]);
    }

    #[test]
    fn an_unreadable_segment_is_moved_aside_and_start_up_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        for seq in 0..20 {
            append(&mut log, seq).unwrap();
        }
        drop(log);
        let mut segs: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        fs::write(&segs[0], b"garbage, not a segment header").unwrap();

        let (mut log, rec) = DiskLog::open(settings(dir.path(), 10 << 20)).unwrap();
        assert_eq!(rec.moved_aside.len(), 1);
        assert!(rec.moved_aside[0].starts_with(dir.path().join("corrupt")));
        let ids = ids_from(&mut log, 0);
        assert!(!ids.is_empty() && *ids.last().unwrap() == 19);
    }
}
