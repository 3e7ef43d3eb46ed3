//! PKCS#11 URIs (RFC 7512) naming a key in a token, as `[seal]
//! signing_key` and `[mqtt] key_file` take them:
//!
//! ```text
//! pkcs11:token=sensorgate;object=gateway-sign?module-path=/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so&pin-source=file:/etc/sensorgate/keys/token.pin
//! ```
//!
//! What is understood: in the path, the token's `token` (label),
//! `manufacturer`, `model` and `serial`, the `slot-id`, and the key's
//! `object` (label), `id` and `type` (`private`, or left out); in the
//! query, `module-path` (the module to load; required) and `pin-source`:
//! `file:/path` (a file held to the rules of key files) or
//! `credential:NAME` (a systemd credential, read from
//! `$CREDENTIALS_DIRECTORY/NAME`). A `pin-value` is refused: a PIN never
//! lives in the configuration. Sans-IO: parsing only.

use std::fmt;
use std::path::PathBuf;

/// The URI scheme.
pub const SCHEME: &str = "pkcs11:";

/// A key in a token, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUri {
    /// The token's label (`token=`).
    pub token: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub slot_id: Option<u64>,
    /// The key's label (`object=`).
    pub object: Option<String>,
    /// The key's `CKA_ID` (`id=`, percent-encoded bytes).
    pub id: Option<Vec<u8>>,
    /// The PKCS#11 module (a shared library) to load.
    pub module_path: PathBuf,
    pub pin: Option<PinSource>,
}

/// Where the user PIN comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file, held to the rules of private key files.
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
}

/// Why a URI was refused; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UriError(String);

fn fail<T>(message: impl Into<String>) -> Result<T, UriError> {
    Err(UriError(message.into()))
}

impl KeyUri {
    /// True when `text` is meant as a PKCS#11 URI rather than a path.
    pub fn is_uri(text: &str) -> bool {
        text.get(..SCHEME.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
    }

    pub fn parse(text: &str) -> Result<KeyUri, UriError> {
        if !KeyUri::is_uri(text) {
            return fail(format!("does not start with \"{SCHEME}\""));
        }
        let rest = &text[SCHEME.len()..];
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = KeyUri {
            token: None,
            manufacturer: None,
            model: None,
            serial: None,
            slot_id: None,
            object: None,
            id: None,
            module_path: PathBuf::new(),
            pin: None,
        };
        let mut seen = Vec::new();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attribute(attr)?;
            if seen.contains(&name) {
                return fail(format!("\"{name}\" appears twice in the path"));
            }
            seen.push(name);
            let text = || utf8(name, &value);
            match name {
                "token" => uri.token = Some(text()?),
                "manufacturer" => uri.manufacturer = Some(text()?),
                "model" => uri.model = Some(text()?),
                "serial" => uri.serial = Some(text()?),
                "object" => uri.object = Some(text()?),
                "id" => uri.id = Some(value),
                "slot-id" => match text()?.parse() {
                    Ok(n) => uri.slot_id = Some(n),
                    Err(_) => return fail("slot-id is not a number"),
                },
                "type" => {
                    if text()? != "private" {
                        return fail(
                            "type must be \"private\" (or left out): the URI names a private key",
                        );
                    }
                }
                other => {
                    return fail(format!(
                        "the path attribute \"{other}\" is not used here; name the token with token, manufacturer, model, serial or slot-id, and the key with object or id"
                    ));
                }
            }
        }
        let mut module_path = None;
        for attr in query.into_iter().flat_map(|q| q.split('&')) {
            if attr.is_empty() {
                continue;
            }
            let (name, value) = attribute(attr)?;
            if seen.contains(&name) {
                return fail(format!("\"{name}\" appears twice"));
            }
            seen.push(name);
            let text = utf8(name, &value)?;
            match name {
                "module-path" => module_path = Some(PathBuf::from(text)),
                "pin-source" => uri.pin = Some(pin_source(&text)?),
                "pin-value" => {
                    return fail(
                        "pin-value puts the PIN in the configuration; keep it in a file (pin-source=file:/etc/sensorgate/keys/token.pin, mode 0600) or a systemd credential (pin-source=credential:NAME)",
                    );
                }
                "module-name" => {
                    return fail(
                        "module-name is not looked up; give the module's file with module-path=/usr/lib/.../libNAME.so",
                    );
                }
                other => return fail(format!("the query attribute \"{other}\" is not used here")),
            }
        }
        match module_path {
            Some(p) if p.is_absolute() => uri.module_path = p,
            Some(p) => {
                return fail(format!(
                    "module-path {} is not an absolute path",
                    p.display()
                ));
            }
            None => {
                return fail(
                    "module-path is missing: the PKCS#11 module to load, e.g. ?module-path=/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
                );
            }
        }
        if uri.object.is_none() && uri.id.is_none() {
            return fail("names no key: add object=LABEL (or id=%01...) to the path");
        }
        Ok(uri)
    }

