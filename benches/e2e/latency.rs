//! Latency: how long a reading takes from the serial port to a consumer.
//!
//! Four simulated sensors write 50 lines per second each (a realistic
//! load, far below what the gateway can take) for 16 s into real
//! pseudo-terminals; the real gateway reads, batches, seals, spools and
//! publishes them to mosquitto over mutual TLS, and a subscriber on the
//! same machine receives them. The latency of a record is measured entirely
//! on the bench side with one monotonic clock: from the moment its line was
//! handed to the terminal (the writer thread notes an `Instant` per line)
//! to the moment the subscriber's event loop received the MQTT message
//! holding it. The message is opened afterwards, off the receiving thread,
//! to learn which (sensor, seq) it holds; seq `i` is line `i` because every
//! line is valid.
//!
//! It runs with `[batch] linger` at the product default (200 ms, set
//! explicitly: the test rig's own default is 50 ms) and at 0, where a
//! record goes out as soon as the seal stage takes it. The batch bound,
//! `max_records = 100`, is never reached at this rate, so linger decides.
//! Each configuration gets a fresh rig (broker, keys, state directory), so
//! sequence numbers start at 0 and no spool is left from a previous run.
//!
//! Figures per configuration, the median over `--runs`: the p50, p99 and
//! maximum over all records of a run, and the p50 of the part before the
//! gateway (write → the frame's receive time `ts`, on the wall clock),
//! which shows how much of the latency is the serial side. Goal (issue 9):
//! p99 ≤ linger + 20 ms.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{Client, ConnectReturnCode, Event, Packet, QoS, RecvTimeoutError};
use sensorgate::demo::pty::{Pty, sim_line};

use crate::Options;
use crate::report::{self, Report};
use crate::support::{self, GatewayProcess, Rig};

/// Sensors written at once.
const SENSORS: usize = 4;
/// Lines per second per sensor.
const RATE: f64 = 50.0;
/// How long each run writes.
const TRAFFIC: Duration = Duration::from_secs(16);
/// Slack for the gateway to come up, and for the last records after the
/// writers finished.
const WAIT: Duration = Duration::from_secs(30);

pub fn run(opts: &Options, report: &mut Report) {
    // (figure name part, linger as written in the configuration, in ms)
    let configs = [("default", "200ms", 200.0), ("0", "0ms", 0.0)];
    for (label, linger, linger_ms) in configs {
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        let mut max = Vec::new();
        let mut serial_p50 = Vec::new();
        for run in 1..=opts.runs {
            let r = one_run(linger);
            report::progress(&format!(
                "latency linger {linger}, run {run}/{}: {} records, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, serial side p50 {:.2} ms",
                opts.runs, r.records, r.p50, r.p99, r.max, r.serial_p50
            ));
            p50.push(r.p50);
            p99.push(r.p99);
            max.push(r.max);
            serial_p50.push(r.serial_p50);
        }
        let name = format!("latency_linger_{label}");
        report.median(&format!("{name}_p50_ms"), "ms", &p50);
        let p99 = report.median(&format!("{name}_p99_ms"), "ms", &p99);
        report.median(&format!("{name}_max_ms"), "ms", &max);
        report.median(&format!("{name}_serial_p50_ms"), "ms", &serial_p50);
        let goal = linger_ms + 20.0;
        report::progress(&format!(
            "goal (linger {linger}): p99 <= {goal:.0} ms: {} ({p99:.1} ms)",
            if p99 <= goal { "met" } else { "MISSED" }
        ));
    }
}

/// What one run measured, in milliseconds.
struct RunLatency {
    records: usize,
    p50: f64,
    p99: f64,
    max: f64,
    serial_p50: f64,
}

