//! The `cobs` framing on arbitrary bytes cut into arbitrary reads: it must
//! never panic, never keep more than `max_frame` bytes of an unfinished
//! frame, give the same frames however the bytes are split, and every frame
//! it passes must come back the same when encoded again.
//!
//! Input: byte 0 picks `max_frame`, byte 1 the CRC and byte order, byte 2
//! how many read sizes follow, then the read sizes, then the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sensorgate::config::{Crc, Endian};
use sensorgate::serial::framing::cobs::{CobsFramer, encode_frame};
use sensorgate::serial::framing::{Frame, SAMPLE_LEN};
use tokio_util::codec::Decoder;

/// Feeds `input` in reads whose sizes cycle through `sizes` (all at once
/// when empty), checking the memory bound after each read.
fn run(max_frame: usize, crc: Crc, endian: Endian, input: &[u8], sizes: &[usize]) -> Vec<Frame> {
    let mut decoder = CobsFramer::new(max_frame, crc, endian);
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
        assert!(buf.len() <= max_frame, "kept {} bytes", buf.len());
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
    let [max, settings, count, rest @ ..] = data else {
        return;
    };
    // Up to 320 so that frames longer than one COBS block (254) occur.
    let max_frame = 1 + usize::from(*max) + usize::from(*max / 4);
    let crc = [Crc::None, Crc::Crc16, Crc::Crc32][usize::from(*settings % 3)];
    let endian = if *settings & 0x80 == 0 {
        Endian::Little
    } else {
        Endian::Big
    };
    let count = usize::from(*count % 8).min(rest.len());
    let (sizes, input) = rest.split_at(count);
    let sizes: Vec<usize> = sizes.iter().map(|s| 1 + usize::from(*s)).collect();

    let whole = run(max_frame, crc, endian, input, &[]);
    let split = run(max_frame, crc, endian, input, &sizes);
    assert_eq!(split, whole);
    for frame in &whole {
        match frame {
            Frame::Data(payload) => {
                let again = encode_frame(payload, crc, endian);
                let big = again.len() + 1;
                assert_eq!(
                    run(big, crc, endian, &again, &[]),
                    vec![Frame::Data(payload.clone())]
                );
            }
            Frame::Bad { len, sample, .. } => {
                assert!(*len > 0);
                assert_eq!(sample.len(), (*len).min(SAMPLE_LEN));
            }
        }
    }
});
