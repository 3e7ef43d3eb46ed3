//! Modbus RTU: reading meters and PLCs on an RS-485 bus (issue 22).
//!
//! What is here so far has no I/O: which requests read a slave's
//! configured values ([`plan`]), and how registers become values
//! ([`value`]). The poller that drives a bus is built on them.

pub mod plan;
pub mod value;
