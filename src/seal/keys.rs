//! Keys: the gateway's ES256 signing key, P-256 public keys (gateway verify
//! keys and the recipient's encryption key) and the recipient's private key.
//!
//! Every key is named on the wire by its RFC 7638 JWK thumbprint (`kid`), so
//! a consumer can pick the right trusted key without any registry of ours,
//! and a stock JOSE library computes the same name from the PEM file.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use p256::ecdsa::SigningKey;
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rand::rngs::SysRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::b64;
use crate::secret_file::{self, SecretFileError};

/// Where a key file's path was given: the setting or option an operator
/// changes to fix it, named in every error about that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// `seal.signing_key`: the gateway's own signing key.
    SigningKey,
    /// `seal.recipient_key`: the recipient's public key the gateway
    /// encrypts for.
    RecipientPublicKey,
    /// `open --recipient-key`: the recipient's private key.
    RecipientKeyOption,
    /// `open --trust`: a trusted gateway public key (or a directory of them).
    TrustOption,
    /// A path handed over by a program (the demo, tests): only the file is
    /// named.
    Given,
}

impl KeyOrigin {
    /// The setting or option, as the operator writes it.
    pub fn name(self) -> Option<&'static str> {
        match self {
            KeyOrigin::SigningKey => Some("seal.signing_key"),
            KeyOrigin::RecipientPublicKey => Some("seal.recipient_key"),
            KeyOrigin::RecipientKeyOption => Some("--recipient-key"),
            KeyOrigin::TrustOption => Some("--trust"),
            KeyOrigin::Given => None,
        }
    }

    fn what(self) -> &'static str {
        match self {
            KeyOrigin::SigningKey => "signing key file",
            KeyOrigin::RecipientPublicKey => "recipient public key file",
            KeyOrigin::RecipientKeyOption => "recipient private key file",
            KeyOrigin::TrustOption => "trusted gateway key file",
            KeyOrigin::Given => "key file",
        }
    }

    /// `signing key file /etc/…/gateway.key (seal.signing_key)`.
    fn file(self, path: &Path) -> String {
        match self.name() {
            Some(name) => format!("{} {} ({name})", self.what(), path.display()),
            None => format!("{} {}", self.what(), path.display()),
        }
    }

    /// What to do about a file that is not there.
    fn when_missing(self) -> &'static str {
        match self {
            KeyOrigin::SigningKey => {
                "create the gateway's key pair with `sensorgate keygen`, or fix seal.signing_key"
            }
            KeyOrigin::RecipientPublicKey => {
                "copy there the recipient's .pub file (made on the cloud side by \
                 `sensorgate keygen --recipient`), or fix seal.recipient_key"
            }
            KeyOrigin::RecipientKeyOption => {
                "give --recipient-key the recipient's private .key file"
            }
            KeyOrigin::TrustOption => "give --trust a gateway's .pub file, or a directory of them",
            KeyOrigin::Given => "check the path",
        }
    }
}

/// Why a key could not be loaded or generated. Every variant names the file,
/// and a file from the configuration or the command line names the setting
/// or option that gave it ([`KeyOrigin`]).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{} does not exist; {}", origin.file(path), origin.when_missing())]
    Missing { origin: KeyOrigin, path: PathBuf },
    #[error("cannot read {}: {source}", origin.file(path))]
    Read {
        origin: KeyOrigin,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The private-key file rule of [`crate::secret_file`] (mode, owner).
    #[error("{}{source}", origin.name().map(|n| format!("{n}: ")).unwrap_or_default())]
    Secret {
        origin: KeyOrigin,
        path: PathBuf,
        #[source]
        source: SecretFileError,
    },
    #[error("{} is not {expected}: {detail}", origin.file(path))]
    BadContent {
        origin: KeyOrigin,
        path: PathBuf,
        expected: &'static str,
        detail: String,
    },
    #[error("key file {path} already exists; refusing to overwrite it (move it away first)")]
    Exists { path: PathBuf },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "invalid key name {name:?} for directory {dir}: use a plain file name (no '/', not empty)"
    )]
    BadName { dir: PathBuf, name: String },
    #[error("cannot generate a key for {path}: the system random generator failed: {detail}")]
    Random { path: PathBuf, detail: String },
    /// The key is in a PKCS#11 token, which failed or refused.
    #[error("{0}")]
    Token(#[from] crate::pkcs11::TokenError),
    #[error(
        "trusted key directory {path} (--trust) holds no .pub file; copy the gateways' .pub files into it"
    )]
    NoPublicKeys { path: PathBuf },
}

impl KeyError {
    /// The `sysexits` code for this failure: 66 missing file, 77 permission,
    /// 65 bad content, 73 cannot create (already exists), 64 bad name.
    pub fn exit_code(&self) -> i32 {
        match self {
            KeyError::Missing { .. } => 66,
            KeyError::Read { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => 77,
            KeyError::Read { .. } => 66,
            KeyError::Secret { source, .. } if source.is_permission() => 77,
            KeyError::Secret {
                source: SecretFileError::NotText { .. },
                ..
            } => 65,
            KeyError::Secret { .. } => 66,
            KeyError::BadContent { .. } => 65,
            KeyError::Exists { .. } | KeyError::Write { .. } => 73,
            KeyError::BadName { .. } => 64,
            KeyError::Random { .. } => 71,
            KeyError::Token(e) => e.exit_code(),
            KeyError::NoPublicKeys { .. } => 66,
        }
    }

    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            KeyError::Missing { path, .. }
            | KeyError::Read { path, .. }
            | KeyError::Secret { path, .. }
            | KeyError::BadContent { path, .. }
            | KeyError::Exists { path }
            | KeyError::Write { path, .. }
            | KeyError::Random { path, .. }
            | KeyError::NoPublicKeys { path } => path,
            KeyError::BadName { dir, .. } => dir,
            // The token's module stands for the key.
            KeyError::Token(_) => Path::new(""),
        }
    }
}

