//! The configuration types, their defaults, and what they derive.
//!
//! The serde attributes here are the schema: the unknown-key check reads the
//! field lists from these derives (see [`super::unknown`]), and the example
//! `config/sensorgate.toml` documents the same defaults (a test compares).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::modbus::value::Kind;

use super::choice::{
    ClockCheck, ColumnType, Crc, Durability, Endian, FlowControl, Format, Framing, Fsync,
    LayoutType, LogFormat, Nested, Parity, RegisterTable, RegisterType, TimeFormat, WhenFull,
};
use super::secret::Secret;
use super::units::{
    KIB, MIB, Percent, de_duration, de_opt_duration, de_percent, de_size_u64, de_size_usize,
};

/// The whole, validated configuration of one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: Gateway,
    #[serde(default)]
    pub sensor: Vec<Sensor>,
    pub mqtt: Mqtt,
    #[serde(default)]
    pub batch: Batch,
    #[serde(default)]
    pub buffer: Buffer,
    pub seal: Seal,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub time: Time,
}

/// How the gateway knows whether its clock is right (a Pi has no
/// real-time clock: docs/OPERATIONS.md, "Time").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Time {
    pub synchronized_by: ClockCheck,
    /// The file a time daemon creates once it has synchronised the clock
    /// (systemd-timesyncd's by default).
    pub synchronized_flag: PathBuf,
}

impl Default for Time {
    fn default() -> Self {
        Time {
            synchronized_by: ClockCheck::default(),
            synchronized_flag: PathBuf::from("/run/systemd/timesync/synchronized"),
        }
    }
}

/// The optional Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// `address:port` to serve `GET /metrics` on, e.g. `127.0.0.1:9898`;
    /// unset (the default) serves nothing.
    pub listen: Option<String>,
}

impl Metrics {
    /// The parsed `listen` address (validation has checked it).
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.as_deref().and_then(|l| l.parse().ok())
    }
}

/// The gateway's identity and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// Part of every topic and every signed message, so it must be safe as one
    /// MQTT topic level.
    pub id: String,
    /// Spool segments and per-sensor sequence counters.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

/// One serial-attached device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sensor {
    pub name: String,
    /// Opened anew at every (re)open, so a `/dev/serial/by-id/...` symlink
    /// finds an adapter that came back as another `ttyUSBn`.
    pub device: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// 5, 6, 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default)]
    pub parity: Parity,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default)]
    pub flow_control: FlowControl,
    /// Puts the port in the kernel's RS-485 mode (TIOCSRS485): the driver
    /// raises RTS, wired to the transceiver's driver enable, while it
    /// sends. For a UART whose transceiver has no automatic direction
    /// control (the Pi's own UART with an RS-485 HAT); USB RS-485 adapters
    /// switch direction themselves.
    #[serde(default)]
    pub rs485: bool,
    /// rs485: how long RTS is raised before the first bit is sent.
    #[serde(default, deserialize_with = "de_duration")]
    pub rs485_delay_before: Duration,
    /// rs485: how long RTS stays raised after the last bit was sent.
    #[serde(default, deserialize_with = "de_duration")]
    pub rs485_delay_after: Duration,
    /// When true, a device that cannot be opened at start stops the gateway
    /// (exit 66 when missing, 77 when not permitted) instead of being
    /// retried in the background.
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default)]
    pub format: Format,
    /// Names (and optionally types) of the values: required for `csv`; for
    /// `json` and `kv` the declared columns must be present and have their
    /// type (other keys are kept, typed from their value); not used by
    /// `nmea` and `binary`.
    #[serde(default)]
    pub columns: Vec<Column>,
    /// Separates CSV values and kv pairs.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Bytes. A longer frame is rejected, never buffered (bounded memory).
    #[serde(default = "default_max_frame", deserialize_with = "de_size_usize")]
    pub max_frame: usize,
    /// json: what to do with nested objects and arrays.
    #[serde(default)]
    pub nested: Nested,
    /// cobs: the integrity trailer after each frame's payload.
    #[serde(default)]
    pub crc: Crc,
    /// binary and the CRC trailer: byte order.
    #[serde(default)]
    pub endian: Endian,
    /// binary: the fields of a frame, in order.
    #[serde(default)]
    pub layout: Vec<LayoutField>,
    /// A field of the frame that holds the reading's time; without it the
    /// record is stamped with the gateway's receive time.
    #[serde(default)]
    pub time_field: Option<String>,
    #[serde(default)]
    pub time_format: TimeFormat,
    /// modbus_rtu: the slave's unit id, 1 to 247.
    #[serde(default)]
    pub unit: Option<u32>,
    /// modbus_rtu: how often the slave is read; one record per poll.
    #[serde(default = "default_poll", deserialize_with = "de_duration")]
    pub poll: Duration,
    /// modbus_rtu: how long an answer may take; by default 100 ms plus the
    /// time the longest answer takes on the wire at `baud`.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    /// modbus_rtu: unread registers (or bits) between two values that one
    /// request reads through rather than splitting in two.
    #[serde(default)]
    pub max_gap: u16,
    /// modbus_rtu: the bus hears each request the gateway sends before the
    /// answer (a transceiver whose receiver stays on): drop that echo.
    #[serde(default)]
    pub local_echo: bool,
    /// modbus_rtu: the values read at each poll.
    #[serde(default)]
    pub registers: Vec<Register>,
}