fn one_run(linger: &str) -> RunLatency {
    let rig = Rig::new();
    let ptys: Vec<Pty> = (0..SENSORS)
        .map(|_| Pty::open().expect("open a pseudo-terminal"))
        .collect();
    let names: Vec<String> = (0..SENSORS).map(|s| format!("s{s}")).collect();
    let sensors: Vec<(&str, &std::path::Path)> = names
        .iter()
        .zip(&ptys)
        .map(|(n, p)| (n.as_str(), p.path()))
        .collect();
    let config = set_linger(&rig.gateway_config("latency.toml", &sensors, ""), linger);

    let arrivals = Arrivals::connect(&rig);
    let gw = GatewayProcess::start(&config);
    wait_until_ready(&gw, SENSORS);

    let per_sensor = (RATE * TRAFFIC.as_secs_f64()) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let writers: Vec<_> = ptys
        .iter()
        .map(|p| paced_writer(p.writer().expect("PTY writer"), per_sensor, RATE, start))
        .collect();
    let written: Vec<Vec<(Instant, SystemTime)>> = writers
        .into_iter()
        .map(|w| {
            // The writers end on schedule; a gateway that stops reading
            // blocks them, so bound the wait.
            assert!(
                support::wait_until(TRAFFIC + WAIT, Duration::from_millis(50), || w
                    .is_finished()),
                "a simulated sensor was still blocked: the gateway stopped reading\n{}",
                support::excerpt(&gw.log())
            );
            w.join().expect("writer thread").expect("write to the PTY")
        })
        .collect();

    let total = per_sensor as usize * SENSORS;
    arrivals.wait_for_distinct(total as u64, WAIT);
    let tally = arrivals.tally();
    assert!(
        tally.distinct >= total as u64 && tally.rejected.is_empty(),
        "{} of {total} records arrived within {WAIT:?} after the writers finished; rejected: {:?}\n{}",
        tally.distinct,
        tally.rejected,
        support::excerpt(&gw.log())
    );
    support::assert_no_panic(&gw.log());

    let mut latencies = Vec::with_capacity(total);
    let mut serial = Vec::with_capacity(total);
    for (s, name) in names.iter().enumerate() {
        let got = &tally.records[name];
        for (i, (wrote, wrote_wall)) in written[s].iter().enumerate() {
            let arrival = got[i].expect("every record arrived");
            latencies.push(ms(arrival.at.saturating_duration_since(*wrote)));
            if let Some(ts) = arrival.ts {
                serial.push(ts.duration_since(*wrote_wall).map_or(0.0, ms));
            }
        }
    }
    RunLatency {
        records: latencies.len(),
        p50: percentile(&mut latencies, 0.50),
        p99: percentile(&mut latencies, 0.99),
        max: percentile(&mut latencies, 1.0),
        serial_p50: percentile(&mut serial, 0.50),
    }
}

/// The rig writes `linger = "50ms"` (fast tests); the benchmark sets what it
/// measures. Rewrites the file in place and returns its path.
fn set_linger(config: &std::path::Path, linger: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(config).expect("read the gateway configuration");
    assert!(
        text.contains("linger = \"50ms\""),
        "the rig's configuration no longer sets linger = \"50ms\":\n{text}"
    );
    let text = text.replace("linger = \"50ms\"", &format!("linger = {linger:?}"));
    std::fs::write(config, text).expect("write the gateway configuration");
    config.to_path_buf()
}

/// Waits (bounded) until the gateway is connected to the broker and has
/// opened all `sensors` devices, so that start-up is not measured.
pub(crate) fn wait_until_ready(gw: &GatewayProcess, sensors: usize) {
    let ready = support::wait_until(WAIT, Duration::from_millis(50), || {
        let log = gw.log();
        log.contains("connected to broker")
            && log.matches("serial device opened").count() >= sensors
    });
    assert!(
        ready,
        "the gateway was not connected with {sensors} devices open within {WAIT:?}\n{}",
        support::excerpt(&gw.log())
    );
}

/// Writes `sim_line(i)` for `i` in `0..count` at `start + i / rate`, and
/// returns when each line was handed to the terminal (monotonic and wall
/// clock). The schedule does not drift; a late line is written at once.
fn paced_writer(
    mut writer: std::fs::File,
    count: u64,
    rate: f64,
    start: Instant,
) -> JoinHandle<std::io::Result<Vec<(Instant, SystemTime)>>> {
    thread::Builder::new()
        .name("bench-sensor".into())
        .spawn(move || {
            let period = Duration::from_secs_f64(1.0 / rate);
            let mut written = Vec::with_capacity(count as usize);
            for i in 0..count {
                let due = start + period.mul_f64(i as f64);
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
                let mut line = sim_line(i);
                line.push('\n');
                written.push((Instant::now(), SystemTime::now()));
                writer.write_all(line.as_bytes())?;
            }
            Ok(written)
        })
        .expect("spawn a writer thread")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile (0..=1, nearest rank) of `v`; sorts it.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// When a record reached the subscriber, and the gateway's receive time of
/// its frame (`ts`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub at: Instant,
    pub ts: Option<SystemTime>,
}

/// What the subscriber has seen so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    /// Per sensor, indexed by seq: when the record first arrived.
    pub records: HashMap<String, Vec<Option<Arrival>>>,
    /// Distinct records received.
    pub distinct: u64,
    /// Records received again (QoS 1 redelivery, resends after an outage).
    pub duplicates: u64,
    /// Messages that did not open, with the reason.
    pub rejected: Vec<String>,
    /// When the latest message that brought a new record arrived.
    pub last_new: Option<Instant>,
}

