//! Configurations on disk for the tests of this module.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Config, ConfigError, Problem, load_with_env};

/// The shipped example, `config/sensorgate.toml`.
pub fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sensorgate.toml")
}

/// The smallest valid configuration, leaving everything else at its
/// default.
pub const MINIMAL: &str = r#"
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
pub struct Dir {
    pub dir: tempfile::TempDir,
}

impl Dir {
    pub fn new(main: &str) -> Dir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sensorgate.toml"), main).unwrap();
        Dir { dir }
    }
    pub fn example() -> Dir {
        Dir::new(&fs::read_to_string(example()).unwrap())
    }
    pub fn main(&self) -> PathBuf {
        self.dir.path().join("sensorgate.toml")
    }
    pub fn conf_d(&self, name: &str, text: &str) -> PathBuf {
        let d = self.dir.path().join("conf.d");
        fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        fs::write(&p, text).unwrap();
        p
    }
    pub fn load(&self) -> Result<Config, ConfigError> {
        load_with_env(&self.main(), &[])
    }
    pub fn load_env(&self, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_with_env(&self.main(), &env)
    }
}

/// The one problem of an `Invalid` error.
pub fn only_problem(e: ConfigError) -> Problem {
    match e {
        ConfigError::Invalid(mut p) if p.len() == 1 => p.remove(0),
        other => panic!("expected one problem, got: {other}"),
    }
}

/// The problem at `key`, which must be there.
pub fn problem_at(e: &ConfigError, key: &str) -> Problem {
    e.problems()
        .iter()
        .find(|p| p.key == key)
        .cloned()
        .unwrap_or_else(|| panic!("no problem at `{key}` in: {e}"))
}
