//! `sensorgate csr`: a PKCS#10 certificate signing request (RFC 2986) for
//! the TLS client key, signed by that key wherever it is, so that the
//! broker's CA can issue the client certificate while a key in a token
//! never leaves it.
//!
//! The key is read exactly as `[mqtt] key_file` is ([`super::tls::read_key`]:
//! a mode-checked file, or a `pkcs11:` URI) and signs through the same
//! rustls signing key the handshake uses, so a request that can be made is
//! one whose key the gateway can use.

use rustls::SignatureScheme;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::der::asn1::{Any, BitString, Ia5StringRef, PrintableStringRef};
use x509_cert::der::{Decode as _, Encode as _, EncodePem as _, Tag, pem::LineEnding};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::request::{CertReq, CertReqInfo, Version};
use x509_cert::spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};

use super::tls::{self, TlsError};
use crate::config::KeyRef;
use crate::pkcs11::TokenError;

/// Why no request was made.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error(
        "--subject {subject:?} is not a distinguished name ({detail}); write it as in RFC 4514, e.g. CN=gw-0042,O=Example Fleet"
    )]
    Subject { subject: String, detail: String },
    /// The key: missing, readable by others, not a key, or its token.
    #[error(transparent)]
    Key(#[from] TlsError),
    #[error("the key {key} cannot sign a certificate request: {detail}")]
    Unusable { key: String, detail: String },
    /// The token failed while signing.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl CsrError {
    /// sysexits: 64 for a bad subject, the key's own code otherwise, 65
    /// for a key this cannot use.
    pub fn exit_code(&self) -> i32 {
        match self {
            CsrError::Subject { .. } => 64,
            CsrError::Key(e) => e.exit_code(),
            CsrError::Unusable { .. } => 65,
            CsrError::Token(e) => e.exit_code(),
        }
    }
}

/// The schemes a request may be signed with, best first, and the
/// signature algorithm each is in X.509 (RFC 5758, RFC 8410, RFC 4055),
/// with whether its parameters are an explicit NULL (RSA's are).
const SCHEMES: [(SignatureScheme, &str, bool); 4] = [
    (
        SignatureScheme::ECDSA_NISTP256_SHA256,
        "1.2.840.10045.4.3.2",
        false,
    ),
    (
        SignatureScheme::ECDSA_NISTP384_SHA384,
        "1.2.840.10045.4.3.3",
        false,
    ),
    (SignatureScheme::ED25519, "1.3.101.112", false),
    (
        SignatureScheme::RSA_PKCS1_SHA256,
        "1.2.840.113549.1.1.11",
        true,
    ),
];

/// The request for `key` with `subject` (RFC 4514, `CN=gw-0042,O=Fleet`),
/// as PEM (`-----BEGIN CERTIFICATE REQUEST-----`).
pub fn request_pem(key: &KeyRef, subject: &str) -> Result<String, CsrError> {
    let bad_subject = |detail: String| CsrError::Subject {
        subject: subject.to_string(),
        detail,
    };
    let name = parse_subject(subject).map_err(bad_subject)?;
    let unusable = |detail: String| CsrError::Unusable {
        key: key.to_string(),
        detail,
    };
    let signing = tls::read_key(key)?.signing_key().map_err(|e| {
        unusable(format!(
            "{e}; expected an ECDSA (P-256, P-384), Ed25519 or RSA key"
        ))
    })?;
    let spki = signing
        .public_key()
        .ok_or_else(|| unusable("its public key cannot be told".into()))?;
    let public_key = SubjectPublicKeyInfoOwned::from_der(&spki)
        .map_err(|e| unusable(format!("its public key cannot be read ({e})")))?;
    let offered: Vec<SignatureScheme> = SCHEMES.iter().map(|(s, ..)| *s).collect();
    let signer = signing
        .choose_scheme(&offered)
        .ok_or_else(|| unusable("it signs with none of ECDSA, Ed25519 or RSA PKCS#1".into()))?;
    let (_, oid, null) = SCHEMES
        .iter()
        .find(|(s, ..)| *s == signer.scheme())
        .expect("the signer is one of the schemes offered");
    let algorithm = AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap(oid),
        parameters: null.then_some(x509_cert::der::asn1::Null.into()),
    };
    let info = CertReqInfo {
        version: Version::V1,
        subject: name,
        public_key,
        attributes: Default::default(),
    };
    let encode = |e: x509_cert::der::Error| unusable(format!("encoding the request: {e}"));
    let tbs = info.to_der().map_err(encode)?;
    let signature = signer.sign(&tbs).map_err(|e| match e {
        rustls::Error::Other(other) => match other.0.downcast_ref::<TokenError>() {
            Some(TokenError::Unavailable { uri, detail }) => {
                CsrError::Token(TokenError::Unavailable {
                    uri: uri.clone(),
                    detail: detail.clone(),
                })
            }
            _ => unusable(other.to_string()),
        },
        e => unusable(e.to_string()),
    })?;
    let request = CertReq {
        info,
        algorithm,
        signature: BitString::from_bytes(&signature).map_err(encode)?,
    };
    request.to_pem(LineEnding::LF).map_err(encode)
}

