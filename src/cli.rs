//! The subcommands behind `main.rs`. Each returns its exit code (sysexits)
//! and reports errors on stderr in one sentence that names the file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::seal;
use crate::telemetry::{self, Stats};
use crate::uplink;

pub const EX_OK: u8 = 0;
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_OSERR: u8 = 71;

fn fail(code: i32, message: impl std::fmt::Display) -> u8 {
    eprintln!("sensorgate: {message}");
    u8::try_from(code).unwrap_or(EX_SOFTWARE)
}

fn load(path: &Path) -> Result<Config, u8> {
    config::load(path).map_err(|e| fail(e.exit_code(), e))
}

fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            fail(
                i32::from(EX_OSERR),
                format!("cannot start the async runtime: {e}"),
            )
        })
}

/// Cancels `stop` on SIGTERM or SIGINT.
pub fn stop_on_signals(stop: CancellationToken) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
        }
        stop.cancel();
    });
    Ok(())
}

/// A token cancelled on SIGTERM or SIGINT, or the exit code when the
/// handlers cannot be installed. Inside the runtime.
fn stop_token() -> Result<CancellationToken, u8> {
    let stop = CancellationToken::new();
    stop_on_signals(stop.clone()).map_err(|e| {
        fail(
            i32::from(EX_OSERR),
            format!("cannot install signal handlers: {e}"),
        )
    })?;
    Ok(stop)
}

/// `sensorgate run`
pub fn run(config_path: &Path) -> u8 {
    let cfg = match load(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(&cfg.log);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %config_path.display(), "sensorgate starting");
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let stop = match stop_token() {
            Ok(stop) => stop,
            Err(code) => return code,
        };
        match crate::pipeline::run(cfg, Arc::new(Stats::default()), stop).await {
            Ok(stopped) => stopped.exit_code(),
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                fail(e.exit_code(), e)
            }
        }
    })
}

