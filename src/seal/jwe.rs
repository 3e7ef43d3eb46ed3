//! The JWE that carries a batch's encrypted fields: ECDH-ES+A256KW key
//! agreement on P-256 and A256GCM content encryption (RFC 7516, RFC 7518
//! §4.6 and §5.3), flattened JSON serialization.
//!
//! One JWE per sealed message: the encrypted columns of all records of the
//! batch are one plaintext, so sealing a batch costs one AEAD operation
//! however many records it holds. The wrapped data key ([`DataKey`]) is
//! reused for a bounded number of messages, so the ECDH is paid once per
//! key, not per message; each message gets its own counter-based IV.
//!
//! The message context (gateway, sensor, epoch, seq range) sits in the JWE
//! protected header, which is the AAD of AES-GCM, so a ciphertext cut out of
//! one sealed message cannot be opened as part of another.

use std::borrow::Cow;
use std::fmt;
use std::time::Instant;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use aes_kw::KwAes256;
use p256::elliptic_curve::Generate;
use rand::TryRng;
use rand::rngs::SysRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::b64;
use super::keys::{PublicKey, RecipientKey, raw_coordinates};
use super::opener::OpenError;
use super::sealer::SealError;

/// Key management algorithm (RFC 7518 §4.6).
pub const JWE_ALG: &str = "ECDH-ES+A256KW";
/// Content encryption algorithm (RFC 7518 §5.3).
pub const JWE_ENC: &str = "A256GCM";

pub(crate) const CEK_LEN: usize = 32;
pub(crate) const WRAPPED_CEK_LEN: usize = CEK_LEN + 8;
pub(crate) const IV_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// The context a JWE is bound to; equal to the enclosing payload's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Binding<'a> {
    pub gateway: &'a str,
    pub sensor: &'a str,
    pub epoch: &'a str,
    pub seq: [u64; 2],
}

/// The ephemeral public key, as a JWK (RFC 7518 §4.6.1.1).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Epk<'a> {
    #[serde(borrow)]
    pub kty: Cow<'a, str>,
    #[serde(borrow)]
    pub crv: Cow<'a, str>,
    #[serde(borrow)]
    pub x: Cow<'a, str>,
    #[serde(borrow)]
    pub y: Cow<'a, str>,
}

/// The JWE protected header. Member order here is the order on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JweHeader<'a> {
    #[serde(borrow)]
    pub alg: Cow<'a, str>,
    #[serde(borrow)]
    pub enc: Cow<'a, str>,
    #[serde(borrow)]
    pub kid: Cow<'a, str>,
    #[serde(borrow)]
    pub epk: Epk<'a>,
    #[serde(borrow)]
    pub gateway: Cow<'a, str>,
    #[serde(borrow)]
    pub sensor: Cow<'a, str>,
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
    pub seq: [u64; 2],
}

/// A JWE in flattened JSON serialization (RFC 7516 §7.2.2), every member
/// base64url. No shared unprotected header, no `aad` member: everything that
/// must be authenticated is in `protected`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Jwe<'a> {
    #[serde(borrow)]
    pub protected: Cow<'a, str>,
    #[serde(borrow)]
    pub encrypted_key: Cow<'a, str>,
    #[serde(borrow)]
    pub iv: Cow<'a, str>,
    #[serde(borrow)]
    pub ciphertext: Cow<'a, str>,
    #[serde(borrow)]
    pub tag: Cow<'a, str>,
}

