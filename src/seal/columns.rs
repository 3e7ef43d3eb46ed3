//! The batch of format version 2 by column (`docs/FORMAT.md`, "Columns"):
//! each column's name once, then one cell per record. Float columns whose
//! values have few decimals are written as integers with a decimal
//! exponent; timestamps as a start and deltas in the coarsest exact unit.
//! Writing goes straight from the borrowed records into a byte buffer;
//! reading borrows names and text from the message.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cbor::{self, CborError, Item, Reader};
use super::format::Selection;
use crate::record::{Record, Value};

/// The largest decimal exponent magnitude the gateway writes; readers take
/// up to [`MAX_DECIMAL_READ`] (10^22 is the largest exact power of ten).
const MAX_DECIMAL_WRITE: usize = 9;
pub(crate) const MAX_DECIMAL_READ: usize = 22;
/// 10^k for k = 0..=22, each exact in an f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];
/// 2^53: integers below it in magnitude are exact in an f64.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// The columns of a batch: the names in column order, and whether every
/// record has exactly these fields in this order (the common case: then a
/// record's cell for column `j` is its field `j`).
pub(crate) struct Layout<'r> {
    names: Vec<&'r str>,
    uniform: bool,
}

impl<'r> Layout<'r> {
    /// The batch's columns: the first record's fields, then any name a
    /// later record brings, in the order first met.
    pub(crate) fn of(records: &'r [Record]) -> Layout<'r> {
        let first = &records[0].fields;
        let uniform = records.iter().all(|r| {
            r.fields.len() == first.len()
                && r.fields.iter().zip(first).all(|(a, b)| a.name == b.name)
        });
        let mut names: Vec<&str> = first.iter().map(|f| &*f.name).collect();
        if !uniform {
            for record in records {
                for field in &record.fields {
                    if !names.contains(&&*field.name) {
                        names.push(&field.name);
                    }
                }
            }
        }
        Layout { names, uniform }
    }

    fn cell<'a>(&self, record: &'a Record, column: usize) -> Option<&'a Value> {
        if self.uniform {
            Some(&record.fields[column].value)
        } else {
            record.get(self.names[column])
        }
    }

    /// The positions of the encrypted columns, in column order.
    pub(crate) fn encrypted(&self, selection: Selection<'_>) -> Vec<usize> {
        (0..self.names.len())
            .filter(|&j| selection.encrypts(self.names[j]))
            .collect()
    }

    /// Writes the columns that `selection` encrypts (or, with `encrypted`
    /// false, the others) as a CBOR array of columns.
    pub(crate) fn write_columns(
        &self,
        out: &mut Vec<u8>,
        records: &[Record],
        selection: Selection<'_>,
        encrypted: bool,
    ) {
        let chosen: Vec<usize> = (0..self.names.len())
            .filter(|&j| selection.encrypts(self.names[j]) == encrypted)
            .collect();
        cbor::array(out, chosen.len());
        for j in chosen {
            self.write_column(out, records, j);
        }
    }

    fn write_column(&self, out: &mut Vec<u8>, records: &[Record], j: usize) {
        let scale = self.decimal_scale(records, j);
        cbor::array(out, if scale.is_some() { 3 } else { 2 });
        cbor::text(out, self.names[j]);
        cbor::array(out, records.len());
        for record in records {
            match (self.cell(record, j), scale) {
                (None, _) => cbor::simple(out, cbor::UNDEFINED),
                (Some(Value::Float(f)), Some(k)) => {
                    cbor::int(out, (f * POW10[k]).round() as i64);
                }
                (Some(value), _) => write_value(out, value),
            }
        }
        if let Some(k) = scale {
            cbor::int(out, -(k as i64));
        }
    }

    /// The smallest `k` such that every value of column `j` is a finite
    /// float equal to `m / 10^k` for an integer `|m| < 2^53` (so the reader
    /// gets the very same double back), if there is one up to
    /// [`MAX_DECIMAL_WRITE`].
    fn decimal_scale(&self, records: &[Record], j: usize) -> Option<usize> {
        let mut scale = 0;
        let mut any = false;
        for record in records {
            match self.cell(record, j) {
                None => {}
                Some(Value::Float(f)) => {
                    any = true;
                    scale = scale.max((scale..=MAX_DECIMAL_WRITE).find(|&k| exact_at(*f, k))?);
                }
                Some(_) => return None,
            }
        }
        // Exact at each value's own scale means exact at the largest one
        // too, as long as the integers stay below 2^53.
        let fits = records.iter().all(|r| match self.cell(r, j) {
            Some(Value::Float(f)) => (f * POW10[scale]).abs() < EXACT_INT,
            _ => true,
        });
        (any && fits).then_some(scale)
    }
}

