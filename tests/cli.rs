//! The `sensorgate` command as an operator and a consumer use it: the real
//! binary, started with `std::process::Command`, its exit codes (sysexits),
//! what it prints on stdout and what it explains on stderr.
//!
//! Keys come from the library's `keygen`, certificates from the demo PKI,
//! sealed messages from the library's `Sealer`, so every test checks the
//! command against independently made inputs. Every child process runs
//! under a time limit and is killed when it overstays.

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime};

use sensorgate::demo::pki::{self, Pki};
use sensorgate::record::{self, Field, Record, Value};
use sensorgate::seal::{self, FieldMap, Sealer};
use support::{Outcome, TempDir, run_bounded as run, wait_until};

/// How long a command that only reads files may take.
const QUICK: Duration = Duration::from_secs(30);
/// How long the demo may take for 200 records.
const DEMO_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// `sensorgate ARGS`, with no `SENSORGATE__*` variable inherited from the
/// environment running the tests (they would override the files).
fn sensorgate<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sensorgate"));
    cmd.args(args);
    for (name, _) in std::env::vars_os() {
        if name.as_encoded_bytes().starts_with(b"SENSORGATE__") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A path as a TOML basic string.
fn toml_path(path: &Path) -> String {
    let text = path.to_str().expect("temporary paths are UTF-8");
    assert!(
        !text.contains(['"', '\\']) && !text.chars().any(char::is_control),
        "unexpected characters in {text:?}"
    );
    format!("\"{text}\"")
}

// ---------------------------------------------------------------------------
// A configuration with real keys and certificates
// ---------------------------------------------------------------------------

/// A copy of `config/sensorgate.toml` in a temporary folder, with a
/// `conf.d/90-test.toml` beside it pointing at freshly made keys,
/// certificates and a state folder there.
struct Site {
    dir: TempDir,
    /// The copy of the example configuration.
    config: PathBuf,
    signing_key: PathBuf,
    recipient_pub: PathBuf,
    tls: pki::PkiFiles,
    /// Not created by the setup: `run` would create it.
    state_dir: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = TempDir::new();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sensorgate.toml");
        let config = dir.join("sensorgate.toml");
        fs::copy(&example, &config).expect("copy the example configuration");

        let keys = dir.join("keys");
        let gateway = seal::keygen(&keys, "gateway").expect("make the gateway key");
        let recipient = seal::keygen(&keys, "recipient").expect("make the recipient key");

        let ca = Pki::new("sensorgate cli test CA").expect("make a CA");
        let server = ca.server(&["127.0.0.1"]).expect("issue a server identity");
        let client = ca.client("bike-pi-01").expect("issue a client identity");
        let tls =
            pki::write_files(&dir.join("tls"), &ca, &server, &client).expect("write the TLS files");
        assert_eq!(mode(&tls.client_key), 0o600);

        let state_dir = dir.join("state");
        let conf_d = dir.join("conf.d");
        fs::create_dir(&conf_d).expect("create conf.d");
        let local = format!(
            "# Written by tests/cli.rs: the files of this test site.\n\
             [gateway]\n\
             state_dir = {state}\n\
             [mqtt]\n\
             ca_file = {ca}\n\
             cert_file = {cert}\n\
             key_file = {key}\n\
             [seal]\n\
             signing_key = {signing}\n\
             recipient_key = {recipient}\n",
            state = toml_path(&state_dir),
            ca = toml_path(&tls.ca),
            cert = toml_path(&tls.client_cert),
            key = toml_path(&tls.client_key),
            signing = toml_path(&gateway.key_path),
            recipient = toml_path(&recipient.pub_path),
        );
        fs::write(conf_d.join("90-test.toml"), local).expect("write conf.d/90-test.toml");

        Site {
            dir,
            config,
            signing_key: gateway.key_path,
            recipient_pub: recipient.pub_path,
            tls,
            state_dir,
        }
    }

    /// Adds `conf.d/NAME` (applied after 90-test.toml when named so).
    fn add_conf_d(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join("conf.d").join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Puts `line` right under the `[mqtt]` header of the main file.
    fn add_to_mqtt_table(&self, line: &str) {
        let text = fs::read_to_string(&self.config).expect("read the copy");
        assert_eq!(text.matches("\n[mqtt]\n").count(), 1, "one [mqtt] table");
        let text = text.replace("\n[mqtt]\n", &format!("\n[mqtt]\n{line}\n"));
        fs::write(&self.config, text).expect("write the copy");
    }

    fn check_config(&self) -> Outcome {
        run(
            sensorgate([Path::new("check-config"), "--config".as_ref(), &self.config]),
            b"",
            QUICK,
        )
    }
}

// ---------------------------------------------------------------------------
// check-config and run
// ---------------------------------------------------------------------------

#[test]
fn the_example_config_passes_check_config_given_real_keys_and_certificates() {
    let site = Site::new();
    let out = site.check_config();
    assert_eq!(out.code, 0, "{}", out.shown());

    // The effective configuration, on stdout: the example's own values and
    // the overrides from conf.d, with defaults filled in.
    for line in [
        "[gateway]".to_string(),
        "id = \"bike-pi-01\"".into(),
        format!("state_dir = {}", toml_path(&site.state_dir)),
        "[[sensor]]".into(),
        "name = \"room\"".into(),
        "host = \"broker.example.com\"".into(),
        "port = 8883".into(),
        "client_id = \"bike-pi-01\"".into(),
        format!("cert_file = {}", toml_path(&site.tls.client_cert)),
        format!("key_file = {}", toml_path(&site.tls.client_key)),
        format!("signing_key = {}", toml_path(&site.signing_key)),
        format!("recipient_key = {}", toml_path(&site.recipient_pub)),
        "encrypt = [\"heart_rate\", \"incline\", \"resistance\"]".into(),
    ] {
        assert!(
            out.stdout.lines().any(|l| l.trim() == line),
            "stdout lacks the line {line:?}\n{}",
            out.shown()
        );
    }
    // The devices of the example are not plugged in here: a warning only.
    assert!(
        out.stderr.contains("warning") && out.stderr.contains("is not present"),
        "{}",
        out.shown()
    );
    assert!(out.stderr.contains("is valid"), "{}", out.shown());

    // Never key material: no PEM block, and no line of either private key.
    let secret_lines: Vec<String> = [&site.signing_key, &site.tls.client_key]
        .iter()
        .map(|p| fs::read_to_string(p).expect("read a private key"))
        .collect::<String>()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect();
    assert!(!secret_lines.is_empty());
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains("PRIVATE KEY"), "{}", out.shown());
        for secret in &secret_lines {
            assert!(!text.contains(secret.as_str()), "key material shown");
        }
    }
}

