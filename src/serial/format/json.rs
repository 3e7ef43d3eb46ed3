//! `json` format: one JSON object per frame into a record.
//!
//! The object is read straight into the record's fields, in the order the
//! device wrote them, by a serde visitor: no intermediate `serde_json::Value`
//! (whose map would reorder the keys) and no per-key allocation beyond the
//! shared name cache. Nested objects and arrays are flattened into dotted
//! names (`a.b`, `c.0`) or rejected, as `nested` says.

use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::typed::{FrameNames, Names, Seen, coerce, control_char, in_column, not_text};
use super::{Decode, DecodeError, Decoded, Reject};
use crate::config::{Column, Nested};
use crate::record::{Field, Value};

/// Levels of nesting below the top object that a frame may have; deeper
/// frames are rejected (counted as `json`) before they cost more work.
pub const MAX_DEPTH: usize = 16;

/// Decodes JSON objects for one sensor. Declared columns must be present
/// and have their declared type; other keys are kept with their JSON type.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    names: Names,
    nested: Nested,
}

impl JsonDecoder {
    pub fn new(columns: &[Column], nested: Nested) -> Self {
        JsonDecoder {
            names: Names::new(columns),
            nested,
        }
    }
}

impl Decode for JsonDecoder {
    fn decode_into(&self, frame: &[u8], fields: Vec<Field>) -> Result<Decoded, DecodeError> {
        let text = std::str::from_utf8(frame)
            .map_err(|_| DecodeError::new(Reject::NotText, "frame is not UTF-8 text"))?;
        if text.trim_ascii().is_empty() {
            return Ok(Decoded::Skip);
        }
        let mut st = State {
            nested: self.nested,
            names: self.names.frame(),
            path: String::new(),
            fields: self.names.fields(fields),
            seen: Seen::new(),
            declared_seen: 0,
            error: None,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = (&mut de)
            .deserialize_map(ObjectVisitor {
                st: &mut st,
                depth: 0,
            })
            .and_then(|()| de.end());
        if let Some(e) = st.error {
            return Err(e);
        }
        parsed.map_err(|e| DecodeError::new(Reject::Json, e.to_string()))?;
        if let Some(e) = self.names.missing(&st.fields, st.declared_seen) {
            return Err(e);
        }
        self.names.done(&st.fields);
        Ok(Decoded::Fields(st.fields))
    }
}

/// One frame's decoding in progress.
struct State<'a> {
    nested: Nested,
    names: FrameNames<'a>,
    /// The flattened name of the value being read (`a.b.0`).
    path: String,
    fields: Vec<Field>,
    seen: Seen,
    /// Declared columns among `fields`; names are unique, so a full count
    /// means none is missing.
    declared_seen: usize,
    /// A failure that is not a JSON syntax error (a declared type, a
    /// repeated key), to be counted under its own reason.
    error: Option<DecodeError>,
}

impl State<'_> {
    /// Adds the value at `path` as a field.
    fn leaf<E: de::Error>(&mut self, value: Value) -> Result<(), E> {
        if let Some(c) = control_char(&self.path) {
            self.error = Some(not_text(format_args!("key {:?}", self.path), c));
            return Err(E::custom("not text"));
        }
        let (name, ty) = self.names.get(&self.path);
        if self.seen.repeated(&self.fields, &name) {
            return Err(E::custom(format_args!("duplicate key \"{}\"", self.path)));
        }
        let value = match ty {
            Some(ty) => {
                self.declared_seen += 1;
                match coerce(ty, value) {
                    Ok(v) => v,
                    Err(e) => {
                        self.error = Some(in_column(&name, e));
                        return Err(E::custom("declared type"));
                    }
                }
            }
            None => value,
        };
        if let Value::Str(text) = &value
            && let Some(c) = control_char(text)
        {
            self.error = Some(in_column(&name, not_text("value", c)));
            return Err(E::custom("not text"));
        }
        self.fields.push(Field { name, value });
        Ok(())
    }

    /// Refuses a nested object or array where it may not be.
    fn enter<E: de::Error>(&self, depth: usize) -> Result<(), E> {
        if depth > 0 && self.nested == Nested::Reject {
            return Err(E::custom(format_args!(
                "\"{}\" holds an object or array, and nested = \"reject\"",
                self.path
            )));
        }
        if depth > MAX_DEPTH {
            return Err(E::custom(format_args!(
                "\"{}\" is nested deeper than {MAX_DEPTH} levels",
                self.path
            )));
        }
        Ok(())
    }
}

/// The top object: only an object is accepted there.
struct ObjectVisitor<'s, 'a> {
    st: &'s mut State<'a>,
    depth: usize,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("one JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        ValueVisitor {
            st: self.st,
            depth: self.depth,
        }
        .visit_map(map)
    }
}

