//! Interop: sealed messages are standard JOSE, and docs/FORMAT-v1.md alone is
//! enough to speak them. `tests/interop/jose_interop.py`, written from
//! FORMAT-v1.md on a stock JOSE library (jwcrypto, pinned in
//! `tests/interop/requirements.txt`), opens what the library's `Sealer`
//! seals, and seals what the `sensorgate open` binary accepts; each side
//! rejects a message with one byte changed by the other.
//!
//! The Python side runs from the venv that `scripts/install-test-deps`
//! makes in `target/interop-venv`; without it these tests fail (they never
//! skip) and say so. Every child process runs under a time limit and is
//! killed when it overstays.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sensorgate::record::{self, Field, Record, Value};
use sensorgate::seal::{self, FieldMap, Sealer};
use support::{Outcome, TempDir, run_bounded};

/// How long one run of the script or the binary may take.
const LIMIT: Duration = Duration::from_secs(60);

const GATEWAY: &str = "bike-pi-01";
const SENSOR: &str = "bike";
const EPOCH: &str = "interop-epoch";
/// The columns both sides encrypt.
const ENCRYPT: [&str; 3] = ["heart_rate", "note", "ratio"];
/// Crosses 2^53, where a JSON number stops being exact as an f64.
const FIRST_SEQ: u64 = (1 << 53) - 3;

// ---------------------------------------------------------------------------
// Running the script and the binary
// ---------------------------------------------------------------------------

/// Runs `cmd` with `stdin` as its input, for at most `LIMIT`.
fn run(cmd: Command, stdin: &[u8]) -> Outcome {
    run_bounded(cmd, stdin, LIMIT)
}

/// The venv's Python; fails the test when `scripts/install-test-deps` has
/// not made it.
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/interop-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: the interop test needs the Python venv with the pinned \
         JOSE library. Run scripts/install-test-deps (or scripts/test, which runs it).",
        python.display()
    );
    python
}

/// `jose_interop.py ARGS` in the venv.
fn script<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(python());
    cmd.arg(root.join("tests/interop/jose_interop.py"))
        .args(args);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// `sensorgate ARGS`, with no `SENSORGATE__*` variable inherited.
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

fn lines(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut input = Vec::new();
    for m in messages {
        input.extend_from_slice(m);
        input.push(b'\n');
    }
    input
}

// ---------------------------------------------------------------------------
// Keys and records
// ---------------------------------------------------------------------------

/// A gateway key and a recipient key pair, as files made by `keygen`.
struct Keys {
    _dir: TempDir,
    gateway_key: PathBuf,
    gateway_pub: PathBuf,
    recipient_key: PathBuf,
    recipient_pub: PathBuf,
}

impl Keys {
    fn new() -> Keys {
        let dir = TempDir::new();
        let gateway = seal::keygen(dir.path(), "gateway").expect("make the gateway key");
        let recipient = seal::keygen(dir.path(), "recipient").expect("make the recipient key");
        Keys {
            _dir: dir,
            gateway_key: gateway.key_path,
            gateway_pub: gateway.pub_path,
            recipient_key: recipient.key_path,
            recipient_pub: recipient.pub_path,
        }
    }

    fn sealer(&self) -> Sealer {
        Sealer::new(
            GATEWAY,
            EPOCH,
            seal::load_signing_key(&self.gateway_key).expect("load the signing key"),
            seal::load_public_key(&self.recipient_pub).expect("load the recipient key"),
            &ENCRYPT.map(String::from),
        )
        // This file is about format version 1 (JOSE); interop_v2.rs is
        // about version 2.
        .with_options(seal::SealerOptions {
            format: seal::WireFormat::V1,
            ..seal::SealerOptions::default()
        })
    }

    /// The Python side opening `messages`.
    fn python_open(&self, messages: &[Vec<u8>]) -> Outcome {
        run(
            script([
                "open".as_ref(),
                "--trust".as_ref(),
                self.gateway_pub.as_os_str(),
                "--recipient-key".as_ref(),
                self.recipient_key.as_os_str(),
            ]),
            &lines(messages),
        )
    }

