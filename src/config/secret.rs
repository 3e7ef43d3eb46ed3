//! Secret configuration values, which never show.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret configuration value (a password, a token). Its `Debug` and the
/// effective configuration printed by `check-config` show `<redacted>`, and
/// the memory is wiped on drop. Key *contents* are never part of the
/// configuration, only their paths; `mqtt.password` is the one secret value,
/// and the next one must use this type too, not `String`.
#[derive(Clone)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(zeroize::Zeroizing::new(value))
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Equal when the secrets are: lets a whole [`Config`](super::Config) be
/// compared (a reload that changed nothing, the tests' round trips).
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// How a secret appears in the effective configuration: `"<redacted>"`,
/// which is how `check-config` output stays free of secrets.
impl toml_writer::WriteTomlValue for Secret {
    fn write_toml_value<W: toml_writer::TomlWrite + ?Sized>(&self, w: &mut W) -> fmt::Result {
        w.value("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use toml_writer::ToTomlValue as _;

    use super::*;

    #[test]
    fn secrets_never_show() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(s.expose(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!s.to_toml_value().contains("hunter2"));
        assert_eq!(s.to_toml_value(), "\"<redacted>\"");
    }
}
