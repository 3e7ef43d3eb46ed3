//! Framing: cutting a device's byte stream into frames.
//!
//! Each framing is a `tokio_util::codec::Decoder` that never fails: a bad
//! stretch of bytes (too long, bad checksum, undecodable) becomes a
//! [`Frame::Bad`] that the source counts and logs, because a decoder error
//! would end the `FramedRead` and one noisy byte must never stop a sensor.
//! Every framing holds at most `max_frame` (plus its delimiter) bytes of
//! an unfinished frame, so a device that never sends a delimiter cannot grow
//! memory.

pub mod cobs;
pub mod lines;
pub mod nmea;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

pub use super::reject::{Reject, SAMPLE_LEN};
use crate::config;

/// One unit produced by a framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete frame's content, without delimiter, checksum or CRC.
    Data(BytesMut),
    /// Bytes that are not a frame, skipped: `len` bytes (at least) and the
    /// first [`SAMPLE_LEN`] of them for the log.
    Bad {
        reason: Reject,
        len: usize,
        sample: Bytes,
    },
}

impl Frame {
    /// A [`Frame::Bad`] keeping the first [`SAMPLE_LEN`] bytes of `bytes`.
    pub fn bad(reason: Reject, len: usize, bytes: &[u8]) -> Frame {
        Frame::Bad {
            reason,
            len,
            sample: Bytes::copy_from_slice(&bytes[..bytes.len().min(SAMPLE_LEN)]),
        }
    }
}

/// What a framing remembers of a unit it skips without buffering it (an
/// over-long frame, a long run of line noise): how many bytes went by, the
/// first [`SAMPLE_LEN`] of them for the log, and whether the last one was a
/// `\r` (so that a CRLF line end counts like an LF one). This is what keeps
/// memory bounded while still reporting the same length and sample as if the
/// whole unit had arrived in one read.
#[derive(Debug)]
struct Skipped {
    len: usize,
    sample: Vec<u8>,
    last_cr: bool,
}

impl Skipped {
    /// Starts skipping with the unit's first bytes.
    fn start(bytes: &[u8]) -> Skipped {
        let mut skipped = Skipped {
            len: 0,
            sample: Vec::with_capacity(SAMPLE_LEN),
            last_cr: false,
        };
        skipped.eat(bytes);
        skipped
    }

    /// Counts `bytes` as skipped, keeping them only while the sample is short.
    fn eat(&mut self, bytes: &[u8]) {
        let room = SAMPLE_LEN.saturating_sub(self.sample.len());
        self.sample
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        if let Some(last) = bytes.last() {
            self.last_cr = *last == b'\r';
        }
        self.len += bytes.len();
    }

    /// The report for the finished unit; `strip_cr` leaves out a final
    /// `\r` (the first half of a CRLF line end) from the count.
    fn finish(self, reason: Reject, strip_cr: bool) -> Frame {
        let len = self.len - usize::from(strip_cr && self.last_cr);
        Frame::bad(reason, len, &self.sample[..self.sample.len().min(len)])
    }
}

/// A framing chosen by configuration.
#[derive(Debug)]
pub enum Framer {
    Lines(lines::LinesDecoder),
    Nmea(nmea::NmeaFramer),
    Cobs(cobs::CobsFramer),
}

impl Framer {
    pub fn new(sensor: &config::Sensor) -> Framer {
        match sensor.framing {
            config::Framing::Lines => Framer::Lines(lines::LinesDecoder::new(sensor.max_frame)),
            config::Framing::Nmea => Framer::Nmea(nmea::NmeaFramer::new(sensor.max_frame)),
            config::Framing::Cobs => Framer::Cobs(cobs::CobsFramer::new(
                sensor.max_frame,
                sensor.crc,
                sensor.endian,
            )),
            config::Framing::ModbusRtu => {
                unreachable!("modbus_rtu sensors are polled (modbus::poller), not framed")
            }
        }
    }

    /// Forgets a partial frame, for example when the device went away: the
    /// bytes before an unplug must never be glued to those after it.
    /// Returns how many bytes of partial frame were dropped.
    pub fn reset(&mut self, buf: &mut BytesMut) -> usize {
        match self {
            Framer::Lines(d) => d.reset(buf),
            Framer::Nmea(d) => d.reset(buf),
            Framer::Cobs(d) => d.reset(buf),
        }
    }
}

impl Decoder for Framer {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        match self {
            Framer::Lines(d) => d.decode(buf),
            Framer::Nmea(d) => d.decode(buf),
            Framer::Cobs(d) => d.decode(buf),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        // An unfinished frame at the end of the stream is a partial frame,
        // not a reading: the source counts it through `reset`.
        self.decode(buf)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Drives a framing the way `FramedRead` does, for the property tests.

    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    use super::Frame;

    /// Feeds `input` to `decoder` in chunks whose sizes cycle through `cuts`
    /// (the whole input at once when `cuts` is empty) and returns every frame.
    /// After each chunk is decoded, the decoder may keep at most `bound`
    /// bytes: an unfinished frame, never a skipped one.
    pub(crate) fn feed<D>(decoder: &mut D, input: &[u8], cuts: &[usize], bound: usize) -> Vec<Frame>
    where
        D: Decoder<Item = Frame, Error = std::io::Error>,
    {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = input;
        let mut sizes = cuts.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            buf.extend_from_slice(chunk);
            while let Some(frame) = decoder.decode(&mut buf).expect("framings never fail") {
                out.push(frame);
            }
            assert!(
                buf.len() <= bound,
                "kept {} bytes, bound {bound}",
                buf.len()
            );
        }
        assert_eq!(
            decoder.decode_eof(&mut buf).expect("framings never fail"),
            None
        );
        out
    }
}