/// A P-256 public key with its `kid`: a gateway's verify key (in `open`) or
/// the recipient's encryption key (in the gateway).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: p256::PublicKey,
    kid: String,
}

impl PublicKey {
    /// Wraps a p256 key, computing its thumbprint once.
    pub fn from_p256(key: p256::PublicKey) -> PublicKey {
        let (x, y) = coordinates(&key);
        let kid = thumbprint(&x, &y);
        PublicKey { key, kid }
    }

    /// Parses an SPKI PEM (`-----BEGIN PUBLIC KEY-----`); text around the
    /// block is ignored. The error says what the text holds instead.
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        parse_public(pem)
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url): the `kid` on the wire.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as SPKI PEM, as `keygen` writes it.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding a valid P-256 public key as SPKI cannot fail")
    }

    /// The key as a public JWK (`{"kty":"EC","crv":"P-256","x":..,"y":..,"kid":..}`),
    /// for consumers that configure stock JOSE libraries with JWKs.
    pub fn to_jwk(&self) -> String {
        let (x, y) = coordinates(&self.key);
        format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{x}","y":"{y}","kid":"{}"}}"#,
            self.kid
        )
    }

    pub(crate) fn p256(&self) -> &p256::PublicKey {
        &self.key
    }

    /// The kid as the 32 bytes of the thumbprint (format version 2).
    pub(crate) fn kid_bytes(&self) -> [u8; 32] {
        b64::decode(self.kid.as_bytes())
            .ok()
            .and_then(|raw| raw.try_into().ok())
            .expect("a kid is the base64url of a SHA-256 hash")
    }

    /// The key as the opener verifies with it.
    pub(crate) fn verify_key(&self) -> VerifyKey {
        let point = self.key.to_sec1_point(false);
        VerifyKey(ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            point.as_bytes().to_vec(),
        ))
    }
}

/// A gateway's verify key as the opener uses it: ES256 checked by *ring*,
/// whose P-256 is assembly on x86_64, aarch64 and armv7 (several times the
/// speed of the `p256` crate's portable arithmetic; a consumer verifies
/// every message of a fleet). The gateway signs with *ring* too; the test
/// vectors, signed by `p256` with RFC 6979 nonces, check the two against
/// each other.
#[derive(Clone)]
pub(crate) struct VerifyKey(ring::signature::UnparsedPublicKey<Vec<u8>>);

impl VerifyKey {
    /// Checks the 64-byte `r || s` signature of `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), &'static str> {
        if signature.len() != 64 {
            return Err("ES256 signatures are 64 bytes r||s");
        }
        self.0.verify(message, signature).map_err(|_| "ES256")
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey").field("kid", &self.kid).finish()
    }
}

/// The gateway's ES256 signing key, never shown by `Debug`.
///
/// Signatures are made by *ring* (its P-256 in assembly for x86_64,
/// aarch64 and armv7, with hedged nonces: random bytes mixed with the key
/// and the message): a fifth of the instructions per signature of the
/// portable `p256` code on aarch64 (docs/BENCHMARKS.md, "Pi resources").
/// `p256` parses the key files and derives the public key. *ring* does
/// not wipe its copy of the scalar on drop; the key lives as long as the
/// process anyway. Test vectors sign with `p256` and RFC 6979's
/// deterministic nonces instead ([`Nonces::Rfc6979`]), so that they are
/// reproducible byte for byte.
///
/// Or the key stays in a PKCS#11 token ([`GatewayKey::from_token`]): the
/// token signs SHA-256 digests, and a signature can then fail (the token
/// went away).
pub struct GatewayKey {
    backend: Backend,
    public: PublicKey,
}

enum Backend {
    File(Box<FileKey>),
    Token(std::sync::Arc<crate::pkcs11::TokenKey>),
}

