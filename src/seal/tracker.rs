//! Duplicate and gap detection for the consumer, as plain structs.
//!
//! Delivery is at-least-once, so a consumer sees some records twice (a
//! message re-sent after a lost PUBACK, a replay). Every record carries a
//! per-(gateway, sensor, epoch) sequence number; the tracker remembers which
//! numbers it has seen as a set of disjoint ranges, so a long gap-free stream
//! costs one range however many records it holds.
//!
//! It also tells a harmless duplicate from a conflict: for each message it
//! keeps a digest of the message's records under its sequence range, so the
//! same range arriving again with the same records is a duplicate and with
//! different records is a conflict (a replay of forged or altered content).
//! Digests are kept for the last [`DIGEST_WINDOW`] distinct message ranges
//! only, so memory stays bounded; a range older than that is still known as
//! seen (its records are dropped as duplicates) but its content is no longer
//! compared.
//!
//! [`SequenceTracker::save`] and [`SequenceTracker::load`] persist all of it
//! (`open --state FILE`) so duplicates and conflicts are caught across runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The sequence numbers seen on one stream, as disjoint inclusive ranges
/// that never touch (adjacent ranges are merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    /// start -> end (inclusive).
    ranges: BTreeMap<u64, u64>,
    count: u64,
}

impl SeqSet {
    pub fn new() -> SeqSet {
        SeqSet::default()
    }

    /// Records `seq`; true when it was not seen before.
    pub fn insert(&mut self, seq: u64) -> bool {
        // The range starting at or before seq, if any.
        let before = self.ranges.range(..=seq).next_back().map(|(&s, &e)| (s, e));
        if before.is_some_and(|(_, end)| seq <= end) {
            return false;
        }
        let joins_before = before.filter(|&(_, end)| end.checked_add(1) == Some(seq));
        let after = seq
            .checked_add(1)
            .and_then(|next| self.ranges.get(&next).map(|&end| (next, end)));
        match (joins_before, after) {
            (Some((start, _)), Some((next, end))) => {
                self.ranges.remove(&next);
                self.ranges.insert(start, end);
            }
            (Some((start, _)), None) => {
                self.ranges.insert(start, seq);
            }
            (None, Some((next, end))) => {
                self.ranges.remove(&next);
                self.ranges.insert(seq, end);
            }
            (None, None) => {
                self.ranges.insert(seq, seq);
            }
        }
        self.count += 1;
        true
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| seq <= end)
    }

    /// How many distinct numbers were seen.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Lowest and highest number seen.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let lo = *self.ranges.first_key_value()?.0;
        let hi = *self.ranges.last_key_value()?.1;
        Some((lo, hi))
    }

    /// Numbers missing between the lowest and the highest seen. A hole later
    /// filled by a late record is no longer missing.
    pub fn missing_records(&self) -> u64 {
        match self.bounds() {
            None => 0,
            Some((lo, hi)) => {
                let span = u128::from(hi) - u128::from(lo) + 1;
                u64::try_from(span - u128::from(self.count)).unwrap_or(u64::MAX)
            }
        }
    }

    /// How many disjoint ranges are held (memory use is proportional).
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// How many runs of missing numbers lie between the lowest and the
    /// highest seen (the ranges [`SeqSet::missing`] lists): `1, 2, 5, 9`
    /// has 4 records missing in 2 gaps.
    pub fn gaps(&self) -> u64 {
        self.ranges.len().saturating_sub(1) as u64
    }

    /// The ranges of numbers missing between the lowest and the highest
    /// seen, as inclusive `(first, last)` pairs in order.
    pub fn missing(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges
            .iter()
            .zip(self.ranges.iter().skip(1))
            .map(|((_, &end), (&next, _))| (end + 1, next - 1))
    }

    /// The held ranges, inclusive, in order.
    pub fn iter_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// Adds every number of `first..=last` (for loading saved state).
    pub(crate) fn insert_range(&mut self, first: u64, last: u64) {
        // Saved ranges are few and disjoint; inserting the ends and merging
        // through `insert` would be per number, so merge directly.
        let mut start = first;
        let mut end = last;
        let overlapping: Vec<(u64, u64)> = self
            .ranges
            .range(..=last.saturating_add(1))
            .rev()
            .take_while(|&(_, &e)| e.saturating_add(1) >= first)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.ranges.remove(&s);
            self.count = self.count.saturating_sub((e - s).saturating_add(1));
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        self.count = self.count.saturating_add((end - start).saturating_add(1));
    }
}

