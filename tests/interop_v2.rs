//! Interop, format version 2: sealed messages are standard COSE and CBOR,
//! and docs/FORMAT.md alone is enough to speak them, in two languages.
//!
//! - `tests/interop/cose_interop.py`, written from FORMAT.md on a stock COSE
//!   library (pycose, with cbor2; pinned in `tests/interop/requirements.txt`),
//!   opens what the library's `Sealer` seals, and seals what the
//!   `sensorgate open` binary must accept.
//! - `tests/interop/js/cose_interop.mjs`, written from FORMAT.md on the stock
//!   npm COSE library @ldclabs/cose-ts (pinned in `tests/interop/js/
//!   package-lock.json`), opens what the `Sealer` seals.
//!
//! Both print exactly the lines `sensorgate open` prints, and read gap
//! notices (the gateway's, and the binary a pycose one). Each side rejects
//! a message with one byte of its signature or ciphertext changed, and a
//! message whose encryption was tampered with and then signed again (so
//! that only the AES key wrap, the AES-GCM tag or the external AAD can
//! tell).
//!
//! The Python side runs from the venv that `scripts/install-test-deps`
//! makes in `target/interop-venv`, the JavaScript side from the
//! `tests/interop/js/node_modules` it installs with `npm ci`; without them
//! these tests fail (they never skip) and say so. Every child process runs
//! under a time limit and is killed when it overstays.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sensorgate::record::{self, Field, Record, Value};
use sensorgate::seal::{self, FieldMap, GapCause, GapNotice, Sealer, SealerOptions, WireFormat};
use support::{Outcome, TempDir, run_bounded};

/// How long one run of a script or the binary may take.
const LIMIT: Duration = Duration::from_secs(60);

const GATEWAY: &str = "bike-pi-01";
const SENSOR: &str = "bike";
const EPOCH: &str = "interop-epoch";
/// The columns both sides encrypt. `heart_rate` sits between the clear
/// `speed` and `cadence`.
const ENCRYPT: [&str; 4] = ["heart_rate", "note", "ratio", "label"];
/// Crosses 2^53, where a JSON number (and a JavaScript Number) stops being
/// exact.
const FIRST_SEQ: u64 = (1 << 53) - 3;
/// What `open` exits with when it rejects a message (EX_DATAERR).
const REJECTED: i32 = 65;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Running the scripts and the binary
// ---------------------------------------------------------------------------

/// Runs `cmd` with `stdin` as its input, for at most `LIMIT`.
fn run(cmd: Command, stdin: &[u8]) -> Outcome {
    run_bounded(cmd, stdin, LIMIT)
}

/// The venv's Python; fails the test when `scripts/install-test-deps` has
/// not made it.
fn python() -> PathBuf {
    let python = root().join("target/interop-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: the interop test needs the Python venv with the pinned \
         COSE library (pycose). Run scripts/install-test-deps (or scripts/test, \
         which runs it).",
        python.display()
    );
    python
}

/// `cose_interop.py ARGS` in the venv.
fn python_script<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/interop/cose_interop.py"))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// `node` from PATH, and the installed `node_modules`; fails the test when
/// either is missing.
fn node() -> PathBuf {
    let modules = root().join("tests/interop/js/node_modules/@ldclabs/cose-ts/package.json");
    assert!(
        modules.is_file(),
        "{} is missing: the interop test needs the pinned JavaScript COSE library \
         (@ldclabs/cose-ts). Run scripts/install-test-deps (or scripts/test, which \
         runs it).",
        modules.display()
    );
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("node"))
        .find(|p| p.is_file())
        .expect(
            "no `node` on PATH: the interop test runs a JavaScript consumer. Run \
             scripts/install-test-deps (or scripts/test, which runs it).",
        )
}

/// `node cose_interop.mjs ARGS`.
fn js_script<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(node());
    cmd.arg(root().join("tests/interop/js/cose_interop.mjs"))
        .args(args);
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

/// The messages as one CBOR sequence (RFC 8742): nothing between them.
fn sequence(messages: &[Vec<u8>]) -> Vec<u8> {
    messages.concat()
}

// ---------------------------------------------------------------------------
// Keys and records
// ---------------------------------------------------------------------------

/// Which consumer opens.
#[derive(Debug, Clone, Copy)]
enum Consumer {
    Python,
    JavaScript,
}

