//! `binary` format: fixed-size binary frames (usually from `framing =
//! "cobs"`) into a record, one field per entry of the sensor's `layout`.
//!
//! Offsets are worked out once, in [`BinaryDecoder::new`]; decoding a frame
//! is a length check and one read per field.

use std::sync::Arc;

use super::{Decode, DecodeError, Decoded, Reject};
use crate::config::{Endian, LayoutField, LayoutType};
use crate::record::{Field, RawNumber, Value};

/// Decodes binary frames laid out as configured.
#[derive(Debug, Clone)]
pub struct BinaryDecoder {
    fields: Arc<[Slot]>,
    size: usize,
    endian: Endian,
}

/// One field's place in the frame and how its raw value becomes a value.
#[derive(Debug)]
struct Slot {
    name: Arc<str>,
    ty: LayoutType,
    at: usize,
    /// `raw * scale + offset`, when either is configured.
    linear: Option<(f64, f64)>,
}

impl BinaryDecoder {
    pub fn new(layout: &[LayoutField], endian: Endian) -> Self {
        let mut at = 0;
        let fields = layout
            .iter()
            .map(|f| {
                let slot = Slot {
                    name: Arc::from(f.name.as_str()),
                    ty: f.ty,
                    at,
                    linear: (f.scale.is_some() || f.offset.is_some())
                        .then(|| (f.scale.unwrap_or(1.0), f.offset.unwrap_or(0.0))),
                };
                at += f.ty.size();
                slot
            })
            .collect();
        BinaryDecoder {
            fields,
            size: at,
            endian,
        }
    }

    /// The frame size the layout describes.
    pub fn frame_len(&self) -> usize {
        self.size
    }
}

impl Decode for BinaryDecoder {
    fn decode_into(&self, frame: &[u8], fields: Vec<Field>) -> Result<Decoded, DecodeError> {
        if frame.len() != self.size {
            return Err(DecodeError::new(
                Reject::Length,
                format!(
                    "frame is {} bytes; the layout expects {}",
                    frame.len(),
                    self.size
                ),
            ));
        }
        let mut out = fields;
        out.reserve(self.fields.len());
        for slot in self.fields.iter() {
            let value = self.read(slot, frame).ok_or_else(|| {
                DecodeError::new(
                    Reject::Type,
                    format!("field \"{}\" is not a finite number", slot.name),
                )
            })?;
            out.push(Field {
                name: slot.name.clone(),
                value,
            });
        }
        Ok(Decoded::Fields(out))
    }
}

