//! Declared column types (`type = "f64"`) applied to values, and the field
//! names of the text formats.
//!
//! A column's type is a promise about the device: a value that breaks it is
//! rejected (counted as `type`) rather than passed on with another type, so
//! consumers of a sensor's records can rely on the schema.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{DecodeError, Reject};
use crate::config::{Column, ColumnType};
use crate::record::{Field, Value};

/// Characters of an offending value kept in an error's detail.
const DETAIL_CHARS: usize = 32;

/// Types the text of one value as its column declares. `auto` is
/// [`Value::parse`]; the others parse the trimmed text and reject what does
/// not fit. `string` keeps the (trimmed) text, so `007` stays `007`. A text
/// result holding a control character is rejected ([`control_char`]).
pub fn parse_text(ty: ColumnType, raw: &str) -> Result<Value, DecodeError> {
    let t = trim(raw);
    match ty {
        ColumnType::Auto => match auto_scalar(t) {
            Some(v) => Ok(v),
            None => text_value(t.to_string()),
        },
        ColumnType::String => text_value(t.to_string()),
        _ => parse_scalar(ty, t).ok_or_else(|| type_error(ty, &Value::Str(t.to_string()))),
    }
}

/// Like [`parse_text`] for a value the device quoted (csv, kv): the quotes
/// say where the text starts and ends, so a text result keeps it verbatim,
/// spaces included; numbers and booleans are still read from it.
pub(super) fn parse_quoted(ty: ColumnType, text: Cow<'_, str>) -> Result<Value, DecodeError> {
    // Checked before typing: trimming would hide a CR or LF at either end
    // of a number (`"\n0"`), which is line noise all the same.
    if let Some(c) = control_char(&text) {
        return Err(not_text("value", c));
    }
    match ty {
        ColumnType::Auto => match auto_scalar(text.trim()) {
            Some(v) => Ok(v),
            None => text_value(text.into_owned()),
        },
        ColumnType::String => text_value(text.into_owned()),
        _ => parse_text(ty, &text),
    }
}

/// `raw` without white space at either end; the common value, whose
/// first and last bytes are printable ASCII, is told from them alone.
pub(super) fn trim(raw: &str) -> &str {
    let plain = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_graphic());
    if plain(raw.as_bytes().first()) && plain(raw.as_bytes().last()) {
        raw
    } else {
        raw.trim()
    }
}

/// `s` as a text value, if it is text ([`control_char`]).
fn text_value(s: String) -> Result<Value, DecodeError> {
    match control_char(&s) {
        None => Ok(Value::Str(s)),
        Some(c) => Err(not_text("value", c)),
    }
}