/// Any value at `st.path`.
struct ValueVisitor<'s, 'a> {
    st: &'s mut State<'a>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueVisitor<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.st.leaf(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.st.leaf(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        // Above i64::MAX only a float holds the reading (approximately).
        self.st
            .leaf(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.st.leaf(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.st.leaf(Value::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.st.leaf(Value::Str(v))
    }

    /// `null`: the field is left out, as if the device had not sent it.
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.st.enter(self.depth)?;
        let prefix = self.st.path.len();
        while map
            .next_key_seed(KeySeed {
                path: &mut self.st.path,
                dot: self.depth > 0,
            })?
            .is_some()
        {
            map.next_value_seed(ValueVisitor {
                st: self.st,
                depth: self.depth + 1,
            })?;
            self.st.path.truncate(prefix);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.st.enter(self.depth)?;
        let prefix = self.st.path.len();
        for i in 0usize.. {
            // Writing to a String cannot fail.
            let _ = write!(self.st.path, ".{i}");
            let more = seq.next_element_seed(ValueVisitor {
                st: self.st,
                depth: self.depth + 1,
            })?;
            self.st.path.truncate(prefix);
            if more.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// Appends an object's key to the path, borrowing it from the frame.
struct KeySeed<'s> {
    path: &'s mut String,
    dot: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.dot {
            self.path.push('.');
        }
        self.path.push_str(v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ColumnType;

    fn flat() -> JsonDecoder {
        JsonDecoder::new(&[], Nested::Flatten)
    }

    fn pairs(d: &JsonDecoder, frame: &str) -> Vec<(String, Value)> {
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

    fn reason(d: &JsonDecoder, frame: &str) -> Reject {
        d.decode(frame.as_bytes()).unwrap_err().reason
    }

    #[test]
    fn fields_keep_the_frame_order_and_json_types() {
        assert_eq!(
            pairs(
                &flat(),
                r#" {"z":1,"a":-2.5,"m":"x\"y","b":true,"big":18446744073709551615,"f":1.0} "#
            ),
            [
                p("z", Value::Int(1)),
                p("a", Value::Float(-2.5)),
                p("m", Value::Str("x\"y".into())),
                p("b", Value::Bool(true)),
                p("big", Value::Float(18446744073709551615.0)),
                p("f", Value::Float(1.0)),
            ]
        );
    }

    #[test]
    fn nesting_is_flattened_with_dotted_names_and_nulls_are_left_out() {
        assert_eq!(
            pairs(
                &flat(),
                r#"{"a":{"b":1,"c":{"d":null,"e":"x"}},"l":[2,null,[3,{"k":4}]],"n":null,"o":{}}"#
            ),
            [
                p("a.b", Value::Int(1)),
                p("a.c.e", Value::Str("x".into())),
                p("l.0", Value::Int(2)),
                p("l.2.0", Value::Int(3)),
                p("l.2.1.k", Value::Int(4)),
            ]
        );
        assert_eq!(pairs(&flat(), "{}"), []);
    }

    #[test]
    fn nesting_is_rejected_when_configured() {
        let d = JsonDecoder::new(&[], Nested::Reject);
        assert_eq!(pairs(&d, r#"{"a":1}"#), [p("a", Value::Int(1))]);
        for frame in [r#"{"a":{"b":1}}"#, r#"{"a":[]}"#, r#"{"x":1,"a":{}}"#] {
            let e = d.decode(frame.as_bytes()).unwrap_err();
            assert_eq!(e.reason, Reject::Json, "{frame}");
            assert!(e.detail.contains("nested"), "{}", e.detail);
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let ok = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(pairs(&flat(), &ok).len(), 1);
        let deep = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 2),
            "}".repeat(MAX_DEPTH + 2)
        );
        let e = flat().decode(deep.as_bytes()).unwrap_err();
        assert_eq!(e.reason, Reject::Json);
        assert!(e.detail.contains("deeper"), "{}", e.detail);
        let arrays = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(reason(&flat(), &arrays), Reject::Json);
    }

    #[test]
    fn anything_but_one_object_is_rejected() {
        for frame in [
            "[1]",
            "5",
            "\"x\"",
            "null",
            "{",
            "{\"a\":1}{}",
            "{\"a\":1} x",
            "{\"a\":1,\"a\":2}",
            "{\"a.b\":1,\"a\":{\"b\":2}}",
            "{a:1}",
            "{\"a\":NaN}",
        ] {
            assert_eq!(reason(&flat(), frame), Reject::Json, "{frame}");
        }
        let e = flat().decode(br#"{"t":1,"t":2}"#).unwrap_err();
        assert!(e.detail.contains("duplicate key \"t\""), "{}", e.detail);
        assert_eq!(flat().decode(b" \r\n").unwrap(), Decoded::Skip);
        assert_eq!(reason(&flat(), "{\"a\":\"\u{0}\"}\u{0}"), Reject::Json);
        assert_eq!(
            flat().decode(&[b'{', 0xff, b'}']).unwrap_err().reason,
            Reject::NotText
        );
    }

    #[test]
    fn a_control_character_in_a_string_or_a_key_is_not_text() {
        let tail = "; text may hold no control character but TAB";
        let typed = JsonDecoder::new(
            &[Column {
                name: "id".into(),
                ty: ColumnType::String,
            }],
            Nested::Flatten,
        );
        for (d, frame, detail) in [
            (
                flat(),
                r#"{"t":1,"msg":"a\u0000b"}"#,
                "column \"msg\": value holds the control character U+0000",
            ),
            (
                flat(),
                r#"{"a":{"b":["x","\u001b[2J"]}}"#,
                "column \"a.b.1\": value holds the control character U+001B",
            ),
            (
                typed,
                r#"{"id":"\n7"}"#,
                "column \"id\": value holds the control character U+000A",
            ),
            (
                flat(),
                r#"{"t\u0001":1}"#,
                "key \"t\\u{1}\" holds the control character U+0001",
            ),
            (
                flat(),
                "{\"t\":\"x\u{7f}\"}",
                "column \"t\": value holds the control character U+007F",
            ),
        ] {
            let e = d.decode(frame.as_bytes()).unwrap_err();
            assert_eq!(e.reason, Reject::NotText, "{frame}: {}", e.detail);
            assert_eq!(e.detail, format!("{detail}{tail}"), "{frame}");
        }
        assert_eq!(
            pairs(&flat(), r#"{"msg":"a\tb"}"#),
            [p("msg", Value::Str("a\tb".into()))]
        );
    }

    #[test]
    fn declared_columns_must_be_present_and_typed() {
        let d = JsonDecoder::new(
            &[
                Column {
                    name: "t".into(),
                    ty: ColumnType::F64,
                },
                Column {
                    name: "pos.n".into(),
                    ty: ColumnType::I64,
                },
                Column::auto("id"),
            ],
            Nested::Flatten,
        );
        assert_eq!(
            pairs(&d, r#"{"id":"a","pos":{"n":3.0},"t":21,"x":"7"}"#),
            [
                p("id", Value::Str("a".into())),
                p("pos.n", Value::Int(3)),
                p("t", Value::Float(21.0)),
                p("x", Value::Str("7".into())),
            ]
        );
        let e = d
            .decode(br#"{"id":"a","t":21,"pos":{"n":null}}"#)
            .unwrap_err();
        assert_eq!(e.reason, Reject::Missing);
        assert!(e.detail.contains("\"pos.n\""), "{}", e.detail);
        let e = d
            .decode(br#"{"id":"a","t":"warm","pos":{"n":1}}"#)
            .unwrap_err();
        assert_eq!(e.reason, Reject::Type);
        assert!(e.detail.contains("column \"t\""), "{}", e.detail);
        assert_eq!(
            reason(&d, r#"{"id":"a","t":1,"pos":{"n":1.5}}"#),
            Reject::Type
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
                // Escaped in JSON, `"`, `\\` and TAB read back; other
                // control characters are refused (see below).
                "\\PC*|[\"\\\\\t]*".prop_map(Value::Str),
            ]
        }

        proptest! {
            #[test]
            fn written_objects_read_back_in_order(
                fields in prop::collection::vec(("[^.\\x00-\\x08\\x0A-\\x1F\\x7F]{0,8}", value()), 0..10),
            ) {
                let mut names = std::collections::HashSet::new();
                let fields: Vec<(String, Value)> =
                    fields.into_iter().filter(|(n, _)| names.insert(n.clone())).collect();
                let body: Vec<String> = fields
                    .iter()
                    .map(|(n, v)| format!("{}:{}", serde_json::to_string(n).unwrap(), v.to_json()))
                    .collect();
                let frame = format!("{{{}}}\n", body.join(","));
                prop_assert_eq!(pairs(&flat(), &frame), fields);
            }

            #[test]
            fn a_string_with_a_control_character_is_not_text(
                before in "\\PC{0,6}",
                after in "\\PC{0,6}",
                control in prop::sample::select(
                    (0u8..0x20).filter(|b| *b != b'\t').chain([0x7f]).collect::<Vec<u8>>()
                ),
                in_key in any::<bool>(),
            ) {
                let text = serde_json::to_string(&format!("{before}{}{after}", char::from(control)))
                    .unwrap();
                let frame = if in_key { format!("{{{text}:1}}") } else { format!("{{\"v\":{text}}}") };
                let e = flat().decode(frame.as_bytes()).unwrap_err();
                prop_assert_eq!(e.reason, Reject::NotText, "{:?}", frame);
            }

            #[test]
            fn no_input_panics(
                bytes in prop::collection::vec(any::<u8>(), 0..64),
                text in "[{}\\[\\]\":,0-9a-z.\\\\ eE+-]{0,48}",
            ) {
                let typed = JsonDecoder::new(
                    &[Column { name: "a".into(), ty: ColumnType::I64 }, Column::auto("b.0")],
                    Nested::Flatten,
                );
                for d in [flat(), typed, JsonDecoder::new(&[], Nested::Reject)] {
                    let _ = d.decode(&bytes);
                    let _ = d.decode(text.as_bytes());
                }
            }
        }
    }
}