/// Whether `f` is exactly `m / 10^k` for the integer `m` nearest `f · 10^k`.
fn exact_at(f: f64, k: usize) -> bool {
    let m = (f * POW10[k]).round();
    // -0.0 would come back as 0.0 from the integer 0: it stays a float.
    f.is_finite()
        && f.to_bits() != (-0.0f64).to_bits()
        && m.abs() < EXACT_INT
        && (m / POW10[k]).to_bits() == f.to_bits()
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Int(i) => cbor::int(out, *i),
        Value::Float(f) if f.is_finite() => cbor::float(out, *f),
        Value::Float(_) => cbor::simple(out, cbor::NULL),
        Value::Str(s) => cbor::text(out, s),
        Value::Bool(b) => cbor::simple(out, if *b { cbor::TRUE } else { cbor::FALSE }),
    }
}

/// A time since the Unix epoch as whole seconds (negative before it) and
/// the nanoseconds after them (`0..1e9`): kept apart, the unit and the
/// deltas of [`write_times`] need no 128-bit division, which on a Pi cost
/// more than the rest of the timestamps' work.
fn seconds_and_nanos(ts: SystemTime) -> (i64, u32) {
    match ts.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, NANOS_PER_SECOND - n),
            }
        }
    }
}

const NANOS_PER_SECOND: u32 = 1_000_000_000;

/// Writes `"tu"` and `"t"` (two map entries): the coarsest unit in which
/// every timestamp is exact, the first time and the deltas.
pub(crate) fn write_times(out: &mut Vec<u8>, records: &[Record]) {
    let all: Vec<(i64, u32)> = records.iter().map(|r| seconds_and_nanos(r.ts)).collect();
    let (tu, unit) = [(0u64, NANOS_PER_SECOND), (3, 1_000_000), (6, 1_000), (9, 1)]
        .into_iter()
        .find(|&(_, unit)| all.iter().all(|(_, n)| n % unit == 0))
        .expect("every time is a whole number of nanoseconds");
    let per_second = i128::from(NANOS_PER_SECOND / unit);
    cbor::text(out, "tu");
    cbor::uint(out, tu);
    cbor::text(out, "t");
    cbor::array(out, all.len());
    let mut previous = 0;
    for (i, &(seconds, n)) in all.iter().enumerate() {
        let units = i128::from(seconds) * per_second + i128::from(n / unit);
        // SystemTime spans far less than 2^64 units either way.
        let delta = if i == 0 { units } else { units - previous };
        assert!(cbor::int128(out, delta), "a time delta fits 64 bits");
        previous = units;
    }
}

/// A cell as read from a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell<'a> {
    Absent,
    Int(i128),
    Float(f64),
    Text(&'a str),
    Bool(bool),
    /// A non-finite float.
    Null,
}

/// A column as read from a message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Column<'a> {
    pub name: &'a str,
    pub cells: Vec<Cell<'a>>,
    /// The decimal exponent's magnitude of a decimal column.
    pub scale: Option<usize>,
}

impl Column<'_> {
    /// Cell `i` as the JSON value `open` prints; `None` when absent.
    pub(crate) fn json(&self, i: usize) -> Result<Option<serde_json::Value>, String> {
        let cell = self.cells[i];
        Ok(Some(match (cell, self.scale) {
            (Cell::Absent, _) => return Ok(None),
            (Cell::Int(m), Some(k)) => {
                let m = m as f64;
                if m.abs() >= EXACT_INT {
                    return Err(format!(
                        "column {:?}: decimal {m} is not below 2^53",
                        self.name
                    ));
                }
                float_json(m / POW10[k])
            }
            (_, Some(_)) => {
                return Err(format!(
                    "column {:?} is decimal but holds a cell that is not an integer",
                    self.name
                ));
            }
            (Cell::Int(n), None) => {
                if let Ok(i) = i64::try_from(n) {
                    serde_json::Value::from(i)
                } else if let Ok(u) = u64::try_from(n) {
                    serde_json::Value::from(u)
                } else {
                    return Err(format!("column {:?}: integer {n} out of range", self.name));
                }
            }
            (Cell::Float(f), None) => float_json(f),
            (Cell::Text(s), None) => serde_json::Value::String(s.to_string()),
            (Cell::Bool(b), None) => serde_json::Value::Bool(b),
            (Cell::Null, None) => serde_json::Value::Null,
        }))
    }
}