/// Whether a record was new or a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
}

/// A stream is one gateway's sequence for one sensor within one epoch.
pub type StreamKey = (String, String, String);

/// How many distinct message ranges keep their content digest.
pub const DIGEST_WINDOW: usize = 10_000;

/// A digest of a message's records (SHA-256).
pub type Digest = [u8; 32];

/// What the tracker knows about a message's sequence range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeVerdict {
    /// Not seen with a digest in the window: its records are checked one by
    /// one (new ones kept, seen ones dropped as duplicates).
    Unknown,
    /// Seen before with the same content: a duplicate.
    Same,
    /// Seen before with different content: a conflict.
    Different,
}

/// Per-stream [`SeqSet`]s, and the content digests of recent message ranges.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    streams: HashMap<StreamKey, SeqSet>,
    digests: HashMap<(StreamKey, u64, u64), Digest>,
    /// The ranges in `digests`, oldest first (evicted from the front).
    recent: VecDeque<(StreamKey, u64, u64)>,
    window: usize,
    /// Per stream, the numbers the gateway declared lost or unused in a
    /// signed gap notice (`docs/FORMAT.md`, "Gap notices").
    declared: HashMap<StreamKey, SeqSet>,
}

impl SequenceTracker {
    pub fn new() -> SequenceTracker {
        SequenceTracker::with_window(DIGEST_WINDOW)
    }

    /// A tracker keeping digests for the last `window` message ranges.
    pub fn with_window(window: usize) -> SequenceTracker {
        SequenceTracker {
            window,
            ..SequenceTracker::default()
        }
    }

    /// The set for a stream, created empty on first use.
    pub fn stream_mut(&mut self, gateway: &str, sensor: &str, epoch: &str) -> &mut SeqSet {
        self.streams
            .entry((gateway.to_string(), sensor.to_string(), epoch.to_string()))
            .or_default()
    }

    /// Records one sequence number of a stream.
    pub fn observe(&mut self, gateway: &str, sensor: &str, epoch: &str, seq: u64) -> Seen {
        if self.stream_mut(gateway, sensor, epoch).insert(seq) {
            Seen::New
        } else {
            Seen::Duplicate
        }
    }

    /// The set for a stream, if seen.
    pub fn stream(&self, gateway: &str, sensor: &str, epoch: &str) -> Option<&SeqSet> {
        self.streams
            .get(&(gateway.to_string(), sensor.to_string(), epoch.to_string()))
    }

    /// The highest sequence number seen on a stream.
    pub fn highest(&self, key: &StreamKey) -> Option<u64> {
        self.streams.get(key)?.bounds().map(|(_, hi)| hi)
    }

    /// Compares a message's content with what was seen under its exact range.
    pub fn check_range(
        &self,
        key: &StreamKey,
        first: u64,
        last: u64,
        digest: &Digest,
    ) -> RangeVerdict {
        match self.digests.get(&(key.clone(), first, last)) {
            None => RangeVerdict::Unknown,
            Some(d) if d == digest => RangeVerdict::Same,
            Some(_) => RangeVerdict::Different,
        }
    }

    /// Remembers the digest of a message range, evicting the oldest beyond
    /// the window. A range already held keeps its first digest.
    pub fn remember_range(&mut self, key: &StreamKey, first: u64, last: u64, digest: Digest) {
        if self.window == 0 {
            return;
        }
        let id = (key.clone(), first, last);
        if self.digests.contains_key(&id) {
            return;
        }
        self.digests.insert(id.clone(), digest);
        self.recent.push_back(id);
        while self.recent.len() > self.window {
            if let Some(old) = self.recent.pop_front() {
                self.digests.remove(&old);
            }
        }
    }

    /// How many message ranges hold a digest now.
    pub fn digests(&self) -> usize {
        self.digests.len()
    }

    /// Missing numbers summed over all streams.
    pub fn missing_records(&self) -> u64 {
        self.streams
            .values()
            .fold(0u64, |acc, s| acc.saturating_add(s.missing_records()))
    }

    /// Runs of missing numbers summed over all streams.
    pub fn gaps(&self) -> u64 {
        self.streams
            .values()
            .fold(0u64, |acc, s| acc.saturating_add(s.gaps()))
    }

    /// Records a range the gateway declared (a gap notice).
    pub fn declare(&mut self, key: &StreamKey, first: u64, last: u64) {
        self.streams.entry(key.clone()).or_default();
        self.declared
            .entry(key.clone())
            .or_default()
            .insert_range(first, last);
    }