/// The Concat KDF of RFC 7518 §4.6.2 (NIST SP 800-56A §5.8.1, SHA-256):
/// `OtherInfo = AlgorithmID || PartyUInfo || PartyVInfo || SuppPubInfo`,
/// each of the first three a 32-bit big-endian length then the bytes, and
/// SuppPubInfo the key length in bits. Fills `out` (its length is keydatalen).
pub(crate) fn concat_kdf(z: &[u8], algorithm_id: &str, apu: &[u8], apv: &[u8], out: &mut [u8]) {
    let mut other_info = Vec::with_capacity(16 + algorithm_id.len() + apu.len() + apv.len());
    for part in [algorithm_id.as_bytes(), apu, apv] {
        let len = u32::try_from(part.len()).expect("KDF inputs are short");
        other_info.extend_from_slice(&len.to_be_bytes());
        other_info.extend_from_slice(part);
    }
    let bits = u32::try_from(out.len() * 8).expect("KDF output is short");
    other_info.extend_from_slice(&bits.to_be_bytes());
    concat_kdf::derive_key_into::<sha2_10::Sha256>(z, &other_info, out)
        .expect("a non-empty secret and output of at most one hash block per counter");
}

/// The key-encryption key for JOSE ECDH-ES+A256KW (format version 1)
/// from the shared secret Z. `apu`/`apv` are not used (empty), as RFC 7518
/// allows.
pub(crate) fn derive_kek(z: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut kek = Zeroizing::new([0u8; 32]);
    concat_kdf(z, JWE_ALG, b"", b"", kek.as_mut());
    kek
}

/// How a data key's KEK is derived from the ECDH secret: the JOSE Concat
/// KDF (version 1) or the COSE HKDF (version 2).
pub(crate) type Kdf = fn(&[u8]) -> Zeroizing<[u8; 32]>;

/// A data key: a CEK wrapped once for the recipient, reused for several
/// sealed messages (see `docs/FORMAT-v1.md`, "Data-key reuse"). Every message
/// still carries `epk` and `encrypted_key`, so it opens alone.
///
/// The IV of each message is `iv_prefix (4 bytes) || counter (8 bytes,
/// big-endian)`; the counter only goes up, and the key refuses to produce
/// an IV once the counter would wrap, so an IV never repeats under one CEK.
pub(crate) struct DataKey {
    /// The CEK, expanded once for AES-256-GCM by *ring* (its AES and GHASH
    /// are assembly with NEON paths for the Raspberry Pi 4, which has no
    /// ARMv8 cryptography extensions; docs/BENCHMARKS.md, "Pi
    /// resources"). `open` decrypts with the `aes-gcm` crate: two
    /// implementations, one on each side.
    aead: ring::aead::LessSafeKey,
    /// The ephemeral public key's coordinates.
    pub(crate) epk_x: [u8; 32],
    pub(crate) epk_y: [u8; 32],
    /// The wrapped CEK, as in every message.
    pub(crate) wrapped: [u8; WRAPPED_CEK_LEN],
    iv_prefix: [u8; 4],
    /// The counter half of the next IV; `None` once it has wrapped.
    next_counter: Option<u64>,
    /// Messages encrypted under this key so far.
    used: u64,
    created: Instant,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("wrapped", &b64::encode(self.wrapped))
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// A fresh data key: a new ephemeral key pair (one ECDH), a random CEK
    /// and a random 4-byte IV prefix; the counter starts at 0.
    pub(crate) fn generate(
        recipient: &PublicKey,
        kdf: Kdf,
        now: Instant,
    ) -> Result<DataKey, SealError> {
        let random = |e: rand::rngs::SysError| SealError::Random(e.to_string());
        let ephemeral =
            p256::ecdh::EphemeralSecret::try_generate_from_rng(&mut SysRng).map_err(random)?;
        let epk = raw_coordinates(&ephemeral.public_key());
        let shared = ephemeral.diffie_hellman(recipient.p256());
        drop(ephemeral);
        let mut cek = Zeroizing::new([0u8; CEK_LEN]);
        SysRng.try_fill_bytes(cek.as_mut()).map_err(random)?;
        let mut iv_prefix = [0u8; 4];
        SysRng.try_fill_bytes(&mut iv_prefix).map_err(random)?;
        Ok(DataKey::assemble(
            kdf(shared.raw_secret_bytes()),
            epk,
            cek,
            iv_prefix,
            0,
            now,
        ))
    }