#[test]
fn a_typo_in_a_key_fails_check_config_naming_the_file_and_the_key() {
    let site = Site::new();
    site.add_to_mqtt_table("prot = 8883");
    let out = site.check_config();
    assert_eq!(out.code, 78, "{}", out.shown());
    assert!(
        out.stderr.contains(&site.config.display().to_string()),
        "{}",
        out.shown()
    );
    assert!(out.stderr.contains("mqtt.prot"), "{}", out.shown());
}

#[test]
fn a_missing_certificate_file_fails_naming_the_file_and_the_key() {
    let site = Site::new();
    fs::remove_file(&site.tls.client_cert).expect("remove the client certificate");
    let out = site.check_config();
    // 66 is EX_NOINPUT: a file the configuration names is not there.
    assert_eq!(out.code, 66, "{}", out.shown());
    assert!(
        out.stderr
            .contains(&site.tls.client_cert.display().to_string()),
        "{}",
        out.shown()
    );
    assert!(out.stderr.contains("mqtt.cert_file"), "{}", out.shown());
    assert!(!out.stderr.contains("is valid"), "{}", out.shown());
}

#[test]
fn a_bad_duration_fails_naming_the_file_and_the_key() {
    let site = Site::new();
    let file = site.add_conf_d("95-batch.toml", "[batch]\nlinger = \"fast\"\n");
    let out = site.check_config();
    assert_eq!(out.code, 78, "{}", out.shown());
    assert!(
        out.stderr.contains(&file.display().to_string()),
        "{}",
        out.shown()
    );
    assert!(out.stderr.contains("batch.linger"), "{}", out.shown());
}

#[test]
fn a_private_key_readable_by_others_is_refused_with_the_fix() {
    let site = Site::new();
    chmod(&site.signing_key, 0o644);
    let out = site.check_config();
    // 77 is EX_NOPERM.
    assert_eq!(out.code, 77, "{}", out.shown());
    assert!(
        out.stderr.contains(&site.signing_key.display().to_string()),
        "{}",
        out.shown()
    );
    assert!(out.stderr.contains("0644"), "{}", out.shown());
    assert!(out.stderr.contains("chmod 600"), "{}", out.shown());
}

#[test]
fn a_private_key_owned_by_another_user_is_refused_with_the_fix() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: only root can give a file to another user");
        return;
    }
    let site = Site::new();
    std::os::unix::fs::chown(&site.signing_key, Some(4242), None).expect("chown the key");
    let out = site.check_config();
    // 77 is EX_NOPERM.
    assert_eq!(out.code, 77, "{}", out.shown());
    assert!(
        out.stderr.contains(&site.signing_key.display().to_string()),
        "{}",
        out.shown()
    );
    assert!(out.stderr.contains("owned by uid 4242"), "{}", out.shown());
    assert!(out.stderr.contains("chown"), "{}", out.shown());

    // The TLS client key and the recipient key in `open` follow the same rule.
    std::os::unix::fs::chown(&site.signing_key, Some(0), None).unwrap();
    std::os::unix::fs::chown(&site.tls.client_key, Some(4242), None).unwrap();
    let out = site.check_config();
    assert_eq!(out.code, 77, "{}", out.shown());
    assert!(
        out.stderr
            .contains(&site.tls.client_key.display().to_string())
            && out.stderr.contains("chown"),
        "{}",
        out.shown()
    );

    let consumer = Consumer::new();
    std::os::unix::fs::chown(&consumer.recipient_key, Some(4242), None).unwrap();
    let out = consumer.open(&[]);
    assert_eq!(out.code, 77, "{}", out.shown());
    assert!(
        out.stderr
            .contains(&consumer.recipient_key.display().to_string())
            && out.stderr.contains("chown"),
        "{}",
        out.shown()
    );
}

#[test]
fn a_missing_required_device_fails_check_config_with_66_like_run() {
    let site = Site::new();
    // The example's first sensor, "bike", made required; its device is not
    // plugged in here (nor are the others', which stay optional).
    let text = fs::read_to_string(&site.config).expect("read the copy");
    assert_eq!(text.matches("\nrequired = false\n").count(), 1, "{text}");
    fs::write(
        &site.config,
        text.replace("\nrequired = false\n", "\nrequired = true\n"),
    )
    .expect("write the copy");
    let device = "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0";

    let out = site.check_config();
    // 66 is EX_NOINPUT, what `run` exits with for the same configuration.
    assert_eq!(out.code, 66, "{}", out.shown());
    let problem = format!(
        "sensorgate: sensor \"bike\": device {device} is not present, and the sensor is \
         `required = true`, so `run` refuses to start without it; plug the device in, fix \
         [[sensor]] device, or set required = false to have `run` wait for it"
    );
    assert!(
        out.stderr.lines().any(|l| l == problem),
        "no line {problem:?}\n{}",
        out.shown()
    );
    assert!(!out.stderr.contains("is valid"), "{}", out.shown());
    // The optional sensors' missing devices stay warnings.
    assert!(
        out.stderr.contains(
            "check-config: warning: sensor \"room\": device /dev/serial/by-id/usb-Silicon_Labs_CP2102_0001-if00-port0 \
             is not present now; `run` keeps retrying until it appears"
        ),
        "{}",
        out.shown()
    );
    assert!(
        !out.stderr
            .lines()
            .any(|l| l.starts_with("check-config: warning: sensor \"bike\"")),
        "a required sensor's missing device is not a warning\n{}",
        out.shown()
    );

    let run_out = run(
        sensorgate([Path::new("run"), "--config".as_ref(), &site.config]),
        b"",
        QUICK,
    );
    assert_eq!(run_out.code, 66, "{}", run_out.shown());
    assert!(
        run_out.stderr.contains(device) && run_out.stderr.contains("required = true"),
        "{}",
        run_out.shown()
    );
}

