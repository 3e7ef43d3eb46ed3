//! The end-to-end benchmark (issue 9): the real `sensorgate run` binary
//! (release build), real pseudo-terminals, a real mosquitto with mutual
//! TLS and a real subscriber, against baselines measured in the same run
//! (a bare rumqttc QoS 1 publisher over the same connection).
//!
//! `scripts/bench [SCENARIO...] [--runs N] [--outage SECONDS] [--idle
//! SECONDS]`, or `cargo bench --bench e2e -- ...`. Scenarios: footprint,
//! throughput, latency, memory, storage (default: all). Prints one `name value unit` line per
//! figure and writes `target/bench/e2e.json`.

#[path = "../../tests/support/mod.rs"]
mod support;

mod footprint;
mod latency;
mod memory;
mod proc;
mod report;
mod storage;
mod throughput;

use std::time::{Duration, Instant};

use report::Report;

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs per figure (the median is reported).
    pub runs: usize,
    /// How long the memory scenario keeps the broker down.
    pub outage: Duration,
    /// How long the storage scenario watches an idle gateway.
    pub idle: Duration,
    /// Scenarios to run; empty means all.
    pub only: Vec<String>,
}

impl Options {
    fn from_args() -> Options {
        let mut o = Options {
            runs: 3,
            outage: Duration::from_secs(120),
            idle: Duration::from_secs(120),
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                // cargo bench passes --bench to harness=false targets.
                "--bench" => {}
                "--runs" => o.runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
                "--outage" => {
                    o.outage = Duration::from_secs(
                        args.next()
                            .and_then(|v| v.parse().ok())
                            .expect("--outage SECONDS"),
                    )
                }
                "--idle" => {
                    o.idle = Duration::from_secs(
                        args.next()
                            .and_then(|v| v.parse().ok())
                            .expect("--idle SECONDS"),
                    )
                }
                s if s.starts_with('-') => panic!("unknown option {s}"),
                s => o.only.push(s.to_string()),
            }
        }
        o
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == scenario)
    }
}

type Scenario = fn(&Options, &mut Report);

fn main() {
    let opts = Options::from_args();
    let started = Instant::now();
    let mut report = Report::new("e2e", &opts);
    let scenarios: [(&str, Scenario); 5] = [
        ("footprint", footprint::run),
        ("throughput", throughput::run),
        ("latency", latency::run),
        ("memory", memory::run),
        ("storage", storage::run),
    ];
    for (name, run) in scenarios {
        if opts.wants(name) {
            report::progress(&format!("== {name}"));
            run(&opts, &mut report);
        }
    }
    report.write(started.elapsed());
}