    /// How many of the numbers in `first..=last` of a stream the gateway
    /// declared.
    pub fn declared_within(&self, key: &StreamKey, first: u64, last: u64) -> u64 {
        let Some(set) = self.declared.get(key) else {
            return 0;
        };
        set.iter_ranges()
            .map(|(a, b)| {
                let (lo, hi) = (a.max(first), b.min(last));
                if lo <= hi { hi - lo + 1 } else { 0 }
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Missing numbers (over all streams) that fall in declared ranges:
    /// the gaps the gateway explained.
    pub fn declared_missing(&self) -> u64 {
        self.streams
            .iter()
            .flat_map(|(key, set)| {
                set.missing()
                    .map(move |(a, b)| self.declared_within(key, a, b))
            })
            .fold(0u64, u64::saturating_add)
    }

    /// How many streams were seen.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Every stream with its set, in (gateway, sensor, epoch) order.
    pub fn iter_streams(&self) -> Vec<(&StreamKey, &SeqSet)> {
        let mut all: Vec<_> = self.streams.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// The persisted form: streams in order with their ranges, and the
    /// digest window oldest first (each naming its stream by index).
    fn to_state(&self) -> StateFile {
        let streams = self.iter_streams();
        let index: HashMap<&StreamKey, usize> = streams
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (*k, i))
            .collect();
        let recent = self
            .recent
            .iter()
            .filter_map(|id| {
                let digest = self.digests.get(id)?;
                // A range is remembered only after its records were inserted,
                // so its stream exists.
                let &i = index.get(&id.0)?;
                Some((i, id.1, id.2, super::b64::encode(digest)))
            })
            .collect();
        StateFile {
            version: STATE_VERSION,
            streams: streams
                .iter()
                .map(|((gateway, sensor, epoch), set)| StreamState {
                    gateway: gateway.clone(),
                    sensor: sensor.clone(),
                    epoch: epoch.clone(),
                    seen: set.iter_ranges().collect(),
                    declared: self
                        .declared
                        .get(&(gateway.clone(), sensor.clone(), epoch.clone()))
                        .map(|d| d.iter_ranges().collect())
                        .unwrap_or_default(),
                })
                .collect(),
            recent,
        }
    }

    fn from_state(state: StateFile) -> Result<SequenceTracker, String> {
        if state.version != STATE_VERSION {
            return Err(format!(
                "version {} (this build reads version {STATE_VERSION})",
                state.version
            ));
        }
        let mut tracker = SequenceTracker::new();
        let mut keys = Vec::with_capacity(state.streams.len());
        for s in state.streams {
            let key = (s.gateway, s.sensor, s.epoch);
            let set = tracker.streams.entry(key.clone()).or_default();
            for (first, last) in s.seen {
                if first > last {
                    return Err(format!("range {first}..{last} is reversed"));
                }
                set.insert_range(first, last);
            }
            for (first, last) in s.declared {
                if first > last {
                    return Err(format!("declared range {first}..{last} is reversed"));
                }
                tracker.declare(&key, first, last);
            }
            keys.push(key);
        }
        for (i, first, last, digest) in state.recent {
            let key = keys
                .get(i)
                .ok_or_else(|| format!("digest names stream {i}, which is not listed"))?;
            let digest: Digest = super::b64::decode(&digest)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| format!("digest {digest:?} is not 32 bytes of base64url"))?;
            tracker.remember_range(key, first, last, digest);
        }
        Ok(tracker)
    }

    /// Loads the state saved by [`SequenceTracker::save`]; a missing file
    /// is a first run (an empty tracker).
    pub fn load(path: &Path) -> Result<SequenceTracker, StateError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SequenceTracker::new()),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let bad = |detail: String| StateError::Bad {
            path: path.to_path_buf(),
            detail,
        };
        let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        SequenceTracker::from_state(state).map_err(bad)
    }

    /// Saves the state atomically: written to a temporary file beside
    /// `path`, flushed to disk, renamed over `path`, and the directory
    /// synced, so a crash leaves the old state or the new, never half.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let write_err = |source| StateError::Write {
            path: path.to_path_buf(),
            source,
        };
        let json =
            serde_json::to_vec(&self.to_state()).map_err(|e| write_err(io::Error::other(e)))?;
        let name = path
            .file_name()
            .ok_or_else(|| write_err(io::Error::other("the path has no file name")))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            fs::rename(&tmp, path)?;
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }
}

