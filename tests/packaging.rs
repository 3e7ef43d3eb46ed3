//! The operations side as shipped: the systemd unit (`systemd-analyze
//! verify` and `security`) and the `.deb` (install, provision, check-config
//! as the service user, reinstall, purge).
//!
//! The `.deb` test changes the machine: it installs the package system-wide,
//! creates the `sensorgate` user and purges it all again. It needs root and
//! `cargo-deb` (scripts/install-test-deps installs it), and fails without
//! them; `SENSORGATE_SKIP_PACKAGING=1` skips it on a developer's machine.
//! It refuses to run over a `/usr/bin/sensorgate` that no package owns.
//!
//! Every command runs with a time limit; a failing test purges the package
//! on its way out.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::unistd::{Group, User};
use sensorgate::demo::pki::{self, Pki};
use support::{Outcome, TempDir, run_bounded, wait_until};

/// The unit as it is in the repository (and in the package).
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/sensorgate.service");
/// What `systemd-analyze security` may rate the unit at most ("OK" ends at
/// 3.9; the issue asks for 2.0).
const MAX_EXPOSURE: f64 = 2.0;
const SHORT: Duration = Duration::from_secs(60);
/// dpkg and cargo-deb: unpacking, stripping and compressing ~30 MB.
const LONG: Duration = Duration::from_secs(300);

const PACKAGE: &str = "sensorgate";
const USER: &str = "sensorgate";
const INSTALLED_BINARY: &str = "/usr/bin/sensorgate";
const INSTALLED_UNIT: &str = "/lib/systemd/system/sensorgate.service";
const CONF_DIR: &str = "/etc/sensorgate";
const CONFIG: &str = "/etc/sensorgate/sensorgate.toml";
const STATE_DIR: &str = "/var/lib/sensorgate";
const WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/sensorgate.service";

fn command(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir("/");
    cmd
}

/// Runs `program args` to its end within `limit`.
fn run(program: &str, args: &[&str], limit: Duration) -> Outcome {
    run_bounded(command(program, args), b"", limit)
}

/// Like [`run`], and asserts exit 0.
fn run_ok(program: &str, args: &[&str], limit: Duration) -> Outcome {
    let out = run(program, args, limit);
    assert_eq!(
        out.code,
        0,
        "{program} {} failed\n{}",
        args.join(" "),
        out.shown()
    );
    out
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn require(program: &str, package: &str) {
    assert!(
        have(program),
        "{program} is not installed; the packaging tests need it (apt-get install {package})"
    );
}

// ---------------------------------------------------------------------------
// The unit file
// ---------------------------------------------------------------------------

/// The unit's `Key=value` lines, in order (comments and sections left out).
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn directive<'a>(all: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    all.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Runs `systemd-analyze verify` on `unit` and asserts that it passes: exit
/// 0 and no stderr line about sensorgate. Other lines are what verify says
/// about units ours pulls in (network-online.target, multi-user.target and
/// whatever the host's copies of those pull in): not ours to fix, so they
/// are printed and tolerated. On Debian 12 in a container there are none.
fn assert_verify_clean(unit: &Path) {
    let out = run(
        "systemd-analyze",
        &["verify", "--no-pager", unit.to_str().expect("UTF-8 path")],
        SHORT,
    );
    let ours: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("sensorgate"))
        .collect();
    let others: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.to_ascii_lowercase().contains("sensorgate"))
        .collect();
    for line in &others {
        println!("systemd-analyze verify (about another unit, tolerated): {line}");
    }
    assert!(
        out.code == 0 && ours.is_empty(),
        "systemd-analyze verify {} is not clean\n{}",
        unit.display(),
        out.shown()
    );
    println!(
        "systemd-analyze verify {}: exit 0, {} stderr line(s) about other units",
        unit.display(),
        others.len()
    );
}

