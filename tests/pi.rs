//! The Raspberry Pi packages (arm64, armhf), checked on this amd64 machine:
//! each `.deb` that `scripts/package` made is inspected (architecture,
//! dependencies, contents, the ELF inside), and the gateway inside it runs
//! under qemu-user as the gateway of an end-to-end test: a pseudo-terminal
//! sensor with encrypted columns, the tests' mosquitto with mutual TLS, a
//! broker outage that sends the backlog through the Pi binary's own disk
//! spool and a restart, and the amd64 `sensorgate open` verifying and
//! decrypting every record. That shows the signatures, the key agreement
//! and the encryption agree byte for byte between the Pi and the cloud
//! side.
//!
//! The packages come from `SENSORGATE_PI_DEBS` (paths separated by `:`, as
//! `scripts/test-pi` sets it) or else from `target/packages/`. With none,
//! the tests say so and pass, unless `SENSORGATE_PI_REQUIRED=1` (set by
//! `scripts/test-pi`, which CI runs): then a missing package fails them.
//! The emulators are those `scripts/install-pi-deps` unpacks into
//! `target/pi-tools/qemu` (bookworm's qemu 7.2 cannot open serial ports:
//! it lacks the termios2 ioctls), or `SENSORGATE_QEMU_DIR`.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sensorgate::demo::pty::{Pty, SimSensor, sim_decoder, sim_line};
use sensorgate::serial::format::{Decode, Decoded};
use support::{GatewayProcess, Rig, TempDir, run_bounded, wait_until};

const WAIT: Duration = Duration::from_secs(120);
const SENSOR: &str = "bike";

/// A package to check.
struct Package {
    path: PathBuf,
    arch: String,
}

fn packages() -> Vec<Package> {
    let paths: Vec<PathBuf> = match std::env::var_os("SENSORGATE_PI_DEBS") {
        Some(list) => std::env::split_paths(&list).collect(),
        None => fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/packages"))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                    .collect()
            })
            .unwrap_or_default(),
    };
    paths
        .into_iter()
        .map(|path| {
            let arch = field(&path, "Architecture");
            Package { path, arch }
        })
        .collect()
}

/// The Pi packages to test, or `None` (said on stderr) when there are
/// none and none are required.
fn pi_packages() -> Option<Vec<Package>> {
    let pi: Vec<Package> = packages()
        .into_iter()
        .filter(|p| p.arch != "amd64")
        .collect();
    if pi.is_empty() {
        assert!(
            std::env::var("SENSORGATE_PI_REQUIRED").as_deref() != Ok("1"),
            "SENSORGATE_PI_REQUIRED=1 but no arm64/armhf package was given: run scripts/package arm64"
        );
        eprintln!(
            "SKIPPED: no Pi package (run scripts/test-pi, or scripts/package arm64 before cargo test --test pi)"
        );
        return None;
    }
    Some(pi)
}

/// Runs `cmd`, panics with its output unless it succeeds; returns stdout.
fn output(mut cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A control field of a `.deb`.
fn field(deb: &Path, name: &str) -> String {
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-f").arg(deb).arg(name);
    output(cmd).trim().to_string()
}

/// Unpacks `deb` into `dir`; returns the path of its binary.
fn unpack(deb: &Path, dir: &Path) -> PathBuf {
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(dir);
    output(cmd);
    dir.join("usr/bin/sensorgate")
}

/// What an architecture's binary must be, and how to run it here.
struct Target {
    elf_class: &'static str,
    machine: &'static str,
    qemu: Option<&'static str>,
}

fn target(arch: &str) -> Target {
    match arch {
        "arm64" => Target {
            elf_class: "ELF64",
            machine: "AArch64",
            qemu: Some("qemu-aarch64"),
        },
        "armhf" => Target {
            elf_class: "ELF32",
            machine: "ARM",
            qemu: Some("qemu-arm"),
        },
        "amd64" => Target {
            elf_class: "ELF64",
            machine: "Advanced Micro Devices X86-64",
            qemu: None,
        },
        other => panic!("a package for an architecture this test does not know: {other}"),
    }
}

/// The emulator for a Pi binary: one with termios2 (serial ports).
fn qemu(name: &str) -> PathBuf {
    let dir = std::env::var_os("SENSORGATE_QEMU_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pi-tools/qemu/usr/bin"),
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-pi-deps (it unpacks a qemu-user with termios2)",
        path.display()
    );
    path
}

