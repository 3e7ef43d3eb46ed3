//! The publish window, without I/O: which messages were handed to the MQTT
//! client, which packet id each got, and what a PUBACK acknowledges.
//!
//! rumqttc assigns packet ids itself and reports each with an
//! `Outgoing::Publish(pkid)` event, in the order the publishes were handed
//! to it (each connection uses a fresh client, so that order is exact).
//! Publishes are matched to packet ids by that order.

use std::collections::{HashMap, VecDeque};

use crate::spool::MessageId;

/// What a publish was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// A sealed message from the spool, with its record count.
    Message { id: MessageId, records: u32 },
    /// The retained status message (`online`/`offline`).
    Status,
}

/// Publishes not yet acknowledged, within a window.
#[derive(Debug)]
pub struct Inflight {
    window: usize,
    /// Handed to the client, packet id not yet known, oldest first.
    unassigned: VecDeque<Tracked>,
    by_pkid: HashMap<u16, Tracked>,
}

impl Inflight {
    pub fn new(window: usize) -> Self {
        Inflight {
            window: window.max(1),
            unassigned: VecDeque::new(),
            by_pkid: HashMap::new(),
        }
    }

    /// True while another sealed message may be published.
    pub fn has_room(&self) -> bool {
        self.messages() < self.window
    }

    fn messages(&self) -> usize {
        self.unassigned
            .iter()
            .chain(self.by_pkid.values())
            .filter(|t| matches!(t, Tracked::Message { .. }))
            .count()
    }

    /// A publish was handed to the client.
    pub fn published(&mut self, t: Tracked) {
        self.unassigned.push_back(t);
    }

    /// The client sent the oldest unassigned publish with `pkid`.
    pub fn assigned(&mut self, pkid: u16) {
        if let Some(t) = self.unassigned.pop_front() {
            self.by_pkid.insert(pkid, t);
        }
    }

    /// The broker acknowledged `pkid`.
    pub fn acked(&mut self, pkid: u16) -> Option<Tracked> {
        self.by_pkid.remove(&pkid)
    }

    pub fn is_empty(&self) -> bool {
        self.unassigned.is_empty() && self.by_pkid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_are_matched_to_packet_ids_in_order_and_status_takes_no_room() {
        let mut f = Inflight::new(2);
        f.published(Tracked::Status);
        f.published(Tracked::Message { id: 7, records: 3 });
        assert!(f.has_room());
        f.published(Tracked::Message { id: 8, records: 1 });
        assert!(!f.has_room());
        f.assigned(1);
        f.assigned(2);
        f.assigned(3);
        assert_eq!(f.acked(2), Some(Tracked::Message { id: 7, records: 3 }));
        assert!(f.has_room());
        assert_eq!(f.acked(1), Some(Tracked::Status));
        assert_eq!(f.acked(1), None, "a second ack for a packet id is ignored");
        assert_eq!(f.acked(3), Some(Tracked::Message { id: 8, records: 1 }));
        assert!(f.is_empty());
    }
}
