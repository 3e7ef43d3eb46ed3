//! Opening: the consumer side. Verifies a sealed message against trusted
//! gateway keys, checks every binding, decrypts the encrypted fields with
//! the recipient key, and drops records already seen.
//!
//! Checks run cheapest-first and nothing inside the payload is trusted
//! before the signature verifies; the duplicate/gap tracker is updated only
//! for messages that pass every check, so a rejected message never hides a
//! later genuine one as a "duplicate".
//!
//! Verdicts per message: *ok* (its new records are printed), *duplicate*
//! (its range was seen before with the same records: normal under
//! at-least-once delivery, nothing printed twice), *conflict* (its exact
//! range was seen before with different records: rejected), *replay*
//! (with [`Opener::with_strict_order`]: a range entirely below the highest
//! seq seen on its stream, not a known duplicate: rejected), *rejected*
//! (fails a check). *Gaps* are the sequence numbers missing between the
//! lowest and highest seen per stream, reported at the end.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Write};

use serde::Serialize;

use super::b64;
use super::columns;
use super::cose;
use super::format::{
    FORMAT_VERSION, FieldMap, JWS_ALG, JWS_TYP, JwsHeader, JwsIn, PayloadIn, VersionOnly, merge,
};
use super::jwe::{self, Binding, expect_param};
use super::keys::{PublicKey, RecipientKey, VerifyKey};
use super::retime::{self, Anchors, MessageClock};
use super::tracker::{Digest, RangeVerdict, SequenceTracker};
use super::v2::{self, FORMAT_VERSION_2, PayloadError};
use crate::record::parse_ts;

/// The first byte of a version 2 message: CBOR tag 18 (COSE_Sign1).
const COSE_SIGN1_FIRST_BYTE: u8 = 0xd2;

/// The largest sealed message `open` accepts (bounded memory on hostile
/// input). Far above any batch the gateway produces.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why a sealed message was rejected. Values taken from the message are
/// shown escaped and shortened, so a rejection stays one readable line.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("message is {len} bytes, more than the {max}-byte limit")]
    TooLong { len: u64, max: usize },
    #[error(
        "not a sealed message (a JSON object with exactly protected, payload and signature): {0}"
    )]
    NotJws(String),
    #[error("not a sealed message (a tagged COSE_Sign1): {0}")]
    NotCose(String),
    #[error("the {member} is not base64url without padding")]
    BadBase64 { member: &'static str },
    #[error("bad {part} protected header: {detail}")]
    BadHeader { part: &'static str, detail: String },
    #[error("{part} header {param} is {}, expected {expected:?}", shown(found))]
    WrongAlgorithm {
        part: &'static str,
        param: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error(
        "signed with key kid {}, which is not a trusted gateway key (trust its .pub file if it is one of yours)",
        shown(kid)
    )]
    UntrustedKey { kid: String },
    #[error(
        "signature does not verify with trusted key kid {kid} ({reason}): the message was altered or forged"
    )]
    BadSignature { kid: String, reason: &'static str },
    #[error(
        "payload format version {found} is not supported (this build reads versions {FORMAT_VERSION} and {FORMAT_VERSION_2})"
    )]
    UnsupportedVersion { found: String },
    #[error("bad payload: {0}")]
    BadPayload(String),
    #[error("records do not form the declared seq range [{first}, {last}]: {detail}")]
    SeqRange {
        first: u64,
        last: u64,
        detail: String,
    },
    #[error(
        "the JWE is bound to {field} {} but the message says {}: encrypted fields from another message",
        shown(header),
        shown(payload)
    )]
    BindingMismatch {
        field: &'static str,
        header: String,
        payload: String,
    },
    #[error(
        "the message has encrypted fields for recipient kid {} but no recipient key was given",
        shown(kid)
    )]
    MissingRecipientKey { kid: String },
    #[error(
        "the encrypted fields are for recipient kid {} but the recipient key given has kid {ours}",
        shown(sealed_for)
    )]
    WrongRecipient { sealed_for: String, ours: String },
    #[error("decryption failed: {reason}")]
    Decryption { reason: String },
    #[error("bad decrypted fields: {0}")]
    BadPlaintext(String),
    #[error(
        "conflict: seq {first}..{last} of {gateway}/{sensor}/{epoch} seen before with different content"
    )]
    Conflict {
        gateway: String,
        sensor: String,
        epoch: String,
        first: u64,
        last: u64,
    },
    #[error(
        "replay: seq {first}..{last} is older than seq {highest} already seen on {gateway}/{sensor}/{epoch}"
    )]
    Replay {
        gateway: String,
        sensor: String,
        epoch: String,
        first: u64,
        last: u64,
        highest: u64,
    },
}

/// A value from the message for an error line: escaped, at most 80 chars.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

/// One record as `open` prints it:
/// `{"gateway":..,"sensor":..,"seq":..,"ts":..,"fields":{..}}`, fields in
/// the gateway's column order with the decrypted ones back in place.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenedRecord {
    pub gateway: String,
    pub sensor: String,
    pub seq: u64,
    /// The record's time: as the gateway stamped it, or corrected
    /// (`ts_stamped` then holds the stamped one).
    pub ts: String,
    /// `Some(false)` when the gateway's clock was not synchronised when it
    /// stamped the record (`docs/FORMAT.md`, "Time"); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts_synced: Option<bool>,
    /// The time as stamped, when `ts` is corrected from an anchor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts_stamped: Option<String>,
    pub fields: FieldMap,
}

/// A verified, decrypted sealed message.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedMessage {
    pub gateway: String,
    pub sensor: String,
    pub epoch: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Only the records not seen before.
    pub records: Vec<OpenedRecord>,
    /// Records of this message dropped as already seen.
    pub duplicates: u64,
    /// For a gap notice (no records): what the gateway declared.
    pub declared: Option<DeclaredGap>,
    /// The batch's `clock`, when it has one: stamped unsynchronised, or
    /// an anchor.
    pub clock: Option<MessageClock>,
    /// How far the records' times were moved (nanoseconds), when they
    /// were stamped unsynchronised and their boot's anchor was known.
    pub corrected: Option<i128>,
}

/// A range of sequence numbers the gateway declared in a gap notice: at
/// most `lost` records (exactly `lost`, when `exact`) will never arrive;
/// the other numbers were never used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredGap {
    pub cause: String,
    pub lost: u64,
    pub exact: bool,
}

/// Totals since the opener was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpenSummary {
    pub messages: u64,
    pub records: u64,
    pub duplicates: u64,
    /// Sequence numbers missing between the lowest and the highest seen,
    /// summed over the streams.
    pub missing: u64,
    /// The runs those missing numbers form (one `gap:` line each).
    pub gaps: u64,
    /// Of the missing numbers, those in ranges the gateway declared in gap
    /// notices; the rest are unexplained.
    pub declared: u64,
    pub rejected: u64,
    /// Records the gateway stamped while its clock was not synchronised,
    /// and how many of them had their times corrected from an anchor.
    pub unsynced: u64,
    pub corrected: u64,
}

