//! Footprint: what the gateway costs a Pi before it moves a single record.
//!
//! * **Binary size.** The file size of the gateway binary the bench runs
//!   ([`gateway_binary`]): with `scripts/bench`, the daemon as the Debian
//!   package builds it (`--release --no-default-features`: thin LTO,
//!   `strip = "symbols"`, no `demo`), i.e. the `/usr/bin/sensorgate` it
//!   ships for this architecture; with a bare `cargo bench`, the one cargo
//!   built for the bench (with `demo`, larger). The ELF section table is
//!   checked for a symbol table, so an unstripped build is said aloud
//!   instead of silently inflating the figure.
//! * **Start-up time to READY.** From spawning `sensorgate run` to the
//!   `READY=1` datagram on the socket named by `NOTIFY_SOCKET`: what
//!   `systemctl start` waits for with `Type=notify`. It covers exec, config
//!   validation, loading the keys and TLS material, opening the spool and
//!   starting every stage (not the broker connection: READY does not wait
//!   for it). One simulated sensor on a PTY, the shipped log level `info`,
//!   an empty state directory every run, the page cache warm (the binary
//!   was just built). Median of `--runs`.

use std::fs;
use std::time::{Duration, Instant};

use sensorgate::demo::pty::Pty;

use crate::Options;
use crate::report::{Report, progress};
use crate::support::{GatewayProcess, NotifySocket, Rig, excerpt, gateway_binary};
use crate::throughput::edit_config;

/// How long the gateway may take to report READY before the run fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(opts: &Options, report: &mut Report) {
    binary_size(report);
    startup_to_ready(opts, report);
}

fn binary_size(report: &mut Report) {
    let path = &gateway_binary();
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let size = bytes.len() as f64;
    match has_symbol_table(&bytes) {
        Some(false) => progress(&format!("binary {} is stripped", path.display())),
        Some(true) => progress(&format!(
            "WARNING: binary {} still has a symbol table: the size below is not the shipped size",
            path.display()
        )),
        None => progress(&format!(
            "binary {} is not a 64-bit little-endian ELF file; not checked for symbols",
            path.display()
        )),
    }
    progress(&format!("binary {}", path.display()));
    report.figure("binary_size_bytes", size, "bytes", &[size]);
    let mib = size / (1024.0 * 1024.0);
    report.figure("binary_size_mib", mib, "MiB", &[mib]);
}

/// Whether a 64-bit little-endian ELF file has a `SHT_SYMTAB` section
/// (what `strip` removes); `None` when it is not such a file.
fn has_symbol_table(elf: &[u8]) -> Option<bool> {
    const SHT_SYMTAB: u32 = 2;
    // ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let table = usize::try_from(u64_at(0x28)?).ok()?; // e_shoff
    let entry = usize::from(u16_at(0x3A)?); // e_shentsize
    let count = usize::from(u16_at(0x3C)?); // e_shnum
    let mut found = false;
    for i in 0..count {
        // sh_type is the second word of a section header.
        found |= u32_at(table + i * entry + 4)? == SHT_SYMTAB;
    }
    Some(found)
}

fn startup_to_ready(opts: &Options, report: &mut Report) {
    let rig = Rig::new();
    let pty = Pty::open().expect("open a PTY");
    let config = rig.gateway_config("footprint.toml", &[("bike", pty.path())], "");
    edit_config(
        &config,
        &[("level = \"debug,rumqttc=info\"", "level = \"info\"")],
    );
    let mut runs = Vec::new();
    for run in 0..opts.runs {
        // A fresh state directory: no spool to scan, as on a first start.
        let state = rig.dir.join("state");
        if state.exists() {
            fs::remove_dir_all(&state)
                .unwrap_or_else(|e| panic!("remove {}: {e}", state.display()));
        }
        let notify = NotifySocket::bind(&rig.dir.join(&format!("notify-{run}.sock")));
        let spawned = Instant::now();
        let gw = GatewayProcess::start_with_env(&config, &[("NOTIFY_SOCKET", notify.path())]);
        let (ready, _) = notify
            .wait_for("READY=1", READY_TIMEOUT)
            .unwrap_or_else(|| {
                panic!(
                    "no READY=1 within {READY_TIMEOUT:?} of spawning the gateway\n{}",
                    excerpt(&gw.log())
                )
            });
        let ms = (ready - spawned).as_secs_f64() * 1e3;
        progress(&format!(
            "footprint run {}: READY after {ms:.1} ms",
            run + 1
        ));
        runs.push(ms);
        // Killed on drop: the next run starts from nothing anyway.
        drop(gw);
    }
    report.median("startup_to_ready_ms", "ms", &runs);
}