/// `sensorgate check-config`
pub fn check_config(config_path: &Path) -> u8 {
    let cfg = match load(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut problems: Vec<(i32, String)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    match seal::load_gateway_key(&cfg.seal.signing_key) {
        Ok(k) => notes.push(format!(
            "seal.signing_key {}: ok, kid {}",
            cfg.seal.signing_key,
            k.kid()
        )),
        Err(e) => problems.push((e.exit_code(), e.to_string())),
    }
    match seal::load_public_key(&cfg.seal.recipient_key) {
        Ok(k) => notes.push(format!(
            "seal.recipient_key {}: ok, kid {}",
            cfg.seal.recipient_key.display(),
            k.kid()
        )),
        Err(e) => problems.push((e.exit_code(), e.to_string())),
    }
    if cfg.mqtt.tls {
        match uplink::tls::check(&cfg.mqtt) {
            Ok(r) => {
                notes.push(format!(
                    "mqtt TLS: ok, client certificate {} valid until {} ({} days), {} CA certificate(s)",
                    r.client_cert_subject, r.not_after, r.days_left, r.ca_certs
                ));
                notes.extend(r.warnings.iter().map(|w| format!("warning: {w}")));
            }
            Err(e) => problems.push((e.exit_code(), e.to_string())),
        }
    } else {
        notes.push("warning: mqtt.tls = false: plaintext MQTT".into());
    }
    match crate::spool::sequences::check_state_dir(&cfg.gateway.state_dir) {
        Ok(note) => notes.push(note),
        Err(e) => problems.push((73, e.to_string())),
    }
    for s in &cfg.sensor {
        if s.device.exists() {
            continue;
        }
        if s.required {
            // `run` opens a required device once at start and exits 66
            // when it is missing; say so here with the same code.
            problems.push((
                66,
                format!(
                    "sensor {:?}: device {} is not present, and the sensor is `required = true`, \
                     so `run` refuses to start without it; plug the device in, fix [[sensor]] device, \
                     or set required = false to have `run` wait for it",
                    s.name,
                    s.device.display()
                ),
            ));
        } else {
            notes.push(format!(
                "warning: sensor {:?}: device {} is not present now; `run` keeps retrying until it appears",
                s.name,
                s.device.display()
            ));
        }
    }
    print!("{cfg}");
    let _ = io::stdout().flush();
    for n in &notes {
        eprintln!("check-config: {n}");
    }
    if let Some((code, _)) = problems.first() {
        for (_, p) in &problems {
            eprintln!("sensorgate: {p}");
        }
        return u8::try_from(*code).unwrap_or(EX_SOFTWARE);
    }
    eprintln!("check-config: {} is valid", config_path.display());
    EX_OK
}

/// `sensorgate keygen`. `recipient` only changes what is printed: the
/// recipient (cloud-side) key is the same P-256 key type as a gateway's
/// signing key, but its private half must stay on the cloud side.
pub fn keygen(out: &Path, name: &str, recipient: bool) -> u8 {
    match seal::keygen(out, name) {
        Ok(k) => {
            if recipient {
                eprintln!(
                    "wrote the recipient (cloud-side) key pair: {} (private, mode 0600; keep it on \
                     the cloud side for `sensorgate open --recipient-key`) and {}",
                    k.key_path.display(),
                    k.pub_path.display()
                );
                eprintln!(
                    "copy ONLY {} to the gateways (their [seal] recipient_key); never copy the .key",
                    k.pub_path.display()
                );
            } else {
                eprintln!(
                    "wrote {} (private, mode 0600) and {}",
                    k.key_path.display(),
                    k.pub_path.display()
                );
            }
            println!("{}", k.kid);
            EX_OK
        }
        Err(e) => fail(e.exit_code(), e),
    }
}

/// `sensorgate keygen --pkcs11 URI`: the pair made in the token.
pub fn keygen_pkcs11(uri: &str, out: &Path, name: &str) -> u8 {
    let uri = match crate::pkcs11::KeyUri::parse(uri) {
        Ok(uri) => uri,
        Err(e) => return fail(i32::from(EX_USAGE), format!("--pkcs11: {e}")),
    };
    match seal::keygen_pkcs11(&uri, out, name) {
        Ok((pub_path, kid)) => {
            eprintln!(
                "made the key pair {} (sensitive, not extractable: the private key stays in the token) and wrote {}",
                uri.key_name(),
                pub_path.display()
            );
            eprintln!(
                "set [seal] signing_key = \"{uri}\"; or, for the TLS client key, [mqtt] key_file = \"{uri}\" after `sensorgate csr --key URI --subject CN=...`"
            );
            println!("{kid}");
            EX_OK
        }
        Err(e) => fail(e.exit_code(), e),
    }
}

/// `sensorgate csr`: a certificate signing request for the TLS client key
/// (a file or a `pkcs11:` URI), signed by it, written to `out`.
pub fn csr(key: &str, subject: &str, out: &Path) -> u8 {
    let key = match crate::config::KeyRef::parse(key) {
        Ok(key) => key,
        Err(e) => return fail(i32::from(EX_USAGE), format!("--key: {e}")),
    };
    let pem = match uplink::csr::request_pem(&key, subject) {
        Ok(pem) => pem,
        Err(e) => return fail(e.exit_code(), e),
    };
    if let Err(e) = std::fs::write(out, pem) {
        return fail(73, format!("cannot write {}: {e}", out.display()));
    }
    eprintln!(
        "wrote {}: a certificate request for {subject} signed by {key}",
        out.display()
    );
    eprintln!(
        "have the broker's CA issue a client certificate from it, install that as [mqtt] cert_file, and set [mqtt] key_file = \"{key}\""
    );
    EX_OK
}

/// Where `open` reads sealed messages from.
#[derive(Debug, Clone)]
pub enum OpenSource {
    /// Messages on stdin until EOF: binary COSE (version 2) back to back or
    /// between newlines, hexadecimal lines, or version 1 JSON lines.
    Stdin,
    /// `--mqtt --config FILE`: subscribe until SIGINT/SIGTERM, or until
    /// `count` messages were handled.
    Mqtt { config: PathBuf, count: Option<u64> },
}

/// `sensorgate open`. Each `trust` path is a `.pub` file or a directory of
/// them; `state` is the file that carries the duplicate/gap state from one
/// run to the next.
pub fn open(
    recipient_key: &Path,
    trust: &[PathBuf],
    state: Option<&Path>,
    format: seal::OutputFormat,
    strict_order: bool,
    source: &OpenSource,
) -> u8 {
    let recipient = match seal::load_recipient_key(recipient_key) {
        Ok(k) => k,
        Err(e) => return fail(e.exit_code(), e),
    };
    let mut trusted = Vec::new();
    for p in trust {
        match seal::load_trusted_keys(p) {
            Ok(keys) => trusted.extend(keys),
            Err(e) => return fail(e.exit_code(), e),
        }
    }
    let mut opener = seal::Opener::new(trusted, Some(recipient)).with_strict_order(strict_order);
    if let Some(path) = state {
        match seal::SequenceTracker::load(path) {
            Ok(tracker) => opener = opener.with_tracker(tracker),
            Err(e) => return fail(e.exit_code(), e),
        }
    }
    let options = seal::StreamOptions {
        format,
        state: state.map(Path::to_path_buf),
        // MQTT messages are acknowledged once handled: what is held then
        // would be lost by a kill.
        hold_unsynced: match source {
            OpenSource::Stdin => seal::HOLD_UNSYNCED,
            OpenSource::Mqtt { .. } => 0,
        },
    };
    let result = match source {
        OpenSource::Stdin => seal::open_stream_with(
            io::stdin().lock(),
            io::stdout().lock(),
            io::stderr(),
            &mut opener,
            &options,
        ),
        OpenSource::Mqtt { config, count } => {
            match open_mqtt(config, *count, &mut opener, &options) {
                Ok(result) => result,
                Err(code) => return code,
            }
        }
    };
    match result {
        Ok(summary) if summary.rejected == 0 => EX_OK,
        Ok(_) => EX_DATAERR,
        Err(e) => fail(74, format!("I/O error while opening messages: {e}")),
    }
}

/// `open --mqtt`: subscribes as `config` says and opens what arrives; the
/// summary (and `--state`) is written however the subscription ends.
fn open_mqtt(
    config: &Path,
    count: Option<u64>,
    opener: &mut seal::Opener,
    options: &seal::StreamOptions,
) -> Result<io::Result<seal::OpenSummary>, u8> {
    let cfg = crate::consumer::load(config).map_err(|e| fail(e.exit_code(), e))?;
    let tls = if cfg.mqtt.tls {
        Some(uplink::tls::load_client_config(&cfg.mqtt).map_err(|e| fail(e.exit_code(), e))?)
    } else {
        eprintln!(
            "sensorgate: warning: mqtt.tls = false in {}: plaintext MQTT",
            config.display()
        );
        None
    };
    let rt = runtime()?;
    #[cfg(feature = "postgres")]
    if let Some(url) = &cfg.sink.postgres {
        // The records go to the database; what is printed is the totals.
        return Err(open_into_postgres(&rt, &cfg, tls, url, count, opener));
    }
    let mut sink = seal::MessageSink::new(opener, io::stdout().lock(), io::stderr(), options);
    let ended = rt.block_on(async {
        let stop = stop_token()?;
        Ok::<_, u8>(crate::consumer::run(&cfg, tls, &mut sink, count, stop).await)
    })?;
    if let Err(e) = &ended {
        eprintln!("sensorgate: {e}");
    }
    let summary = sink.finish();
    match ended {
        Err(e) if summary.is_ok() => Err(u8::try_from(e.exit_code()).unwrap_or(EX_SOFTWARE)),
        _ => Ok(summary),
    }
}

/// `open --mqtt` with `[sink] postgres`: until stopped (or `count`
/// messages), then the exit code.
#[cfg(feature = "postgres")]
fn open_into_postgres(
    rt: &tokio::runtime::Runtime,
    cfg: &crate::consumer::ConsumerConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    url: &str,
    count: Option<u64>,
    opener: &mut seal::Opener,
) -> u8 {
    use crate::sink::postgres::PgHandler;
    rt.block_on(async {
        let stop = match stop_token() {
            Ok(stop) => stop,
            Err(code) => return code,
        };
        let mut handler =
            match PgHandler::connect(url, cfg.sink.ca_file.clone(), opener, stop.clone()).await {
                Ok(h) => h,
                Err(e) => return fail(e.exit_code(), e),
            };
        let ended = crate::consumer::run(cfg, tls, &mut handler, count, stop).await;
        eprintln!("sensorgate: {}", handler.finish().await);
        match ended {
            Ok(()) => EX_OK,
            Err(e) => fail(e.exit_code(), e),
        }
    })
}

/// `sensorgate demo`
#[cfg(feature = "demo")]
pub fn demo(count: u64, rate: Option<f64>) -> u8 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(crate::demo::run(count, rate))
}

#[cfg(not(feature = "demo"))]
pub fn demo(_count: u64, _rate: Option<f64>) -> u8 {
    fail(
        69,
        "this build has no demo (built without the `demo` feature)",
    )
}
