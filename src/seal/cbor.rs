//! The small part of CBOR (RFC 8949) that format version 2 writes and
//! reads on its hot paths: definite-length items straight to and from byte
//! slices. The COSE envelopes are checked with `coset` on opening; this
//! module encodes the batch (columns of cells) without building a value
//! tree, and decodes it keeping what `ciborium::Value` merges: `undefined`
//! (an absent field) apart from `null` (a non-finite float), and text
//! borrowed from the message.
//!
//! Writing follows RFC 8949 §4.2.1 (core deterministic encoding) for every
//! item: shortest heads, shortest exact floats, definite lengths.

use half::f16;

const UINT: u8 = 0;
const NINT: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const TAG: u8 = 6;
const SIMPLE: u8 = 7;

pub(crate) const FALSE: u8 = 20;
pub(crate) const TRUE: u8 = 21;
pub(crate) const NULL: u8 = 22;
pub(crate) const UNDEFINED: u8 = 23;

/// Appends one item head: major type and argument, in its shortest form.
fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

pub(crate) fn uint(out: &mut Vec<u8>, n: u64) {
    head(out, UINT, n);
}

pub(crate) fn int(out: &mut Vec<u8>, n: i64) {
    if n >= 0 {
        head(out, UINT, n as u64);
    } else {
        // -1 - n without overflow: !n is -1 - n in two's complement.
        head(out, NINT, !n as u64);
    }
}

/// An integer of up to 65 bits of magnitude (time stamps in nanoseconds
/// before 1970 need more than `i64` only in theory; this keeps it exact).
pub(crate) fn int128(out: &mut Vec<u8>, n: i128) -> bool {
    if n >= 0 {
        match u64::try_from(n) {
            Ok(u) => head(out, UINT, u),
            Err(_) => return false,
        }
    } else {
        match u64::try_from(-1 - n) {
            Ok(u) => head(out, NINT, u),
            Err(_) => return false,
        }
    }
    true
}

pub(crate) fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// The head of a byte string of `len` bytes (its content follows).
pub(crate) fn bytes_head(out: &mut Vec<u8>, len: usize) {
    head(out, BYTES, len as u64);
}

pub(crate) fn array(out: &mut Vec<u8>, len: usize) {
    head(out, ARRAY, len as u64);
}

pub(crate) fn map(out: &mut Vec<u8>, len: usize) {
    head(out, MAP, len as u64);
}

pub(crate) fn tag(out: &mut Vec<u8>, tag: u64) {
    head(out, TAG, tag);
}

pub(crate) fn simple(out: &mut Vec<u8>, value: u8) {
    debug_assert!(value < 24);
    out.push(SIMPLE << 5 | value);
}

/// A float in the shortest of half, single and double precision that
/// holds it exactly. Callers write non-finite values as `null`.
pub(crate) fn float(out: &mut Vec<u8>, f: f64) {
    let half = f16::from_f64(f);
    if f64::from(half).to_bits() == f.to_bits() {
        out.push(SIMPLE << 5 | 25);
        out.extend_from_slice(&half.to_be_bytes());
    } else if f64::from(f as f32).to_bits() == f.to_bits() {
        out.push(SIMPLE << 5 | 26);
        out.extend_from_slice(&(f as f32).to_be_bytes());
    } else {
        out.push(SIMPLE << 5 | 27);
        out.extend_from_slice(&f.to_be_bytes());
    }
}

/// One decoded item head. Strings are borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Item<'a> {
    Uint(u64),
    /// A negative integer `-1 - n`, stored as `n`.
    Nint(u64),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(usize),
    Map(usize),
    Tag(u64),
    Float(f64),
    Simple(u8),
}

