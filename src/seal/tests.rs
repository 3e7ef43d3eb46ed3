//! End-to-end tests of the seal module: seal → open with real keys.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{Value as Json, json};

use super::*;
use crate::record::{Field, Record, Value, format_ts};
use crate::seal::keys::Nonces;

/// These tests are about format version 1 (JOSE, `docs/FORMAT-v1.md`);
/// `tests_v2.rs` covers version 2.
fn v1_sealer(
    gateway: &str,
    epoch: &str,
    key: GatewayKey,
    recipient: PublicKey,
    encrypt: &[String],
) -> Sealer {
    Sealer::new(gateway, epoch, key, recipient, encrypt).with_options(SealerOptions {
        format: WireFormat::V1,
        ..SealerOptions::default()
    })
}

const GATEWAY: &str = "bike-pi-01";
const EPOCH: &str = "2025-11-25T19:46:40Z";

fn encrypt_list() -> Vec<String> {
    ["heart_rate", "incline", "resistance"]
        .map(String::from)
        .to_vec()
}

fn ts(seq: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(1_764_100_000 + seq, 123_456_789)
}

/// A record with clear and encrypted fields of every type, interleaved.
fn record(sensor: &Arc<str>, seq: u64) -> Record {
    let f = |name: &str, value: Value| Field {
        name: Arc::from(name),
        value,
    };
    Record {
        sensor: Arc::clone(sensor),
        seq,
        ts: ts(seq),
        clock: None,
        fields: vec![
            f("speed", Value::Float(12.5 + seq as f64)),
            f("heart_rate", Value::Int(98_700 + seq as i64)),
            f("cadence", Value::Int(80)),
            f("incline", Value::Float(2.0)),
            f("note", Value::Str("ok \"quoted\" ünïcode".into())),
            f("resistance", Value::Str(format!("SECRET-LEVEL-{seq}"))),
            f("pedalling", Value::Bool(true)),
        ],
    }
}

