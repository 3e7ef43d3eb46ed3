//! The `cobs` framing on arbitrary bytes cut into arbitrary reads: it must
//! never panic, never keep more than `max_frame` bytes of an unfinished
//! frame, give the same frames however the bytes are split, and every frame
//! it passes must come back the same when encoded again.
//!
//! Input: byte 0 picks `max_frame`, byte 1 the CRC and byte order, byte 2
//! how many read sizes follow, then the read sizes, then the stream.
#![no_main]

#[path = "common/framing.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sensorgate::config::{Crc, Endian};
use sensorgate::serial::framing::cobs::{CobsFramer, encode_frame};
use sensorgate::serial::framing::{Frame, Framer};

fn run(max_frame: usize, crc: Crc, endian: Endian, input: &[u8], sizes: &[usize]) -> Vec<Frame> {
    let framer = Framer::Cobs(CobsFramer::new(max_frame, crc, endian));
    common::run(framer, max_frame, input, sizes)
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
    let (sizes, input) = common::read_sizes(*count, rest);

    let whole = run(max_frame, crc, endian, input, &[]);
    assert_eq!(run(max_frame, crc, endian, input, &sizes), whole);
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
            Frame::Bad { len, sample, .. } => common::check_bad(*len, sample),
        }
    }
});