/// The highest `GLIBC_x.y` symbol version `binary` needs.
fn glibc_needed(binary: &Path) -> (u32, u32) {
    let mut cmd = Command::new("objdump");
    cmd.arg("-T").arg(binary);
    let table = output(cmd);
    table
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let (a, b) = v.split_once('.')?;
            let b = b.split('.').next()?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .max()
        .expect("the binary needs some glibc symbols")
}

#[test]
fn each_package_is_built_for_its_architecture_and_depends_on_the_glibc_it_needs() {
    let all = packages();
    if all.is_empty() {
        pi_packages();
        return;
    }
    for pkg in &all {
        let what = pkg.path.display().to_string();
        let t = target(&pkg.arch);
        assert_eq!(field(&pkg.path, "Package"), "sensorgate", "{what}");
        assert!(
            pkg.path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .ends_with(&format!("_{}.deb", pkg.arch)),
            "{what}: the file name does not end in the architecture"
        );

        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("-c").arg(&pkg.path);
        let contents = output(cmd);
        for path in [
            "./usr/bin/sensorgate",
            "./lib/systemd/system/sensorgate.service",
            "./etc/sensorgate/sensorgate.toml",
            "./usr/share/doc/sensorgate/README.Debian",
            "./usr/share/doc/sensorgate/examples/sensorgate.toml",
        ] {
            assert!(
                contents.lines().any(|l| l.ends_with(path)),
                "{what} lacks {path}:\n{contents}"
            );
        }

        let dir = TempDir::new();
        let binary = unpack(&pkg.path, dir.path());
        let mut cmd = Command::new("readelf");
        cmd.args(["-h", "-S", "--wide"]).arg(&binary);
        let elf = output(cmd);
        let header = |name: &str| {
            elf.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim_start_matches(':').trim().to_string())
                .unwrap_or_else(|| panic!("{what}: no {name} in readelf's output"))
        };
        assert_eq!(header("Class"), t.elf_class, "{what}");
        assert_eq!(header("Machine"), t.machine, "{what}");
        if pkg.arch == "armhf" {
            assert!(
                header("Flags").contains("hard-float"),
                "{what}: not hard-float: {}",
                header("Flags")
            );
        }
        assert!(
            !elf.contains(".symtab"),
            "{what}: the binary is not stripped"
        );

        // Depends names the glibc the binary really needs, which Raspberry
        // Pi OS bookworm (2.36) has.
        let (major, minor) = glibc_needed(&binary);
        let depends = field(&pkg.path, "Depends");
        let want = format!("libc6 (>= {major}.{minor})");
        assert!(
            depends.split(", ").any(|d| d == want),
            "{what}: Depends is {depends:?}; the binary needs GLIBC_{major}.{minor}, so {want}"
        );
        assert!(
            (major, minor) <= (2, 36),
            "{what} needs GLIBC_{major}.{minor}; Raspberry Pi OS bookworm has 2.36"
        );
        assert!(depends.contains("passwd"), "{what}: {depends}");
        eprintln!(
            "{}: {} {}, needs GLIBC_{major}.{minor}, Depends: {depends}, {} bytes",
            pkg.arch,
            t.elf_class,
            t.machine,
            fs::metadata(&binary).unwrap().len()
        );
    }
}

/// The fields the simulated sensor wrote in line `i`, as JSON.
fn written(i: u64) -> BTreeMap<String, serde_json::Value> {
    let Ok(Decoded::Fields(f)) = sim_decoder().decode(sim_line(i).as_bytes()) else {
        panic!("sim line {i} does not decode")
    };
    f.into_iter()
        .map(|f| (f.name.to_string(), f.value.to_json()))
        .collect()
}