    /// The Python side sealing `records`, at most `batch` per message.
    fn python_seal(&self, records: &[Record], batch: usize) -> Vec<Vec<u8>> {
        let input: String = records.iter().map(|r| record_line(r) + "\n").collect();
        let out = run(
            script([
                "seal".as_ref(),
                "--signing-key".as_ref(),
                self.gateway_key.as_os_str(),
                "--recipient-pub".as_ref(),
                self.recipient_pub.as_os_str(),
                "--epoch".as_ref(),
                EPOCH.as_ref(),
                "--encrypt".as_ref(),
                ENCRYPT.join(",").as_ref(),
                "--batch".as_ref(),
                batch.to_string().as_ref(),
            ]),
            input.as_bytes(),
        );
        assert_eq!(out.code, 0, "the script could not seal\n{}", out.shown());
        out.stdout.lines().map(|l| l.as_bytes().to_vec()).collect()
    }

    /// The `sensorgate open` binary opening `messages`.
    fn gateway_open(&self, messages: &[Vec<u8>]) -> Outcome {
        run(
            sensorgate([
                Path::new("open"),
                "--recipient-key".as_ref(),
                &self.recipient_key,
                "--trust".as_ref(),
                &self.gateway_pub,
            ]),
            &lines(messages),
        )
    }
}

/// A record with clear and encrypted fields of every type, interleaved,
/// including the edges of JSON numbers and strings.
fn reading(seq: u64) -> Record {
    let f = |name: &str, value: Value| Field {
        name: Arc::from(name),
        value,
    };
    let n = seq - FIRST_SEQ;
    Record {
        sensor: Arc::from(SENSOR),
        seq,
        ts: SystemTime::UNIX_EPOCH + Duration::new(1_764_100_000 + n, 123_456_789),
        clock: None,
        fields: vec![
            f("speed", Value::Float(21.25 + n as f64)),
            f("heart_rate", Value::Int(120 + n as i64)),
            f(
                "cadence",
                Value::Int(if n % 2 == 0 { i64::MAX } else { i64::MIN }),
            ),
            f(
                "note",
                Value::Str(format!("confidential-{n} \"q\" ü \u{1F6B2} \\ \n")),
            ),
            f("pedalling", Value::Bool(n % 2 == 0)),
            f(
                "ratio",
                Value::Float(if n % 3 == 0 { 2.0 } else { 1.5e300 }),
            ),
            f("tiny", Value::Float(-5e-324)),
        ],
    }
}

/// A record none of whose fields is encrypted (a message without `jwe`).
fn clear_reading(seq: u64) -> Record {
    let mut r = reading(seq);
    r.fields.retain(|f| !ENCRYPT.contains(&&*f.name));
    r
}

/// One record as `open` prints it, which is also what the script seals.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Printed {
    gateway: String,
    sensor: String,
    seq: u64,
    ts: String,
    fields: FieldMap,
}

fn printed_of(r: &Record) -> Printed {
    let mut fields = FieldMap::new();
    for f in &r.fields {
        fields.push(f.name.to_string(), f.value.to_json());
    }
    Printed {
        gateway: GATEWAY.into(),
        sensor: r.sensor.to_string(),
        seq: r.seq,
        ts: record::format_ts(r.ts),
        fields,
    }
}

fn record_line(r: &Record) -> String {
    serde_json::to_string(&printed_of(r)).expect("a record serializes")
}

/// Asserts that `stdout` holds exactly `want`, one JSON object per line
/// with members in `open`'s order, every field with its value and JSON type
/// (an integer is not a float) in column order.
fn assert_records(stdout: &str, want: &[Record], shown: &str) {
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got.len(), want.len(), "record count\n{shown}");
    for (line, want) in got.iter().zip(want) {
        let top: FieldMap = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert_eq!(
            top.names().collect::<Vec<_>>(),
            ["gateway", "sensor", "seq", "ts", "fields"],
            "{line}"
        );
        let got: Printed = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let want = printed_of(want);
        assert_eq!(
            (&got.gateway, &got.sensor, got.seq, &got.ts),
            (&want.gateway, &want.sensor, want.seq, &want.ts),
            "{line}"
        );
        assert_eq!(got.fields.into_vec(), want.fields.into_vec(), "{line}");
    }
}

/// Seals `records` as the gateway does, one message per chunk of `sizes`.
fn gateway_seal(keys: &Keys, records: &[Record], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut sealer = keys.sealer();
    let mut rest = records;
    let mut messages = Vec::new();
    for &n in sizes {
        let (batch, tail) = rest.split_at(n);
        messages.push(sealer.seal(batch).expect("seal a batch").bytes);
        rest = tail;
    }
    assert!(rest.is_empty(), "sizes cover every record");
    messages
}

