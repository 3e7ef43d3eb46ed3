//! The batch stage: group one sensor's records into batches, by count
//! (`max_records`) and by time (`linger` after the first record). The
//! serial reader of each sensor calls it directly
//! ([`crate::serial::SensorSource::run`]) and sends whole batches on.
//!
//! A batch never mixes records stamped before and after the clock was
//! synchronised, nor records on either side of a wall-clock jump: a sealed
//! message carries one boot-clock time for all its records
//! (`docs/FORMAT.md`, "Time"), and the others follow from their wall-clock
//! differences, which a jump inside the batch would falsify.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::clock::{Clock, ClockMark};
use crate::record::{Field, FieldPool, Record, Spare};

/// How far the wall clock may move against the boot clock within one
/// batch before it counts as a jump and the batch is cut there. NTP slews
/// by at most 0.5 ms a second, so this is a step, not a slew.
pub const JUMP: Duration = Duration::from_millis(500);

/// The batching decisions, without I/O.
#[derive(Debug)]
pub struct Batcher {
    max_records: usize,
    linger: Duration,
    records: Vec<Record>,
    deadline: Option<Instant>,
    spare: Spare,
    clock: Clock,
    /// The open batch's first mark and its wall minus boot clock, ms.
    open: Option<(ClockMark, i64)>,
}

impl Batcher {
    pub fn new(max_records: usize, linger: Duration) -> Self {
        Batcher {
            max_records: max_records.max(1),
            linger,
            records: Vec::new(),
            deadline: None,
            spare: Spare::default(),
            clock: Clock::default(),
            open: None,
        }
    }

    /// Stamps records with `clock` ([`Batcher::stamp`]).
    pub fn clocked(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The time to stamp a record with, now, and its mark.
    pub fn stamp(&self) -> (SystemTime, ClockMark) {
        self.clock.stamp()
    }

    /// Takes the field vectors of the next records from `pool`, where the
    /// seal stage gives them back ([`FieldPool`]).
    pub fn recycling(mut self, pool: FieldPool) -> Self {
        self.spare = Spare::new(pool, self.max_records);
        self
    }

    /// An empty vector for the next record's fields.
    pub fn fields(&mut self) -> Vec<Field> {
        self.spare.fields()
    }

    /// Adds a record; returns a full batch when `max_records` is reached,
    /// or the batch so far when `record` cannot join it (the clock became
    /// synchronised, or jumped, in between). `now` is asked only when the
    /// record starts a batch (its `linger` deadline), not for every record.
    pub fn push(&mut self, record: Record, now: impl FnOnce() -> Instant) -> Option<Vec<Record>> {
        let offset = record
            .clock
            .map(|mark| (mark, wall_minus_boot(record.ts, mark)));
        let cut = match (self.open, offset) {
            (Some((first, at)), Some((mark, off))) => {
                first.synced != mark.synced || (off - at).unsigned_abs() > JUMP.as_millis() as u64
            }
            _ => false,
        };
        let full = if cut { self.take() } else { None };
        if self.records.is_empty() {
            self.deadline = Some(now() + self.linger);
            self.records.reserve(self.max_records);
            self.open = offset;
        }
        self.records.push(record);
        if full.is_some() {
            return full;
        }
        if self.records.len() >= self.max_records {
            return self.take();
        }
        None
    }

    /// When the current batch must go out even if not full.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The batch so far, if any (linger expired, or shutting down).
    pub fn take(&mut self) -> Option<Vec<Record>> {
        self.deadline = None;
        self.open = None;
        if self.records.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.records))
        }
    }
}

