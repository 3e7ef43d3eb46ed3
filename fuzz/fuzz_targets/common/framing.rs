//! What the framing fuzz targets share: feeding a stream in reads of
//! chosen sizes, and the checks every framing must pass.

use bytes::{Bytes, BytesMut};
use sensorgate::serial::framing::{Frame, Framer, SAMPLE_LEN};
use tokio_util::codec::Decoder;

/// Feeds `input` to `framer` in reads whose sizes cycle through `sizes`
/// (all at once when empty), checking after each read that at most `bound`
/// bytes are kept, then that the end of the stream adds nothing and
/// `reset` drops what was left.
pub fn run(mut framer: Framer, bound: usize, input: &[u8], sizes: &[usize]) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (read, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(read);
        while let Some(frame) = framer.decode(&mut buf).expect("framings never fail") {
            out.push(frame);
        }
        assert!(buf.len() <= bound, "kept {} bytes", buf.len());
    }
    assert_eq!(
        framer.decode_eof(&mut buf).expect("framings never fail"),
        None
    );
    let kept = buf.len();
    assert!(framer.reset(&mut buf) >= kept);
    assert!(buf.is_empty());
    out
}

/// Splits the fuzzer's bytes after the settings: `count` (mod 8) read
/// sizes of 1..=256, then the stream.
pub fn read_sizes(count: u8, rest: &[u8]) -> (Vec<usize>, &[u8]) {
    let count = usize::from(count % 8).min(rest.len());
    let (sizes, input) = rest.split_at(count);
    (sizes.iter().map(|s| 1 + usize::from(*s)).collect(), input)
}

/// A skipped stretch counts at least one byte and keeps a sample of its
/// first [`SAMPLE_LEN`] bytes.
pub fn check_bad(len: usize, sample: &Bytes) {
    assert!(len > 0);
    assert_eq!(sample.len(), len.min(SAMPLE_LEN));
}
