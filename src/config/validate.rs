//! The semantic checks of a parsed [`Config`]: ranges, uniqueness, and
//! cross-references such as `seal.encrypt` naming real columns. Every
//! problem found is reported at once, each attributed to the file or
//! variable that set the value, so an operator fixes a file in one pass.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use super::error::Problem;
use super::origin::Context;
use super::units::{KIB, MIB, format_size};
use super::unknown::closest;
use super::{
    Config, Crc, Endian, FlowControl, Format, Framing, LayoutType, NMEA_FIELDS, Nested,
    STANDARD_BAUD_RATES, Sensor,
};

impl Context<'_> {
    /// The semantic checks; every problem found, in a stable order.
    pub fn validate(&self, cfg: &Config) -> Vec<Problem> {
        let mut found = Found {
            ctx: self,
            problems: Vec::new(),
        };
        found.gateway(cfg);
        found.sensors(cfg);
        found.mqtt(cfg);
        found.batch_and_buffer(cfg);
        found.seal(cfg);
        found.log(cfg);
        found.metrics(cfg);
        found.time(cfg);
        found.problems
    }
}

/// The problems found so far, each attributed to the file or variable that
/// set its value.
struct Found<'c> {
    ctx: &'c Context<'c>,
    problems: Vec<Problem>,
}

