//! An MQTT broker inside the process, with mutual TLS, for `sensorgate demo`.
//!
//! The demo must show the whole system on a machine with no broker
//! installed, and it must show it *as deployed*: over TLS, with the gateway
//! authenticated by its client certificate. rumqttd (with its
//! `verify-client-cert` feature) gives exactly that: a client without a
//! certificate, or with one from another CA, fails the TLS handshake.
//!
//! Limits of rumqttd 0.20 that matter here (read from its source):
//!
//! * It cannot be stopped: `Broker::start` blocks for good and has no
//!   shutdown. The broker lives until the process exits, which suits the
//!   demo (one broker per process) and tests (one per test).
//! * The TLS handshake runs inside the accept loop, without a time-out: a
//!   client that opens a TCP connection and then stays silent holds up every
//!   later connection. Harmless on loopback with well-behaved clients; this
//!   is why the readiness probe below speaks real mTLS and MQTT instead of
//!   only opening a socket.
//! * Only MQTT 3.1.1 (its `v4` listener) is served, which is what rumqttc's
//!   default client speaks.
//! * A client certificate whose subject has an organisation (O=) is treated
//!   as a tenant and the client id is rewritten: [`Pki::client`] never sets
//!   one.
//! * Messages are kept in memory segments per topic filter; when the
//!   segments are full the oldest is dropped even if a slow subscriber has
//!   not read it. The sizes below keep 256 MiB per filter, far more than a
//!   demo produces.
//!
//! It logs through `tracing` under targets starting with `rumqttd`; filter
//! them (for example `rumqttd=off` or `rumqttd=warn`) to keep the demo's
//! output readable. A refused client is logged there as `Tls accept error`.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings, TlsConfig};
use rustls::pki_types::ServerName;

use super::pki::{self, Pki, PkiError};

/// How long [`start`] waits for the broker to serve its first connection.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports [`start`] tries when the broker stops right away
/// (another process took the port between our probe and its bind).
const PORT_ATTEMPTS: usize = 3;
/// Largest MQTT packet the broker accepts: a sealed batch may reach 256 KiB.
const MAX_PACKET: usize = 1024 * 1024;
/// Segment sizes of the in-memory log, see the module docs.
const SEGMENT_SIZE: usize = 32 * 1024 * 1024;
const SEGMENT_COUNT: usize = 8;

/// What went wrong while starting the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot make the embedded broker's certificates: {0}")]
    Pki(#[from] PkiError),
    #[error("cannot create the embedded broker's folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot find a free port on 127.0.0.1 for the embedded broker: {0}")]
    FreePort(#[source] io::Error),
    #[error("cannot start a thread for the embedded broker: {0}")]
    Spawn(#[source] io::Error),
    #[error(
        "the embedded broker stopped right after starting, on {attempts} different ports; \
         its log lines (target `rumqttd`) say why"
    )]
    Exited { attempts: usize },
    #[error(
        "the embedded broker on 127.0.0.1:{port} did not accept an mTLS MQTT connection \
         within {waited:?} (last attempt: {last_error}); its log lines (target `rumqttd`) say why"
    )]
    NotReady {
        port: u16,
        waited: Duration,
        last_error: String,
    },
}

/// A running rumqttd on 127.0.0.1 that requires a client certificate from
/// the [`Pki`] it was started with. Lives until the process exits.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// The port on 127.0.0.1 it listens on (MQTT 3.1.1 over mutual TLS).
    pub port: u16,
    /// The CA certificate clients must trust (`ca.pem` in the folder).
    pub ca_file: PathBuf,
    _thread: JoinHandle<()>,
}