impl Item<'_> {
    /// What the item is, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Item::Uint(_) | Item::Nint(_) => "an integer",
            Item::Bytes(_) => "a byte string",
            Item::Text(_) => "a text string",
            Item::Array(_) => "an array",
            Item::Map(_) => "a map",
            Item::Tag(_) => "a tag",
            Item::Float(_) => "a float",
            Item::Simple(FALSE | TRUE) => "a boolean",
            Item::Simple(NULL) => "null",
            Item::Simple(UNDEFINED) => "undefined",
            Item::Simple(_) => "a simple value",
        }
    }

    /// The integer as `i128` (every CBOR integer fits).
    pub(crate) fn integer(&self) -> Option<i128> {
        match *self {
            Item::Uint(n) => Some(i128::from(n)),
            Item::Nint(n) => Some(-1 - i128::from(n)),
            _ => None,
        }
    }
}

/// Why a byte string is not the CBOR expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CborError {
    #[error("CBOR ends early at byte {0}")]
    Truncated(usize),
    #[error("CBOR item at byte {0} uses an indefinite length or a reserved value")]
    Unsupported(usize),
    #[error("CBOR text at byte {0} is not UTF-8")]
    NotUtf8(usize),
    #[error("{0} bytes after the end of the CBOR item")]
    Trailing(usize),
}

