//! `kv` format: `key=value` pairs into a record (`t=21.5 rh=40`,
//! `t=21.5,rh=40`, logfmt-like lines).
//!
//! Pairs are separated by ASCII whitespace and/or the sensor's delimiter. A
//! value may be double-quoted to hold spaces or delimiters
//! (`msg="door open"`), with `\"` and `\\` for a quote or backslash inside.

use std::borrow::Cow;

use super::typed::{Names, Seen, control_char, in_column, not_text, parse_quoted, parse_text};
use super::{Decode, DecodeError, Decoded, Reject};
use crate::config::{Column, ColumnType};
use crate::record::Field;

/// Decodes `key=value` frames for one sensor. Declared columns must be
/// present and have their declared type; other keys are typed from their
/// text.
#[derive(Debug, Clone)]
pub struct KvDecoder {
    names: Names,
    /// The delimiter's UTF-8 bytes (a delimiter may be any character).
    delimiter: [u8; 4],
    delimiter_len: usize,
}

/// Characters of a bad key kept in an error's detail.
const KEY_CHARS: usize = 32;

impl KvDecoder {
    pub fn new(columns: &[Column], delimiter: char) -> Self {
        let mut bytes = [0; 4];
        let delimiter_len = delimiter.encode_utf8(&mut bytes).len();
        KvDecoder {
            names: Names::new(columns),
            delimiter: bytes,
            delimiter_len,
        }
    }

    /// The separator's length at the start of `b`: ASCII whitespace or the
    /// delimiter; 0 if none.
    fn separator(&self, b: &[u8]) -> usize {
        match b.first() {
            Some(c) if c.is_ascii_whitespace() => 1,
            Some(&c) if c == self.delimiter[0] => {
                let d = &self.delimiter[..self.delimiter_len];
                if self.delimiter_len == 1 || b.starts_with(d) {
                    self.delimiter_len
                } else {
                    0
                }
            }
            _ => 0,
        }
    }
}

impl Decode for KvDecoder {
    fn decode_into(&self, frame: &[u8], fields: Vec<Field>) -> Result<Decoded, DecodeError> {
        let text = std::str::from_utf8(frame)
            .map_err(|_| DecodeError::new(Reject::NotText, "frame is not UTF-8 text"))?;
        let bad = |detail: String| DecodeError::new(Reject::Kv, detail);
        let b = text.as_bytes();
        let mut names = self.names.frame();
        let mut fields = self.names.fields(fields);
        let mut seen = Seen::new();
        let mut declared_seen = 0;
        let mut i = 0;
        loop {
            // Every index below stops at an ASCII byte or at the start of
            // the delimiter, so it is a char boundary of `text`.
            loop {
                let n = self.separator(&b[i..]);
                if n == 0 {
                    break;
                }
                i += n;
            }
            if i == b.len() {
                break;
            }
            let start = i;
            while i < b.len() && b[i] != b'=' && self.separator(&b[i..]) == 0 {
                i += 1;
            }
            let key = &text[start..i];
            if i == b.len() || b[i] != b'=' {
                return Err(bad(format!("\"{}\" is not a key=value pair", cut(key))));
            }
            if key.is_empty() {
                return Err(bad(format!("a pair has no key, at byte {start}")));
            }
            if let Some(c) = control_char(key) {
                return Err(not_text(format_args!("key {:?}", cut(key)), c));
            }
            i += 1;
            let raw = if b.get(i) == Some(&b'"') {
                let (value, end) = unquote(text, i + 1).ok_or_else(|| {
                    bad(format!(
                        "the value of \"{}\" has an unterminated quote",
                        cut(key)
                    ))
                })?;
                i = end;
                if i < b.len() && self.separator(&b[i..]) == 0 {
                    return Err(bad(format!(
                        "the value of \"{}\" has text after its closing quote",
                        cut(key)
                    )));
                }
                Err(value)
            } else {
                let from = i;
                while i < b.len() && self.separator(&b[i..]) == 0 {
                    i += 1;
                }
                Ok(&text[from..i])
            };
            let (name, ty) = names.get(key);
            if seen.repeated(&fields, &name) {
                return Err(bad(format!("key \"{}\" is repeated", cut(key))));
            }
            if ty.is_some() {
                declared_seen += 1;
            }
            let ty = ty.unwrap_or(ColumnType::Auto);
            let value = match raw {
                Ok(t) => parse_text(ty, t),
                Err(quoted) => parse_quoted(ty, quoted),
            }
            .map_err(|e| in_column(&name, e))?;
            fields.push(Field { name, value });
        }
        if fields.is_empty() {
            return Ok(Decoded::Skip);
        }
        if let Some(e) = self.names.missing(&fields, declared_seen) {
            return Err(e);
        }
        self.names.done(&fields);
        Ok(Decoded::Fields(fields))
    }
}

