//! What can go wrong with a configuration, worded for the operator, with the
//! sysexits code the binary exits with.

use std::fmt::{self, Write as _};
use std::io;
use std::path::PathBuf;

/// One thing wrong with the configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file that set the value (or would have to), or
    /// `environment variable SENSORGATE__...`.
    pub source: String,
    /// Dotted path of the key, e.g. `sensor[1].baud`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: key `{}`: {}", self.source, self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "configuration file {} does not exist; pass the right file with --config",
        path.display()
    )]
    NotFound { path: PathBuf },

    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot list the configuration folder {}: {source}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("configuration file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },

    #[error("{}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

fn format_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => format!("invalid configuration: {one}"),
        many => {
            let mut s = format!("invalid configuration ({} problems):", many.len());
            for p in many {
                let _ = write!(s, "\n  {p}");
            }
            s
        }
    }
}

impl ConfigError {
    /// The sysexits code for this error: 66 (no input) when a file is
    /// missing or unreadable, 77 when permission is denied, 78
    /// (configuration) for a file that says something wrong.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::NotFound { .. } => 66,
            ConfigError::Read { source, .. } | ConfigError::ReadDir { source, .. } => {
                if source.kind() == io::ErrorKind::PermissionDenied {
                    77
                } else {
                    66
                }
            }
            ConfigError::Syntax { .. } | ConfigError::Invalid(_) => 78,
        }
    }

    /// The individual problems, for an `Invalid` configuration.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_sysexits() {
        let nf = ConfigError::NotFound { path: "x".into() };
        assert_eq!(nf.exit_code(), 66);
        let perm = ConfigError::Read {
            path: "x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(perm.exit_code(), 77);
        assert_eq!(ConfigError::Invalid(vec![]).exit_code(), 78);
    }
}
