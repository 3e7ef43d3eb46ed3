//! The sealing test vectors of `docs/FORMAT.md` (version 2, `v2-*.json`)
//! and `docs/FORMAT-v1.md` (version 1), checked in both directions:
//! sealing each vector's records with its keys and fixed randomness
//! reproduces its messages byte for byte, and opening the messages yields
//! exactly its records.
//!
//! The vectors are a contract: they change only with the format version.
//! After such a change, `SENSORGATE_WRITE_VECTORS=1 cargo test --test
//! vectors` rewrites the outputs (`iv`, `message`, `opened`, the kids) from
//! the inputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use sensorgate::clock::ClockMark;
use sensorgate::record::{Field, Record, Value, parse_ts};
use sensorgate::seal::{
    FixedRandomness, GatewayKey, Opener, RecipientKey, SealedMessage, Sealer, SealerOptions,
    WireFormat,
};

/// One `tests/vectors/*.json` file. Binary inputs are lowercase hex.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    description: String,
    /// The format version; 1 when absent (the files from before version 2).
    #[serde(default = "version_1", skip_serializing_if = "is_version_1")]
    format: u8,
    gateway: String,
    epoch: String,
    encrypt: Vec<String>,
    rotate_after_messages: u64,
    /// The gateway signing key, PKCS#8 PEM.
    gateway_key: String,
    gateway_kid: String,
    /// The recipient's private key, PKCS#8 PEM.
    recipient_key: String,
    recipient_kid: String,
    /// The ephemeral private key (P-256 scalar, 32 bytes big-endian).
    epk_private: String,
    /// The content encryption key, 32 bytes.
    cek: String,
    /// The IV of the first message under the CEK, 12 bytes: a 4-byte
    /// prefix and a 64-bit big-endian counter.
    iv: String,
    /// The gateway's boot id (16 bytes), for records with a `clock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
    messages: Vec<Message>,
}

fn version_1() -> u8 {
    1
}

fn is_version_1(v: &u8) -> bool {
    *v == 1
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    records: Vec<InputRecord>,
    /// The `iv` of this message's JWE (version 1) or COSE_Encrypt (version
    /// 2), hex; absent when nothing is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iv: Option<String>,
    /// The sealed message, exactly: JSON text (version 1) or the CBOR bytes
    /// in lowercase hex (version 2).
    message: String,
    /// What `sensorgate open` prints for it, one line per record.
    opened: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputRecord {
    sensor: String,
    seq: u64,
    ts: String,
    /// What the gateway's clock said when it stamped `ts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clock: Option<InputClock>,
    /// `[name, value]` pairs in column order.
    fields: Vec<(String, Json)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputClock {
    synced: bool,
    boot_ms: u64,
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64u(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

fn vector_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "expected the vectors in {}",
        dir.display()
    );
    files
}

fn load(path: &Path) -> Vector {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn record(input: &InputRecord) -> Record {
    let value = |v: &Json| match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) if n.is_i64() => Value::Int(n.as_i64().unwrap()),
        Json::Number(n) => Value::Float(n.as_f64().unwrap()),
        Json::String(s) => Value::Str(s.clone()),
        other => panic!("unsupported field value {other}"),
    };
    Record {
        sensor: Arc::from(input.sensor.as_str()),
        seq: input.seq,
        ts: parse_ts(&input.ts).expect("an RFC 3339 timestamp"),
        clock: input.clock.as_ref().map(|c| ClockMark {
            boot_ms: c.boot_ms,
            synced: c.synced,
        }),
        fields: input
            .fields
            .iter()
            .map(|(name, v)| Field {
                name: Arc::from(name.as_str()),
                value: value(v),
            })
            .collect(),
    }
}

/// The line `open` prints for an input record, built from the inputs alone.
fn expected_line(gateway: &str, input: &InputRecord) -> String {
    let fields: Vec<String> = input
        .fields
        .iter()
        .map(|(name, v)| format!("{}:{v}", Json::from(name.as_str())))
        .collect();
    let unsynced = input.clock.as_ref().is_some_and(|c| !c.synced);
    format!(
        r#"{{"gateway":{},"sensor":{},"seq":{},"ts":{},{}"fields":{{{}}}}}"#,
        Json::from(gateway),
        Json::from(input.sensor.as_str()),
        input.seq,
        Json::from(input.ts.as_str()),
        if unsynced {
            r#""ts_synced":false,"#
        } else {
            ""
        },
        fields.join(",")
    )
}

fn fixed(v: &Vector) -> FixedRandomness {
    FixedRandomness {
        epk: hex(&v.epk_private).try_into().expect("32-byte epk"),
        cek: hex(&v.cek).try_into().expect("32-byte CEK"),
        iv: hex(&v.iv).try_into().expect("12-byte IV"),
    }
}

/// Seals the vector's messages: the first with the fixed randomness, the
/// others with the sealer's data key as it is reused.
fn seal_all(v: &Vector) -> Vec<SealedMessage> {
    let key = GatewayKey::from_pkcs8_pem(&v.gateway_key).unwrap();
    let recipient = RecipientKey::from_pkcs8_pem(&v.recipient_key).unwrap();
    let mut sealer = Sealer::new(&v.gateway, &v.epoch, key, recipient.public(), &v.encrypt)
        .with_options(SealerOptions {
            rotate_after_messages: v.rotate_after_messages,
            rotate_after: Duration::from_secs(3600),
            format: if v.format == 2 {
                WireFormat::V2
            } else {
                WireFormat::V1
            },
        });
    if let Some(boot) = &v.boot_id {
        sealer = sealer.with_boot_id(hex(boot).try_into().expect("a 16-byte boot id"));
    }
    let fixed = fixed(v);
    v.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let records: Vec<Record> = m.records.iter().map(record).collect();
            if i == 0 {
                sealer.seal_with(&records, &fixed).unwrap()
            } else {
                sealer.seal(&records).unwrap()
            }
        })
        .collect()
}

