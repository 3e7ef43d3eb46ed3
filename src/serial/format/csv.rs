//! `csv` format: one line of delimiter-separated values into a record.
//!
//! Values are named by the sensor's columns and typed by their declared
//! types. A value may be double-quoted (RFC 4180) to hold the delimiter,
//! with `""` for a quote inside; the unquoted path, the common one, only
//! searches for the next delimiter.

use std::borrow::Cow;
use std::sync::Arc;

use super::typed::{in_column, parse_quoted, parse_text};
use super::{Decode, DecodeError, Decoded, Reject};
use crate::config::{Column, ColumnType};
use crate::record::Field;

/// Decodes CSV lines for one sensor with a fixed list of columns.
#[derive(Debug, Clone)]
pub struct CsvDecoder {
    columns: Arc<[(Arc<str>, ColumnType)]>,
    delimiter: char,
    /// The delimiter as a byte, when it is ASCII (searched byte by byte).
    ascii_delimiter: Option<u8>,
}

/// Whether `text` may have white space to trim at either end: its first or
/// last byte is ASCII white space or not ASCII (a multi-byte character,
/// which may be Unicode white space).
fn starts_or_ends_blank(text: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| !b.is_ascii() || b.is_ascii_whitespace());
    edge(text.as_bytes().first()) || edge(text.as_bytes().last())
}

