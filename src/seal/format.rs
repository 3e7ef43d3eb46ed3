//! The JSON shapes inside a sealed message: the JWS protected header, the
//! payload (the batch) and the JWE plaintext. `docs/FORMAT-v1.md` is the
//! contract; this file is its one implementation. Sealing serializes
//! straight from borrowed [`Record`]s (no intermediate JSON tree); opening
//! parses into owned-or-borrowed structs with strict member checks.

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::jwe::Jwe;
use crate::record::{Record, format_ts};

/// The payload format version (`"v"`). Bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// The JWS `typ` (explicit typing, RFC 8725 §3.11): stops a JWS signed by
/// the same key for another purpose from being taken for a sealed message.
pub const JWS_TYP: &str = "sensorgate-sealed+json";
/// The JWS `alg`.
pub const JWS_ALG: &str = "ES256";

/// The JWS protected header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwsHeader<'a> {
    #[serde(borrow)]
    pub alg: Cow<'a, str>,
    #[serde(borrow)]
    pub kid: Cow<'a, str>,
    #[serde(borrow)]
    pub typ: Cow<'a, str>,
}

/// The sealed message itself: a JWS in flattened JSON serialization
/// (RFC 7515 §7.2.2). No unprotected `header` member.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwsIn<'a> {
    #[serde(borrow)]
    pub protected: Cow<'a, str>,
    #[serde(borrow)]
    pub payload: Cow<'a, str>,
    #[serde(borrow)]
    pub signature: Cow<'a, str>,
}

/// A record's named values in column order. Serializes as a JSON object
/// whose members keep that order (serde_json's own `Map` sorts its keys
/// unless the `preserve_order` feature is on, which this crate does not
/// rely on). Duplicate names are refused when parsing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldMap(Vec<(String, serde_json::Value)>);

impl FieldMap {
    pub fn new() -> FieldMap {
        FieldMap(Vec::new())
    }

    pub fn with_capacity(n: usize) -> FieldMap {
        FieldMap(Vec::with_capacity(n))
    }

    /// Appends a field at the end (the caller keeps names unique).
    pub fn push(&mut self, name: String, value: serde_json::Value) {
        self.0.push((name, value));
    }

    /// The value of the field called `name`.
    pub fn get(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fields in column order, as `(name, value)` like `serde_json::Map::iter`.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &serde_json::Value)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    /// The names in column order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// A serde_json map (ordered only with serde_json's `preserve_order`).
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        self.0.iter().cloned().collect()
    }

    pub fn into_vec(self) -> Vec<(String, serde_json::Value)> {
        self.0
    }
}

impl std::ops::Index<&str> for FieldMap {
    type Output = serde_json::Value;

    /// Like `serde_json::Map`'s indexing: panics on a missing name.
    fn index(&self, name: &str) -> &serde_json::Value {
        self.get(name)
            .unwrap_or_else(|| panic!("no field named {name:?}"))
    }
}

impl<'a> IntoIterator for &'a FieldMap {
    type Item = (&'a String, &'a serde_json::Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, serde_json::Value)>,
        fn(&'a (String, serde_json::Value)) -> (&'a String, &'a serde_json::Value),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(n, v)| (n, v))
    }
}

impl IntoIterator for FieldMap {
    type Item = (String, serde_json::Value);
    type IntoIter = std::vec::IntoIter<(String, serde_json::Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Serialize for FieldMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for FieldMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = FieldMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of field values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<FieldMap, A::Error> {
                let mut fields = FieldMap::with_capacity(access.size_hint().unwrap_or(8));
                while let Some((name, value)) = access.next_entry::<String, serde_json::Value>()? {
                    if fields.contains_key(&name) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate field {name:?}"
                        )));
                    }
                    fields.push(name, value);
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(OrderedVisitor)
    }
}

/// The payload as parsed by the opener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PayloadIn<'a> {
    pub v: u32,
    #[serde(borrow)]
    pub gateway: Cow<'a, str>,
    #[serde(borrow)]
    pub sensor: Cow<'a, str>,
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
    pub seq: [u64; 2],
    #[serde(borrow)]
    pub records: Vec<RecordIn<'a>>,
    #[serde(borrow, default)]
    pub jwe: Option<Jwe<'a>>,
}

/// Only the version, to explain a payload of another version precisely.
#[derive(Deserialize)]
pub(crate) struct VersionOnly {
    pub v: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordIn<'a> {
    pub seq: u64,
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    pub fields: FieldMap,
    #[serde(default)]
    pub encrypted: Vec<usize>,
}

/// Which fields a sealer encrypts: the configured names.
#[derive(Clone, Copy)]
pub(crate) struct Selection<'a>(pub &'a [String]);

impl Selection<'_> {
    pub fn encrypts(&self, name: &str) -> bool {
        self.0.iter().any(|e| e == name)
    }

    /// True when `record` has at least one field to encrypt.
    pub fn any_in(&self, record: &Record) -> bool {
        record.fields.iter().any(|f| self.encrypts(&f.name))
    }
}

/// The payload as written by the sealer, borrowing the batch.
#[derive(Serialize)]
pub(crate) struct PayloadOut<'a> {
    pub v: u32,
    pub gateway: &'a str,
    pub sensor: &'a str,
    pub epoch: &'a str,
    pub seq: [u64; 2],
    pub records: RecordsOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwe: Option<Jwe<'a>>,
}

