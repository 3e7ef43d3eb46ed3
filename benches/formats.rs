//! The sealed message format candidates of issue 16: bytes on the wire and
//! seal CPU per record, the same records for every candidate, batches of 1,
//! 10 and 100 records, for two sensors:
//!
//! - **bike**: the demo's simulated exercise bike, `sim_line(i)` decoded by
//!   `sim_decoder()` (six CSV columns, 24 bytes a line with its newline),
//!   with `heart_rate`, `incline` and `resistance` encrypted, as in the
//!   test rig;
//! - **env**: a four-column environment sensor made up here,
//!   `temperature,humidity,pressure,co2` (`21.37,45.2,1013.25,612`, 23
//!   bytes a line with its newline: slowly drifting values with a little
//!   noise from a fixed-seed PRNG), decoded by a `CsvDecoder` with the same
//!   API, with `co2` encrypted (it tells whether a room is occupied).
//!
//! Both sensors are stamped at 10 Hz to the millisecond, as the gateway
//! stamps (`receive_time`): record `seq` is received at a fixed start plus
//! `seq × 100 ms` plus 0–4 ms of jitter (the same PRNG). The records of
//! the two sensors share the gateway id `bike-pi-01` and a 32-hex-digit
//! epoch like `new_epoch()` makes.
//!
//! The candidates (the report's definitions, `CANDIDATES`):
//!
//! - **A `v1`**: `Sealer` with `WireFormat::V1`: JWS (ES256, flattened JSON,
//!   base64url payload) around a JSON payload by record, with a JWE
//!   (ECDH-ES+A256KW, A256GCM) of the encrypted fields (`docs/FORMAT-v1.md`).
//! - **B `v2`**: `Sealer` with the default `WireFormat::V2`: COSE_Sign1
//!   around a CBOR payload by column, with a COSE_Encrypt of the encrypted
//!   columns (`docs/FORMAT.md`).
//! - **C `jose2`**: a JOSE version 2 prototype written here ([`Jose2`]): the
//!   JWS flattened JSON serialization with the RFC 7797 unencoded payload
//!   (`"b64":false,"crit":["b64"]`); the payload is v2's batch by column
//!   as JSON (values as plain JSON numbers), which the flattened
//!   serialization carries as a JSON *string*, its quotes escaped; the
//!   encrypted columns are a flattened JWE (ECDH-ES+A256KW, A256GCM, `epk`
//!   in the protected header, bound to the batch like version 1 by
//!   `gateway`, `sensor`, `epoch` and `seq` in its protected header) inside
//!   the payload. **`jose2_zip`**: the same with `"zip":"DEF"`, the JWE
//!   plaintext raw-deflated (level 6) before encryption. The prototype makes
//!   real signatures and ciphertexts (one is checked per configuration)
//!   but no opener exists for it.
//! - **D `v2_deflate6`, `v2_deflate1`**: B with its COSE_Sign1 payload
//!   raw-deflated (miniz_oxide level 6, level 1) before signing. Not
//!   implemented end to end: its size is B's message minus B's payload
//!   byte string plus the compressed one (with its own CBOR head), its CPU
//!   B's seal time plus the compression of B's payloads (a reused
//!   compressor, reset for each payload), measured in the same run. The
//!   signature over the shorter payload would be slightly cheaper; that is
//!   not credited, nor is a header saying the payload is compressed charged.
//!   Compressing the encrypted columns *before encryption* is not a v2
//!   candidate (RFC 8725 §3.6: the compressed length leaks what was
//!   compressed), so D's deflate sees the COSE_Encrypt as ciphertext,
//!   which it cannot shrink; `jose2_zip` does compress before encryption,
//!   and is measured only to show what that would buy.
//!
//! Each run seals `MESSAGES` messages of fresh records (contiguous `seq`
//! within a message, as benches/seal.rs makes them) with every candidate.
//! Every candidate gets a new sealer per run, made outside the timing, so
//! each pays one ECDH per run: one per 1000 messages, as the default
//! `rotate_after_messages`. The messages go in chunks of `CHUNK`, each
//! chunk sealed by every candidate in turn, in an order rotated from chunk
//! to chunk, so a busy spell of this shared machine falls on all of them;
//! the time is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall
//! time, so time spent descheduled is not counted. Figures:
//!
//! - `{sensor}_raw_bytes_per_record_{m}`: the CSV line plus its `\n`;
//! - `{sensor}_{candidate}_message_bytes_{m}`, `..._bytes_per_record_{m}`:
//!   the mean over all messages of all runs;
//! - `..._over_raw_{m}`: bytes per record over the raw line bytes (the goal
//!   figure);
//! - `..._seal_us_per_message_{m}`, `..._seal_us_per_record_{m}`: the median
//!   of the runs' times divided by their messages (records);
//! - `..._seal_over_v1_{m}`: the median of the per-run ratios of the
//!   candidate's time to A's time in the same run;
//! - `es256_sign_us`, `deflate{6,1}_fixed_us`: baselines timed in the same
//!   chunks, per message: one ES256 signature (every candidate makes one
//!   per message), and the fixed cost of a raw deflate (a reused
//!   compressor reset, then 1 byte in).
//!
//! The first message of each candidate, sensor and batch size is written
//! to `target/bench/formats-samples/` for inspection (C and A as JSON, B
//! as CBOR).
//! `{m}` is `1rec`, `10rec` or `100rec`. Figures go to stdout as
//! `name value unit` lines and to `target/bench/formats.json`, the tables to
//! `target/bench/formats.md` (for scripts/bench-report); progress and,
//! at the end, a Markdown table for docs/BENCHMARKS.md go to stderr.
//! `cargo bench --bench formats`.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit};
use aes_kw::KwAes256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use miniz_oxide::deflate::core::{
    CompressorOxide, TDEFLFlush, TDEFLStatus, compress, create_comp_flags_from_zip_params,
};
use p256::ecdsa::signature::MultipartVerifier;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rand::TryRng;
use rand::rngs::SysRng;
use sensorgate::config::Column;
use sensorgate::demo::pty::{sim_decoder, sim_line};
use sensorgate::record::Record;
use sensorgate::seal::{GatewayKey, JWS_TYP, PublicKey, Sealer, SealerOptions, WireFormat};
use sensorgate::serial::format::csv::CsvDecoder;
use sensorgate::serial::format::{Decode, Decoded};
use serde_json::json;