/// A key loaded from a file: the `p256` key and *ring*'s copy of it.
struct FileKey {
    key: SigningKey,
    signer: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl GatewayKey {
    /// The key in a token.
    pub fn from_token(
        token: crate::pkcs11::TokenKey,
    ) -> Result<GatewayKey, crate::pkcs11::TokenError> {
        let public = p256::PublicKey::from_sec1_bytes(token.public_sec1()).map_err(|e| {
            crate::pkcs11::TokenError::NotP256 {
                uri: token.uri().to_string(),
                detail: format!("its public key is not a P-256 point: {e}"),
            }
        })?;
        Ok(GatewayKey {
            public: PublicKey::from_p256(public),
            backend: Backend::Token(std::sync::Arc::new(token)),
        })
    }

    /// The ES256 signature (`r || s`) of `message`, with fresh nonces:
    /// what sealing does once per message (benches, embedders).
    pub fn sign_message(&self, message: &[u8]) -> Result<[u8; 64], crate::pkcs11::TokenError> {
        self.sign(message, Nonces::Hedged)
    }

    /// The token's URI, when the key is in one.
    pub fn token(&self) -> Option<&crate::pkcs11::KeyUri> {
        match &self.backend {
            Backend::Token(t) => Some(t.uri()),
            Backend::File(_) => None,
        }
    }

    pub(crate) fn from_signing_key(key: SigningKey) -> GatewayKey {
        let verifying = key.verifying_key();
        let public = PublicKey::from_p256(p256::PublicKey::from(verifying));
        let rng = ring::rand::SystemRandom::new();
        let scalar = Zeroizing::new(key.to_bytes());
        let point = verifying.to_sec1_point(false);
        let signer = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            scalar.as_slice(),
            point.as_bytes(),
            &rng,
        )
        .expect("ring accepts every valid P-256 key pair");
        GatewayKey {
            backend: Backend::File(Box::new(FileKey { key, signer, rng })),
            public,
        }
    }

    /// Parses a PKCS#8 PEM private key (for tests and embedders; files go
    /// through [`load_signing_key`], which also checks the mode).
    pub fn from_pkcs8_pem(pem: &str) -> Result<GatewayKey, String> {
        parse_private(pem).map(|secret| GatewayKey::from_signing_key(SigningKey::from(&secret)))
    }

    /// A fresh random key (tests, `demo`).
    pub fn generate() -> GatewayKey {
        let secret = p256::SecretKey::try_generate_from_rng(&mut SysRng)
            .expect("the system random generator failed");
        GatewayKey::from_signing_key(SigningKey::from(&secret))
    }

    /// The matching verify key, to hand to consumers.
    pub fn public(&self) -> PublicKey {
        self.public.clone()
    }

    /// The `kid` put in every JWS header this key signs.
    pub fn kid(&self) -> &str {
        self.public.kid()
    }

    /// The ES256 signature of `message`: `r || s`, 64 bytes (RFC 7518
    /// §3.4, RFC 9053 §2.1).
    /// A key in a token makes its own nonces whatever `nonces` says, and
    /// fails when the token does.
    pub(crate) fn sign(
        &self,
        message: &[u8],
        nonces: Nonces,
    ) -> Result<[u8; 64], crate::pkcs11::TokenError> {
        let FileKey { key, signer, rng } = match &self.backend {
            Backend::File(file) => &**file,
            Backend::Token(token) => {
                use sha2::Digest;
                let digest: [u8; 32] = sha2::Sha256::digest(message).into();
                return token.sign_digest(&digest);
            }
        };
        Ok(match nonces {
            Nonces::Hedged => signer
                .sign(rng, message)
                .expect("the system random generator failed")
                .as_ref()
                .try_into()
                .expect("a fixed-size P-256 signature has 64 bytes"),
            Nonces::Rfc6979 => {
                use p256::ecdsa::Signature;
                use p256::ecdsa::signature::Signer;
                let signature: Signature = key.sign(message);
                signature.to_bytes().into()
            }
        })
    }
}

/// How a signature's nonce is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Nonces {
    /// Random bytes mixed with the key and the message (*ring*): what the
    /// gateway uses.
    #[default]
    Hedged,
    /// Derived from the key and the message alone (RFC 6979, `p256`): for
    /// test vectors, which must be reproducible.
    Rfc6979,
}

impl fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayKey")
            .field("kid", &self.public.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The recipient's P-256 private key, used by `open` to unwrap the content
/// key of each sealed message. Wiped on drop; never shown by `Debug`.
pub struct RecipientKey {
    secret: p256::SecretKey,
    public: PublicKey,
}

impl RecipientKey {
    pub(crate) fn from_secret(secret: p256::SecretKey) -> RecipientKey {
        let public = PublicKey::from_p256(secret.public_key());
        RecipientKey { secret, public }
    }

    /// Parses a PKCS#8 PEM private key (files go through [`load_recipient_key`]).
    pub fn from_pkcs8_pem(pem: &str) -> Result<RecipientKey, String> {
        parse_private(pem).map(RecipientKey::from_secret)
    }

    /// A fresh random key (tests, `demo`).
    pub fn generate() -> RecipientKey {
        let secret = p256::SecretKey::try_generate_from_rng(&mut SysRng)
            .expect("the system random generator failed");
        RecipientKey::from_secret(secret)
    }

    /// The public half, for the gateway's `recipient_key`.
    pub fn public(&self) -> PublicKey {
        self.public.clone()
    }

    /// The `kid` a JWE for this key carries.
    pub fn kid(&self) -> &str {
        self.public.kid()
    }

    pub(crate) fn secret(&self) -> &p256::SecretKey {
        &self.secret
    }
}

impl fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipientKey")
            .field("kid", &self.public.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The affine coordinates as base64url (the JWK `x` and `y`).
pub(crate) fn coordinates(key: &p256::PublicKey) -> (String, String) {
    let (x, y) = raw_coordinates(key);
    (b64::encode(x), b64::encode(y))
}

/// The affine coordinates, 32 bytes each, big-endian.
pub(crate) fn raw_coordinates(key: &p256::PublicKey) -> ([u8; 32], [u8; 32]) {
    let point = key.to_sec1_point(false);
    let x = point.x().expect("an uncompressed point has x");
    let y = point.y().expect("an uncompressed point has y");
    (
        x.as_slice()
            .try_into()
            .expect("P-256 coordinates are 32 bytes"),
        y.as_slice()
            .try_into()
            .expect("P-256 coordinates are 32 bytes"),
    )
}

/// RFC 7638 thumbprint of an EC public JWK: SHA-256 over the required
/// members in lexicographic order with no whitespace, base64url.
pub(crate) fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    b64::encode(Sha256::digest(canonical.as_bytes()))
}

/// The PEM parser is strict about surrounding whitespace; files edited by
/// hand or pasted often end with blank lines. The copy is wiped on drop.
fn tidy_pem(text: &str) -> Zeroizing<String> {
    let mut tidy = Zeroizing::new(String::with_capacity(text.len() + 1));
    tidy.push_str(text.trim());
    tidy.push('\n');
    tidy
}

const PKCS8_EXPECTED: &str = "a P-256 private key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----)";
const SPKI_EXPECTED: &str = "a P-256 public key in SPKI PEM (-----BEGIN PUBLIC KEY-----)";

/// Characters of a PEM label from the file kept in an error.
const LABEL_CHARS: usize = 32;

/// The `-----BEGIN label-----` … `-----END label-----` block of `text`,
/// without what surrounds it (comments such as openssl's `Bag Attributes`,
/// blank lines), which the PEM parser would take for a broken preamble.
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = start + text[start..].find(&end)? + end.len();
    Some(&text[start..stop])
}

