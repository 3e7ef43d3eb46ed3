//! Correcting the times a gateway stamped before its clock was
//! synchronised (`docs/FORMAT.md`, "Time").
//!
//! A batch stamped unsynchronised carries the boot clock at its first
//! record, `m`; an *anchor* (a synchronised batch of the same gateway and
//! boot carrying its `clock`) pairs its first record's trusted time `Ta`
//! with the boot clock then, `ma`. The boot clock ran on, unaffected by
//! the wall clock's jump, so the first record's true time is
//! `Ta + (m − ma)`, and every record of the batch moves by the same amount.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use super::v2::BatchClock;

/// Anchors kept at most (one per gateway and boot; the oldest go first).
pub const MAX_ANCHORS: usize = 65_536;

/// A gateway's boot: (gateway id, boot id).
pub type Boot = (String, [u8; 16]);

/// What a message says about its clock, as `open` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageClock {
    pub synced: bool,
    pub boot: [u8; 16],
    pub boot_ms: u64,
    /// The first record's time, as stamped.
    pub t0: SystemTime,
}

/// The first anchor seen of each boot.
#[derive(Debug, Default)]
pub struct Anchors {
    first: HashMap<Boot, (SystemTime, u64)>,
    order: VecDeque<Boot>,
}

impl Anchors {
    /// Remembers the anchor in a synchronised message of `gateway`; true
    /// when it is the first of its boot (later ones change nothing: the
    /// first is nearest to the records before it, so least drift).
    pub fn learn(&mut self, gateway: &str, clock: &MessageClock) -> bool {
        if !clock.synced {
            return false;
        }
        let key = (gateway.to_string(), clock.boot);
        if self.first.contains_key(&key) {
            return false;
        }
        if self.order.len() >= MAX_ANCHORS
            && let Some(old) = self.order.pop_front()
        {
            self.first.remove(&old);
        }
        self.first.insert(key.clone(), (clock.t0, clock.boot_ms));
        self.order.push_back(key);
        true
    }

    /// How far the times of an unsynchronised message of `gateway` are
    /// off, in nanoseconds to add, once its boot has an anchor.
    pub fn shift(&self, gateway: &str, clock: &BatchClock, t0: SystemTime) -> Option<i128> {
        if clock.synced {
            return None;
        }
        let &(anchor_time, anchor_ms) = self.first.get(&(gateway.to_string(), clock.boot))?;
        let since_anchor_ms = i128::from(clock.boot_ms) - i128::from(anchor_ms);
        Some(nanos(anchor_time) + since_anchor_ms * 1_000_000 - nanos(t0))
    }
}

fn nanos(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// `t` moved by `shift` nanoseconds.
pub fn shifted(t: SystemTime, shift: i128) -> SystemTime {
    let by = Duration::from_nanos(shift.unsigned_abs().min(u128::from(u64::MAX)) as u64);
    if shift < 0 { t - by } else { t + by }
}

/// `+3h 12m 5.25s`, `-40ms`: a shift for people.
pub fn describe_shift(shift: i128) -> String {
    let sign = if shift < 0 { '-' } else { '+' };
    let ms = Duration::from_millis((shift.unsigned_abs() / 1_000_000) as u64);
    format!("{sign}{}", humantime::format_duration(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: [u8; 16] = [7; 16];

    fn at(secs: u64, ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms)
    }

    #[test]
    fn an_unsynchronised_batch_moves_by_what_the_boot_clock_says() {
        let mut anchors = Anchors::default();
        // Stamped at 1970 + 100 s (no RTC, no fake-hwclock), 30 s after boot.
        let before = BatchClock {
            synced: false,
            boot: BOOT,
            boot_ms: 30_000,
        };
        assert_eq!(anchors.shift("gw", &before, at(100, 0)), None);
        // Synchronised: 2026-12-08T06:00:00.250Z, 3 h after boot.
        let anchor = MessageClock {
            synced: true,
            boot: BOOT,
            boot_ms: 3 * 3600 * 1000,
            t0: at(1_796_709_600, 250),
        };
        assert!(anchors.learn("gw", &anchor));
        assert!(!anchors.learn(
            "gw",
            &MessageClock {
                t0: at(1, 0),
                ..anchor
            }
        ));
        let shift = anchors.shift("gw", &before, at(100, 0)).unwrap();
        // The first record was 2 h 59 m 30 s before the anchor.
        assert_eq!(
            shifted(at(100, 0), shift),
            at(1_796_709_600 - 3 * 3600 + 30, 250)
        );
        // Another gateway, another boot: no anchor.
        assert_eq!(anchors.shift("other", &before, at(100, 0)), None);
        let other_boot = BatchClock {
            boot: [8; 16],
            ..before
        };
        assert_eq!(anchors.shift("gw", &other_boot, at(100, 0)), None);
        // A clock ahead moves back.
        let ahead = BatchClock {
            boot_ms: 3 * 3600 * 1000 - 1000,
            ..before
        };
        let back = anchors.shift("gw", &ahead, at(1_900_000_000, 0)).unwrap();
        assert!(back < 0);
        assert_eq!(shifted(at(1_900_000_000, 0), back), at(1_796_709_599, 250));
        assert_eq!(describe_shift(-1_500_000_000), "-1s 500ms");
    }

    #[test]
    fn anchors_are_bounded() {
        let mut anchors = Anchors::default();
        for i in 0..MAX_ANCHORS + 1 {
            let clock = MessageClock {
                synced: true,
                boot: BOOT,
                boot_ms: 0,
                t0: at(0, 0),
            };
            assert!(anchors.learn(&format!("gw{i}"), &clock));
        }
        assert_eq!(anchors.first.len(), MAX_ANCHORS);
        let before = BatchClock {
            synced: false,
            boot: BOOT,
            boot_ms: 0,
        };
        assert_eq!(anchors.shift("gw0", &before, at(0, 0)), None);
        assert!(anchors.shift("gw1", &before, at(0, 0)).is_some());
    }
}
