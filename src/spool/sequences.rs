//! Per-sensor sequence numbers and the gateway's epoch, kept in the state
//! directory so that a sequence number is never reused after a restart.
//!
//! Writing the counter for every record would wear an SD card out, so
//! numbers are *reserved* in blocks: the file holds the first number not yet
//! reserved, written before any number of the block is used. Blocks grow
//! for fast sensors ([`MAX_RESERVE_BLOCK`]). A clean stop
//! writes the exact next number. After a crash or power cut the sequence
//! jumps to the end of the last reserved block: the consumer sees a gap
//! (numbers never used, plus whatever was in memory), never a reuse.
//!
//! The epoch is a random id made when the state is created. If the state
//! file is lost or unreadable a new epoch starts, so a consumer can tell a
//! counter that restarted from 0 apart from a replay.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// How many sequence numbers one write of the state file reserves at
/// first (and at least).
pub const RESERVE_BLOCK: u64 = 4096;
/// The most one write reserves. A fast sensor's block doubles while it
/// uses a block up within [`RESERVE_PERIOD`], so the state file (two
/// fsyncs per write) is written about once per period per sensor rather
/// than dozens of times a second; a crash then skips at most this many
/// numbers.
pub const MAX_RESERVE_BLOCK: u64 = 1 << 20;
/// How often, at most, a steady sensor makes the allocator write the state.
pub const RESERVE_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

const STATE_FILE: &str = "sequences.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot create state directory {path}: {source}; check [gateway] state_dir and its permissions"
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// For `check-config`: can `run` use (or create) this state directory?
/// Returns a note for the operator, or the error `run` would meet.
pub fn check_state_dir(dir: &Path) -> Result<String, StateError> {
    let unusable = |why: &str| StateError::CreateDir {
        path: dir.to_path_buf(),
        source: io::Error::other(why.to_string()),
    };
    let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    if dir.exists() {
        if !dir.is_dir() {
            return Err(unusable("it exists and is not a folder"));
        }
        if !writable(dir) {
            return Err(unusable("this user cannot write there"));
        }
        return Ok(format!("gateway.state_dir {}: ok", dir.display()));
    }
    let parent = dir
        .ancestors()
        .skip(1)
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !parent.is_dir() || !writable(parent) {
        return Err(unusable(&format!(
            "it does not exist and this user cannot create it in {}",
            parent.display()
        )));
    }
    Ok(format!(
        "gateway.state_dir {}: does not exist yet; `run` creates it (mode 0700)",
        dir.display()
    ))
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    epoch: String,
    /// True when the last run stopped cleanly ([`StateDir::mark_clean`]);
    /// every reservation during a run writes false.
    #[serde(default)]
    clean: bool,
    /// Per sensor: the first sequence number not yet used or reserved.
    next: BTreeMap<String, u64>,
}

/// The state directory: epoch and sequence counters.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    epoch: String,
    file: Mutex<BTreeMap<String, u64>>,
    /// Whether the previous run stopped cleanly, and its counters then.
    previous: Option<(bool, BTreeMap<String, u64>)>,
}