/// Runs per figure; the median is reported.
const RUNS: usize = 9;
/// Messages sealed per candidate per run: the default
/// `rotate_after_messages`, so one ECDH per run is one per data key.
const MESSAGES: usize = 1000;
/// Messages per chunk: each candidate seals a chunk in turn.
const CHUNK: usize = 50;
/// Batch sizes, in records per message.
const BATCHES: [usize; 3] = [1, 10, 100];
const GATEWAY: &str = "bike-pi-01";
/// 16 random bytes in hex, like the spool's `new_epoch()`.
const EPOCH: &str = "5f0c2a9e7d3b41c8a6e2f1904b7d3c85";
/// The first record's receive time: 2025-11-25T19:46:40Z, in ms.
const START_MS: u64 = 1_764_100_000_000;
/// Both sensors send 10 lines a second.
const PERIOD_MS: u64 = 100;
/// A data key serves this many messages (the default).
const ROTATE_AFTER: u64 = 1000;
/// The JWE `alg` and the Concat KDF's AlgorithmID.
const JWE_ALG: &str = "ECDH-ES+A256KW";

/// The candidates, in the report's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidate {
    V1,
    V2,
    Jose2,
    Jose2Zip,
    V2Deflate6,
    V2Deflate1,
}

const CANDIDATES: [Candidate; 6] = [
    Candidate::V1,
    Candidate::V2,
    Candidate::Jose2,
    Candidate::Jose2Zip,
    Candidate::V2Deflate6,
    Candidate::V2Deflate1,
];

/// The candidates that are sealed (D is derived from B's messages).
const SEALED: [Candidate; 4] = [
    Candidate::V1,
    Candidate::V2,
    Candidate::Jose2,
    Candidate::Jose2Zip,
];