/// The number on `systemd-analyze security`'s "Overall exposure level for
/// sensorgate.service: 1.5 OK 🙂" line.
fn overall_exposure(output: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no \"Overall exposure level\" line in\n{output}"));
    let (_, rest) = line
        .rsplit_once(": ")
        .unwrap_or_else(|| panic!("unexpected exposure line {line:?}"));
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in the exposure line {line:?}"))
}

#[test]
fn unit_file_verifies_cleanly_and_rates_at_most_2_0_exposure() {
    require("systemd-analyze", "systemd");
    let text = fs::read_to_string(UNIT).expect("read systemd/sensorgate.service");

    // The contract with the daemon and the package, as the issue states it.
    let all = directives(&text);
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        (
            "ExecStart",
            "/usr/bin/sensorgate run --config /etc/sensorgate/sensorgate.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("WatchdogSec", "30s"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "64 65 77 78"),
        ("User", "sensorgate"),
        ("Group", "sensorgate"),
        ("SupplementaryGroups", "dialout"),
        ("StateDirectory", "sensorgate"),
        ("StateDirectoryMode", "0700"),
        ("ConfigurationDirectory", "sensorgate"),
        ("UMask", "0077"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", ""),
        ("DevicePolicy", "closed"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert_eq!(
            directive(&all, key),
            [value],
            "{UNIT}: expected exactly one {key}={value}"
        );
    }
    let stop = directive(&all, "TimeoutStopSec");
    let stop_s: u64 = stop
        .first()
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{UNIT}: TimeoutStopSec=<N>s expected, found {stop:?}"));
    assert!(
        stop_s >= 20,
        "TimeoutStopSec={stop_s}s leaves too little room over the 10 s drain_timeout"
    );
    for device in ["ttyUSB", "ttyACM", "ttyAMA", "ttyS"] {
        let allow = format!("char-{device} rw");
        assert!(
            directive(&all, "DeviceAllow").contains(&allow.as_str()),
            "{UNIT}: DeviceAllow={allow} missing"
        );
    }

    // verify insists that ExecStart's binary exists. Rather than install
    // it, verify a copy whose only change is ExecStart pointing at the
    // binary this test run built; the test below also verifies the
    // installed unit, verbatim, after installing the .deb.
    let dir = TempDir::new();
    let built = env!("CARGO_BIN_EXE_sensorgate");
    let copy_text = text.replacen(
        "ExecStart=/usr/bin/sensorgate ",
        &format!("ExecStart={built} "),
        1,
    );
    assert_eq!(
        copy_text
            .lines()
            .zip(text.lines())
            .filter(|(a, b)| a != b)
            .count(),
        1,
        "exactly the ExecStart line differs in the copy"
    );
    let copy = dir.join("sensorgate.service");
    fs::write(&copy, copy_text).expect("write the unit copy");
    assert_verify_clean(&copy);

    // The real file, scored as shipped (offline: no systemd manager).
    let out = run_ok(
        "systemd-analyze",
        &["security", "--offline=yes", "--no-pager", UNIT],
        SHORT,
    );
    let exposure = overall_exposure(&out.stdout);
    println!("systemd-analyze security --offline=yes: overall exposure {exposure:.1}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} exceeds {MAX_EXPOSURE}\n{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------
// The .deb
// ---------------------------------------------------------------------------

/// dpkg's view of the package: "" when unknown, else the Status field
/// ("install ok installed", "deinstall ok config-files", ...).
fn package_status() -> String {
    let out = run(
        "dpkg-query",
        &["-W", "-f=${db:Status-Abbrev} ${Status}", PACKAGE],
        SHORT,
    );
    if out.code == 0 {
        out.stdout
    } else {
        String::new()
    }
}

fn purge() -> Outcome {
    run("dpkg", &["--purge", PACKAGE], LONG)
}

/// Purges the package when dropped while armed: a failing assertion in
/// the middle of the test leaves no installed package, user or folders
/// behind. Never panics itself (that would abort the test run).
struct PurgeOnDrop {
    armed: bool,
}

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        eprintln!("packaging test failed; purging {PACKAGE}");
        let Ok(mut child) = command("dpkg", &["--purge", PACKAGE]).spawn() else {
            eprintln!("could not start dpkg --purge {PACKAGE}");
            return;
        };
        let done = wait_until(LONG, Duration::from_millis(100), || {
            !matches!(child.try_wait(), Ok(None))
        });
        if !done {
            let _ = child.kill();
            eprintln!("dpkg --purge {PACKAGE} did not finish within {LONG:?}; killed");
        }
        let _ = child.wait();
    }
}

/// Mode bits, owner name and group name of `path`.
fn stat(path: &str) -> (u32, String, String) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    let user = User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    let group = Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    (meta.mode() & 0o7777, user, group)
}

fn assert_stat(path: &str, is_dir: bool, mode: u32, owner: &str, group: &str) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path} missing: {e}"));
    assert_eq!(meta.is_dir(), is_dir, "{path}: is_dir");
    assert_eq!(
        stat(path),
        (mode, owner.to_string(), group.to_string()),
        "{path}: (mode, owner, group)"
    );
}

