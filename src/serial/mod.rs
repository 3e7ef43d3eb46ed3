//! The serial stage: open a device, frame its bytes, decode frames into
//! records, and keep doing it across unplug and replug.

pub mod counters;
pub mod format;
pub mod framing;
pub mod gather;
pub mod reject;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::batch::Batcher;
use crate::config;
use crate::record::Record;
use crate::spool::sequences::SeqAllocator;
use crate::telemetry::{self, RateLimit, Stats};
use counters::{SensorCounters, escape_sample};
use format::time::TimeField;
use format::{Decode, Decoded, FormatDecoder};
use framing::{Frame, Framer};
use gather::Gather;
use reject::Reject;

const REOPEN_MIN: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// How long a stop waits for the device to finish the frame it is in the
/// middle of sending: a line of 1 KiB takes 90 ms at 115200 baud.
const FINISH_FRAME: Duration = Duration::from_millis(200);
/// Bytes read from a device at a time (and so at most held undecoded).
pub const READ_BUFFER: usize = 8 * 1024;
/// Bytes of a rejected frame shown in its log line.
const LOG_SAMPLE: usize = 48;
/// At most one "frame rejected" line per sensor per this period; the
/// next one says how many were held back (all are counted).
const REJECT_LOG_PERIOD: Duration = Duration::from_secs(20);
/// At most one "serial device lost" line (and its "back" line) per sensor
/// per this period: a device that opens and fails at once (a flaky cable)
/// would otherwise log twice per retry.
const LOST_LOG_PERIOD: Duration = Duration::from_secs(60);

/// One configured sensor, ready to run.
#[derive(Debug, Clone)]
pub struct SensorSource {
    name: Arc<str>,
    sensor: config::Sensor,
    format: FormatDecoder,
    time: Option<TimeField>,
    counters: Arc<SensorCounters>,
}

/// Why a required device could not be opened at start.
#[derive(Debug, thiserror::Error)]
#[error("sensor \"{sensor}\": cannot open {} ({error}); it is `required = true`, so the gateway does not start without it", device.display())]
pub struct OpenError {
    pub sensor: String,
    pub device: PathBuf,
    pub error: tokio_serial::Error,
}

impl OpenError {
    /// sysexits: 66 when the device does not exist, 77 when it may not be
    /// opened (the service user is not in `dialout`), 78 when it refuses a
    /// configured setting, 69 otherwise.
    pub fn exit_code(&self) -> i32 {
        use tokio_serial::ErrorKind;
        match self.error.kind() {
            ErrorKind::NoDevice | ErrorKind::Io(std::io::ErrorKind::NotFound) => 66,
            ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => 77,
            // A setting the port refuses (RS-485 mode, a parity): the
            // configuration's.
            ErrorKind::InvalidInput => 78,
            _ => 69,
        }
    }
}