/// The labels of the `-----BEGIN …-----` lines of `text`, shortened.
fn labels(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines().filter_map(|line| {
        let label = line
            .trim()
            .strip_prefix("-----BEGIN ")?
            .strip_suffix("-----")?;
        Some(label.chars().take(LABEL_CHARS).collect())
    })
}

/// The first label naming a key (`EC PRIVATE KEY`, ...), if any.
fn key_label(text: &str) -> Option<String> {
    labels(text).find(|l| l.contains("KEY"))
}

/// Says what `text`, which has no block labelled `wanted`, holds instead;
/// `None` when it holds a key of another kind, which the caller words.
fn what_instead(text: &str, wanted: &str) -> Option<String> {
    if text.trim().is_empty() {
        return Some("the file is empty".to_string());
    }
    if key_label(text).is_some() {
        return None;
    }
    match labels(text).next().as_deref() {
        None => Some(format!(
            "it holds no PEM block (there is no -----BEGIN {wanted}----- line)"
        )),
        Some("CERTIFICATE") => Some(format!("it holds a certificate, not a {wanted}")),
        Some(other) => Some(format!("it holds a PEM {other:?} block, not a {wanted}")),
    }
}

/// Parses SPKI PEM text as a P-256 public key, or says what is wrong.
fn parse_public(text: &str) -> Result<PublicKey, String> {
    let Some(block) = pem_block(text, "PUBLIC KEY") else {
        let hint = "give the .pub file written by `sensorgate keygen`";
        if let Some(instead) = what_instead(text, "PUBLIC KEY") {
            return Err(format!("{instead}; {hint}"));
        }
        if text.contains("PRIVATE KEY") {
            return Err(format!("it is a private key; {hint}"));
        }
        let label = key_label(text).unwrap_or_default();
        return Err(format!(
            "it holds a PEM {label:?} block, not a PUBLIC KEY; {hint}"
        ));
    };
    p256::PublicKey::from_public_key_pem(&tidy_pem(block))
        .map(PublicKey::from_p256)
        .map_err(|e| format!("its PUBLIC KEY block is damaged or is not a P-256 key ({e})"))
}

/// Parses PKCS#8 PEM text as a P-256 private key, or says what is wrong.
/// The text is a secret: nothing of it goes into the error but its PEM
/// label.
fn parse_private(text: &str) -> Result<p256::SecretKey, String> {
    let Some(block) = pem_block(text, "PRIVATE KEY") else {
        if let Some(instead) = what_instead(text, "PRIVATE KEY") {
            return Err(format!(
                "{instead}; give the .key file written by `sensorgate keygen`"
            ));
        }
        if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            return Err("it is a SEC1 \"EC PRIVATE KEY\"; convert it with \
                 `openssl pkcs8 -topk8 -nocrypt -in OLD -out NEW`"
                .to_string());
        }
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err("it is encrypted with a passphrase; store it unencrypted \
                 (`openssl pkcs8 -in OLD -out NEW`, then chmod 600 NEW)"
                .to_string());
        }
        if text.contains("-----BEGIN PUBLIC KEY-----") {
            return Err("it is a public key; give the private key here".to_string());
        }
        let label = key_label(text).unwrap_or_default();
        return Err(format!(
            "it holds a PEM {label:?} block, not a PRIVATE KEY; generate a key pair with `sensorgate keygen`"
        ));
    };
    p256::SecretKey::from_pkcs8_pem(&tidy_pem(block)).map_err(|e| {
        format!(
            "its PRIVATE KEY block is damaged or is not a P-256 key ({e}); generate a key pair with `sensorgate keygen`"
        )
    })
}

