//! `csv` format: one line of delimiter-separated values into a record.

use std::sync::Arc;

use crate::record::{Field, Value};

/// Why a frame did not become a record. Counted and logged by the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not UTF-8 text")]
    NotText,
    #[error("expected {expected} columns, found {found}")]
    ColumnCount { expected: usize, found: usize },
}

/// Decodes CSV lines for one sensor with a fixed list of columns.
#[derive(Debug, Clone)]
pub struct CsvDecoder {
    columns: Arc<[Arc<str>]>,
    delimiter: char,
}

/// What one frame decoded to.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Fields(Vec<Field>),
    /// A blank line, or a header line repeating the column names: skipped.
    Skip,
}

impl CsvDecoder {
    pub fn new(columns: &[String], delimiter: char) -> Self {
        CsvDecoder {
            columns: columns.iter().map(|c| Arc::from(c.as_str())).collect(),
            delimiter,
        }
    }

    pub fn decode(&self, frame: &[u8]) -> Result<Decoded, DecodeError> {
        let text = std::str::from_utf8(frame).map_err(|_| DecodeError::NotText)?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(Decoded::Skip);
        }
        let found = text.split(self.delimiter).count();
        if found != self.columns.len() {
            return Err(DecodeError::ColumnCount {
                expected: self.columns.len(),
                found,
            });
        }
        if text
            .split(self.delimiter)
            .zip(self.columns.iter())
            .all(|(v, c)| v.trim() == &**c)
        {
            return Ok(Decoded::Skip);
        }
        Ok(Decoded::Fields(
            text.split(self.delimiter)
                .zip(self.columns.iter())
                .map(|(v, c)| Field {
                    name: c.clone(),
                    value: Value::parse(v),
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec() -> CsvDecoder {
        CsvDecoder::new(&["speed".into(), "cadence".into(), "note".into()], ',')
    }

    #[test]
    fn typed_values_in_column_order() {
        let Decoded::Fields(f) = dec().decode(b"12.5, 80,ok").unwrap() else {
            panic!()
        };
        assert_eq!(&*f[0].name, "speed");
        assert_eq!(f[0].value, Value::Float(12.5));
        assert_eq!(f[1].value, Value::Int(80));
        assert_eq!(f[2].value, Value::Str("ok".into()));
    }

    #[test]
    fn wrong_column_count_and_binary_are_errors() {
        assert_eq!(
            dec().decode(b"1,2").unwrap_err(),
            DecodeError::ColumnCount {
                expected: 3,
                found: 2
            }
        );
        assert_eq!(
            dec().decode(&[0xff, 0xfe, b',', b',']).unwrap_err(),
            DecodeError::NotText
        );
    }

    #[test]
    fn blank_and_header_lines_are_skipped() {
        assert_eq!(dec().decode(b"  ").unwrap(), Decoded::Skip);
        assert_eq!(dec().decode(b"speed,cadence,note").unwrap(), Decoded::Skip);
    }
}
