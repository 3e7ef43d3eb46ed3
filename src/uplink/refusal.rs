//! TLS failures of a connection attempt, in words an operator can act on.
//!
//! rumqttc reports a TLS failure wrapped several times: a client certificate
//! the broker rejects under TLS 1.3 arrives as an alert after the handshake,
//! while the client waits for CONNACK, so it reads `Mqtt state: Mqtt
//! serialization/deserialization error: IO: received fatal alert: UnknownCA`.
//! [`rustls_cause`] finds the typed rustls error under such a chain, and
//! [`explain`] says who refused what and which file to check: the broker's
//! alerts are about this gateway's client certificate (`mqtt.cert_file`),
//! this gateway's own refusals are about the broker's certificate, checked
//! against `mqtt.ca_file`.

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};

use rustls::{AlertDescription as Alert, CertificateError};

/// The TLS files of the configuration, named in the explanations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `mqtt.ca_file`: the CAs the broker's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// `mqtt.cert_file`: the certificate this gateway presents.
    pub cert_file: Option<PathBuf>,
}

impl TlsFiles {
    fn cert(&self) -> String {
        shown(self.cert_file.as_deref())
    }

    fn ca(&self) -> String {
        shown(self.ca_file.as_deref())
    }
}

fn shown(path: Option<&Path>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "(not set)".to_string(),
    }
}

/// The rustls error behind `e`, found through its sources and inside the
/// `io::Error`s that carry it (tokio-rustls and rumqttc wrap it in one, and
/// `io::Error::source` skips what it wraps, so that is looked at too).
pub fn rustls_cause<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(io::Error::get_ref)
            && let Some(tls) = rustls_cause(inner)
        {
            return Some(tls);
        }
        current = err.source();
    }
    None
}

/// What `e` means and what to do about it, naming the file to check, for
/// the TLS failures an operator can fix: an alert from the broker, or the
/// broker's certificate refused here. `None` for other TLS errors (their
/// own text is kept).
pub fn explain(e: &rustls::Error, files: &TlsFiles) -> Option<String> {
    match e {
        rustls::Error::AlertReceived(alert) => Some(broker_alert(*alert, files)),
        rustls::Error::InvalidCertificate(c) => Some(broker_certificate(c, e, files)),
        _ => None,
    }
}

/// A fatal alert the broker sent: its complaint, almost always about the
/// client certificate.
fn broker_alert(alert: Alert, files: &TlsFiles) -> String {
    let cert = files.cert();
    let rejected = |why: &str, todo: &str| {
        format!(
            "the broker rejected the client certificate {cert} (mqtt.cert_file){why} \
             (TLS alert {alert:?}); {todo}"
        )
    };
    match alert {
        Alert::UnknownCA => rejected(
            ": it does not trust the CA that issued it",
            "install a client certificate issued by a CA the broker trusts for clients \
             (and its key in mqtt.key_file), then send SIGHUP",
        ),
        Alert::BadCertificate => rejected(
            " as bad: it could not verify it",
            "check that the file holds the certificate issued with mqtt.key_file, followed by \
             any intermediate CA certificates, then send SIGHUP",
        ),
        Alert::CertificateExpired => rejected(
            " as expired or not yet valid",
            "renew it and send SIGHUP; if it is current, check the clocks of this gateway \
             and of the broker",
        ),
        Alert::CertificateRevoked => rejected(
            " as revoked",
            "install a newly issued certificate and key, then send SIGHUP",
        ),
        Alert::CertificateUnknown => rejected(
            "",
            "check that it is issued for client authentication by a CA the broker trusts, \
             then send SIGHUP",
        ),
        Alert::UnsupportedCertificate => rejected(
            ": it does not accept this kind of certificate",
            "check its key type and that its extended key usage allows client authentication",
        ),
        Alert::AccessDenied => format!(
            "the broker denied access to the holder of the client certificate {cert} \
             (mqtt.cert_file) (TLS alert {alert:?}): the certificate is valid but not allowed; \
             check the broker's access rules for its subject"
        ),
        Alert::CertificateRequired => format!(
            "the broker requires a client certificate and got none (TLS alert {alert:?}); \
             set mqtt.cert_file and mqtt.key_file"
        ),
        Alert::DecryptError => format!(
            "the broker could not verify this gateway's TLS signature (TLS alert {alert:?}); \
             check that mqtt.key_file is the key of the client certificate {cert} \
             (`sensorgate check-config` tells)"
        ),
        Alert::HandshakeFailure => format!(
            "the broker ended the TLS handshake (TLS alert {alert:?}): no TLS version, cipher \
             suite or signature scheme in common, or it does not accept the client certificate \
             {cert} (mqtt.cert_file); check the broker's TLS settings and its log, and the \
             certificate's key type"
        ),
        Alert::ProtocolVersion | Alert::InsufficientSecurity => format!(
            "the broker refused the TLS versions or cipher suites offered (TLS alert {alert:?}); \
             this gateway offers TLS 1.2 and 1.3: check the broker's TLS settings"
        ),
        Alert::NoApplicationProtocol => format!(
            "the broker speaks none of the ALPN protocols offered (TLS alert {alert:?}); \
             check mqtt.alpn"
        ),
        Alert::UnrecognisedName => format!(
            "the broker has no certificate for the name it was asked for (TLS alert \
             {alert:?}); check mqtt.host"
        ),
        _ => format!(
            "the broker ended the TLS handshake (TLS alert {alert:?}); check its log, the \
             client certificate {cert} (mqtt.cert_file) and the CA file {} (mqtt.ca_file)",
            files.ca()
        ),
    }
}

