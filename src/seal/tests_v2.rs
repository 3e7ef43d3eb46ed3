//! Format version 2 (COSE and CBOR by column, `docs/FORMAT.md`): sealing
//! and opening, checked against version 1 for the same records, and every
//! way a message can be altered.

use super::*;
use crate::seal::cbor::{self as cb, Item, Reader};
use crate::seal::columns::Layout;
use crate::seal::format::Selection;
use crate::seal::v2::{BatchHeader, write_payload};
use crate::seal::{GapCause, GapNotice};

fn v2_sealer(keys: &Keys, encrypt: &[String]) -> Sealer {
    Sealer::new(
        GATEWAY,
        EPOCH,
        keys.gateway(),
        keys.recipient.public(),
        encrypt,
    )
}

fn opened(keys: &Keys, message: &[u8]) -> Vec<OpenedRecord> {
    keys.opener().open(message).unwrap().records
}

#[test]
fn version_2_opens_to_exactly_what_version_1_opens_to() {
    let keys = Keys::new();
    let records = batch("bike", 41..=60);
    let v1 = keys.sealer().seal(&records).unwrap();
    let v2 = v2_sealer(&keys, &encrypt_list()).seal(&records).unwrap();
    assert_eq!(v2.bytes[0], 0xd2, "a tagged COSE_Sign1");
    assert_eq!(opened(&keys, &v2.bytes), opened(&keys, &v1.bytes));
    assert_eq!((v2.first_seq, v2.last_seq, v2.records), (41, 60, 20));
    assert!(
        v2.bytes.len() * 2 < v1.bytes.len(),
        "v2 {} bytes, v1 {}",
        v2.bytes.len(),
        v1.bytes.len()
    );
}

#[test]
fn encrypted_values_and_names_are_not_in_the_message() {
    let keys = Keys::new();
    let sealed = v2_sealer(&keys, &encrypt_list())
        .seal(&batch("bike", 1..=3))
        .unwrap();
    let haystack = String::from_utf8_lossy(&sealed.bytes);
    for secret in ["heart_rate", "resistance", "incline", "SECRET-LEVEL"] {
        assert!(!haystack.contains(secret), "{secret} is visible");
    }
    assert!(haystack.contains("cadence") && haystack.contains("speed"));
}

/// The COSE_Sign1's payload, for tests that look inside or rebuild it.
fn payload_of(message: &[u8]) -> Vec<u8> {
    cose::parse_sign1(message).unwrap().sign1.payload.unwrap()
}

#[test]
fn the_payload_has_exactly_the_documented_keys() {
    let keys = Keys::new();
    let sealed = v2_sealer(&keys, &encrypt_list())
        .seal(&batch("bike", 1..=3))
        .unwrap();
    let payload: ciborium::Value =
        ciborium::from_reader(payload_of(&sealed.bytes).as_slice()).unwrap();
    let keys_found: Vec<&str> = payload
        .as_map()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_text().unwrap())
        .collect();
    assert_eq!(
        keys_found,
        [
            "v", "gateway", "sensor", "epoch", "seq", "tu", "t", "cols", "ep", "enc"
        ]
    );
    let plain = v2_sealer(&keys, &[]).seal(&batch("bike", 1..=3)).unwrap();
    let payload: ciborium::Value =
        ciborium::from_reader(payload_of(&plain.bytes).as_slice()).unwrap();
    assert_eq!(payload.as_map().unwrap().len(), 8, "no ep, no enc");
    // Without encrypted columns, no recipient key is needed to open.
    let opener = Opener::new(vec![keys.gateway().public()], None)
        .open(&plain.bytes)
        .unwrap();
    assert_eq!(opener.records.len(), 3);
    let err = Opener::new(vec![keys.gateway().public()], None)
        .open(&sealed.bytes)
        .unwrap_err();
    assert!(
        matches!(err, OpenError::MissingRecipientKey { .. }),
        "{err}"
    );
}

