//! The reading's time from a field of the frame (`time_field`), for devices
//! that stamp their own readings (a GPS fix, a logger with an RTC). Without
//! it the record carries the gateway's receive time.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{DecodeError, Reject};
use crate::config::TimeFormat;
use crate::record::{Field, Value};

/// Reads a record's time from one of its fields. The field stays in the
/// record: the device's own text is kept as sent.
#[derive(Debug, Clone)]
pub struct TimeField {
    name: Arc<str>,
    format: TimeFormat,
}

impl TimeField {
    pub fn new(name: &str, format: TimeFormat) -> TimeField {
        TimeField {
            name: Arc::from(name),
            format,
        }
    }

    /// The time in `fields`, or a [`Reject::Timestamp`] error saying why not.
    pub fn read(&self, fields: &[Field]) -> Result<SystemTime, DecodeError> {
        let bad = |detail: String| DecodeError::new(Reject::Timestamp, detail);
        let value = fields
            .iter()
            .find(|f| *f.name == *self.name)
            .map(|f| &f.value)
            .ok_or_else(|| bad(format!("time field \"{}\" is missing", self.name)))?;
        let parsed = match (self.format, value) {
            (TimeFormat::Rfc3339, Value::Str(s)) => parse_rfc3339(s),
            (TimeFormat::Rfc3339, _) => None,
            (unit, v) => {
                let per_second = match unit {
                    TimeFormat::UnixS => 1.0,
                    TimeFormat::UnixMs => 1e3,
                    TimeFormat::UnixUs => 1e6,
                    _ => 1e9,
                };
                from_unix(v, per_second)
            }
        };
        parsed.ok_or_else(|| {
            bad(format!(
                "time field \"{}\" is not a {} time",
                self.name, self.format
            ))
        })
    }
}

/// Seconds (or ms, µs, ns) since the epoch; integers exactly, decimals to
/// the nanosecond that an f64 holds.
fn from_unix(v: &Value, per_second: f64) -> Option<SystemTime> {
    match v {
        Value::Int(i) => {
            let i = u64::try_from(*i).ok()?;
            let per = per_second as u64;
            let nanos_per_unit = 1_000_000_000 / per;
            let d = Duration::new(i / per, u32::try_from((i % per) * nanos_per_unit).ok()?);
            UNIX_EPOCH.checked_add(d)
        }
        Value::Float(f) if *f >= 0.0 && f.is_finite() => {
            let secs = f / per_second;
            UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
        }
        Value::Str(s) => from_unix(&Value::parse(s), per_second).filter(|_| !s.is_empty()),
        _ => None,
    }
}

/// RFC 3339 with `Z`, a numeric offset, or (read as UTC) none; a space
/// may stand for the `T`.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    crate::rfc3339::parse(s.trim(), crate::rfc3339::Strictness::Lenient)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(v: Value) -> Vec<Field> {
        vec![
            Field {
                name: Arc::from("x"),
                value: Value::Int(1),
            },
            Field {
                name: Arc::from("ts"),
                value: v,
            },
        ]
    }

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn rfc3339_with_z_offset_or_none() {
        let t = TimeField::new("ts", TimeFormat::Rfc3339);
        let read = |s: &str| t.read(&field(Value::Str(s.into())));
        assert_eq!(
            read("2026-11-25T12:00:00.5Z").unwrap(),
            at(1_795_608_000, 500_000_000)
        );
        assert_eq!(read("2026-11-25T12:00:00").unwrap(), at(1_795_608_000, 0));
        assert_eq!(
            read("2026-11-25T14:00:00+02:00").unwrap(),
            at(1_795_608_000, 0)
        );
        assert_eq!(
            read("2026-11-25T06:30:00-05:30").unwrap(),
            at(1_795_608_000, 0)
        );
        for bad in [
            "2026-13-25T12:00:00Z",
            "noon",
            "",
            "2026-11-25T12:00:00+25:00",
        ] {
            let e = read(bad).unwrap_err();
            assert_eq!(e.reason, Reject::Timestamp, "{bad}");
        }
        assert!(t.read(&field(Value::Int(5))).is_err());
    }

    #[test]
    fn unix_units_from_integers_decimals_and_text() {
        let s = TimeFormat::UnixS;
        let read = |f, v| TimeField::new("ts", f).read(&field(v));
        assert_eq!(
            read(s, Value::Int(1_795_608_000)).unwrap(),
            at(1_795_608_000, 0)
        );
        assert_eq!(read(s, Value::Float(1.5)).unwrap(), at(1, 500_000_000));
        assert_eq!(
            read(TimeFormat::UnixMs, Value::Int(1_795_608_000_123)).unwrap(),
            at(1_795_608_000, 123_000_000)
        );
        assert_eq!(
            read(TimeFormat::UnixUs, Value::Str("1000001".into())).unwrap(),
            at(1, 1_000)
        );
        assert_eq!(read(TimeFormat::UnixNs, Value::Int(7)).unwrap(), at(0, 7));
        assert!(read(s, Value::Int(-1)).is_err());
        assert!(read(s, Value::Float(f64::NAN)).is_err());
        assert!(read(s, Value::Bool(true)).is_err());
        assert!(read(s, Value::Float(1e300)).is_err());
    }

    #[test]
    fn a_missing_field_is_named() {
        let t = TimeField::new("when", TimeFormat::UnixS);
        let e = t.read(&field(Value::Int(1))).unwrap_err();
        assert!(e.detail.contains("\"when\" is missing"), "{e}");
    }
}