/// Reads items one head at a time from a byte slice.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { input, at: 0 }
    }

    /// The offset of the next byte to read.
    pub(crate) fn position(&self) -> usize {
        self.at
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(&self) -> Result<(), CborError> {
        match self.input.len() - self.at {
            0 => Ok(()),
            n => Err(CborError::Trailing(n)),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CborError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.input.len())
            .ok_or(CborError::Truncated(self.input.len()))?;
        let out = &self.input[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// The next item head (and, for strings, their content).
    pub(crate) fn next(&mut self) -> Result<Item<'a>, CborError> {
        let start = self.at;
        let first = self.take(1)?[0];
        let major = first >> 5;
        let minor = first & 0x1f;
        if major == SIMPLE {
            return match minor {
                0..=23 => Ok(Item::Simple(minor)),
                24 => match self.take(1)?[0] {
                    v if v >= 32 => Ok(Item::Simple(v)),
                    _ => Err(CborError::Unsupported(start)),
                },
                25 => {
                    let b = self.take(2)?;
                    Ok(Item::Float(f16::from_be_bytes([b[0], b[1]]).into()))
                }
                26 => {
                    let b = self.take(4)?;
                    Ok(Item::Float(
                        f32::from_be_bytes(b.try_into().expect("4 bytes")).into(),
                    ))
                }
                27 => {
                    let b = self.take(8)?;
                    Ok(Item::Float(f64::from_be_bytes(
                        b.try_into().expect("8 bytes"),
                    )))
                }
                _ => Err(CborError::Unsupported(start)),
            };
        }
        let arg = match minor {
            0..=23 => u64::from(minor),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().expect("2 bytes"),
            )),
            26 => u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            27 => u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")),
            _ => return Err(CborError::Unsupported(start)),
        };
        // A length can never exceed what is left of the input, which also
        // bounds what a hostile length makes the caller reserve.
        let len = || {
            usize::try_from(arg)
                .ok()
                .filter(|&n| n <= self.input.len() - self.at)
                .ok_or(CborError::Truncated(self.input.len()))
        };
        Ok(match major {
            UINT => Item::Uint(arg),
            NINT => Item::Nint(arg),
            BYTES => Item::Bytes(self.take(len()?)?),
            TEXT => {
                let raw = self.take(len()?)?;
                Item::Text(std::str::from_utf8(raw).map_err(|_| CborError::NotUtf8(start))?)
            }
            ARRAY => Item::Array(len()?),
            MAP => Item::Map(len()?),
            _ => Item::Tag(arg),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    #[test]
    fn heads_are_shortest_as_rfc_8949_appendix_a_shows() {
        assert_eq!(encoded(|o| uint(o, 0)), [0x00]);
        assert_eq!(encoded(|o| uint(o, 23)), [0x17]);
        assert_eq!(encoded(|o| uint(o, 24)), [0x18, 0x18]);
        assert_eq!(encoded(|o| uint(o, 1000)), [0x19, 0x03, 0xe8]);
        assert_eq!(
            encoded(|o| uint(o, 1_000_000)),
            [0x1a, 0x00, 0x0f, 0x42, 0x40]
        );
        assert_eq!(
            encoded(|o| uint(o, u64::MAX)),
            [0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(encoded(|o| int(o, -1)), [0x20]);
        assert_eq!(encoded(|o| int(o, -1000)), [0x39, 0x03, 0xe7]);
        assert_eq!(encoded(|o| int(o, i64::MIN))[0], 0x3b);
        assert_eq!(encoded(|o| float(o, 1.5)), [0xf9, 0x3e, 0x00]);
        assert_eq!(
            encoded(|o| float(o, 100000.0)),
            [0xfa, 0x47, 0xc3, 0x50, 0x00]
        );
        assert_eq!(
            encoded(|o| float(o, 1.1)),
            [0xfb, 0x3f, 0xf1, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a]
        );
        assert_eq!(encoded(|o| text(o, "IETF")), [0x64, 0x49, 0x45, 0x54, 0x46]);
        assert_eq!(encoded(|o| simple(o, UNDEFINED)), [0xf7]);
    }

    #[test]
    fn what_is_written_reads_back_and_matches_ciborium() {
        let mut out = Vec::new();
        array(&mut out, 7);
        int(&mut out, -500);
        uint(&mut out, 70_000);
        float(&mut out, 15.37);
        text(&mut out, "héllo");
        bytes(&mut out, &[1, 2, 3]);
        simple(&mut out, UNDEFINED);
        map(&mut out, 1);
        text(&mut out, "k");
        simple(&mut out, TRUE);

        let mut r = Reader::new(&out);
        assert_eq!(r.next(), Ok(Item::Array(7)));
        assert_eq!(r.next().unwrap().integer(), Some(-500));
        assert_eq!(r.next(), Ok(Item::Uint(70_000)));
        assert_eq!(r.next(), Ok(Item::Float(15.37)));
        assert_eq!(r.next(), Ok(Item::Text("héllo")));
        assert_eq!(r.next(), Ok(Item::Bytes(&[1, 2, 3])));
        assert_eq!(r.next(), Ok(Item::Simple(UNDEFINED)));
        assert_eq!(r.next(), Ok(Item::Map(1)));
        assert_eq!(r.next(), Ok(Item::Text("k")));
        assert_eq!(r.next(), Ok(Item::Simple(TRUE)));
        assert_eq!(r.finish(), Ok(()));

        // An independent decoder reads the same values.
        let value: ciborium::Value = ciborium::from_reader(out.as_slice()).unwrap();
        let items = value.as_array().unwrap();
        assert_eq!(items[0], ciborium::Value::Integer((-500).into()));
        assert_eq!(items[2], ciborium::Value::Float(15.37));
        assert_eq!(items[3], ciborium::Value::Text("héllo".into()));
    }

    #[test]
    fn hostile_input_fails_cleanly() {
        // A byte string claiming 2^64-1 bytes.
        let huge = [0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            Reader::new(&huge).next(),
            Err(CborError::Truncated(_))
        ));
        // An array claiming more items than there are bytes left.
        assert!(Reader::new(&[0x9a, 0, 1, 0, 0]).next().is_err());
        // Indefinite lengths are refused.
        assert_eq!(Reader::new(&[0x9f]).next(), Err(CborError::Unsupported(0)));
        assert_eq!(
            Reader::new(&[0x62, 0xff, 0xfe]).next(),
            Err(CborError::NotUtf8(0))
        );
        let mut r = Reader::new(&[0x01, 0x02]);
        r.next().unwrap();
        assert_eq!(r.finish(), Err(CborError::Trailing(1)));
    }
}
