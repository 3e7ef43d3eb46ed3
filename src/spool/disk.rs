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

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use crate::telemetry::{RateLimits, io_error_kind};

use super::segment::{self, Entry, SEGMENT_HEADER_LEN, SegmentError, SegmentReader, SegmentWriter};

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
    #[error("disk budget reached ({used} of {budget} bytes)")]
    Budget { used: u64, budget: u64 },
    #[error("filesystem almost full ({free_percent:.1}% free, minimum {min_percent:.1}%)")]
    LowSpace { free_percent: f64, min_percent: f64 },
    #[error("cannot write spool segment {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    /// When the segment was started: no message in it is older.
    pub created: SystemTime,
}

impl SegmentInfo {
    fn new(path: PathBuf, created: SystemTime) -> Self {
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
    /// Per sensor, the highest sequence number ever spooled (on disk now
    /// or acknowledged and deleted).
    pub last_seq: BTreeMap<String, u64>,
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
    next_id: u64,
    bytes: u64,
    dirty: bool,
    cursor: Option<Cursor>,
    acked_below: u64,
    persisted_below: u64,
    last_seq: BTreeMap<String, u64>,
    /// Acknowledged segments whose files are not deleted yet.
    released: Vec<(PathBuf, u64)>,
    /// Rate limits of the repeating warnings, per kind of fault.
    warnings: RateLimits<&'static str>,
}

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
        for path in names {
            match segment::scan(&path) {
                Ok((metas, report)) => {
                    recovery.corrupt_entries += report.corrupt_entries;
                    recovery.torn_tail_bytes += report.torn_tail_bytes;
                    if report.corrupt_entries > 0 || report.torn_tail_bytes > 0 {
                        warn!(segment = %path.display(), corrupt_entries = report.corrupt_entries,
                            skipped_bytes = report.skipped_bytes, torn_tail_bytes = report.torn_tail_bytes,
                            error_kind = "corrupt", "spool segment damaged (power cut or disk fault); damaged entries skipped, the rest kept");
                    }
                    let created = fs::metadata(&path)
                        .and_then(|m| m.created().or_else(|_| m.modified()))
                        .unwrap_or_else(|_| SystemTime::now());
                    let mut info = SegmentInfo::new(path, created);
                    for m in &metas {
                        info.add(m.id, &m.sensor, m.first_seq, m.last_seq, m.records, m.len);
                    }
                    // Torn or skipped bytes still occupy the disk.
                    info.bytes = fs::metadata(&info.path).map_or(report.valid_len, |m| m.len());
                    last_valid_len = Some(report.valid_len);
                    segments.push_back(info);
                }
                Err(e) => {
                    error!(segment = %path.display(), error = %e, error_kind = "corrupt",
                        "spool segment unreadable; moved aside to corrupt/");
                    if let Some(moved) = move_aside(&dir, &path) {
                        recovery.moved_aside.push(moved);
                    }
                    last_valid_len = None;
                }
            }
        }
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
            next_id,
            bytes: 0,
            dirty: false,
            cursor: None,
            acked_below: ack.below,
            persisted_below: ack.below,
            last_seq: ack.last_seq,
            released: Vec::new(),
            warnings: RateLimits::new(DISK_LOG_PERIOD),
        };
        // Segments acknowledged entirely before the stop. Their highest
        // sequence numbers move into the ack file's record.
        if log.release_acked(ack.below, false) > 0 {
            log.delete_released();
            log.persist_acks();
        }
        // Resume appending to the last segment when it has room.
        if let (Some(last), Some(valid_len)) = (log.segments.back(), last_valid_len) {
            if valid_len < log.settings.segment_size {
                match SegmentWriter::open_append(&last.path, valid_len) {
                    Ok(w) => {
                        log.writer = Some(w);
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

    /// Appends a message and returns its id.
    pub fn append(
        &mut self,
        sensor: &Arc<str>,
        first_seq: u64,
        last_seq: u64,
        records: u32,
        message: &[u8],
    ) -> Result<u64, AppendError> {
        let entry = Entry {
            id: self.next_id,
            sensor: sensor.clone(),
            first_seq,
            last_seq,
            records,
            message: message.to_vec(),
        };
        let len = entry.encoded_len();
        let rotate = match &self.writer {
            Some(w) => w.len() + len > self.settings.segment_size && w.len() > SEGMENT_HEADER_LEN,
            None => true,
        };
        let needed = len + if rotate { SEGMENT_HEADER_LEN } else { 0 };
        if self.bytes + needed > self.settings.budget && !self.released.is_empty() {
            // Acknowledged segments waiting for the sync tick: delete them
            // now rather than call the spool full.
            self.delete_released();
        }
        if self.bytes + needed > self.settings.budget {
            return Err(AppendError::Budget {
                used: self.bytes,
                budget: self.settings.budget,
            });
        }
        if let Some(free) = self.free_fraction() {
            if free < self.settings.min_free {
                return Err(AppendError::LowSpace {
                    free_percent: free * 100.0,
                    min_percent: self.settings.min_free * 100.0,
                });
            }
        }
        if rotate {
            self.rotate(entry.id)?;
        }
        let writer = self.writer.as_mut().expect("rotate opened a writer");
        let before = writer.len();
        writer.append(&entry).map_err(|source| AppendError::Io {
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
        let grown = writer.len() - before;
        self.bytes += grown;
        let info = self.segments.back_mut().expect("a segment is open");
        info.add(entry.id, sensor, first_seq, last_seq, records, grown);
        self.next_id += 1;
        Ok(entry.id)
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
            .push_back(SegmentInfo::new(path, SystemTime::now()));
        self.writer = Some(writer);
        Ok(())
    }

    fn free_fraction(&self) -> Option<f64> {
        let s = nix::sys::statvfs::statvfs(&self.settings.dir).ok()?;
        let total = s.blocks() as f64;
        (total > 0.0).then(|| s.blocks_available() as f64 / total)
    }

    /// Deletes the oldest segment to make room (`drop_oldest`). Returns
    /// what it held, or `None` when there is nothing to drop.
    pub fn drop_oldest(&mut self) -> Option<SegmentInfo> {
        let info = self.segments.pop_front()?;
        if self.segments.is_empty() {
            self.writer = None;
        }
        self.forget(&info);
        if let Some((_, last)) = info.ids {
            self.acked_below = self.acked_below.max(last + 1);
        }
        self.persist_acks();
        Some(info)
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
        if self.cursor.as_ref().is_some_and(|c| c.path == info.path) {
            self.cursor = None;
        }
    }

    /// Every id below `below` is acknowledged: delete the segments that
    /// hold nothing else. The segment being appended to is kept until it
    /// is full, so a broker that keeps up does not cost a file per batch.
    pub fn release_acked(&mut self, below: u64, persist: bool) -> usize {
        self.acked_below = self.acked_below.max(below);
        let mut released = 0;
        while let Some(front) = self.segments.front() {
            let done = match front.last_id() {
                Some(last) => last < self.acked_below,
                None => true,
            };
            let active = self.segments.len() == 1 && self.writer.is_some();
            let full = self
                .writer
                .as_ref()
                .is_some_and(|w| w.len() >= self.settings.segment_size);
            if !done || (active && !full) {
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
        if released > 0 && persist {
            self.persist_acks();
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
    pub fn sync(&mut self) -> u64 {
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
        if self.acked_below != self.persisted_below {
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
            Ok(()) => self.persisted_below = self.acked_below,
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

fn remove_segment_file(path: &Path) {
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

/// Write-temp, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn sync_dir(dir: &Path) {
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
        }
    }

    fn append(log: &mut DiskLog, seq: u64) -> Result<u64, AppendError> {
        let sensor: Arc<str> = Arc::from("bike");
        log.append(&sensor, seq, seq, 1, &vec![b'x'; 10_000])
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
        log.sync();
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
        log.sync();
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
        assert_eq!(dropped.ids.unwrap().0, 0);
        assert_eq!(dropped.sensors["bike"].first_seq, 0);
        append(&mut log, seq).unwrap();
        let first_left = dropped.ids.unwrap().1 + 1;
        assert_eq!(ids_from(&mut log, 0)[0], first_left);
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
