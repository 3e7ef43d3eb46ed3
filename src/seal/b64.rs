//! base64url without padding (RFC 7515 §2), strict: padding, other
//! alphabets and non-zero trailing bits are refused, so each byte string has
//! exactly one encoding and a changed character never decodes to the same
//! bytes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub(crate) fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Appends the encoding of `bytes` to `out` (no intermediate String).
pub(crate) fn encode_into(bytes: impl AsRef<[u8]>, out: &mut String) {
    URL_SAFE_NO_PAD.encode_string(bytes, out)
}

pub(crate) fn decode(text: impl AsRef<[u8]>) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_canonical() {
        assert_eq!(decode("QWxpY2U").unwrap(), b"Alice");
        assert!(decode("QWxpY2U=").is_err(), "padding refused");
        assert!(decode("QWxpY2V").is_err(), "non-zero trailing bits refused");
        assert!(decode("QWxp+2U").is_err(), "standard alphabet refused");
    }
}