impl StateDir {
    /// Opens (creating if needed, mode 0700) the state directory. A state
    /// file that cannot be parsed is moved aside and a new epoch begins.
    pub fn open(dir: &Path) -> Result<Arc<StateDir>, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        let path = dir.join(STATE_FILE);
        let loaded = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(s) if !s.epoch.is_empty() => Some(s),
                _ => {
                    let aside = dir.join(format!("{STATE_FILE}.corrupt"));
                    tracing::error!(
                        path = %path.display(),
                        moved_to = %aside.display(),
                        error_kind = "corrupt",
                        "state file unreadable; starting a new epoch"
                    );
                    let _ = fs::rename(&path, &aside);
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e,
                    error_kind = crate::telemetry::io_error_kind(&e), "cannot read state file; starting a new epoch");
                None
            }
        };
        let state = match loaded {
            Some(s) => StateDir {
                dir: dir.to_path_buf(),
                epoch: s.epoch,
                previous: Some((s.clean, s.next.clone())),
                file: Mutex::new(s.next),
            },
            None => {
                let s = StateDir {
                    dir: dir.to_path_buf(),
                    epoch: new_epoch(),
                    file: Mutex::new(BTreeMap::new()),
                    previous: None,
                };
                s.write(&BTreeMap::new(), true)?;
                tracing::info!(epoch = %s.epoch, state_dir = %dir.display(), "new epoch");
                s
            }
        };
        Ok(Arc::new(state))
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence allocator for one sensor, continuing where the last run
    /// stopped (or reserved).
    pub fn allocator(self: &Arc<Self>, sensor: &str) -> SeqAllocator {
        let next = *self.lock().get(sensor).unwrap_or(&0);
        SeqAllocator {
            state: self.clone(),
            sensor: sensor.to_string(),
            next,
            reserved_until: next,
            block: RESERVE_BLOCK,
            reserved_at: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, sensor: &str, next: u64) -> Result<(), StateError> {
        let mut map = self.lock();
        map.insert(sensor.to_string(), next);
        self.write(&map, false)
    }

    /// Records that this run stopped cleanly (after every allocator was
    /// closed), so the next start does not report possible losses.
    pub fn mark_clean(&self) -> Result<(), StateError> {
        let map = self.lock();
        self.write(&map, true)
    }

    /// When the previous run did not stop cleanly: per sensor, the first
    /// sequence number it had not reserved. Numbers between the last one
    /// that reached the spool and this may have been read and lost.
    pub fn unclean_previous_run(&self) -> Option<&BTreeMap<String, u64>> {
        match &self.previous {
            Some((false, next)) => Some(next),
            _ => None,
        }
    }

    /// When the previous run stopped cleanly: per sensor, the first
    /// sequence number it never used.
    pub fn clean_previous_run(&self) -> Option<&BTreeMap<String, u64>> {
        match &self.previous {
            Some((true, next)) => Some(next),
            _ => None,
        }
    }

    /// Write-temp, fsync, rename, fsync the directory: after a power cut
    /// the file is either the old or the new version.
    fn write(&self, next: &BTreeMap<String, u64>, clean: bool) -> Result<(), StateError> {
        let path = self.dir.join(STATE_FILE);
        let err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(&StateFile {
            epoch: self.epoch.clone(),
            clean,
            next: next.clone(),
        })
        .expect("state serializes");
        super::disk::write_atomic(&self.dir, STATE_FILE, &body).map_err(err)
    }
}

fn new_epoch() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The size of the next block: doubled when the last one lasted less than
/// [`RESERVE_PERIOD`], halved when it lasted ten periods or more, within
/// [`RESERVE_BLOCK`] ..= [`MAX_RESERVE_BLOCK`].
fn next_block(block: u64, last_lasted: Option<std::time::Duration>) -> u64 {
    match last_lasted {
        Some(d) if d < RESERVE_PERIOD => (block * 2).min(MAX_RESERVE_BLOCK),
        Some(d) if d >= RESERVE_PERIOD * 10 => (block / 2).max(RESERVE_BLOCK),
        _ => block,
    }
}

/// Hands out one sensor's sequence numbers, reserving them in blocks.
#[derive(Debug)]
pub struct SeqAllocator {
    state: Arc<StateDir>,
    sensor: String,
    next: u64,
    reserved_until: u64,
    /// Numbers the next reservation takes (see [`MAX_RESERVE_BLOCK`]).
    block: u64,
    /// When the last block was reserved.
    reserved_at: Option<std::time::Instant>,
}