/// A subscriber (QoS 1, mutual TLS, persistent session, so it survives a
/// broker restart) that notes when each sealed message arrives and opens
/// it on a second thread, so the time it takes to verify and decrypt does
/// not delay the next arrival. `support::Subscriber` keeps payloads
/// without arrival times, hence this one.
pub(crate) struct Arrivals {
    tally: Arc<(Mutex<Tally>, Condvar)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Arrivals {
    /// Connects to the rig's broker, subscribes to every gateway topic and
    /// returns once the broker acknowledged the subscription (panics after
    /// 10 s).
    pub fn connect(rig: &Rig) -> Arrivals {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let client_id = format!(
            "bench-sub-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let identity = rig
            .pki
            .client("bench-consumer")
            .expect("consumer certificate");
        let tls = sensorgate::demo::pki::rustls_client_config(&rig.pki.ca_pem(), &identity)
            .expect("subscriber TLS configuration");
        let mut options = support::mqtt_options(&client_id, rig.broker.port(), tls);
        options.set_clean_session(false);
        let (client, mut connection) = Client::new(options, 100);

        let tally = Arc::new((Mutex::new(Tally::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed_rx) = mpsc::channel::<Result<(), String>>();
        let (payload_tx, payload_rx) = mpsc::channel::<(Instant, Vec<u8>)>();

        let receiver = {
            let stop = stop.clone();
            thread::Builder::new()
                .name(client_id.clone())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match connection.recv_timeout(Duration::from_millis(100)) {
                            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                                let at = Instant::now();
                                if !p.topic.ends_with("/status") {
                                    let _ = payload_tx.send((at, p.payload.to_vec()));
                                }
                            }
                            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                                if ack.code == ConnectReturnCode::Success {
                                    let _ = client.try_subscribe("sensorgate/#", QoS::AtLeastOnce);
                                } else {
                                    let _ =
                                        subscribed_tx.send(Err(format!("CONNACK {:?}", ack.code)));
                                }
                            }
                            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                                let _ = subscribed_tx.send(Ok(()));
                            }
                            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                            Ok(Err(_)) => {
                                // The broker is down (an outage): the next
                                // poll reconnects; don't spin.
                                thread::sleep(Duration::from_millis(100));
                            }
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    let _ = client.try_disconnect();
                    let _ = connection.recv_timeout(Duration::from_millis(100));
                })
                .expect("spawn the subscriber thread")
        };

        let opener = {
            let tally = tally.clone();
            let mut opener = rig.opener();
            thread::Builder::new()
                .name("bench-opener".into())
                .spawn(move || {
                    // Ends when the receiver thread drops its sender.
                    for (at, payload) in payload_rx {
                        let (lock, changed) = &*tally;
                        let opened = opener.open(&payload);
                        let mut t = lock.lock().unwrap();
                        match opened {
                            Ok(msg) => {
                                t.duplicates += msg.duplicates;
                                let mut new = 0;
                                for r in msg.records {
                                    let seqs = t.records.entry(r.sensor.clone()).or_default();
                                    let i = r.seq as usize;
                                    if seqs.len() <= i {
                                        seqs.resize(i + 1, None);
                                    }
                                    if seqs[i].is_none() {
                                        let ts = humantime::parse_rfc3339(&r.ts).ok();
                                        seqs[i] = Some(Arrival { at, ts });
                                        new += 1;
                                    } else {
                                        t.duplicates += 1;
                                    }
                                }
                                if new > 0 {
                                    t.distinct += new;
                                    t.last_new = Some(at);
                                }
                            }
                            Err(e) => t.rejected.push(e.to_string()),
                        }
                        drop(t);
                        changed.notify_all();
                    }
                })
                .expect("spawn the opener thread")
        };

        match subscribed_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("bench subscriber refused: {e}\n{}", rig.broker.log()),
            Err(_) => panic!(
                "bench subscriber not subscribed within 10 s\n{}",
                rig.broker.log()
            ),
        }
        Arrivals {
            tally,
            stop,
            threads: vec![receiver, opener],
        }
    }

    /// Waits until at least `count` distinct records arrived (or `timeout`
    /// passed) and returns how many did.
    pub fn wait_for_distinct(&self, count: u64, timeout: Duration) -> u64 {
        let (lock, changed) = &*self.tally;
        let (t, _) = changed
            .wait_timeout_while(lock.lock().unwrap(), timeout, |t| t.distinct < count)
            .unwrap();
        t.distinct
    }

    /// Distinct records received so far.
    pub fn distinct(&self) -> u64 {
        self.tally.0.lock().unwrap().distinct
    }

    /// A copy of everything seen so far.
    pub fn tally(&self) -> Tally {
        self.tally.0.lock().unwrap().clone()
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Bounded: the receiver checks `stop` at least every ~200 ms, and
        // the opener ends when the receiver's sender is gone.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
