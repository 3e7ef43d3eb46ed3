//! `cobs` framing: binary frames, COBS-encoded, each ending in a 0x00 byte,
//! with an optional CRC trailer.
//!
//! COBS (Consistent Overhead Byte Stuffing) removes every 0x00 from a frame
//! so that 0x00 can mark frame ends: a receiver that starts mid-stream or
//! loses bytes resynchronises at the next 0x00. The CRC trailer (`crc`, in
//! the sensor's `endian` byte order) covers the decoded payload before it and
//! catches what COBS cannot: bytes changed on the wire.
//!
//! Frames are decoded in place, so a [`Frame::Data`] shares the read
//! buffer's memory. An encoded frame longer than `max_frame` is skipped up
//! to the next 0x00 without being buffered.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::{Frame, Reject, SAMPLE_LEN, Skipped};
use crate::config::{Crc, Endian};

/// CRC-16/CCITT-FALSE (also called CRC-16/IBM-3740), with its table built
/// at compile time.
static CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);
/// CRC-32 as in zlib and Ethernet (ISO-HDLC).
static CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// How many bytes the CRC trailer takes.
fn trailer_len(crc: Crc) -> usize {
    match crc {
        Crc::None => 0,
        Crc::Crc16 => 2,
        Crc::Crc32 => 4,
    }
}

/// The CRC trailer of `payload`, in its first [`trailer_len`] bytes.
fn trailer(payload: &[u8], crc: Crc, endian: Endian) -> [u8; 4] {
    let mut out = [0u8; 4];
    match crc {
        Crc::None => {}
        Crc::Crc16 => {
            let sum = CRC16.checksum(payload);
            out[..2].copy_from_slice(&match endian {
                Endian::Little => sum.to_le_bytes(),
                Endian::Big => sum.to_be_bytes(),
            });
        }
        Crc::Crc32 => {
            let sum = CRC32.checksum(payload);
            out = match endian {
                Endian::Little => sum.to_le_bytes(),
                Endian::Big => sum.to_be_bytes(),
            };
        }
    }
    out
}

/// The bytes a device sends for `payload`: payload and CRC trailer,
/// COBS-encoded, then the 0x00 frame end. For tests, the demo sensor and
/// benchmarks; it is the reference for `docs/FORMAT.md`'s test vectors.
pub fn encode_frame(payload: &[u8], crc: Crc, endian: Endian) -> Vec<u8> {
    let sum_len = trailer_len(crc);
    let mut raw = Vec::with_capacity(payload.len() + sum_len);
    raw.extend_from_slice(payload);
    raw.extend_from_slice(&trailer(payload, crc, endian)[..sum_len]);
    let mut out = vec![0u8; cobs::max_encoding_length(raw.len()) + 1];
    let len = cobs::encode(&raw, &mut out);
    out.truncate(len);
    out.push(0);
    out
}

/// Cuts COBS frames of at most `max_frame` encoded bytes (without the 0x00)
/// out of a byte stream and checks their CRC trailer.
#[derive(Debug)]
pub struct CobsFramer {
    max_frame: usize,
    crc: Crc,
    endian: Endian,
    /// Bytes already searched for a 0x00 in the current buffer.
    scanned: usize,
    /// The over-long frame being skipped, if any.
    skipping: Option<Skipped>,
}

impl CobsFramer {
    pub fn new(max_frame: usize, crc: Crc, endian: Endian) -> Self {
        CobsFramer {
            max_frame: max_frame.max(1),
            crc,
            endian,
            scanned: 0,
            skipping: None,
        }
    }

    /// Forgets a partial frame, for example when the device went away: the
    /// bytes before an unplug must never be glued to those after it.
    /// Returns how many bytes of partial frame were dropped.
    pub fn reset(&mut self, buf: &mut BytesMut) -> usize {
        let skipped = self.skipping.take().map_or(0, |s| s.len);
        let dropped = buf.len() + skipped;
        buf.clear();
        self.scanned = 0;
        dropped
    }

    /// Decodes one encoded frame (without its 0x00) in place and checks and
    /// removes its trailer.
    fn open(&self, mut frame: BytesMut) -> Frame {
        let len = frame.len();
        if len > self.max_frame {
            return Frame::bad(Reject::TooLong, len, &frame);
        }
        // Decoding overwrites the frame; keep the wire bytes for the log.
        let mut head = [0u8; SAMPLE_LEN];
        let kept = len.min(SAMPLE_LEN);
        head[..kept].copy_from_slice(&frame[..kept]);
        let decoded = match cobs::decode_in_place_report(&mut frame) {
            Ok(report) if report.parsed_size() == len => report.frame_size(),
            _ => return Frame::bad(Reject::Cobs, len, &head[..kept]),
        };
        frame.truncate(decoded);
        let sum_len = trailer_len(self.crc);
        let Some(payload_len) = decoded.checked_sub(sum_len) else {
            return Frame::bad(Reject::Crc, len, &head[..kept]);
        };
        let want = trailer(&frame[..payload_len], self.crc, self.endian);
        if frame[payload_len..] != want[..sum_len] {
            return Frame::bad(Reject::Crc, len, &head[..kept]);
        }
        frame.truncate(payload_len);
        Frame::Data(frame)
    }
}