impl fmt::Display for OpenSummary {
    /// `opened 2 messages, 20 records, 0 duplicates, 10 records missing in
    /// 1 gap, 0 rejected`; when gap notices explain some of the missing
    /// numbers, `… missing in 1 gap (8 declared by the gateway, 2
    /// unexplained), …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        write!(
            f,
            "opened {} messages, {} records, {} duplicates, {} record{} missing in {} gap{}",
            self.messages,
            self.records,
            self.duplicates,
            self.missing,
            plural(self.missing),
            self.gaps,
            plural(self.gaps),
        )?;
        if self.declared > 0 {
            write!(
                f,
                " ({} declared by the gateway, {} unexplained)",
                self.declared,
                self.missing.saturating_sub(self.declared)
            )?;
        }
        write!(f, ", {} rejected", self.rejected)?;
        if self.unsynced > 0 {
            write!(
                f,
                "; {} record{} stamped before the gateway's clock was synchronised ({} corrected)",
                self.unsynced,
                plural(self.unsynced),
                self.corrected
            )?;
        }
        Ok(())
    }
}

/// Opens sealed messages from any number of trusted gateways.
pub struct Opener {
    trusted: HashMap<String, VerifyKey>,
    recipient: Option<RecipientKey>,
    /// The recipient key's kid as version 2 carries it (32 bytes).
    recipient_kid: Option<[u8; 32]>,
    /// Content keys already unwrapped (data-key reuse).
    ceks: jwe::CekCache,
    tracker: SequenceTracker,
    messages: u64,
    records: u64,
    duplicates: u64,
    rejected: u64,
    /// Records stamped unsynchronised, and those of them corrected.
    unsynced: u64,
    corrected: u64,
    /// The first anchor of each gateway's boot (`docs/FORMAT.md`, "Time").
    anchors: Anchors,
    /// `open --strict-order`: a range entirely below the highest seq seen on
    /// its stream (and not a known duplicate) is a replay.
    strict_order: bool,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.trusted.keys().collect();
        kids.sort();
        f.debug_struct("Opener")
            .field("trusted", &kids)
            .field("recipient", &self.recipient)
            .field("summary", &self.summary())
            .finish()
    }
}

/// A message that passed every check, before duplicate tracking.
struct Verified {
    gateway: String,
    sensor: String,
    epoch: String,
    first_seq: u64,
    last_seq: u64,
    records: Vec<OpenedRecord>,
    declared: Option<DeclaredGap>,
    clock: Option<MessageClock>,
}

impl Opener {
    /// `trusted`: the gateway verify keys whose messages are accepted.
    /// `recipient`: the private key for the encrypted fields; without it,
    /// messages that carry encrypted fields are rejected.
    pub fn new(trusted: Vec<PublicKey>, recipient: Option<RecipientKey>) -> Opener {
        let trusted: HashMap<String, VerifyKey> = trusted
            .into_iter()
            .map(|k| (k.kid().to_string(), k.verify_key()))
            .collect();
        Opener {
            ceks: jwe::CekCache::for_gateways(trusted.len()),
            trusted,
            recipient_kid: recipient.as_ref().map(|r| r.public().kid_bytes()),
            recipient,
            tracker: SequenceTracker::new(),
            messages: 0,
            records: 0,
            duplicates: 0,
            rejected: 0,
            unsynced: 0,
            corrected: 0,
            anchors: Anchors::default(),
            strict_order: false,
        }
    }

    /// `open --strict-order`: a message whose whole range is below the
    /// highest seq already seen on its stream, and whose content is not
    /// known as a duplicate, is rejected as a replay ([`OpenError::Replay`])
    /// instead of filling a hole.
    pub fn with_strict_order(mut self, strict: bool) -> Opener {
        self.strict_order = strict;
        self
    }

    /// Continues from earlier duplicate/gap state (`open --state`).
    pub fn with_tracker(mut self, tracker: SequenceTracker) -> Opener {
        self.tracker = tracker;
        self
    }

    /// Verifies, checks bindings, decrypts, and updates duplicate/gap
    /// tracking. The returned message holds only records not seen before.
    pub fn open(&mut self, message: &[u8]) -> Result<OpenedMessage, OpenError> {
        let verified = self.verify_counted(message)?;
        let Verified {
            gateway,
            sensor,
            epoch,
            first_seq,
            last_seq,
            mut records,
            declared,
            clock,
        } = verified;
        let key = (gateway, sensor, epoch);
        if declared.is_some() {
            // A gap notice: no records, nothing to compare; the range is
            // remembered as explained.
            self.tracker.declare(&key, first_seq, last_seq);
            self.messages += 1;
            let (gateway, sensor, epoch) = key;
            return Ok(OpenedMessage {
                gateway,
                sensor,
                epoch,
                first_seq,
                last_seq,
                records,
                duplicates: 0,
                declared,
                clock: None,
                corrected: None,
            });
        }
        let digest = records_digest(&records);
        let verdict = self.tracker.check_range(&key, first_seq, last_seq, &digest);
        if verdict == RangeVerdict::Different {
            self.rejected += 1;
            let (gateway, sensor, epoch) = key;
            return Err(OpenError::Conflict {
                gateway,
                sensor,
                epoch,
                first: first_seq,
                last: last_seq,
            });
        }
        if self.strict_order
            && verdict != RangeVerdict::Same
            && let Some(highest) = self.tracker.highest(&key)
            && last_seq < highest
        {
            self.rejected += 1;
            let (gateway, sensor, epoch) = key;
            return Err(OpenError::Replay {
                gateway,
                sensor,
                epoch,
                first: first_seq,
                last: last_seq,
                highest,
            });
        }
        let stream = self.tracker.stream_mut(&key.0, &key.1, &key.2);
        let before = records.len();
        records.retain(|r| stream.insert(r.seq));
        let duplicates = (before - records.len()) as u64;
        self.tracker
            .remember_range(&key, first_seq, last_seq, digest);
        let (gateway, sensor, epoch) = key;
        self.messages += 1;
        self.records += records.len() as u64;
        self.duplicates += duplicates;
        // After the digest: a redelivery compares as stamped.
        let corrected = clock.and_then(|clock| {
            self.anchors.learn(&gateway, &clock);
            let shift = self.shift(&gateway, &clock)?;
            retime(&mut records, shift);
            Some(shift)
        });
        if let Some(clock) = clock
            && !clock.synced
        {
            self.unsynced += records.len() as u64;
            if corrected.is_some() {
                self.corrected += records.len() as u64;
            }
        }
        Ok(OpenedMessage {
            gateway,
            sensor,
            epoch,
            first_seq,
            last_seq,
            records,
            duplicates,
            declared: None,
            clock,
            corrected,
        })
    }

    /// Verifies and decrypts `message` like [`Opener::open`], but keeps no
    /// sequence state: every record comes back, and duplicates, conflicts
    /// and gaps are for the caller to judge (the PostgreSQL sink judges
    /// them in the database, where they hold across consumers and
    /// restarts). The totals of [`Opener::summary`] count it.
    pub fn open_untracked(&mut self, message: &[u8]) -> Result<OpenedMessage, OpenError> {
        let v = self.verify_counted(message)?;
        self.messages += 1;
        self.records += v.records.len() as u64;
        Ok(OpenedMessage {
            gateway: v.gateway,
            sensor: v.sensor,
            epoch: v.epoch,
            first_seq: v.first_seq,
            last_seq: v.last_seq,
            records: v.records,
            duplicates: 0,
            declared: v.declared,
            clock: v.clock,
            corrected: None,
        })
    }

