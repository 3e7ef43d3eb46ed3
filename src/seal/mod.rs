//! Sealing and opening: the gateway signs every batch with its ES256 key and
//! encrypts the configured fields for the recipient's P-256 key; `open`
//! verifies, decrypts and drops duplicates.
//!
//! The sealed message is standard JOSE — a JWS (RFC 7515, flattened JSON
//! serialization) whose payload embeds a JWE (RFC 7516, ECDH-ES+A256KW with
//! A256GCM, RFC 7518) — so a consumer in any language can open it with a
//! stock JOSE library. `docs/FORMAT.md` is the contract.
//!
//! This module knows about key files and bytes, never sockets or the spool.

mod b64;
mod format;
mod jwe;
mod keys;
mod opener;
mod sealer;
mod tracker;

#[cfg(test)]
mod tests;

pub use format::{FORMAT_VERSION, FieldMap, JWS_ALG, JWS_TYP};
pub use jwe::{JWE_ALG, JWE_ENC};
pub use keys::{
    GatewayKey, KeyError, KeyOrigin, KeygenOutput, PublicKey, RecipientKey, keygen,
    load_public_key, load_public_key_from, load_recipient_key, load_recipient_key_from,
    load_signing_key, load_trusted_keys,
};
pub use opener::{
    MAX_GAP_LINES, MAX_MESSAGE_BYTES, MessageSink, OpenError, OpenSummary, OpenedMessage,
    OpenedRecord, Opener, OutputFormat, STATE_SAVE_INTERVAL, StreamOptions, open_stream,
    open_stream_with,
};
pub use sealer::{
    FixedRandomness, MAX_MESSAGES_PER_DATA_KEY, SealError, SealedMessage, Sealer, SealerOptions,
};
pub use tracker::{
    DIGEST_WINDOW, Digest, RangeVerdict, Seen, SeqSet, SequenceTracker, StateError, StreamKey,
};