/// The wall clock minus the boot clock, milliseconds: constant while the
/// wall clock runs without jumps.
fn wall_minus_boot(ts: SystemTime, mark: ClockMark) -> i64 {
    // Not `as_millis`, whose 128-bit division costs more than the rest.
    let ms = |d: Duration| d.as_secs() as i64 * 1000 + i64::from(d.subsec_millis());
    let wall = match ts.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    };
    wall - mark.boot_ms as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn rec(seq: u64) -> Record {
        Record {
            sensor: Arc::from("s"),
            seq,
            ts: SystemTime::now(),
            clock: None,
            fields: vec![],
        }
    }

    #[test]
    fn full_batch_goes_out_at_max_records() {
        let mut b = Batcher::new(3, Duration::from_millis(200));
        let t = Instant::now();
        assert!(b.push(rec(0), || t).is_none());
        assert_eq!(b.deadline(), Some(t + Duration::from_millis(200)));
        assert!(b.push(rec(1), || t).is_none());
        let batch = b.push(rec(2), || t).unwrap();
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(b.deadline(), None);
        assert!(b.take().is_none());
    }

    /// A record stamped at wall time `wall_s` and boot time `boot_s`.
    fn stamped(seq: u64, wall_s: u64, boot_s: u64, synced: bool) -> Record {
        Record {
            ts: SystemTime::UNIX_EPOCH + Duration::from_secs(wall_s),
            clock: Some(ClockMark {
                boot_ms: boot_s * 1000,
                synced,
            }),
            ..rec(seq)
        }
    }

    #[test]
    fn a_batch_never_spans_the_moment_the_clock_was_synchronised() {
        let mut b = Batcher::new(10, Duration::from_secs(60));
        let t = Instant::now();
        assert!(b.push(stamped(0, 1000, 10, false), || t).is_none());
        assert!(b.push(stamped(1, 1001, 11, false), || t).is_none());
        // Synchronised, with a step of three hours forwards.
        let before = b.push(stamped(2, 1002 + 3 * 3600, 12, true), || t).unwrap();
        assert_eq!(seqs(&before), [0, 1]);
        assert!(
            b.push(stamped(3, 1003 + 3 * 3600, 13, true), || t)
                .is_none()
        );
        assert_eq!(seqs(&b.take().unwrap()), [2, 3]);
    }

    #[test]
    fn a_wall_clock_jump_cuts_the_batch_and_leaves_linger_alone() {
        for jump in [-3 * 3600i64, -1, 2, 5 * 3600] {
            let mut b = Batcher::new(10, Duration::from_millis(200));
            let t = Instant::now();
            let wall = |s: i64| (1_000_000 + s) as u64;
            assert!(b.push(stamped(0, wall(0), 100, true), || t).is_none());
            // Linger runs on the monotonic clock: the jump changes nothing.
            let deadline = b.deadline();
            assert_eq!(deadline, Some(t + Duration::from_millis(200)));
            let cut = b.push(stamped(1, wall(1 + jump), 101, true), || t);
            assert_eq!(seqs(&cut.unwrap()), [0], "jump {jump}");
            assert_eq!(b.deadline(), Some(t + Duration::from_millis(200)));
            // The clock keeps its new time: no more cuts.
            assert!(
                b.push(stamped(2, wall(2 + jump), 102, true), || t)
                    .is_none()
            );
            assert_eq!(seqs(&b.take().unwrap()), [1, 2]);
        }
    }

    #[test]
    fn records_a_device_stamped_are_never_cut() {
        let mut b = Batcher::new(3, Duration::from_secs(60));
        let t = Instant::now();
        for seq in 0..2 {
            let mut r = rec(seq);
            r.ts = SystemTime::UNIX_EPOCH + Duration::from_secs(seq * 86_400);
            assert!(b.push(r, || t).is_none());
        }
        assert!(b.push(stamped(2, 5, 1, false), || t).is_some());
    }

    fn seqs(batch: &[Record]) -> Vec<u64> {
        batch.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn linger_starts_at_the_first_record_of_a_batch() {
        let mut b = Batcher::new(10, Duration::from_millis(100));
        let t = Instant::now();
        b.push(rec(0), || t);
        b.push(rec(1), || t + Duration::from_millis(50));
        assert_eq!(b.deadline(), Some(t + Duration::from_millis(100)));
        assert_eq!(b.take().unwrap().len(), 2);
    }
}