fn float_json(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// Why the columns of a message are not as FORMAT.md says.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ColumnsError {
    #[error(transparent)]
    Cbor(#[from] CborError),
    #[error("{0}")]
    Shape(String),
}

fn shape(msg: impl Into<String>) -> ColumnsError {
    ColumnsError::Shape(msg.into())
}

/// Reads an array of columns; each must have `n` cells.
pub(crate) fn read_columns<'a>(
    r: &mut Reader<'a>,
    n: usize,
) -> Result<Vec<Column<'a>>, ColumnsError> {
    let Item::Array(count) = r.next()? else {
        return Err(shape("the columns are not an array"));
    };
    let mut columns: Vec<Column<'a>> = Vec::with_capacity(count);
    for c in 0..count {
        let len = match r.next()? {
            Item::Array(len @ (2 | 3)) => len,
            other => {
                return Err(shape(format!(
                    "column {c} is {} instead of an array of 2 or 3",
                    other.kind()
                )));
            }
        };
        let Item::Text(name) = r.next()? else {
            return Err(shape(format!("column {c} has no text name")));
        };
        match r.next()? {
            Item::Array(cells) if cells == n => {}
            Item::Array(cells) => {
                return Err(shape(format!(
                    "column {name:?} has {cells} cells for {n} records"
                )));
            }
            other => {
                return Err(shape(format!(
                    "column {name:?}: cells are {} instead of an array",
                    other.kind()
                )));
            }
        }
        let mut cells = Vec::with_capacity(n);
        for _ in 0..n {
            cells.push(match r.next()? {
                Item::Uint(u) => Cell::Int(i128::from(u)),
                Item::Nint(u) => Cell::Int(-1 - i128::from(u)),
                Item::Float(f) => Cell::Float(f),
                Item::Text(s) => Cell::Text(s),
                Item::Simple(cbor::TRUE) => Cell::Bool(true),
                Item::Simple(cbor::FALSE) => Cell::Bool(false),
                Item::Simple(cbor::NULL) => Cell::Null,
                Item::Simple(cbor::UNDEFINED) => Cell::Absent,
                other => {
                    return Err(shape(format!(
                        "column {name:?} holds {}, not a field value",
                        other.kind()
                    )));
                }
            });
        }
        let scale = if len == 3 {
            let e = r.next()?.integer();
            match e {
                Some(e) if (-(MAX_DECIMAL_READ as i128)..=0).contains(&e) => Some((-e) as usize),
                _ => {
                    return Err(shape(format!(
                        "column {name:?}: the decimal exponent is not an integer from -{MAX_DECIMAL_READ} to 0"
                    )));
                }
            }
        } else {
            None
        };
        if columns.iter().any(|col| col.name == name) {
            return Err(shape(format!("column {name:?} appears twice")));
        }
        columns.push(Column { name, cells, scale });
    }
    Ok(columns)
}