impl Found<'_> {
    fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let problem = self.ctx.problem(key, message);
        self.problems.push(problem);
    }

    fn gateway(&mut self, cfg: &Config) {
        if let Some(m) = topic_level_problem(&cfg.gateway.id) {
            self.fail("gateway.id", m);
        }
        if cfg.gateway.state_dir.as_os_str().is_empty() {
            self.fail("gateway.state_dir", "must not be empty");
        }
    }

    fn sensors(&mut self, cfg: &Config) {
        if cfg.sensor.is_empty() {
            self.fail("sensor", "at least one [[sensor]] table is required");
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut devices: HashMap<&Path, usize> = HashMap::new();
        for (i, s) in cfg.sensor.iter().enumerate() {
            let k = |f: &str| format!("sensor[{i}].{f}");
            if let Some(m) = topic_level_problem(&s.name) {
                self.fail(k("name"), m);
            } else if let Some(j) = names.insert(&s.name, i) {
                self.fail(
                    k("name"),
                    format!(
                        "\"{}\" is already the name of sensor[{j}]; names must be unique",
                        s.name
                    ),
                );
            }
            if s.device.as_os_str().is_empty() {
                self.fail(k("device"), "must not be empty");
            } else if let Some(&j) = devices.get(s.device.as_path()) {
                self.shared_device(i, s, j, &cfg.sensor[j]);
            } else {
                devices.insert(&s.device, i);
            }
            if !STANDARD_BAUD_RATES.contains(&s.baud) {
                self.fail(
                    k("baud"),
                    format!(
                        "{} is not a standard rate; use one of {}",
                        s.baud,
                        STANDARD_BAUD_RATES
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            if !(5..=8).contains(&s.data_bits) {
                self.fail(
                    k("data_bits"),
                    format!("{} is not 5, 6, 7 or 8", s.data_bits),
                );
            }
            if !(1..=2).contains(&s.stop_bits) {
                self.fail(k("stop_bits"), format!("{} is not 1 or 2", s.stop_bits));
            }
            self.rs485(i, s);
            if s.framing == Framing::ModbusRtu {
                self.sensor_modbus(i, s);
            } else {
                self.sensor_format(i, s);
                self.not_modbus(i, s);
            }
            if s.delimiter == '\n' || s.delimiter == '\r' {
                self.fail(
                    k("delimiter"),
                    "must not be a line break: lines framing already cuts frames there",
                );
            }
            if !(16..=MIB as usize).contains(&s.max_frame) {
                self.fail(
                    k("max_frame"),
                    format!(
                        "{} is out of range; use 16B to 1MiB",
                        format_size(s.max_frame as u64)
                    ),
                );
            }
        }
    }

    fn mqtt(&mut self, cfg: &Config) {
        let m = &cfg.mqtt;
        if m.host.trim().is_empty() {
            self.fail("mqtt.host", "must not be empty");
        }
        if m.port == 0 {
            self.fail(
                "mqtt.port",
                "0 is not a usable port; the TLS default is 8883",
            );
        }
        if m.client_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.chars().any(char::is_control))
        {
            self.fail(
                "mqtt.client_id",
                "must be non-empty and free of control characters",
            );
        }
        if let Some(msg) = topic_template_problem(&m.topic) {
            self.fail("mqtt.topic", msg);
        }
        if m.qos != 1 {
            self.fail(
                "mqtt.qos",
                format!(
                    "{} is not supported; only 1 (at least once) is: the spool keeps a sealed message until the broker acknowledges it",
                    m.qos
                ),
            );
        }
        if m.tls {
            for (key, v) in [
                ("mqtt.ca_file", m.ca_file.is_some()),
                ("mqtt.cert_file", m.cert_file.is_some()),
                ("mqtt.key_file", m.key_file.is_some()),
            ] {
                if !v {
                    self.problems.push(Problem {
                        source: self.ctx.origin_any(&[key, "mqtt.tls", "mqtt.host"]),
                        key: key.to_string(),
                        message: "is required when mqtt.tls = true (mutual TLS needs the CA, the client certificate and its key)".to_string(),
                    });
                }
            }
            let name = m.server_name();
            if rustls::pki_types::ServerName::try_from(name).is_err() {
                let key = if m.server_name.is_some() {
                    "mqtt.server_name"
                } else {
                    "mqtt.host"
                };
                self.fail(
                    key,
                    format!(
                        "\"{name}\" is neither a DNS name nor an IP address, so the broker's certificate cannot be checked against it"
                    ),
                );
            }
        }
        if m.keepalive < Duration::from_secs(1)
            || m.keepalive > Duration::from_secs(u16::MAX.into())
        {
            self.fail(
                "mqtt.keepalive",
                format!(
                    "{} is out of range; use 1s to 65535s (the MQTT keep-alive is whole seconds)",
                    humantime::format_duration(m.keepalive)
                ),
            );
        } else if m.keepalive.subsec_nanos() != 0 {
            self.fail(
                "mqtt.keepalive",
                format!(
                    "{} is not whole seconds, which MQTT keep-alive requires",
                    humantime::format_duration(m.keepalive)
                ),
            );
        }
        if m.connect_timeout.is_zero() {
            self.fail("mqtt.connect_timeout", "must be more than 0s");
        }
        if m.reconnect_min.is_zero() {
            self.fail(
                "mqtt.reconnect_min",
                "must be more than 0s, or a broker outage turns into a reconnect storm",
            );
        }
        if m.reconnect_min > m.reconnect_max {
            self.fail(
                "mqtt.reconnect_min",
                format!(
                    "{} is more than mqtt.reconnect_max ({}); the backoff grows from min to max",
                    humantime::format_duration(m.reconnect_min),
                    humantime::format_duration(m.reconnect_max)
                ),
            );
        }
        if !(1..=1000).contains(&m.max_inflight) {
            self.fail(
                "mqtt.max_inflight",
                format!("{} is out of range; use 1 to 1000", m.max_inflight),
            );
        }
        self.mqtt_session(cfg);
    }

    /// The session keys added for the big brokers: credentials, ALPN,
    /// packet size, status topic, protocol level.
    fn mqtt_session(&mut self, cfg: &Config) {
        let m = &cfg.mqtt;
        if let Some(user) = &m.username {
            if user.is_empty() || user.chars().any(char::is_control) {
                self.fail(
                    "mqtt.username",
                    "must be non-empty and free of control characters; remove the key for no username",
                );
            } else if user.len() > MQTT_STRING_MAX {
                self.fail(
                    "mqtt.username",
                    format!(
                        "is {} bytes long; MQTT allows at most {MQTT_STRING_MAX}",
                        user.len()
                    ),
                );
            }
        }
        if let Some(password) = &m.password {
            // The messages never quote the value: it is a secret.
            if m.username.is_none() {
                self.fail(
                    "mqtt.password",
                    "is set but mqtt.username is not; MQTT 3.1.1 sends a password only with a username, so set both or neither",
                );
            }
            if password.expose().len() > MQTT_STRING_MAX {
                self.fail(
                    "mqtt.password",
                    format!("is too long; MQTT allows at most {MQTT_STRING_MAX} bytes"),
                );
            }
        }
        for (i, name) in m.alpn.iter().enumerate() {
            let key = format!("mqtt.alpn[{i}]");
            if name.is_empty() {
                self.fail(
                    key,
                    "an ALPN protocol name must not be empty; remove it, or the whole list to offer none",
                );
            } else if name.len() > 255 {
                self.fail(
                    key,
                    format!(
                        "is {} bytes long; an ALPN protocol name is at most 255 bytes",
                        name.len()
                    ),
                );
            } else if m.alpn[..i].contains(name) {
                self.fail(key, format!("\"{name}\" is listed twice"));
            }
        }
        if m.cert_warn_days > 3650 {
            self.fail(
                "mqtt.cert_warn_days",
                format!(
                    "{} is out of range; use 0 (no warning) to 3650 days",
                    m.cert_warn_days
                ),
            );
        }
        if !(4 * KIB as usize..=256 * MIB as usize).contains(&m.max_packet) {
            self.fail(
                "mqtt.max_packet",
                format!(
                    "{} is out of range; use 4KiB (a sealed message of even one record carries ~1.5 KB of signature and key wrapping) to 256MiB (the MQTT limit); AWS IoT Core accepts 128KiB",
                    format_size(m.max_packet as u64)
                ),
            );
        }
        if let Some(msg) = status_topic_problem(&m.status_topic) {
            self.fail("mqtt.status_topic", msg);
        } else if topic_template_problem(&m.topic).is_none() {
            let status = cfg.status_topic();
            for (i, s) in cfg.sensor.iter().enumerate() {
                if cfg.topic_for(&s.name) == status {
                    self.fail(
                        "mqtt.status_topic",
                        format!(
                            "\"{status}\" is also the topic of sensor[{i}] (\"{}\"); rename the sensor or change mqtt.status_topic",
                            s.name
                        ),
                    );
                }
            }
        }
        if !matches!(m.protocol, 4 | 5) {
            self.fail(
                "mqtt.protocol",
                format!(
                    "{} is not an MQTT protocol level this gateway speaks; use 4 (MQTT 3.1.1) or 5 (MQTT 5)",
                    m.protocol
                ),
            );
        }
    }

    fn batch_and_buffer(&mut self, cfg: &Config) {
        if !(1..=10_000).contains(&cfg.batch.max_records) {
            self.fail(
                "batch.max_records",
                format!("{} is out of range; use 1 to 10000", cfg.batch.max_records),
            );
        }
        if cfg.buffer.disk < MIB {
            self.fail(
                "buffer.disk",
                format!(
                    "{} is too small; use at least 1MiB (the spool keeps several segments)",
                    format_size(cfg.buffer.disk)
                ),
            );
        }
        if cfg.buffer.fsync_interval < Duration::from_millis(10)
            || cfg.buffer.fsync_interval > Duration::from_secs(3600)
        {
            self.fail(
                "buffer.fsync_interval",
                "is out of range; use 10ms to 1h".to_string(),
            );
        }
        if cfg.buffer.spill_after < Duration::from_millis(100)
            || cfg.buffer.spill_after > Duration::from_secs(3600)
        {
            self.fail(
                "buffer.spill_after",
                "is out of range; use 100ms to 1h".to_string(),
            );
        }
        if cfg.buffer.min_free.fraction() > 0.5 {
            self.fail(
                "buffer.min_free",
                format!("{} is too much; use 0% to 50%", cfg.buffer.min_free),
            );
        }
        if (cfg.buffer.memory as u64) < 64 * KIB {
            self.fail(
                "buffer.memory",
                format!(
                    "{} is too small; use at least 64KiB",
                    format_size(cfg.buffer.memory as u64)
                ),
            );
        }
    }

    /// The keys that depend on `framing` and `format`: which are required,
    /// which make no sense together.
    fn sensor_format(&mut self, i: usize, s: &Sensor) {
        let k = |f: &str| format!("sensor[{i}].{f}");
        let format = s.format;
        match format {
            Format::Csv if s.columns.is_empty() => self.fail(
                k("columns"),
                "must name at least one column, in the order the device sends them",
            ),
            Format::Nmea | Format::Binary if !s.columns.is_empty() => self.fail(
                k("columns"),
                format!(
                    "is not used with format = \"{format}\" ({}); remove it",
                    if format == Format::Nmea {
                        "NMEA sentences have fixed field names"
                    } else {
                        "the fields are named by layout"
                    }
                ),
            ),
            _ => {}
        }
        let mut seen = HashSet::new();
        for (c, col) in s.columns.iter().enumerate() {
            let key = format!("sensor[{i}].columns[{c}]");
            let col = &col.name;
            if col.trim().is_empty() {
                self.fail(key, "a column name must not be empty");
            } else if col.chars().any(char::is_control) {
                self.fail(key, "a column name must not contain control characters");
            } else if !seen.insert(col.as_str()) {
                self.fail(
                    key,
                    format!("column \"{col}\" appears twice; column names must be unique"),
                );
            }
        }
        match (format, s.layout.is_empty()) {
            (Format::Binary, true) => self.fail(
                k("layout"),
                "must list the fields of a frame in order, e.g. [{ name = \"temp\", type = \"i16\", scale = 0.01 }]",
            ),
            (Format::Binary, false) => {}
            (_, false) => self.fail(
                k("layout"),
                format!("is only used with format = \"binary\", not \"{format}\"; remove it"),
            ),
            (_, true) => {}
        }
        let mut seen = HashSet::new();
        for (f, field) in s.layout.iter().enumerate() {
            let key = |x: &str| format!("sensor[{i}].layout[{f}].{x}");
            self.unique_name(key("name"), &field.name, &mut seen, "field");
            self.linear(&key, field.scale, field.offset);
            if field.ty == LayoutType::Bool && (field.scale.is_some() || field.offset.is_some()) {
                self.fail(key("type"), "a bool field takes no scale or offset");
            }
        }
        if format == Format::Binary && !s.layout.is_empty() {
            // COBS adds one byte per 254 and the leading code byte.
            let payload: usize = s.layout.iter().map(|f| f.ty.size()).sum::<usize>() + s.crc.size();
            let encoded = payload + payload / 254 + 1;
            if encoded > s.max_frame {
                self.fail(
                    k("max_frame"),
                    format!(
                        "{} is smaller than a frame of this layout ({encoded} bytes COBS-encoded); raise it",
                        format_size(s.max_frame as u64)
                    ),
                );
            }
        }
        let framing = s.framing;
        match (framing, format) {
            (Framing::Nmea, Format::Nmea) | (Framing::Cobs, Format::Binary) => {}
            (Framing::Nmea, _) => self.fail(
                k("format"),
                format!(
                    "\"{format}\" cannot read framing = \"nmea\", which carries NMEA sentences; use format = \"nmea\""
                ),
            ),
            (_, Format::Binary) => self.fail(
                k("framing"),
                format!(
                    "\"{framing}\" cannot carry format = \"binary\" (a 0x0A byte in a value would cut the frame); use framing = \"cobs\""
                ),
            ),
            _ => {}
        }
        if s.crc != Crc::None && framing != Framing::Cobs {
            self.fail(
                k("crc"),
                format!("is only used with framing = \"cobs\", not \"{framing}\"; remove it"),
            );
        }
        if s.nested != Nested::Flatten && format != Format::Json {
            self.fail(
                k("nested"),
                format!("is only used with format = \"json\", not \"{format}\"; remove it"),
            );
        }
        let bad_delimiter = match format {
            Format::Csv => s.delimiter == '"',
            Format::Kv => s.delimiter == '=' || s.delimiter == '"',
            _ => false,
        };
        if bad_delimiter {
            self.fail(
                k("delimiter"),
                format!("'{}' cannot separate {format} values", s.delimiter),
            );
        }
        if let Some(field) = &s.time_field {
            let known: Vec<&str> = match format {
                Format::Csv => s.columns.iter().map(|c| c.name.as_str()).collect(),
                Format::Binary => s.layout.iter().map(|f| f.name.as_str()).collect(),
                _ => Vec::new(),
            };
            if format == Format::Nmea {
                self.fail(
                    k("time_field"),
                    "is not used with format = \"nmea\": only RMC sentences carry a date; their `utc` field keeps the device's time, the record gets the receive time",
                );
            } else if !known.is_empty() && !known.contains(&field.as_str()) {
                self.fail(
                    k("time_field"),
                    format!("\"{field}\" is not one of the fields: {}", known.join(", ")),
                );
            } else if field.trim().is_empty() {
                self.fail(k("time_field"), "must not be empty");
            }
        }
    }

    /// Sensor `i` names the device of sensor `j` (the first to name it):
    /// only Modbus slaves share a device, on a bus whose port settings
    /// agree, each with its own unit id.
    fn shared_device(&mut self, i: usize, s: &Sensor, j: usize, first: &Sensor) {
        let k = |f: &str| format!("sensor[{i}].{f}");
        let device = s.device.display();
        if s.framing != Framing::ModbusRtu || first.framing != Framing::ModbusRtu {
            self.fail(
                k("device"),
                format!(
                    "{device} is already the device of sensor[{j}]; only framing = \"modbus_rtu\" sensors (slaves on one bus) share a device"
                ),
            );
            return;
        }
        let port = |s: &Sensor| {
            (
                s.baud,
                s.data_bits,
                s.parity,
                s.stop_bits,
                s.flow_control,
                s.rs485,
                s.rs485_delay_before,
                s.rs485_delay_after,
                s.local_echo,
            )
        };
        if port(s) != port(first) {
            let ms = |d: Duration| d.as_millis();
            self.fail(
                k("device"),
                format!(
                    "{device} is also the bus of sensor[{j}] (\"{}\"), whose port settings differ: baud {} / {}, data_bits {} / {}, parity {} / {}, stop_bits {} / {}, flow_control {} / {}, rs485 {} / {} (delays {}+{} / {}+{} ms), local_echo {} / {}; the slaves of one bus share its settings",
                    first.name, s.baud, first.baud, s.data_bits, first.data_bits, s.parity,
                    first.parity, s.stop_bits, first.stop_bits, s.flow_control, first.flow_control,
                    s.rs485, first.rs485, ms(s.rs485_delay_before), ms(s.rs485_delay_after),
                    ms(first.rs485_delay_before), ms(first.rs485_delay_after), s.local_echo,
                    first.local_echo
                ),
            );
        }
        if s.unit.is_some() && s.unit == first.unit {
            self.fail(
                k("unit"),
                format!(
                    "{} is also the unit of sensor[{j}] (\"{}\") on {device}; each slave on a bus has its own unit id",
                    s.unit.unwrap_or_default(),
                    first.name
                ),
            );
        }
    }

    /// The RS-485 keys: delays the kernel can hold, only with `rs485`, and
    /// RTS not claimed by hardware flow control as well.
    fn rs485(&mut self, i: usize, s: &Sensor) {
        let k = |f: &str| format!("sensor[{i}].{f}");
        for (key, delay) in [
            ("rs485_delay_before", s.rs485_delay_before),
            ("rs485_delay_after", s.rs485_delay_after),
        ] {
            if delay.is_zero() {
                continue;
            }
            if !s.rs485 {
                self.fail(k(key), "is only used with rs485 = true; remove it");
            } else if delay > RS485_MAX_DELAY || delay.subsec_nanos() % 1_000_000 != 0 {
                self.fail(
                    k(key),
                    format!(
                        "{} is not a delay the kernel can hold: use whole milliseconds, 0ms to 100ms",
                        humantime::format_duration(delay)
                    ),
                );
            }
        }
        if s.rs485 && s.flow_control == FlowControl::Hardware {
            self.fail(
                k("rs485"),
                "RS-485 mode drives RTS for the transmit direction, so it cannot be used with flow_control = \"hardware\" (RTS/CTS); set flow_control = \"none\"",
            );
        }
    }

    /// The keys of a Modbus slave.
    fn sensor_modbus(&mut self, i: usize, s: &Sensor) {
        let k = |f: &str| format!("sensor[{i}].{f}");
        match s.unit {
            None => self.fail(k("unit"), "is required with framing = \"modbus_rtu\": the slave's unit id, 1 to 247"),
            Some(u) if !(1..=247).contains(&u) => self.fail(
                k("unit"),
                format!("{u} is not a slave's unit id: use 1 to 247 (0 is broadcast, which no slave answers)"),
            ),
            Some(_) => {}
        }
        if s.poll < Duration::from_millis(10) || s.poll > Duration::from_secs(24 * 3600) {
            self.fail(
                k("poll"),
                format!(
                    "{} is out of range; use 10ms to 24h",
                    humantime::format_duration(s.poll)
                ),
            );
        }
        if let Some(t) = s.timeout {
            if t < Duration::from_millis(10) || t > Duration::from_secs(10) {
                self.fail(
                    k("timeout"),
                    format!(
                        "{} is out of range; use 10ms to 10s",
                        humantime::format_duration(t)
                    ),
                );
            }
        }
        if s.registers.is_empty() {
            self.fail(
                k("registers"),
                "must list the values to read, e.g. [{ name = \"voltage\", table = \"input\", address = 0, type = \"f32\" }]",
            );
        }
        for (key, set) in [
            ("columns", !s.columns.is_empty()),
            ("layout", !s.layout.is_empty()),
            ("time_field", s.time_field.is_some()),
            ("format", s.format != Format::default()),
            ("nested", s.nested != Nested::default()),
            ("crc", s.crc != Crc::default()),
            ("endian", s.endian != Endian::default()),
            (
                "delimiter",
                s.delimiter != super::schema::default_delimiter(),
            ),
        ] {
            if set {
                self.fail(k(key), "is not used with framing = \"modbus_rtu\" (the values are `registers`); remove it");
            }
        }
        let mut names = HashSet::new();
        for (r, reg) in s.registers.iter().enumerate() {
            let key = |x: &str| format!("sensor[{i}].registers[{r}].{x}");
            self.unique_name(key("name"), &reg.name, &mut names, "register");
            self.register(&key, reg);
        }
    }

    /// One register of a Modbus slave.
    fn register(&mut self, key: &dyn Fn(&str) -> String, reg: &super::Register) {
        use super::{RegisterTable, RegisterType};
        use crate::modbus::plan::Table;
        let bits = matches!(reg.table, RegisterTable::Coil | RegisterTable::Discrete);
        if bits && reg.ty.is_some_and(|t| t != RegisterType::Bool) {
            self.fail(
                key("type"),
                format!(
                    "a {} is one bit: its type is bool (or leave type out)",
                    reg.table
                ),
            );
            return;
        }
        let string = reg.ty == Some(RegisterType::String);
        match (string, reg.count) {
            (true, None) => {
                self.fail(
                    key("count"),
                    "is required for type = \"string\": how many registers (two characters each)",
                );
                return;
            }
            (true, Some(c)) if !(1..=125).contains(&c) => {
                self.fail(
                    key("count"),
                    format!("{c} registers cannot be read in one request; use 1 to 125"),
                );
                return;
            }
            (false, Some(_)) => {
                self.fail(
                    key("count"),
                    "is only used with type = \"string\"; remove it",
                );
            }
            _ => {}
        }
        let kind = reg.kind();
        if let Some(order) = &reg.order {
            if let Err(takes) = crate::modbus::value::Order::parse(order, kind) {
                let ty = reg.ty.unwrap_or_default();
                self.fail(key("order"), format!("\"{order}\": a {ty} {takes}"));
            }
        }
        self.linear(key, reg.scale, reg.offset);
        if (bits || matches!(reg.ty, Some(RegisterType::Bool | RegisterType::String)))
            && (reg.scale.is_some() || reg.offset.is_some())
        {
            self.fail(
                key("scale"),
                "a bool or string value takes no scale or offset",
            );
        }
        let Ok(address) = u16::try_from(reg.address) else {
            self.fail(
                key("address"),
                format!(
                    "{} is not a protocol address (0 to 65535); data sheets that number registers 40001, 30001... mean address 0 of table \"holding\", \"input\"...",
                    reg.address
                ),
            );
            return;
        };
        // Only the span's kind of table matters here: bits or registers.
        let span = crate::modbus::plan::Span {
            table: if bits { Table::Coil } else { Table::Holding },
            address,
            len: if bits { 1 } else { kind.registers() },
        };
        if let Err(e) = crate::modbus::plan::check(&span) {
            self.fail(
                key("address"),
                format!("{address}: a {} value here {e}", reg.ty.unwrap_or_default()),
            );
        }
    }

    /// The name of a binary field or a Modbus register (`what`): not empty,
    /// no control characters, not one of `seen`.
    fn unique_name<'a>(
        &mut self,
        key: String,
        name: &'a str,
        seen: &mut HashSet<&'a str>,
        what: &str,
    ) {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            self.fail(key, "must be a non-empty name without control characters");
        } else if !seen.insert(name) {
            self.fail(
                key,
                format!("\"{name}\" appears twice; {what} names must be unique"),
            );
        }
    }

    /// A value's `scale` and `offset` (binary fields, Modbus registers).
    fn linear(&mut self, key: &dyn Fn(&str) -> String, scale: Option<f64>, offset: Option<f64>) {
        if let Some(scale) = scale {
            if !scale.is_finite() || scale == 0.0 {
                self.fail(
                    key("scale"),
                    format!("{scale} must be a finite, non-zero number"),
                );
            }
        }
        if let Some(offset) = offset {
            if !offset.is_finite() {
                self.fail(key("offset"), format!("{offset} must be a finite number"));
            }
        }
    }

    /// Keys that only a Modbus slave takes.
    fn not_modbus(&mut self, i: usize, s: &Sensor) {
        for (key, set) in [
            ("unit", s.unit.is_some()),
            ("registers", !s.registers.is_empty()),
            ("timeout", s.timeout.is_some()),
            ("local_echo", s.local_echo),
        ] {
            if set {
                self.fail(
                    format!("sensor[{i}].{key}"),
                    format!(
                        "is only used with framing = \"modbus_rtu\", not \"{}\"; remove it",
                        s.framing
                    ),
                );
            }
        }
    }

    fn metrics(&mut self, cfg: &Config) {
        if let Some(listen) = &cfg.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                self.fail(
                    "metrics.listen",
                    format!(
                        "\"{listen}\" is not an address:port such as \"127.0.0.1:9898\" (an IP address, not a host name)"
                    ),
                );
            }
        }
    }

    fn seal(&mut self, cfg: &Config) {
        let all_columns: HashSet<&str> = cfg
            .sensor
            .iter()
            .flat_map(|s| {
                let columns = s.columns.iter().map(|c| c.name.as_str());
                let nmea = match s.format {
                    Format::Nmea => NMEA_FIELDS,
                    _ => &[],
                };
                let layout = s.layout.iter().map(|f| f.name.as_str());
                let registers = s.registers.iter().map(|r| r.name.as_str());
                columns
                    .chain(layout)
                    .chain(registers)
                    .chain(nmea.iter().copied())
            })
            .collect();
        // json and kv records also carry keys the configuration does not
        // list, so there a name may be right without appearing here.
        let open_schema = cfg
            .sensor
            .iter()
            .any(|s| matches!(s.format, Format::Json | Format::Kv));
        for (i, name) in cfg.seal.encrypt.iter().enumerate() {
            if !open_schema && !all_columns.contains(name.as_str()) {
                let mut known: Vec<&str> = all_columns.iter().copied().collect();
                known.sort();
                let hint = closest(name, &known)
                    .map(|c| format!("did you mean \"{c}\"? "))
                    .unwrap_or_default();
                self.fail(
                    format!("seal.encrypt[{i}]"),
                    format!(
                        "\"{name}\" is not a column of any sensor, so nothing would be encrypted under that name; {hint}the columns are: {}",
                        known.join(", ")
                    ),
                );
            }
        }
        if !(1..=2).contains(&cfg.seal.format) {
            self.fail(
                "seal.format",
                format!(
                    "{} is out of range: it is not a sealed message format; use 2 (COSE, the default: docs/FORMAT.md) or 1 (JOSE, for consumers that read only version 1: docs/FORMAT-v1.md)",
                    cfg.seal.format
                ),
            );
        }
        if !(1..=1u64 << 32).contains(&cfg.seal.rotate_after_messages) {
            self.fail(
                "seal.rotate_after_messages",
                format!(
                    "{} is out of range; use 1 (a new data key, one ECDH, per message) to 4294967296 (2^32, the AES-GCM limit per key)",
                    cfg.seal.rotate_after_messages
                ),
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(30 * 86_400))
            .contains(&cfg.seal.rotate_after)
        {
            self.fail(
                "seal.rotate_after",
                format!(
                    "{} is out of range; use 1s to 30d",
                    humantime::format_duration(cfg.seal.rotate_after)
                ),
            );
        }
        for (key, path) in [
            ("seal.signing_key", cfg.seal.signing_key.path()),
            ("seal.recipient_key", Some(cfg.seal.recipient_key.as_path())),
        ] {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                self.fail(key, "must not be empty");
            }
        }
    }

    fn log(&mut self, cfg: &Config) {
        if let Some(msg) = log_level_problem(&cfg.log.level) {
            self.fail("log.level", msg);
        }
        // Zero turns the periodic stats lines off.
        let interval = cfg.log.stats_interval;
        if !interval.is_zero() && interval < Duration::from_secs(1) {
            self.fail(
                "log.stats_interval",
                format!(
                    "{} is too short; use 1s or more (or 0s for no stats lines)",
                    humantime::format_duration(cfg.log.stats_interval)
                ),
            );
        }
    }

    fn time(&mut self, cfg: &Config) {
        let flag = &cfg.time.synchronized_flag;
        if flag.is_relative() {
            self.fail(
                "time.synchronized_flag",
                format!(
                    "{} is not an absolute path (systemd-timesyncd's is /run/systemd/timesync/synchronized)",
                    flag.display()
                ),
            );
        }
    }
}

