//! Sealing: a batch of records becomes one sealed message, a JWS (ES256)
//! whose payload carries the clear fields and a JWE with the encrypted ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::b64;
use super::columns::Layout;
use super::cose;
use super::format::{
    FORMAT_VERSION, JWS_ALG, JWS_TYP, JwsHeader, PayloadOut, PlaintextOut, RecordsOut, Selection,
};
use super::jwe::{self, Binding, DataKey};
use super::keys::{GatewayKey, Nonces, PublicKey};
use super::v2::{self, BatchHeader, GapNotice};
use crate::record::Record;

/// Why a batch could not be sealed. These are programming or system errors,
/// not data errors: the batcher hands over one sensor's contiguous records.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot seal an empty batch")]
    Empty,
    #[error("a batch must hold one sensor's records, found {first:?} and {other:?}")]
    MixedSensors { first: String, other: String },
    #[error(
        "sensor {sensor}: batch sequence numbers must ascend by one, expected {expected} but found {found}"
    )]
    NotContiguous {
        sensor: String,
        expected: u64,
        found: u64,
    },
    #[error("sensor {sensor}: a batch of {records} records is too large to seal")]
    TooManyRecords { sensor: String, records: usize },
    #[error("the batch's encrypted fields are too large for one AES-GCM message")]
    TooLarge,
    #[error("the system random generator failed: {0}")]
    Random(String),
    #[error("the data key's IV counter is used up; a new data key is needed")]
    KeyExhausted,
    /// The signing key's token failed; the batch can be sealed again.
    #[error("cannot sign: {0}")]
    Sign(#[from] crate::pkcs11::TokenError),
}

/// The most messages one data key may encrypt: the NIST SP 800-38D limit
/// on AES-GCM invocations under one key, far below the 2^64 IV counter.
pub const MAX_MESSAGES_PER_DATA_KEY: u64 = 1 << 32;

/// Which sealed message format the gateway writes (`[seal] format`):
/// version 2 (COSE and CBOR, by column: `docs/FORMAT.md`) unless set to
/// version 1 (JOSE and JSON, by record: `docs/FORMAT-v1.md`) for consumers
/// not yet moved to version 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireFormat {
    V1,
    #[default]
    V2,
}

/// How the sealer writes: the format, and how long a wrapped data key
/// (CEK, ephemeral key, wrapped key) is reused before the sealer makes a
/// new one: after `rotate_after_messages` messages or `rotate_after` time,
/// whichever comes first. The config's `[seal] format`,
/// `rotate_after_messages` and `rotate_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealerOptions {
    /// 1 ..= [`MAX_MESSAGES_PER_DATA_KEY`]; 1 means a new key per message.
    pub rotate_after_messages: u64,
    pub rotate_after: Duration,
    pub format: WireFormat,
}

impl Default for SealerOptions {
    fn default() -> Self {
        SealerOptions {
            rotate_after_messages: 1000,
            rotate_after: Duration::from_secs(3600),
            format: WireFormat::default(),
        }
    }
}

/// Fixed inputs in place of the random ones, so that a sealed message is
/// reproducible byte for byte (a sealer given them also signs with RFC
/// 6979's deterministic nonces). For test vectors only: a fixed CEK and IV
/// in production would be a disaster.
#[doc(hidden)]
#[derive(Clone)]
pub struct FixedRandomness {
    /// The ephemeral private key (a P-256 scalar, big-endian).
    pub epk: [u8; 32],
    /// The content encryption key.
    pub cek: [u8; 32],
    /// The IV of the first message under this key: a 4-byte prefix and the
    /// 8-byte big-endian counter it starts from.
    pub iv: [u8; 12],
}

/// One sealed message, ready for the spool: the exact bytes to publish.
#[derive(Debug, Clone)]
pub struct SealedMessage {
    pub sensor: Arc<str>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u32,
    /// Version 2: one CBOR item (a tagged COSE_Sign1). Version 1: one
    /// line of UTF-8 JSON, no newline inside or at the end.
    pub bytes: Vec<u8>,
}