#[test]
fn any_changed_byte_is_rejected() {
    let keys = Keys::new();
    let sealed = v2_sealer(&keys, &encrypt_list())
        .seal(&batch("bike", 1..=2))
        .unwrap();
    let mut opener = keys.opener();
    for i in 0..sealed.bytes.len() {
        for flip in [0x01u8, 0x80] {
            let mut bad = sealed.bytes.clone();
            bad[i] ^= flip;
            assert!(
                opener.open(&bad).is_err(),
                "byte {i} ^ {flip:#x} was accepted"
            );
        }
    }
    // The original still opens after all that.
    assert_eq!(opener.open(&sealed.bytes).unwrap().records.len(), 2);
}

#[test]
fn encrypted_columns_moved_to_another_message_do_not_open() {
    // The gateway's own key re-signs a payload that carries another
    // message's COSE_Encrypt, under the same data key: only the external
    // AAD tells them apart, and it does.
    let keys = Keys::new();
    let encrypt = encrypt_list();
    let mut sealer = v2_sealer(&keys, &encrypt);
    let a = sealer.seal(&batch("bike", 1..=2)).unwrap();
    let b_records = batch("bike", 3..=4);
    let a_payload = payload_of(&a.bytes);
    let v2::PayloadIn::Batch(a_batch) = v2::parse_payload(&a_payload).unwrap() else {
        panic!("a batch");
    };
    let layout = Layout::of(&b_records);
    let positions = layout.encrypted(Selection(&encrypt));
    let mut forged = Vec::new();
    write_payload(
        &mut forged,
        &BatchHeader {
            gateway: GATEWAY,
            sensor: "bike",
            epoch: EPOCH,
            first: 3,
            last: 4,
        },
        &b_records,
        &layout,
        Selection(&encrypt),
        Some((&positions, a_batch.enc.unwrap())),
        None,
    );
    let protected = cose::sign1_protected(&keys.gateway().public().kid_bytes());
    let message = cose::sign1(&keys.gateway(), Nonces::Hedged, &protected, &forged).unwrap();
    let err = keys.opener().open(&message).unwrap_err();
    assert!(matches!(err, OpenError::Decryption { .. }), "{err}");
    // The same payload with its own encryption opens: the forgery differs
    // only in where the ciphertext came from.
    let b = sealer.seal(&b_records).unwrap();
    assert_eq!(keys.opener().open(&b.bytes).unwrap().records.len(), 2);
}

#[test]
fn keys_are_checked_for_signer_and_recipient() {
    let keys = Keys::new();
    let sealed = v2_sealer(&keys, &encrypt_list())
        .seal(&batch("bike", 1..=2))
        .unwrap();
    let stranger = GatewayKey::generate();
    let err = Opener::new(vec![stranger.public()], None)
        .open(&sealed.bytes)
        .unwrap_err();
    assert!(
        matches!(&err, OpenError::UntrustedKey { kid } if kid == keys.gateway().kid()),
        "{err}"
    );
    let other = RecipientKey::generate();
    let err = Opener::new(vec![keys.gateway().public()], Some(other))
        .open(&sealed.bytes)
        .unwrap_err();
    assert!(matches!(err, OpenError::WrongRecipient { .. }), "{err}");
}

#[test]
fn every_message_under_one_reused_data_key_opens() {
    let keys = Keys::new();
    let mut sealer = v2_sealer(&keys, &encrypt_list());
    let mut opener = keys.opener();
    for i in 0..5 {
        let sealed = sealer.seal(&batch("bike", i * 2..=i * 2 + 1)).unwrap();
        assert_eq!(opener.open(&sealed.bytes).unwrap().records.len(), 2);
    }
}