    /// A data key from fixed inputs, for test vectors only: the ephemeral
    /// private key, the CEK, and the first IV (prefix and counter start).
    pub(crate) fn from_fixed(
        recipient: &PublicKey,
        kdf: Kdf,
        epk: &p256::SecretKey,
        cek: &[u8; CEK_LEN],
        first_iv: &[u8; IV_LEN],
        now: Instant,
    ) -> DataKey {
        let shared =
            p256::ecdh::diffie_hellman(epk.to_nonzero_scalar(), recipient.p256().as_affine());
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&first_iv[..4]);
        let counter = u64::from_be_bytes(first_iv[4..].try_into().expect("8 bytes"));
        DataKey::assemble(
            kdf(shared.raw_secret_bytes()),
            raw_coordinates(&epk.public_key()),
            Zeroizing::new(*cek),
            prefix,
            counter,
            now,
        )
    }

    fn assemble(
        kek: Zeroizing<[u8; 32]>,
        (epk_x, epk_y): ([u8; 32], [u8; 32]),
        cek: Zeroizing<[u8; CEK_LEN]>,
        iv_prefix: [u8; 4],
        counter: u64,
        now: Instant,
    ) -> DataKey {
        let mut wrapped = [0u8; WRAPPED_CEK_LEN];
        KwAes256::new_from_slice(kek.as_ref())
            .expect("32-byte KEK")
            .wrap_key(cek.as_ref(), &mut wrapped)
            .expect("a 32-byte CEK fits a 40-byte buffer");
        let aead = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, cek.as_ref())
                .expect("a 32-byte AES-256 key"),
        );
        DataKey {
            aead,
            epk_x,
            epk_y,
            wrapped,
            iv_prefix,
            next_counter: Some(counter),
            used: 0,
            created: now,
        }
    }

    /// Messages encrypted under this key so far.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    /// When the key was made (monotonic clock).
    pub(crate) fn created(&self) -> Instant {
        self.created
    }

    /// The wrapped CEK, base64url; public data.
    #[cfg(test)]
    pub(crate) fn debug_encrypted_key(&self) -> String {
        b64::encode(self.wrapped)
    }

    /// Encrypts `plaintext` in place (afterwards it holds the ciphertext)
    /// with AES-256-GCM under the key's next IV, counting one more message:
    /// returns the IV and the tag. Fails with [`SealError::KeyExhausted`]
    /// when the IV counter is used up (the caller rotates before that).
    pub(crate) fn encrypt(
        &mut self,
        aad: &[u8],
        plaintext: &mut [u8],
    ) -> Result<([u8; IV_LEN], [u8; TAG_LEN]), SealError> {
        let iv = self.take_iv().ok_or(SealError::KeyExhausted)?;
        self.used += 1;
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(iv),
                ring::aead::Aad::from(aad),
                plaintext,
            )
            .map_err(|_| SealError::TooLarge)?;
        let tag = tag.as_ref().try_into().expect("a 16-byte GCM tag");
        Ok((iv, tag))
    }

    /// Whether the IV counter is used up (the key must be replaced).
    pub(crate) fn exhausted(&self) -> bool {
        self.next_counter.is_none()
    }

    /// The next IV, advancing the counter; `None` if it is used up.
    fn take_iv(&mut self) -> Option<[u8; IV_LEN]> {
        let counter = self.next_counter?;
        self.next_counter = counter.checked_add(1);
        let mut iv = [0u8; IV_LEN];
        iv[..4].copy_from_slice(&self.iv_prefix);
        iv[4..].copy_from_slice(&counter.to_be_bytes());
        Some(iv)
    }
}