/// The payload's `jwe` member of a version 1 message, if any.
fn jwe_of(message: &str) -> Option<Json> {
    let outer: Json = serde_json::from_str(message).ok()?;
    let payload: Json = serde_json::from_slice(&b64u(outer["payload"].as_str().unwrap())).unwrap();
    payload.get("jwe").cloned()
}

/// The message as the bytes on the wire.
fn wire(v: &Vector, m: &Message) -> Vec<u8> {
    if v.format == 2 {
        hex(&m.message)
    } else {
        m.message.as_bytes().to_vec()
    }
}

/// The message as the vector file writes it.
fn written(v: &Vector, bytes: &[u8]) -> String {
    if v.format == 2 {
        to_hex(bytes)
    } else {
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}

/// A version 2 message's COSE_Encrypt, decoded: `(iv, recipient)` with the
/// recipient structure (ephemeral key, kid, wrapped key) as CBOR values.
fn cose_encrypt_of(bytes: &[u8]) -> Option<(Vec<u8>, ciborium::Value)> {
    use ciborium::Value as V;
    let message: V = ciborium::from_reader(bytes).unwrap();
    let V::Tag(18, sign1) = message else {
        panic!("not a COSE_Sign1")
    };
    let payload = sign1.as_array().unwrap()[2].as_bytes().unwrap().clone();
    let payload: V = ciborium::from_reader(payload.as_slice()).unwrap();
    let enc = payload
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_text() == Some("enc"))?
        .1
        .as_bytes()
        .unwrap()
        .clone();
    let V::Tag(96, encrypt) = ciborium::from_reader(enc.as_slice()).unwrap() else {
        panic!("not a COSE_Encrypt")
    };
    let encrypt = encrypt.as_array().unwrap();
    let iv = encrypt[1].as_map().unwrap()[0]
        .1
        .as_bytes()
        .unwrap()
        .clone();
    Some((iv, encrypt[3].clone()))
}

/// The message's IV (hex), whatever its version.
fn iv_of(v: &Vector, bytes: &[u8]) -> Option<String> {
    if v.format == 2 {
        cose_encrypt_of(bytes).map(|(iv, _)| to_hex(&iv))
    } else {
        jwe_of(std::str::from_utf8(bytes).unwrap())
            .map(|j| to_hex(&b64u(j["iv"].as_str().unwrap())))
    }
}

