//! `nmea` framing: NMEA 0183 sentences (`$...*hh\r\n`), checksum verified.
//!
//! The stream is cut into *units*: a sentence starts at `$` or `!` (AIS);
//! anything else that is not whitespace starts a run of line noise. A unit
//! ends at the next line end (`\n`, with an optional `\r` before it) or at the
//! next `$`/`!`, because a sentence start in the middle of another sentence
//! means the line end was lost, and the new sentence must not be lost with
//! it. Whitespace between units (blank lines, stray CRs) is skipped silently.
//!
//! A sentence becomes [`Frame::Data`] (`$` up to and including `*hh`) only
//! when its checksum verifies, whichever way it ended; otherwise it is a
//! [`Reject::Checksum`]. A run of noise is one [`Reject::Garbage`]. A unit
//! longer than `max_frame` is skipped without being buffered, up to the same
//! ends (line end or next sentence start), and reported once with its full
//! length: [`Reject::TooLong`] for a sentence, `Garbage` for noise.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::{Frame, Reject, Skipped};

/// What the unit at the front of the buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Started with `$` or `!`.
    Sentence,
    /// Started with a byte that is neither whitespace nor a sentence start.
    Noise,
}

/// Cuts NMEA 0183 sentences of at most `max_frame` bytes (without the line
/// end) out of a byte stream.
#[derive(Debug)]
pub struct NmeaFramer {
    max_frame: usize,
    /// The unit being read; `None` between units.
    unit: Option<Unit>,
    /// Bytes of the unit already searched for its end.
    scanned: usize,
    /// The over-long unit being skipped, if any.
    skipping: Option<Skipped>,
}

fn is_start(b: u8) -> bool {
    b == b'$' || b == b'!'
}

/// Whether `b` ends the unit before it: a line end or a new sentence.
fn is_end(b: &u8) -> bool {
    matches!(b, b'\n' | b'$' | b'!')
}

impl NmeaFramer {
    pub fn new(max_frame: usize) -> Self {
        NmeaFramer {
            max_frame: max_frame.max(1),
            unit: None,
            scanned: 0,
            skipping: None,
        }
    }

    /// Forgets a partial sentence, for example when the device went away:
    /// the bytes before an unplug must never be glued to those after it.
    /// Returns how many bytes were dropped.
    pub fn reset(&mut self, buf: &mut BytesMut) -> usize {
        let skipped = self.skipping.take().map_or(0, |s| s.len);
        let dropped = buf.len() + skipped;
        buf.clear();
        self.unit = None;
        self.scanned = 0;
        dropped
    }

    /// The frame for a finished unit (line end already removed).
    fn finish(&self, unit: Unit, content: BytesMut) -> Frame {
        match unit {
            Unit::Noise => Frame::bad(Reject::Garbage, content.len(), &content),
            Unit::Sentence if content.len() > self.max_frame => {
                Frame::bad(Reject::TooLong, content.len(), &content)
            }
            // `verify` ignores trailing CRs; a Data frame must not carry one.
            Unit::Sentence if content.last() != Some(&b'\r') && verify(&content).is_some() => {
                Frame::Data(content)
            }
            Unit::Sentence => Frame::bad(Reject::Checksum, content.len(), &content),
        }
    }
}