/// The timestamps from `tu` and `t`, as `SystemTime`s.
pub(crate) fn times(tu: u64, t: &[i128]) -> Result<Vec<SystemTime>, String> {
    let unit: i128 = match tu {
        0 => 1_000_000_000,
        3 => 1_000_000,
        6 => 1_000,
        9 => 1,
        other => return Err(format!("time unit tu = {other} is not 0, 3, 6 or 9")),
    };
    let mut units: i128 = 0;
    let mut out = Vec::with_capacity(t.len());
    for (i, d) in t.iter().enumerate() {
        units = if i == 0 {
            *d
        } else {
            units.checked_add(*d).ok_or("time overflows")?
        };
        let n = units
            .checked_mul(unit)
            .filter(|n| (0..=i128::from(u64::MAX)).contains(n))
            .ok_or_else(|| format!("record {i}'s time is before 1970 or too far ahead"))?;
        let d = Duration::new((n / 1_000_000_000) as u64, (n % 1_000_000_000) as u32);
        out.push(
            UNIX_EPOCH
                .checked_add(d)
                .ok_or_else(|| format!("record {i}'s time is too far ahead"))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::Field;

    fn record(seq: u64, fields: &[(&str, Value)]) -> Record {
        Record {
            sensor: Arc::from("s"),
            seq,
            ts: UNIX_EPOCH + Duration::from_millis(1_764_100_000_000 + seq * 1000),
            clock: None,
            fields: fields
                .iter()
                .map(|(n, v)| Field {
                    name: Arc::from(*n),
                    value: v.clone(),
                })
                .collect(),
        }
    }

    fn round_trip(records: &[Record]) -> Vec<Column<'static>> {
        let layout = Layout::of(records);
        let mut out = Vec::new();
        layout.write_columns(&mut out, records, Selection(&[]), false);
        let out: &'static [u8] = Box::leak(out.into_boxed_slice());
        let mut r = Reader::new(out);
        let cols = read_columns(&mut r, records.len()).unwrap();
        r.finish().unwrap();
        cols
    }

    #[test]
    fn decimal_columns_give_back_the_same_doubles() {
        let values = [15.37, -3.7, 0.1, 1013.25, 24.5, 2.0, 1e-7, 123456.789];
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, f)| record(i as u64, &[("x", Value::Float(*f))]))
            .collect();
        let cols = round_trip(&records);
        assert_eq!(cols[0].scale, Some(7));
        for (i, f) in values.iter().enumerate() {
            assert_eq!(cols[0].json(i).unwrap(), Some(serde_json::json!(f)));
        }
        // 0.1 + 0.2 has no short decimal form: a plain float column.
        let odd = [record(0, &[("x", Value::Float(0.1 + 0.2))])];
        assert_eq!(round_trip(&odd)[0].scale, None);
        // -0.0 keeps its sign only as a float.
        let neg = [record(0, &[("x", Value::Float(-0.0))])];
        let cols = round_trip(&neg);
        assert_eq!(cols[0].scale, None);
        assert!(cols[0].cells[0] == Cell::Float(-0.0));
    }

    #[test]
    fn mixed_and_missing_fields_keep_their_types() {
        let records = [
            record(0, &[("a", Value::Int(1)), ("b", Value::Str("x\"y".into()))]),
            record(
                1,
                &[("b", Value::Bool(true)), ("c", Value::Float(f64::NAN))],
            ),
        ];
        let cols = round_trip(&records);
        let names: Vec<&str> = cols.iter().map(|c| c.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(cols[0].json(1).unwrap(), None);
        assert_eq!(cols[1].json(0).unwrap(), Some(serde_json::json!("x\"y")));
        assert_eq!(cols[1].json(1).unwrap(), Some(serde_json::json!(true)));
        assert_eq!(cols[2].json(1).unwrap(), Some(serde_json::Value::Null));
        assert_eq!(cols[2].json(0).unwrap(), None);
    }

    #[test]
    fn times_use_the_coarsest_exact_unit() {
        // After the epoch, and across it from before (a Pi's clock at boot).
        let after = UNIX_EPOCH + Duration::from_secs(1_764_100_000);
        let before = UNIX_EPOCH - Duration::new(1, 500_000_000);
        for (base, step, tu) in [
            (after, Duration::from_secs(1), 0),
            (after, Duration::from_millis(250), 3),
            (after, Duration::from_micros(7), 6),
            (after, Duration::from_nanos(3), 9),
            (before, Duration::from_millis(750), 3),
            (
                before - Duration::from_nanos(1),
                Duration::from_nanos(500_000_001),
                9,
            ),
            (
                UNIX_EPOCH - Duration::from_secs(3),
                Duration::from_secs(2),
                0,
            ),
        ] {
            let records: Vec<Record> = (0..3)
                .map(|i| Record {
                    ts: base + step * i,
                    clock: None,
                    ..record(i as u64, &[])
                })
                .collect();
            let mut out = Vec::new();
            write_times(&mut out, &records);
            let mut r = Reader::new(&out);
            assert_eq!(r.next().unwrap(), Item::Text("tu"));
            assert_eq!(r.next().unwrap(), Item::Uint(tu));
            assert_eq!(r.next().unwrap(), Item::Text("t"));
            assert_eq!(r.next().unwrap(), Item::Array(3));
            let t: Vec<i128> = (0..3)
                .map(|_| r.next().unwrap().integer().unwrap())
                .collect();
            // The first time and the deltas, in the unit, from nanoseconds.
            let nanos = |ts: SystemTime| match ts.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_nanos() as i128,
                Err(e) => -(e.duration().as_nanos() as i128),
            };
            let unit = 10i128.pow(9 - tu as u32);
            let n: Vec<i128> = records.iter().map(|r| nanos(r.ts) / unit).collect();
            assert_eq!(t, [n[0], n[1] - n[0], n[2] - n[1]], "{base:?} {step:?}");
            // `open` refuses times before 1970; the others come back whole.
            if base > UNIX_EPOCH {
                let back = times(tu, &t).unwrap();
                assert_eq!(back, records.iter().map(|r| r.ts).collect::<Vec<_>>());
            }
        }
    }
}
