//! The cloud side into PostgreSQL (issue 18): `sensorgate open --mqtt` with
//! `[sink] postgres`, against a real mosquitto (mutual TLS) and a real
//! PostgreSQL cluster of the test's own (tests/support/postgres.rs). What
//! was stored is checked by SQL: every record exactly once, a conflict kept
//! apart, the gaps listed, what does not open kept as rejected; and across
//! two consumers of one share group, a consumer killed mid-stream, and
//! PostgreSQL restarted mid-stream. Times stamped before a gateway's clock
//! was synchronised (issue 19) are stored as stamped and corrected once
//! their boot's anchor is there, in either order; and a database of the
//! previous schema version is migrated with its rows.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sensorgate::clock::ClockMark;
use sensorgate::record::{Field, Record, Value};
use sensorgate::seal::{self, GapCause, GapNotice, Sealer};
use sensorgate::sink::postgres::{Item, PgSink, Stored};
use support::Rig;
use support::postgres::{Consumer, Postgres};

const WAIT: Duration = Duration::from_secs(60);
const GATEWAY: &str = "gw-0042";
const SENSOR: &str = "bike";
const EPOCH: &str = "pg-test-epoch";

/// A record whose values follow from `seq` (and `variant`, to make a
/// conflicting one).
fn reading(seq: u64, variant: i64) -> Record {
    let f = |name: &str, value: Value| Field {
        name: Arc::from(name),
        value,
    };
    Record {
        sensor: Arc::from(SENSOR),
        seq,
        ts: SystemTime::UNIX_EPOCH + Duration::new(1_764_100_000 + seq, 250_000_000),
        clock: None,
        fields: vec![
            f("speed", Value::Float(20.5 + seq as f64)),
            f("heart_rate", Value::Int(120 + seq as i64 + variant)),
            f("note", Value::Str(format!("confidential-{seq}"))),
        ],
    }
}

fn sealer(rig: &Rig) -> Sealer {
    Sealer::new(
        GATEWAY,
        EPOCH,
        seal::load_signing_key(&rig.gateway_key.key_path).unwrap(),
        seal::load_public_key(&rig.recipient.pub_path).unwrap(),
        &["heart_rate".to_string(), "note".to_string()],
    )
}

fn batch(sealer: &mut Sealer, seqs: std::ops::RangeInclusive<u64>, variant: i64) -> Vec<u8> {
    let records: Vec<Record> = seqs.map(|s| reading(s, variant)).collect();
    sealer.seal(&records).unwrap().bytes
}

/// A consumer configuration: the rig's broker and a client certificate of
/// its own, a persistent session under `client_id`, the share group
/// `ingest`, and `pg` as the sink.
fn consumer_config(rig: &Rig, pg: &Postgres, client_id: &str) -> PathBuf {
    consumer_config_with(rig, pg, client_id, "share_group = \"ingest\"")
}

/// [`consumer_config`] with `share` for the share group's line.
fn consumer_config_with(rig: &Rig, pg: &Postgres, client_id: &str, share: &str) -> PathBuf {
    consumer_config_sink(rig, client_id, share, &format!("postgres = {:?}", pg.url()))
}

/// [`consumer_config`] with the `[sink]` table's lines given.
fn consumer_config_sink(rig: &Rig, client_id: &str, share: &str, sink: &str) -> PathBuf {
    support::postgres::consumer_config(rig, client_id, share, sink)
}

/// `sensorgate open --mqtt` refused at start: run to its end (bounded).
fn open_refused(rig: &Rig, config: &Path) -> support::Outcome {
    support::run_bounded(
        support::postgres::open_command(rig, config, &rig.gateway_key.pub_path),
        b"",
        WAIT,
    )
}

/// A consumer trusting the rig's gateway key, started and subscribed.
fn start_consumer(rig: &Rig, config: &Path) -> Consumer {
    Consumer::start(rig, config, &rig.gateway_key.pub_path)
}

/// Publishes `payloads` to the gateway's topic as a client of its own.
fn publish(rig: &Rig, payloads: Vec<Vec<u8>>) {
    let id = rig.pki.client("test-publisher").unwrap();
    let tls = sensorgate::demo::pki::rustls_client_config(&rig.pki.ca_pem(), &id).unwrap();
    support::publish_all(
        support::mqtt_options("test-publisher", rig.broker.port(), tls),
        &format!("sensorgate/{GATEWAY}/{SENSOR}"),
        payloads,
        WAIT,
    );
}

fn wait_for_rows(pg: &Postgres, sql: &str, want: u64, log: impl Fn() -> String) {
    let mut have = 0;
    let arrived = support::wait_until(WAIT, Duration::from_millis(100), || {
        have = pg.count(sql);
        have >= want
    });
    assert!(arrived, "{sql}: {have} of {want}; consumer log:\n{}", log());
}

