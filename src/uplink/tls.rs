//! TLS material for the uplink: the broker's CA, the gateway's client
//! certificate and its private key, turned into a rustls client
//! configuration for mutual TLS.
//!
//! Only the *ring* provider is used, named explicitly, so that a dependency
//! enabling another provider cannot change which crypto the uplink runs on.
//! The private key is read through [`crate::secret_file`], so a key that
//! others can read is refused here exactly as the signing key is in `seal`.
//!
//! Beyond the files, [`load_client_config`] applies `mqtt.alpn` and
//! `mqtt.server_name`. rumqttc opens the TLS session with `mqtt.host` as the
//! server name and offers no way to give another, so the override is a
//! certificate verifier (`NamedServerVerifier`) that checks the broker's
//! certificate against the configured name instead; note that the SNI sent
//! is still `mqtt.host` (none for an IP address).
//!
//! [`check`] is the `check-config` side: it loads the same files and also
//! looks at what a connection attempt would only reveal at the broker — a
//! key that belongs to another certificate, an expired certificate — so the
//! operator learns it before deploying, with the dates. [`check_expiry`]
//! (and [`check_expiry_in_use`]) is the daily look at the client
//! certificate's end while running.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore};
use rustls::{SignatureAlgorithm, SignatureScheme, crypto::CryptoProvider};
use x509_cert::Certificate;
use x509_cert::der::Decode as _;

use crate::clock::{TlsTime, wall_now};
use crate::config::{KeyRef, Mqtt};
use crate::pkcs11::{TokenError, TokenKey};
use crate::secret_file::{self, SecretFileError};

const DAY: i64 = 24 * 60 * 60;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{key} is not set; mutual TLS needs mqtt.ca_file, mqtt.cert_file and mqtt.key_file (or mqtt.tls = false for a broker on this machine)"
    )]
    NotConfigured { key: &'static str },

    #[error("{what} {} does not exist; put the file there or fix {key}", path.display())]
    Missing {
        what: &'static str,
        key: &'static str,
        path: PathBuf,
    },

    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The private key file: not readable, readable by others, not text.
    #[error(transparent)]
    PrivateKey(#[from] SecretFileError),

    /// The private key in a token (`mqtt.key_file = "pkcs11:..."`): no
    /// module, no token, a refused PIN, no such key.
    #[error(transparent)]
    Token(#[from] TokenError),

    /// A file (or an in-memory certificate or key) that is not what it should
    /// be; `what` names it, `problem` says what is wrong and what is expected.
    #[error("{what}: {problem}")]
    Invalid { what: String, problem: String },

    #[error(
        "the private key {key} does not belong to the client certificate {cert}; install the key and certificate that were issued together"
    )]
    KeyMismatch { cert: String, key: String },

    #[error(
        "client certificate {} expired on {not_after} (valid from {not_before}, now is {now}); renew it",
        path.display()
    )]
    Expired {
        path: PathBuf,
        not_before: String,
        not_after: String,
        now: String,
    },

    #[error(
        "client certificate {} is not valid before {not_before} (now is {now}); check the system clock: a Raspberry Pi has no real-time clock and needs time synchronisation after boot",
        path.display()
    )]
    NotYetValid {
        path: PathBuf,
        not_before: String,
        now: String,
    },
}

impl TlsError {
    /// The sysexits code: 66 for a missing file, 77 for permissions, 78 for
    /// anything invalid or expired.
    pub fn exit_code(&self) -> i32 {
        match self {
            TlsError::Missing { .. } => 66,
            TlsError::Read { source, .. } => io_exit_code(source),
            TlsError::PrivateKey(e) => match e {
                _ if e.is_permission() => 77,
                SecretFileError::Read { source, .. } => io_exit_code(source),
                _ => 78,
            },
            TlsError::Token(e) => e.exit_code(),
            TlsError::NotConfigured { .. }
            | TlsError::Invalid { .. }
            | TlsError::KeyMismatch { .. }
            | TlsError::Expired { .. }
            | TlsError::NotYetValid { .. } => 78,
        }
    }
}

fn io_exit_code(e: &io::Error) -> i32 {
    match e.kind() {
        io::ErrorKind::PermissionDenied => 77,
        _ => 66,
    }
}

/// What `check-config` reports about the TLS material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsReport {
    /// The client certificate's subject, e.g. `CN=bike-pi-01`.
    pub client_cert_subject: String,
    /// When the client certificate expires, RFC 3339 UTC.
    pub not_after: String,
    /// Whole days until then.
    pub days_left: i64,
    /// How many CA certificates the CA file holds.
    pub ca_certs: usize,
    /// Things that still work but need attention soon (a certificate expiring
    /// within `mqtt.cert_warn_days`, an expired CA certificate).
    pub warnings: Vec<String>,
}

/// When the client certificate ends, and whether that is soon enough to
/// warn about (within `mqtt.cert_warn_days`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryReport {
    /// RFC 3339 UTC, e.g. `2027-01-01T00:00:00Z`.
    pub not_after: String,
    /// Whole days left (0 on the last day).
    pub days_left: i64,
    /// The text to log when the end is within `cert_warn_days`; it names the
    /// file, the date and says to renew.
    pub warning: Option<String>,
}

/// The three files, from the configuration (the key may be in a token).
struct Files<'a> {
    ca: &'a Path,
    cert: &'a Path,
    key: &'a KeyRef,
}

impl<'a> Files<'a> {
    fn of(mqtt: &'a Mqtt) -> Result<Self, TlsError> {
        Ok(Files {
            ca: mqtt.ca_file.as_deref().ok_or(TlsError::NotConfigured {
                key: "mqtt.ca_file",
            })?,
            cert: mqtt.cert_file.as_deref().ok_or(TlsError::NotConfigured {
                key: "mqtt.cert_file",
            })?,
            key: mqtt.key_file.as_ref().ok_or(TlsError::NotConfigured {
                key: "mqtt.key_file",
            })?,
        })
    }
}

/// The material read from the three files.
struct Material {
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: ClientKey,
}

/// The client's private key: read from its file, or staying in a token.
pub enum ClientKey {
    File(PrivateKeyDer<'static>),
    Token(Arc<TokenKey>),
}

impl ClientKey {
    /// The key as rustls signs with it: *ring*'s for a file key, the
    /// token's otherwise.
    pub fn signing_key(&self) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        match self {
            ClientKey::File(der) => rustls::crypto::ring::sign::any_supported_type(der),
            ClientKey::Token(token) => Ok(Arc::new(TokenSigningKey(token.clone()))),
        }
    }
}

fn read_material(f: &Files<'_>) -> Result<Material, TlsError> {
    let roots = read_certs(f.ca, "CA file", "mqtt.ca_file")?;
    let chain = read_certs(f.cert, "client certificate file", "mqtt.cert_file")?;
    let key = read_key(f.key)?;
    Ok(Material { roots, chain, key })
}

