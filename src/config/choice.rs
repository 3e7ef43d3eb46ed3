//! Options that take one of a fixed set of words (`framing`, `format`,
//! `parity`, `buffer.when_full`, `log.format`, ...), with messages that list
//! the accepted words.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Defines a configuration enum read from a fixed set of lowercase strings,
/// with messages that list the accepted values.
macro_rules! choice_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every accepted spelling, in documentation order.
            pub const CHOICES: &'static [&'static str] = &[$($text),+];

            /// The spelling used in the configuration file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(choice_error($what, s, Self::CHOICES)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    };
}

fn choice_error(what: &str, got: &str, choices: &[&str]) -> String {
    let list = choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("unknown {what} \"{got}\"; expected one of {list}")
}

choice_enum! {
    /// How the byte stream of a serial device is cut into frames.
    pub enum Framing ("framing") {
        /// One frame per line, ending in `\n` (a preceding `\r` is dropped).
        #[default]
        Lines = "lines",
        /// NMEA 0183 sentences, `$...*hh` and CRLF; the checksum is verified.
        Nmea = "nmea",
        /// COBS-encoded binary frames ending in a 0x00 byte, with an
        /// optional CRC trailer (`crc`).
        Cobs = "cobs",
        /// Not a stream: the gateway polls a Modbus RTU slave (`unit`) for
        /// its `registers`; sensors that name the same device share the bus.
        ModbusRtu = "modbus_rtu",
    }
}

choice_enum! {
    /// How a frame is decoded into a record.
    pub enum Format ("format") {
        /// Values separated by the sensor's delimiter, named by its columns.
        #[default]
        Csv = "csv",
        /// One JSON object per frame; nested objects flattened (`nested`).
        Json = "json",
        /// `key=value` pairs separated by spaces or the delimiter.
        Kv = "kv",
        /// NMEA 0183 GGA, RMC and VTG sentences into named, typed fields.
        Nmea = "nmea",
        /// Fixed binary fields described by `layout` (with `framing = "cobs"`).
        Binary = "binary",
    }
}

choice_enum! {
    /// Serial parity.
    pub enum Parity ("parity") {
        #[default]
        None = "none",
        Odd = "odd",
        Even = "even",
    }
}

choice_enum! {
    /// Serial flow control.
    pub enum FlowControl ("flow_control") {
        #[default]
        None = "none",
        /// XON/XOFF.
        Software = "software",
        /// RTS/CTS.
        Hardware = "hardware",
    }
}

choice_enum! {
    /// The integrity trailer of a COBS frame.
    pub enum Crc ("crc") {
        #[default]
        None = "none",
        /// CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF; also called
        /// CRC-16/IBM-3740), two bytes.
        Crc16 = "crc16",
        /// CRC-32 (ISO-HDLC, as zlib and Ethernet), four bytes.
        Crc32 = "crc32",
    }
}

choice_enum! {
    /// Byte order of binary fields and of the CRC trailer.
    pub enum Endian ("endian") {
        #[default]
        Little = "little",
        Big = "big",
    }
}

choice_enum! {
    /// What the json format does with a nested object or array.
    pub enum Nested ("nested") {
        /// `{"a":{"b":1},"c":[2,3]}` becomes `a.b=1, c.0=2, c.1=3`.
        #[default]
        Flatten = "flatten",
        /// A frame with nesting is rejected (counted as `json`).
        Reject = "reject",
    }
}

choice_enum! {
    /// How the configured `time_field` is written by the device.
    pub enum TimeFormat ("time_format") {
        /// `2026-11-25T12:00:00.5Z` (UTC, or with an offset).
        #[default]
        Rfc3339 = "rfc3339",
        /// Seconds since 1970-01-01 UTC, integer or decimal.
        UnixS = "unix_s",
        UnixMs = "unix_ms",
        UnixUs = "unix_us",
        UnixNs = "unix_ns",
    }
}

choice_enum! {
    /// The declared type of a column; `auto` types each value from its text.
    pub enum ColumnType ("column type") {
        #[default]
        Auto = "auto",
        I64 = "i64",
        F64 = "f64",
        Bool = "bool",
        String = "string",
    }
}

choice_enum! {
    /// A Modbus data table, by the function that reads it.
    pub enum RegisterTable ("register table") {
        /// Function 3: holding registers, read/write.
        #[default]
        Holding = "holding",
        /// Function 4: input registers, read-only.
        Input = "input",
        /// Function 1: coils, read/write bits.
        Coil = "coil",
        /// Function 2: discrete inputs, read-only bits.
        Discrete = "discrete",
    }
}

choice_enum! {
    /// How a Modbus value's registers are read.
    pub enum RegisterType ("register type") {
        #[default]
        U16 = "u16",
        I16 = "i16",
        U32 = "u32",
        I32 = "i32",
        U64 = "u64",
        I64 = "i64",
        F32 = "f32",
        F64 = "f64",
        /// One register, true when not zero; the type of coils and
        /// discrete inputs.
        Bool = "bool",
        /// `count` registers of text, two bytes each.
        String = "string",
    }
}