impl Candidate {
    fn id(self) -> &'static str {
        match self {
            Candidate::V1 => "v1",
            Candidate::V2 => "v2",
            Candidate::Jose2 => "jose2",
            Candidate::Jose2Zip => "jose2_zip",
            Candidate::V2Deflate6 => "v2_deflate6",
            Candidate::V2Deflate1 => "v2_deflate1",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Candidate::V1 => "A: v1 (JOSE, JSON by record)",
            Candidate::V2 => "B: v2 (COSE, CBOR by column)",
            Candidate::Jose2 => "C: JOSE v2 (JSON by column, b64:false)",
            Candidate::Jose2Zip => "C: JOSE v2 + zip DEF",
            Candidate::V2Deflate6 => "D: v2 + deflate level 6",
            Candidate::V2Deflate1 => "D: v2 + deflate level 1",
        }
    }

    fn deflate_level(self) -> Option<u8> {
        match self {
            Candidate::V2Deflate6 => Some(6),
            Candidate::V2Deflate1 => Some(1),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SensorKind {
    Bike,
    Env,
}

impl SensorKind {
    fn name(self) -> &'static str {
        match self {
            SensorKind::Bike => "bike",
            SensorKind::Env => "env",
        }
    }

    fn encrypt(self) -> Vec<String> {
        match self {
            SensorKind::Bike => vec!["heart_rate".into(), "incline".into(), "resistance".into()],
            SensorKind::Env => vec!["co2".into()],
        }
    }
}

/// What one candidate gave for one sensor and batch size.
#[derive(Default, Clone)]
struct Tally {
    messages: usize,
    records: usize,
    bytes: usize,
    /// Per run: µs per message.
    runs_us: Vec<f64>,
    /// Per run: the time over A's time in the same run.
    over_v1: Vec<f64>,
}

impl Tally {
    fn add(&mut self, n: usize, sizes: impl Iterator<Item = usize>) {
        for size in sizes {
            self.messages += 1;
            self.records += n;
            self.bytes += size;
        }
    }
}

/// The figures of one candidate, for the table.
#[derive(Clone, Copy)]
struct Row {
    bytes_per_record: f64,
    over_raw: f64,
    us_per_record: f64,
    over_v1: f64,
}

fn main() {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp")
        .to_path_buf();
    fs::create_dir_all(target.join("bench")).expect("create target/bench");
    let started = Instant::now();
    let mut report = Report::new();
    progress(&format!(
        "formats bench: {RUNS} runs per figure, {MESSAGES} messages per candidate per run"
    ));

    // One gateway key and one recipient key for every candidate; the
    // prototype signs with the same key as the real sealer.
    let secret = p256::SecretKey::try_generate_from_rng(&mut SysRng).expect("random key");
    let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 PEM");
    let signing = SigningKey::from(&secret);
    let ring_signer = RingSigner::new(&signing);
    let recipient_secret = p256::SecretKey::try_generate_from_rng(&mut SysRng).expect("random key");
    let recipient = PublicKey::from_p256(recipient_secret.public_key());
    let gateway_key = || GatewayKey::from_pkcs8_pem(&pem).expect("the gateway key");
    report.machine["sealer_default"] = json!(format!("{:?}", SealerOptions::default()));
    report.machine["gateway"] = json!(GATEWAY);
    report.machine["epoch"] = json!(EPOCH);
    report.machine["clock"] = json!(CLOCK);

    // The first message of each candidate, sensor and batch size.
    let samples = target.join("bench").join("formats-samples");
    fs::create_dir_all(&samples).expect("create target/bench/formats-samples");
    // Baselines, measured in the same chunks: one ES256 signature (every
    // candidate signs once per message) and the fixed cost of one raw
    // deflate (a reused compressor reset, then a 1-byte input). Per run,
    // µs per message.
    let mut sign_runs = vec![];
    let mut deflate_fixed_runs = [vec![], vec![]];

    // table[sensor] = (sensor, rows[batch][candidate])
    let mut table: Vec<(SensorKind, Vec<[Row; 6]>)> = vec![];
    for kind in [SensorKind::Bike, SensorKind::Env] {
        let sensor = kind.name();
        let encrypt = kind.encrypt();
        let mut source = RecordSource::new(kind);
        let mut rows_by_batch = vec![];
        for n in BATCHES {
            let label = format!("{n}rec");
            progress(&format!("{sensor} {label}: sealing with every candidate"));
            let mut tallies: Vec<Tally> = vec![Tally::default(); CANDIDATES.len()];
            let (mut raw_bytes, mut raw_records) = (0usize, 0usize);
            for run in 0..RUNS {
                let mut batches = Vec::with_capacity(MESSAGES);
                for _ in 0..MESSAGES {
                    let (batch, raw) = source.batch(n);
                    raw_bytes += raw;
                    raw_records += n;
                    batches.push(batch);
                }
                // New sealers per run, made outside the timing: each makes
                // one data key (one ECDH) on its first message.
                let mut sealers: Vec<(Candidate, AnySealer)> = SEALED
                    .iter()
                    .map(|&c| {
                        let sealer = match c {
                            Candidate::V1 | Candidate::V2 => AnySealer::Lib(Box::new(
                                Sealer::new(
                                    GATEWAY,
                                    EPOCH,
                                    gateway_key(),
                                    recipient.clone(),
                                    &encrypt,
                                )
                                .with_options(SealerOptions {
                                    format: if c == Candidate::V1 {
                                        WireFormat::V1
                                    } else {
                                        WireFormat::V2
                                    },
                                    ..SealerOptions::default()
                                }),
                            )),
                            _ => AnySealer::Jose(Box::new(Jose2::new(
                                signing.clone(),
                                recipient_secret.public_key(),
                                recipient.kid(),
                                &encrypt,
                                c == Candidate::Jose2Zip,
                            ))),
                        };
                        (c, sealer)
                    })
                    .collect();
                let mut deflaters = [Candidate::V2Deflate6, Candidate::V2Deflate1]
                    .map(|c| (c, Deflater::new(c.deflate_level().expect("a D candidate"))));
                let mut cpu = [Duration::ZERO; CANDIDATES.len()];
                let (mut sign, mut deflate_fixed) = (Duration::ZERO, [Duration::ZERO; 2]);
                let mut fixed = [Deflater::new(6), Deflater::new(1)];
                let mut compressed = Vec::new();
                // Chunks of messages, every candidate in turn on each, in
                // an order rotated from chunk to chunk: a busy spell of
                // the machine falls on all of them.
                for (k, chunk) in batches.chunks(CHUNK).enumerate() {
                    let mut payloads: Vec<(usize, Vec<u8>)> = vec![];
                    for j in 0..sealers.len() {
                        let (candidate, sealer) = &mut sealers[(j + k + run) % SEALED.len()];
                        let start = thread_cpu();
                        let messages: Vec<Vec<u8>> = chunk.iter().map(|b| sealer.seal(b)).collect();
                        cpu[index(*candidate)] += thread_cpu() - start;
                        tallies[index(*candidate)].add(n, messages.iter().map(Vec::len));
                        if run == 0 && k == 0 {
                            let ext = if *candidate == Candidate::V2 {
                                "cbor"
                            } else {
                                "json"
                            };
                            let file = format!("{sensor}_{label}_{}.{ext}", candidate.id());
                            fs::write(samples.join(file), &messages[0]).expect("write a sample");
                        }
                        match (&*candidate, &*sealer) {
                            (Candidate::V2, _) => {
                                payloads = messages
                                    .iter()
                                    .map(|m| (m.len(), sign1_payload(m)))
                                    .collect();
                            }
                            (_, AnySealer::Jose(jose)) if run == 0 && k == 0 => {
                                jose.check(&messages[0], &chunk[0]);
                            }
                            _ => {}
                        }
                    }
                    // D: B's payloads compressed, on top of B's seal time.
                    for (candidate, deflater) in &mut deflaters {
                        let mut sizes = Vec::with_capacity(payloads.len());
                        let start = thread_cpu();
                        for (_, payload) in &payloads {
                            deflater.deflate(payload, &mut compressed);
                            sizes.push(compressed.len());
                        }
                        cpu[index(*candidate)] += thread_cpu() - start;
                        if run == 0 && k == 0 {
                            deflater.deflate(&payloads[0].1, &mut compressed);
                            let back = miniz_oxide::inflate::decompress_to_vec(&compressed)
                                .expect("inflate");
                            assert_eq!(back, payloads[0].1, "deflate round trip");
                        }
                        tallies[index(*candidate)].add(
                            n,
                            payloads.iter().zip(&sizes).map(|((message, payload), c)| {
                                message - bstr_len(payload.len()) + bstr_len(*c)
                            }),
                        );
                    }
                    let start = thread_cpu();
                    for _ in chunk {
                        std::hint::black_box(ring_signer.sign(&[7u8; 64]));
                    }
                    sign += thread_cpu() - start;
                    for (deflater, time) in fixed.iter_mut().zip(&mut deflate_fixed) {
                        let start = thread_cpu();
                        for _ in chunk {
                            deflater.deflate(b"x", &mut compressed);
                        }
                        *time += thread_cpu() - start;
                    }
                }
                sign_runs.push(sign.as_secs_f64() * 1e6 / MESSAGES as f64);
                for (runs, time) in deflate_fixed_runs.iter_mut().zip(deflate_fixed) {
                    runs.push(time.as_secs_f64() * 1e6 / MESSAGES as f64);
                }
                let v2 = cpu[index(Candidate::V2)];
                for c in [Candidate::V2Deflate6, Candidate::V2Deflate1] {
                    cpu[index(c)] += v2;
                }
                let v1 = cpu[index(Candidate::V1)].as_secs_f64();
                for (tally, time) in tallies.iter_mut().zip(cpu) {
                    tally
                        .runs_us
                        .push(time.as_secs_f64() * 1e6 / MESSAGES as f64);
                    tally.over_v1.push(time.as_secs_f64() / v1);
                }
            }

            let raw = raw_bytes as f64 / raw_records as f64;
            report.figure(
                &format!("{sensor}_raw_bytes_per_record_{label}"),
                raw,
                "bytes/record",
                vec![],
            );
            let mut rows = [Row {
                bytes_per_record: 0.0,
                over_raw: 0.0,
                us_per_record: 0.0,
                over_v1: 0.0,
            }; 6];
            for (candidate, tally) in CANDIDATES.iter().zip(&tallies) {
                let name = format!("{sensor}_{}", candidate.id());
                let message = tally.bytes as f64 / tally.messages as f64;
                let per_record = tally.bytes as f64 / tally.records as f64;
                report.figure(
                    &format!("{name}_message_bytes_{label}"),
                    message,
                    "bytes",
                    vec![],
                );
                report.figure(
                    &format!("{name}_bytes_per_record_{label}"),
                    per_record,
                    "bytes/record",
                    vec![],
                );
                report.figure(
                    &format!("{name}_over_raw_{label}"),
                    per_record / raw,
                    "ratio",
                    vec![],
                );
                let us = median(tally.runs_us.clone());
                report.figure(
                    &format!("{name}_seal_us_per_message_{label}"),
                    us,
                    "us/msg",
                    tally.runs_us.clone(),
                );
                let per_record_runs: Vec<f64> =
                    tally.runs_us.iter().map(|t| t / n as f64).collect();
                report.median(
                    &format!("{name}_seal_us_per_record_{label}"),
                    "us/record",
                    &per_record_runs,
                );
                let over_v1 = median(tally.over_v1.clone());
                if *candidate != Candidate::V1 {
                    report.ratio(
                        &format!("{name}_seal_over_v1_{label}"),
                        tally.over_v1.clone(),
                    );
                }
                rows[index(*candidate)] = Row {
                    bytes_per_record: per_record,
                    over_raw: per_record / raw,
                    us_per_record: us / n as f64,
                    over_v1,
                };
            }
            rows_by_batch.push(rows);
        }
        table.push((kind, rows_by_batch));
    }
    report.median("es256_sign_us", "us/msg", &sign_runs);
    report.median("deflate6_fixed_us", "us/msg", &deflate_fixed_runs[0]);
    report.median("deflate1_fixed_us", "us/msg", &deflate_fixed_runs[1]);
    let markdown = print_table(&table);
    // scripts/bench-report puts this into docs/BENCHMARKS.md.
    std::fs::write(target.join("bench").join("formats.md"), markdown)
        .expect("write target/bench/formats.md");
    report.write(
        &target.join("bench").join("formats.json"),
        started.elapsed(),
    );
}

/// A real sealer (A, B) or the prototype (C).
enum AnySealer {
    Lib(Box<Sealer>),
    Jose(Box<Jose2>),
}

impl AnySealer {
    fn seal(&mut self, batch: &[Record]) -> Vec<u8> {
        match self {
            AnySealer::Lib(sealer) => sealer.seal(batch).expect("seal a batch").bytes,
            AnySealer::Jose(sealer) => sealer.seal(batch),
        }
    }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`): the time the
/// bench spends descheduled on a shared machine is not seal CPU.
/// The calling thread's CPU time: what sealing cost, whatever else the
/// shared machine was doing (wall time swung by ±50 % here).
fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

const CLOCK: &str = "thread CPU time (CLOCK_THREAD_CPUTIME_ID)";

fn index(candidate: Candidate) -> usize {
    CANDIDATES
        .iter()
        .position(|&c| c == candidate)
        .expect("a candidate")
}

/// The Markdown tables for docs/BENCHMARKS.md, one per sensor: printed on
/// stderr and returned.
fn print_table(table: &[(SensorKind, Vec<[Row; 6]>)]) -> String {
    let mut t = String::new();
    for (kind, rows_by_batch) in table {
        t.push_str(&format!(
            "\n{} sensor: bytes on the wire per record (× the raw line bytes), seal CPU per record (× A's)\n\n",
            kind.name()
        ));
        t.push_str("| candidate |");
        for n in BATCHES {
            t.push_str(&format!(" bytes/rec, {n} rec |"));
        }
        for n in BATCHES {
            t.push_str(&format!(" µs/rec, {n} rec |"));
        }
        t.push_str("\n| --- |");
        for _ in 0..2 * BATCHES.len() {
            t.push_str(" ---: |");
        }
        t.push('\n');
        for (c, candidate) in CANDIDATES.iter().enumerate() {
            t.push_str(&format!("| {} |", candidate.label()));
            for rows in rows_by_batch {
                let r = rows[c];
                t.push_str(&format!(
                    " {:.1} ({:.2}×) |",
                    r.bytes_per_record, r.over_raw
                ));
            }
            for rows in rows_by_batch {
                let r = rows[c];
                t.push_str(&format!(" {:.2} ({:.2}×) |", r.us_per_record, r.over_v1));
            }
            t.push('\n');
        }
    }
    progress(&t);
    t
}

/// The length of a CBOR byte string of `len` bytes, head included.
fn bstr_len(len: usize) -> usize {
    let head = match len {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    };
    head + len
}

/// The payload of a tagged COSE_Sign1, `18([protected, {}, payload, sig])`,
/// read with ciborium (not the library's own reader).
fn sign1_payload(message: &[u8]) -> Vec<u8> {
    use ciborium::Value as Cbor;
    let value: Cbor = ciborium::from_reader(message).expect("a CBOR message");
    let Cbor::Tag(18, inner) = value else {
        panic!("not a COSE_Sign1 (tag 18)");
    };
    let Cbor::Array(mut items) = *inner else {
        panic!("COSE_Sign1 is not an array");
    };
    assert_eq!(items.len(), 4, "COSE_Sign1 has four members");
    match items.swap_remove(2) {
        Cbor::Bytes(payload) => payload,
        _ => panic!("the COSE_Sign1 payload is not a byte string"),
    }
}

/// Raw deflate (RFC 1951) with one compressor kept from one input to the
/// next, as a sealer would keep it: reset, not reallocated.
struct Deflater {
    compressor: Box<CompressorOxide>,
}

impl Deflater {
    fn new(level: u8) -> Deflater {
        // window_bits 0: raw deflate, no zlib header.
        let flags = create_comp_flags_from_zip_params(level.into(), 0, 0);
        Deflater {
            compressor: Box::new(CompressorOxide::new(flags)),
        }
    }

    fn deflate(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        self.compressor.reset();
        out.clear();
        out.resize(input.len() + input.len() / 8 + 64, 0);
        let mut at = 0;
        loop {
            let (status, read, written) = compress(
                &mut self.compressor,
                input,
                &mut out[at..],
                TDEFLFlush::Finish,
            );
            at += written;
            match status {
                TDEFLStatus::Done => break,
                TDEFLStatus::Okay => {
                    input = &input[read..];
                    let len = out.len();
                    out.resize(len * 2, 0);
                }
                other => panic!("deflate failed: {other:?}"),
            }
        }
        out.truncate(at);
    }
}

// ---------------------------------------------------------------------------
// Candidate C: a JOSE version 2 prototype
// ---------------------------------------------------------------------------

/// A data key as the real sealer keeps one: the CEK wrapped once (one
/// ECDH), reused for [`ROTATE_AFTER`] messages, a counter IV per message.
struct JoseDataKey {
    cek: [u8; 32],
    epk_x: String,
    epk_y: String,
    wrapped: String,
    iv_prefix: [u8; 4],
    counter: u64,
}

impl JoseDataKey {
    fn generate(recipient: &p256::PublicKey) -> JoseDataKey {
        let ephemeral = p256::ecdh::EphemeralSecret::try_generate_from_rng(&mut SysRng)
            .expect("random ephemeral key");
        let point = ephemeral.public_key().to_sec1_point(false);
        let epk_x = URL_SAFE_NO_PAD.encode(point.x().expect("x"));
        let epk_y = URL_SAFE_NO_PAD.encode(point.y().expect("y"));
        let shared = ephemeral.diffie_hellman(recipient);
        // Concat KDF (RFC 7518 §4.6.2): AlgorithmID, empty apu and apv,
        // 256 bits.
        let mut other_info = Vec::with_capacity(32);
        other_info.extend_from_slice(&(JWE_ALG.len() as u32).to_be_bytes());
        other_info.extend_from_slice(JWE_ALG.as_bytes());
        other_info.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let mut kek = [0u8; 32];
        concat_kdf::derive_key_into::<sha2_10::Sha256>(
            shared.raw_secret_bytes(),
            &other_info,
            &mut kek,
        )
        .expect("Concat KDF");
        let mut cek = [0u8; 32];
        SysRng.try_fill_bytes(&mut cek).expect("random CEK");
        let mut iv_prefix = [0u8; 4];
        SysRng
            .try_fill_bytes(&mut iv_prefix)
            .expect("random IV prefix");
        let mut wrapped = [0u8; 40];
        KwAes256::new_from_slice(&kek)
            .expect("32-byte KEK")
            .wrap_key(&cek, &mut wrapped)
            .expect("key wrap");
        JoseDataKey {
            cek,
            epk_x,
            epk_y,
            wrapped: URL_SAFE_NO_PAD.encode(wrapped),
            iv_prefix,
            counter: 0,
        }
    }
}

/// Candidate C: `{"protected":..,"payload":"<the payload JSON as a JSON
/// string>","signature":..}` (RFC 7515 §7.2.2 with RFC 7797's unencoded
/// payload), the payload
/// An ES256 signer on ring, as the sealer's ([`GatewayKey`] signs with
/// ring): the candidates' signature costs are the same code.
struct RingSigner {
    pair: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl RingSigner {
    fn new(key: &SigningKey) -> RingSigner {
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.to_bytes(),
            key.verifying_key().to_sec1_point(false).as_bytes(),
            &rng,
        )
        .expect("a P-256 key pair");
        RingSigner { pair, rng }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signature = self.pair.sign(&self.rng, message).expect("random nonce");
        signature.as_ref().to_vec()
    }
}

/// `{"v":2,"gateway":..,"sensor":..,"epoch":..,"seq":[f,l],"tu":3,"t":[t0,d1,..],
/// "cols":[["speed",[..]],..],"ep":[2,3,4],"jwe":{"protected":..,"encrypted_key":..,
/// "iv":..,"ciphertext":..,"tag":..}}` and the JWE plaintext
/// `[["heart_rate",[..]],..]`. Buffers are kept from one message to the
/// next, like the real sealer's.
struct Jose2 {
    signer: RingSigner,
    verifying: VerifyingKey,
    /// base64url of the JWS protected header.
    protected: String,
    recipient: p256::PublicKey,
    recipient_kid: String,
    encrypt: Vec<String>,
    zip: Option<Deflater>,
    key: Option<JoseDataKey>,
    used: u64,
    plaintext: Vec<u8>,
    deflated: Vec<u8>,
    payload: Vec<u8>,
}

impl Jose2 {
    fn new(
        signing: SigningKey,
        recipient: p256::PublicKey,
        recipient_kid: &str,
        encrypt: &[String],
        zip: bool,
    ) -> Jose2 {
        let kid = PublicKey::from_p256(p256::PublicKey::from(signing.verifying_key()));
        let header = format!(
            r#"{{"alg":"ES256","kid":"{}","typ":"{JWS_TYP}","b64":false,"crit":["b64"]}}"#,
            kid.kid()
        );
        Jose2 {
            signer: RingSigner::new(&signing),
            verifying: *signing.verifying_key(),
            protected: URL_SAFE_NO_PAD.encode(header),
            recipient,
            recipient_kid: recipient_kid.to_string(),
            encrypt: encrypt.to_vec(),
            zip: zip.then(|| Deflater::new(6)),
            key: None,
            used: 0,
            plaintext: Vec::new(),
            deflated: Vec::new(),
            payload: Vec::new(),
        }
    }

    fn seal(&mut self, records: &[Record]) -> Vec<u8> {
        let first = records[0].seq;
        let last = first + records.len() as u64 - 1;
        let sensor = &*records[0].sensor;
        let names: Vec<&str> = records[0].fields.iter().map(|f| &*f.name).collect();
        debug_assert!(records.iter().all(|r| r.fields.len() == names.len()));
        let positions: Vec<usize> = (0..names.len())
            .filter(|&j| self.encrypt.iter().any(|e| e == names[j]))
            .collect();

        // The JWE of the encrypted columns.
        self.plaintext.clear();
        write_columns(&mut self.plaintext, records, &names, &positions, true);
        if self.key.is_none() || self.used >= ROTATE_AFTER {
            self.key = Some(JoseDataKey::generate(&self.recipient));
            self.used = 0;
        }
        self.used += 1;
        let key = self.key.as_mut().expect("set above");
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&key.iv_prefix);
        iv[4..].copy_from_slice(&key.counter.to_be_bytes());
        key.counter += 1;
        let mut header = Vec::with_capacity(320);
        header.extend_from_slice(br#"{"alg":"ECDH-ES+A256KW","enc":"A256GCM","#);
        if self.zip.is_some() {
            header.extend_from_slice(br#""zip":"DEF","#);
        }
        write!(
            header,
            r#""kid":"{}","epk":{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}},"gateway":"#,
            self.recipient_kid, key.epk_x, key.epk_y
        )
        .expect("write to a Vec");
        json_string(&mut header, GATEWAY);
        header.extend_from_slice(br#","sensor":"#);
        json_string(&mut header, sensor);
        header.extend_from_slice(br#","epoch":"#);
        json_string(&mut header, EPOCH);
        write!(header, r#","seq":[{first},{last}]}}"#).expect("write to a Vec");
        let jwe_protected = URL_SAFE_NO_PAD.encode(&header);
        let content = match &mut self.zip {
            Some(deflater) => {
                deflater.deflate(&self.plaintext, &mut self.deflated);
                &mut self.deflated
            }
            None => &mut self.plaintext,
        };
        // The sealer's own AES-GCM (ring's), so the candidates differ in
        // format only.
        let tag = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key.cek).expect("32-byte CEK"),
        )
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(iv),
            ring::aead::Aad::from(jwe_protected.as_bytes()),
            content.as_mut_slice(),
        )
        .expect("AES-GCM");

        // The payload.
        let payload = &mut self.payload;
        payload.clear();
        payload.extend_from_slice(br#"{"v":2,"gateway":"#);
        json_string(payload, GATEWAY);
        payload.extend_from_slice(br#","sensor":"#);
        json_string(payload, sensor);
        payload.extend_from_slice(br#","epoch":"#);
        json_string(payload, EPOCH);
        write!(payload, r#","seq":[{first},{last}],"#).expect("write to a Vec");
        write_times(payload, records);
        payload.extend_from_slice(br#","cols":"#);
        write_columns(payload, records, &names, &positions, false);
        payload.extend_from_slice(br#","ep":["#);
        for (i, p) in positions.iter().enumerate() {
            if i > 0 {
                payload.push(b',');
            }
            write!(payload, "{p}").expect("write to a Vec");
        }
        payload.extend_from_slice(br#"],"jwe":{"protected":""#);
        payload.extend_from_slice(jwe_protected.as_bytes());
        payload.extend_from_slice(br#"","encrypted_key":""#);
        payload.extend_from_slice(key.wrapped.as_bytes());
        payload.extend_from_slice(br#"","iv":""#);
        b64_into(payload, &iv);
        payload.extend_from_slice(br#"","ciphertext":""#);
        b64_into(payload, content);
        payload.extend_from_slice(br#"","tag":""#);
        b64_into(payload, tag.as_ref());
        payload.extend_from_slice(br#""}}"#);

        // The JWS: signed over ASCII(protected) '.' payload, the payload as
        // it is (RFC 7797 §3); in the message it is a JSON string. Signed
        // by ring, as the sealer signs.
        let mut signed = Vec::with_capacity(self.protected.len() + 1 + payload.len());
        signed.extend_from_slice(self.protected.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(payload);
        let signature = self.signer.sign(&signed);
        let mut out = Vec::with_capacity(payload.len() + payload.len() / 4 + 200);
        out.extend_from_slice(br#"{"protected":""#);
        out.extend_from_slice(self.protected.as_bytes());
        out.extend_from_slice(br#"","payload":"#);
        json_string(
            &mut out,
            std::str::from_utf8(payload).expect("the payload is UTF-8"),
        );
        out.extend_from_slice(br#","signature":""#);
        b64_into(&mut out, &signature);
        out.extend_from_slice(br#""}"#);
        out
    }

    /// Checks one message outside the timing: valid JSON, the signature
    /// verifies over the unescaped payload, and the JWE decrypts (and
    /// inflates) to the columns of the batch.
    fn check(&self, message: &[u8], records: &[Record]) {
        let jws: serde_json::Value = serde_json::from_slice(message).expect("the JWS is JSON");
        let protected = jws["protected"].as_str().expect("protected");
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(protected).expect("b64")).expect("JSON");
        assert_eq!(header["b64"], false);
        let payload = jws["payload"].as_str().expect("a payload string");
        let signature = URL_SAFE_NO_PAD
            .decode(jws["signature"].as_str().expect("signature"))
            .expect("b64");
        self.verifying
            .multipart_verify(
                &[protected.as_bytes(), b".", payload.as_bytes()],
                &Signature::from_slice(&signature).expect("r || s"),
            )
            .expect("the signature verifies");
        let batch: serde_json::Value = serde_json::from_str(payload).expect("the payload is JSON");
        assert_eq!(batch["seq"][0], records[0].seq);
        assert_eq!(
            batch["t"].as_array().expect("t").len(),
            records.len(),
            "one time per record"
        );
        let jwe = &batch["jwe"];
        let field = |name: &str| {
            URL_SAFE_NO_PAD
                .decode(jwe[name].as_str().expect("a JWE member"))
                .expect("b64")
        };
        let key = self.key.as_ref().expect("a data key");
        let mut content = field("ciphertext");
        let iv: [u8; 12] = field("iv").try_into().expect("12 bytes");
        let tag: [u8; 16] = field("tag").try_into().expect("16 bytes");
        Aes256Gcm::new_from_slice(&key.cek)
            .expect("CEK")
            .decrypt_inout_detached(
                &iv.into(),
                jwe["protected"].as_str().expect("protected").as_bytes(),
                content.as_mut_slice().into(),
                &tag.into(),
            )
            .expect("the JWE decrypts");
        if self.zip.is_some() {
            content = miniz_oxide::inflate::decompress_to_vec(&content).expect("inflate");
        }
        let columns: serde_json::Value = serde_json::from_slice(&content).expect("JSON columns");
        assert_eq!(
            columns.as_array().expect("columns").len(),
            self.encrypt.len(),
            "every encrypted column"
        );
    }
}

/// `[[name,[v0,v1,..]],..]`: the encrypted columns (`encrypted`) or the
/// others, values as plain JSON numbers.
fn write_columns(
    out: &mut Vec<u8>,
    records: &[Record],
    names: &[&str],
    positions: &[usize],
    encrypted: bool,
) {
    out.push(b'[');
    let mut any = false;
    for (j, name) in names.iter().enumerate() {
        if positions.contains(&j) != encrypted {
            continue;
        }
        if any {
            out.push(b',');
        }
        any = true;
        out.push(b'[');
        json_string(out, name);
        out.extend_from_slice(b",[");
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, &r.fields[j].value).expect("a value serializes");
        }
        out.extend_from_slice(b"]]");
    }
    out.push(b']');
}

/// `"tu":..,"t":[first,delta,..]` in the coarsest exact unit, as version 2.
fn write_times(out: &mut Vec<u8>, records: &[Record]) {
    let nanos = |r: &Record| {
        r.ts.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos()
    };
    let (tu, unit) = [(0, 1_000_000_000u128), (3, 1_000_000), (6, 1_000), (9, 1)]
        .into_iter()
        .find(|&(_, unit)| records.iter().all(|r| nanos(r) % unit == 0))
        .expect("whole nanoseconds");
    write!(out, r#""tu":{tu},"t":["#).expect("write to a Vec");
    let mut previous = 0i128;
    for (i, r) in records.iter().enumerate() {
        let units = (nanos(r) / unit) as i128;
        if i > 0 {
            out.push(b',');
        }
        write!(out, "{}", units - previous).expect("write to a Vec");
        previous = units;
    }
    out.push(b']');
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string serializes");
}

fn b64_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(
        start + base64::encoded_len(bytes.len(), false).expect("short"),
        0,
    );
    let written = URL_SAFE_NO_PAD
        .encode_slice(bytes, &mut out[start..])
        .expect("the buffer fits");
    out.truncate(start + written);
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// SplitMix64: a small deterministic PRNG, fixed seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `-a ..= a`.
    fn step(&mut self, a: i64) -> i64 {
        (self.next() % (2 * a as u64 + 1)) as i64 - a
    }
}

/// The environment sensor: `temperature,humidity,pressure,co2`, e.g.
/// `21.37,45.2,1013.25,612`. Each value is a slow random walk pulled
/// back towards its centre, plus a little noise of its own per line.
struct EnvLines {
    rng: SplitMix,
    /// Hundredths of °C, tenths of % RH, hundredths of hPa, ppm.
    walk: [i64; 4],
}

impl EnvLines {
    const CENTRE: [i64; 4] = [2150, 450, 101_325, 650];
    const STEP: [i64; 4] = [2, 1, 3, 3];
    const NOISE: [i64; 4] = [3, 2, 4, 5];

    fn new() -> EnvLines {
        EnvLines {
            rng: SplitMix(0x5e15_0a6e_2026_0016),
            walk: EnvLines::CENTRE,
        }
    }

    fn next_line(&mut self) -> String {
        let mut v = [0i64; 4];
        for (k, value) in v.iter_mut().enumerate() {
            let pull = (EnvLines::CENTRE[k] - self.walk[k]).signum()
                * i64::from(self.rng.next() % 16 == 0);
            self.walk[k] += self.rng.step(EnvLines::STEP[k]) + pull;
            *value = self.walk[k] + self.rng.step(EnvLines::NOISE[k]);
        }
        format!(
            "{}.{:02},{}.{},{}.{:02},{}",
            v[0] / 100,
            v[0] % 100,
            v[1] / 10,
            v[1] % 10,
            v[2] / 100,
            v[2] % 100,
            v[3]
        )
    }
}

fn env_decoder() -> CsvDecoder {
    let columns: Vec<Column> = ["temperature", "humidity", "pressure", "co2"]
        .map(Column::auto)
        .to_vec();
    CsvDecoder::new(&columns, ',')
}

/// Records of one sensor decoded from its CSV lines as the gateway decodes
/// them, ascending sequence numbers, stamped at [`PERIOD_MS`] with jitter.
struct RecordSource {
    kind: SensorKind,
    decoder: CsvDecoder,
    sensor: Arc<str>,
    seq: u64,
    env: EnvLines,
    jitter: SplitMix,
}

impl RecordSource {
    fn new(kind: SensorKind) -> RecordSource {
        RecordSource {
            kind,
            decoder: match kind {
                SensorKind::Bike => sim_decoder(),
                SensorKind::Env => env_decoder(),
            },
            sensor: Arc::from(kind.name()),
            seq: 0,
            env: EnvLines::new(),
            jitter: SplitMix(0x0717_7e12_2026_0016),
        }
    }

    /// `n` records and the bytes of their lines, newlines included.
    fn batch(&mut self, n: usize) -> (Vec<Record>, usize) {
        let mut raw = 0;
        let records = (0..n)
            .map(|_| {
                let seq = self.seq;
                self.seq += 1;
                let line = match self.kind {
                    SensorKind::Bike => sim_line(seq),
                    SensorKind::Env => self.env.next_line(),
                };
                raw += line.len() + 1;
                let Ok(Decoded::Fields(fields)) = self.decoder.decode(line.as_bytes()) else {
                    panic!("line {seq} ({line:?}) does not decode");
                };
                let ms = START_MS + seq * PERIOD_MS + self.jitter.next() % 5;
                Record {
                    sensor: Arc::clone(&self.sensor),
                    seq,
                    ts: UNIX_EPOCH + Duration::from_millis(ms),
                    clock: None,
                    fields,
                }
            })
            .collect();
        (records, raw)
    }
}

// ---------------------------------------------------------------------------
// Report (as benches/seal.rs)
// ---------------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct Report {
    machine: serde_json::Value,
    figures: Vec<serde_json::Value>,
}

impl Report {
    fn new() -> Report {
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Report {
            machine: json!({
                "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
                "cpu": cpu,
                "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                "loadavg_at_start": loadavg(),
            }),
            figures: vec![],
        }
    }

    /// One `name value unit` line, and its entry in the JSON.
    fn figure(&mut self, name: &str, value: f64, unit: &str, runs: Vec<f64>) {
        let digits = match unit {
            "ratio" => 3,
            "us/record" => 2,
            "us/msg" | "bytes/record" => 1,
            _ => 0,
        };
        println!("{name} {value:.digits$} {unit}");
        self.figures
            .push(json!({ "name": name, "value": value, "unit": unit, "runs": runs }));
    }

    fn median(&mut self, name: &str, unit: &str, runs: &[f64]) {
        self.figure(name, median(runs.to_vec()), unit, runs.to_vec());
    }

    /// The median of the per-run ratios.
    fn ratio(&mut self, name: &str, ratios: Vec<f64>) {
        self.figure(name, median(ratios.clone()), "ratio", ratios);
    }

    fn write(&self, path: &Path, took: Duration) {
        let doc = json!({
            "bench": "formats",
            "command": "cargo bench --bench formats",
            "date": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "runs_per_figure": RUNS,
            "messages_per_run": MESSAGES,
            "batches": BATCHES,
            "statistic": "median",
            "duration_s": took.as_secs_f64(),
            "machine": self.machine,
            "loadavg_at_end": loadavg(),
            "figures": self.figures,
        });
        let text = serde_json::to_string_pretty(&doc).expect("the report serializes");
        fs::write(path, text + "\n").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        progress(&format!(
            "formats bench: done in {:.0} s; figures in {}",
            took.as_secs_f64(),
            path.display()
        ));
    }
}

/// `/proc/loadavg`: the machine is shared, so say how busy it was.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn progress(line: &str) {
    eprintln!("{line}");
}
