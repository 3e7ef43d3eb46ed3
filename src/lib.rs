//! sensorgate: serial sensors to a cloud MQTT broker over mutual TLS,
//! sealed (signed and partly encrypted) and spooled until acknowledged.
//!
//! The stages, in the order data flows: [`serial`] → [`batch`] → [`seal`]
//! → [`spool`] → [`uplink`]; [`pipeline`] wires them.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod batch;
pub mod cli;
pub mod clock;
pub mod config;
pub mod consumer;
#[cfg(feature = "demo")]
pub mod demo;
pub mod health;
pub mod metrics;
pub mod modbus;
pub mod notify;
pub mod pipeline;
pub mod pkcs11;
pub mod record;
pub mod rfc3339;
pub mod seal;
pub mod secret_file;
pub mod serial;
pub mod sink;
pub mod spool;
pub mod telemetry;
pub mod uplink;