/// `sensorgate run --config CONFIG`, which must exit at once (a start
/// failure).
fn run_failing(config: &Path) -> Outcome {
    run(
        sensorgate([Path::new("run"), "--config".as_ref(), config]),
        b"",
        QUICK,
    )
}

#[test]
fn a_missing_signing_key_is_named_with_seal_signing_key_by_check_config_and_run() {
    let site = Site::new();
    fs::remove_file(&site.signing_key).expect("remove the signing key");
    let said = format!(
        "sensorgate: signing key file {} (seal.signing_key) does not exist; create the gateway's \
         key pair with `sensorgate keygen`, or fix seal.signing_key",
        site.signing_key.display()
    );

    let out = site.check_config();
    assert_eq!(out.code, 66, "{}", out.shown());
    assert!(
        out.stderr.lines().any(|l| l == said),
        "no line {said:?}\n{}",
        out.shown()
    );

    let out = run_failing(&site.config);
    assert_eq!(out.code, 66, "{}", out.shown());
    assert!(
        out.stderr.lines().any(|l| l == said),
        "no line {said:?}\n{}",
        out.shown()
    );
}

#[test]
fn a_recipient_key_that_is_not_pem_is_named_with_seal_recipient_key_by_check_config_and_run() {
    let site = Site::new();
    fs::write(&site.recipient_pub, "hello\n").expect("write the recipient key");
    let said = format!(
        "sensorgate: recipient public key file {} (seal.recipient_key) is not a P-256 public key \
         in SPKI PEM (-----BEGIN PUBLIC KEY-----): it holds no PEM block (there is no -----BEGIN \
         PUBLIC KEY----- line); give the .pub file written by `sensorgate keygen`",
        site.recipient_pub.display()
    );

    let out = site.check_config();
    // 65 is EX_DATAERR: the file is there but does not hold a key.
    assert_eq!(out.code, 65, "{}", out.shown());
    assert!(
        out.stderr.lines().any(|l| l == said),
        "no line {said:?}\n{}",
        out.shown()
    );
    assert!(!out.stderr.contains("NUL"), "{}", out.shown());

    let out = run_failing(&site.config);
    assert_eq!(out.code, 65, "{}", out.shown());
    assert!(
        out.stderr.lines().any(|l| l == said),
        "no line {said:?}\n{}",
        out.shown()
    );
}

#[test]
fn open_names_the_option_that_gave_a_bad_key_file() {
    let consumer = Consumer::new();
    let hello = consumer.dir.join("hello.pub");
    fs::write(&hello, "hello\n").unwrap();
    let out = consumer.open_with(&["--trust".as_ref(), hello.as_os_str()], &[]);
    assert_eq!(out.code, 65, "{}", out.shown());
    let said = format!(
        "sensorgate: trusted gateway key file {} (--trust) is not a P-256 public key in SPKI PEM \
         (-----BEGIN PUBLIC KEY-----): it holds no PEM block (there is no -----BEGIN PUBLIC \
         KEY----- line); give the .pub file written by `sensorgate keygen`",
        hello.display()
    );
    assert!(
        out.stderr.lines().any(|l| l == said),
        "no line {said:?}\n{}",
        out.shown()
    );

    fs::remove_file(&consumer.recipient_key).unwrap();
    let out = consumer.open(&[]);
    assert_eq!(out.code, 66, "{}", out.shown());
    let said = format!(
        "sensorgate: recipient private key file {} (--recipient-key) does not exist; give \
         --recipient-key the recipient's private .key file",
        consumer.recipient_key.display()
    );
    assert!(
        out.stderr.lines().any(|l| l == said),
        "no line {said:?}\n{}",
        out.shown()
    );
}

#[test]
fn a_state_dir_that_cannot_be_created_fails_check_config() {
    let site = Site::new();
    // A file where a folder should be: nobody, root included, can create
    // the state directory under it.
    let blocker = site.dir.join("not-a-folder");
    fs::write(&blocker, "").unwrap();
    site.add_conf_d(
        "95-state.toml",
        &format!(
            "[gateway]\nstate_dir = {}\n",
            toml_path(&blocker.join("state"))
        ),
    );
    let out = site.check_config();
    // 73 is EX_CANTCREAT.
    assert_eq!(out.code, 73, "{}", out.shown());
    assert!(out.stderr.contains("not-a-folder"), "{}", out.shown());
    assert!(out.stderr.contains("state_dir"), "{}", out.shown());
}

#[test]
fn run_with_a_typo_in_a_key_exits_78_without_starting() {
    let site = Site::new();
    site.add_to_mqtt_table("prot = 8883");
    let out = run(
        sensorgate([Path::new("run"), "--config".as_ref(), &site.config]),
        b"",
        QUICK,
    );
    assert_eq!(out.code, 78, "{}", out.shown());
    assert!(out.stderr.contains("mqtt.prot"), "{}", out.shown());
    assert!(
        out.stderr.contains(&site.config.display().to_string()),
        "{}",
        out.shown()
    );
    // Nothing started: no start-up log line, and the state folder (which
    // the pipeline creates first) does not exist.
    assert!(!out.stderr.contains("starting"), "{}", out.shown());
    assert!(!site.state_dir.exists(), "run created the state folder");
}

// ---------------------------------------------------------------------------
// keygen
// ---------------------------------------------------------------------------