/// Reads a private key file (mode-checked) and parses it as PKCS#8 P-256.
fn load_private(path: &Path, origin: KeyOrigin) -> Result<p256::SecretKey, KeyError> {
    let text = secret_file::read_private(path).map_err(|source| match source {
        SecretFileError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            KeyError::Missing {
                origin,
                path: path.to_path_buf(),
            }
        }
        SecretFileError::Read { source, .. } => KeyError::Read {
            origin,
            path: path.to_path_buf(),
            source,
        },
        SecretFileError::NotText { .. } => KeyError::BadContent {
            origin,
            path: path.to_path_buf(),
            expected: PKCS8_EXPECTED,
            detail: "it is not text (a binary DER key? convert it with \
                     `openssl pkey -inform DER -in OLD -out NEW`)"
                .to_string(),
        },
        source => KeyError::Secret {
            origin,
            path: path.to_path_buf(),
            source,
        },
    })?;
    parse_private(&text).map_err(|detail| KeyError::BadContent {
        origin,
        path: path.to_path_buf(),
        expected: PKCS8_EXPECTED,
        detail,
    })
}

/// Loads the gateway's signing key wherever `seal.signing_key` says: a
/// file ([`load_signing_key`]) or a key in a token, which stays there.
pub fn load_gateway_key(key: &crate::config::KeyRef) -> Result<GatewayKey, KeyError> {
    match key {
        crate::config::KeyRef::File(path) => load_signing_key(path),
        crate::config::KeyRef::Pkcs11(uri) => {
            let token = crate::pkcs11::TokenKey::open(uri)?;
            Ok(GatewayKey::from_token(token)?)
        }
    }
}

/// Loads the gateway's signing key, the file of `seal.signing_key` (which
/// its errors name). The file must not be readable by group or others (see
/// [`crate::secret_file`]).
pub fn load_signing_key(path: &Path) -> Result<GatewayKey, KeyError> {
    let secret = load_private(path, KeyOrigin::SigningKey)?;
    Ok(GatewayKey::from_signing_key(SigningKey::from(&secret)))
}

/// Loads the recipient's private key given to `open --recipient-key`
/// (which its errors name); mode-checked like every private key.
pub fn load_recipient_key(path: &Path) -> Result<RecipientKey, KeyError> {
    load_recipient_key_from(path, KeyOrigin::RecipientKeyOption)
}

/// [`load_recipient_key`] for a path from elsewhere, named by `origin`.
pub fn load_recipient_key_from(path: &Path, origin: KeyOrigin) -> Result<RecipientKey, KeyError> {
    load_private(path, origin).map(RecipientKey::from_secret)
}

/// Loads the recipient's public key (SPKI PEM) that the gateway encrypts
/// for, the file of `seal.recipient_key` (which its errors name).
pub fn load_public_key(path: &Path) -> Result<PublicKey, KeyError> {
    load_public_key_from(path, KeyOrigin::RecipientPublicKey)
}

/// Loads a P-256 public key (SPKI PEM) from a path given by `origin`.
pub fn load_public_key_from(path: &Path, origin: KeyOrigin) -> Result<PublicKey, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::InvalidData => KeyError::BadContent {
            origin,
            path: path.to_path_buf(),
            expected: SPKI_EXPECTED,
            detail: "it is not text (a binary DER key? convert it with \
                     `openssl pkey -pubin -inform DER -in OLD -out NEW`)"
                .to_string(),
        },
        io::ErrorKind::NotFound => KeyError::Missing {
            origin,
            path: path.to_path_buf(),
        },
        _ => KeyError::Read {
            origin,
            path: path.to_path_buf(),
            source,
        },
    })?;
    parse_public(&text).map_err(|detail| KeyError::BadContent {
        origin,
        path: path.to_path_buf(),
        expected: SPKI_EXPECTED,
        detail,
    })
}

/// Loads the trusted gateway keys named by `path`: a `.pub` file, or a
/// directory whose every `*.pub` file is trusted (in name order; other files
/// are ignored). A directory lets a gateway key be rotated without changing
/// the consumer's command line: messages select their key by `kid`, so the
/// old and the new key are both accepted while both files are there.
pub fn load_trusted_keys(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let origin = KeyOrigin::TrustOption;
    if !path.is_dir() {
        return load_public_key_from(path, origin).map(|k| vec![k]);
    }
    let read_err = |source| KeyError::Read {
        origin,
        path: path.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(read_err)? {
        let file = entry.map_err(read_err)?.path();
        if file.extension().is_some_and(|e| e == "pub") && !file.is_dir() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(KeyError::NoPublicKeys {
            path: path.to_path_buf(),
        });
    }
    files.sort();
    files
        .iter()
        .map(|f| load_public_key_from(f, origin))
        .collect()
}

/// What [`keygen`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeygenOutput {
    pub key_path: PathBuf,
    pub pub_path: PathBuf,
    pub kid: String,
}

