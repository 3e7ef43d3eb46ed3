//! The serial stage: open a device, frame its bytes, decode frames into
//! records, and keep doing it across unplug and replug.

pub mod csv;
pub mod lines;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config;
use crate::record::Record;
use crate::spool::sequences::SeqAllocator;
use crate::telemetry::{RateLimit, Stats};
use csv::{CsvDecoder, Decoded};
use lines::{LineFrame, LinesDecoder};

const REOPEN_MIN: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(30);
/// Bytes read from a device at a time (and so at most held undecoded).
pub const READ_BUFFER: usize = 8 * 1024;

/// One configured sensor, ready to run.
#[derive(Debug, Clone)]
pub struct SensorSource {
    name: Arc<str>,
    device: PathBuf,
    baud: u32,
    max_frame: usize,
    decoder: CsvDecoder,
}

/// Why reading from an open device ended.
enum ReadEnd {
    Stopped,
    Lost(String),
}

impl SensorSource {
    pub fn new(sensor: &config::Sensor) -> Self {
        SensorSource {
            name: Arc::from(sensor.name.as_str()),
            device: sensor.device.clone(),
            baud: sensor.baud,
            max_frame: sensor.max_frame,
            decoder: CsvDecoder::new(&sensor.columns, sensor.delimiter),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Reads records into `tx` until `stop` is cancelled or `tx` closes.
    /// A device that is absent or fails is retried with backoff; this
    /// never returns an error. Returns the allocator so the caller can
    /// record the exact next sequence number.
    pub async fn run(
        self,
        mut seq: SeqAllocator,
        tx: mpsc::Sender<Record>,
        stats: Arc<Stats>,
        stop: CancellationToken,
    ) -> SeqAllocator {
        let mut backoff = Backoff::new(REOPEN_MIN, REOPEN_MAX);
        let mut reported_absent = false;
        let mut lost_at: Option<Instant> = None;
        loop {
            if stop.is_cancelled() {
                break;
            }
            match tokio_serial::new(self.device.to_string_lossy(), self.baud).open_native_async() {
                Ok(port) => {
                    match lost_at.take() {
                        Some(t) => info!(sensor = %self.name, device = %self.device.display(),
                            after_s = t.elapsed().as_secs_f64(), "serial device back"),
                        None => info!(sensor = %self.name, device = %self.device.display(),
                            baud = self.baud, "serial device opened"),
                    }
                    backoff.reset();
                    Stats::add(&stats.sensors_open, 1);
                    let end = self.read(port, &mut seq, &tx, &stats, &stop).await;
                    stats
                        .sensors_open
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    match end {
                        ReadEnd::Stopped => break,
                        ReadEnd::Lost(error) => {
                            Stats::add(&stats.serial_lost, 1);
                            warn!(sensor = %self.name, device = %self.device.display(), %error,
                                "serial device lost; retrying");
                            lost_at = Some(Instant::now());
                            reported_absent = true;
                        }
                    }
                }
                Err(e) => {
                    if reported_absent {
                        debug!(sensor = %self.name, error = %e, "serial device still unavailable");
                    } else {
                        warn!(sensor = %self.name, device = %self.device.display(), error = %e,
                            "cannot open serial device; retrying");
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
        tx: &mpsc::Sender<Record>,
        stats: &Stats,
        stop: &CancellationToken,
    ) -> ReadEnd {
        let mut framed =
            FramedRead::with_capacity(port, LinesDecoder::new(self.max_frame), READ_BUFFER);
        let mut frames = FrameHandler {
            source: self,
            seq,
            tx,
            stats,
            bad_frames: RateLimit::new(Duration::from_secs(10)),
            state_errors: RateLimit::new(Duration::from_secs(60)),
        };
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => {
                    // Lines already read from the device are records:
                    // decode them before stopping.
                    frames.finish(&mut framed).await;
                    return ReadEnd::Stopped;
                }
                f = framed.next() => f,
            };
            match frame {
                Some(Ok(frame)) => {
                    if !frames.handle(frame).await {
                        return ReadEnd::Stopped;
                    }
                }
                Some(Err(e)) => {
                    frames.finish(&mut framed).await;
                    return ReadEnd::Lost(e.to_string());
                }
                None => {
                    frames.finish(&mut framed).await;
                    return ReadEnd::Lost("device closed".into());
                }
            }
        }
    }
}

/// Turns one device's frames into records.
struct FrameHandler<'a> {
    source: &'a SensorSource,
    seq: &'a mut SeqAllocator,
    tx: &'a mpsc::Sender<Record>,
    stats: &'a Stats,
    bad_frames: RateLimit,
    state_errors: RateLimit,
}

impl FrameHandler<'_> {
    /// Decodes one frame and sends the record on. False when the next
    /// stage is gone.
    async fn handle(&mut self, frame: LineFrame) -> bool {
        let name = &self.source.name;
        let frame = match frame {
            LineFrame::Line(bytes) => bytes,
            LineFrame::TooLong { len } => {
                Stats::add(&self.stats.frames_too_long, 1);
                if let Some(suppressed) = self.bad_frames.check(Instant::now()) {
                    warn!(sensor = %name, len, max_frame = self.source.max_frame, suppressed,
                        "frame longer than max_frame skipped");
                }
                return true;
            }
        };
        let fields = match self.source.decoder.decode(&frame) {
            Ok(Decoded::Fields(f)) => f,
            Ok(Decoded::Skip) => return true,
            Err(error) => {
                Stats::add(&self.stats.frames_malformed, 1);
                if let Some(suppressed) = self.bad_frames.check(Instant::now()) {
                    warn!(sensor = %name, %error, suppressed, "malformed frame skipped");
                }
                return true;
            }
        };
        let (n, state_error) = self.seq.allocate();
        if let Some(error) = state_error {
            if let Some(suppressed) = self.state_errors.check(Instant::now()) {
                warn!(sensor = %name, %error, suppressed,
                    "cannot reserve sequence numbers on disk; a crash now may reuse them");
            }
        }
        let record = Record {
            sensor: name.clone(),
            seq: n,
            ts: SystemTime::now(),
            fields,
        };
        Stats::add(&self.stats.records_read, 1);
        self.tx.send(record).await.is_ok()
    }

    /// The device is going away (stop, unplug): the complete frames still
    /// buffered become records; a partial frame at the end is dropped and
    /// counted, never glued to the first bytes after a replug.
    async fn finish(&mut self, framed: &mut FramedRead<tokio_serial::SerialStream, LinesDecoder>) {
        let mut pending = std::mem::take(framed.read_buffer_mut());
        let decoder = framed.decoder_mut();
        let mut complete = Vec::new();
        while let Ok(Some(frame)) = decoder.decode(&mut pending) {
            complete.push(frame);
        }
        if decoder.reset(&mut pending) > 0 {
            Stats::add(&self.stats.frames_partial, 1);
        }
        for frame in complete {
            if !self.handle(frame).await {
                return;
            }
        }
    }
}