#[test]
fn keygen_writes_a_0600_private_key_and_prints_its_kid() {
    let dir = TempDir::new();
    let out_dir = dir.join("keys");
    let out = run(
        sensorgate([
            Path::new("keygen"),
            "--out".as_ref(),
            &out_dir,
            "--name".as_ref(),
            "gateway".as_ref(),
        ]),
        b"",
        QUICK,
    );
    assert_eq!(out.code, 0, "{}", out.shown());
    let key = out_dir.join("gateway.key");
    let public = out_dir.join("gateway.pub");
    assert_eq!(mode(&key), 0o600);

    let kid = seal::load_public_key(&public)
        .expect("load gateway.pub")
        .kid()
        .to_owned();
    assert_eq!(out.stdout, format!("{kid}\n"), "{}", out.shown());
    let signing = seal::load_signing_key(&key).expect("load gateway.key");
    assert_eq!(signing.kid(), kid, "the private and public halves match");
    assert!(!out.stdout.contains("PRIVATE KEY") && !out.stderr.contains("PRIVATE KEY"));
}

#[test]
fn keygen_never_overwrites_an_existing_key() {
    let dir = TempDir::new();
    let first = seal::keygen(dir.path(), "gateway").expect("make the first key");
    let key_before = fs::read(&first.key_path).unwrap();
    let pub_before = fs::read(&first.pub_path).unwrap();

    let out = run(
        sensorgate([
            Path::new("keygen"),
            "--out".as_ref(),
            dir.path(),
            "--name".as_ref(),
            "gateway".as_ref(),
        ]),
        b"",
        QUICK,
    );
    // 73 is EX_CANTCREAT.
    assert_eq!(out.code, 73, "{}", out.shown());
    assert!(out.stderr.contains("already exists"), "{}", out.shown());
    assert!(out.stdout.is_empty(), "{}", out.shown());
    assert_eq!(fs::read(&first.key_path).unwrap(), key_before);
    assert_eq!(fs::read(&first.pub_path).unwrap(), pub_before);
    assert_eq!(mode(&first.key_path), 0o600);
}

// ---------------------------------------------------------------------------
// open
// ---------------------------------------------------------------------------

const GATEWAY: &str = "bike-pi-01";
const SENSOR: &str = "bike";
const EPOCH: &str = "cli-test-epoch";

/// A gateway key, a recipient key pair and a trusted `.pub`, as files.
struct Consumer {
    dir: TempDir,
    gateway_key: PathBuf,
    gateway_pub: PathBuf,
    recipient_key: PathBuf,
    recipient_pub: PathBuf,
}

impl Consumer {
    fn new() -> Consumer {
        let dir = TempDir::new();
        let gateway = seal::keygen(dir.path(), "gateway").expect("make the gateway key");
        let recipient = seal::keygen(dir.path(), "recipient").expect("make the recipient key");
        Consumer {
            dir,
            gateway_key: gateway.key_path,
            gateway_pub: gateway.pub_path,
            recipient_key: recipient.key_path,
            recipient_pub: recipient.pub_path,
        }
    }

    /// A sealer for the trusted gateway key that encrypts `heart_rate` and
    /// `note` for the recipient.
    fn sealer(&self) -> Sealer {
        self.sealer_with(&self.gateway_key)
    }

    fn sealer_with(&self, signing_key: &Path) -> Sealer {
        Sealer::new(
            GATEWAY,
            EPOCH,
            seal::load_signing_key(signing_key).expect("load the signing key"),
            seal::load_public_key(&self.recipient_pub).expect("load the recipient key"),
            &["heart_rate".to_string(), "note".to_string()],
        )
    }

    /// `sensorgate open` with `lines` on stdin, one message per line.
    fn open(&self, lines: &[Vec<u8>]) -> Outcome {
        self.open_with(&["--trust".as_ref(), self.gateway_pub.as_os_str()], lines)
    }

    /// `sensorgate open --recipient-key … ARGS` with `lines` on stdin.
    fn open_with(&self, args: &[&std::ffi::OsStr], lines: &[Vec<u8>]) -> Outcome {
        let mut input = Vec::new();
        for line in lines {
            input.extend_from_slice(line);
            input.push(b'\n');
        }
        let mut cmd = sensorgate([
            Path::new("open"),
            "--recipient-key".as_ref(),
            &self.recipient_key,
        ]);
        cmd.args(args);
        run(cmd, &input, QUICK)
    }
}

/// A record with clear and encrypted fields of every type, interleaved.
fn reading(seq: u64) -> Record {
    let sensor: Arc<str> = Arc::from(SENSOR);
    let f = |name: &str, value: Value| Field {
        name: Arc::from(name),
        value,
    };
    Record {
        sensor,
        seq,
        ts: SystemTime::UNIX_EPOCH + Duration::new(1_764_100_000 + seq, 123_456_789),
        clock: None,
        fields: vec![
            f("speed", Value::Float(21.25 + seq as f64)),
            f("heart_rate", Value::Int(120 + seq as i64)),
            f("cadence", Value::Int(85)),
            f("note", Value::Str(format!("confidential-{seq} \"q\" ü"))),
            f("pedalling", Value::Bool(seq % 2 == 0)),
        ],
    }
}

fn readings(seqs: std::ops::RangeInclusive<u64>) -> Vec<Record> {
    seqs.map(reading).collect()
}

/// Seals `records` as one message (format version 2, binary CBOR) and
/// checks that the encrypted fields really are not readable in it.
fn seal_batch(sealer: &mut Sealer, records: &[Record]) -> Vec<u8> {
    let sealed = sealer.seal(records).expect("seal a batch");
    assert_eq!(sealed.bytes[0], 0xd2, "a COSE_Sign1");
    let text = String::from_utf8_lossy(&sealed.bytes);
    assert!(!text.contains("confidential-"), "note travelled in clear");
    assert!(text.contains("cadence"), "the clear columns are named");
    sealed.bytes
}

/// One line of `open`'s output.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Printed {
    gateway: String,
    sensor: String,
    seq: u64,
    ts: String,
    fields: FieldMap,
}

/// Parses `open`'s stdout, checking each line's member order, and returns
/// the records in the order printed.
fn printed(stdout: &str) -> Vec<Printed> {
    stdout
        .lines()
        .map(|line| {
            let top: FieldMap = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
            assert_eq!(
                top.names().collect::<Vec<_>>(),
                ["gateway", "sensor", "seq", "ts", "fields"],
                "{line}"
            );
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
        })
        .collect()
}