/// Why `s` cannot be one level of an MQTT topic, if it cannot.
fn topic_level_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        Some("must not be empty".to_string())
    } else if s.contains(['+', '#']) {
        Some(format!(
            "\"{s}\" contains an MQTT wildcard ('+' or '#'), which cannot be published to"
        ))
    } else if s.contains('/') {
        Some(format!(
            "\"{s}\" contains '/', which would split it into two topic levels"
        ))
    } else if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some(format!(
            "\"{}\" contains whitespace or control characters",
            s.escape_default()
        ))
    } else {
        None
    }
}

/// The longest RTS delay the kernel keeps (`RS485_MAX_RTS_DELAY`, ms).
const RS485_MAX_DELAY: Duration = Duration::from_millis(100);

/// The longest UTF-8 string an MQTT packet can carry (a 16-bit length).
const MQTT_STRING_MAX: usize = u16::MAX as usize;

fn topic_template_problem(t: &str) -> Option<String> {
    if !t.contains("{sensor}") {
        return Some(format!(
            "\"{t}\" must contain {{sensor}}, or all sensors would publish to one topic"
        ));
    }
    topic_chars_problem(t)
}

/// Like [`topic_template_problem`] for the one status topic of the gateway:
/// `{gateway}` only.
fn status_topic_problem(t: &str) -> Option<String> {
    if t.is_empty() {
        return Some("must not be empty".to_string());
    }
    if t.contains("{sensor}") {
        return Some(format!(
            "\"{t}\" contains {{sensor}}, but the status topic is one per gateway; use {{gateway}} only"
        ));
    }
    topic_chars_problem(t)
}