#[test]
fn sensors_with_varying_fields_keep_every_value() {
    // JSON and key=value sensors: fields absent in some records, in
    // another order in others. Values and types come back; the order is
    // the batch's column order.
    let keys = Keys::new();
    let sensor: Arc<str> = Arc::from("kv");
    let f = |name: &str, value: Value| Field {
        name: Arc::from(name),
        value,
    };
    let records = vec![
        Record {
            sensor: Arc::clone(&sensor),
            seq: 7,
            ts: ts(7),
            clock: None,
            fields: vec![f("a", Value::Int(1)), f("heart_rate", Value::Int(60))],
        },
        Record {
            sensor: Arc::clone(&sensor),
            seq: 8,
            ts: ts(8),
            clock: None,
            fields: vec![
                f("heart_rate", Value::Int(61)),
                f("b", Value::Str("x".into())),
            ],
        },
        Record {
            sensor: Arc::clone(&sensor),
            seq: 9,
            ts: ts(9),
            clock: None,
            fields: vec![f("b", Value::Float(f64::INFINITY))],
        },
    ];
    let sealed = v2_sealer(&keys, &encrypt_list()).seal(&records).unwrap();
    let got = opened(&keys, &sealed.bytes);
    let fields: Vec<Json> = got
        .iter()
        .map(|r| serde_json::to_value(&r.fields).unwrap())
        .collect();
    assert_eq!(fields[0], json!({"a": 1, "heart_rate": 60}));
    assert_eq!(fields[1], json!({"heart_rate": 61, "b": "x"}));
    assert_eq!(fields[2], json!({"b": null}));
    assert_eq!(
        got[1].fields.names().collect::<Vec<_>>(),
        ["heart_rate", "b"]
    );
}

#[test]
fn hostile_payloads_are_refused_after_the_signature() {
    // Payloads the gateway would never write, signed with its key: each is
    // refused with a reason, none panics or allocates its claimed size.
    let keys = Keys::new();
    let protected = cose::sign1_protected(&keys.gateway().public().kid_bytes());
    let sign =
        |payload: &[u8]| cose::sign1(&keys.gateway(), Nonces::Hedged, &protected, payload).unwrap();
    type Writer<'w> = &'w dyn Fn(&mut Vec<u8>);
    let map = |entries: &[(&str, Writer<'_>)]| {
        let mut out = Vec::new();
        cb::map(&mut out, entries.len());
        for (k, v) in entries {
            cb::text(&mut out, k);
            v(&mut out);
        }
        out
    };
    let v2 = |o: &mut Vec<u8>| cb::uint(o, 2);
    let text = |s: &'static str| move |o: &mut Vec<u8>| cb::text(o, s);
    let seq = |a: u64, b: u64| {
        move |o: &mut Vec<u8>| {
            cb::array(o, 2);
            cb::uint(o, a);
            cb::uint(o, b);
        }
    };
    let tu = |o: &mut Vec<u8>| cb::uint(o, 3);
    let t1 = |o: &mut Vec<u8>| {
        cb::array(o, 1);
        cb::uint(o, 1_764_100_000_000);
    };
    let no_cols = |o: &mut Vec<u8>| cb::array(o, 0);
    let (gw, s, e) = (text(GATEWAY), text("bike"), text(EPOCH));
    let good = map(&[
        ("v", &v2),
        ("gateway", &gw),
        ("sensor", &s),
        ("epoch", &e),
        ("seq", &seq(5, 5)),
        ("tu", &tu),
        ("t", &t1),
        ("cols", &no_cols),
    ]);
    assert_eq!(opened(&keys, &sign(&good)).len(), 1);

    let v3 = |o: &mut Vec<u8>| cb::uint(o, 3);
    let huge_cols = |o: &mut Vec<u8>| {
        cb::array(o, 1);
        cb::array(o, 2);
        cb::text(o, "x");
        cb::array(o, usize::MAX >> 8);
    };
    let bad_tu = |o: &mut Vec<u8>| cb::uint(o, 4);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "version",
            map(&[
                ("v", &v3),
                ("gateway", &gw),
                ("sensor", &s),
                ("epoch", &e),
                ("seq", &seq(5, 5)),
                ("tu", &tu),
                ("t", &t1),
                ("cols", &no_cols),
            ]),
        ),
        (
            "unknown key",
            map(&[
                ("v", &v2),
                ("gateway", &gw),
                ("sensor", &s),
                ("epoch", &e),
                ("seq", &seq(5, 5)),
                ("tu", &tu),
                ("t", &t1),
                ("cols", &no_cols),
                ("extra", &tu),
            ]),
        ),
        (
            "reversed seq",
            map(&[
                ("v", &v2),
                ("gateway", &gw),
                ("sensor", &s),
                ("epoch", &e),
                ("seq", &seq(6, 5)),
                ("tu", &tu),
                ("t", &t1),
                ("cols", &no_cols),
            ]),
        ),
        (
            "t too short",
            map(&[
                ("v", &v2),
                ("gateway", &gw),
                ("sensor", &s),
                ("epoch", &e),
                ("seq", &seq(5, 6)),
                ("tu", &tu),
                ("t", &t1),
                ("cols", &no_cols),
            ]),
        ),
        (
            "huge column",
            map(&[
                ("v", &v2),
                ("gateway", &gw),
                ("sensor", &s),
                ("epoch", &e),
                ("seq", &seq(5, 5)),
                ("tu", &tu),
                ("t", &t1),
                ("cols", &huge_cols),
            ]),
        ),
        (
            "time unit",
            map(&[
                ("v", &v2),
                ("gateway", &gw),
                ("sensor", &s),
                ("epoch", &e),
                ("seq", &seq(5, 5)),
                ("tu", &bad_tu),
                ("t", &t1),
                ("cols", &no_cols),
            ]),
        ),
        (
            "duplicate key",
            map(&[
                ("v", &v2),
                ("v", &v2),
                ("gateway", &gw),
                ("sensor", &s),
                ("epoch", &e),
                ("seq", &seq(5, 5)),
                ("tu", &tu),
                ("t", &t1),
                ("cols", &no_cols),
            ]),
        ),
    ];
    for (what, payload) in cases {
        let err = keys.opener().open(&sign(&payload)).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::BadPayload(_) | OpenError::UnsupportedVersion { .. }
            ),
            "{what}: {err}"
        );
    }
}

