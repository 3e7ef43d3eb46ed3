//! Formats: decoding one frame into the fields of a record.
//!
//! Every format returns the record's fields or a [`DecodeError`] naming the
//! [`Reject`] reason it is counted under; none panics on any input (property
//! tests and fuzz targets check that).

pub mod binary;
pub mod csv;
pub mod json;
pub mod kv;
pub mod nmea;
pub mod time;
pub mod typed;

use crate::config;
use crate::record::Field;

pub use super::reject::Reject;

/// Why a frame did not become a record: the counted reason and a short
/// human detail for the log (never the whole frame; the source adds an
/// escaped, truncated sample).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct DecodeError {
    pub reason: Reject,
    pub detail: String,
}

impl DecodeError {
    pub fn new(reason: Reject, detail: impl Into<String>) -> DecodeError {
        DecodeError {
            reason,
            detail: detail.into(),
        }
    }
}

/// What one frame decoded to.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Fields(Vec<Field>),
    /// Not a reading and not an error: a blank line, a CSV header line
    /// repeating the column names, an NMEA sentence type that is not decoded.
    Skip,
}

/// One format's decoding. A decoder fills the vector it is given (empty,
/// perhaps with room from an earlier record: see
/// [`crate::record::FieldPool`]), so the hot path need not allocate one per
/// record.
pub trait Decode {
    /// Decodes `frame` into `fields`, which is empty.
    fn decode_into(&self, frame: &[u8], fields: Vec<Field>) -> Result<Decoded, DecodeError>;

    /// Decodes `frame` into a new vector.
    fn decode(&self, frame: &[u8]) -> Result<Decoded, DecodeError> {
        self.decode_into(frame, Vec::new())
    }
}

/// A format chosen by configuration.
#[derive(Debug, Clone)]
pub enum FormatDecoder {
    Csv(csv::CsvDecoder),
    Json(json::JsonDecoder),
    Kv(kv::KvDecoder),
    Nmea(nmea::NmeaDecoder),
    Binary(binary::BinaryDecoder),
}

impl FormatDecoder {
    pub fn new(sensor: &config::Sensor) -> FormatDecoder {
        match sensor.format {
            config::Format::Csv => {
                FormatDecoder::Csv(csv::CsvDecoder::new(&sensor.columns, sensor.delimiter))
            }
            config::Format::Json => {
                FormatDecoder::Json(json::JsonDecoder::new(&sensor.columns, sensor.nested))
            }
            config::Format::Kv => {
                FormatDecoder::Kv(kv::KvDecoder::new(&sensor.columns, sensor.delimiter))
            }
            config::Format::Nmea => FormatDecoder::Nmea(nmea::NmeaDecoder::new()),
            config::Format::Binary => {
                FormatDecoder::Binary(binary::BinaryDecoder::new(&sensor.layout, sensor.endian))
            }
        }
    }

    /// [`Decode::decode`], without importing the trait.
    pub fn decode(&self, frame: &[u8]) -> Result<Decoded, DecodeError> {
        Decode::decode(self, frame)
    }
}

impl Decode for FormatDecoder {
    fn decode_into(&self, frame: &[u8], fields: Vec<Field>) -> Result<Decoded, DecodeError> {
        match self {
            FormatDecoder::Csv(d) => d.decode_into(frame, fields),
            FormatDecoder::Json(d) => d.decode_into(frame, fields),
            FormatDecoder::Kv(d) => d.decode_into(frame, fields),
            FormatDecoder::Nmea(d) => d.decode_into(frame, fields),
            FormatDecoder::Binary(d) => d.decode_into(frame, fields),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::framing::nmea::sentence;

    /// `seal.encrypt` is checked against `config::NMEA_FIELDS`: every name
    /// the decoder gives a record must be in that list.
    #[test]
    fn nmea_field_names_are_the_ones_the_configuration_knows() {
        let d = nmea::NmeaDecoder::new();
        for body in [
            "GPGGA,123519.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
            "GNRMC,123519.00,A,4807.038,S,01131.000,W,022.4,084.4,251126,003.1,W,A",
            "GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A",
        ] {
            let Ok(Decoded::Fields(fields)) = d.decode(sentence(body).as_bytes()) else {
                panic!("{body}")
            };
            for f in &fields {
                assert!(
                    config::NMEA_FIELDS.contains(&&*f.name),
                    "{} is not in config::NMEA_FIELDS",
                    f.name
                );
            }
        }
    }
}
