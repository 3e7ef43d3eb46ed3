//! The spool: sealed messages wait here until the broker acknowledges them.
//!
//! This version holds them in memory within `[buffer] memory`; the disk
//! segments come next, behind the same interface (push, next to send, ack,
//! rewind). `sequences` keeps the epoch and sequence counters on disk.

pub mod memory;
pub mod sequences;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tracing::warn;

use crate::config::WhenFull;
use crate::seal::SealedMessage;
use crate::telemetry::Stats;
use memory::{MessageId, Push, SpoolState};

/// The spool shared by the seal stage (pushing) and the uplink (taking and
/// acknowledging).
#[derive(Debug)]
pub struct Spool {
    state: Mutex<SpoolState>,
    closed: std::sync::atomic::AtomicBool,
    /// Wakes the uplink: a message arrived, or the spool closed.
    data: Notify,
    /// Wakes a blocked pusher: room was made.
    space: Notify,
    stats: Arc<Stats>,
}

impl Spool {
    pub fn new(capacity: usize, policy: WhenFull, stats: Arc<Stats>) -> Self {
        Spool {
            state: Mutex::new(SpoolState::new(capacity, policy)),
            closed: Default::default(),
            data: Notify::new(),
            space: Notify::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SpoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_gauges(&self, s: &SpoolState) {
        Stats::set(&self.stats.spool_messages, s.len() as u64);
        Stats::set(&self.stats.spool_bytes, s.bytes() as u64);
    }

    /// Adds a sealed message. Under `block` this waits for room, which in
    /// turn stops the batchers and the serial reads behind them.
    pub async fn push(&self, msg: SealedMessage) {
        let msg = Arc::new(msg);
        loop {
            let room = self.space.notified();
            let outcome = {
                let mut s = self.lock();
                let outcome = s.push(msg.clone());
                self.update_gauges(&s);
                outcome
            };
            match outcome {
                Push::Accepted { dropped } => {
                    for d in dropped {
                        Stats::add(&self.stats.messages_dropped, 1);
                        Stats::add(&self.stats.records_dropped, u64::from(d.records));
                        warn!(sensor = %d.sensor, seq_first = d.first_seq, seq_last = d.last_seq,
                            records = d.records, "memory spool full; oldest message dropped (when_full = drop_oldest)");
                    }
                    self.data.notify_one();
                    return;
                }
                Push::Full => room.await,
            }
        }
    }

    /// The next message to publish, if any.
    pub fn next_to_send(&self) -> Option<(MessageId, Arc<SealedMessage>)> {
        self.lock().next_to_send()
    }

    /// Waits until something may have changed for the uplink (a message
    /// arrived or the spool was closed). May wake spuriously.
    pub async fn changed(&self) {
        self.data.notified().await
    }

    /// The broker acknowledged the message.
    pub fn ack(&self, id: MessageId) -> Option<Arc<SealedMessage>> {
        let msg = {
            let mut s = self.lock();
            let msg = s.ack(id);
            self.update_gauges(&s);
            msg
        };
        if msg.is_some() {
            self.space.notify_one();
        }
        msg
    }

    /// Offer every unacknowledged message again (after a reconnect).
    pub fn rewind(&self) {
        self.lock().rewind();
    }

    /// No more messages will be pushed (shutting down).
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.data.notify_one();
    }

    /// Closed and every message acknowledged.
    pub fn is_drained(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst) && self.lock().is_empty()
    }

    /// Messages and records still held.
    pub fn backlog(&self) -> (usize, usize) {
        let s = self.lock();
        (s.len(), s.bytes())
    }
}
