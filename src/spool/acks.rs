//! Which spooled messages the broker has acknowledged, without I/O.
//!
//! Acknowledgements mostly arrive in order; the tracker keeps the lowest id
//! not yet acknowledged plus the few acknowledged above it, so its size is
//! bounded by the in-flight window, not by the backlog.

use std::collections::BTreeSet;

/// Tracks acknowledged message ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckTracker {
    /// Every id below this is acknowledged (or given up).
    below: u64,
    /// Acknowledged ids above `below`.
    above: BTreeSet<u64>,
}

impl AckTracker {
    /// Starts with every id below `below` acknowledged.
    pub fn new(below: u64) -> Self {
        AckTracker {
            below,
            above: BTreeSet::new(),
        }
    }

    /// Records an acknowledgement; duplicates and old ids are ignored.
    /// Returns true when `id` was not acknowledged before.
    pub fn ack(&mut self, id: u64) -> bool {
        if id < self.below {
            return false;
        }
        if id > self.below {
            return self.above.insert(id);
        }
        self.below += 1;
        while self.above.remove(&self.below) {
            self.below += 1;
        }
        true
    }

    /// Forgets everything below `id` (messages dropped by policy): they
    /// will never be acknowledged.
    pub fn skip_to(&mut self, id: u64) {
        if id <= self.below {
            return;
        }
        self.below = id;
        self.above = self.above.split_off(&id);
        while self.above.remove(&self.below) {
            self.below += 1;
        }
    }

    /// The lowest id not acknowledged: after a restart, sending resumes
    /// here.
    pub fn below(&self) -> u64 {
        self.below
    }

    pub fn is_acked(&self, id: u64) -> bool {
        id < self.below || self.above.contains(&id)
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
    }
}