/// The quoted text starting at `from` (just after the opening quote), and
/// the index after its closing quote; `None` if it never closes.
fn unquote(text: &str, from: usize) -> Option<(Cow<'_, str>, usize)> {
    let b = text.as_bytes();
    let mut value = Cow::Borrowed("");
    let mut piece = from;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let last = text.get(piece..i)?;
                let value = match value {
                    Cow::Borrowed(_) => Cow::Borrowed(last),
                    Cow::Owned(mut s) => {
                        s.push_str(last);
                        Cow::Owned(s)
                    }
                };
                return Some((value, i + 1));
            }
            b'\\' if matches!(b.get(i + 1), Some(b'"' | b'\\')) => {
                let s = value.to_mut();
                s.push_str(text.get(piece..i)?);
                s.push(char::from(b[i + 1]));
                i += 2;
                piece = i;
            }
            _ => i += 1,
        }
    }
    None
}

/// The start of a key, for an error's detail.
fn cut(key: &str) -> Cow<'_, str> {
    match key.char_indices().nth(KEY_CHARS) {
        Some((at, _)) => Cow::Owned(format!("{}...", &key[..at])),
        None => Cow::Borrowed(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Value;

    fn kv() -> KvDecoder {
        KvDecoder::new(&[], ',')
    }

    fn pairs(d: &KvDecoder, frame: &str) -> Vec<(String, Value)> {
        match d.decode(frame.as_bytes()) {
            Ok(Decoded::Fields(f)) => f
                .into_iter()
                .map(|f| (f.name.to_string(), f.value))
                .collect(),
            other => panic!("{frame}: {other:?}"),
        }
    }

    fn p(name: &str, v: Value) -> (String, Value) {
        (name.to_string(), v)
    }

    #[test]
    fn pairs_split_on_spaces_or_the_delimiter_in_frame_order() {
        let want = [p("t", Value::Float(21.5)), p("rh", Value::Int(40))];
        for frame in [
            "t=21.5 rh=40",
            "t=21.5,rh=40",
            "  t=21.5 , rh=40,\r\n",
            "t=21.5\trh=40",
        ] {
            assert_eq!(pairs(&kv(), frame), want, "{frame}");
        }
        let semi = KvDecoder::new(&[], ';');
        assert_eq!(pairs(&semi, "t=21.5; rh=40"), want);
        assert_eq!(
            pairs(&semi, "a=1,2;b=x=y"),
            [
                p("a", Value::Str("1,2".into())),
                p("b", Value::Str("x=y".into()))
            ]
        );
    }

    #[test]
    fn quoted_values_hold_spaces_delimiters_and_escapes() {
        assert_eq!(
            pairs(&kv(), r#"msg="a b, c" n="5" e="" q="say \"hi\" \\o/" x=1"#),
            [
                p("msg", Value::Str("a b, c".into())),
                p("n", Value::Int(5)),
                p("e", Value::Str("".into())),
                p("q", Value::Str(r#"say "hi" \o/"#.into())),
                p("x", Value::Int(1)),
            ]
        );
        assert_eq!(
            pairs(&kv(), r#"path="C:\dir""#),
            [p("path", Value::Str(r"C:\dir".into()))]
        );
        // A quote inside an unquoted value is just a character.
        assert_eq!(
            pairs(&kv(), r#"h=5"x"#),
            [p("h", Value::Str("5\"x".into()))]
        );
    }

    #[test]
    fn malformed_pairs_are_kv_errors() {
        for frame in [
            "t",
            "t=1 rh",
            "=5",
            "t=1 =5",
            "t=1 t=2",
            r#"m="open"#,
            r#"m="a"b"#,
            r#"m="a\""#,
        ] {
            let e = kv().decode(frame.as_bytes()).unwrap_err();
            assert_eq!(e.reason, Reject::Kv, "{frame}: {}", e.detail);
        }
        let e = kv().decode(b"t=1 t=2").unwrap_err();
        assert!(e.detail.contains("\"t\" is repeated"), "{}", e.detail);
        let e = kv().decode(b"t=1 rh").unwrap_err();
        assert!(e.detail.contains("\"rh\""), "{}", e.detail);
        assert_eq!(
            kv().decode(&[b'a', b'=', 0xff]).unwrap_err().reason,
            Reject::NotText
        );
    }

    #[test]
    fn a_control_character_in_a_value_or_a_key_is_not_text() {
        let tail = "; text may hold no control character but TAB";
        for (frame, detail) in [
            (
                "t=1 msg=a\0b",
                "column \"msg\": value holds the control character U+0000",
            ),
            (
                "msg=\"door\u{7}open\"",
                "column \"msg\": value holds the control character U+0007",
            ),
            (
                "msg=\"a\nb\"",
                "column \"msg\": value holds the control character U+000A",
            ),
            (
                "t=1 x=\u{7f}",
                "column \"x\": value holds the control character U+007F",
            ),
            (
                "t\u{1}x=1",
                "key \"t\\u{1}x\" holds the control character U+0001",
            ),
        ] {
            let e = kv().decode(frame.as_bytes()).unwrap_err();
            assert_eq!(e.reason, Reject::NotText, "{frame:?}: {}", e.detail);
            assert_eq!(e.detail, format!("{detail}{tail}"), "{frame:?}");
        }
        assert_eq!(
            pairs(&kv(), "msg=\"a\tb\"\r\n"),
            [p("msg", Value::Str("a\tb".into()))]
        );
    }

    #[test]
    fn blank_frames_are_skipped() {
        for frame in ["", "  ", "\r\n", " , ,"] {
            assert_eq!(kv().decode(frame.as_bytes()).unwrap(), Decoded::Skip);
        }
    }

    #[test]
    fn declared_columns_must_be_present_and_typed() {
        let d = KvDecoder::new(
            &[
                Column {
                    name: "t".into(),
                    ty: ColumnType::F64,
                },
                Column {
                    name: "id".into(),
                    ty: ColumnType::String,
                },
            ],
            ',',
        );
        assert_eq!(
            pairs(&d, "id=007 t=21 x=007"),
            [
                p("id", Value::Str("007".into())),
                p("t", Value::Float(21.0)),
                p("x", Value::Int(7)),
            ]
        );
        let e = d.decode(b"t=21 x=1").unwrap_err();
        assert_eq!(e.reason, Reject::Missing);
        assert!(e.detail.contains("\"id\""), "{}", e.detail);
        let e = d.decode(b"t=warm id=1").unwrap_err();
        assert_eq!(e.reason, Reject::Type);
        assert!(e.detail.contains("column \"t\""), "{}", e.detail);
    }

    #[test]
    fn a_multibyte_delimiter_works() {
        let d = KvDecoder::new(&[], '│');
        assert_eq!(
            pairs(&d, "a=é│b=\"x│y\""),
            [
                p("a", Value::Str("é".into())),
                p("b", Value::Str("x│y".into()))
            ]
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Value> {
            prop_oneof![
                any::<i64>().prop_map(Value::Int),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::Float),
                any::<bool>().prop_map(Value::Bool),
                "\\PC*|[ ,=\"\\\\]*".prop_map(Value::Str),
            ]
        }

        fn write(v: &Value) -> String {
            match v {
                Value::Int(i) => i.to_string(),
                Value::Float(f) => format!("{f:?}"),
                Value::Bool(b) => b.to_string(),
                Value::Str(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
            }
        }

        proptest! {
            #[test]
            fn written_pairs_read_back_in_order(
                pairs_in in prop::collection::vec(("[a-z_][a-z0-9_.]{0,8}", value()), 1..10),
                sep in prop::sample::select(vec![" ", ",", ", ", "\t", " ,  "]),
            ) {
                let mut names = std::collections::HashSet::new();
                let pairs_in: Vec<(String, Value)> =
                    pairs_in.into_iter().filter(|(n, _)| names.insert(n.clone())).collect();
                // Text is declared `string`: `auto` would read "5" as a number.
                let columns: Vec<Column> = pairs_in
                    .iter()
                    .filter(|(_, v)| matches!(v, Value::Str(_)))
                    .map(|(n, _)| Column { name: n.clone(), ty: ColumnType::String })
                    .collect();
                let frame: Vec<String> =
                    pairs_in.iter().map(|(n, v)| format!("{n}={}", write(v))).collect();
                let frame = frame.join(sep) + "\r\n";
                let d = KvDecoder::new(&columns, ',');
                prop_assert_eq!(pairs(&d, &frame), pairs_in);
            }

            #[test]
            fn no_input_panics(
                bytes in prop::collection::vec(any::<u8>(), 0..64),
                text in "[a-z0-9=\"\\\\ ,;│é]{0,40}",
            ) {
                let typed = KvDecoder::new(
                    &[Column { name: "a".into(), ty: ColumnType::Bool }],
                    ';',
                );
                for d in [kv(), typed, KvDecoder::new(&[], '│')] {
                    let _ = d.decode(&bytes);
                    let _ = d.decode(text.as_bytes());
                }
            }
        }
    }
}
