//! The spool's segment reader on arbitrary file contents: it must never
//! panic, never hold more than one entry's worth of memory, and account for
//! every byte of the file as a valid entry, skipped corruption or torn tail.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sensorgate::spool::segment::{SEGMENT_HEADER_LEN, SegmentError, SegmentReader, scan};

/// One scratch file per fuzzing process, rewritten for every input.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("sensorgate-fuzz-segment-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write scratch file");
    let mut reader = match SegmentReader::open(path) {
        Ok(r) => r,
        Err(SegmentError::NotASegment { .. }) => {
            assert!(matches!(scan(path), Err(SegmentError::NotASegment { .. })));
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut valid = 0u64;
    let mut end = SEGMENT_HEADER_LEN;
    let mut offsets = Vec::new();
    while let Some((offset, entry)) = reader.next_entry().expect("read scratch file") {
        assert!(offset >= end, "entries overlap");
        assert!(entry.first_seq <= entry.last_seq);
        end = offset + entry.encoded_len();
        valid += entry.encoded_len();
        offsets.push(offset);
    }
    let report = reader.report().clone();
    assert_eq!(report.entries, offsets.len() as u64);
    assert_eq!(report.valid_len, end);
    assert_eq!(
        SEGMENT_HEADER_LEN + valid + report.skipped_bytes + report.torn_tail_bytes,
        data.len() as u64,
        "{report:?}"
    );
    // Reading again from where it stopped finds nothing new.
    assert!(reader.next_entry().expect("read again").is_none());
    assert_eq!(reader.report(), &report);

    let (metas, scan_report) = scan(path).expect("scan scratch file");
    assert_eq!(scan_report, report);
    assert_eq!(metas.iter().map(|m| m.offset).collect::<Vec<_>>(), offsets);
});
