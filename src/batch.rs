//! The batch stage: group one sensor's records into batches, by count
//! (`max_records`) and by time (`linger` after the first record).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::record::Record;

/// The batching decisions, without I/O.
#[derive(Debug)]
pub struct Batcher {
    max_records: usize,
    linger: Duration,
    records: Vec<Record>,
    deadline: Option<Instant>,
}

impl Batcher {
    pub fn new(max_records: usize, linger: Duration) -> Self {
        Batcher {
            max_records: max_records.max(1),
            linger,
            records: Vec::new(),
            deadline: None,
        }
    }

    /// Adds a record; returns a full batch when `max_records` is reached.
    pub fn push(&mut self, record: Record, now: Instant) -> Option<Vec<Record>> {
        if self.records.is_empty() {
            self.deadline = Some(now + self.linger);
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

/// Runs one sensor's batcher until its input closes, then flushes.
pub async fn run(
    mut batcher: Batcher,
    mut rx: mpsc::Receiver<Record>,
    tx: mpsc::Sender<Vec<Record>>,
) {
    loop {
        let deadline = batcher.deadline();
        let full = tokio::select! {
            r = rx.recv() => match r {
                Some(record) => batcher.push(record, Instant::now()),
                None => break,
            },
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await },
                if deadline.is_some() => batcher.take(),
        };
        if let Some(batch) = full {
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    }
    if let Some(batch) = batcher.take() {
        let _ = tx.send(batch).await;
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
        assert!(b.push(rec(0), t).is_none());
        assert_eq!(b.deadline(), Some(t + Duration::from_millis(200)));
        assert!(b.push(rec(1), t).is_none());
        let batch = b.push(rec(2), t).unwrap();
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(b.deadline(), None);
        assert!(b.take().is_none());
    }

    #[test]
    fn linger_starts_at_the_first_record_of_a_batch() {
        let mut b = Batcher::new(10, Duration::from_millis(100));
        let t = Instant::now();
        b.push(rec(0), t);
        b.push(rec(1), t + Duration::from_millis(50));
        assert_eq!(b.deadline(), Some(t + Duration::from_millis(100)));
        assert_eq!(b.take().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_is_flushed_after_linger_and_at_close() {
        let (in_tx, in_rx) = mpsc::channel(8);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let task = tokio::spawn(run(
            Batcher::new(100, Duration::from_millis(200)),
            in_rx,
            out_tx,
        ));
        in_tx.send(rec(0)).await.unwrap();
        in_tx.send(rec(1)).await.unwrap();
        let batch = out_rx.recv().await.unwrap();
        assert_eq!(batch.len(), 2);
        in_tx.send(rec(2)).await.unwrap();
        drop(in_tx);
        assert_eq!(out_rx.recv().await.unwrap()[0].seq, 2);
        task.await.unwrap();
    }
}