impl Sensor {
    /// A sensor on `device` with every other key at its default, as a
    /// `[[sensor]]` table with only `name` and `device` loads (for benches
    /// and examples that build one in code).
    pub fn new(name: &str, device: impl Into<PathBuf>) -> Sensor {
        Sensor {
            name: name.to_string(),
            device: device.into(),
            baud: default_baud(),
            data_bits: default_data_bits(),
            parity: Parity::default(),
            stop_bits: default_stop_bits(),
            flow_control: FlowControl::default(),
            rs485: false,
            rs485_delay_before: Duration::ZERO,
            rs485_delay_after: Duration::ZERO,
            required: false,
            framing: Framing::default(),
            format: Format::default(),
            columns: Vec::new(),
            delimiter: default_delimiter(),
            max_frame: default_max_frame(),
            nested: Nested::default(),
            crc: Crc::default(),
            endian: Endian::default(),
            layout: Vec::new(),
            time_field: None,
            time_format: TimeFormat::default(),
            unit: None,
            poll: default_poll(),
            timeout: None,
            max_gap: 0,
            local_echo: false,
            registers: Vec::new(),
        }
    }
}

/// One value of a Modbus slave: `count` registers (or one bit) from
/// `address` in `table`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub name: String,
    #[serde(default)]
    pub table: RegisterTable,
    /// The protocol address, 0 to 65535 (data sheets often number from 1,
    /// with the table as a leading digit: holding register 40001 is
    /// address 0 of table "holding").
    pub address: u32,
    /// `u16` by default in the register tables, `bool` in the bit tables.
    #[serde(rename = "type", default)]
    pub ty: Option<RegisterType>,
    /// Byte and word order: `ABCD` (default), `CDAB`, `BADC`, `DCBA`; `AB`
    /// or `BA` for 16-bit values and text.
    #[serde(default)]
    pub order: Option<String>,
    /// `string`: how many registers (two characters each).
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
}

