//! A private key the configuration names: a file, or a key in a PKCS#11
//! token (`pkcs11:...`, RFC 7512; see [`crate::pkcs11::uri`]).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};

use crate::pkcs11::KeyUri;

/// Where a private key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A PEM file (resolved against the configuration file's folder).
    File(PathBuf),
    /// A key in a token: never a file on the SD card.
    Pkcs11(KeyUri),
}

impl KeyRef {
    /// A `pkcs11:` URI, or else a path.
    pub fn parse(s: &str) -> Result<KeyRef, crate::pkcs11::UriError> {
        if KeyUri::is_uri(s) {
            KeyUri::parse(s).map(KeyRef::Pkcs11)
        } else {
            Ok(KeyRef::File(PathBuf::from(s)))
        }
    }

    /// The file, for a file key.
    pub fn path(&self) -> Option<&Path> {
        match self {
            KeyRef::File(p) => Some(p),
            KeyRef::Pkcs11(_) => None,
        }
    }

    pub fn path_mut(&mut self) -> Option<&mut PathBuf> {
        match self {
            KeyRef::File(p) => Some(p),
            KeyRef::Pkcs11(_) => None,
        }
    }
}

impl From<PathBuf> for KeyRef {
    fn from(p: PathBuf) -> KeyRef {
        KeyRef::File(p)
    }
}

impl fmt::Display for KeyRef {
    /// The path, or the URI (which holds no PIN, only where it comes from).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::File(p) => write!(f, "{}", p.display()),
            KeyRef::Pkcs11(uri) => write!(f, "{uri}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for KeyRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyRef, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key file's path, or a pkcs11: URI")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<KeyRef, E> {
                KeyRef::parse(s).map_err(|e| E::custom(format!("PKCS#11 URI: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}
