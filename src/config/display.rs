//! The effective configuration as TOML: what `check-config` prints, with
//! defaults filled in and secrets redacted, and what [`load`](super::load)
//! reads back to the same [`Config`].
//!
//! Values are encoded (quoted, escaped) by `toml_writer`, the writer behind
//! the `toml` crate's serializer. The layout is written here rather than
//! derived with serde, because it also lists the optional keys that are not
//! set (`# ca_file is not set`), which a serializer skips without a trace.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use toml_writer::{TomlString, TomlStringBuilder, TomlWrite as _, WriteTomlValue};

use super::units::format_size;
use super::{Column, ColumnType, Config, Framing, LayoutField, Register};

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut w = Writer { out: f, any: false };
        w.table("[gateway]")?;
        w.string("id", &self.gateway.id)?;
        w.string("state_dir", &path(&self.gateway.state_dir))?;
        for s in &self.sensor {
            w.table("[[sensor]]")?;
            w.string("name", &s.name)?;
            w.string("device", &path(&s.device))?;
            w.value("baud", s.baud)?;
            w.value("data_bits", s.data_bits)?;
            w.string("parity", s.parity.as_str())?;
            w.value("stop_bits", s.stop_bits)?;
            w.string("flow_control", s.flow_control.as_str())?;
            w.value("rs485", s.rs485)?;
            if s.rs485 {
                w.string("rs485_delay_before", &duration(s.rs485_delay_before))?;
                w.string("rs485_delay_after", &duration(s.rs485_delay_after))?;
            }
            w.value("required", s.required)?;
            w.string("framing", s.framing.as_str())?;
            w.string("format", s.format.as_str())?;
            w.columns(&s.columns)?;
            w.string("delimiter", &s.delimiter.to_string())?;
            w.string("max_frame", &format_size(s.max_frame as u64))?;
            w.string("nested", s.nested.as_str())?;
            w.string("crc", s.crc.as_str())?;
            w.string("endian", s.endian.as_str())?;
            w.layout(&s.layout)?;
            w.optional("time_field", s.time_field.as_deref())?;
            w.string("time_format", s.time_format.as_str())?;
            if s.framing == Framing::ModbusRtu {
                match s.unit {
                    Some(unit) => w.value("unit", i64::from(unit))?,
                    None => w.unset("unit")?,
                }
                w.string("poll", &duration(s.poll))?;
                w.optional("timeout", s.timeout.map(duration).as_deref())?;
                w.value("max_gap", i64::from(s.max_gap))?;
                w.value("local_echo", s.local_echo)?;
                w.registers(&s.registers)?;
            }
        }
        let m = &self.mqtt;
        w.table("[mqtt]")?;
        w.string("host", &m.host)?;
        w.value("port", m.port)?;
        w.string("client_id", m.client_id(&self.gateway))?;
        w.string("topic", &m.topic)?;
        w.value("qos", m.qos)?;
        w.value("tls", m.tls)?;
        w.optional("ca_file", m.ca_file.as_deref().map(path).as_deref())?;
        w.optional("cert_file", m.cert_file.as_deref().map(path).as_deref())?;
        w.optional("key_file", m.key_file.as_ref().map(key_ref).as_deref())?;
        w.optional("server_name", m.server_name.as_deref())?;
        w.string("keepalive", &duration(m.keepalive))?;
        w.string("connect_timeout", &duration(m.connect_timeout))?;
        w.string("reconnect_min", &duration(m.reconnect_min))?;
        w.string("reconnect_max", &duration(m.reconnect_max))?;
        w.value("max_inflight", m.max_inflight)?;
        w.string("drain_timeout", &duration(m.drain_timeout))?;
        w.value("clean_session", m.clean_session)?;
        w.optional("username", m.username.as_deref())?;
        match &m.password {
            Some(secret) => w.value("password", secret)?,
            None => w.unset("password")?,
        }
        w.strings("alpn", &m.alpn)?;
        w.value("cert_warn_days", m.cert_warn_days)?;
        w.string("max_packet", &format_size(m.max_packet as u64))?;
        w.string("status_topic", &m.status_topic)?;
        w.value("protocol", m.protocol)?;
        w.table("[batch]")?;
        w.value("max_records", self.batch.max_records as u64)?;
        w.string("linger", &duration(self.batch.linger))?;
        w.table("[buffer]")?;
        w.string("memory", &format_size(self.buffer.memory as u64))?;
        w.string("disk", &format_size(self.buffer.disk))?;
        w.string("when_full", self.buffer.when_full.as_str())?;
        w.string("durability", self.buffer.durability.as_str())?;
        w.string("spill_after", &duration(self.buffer.spill_after))?;
        w.string("fsync", self.buffer.fsync.as_str())?;
        w.string("fsync_interval", &duration(self.buffer.fsync_interval))?;
        w.string("min_free", &self.buffer.min_free.to_string())?;
        w.table("[seal]")?;
        w.string("signing_key", &key_ref(&self.seal.signing_key))?;
        w.string("recipient_key", &path(&self.seal.recipient_key))?;
        w.strings("encrypt", &self.seal.encrypt)?;
        w.value("rotate_after_messages", self.seal.rotate_after_messages)?;
        w.string("rotate_after", &duration(self.seal.rotate_after))?;
        w.value("format", self.seal.format)?;
        w.table("[log]")?;
        w.string("level", &self.log.level)?;
        w.string("format", self.log.format.as_str())?;
        w.string("stats_interval", &duration(self.log.stats_interval))?;
        w.table("[metrics]")?;
        w.optional("listen", self.metrics.listen.as_deref())?;
        w.table("[time]")?;
        w.string("synchronized_by", self.time.synchronized_by.as_str())?;
        w.string("synchronized_flag", &path(&self.time.synchronized_flag))
    }
}

