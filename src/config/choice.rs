//! Options that take one of a fixed set of words (`framing`, `format`,
//! `buffer.when_full`, `log.format`), with messages that list the accepted
//! words and say so when a word names something a later version will accept.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Defines a configuration enum read from a fixed set of lowercase strings,
/// with messages that list the accepted values, and a separate message for
/// values that a later version will accept.
macro_rules! choice_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
        not_yet = [$($later:literal),*];
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every accepted spelling, in documentation order.
            pub const CHOICES: &'static [&'static str] = &[$($text),+];
            /// Spellings that a later version will accept.
            const NOT_YET: &'static [&'static str] = &[$($later),*];

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
                    _ => Err(choice_error($what, s, Self::CHOICES, Self::NOT_YET)),
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

fn choice_error(what: &str, got: &str, choices: &[&str], not_yet: &[&str]) -> String {
    let list = choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    if not_yet.contains(&got) {
        format!("{what} \"{got}\" is not supported yet in this version; supported: {list}")
    } else {
        format!("unknown {what} \"{got}\"; expected one of {list}")
    }
}

choice_enum! {
    /// How the byte stream of a serial device is cut into frames.
    pub enum Framing ("framing") {
        /// One frame per line, ending in `\n` (a preceding `\r` is dropped).
        #[default]
        Lines = "lines",
    }
    not_yet = ["nmea", "cobs"];
}

choice_enum! {
    /// How a frame is decoded into a record.
    pub enum Format ("format") {
        /// Values separated by the sensor's delimiter, named by its columns.
        #[default]
        Csv = "csv",
    }
    not_yet = ["json", "kv"];
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
    not_yet = [];
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
    not_yet = [];
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
    not_yet = [];
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Dir, MINIMAL, only_problem};

    #[test]
    fn planned_framings_and_formats_say_not_yet() {
        let d = Dir::new(&MINIMAL.replace("columns =", "framing = \"nmea\"\ncolumns ="));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor[0].framing");
        assert!(
            p.message.contains("not supported yet in this version"),
            "{}",
            p.message
        );
        let d = Dir::new(&MINIMAL.replace("columns =", "format = \"json\"\ncolumns ="));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor[0].format");
        assert!(p.message.contains("not supported yet in this version"));
        let d = Dir::new(&MINIMAL.replace("columns =", "format = \"xml\"\ncolumns ="));
        let p = only_problem(d.load().unwrap_err());
        assert!(
            p.message.contains("unknown format \"xml\""),
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
    }
}