/// A gateway key and a recipient key pair, as files made by `keygen`, in a
/// folder that also takes the message files.
struct Keys {
    dir: TempDir,
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
            dir,
            gateway_key: gateway.key_path,
            gateway_pub: gateway.pub_path,
            recipient_key: recipient.key_path,
            recipient_pub: recipient.pub_path,
        }
    }

    /// A version 2 sealer (set explicitly, whatever the default) that makes
    /// a new data key every two messages: some messages share one (the IV
    /// counter goes up), some do not.
    fn sealer(&self) -> Sealer {
        Sealer::new(
            GATEWAY,
            EPOCH,
            seal::load_signing_key(&self.gateway_key).expect("load the signing key"),
            seal::load_public_key(&self.recipient_pub).expect("load the recipient key"),
            &ENCRYPT.map(String::from),
        )
        .with_options(SealerOptions {
            format: WireFormat::V2,
            rotate_after_messages: 2,
            ..SealerOptions::default()
        })
    }

    /// Writes `messages` as one CBOR sequence to a file; its path.
    fn write(&self, name: &str, messages: &[Vec<u8>]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, sequence(messages)).expect("write the messages");
        path
    }

    /// `consumer` opening `messages` (from a file).
    fn open_with(&self, consumer: Consumer, messages: &[Vec<u8>]) -> Outcome {
        let file = self.write("to-open.cbor", messages);
        let args = [
            "open".as_ref(),
            file.as_os_str(),
            self.gateway_pub.as_os_str(),
            self.recipient_key.as_os_str(),
        ];
        match consumer {
            Consumer::Python => run(python_script(args), b""),
            Consumer::JavaScript => run(js_script(args), b""),
        }
    }

    /// The Python side sealing `records`, at most `batch` per message.
    fn python_seal(&self, records: &[Record], batch: usize) -> Vec<Vec<u8>> {
        let input = self.dir.join("records.jsonl");
        let out = self.dir.join("sealed.cbor");
        let lines: String = records.iter().map(|r| record_line(r) + "\n").collect();
        std::fs::write(&input, lines).expect("write the records");
        let outcome = run(
            python_script([
                "seal".as_ref(),
                input.as_os_str(),
                self.gateway_key.as_os_str(),
                self.recipient_pub.as_os_str(),
                "--epoch".as_ref(),
                EPOCH.as_ref(),
                "--encrypt".as_ref(),
                ENCRYPT.join(",").as_ref(),
                "--batch".as_ref(),
                batch.to_string().as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
            ]),
            b"",
        );
        assert_eq!(
            outcome.code,
            0,
            "the script could not seal\n{}",
            outcome.shown()
        );
        split_sequence(&std::fs::read(&out).expect("read the sealed messages"))
    }

    /// The Python side sealing a gap notice for `first..=last`.
    fn python_notice(&self, first: u64, last: u64, lost: u64) -> Vec<u8> {
        let out = self.dir.join("notice.cbor");
        let outcome = run(
            python_script([
                "notice".as_ref(),
                self.gateway_key.as_os_str(),
                "--gateway".as_ref(),
                GATEWAY.as_ref(),
                "--sensor".as_ref(),
                SENSOR.as_ref(),
                "--epoch".as_ref(),
                EPOCH.as_ref(),
                "--seq".as_ref(),
                first.to_string().as_ref(),
                last.to_string().as_ref(),
                "--lost".as_ref(),
                lost.to_string().as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
            ]),
            b"",
        );
        assert_eq!(
            outcome.code,
            0,
            "the script could not seal a notice\n{}",
            outcome.shown()
        );
        std::fs::read(&out).expect("read the notice")
    }

    /// `messages` with `what` changed by the script's `tamper` (signed again
    /// with the gateway key, except for `signature`).
    fn python_tamper(&self, messages: &[Vec<u8>], what: &str) -> Vec<Vec<u8>> {
        let input = self.write("to-tamper.cbor", messages);
        let out = self.dir.join("tampered.cbor");
        let outcome = run(
            python_script([
                "tamper".as_ref(),
                input.as_os_str(),
                self.gateway_key.as_os_str(),
                what.as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
            ]),
            b"",
        );
        assert_eq!(
            outcome.code,
            0,
            "the script could not tamper\n{}",
            outcome.shown()
        );
        split_sequence(&std::fs::read(&out).expect("read the tampered messages"))
    }

    /// The `sensorgate open` binary opening `messages` from standard input.
    fn gateway_open(&self, messages: &[Vec<u8>]) -> Outcome {
        run(
            sensorgate([
                Path::new("open"),
                "--recipient-key".as_ref(),
                &self.recipient_key,
                "--trust".as_ref(),
                &self.gateway_pub,
            ]),
            &sequence(messages),
        )
    }
}