    /// How far the times of an unsynchronised message of `gateway` are off
    /// (nanoseconds to add), once an anchor of its boot was opened.
    pub fn shift(&self, gateway: &str, clock: &MessageClock) -> Option<i128> {
        let batch = v2::BatchClock {
            synced: clock.synced,
            boot: clock.boot,
            boot_ms: clock.boot_ms,
        };
        self.anchors.shift(gateway, &batch, clock.t0)
    }

    /// Counts records whose times the caller corrected later (`open`
    /// holding them for their anchor).
    pub fn count_corrected(&mut self, records: u64) {
        self.corrected += records;
    }

    /// Counts a message rejected before it could be handed to [`Opener::open`]
    /// (an over-long line).
    pub fn count_rejected(&mut self) {
        self.rejected += 1;
    }

    /// Totals so far; `missing` and `gaps` are computed over everything
    /// seen.
    pub fn summary(&self) -> OpenSummary {
        OpenSummary {
            messages: self.messages,
            records: self.records,
            duplicates: self.duplicates,
            missing: self.tracker.missing_records(),
            gaps: self.tracker.gaps(),
            declared: self.tracker.declared_missing(),
            rejected: self.rejected,
            unsynced: self.unsynced,
            corrected: self.corrected,
        }
    }

    /// The duplicate/gap state, e.g. for per-stream reporting.
    pub fn tracker(&self) -> &SequenceTracker {
        &self.tracker
    }

    /// [`Opener::verify`], a failure counted as rejected.
    fn verify_counted(&mut self, message: &[u8]) -> Result<Verified, OpenError> {
        let verified = self.verify(message);
        if verified.is_err() {
            self.rejected += 1;
        }
        verified
    }

    fn verify(&mut self, message: &[u8]) -> Result<Verified, OpenError> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(OpenError::TooLong {
                len: message.len() as u64,
                max: MAX_MESSAGE_BYTES,
            });
        }
        // A COSE_Sign1 starts with its tag (18); a version 1 message is JSON.
        if message.first() == Some(&COSE_SIGN1_FIRST_BYTE) {
            self.verify_v2(message)
        } else {
            self.verify_v1(message)
        }
    }

    /// Version 2: COSE_Sign1 around a CBOR batch by column.
    fn verify_v2(&mut self, message: &[u8]) -> Result<Verified, OpenError> {
        // 1. The envelope and its headers; a trusted kid.
        let signed = cose::parse_sign1(message)?;
        let kid = b64::encode(signed.kid);
        let Some(key) = self.trusted.get(&kid) else {
            return Err(OpenError::UntrustedKey { kid });
        };
        // 2. The signature. Nothing in the payload is read before it.
        cose::verify(&signed, key).map_err(|reason| OpenError::BadSignature {
            kid: kid.clone(),
            reason,
        })?;
        let payload = signed
            .sign1
            .payload
            .as_deref()
            .expect("checked by parse_sign1");
        // 3. The payload: a batch, or a gap notice.
        let batch = match v2::parse_payload(payload).map_err(|e| match e {
            PayloadError::Version(found) => OpenError::UnsupportedVersion { found },
            PayloadError::Bad(detail) => OpenError::BadPayload(detail),
        })? {
            v2::PayloadIn::Batch(batch) => batch,
            v2::PayloadIn::Notice(n) => {
                return Ok(Verified {
                    gateway: n.gateway.to_string(),
                    sensor: n.sensor.to_string(),
                    epoch: n.epoch.to_string(),
                    first_seq: n.first,
                    last_seq: n.last,
                    records: Vec::new(),
                    declared: Some(DeclaredGap {
                        cause: n.cause.to_string(),
                        lost: n.lost,
                        exact: n.exact,
                    }),
                    clock: None,
                });
            }
        };
        let n = batch.len();
        let times = columns::times(batch.tu, &batch.t).map_err(OpenError::BadPayload)?;
        // 4. The encrypted columns, bound to this message, for our key.
        let plaintext = match batch.enc {
            None => None,
            Some(enc) => {
                let encrypted = cose::parse_encrypt(enc, self.recipient_kid.as_ref())?;
                let recipient = self.recipient.as_ref().expect("checked by parse_encrypt");
                let id = encrypted.cache_id();
                let cek = match self.ceks.get(&id) {
                    Some(cek) => cek.clone(),
                    None => {
                        let cek = encrypted.unwrap_cek(recipient.secret())?;
                        self.ceks.put(id, cek.clone());
                        cek
                    }
                };
                let aad = cose::external_aad(
                    batch.gateway,
                    batch.sensor,
                    batch.epoch,
                    batch.first,
                    batch.last,
                );
                Some(encrypted.decrypt(&cek, &aad)?)
            }
        };
        let positions = batch.ep.as_deref().unwrap_or(&[]);
        let hidden = match &plaintext {
            Some(p) => {
                v2::parse_encrypted_columns(p, n, positions).map_err(OpenError::BadPlaintext)?
            }
            None => Vec::new(),
        };
        let columns =
            v2::merge_columns(&batch.cols, &hidden, positions).map_err(OpenError::BadPlaintext)?;
        // 5. The records.
        let gateway = batch.gateway.to_string();
        let sensor = batch.sensor.to_string();
        let clock = batch.clock.map(|c| MessageClock {
            synced: c.synced,
            boot: c.boot,
            boot_ms: c.boot_ms,
            t0: times[0],
        });
        let ts_synced = clock.and_then(|c| (!c.synced).then_some(false));
        let mut records = Vec::with_capacity(n);
        for (i, ts) in times.into_iter().enumerate() {
            let mut fields = FieldMap::with_capacity(columns.len());
            for column in &columns {
                if let Some(value) = column.json(i).map_err(OpenError::BadPayload)? {
                    fields.push(column.name.to_string(), value);
                }
            }
            records.push(OpenedRecord {
                gateway: gateway.clone(),
                sensor: sensor.clone(),
                seq: batch.first + i as u64,
                ts: crate::record::format_ts(ts),
                ts_synced,
                ts_stamped: None,
                fields,
            });
        }
        Ok(Verified {
            gateway,
            sensor,
            epoch: batch.epoch.to_string(),
            first_seq: batch.first,
            last_seq: batch.last,
            records,
            declared: None,
            clock,
        })
    }

    /// Version 1: a JWS (JSON) whose payload carries the records and a JWE.
    fn verify_v1(&mut self, message: &[u8]) -> Result<Verified, OpenError> {
        let jws: JwsIn<'_> =
            serde_json::from_slice(message).map_err(|e| OpenError::NotJws(e.to_string()))?;

        // 1. The JWS header: exact algorithm and type, a trusted kid.
        let header_json =
            b64::decode(jws.protected.as_bytes()).map_err(|_| OpenError::BadBase64 {
                member: "JWS protected header",
            })?;
        let header: JwsHeader<'_> =
            serde_json::from_slice(&header_json).map_err(|e| OpenError::BadHeader {
                part: "JWS",
                detail: e.to_string(),
            })?;
        expect_param("JWS", "alg", &header.alg, JWS_ALG)?;
        expect_param("JWS", "typ", &header.typ, JWS_TYP)?;
        let Some(key) = self.trusted.get(&*header.kid) else {
            return Err(OpenError::UntrustedKey {
                kid: header.kid.into_owned(),
            });
        };

        // 2. The signature, over the base64 text exactly as received.
        let bad_signature = |reason| OpenError::BadSignature {
            kid: header.kid.to_string(),
            reason,
        };
        let signature =
            b64::decode(jws.signature.as_bytes()).map_err(|_| OpenError::BadBase64 {
                member: "JWS signature",
            })?;
        let signing_input = [jws.protected.as_bytes(), b".", jws.payload.as_bytes()].concat();
        key.verify(&signing_input, &signature)
            .map_err(bad_signature)?;

        // 3. The payload (signed, so now worth parsing).
        let payload_json =
            b64::decode(jws.payload.as_bytes()).map_err(|_| OpenError::BadBase64 {
                member: "JWS payload",
            })?;
        let payload: PayloadIn<'_> =
            serde_json::from_slice(&payload_json).map_err(|e| payload_error(&payload_json, e))?;
        if payload.v != FORMAT_VERSION {
            return Err(OpenError::UnsupportedVersion {
                found: payload.v.to_string(),
            });
        }
        let [first, last] = payload.seq;
        check_range(&payload, first, last)?;

        // 4. The JWE, if any: bound to this message, for our key.
        let mut decrypted: Option<Vec<FieldMap>> = None;
        if let Some(jwe) = &payload.jwe {
            let binding = Binding {
                gateway: &payload.gateway,
                sensor: &payload.sensor,
                epoch: &payload.epoch,
                seq: payload.seq,
            };
            let jwe_header_json =
                b64::decode(jwe.protected.as_bytes()).map_err(|_| OpenError::BadBase64 {
                    member: "JWE protected header",
                })?;
            let jwe_header = jwe::check_header(
                &jwe_header_json,
                &binding,
                self.recipient.as_ref().map(RecipientKey::kid),
            )?;
            let recipient = self
                .recipient
                .as_ref()
                .expect("check_header refuses a JWE without a recipient key");
            let plaintext = jwe::decrypt(jwe, &jwe_header, recipient, &mut self.ceks)?;
            let per_record: Vec<FieldMap> = serde_json::from_slice(&plaintext)
                .map_err(|e| OpenError::BadPlaintext(e.to_string()))?;
            if per_record.len() != payload.records.len() {
                return Err(OpenError::BadPlaintext(format!(
                    "{} entries for {} records",
                    per_record.len(),
                    payload.records.len()
                )));
            }
            decrypted = Some(per_record);
        }

        // 5. The records, decrypted fields merged back in column order.
        let gateway = payload.gateway.into_owned();
        let sensor = payload.sensor.into_owned();
        let mut decrypted = decrypted.map(Vec::into_iter);
        let mut records = Vec::with_capacity(payload.records.len());
        for record in payload.records {
            if parse_ts(&record.ts).is_none() {
                return Err(OpenError::BadPayload(format!(
                    "record {} has timestamp {}, not RFC 3339",
                    record.seq,
                    shown(&record.ts)
                )));
            }
            let encrypted = decrypted.as_mut().and_then(Iterator::next);
            let fields = match encrypted {
                Some(enc) => merge(record.fields, enc, &record.encrypted)
                    .map_err(|e| OpenError::BadPlaintext(format!("record {}: {e}", record.seq)))?,
                None if record.encrypted.is_empty() => record.fields,
                None => {
                    return Err(OpenError::BadPayload(format!(
                        "record {} lists encrypted fields but the message has no jwe",
                        record.seq
                    )));
                }
            };
            records.push(OpenedRecord {
                gateway: gateway.clone(),
                sensor: sensor.clone(),
                seq: record.seq,
                ts: record.ts.into_owned(),
                ts_synced: None,
                ts_stamped: None,
                fields,
            });
        }
        Ok(Verified {
            gateway,
            sensor,
            epoch: payload.epoch.into_owned(),
            first_seq: first,
            last_seq: last,
            records,
            declared: None,
            clock: None,
        })
    }
}