impl SeqAllocator {
    /// The next sequence number. When a new block must be reserved and the
    /// state file cannot be written (disk full), the number is still given
    /// out and the error returned beside it, so reading goes on; the next
    /// number retries the write.
    pub fn allocate(&mut self) -> (u64, Option<StateError>) {
        let mut error = None;
        if self.next >= self.reserved_until {
            let now = std::time::Instant::now();
            self.block = next_block(self.block, self.reserved_at.map(|t| now - t));
            let until = self.next + self.block;
            match self.state.record(&self.sensor, until) {
                Ok(()) => {
                    self.reserved_until = until;
                    self.reserved_at = Some(now);
                }
                Err(e) => error = Some(e),
            }
        }
        let seq = self.next;
        self.next += 1;
        (seq, error)
    }

    /// The number the next record will get.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// Records the exact next number (clean stop), so the next run goes on
    /// without a gap.
    pub fn close(self) -> Result<(), StateError> {
        self.state.record(&self.sensor, self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_sensor_reserves_bigger_blocks_and_a_slow_one_smaller() {
        let s = std::time::Duration::from_secs;
        assert_eq!(next_block(RESERVE_BLOCK, None), RESERVE_BLOCK);
        assert_eq!(next_block(RESERVE_BLOCK, Some(s(1))), 2 * RESERVE_BLOCK);
        assert_eq!(next_block(MAX_RESERVE_BLOCK, Some(s(1))), MAX_RESERVE_BLOCK);
        assert_eq!(
            next_block(8 * RESERVE_BLOCK, Some(s(30))),
            8 * RESERVE_BLOCK
        );
        assert_eq!(
            next_block(8 * RESERVE_BLOCK, Some(s(100))),
            4 * RESERVE_BLOCK
        );
        assert_eq!(next_block(RESERVE_BLOCK, Some(s(1000))), RESERVE_BLOCK);
        // 200k records/s: blocks grow until one lasts about a period.
        let (mut block, mut writes) = (RESERVE_BLOCK, 0);
        let mut used = 0u64;
        while used < 200_000 * 60 {
            let lasted = std::time::Duration::from_secs_f64(block as f64 / 200_000.0);
            used += block;
            writes += 1;
            block = next_block(block, Some(lasted));
        }
        assert!(
            writes < 20,
            "{writes} state writes in a minute at 200k records/s"
        );
    }

    #[test]
    fn fast_allocation_writes_the_state_file_rarely() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut a = state.allocator("bike");
        let mut reservations = 0;
        let mut last = 0;
        for _ in 0..200_000 {
            a.allocate();
            if a.reserved_until != last {
                reservations += 1;
                last = a.reserved_until;
            }
        }
        // 4096, 8192, ... doubling: 200k numbers take 6 writes, not 49.
        assert!(reservations <= 6, "{reservations}");
    }

    #[test]
    fn sequence_continues_after_clean_stop_and_never_repeats_after_crash() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let epoch = state.epoch().to_string();
        let mut a = state.allocator("bike");
        for i in 0..10 {
            assert_eq!(a.allocate().0, i);
        }
        a.close().unwrap();
        state.mark_clean().unwrap();
        drop(state);

        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(state.epoch(), epoch);
        assert!(state.unclean_previous_run().is_none());
        let mut a = state.allocator("bike");
        assert_eq!(a.allocate().0, 10);
        // Crash: the allocator is dropped without close.
        drop(a);
        drop(state);

        let state = StateDir::open(dir.path()).unwrap();
        let unclean = state.unclean_previous_run().expect("the crash is seen");
        assert_eq!(unclean["bike"], 10 + RESERVE_BLOCK);
        let mut a = state.allocator("bike");
        let (seq, err) = a.allocate();
        assert!(err.is_none());
        assert_eq!(seq, 10 + RESERVE_BLOCK, "jumps past the reserved block");
        assert_eq!(state.allocator("gps").peek(), 0);
    }

    #[test]
    fn a_corrupt_state_file_starts_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path()).unwrap().epoch().to_string();
        fs::write(dir.path().join(STATE_FILE), b"{garbage").unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert_ne!(state.epoch(), first);
        assert!(dir.path().join("sequences.json.corrupt").exists());
    }
}