/// Seals batches for one gateway, epoch and recipient. Holds the signing
/// key; the precomputed JWS header is the same for every message.
pub struct Sealer {
    gateway: String,
    epoch: String,
    key: GatewayKey,
    recipient: PublicKey,
    encrypt: Vec<String>,
    /// base64url of the JWS protected header, identical for every message
    /// (version 1).
    protected: String,
    /// The COSE_Sign1 protected header, identical for every message
    /// (version 2).
    cose_protected: Vec<u8>,
    recipient_kid: [u8; 32],
    options: SealerOptions,
    /// The data key in use; made on the first message that needs one.
    data_key: Option<DataKey>,
    /// Scratch buffers kept from one message to the next: the encrypted
    /// fields' JSON (encrypted in place, wiped when replaced or dropped)
    /// and the payload's JSON. Allocating them anew for every message cost
    /// CPU and left the heap fragmented around the queued messages.
    plaintext: Zeroizing<Vec<u8>>,
    payload_json: Vec<u8>,
    /// Hedged, unless [`seal_with`](Self::seal_with) made this sealer
    /// reproducible.
    nonces: Nonces,
    /// This boot's id, for the batches' `clock` (version 2).
    boot_id: [u8; 16],
    /// Counts the batches sealed with an unsynchronised clock; a sensor
    /// whose last anchor is from an older count anchors its next
    /// synchronised batch ([`Sealer::clock_of`]).
    unsynced_batches: u64,
    anchored: HashMap<Arc<str>, u64>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("gateway", &self.gateway)
            .field("epoch", &self.epoch)
            .field("key", &self.key)
            .field("recipient", &self.recipient)
            .field("encrypt", &self.encrypt)
            .field("options", &self.options)
            .field("data_key", &self.data_key)
            .finish()
    }
}

impl Sealer {
    /// `encrypt` names the fields sealed for `recipient`; all others travel
    /// in clear (still signed).
    pub fn new(
        gateway: &str,
        epoch: &str,
        key: GatewayKey,
        recipient: PublicKey,
        encrypt: &[String],
    ) -> Sealer {
        let header = JwsHeader {
            alg: JWS_ALG.into(),
            kid: key.kid().into(),
            typ: JWS_TYP.into(),
        };
        let protected = b64::encode(serde_json::to_vec(&header).expect("a header serializes"));
        let cose_protected = cose::sign1_protected(&key.public().kid_bytes());
        let recipient_kid = recipient.kid_bytes();
        Sealer {
            gateway: gateway.to_string(),
            epoch: epoch.to_string(),
            key,
            recipient,
            encrypt: encrypt.to_vec(),
            protected,
            cose_protected,
            recipient_kid,
            options: SealerOptions::default(),
            data_key: None,
            plaintext: Zeroizing::new(Vec::new()),
            payload_json: Vec::new(),
            nonces: Nonces::Hedged,
            boot_id: crate::clock::boot_id(),
            unsynced_batches: 0,
            anchored: HashMap::new(),
        }
    }

    /// Writes `boot_id` as this boot's id (tests; the default reads the
    /// kernel's).
    pub fn with_boot_id(mut self, boot_id: [u8; 16]) -> Sealer {
        self.boot_id = boot_id;
        self
    }

    /// The batch's `clock` entry (`docs/FORMAT.md`, "Time"): for a batch
    /// stamped while the clock was not synchronised, and as an anchor for
    /// a sensor's first synchronised batch since the gateway started or
    /// since a batch (of any sensor) was stamped unsynchronised. None for
    /// times the devices gave.
    fn clock_of(&self, records: &[Record]) -> Option<v2::BatchClock> {
        let mark = records.first()?.clock?;
        let due =
            !mark.synced || self.anchored.get(&records[0].sensor) != Some(&self.unsynced_batches);
        due.then_some(v2::BatchClock {
            synced: mark.synced,
            boot: self.boot_id,
            boot_ms: mark.boot_ms,
        })
    }

    /// Notes a sealed batch's `clock` entry.
    fn clock_sealed(&mut self, sensor: &Arc<str>, clock: &v2::BatchClock) {
        if clock.synced {
            self.anchored
                .insert(Arc::clone(sensor), self.unsynced_batches);
        } else {
            self.unsynced_batches += 1;
        }
    }

    /// Sets how long a data key is reused. `rotate_after_messages` is
    /// clamped to 1 ..= [`MAX_MESSAGES_PER_DATA_KEY`].
    pub fn with_options(mut self, options: SealerOptions) -> Sealer {
        self.options = SealerOptions {
            rotate_after_messages: options
                .rotate_after_messages
                .clamp(1, MAX_MESSAGES_PER_DATA_KEY),
            ..options
        };
        self
    }

    /// The signing key's `kid`, as in every message's JWS header.
    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// Seals a batch: `records` non-empty, one sensor, sequence numbers
    /// ascending by one. One AEAD operation per message (none when no record
    /// has a field to encrypt), one ES256 signature, and one ECDH each time
    /// the data key rotates (see [`SealerOptions`]).
    pub fn seal(&mut self, records: &[Record]) -> Result<SealedMessage, SealError> {
        self.seal_at(records, Instant::now())
    }

