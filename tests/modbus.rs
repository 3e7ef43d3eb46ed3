//! Modbus RTU against a server we did not write: pymodbus (pinned in
//! tests/interop/requirements.txt), run by tests/modbus/rtu_server.py on one
//! end of a pair of real pseudo-terminals linked by socat
//! (`support::modbus`), several unit ids on the one bus, one configured unit
//! absent, one slow. The values are registers the test writes itself and
//! decodes with `modbus::value`, in every byte and word order.
//!
//! scripts/install-test-deps makes the venv in `target/interop-venv` and
//! installs socat; without them these tests fail (they never skip) and say
//! so. Every child process is killed when the test ends, and every wait is
//! bounded.

mod support;

use std::time::{Duration, Instant};

use sensorgate::modbus::bus::{Answer, Bus, BusError};
use sensorgate::modbus::plan::{Plan, Request, Span, Table};
use sensorgate::modbus::value::{self, Kind, Order};
use sensorgate::record::Value;
use serde_json::json;
use support::modbus::{Server, wire};
use tokio_serial::SerialPortBuilderExt;

const TIMEOUT: Duration = Duration::from_millis(200);

fn bus(server: &Server) -> Bus {
    let port = tokio_serial::new(server.path().to_string_lossy(), 9600)
        .open_native_async()
        .unwrap();
    // 8N1: ten bits a character.
    Bus::new(port, 9600, 10)
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
    let rig = Server::start(&json!({
        "baud": 9600,
        "units": {
            "1": { "holding": regs, "input": [11, 12, 13], "coil": [true, false, true],
                   "discrete": [false, true] },
            "2": { "holding": regs.iter().map(|r| r ^ 0xFFFF).collect::<Vec<_>>(),
                   "input": [21, 22, 23] },
        }
    }));
    let mut bus = bus(&rig);

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
    let rig = Server::start(&json!({
        "baud": 9600,
        "units": {
            "1": { "holding": [100, 101, 102, 103] },
            "3": { "holding": [300, 301, 302, 303], "delay": 0.3 },
        }
    }));
    let mut bus = bus(&rig);
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

/// The whole gateway: three slaves on one bus, two answering and one
/// absent, polled every 100 ms; every record checked after `open` (the
/// encrypted columns are register names), sequence numbers without a gap,
/// and the absent slave logged once while the others keep polling.
#[test]
fn the_gateway_polls_several_slaves_on_one_bus_into_their_own_streams() {
    let text = |s: &str| -> Vec<u16> {
        s.as_bytes()
            .chunks(2)
            .map(|p| u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0)]))
            .collect()
    };
    let incline = 230.5f32.to_be_bytes();
    let energy = wire("CDAB", &123_456u32.to_be_bytes());
    let mut holding = wire("ABCD", &incline);
    holding.extend(&energy);
    holding.push(72);
    holding.extend(wire("BA", &(-5i16).to_be_bytes()));
    holding.extend(text("SN-12\0\0\0"));
    let server = Server::start(&json!({
        "baud": 9600,
        "units": {
            "1": { "holding": holding, "input": [11], "coil": [true] },
            "2": { "holding": [500], "discrete": [false, true] },
        }
    }));
    let rig = support::Rig::new();
    let device = server.path();
    let tables = format!(
        "[[sensor]]\nname = \"meter1\"\ndevice = {device:?}\nframing = \"modbus_rtu\"\nunit = 1\npoll = \"100ms\"\n\
         registers = [\n\
           {{ name = \"incline\", address = 0, type = \"f32\" }},\n\
           {{ name = \"energy\", address = 2, type = \"u32\", order = \"CDAB\", scale = 0.01 }},\n\
           {{ name = \"heart_rate\", address = 4 }},\n\
           {{ name = \"resistance\", address = 5, type = \"i16\", order = \"BA\" }},\n\
           {{ name = \"serial\", address = 6, type = \"string\", count = 4 }},\n\
           {{ name = \"count\", table = \"input\", address = 0 }},\n\
           {{ name = \"relay\", table = \"coil\", address = 0 }},\n\
         ]\n\n\
         [[sensor]]\nname = \"meter2\"\ndevice = {device:?}\nframing = \"modbus_rtu\"\nunit = 2\npoll = \"100ms\"\n\
         registers = [{{ name = \"level\", address = 0 }}, {{ name = \"door\", table = \"discrete\", address = 1 }}]\n\n\
         [[sensor]]\nname = \"ghost\"\ndevice = {device:?}\nframing = \"modbus_rtu\"\nunit = 5\npoll = \"100ms\"\n\
         registers = [{{ name = \"x\", address = 0 }}]\n\n"
    );
    let config = rig.gateway_config_with("modbus.toml", &tables, "");
    let sub = rig.subscriber();
    let mut gw = support::GatewayProcess::start(&config);
    // 20 polls of each answering slave, whatever the absent one costs.
    let wanted = 20;
    let enough =
        |o: &support::Opened| o.seqs("meter1").len() >= wanted && o.seqs("meter2").len() >= wanted;
    let mut opened = support::Opened::default();
    support::wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        opened = support::open_all(&rig, &sub.received());
        enough(&opened)
    });
    assert!(
        enough(&opened),
        "meter1 {} and meter2 {} records; log:\n{}",
        opened.seqs("meter1").len(),
        opened.seqs("meter2").len(),
        support::excerpt(&gw.log())
    );
    assert_eq!(gw.stop(), 0);
    let opened = support::open_all(&rig, &sub.received());
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
    assert!(
        !opened.records.contains_key("ghost"),
        "the absent slave made records"
    );
    for sensor in ["meter1", "meter2"] {
        let seqs = opened.seqs(sensor);
        let n = seqs.len() as u64;
        assert_eq!(
            seqs,
            (0..n).collect::<Vec<_>>(),
            "{sensor}: every poll's record, in order"
        );
    }
    for r in &opened.records["meter1"] {
        let f = &r.fields;
        assert_eq!(f["incline"], json!(230.5), "{r:?}");
        assert_eq!(f["energy"], json!(1234.56), "{r:?}");
        assert_eq!(f["heart_rate"], json!(72), "{r:?}");
        assert_eq!(f["resistance"], json!(-5), "{r:?}");
        assert_eq!(f["serial"], json!("SN-12"), "{r:?}");
        assert_eq!(f["count"], json!(11), "{r:?}");
        assert_eq!(f["relay"], json!(true), "{r:?}");
        assert_eq!(f.len(), 7, "{r:?}");
    }
    for r in &opened.records["meter2"] {
        assert_eq!(r.fields["level"], json!(500), "{r:?}");
        assert_eq!(r.fields["door"], json!(true), "{r:?}");
    }
    let log = gw.log();
    support::assert_no_panic(&log);
    let failing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("modbus slave failing"))
        .collect();
    assert_eq!(
        failing.len(),
        1,
        "logged once when it fails:\n{}",
        failing.join("\n")
    );
    assert!(
        failing[0].contains("ghost") && failing[0].contains("no_answer"),
        "{}",
        failing[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_an_echo_are_told_apart_from_silence_and_the_echo_can_be_dropped() {
    // The bus hears every request before its answer, as through a
    // transceiver whose receiver stays on; unit 2 answers with a wrong CRC.
    let rig = Server::start(&json!({
        "baud": 9600,
        "echo": true,
        "units": { "1": { "holding": [100, 101, 102] }, "2": { "holding": [7], "garbage": true } }
    }));
    let mut bus = bus(&rig);
    let echoed = bus.read(1, &holding(0, 1), TIMEOUT).await;
    let Err(BusError::Echo(heard)) = &echoed else {
        panic!("{echoed:?}")
    };
    // The request (unit 1, function 3, address 0, count 1, CRC), then the
    // answer.
    assert!(
        heard.starts_with("01 03 00 00 00 01 84 0a 01 03 02 00 64"),
        "{heard}"
    );
    assert!(
        echoed
            .unwrap_err()
            .to_string()
            .contains("local_echo = true"),
        "the error says what to do"
    );

    let mut bus = bus.local_echo(true);
    for round in 0..3u16 {
        assert_eq!(
            bus.read(1, &holding(round, 1), TIMEOUT).await.unwrap(),
            Answer::Registers(vec![100 + round]),
            "round {round}"
        );
        let spoiled = bus.read(2, &holding(0, 1), TIMEOUT).await;
        assert!(
            matches!(&spoiled, Err(BusError::Garbage(g)) if g.contains("02 03 02 00 07")),
            "round {round}: {spoiled:?}"
        );
        // An absent unit: only its echo comes back, which is no answer.
        let absent = bus.read(9, &holding(0, 1), TIMEOUT).await;
        assert!(
            matches!(absent, Err(BusError::Timeout(_))),
            "round {round}: {absent:?}"
        );
    }
}

/// Registers named as the rig's encrypted columns (which must exist), at
/// addresses 0 to 2.
const REGISTERS: &str = "registers = [{ name = \"incline\", address = 0 }, \
    { name = \"heart_rate\", address = 1 }, { name = \"resistance\", address = 2 }]";

/// A gateway and its config for `sensors` (TOML `[[sensor]]` tables) on
/// the rig's broker.
fn gateway(rig: &support::Rig, sensors: &str) -> std::path::PathBuf {
    rig.gateway_config_with("modbus.toml", sensors, "")
}

/// The bus's adapter unplugged for a while and plugged back: the bus is
/// reopened, both slaves' streams go on without a gap, and a slave that
/// answers garbage costs the others nothing.
#[test]
fn an_unplugged_bus_is_reopened_and_a_slave_answering_garbage_hurts_no_other() {
    let mut server = Server::start(&json!({
        "baud": 9600,
        "units": {
            "1": { "holding": [11, 12, 13] },
            "2": { "holding": [21, 22, 23] },
            "3": { "holding": [31, 32, 33], "garbage": true },
        }
    }));
    let rig = support::Rig::new();
    let device = server.path().to_path_buf();
    let mut sensors = String::new();
    for (name, unit) in [("a", 1), ("b", 2), ("noisy", 3)] {
        sensors += &format!(
            "[[sensor]]\nname = \"{name}\"\ndevice = {device:?}\nframing = \"modbus_rtu\"\nunit = {unit}\n\
             poll = \"100ms\"\ntimeout = \"100ms\"\n{REGISTERS}\n\n"
        );
    }
    let config = gateway(&rig, &sensors);
    let sub = rig.subscriber();
    let mut gw = support::GatewayProcess::start(&config);
    let count = |at_least: usize| {
        let mut opened = support::Opened::default();
        let ok = support::wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            opened = support::open_all(&rig, &sub.received());
            opened.seqs("a").len() >= at_least && opened.seqs("b").len() >= at_least
        });
        (ok, opened)
    };
    let (ok, before) = count(10);
    assert!(
        ok,
        "no records before the unplug; log:\n{}",
        support::excerpt(&gw.log())
    );

    server.unplug();
    assert!(
        gw.wait_for_log("modbus bus lost", Duration::from_secs(10)),
        "{}",
        support::excerpt(&gw.log())
    );
    assert!(
        gw.wait_for_log("cannot open the modbus bus", Duration::from_secs(10)),
        "{}",
        support::excerpt(&gw.log())
    );
    std::thread::sleep(Duration::from_secs(1));
    server.replug();
    let more = before.seqs("a").len().max(before.seqs("b").len()) + 10;
    let (ok, _) = count(more);
    assert!(
        ok,
        "no records after the replug; log:\n{}",
        support::excerpt(&gw.log())
    );
    assert_eq!(gw.stop(), 0);

    let opened = support::open_all(&rig, &sub.received());
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
    assert!(
        !opened.records.contains_key("noisy"),
        "garbage made records"
    );
    for (sensor, value) in [("a", 11), ("b", 21)] {
        let seqs = opened.seqs(sensor);
        let n = seqs.len() as u64;
        assert_eq!(
            seqs,
            (0..n).collect::<Vec<_>>(),
            "{sensor}: no gap across the replug"
        );
        assert!(
            opened.records[sensor]
                .iter()
                .all(|r| r.fields["incline"] == json!(value))
        );
    }
    let log = gw.log();
    support::assert_no_panic(&log);
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(lines("modbus bus opened"), 2, "{}", support::excerpt(&log));
    assert_eq!(lines("modbus bus lost"), 1, "{}", support::excerpt(&log));
    let failing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("modbus slave failing"))
        .collect();
    assert!(
        !failing.is_empty()
            && failing
                .iter()
                .all(|l| l.contains("noisy") && l.contains("garbage")),
        "{failing:#?}"
    );
}

