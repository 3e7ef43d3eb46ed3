//! The `nmea` framing on arbitrary bytes cut into arbitrary reads: it must
//! never panic, never keep more than `max_frame` + CR of an unfinished
//! sentence, give the same frames however the bytes are split, and only
//! pass sentences whose checksum verifies.
//!
//! Input: byte 0 picks `max_frame`, byte 1 how many read sizes follow, then
//! the read sizes, then the stream.
#![no_main]

#[path = "common/framing.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sensorgate::serial::framing::nmea::{NmeaFramer, verify};
use sensorgate::serial::framing::{Frame, Framer};

fuzz_target!(|data: &[u8]| {
    let [max, count, rest @ ..] = data else {
        return;
    };
    let max_frame = 1 + usize::from(*max % 100);
    let (sizes, input) = common::read_sizes(*count, rest);
    let run = |sizes: &[usize]| {
        common::run(
            Framer::Nmea(NmeaFramer::new(max_frame)),
            max_frame + 1,
            input,
            sizes,
        )
    };

    let whole = run(&[]);
    assert_eq!(run(&sizes), whole);
    for frame in &whole {
        match frame {
            Frame::Data(sentence) => {
                assert!(sentence.len() <= max_frame);
                assert!(verify(sentence).is_some());
                assert!(!sentence.ends_with(b"\r") && !sentence.contains(&b'\n'));
            }
            Frame::Bad { len, sample, .. } => common::check_bad(*len, sample),
        }
    }
});