/// The first control character that text may not hold: a C0 control other
/// than TAB (U+0000–U+0008, U+000A–U+001F) or DEL (U+007F).
///
/// In a value (or in a name the frame gives a field) such a byte is line
/// noise or a device fault, never part of a reading, and a record carrying
/// it would hand it on to every consumer (a NUL ends a C string, an escape
/// sequence reaches a terminal); the frame is rejected as
/// [`Reject::NotText`] with [`not_text`].
pub(super) fn control_char(s: &str) -> Option<u8> {
    // Bytes below 0x80 are whole characters in UTF-8: no need to decode.
    s.bytes().find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// The [`Reject::NotText`] error for `what` (`value`, `key "a"`) holding
/// the control character `c`.
pub(super) fn not_text(what: impl std::fmt::Display, c: u8) -> DecodeError {
    DecodeError::new(
        Reject::NotText,
        format!(
            "{what} holds the control character U+{c:04X}; text may hold no control character \
             but TAB"
        ),
    )
}

/// Converts a value that already has a type (a JSON scalar) to its
/// column's type, where that loses nothing: an integral float to `i64`, a
/// number to `f64`, `0`/`1` to `bool`, text that parses, anything to
/// `string` (numbers written as JSON writes them).
pub fn coerce(ty: ColumnType, v: Value) -> Result<Value, DecodeError> {
    match (ty, v) {
        (ColumnType::Auto, v) => Ok(v),
        (ColumnType::I64, Value::Int(i)) => Ok(Value::Int(i)),
        // -2^63 is exact in f64; 2^63 is the first float above i64::MAX.
        (ColumnType::I64, Value::Float(f))
            if f.fract() == 0.0 && (-I64_BOUND..I64_BOUND).contains(&f) =>
        {
            Ok(Value::Int(f as i64))
        }
        (ColumnType::F64, Value::Int(i)) => Ok(Value::Float(i as f64)),
        (ColumnType::F64, Value::Float(f)) if f.is_finite() => Ok(Value::Float(f)),
        (ColumnType::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
        (ColumnType::Bool, Value::Int(i @ (0 | 1))) => Ok(Value::Bool(i == 1)),
        (ColumnType::String, Value::Str(s)) => Ok(Value::Str(s)),
        (ColumnType::String, Value::Int(i)) => Ok(Value::Str(i.to_string())),
        (ColumnType::String, Value::Bool(b)) => Ok(Value::Str(b.to_string())),
        // serde_json's serializer writes the shortest form that reads back
        // (`1.0`, `1e300`); a non-finite float cannot come from JSON.
        (ColumnType::String, Value::Float(f)) => Ok(Value::Str(match f.is_finite() {
            true => serde_json::to_string(&f).unwrap_or_else(|_| f.to_string()),
            false => f.to_string(),
        })),
        (ty, Value::Str(s)) => {
            parse_scalar(ty, s.trim()).ok_or_else(|| type_error(ty, &Value::Str(s)))
        }
        (ty, v) => Err(type_error(ty, &v)),
    }
}

/// 2^63: the first float above `i64::MAX`; its negation is `i64::MIN`.
const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;

/// What [`Value::parse`] makes of text other than a string, without
/// allocating: an integer, a finite float, `true` or `false`.
fn auto_scalar(t: &str) -> Option<Value> {
    if let Some(d) = Decimal::read(t) {
        return Some(match d.scale {
            None => Value::Int(d.as_i64()),
            Some(_) => Value::Float(d.as_f64()),
        });
    }
    if let Ok(i) = t.parse::<i64>() {
        return Some(Value::Int(i));
    }
    if let Ok(f) = t.parse::<f64>()
        && f.is_finite()
    {
        return Some(Value::Float(f));
    }
    match t {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        _ => None,
    }
}

/// A plain decimal, `-?[0-9]+(\.[0-9]+)?` with at most 15 digits: the form
/// nearly every sensor writes, read without the general parsers (a third
/// of the instructions a record cost on the Pi to decode).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Decimal {
    negative: bool,
    /// The digits as an integer, the decimal point ignored: below 10^15,
    /// so exact in an `f64`.
    digits: u64,
    /// How many digits follow the decimal point; `None` without one.
    scale: Option<usize>,
}

/// 10^0 ..= 10^15, all exact in an `f64`.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

impl Decimal {
    /// `t` as a plain decimal, or `None` for anything else (signs other
    /// than a leading `-`, exponents, `.5`, `5.`, more digits), which the
    /// general parsers then read.
    fn read(t: &str) -> Option<Decimal> {
        let bytes = t.as_bytes();
        let (negative, body) = match bytes.split_first()? {
            (b'-', body) => (true, body),
            _ => (false, bytes),
        };
        if body.is_empty() || body.len() > 16 {
            return None;
        }
        let (mut digits, mut count, mut scale) = (0u64, 0usize, None);
        for (i, &b) in body.iter().enumerate() {
            match b {
                b'0'..=b'9' => {
                    digits = digits * 10 + u64::from(b - b'0');
                    count += 1;
                }
                b'.' if scale.is_none() && i > 0 && i + 1 < body.len() => {
                    scale = Some(body.len() - i - 1)
                }
                _ => return None,
            }
        }
        (count <= 15).then_some(Decimal {
            negative,
            digits,
            scale,
        })
    }

    /// The integer (no decimal point): `-0` is 0, as `str::parse` says.
    fn as_i64(self) -> i64 {
        let magnitude = self.digits as i64;
        if self.negative { -magnitude } else { magnitude }
    }

    /// The nearest `f64`, as `str::parse` gives it: both the digits and
    /// the power of ten are exact, so one correctly rounded division is
    /// the correctly rounded value (Clinger's fast path, the one the
    /// standard parser takes first). `-0` and `-0.0` are -0.0.
    fn as_f64(self) -> f64 {
        let magnitude = self.digits as f64 / POW10[self.scale.unwrap_or(0)];
        if self.negative { -magnitude } else { magnitude }
    }
}

/// Trimmed text as `i64`, finite `f64` or `bool` (true/false/1/0, any case).
fn parse_scalar(ty: ColumnType, t: &str) -> Option<Value> {
    match (ty, Decimal::read(t)) {
        (ColumnType::I64, Some(d)) if d.scale.is_none() => return Some(Value::Int(d.as_i64())),
        (ColumnType::F64, Some(d)) => return Some(Value::Float(d.as_f64())),
        _ => {}
    }
    match ty {
        ColumnType::I64 => t.parse().ok().map(Value::Int),
        ColumnType::F64 => t
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float),
        ColumnType::Bool => {
            if t.eq_ignore_ascii_case("true") || t == "1" {
                Some(Value::Bool(true))
            } else if t.eq_ignore_ascii_case("false") || t == "0" {
                Some(Value::Bool(false))
            } else {
                None
            }
        }
        ColumnType::Auto | ColumnType::String => None,
    }
}

