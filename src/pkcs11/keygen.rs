//! `sensorgate keygen --pkcs11 URI`: a P-256 key pair made inside the
//! token, whose private half is sensitive and never extractable.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};

use super::token::{P256_PARAMS, TokenError, TokenKey, find_key, sec1_point, with_rw_session};
use super::uri::KeyUri;

/// Makes the key pair the URI names (refusing one that exists, private or
/// public) and returns it as the gateway will use it.
pub fn generate(uri: &KeyUri) -> Result<TokenKey, TokenError> {
    with_rw_session(uri, |session| {
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            if find_key(session, uri, class)?.is_some() {
                return Err(TokenError::Exists {
                    uri: uri.to_string(),
                });
            }
        }
        let id = match &uri.id {
            Some(id) => id.clone(),
            // The id ties the two halves together; tools show it.
            None => rand::random::<[u8; 8]>().to_vec(),
        };
        let mut common = vec![Attribute::Token(true), Attribute::Id(id)];
        if let Some(label) = &uri.object {
            common.push(Attribute::Label(label.as_bytes().to_vec()));
        }
        let mut public = common.clone();
        public.extend([
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
        ]);
        let mut private = common;
        private.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
        ]);
        let (pub_handle, _) = session
            .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
            .map_err(|e| TokenError::Unavailable {
                uri: uri.to_string(),
                detail: format!("generating the key pair failed: {}", super::token::ck(&e)),
            })?;
        let point = session
            .get_attributes(pub_handle, &[AttributeType::EcPoint])
            .ok()
            .and_then(|a| match a.as_slice() {
                [Attribute::EcPoint(p)] => sec1_point(p),
                _ => None,
            });
        if point.is_none() {
            return Err(TokenError::NotP256 {
                uri: uri.to_string(),
                detail: "the new public key has no readable CKA_EC_POINT".into(),
            });
        }
        Ok(())
    })?;
    TokenKey::open(uri)
}