/// Moves the records' times by `shift` nanoseconds, keeping the stamped
/// ones in `ts_stamped`.
pub fn retime(records: &mut [OpenedRecord], shift: i128) {
    for record in records {
        if let Some(stamped) = crate::record::parse_ts(&record.ts) {
            let corrected = crate::record::format_ts(retime::shifted(stamped, shift));
            record.ts_stamped = Some(std::mem::replace(&mut record.ts, corrected));
        }
    }
}

/// SHA-256 over the records as `open` prints them (identity, seq, timestamp
/// and every field, decrypted ones included), so the same records re-sealed
/// (another IV, another wrapped key) have the same digest.
fn records_digest(records: &[OpenedRecord]) -> Digest {
    use sha2::{Digest as _, Sha256};
    let json = serde_json::to_vec(records).expect("records of JSON values always serialize");
    Sha256::digest(&json).into()
}

/// Explains a payload that does not parse: another version, or malformed.
fn payload_error(json: &[u8], e: serde_json::Error) -> OpenError {
    match serde_json::from_slice::<VersionOnly>(json) {
        Ok(VersionOnly { v }) if v != FORMAT_VERSION => OpenError::UnsupportedVersion {
            found: shown(&v.to_string()),
        },
        _ => OpenError::BadPayload(e.to_string()),
    }
}

/// The records must be exactly `first..=last`, in order.
fn check_range(payload: &PayloadIn<'_>, first: u64, last: u64) -> Result<(), OpenError> {
    let err = |detail: String| {
        Err(OpenError::SeqRange {
            first,
            last,
            detail,
        })
    };
    if first > last {
        return err("first is after last".to_string());
    }
    if payload.records.is_empty() {
        return err("no records".to_string());
    }
    let declared = u128::from(last) - u128::from(first) + 1;
    if declared != payload.records.len() as u128 {
        return err(format!("{} records present", payload.records.len()));
    }
    for (i, record) in payload.records.iter().enumerate() {
        let expected = first + i as u64;
        if record.seq != expected {
            return err(format!(
                "record {i} has seq {}, expected {expected}",
                record.seq
            ));
        }
    }
    Ok(())
}

/// How `open` prints records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// One JSON object per record.
    #[default]
    Json,
    /// CSV (RFC 4180 quoting): a header line `gateway,sensor,seq,ts,` then
    /// the record's field names, printed before the first record and again
    /// whenever a record's field names differ from the last header printed
    /// (e.g. another sensor with other columns); then one line per record.
    Csv,
}

/// Options of [`open_stream_with`].
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub format: OutputFormat,
    /// Where the duplicate/gap state is saved: every [`STATE_SAVE_INTERVAL`]
    /// while messages arrive, and at the end.
    pub state: Option<std::path::PathBuf>,
    /// Records stamped before their gateway's clock was synchronised wait
    /// for their boot's anchor, to be printed with corrected times: at most
    /// this many (the oldest go out uncorrected beyond), and no longer
    /// than the next state save. 0: printed at once, uncorrected (`open
    /// --mqtt`, whose messages are acknowledged once printed).
    pub hold_unsynced: usize,
}

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            format: OutputFormat::default(),
            state: None,
            hold_unsynced: HOLD_UNSYNCED,
        }
    }
}

