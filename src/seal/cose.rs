//! The COSE envelopes of format version 2 (`docs/FORMAT.md`): a
//! COSE_Sign1 (RFC 9052 §4.2, ES256) around the batch, and a COSE_Encrypt
//! (§5.1, A256GCM with one ECDH-ES + A256KW recipient, RFC 9053 §6.4)
//! around its encrypted columns.
//!
//! Sealing writes these fixed structures directly (their headers are the
//! same for every message); opening parses and checks them with `coset`,
//! so the two sides are built independently and the tests hold them
//! together.

use coset::{CoseEncrypt, CoseSign1, Label, TaggedCborSerializable, iana, iana::EnumI64};
use hkdf::Hkdf;
use zeroize::Zeroizing;

use super::cbor;
use super::jwe::{CEK_LEN, DataKey, IV_LEN, TAG_LEN, WRAPPED_CEK_LEN};
use super::keys::{GatewayKey, Nonces};
use super::opener::OpenError;
use super::sealer::SealError;

/// The COSE `typ` (RFC 9596) of a sealed message.
pub const COSE_TYP: &str = "application/sensorgate+cbor";
/// The `typ` header parameter's label.
const LABEL_TYP: i64 = 16;
/// COSE_Sign1's CBOR tag.
pub(crate) const TAG_SIGN1: u64 = 18;
const TAG_ENCRYPT: u64 = 96;

/// The protected header of the content layer: `{1: 3}` (A256GCM).
const ENC_PROTECTED: [u8; 3] = [0xa1, 0x01, 0x03];
/// The recipient's protected header: `{1: -31}` (ECDH-ES + A256KW).
const RECIPIENT_PROTECTED: [u8; 4] = [0xa1, 0x01, 0x38, 0x1e];
/// The COSE_KDF_Context for the recipient's KEK (RFC 9053 §5.3):
/// `[-5, [null, null, null], [null, null, null], [256, h'a101381e']]`.
const KDF_CONTEXT: [u8; 19] = [
    0x84, 0x24, 0x83, 0xf6, 0xf6, 0xf6, 0x83, 0xf6, 0xf6, 0xf6, 0x82, 0x19, 0x01, 0x00, 0x44, 0xa1,
    0x01, 0x38, 0x1e,
];

/// The KEK for ECDH-ES + A256KW from the shared secret Z: HKDF-SHA-256, no
/// salt, the KDF context as info.
pub(crate) fn derive_kek(z: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut kek = Zeroizing::new([0u8; 32]);
    Hkdf::<sha2::Sha256>::new(None, z)
        .expand(&KDF_CONTEXT, kek.as_mut())
        .expect("32 bytes is a valid HKDF-SHA-256 length");
    kek
}

/// The external AAD of the content layer: `[gateway, sensor, epoch, first,
/// last]`, deterministic CBOR.
pub(crate) fn external_aad(
    gateway: &str,
    sensor: &str,
    epoch: &str,
    first: u64,
    last: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(gateway.len() + sensor.len() + epoch.len() + 24);
    cbor::array(&mut out, 5);
    cbor::text(&mut out, gateway);
    cbor::text(&mut out, sensor);
    cbor::text(&mut out, epoch);
    cbor::uint(&mut out, first);
    cbor::uint(&mut out, last);
    out
}

/// `Enc_structure` = `["Encrypt", h'a10103', external_aad]`.
fn enc_structure(external_aad: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + external_aad.len());
    cbor::array(&mut aad, 3);
    cbor::text(&mut aad, "Encrypt");
    cbor::bytes(&mut aad, &ENC_PROTECTED);
    cbor::bytes(&mut aad, external_aad);
    aad
}

/// The protected header of every sealed message from one gateway key:
/// `{1: -7, 4: kid, 16: typ}`.
pub(crate) fn sign1_protected(kid: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    cbor::map(&mut out, 3);
    cbor::uint(&mut out, 1);
    cbor::int(&mut out, iana::Algorithm::ES256.to_i64());
    cbor::uint(&mut out, 4);
    cbor::bytes(&mut out, kid);
    cbor::uint(&mut out, LABEL_TYP as u64);
    cbor::text(&mut out, COSE_TYP);
    out
}

