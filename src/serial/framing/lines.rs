//! `lines` framing: LF or CRLF delimited frames of bounded length.
//!
//! Unlike `tokio_util::codec::LinesCodec`, an over-long line is not a stream
//! error here: a decoder error ends a `FramedRead`, and one bad line from a
//! sensor must never stop the source. Over-long lines are reported as
//! [`Reject::TooLong`] and skipped up to the next delimiter without being
//! buffered, so a device that never sends a newline cannot grow memory.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::{Frame, Reject, Skipped};

/// Splits bytes into lines of at most `max_frame` bytes (without the line
/// end). A longer line becomes one `Bad { reason: TooLong }` whose `len` is
/// its full length, however many reads it spanned.
#[derive(Debug)]
pub struct LinesDecoder {
    max_frame: usize,
    /// Bytes already searched for a delimiter in the current buffer.
    scanned: usize,
    /// The over-long line being skipped, if any.
    discarding: Option<Skipped>,
}

impl LinesDecoder {
    pub fn new(max_frame: usize) -> Self {
        LinesDecoder {
            max_frame: max_frame.max(1),
            scanned: 0,
            discarding: None,
        }
    }

    /// Forgets a partial frame, for example when the device went away: the
    /// bytes before an unplug must never be glued to those after it.
    /// Returns how many bytes of partial frame were dropped.
    pub fn reset(&mut self, buf: &mut BytesMut) -> usize {
        let skipped = self.discarding.take().map_or(0, |s| s.len);
        let dropped = buf.len() + skipped;
        buf.clear();
        self.scanned = 0;
        dropped
    }
}