/// Generates a P-256 key pair as `DIR/NAME.key` (PKCS#8 PEM, mode 0600) and
/// `DIR/NAME.pub` (SPKI PEM, mode 0644). Used for both the gateway's signing
/// key and the cloud side's recipient key: the curve and formats are the
/// same, only the role differs.
///
/// Never overwrites: if either file exists nothing is created, and the
/// private key is opened with `create_new` so a race cannot clobber one.
pub fn keygen(out_dir: &Path, name: &str) -> Result<KeygenOutput, KeyError> {
    check_key_name(out_dir, name)?;
    let key_path = out_dir.join(format!("{name}.key"));
    let pub_path = out_dir.join(format!("{name}.pub"));
    // A missing folder is made private: it is about to hold a private key.
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out_dir)
            .map_err(|e| KeyError::Write {
                path: key_path.clone(),
                source: e,
            })?;
    }
    for path in [&key_path, &pub_path] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(KeyError::Exists { path: path.clone() });
        }
    }

    let secret =
        p256::SecretKey::try_generate_from_rng(&mut SysRng).map_err(|e| KeyError::Random {
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
    let public = PublicKey::from_p256(secret.public_key());
    let key_pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .expect("encoding a valid P-256 key as PKCS#8 cannot fail");
    drop(secret);

    write_new(&key_path, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&pub_path, public.to_pem().as_bytes(), 0o644) {
        // Leave nothing half-made behind: a key without its .pub is confusing.
        let _ = fs::remove_file(&key_path);
        return Err(e);
    }
    Ok(KeygenOutput {
        key_path,
        pub_path,
        kid: public.kid,
    })
}

/// A key's NAME in `DIR/NAME.key`: a plain file name.
fn check_key_name(out_dir: &Path, name: &str) -> Result<(), KeyError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(KeyError::BadName {
            dir: out_dir.to_path_buf(),
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Generates a P-256 key pair inside the token `uri` names (sensitive,
/// never extractable) and writes only its public half, `DIR/NAME.pub`.
/// Refuses a `.pub` that exists and a key the token already holds.
pub fn keygen_pkcs11(
    uri: &crate::pkcs11::KeyUri,
    out_dir: &Path,
    name: &str,
) -> Result<(PathBuf, String), KeyError> {
    check_key_name(out_dir, name)?;
    let pub_path = out_dir.join(format!("{name}.pub"));
    if fs::symlink_metadata(&pub_path).is_ok() {
        return Err(KeyError::Exists { path: pub_path });
    }
    fs::create_dir_all(out_dir).map_err(|source| KeyError::Write {
        path: pub_path.clone(),
        source,
    })?;
    let key = GatewayKey::from_token(crate::pkcs11::keygen::generate(uri)?)?;
    let public = key.public();
    write_new(&pub_path, public.to_pem().as_bytes(), 0o644)?;
    Ok((pub_path, public.kid))
}

/// Creates `path` (never replacing an existing file) with `mode` and writes
/// `bytes` durably.
/// Writes `bytes` to `path` atomically and never over an existing file: the
/// content goes to a temporary file (created with `mode`, so a private key
/// is never readable by others), is synced, then hard-linked to `path`,
/// which fails if `path` exists. A crash leaves either no file or the whole
/// one, never a truncated key.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have removed bits from a public file; set them exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::hard_link(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = fs::remove_file(&tmp);
    result.map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            write_err(source)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_0600_key_and_a_0644_public_key_whose_kids_match() {
        let dir = tempfile::tempdir().unwrap();
        let out = keygen(dir.path(), "gateway").unwrap();
        assert_eq!(out.key_path, dir.path().join("gateway.key"));
        assert_eq!(out.pub_path, dir.path().join("gateway.pub"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out.key_path), 0o600);
        assert_eq!(mode(&out.pub_path), 0o644);

        let signing = load_signing_key(&out.key_path).unwrap();
        let public = load_public_key(&out.pub_path).unwrap();
        let recipient = load_recipient_key(&out.key_path).unwrap();
        assert_eq!(signing.kid(), out.kid);
        assert_eq!(public.kid(), out.kid);
        assert_eq!(recipient.kid(), out.kid);
        assert_eq!(signing.public(), public);
        assert_eq!(out.kid.len(), 43, "SHA-256 base64url without padding");
    }

    #[test]
    fn keygen_refuses_to_overwrite_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("r.pub"), "old").unwrap();
        let e = keygen(dir.path(), "r").unwrap_err();
        assert_eq!(e.exit_code(), 73);
        assert!(e.to_string().contains("r.pub"), "{e}");
        assert!(!dir.path().join("r.key").exists());
        assert_eq!(fs::read_to_string(dir.path().join("r.pub")).unwrap(), "old");

        let first = keygen(dir.path(), "g").unwrap();
        let before = fs::read(&first.key_path).unwrap();
        let e = keygen(dir.path(), "g").unwrap_err();
        assert!(matches!(e, KeyError::Exists { .. }));
        assert!(e.to_string().contains("g.key"), "{e}");
        assert_eq!(fs::read(&first.key_path).unwrap(), before);
    }

    #[test]
    fn keygen_rejects_names_that_are_not_plain_file_names() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "a/b", "..", "."] {
            let e = keygen(dir.path(), bad).unwrap_err();
            assert!(matches!(e, KeyError::BadName { .. }), "{bad:?}");
            assert_eq!(e.exit_code(), 64);
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_private_key_readable_by_others_is_refused_with_exit_77() {
        let dir = tempfile::tempdir().unwrap();
        let out = keygen(dir.path(), "k").unwrap();
        fs::set_permissions(&out.key_path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_signing_key(&out.key_path).unwrap_err();
        assert_eq!(e.exit_code(), 77);
        assert!(e.to_string().contains("k.key") && e.to_string().contains("chmod 600"));
        let e = load_recipient_key(&out.key_path).unwrap_err();
        assert_eq!(e.exit_code(), 77);
    }

    #[test]
    fn missing_and_malformed_key_files_get_66_and_65_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.key");
        let e = load_signing_key(&missing).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert!(e.to_string().contains("nope.key"));
        let e = load_public_key(&dir.path().join("nope.pub")).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert!(e.to_string().contains("nope.pub"));

        let junk = dir.path().join("junk.key");
        fs::write(&junk, "not a key").unwrap();
        fs::set_permissions(&junk, fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_signing_key(&junk).unwrap_err();
        assert_eq!(e.exit_code(), 65);
        assert!(e.to_string().contains("junk.key") && e.to_string().contains("PKCS#8"));
        let e = load_public_key(&junk).unwrap_err();
        assert_eq!(e.exit_code(), 65);

        // The two halves swapped get a pointed hint.
        let out = keygen(dir.path(), "x").unwrap();
        let e = load_public_key(&out.key_path).unwrap_err();
        assert!(e.to_string().contains("is a private key"), "{e}");
    }

    #[test]
    fn a_missing_key_file_names_the_setting_or_option_that_gave_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name);
        let shown = |p: &Path| p.display().to_string();

        let e = load_signing_key(&file("gateway.key")).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert_eq!(
            e.to_string(),
            format!(
                "signing key file {} (seal.signing_key) does not exist; create the gateway's key \
                 pair with `sensorgate keygen`, or fix seal.signing_key",
                shown(&file("gateway.key"))
            )
        );
        let e = load_public_key(&file("recipient.pub")).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert_eq!(
            e.to_string(),
            format!(
                "recipient public key file {} (seal.recipient_key) does not exist; copy there the \
                 recipient's .pub file (made on the cloud side by `sensorgate keygen --recipient`), \
                 or fix seal.recipient_key",
                shown(&file("recipient.pub"))
            )
        );
        let e = load_recipient_key(&file("recipient.key")).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert_eq!(
            e.to_string(),
            format!(
                "recipient private key file {} (--recipient-key) does not exist; give \
                 --recipient-key the recipient's private .key file",
                shown(&file("recipient.key"))
            )
        );
        let e = load_trusted_keys(&file("gw.pub")).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert_eq!(
            e.to_string(),
            format!(
                "trusted gateway key file {} (--trust) does not exist; give --trust a gateway's \
                 .pub file, or a directory of them",
                shown(&file("gw.pub"))
            )
        );
        let e = load_public_key_from(&file("x.pub"), KeyOrigin::Given).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "key file {} does not exist; check the path",
                shown(&file("x.pub"))
            )
        );
    }

    #[test]
    fn a_private_key_readable_by_others_names_the_setting_or_option() {
        let dir = tempfile::tempdir().unwrap();
        let out = keygen(dir.path(), "k").unwrap();
        fs::set_permissions(&out.key_path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_signing_key(&out.key_path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "seal.signing_key: private key file {} is readable by group or others (mode 0644); \
                 run chmod 600 on it",
                out.key_path.display()
            )
        );
        let e = load_recipient_key(&out.key_path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--recipient-key: private key file "),
            "{e}"
        );
    }

    /// Issue 21: a `.pub` holding "hello" was reported as "PEM preamble
    /// contains invalid data (NUL byte)".
    #[test]
    fn a_key_file_that_is_not_pem_says_so_naming_the_file_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let hello = dir.path().join("recipient.pub");
        fs::write(&hello, "hello\n").unwrap();
        let e = load_public_key(&hello).unwrap_err();
        assert_eq!(e.exit_code(), 65);
        assert_eq!(
            e.to_string(),
            format!(
                "recipient public key file {} (seal.recipient_key) is not a P-256 public key in \
                 SPKI PEM (-----BEGIN PUBLIC KEY-----): it holds no PEM block (there is no \
                 -----BEGIN PUBLIC KEY----- line); give the .pub file written by `sensorgate keygen`",
                hello.display()
            )
        );
        let e = load_trusted_keys(&hello).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "trusted gateway key file {} (--trust) is not a P-256 public key",
                hello.display()
            )),
            "{e}"
        );

        let key = dir.path().join("gateway.key");
        fs::write(&key, "hello\n").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_signing_key(&key).unwrap_err();
        assert_eq!(e.exit_code(), 65);
        assert_eq!(
            e.to_string(),
            format!(
                "signing key file {} (seal.signing_key) is not a P-256 private key in PKCS#8 PEM \
                 (-----BEGIN PRIVATE KEY-----): it holds no PEM block (there is no -----BEGIN \
                 PRIVATE KEY----- line); give the .key file written by `sensorgate keygen`",
                key.display()
            )
        );
        let e = load_recipient_key(&key).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "recipient private key file {} (--recipient-key) is not a P-256 private key",
                key.display()
            )),
            "{e}"
        );
        for e in [
            load_public_key(&hello).unwrap_err(),
            load_signing_key(&key).unwrap_err(),
        ] {
            assert!(!e.to_string().contains("NUL"), "{e}");
        }
    }

    #[test]
    fn a_key_file_holding_something_else_says_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let out = keygen(dir.path(), "k").unwrap();
        let public = fs::read_to_string(&out.pub_path).unwrap();
        let private = fs::read_to_string(&out.key_path).unwrap();
        let detail = |e: KeyError| match e {
            KeyError::BadContent { detail, .. } => detail,
            other => panic!("{other}"),
        };
        let file = dir.path().join("f.pem");
        let write = |text: &str| {
            fs::write(&file, text).unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        };

        write("");
        assert_eq!(
            detail(load_public_key(&file).unwrap_err()),
            "the file is empty; give the .pub file written by `sensorgate keygen`"
        );
        write("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
        assert_eq!(
            detail(load_public_key(&file).unwrap_err()),
            "it holds a certificate, not a PUBLIC KEY; give the .pub file written by `sensorgate keygen`"
        );
        assert_eq!(
            detail(load_signing_key(&file).unwrap_err()),
            "it holds a certificate, not a PRIVATE KEY; give the .key file written by `sensorgate keygen`"
        );
        write(&private.replace("PRIVATE KEY", "EC PRIVATE KEY"));
        assert!(
            detail(load_signing_key(&file).unwrap_err()).contains("SEC1"),
            "the SEC1 hint"
        );
        // As `openssl ecparam -genkey` writes it: the parameters first.
        write(&format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            private.replace("PRIVATE KEY", "EC PRIVATE KEY")
        ));
        assert!(detail(load_signing_key(&file).unwrap_err()).contains("SEC1"));
        write(&private.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY"));
        assert!(detail(load_signing_key(&file).unwrap_err()).starts_with("it is encrypted"));
        write(&public);
        assert_eq!(
            detail(load_signing_key(&file).unwrap_err()),
            "it is a public key; give the private key here"
        );
        write(&private);
        assert_eq!(
            detail(load_public_key(&file).unwrap_err()),
            "it is a private key; give the .pub file written by `sensorgate keygen`"
        );
        // A block whose body is broken: the parser's own words, once the
        // file is known to hold the right kind of block.
        write(&public.replacen("M", "!", 1));
        assert!(
            detail(load_public_key(&file).unwrap_err())
                .starts_with("its PUBLIC KEY block is damaged or is not a P-256 key ("),
        );
        fs::write(&file, [0x30, 0x82, 0xff, 0xfe]).unwrap();
        assert!(detail(load_public_key(&file).unwrap_err()).starts_with("it is not text"));
        assert!(detail(load_signing_key(&file).unwrap_err()).starts_with("it is not text"));
        // Text around the block is ignored, as openssl does.
        write(&format!(
            "Bag Attributes: from a p12\n{public}\n# copied 2026-01-01\n"
        ));
        assert_eq!(load_public_key(&file).unwrap().kid(), out.kid);
        write(&format!("the gateway key\n{private}"));
        assert_eq!(load_signing_key(&file).unwrap().kid(), out.kid);
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let secret = p256::SecretKey::try_generate_from_rng(&mut SysRng).unwrap();
        let g = GatewayKey::from_signing_key(SigningKey::from(&secret));
        let r = RecipientKey::generate();
        let shown = format!("{g:?} {r:?}");
        assert!(shown.contains("<redacted>") && shown.contains(g.kid()));
        let d = b64::encode(secret.to_bytes());
        assert!(!shown.contains(&d));
    }

    #[test]
    fn a_trust_directory_loads_every_pub_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let old = keygen(dir.path(), "gateway-2025").unwrap();
        let new = keygen(dir.path(), "gateway-2026").unwrap();
        fs::write(dir.path().join("README"), "not a key").unwrap();
        let kids: Vec<String> = load_trusted_keys(dir.path())
            .unwrap()
            .iter()
            .map(|k| k.kid().to_string())
            .collect();
        assert_eq!(kids, [old.kid.clone(), new.kid]);
        let single = load_trusted_keys(&old.pub_path).unwrap();
        assert_eq!(single[0].kid(), old.kid);

        let empty = tempfile::tempdir().unwrap();
        let e = load_trusted_keys(empty.path()).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert!(e.to_string().contains("no .pub file"), "{e}");
        // A broken .pub in the directory is an error naming it, not skipped.
        fs::write(dir.path().join("broken.pub"), "junk").unwrap();
        let e = load_trusted_keys(dir.path()).unwrap_err();
        assert!(e.to_string().contains("broken.pub"), "{e}");
    }

    /// The thumbprint follows RFC 7638 §3.2 exactly (members in lexicographic
    /// order, no whitespace), checked against the RFC 7518 Appendix C key.
    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        let x = "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ";
        let y = "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck";
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let expected = b64::encode(Sha256::digest(canonical.as_bytes()));
        assert_eq!(thumbprint(x, y), expected);

        let mut sec1 = vec![4u8];
        sec1.extend(b64::decode(x).unwrap());
        sec1.extend(b64::decode(y).unwrap());
        let key = PublicKey::from_p256(p256::PublicKey::from_sec1_bytes(&sec1).unwrap());
        assert_eq!(key.kid(), expected);
        assert!(key.to_jwk().contains(&format!(r#""x":"{x}","y":"{y}""#)));
        assert_eq!(PublicKey::from_pem(&key.to_pem()).unwrap(), key);
        let padded = format!("\n{}\n\n", key.to_pem());
        assert_eq!(PublicKey::from_pem(&padded).unwrap(), key);
    }
}