#[test]
fn each_record_is_stored_once_conflicts_are_kept_and_gaps_are_listed() {
    let rig = Rig::new();
    let pg = Postgres::start();
    let config = consumer_config(&rig, &pg, "consumer-1");
    let mut consumer = start_consumer(&rig, &config);
    let mut sealer = sealer(&rig);

    let first = batch(&mut sealer, 0..=9, 0);
    let second = batch(&mut sealer, 10..=19, 0);
    let messages = vec![
        first,
        second.clone(),
        // 20..=29 never sent; 30..=34 declared lost by the gateway.
        sealer
            .seal_notice(&GapNotice {
                sensor: Arc::from(SENSOR),
                first: 30,
                last: 34,
                lost: 5,
                exact: true,
                cause: GapCause::SpoolFull,
            })
            .unwrap()
            .expect("a version 2 gap notice")
            .bytes,
        batch(&mut sealer, 35..=39, 0),
        // The second message again: a redelivery.
        second,
        // Sequence numbers 5 and 6 again, with other values: a conflict.
        batch(&mut sealer, 5..=6, 1),
        // Not a sealed message at all.
        b"not a sealed message".to_vec(),
    ];
    publish(&rig, messages);
    wait_for_rows(&pg, "SELECT count(*) FROM sensorgate_rejected", 1, || {
        consumer.log()
    });

    assert_eq!(
        pg.query(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM sensorgate_records"
        ),
        "25|25|0|39"
    );
    // The decrypted fields are stored (jsonb orders them by name), with
    // the time of the frame.
    assert_eq!(
        pg.query(
            "SELECT fields::text, ts AT TIME ZONE 'UTC' FROM sensorgate_records WHERE seq = 3"
        ),
        "{\"note\": \"confidential-3\", \"speed\": 23.5, \"heart_rate\": 123}|2025-11-25 19:46:43.25"
    );
    // The first values of 5 and 6 stay; the others are kept apart.
    assert_eq!(
        pg.query("SELECT (fields->>'heart_rate') FROM sensorgate_records WHERE seq IN (5, 6) ORDER BY seq"),
        "125\n126"
    );
    assert_eq!(
        pg.query("SELECT seq, fields->>'heart_rate', topic FROM sensorgate_conflicts ORDER BY seq"),
        format!("5|126|sensorgate/{GATEWAY}/{SENSOR}\n6|127|sensorgate/{GATEWAY}/{SENSOR}")
    );
    assert_eq!(
        pg.query(
            "SELECT gateway, sensor, epoch, first_missing, last_missing, missing, declared \
             FROM sensorgate_gaps ORDER BY first_missing"
        ),
        format!("{GATEWAY}|{SENSOR}|{EPOCH}|20|34|15|5")
    );
    assert_eq!(
        pg.query("SELECT first_seq, last_seq, cause, lost, exact FROM sensorgate_declared"),
        "30|34|spool-full|5|t"
    );
    assert!(
        pg.query("SELECT reason FROM sensorgate_rejected")
            .contains("not a sealed message")
    );

    assert_eq!(consumer.stop(), 0, "{}", consumer.log());
    let log = consumer.log();
    assert!(
        log.contains(
            "stored 7 messages: 25 records inserted, 10 duplicates, 2 conflicts, 1 gap notices, 1 rejected, 0 times corrected"
        ),
        "{log}"
    );
    assert!(log.contains("conflict with those stored"), "{log}");
}

#[test]
fn a_schema_of_another_version_is_refused_at_start() {
    let rig = Rig::new();
    let pg = Postgres::start();
    let config = consumer_config(&rig, &pg, "consumer-1");
    drop(start_consumer(&rig, &config));
    pg.query("UPDATE sensorgate_schema SET version = 7");
    let out = open_refused(&rig, &config);
    assert_eq!(out.code, 76, "{}", out.shown());
    assert!(
        out.stderr
            .contains("schema in PostgreSQL at postgresql://sensorgate@127.0.0.1")
            && out.stderr.contains("is version 7"),
        "{}",
        out.shown()
    );
}

