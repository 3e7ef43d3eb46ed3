//! A *record*: one decoded reading from a sensor.
//!
//! Records are what the serial stage produces and what the seal stage packs
//! into a sealed message. They carry no transport or crypto detail.

use std::sync::{Arc, Mutex, PoisonError};
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

/// A number read from a device's bytes (binary frames, Modbus registers),
/// before its `scale` and `offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawNumber {
    Int(i64),
    Float(f64),
}

impl RawNumber {
    /// The value: the number itself, or `raw * scale + offset` (a float)
    /// with `linear`; `None` when that is not finite.
    pub fn value(self, linear: Option<(f64, f64)>) -> Option<Value> {
        let value = match (self, linear) {
            (RawNumber::Int(i), None) => return Some(Value::Int(i)),
            (RawNumber::Float(f), None) => f,
            (RawNumber::Int(i), Some((scale, offset))) => i as f64 * scale + offset,
            (RawNumber::Float(f), Some((scale, offset))) => f * scale + offset,
        };
        value.is_finite().then_some(Value::Float(value))
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
    /// What the gateway's clock said when it stamped `ts` (synchronised or
    /// not, and the boot clock); `None` for the device's own time.
    pub clock: Option<crate::clock::ClockMark>,
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

/// Field vectors of sealed batches, handed back for the serial readers to
/// fill again, so that a record costs no allocation: with one vector
/// allocated per record, a sealed batch freed its 100 vectors at once,
/// beyond the C allocator's per-thread cache (measured in
/// docs/BENCHMARKS.md, "Pi resources"). The seal stage gives a batch back
/// once it is sealed; a reader takes what is there a batch at a time. One
/// lock per batch on each side. Bounded: at most [`FieldPool::MAX`]
/// vectors, none with room for more than [`FieldPool::MAX_FIELDS`].
#[derive(Debug, Clone, Default)]
pub struct FieldPool(Arc<Mutex<Vec<Vec<Field>>>>);

impl FieldPool {
    /// Vectors kept at most (a few batches of the default 100 records).
    pub const MAX: usize = 1024;
    /// A vector with room for more fields than this is freed, not kept.
    pub const MAX_FIELDS: usize = 64;

    /// Keeps the field vectors of `records`, emptied, up to [`Self::MAX`].
    pub fn give_back(&self, records: Vec<Record>) {
        let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let room = Self::MAX.saturating_sub(pool.len());
        let kept = records
            .into_iter()
            .map(|r| r.fields)
            .filter(|f| f.capacity() > 0 && f.capacity() <= Self::MAX_FIELDS)
            .take(room)
            .map(|mut f| {
                f.clear();
                f
            });
        pool.extend(kept);
    }

    /// Moves up to `n` kept vectors into `spare`.
    pub fn take(&self, spare: &mut Vec<Vec<Field>>, n: usize) {
        let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let from = pool.len().saturating_sub(n);
        spare.extend(pool.drain(from..));
    }
}

/// A reader's end of a [`FieldPool`]: an empty field vector for each record.
#[derive(Debug, Default)]
pub struct Spare {
    pool: FieldPool,
    spare: Vec<Vec<Field>>,
    batch: usize,
}

impl Spare {
    /// Takes from `pool` up to `batch` vectors at a time.
    pub fn new(pool: FieldPool, batch: usize) -> Spare {
        Spare {
            pool,
            spare: Vec::new(),
            batch: batch.max(1),
        }
    }

    /// An empty vector, kept from a sealed batch when there is one.
    pub fn fields(&mut self) -> Vec<Field> {
        if self.spare.is_empty() {
            self.pool.take(&mut self.spare, self.batch);
        }
        self.spare.pop().unwrap_or_default()
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

    fn record(seq: u64, fields: Vec<Field>) -> Record {
        Record {
            sensor: Arc::from("s"),
            seq,
            ts: SystemTime::UNIX_EPOCH,
            clock: None,
            fields,
        }
    }

    #[test]
    fn field_vectors_come_back_empty_with_their_room() {
        let pool = FieldPool::default();
        let name: Arc<str> = Arc::from("t");
        let batch: Vec<Record> = (0..3)
            .map(|seq| {
                let mut fields = Vec::with_capacity(6);
                fields.push(Field {
                    name: Arc::clone(&name),
                    value: Value::Str("kept nowhere".into()),
                });
                record(seq, fields)
            })
            .collect();
        pool.give_back(batch);
        // The names the fields held are released, not kept by the pool.
        assert_eq!(Arc::strong_count(&name), 1);
        let mut spare = Spare::new(pool.clone(), 2);
        for _ in 0..3 {
            let f = spare.fields();
            assert!(f.is_empty());
            assert_eq!(f.capacity(), 6);
        }
        // The pool is empty now: a new vector, which allocates nothing yet.
        assert_eq!(spare.fields().capacity(), 0);
    }

    #[test]
    fn the_pool_is_bounded_in_vectors_and_in_their_size() {
        let pool = FieldPool::default();
        let many = (0..FieldPool::MAX as u64 + 10).map(|seq| record(seq, Vec::with_capacity(4)));
        let huge = record(0, Vec::with_capacity(FieldPool::MAX_FIELDS + 1));
        pool.give_back(std::iter::once(huge).chain(many).collect());
        let mut all = Vec::new();
        pool.take(&mut all, usize::MAX);
        assert_eq!(all.len(), FieldPool::MAX);
        assert!(all.iter().all(|f| f.capacity() == 4));
    }

    #[test]
    fn timestamps_round_trip_with_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_764_100_000, 123_456_789);
        let s = format_ts(t);
        assert_eq!(s, "2025-11-25T19:46:40.123456789Z");
        assert_eq!(parse_ts(&s), Some(t));
    }
}
