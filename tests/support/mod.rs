//! Fixtures shared by the integration tests, written once: a real mosquitto
//! with mutual TLS, a subscriber that collects what reaches the broker, and
//! small helpers (free ports, temporary folders mosquitto can read, bounded
//! waiting). Pseudo-terminals and the simulated sensor live in
//! `sensorgate::demo::pty`, certificates in `sensorgate::demo::pki`.
//!
//! Every wait here is bounded in time, every loop in time or count, and
//! every spawned process is killed on drop, so a failing test fails with a
//! message instead of hanging CI.
//!
//! Each test crate uses a subset of this module.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rumqttc::{
    Client, ConnectReturnCode, Event, MqttOptions, Packet, QoS, RecvTimeoutError, TlsConfiguration,
    Transport,
};
use sensorgate::demo::pki::{self, Identity, Pki};

pub mod modbus;
pub mod postgres;
pub mod softhsm;

/// Largest MQTT packet test clients send or accept: a sealed batch may
/// reach 256 KiB.
pub const MAX_PACKET: usize = 1024 * 1024;

/// How long a broker or a subscription may take to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A port on 127.0.0.1 that was free a moment ago (the OS picked it).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port on 127.0.0.1")
        .port()
}

/// Calls `f` every `poll` until it returns true or `timeout` has passed;
/// returns whether it did. `f` runs at least once.
/// `GET path` over HTTP/1.0 on a loopback port: the status code and the
/// body, or `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