impl Register {
    /// How this register is read: its `type`, or the table's default.
    pub fn kind(&self) -> Kind {
        let bits = matches!(self.table, RegisterTable::Coil | RegisterTable::Discrete);
        match self.ty {
            None if bits => Kind::Bool,
            None => Kind::U16,
            Some(RegisterType::U16) => Kind::U16,
            Some(RegisterType::I16) => Kind::I16,
            Some(RegisterType::U32) => Kind::U32,
            Some(RegisterType::I32) => Kind::I32,
            Some(RegisterType::U64) => Kind::U64,
            Some(RegisterType::I64) => Kind::I64,
            Some(RegisterType::F32) => Kind::F32,
            Some(RegisterType::F64) => Kind::F64,
            Some(RegisterType::Bool) => Kind::Bool,
            Some(RegisterType::String) => Kind::Text {
                registers: self.count.unwrap_or(1).min(u32::from(u16::MAX)) as u16,
            },
        }
    }
}

// A NaN scale is refused by validation, so equality by value is total here.
impl Eq for Register {}

/// One named value of a text format, with its declared type. Written as a
/// plain name (`"speed"`, typed from its text) or as a table
/// (`{ name = "speed", type = "f64" }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

impl Column {
    pub fn auto(name: &str) -> Column {
        Column {
            name: name.to_string(),
            ty: ColumnType::Auto,
        }
    }
}

/// The table form of a [`Column`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnTable {
    pub name: String,
    #[serde(rename = "type", default)]
    pub ty: ColumnType,
}

impl<'de> Deserialize<'de> for Column {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Column;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a column name, or a table like { name = \"speed\", type = \"f64\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Column, E> {
                Ok(Column::auto(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Column, A::Error> {
                let t =
                    ColumnTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Column {
                    name: t.name,
                    ty: t.ty,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One field of a binary frame. Integers stay integers unless `scale` or
/// `offset` is set; then the value is `raw * scale + offset`, a float.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutField {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: LayoutType,
    #[serde(default)]
    pub scale: Option<f64>,
    #[serde(default)]
    pub offset: Option<f64>,
}

// Configuration values are compared in tests and on reload; a NaN scale is
// refused by validation, so equality by value is total here.
impl Eq for LayoutField {}

/// The uplink: where and how sealed messages are published.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Filled in with `gateway.id` by [`load`](super::load) when not set; see
    /// [`Mqtt::client_id`].
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default = "default_qos")]
    pub qos: u8,
    #[serde(default = "default_true")]
    pub tls: bool,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<super::KeyRef>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default = "default_keepalive", deserialize_with = "de_duration")]
    pub keepalive: Duration,
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_reconnect_min", deserialize_with = "de_duration")]
    pub reconnect_min: Duration,
    #[serde(default = "default_reconnect_max", deserialize_with = "de_duration")]
    pub reconnect_max: Duration,
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    #[serde(default = "default_drain_timeout", deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// MQTT clean session (3.1.1) / clean start: `false` asks the broker to
    /// keep the session (subscriptions, its own queued QoS 1 messages)
    /// across reconnects.
    #[serde(default = "default_true")]
    pub clean_session: bool,
    /// For brokers that want credentials on top of the client certificate.
    #[serde(default)]
    pub username: Option<String>,
    /// Needs `username`. Never printed: `check-config` shows `<redacted>`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS ALPN protocol names offered, in order of preference (AWS IoT Core
    /// on port 443 needs `x-amzn-mqtt-ca`); empty offers none.
    #[serde(default)]
    pub alpn: Vec<String>,
    /// The client certificate gets a warning (at start and daily) this many
    /// days before it expires.
    #[serde(default = "default_cert_warn_days")]
    pub cert_warn_days: u32,
    /// Bytes. The largest MQTT packet the broker accepts; a sealed batch that
    /// would be larger is split before publishing.
    #[serde(default = "default_max_packet", deserialize_with = "de_size_usize")]
    pub max_packet: usize,
    /// Where the retained `online`/`offline` status (and the last will) is
    /// published; `{gateway}` is replaced by `gateway.id`.
    #[serde(default = "default_status_topic")]
    pub status_topic: String,
    /// The MQTT protocol level: 4 (MQTT 3.1.1) or 5 (MQTT 5).
    #[serde(default = "default_protocol")]
    pub protocol: u8,
}