impl Decoder for CobsFramer {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if let Some(mut skipped) = self.skipping.take() {
            let Some(end) = buf.iter().position(|b| *b == 0) else {
                skipped.eat(buf);
                buf.clear();
                self.skipping = Some(skipped);
                return Ok(None);
            };
            skipped.eat(&buf[..end]);
            buf.advance(end + 1);
            return Ok(Some(skipped.finish(Reject::TooLong, false)));
        }
        loop {
            let Some(off) = buf[self.scanned..].iter().position(|b| *b == 0) else {
                if buf.len() > self.max_frame {
                    self.skipping = Some(Skipped::start(buf));
                    buf.clear();
                    self.scanned = 0;
                } else {
                    self.scanned = buf.len();
                }
                return Ok(None);
            };
            let end = self.scanned + off;
            self.scanned = 0;
            if end == 0 {
                // An empty frame: senders often use a 0x00 to flush or to
                // mark a fresh start.
                buf.advance(1);
                continue;
            }
            let mut frame = buf.split_to(end + 1);
            frame.truncate(end);
            return Ok(Some(self.open(frame)));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        // A frame without its 0x00 at the end of the stream is a partial
        // frame, not a reading; the source counts it through `reset`.
        self.decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::feed;
    use super::*;
    use proptest::prelude::*;

    const CRCS: [Crc; 3] = [Crc::None, Crc::Crc16, Crc::Crc32];
    const ENDIANS: [Endian; 2] = [Endian::Little, Endian::Big];

    fn frames(max: usize, crc: Crc, endian: Endian, input: &[u8]) -> Vec<Frame> {
        let whole = feed(&mut CobsFramer::new(max, crc, endian), input, &[], max);
        // Every test also checks that byte-by-byte reads give the same frames.
        let bytewise = feed(&mut CobsFramer::new(max, crc, endian), input, &[1], max);
        assert_eq!(bytewise, whole);
        whole
    }

    fn data(s: &[u8]) -> Frame {
        Frame::Data(BytesMut::from(s))
    }

    #[test]
    fn encode_frame_matches_the_check_values_of_the_crc_catalogue() {
        // CRC-16/CCITT-FALSE("123456789") = 0x29B1, CRC-32 = 0xCBF43926.
        let mut want = vec![12u8];
        want.extend_from_slice(b"123456789\x29\xb1\x00");
        assert_eq!(encode_frame(b"123456789", Crc::Crc16, Endian::Big), want);
        let mut want = vec![12u8];
        want.extend_from_slice(b"123456789\xb1\x29\x00");
        assert_eq!(encode_frame(b"123456789", Crc::Crc16, Endian::Little), want);
        let mut want = vec![14u8];
        want.extend_from_slice(b"123456789\x26\x39\xf4\xcb\x00");
        assert_eq!(encode_frame(b"123456789", Crc::Crc32, Endian::Little), want);
        let mut want = vec![14u8];
        want.extend_from_slice(b"123456789\xcb\xf4\x39\x26\x00");
        assert_eq!(encode_frame(b"123456789", Crc::Crc32, Endian::Big), want);
        assert_eq!(encode_frame(b"", Crc::None, Endian::Little), vec![1, 0]);
        assert_eq!(
            encode_frame(b"\x11\x00\x00\x22", Crc::None, Endian::Little),
            vec![2, 0x11, 1, 2, 0x22, 0]
        );
    }

    #[test]
    fn frames_come_back_without_their_trailer() {
        for crc in CRCS {
            for endian in ENDIANS {
                let mut input = encode_frame(b"\x01\x00\x02", crc, endian);
                input.extend(encode_frame(b"", crc, endian));
                input.extend(encode_frame(&[0xAB; 300], crc, endian));
                assert_eq!(
                    frames(400, crc, endian, &input),
                    vec![data(b"\x01\x00\x02"), data(b""), data(&[0xAB; 300])],
                    "{crc} {endian}"
                );
            }
        }
    }

    #[test]
    fn empty_frames_are_skipped_silently() {
        let mut input = vec![0, 0, 0];
        input.extend(encode_frame(b"x", Crc::Crc16, Endian::Little));
        input.extend([0, 0]);
        assert_eq!(
            frames(16, Crc::Crc16, Endian::Little, &input),
            vec![data(b"x")]
        );
    }

    #[test]
    fn invalid_cobs_is_rejected() {
        // A code byte promising more bytes than the frame has.
        assert_eq!(
            frames(16, Crc::None, Endian::Little, b"\x05ab\x00\x02x\x00"),
            vec![Frame::bad(Reject::Cobs, 3, b"\x05ab"), data(b"x")]
        );
    }

    #[test]
    fn a_short_frame_or_a_wrong_crc_is_rejected() {
        let short = encode_frame(b"\x07", Crc::None, Endian::Little);
        assert_eq!(
            frames(16, Crc::Crc16, Endian::Little, &short),
            vec![Frame::bad(Reject::Crc, 2, &short[..2])]
        );
        let mut flipped = encode_frame(b"hello", Crc::Crc32, Endian::Big);
        flipped[3] ^= 0x20;
        assert_eq!(
            frames(16, Crc::Crc32, Endian::Big, &flipped),
            vec![Frame::bad(Reject::Crc, 10, &flipped[..10])]
        );
        // The other byte order is a CRC mismatch too.
        let little = encode_frame(b"hello", Crc::Crc32, Endian::Little);
        assert_eq!(
            frames(16, Crc::Crc32, Endian::Big, &little),
            vec![Frame::bad(Reject::Crc, 10, &little[..10])]
        );
    }

    #[test]
    fn an_over_long_frame_is_skipped_not_buffered() {
        let mut d = CobsFramer::new(16, Crc::Crc16, Endian::Little);
        let long = encode_frame(&[0x55; 200], Crc::Crc16, Endian::Little);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&long[..100]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "skipped bytes must not be kept");
        buf.extend_from_slice(&long[100..]);
        buf.extend(encode_frame(b"ok", Crc::Crc16, Endian::Little));
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::bad(Reject::TooLong, long.len() - 1, &long))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Some(data(b"ok")));
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn a_frame_of_exactly_max_frame_passes() {
        let f = encode_frame(&[9; 10], Crc::Crc32, Endian::Little);
        let max = f.len() - 1;
        assert_eq!(
            frames(max, Crc::Crc32, Endian::Little, &f),
            vec![data(&[9; 10])]
        );
        assert_eq!(
            frames(max - 1, Crc::Crc32, Endian::Little, &f),
            vec![Frame::bad(Reject::TooLong, max, &f[..max])]
        );
    }

    #[test]
    fn reset_drops_the_partial_frame() {
        let mut d = CobsFramer::new(16, Crc::None, Endian::Little);
        let f = encode_frame(b"abcdef", Crc::None, Endian::Little);
        let mut buf = BytesMut::from(&f[..4]);
        assert_eq!(d.decode_eof(&mut buf).unwrap(), None);
        assert_eq!(d.reset(&mut buf), 4);
        buf.extend_from_slice(&f);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(data(b"abcdef")));

        buf.extend_from_slice(&[7; 20]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[7; 5]);
        assert_eq!(d.reset(&mut buf), 25, "the skipped frame counts");
    }

    fn settings() -> impl Strategy<Value = (Crc, Endian)> {
        (
            proptest::sample::select(&CRCS[..]),
            proptest::sample::select(&ENDIANS[..]),
        )
    }

    /// Bytes with many frame ends.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![5 => any::<u8>(), 1 => Just(0u8)], 0..800)
    }

    /// Noise between frames that is never valid COBS: a code byte of 0xFF
    /// promises 254 more bytes and it has fewer, and no 0x00 inside.
    fn noise() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8.., 0..100).prop_map(|mut v| {
            v.insert(0, 0xFF);
            v.push(0);
            v
        })
    }

    proptest! {
        #[test]
        fn any_bytes_frame_the_same_however_they_are_split(
            input in stream(),
            max in 1usize..300,
            (crc, endian) in settings(),
            cuts in proptest::collection::vec(1usize..100, 1..6),
        ) {
            let whole = feed(&mut CobsFramer::new(max, crc, endian), &input, &[], max);
            let split = feed(&mut CobsFramer::new(max, crc, endian), &input, &cuts, max);
            prop_assert_eq!(&split, &whole);
            for frame in &whole {
                if let Frame::Bad { len, sample, .. } = frame {
                    prop_assert!(*len > 0);
                    prop_assert_eq!(sample.len(), (*len).min(SAMPLE_LEN));
                }
            }
        }

        #[test]
        fn payloads_survive_noise_between_frames_and_any_chunking(
            frames in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..300), proptest::option::of(noise())),
                0..10,
            ),
            (crc, endian) in settings(),
            cuts in proptest::collection::vec(1usize..200, 1..6),
        ) {
            let max = 320;
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for (payload, noise) in &frames {
                input.extend(encode_frame(payload, crc, endian));
                expected.push(data(payload));
                if let Some(noise) = noise {
                    input.extend_from_slice(noise);
                    let body = &noise[..noise.len() - 1];
                    expected.push(Frame::bad(Reject::Cobs, body.len(), body));
                }
            }
            let out = feed(&mut CobsFramer::new(max, crc, endian), &input, &cuts, max);
            prop_assert_eq!(out, expected);
        }
    }
}