/// Table headers and `key = value` lines, tables separated by a blank line.
struct Writer<'a, 'f> {
    out: &'a mut fmt::Formatter<'f>,
    /// Whether a table was written already.
    any: bool,
}

impl Writer<'_, '_> {
    fn table(&mut self, header: &str) -> fmt::Result {
        if self.any {
            self.out.newline()?;
        }
        self.any = true;
        writeln!(self.out, "{header}")
    }

    /// A number or a boolean.
    fn value(&mut self, key: &str, value: impl WriteTomlValue) -> fmt::Result {
        write!(self.out, "{key} = ")?;
        self.out.value(value)?;
        self.out.newline()
    }

    fn string(&mut self, key: &str, value: &str) -> fmt::Result {
        self.value(key, quoted(value))
    }

    fn strings(&mut self, key: &str, values: &[String]) -> fmt::Result {
        let items: Vec<TomlString<'_>> = values.iter().map(|v| quoted(v)).collect();
        self.value(key, items)
    }

    /// Plain names when no column declares a type, else one inline table
    /// per column.
    fn columns(&mut self, columns: &[Column]) -> fmt::Result {
        if columns.iter().all(|c| c.ty == ColumnType::Auto) {
            let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
            return self.strings("columns", &names);
        }
        write!(self.out, "columns = [")?;
        for (i, c) in columns.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(self.out, "{sep}{{ name = ")?;
            self.out.value(quoted(&c.name))?;
            write!(self.out, ", type = ")?;
            self.out.value(quoted(c.ty.as_str()))?;
            write!(self.out, " }}")?;
        }
        writeln!(self.out, "]")
    }

    fn layout(&mut self, layout: &[LayoutField]) -> fmt::Result {
        write!(self.out, "layout = [")?;
        for (i, f) in layout.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(self.out, "{sep}{{ name = ")?;
            self.out.value(quoted(&f.name))?;
            write!(self.out, ", type = ")?;
            self.out.value(quoted(f.ty.as_str()))?;
            self.linear(f.scale, f.offset)?;
            write!(self.out, " }}")?;
        }
        writeln!(self.out, "]")
    }

    fn registers(&mut self, registers: &[Register]) -> fmt::Result {
        write!(self.out, "registers = [")?;
        for (i, r) in registers.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(self.out, "{sep}{{ name = ")?;
            self.out.value(quoted(&r.name))?;
            write!(self.out, ", table = ")?;
            self.out.value(quoted(r.table.as_str()))?;
            write!(self.out, ", address = ")?;
            self.out.value(i64::from(r.address))?;
            if let Some(ty) = r.ty {
                write!(self.out, ", type = ")?;
                self.out.value(quoted(ty.as_str()))?;
            }
            if let Some(order) = &r.order {
                write!(self.out, ", order = ")?;
                self.out.value(quoted(order))?;
            }
            if let Some(count) = r.count {
                write!(self.out, ", count = ")?;
                self.out.value(i64::from(count))?;
            }
            self.linear(r.scale, r.offset)?;
            write!(self.out, " }}")?;
        }
        writeln!(self.out, "]")
    }

    /// `, scale = x, offset = y` inside an inline table, each when set.
    fn linear(&mut self, scale: Option<f64>, offset: Option<f64>) -> fmt::Result {
        if let Some(scale) = scale {
            write!(self.out, ", scale = ")?;
            self.out.value(scale)?;
        }
        if let Some(offset) = offset {
            write!(self.out, ", offset = ")?;
            self.out.value(offset)?;
        }
        Ok(())
    }

    fn optional(&mut self, key: &str, value: Option<&str>) -> fmt::Result {
        match value {
            Some(v) => self.string(key, v),
            None => self.unset(key),
        }
    }

    fn unset(&mut self, key: &str) -> fmt::Result {
        writeln!(self.out, "# {key} is not set")
    }
}

