//! Sealing and opening: the gateway signs every batch with its ES256 key and
//! encrypts the configured fields for the recipient's P-256 key; `open`
//! verifies, decrypts and drops duplicates.
//!
//! The sealed message is standard COSE (format version 2, the default) — a
//! COSE_Sign1 (RFC 9052, ES256) whose CBOR payload holds the batch by
//! column and embeds a COSE_Encrypt (ECDH-ES + A256KW, A256GCM, RFC 9053)
//! for the encrypted columns — or, with `[seal] format = 1`, standard JOSE
//! — a JWS whose JSON payload embeds a JWE. Either way a consumer in any
//! language opens it with a stock library. `docs/FORMAT.md` (version 2) and
//! `docs/FORMAT-v1.md` are the contracts; `open` reads both.
//!
//! This module knows about key files and bytes, never sockets or the spool.

mod b64;
mod cbor;
mod columns;
mod cose;
mod format;
mod jwe;
mod keys;
mod opener;
pub mod retime;
mod sealer;
mod tracker;
mod v2;

#[cfg(test)]
mod tests;

pub use cose::COSE_TYP;
pub use format::{FORMAT_VERSION, FieldMap, JWS_ALG, JWS_TYP};
pub use jwe::{JWE_ALG, JWE_ENC};
pub use keys::{
    GatewayKey, KeyError, KeyOrigin, KeygenOutput, PublicKey, RecipientKey, keygen, keygen_pkcs11,
    load_gateway_key, load_public_key, load_public_key_from, load_recipient_key,
    load_recipient_key_from, load_signing_key, load_trusted_keys,
};
pub use opener::{
    DeclaredGap, HOLD_UNSYNCED, MAX_GAP_LINES, MAX_MESSAGE_BYTES, MessageSink, OpenError,
    OpenSummary, OpenedMessage, OpenedRecord, Opener, OutputFormat, STATE_SAVE_INTERVAL,
    StreamOptions, open_stream, open_stream_with,
};
pub use retime::MessageClock;
pub use sealer::{
    FixedRandomness, MAX_MESSAGES_PER_DATA_KEY, SealError, SealedMessage, Sealer, SealerOptions,
    WireFormat,
};
pub use tracker::{
    DIGEST_WINDOW, Digest, RangeVerdict, Seen, SeqSet, SequenceTracker, StateError, StreamKey,
};
pub use v2::{BatchClock, FORMAT_VERSION_2, GapCause, GapNotice};