/// Builds the .deb in `dir` from the binary this test run built and
/// returns its path.
///
/// No second build: cargo-deb takes `target/release/sensorgate` from
/// `$CARGO_TARGET_DIR/release/` with `--no-build`, so the test points
/// CARGO_TARGET_DIR at a folder holding a copy of its own debug binary
/// (cargo-deb's `--profile dev` works too but is deprecated and will
/// become an error). A package made from a debug binary (with `--strip`,
/// ~30 MB instead of ~170 MB, and `--fast` compression: about 2 s) is
/// right for an install test: the layout, the maintainer scripts and the
/// conffile are the same as in a release package.
fn build_deb(dir: &Path) -> PathBuf {
    assert!(
        Command::new(env!("CARGO"))
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "cargo-deb is not installed; run scripts/install-test-deps \
         (or: cargo install cargo-deb --locked)"
    );
    let target = dir.join("target");
    fs::create_dir_all(target.join("release")).expect("create target/release");
    fs::copy(
        env!("CARGO_BIN_EXE_sensorgate"),
        target.join("release/sensorgate"),
    )
    .expect("copy the built binary");
    let out_dir = dir.join("deb");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "deb",
        "--no-build",
        "--offline",
        "--strip",
        "--fast",
        "--output",
    ])
    .arg(&out_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .env("CARGO_TARGET_DIR", &target);
    let started = Instant::now();
    let out = run_bounded(cmd, b"", LONG);
    assert_eq!(out.code, 0, "cargo deb failed\n{}", out.shown());
    println!(
        "cargo deb --no-build: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let debs: Vec<PathBuf> = fs::read_dir(&out_dir)
        .expect("read the output folder")
        .map(|e| e.expect("read_dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one .deb in {}: {debs:?}", out_dir.display());
    debs.into_iter().next().expect("one .deb")
}

/// Puts what the example configuration names in place, the way the README
/// tells an operator to: the gateway key made by the service user itself,
/// the cloud side's recipient public key, and the TLS client files owned by
/// the service user (the client key 0600).
fn provision(scratch: &Path) {
    let keygen = run_ok(
        "runuser",
        &[
            "-u",
            USER,
            "--",
            INSTALLED_BINARY,
            "keygen",
            "--out",
            "/etc/sensorgate/keys",
            "--name",
            "gateway",
        ],
        SHORT,
    );
    assert!(!keygen.stdout.trim().is_empty(), "keygen prints the kid");
    assert_stat("/etc/sensorgate/keys/gateway.key", false, 0o600, USER, USER);

    let cloud = scratch.join("cloud-keys");
    run_ok(
        INSTALLED_BINARY,
        &[
            "keygen",
            "--recipient",
            "--out",
            cloud.to_str().expect("UTF-8"),
            "--name",
            "recipient",
        ],
        SHORT,
    );
    let recipient = cloud.join("recipient.pub");
    run_ok(
        "install",
        &[
            "-m",
            "0644",
            recipient.to_str().expect("UTF-8"),
            "/etc/sensorgate/keys/recipient.pub",
        ],
        SHORT,
    );

    let ca = Pki::new("sensorgate packaging test CA").expect("make a CA");
    let server = ca.server(&["broker.example.com"]).expect("server identity");
    let client = ca.client("bike-pi-01").expect("client identity");
    let files =
        pki::write_files(&scratch.join("tls"), &ca, &server, &client).expect("write the TLS files");
    for (from, to, mode) in [
        (&files.ca, "/etc/sensorgate/tls/ca.pem", "0644"),
        (&files.client_cert, "/etc/sensorgate/tls/client.pem", "0644"),
        (&files.client_key, "/etc/sensorgate/tls/client.key", "0600"),
    ] {
        run_ok(
            "install",
            &[
                "-o",
                USER,
                "-g",
                USER,
                "-m",
                mode,
                from.to_str().expect("UTF-8"),
                to,
            ],
            SHORT,
        );
    }
}

/// `sensorgate check-config` on the installed, unmodified example
/// configuration, run as the service user (what systemd would run it as).
fn check_config_as_service_user() -> Outcome {
    run(
        "runuser",
        &[
            "-u",
            USER,
            "--",
            INSTALLED_BINARY,
            "check-config",
            "--config",
            CONFIG,
        ],
        SHORT,
    )
}

/// Everything the installed package must have put in place.
fn assert_installed_layout() {
    assert_stat(INSTALLED_BINARY, false, 0o755, "root", "root");
    assert_stat(INSTALLED_UNIT, false, 0o644, "root", "root");
    assert_stat(CONF_DIR, true, 0o750, "root", USER);
    assert_stat(CONFIG, false, 0o640, "root", USER);
    assert_stat("/etc/sensorgate/conf.d", true, 0o750, "root", USER);
    assert_stat("/etc/sensorgate/keys", true, 0o700, USER, USER);
    assert_stat("/etc/sensorgate/tls", true, 0o700, USER, USER);
    assert_stat(STATE_DIR, true, 0o700, USER, USER);
    for doc in [
        "README.md",
        "README.Debian",
        "copyright",
        "examples/sensorgate.toml",
    ] {
        let path = format!("/usr/share/doc/sensorgate/{doc}");
        assert!(Path::new(&path).is_file(), "{path} missing");
    }

    // The service user: a system account without a login shell, whose
    // home is the state folder, in the dialout group for the serial ports.
    let user = User::from_name(USER)
        .expect("read the user database")
        .unwrap_or_else(|| panic!("user {USER} missing"));
    let uid = user.uid.as_raw();
    assert!(
        (1..1000).contains(&uid),
        "{USER} has uid {uid}, not a system uid"
    );
    assert_eq!(user.shell, Path::new("/usr/sbin/nologin"), "{USER}'s shell");
    assert_eq!(user.dir, Path::new(STATE_DIR), "{USER}'s home");
    let primary = Group::from_gid(user.gid)
        .expect("read the group database")
        .expect("the user's primary group exists");
    assert_eq!(primary.name, USER, "{USER}'s primary group");
    let dialout = Group::from_name("dialout")
        .expect("read the group database")
        .expect("group dialout exists");
    assert!(
        dialout.mem.iter().any(|m| m == USER),
        "{USER} is not in dialout: {:?}",
        dialout.mem
    );

    let conffiles = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE], SHORT);
    assert!(
        conffiles
            .stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some(CONFIG)),
        "{CONFIG} is not a conffile: {:?}",
        conffiles.stdout
    );

    // Installed, neither enabled nor started (the postinst never calls
    // systemctl enable or start).
    assert!(
        fs::symlink_metadata(WANTS_LINK).is_err(),
        "{WANTS_LINK} exists: the package enabled the service"
    );
}

