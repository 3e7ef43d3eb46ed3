//! The typed configuration and its loading.
//!
//! The configuration is read with the `config` crate from the `--config` file,
//! then every `*.toml` in the `conf.d/` folder beside it (in name order), then
//! the environment variables `SENSORGATE__SECTION__KEY`. Later sources
//! override earlier ones key by key; a list is replaced as a whole.
//!
//! The operator's question after a mistake is always "where?", so every
//! problem names the file (or the environment variable) that set the
//! offending value and the key as a dotted path (`sensor[1].baud`).
//!
//! After parsing, [`Config`] is checked as a whole (ranges, cross-references
//! such as `seal.encrypt` naming real columns) and every problem found is
//! reported at once, so an operator fixes a file in one pass.
//!
//! The parts, in the order [`load`] uses them:
//! - `load`: the sources (main file, `conf.d/`, environment) and their merge;
//! - `unknown`: keys the schema does not know, with "did you mean" hints;
//! - `schema`, `choice`, `units`, `secret`: the types and how values are
//!   written;
//! - `origin`: which file or variable set a key, for every problem;
//! - `validate`: the semantic checks;
//! - `error`: the error type and its exit codes;
//! - `display`: the effective configuration as TOML (`check-config`).

use std::path::Path;

mod choice;
mod display;
mod error;
mod keyref;
mod load;
mod origin;
mod schema;
mod secret;
mod units;
mod unknown;
mod validate;

#[cfg(test)]
mod test_support;

pub use choice::{
    ClockCheck, ColumnType, Crc, Durability, Endian, FlowControl, Format, Framing, Fsync,
    LayoutType, LogFormat, Nested, Parity, RegisterTable, RegisterType, TimeFormat, WhenFull,
};
pub use error::{ConfigError, Problem};
pub use keyref::KeyRef;
pub use schema::{
    Batch, Buffer, Column, ColumnTable, Config, Gateway, LayoutField, Log, Metrics, Mqtt, Register,
    Seal, Sensor, Time,
};
pub use secret::Secret;
pub(crate) use units::de_duration;
pub use units::{Percent, format_size, parse_percent, parse_size};

/// The field names `format = "nmea"` gives records (GGA, RMC and VTG
/// sentences), so that `seal.encrypt` can be checked against them.
pub const NMEA_FIELDS: &[&str] = &[
    "sentence",
    "talker",
    "time",
    "lat",
    "lon",
    "fix_quality",
    "satellites",
    "hdop",
    "altitude_m",
    "geoid_separation_m",
    "valid",
    "speed_knots",
    "course_deg",
    "date",
    "utc",
    "magnetic_variation_deg",
    "mode",
    "course_true_deg",
    "course_magnetic_deg",
    "speed_kmh",
];

/// Environment variables that configure sensorgate start with this.
pub const ENV_PREFIX: &str = "SENSORGATE__";

/// The rates the Linux termios interface names (`B50` ... `B4000000`). A
/// device set to anything else would need a custom divisor, which USB serial
/// adapters handle inconsistently; a typo such as 11520 is far more likely.
pub const STANDARD_BAUD_RATES: &[u32] = &[
    50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600,
    115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000,
    3000000, 3500000, 4000000,
];

/// Loads and validates the configuration from `path`, its `conf.d/` folder
/// and the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_env(path, &load::process_env()?)
}

/// Like [`load`], with the environment given explicitly (variables without
/// the `SENSORGATE__` prefix are ignored), so tests don't depend on the
/// process environment.
pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let merged = load::merge(path, env)?;
    let ctx = origin::Context {
        tree: &merged.tree,
        main: path,
        files: &merged.files,
    };

    let unknown = ctx.unknown_keys();
    if !unknown.is_empty() {
        return Err(ConfigError::Invalid(unknown));
    }

    let mut cfg: Config = merged
        .tree
        .clone()
        .try_deserialize()
        .map_err(|e| ConfigError::Invalid(vec![ctx.problem_from_de(e)]))?;

    if cfg.mqtt.client_id.is_none() {
        cfg.mqtt.client_id = Some(cfg.gateway.id.clone());
    }
    ctx.resolve_paths(&mut cfg);

    let problems = ctx.validate(&cfg);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_support::example;
    use super::*;

    #[test]
    fn the_example_configuration_loads() {
        let cfg = load_with_env(&example(), &[]).unwrap();
        assert_eq!(cfg.gateway.id, "bike-pi-01");
        assert_eq!(cfg.sensor.len(), 5);
        assert_eq!(cfg.sensor[0].columns.len(), 6);
        assert_eq!(
            cfg.sensor[1].columns[1],
            Column {
                name: "humidity".into(),
                ty: ColumnType::F64
            }
        );
        assert_eq!(
            (cfg.sensor[2].framing, cfg.sensor[2].format),
            (Framing::Nmea, Format::Nmea)
        );
        let soil = &cfg.sensor[3];
        assert_eq!(
            (soil.framing, soil.format, soil.crc),
            (Framing::Cobs, Format::Binary, Crc::Crc16)
        );
        assert_eq!(
            soil.layout[1],
            LayoutField {
                name: "temp".into(),
                ty: LayoutType::I16,
                scale: Some(0.01),
                offset: None
            }
        );
        let meter = &cfg.sensor[4];
        assert_eq!(
            (meter.framing, meter.unit, meter.poll, meter.max_gap),
            (Framing::ModbusRtu, Some(1), Duration::from_secs(1), 0)
        );
        assert_eq!(
            (
                meter.registers[1].address,
                meter.registers[1].ty,
                meter.registers[1].scale
            ),
            (10, Some(RegisterType::U32), Some(0.01))
        );
        assert_eq!(cfg.sensor[0].max_frame, 1024);
        assert_eq!(cfg.sensor[1].max_frame, 256);
        assert_eq!(cfg.sensor[1].delimiter, ';');
        assert_eq!(cfg.sensor[1].baud, 115200);
        assert_eq!(cfg.mqtt.client_id.as_deref(), Some("bike-pi-01"));
        assert_eq!(cfg.mqtt.reconnect_min, Duration::from_millis(500));
        assert_eq!(cfg.buffer.memory, 8 << 20);
        assert_eq!(cfg.buffer.disk, 256 << 20);
        assert_eq!(cfg.seal.encrypt, ["heart_rate", "incline", "resistance"]);
        assert_eq!(cfg.topic_for("bike"), "sensorgate/bike-pi-01/bike");
    }
}
