//! When each slave on a bus is polled next, without I/O.
//!
//! The slaves of one bus share it: one request at a time. Each is polled
//! every `poll` (at a fixed rate, not drifting with the time a poll takes);
//! the next poll on the bus is the one due first. A slave that fails (no
//! answer, an exception, garbage) backs off: its next tries come after
//! `poll`, twice that, four times... up to [`MAX_BACKOFF`] (or its own
//! `poll`, if longer), so that a dead device costs the bus one timeout per
//! try, not one per poll, and the others keep their rate. The transitions
//! (first failure, return) are reported once each, for the log.

use std::time::Duration;

use tokio::time::Instant;

/// The longest wait between two tries of a failing slave (unless its
/// `poll` is longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How one poll went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    Failed,
}

/// What changed for a slave with a poll, worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It failed after answering (or at its first poll).
    Failing,
    /// It answered again, after failing for `after`.
    Back { after: Duration },
}

#[derive(Debug, Clone)]
struct Slave {
    poll: Duration,
    due: Instant,
    /// Since when, and how many polls in a row, it has failed.
    failing: Option<(Instant, u32)>,
}

/// The poll times of the slaves of one bus.
#[derive(Debug, Clone)]
pub struct Schedule {
    slaves: Vec<Slave>,
    /// Polls skipped because the bus was too busy to make them on time.
    late: u64,
}

impl Schedule {
    /// Every slave due at `start`, in the order given.
    pub fn new(polls: &[Duration], start: Instant) -> Schedule {
        Schedule {
            slaves: polls
                .iter()
                .map(|&poll| Slave {
                    poll: poll.max(Duration::from_millis(1)),
                    due: start,
                    failing: None,
                })
                .collect(),
            late: 0,
        }
    }

    /// The slave to poll next and when: the one due first (the first
    /// given, among those due at once).
    pub fn next(&self) -> Option<(usize, Instant)> {
        self.slaves
            .iter()
            .enumerate()
            .min_by_key(|(i, s)| (s.due, *i))
            .map(|(i, s)| (i, s.due))
    }

    /// Records how slave `i`'s poll went at `now`, schedules its next one,
    /// and says what changed.
    pub fn done(&mut self, i: usize, now: Instant, outcome: Outcome) -> Option<Change> {
        let s = &mut self.slaves[i];
        match outcome {
            Outcome::Answered => {
                let change = s.failing.take().map(|(since, _)| Change::Back {
                    after: now.saturating_duration_since(since),
                });
                // A fixed rate; but a poll more than a period late is
                // skipped, not made up in a burst.
                let next = s.due + s.poll;
                if next + s.poll <= now {
                    let behind = now.saturating_duration_since(next).as_nanos();
                    self.late += (behind / s.poll.as_nanos()) as u64;
                    s.due = now;
                } else {
                    s.due = next;
                }
                change
            }
            Outcome::Failed => {
                let (change, failures) = match s.failing {
                    None => (Some(Change::Failing), 1),
                    Some((_, n)) => (None, n.saturating_add(1)),
                };
                let since = s.failing.map_or(now, |(since, _)| since);
                s.failing = Some((since, failures));
                s.due = now + backoff(s.poll, failures);
                change
            }
        }
    }

    /// Whether slave `i` is failing now.
    pub fn is_failing(&self, i: usize) -> bool {
        self.slaves[i].failing.is_some()
    }

    /// Polls skipped so far because the bus could not make them on time.
    pub fn late(&self) -> u64 {
        self.late
    }
}

/// The wait after the `failures`th failure in a row: `poll`, then doubled
/// each time, up to [`MAX_BACKOFF`] or `poll` if that is longer.
fn backoff(poll: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(poll);
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    poll.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn slaves_are_polled_in_turn_at_their_own_rate() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[1000 * MS, 500 * MS], t0);
        // Both due at once: the first given goes first.
        assert_eq!(s.next(), Some((0, t0)));
        assert_eq!(s.done(0, t0 + 40 * MS, Outcome::Answered), None);
        assert_eq!(s.next(), Some((1, t0)));
        s.done(1, t0 + 80 * MS, Outcome::Answered);
        // A fixed rate: the time a poll took does not push the next.
        assert_eq!(s.next(), Some((1, t0 + 500 * MS)));
        s.done(1, t0 + 540 * MS, Outcome::Answered);
        assert_eq!(s.next(), Some((0, t0 + 1000 * MS)));
    }

    #[test]
    fn a_failing_slave_backs_off_up_to_the_cap_and_says_when_it_is_back() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[1000 * MS], t0);
        let mut now = t0 + 200 * MS;
        assert_eq!(s.done(0, now, Outcome::Failed), Some(Change::Failing));
        assert!(s.is_failing(0));
        let mut waits = Vec::new();
        for _ in 0..8 {
            let (_, due) = s.next().unwrap();
            waits.push((due - now).as_secs());
            now = due + 200 * MS;
            // Reported once, when it starts failing.
            assert_eq!(s.done(0, now, Outcome::Failed), None);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        let (_, due) = s.next().unwrap();
        let back = s.done(0, due + 10 * MS, Outcome::Answered);
        assert_eq!(
            back,
            Some(Change::Back {
                after: due + 10 * MS - (t0 + 200 * MS)
            })
        );
        assert!(!s.is_failing(0));
    }

    #[test]
    fn a_slave_polled_less_often_than_the_cap_backs_off_no_further_than_its_poll() {
        assert_eq!(backoff(Duration::from_secs(60), 1), Duration::from_secs(60));
        assert_eq!(backoff(Duration::from_secs(60), 5), Duration::from_secs(60));
        assert_eq!(backoff(100 * MS, 40), MAX_BACKOFF);
    }

    #[test]
    fn a_dead_slave_leaves_the_others_their_rate() {
        // Three answer in 20 ms; the fourth never does and costs its
        // timeout, 200 ms, at each try. Polled every 250 ms for a minute.
        let t0 = Instant::now();
        let mut s = Schedule::new(&[250 * MS; 4], t0);
        let mut now = t0;
        let mut polls = [0u32; 4];
        while now < t0 + Duration::from_secs(60) {
            let (i, due) = s.next().unwrap();
            now = now.max(due);
            let (took, outcome) = if i == 3 {
                (200 * MS, Outcome::Failed)
            } else {
                (20 * MS, Outcome::Answered)
            };
            now += took;
            polls[i] += 1;
            s.done(i, now, outcome);
        }
        for (i, &n) in polls[..3].iter().enumerate() {
            assert!(n >= 235, "slave {i} was polled {n} times, not about 240");
        }
        assert!(
            polls[3] <= 10,
            "the dead slave was tried {} times",
            polls[3]
        );
    }

    #[test]
    fn a_bus_too_slow_for_the_polls_skips_them_rather_than_bursting() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[100 * MS], t0);
        // The poll took 350 ms: the polls due at 100, 200 and 300 ms
        // are missed; the next is at once, not three in a row.
        s.done(0, t0 + 350 * MS, Outcome::Answered);
        assert_eq!(s.next(), Some((0, t0 + 350 * MS)));
        assert_eq!(s.late(), 2);
        s.done(0, t0 + 360 * MS, Outcome::Answered);
        assert_eq!(s.next(), Some((0, t0 + 450 * MS)));
    }
}