pub fn wait_until(timeout: Duration, poll: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(poll.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// A temporary folder with mode 0755, removed on drop.
///
/// `tempfile` creates folders with mode 0700; mosquitto started as root
/// drops to the `mosquitto` user and could not read its files there.
pub struct TempDir {
    inner: tempfile::TempDir,
}

impl TempDir {
    pub fn new() -> TempDir {
        let inner = tempfile::Builder::new()
            .prefix("sensorgate-test-")
            .tempdir()
            .expect("create a temporary folder");
        fs::set_permissions(inner.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 the temporary folder");
        TempDir { inner }
    }

    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// `path()/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.inner.path().join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

/// Writes `text` to `path` and sets `mode`.
pub fn write_file(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

fn mosquitto_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("mosquitto"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("mosquitto not installed: apt-get install -y mosquitto"))
}

/// A mosquitto 2 process of its own on 127.0.0.1, requiring client
/// certificates signed by the test's [`Pki`]. Killed on drop.
///
/// Configuration (see `mosquitto.conf` in [`Mosquitto::dir`]):
/// `require_certificate` with `use_identity_as_username` (the client
/// certificate's CN is the user name; no password file and no ACL file, so
/// an authenticated client may publish and subscribe anywhere) and
/// `allow_anonymous false`, so a client without a valid certificate never
/// gets in. Persistence is on, in the temporary folder, so that a graceful
/// [`Mosquitto::restart`] keeps a persistent subscriber's session and the
/// messages queued for it: without that, a test of "no gaps across a
/// broker restart" would see the broker's losses, not the gateway's.
/// Queues per client are unlimited, so a burst of QoS 1 messages to a slow
/// subscriber is not dropped by the broker.
pub struct Mosquitto {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    binary: PathBuf,
}

impl Mosquitto {
    /// Writes the configuration and certificates into a new temporary
    /// folder, starts mosquitto on a free port and waits (at most 10 s)
    /// until it accepts TCP connections. Panics, with mosquitto's own log,
    /// if it does not come up.
    pub fn start(pki: &Pki) -> Mosquitto {
        let binary = mosquitto_binary();
        let dir = TempDir::new();
        let server = pki
            .server(&["127.0.0.1", "localhost"])
            .expect("issue the broker's certificate");
        write_file(&dir.join("ca.pem"), &pki.ca_pem(), 0o644);
        write_file(&dir.join("server.pem"), &server.cert_pem, 0o644);
        // Readable by the mosquitto user; a throwaway test key.
        write_file(&dir.join("server.key"), &server.key_pem, 0o644);
        // mosquitto opens its log and database as the `mosquitto` user.
        write_file(&dir.join("mosquitto.log"), "", 0o666);
        let data = dir.join("data");
        fs::create_dir(&data).expect("create mosquitto's data folder");
        fs::set_permissions(&data, fs::Permissions::from_mode(0o777))
            .expect("chmod mosquitto's data folder");

        let mut broker = Mosquitto {
            port: 0,
            dir,
            child: None,
            binary,
        };
        let mut last_failure = String::new();
        // Another process may take the free port before mosquitto binds it.
        for _ in 0..3 {
            broker.port = free_port();
            broker.write_config();
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("mosquitto did not start on three free ports; last attempt: {last_failure}");
    }

    /// The port on 127.0.0.1 it listens on (MQTT over mutual TLS).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The folder holding its configuration, certificates, log and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate it trusts for clients and whose server
    /// certificate it presents: what a client's `ca_file` points to.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops it gracefully (SIGTERM, so it saves its database and closes
    /// connections), killing it if it has not exited within 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let terminated = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let exited = terminated
            && wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
                !matches!(child.try_wait(), Ok(None))
            });
        if !exited {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Kills it at once (SIGKILL): a broker crash. What it had not saved
    /// is lost, as with a real crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it gracefully (if running) and starts it again on the same
    /// port with the same configuration, certificates and database; waits
    /// (at most 10 s) until it accepts connections again.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(failure) = self.spawn_and_wait() {
            panic!(
                "mosquitto did not come back on port {}: {failure}",
                self.port
            );
        }
    }

    /// Its log file and anything it printed: for diagnostics in assertion
    /// messages.
    pub fn log(&self) -> String {
        let mut text = fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
        if let Ok(stderr) = fs::read_to_string(self.dir.join("mosquitto.stderr")) {
            if !stderr.trim().is_empty() {
                let _ = write!(text, "\n--- stderr ---\n{stderr}");
            }
        }
        text
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let conf = format!(
            "# Written by tests/support: one broker per test.\n\
             per_listener_settings false\n\
             set_tcp_nodelay true\n\
             allow_anonymous false\n\
             listener {port} 127.0.0.1\n\
             cafile {d}/ca.pem\n\
             certfile {d}/server.pem\n\
             keyfile {d}/server.key\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             persistence true\n\
             persistence_location {d}/data/\n\
             autosave_interval 0\n\
             max_queued_messages 0\n\
             max_inflight_messages 100\n\
             log_dest file {d}/mosquitto.log\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             log_timestamp_format %H:%M:%S\n\
             connection_messages true\n",
            port = self.port,
        );
        write_file(&self.dir.join("mosquitto.conf"), &conf, 0o644);
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        // Our own process must own the port, not some other listener that
        // took it: mosquitto logs each bind before it accepts. The log is
        // kept across restarts, so count the lines
        // (before spawning: it may bind at once).
        let bound = format!("listen socket on port {}.", self.port);
        let binds_before = self.log().matches(&bound).count();
        let stderr = fs::File::create(self.dir.join("mosquitto.stderr"))
            .map_err(|e| format!("create mosquitto.stderr: {e}"))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut exited = false;
        let listening = wait_until(READY_TIMEOUT, Duration::from_millis(25), || {
            if !self.is_running() {
                exited = true;
                return true;
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && self.log().matches(&bound).count() > binds_before
        });
        if listening && !exited {
            return Ok(());
        }
        let why = if exited {
            "it exited"
        } else {
            "it did not accept connections within 10 s"
        };
        self.kill();
        Err(format!(
            "mosquitto on port {}: {why}; its log:\n{}",
            self.port,
            self.log()
        ))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// MQTT options for a test client on 127.0.0.1:`port` with the given rustls
/// configuration: 1 MiB packets, 10 s keep-alive, clean session.
pub fn mqtt_options(client_id: &str, port: u16, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    options.set_keep_alive(Duration::from_secs(10));
    options
}

/// Connects with `options` and reports whether the broker accepted the
/// client (CONNACK success) or why not, within 10 s. Disconnects after.
pub fn try_connect(options: MqttOptions) -> Result<(), String> {
    let (client, mut connection) = Client::new(options, 10);
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        match connection.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                let _ = client.try_disconnect();
                return if ack.code == ConnectReturnCode::Success {
                    Ok(())
                } else {
                    Err(format!("CONNACK {:?}", ack.code))
                };
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => return Err(format!("{e:?}")),
            Err(RecvTimeoutError::Disconnected) => return Err("event loop gone".into()),
        }
    }
    Err("no CONNACK and no error within 10 s".into())
}

/// Publishes each payload to `topic` with QoS 1 and waits (at most
/// `timeout`) until the broker acknowledged all of them. Panics otherwise.
pub fn publish_all(options: MqttOptions, topic: &str, payloads: Vec<Vec<u8>>, timeout: Duration) {
    let count = payloads.len();
    let (client, mut connection) = Client::new(options, 10);
    let topic = topic.to_owned();
    // The request channel is bounded: publish from another thread while
    // this one drives the event loop.
    let sender = thread::spawn(move || {
        for p in payloads {
            if client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, p)
                .is_err()
            {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut acked = 0;
    while acked < count {
        assert!(
            Instant::now() < deadline,
            "only {acked} of {count} publishes acknowledged within {timeout:?}"
        );
        match connection.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                assert_eq!(ack.code, ConnectReturnCode::Success, "publisher refused")
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => panic!("publisher connection failed: {e:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("publisher event loop gone"),
        }
    }
    sender.join().expect("publisher thread");
}

#[derive(Default)]
struct Inbox {
    payloads: Vec<Vec<u8>>,
    /// Payloads of `.../status` topics (the gateway's retained status),
    /// kept apart from the sealed messages.
    statuses: Vec<Vec<u8>>,
    subscribed: bool,
    last_error: Option<String>,
}

/// An MQTT subscriber (QoS 1, mutual TLS) that collects the raw payloads of
/// everything published to its topic filter, in arrival order.
///
/// It keeps a persistent session (clean session off, a client id unique to
/// it) and reconnects and re-subscribes by itself, so it survives a
/// [`Mosquitto::restart`] without missing what the broker queued for it.
pub struct Subscriber {
    inbox: Arc<(Mutex<Inbox>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    client_id: String,
}

impl Subscriber {
    /// Connects to 127.0.0.1:`port`, trusting `ca_pem` and presenting
    /// `identity`, subscribes to `topic_filter` with QoS 1, and returns once
    /// the broker has acknowledged the subscription (panics after 10 s).
    pub fn connect(port: u16, ca_pem: &str, identity: &Identity, topic_filter: &str) -> Subscriber {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let client_id = format!(
            "test-sub-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tls = pki::rustls_client_config(ca_pem, identity).expect("subscriber TLS config");
        let mut options = mqtt_options(&client_id, port, tls);
        options.set_clean_session(false);
        let (client, mut connection) = Client::new(options, 10);

        let inbox = Arc::new((Mutex::new(Inbox::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let inbox = inbox.clone();
            let stop = stop.clone();
            let filter = topic_filter.to_owned();
            thread::Builder::new()
                .name(client_id.clone())
                .spawn(move || {
                    let (lock, changed) = &*inbox;
                    while !stop.load(Ordering::Relaxed) {
                        match connection.recv_timeout(Duration::from_millis(100)) {
                            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                                if ack.code == ConnectReturnCode::Success {
                                    // After a broker restart without the
                                    // session, this restores the
                                    // subscription; with it, it is harmless.
                                    let _ = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce);
                                } else {
                                    lock.lock().unwrap().last_error =
                                        Some(format!("CONNACK {:?}", ack.code));
                                }
                            }
                            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                                lock.lock().unwrap().subscribed = true;
                                changed.notify_all();
                            }
                            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                                let mut inbox = lock.lock().unwrap();
                                if p.topic.ends_with("/status") {
                                    inbox.statuses.push(p.payload.to_vec());
                                } else {
                                    inbox.payloads.push(p.payload.to_vec());
                                }
                                drop(inbox);
                                changed.notify_all();
                            }
                            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                            Ok(Err(e)) => {
                                lock.lock().unwrap().last_error = Some(format!("{e:?}"));
                                changed.notify_all();
                                // The next poll reconnects; don't spin while
                                // the broker is down.
                                thread::sleep(Duration::from_millis(100));
                            }
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    let _ = client.try_disconnect();
                    // Let the DISCONNECT go out, briefly.
                    let _ = connection.recv_timeout(Duration::from_millis(100));
                })
                .expect("spawn the subscriber thread")
        };
        let subscriber = Subscriber {
            inbox,
            stop,
            thread: Some(thread),
            client_id,
        };
        let (lock, changed) = &*subscriber.inbox;
        let (state, timeout) = changed
            .wait_timeout_while(lock.lock().unwrap(), READY_TIMEOUT, |s| !s.subscribed)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "subscriber {} not subscribed to {topic_filter:?} on port {port} within 10 s; last error: {:?}",
            subscriber.client_id,
            state.last_error
        );
        drop(state);
        subscriber
    }

    /// Waits until `done` holds for the payloads received so far, or
    /// `timeout` has passed; returns the payloads received by then either
    /// way (the caller asserts on them).
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Vec<u8>]) -> bool,
    ) -> Vec<Vec<u8>> {
        let (lock, changed) = &*self.inbox;
        let (state, _) = changed
            .wait_timeout_while(lock.lock().unwrap(), timeout, |s| !done(&s.payloads))
            .unwrap();
        state.payloads.clone()
    }

    /// Waits until at least `count` payloads arrived or `timeout` passed;
    /// returns all payloads received by then.
    pub fn wait_for_count(&self, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        self.wait_for(timeout, |p| p.len() >= count)
    }

    /// The payloads received so far.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.inbox.0.lock().unwrap().payloads.clone()
    }

    /// The status messages received so far (`.../status` topics), as JSON.
    pub fn statuses(&self) -> Vec<serde_json::Value> {
        self.inbox
            .0
            .lock()
            .unwrap()
            .statuses
            .iter()
            .map(|p| serde_json::from_slice(p).expect("a status message is JSON"))
            .collect()
    }

    /// The last connection error seen (for assertion messages).
    pub fn last_error(&self) -> Option<String> {
        self.inbox.0.lock().unwrap().last_error.clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // Bounded: the thread checks `stop` at least every ~200 ms.
            let _ = thread.join();
        }
    }
}

/// Everything a gateway needs around it: a CA, a mosquitto that requires
/// its certificates, the gateway's TLS identity and sealing keys, and the
/// recipient key a consumer opens messages with.
pub struct Rig {
    pub dir: TempDir,
    pub pki: Pki,
    pub broker: Mosquitto,
    pub tls: pki::PkiFiles,
    pub gateway_key: sensorgate::seal::KeygenOutput,
    pub recipient: sensorgate::seal::KeygenOutput,
}

/// The columns the simulated sensor writes, and those the rig encrypts.
pub const ENCRYPTED: [&str; 3] = ["heart_rate", "incline", "resistance"];

impl Rig {
    pub fn new() -> Rig {
        let dir = TempDir::new();
        let pki = Pki::new("sensorgate test CA").expect("test CA");
        let broker = Mosquitto::start(&pki);
        let server = pki
            .server(&["localhost", "127.0.0.1"])
            .expect("server cert");
        let client = pki.client("test-gateway").expect("gateway cert");
        let tls = pki::write_files(&dir.join("tls"), &pki, &server, &client).expect("tls files");
        let keys = dir.join("keys");
        let gateway_key = sensorgate::seal::keygen(&keys, "gateway").expect("gateway key");
        let recipient = sensorgate::seal::keygen(&keys, "recipient").expect("recipient key");
        Rig {
            dir,
            pki,
            broker,
            tls,
            gateway_key,
            recipient,
        }
    }

    /// Writes a gateway configuration for `sensors` (name, device) using
    /// the simulated sensor's columns; `extra` is appended verbatim (TOML
    /// tables such as `[buffer]`). Returns its path.
    pub fn gateway_config(&self, name: &str, sensors: &[(&str, &Path)], extra: &str) -> PathBuf {
        let columns = sensorgate::demo::pty::sim_columns()
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut tables = String::new();
        for (sensor, device) in sensors {
            let _ = write!(
                tables,
                "[[sensor]]\nname = {sensor:?}\ndevice = {device:?}\nbaud = 115200\ncolumns = [{columns}]\n\n"
            );
        }
        self.gateway_config_with(name, &tables, extra)
    }

    /// Writes a gateway configuration with the `[[sensor]]` tables given
    /// as TOML, and `extra` appended verbatim. Returns its path.
    ///
    /// The clock is trusted (`[time] synchronized_by = "trust"`) unless
    /// `extra` has a `[time]` table: test machines are often VMs whose
    /// kernel says unsynchronised (no NTP daemon), and tests about other
    /// things should not depend on it (tests/clock.rs is about time).
    pub fn gateway_config_with(&self, name: &str, sensor_tables: &str, extra: &str) -> PathBuf {
        let mut s = String::new();
        if !extra.contains("[time]") {
            s.push_str("[time]\nsynchronized_by = \"trust\"\n\n");
        }
        let _ = write!(
            s,
            "[gateway]\nid = \"test-gw\"\nstate_dir = {:?}\n\n{sensor_tables}\n",
            self.dir.join("state")
        );
        let _ = write!(
            s,
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\ndrain_timeout = \"10s\"\n\n\
             [batch]\nmax_records = 100\nlinger = \"50ms\"\n\n\
             [seal]\nsigning_key = {:?}\nrecipient_key = {:?}\nencrypt = {:?}\n\n\
             [log]\nlevel = \"debug,rumqttc=info\"\nstats_interval = \"1s\"\n\n{extra}\n",
            self.broker.port(),
            self.tls.ca,
            self.tls.client_cert,
            self.tls.client_key,
            self.gateway_key.key_path,
            self.recipient.pub_path,
            ENCRYPTED,
        );
        let path = self.dir.join(name);
        write_file(&path, &s, 0o644);
        path
    }

    /// A subscriber to every gateway topic, with its own certificate.
    pub fn subscriber(&self) -> Subscriber {
        let id = self.pki.client("test-consumer").expect("consumer cert");
        Subscriber::connect(self.broker.port(), &self.pki.ca_pem(), &id, "sensorgate/#")
    }

    /// An opener that trusts this rig's gateway key.
    pub fn opener(&self) -> sensorgate::seal::Opener {
        sensorgate::seal::Opener::new(
            vec![sensorgate::seal::load_public_key(&self.gateway_key.pub_path).expect("pub key")],
            Some(
                sensorgate::seal::load_recipient_key(&self.recipient.key_path).expect("recipient"),
            ),
        )
    }
}

impl Default for Rig {
    fn default() -> Self {
        Rig::new()
    }
}

/// What a consumer made of a list of payloads.
#[derive(Debug, Default)]
pub struct Opened {
    /// Per sensor, the records in the order first seen.
    pub records: std::collections::BTreeMap<String, Vec<sensorgate::seal::OpenedRecord>>,
    pub duplicates: u64,
    pub rejected: Vec<String>,
    /// Per sensor, the ranges declared in gap notices: (first, last, lost).
    pub declared: std::collections::BTreeMap<String, Vec<(u64, u64, u64)>>,
}

impl Opened {
    /// The sequence numbers received for `sensor`, sorted.
    pub fn seqs(&self, sensor: &str) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .records
            .get(sensor)
            .map(|r| r.iter().map(|r| r.seq).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    pub fn count(&self) -> usize {
        self.records.values().map(Vec::len).sum()
    }
}

/// Opens one payload into `opened`, counting duplicates and rejections.
fn open_into(opener: &mut sensorgate::seal::Opener, opened: &mut Opened, payload: &[u8]) {
    match opener.open(payload) {
        Ok(msg) => {
            if let Some(d) = &msg.declared {
                opened
                    .declared
                    .entry(msg.sensor.clone())
                    .or_default()
                    .push((msg.first_seq, msg.last_seq, d.lost));
            }
            opened.duplicates += msg.duplicates;
            opened
                .records
                .entry(msg.sensor.clone())
                .or_default()
                .extend(msg.records);
        }
        Err(e) => opened.rejected.push(e.to_string()),
    }
}

/// Opens every payload with a fresh opener, counting duplicates and
/// rejections.
pub fn open_all(rig: &Rig, payloads: &[Vec<u8>]) -> Opened {
    open_all_with(rig.opener(), payloads)
}

/// [`open_all`] with another opener (trusting other keys).
pub fn open_all_with(mut opener: sensorgate::seal::Opener, payloads: &[Vec<u8>]) -> Opened {
    let mut out = Opened::default();
    for p in payloads {
        open_into(&mut opener, &mut out, p);
    }
    out
}

/// Waits until the subscriber holds at least `records` distinct records
/// (bounded by `timeout`), and returns what was opened. Each payload is
/// opened once, as it arrives: thousands of records stay cheap.
pub fn wait_for_records(rig: &Rig, sub: &Subscriber, records: usize, timeout: Duration) -> Opened {
    wait_for_records_with(rig.opener(), sub, records, timeout)
}

/// [`wait_for_records`] with another opener (trusting other keys).
pub fn wait_for_records_with(
    mut opener: sensorgate::seal::Opener,
    sub: &Subscriber,
    records: usize,
    timeout: Duration,
) -> Opened {
    let mut opened = Opened::default();
    let mut consumed = 0;
    sub.wait_for(timeout, |payloads| {
        for p in &payloads[consumed..] {
            open_into(&mut opener, &mut opened, p);
        }
        consumed = payloads.len();
        opened.count() >= records
    });
    for p in &sub.received()[consumed..] {
        open_into(&mut opener, &mut opened, p);
    }
    opened
}

/// Maximal runs `(first, len)` of the numbers in `0..n` missing from `have`.
pub fn missing_runs(have: &std::collections::BTreeSet<u64>, n: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for i in (0..n).filter(|i| !have.contains(i)) {
        match runs.last_mut() {
            Some((first, len)) if *first + *len == i => *len += 1,
            _ => runs.push((i, 1)),
        }
    }
    runs
}

/// What to show of a gateway log in a failure: its warnings and errors,
/// then its last lines.
pub fn excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let notable: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .take(60)
        .collect();
    let tail = &lines[lines.len().saturating_sub(40)..];
    format!(
        "--- warnings and errors ({} shown) ---\n{}\n--- last {} lines ---\n{}",
        notable.len(),
        notable.join("\n"),
        tail.len(),
        tail.join("\n")
    )
}

pub fn assert_no_panic(log: &str) {
    assert!(
        !log.contains("panicked"),
        "the gateway panicked:\n{}",
        excerpt(log)
    );
}

/// Waits (bounded) for a simulated sensor's writer thread to finish and
/// returns its count; a writer still blocked means the gateway stopped
/// reading.
pub fn join_writer(
    writer: JoinHandle<std::io::Result<u64>>,
    timeout: Duration,
    gw: &GatewayProcess,
) -> u64 {
    assert!(
        wait_until(timeout, Duration::from_millis(50), || writer.is_finished()),
        "the simulated sensor was still blocked after {timeout:?}: the gateway stopped reading\n{}",
        excerpt(&gw.log())
    );
    writer.join().unwrap().unwrap()
}

/// The `sensorgate run` process, its stderr in a log file. Killed on drop.
pub struct GatewayProcess {
    child: Child,
    log: PathBuf,
}

/// The `sensorgate` binary that [`GatewayProcess`] runs: the one cargo
/// built with this test or bench, unless `SENSORGATE_GATEWAY_BIN` names
/// another. `scripts/bench` points it at the daemon as packaged (built
/// without the `demo` feature), so that size and memory are the shipped
/// binary's.
pub fn gateway_binary() -> PathBuf {
    std::env::var_os("SENSORGATE_GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sensorgate")))
}