/// Why reading from an open device ended.
enum ReadEnd {
    Stopped,
    /// The error text and its [`telemetry::error_kind`].
    Lost(String, &'static str),
}

impl SensorSource {
    pub fn new(sensor: &config::Sensor) -> Self {
        let name: Arc<str> = Arc::from(sensor.name.as_str());
        SensorSource {
            counters: Arc::new(SensorCounters::new(name.clone())),
            name,
            format: FormatDecoder::new(sensor),
            time: sensor
                .time_field
                .as_deref()
                .map(|f| TimeField::new(f, sensor.time_format)),
            sensor: sensor.clone(),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn counters(&self) -> &Arc<SensorCounters> {
        &self.counters
    }

    /// For a `required` sensor: opens the device once, so that a missing
    /// one stops the start instead of being retried in the background.
    pub fn check_required(&self) -> Result<(), OpenError> {
        if !self.sensor.required {
            return Ok(());
        }
        self.open().map(drop).map_err(|error| OpenError {
            sensor: self.sensor.name.clone(),
            device: self.sensor.device.clone(),
            error,
        })
    }

    fn open(&self) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
        open_port(&self.sensor)
    }

    /// Reads records, batches them with `batcher` and sends each batch to
    /// `tx`, until `stop` is cancelled or `tx` closes. A device that is
    /// absent or fails is retried with backoff; this never returns an
    /// error. The open batch goes out when the device goes away, so no
    /// record waits for a replug. Returns the allocator so the caller can
    /// record the exact next sequence number.
    ///
    /// Batching here, in the reading task, rather than in a task of its
    /// own, hands the seal stage one batch instead of every record: at
    /// full rate the per-record hand-off and its wake-ups cost more CPU
    /// than decoding (docs/BENCHMARKS.md, issue 9).
    pub async fn run(
        self,
        mut seq: SeqAllocator,
        mut batcher: Batcher,
        tx: mpsc::Sender<Vec<Record>>,
        stats: Arc<Stats>,
        stop: CancellationToken,
    ) -> SeqAllocator {
        let mut backoff = Backoff::new(REOPEN_MIN, REOPEN_MAX);
        let mut reported_absent = false;
        let mut lost_at: Option<Instant> = None;
        let mut losses = RateLimit::new(LOST_LOG_PERIOD);
        // The last loss was not logged: neither is the return.
        let mut quiet_return = false;
        let device = self.sensor.device.display();
        loop {
            if stop.is_cancelled() {
                break;
            }
            match self.open() {
                Ok(port) => {
                    let resolved = resolved(&self.sensor.device);
                    match lost_at.take() {
                        Some(t) if std::mem::take(&mut quiet_return) => {
                            debug!(sensor = %self.name, %device, %resolved,
                                after_s = t.elapsed().as_secs_f64(), "serial device back")
                        }
                        Some(t) => info!(sensor = %self.name, %device, %resolved,
                            after_s = t.elapsed().as_secs_f64(), "serial device back"),
                        None => info!(sensor = %self.name, %device, %resolved,
                            baud = self.sensor.baud, framing = %self.sensor.framing,
                            format = %self.sensor.format, "serial device opened"),
                    }
                    backoff.reset();
                    Stats::add(&stats.sensors_open, 1);
                    self.counters.opens.fetch_add(1, Ordering::Relaxed);
                    self.counters.open.store(true, Ordering::Relaxed);
                    let end = self
                        .read(port, &mut seq, &mut batcher, &tx, &stats, &stop)
                        .await;
                    self.counters.open.store(false, Ordering::Relaxed);
                    stats.sensors_open.fetch_sub(1, Ordering::Relaxed);
                    match end {
                        ReadEnd::Stopped => break,
                        ReadEnd::Lost(error, error_kind) => {
                            Stats::add(&stats.serial_lost, 1);
                            self.counters.lost.fetch_add(1, Ordering::Relaxed);
                            if let Some(suppressed) = losses.check(Instant::now()) {
                                warn!(sensor = %self.name, %device, %error, error_kind, suppressed,
                                    "serial device lost; retrying with backoff (0.5 s up to 30 s)");
                            } else {
                                debug!(sensor = %self.name, %device, %error, error_kind,
                                    "serial device lost again");
                                quiet_return = true;
                            }
                            lost_at = Some(Instant::now());
                            reported_absent = true;
                        }
                    }
                }
                Err(e) => {
                    if reported_absent {
                        debug!(sensor = %self.name, error = %e, "serial device still unavailable");
                    } else {
                        warn!(sensor = %self.name, %device, error = %e,
                            error_kind = telemetry::error_kind(&e),
                            "cannot open serial device; retrying with backoff (0.5 s up to 30 s)");
                        reported_absent = true;
                        lost_at.get_or_insert_with(Instant::now);
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        seq
    }

    async fn read(
        &self,
        port: tokio_serial::SerialStream,
        seq: &mut SeqAllocator,
        batcher: &mut Batcher,
        tx: &mpsc::Sender<Vec<Record>>,
        stats: &Stats,
        stop: &CancellationToken,
    ) -> ReadEnd {
        let port = Gather::new(port, gather::pause_for(self.sensor.baud));
        let mut framed = FramedRead::with_capacity(port, Framer::new(&self.sensor), READ_BUFFER);
        let mut frames = FrameHandler {
            source: self,
            seq,
            batcher,
            tx,
            stats,
            bad_frames: RateLimit::new(REJECT_LOG_PERIOD),
            state_errors: RateLimit::new(Duration::from_secs(60)),
        };
        loop {
            let deadline = frames.batcher.deadline();
            let frame = tokio::select! {
                _ = stop.cancelled() => {
                    // Frames already read from the device are records:
                    // decode them before stopping, and do not cut the one
                    // the device is in the middle of sending.
                    frames.complete_frame(&mut framed).await;
                    frames.finish(&mut framed).await;
                    return ReadEnd::Stopped;
                }
                f = framed.next() => f,
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                    if deadline.is_some() => {
                    // `linger` is up: the batch goes out, full or not.
                    if !frames.flush().await {
                        return ReadEnd::Stopped;
                    }
                    continue;
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    if !frames.handle(frame).await {
                        return ReadEnd::Stopped;
                    }
                }
                Some(Err(e)) => {
                    frames.finish(&mut framed).await;
                    return ReadEnd::Lost(e.to_string(), telemetry::io_error_kind(&e));
                }
                None => {
                    frames.finish(&mut framed).await;
                    return ReadEnd::Lost("device closed".into(), "closed");
                }
            }
        }
    }
}

/// Opens the configured path anew, with every port setting. The path is
/// resolved by the kernel at each open, so a `/dev/serial/by-id/` link
/// follows an adapter that came back under another `ttyUSBn`.
pub fn open_port(s: &config::Sensor) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    if s.rs485 {
        rs485_mode(s)?;
    }
    tokio_serial::new(s.device.to_string_lossy(), s.baud)
        .data_bits(match s.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .parity(match s.parity {
            config::Parity::None => tokio_serial::Parity::None,
            config::Parity::Odd => tokio_serial::Parity::Odd,
            config::Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(match s.stop_bits {
            2 => tokio_serial::StopBits::Two,
            _ => tokio_serial::StopBits::One,
        })
        .flow_control(match s.flow_control {
            config::FlowControl::None => tokio_serial::FlowControl::None,
            config::FlowControl::Software => tokio_serial::FlowControl::Software,
            config::FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        })
        .open_native_async()
}

/// Puts the port in the kernel's RS-485 mode, with the sensor's RTS
/// delays. The mode belongs to the port, not to an open file: the kernel
/// keeps it after this short-lived handle is closed, for the stream
/// opened next. The mode is read back, since some drivers accept the
/// request and ignore it.
fn rs485_mode(s: &config::Sensor) -> Result<(), tokio_serial::Error> {
    use serial2::rs4xx::{Rs485Config, TransceiverMode};
    let refused = |why: String| {
        tokio_serial::Error::new(
            tokio_serial::ErrorKind::InvalidInput,
            format!(
                "{} cannot be put in RS-485 mode ({why}); rs485 = true is for a UART whose driver drives the transceiver's direction (the Pi's own UART with an RS-485 HAT), while a USB RS-485 adapter switches direction itself: set rs485 = false for it",
                s.device.display()
            ),
        )
    };
    let port = serial2::SerialPort::open(&s.device, serial2::KeepSettings)?;
    let mut config = Rs485Config::new();
    config.set_delay_before_send(s.rs485_delay_before);
    config.set_delay_after_send(s.rs485_delay_after);
    port.set_rs4xx_mode(config)
        .map_err(|e| refused(format!("the driver refused TIOCSRS485: {e}")))?;
    match port.get_rs4xx_mode() {
        Ok(TransceiverMode::Rs485(_)) => Ok(()),
        Ok(mode) => Err(refused(format!(
            "the driver accepted TIOCSRS485 but reports {mode:?} mode"
        ))),
        Err(e) => Err(refused(format!("the driver cannot report its mode: {e}"))),
    }
}

/// Where a device path leads now (the `ttyUSBn` behind a by-id link), for
/// the log; the path itself when it cannot be resolved.
fn resolved(device: &Path) -> String {
    std::fs::canonicalize(device)
        .unwrap_or_else(|_| device.to_path_buf())
        .display()
        .to_string()
}

/// Turns one device's frames into records, and records into batches.
struct FrameHandler<'a> {
    source: &'a SensorSource,
    seq: &'a mut SeqAllocator,
    batcher: &'a mut Batcher,
    tx: &'a mpsc::Sender<Vec<Record>>,
    stats: &'a Stats,
    bad_frames: RateLimit,
    state_errors: RateLimit,
}

impl FrameHandler<'_> {
    /// Decodes one frame and adds the record to the batch, sending the
    /// batch on when it is full. False when the next stage is gone.
    async fn handle(&mut self, frame: Frame) -> bool {
        let frame = match frame {
            Frame::Data(bytes) => bytes,
            Frame::Bad {
                reason,
                len,
                sample,
            } => {
                self.reject(reason, len, &sample, None);
                return true;
            }
        };
        let source = self.source;
        let fields = match source.format.decode_into(&frame, self.batcher.fields()) {
            Ok(Decoded::Fields(f)) => f,
            Ok(Decoded::Skip) => {
                source.counters.skipped.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(error) => {
                self.reject(error.reason, frame.len(), &frame, Some(&error.detail));
                return true;
            }
        };
        let (ts, clock) = match &source.time {
            None => {
                let (now, mark) = self.batcher.stamp();
                (receive_time(now), Some(mark))
            }
            Some(field) => match field.read(&fields) {
                Ok(t) => (t, None),
                Err(error) => {
                    self.reject(error.reason, frame.len(), &frame, Some(&error.detail));
                    return true;
                }
            },
        };
        let (n, state_error) = self.seq.allocate();
        if let Some(error) = state_error {
            if let Some(suppressed) = self.state_errors.check(Instant::now()) {
                warn!(sensor = %source.name, %error, error_kind = telemetry::error_kind(&error),
                    suppressed, "cannot reserve sequence numbers on disk; a crash now may reuse them");
            }
        }
        let record = Record {
            sensor: source.name.clone(),
            seq: n,
            ts,
            clock,
            fields,
        };
        Stats::add(&self.stats.records_read, 1);
        source.counters.records.fetch_add(1, Ordering::Relaxed);
        match self.batcher.push(record, tokio::time::Instant::now) {
            Some(batch) => self.tx.send(batch).await.is_ok(),
            None => true,
        }
    }

    /// Sends the open batch on, if there is one. False when the next
    /// stage is gone.
    async fn flush(&mut self) -> bool {
        match self.batcher.take() {
            Some(batch) => self.tx.send(batch).await.is_ok(),
            None => true,
        }
    }

    /// Counts a rejected frame under its reason, and logs it (rate limited
    /// per sensor) with an escaped sample of its bytes.
    fn reject(&mut self, reason: Reject, len: usize, bytes: &[u8], detail: Option<&str>) {
        let counter = match reason {
            Reject::TooLong => &self.stats.frames_too_long,
            Reject::Partial => &self.stats.frames_partial,
            _ => &self.stats.frames_malformed,
        };
        Stats::add(counter, 1);
        self.source.counters.reject(reason);
        if let Some(suppressed) = self.bad_frames.check(Instant::now()) {
            let sample = escape_sample(bytes, LOG_SAMPLE);
            warn!(sensor = %self.source.name, %reason, len, detail = detail.unwrap_or(""),
                %sample, suppressed, "frame rejected");
        }
    }

    /// At a stop, reads the rest of a frame begun in the read buffer, one
    /// byte at a time (so nothing after it is taken from the device), for
    /// at most [`FINISH_FRAME`]: a stop does not cut a line in half, whose
    /// first half would be dropped as partial and whose second half the
    /// next start would reject as malformed.
    async fn complete_frame(
        &mut self,
        framed: &mut FramedRead<Gather<tokio_serial::SerialStream>, Framer>,
    ) {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + FINISH_FRAME;
        let mut pending = std::mem::take(framed.read_buffer_mut());
        for _ in 0..=self.source.sensor.max_frame {
            while let Ok(Some(frame)) = framed.decoder_mut().decode(&mut pending) {
                if !self.handle(frame).await {
                    return;
                }
            }
            if pending.is_empty() {
                break;
            }
            let mut byte = [0u8; 1];
            match tokio::time::timeout_at(deadline, framed.get_mut().get_mut().read(&mut byte))
                .await
            {
                Ok(Ok(1)) => pending.extend_from_slice(&byte),
                _ => break,
            }
        }
        // What is left (a frame the device did not finish in time) is
        // dropped as partial by `finish`.
        *framed.read_buffer_mut() = pending;
    }

    /// The device is going away (stop, unplug): the complete frames still
    /// buffered become records and the open batch goes out; a partial
    /// frame at the end is dropped and counted, never glued to the first
    /// bytes after a replug.
    async fn finish(
        &mut self,
        framed: &mut FramedRead<Gather<tokio_serial::SerialStream>, Framer>,
    ) {
        let mut pending = std::mem::take(framed.read_buffer_mut());
        let decoder = framed.decoder_mut();
        let mut complete = Vec::new();
        while let Ok(Some(frame)) = decoder.decode(&mut pending) {
            complete.push(frame);
        }
        let partial = pending.clone();
        let dropped = decoder.reset(&mut pending);
        for frame in complete {
            if !self.handle(frame).await {
                return;
            }
        }
        if dropped > 0 {
            self.reject(Reject::Partial, dropped, &partial, None);
        }
        self.flush().await;
    }
}

#[cfg(all(test, feature = "demo"))]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::demo::pty::Pty;
    use crate::spool::sequences::StateDir;

    /// Bound on every wait below.
    const WAIT: Duration = Duration::from_secs(5);

    fn source(device: &Path) -> SensorSource {
        let sensor: config::Sensor = serde_json::from_value(serde_json::json!({
            "name": "t",
            "device": device,
            "format": "csv",
            "columns": ["a", "b"],
        }))
        .expect("a sensor");
        SensorSource::new(&sensor)
    }

    fn seqs(batch: &[Record]) -> Vec<u64> {
        batch.iter().map(|r| r.seq).collect()
    }

    /// Runs a reader of a new PTY with `linger`; returns the PTY, its
    /// writer, the batches, the stop token and the task.
    fn start(
        state: &Arc<StateDir>,
        linger: Duration,
    ) -> (
        Pty,
        std::fs::File,
        mpsc::Receiver<Vec<Record>>,
        CancellationToken,
        tokio::task::JoinHandle<SeqAllocator>,
    ) {
        let pty = Pty::open().unwrap();
        let writer = pty.writer().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        let reader = tokio::spawn(source(pty.path()).run(
            state.allocator("t"),
            Batcher::new(1000, linger),
            tx,
            Arc::default(),
            stop.clone(),
        ));
        (pty, writer, rx, stop, reader)
    }

    #[tokio::test]
    async fn an_open_batch_goes_out_at_linger() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let (_pty, mut writer, mut rx, stop, reader) = start(&state, Duration::from_millis(100));
        writer.write_all(b"1,2\n3,4\n").unwrap();
        let batch = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
        assert_eq!(seqs(&batch.unwrap()), [0, 1]);
        // A stop sends what was read, too.
        writer.write_all(b"5,6\n").unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        stop.cancel();
        let batch = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
        assert_eq!(seqs(&batch.unwrap()), [2]);
        let seq = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        assert!(seq.close().is_ok());
        assert!(rx.recv().await.is_none(), "the reader closed its end");
    }

    #[tokio::test]
    async fn an_open_batch_goes_out_when_the_device_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        // A linger no test waits for: only the loss can send the batch,
        // and a replug may never come.
        let (pty, mut writer, mut rx, stop, reader) = start(&state, Duration::from_secs(3600));
        writer.write_all(b"1,2\n3,4\n").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(writer);
        drop(pty);
        let batch = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
        assert_eq!(seqs(&batch.unwrap()), [0, 1]);
        stop.cancel();
        tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    }
}
/// The time a frame was received, to the millisecond: finer digits are
/// scheduling noise (a 24-byte line takes 2 ms on the wire at 115200 baud),
/// and whole milliseconds make timestamps 2 bytes a record on the wire
/// instead of 5 (`docs/FORMAT.md`, `tu`).
pub fn receive_time(now: SystemTime) -> SystemTime {
    match now.duration_since(std::time::UNIX_EPOCH) {
        // Not `as_millis`, whose 128-bit division costs more than the rest.
        Ok(d) => {
            std::time::UNIX_EPOCH
                + std::time::Duration::new(d.as_secs(), d.subsec_millis() * 1_000_000)
        }
        Err(_) => now,
    }
}
