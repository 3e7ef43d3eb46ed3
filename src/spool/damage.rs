//! What damage to the spool cost, in records: which sequence numbers of
//! which sensor were in the messages that could not be read back. Pure:
//! the disk log hands in what it could read, this says what is missing.
//!
//! A damaged entry cannot tell what it held (its bytes are what is
//! damaged), but its neighbours can: a sensor's records are numbered
//! without holes, so when the intact messages of one sensor before and
//! after a run of lost message ids are `..=41` and `50..`, records 42–49
//! were in the lost messages. The range is exact when intact messages of
//! the sensor lie on both sides of the damage; with no intact message
//! before it, the floor given by the caller (what was delivered before)
//! bounds it, and it is an upper bound. Losses after a sensor's last
//! intact message need the sequence state, which the caller has.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;

/// Records of one sensor that were in lost messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqLoss {
    pub sensor: Arc<str>,
    pub first_seq: u64,
    pub last_seq: u64,
    /// `last_seq - first_seq + 1`: every number is one record.
    pub records: u64,
    /// False when the lower side of the range is a floor rather than an
    /// intact message: then the range is an upper bound.
    pub exact: bool,
}

/// Per sensor: the highest number accounted for, whether an intact
/// message (rather than the floor) says so, and how many lost id ranges
/// had been seen then.
#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u64,
    from_message: bool,
    lost_seen: u64,
}

/// Finds lost sequence ranges while the disk log reads its segments in id
/// order: told of every intact message and every run of lost ids as they
/// come, it keeps one small record per sensor, whatever the spool holds.
#[derive(Debug, Default)]
pub struct LossFinder {
    last: BTreeMap<Arc<str>, Last>,
    /// Per sensor, the highest number accounted for before the first
    /// intact message (delivered, or already reported lost).
    floor: BTreeMap<String, u64>,
    /// Runs of lost ids seen so far.
    lost_runs: u64,
    lost_ids: Vec<Range<u64>>,
    losses: Vec<SeqLoss>,
}

impl LossFinder {
    pub fn new(floor: BTreeMap<String, u64>) -> Self {
        LossFinder {
            floor,
            ..LossFinder::default()
        }
    }

    /// The messages with these ids are lost.
    pub fn lost(&mut self, ids: Range<u64>) {
        if ids.is_empty() {
            return;
        }
        match self.lost_ids.last_mut() {
            Some(r) if r.end == ids.start => r.end = ids.end,
            _ => {
                self.lost_ids.push(ids);
                self.lost_runs += 1;
            }
        }
    }

    /// An intact message, after every message with a lower id.
    pub fn intact(&mut self, sensor: &Arc<str>, first_seq: u64, last_seq: u64) {
        let prev = match self.last.get(sensor) {
            Some(&l) => Some(l),
            None => self.floor.get(&**sensor).map(|&seq| Last {
                seq,
                from_message: false,
                lost_seen: 0,
            }),
        };
        let lost_since = prev.map_or(self.lost_runs > 0, |p| p.lost_seen < self.lost_runs);
        if lost_since {
            let (first, exact) = match prev {
                Some(p) => (p.seq + 1, p.from_message),
                None => (0, false),
            };
            if first < first_seq {
                self.losses.push(SeqLoss {
                    sensor: sensor.clone(),
                    first_seq: first,
                    last_seq: first_seq - 1,
                    records: first_seq - first,
                    exact,
                });
            }
        }
        let seq = prev.map_or(last_seq, |p| p.seq.max(last_seq));
        self.last.insert(
            sensor.clone(),
            Last {
                seq,
                from_message: true,
                lost_seen: self.lost_runs,
            },
        );
    }

    /// A segment whose messages are unknown was lost: its ids cannot be
    /// told, but every sensor may have had records in it.
    pub fn lost_at_end(&mut self) {
        self.lost_runs += 1;
    }

    /// `None` when nothing was lost. Otherwise the sensors with an intact
    /// message after the last loss: every other sensor may have lost
    /// records after its last intact one (or all of them, if it has
    /// none), which only the sequence state can bound.
    pub fn intact_after_loss(&self) -> Option<BTreeSet<String>> {
        (self.lost_runs > 0).then(|| {
            self.last
                .iter()
                .filter(|(_, l)| l.lost_seen == self.lost_runs)
                .map(|(s, _)| s.to_string())
                .collect()
        })
    }

    /// The lost id runs and the sequence ranges found lost between intact
    /// messages.
    pub fn finish(self) -> (Vec<Range<u64>>, Vec<SeqLoss>) {
        (self.lost_ids, self.losses)
    }
}

/// Records of one sensor, as a range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
}