impl Decoder for NmeaFramer {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        loop {
            let Some(unit) = self.unit else {
                let Some(start) = buf.iter().position(|b| !b.is_ascii_whitespace()) else {
                    buf.clear();
                    return Ok(None);
                };
                buf.advance(start);
                self.unit = Some(if is_start(buf[0]) {
                    Unit::Sentence
                } else {
                    Unit::Noise
                });
                // The first byte is a `$`/`!` or noise: it never ends the unit.
                self.scanned = 1;
                continue;
            };
            if let Some(mut skipped) = self.skipping.take() {
                let Some(end) = buf.iter().position(is_end) else {
                    skipped.eat(buf);
                    buf.clear();
                    self.skipping = Some(skipped);
                    return Ok(None);
                };
                skipped.eat(&buf[..end]);
                buf.advance(end + usize::from(buf[end] == b'\n'));
                self.unit = None;
                let reason = match unit {
                    Unit::Sentence => Reject::TooLong,
                    Unit::Noise => Reject::Garbage,
                };
                return Ok(Some(skipped.finish(reason, true)));
            }
            let Some(off) = buf[self.scanned..].iter().position(is_end) else {
                // Allow one byte for a '\r' before the '\n'.
                if buf.len() > self.max_frame + 1 {
                    self.skipping = Some(Skipped::start(buf));
                    buf.clear();
                    self.scanned = 0;
                } else {
                    self.scanned = buf.len();
                }
                return Ok(None);
            };
            let end = self.scanned + off;
            let mut content = buf.split_to(end + usize::from(buf[end] == b'\n'));
            content.truncate(end);
            if content.last() == Some(&b'\r') {
                content.truncate(end - 1);
            }
            self.unit = None;
            self.scanned = 0;
            return Ok(Some(self.finish(unit, content)));
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        // A sentence without its line end at the end of the stream is a
        // partial frame, not a reading; the source counts it through `reset`.
        self.decode(buf)
    }
}

/// The body of an NMEA sentence (between the leading `$` or `!` and the
/// `*`) when `sentence` is `$body*hh` with a matching checksum (the XOR of
/// the body's bytes, two hex digits of either case); `None` otherwise.
/// Trailing `\r`/`\n` are ignored.
pub fn verify(sentence: &[u8]) -> Option<&[u8]> {
    let mut s = sentence;
    while let [rest @ .., b'\r' | b'\n'] = s {
        s = rest;
    }
    let [b'$' | b'!', rest @ ..] = s else {
        return None;
    };
    let [body @ .., b'*', hi, lo] = rest else {
        return None;
    };
    let want = (hex(*hi)? << 4) | hex(*lo)?;
    (want == checksum(body)).then_some(body)
}

/// An NMEA checksum: the XOR of the bytes between `$` and `*`.
fn checksum(body: &[u8]) -> u8 {
    body.iter().fold(0u8, |acc, b| acc ^ b)
}