/// Two consumers of one share group split the messages; one is killed
/// (SIGKILL) mid-stream and started again, and PostgreSQL is stopped and
/// started again mid-stream: every record is in `sensorgate_records`
/// exactly once, by SQL count, with no conflict and nothing rejected.
#[test]
fn two_consumers_lose_nothing_and_double_nothing_through_a_kill_and_a_database_restart() {
    let rig = Rig::new();
    let pg = Postgres::start();
    let configs = [
        consumer_config(&rig, &pg, "consumer-1"),
        consumer_config(&rig, &pg, "consumer-2"),
    ];
    let mut first = start_consumer(&rig, &configs[0]);
    let mut second = start_consumer(&rig, &configs[1]);
    let logs = |a: &Consumer, b: &Consumer| {
        format!(
            "consumer 1:\n{}\nconsumer 2:\n{}\nPostgreSQL:\n{}",
            support::excerpt(&a.log()),
            support::excerpt(&b.log()),
            support::excerpt(&pg.log())
        )
    };
    let mut sealer = sealer(&rig);
    const PER: u64 = 10;
    let mut next = 0u64;
    let mut chunk = |messages: u64| -> Vec<Vec<u8>> {
        (0..messages)
            .map(|_| {
                let m = batch(&mut sealer, next..=next + PER - 1, 0);
                next += PER;
                m
            })
            .collect()
    };
    let stored = "SELECT count(*) FROM sensorgate_records";

    publish(&rig, chunk(100));
    wait_for_rows(&pg, stored, 300, || logs(&first, &second));
    first.kill();
    publish(&rig, chunk(100));
    // What the broker had queued for the killed consumer's session (a
    // share group's member is sent its share while away, mosquitto does)
    // and what it had not acknowledged is delivered when it is back.
    first = start_consumer(&rig, &configs[0]);
    wait_for_rows(&pg, stored, 2000, || logs(&first, &second));

    pg.stop();
    publish(&rig, chunk(50));
    assert!(
        support::wait_until(WAIT, Duration::from_millis(100), || second
            .log()
            .contains("waiting for it, the messages stay unacknowledged")),
        "{}",
        logs(&first, &second)
    );
    pg.start_again();
    wait_for_rows(&pg, stored, 2500, || logs(&first, &second));

    assert_eq!(
        pg.query(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM sensorgate_records"
        ),
        "2500|2500|0|2499",
        "{}",
        logs(&first, &second)
    );
    assert_eq!(pg.count("SELECT count(*) FROM sensorgate_conflicts"), 0);
    assert_eq!(pg.count("SELECT count(*) FROM sensorgate_rejected"), 0);
    assert_eq!(pg.count("SELECT count(*) FROM sensorgate_gaps"), 0);
    assert_eq!(first.stop(), 0, "{}", logs(&first, &second));
    assert_eq!(second.stop(), 0, "{}", logs(&first, &second));
    // Both took a share of the work.
    for c in [&first, &second] {
        let log = c.log();
        let totals = log
            .lines()
            .find_map(|l| l.strip_prefix("sensorgate: stored "))
            .unwrap_or_else(|| panic!("no totals: {log}"));
        assert!(!totals.starts_with("0 messages"), "{totals}");
    }
}

/// The broker restarts mid-stream (gracefully, keeping its sessions): the
/// consumer's persistent session gets what was queued, and every record is
/// stored exactly once. One consumer, without a share group: mosquitto 2.0
/// (Debian 12's 2.0.11) stopped delivering to a share group's restored
/// subscription after a restart in our runs (docs/CONSUMING.md).
#[test]
fn a_broker_restart_loses_nothing_and_doubles_nothing() {
    let mut rig = Rig::new();
    let pg = Postgres::start();
    let config = consumer_config_with(&rig, &pg, "consumer-1", "");
    let mut consumer = start_consumer(&rig, &config);
    let mut sealer = sealer(&rig);
    let mut messages = (0..100u64).map(|i| batch(&mut sealer, i * 10..=i * 10 + 9, 0));
    let stored = "SELECT count(*) FROM sensorgate_records";
    publish(&rig, messages.by_ref().take(50).collect());
    wait_for_rows(&pg, stored, 200, || consumer.log());
    rig.broker.restart();
    publish(&rig, messages.collect());
    wait_for_rows(&pg, stored, 1000, || consumer.log());
    assert_eq!(
        pg.query(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM sensorgate_records"
        ),
        "1000|1000|0|999"
    );
    assert_eq!(pg.count("SELECT count(*) FROM sensorgate_conflicts"), 0);
    assert_eq!(consumer.stop(), 0, "{}", consumer.log());
}

/// `sslmode=require` in the URL and `[sink] ca_file`: the consumer reaches
/// a PostgreSQL that accepts nothing but TLS, checking its certificate.
/// Without TLS, or with another CA, it is refused at start, saying why.
#[test]
fn tls_to_the_database_is_used_where_the_url_asks_for_it() {
    let rig = Rig::new();
    let pg = Postgres::start_with_tls(&rig.pki);
    let url = pg.url().replace("sslmode=disable", "sslmode=require");
    let sink = |url: &str, ca: &Path| format!("postgres = {url:?}\nca_file = {ca:?}");
    let config = consumer_config_sink(&rig, "consumer-1", "", &sink(&url, &rig.tls.ca));
    let mut consumer = start_consumer(&rig, &config);
    let mut sealer = sealer(&rig);
    publish(&rig, vec![batch(&mut sealer, 0..=9, 0)]);
    wait_for_rows(&pg, "SELECT count(*) FROM sensorgate_records", 10, || {
        consumer.log()
    });
    assert_eq!(consumer.stop(), 0, "{}", consumer.log());

    // Plaintext: the server has no line for it.
    let plain = consumer_config_sink(
        &rig,
        "consumer-2",
        "",
        &format!("postgres = {:?}", pg.url()),
    );
    let out = open_refused(&rig, &plain);
    assert_eq!(out.code, 76, "{}", out.shown());
    assert!(out.stderr.contains("no encryption"), "{}", out.shown());
    // Another CA: the database's certificate is not trusted.
    let other = sensorgate::demo::pki::Pki::new("another CA").unwrap();
    let other_ca = rig.dir.join("other-ca.pem");
    support::write_file(&other_ca, &other.ca_pem(), 0o644);
    let wrong = consumer_config_sink(&rig, "consumer-3", "", &sink(&url, &other_ca));
    let out = open_refused(&rig, &wrong);
    assert_eq!(out.code, 69, "{}", out.shown());
    assert!(
        out.stderr.contains("is unavailable") && out.stderr.contains("UnknownIssuer"),
        "{}",
        out.shown()
    );
}

