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
    },
    /// Verify and decrypt sealed messages read from stdin, one per line;
    /// print one JSON record per line.
    Open {
        /// The recipient's private key (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        recipient_key: PathBuf,
        /// A trusted gateway public key (.pub); repeat for several gateways.
        #[arg(long, required = true)]
        trust: Vec<PathBuf>,
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

fn main() -> ExitCode {
    let args = Args::parse();
    let code = match args.command {
        Command::Run { config } => cli::run(&config),
        Command::CheckConfig { config } => cli::check_config(&config),
        Command::Keygen { out, name } => cli::keygen(&out, &name),
        Command::Open {
            recipient_key,
            trust,
        } => cli::open(&recipient_key, &trust),
        Command::Demo { count, rate } => cli::demo(count, rate),
    };
    ExitCode::from(code)
}
