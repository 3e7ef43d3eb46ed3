//! Keys that stay in a token (issue 23), against a real PKCS#11 module:
//! SoftHSM2, in a folder of the test's own. The key pair is made in the
//! token by `sensorgate keygen --pkcs11`; a real `sensorgate run` signs
//! every batch with it, and what the subscriber received opens against
//! the token's public key only. Failures at start (a wrong PIN, a missing
//! module, a missing key) say what to do and exit with their code.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sensorgate::demo::pty::{Pty, SimSensor};
use support::softhsm::SoftHsm;
use support::{GatewayProcess, Rig, wait_for_records_with};

const WAIT: Duration = Duration::from_secs(60);

/// The rig's gateway configuration with `[seal] signing_key` set to `key`.
fn config_with_key(rig: &Rig, name: &str, pty: &Path, key: &str) -> std::path::PathBuf {
    let config = rig.gateway_config(name, &[("bike", pty)], "");
    let text = std::fs::read_to_string(&config).unwrap();
    let file_key = format!("signing_key = {:?}", rig.gateway_key.key_path);
    assert!(text.contains(&file_key), "{text}");
    std::fs::write(
        &config,
        text.replace(&file_key, &format!("signing_key = {key:?}")),
    )
    .unwrap();
    config
}

/// Every file under `dir` that holds a PEM private key.
fn private_keys_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|b| b.windows(11).any(|w| w == b"PRIVATE KEY"))
            {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_gateway_whose_keys_are_in_a_token_delivers_every_record_signed_by_it() {
    let hsm = SoftHsm::new();
    delivers_every_record_with_keys_in(|object| hsm.uri(object), &hsm.env());
}

/// The same against a TPM 2.0 (scripts/test-tpm starts swtpm, tpm2-abrmd
/// and a tpm2-pkcs11 token, and says where in `SENSORGATE_TPM_MODULE` and
/// `SENSORGATE_TPM_PIN`; the module's own variables are inherited).
#[test]
#[ignore = "needs a TPM 2.0 stack: run scripts/test-tpm"]
fn a_gateway_whose_keys_are_in_a_tpm_delivers_every_record_signed_by_it() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/test-tpm"))
    };
    let (module, pin) = (var("SENSORGATE_TPM_MODULE"), var("SENSORGATE_TPM_PIN"));
    let run = std::process::id();
    delivers_every_record_with_keys_in(
        |object| {
            format!(
                "pkcs11:token=sensorgate;object={object}-{run}?module-path={module}&pin-source=file:{pin}"
            )
        },
        &[],
    );
}

/// A wrong PIN costs the TPM one failed try per start, however many keys
/// of the token the start opens (`check-config` opens both), and a TPM
/// locked by too many is said to be locked, with how to clear it. Counted
/// by the TPM itself (`tpm2_getcap`), its lockout lowered to 3 tries.
#[test]
#[ignore = "needs a TPM 2.0 stack: run scripts/test-tpm"]
fn a_tpm_counts_one_wrong_pin_per_start_and_a_locked_one_is_said() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/test-tpm"))
    };
    let (module, pin) = (var("SENSORGATE_TPM_MODULE"), var("SENSORGATE_TPM_PIN"));
    let tpm2 = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("tpm2-tools");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let failed_tries = || {
        let caps = tpm2(&["tpm2_getcap", "properties-variable"]);
        let line = caps
            .lines()
            .find(|l| l.starts_with("TPM2_PT_LOCKOUT_COUNTER:"))
            .expect("the lockout counter");
        let hex = line.rsplit("0x").next().unwrap().trim();
        u32::from_str_radix(hex, 16).unwrap()
    };
    let rig = Rig::new();
    let pty = Pty::open().unwrap();
    let run = std::process::id();
    let uri = |object: &str| {
        format!(
            "pkcs11:token=sensorgate;object={object}-lock-{run}?module-path={module}&pin-source=file:{pin}"
        )
    };
    let (config, _) = keys_in_token(&rig, uri, &[], pty.path());
    let wrong_pin = rig.dir.path().join("wrong.pin");
    support::write_file(&wrong_pin, "999999\n", 0o600);
    let wrong = rig.dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        std::fs::read_to_string(&config).unwrap().replace(
            &format!("file:{pin}"),
            &format!("file:{}", wrong_pin.display()),
        ),
    )
    .unwrap();
    let gateway = |command: &str, config: &Path| {
        let mut c = std::process::Command::new(support::gateway_binary());
        c.args([command, "--config"]).arg(config);
        support::run_bounded(c, b"", Duration::from_secs(60))
    };

    tpm2(&["tpm2_dictionarylockout", "--clear-lockout"]);
    tpm2(&[
        "tpm2_dictionarylockout",
        "--setup-parameters",
        "--max-tries=3",
        "--recovery-time=600",
        "--lockout-recovery-time=600",
    ]);
    assert_eq!(failed_tries(), 0);
    for tries in 1..=3 {
        let out = gateway("check-config", &wrong);
        assert_eq!(out.code, 77, "{}", out.shown());
        assert!(out.stderr.contains("refused the PIN"), "{}", out.shown());
        assert_eq!(failed_tries(), tries, "one try per start: {}", out.shown());
    }
    // Locked now: even the right PIN is refused, and the error says so.
    let out = gateway("run", &config);
    assert_eq!(out.code, 77, "{}", out.shown());
    assert!(
        out.stderr.contains("user PIN is locked")
            && out
                .stderr
                .contains("tpm2_dictionarylockout --clear-lockout"),
        "{}",
        out.shown()
    );
    tpm2(&["tpm2_dictionarylockout", "--clear-lockout"]);
    let out = gateway("check-config", &config);
    assert_eq!(out.code, 0, "{}", out.shown());
}