choice_enum! {
    /// The type of one field of a binary layout.
    pub enum LayoutType ("layout type") {
        #[default]
        U8 = "u8",
        I8 = "i8",
        U16 = "u16",
        I16 = "i16",
        U32 = "u32",
        I32 = "i32",
        U64 = "u64",
        I64 = "i64",
        F32 = "f32",
        F64 = "f64",
        /// One byte, zero is false.
        Bool = "bool",
    }
}

choice_enum! {
    /// What the spool does when its budget is exhausted.
    pub enum WhenFull ("buffer.when_full policy") {
        /// Keep the newest data; count and log what was dropped.
        #[default]
        DropOldest = "drop_oldest",
        /// Stop reading the serial ports until the broker catches up.
        Block = "block",
    }
}

choice_enum! {
    /// Which sealed messages the spool writes to disk.
    pub enum Durability ("buffer.durability") {
        /// In memory while the broker keeps up; on disk only what is not
        /// acknowledged within `spill_after`, what the memory cannot hold,
        /// and what is left at a stop. Spares the SD card.
        #[default]
        MemoryFirst = "memory_first",
        /// Every message on disk before the spool accepts it.
        WriteThrough = "write_through",
    }
}

choice_enum! {
    /// When the disk spool forces what it wrote to the disk.
    pub enum Fsync ("buffer.fsync policy") {
        /// After every message: a power cut loses nothing the spool took.
        Always = "always",
        /// Every `fsync_interval`: a power cut loses at most that window.
        #[default]
        Interval = "interval",
        /// Left to the kernel's writeback (about 30 s on Linux).
        Never = "never",
    }
}

choice_enum! {
    /// What says that the system clock is synchronised ([`super::Time`]).
    pub enum ClockCheck ("clock check") {
        /// The kernel (an NTP client has disciplined the clock), or the
        /// time daemon's flag file: whichever says so first.
        #[default]
        Auto = "auto",
        /// Only the kernel's status (adjtimex).
        Kernel = "kernel",
        /// Only the flag file.
        Flag = "flag",
        /// Always synchronised: a clock set before the gateway starts (a
        /// battery-backed RTC read at boot, `time-sync.target`).
        Trust = "trust",
    }
}

choice_enum! {
    /// Where log lines go and how they look.
    pub enum LogFormat ("log format") {
        /// The journal when started by systemd, text on a terminal.
        #[default]
        Auto = "auto",
        Journald = "journald",
        Text = "text",
        Json = "json",
    }
}

impl LayoutType {
    /// Bytes the field takes in a frame.
    pub fn size(self) -> usize {
        match self {
            LayoutType::U8 | LayoutType::I8 | LayoutType::Bool => 1,
            LayoutType::U16 | LayoutType::I16 => 2,
            LayoutType::U32 | LayoutType::I32 | LayoutType::F32 => 4,
            LayoutType::U64 | LayoutType::I64 | LayoutType::F64 => 8,
        }
    }
}

impl Crc {
    /// Bytes of the trailer after a COBS frame's payload.
    pub fn size(self) -> usize {
        match self {
            Crc::None => 0,
            Crc::Crc16 => 2,
            Crc::Crc32 => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Dir, MINIMAL, only_problem};

    #[test]
    fn an_unknown_word_lists_the_accepted_ones() {
        let d = Dir::new(&MINIMAL.replace("columns =", "format = \"xml\"\ncolumns ="));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor[0].format");
        assert!(
            p.message
                .contains("unknown format \"xml\"; expected one of \"csv\", \"json\""),
            "{}",
            p.message
        );
        let d = Dir::new(&MINIMAL.replace("columns =", "parity = \"mark\"\ncolumns ="));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor[0].parity");
        assert!(
            p.message.contains("\"none\", \"odd\", \"even\""),
            "{}",
            p.message
        );
        let d = Dir::new(&MINIMAL.replace(
            "columns = [\"a\", \"b\"]",
            "columns = [\"a\", { name = \"b\", type = \"float\" }]",
        ));
        let p = only_problem(d.load().unwrap_err());
        assert!(p.key.starts_with("sensor[0].columns"), "{p}");
        assert!(
            p.message.contains("unknown column type \"float\""),
            "{}",
            p.message
        );
        let d =
            Dir::new(&MINIMAL.replace("[mqtt]", "[buffer]\nwhen_full = \"drop_newest\"\n[mqtt]"));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "buffer.when_full");
        assert!(
            p.message.contains("\"drop_oldest\", \"block\""),
            "{}",
            p.message
        );
        let d = Dir::new(&MINIMAL.replace("[mqtt]", "[buffer]\ndurability = \"memory\"\n[mqtt]"));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "buffer.durability");
        assert!(
            p.message.contains("\"memory_first\", \"write_through\""),
            "{}",
            p.message
        );
    }
}
