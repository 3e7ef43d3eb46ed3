//! Native journald logging, checked against the real binary: each test runs
//! `sensorgate run` in a private mount namespace whose `/run/systemd` is a
//! temporary folder holding `journal/socket`, a Unix datagram socket this
//! test binds and reads. The host's `/run` is never touched (only, on a
//! machine without `/run/systemd`, that empty folder is created as the
//! mount point). Needs root, for `unshare --mount`.
//!
//! The datagrams are the journal's native protocol
//! (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>): `KEY=value\n`, or
//! `KEY\n` + a 64-bit little-endian length + the bytes + `\n` for values
//! that may hold a newline (tracing-journald writes most fields this way).
//! An entry too large for one datagram would come as a sealed memfd passed
//! with SCM_RIGHTS; the entries here are far below that limit, so such a
//! datagram would show up as an empty one, and none is expected after the
//! layer's empty probe.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sensorgate::demo::pty::Pty;
use support::{Rig, TempDir, excerpt, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// One journal entry: every field's values (a field may repeat), and the
/// datagram it came in.
#[derive(Debug, Clone, Default)]
struct Entry(BTreeMap<String, Vec<String>>, Vec<u8>);

impl Entry {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }

    fn message(&self) -> &str {
        self.get("MESSAGE").unwrap_or("")
    }

    /// The datagram, bytes outside printable ASCII escaped.
    fn raw(&self) -> String {
        self.1.escape_ascii().to_string()
    }

    fn shown(&self) -> String {
        self.0
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Parses one native-protocol datagram.
fn parse(datagram: &[u8]) -> Result<Entry, String> {
    let mut d = datagram;
    let mut e = Entry(BTreeMap::new(), datagram.to_vec());
    while !d.is_empty() {
        let end = d
            .iter()
            .position(|&b| b == b'=' || b == b'\n')
            .ok_or("field name without = or newline")?;
        let name = std::str::from_utf8(&d[..end])
            .map_err(|_| "field name not UTF-8")?
            .to_string();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("invalid field name {name:?}"));
        }
        let value;
        if d[end] == b'=' {
            let rest = &d[end + 1..];
            let nl = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("value without newline")?;
            value = &rest[..nl];
            d = &rest[nl + 1..];
        } else {
            let rest = &d[end + 1..];
            if rest.len() < 8 {
                return Err("truncated length".into());
            }
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let rest = &rest[8..];
            if rest.len() < len + 1 || rest[len] != b'\n' {
                return Err(format!(
                    "{name}: value of {len} bytes not followed by a newline"
                ));
            }
            value = &rest[..len];
            d = &rest[len + 1..];
        }
        e.0.entry(name)
            .or_default()
            .push(String::from_utf8_lossy(value).into_owned());
    }
    Ok(e)
}

#[test]
fn the_parser_reads_both_encodings() {
    let mut d = b"PRIORITY=6\nMESSAGE\n".to_vec();
    d.extend_from_slice(&5u64.to_le_bytes());
    d.extend_from_slice(b"a\nb=c\nSENSOR=bike\n");
    let e = parse(&d).unwrap();
    assert_eq!(e.get("PRIORITY"), Some("6"));
    assert_eq!(e.message(), "a\nb=c");
    assert_eq!(e.get("SENSOR"), Some("bike"));
    assert!(parse(b"MESSAGE\n\x05\0\0\0\0\0\0\0ab").is_err());
    assert!(parse(b"lower=x\n").is_err());
}

