//! Duplicate and gap detection for the consumer, as plain structs.
//!
//! Delivery is at-least-once, so a consumer sees some records twice (a
//! message re-sent after a lost PUBACK, a replay). Every record carries a
//! per-(gateway, sensor, epoch) sequence number; the tracker remembers which
//! numbers it has seen as a set of disjoint ranges, so a long gap-free stream
//! costs one range however many records it holds.

use std::collections::{BTreeMap, HashMap};

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
    /// filled by a late record is no longer a gap.
    pub fn gaps(&self) -> u64 {
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
}

/// Whether a record was new or a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
}

/// A stream is one gateway's sequence for one sensor within one epoch.
pub type StreamKey = (String, String, String);

/// Per-stream [`SeqSet`]s.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    streams: HashMap<StreamKey, SeqSet>,
}

impl SequenceTracker {
    pub fn new() -> SequenceTracker {
        SequenceTracker::default()
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

    /// Missing numbers summed over all streams.
    pub fn gaps(&self) -> u64 {
        self.streams
            .values()
            .fold(0u64, |acc, s| acc.saturating_add(s.gaps()))
    }

    /// How many streams were seen.
    pub fn streams(&self) -> usize {
        self.streams.len()
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
        assert_eq!((s.len(), s.gaps(), s.ranges()), (1000, 0, 1));
        assert!(!s.insert(500));
        assert_eq!(s.len(), 1000);
    }

    #[test]
    fn a_late_record_fills_its_hole() {
        let mut s = SeqSet::new();
        for seq in [1, 2, 5, 6] {
            s.insert(seq);
        }
        assert_eq!(s.gaps(), 2);
        assert!(s.insert(4));
        assert_eq!(s.gaps(), 1);
        assert!(s.insert(3));
        assert_eq!((s.gaps(), s.ranges()), (0, 1));
        assert_eq!(s.bounds(), Some((1, 6)));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut s = SeqSet::new();
        assert!(s.insert(u64::MAX));
        assert!(s.insert(0));
        assert!(!s.insert(u64::MAX));
        assert_eq!(s.gaps(), u64::MAX - 1);
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
        assert_eq!(t.gaps(), 2);
        assert_eq!(t.streams(), 3);
        assert_eq!(t.stream("gw", "bike", "e1").unwrap().len(), 2);
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
            let expected_gaps = match (model.first(), model.last()) {
                (Some(&lo), Some(&hi)) => hi - lo + 1 - model.len() as u64,
                _ => 0,
            };
            prop_assert_eq!(s.gaps(), expected_gaps);
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
