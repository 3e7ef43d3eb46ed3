//! Figures: printed as `name value unit` lines and kept for
//! `target/bench/e2e.json`, with the machine's context.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::Options;

pub struct Report {
    bench: &'static str,
    opts: serde_json::Value,
    machine: serde_json::Value,
    figures: Vec<serde_json::Value>,
}

impl Report {
    pub fn new(bench: &'static str, opts: &Options) -> Report {
        Report {
            bench,
            opts: json!({
                "runs": opts.runs,
                "outage_s": opts.outage.as_secs(),
                "only": opts.only,
            }),
            machine: json!({
                "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
                "loadavg_at_start": loadavg(),
                "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            }),
            figures: Vec::new(),
        }
    }

    /// One figure: printed now, and kept with the runs it came from.
    pub fn figure(&mut self, name: &str, value: f64, unit: &str, runs: &[f64]) {
        let digits = if value.abs() >= 100.0 {
            0
        } else if value.abs() >= 1.0 {
            2
        } else {
            4
        };
        println!("{name} {value:.digits$} {unit}");
        self.figures.push(json!({
            "name": name, "value": value, "unit": unit, "runs": runs,
        }));
    }

    /// The median of `runs` as one figure.
    pub fn median(&mut self, name: &str, unit: &str, runs: &[f64]) -> f64 {
        let m = median(runs);
        self.figure(name, m, unit, runs);
        m
    }

    pub fn write(&self, took: Duration) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        fs::create_dir_all(&dir).expect("target/bench");
        let path = dir.join(format!("{}.json", self.bench));
        let doc = json!({
            "bench": self.bench,
            "command": "scripts/bench",
            "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "statistic": "median",
            "options": self.opts,
            "duration_s": took.as_secs_f64(),
            "machine": self.machine,
            "loadavg_at_end": loadavg(),
            "figures": self.figures,
        });
        let text = serde_json::to_string_pretty(&doc).expect("the report serializes");
        fs::write(&path, text + "\n").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        progress(&format!(
            "e2e bench: done in {:.0} s; figures in {}",
            took.as_secs_f64(),
            path.display()
        ));
    }
}

pub fn median(runs: &[f64]) -> f64 {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `/proc/loadavg`: the machine is shared, so say how busy it was.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Progress goes to stderr; figures to stdout.
pub fn progress(line: &str) {
    eprintln!("{line}");
}
