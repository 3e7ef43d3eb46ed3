//! The `lines` framing on arbitrary bytes cut into arbitrary reads: it must
//! never panic, never keep more than `max_frame` + CR of an unfinished line,
//! and give the same frames however the bytes are split.
//!
//! Input: byte 0 picks `max_frame`, byte 1 how many read sizes follow, then
//! the read sizes, then the stream.
#![no_main]

#[path = "common/framing.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use sensorgate::serial::framing::lines::LinesDecoder;
use sensorgate::serial::framing::{Frame, Framer, Reject};

fuzz_target!(|data: &[u8]| {
    let [max, count, rest @ ..] = data else {
        return;
    };
    let max_frame = 1 + usize::from(*max % 100);
    let (sizes, input) = common::read_sizes(*count, rest);
    let run = |sizes: &[usize]| {
        common::run(
            Framer::Lines(LinesDecoder::new(max_frame)),
            max_frame + 1,
            input,
            sizes,
        )
    };

    let whole = run(&[]);
    assert_eq!(run(&sizes), whole);
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
                common::check_bad(*len, sample);
            }
        }
    }
});
