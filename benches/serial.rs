//! Serial decoding benchmarks (issue 4): frames per second and bytes per
//! second of each framing alone, and of each framing with its format (the
//! whole serial stage's CPU work short of the device read), on realistic
//! input, against the line rate of one 921600-baud port (92160 B/s: 10 bits
//! per byte with start and stop bits).
//!
//! Input per case: `FRAMES` frames as a device sends them (one in ten
//! preceded by line noise where the framing resyncs: junk for nmea, an
//! invalid COBS frame for cobs), fed to the decoder in 4 KiB reads as the
//! source does. Each figure is the median of `RUNS` runs. Figures go to
//! stdout as `name value unit` lines and to `target/bench/serial.json`;
//! `cargo bench --bench serial`.

use std::fs;
use std::path::Path;
use std::time::Instant;

use bytes::BytesMut;
use sensorgate::config::{self, Column, ColumnType, LayoutField, LayoutType};
use sensorgate::demo::pty::{sim_columns, sim_line};
use sensorgate::serial::format::{Decoded, FormatDecoder};
use sensorgate::serial::framing::cobs::encode_frame;
use sensorgate::serial::framing::nmea::sentence;
use sensorgate::serial::framing::{Frame, Framer};
use tokio_util::codec::Decoder;

const RUNS: usize = 7;
const FRAMES: usize = 200_000;
/// Bytes per read, as a serial read returns them.
const CHUNK: usize = 4096;
/// One 921600-baud port: 8N1 puts 10 bits on the wire per byte.
const LINE_RATE: f64 = 921_600.0 / 10.0;

fn sensor(framing: config::Framing, format: config::Format) -> config::Sensor {
    config::Sensor {
        baud: 921_600,
        framing,
        format,
        max_frame: 1024,
        ..config::Sensor::new("bench", "/dev/null")
    }
}

struct Case {
    name: &'static str,
    sensor: config::Sensor,
    input: Vec<u8>,
}

fn cases() -> Vec<Case> {
    use config::{Format, Framing};
    let mut out = Vec::new();

    let mut s = sensor(Framing::Lines, Format::Csv);
    s.columns = sim_columns().iter().map(|c| Column::auto(c)).collect();
    let mut input = Vec::new();
    for i in 0..FRAMES as u64 {
        input.extend_from_slice(sim_line(i).as_bytes());
        input.push(b'\n');
    }
    out.push(Case {
        name: "lines_csv",
        sensor: s.clone(),
        input,
    });

    let mut typed = s;
    typed.name = "typed".into();
    for c in &mut typed.columns {
        c.ty = if c.name == "cadence" || c.name == "power" {
            ColumnType::I64
        } else {
            ColumnType::F64
        };
    }
    let input = out[0].input.clone();
    out.push(Case {
        name: "lines_csv_typed",
        sensor: typed,
        input,
    });

    let s = sensor(Framing::Lines, Format::Json);
    let mut input = Vec::new();
    for i in 0..FRAMES {
        let line = format!(
            "{{\"t\":{}.{},\"rh\":{}.5,\"id\":\"a{}\",\"ok\":true,\"gps\":{{\"lat\":48.1{},\"lon\":11.5{}}}}}\n",
            20 + i % 10,
            i % 10,
            40 + i % 7,
            i % 100,
            i % 1000,
            i % 997
        );
        input.extend_from_slice(line.as_bytes());
    }
    out.push(Case {
        name: "lines_json",
        sensor: s,
        input,
    });

    let s = sensor(Framing::Lines, Format::Kv);
    let mut input = Vec::new();
    for i in 0..FRAMES {
        let line = format!(
            "t={}.{} rh={}.5 id=a{} bat=3.{}\n",
            20 + i % 10,
            i % 10,
            40 + i % 7,
            i % 100,
            600 + i % 100
        );
        input.extend_from_slice(line.as_bytes());
    }
    out.push(Case {
        name: "lines_kv",
        sensor: s,
        input,
    });

    let s = sensor(Framing::Nmea, Format::Nmea);
    let mut input = Vec::new();
    for i in 0..FRAMES {
        if i % 10 == 9 {
            input.extend_from_slice(b"\x01\x02junk\r\n");
        }
        let lat = format!("48{:06.3}", 7.0 + (i % 1000) as f64 * 0.001);
        let sentence = match i % 3 {
            0 => sentence(&format!(
                "GPGGA,123519.00,{lat},N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
            )),
            1 => sentence(&format!(
                "GPRMC,123519.00,A,{lat},N,01131.000,E,022.4,084.4,251126,003.1,W"
            )),
            _ => sentence("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K"),
        };
        input.extend_from_slice(sentence.as_bytes());
    }
    out.push(Case {
        name: "nmea_nmea",
        sensor: s,
        input,
    });

    let mut s = sensor(Framing::Cobs, Format::Binary);
    s.crc = config::Crc::Crc16;
    s.layout = vec![
        LayoutField {
            name: "n".into(),
            ty: LayoutType::U32,
            scale: None,
            offset: None,
        },
        LayoutField {
            name: "temp".into(),
            ty: LayoutType::I16,
            scale: Some(0.01),
            offset: None,
        },
        LayoutField {
            name: "rh".into(),
            ty: LayoutType::U16,
            scale: Some(0.1),
            offset: None,
        },
        LayoutField {
            name: "bat".into(),
            ty: LayoutType::U16,
            scale: None,
            offset: None,
        },
    ];
    let mut input = Vec::new();
    for i in 0..FRAMES {
        if i % 10 == 9 {
            input.extend_from_slice(&[0x07, 0x33, 0x44, 0x00]);
        }
        let mut p = Vec::new();
        p.extend_from_slice(&(i as u32).to_le_bytes());
        p.extend_from_slice(&(-500 + (i % 3000) as i16).to_le_bytes());
        p.extend_from_slice(&(400 + (i % 500) as u16).to_le_bytes());
        p.extend_from_slice(&(3700 + (i % 100) as u16).to_le_bytes());
        input.extend_from_slice(&encode_frame(&p, s.crc, s.endian));
    }
    out.push(Case {
        name: "cobs_binary",
        sensor: s,
        input,
    });
    out
}

