//! Where `open --mqtt` puts what it opened, beside stdout: PostgreSQL.

#[cfg(feature = "postgres")]
pub mod postgres;