fn batch(sensor: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<Record> {
    let sensor: Arc<str> = Arc::from(sensor);
    seqs.map(|s| record(&sensor, s)).collect()
}

/// A gateway key pair whose private half can be used twice (sealer and a
/// test that re-signs forged payloads).
struct Keys {
    gateway_pem: String,
    recipient: RecipientKey,
}

impl Keys {
    fn new() -> Keys {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        Keys {
            gateway_pem: secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
            recipient: RecipientKey::generate(),
        }
    }
    fn gateway(&self) -> GatewayKey {
        GatewayKey::from_pkcs8_pem(&self.gateway_pem).unwrap()
    }
    fn sealer(&self) -> Sealer {
        v1_sealer(
            GATEWAY,
            EPOCH,
            self.gateway(),
            self.recipient.public(),
            &encrypt_list(),
        )
    }
    fn opener(&self) -> Opener {
        let recipient = RecipientKey::from_pkcs8_pem(
            &self
                .recipient
                .secret()
                .to_pkcs8_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        Opener::new(vec![self.gateway().public()], Some(recipient))
    }
}

/// The three members of a sealed message, and its decoded payload.
fn parts(message: &[u8]) -> (String, String, String, Json) {
    let outer: Json = serde_json::from_slice(message).unwrap();
    let member = |k: &str| outer[k].as_str().unwrap().to_string();
    let payload: Json = serde_json::from_slice(&b64::decode(member("payload")).unwrap()).unwrap();
    (
        member("protected"),
        member("payload"),
        member("signature"),
        payload,
    )
}

/// Re-signs `payload` with the gateway key: what a forger holding the key
/// (or a bug in the gateway) could produce. Used to reach the checks that
/// sit behind the signature.
fn resign(keys: &Keys, protected: &str, payload: &Json) -> Vec<u8> {
    let json = serde_json::to_vec(payload).unwrap();
    sealer::sign_jws(&keys.gateway(), Nonces::Hedged, protected, &json).unwrap()
}

#[test]
fn round_trip_keeps_values_types_and_column_order() {
    let keys = Keys::new();
    let mut sealer = keys.sealer();
    let records = batch("bike", 1..=5);
    let sealed = sealer.seal(&records).unwrap();
    assert_eq!(
        (
            &*sealed.sensor,
            sealed.first_seq,
            sealed.last_seq,
            sealed.records
        ),
        ("bike", 1, 5, 5)
    );
    assert!(!sealed.bytes.contains(&b'\n'));
    assert!(std::str::from_utf8(&sealed.bytes).is_ok());

    let mut opener = keys.opener();
    let opened = opener.open(&sealed.bytes).unwrap();
    assert_eq!(
        (
            opened.gateway.as_str(),
            opened.sensor.as_str(),
            opened.epoch.as_str()
        ),
        (GATEWAY, "bike", EPOCH)
    );
    assert_eq!(
        (opened.first_seq, opened.last_seq, opened.duplicates),
        (1, 5, 0)
    );
    assert_eq!(opened.records.len(), 5);
    for (got, want) in opened.records.iter().zip(&records) {
        assert_eq!(got.seq, want.seq);
        assert_eq!(got.ts, format_ts(want.ts));
        assert_eq!(
            (got.gateway.as_str(), got.sensor.as_str()),
            (GATEWAY, "bike")
        );
        let expected: Vec<(String, Json)> = want
            .fields
            .iter()
            .map(|f| (f.name.to_string(), f.value.to_json()))
            .collect();
        // Same names, same order, same JSON types (2.0 stays a float).
        assert_eq!(got.fields.clone().into_vec(), expected);
    }
    assert!(opened.records[0].fields["incline"].is_f64());
    assert!(opened.records[0].fields["heart_rate"].is_i64());
}

/// Floats come back bit for bit. serde_json's default float parser is off
/// by one ulp on some values (this one among them); the crate enables its
/// `float_roundtrip` feature for that reason.
#[test]
fn floats_survive_bit_for_bit() {
    let keys = Keys::new();
    let sensor: Arc<str> = Arc::from("bike");
    let floats = [
        1.822_622_254_165_146_2e25,
        0.1,
        5e-324,
        f64::MAX,
        -0.0,
        1e-300,
    ];
    let records: Vec<Record> = floats
        .iter()
        .enumerate()
        .map(|(i, &x)| Record {
            sensor: Arc::clone(&sensor),
            seq: i as u64,
            ts: ts(0),
            clock: None,
            fields: vec![
                Field {
                    name: Arc::from("speed"),
                    value: Value::Float(x),
                },
                Field {
                    name: Arc::from("incline"),
                    value: Value::Float(x),
                },
            ],
        })
        .collect();
    let sealed = keys.sealer().seal(&records).unwrap();
    let opened = keys.opener().open(&sealed.bytes).unwrap();
    for (r, &x) in opened.records.iter().zip(&floats) {
        for name in ["speed", "incline"] {
            let got = r.fields[name].as_f64().unwrap();
            assert_eq!(got.to_bits(), x.to_bits(), "{name}: {got:e} != {x:e}");
        }
    }
}

#[test]
fn encrypted_values_and_names_are_not_in_the_message() {
    let keys = Keys::new();
    let sealed = keys.sealer().seal(&batch("bike", 1..=3)).unwrap();
    let (_, _, _, payload) = parts(&sealed.bytes);
    let decoded = payload.to_string();
    let raw = String::from_utf8(sealed.bytes.clone()).unwrap();
    for secret in [
        "SECRET-LEVEL",
        "98701",
        "heart_rate",
        "resistance",
        "incline",
    ] {
        assert!(!decoded.contains(secret), "{secret} visible in payload");
        assert!(!raw.contains(secret), "{secret} visible in message");
    }
    // Clear fields are there, signed but readable.
    assert!(decoded.contains(r#""speed":13.5"#) && decoded.contains(r#""pedalling":true"#));
    assert_eq!(payload["records"][0]["encrypted"], json!([1, 3, 5]));
    assert_eq!(payload["v"], 1);
    assert_eq!(payload["seq"], json!([1, 3]));
}

#[test]
fn headers_carry_exactly_the_documented_algorithms() {
    let keys = Keys::new();
    let sealed = keys.sealer().seal(&batch("bike", 1..=1)).unwrap();
    let (protected, _, signature, payload) = parts(&sealed.bytes);
    let header: Json = serde_json::from_slice(&b64::decode(protected).unwrap()).unwrap();
    assert_eq!(
        header,
        json!({"alg": "ES256", "kid": keys.gateway().kid(), "typ": "sensorgate-sealed+json"})
    );
    assert_eq!(b64::decode(signature).unwrap().len(), 64);
    let jwe = &payload["jwe"];
    let jwe_header: Json =
        serde_json::from_slice(&b64::decode(jwe["protected"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(jwe_header["alg"], "ECDH-ES+A256KW");
    assert_eq!(jwe_header["enc"], "A256GCM");
    assert_eq!(jwe_header["kid"], keys.recipient.kid());
    assert_eq!(jwe_header["epk"]["crv"], "P-256");
    assert_eq!(
        (
            &jwe_header["gateway"],
            &jwe_header["sensor"],
            &jwe_header["epoch"],
            &jwe_header["seq"]
        ),
        (
            &json!(GATEWAY),
            &json!("bike"),
            &json!(EPOCH),
            &json!([1, 1])
        )
    );
    let len = |k: &str| b64::decode(jwe[k].as_str().unwrap()).unwrap().len();
    assert_eq!((len("encrypted_key"), len("iv"), len("tag")), (40, 12, 16));
}

#[test]
fn a_batch_without_encrypted_fields_has_no_jwe_and_needs_no_recipient_key() {
    let keys = Keys::new();
    let mut sealer = v1_sealer(GATEWAY, EPOCH, keys.gateway(), keys.recipient.public(), &[]);
    let sealed = sealer.seal(&batch("bike", 1..=2)).unwrap();
    let (_, _, _, payload) = parts(&sealed.bytes);
    assert!(payload.get("jwe").is_none());
    assert!(payload["records"][0].get("encrypted").is_none());
    let mut opener = Opener::new(vec![keys.gateway().public()], None);
    let opened = opener.open(&sealed.bytes).unwrap();
    assert_eq!(opened.records[1].fields["resistance"], "SECRET-LEVEL-2");
}

#[test]
fn encrypted_fields_need_the_right_recipient_key() {
    let keys = Keys::new();
    let sealed = keys.sealer().seal(&batch("bike", 1..=2)).unwrap();
    let mut no_key = Opener::new(vec![keys.gateway().public()], None);
    let e = no_key.open(&sealed.bytes).unwrap_err();
    assert!(matches!(&e, OpenError::MissingRecipientKey { kid } if kid == keys.recipient.kid()));
    let other = RecipientKey::generate();
    let other_kid = other.kid().to_string();
    let mut wrong_key = Opener::new(vec![keys.gateway().public()], Some(other));
    let e = wrong_key.open(&sealed.bytes).unwrap_err();
    assert!(
        matches!(&e, OpenError::WrongRecipient { sealed_for, ours } if sealed_for == keys.recipient.kid() && *ours == other_kid),
        "{e}"
    );
    assert_eq!(wrong_key.summary().rejected, 1);
}

#[test]
fn any_changed_byte_is_rejected() {
    let keys = Keys::new();
    let sealed = keys.sealer().seal(&batch("bike", 7..=7)).unwrap();
    let mut opener = keys.opener();
    let bytes = &sealed.bytes;
    let text = std::str::from_utf8(bytes).unwrap();
    let payload_at = text.find(r#""payload":""#).unwrap() + 11;
    let signature_at = text.find(r#""signature":""#).unwrap() + 13;
    // Every byte of the signature and the JSON frame, and a dense sample of
    // the payload (every byte would take long in a debug build).
    let positions = (0..bytes.len())
        .filter(|&i| i < payload_at || i >= signature_at - 16 || i % 7 == 0 || i < payload_at + 64);
    let mut tried = 0;
    for i in positions {
        let mut forged = bytes.clone();
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        let result = opener.open(&forged);
        assert!(result.is_err(), "changing byte {i} was not detected");
        tried += 1;
    }
    assert!(tried > 150);
    assert_eq!(opener.summary().rejected, tried);
    assert_eq!(opener.summary().messages, 0);
    // The untouched message still opens: rejections left no trace.
    assert_eq!(opener.open(bytes).unwrap().records.len(), 1);
}

#[test]
fn a_changed_payload_or_signature_fails_the_signature_check() {
    let keys = Keys::new();
    let sealed = keys.sealer().seal(&batch("bike", 1..=2)).unwrap();
    let (protected, payload_b64, signature, mut payload) = parts(&sealed.bytes);
    let kid = keys.gateway().kid().to_string();
    let mut opener = keys.opener();

    // A clear value changed, re-encoded, old signature kept.
    payload["records"][0]["fields"]["speed"] = json!(99.0);
    let forged = format!(
        r#"{{"protected":"{protected}","payload":"{}","signature":"{signature}"}}"#,
        b64::encode(serde_json::to_vec(&payload).unwrap())
    );
    let e = opener.open(forged.as_bytes()).unwrap_err();
    assert!(
        matches!(&e, OpenError::BadSignature { kid: k, .. } if *k == kid),
        "{e}"
    );

    // Another valid signature (of another message) on this payload.
    let other = keys.sealer().seal(&batch("bike", 3..=4)).unwrap();
    let (_, _, other_signature, _) = parts(&other.bytes);
    let forged = format!(
        r#"{{"protected":"{protected}","payload":"{payload_b64}","signature":"{other_signature}"}}"#
    );
    assert!(matches!(
        opener.open(forged.as_bytes()),
        Err(OpenError::BadSignature { .. })
    ));
}

#[test]
fn an_untrusted_gateway_is_rejected_with_its_kid_named() {
    let keys = Keys::new();
    let stranger = GatewayKey::generate();
    let stranger_kid = stranger.kid().to_string();
    let mut sealer = v1_sealer(
        GATEWAY,
        EPOCH,
        stranger,
        keys.recipient.public(),
        &encrypt_list(),
    );
    let sealed = sealer.seal(&batch("bike", 1..=1)).unwrap();
    let e = keys.opener().open(&sealed.bytes).unwrap_err();
    assert!(matches!(&e, OpenError::UntrustedKey { kid } if *kid == stranger_kid));
    assert!(e.to_string().contains(&stranger_kid), "{e}");
}

#[test]
fn other_algorithms_and_types_are_refused_before_the_key_lookup() {
    let keys = Keys::new();
    let sealed = keys.sealer().seal(&batch("bike", 1..=1)).unwrap();
    let (_, payload, signature, _) = parts(&sealed.bytes);
    let kid = keys.gateway().kid().to_string();
    let mut opener = keys.opener();
    for (header, param) in [
        (
            json!({"alg":"none","kid":kid,"typ":"sensorgate-sealed+json"}),
            "alg",
        ),
        (
            json!({"alg":"HS256","kid":kid,"typ":"sensorgate-sealed+json"}),
            "alg",
        ),
        (json!({"alg":"ES256","kid":kid,"typ":"JWT"}), "typ"),
    ] {
        let protected = b64::encode(serde_json::to_vec(&header).unwrap());
        let forged = format!(
            r#"{{"protected":"{protected}","payload":"{payload}","signature":"{signature}"}}"#
        );
        let e = opener.open(forged.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, OpenError::WrongAlgorithm { part: "JWS", param: p, .. } if *p == param),
            "{e}"
        );
    }
    // An extra header member (e.g. "crit") is refused rather than ignored.
    let header = json!({"alg":"ES256","kid":kid,"typ":"sensorgate-sealed+json","crit":["x"]});
    let protected = b64::encode(serde_json::to_vec(&header).unwrap());
    let forged =
        format!(r#"{{"protected":"{protected}","payload":"{payload}","signature":"{signature}"}}"#);
    assert!(matches!(
        opener.open(forged.as_bytes()),
        Err(OpenError::BadHeader { part: "JWS", .. })
    ));
}

#[test]
fn a_jwe_cut_from_another_message_does_not_open() {
    let keys = Keys::new();
    let mut sealer = keys.sealer();
    let m1 = sealer.seal(&batch("bike", 1..=2)).unwrap();
    let m2 = sealer.seal(&batch("bike", 3..=4)).unwrap();
    let m3 = sealer.seal(&batch("rower", 1..=2)).unwrap();
    let (protected, payload_b64, signature, payload1) = parts(&m1.bytes);
    let (_, _, _, payload2) = parts(&m2.bytes);
    let (_, _, _, payload3) = parts(&m3.bytes);
    let mut opener = keys.opener();

    // Pasted without re-signing: the signature catches it.
    let mut pasted = payload1.clone();
    pasted["jwe"] = payload2["jwe"].clone();
    let forged = format!(
        r#"{{"protected":"{protected}","payload":"{}","signature":"{signature}"}}"#,
        b64::encode(serde_json::to_vec(&pasted).unwrap())
    );
    assert!(matches!(
        opener.open(forged.as_bytes()),
        Err(OpenError::BadSignature { .. })
    ));
    assert_ne!(
        payload_b64,
        b64::encode(serde_json::to_vec(&pasted).unwrap())
    );

    // Pasted and re-signed by the gateway key: the binding catches it.
    let e = opener
        .open(&resign(&keys, &protected, &pasted))
        .unwrap_err();
    assert!(
        matches!(&e, OpenError::BindingMismatch { field: "seq", .. }),
        "{e}"
    );
    let mut pasted = payload1.clone();
    pasted["jwe"] = payload3["jwe"].clone();
    let e = opener
        .open(&resign(&keys, &protected, &pasted))
        .unwrap_err();
    assert!(
        matches!(
            &e,
            OpenError::BindingMismatch {
                field: "sensor",
                ..
            }
        ),
        "{e}"
    );

    // The JWE header rewritten to match: it is the AAD, so GCM fails.
    let mut jwe = payload2["jwe"].clone();
    let mut jwe_header: Json =
        serde_json::from_slice(&b64::decode(jwe["protected"].as_str().unwrap()).unwrap()).unwrap();
    jwe_header["seq"] = json!([1, 2]);
    jwe["protected"] = json!(b64::encode(serde_json::to_vec(&jwe_header).unwrap()));
    let mut pasted = payload1.clone();
    pasted["jwe"] = jwe;
    let e = opener
        .open(&resign(&keys, &protected, &pasted))
        .unwrap_err();
    assert!(matches!(&e, OpenError::Decryption { .. }), "{e}");

    // The genuine message still opens.
    assert_eq!(opener.open(&m1.bytes).unwrap().records.len(), 2);
    assert_eq!(opener.summary().rejected, 4);
}

#[test]
fn records_must_form_the_declared_range() {
    let keys = Keys::new();
    let sealed = keys.sealer().seal(&batch("bike", 1..=3)).unwrap();
    let (protected, _, _, payload) = parts(&sealed.bytes);
    let mut opener = keys.opener();

    let mut p = payload.clone();
    p["records"][1]["seq"] = json!(9);
    let e = opener.open(&resign(&keys, &protected, &p)).unwrap_err();
    assert!(
        matches!(
            e,
            OpenError::SeqRange {
                first: 1,
                last: 3,
                ..
            }
        ),
        "{e}"
    );

    let mut p = payload.clone();
    p["seq"] = json!([1, 4]);
    let e = opener.open(&resign(&keys, &protected, &p)).unwrap_err();
    assert!(matches!(e, OpenError::SeqRange { .. }), "{e}");

    let mut p = payload.clone();
    p["v"] = json!(2);
    let e = opener.open(&resign(&keys, &protected, &p)).unwrap_err();
    assert!(matches!(e, OpenError::UnsupportedVersion { .. }), "{e}");
}

#[test]
fn duplicates_are_dropped_and_gaps_counted() {
    let keys = Keys::new();
    let mut sealer = keys.sealer();
    let m1 = sealer.seal(&batch("bike", 1..=3)).unwrap();
    let m2 = sealer.seal(&batch("bike", 4..=6)).unwrap();
    let m3 = sealer.seal(&batch("bike", 9..=10)).unwrap(); // 7 and 8 lost
    let m4 = sealer.seal(&batch("bike", 5..=7)).unwrap(); // overlaps, fills 7
    let other = sealer.seal(&batch("rower", 1..=2)).unwrap();
    let mut opener = keys.opener();

    assert_eq!(opener.open(&m1.bytes).unwrap().records.len(), 3);
    assert_eq!(opener.open(&m2.bytes).unwrap().records.len(), 3);
    let replay = opener.open(&m1.bytes).unwrap();
    assert_eq!((replay.records.len(), replay.duplicates), (0, 3));
    assert_eq!(opener.open(&m3.bytes).unwrap().records.len(), 2);
    assert_eq!((opener.summary().missing, opener.summary().gaps), (2, 1));
    let overlap = opener.open(&m4.bytes).unwrap();
    assert_eq!(overlap.duplicates, 2);
    assert_eq!(
        overlap.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [7]
    );
    opener.open(&other.bytes).unwrap();
    assert_eq!(
        opener.summary(),
        OpenSummary {
            messages: 6,
            records: 11,
            duplicates: 5,
            missing: 1,
            gaps: 1,
            declared: 0,
            rejected: 0,
            ..OpenSummary::default()
        }
    );
}

#[test]
fn same_range_same_records_is_a_duplicate_other_records_a_conflict() {
    let keys = Keys::new();
    let mut sealer = keys.sealer();
    let original = sealer.seal(&batch("bike", 1..=3)).unwrap();
    // Sealed again (another IV): other bytes, the same records.
    let resealed = sealer.seal(&batch("bike", 1..=3)).unwrap();
    assert_ne!(original.bytes, resealed.bytes);
    let mut altered = batch("bike", 1..=3);
    altered[1].fields[0].value = Value::Float(999.0);
    let altered = sealer.seal(&altered).unwrap();

    let mut opener = keys.opener();
    assert_eq!(opener.open(&original.bytes).unwrap().records.len(), 3);
    let again = opener.open(&original.bytes).unwrap();
    assert_eq!((again.records.len(), again.duplicates), (0, 3));
    let again = opener.open(&resealed.bytes).unwrap();
    assert_eq!((again.records.len(), again.duplicates), (0, 3));
    let e = opener.open(&altered.bytes).unwrap_err();
    assert!(
        matches!(
            e,
            OpenError::Conflict {
                first: 1,
                last: 3,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!("conflict: seq 1..3 of {GATEWAY}/bike/{EPOCH} seen before with different content")
    );
    assert_eq!(
        opener.summary(),
        OpenSummary {
            messages: 3,
            records: 3,
            duplicates: 6,
            missing: 0,
            gaps: 0,
            declared: 0,
            rejected: 1,
            ..OpenSummary::default()
        }
    );
}

#[test]
fn open_stream_prints_records_rejections_and_the_summary() {
    let keys = Keys::new();
    let mut sealer = keys.sealer();
    let m1 = sealer.seal(&batch("bike", 1..=2)).unwrap();
    let m2 = sealer.seal(&batch("bike", 4..=4)).unwrap();
    let stranger = GatewayKey::generate();
    let stranger_kid = stranger.kid().to_string();
    let untrusted = v1_sealer(GATEWAY, EPOCH, stranger, keys.recipient.public(), &[])
        .seal(&batch("bike", 3..=3))
        .unwrap();

    let mut input = Vec::new();
    input.extend_from_slice(&m1.bytes);
    input.extend_from_slice(b"\n\n   \n");
    input.extend_from_slice(b"this is not a message\n");
    input.extend_from_slice(&untrusted.bytes);
    input.extend_from_slice(b"\n");
    input.extend_from_slice(&m2.bytes);
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(&m1.bytes); // replay, no trailing newline

    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut opener = keys.opener();
    let summary = open_stream(Cursor::new(input), &mut out, &mut err, &mut opener).unwrap();

    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[0],
        concat!(
            r#"{"gateway":"bike-pi-01","sensor":"bike","seq":1,"ts":"2025-11-25T19:46:41.123456789Z","#,
            r#""fields":{"speed":13.5,"heart_rate":98701,"cadence":80,"incline":2.0,"#,
            r#""note":"ok \"quoted\" ünïcode","resistance":"SECRET-LEVEL-1","pedalling":true}}"#
        )
    );
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Json>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [1, 2, 4]);

    let err = String::from_utf8(err).unwrap();
    let err_lines: Vec<&str> = err.lines().collect();
    assert_eq!(err_lines.len(), 4, "{err}");
    assert!(err_lines[0].starts_with("rejected message at line 4: not a sealed message"));
    assert!(err_lines[1].starts_with("rejected message at line 5: signed with key kid"));
    assert!(err_lines[1].contains(&stranger_kid));
    assert_eq!(
        err_lines[2],
        format!("gap: {GATEWAY}/bike epoch {EPOCH}: seq 3..3 missing")
    );
    assert_eq!(
        err_lines[3],
        "opened 3 messages, 3 records, 2 duplicates, 1 record missing in 1 gap, 2 rejected"
    );
    assert_eq!(summary.to_string(), err_lines[3]);
}

#[test]
fn sealing_refuses_malformed_batches() {
    let keys = Keys::new();
    let mut sealer = keys.sealer();
    assert!(matches!(sealer.seal(&[]), Err(SealError::Empty)));
    let mut mixed = batch("bike", 1..=2);
    mixed.extend(batch("rower", 3..=3));
    assert!(matches!(
        sealer.seal(&mixed),
        Err(SealError::MixedSensors { .. })
    ));
    let mut holes = batch("bike", 1..=2);
    holes.extend(batch("bike", 4..=4));
    let e = sealer.seal(&holes).unwrap_err();
    assert!(matches!(
        e,
        SealError::NotContiguous {
            expected: 3,
            found: 4,
            ..
        }
    ));
}

/// Prints one sealed message of two records, opened and decoded, for
/// docs/FORMAT.md: `cargo test print_worked_example -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_worked_example() {
    let keys = Keys::new();
    let sensor: Arc<str> = Arc::from("bike");
    let f = |name: &str, value: Value| Field {
        name: Arc::from(name),
        value,
    };
    let records: Vec<Record> = (41..=42)
        .map(|seq| Record {
            sensor: Arc::clone(&sensor),
            seq,
            ts: SystemTime::UNIX_EPOCH + Duration::new(1_764_100_000 + seq, 250_000_000),
            clock: None,
            fields: vec![
                f("speed", Value::Float(24.5)),
                f("cadence", Value::Int(88)),
                f("heart_rate", Value::Int(140 + seq as i64)),
                f("incline", Value::Float(1.5)),
                f("resistance", Value::Int(7)),
                f("power", Value::Int(210)),
            ],
        })
        .collect();
    let mut sealer = v1_sealer(
        GATEWAY,
        "e1764100000",
        keys.gateway(),
        keys.recipient.public(),
        &encrypt_list(),
    );
    let sealed = sealer.seal(&records).unwrap();
    println!("MESSAGE\n{}", String::from_utf8_lossy(&sealed.bytes));
    let (protected, _, _, payload) = parts(&sealed.bytes);
    println!(
        "JWS HEADER\n{}",
        String::from_utf8(b64::decode(protected).unwrap()).unwrap()
    );
    println!(
        "PAYLOAD\n{}",
        serde_json::to_string_pretty(&payload).unwrap()
    );
    let jwe_header = b64::decode(payload["jwe"]["protected"].as_str().unwrap()).unwrap();
    println!("JWE HEADER\n{}", String::from_utf8(jwe_header).unwrap());
    let opened = keys.opener().open(&sealed.bytes).unwrap();
    for r in &opened.records {
        println!("OPENED {}", serde_json::to_string(r).unwrap());
    }
    println!("GATEWAY PUB\n{}", keys.gateway().public().to_pem());
    println!("GATEWAY JWK {}", keys.gateway().public().to_jwk());
    println!(
        "RECIPIENT KEY\n{}",
        &*keys
            .recipient
            .secret()
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
    );
    println!("RECIPIENT JWK {}", keys.recipient.public().to_jwk());
}

/// Rough timing of a 100-record batch (run with --ignored --nocapture; the
/// figure only means something in an optimized build).
#[test]
#[ignore]
fn timing_of_a_100_record_batch() {
    let keys = Keys::new();
    let mut sealer = keys.sealer();
    let mut opener = keys.opener();
    let n = 50;
    let batches: Vec<Vec<Record>> = (0..n)
        .map(|i| batch("bike", i * 100 + 1..=i * 100 + 100))
        .collect();
    let start = std::time::Instant::now();
    let sealed: Vec<SealedMessage> = batches.iter().map(|b| sealer.seal(b).unwrap()).collect();
    let seal_time = start.elapsed() / n as u32;
    let start = std::time::Instant::now();
    for m in &sealed {
        opener.open(&m.bytes).unwrap();
    }
    let open_time = start.elapsed() / n as u32;
    println!(
        "seal {seal_time:?} / open {open_time:?} per 100-record message of {} bytes",
        sealed[0].bytes.len()
    );
    // The fixed cost (ECDH, key wrap, signature) is what a 1-record batch costs.
    let one = batch("bike", 1..=1);
    let start = std::time::Instant::now();
    for _ in 0..n {
        sealer.seal(&one).unwrap();
    }
    println!("seal {:?} per 1-record message", start.elapsed() / n as u32);
}

/// The worked example of docs/FORMAT-v1.md, byte for byte: an independent
/// implementation can check itself against it, and a change to the format
/// that would break existing consumers fails here.
mod format_md_example {
    use super::*;

    pub const MESSAGE: &str = r#"{"protected":"eyJhbGciOiJFUzI1NiIsImtpZCI6ImdXanQ3bm1CMXVkeUZwTFlWcDBTeEpuSThsSkV2bDdxOEFGWVpScW5HVjgiLCJ0eXAiOiJzZW5zb3JnYXRlLXNlYWxlZCtqc29uIn0","payload":"eyJ2IjoxLCJnYXRld2F5IjoiYmlrZS1waS0wMSIsInNlbnNvciI6ImJpa2UiLCJlcG9jaCI6ImUxNzY0MTAwMDAwIiwic2VxIjpbNDEsNDJdLCJyZWNvcmRzIjpbeyJzZXEiOjQxLCJ0cyI6IjIwMjUtMTEtMjVUMTk6NDc6MjEuMjUwMDAwMDAwWiIsImZpZWxkcyI6eyJzcGVlZCI6MjQuNSwiY2FkZW5jZSI6ODgsInBvd2VyIjoyMTB9LCJlbmNyeXB0ZWQiOlsyLDMsNF19LHsic2VxIjo0MiwidHMiOiIyMDI1LTExLTI1VDE5OjQ3OjIyLjI1MDAwMDAwMFoiLCJmaWVsZHMiOnsic3BlZWQiOjI0LjUsImNhZGVuY2UiOjg4LCJwb3dlciI6MjEwfSwiZW5jcnlwdGVkIjpbMiwzLDRdfV0sImp3ZSI6eyJwcm90ZWN0ZWQiOiJleUpoYkdjaU9pSkZRMFJJTFVWVEswRXlOVFpMVnlJc0ltVnVZeUk2SWtFeU5UWkhRMDBpTENKcmFXUWlPaUoyWmxSRmExcFZlV2t6UVRCSVFVTk5aRFZNVVd0UlFVcG9jWFU1WTJWYVdreEVZWEU1UlZkdGVEbHZJaXdpWlhCcklqcDdJbXQwZVNJNklrVkRJaXdpWTNKMklqb2lVQzB5TlRZaUxDSjRJam9pUjJzMWJtSjBXWHBFYzAxTFJEazFYM2t4WjB4cVNtazNZMjF2UlRkVlFVdFRiMjVHWDNKTWNqUmxRU0lzSW5raU9pSmhkMUJ3WTFZNU9YSlpRV2cyTkZacU5GZDRWR1JsWDJFelUzSnVWMDVuU1RBMGMzbEdOVmt3ZFZsekluMHNJbWRoZEdWM1lYa2lPaUppYVd0bExYQnBMVEF4SWl3aWMyVnVjMjl5SWpvaVltbHJaU0lzSW1Wd2IyTm9Jam9pWlRFM05qUXhNREF3TURBaUxDSnpaWEVpT2xzME1TdzBNbDE5IiwiZW5jcnlwdGVkX2tleSI6InA5VlFfR3BKNDE1VjNXdXRVQTRZX0YyRFBsb2I5QnZhSTBCc2Ewc1NMVTR0Qlg0TjFYOERkdyIsIml2IjoiTTcydXk5TklicFlhb05vayIsImNpcGhlcnRleHQiOiJxM1paUWZtejE2VWNmMDVLMWtNRXROeXRVVk5Eb3ZTMlpaSEdaS3prZERkWW1ZWWdqYWx3Z0VBQnlNdEdFM3VRVk11UWJ2MTJZU3o0NktBd3VrMnV2Q1NjRWw5Tm5DQzBvM1NpRm5nUHZqVVQtRlQxRXNCU2VVQk56Q0xHM1hnY2RRIiwidGFnIjoiY0Eta1F6U2RiUmphN3VrOUoxYTY5USJ9fQ","signature":"P7naL7mNRsTZ8jchn1EFk5aAzKHGeIpG0f84pgETtFpE1WvGs0K_lgi2531-tvIFtjX0dRIQaWDL9QMsSxHlGw"}"#;

    pub const GATEWAY_PUB: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHhhTL9R1TALzBB2cdc6zO4P/2BrH\nzk/ogsyxyYvFiW6kbDEcTi/0DdlqNlPm5FRF0y3+SG7O11x6kMahiIHAow==\n-----END PUBLIC KEY-----\n\n";

    pub const RECIPIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3dFHqIU3lDeSH7Pz\nGKEHLVh5mfVmPZe1GCLt/FJa+bihRANCAAQVLZXiWPyoErPZIQsIKRWleyjJ+gJ4\nQ1j2KWzmB7HwN98cns80Phgzy/TbuzuBys2Qus69TimwYQABwX7U3mLL\n-----END PRIVATE KEY-----\n\n";

    pub const OPENED: [&str; 2] = [
        r#"{"gateway":"bike-pi-01","sensor":"bike","seq":41,"ts":"2025-11-25T19:47:21.250000000Z","fields":{"speed":24.5,"cadence":88,"heart_rate":181,"incline":1.5,"resistance":7,"power":210}}"#,
        r#"{"gateway":"bike-pi-01","sensor":"bike","seq":42,"ts":"2025-11-25T19:47:22.250000000Z","fields":{"speed":24.5,"cadence":88,"heart_rate":182,"incline":1.5,"resistance":7,"power":210}}"#,
    ];

    #[test]
    fn the_documented_example_opens_to_the_documented_records() {
        let gateway = PublicKey::from_pem(GATEWAY_PUB).unwrap();
        assert_eq!(gateway.kid(), "gWjt7nmB1udyFpLYVp0SxJnI8lJEvl7q8AFYZRqnGV8");
        let recipient = RecipientKey::from_pkcs8_pem(RECIPIENT_KEY).unwrap();
        assert_eq!(
            recipient.kid(),
            "vfTEkZUyi3A0HACMd5LQkQAJhqu9ceZZLDaq9EWmx9o"
        );
        let mut opener = Opener::new(vec![gateway], Some(recipient));
        let opened = opener.open(MESSAGE.as_bytes()).unwrap();
        let lines: Vec<String> = opened
            .records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(lines, OPENED);
    }
}

#[path = "tests_v2.rs"]
mod v2_tests;

pub(super) mod properties {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Float),
            "\\PC{0,12}".prop_map(Value::Str),
        ]
    }

    /// Per record: (name index, value) pairs; names come from a small pool
    /// so records of a batch share some columns and not others.
    fn batch_fields() -> impl Strategy<Value = Vec<Vec<(usize, Value)>>> {
        proptest::collection::vec(
            proptest::collection::btree_map(0usize..8, value(), 0..6)
                .prop_map(|m| m.into_iter().collect::<Vec<_>>()),
            1..6,
        )
    }

    const NAMES: [&str; 8] = ["a", "b", "heart_rate", "ünï", "e f", "\"q\"", "g", "h"];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// Whatever the values, names and encrypted selection, opening gives
        /// back every record exactly: values, JSON types and column order.
        #[test]
        fn seal_then_open_is_the_identity(
            fields in batch_fields(),
            encrypted in proptest::collection::btree_set(0usize..8, 0..8),
            first in 0u64..u64::MAX / 2,
            shuffle in any::<u64>(),
        ) {
            let keys = Keys::new();
            let encrypt: Vec<String> = encrypted.iter().map(|&i| NAMES[i].to_string()).collect();
            let mut sealer = v1_sealer(GATEWAY, EPOCH, keys.gateway(), keys.recipient.public(), &encrypt);
            let sensor: Arc<str> = Arc::from("s");
            let records: Vec<Record> = fields
                .iter()
                .enumerate()
                .map(|(i, fs)| {
                    // Rotate so column order is not always name order.
                    let mut fs: Vec<Field> = fs
                        .iter()
                        .map(|(n, v)| Field { name: Arc::from(NAMES[*n]), value: v.clone() })
                        .collect();
                    if !fs.is_empty() {
                        let k = (shuffle as usize + i) % fs.len();
                        fs.rotate_left(k);
                    }
                    Record { sensor: Arc::clone(&sensor), seq: first + i as u64, ts: ts(i as u64), clock: None, fields: fs }
                })
                .collect();
            let sealed = sealer.seal(&records).unwrap();
            let opened = keys.opener().open(&sealed.bytes).unwrap();
            prop_assert_eq!(opened.records.len(), records.len());
            for (got, want) in opened.records.iter().zip(&records) {
                let expected: Vec<(String, Json)> = want
                    .fields
                    .iter()
                    .map(|f| (f.name.to_string(), f.value.to_json()))
                    .collect();
                prop_assert_eq!(got.fields.clone().into_vec(), expected);
                prop_assert_eq!(got.seq, want.seq);
            }
            let raw = String::from_utf8(sealed.bytes).unwrap();
            prop_assert!(!raw.contains('\n'));
        }
    }

    /// A sensor-shaped batch: every record has the same columns (names from
    /// a safe alphabet), each value of any type, strings of any Unicode
    /// (control characters, NUL and quotes included), any timestamp.
    /// Per record: seconds and nanoseconds since the epoch, and a value
    /// for each of up to 8 columns.
    pub(crate) type Row = (u64, u32, Vec<Value>);

    /// The records of a [`sensor_batch`]: sensor `bike`, sequence numbers
    /// from `first`, each row's values under the batch's column names.
    pub(crate) fn sensor_records(names: &[String], rows: Vec<Row>, first: u64) -> Vec<Record> {
        let sensor: Arc<str> = Arc::from("bike");
        let columns: Vec<Arc<str>> = names.iter().map(|n| Arc::from(n.as_str())).collect();
        rows.into_iter()
            .enumerate()
            .map(|(i, (secs, nanos, values))| Record {
                sensor: Arc::clone(&sensor),
                seq: first + i as u64,
                ts: SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
                clock: None,
                fields: columns
                    .iter()
                    .zip(values)
                    .map(|(name, value)| Field {
                        name: Arc::clone(name),
                        value,
                    })
                    .collect(),
            })
            .collect()
    }

    pub(crate) fn sensor_batch() -> impl Strategy<Value = (Vec<String>, Vec<Row>)> {
        let names = proptest::collection::btree_set("[a-z_][a-z0-9_]{0,9}", 1..=8)
            .prop_map(|s| s.into_iter().collect::<Vec<_>>());
        let value = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Float),
            any::<String>().prop_map(Value::Str),
        ];
        // Seconds up to the year 2500; nanoseconds to the last digit.
        let record = (
            0u64..16_725_225_600,
            0u32..1_000_000_000,
            proptest::collection::vec(value, 8),
        );
        (names, proptest::collection::vec(record, 1..50))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Seal then open returns exactly the records sealed: seq, ts,
        /// column order, values and JSON types, for any choice of the
        /// columns to encrypt (none, some, all, and names not present).
        #[test]
        fn seal_then_open_returns_exactly_the_records_sealed(
            (names, rows) in sensor_batch(),
            encrypt_mask in proptest::collection::vec(any::<bool>(), 8),
            extra_name in proptest::option::of("[a-z_][a-z0-9_]{0,9}"),
            first in 0u64..u64::MAX / 2,
        ) {
            let keys = Keys::new();
            let mut encrypt: Vec<String> = names
                .iter()
                .zip(&encrypt_mask)
                .filter(|(_, on)| **on)
                .map(|(n, _)| n.clone())
                .collect();
            encrypt.extend(extra_name);
            let mut sealer =
                v1_sealer(GATEWAY, EPOCH, keys.gateway(), keys.recipient.public(), &encrypt);
            let records = sensor_records(&names, rows, first);
            let sealed = sealer.seal(&records).unwrap();
            prop_assert_eq!((sealed.first_seq, sealed.records as usize), (first, records.len()));
            let opened = keys.opener().open(&sealed.bytes).unwrap();
            prop_assert_eq!((opened.first_seq, opened.last_seq), (first, first + records.len() as u64 - 1));
            prop_assert_eq!(opened.records.len(), records.len());
            for (got, want) in opened.records.iter().zip(&records) {
                prop_assert_eq!(got.seq, want.seq);
                prop_assert_eq!(&got.ts, &format_ts(want.ts));
                prop_assert_eq!(crate::record::parse_ts(&got.ts), Some(want.ts));
                prop_assert_eq!((got.gateway.as_str(), got.sensor.as_str()), (GATEWAY, "bike"));
                // serde_json numbers keep their kind: 2.0 (float) != 2 (int).
                let expected: Vec<(String, Json)> = want
                    .fields
                    .iter()
                    .map(|f| (f.name.to_string(), f.value.to_json()))
                    .collect();
                prop_assert_eq!(got.fields.clone().into_vec(), expected);
                for (f, (_, v)) in want.fields.iter().zip(got.fields.clone().into_vec()) {
                    if let Value::Float(x) = f.value {
                        prop_assert_eq!(v.as_f64().map(f64::to_bits), Some(x.to_bits()));
                    }
                }
            }
            // No encrypted column is among a record's clear fields.
            let (_, _, _, payload) = parts(&sealed.bytes);
            for record in payload["records"].as_array().unwrap() {
                for name in record["fields"].as_object().unwrap().keys() {
                    prop_assert!(!encrypt.contains(name), "{} in clear", name);
                }
            }
        }
    }
}

/// The tampering matrix of issue 5: one byte changed in each part of a
/// sealed message, inside and outside the JWE, each rejected for the reason
/// that part's check gives, and nothing panics. The JWE rows re-sign the
/// altered payload with the gateway key, so they reach the checks behind
/// the signature (what a forger holding the key, or a gateway bug, makes).
mod tampering {
    use super::*;

    type Check = fn(&OpenError) -> bool;

    /// One byte of `text` (base64url of the decoded bytes) changed: the
    /// decoded byte at `at` with its low bit flipped, re-encoded, so the
    /// change is in the part's content and not in its encoding.
    fn flip_decoded(text: &str, at: usize) -> String {
        let mut bytes = b64::decode(text).unwrap();
        bytes[at] ^= 0x01;
        b64::encode(bytes)
    }

    /// The variant's name, e.g. `BadHeader`.
    fn variant(e: &OpenError) -> String {
        let debug = format!("{e:?}");
        debug.split([' ', '(', '{']).next().unwrap().to_string()
    }

    fn decoded_len(text: &str) -> usize {
        b64::decode(text).unwrap().len()
    }

    /// `positions` of a part of `len` bytes: all of them when short, else
    /// the first and last 16 and every 7th (debug builds are slow).
    fn positions(len: usize) -> Vec<usize> {
        (0..len)
            .filter(|&i| len <= 64 || i < 16 || i + 16 >= len || i % 7 == 0)
            .collect()
    }

    /// Each byte of a JWS member, changed in the message text as received.
    #[test]
    fn a_changed_byte_in_each_jws_part_is_rejected_for_that_part() {
        let keys = Keys::new();
        let sealed = keys.sealer().seal(&batch("bike", 7..=8)).unwrap();
        let text = std::str::from_utf8(&sealed.bytes).unwrap();
        let (protected, payload, signature, _) = parts(&sealed.bytes);
        let kid = keys.gateway().kid().to_string();
        let mut opener = keys.opener();
        let span = |member: &str| {
            let start = text.find(member).unwrap();
            start..start + member.len()
        };
        let rows: [(&str, std::ops::Range<usize>, Check); 4] = [
            // The header is read before the signature: a change breaks its
            // encoding or JSON, changes alg/typ/kid (an unknown kid), or
            // else fails the signature.
            ("JWS protected header", span(&protected), |e| {
                matches!(
                    e,
                    OpenError::BadBase64 {
                        member: "JWS protected header"
                    } | OpenError::BadHeader { part: "JWS", .. }
                        | OpenError::WrongAlgorithm { part: "JWS", .. }
                        | OpenError::UntrustedKey { .. }
                        | OpenError::BadSignature { .. }
                )
            }),
            // The signature covers the payload text as received, and is
            // checked before the payload is decoded.
            ("JWS payload", span(&payload), |e| {
                matches!(e, OpenError::BadSignature { .. })
            }),
            ("JWS signature", span(&signature), |e| {
                matches!(
                    e,
                    OpenError::BadBase64 {
                        member: "JWS signature"
                    } | OpenError::BadSignature { .. }
                )
            }),
            // The JSON frame around the three members.
            ("JSON frame", 0..14, |e| matches!(e, OpenError::NotJws(_))),
        ];
        let mut tried = 0;
        for (part, range, check) in rows {
            for i in positions(range.len()).into_iter().map(|i| range.start + i) {
                let mut forged = sealed.bytes.clone();
                forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
                let e = opener
                    .open(&forged)
                    .expect_err(&format!("{part}: byte {i} changed and accepted"));
                assert!(check(&e), "{part}: byte {i} changed: wrong reason: {e}");
                if let OpenError::BadSignature { kid: k, .. } = &e {
                    assert_eq!(*k, kid, "{part}: {e}");
                }
                tried += 1;
            }
        }
        assert_eq!(opener.summary().rejected, tried);
        assert_eq!(opener.open(&sealed.bytes).unwrap().records.len(), 2);
    }

    /// Each byte of each JWE member, changed and the payload re-signed.
    #[test]
    fn a_changed_byte_in_each_jwe_part_is_rejected_for_that_part() {
        let keys = Keys::new();
        let sealed = keys.sealer().seal(&batch("bike", 7..=8)).unwrap();
        let (protected, _, _, payload) = parts(&sealed.bytes);
        let jwe = payload["jwe"].clone();
        let member = |k: &str| jwe[k].as_str().unwrap().to_string();
        let header_b64 = member("protected");
        let header: Json = serde_json::from_slice(&b64::decode(&header_b64).unwrap()).unwrap();
        let mut opener = keys.opener();

        fn aead(e: &OpenError) -> bool {
            matches!(e, OpenError::Decryption { reason } if reason.starts_with("AES-GCM authentication failed"))
        }
        fn unwrap(e: &OpenError) -> bool {
            matches!(e, OpenError::Decryption { reason } if reason.starts_with("the content key does not unwrap"))
        }
        fn off_curve(e: &OpenError) -> bool {
            matches!(e, OpenError::BadHeader { part: "JWE", detail } if detail.contains("not a point on P-256"))
        }
        /// The header is the AAD and holds the binding, the algorithms, the
        /// recipient kid and the epk: each change is caught by one of them.
        fn header_checks(e: &OpenError) -> bool {
            matches!(
                e,
                OpenError::BadBase64 { .. }
                    | OpenError::BadHeader { part: "JWE", .. }
                    | OpenError::WrongAlgorithm { part: "JWE", .. }
                    | OpenError::BindingMismatch { .. }
                    | OpenError::WrongRecipient { .. }
                    | OpenError::Decryption { .. }
            )
        }

        // (part, JWE member or epk coordinate, check)
        let rows: [(&str, &str, Check); 7] = [
            ("JWE protected header", "protected", header_checks),
            ("JWE iv", "iv", aead),
            ("JWE ciphertext", "ciphertext", aead),
            ("JWE tag", "tag", aead),
            ("JWE encrypted_key (wrapped CEK)", "encrypted_key", unwrap),
            ("JWE epk x", "epk.x", off_curve),
            ("JWE epk y", "epk.y", off_curve),
        ];
        let mut tried = 0;
        for (part, name, check) in rows {
            let len = match name {
                "epk.x" | "epk.y" => 32,
                m => decoded_len(&member(m)),
            };
            let mut reasons = std::collections::BTreeSet::new();
            for i in positions(len) {
                let mut forged_jwe = jwe.clone();
                match name {
                    "epk.x" | "epk.y" => {
                        let coord = &name[4..];
                        let mut h = header.clone();
                        h["epk"][coord] = json!(flip_decoded(h["epk"][coord].as_str().unwrap(), i));
                        forged_jwe["protected"] =
                            json!(b64::encode(serde_json::to_vec(&h).unwrap()));
                    }
                    m => forged_jwe[m] = json!(flip_decoded(&member(m), i)),
                }
                let mut forged = payload.clone();
                forged["jwe"] = forged_jwe;
                let e = opener
                    .open(&resign(&keys, &protected, &forged))
                    .expect_err(&format!("{part}: byte {i} changed and accepted"));
                assert!(check(&e), "{part}: byte {i} changed: wrong reason: {e}");
                reasons.insert(variant(&e));
                tried += 1;
            }
            if name == "protected" {
                // The header starts with `{"alg":"ECDH-ES+A256KW"` and ends
                // with the binding (`"seq":[7,8]}`): its first and last bytes
                // reach the JSON, algorithm and binding checks.
                for expected in ["BadHeader", "WrongAlgorithm", "BindingMismatch"] {
                    assert!(reasons.contains(expected), "{part}: {reasons:?}");
                }
            }
        }
        assert_eq!(opener.summary().rejected, tried);
        assert_eq!(opener.open(&sealed.bytes).unwrap().records.len(), 2);
    }

    /// Encrypted columns carried from one message into another, payload
    /// re-signed with the gateway key: the binding or the tag refuses them.
    #[test]
    fn encrypted_columns_moved_between_messages_are_rejected() {
        let keys = Keys::new();
        let mut sealer = keys.sealer();
        let target = sealer.seal(&batch("bike", 1..=2)).unwrap();
        let same_range_other_sensor = sealer.seal(&batch("rower", 1..=2)).unwrap();
        let next = sealer.seal(&batch("bike", 3..=4)).unwrap();
        let other_epoch = v1_sealer(
            GATEWAY,
            "another-epoch",
            keys.gateway(),
            keys.recipient.public(),
            &encrypt_list(),
        )
        .seal(&batch("bike", 1..=2))
        .unwrap();
        let other_gateway = v1_sealer(
            "another-gateway",
            EPOCH,
            keys.gateway(),
            keys.recipient.public(),
            &encrypt_list(),
        )
        .seal(&batch("bike", 1..=2))
        .unwrap();
        let (protected, _, _, into) = parts(&target.bytes);
        let mut opener = keys.opener();

        fn binding(field: &'static str) -> impl Fn(&OpenError) -> bool {
            move |e| matches!(e, OpenError::BindingMismatch { field: f, .. } if *f == field)
        }
        let aead = |e: &OpenError| matches!(e, OpenError::Decryption { reason } if reason.starts_with("AES-GCM"));
        // The other message's wrapped key does not unwrap with this
        // header's epk, or (when the sealer reuses its data key: same epk
        // and wrapped key) it does and the tag fails on this header (AAD).
        let decryption = |e: &OpenError| matches!(e, OpenError::Decryption { .. });
        let check_seq = binding("seq");
        let check_sensor = binding("sensor");
        let check_epoch = binding("epoch");
        let check_gateway = binding("gateway");
        // (case, source message, JWE members moved, check)
        type Row<'a> = (
            &'a str,
            &'a SealedMessage,
            &'a [&'a str],
            &'a dyn Fn(&OpenError) -> bool,
        );
        let rows: [Row<'_>; 8] = [
            (
                "whole JWE, next range",
                &next,
                &["protected", "encrypted_key", "iv", "ciphertext", "tag"],
                &check_seq,
            ),
            (
                "whole JWE, other sensor",
                &same_range_other_sensor,
                &["protected", "encrypted_key", "iv", "ciphertext", "tag"],
                &check_sensor,
            ),
            (
                "whole JWE, other epoch",
                &other_epoch,
                &["protected", "encrypted_key", "iv", "ciphertext", "tag"],
                &check_epoch,
            ),
            (
                "whole JWE, other gateway",
                &other_gateway,
                &["protected", "encrypted_key", "iv", "ciphertext", "tag"],
                &check_gateway,
            ),
            // Under this message's header (its binding), the other key.
            (
                "key, iv, ciphertext and tag",
                &next,
                &["encrypted_key", "iv", "ciphertext", "tag"],
                &decryption,
            ),
            (
                "iv, ciphertext and tag",
                &next,
                &["iv", "ciphertext", "tag"],
                &aead,
            ),
            (
                "ciphertext and tag",
                &same_range_other_sensor,
                &["ciphertext", "tag"],
                &aead,
            ),
            ("ciphertext alone", &other_epoch, &["ciphertext"], &aead),
        ];
        let cases = rows.len() as u64;
        for (case, source, members, check) in rows {
            let (_, _, _, from) = parts(&source.bytes);
            let mut forged = into.clone();
            for m in members {
                forged["jwe"][*m] = from["jwe"][*m].clone();
            }
            let e = opener
                .open(&resign(&keys, &protected, &forged))
                .expect_err(&format!("{case}: accepted"));
            assert!(check(&e), "{case}: wrong reason: {e}");
        }
        assert_eq!(opener.summary().rejected, cases);
        assert_eq!(opener.open(&target.bytes).unwrap().records.len(), 2);
    }

    /// A genuine message's payload signed again by a key the consumer does
    /// not trust: refused by kid, and the kid is in the reason.
    #[test]
    fn a_message_re_signed_by_an_untrusted_key_is_rejected_naming_its_kid() {
        let keys = Keys::new();
        let sealed = keys.sealer().seal(&batch("bike", 1..=2)).unwrap();
        let (_, _, _, payload) = parts(&sealed.bytes);
        let stranger = GatewayKey::generate();
        let stranger_kid = stranger.kid().to_string();
        let header = |kid: &str| {
            b64::encode(
                serde_json::to_vec(
                    &json!({"alg": "ES256", "kid": kid, "typ": "sensorgate-sealed+json"}),
                )
                .unwrap(),
            )
        };
        let json = serde_json::to_vec(&payload).unwrap();
        let mut opener = keys.opener();

        // Under its own kid: not trusted.
        let forged =
            sealer::sign_jws(&stranger, Nonces::Hedged, &header(&stranger_kid), &json).unwrap();
        let e = opener.open(&forged).unwrap_err();
        assert!(
            matches!(&e, OpenError::UntrustedKey { kid } if *kid == stranger_kid),
            "{e}"
        );
        assert!(e.to_string().contains(&stranger_kid), "{e}");

        // Claiming the trusted kid: the signature does not verify with it.
        let trusted_kid = keys.gateway().kid().to_string();
        let forged =
            sealer::sign_jws(&stranger, Nonces::Hedged, &header(&trusted_kid), &json).unwrap();
        let e = opener.open(&forged).unwrap_err();
        assert!(
            matches!(&e, OpenError::BadSignature { kid, .. } if *kid == trusted_kid),
            "{e}"
        );
        assert!(e.to_string().contains(&trusted_kid), "{e}");
        assert_eq!(opener.summary().rejected, 2);
    }

    /// A message sealed for another recipient: refused by kid before any
    /// ECDH; with the kid rewritten to ours, the wrapped key does not unwrap.
    #[test]
    fn a_message_sealed_for_another_recipient_is_rejected() {
        let keys = Keys::new();
        let other = RecipientKey::generate();
        let other_kid = other.kid().to_string();
        let sealed = v1_sealer(
            GATEWAY,
            EPOCH,
            keys.gateway(),
            other.public(),
            &encrypt_list(),
        )
        .seal(&batch("bike", 1..=2))
        .unwrap();
        let mut opener = keys.opener();
        let e = opener.open(&sealed.bytes).unwrap_err();
        assert!(
            matches!(&e, OpenError::WrongRecipient { sealed_for, ours }
                if *sealed_for == other_kid && ours == keys.recipient.kid()),
            "{e}"
        );
        assert!(e.to_string().contains(&other_kid), "{e}");

        let (protected, _, _, mut payload) = parts(&sealed.bytes);
        let mut header: Json = serde_json::from_slice(
            &b64::decode(payload["jwe"]["protected"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        header["kid"] = json!(keys.recipient.kid());
        payload["jwe"]["protected"] = json!(b64::encode(serde_json::to_vec(&header).unwrap()));
        let e = opener
            .open(&resign(&keys, &protected, &payload))
            .unwrap_err();
        assert!(
            matches!(&e, OpenError::Decryption { reason } if reason.contains("does not unwrap")),
            "{e}"
        );
        assert_eq!(opener.summary().rejected, 2);
    }
}

/// Messages under one reused data key share the CEK cache entry; a message
/// whose wrapped key was altered is a different entry and still fails.
#[test]
fn the_opener_caches_a_reused_data_key_and_still_rejects_an_altered_one() {
    let keys = Keys::new();
    let mut sealer = keys.sealer();
    let a = sealer.seal(&batch("bike", 0..=1)).unwrap();
    let b = sealer.seal(&batch("bike", 2..=3)).unwrap();
    let mut opener = keys.opener();
    assert_eq!(opener.open(&a.bytes).unwrap().records.len(), 2);
    assert_eq!(opener.open(&b.bytes).unwrap().records.len(), 2);

    let c = sealer.seal(&batch("bike", 4..=5)).unwrap();
    let (protected, _, _, mut payload) = parts(&c.bytes);
    let wrapped = payload["jwe"]["encrypted_key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = b64::decode(&wrapped).unwrap();
    bytes[0] ^= 1;
    payload["jwe"]["encrypted_key"] = Json::String(b64::encode(&bytes));
    let err = opener
        .open(&resign(&keys, &protected, &payload))
        .unwrap_err();
    assert!(matches!(err, OpenError::Decryption { .. }), "{err}");
    assert_eq!(opener.open(&c.bytes).unwrap().records.len(), 2);
}