#[test]
fn open_stream_reads_cbor_messages_between_json_lines_and_hex_lines() {
    let keys = Keys::new();
    let mut v2 = v2_sealer(&keys, &encrypt_list());
    let a = v2.seal(&batch("bike", 1..=2)).unwrap();
    let b = keys.sealer().seal(&batch("bike", 3..=4)).unwrap();
    let c = v2.seal(&batch("bike", 5..=6)).unwrap();
    let d = v2.seal(&batch("bike", 7..=8)).unwrap();
    let mut input = a.bytes.clone();
    input.push(b'\n');
    input.extend_from_slice(&b.bytes);
    input.push(b'\n');
    // Back to back, nothing between (a CBOR sequence).
    input.extend_from_slice(&c.bytes);
    let hex: String = d.bytes.iter().map(|x| format!("{x:02x}")).collect();
    input.extend_from_slice(hex.as_bytes());
    input.push(b'\n');
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let summary = open_stream(Cursor::new(input), &mut out, &mut err, &mut keys.opener()).unwrap();
    let err = String::from_utf8(err).unwrap();
    assert_eq!(
        (summary.messages, summary.records, summary.rejected),
        (4, 8, 0),
        "{err}"
    );
    let seqs: Vec<u64> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Json>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
}

#[test]
fn a_cut_short_cbor_message_is_one_rejection_not_a_hang() {
    let keys = Keys::new();
    let a = v2_sealer(&keys, &encrypt_list())
        .seal(&batch("bike", 1..=2))
        .unwrap();
    let input = a.bytes[..a.bytes.len() - 10].to_vec();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let summary = open_stream(Cursor::new(input), &mut out, &mut err, &mut keys.opener()).unwrap();
    assert_eq!((summary.messages, summary.rejected), (0, 1));
    let err = String::from_utf8(err).unwrap();
    assert!(err.contains("rejected message #1 at byte 0: "), "{err}");
}

#[test]
fn the_payload_reads_in_any_key_order() {
    // Map order carries no meaning: a payload with its keys reversed
    // (signed by the gateway key) opens to the same records.
    let keys = Keys::new();
    let sealed = v2_sealer(&keys, &encrypt_list())
        .seal(&batch("bike", 1..=3))
        .unwrap();
    let payload = payload_of(&sealed.bytes);
    let value: ciborium::Value = ciborium::from_reader(payload.as_slice()).unwrap();
    let mut entries = value.as_map().unwrap().clone();
    entries.reverse();
    let mut reversed = Vec::new();
    ciborium::into_writer(&ciborium::Value::Map(entries), &mut reversed).unwrap();
    let protected = cose::sign1_protected(&keys.gateway().public().kid_bytes());
    let message = cose::sign1(&keys.gateway(), Nonces::Hedged, &protected, &reversed).unwrap();
    assert_eq!(opened(&keys, &message), opened(&keys, &sealed.bytes));
    // And a reader of our own finds the keys in the order written.
    let mut r = Reader::new(&payload);
    assert_eq!(r.next().unwrap(), Item::Map(10));
    assert_eq!(r.next().unwrap(), Item::Text("v"));
}