fn type_error(ty: ColumnType, v: &Value) -> DecodeError {
    let shown = match v {
        Value::Str(s) => {
            let cut: String = s.chars().take(DETAIL_CHARS).collect();
            let more = if cut.len() < s.len() { "..." } else { "" };
            format!("{cut:?}{more}")
        }
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
    };
    DecodeError::new(
        Reject::Type,
        format!("value {shown} is not a valid {ty}; check the column's declared type"),
    )
}

/// Prefixes a type error with the column it happened in.
pub(super) fn in_column(name: &str, mut e: DecodeError) -> DecodeError {
    e.detail = format!("column \"{name}\": {}", e.detail);
    e
}

/// Names a text format may meet more than once: not-yet-seen keys of json
/// and kv frames.
const CACHED_NAMES: usize = 256;

/// The field names of a format whose frames name their own fields (json,
/// kv): the declared columns, plus a bounded cache of the other keys seen,
/// so that a steady stream of frames shares its names (`Arc<str>`) instead
/// of allocating one per field. The cache is shared by clones and is
/// thread-safe; a decoder that finds it busy allocates instead of waiting.
#[derive(Debug, Clone)]
pub(super) struct Names {
    columns: Arc<[(Arc<str>, ColumnType)]>,
    cache: Arc<Mutex<HashSet<Arc<str>>>>,
    /// Fields in the last frame: the next frame's capacity.
    last_len: Arc<AtomicUsize>,
}

/// The names of one frame: holds the cache for the frame's duration.
pub(super) struct FrameNames<'a> {
    names: &'a Names,
    cache: Option<std::sync::MutexGuard<'a, HashSet<Arc<str>>>>,
}

impl Names {
    pub(super) fn new(columns: &[Column]) -> Names {
        Names {
            columns: columns
                .iter()
                .map(|c| (Arc::from(c.name.as_str()), c.ty))
                .collect(),
            cache: Arc::default(),
            last_len: Arc::default(),
        }
    }

    pub(super) fn frame(&self) -> FrameNames<'_> {
        FrameNames {
            names: self,
            cache: self.cache.try_lock().ok(),
        }
    }

    /// `fields` (empty) with room for one frame's fields, as many as the
    /// last frame's.
    pub(super) fn fields(&self, mut fields: Vec<Field>) -> Vec<Field> {
        let n = self.last_len.load(Ordering::Relaxed);
        fields.reserve(n.min(256).max(self.columns.len()));
        fields
    }

    pub(super) fn done(&self, fields: &[Field]) {
        self.last_len.store(fields.len(), Ordering::Relaxed);
    }

    /// Names a declared column absent from `fields` (which has no
    /// duplicate names), as a [`Reject::Missing`] error.
    pub(super) fn missing(&self, fields: &[Field], declared_seen: usize) -> Option<DecodeError> {
        if declared_seen == self.columns.len() {
            return None;
        }
        let absent = self
            .columns
            .iter()
            .find(|(c, _)| !fields.iter().any(|f| f.name == *c))?;
        Some(DecodeError::new(
            Reject::Missing,
            format!("declared column \"{}\" is missing from the frame", absent.0),
        ))
    }
}

impl FrameNames<'_> {
    /// The shared name for `key`, and its column's index and type when it
    /// is a declared column.
    pub(super) fn get(&mut self, key: &str) -> (Arc<str>, Option<ColumnType>) {
        if let Some((name, ty)) = self.names.columns.iter().find(|(c, _)| **c == *key) {
            return (name.clone(), Some(*ty));
        }
        let Some(cache) = self.cache.as_mut() else {
            return (Arc::from(key), None);
        };
        if let Some(name) = cache.get(key) {
            return (name.clone(), None);
        }
        let name: Arc<str> = Arc::from(key);
        if cache.len() < CACHED_NAMES {
            cache.insert(name.clone());
        }
        (name, None)
    }
}

/// Fields beyond which duplicate names are found by hashing, not scanning.
const SCAN_LIMIT: usize = 16;