/// Writes `count` lines of the simulated sensor, starting at line
/// `first`, and waits (bounded) for the gateway to take them.
fn write_lines(pty: &Pty, first: u64, count: u64, gw: &GatewayProcess) {
    let writer = SimSensor::spawn_from(pty.writer().unwrap(), first, count, None);
    support::join_writer(writer, WAIT, gw);
}

/// Waits (bounded) until the gateway's stats line says `what=n`.
fn wait_for_stat(gw: &GatewayProcess, what: &str, n: u64) {
    let needle = format!(" {what}={n} ");
    assert!(
        wait_until(WAIT, Duration::from_millis(200), || gw
            .log()
            .contains(&needle)),
        "no {needle:?} within {WAIT:?}\n{}",
        support::excerpt(&gw.log())
    );
}

#[test]
fn the_packaged_pi_gateway_seals_what_the_amd64_consumer_opens() {
    let Some(pi) = pi_packages() else {
        return;
    };
    for pkg in &pi {
        end_to_end(pkg);
    }
}

fn end_to_end(pkg: &Package) {
    const HALF: u64 = 1000;
    let mut rig = Rig::new();
    let sub = rig.subscriber();
    let pty = Pty::open().unwrap();
    let unpacked = TempDir::new();
    let binary = unpack(&pkg.path, unpacked.path());
    let runner = qemu(target(&pkg.arch).qemu.expect("a Pi architecture"));
    // A small memory queue: the backlog of the outage is read back from
    // the Pi binary's own disk spool.
    let config = rig.gateway_config(
        "gw.toml",
        &[(SENSOR, pty.path())],
        "[buffer]\nmemory = \"64KiB\"\n",
    );
    let start = |k: usize| {
        let path = config.with_file_name(format!("run-{k}.toml"));
        fs::copy(&config, &path).unwrap();
        GatewayProcess::start_binary(&binary, Some(&runner), &path, &[])
    };

    let mut gw = start(0);
    write_lines(&pty, 0, HALF, &gw);
    wait_for_stat(&gw, "records_acked", HALF);
    // The broker goes away; the second half waits in the spool, and a
    // clean stop leaves it on disk.
    rig.broker.stop();
    write_lines(&pty, HALF, HALF, &gw);
    wait_for_stat(&gw, "records_sealed", 2 * HALF);
    assert_eq!(gw.stop(), 0, "{}", support::excerpt(&gw.log()));
    support::assert_no_panic(&gw.log());

    rig.broker.restart();
    let mut gw = start(1);
    wait_for_stat(&gw, "spool_messages", 0);
    assert_eq!(gw.stop(), 0, "{}", support::excerpt(&gw.log()));
    let log = gw.log();
    assert!(
        log.contains("messages from before the stop wait in the spool"),
        "{}",
        support::excerpt(&log)
    );
    // Everything the broker acknowledged reaches the subscriber: wait
    // until nothing new has come for a second.
    let mut seen = 0;
    wait_until(Duration::from_secs(30), Duration::from_secs(1), || {
        let n = sub.received().len();
        std::mem::replace(&mut seen, n) == n && n > 0
    });
    let payloads = sub.received();

    // The amd64 consumer opens what the Pi gateway sealed.
    let mut input = Vec::new();
    for p in &payloads {
        input.extend_from_slice(p);
        input.push(b'\n');
    }
    let mut open = Command::new(env!("CARGO_BIN_EXE_sensorgate"));
    open.arg("open")
        .arg("--recipient-key")
        .arg(&rig.recipient.key_path)
        .arg("--trust")
        .arg(&rig.gateway_key.pub_path);
    let out = run_bounded(open, &input, Duration::from_secs(60));
    assert_eq!(out.code, 0, "sensorgate open failed\n{}", out.shown());
    let mut seqs = Vec::new();
    for line in out.stdout.lines() {
        let r: serde_json::Value = serde_json::from_str(line).expect("a JSON record");
        let seq = r["seq"].as_u64().expect("seq");
        assert_eq!(r["gateway"], "test-gw");
        assert_eq!(r["sensor"], SENSOR);
        let fields: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(r["fields"].clone()).expect("fields");
        assert_eq!(
            fields,
            written(seq),
            "record {seq}, encrypted columns included"
        );
        seqs.push(seq);
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..2 * HALF).collect::<Vec<_>>(),
        "{}: what the amd64 consumer opened\n{}",
        pkg.arch,
        out.stderr
    );
    support::sweep_report(&support::SweepCase {
        sent: 2 * HALF,
        arrived: seqs.len() as u64,
        note: format!("{} gateway under qemu", pkg.arch),
        ..support::SweepCase::default()
    });
    eprintln!(
        "{}: {} sealed messages from the Pi binary, {} records opened by the amd64 consumer; {}",
        pkg.arch,
        payloads.len(),
        seqs.len(),
        out.stderr.lines().last().unwrap_or_default()
    );
}

