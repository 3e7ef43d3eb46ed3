//! What `/proc` says about a process: CPU time and memory.

use std::fs;

/// User + system CPU seconds of `pid` so far (`/proc/<pid>/stat` fields
/// 14 and 15, in clock ticks; Linux uses 100 ticks per second).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resident set size of `pid` now, and its peak (`VmRSS`, `VmHWM`), in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_visible() {
        let pid = std::process::id();
        assert!(super::cpu_seconds(pid).is_some());
        let (rss, peak) = super::rss_kib(pid).unwrap();
        assert!(rss > 0 && peak >= rss);
    }
}