/// `rs485 = true` on a port whose driver has no RS-485 mode (a PTY here,
/// a USB adapter in the field): a clear error naming the device and what
/// to do; exit 78 for a required sensor, retried in the background for
/// another.
#[test]
fn rs485_mode_refused_by_the_port_says_so() {
    let server =
        Server::start(&json!({ "baud": 9600, "units": { "1": { "holding": [1, 2, 3] } } }));
    let rig = support::Rig::new();
    let device = server.path().to_path_buf();
    let sensor = |required: bool| {
        format!(
            "[[sensor]]\nname = \"m\"\ndevice = {device:?}\nframing = \"modbus_rtu\"\nunit = 1\n\
             rs485 = true\nrs485_delay_before = \"1ms\"\nrequired = {required}\n\
             {REGISTERS}\n\n"
        )
    };
    let config = gateway(&rig, &sensor(true));
    let mut run = std::process::Command::new(support::gateway_binary());
    run.args(["run", "--config"]).arg(&config);
    let out = support::run_bounded(run, b"", Duration::from_secs(30));
    assert_eq!(out.code, 78, "{}", out.shown());
    for needle in [
        device.to_str().unwrap(),
        "cannot be put in RS-485 mode",
        "set rs485 = false",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.shown());
    }

    let config = gateway(&rig, &sensor(false));
    let mut gw = support::GatewayProcess::start(&config);
    assert!(
        gw.wait_for_log("cannot be put in RS-485 mode", Duration::from_secs(20)),
        "{}",
        support::excerpt(&gw.log())
    );
    assert_eq!(gw.stop(), 0);
}