/// Makes both of the gateway's keys in the token as an operator would
/// (`keygen --pkcs11` for the signing key and the TLS key, `csr` for the
/// latter, the test's CA issuing the client certificate from the request),
/// deletes the rig's file keys and writes a gateway configuration that
/// names the token's. Returns it and the signing key's .pub.
fn keys_in_token(
    rig: &Rig,
    uri: impl Fn(&str) -> String,
    env: &[(&str, &str)],
    pty: &Path,
) -> (PathBuf, PathBuf) {
    let keys = rig.dir.path().join("token-keys");
    let gateway = |args: &[&str]| {
        let output = std::process::Command::new(support::gateway_binary())
            .envs(env.iter().copied())
            .args(args)
            .output()
            .expect("sensorgate");
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let keys_arg = keys.to_str().unwrap();
    let (sign, tls) = (uri("gateway-sign"), uri("gateway-tls"));
    let kid = gateway(&[
        "keygen", "--pkcs11", &sign, "--name", "gateway", "--out", keys_arg,
    ]);
    assert_eq!(kid.trim().len(), 43, "a kid: {kid}");
    gateway(&[
        "keygen", "--pkcs11", &tls, "--name", "tls", "--out", keys_arg,
    ]);
    // Only the public halves were written.
    assert!(private_keys_under(&keys).is_empty());

    // The client certificate, issued from a request the token signed.
    let csr = rig.dir.path().join("tls/token.csr");
    gateway(&[
        "csr",
        "--key",
        &tls,
        "--subject",
        "CN=test-gateway",
        "--out",
        csr.to_str().unwrap(),
    ]);
    let request = std::fs::read_to_string(&csr).unwrap();
    let request = rcgen::CertificateSigningRequestParams::from_pem(&request)
        .expect("a request whose signature verifies");
    let cert = rig.dir.path().join("tls/token-client.pem");
    support::write_file(&cert, &rig.pki.sign_request(request).unwrap(), 0o644);

    let config = config_with_key(rig, "gw.toml", pty, &sign);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace(
            &format!("key_file = {:?}", rig.tls.client_key),
            &format!("key_file = {tls:?}"),
        )
        .replace(
            &format!("cert_file = {:?}", rig.tls.client_cert),
            &format!("cert_file = {cert:?}"),
        );
    assert!(text.contains(&format!("key_file = {tls:?}")), "{text}");
    std::fs::write(&config, text).unwrap();
    // The gateway's file keys are gone: it has only the token's.
    std::fs::remove_file(&rig.tls.client_key).unwrap();
    std::fs::remove_file(&rig.gateway_key.key_path).unwrap();
    (config, keys.join("gateway.pub"))
}

/// A gateway whose keys are both in the token (see [`keys_in_token`]):
/// every record arrives over mutual TLS authenticated by the token's key
/// and opens against the token's .pub only, and nothing the gateway can
/// read holds a private key of its own.
fn delivers_every_record_with_keys_in(uri: impl Fn(&str) -> String, env: &[(&str, &str)]) {
    let rig = Rig::new();
    let pty = Pty::open().unwrap();
    let (config, public) = keys_in_token(&rig, uri, env, pty.path());
    let sub = rig.subscriber();
    let mut gw = GatewayProcess::start_with_env(&config, env);
    let writer = SimSensor::spawn(pty.writer().unwrap(), 300, None);
    assert_eq!(writer.join().unwrap().unwrap(), 300);

    let opener = sensorgate::seal::Opener::new(
        vec![sensorgate::seal::load_public_key(&public).unwrap()],
        Some(sensorgate::seal::load_recipient_key(&rig.recipient.key_path).unwrap()),
    );
    let opened = wait_for_records_with(opener, &sub, 300, WAIT);
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
    assert_eq!(
        opened.seqs("bike"),
        (0..300).collect::<Vec<_>>(),
        "log:\n{}",
        gw.log()
    );
    assert_eq!(gw.stop(), 0, "log:\n{}", gw.log());
    let log = gw.log();
    support::assert_no_panic(&log);
    assert!(log.contains("records_acked=300"), "{log}");

    // What signed was the token's key: an opener trusting the rig's file
    // key (deleted above) rejects every message.
    let by_file_key = support::open_all(&rig, &sub.received());
    assert!(by_file_key.records.is_empty());
    assert!(!by_file_key.rejected.is_empty());

    // The only private keys left in the rig's folder are the cloud side's
    // recipient key and the broker's: none of the gateway's.
    let mut left = private_keys_under(rig.dir.path());
    left.sort();
    let mut others = vec![rig.recipient.key_path.clone(), rig.tls.server_key.clone()];
    others.sort();
    assert_eq!(left, others);
}

#[test]
fn a_token_that_cannot_be_used_at_start_says_why_and_what_to_do() {
    let hsm = SoftHsm::new();
    let rig = Rig::new();
    hsm.keygen("gateway-sign", &rig.dir.path().join("token-keys"));
    let pty = Pty::open().unwrap();
    let wrong_pin = hsm.dir.path().join("wrong.pin");
    std::fs::write(&wrong_pin, "999999\n").unwrap();
    std::fs::set_permissions(
        &wrong_pin,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cases = [
        (
            hsm.uri_with_pin("gateway-sign", &wrong_pin),
            77,
            "refused the PIN",
        ),
        (
            hsm.uri("gateway-sign")
                .replace(support::softhsm::MODULE, "/usr/lib/nowhere/libnone.so"),
            69,
            "cannot load the PKCS#11 module /usr/lib/nowhere/libnone.so",
        ),
        (hsm.uri("no-such-key"), 78, "no private key matches"),
        (
            hsm.uri("gateway-sign")
                .replace("token=sensorgate", "token=other"),
            69,
            "no token matches",
        ),
    ];
    for (i, (uri, code, says)) in cases.iter().enumerate() {
        let config = config_with_key(&rig, &format!("gw{i}.toml"), pty.path(), uri);
        let mut run = hsm.command(support::gateway_binary());
        run.args(["run", "--config"]).arg(&config);
        let out = support::run_bounded(run, b"", Duration::from_secs(30));
        assert_eq!(out.code, *code, "{uri}: {}", out.shown());
        assert!(out.stderr.contains(says), "{uri}: {}", out.shown());
        assert!(
            !out.stderr.contains(support::softhsm::PIN),
            "the PIN shown: {}",
            out.shown()
        );
    }
    // A TLS key in the token that is not the client certificate's.
    let config = rig.gateway_config("mismatch.toml", &[("bike", pty.path())], "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("key_file = {:?}", rig.tls.client_key),
        &format!("key_file = {:?}", hsm.uri("gateway-sign")),
    );
    std::fs::write(&config, text).unwrap();
    let mut run = hsm.command(support::gateway_binary());
    run.args(["run", "--config"]).arg(&config);
    let out = support::run_bounded(run, b"", Duration::from_secs(30));
    assert_eq!(out.code, 78, "{}", out.shown());
    assert!(
        out.stderr
            .contains("the private key pkcs11:token=sensorgate;object=gateway-sign")
            && out
                .stderr
                .contains("does not belong to the client certificate"),
        "{}",
        out.shown()
    );

    // The wrong PIN was tried once per start, never retried: the token's
    // counter of failed logins has not locked it (the right PIN works).
    let config = config_with_key(&rig, "right.toml", pty.path(), &hsm.uri("gateway-sign"));
    let mut check = hsm.command(support::gateway_binary());
    check.args(["check-config", "--config"]).arg(&config);
    let out = support::run_bounded(check, b"", Duration::from_secs(30));
    assert!(
        out.stderr.contains("seal.signing_key pkcs11:"),
        "{}",
        out.shown()
    );
    assert!(out.stderr.contains(": ok, kid"), "{}", out.shown());

    // The PIN as a systemd credential (LoadCredential=token.pin:...):
    // read from $CREDENTIALS_DIRECTORY, and a clear error without it.
    let by_credential = hsm.uri("gateway-sign").replace(
        &format!("file:{}", hsm.pin.display()),
        "credential:token.pin",
    );
    let config = config_with_key(&rig, "cred.toml", pty.path(), &by_credential);
    let check = |credentials: Option<&Path>| {
        let mut c = hsm.command(support::gateway_binary());
        c.args(["check-config", "--config"]).arg(&config);
        c.env_remove("CREDENTIALS_DIRECTORY");
        if let Some(dir) = credentials {
            c.env("CREDENTIALS_DIRECTORY", dir);
        }
        support::run_bounded(c, b"", Duration::from_secs(30))
    };
    let out = check(Some(hsm.dir.path()));
    assert!(out.stderr.contains(": ok, kid"), "{}", out.shown());
    let out = check(None);
    assert_eq!(out.code, 77, "{}", out.shown());
    assert!(
        out.stderr.contains("$CREDENTIALS_DIRECTORY is not set"),
        "{}",
        out.shown()
    );
}

/// The token that holds both keys goes away while the gateway runs (its
/// files moved aside, as a removed USB token or a TPM daemon restart) and
/// the broker restarts meanwhile: sealing waits, the reconnection fails
/// saying why, nothing is lost, and both resume when the token is back.
#[test]
fn a_token_that_goes_away_while_running_pauses_sealing_and_loses_nothing() {
    let hsm = SoftHsm::new();
    let mut rig = Rig::new();
    let pty = Pty::open().unwrap();
    let (config, public) = keys_in_token(&rig, |o| hsm.uri(o), &hsm.env(), pty.path());
    let sub = rig.subscriber();
    let mut gw = GatewayProcess::start_with_env(&config, &hsm.env());
    let opener = || {
        sensorgate::seal::Opener::new(
            vec![sensorgate::seal::load_public_key(&public).unwrap()],
            Some(sensorgate::seal::load_recipient_key(&rig.recipient.key_path).unwrap()),
        )
    };
    let writer = SimSensor::spawn(pty.writer().unwrap(), 100, None);
    assert_eq!(writer.join().unwrap().unwrap(), 100);
    let opened = wait_for_records_with(opener(), &sub, 100, WAIT);
    assert_eq!(opened.count(), 100, "{}", gw.log());

    let tokens = hsm.dir.path().join("tokens");
    let away = hsm.dir.path().join("tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    let writer = SimSensor::spawn_from(pty.writer().unwrap(), 100, 100, None);
    assert!(
        gw.wait_for_log("sealing waits for the signing key's token", WAIT),
        "{}",
        support::excerpt(&gw.log())
    );
    // The broker restarts meanwhile: the handshake needs the TLS key,
    // which is in the token too. The gateway says so and tries again.
    rig.broker.restart();
    assert!(
        gw.wait_for_log("could not sign the handshake", WAIT),
        "{}",
        support::excerpt(&gw.log())
    );
    assert_eq!(
        support::open_all_with(opener(), &sub.received()).count(),
        100,
        "nothing is sealed while the token is away"
    );
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    assert_eq!(writer.join().unwrap().unwrap(), 100);
    let opened = wait_for_records_with(opener(), &sub, 200, WAIT);
    assert_eq!(
        opened.seqs("bike"),
        (0..200).collect::<Vec<_>>(),
        "{}",
        support::excerpt(&gw.log())
    );
    let log = gw.log();
    assert!(log.contains("signing key back; sealing resumes"), "{log}");
    assert!(log.contains("error_kind=\"tls_key\""), "{log}");
    assert_eq!(gw.stop(), 0);
}
