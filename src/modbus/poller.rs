//! The poller of one Modbus RTU bus: the sensors (slaves) that name one
//! device, polled in turn on the one port, each into its own stream of
//! records.
//!
//! A poll reads every request of the slave's plan; all answered, its
//! values make one record, stamped when the last answer arrived. A request
//! that fails (no answer, an exception, garbage) ends the poll with no
//! record, counted under its reason, and the slave backs off
//! ([`super::schedule`]) while the others keep their rate. A port that
//! fails (the adapter unplugged) is reopened with the serial readers'
//! backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::bus::{Answer, Bus, BusError};
use super::plan::{Request, Span, Table};
use super::schedule::{Change, MAX_BACKOFF, Outcome, Schedule};
use super::slave::{Point, Reading};
use super::value::Order;
use crate::backoff::Backoff;
use crate::batch::Batcher;
use crate::clock::ClockMark;
use crate::config::{self, RegisterTable};
use crate::record::Record;
use crate::serial::counters::SensorCounters;
use crate::serial::reject::Reject;
use crate::serial::{open_port, receive_time};
use crate::spool::sequences::SeqAllocator;
use crate::telemetry::{self, RateLimit, Stats};

const REOPEN_MIN: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// A slave's turnaround allowed on top of its answer's time on the wire,
/// for the default `timeout`.
const TURNAROUND: Duration = Duration::from_millis(100);
/// At most one line per slave and this period for values that cannot be
/// read (a NaN from a meter that has no reading yet).
const VALUE_LOG_PERIOD: Duration = Duration::from_secs(60);

/// One slave, ready to poll.
#[derive(Debug)]
pub struct Slave {
    name: Arc<str>,
    unit: u8,
    poll: Duration,
    reading: Reading,
    /// One per request of `reading`.
    timeouts: Vec<Duration>,
    counters: Arc<SensorCounters>,
}

impl Slave {
    /// The slave of a validated `modbus_rtu` sensor.
    pub fn new(sensor: &config::Sensor) -> Slave {
        let name: Arc<str> = Arc::from(sensor.name.as_str());
        let points = sensor.registers.iter().map(point).collect();
        let reading =
            Reading::new(points, sensor.max_gap).expect("validation checked every register");
        let bits = bits_per_char(sensor);
        let timeouts = reading
            .requests()
            .iter()
            .map(|r| {
                sensor
                    .timeout
                    .unwrap_or_else(|| default_timeout(r, sensor.baud, bits))
            })
            .collect();
        Slave {
            counters: Arc::new(SensorCounters::new(Arc::clone(&name))),
            name,
            unit: sensor.unit.and_then(|u| u8::try_from(u).ok()).unwrap_or(1),
            poll: sensor.poll,
            reading,
            timeouts,
        }
    }

    pub fn counters(&self) -> &Arc<SensorCounters> {
        &self.counters
    }
}

/// The point of one configured register (validated).
fn point(r: &config::Register) -> Point {
    let table = match r.table {
        RegisterTable::Holding => Table::Holding,
        RegisterTable::Input => Table::Input,
        RegisterTable::Coil => Table::Coil,
        RegisterTable::Discrete => Table::Discrete,
    };
    let kind = r.kind();
    let len = if table.is_bits() { 1 } else { kind.registers() };
    let order = r
        .order
        .as_deref()
        .map_or(Ok(Order::default()), |o| Order::parse(o, kind))
        .expect("validation checked the order");
    Point {
        name: Arc::from(r.name.as_str()),
        span: Span {
            table,
            address: r.address as u16,
            len,
        },
        kind,
        order,
        linear: (r.scale.is_some() || r.offset.is_some())
            .then(|| (r.scale.unwrap_or(1.0), r.offset.unwrap_or(0.0))),
    }
}

/// Bits of one character: start, data, parity and stop bits.
fn bits_per_char(s: &config::Sensor) -> u32 {
    let parity = u32::from(s.parity != config::Parity::None);
    1 + u32::from(s.data_bits) + parity + u32::from(s.stop_bits)
}

/// The default timeout of `request`: [`TURNAROUND`] plus the time its
/// longest answer (unit, function, byte count, data, CRC) takes at `baud`.
pub fn default_timeout(request: &Request, baud: u32, bits_per_char: u32) -> Duration {
    let data = if request.table.is_bits() {
        u64::from(request.count).div_ceil(8)
    } else {
        u64::from(request.count) * 2
    };
    let bytes = 5 + data;
    let micros = bytes * u64::from(bits_per_char) * 1_000_000 / u64::from(baud.max(1));
    TURNAROUND + Duration::from_micros(micros)
}

/// The slaves that share one device, and their streams.
pub struct BusSource {
    device: PathBuf,
    /// The first sensor's port settings (validation checked that the
    /// others agree).
    settings: config::Sensor,
    slaves: Vec<Slave>,
}

