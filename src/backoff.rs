//! Exponential backoff with jitter, shared by the serial sources and the
//! uplink. A pure schedule: the caller sleeps.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay: `min * 2^attempt`, capped at `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay: uniformly random in `[ceiling/2, ceiling]` ("equal
    /// jitter"), so a fleet that lost its broker at the same moment does
    /// not reconnect in lockstep, yet never retries in a tight loop.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// The next delay with "full jitter": uniformly random between `min`
    /// and the ceiling. Spreads a fleet's reconnects over the whole window
    /// (the uplink's choice), never below `min`.
    pub fn next_delay_full_jitter(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        self.min + (ceiling - self.min.min(ceiling)).mul_f64(rand::random::<f64>())
    }

    /// Jumps to the longest delay (the peer refused us: retrying soon is
    /// pointless).
    pub fn to_max(&mut self) {
        self.attempt = 31;
    }

    /// After a success: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let min = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        let mut b = Backoff::new(min, max);
        let mut ceilings = vec![];
        for _ in 0..10 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d >= c / 2 && d <= c, "{d:?} within [{:?}, {c:?}]", c / 2);
            ceilings.push(c);
        }
        assert_eq!(ceilings[0], min);
        assert_eq!(ceilings[1], min * 2);
        assert_eq!(*ceilings.last().unwrap(), max);
        b.reset();
        assert_eq!(b.ceiling(), min);
        for _ in 0..20 {
            let c = b.ceiling();
            let d = b.next_delay_full_jitter();
            assert!(d >= min && d <= c, "{d:?} within [{min:?}, {c:?}]");
        }
        b.to_max();
        assert_eq!(b.ceiling(), max);
    }
}
