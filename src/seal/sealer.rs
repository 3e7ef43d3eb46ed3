//! Sealing: a batch of records becomes one sealed message, a JWS (ES256)
//! whose payload carries the clear fields and a JWE with the encrypted ones.

use std::sync::Arc;

use p256::ecdsa::Signature;
use p256::ecdsa::signature::MultipartSigner;
use zeroize::Zeroizing;

use super::b64;
use super::format::{
    FORMAT_VERSION, JWS_ALG, JWS_TYP, JwsHeader, PayloadOut, PlaintextOut, RecordsOut, Selection,
};
use super::jwe::{self, Binding};
use super::keys::{GatewayKey, PublicKey};
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
}

/// One sealed message, ready for the spool: the exact bytes to publish.
#[derive(Debug, Clone)]
pub struct SealedMessage {
    pub sensor: Arc<str>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u32,
    /// One line of UTF-8 JSON, no newline inside or at the end.
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
    /// base64url of the JWS protected header, identical for every message.
    protected: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("gateway", &self.gateway)
            .field("epoch", &self.epoch)
            .field("key", &self.key)
            .field("recipient", &self.recipient)
            .field("encrypt", &self.encrypt)
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
        Sealer {
            gateway: gateway.to_string(),
            epoch: epoch.to_string(),
            key,
            recipient,
            encrypt: encrypt.to_vec(),
            protected,
        }
    }

    /// The signing key's `kid`, as in every message's JWS header.
    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// Seals a batch: `records` non-empty, one sensor, sequence numbers
    /// ascending by one. One ECDH and one AEAD operation per message (none
    /// when no record has a field to encrypt), one ES256 signature.
    pub fn seal(&mut self, records: &[Record]) -> Result<SealedMessage, SealError> {
        let (first, last) = check_batch(records)?;
        let sensor = &records[0].sensor;
        let count = u32::try_from(records.len()).map_err(|_| SealError::TooManyRecords {
            sensor: sensor.to_string(),
            records: records.len(),
        })?;
        let selection = Selection(&self.encrypt);
        let binding = Binding {
            gateway: &self.gateway,
            sensor,
            epoch: &self.epoch,
            seq: [first, last],
        };

        let jwe = if records.iter().any(|r| selection.any_in(r)) {
            // Sized up front so the plaintext is not left behind in freed
            // buffers by reallocation; wiped when dropped.
            let mut plaintext = Zeroizing::new(Vec::with_capacity(64 * records.len()));
            serde_json::to_writer(&mut *plaintext, &PlaintextOut { records, selection })
                .expect("records serialize to JSON");
            Some(jwe::encrypt(&self.recipient, &binding, &mut plaintext)?)
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
        let mut payload_json = Vec::with_capacity(estimate);
        serde_json::to_writer(&mut payload_json, &payload).expect("records serialize to JSON");
        let bytes = self.sign(&payload_json);
        Ok(SealedMessage {
            sensor: Arc::clone(sensor),
            first_seq: first,
            last_seq: last,
            records: count,
            bytes,
        })
    }

    /// Builds the flattened JWS around `payload_json`, encoding straight into
    /// the output buffer and signing the two base64 parts in place.
    fn sign(&self, payload_json: &[u8]) -> Vec<u8> {
        sign_jws(&self.key, &self.protected, payload_json)
    }
}

/// `{"protected":..,"payload":..,"signature":..}` with an ES256 signature
/// over `ASCII(protected || '.' || payload)` (RFC 7515 §5.1).
pub(crate) fn sign_jws(key: &GatewayKey, protected: &str, payload_json: &[u8]) -> Vec<u8> {
    let payload_b64_len = payload_json.len().div_ceil(3) * 4;
    let mut out = String::with_capacity(protected.len() + payload_b64_len + 160);
    out.push_str(r#"{"protected":""#);
    out.push_str(protected);
    out.push_str(r#"","payload":""#);
    let payload_start = out.len();
    b64::encode_into(payload_json, &mut out);
    let payload_end = out.len();
    let signature: Signature = key.signing_key().multipart_sign(&[
        protected.as_bytes(),
        b".",
        &out.as_bytes()[payload_start..payload_end],
    ]);
    out.push_str(r#"","signature":""#);
    b64::encode_into(signature.to_bytes(), &mut out);
    out.push_str(r#""}"#);
    out.into_bytes()
}

/// Checks the batch invariants; returns the seq range.
fn check_batch(records: &[Record]) -> Result<(u64, u64), SealError> {
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
    Ok((first.seq, first.seq + (records.len() as u64 - 1)))
}