/// Encrypts `plaintext` (in place: afterwards the buffer holds the
/// ciphertext) under `key`, binding it to `binding`. Takes the key's next
/// IV; fails with [`SealError::KeyExhausted`] if there is none (the caller
/// rotates before that).
pub(crate) fn encrypt(
    key: &mut DataKey,
    recipient_kid: &str,
    binding: &Binding<'_>,
    plaintext: &mut [u8],
) -> Result<Jwe<'static>, SealError> {
    let header = JweHeader {
        alg: JWE_ALG.into(),
        enc: JWE_ENC.into(),
        kid: recipient_kid.into(),
        epk: Epk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: b64::encode(key.epk_x).into(),
            y: b64::encode(key.epk_y).into(),
        },
        gateway: binding.gateway.into(),
        sensor: binding.sensor.into(),
        epoch: binding.epoch.into(),
        seq: binding.seq,
    };
    let header_json = serde_json::to_vec(&header).expect("a header serializes");
    let protected = b64::encode(&header_json);

    // AAD = ASCII(BASE64URL(UTF8(JWE Protected Header))), RFC 7516 §5.1 step 14.
    let (iv, tag) = key.encrypt(protected.as_bytes(), plaintext)?;

    Ok(Jwe {
        protected: protected.into(),
        encrypted_key: b64::encode(key.wrapped).into(),
        iv: b64::encode(iv).into(),
        ciphertext: b64::encode(&*plaintext).into(),
        tag: b64::encode(tag).into(),
    })
}

/// Parses and checks the protected header: exact algorithms, the binding
/// equal to the payload's, and the recipient `kid` equal to ours. Returns the
/// header for decryption.
pub(crate) fn check_header<'a>(
    header_json: &'a [u8],
    expected: &Binding<'_>,
    recipient_kid: Option<&str>,
) -> Result<JweHeader<'a>, OpenError> {
    let header: JweHeader<'a> =
        serde_json::from_slice(header_json).map_err(|e| OpenError::BadHeader {
            part: "JWE",
            detail: e.to_string(),
        })?;
    expect_param("JWE", "alg", &header.alg, JWE_ALG)?;
    expect_param("JWE", "enc", &header.enc, JWE_ENC)?;
    let mismatch = |field: &'static str, header: String, payload: String| {
        Err(OpenError::BindingMismatch {
            field,
            header,
            payload,
        })
    };
    if header.gateway != expected.gateway {
        return mismatch("gateway", header.gateway.into(), expected.gateway.into());
    }
    if header.sensor != expected.sensor {
        return mismatch("sensor", header.sensor.into(), expected.sensor.into());
    }
    if header.epoch != expected.epoch {
        return mismatch("epoch", header.epoch.into(), expected.epoch.into());
    }
    if header.seq != expected.seq {
        return mismatch(
            "seq",
            format!("{:?}", header.seq),
            format!("{:?}", expected.seq),
        );
    }
    let Some(ours) = recipient_kid else {
        return Err(OpenError::MissingRecipientKey {
            kid: header.kid.into(),
        });
    };
    if header.kid != ours {
        return Err(OpenError::WrongRecipient {
            sealed_for: header.kid.into(),
            ours: ours.to_string(),
        });
    }
    if header.epk.kty != "EC" || header.epk.crv != "P-256" {
        return Err(OpenError::BadHeader {
            part: "JWE",
            detail: format!(
                "epk must be an EC P-256 key, found kty {:?} crv {:?}",
                header.epk.kty, header.epk.crv
            ),
        });
    }
    Ok(header)
}

pub(crate) fn expect_param(
    part: &'static str,
    param: &'static str,
    found: &str,
    expected: &'static str,
) -> Result<(), OpenError> {
    if found == expected {
        Ok(())
    } else {
        Err(OpenError::WrongAlgorithm {
            part,
            param,
            found: found.to_string(),
            expected,
        })
    }
}

/// How many unwrapped content keys an opener keeps at least; more with
/// many trusted gateways ([`CekCache::for_gateways`]).
const CEK_CACHE_ENTRIES: usize = 64;