/// The items of a CBOR sequence of sealed messages, found from their
/// structure: a tag 18 (`d2`) around an array of four byte strings and
/// maps. Only what a sealed message holds at its top level is understood.
fn split_sequence(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        let len = sign1_len(bytes);
        messages.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    messages
}

/// The length of the COSE_Sign1 at the start of `b`.
fn sign1_len(b: &[u8]) -> usize {
    assert_eq!(
        b[..2],
        [0xd2, 0x84],
        "a tagged COSE_Sign1, an array of four"
    );
    let mut at = 2;
    for _ in 0..4 {
        at = item_end(b, at);
    }
    at
}

/// (major type, argument, where the content starts) of the CBOR head at `at`.
fn head(b: &[u8], at: usize) -> (u8, u64, usize) {
    let (major, info) = (b[at] >> 5, b[at] & 31);
    let size = match info {
        0..=23 => return (major, info as u64, at + 1),
        24..=27 => 1usize << (info - 24),
        _ => panic!("an indefinite length or a reserved value at byte {at}"),
    };
    let mut arg = 0u64;
    for &x in &b[at + 1..at + 1 + size] {
        arg = arg << 8 | x as u64;
    }
    (major, arg, at + 1 + size)
}

/// The end of the CBOR item at `at` (definite lengths only).
fn item_end(b: &[u8], at: usize) -> usize {
    let (major, arg, mut end) = head(b, at);
    match major {
        0 | 1 | 7 => end,
        2 | 3 => end + arg as usize,
        4 => {
            for _ in 0..arg {
                end = item_end(b, end);
            }
            end
        }
        5 => {
            for _ in 0..2 * arg {
                end = item_end(b, end);
            }
            end
        }
        6 => item_end(b, end),
        _ => unreachable!(),
    }
}

/// `message` with one byte of its signature changed (the Sign1's last item,
/// 64 bytes: the end of the message).
fn tamper_signature(message: &[u8]) -> Vec<u8> {
    let mut bytes = message.to_vec();
    let at = bytes.len() - 32;
    bytes[at] ^= 0x01;
    bytes
}

/// `message` with one byte of its COSE_Encrypt ciphertext changed, in place
/// (so the signature no longer verifies). The ciphertext follows the
/// COSE_Encrypt's fixed start `96([h'a10103', {5: iv}, ...`.
fn tamper_ciphertext(message: &[u8]) -> Vec<u8> {
    let start: &[u8] = &[0xd8, 0x60, 0x84, 0x43, 0xa1, 0x01, 0x03, 0xa1, 0x05, 0x4c];
    let at = message
        .windows(start.len())
        .position(|w| w == start)
        .expect("a COSE_Encrypt in the message")
        + start.len()
        + 12;
    let (major, len, content) = head(message, at);
    assert_eq!(major, 2, "the ciphertext is a byte string");
    let mut bytes = message.to_vec();
    bytes[content + len as usize / 2] ^= 0x01;
    bytes
}