/// One value of a line: as written, or the text between its quotes.
enum Raw<'a> {
    Plain(&'a str),
    Quoted(Cow<'a, str>),
}

impl CsvDecoder {
    pub fn new(columns: &[Column], delimiter: char) -> Self {
        CsvDecoder {
            columns: columns
                .iter()
                .map(|c| (Arc::from(c.name.as_str()), c.ty))
                .collect(),
            delimiter,
            ascii_delimiter: u8::try_from(delimiter).ok().filter(u8::is_ascii),
        }
    }
}

impl Decode for CsvDecoder {
    fn decode_into(&self, frame: &[u8], fields: Vec<Field>) -> Result<Decoded, DecodeError> {
        let text = std::str::from_utf8(frame)
            .map_err(|_| DecodeError::new(Reject::NotText, "frame is not UTF-8 text"))?;
        let delimiter = self.delimiter;
        // Spaces around the line go, but not a whitespace delimiter (tab):
        // it would take an empty first or last value with it.
        let blank = |c: char| c.is_whitespace() && c != delimiter;
        let text = if starts_or_ends_blank(text) {
            text.trim_matches(blank)
        } else {
            text
        };
        if text.is_empty() {
            return Ok(Decoded::Skip);
        }
        let expected = self.columns.len();
        let mut fields = fields;
        fields.reserve(expected);
        let mut header = true;
        let mut first_error = None;
        let mut found = 0;
        let mut rest = text;
        loop {
            let (raw, next) = self.next_value(rest, found)?;
            if let Some((name, ty)) = self.columns.get(found) {
                let text = match &raw {
                    Raw::Plain(t) => t,
                    Raw::Quoted(t) => &**t,
                };
                header = header && text.trim() == &**name;
                if first_error.is_none() {
                    let value = match raw {
                        Raw::Plain(t) => parse_text(*ty, t),
                        Raw::Quoted(t) => parse_quoted(*ty, t),
                    };
                    match value {
                        Ok(value) => fields.push(Field {
                            name: name.clone(),
                            value,
                        }),
                        Err(e) => first_error = Some(in_column(name, e)),
                    }
                }
            }
            found += 1;
            match next {
                Some(next) => rest = next,
                None => break,
            }
        }
        if found != expected {
            return Err(DecodeError::new(
                Reject::Columns,
                format!("expected {expected} columns, found {found}"),
            ));
        }
        if header {
            return Ok(Decoded::Skip);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(Decoded::Fields(fields)),
        }
    }
}

impl CsvDecoder {
    /// The value at the start of `rest` and what follows its delimiter
    /// (`None` at the end of the line).
    fn next_value<'a>(
        &self,
        rest: &'a str,
        index: usize,
    ) -> Result<(Raw<'a>, Option<&'a str>), DecodeError> {
        let delimiter = self.delimiter;
        // The common case, a value that starts with neither a quote nor a
        // space, is told from its first byte.
        let lead = match rest.as_bytes().first() {
            Some(&b) if b != b'"' && b.is_ascii() && !b.is_ascii_whitespace() => rest,
            _ => rest.trim_start_matches(|c: char| c.is_whitespace() && c != delimiter),
        };
        let Some(quoted) = lead.strip_prefix('"') else {
            let end = match self.ascii_delimiter {
                Some(d) => rest.bytes().position(|b| b == d),
                None => rest.find(delimiter),
            };
            return Ok(match end {
                // An ASCII delimiter is one byte; another is its UTF-8 length.
                Some(at) => (
                    Raw::Plain(&rest[..at]),
                    Some(&rest[at + delimiter.len_utf8()..]),
                ),
                None => (Raw::Plain(rest), None),
            });
        };
        let bad = |what: &str| {
            DecodeError::new(Reject::Columns, format!("value {} has {what}", index + 1))
        };
        // The text up to the closing quote, unescaping `""` only if present.
        let mut value = Cow::Borrowed("");
        let mut from = quoted;
        let after = loop {
            let Some(q) = from.find('"') else {
                return Err(bad("an unterminated quote"));
            };
            let (piece, tail) = (&from[..q], &from[q + 1..]);
            // Only the first piece is borrowed: a later one follows a `""`.
            if let Cow::Borrowed(_) = value {
                value = Cow::Borrowed(piece);
            } else {
                value.to_mut().push_str(piece);
            }
            match tail.strip_prefix('"') {
                Some(tail) => {
                    value.to_mut().push('"');
                    from = tail;
                }
                None => break tail,
            }
        };
        let after = after.trim_start_matches(|c: char| c.is_whitespace() && c != delimiter);
        if after.is_empty() {
            return Ok((Raw::Quoted(value), None));
        }
        match after.strip_prefix(delimiter) {
            Some(next) => Ok((Raw::Quoted(value), Some(next))),
            None => Err(bad("text after its closing quote")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Value;

    fn dec() -> CsvDecoder {
        CsvDecoder::new(
            &[
                Column::auto("speed"),
                Column::auto("cadence"),
                Column::auto("note"),
            ],
            ',',
        )
    }

    fn fields(d: &CsvDecoder, line: &str) -> Vec<Field> {
        match d.decode(line.as_bytes()) {
            Ok(Decoded::Fields(f)) => f,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn values(d: &CsvDecoder, line: &str) -> Vec<Value> {
        fields(d, line).into_iter().map(|f| f.value).collect()
    }

    #[test]
    fn typed_values_in_column_order() {
        let f = fields(&dec(), "12.5, 80,ok");
        assert_eq!(&*f[0].name, "speed");
        assert_eq!(f[0].value, Value::Float(12.5));
        assert_eq!(f[1].value, Value::Int(80));
        assert_eq!(f[2].value, Value::Str("ok".into()));
    }

    #[test]
    fn wrong_column_count_and_binary_are_errors() {
        let e = dec().decode(b"1,2").unwrap_err();
        assert_eq!(e.reason, Reject::Columns);
        assert_eq!(e.detail, "expected 3 columns, found 2");
        let e = dec().decode(b"1,2,3,4,5").unwrap_err();
        assert_eq!(e.detail, "expected 3 columns, found 5");
        let e = dec().decode(&[0xff, 0xfe, b',', b',']).unwrap_err();
        assert_eq!(e.reason, Reject::NotText);
    }

    #[test]
    fn blank_and_header_lines_are_skipped() {
        assert_eq!(dec().decode(b"  ").unwrap(), Decoded::Skip);
        assert_eq!(dec().decode(b"\r\n").unwrap(), Decoded::Skip);
        assert_eq!(dec().decode(b"speed,cadence,note").unwrap(), Decoded::Skip);
        assert_eq!(
            dec().decode(b" speed , \"cadence\",note\r").unwrap(),
            Decoded::Skip
        );
    }

    #[test]
    fn declared_types_apply_and_a_header_is_still_skipped() {
        let d = CsvDecoder::new(
            &[
                Column {
                    name: "id".into(),
                    ty: ColumnType::String,
                },
                Column {
                    name: "t".into(),
                    ty: ColumnType::F64,
                },
                Column {
                    name: "on".into(),
                    ty: ColumnType::Bool,
                },
            ],
            ',',
        );
        assert_eq!(
            values(&d, "007,21,1"),
            [
                Value::Str("007".into()),
                Value::Float(21.0),
                Value::Bool(true)
            ]
        );
        assert_eq!(d.decode(b"id,t,on").unwrap(), Decoded::Skip);
        let e = d.decode(b"007,warm,1").unwrap_err();
        assert_eq!(e.reason, Reject::Type);
        assert!(e.detail.contains("column \"t\""), "{}", e.detail);
        assert!(e.detail.contains("\"warm\""), "{}", e.detail);
        // The count is checked before the types.
        assert_eq!(d.decode(b"x,warm").unwrap_err().reason, Reject::Columns);
    }

    #[test]
    fn quoted_values_hold_delimiters_and_quotes() {
        assert_eq!(
            values(&dec(), r#""1,5", "80" ,"he said ""hi"", then left""#),
            [
                Value::Str("1,5".into()),
                Value::Int(80),
                Value::Str(r#"he said "hi", then left"#.into())
            ]
        );
        assert_eq!(
            values(&dec(), r#"1,""," a ""#),
            [
                Value::Int(1),
                Value::Str("".into()),
                Value::Str(" a ".into())
            ]
        );
        assert_eq!(
            values(&dec(), r#"1,2,"""""""#),
            [Value::Int(1), Value::Int(2), Value::Str("\"\"".into())]
        );
        // A quote inside an unquoted value is just a character.
        assert_eq!(
            values(&dec(), r#"1,2,5" pipe"#)[2],
            Value::Str("5\" pipe".into())
        );
    }

    #[test]
    fn broken_quoting_is_a_column_error() {
        for line in [r#"1,2,"open"#, r#"1,"a"b,3"#, r#""a""#, r#"1,2,""""#] {
            let e = dec().decode(line.as_bytes()).unwrap_err();
            assert_eq!(e.reason, Reject::Columns, "{line}");
        }
    }

    #[test]
    fn empty_values_and_tab_delimiters_keep_their_place() {
        let d = CsvDecoder::new(
            &[Column::auto("a"), Column::auto("b"), Column::auto("c")],
            '\t',
        );
        assert_eq!(
            values(&d, "\t2\t\n"),
            [Value::Str("".into()), Value::Int(2), Value::Str("".into())]
        );
        assert_eq!(values(&dec(), "1,,3")[1], Value::Str("".into()));
    }

    /// Issue 21: a line with NUL bytes and the right column count became a
    /// record with `"\u0000"` in a value.
    #[test]
    fn a_control_character_in_a_text_value_is_not_text() {
        for (line, column, code) in [
            ("1,2,a\0b", "note", "U+0000"),
            ("1,2,\"a\u{1}b\"", "note", "U+0001"),
            ("1,2,ok\u{7f}", "note", "U+007F"),
            ("1,\"\u{1b}[2J\",ok", "cadence", "U+001B"),
            // Inside quotes a line break is kept verbatim, so it counts.
            ("1,2,\"a\nb\"", "note", "U+000A"),
            ("\0,2,3", "speed", "U+0000"),
        ] {
            let e = dec().decode(line.as_bytes()).unwrap_err();
            assert_eq!(e.reason, Reject::NotText, "{line:?}: {}", e.detail);
            assert_eq!(
                e.detail,
                format!(
                    "column \"{column}\": value holds the control character {code}; text may hold \
                     no control character but TAB"
                ),
                "{line:?}"
            );
        }
        // TAB is text; so is a line end and the spaces around a value,
        // which are trimmed before the value is looked at.
        assert_eq!(
            values(&dec(), "1,2,\"a\tb\"\r")[2],
            Value::Str("a\tb".into())
        );
        assert_eq!(values(&dec(), "1,2,x \u{b}\r\n")[2], Value::Str("x".into()));
        // A declared number that is not one is still a type error.
        let typed = CsvDecoder::new(
            &[Column {
                name: "n".into(),
                ty: ColumnType::I64,
            }],
            ',',
        );
        assert_eq!(typed.decode(b"1\x002").unwrap_err().reason, Reject::Type);
    }

    #[test]
    fn a_multibyte_delimiter_works() {
        let d = CsvDecoder::new(&[Column::auto("a"), Column::auto("b")], '§');
        assert_eq!(
            values(&d, "1§\"x§y\""),
            [Value::Int(1), Value::Str("x§y".into())]
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A value and the column type it is written under.
        fn typed_value() -> impl Strategy<Value = (ColumnType, Value)> {
            prop_oneof![
                (any::<i64>(), any::<bool>()).prop_map(|(i, auto)| {
                    (
                        if auto {
                            ColumnType::Auto
                        } else {
                            ColumnType::I64
                        },
                        Value::Int(i),
                    )
                }),
                (
                    any::<f64>().prop_filter("finite", |f| f.is_finite()),
                    any::<bool>()
                )
                    .prop_map(|(f, auto)| (
                        if auto {
                            ColumnType::Auto
                        } else {
                            ColumnType::F64
                        },
                        Value::Float(f)
                    )),
                any::<bool>().prop_map(|b| (ColumnType::Bool, Value::Bool(b))),
                "\\PC*|[ ,\"\t]*".prop_map(|s| (ColumnType::String, Value::Str(s))),
            ]
        }

        fn write(v: &Value) -> String {
            match v {
                Value::Int(i) => i.to_string(),
                // Debug keeps a `.0` or an exponent, so `auto` reads a float.
                Value::Float(f) => format!("{f:?}"),
                Value::Bool(b) => b.to_string(),
                Value::Str(s) => format!("\"{}\"", s.replace('"', "\"\"")),
            }
        }

        proptest! {
            #[test]
            fn written_records_read_back(
                row in prop::collection::vec(typed_value(), 1..8),
                delimiter in prop::sample::select(vec![',', ';', '\t', '|']),
            ) {
                let columns: Vec<Column> = row
                    .iter()
                    .enumerate()
                    .map(|(i, (ty, _))| Column { name: format!("c{i}"), ty: *ty })
                    .collect();
                let line: Vec<String> = row.iter().map(|(_, v)| write(v)).collect();
                let line = line.join(&delimiter.to_string()) + "\r\n";
                let d = CsvDecoder::new(&columns, delimiter);
                let got = d.decode(line.as_bytes()).unwrap();
                let want: Vec<Field> = row
                    .into_iter()
                    .zip(&columns)
                    .map(|((_, value), c)| Field { name: Arc::from(c.name.as_str()), value })
                    .collect();
                prop_assert_eq!(got, Decoded::Fields(want), "{:?}", line);
            }

            #[test]
            fn a_text_value_with_a_control_character_is_not_text(
                before in "\\PC{0,6}",
                after in "\\PC{0,6}",
                control in prop::sample::select(
                    (0u8..0x20).filter(|b| *b != b'\t').chain([0x7f]).collect::<Vec<u8>>()
                ),
            ) {
                let value = format!("{before}{}{after}", char::from(control));
                let line = format!("1,2,\"{}\"\n", value.replace('"', "\"\""));
                let e = dec().decode(line.as_bytes()).unwrap_err();
                prop_assert_eq!(e.reason, Reject::NotText, "{:?}", line);
            }

            #[test]
            fn no_input_panics(
                bytes in prop::collection::vec(any::<u8>(), 0..64),
                text in "[a-z0-9\",. \t\r§]{0,40}",
            ) {
                let typed = CsvDecoder::new(
                    &[Column::auto("a"), Column { name: "b".into(), ty: ColumnType::I64 }],
                    ',',
                );
                for d in [dec(), typed, CsvDecoder::new(&[Column::auto("x")], '§')] {
                    let _ = d.decode(&bytes);
                    let _ = d.decode(text.as_bytes());
                }
            }
        }
    }
}
