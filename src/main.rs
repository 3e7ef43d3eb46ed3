//! The `sensorgate` command: argument parsing and dispatch, nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sensorgate::cli;

#[derive(Parser)]
#[command(
    name = "sensorgate",
    version,
    about = "Serial sensors to a cloud MQTT broker over mutual TLS, signed and encrypted"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_CONFIG: &str = "/etc/sensorgate/sensorgate.toml";

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (what systemd starts).
    Run {
        /// The configuration file; conf.d/*.toml beside it and
        /// SENSORGATE__SECTION__KEY variables are applied on top.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the configuration, keys and certificates without sending
    /// anything, and print the effective configuration.
    CheckConfig {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Create a P-256 key pair: DIR/NAME.key (mode 0600) and DIR/NAME.pub.
    /// Prints the key id (RFC 7638 thumbprint).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        name: String,
        /// The pair is the cloud side's recipient key (what the sensitive
        /// fields are encrypted for): same key type, but only the .pub goes
        /// to the gateways.
        #[arg(long, conflicts_with = "pkcs11")]
        recipient: bool,
        /// Make the pair inside a PKCS#11 token instead (a TPM, a secure
        /// element, SoftHSM): the private key never leaves it; only
        /// DIR/NAME.pub is written. Its URI, e.g.
        /// "pkcs11:token=sensorgate;object=gateway-sign?module-path=/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so&pin-source=file:/etc/sensorgate/keys/token.pin",
        /// goes into [seal] signing_key.
        #[arg(long, value_name = "URI")]
        pkcs11: Option<String>,
    },
    /// Write a certificate signing request (PEM) for the TLS client key,
    /// signed by that key: a file, or a key in a PKCS#11 token, which never
    /// leaves it. The broker's CA issues [mqtt] cert_file from it.
    Csr {
        /// The key: a PEM file (P-256, P-384, Ed25519 or RSA), or a
        /// pkcs11: URI as [mqtt] key_file takes it.
        #[arg(long, value_name = "PATH|URI")]
        key: String,
        /// The certificate's subject, RFC 4514: "CN=gw-0042,O=Example Fleet".
        #[arg(long)]
        subject: String,
        /// Where to write the request.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify and decrypt sealed messages read from stdin (binary COSE
    /// messages back to back or one per line, hex lines, or version 1 JSON
    /// lines); print one JSON record per line.
    Open {
        /// The recipient's private key (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        recipient_key: PathBuf,
        /// A trusted gateway public key (.pub), or a directory whose every
        /// *.pub is trusted; repeat for several. Messages select the key by kid.
        #[arg(long, required = true)]
        trust: Vec<PathBuf>,
        /// Keep the sequence numbers seen (per gateway, sensor and epoch) in
        /// this file, so duplicates and conflicts are caught across runs.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Output: one JSON object per record, or CSV with a header line
        /// before the first record and whenever the columns change.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// Reject a message whose whole seq range is below the highest seq
        /// already seen on its stream (a replay), instead of letting it fill
        /// a hole as a late at-least-once delivery.
        #[arg(long)]
        strict_order: bool,
        /// Subscribe over MQTT (mutual TLS) as --config says, instead of
        /// reading stdin; runs until SIGINT/SIGTERM.
        #[arg(long, requires = "config")]
        mqtt: bool,
        /// The consumer's configuration (with --mqtt): an [mqtt] table with
        /// the gateway's keys, and [consumer] topic_filter.
        #[arg(long, short, requires = "mqtt")]
        config: Option<PathBuf>,
        /// With --mqtt: exit after this many sealed messages.
        #[arg(long, requires = "mqtt")]
        count: Option<u64>,
    },
    /// Run the whole system here with no hardware and no installed broker.
    Demo {
        /// Records the simulated sensor writes.
        #[arg(long, default_value_t = 1000)]
        count: u64,
        /// Records per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Json,
    Csv,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let code = match args.command {
        Command::Run { config } => cli::run(&config),
        Command::CheckConfig { config } => cli::check_config(&config),
        Command::Keygen {
            out,
            name,
            recipient: _,
            pkcs11: Some(uri),
        } => cli::keygen_pkcs11(&uri, &out, &name),
        Command::Keygen {
            out,
            name,
            recipient,
            pkcs11: None,
        } => cli::keygen(&out, &name, recipient),
        Command::Csr { key, subject, out } => cli::csr(&key, &subject, &out),
        Command::Open {
            recipient_key,
            trust,
            state,
            format,
            strict_order,
            mqtt,
            config,
            count,
        } => {
            let format = match format {
                Format::Json => sensorgate::seal::OutputFormat::Json,
                Format::Csv => sensorgate::seal::OutputFormat::Csv,
            };
            let source = match config {
                Some(config) if mqtt => cli::OpenSource::Mqtt { config, count },
                _ => cli::OpenSource::Stdin,
            };
            cli::open(
                &recipient_key,
                &trust,
                state.as_deref(),
                format,
                strict_order,
                &source,
            )
        }
        Command::Demo { count, rate } => cli::demo(count, rate),
    };
    ExitCode::from(code)
}
