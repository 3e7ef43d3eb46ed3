//! Segment files of the disk spool: append-only files of framed entries, each
//! holding one sealed message, that survive power cuts and bit rot.
//!
//! A segment starts with a 16-byte header (all integers little-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `b"SGSPOOL\0"` |
//! | 4 | format version, `1` |
//! | 4 | reserved, written as 0, ignored on read |
//!
//! then entries, each:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | entry marker `b"SGE1"` |
//! | 4 | body length (at most [`MAX_ENTRY_BODY`]) |
//! | 4 | CRC-32C (Castagnoli) of the body |
//! | n | body |
//!
//! and the body is: u64 id, u64 first_seq, u64 last_seq, u32 records,
//! u16 sensor name length, the sensor name (UTF-8), then the message bytes
//! (the rest of the body).
//!
//! An entry counts only if it decodes completely: marker, a sane length, a
//! matching CRC and a well-formed body. The reader never trusts anything
//! else: after a bad entry it searches forward for the next marker that
//! starts a valid entry (the marker is what makes resynchronising cheap), so
//! one flipped bit costs one entry, not the segment. What lies after the last
//! valid entry is a *torn tail* (the entry being written when the power went),
//! reported apart from corruption so the caller can truncate it and append
//! again.
//!
//! This module only moves bytes: which segment to write, when to sync, and
//! what an acknowledged entry means belong to the disk spool above it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::telemetry::storage;

/// Length of the segment header; the first entry starts here.
pub const SEGMENT_HEADER_LEN: u64 = 16;

/// The largest entry body written or read. A length field above it is
/// corruption, and is never allocated.
pub const MAX_ENTRY_BODY: usize = 16 << 20;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SGSPOOL\0";

/// The format version this code writes and reads.
pub const SEGMENT_VERSION: u32 = 1;

/// First bytes of every entry: what the reader looks for when it
/// resynchronises after corruption.
pub const ENTRY_MARKER: [u8; 4] = *b"SGE1";

/// Marker, body length and CRC before each body.
pub const ENTRY_HEADER_LEN: u64 = 12;

/// Fixed part of a body: id, first_seq, last_seq, records, sensor name length.
const BODY_FIXED_LEN: usize = 8 + 8 + 8 + 4 + 2;

/// How much the reader asks the kernel for at a time (and its usual buffer
/// size; an entry larger than this grows the buffer up to that entry).
const READ_CHUNK: usize = 256 << 10;

/// One sealed message as it lies in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The spool's id for the message (unique within the spool).
    pub id: u64,
    pub sensor: Arc<str>,
    /// Sequence numbers of the first and last record in the message.
    pub first_seq: u64,
    pub last_seq: u64,
    /// How many records the message holds (counted when it is dropped).
    pub records: u32,
    /// The sealed message, byte for byte as it will be published.
    pub message: Vec<u8>,
}

impl Entry {
    /// Bytes this entry takes in a segment, framing included.
    pub fn encoded_len(&self) -> u64 {
        encoded_len(&self.sensor, self.message.len())
    }
}

/// The bytes an entry of `sensor` with a message of `message_len` bytes
/// takes in a segment.
pub fn encoded_len(sensor: &str, message_len: usize) -> u64 {
    ENTRY_HEADER_LEN + (BODY_FIXED_LEN + sensor.len() + message_len) as u64
}

/// Where an entry lies and what it holds, without its message: what start-up
/// keeps in memory for every entry on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    /// Offset of the entry's marker in the segment.
    pub offset: u64,
    pub id: u64,
    pub sensor: Arc<str>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u32,
    /// Encoded length, framing included: the next entry starts at
    /// `offset + len`.
    pub len: u64,
}

/// What reading a segment found. Every byte of the file after the header is
/// in exactly one of: a valid entry, `skipped_bytes`, `torn_tail_bytes`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Valid entries read.
    pub entries: u64,
    /// Runs of corrupt bytes (CRC mismatch, malformed body, damaged framing)
    /// followed by a valid entry. A run counts once: when the framing is
    /// destroyed the number of entries lost inside it cannot be known;
    /// `skipped_bytes` says how much was lost.
    pub corrupt_entries: u64,
    /// Bytes in those runs.
    pub skipped_bytes: u64,
    /// Bytes after the last valid entry that do not start a valid entry: a
    /// partial entry written when the power went, or garbage at the end.
    pub torn_tail_bytes: u64,
    /// Offset just after the last valid entry (the start offset if there is
    /// none): where appending may resume once the torn tail is cut off.
    pub valid_len: u64,
}