/// The pandas example of docs/CONSUMING.md, run as it is written (the
/// block is taken from the file) against the records a consumer stored:
/// one row per record, one column per field, the time as a UTC index.
#[test]
fn the_pandas_example_in_the_docs_reads_one_column_per_field() {
    let rig = Rig::new();
    let pg = Postgres::start();
    let config = consumer_config(&rig, &pg, "consumer-1");
    let mut consumer = start_consumer(&rig, &config);
    let mut sealer = sealer(&rig);
    publish(
        &rig,
        vec![batch(&mut sealer, 0..=9, 0), batch(&mut sealer, 10..=19, 0)],
    );
    wait_for_rows(&pg, "SELECT count(*) FROM sensorgate_records", 20, || {
        consumer.log()
    });
    assert_eq!(consumer.stop(), 0, "{}", consumer.log());

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/interop-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/install-test-deps (it makes the venv with pandas)",
        python.display()
    );
    let mut run = Command::new(python);
    run.arg(root.join("tests/consumer/doc_example.py"))
        .arg(root.join("docs/CONSUMING.md"))
        .env(
            "SENSORGATE_DB",
            pg.url().replace("postgresql://", "postgresql+psycopg://"),
        );
    let out = support::run_bounded(run, b"", WAIT);
    assert_eq!(out.code, 0, "{}", out.shown());
    // The example prints the head of the DataFrame; the JSON comes last.
    let last = out.stdout.trim().lines().last().unwrap_or_default();
    let made: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {}", out.shown()));
    assert_eq!(
        made["columns"],
        serde_json::json!([
            "gateway",
            "sensor",
            "epoch",
            "seq",
            "note",
            "speed",
            "heart_rate"
        ]),
        "{made}"
    );
    assert_eq!(made["index"], "ts");
    assert!(
        made["index_dtype"].as_str().unwrap().contains("UTC"),
        "{made}"
    );
    assert_eq!(made["rows"], 20);
    assert_eq!(
        made["first"],
        serde_json::json!({
            "ts": "2025-11-25T19:46:40.250000+00:00",
            "gateway": GATEWAY, "sensor": SENSOR, "epoch": EPOCH, "seq": 0,
            "note": "confidential-0", "speed": 20.5, "heart_rate": 120
        }),
        "{made}"
    );
}

/// A backlog the broker queued while the consumer was away (a thousand
/// messages, far beyond the 64 it may have unacknowledged) drains once the
/// consumer is back: the consumer's event loop keeps acknowledging while
/// the messages wait for the database (mosquitto 2.0 sends a resumed
/// session's whole queue at once).
#[test]
fn a_backlog_queued_while_the_consumer_was_away_drains() {
    let rig = Rig::new();
    let pg = Postgres::start();
    let config = consumer_config(&rig, &pg, "consumer-1");
    let mut consumer = start_consumer(&rig, &config);
    assert_eq!(consumer.stop(), 0, "{}", consumer.log());
    let mut sealer = sealer(&rig);
    publish(
        &rig,
        (0..1000u64)
            .map(|i| batch(&mut sealer, i * 2..=i * 2 + 1, 0))
            .collect(),
    );
    let mut consumer = start_consumer(&rig, &config);
    wait_for_rows(&pg, "SELECT count(*) FROM sensorgate_records", 2000, || {
        consumer.log()
    });
    assert_eq!(
        pg.query("SELECT count(DISTINCT seq), min(seq), max(seq) FROM sensorgate_records"),
        "2000|0|1999"
    );
    assert_eq!(consumer.stop(), 0, "{}", consumer.log());
}

/// One batch (as the consumer hands on the messages that came together)
/// holding a message PostgreSQL refuses (a text with a NUL, which jsonb
/// cannot hold), one that does not open, a redelivery and a conflict
/// within the batch: the batch's transaction fails on the refused one, so
/// it is stored again message by message, and only that one is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_message_the_database_refuses_keeps_the_others() {
    use sensorgate::consumer::{Delivery, Handler, Taken};
    use sensorgate::sink::postgres::PgHandler;

    let rig = Rig::new();
    let pg = Postgres::start();
    let mut sealer = sealer(&rig);
    let refused = {
        let mut r = reading(10, 0);
        r.fields[2].value = Value::Str("nul \0 inside".into());
        sealer.seal(&[r]).unwrap().bytes
    };
    let first = batch(&mut sealer, 0..=9, 0);
    let payloads = vec![
        first.clone(),
        refused,
        batch(&mut sealer, 11..=19, 0),
        b"not a sealed message".to_vec(),
        first,
        batch(&mut sealer, 18..=21, 1),
    ];
    let topic = format!("sensorgate/{GATEWAY}/{SENSOR}");
    let deliveries = payloads
        .into_iter()
        .map(|p| Delivery {
            topic: topic.clone(),
            payload: p.into(),
        })
        .collect();

    let mut opener = rig.opener();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut handler = PgHandler::connect(&pg.url(), None, &mut opener, stop.clone())
        .await
        .unwrap();
    let Taken::Later(taken) = handler.handle(deliveries, &stop).await.unwrap() else {
        panic!("the batch was not handed to the writer");
    };
    assert!(
        tokio::time::timeout(WAIT, taken)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        "the batch was not taken"
    );
    let totals = handler.finish().await;
    assert_eq!(
        totals.to_string(),
        "stored 6 messages: 21 records inserted, 10 duplicates, 2 conflicts, 0 gap notices, 2 rejected, 0 times corrected"
    );
    assert_eq!(
        pg.query(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM sensorgate_records"
        ),
        "21|21|0|21"
    );
    assert_eq!(
        pg.query("SELECT seq FROM sensorgate_conflicts ORDER BY seq"),
        "18\n19"
    );
    let reasons = pg.query("SELECT reason FROM sensorgate_rejected ORDER BY id");
    assert!(
        reasons.contains("the database refused its records")
            && reasons.contains("not a sealed message"),
        "{reasons}"
    );
    assert_eq!(
        pg.query("SELECT first_missing, last_missing FROM sensorgate_gaps"),
        "10|10"
    );
}