impl BusSource {
    /// The `modbus_rtu` sensors of `sensors` grouped by device, in the
    /// order each device first appears.
    pub fn group(sensors: &[config::Sensor]) -> Vec<BusSource> {
        let mut buses: Vec<BusSource> = Vec::new();
        for s in sensors
            .iter()
            .filter(|s| s.framing == config::Framing::ModbusRtu)
        {
            match buses.iter_mut().find(|b| b.device == s.device) {
                Some(bus) => bus.slaves.push(Slave::new(s)),
                None => buses.push(BusSource {
                    device: s.device.clone(),
                    settings: s.clone(),
                    slaves: vec![Slave::new(s)],
                }),
            }
        }
        buses
    }

    /// The names of the sensors on this bus, in configured order.
    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.slaves.iter().map(|s| &s.name)
    }

    pub fn counters(&self) -> impl Iterator<Item = &Arc<SensorCounters>> {
        self.slaves.iter().map(|s| &s.counters)
    }

    /// For a bus with a `required` sensor: opens the device once, so that a
    /// missing one stops the start.
    pub fn check_required(
        &self,
        sensors: &[config::Sensor],
    ) -> Result<(), crate::serial::OpenError> {
        let required = sensors
            .iter()
            .find(|s| s.device == self.device && s.required);
        match required {
            None => Ok(()),
            Some(s) => open_port(s)
                .map(drop)
                .map_err(|error| crate::serial::OpenError {
                    sensor: s.name.clone(),
                    device: s.device.clone(),
                    error,
                }),
        }
    }

    /// Polls until `stop`; then sends what each slave's batch holds and
    /// returns the slaves' sequence allocators (given in slave order, as
    /// are `batchers`).
    pub async fn run(
        self,
        mut seqs: Vec<SeqAllocator>,
        mut batchers: Vec<Batcher>,
        tx: mpsc::Sender<Vec<Record>>,
        stats: Arc<Stats>,
        stop: CancellationToken,
    ) -> Vec<SeqAllocator> {
        let mut backoff = Backoff::new(REOPEN_MIN, REOPEN_MAX);
        let mut reported_absent = false;
        let device = self.device.display().to_string();
        let mut streams = Streams {
            slaves: &self.slaves,
            seqs: &mut seqs,
            batchers: &mut batchers,
            tx: &tx,
            stats: &stats,
            values: self
                .slaves
                .iter()
                .map(|_| RateLimit::new(VALUE_LOG_PERIOD))
                .collect(),
        };
        while !stop.is_cancelled() {
            match open_port(&self.settings) {
                Ok(port) => {
                    info!(%device, baud = self.settings.baud, rs485 = self.settings.rs485,
                        slaves = self.slaves.len(), "modbus bus opened");
                    backoff.reset();
                    reported_absent = false;
                    for c in self.counters() {
                        c.opens.fetch_add(1, Ordering::Relaxed);
                        c.open.store(true, Ordering::Relaxed);
                    }
                    Stats::add(&stats.sensors_open, self.slaves.len() as u64);
                    let bus = Bus::new(port, self.settings.baud, bits_per_char(&self.settings))
                        .local_echo(self.settings.local_echo);
                    let lost = streams.poll(bus, &stop).await;
                    for c in self.counters() {
                        c.open.store(false, Ordering::Relaxed);
                    }
                    stats
                        .sensors_open
                        .fetch_sub(self.slaves.len() as u64, Ordering::Relaxed);
                    match lost {
                        None => break,
                        Some(error) => {
                            for c in self.counters() {
                                c.lost.fetch_add(1, Ordering::Relaxed);
                            }
                            Stats::add(&stats.serial_lost, 1);
                            warn!(%device, %error, "modbus bus lost; reopening with backoff (0.5 s up to 30 s)");
                        }
                    }
                }
                Err(e) => {
                    if !reported_absent {
                        warn!(%device, error = %e, error_kind = telemetry::error_kind(&e),
                            "cannot open the modbus bus; retrying with backoff (0.5 s up to 30 s)");
                        reported_absent = true;
                    } else {
                        debug!(%device, error = %e, "modbus bus still unavailable");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        streams.flush_all().await;
        seqs
    }
}

/// The slaves' streams: sequence numbers, batches, and where batches go.
struct Streams<'a> {
    slaves: &'a [Slave],
    seqs: &'a mut [SeqAllocator],
    batchers: &'a mut [Batcher],
    tx: &'a mpsc::Sender<Vec<Record>>,
    stats: &'a Stats,
    values: Vec<RateLimit>,
}

impl Streams<'_> {
    /// Polls on `bus` until `stop` (`None`) or until the port fails (its
    /// error).
    async fn poll(&mut self, mut bus: Bus, stop: &CancellationToken) -> Option<String> {
        let polls: Vec<Duration> = self.slaves.iter().map(|s| s.poll).collect();
        let mut schedule = Schedule::new(&polls, Instant::now());
        loop {
            let (i, due) = schedule.next().expect("a bus has at least one slave");
            let linger = self.batchers.iter().filter_map(Batcher::deadline).min();
            let wake = linger.map_or(due, |l| l.min(due));
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep_until(wake) => {}
            }
            if !self.flush_due().await {
                return None;
            }
            if Instant::now() < due {
                continue;
            }
            let slave = &self.slaves[i];
            match poll_slave(&mut bus, slave).await {
                Ok(answers) => {
                    let at = self.batchers[i].stamp();
                    let change = schedule.done(i, Instant::now(), Outcome::Answered);
                    if let Some(Change::Back { after }) = change {
                        info!(sensor = %slave.name, unit = slave.unit, after_s = after.as_secs_f64(),
                            "modbus slave answering again");
                    }
                    if !self.record(i, &answers, at).await {
                        return None;
                    }
                }
                Err((_, BusError::Port(e))) => return Some(e.to_string()),
                Err((request, error)) => {
                    let reason = match error {
                        BusError::Timeout(_) => Reject::NoAnswer,
                        BusError::Exception { .. } => Reject::Exception,
                        _ => Reject::Garbage,
                    };
                    slave.counters.reject(reason);
                    Stats::add(&self.stats.frames_malformed, 1);
                    let req = slave.reading.requests()[request];
                    let change = schedule.done(i, Instant::now(), Outcome::Failed);
                    if change == Some(Change::Failing) {
                        warn!(sensor = %slave.name, unit = slave.unit, table = %req.table,
                            address = req.start, count = req.count, %error, %reason,
                            "modbus slave failing; its polls back off (up to {} s), the bus goes on",
                            MAX_BACKOFF.max(slave.poll).as_secs());
                    } else {
                        debug!(sensor = %slave.name, unit = slave.unit, %error, "modbus poll failed again");
                    }
                }
            }
        }
    }

    /// Adds the record of slave `i`'s answers to its batch, sending the
    /// batch on when full. False when the next stage is gone.
    async fn record(&mut self, i: usize, answers: &[Answer], at: (SystemTime, ClockMark)) -> bool {
        let slave = &self.slaves[i];
        let fields = match slave.reading.fields(answers, self.batchers[i].fields()) {
            Ok(fields) => fields,
            Err(error) => {
                slave.counters.reject(Reject::Type);
                Stats::add(&self.stats.frames_malformed, 1);
                if let Some(suppressed) = self.values[i].check(std::time::Instant::now()) {
                    warn!(sensor = %slave.name, unit = slave.unit, %error, suppressed,
                        "modbus poll answered with a value that cannot be read; no record for this poll");
                }
                return true;
            }
        };
        let (seq, state_error) = self.seqs[i].allocate();
        if let Some(error) = state_error {
            warn!(sensor = %slave.name, %error, "cannot reserve sequence numbers on disk; a crash now may reuse them");
        }
        let record = Record {
            sensor: Arc::clone(&slave.name),
            seq,
            ts: receive_time(at.0),
            clock: Some(at.1),
            fields,
        };
        Stats::add(&self.stats.records_read, 1);
        slave.counters.records.fetch_add(1, Ordering::Relaxed);
        match self.batchers[i].push(record, Instant::now) {
            Some(batch) => self.tx.send(batch).await.is_ok(),
            None => true,
        }
    }

    /// Sends every batch whose `linger` is up. False when the next stage
    /// is gone.
    async fn flush_due(&mut self) -> bool {
        let now = Instant::now();
        for batcher in self.batchers.iter_mut() {
            if batcher.deadline().is_some_and(|d| d <= now) {
                if let Some(batch) = batcher.take() {
                    if self.tx.send(batch).await.is_err() {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Sends every open batch (at a stop).
    async fn flush_all(&mut self) {
        for batcher in self.batchers.iter_mut() {
            if let Some(batch) = batcher.take() {
                if self.tx.send(batch).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One poll of `slave`: every request's answer, or the first that failed
/// (its index and why).
async fn poll_slave(bus: &mut Bus, slave: &Slave) -> Result<Vec<Answer>, (usize, BusError)> {
    let mut answers = Vec::with_capacity(slave.reading.requests().len());
    for (r, (request, timeout)) in slave
        .reading
        .requests()
        .iter()
        .zip(&slave.timeouts)
        .enumerate()
    {
        answers.push(
            bus.read(slave.unit, request, *timeout)
                .await
                .map_err(|e| (r, e))?,
        );
    }
    Ok(answers)
}