/// Per sensor, the ranges of records some event cost (dropped, lost),
/// with adjacent ranges merged: what one log line per range reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges(BTreeMap<Arc<str>, Vec<SeqRange>>);

impl SeqRanges {
    /// Adds the records `first_seq..=last_seq` of `sensor` (`records` of
    /// them: fewer than the numbers when some were never used).
    pub fn add(&mut self, sensor: &Arc<str>, first_seq: u64, last_seq: u64, records: u64) {
        let ranges = self.0.entry(sensor.clone()).or_default();
        match ranges.last_mut() {
            Some(r) if r.last_seq.checked_add(1) == Some(first_seq) => {
                r.last_seq = last_seq;
                r.records += records;
            }
            _ => ranges.push(SeqRange {
                first_seq,
                last_seq,
                records,
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every record counted.
    pub fn records(&self) -> u64 {
        self.0.values().flatten().map(|r| r.records).sum()
    }

    /// Each sensor's ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &SeqRange)> {
        self.0
            .iter()
            .flat_map(|(sensor, ranges)| ranges.iter().map(move |r| (sensor, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `(id, sensor, first_seq, last_seq)` in id order, with every id
    /// missing between them reported lost.
    fn run(floor: &[(&str, u64)], start: u64, msgs: &[(u64, &str, u64, u64)]) -> Vec<SeqLoss> {
        let mut f = LossFinder::new(floor.iter().map(|(s, n)| (s.to_string(), *n)).collect());
        let mut next = start;
        for &(id, sensor, a, b) in msgs {
            f.lost(next..id);
            f.intact(&Arc::from(sensor), a, b);
            next = id + 1;
        }
        f.finish().1
    }

    fn loss(sensor: &str, first_seq: u64, last_seq: u64, exact: bool) -> SeqLoss {
        SeqLoss {
            sensor: Arc::from(sensor),
            first_seq,
            last_seq,
            records: last_seq - first_seq + 1,
            exact,
        }
    }

    #[test]
    fn a_hole_between_intact_messages_of_each_sensor_is_exact() {
        // Two sensors interleaved; ids 3 and 4 lost: a's 20..29, b's 10..19.
        let msgs = [
            (0, "a", 0, 9),
            (1, "b", 0, 9),
            (2, "a", 10, 19),
            (5, "b", 20, 29),
            (6, "a", 30, 39),
        ];
        let got = run(&[], 0, &msgs);
        assert_eq!(got, vec![loss("b", 10, 19, true), loss("a", 20, 29, true)]);
    }

    #[test]
    fn nothing_lost_means_no_ranges_even_where_numbers_jump() {
        // A jump in numbers with no lost id between (a crash skipped a
        // reserved block) is not damage.
        let got = run(&[], 0, &[(0, "a", 0, 9), (1, "a", 5000, 5009)]);
        assert!(got.is_empty());
    }

    #[test]
    fn before_the_first_intact_message_the_floor_bounds_the_range() {
        let got = run(&[("a", 19)], 2, &[(4, "a", 40, 49), (5, "b", 7, 9)]);
        assert_eq!(got, vec![loss("a", 20, 39, false), loss("b", 0, 6, false)]);
        // Nothing lost before: the floor alone says nothing.
        let got = run(&[("a", 19)], 4, &[(4, "a", 40, 49)]);
        assert!(got.is_empty());
    }

    #[test]
    fn sensors_without_a_message_after_the_damage_are_left_to_the_sequence_state() {
        let mut f = LossFinder::new(BTreeMap::new());
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        f.intact(&a, 0, 9);
        f.intact(&b, 0, 9);
        assert_eq!(f.intact_after_loss(), None);
        f.lost(2..5);
        f.intact(&b, 20, 29);
        assert_eq!(f.intact_after_loss(), Some(["b".to_string()].into()));
        f.lost_at_end();
        assert_eq!(f.intact_after_loss(), Some(BTreeSet::new()));
        let (ids, losses) = f.finish();
        assert_eq!(ids, vec![2..5]);
        assert_eq!(losses, vec![loss("b", 10, 19, true)]);
    }

    #[test]
    fn adjacent_ranges_of_a_sensor_merge() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut r = SeqRanges::default();
        r.add(&a, 0, 9, 10);
        r.add(&b, 5, 5, 1);
        r.add(&a, 10, 19, 10);
        r.add(&a, 30, 39, 10);
        let got: Vec<_> = r
            .iter()
            .map(|(s, r)| (s.to_string(), r.first_seq, r.last_seq, r.records))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), 0, 19, 20),
                ("a".into(), 30, 39, 10),
                ("b".into(), 5, 5, 1)
            ]
        );
        assert_eq!(r.records(), 31);
    }
}
