//! Why bytes from a device did not become a record.

/// Bytes of a bad frame kept for the log line.
pub const SAMPLE_LEN: usize = 48;

/// Why bytes from a device did not become a record. Counted per sensor and
/// reason; [`Reject::as_str`] is the stable name used in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// A frame longer than `max_frame`: skipped up to its delimiter.
    TooLong,
    /// An unfinished frame when the device went away.
    Partial,
    /// Bytes between frames that start no frame (line noise).
    Garbage,
    /// An NMEA sentence whose `*hh` checksum is missing or wrong.
    Checksum,
    /// Bytes between two COBS delimiters that are not valid COBS.
    Cobs,
    /// A COBS frame whose CRC trailer does not match.
    Crc,
    /// A text format got bytes that are not UTF-8, or a text value (or a
    /// key) holding a control character other than TAB.
    NotText,
    /// CSV: the number of values differs from the columns.
    Columns,
    /// A value does not have its column's declared type.
    Type,
    /// A declared column is missing from the frame.
    Missing,
    /// JSON: not one object, or nesting where `nested = "reject"`.
    Json,
    /// kv: a pair without `=`, an empty or repeated key.
    Kv,
    /// NMEA: a sentence that does not parse.
    Nmea,
    /// Binary: the frame's length differs from the layout's size.
    Length,
    /// The configured time field is missing or not a time.
    Timestamp,
    /// Modbus: the slave did not answer a request within its timeout.
    NoAnswer,
    /// Modbus: the slave answered a request with an exception (an illegal
    /// address, a busy device...).
    Exception,
}

impl Reject {
    pub const ALL: [Reject; 17] = [
        Reject::TooLong,
        Reject::Partial,
        Reject::Garbage,
        Reject::Checksum,
        Reject::Cobs,
        Reject::Crc,
        Reject::NotText,
        Reject::Columns,
        Reject::Type,
        Reject::Missing,
        Reject::Json,
        Reject::Kv,
        Reject::Nmea,
        Reject::Length,
        Reject::Timestamp,
        Reject::NoAnswer,
        Reject::Exception,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLong => "too_long",
            Reject::Partial => "partial",
            Reject::Garbage => "garbage",
            Reject::Checksum => "checksum",
            Reject::Cobs => "cobs",
            Reject::Crc => "crc",
            Reject::NotText => "not_text",
            Reject::Columns => "columns",
            Reject::Type => "type",
            Reject::Missing => "missing",
            Reject::Json => "json",
            Reject::Kv => "kv",
            Reject::Nmea => "nmea",
            Reject::Length => "length",
            Reject::Timestamp => "timestamp",
            Reject::NoAnswer => "no_answer",
            Reject::Exception => "exception",
        }
    }

    /// Position in [`Reject::ALL`], for per-reason counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