/// Signs `payload` into a tagged COSE_Sign1: the signature covers
/// `["Signature1", protected, h'', payload]`.
pub(crate) fn sign1(
    key: &GatewayKey,
    nonces: Nonces,
    protected: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, crate::pkcs11::TokenError> {
    let mut to_sign = Vec::with_capacity(protected.len() + payload.len() + 32);
    cbor::array(&mut to_sign, 4);
    cbor::text(&mut to_sign, "Signature1");
    cbor::bytes(&mut to_sign, protected);
    cbor::bytes(&mut to_sign, b"");
    cbor::bytes(&mut to_sign, payload);
    let signature = key.sign(&to_sign, nonces)?;

    let mut out = Vec::with_capacity(protected.len() + payload.len() + 96);
    cbor::tag(&mut out, TAG_SIGN1);
    cbor::array(&mut out, 4);
    cbor::bytes(&mut out, protected);
    cbor::map(&mut out, 0);
    cbor::bytes(&mut out, payload);
    cbor::bytes(&mut out, &signature);
    Ok(out)
}

/// Encrypts `plaintext` (in place; afterwards it holds ciphertext) under
/// the data key's CEK and its next IV, and returns the tagged COSE_Encrypt.
pub(crate) fn encrypt(
    key: &mut DataKey,
    recipient_kid: &[u8; 32],
    external_aad: &[u8],
    plaintext: &mut [u8],
) -> Result<Vec<u8>, SealError> {
    let (iv, tag) = key.encrypt(&enc_structure(external_aad), plaintext)?;

    let mut out = Vec::with_capacity(plaintext.len() + 240);
    cbor::tag(&mut out, TAG_ENCRYPT);
    cbor::array(&mut out, 4);
    cbor::bytes(&mut out, &ENC_PROTECTED);
    cbor::map(&mut out, 1);
    cbor::uint(&mut out, iana::HeaderParameter::Iv.to_i64() as u64);
    cbor::bytes(&mut out, &iv);
    cbor::bytes_head(&mut out, plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    out.extend_from_slice(&tag);
    // One recipient: [protected, {-1: ephemeral key, 4: kid}, wrapped CEK].
    cbor::array(&mut out, 1);
    cbor::array(&mut out, 3);
    cbor::bytes(&mut out, &RECIPIENT_PROTECTED);
    cbor::map(&mut out, 2);
    cbor::int(&mut out, -1);
    cbor::map(&mut out, 4);
    cbor::uint(&mut out, 1); // kty
    cbor::uint(&mut out, 2); //   EC2
    cbor::int(&mut out, -1); // crv
    cbor::uint(&mut out, 1); //   P-256
    cbor::int(&mut out, -2); // x
    cbor::bytes(&mut out, &key.epk_x);
    cbor::int(&mut out, -3); // y
    cbor::bytes(&mut out, &key.epk_y);
    cbor::uint(&mut out, 4);
    cbor::bytes(&mut out, recipient_kid);
    cbor::bytes(&mut out, &key.wrapped);
    Ok(out)
}

// ---------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------

/// A COSE_Sign1 whose envelope passed the checks: its kid, the bytes it
/// signs, its signature and its payload.
pub(crate) struct Signed {
    pub kid: [u8; 32],
    pub sign1: CoseSign1,
}

fn bad_header(part: &'static str, detail: impl Into<String>) -> OpenError {
    OpenError::BadHeader {
        part,
        detail: detail.into(),
    }
}

/// Parses the message as a tagged COSE_Sign1 and checks its headers: ES256,
/// the sealed-message `typ`, a 32-byte kid, nothing else.
pub(crate) fn parse_sign1(message: &[u8]) -> Result<Signed, OpenError> {
    let sign1 =
        CoseSign1::from_tagged_slice(message).map_err(|e| OpenError::NotCose(e.to_string()))?;
    let h = &sign1.protected.header;
    let alg = match &h.alg {
        Some(coset::Algorithm::Assigned(iana::Algorithm::ES256)) => None,
        Some(other) => Some(format!("{other:?}")),
        None => Some("missing".to_string()),
    };
    if let Some(found) = alg {
        return Err(OpenError::WrongAlgorithm {
            part: "COSE_Sign1",
            param: "alg",
            found,
            expected: "ES256 (-7)",
        });
    }
    let typ_ok = matches!(
        h.rest.as_slice(),
        [(Label::Int(LABEL_TYP), ciborium::Value::Text(t))] if t == COSE_TYP
    );
    if !typ_ok {
        return Err(OpenError::WrongAlgorithm {
            part: "COSE_Sign1",
            param: "typ (16), alone among the other parameters",
            found: format!("{:?}", h.rest),
            expected: COSE_TYP,
        });
    }
    if !only(h, &["alg", "kid"]) {
        return Err(bad_header(
            "COSE_Sign1",
            "only alg, kid and typ are allowed",
        ));
    }
    if !sign1.unprotected.is_empty() {
        return Err(bad_header(
            "COSE_Sign1",
            "the unprotected header must be empty",
        ));
    }
    let kid = kid_of("COSE_Sign1", h)?;
    if sign1.payload.is_none() {
        return Err(OpenError::BadPayload(
            "the payload is detached (nil)".to_string(),
        ));
    }
    Ok(Signed { kid, sign1 })
}

/// Whether `h` holds none of the header parameters of RFC 9052 §3.1 but
/// those `allowed` (`rest`, the other labels, is checked by the caller).
fn only(h: &coset::Header, allowed: &[&str]) -> bool {
    [
        ("alg", h.alg.is_some()),
        ("crit", !h.crit.is_empty()),
        ("content type", h.content_type.is_some()),
        ("kid", !h.key_id.is_empty()),
        ("iv", !h.iv.is_empty()),
        ("partial iv", !h.partial_iv.is_empty()),
        ("counter signature", !h.counter_signatures.is_empty()),
    ]
    .into_iter()
    .all(|(name, present)| !present || allowed.contains(&name))
}

/// A header's kid: the 32 bytes of an RFC 7638 thumbprint.
fn kid_of(part: &'static str, h: &coset::Header) -> Result<[u8; 32], OpenError> {
    h.key_id
        .as_slice()
        .try_into()
        .map_err(|_| bad_header(part, format!("kid is {} bytes, not 32", h.key_id.len())))
}

/// A COSE_Encrypt whose envelope passed the checks.
pub(crate) struct Encrypted {
    iv: [u8; IV_LEN],
    /// The ephemeral key as a SEC1 uncompressed point.
    epk: [u8; 65],
    wrapped: [u8; WRAPPED_CEK_LEN],
    encrypt: CoseEncrypt,
}

/// Parses `enc` and checks it is exactly the structure FORMAT.md gives,
/// for the recipient `ours` (kid bytes; `None` without a recipient key).
pub(crate) fn parse_encrypt(enc: &[u8], ours: Option<&[u8; 32]>) -> Result<Encrypted, OpenError> {
    const PART: &str = "COSE_Encrypt";
    let encrypt = CoseEncrypt::from_tagged_slice(enc)
        .map_err(|e| bad_header(PART, format!("not a tagged COSE_Encrypt: {e}")))?;
    let p = &encrypt.protected;
    if p.original_data.as_deref() != Some(&ENC_PROTECTED[..]) {
        return Err(OpenError::WrongAlgorithm {
            part: PART,
            param: "protected header",
            found: format!("{:?}", p.header),
            expected: "{1: 3} (A256GCM alone)",
        });
    }
    let u = &encrypt.unprotected;
    if !only(u, &["iv"]) || !u.rest.is_empty() {
        return Err(bad_header(
            PART,
            "the unprotected header must hold the iv alone",
        ));
    }
    let iv: [u8; IV_LEN] =
        u.iv.as_slice()
            .try_into()
            .map_err(|_| bad_header(PART, format!("iv is {} bytes, not 12", u.iv.len())))?;
    if encrypt
        .ciphertext
        .as_ref()
        .is_none_or(|c| c.len() < TAG_LEN)
    {
        return Err(OpenError::Decryption {
            reason: "the ciphertext is missing or shorter than its tag".to_string(),
        });
    }
    let [recipient] = encrypt.recipients.as_slice() else {
        return Err(bad_header(
            PART,
            format!(
                "{} recipients, expected exactly 1",
                encrypt.recipients.len()
            ),
        ));
    };
    if recipient.protected.original_data.as_deref() != Some(&RECIPIENT_PROTECTED[..]) {
        return Err(OpenError::WrongAlgorithm {
            part: "COSE recipient",
            param: "protected header",
            found: format!("{:?}", recipient.protected.header),
            expected: "{1: -31} (ECDH-ES + A256KW alone)",
        });
    }
    if !recipient.recipients.is_empty() {
        return Err(bad_header(
            "COSE recipient",
            "nested recipients are not allowed",
        ));
    }
    let ru = &recipient.unprotected;
    let ephemeral = match ru.rest.as_slice() {
        [(Label::Int(-1), value)] => value,
        _ => {
            return Err(bad_header(
                "COSE recipient",
                "the unprotected header must hold the ephemeral key (-1) and kid alone",
            ));
        }
    };
    if !only(ru, &["kid"]) {
        return Err(bad_header(
            "COSE recipient",
            "the unprotected header must hold the ephemeral key (-1) and kid alone",
        ));
    }
    let sealed_for = kid_of("COSE recipient", ru)?;
    let Some(ours) = ours else {
        return Err(OpenError::MissingRecipientKey {
            kid: super::b64::encode(sealed_for),
        });
    };
    if &sealed_for != ours {
        return Err(OpenError::WrongRecipient {
            sealed_for: super::b64::encode(sealed_for),
            ours: super::b64::encode(ours),
        });
    }
    let epk = ephemeral_key(ephemeral)?;
    let wrapped: [u8; WRAPPED_CEK_LEN] = recipient
        .ciphertext
        .as_deref()
        .and_then(|c| c.try_into().ok())
        .ok_or_else(|| OpenError::Decryption {
            reason: "the wrapped content key is not 40 bytes".to_string(),
        })?;
    Ok(Encrypted {
        iv,
        epk,
        wrapped,
        encrypt,
    })
}

/// The COSE_Key `{1: 2, -1: 1, -2: x, -3: y}` (EC2, P-256) as a SEC1 point.
fn ephemeral_key(value: &ciborium::Value) -> Result<[u8; 65], OpenError> {
    let bad = || {
        bad_header(
            "COSE recipient",
            "the ephemeral key is not {1: 2, -1: 1, -2: x, -3: y} with 32-byte x and y",
        )
    };
    let entries = value.as_map().ok_or_else(bad)?;
    if entries.len() != 4 {
        return Err(bad());
    }
    let get = |label: i64| {
        let mut found = entries
            .iter()
            .filter(|(k, _)| k.as_integer().and_then(|i| i64::try_from(i).ok()) == Some(label));
        match (found.next(), found.next()) {
            (Some((_, v)), None) => Some(v),
            _ => None,
        }
    };
    let int_is = |label, want: i64| {
        get(label)
            .and_then(ciborium::Value::as_integer)
            .and_then(|i| i64::try_from(i).ok())
            == Some(want)
    };
    if !int_is(1, 2) || !int_is(-1, 1) {
        return Err(bad());
    }
    let coord = |label| {
        get(label)
            .and_then(ciborium::Value::as_bytes)
            .filter(|b| b.len() == 32)
            .ok_or_else(bad)
    };
    let mut sec1 = [0u8; 65];
    sec1[0] = 4;
    sec1[1..33].copy_from_slice(coord(-2)?);
    sec1[33..].copy_from_slice(coord(-3)?);
    Ok(sec1)
}

impl Encrypted {
    /// The key under which unwrapped CEKs are cached: ephemeral key and
    /// wrapped key (a change in either is another entry).
    pub(crate) fn cache_id(&self) -> Vec<u8> {
        [&self.epk[1..], &self.wrapped[..]].concat()
    }

    /// ECDH with the ephemeral key, HKDF, AES key unwrap.
    pub(crate) fn unwrap_cek(
        &self,
        recipient: &p256::SecretKey,
    ) -> Result<Zeroizing<[u8; CEK_LEN]>, OpenError> {
        use aes_gcm::KeyInit;
        use aes_kw::KwAes256;
        // from_sec1_bytes checks the point is on the curve.
        let epk = p256::PublicKey::from_sec1_bytes(&self.epk).map_err(|_| {
            bad_header(
                "COSE recipient",
                "the ephemeral key is not a point on P-256",
            )
        })?;
        let shared = p256::ecdh::diffie_hellman(recipient.to_nonzero_scalar(), epk.as_affine());
        let kek = derive_kek(shared.raw_secret_bytes());
        drop(shared);
        let mut cek = Zeroizing::new([0u8; CEK_LEN]);
        KwAes256::new_from_slice(kek.as_ref())
            .expect("32-byte KEK")
            .unwrap_key(&self.wrapped, cek.as_mut())
            .map_err(|_| OpenError::Decryption {
                reason:
                    "the content key does not unwrap (wrong recipient key or altered wrapped key)"
                        .to_string(),
            })?;
        Ok(cek)
    }

    /// Decrypts with `cek`; the AAD binds the ciphertext to `external_aad`.
    pub(crate) fn decrypt(
        &self,
        cek: &[u8; CEK_LEN],
        external_aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        use aes_gcm::aead::AeadInOut;
        use aes_gcm::{Aes256Gcm, KeyInit};
        let failed = || {
            OpenError::Decryption {
            reason: "AES-GCM authentication failed (ciphertext, iv, headers altered, or the encrypted columns of another message)"
                .to_string(),
        }
        };
        let plaintext = self
            .encrypt
            .decrypt_ciphertext(external_aad, failed, |ct, aad| {
                let (body, tag) = ct.split_at(ct.len() - TAG_LEN);
                let mut buffer = Zeroizing::new(body.to_vec());
                let tag: [u8; TAG_LEN] = tag.try_into().expect("split at the tag");
                Aes256Gcm::new_from_slice(cek)
                    .expect("32-byte CEK")
                    .decrypt_inout_detached(
                        &self.iv.into(),
                        aad,
                        buffer.as_mut_slice().into(),
                        &tag.into(),
                    )
                    .map_err(|_| failed())?;
                Ok(std::mem::take(&mut *buffer))
            })?;
        Ok(Zeroizing::new(plaintext))
    }
}

/// Verifies the COSE_Sign1's ES256 signature with `key`.
pub(crate) fn verify(signed: &Signed, key: &super::keys::VerifyKey) -> Result<(), &'static str> {
    signed
        .sign1
        .verify_signature(b"", |signature, tbs| key.verify(tbs, signature))
}

/// Whether `bytes` parses as a CBOR item with nothing after it; for tests
/// and for telling a message's encoding.
#[cfg(test)]
pub(crate) fn is_one_item(bytes: &[u8]) -> bool {
    ciborium::from_reader::<ciborium::Value, _>(bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use coset::CborSerializable;

    #[test]
    fn the_kdf_context_is_what_coset_builds() {
        let context = coset::CoseKdfContextBuilder::new()
            .algorithm(iana::Algorithm::A256KW)
            .supp_pub_info(coset::SuppPubInfo {
                key_data_length: 256,
                protected: coset::ProtectedHeader {
                    original_data: None,
                    header: coset::HeaderBuilder::new()
                        .algorithm(iana::Algorithm::ECDH_ES_A256KW)
                        .build(),
                },
                other: None,
            })
            .build()
            .to_vec()
            .unwrap();
        assert_eq!(context, KDF_CONTEXT);
    }

    #[test]
    fn the_protected_headers_are_what_coset_builds() {
        let enc = coset::HeaderBuilder::new()
            .algorithm(iana::Algorithm::A256GCM)
            .build();
        assert_eq!(
            coset::ProtectedHeader {
                original_data: None,
                header: enc
            }
            .cbor_bstr()
            .unwrap(),
            ciborium::Value::Bytes(ENC_PROTECTED.to_vec())
        );
        let kid = [7u8; 32];
        let sign = coset::HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .key_id(kid.to_vec())
            .value(LABEL_TYP, ciborium::Value::Text(COSE_TYP.into()))
            .build();
        assert_eq!(
            coset::ProtectedHeader {
                original_data: None,
                header: sign
            }
            .cbor_bstr()
            .unwrap(),
            ciborium::Value::Bytes(sign1_protected(&kid))
        );
    }

    #[test]
    fn the_external_aad_matches_format_md() {
        let aad = external_aad("bike-pi-01", "bike", "e1764100000", 41, 42);
        let hex: String = aad.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "856a62696b652d70692d30316462696b656b65313736343130303030301829182a"
        );
        assert!(is_one_item(&aad));
    }
}