/// Builds the uplink's rustls configuration from the files named in `mqtt`:
/// `ca_file` (one or more PEM certificates the broker must chain to),
/// `cert_file` (the client certificate, then its chain) and `key_file`
/// (PKCS#8, SEC1 or PKCS#1 PEM, mode-checked); with `alpn` offered and the
/// broker verified against `server_name` when it is set.
///
/// Every call reads the three files again, so this is also the SIGHUP
/// reload: on an error the caller keeps the configuration it has. An
/// expired client certificate is refused ([`TlsError::Expired`], exit 78),
/// since no broker would accept it; one that is not valid *yet* is not,
/// because that usually means the clock is not set yet after boot, and the
/// broker judges by its own clock.
pub fn load_client_config(mqtt: &Mqtt) -> Result<Arc<ClientConfig>, TlsError> {
    let files = Files::of(mqtt)?;
    let extras = Extras::of(mqtt)?;
    let m = read_material(&files)?;
    let leaf = m.chain.first().cloned();
    let config = build(m.roots, m.chain, m.key, extras).map_err(|e| e.with_files(&files))?;
    if let Some(leaf) = leaf {
        let cert = parse_leaf(&leaf, files.cert)?;
        // Only expiry is fatal here; see above for "not yet valid".
        if let Err(e @ TlsError::Expired { .. }) =
            expiry_at(&cert, files.cert, mqtt.cert_warn_days, unix_now())
        {
            return Err(e);
        }
    }
    Ok(config)
}

/// How the client certificate in `mqtt.cert_file` stands today: the date it
/// ends, the days left, and a warning within `mqtt.cert_warn_days`. An
/// expired certificate is [`TlsError::Expired`]; one not valid yet is
/// [`TlsError::NotYetValid`] (the clock). Reads only the certificate file.
pub fn check_expiry(mqtt: &Mqtt) -> Result<ExpiryReport, TlsError> {
    check_expiry_at(mqtt, unix_now())
}

fn check_expiry_at(mqtt: &Mqtt, now: i64) -> Result<ExpiryReport, TlsError> {
    let path = mqtt.cert_file.as_deref().ok_or(TlsError::NotConfigured {
        key: "mqtt.cert_file",
    })?;
    let chain = read_certs(path, "client certificate file", "mqtt.cert_file")?;
    let cert = parse_leaf(&chain[0], path)?;
    expiry_at(&cert, path, mqtt.cert_warn_days, now)
}

/// Like [`check_expiry`], for the certificate that `config` (made by
/// [`load_client_config`] from `mqtt`) presents — the one in use, which is
/// not the one on disk when the files were replaced without a SIGHUP.
pub fn check_expiry_in_use(config: &ClientConfig, mqtt: &Mqtt) -> Result<ExpiryReport, TlsError> {
    check_expiry_in_use_at(config, mqtt, unix_now())
}

fn check_expiry_in_use_at(
    config: &ClientConfig,
    mqtt: &Mqtt,
    now: i64,
) -> Result<ExpiryReport, TlsError> {
    let path = mqtt
        .cert_file
        .as_deref()
        .unwrap_or(Path::new("(in memory)"));
    let leaf = leaf_in_use(config).ok_or_else(|| TlsError::Invalid {
        what: "the TLS client configuration".to_string(),
        problem: "presents no client certificate".to_string(),
    })?;
    let cert = parse_leaf(&leaf, path)?;
    expiry_at(&cert, path, mqtt.cert_warn_days, now)
}

/// Whole days until the client certificate in `mqtt.cert_file` expires,
/// negative once it has; `None` when it cannot be read (the error then
/// comes from [`check_expiry`] or [`load_client_config`]).
pub fn days_left(mqtt: &Mqtt) -> Option<i64> {
    Some((not_after(mqtt)? - unix_now()).div_euclid(DAY))
}

/// When the client certificate in `mqtt.cert_file` expires, in Unix
/// seconds; `None` when it cannot be read.
pub fn not_after(mqtt: &Mqtt) -> Option<i64> {
    let path = mqtt.cert_file.as_deref()?;
    let chain = read_certs(path, "client certificate file", "mqtt.cert_file").ok()?;
    let cert = parse_leaf(&chain[0], path).ok()?;
    Some(unix_seconds(cert.tbs_certificate().validity().not_after))
}

/// The leaf certificate `config` presents for client authentication.
fn leaf_in_use(config: &ClientConfig) -> Option<CertificateDer<'static>> {
    let schemes = config
        .crypto_provider()
        .signature_verification_algorithms
        .supported_schemes();
    let key = config.client_auth_cert_resolver.resolve(&[], &schemes)?;
    key.cert.first().cloned()
}

fn parse_leaf(leaf: &[u8], path: &Path) -> Result<Certificate, TlsError> {
    Certificate::from_der(leaf).map_err(|e| TlsError::Invalid {
        what: format!("client certificate file {}", path.display()),
        problem: format!("the first certificate cannot be parsed ({e})"),
    })
}

/// A certificate time in Unix seconds (X.509 times start in 1950).
fn unix_seconds(t: x509_cert::time::Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

/// A name as RFC 4514 writes it (`CN=bike-pi-01, O=Example`), the RDNs
/// in the certificate's order. The common attributes by their short names,
/// others by their OID: a table of every known name would add tens of
/// kilobytes to the binary for nothing an operator needs.
fn name_text(name: &x509_cert::name::Name) -> String {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::{Tag, Tagged};
    let short = |oid: &str| -> Option<&'static str> {
        Some(match oid {
            "2.5.4.3" => "CN",
            "2.5.4.6" => "C",
            "2.5.4.7" => "L",
            "2.5.4.8" => "ST",
            "2.5.4.10" => "O",
            "2.5.4.11" => "OU",
            "2.5.4.5" => "serialNumber",
            "0.9.2342.19200300.100.1.25" => "DC",
            "1.2.840.113549.1.9.1" => "emailAddress",
            _ => return None,
        })
    };
    name.iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.oid.to_string();
                    let key = short(&oid).map_or(oid.clone(), str::to_string);
                    let value = match atv.value.tag() {
                        Tag::Utf8String => Utf8StringRef::try_from(&atv.value)
                            .ok()
                            .map(|s| s.as_str().to_string()),
                        Tag::PrintableString => PrintableStringRef::try_from(&atv.value)
                            .ok()
                            .map(|s| s.as_str().to_string()),
                        Tag::Ia5String => Ia5StringRef::try_from(&atv.value)
                            .ok()
                            .map(|s| s.as_str().to_string()),
                        _ => None,
                    };
                    format!("{key}={}", value.unwrap_or_else(|| "#…".into()))
                })
                .collect::<Vec<_>>()
                .join(" + ")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The client certificate's standing at `now`.
fn expiry_at(
    cert: &Certificate,
    path: &Path,
    warn_days: u32,
    now: i64,
) -> Result<ExpiryReport, TlsError> {
    let validity = cert.tbs_certificate().validity();
    let not_before = unix_seconds(validity.not_before);
    let not_after = unix_seconds(validity.not_after);
    if now > not_after {
        return Err(TlsError::Expired {
            path: path.to_path_buf(),
            not_before: fmt_time(not_before),
            not_after: fmt_time(not_after),
            now: fmt_time(now),
        });
    }
    if now < not_before {
        return Err(TlsError::NotYetValid {
            path: path.to_path_buf(),
            not_before: fmt_time(not_before),
            now: fmt_time(now),
        });
    }
    let days_left = (not_after - now).div_euclid(DAY);
    let warning = (days_left < i64::from(warn_days)).then(|| {
        format!(
            "client certificate {} expires on {} ({days_left} days left); renew it before then, then send SIGHUP",
            path.display(),
            fmt_time(not_after)
        )
    });
    Ok(ExpiryReport {
        not_after: fmt_time(not_after),
        days_left,
        warning,
    })
}

