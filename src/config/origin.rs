//! Where each value came from, so that every problem names its file (or
//! environment variable) and its key.
//!
//! The `config` crate forgets which file a merged key came from in its own
//! error messages, but each leaf [`config::Value`] keeps its origin; this
//! module keeps the merged tree and looks the origin of a problem's key up
//! in it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use config::{Value, ValueKind};

use super::error::Problem;
use super::load::origin_of_file;
use super::{Config, KeyRef};

/// The merged tree with its origins, for attributing problems.
pub(super) struct Context<'a> {
    pub tree: &'a Value,
    pub main: &'a Path,
    /// Origin string -> file, for resolving relative paths.
    pub files: &'a HashMap<String, PathBuf>,
}

impl Context<'_> {
    /// Where the value at `key` came from: the origin of that value, or of
    /// the first leaf below it; the main file when the key is not set at all
    /// (a missing key "would have to be" in the main file).
    pub fn origin(&self, key: &str) -> String {
        lookup(self.tree, key)
            .and_then(first_origin)
            .map(str::to_string)
            .unwrap_or_else(|| origin_of_file(self.main))
    }

    /// Like [`Context::origin`], for the first of `keys` that is set.
    pub fn origin_any(&self, keys: &[&str]) -> String {
        keys.iter()
            .find_map(|k| lookup(self.tree, k).and_then(first_origin))
            .map(str::to_string)
            .unwrap_or_else(|| origin_of_file(self.main))
    }

    /// The origin of `v` itself (not of a key), or the main file.
    pub fn origin_of(&self, v: &Value) -> String {
        first_origin(v)
            .map(str::to_string)
            .unwrap_or_else(|| origin_of_file(self.main))
    }

    pub fn problem(&self, key: impl Into<String>, message: impl Into<String>) -> Problem {
        let key = key.into();
        Problem {
            source: self.origin(&key),
            key,
            message: message.into(),
        }
    }

    /// Turns a deserialization error of the `config` crate into a problem
    /// with our wording; the crate already tracks the dotted key.
    pub fn problem_from_de(&self, err: config::ConfigError) -> Problem {
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
    pub fn resolve_paths(&self, cfg: &mut Config) {
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
            ("mqtt.ca_file", cfg.mqtt.ca_file.as_mut()),
            ("mqtt.cert_file", cfg.mqtt.cert_file.as_mut()),
            (
                "mqtt.key_file",
                cfg.mqtt.key_file.as_mut().and_then(KeyRef::path_mut),
            ),
            ("seal.signing_key", cfg.seal.signing_key.path_mut()),
        ] {
            if let Some(p) = p {
                resolve(key, p);
            }
        }
        resolve("seal.recipient_key", &mut cfg.seal.recipient_key);
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::test_support::{Dir, MINIMAL, example, only_problem, problem_at};
    use super::*;

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
        assert_eq!(
            cfg.mqtt.key_file.unwrap(),
            KeyRef::File(root.join("conf.d/keys/c.key"))
        );
        assert_eq!(cfg.seal.signing_key.path(), Some(Path::new("rel/gw.key")));
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
}
