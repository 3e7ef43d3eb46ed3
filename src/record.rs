//! A *record*: one decoded reading from a sensor.
//!
//! Records are what the serial stage produces and what the seal stage packs
//! into a sealed message. They carry no transport or crypto detail.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A typed field value. Serialized as the plain JSON scalar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Value {
    /// Types a raw text value: integer, then float, otherwise the string
    /// itself. `true`/`false` are booleans.
    pub fn parse(raw: &str) -> Value {
        let t = raw.trim();
        if let Ok(i) = t.parse::<i64>() {
            return Value::Int(i);
        }
        if let Ok(f) = t.parse::<f64>() {
            if f.is_finite() {
                return Value::Float(f);
            }
        }
        match t {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::Str(t.to_string()),
        }
    }

    /// The value as JSON, as it appears on the wire and in `open` output.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.clone()),
        }
    }
}

/// One named value of a record. Names are shared per sensor (`Arc<str>`), so
/// a record costs one allocation per value, not per name.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: Arc<str>,
    pub value: Value,
}

/// One decoded reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The sensor's configured name.
    pub sensor: Arc<str>,
    /// Per-sensor sequence number; never reused for the same epoch.
    pub seq: u64,
    /// When the gateway received the frame (UTC), or the device's own time
    /// from the sensor's `time_field`.
    pub ts: SystemTime,
    /// The values in the order the frame carried them.
    pub fields: Vec<Field>,
}

impl Record {
    /// The value of the field called `name`, if the record has one.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|f| &*f.name == name)
            .map(|f| &f.value)
    }
}

/// Formats a timestamp as RFC 3339 UTC with nanoseconds, the form used on
/// the wire (`2026-11-25T20:04:37.123456789Z`).
pub fn format_ts(ts: SystemTime) -> String {
    humantime::format_rfc3339_nanos(ts).to_string()
}

/// Parses a timestamp written by [`format_ts`] (on every word size: see
/// [`crate::rfc3339`]).
pub fn parse_ts(s: &str) -> Option<SystemTime> {
    crate::rfc3339::parse(s, crate::rfc3339::Strictness::Utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_from_text() {
        assert_eq!(Value::parse("42"), Value::Int(42));
        assert_eq!(Value::parse("-3"), Value::Int(-3));
        assert_eq!(Value::parse("2.5"), Value::Float(2.5));
        assert_eq!(Value::parse("true"), Value::Bool(true));
        assert_eq!(Value::parse("abc"), Value::Str("abc".into()));
        assert_eq!(Value::parse("NaN"), Value::Str("NaN".into()));
    }

    #[test]
    fn timestamps_round_trip_with_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_764_100_000, 123_456_789);
        let s = format_ts(t);
        assert_eq!(s, "2025-11-25T19:46:40.123456789Z");
        assert_eq!(parse_ts(&s), Some(t));
    }
}