/// Frames out of `input`, fed in `CHUNK` reads: (data frames, bad frames,
/// records, seconds). With `format`, every data frame is decoded too.
fn run(case: &Case, format: Option<&FormatDecoder>) -> (u64, u64, u64, f64) {
    let mut framer = Framer::new(&case.sensor);
    let mut buf = BytesMut::with_capacity(2 * CHUNK);
    let (mut data, mut bad, mut records) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    for chunk in case.input.chunks(CHUNK) {
        buf.extend_from_slice(chunk);
        while let Some(frame) = framer.decode(&mut buf).expect("framings never fail") {
            match frame {
                Frame::Data(bytes) => {
                    data += 1;
                    if let Some(f) = format {
                        if let Ok(Decoded::Fields(fields)) = f.decode(&bytes) {
                            records += 1;
                            std::hint::black_box(fields);
                        }
                    }
                }
                Frame::Bad { .. } => bad += 1,
            }
        }
    }
    (data, bad, records, start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut json = serde_json::Map::new();
    let mut report = |name: String, value: f64, unit: &str| {
        println!("{name} {value:.3} {unit}");
        json.insert(name, serde_json::json!({ "value": value, "unit": unit }));
    };
    println!("line_rate_921600 {LINE_RATE:.0} B/s");
    for case in cases() {
        let format = FormatDecoder::new(&case.sensor);
        let bytes = case.input.len() as f64;
        for (stage, fmt) in [("framing", None), ("decode", Some(&format))] {
            let mut secs = Vec::new();
            let mut counts = (0, 0, 0);
            for _ in 0..RUNS {
                let (d, b, r, s) = run(&case, fmt);
                counts = (d, b, r);
                secs.push(s);
            }
            let s = median(secs);
            let frames = counts.0 as f64;
            assert!(
                frames >= FRAMES as f64,
                "{}: {} frames of {FRAMES}",
                case.name,
                counts.0
            );
            if fmt.is_some() {
                assert_eq!(
                    counts.2, FRAMES as u64,
                    "{}: every frame decodes",
                    case.name
                );
            }
            eprintln!(
                "{} {stage}: {} frames, {} bad, {} records",
                case.name, counts.0, counts.1, counts.2
            );
            let name = format!("{}_{stage}", case.name);
            report(format!("{name}_frames_per_s"), frames / s, "frames/s");
            report(format!("{name}_mb_per_s"), bytes / s / 1e6, "MB/s");
            report(format!("{name}_vs_line_rate"), bytes / s / LINE_RATE, "x");
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    fs::create_dir_all(&dir).expect("target/bench");
    fs::write(
        dir.join("serial.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .expect("write serial.json");
}