/// The records `open` holds by default waiting for their anchor.
pub const HOLD_UNSYNCED: usize = 100_000;

/// Unsynchronised records of one message, printed once their anchor is
/// known or when they can wait no longer.
#[derive(Debug)]
struct Held {
    gateway: String,
    sensor: String,
    epoch: String,
    clock: MessageClock,
    records: Vec<OpenedRecord>,
}

impl Held {
    fn of(opened: &mut OpenedMessage, clock: MessageClock) -> Held {
        Held {
            gateway: opened.gateway.clone(),
            sensor: opened.sensor.clone(),
            epoch: opened.epoch.clone(),
            clock,
            records: std::mem::take(&mut opened.records),
        }
    }

    /// `gw/sensor epoch E: seq A..B`, the records it holds.
    fn range(&self) -> String {
        let seq = |r: Option<&OpenedRecord>| r.map_or(0, |r| r.seq);
        format!(
            "{}/{} epoch {}: seq {}..{}",
            self.gateway,
            self.sensor,
            self.epoch,
            seq(self.records.first()),
            seq(self.records.last())
        )
    }
}

/// Unsynchronised records printed before their anchor came: what is kept
/// to say their correction when it does.
#[derive(Debug)]
struct PrintedUncorrected {
    gateway: String,
    clock: MessageClock,
    /// `gw/sensor epoch E: seq A..B`.
    range: String,
}

/// Ranges printed uncorrected kept at most, to say their correction when
/// the anchor comes.
const MAX_PRINTED_UNCORRECTED: usize = 10_000;

/// How often `open --state` saves while messages keep arriving. A run that
/// is killed loses at most this much state: those messages are then opened
/// again as new by the next run (at-least-once, never a loss).
pub const STATE_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// At most this many `gap:` lines are printed; the rest are counted.
pub const MAX_GAP_LINES: usize = 100;

/// [`open_stream_with`] with JSON output and no state file.
pub fn open_stream(
    input: impl BufRead,
    out: impl Write,
    err: impl Write,
    opener: &mut Opener,
) -> io::Result<OpenSummary> {
    open_stream_with(input, out, err, opener, &StreamOptions::default())
}

/// Reads messages from `input`, in any mix: version 2 messages as binary
/// CBOR (one after another, a CBOR sequence, with or without whitespace
/// between them) or as hexadecimal lines (`mosquitto_sub -F %x`), version
/// 1 messages one per line (blank lines skipped, a trailing `\r`
/// tolerated). Prints each new record on `out` (JSON line or CSV), a line
/// `rejected message <where>: <reason>` on `err` for each rejected message
/// (`at line N` for a line, `#N at byte B` for binary), and at the end one
/// `gap: …` line per missing range and the summary line on `err`.
pub fn open_stream_with(
    mut input: impl BufRead,
    out: impl Write,
    err: impl Write,
    opener: &mut Opener,
    options: &StreamOptions,
) -> io::Result<OpenSummary> {
    let mut sink = MessageSink::new(opener, out, err, options);
    let mut buffer = Vec::new();
    // Where the next byte is: newlines passed (for line numbers), byte
    // offset and items read (for binary messages).
    let mut newlines: u64 = 0;
    let mut offset: u64 = 0;
    let mut items: u64 = 0;
    while let Some(first) = skip_whitespace(&mut input, &mut newlines, &mut offset)? {
        buffer.clear();
        items += 1;
        if first == COSE_SIGN1_FIRST_BYTE {
            let start = offset;
            let read = read_cbor_item(&mut input, &mut buffer, MAX_MESSAGE_BYTES)?;
            let place = format_args!("#{items} at byte {start}");
            match read {
                CborRead::Item => {
                    offset += buffer.len() as u64;
                    sink.message(&buffer, place)?;
                }
                CborRead::TooLong(len) => {
                    offset += len;
                    sink.too_long(len, place)?;
                }
                CborRead::Bad(len, why) => {
                    offset += len;
                    sink.reject(OpenError::NotCose(why), place)?;
                }
            }
            continue;
        }
        let line_no = newlines + 1;
        let read = read_bounded_line(&mut input, &mut buffer, MAX_MESSAGE_BYTES)?;
        newlines += 1;
        let message = match read {
            LineRead::Eof => break,
            LineRead::TooLong(len) => {
                offset += len;
                sink.too_long(len, format_args!("at line {line_no}"))?;
                continue;
            }
            LineRead::Line => {
                offset += buffer.len() as u64;
                trim_line_end(&buffer)
            }
        };
        match hex_message(message) {
            Some(decoded) => sink.message(&decoded, format_args!("at line {line_no}"))?,
            None => sink.message(message, format_args!("at line {line_no}"))?,
        }
    }
    sink.finish()
}

