//! The batch stage: group one sensor's records into batches, by count
//! (`max_records`) and by time (`linger` after the first record). The
//! serial reader of each sensor calls it directly
//! ([`crate::serial::SensorSource::run`]) and sends whole batches on.

use std::time::Duration;

use tokio::time::Instant;

use crate::record::{Field, FieldPool, Record, Spare};

/// The batching decisions, without I/O.
#[derive(Debug)]
pub struct Batcher {
    max_records: usize,
    linger: Duration,
    records: Vec<Record>,
    deadline: Option<Instant>,
    spare: Spare,
}

impl Batcher {
    pub fn new(max_records: usize, linger: Duration) -> Self {
        Batcher {
            max_records: max_records.max(1),
            linger,
            records: Vec::new(),
            deadline: None,
            spare: Spare::default(),
        }
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

    /// Adds a record; returns a full batch when `max_records` is reached.
    /// `now` is asked only when the record starts a batch (its `linger`
    /// deadline), not for every record.
    pub fn push(&mut self, record: Record, now: impl FnOnce() -> Instant) -> Option<Vec<Record>> {
        if self.records.is_empty() {
            self.deadline = Some(now() + self.linger);
            self.records.reserve(self.max_records);
        }
        self.records.push(record);
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
        if self.records.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.records))
        }
    }
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
