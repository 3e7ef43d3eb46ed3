//! The bounded in-memory spool: the bookkeeping of sealed messages between
//! the seal stage and the broker's acknowledgement, without I/O.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::config::WhenFull;
use crate::seal::SealedMessage;

/// A message's place in the spool. Ids grow by one per accepted message.
pub type MessageId = u64;

/// A message the spool gave up under `drop_oldest`, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub sensor: Arc<str>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u32,
}

/// The outcome of offering a message to the spool.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Taken; `dropped` lists what `drop_oldest` removed to make room.
    Accepted { dropped: Vec<Dropped> },
    /// `block` policy and no room: offer it again once there is.
    Full,
}

#[derive(Debug)]
struct Entry {
    id: MessageId,
    msg: Arc<SealedMessage>,
}

/// Holds sealed messages until the broker acknowledges them, within a byte
/// budget. Messages go out in the order they came in; after a reconnect
/// every unacknowledged message is offered again, oldest first.
#[derive(Debug)]
pub struct SpoolState {
    capacity: usize,
    policy: WhenFull,
    entries: VecDeque<Entry>,
    bytes: usize,
    next_id: MessageId,
    /// Messages with an id below this were handed to the uplink.
    send_cursor: MessageId,
}

impl SpoolState {
    pub fn new(capacity: usize, policy: WhenFull) -> Self {
        SpoolState {
            capacity,
            policy,
            entries: VecDeque::new(),
            bytes: 0,
            next_id: 0,
            send_cursor: 0,
        }
    }

    /// Offers a message. A message larger than the whole budget is still
    /// taken when the spool is empty, so an odd large batch cannot wedge the
    /// pipeline.
    pub fn push(&mut self, msg: Arc<SealedMessage>) -> Push {
        let size = msg.bytes.len();
        let mut dropped = Vec::new();
        while !self.entries.is_empty() && self.bytes + size > self.capacity {
            match self.policy {
                WhenFull::Block => return Push::Full,
                WhenFull::DropOldest => {
                    let e = self.entries.pop_front().expect("not empty");
                    self.bytes -= e.msg.bytes.len();
                    dropped.push(Dropped {
                        sensor: e.msg.sensor.clone(),
                        first_seq: e.msg.first_seq,
                        last_seq: e.msg.last_seq,
                        records: e.msg.records,
                    });
                }
            }
        }
        self.bytes += size;
        self.entries.push_back(Entry {
            id: self.next_id,
            msg,
        });
        self.next_id += 1;
        Push::Accepted { dropped }
    }

    /// The oldest message not yet handed out since the last rewind.
    pub fn next_to_send(&mut self) -> Option<(MessageId, Arc<SealedMessage>)> {
        let start = self.entries.partition_point(|e| e.id < self.send_cursor);
        let e = self.entries.get(start)?;
        self.send_cursor = e.id + 1;
        Some((e.id, e.msg.clone()))
    }

    /// The broker acknowledged `id`: forget it. Unknown ids (dropped while
    /// in flight, or acknowledged twice) are ignored. Returns the message.
    pub fn ack(&mut self, id: MessageId) -> Option<Arc<SealedMessage>> {
        let idx = self.entries.binary_search_by_key(&id, |e| e.id).ok()?;
        let e = self.entries.remove(idx).expect("index found");
        self.bytes -= e.msg.bytes.len();
        Some(e.msg)
    }

    /// After a lost connection: everything not acknowledged goes out again.
    pub fn rewind(&mut self) {
        self.send_cursor = self.entries.front().map_or(self.next_id, |e| e.id);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(seq: u64, size: usize) -> Arc<SealedMessage> {
        Arc::new(SealedMessage {
            sensor: Arc::from("s"),
            first_seq: seq,
            last_seq: seq,
            records: 1,
            bytes: vec![b'x'; size],
        })
    }

    #[test]
    fn messages_go_out_in_order_and_again_after_rewind_until_acked() {
        let mut s = SpoolState::new(1000, WhenFull::Block);
        for i in 0..3 {
            assert_eq!(s.push(msg(i, 10)), Push::Accepted { dropped: vec![] });
        }
        let (a, _) = s.next_to_send().unwrap();
        let (b, _) = s.next_to_send().unwrap();
        s.ack(a);
        s.rewind();
        let resent: Vec<u64> =
            std::iter::from_fn(|| s.next_to_send().map(|(_, m)| m.first_seq)).collect();
        assert_eq!(resent, [1, 2]);
        s.ack(b);
        assert_eq!(s.len(), 1);
        assert_eq!(s.bytes(), 10);
    }

    #[test]
    fn block_refuses_when_full_and_drop_oldest_reports_what_it_dropped() {
        let mut s = SpoolState::new(25, WhenFull::Block);
        s.push(msg(0, 10));
        s.push(msg(1, 10));
        assert_eq!(s.push(msg(2, 10)), Push::Full);
        let mut s = SpoolState::new(25, WhenFull::DropOldest);
        s.push(msg(0, 10));
        s.push(msg(1, 10));
        let Push::Accepted { dropped } = s.push(msg(2, 10)) else {
            panic!()
        };
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].first_seq, 0);
        assert_eq!(s.bytes(), 20);
    }

    #[test]
    fn an_oversized_message_is_taken_when_empty() {
        let mut s = SpoolState::new(5, WhenFull::Block);
        assert!(matches!(s.push(msg(0, 50)), Push::Accepted { .. }));
        assert_eq!(s.push(msg(1, 1)), Push::Full);
    }

    proptest! {
        /// Whatever the interleaving of pushes, sends, acks and rewinds,
        /// the byte budget holds and every message is either acked,
        /// dropped by policy, or still held.
        #[test]
        fn nothing_is_lost_silently_and_the_budget_holds(
            ops in proptest::collection::vec(0u8..4, 1..200),
            drop_oldest in any::<bool>(),
        ) {
            let policy = if drop_oldest { WhenFull::DropOldest } else { WhenFull::Block };
            let mut s = SpoolState::new(100, policy);
            let (mut pushed, mut acked, mut dropped) = (0u64, 0u64, 0u64);
            let mut inflight = VecDeque::new();
            for op in ops {
                match op {
                    0 => if let Push::Accepted { dropped: d } = s.push(msg(pushed, 30)) {
                        pushed += 1; dropped += d.len() as u64;
                    },
                    1 => if let Some((id, _)) = s.next_to_send() { inflight.push_back(id) },
                    2 => if let Some(id) = inflight.pop_front() { if s.ack(id).is_some() { acked += 1 } },
                    _ => { s.rewind(); inflight.clear(); }
                }
                prop_assert!(s.bytes() <= 100);
                prop_assert_eq!(pushed, acked + dropped + s.len() as u64);
            }
        }
    }
}