/// Asserts that `got` is `want` as `open` must print it: same identity,
/// timestamp, and every field (decrypted ones included) in column order.
fn assert_same(got: &Printed, want: &Record) {
    assert_eq!(got.gateway, GATEWAY);
    assert_eq!(got.sensor, SENSOR);
    assert_eq!(got.seq, want.seq);
    assert_eq!(got.ts, record::format_ts(want.ts), "seq {}", want.seq);
    let expected: Vec<(String, serde_json::Value)> = want
        .fields
        .iter()
        .map(|f| (f.name.to_string(), f.value.to_json()))
        .collect();
    assert_eq!(got.fields.clone().into_vec(), expected, "seq {}", want.seq);
}

/// The last line of `open`'s stderr: the summary.
fn summary(out: &Outcome) -> &str {
    out.stderr.lines().last().unwrap_or_default()
}

#[test]
fn open_prints_each_record_once_and_a_summary() {
    let consumer = Consumer::new();
    let mut sealer = consumer.sealer();
    let batches = [readings(0..=2), readings(3..=4), readings(5..=7)];
    let messages: Vec<Vec<u8>> = batches.iter().map(|b| seal_batch(&mut sealer, b)).collect();
    // A message re-sent after a reconnect arrives twice.
    let mut lines = messages.clone();
    lines.push(messages[1].clone());

    let out = consumer.open(&lines);
    assert_eq!(out.code, 0, "{}", out.shown());
    let got = printed(&out.stdout);
    let want: Vec<&Record> = batches.iter().flatten().collect();
    assert_eq!(got.len(), want.len(), "{}", out.shown());
    for (g, w) in got.iter().zip(&want) {
        assert_same(g, w);
    }
    assert_eq!(
        summary(&out),
        "opened 4 messages, 8 records, 2 duplicates, 0 records missing in 0 gaps, 0 rejected",
        "{}",
        out.shown()
    );
}

#[test]
fn open_rejects_a_message_changed_by_one_byte() {
    let consumer = Consumer::new();
    let mut sealer = consumer.sealer();
    let batches = [readings(0..=2), readings(3..=4), readings(5..=7)];
    let mut messages: Vec<Vec<u8>> = batches.iter().map(|b| seal_batch(&mut sealer, b)).collect();

    // One letter of a column name in the second payload becomes another:
    // still well-formed CBOR, no longer what was signed.
    let original = messages[1].clone();
    let at = original
        .windows(7)
        .position(|w| w == b"cadence")
        .expect("a clear column name");
    messages[1][at] = b'k';
    assert_ne!(messages[1], original);

    let out = consumer.open(&messages);
    // 65 is EX_DATAERR.
    assert_eq!(out.code, 65, "{}", out.shown());
    let got = printed(&out.stdout);
    let seqs: Vec<u64> = got.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 5, 6, 7], "{}", out.shown());
    for (g, w) in got.iter().zip(batches[0].iter().chain(&batches[2])) {
        assert_same(g, w);
    }
    assert!(
        out.stderr.contains("rejected message #2 at byte "),
        "{}",
        out.shown()
    );
    assert!(
        out.stderr.contains("signature does not verify"),
        "{}",
        out.shown()
    );
    // The altered message's records are missing: 3 and 4, one gap.
    assert_eq!(
        summary(&out),
        "opened 2 messages, 6 records, 0 duplicates, 2 records missing in 1 gap, 1 rejected",
        "{}",
        out.shown()
    );
}

#[test]
fn open_rejects_a_message_signed_by_an_untrusted_key() {
    let consumer = Consumer::new();
    let mut sealer = consumer.sealer();
    let stranger = seal::keygen(consumer.dir.path(), "stranger").expect("make another key");
    let mut forger = consumer.sealer_with(&stranger.key_path);

    // The stranger claims seqs 3..=4 of the same gateway and sensor.
    let mut forged_records = readings(3..=4);
    for r in &mut forged_records {
        r.fields[0].value = Value::Float(999.0);
    }
    let messages = vec![
        seal_batch(&mut sealer, &readings(0..=2)),
        seal_batch(&mut forger, &forged_records),
        seal_batch(&mut sealer, &readings(5..=7)),
    ];

    let out = consumer.open(&messages);
    assert_eq!(out.code, 65, "{}", out.shown());
    let seqs: Vec<u64> = printed(&out.stdout).iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 5, 6, 7], "{}", out.shown());
    assert!(!out.stdout.contains("999"), "{}", out.shown());
    let reason = out
        .stderr
        .lines()
        .find(|l| l.starts_with("rejected message #2 at byte "))
        .unwrap_or_else(|| panic!("no rejection line\n{}", out.shown()));
    assert!(
        reason.contains(&stranger.kid) && reason.contains("not a trusted gateway key"),
        "{reason}"
    );
    assert_eq!(
        summary(&out),
        "opened 2 messages, 6 records, 0 duplicates, 2 records missing in 1 gap, 1 rejected",
        "{}",
        out.shown()
    );
}

#[test]
fn open_counts_missing_records_and_the_gaps_they_form() {
    let consumer = Consumer::new();
    let mut sealer = consumer.sealer();
    let messages = vec![
        seal_batch(&mut sealer, &readings(0..=9)),
        seal_batch(&mut sealer, &readings(20..=29)),
    ];
    let out = consumer.open(&messages);
    assert_eq!(out.code, 0, "{}", out.shown());
    assert_eq!(printed(&out.stdout).len(), 20, "{}", out.shown());
    assert_eq!(
        summary(&out),
        "opened 2 messages, 20 records, 0 duplicates, 10 records missing in 1 gap, 0 rejected",
        "{}",
        out.shown()
    );
}

