//! Stage liveness for the systemd watchdog: is any stage *stuck*, as
//! opposed to merely *idle*?
//!
//! A stage marks the stretches of work that must end by themselves (sealing
//! a batch, writing to the spool, reading it back) with a [`Busy`] guard.
//! Waiting for input, for room in a channel, for the broker or for a
//! `block`ed spool is idle time and is not marked, so a long broker outage
//! never looks like a hang. A stage busy for longer than the limit — a disk
//! that stopped answering, a lock never released, a loop that does not end
//! — is stuck; the watchdog pings stop and systemd restarts the service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Milliseconds since the first use, plus one: 0 means "idle".
fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// One stage's heartbeat.
#[derive(Debug)]
pub struct Stage {
    name: String,
    /// When the current busy stretch began ([`now_ms`]), or 0 when idle.
    busy_since: AtomicU64,
}

impl Stage {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks the stage busy until the guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        self.busy_since.store(now_ms(), Ordering::Relaxed);
        Busy { stage: self }
    }

    /// How long the stage has been busy, if it is.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }
}

/// Marks its stage idle again when dropped (also on `?` and panics).
#[must_use = "the stage is idle again as soon as the guard is dropped"]
pub struct Busy<'a> {
    stage: &'a Stage,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.stage.busy_since.store(0, Ordering::Relaxed);
    }
}

/// The stages of one pipeline.
#[derive(Debug, Default)]
pub struct Health {
    stages: Mutex<Vec<Arc<Stage>>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    /// A new stage called `name`, watched from now on.
    pub fn stage(&self, name: impl Into<String>) -> Arc<Stage> {
        let stage = Arc::new(Stage {
            name: name.into(),
            busy_since: AtomicU64::new(0),
        });
        self.lock().push(stage.clone());
        stage
    }

    /// The stage that has been busy longest, if that is longer than
    /// `limit`: the pipeline is stuck there.
    pub fn stuck(&self, limit: Duration) -> Option<(String, Duration)> {
        self.lock()
            .iter()
            .filter_map(|s| s.busy_for().map(|d| (s.name.clone(), d)))
            .filter(|(_, d)| *d > limit)
            .max_by_key(|(_, d)| *d)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Stage>>> {
        // A panic while holding this lock cannot leave the list half
        // changed (a push), so a poisoned lock is still a good list.
        self.stages.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_not_stuck_and_long_busy_is() {
        let h = Health::new();
        let seal = h.stage("seal");
        let spool = h.stage("spool");
        assert_eq!(h.stuck(Duration::ZERO), None, "idle stages are never stuck");
        let guard = seal.busy();
        std::thread::sleep(Duration::from_millis(30));
        let (name, d) = h.stuck(Duration::from_millis(10)).expect("stuck");
        assert_eq!(name, "seal");
        assert!(d >= Duration::from_millis(30), "{d:?}");
        assert_eq!(
            h.stuck(Duration::from_secs(60)),
            None,
            "not yet past the limit"
        );
        drop(guard);
        assert_eq!(h.stuck(Duration::ZERO), None);
        assert_eq!(spool.busy_for(), None);
    }

    #[test]
    fn the_longest_busy_stage_is_named() {
        let h = Health::new();
        let a = h.stage("a");
        let b = h.stage("b");
        let _ga = a.busy();
        std::thread::sleep(Duration::from_millis(20));
        let _gb = b.busy();
        assert_eq!(h.stuck(Duration::ZERO).unwrap().0, "a");
    }
}