// ---------------------------------------------------------------------------
// Times stamped before the gateway's clock was synchronised (issue 19)
// ---------------------------------------------------------------------------

/// The boot the records below were stamped in, and another.
const BOOT: [u8; 16] = *b"pg-test-boot-one";
const OTHER_BOOT: [u8; 16] = *b"pg-test-boot-two";

/// Where a Pi's clock starts after a boot without network (no RTC, no
/// fake-hwclock): 1970, here 100.25 s after the epoch, 30 s after boot.
const UNSYNCED_AT: Duration = Duration::from_millis(100_250);
const UNSYNCED_BOOT_MS: u64 = 30_000;

/// The anchor: synchronised at 2026-12-08T06:00:00.250Z, 3 h after boot.
/// So the record stamped 30 s after boot was read at 03:00:30.250.
const ANCHOR_AT: Duration = Duration::from_millis(1_796_709_600_250);
const ANCHOR_BOOT_MS: u64 = 3 * 3600 * 1000;

/// Records `seqs` stamped one a second from `at` (after the epoch) and boot
/// clock `boot_ms`, the clock synchronised or not; `variant` as for
/// [`reading`].
fn stamped(
    seqs: std::ops::RangeInclusive<u64>,
    at: Duration,
    boot_ms: u64,
    synced: bool,
    variant: i64,
) -> Vec<Record> {
    let first = *seqs.start();
    seqs.map(|seq| {
        let i = seq - first;
        Record {
            ts: SystemTime::UNIX_EPOCH + at + Duration::from_secs(i),
            clock: Some(ClockMark {
                boot_ms: boot_ms + i * 1000,
                synced,
            }),
            ..reading(seq, variant)
        }
    })
    .collect()
}

/// A sealed message of records `seqs` stamped before the clock was
/// synchronised, seq `s` at 1970 + 100.25 s + `s` s and boot clock 30 s +
/// `s` s.
fn unsynced(sealer: &mut Sealer, seqs: std::ops::RangeInclusive<u64>, variant: i64) -> Vec<u8> {
    let first = *seqs.start();
    let records = stamped(
        seqs,
        UNSYNCED_AT + Duration::from_secs(first),
        UNSYNCED_BOOT_MS + first * 1000,
        false,
        variant,
    );
    sealer.seal(&records).unwrap().bytes
}

/// A sealed message of records `seqs` stamped synchronised, at the anchor's
/// time and boot clock onwards: the sealer's first such message since an
/// unsynchronised one carries the clock as an anchor.
fn anchor(sealer: &mut Sealer, seqs: std::ops::RangeInclusive<u64>, at: Duration) -> Vec<u8> {
    let records = stamped(seqs, at, ANCHOR_BOOT_MS, true, 0);
    sealer.seal(&records).unwrap().bytes
}

/// What `seq|ts|ts_stamped|ts_synced` (times in UTC, NULL as nothing) the
/// gateway's records `first..=last` have, one a line.
fn times(pg: &Postgres, first: u64, last: u64) -> String {
    pg.query(&format!(
        "SELECT seq, ts AT TIME ZONE 'UTC', ts_stamped AT TIME ZONE 'UTC', ts_synced \
         FROM sensorgate_records \
         WHERE gateway = '{GATEWAY}' AND seq BETWEEN {first} AND {last} ORDER BY seq"
    ))
}

