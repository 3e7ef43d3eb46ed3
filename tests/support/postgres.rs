//! A PostgreSQL cluster of the test's own: Debian's server binaries
//! (scripts/install-test-deps installs `postgresql`), `initdb` in a
//! temporary folder, started with `pg_ctl` on a free loopback port. The
//! server refuses to run as root, so when the tests do, the cluster belongs
//! to the package's `postgres` user. Stopped (immediately) on drop.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{Rig, TempDir};

/// The database and the (trusted, passwordless) user the tests connect as.
pub const DATABASE: &str = "sensorgate";
pub const USER: &str = "sensorgate";

pub struct Postgres {
    _dir: TempDir,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The uid and gid the server runs as, when the tests run as root.
    owner: Option<(u32, u32)>,
}

/// The newest `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server is not installed: run scripts/install-test-deps \
             (apt-get install -y postgresql)"
        )
    })
}

impl Postgres {
    /// A new cluster with the database [`DATABASE`], started and accepting
    /// connections.
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// [`Postgres::start`], accepting only TLS connections on 127.0.0.1,
    /// with a server certificate for 127.0.0.1 issued by `pki`.
    pub fn start_with_tls(pki: &sensorgate::demo::pki::Pki) -> Postgres {
        Postgres::start_with(Some(pki))
    }

    fn start_with(tls: Option<&sensorgate::demo::pki::Pki>) -> Postgres {
        let dir = TempDir::new();
        let owner = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("the postgres user (Debian's postgresql package makes it)");
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let pg = Postgres {
            data: dir.join("data"),
            log: dir.join("postgres.log"),
            bin: bin_dir(),
            port: super::free_port(),
            owner,
            _dir: dir,
        };
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args([
                "-U",
                USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb: {}", shown(&out));
        if let Some(pki) = tls {
            pg.require_tls(pki);
        }
        pg.start_server();
        let out = pg
            .command("createdb")
            .arg("-h")
            .arg(&pg.data)
            .args(["-p", &pg.port.to_string(), "-U", USER, DATABASE])
            .output()
            .expect("createdb");
        assert!(out.status.success(), "createdb: {}", shown(&out));
        pg
    }

    /// A PostgreSQL program from the server's folder, run as the cluster's
    /// owner.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            // Not root's home: libpq looks there for client certificates.
            c.uid(uid).gid(gid).env("HOME", &self.data);
        }
        c.current_dir("/");
        c
    }

    /// Server certificate and key in the data folder, `ssl = on`, and only
    /// `hostssl` lines for TCP in pg_hba.conf.
    fn require_tls(&self, pki: &sensorgate::demo::pki::Pki) {
        let server = pki.server(&["127.0.0.1", "localhost"]).unwrap();
        let cert = self.data.join("server.crt");
        let key = self.data.join("server.key");
        super::write_file(&cert, &server.cert_pem, 0o644);
        super::write_file(&key, &server.key_pem, 0o600);
        let hba = self.data.join("pg_hba.conf");
        super::write_file(
            &hba,
            &format!("local all all trust\nhostssl all {USER} 127.0.0.1/32 trust\n"),
            0o600,
        );
        let conf = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        super::write_file(&conf, &text, 0o600);
        if let Some((uid, gid)) = self.owner {
            for file in [&cert, &key, &hba, &conf] {
                let (uid, gid) = (
                    nix::unistd::Uid::from_raw(uid),
                    nix::unistd::Gid::from_raw(gid),
                );
                nix::unistd::chown(file, Some(uid), Some(gid)).unwrap();
            }
        }
    }

    /// Starts the server; commit times are kept (the fleet bench's drain
    /// ends at the last commit).
    fn start_server(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c max_connections=50 \
             -c track_commit_timestamp=on",
            self.port,
            self.data.display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "30", "-o", &options, "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            shown(&out),
            self.log()
        );
    }

    /// Stops the server (a fast shutdown: sessions are ended, what is
    /// committed is kept).
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    /// `pg_ctl stop` in `mode` (`fast`, `immediate`), waiting at most 30 s.
    fn pg_ctl_stop(&self, mode: &str) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "30", "-m", mode, "stop"])
            .output();
    }

    /// Starts it again after [`Postgres::stop`], on the same port.
    pub fn start_again(&self) {
        self.start_server();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL the consumer's `[sink] postgres` takes.
    pub fn url(&self) -> String {
        format!(
            "postgresql://{USER}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
            self.port
        )
    }

    /// Runs `sql` with psql and returns what it printed, unaligned, one row
    /// a line, `|` between columns.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                DATABASE,
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql:?}: {}", shown(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end()
            .to_string()
    }

    /// One number from `sql`.
    pub fn count(&self, sql: &str) -> u64 {
        let text = self.query(sql);
        text.parse()
            .unwrap_or_else(|_| panic!("{sql:?} gave {text:?}, not a number"))
    }

    /// The server's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
    }
}

fn shown(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// The consumer: `sensorgate open --mqtt` with `[sink] postgres`
// ---------------------------------------------------------------------------

/// A consumer configuration in a folder of its own: the rig's broker and a
/// client certificate of its own, a persistent session under `client_id`,
/// `consumer` added to its `[consumer]` table (a share group) and `sink`
/// as its `[sink]` table.
pub fn consumer_config(rig: &Rig, client_id: &str, consumer: &str, sink: &str) -> PathBuf {
    let id = rig.pki.client(client_id).unwrap();
    let dir = rig.dir.join(client_id);
    std::fs::create_dir_all(&dir).unwrap();
    super::write_file(&dir.join("client.pem"), &id.cert_pem, 0o644);
    super::write_file(&dir.join("client.key"), &id.key_pem, 0o600);
    let config = dir.join("consumer.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = {client_id:?}\n\
             ca_file = {:?}\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n\
             keepalive = \"5s\"\nclean_session = false\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\n\
             [consumer]\ntopic_filter = \"sensorgate/+/+\"\n{consumer}\n\n\
             [sink]\n{sink}\n",
            rig.broker.port(),
            rig.tls.ca,
        ),
    )
    .unwrap();
    config
}

/// `sensorgate open --mqtt --config CONFIG`, opening with the rig's
/// recipient key and trusting `trust` (a `.pub` or a folder of them).
pub fn open_command(rig: &Rig, config: &Path, trust: &Path) -> Command {
    let mut open = Command::new(super::gateway_binary());
    open.args(["open", "--mqtt", "--config"])
        .arg(config)
        .arg("--recipient-key")
        .arg(&rig.recipient.key_path)
        .arg("--trust")
        .arg(trust);
    open
}

/// A running consumer, its stderr in a file beside its configuration.
pub struct Consumer {
    child: Child,
    log: PathBuf,
}

impl Consumer {
    /// Starts it and waits (at most 60 s) until it has subscribed.
    pub fn start(rig: &Rig, config: &Path, trust: &Path) -> Consumer {
        let log = config.with_extension("log");
        let child = open_command(rig, config, trust)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("sensorgate open --mqtt");
        let c = Consumer { child, log };
        assert!(
            super::wait_until(Duration::from_secs(60), Duration::from_millis(50), || c
                .log()
                .contains("subscribed to")),
            "the consumer did not subscribe: {}",
            c.log()
        );
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM; the exit code (bounded: 15 s).
    pub fn stop(&mut self) -> i32 {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the consumer did not stop: {}", self.log());
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.kill();
    }
}