#[test]
fn a_gap_notice_declares_its_range_and_the_summary_tells_declared_from_unexplained() {
    let keys = Keys::new();
    let mut sealer = v2_sealer(&keys, &encrypt_list());
    let before = sealer.seal(&batch("bike", 0..=9)).unwrap();
    let notice = sealer
        .seal_notice(&GapNotice {
            sensor: Arc::from("bike"),
            first: 10,
            last: 29,
            lost: 20,
            exact: false,
            cause: GapCause::UncleanStop,
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        (notice.first_seq, notice.last_seq, notice.records),
        (10, 29, 0)
    );
    let after = sealer.seal(&batch("bike", 30..=34)).unwrap();
    // 35..=39 vanish without a word; 40..=41 arrive.
    let last = sealer.seal(&batch("bike", 40..=41)).unwrap();

    let mut input = Vec::new();
    for m in [&before, &notice, &after, &last] {
        input.extend_from_slice(&m.bytes);
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let summary = open_stream(Cursor::new(input), &mut out, &mut err, &mut keys.opener()).unwrap();
    let err = String::from_utf8(err).unwrap();
    assert_eq!(
        (
            summary.messages,
            summary.records,
            summary.missing,
            summary.declared
        ),
        (4, 17, 25, 20),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "declared: {GATEWAY}/bike epoch {EPOCH}: seq 10..29 will not arrive: at most 20 records lost (unclean-stop), the other numbers never used"
        )),
        "{err}"
    );
    assert!(
        err.contains("seq 10..29 missing (declared by the gateway)"),
        "{err}"
    );
    assert!(err.contains("seq 35..39 missing\n"), "{err}");
    assert!(
        err.contains("25 records missing in 2 gaps (20 declared by the gateway, 5 unexplained)"),
        "{err}"
    );
    // A version 1 sealer has no notices.
    assert!(
        keys.sealer()
            .seal_notice(&GapNotice {
                sensor: Arc::from("bike"),
                first: 1,
                last: 2,
                lost: 2,
                exact: true,
                cause: GapCause::SpoolDamage,
            })
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_gap_notice_that_claims_more_than_its_range_is_refused() {
    let keys = Keys::new();
    let mut sealer = v2_sealer(&keys, &[]);
    for (lost, exact) in [(21, false), (5, true)] {
        let notice = sealer
            .seal_notice(&GapNotice {
                sensor: Arc::from("bike"),
                first: 10,
                last: 29,
                lost,
                exact,
                cause: GapCause::SpoolDamage,
            })
            .unwrap()
            .unwrap();
        let err = keys.opener().open(&notice.bytes).unwrap_err();
        assert!(matches!(err, OpenError::BadPayload(_)), "{err}");
    }
}

mod properties {
    use super::*;
    use crate::seal::tests::properties::{sensor_batch, sensor_records};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Seal then open returns exactly the records sealed, and the same
        /// as version 1 does: seq, ts to the nanosecond, column order,
        /// values, JSON types and float bits, for any columns encrypted.
        #[test]
        fn version_2_returns_exactly_the_records_sealed(
            (names, rows) in sensor_batch(),
            encrypt_mask in proptest::collection::vec(any::<bool>(), 8),
            first in 0u64..u64::MAX / 2,
        ) {
            let keys = Keys::new();
            let encrypt: Vec<String> = names
                .iter()
                .zip(&encrypt_mask)
                .filter(|(_, on)| **on)
                .map(|(n, _)| n.clone())
                .collect();
            let records = sensor_records(&names, rows, first);
            let sealed = v2_sealer(&keys, &encrypt).seal(&records).unwrap();
            let got = keys.opener().open(&sealed.bytes).unwrap().records;
            prop_assert_eq!(got.len(), records.len());
            for (got, want) in got.iter().zip(&records) {
                prop_assert_eq!(got.seq, want.seq);
                prop_assert_eq!(&got.ts, &format_ts(want.ts));
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
            let v1 = v1_sealer(GATEWAY, EPOCH, keys.gateway(), keys.recipient.public(), &encrypt)
                .seal(&records)
                .unwrap();
            prop_assert_eq!(keys.opener().open(&v1.bytes).unwrap().records, got);
        }
    }
}

/// Records of `sensor` stamped from `wall_s` (1 s apart) at boot clock
/// `boot_s` onwards, synchronised or not.
fn stamped(
    sensor: &str,
    seqs: std::ops::RangeInclusive<u64>,
    wall_s: u64,
    boot_s: u64,
    synced: bool,
) -> Vec<Record> {
    let first = *seqs.start();
    batch(sensor, seqs)
        .into_iter()
        .map(|mut r| {
            let i = r.seq - first;
            r.ts = SystemTime::UNIX_EPOCH + Duration::from_millis((wall_s + i) * 1000 + 250);
            r.clock = Some(crate::clock::ClockMark {
                boot_ms: (boot_s + i) * 1000,
                synced,
            });
            r
        })
        .collect()
}

const BOOT: [u8; 16] = *b"boot-id-16-bytes";

#[test]
fn unsynchronised_batches_say_so_and_the_first_synchronised_one_anchors() {
    let keys = Keys::new();
    let mut sealer = v2_sealer(&keys, &encrypt_list()).with_boot_id(BOOT);
    let clock_of = |bytes: &[u8]| {
        let payload = payload_of(bytes);
        let v2::PayloadIn::Batch(b) = v2::parse_payload(&payload).unwrap() else {
            panic!("a batch")
        };
        b.clock
    };
    // Synchronised at start: the first batch of each sensor anchors.
    let start = sealer
        .seal(&stamped("bike", 0..=1, 5000, 10, true))
        .unwrap();
    assert_eq!(
        clock_of(&start.bytes),
        Some(v2::BatchClock {
            synced: true,
            boot: BOOT,
            boot_ms: 10_000
        })
    );
    let again = sealer
        .seal(&stamped("bike", 2..=3, 5002, 12, true))
        .unwrap();
    assert_eq!(clock_of(&again.bytes), None, "one anchor is enough");
    let other = sealer.seal(&stamped("row", 0..=0, 5003, 13, true)).unwrap();
    assert!(clock_of(&other.bytes).is_some_and(|c| c.synced));
    // Unsynchronised: every batch says so.
    for (seqs, boot_s) in [(4..=5, 20), (6..=7, 22)] {
        let sealed = sealer
            .seal(&stamped("bike", seqs, 100, boot_s, false))
            .unwrap();
        assert_eq!(
            clock_of(&sealed.bytes),
            Some(v2::BatchClock {
                synced: false,
                boot: BOOT,
                boot_ms: boot_s * 1000
            })
        );
    }
    // Synchronised again: each sensor anchors once more.
    for sensor in ["row", "bike"] {
        let sealed = sealer
            .seal(&stamped(sensor, 8..=8, 6000, 30, true))
            .unwrap();
        assert!(clock_of(&sealed.bytes).is_some_and(|c| c.synced));
        let sealed = sealer
            .seal(&stamped(sensor, 9..=9, 6001, 31, true))
            .unwrap();
        assert_eq!(clock_of(&sealed.bytes), None);
    }
    // Times a device gave carry nothing.
    let device = sealer.seal(&batch("bike", 10..=11)).unwrap();
    assert_eq!(clock_of(&device.bytes), None);
}

#[test]
fn open_corrects_what_was_stamped_before_the_anchor_and_says_which() {
    let keys = Keys::new();
    let mut sealer = v2_sealer(&keys, &encrypt_list()).with_boot_id(BOOT);
    // Boot at 1970 + 0 s (no saved time); 10 s later records are read.
    // Three hours after boot NTP sets the clock to 2026-12-08T06:00:00Z.
    let synced_at = 1_796_709_600;
    let mut messages = Vec::new();
    for (seqs, boot_s) in [(0..=2, 10), (3..=5, 13)] {
        let wall = boot_s;
        messages.extend(
            sealer
                .seal(&stamped("bike", seqs, wall, boot_s, false))
                .unwrap()
                .bytes,
        );
    }
    messages.extend(
        sealer
            .seal(&stamped("bike", 6..=7, synced_at, 3 * 3600, true))
            .unwrap()
            .bytes,
    );
    // Stamped unsynchronised after the anchor (the kernel lost its sync).
    messages.extend(
        sealer
            .seal(&stamped("bike", 8..=8, 50, 3 * 3600 + 60, false))
            .unwrap()
            .bytes,
    );
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut opener = keys.opener();
    let summary = open_stream(&messages[..], &mut out, &mut err, &mut opener).unwrap();
    let err = String::from_utf8(err).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..=8).collect::<Vec<_>>(),
        "held until the anchor, in order"
    );
    // Record 0 was read 10 s after boot: 3 h − 10 s before the anchor.
    let expect = |boot_s: u64| {
        crate::record::format_ts(
            SystemTime::UNIX_EPOCH
                + Duration::from_millis((synced_at + boot_s - 3 * 3600) * 1000 + 250),
        )
    };
    for (line, boot_s) in lines[..6].iter().zip(10..) {
        assert_eq!(line["ts"], expect(boot_s), "{line}");
        assert_eq!(line["ts_synced"], false);
        assert!(line["ts_stamped"].is_string());
    }
    for line in &lines[6..8] {
        assert!(line.get("ts_synced").is_none() && line.get("ts_stamped").is_none());
    }
    assert_eq!(lines[8]["ts"], expect(3 * 3600 + 60));
    assert_eq!(summary.unsynced, 7);
    assert_eq!(summary.corrected, 7);
    assert_eq!(err.matches("corrected: ").count(), 3, "{err}");
    assert!(
        err.contains(
            "seq 0..2: stamped before the gateway's clock was synchronised; times moved by +56y"
        ),
        "{err}"
    );
    assert!(
        err.contains("7 records stamped before the gateway's clock was synchronised (7 corrected)"),
        "{err}"
    );

    // Without its anchor: printed as stamped, marked, and said.
    let first = sealer
        .seal(&stamped("bike", 9..=9, 70, 3 * 3600 + 80, false))
        .unwrap();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let summary = open_stream(&first.bytes[..], &mut out, &mut err, &mut keys.opener()).unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(line["ts_synced"], false);
    assert!(line.get("ts_stamped").is_none());
    assert_eq!((summary.unsynced, summary.corrected), (1, 0));
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.contains("not corrected: bike-pi-01/bike epoch"),
        "{err}"
    );
}