/// [`times`] for records `0..=last` stamped unsynchronised as [`unsynced`]
/// does, once corrected from the anchor at [`ANCHOR_AT`].
fn corrected(last: u64) -> String {
    (0..=last)
        .map(|s| {
            format!(
                "{s}|2026-12-08 03:00:{}.25|1970-01-01 00:01:{}.25|f",
                30 + s,
                40 + s
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// [`times`] for the same records while they wait for their anchor.
fn waiting(last: u64) -> String {
    (0..=last)
        .map(|s| format!("{s}|1970-01-01 00:01:{}.25||f", 40 + s))
        .collect::<Vec<_>>()
        .join("\n")
}

/// At most a minute.
async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("PostgreSQL did not answer within a minute")
}

/// A connection of the sink's own, for tests that store batch by batch.
async fn sink(pg: &Postgres) -> PgSink {
    bounded(PgSink::connect(&pg.url(), None)).await.unwrap()
}

/// `messages` opened as the consumer does, for the sink.
fn items(opener: &mut seal::Opener, messages: &[&Vec<u8>]) -> Vec<Item> {
    messages
        .iter()
        .map(|m| Item {
            topic: format!("sensorgate/{GATEWAY}/{SENSOR}"),
            payload: m.to_vec().into(),
            opened: opener.open_untracked(m).map_err(|e| e.to_string()),
        })
        .collect()
}

/// Opens `messages` as the consumer does and stores them as one batch.
async fn store(sink: &mut PgSink, opener: &mut seal::Opener, messages: &[&Vec<u8>]) -> Stored {
    let items = items(opener, messages);
    bounded(sink.store(&items)).await.unwrap()
}

/// Records stamped before the clock was synchronised are stored as stamped,
/// marked, with the boot clock of each; when the anchor of their boot
/// arrives (through the broker and a consumer, later), they are corrected
/// in place, the time as stamped kept in `ts_stamped`.
#[test]
fn unsynchronised_records_are_stored_as_stamped_and_corrected_when_their_anchor_arrives() {
    let rig = Rig::new();
    let pg = Postgres::start();
    let config = consumer_config(&rig, &pg, "consumer-1");
    let mut consumer = start_consumer(&rig, &config);
    let mut sealer = sealer(&rig).with_boot_id(BOOT);

    publish(
        &rig,
        vec![
            unsynced(&mut sealer, 0..=4, 0),
            unsynced(&mut sealer, 5..=9, 0),
        ],
    );
    wait_for_rows(&pg, "SELECT count(*) FROM sensorgate_records", 10, || {
        consumer.log()
    });
    assert_eq!(times(&pg, 0, 9), waiting(9));
    assert_eq!(
        pg.query(
            "SELECT string_agg(boot_ms::text, ',' ORDER BY seq), count(DISTINCT boot_id), \
             min(convert_from(boot_id, 'UTF8')) FROM sensorgate_records"
        ),
        "30000,31000,32000,33000,34000,35000,36000,37000,38000,39000|1|pg-test-boot-one"
    );
    assert_eq!(pg.count("SELECT count(*) FROM sensorgate_anchors"), 0);

    publish(&rig, vec![anchor(&mut sealer, 10..=11, ANCHOR_AT)]);
    wait_for_rows(
        &pg,
        "SELECT count(*) FROM sensorgate_records WHERE ts_stamped IS NOT NULL",
        10,
        || consumer.log(),
    );
    assert_eq!(times(&pg, 0, 9), corrected(9));
    // The anchor's own records were stamped synchronised: as they came.
    assert_eq!(
        times(&pg, 10, 11),
        "10|2026-12-08 06:00:00.25||t\n11|2026-12-08 06:00:01.25||t"
    );
    assert_eq!(
        pg.query(
            "SELECT gateway, convert_from(boot_id, 'UTF8'), ts AT TIME ZONE 'UTC', boot_ms \
             FROM sensorgate_anchors"
        ),
        format!("{GATEWAY}|pg-test-boot-one|2026-12-08 06:00:00.25|10800000")
    );
    // The anchor's records have no clock columns; the corrected keep theirs.
    assert_eq!(
        pg.count(
            "SELECT count(*) FROM sensorgate_records WHERE boot_id IS NULL AND boot_ms IS NULL"
        ),
        2
    );

    assert_eq!(consumer.stop(), 0, "{}", consumer.log());
    let log = consumer.log();
    assert!(
        log.contains(
            "stored 3 messages: 12 records inserted, 0 duplicates, 0 conflicts, 0 gap notices, 0 rejected, 10 times corrected"
        ),
        "{log}"
    );
    assert!(
        log.contains("corrected the times of 10 records stamped before their gateway's clock was synchronised"),
        "{log}"
    );
}

/// Unsynchronised records whose anchor is stored already are corrected as
/// they are inserted, also when the anchor comes in the same batch (after
/// them). The first anchor of a boot is the one kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynchronised_records_arriving_after_their_anchor_are_corrected_on_insert() {
    let rig = Rig::new();
    let pg = Postgres::start();
    let mut sealer = sealer(&rig).with_boot_id(BOOT);
    let early = unsynced(&mut sealer, 0..=4, 0);
    let first_anchor = anchor(&mut sealer, 5..=6, ANCHOR_AT);
    let late = unsynced(&mut sealer, 7..=9, 0);
    // A second anchor of the boot, saying 10 s later at the same boot
    // clock: it would move the records 10 s further, were it kept.
    let second_anchor = anchor(&mut sealer, 10..=11, ANCHOR_AT + Duration::from_secs(10));
    let mut opener = rig.opener();
    let mut sink = sink(&pg).await;

    let stored = store(&mut sink, &mut opener, &[&first_anchor]).await;
    assert_eq!((stored.inserted, stored.corrected), (2, 0));
    let stored = store(&mut sink, &mut opener, &[&early]).await;
    assert_eq!((stored.inserted, stored.corrected), (5, 5));
    assert_eq!(times(&pg, 0, 4), corrected(4));
    // Records before their anchor in the same batch.
    let stored = store(&mut sink, &mut opener, &[&late, &second_anchor]).await;
    assert_eq!((stored.inserted, stored.corrected), (5, 3));
    assert_eq!(
        times(&pg, 7, 9),
        "7|2026-12-08 03:00:37.25|1970-01-01 00:01:47.25|f\n\
         8|2026-12-08 03:00:38.25|1970-01-01 00:01:48.25|f\n\
         9|2026-12-08 03:00:39.25|1970-01-01 00:01:49.25|f"
    );
    assert_eq!(
        pg.query("SELECT ts AT TIME ZONE 'UTC' FROM sensorgate_anchors"),
        "2026-12-08 06:00:00.25"
    );
    assert_eq!(
        pg.count(
            "SELECT count(*) FROM sensorgate_records WHERE NOT ts_synced AND ts_stamped IS NULL"
        ),
        0
    );
}

/// Two consumers of a share group, one storing a boot's unsynchronised
/// records while the other stores its anchor, in transactions that overlap:
/// neither sees what the other has not committed, so each would leave the
/// records to the other, were such transactions not taken one after the
/// other for a gateway. Every record is corrected, round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_their_anchor_stored_at_once_by_two_consumers_are_corrected() {
    const ROUNDS: u64 = 40;
    let rig = Rig::new();
    let pg = Postgres::start();
    let mut opener = rig.opener();
    let (mut one, mut two) = (sink(&pg).await, sink(&pg).await);
    for round in 0..ROUNDS {
        let mut sealer = sealer(&rig).with_boot_id([round as u8; 16]);
        let first = round * 10;
        let records = items(&mut opener, &[&unsynced(&mut sealer, first..=first + 4, 0)]);
        let anchor = items(
            &mut opener,
            &[&anchor(&mut sealer, first + 5..=first + 6, ANCHOR_AT)],
        );
        let (a, b) = bounded(async { tokio::join!(one.store(&records), two.store(&anchor)) }).await;
        assert_eq!(
            a.unwrap().corrected + b.unwrap().corrected,
            5,
            "round {round}"
        );
    }
    assert_eq!(
        pg.count(
            "SELECT count(*) FROM sensorgate_records WHERE NOT ts_synced AND ts_stamped IS NOT NULL"
        ),
        ROUNDS * 5
    );
}

/// An anchor says nothing about another boot (the boot clock restarted),
/// nor about another gateway's boot of the same id: the records stay as
/// stamped until their own boot's anchor comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anchor_of_another_boot_corrects_nothing() {
    let rig = Rig::new();
    let pg = Postgres::start();
    let mut sealer = sealer(&rig).with_boot_id(BOOT);
    let records = unsynced(&mut sealer, 0..=4, 0);
    let other_boot = anchor(
        &mut self::sealer(&rig).with_boot_id(OTHER_BOOT),
        5..=6,
        ANCHOR_AT,
    );
    let other_gateway = {
        let mut other = Sealer::new(
            "gw-0043",
            EPOCH,
            seal::load_signing_key(&rig.gateway_key.key_path).unwrap(),
            seal::load_public_key(&rig.recipient.pub_path).unwrap(),
            &[],
        )
        .with_boot_id(BOOT);
        anchor(&mut other, 0..=1, ANCHOR_AT)
    };
    let own = anchor(&mut sealer, 7..=8, ANCHOR_AT);
    let mut opener = rig.opener();
    let mut sink = sink(&pg).await;

    store(&mut sink, &mut opener, &[&records]).await;
    let stored = store(&mut sink, &mut opener, &[&other_boot, &other_gateway]).await;
    assert_eq!((stored.inserted, stored.corrected), (4, 0));
    assert_eq!(times(&pg, 0, 4), waiting(4));
    assert_eq!(pg.count("SELECT count(*) FROM sensorgate_anchors"), 2);

    let stored = store(&mut sink, &mut opener, &[&own]).await;
    assert_eq!(stored.corrected, 5);
    assert_eq!(times(&pg, 0, 4), corrected(4));
}

