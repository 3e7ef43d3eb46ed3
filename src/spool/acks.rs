//! Which spooled messages are settled, without I/O.
//!
//! A message is *settled* when the broker acknowledged it, or when the
//! spool gave it up (dropped by `drop_oldest`, or lost to damage on disk):
//! either way it will never be sent again. Acknowledgements mostly arrive
//! in order; the tracker keeps the lowest id not yet settled plus the
//! settled ranges above it, so its size is bounded by the in-flight window
//! and the number of damaged spots, not by the backlog.

use std::collections::BTreeMap;
use std::ops::Range;

/// Tracks settled message ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckTracker {
    /// Every id below this is settled.
    below: u64,
    /// Settled ranges above `below`: start -> end (exclusive). Disjoint,
    /// never touching each other, and none starts at `below` (that range
    /// would have moved `below`).
    above: BTreeMap<u64, u64>,
}

impl AckTracker {
    /// Starts with every id below `below` settled.
    pub fn new(below: u64) -> Self {
        AckTracker {
            below,
            above: BTreeMap::new(),
        }
    }

    /// Records an acknowledgement; duplicates and old ids are ignored.
    /// Returns true when `id` was not settled before.
    pub fn ack(&mut self, id: u64) -> bool {
        self.settle(id..id.saturating_add(1)) > 0
    }

    /// Gives up the ids in `ids`: they will never be acknowledged (lost to
    /// damage, or dropped). Returns how many of them were not settled
    /// before.
    pub fn give_up(&mut self, ids: Range<u64>) -> u64 {
        self.settle(ids)
    }

    /// Gives up everything below `id` (messages dropped by policy).
    pub fn skip_to(&mut self, id: u64) {
        self.settle(self.below..id);
    }

    /// Marks `ids` settled; returns how many were not settled before.
    fn settle(&mut self, ids: Range<u64>) -> u64 {
        let mut start = ids.start.max(self.below);
        let mut end = ids.end;
        if start >= end {
            return 0;
        }
        let (first, last) = (start, end);
        let mut newly = end - start;
        // Merge with every range that overlaps or touches [start, end).
        let touching: Vec<(u64, u64)> = self
            .above
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.above.remove(&s);
            newly -= e.min(last).saturating_sub(s.max(first));
            start = start.min(s);
            end = end.max(e);
        }
        if start == self.below {
            self.below = end;
        } else {
            self.above.insert(start, end);
        }
        newly
    }

    /// The lowest id not settled: after a restart, sending resumes here.
    pub fn below(&self) -> u64 {
        self.below
    }

    pub fn is_acked(&self, id: u64) -> bool {
        id < self.below
            || self
                .above
                .range(..=id)
                .next_back()
                .is_some_and(|(_, &e)| id < e)
    }

    /// The first id at or after `id` that is not settled.
    pub fn next_unsettled(&self, id: u64) -> u64 {
        let id = id.max(self.below);
        match self.above.range(..=id).next_back() {
            Some((_, &e)) if id < e => e,
            _ => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_and_out_of_order_acks_advance_the_floor() {
        let mut t = AckTracker::new(10);
        assert!(!t.ack(3));
        assert!(t.ack(12));
        assert_eq!(t.below(), 10);
        assert!(t.ack(10));
        assert_eq!(t.below(), 11);
        assert!(t.ack(11));
        assert_eq!(t.below(), 13, "12 was already acknowledged");
        assert!(!t.ack(12));
        t.skip_to(20);
        assert_eq!(t.below(), 20);
        assert!(t.is_acked(19) && !t.is_acked(20));
    }

    #[test]
    fn given_up_ranges_are_skipped_and_the_floor_moves_past_them() {
        let mut t = AckTracker::new(0);
        assert_eq!(t.give_up(5..1000), 995);
        assert_eq!(t.below(), 0);
        assert_eq!(t.next_unsettled(0), 0);
        assert_eq!(t.next_unsettled(7), 1000, "a lost range is jumped over");
        for id in 0..4 {
            t.ack(id);
        }
        assert_eq!(t.below(), 4);
        assert!(t.ack(4));
        assert_eq!(t.below(), 1000, "the lost ids never hold the floor back");
        assert_eq!(t.give_up(990..1010), 10);
        assert_eq!(t.below(), 1010);
    }

    /// A random mix of acknowledgements and give-ups, against a set model.
    fn ops() -> impl Strategy<Value = Vec<(bool, u64, u64)>> {
        proptest::collection::vec((any::<bool>(), 0u64..200, 1u64..20), 0..200)
    }

    proptest! {
        #[test]
        fn floor_is_the_lowest_unacked_id(ids in proptest::collection::vec(0u64..64, 0..200)) {
            let mut t = AckTracker::new(0);
            let mut acked = std::collections::BTreeSet::new();
            for id in ids {
                t.ack(id);
                acked.insert(id);
                let floor = (0..).find(|i| !acked.contains(i)).unwrap();
                prop_assert_eq!(t.below(), floor);
            }
        }

        #[test]
        fn ranges_behave_like_a_set_of_ids(ops in ops()) {
            let mut t = AckTracker::new(0);
            let mut model = std::collections::BTreeSet::new();
            for (single, start, len) in ops {
                let range = if single { start..start + 1 } else { start..start + len };
                let newly = range.clone().filter(|i| !model.contains(i)).count() as u64;
                prop_assert_eq!(t.give_up(range.clone()), newly);
                model.extend(range);
                let floor = (0..).find(|i| !model.contains(i)).unwrap();
                prop_assert_eq!(t.below(), floor);
                for ((_, &e), (&s2, _)) in t.above.iter().zip(t.above.iter().skip(1)) {
                    prop_assert!(e < s2, "ranges touch or overlap");
                }
            }
            // Every id, against the model; the next unsettled id is found
            // by a scan from the top.
            let mut next = 240;
            for id in (0..240).rev() {
                if !model.contains(&id) {
                    next = id;
                }
                prop_assert_eq!(t.is_acked(id), model.contains(&id), "id {}", id);
                prop_assert_eq!(t.next_unsettled(id), next, "id {}", id);
            }
        }
    }
}
