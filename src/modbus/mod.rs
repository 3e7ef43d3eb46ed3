//! Modbus RTU: reading meters and PLCs on an RS-485 bus (issue 22).
//!
//! What is here so far: which requests read a slave's configured values
//! ([`plan`]), how registers become values ([`value`]) and a slave's
//! answers a record's fields ([`slave`]), when each slave on a bus is
//! polled, a failing one backing off ([`schedule`]), all without I/O; and
//! one bus's requests over its serial port, each bounded by a timeout
//! ([`bus`], tested against pymodbus in tests/modbus.rs). The
//! configuration and the poller that drives a bus from it come next.

pub mod bus;
pub mod plan;
pub mod schedule;
pub mod slave;
pub mod value;