/// Builds a rustls client configuration from material already in memory:
/// the ring provider, TLS 1.2 and 1.3, server certificates verified against
/// `roots`, and `chain` with `key` presented for client authentication.
pub fn client_config(
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ClientConfig>, TlsError> {
    build(roots, chain, ClientKey::File(key), Extras::default()).map_err(BuildError::without_files)
}

/// Checks the TLS material for `check-config`: the files exist and parse,
/// the key is private (mode) and belongs to the client certificate, and the
/// certificate is valid now. Whether the client certificate chains to a CA
/// the broker trusts is for the broker to say; it is not checked here.
pub fn check(mqtt: &Mqtt) -> Result<TlsReport, TlsError> {
    check_at(mqtt, unix_now())
}

fn check_at(mqtt: &Mqtt, now: i64) -> Result<TlsReport, TlsError> {
    let files = Files::of(mqtt)?;
    let m = read_material(&files)?;
    let ca_certs = m.roots.len();
    let mut warnings = Vec::new();

    for (i, ca) in m.roots.iter().enumerate() {
        let what = || format!("CA certificate {} in {}", i + 1, files.ca.display());
        let c = Certificate::from_der(ca).map_err(|e| TlsError::Invalid {
            what: what(),
            problem: format!("cannot be parsed ({e})"),
        })?;
        let not_after = unix_seconds(c.tbs_certificate().validity().not_after);
        if not_after < now {
            warnings.push(format!(
                "{} ({}) expired on {}; a broker certificate issued under it will be refused",
                what(),
                name_text(c.tbs_certificate().subject()),
                fmt_time(not_after)
            ));
        }
    }

    let leaf = m.chain[0].clone();
    build(m.roots, m.chain, m.key, Extras::of(mqtt)?).map_err(|e| e.with_files(&files))?;
    let cert = parse_leaf(&leaf, files.cert)?;
    let expiry = expiry_at(&cert, files.cert, mqtt.cert_warn_days, now)?;
    warnings.extend(expiry.warning);
    Ok(TlsReport {
        client_cert_subject: name_text(cert.tbs_certificate().subject()),
        not_after: expiry.not_after,
        days_left: expiry.days_left,
        ca_certs,
        warnings,
    })
}

fn unix_now() -> i64 {
    match wall_now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// RFC 3339 in UTC, seconds precision.
fn fmt_time(ts: i64) -> String {
    match u64::try_from(ts) {
        Ok(secs) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
        }
        // Certificates cannot say a time before 1950; nothing here makes one.
        Err(_) => format!("{} s before 1970", ts.unsigned_abs()),
    }
}

// ---------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------

fn must_exist(path: &Path, what: &'static str, key: &'static str) -> Result<(), TlsError> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(TlsError::Missing {
            what,
            key,
            path: path.to_path_buf(),
        }),
        Err(source) => Err(TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_certs(
    path: &Path,
    what: &'static str,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    must_exist(path, what, key)?;
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |problem: String| TlsError::Invalid {
        what: format!("{what} {}", path.display()),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(invalid(
            "holds no certificate; expected PEM blocks starting with -----BEGIN CERTIFICATE-----"
                .to_string(),
        ));
    }
    Ok(certs)
}

/// The key `mqtt.key_file` names: a file's (mode-checked), or a key in a
/// token, which is opened (logged in to) here.
pub fn read_key(key: &KeyRef) -> Result<ClientKey, TlsError> {
    match key {
        KeyRef::File(path) => read_key_file(path).map(ClientKey::File),
        KeyRef::Pkcs11(uri) => Ok(ClientKey::Token(Arc::new(TokenKey::open(uri)?))),
    }
}

fn read_key_file(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    must_exist(path, "client key file", "mqtt.key_file")?;
    let text = secret_file::read_private(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| TlsError::Invalid {
        what: format!("client key file {}", path.display()),
        problem: match e {
            pem::Error::NoItemsFound => "holds no private key; expected a PEM block starting with -----BEGIN PRIVATE KEY----- (PKCS#8), -----BEGIN EC PRIVATE KEY----- (SEC1) or -----BEGIN RSA PRIVATE KEY----- (PKCS#1); an encrypted key must be decrypted first".to_string(),
            other => pem_problem(&other),
        },
    })
}

/// Describes a PEM error without echoing file contents (the file may be a
/// private key).
fn pem_problem(e: &pem::Error) -> String {
    let what = match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no -----END ...----- line",
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN ...----- line is malformed",
        pem::Error::Base64Decode(_) => "the base64 text inside a PEM block is corrupt",
        pem::Error::NoItemsFound => "holds no PEM block of the expected kind",
        pem::Error::SectionTooLarge => "a PEM block is too large",
        _ => "cannot be read as PEM",
    };
    format!("is not valid PEM: {what}")
}

// ---------------------------------------------------------------------------
// Building the rustls configuration
// ---------------------------------------------------------------------------

/// What a client configuration holds beyond the three files.
#[derive(Default)]
struct Extras {
    /// `mqtt.server_name`: the name the broker's certificate is checked
    /// against instead of the one the connection is opened with.
    server_name: Option<ServerName<'static>>,
    /// `mqtt.alpn`, as rustls wants it.
    alpn: Vec<Vec<u8>>,
}

impl Extras {
    fn of(mqtt: &Mqtt) -> Result<Extras, TlsError> {
        let server_name = match &mqtt.server_name {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                TlsError::Invalid {
                    what: format!("mqtt.server_name \"{name}\""),
                    problem: "is neither a DNS name nor an IP address, so the broker's certificate cannot be checked against it".to_string(),
                }
            })?),
        };
        let mut alpn = Vec::with_capacity(mqtt.alpn.len());
        for (i, name) in mqtt.alpn.iter().enumerate() {
            if name.is_empty() || name.len() > 255 {
                return Err(TlsError::Invalid {
                    what: format!("mqtt.alpn[{i}]"),
                    problem: "an ALPN protocol name is 1 to 255 bytes".to_string(),
                });
            }
            alpn.push(name.as_bytes().to_vec());
        }
        Ok(Extras { server_name, alpn })
    }
}

/// Verifies the broker's certificate as rustls's WebPKI verifier does —
/// chain to the CA file, validity dates, key usage, signature schemes — but
/// against a configured name (`mqtt.server_name`) rather than the one the
/// TLS session was opened with (rumqttc always uses `mqtt.host`). This is
/// what lets a gateway connect to an IP address or through a tunnel and
/// still insist on the broker's real DNS name; it never weakens a check.
#[derive(Debug)]
struct NamedServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl NamedServerVerifier {
    fn new(
        roots: RootCertStore,
        provider: Arc<CryptoProvider>,
        name: ServerName<'static>,
    ) -> Result<Self, BuildError> {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| BuildError::Verifier(e.to_string()))?;
        Ok(NamedServerVerifier { inner, name })
    }
}