impl GatewayProcess {
    pub fn start(config: &Path) -> GatewayProcess {
        GatewayProcess::start_with_env(config, &[])
    }

    /// [`GatewayProcess::start`] with extra environment variables (such as
    /// `NOTIFY_SOCKET`).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::start_binary(&gateway_binary(), None, config, env)
    }

    /// Starts `binary` as the gateway, through `runner` when given (an
    /// emulator such as `qemu-aarch64`, for a Pi build).
    pub fn start_binary(
        binary: &Path,
        runner: Option<&Path>,
        config: &Path,
        env: &[(&str, &str)],
    ) -> GatewayProcess {
        let log = config.with_extension("log");
        let file = fs::File::create(&log).expect("gateway log file");
        let mut cmd = match runner {
            Some(runner) => {
                let mut c = Command::new(runner);
                c.arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn sensorgate run");
        GatewayProcess { child, log }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(50), || {
            self.log().contains(needle)
        })
    }

    /// SIGTERM, then waits up to 30 s for the exit (panics after, with the
    /// log). Returns the exit code.
    pub fn stop(&mut self) -> i32 {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for sensorgate") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "sensorgate did not stop within 30 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, no chance to clean up (a crash or power cut).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------
// Added for tests/uplink.rs
// ---------------------------------------------------------------------

impl Mosquitto {
    /// Like [`Mosquitto::start`], with more configuration: `extra` gets the
    /// broker's folder (to write a password or ACL file into) and returns
    /// lines appended to `mosquitto.conf`. A later line overrides an earlier
    /// one, e.g. `use_identity_as_username false`.
    ///
    /// It starts the standard broker, stops it, appends the lines and
    /// starts it again on the same port (panics with mosquitto's log if it
    /// does not come up, e.g. for a line it does not understand).
    pub fn start_with(pki: &Pki, extra: impl FnOnce(&Path) -> String) -> Mosquitto {
        let mut broker = Mosquitto::start(pki);
        broker.stop();
        let conf_path = broker.dir.join("mosquitto.conf");
        let mut conf = fs::read_to_string(&conf_path).expect("read mosquitto.conf");
        let lines = extra(broker.dir.path());
        let _ = write!(conf, "# Added by the test.\n{lines}\n");
        write_file(&conf_path, &conf, 0o644);
        if let Err(failure) = broker.spawn_and_wait() {
            panic!("mosquitto with the extra configuration did not start: {failure}");
        }
        broker
    }
}

impl GatewayProcess {
    /// The process id (for signals).
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `sig` (e.g. SIGHUP) to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig)
            .unwrap_or_else(|e| panic!("send {sig} to sensorgate: {e}"));
    }

    /// Waits (bounded) for the process to exit by itself; returns its exit
    /// code (-1 for a signal), or `None` if it still runs after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut code = None;
        wait_until(timeout, Duration::from_millis(20), || {
            match self.child.try_wait().expect("wait for sensorgate") {
                Some(status) => {
                    code = Some(status.code().unwrap_or(-1));
                    true
                }
                None => false,
            }
        });
        code
    }
}