/// A record with clear and encrypted fields of every type, interleaved,
/// including the edges of JSON numbers and strings, fields some records do
/// not have, and times that need each time unit and go back once.
fn reading(seq: u64) -> Record {
    let f = |name: &str, value: Value| Field {
        name: Arc::from(name),
        value,
    };
    let n = seq - FIRST_SEQ;
    // Batches of 1, 3, 10 and 2 (see mixed_records): whole seconds (tu 0),
    // then milliseconds (tu 3), microseconds (tu 6) and nanoseconds (tu 9).
    let nanos = match n {
        0 | 1 | 3 => 0,
        2 => 250_000_000,
        9 => 123_456_000,
        14 | 15 => 123_456_789,
        _ => 500_000_000,
    };
    // Record 6 is older than record 5 (a device's own clock): t < 0.
    let secs = 1_764_100_000 + if n == 6 { 2 } else { n };
    let mut fields = vec![
        f("speed", Value::Float(21.25 + n as f64)),
        f("heart_rate", Value::Int(120 + n as i64)),
        f(
            "cadence",
            Value::Int(if n % 2 == 0 { i64::MAX } else { i64::MIN }),
        ),
        f(
            "note",
            Value::Str(format!(
                "confidential-{n} \"q\" ü \u{1F6B2} \\ \n\t\u{1}\u{7f}\u{2028}"
            )),
        ),
        f("pedalling", Value::Bool(n % 2 == 0)),
        f(
            "ratio",
            Value::Float(if n % 3 == 0 { 2.0 } else { 1.5e300 }),
        ),
        f("temp", Value::Float(if n % 2 == 0 { 15.37 } else { 2.0 })),
        f("tiny", Value::Float(-5e-324)),
    ];
    // A clear field most records do not have, a non-finite float (printed
    // null), and an encrypted one some records do not have.
    if n % 4 == 1 {
        fields.push(f("gust", Value::Float(0.1)));
    }
    if n == 5 {
        fields.push(f("gauge", Value::Float(f64::NAN)));
    }
    if n % 5 != 2 {
        fields.push(f("label", Value::Str(format!("rider-{}", n % 3))));
    }
    Record {
        sensor: Arc::from(SENSOR),
        seq,
        ts: SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
        clock: None,
        fields,
    }
}

/// A record none of whose fields is encrypted (a message without `enc`).
fn clear_reading(seq: u64) -> Record {
    let mut r = reading(seq);
    r.fields.retain(|f| !ENCRYPT.contains(&&*f.name));
    r
}

/// Batches of 1, 3 and 10 records with encrypted fields, then 2 without any.
fn mixed_records() -> (Vec<Record>, Vec<usize>) {
    let mut records: Vec<Record> = (FIRST_SEQ..FIRST_SEQ + 14).map(reading).collect();
    records.extend((FIRST_SEQ + 14..FIRST_SEQ + 16).map(clear_reading));
    (records, vec![1, 3, 10, 2])
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

/// A record exactly as `sensorgate open` prints it.
fn record_line(r: &Record) -> String {
    serde_json::to_string(&printed_of(r)).expect("a record serializes")
}

/// Asserts that `stdout` holds exactly `want`, one JSON object per line
/// with members in `open`'s order, every field with its value and JSON type
/// (an integer is not a float) in column order. With `exact`, each line
/// must also be the very text `sensorgate open` prints (serde_json's
/// number and string forms, no spaces).
fn assert_records(stdout: &str, want: &[Record], exact: bool, shown: &str) {
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got.len(), want.len(), "record count\n{shown}");
    for (line, want) in got.iter().zip(want) {
        let top: FieldMap = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}\n{shown}"));
        assert_eq!(
            top.names().collect::<Vec<_>>(),
            ["gateway", "sensor", "seq", "ts", "fields"],
            "{line}"
        );
        let got: Printed = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let expected = printed_of(want);
        assert_eq!(
            (&got.gateway, &got.sensor, got.seq, &got.ts),
            (
                &expected.gateway,
                &expected.sensor,
                expected.seq,
                &expected.ts
            ),
            "{line}"
        );
        assert_eq!(got.fields.into_vec(), expected.fields.into_vec(), "{line}");
        if exact {
            assert_eq!(
                *line,
                record_line(want),
                "not the text `sensorgate open` prints"
            );
        }
    }
}

/// `records` with each one's fields in its batch's column order, as `open`
/// prints them: the order in which the batch (consecutive chunks of
/// `sizes`) first met each name (FORMAT.md, Putting records back together).
/// A record without some of the optional fields can make that differ from
/// its own order.
fn in_batch_order(records: &[Record], sizes: &[usize]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut rest = records;
    for &n in sizes {
        let (batch, tail) = rest.split_at(n);
        let mut names: Vec<Arc<str>> = Vec::new();
        for f in batch.iter().flat_map(|r| &r.fields) {
            if !names.contains(&f.name) {
                names.push(f.name.clone());
            }
        }
        for r in batch {
            let mut r = r.clone();
            r.fields
                .sort_by_key(|f| names.iter().position(|n| *n == f.name));
            out.push(r);
        }
        rest = tail;
    }
    assert!(rest.is_empty(), "sizes cover every record");
    out
}