const STATE_VERSION: u32 = 1;

/// The `--state` file: JSON, one object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    streams: Vec<StreamState>,
    /// `[stream index, first, last, digest]`, oldest first.
    recent: Vec<(usize, u64, u64, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamState {
    gateway: String,
    sensor: String,
    epoch: String,
    /// Inclusive ranges of the sequence numbers seen.
    seen: Vec<(u64, u64)>,
    /// Inclusive ranges the gateway declared in gap notices (absent in
    /// files written before gap notices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    declared: Vec<(u64, u64)>,
}

/// Why the `--state` file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "state file {path} is not a sensorgate open state file ({detail}); move it away to start afresh"
    )]
    Bad { path: PathBuf, detail: String },
    #[error("cannot save state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StateError {
    /// sysexits: 74 I/O, 65 bad data, 73 cannot create.
    pub fn exit_code(&self) -> i32 {
        match self {
            StateError::Read { .. } => 74,
            StateError::Bad { .. } => 65,
            StateError::Write { .. } => 73,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_stream_is_one_range_without_gaps() {
        let mut s = SeqSet::new();
        for seq in 1..=1000 {
            assert!(s.insert(seq));
        }
        assert_eq!(
            (s.len(), s.missing_records(), s.gaps(), s.ranges()),
            (1000, 0, 0, 1)
        );
        assert!(!s.insert(500));
        assert_eq!(s.len(), 1000);
    }

    #[test]
    fn a_late_record_fills_its_hole() {
        let mut s = SeqSet::new();
        for seq in [1, 2, 5, 6] {
            s.insert(seq);
        }
        assert_eq!((s.missing_records(), s.gaps()), (2, 1));
        assert!(s.insert(4));
        assert_eq!((s.missing_records(), s.gaps()), (1, 1));
        assert!(s.insert(3));
        assert_eq!((s.missing_records(), s.gaps(), s.ranges()), (0, 0, 1));
        assert_eq!(s.bounds(), Some((1, 6)));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut s = SeqSet::new();
        assert!(s.insert(u64::MAX));
        assert!(s.insert(0));
        assert!(!s.insert(u64::MAX));
        assert_eq!((s.missing_records(), s.gaps()), (u64::MAX - 1, 1));
        assert!(s.insert(u64::MAX - 1));
        assert_eq!(s.ranges(), 2);
    }

    #[test]
    fn streams_are_tracked_separately() {
        let mut t = SequenceTracker::new();
        assert_eq!(t.observe("gw", "bike", "e1", 1), Seen::New);
        assert_eq!(t.observe("gw", "bike", "e2", 1), Seen::New);
        assert_eq!(t.observe("gw", "rower", "e1", 1), Seen::New);
        assert_eq!(t.observe("gw", "bike", "e1", 1), Seen::Duplicate);
        t.observe("gw", "bike", "e1", 4);
        assert_eq!((t.missing_records(), t.gaps()), (2, 1));
        assert_eq!(t.streams(), 3);
        assert_eq!(t.stream("gw", "bike", "e1").unwrap().len(), 2);
    }

    fn key(sensor: &str) -> StreamKey {
        ("gw".into(), sensor.into(), "e1".into())
    }

    #[test]
    fn missing_ranges_are_listed_in_order() {
        let mut s = SeqSet::new();
        for seq in [1, 2, 5, 9, 10] {
            s.insert(seq);
        }
        assert_eq!(s.missing().collect::<Vec<_>>(), [(3, 4), (6, 8)]);
        assert_eq!((s.missing_records(), s.gaps()), (5, 2));
    }

    #[test]
    fn same_range_with_other_content_is_a_conflict_and_the_window_is_bounded() {
        let mut t = SequenceTracker::with_window(2);
        let k = key("bike");
        assert_eq!(t.check_range(&k, 1, 3, &[1; 32]), RangeVerdict::Unknown);
        t.remember_range(&k, 1, 3, [1; 32]);
        assert_eq!(t.check_range(&k, 1, 3, &[1; 32]), RangeVerdict::Same);
        assert_eq!(t.check_range(&k, 1, 3, &[2; 32]), RangeVerdict::Different);
        assert_eq!(t.check_range(&k, 1, 4, &[2; 32]), RangeVerdict::Unknown);
        assert_eq!(
            t.check_range(&key("rower"), 1, 3, &[2; 32]),
            RangeVerdict::Unknown
        );
        // Re-remembering keeps the first digest and does not use the window.
        t.remember_range(&k, 1, 3, [9; 32]);
        assert_eq!(t.check_range(&k, 1, 3, &[1; 32]), RangeVerdict::Same);
        t.remember_range(&k, 4, 6, [4; 32]);
        t.remember_range(&k, 7, 9, [7; 32]);
        assert_eq!(t.digests(), 2);
        assert_eq!(t.check_range(&k, 1, 3, &[2; 32]), RangeVerdict::Unknown);
        assert_eq!(t.check_range(&k, 7, 9, &[7; 32]), RangeVerdict::Same);
    }

    #[test]
    fn state_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open.state");
        assert_eq!(SequenceTracker::load(&path).unwrap().streams(), 0);

        let mut t = SequenceTracker::new();
        for seq in (1..=100).chain(150..=160) {
            t.observe("gw", "bike", "e1", seq);
        }
        t.observe("gw", "rower", "e2", 7);
        t.remember_range(&key("bike"), 1, 100, [1; 32]);
        t.remember_range(&("gw".into(), "rower".into(), "e2".into()), 7, 7, [7; 32]);
        t.save(&path).unwrap();
        // Compact: ranges, not numbers.
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("[[1,100],[150,160]]"), "{text}");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );

        let back = SequenceTracker::load(&path).unwrap();
        let bike = back.stream("gw", "bike", "e1").unwrap();
        assert_eq!(
            (
                bike.len(),
                bike.missing_records(),
                bike.gaps(),
                bike.ranges()
            ),
            (111, 49, 1, 2)
        );
        assert!(bike.contains(155) && !bike.contains(120));
        assert_eq!(back.missing_records(), t.missing_records());
        assert_eq!(back.gaps(), t.gaps());
        assert_eq!(
            back.check_range(&key("bike"), 1, 100, &[1; 32]),
            RangeVerdict::Same
        );
        assert_eq!(
            back.check_range(&key("bike"), 1, 100, &[2; 32]),
            RangeVerdict::Different
        );
        assert_eq!(back.digests(), 2);

        fs::write(&path, "{\"version\":1}").unwrap();
        let e = SequenceTracker::load(&path).unwrap_err();
        assert_eq!(e.exit_code(), 65);
        assert!(e.to_string().contains("open.state") && e.to_string().contains("move it away"));
    }

    #[test]
    fn loading_merges_overlapping_saved_ranges() {
        let mut s = SeqSet::new();
        s.insert_range(5, 10);
        s.insert_range(1, 3);
        s.insert_range(4, 4);
        s.insert_range(8, 20);
        assert_eq!(s.iter_ranges().collect::<Vec<_>>(), [(1, 20)]);
        assert_eq!(s.len(), 20);
        s.insert_range(u64::MAX - 1, u64::MAX);
        assert_eq!(s.len(), 22);
    }

    proptest! {
        /// SeqSet behaves exactly like a plain set of numbers, and its ranges
        /// stay disjoint and non-adjacent.
        #[test]
        fn seq_set_matches_a_btreeset(seqs in proptest::collection::vec(0u64..200, 0..300)) {
            let mut s = SeqSet::new();
            let mut model = BTreeSet::new();
            for seq in seqs {
                prop_assert_eq!(s.insert(seq), model.insert(seq));
                prop_assert!(s.contains(seq));
            }
            prop_assert_eq!(s.len(), model.len() as u64);
            let expected_missing = match (model.first(), model.last()) {
                (Some(&lo), Some(&hi)) => hi - lo + 1 - model.len() as u64,
                _ => 0,
            };
            prop_assert_eq!(s.missing_records(), expected_missing);
            // A gap starts wherever a number seen is not followed by the next.
            let expected_gaps = model
                .iter()
                .zip(model.iter().skip(1))
                .filter(|&(a, b)| b - a > 1)
                .count() as u64;
            prop_assert_eq!(s.gaps(), expected_gaps);
            prop_assert_eq!(s.missing().count() as u64, expected_gaps);
            let mut prev_end: Option<u64> = None;
            for (&start, &end) in &s.ranges {
                prop_assert!(start <= end);
                if let Some(p) = prev_end {
                    prop_assert!(start > p + 1, "ranges touch or overlap");
                }
                prev_end = Some(end);
            }
            for probe in 0..200 {
                prop_assert_eq!(s.contains(probe), model.contains(&probe));
            }
        }
    }
}