#[test]
fn without_holding_open_prints_at_once_and_says_the_correction_later() {
    let keys = Keys::new();
    let mut sealer = v2_sealer(&keys, &encrypt_list()).with_boot_id(BOOT);
    let mut messages = Vec::new();
    messages.extend(
        sealer
            .seal(&stamped("bike", 0..=1, 10, 10, false))
            .unwrap()
            .bytes,
    );
    messages.extend(
        sealer
            .seal(&stamped("bike", 2..=2, 5000, 100, true))
            .unwrap()
            .bytes,
    );
    let options = StreamOptions {
        hold_unsynced: 0,
        ..StreamOptions::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    open_stream_with(
        &messages[..],
        &mut out,
        &mut err,
        &mut keys.opener(),
        &options,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    let err = String::from_utf8(err).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].contains("\"ts_synced\":false") && !lines[0].contains("ts_stamped"));
    // Boot second 10 is 90 s before the anchor: stamped at 10.25 s, really
    // at 4910.25 s, so 4900 s off.
    assert!(
        err.contains("correction: bike-pi-01/bike epoch")
            && err.contains("seq 0..1: printed before the anchor of its boot came")
            && err.contains("they are off by +1h 21m 40s (add it)"),
        "{err}"
    );
    assert!(!err.contains("not corrected"), "{err}");
}
