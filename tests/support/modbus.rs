//! A Modbus RTU server we did not write, for the Modbus tests and bench:
//! pymodbus (pinned in tests/interop/requirements.txt), run by
//! tests/modbus/rtu_server.py on one end of a pair of real
//! pseudo-terminals that socat links; the other end is the bus.
//! scripts/install-test-deps makes the venv in `target/interop-venv` and
//! installs socat. Both children die with the [`Server`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long socat and pymodbus may take to come up.
const START: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A pymodbus server on one end of a linked PTY pair.
pub struct Server {
    dir: tempfile::TempDir,
    bus_path: PathBuf,
    spec: String,
    children: Vec<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Server {
    /// Serves `spec` (rtu_server.py's JSON: units, their tables, delays,
    /// pacing, garbage, echo) and waits until it says it is ready.
    pub fn start(spec: &serde_json::Value) -> Server {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut server = Server {
            bus_path: dir.path().join("bus"),
            dir,
            spec: spec.to_string(),
            children: Vec::new(),
        };
        server.spawn();
        server
    }

    /// The bus's end: the device a gateway (or a [`sensorgate::modbus::bus::Bus`]) opens.
    pub fn path(&self) -> &Path {
        &self.bus_path
    }

    /// Takes the bus away as an unplugged USB adapter does: the PTY pair
    /// closes under whoever has it open, and its path goes.
    pub fn unplug(&mut self) {
        self.kill();
        // Killed, socat leaves its links behind, dangling.
        for link in [&self.bus_path, &self.dir.path().join("server")] {
            let _ = std::fs::remove_file(link);
        }
    }

    /// Brings the bus back at the same path, with the same slaves.
    pub fn replug(&mut self) {
        self.spawn();
    }

    fn kill(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self) {
        let python = root().join("target/interop-venv/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: the Modbus tests need the Python venv with the pinned \
             pymodbus. Run scripts/install-test-deps (or scripts/test, which runs it).",
            python.display()
        );
        let server_path = self.dir.path().join("server");
        let socat = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", self.bus_path.display()))
            .arg(format!("pty,raw,echo=0,link={}", server_path.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (scripts/install-test-deps installs it)");
        self.children.push(socat);
        let deadline = Instant::now() + START;
        while !(self.bus_path.exists() && server_path.exists()) {
            assert!(Instant::now() < deadline, "socat made no PTY pair");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut child = Command::new(python)
            .arg(root().join("tests/modbus/rtu_server.py"))
            .arg(&server_path)
            .arg(&self.spec)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the pymodbus server");
        let stdout = child.stdout.take().expect("its stdout");
        self.children.push(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START).expect("the pymodbus server started");
        assert_eq!(line.trim(), "ready", "the pymodbus server said {line:?}");
    }
}

/// The registers a device sends for the big-endian bytes `be`, in the
/// order its letters name (A = the most significant byte; `CDAB`,
/// `HGFEDCBA`, `BA`...), written out letter by letter.
pub fn wire(letters: &str, be: &[u8]) -> Vec<u16> {
    let bytes: Vec<u8> = letters.bytes().map(|l| be[usize::from(l - b'A')]).collect();
    bytes
        .chunks(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect()
}