impl ServerCertVerifier for NamedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _opened_with: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Why [`build`] failed, before we know whether file names are available.
enum BuildError {
    NoRoots,
    BadRoot { index: usize, err: rustls::Error },
    NoChain,
    Mismatch,
    BadKey(rustls::Error),
    Verifier(String),
    Other(rustls::Error),
}

impl BuildError {
    fn with_files(self, f: &Files<'_>) -> TlsError {
        let key = match f.key {
            KeyRef::File(path) => format!("client key file {}", path.display()),
            uri => format!("client key {uri}"),
        };
        self.describe(
            &format!("CA file {}", f.ca.display()),
            &format!("client certificate file {}", f.cert.display()),
            &key,
            f.cert.display().to_string(),
            f.key.to_string(),
        )
    }

    fn without_files(self) -> TlsError {
        self.describe(
            "CA certificates",
            "client certificate chain",
            "client private key",
            "given".to_string(),
            "given".to_string(),
        )
    }

    fn describe(
        self,
        ca: &str,
        chain: &str,
        key: &str,
        cert_name: String,
        key_name: String,
    ) -> TlsError {
        let invalid = |what: &str, problem: String| TlsError::Invalid {
            what: what.to_string(),
            problem,
        };
        match self {
            BuildError::NoRoots => invalid(ca, "holds no certificate".to_string()),
            BuildError::BadRoot { index, err } => invalid(
                ca,
                format!(
                    "certificate {} is not a usable CA certificate ({err})",
                    index + 1
                ),
            ),
            BuildError::NoChain => invalid(chain, "holds no certificate".to_string()),
            BuildError::Mismatch => TlsError::KeyMismatch {
                cert: cert_name,
                key: key_name,
            },
            BuildError::BadKey(err) => invalid(
                key,
                format!(
                    "is not a usable key ({err}); expected an ECDSA (P-256, P-384), Ed25519 or RSA key"
                ),
            ),
            BuildError::Verifier(err) => {
                invalid(ca, format!("cannot be used to verify the broker ({err})"))
            }
            BuildError::Other(err) => invalid(chain, format!("cannot be used for TLS ({err})")),
        }
    }
}

fn build(
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: ClientKey,
    extras: Extras,
) -> Result<Arc<ClientConfig>, BuildError> {
    if roots.is_empty() {
        return Err(BuildError::NoRoots);
    }
    if chain.is_empty() {
        return Err(BuildError::NoChain);
    }
    let mut store = RootCertStore::empty();
    for (index, root) in roots.into_iter().enumerate() {
        store
            .add(root)
            .map_err(|err| BuildError::BadRoot { index, err })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_details(provider.clone(), Arc::new(TlsTime))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(BuildError::Other)?;
    let builder = match extras.server_name {
        None => builder.with_root_certificates(store),
        Some(name) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NamedServerVerifier::new(
                store, provider, name,
            )?)),
    };
    let mut config = match key {
        ClientKey::File(key) => {
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| match err {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        BuildError::Mismatch
                    }
                    rustls::Error::General(_) => BuildError::BadKey(err),
                    other => BuildError::Other(other),
                })?
        }
        ClientKey::Token(token) => {
            let certified = CertifiedKey::new(chain, Arc::new(TokenSigningKey(token)));
            match certified.keys_match() {
                Ok(()) => {}
                Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                    return Err(BuildError::Mismatch);
                }
                Err(other) => return Err(BuildError::Other(other)),
            }
            builder.with_client_cert_resolver(Arc::new(OneCertificate(Arc::new(certified))))
        }
    };
    config.alpn_protocols = extras.alpn;
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------
// A client key in a token
// ---------------------------------------------------------------------------

/// The client certificate and its key in a token, always presented.
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for OneCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A P-256 key in a token, as rustls signs with it: ECDSA with SHA-256
/// (the only scheme a P-256 key has in TLS 1.3), the signature DER-encoded.
#[derive(Debug)]
pub struct TokenSigningKey(pub Arc<TokenKey>);

