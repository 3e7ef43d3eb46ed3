//! The gateway's work for one record, without sockets or threads, so that
//! `scripts/pi-cost` can count its instructions on the Pi's instruction
//! sets under qemu-user (a whole daemon under qemu's instruction logging
//! misses its own timeouts).
//!
//! The path is the daemon's: frames of the simulated bike sensor's CSV
//! lines cut by the `lines` framing, decoded by the `csv` format, numbered
//! by the sequence allocator (reserving blocks in the state file), grouped
//! by the batcher, sealed (three of six columns encrypted, every message
//! signed) and stored in the disk spool (`fsync = "interval"`, whose tick
//! is not run here). What it leaves out is the MQTT publish and its
//! acknowledgement, which a bare publisher pays too.
//!
//! Usage: `record_cost N BATCH [DIR]` — N records in batches of BATCH,
//! with keys, state and spool under DIR (default: a new folder in the
//! temporary directory, removed at the end). Run it with N = 0 too: the
//! difference is the cost of N records, set-up excluded (the input lines
//! are made, and one message sealed, the same way in both runs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use sensorgate::batch::Batcher;
use sensorgate::config::{self, Column};
use sensorgate::demo::pty::{sim_columns, sim_line};
use sensorgate::record::{FieldPool, Record};
use sensorgate::seal::{self, Sealer};
use sensorgate::serial::format::{Decode, Decoded, FormatDecoder};
use sensorgate::serial::framing::{Frame, Framer};
use sensorgate::serial::receive_time;
use sensorgate::spool::sequences::StateDir;
use sensorgate::spool::{Fsync, Spool, SpoolSettings};
use tokio_util::codec::Decoder;

/// Distinct simulated lines, repeated as often as N needs.
const LINE_POOL: u64 = 1000;

fn sensor() -> config::Sensor {
    config::Sensor {
        baud: 921_600,
        framing: config::Framing::Lines,
        format: config::Format::Csv,
        columns: sim_columns().iter().map(|c| Column::auto(c)).collect(),
        max_frame: 1024,
        ..config::Sensor::new("bike", "/dev/null")
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(n), Some(batch)) = (
        args.get(1).and_then(|a| a.parse::<u64>().ok()),
        args.get(2).and_then(|a| a.parse::<usize>().ok()),
    ) else {
        anyhow::bail!("usage: record_cost N BATCH [DIR]");
    };
    anyhow::ensure!(batch > 0, "BATCH must be at least 1");
    let (dir, remove) = match args.get(3) {
        Some(d) => (PathBuf::from(d), false),
        None => (
            std::env::temp_dir().join(format!("record-cost-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;

    let keys = dir.join("keys");
    let gateway = seal::keygen(&keys, "gateway")?;
    let recipient = seal::keygen(&keys, "recipient")?;
    let state = StateDir::open(&dir.join("state"))?;
    let mut sealer = Sealer::new(
        "pi-cost",
        state.epoch(),
        seal::load_signing_key(&gateway.key_path)?,
        seal::load_public_key(&recipient.pub_path)?,
        &["heart_rate".into(), "incline".into(), "resistance".into()],
    );
    let (spool, _) = Spool::open(
        SpoolSettings {
            dir: dir.join("state").join("spool"),
            memory: 8 << 20,
            disk: 256 << 20,
            when_full: config::WhenFull::Block,
            // The daemon's defaults: with no broker here, the messages of
            // a count stay in memory, as they do while a broker keeps up.
            durability: config::Buffer::default().durability,
            spill_after: config::Buffer::default().spill_after,
            fsync: Fsync::Interval,
            min_free: 0.0,
            stop_reserve: sensorgate::pipeline::messages_in_flight_bound(1),
        },
        Arc::default(),
    )?;

    let sensor = sensor();
    let name: Arc<str> = Arc::from(sensor.name.as_str());
    let mut framer = Framer::new(&sensor);
    let format = FormatDecoder::new(&sensor);
    let mut seq = state.allocator(&sensor.name);
    // The seal stage gives each sealed batch's field vectors back for the
    // next records, as the pipeline does.
    let fields = FieldPool::default();
    let mut batcher = Batcher::new(batch, Duration::from_secs(3600)).recycling(fields.clone());
    // The input is made the same way whatever N is, so that it cancels out
    // of count(N) - count(0): formatting the simulated lines is the
    // sensor's work, not the gateway's (about 2,000 instructions a line on
    // aarch64, counted as the gateway's before issue 17).
    let pool: Vec<u8> = (0..LINE_POOL)
        .flat_map(|i| format!("{}\n", sim_line(i)).into_bytes())
        .collect();
    // One message sealed (and dropped) before the count, in both runs:
    // its data key, made by an ECDH, serves the next 1000 messages
    // (`rotate_after_messages`), i.e. 100,000 records at batch 100, and
    // the one-time set-ups (tables, CPU feature checks) are done. Left in,
    // one ECDH (about 2.1 million instructions on aarch64) would weigh on
    // the 1000 records counted as if every 1000 records needed one.
    let warm_up: Vec<Record> = pool
        .split_inclusive(|&b| b == b'\n')
        .take(batch)
        .enumerate()
        .map(|(i, line)| match format.decode(&line[..line.len() - 1]) {
            Ok(Decoded::Fields(fields)) => Ok(Record {
                sensor: Arc::from("warm-up"),
                seq: i as u64,
                ts: SystemTime::now(),
                clock: None,
                fields,
            }),
            other => Err(anyhow::anyhow!(
                "a simulated line did not decode: {other:?}"
            )),
        })
        .collect::<anyhow::Result<_>>()?;
    sealer.seal(&warm_up)?;

    let mut input = BytesMut::with_capacity(pool.len() * (n.div_ceil(LINE_POOL) as usize));
    let mut lines = pool.split_inclusive(|&b| b == b'\n').cycle();
    for _ in 0..n {
        input.extend_from_slice(lines.next().expect("a cycle of lines"));
    }

    let (mut records, mut messages, mut bytes) = (0u64, 0u64, 0u64);
    let mut store = |sealer: &mut Sealer, batch: Vec<Record>| -> anyhow::Result<()> {
        let msg = sealer.seal(&batch)?;
        fields.give_back(batch);
        messages += 1;
        bytes += msg.bytes.len() as u64;
        anyhow::ensure!(spool.push(msg), "the spool refused a message");
        Ok(())
    };
    while let Some(frame) = framer.decode(&mut input)? {
        let Frame::Data(frame) = frame else {
            anyhow::bail!("a bad frame in the simulated lines");
        };
        let Decoded::Fields(values) = format
            .decode_into(&frame, batcher.fields())
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
        else {
            continue;
        };
        let (number, _) = seq.allocate();
        let record = Record {
            sensor: name.clone(),
            seq: number,
            ts: receive_time(SystemTime::now()),
            clock: None,
            fields: values,
        };
        records += 1;
        if let Some(full) = batcher.push(record, tokio::time::Instant::now) {
            store(&mut sealer, full)?;
        }
    }
    if let Some(rest) = batcher.take() {
        store(&mut sealer, rest)?;
    }
    seq.close()?;
    spool.close();
    spool.sync();
    println!("records {records} batch {batch} messages {messages} bytes {bytes}");
    if remove {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
