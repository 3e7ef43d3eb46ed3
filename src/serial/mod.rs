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
use tokio_util::codec::FramedRead;
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
const READ_BUFFER: usize = 8 * 1024;

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
        let mut bad_frames = RateLimit::new(Duration::from_secs(10));
        let mut state_errors = RateLimit::new(Duration::from_secs(60));
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => return ReadEnd::Stopped,
                f = framed.next() => f,
            };
            let frame = match frame {
                Some(Ok(LineFrame::Line(bytes))) => bytes,
                Some(Ok(LineFrame::TooLong { len })) => {
                    Stats::add(&stats.frames_too_long, 1);
                    if let Some(suppressed) = bad_frames.check(Instant::now()) {
                        warn!(sensor = %self.name, len, max_frame = self.max_frame, suppressed,
                            "frame longer than max_frame skipped");
                    }
                    continue;
                }
                Some(Err(e)) => return self.lost(&mut framed, stats, e.to_string()),
                None => return self.lost(&mut framed, stats, "device closed".into()),
            };
            let fields = match self.decoder.decode(&frame) {
                Ok(Decoded::Fields(f)) => f,
                Ok(Decoded::Skip) => continue,
                Err(error) => {
                    Stats::add(&stats.frames_malformed, 1);
                    if let Some(suppressed) = bad_frames.check(Instant::now()) {
                        warn!(sensor = %self.name, %error, suppressed, "malformed frame skipped");
                    }
                    continue;
                }
            };
            let (n, state_error) = seq.allocate();
            if let Some(error) = state_error {
                if let Some(suppressed) = state_errors.check(Instant::now()) {
                    warn!(sensor = %self.name, %error, suppressed,
                        "cannot reserve sequence numbers on disk; a crash now may reuse them");
                }
            }
            let record = Record {
                sensor: self.name.clone(),
                seq: n,
                ts: SystemTime::now(),
                fields,
            };
            Stats::add(&stats.records_read, 1);
            if tx.send(record).await.is_err() {
                return ReadEnd::Stopped;
            }
        }
    }

    fn lost(
        &self,
        framed: &mut FramedRead<tokio_serial::SerialStream, LinesDecoder>,
        stats: &Stats,
        error: String,
    ) -> ReadEnd {
        // Bytes of a frame cut by the unplug are dropped, never glued to
        // the first bytes after the device comes back.
        let mut pending = std::mem::take(framed.read_buffer_mut());
        if framed.decoder_mut().reset(&mut pending) > 0 {
            Stats::add(&stats.frames_partial, 1);
        }
        ReadEnd::Lost(error)
    }
}