/// This gateway refused the broker's certificate.
fn broker_certificate(c: &CertificateError, e: &rustls::Error, files: &TlsFiles) -> String {
    let ca = files.ca();
    match c {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "the broker's certificate was not issued by a CA in {ca} (mqtt.ca_file) ({e}); \
             put the CA that issued the broker's certificate in that file, then send SIGHUP"
        ),
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => format!(
            "the broker's certificate is not valid now ({e}); it must be renewed on the broker, \
             unless this gateway's clock is wrong (a Raspberry Pi has no real-time clock and \
             needs time synchronisation after boot)"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the broker's certificate is not valid for the name connected to ({e}); \
                 connect by a name it carries (mqtt.host) or set mqtt.server_name"
            )
        }
        _ => format!("the broker's certificate is refused ({e}); check {ca} (mqtt.ca_file)"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The files a refusal names, as the tests of the uplink give them.
    pub(crate) fn files() -> TlsFiles {
        TlsFiles {
            ca_file: Some("/etc/sensorgate/tls/ca.pem".into()),
            cert_file: Some("/etc/sensorgate/tls/client.pem".into()),
        }
    }

    /// How rumqttc 0.25 reports an alert received while it waits for
    /// CONNACK: `MqttState(Deserialization(Io(io::Error(rustls::Error))))`.
    fn v4_alert(alert: Alert) -> rumqttc::ConnectionError {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(alert),
            )),
        ))
    }

    #[test]
    fn the_rustls_error_is_found_under_rumqttcs_wrapping() {
        let e = v4_alert(Alert::UnknownCA);
        assert!(
            e.to_string().contains("received fatal alert: UnknownCA"),
            "{e}"
        );
        assert_eq!(
            rustls_cause(&e),
            Some(&rustls::Error::AlertReceived(Alert::UnknownCA))
        );
        // During the handshake, as tokio-rustls reports it.
        let e = rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        )));
        assert_eq!(
            rustls_cause(&e),
            Some(&rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
        let plain = rumqttc::ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(rustls_cause(&plain), None);
    }

    #[test]
    fn a_client_certificate_from_another_ca_names_the_certificate_file() {
        assert_eq!(
            explain(&rustls::Error::AlertReceived(Alert::UnknownCA), &files()).unwrap(),
            "the broker rejected the client certificate /etc/sensorgate/tls/client.pem \
             (mqtt.cert_file): it does not trust the CA that issued it (TLS alert UnknownCA); \
             install a client certificate issued by a CA the broker trusts for clients (and its \
             key in mqtt.key_file), then send SIGHUP"
        );
    }

    #[test]
    fn each_certificate_alert_says_why_and_names_the_certificate_file() {
        for (alert, why) in [
            (Alert::BadCertificate, "as bad"),
            (Alert::CertificateExpired, "as expired"),
            (Alert::CertificateRevoked, "as revoked"),
            (
                Alert::CertificateUnknown,
                "issued for client authentication",
            ),
            (Alert::UnsupportedCertificate, "kind of certificate"),
            (Alert::AccessDenied, "valid but not allowed"),
            (Alert::HandshakeFailure, "ended the TLS handshake"),
            (Alert::DecryptError, "mqtt.key_file"),
        ] {
            let text = explain(&rustls::Error::AlertReceived(alert), &files()).unwrap();
            assert!(
                text.contains("/etc/sensorgate/tls/client.pem")
                    && text.contains(why)
                    && text.contains(&format!("(TLS alert {alert:?})")),
                "{alert:?}: {text}"
            );
        }
        let text = explain(
            &rustls::Error::AlertReceived(Alert::CertificateRequired),
            &files(),
        )
        .unwrap();
        assert!(
            text.contains("set mqtt.cert_file and mqtt.key_file"),
            "{text}"
        );
    }

    #[test]
    fn a_broker_certificate_refused_here_names_the_ca_file() {
        let text = explain(
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            &files(),
        )
        .unwrap();
        assert_eq!(
            text,
            "the broker's certificate was not issued by a CA in /etc/sensorgate/tls/ca.pem \
             (mqtt.ca_file) (invalid peer certificate: UnknownIssuer); put the CA that issued \
             the broker's certificate in that file, then send SIGHUP"
        );
        let text = explain(
            &rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            &files(),
        )
        .unwrap();
        assert!(text.contains("mqtt.server_name"), "{text}");
        assert_eq!(
            explain(&rustls::Error::HandshakeNotComplete, &files()),
            None
        );
    }
}
