//! Per-sensor counters: what each device delivered and why frames were
//! rejected, so an operator can tell which sensor is noisy and how.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::reject::Reject;

/// Counters of one sensor, shared between its source and the reporting.
#[derive(Debug)]
pub struct SensorCounters {
    pub name: Arc<str>,
    /// Records decoded and handed on.
    pub records: AtomicU64,
    /// Frames that were not readings and not errors (header lines, NMEA
    /// sentence types that are not decoded).
    pub skipped: AtomicU64,
    /// Times the device was opened, and lost after being open.
    pub opens: AtomicU64,
    pub lost: AtomicU64,
    /// Whether the device is open now.
    pub open: AtomicBool,
    rejected: [AtomicU64; Reject::ALL.len()],
}

impl SensorCounters {
    pub fn new(name: Arc<str>) -> SensorCounters {
        SensorCounters {
            name,
            records: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            open: AtomicBool::new(false),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub fn reject(&self, reason: Reject) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Every reason with a non-zero count, in [`Reject::ALL`] order.
    pub fn rejections(&self) -> Vec<(Reject, u64)> {
        Reject::ALL
            .iter()
            .map(|r| (*r, self.rejected(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// `checksum=3 too_long=1`, or `none`: for the stats line.
    pub fn rejections_text(&self) -> String {
        let parts: Vec<String> = self
            .rejections()
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(" ")
        }
    }
}

/// Bytes as a log-safe string: printable ASCII as is, everything else
/// escaped (`\x00`, `\n`), at most `max` input bytes, with `...` when cut.
pub fn escape_sample(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len() > max;
    let mut out: String = bytes[..bytes.len().min(max)].escape_ascii().to_string();
    if cut {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_counted_per_reason() {
        let c = SensorCounters::new(Arc::from("gps"));
        assert_eq!(c.rejections_text(), "none");
        c.reject(Reject::Checksum);
        c.reject(Reject::Checksum);
        c.reject(Reject::TooLong);
        assert_eq!(c.rejected(Reject::Checksum), 2);
        assert_eq!(c.rejections_text(), "too_long=1 checksum=2");
    }

    #[test]
    fn samples_are_escaped_and_truncated() {
        assert_eq!(escape_sample(b"ok,1", 10), "ok,1");
        assert_eq!(escape_sample(b"a\x00\n\xffb", 10), "a\\x00\\n\\xffb");
        assert_eq!(escape_sample(b"abcdef", 3), "abc...");
    }

    #[test]
    fn reject_indexes_match_all() {
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
