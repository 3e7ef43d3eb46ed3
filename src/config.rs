//! The typed configuration and its loading.
//!
//! The configuration is read with the `config` crate from the `--config` file,
//! then every `*.toml` in the `conf.d/` folder beside it (in name order), then
//! the environment variables `SENSORGATE__SECTION__KEY`. Later sources
//! override earlier ones key by key; a list is replaced as a whole.
//!
//! The operator's question after a mistake is always "where?", so every
//! problem names the file (or the environment variable) that set the
//! offending value and the key as a dotted path (`sensor[1].baud`). The
//! `config` crate forgets which file a merged key came from in its own error
//! messages, but each leaf [`config::Value`] keeps its origin; this module
//! keeps the merged tree and looks the origin of a problem's key up in it.
//! Unknown keys are found by walking that tree against the field lists of the
//! serde types themselves (see [`fields_of`]), so there is no second list of
//! key names to keep in step with the structs.
//!
//! After parsing, [`Config`] is checked as a whole (ranges, cross-references
//! such as `seal.encrypt` naming real columns) and every problem found is
//! reported at once, so an operator fixes a file in one pass.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use config::{FileFormat, Format as _, Map, Source, Value, ValueKind};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Environment variables that configure sensorgate start with this.
pub const ENV_PREFIX: &str = "SENSORGATE__";

/// Keys whose value is a list; set from the environment as a comma-separated
/// string.
const ENV_LIST_KEYS: &[&str] = &["seal.encrypt"];

/// The rates the Linux termios interface names (`B50` ... `B4000000`). A
/// device set to anything else would need a custom divisor, which USB serial
/// adapters handle inconsistently; a typo such as 11520 is far more likely.
pub const STANDARD_BAUD_RATES: &[u32] = &[
    50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600,
    115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000,
    3000000, 3500000, 4000000,
];

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------
// The configuration types
// ---------------------------------------------------------------------------

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
    pub device: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default)]
    pub format: Format,
    pub columns: Vec<String>,
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Bytes. A longer frame is rejected, never buffered (bounded memory).
    #[serde(default = "default_max_frame", deserialize_with = "de_size_usize")]
    pub max_frame: usize,
}

/// The uplink: where and how sealed messages are published.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Filled in with `gateway.id` by [`load`] when not set; see
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
    pub key_file: Option<PathBuf>,
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
    /// Bytes of disk spool. Parsed and validated; the disk spool ships in a
    /// later release.
    #[serde(deserialize_with = "de_size_u64")]
    pub disk: u64,
    pub when_full: WhenFull,
}

/// The keys that sign and encrypt. Only paths: key material is loaded (and
/// permission-checked) by the `seal` module, never kept here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    pub signing_key: PathBuf,
    pub recipient_key: PathBuf,
    /// Column names whose values are encrypted for the recipient.
    #[serde(default)]
    pub encrypt: Vec<String>,
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

/// Defines a configuration enum read from a fixed set of lowercase strings,
/// with messages that list the accepted values, and a separate message for
/// values that a later version will accept.
macro_rules! choice_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
        not_yet = [$($later:literal),*];
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every accepted spelling, in documentation order.
            pub const CHOICES: &'static [&'static str] = &[$($text),+];
            /// Spellings that a later version will accept.
            const NOT_YET: &'static [&'static str] = &[$($later),*];

            /// The spelling used in the configuration file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err(choice_error($what, s, Self::CHOICES, Self::NOT_YET)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    };
}

fn choice_error(what: &str, got: &str, choices: &[&str], not_yet: &[&str]) -> String {
    let list = choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    if not_yet.contains(&got) {
        format!("{what} \"{got}\" is not supported yet in this version; supported: {list}")
    } else {
        format!("unknown {what} \"{got}\"; expected one of {list}")
    }
}

choice_enum! {
    /// How the byte stream of a serial device is cut into frames.
    pub enum Framing ("framing") {
        /// One frame per line, ending in `\n` (a preceding `\r` is dropped).
        #[default]
        Lines = "lines",
    }
    not_yet = ["nmea", "cobs"];
}

choice_enum! {
    /// How a frame is decoded into a record.
    pub enum Format ("format") {
        /// Values separated by the sensor's delimiter, named by its columns.
        #[default]
        Csv = "csv",
    }
    not_yet = ["json", "kv"];
}

choice_enum! {
    /// What the spool does when its budget is exhausted.
    pub enum WhenFull ("buffer.when_full policy") {
        /// Keep the newest data; count and log what was dropped.
        #[default]
        DropOldest = "drop_oldest",
        /// Stop reading the serial ports until the broker catches up.
        Block = "block",
    }
    not_yet = [];
}

choice_enum! {
    /// Where log lines go and how they look.
    pub enum LogFormat ("log format") {
        /// The journal when started by systemd, text on a terminal.
        #[default]
        Auto = "auto",
        Journald = "journald",
        Text = "text",
        Json = "json",
    }
    not_yet = [];
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
fn default_delimiter() -> char {
    ','
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

impl Config {
    /// The MQTT topic of one sensor's sealed messages: `mqtt.topic` with
    /// `{gateway}` and `{sensor}` replaced. Replacement is a single pass, so a
    /// name that itself contains `{sensor}` is not expanded again.
    pub fn topic_for(&self, sensor: &str) -> String {
        expand_topic(&self.mqtt.topic, &self.gateway.id, sensor)
    }
}

impl Mqtt {
    /// The MQTT client identifier: `client_id`, or else the gateway's id.
    /// ([`load`] already fills `client_id` in; this also serves a `Mqtt`
    /// built by hand, as in tests.)
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

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

/// A secret configuration value (a password, a token). Its `Debug` and the
/// effective configuration printed by `check-config` show `<redacted>`, and
/// the memory is wiped on drop. No key needs one yet — key *contents* are
/// never part of the configuration, only their paths — but the next password
/// field must use this type, not `String`.
#[derive(Clone)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(zeroize::Zeroizing::new(value))
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

// ---------------------------------------------------------------------------
// Durations and sizes
// ---------------------------------------------------------------------------

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"250ms\", \"30s\" or \"5m\"")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            humantime::parse_duration(s.trim()).map_err(|e| {
                E::custom(format!(
                    "invalid duration \"{s}\" ({e}); write it like \"250ms\", \"30s\" or \"5m\""
                ))
            })
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs a unit: write \"{v}s\" for seconds or \"{v}ms\" for milliseconds"
            )))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "a duration needs a unit: write \"{v}s\" for seconds or \"{v}ms\" for milliseconds"
            )))
        }
    }
    d.deserialize_any(V)
}

fn de_size_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as \"64KiB\", \"256MiB\", \"1MB\" or a number of bytes")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
            parse_size(s).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
    }
    d.deserialize_any(V)
}

fn de_size_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = de_size_u64(d)?;
    usize::try_from(n).map_err(|_| {
        de::Error::custom(format!(
            "{} is more than this machine can address",
            format_size(n)
        ))
    })
}

