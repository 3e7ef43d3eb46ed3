//! What `/proc` says about a process: CPU time, context switches and
//! memory.

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

/// Context switches of all the live threads of `pid` so far (voluntary
/// and involuntary, `/proc/<pid>/task/*/status`). A thread that exited in
/// between is missed, so over an interval this is a lower bound; the
/// gateway's threads live as long as it does, except idle blocking-pool
/// threads.
pub fn context_switches(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += field(&status, "voluntary_ctxt_switches:").unwrap_or(0)
            + field(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
    }
    Some(total)
}

/// Resident set size of `pid` now, and its peak (`VmRSS`, `VmHWM`), in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = status(pid)?;
    Some((field(&status, "VmRSS:")?, field(&status, "VmHWM:")?))
}

/// The resident set of `pid` split into anonymous memory (heap, stacks:
/// what the gateway allocated) and file pages (the binary's code and the
/// libraries it touched, shared and reclaimable), in KiB.
pub fn rss_split_kib(pid: u32) -> Option<(u64, u64)> {
    let status = status(pid)?;
    Some((field(&status, "RssAnon:")?, field(&status, "RssFile:")?))
}

fn status(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// The number after `name` in a `/proc/.../status` text (kB for sizes).
fn field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_visible() {
        let pid = std::process::id();
        assert!(super::cpu_seconds(pid).is_some());
        assert!(super::context_switches(pid).is_some_and(|n| n > 0));
        let (rss, peak) = super::rss_kib(pid).unwrap();
        assert!(rss > 0 && peak >= rss);
        let (anon, file) = super::rss_split_kib(pid).unwrap();
        assert!(anon > 0 && file > 0 && anon + file <= rss + 4);
    }
}