/// When a batch of records becomes one sealed message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batch {
    pub max_records: usize,
    #[serde(deserialize_with = "de_duration")]
    pub linger: Duration,
}

/// The spool's budgets and its policy when they are exhausted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Buffer {
    /// Bytes of sealed messages held in memory.
    #[serde(deserialize_with = "de_size_usize")]
    pub memory: usize,
    /// Bytes of disk spool (segments and index) under `state_dir/spool`.
    #[serde(deserialize_with = "de_size_u64")]
    pub disk: u64,
    pub when_full: WhenFull,
    pub durability: Durability,
    /// `memory_first`: a message not acknowledged this long after it was
    /// sealed is written to disk.
    #[serde(deserialize_with = "de_duration")]
    pub spill_after: Duration,
    pub fsync: Fsync,
    #[serde(deserialize_with = "de_duration")]
    pub fsync_interval: Duration,
    /// Free space the filesystem keeps: below it the spool counts as full.
    #[serde(deserialize_with = "de_percent")]
    pub min_free: Percent,
}

/// The keys that sign and encrypt. Only where they are: key material is
/// loaded (and permission-checked) by the `seal` module, never kept here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    /// A file, or a key in a PKCS#11 token.
    pub signing_key: super::KeyRef,
    pub recipient_key: PathBuf,
    /// Column names whose values are encrypted for the recipient.
    #[serde(default)]
    pub encrypt: Vec<String>,
    /// Messages one wrapped data key (CEK, epk, encrypted_key) is reused for
    /// before a new one is made (one ECDH each), 1 ..= 2^32.
    #[serde(default = "default_rotate_after_messages")]
    pub rotate_after_messages: u64,
    /// How long one data key is reused at most, 1s ..= 30d.
    #[serde(default = "default_rotate_after", deserialize_with = "de_duration")]
    pub rotate_after: Duration,
    /// The sealed message format version written: 2 (COSE, by column), or
    /// 1 (JOSE, by record) for consumers not yet moved to version 2.
    #[serde(default = "default_seal_format")]
    pub format: u64,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A tracing filter: a level, or directives like `info,sensorgate=debug`.
    pub level: String,
    pub format: LogFormat,
    #[serde(deserialize_with = "de_duration")]
    pub stats_interval: Duration,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_records: 100,
            linger: Duration::from_millis(200),
        }
    }
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer {
            memory: 8 * MIB as usize,
            disk: 256 * MIB,
            when_full: WhenFull::default(),
            durability: Durability::default(),
            spill_after: Duration::from_secs(2),
            fsync: Fsync::default(),
            fsync_interval: Duration::from_secs(1),
            min_free: Percent::from_basis_points(500),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_string(),
            format: LogFormat::default(),
            stats_interval: Duration::from_secs(60),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/sensorgate")
}
fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
pub(super) fn default_delimiter() -> char {
    ','
}
fn default_poll() -> Duration {
    Duration::from_secs(1)
}
fn default_max_frame() -> usize {
    KIB as usize
}
fn default_port() -> u16 {
    8883
}
fn default_topic() -> String {
    "sensorgate/{gateway}/{sensor}".to_string()
}
fn default_qos() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_seal_format() -> u64 {
    2
}
fn default_rotate_after_messages() -> u64 {
    1000
}
fn default_rotate_after() -> Duration {
    Duration::from_secs(3600)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
fn default_max_inflight() -> u16 {
    32
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_cert_warn_days() -> u32 {
    30
}
fn default_max_packet() -> usize {
    128 * KIB as usize
}
fn default_status_topic() -> String {
    "sensorgate/{gateway}/status".to_string()
}
fn default_protocol() -> u8 {
    4
}

impl Config {
    /// The MQTT topic of one sensor's sealed messages: `mqtt.topic` with
    /// `{gateway}` and `{sensor}` replaced. Replacement is a single pass, so a
    /// name that itself contains `{sensor}` is not expanded again.
    pub fn topic_for(&self, sensor: &str) -> String {
        expand_topic(&self.mqtt.topic, &self.gateway.id, sensor)
    }

    /// The gateway's status topic (retained `online`/`offline`, and the last
    /// will): `mqtt.status_topic` with `{gateway}` replaced.
    pub fn status_topic(&self) -> String {
        expand_topic(&self.mqtt.status_topic, &self.gateway.id, "")
    }
}

impl Mqtt {
    /// The MQTT client identifier: `client_id`, or else the gateway's id.
    /// ([`load`](super::load) already fills `client_id` in; this also serves
    /// a `Mqtt` built by hand, as in tests.)
    pub fn client_id<'a>(&'a self, gateway: &'a Gateway) -> &'a str {
        self.client_id.as_deref().unwrap_or(&gateway.id)
    }

    /// The name the broker's certificate must carry: `server_name`, or else
    /// `host`.
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.host)
    }
}

