//! Keys that stay in a token (issue 23): PKCS#11 URIs, and the signing
//! key behind one.

pub mod keygen;
pub mod token;
pub mod uri;

pub use token::{TokenError, TokenKey};
pub use uri::{KeyUri, PinSource, UriError};