// ---------------------------------------------------------------------
// Installed into an arm64 Debian root (scripts/test-pi --root)
// ---------------------------------------------------------------------

/// Runs `args` inside the root with `chroot` (its programs run under
/// qemu-user through binfmt_misc); returns the outcome.
fn in_root(root: &Path, args: &[&str]) -> support::Outcome {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    run_bounded(cmd, b"", Duration::from_secs(300))
}

fn in_root_ok(root: &Path, args: &[&str]) -> support::Outcome {
    let out = in_root(root, args);
    assert_eq!(
        out.code,
        0,
        "chroot {} {args:?}\n{}",
        root.display(),
        out.shown()
    );
    out
}

/// `sensorgate ARGS` inside the root, as the service user (what systemd
/// would run it as).
fn as_service_user(root: &Path, args: &[&str]) -> support::Outcome {
    let mut all = vec!["runuser", "-u", "sensorgate", "--", "sensorgate"];
    all.extend_from_slice(args);
    in_root(root, &all)
}

/// `name`'s line in the root's `/etc/passwd` or `/etc/group`, split.
fn db_entry(root: &Path, db: &str, name: &str) -> Option<Vec<String>> {
    fs::read_to_string(root.join("etc").join(db))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
        .find(|f| f.first().is_some_and(|n| n == name))
}

/// Mode bits, owner and group (names, from the root's databases) of a
/// path inside the root.
fn stat_in(root: &Path, path: &str) -> (u32, String, String) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path} missing in the root: {e}"));
    let name_of = |db: &str, id: u32| {
        fs::read_to_string(root.join("etc").join(db))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.get(2).is_some_and(|i| *i == id.to_string()))
            .map_or_else(|| id.to_string(), |f| f[0].to_string())
    };
    (
        meta.mode() & 0o7777,
        name_of("passwd", meta.uid()),
        name_of("group", meta.gid()),
    )
}