impl BinaryDecoder {
    /// The value of `slot` in `frame` (whose length was checked); `None`
    /// for a NaN or infinite result.
    fn read(&self, slot: &Slot, frame: &[u8]) -> Option<Value> {
        let big = self.endian == Endian::Big;
        macro_rules! get {
            ($t:ty) => {{
                let bytes = frame
                    .get(slot.at..slot.at + slot.ty.size())?
                    .try_into()
                    .ok()?;
                if big {
                    <$t>::from_be_bytes(bytes)
                } else {
                    <$t>::from_le_bytes(bytes)
                }
            }};
        }
        use RawNumber as Raw;
        let raw = match slot.ty {
            LayoutType::Bool => return Some(Value::Bool(*frame.get(slot.at)? != 0)),
            LayoutType::U8 => Raw::Int(get!(u8).into()),
            LayoutType::I8 => Raw::Int(get!(i8).into()),
            LayoutType::U16 => Raw::Int(get!(u16).into()),
            LayoutType::I16 => Raw::Int(get!(i16).into()),
            LayoutType::U32 => Raw::Int(get!(u32).into()),
            LayoutType::I32 => Raw::Int(get!(i32).into()),
            LayoutType::I64 => Raw::Int(get!(i64)),
            LayoutType::U64 => {
                let v = get!(u64);
                // Above i64::MAX only a float holds the reading.
                i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int)
            }
            LayoutType::F32 => Raw::Float(get!(f32).into()),
            LayoutType::F64 => Raw::Float(get!(f64)),
        };
        raw.value(slot.linear)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, ty: LayoutType) -> LayoutField {
        LayoutField {
            name: name.into(),
            ty,
            scale: None,
            offset: None,
        }
    }

    fn values(d: &BinaryDecoder, frame: &[u8]) -> Vec<(String, Value)> {
        match d.decode(frame) {
            Ok(Decoded::Fields(f)) => f
                .into_iter()
                .map(|f| (f.name.to_string(), f.value))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_type_in_both_byte_orders() {
        let layout: Vec<_> = [
            ("a", LayoutType::U8),
            ("b", LayoutType::I8),
            ("c", LayoutType::U16),
            ("d", LayoutType::I16),
            ("e", LayoutType::U32),
            ("f", LayoutType::I32),
            ("g", LayoutType::U64),
            ("h", LayoutType::I64),
            ("i", LayoutType::F32),
            ("j", LayoutType::F64),
            ("k", LayoutType::Bool),
            ("l", LayoutType::Bool),
        ]
        .into_iter()
        .map(|(n, t)| field(n, t))
        .collect();
        for endian in [Endian::Little, Endian::Big] {
            let d = BinaryDecoder::new(&layout, endian);
            assert_eq!(d.frame_len(), 1 + 1 + 2 + 2 + 4 + 4 + 8 + 8 + 4 + 8 + 1 + 1);
            let mut frame = Vec::new();
            macro_rules! put {
                ($v:expr) => {
                    if endian == Endian::Big {
                        frame.extend_from_slice(&$v.to_be_bytes())
                    } else {
                        frame.extend_from_slice(&$v.to_le_bytes())
                    }
                };
            }
            put!(200u8);
            put!(-100i8);
            put!(60000u16);
            put!(-30000i16);
            put!(4_000_000_000u32);
            put!(-2_000_000_000i32);
            put!(u64::MAX);
            put!(i64::MIN);
            put!(1.5f32);
            put!(-2.25f64);
            frame.extend_from_slice(&[7, 0]);
            let v: Vec<Value> = values(&d, &frame).into_iter().map(|(_, v)| v).collect();
            assert_eq!(
                v,
                [
                    Value::Int(200),
                    Value::Int(-100),
                    Value::Int(60000),
                    Value::Int(-30000),
                    Value::Int(4_000_000_000),
                    Value::Int(-2_000_000_000),
                    Value::Float(u64::MAX as f64),
                    Value::Int(i64::MIN),
                    Value::Float(1.5),
                    Value::Float(-2.25),
                    Value::Bool(true),
                    Value::Bool(false),
                ]
            );
        }
    }

    #[test]
    fn scale_and_offset_make_floats() {
        let layout = [
            LayoutField {
                scale: Some(0.01),
                ..field("t", LayoutType::I16)
            },
            LayoutField {
                offset: Some(-40.0),
                ..field("u", LayoutType::U8)
            },
            LayoutField {
                scale: Some(2.0),
                offset: Some(1.0),
                ..field("f", LayoutType::F32)
            },
        ];
        let d = BinaryDecoder::new(&layout, Endian::Big);
        let mut frame = (-2150i16).to_be_bytes().to_vec();
        frame.push(65);
        frame.extend_from_slice(&0.5f32.to_be_bytes());
        assert_eq!(
            values(&d, &frame),
            [
                ("t".into(), Value::Float(-2150.0 * 0.01)),
                ("u".into(), Value::Float(25.0)),
                ("f".into(), Value::Float(2.0)),
            ]
        );
    }

    #[test]
    fn wrong_lengths_and_non_finite_floats_are_rejected() {
        let d = BinaryDecoder::new(&[field("x", LayoutType::F32)], Endian::Little);
        let e = d.decode(&[0; 3]).unwrap_err();
        assert_eq!(e.reason, Reject::Length);
        assert_eq!(e.detail, "frame is 3 bytes; the layout expects 4");
        assert_eq!(d.decode(&[0; 5]).unwrap_err().reason, Reject::Length);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let e = d.decode(&bad.to_le_bytes()).unwrap_err();
            assert_eq!(e.reason, Reject::Type);
            assert!(e.detail.contains("\"x\""), "{}", e.detail);
        }
        let huge = BinaryDecoder::new(
            &[LayoutField {
                scale: Some(1e300),
                ..field("x", LayoutType::F64)
            }],
            Endian::Little,
        );
        assert_eq!(
            huge.decode(&1e300f64.to_le_bytes()).unwrap_err().reason,
            Reject::Type
        );
        let empty = BinaryDecoder::new(&[], Endian::Little);
        assert_eq!(empty.decode(&[]).unwrap(), Decoded::Fields(vec![]));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const TYPES: [LayoutType; 11] = [
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

        proptest! {
            #[test]
            fn written_frames_read_back(
                spec in prop::collection::vec((prop::sample::select(&TYPES[..]), any::<[u8; 8]>()), 0..12),
                big in any::<bool>(),
            ) {
                let endian = if big { Endian::Big } else { Endian::Little };
                let layout: Vec<LayoutField> = spec
                    .iter()
                    .enumerate()
                    .map(|(i, (ty, _))| field(&format!("f{i}"), *ty))
                    .collect();
                let mut frame = Vec::new();
                let mut want = Vec::new();
                for (ty, raw) in &spec {
                    let n = ty.size();
                    let bytes = &raw[..n];
                    frame.extend_from_slice(bytes);
                    let mut be = [0u8; 8];
                    // The value, read independently of the decoder.
                    if big { be[8 - n..].copy_from_slice(bytes) } else {
                        let mut r = bytes.to_vec();
                        r.reverse();
                        be[8 - n..].copy_from_slice(&r);
                    }
                    let u = u64::from_be_bytes(be);
                    let sign = |bits: u32| ((u << (64 - bits)) as i64) >> (64 - bits);
                    want.push(match ty {
                        LayoutType::Bool => Some(Value::Bool(u != 0)),
                        LayoutType::U8 | LayoutType::U16 | LayoutType::U32 => Some(Value::Int(u as i64)),
                        LayoutType::U64 => Some(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int)),
                        LayoutType::I8 => Some(Value::Int(sign(8))),
                        LayoutType::I16 => Some(Value::Int(sign(16))),
                        LayoutType::I32 => Some(Value::Int(sign(32))),
                        LayoutType::I64 => Some(Value::Int(u as i64)),
                        LayoutType::F32 => {
                            let f = f64::from(f32::from_bits(u as u32));
                            f.is_finite().then_some(Value::Float(f))
                        }
                        LayoutType::F64 => {
                            let f = f64::from_bits(u);
                            f.is_finite().then_some(Value::Float(f))
                        }
                    });
                }
                let d = BinaryDecoder::new(&layout, endian);
                let got = d.decode(&frame);
                if want.iter().all(Option::is_some) {
                    let got: Vec<Value> = match got {
                        Ok(Decoded::Fields(f)) => f.into_iter().map(|f| f.value).collect(),
                        other => panic!("{other:?}"),
                    };
                    let want: Vec<Value> = want.into_iter().flatten().collect();
                    prop_assert_eq!(got, want);
                } else {
                    prop_assert_eq!(got.unwrap_err().reason, Reject::Type);
                }
            }

            #[test]
            fn no_input_panics(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
                let layout: Vec<LayoutField> = TYPES
                    .iter()
                    .enumerate()
                    .map(|(i, ty)| LayoutField { scale: Some(0.5), ..field(&format!("f{i}"), *ty) })
                    .collect();
                let _ = BinaryDecoder::new(&layout, Endian::Big).decode(&bytes);
                let small = BinaryDecoder::new(&layout[..4], Endian::Little);
                let _ = small.decode(&bytes);
                let _ = small.decode(bytes.get(..small.frame_len()).unwrap_or(&bytes));
            }
        }
    }
}
