//! A throwaway certificate authority for the demo and the integration tests.
//!
//! Mutual TLS is not optional in sensorgate (no plaintext MQTT unless the
//! configuration says so), so a machine with no broker and no certificates
//! still needs a CA, a broker identity and a client identity before anything
//! can be shown working. This module makes them in memory with rcgen: a CA
//! that signs a server identity (with the loopback names as SANs) and client
//! identities (with the clientAuth extended key usage), all ECDSA P-256.
//!
//! Nothing here is meant for production: the CA key lives only in memory and
//! is gone when the [`Pki`] is dropped, and certificates are valid for a few
//! weeks only.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// How far back a certificate's validity starts, so that a clock a little
/// behind on the other side of the connection does not reject it.
const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// How long the throwaway certificates stay valid.
const LIFETIME: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// What went wrong while making or writing throwaway certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot generate the {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "cannot create the certificate folder {path}: {source}; check that its parent exists and is writable"
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot write {path}: {source}; check that the folder is writable and the disk not full"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the {what} is not valid PEM: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {what} holds no certificate; pass the PEM text of at least one certificate")]
    NoCertificate { what: &'static str },
    #[error("cannot build the TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate and its private key, both as PEM text.
///
/// `Debug` shows the certificate only: the key never reaches a log line, and
/// it is wiped from memory when the identity is dropped.
#[derive(Clone)]
pub struct Identity {
    /// The certificate (one `CERTIFICATE` block, signed by the [`Pki`]'s CA).
    pub cert_pem: String,
    /// The PKCS#8 private key (`PRIVATE KEY` block).
    pub key_pem: Zeroizing<String>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// A throwaway certificate authority: signs server and client identities.
///
/// Certificates from two different `Pki`s never verify against each other,
/// which is what the "client from another CA is refused" tests rely on.
pub struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `CertifiedIssuer`'s own Debug already elides the key; say so
        // explicitly rather than rely on it.
        f.debug_struct("Pki")
            .field("ca_pem", &self.issuer.pem())
            .field("ca_key", &"[redacted]")
            .finish()
    }
}

impl Pki {
    /// Makes a new CA whose subject common name is `ca_name`.
    pub fn new(ca_name: &str) -> Result<Pki, PkiError> {
        let key = generate_key("CA key")?;
        let mut params = base_params(ca_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            CertifiedIssuer::self_signed(params, key).map_err(|source| PkiError::Generate {
                what: format!("CA certificate {ca_name:?}"),
                source,
            })?;
        Ok(Pki { issuer })
    }

    /// The CA certificate as PEM: what a client or broker trusts.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server identity valid for `hosts`: each entry that parses as an IP
    /// address becomes an IP SAN, every other one a DNS SAN. The first host
    /// is also the subject common name.
    pub fn server(&self, hosts: &[&str]) -> Result<Identity, PkiError> {
        let what = || format!("server certificate for {hosts:?}");
        let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(|source| PkiError::Generate {
            what: what(),
            source,
        })?;
        apply_validity(&mut params);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().copied().unwrap_or("sensorgate demo broker"),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        self.issue(params, &what())
    }

    /// A client identity with subject common name `common_name` and the
    /// clientAuth extended key usage. Brokers configured to use the
    /// certificate as the identity (mosquitto's `use_identity_as_username`)
    /// see `common_name` as the user name.
    ///
    /// The subject carries no organisation on purpose: rumqttd treats an
    /// organisation as a tenant id and rewrites client ids with it.
    pub fn client(&self, common_name: &str) -> Result<Identity, PkiError> {
        let mut params = base_params(common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        self.issue(params, &format!("client certificate {common_name:?}"))
    }

    /// A client certificate (PEM) for the key of a certificate request,
    /// as a CA does it: the request's subject and public key, this CA's
    /// choice of validity and usages (clientAuth). The request is parsed
    /// and its signature checked by the caller
    /// (`rcgen::CertificateSigningRequestParams::from_pem`).
    pub fn sign_request(
        &self,
        mut request: rcgen::CertificateSigningRequestParams,
    ) -> Result<String, PkiError> {
        let params = &mut request.params;
        apply_validity(params);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = request
            .signed_by(&self.issuer)
            .map_err(|source| PkiError::Generate {
                what: "client certificate from a request".to_owned(),
                source,
            })?;
        Ok(cert.pem())
    }

    fn issue(&self, params: CertificateParams, what: &str) -> Result<Identity, PkiError> {
        let key = generate_key(what)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Generate {
                what: what.to_owned(),
                source,
            })?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
        what: format!("key for the {what}"),
        source,
    })
}

fn base_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    apply_validity(&mut params);
    params
}

fn apply_validity(params: &mut CertificateParams) {
    // rcgen's default validity runs from 1975 to 4096; a throwaway
    // certificate should rather expire soon.
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - BACKDATE;
    params.not_after = now + LIFETIME;
}