/// A message whose records were corrected, delivered again, is a
/// duplicate (compared by the time as stamped) on each of the sink's
/// paths: alone (the plain insert fails, the insert skipping existing keys
/// follows), in a batch with new records, and message by message after the
/// database refused another message of its batch. Other values under its
/// numbers are still a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrected_message_delivered_again_is_a_duplicate_not_a_conflict() {
    use sensorgate::consumer::{Delivery, Handler, Taken};
    use sensorgate::sink::postgres::PgHandler;

    let rig = Rig::new();
    let pg = Postgres::start();
    let mut sealer = sealer(&rig).with_boot_id(BOOT);
    let records = unsynced(&mut sealer, 0..=4, 0);
    let other_values = unsynced(&mut sealer, 3..=4, 1);
    let anchor = anchor(&mut sealer, 5..=6, ANCHOR_AT);
    let new = batch(&mut sealer, 7..=8, 0);
    let refused = {
        let mut r = reading(9, 0);
        r.fields[2].value = Value::Str("nul \0 inside".into());
        sealer.seal(&[r]).unwrap().bytes
    };
    let mut opener = rig.opener();
    let mut sink = sink(&pg).await;

    store(&mut sink, &mut opener, &[&records, &anchor]).await;
    assert_eq!(times(&pg, 0, 4), corrected(4));

    let again = store(&mut sink, &mut opener, &[&records]).await;
    assert_eq!(
        again,
        Stored {
            duplicates: 5,
            ..Stored::default()
        }
    );
    let with_new = store(&mut sink, &mut opener, &[&new, &records]).await;
    assert_eq!(
        with_new,
        Stored {
            inserted: 2,
            duplicates: 5,
            ..Stored::default()
        }
    );
    // Message by message: through the consumer's handler, whose writer
    // falls back to that when the database refuses the batch.
    let topic = format!("sensorgate/{GATEWAY}/{SENSOR}");
    let deliveries = [&records, &refused, &anchor]
        .into_iter()
        .map(|p| Delivery {
            topic: topic.clone(),
            payload: p.clone().into(),
        })
        .collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut handler = bounded(PgHandler::connect(
        &pg.url(),
        None,
        &mut opener,
        stop.clone(),
    ))
    .await
    .unwrap();
    let Taken::Later(taken) = handler.handle(deliveries, &stop).await.unwrap() else {
        panic!("the batch was not handed to the writer");
    };
    assert!(
        bounded(taken).await.unwrap().unwrap(),
        "the batch was not taken"
    );
    assert_eq!(
        bounded(handler.finish()).await.to_string(),
        "stored 3 messages: 0 records inserted, 7 duplicates, 0 conflicts, 0 gap notices, 1 rejected, 0 times corrected"
    );
    assert_eq!(pg.count("SELECT count(*) FROM sensorgate_conflicts"), 0);
    assert_eq!(times(&pg, 0, 4), corrected(4));

    // Other values under two of its numbers: kept apart, as stamped.
    let conflict = store(&mut sink, &mut opener, &[&other_values]).await;
    assert_eq!(conflict.conflicts.values().sum::<u64>(), 2);
    assert_eq!(
        pg.query("SELECT seq, ts AT TIME ZONE 'UTC' FROM sensorgate_conflicts ORDER BY seq"),
        "3|1970-01-01 00:01:43.25\n4|1970-01-01 00:01:44.25"
    );
    assert_eq!(times(&pg, 0, 4), corrected(4));
}