/// Why a file is not a readable segment at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    #[error("the file is empty")]
    Empty,
    #[error("the file has {len} bytes, fewer than the {SEGMENT_HEADER_LEN}-byte segment header")]
    TooShort { len: u64 },
    #[error("it does not start with the segment magic \"SGSPOOL\\0\"")]
    BadMagic,
    #[error("its format version is {0}, and this build reads version {SEGMENT_VERSION} only")]
    UnsupportedVersion(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("I/O error on spool segment {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The header is missing or wrong: nothing in the file can be trusted.
    /// The caller moves the file aside (to `corrupt/`) and goes on.
    #[error("{path} is not a readable spool segment: {reason}")]
    NotASegment {
        path: PathBuf,
        reason: HeaderProblem,
    },
}

impl SegmentError {
    fn io(path: &Path, source: io::Error) -> Self {
        SegmentError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

// ---------------------------------------------------------------------------
// Writing

/// Appends entries to one segment file.
///
/// An append is one positioned write of the whole encoded entry. If it fails
/// (a full disk, an I/O error) the file is cut back to where it was, so a
/// failed append leaves nothing behind; if even that fails, the next append
/// cuts it back first. Durability is the caller's call: [`sync`] is
/// `fdatasync`, and a new file also needs its directory synced to survive a
/// power cut.
///
/// [`sync`]: SegmentWriter::sync
pub struct SegmentWriter {
    file: File,
    path: PathBuf,
    len: u64,
    /// Set when cutting back a failed append failed too: bytes past `len`
    /// may hold a partial entry.
    tail_dirty: bool,
    /// Reused encoding buffer.
    scratch: Vec<u8>,
}

impl fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("tail_dirty", &self.tail_dirty)
            .finish()
    }
}

impl SegmentWriter {
    /// Creates a new segment (refusing to overwrite an existing file) with
    /// mode 0600, and writes its header.
    pub fn create(path: &Path) -> io::Result<SegmentWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        if let Err(e) = file.write_all_at(&header_bytes(), 0) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        storage::wrote(header_bytes().len());
        Ok(SegmentWriter {
            file,
            path: path.to_path_buf(),
            len: SEGMENT_HEADER_LEN,
            tail_dirty: false,
            scratch: Vec::new(),
        })
    }

    /// Reopens an existing segment for appending, after a scan found its
    /// valid entries end at `valid_len`: cuts off what follows (a torn tail)
    /// and appends after it.
    pub fn open_append(path: &Path, valid_len: u64) -> io::Result<SegmentWriter> {
        let file = OpenOptions::new().write(true).open(path)?;
        let file_len = file.metadata()?.len();
        if valid_len < SEGMENT_HEADER_LEN || valid_len > file_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot append to spool segment {} at offset {valid_len}: the file has {file_len} bytes and entries start at {SEGMENT_HEADER_LEN}",
                    path.display()
                ),
            ));
        }
        if file_len != valid_len {
            file.set_len(valid_len)?;
        }
        Ok(SegmentWriter {
            file,
            path: path.to_path_buf(),
            len: valid_len,
            tail_dirty: false,
            scratch: Vec::new(),
        })
    }

    /// Appends one entry and returns the new file length. On any error the
    /// file is cut back to its previous length (best effort), so no partial
    /// entry stays, and the error is returned. An entry that could never be
    /// read back (body over [`MAX_ENTRY_BODY`], sensor name over 65535 bytes,
    /// `first_seq > last_seq`) is refused with `InvalidInput`, writing
    /// nothing.
    pub fn append(&mut self, entry: &Entry) -> io::Result<u64> {
        encode_entry(entry, &mut self.scratch)?;
        let result = append_encoded(
            &mut self.file,
            &mut self.len,
            &mut self.tail_dirty,
            &self.scratch,
        );
        if result.is_ok() {
            storage::wrote(self.scratch.len());
        }
        if self.scratch.capacity() > READ_CHUNK {
            // Don't keep what one large entry needed.
            self.scratch = Vec::new();
        }
        result
    }

    /// Makes what was appended durable (`fdatasync`).
    pub fn sync(&mut self) -> io::Result<()> {
        storage::touched();
        self.file.sync_data()
    }

    /// Length of the file: header plus every entry appended.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the segment holds no entry yet.
    pub fn is_empty(&self) -> bool {
        self.len <= SEGMENT_HEADER_LEN
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The two file operations an append needs; a seam so that a failing write
/// can be tested without filling a disk.
trait AppendTarget {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl AppendTarget for File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// Writes `bytes` at `*len`; on failure cuts the target back to `*len`.
fn append_encoded<T: AppendTarget>(
    target: &mut T,
    len: &mut u64,
    tail_dirty: &mut bool,
    bytes: &[u8],
) -> io::Result<u64> {
    if *tail_dirty {
        target.set_len(*len)?;
        *tail_dirty = false;
    }
    match target.write_all_at(bytes, *len) {
        Ok(()) => {
            *len += bytes.len() as u64;
            Ok(*len)
        }
        Err(e) => {
            if target.set_len(*len).is_err() {
                *tail_dirty = true;
            }
            Err(e)
        }
    }
}

/// Encodes `entry` (framing included) into `out`, replacing its contents.
fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> io::Result<()> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    let Ok(name_len) = u16::try_from(entry.sensor.len()) else {
        return Err(invalid(format!(
            "sensor name of {} bytes is too long for a spool entry (at most 65535)",
            entry.sensor.len()
        )));
    };
    let body_len = BODY_FIXED_LEN + entry.sensor.len() + entry.message.len();
    if body_len > MAX_ENTRY_BODY {
        return Err(invalid(format!(
            "message {} of sensor {} is {} bytes, over the spool entry limit of {MAX_ENTRY_BODY} bytes",
            entry.id,
            entry.sensor,
            entry.message.len()
        )));
    }
    if entry.first_seq > entry.last_seq {
        return Err(invalid(format!(
            "message {} of sensor {} has first_seq {} after last_seq {}",
            entry.id, entry.sensor, entry.first_seq, entry.last_seq
        )));
    }
    out.clear();
    out.reserve(ENTRY_HEADER_LEN as usize + body_len);
    out.extend_from_slice(&ENTRY_MARKER);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    out.extend_from_slice(&entry.id.to_le_bytes());
    out.extend_from_slice(&entry.first_seq.to_le_bytes());
    out.extend_from_slice(&entry.last_seq.to_le_bytes());
    out.extend_from_slice(&entry.records.to_le_bytes());
    out.extend_from_slice(&name_len.to_le_bytes());
    out.extend_from_slice(entry.sensor.as_bytes());
    out.extend_from_slice(&entry.message);
    let crc = crc32c::crc32c(&out[ENTRY_HEADER_LEN as usize..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading

/// A decoded body, with the sensor name and message as ranges of the
/// reader's buffer.
struct RawEntry {
    offset: u64,
    len: u64,
    id: u64,
    first_seq: u64,
    last_seq: u64,
    records: u32,
    sensor: std::ops::Range<usize>,
    message: std::ops::Range<usize>,
}

/// The fields of a well-formed body; `None` for a malformed one.
fn decode_body(body: &[u8]) -> Option<(u64, u64, u64, u32, usize)> {
    let fixed = body.get(..BODY_FIXED_LEN)?;
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&fixed[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let id = u64_at(0);
    let first_seq = u64_at(8);
    let last_seq = u64_at(16);
    let records = u32::from_le_bytes([fixed[24], fixed[25], fixed[26], fixed[27]]);
    let name_len = usize::from(u16::from_le_bytes([fixed[28], fixed[29]]));
    let name = body.get(BODY_FIXED_LEN..BODY_FIXED_LEN + name_len)?;
    if first_seq > last_seq || std::str::from_utf8(name).is_err() {
        return None;
    }
    Some((id, first_seq, last_seq, records, name_len))
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads the entries of a segment in order, resynchronising after
/// corruption: after a bad entry it searches forward for the next marker
/// that starts a valid entry, skipping (and counting) what lies between.
///
/// It never panics on any input, and holds at most one entry in memory
/// besides its 256 KiB read buffer (which a larger entry grows to that
/// entry's size, at most [`MAX_ENTRY_BODY`] plus framing, until it is read). Reads are large
/// and sequential; the resync search works on buffered bytes.
///
/// At the end of the file `next_entry` returns `None` and leaves the reader
/// before the torn tail, if any: called again later it reads on from there,
/// so a reader can follow a segment that is still being appended to.
pub struct SegmentReader {
    path: PathBuf,
    file: File,
    /// Bytes `base..base + hi` of the file; `lo` is the read position.
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    base: u64,
    /// The file ended during the current `next_entry` call; don't ask again.
    eof_seen: bool,
    /// Where the next call starts over: the start of the torn tail.
    resume_at: Option<u64>,
    /// Consecutive entries of one sensor share one name allocation.
    last_sensor: Option<Arc<str>>,
    report: ScanReport,
}

impl fmt::Debug for SegmentReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentReader")
            .field("path", &self.path)
            .field("position", &self.position())
            .field("report", &self.report)
            .finish()
    }
}

impl SegmentReader {
    /// Opens a segment, checks its header and positions the reader at the
    /// first entry.
    pub fn open(path: &Path) -> Result<SegmentReader, SegmentError> {
        Self::open_at(path, SEGMENT_HEADER_LEN)
    }

    /// Opens a segment, checks its header and positions the reader at
    /// `offset`, which must be an entry boundary found by an earlier read
    /// (an offset inside an entry is read as corruption up to the next
    /// entry).
    pub fn open_at(path: &Path, offset: u64) -> Result<SegmentReader, SegmentError> {
        Self::open_checked(path, offset, true)
    }

    /// Opens a segment whose header is damaged, to salvage the entries
    /// after it: they carry their own framing and CRC, so they are read
    /// exactly as in a sound segment. See [`scan_salvage`].
    fn open_ignoring_header(path: &Path) -> Result<SegmentReader, SegmentError> {
        Self::open_checked(path, SEGMENT_HEADER_LEN, false)
    }

    fn open_checked(
        path: &Path,
        offset: u64,
        check_header: bool,
    ) -> Result<SegmentReader, SegmentError> {
        let io_err = |e| SegmentError::io(path, e);
        let mut file = File::open(path).map_err(io_err)?;
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        let got = read_up_to(&mut file, &mut header).map_err(io_err)?;
        if check_header {
            if let Some(reason) = header_problem(&header[..got]) {
                return Err(SegmentError::NotASegment {
                    path: path.to_path_buf(),
                    reason,
                });
            }
        }
        if offset < SEGMENT_HEADER_LEN {
            return Err(io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("offset {offset} is inside the segment header"),
            )));
        }
        if offset != SEGMENT_HEADER_LEN {
            file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        }
        let file_len = file.metadata().map_err(io_err)?.len();
        let initial = file_len
            .saturating_sub(offset)
            .clamp(4096, READ_CHUNK as u64) as usize;
        Ok(SegmentReader {
            path: path.to_path_buf(),
            file,
            buf: vec![0; initial],
            lo: 0,
            hi: 0,
            base: offset,
            eof_seen: false,
            resume_at: None,
            last_sensor: None,
            report: ScanReport {
                valid_len: offset,
                ..ScanReport::default()
            },
        })
    }

    /// The next valid entry and its offset, or `None` at the end of the
    /// file. Corruption is skipped and counted in [`report`], never an
    /// error: `Err` means the file could not be read.
    ///
    /// [`report`]: SegmentReader::report
    pub fn next_entry(&mut self) -> Result<Option<(u64, Entry)>, SegmentError> {
        let Some(raw) = self.next_raw()? else {
            return Ok(None);
        };
        let sensor = self.intern(raw.sensor.clone());
        let entry = Entry {
            id: raw.id,
            sensor,
            first_seq: raw.first_seq,
            last_seq: raw.last_seq,
            records: raw.records,
            message: self.buf[raw.message].to_vec(),
        };
        Ok(Some((raw.offset, entry)))
    }

    /// Like [`next_entry`](SegmentReader::next_entry), without copying the
    /// message.
    pub fn next_meta(&mut self) -> Result<Option<EntryMeta>, SegmentError> {
        let Some(raw) = self.next_raw()? else {
            return Ok(None);
        };
        let sensor = self.intern(raw.sensor.clone());
        Ok(Some(EntryMeta {
            offset: raw.offset,
            id: raw.id,
            sensor,
            first_seq: raw.first_seq,
            last_seq: raw.last_seq,
            records: raw.records,
            len: raw.len,
        }))
    }

    /// What was read so far.
    pub fn report(&self) -> &ScanReport {
        &self.report
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset of the next byte to examine.
    fn position(&self) -> u64 {
        self.base + self.lo as u64
    }

    fn intern(&mut self, range: std::ops::Range<usize>) -> Arc<str> {
        // The body was checked to be UTF-8; "" is unreachable.
        let name = std::str::from_utf8(&self.buf[range]).unwrap_or_default();
        if let Some(last) = &self.last_sensor {
            if **last == *name {
                return last.clone();
            }
        }
        let sensor: Arc<str> = Arc::from(name);
        self.last_sensor = Some(sensor.clone());
        sensor
    }

    fn next_raw(&mut self) -> Result<Option<RawEntry>, SegmentError> {
        self.next_raw_io()
            .map_err(|e| SegmentError::io(&self.path, e))
    }

    fn next_raw_io(&mut self) -> io::Result<Option<RawEntry>> {
        if let Some(at) = self.resume_at.take() {
            // Re-read the tail from the file: it may have grown, and what
            // was buffered of it may have been cut back since.
            self.file.seek(SeekFrom::Start(at))?;
            self.base = at;
            self.lo = 0;
            self.hi = 0;
        }
        self.eof_seen = false;
        // Start of the run of bad bytes being skipped, if any.
        let mut bad_from: Option<u64> = None;
        loop {
            let avail = self.fill(ENTRY_HEADER_LEN as usize)?;
            if avail < ENTRY_HEADER_LEN as usize {
                // The end of the file: everything since the last valid entry
                // is a torn tail.
                let start = bad_from.unwrap_or(self.position());
                self.report.torn_tail_bytes = self.position() + avail as u64 - start;
                self.resume_at = Some(start);
                return Ok(None);
            }
            if let Some(raw) = self.try_entry()? {
                if let Some(start) = bad_from {
                    self.report.corrupt_entries += 1;
                    self.report.skipped_bytes += raw.offset - start;
                }
                self.report.entries += 1;
                self.report.torn_tail_bytes = 0;
                self.report.valid_len = raw.offset + raw.len;
                return Ok(Some(raw));
            }
            bad_from.get_or_insert(self.position());
            self.skip_to_next_marker()?;
        }
    }

    /// Decodes the entry at the read position and consumes it if it is
    /// valid; leaves the position unchanged if not. Needs the entry header
    /// buffered.
    fn try_entry(&mut self) -> io::Result<Option<RawEntry>> {
        let head = &self.buf[self.lo..self.lo + ENTRY_HEADER_LEN as usize];
        if head[..4] != ENTRY_MARKER {
            return Ok(None);
        }
        let body_len = le_u32(&head[4..8]) as usize;
        let crc = le_u32(&head[8..12]);
        if !(BODY_FIXED_LEN..=MAX_ENTRY_BODY).contains(&body_len) {
            return Ok(None);
        }
        let total = ENTRY_HEADER_LEN as usize + body_len;
        if self.fill(total)? < total {
            // Runs past the end of the file.
            return Ok(None);
        }
        // `fill` may have moved the buffered bytes.
        let body_at = self.lo + ENTRY_HEADER_LEN as usize;
        let body = &self.buf[body_at..self.lo + total];
        if crc32c::crc32c(body) != crc {
            return Ok(None);
        }
        let Some((id, first_seq, last_seq, records, name_len)) = decode_body(body) else {
            return Ok(None);
        };
        let name_at = body_at + BODY_FIXED_LEN;
        let raw = RawEntry {
            offset: self.position(),
            len: total as u64,
            id,
            first_seq,
            last_seq,
            records,
            sensor: name_at..name_at + name_len,
            message: name_at + name_len..self.lo + total,
        };
        // Consuming only moves `lo`: the ranges stay valid until the next
        // `fill`.
        self.lo += total;
        Ok(Some(raw))
    }

    /// Moves the read position past the current byte to the next entry
    /// marker, or to within 3 bytes of the end of the file if there is none.
    fn skip_to_next_marker(&mut self) -> io::Result<()> {
        let mut from = self.lo + 1;
        loop {
            if let Some(i) = self.buf[from..self.hi]
                .windows(ENTRY_MARKER.len())
                .position(|w| w == ENTRY_MARKER)
            {
                self.lo = from + i;
                return Ok(());
            }
            // Keep the last 3 bytes: they may begin a marker.
            self.lo = from.max(self.hi.saturating_sub(ENTRY_MARKER.len() - 1));
            if self.fill(ENTRY_MARKER.len())? < ENTRY_MARKER.len() {
                return Ok(());
            }
            from = self.lo;
        }
    }

    /// Buffers at least `n` bytes from the read position unless the file
    /// ends first; returns how many are buffered. The buffer grows with what
    /// is actually read, never to a length merely claimed by the data.
    fn fill(&mut self, n: usize) -> io::Result<usize> {
        if self.hi - self.lo >= n || self.eof_seen {
            return Ok(self.hi - self.lo);
        }
        if self.lo + n > self.buf.len() {
            self.buf.copy_within(self.lo..self.hi, 0);
            self.base += self.lo as u64;
            self.hi -= self.lo;
            self.lo = 0;
            // Give back what one large entry took once it is read.
            if self.buf.len() > READ_CHUNK && n <= READ_CHUNK && self.hi <= READ_CHUNK {
                self.buf.truncate(READ_CHUNK);
                self.buf.shrink_to_fit();
            }
        }
        while self.hi - self.lo < n {
            if self.hi == self.buf.len() {
                // Only reached with lo == 0 and n > buf.len().
                let grown = n.min(self.buf.len().saturating_mul(2).max(4096));
                self.buf.resize(grown, 0);
            }
            match self.file.read(&mut self.buf[self.hi..]) {
                Ok(0) => {
                    self.eof_seen = true;
                    break;
                }
                Ok(k) => self.hi += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.hi - self.lo)
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What is wrong with a segment header (`header` holds the file's first
/// bytes, at most [`SEGMENT_HEADER_LEN`]), if anything.
fn header_problem(header: &[u8]) -> Option<HeaderProblem> {
    if header.is_empty() {
        Some(HeaderProblem::Empty)
    } else if header.len() < SEGMENT_HEADER_LEN as usize {
        Some(HeaderProblem::TooShort {
            len: header.len() as u64,
        })
    } else if header[..8] != SEGMENT_MAGIC {
        Some(HeaderProblem::BadMagic)
    } else {
        match le_u32(&header[8..12]) {
            SEGMENT_VERSION => None,
            v => Some(HeaderProblem::UnsupportedVersion(v)),
        }
    }
}

/// Reads a whole segment for start-up: where every valid entry lies and
/// what it holds, without the messages, and what was wrong with the rest.
pub fn scan(path: &Path) -> Result<(Vec<EntryMeta>, ScanReport), SegmentError> {
    scan_with(SegmentReader::open(path)?)
}

/// Like [`scan`], for a segment whose header is damaged (bad magic or
/// version): the entries after it are read all the same, and only those
/// that check out (marker, length, CRC, body) count. The header's 16 bytes are not
/// counted in the report. A file too short to hold an entry has none.
pub fn scan_salvage(path: &Path) -> Result<(Vec<EntryMeta>, ScanReport), SegmentError> {
    let len = std::fs::metadata(path)
        .map_err(|e| SegmentError::io(path, e))?
        .len();
    if len <= SEGMENT_HEADER_LEN {
        return Ok((Vec::new(), ScanReport::default()));
    }
    scan_with(SegmentReader::open_ignoring_header(path)?)
}

fn scan_with(mut reader: SegmentReader) -> Result<(Vec<EntryMeta>, ScanReport), SegmentError> {
    let mut metas = Vec::new();
    while let Some(meta) = reader.next_meta()? {
        metas.push(meta);
    }
    Ok((metas, reader.report.clone()))
}

/// Writes a sound header over a damaged one (the entries after it were
/// salvaged by [`scan_salvage`]), so the file reads as a segment again.
pub fn rewrite_header(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.write_all_at(&header_bytes(), 0)?;
    file.sync_data()
}

fn header_bytes() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn entry(i: u64) -> Entry {
        let sensors = ["bike", "weather-station", "ü-sensor"];
        let len = (i as usize * 37) % 500;
        Entry {
            id: i,
            sensor: Arc::from(sensors[i as usize % 3]),
            first_seq: i * 10,
            last_seq: i * 10 + i % 7,
            records: (i % 7 + 1) as u32,
            message: (0..len).map(|b| (b as u64 * 31 + i) as u8).collect(),
        }
    }

    /// Writes `entries` to a new segment; returns its path and each entry's
    /// offset.
    fn write_segment(dir: &Path, entries: &[Entry]) -> (PathBuf, Vec<u64>) {
        let path = dir.join("seg");
        let mut w = SegmentWriter::create(&path).unwrap();
        let mut offsets = Vec::new();
        for e in entries {
            offsets.push(w.len());
            let len = w.append(e).unwrap();
            assert_eq!(len, offsets.last().unwrap() + e.encoded_len());
        }
        (path, offsets)
    }

    fn read_all(path: &Path) -> (Vec<(u64, Entry)>, ScanReport) {
        let mut r = SegmentReader::open(path).unwrap();
        let mut out = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            out.push(e);
        }
        (out, r.report().clone())
    }

    /// The entry framing around an arbitrary body, with a correct CRC.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = ENTRY_MARKER.to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    fn encoded(e: &Entry) -> Vec<u8> {
        let mut out = Vec::new();
        encode_entry(e, &mut out).unwrap();
        out
    }

    fn modify(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).unwrap();
        f(&mut bytes);
        std::fs::write(path, bytes).unwrap();
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    /// Every byte after the header is a valid entry, skipped or torn.
    fn assert_accounted(path: &Path, entries: &[(u64, Entry)], report: &ScanReport) {
        let valid: u64 = entries.iter().map(|(_, e)| e.encoded_len()).sum();
        assert_eq!(
            SEGMENT_HEADER_LEN + valid + report.skipped_bytes + report.torn_tail_bytes,
            file_len(path),
            "{report:?}"
        );
    }

    #[test]
    fn many_entries_round_trip_with_offsets_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries: Vec<Entry> = (0..2000).map(entry).collect();
        entries[1000].message = vec![0xA5; 1 << 20]; // larger than the read chunk
        entries[1001].message = Vec::new();
        entries[1002].sensor = Arc::from("");
        let (path, offsets) = write_segment(dir.path(), &entries);

        let (read, report) = read_all(&path);
        assert_eq!(read.len(), entries.len());
        for ((off, got), (want_off, want)) in read.iter().zip(offsets.iter().zip(&entries)) {
            assert_eq!((off, got), (want_off, want));
        }
        assert_eq!(
            report,
            ScanReport {
                entries: 2000,
                valid_len: file_len(&path),
                ..ScanReport::default()
            }
        );

        let (metas, scan_report) = scan(&path).unwrap();
        assert_eq!(scan_report, report);
        for (m, (off, e)) in metas.iter().zip(&read) {
            let want = EntryMeta {
                offset: *off,
                id: e.id,
                sensor: e.sensor.clone(),
                first_seq: e.first_seq,
                last_seq: e.last_seq,
                records: e.records,
                len: e.encoded_len(),
            };
            assert_eq!(m, &want);
        }
        // Consecutive entries of one sensor share the name.
        assert!(Arc::ptr_eq(&metas[0].sensor, &metas[0].sensor.clone()));
    }

    #[test]
    fn header_is_magic_version_and_zero() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), &[]);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"SGSPOOL\0\x01\0\0\0\0\0\0\0"
        );
        let (read, report) = read_all(&path);
        assert!(read.is_empty());
        assert_eq!(report.valid_len, SEGMENT_HEADER_LEN);
    }

    #[test]
    fn entry_encoding_matches_the_documented_layout() {
        let e = Entry {
            id: 1,
            sensor: Arc::from("ab"),
            first_seq: 2,
            last_seq: 3,
            records: 4,
            message: b"xyz".to_vec(),
        };
        let bytes = encoded(&e);
        let mut body = Vec::new();
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&2u64.to_le_bytes());
        body.extend_from_slice(&3u64.to_le_bytes());
        body.extend_from_slice(&4u32.to_le_bytes());
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(b"abxyz");
        assert_eq!(bytes, frame(&body));
        assert_eq!(bytes.len() as u64, e.encoded_len());
        // CRC-32C check value (RFC 3720 B.4): 32 zero bytes.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn created_segment_is_private_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), &[entry(1)]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = SegmentWriter::create(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(read_all(&path).0.len(), 1);
    }

    #[test]
    fn torn_tail_is_reported_and_appending_resumes_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (0..10).map(entry).collect();
        let (path, offsets) = write_segment(dir.path(), &entries);
        let cut = offsets[9] + entries[9].encoded_len() / 2;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();

        let (metas, report) = scan(&path).unwrap();
        assert_eq!(metas.len(), 9);
        assert_eq!(report.torn_tail_bytes, cut - offsets[9]);
        assert_eq!(report.valid_len, offsets[9]);
        assert_eq!((report.corrupt_entries, report.skipped_bytes), (0, 0));

        let mut w = SegmentWriter::open_append(&path, report.valid_len).unwrap();
        assert_eq!(w.len(), offsets[9]);
        assert_eq!(file_len(&path), offsets[9]);
        w.append(&entry(9)).unwrap();
        w.append(&entry(10)).unwrap();
        w.sync().unwrap();

        let (read, report) = read_all(&path);
        let want: Vec<Entry> = (0..11).map(entry).collect();
        assert_eq!(read.into_iter().map(|(_, e)| e).collect::<Vec<_>>(), want);
        assert_eq!(
            report,
            ScanReport {
                entries: 11,
                valid_len: file_len(&path),
                ..ScanReport::default()
            }
        );
    }

    #[test]
    fn open_append_refuses_offsets_outside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), &[entry(1)]);
        let len = file_len(&path);
        for bad in [0, SEGMENT_HEADER_LEN - 1, len + 1] {
            let err = SegmentWriter::open_append(&path, bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        assert_eq!(file_len(&path), len);
    }

    #[test]
    fn flipped_byte_costs_one_entry_and_reading_resynchronises() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (0..21).map(entry).collect();
        let (path, offsets) = write_segment(dir.path(), &entries);
        let mid = (offsets[10] + entries[10].encoded_len() / 2) as usize;
        modify(&path, |b| b[mid] ^= 0x40);

        let (read, report) = read_all(&path);
        let mut want: Vec<(u64, Entry)> = offsets.iter().copied().zip(entries.clone()).collect();
        want.remove(10);
        assert_eq!(read, want);
        assert_eq!(report.corrupt_entries, 1);
        assert_eq!(report.skipped_bytes, entries[10].encoded_len());
        assert_eq!(report.torn_tail_bytes, 0);
        assert_eq!(report.valid_len, file_len(&path));
        assert_accounted(&path, &read, &report);
    }

    #[test]
    fn damaged_framing_and_zeroed_ranges_resynchronise_too() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (0..30).map(entry).collect();
        let (path, offsets) = write_segment(dir.path(), &entries);
        modify(&path, |b| {
            // Entry 3: marker destroyed. Entries 10..=12: zeroed across.
            b[offsets[3] as usize] = b'X';
            let from = offsets[10] as usize + 5;
            let to = offsets[12] as usize + 20;
            b[from..to].fill(0);
        });
        let (read, report) = read_all(&path);
        let ids: Vec<u64> = read.iter().map(|(_, e)| e.id).collect();
        let want: Vec<u64> = (0..30).filter(|i| ![3, 10, 11, 12].contains(i)).collect();
        assert_eq!(ids, want);
        assert_eq!(report.corrupt_entries, 2);
        assert_accounted(&path, &read, &report);
    }

    #[test]
    fn garbage_after_the_last_entry_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (0..5).map(entry).collect();
        let (path, _) = write_segment(dir.path(), &entries);
        let valid = file_len(&path);
        // Garbage with things that look like the start of an entry.
        let mut garbage = b"noise SGE1\xff\xff\xff\xff".to_vec();
        garbage.extend_from_slice(&encoded(&entry(99))[..40]);
        garbage.extend_from_slice(&[0; 4096]);
        modify(&path, |b| b.extend_from_slice(&garbage));

        let (read, report) = read_all(&path);
        assert_eq!(read.len(), 5);
        assert_eq!(report.torn_tail_bytes, garbage.len() as u64);
        assert_eq!(report.valid_len, valid);
        assert_eq!((report.corrupt_entries, report.skipped_bytes), (0, 0));
    }

    #[test]
    fn garbage_between_entries_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = write_segment(dir.path(), &[entry(0), entry(1), entry(2)]);
        modify(&path, |b| {
            let at = offsets[1] as usize;
            b.splice(at..at, b"SGE1SGE1 garbage SG".iter().copied());
        });
        let (read, report) = read_all(&path);
        assert_eq!(read.len(), 3);
        assert_eq!(read[1].0, offsets[1] + 19);
        assert_eq!((report.corrupt_entries, report.skipped_bytes), (1, 19));
        assert_eq!(report.torn_tail_bytes, 0);
    }

    #[test]
    fn entry_with_good_crc_but_malformed_body_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), &[entry(0)]);
        let good = encoded(&entry(1));
        let body = &good[ENTRY_HEADER_LEN as usize..];
        let mut seq_backwards = body.to_vec();
        seq_backwards[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut bad_utf8 = body.to_vec();
        bad_utf8[BODY_FIXED_LEN] = 0xFF;
        let mut name_too_long = body.to_vec();
        name_too_long[28..30].copy_from_slice(&u16::MAX.to_le_bytes());
        let too_short = body[..BODY_FIXED_LEN - 1].to_vec();
        let bad = [seq_backwards, bad_utf8, name_too_long, too_short];
        let mut skipped = 0;
        modify(&path, |b| {
            for body in &bad {
                let framed = frame(body);
                skipped += framed.len() as u64;
                b.extend_from_slice(&framed);
            }
            b.extend_from_slice(&good);
        });
        let (read, report) = read_all(&path);
        assert_eq!(
            read.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
            [entry(0), entry(1)]
        );
        assert_eq!((report.corrupt_entries, report.skipped_bytes), (1, skipped));
    }

    #[test]
    fn empty_file_and_bad_headers_are_not_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let mut v2 = b"SGSPOOL\0\x02\0\0\0\0\0\0\0".to_vec();
        v2.extend_from_slice(&encoded(&entry(1)));
        let cases: [(&[u8], HeaderProblem); 4] = [
            (b"", HeaderProblem::Empty),
            (b"SGSPOOL\0\x01", HeaderProblem::TooShort { len: 9 }),
            (b"SGSPOOL\x01\x01\0\0\0\0\0\0\0", HeaderProblem::BadMagic),
            (&v2, HeaderProblem::UnsupportedVersion(2)),
        ];
        for (bytes, want) in cases {
            std::fs::write(&path, bytes).unwrap();
            for result in [
                SegmentReader::open(&path).map(|_| ()),
                scan(&path).map(|_| ()),
            ] {
                match result {
                    Err(SegmentError::NotASegment { path: p, reason }) => {
                        assert_eq!(p, path);
                        assert_eq!(reason, want);
                    }
                    other => panic!("{want:?}: {other:?}"),
                }
            }
        }
        let err = SegmentReader::open(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, SegmentError::Io { .. }));
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn huge_length_field_is_corruption_and_never_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (0..5).map(entry).collect();
        let (path, offsets) = write_segment(dir.path(), &entries);
        modify(&path, |b| {
            let at = offsets[2] as usize + 4;
            b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            // And one just above the limit.
            let at = offsets[3] as usize + 4;
            b[at..at + 4].copy_from_slice(&(MAX_ENTRY_BODY as u32 + 1).to_le_bytes());
        });
        let mut r = SegmentReader::open(&path).unwrap();
        let mut ids = Vec::new();
        while let Some((_, e)) = r.next_entry().unwrap() {
            ids.push(e.id);
        }
        assert_eq!(ids, [0, 1, 4]);
        assert_eq!(r.report().corrupt_entries, 1);
        assert!(r.buf.len() <= 64 << 10, "buffer grew to {}", r.buf.len());

        // A length within the limit that runs past the end of the file:
        // the buffer grows with what is there, not with what is claimed.
        modify(&path, |b| {
            let mut fake = ENTRY_MARKER.to_vec();
            fake.extend_from_slice(&(MAX_ENTRY_BODY as u32).to_le_bytes());
            fake.extend_from_slice(&[0; 100]);
            b.extend_from_slice(&fake);
        });
        let mut r = SegmentReader::open(&path).unwrap();
        while r.next_entry().unwrap().is_some() {}
        assert_eq!(r.report().torn_tail_bytes, 4 + 4 + 100);
        assert!(r.buf.len() <= 64 << 10, "buffer grew to {}", r.buf.len());
    }

    #[test]
    fn read_buffer_grows_for_a_large_entry_and_shrinks_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries: Vec<Entry> = (0..3000).map(entry).collect();
        entries[10].message = vec![1; 3 << 20];
        let (path, _) = write_segment(dir.path(), &entries);
        let mut r = SegmentReader::open(&path).unwrap();
        let mut largest = 0;
        while r.next_entry().unwrap().is_some() {
            largest = largest.max(r.buf.len());
        }
        assert_eq!(r.report().entries, 3000);
        assert!(largest > 3 << 20);
        assert!(r.buf.len() <= READ_CHUNK, "{}", r.buf.len());
    }

    #[test]
    fn open_at_resumes_at_an_entry_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (0..10).map(entry).collect();
        let (path, offsets) = write_segment(dir.path(), &entries);
        let mut r = SegmentReader::open_at(&path, offsets[7]).unwrap();
        let mut got = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            got.push(e);
        }
        let want: Vec<(u64, Entry)> = offsets[7..]
            .iter()
            .copied()
            .zip(entries[7..].to_vec())
            .collect();
        assert_eq!(got, want);
        assert_eq!(r.report().entries, 3);
        // Inside the header: refused.
        assert!(matches!(
            SegmentReader::open_at(&path, 3),
            Err(SegmentError::Io { .. })
        ));
        // At the end: nothing, nothing wrong.
        let mut r = SegmentReader::open_at(&path, file_len(&path)).unwrap();
        assert!(r.next_entry().unwrap().is_none());
        assert_eq!(r.report().valid_len, file_len(&path));
    }

    #[test]
    fn reader_follows_a_segment_that_is_still_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), &[entry(0), entry(1)]);
        let mut r = SegmentReader::open(&path).unwrap();
        assert_eq!(r.next_entry().unwrap().unwrap().1, entry(0));
        assert_eq!(r.next_entry().unwrap().unwrap().1, entry(1));
        assert!(r.next_entry().unwrap().is_none());

        // Half of an entry is on disk: not yet an entry.
        let third = encoded(&entry(2));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&third[..20]).unwrap();
        assert!(r.next_entry().unwrap().is_none());
        assert_eq!(r.report().torn_tail_bytes, 20);
        // The rest arrives.
        f.write_all(&third[20..]).unwrap();
        assert_eq!(r.next_entry().unwrap().unwrap().1, entry(2));
        assert!(r.next_entry().unwrap().is_none());
        assert_eq!(r.report().torn_tail_bytes, 0);
        assert_eq!(r.report().entries, 3);
        assert_eq!(r.report().valid_len, file_len(&path));
    }

    #[test]
    fn zeroed_tail_after_a_power_cut_is_torn() {
        // What a filesystem may leave: the length grew, the data never came.
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), &[entry(0)]);
        let valid = file_len(&path);
        modify(&path, |b| b.resize(b.len() + 8192, 0));
        let (_, report) = scan(&path).unwrap();
        assert_eq!(report.entries, 1);
        assert_eq!(report.torn_tail_bytes, 8192);
        assert_eq!(report.valid_len, valid);
    }

    #[test]
    fn append_refuses_entries_it_could_not_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_segment(dir.path(), &[]);
        let mut w = SegmentWriter::open_append(&path, SEGMENT_HEADER_LEN).unwrap();
        let mut big = entry(1);
        big.message = vec![0; MAX_ENTRY_BODY];
        let mut long_name = entry(2);
        long_name.sensor = Arc::from("n".repeat(70_000));
        let mut backwards = entry(3);
        backwards.first_seq = backwards.last_seq + 1;
        for e in [big, long_name, backwards] {
            assert_eq!(
                w.append(&e).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
        assert_eq!(w.len(), SEGMENT_HEADER_LEN);
        assert!(w.is_empty());
        // The largest entry allowed goes through.
        let mut max = entry(4);
        max.message = vec![7; MAX_ENTRY_BODY - BODY_FIXED_LEN - max.sensor.len()];
        w.append(&max).unwrap();
        let (read, _) = read_all(&path);
        assert_eq!(read, [(SEGMENT_HEADER_LEN, max)]);
    }

    /// An in-memory file that runs out of space after `space` more bytes,
    /// and whose truncation can be made to fail.
    struct FullDisk {
        data: Vec<u8>,
        space: usize,
        set_len_fails: bool,
    }

    impl AppendTarget for FullDisk {
        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            let offset = offset as usize;
            let n = buf.len().min(self.space);
            if self.data.len() < offset + n {
                self.data.resize(offset + n, 0);
            }
            self.data[offset..offset + n].copy_from_slice(&buf[..n]);
            self.space -= n;
            if n < buf.len() {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            Ok(())
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            if self.set_len_fails {
                return Err(io::Error::other("truncate failed"));
            }
            self.data.resize(len as usize, 0);
            Ok(())
        }
    }

    #[test]
    fn failed_append_leaves_no_partial_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = FullDisk {
            data: b"SGSPOOL\0\x01\0\0\0\0\0\0\0".to_vec(),
            space: 1000,
            set_len_fails: false,
        };
        let (mut len, mut dirty) = (SEGMENT_HEADER_LEN, false);
        let first = encoded(&entry(1));
        append_encoded(&mut disk, &mut len, &mut dirty, &first).unwrap();
        let before = disk.data.clone();
        // The disk fills up in the middle of the next entry.
        disk.space = 50;
        let big = encoded(&entry(2));
        let err = append_encoded(&mut disk, &mut len, &mut dirty, &big).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(disk.data, before);
        assert_eq!(len, before.len() as u64);
        assert!(!dirty);

        // Full again, and cutting back fails too: the next append cuts first.
        disk.space = 10;
        disk.set_len_fails = true;
        append_encoded(&mut disk, &mut len, &mut dirty, &big).unwrap_err();
        assert!(dirty);
        assert_eq!(disk.data.len(), before.len() + 10);
        // Still failing: the append is refused before writing anything.
        disk.space = usize::MAX;
        append_encoded(&mut disk, &mut len, &mut dirty, &first).unwrap_err();
        assert_eq!(disk.data.len(), before.len() + 10);
        // Space and truncation back: the tail is cut, the entry goes after.
        disk.set_len_fails = false;
        let small = encoded(&entry(3));
        let new_len = append_encoded(&mut disk, &mut len, &mut dirty, &small).unwrap();
        assert_eq!(new_len as usize, before.len() + small.len());
        assert_eq!(disk.data.len(), new_len as usize);

        let path = dir.path().join("seg");
        std::fs::write(&path, &disk.data).unwrap();
        let (read, report) = read_all(&path);
        assert_eq!(
            read.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
            [entry(1), entry(3)]
        );
        assert_eq!(report.valid_len, new_len);
        assert_eq!(report.torn_tail_bytes + report.skipped_bytes, 0);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let err = SegmentError::NotASegment {
            path: PathBuf::from("/var/lib/sensorgate/spool/00000001.seg"),
            reason: HeaderProblem::UnsupportedVersion(9),
        };
        assert_eq!(
            err.to_string(),
            "/var/lib/sensorgate/spool/00000001.seg is not a readable spool segment: \
             its format version is 9, and this build reads version 1 only"
        );
    }

    mod corruption {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        #[derive(Debug, Clone)]
        enum Damage {
            Flip(Index, u8),
            Truncate(Index),
            Insert(Index, Vec<u8>),
            Zero(Index, usize),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            // Inserted garbage often looks like the start of an entry.
            let garbage = prop_oneof![
                prop::collection::vec(any::<u8>(), 1..64),
                (any::<u32>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(
                    |(len, rest)| {
                        let mut g = ENTRY_MARKER.to_vec();
                        g.extend_from_slice(&(len % 600).to_le_bytes());
                        g.extend_from_slice(&rest);
                        g
                    }
                ),
            ];
            prop_oneof![
                (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Damage::Flip(i, m)),
                any::<Index>().prop_map(Damage::Truncate),
                (any::<Index>(), garbage).prop_map(|(i, g)| Damage::Insert(i, g)),
                (any::<Index>(), 1..200usize).prop_map(|(i, n)| Damage::Zero(i, n)),
            ]
        }

        fn entries() -> impl Strategy<Value = Vec<Entry>> {
            let one = (
                any::<u64>(),
                0..3usize,
                any::<u32>(),
                0..50u64,
                any::<u32>(),
                prop::collection::vec(any::<u8>(), 0..300),
            )
                .prop_map(|(id, s, first, span, records, message)| Entry {
                    id,
                    sensor: Arc::from(["bike", "gps", "weather"][s]),
                    first_seq: u64::from(first),
                    last_seq: u64::from(first) + span,
                    records,
                    message,
                });
            prop::collection::vec(one, 0..25)
        }

        /// Where an original entry now lies, and whether any damage
        /// touched it.
        struct Placed {
            entry: Entry,
            offset: u64,
            intact: bool,
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn reader_survives_any_damage_and_yields_only_original_entries(
                entries in entries(),
                damages in prop::collection::vec(damage(), 1..5),
            ) {
                let dir = tempfile::tempdir().unwrap();
                let (path, offsets) = write_segment(dir.path(), &entries);
                let mut bytes = std::fs::read(&path).unwrap();
                let mut placed: Vec<Placed> = entries.iter().zip(&offsets)
                    .map(|(e, &offset)| Placed { entry: e.clone(), offset, intact: true })
                    .collect();
                let mut header_touched = false;
                for d in &damages {
                    // Bytes [from, to) are changed; an insertion at `from`
                    // shifts what follows by `shift`.
                    let len = bytes.len().max(1);
                    let (from, to, shift) = match d {
                        Damage::Flip(i, mask) => {
                            let at = i.index(len);
                            if let Some(b) = bytes.get_mut(at) { *b ^= mask }
                            (at, at + 1, 0)
                        }
                        Damage::Truncate(i) => {
                            let at = i.index(len);
                            bytes.truncate(at);
                            (at, usize::MAX, 0)
                        }
                        Damage::Insert(i, g) => {
                            let at = i.index(len + 1).min(bytes.len());
                            bytes.splice(at..at, g.iter().copied());
                            (at, at, g.len())
                        }
                        Damage::Zero(i, n) => {
                            let at = i.index(len);
                            let end = (at + n).min(bytes.len());
                            if at < end { bytes[at..end].fill(0) }
                            (at, at + n, 0)
                        }
                    };
                    header_touched |= from < SEGMENT_HEADER_LEN as usize;
                    for p in &mut placed {
                        let start = p.offset as usize;
                        let end = start + p.entry.encoded_len() as usize;
                        let touched = if shift > 0 { start < from && from < end } else { start < to && from < end };
                        p.intact &= !touched;
                        if shift > 0 && start >= from { p.offset += shift as u64 }
                    }
                }
                std::fs::write(&path, &bytes).unwrap();

                let mut reader = match SegmentReader::open(&path) {
                    Ok(r) => r,
                    Err(SegmentError::NotASegment { .. }) => {
                        prop_assert!(header_touched);
                        return Ok(());
                    }
                    Err(e) => panic!("{e}"),
                };
                let mut read = Vec::new();
                while let Some(e) = reader.next_entry().unwrap() {
                    read.push(e);
                }
                let report = reader.report().clone();

                // Every entry read is an original, byte for byte, where that
                // original now lies; in file order.
                for (offset, e) in &read {
                    prop_assert!(
                        placed.iter().any(|p| p.offset == *offset && p.entry == *e),
                        "entry at {} is not an original", offset
                    );
                }
                prop_assert!(read.windows(2).all(|w| w[0].0 + w[0].1.encoded_len() <= w[1].0));
                // Every original no damage touched is read.
                for p in placed.iter().filter(|p| p.intact) {
                    prop_assert!(
                        read.iter().any(|(o, e)| *o == p.offset && *e == p.entry),
                        "intact entry at {} was not read", p.offset
                    );
                }
                prop_assert_eq!(report.entries, read.len() as u64);
                let valid: u64 = read.iter().map(|(_, e)| e.encoded_len()).sum();
                prop_assert_eq!(
                    SEGMENT_HEADER_LEN + valid + report.skipped_bytes + report.torn_tail_bytes,
                    bytes.len() as u64
                );
                prop_assert_eq!(
                    report.valid_len,
                    read.last().map_or(SEGMENT_HEADER_LEN, |(o, e)| o + e.encoded_len())
                );
                prop_assert!(report.corrupt_entries <= report.skipped_bytes);

                // The metadata scan agrees.
                let (metas, scan_report) = scan(&path).unwrap();
                prop_assert_eq!(scan_report, report);
                prop_assert_eq!(
                    metas.iter().map(|m| (m.offset, m.id, m.len)).collect::<Vec<_>>(),
                    read.iter().map(|(o, e)| (*o, e.id, e.encoded_len())).collect::<Vec<_>>()
                );
            }
        }
    }
}
