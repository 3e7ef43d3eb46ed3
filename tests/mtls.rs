//! The broker side of "fail closed on security": mosquitto, configured the
//! way the tests use it, lets in only clients with a certificate from the
//! test CA, and what such a client publishes reaches a subscriber.

mod support;

use std::time::Duration;

use sensorgate::demo::pki::{self, Pki};
use support::{Mosquitto, Subscriber, mqtt_options, publish_all, try_connect};

#[test]
fn client_without_certificate_is_refused_by_mosquitto() {
    let pki = Pki::new("test CA").unwrap();
    let broker = Mosquitto::start(&pki);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(pki.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let refused = try_connect(mqtt_options("anonymous", broker.port(), tls.into()));
    let why = refused.expect_err("a client without a certificate got in");
    // Refused in the TLS handshake, not later by MQTT.
    assert!(
        why.contains("AlertReceived(CertificateRequired)"),
        "{why}\n{}",
        broker.log()
    );
    // A client with a proper certificate still gets in.
    let ok = pki::rustls_client_config(&pki.ca_pem(), &pki.client("gw").unwrap()).unwrap();
    try_connect(mqtt_options("gw", broker.port(), ok)).unwrap();
}

#[test]
fn client_with_certificate_from_another_ca_is_refused_by_mosquitto() {
    let pki = Pki::new("test CA").unwrap();
    let broker = Mosquitto::start(&pki);
    let stranger = Pki::new("another CA").unwrap();
    // Trusts the broker, but presents a certificate the broker cannot verify.
    let tls =
        pki::rustls_client_config(&pki.ca_pem(), &stranger.client("intruder").unwrap()).unwrap();
    let refused = try_connect(mqtt_options("intruder", broker.port(), tls));
    let why = refused.expect_err("a certificate from another CA got in");
    assert!(
        why.contains("AlertReceived(UnknownCA)"),
        "{why}\n{}",
        broker.log()
    );
}

#[test]
fn subscriber_receives_what_an_mtls_client_publishes() {
    let pki = Pki::new("test CA").unwrap();
    let broker = Mosquitto::start(&pki);
    let ca = pki.ca_pem();
    let sub = Subscriber::connect(broker.port(), &ca, &pki.client("consumer").unwrap(), "sg/#");
    // A burst of 1000 QoS 1 messages and one full-size (256 KiB) payload.
    let mut payloads: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
    payloads.push(vec![0xa5; 256 * 1024]);
    let tls = pki::rustls_client_config(&ca, &pki.client("gateway").unwrap()).unwrap();
    publish_all(
        mqtt_options("gateway", broker.port(), tls),
        "sg/gw/bike",
        payloads.clone(),
        Duration::from_secs(30),
    );
    let got = sub.wait_for_count(payloads.len(), Duration::from_secs(30));
    assert_eq!(got.len(), payloads.len(), "{}", broker.log());
    assert!(got == payloads, "payloads differ or arrived out of order");
}

#[test]
fn a_persistent_subscriber_gets_what_was_published_while_the_broker_restarted() {
    let pki = Pki::new("test CA").unwrap();
    let mut broker = Mosquitto::start(&pki);
    let ca = pki.ca_pem();
    let sub = Subscriber::connect(broker.port(), &ca, &pki.client("consumer").unwrap(), "sg/#");
    let tls = pki::rustls_client_config(&ca, &pki.client("gateway").unwrap()).unwrap();
    publish_all(
        mqtt_options("gateway", broker.port(), tls.clone()),
        "sg/a",
        vec![b"before".to_vec()],
        Duration::from_secs(10),
    );
    assert_eq!(sub.wait_for_count(1, Duration::from_secs(10)).len(), 1);
    let port = broker.port();
    broker.restart();
    assert_eq!(broker.port(), port);
    // Published right after the restart, likely before the subscriber is
    // back: the restored session queues it.
    publish_all(
        mqtt_options("gateway", broker.port(), tls),
        "sg/a",
        vec![b"after".to_vec()],
        Duration::from_secs(10),
    );
    // QoS 1 is at least once: a PUBACK lost in the restart makes the
    // broker send "before" again, so compare what arrived, in order, once.
    let got = sub.wait_for(Duration::from_secs(15), |p| p.iter().any(|m| m == b"after"));
    let mut distinct: Vec<Vec<u8>> = Vec::new();
    for m in got {
        if !distinct.contains(&m) {
            distinct.push(m);
        }
    }
    assert_eq!(
        distinct,
        [b"before".to_vec(), b"after".to_vec()],
        "last error {:?}\n{}",
        sub.last_error(),
        broker.log()
    );
}

#[test]
fn mosquitto_is_stopped_and_killed_on_request() {
    let pki = Pki::new("test CA").unwrap();
    let mut broker = Mosquitto::start(&pki);
    assert!(broker.is_running());
    broker.stop();
    assert!(!broker.is_running());
    broker.restart();
    assert!(broker.is_running());
    broker.kill();
    assert!(!broker.is_running());
    assert!(
        broker.log().contains("mosquitto version"),
        "{}",
        broker.log()
    );
}