/// Content keys already unwrapped, by (epk, encrypted_key): messages sealed
/// under one reused data key pay the ECDH and key unwrap once, not each.
/// A changed epk or wrapped key is a different entry, so the cache never
/// lets an altered message skip a check. Keys are wiped when evicted, the
/// oldest first.
pub(crate) struct CekCache {
    keys: std::collections::HashMap<Vec<u8>, Zeroizing<[u8; CEK_LEN]>>,
    order: std::collections::VecDeque<Vec<u8>>,
    capacity: usize,
}

impl Default for CekCache {
    fn default() -> Self {
        CekCache::for_gateways(0)
    }
}

impl fmt::Debug for CekCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CekCache({} keys)", self.keys.len())
    }
}

impl CekCache {
    /// A cache for an opener trusting `gateways` keys: each gateway seals
    /// under one data key at a time, so room for two each (the one in use
    /// and the one before it, whose messages may still arrive) keeps a
    /// fleet whose messages interleave from paying an ECDH per message.
    pub(crate) fn for_gateways(gateways: usize) -> CekCache {
        CekCache {
            keys: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
            capacity: gateways.saturating_mul(2).saturating_add(CEK_CACHE_ENTRIES),
        }
    }

    pub(crate) fn get(&self, id: &[u8]) -> Option<&Zeroizing<[u8; CEK_LEN]>> {
        self.keys.get(id)
    }

    pub(crate) fn put(&mut self, id: Vec<u8>, cek: Zeroizing<[u8; CEK_LEN]>) {
        if self.keys.contains_key(&id) {
            return;
        }
        while self.keys.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.keys.remove(&oldest);
        }
        self.order.push_back(id.clone());
        self.keys.insert(id, cek);
    }
}

/// Unwraps the CEK (or finds it in `cache`) and decrypts. The header must
/// have passed [`check_header`]. The returned plaintext is wiped when
/// dropped.
pub(crate) fn decrypt(
    jwe: &Jwe<'_>,
    header: &JweHeader<'_>,
    recipient: &RecipientKey,
    cache: &mut CekCache,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let field = |member: &'static str, text: &str, len: Option<usize>| {
        let bytes = b64::decode(text).map_err(|_| OpenError::BadBase64 {
            member: member_name(member),
        })?;
        match len {
            Some(n) if bytes.len() != n => Err(OpenError::Decryption {
                reason: format!("{member} is {} bytes, expected {n}", bytes.len()),
            }),
            _ => Ok(bytes),
        }
    };
    let x = field("epk.x", &header.epk.x, Some(32))?;
    let y = field("epk.y", &header.epk.y, Some(32))?;
    let wrapped = field("encrypted_key", &jwe.encrypted_key, Some(WRAPPED_CEK_LEN))?;
    let iv = field("iv", &jwe.iv, Some(IV_LEN))?;
    let tag = field("tag", &jwe.tag, Some(TAG_LEN))?;
    let mut buffer = Zeroizing::new(field("ciphertext", &jwe.ciphertext, None)?);

    let mut sec1 = [0u8; 65];
    sec1[0] = 4;
    sec1[1..33].copy_from_slice(&x);
    sec1[33..].copy_from_slice(&y);
    let cache_id = [&sec1[1..], &wrapped[..]].concat();
    let cek = match cache.get(&cache_id) {
        Some(cek) => cek.clone(),
        None => {
            let cek = unwrap_cek(&sec1, &wrapped, recipient)?;
            cache.put(cache_id, cek.clone());
            cek
        }
    };
    let cipher = Aes256Gcm::new_from_slice(cek.as_ref()).expect("32-byte CEK");
    let iv: [u8; IV_LEN] = iv.try_into().expect("length checked");
    let tag: [u8; TAG_LEN] = tag.try_into().expect("length checked");
    cipher
        .decrypt_inout_detached(
            &iv.into(),
            jwe.protected.as_bytes(),
            buffer.as_mut_slice().into(),
            &tag.into(),
        )
        .map_err(|_| OpenError::Decryption {
            reason: "AES-GCM authentication failed (ciphertext, iv, tag or JWE header altered)"
                .to_string(),
        })?;
    Ok(buffer)
}

