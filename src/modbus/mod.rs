//! Modbus RTU: reading meters and PLCs on an RS-485 bus (issue 22).
//!
//! A sensor with `framing = "modbus_rtu"` is a slave; the sensors that name
//! one device share its bus, polled by one task ([`poller`]). Without I/O:
//! which requests read a slave's values ([`plan`]), how registers become
//! values ([`value`]) and a poll's answers a record's fields ([`slave`]),
//! when each slave is polled, a failing one backing off ([`schedule`]).
//! [`bus`] sends the requests on the port, each bounded by a timeout.
//! docs/SERIAL.md ("Modbus RTU") is the operator's side; tests/modbus.rs
//! runs all of it against pymodbus.

pub mod bus;
pub mod plan;
pub mod poller;
pub mod schedule;
pub mod slave;
pub mod value;
