//! The `lines` framing on arbitrary bytes cut into arbitrary reads: it must
//! never panic, never keep more than `max_frame` + CR of an unfinished line,
//! and give the same frames however the bytes are split.
//!
//! Input: byte 0 picks `max_frame`, byte 1 how many read sizes follow, then
//! the read sizes, then the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sensorgate::serial::framing::lines::LinesDecoder;
use sensorgate::serial::framing::{Frame, Reject, SAMPLE_LEN};
use tokio_util::codec::Decoder;

/// Feeds `input` in reads whose sizes cycle through `sizes` (all at once
/// when empty), checking the memory bound after each read.
fn run(max_frame: usize, input: &[u8], sizes: &[usize]) -> Vec<Frame> {
    let mut decoder = LinesDecoder::new(max_frame);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (read, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(read);
        while let Some(frame) = decoder.decode(&mut buf).expect("framings never fail") {
            out.push(frame);
        }
        assert!(buf.len() <= max_frame + 1, "kept {} bytes", buf.len());
    }
    assert_eq!(
        decoder.decode_eof(&mut buf).expect("framings never fail"),
        None
    );
    let kept = buf.len();
    assert!(decoder.reset(&mut buf) >= kept);
    assert!(buf.is_empty());
    out
}

fuzz_target!(|data: &[u8]| {
    let [max, count, rest @ ..] = data else {
        return;
    };
    let max_frame = 1 + usize::from(*max % 100);
    let count = usize::from(*count % 8).min(rest.len());
    let (sizes, input) = rest.split_at(count);
    let sizes: Vec<usize> = sizes.iter().map(|s| 1 + usize::from(*s)).collect();

    let whole = run(max_frame, input, &[]);
    let split = run(max_frame, input, &sizes);
    assert_eq!(split, whole);
    for frame in &whole {
        match frame {
            Frame::Data(line) => {
                assert!(line.len() <= max_frame);
                assert!(!line.contains(&b'\n'));
            }
            Frame::Bad {
                reason,
                len,
                sample,
            } => {
                assert_eq!(*reason, Reject::TooLong);
                assert!(*len > max_frame);
                assert_eq!(sample.len(), (*len).min(SAMPLE_LEN));
            }
        }
    }
});