/// Batches of 1, 3 and 10 records with encrypted fields, then 2 without any.
fn mixed_records() -> (Vec<Record>, Vec<usize>) {
    let mut records: Vec<Record> = (FIRST_SEQ..FIRST_SEQ + 14).map(reading).collect();
    records.extend((FIRST_SEQ + 14..FIRST_SEQ + 16).map(clear_reading));
    (records, vec![1, 3, 10, 2])
}

/// `message` with one base64url character of the JWS member `member`
/// changed, in the middle of its value (so the decoded bytes change).
fn tamper(message: &[u8], member: &str) -> Vec<u8> {
    let text = std::str::from_utf8(message).expect("a sealed message is UTF-8");
    let key = format!("\"{member}\":\"");
    let start = text
        .find(&key)
        .unwrap_or_else(|| panic!("no {member} in {text}"))
        + key.len();
    let len = text[start..].find('"').expect("the member's end");
    let at = start + len / 2;
    let mut bytes = message.to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    bytes
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[test]
fn a_stock_jose_library_opens_what_the_gateway_seals() {
    let keys = Keys::new();
    let (records, sizes) = mixed_records();
    let messages = gateway_seal(&keys, &records, &sizes);

    let out = keys.python_open(&messages);
    assert_eq!(out.code, 0, "{}", out.shown());
    assert_records(&out.stdout, &records, &out.shown());
}

#[test]
fn sensorgate_open_accepts_what_a_stock_jose_library_seals() {
    let keys = Keys::new();
    let (records, _) = mixed_records();
    // 7 + 7 records with encrypted fields, then 2 without (no `jwe`).
    let messages = keys.python_seal(&records, 7);
    assert_eq!(messages.len(), 3, "messages sealed by the script");

    let out = keys.gateway_open(&messages);
    assert_eq!(out.code, 0, "{}", out.shown());
    assert_records(&out.stdout, &records, &out.shown());
    assert_eq!(
        out.stderr.lines().last().unwrap_or_default(),
        "opened 3 messages, 16 records, 0 duplicates, 0 records missing in 0 gaps, 0 rejected",
        "{}",
        out.shown()
    );
}

#[test]
fn sensorgate_open_rejects_a_stock_library_message_with_one_byte_changed() {
    let keys = Keys::new();
    let records: Vec<Record> = (FIRST_SEQ..FIRST_SEQ + 3).map(reading).collect();
    let messages = keys.python_seal(&records, 3);
    assert_eq!(messages.len(), 1);
    let sound = keys.gateway_open(&messages);
    assert_eq!(
        sound.code,
        0,
        "the untampered message must open\n{}",
        sound.shown()
    );

    for member in ["protected", "payload", "signature"] {
        let out = keys.gateway_open(&[tamper(&messages[0], member)]);
        assert_eq!(out.code, 65, "{member} changed\n{}", out.shown());
        assert!(out.stdout.is_empty(), "{member} changed\n{}", out.shown());
        assert!(
            out.stderr.contains("rejected message at line 1"),
            "{member} changed\n{}",
            out.shown()
        );
    }
}

#[test]
fn a_stock_jose_library_rejects_a_gateway_message_with_one_byte_changed() {
    let keys = Keys::new();
    let records: Vec<Record> = (FIRST_SEQ..FIRST_SEQ + 3).map(reading).collect();
    let messages = gateway_seal(&keys, &records, &[3]);
    let sound = keys.python_open(&messages);
    assert_eq!(
        sound.code,
        0,
        "the untampered message must open\n{}",
        sound.shown()
    );

    for member in ["protected", "payload", "signature"] {
        let out = keys.python_open(&[tamper(&messages[0], member)]);
        assert_ne!(out.code, 0, "{member} changed\n{}", out.shown());
        assert!(out.stdout.is_empty(), "{member} changed\n{}", out.shown());
        assert!(
            out.stderr.contains("rejected message at line 1"),
            "{member} changed\n{}",
            out.shown()
        );
    }
}

/// The script's own check of its JWE against the gateway: a message it
/// seals opens in the script too, so a failure above is the format's, not
/// the script's.
#[test]
fn the_script_opens_what_it_seals() {
    let keys = Keys::new();
    let (records, _) = mixed_records();
    let messages = keys.python_seal(&records, 10);
    let out = keys.python_open(&messages);
    assert_eq!(out.code, 0, "{}", out.shown());
    assert_records(&out.stdout, &records, &out.shown());
}