/// Parses a size in bytes: a plain number (`1500`), or a number with a unit,
/// IEC (`KiB`, `MiB`, `GiB`, `TiB`: powers of 1024) or SI (`kB`, `MB`, `GB`,
/// `TB`: powers of 1000), or `B`. Units are case-insensitive; a space between
/// number and unit is allowed. Bare `K`/`M`/`G` are refused because they do
/// not say which of the two the writer meant.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(digits_end);
    let unit = unit.trim_start();
    let expected = "write it like \"64KiB\", \"256MiB\", \"1MB\" or a number of bytes";
    if digits.is_empty() {
        return Err(format!("invalid size \"{s}\"; {expected}"));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("size \"{s}\" is too large"))?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => 1024 * MIB,
        "tib" => 1024 * 1024 * MIB,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "tb" => 1000 * 1000 * 1000 * 1000,
        _ => {
            return Err(format!(
                "invalid size \"{s}\": unknown unit \"{unit}\"; {expected} (units: B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size \"{s}\" is too large"))
}

/// Writes a byte count the way an operator would: in the largest IEC unit
/// that divides it, else the largest SI unit, else in bytes. The result
/// parses back to the same number with [`parse_size`].
pub fn format_size(n: u64) -> String {
    if n == 0 {
        return "0B".to_string();
    }
    const UNITS: &[(u64, &str)] = &[
        (1024 * 1024 * MIB, "TiB"),
        (1024 * MIB, "GiB"),
        (MIB, "MiB"),
        (KIB, "KiB"),
        (1000 * 1000 * 1000 * 1000, "TB"),
        (1000 * 1000 * 1000, "GB"),
        (1000 * 1000, "MB"),
        (1000, "kB"),
    ];
    for &(factor, name) in UNITS {
        if n % factor == 0 {
            return format!("{}{name}", n / factor);
        }
    }
    format!("{n}B")
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One thing wrong with the configuration, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file that set the value (or would have to), or
    /// `environment variable SENSORGATE__...`.
    pub source: String,
    /// Dotted path of the key, e.g. `sensor[1].baud`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: key `{}`: {}", self.source, self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "configuration file {} does not exist; pass the right file with --config",
        path.display()
    )]
    NotFound { path: PathBuf },

    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot list the configuration folder {}: {source}", path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("configuration file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },

    #[error("{}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

fn format_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => format!("invalid configuration: {one}"),
        many => {
            let mut s = format!("invalid configuration ({} problems):", many.len());
            for p in many {
                let _ = write!(s, "\n  {p}");
            }
            s
        }
    }
}

impl ConfigError {
    /// The sysexits code for this error: 66 (no input) when a file is
    /// missing or unreadable, 77 when permission is denied, 78
    /// (configuration) for a file that says something wrong.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::NotFound { .. } => 66,
            ConfigError::Read { source, .. } | ConfigError::ReadDir { source, .. } => {
                if source.kind() == io::ErrorKind::PermissionDenied {
                    77
                } else {
                    66
                }
            }
            ConfigError::Syntax { .. } | ConfigError::Invalid(_) => 78,
        }
    }

    /// The individual problems, for an `Invalid` configuration.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            _ => &[],
        }
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Loads and validates the configuration from `path`, its `conf.d/` folder
/// and the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut env = Vec::new();
    let mut bad = Vec::new();
    for (name, value) in std::env::vars_os() {
        if !name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        match (name.into_string(), value.into_string()) {
            (Ok(n), Ok(v)) => env.push((n, v)),
            (Ok(n), Err(_)) => bad.push(Problem {
                source: format!("environment variable {n}"),
                key: env_key(&n),
                message: "the value is not valid UTF-8".to_string(),
            }),
            (Err(n), _) => bad.push(Problem {
                source: format!("environment variable {}", n.to_string_lossy()),
                key: String::new(),
                message: "the name is not valid UTF-8".to_string(),
            }),
        }
    }
    if !bad.is_empty() {
        return Err(ConfigError::Invalid(bad));
    }
    load_with_env(path, &env)
}

/// Like [`load`], with the environment given explicitly (variables without
/// the `SENSORGATE__` prefix are ignored), so tests don't depend on the
/// process environment.
pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder();
    let mut files = HashMap::new();

    let main = read_toml(path)?;
    files.insert(origin_of_file(path), path.to_path_buf());
    builder = builder.add_source(Parsed(main));

    for file in conf_d_files(path)? {
        let parsed = read_toml(&file)?;
        files.insert(origin_of_file(&file), file);
        builder = builder.add_source(Parsed(parsed));
    }

    let env_vars = env_source(env)?;
    builder = builder.add_source(env_vars);

    let tree = builder
        .build()
        .map_err(|e| {
            ConfigError::Invalid(vec![Problem {
                source: path.display().to_string(),
                key: String::new(),
                message: e.to_string(),
            }])
        })?
        .cache;

    let ctx = Context {
        tree: &tree,
        main: path,
        files: &files,
    };

    let unknown = ctx.unknown_keys();
    if !unknown.is_empty() {
        return Err(ConfigError::Invalid(unknown));
    }

    let mut cfg: Config = tree
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

/// The origin string a file's values carry, and that problems show.
fn origin_of_file(path: &Path) -> String {
    path.display().to_string()
}

fn read_toml(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ConfigError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let origin = origin_of_file(path);
    FileFormat::Toml
        .parse(Some(&origin), &text)
        .map_err(|cause| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: cause.to_string().trim_end().to_string(),
        })
}