/// What both topic templates must not contain.
fn topic_chars_problem(t: &str) -> Option<String> {
    if t.contains(['+', '#']) || t.contains('\0') {
        return Some(format!(
            "\"{t}\" contains an MQTT wildcard ('+' or '#') or NUL, which cannot be published to"
        ));
    }
    if t.starts_with('$') {
        return Some(format!(
            "\"{t}\" starts with '$', which brokers reserve for their own topics"
        ));
    }
    let stripped = t.replace("{gateway}", "").replace("{sensor}", "");
    if stripped.contains(['{', '}']) {
        return Some(format!(
            "\"{t}\" has a placeholder other than {{gateway}} and {{sensor}}"
        ));
    }
    if t.len() > MQTT_STRING_MAX {
        return Some(format!(
            "is {} bytes long; an MQTT topic is at most {MQTT_STRING_MAX}",
            t.len()
        ));
    }
    None
}

/// Checks a tracing filter more strictly than `Targets` does: there, a
/// misspelt level such as `infoo` silently becomes a target name.
fn log_level_problem(level: &str) -> Option<String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let usage = "use a level (error, warn, info, debug, trace, off) or directives such as \"info,sensorgate::uplink=debug\"";
    if level.trim().is_empty() {
        return Some(format!("must not be empty; {usage}"));
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.contains('[') || directive.contains('{') {
            return Some(format!(
                "\"{directive}\" in \"{level}\" filters by span or field, which is not supported; {usage}"
            ));
        }
        let lvl = match directive.rsplit_once('=') {
            Some((_, l)) => l,
            None => directive,
        };
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Some(format!("\"{lvl}\" in \"{level}\" is not a level; {usage}"));
        }
    }
    if let Err(e) = level.parse::<tracing_subscriber::filter::Targets>() {
        return Some(format!("\"{level}\" is not a valid filter ({e}); {usage}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Dir, MINIMAL, only_problem, problem_at};
    use super::*;

    #[test]
    fn semantic_problems_are_all_reported_with_their_keys() {
        let text = r#"
[gateway]
id = "gw/1"

[[sensor]]
name = "s1"
device = "/dev/ttyUSB0"
baud = 12345
columns = ["a", "a", ""]
delimiter = "\n"
max_frame = "2MiB"

[[sensor]]
name = "s1"
device = "/dev/ttyUSB0"
columns = []
max_frame = 8

[mqtt]
host = "localhost"
port = 0
qos = 2
topic = "x/{gateway}/#"
keepalive = "1500ms"
reconnect_min = "1m"
reconnect_max = "30s"
max_inflight = 0

[batch]
max_records = 0

[buffer]
memory = "1KiB"
spill_after = "10ms"

[seal]
signing_key = "/k/gw.key"
recipient_key = "/k/r.pub"
encrypt = ["a", "b"]

[log]
level = "infoo"
stats_interval = "500ms"
"#;
        let d = Dir::new(text);
        let e = d.load().unwrap_err();
        assert_eq!(e.exit_code(), 78);
        for key in [
            "gateway.id",
            "sensor[0].baud",
            "sensor[0].columns[1]",
            "sensor[0].columns[2]",
            "sensor[0].delimiter",
            "sensor[0].max_frame",
            "sensor[1].name",
            "sensor[1].device",
            "sensor[1].columns",
            "sensor[1].max_frame",
            "mqtt.port",
            "mqtt.qos",
            "mqtt.topic",
            "mqtt.keepalive",
            "mqtt.reconnect_min",
            "mqtt.max_inflight",
            "mqtt.ca_file",
            "mqtt.cert_file",
            "mqtt.key_file",
            "batch.max_records",
            "buffer.memory",
            "buffer.spill_after",
            "seal.encrypt[1]",
            "log.level",
            "log.stats_interval",
        ] {
            let p = problem_at(&e, key);
            assert_eq!(p.source, d.main().display().to_string(), "{key}");
        }
        assert_eq!(e.problems().len(), 25, "{e}");
        assert!(problem_at(&e, "mqtt.qos").message.contains("at least once"));
        assert!(problem_at(&e, "sensor[0].baud").message.contains("921600"));
        // the rendered error lists every problem on its own line
        assert_eq!(e.to_string().lines().count(), 26);
    }

    #[test]
    fn tls_needs_a_checkable_server_name() {
        let text = MINIMAL.replace(
            "tls = false",
            "ca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"c.key\"\nserver_name = \"not a name\"",
        );
        let p = only_problem(Dir::new(&text).load().unwrap_err());
        assert_eq!(p.key, "mqtt.server_name");
        let ok = text.replace("not a name", "192.0.2.1");
        Dir::new(&ok).load().unwrap();
    }

    #[test]
    fn session_keys_are_checked() {
        let long = "x".repeat(256);
        let text = MINIMAL.replace(
            "tls = false",
            &format!(
                "tls = false\npassword = \"hunter2\"\nalpn = [\"mqtt\", \"\", \"{long}\", \"mqtt\"]\ncert_warn_days = 4000\nmax_packet = \"1000B\"\nstatus_topic = \"s/{{sensor}}/status\"\nprotocol = 3"
            ),
        );
        let d = Dir::new(&text);
        let e = d.load().unwrap_err();
        for key in [
            "mqtt.password",
            "mqtt.alpn[1]",
            "mqtt.alpn[2]",
            "mqtt.alpn[3]",
            "mqtt.cert_warn_days",
            "mqtt.max_packet",
            "mqtt.status_topic",
            "mqtt.protocol",
        ] {
            assert_eq!(problem_at(&e, key).source, d.main().display().to_string());
        }
        assert_eq!(e.problems().len(), 8, "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(problem_at(&e, "mqtt.password").message.contains("username"));
        assert!(problem_at(&e, "mqtt.alpn[2]").message.contains("255 bytes"));
        assert!(
            problem_at(&e, "mqtt.max_packet")
                .message
                .contains("use 4KiB")
        );
        assert!(
            problem_at(&e, "mqtt.status_topic")
                .message
                .contains("{gateway} only")
        );
        assert_eq!(
            problem_at(&e, "mqtt.protocol").message,
            "3 is not an MQTT protocol level this gateway speaks; use 4 (MQTT 3.1.1) or 5 (MQTT 5)"
        );

        // the edges of the ranges, and the same keys from the environment
        let ok = MINIMAL.replace(
            "tls = false",
            "tls = false\nusername = \"u\"\npassword = \"p\"\ncert_warn_days = 0\nmax_packet = \"4KiB\"",
        );
        let cfg = Dir::new(&ok)
            .load_env(&[
                ("SENSORGATE__MQTT__ALPN", "x-amzn-mqtt-ca, mqtt"),
                ("SENSORGATE__MQTT__PASSWORD", "from-env"),
                ("SENSORGATE__MQTT__CLEAN_SESSION", "false"),
            ])
            .unwrap();
        assert_eq!(cfg.mqtt.alpn, ["x-amzn-mqtt-ca", "mqtt"]);
        assert_eq!(cfg.mqtt.password.unwrap().expose(), "from-env");
        assert!(!cfg.mqtt.clean_session);
        assert_eq!(cfg.mqtt.max_packet, 4096);
        let ok = MINIMAL.replace("tls = false", "tls = false\nmax_packet = \"256MiB\"");
        Dir::new(&ok).load().unwrap();

        let e = Dir::new(MINIMAL)
            .load_env(&[("SENSORGATE__MQTT__PROTOCOL", "3")])
            .unwrap_err();
        let p = only_problem(e);
        assert_eq!(p.source, "environment variable SENSORGATE__MQTT__PROTOCOL");
        assert!(p.message.contains("use 4 (MQTT 3.1.1)"), "{p}");
    }

    #[test]
    fn data_key_rotation_limits_are_checked() {
        let with = |extra: &str| {
            MINIMAL.replace(
                "recipient_key = \"/k/r.pub\"",
                &format!("recipient_key = \"/k/r.pub\"\n{extra}"),
            )
        };
        let cfg = Dir::new(MINIMAL).load().unwrap();
        assert_eq!(cfg.seal.rotate_after_messages, 1000);
        assert_eq!(cfg.seal.rotate_after, Duration::from_secs(3600));
        assert_eq!(cfg.seal.format, 2);
        assert_eq!(Dir::new(&with("format = 1")).load().unwrap().seal.format, 1);
        for (extra, key) in [
            ("format = 3", "seal.format"),
            ("format = 0", "seal.format"),
            ("rotate_after_messages = 0", "seal.rotate_after_messages"),
            (
                "rotate_after_messages = 4294967297",
                "seal.rotate_after_messages",
            ),
            ("rotate_after = \"500ms\"", "seal.rotate_after"),
            ("rotate_after = \"31d\"", "seal.rotate_after"),
        ] {
            let d = Dir::new(&with(extra));
            let p = only_problem(d.load().unwrap_err());
            assert_eq!(p.key, key, "{extra}");
            assert_eq!(p.source, d.main().display().to_string(), "{extra}");
            assert!(p.message.contains("out of range"), "{p}");
        }
        let cfg = Dir::new(&with(
            "rotate_after_messages = 4294967296\nrotate_after = \"30d\"",
        ))
        .load()
        .unwrap();
        assert_eq!(cfg.seal.rotate_after_messages, 1 << 32);
        assert_eq!(cfg.seal.rotate_after, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn framing_format_and_their_keys_must_fit_together() {
        let sensor =
            |body: &str| MINIMAL.replace("columns = [\"a\", \"b\"]\n", &format!("{body}\n"));
        let cases: &[(&str, &str, &str)] = &[
            (
                "format = \"binary\"\nframing = \"cobs\"",
                "sensor[0].layout",
                "must list the fields",
            ),
            (
                "format = \"binary\"\nlayout = [{ name = \"t\", type = \"i16\" }]",
                "sensor[0].framing",
                "use framing = \"cobs\"",
            ),
            (
                "framing = \"nmea\"\nformat = \"csv\"\ncolumns = [\"a\"]",
                "sensor[0].format",
                "use format = \"nmea\"",
            ),
            (
                "format = \"nmea\"\ncolumns = [\"a\"]",
                "sensor[0].columns",
                "fixed field names",
            ),
            (
                "format = \"csv\"",
                "sensor[0].columns",
                "at least one column",
            ),
            (
                "columns = [\"a\"]\ncrc = \"crc16\"",
                "sensor[0].crc",
                "framing = \"cobs\"",
            ),
            (
                "columns = [\"a\"]\nnested = \"reject\"",
                "sensor[0].nested",
                "format = \"json\"",
            ),
            (
                "columns = [\"a\"]\nlayout = [{ name = \"t\", type = \"u8\" }]",
                "sensor[0].layout",
                "only used with format = \"binary\"",
            ),
            (
                "format = \"kv\"\ndelimiter = \"=\"",
                "sensor[0].delimiter",
                "cannot separate kv",
            ),
            (
                "columns = [\"a\"]\ntime_field = \"ts\"",
                "sensor[0].time_field",
                "\"ts\" is not one of the fields: a",
            ),
            (
                "format = \"nmea\"\ntime_field = \"utc\"",
                "sensor[0].time_field",
                "only RMC",
            ),
            (
                "columns = [\"a\"]\ndata_bits = 9",
                "sensor[0].data_bits",
                "5, 6, 7 or 8",
            ),
            (
                "columns = [\"a\"]\nstop_bits = 3",
                "sensor[0].stop_bits",
                "1 or 2",
            ),
            (
                "framing = \"cobs\"\nformat = \"binary\"\nlayout = [{ name = \"t\", type = \"i16\", scale = 0.0 }]",
                "sensor[0].layout[0].scale",
                "non-zero",
            ),
            (
                "framing = \"cobs\"\nformat = \"binary\"\nlayout = [{ name = \"t\", type = \"u8\" }, { name = \"t\", type = \"bool\", offset = 1.0 }]",
                "sensor[0].layout[1].name",
                "appears twice",
            ),
            (
                "framing = \"cobs\"\nformat = \"binary\"\nlayout = [{ name = \"t\", type = \"u8\", scael = 2.0 }]",
                "sensor[0].layout[0].scael",
                "did you mean `scale`",
            ),
            (
                "framing = \"cobs\"\nformat = \"binary\"\nmax_frame = \"16B\"\ncrc = \"crc32\"\nlayout = [{ name = \"a\", type = \"f64\" }, { name = \"b\", type = \"u32\" }]",
                "sensor[0].max_frame",
                "(17 bytes COBS-encoded)",
            ),
            (
                "columns = [{ name = \"a\", typ = \"f64\" }]",
                "sensor[0].columns[0].typ",
                "did you mean `type`",
            ),
            (
                "rs485_delay_before = \"1ms\"",
                "sensor[0].rs485_delay_before",
                "only used with rs485 = true",
            ),
            (
                "rs485 = true\nrs485_delay_after = \"150ms\"",
                "sensor[0].rs485_delay_after",
                "0ms to 100ms",
            ),
            (
                "rs485 = true\nrs485_delay_before = \"500us\"",
                "sensor[0].rs485_delay_before",
                "whole milliseconds",
            ),
            (
                "rs485 = true\nflow_control = \"hardware\"",
                "sensor[0].rs485",
                "cannot be used with flow_control = \"hardware\"",
            ),
        ];
        for (body, key, message) in cases {
            let d = Dir::new(&sensor(body));
            let e = d.load().unwrap_err();
            let p = problem_at(&e, key);
            assert!(p.message.contains(message), "{body}: {p}");
        }
        for good in [
            "format = \"json\"",
            "format = \"kv\"\ncolumns = [{ name = \"t\", type = \"f64\" }]\ntime_field = \"ts\"\ntime_format = \"unix_ms\"",
            "framing = \"nmea\"\nformat = \"nmea\"",
            "format = \"nmea\"",
            "framing = \"cobs\"\nformat = \"binary\"\ncrc = \"crc32\"\nendian = \"big\"\nlayout = [{ name = \"t\", type = \"i16\", scale = 0.01 }]\ntime_field = \"t\"",
            "framing = \"cobs\"\ncolumns = [\"a\", \"b\"]\nparity = \"even\"\ndata_bits = 7\nstop_bits = 2\nflow_control = \"hardware\"\nrequired = true",
            "columns = [\"a\"]\nrs485 = true\nrs485_delay_before = \"2ms\"\nrs485_delay_after = \"100ms\"",
        ] {
            let d = Dir::new(&sensor(good));
            if let Err(e) = d.load() {
                panic!("{good}: {e}");
            }
        }
    }

    #[test]
    fn modbus_slaves_and_their_registers_are_checked() {
        let sensor =
            |body: &str| MINIMAL.replace("columns = [\"a\", \"b\"]\n", &format!("{body}\n"));
        let modbus = |rest: &str| format!("framing = \"modbus_rtu\"\nunit = 1\n{rest}");
        let regs = |list: &str| modbus(&format!("registers = [{list}]"));
        let second = |rest: &str| {
            format!(
                "{}\n\n[[sensor]]\nname = \"s2\"\ndevice = \"/dev/ttyUSB0\"\n{rest}",
                regs("{ name = \"v\", address = 0 }")
            )
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (modbus(""), "sensor[0].registers", "must list the values"),
            (
                "framing = \"modbus_rtu\"\nregisters = [{ name = \"v\", address = 0 }]".into(),
                "sensor[0].unit",
                "is required",
            ),
            (
                regs("{ name = \"v\", address = 0 }").replace("unit = 1", "unit = 0"),
                "sensor[0].unit",
                "0 is broadcast",
            ),
            (
                regs("{ name = \"v\", table = \"register\", address = 0 }"),
                "sensor[0].registers[0].table",
                "\"holding\", \"input\", \"coil\", \"discrete\"",
            ),
            (
                regs("{ name = \"sn\", address = 0, type = \"string\" }"),
                "sensor[0].registers[0].count",
                "is required for type = \"string\"",
            ),
            (
                regs("{ name = \"sn\", address = 0, type = \"string\", count = 126 }"),
                "sensor[0].registers[0].count",
                "use 1 to 125",
            ),
            (
                regs("{ name = \"v\", address = 0 }, { name = \"v\", address = 1 }"),
                "sensor[0].registers[1].name",
                "appears twice",
            ),
            (
                regs("{ name = \"e\", address = 65535, type = \"u32\" }"),
                "sensor[0].registers[0].address",
                "ends past the last address",
            ),
            (
                regs("{ name = \"v\", address = 40001 }").replace("40001", "400001"),
                "sensor[0].registers[0].address",
                "40001, 30001",
            ),
            (
                regs("{ name = \"v\", address = 0, type = \"u16\", order = \"CDAB\" }"),
                "sensor[0].registers[0].order",
                "takes \"AB\" or \"BA\"",
            ),
            (
                regs("{ name = \"r\", table = \"coil\", address = 0, type = \"f32\" }"),
                "sensor[0].registers[0].type",
                "its type is bool",
            ),
            (
                regs("{ name = \"v\", address = 0, type = \"f23\" }"),
                "sensor[0].registers[0].type",
                "\"f32\"",
            ),
            (
                regs("{ name = \"v\", address = 0, scael = 0.1 }"),
                "sensor[0].registers[0].scael",
                "scale",
            ),
            (
                format!(
                    "{}\ncolumns = [\"a\"]",
                    regs("{ name = \"v\", address = 0 }")
                ),
                "sensor[0].columns",
                "not used with framing = \"modbus_rtu\"",
            ),
            (
                format!("{}\nformat = \"kv\"", regs("{ name = \"v\", address = 0 }")),
                "sensor[0].format",
                "not used with framing = \"modbus_rtu\"",
            ),
            (
                second(
                    &regs("{ name = \"w\", address = 1 }")
                        .replace("unit = 1", "unit = 2\nrs485 = true"),
                ),
                "sensor[1].device",
                "rs485 true / false",
            ),
            (
                "columns = [\"a\"]\nunit = 3".into(),
                "sensor[0].unit",
                "only used with framing",
            ),
            (
                second("columns = [\"a\"]"),
                "sensor[1].device",
                "only framing = \"modbus_rtu\" sensors",
            ),
            (
                second(&regs("{ name = \"w\", address = 1 }")),
                "sensor[1].unit",
                "each slave on a bus has its own unit id",
            ),
            (
                second(
                    &regs("{ name = \"w\", address = 1 }")
                        .replace("unit = 1", "unit = 2\nbaud = 19200"),
                ),
                "sensor[1].device",
                "baud 19200 / 9600",
            ),
        ];
        for (body, key, message) in &cases {
            let d = Dir::new(&sensor(body));
            let e = d.load().unwrap_err();
            let p = problem_at(&e, key);
            assert!(p.message.contains(message), "{body}: {p}");
        }
        let good = second(&regs(
            "{ name = \"voltage\", table = \"input\", address = 0, type = \"f32\", order = \"CDAB\" }, \
             { name = \"energy\", address = 10, type = \"u64\", order = \"HGFEDCBA\", scale = 0.01 }, \
             { name = \"sn\", address = 30, type = \"string\", count = 4, order = \"BA\" }, \
             { name = \"relay\", table = \"coil\", address = 65535 }",
        )
        .replace("unit = 1", "unit = 247\npoll = \"250ms\"\ntimeout = \"150ms\"\nmax_gap = 8"));
        if let Err(e) = Dir::new(&sensor(&good)).load() {
            panic!("{good}: {e}");
        }
    }

    #[test]
    fn metrics_listen_must_be_an_address_and_port() {
        let with = |v: &str| Dir::new(&format!("{MINIMAL}\n[metrics]\nlisten = \"{v}\"\n"));
        for bad in ["localhost:9898", "127.0.0.1", ":9898", "9898"] {
            let p = only_problem(with(bad).load().unwrap_err());
            assert_eq!(p.key, "metrics.listen", "{bad}");
            assert!(p.message.contains("127.0.0.1:9898"), "{p}");
        }
        let cfg = with("[::1]:9898").load().unwrap();
        assert_eq!(
            cfg.metrics.listen_addr(),
            Some("[::1]:9898".parse().unwrap())
        );
        assert_eq!(
            Dir::new(MINIMAL).load().unwrap().metrics.listen_addr(),
            None
        );
    }

    #[test]
    fn a_sensor_cannot_publish_on_the_status_topic() {
        let text = MINIMAL.replace("name = \"s1\"", "name = \"status\"");
        let p = only_problem(Dir::new(&text).load().unwrap_err());
        assert_eq!(p.key, "mqtt.status_topic");
        assert!(p.message.contains("sensor[0]"), "{p}");
    }

    #[test]
    fn a_zero_stats_interval_turns_the_stats_line_off() {
        let text = format!("{MINIMAL}\n[log]\nstats_interval = \"0s\"\n");
        let cfg = Dir::new(&text).load().expect("0s is valid");
        assert!(cfg.log.stats_interval.is_zero());
        let text = format!("{MINIMAL}\n[log]\nstats_interval = \"500ms\"\n");
        let p = only_problem(Dir::new(&text).load().unwrap_err());
        assert_eq!(p.key, "log.stats_interval");
        assert!(p.message.contains("0s for no stats lines"), "{p}");
    }

    #[test]
    fn log_levels_are_checked_strictly() {
        for ok in [
            "info",
            "WARN",
            "off",
            "info,sensorgate=debug",
            "sensorgate::uplink=trace",
        ] {
            assert_eq!(log_level_problem(ok), None, "{ok}");
        }
        // Span and field filters would need the regex engine EnvFilter
        // brings (half a megabyte); they are refused, not ignored.
        for bad in [
            "",
            "infoo",
            "info,sensorgate=loud",
            "sensorgate=debug=1",
            "info,[span]",
            "sensorgate[send{topic}]=debug",
        ] {
            assert!(log_level_problem(bad).is_some(), "{bad}");
        }
    }
}