#[test]
fn open_trusts_every_pub_in_a_directory_so_a_rotated_gateway_key_is_accepted() {
    let consumer = Consumer::new();
    let trust_dir = consumer.dir.join("trusted");
    fs::create_dir(&trust_dir).unwrap();
    let old = seal::keygen(&trust_dir, "gateway-old").expect("make the old key");
    let new = seal::keygen(&trust_dir, "gateway-new").expect("make the new key");
    // Private keys beside the .pub files are not trusted as such: ignored.
    let stranger = seal::keygen(consumer.dir.path(), "stranger").expect("make another key");

    let messages = vec![
        seal_batch(&mut consumer.sealer_with(&old.key_path), &readings(0..=2)),
        seal_batch(&mut consumer.sealer_with(&new.key_path), &readings(3..=4)),
        seal_batch(
            &mut consumer.sealer_with(&stranger.key_path),
            &readings(5..=5),
        ),
    ];
    let out = consumer.open_with(&["--trust".as_ref(), trust_dir.as_os_str()], &messages);
    assert_eq!(out.code, 65, "{}", out.shown());
    let seqs: Vec<u64> = printed(&out.stdout).iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4], "{}", out.shown());
    let reason = out
        .stderr
        .lines()
        .find(|l| l.starts_with("rejected message #3 at byte "))
        .unwrap_or_else(|| panic!("no rejection line\n{}", out.shown()));
    assert!(
        reason.contains(&stranger.kid) && reason.contains("not a trusted gateway key"),
        "{reason}"
    );
    assert_eq!(
        summary(&out),
        "opened 2 messages, 5 records, 0 duplicates, 0 records missing in 0 gaps, 1 rejected",
        "{}",
        out.shown()
    );

    // A directory without any .pub is refused before reading anything.
    let empty = consumer.dir.join("empty");
    fs::create_dir(&empty).unwrap();
    let out = consumer.open_with(&["--trust".as_ref(), empty.as_os_str()], &messages);
    assert_eq!(out.code, 66, "{}", out.shown());
    assert!(out.stderr.contains("no .pub file"), "{}", out.shown());
}

#[test]
fn open_with_state_prints_only_new_records_on_the_second_run() {
    let consumer = Consumer::new();
    let mut sealer = consumer.sealer();
    let m: Vec<Vec<u8>> = [readings(0..=2), readings(3..=4), readings(5..=7)]
        .iter()
        .map(|b| seal_batch(&mut sealer, b))
        .collect();
    let state = consumer.dir.join("open.state");
    let args = [
        "--trust".as_ref(),
        consumer.gateway_pub.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
    ];

    let first = consumer.open_with(&args, &m[..2]);
    assert_eq!(first.code, 0, "{}", first.shown());
    assert_eq!(printed(&first.stdout).len(), 5, "{}", first.shown());
    assert!(state.exists(), "no state file written");

    // Overlapping input: the first two messages again (one of them sealed
    // anew: other bytes, same records), then a new one.
    let resealed = seal_batch(&mut sealer, &readings(3..=4));
    let second = consumer.open_with(&args, &[m[0].clone(), resealed, m[2].clone()]);
    assert_eq!(second.code, 0, "{}", second.shown());
    let seqs: Vec<u64> = printed(&second.stdout).iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [5, 6, 7], "{}", second.shown());
    assert_eq!(
        summary(&second),
        "opened 3 messages, 3 records, 5 duplicates, 0 records missing in 0 gaps, 0 rejected",
        "{}",
        second.shown()
    );
    // No temporary file left beside the state.
    let names: Vec<_> = fs::read_dir(consumer.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("open.state"))
        .collect();
    assert_eq!(names, ["open.state"]);
}

#[test]
fn open_with_state_rejects_a_range_replayed_with_other_content_across_runs() {
    let consumer = Consumer::new();
    let mut sealer = consumer.sealer();
    let state = consumer.dir.join("open.state");
    let args = [
        "--trust".as_ref(),
        consumer.gateway_pub.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
    ];
    let first = consumer.open_with(&args, &[seal_batch(&mut sealer, &readings(0..=2))]);
    assert_eq!(first.code, 0, "{}", first.shown());

    let mut altered = readings(0..=2);
    altered[1].fields[0].value = Value::Float(999.0);
    let second = consumer.open_with(&args, &[seal_batch(&mut sealer, &altered)]);
    assert_eq!(second.code, 65, "{}", second.shown());
    assert!(second.stdout.is_empty(), "{}", second.shown());
    assert!(
        second.stderr.contains(&format!(
            "rejected message #1 at byte 0: conflict: seq 0..2 of {GATEWAY}/{SENSOR}/{EPOCH} seen before with different content"
        )),
        "{}",
        second.shown()
    );
    assert_eq!(
        summary(&second),
        "opened 0 messages, 0 records, 0 duplicates, 0 records missing in 0 gaps, 1 rejected",
        "{}",
        second.shown()
    );

    // A state file that is not one is refused, naming it.
    fs::write(&state, "garbage").unwrap();
    let third = consumer.open_with(&args, &[]);
    assert_eq!(third.code, 65, "{}", third.shown());
    assert!(third.stderr.contains("open.state"), "{}", third.shown());
}

#[test]
fn open_reports_each_missing_range_before_the_summary() {
    let consumer = Consumer::new();
    let mut sealer = consumer.sealer();
    let messages = vec![
        seal_batch(&mut sealer, &readings(0..=1)),
        seal_batch(&mut sealer, &readings(5..=6)),
        seal_batch(&mut sealer, &readings(9..=9)),
    ];
    let out = consumer.open(&messages);
    assert_eq!(out.code, 0, "{}", out.shown());
    let gaps: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("gap:"))
        .collect();
    assert_eq!(
        gaps,
        [
            format!("gap: {GATEWAY}/{SENSOR} epoch {EPOCH}: seq 2..4 missing"),
            format!("gap: {GATEWAY}/{SENSOR} epoch {EPOCH}: seq 7..8 missing"),
        ],
        "{}",
        out.shown()
    );
    assert_eq!(
        summary(&out),
        "opened 3 messages, 5 records, 0 duplicates, 5 records missing in 2 gaps, 0 rejected"
    );
}