    /// Replaces the data key by one made from `fixed`, then seals `records`
    /// with it; later [`seal`](Self::seal) calls reuse that key like any
    /// other. From then on the sealer signs with deterministic nonces (RFC
    /// 6979). For test vectors only.
    ///
    /// # Panics
    ///
    /// If `fixed.epk` is not a valid P-256 private key (zero or ≥ n).
    #[doc(hidden)]
    pub fn seal_with(
        &mut self,
        records: &[Record],
        fixed: &FixedRandomness,
    ) -> Result<SealedMessage, SealError> {
        let now = Instant::now();
        check_batch(records)?;
        self.nonces = Nonces::Rfc6979;
        let epk = p256::SecretKey::from_slice(&fixed.epk)
            .expect("the fixed epk is a P-256 scalar in 1..n");
        self.data_key = Some(DataKey::from_fixed(
            &self.recipient,
            kdf(self.options.format),
            &epk,
            &fixed.cek,
            &fixed.iv,
            now,
        ));
        self.seal_at(records, now)
    }

    /// The data key for the next message at `now`: the current one while it
    /// is under both limits and has IVs left, otherwise a new one.
    /// (A function of the fields it needs, so `seal_at` can hold borrows
    /// of the others.)
    fn data_key<'k>(
        slot: &'k mut Option<DataKey>,
        recipient: &PublicKey,
        options: &SealerOptions,
        now: Instant,
    ) -> Result<&'k mut DataKey, SealError> {
        let fresh = slot.as_ref().is_some_and(|key| {
            key.used() < options.rotate_after_messages
                && now.saturating_duration_since(key.created()) < options.rotate_after
                && !key.exhausted()
        });
        if !fresh {
            *slot = Some(DataKey::generate(recipient, kdf(options.format), now)?);
        }
        Ok(slot.as_mut().expect("set above"))
    }

    fn seal_at(&mut self, records: &[Record], now: Instant) -> Result<SealedMessage, SealError> {
        match self.options.format {
            WireFormat::V1 => self.seal_v1(records, now),
            WireFormat::V2 => self.seal_v2(records, now),
        }
    }

    /// Seals a gap notice (`docs/FORMAT.md`, "Gap notices"): a signed
    /// statement that a range of one sensor's sequence numbers will never
    /// be sent. Version 2 only: `None` when the sealer writes version 1,
    /// whose consumers would reject it.
    pub fn seal_notice(&mut self, notice: &GapNotice) -> Result<Option<SealedMessage>, SealError> {
        if self.options.format != WireFormat::V2 || notice.first > notice.last {
            return Ok(None);
        }
        let header = BatchHeader {
            gateway: &self.gateway,
            sensor: &notice.sensor,
            epoch: &self.epoch,
            first: notice.first,
            last: notice.last,
        };
        let mut payload = Vec::with_capacity(128);
        v2::write_notice(&mut payload, &header, notice);
        Ok(Some(SealedMessage {
            sensor: Arc::clone(&notice.sensor),
            first_seq: notice.first,
            last_seq: notice.last,
            records: 0,
            bytes: cose::sign1(&self.key, self.nonces, &self.cose_protected, &payload)?,
        }))
    }

    /// Version 2: the batch by column in a COSE_Sign1, the encrypted
    /// columns in a COSE_Encrypt inside it.
    fn seal_v2(&mut self, records: &[Record], now: Instant) -> Result<SealedMessage, SealError> {
        let Span {
            sensor,
            first,
            last,
            count,
        } = check_batch(records)?;
        let selection = Selection(&self.encrypt);
        let layout = Layout::of(records);
        let header = BatchHeader {
            gateway: &self.gateway,
            sensor,
            epoch: &self.epoch,
            first,
            last,
        };
        let positions = layout.encrypted(selection);
        let enc = if positions.is_empty() {
            None
        } else {
            // Sized up front so no reallocation leaves field values behind
            // in a freed buffer: a buffer too small is replaced (and the
            // old one wiped) rather than grown.
            let estimate = 64 + 16 * records.len() * positions.len();
            if self.plaintext.capacity() < estimate {
                self.plaintext = Zeroizing::new(Vec::with_capacity(estimate));
            }
            let plaintext = &mut *self.plaintext;
            plaintext.clear();
            layout.write_columns(plaintext, records, selection, true);
            let key = Sealer::data_key(&mut self.data_key, &self.recipient, &self.options, now)?;
            let aad = cose::external_aad(&self.gateway, sensor, &self.epoch, first, last);
            Some(cose::encrypt(key, &self.recipient_kid, &aad, plaintext)?)
        };
        let clock = self.clock_of(records);
        let payload = &mut self.payload_json;
        payload.clear();
        v2::write_payload(
            payload,
            &header,
            records,
            &layout,
            selection,
            enc.as_deref().map(|e| (positions.as_slice(), e)),
            clock.as_ref(),
        );
        let bytes = cose::sign1(&self.key, self.nonces, &self.cose_protected, payload)?;
        if let Some(clock) = &clock {
            self.clock_sealed(sensor, clock);
        }
        Ok(SealedMessage {
            sensor: Arc::clone(sensor),
            first_seq: first,
            last_seq: last,
            records: count,
            bytes,
        })
    }

    /// Version 1: a JWS whose JSON payload carries the records and a JWE.
    fn seal_v1(&mut self, records: &[Record], now: Instant) -> Result<SealedMessage, SealError> {
        let Span {
            sensor,
            first,
            last,
            count,
        } = check_batch(records)?;
        let selection = Selection(&self.encrypt);
        let binding = Binding {
            gateway: &self.gateway,
            sensor,
            epoch: &self.epoch,
            seq: [first, last],
        };

        let jwe = if records.iter().any(|r| selection.any_in(r)) {
            // Sized up front so the plaintext is not left behind in freed
            // buffers by reallocation: a buffer too small is replaced (and
            // the old one wiped) rather than grown.
            let estimate = 64 * records.len();
            if self.plaintext.capacity() < estimate {
                self.plaintext = Zeroizing::new(Vec::with_capacity(estimate));
            }
            let plaintext = &mut *self.plaintext;
            plaintext.clear();
            serde_json::to_writer(&mut *plaintext, &PlaintextOut { records, selection })
                .expect("records serialize to JSON");
            let key = Sealer::data_key(&mut self.data_key, &self.recipient, &self.options, now)?;
            // Encrypted in place: the buffer keeps ciphertext, not fields.
            Some(jwe::encrypt(
                key,
                self.recipient.kid(),
                &binding,
                plaintext,
            )?)
        } else {
            None
        };

        let payload = PayloadOut {
            v: FORMAT_VERSION,
            gateway: &self.gateway,
            sensor,
            epoch: &self.epoch,
            seq: [first, last],
            records: RecordsOut { records, selection },
            jwe,
        };
        let estimate =
            512 + records.len() * 192 + payload.jwe.as_ref().map_or(0, |j| j.ciphertext.len());
        let payload_json = &mut self.payload_json;
        payload_json.clear();
        payload_json.reserve(estimate);
        serde_json::to_writer(&mut *payload_json, &payload).expect("records serialize to JSON");
        let bytes = sign_jws(&self.key, self.nonces, &self.protected, payload_json);
        Ok(SealedMessage {
            sensor: Arc::clone(sensor),
            first_seq: first,
            last_seq: last,
            records: count,
            bytes: bytes?,
        })
    }
}