/// Starts a broker on a free port of 127.0.0.1 with mutual TLS: the server
/// certificate (for `127.0.0.1` and `localhost`) comes from `pki`, and every
/// client must present a certificate signed by `pki`'s CA.
///
/// Writes `ca.pem`, `broker.pem` and `broker.key` (mode 0600) into `dir`
/// (created if missing), because rumqttd reads its TLS material from files.
/// Returns once an mTLS client has completed an MQTT CONNECT, or fails after
/// 10 s.
pub fn start(dir: &Path, pki: &Pki) -> Result<EmbeddedBroker, BrokerError> {
    fs::create_dir_all(dir).map_err(|source| BrokerError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    let server = pki.server(&["127.0.0.1", "localhost"])?;
    let ca_file = dir.join("ca.pem");
    let cert_file = dir.join("broker.pem");
    let key_file = dir.join("broker.key");
    pki::write_pem(&ca_file, &pki.ca_pem(), 0o644)?;
    pki::write_pem(&cert_file, &server.cert_pem, 0o644)?;
    pki::write_pem(&key_file, &server.key_pem, 0o600)?;
    let tls = TlsConfig::Rustls {
        capath: Some(ca_file.to_string_lossy().into_owned()),
        certpath: cert_file.to_string_lossy().into_owned(),
        keypath: key_file.to_string_lossy().into_owned(),
    };
    let probe_identity = pki.client("sensorgate-demo-probe")?;
    let probe_config = pki::rustls_client_config(&pki.ca_pem(), &probe_identity)?;

    for _ in 0..PORT_ATTEMPTS {
        let port = free_port().map_err(BrokerError::FreePort)?;
        let config = broker_config(port, tls.clone());
        let thread = thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                // Returns only when its listener failed (logged by rumqttd).
                let _ = broker.start();
            })
            .map_err(BrokerError::Spawn)?;
        match wait_ready(port, &probe_config, &thread) {
            Ready::Yes => {
                return Ok(EmbeddedBroker {
                    port,
                    ca_file,
                    _thread: thread,
                });
            }
            Ready::Exited => continue,
            Ready::TimedOut(last_error) => {
                return Err(BrokerError::NotReady {
                    port,
                    waited: READY_TIMEOUT,
                    last_error,
                });
            }
        }
    }
    Err(BrokerError::Exited {
        attempts: PORT_ATTEMPTS,
    })
}