fn expand_topic(template: &str, gateway: &str, sensor: &str) -> String {
    let mut out = String::with_capacity(template.len() + gateway.len() + sensor.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{gateway}") {
            out.push_str(gateway);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{sensor}") {
            out.push_str(sensor);
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn a_sensor_built_in_code_has_the_defaults_a_table_loads_with() {
        let loaded = Dir::new(MINIMAL).load().unwrap().sensor.remove(0);
        let mut built = Sensor::new("s1", "/dev/ttyUSB0");
        built.columns = loaded.columns.clone();
        assert_eq!(built, loaded);
    }

    use super::super::test_support::{Dir, MINIMAL, example, problem_at};
    use super::super::{
        Crc, Durability, Endian, FlowControl, Format, Framing, LogFormat, Nested, Parity,
        TimeFormat, WhenFull, load_with_env,
    };
    use super::*;

    #[test]
    fn the_example_states_every_default() {
        // The example documents the defaults: a file with only the required
        // keys must load to the same values where the example does not set
        // something else on purpose.
        let ex = load_with_env(&example(), &[]).unwrap();
        let d = Dir::new(MINIMAL);
        let min = d.load().unwrap();
        assert_eq!(min.gateway.state_dir, ex.gateway.state_dir);
        assert_eq!(min.sensor[0].baud, ex.sensor[0].baud);
        assert_eq!(min.sensor[0].framing, ex.sensor[0].framing);
        assert_eq!(min.sensor[0].format, ex.sensor[0].format);
        assert_eq!(min.sensor[0].delimiter, ex.sensor[0].delimiter);
        assert_eq!(min.sensor[0].max_frame, ex.sensor[0].max_frame);
        let (mut a, b) = (min.sensor[0].clone(), &ex.sensor[0]);
        a.name = b.name.clone();
        a.device = b.device.clone();
        a.columns = b.columns.clone();
        assert_eq!(&a, b);
        let (mut a, b) = (min.mqtt.clone(), &ex.mqtt);
        a.host = b.host.clone();
        a.tls = b.tls;
        a.client_id = b.client_id.clone();
        a.ca_file = b.ca_file.clone();
        a.cert_file = b.cert_file.clone();
        a.key_file = b.key_file.clone();
        assert_eq!(&a, b);
        assert_eq!(min.batch, ex.batch);
        assert_eq!(min.buffer, ex.buffer);
        assert_eq!(min.log, ex.log);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let cfg = Dir::new(MINIMAL).load().unwrap();
        assert_eq!(cfg.gateway.state_dir, Path::new("/var/lib/sensorgate"));
        let s = &cfg.sensor[0];
        assert_eq!(
            (s.baud, s.framing, s.format, s.delimiter, s.max_frame),
            (9600, Framing::Lines, Format::Csv, ',', 1024)
        );
        assert_eq!(
            (
                s.data_bits,
                s.parity,
                s.stop_bits,
                s.flow_control,
                s.required
            ),
            (8, Parity::None, 1, FlowControl::None, false)
        );
        assert_eq!(
            (s.nested, s.crc, s.endian, s.layout.len()),
            (Nested::Flatten, Crc::None, Endian::Little, 0)
        );
        assert_eq!((&s.time_field, s.time_format), (&None, TimeFormat::Rfc3339));
        let m = &cfg.mqtt;
        assert_eq!(m.port, 8883);
        assert_eq!(m.client_id.as_deref(), Some("gw1"));
        assert_eq!(m.topic, "sensorgate/{gateway}/{sensor}");
        assert_eq!(m.qos, 1);
        assert_eq!(m.keepalive, Duration::from_secs(30));
        assert_eq!(m.connect_timeout, Duration::from_secs(10));
        assert_eq!(m.reconnect_min, Duration::from_millis(500));
        assert_eq!(m.reconnect_max, Duration::from_secs(30));
        assert_eq!(m.max_inflight, 32);
        assert_eq!(m.drain_timeout, Duration::from_secs(10));
        assert!(m.clean_session);
        assert_eq!((&m.username, &m.password), (&None, &None));
        assert!(m.alpn.is_empty());
        assert_eq!(m.cert_warn_days, 30);
        assert_eq!(m.max_packet, 128 * 1024);
        assert_eq!(m.status_topic, "sensorgate/{gateway}/status");
        assert_eq!(cfg.status_topic(), "sensorgate/gw1/status");
        assert_eq!(m.protocol, 4);
        assert_eq!(
            cfg.batch,
            Batch {
                max_records: 100,
                linger: Duration::from_millis(200)
            }
        );
        assert_eq!(
            cfg.buffer,
            Buffer {
                fsync: Fsync::Interval,
                fsync_interval: Duration::from_secs(1),
                min_free: Percent::from_basis_points(500),
                memory: 8 << 20,
                disk: 256 << 20,
                when_full: WhenFull::DropOldest,
                durability: Durability::MemoryFirst,
                spill_after: Duration::from_secs(2),
            }
        );
        assert_eq!(
            cfg.log,
            Log {
                level: "info".into(),
                format: LogFormat::Auto,
                stats_interval: Duration::from_secs(60)
            }
        );
        assert!(cfg.seal.encrypt.is_empty());
        // tls defaults to true
        let d = Dir::new(&MINIMAL.replace("tls = false\n", ""));
        let e = d.load().unwrap_err();
        problem_at(&e, "mqtt.ca_file");
    }

    #[test]
    fn topics_expand_gateway_and_sensor_once() {
        let mut cfg = Dir::new(MINIMAL).load().unwrap();
        assert_eq!(cfg.topic_for("s1"), "sensorgate/gw1/s1");
        cfg.mqtt.topic = "a/{sensor}/{gateway}/{other}/{sensor}".into();
        assert_eq!(
            cfg.topic_for("{gateway}"),
            "a/{gateway}/gw1/{other}/{gateway}"
        );
        assert_eq!(expand_topic("{", "g", "s"), "{");
        assert_eq!(expand_topic("x{sensor", "g", "s"), "x{sensor");
        cfg.mqtt.status_topic = "{gateway}/{gateway}/up".into();
        assert_eq!(cfg.status_topic(), "gw1/gw1/up");
    }

    #[test]
    fn mqtt_names_fall_back_to_gateway_and_host() {
        let cfg = Dir::new(MINIMAL).load().unwrap();
        let mut m = cfg.mqtt.clone();
        m.client_id = None;
        assert_eq!(m.client_id(&cfg.gateway), "gw1");
        assert_eq!(m.server_name(), "localhost");
        m.server_name = Some("b.example".into());
        assert_eq!(m.server_name(), "b.example");
    }
}