/// A database of schema version 1 with a record in it: a consumer of this
/// build migrates it at start (saying so), the record is kept, marked
/// synchronised, and is a duplicate of the same record delivered again.
#[test]
fn a_database_of_schema_version_1_is_migrated_keeping_its_records() {
    let rig = Rig::new();
    let pg = Postgres::start();
    pg.query(sensorgate::sink::postgres::SCHEMA_1);
    // Record 7 as version 1 stored it.
    pg.query(&format!(
        "INSERT INTO sensorgate_records (gateway, sensor, epoch, seq, ts, fields) VALUES \
         ('{GATEWAY}', '{SENSOR}', '{EPOCH}', 7, '2025-11-25T19:46:47.25Z', \
         '{{\"note\": \"confidential-7\", \"speed\": 27.5, \"heart_rate\": 127}}')"
    ));

    let config = consumer_config(&rig, &pg, "consumer-1");
    let mut consumer = start_consumer(&rig, &config);
    let log = consumer.log();
    assert!(
        log.contains("migrated the schema in PostgreSQL at postgresql://sensorgate@127.0.0.1")
            && log.contains("from version 1 to 2"),
        "{log}"
    );
    assert_eq!(
        pg.query("SELECT string_agg(version::text, ',' ORDER BY version) FROM sensorgate_schema"),
        "1,2"
    );
    assert_eq!(
        pg.query(
            "SELECT seq, ts AT TIME ZONE 'UTC', ts_synced, boot_id IS NULL, boot_ms IS NULL, \
             ts_stamped IS NULL FROM sensorgate_records"
        ),
        "7|2025-11-25 19:46:47.25|t|t|t|t"
    );
    assert_eq!(pg.count("SELECT count(*) FROM sensorgate_anchors"), 0);

    let mut sealer = sealer(&rig);
    publish(&rig, vec![batch(&mut sealer, 7..=8, 0)]);
    wait_for_rows(&pg, "SELECT count(*) FROM sensorgate_records", 2, || {
        consumer.log()
    });
    assert_eq!(consumer.stop(), 0, "{}", consumer.log());
    let log = consumer.log();
    assert!(
        log.contains(
            "stored 1 messages: 1 records inserted, 1 duplicates, 0 conflicts, 0 gap notices, 0 rejected, 0 times corrected"
        ),
        "{log}"
    );
    // Started again: version 2 as it is, nothing migrated.
    let mut again = start_consumer(&rig, &consumer_config(&rig, &pg, "consumer-2"));
    assert_eq!(again.stop(), 0, "{}", again.log());
    assert!(!again.log().contains("migrated"), "{}", again.log());
    assert_eq!(
        pg.query("SELECT string_agg(version::text, ',' ORDER BY version) FROM sensorgate_schema"),
        "1,2"
    );
}