fn broker_config(port: u16, tls: TlsConfig) -> Config {
    let server = ServerSettings {
        name: "sensorgate-demo".into(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        tls: Some(tls),
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_PACKET,
            // Packets read from one connection per batch, not a limit on
            // what is in flight.
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            // Topics are created by the first publish or subscribe.
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_SIZE,
            max_segment_count: SEGMENT_COUNT,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

enum Ready {
    Yes,
    Exited,
    TimedOut(String),
}

fn wait_ready(port: u16, config: &Arc<rustls::ClientConfig>, broker: &JoinHandle<()>) -> Ready {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last_error = String::from("no attempt yet");
    while Instant::now() < deadline {
        if broker.is_finished() {
            return Ready::Exited;
        }
        match probe(port, config) {
            Ok(()) => return Ready::Yes,
            Err(e) => last_error = e.to_string(),
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ready::TimedOut(last_error)
}

/// Connects with mutual TLS, sends an MQTT 3.1.1 CONNECT, expects an
/// accepting CONNACK and disconnects cleanly: proof that the listener, its
/// certificates and the router all work. Every step has a time-out.
fn probe(port: u16, config: &Arc<rustls::ClientConfig>) -> io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.set_write_timeout(Some(Duration::from_secs(2)))?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut conn = rustls::ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(&connect_packet("sensorgate-demo-probe"))?;
    tls.flush()?;
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack)?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(io::Error::other(format!(
            "broker answered CONNECT with {connack:02x?}, not an accepting CONNACK"
        )));
    }
    // DISCONNECT, then TLS close_notify; errors here no longer matter.
    let _ = tls.write_all(&[0xe0, 0x00]);
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    Ok(())
}

/// An MQTT 3.1.1 CONNECT with a clean session and a 10 s keep-alive
/// (rumqttd refuses a keep-alive of 0).
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0a];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    assert!(body.len() < 128, "one-byte remaining length");
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
    use rumqttc::{TlsConfiguration, Transport};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn options(client_id: &str, port: u16, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        o.set_keep_alive(Duration::from_secs(10));
        o
    }

    /// Polls until CONNACK (Ok) or the first error (Err), at most 10 s.
    async fn connect(eventloop: &mut EventLoop) -> Result<(), ConnectionError> {
        let until_connack = async {
            loop {
                match eventloop.poll().await? {
                    Event::Incoming(Packet::ConnAck(_)) => return Ok(()),
                    _ => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), until_connack)
            .await
            .expect("the broker answers within 10 s")
    }

    fn started() -> (tempfile::TempDir, Pki, EmbeddedBroker) {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("demo test CA").unwrap();
        let broker = start(dir.path(), &pki).unwrap();
        (dir, pki, broker)
    }

    fn payload(i: u32) -> Vec<u8> {
        // Message 7 is a full-size sealed batch; the others are small.
        let len = if i == 7 { 256 * 1024 } else { 64 };
        let mut p = i.to_be_bytes().to_vec();
        p.resize(len, (i % 251) as u8);
        p
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_mtls_client_publishes_a_qos1_burst_and_a_subscriber_receives_all_of_it() {
        const COUNT: u32 = 1200;
        let (_dir, pki, broker) = started();
        assert!(broker.ca_file.exists());
        let ca = pki.ca_pem();

        let sub_tls = pki::rustls_client_config(&ca, &pki.client("consumer").unwrap()).unwrap();
        let mut sub_opts = options("consumer", broker.port, sub_tls);
        sub_opts.set_clean_session(true);
        let (sub, mut sub_loop) = AsyncClient::new(sub_opts, 10);
        connect(&mut sub_loop).await.unwrap();
        sub.subscribe("sensorgate/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        // Publish only once the broker has acknowledged the subscription.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !matches!(
                sub_loop.poll().await,
                Ok(Event::Incoming(Packet::SubAck(_)))
            ) {}
        })
        .await
        .expect("SUBACK within 10 s");
        let received = tokio::spawn(async move {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while got.len() < COUNT as usize {
                let event = tokio::time::timeout_at(deadline, sub_loop.poll())
                    .await
                    .expect("all messages arrive within 60 s")
                    .expect("subscriber connection stays up");
                if let Event::Incoming(Packet::Publish(p)) = event {
                    assert_eq!(p.topic, "sensorgate/gw/bike");
                    got.push(p.payload.to_vec());
                }
            }
            got
        });
        let pub_tls = pki::rustls_client_config(&ca, &pki.client("gateway").unwrap()).unwrap();
        let (publisher, mut pub_loop) =
            AsyncClient::new(options("gateway", broker.port, pub_tls), 10);
        connect(&mut pub_loop).await.unwrap();
        let acks = tokio::spawn(async move {
            let mut acks = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while acks < COUNT {
                let event = tokio::time::timeout_at(deadline, pub_loop.poll())
                    .await
                    .expect("all PUBACKs arrive within 60 s")
                    .expect("publisher connection stays up");
                if let Event::Incoming(Packet::PubAck(_)) = event {
                    acks += 1;
                }
            }
            acks
        });
        for i in 0..COUNT {
            publisher
                .publish("sensorgate/gw/bike", QoS::AtLeastOnce, false, payload(i))
                .await
                .unwrap();
        }
        assert_eq!(acks.await.unwrap(), COUNT);
        let got = received.await.unwrap();
        let want: Vec<Vec<u8>> = (0..COUNT).map(payload).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "payloads differ or arrived out of order");
    }

    #[tokio::test]
    async fn a_client_with_a_certificate_from_another_ca_is_refused() {
        let (_dir, pki, broker) = started();
        let stranger = Pki::new("another CA").unwrap();
        // Trusts the right server CA, but presents a foreign certificate.
        let tls = pki::rustls_client_config(&pki.ca_pem(), &stranger.client("intruder").unwrap())
            .unwrap();
        let (_client, mut eventloop) = AsyncClient::new(options("intruder", broker.port, tls), 10);
        let refused = connect(&mut eventloop).await;
        // The broker's TLS stack says why: it does not know the issuer.
        let why = format!("{refused:?}");
        assert!(why.contains("AlertReceived(UnknownCA)"), "{why}");
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let (_dir, pki, broker) = started();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
            .unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let (_client, mut eventloop) =
            AsyncClient::new(options("anonymous", broker.port, Arc::new(tls)), 10);
        let refused = connect(&mut eventloop).await;
        let why = format!("{refused:?}");
        assert!(why.contains("AlertReceived(CertificateRequired)"), "{why}");
        // The broker still serves well-behaved clients afterwards.
        probe(broker.port, &{
            pki::rustls_client_config(&pki.ca_pem(), &pki.client("ok").unwrap()).unwrap()
        })
        .unwrap();
    }

    #[test]
    fn connect_packet_is_mqtt_311() {
        let p = connect_packet("ab");
        assert_eq!(
            p,
            [
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 10, 0, 2, b'a', b'b'
            ]
        );
    }
}