impl Decoder for LinesDecoder {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if let Some(mut skipped) = self.discarding.take() {
            return Ok(match memchr::memchr(b'\n', buf) {
                Some(end) => {
                    skipped.eat(&buf[..end]);
                    buf.advance(end + 1);
                    Some(skipped.finish(Reject::TooLong, true))
                }
                None => {
                    skipped.eat(buf);
                    buf.clear();
                    self.discarding = Some(skipped);
                    None
                }
            });
        }
        match memchr::memchr(b'\n', &buf[self.scanned..]) {
            Some(off) => {
                let end = self.scanned + off;
                self.scanned = 0;
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.len() > self.max_frame {
                    return Ok(Some(Frame::bad(Reject::TooLong, line.len(), &line)));
                }
                Ok(Some(Frame::Data(line)))
            }
            // Allow one byte for a '\r' before the '\n'.
            None if buf.len() > self.max_frame + 1 => {
                self.discarding = Some(Skipped::start(buf));
                buf.clear();
                self.scanned = 0;
                Ok(None)
            }
            None => {
                self.scanned = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        // A line without its delimiter at the end of the stream is a partial
        // frame, not a reading; the source counts it through `reset`.
        self.decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::feed;
    use super::*;
    use proptest::prelude::*;

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut d = LinesDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = vec![];
        for c in chunks {
            buf.extend_from_slice(c);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Data(BytesMut::from(s.as_bytes()))
    }

    fn too_long(line: &[u8]) -> Frame {
        Frame::bad(Reject::TooLong, line.len(), line)
    }

    #[test]
    fn splits_on_lf_and_crlf() {
        assert_eq!(
            frames(16, &[b"a,1\r\nb,2\n", b"c", b",3\n"]),
            vec![line("a,1"), line("b,2"), line("c,3")]
        );
    }

    #[test]
    fn an_over_long_line_is_skipped_not_buffered() {
        let mut d = LinesDecoder::new(8);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'x'; 100]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "discarded bytes must not be kept");
        buf.extend_from_slice(&[b'y'; 50]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"zz\r\nok\n");
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::bad(Reject::TooLong, 152, &[b'x'; 100]))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Some(line("ok")));
    }

    #[test]
    fn a_skipped_line_reports_its_first_bytes_and_full_length() {
        let long = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut input = long.to_vec();
        input.extend_from_slice(b"\r\n");
        let expected = vec![too_long(long)];
        for cut in 1..input.len() {
            assert_eq!(
                frames(4, &[&input[..cut], &input[cut..]]),
                expected,
                "cut {cut}"
            );
        }
        let Frame::Bad { sample, .. } = &expected[0] else {
            unreachable!()
        };
        assert_eq!(&sample[..], &long[..super::super::SAMPLE_LEN]);
    }

    #[test]
    fn a_line_of_exactly_max_frame_passes_even_with_crlf() {
        assert_eq!(frames(4, &[b"abcd\r\n"]), vec![line("abcd")]);
        assert_eq!(frames(4, &[b"abcd\r", b"\n"]), vec![line("abcd")]);
        assert_eq!(frames(4, &[b"abcde\n"]), vec![too_long(b"abcde")]);
        assert_eq!(frames(4, &[b"abcde", b"\n"]), vec![too_long(b"abcde")]);
    }

    #[test]
    fn reset_drops_the_partial_frame() {
        let mut d = LinesDecoder::new(16);
        let mut buf = BytesMut::from(&b"1,2,"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(d.reset(&mut buf), 4);
        buf.extend_from_slice(b"3,4\n");
        assert_eq!(d.decode(&mut buf).unwrap(), Some(line("3,4")));
    }

    #[test]
    fn reset_counts_a_line_being_skipped() {
        let mut d = LinesDecoder::new(4);
        let mut buf = BytesMut::from(&b"123456789"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"ab");
        assert_eq!(d.reset(&mut buf), 11);
        buf.extend_from_slice(b"ok\n");
        assert_eq!(d.decode(&mut buf).unwrap(), Some(line("ok")));
    }

    #[test]
    fn decode_eof_leaves_the_partial_frame_for_reset() {
        let mut d = LinesDecoder::new(16);
        let mut buf = BytesMut::from(&b"a\nb"[..]);
        assert_eq!(d.decode_eof(&mut buf).unwrap(), Some(line("a")));
        assert_eq!(d.decode_eof(&mut buf).unwrap(), None);
        assert_eq!(d.reset(&mut buf), 1);
    }

    /// Bytes that are mostly line ends, so that lines are short and varied.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![4 => any::<u8>(), 1 => Just(b'\n'), 1 => Just(b'\r')],
            0..600,
        )
    }

    proptest! {
        #[test]
        fn memory_is_bounded_and_short_lines_survive_any_chunking(
            lines in proptest::collection::vec("[a-z0-9,]{0,40}", 0..20),
            crlf in any::<bool>(),
            cut in 1usize..17,
        ) {
            let max = 24;
            let mut input = Vec::new();
            for l in &lines {
                input.extend_from_slice(l.as_bytes());
                input.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            let out = feed(&mut LinesDecoder::new(max), &input, &[cut], max + 1);
            let expected: Vec<Frame> = lines
                .iter()
                .map(|l| if l.len() > max { too_long(l.as_bytes()) } else { line(l) })
                .collect();
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn any_bytes_frame_the_same_however_they_are_split(
            input in stream(),
            max in 1usize..64,
            cuts in proptest::collection::vec(1usize..80, 1..6),
        ) {
            let whole = feed(&mut LinesDecoder::new(max), &input, &[], max + 1);
            let split = feed(&mut LinesDecoder::new(max), &input, &cuts, max + 1);
            prop_assert_eq!(&split, &whole);
            for frame in &whole {
                match frame {
                    Frame::Data(l) => prop_assert!(l.len() <= max && !l.contains(&b'\n')),
                    Frame::Bad { reason, len, sample } => {
                        prop_assert_eq!(*reason, Reject::TooLong);
                        prop_assert!(*len > max);
                        prop_assert_eq!(sample.len(), (*len).min(super::super::SAMPLE_LEN));
                    }
                }
            }
        }
    }
}
