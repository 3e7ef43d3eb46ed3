//! The sources of a configuration and their merging: the main file, the
//! `conf.d/` files beside it, and the environment, each value tagged with
//! the origin (file or variable) that problems name.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use config::{FileFormat, Format as _, Map, Source, Value};

use super::{ConfigError, ENV_PREFIX, Problem};

/// Keys whose value is a list; set from the environment as a comma-separated
/// string.
const ENV_LIST_KEYS: &[&str] = &["seal.encrypt", "mqtt.alpn"];

/// The merged tree, and the file behind each origin string in it.
pub(super) struct Merged {
    pub tree: Value,
    /// Origin string -> file, for resolving relative paths.
    pub files: HashMap<String, PathBuf>,
}

/// Reads `path`, its `conf.d/` files and the `SENSORGATE__` variables of
/// `env`, and merges them, later sources overriding earlier ones key by key.
pub(super) fn merge(path: &Path, env: &[(String, String)]) -> Result<Merged, ConfigError> {
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
    Ok(Merged { tree, files })
}

/// The `SENSORGATE__` variables of the process environment. A name or value
/// that is not UTF-8 is a problem, not silently skipped.
pub(super) fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
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
    if bad.is_empty() {
        Ok(env)
    } else {
        Err(ConfigError::Invalid(bad))
    }
}

/// The origin string a file's values carry, and that problems show.
pub(super) fn origin_of_file(path: &Path) -> String {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::super::load_with_env;
    use super::super::test_support::{Dir, MINIMAL, only_problem};
    use super::*;

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
        assert_eq!(cfg.sensor.len(), 5);
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
}
