//! `lines` framing: LF or CRLF delimited frames of bounded length.
//!
//! Unlike `tokio_util::codec::LinesCodec`, an over-long line or invalid
//! UTF-8 is not a stream error here: a decoder error ends a `FramedRead`, and
//! one bad line from a sensor must never stop the source. Over-long lines
//! are reported as [`LineFrame::TooLong`] and skipped up to the next
//! delimiter without being buffered, so a device that never sends a newline
//! cannot grow memory.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// One unit produced by [`LinesDecoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineFrame {
    /// A complete line without its `\n` or `\r\n`.
    Line(BytesMut),
    /// A line longer than the limit was discarded; `len` bytes were skipped
    /// (at least; counted up to the delimiter).
    TooLong { len: usize },
}

/// Splits bytes into lines of at most `max_frame` bytes.
#[derive(Debug)]
pub struct LinesDecoder {
    max_frame: usize,
    /// Bytes already searched for a delimiter in the current buffer.
    scanned: usize,
    /// Bytes skipped so far of an over-long line, when discarding.
    discarding: Option<usize>,
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
        let dropped = buf.len() + self.discarding.unwrap_or(0);
        buf.clear();
        self.scanned = 0;
        self.discarding = None;
        dropped
    }
}

impl Decoder for LinesDecoder {
    type Item = LineFrame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<LineFrame>, std::io::Error> {
        loop {
            let newline = buf[self.scanned..].iter().position(|b| *b == b'\n');
            match (self.discarding, newline) {
                (Some(skipped), Some(off)) => {
                    let len = skipped + self.scanned + off;
                    buf.advance(self.scanned + off + 1);
                    self.scanned = 0;
                    self.discarding = None;
                    return Ok(Some(LineFrame::TooLong { len }));
                }
                (Some(skipped), None) => {
                    self.discarding = Some(skipped + buf.len());
                    buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                (None, Some(off)) => {
                    let end = self.scanned + off;
                    self.scanned = 0;
                    let mut line = buf.split_to(end + 1);
                    line.truncate(end);
                    if line.last() == Some(&b'\r') {
                        line.truncate(end - 1);
                    }
                    if line.len() > self.max_frame {
                        return Ok(Some(LineFrame::TooLong { len: line.len() }));
                    }
                    return Ok(Some(LineFrame::Line(line)));
                }
                (None, None) => {
                    // Allow one byte for a '\r' before the '\n'.
                    if buf.len() > self.max_frame + 1 {
                        self.discarding = Some(0);
                        continue;
                    }
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<LineFrame>, std::io::Error> {
        // A line without its delimiter at the end of the stream is a partial
        // frame, not a reading; the source counts it through `reset`.
        self.decode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<LineFrame> {
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

    fn line(s: &str) -> LineFrame {
        LineFrame::Line(BytesMut::from(s.as_bytes()))
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
        buf.extend_from_slice(b"zz\nok\n");
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(LineFrame::TooLong { len: 152 })
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Some(line("ok")));
    }

    #[test]
    fn a_line_of_exactly_max_frame_passes_even_with_crlf() {
        assert_eq!(frames(4, &[b"abcd\r\n"]), vec![line("abcd")]);
        assert_eq!(
            frames(4, &[b"abcde\n"]),
            vec![LineFrame::TooLong { len: 5 }]
        );
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

    proptest! {
        #[test]
        fn memory_is_bounded_and_short_lines_survive_any_chunking(
            lines in proptest::collection::vec("[a-z0-9,]{0,40}", 0..20),
            cut in 1usize..17,
        ) {
            let max = 24;
            let mut input = Vec::new();
            for l in &lines { input.extend_from_slice(l.as_bytes()); input.push(b'\n'); }
            let mut d = LinesDecoder::new(max);
            let mut buf = BytesMut::new();
            let mut out = vec![];
            for c in input.chunks(cut) {
                buf.extend_from_slice(c);
                while let Some(f) = d.decode(&mut buf).unwrap() { out.push(f); }
                prop_assert!(buf.len() <= max + 1 + cut);
            }
            let expected: Vec<LineFrame> = lines.iter().map(|l| if l.len() > max {
                LineFrame::TooLong { len: l.len() }
            } else { line(l) }).collect();
            prop_assert_eq!(out, expected);
        }
    }
}