    /// A short name for the log: the token and the key, not the module.
    pub fn key_name(&self) -> String {
        let token = self.token.as_deref().unwrap_or("?");
        match (&self.object, &self.id) {
            (Some(o), _) => format!("{o} in token {token}"),
            (None, Some(id)) => format!("id {} in token {token}", hex(id)),
            (None, None) => format!("a key in token {token}"),
        }
    }
}

impl fmt::Display for KeyUri {
    /// The URI written back (attributes in a fixed order); it never holds
    /// a PIN, only where the PIN comes from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut path = Vec::new();
        let mut text = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                path.push(format!("{name}={}", encode(v.as_bytes())));
            }
        };
        text("token", &self.token);
        text("manufacturer", &self.manufacturer);
        text("model", &self.model);
        text("serial", &self.serial);
        text("object", &self.object);
        if let Some(id) = &self.id {
            path.push(format!(
                "id={}",
                id.iter().map(|b| format!("%{b:02X}")).collect::<String>()
            ));
        }
        if let Some(slot) = self.slot_id {
            path.push(format!("slot-id={slot}"));
        }
        write!(f, "{SCHEME}{}", path.join(";"))?;
        let module = self.module_path.to_string_lossy();
        write!(f, "?module-path={}", encode(module.as_bytes()))?;
        match &self.pin {
            Some(PinSource::File(p)) => write!(
                f,
                "&pin-source=file:{}",
                encode(p.to_string_lossy().as_bytes())
            ),
            Some(PinSource::Credential(c)) => {
                write!(f, "&pin-source=credential:{}", encode(c.as_bytes()))
            }
            None => Ok(()),
        }
    }
}

/// `name=value`, the value percent-decoded.
fn attribute(attr: &str) -> Result<(&str, Vec<u8>), UriError> {
    let Some((name, value)) = attr.split_once('=') else {
        return fail(format!("\"{attr}\" is not name=value"));
    };
    Ok((name, decode(value)?))
}

fn utf8(name: &str, value: &[u8]) -> Result<String, UriError> {
    String::from_utf8(value.to_vec()).or_else(|_| fail(format!("{name} is not UTF-8 text")))
}

fn pin_source(text: &str) -> Result<PinSource, UriError> {
    if let Some(path) = text.strip_prefix("file:") {
        // file:/path and file:///path both name /path.
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            return fail(format!(
                "pin-source {text}: the file must be an absolute path (file:/etc/sensorgate/keys/token.pin)"
            ));
        }
        return Ok(PinSource::File(PathBuf::from(path)));
    }
    if let Some(name) = text.strip_prefix("credential:") {
        if name.is_empty() || name.contains('/') {
            return fail(format!(
                "pin-source {text}: a credential is a plain name, as in LoadCredential=NAME:/path"
            ));
        }
        return Ok(PinSource::Credential(name.to_string()));
    }
    fail(format!(
        "pin-source {text} is neither file:/path nor credential:NAME"
    ))
}