/// A fake journald: a datagram socket at `<dir>/journal/socket`, read by
/// a thread into a list of entries.
struct Journal {
    root: TempDir,
    entries: Arc<Mutex<Vec<Entry>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Journal {
    /// With `socket = false`, the folder is there but nothing listens.
    fn new(socket: bool) -> Journal {
        let root = TempDir::new();
        fs::create_dir_all(root.join("journal")).unwrap();
        let entries = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = socket.then(|| {
            let sock = UnixDatagram::bind(root.join("journal").join("socket")).expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let (entries, errors, stop) = (entries.clone(), errors.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match sock.recv(&mut buf) {
                        // The layer's probe when it starts.
                        Ok(0) => {}
                        Ok(n) => match parse(&buf[..n]) {
                            Ok(e) => entries.lock().unwrap().push(e),
                            Err(why) => errors
                                .lock()
                                .unwrap()
                                .push(format!("{why}: {:?}", String::from_utf8_lossy(&buf[..n]))),
                        },
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => {
                            errors.lock().unwrap().push(e.to_string());
                            return;
                        }
                    }
                }
            })
        });
        Journal {
            root,
            entries,
            errors,
            stop,
            reader,
        }
    }

    fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }

    /// Waits (bounded) for an entry that `f` accepts.
    fn wait_for(&self, what: &str, f: impl Fn(&Entry) -> bool) -> Entry {
        let mut found = None;
        wait_until(WAIT, Duration::from_millis(50), || {
            found = self.entries().into_iter().find(&f);
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no journal entry {what} within {WAIT:?}; got {} entries, messages: {:?}; parse errors: {:?}",
                self.entries().len(),
                self.entries().iter().map(|e| e.message().to_string()).collect::<Vec<_>>(),
                self.errors.lock().unwrap()
            )
        })
    }

    fn by_message(&self, message: &str) -> Entry {
        self.wait_for(&format!("with MESSAGE={message}"), |e| {
            e.message() == message
        })
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// `sensorgate run` in a private mount namespace where `/run/systemd` is
/// `journal`'s folder; stderr goes to a file.
struct Namespaced {
    child: Child,
    stderr: PathBuf,
}

impl Namespaced {
    fn start(journal: &Journal, config: &Path, env: &[(&str, Env)]) -> Namespaced {
        let stderr = config.with_extension("stderr");
        let file = fs::File::create(&stderr).unwrap();
        // Created before the process starts, so its device and inode can be
        // handed over as JOURNAL_STREAM.
        let meta = fs::metadata(&stderr).unwrap();
        let script = "set -e; [ -d /run/systemd ] || mkdir -p /run/systemd; \
                      mount --bind \"$1\" /run/systemd; exec \"$2\" run --config \"$3\"";
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(journal.root.path())
        .arg(env!("CARGO_BIN_EXE_sensorgate"))
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
        for (key, value) in env {
            match value {
                Env::Text(v) => cmd.env(key, v),
                Env::StderrId => cmd.env(key, format!("{}:{}", meta.dev(), meta.ino())),
            };
        }
        let child = cmd.spawn().expect("spawn unshare (util-linux) as root");
        Namespaced { child, stderr }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then the exit code (bounded).
    fn stop(&mut self) -> i32 {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let mut code = None;
        wait_until(WAIT, Duration::from_millis(50), || {
            code = self
                .child
                .try_wait()
                .unwrap()
                .map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        code.unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!(
                "sensorgate did not stop within {WAIT:?}; stderr:\n{}",
                excerpt(&self.stderr())
            )
        })
    }
}

impl Drop for Namespaced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Env {
    Text(&'static str),
    /// `DEVICE:INODE` of the stderr file.
    StderrId,
}

/// A gateway config with a PTY sensor `bike`, a sensor `ghost` whose device
/// does not exist, and `format` as the log format.
fn config(rig: &Rig, name: &str, bike: &Path, format: &str) -> PathBuf {
    let path = rig.gateway_config(
        name,
        &[
            ("bike", bike),
            ("ghost", Path::new("/dev/sensorgate-test-absent")),
        ],
        "",
    );
    let text = fs::read_to_string(&path).unwrap();
    let text = text.replacen("[log]\n", &format!("[log]\nformat = \"{format}\"\n"), 1);
    // Debug lines are many; info and up is what operators see.
    let text = text.replacen("level = \"debug,rumqttc=info\"", "level = \"info\"", 1);
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn journald_format_sends_structured_entries_to_the_journal_socket() {
    let rig = Rig::new();
    let journal = Journal::new(true);
    let bike = Pty::open().unwrap();
    let cfg = config(&rig, "journald.toml", bike.path(), "journald");
    let mut gw = Namespaced::start(&journal, &cfg, &[]);

    let opened = journal.wait_for("serial device opened for bike", |e| {
        e.message() == "serial device opened" && e.get("SENSOR") == Some("bike")
    });
    eprintln!(
        "--- serial device opened ---\n{}\n--- as sent ---\n{}",
        opened.shown(),
        opened.raw()
    );
    assert_eq!(opened.get("SYSLOG_IDENTIFIER"), Some("sensorgate"));
    assert_eq!(opened.get("PRIORITY"), Some("6"), "info is Informational");
    assert_eq!(opened.get("DEVICE"), Some(bike.path().to_str().unwrap()));
    assert_eq!(opened.get("TARGET"), Some("sensorgate::serial"));
    assert!(opened.get("CODE_FILE").is_some() && opened.get("CODE_LINE").is_some());
    assert!(
        !opened.0.keys().any(|k| k.starts_with("F_")),
        "no field prefix: {}",
        opened.shown()
    );

    let absent = journal.wait_for("cannot open serial device for ghost", |e| {
        e.message().starts_with("cannot open serial device") && e.get("SENSOR") == Some("ghost")
    });
    eprintln!("--- cannot open serial device ---\n{}", absent.shown());
    assert_eq!(absent.get("PRIORITY"), Some("4"), "warn is Warning");
    assert_eq!(absent.get("ERROR_KIND"), Some("not_found"));
    assert!(absent.get("ERROR").is_some_and(|e| !e.is_empty()));

    let connected = journal.by_message("connected to broker");
    assert_eq!(
        connected.get("BROKER"),
        Some(format!("127.0.0.1:{}", rig.broker.port()).as_str())
    );

    let stats = journal.by_message("stats");
    eprintln!("--- stats ---\n{}", stats.shown());
    assert_eq!(stats.get("PRIORITY"), Some("6"));
    for field in [
        "RECORDS_READ",
        "RECORDS_ACKED",
        "SPOOL_MESSAGES",
        "SENSORS_OPEN",
    ] {
        assert!(
            stats.get(field).is_some_and(|v| v.parse::<u64>().is_ok()),
            "{field} in {}",
            stats.shown()
        );
    }
    let sensor_stats = journal.wait_for("sensor stats for bike", |e| {
        e.message() == "sensor stats" && e.get("SENSOR") == Some("bike")
    });
    assert_eq!(sensor_stats.get("OPEN"), Some("true"));

    assert_eq!(gw.stop(), 0, "stderr:\n{}", gw.stderr());
    journal.by_message("stopped");
    // Everything went to the journal, nothing to stderr.
    let stderr = gw.stderr();
    assert!(
        !stderr.contains("serial device opened") && !stderr.contains("stats"),
        "log lines on stderr too:\n{stderr}"
    );
    let errors = journal.errors.lock().unwrap();
    assert!(errors.is_empty(), "unparsable datagrams: {errors:?}");
    let entries = journal.entries();
    for e in &entries {
        assert_eq!(
            e.get("SYSLOG_IDENTIFIER"),
            Some("sensorgate"),
            "{}",
            e.shown()
        );
        assert!(
            matches!(e.get("PRIORITY"), Some("3" | "4" | "6")),
            "{}",
            e.shown()
        );
    }
}

#[test]
fn auto_format_uses_the_journal_only_when_journal_stream_names_stderr() {
    let rig = Rig::new();
    let bike = Pty::open().unwrap();

    // As systemd starts it: JOURNAL_STREAM is stderr's device:inode.
    let journal = Journal::new(true);
    let cfg = config(&rig, "auto.toml", bike.path(), "auto");
    let mut gw = Namespaced::start(
        &journal,
        &cfg,
        &[
            ("JOURNAL_STREAM", Env::StderrId),
            (
                "INVOCATION_ID",
                Env::Text("0123456789abcdef0123456789abcdef"),
            ),
        ],
    );
    let opened = journal.wait_for("serial device opened for bike", |e| {
        e.message() == "serial device opened" && e.get("SENSOR") == Some("bike")
    });
    assert_eq!(opened.get("SYSLOG_IDENTIFIER"), Some("sensorgate"));
    assert_eq!(gw.stop(), 0);
    assert!(
        !gw.stderr().contains("serial device opened"),
        "{}",
        gw.stderr()
    );
    drop(journal);

    // stderr redirected elsewhere than the inherited stream: text there,
    // nothing to the journal, even though systemd started us.
    let journal = Journal::new(true);
    let cfg = config(&rig, "auto-redirected.toml", bike.path(), "auto");
    let mut gw = Namespaced::start(
        &journal,
        &cfg,
        &[
            ("JOURNAL_STREAM", Env::Text("8:12345")),
            (
                "INVOCATION_ID",
                Env::Text("0123456789abcdef0123456789abcdef"),
            ),
        ],
    );
    assert!(
        wait_until(WAIT, Duration::from_millis(50), || gw
            .stderr()
            .contains("serial device opened")),
        "no text on stderr:\n{}",
        gw.stderr()
    );
    assert_eq!(gw.stop(), 0);
    let stderr = gw.stderr();
    assert!(stderr.contains("sensor=bike"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no ANSI colours off a terminal");
    assert!(journal.entries().is_empty(), "{:?}", journal.entries());
}

#[test]
fn journald_format_without_a_journal_falls_back_to_stderr_with_one_warning() {
    let rig = Rig::new();
    let journal = Journal::new(false);
    let bike = Pty::open().unwrap();
    let cfg = config(&rig, "nojournal.toml", bike.path(), "journald");
    let mut gw = Namespaced::start(&journal, &cfg, &[]);
    let started = Instant::now();
    assert!(
        wait_until(WAIT, Duration::from_millis(50), || gw
            .stderr()
            .contains("serial device opened")),
        "the gateway did not start logging to stderr within {:?}:\n{}",
        started.elapsed(),
        gw.stderr()
    );
    assert_eq!(gw.stop(), 0);
    let stderr = gw.stderr();
    assert_eq!(
        stderr.matches("cannot reach the journal").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("error_kind="), "{stderr}");
}