/// The attribute types a subject may name by their short names (RFC 4514
/// §3, and the usual others), their OIDs and the string type their values
/// are written in. Any other type is given as a dotted OID (UTF8String).
/// Looked up here rather than through `x509-cert`'s `FromStr`, whose table
/// of every OID name would add 230 KB to the gateway's binary.
const ATTRIBUTES: [(&str, &str, Tag); 11] = [
    ("CN", "2.5.4.3", Tag::Utf8String),
    ("O", "2.5.4.10", Tag::Utf8String),
    ("OU", "2.5.4.11", Tag::Utf8String),
    ("C", "2.5.4.6", Tag::PrintableString),
    ("L", "2.5.4.7", Tag::Utf8String),
    ("ST", "2.5.4.8", Tag::Utf8String),
    ("STREET", "2.5.4.9", Tag::Utf8String),
    ("SERIALNUMBER", "2.5.4.5", Tag::PrintableString),
    ("DC", "0.9.2342.19200300.100.1.25", Tag::Ia5String),
    ("UID", "0.9.2342.19200300.100.1.1", Tag::Utf8String),
    ("EMAILADDRESS", "1.2.840.113549.1.9.1", Tag::Ia5String),
];

/// An RFC 4514 distinguished name (`CN=gw-0042,O=Example Fleet`): the most
/// specific attribute first, `\` escapes (`\,` or `\2C`), spaces around
/// `=` and `,` ignored. One attribute per RDN (no `+`), and no `#` hex
/// values.
fn parse_subject(text: &str) -> Result<Name, String> {
    let mut rdns = Vec::new();
    for part in split_unescaped(text, b',') {
        if split_unescaped(part, b'+').count() > 1 {
            return Err(format!(
                "{part:?} has several attributes joined by +; give one per RDN"
            ));
        }
        let (kind, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not TYPE=value"))?;
        let kind = kind.trim();
        let (oid, tag) = match ATTRIBUTES
            .iter()
            .find(|(name, ..)| name.eq_ignore_ascii_case(kind))
        {
            Some((_, oid, tag)) => (ObjectIdentifier::new_unwrap(oid), *tag),
            None => (
                ObjectIdentifier::new(kind).map_err(|_| {
                    format!("{kind:?} is not a known attribute (CN, O, OU, C, L, ST, ...) or a dotted OID")
                })?,
                Tag::Utf8String,
            ),
        };
        let value = unescape(value.trim())?;
        if value.is_empty() {
            return Err(format!("{kind} is empty"));
        }
        let checked = match tag {
            Tag::PrintableString => PrintableStringRef::new(&value).map(|_| ()),
            Tag::Ia5String => Ia5StringRef::new(&value).map(|_| ()),
            _ => Ok(()),
        };
        checked.map_err(|_| format!("{kind}={value:?} has characters that {kind} cannot hold"))?;
        let value = Any::new(tag, value.as_bytes()).map_err(|e| e.to_string())?;
        let rdn = RelativeDistinguishedName::try_from(vec![AttributeTypeAndValue { oid, value }])
            .map_err(|e| e.to_string())?;
        rdns.push(rdn);
    }
    if rdns.is_empty() {
        return Err("it is empty".into());
    }
    // The string starts with the most specific name; the sequence ends
    // with it.
    let mut sequence = RdnSequence::default();
    for rdn in rdns.into_iter().rev() {
        sequence.push(rdn);
    }
    let der = sequence.to_der().map_err(|e| e.to_string())?;
    Name::from_der(&der).map_err(|e| e.to_string())
}

/// The parts of `text` between the `sep` bytes not escaped by a `\`;
/// nothing for an empty or blank text.
fn split_unescaped(text: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, b) in text.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            _ if b == sep => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    let blank = text.trim().is_empty();
    parts.into_iter().filter(move |_| !blank)
}