#[test]
fn open_format_csv_prints_a_header_and_one_line_per_record() {
    let consumer = Consumer::new();
    let mut sealer = consumer.sealer();
    let messages = vec![
        seal_batch(&mut sealer, &readings(0..=1)),
        seal_batch(&mut sealer, &readings(1..=2)),
    ];
    let out = consumer.open_with(
        &[
            "--trust".as_ref(),
            consumer.gateway_pub.as_os_str(),
            "--format".as_ref(),
            "csv".as_ref(),
        ],
        &messages,
    );
    assert_eq!(out.code, 0, "{}", out.shown());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "gateway,sensor,seq,ts,speed,heart_rate,cadence,note,pedalling",
        "{}",
        out.shown()
    );
    assert_eq!(lines.len(), 4, "{}", out.shown());
    let r = reading(1);
    assert_eq!(
        lines[2],
        format!(
            "{GATEWAY},{SENSOR},1,{},22.25,121,85,\"confidential-1 \"\"q\"\" ü\",false",
            record::format_ts(r.ts)
        ),
        "{}",
        out.shown()
    );
    assert!(lines[3].starts_with(&format!("{GATEWAY},{SENSOR},2,")));
    assert_eq!(
        summary(&out),
        "opened 2 messages, 3 records, 1 duplicates, 0 records missing in 0 gaps, 0 rejected"
    );
}

#[test]
fn keygen_recipient_says_to_copy_only_the_pub_to_gateways() {
    let dir = TempDir::new();
    let out = run(
        sensorgate([
            Path::new("keygen"),
            "--recipient".as_ref(),
            "--out".as_ref(),
            dir.path(),
            "--name".as_ref(),
            "recipient".as_ref(),
        ]),
        b"",
        QUICK,
    );
    assert_eq!(out.code, 0, "{}", out.shown());
    let key = dir.join("recipient.key");
    let public = dir.join("recipient.pub");
    assert_eq!(mode(&key), 0o600);
    let kid = seal::load_recipient_key(&key)
        .expect("a P-256 recipient key")
        .kid()
        .to_owned();
    assert_eq!(seal::load_public_key(&public).unwrap().kid(), kid);
    assert_eq!(out.stdout, format!("{kid}\n"), "{}", out.shown());
    assert!(
        out.stderr.contains("recipient (cloud-side) key"),
        "{}",
        out.shown()
    );
    assert!(
        out.stderr
            .contains(&format!("copy ONLY {} to the gateways", public.display())),
        "{}",
        out.shown()
    );
}

// ---------------------------------------------------------------------------
// demo
// ---------------------------------------------------------------------------

#[test]
fn demo_with_200_records_exits_0_and_prints_the_summary_line() {
    let out = run(sensorgate(["demo", "--count", "200"]), b"", DEMO_LIMIT);
    assert_eq!(out.code, 0, "{}", out.shown());
    assert_eq!(
        out.stdout.lines().last(),
        Some("demo: 200 records sent, 200 verified, 0 lost"),
        "{}",
        out.shown()
    );
}

#[test]
fn open_strict_order_rejects_an_old_range_after_a_newer_one() {
    let consumer = Consumer::new();
    let mut sealer = consumer.sealer();
    let old = seal_batch(&mut sealer, &readings(0..=2));
    let newer = seal_batch(&mut sealer, &readings(5..=7));
    let lines = [newer.clone(), old, newer];

    // Without the flag a late message fills the hole (at-least-once).
    let relaxed = consumer.open(&lines);
    assert_eq!(relaxed.code, 0, "{}", relaxed.shown());
    assert_eq!(
        summary(&relaxed),
        "opened 3 messages, 6 records, 3 duplicates, 2 records missing in 1 gap, 0 rejected",
        "{}",
        relaxed.shown()
    );

    let args = [
        "--trust".as_ref(),
        consumer.gateway_pub.as_os_str(),
        "--strict-order".as_ref(),
    ];
    let strict = consumer.open_with(&args, &lines);
    assert_eq!(strict.code, 65, "{}", strict.shown());
    assert_eq!(
        printed(&strict.stdout)
            .iter()
            .map(|p| p.seq)
            .collect::<Vec<_>>(),
        [5, 6, 7],
        "{}",
        strict.shown()
    );
    assert!(
        strict.stderr.contains("rejected message #2 at byte ")
            && strict.stderr.contains(&format!(
                ": replay: seq 0..2 is older than seq 7 already seen on {GATEWAY}/{SENSOR}/{EPOCH}"
            )),
        "{}",
        strict.shown()
    );
    // The same newer message again is still an ordinary duplicate.
    assert_eq!(
        summary(&strict),
        "opened 2 messages, 3 records, 3 duplicates, 0 records missing in 0 gaps, 1 rejected",
        "{}",
        strict.shown()
    );
}

/// Sends each line read from `pipe` on the returned receiver.
fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Appends what `rx` holds to `text`, waiting at most `wait` for each line,
/// until `done(line)` is true (returns true) or nothing more comes (false).
fn collect_until(
    rx: &mpsc::Receiver<String>,
    text: &mut String,
    wait: Duration,
    mut done: impl FnMut(&str) -> bool,
) -> bool {
    while let Ok(line) = rx.recv_timeout(wait) {
        text.push_str(&line);
        text.push('\n');
        if done(&line) {
            return true;
        }
    }
    false
}