pub(crate) struct RecordsOut<'a> {
    pub records: &'a [Record],
    pub selection: Selection<'a>,
}

impl Serialize for RecordsOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.records.len()))?;
        for record in self.records {
            seq.serialize_element(&RecordOut {
                record,
                selection: self.selection,
            })?;
        }
        seq.end()
    }
}

/// `{"seq":..,"ts":..,"fields":{clear fields},"encrypted":[column indexes]}`;
/// `encrypted` is left out when the record has no encrypted field.
struct RecordOut<'a> {
    record: &'a Record,
    selection: Selection<'a>,
}

impl Serialize for RecordOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let has_encrypted = self.selection.any_in(self.record);
        let mut map = serializer.serialize_map(Some(3 + usize::from(has_encrypted)))?;
        map.serialize_entry("seq", &self.record.seq)?;
        map.serialize_entry("ts", &format_ts(self.record.ts))?;
        map.serialize_entry(
            "fields",
            &FieldsOut {
                record: self.record,
                selection: self.selection,
                encrypted: false,
            },
        )?;
        if has_encrypted {
            map.serialize_entry(
                "encrypted",
                &Positions {
                    record: self.record,
                    selection: self.selection,
                },
            )?;
        }
        map.end()
    }
}

/// The clear (or, with `encrypted`, the encrypted) fields of a record as a
/// JSON object in column order.
struct FieldsOut<'a> {
    record: &'a Record,
    selection: Selection<'a>,
    encrypted: bool,
}

impl Serialize for FieldsOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for field in &self.record.fields {
            if self.selection.encrypts(&field.name) == self.encrypted {
                map.serialize_entry(&*field.name, &field.value)?;
            }
        }
        map.end()
    }
}

struct Positions<'a> {
    record: &'a Record,
    selection: Selection<'a>,
}

impl Serialize for Positions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for (i, field) in self.record.fields.iter().enumerate() {
            if self.selection.encrypts(&field.name) {
                seq.serialize_element(&i)?;
            }
        }
        seq.end()
    }
}

/// The JWE plaintext: one object per record (aligned with `records`), each
/// holding that record's encrypted fields in column order (`{}` for a record
/// without any).
pub(crate) struct PlaintextOut<'a> {
    pub records: &'a [Record],
    pub selection: Selection<'a>,
}

impl Serialize for PlaintextOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.records.len()))?;
        for record in self.records {
            seq.serialize_element(&FieldsOut {
                record,
                selection: self.selection,
                encrypted: true,
            })?;
        }
        seq.end()
    }
}

/// Puts a record's decrypted fields back at their column positions.
/// `positions` must be strictly increasing and within the merged length.
pub(crate) fn merge(
    clear: FieldMap,
    encrypted: FieldMap,
    positions: &[usize],
) -> Result<FieldMap, String> {
    if encrypted.len() != positions.len() {
        return Err(format!(
            "{} encrypted positions but {} decrypted fields",
            positions.len(),
            encrypted.len()
        ));
    }
    let total = clear.len() + encrypted.len();
    if positions.windows(2).any(|w| w[0] >= w[1]) || positions.last().is_some_and(|&p| p >= total) {
        return Err(format!(
            "encrypted positions {positions:?} are not increasing column indexes below {total}"
        ));
    }
    let mut merged = FieldMap::with_capacity(total);
    let mut clear = clear.into_iter();
    let mut encrypted = encrypted
        .into_iter()
        .zip(positions.iter().copied())
        .peekable();
    for i in 0..total {
        let (name, value) = match encrypted.peek() {
            Some(&(_, at)) if at == i => encrypted.next().map(|(f, _)| f),
            _ => clear.next(),
        }
        .expect("counts checked above");
        if merged.contains_key(&name) {
            return Err(format!("field {name:?} is both clear and encrypted"));
        }
        merged.push(name, value);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fm(pairs: &[(&str, serde_json::Value)]) -> FieldMap {
        let mut m = FieldMap::new();
        for (n, v) in pairs {
            m.push(n.to_string(), v.clone());
        }
        m
    }

    #[test]
    fn field_maps_keep_column_order_both_ways() {
        let text = r#"{"zeta":1,"alpha":"a","mid":true}"#;
        let m: FieldMap = serde_json::from_str(text).unwrap();
        assert_eq!(m.names().collect::<Vec<_>>(), ["zeta", "alpha", "mid"]);
        assert_eq!(serde_json::to_string(&m).unwrap(), text);
        assert_eq!(m["alpha"], json!("a"));
        assert!(serde_json::from_str::<FieldMap>(r#"{"a":1,"a":2}"#).is_err());
    }

    #[test]
    fn merge_puts_encrypted_fields_back_in_their_columns() {
        let clear = fm(&[("speed", json!(1)), ("power", json!(2))]);
        let enc = fm(&[("hr", json!(3)), ("incline", json!(4))]);
        let m = merge(clear.clone(), enc.clone(), &[0, 2]).unwrap();
        assert_eq!(
            m.names().collect::<Vec<_>>(),
            ["hr", "speed", "incline", "power"]
        );
        assert!(merge(clear.clone(), enc.clone(), &[2, 0]).is_err());
        assert!(merge(clear.clone(), enc.clone(), &[1, 4]).is_err());
        assert!(merge(clear.clone(), enc, &[1]).is_err());
        let dup = fm(&[("speed", json!(9))]);
        assert!(merge(clear, dup, &[0]).is_err());
    }
}