/// Percent-decoding (RFC 3986 §2.1).
fn decode(value: &str) -> Result<Vec<u8>, UriError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => out.push(b),
                None => {
                    return fail(format!(
                        "\"{value}\" has a % not followed by two hex digits"
                    ));
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Percent-encoding of everything but RFC 3986's unreserved characters and
/// the `/` of paths.
fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MODULE: &str = "module-path=/usr/lib/softhsm/libsofthsm2.so";

    #[test]
    fn a_full_uri_is_read() {
        let uri = KeyUri::parse(&format!(
            "pkcs11:token=sensor%20gate;serial=0123;object=gateway-sign;id=%01%a2;type=private?{MODULE}&pin-source=file:/etc/sensorgate/keys/token.pin"
        ))
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("sensor gate"));
        assert_eq!(uri.serial.as_deref(), Some("0123"));
        assert_eq!(uri.object.as_deref(), Some("gateway-sign"));
        assert_eq!(uri.id, Some(vec![0x01, 0xa2]));
        assert_eq!(
            uri.module_path,
            PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert_eq!(
            uri.pin,
            Some(PinSource::File("/etc/sensorgate/keys/token.pin".into()))
        );
        assert_eq!(uri.key_name(), "gateway-sign in token sensor gate");
        assert_eq!(KeyUri::parse(&uri.to_string()).unwrap(), uri);
    }

    #[test]
    fn mistakes_say_what_to_write() {
        for (text, says) in [
            (
                format!("pkcs11:object=k?{MODULE}&pin-value=1234"),
                "pin-source=file:",
            ),
            ("pkcs11:object=k".to_string(), "module-path is missing"),
            (
                "pkcs11:object=k?module-path=libsofthsm2.so".into(),
                "not an absolute path",
            ),
            (format!("pkcs11:token=t?{MODULE}"), "names no key"),
            (
                format!("pkcs11:object=k;type=cert?{MODULE}"),
                "type must be",
            ),
            (
                format!("pkcs11:object=k;object=j?{MODULE}"),
                "appears twice",
            ),
            (format!("pkcs11:object=%zz?{MODULE}"), "two hex digits"),
            (
                format!("pkcs11:object=k;library-version=2?{MODULE}"),
                "not used here",
            ),
            (
                format!("pkcs11:object=k?{MODULE}&pin-source=|/bin/echo 1234"),
                "neither file:/path nor credential:NAME",
            ),
            (
                format!("pkcs11:object=k?{MODULE}&pin-source=file:token.pin"),
                "absolute path",
            ),
            (
                format!("pkcs11:object=k?{MODULE}&module-name=softhsm2"),
                "module-name",
            ),
        ] {
            let e = KeyUri::parse(&text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn credentials_and_file_urls_are_pin_sources() {
        let uri = KeyUri::parse(&format!(
            "pkcs11:object=k?{MODULE}&pin-source=credential:token.pin"
        ))
        .unwrap();
        assert_eq!(uri.pin, Some(PinSource::Credential("token.pin".into())));
        let uri = KeyUri::parse(&format!(
            "pkcs11:object=k?{MODULE}&pin-source=file:///run/pin"
        ))
        .unwrap();
        assert_eq!(uri.pin, Some(PinSource::File("/run/pin".into())));
        assert!(KeyUri::is_uri("PKCS11:object=k"));
        assert!(!KeyUri::is_uri("/etc/sensorgate/keys/gateway.key"));
    }

    proptest! {
        #[test]
        fn every_uri_reads_back_from_its_text(
            token in proptest::option::of("[ -~]{0,12}"),
            object in "[ -~\\u{e9}]{1,12}",
            id in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..8)),
            slot in proptest::option::of(any::<u64>()),
            pin in proptest::option::of("[a-z.]{1,8}"),
        ) {
            let uri = KeyUri {
                token,
                manufacturer: None,
                model: None,
                serial: None,
                slot_id: slot,
                object: Some(object),
                id,
                module_path: "/usr/lib/x y/lib%.so".into(),
                pin: pin.map(|p| PinSource::File(format!("/etc/{p}").into())),
            };
            prop_assert_eq!(KeyUri::parse(&uri.to_string()).unwrap(), uri);
        }
    }
}