/// A whole sentence as a receiver sends it, `$body*hh` and CRLF: for the
/// demo, tests and benches that play a GPS receiver.
pub fn sentence(body: &str) -> String {
    format!("${body}*{:02X}\r\n", checksum(body.as_bytes()))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::SAMPLE_LEN;
    use super::super::testing::feed;
    use super::*;
    use proptest::prelude::*;

    const GGA: &[u8] = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";

    /// `$body*hh` with the right checksum.
    fn sentence(start: u8, body: &[u8]) -> Vec<u8> {
        let sum = checksum(body);
        let mut s = vec![start];
        s.extend_from_slice(body);
        s.extend_from_slice(format!("*{sum:02X}").as_bytes());
        s
    }

    fn frames(max: usize, input: &[u8]) -> Vec<Frame> {
        let whole = feed(&mut NmeaFramer::new(max), input, &[], max + 1);
        // Every test also checks that byte-by-byte reads give the same frames.
        let bytewise = feed(&mut NmeaFramer::new(max), input, &[1], max + 1);
        assert_eq!(bytewise, whole);
        whole
    }

    fn data(s: &[u8]) -> Frame {
        Frame::Data(BytesMut::from(s))
    }

    #[test]
    fn verified_sentences_become_frames_without_their_line_end() {
        let mut input = GGA.to_vec();
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(b"!AIVDM,1*4A\n");
        input.extend_from_slice(&sentence(b'$', b"GPVTG,,T"));
        input.extend_from_slice(b"\r\n");
        assert_eq!(verify(b"!AIVDM,1*4A"), Some(&b"AIVDM,1"[..]));
        assert_eq!(
            frames(82, &input),
            vec![
                data(GGA),
                data(b"!AIVDM,1*4A"),
                data(&sentence(b'$', b"GPVTG,,T"))
            ]
        );
    }

    #[test]
    fn a_wrong_or_missing_checksum_is_rejected() {
        assert_eq!(
            frames(
                82,
                b"$GPGGA,1*48\r\n$GPGGA,1\r\n$GPGGA,1*4\n$GPGGA,1*49\r\r\n$a*61\n"
            ),
            vec![
                Frame::bad(Reject::Checksum, 11, b"$GPGGA,1*48"),
                Frame::bad(Reject::Checksum, 8, b"$GPGGA,1"),
                Frame::bad(Reject::Checksum, 10, b"$GPGGA,1*4"),
                Frame::bad(Reject::Checksum, 12, b"$GPGGA,1*49\r"),
                data(b"$a*61"),
            ]
        );
    }

    #[test]
    fn whitespace_between_sentences_is_skipped_silently() {
        assert_eq!(
            frames(82, b"\r\n \t\n$a*61\r\n\r\n\n  $a*61\n"),
            vec![data(b"$a*61"), data(b"$a*61")]
        );
    }

    #[test]
    fn each_run_of_line_noise_is_one_garbage_frame() {
        assert_eq!(
            frames(82, b"\x00\xff junk$a*61\r\nERROR\r\nERROR\n  x y $a*61\n"),
            vec![
                Frame::bad(Reject::Garbage, 7, b"\x00\xff junk"),
                data(b"$a*61"),
                Frame::bad(Reject::Garbage, 5, b"ERROR"),
                Frame::bad(Reject::Garbage, 5, b"ERROR"),
                Frame::bad(Reject::Garbage, 4, b"x y "),
                data(b"$a*61"),
            ]
        );
    }

    #[test]
    fn a_sentence_start_cuts_a_sentence_whose_line_end_was_lost() {
        assert_eq!(
            frames(82, b"$GPGGA,12$a*61\r\n$GPGGA,1*48!a*61\n"),
            vec![
                Frame::bad(Reject::Checksum, 9, b"$GPGGA,12"),
                data(b"$a*61"),
                Frame::bad(Reject::Checksum, 11, b"$GPGGA,1*48"),
                data(b"!a*61"),
            ]
        );
        // A complete sentence whose line end was lost still verifies.
        assert_eq!(
            frames(82, b"$a*61$a*61\n"),
            vec![data(b"$a*61"), data(b"$a*61")]
        );
    }

    #[test]
    fn an_over_long_sentence_is_skipped_not_buffered() {
        let mut d = NmeaFramer::new(16);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"$GPXXX,");
        buf.extend_from_slice(&[b'7'; 100]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "skipped bytes must not be kept");
        buf.extend_from_slice(&[b'8'; 50]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        buf.extend_from_slice(b"*00\r\n$a*61\r\n");
        let mut sample = b"$GPXXX,".to_vec();
        sample.resize(SAMPLE_LEN, b'7');
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::bad(Reject::TooLong, 160, &sample))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Some(data(b"$a*61")));
        assert_eq!(d.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn an_over_long_sentence_ends_at_the_next_sentence_start() {
        let long = sentence(b'$', &[b'A'; 40]);
        let mut input = long.clone();
        input.extend_from_slice(b"$a*61\n");
        assert_eq!(
            frames(16, &input),
            vec![
                Frame::bad(Reject::TooLong, long.len(), &long),
                data(b"$a*61")
            ]
        );
    }

    #[test]
    fn a_long_run_of_noise_is_reported_once_and_not_buffered() {
        let mut d = NmeaFramer::new(16);
        let mut buf = BytesMut::new();
        for _ in 0..10 {
            buf.extend_from_slice(&[b'~'; 100]);
            assert_eq!(d.decode(&mut buf).unwrap(), None);
            assert!(buf.is_empty());
        }
        buf.extend_from_slice(b"$a*61\n");
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::bad(Reject::Garbage, 1000, &[b'~'; SAMPLE_LEN]))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Some(data(b"$a*61")));
    }

    #[test]
    fn a_sentence_of_exactly_max_frame_passes_even_with_crlf() {
        let s = sentence(b'$', b"GPABC,1");
        let mut input = s.clone();
        input.extend_from_slice(b"\r\n");
        assert_eq!(frames(s.len(), &input), vec![data(&s)]);
        assert_eq!(
            frames(s.len() - 1, &input),
            vec![Frame::bad(Reject::TooLong, s.len(), &s)]
        );
    }

    #[test]
    fn reset_drops_the_partial_sentence() {
        let mut d = NmeaFramer::new(16);
        let mut buf = BytesMut::from(&b"$GPGGA,1"[..]);
        assert_eq!(d.decode_eof(&mut buf).unwrap(), None);
        assert_eq!(d.reset(&mut buf), 8);
        buf.extend_from_slice(b"*49\r\n$a*61\r\n");
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Frame::bad(Reject::Garbage, 3, b"*49"))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Some(data(b"$a*61")));

        let mut buf = BytesMut::from(&[b'$'; 40][..]);
        while d.decode(&mut buf).unwrap().is_some() {}
        buf.extend_from_slice(&[b'x'; 30]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(d.reset(&mut buf), 31, "the skipped sentence counts");
    }

    /// Bytes rich in what NMEA framing reacts to.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                4 => any::<u8>(),
                2 => proptest::sample::select(&b"$!*\r\n ,0A"[..]),
            ],
            0..600,
        )
    }

    /// Line noise between sentences: never a sentence start, may end a line.
    fn noise() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            any::<u8>().prop_filter("no start", |b| !is_start(*b)),
            0..120,
        )
    }

    proptest! {
        #[test]
        fn any_bytes_frame_the_same_however_they_are_split(
            input in stream(),
            max in 1usize..100,
            cuts in proptest::collection::vec(1usize..80, 1..6),
        ) {
            let whole = feed(&mut NmeaFramer::new(max), &input, &[], max + 1);
            let split = feed(&mut NmeaFramer::new(max), &input, &cuts, max + 1);
            prop_assert_eq!(&split, &whole);
            for frame in &whole {
                match frame {
                    Frame::Data(s) => {
                        prop_assert!(s.len() <= max);
                        prop_assert!(verify(s).is_some());
                        prop_assert!(!s.ends_with(b"\r"));
                    }
                    Frame::Bad { len, sample, .. } => {
                        prop_assert!(*len > 0);
                        prop_assert_eq!(sample.len(), (*len).min(SAMPLE_LEN));
                    }
                }
            }
        }

        #[test]
        fn sentences_survive_noise_between_them_and_any_chunking(
            sentences in proptest::collection::vec(
                (any::<bool>(), "[A-Z0-9,.*-]{0,70}", any::<bool>(), noise()),
                0..12,
            ),
            cuts in proptest::collection::vec(1usize..100, 1..6),
        ) {
            let max = 82;
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for (ais, body, crlf, noise) in &sentences {
                let s = sentence(if *ais { b'!' } else { b'$' }, body.as_bytes());
                input.extend_from_slice(&s);
                input.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                input.extend_from_slice(noise);
                expected.push(data(&s));
            }
            let out = feed(&mut NmeaFramer::new(max), &input, &cuts, max + 1);
            let sentences: Vec<Frame> =
                out.iter().filter(|f| matches!(f, Frame::Data(_))).cloned().collect();
            prop_assert_eq!(sentences, expected);
            let only_garbage = out.iter().all(|f| match f {
                Frame::Data(_) => true,
                Frame::Bad { reason, .. } => *reason == Reject::Garbage,
            });
            prop_assert!(only_garbage, "{:?}", out);
        }
    }
    #[test]
    fn verify_checks_the_xor_checksum() {
        let s = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n";
        assert_eq!(
            verify(s),
            Some(&b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"[..])
        );
        assert_eq!(verify(b"$GPGGA,1*48"), None);
        assert_eq!(verify(b"GPGGA,1*49"), None);
        assert_eq!(verify(b"$GPGGA,1"), None);
        assert_eq!(verify(b"$GPGGA,1*4"), None);
        assert_eq!(verify(b"$*00"), Some(&b""[..]));
        assert_eq!(verify(b"$a*61"), Some(&b"a"[..]));
        assert_eq!(verify(b"$a*6G"), None);
    }
}