/// ECDH with the ephemeral key, Concat KDF, AES key unwrap.
fn unwrap_cek(
    sec1: &[u8; 65],
    wrapped: &[u8],
    recipient: &RecipientKey,
) -> Result<Zeroizing<[u8; CEK_LEN]>, OpenError> {
    // from_sec1_bytes checks the point is on the curve (invalid-curve attacks).
    let epk = p256::PublicKey::from_sec1_bytes(sec1).map_err(|_| OpenError::BadHeader {
        part: "JWE",
        detail: "epk is not a point on P-256".to_string(),
    })?;
    let shared =
        p256::ecdh::diffie_hellman(recipient.secret().to_nonzero_scalar(), epk.as_affine());
    let kek = derive_kek(shared.raw_secret_bytes());
    drop(shared);
    let mut cek = Zeroizing::new([0u8; CEK_LEN]);
    KwAes256::new_from_slice(kek.as_ref())
        .expect("32-byte KEK")
        .unwrap_key(wrapped, cek.as_mut())
        .map_err(|_| OpenError::Decryption {
            reason:
                "the content key does not unwrap (wrong recipient key or altered encrypted_key)"
                    .to_string(),
        })?;
    Ok(cek)
}

fn member_name(member: &'static str) -> &'static str {
    match member {
        "epk.x" | "epk.y" => "JWE epk",
        "encrypted_key" => "JWE encrypted_key",
        "iv" => "JWE iv",
        "tag" => "JWE tag",
        _ => "JWE ciphertext",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn p256_public(x: &str, y: &str) -> p256::PublicKey {
        let mut sec1 = vec![4u8];
        sec1.extend(b64::decode(x).unwrap());
        sec1.extend(b64::decode(y).unwrap());
        p256::PublicKey::from_sec1_bytes(&sec1).unwrap()
    }

    /// RFC 7518 Appendix C: ECDH-ES on P-256 with the published keys gives
    /// the published Z, and our Concat KDF turns it into the published key
    /// (there with AlgorithmID "A128GCM", apu "Alice", apv "Bob", 128 bits).
    #[test]
    fn rfc7518_appendix_c_ecdh_and_concat_kdf() {
        let alice_public = p256_public(
            "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0",
            "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps",
        );
        let alice_d = b64::decode("0_NxaRPUMQoAJt50Gz8YiTr8gRTwyEaCumd-MToTmIo").unwrap();
        let bob_public = p256_public(
            "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ",
            "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck",
        );
        let bob_d = b64::decode("VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw").unwrap();
        let alice = p256::SecretKey::from_slice(&alice_d).unwrap();
        let bob = p256::SecretKey::from_slice(&bob_d).unwrap();
        assert_eq!(alice.public_key(), alice_public);
        assert_eq!(bob.public_key(), bob_public);

        let z: [u8; 32] = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let z_sender =
            p256::ecdh::diffie_hellman(alice.to_nonzero_scalar(), bob_public.as_affine());
        let z_receiver =
            p256::ecdh::diffie_hellman(bob.to_nonzero_scalar(), alice_public.as_affine());
        assert_eq!(z_sender.raw_secret_bytes().as_slice(), z);
        assert_eq!(z_receiver.raw_secret_bytes().as_slice(), z);

        let mut key = [0u8; 16];
        concat_kdf(&z, "A128GCM", b"Alice", b"Bob", &mut key);
        assert_eq!(
            key,
            [
                86, 170, 141, 234, 248, 35, 109, 32, 92, 34, 40, 205, 113, 167, 16, 26
            ]
        );
        assert_eq!(b64::encode(key), "VqqN6vgjbSBcIijNcacQGg");
    }

    /// RFC 3394 §4.6: wrap 256 bits of key data with a 256-bit KEK.
    #[test]
    fn rfc3394_key_wrap_256_with_256() {
        let kek = hex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
        let data = hex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
        let expected =
            hex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21");
        let kw = KwAes256::new_from_slice(&kek).unwrap();
        let mut out = [0u8; 40];
        assert_eq!(kw.wrap_key(&data, &mut out).unwrap(), expected.as_slice());
        let mut back = [0u8; 32];
        assert_eq!(
            kw.unwrap_key(&expected, &mut back).unwrap(),
            data.as_slice()
        );
    }

    fn binding() -> Binding<'static> {
        Binding {
            gateway: "gw",
            sensor: "bike",
            epoch: "e1",
            seq: [1, 2],
        }
    }

    fn open(jwe: &Jwe<'_>, recipient: &RecipientKey) -> Result<Vec<u8>, OpenError> {
        let header_json = b64::decode(jwe.protected.as_bytes()).unwrap();
        let header = check_header(&header_json, &binding(), Some(recipient.kid()))?;
        decrypt(jwe, &header, recipient, &mut CekCache::default()).map(|p| p.to_vec())
    }

    #[test]
    fn encrypt_then_decrypt_round_trips_and_binds_the_header() {
        let recipient = RecipientKey::generate();
        let mut key = DataKey::generate(&recipient.public(), derive_kek, Instant::now()).unwrap();
        let mut buf = br#"[{"heart_rate":140}]"#.to_vec();
        let jwe = encrypt(&mut key, recipient.kid(), &binding(), &mut buf).unwrap();
        assert_ne!(buf, br#"[{"heart_rate":140}]"#);
        assert_eq!(open(&jwe, &recipient).unwrap(), br#"[{"heart_rate":140}]"#);

        let header: serde_json::Value =
            serde_json::from_slice(&b64::decode(jwe.protected.as_bytes()).unwrap()).unwrap();
        assert_eq!(header["alg"], "ECDH-ES+A256KW");
        assert_eq!(header["enc"], "A256GCM");
        assert_eq!(header["kid"], recipient.kid());
        assert_eq!(header["seq"], serde_json::json!([1, 2]));

        let other = RecipientKey::generate();
        assert!(matches!(
            open(&jwe, &other),
            Err(OpenError::WrongRecipient { .. })
        ));

        // The protected header is the AAD: a re-encoded header with another
        // binding but the same key material fails authentication.
        let mut forged = header.clone();
        forged["seq"] = serde_json::json!([3, 4]);
        let mut moved = jwe.clone();
        moved.protected = b64::encode(serde_json::to_vec(&forged).unwrap()).into();
        let header_json = b64::decode(moved.protected.as_bytes()).unwrap();
        let parsed = serde_json::from_slice::<JweHeader<'_>>(&header_json).unwrap();
        assert!(matches!(
            decrypt(&moved, &parsed, &recipient, &mut CekCache::default()),
            Err(OpenError::Decryption { .. })
        ));
    }

    /// Two messages under one reused data key: both open alone, share epk
    /// and encrypted_key, get different IVs, and the ciphertext (with its
    /// IV and tag) of one cannot be moved into the other: the binding in
    /// the protected header is the AAD, so the tag fails.
    #[test]
    fn a_reused_data_key_does_not_let_ciphertext_move_between_messages() {
        let recipient = RecipientKey::generate();
        let mut key = DataKey::generate(&recipient.public(), derive_kek, Instant::now()).unwrap();
        let first_binding = binding();
        let second_binding = Binding {
            seq: [3, 4],
            ..binding()
        };
        let mut a = br#"[{"heart_rate":140},{"heart_rate":141}]"#.to_vec();
        let first = encrypt(&mut key, recipient.kid(), &first_binding, &mut a).unwrap();
        let mut b = br#"[{"heart_rate":150},{"heart_rate":151}]"#.to_vec();
        let second = encrypt(&mut key, recipient.kid(), &second_binding, &mut b).unwrap();
        assert_eq!(key.used(), 2);
        assert_eq!(first.encrypted_key, second.encrypted_key);
        assert_ne!(first.iv, second.iv);

        let open_as = |jwe: &Jwe<'_>, expected: &Binding<'_>| {
            let header_json = b64::decode(jwe.protected.as_bytes()).unwrap();
            let header = check_header(&header_json, expected, Some(recipient.kid()))?;
            decrypt(jwe, &header, &recipient, &mut CekCache::default()).map(|p| p.to_vec())
        };
        assert_eq!(
            open_as(&first, &first_binding).unwrap(),
            br#"[{"heart_rate":140},{"heart_rate":141}]"#
        );
        assert_eq!(
            open_as(&second, &second_binding).unwrap(),
            br#"[{"heart_rate":150},{"heart_rate":151}]"#
        );

        // The first message's ciphertext, IV and tag under the second
        // message's header (same CEK, same epk and encrypted_key).
        let moved = Jwe {
            protected: second.protected.clone(),
            encrypted_key: second.encrypted_key.clone(),
            iv: first.iv.clone(),
            ciphertext: first.ciphertext.clone(),
            tag: first.tag.clone(),
        };
        assert!(matches!(
            open_as(&moved, &second_binding),
            Err(OpenError::Decryption { .. })
        ));
        // Only the ciphertext moved, the second message's own IV and tag kept.
        let spliced = Jwe {
            ciphertext: first.ciphertext.clone(),
            ..second.clone()
        };
        assert!(matches!(
            open_as(&spliced, &second_binding),
            Err(OpenError::Decryption { .. })
        ));
    }

    #[test]
    fn ivs_are_prefix_and_counter_and_the_key_refuses_to_wrap() {
        let recipient = RecipientKey::generate();
        let epk = p256::SecretKey::from_slice(&[9u8; 32]).unwrap();
        let mut first_iv = [0xAB, 0xCD, 0xEF, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        first_iv[4..].copy_from_slice(&(u64::MAX - 1).to_be_bytes());
        let mut key = DataKey::from_fixed(
            &recipient.public(),
            derive_kek,
            &epk,
            &[5u8; 32],
            &first_iv,
            Instant::now(),
        );
        assert_eq!(key.take_iv().unwrap(), first_iv);
        let second = key.take_iv().unwrap();
        assert_eq!(second[..4], first_iv[..4]);
        assert_eq!(second[4..], u64::MAX.to_be_bytes());
        assert!(key.exhausted());
        let mut buf = b"[{}]".to_vec();
        assert!(matches!(
            encrypt(&mut key, recipient.kid(), &binding(), &mut buf),
            Err(SealError::KeyExhausted)
        ));
    }

    #[test]
    fn the_key_cache_holds_two_keys_a_gateway_and_evicts_the_oldest() {
        let mut cache = CekCache::for_gateways(10);
        let capacity = 2 * 10 + CEK_CACHE_ENTRIES;
        let key = |i: usize| Zeroizing::new([i as u8; CEK_LEN]);
        for i in 0..capacity {
            cache.put(i.to_be_bytes().to_vec(), key(i));
        }
        // Put again: still one entry.
        cache.put(0usize.to_be_bytes().to_vec(), key(0));
        assert_eq!(cache.keys.len(), capacity);
        assert_eq!(cache.order.len(), capacity);
        assert_eq!(cache.get(&0usize.to_be_bytes()), Some(&key(0)));
        // One more: the oldest goes.
        cache.put(capacity.to_be_bytes().to_vec(), key(capacity));
        assert_eq!(cache.keys.len(), capacity);
        assert!(cache.get(&0usize.to_be_bytes()).is_none());
        assert_eq!(cache.get(&1usize.to_be_bytes()), Some(&key(1)));
        assert_eq!(cache.get(&capacity.to_be_bytes()), Some(&key(capacity)));
    }
}