/// The input's buffered bytes, reading more if there are none (empty at
/// the end of the input); retried when a signal interrupts the read.
fn fill(input: &mut impl BufRead) -> io::Result<&[u8]> {
    loop {
        match input.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    input.fill_buf()
}

/// Consumes ASCII whitespace; returns the next byte (not consumed), or
/// `None` at the end of the input.
fn skip_whitespace(
    input: &mut impl BufRead,
    newlines: &mut u64,
    offset: &mut u64,
) -> io::Result<Option<u8>> {
    loop {
        let chunk = fill(input)?;
        if chunk.is_empty() {
            return Ok(None);
        }
        let blank = chunk
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(chunk.len());
        *newlines += chunk[..blank].iter().filter(|&&b| b == b'\n').count() as u64;
        *offset += blank as u64;
        let next = chunk.get(blank).copied();
        input.consume(blank);
        if let Some(b) = next {
            return Ok(Some(b));
        }
    }
}

/// A line of hexadecimal digits that decodes to a version 2 message.
fn hex_message(line: &[u8]) -> Option<Vec<u8>> {
    let line = line.trim_ascii();
    if line.len() < 2 || line.len() % 2 != 0 || !line.starts_with(b"d2") && !line.starts_with(b"D2")
    {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    line.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

enum CborRead {
    Item,
    /// The item (this many bytes) was longer than the limit and skipped.
    TooLong(u64),
    /// Not well-formed CBOR (or cut short); this many bytes were consumed.
    Bad(u64, String),
}

/// Copies one CBOR data item from `input` into `item`, reading exactly its
/// bytes: heads are followed and counted (an array of n items is n more to
/// read), never trusted for an allocation. An item over `max` bytes is
/// consumed to its end but not held.
fn read_cbor_item(
    input: &mut impl BufRead,
    item: &mut Vec<u8>,
    max: usize,
) -> io::Result<CborRead> {
    fn take(
        input: &mut impl BufRead,
        item: &mut Vec<u8>,
        total: &mut u64,
        mut n: u64,
        keep: bool,
    ) -> io::Result<bool> {
        while n > 0 {
            let chunk = fill(input)?;
            if chunk.is_empty() {
                return Ok(false);
            }
            let step = chunk.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            if keep {
                item.extend_from_slice(&chunk[..step]);
            }
            input.consume(step);
            *total += step as u64;
            n -= step as u64;
        }
        Ok(true)
    }
    let mut total: u64 = 0;
    let mut pending: u64 = 1;
    let mut head = Vec::with_capacity(9);
    while pending > 0 {
        pending -= 1;
        let keep = total <= max as u64;
        head.clear();
        if !take(input, &mut head, &mut total, 1, true)? {
            return Ok(CborRead::Bad(total, "the message ends early".to_string()));
        }
        let (major, minor) = (head[0] >> 5, head[0] & 0x1f);
        let extra = match minor {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => {
                return Ok(CborRead::Bad(
                    total,
                    format!(
                        "byte {} is an indefinite length or a reserved value",
                        total - 1
                    ),
                ));
            }
        };
        if !take(input, &mut head, &mut total, extra, true)? {
            return Ok(CborRead::Bad(total, "the message ends early".to_string()));
        }
        if keep {
            item.extend_from_slice(&head);
        }
        let arg = match minor {
            0..=23 => u64::from(minor),
            _ => head[1..].iter().fold(0u64, |a, &b| a << 8 | u64::from(b)),
        };
        let more = match major {
            2 | 3 => {
                let keep_string = keep && total.saturating_add(arg) <= max as u64;
                if !take(input, item, &mut total, arg, keep_string)? {
                    return Ok(CborRead::Bad(total, "the message ends early".to_string()));
                }
                0
            }
            4 => arg,
            5 => arg.saturating_mul(2),
            6 => 1,
            _ => 0,
        };
        pending = pending.saturating_add(more);
        // Each pending item is at least a byte: more than the limit left
        // cannot be a message we would keep, and only the input's end
        // stops the count.
        if total > max as u64 {
            item.clear();
        }
    }
    if total > max as u64 {
        return Ok(CborRead::TooLong(total));
    }
    Ok(CborRead::Item)
}

/// What `open` does with each message, whatever its source (stdin lines,
/// MQTT payloads): opens it, prints its new records on `out`, reports a
/// rejection on `err` as `rejected message <where>: <reason>`, and saves
/// the state every [`STATE_SAVE_INTERVAL`]; [`MessageSink::finish`] saves
/// it a last time and prints the gaps and the summary.
pub struct MessageSink<'a, W: Write, E: Write> {
    opener: &'a mut Opener,
    out: W,
    err: E,
    options: &'a StreamOptions,
    rendered: Vec<u8>,
    csv_header: Option<Vec<String>>,
    last_save: std::time::Instant,
    unsaved: bool,
    /// Unsynchronised records waiting for their anchor, oldest first, and
    /// how many records they hold.
    held: std::collections::VecDeque<Held>,
    held_records: usize,
    /// Unsynchronised records printed before their anchor came (their
    /// records dropped): their correction is said when it does.
    printed_uncorrected: std::collections::VecDeque<PrintedUncorrected>,
}

impl<'a, W: Write, E: Write> MessageSink<'a, W, E> {
    pub fn new(
        opener: &'a mut Opener,
        out: W,
        err: E,
        options: &'a StreamOptions,
    ) -> MessageSink<'a, W, E> {
        MessageSink {
            opener,
            out,
            err,
            options,
            rendered: Vec::new(),
            csv_header: None,
            last_save: std::time::Instant::now(),
            unsaved: false,
            held: std::collections::VecDeque::new(),
            held_records: 0,
            printed_uncorrected: std::collections::VecDeque::new(),
        }
    }

    /// Prints `records` (a JSON line or CSV row each).
    fn print(&mut self, records: &[OpenedRecord]) -> io::Result<()> {
        self.rendered.clear();
        for record in records {
            match self.options.format {
                OutputFormat::Json => {
                    serde_json::to_writer(&mut self.rendered, record).map_err(io::Error::other)?;
                    self.rendered.push(b'\n');
                }
                OutputFormat::Csv => write_csv(&mut self.rendered, &mut self.csv_header, record),
            }
        }
        self.out.write_all(&self.rendered)?;
        self.out.flush()
    }

    /// A synchronised message may be its boot's anchor: the records held
    /// for it are corrected and printed, and the correction of those
    /// printed before is said.
    fn anchored(&mut self, gateway: &str, boot: [u8; 16]) -> io::Result<()> {
        let of_boot = |h: &Held| h.gateway == gateway && h.clock.boot == boot;
        let mut waiting = std::collections::VecDeque::new();
        for mut held in std::mem::take(&mut self.held) {
            if !of_boot(&held) {
                waiting.push_back(held);
                continue;
            }
            let Some(shift) = self.opener.shift(&held.gateway, &held.clock) else {
                waiting.push_back(held);
                continue;
            };
            self.held_records -= held.records.len();
            retime(&mut held.records, shift);
            self.opener.count_corrected(held.records.len() as u64);
            self.print_corrected(&held, shift)?;
        }
        self.held = waiting;
        let mut unsaid = std::collections::VecDeque::new();
        for printed in std::mem::take(&mut self.printed_uncorrected) {
            let ours = printed.gateway == gateway && printed.clock.boot == boot;
            match self.opener.shift(&printed.gateway, &printed.clock) {
                Some(shift) if ours => writeln!(
                    self.err,
                    "correction: {}: printed before the anchor of its boot came, with times stamped before the gateway's clock was synchronised; they are off by {} (add it)",
                    one_line(&printed.range),
                    retime::describe_shift(shift)
                )?,
                _ => unsaid.push_back(printed),
            }
        }
        self.printed_uncorrected = unsaid;
        Ok(())
    }

    /// Says which records were corrected and by how much, and prints them.
    fn print_corrected(&mut self, held: &Held, shift: i128) -> io::Result<()> {
        writeln!(
            self.err,
            "corrected: {}: stamped before the gateway's clock was synchronised; times moved by {}",
            one_line(&held.range()),
            retime::describe_shift(shift)
        )?;
        self.print(&held.records)
    }

    /// Prints the oldest held records as they were stamped (no anchor in
    /// time), remembering their range.
    fn release_oldest(&mut self) -> io::Result<bool> {
        let Some(held) = self.held.pop_front() else {
            return Ok(false);
        };
        self.held_records -= held.records.len();
        self.print(&held.records)?;
        self.printed(held);
        Ok(true)
    }

    /// Remembers unsynchronised records printed uncorrected.
    fn printed(&mut self, held: Held) {
        if self.printed_uncorrected.len() >= MAX_PRINTED_UNCORRECTED {
            self.printed_uncorrected.pop_front();
        }
        self.printed_uncorrected.push_back(PrintedUncorrected {
            range: held.range(),
            gateway: held.gateway,
            clock: held.clock,
        });
    }

    /// Prints everything still held, uncorrected, saying why.
    fn release_all(&mut self, why: &str) -> io::Result<()> {
        while let Some(held) = self.held.front() {
            writeln!(
                self.err,
                "not corrected: {}: stamped before the gateway's clock was synchronised, printed as stamped: {why}",
                one_line(&held.range()),
            )?;
            self.release_oldest()?;
        }
        Ok(())
    }

    /// Opens one message; `place` says where it came from in a rejection
    /// line (`at line 3`, `on topic sensorgate/gw/bike`).
    pub fn message(&mut self, message: &[u8], place: fmt::Arguments<'_>) -> io::Result<()> {
        match self.opener.open(message) {
            Ok(opened) if opened.declared.is_some() => {
                let d = opened.declared.as_ref().expect("matched");
                let text = format!(
                    "declared: {}/{} epoch {}: seq {}..{} will not arrive: {} {} record{} lost ({}), the other numbers never used",
                    opened.gateway,
                    opened.sensor,
                    opened.epoch,
                    opened.first_seq,
                    opened.last_seq,
                    if d.exact { "exactly" } else { "at most" },
                    d.lost,
                    if d.lost == 1 { "" } else { "s" },
                    d.cause,
                );
                writeln!(self.err, "{}", one_line(&text))?;
                self.unsaved = true;
            }
            Ok(mut opened) => {
                match opened.clock {
                    Some(clock) if clock.synced => {
                        self.anchored(&opened.gateway, clock.boot)?;
                        self.print(&opened.records)?;
                    }
                    // Every record a duplicate: nothing to print.
                    Some(_) if opened.records.is_empty() => {}
                    Some(clock) => match opened.corrected {
                        Some(shift) => {
                            self.print_corrected(&Held::of(&mut opened, clock), shift)?
                        }
                        None => {
                            let held = Held::of(&mut opened, clock);
                            if self.options.hold_unsynced == 0 {
                                self.print(&held.records)?;
                                self.printed(held);
                            } else {
                                self.held_records += held.records.len();
                                self.held.push_back(held);
                                while self.held_records > self.options.hold_unsynced {
                                    if let Some(oldest) = self.held.front() {
                                        writeln!(
                                            self.err,
                                            "not corrected: {}: stamped before the gateway's clock was synchronised, printed as stamped: more than {} such records wait for an anchor",
                                            one_line(&oldest.range()),
                                            self.options.hold_unsynced
                                        )?;
                                    }
                                    self.release_oldest()?;
                                }
                            }
                        }
                    },
                    None => self.print(&opened.records)?,
                }
                self.unsaved = true;
            }
            Err(e) => writeln!(
                self.err,
                "rejected message {place}: {}",
                one_line(&e.to_string())
            )?,
        }
        self.save_if_due()
    }

    /// Counts and reports a message of `len` bytes, over the limit, that
    /// was skipped without being held.
    pub fn too_long(&mut self, len: u64, place: fmt::Arguments<'_>) -> io::Result<()> {
        self.reject(
            OpenError::TooLong {
                len,
                max: MAX_MESSAGE_BYTES,
            },
            place,
        )
    }

    /// Counts and reports a message rejected before it could be opened.
    pub fn reject(&mut self, e: OpenError, place: fmt::Arguments<'_>) -> io::Result<()> {
        self.opener.count_rejected();
        writeln!(
            self.err,
            "rejected message {place}: {}",
            one_line(&e.to_string())
        )?;
        self.save_if_due()
    }

    fn save_if_due(&mut self) -> io::Result<()> {
        if let Some(path) = &self.options.state
            && self.unsaved
            && self.last_save.elapsed() >= STATE_SAVE_INTERVAL
        {
            // The state counts these records as opened: they are printed
            // first, so that a run killed after the save loses none.
            self.release_all("the state is saved (--state) before their anchor came")?;
            self.opener.tracker().save(path).map_err(io::Error::other)?;
            self.last_save = std::time::Instant::now();
            self.unsaved = false;
        }
        Ok(())
    }

    /// Saves the state (`--state`), prints one `gap: …` line per missing
    /// range and the summary line on `err`, and returns the summary.
    pub fn finish(mut self) -> io::Result<OpenSummary> {
        self.release_all("no anchor from the same boot of the gateway came")?;
        if let Some(path) = &self.options.state {
            self.opener.tracker().save(path).map_err(io::Error::other)?;
        }
        write_gaps(&mut self.err, self.opener.tracker())?;
        let summary = self.opener.summary();
        writeln!(self.err, "{summary}")?;
        self.err.flush()?;
        Ok(summary)
    }
}

/// One line per missing range, `gap: GATEWAY/SENSOR epoch E: seq A..B
/// missing`, streams in order, at most [`MAX_GAP_LINES`].
fn write_gaps(err: &mut impl Write, tracker: &SequenceTracker) -> io::Result<()> {
    let mut shown_lines = 0usize;
    let mut more = 0u64;
    for (key, set) in tracker.iter_streams() {
        let (gateway, sensor, epoch) = key;
        for (first, last) in set.missing() {
            if shown_lines < MAX_GAP_LINES {
                let declared = tracker.declared_within(key, first, last);
                let why = match declared {
                    0 => String::new(),
                    d if d == last - first + 1 => " (declared by the gateway)".to_string(),
                    d => format!(" ({d} of them declared by the gateway)"),
                };
                let text = format!(
                    "gap: {gateway}/{sensor} epoch {epoch}: seq {first}..{last} missing{why}"
                );
                writeln!(err, "{}", one_line(&text))?;
                shown_lines += 1;
            } else {
                more += 1;
            }
        }
    }
    if more > 0 {
        writeln!(err, "gap: {more} more missing ranges not listed")?;
    }
    Ok(())
}

/// Appends `record` as a CSV line, preceded by a header line when its
/// columns differ from `header` (the last header printed).
fn write_csv(out: &mut Vec<u8>, header: &mut Option<Vec<String>>, record: &OpenedRecord) {
    // Records stamped before the clock was synchronised have two more
    // columns, `ts_synced,ts_stamped`, after `ts`; the header key says so
    // with a name no field can have.
    const CLOCKED: &str = "\0ts_synced";
    let clocked = record.ts_synced.is_some();
    let same = header.as_ref().is_some_and(|h| {
        h.iter().map(String::as_str).eq(clocked
            .then_some(CLOCKED)
            .into_iter()
            .chain(record.fields.names()))
    });
    if !same {
        let names: Vec<String> = record.fields.names().map(str::to_string).collect();
        let mut line = String::from("gateway,sensor,seq,ts");
        if clocked {
            line.push_str(",ts_synced,ts_stamped");
        }
        for name in &names {
            line.push(',');
            line.push_str(&csv_cell(name));
        }
        line.push('\n');
        out.extend_from_slice(line.as_bytes());
        *header = Some(
            clocked
                .then(|| CLOCKED.to_string())
                .into_iter()
                .chain(names)
                .collect(),
        );
    }
    let mut line = format!(
        "{},{},{},{}",
        csv_cell(&record.gateway),
        csv_cell(&record.sensor),
        record.seq,
        csv_cell(&record.ts)
    );
    if let Some(synced) = record.ts_synced {
        line.push_str(if synced { ",true," } else { ",false," });
        line.push_str(&csv_cell(record.ts_stamped.as_deref().unwrap_or("")));
    }
    for (_, value) in &record.fields {
        line.push(',');
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => line.push_str(&csv_cell(s)),
            other => line.push_str(&csv_cell(&other.to_string())),
        }
    }
    line.push('\n');
    out.extend_from_slice(line.as_bytes());
}