/// `sensorgate open --mqtt …` started in the background; `publish` runs
/// once it said it subscribed, with its stdout lines and its pid. Waits
/// (bounded) for its exit.
fn open_mqtt(
    mut cmd: Command,
    publish: impl FnOnce(&mpsc::Receiver<String>, &mut String, u32),
    limit: Duration,
) -> Outcome {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start the sensorgate binary");
    let out_lines = lines_of(child.stdout.take().expect("piped stdout"));
    let err_lines = lines_of(child.stderr.take().expect("piped stderr"));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if !collect_until(&err_lines, &mut stderr, QUICK, |l| {
        l.contains("subscribed to")
    }) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("open --mqtt did not subscribe within {QUICK:?}\n{stderr}");
    }
    publish(&out_lines, &mut stdout, child.id());
    let exited = wait_until(limit, Duration::from_millis(20), || {
        !matches!(child.try_wait(), Ok(None))
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for sensorgate");
    // The pipes close when the process is gone; bounded all the same.
    collect_until(&out_lines, &mut stdout, Duration::from_secs(10), |_| false);
    collect_until(&err_lines, &mut stderr, Duration::from_secs(10), |_| false);
    assert!(
        exited,
        "open --mqtt did not exit within {limit:?}; killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    Outcome {
        code: status.code().expect("exited normally"),
        stdout,
        stderr,
    }
}

/// A rig, and a consumer.toml for it (the rig's client certificate).
fn mqtt_consumer() -> (support::Rig, PathBuf, Sealer) {
    let rig = support::Rig::new();
    let config = rig.dir.join("consumer.toml");
    fs::write(
        &config,
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"test-open\"\n\
             ca_file = {}\ncert_file = {}\nkey_file = {}\nkeepalive = \"5s\"\n\n\
             [consumer]\ntopic_filter = \"sensorgate/+/+\"\n",
            rig.broker.port(),
            toml_path(&rig.tls.ca),
            toml_path(&rig.tls.client_cert),
            toml_path(&rig.tls.client_key),
        ),
    )
    .unwrap();
    let sealer = Sealer::new(
        GATEWAY,
        EPOCH,
        seal::load_signing_key(&rig.gateway_key.key_path).expect("signing key"),
        seal::load_public_key(&rig.recipient.pub_path).expect("recipient key"),
        &["heart_rate".to_string(), "note".to_string()],
    );
    (rig, config, sealer)
}

/// `sensorgate open --mqtt --config CONFIG --recipient-key … --trust … ARGS`.
fn open_mqtt_command(rig: &support::Rig, config: &Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = sensorgate([
        Path::new("open"),
        "--mqtt".as_ref(),
        "--config".as_ref(),
        config,
        "--recipient-key".as_ref(),
        &rig.recipient.key_path,
        "--trust".as_ref(),
        &rig.gateway_key.pub_path,
    ]);
    cmd.args(args).current_dir(rig.dir.path());
    cmd
}

/// Publishes `payloads` with QoS 1 to `topic` as client `id` (the consumer's
/// certificate and CA), waiting for the broker's acknowledgements.
fn publish_to(rig: &support::Rig, config: &Path, id: &str, topic: &str, payloads: Vec<Vec<u8>>) {
    let cfg = sensorgate::consumer::load(config).expect("the consumer config loads");
    let tls = sensorgate::uplink::tls::load_client_config(&cfg.mqtt).expect("TLS config");
    support::publish_all(
        support::mqtt_options(id, rig.broker.port(), tls),
        topic,
        payloads,
        QUICK,
    );
}

#[test]
fn open_mqtt_subscribes_over_mutual_tls_prints_the_records_and_skips_the_status_topic() {
    let (rig, config, mut sealer) = mqtt_consumer();
    let batches = [readings(0..=2), readings(3..=4), readings(7..=8)];
    let messages: Vec<Vec<u8>> = batches.iter().map(|b| seal_batch(&mut sealer, b)).collect();
    let state = rig.dir.join("open.state");
    let cmd = open_mqtt_command(
        &rig,
        &config,
        &[
            "--count".as_ref(),
            "3".as_ref(),
            "--state".as_ref(),
            state.as_os_str(),
        ],
    );
    let publisher = |_: &mpsc::Receiver<String>, _: &mut String, _: u32| {
        // A gateway's status is not a sealed message: skipped, not counted.
        publish_to(
            &rig,
            &config,
            "test-pub-status",
            &format!("sensorgate/{GATEWAY}/status"),
            vec![br#"{"status":"online","gateway":"bike-pi-01"}"#.to_vec()],
        );
        publish_to(
            &rig,
            &config,
            "test-pub",
            &format!("sensorgate/{GATEWAY}/{SENSOR}"),
            messages.clone(),
        );
    };
    let out = open_mqtt(cmd, publisher, QUICK);
    assert_eq!(out.code, 0, "{}", out.shown());
    let got = printed(&out.stdout);
    let want: Vec<&Record> = batches.iter().flatten().collect();
    assert_eq!(got.len(), want.len(), "{}", out.shown());
    for (g, w) in got.iter().zip(&want) {
        assert_same(g, w);
    }
    assert!(!out.stderr.contains("rejected message"), "{}", out.shown());
    assert!(
        out.stderr.contains(&format!(
            "gap: {GATEWAY}/{SENSOR} epoch {EPOCH}: seq 5..6 missing"
        )),
        "{}",
        out.shown()
    );
    assert_eq!(
        summary(&out),
        "opened 3 messages, 7 records, 0 duplicates, 2 records missing in 1 gap, 0 rejected",
        "{}",
        out.shown()
    );
    assert!(state.exists(), "--state was not saved\n{}", out.shown());
}

#[test]
fn open_mqtt_stops_on_sigterm_with_the_summary_and_the_state_saved() {
    let (rig, config, mut sealer) = mqtt_consumer();
    let message = seal_batch(&mut sealer, &readings(0..=1));
    let state = rig.dir.join("open.state");
    let cmd = open_mqtt_command(&rig, &config, &["--state".as_ref(), state.as_os_str()]);
    let publisher = |stdout: &mpsc::Receiver<String>, text: &mut String, pid: u32| {
        publish_to(
            &rig,
            &config,
            "test-pub",
            &format!("sensorgate/{GATEWAY}/{SENSOR}"),
            vec![message.clone()],
        );
        let mut lines = 0;
        assert!(
            collect_until(stdout, text, QUICK, |_| {
                lines += 1;
                lines == 2
            }),
            "the records did not arrive within {QUICK:?}: {text}"
        );
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
    };
    let out = open_mqtt(cmd, publisher, QUICK);
    assert_eq!(out.code, 0, "{}", out.shown());
    assert_eq!(printed(&out.stdout).len(), 2, "{}", out.shown());
    assert_eq!(
        summary(&out),
        "opened 1 messages, 2 records, 0 duplicates, 0 records missing in 0 gaps, 0 rejected",
        "{}",
        out.shown()
    );
    assert!(state.exists(), "--state was not saved\n{}", out.shown());
}
