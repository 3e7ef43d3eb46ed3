//! Signatures per second by where the gateway's signing key is (issue 23):
//! `cargo bench --bench signing` (under a minute).
//!
//! The baseline, in the same run: the key in a file, signed in process by
//! *ring*. Then the same P-256 signatures (SHA-256 in process, `CKM_ECDSA`
//! in the token) through SoftHSM2, a PKCS#11 module in process. With
//! `SENSORGATE_SIGNING_URI` set (and the module's environment, such as
//! `TPM2_PKCS11_TCTI`), a third key: any token, a TPM through tpm2-pkcs11
//! for one. Every message is one sealed batch's worth
//! of bytes; the gateway signs once per message, so the batch size that
//! keeps up with R records/s is R / signatures per second. Prints `name
//! value unit` lines.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use sensorgate::config::KeyRef;
use sensorgate::seal::GatewayKey;
use support::softhsm::SoftHsm;

/// The message signed: about one batch of 100 records sealed.
const MESSAGE: usize = 1800;
/// How long each key is measured.
const WINDOW: Duration = Duration::from_secs(5);
/// 8 sensors × 100 records/s (the fleet gateway).
const RATE: f64 = 800.0;

fn per_second(key: &GatewayKey) -> f64 {
    let message = vec![0x5a; MESSAGE];
    for _ in 0..20 {
        key.sign_message(&message).expect("a signature");
    }
    let (start, mut n) = (Instant::now(), 0u32);
    while start.elapsed() < WINDOW {
        key.sign_message(&message).expect("a signature");
        n += 1;
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn report(name: &str, rate: f64, baseline: f64) {
    println!("signing_{name}_per_s {rate:.0} signatures/s");
    println!("signing_{name}_vs_file {:.4} ratio", rate / baseline);
    println!(
        "signing_{name}_batch_for_800_records_per_s {} records",
        (RATE / rate).ceil().max(1.0)
    );
}

fn main() {
    // SoftHSM finds its tokens through SOFTHSM2_CONF, read from the
    // environment: the measuring runs in a child that has it.
    if let Ok(uri) = std::env::var("SENSORGATE_BENCH_SOFTHSM_URI") {
        measure(&uri);
        return;
    }
    let hsm = SoftHsm::new();
    let dir = tempfile::tempdir().expect("a temporary folder");
    hsm.keygen("bench", dir.path());
    let status = hsm
        .command(std::env::current_exe().expect("this bench"))
        .env("SENSORGATE_BENCH_SOFTHSM_URI", hsm.uri("bench"))
        .status()
        .expect("the measuring child");
    assert!(status.success(), "the measuring child failed: {status}");
}

fn measure(softhsm_uri: &str) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = sensorgate::seal::keygen(dir.path(), "file").expect("a file key");
    let file_key = sensorgate::seal::load_signing_key(&file.key_path).expect("the file key");
    let baseline = per_second(&file_key);
    report("file", baseline, baseline);

    let uri = sensorgate::pkcs11::KeyUri::parse(softhsm_uri).expect("the URI");
    let softhsm =
        sensorgate::seal::load_gateway_key(&KeyRef::Pkcs11(uri)).expect("the SoftHSM key");
    report("softhsm", per_second(&softhsm), baseline);

    if let Ok(text) = std::env::var("SENSORGATE_SIGNING_URI") {
        let uri = sensorgate::pkcs11::KeyUri::parse(&text).expect("SENSORGATE_SIGNING_URI");
        let key = sensorgate::seal::load_gateway_key(&KeyRef::Pkcs11(uri)).expect("that key");
        report("token", per_second(&key), baseline);
    }
}