/// An RFC 4514 value with its escapes undone: `\` before a special
/// character, or two hex digits for a byte of UTF-8.
fn unescape(value: &str) -> Result<String, String> {
    if value.starts_with('#') {
        return Err(format!(
            "{value:?}: hex-encoded values (#...) are not taken; write the text"
        ));
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).and_then(|h| {
            let h = std::str::from_utf8(h).ok()?;
            u8::from_str_radix(h, 16).ok()
        });
        match (hex, bytes.get(i + 1)) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, Some(c)) if b" \"#+,;<=>\\".contains(c) => {
                out.push(*c);
                i += 2;
            }
            _ => return Err(format!("{value:?} has a \\ that escapes nothing")),
        }
    }
    String::from_utf8(out).map_err(|_| format!("{value:?}: its escapes are not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use x509_parser::prelude::FromDer as _;

    fn key_file(dir: &std::path::Path, pem: &str, mode: u32) -> KeyRef {
        let path = dir.join("client.key");
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        KeyRef::File(path)
    }

    /// The request parses, its signature verifies against its own public
    /// key, and it carries the subject (`subject`, as x509-parser shows
    /// it) and that key.
    fn check(pem: &str, key_pem: &str, subject: &str) {
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap();
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        req.verify_signature().expect("the signature verifies");
        let info = &req.certification_request_info;
        // RFC 4514 writes the most specific name first; the request holds
        // them from the root down.
        assert_eq!(info.subject.to_string(), subject);
        let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        // What a CA does with it.
        rcgen::CertificateSigningRequestParams::from_pem(pem).unwrap();
    }

    use rustls::pki_types::pem::PemObject as _;

    #[test]
    fn file_keys_of_each_kind_sign_a_request_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let pair = rcgen::KeyPair::generate_for(alg).unwrap();
            let key = key_file(dir.path(), &pair.serialize_pem(), 0o600);
            let pem = request_pem(&key, "CN=gw-0042,O=Example Fleet").unwrap();
            assert!(
                pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"),
                "{pem}"
            );
            check(&pem, &pair.serialize_pem(), "O=Example Fleet, CN=gw-0042");
        }
    }

    #[test]
    fn subjects_are_read_as_rfc_4514_writes_them() {
        let shown = |s: &str| {
            let der = parse_subject(s).unwrap().to_der().unwrap();
            let (_, name) = x509_parser::x509::X509Name::from_der(&der).unwrap();
            name.to_string()
        };
        assert_eq!(shown("CN=gw-0042"), "CN=gw-0042");
        assert_eq!(
            shown(" cn = gw 1 , O=Example\\, Inc.,C=DE"),
            "C=DE, O=Example, Inc., CN=gw 1"
        );
        assert_eq!(shown("CN=caf\\C3\\A9,2.5.4.11=Ops"), "OU=Ops, CN=café");
        assert_eq!(shown("DC=example,DC=com,CN=x"), "CN=x, DC=com, DC=example");
        for bad in [
            "", " , ", "gw-0042", "XX=1", "CN=", "CN=a+O=b", "CN=#0403", "C=Ö", "CN=a\\", "CN=\\q",
        ] {
            assert!(parse_subject(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_subject_is_a_usage_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::KeyPair::generate().unwrap();
        let key = key_file(dir.path(), &pair.serialize_pem(), 0o600);
        for subject in ["", "gw-0042", "XX=1"] {
            let e = request_pem(&key, subject).unwrap_err();
            assert_eq!(e.exit_code(), 64, "{subject:?}: {e}");
            assert!(e.to_string().contains("RFC 4514"), "{e}");
        }
    }

    #[test]
    fn the_key_file_is_held_to_the_key_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::KeyPair::generate().unwrap();
        let key = key_file(dir.path(), &pair.serialize_pem(), 0o644);
        let e = request_pem(&key, "CN=gw").unwrap_err();
        assert_eq!(e.exit_code(), 77, "{e}");
        let missing = KeyRef::File(dir.path().join("none.key"));
        let e = request_pem(&missing, "CN=gw").unwrap_err();
        assert_eq!(e.exit_code(), 66, "{e}");
        assert!(e.to_string().contains("none.key"), "{e}");
        assert!(!e.to_string().contains("PRIVATE"), "{e}");
    }
}