/// The `*.toml` files of the `conf.d/` folder beside `main`, in name order.
/// Hidden files are skipped: editors leave lock and swap files such as
/// `.#10-site.toml` there. A missing folder is the same as an empty one.
fn conf_d_files(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = main.parent().unwrap_or(Path::new("")).join("conf.d");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::ReadDir { path: dir, source }),
    };
    let mut names: Vec<OsString> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::ReadDir {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        let bytes = name.as_encoded_bytes();
        if bytes.starts_with(b".") || !bytes.ends_with(b".toml") {
            continue;
        }
        // Follows symlinks: a link to a file elsewhere is a normal way to
        // enable a snippet.
        if fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// A file already read and parsed (so that I/O and syntax errors are ours to
/// word), handed to the `config` crate as a source.
#[derive(Debug, Clone)]
struct Parsed(Map<String, Value>);

impl Source for Parsed {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }
    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// The key an environment variable sets: `SENSORGATE__MQTT__PORT` ->
/// `mqtt.port`.
fn env_key(name: &str) -> String {
    name[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// The environment as a source whose values carry the variable's name as
/// their origin (the `config` crate's own `Environment` says only "the
/// environment", which does not tell the operator which variable is wrong).
fn env_source(env: &[(String, String)]) -> Result<Parsed, ConfigError> {
    let mut map = Map::new();
    let mut problems = Vec::new();
    for (name, value) in env {
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        let key = env_key(name);
        let origin = format!("environment variable {name}");
        let well_formed = key.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
        if !well_formed {
            problems.push(Problem {
                source: origin,
                key,
                message:
                    "malformed name; expected SENSORGATE__SECTION__KEY, e.g. SENSORGATE__MQTT__HOST"
                        .to_string(),
            });
            continue;
        }
        let v = if ENV_LIST_KEYS.contains(&key.as_str()) {
            let items: Vec<Value> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::new(Some(&origin), s))
                .collect();
            Value::new(Some(&origin), items)
        } else {
            Value::new(Some(&origin), value.as_str())
        };
        map.insert(key, v);
    }
    if problems.is_empty() {
        Ok(Parsed(map))
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// The merged tree with its origins, for attributing problems.
struct Context<'a> {
    tree: &'a Value,
    main: &'a Path,
    /// Origin string -> file, for resolving relative paths.
    files: &'a HashMap<String, PathBuf>,
}

impl Context<'_> {
    /// Where the value at `key` came from: the origin of that value, or of
    /// the first leaf below it; the main file when the key is not set at all
    /// (a missing key "would have to be" in the main file).
    fn origin(&self, key: &str) -> String {
        lookup(self.tree, key)
            .and_then(first_origin)
            .map(str::to_string)
            .unwrap_or_else(|| origin_of_file(self.main))
    }

    /// Like [`Context::origin`], for the first of `keys` that is set.
    fn origin_any(&self, keys: &[&str]) -> String {
        keys.iter()
            .find_map(|k| lookup(self.tree, k).and_then(first_origin))
            .map(str::to_string)
            .unwrap_or_else(|| origin_of_file(self.main))
    }

    fn problem(&self, key: impl Into<String>, message: impl Into<String>) -> Problem {
        let key = key.into();
        Problem {
            source: self.origin(&key),
            key,
            message: message.into(),
        }
    }

    /// Every key the schema does not know, in every table, sorted.
    fn unknown_keys(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let ValueKind::Table(top) = &self.tree.kind else {
            return out;
        };
        self.unknown_in(top, "", "the top level", fields_of::<Config>(), &mut out);
        let sections: [(&str, &[&str]); 6] = [
            ("gateway", fields_of::<Gateway>()),
            ("mqtt", fields_of::<Mqtt>()),
            ("batch", fields_of::<Batch>()),
            ("buffer", fields_of::<Buffer>()),
            ("seal", fields_of::<Seal>()),
            ("log", fields_of::<Log>()),
        ];
        for (section, fields) in sections {
            if let Some(Value {
                kind: ValueKind::Table(t),
                ..
            }) = top.get(section)
            {
                let prefix = format!("{section}.");
                let what = format!("[{section}]");
                self.unknown_in(t, &prefix, &what, fields, &mut out);
            }
        }
        if let Some(
            v @ Value {
                kind: ValueKind::Table(_),
                ..
            },
        ) = top.get("sensor")
        {
            out.push(Problem {
                source: first_origin(v)
                    .map(str::to_string)
                    .unwrap_or_else(|| origin_of_file(self.main)),
                key: "sensor".to_string(),
                message: "is a single table; write each sensor as [[sensor]] (double brackets)"
                    .to_string(),
            });
        }
        if let Some(Value {
            kind: ValueKind::Array(sensors),
            ..
        }) = top.get("sensor")
        {
            for (i, s) in sensors.iter().enumerate() {
                if let ValueKind::Table(t) = &s.kind {
                    let prefix = format!("sensor[{i}].");
                    self.unknown_in(t, &prefix, "[[sensor]]", fields_of::<Sensor>(), &mut out);
                }
            }
        }
        out
    }

    fn unknown_in(
        &self,
        table: &Map<String, Value>,
        prefix: &str,
        what: &str,
        known: &[&str],
        out: &mut Vec<Problem>,
    ) {
        let mut keys: Vec<&String> = table.keys().collect();
        keys.sort();
        for k in keys {
            if known.contains(&k.as_str()) {
                continue;
            }
            let hint = closest(k, known)
                .map(|c| format!("did you mean `{c}`? "))
                .unwrap_or_default();
            let source = first_origin(&table[k])
                .map(str::to_string)
                .unwrap_or_else(|| origin_of_file(self.main));
            out.push(Problem {
                source,
                key: format!("{prefix}{k}"),
                message: format!(
                    "unknown key; {hint}the keys of {what} are: {}",
                    known.join(", ")
                ),
            });
        }
    }

    /// Turns a deserialization error of the `config` crate into a problem
    /// with our wording; the crate already tracks the dotted key.
    fn problem_from_de(&self, err: config::ConfigError) -> Problem {
        let (key, origin, message) = unpack_de_error(err);
        let key = normalize_key(&key.unwrap_or_default());
        let source = lookup(self.tree, &key)
            .and_then(first_origin)
            .map(str::to_string)
            .or(origin)
            .unwrap_or_else(|| origin_of_file(self.main));
        Problem {
            source,
            key,
            message,
        }
    }

    /// Makes relative paths relative to the folder of the file that set them
    /// (systemd starts the daemon in `/`, so the working directory means
    /// nothing). Paths from the environment are left as they are.
    fn resolve_paths(&self, cfg: &mut Config) {
        let resolve = |key: &str, p: &mut PathBuf| {
            if p.is_absolute() || p.as_os_str().is_empty() {
                return;
            }
            let Some(origin) = lookup(self.tree, key).and_then(first_origin) else {
                return;
            };
            if let Some(dir) = self.files.get(origin).and_then(|f| f.parent()) {
                *p = dir.join(&*p);
            }
        };
        resolve("gateway.state_dir", &mut cfg.gateway.state_dir);
        for (i, s) in cfg.sensor.iter_mut().enumerate() {
            resolve(&format!("sensor[{i}].device"), &mut s.device);
        }
        for (key, p) in [
            ("mqtt.ca_file", &mut cfg.mqtt.ca_file),
            ("mqtt.cert_file", &mut cfg.mqtt.cert_file),
            ("mqtt.key_file", &mut cfg.mqtt.key_file),
        ] {
            if let Some(p) = p {
                resolve(key, p);
            }
        }
        resolve("seal.signing_key", &mut cfg.seal.signing_key);
        resolve("seal.recipient_key", &mut cfg.seal.recipient_key);
    }

    /// The semantic checks; every problem found, in a stable order.
    fn validate(&self, cfg: &Config) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut fail = |key: String, msg: String| p.push(self.problem(key, msg));

        // gateway
        if let Some(m) = topic_level_problem(&cfg.gateway.id) {
            fail("gateway.id".into(), m);
        }
        if cfg.gateway.state_dir.as_os_str().is_empty() {
            fail("gateway.state_dir".into(), "must not be empty".into());
        }

        // sensors
        if cfg.sensor.is_empty() {
            fail(
                "sensor".into(),
                "at least one [[sensor]] table is required".into(),
            );
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut devices: HashMap<&Path, usize> = HashMap::new();
        for (i, s) in cfg.sensor.iter().enumerate() {
            let k = |f: &str| format!("sensor[{i}].{f}");
            if let Some(m) = topic_level_problem(&s.name) {
                fail(k("name"), m);
            } else if let Some(j) = names.insert(&s.name, i) {
                fail(
                    k("name"),
                    format!(
                        "\"{}\" is already the name of sensor[{j}]; names must be unique",
                        s.name
                    ),
                );
            }
            if s.device.as_os_str().is_empty() {
                fail(k("device"), "must not be empty".into());
            } else if let Some(j) = devices.insert(&s.device, i) {
                fail(
                    k("device"),
                    format!(
                        "{} is already the device of sensor[{j}]",
                        s.device.display()
                    ),
                );
            }
            if !STANDARD_BAUD_RATES.contains(&s.baud) {
                fail(
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
            if s.columns.is_empty() {
                fail(
                    k("columns"),
                    "must name at least one column, in the order the device sends them".into(),
                );
            }
            let mut seen = HashSet::new();
            for (c, col) in s.columns.iter().enumerate() {
                if col.trim().is_empty() {
                    fail(
                        format!("sensor[{i}].columns[{c}]"),
                        "a column name must not be empty".into(),
                    );
                } else if col.chars().any(char::is_control) {
                    fail(
                        format!("sensor[{i}].columns[{c}]"),
                        "a column name must not contain control characters".into(),
                    );
                } else if !seen.insert(col.as_str()) {
                    fail(
                        format!("sensor[{i}].columns[{c}]"),
                        format!("column \"{col}\" appears twice; column names must be unique"),
                    );
                }
            }
            if s.delimiter == '\n' || s.delimiter == '\r' {
                fail(
                    k("delimiter"),
                    "must not be a line break: lines framing already cuts frames there".into(),
                );
            }
            if !(16..=MIB as usize).contains(&s.max_frame) {
                fail(
                    k("max_frame"),
                    format!(
                        "{} is out of range; use 16B to 1MiB",
                        format_size(s.max_frame as u64)
                    ),
                );
            }
        }

        // mqtt
        let m = &cfg.mqtt;
        if m.host.trim().is_empty() {
            fail("mqtt.host".into(), "must not be empty".into());
        }
        if m.port == 0 {
            fail(
                "mqtt.port".into(),
                "0 is not a usable port; the TLS default is 8883".into(),
            );
        }
        if m.client_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.chars().any(char::is_control))
        {
            fail(
                "mqtt.client_id".into(),
                "must be non-empty and free of control characters".into(),
            );
        }
        if let Some(msg) = topic_template_problem(&m.topic) {
            fail("mqtt.topic".into(), msg);
        }
        if m.qos != 1 {
            fail(
                "mqtt.qos".into(),
                format!(
                    "{} is not supported; only 1 (at least once) is: the spool keeps a sealed message until the broker acknowledges it",
                    m.qos
                ),
            );
        }
        if m.tls {
            for (key, v) in [
                ("mqtt.ca_file", &m.ca_file),
                ("mqtt.cert_file", &m.cert_file),
                ("mqtt.key_file", &m.key_file),
            ] {
                if v.is_none() {
                    p.push(Problem {
                        source: self.origin_any(&[key, "mqtt.tls", "mqtt.host"]),
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
                p.push(self.problem(
                    key,
                    format!(
                        "\"{name}\" is neither a DNS name nor an IP address, so the broker's certificate cannot be checked against it"
                    ),
                ));
            }
        }
        let mut fail = |key: &str, msg: String| p.push(self.problem(key, msg));
        if m.keepalive < Duration::from_secs(1)
            || m.keepalive > Duration::from_secs(u16::MAX.into())
        {
            fail(
                "mqtt.keepalive",
                format!(
                    "{} is out of range; use 1s to 65535s (the MQTT keep-alive is whole seconds)",
                    humantime::format_duration(m.keepalive)
                ),
            );
        } else if m.keepalive.subsec_nanos() != 0 {
            fail(
                "mqtt.keepalive",
                format!(
                    "{} is not whole seconds, which MQTT keep-alive requires",
                    humantime::format_duration(m.keepalive)
                ),
            );
        }
        if m.connect_timeout.is_zero() {
            fail("mqtt.connect_timeout", "must be more than 0s".into());
        }
        if m.reconnect_min.is_zero() {
            fail(
                "mqtt.reconnect_min",
                "must be more than 0s, or a broker outage turns into a reconnect storm".into(),
            );
        }
        if m.reconnect_min > m.reconnect_max {
            fail(
                "mqtt.reconnect_min",
                format!(
                    "{} is more than mqtt.reconnect_max ({}); the backoff grows from min to max",
                    humantime::format_duration(m.reconnect_min),
                    humantime::format_duration(m.reconnect_max)
                ),
            );
        }
        if !(1..=1000).contains(&m.max_inflight) {
            fail(
                "mqtt.max_inflight",
                format!("{} is out of range; use 1 to 1000", m.max_inflight),
            );
        }

        // batch, buffer
        if !(1..=10_000).contains(&cfg.batch.max_records) {
            fail(
                "batch.max_records",
                format!("{} is out of range; use 1 to 10000", cfg.batch.max_records),
            );
        }
        if (cfg.buffer.memory as u64) < 64 * KIB {
            fail(
                "buffer.memory",
                format!(
                    "{} is too small; use at least 64KiB",
                    format_size(cfg.buffer.memory as u64)
                ),
            );
        }

        // seal
        let all_columns: HashSet<&str> = cfg
            .sensor
            .iter()
            .flat_map(|s| s.columns.iter().map(String::as_str))
            .collect();
        for (i, name) in cfg.seal.encrypt.iter().enumerate() {
            if !all_columns.contains(name.as_str()) {
                let mut known: Vec<&str> = all_columns.iter().copied().collect();
                known.sort();
                let hint = closest(name, &known)
                    .map(|c| format!("did you mean \"{c}\"? "))
                    .unwrap_or_default();
                fail(
                    &format!("seal.encrypt[{i}]"),
                    format!(
                        "\"{name}\" is not a column of any sensor, so nothing would be encrypted under that name; {hint}the columns are: {}",
                        known.join(", ")
                    ),
                );
            }
        }
        for (key, path) in [
            ("seal.signing_key", &cfg.seal.signing_key),
            ("seal.recipient_key", &cfg.seal.recipient_key),
        ] {
            if path.as_os_str().is_empty() {
                fail(key, "must not be empty".into());
            }
        }

        // log
        if let Some(msg) = log_level_problem(&cfg.log.level) {
            fail("log.level", msg);
        }
        if cfg.log.stats_interval < Duration::from_secs(1) {
            fail(
                "log.stats_interval",
                format!(
                    "{} is too short; use 1s or more",
                    humantime::format_duration(cfg.log.stats_interval)
                ),
            );
        }
        p
    }
}

/// Looks up a dotted key with `[n]` indexes (`sensor[1].columns[0]`).
fn lookup<'v>(root: &'v Value, key: &str) -> Option<&'v Value> {
    let mut cur = root;
    if key.is_empty() {
        return Some(cur);
    }
    for part in key.split('.') {
        let (name, mut idx) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            let ValueKind::Table(t) = &cur.kind else {
                return None;
            };
            cur = t.get(name)?;
        }
        while let Some(rest) = idx.strip_prefix('[') {
            let end = rest.find(']')?;
            let n: usize = rest[..end].parse().ok()?;
            let ValueKind::Array(a) = &cur.kind else {
                return None;
            };
            cur = a.get(n)?;
            idx = &rest[end + 1..];
        }
    }
    Some(cur)
}

/// Puts back the dot that the `config` crate drops after an index when it
/// builds an error's key (`sensor[0]framing` -> `sensor[0].framing`).
fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']' && chars.peek().is_some_and(|n| *n != '.' && *n != '[') {
            out.push('.');
        }
    }
    out
}

/// The origin of a value, or of the first leaf below it (merged tables lose
/// their own origin; leaves keep theirs).
fn first_origin(v: &Value) -> Option<&str> {
    if let Some(o) = v.origin() {
        return Some(o);
    }
    match &v.kind {
        ValueKind::Table(t) => {
            let mut keys: Vec<&String> = t.keys().collect();
            keys.sort();
            keys.into_iter().find_map(|k| first_origin(&t[k]))
        }
        ValueKind::Array(a) => a.iter().find_map(first_origin),
        _ => None,
    }
}

/// (key, origin, message) of a `config` deserialization error.
fn unpack_de_error(err: config::ConfigError) -> (Option<String>, Option<String>, String) {
    match err {
        config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key,
        } => (
            key,
            origin,
            format!(
                "expected {}, found {unexpected}",
                friendly_expected(expected)
            ),
        ),
        config::ConfigError::At { error, origin, key } => {
            let (inner_key, inner_origin, msg) = unpack_de_error(*error);
            (key.or(inner_key), origin.or(inner_origin), msg)
        }
        config::ConfigError::NotFound(key) => {
            let msg = if key.contains('.') {
                "is required but not set".to_string()
            } else {
                format!("the [{key}] section is required but missing")
            };
            (Some(key), None, msg)
        }
        config::ConfigError::Message(m) => (None, None, m),
        other => (None, None, other.to_string()),
    }
}