/// A CSV cell: quoted (with `"` doubled) when it holds a comma, a quote or
/// a line break (RFC 4180).
fn csv_cell(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

/// Escapes control characters, so a reason quoting hostile input (e.g. a
/// JSON member name with an escaped newline) stays one line.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

enum LineRead {
    Eof,
    Line,
    /// The line (this many bytes) was longer than the limit and skipped.
    TooLong(u64),
}

/// Reads up to and including the next `\n` into `line`, never holding more
/// than `max` (+2 for the line end) bytes: an over-long line is consumed and
/// discarded.
fn read_bounded_line(
    input: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    let mut total: u64 = 0;
    let mut too_long = false;
    loop {
        let chunk = fill(input)?;
        if chunk.is_empty() {
            return Ok(match (total, too_long) {
                (0, _) => LineRead::Eof,
                (_, true) => LineRead::TooLong(total),
                (_, false) => LineRead::Line,
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        total += take as u64;
        if !too_long {
            if line.len() + take > max + 2 {
                too_long = true;
                line.clear();
                line.shrink_to(64 * 1024);
            } else {
                line.extend_from_slice(&chunk[..take]);
            }
        }
        input.consume(take);
        if done {
            return Ok(if too_long {
                LineRead::TooLong(total)
            } else {
                LineRead::Line
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_long_lines_are_skipped_without_buffering() {
        let text = format!("{}\nshort\r\n\nlast", "x".repeat(100));
        let mut input = io::BufReader::with_capacity(7, text.as_bytes());
        let mut line = Vec::new();
        let mut seen = Vec::new();
        loop {
            line.clear();
            match read_bounded_line(&mut input, &mut line, 10).unwrap() {
                LineRead::Eof => break,
                LineRead::TooLong(n) => seen.push(format!("too long {n}")),
                LineRead::Line => {
                    seen.push(String::from_utf8(trim_line_end(&line).to_vec()).unwrap())
                }
            }
            assert!(line.capacity() <= 64 * 1024);
        }
        assert_eq!(seen, ["too long 101", "short", "", "last"]);
    }

    #[test]
    fn rejection_reasons_stay_on_one_line() {
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(one_line("unknown field `a\nb`"), "unknown field `a\\nb`");
    }

    fn record(sensor: &str, seq: u64, fields: &[(&str, serde_json::Value)]) -> OpenedRecord {
        let mut map = FieldMap::new();
        for (name, value) in fields {
            map.push(name.to_string(), value.clone());
        }
        OpenedRecord {
            gateway: "gw".into(),
            sensor: sensor.into(),
            seq,
            ts: "2026-11-25T20:04:37Z".into(),
            ts_synced: None,
            ts_stamped: None,
            fields: map,
        }
    }

    #[test]
    fn csv_prints_a_header_whenever_the_columns_change_and_quotes_cells() {
        use serde_json::json;
        let mut out = Vec::new();
        let mut header = None;
        let bike = |seq, note: &str| {
            record(
                "bike",
                seq,
                &[
                    ("speed", json!(21.5)),
                    ("note", json!(note)),
                    ("ok", json!(true)),
                ],
            )
        };
        write_csv(&mut out, &mut header, &bike(1, "plain"));
        write_csv(&mut out, &mut header, &bike(2, "a, \"b\"\nc"));
        write_csv(
            &mut out,
            &mut header,
            &record("room", 7, &[("temp", json!(19))]),
        );
        write_csv(&mut out, &mut header, &bike(3, ""));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "gateway,sensor,seq,ts,speed,note,ok\n\
             gw,bike,1,2026-11-25T20:04:37Z,21.5,plain,true\n\
             gw,bike,2,2026-11-25T20:04:37Z,21.5,\"a, \"\"b\"\"\nc\",true\n\
             gateway,sensor,seq,ts,temp\n\
             gw,room,7,2026-11-25T20:04:37Z,19\n\
             gateway,sensor,seq,ts,speed,note,ok\n\
             gw,bike,3,2026-11-25T20:04:37Z,21.5,,true\n"
        );
    }

    #[test]
    fn csv_shows_times_stamped_before_the_clock_was_synchronised() {
        let mut out = Vec::new();
        let mut header = None;
        let plain = record("room", 1, &[("temp", serde_json::json!(19))]);
        let unsynced = OpenedRecord {
            seq: 2,
            ts: "2026-12-07T06:00:00Z".into(),
            ts_synced: Some(false),
            ts_stamped: Some("1970-01-01T00:00:10Z".into()),
            ..plain.clone()
        };
        let uncorrected = OpenedRecord {
            seq: 3,
            ts_stamped: None,
            ..unsynced.clone()
        };
        for r in [&plain, &unsynced, &uncorrected, &plain] {
            write_csv(&mut out, &mut header, r);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "gateway,sensor,seq,ts,temp\n\
             gw,room,1,2026-11-25T20:04:37Z,19\n\
             gateway,sensor,seq,ts,ts_synced,ts_stamped,temp\n\
             gw,room,2,2026-12-07T06:00:00Z,false,1970-01-01T00:00:10Z,19\n\
             gw,room,3,2026-12-07T06:00:00Z,false,,19\n\
             gateway,sensor,seq,ts,temp\n\
             gw,room,1,2026-11-25T20:04:37Z,19\n"
        );
    }

    #[test]
    fn gaps_are_listed_per_stream_with_their_missing_range() {
        let mut t = SequenceTracker::new();
        for seq in [1, 2, 6, 9] {
            t.observe("gw", "bike", "e1", seq);
        }
        t.observe("gw", "room", "e1", 4);
        let mut err = Vec::new();
        write_gaps(&mut err, &t).unwrap();
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "gap: gw/bike epoch e1: seq 3..5 missing\ngap: gw/bike epoch e1: seq 7..8 missing\n"
        );
        for seq in (20..20 + 2 * MAX_GAP_LINES as u64 + 10).step_by(2) {
            t.observe("gw", "room", "e1", seq);
        }
        let mut err = Vec::new();
        write_gaps(&mut err, &t).unwrap();
        let text = String::from_utf8(err).unwrap();
        assert_eq!(text.lines().count(), MAX_GAP_LINES + 1);
        assert!(
            text.ends_with("gap: 7 more missing ranges not listed\n"),
            "{text}"
        );
    }

    #[test]
    fn summary_line_reads_like_a_sentence() {
        let mut s = OpenSummary {
            messages: 3,
            records: 10,
            duplicates: 2,
            missing: 10,
            gaps: 1,
            declared: 0,
            rejected: 4,
            ..OpenSummary::default()
        };
        assert_eq!(
            s.to_string(),
            "opened 3 messages, 10 records, 2 duplicates, 10 records missing in 1 gap, 4 rejected"
        );
        (s.missing, s.gaps) = (1, 1);
        assert!(
            s.to_string().contains(", 1 record missing in 1 gap, "),
            "{s}"
        );
        (s.missing, s.gaps) = (0, 0);
        assert!(
            s.to_string().contains(", 0 records missing in 0 gaps, "),
            "{s}"
        );
        (s.missing, s.gaps) = (7, 3);
        assert!(
            s.to_string().contains(", 7 records missing in 3 gaps, "),
            "{s}"
        );
        s.declared = 5;
        assert!(
            s.to_string().contains(
                ", 7 records missing in 3 gaps (5 declared by the gateway, 2 unexplained), 4 rejected"
            ),
            "{s}"
        );
    }

    #[test]
    fn values_from_the_message_are_escaped_and_shortened_in_errors() {
        let e = OpenError::UntrustedKey {
            kid: format!("evil\nline{}", "k".repeat(200)),
        };
        let text = e.to_string();
        assert!(!text.contains('\n'));
        assert!(text.contains("evil\\nline") && text.len() < 250, "{text}");
    }
}
