//! A SoftHSM2 token of the test's own (Debian's `softhsm2`, installed by
//! scripts/install-test-deps): a real PKCS#11 module in a temporary
//! folder, initialised with `softhsm2-util` as an operator would.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian puts the module (a link to the multiarch one).
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

pub const LABEL: &str = "sensorgate";
pub const PIN: &str = "246810";
const SO_PIN: &str = "13579135";

/// A token in a folder of its own, its user PIN in a 0600 file.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub pin: PathBuf,
}

impl SoftHsm {
    pub fn new() -> SoftHsm {
        assert!(
            Path::new(MODULE).is_file(),
            "{MODULE} is missing: the PKCS#11 tests need SoftHSM2. Run scripts/install-test-deps \
             (or scripts/test, which runs it)."
        );
        let dir = tempfile::tempdir().expect("a temporary folder");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let pin = dir.path().join("token.pin");
        super::write_file(&pin, &format!("{PIN}\n"), 0o600);
        let hsm = SoftHsm { dir, conf, pin };
        let out = hsm
            .command("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                LABEL,
                "--so-pin",
                SO_PIN,
                "--pin",
                PIN,
            ])
            .output()
            .expect("softhsm2-util (scripts/install-test-deps installs softhsm2)");
        assert!(out.status.success(), "softhsm2-util: {out:?}");
        hsm
    }

    /// `program` with this token's configuration in its environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    /// The environment a gateway needs to find the token.
    pub fn env(&self) -> [(&'static str, &str); 1] {
        [("SOFTHSM2_CONF", self.conf.to_str().expect("a UTF-8 path"))]
    }

    /// The URI of key `object` in this token, the PIN read from `pin`.
    pub fn uri_with_pin(&self, object: &str, pin: &Path) -> String {
        format!(
            "pkcs11:token={LABEL};object={object}?module-path={MODULE}&pin-source=file:{}",
            pin.display()
        )
    }

    pub fn uri(&self, object: &str) -> String {
        self.uri_with_pin(object, &self.pin)
    }

    /// `sensorgate keygen --pkcs11` for `object`: the .pub written in
    /// `out` and the kid.
    pub fn keygen(&self, object: &str, out: &Path) -> (PathBuf, String) {
        let output = self
            .command(super::gateway_binary())
            .args([
                "keygen",
                "--pkcs11",
                &self.uri(object),
                "--name",
                object,
                "--out",
            ])
            .arg(out)
            .output()
            .expect("sensorgate keygen");
        assert!(output.status.success(), "keygen --pkcs11: {output:?}");
        let kid = String::from_utf8(output.stdout).unwrap().trim().to_string();
        (out.join(format!("{object}.pub")), kid)
    }
}