/// The `config` crate's names for integer types, in the operator's words.
fn friendly_expected(expected: &str) -> &str {
    match expected {
        "an unsigned 8 bit integer" => "an integer from 0 to 255",
        "an unsigned 16 bit integer" => "an integer from 0 to 65535",
        "an unsigned 32 bit integer" => "an integer from 0 to 4294967295",
        "an unsigned u64 bit integer" | "an unsigned 64 bit or less integer" => {
            "a whole number, 0 or more"
        }
        other => other,
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

fn topic_template_problem(t: &str) -> Option<String> {
    if !t.contains("{sensor}") {
        return Some(format!(
            "\"{t}\" must contain {{sensor}}, or all sensors would publish to one topic"
        ));
    }
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
    None
}

/// Checks a tracing filter more strictly than `EnvFilter` does: there, a
/// misspelt level such as `infoo` silently becomes a target name.
fn log_level_problem(level: &str) -> Option<String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let usage = "use a level (error, warn, info, debug, trace, off) or directives such as \"info,sensorgate::uplink=debug\"";
    if level.trim().is_empty() {
        return Some(format!("must not be empty; {usage}"));
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let lvl = match directive.rsplit_once('=') {
            Some((_, l)) => l,
            None if directive.contains('[') => continue,
            None => directive,
        };
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Some(format!("\"{lvl}\" in \"{level}\" is not a level; {usage}"));
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level) {
        return Some(format!("\"{level}\" is not a valid filter ({e}); {usage}"));
    }
    None
}

/// The closest of `candidates` to `word` by edit distance, if close enough to
/// be a likely typo.
fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The field names a serde struct accepts, read from its derived
/// `Deserialize` (which hands them to `deserialize_struct`). This keeps the
/// unknown-key check in step with the structs by construction.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

// ---------------------------------------------------------------------------
// The effective configuration as TOML
// ---------------------------------------------------------------------------

/// A value as TOML text. Implemented by [`Secret`] as `"<redacted>"`, which
/// is how `check-config` output stays free of secrets.
trait ToToml {
    fn to_toml(&self) -> String;
}

fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl ToToml for str {
    fn to_toml(&self) -> String {
        toml_string(self)
    }
}
impl ToToml for String {
    fn to_toml(&self) -> String {
        toml_string(self)
    }
}
impl ToToml for Path {
    fn to_toml(&self) -> String {
        toml_string(&self.to_string_lossy())
    }
}
impl ToToml for PathBuf {
    fn to_toml(&self) -> String {
        self.as_path().to_toml()
    }
}
impl ToToml for char {
    fn to_toml(&self) -> String {
        toml_string(&self.to_string())
    }
}
impl ToToml for bool {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}
impl ToToml for u8 {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}
impl ToToml for u16 {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}
impl ToToml for u32 {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}
impl ToToml for usize {
    fn to_toml(&self) -> String {
        self.to_string()
    }
}
impl ToToml for Duration {
    fn to_toml(&self) -> String {
        toml_string(&humantime::format_duration(*self).to_string())
    }
}
impl ToToml for [String] {
    fn to_toml(&self) -> String {
        let items: Vec<String> = self.iter().map(|s| toml_string(s)).collect();
        format!("[{}]", items.join(", "))
    }
}
impl ToToml for Secret {
    fn to_toml(&self) -> String {
        toml_string("<redacted>")
    }
}

/// A size in bytes, written with a unit.
struct Size(u64);
impl ToToml for Size {
    fn to_toml(&self) -> String {
        toml_string(&format_size(self.0))
    }
}

/// A choice enum, written as its configuration spelling.
struct Choice(&'static str);
impl ToToml for Choice {
    fn to_toml(&self) -> String {
        toml_string(self.0)
    }
}

struct TomlWriter(String);

impl TomlWriter {
    fn table(&mut self, name: &str) {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        let _ = writeln!(self.0, "[{name}]");
    }
    fn array_table(&mut self, name: &str) {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        let _ = writeln!(self.0, "[[{name}]]");
    }
    fn kv<T: ToToml + ?Sized>(&mut self, key: &str, v: &T) {
        let _ = writeln!(self.0, "{key} = {}", v.to_toml());
    }
    fn opt<T: ToToml>(&mut self, key: &str, v: &Option<T>) {
        match v {
            Some(v) => self.kv(key, v),
            None => {
                let _ = writeln!(self.0, "# {key} is not set");
            }
        }
    }
}

/// The effective configuration as TOML that [`load`] reads back to the same
/// [`Config`], with defaults filled in and secrets redacted. This is what
/// `check-config` prints.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut w = TomlWriter(String::new());
        w.table("gateway");
        w.kv("id", &self.gateway.id);
        w.kv("state_dir", &self.gateway.state_dir);
        for s in &self.sensor {
            w.array_table("sensor");
            w.kv("name", &s.name);
            w.kv("device", &s.device);
            w.kv("baud", &s.baud);
            w.kv("framing", &Choice(s.framing.as_str()));
            w.kv("format", &Choice(s.format.as_str()));
            w.kv("columns", s.columns.as_slice());
            w.kv("delimiter", &s.delimiter);
            w.kv("max_frame", &Size(s.max_frame as u64));
        }
        let m = &self.mqtt;
        w.table("mqtt");
        w.kv("host", &m.host);
        w.kv("port", &m.port);
        w.kv("client_id", m.client_id(&self.gateway));
        w.kv("topic", &m.topic);
        w.kv("qos", &m.qos);
        w.kv("tls", &m.tls);
        w.opt("ca_file", &m.ca_file);
        w.opt("cert_file", &m.cert_file);
        w.opt("key_file", &m.key_file);
        w.opt("server_name", &m.server_name);
        w.kv("keepalive", &m.keepalive);
        w.kv("connect_timeout", &m.connect_timeout);
        w.kv("reconnect_min", &m.reconnect_min);
        w.kv("reconnect_max", &m.reconnect_max);
        w.kv("max_inflight", &m.max_inflight);
        w.kv("drain_timeout", &m.drain_timeout);
        w.table("batch");
        w.kv("max_records", &self.batch.max_records);
        w.kv("linger", &self.batch.linger);
        w.table("buffer");
        w.kv("memory", &Size(self.buffer.memory as u64));
        w.kv("disk", &Size(self.buffer.disk));
        w.kv("when_full", &Choice(self.buffer.when_full.as_str()));
        w.table("seal");
        w.kv("signing_key", &self.seal.signing_key);
        w.kv("recipient_key", &self.seal.recipient_key);
        w.kv("encrypt", self.seal.encrypt.as_slice());
        w.table("log");
        w.kv("level", &self.log.level);
        w.kv("format", &Choice(self.log.format.as_str()));
        w.kv("stats_interval", &self.log.stats_interval);
        f.write_str(&w.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sensorgate.toml")
    }

    /// The smallest valid configuration, leaving everything else at its
    /// default.
    const MINIMAL: &str = r#"
[gateway]
id = "gw1"

[[sensor]]
name = "s1"
device = "/dev/ttyUSB0"
columns = ["a", "b"]

[mqtt]
host = "localhost"
tls = false

[seal]
signing_key = "/k/gw.key"
recipient_key = "/k/r.pub"
"#;

    /// A temporary folder with `sensorgate.toml` and optional `conf.d/`
    /// files.
    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new(main: &str) -> Dir {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("sensorgate.toml"), main).unwrap();
            Dir { dir }
        }
        fn example() -> Dir {
            Dir::new(&fs::read_to_string(example()).unwrap())
        }
        fn main(&self) -> PathBuf {
            self.dir.path().join("sensorgate.toml")
        }
        fn conf_d(&self, name: &str, text: &str) -> PathBuf {
            let d = self.dir.path().join("conf.d");
            fs::create_dir_all(&d).unwrap();
            let p = d.join(name);
            fs::write(&p, text).unwrap();
            p
        }
        fn load(&self) -> Result<Config, ConfigError> {
            load_with_env(&self.main(), &[])
        }
        fn load_env(&self, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            load_with_env(&self.main(), &env)
        }
    }

    /// The one problem of an `Invalid` error.
    fn only_problem(e: ConfigError) -> Problem {
        match e {
            ConfigError::Invalid(mut p) if p.len() == 1 => p.remove(0),
            other => panic!("expected one problem, got: {other}"),
        }
    }

    fn problem_at(e: &ConfigError, key: &str) -> Problem {
        e.problems()
            .iter()
            .find(|p| p.key == key)
            .cloned()
            .unwrap_or_else(|| panic!("no problem at `{key}` in: {e}"))
    }

    #[test]
    fn the_example_configuration_loads() {
        let cfg = load_with_env(&example(), &[]).unwrap();
        assert_eq!(cfg.gateway.id, "bike-pi-01");
        assert_eq!(cfg.sensor.len(), 2);
        assert_eq!(cfg.sensor[0].columns.len(), 6);
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
                memory: 8 << 20,
                disk: 256 << 20,
                when_full: WhenFull::DropOldest
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
    fn a_typo_in_the_main_file_names_the_file_and_the_key() {
        let d = Dir::example();
        let text = fs::read_to_string(d.main())
            .unwrap()
            .replace("linger = ", "lingr = ");
        fs::write(d.main(), text).unwrap();
        let e = d.load().unwrap_err();
        assert_eq!(e.exit_code(), 78);
        let p = only_problem(e);
        assert_eq!(p.source, d.main().display().to_string());
        assert_eq!(p.key, "batch.lingr");
        assert!(p.message.contains("did you mean `linger`"), "{}", p.message);
    }

    #[test]
    fn a_typo_in_a_conf_d_file_names_that_file() {
        let d = Dir::example();
        d.conf_d("05-ok.toml", "[mqtt]\nport = 8884\n");
        let bad = d.conf_d("10-x.toml", "[mqtt]\nhots = \"broker2\"\n");
        let e = d.load().unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("conf.d/10-x.toml") && msg.contains("mqtt.hots"),
            "{msg}"
        );
        let p = only_problem(e);
        assert_eq!(p.source, bad.display().to_string());
        assert!(p.message.contains("did you mean `host`"));
    }

    #[test]
    fn unknown_keys_are_found_everywhere_and_all_reported() {
        let d = Dir::example();
        d.conf_d(
            "10-x.toml",
            "colour = 1\n[mqqt]\nhost = \"x\"\n[gateway]\nname = \"x\"\n",
        );
        let text =
            fs::read_to_string(d.main())
                .unwrap()
                .replacen("baud = 115200", "bud = 115200", 1);
        fs::write(d.main(), text).unwrap();
        let e = d.load().unwrap_err();
        let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["colour", "mqqt", "gateway.name", "sensor[1].bud"],
            "{e}"
        );
        assert!(
            problem_at(&e, "mqqt")
                .message
                .contains("did you mean `mqtt`")
        );
        assert!(problem_at(&e, "mqqt").source.ends_with("conf.d/10-x.toml"));
        assert_eq!(
            problem_at(&e, "sensor[1].bud").source,
            d.main().display().to_string()
        );
    }

    #[test]
    fn a_type_error_in_a_conf_d_file_names_that_file() {
        let d = Dir::example();
        let bad = d.conf_d("20-y.toml", "[mqtt]\nport = \"eighty\"\n");
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.source, bad.display().to_string());
        assert_eq!(p.key, "mqtt.port");
        assert!(p.message.contains("eighty"), "{}", p.message);

        let d = Dir::example();
        let bad = d.conf_d("20-y.toml", "[mqtt]\nport = 70000\n");
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(
            (p.source, p.key),
            (bad.display().to_string(), "mqtt.port".to_string())
        );
    }

    #[test]
    fn a_bad_duration_names_the_file_and_the_key() {
        let d = Dir::example();
        let text = fs::read_to_string(d.main())
            .unwrap()
            .replace("linger = \"200ms\"", "linger = \"fast\"");
        fs::write(d.main(), text).unwrap();
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.source, d.main().display().to_string());
        assert_eq!(p.key, "batch.linger");
        assert!(
            p.message.contains("\"fast\"") && p.message.contains("30s"),
            "{}",
            p.message
        );

        let d = Dir::example();
        let bad = d.conf_d("30-z.toml", "[mqtt]\nkeepalive = 30\n");
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(
            (p.source.as_str(), p.key.as_str()),
            (bad.display().to_string().as_str(), "mqtt.keepalive")
        );
        assert!(p.message.contains("\"30s\""), "{}", p.message);
    }

    #[test]
    fn a_bad_size_names_the_key() {
        let d = Dir::new(&MINIMAL.replace("[mqtt]", "[buffer]\nmemory = \"8 megs\"\n\n[mqtt]"));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "buffer.memory");
        assert!(p.message.contains("megs"), "{}", p.message);
    }

    #[test]
    fn conf_d_files_override_in_name_order() {
        let d = Dir::example();
        d.conf_d("20-b.toml", "[mqtt]\nport = 2000\n");
        d.conf_d("10-a.toml", "[mqtt]\nport = 1000\nhost = \"a.example\"\n");
        d.conf_d("README", "not toml at all [");
        d.conf_d(".#20-b.toml", "not toml at all [");
        d.conf_d("30-c.toml.disabled", "not toml at all [");
        let cfg = d.load().unwrap();
        assert_eq!(cfg.mqtt.port, 2000);
        assert_eq!(cfg.mqtt.host, "a.example");
        // untouched keys keep the main file's values
        assert_eq!(cfg.mqtt.topic, "sensorgate/{gateway}/{sensor}");
        assert_eq!(cfg.sensor.len(), 2);
    }

    #[test]
    fn a_conf_d_sensor_list_replaces_the_main_one() {
        let d = Dir::example();
        d.conf_d(
            "10-sensors.toml",
            "[[sensor]]\nname = \"gps\"\ndevice = \"/dev/ttyACM0\"\ncolumns = [\"heart_rate\", \"incline\", \"resistance\"]\n",
        );
        let cfg = d.load().unwrap();
        assert_eq!(cfg.sensor.len(), 1);
        assert_eq!(cfg.sensor[0].name, "gps");
    }

    #[test]
    fn environment_overrides_files() {
        let d = Dir::example();
        d.conf_d("10-a.toml", "[mqtt]\nport = 1000\n");
        let cfg = d
            .load_env(&[
                ("SENSORGATE__MQTT__PORT", "9999"),
                ("SENSORGATE__MQTT__HOST", "env.example"),
                ("SENSORGATE__MQTT__TLS", "true"),
                ("SENSORGATE__BATCH__LINGER", "1s"),
                ("SENSORGATE__SEAL__ENCRYPT", "speed, power"),
                ("SENSORGATE_CONFIG", "/ignored"),
                ("PATH", "/usr/bin"),
            ])
            .unwrap();
        assert_eq!(cfg.mqtt.port, 9999);
        assert_eq!(cfg.mqtt.host, "env.example");
        assert_eq!(cfg.batch.linger, Duration::from_secs(1));
        assert_eq!(cfg.seal.encrypt, ["speed", "power"]);
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let d = Dir::example();
        let e = d
            .load_env(&[("SENSORGATE__MQTT__PORT", "http")])
            .unwrap_err();
        let p = only_problem(e);
        assert_eq!(p.source, "environment variable SENSORGATE__MQTT__PORT");
        assert_eq!(p.key, "mqtt.port");

        let e = d.load_env(&[("SENSORGATE__MQTT__QOS", "2")]).unwrap_err();
        let p = only_problem(e);
        assert_eq!(p.source, "environment variable SENSORGATE__MQTT__QOS");
        assert_eq!(p.key, "mqtt.qos");

        let e = d.load_env(&[("SENSORGATE__MQTT__HOTS", "x")]).unwrap_err();
        let p = only_problem(e);
        assert_eq!(p.source, "environment variable SENSORGATE__MQTT__HOTS");
        assert_eq!(p.key, "mqtt.hots");

        let e = d
            .load_env(&[("SENSORGATE__MQTT____HOST", "x")])
            .unwrap_err();
        assert!(e.to_string().contains("SENSORGATE__MQTT____HOST"), "{e}");

        let e = d
            .load_env(&[("SENSORGATE__SEAL__ENCRYPT", "speed,nope")])
            .unwrap_err();
        let p = only_problem(e);
        assert_eq!(p.source, "environment variable SENSORGATE__SEAL__ENCRYPT");
        assert_eq!(p.key, "seal.encrypt[1]");
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.toml");
        let e = load_with_env(&p, &[]).unwrap_err();
        assert!(matches!(e, ConfigError::NotFound { .. }));
        assert_eq!(e.exit_code(), 66);
        let msg = e.to_string();
        assert!(
            msg.contains("nope.toml") && msg.contains("--config"),
            "{msg}"
        );
    }

    #[test]
    fn an_unreadable_file_or_conf_d_is_an_error() {
        let d = Dir::new(MINIMAL);
        fs::create_dir(d.dir.path().join("conf.d")).unwrap();
        fs::create_dir(d.dir.path().join("conf.d/50-dir.toml")).unwrap();
        d.load().unwrap(); // a folder named *.toml is skipped
        fs::set_permissions(d.main(), fs::Permissions::from_mode(0o000)).unwrap();
        if fs::read(d.main()).is_ok() {
            return; // running as root, who reads everything
        }
        let e = d.load().unwrap_err();
        assert_eq!(e.exit_code(), 77);
    }

    #[test]
    fn a_toml_syntax_error_names_the_file() {
        let d = Dir::example();
        let bad = d.conf_d("10-x.toml", "[mqtt\nport = 1\n");
        let e = d.load().unwrap_err();
        assert_eq!(e.exit_code(), 78);
        let msg = e.to_string();
        assert!(
            msg.contains(&bad.display().to_string()) && msg.contains("line 1"),
            "{msg}"
        );
    }

    #[test]
    fn missing_required_keys_are_named() {
        let d = Dir::new(&MINIMAL.replace("host = \"localhost\"\n", ""));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "mqtt.host");
        assert_eq!(p.source, d.main().display().to_string());
        assert!(p.message.contains("required"));

        let d = Dir::new(
            &MINIMAL
                .replace("[seal]", "[unused]")
                .replace("signing_key", "#")
                .replace("recipient_key", "#"),
        );
        let e = d.load().unwrap_err();
        assert!(e.to_string().contains("unused"), "{e}");

        let text = MINIMAL.replace(
            "[seal]\nsigning_key = \"/k/gw.key\"\nrecipient_key = \"/k/r.pub\"\n",
            "",
        );
        let p = only_problem(Dir::new(&text).load().unwrap_err());
        assert_eq!(p.key, "seal");
        assert!(
            p.message.contains("[seal] section is required"),
            "{}",
            p.message
        );
    }

    #[test]
    fn sensors_must_be_double_bracket_tables() {
        let d = Dir::new(&MINIMAL.replace("[[sensor]]", "[sensor]"));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor");
        assert!(p.message.contains("[[sensor]]"));
        let d = Dir::new(&MINIMAL.replace(
            "[[sensor]]\nname = \"s1\"\ndevice = \"/dev/ttyUSB0\"\ncolumns = [\"a\", \"b\"]\n",
            "",
        ));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor");
        assert!(p.message.contains("at least one"));
    }

    #[test]
    fn planned_framings_and_formats_say_not_yet() {
        let d = Dir::new(&MINIMAL.replace("columns =", "framing = \"nmea\"\ncolumns ="));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor[0].framing");
        assert!(
            p.message.contains("not supported yet in this version"),
            "{}",
            p.message
        );
        let d = Dir::new(&MINIMAL.replace("columns =", "format = \"json\"\ncolumns ="));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor[0].format");
        assert!(p.message.contains("not supported yet in this version"));
        let d = Dir::new(&MINIMAL.replace("columns =", "format = \"xml\"\ncolumns ="));
        let p = only_problem(d.load().unwrap_err());
        assert!(
            p.message.contains("unknown format \"xml\""),
            "{}",
            p.message
        );
        let d =
            Dir::new(&MINIMAL.replace("[mqtt]", "[buffer]\nwhen_full = \"drop_newest\"\n[mqtt]"));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "buffer.when_full");
        assert!(
            p.message.contains("\"drop_oldest\", \"block\""),
            "{}",
            p.message
        );
    }

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