#[test]
fn deb_installs_user_and_folders_passes_check_config_and_purges_everything() {
    if std::env::var_os("SENSORGATE_SKIP_PACKAGING").is_some_and(|v| v == "1") {
        println!(
            "SENSORGATE_SKIP_PACKAGING=1: skipping the .deb install test \
             (it needs root and changes the machine)"
        );
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the .deb test installs and purges a package: run it as root \
         (CI does), or set SENSORGATE_SKIP_PACKAGING=1 to skip it"
    );
    for (program, package) in [
        ("dpkg", "dpkg"),
        ("runuser", "util-linux"),
        ("useradd", "passwd"),
        ("systemd-analyze", "systemd"),
    ] {
        require(program, package);
    }
    let started = Instant::now();

    // A previous run that died half-way may have left the package (or its
    // configuration) behind.
    let status = package_status();
    if !status.is_empty() && !status.starts_with("un ") && !status.starts_with("pn ") {
        println!("{PACKAGE} left from an earlier run ({status}); purging it first");
        let out = purge();
        assert_eq!(out.code, 0, "purge the leftover package\n{}", out.shown());
    }
    assert!(
        !Path::new(INSTALLED_BINARY).exists(),
        "{INSTALLED_BINARY} exists but no package owns it (a manual install?); \
         the test would overwrite and then delete it. Remove it first."
    );

    let scratch = TempDir::new();
    let deb = build_deb(scratch.path());
    let deb = deb.to_str().expect("UTF-8 path");

    let mut guard = PurgeOnDrop { armed: true };
    let install = run_ok("dpkg", &["-i", deb], LONG);
    assert!(
        install.stdout.contains("installed but not enabled"),
        "postinst tells the operator what to do next\n{}",
        install.shown()
    );
    assert!(
        package_status().starts_with("ii "),
        "{PACKAGE} installed: {:?}",
        package_status()
    );
    assert_installed_layout();
    // The unit verbatim, now that /usr/bin/sensorgate exists.
    assert_verify_clean(Path::new(INSTALLED_UNIT));

    // Fresh from the package, the example configuration cannot run: the
    // keys it names do not exist yet (exit 66, "no input").
    let unconfigured = check_config_as_service_user();
    assert_ne!(
        unconfigured.code,
        0,
        "check-config passes before any key exists\n{}",
        unconfigured.shown()
    );
    println!(
        "check-config before provisioning: exit {} (expected: not 0)",
        unconfigured.code
    );

    // The example configuration as shipped, with the keys and certificates
    // it names put in place, passes check-config as the service user.
    provision(scratch.path());
    let check = check_config_as_service_user();
    assert_eq!(check.code, 0, "check-config as {USER}\n{}", check.shown());

    // Reinstalling (as an upgrade does) keeps the keys and re-applies the
    // modes; the configuration stays valid.
    run_ok("dpkg", &["-i", deb], LONG);
    assert_installed_layout();
    assert_stat("/etc/sensorgate/keys/gateway.key", false, 0o600, USER, USER);
    assert_stat("/etc/sensorgate/tls/client.key", false, 0o600, USER, USER);
    let check = check_config_as_service_user();
    assert_eq!(
        check.code,
        0,
        "check-config after reinstall\n{}",
        check.shown()
    );

    // Purge removes everything the package made, the keys included.
    let out = purge();
    assert_eq!(out.code, 0, "dpkg --purge\n{}", out.shown());
    guard.armed = false;
    let status = package_status();
    assert!(
        status.is_empty() || status.starts_with("un ") || status.starts_with("pn "),
        "{PACKAGE} still known to dpkg after purge: {status:?}"
    );
    for path in [
        INSTALLED_BINARY,
        INSTALLED_UNIT,
        CONF_DIR,
        STATE_DIR,
        "/usr/share/doc/sensorgate",
    ] {
        assert!(
            fs::symlink_metadata(path).is_err(),
            "{path} still exists after purge"
        );
    }
    assert!(
        User::from_name(USER).expect("read passwd").is_none(),
        "user {USER} still exists after purge"
    );
    assert!(
        Group::from_name(USER).expect("read group").is_none(),
        "group {USER} still exists after purge"
    );
    println!(
        "cargo deb, install, provision, check-config, reinstall and purge: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