/// What a finished child process left behind.
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Both streams, for assertion messages.
    pub fn shown(&self) -> String {
        format!(
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Reads a pipe to its end on a thread; the text arrives on the receiver.
fn drain_pipe(mut pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// Runs `cmd` with `stdin` as its input and waits at most `limit` for it
/// to exit. Panics (after killing it) when it does not, or when it dies
/// from a signal; otherwise returns its exit code and output.
pub fn run_bounded(mut cmd: Command, stdin: &[u8], limit: Duration) -> Outcome {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    // Written on a thread so that a child that does not read its input (or
    // fills its output first) cannot block us; EOF when it ends.
    thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let stdout = drain_pipe(child.stdout.take().expect("piped stdout"));
    let stderr = drain_pipe(child.stderr.take().expect("piped stderr"));
    let exited = wait_until(limit, Duration::from_millis(20), || {
        !matches!(child.try_wait(), Ok(None))
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for the child");
    // The pipes close when the process is gone; bounded all the same.
    let collect = |rx: std::sync::mpsc::Receiver<String>| {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| "<output not closed within 10 s>".into())
    };
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    assert!(
        exited,
        "{:?} {:?} did not exit within {limit:?}; killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>()
    );
    let code = status.code().unwrap_or_else(|| {
        panic!(
            "{:?} died from a signal ({status})\n{stderr}",
            cmd.get_program()
        )
    });
    Outcome {
        code,
        stdout,
        stderr,
    }
}

/// A Unix datagram socket standing in for systemd's `NOTIFY_SOCKET`: what
/// the gateway sent there (`READY=1`, `STATUS=...`), with arrival times.
pub struct NotifySocket {
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    path: String,
}

impl NotifySocket {
    /// Binds `path` (a stale socket file there is removed first).
    pub fn bind(path: &Path) -> NotifySocket {
        let _ = fs::remove_file(path);
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        // Reads time out every 100 ms; the thread ends once the
        // NotifySocket is dropped (it then holds the only reference).
        thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => sink.lock().unwrap().push((
                        Instant::now(),
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                    )),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) && Arc::strong_count(&sink) > 1 => {}
                    Err(_) => return,
                }
            }
        });
        NotifySocket {
            messages,
            path: path.display().to_string(),
        }
    }

    /// What `NOTIFY_SOCKET` is set to.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits (bounded) for a message containing `needle`; its time.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<(Instant, String)> {
        let mut found = None;
        wait_until(timeout, Duration::from_millis(20), || {
            found = self.all().into_iter().find(|(_, m)| m.contains(needle));
            found.is_some()
        });
        found
    }

    pub fn count_after(&self, needle: &str, after: Instant) -> usize {
        self.all()
            .iter()
            .filter(|(t, m)| *t > after && m.contains(needle))
            .count()
    }

    pub fn shown(&self) -> String {
        self.all()
            .iter()
            .map(|(_, m)| m.replace('\n', " | "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------------
// scripts/fault-sweep
// ---------------------------------------------------------------------

/// What a fault test saw, for `scripts/fault-sweep`'s table: records the
/// simulated sensors wrote, distinct records that arrived, records that
/// did not, how many of those the gateway declared lost (by range, in its
/// log), and records received more than once.
#[derive(Debug, Clone, Default)]
pub struct SweepCase {
    pub sent: u64,
    pub arrived: u64,
    pub lost: u64,
    pub declared_lost: u64,
    pub duplicates: u64,
    /// One short phrase: what the gateway did about the fault.
    pub note: String,
    /// The case could not run here (`note` says why).
    pub skipped: bool,
}

/// Appends `case` as one JSON line to the file named by
/// `SENSORGATE_SWEEP_REPORT`, under the name of the running test; does
/// nothing when the variable is not set (a plain `cargo test`). The
/// verdict is the test's own: scripts/fault-sweep reads cargo's result.
pub fn sweep_report(case: &SweepCase) {
    let Some(path) = std::env::var_os("SENSORGATE_SWEEP_REPORT") else {
        return;
    };
    let name = thread::current()
        .name()
        .unwrap_or("unnamed")
        .rsplit("::")
        .next()
        .unwrap_or("unnamed")
        .to_string();
    let line = serde_json::json!({
        "case": name,
        "sent": case.sent,
        "arrived": case.arrived,
        "lost": case.lost,
        "declared_lost": case.declared_lost,
        "duplicates": case.duplicates,
        "note": case.note,
        "skipped": case.skipped,
    });
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open the sweep report");
    use std::io::Write as _;
    writeln!(f, "{line}").expect("write the sweep report");
}

/// [`sweep_report`] for a case where every record must arrive: `sent` is
/// what each sensor wrote (its sequence numbers `0..sent`).
pub fn sweep_delivery(opened: &Opened, sent: &[(&str, u64)], note: &str) {
    let arrived: u64 = sent
        .iter()
        .map(|&(sensor, n)| opened.seqs(sensor).iter().filter(|&&s| s < n).count() as u64)
        .sum();
    let total: u64 = sent.iter().map(|(_, n)| n).sum();
    sweep_report(&SweepCase {
        sent: total,
        arrived,
        lost: total - arrived,
        duplicates: opened.duplicates,
        note: note.to_string(),
        ..SweepCase::default()
    });
}

/// [`sweep_report`] for a case that cannot run here.
pub fn sweep_skipped(why: &str) {
    sweep_report(&SweepCase {
        note: why.to_string(),
        skipped: true,
        ..SweepCase::default()
    });
}