/// Whether `fields` already has a field called `name`. Frames are bounded
/// (`max_frame`), but a frame of many short keys would make a plain scan
/// quadratic, so long frames use a set.
pub(super) struct Seen {
    set: Option<HashSet<Arc<str>>>,
}

impl Seen {
    pub(super) fn new() -> Seen {
        Seen { set: None }
    }

    /// Whether `name` was already in `fields`; call before pushing it.
    pub(super) fn repeated(&mut self, fields: &[Field], name: &Arc<str>) -> bool {
        if let Some(set) = &mut self.set {
            return !set.insert(name.clone());
        }
        if fields.len() < SCAN_LIMIT {
            return fields.iter().any(|f| f.name == *name);
        }
        let mut set: HashSet<Arc<str>> = fields.iter().map(|f| f.name.clone()).collect();
        let repeated = !set.insert(name.clone());
        self.set = Some(set);
        repeated
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn declared_types_parse_trimmed_text() {
        assert_eq!(parse_text(ColumnType::I64, " 42 ").unwrap(), Value::Int(42));
        assert_eq!(
            parse_text(ColumnType::F64, "42").unwrap(),
            Value::Float(42.0)
        );
        assert_eq!(
            parse_text(ColumnType::F64, "-1.5e3").unwrap(),
            Value::Float(-1500.0)
        );
        for t in ["true", "TRUE", "True", "1"] {
            assert_eq!(parse_text(ColumnType::Bool, t).unwrap(), Value::Bool(true));
        }
        for t in ["false", "FALSE", "0"] {
            assert_eq!(parse_text(ColumnType::Bool, t).unwrap(), Value::Bool(false));
        }
        assert_eq!(
            parse_text(ColumnType::String, " 007 ").unwrap(),
            Value::Str("007".into())
        );
        assert_eq!(
            parse_text(ColumnType::Auto, " 007 ").unwrap(),
            Value::Int(7)
        );
    }

    #[test]
    fn values_that_break_the_declared_type_are_rejected_and_named() {
        for (ty, t) in [
            (ColumnType::I64, "4.5"),
            (ColumnType::I64, ""),
            (ColumnType::I64, "99999999999999999999"),
            (ColumnType::F64, "NaN"),
            (ColumnType::F64, "inf"),
            (ColumnType::F64, "abc"),
            (ColumnType::Bool, "yes"),
            (ColumnType::Bool, "2"),
        ] {
            let e = parse_text(ty, t).unwrap_err();
            assert_eq!(e.reason, Reject::Type, "{ty} {t}");
            assert!(e.detail.contains(ty.as_str()), "{}", e.detail);
            assert!(e.detail.contains(&format!("{t:?}")), "{}", e.detail);
        }
        let long = "x".repeat(1000);
        let e = parse_text(ColumnType::I64, &long).unwrap_err();
        assert!(e.detail.len() < 120, "{}", e.detail);
        assert!(e.detail.contains("..."));
    }

    #[test]
    fn quoted_text_keeps_its_spaces() {
        let q = |ty, s: &str| parse_quoted(ty, Cow::Borrowed(s)).unwrap();
        assert_eq!(q(ColumnType::Auto, " a b "), Value::Str(" a b ".into()));
        assert_eq!(q(ColumnType::String, " 1 "), Value::Str(" 1 ".into()));
        assert_eq!(q(ColumnType::Auto, " 1 "), Value::Int(1));
        assert_eq!(q(ColumnType::F64, "1"), Value::Float(1.0));
    }

    #[test]
    fn json_values_coerce_only_without_loss() {
        use ColumnType::*;
        assert_eq!(coerce(I64, Value::Int(5)).unwrap(), Value::Int(5));
        assert_eq!(coerce(I64, Value::Float(5.0)).unwrap(), Value::Int(5));
        assert_eq!(
            coerce(I64, Value::Float(-I64_BOUND)).unwrap(),
            Value::Int(i64::MIN)
        );
        assert_eq!(
            coerce(I64, Value::Str(" 12 ".into())).unwrap(),
            Value::Int(12)
        );
        assert_eq!(coerce(F64, Value::Int(3)).unwrap(), Value::Float(3.0));
        assert_eq!(
            coerce(F64, Value::Str("2.5".into())).unwrap(),
            Value::Float(2.5)
        );
        assert_eq!(coerce(Bool, Value::Int(1)).unwrap(), Value::Bool(true));
        assert_eq!(coerce(Bool, Value::Int(0)).unwrap(), Value::Bool(false));
        assert_eq!(
            coerce(Bool, Value::Str("False".into())).unwrap(),
            Value::Bool(false)
        );
        assert_eq!(
            coerce(String, Value::Int(7)).unwrap(),
            Value::Str("7".into())
        );
        assert_eq!(
            coerce(String, Value::Float(1.0)).unwrap(),
            Value::Str("1.0".into())
        );
        assert_eq!(
            coerce(String, Value::Float(1e300)).unwrap(),
            Value::Str("1e+300".into())
        );
        assert_eq!(
            coerce(String, Value::Bool(true)).unwrap(),
            Value::Str("true".into())
        );
        assert_eq!(
            coerce(Auto, Value::Str("7".into())).unwrap(),
            Value::Str("7".into())
        );
        for (ty, v) in [
            (I64, Value::Float(5.5)),
            (I64, Value::Float(I64_BOUND)),
            (I64, Value::Float(f64::NAN)),
            (I64, Value::Bool(true)),
            (I64, Value::Str("x".into())),
            (F64, Value::Bool(false)),
            (F64, Value::Float(f64::INFINITY)),
            (F64, Value::Str("nan".into())),
            (Bool, Value::Int(2)),
            (Bool, Value::Float(1.0)),
        ] {
            let e = coerce(ty, v.clone()).unwrap_err();
            assert_eq!(e.reason, Reject::Type, "{ty} {v:?}");
        }
    }

    #[test]
    fn names_are_shared_between_frames_and_the_cache_is_bounded() {
        let names = Names::new(&[Column {
            name: "t".into(),
            ty: ColumnType::F64,
        }]);
        let (a, ty) = names.frame().get("t");
        assert_eq!(ty, Some(ColumnType::F64));
        assert!(Arc::ptr_eq(&a, &names.columns[0].0));
        let (x1, ty) = names.frame().get("x");
        let (x2, _) = names.clone().frame().get("x");
        assert_eq!(ty, None);
        assert!(Arc::ptr_eq(&x1, &x2));
        let mut f = names.frame();
        for i in 0..1000 {
            f.get(&format!("k{i}"));
        }
        drop(f);
        assert_eq!(names.cache.lock().unwrap().len(), CACHED_NAMES);
    }

    #[test]
    fn repeated_names_are_found_in_short_and_long_frames() {
        let mut fields = Vec::new();
        let mut seen = Seen::new();
        for i in 0..40 {
            let name: Arc<str> = Arc::from(format!("k{i}").as_str());
            assert!(!seen.repeated(&fields, &name));
            fields.push(Field {
                name,
                value: Value::Int(i),
            });
        }
        assert!(seen.repeated(&fields, &Arc::from("k3")));
        assert!(Seen::new().repeated(&fields[..5], &Arc::from("k3")));
        assert!(!Seen::new().repeated(&fields[..3], &Arc::from("k3")));
    }

    /// The same value, bit for bit (`-0.0` is not `0.0` here).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    proptest! {
        #[test]
        fn plain_decimals_read_as_the_standard_parsers_read_them(
            s in "-?[0-9]{0,17}(\\.[0-9]{0,17})?|-?0\\.0{0,3}|-?[0-9]{1,3}\\.?|-?\\.[0-9]{1,3}",
        ) {
            let general = s
                .parse::<i64>()
                .map(Value::Int)
                .ok()
                .or_else(|| s.parse::<f64>().ok().map(Value::Float));
            let auto = parse_text(ColumnType::Auto, &s).ok();
            match (&auto, &general) {
                (Some(a), Some(g)) => prop_assert!(same(a, g), "{s}: {a:?} vs {g:?}"),
                (_, None) => prop_assert!(matches!(auto, Some(Value::Str(_)) | None), "{s}: {auto:?}"),
                (None, Some(g)) => prop_assert!(false, "{s}: refused, but the parsers read {g:?}"),
            }
            let f64s = parse_text(ColumnType::F64, &s).ok();
            let f64_general = s.parse::<f64>().ok().map(Value::Float);
            prop_assert_eq!(f64s.is_some(), f64_general.is_some(), "{}", s);
            if let (Some(a), Some(g)) = (&f64s, &f64_general) {
                prop_assert!(same(a, g), "{s}: {a:?} vs {g:?}");
            }
            prop_assert_eq!(
                parse_text(ColumnType::I64, &s).ok(),
                s.parse::<i64>().ok().map(Value::Int)
            );
        }

        #[test]
        fn auto_is_value_parse(s in "\\PC{0,12}|[-+0-9.eE ]{0,12}|true|false") {
            prop_assert_eq!(parse_text(ColumnType::Auto, &s).unwrap(), Value::parse(&s));
        }
    }
}