/// `{"protected":..,"payload":..,"signature":..}` with an ES256 signature
/// over `ASCII(protected || '.' || payload)` (RFC 7515 §5.1), encoding
/// straight into the output buffer.
pub(crate) fn sign_jws(
    key: &GatewayKey,
    nonces: Nonces,
    protected: &str,
    payload_json: &[u8],
) -> Result<Vec<u8>, crate::pkcs11::TokenError> {
    let payload_b64_len = payload_json.len().div_ceil(3) * 4;
    let mut out = String::with_capacity(protected.len() + payload_b64_len + 160);
    out.push_str(r#"{"protected":""#);
    out.push_str(protected);
    out.push_str(r#"","payload":""#);
    let payload_start = out.len();
    b64::encode_into(payload_json, &mut out);
    let payload_end = out.len();
    let mut to_sign = Vec::with_capacity(protected.len() + 1 + payload_end - payload_start);
    to_sign.extend_from_slice(protected.as_bytes());
    to_sign.push(b'.');
    to_sign.extend_from_slice(&out.as_bytes()[payload_start..payload_end]);
    let signature = key.sign(&to_sign, nonces)?;
    out.push_str(r#"","signature":""#);
    b64::encode_into(signature, &mut out);
    out.push_str(r#""}"#);
    Ok(out.into_bytes())
}

/// How a data key's KEK is derived in each format.
fn kdf(format: WireFormat) -> jwe::Kdf {
    match format {
        WireFormat::V1 => jwe::derive_kek,
        WireFormat::V2 => cose::derive_kek,
    }
}

/// What a valid batch is: one sensor's records `first..=last`, `count` of
/// them.
struct Span<'r> {
    sensor: &'r Arc<str>,
    first: u64,
    last: u64,
    count: u32,
}

/// Checks the batch invariants; returns its span.
fn check_batch(records: &[Record]) -> Result<Span<'_>, SealError> {
    let first = records.first().ok_or(SealError::Empty)?;
    for (i, record) in records.iter().enumerate() {
        if record.sensor != first.sensor {
            return Err(SealError::MixedSensors {
                first: first.sensor.to_string(),
                other: record.sensor.to_string(),
            });
        }
        let expected = first.seq.checked_add(i as u64);
        if expected != Some(record.seq) {
            return Err(SealError::NotContiguous {
                sensor: first.sensor.to_string(),
                expected: expected.unwrap_or(u64::MAX),
                found: record.seq,
            });
        }
    }
    Ok(Span {
        sensor: &first.sensor,
        first: first.seq,
        last: first.seq + (records.len() as u64 - 1),
        count: u32::try_from(records.len()).map_err(|_| SealError::TooManyRecords {
            sensor: first.sensor.to_string(),
            records: records.len(),
        })?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::record::{Field, Value};
    use crate::seal::RecipientKey;

    fn records(seq: u64) -> Vec<Record> {
        vec![Record {
            sensor: Arc::from("bike"),
            seq,
            ts: SystemTime::UNIX_EPOCH,
            clock: None,
            fields: vec![Field {
                name: Arc::from("heart_rate"),
                value: Value::Int(140),
            }],
        }]
    }

    fn sealer(options: SealerOptions) -> Sealer {
        let recipient = RecipientKey::generate();
        Sealer::new(
            "gw",
            "e1",
            GatewayKey::generate(),
            recipient.public(),
            &["heart_rate".to_string()],
        )
        .with_options(options)
    }

    /// `encrypted_key` of each message sealed at the given offsets.
    fn wrapped_keys(sealer: &mut Sealer, offsets: &[u64]) -> Vec<String> {
        let start = Instant::now();
        offsets
            .iter()
            .enumerate()
            .map(|(i, &secs)| {
                sealer
                    .seal_at(&records(i as u64), start + Duration::from_secs(secs))
                    .unwrap();
                let key = sealer.data_key.as_ref().unwrap();
                key.debug_encrypted_key().to_string()
            })
            .collect()
    }

    #[test]
    fn the_data_key_rotates_after_the_message_limit() {
        let mut sealer = sealer(SealerOptions {
            rotate_after_messages: 2,
            rotate_after: Duration::from_secs(3600),
            ..SealerOptions::default()
        });
        let keys = wrapped_keys(&mut sealer, &[0, 0, 0, 0, 0]);
        assert_eq!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
        assert_eq!(keys[2], keys[3]);
        assert_ne!(keys[3], keys[4]);
    }

    #[test]
    fn the_data_key_rotates_after_the_time_limit() {
        let mut sealer = sealer(SealerOptions {
            rotate_after_messages: 1000,
            rotate_after: Duration::from_secs(60),
            ..SealerOptions::default()
        });
        let keys = wrapped_keys(&mut sealer, &[0, 59, 60, 61, 200]);
        assert_eq!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
        assert_eq!(keys[2], keys[3]);
        assert_ne!(keys[3], keys[4]);
    }

    #[test]
    fn options_are_clamped_to_the_gcm_limit() {
        let s = sealer(SealerOptions {
            rotate_after_messages: 0,
            rotate_after: Duration::from_secs(1),
            ..SealerOptions::default()
        });
        assert_eq!(s.options.rotate_after_messages, 1);
        let s = sealer(SealerOptions {
            rotate_after_messages: u64::MAX,
            rotate_after: Duration::from_secs(1),
            ..SealerOptions::default()
        });
        assert_eq!(s.options.rotate_after_messages, MAX_MESSAGES_PER_DATA_KEY);
    }

    #[test]
    fn a_batch_without_encrypted_fields_uses_no_data_key() {
        let mut s = sealer(SealerOptions::default());
        let mut plain = records(0);
        plain[0].fields[0].name = Arc::from("speed");
        s.seal(&plain).unwrap();
        assert!(s.data_key.is_none());
    }
}