fn open_all(v: &Vector) -> Vec<Vec<String>> {
    let gateway = GatewayKey::from_pkcs8_pem(&v.gateway_key).unwrap().public();
    let recipient = RecipientKey::from_pkcs8_pem(&v.recipient_key).unwrap();
    let mut opener = Opener::new(vec![gateway], Some(recipient));
    v.messages
        .iter()
        .map(|m| {
            let opened = opener.open(&wire(v, m)).unwrap();
            opened
                .records
                .iter()
                .map(|r| serde_json::to_string(r).unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn sealing_the_vectors_reproduces_their_messages_byte_for_byte() {
    let write = std::env::var_os("SENSORGATE_WRITE_VECTORS").is_some();
    for path in vector_files() {
        let name = path.display();
        let mut v = load(&path);
        let sealed = seal_all(&v);
        if write {
            v.gateway_kid = GatewayKey::from_pkcs8_pem(&v.gateway_key)
                .unwrap()
                .kid()
                .to_string();
            v.recipient_kid = RecipientKey::from_pkcs8_pem(&v.recipient_key)
                .unwrap()
                .kid()
                .to_string();
            for (i, s) in sealed.iter().enumerate() {
                let (message, iv) = (written(&v, &s.bytes), iv_of(&v, &s.bytes));
                v.messages[i].message = message;
                v.messages[i].iv = iv;
            }
            let opened = open_all(&v);
            for (m, lines) in v.messages.iter_mut().zip(opened) {
                m.opened = lines;
            }
            let mut text = serde_json::to_string_pretty(&v).unwrap();
            text.push('\n');
            std::fs::write(&path, text).unwrap();
            continue;
        }
        assert_eq!(
            GatewayKey::from_pkcs8_pem(&v.gateway_key).unwrap().kid(),
            v.gateway_kid,
            "{name}"
        );
        assert_eq!(
            RecipientKey::from_pkcs8_pem(&v.recipient_key)
                .unwrap()
                .kid(),
            v.recipient_kid,
            "{name}"
        );
        for (i, (m, s)) in v.messages.iter().zip(&sealed).enumerate() {
            assert_eq!(written(&v, &s.bytes), m.message, "{name}: message {i}");
            assert_eq!(iv_of(&v, &s.bytes), m.iv, "{name}: message {i} iv");
        }
        if let Some(first) = v.messages.iter().find_map(|m| m.iv.as_deref()) {
            assert_eq!(first, v.iv, "{name}");
        }
        if v.format == 2 {
            // Under one data key: the same recipient (ephemeral key,
            // wrapped key), the IV counter up by one.
            let encrypts: Vec<(Vec<u8>, ciborium::Value)> = v
                .messages
                .iter()
                .filter_map(|m| cose_encrypt_of(&wire(&v, m)))
                .collect();
            for pair in encrypts.windows(2) {
                assert_eq!(pair[0].1, pair[1].1, "{name}: one data key");
                assert_eq!(pair[0].0[..4], pair[1].0[..4], "{name}: IV prefix");
                let counter = |iv: &[u8]| u64::from_be_bytes(iv[4..].try_into().unwrap());
                assert_eq!(counter(&pair[0].0) + 1, counter(&pair[1].0), "{name}");
            }
            continue;
        }
        // The first JWE uses the vector's IV; messages under one data key
        // share epk and encrypted_key and count the IV up by one.
        let jwes: Vec<Json> = v
            .messages
            .iter()
            .filter_map(|m| jwe_of(&m.message))
            .collect();
        if (v.messages.len() as u64) <= v.rotate_after_messages {
            for pair in jwes.windows(2) {
                assert_eq!(pair[0]["encrypted_key"], pair[1]["encrypted_key"], "{name}");
                let header = |j: &Json| -> Json {
                    serde_json::from_slice(&b64u(j["protected"].as_str().unwrap())).unwrap()
                };
                assert_eq!(header(&pair[0])["epk"], header(&pair[1])["epk"], "{name}");
                let counter = |j: &Json| {
                    let iv = b64u(j["iv"].as_str().unwrap());
                    (
                        iv[..4].to_vec(),
                        u64::from_be_bytes(iv[4..].try_into().unwrap()),
                    )
                };
                let (p0, c0) = counter(&pair[0]);
                let (p1, c1) = counter(&pair[1]);
                assert_eq!(p0, p1, "{name}");
                assert_eq!(c0 + 1, c1, "{name}");
            }
        }
    }
}

#[test]
fn opening_the_vectors_yields_their_records() {
    if std::env::var_os("SENSORGATE_WRITE_VECTORS").is_some() {
        return; // the files are being rewritten by the sealing test
    }
    for path in vector_files() {
        let name = path.display();
        let v = load(&path);
        let opened = open_all(&v);
        for (i, (m, lines)) in v.messages.iter().zip(opened).enumerate() {
            let expected: Vec<String> = m
                .records
                .iter()
                .map(|r| expected_line(&v.gateway, r))
                .collect();
            assert_eq!(lines, expected, "{name}: message {i}");
            assert_eq!(lines, m.opened, "{name}: message {i}");
        }
    }
}

#[test]
fn the_vectors_cover_the_documented_cases() {
    let vectors: Vec<Vector> = vector_files().iter().map(|p| load(p)).collect();
    let encrypted = |v: &Vector| v.messages.iter().filter(|m| m.iv.is_some()).count();
    for format in [1, 2] {
        let of = || vectors.iter().filter(|v| v.format == format);
        assert!(
            of().any(|v| encrypted(v) == 0),
            "version {format}: a vector without encrypted fields"
        );
        assert!(
            of().any(|v| v.messages.len() == 1
                && v.messages[0].records.len() == 2
                && v.encrypt.len() == 3
                && encrypted(v) == 1),
            "version {format}: a batch of 2 records with 3 encrypted fields"
        );
        assert!(
            of().any(|v| encrypted(v) >= 2),
            "version {format}: two messages under one data key"
        );
        if format == 2 {
            assert!(
                of().any(|v| v
                    .messages
                    .iter()
                    .flat_map(|m| &m.records)
                    .any(|r| r.clock.as_ref().is_some_and(|c| !c.synced))),
                "version 2: records stamped before the clock was synchronised"
            );
        }
    }
}