/// Where [`write_files`] put the PEM files.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The folder holding all of them.
    pub dir: PathBuf,
    /// `ca.pem`: the CA certificate (mode 0644).
    pub ca: PathBuf,
    /// `server.pem`: the server certificate (mode 0644).
    pub server_cert: PathBuf,
    /// `server.key`: the server key (mode 0644, see [`write_files`]).
    pub server_key: PathBuf,
    /// `client.pem`: the client certificate (mode 0644).
    pub client_cert: PathBuf,
    /// `client.key`: the client key (mode 0600).
    pub client_key: PathBuf,
}

/// Writes the CA certificate of `pki`, a server identity and a client
/// identity as PEM files into `dir` (created if missing).
///
/// The client key gets mode 0600 because the gateway refuses a private key
/// that others can read. The server key gets mode 0644 on purpose: mosquitto,
/// started as root, drops to its own user before it reads its key, and these
/// are throwaway test keys. Existing files are overwritten and their modes
/// reset.
pub fn write_files(
    dir: &Path,
    pki: &Pki,
    server: &Identity,
    client: &Identity,
) -> Result<PkiFiles, PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let files = PkiFiles {
        dir: dir.to_owned(),
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    write_pem(&files.ca, &pki.ca_pem(), 0o644)?;
    write_pem(&files.server_cert, &server.cert_pem, 0o644)?;
    write_pem(&files.server_key, &server.key_pem, 0o644)?;
    write_pem(&files.client_cert, &client.cert_pem, 0o644)?;
    write_pem(&files.client_key, &client.key_pem, 0o600)?;
    Ok(files)
}

/// Writes `text` to `path` with exactly `mode`, also when the file already
/// existed with another mode. A private key is never readable by others,
/// not even for a moment, when `mode` is 0600: the file is created with it.
pub(crate) fn write_pem(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|source| PkiError::Write {
        path: path.to_owned(),
        source,
    })
}

/// A rustls client configuration (ring provider) that trusts only the CA in
/// `ca_pem` and presents `client` as its certificate: what the demo's
/// consumer and the tests' subscriber hand to rumqttc.
pub fn rustls_client_config(
    ca_pem: &str,
    client: &Identity,
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(ca_pem, "CA certificate")? {
        roots.add(cert)?;
    }
    let chain = parse_certs(&client.cert_pem, "client certificate")?;
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).map_err(|source| {
        PkiError::Pem {
            what: "client key",
            source,
        }
    })?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

fn parse_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PkiError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate { what });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn parse(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("one certificate")
            .to_vec()
    }

    #[test]
    fn server_certificate_names_the_loopback_hosts_and_is_for_servers() {
        let pki = Pki::new("test CA").unwrap();
        let server = pki.server(&["127.0.0.1", "localhost"]).unwrap();
        let der = parse(&server.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["[127, 0, 0, 1]", "localhost"]);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!cert.is_ca());
    }

    #[test]
    fn client_certificate_is_p256_for_clients_with_the_common_name() {
        let pki = Pki::new("test CA").unwrap();
        let client = pki.client("gateway-01").unwrap();
        let der = parse(&client.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "gateway-01");
        assert_eq!(cert.subject().iter_organization().count(), 0);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let issuer = cert.issuer().iter_common_name().next().unwrap();
        assert_eq!(issuer.as_str().unwrap(), "test CA");
        let now = x509_parser::time::ASN1Time::now();
        assert!(cert.validity().is_valid_at(now));
    }

    #[test]
    fn ca_is_a_ca() {
        let pki = Pki::new("test CA").unwrap();
        let der = parse(&pki.ca_pem());
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(cert.is_ca());
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
    }

    #[test]
    fn debug_never_shows_a_private_key() {
        let pki = Pki::new("test CA").unwrap();
        let client = pki.client("c").unwrap();
        let shown = format!("{client:?} {pki:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn client_key_is_written_private_and_the_rest_readable() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("test CA").unwrap();
        let server = pki.server(&["127.0.0.1"]).unwrap();
        let client = pki.client("c").unwrap();
        let files = write_files(&dir.path().join("tls"), &pki, &server, &client).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.client_key), 0o600);
        assert_eq!(mode(&files.server_key), 0o644);
        assert_eq!(mode(&files.ca), 0o644);
        assert_eq!(fs::read_to_string(&files.ca).unwrap(), pki.ca_pem());
        assert_eq!(
            fs::read_to_string(&files.client_key).unwrap(),
            *client.key_pem
        );
        // Rewriting an existing, too open key file tightens it again.
        fs::set_permissions(&files.client_key, fs::Permissions::from_mode(0o666)).unwrap();
        let files = write_files(&files.dir, &pki, &server, &client).unwrap();
        assert_eq!(mode(&files.client_key), 0o600);
    }

    #[test]
    fn client_config_builds_and_rejects_garbage() {
        let pki = Pki::new("test CA").unwrap();
        let client = pki.client("c").unwrap();
        rustls_client_config(&pki.ca_pem(), &client).unwrap();
        assert!(matches!(
            rustls_client_config("not pem", &client),
            Err(PkiError::NoCertificate { .. })
        ));
    }
}