[seal]
signing_key = "/k/gw.key"
recipient_key = "/k/r.pub"
encrypt = ["a", "b"]

[log]
level = "infoo"
stats_interval = "0s"
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
            "seal.encrypt[1]",
            "log.level",
            "log.stats_interval",
        ] {
            let p = problem_at(&e, key);
            assert_eq!(p.source, d.main().display().to_string(), "{key}");
        }
        assert_eq!(e.problems().len(), 24, "{e}");
        assert!(problem_at(&e, "mqtt.qos").message.contains("at least once"));
        assert!(problem_at(&e, "sensor[0].baud").message.contains("921600"));
        // the rendered error lists every problem on its own line
        assert_eq!(e.to_string().lines().count(), 25);
    }

    #[test]
    fn problems_from_a_conf_d_value_name_the_conf_d_file() {
        let d = Dir::new(MINIMAL);
        let f = d.conf_d("10-mqtt.toml", "[mqtt]\nqos = 0\nreconnect_min = \"5m\"\n");
        let e = d.load().unwrap_err();
        assert_eq!(problem_at(&e, "mqtt.qos").source, f.display().to_string());
        assert_eq!(
            problem_at(&e, "mqtt.reconnect_min").source,
            f.display().to_string()
        );
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
    fn relative_paths_are_relative_to_the_file_that_sets_them() {
        let text = MINIMAL.replace(
            "tls = false",
            "ca_file = \"tls/ca.pem\"\ncert_file = \"/abs/c.pem\"\nkey_file = \"c.key\"",
        );
        let d = Dir::new(&text);
        d.conf_d("10-k.toml", "[mqtt]\nkey_file = \"keys/c.key\"\n");
        let cfg = d
            .load_env(&[("SENSORGATE__SEAL__SIGNING_KEY", "rel/gw.key")])
            .unwrap();
        let root = d.dir.path();
        assert_eq!(cfg.mqtt.ca_file.unwrap(), root.join("tls/ca.pem"));
        assert_eq!(cfg.mqtt.cert_file.unwrap(), Path::new("/abs/c.pem"));
        assert_eq!(cfg.mqtt.key_file.unwrap(), root.join("conf.d/keys/c.key"));
        assert_eq!(cfg.seal.signing_key, Path::new("rel/gw.key"));
    }

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
        assert_eq!(Dir::new(&odd.to_string()).load().unwrap(), odd);
    }

    #[test]
    fn secrets_never_show() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(s.expose(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!s.to_toml().contains("hunter2"));
        assert_eq!(s.to_toml(), "\"<redacted>\"");
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
    }

    #[test]
    fn error_keys_get_their_dots_back() {
        assert_eq!(normalize_key("sensor[0]framing"), "sensor[0].framing");
        assert_eq!(normalize_key("sensor[0].framing"), "sensor[0].framing");
        assert_eq!(normalize_key("a[1][2]b"), "a[1][2].b");
        assert_eq!(normalize_key("seal.encrypt[1]"), "seal.encrypt[1]");
    }

    #[test]
    fn a_bad_value_in_a_sensor_names_its_index() {
        let text = fs::read_to_string(example())
            .unwrap()
            .replace("baud = 115200", "baud = \"fast\"");
        let d = Dir::new(&text);
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "sensor[1].baud");
        assert_eq!(p.source, d.main().display().to_string());
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

    #[test]
    fn field_lists_come_from_the_structs() {
        assert_eq!(
            fields_of::<Config>(),
            [
                "gateway", "sensor", "mqtt", "batch", "buffer", "seal", "log"
            ]
        );
        assert!(fields_of::<Mqtt>().contains(&"drain_timeout"));
        assert_eq!(fields_of::<Batch>(), ["max_records", "linger"]);
    }

    #[test]
    fn sizes_parse_in_iec_si_and_bytes() {
        for (s, n) in [
            ("0", 0),
            ("1500", 1500),
            ("16B", 16),
            ("1KiB", 1024),
            ("64KiB", 65536),
            ("256MiB", 256 << 20),
            ("8 MiB", 8 << 20),
            ("2GiB", 2 << 30),
            ("1TiB", 1 << 40),
            ("1kB", 1000),
            ("1KB", 1000),
            ("1MB", 1_000_000),
            ("3GB", 3_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("1mib", 1 << 20),
            (" 7 kib ", 7168),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for s in [
            "",
            "KiB",
            "1K",
            "1M",
            "1.5MiB",
            "-1",
            "1 MiBs",
            "99999999999999999999",
            "16EiB",
            "20000000TiB",
        ] {
            assert!(parse_size(s).is_err(), "{s}");
        }
        assert!(parse_size("1K").unwrap_err().contains("KiB"));
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1024), "1KiB");
        assert_eq!(format_size(1_000_000), "1MB");
        assert_eq!(format_size(1536), "3kB".replace("3kB", "1536B"));
        assert_eq!(format_size(256 << 20), "256MiB");
    }

    #[test]
    fn durations_parse_with_units_only() {
        let d = Dir::new(&MINIMAL.replace("[mqtt]", "[batch]\nlinger = \"1m 30s\"\n[mqtt]"));
        assert_eq!(d.load().unwrap().batch.linger, Duration::from_secs(90));
        let d = Dir::new(&MINIMAL.replace("[mqtt]", "[batch]\nlinger = 1.5\n[mqtt]"));
        let p = only_problem(d.load().unwrap_err());
        assert_eq!(p.key, "batch.linger");
        assert!(p.message.contains("duration"), "{}", p.message);
    }

    #[test]
    fn log_levels_are_checked_strictly() {
        for ok in [
            "info",
            "WARN",
            "off",
            "info,sensorgate=debug",
            "sensorgate::uplink=trace",
            "info,[span]",
        ] {
            assert_eq!(log_level_problem(ok), None, "{ok}");
        }
        for bad in ["", "infoo", "info,sensorgate=loud", "sensorgate=debug=1"] {
            assert!(log_level_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn exit_codes_follow_sysexits() {
        let nf = ConfigError::NotFound { path: "x".into() };
        assert_eq!(nf.exit_code(), 66);
        let perm = ConfigError::Read {
            path: "x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(perm.exit_code(), 77);
        assert_eq!(ConfigError::Invalid(vec![]).exit_code(), 78);
    }

    proptest! {
        #[test]
        fn format_size_reads_back(n in any::<u64>()) {
            prop_assert_eq!(parse_size(&format_size(n)), Ok(n));
        }

        #[test]
        fn units_multiply(n in 0u64..1_000_000, unit in prop::sample::select(vec![
            ("B", 1u64), ("KiB", 1024), ("MiB", 1 << 20), ("GiB", 1 << 30),
            ("kB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000),
        ])) {
            prop_assert_eq!(parse_size(&format!("{n}{}", unit.0)), Ok(n * unit.1));
            prop_assert_eq!(parse_size(&format!("{n} {}", unit.0.to_lowercase())), Ok(n * unit.1));
        }

        #[test]
        fn parse_size_never_panics(s in "\\PC{0,24}") {
            let _ = parse_size(&s);
        }

        #[test]
        fn toml_strings_read_back(s in "\\PC{0,24}|[\\x00-\\x1f\\x7f\"\\\\]{0,8}") {
            let text = format!("k = {}\n", toml_string(&s));
            let parsed = FileFormat::Toml.parse(None, &text).unwrap();
            prop_assert_eq!(parsed["k"].clone().into_string().unwrap(), s);
        }
    }
}