impl SigningKey for TokenSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(TokenSigner(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.0.public_spki()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct TokenSigner(Arc<TokenKey>);

impl Signer for TokenSigner {
    /// Signs in the token. A TPM takes tens of milliseconds, so on the
    /// gateway's runtime the worker thread is handed over meanwhile; a
    /// token that fails gives the [`TokenError`] inside the handshake's
    /// error, which the uplink logs as such.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(message).into();
        let signed = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.0.sign_digest(&digest))
            }
            _ => self.0.sign_digest(&digest),
        };
        let rs = signed.map_err(|e| rustls::Error::Other(rustls::OtherError(Arc::new(e))))?;
        let signature = p256::ecdsa::Signature::from_slice(&rs)
            .map_err(|_| rustls::Error::General("the token made an invalid signature".into()))?;
        Ok(signature.to_der().as_bytes().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber,
        date_time_ymd,
    };
    use rustls::{CertificateError, ClientConnection, ServerConfig, ServerConnection};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// A throwaway PKI in a temporary folder: a CA, and a client certificate
    /// with its key, written where an `Mqtt` configuration points.
    struct Pki {
        dir: tempfile::TempDir,
        ca: Issuer<'static, KeyPair>,
        ca_pem: String,
    }

    impl Pki {
        fn new() -> Pki {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            // each CA its own name, as real ones have: a CA with another's
            // name would be a forgery, which is not what these tests are about
            static CAS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = CAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            params
                .distinguished_name
                .push(DnType::CommonName, format!("sensorgate test CA {n}"));
            let key = KeyPair::generate().unwrap();
            let ca_pem = params.self_signed(&key).unwrap().pem();
            let pki = Pki {
                dir: tempfile::tempdir().unwrap(),
                ca: Issuer::new(params, key),
                ca_pem,
            };
            fs::write(pki.path("ca.pem"), &pki.ca_pem).unwrap();
            let key = KeyPair::generate().unwrap();
            pki.issue_client(&key, None);
            pki.write_key(&key.serialize_pem());
            pki
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Writes client.pem: a certificate for `key`, valid from/to the
        /// given dates (rcgen's defaults otherwise).
        fn issue_client(&self, key: &KeyPair, validity: Option<(i32, i32)>) {
            self.issue_client_serial(key, validity, None);
        }

        /// Like `issue_client`, with a chosen serial number.
        fn issue_client_serial(
            &self,
            key: &KeyPair,
            validity: Option<(i32, i32)>,
            serial: Option<u64>,
        ) {
            let mut params = CertificateParams::new(vec!["gw-test".to_string()]).unwrap();
            params.serial_number = serial.map(SerialNumber::from);
            params
                .distinguished_name
                .push(DnType::CommonName, "gw-test");
            if let Some((from, to)) = validity {
                params.not_before = date_time_ymd(from, 1, 1);
                params.not_after = date_time_ymd(to, 1, 1);
            } else {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2999, 1, 1);
            }
            let pem = params.signed_by(key, &self.ca).unwrap().pem();
            fs::write(self.path("client.pem"), pem).unwrap();
        }

        fn write_key(&self, pem: &str) {
            let p = self.path("client.key");
            fs::write(&p, pem).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        }

        fn mqtt(&self) -> Mqtt {
            Mqtt {
                host: "localhost".to_string(),
                port: 8883,
                client_id: None,
                topic: "sensorgate/{gateway}/{sensor}".to_string(),
                qos: 1,
                tls: true,
                ca_file: Some(self.path("ca.pem")),
                cert_file: Some(self.path("client.pem")),
                key_file: Some(self.path("client.key").into()),
                server_name: None,
                keepalive: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(10),
                reconnect_min: Duration::from_millis(500),
                reconnect_max: Duration::from_secs(30),
                max_inflight: 32,
                drain_timeout: Duration::from_secs(10),
                clean_session: true,
                username: None,
                password: None,
                alpn: Vec::new(),
                cert_warn_days: 30,
                max_packet: 128 * 1024,
                status_topic: "sensorgate/{gateway}/status".to_string(),
                protocol: 4,
            }
        }
    }

    /// The broker's side: a certificate for `names` issued by `ca` (valid
    /// 2020 to 2999 unless `validity` says otherwise), client certificates
    /// from `client_ca` required, `alpn` offered, TLS 1.3 and 1.2 unless
    /// `tls12_only`.
    struct Broker<'a> {
        ca: &'a Pki,
        client_ca: &'a Pki,
        names: &'a [&'a str],
        validity: Option<(i32, i32)>,
        alpn: &'a [&'a str],
        tls12_only: bool,
    }

    impl<'a> Broker<'a> {
        fn of(pki: &'a Pki, names: &'a [&'a str]) -> Broker<'a> {
            Broker {
                ca: pki,
                client_ca: pki,
                names,
                validity: None,
                alpn: &[],
                tls12_only: false,
            }
        }

        fn config(&self) -> Arc<ServerConfig> {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(
                self.names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            let (from, to) = self.validity.unwrap_or((2020, 2999));
            params.not_before = date_time_ymd(from, 1, 1);
            params.not_after = date_time_ymd(to, 1, 1);
            let cert = params.signed_by(&key, &self.ca.ca).unwrap();
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(self.client_ca.ca_pem.as_bytes()).unwrap())
                .unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider.clone(),
            )
            .build()
            .unwrap();
            let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12_only {
                &[&rustls::version::TLS12]
            } else {
                &[&rustls::version::TLS13, &rustls::version::TLS12]
            };
            let mut cfg = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
                )
                .unwrap();
            cfg.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            Arc::new(cfg)
        }
    }

    /// A whole TLS handshake in memory, the client opening the session with
    /// `name` as rumqttc does with `mqtt.host`; the first error on either
    /// side.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        name: &str,
    ) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut client = ClientConnection::new(client, name)?;
        let mut server = ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok((client, server));
            }
        }
        panic!("handshake did not finish");
    }

    /// The serial number of the client certificate `config` presents.
    fn serial_in_use(config: &ClientConfig) -> Vec<u8> {
        let leaf = leaf_in_use(config).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        cert.raw_serial().to_vec()
    }

    fn pem(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut s = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(line).unwrap());
            s.push('\n');
        }
        s + &format!("-----END {label}-----\n")
    }

    /// The private key inside a PKCS#8 PrivateKeyInfo (SEQUENCE { version,
    /// algorithm, OCTET STRING key }): PKCS#1 for RSA.
    fn pkcs8_inner(der: &[u8]) -> Vec<u8> {
        fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
            let tag = b[0];
            let (len, hdr) = if b[1] < 0x80 {
                (b[1] as usize, 2)
            } else {
                let n = (b[1] & 0x7f) as usize;
                let len = b[2..2 + n]
                    .iter()
                    .fold(0usize, |a, x| (a << 8) | *x as usize);
                (len, 2 + n)
            };
            (tag, &b[hdr..hdr + len], &b[hdr + len..])
        }
        let (_, seq, _) = tlv(der);
        let (_, _version, rest) = tlv(seq);
        let (_, _alg, rest) = tlv(rest);
        let (tag, key, _) = tlv(rest);
        assert_eq!(tag, 0x04);
        key.to_vec()
    }

    /// A test-only RSA key (protects nothing): ring cannot generate RSA keys,
    /// and PKCS#1 files are still what many CAs hand out.
    const TEST_RSA_PKCS8: &str = "
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC3aZxFv3Q/cUjo
zbk6wcWddLEVYdJhWZfcnpzj6jgipkYlNEkOqNzL8Z8pCmvzEDSoaBvO5nVdf0d4
EFtcYwf6ruTJ4oS6385CgCgmH1blLy9hBkLyt8ARu5uxrU18EMdhwu8e6uO6du8G
W+4xg1MjxF5blVbXXn1CMyeOZTyw2meCuagp5rqUWlga4wnxcM8De8tC2LrdXM/P
mG20IJgdqnU6OLhxELIXmFI90fa0aDFKBVemgNnT2WZD4OHt/eR2CHS1ggKgw+6l
lyU1UYAzp3Uj8wUe4oHiqpJ82PU8Z+M0TCpzsEvnV8/fzWM15JKAMLpiMOe8rxy2
aoKHU0InAgMBAAECggEABY/QS1Uo7fDo0xZvSCwuv+g/+R6u8IDKWB2p3ZzGowED
yNuzCMdvb/JzGcgqdIPIn6q4h9JOkM1BROTKFcfIVX5kNbMGxLFGDJeHoCWnJEAF
Ych80ztl5E5vbuM1zE398yWkIVM3dfoRTtIO1mAzGeHkh/EZYbfdzdobQvgoRPyX
9Yc/ZMkX8aZR7J/pRBGRZ2j71gKmNledZUtEycAFZGgprImKcupuw7+Vf03YWHb6
Gqi2TBPN+K11cFqEufCV2fmnd3gQeNEIRfxKeptD6so/mXVYzC0TwVVK2/hH7ute
ltgVRP+KeD6SVmrv2q/EwnuOem/XXh9CALkclfapgQKBgQDtu6ddFjzniLlHCLkl
vPQE0Z2+auNFDTtqnIK69NBUI75kv2V4poIfg8VsC2yLN9QJ3t7cFEi85X550od5
igQmMnCMn0YrwPImBROenF7cDpXr3K+fJSFYmNFU5ZxXWKD1SaMOyJRROZ+iMByi
y4JSo2r3CMtDlvlWg9+T9Y9S4QKBgQDFgXD7otgErC+BiMgBZ+gIVG0MB0zwv1If
F7CyL8taKdAk1BEgIS3qfg1OmFTOCKVXjoMxW4CWTKLJr8mYmDETNdSxlPaLRlW4
873yxeUBUIBEh0qqOTvjgNjJUnlYLLDWGeRvQmgMkZbed0bUeTQIcHDK6EFtGs8X
ho8OooW+BwKBgBUsanqa+W+xuLa/6yWWT7GCLeeAw58pz4nuSKJ4HXnw+QsmFNaL
FfnSlanK1q8LmOIMLJMzZ0sTsZEOFCzaAwaX5XhQ00IgXDDQsO+mg7hbwDSSoj2t
Y+vtKG/ER4lsBmHyXgh6CuO1Gyep21MQhxnvHh7EdL4fWzO+aRJXg51hAoGBAK/5
HMmX1hCTueAYFtvp0Htbfa1x88OtM2YwnWal3vF+v82QhZGy/k4n8YNNhoHsgiT4
/TtE49UGgyRgU6Z6M3+CPvfaWbDOAiLASUW9vMTnDOICCSyRwiJ58q2tpiBB8W1R
tI7NBBfuwBWHALzfINVEGbswJNspP8seQOgxNiiRAoGAJRkjxxQ/Q7OQy06+ZQWl
B2XUNYjV9SsWyUt+K9OZ9AjybKgGq4wJwlAMbIpVDgUkZD2vqpM8kNOPSsop5Ts1
YkHFsWJjPuqvrV4sg9qhuwJ7G5YOmQDuA1AG0fAMKSsUokR0oL+MJcNI+Do9LgLi
pBXWc63qlbXuWekbj2BIy08=
-----END PRIVATE KEY-----
";

    #[test]
    fn good_material_loads_and_checks() {
        let pki = Pki::new();
        let cfg = load_client_config(&pki.mqtt()).unwrap();
        assert!(cfg.client_auth_cert_resolver.has_certs());
        let report = check(&pki.mqtt()).unwrap();
        assert_eq!(report.ca_certs, 1);
        assert!(
            report.client_cert_subject.contains("CN=gw-test"),
            "{report:?}"
        );
        assert_eq!(report.not_after, "2999-01-01T00:00:00Z");
        assert!(report.days_left > 300 * 365);
        assert!(report.warnings.is_empty());

        // a CA file may hold several CAs (e.g. during a CA rotation)
        let other = Pki::new();
        fs::write(
            pki.path("ca.pem"),
            format!("{}{}", pki.ca_pem, other.ca_pem),
        )
        .unwrap();
        assert_eq!(check(&pki.mqtt()).unwrap().ca_certs, 2);
    }

    #[test]
    fn mutual_tls_handshake_succeeds_with_a_broker_that_requires_client_certificates() {
        let pki = Pki::new();
        let client_cfg = load_client_config(&pki.mqtt()).unwrap();
        let (client, server) = handshake(
            client_cfg,
            Broker::of(&pki, &["localhost"]).config(),
            "localhost",
        )
        .unwrap();
        let presented = server.peer_certificates().unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&presented[0]).unwrap();
        assert!(leaf.subject().to_string().contains("gw-test"));
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(client.alpn_protocol(), None);
    }

    #[test]
    fn tls_1_2_brokers_are_still_reached() {
        let pki = Pki::new();
        let broker = Broker {
            tls12_only: true,
            alpn: &["mqtt"],
            ..Broker::of(&pki, &["localhost"])
        };
        let mut m = pki.mqtt();
        m.alpn = vec!["mqtt".to_string()];
        let (client, server) = handshake(
            load_client_config(&m).unwrap(),
            broker.config(),
            "localhost",
        )
        .unwrap();
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(client.alpn_protocol(), Some(&b"mqtt"[..]));
        assert!(server.peer_certificates().is_some());
    }

    fn is_wrong_name(e: &rustls::Error) -> bool {
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        )
    }

    #[test]
    fn server_name_override_checks_the_broker_against_the_configured_name() {
        let pki = Pki::new();
        let broker = Broker::of(&pki, &["broker.test"]).config();
        let mut m = pki.mqtt();
        m.host = "192.0.2.7".to_string();

        // connecting to an address, checking the certificate's DNS name
        m.server_name = Some("broker.test".to_string());
        handshake(load_client_config(&m).unwrap(), broker.clone(), &m.host).unwrap();

        // without the override, the address is what the certificate must carry
        m.server_name = None;
        let e = handshake(load_client_config(&m).unwrap(), broker.clone(), &m.host).unwrap_err();
        assert!(is_wrong_name(&e), "{e:?}");

        // an override to another name is checked just as strictly
        m.server_name = Some("other.test".to_string());
        let e = handshake(load_client_config(&m).unwrap(), broker.clone(), &m.host).unwrap_err();
        assert!(is_wrong_name(&e), "{e:?}");

        // the opened-with name no longer counts, even when it would match
        m.host = "broker.test".to_string();
        let e = handshake(load_client_config(&m).unwrap(), broker, &m.host).unwrap_err();
        assert!(is_wrong_name(&e), "{e:?}");
    }

    #[test]
    fn server_name_override_keeps_every_other_check() {
        let pki = Pki::new();
        let mut m = pki.mqtt();
        m.host = "192.0.2.7".to_string();
        m.server_name = Some("broker.test".to_string());
        let client = load_client_config(&m).unwrap();

        // right name, another CA
        let stranger = Pki::new();
        let broker = Broker {
            client_ca: &pki,
            ..Broker::of(&stranger, &["broker.test"])
        };
        let e = handshake(client.clone(), broker.config(), &m.host).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{e:?}"
        );

        // right name and CA, expired
        let broker = Broker {
            validity: Some((2019, 2020)),
            ..Broker::of(&pki, &["broker.test"])
        };
        let e = handshake(client.clone(), broker.config(), &m.host).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            ),
            "{e:?}"
        );

        // and over TLS 1.2 (its own signature check) too
        let broker = Broker {
            tls12_only: true,
            ..Broker::of(&pki, &["broker.test"])
        };
        handshake(client, broker.config(), &m.host).unwrap();
    }

    #[test]
    fn a_bad_server_name_is_a_configuration_error() {
        let pki = Pki::new();
        let mut m = pki.mqtt();
        m.server_name = Some("not a name".to_string());
        let e = load_client_config(&m).unwrap_err();
        assert_eq!(e.exit_code(), 78);
        assert!(e.to_string().contains("mqtt.server_name"), "{e}");
    }

    #[test]
    fn alpn_is_offered_and_negotiated() {
        let pki = Pki::new();
        let broker = Broker {
            alpn: &["mqtt", "x-amzn-mqtt-ca"],
            ..Broker::of(&pki, &["localhost"])
        };
        let broker = broker.config();
        let mut m = pki.mqtt();
        m.alpn = vec!["x-amzn-mqtt-ca".to_string()];
        let cfg = load_client_config(&m).unwrap();
        assert_eq!(cfg.alpn_protocols, [b"x-amzn-mqtt-ca".to_vec()]);
        let (client, server) = handshake(cfg, broker.clone(), "localhost").unwrap();
        assert_eq!(client.alpn_protocol(), Some(&b"x-amzn-mqtt-ca"[..]));
        assert_eq!(server.alpn_protocol(), Some(&b"x-amzn-mqtt-ca"[..]));

        // nothing offered, nothing negotiated
        let (client, _) = handshake(
            load_client_config(&pki.mqtt()).unwrap(),
            broker,
            "localhost",
        )
        .unwrap();
        assert_eq!(client.alpn_protocol(), None);

        // a protocol the broker does not speak fails the handshake (rustls
        // servers answer no_application_protocol), it is not ignored
        let strict = Broker {
            alpn: &["mqtt"],
            ..Broker::of(&pki, &["localhost"])
        };
        handshake(
            load_client_config(&m).unwrap(),
            strict.config(),
            "localhost",
        )
        .unwrap_err();
    }

    #[test]
    fn rsa_client_certificates_authenticate_with_pkcs8_and_pkcs1_keys() {
        let rsa = KeyPair::from_pem(TEST_RSA_PKCS8.trim()).unwrap();
        let pkcs1 = pem("RSA PRIVATE KEY", &pkcs8_inner(&rsa.serialize_der()));
        for (format, key_pem) in [
            ("PKCS#8", TEST_RSA_PKCS8.trim().to_string()),
            ("PKCS#1", pkcs1),
        ] {
            for tls12_only in [false, true] {
                let pki = Pki::new();
                pki.issue_client(&rsa, None);
                pki.write_key(&key_pem);
                let client = load_client_config(&pki.mqtt()).unwrap();
                let broker = Broker {
                    tls12_only,
                    ..Broker::of(&pki, &["localhost"])
                };
                let (_, server) = handshake(client, broker.config(), "localhost")
                    .unwrap_or_else(|e| panic!("{format}, tls12_only {tls12_only}: {e}"));
                let presented = server.peer_certificates().unwrap();
                let (_, leaf) = x509_parser::parse_x509_certificate(&presented[0]).unwrap();
                assert_eq!(
                    leaf.public_key().algorithm.algorithm,
                    x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION,
                    "{format}"
                );
            }
        }
    }

    #[test]
    fn reloading_reads_all_three_files_again() {
        let pki = Pki::new();
        let key = KeyPair::generate().unwrap();
        pki.issue_client_serial(&key, None, Some(1));
        pki.write_key(&key.serialize_pem());
        let before = load_client_config(&pki.mqtt()).unwrap();
        assert_eq!(serial_in_use(&before), [1]);

        // cron rotates the client certificate and its key, and the CA
        let new_ca = Pki::new();
        fs::write(pki.path("ca.pem"), &new_ca.ca_pem).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = {
            let mut p = CertificateParams::new(vec!["gw-test".to_string()]).unwrap();
            p.serial_number = Some(SerialNumber::from(2));
            p
        };
        let cert = params.signed_by(&key, &new_ca.ca).unwrap();
        fs::write(pki.path("client.pem"), cert.pem()).unwrap();
        pki.write_key(&key.serialize_pem());
        let after = load_client_config(&pki.mqtt()).unwrap();
        assert_eq!(serial_in_use(&after), [2]);

        // the new CA is the one trusted now: a broker under it is reached,
        // which the configuration from before could not do
        let broker = Broker {
            client_ca: &new_ca,
            ..Broker::of(&new_ca, &["localhost"])
        };
        handshake(after, broker.config(), "localhost").unwrap();
        let e = handshake(before, broker.config(), "localhost").unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{e:?}"
        );

        // a half-done rotation (the key of another certificate) is a clear
        // error, and the caller keeps what it has
        pki.write_key(&KeyPair::generate().unwrap().serialize_pem());
        let e = load_client_config(&pki.mqtt()).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
    }

    #[test]
    fn sec1_and_pkcs1_keys_load() {
        // SEC1 ("EC PRIVATE KEY"), as `openssl ecparam -genkey` writes it
        let pki = Pki::new();
        let key = KeyPair::generate().unwrap();
        pki.issue_client(&key, None);
        use p256::pkcs8::DecodePrivateKey as _;
        let sk = p256::SecretKey::from_pkcs8_der(&key.serialize_der()).unwrap();
        let sec1 = sk.to_sec1_pem(Default::default()).unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        pki.write_key(&sec1);
        load_client_config(&pki.mqtt()).unwrap();
        check(&pki.mqtt()).unwrap();

        // PKCS#1 ("RSA PRIVATE KEY")
        let rsa = KeyPair::from_pem(TEST_RSA_PKCS8.trim()).unwrap();
        pki.issue_client(&rsa, None);
        let pkcs1 = pem("RSA PRIVATE KEY", &pkcs8_inner(&rsa.serialize_der()));
        pki.write_key(&pkcs1);
        load_client_config(&pki.mqtt()).unwrap();
        check(&pki.mqtt()).unwrap();
    }

    #[test]
    fn a_missing_file_is_named_with_its_key() {
        let pki = Pki::new();
        fs::remove_file(pki.path("ca.pem")).unwrap();
        let e = load_client_config(&pki.mqtt()).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        let msg = e.to_string();
        assert!(
            msg.contains("ca.pem") && msg.contains("mqtt.ca_file"),
            "{msg}"
        );

        let pki = Pki::new();
        fs::remove_file(pki.path("client.key")).unwrap();
        let e = check(&pki.mqtt()).unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert!(e.to_string().contains("client.key"), "{e}");
    }

    #[test]
    fn unset_files_are_a_configuration_error() {
        let pki = Pki::new();
        let mut m = pki.mqtt();
        m.cert_file = None;
        let e = load_client_config(&m).unwrap_err();
        assert_eq!(e.exit_code(), 78);
        assert!(e.to_string().contains("mqtt.cert_file"), "{e}");
    }

    #[test]
    fn a_key_readable_by_others_is_refused_naming_chmod() {
        let pki = Pki::new();
        fs::set_permissions(pki.path("client.key"), fs::Permissions::from_mode(0o644)).unwrap();
        for e in [
            load_client_config(&pki.mqtt()).unwrap_err(),
            check(&pki.mqtt()).unwrap_err(),
        ] {
            assert_eq!(e.exit_code(), 77);
            let msg = e.to_string();
            assert!(
                msg.contains("client.key") && msg.contains("chmod 600"),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let pki = Pki::new();
        pki.write_key(&KeyPair::generate().unwrap().serialize_pem());
        let e = load_client_config(&pki.mqtt()).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert_eq!(e.exit_code(), 78);
        let msg = e.to_string();
        assert!(
            msg.contains("client.key") && msg.contains("client.pem"),
            "{msg}"
        );
        assert!(matches!(
            check(&pki.mqtt()),
            Err(TlsError::KeyMismatch { .. })
        ));

        // the same check for material given in memory
        let m = pki.mqtt();
        let e = client_config(
            CertificateDer::pem_file_iter(m.ca_file.unwrap())
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            CertificateDer::pem_file_iter(m.cert_file.unwrap())
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            KeyPair::generate()
                .unwrap()
                .serialize_der()
                .try_into()
                .unwrap(),
        )
        .unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
    }

    #[test]
    fn an_expired_certificate_is_refused_with_dates() {
        let pki = Pki::new();
        let key = KeyPair::generate().unwrap();
        pki.issue_client(&key, Some((2019, 2020)));
        pki.write_key(&key.serialize_pem());
        let e = check(&pki.mqtt()).unwrap_err();
        assert!(matches!(e, TlsError::Expired { .. }), "{e}");
        assert_eq!(e.exit_code(), 78);
        let msg = e.to_string();
        assert!(
            msg.contains("client.pem")
                && msg.contains("expired on 2020-01-01T00:00:00Z")
                && msg.contains("2019-01-01T00:00:00Z")
                && msg.contains("renew"),
            "{msg}"
        );
    }

    #[test]
    fn a_certificate_not_yet_valid_points_at_the_clock() {
        let pki = Pki::new();
        let key = KeyPair::generate().unwrap();
        pki.issue_client(&key, Some((2900, 2999)));
        pki.write_key(&key.serialize_pem());
        let e = check(&pki.mqtt()).unwrap_err();
        assert!(matches!(e, TlsError::NotYetValid { .. }), "{e}");
        assert!(e.to_string().contains("system clock"), "{e}");
    }

    #[test]
    fn an_expired_certificate_is_refused_at_load_and_at_reload() {
        let pki = Pki::new();
        let key = KeyPair::generate().unwrap();
        pki.issue_client(&key, Some((2019, 2020)));
        pki.write_key(&key.serialize_pem());
        let e = load_client_config(&pki.mqtt()).unwrap_err();
        assert!(matches!(e, TlsError::Expired { .. }), "{e}");
        assert_eq!(e.exit_code(), 78);
        let msg = e.to_string();
        assert!(
            msg.contains("client.pem")
                && msg.contains("expired on 2020-01-01T00:00:00Z")
                && msg.contains("valid from 2019-01-01T00:00:00Z")
                && msg.contains("renew"),
            "{msg}"
        );
        assert!(matches!(
            check_expiry(&pki.mqtt()),
            Err(TlsError::Expired { .. })
        ));
        assert!(days_left(&pki.mqtt()).unwrap() < -365);

        // not valid *yet* is the clock's fault, not the certificate's: loaded
        pki.issue_client(&key, Some((2900, 2999)));
        load_client_config(&pki.mqtt()).unwrap();
        assert!(matches!(
            check_expiry(&pki.mqtt()),
            Err(TlsError::NotYetValid { .. })
        ));
    }

    #[test]
    fn expiry_is_reported_with_a_warning_within_cert_warn_days() {
        let pki = Pki::new();
        let end = 32503680000; // 3000-01-01T00:00:00Z
        let key = KeyPair::generate().unwrap();
        pki.issue_client(&key, Some((2020, 3000)));
        pki.write_key(&key.serialize_pem());
        let mut m = pki.mqtt();
        let config = load_client_config(&m).unwrap();

        let r = check_expiry_at(&m, end - 10 * DAY - 60).unwrap();
        assert_eq!(r.not_after, "3000-01-01T00:00:00Z");
        assert_eq!(r.days_left, 10);
        let w = r.warning.unwrap();
        assert!(
            w.contains("client.pem") && w.contains("10 days left") && w.contains("renew"),
            "{w}"
        );
        assert_eq!(
            check_expiry_in_use_at(&config, &m, end - 10 * DAY - 60).unwrap(),
            check_expiry_at(&m, end - 10 * DAY - 60).unwrap()
        );
        assert_eq!(check_expiry_at(&m, end - 30 * DAY).unwrap().warning, None);
        assert!(matches!(
            check_expiry_at(&m, end + 1),
            Err(TlsError::Expired { .. })
        ));

        m.cert_warn_days = 5;
        assert_eq!(
            check_expiry_at(&m, end - 10 * DAY - 60).unwrap().warning,
            None
        );
        assert!(
            check_expiry_at(&m, end - 4 * DAY)
                .unwrap()
                .warning
                .is_some()
        );
        m.cert_warn_days = 0;
        assert_eq!(check_expiry_at(&m, end - 60).unwrap().warning, None);

        // today, with the default certificate: far away
        let pki = Pki::new();
        let r = check_expiry(&pki.mqtt()).unwrap();
        assert_eq!(r.not_after, "2999-01-01T00:00:00Z");
        assert!(r.warning.is_none());
        assert_eq!(days_left(&pki.mqtt()), Some(r.days_left));
    }

    #[test]
    fn the_expiry_in_use_is_that_of_the_loaded_certificate() {
        // the files were replaced but not reloaded: the certificate in use
        // is the one that matters
        let pki = Pki::new();
        let key = KeyPair::generate().unwrap();
        pki.issue_client(&key, Some((2020, 2998)));
        pki.write_key(&key.serialize_pem());
        let config = load_client_config(&pki.mqtt()).unwrap();
        pki.issue_client(&key, Some((2020, 2999)));
        let in_use = check_expiry_in_use(&config, &pki.mqtt()).unwrap();
        assert_eq!(in_use.not_after, "2998-01-01T00:00:00Z");
        assert_eq!(
            check_expiry(&pki.mqtt()).unwrap().not_after,
            "2999-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_certificate_expiring_soon_is_a_warning() {
        let pki = Pki::new();
        let end = 32503680000; // 3000-01-01T00:00:00Z
        let key = KeyPair::generate().unwrap();
        pki.issue_client(&key, Some((2020, 3000)));
        pki.write_key(&key.serialize_pem());
        let r = check_at(&pki.mqtt(), end - 10 * DAY - 60).unwrap();
        assert_eq!(r.days_left, 10);
        assert_eq!(r.warnings.len(), 1, "{r:?}");
        assert!(r.warnings[0].contains("10 days left"), "{r:?}");
        let r = check_at(&pki.mqtt(), end - 31 * DAY).unwrap();
        assert!(r.warnings.is_empty(), "{r:?}");
        let mut m = pki.mqtt();
        m.cert_warn_days = 5;
        let r = check_at(&m, end - 10 * DAY - 60).unwrap();
        assert!(r.warnings.is_empty(), "{r:?}");
    }

    #[test]
    fn garbage_pem_is_refused_with_what_was_expected() {
        let cases: [(&str, &str, &str); 6] = [
            ("client.pem", "hello\n", "holds no certificate"),
            (
                "client.pem",
                "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
                "not valid PEM",
            ),
            (
                "client.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n",
                "not valid PEM",
            ),
            (
                "ca.pem",
                &pem("CERTIFICATE", b"not a certificate"),
                "not a usable CA certificate",
            ),
            ("client.key", "hello\n", "holds no private key"),
            (
                "client.key",
                &pem("PRIVATE KEY", b"not a key"),
                "not a usable key",
            ),
        ];
        for (file, text, expect) in cases {
            let pki = Pki::new();
            if file == "client.key" {
                pki.write_key(text);
            } else {
                fs::write(pki.path(file), text).unwrap();
            }
            let e = load_client_config(&pki.mqtt()).unwrap_err();
            assert_eq!(e.exit_code(), 78, "{e}");
            let msg = e.to_string();
            assert!(msg.contains(file) && msg.contains(expect), "{file}: {msg}");
        }
    }

    #[test]
    fn pem_errors_do_not_echo_key_material() {
        let pki = Pki::new();
        pki.write_key(
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0c2VjcmV0c2VjcmV0@@@\n-----END PRIVATE KEY-----\n",
        );
        let msg = load_client_config(&pki.mqtt()).unwrap_err().to_string();
        assert!(!msg.contains("c2VjcmV0"), "{msg}");
    }
}
