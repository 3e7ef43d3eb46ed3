//! The Modbus RTU bus (`sensorgate::modbus::bus`) against a server we did
//! not write: pymodbus (pinned in tests/interop/requirements.txt), run by
//! tests/modbus/rtu_server.py on one end of a pair of real pseudo-terminals
//! linked by socat, several unit ids on the one bus, one configured unit
//! absent, one slow. The values are registers the test writes itself and
//! decodes with `modbus::value`, in every byte and word order.
//!
//! scripts/install-test-deps makes the venv in `target/interop-venv` and
//! installs socat; without them these tests fail (they never skip) and say
//! so. Every child process is killed when the test ends, and every wait is
//! bounded.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sensorgate::modbus::bus::{Answer, Bus, BusError};
use sensorgate::modbus::plan::{Plan, Request, Span, Table};
use sensorgate::modbus::value::{self, Kind, Order};
use sensorgate::record::Value;
use serde_json::json;
use tokio_serial::SerialPortBuilderExt;

const TIMEOUT: Duration = Duration::from_millis(200);
const START: Duration = Duration::from_secs(30);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A pymodbus server on one end of a linked PTY pair; the other end is the
/// bus. Both children die with the rig.
struct Rig {
    _dir: tempfile::TempDir,
    bus_path: PathBuf,
    children: Vec<Child>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Rig {
    fn start(spec: serde_json::Value) -> Rig {
        let python = root().join("target/interop-venv/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: the Modbus tests need the Python venv with the pinned \
             pymodbus. Run scripts/install-test-deps (or scripts/test, which runs it).",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let bus_path = dir.path().join("bus");
        let server_path = dir.path().join("server");
        let socat = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", bus_path.display()))
            .arg(format!("pty,raw,echo=0,link={}", server_path.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (scripts/install-test-deps installs it)");
        let mut rig = Rig {
            _dir: dir,
            bus_path,
            children: vec![socat],
        };
        let deadline = Instant::now() + START;
        while !(rig.bus_path.exists() && server_path.exists()) {
            assert!(Instant::now() < deadline, "socat made no PTY pair");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut server = Command::new(python)
            .arg(root().join("tests/modbus/rtu_server.py"))
            .arg(&server_path)
            .arg(spec.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = server.stdout.take().unwrap();
        rig.children.push(server);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START).expect("the pymodbus server started");
        assert_eq!(line.trim(), "ready", "the pymodbus server said {line:?}");
        rig
    }

    fn bus(&self) -> Bus {
        let port = tokio_serial::new(self.bus_path.to_string_lossy(), 9600)
            .open_native_async()
            .unwrap();
        // 8N1: ten bits a character.
        Bus::new(port, 9600, 10)
    }
}

/// The registers a device in `order` sends for the big-endian bytes `be`,
/// written out from the order's letters (A = the most significant byte).
fn wire(letters: &str, be: &[u8]) -> Vec<u16> {
    let bytes: Vec<u8> = letters.bytes().map(|l| be[usize::from(l - b'A')]).collect();
    bytes
        .chunks(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect()
}

/// One value of the test: its kind, order, the letters of that order, and
/// the value it stands for.
struct Case {
    kind: Kind,
    order: &'static str,
    letters: &'static str,
    be: Vec<u8>,
    want: Value,
}

fn cases() -> Vec<Case> {
    let case = |kind, order, letters, be: &[u8], want| Case {
        kind,
        order,
        letters,
        be: be.to_vec(),
        want,
    };
    let f32_be = 230.5f32.to_be_bytes();
    let f64_be = (-1.0e300f64).to_be_bytes();
    let u32_be = 4_000_000_123u32.to_be_bytes();
    let i32_be = (-123_456_789i32).to_be_bytes();
    let u64_be = 18_000_000_000_000_000_000u64.to_be_bytes();
    let i64_be = (-9_000_000_000_000_000_001i64).to_be_bytes();
    vec![
        case(Kind::U16, "AB", "AB", &[0xBE, 0xEF], Value::Int(0xBEEF)),
        case(
            Kind::I16,
            "BA",
            "BA",
            &(-200i16).to_be_bytes(),
            Value::Int(-200),
        ),
        case(Kind::F32, "ABCD", "ABCD", &f32_be, Value::Float(230.5)),
        case(Kind::F32, "CDAB", "CDAB", &f32_be, Value::Float(230.5)),
        case(
            Kind::U32,
            "BADC",
            "BADC",
            &u32_be,
            Value::Int(4_000_000_123),
        ),
        case(Kind::I32, "DCBA", "DCBA", &i32_be, Value::Int(-123_456_789)),
        case(
            Kind::F64,
            "CDAB",
            "GHEFCDAB",
            &f64_be,
            Value::Float(-1.0e300),
        ),
        case(
            Kind::U64,
            "DCBA",
            "HGFEDCBA",
            &u64_be,
            Value::Float(18_000_000_000_000_000_000u64 as f64),
        ),
        case(
            Kind::I64,
            "BADC",
            "BADCFEHG",
            &i64_be,
            Value::Int(-9_000_000_000_000_000_001),
        ),
        case(
            Kind::Text { registers: 4 },
            "AB",
            "ABCDEFGH",
            b"SN-12\0\0\0",
            Value::Str("SN-12".into()),
        ),
    ]
}

/// The holding registers of `cases`, one after the other from address 0.
fn registers(cases: &[Case]) -> Vec<u16> {
    cases.iter().flat_map(|c| wire(c.letters, &c.be)).collect()
}

fn spans(cases: &[Case], table: Table) -> Vec<Span> {
    let mut address = 0;
    cases
        .iter()
        .map(|c| {
            let span = Span {
                table,
                address,
                len: c.kind.registers(),
            };
            address += c.kind.registers();
            span
        })
        .collect()
}

async fn read_all(bus: &mut Bus, unit: u8, plan: &Plan) -> Result<Vec<Answer>, BusError> {
    let mut answers = Vec::new();
    for request in &plan.requests {
        answers.push(bus.read(unit, request, TIMEOUT).await?);
    }
    Ok(answers)
}

fn holding(start: u16, count: u16) -> Request {
    Request {
        table: Table::Holding,
        start,
        count,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_reads_back_from_two_units_on_one_bus_and_an_absent_unit_times_out() {
    let cases = cases();
    let regs = registers(&cases);
    let rig = Rig::start(json!({
        "baud": 9600,
        "units": {
            "1": { "holding": regs, "input": [11, 12, 13], "coil": [true, false, true],
                   "discrete": [false, true] },
            "2": { "holding": regs.iter().map(|r| r ^ 0xFFFF).collect::<Vec<_>>(),
                   "input": [21, 22, 23] },
        }
    }));
    let mut bus = rig.bus();

    // Unit 1: every case, in as few requests as the plan makes (one: 33
    // registers in a row).
    let plan = Plan::new(&spans(&cases, Table::Holding), 0).unwrap();
    assert_eq!(plan.requests, [holding(0, regs.len() as u16)]);
    let answers = read_all(&mut bus, 1, &plan).await.unwrap();
    let Answer::Registers(got) = &answers[0] else {
        panic!("{answers:?}")
    };
    assert_eq!(got, &regs, "the registers as written");
    for (case, place) in cases.iter().zip(&plan.places) {
        let at = usize::from(place.offset);
        let slice = &got[at..at + usize::from(case.kind.registers())];
        let order = Order::parse(case.order, case.kind).unwrap();
        let v = value::decode(case.kind, order, slice, None).unwrap();
        assert_eq!(v, case.want, "{:?} {}", case.kind, case.order);
    }

    // The other tables of unit 1, and unit 2 on the same bus.
    let input = Request {
        table: Table::Input,
        start: 0,
        count: 3,
    };
    assert_eq!(
        bus.read(1, &input, TIMEOUT).await.unwrap(),
        Answer::Registers(vec![11, 12, 13])
    );
    let coils = Request {
        table: Table::Coil,
        start: 0,
        count: 3,
    };
    assert_eq!(
        bus.read(1, &coils, TIMEOUT).await.unwrap(),
        Answer::Bits(vec![true, false, true])
    );
    let discrete = Request {
        table: Table::Discrete,
        start: 1,
        count: 1,
    };
    assert_eq!(
        bus.read(1, &discrete, TIMEOUT).await.unwrap(),
        Answer::Bits(vec![true])
    );
    assert_eq!(
        bus.read(2, &input, TIMEOUT).await.unwrap(),
        Answer::Registers(vec![21, 22, 23])
    );

    // Unit 9 is not on the bus: its own timeout, and the next request to a
    // unit that is there is answered rightly.
    let t = Instant::now();
    let absent = bus.read(9, &holding(0, 1), TIMEOUT).await;
    assert!(matches!(absent, Err(BusError::Timeout(_))), "{absent:?}");
    assert!(t.elapsed() < TIMEOUT * 3, "{:?}", t.elapsed());
    assert_eq!(
        bus.read(2, &holding(0, 1), TIMEOUT).await.unwrap(),
        Answer::Registers(vec![regs[0] ^ 0xFFFF])
    );

    // An address the unit does not have: exception 2, and the bus goes on.
    let past = bus.read(1, &holding(regs.len() as u16, 2), TIMEOUT).await;
    let err = past.unwrap_err();
    assert!(err.is_illegal_address(), "{err}");
    assert_eq!(
        bus.read(1, &holding(0, 2), TIMEOUT).await.unwrap(),
        Answer::Registers(regs[..2].to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_is_never_taken_for_the_next_request() {
    // Unit 3 answers 300 ms late, after the bus gave up on it at 200 ms;
    // unit 1 answers at once. Without the input discarded before each
    // request, unit 3's late answer (same unit id and function code as the
    // next request to it) would be read as the answer to that next one.
    let rig = Rig::start(json!({
        "baud": 9600,
        "units": {
            "1": { "holding": [100, 101, 102, 103] },
            "3": { "holding": [300, 301, 302, 303], "delay": 0.3 },
        }
    }));
    let mut bus = rig.bus();
    for round in 0..3u16 {
        let slow = bus.read(3, &holding(round, 1), TIMEOUT).await;
        assert!(
            matches!(slow, Err(BusError::Timeout(_))),
            "round {round}: {slow:?}"
        );
        // The late answer arrives while unit 1 is asked.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            bus.read(1, &holding(round, 1), TIMEOUT).await.unwrap(),
            Answer::Registers(vec![100 + round]),
            "round {round}"
        );
        let again = bus.read(3, &holding(round + 1, 1), TIMEOUT).await;
        assert!(
            matches!(again, Err(BusError::Timeout(_))),
            "round {round}: {again:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