#[test]
fn the_arm64_package_installs_in_an_arm64_root_passes_check_config_and_purges_everything() {
    let Some(root) = std::env::var_os("SENSORGATE_PI_ROOT").map(PathBuf::from) else {
        eprintln!("SKIPPED: no arm64 root given (scripts/test-pi --root makes one)");
        return;
    };
    let Some(pkg) = pi_packages()
        .into_iter()
        .flatten()
        .find(|p| p.arch == "arm64")
    else {
        panic!("SENSORGATE_PI_ROOT is set but no arm64 package was given");
    };
    let _ = in_root(&root, &["dpkg", "--purge", "sensorgate"]);
    fs::copy(&pkg.path, root.join("tmp/sensorgate.deb")).unwrap();
    in_root_ok(&root, &["dpkg", "-i", "/tmp/sensorgate.deb"]);
    let version = in_root_ok(&root, &["sensorgate", "--version"]);
    assert!(
        version.stdout.starts_with("sensorgate "),
        "{}",
        version.shown()
    );

    // What the package and its postinst put in place.
    let user = "sensorgate";
    for (path, mode, owner, group) in [
        ("/usr/bin/sensorgate", 0o755, "root", "root"),
        (
            "/lib/systemd/system/sensorgate.service",
            0o644,
            "root",
            "root",
        ),
        ("/etc/sensorgate", 0o750, "root", user),
        ("/etc/sensorgate/sensorgate.toml", 0o640, "root", user),
        ("/etc/sensorgate/keys", 0o700, user, user),
        ("/etc/sensorgate/tls", 0o700, user, user),
        ("/var/lib/sensorgate", 0o700, user, user),
    ] {
        assert_eq!(
            stat_in(&root, path),
            (mode, owner.to_string(), group.to_string()),
            "{path}: (mode, owner, group)"
        );
    }
    let passwd = db_entry(&root, "passwd", user).expect("the service user exists");
    assert_eq!(passwd[5], "/var/lib/sensorgate", "home");
    assert_eq!(passwd[6], "/usr/sbin/nologin", "shell");
    let dialout = db_entry(&root, "group", "dialout").expect("group dialout");
    assert!(dialout[3].split(',').any(|m| m == user), "{dialout:?}");

    // What an operator does next (README), there.
    let keygen = as_service_user(
        &root,
        &[
            "keygen",
            "--out",
            "/etc/sensorgate/keys",
            "--name",
            "gateway",
        ],
    );
    assert_eq!(keygen.code, 0, "keygen as {user}\n{}", keygen.shown());
    assert!(!keygen.stdout.trim().is_empty(), "keygen prints the kid");
    in_root_ok(
        &root,
        &[
            "sensorgate",
            "keygen",
            "--recipient",
            "--out",
            "/tmp/cloud",
            "--name",
            "recipient",
        ],
    );
    in_root_ok(
        &root,
        &[
            "install",
            "-m",
            "0644",
            "/tmp/cloud/recipient.pub",
            "/etc/sensorgate/keys/recipient.pub",
        ],
    );
    let ca = sensorgate::demo::pki::Pki::new("sensorgate Pi test CA").unwrap();
    let server = ca.server(&["broker.example.com"]).unwrap();
    let client = ca.client("bike-pi-01").unwrap();
    let files =
        sensorgate::demo::pki::write_files(&root.join("tmp/tls"), &ca, &server, &client).unwrap();
    for (from, to, mode) in [
        (&files.ca, "ca.pem", "0644"),
        (&files.client_cert, "client.pem", "0644"),
        (&files.client_key, "client.key", "0600"),
    ] {
        let inside = format!("/{}", from.strip_prefix(&root).unwrap().display());
        let to = format!("/etc/sensorgate/tls/{to}");
        in_root_ok(
            &root,
            &["install", "-o", user, "-g", user, "-m", mode, &inside, &to],
        );
    }
    let check = as_service_user(
        &root,
        &[
            "check-config",
            "--config",
            "/etc/sensorgate/sensorgate.toml",
        ],
    );
    assert_eq!(
        check.code,
        0,
        "check-config in the arm64 root\n{}",
        check.shown()
    );

    // Purge removes everything the package and the operator's steps made
    // under its folders, and the user.
    in_root_ok(&root, &["dpkg", "--purge", "sensorgate"]);
    for path in [
        "usr/bin/sensorgate",
        "lib/systemd/system/sensorgate.service",
        "etc/sensorgate",
        "var/lib/sensorgate",
        "usr/share/doc/sensorgate",
    ] {
        assert!(
            fs::symlink_metadata(root.join(path)).is_err(),
            "/{path} is still there after the purge"
        );
    }
    assert!(
        db_entry(&root, "passwd", user).is_none(),
        "the user is left"
    );
    assert!(
        db_entry(&root, "group", user).is_none(),
        "the group is left"
    );
    let _ = fs::remove_dir_all(root.join("tmp/tls"));
    let _ = fs::remove_dir_all(root.join("tmp/cloud"));
    eprintln!(
        "arm64 root: installed, {}, check-config ok, purged",
        version.stdout.trim()
    );
}
