//! Every format's decoder on arbitrary frames: none may panic, and what
//! they return must hold together (a record's names are unique for the
//! formats that reject repeated keys; no text value or name of the text
//! formats holds a control character other than TAB; a binary record has
//! one field per layout entry; a rejection names a reason the format can
//! give).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sensorgate::config::{Column, ColumnType, Endian, LayoutField, LayoutType, Nested};
use sensorgate::record::Value;
use sensorgate::serial::format::{
    Decode, Decoded, Reject, binary::BinaryDecoder, csv::CsvDecoder, json::JsonDecoder, kv::KvDecoder,
    nmea::NmeaDecoder,
};

struct Decoders {
    csv: Vec<CsvDecoder>,
    json: Vec<JsonDecoder>,
    kv: Vec<KvDecoder>,
    nmea: NmeaDecoder,
    binary: Vec<BinaryDecoder>,
}

fn column(name: &str, ty: ColumnType) -> Column {
    Column {
        name: name.to_string(),
        ty,
    }
}

fn layout(ty: LayoutType, scale: Option<f64>) -> LayoutField {
    LayoutField {
        name: format!("{ty}"),
        ty,
        scale,
        offset: scale.map(|s| -s),
    }
}

fn decoders() -> &'static Decoders {
    static D: OnceLock<Decoders> = OnceLock::new();
    D.get_or_init(|| {
        let auto = [Column::auto("a"), Column::auto("b"), Column::auto("c")];
        let typed = [
            column("a", ColumnType::I64),
            column("b", ColumnType::F64),
            column("c", ColumnType::Bool),
            column("d", ColumnType::String),
        ];
        let nested = [
            column("a.b", ColumnType::F64),
            column("l.1", ColumnType::Auto),
        ];
        let all_types = [
            LayoutType::U8,
            LayoutType::I8,
            LayoutType::U16,
            LayoutType::I16,
            LayoutType::U32,
            LayoutType::I32,
            LayoutType::U64,
            LayoutType::I64,
            LayoutType::F32,
            LayoutType::F64,
            LayoutType::Bool,
        ];
        let plain: Vec<_> = all_types.iter().map(|t| layout(*t, None)).collect();
        let scaled: Vec<_> = all_types.iter().map(|t| layout(*t, Some(0.01))).collect();
        Decoders {
            csv: vec![
                CsvDecoder::new(&auto, ','),
                CsvDecoder::new(&typed, ';'),
                CsvDecoder::new(&auto[..1], '\t'),
                CsvDecoder::new(&typed[..2], '§'),
            ],
            json: vec![
                JsonDecoder::new(&[], Nested::Flatten),
                JsonDecoder::new(&typed, Nested::Flatten),
                JsonDecoder::new(&nested, Nested::Flatten),
                JsonDecoder::new(&auto, Nested::Reject),
            ],
            kv: vec![
                KvDecoder::new(&[], ','),
                KvDecoder::new(&typed, ';'),
                KvDecoder::new(&auto, '│'),
            ],
            nmea: NmeaDecoder::new(),
            binary: vec![
                BinaryDecoder::new(&plain, Endian::Little),
                BinaryDecoder::new(&scaled, Endian::Big),
                BinaryDecoder::new(&plain[..3], Endian::Big),
                BinaryDecoder::new(&plain[8..9], Endian::Little),
            ],
        }
    })
}

/// Records of formats that reject repeated keys never repeat a name.
fn unique(d: &Decoded) {
    if let Decoded::Fields(f) = d {
        for (i, a) in f.iter().enumerate() {
            assert!(f[..i].iter().all(|b| b.name != a.name), "{f:?}");
        }
    }
}

/// Records of the text formats hold no control character but TAB, in a
/// value or a name (anything else is rejected as `not_text`).
fn text_only(d: &Decoded) {
    let is_text = |s: &str| !s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f);
    if let Decoded::Fields(f) = d {
        for field in f {
            assert!(is_text(&field.name), "{f:?}");
            if let Value::Str(s) = &field.value {
                assert!(is_text(s), "{f:?}");
            }
        }
    }
}

fn allowed(r: Reject, ok: &[Reject]) {
    assert!(ok.contains(&r), "unexpected reject reason {r}");
}

fuzz_target!(|data: &[u8]| {
    let d = decoders();
    for c in &d.csv {
        match c.decode(data) {
            Ok(out) => {
                unique(&out);
                text_only(&out);
            }
            Err(e) => allowed(e.reason, &[Reject::NotText, Reject::Columns, Reject::Type]),
        }
    }
    for j in &d.json {
        match j.decode(data) {
            Ok(out) => {
                unique(&out);
                text_only(&out);
            }
            Err(e) => allowed(
                e.reason,
                &[Reject::NotText, Reject::Json, Reject::Type, Reject::Missing],
            ),
        }
    }
    for k in &d.kv {
        match k.decode(data) {
            Ok(out) => {
                unique(&out);
                text_only(&out);
            }
            Err(e) => allowed(
                e.reason,
                &[Reject::NotText, Reject::Kv, Reject::Type, Reject::Missing],
            ),
        }
    }
    match d.nmea.decode(data) {
        Ok(out) => {
            unique(&out);
            text_only(&out);
        }
        Err(e) => allowed(e.reason, &[Reject::NotText, Reject::Checksum, Reject::Nmea]),
    }
    for b in &d.binary {
        match b.decode(data) {
            Ok(Decoded::Fields(f)) => assert_eq!(data.len(), b.frame_len(), "{f:?}"),
            Ok(Decoded::Skip) => panic!("binary frames are never skipped"),
            Err(e) => allowed(e.reason, &[Reject::Length, Reject::Type]),
        }
    }
});
