//! Values from registers: the byte and word order of multi-register
//! numbers, strings, bits, and `scale`/`offset`, without I/O.
//!
//! A register is 16 bits, sent high byte first. A 32- or 64-bit value
//! spans 2 or 4 registers, in an order the standard leaves to each device;
//! named as Telegraf names it, by the letters of the value's bytes from
//! the most significant (A) as they arrive on the wire:
//!
//! | order | 32-bit wire bytes | 64-bit | words | bytes in a word |
//! | --- | --- | --- | --- | --- |
//! | `ABCD` (default) | A B C D | ABCDEFGH | most significant first | high first |
//! | `CDAB` | C D A B | GHEFCDAB | least significant first | high first |
//! | `BADC` | B A D C | BADCFEHG | most significant first | low first |
//! | `DCBA` | D C B A | HGFEDCBA | least significant first | low first |
//!
//! 16-bit values take `AB` (default) or `BA`.

use crate::record::{RawNumber as Raw, Value};

/// How a value's registers are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// One register, true when not zero; or one coil or discrete input.
    Bool,
    /// `registers` registers of text, two bytes each, high byte first;
    /// NUL bytes and spaces at the end are padding.
    Text {
        registers: u16,
    },
}

impl Kind {
    /// Registers the value spans (bits, for a bool in a bit table).
    pub fn registers(self) -> u16 {
        match self {
            Kind::U16 | Kind::I16 | Kind::Bool => 1,
            Kind::U32 | Kind::I32 | Kind::F32 => 2,
            Kind::U64 | Kind::I64 | Kind::F64 => 4,
            Kind::Text { registers } => registers,
        }
    }
}

/// The order of a value's bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Order {
    /// The least significant register first.
    pub word_swap: bool,
    /// The low byte of each register first.
    pub byte_swap: bool,
}

impl Order {
    /// Reads an order's name for a value of `kind`; the error says which
    /// names that kind takes.
    pub fn parse(name: &str, kind: Kind) -> Result<Order, String> {
        let wide = match kind {
            Kind::U16 | Kind::I16 | Kind::Bool | Kind::Text { .. } => 0,
            Kind::U32 | Kind::I32 | Kind::F32 => 4,
            Kind::U64 | Kind::I64 | Kind::F64 => 8,
        };
        let (word_swap, byte_swap) = match (wide, name) {
            (0, "AB") | (4 | 8, "ABCD") | (8, "ABCDEFGH") => (false, false),
            (4 | 8, "CDAB") | (8, "GHEFCDAB") => (true, false),
            (0, "BA") | (4 | 8, "BADC") | (8, "BADCFEHG") => (false, true),
            (4 | 8, "DCBA") | (8, "HGFEDCBA") => (true, true),
            (0, _) => return Err("takes \"AB\" or \"BA\"".into()),
            (4, _) => return Err("takes \"ABCD\", \"CDAB\", \"BADC\" or \"DCBA\"".into()),
            _ => {
                return Err("takes \"ABCD\", \"CDAB\", \"BADC\" or \"DCBA\" \
                     (or \"ABCDEFGH\", \"GHEFCDAB\", \"BADCFEHG\", \"HGFEDCBA\")"
                    .into());
            }
        };
        Ok(Order {
            word_swap,
            byte_swap,
        })
    }
}

/// Why registers did not make a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("is not a finite number")]
    NotFinite,
    #[error("is not text: {0}")]
    NotText(String),
}