/// A string in double quotes, with escapes, on one line. `toml_writer` would
/// otherwise pick single quotes for a value with `\` or `"`, and a
/// multi-line string for one with a line break; one key per line is what
/// lets an operator (and a test) grep the output.
fn quoted(s: &str) -> TomlString<'_> {
    TomlStringBuilder::new(s).as_basic()
}

fn path(p: &Path) -> Cow<'_, str> {
    p.to_string_lossy()
}

/// A key's path, or its URI (which holds no PIN).
fn key_ref(k: &super::KeyRef) -> String {
    match k {
        super::KeyRef::File(p) => path(p).into_owned(),
        uri => uri.to_string(),
    }
}

/// A duration as the operator writes it (`"1m 30s"`), not as seconds.
fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use config::{FileFormat, Format as _};
    use proptest::prelude::*;
    use toml_writer::ToTomlValue as _;

    use super::super::test_support::{Dir, MINIMAL, example};
    use super::super::{
        ColumnType, Crc, Endian, FlowControl, Format, Framing, LayoutField, LayoutType, Parity,
        Secret, TimeFormat, load_with_env,
    };

    #[test]
    fn the_effective_configuration_reads_back_the_same() {
        let cfg = load_with_env(&example(), &[]).unwrap();
        let text = cfg.to_string();
        assert!(text.contains("client_id = \"bike-pi-01\""), "{text}");
        assert!(text.contains("memory = \"8MiB\""), "{text}");
        let d = Dir::new(&text);
        assert_eq!(d.load().unwrap(), cfg);

        let min = Dir::new(MINIMAL).load().unwrap();
        let text = min.to_string();
        assert!(text.contains("# ca_file is not set"), "{text}");
        assert_eq!(Dir::new(&text).load().unwrap(), min);

        let mut odd = min.clone();
        odd.gateway.id = "gw-\"quoted\"\\é".to_string();
        odd.sensor[0].delimiter = '\t';
        odd.sensor[0].columns[1].ty = ColumnType::F64;
        odd.sensor[0].time_field = Some("a".to_string());
        odd.sensor[0].time_format = TimeFormat::UnixMs;
        let mut bin = odd.sensor[0].clone();
        bin.name = "bin".to_string();
        bin.device = "/dev/ttyACM0".into();
        bin.columns.clear();
        (bin.framing, bin.format, bin.crc, bin.endian) =
            (Framing::Cobs, Format::Binary, Crc::Crc32, Endian::Big);
        bin.layout = vec![
            LayoutField {
                name: "a".into(),
                ty: LayoutType::I16,
                scale: Some(0.01),
                offset: None,
            },
            LayoutField {
                name: "b".into(),
                ty: LayoutType::U8,
                scale: None,
                offset: Some(-40.5),
            },
        ];
        (
            bin.parity,
            bin.data_bits,
            bin.stop_bits,
            bin.flow_control,
            bin.required,
        ) = (Parity::Even, 7, 2, FlowControl::Software, true);
        (bin.rs485, bin.rs485_delay_before, bin.rs485_delay_after) = (
            true,
            std::time::Duration::from_millis(2),
            std::time::Duration::ZERO,
        );
        odd.sensor.push(bin);
        odd.mqtt.clean_session = false;
        odd.mqtt.username = Some("user?api-version=2021-06-30".to_string());
        odd.mqtt.alpn = vec!["x-amzn-mqtt-ca".to_string(), "mqtt".to_string()];
        odd.mqtt.cert_warn_days = 0;
        odd.mqtt.max_packet = 256 * 1024 * 1024;
        odd.mqtt.status_topic = "devices/{gateway}/state".to_string();
        assert_eq!(Dir::new(&odd.to_string()).load().unwrap(), odd);
    }

    #[test]
    fn the_password_is_redacted() {
        let mut cfg = Dir::new(MINIMAL).load().unwrap();
        assert!(cfg.to_string().contains("# password is not set\n"));
        cfg.mqtt.username = Some("gw".to_string());
        cfg.mqtt.password = Some(Secret::new("hunter2".to_string()));
        let text = cfg.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("password = \"<redacted>\"\n"), "{text}");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    proptest! {
        #[test]
        fn toml_strings_read_back(s in "\\PC{0,24}|[\\x00-\\x1f\\x7f\"\\\\]{0,8}") {
            let text = format!("k = {}\n", super::quoted(&s).to_toml_value());
            prop_assert_eq!(text.lines().count(), 1, "{}", text);
            let parsed = FileFormat::Toml.parse(None, &text).unwrap();
            prop_assert_eq!(parsed["k"].clone().into_string().unwrap(), s);
        }
    }
}
