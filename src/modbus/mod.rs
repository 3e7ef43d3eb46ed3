//! Modbus RTU: reading meters and PLCs on an RS-485 bus (issue 22).
//!
//! What is here so far has no I/O: which requests read a slave's
//! configured values ([`plan`]), how registers become values ([`value`]),
//! and when each slave on a bus is polled, a failing one backing off
//! ([`schedule`]). The poller that drives a bus is built on them.

pub mod plan;
pub mod schedule;
pub mod value;