/// The value of `kind` in `regs` (exactly `kind.registers()` of them), in
/// `order`, then `raw * scale + offset` when `linear` is set.
pub fn decode(
    kind: Kind,
    order: Order,
    regs: &[u16],
    linear: Option<(f64, f64)>,
) -> Result<Value, ValueError> {
    debug_assert_eq!(regs.len(), usize::from(kind.registers()));
    if let Kind::Text { .. } = kind {
        return text(order, regs);
    }
    if kind == Kind::Bool {
        return Ok(Value::Bool(regs[0] != 0));
    }
    // The value's bytes, most significant first.
    let mut be = [0u8; 8];
    let n = regs.len();
    for (i, r) in regs.iter().enumerate() {
        let word = if order.word_swap { n - 1 - i } else { i };
        let [hi, lo] = r.to_be_bytes();
        let (first, second) = if order.byte_swap { (lo, hi) } else { (hi, lo) };
        be[word * 2] = first;
        be[word * 2 + 1] = second;
    }
    let b2 = [be[0], be[1]];
    let b4 = [be[0], be[1], be[2], be[3]];
    let raw = match kind {
        Kind::U16 => Raw::Int(u16::from_be_bytes(b2).into()),
        Kind::I16 => Raw::Int(i16::from_be_bytes(b2).into()),
        Kind::U32 => Raw::Int(u32::from_be_bytes(b4).into()),
        Kind::I32 => Raw::Int(i32::from_be_bytes(b4).into()),
        Kind::I64 => Raw::Int(i64::from_be_bytes(be)),
        // Above i64::MAX only a float holds the reading.
        Kind::U64 => {
            let v = u64::from_be_bytes(be);
            i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int)
        }
        Kind::F32 => Raw::Float(f32::from_be_bytes(b4).into()),
        Kind::F64 => Raw::Float(f64::from_be_bytes(be)),
        Kind::Bool | Kind::Text { .. } => unreachable!("handled above"),
    };
    raw.value(linear).ok_or(ValueError::NotFinite)
}