/// Seals `records` as the gateway does, one message per chunk of `sizes`.
fn gateway_seal(keys: &Keys, records: &[Record], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut sealer = keys.sealer();
    let mut rest = records;
    let mut messages = Vec::new();
    for &n in sizes {
        let (batch, tail) = rest.split_at(n);
        let sealed = sealer.seal(batch).expect("seal a batch");
        assert_eq!(
            sealed.bytes.first(),
            Some(&0xd2),
            "the Sealer writes version 2 (a tagged COSE_Sign1)"
        );
        messages.push(sealed.bytes);
        rest = tail;
    }
    assert!(rest.is_empty(), "sizes cover every record");
    messages
}

/// `consumer` rejects the first of `messages` with exit code 65, prints no
/// record, and says which message and, when given, why.
fn assert_rejected(keys: &Keys, consumer: Consumer, messages: &[Vec<u8>], why: &str, case: &str) {
    let out = keys.open_with(consumer, messages);
    let shown = format!("{consumer:?}, {case}\n{}", out.shown());
    assert_eq!(out.code, REJECTED, "{shown}");
    assert!(out.stdout.is_empty(), "{shown}");
    assert!(out.stderr.contains("rejected message 1: "), "{shown}");
    assert!(out.stderr.contains(why), "{shown}");
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[test]
fn pycose_opens_what_the_gateway_seals() {
    let keys = Keys::new();
    let (records, sizes) = mixed_records();
    let messages = gateway_seal(&keys, &records, &sizes);

    let out = keys.open_with(Consumer::Python, &messages);
    assert_eq!(out.code, 0, "{}", out.shown());
    let want = in_batch_order(&records, &sizes);
    assert_records(&out.stdout, &want, true, &out.shown());
}

#[test]
fn cose_ts_opens_what_the_gateway_seals() {
    let keys = Keys::new();
    let (records, sizes) = mixed_records();
    let messages = gateway_seal(&keys, &records, &sizes);

    let out = keys.open_with(Consumer::JavaScript, &messages);
    assert_eq!(out.code, 0, "{}", out.shown());
    let want = in_batch_order(&records, &sizes);
    assert_records(&out.stdout, &want, true, &out.shown());
}

#[test]
fn sensorgate_open_accepts_what_pycose_seals() {
    let keys = Keys::new();
    let (records, _) = mixed_records();
    // 7 + 7 records with encrypted fields, then 2 without (no `enc`).
    let messages = keys.python_seal(&records, 7);
    assert_eq!(messages.len(), 3, "messages sealed by the script");

    let out = keys.gateway_open(&messages);
    assert_eq!(out.code, 0, "{}", out.shown());
    let want = in_batch_order(&records, &[7, 7, 2]);
    assert_records(&out.stdout, &want, true, &out.shown());
    assert_eq!(
        out.stderr.lines().last().unwrap_or_default(),
        "opened 3 messages, 16 records, 0 duplicates, 0 records missing in 0 gaps, 0 rejected",
        "{}",
        out.shown()
    );
}

#[test]
fn the_consumers_reject_a_gateway_message_with_one_byte_changed() {
    let keys = Keys::new();
    let records: Vec<Record> = (FIRST_SEQ..FIRST_SEQ + 3).map(reading).collect();
    let messages = gateway_seal(&keys, &records, &[3]);
    for consumer in [Consumer::Python, Consumer::JavaScript] {
        let sound = keys.open_with(consumer, &messages);
        assert_eq!(
            sound.code,
            0,
            "{consumer:?}: the untampered message must open\n{}",
            sound.shown()
        );
        // Both bytes are signed: the signature check catches them first.
        let signature = tamper_signature(&messages[0]);
        assert_rejected(&keys, consumer, &[signature], "bad signature", "signature");
        let ciphertext = tamper_ciphertext(&messages[0]);
        assert_rejected(
            &keys,
            consumer,
            &[ciphertext],
            "bad signature",
            "ciphertext",
        );
    }
}

/// A message whose encryption was changed and then signed again by the
/// gateway key: only the key unwrap or the AES-GCM tag (with the external
/// AAD) can tell. The consumers must check them, not lean on the signature.
#[test]
fn the_consumers_reject_gateway_encryption_changed_and_signed_again() {
    let keys = Keys::new();
    let (records, sizes) = mixed_records();
    // Messages 2 and 3 both have 3 encrypted columns (`enc` can move).
    let messages = gateway_seal(&keys, &records, &sizes)[1..3].to_vec();
    let cases = [
        ("ciphertext", "the AES-GCM tag does not verify"),
        ("wrapped-key", "the wrapped key does not unwrap"),
        ("move-enc", "the AES-GCM tag does not verify"),
    ];
    for (what, why) in cases {
        let tampered = keys.python_tamper(&messages, what);
        for consumer in [Consumer::Python, Consumer::JavaScript] {
            assert_rejected(&keys, consumer, &tampered, why, what);
        }
    }
}

#[test]
fn sensorgate_open_rejects_a_pycose_message_with_one_byte_changed() {
    let keys = Keys::new();
    let records: Vec<Record> = (FIRST_SEQ..FIRST_SEQ + 6).map(reading).collect();
    let messages = keys.python_seal(&records, 3);
    assert_eq!(messages.len(), 2);
    let sound = keys.gateway_open(&messages);
    assert_eq!(
        sound.code,
        0,
        "the untampered messages must open\n{}",
        sound.shown()
    );

    // (what, the message, whether it was signed again)
    let mut cases = vec![
        ("signature", vec![tamper_signature(&messages[0])], false),
        ("ciphertext", vec![tamper_ciphertext(&messages[0])], false),
    ];
    for what in ["ciphertext", "wrapped-key", "move-enc"] {
        let signed_again = keys.python_tamper(&messages, what);
        cases.push((what, signed_again[..1].to_vec(), true));
    }
    for (what, tampered, signed_again) in cases {
        let out = keys.gateway_open(&tampered);
        assert_eq!(out.code, REJECTED, "{what} changed\n{}", out.shown());
        assert!(out.stdout.is_empty(), "{what} changed\n{}", out.shown());
        // FORMAT.md: `rejected message N: <reason>`.
        assert!(
            out.stderr.contains("rejected message"),
            "{what} changed\n{}",
            out.shown()
        );
        // Signed again, the message passes the signature check: the
        // encryption (key unwrap, AES-GCM tag, external AAD) must catch it.
        if signed_again {
            assert!(
                !out.stderr.contains("signature"),
                "{what} changed and signed again: not a signature failure\n{}",
                out.shown()
            );
        }
    }
}

/// The consumers' own check against each other and the Python producer: a
/// failure above is then the gateway's or the document's, not the scripts'.
#[test]
fn both_consumers_open_what_pycose_seals() {
    let keys = Keys::new();
    let (records, _) = mixed_records();
    let messages = keys.python_seal(&records, 10);
    let want = in_batch_order(&records, &[10, 6]);
    for consumer in [Consumer::Python, Consumer::JavaScript] {
        let out = keys.open_with(consumer, &messages);
        assert_eq!(out.code, 0, "{consumer:?}\n{}", out.shown());
        assert_records(&out.stdout, &want, true, &out.shown());
    }
}

/// The start of the line `open` prints for a gap notice of `first..=last`.
fn declared(first: u64, last: u64) -> String {
    format!("declared: {GATEWAY}/{SENSOR} epoch {EPOCH}: seq {first}..{last} will not arrive: ")
}

/// A gap notice (FORMAT.md, Gap notices) between two batches: the
/// consumers print the batches' records and the notice on stderr.
#[test]
fn both_consumers_read_a_gateway_gap_notice() {
    let keys = Keys::new();
    let mut sealer = keys.sealer();
    let before: Vec<Record> = (FIRST_SEQ..FIRST_SEQ + 3).map(reading).collect();
    let after: Vec<Record> = (FIRST_SEQ + 23..FIRST_SEQ + 26).map(reading).collect();
    let notice = sealer
        .seal_notice(&GapNotice {
            sensor: Arc::from(SENSOR),
            first: FIRST_SEQ + 3,
            last: FIRST_SEQ + 22,
            lost: 20,
            exact: false,
            cause: GapCause::UncleanStop,
        })
        .expect("the key signs")
        .expect("a version 2 sealer seals notices");
    let messages = vec![
        sealer.seal(&before).expect("seal a batch").bytes,
        notice.bytes,
        sealer.seal(&after).expect("seal a batch").bytes,
    ];
    let want = [in_batch_order(&before, &[3]), in_batch_order(&after, &[3])].concat();
    let line = format!(
        "{}at most 20 records lost (unclean-stop)",
        declared(FIRST_SEQ + 3, FIRST_SEQ + 22)
    );
    for consumer in [Consumer::Python, Consumer::JavaScript] {
        let out = keys.open_with(consumer, &messages);
        assert_eq!(out.code, 0, "{consumer:?}\n{}", out.shown());
        assert_records(&out.stdout, &want, true, &out.shown());
        assert!(out.stderr.contains(&line), "{consumer:?}\n{}", out.shown());
    }
}

#[test]
fn sensorgate_open_accepts_a_pycose_gap_notice() {
    let keys = Keys::new();
    let records: Vec<Record> = (FIRST_SEQ..FIRST_SEQ + 6).map(reading).collect();
    let mut messages = keys.python_seal(&records, 3);
    // Between the two batches, a notice for numbers after them: 10 lost of
    // 30, the others never used.
    messages.insert(1, keys.python_notice(FIRST_SEQ + 6, FIRST_SEQ + 35, 10));

    let out = keys.gateway_open(&messages);
    assert_eq!(out.code, 0, "{}", out.shown());
    assert_records(
        &out.stdout,
        &in_batch_order(&records, &[3, 3]),
        true,
        &out.shown(),
    );
    let line = format!(
        "{}at most 10 records lost (unclean-stop)",
        declared(FIRST_SEQ + 6, FIRST_SEQ + 35)
    );
    assert!(out.stderr.contains(&line), "{}", out.shown());
    assert!(
        out.stderr
            .contains("opened 3 messages, 6 records, 0 duplicates"),
        "{}",
        out.shown()
    );
}

#[test]
fn both_consumers_read_batches_stamped_before_the_clock_was_synchronised() {
    // Two batches stamped unsynchronised (a clock at 1970 + seconds), then
    // an anchor: the `clock` entry both ways (docs/FORMAT.md, "Time").
    let keys = Keys::new();
    let mut sealer = keys.sealer().with_boot_id(*b"a-boot-id-16byte");
    // Record n (seq FIRST_SEQ + n) is stamped n seconds after boot.
    let stamped = |seq: u64, synced: bool| Record {
        ts: if synced {
            reading(seq).ts
        } else {
            SystemTime::UNIX_EPOCH + Duration::from_secs(seq - FIRST_SEQ)
        },
        clock: Some(sensorgate::clock::ClockMark {
            boot_ms: (seq - FIRST_SEQ) * 1000,
            synced,
        }),
        ..reading(seq)
    };
    let batches: Vec<Vec<Record>> = vec![
        (FIRST_SEQ..FIRST_SEQ + 2)
            .map(|s| stamped(s, false))
            .collect(),
        (FIRST_SEQ + 2..FIRST_SEQ + 3)
            .map(|s| stamped(s, false))
            .collect(),
        (FIRST_SEQ + 3..FIRST_SEQ + 5)
            .map(|s| stamped(s, true))
            .collect(),
    ];
    let messages: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| sealer.seal(b).expect("seal").bytes)
        .collect();
    for consumer in [Consumer::Python, Consumer::JavaScript] {
        let out = keys.open_with(consumer, &messages);
        assert_eq!(out.code, 0, "{}", out.shown());
        let lines: Vec<serde_json::Value> = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        let records: Vec<&Record> = batches.iter().flatten().collect();
        assert_eq!(lines.len(), records.len(), "{}", out.shown());
        for (line, record) in lines.iter().zip(records) {
            let unsynced = record.clock.is_some_and(|c| !c.synced);
            assert_eq!(line["seq"], record.seq);
            assert_eq!(line["ts"], record::format_ts(record.ts), "{line}");
            assert_eq!(
                line.get("ts_synced"),
                unsynced.then_some(&serde_json::Value::Bool(false)),
                "{line}"
            );
        }
    }
    // `sensorgate open` corrects the first three from the anchor: record
    // i was stamped at boot second i, the anchor at boot second 3.
    let out = keys.gateway_open(&messages);
    assert_eq!(out.code, 0, "{}", out.shown());
    let anchor = reading(FIRST_SEQ + 3).ts;
    for (i, line) in out.stdout.lines().take(3).enumerate() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let seq = FIRST_SEQ + i as u64;
        assert_eq!(
            line["ts"],
            record::format_ts(anchor - Duration::from_secs(3 - i as u64)),
            "{line}"
        );
        assert_eq!(line["seq"], seq);
    }
    assert!(out.stderr.contains("corrected: "), "{}", out.shown());
}