fn text(order: Order, regs: &[u16]) -> Result<Value, ValueError> {
    let mut bytes = Vec::with_capacity(regs.len() * 2);
    for r in regs {
        let [hi, lo] = r.to_be_bytes();
        if order.byte_swap {
            bytes.extend_from_slice(&[lo, hi]);
        } else {
            bytes.extend_from_slice(&[hi, lo]);
        }
    }
    while let Some(&(0 | b' ')) = bytes.last() {
        bytes.pop();
    }
    let s = String::from_utf8(bytes).map_err(|e| ValueError::NotText(format!("{e}")))?;
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(ValueError::NotText(format!(
            "holds the control character {c:?}"
        )));
    }
    Ok(Value::Str(s))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ORDERS: [&str; 4] = ["ABCD", "CDAB", "BADC", "DCBA"];

    fn order(name: &str, kind: Kind) -> Order {
        Order::parse(name, kind).unwrap()
    }

    /// The registers a device in `order` sends for the big-endian bytes
    /// `be`: written here from the table in the module's documentation,
    /// letter by letter, not by the decoder's arithmetic.
    fn wire(name: &str, be: &[u8]) -> Vec<u16> {
        let letters = match (be.len(), name) {
            (8, "ABCD") => "ABCDEFGH",
            (8, "CDAB") => "GHEFCDAB",
            (8, "BADC") => "BADCFEHG",
            (8, "DCBA") => "HGFEDCBA",
            _ => name,
        };
        let bytes: Vec<u8> = letters.bytes().map(|l| be[usize::from(l - b'A')]).collect();
        bytes
            .chunks(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect()
    }

    #[test]
    fn a_float_from_a_meter_in_each_order() {
        // 230.5 V as an f32 is 0x43 0x66 0x80 0x00.
        for (name, regs) in [
            ("ABCD", [0x4366, 0x8000]),
            ("CDAB", [0x8000, 0x4366]),
            ("BADC", [0x6643, 0x0080]),
            ("DCBA", [0x0080, 0x6643]),
        ] {
            let v = decode(Kind::F32, order(name, Kind::F32), &regs, None).unwrap();
            assert_eq!(v, Value::Float(230.5), "{name}");
        }
    }

    #[test]
    fn integers_scale_and_offset() {
        let energy = decode(
            Kind::U32,
            order("CDAB", Kind::U32),
            &[0x86A0, 0x0001],
            Some((0.01, 0.0)),
        );
        assert_eq!(energy.unwrap(), Value::Float(1000.0));
        let temp = decode(Kind::I16, Order::default(), &[0xFF38], Some((0.1, 0.0)));
        assert_eq!(temp.unwrap(), Value::Float(-20.0));
        assert_eq!(
            decode(Kind::I16, Order::default(), &[0xFF38], None).unwrap(),
            Value::Int(-200)
        );
        let big = decode(Kind::U64, Order::default(), &[0xFFFF; 4], None).unwrap();
        assert_eq!(big, Value::Float(u64::MAX as f64));
        assert_eq!(
            decode(Kind::Bool, Order::default(), &[2], None).unwrap(),
            Value::Bool(true)
        );
    }

    #[test]
    fn a_nan_is_refused_and_text_is_trimmed_of_padding() {
        let nan = decode(Kind::F32, Order::default(), &[0x7FC0, 0], None);
        assert_eq!(nan, Err(ValueError::NotFinite));
        let kind = Kind::Text { registers: 4 };
        let serial = decode(
            kind,
            Order::default(),
            &[0x534E, 0x2D31, 0x3200, 0x0000],
            None,
        );
        assert_eq!(serial.unwrap(), Value::Str("SN-12".into()));
        let swapped = decode(
            kind,
            order("BA", Kind::U16),
            &[0x4E53, 0x312D, 0x0032, 0x2020],
            None,
        );
        assert_eq!(swapped.unwrap(), Value::Str("SN-12".into()));
        let bad = decode(
            Kind::Text { registers: 1 },
            Order::default(),
            &[0x4107],
            None,
        );
        assert!(matches!(bad, Err(ValueError::NotText(_))));
    }

    #[test]
    fn orders_are_named_for_the_width_of_the_value() {
        assert_eq!(order("AB", Kind::U16), Order::default());
        assert!(order("BA", Kind::I16).byte_swap);
        assert!(Order::parse("CDAB", Kind::U16).is_err());
        assert!(Order::parse("AB", Kind::U32).is_err());
        assert!(Order::parse("GHEFCDAB", Kind::U32).is_err());
        assert_eq!(order("GHEFCDAB", Kind::F64), order("CDAB", Kind::F64));
        assert!(Order::parse("abcd", Kind::U32).is_err());
    }

    proptest! {
        /// Every type in every order: the registers a device would send
        /// for a number decode to that number.
        #[test]
        fn every_type_and_order_round_trips(bits: u64, o in 0usize..4) {
            let name = ORDERS[o];
            let be8 = bits.to_be_bytes();
            let cases: [(Kind, Vec<u8>, Value); 8] = [
                (Kind::U16, be8[6..].to_vec(), Value::Int(i64::from(bits as u16))),
                (Kind::I16, be8[6..].to_vec(), Value::Int(i64::from(bits as u16 as i16))),
                (Kind::U32, be8[4..].to_vec(), Value::Int(i64::from(bits as u32))),
                (Kind::I32, be8[4..].to_vec(), Value::Int(i64::from(bits as u32 as i32))),
                (Kind::I64, be8.to_vec(), Value::Int(bits as i64)),
                (Kind::U64, be8.to_vec(), i64::try_from(bits).map_or(Value::Float(bits as f64), Value::Int)),
                (Kind::F32, be8[4..].to_vec(), Value::Float(f64::from(f32::from_bits(bits as u32)))),
                (Kind::F64, be8.to_vec(), Value::Float(f64::from_bits(bits))),
            ];
            for (kind, be, want) in cases {
                // A 16-bit value has only its byte order.
                let name = match (kind.registers(), name) {
                    (1, "ABCD" | "CDAB") => "AB",
                    (1, _) => "BA",
                    _ => name,
                };
                let regs = wire(name, &be);
                let got = decode(kind, order(name, kind), &regs, None);
                match want {
                    Value::Float(f) if !f.is_finite() => prop_assert!(got.is_err()),
                    want => prop_assert_eq!(got, Ok(want), "{:?} {}", kind, name),
                }
            }
        }
    }
}
