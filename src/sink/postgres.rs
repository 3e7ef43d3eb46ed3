//! The PostgreSQL sink of `open --mqtt` (`[sink] postgres = "postgresql://..."`):
//! each sealed message's records go into `sensorgate_records` in one
//! transaction, and the consumer acknowledges the MQTT message only after
//! the commit. The duplicate and conflict state is the table itself, so it
//! holds across any number of consumers (an MQTT 5 share group) and their
//! restarts:
//!
//! - a record whose (gateway, sensor, epoch, seq) is already there with the
//!   same `ts` and `fields` is a redelivery: nothing is inserted;
//! - one with *different* content is a conflict: kept in
//!   `sensorgate_conflicts` (with the topic it came on), never overwriting
//!   the first;
//! - a gap notice (a range the gateway declared lost) goes into
//!   `sensorgate_declared`; the view `sensorgate_gaps` lists the missing
//!   ranges of each stream with how many of their numbers the gateway
//!   declared;
//! - a message that does not open (signature, unknown key, ...) goes into
//!   `sensorgate_rejected` with the reason and its bytes;
//! - records stamped before the gateway's clock was synchronised are stored
//!   as stamped with `ts_synced` false and their boot clock, and corrected
//!   in place (`ts_stamped` keeping the stamped time) once an anchor of
//!   their boot is in `sensorgate_anchors` (`docs/FORMAT.md`, "Time").
//!
//! The schema is made, or migrated from an older version, at connection
//! time, under an advisory lock so that consumers starting together do not
//! race; a database whose schema is of a version this build does not know
//! is refused with what to do.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use tokio_util::sync::CancellationToken;

use crate::consumer::{ConsumerError, Delivery, Taken};
use crate::seal::{MessageClock, OpenedMessage, OpenedRecord};

/// The schema version this build writes and reads (older ones it migrates).
pub const SCHEMA_VERSION: i32 = 2;

/// Taken (transaction-scoped) while the schema is checked or made.
const MIGRATION_LOCK: i64 = 0x7365_6e73_6f72_6761; // "sensorga"

/// The class of the advisory locks (transaction-scoped, one a gateway) that
/// a batch with clock entries takes, keyed by the hash of the gateway's id.
const CLOCK_LOCK: i32 = 0x7367_636b; // "sgck"

/// Version 1 of the schema (public for the test that migrates a database
/// of this version).
#[doc(hidden)]
pub const SCHEMA_1: &str = r#"
CREATE TABLE sensorgate_schema (
    version integer NOT NULL,
    migrated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE sensorgate_records (
    gateway text NOT NULL,
    sensor text NOT NULL,
    epoch text NOT NULL,
    seq bigint NOT NULL,
    ts timestamptz NOT NULL,
    fields jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, sensor, epoch, seq)
);
CREATE TABLE sensorgate_conflicts (
    id bigserial PRIMARY KEY,
    gateway text NOT NULL,
    sensor text NOT NULL,
    epoch text NOT NULL,
    seq bigint NOT NULL,
    ts timestamptz NOT NULL,
    fields jsonb NOT NULL,
    topic text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (gateway, sensor, epoch, seq, ts, fields)
);
CREATE TABLE sensorgate_declared (
    gateway text NOT NULL,
    sensor text NOT NULL,
    epoch text NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    cause text NOT NULL,
    lost bigint NOT NULL,
    exact boolean NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, sensor, epoch, first_seq, last_seq)
);
CREATE TABLE sensorgate_rejected (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    reason text NOT NULL,
    payload bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE VIEW sensorgate_gaps AS
WITH ordered AS (
    SELECT gateway, sensor, epoch, seq,
           lead(seq) OVER (PARTITION BY gateway, sensor, epoch ORDER BY seq) AS next_seq
    FROM sensorgate_records
)
SELECT o.gateway, o.sensor, o.epoch,
       o.seq + 1 AS first_missing,
       o.next_seq - 1 AS last_missing,
       o.next_seq - o.seq - 1 AS missing,
       COALESCE((
           SELECT sum(GREATEST(0, LEAST(d.last_seq, o.next_seq - 1)
                                  - GREATEST(d.first_seq, o.seq + 1) + 1))
           FROM sensorgate_declared d
           WHERE d.gateway = o.gateway AND d.sensor = o.sensor AND d.epoch = o.epoch
       ), 0)::bigint AS declared
FROM ordered o
WHERE o.next_seq > o.seq + 1;
INSERT INTO sensorgate_schema (version) VALUES (1);
"#;

/// Version 1 to 2 (issue 19): times stamped before the gateway's clock was
/// synchronised. The records get their clock (`boot_ms` is the record's
/// own boot clock; both NULL for a synchronised record), the time as
/// stamped once `ts` is corrected, and an index of those that wait for
/// their anchor: empty but for them, so that looking for records to
/// correct costs nothing when none waits. Adding the columns rewrites no
/// row (the default is a constant); the index is built in one pass over
/// the table, during which writers wait.
const MIGRATE_TO_2: &str = r#"
ALTER TABLE sensorgate_records
    ADD COLUMN ts_synced boolean NOT NULL DEFAULT true,
    ADD COLUMN boot_id bytea,
    ADD COLUMN boot_ms bigint,
    ADD COLUMN ts_stamped timestamptz;
CREATE INDEX sensorgate_records_uncorrected ON sensorgate_records (gateway, boot_id)
    WHERE NOT ts_synced AND ts_stamped IS NULL;
CREATE TABLE sensorgate_anchors (
    gateway text NOT NULL,
    boot_id bytea NOT NULL,
    ts timestamptz NOT NULL,
    boot_ms bigint NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, boot_id)
);
INSERT INTO sensorgate_schema (version) VALUES (2);
"#;

/// `MIGRATIONS[i]` takes the schema from version `i + 1` to `i + 2`; an
/// empty database gets [`SCHEMA_1`] and then all of them, so that a new
/// database and a migrated one are the same.
const MIGRATIONS: [&str; 1] = [MIGRATE_TO_2];

const _: () = assert!(SCHEMA_VERSION as usize == MIGRATIONS.len() + 1);

/// The records of a batch of messages, as arrays (one element a record),
/// sorted by key so that consumers writing overlapping batches take their
/// row locks in the same order (they wait for each other, and do not
/// deadlock). First tried as a plain insert: a key already there fails it
/// (unique violation), and the batch is written again with `ON CONFLICT
/// DO NOTHING` added, skipping the keys already there. Redeliveries are rare, and `ON CONFLICT` costs
/// PostgreSQL about half as much again a row (measured: docs/BENCHMARKS.md,
/// "Fleet into PostgreSQL").
///
/// Synchronised records leave the clock columns to their defaults: a batch
/// of them (nearly all batches) goes in without the clock's arrays.
const INSERT_NEW_RECORDS: &str = "\
INSERT INTO sensorgate_records (gateway, sensor, epoch, seq, ts, fields)
SELECT u.gateway, u.sensor, u.epoch, u.seq, u.ts::timestamptz, u.fields::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
  AS u(gateway, sensor, epoch, seq, ts, fields)";

/// [`INSERT_NEW_RECORDS`] for a batch holding records stamped before their
/// gateway's clock was synchronised: their boot id and boot clock (NULL
/// for the others), stored as stamped; [`CORRECT_RECORDS`] corrects them.
const INSERT_NEW_CLOCKED_RECORDS: &str = "\
INSERT INTO sensorgate_records (gateway, sensor, epoch, seq, ts, fields, ts_synced, boot_id, boot_ms)
SELECT u.gateway, u.sensor, u.epoch, u.seq, u.ts::timestamptz, u.fields::jsonb,
       u.boot_ms IS NULL, u.boot_id, u.boot_ms
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
            $7::bytea[], $8::bigint[])
  AS u(gateway, sensor, epoch, seq, ts, fields, boot_id, boot_ms)";

/// The records of the batch whose key is stored with other content: run
/// after the insert that skips existing keys (when it inserted fewer than it was given), in
/// a statement of its own so that it sees what another consumer committed
/// meanwhile. A record this batch inserted is stored with its own content;
/// two records of the batch under one key with different content are a
/// conflict, the first one stored. A stored record whose time was
/// corrected is compared by its time as stamped, which is what a
/// redelivery carries.
const INSERT_CONFLICTS: &str = "\
INSERT INTO sensorgate_conflicts (gateway, sensor, epoch, seq, ts, fields, topic)
SELECT u.gateway, u.sensor, u.epoch, u.seq, u.ts::timestamptz, u.fields::jsonb, u.topic
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[])
  AS u(gateway, sensor, epoch, seq, ts, fields, topic)
JOIN sensorgate_records r
  ON r.gateway = u.gateway AND r.sensor = u.sensor AND r.epoch = u.epoch AND r.seq = u.seq
WHERE COALESCE(r.ts_stamped, r.ts) <> u.ts::timestamptz OR r.fields <> u.fields::jsonb
ON CONFLICT DO NOTHING
RETURNING topic";

/// Serialises, gateway by gateway, the transactions whose batches carry
/// clock entries: without it, a consumer storing a boot's unsynchronised
/// records and another storing its anchor at the same time would each
/// miss what the other has not committed, and the records would wait
/// uncorrected. Taken first in the transaction, in the order of the lock
/// keys (the subquery is sorted before the outer query locks), so that two
/// such transactions do not deadlock.
const LOCK_GATEWAYS: &str = "\
SELECT pg_advisory_xact_lock($2::integer, s.key)
FROM (SELECT DISTINCT hashtext(g) AS key FROM unnest($1::text[]) AS g ORDER BY key) AS s";

/// The anchors of the batch's messages, the first of each boot kept
/// (given in key order, the earliest of a boot first).
const INSERT_ANCHORS: &str = "\
INSERT INTO sensorgate_anchors (gateway, boot_id, ts, boot_ms)
SELECT u.gateway, u.boot_id, u.ts::timestamptz, u.boot_ms
FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bigint[]) AS u(gateway, boot_id, ts, boot_ms)
ON CONFLICT DO NOTHING";

/// Corrects the records of the given gateways that wait for an anchor and
/// now have one, whichever came first: the boot clock ran on while the
/// wall clock jumped, so a record's time is the anchor's plus the boot
/// clock's advance since it (`docs/FORMAT.md`, "Time"). The time as stamped
/// goes into `ts_stamped`. Its conditions are those of the index
/// `sensorgate_records_uncorrected`, which holds only the waiting records.
const CORRECT_RECORDS: &str = "\
UPDATE sensorgate_records r
SET ts_stamped = r.ts,
    ts = a.ts + (r.boot_ms - a.boot_ms) * interval '1 millisecond'
FROM sensorgate_anchors a
WHERE NOT r.ts_synced AND r.ts_stamped IS NULL
  AND r.gateway = ANY($1::text[])
  AND a.gateway = r.gateway AND a.boot_id = r.boot_id";

const INSERT_DECLARED: &str = "\
INSERT INTO sensorgate_declared (gateway, sensor, epoch, first_seq, last_seq, cause, lost, exact)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING";

const INSERT_REJECTED: &str = "\
INSERT INTO sensorgate_rejected (topic, reason, payload) VALUES ($1, $2, $3)";

/// Why the sink cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The database is not reachable or went away: wait and try again,
    /// acknowledging nothing meanwhile.
    #[error("PostgreSQL at {url} is unavailable: {detail}")]
    Unavailable { url: String, detail: String },
    /// The database answered, but not as this build needs.
    #[error("PostgreSQL at {url}: {detail}")]
    Refused { url: String, detail: String },
    /// The database refuses the data of a message (a timestamp or a text
    /// it cannot hold: SQLSTATE class 22).
    #[error("PostgreSQL refused the data: {detail}")]
    Data { detail: String },
    /// The schema is of another version.
    #[error(
        "the sensorgate schema in PostgreSQL at {url} is version {found}, and this sensorgate reads version {SCHEMA_VERSION} (migrating older ones); run the sensorgate that made it, or migrate the database"
    )]
    SchemaVersion { url: String, found: i32 },
    #[error("[sink] ca_file {}: {detail}", path.display())]
    CaFile { path: PathBuf, detail: String },
    #[error(
        "[sink] postgres is not a PostgreSQL URL ({detail}); write postgresql://USER@HOST:PORT/DATABASE"
    )]
    Url { detail: String },
}

impl SinkError {
    /// True when waiting and trying again may work.
    pub fn is_transient(&self) -> bool {
        matches!(self, SinkError::Unavailable { .. })
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            SinkError::Unavailable { .. } => 69,
            SinkError::Refused { .. } | SinkError::SchemaVersion { .. } => 76,
            SinkError::Data { .. } => 65,
            SinkError::CaFile { .. } | SinkError::Url { .. } => 78,
        }
    }
}

/// What storing a batch of messages did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Records inserted.
    pub inserted: u64,
    /// Records already there with the same content (a redelivery).
    pub duplicates: u64,
    /// Records already there with other content, kept in
    /// `sensorgate_conflicts`: how many, by the topic they came on.
    pub conflicts: std::collections::BTreeMap<String, u64>,
    /// Gap notices kept in `sensorgate_declared`.
    pub declared: u64,
    /// Messages kept in `sensorgate_rejected`.
    pub rejected: u64,
    /// Records stamped before their gateway's clock was synchronised whose
    /// time was corrected (they, or their anchor, came in this batch).
    pub corrected: u64,
}

impl Stored {
    /// Adds what storing another part of the batch did.
    fn merge(&mut self, other: Stored) {
        self.inserted += other.inserted;
        self.duplicates += other.duplicates;
        self.declared += other.declared;
        self.rejected += other.rejected;
        self.corrected += other.corrected;
        for (topic, n) in other.conflicts {
            *self.conflicts.entry(topic).or_default() += n;
        }
    }
}

/// One delivered message for the database: opened, or why it did not open.
pub struct Item {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub opened: Result<OpenedMessage, String>,
}

/// A connection to the database, its statements prepared.
pub struct PgSink {
    client: Client,
    url: String,
    insert_new_records: Statement,
    insert_records: Statement,
    insert_new_clocked_records: Statement,
    insert_clocked_records: Statement,
    insert_conflicts: Statement,
    insert_declared: Statement,
    insert_rejected: Statement,
    lock_gateways: Statement,
    insert_anchors: Statement,
    correct_records: Statement,
}

/// The URL as it may be shown: without a password.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn classify(url: &str, e: &tokio_postgres::Error) -> SinkError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        // The cause (a refused certificate, a refused connection) is in
        // the sources, not in the text.
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    };
    let transient = match e.code() {
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            // Connection exceptions, insufficient resources, operator
            // intervention (a shutdown), system errors; a serialization
            // failure or a deadlock, which a retry resolves.
            matches!(class, "08" | "53" | "57" | "58")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
        }
    };
    let url = redacted(url);
    if e.code().is_some_and(|c| c.code().starts_with("22")) {
        return SinkError::Data { detail };
    }
    if transient || e.is_closed() {
        SinkError::Unavailable { url, detail }
    } else {
        SinkError::Refused { url, detail }
    }
}

/// The records of a batch as the statements' arrays, in key order.
#[derive(Default)]
struct Rows<'a> {
    gateway: Vec<&'a str>,
    sensor: Vec<&'a str>,
    epoch: Vec<&'a str>,
    seq: Vec<i64>,
    ts: Vec<&'a str>,
    fields: Vec<String>,
    topic: Vec<&'a str>,
    /// For a record stamped before its gateway's clock was synchronised,
    /// the boot; None for the others.
    boot_id: Vec<Option<&'a [u8]>>,
    /// The boot clock when the record was stamped, for the same records.
    boot_ms: Vec<Option<i64>>,
    /// How many records were stamped unsynchronised.
    unsynced: usize,
}

impl<'a> Rows<'a> {
    fn new(items: &'a [Item]) -> Rows<'a> {
        let mut records: Vec<(&'a Item, &'a OpenedMessage, &'a OpenedRecord)> = items
            .iter()
            .filter_map(|item| item.opened.as_ref().ok().map(|m| (item, m)))
            .flat_map(|(item, m)| m.records.iter().map(move |r| (item, m, r)))
            .collect();
        records.sort_by(|(_, a, ra), (_, b, rb)| {
            (&a.gateway, &a.sensor, &a.epoch, ra.seq)
                .cmp(&(&b.gateway, &b.sensor, &b.epoch, rb.seq))
        });
        let mut rows = Rows::default();
        for (item, m, r) in records {
            rows.gateway.push(&m.gateway);
            rows.sensor.push(&m.sensor);
            rows.epoch.push(&m.epoch);
            rows.seq.push(seq(r.seq));
            rows.ts.push(&r.ts);
            rows.fields
                .push(serde_json::to_string(&r.fields).expect("fields serialise"));
            rows.topic.push(&item.topic);
            match (&m.clock, r.ts_synced) {
                (Some(clock), Some(false)) => {
                    rows.boot_id.push(Some(&clock.boot[..]));
                    rows.boot_ms.push(Some(record_boot_ms(clock, &r.ts)));
                    rows.unsynced += 1;
                }
                _ => {
                    rows.boot_id.push(None);
                    rows.boot_ms.push(None);
                }
            }
        }
        rows
    }

    fn len(&self) -> u64 {
        self.seq.len() as u64
    }
}

/// The boot clock (ms) when a record of an unsynchronised batch was
/// stamped: the batch's, taken at its first record, plus how far the record
/// is from that one (a batch never spans a jump of the wall clock), to the
/// nearest millisecond. A time that does not parse (the opener wrote it, so
/// it does) counts as the first record's.
fn record_boot_ms(clock: &MessageClock, ts: &str) -> i64 {
    let from_first = crate::record::parse_ts(ts).map(|t| t.duration_since(clock.t0));
    let since_first: i128 = match from_first {
        Some(Ok(ahead)) => ahead.as_nanos() as i128,
        Some(Err(behind)) => -(behind.duration().as_nanos() as i128),
        None => 0,
    };
    let ms = i128::from(clock.boot_ms) + (since_first + 500_000).div_euclid(1_000_000);
    ms.clamp(0, i128::from(i64::MAX)) as i64
}

/// What the messages of a batch say about their gateways' clocks: the
/// anchors as the statement's arrays, in key order with the earliest of a
/// boot first (the one kept), and the gateways whose messages have a clock
/// entry (the records waiting for an anchor are looked for there).
#[derive(Default)]
struct Clocks<'a> {
    gateway: Vec<&'a str>,
    boot_id: Vec<&'a [u8]>,
    ts: Vec<String>,
    boot_ms: Vec<i64>,
    gateways: Vec<&'a str>,
}

impl<'a> Clocks<'a> {
    fn new(items: &'a [Item]) -> Clocks<'a> {
        let mut anchors = Vec::new();
        let mut clocks = Clocks::default();
        for m in items.iter().filter_map(|item| item.opened.as_ref().ok()) {
            let Some(clock) = &m.clock else { continue };
            clocks.gateways.push(m.gateway.as_str());
            if clock.synced {
                anchors.push((m.gateway.as_str(), &clock.boot[..], clock.t0, clock.boot_ms));
            }
        }
        clocks.gateways.sort_unstable();
        clocks.gateways.dedup();
        anchors.sort();
        for (gateway, boot, t0, boot_ms) in anchors {
            clocks.gateway.push(gateway);
            clocks.boot_id.push(boot);
            clocks.ts.push(crate::record::format_ts(t0));
            clocks
                .boot_ms
                .push(i64::try_from(boot_ms).unwrap_or(i64::MAX));
        }
        clocks
    }
}

impl PgSink {
    /// Connects (over TLS with `ca_file`'s CAs when given), sets the schema
    /// up or checks its version, and prepares the statements.
    pub async fn connect(
        url: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<PgSink, SinkError> {
        let config: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| SinkError::Url {
                    detail: e.to_string(),
                })?;
        // The connection runs in a task of its own until the client is
        // dropped or the server goes away (then the client is closed).
        let mut client = match ca_file {
            None => {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| classify(url, &e))?;
                tokio::spawn(connection);
                client
            }
            Some(path) => {
                let (client, connection) = config
                    .connect(tls_connector(path)?)
                    .await
                    .map_err(|e| classify(url, &e))?;
                tokio::spawn(connection);
                client
            }
        };
        migrate(&mut client, url).await?;
        let prepare = async |sql: &str| client.prepare(sql).await.map_err(|e| classify(url, &e));
        let skipping = |sql: &str| format!("{sql}\nON CONFLICT DO NOTHING");
        let insert_new_records = prepare(INSERT_NEW_RECORDS).await?;
        let insert_records = prepare(&skipping(INSERT_NEW_RECORDS)).await?;
        let insert_new_clocked_records = prepare(INSERT_NEW_CLOCKED_RECORDS).await?;
        let insert_clocked_records = prepare(&skipping(INSERT_NEW_CLOCKED_RECORDS)).await?;
        let insert_conflicts = prepare(INSERT_CONFLICTS).await?;
        let insert_declared = prepare(INSERT_DECLARED).await?;
        let insert_rejected = prepare(INSERT_REJECTED).await?;
        let lock_gateways = prepare(LOCK_GATEWAYS).await?;
        let insert_anchors = prepare(INSERT_ANCHORS).await?;
        let correct_records = prepare(CORRECT_RECORDS).await?;
        Ok(PgSink {
            client,
            url: url.to_string(),
            insert_new_records,
            insert_records,
            insert_new_clocked_records,
            insert_clocked_records,
            insert_conflicts,
            insert_declared,
            insert_rejected,
            lock_gateways,
            insert_anchors,
            correct_records,
        })
    }

    /// Whether the connection is gone (connect again).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Stores a batch of messages in one transaction: the records of
    /// those that opened, their gap notices and anchors, and those that did
    /// not open as rejected; then corrects the records of the batch's
    /// gateways that were waiting for an anchor and have one now.
    pub async fn store(&mut self, items: &[Item]) -> Result<Stored, SinkError> {
        match self.store_as(items, false).await? {
            Some(stored) => Ok(stored),
            // A key of the batch is there already: a redelivery, or a
            // conflict.
            None => Ok(self
                .store_as(items, true)
                .await?
                .expect("the insert skips the keys already there")),
        }
    }

    /// [`store`](Self::store), the records inserted as new (`None` when a
    /// key is already there: nothing is stored), or skipping the keys
    /// already there (`existing`).
    async fn store_as(
        &mut self,
        items: &[Item],
        existing: bool,
    ) -> Result<Option<Stored>, SinkError> {
        let url = self.url.as_str();
        let fail = |e: tokio_postgres::Error| classify(url, &e);
        // Each statement sees what other consumers committed before it
        // (the conflicts, the records to correct), whatever the database's
        // default isolation.
        let tx = self
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(fail)?;
        let clocks = Clocks::new(items);
        if !clocks.gateways.is_empty() {
            tx.execute(&self.lock_gateways, &[&clocks.gateways, &CLOCK_LOCK])
                .await
                .map_err(fail)?;
        }
        let mut stored = Stored::default();
        for item in items {
            match &item.opened {
                Err(reason) => {
                    tx.execute(
                        &self.insert_rejected,
                        &[&item.topic, reason, &&item.payload[..]],
                    )
                    .await
                    .map_err(fail)?;
                    stored.rejected += 1;
                }
                Ok(m) => {
                    if let Some(d) = &m.declared {
                        let n = tx
                            .execute(
                                &self.insert_declared,
                                &[
                                    &m.gateway,
                                    &m.sensor,
                                    &m.epoch,
                                    &seq(m.first_seq),
                                    &seq(m.last_seq),
                                    &d.cause,
                                    &seq(d.lost),
                                    &d.exact,
                                ],
                            )
                            .await
                            .map_err(fail)?;
                        stored.declared += n;
                    }
                }
            }
        }
        if !clocks.ts.is_empty() {
            tx.execute(
                &self.insert_anchors,
                &[
                    &clocks.gateway,
                    &clocks.boot_id,
                    &clocks.ts,
                    &clocks.boot_ms,
                ],
            )
            .await
            .map_err(fail)?;
        }
        let rows = Rows::new(items);
        if rows.len() > 0 {
            let mut arrays: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
                &rows.gateway,
                &rows.sensor,
                &rows.epoch,
                &rows.seq,
                &rows.ts,
                &rows.fields,
            ];
            let (insert_new, insert) = if rows.unsynced == 0 {
                (&self.insert_new_records, &self.insert_records)
            } else {
                arrays.push(&rows.boot_id);
                arrays.push(&rows.boot_ms);
                (
                    &self.insert_new_clocked_records,
                    &self.insert_clocked_records,
                )
            };
            if !existing {
                match tx.execute(insert_new, &arrays).await {
                    Ok(n) => stored.inserted = n,
                    Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                        tx.rollback().await.map_err(fail)?;
                        return Ok(None);
                    }
                    Err(e) => return Err(fail(e)),
                }
            } else {
                stored.inserted = tx.execute(insert, &arrays).await.map_err(fail)?;
                let mut conflicts = 0;
                if stored.inserted < rows.len() {
                    // The records' own arrays, not the clock's.
                    let mut params = arrays[..6].to_vec();
                    params.push(&rows.topic);
                    for row in tx
                        .query(&self.insert_conflicts, &params)
                        .await
                        .map_err(fail)?
                    {
                        *stored.conflicts.entry(row.get(0)).or_default() += 1;
                        conflicts += 1;
                    }
                }
                stored.duplicates = rows.len() - stored.inserted - conflicts;
            }
        }
        if !clocks.gateways.is_empty() {
            stored.corrected = tx
                .execute(&self.correct_records, &[&clocks.gateways])
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
        Ok(Some(stored))
    }

    /// Keeps a message the database refused, with why, in a transaction
    /// of its own.
    async fn reject(&mut self, item: &Item, reason: &str) -> Result<(), SinkError> {
        self.client
            .execute(
                &self.insert_rejected,
                &[&item.topic, &reason, &&item.payload[..]],
            )
            .await
            .map_err(|e| classify(&self.url, &e))?;
        Ok(())
    }
}

/// Totals since the consumer started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub messages: u64,
    pub inserted: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub declared: u64,
    pub rejected: u64,
    pub corrected: u64,
}

impl Totals {
    fn add(&mut self, messages: usize, s: &Stored) {
        self.messages += messages as u64;
        self.inserted += s.inserted;
        self.duplicates += s.duplicates;
        self.conflicts += s.conflicts.values().sum::<u64>();
        self.declared += s.declared;
        self.rejected += s.rejected;
        self.corrected += s.corrected;
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stored {} messages: {} records inserted, {} duplicates, {} conflicts, {} gap notices, {} rejected, {} times corrected",
            self.messages,
            self.inserted,
            self.duplicates,
            self.conflicts,
            self.declared,
            self.rejected,
            self.corrected
        )
    }
}

/// A batch for the writer, and where to say it was taken.
struct Job {
    items: Vec<Item>,
    done: tokio::sync::oneshot::Sender<Result<bool, ConsumerError>>,
}

/// The consumer's handler for `[sink] postgres`. It opens each batch of
/// messages where the consumer reads them, and hands it to a writer task
/// that stores it in one transaction, waiting for the database as long as
/// it takes (the batch is not acknowledged meanwhile, and the broker holds
/// the rest). So the next batch is verified and decrypted while the last
/// one is written.
pub struct PgHandler<'o> {
    opener: &'o mut crate::seal::Opener,
    jobs: tokio::sync::mpsc::Sender<Job>,
    writer: tokio::task::JoinHandle<Totals>,
}

/// The writer task's state.
struct Writer {
    url: String,
    ca_file: Option<PathBuf>,
    sink: Option<PgSink>,
    totals: Totals,
}

/// The longest wait between two tries to reach the database.
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

impl<'o> PgHandler<'o> {
    /// Connects at once, so that a wrong URL, CA file or schema version is
    /// an error at start rather than at the first message. The writer
    /// stops waiting for the database when `stop` is cancelled.
    pub async fn connect(
        url: &str,
        ca_file: Option<PathBuf>,
        opener: &'o mut crate::seal::Opener,
        stop: CancellationToken,
    ) -> Result<PgHandler<'o>, SinkError> {
        let sink = PgSink::connect(url, ca_file.as_deref()).await?;
        eprintln!(
            "sensorgate: storing into PostgreSQL at {} (schema version {SCHEMA_VERSION})",
            redacted(url)
        );
        let writer = Writer {
            url: url.to_string(),
            ca_file,
            sink: Some(sink),
            totals: Totals::default(),
        };
        // One batch written, one waiting: the consumer bounds the rest.
        let (jobs, queue) = tokio::sync::mpsc::channel(1);
        Ok(PgHandler {
            opener,
            jobs,
            writer: tokio::spawn(writer.run(queue, stop)),
        })
    }

    /// Waits for the writer to end (after the batches handed to it), and
    /// returns the totals.
    pub async fn finish(self) -> Totals {
        drop(self.jobs);
        self.writer.await.unwrap_or_default()
    }
}

impl Writer {
    async fn run(
        mut self,
        mut jobs: tokio::sync::mpsc::Receiver<Job>,
        stop: CancellationToken,
    ) -> Totals {
        while let Some(job) = jobs.recv().await {
            let result = self.store_waiting(&job.items, &stop).await;
            let fatal = result.is_err();
            let _ = job.done.send(result.map_err(ConsumerError::from));
            if fatal {
                break;
            }
        }
        self.totals
    }

    /// Stores `items`, waiting for the database while it is away: `Ok(false)`
    /// when stopped before that.
    async fn store_waiting(
        &mut self,
        items: &[Item],
        stop: &CancellationToken,
    ) -> Result<bool, SinkError> {
        let mut wait = std::time::Duration::from_millis(100);
        let mut waiting_since = None;
        loop {
            match self.try_store(items).await {
                Ok(stored) => {
                    if let Some(since) = waiting_since.map(|t: std::time::Instant| t.elapsed()) {
                        eprintln!(
                            "sensorgate: PostgreSQL is back after {}; storing again",
                            humantime::format_duration(std::time::Duration::from_secs(
                                since.as_secs()
                            ))
                        );
                    }
                    for (topic, n) in &stored.conflicts {
                        eprintln!(
                            "sensorgate: {n} records on topic {topic} conflict with those stored under the same sequence numbers; kept in sensorgate_conflicts"
                        );
                    }
                    if stored.corrected > 0 {
                        eprintln!(
                            "sensorgate: corrected the times of {} records stamped before their gateway's clock was synchronised, from their boot's anchor (the times as stamped are in ts_stamped)",
                            stored.corrected
                        );
                    }
                    self.totals.add(items.len(), &stored);
                    return Ok(true);
                }
                Err(e) if e.is_transient() => {
                    if waiting_since.is_none() {
                        eprintln!(
                            "sensorgate: {e}; waiting for it, the messages stay unacknowledged"
                        );
                        waiting_since = Some(std::time::Instant::now());
                    }
                    self.sink = None;
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try: connect if needed, then store the batch. When the database
    /// refuses the data of a message (a timestamp or a text it cannot
    /// hold), the batch is stored message by message, and that one is kept
    /// as rejected with its reason.
    async fn try_store(&mut self, items: &[Item]) -> Result<Stored, SinkError> {
        if self.sink.as_ref().is_none_or(PgSink::is_closed) {
            self.sink = Some(PgSink::connect(&self.url, self.ca_file.as_deref()).await?);
        }
        let sink = self.sink.as_mut().expect("connected just above");
        match sink.store(items).await {
            Err(SinkError::Data { .. }) if items.len() > 1 => {}
            Err(SinkError::Data { detail }) => {
                let reason = format!("the database refused its records: {detail}");
                eprintln!(
                    "sensorgate: rejected the message on topic {}: {reason}",
                    items[0].topic
                );
                sink.reject(&items[0], &reason).await?;
                return Ok(Stored {
                    rejected: 1,
                    ..Stored::default()
                });
            }
            stored => return stored,
        }
        let mut total = Stored::default();
        for item in items.chunks(1) {
            let stored = Box::pin(self.try_store(item)).await?;
            total.merge(stored);
        }
        Ok(total)
    }
}

impl crate::consumer::Handler for PgHandler<'_> {
    async fn handle(
        &mut self,
        batch: Vec<Delivery>,
        stop: &CancellationToken,
    ) -> Result<Taken, ConsumerError> {
        let items = batch
            .into_iter()
            .map(|d| {
                let opened = self.opener.open_untracked(&d.payload).map_err(|e| {
                    eprintln!("sensorgate: rejected the message on topic {}: {e}", d.topic);
                    e.to_string()
                });
                Item {
                    topic: d.topic,
                    payload: d.payload,
                    opened,
                }
            })
            .collect();
        let (done, taken) = tokio::sync::oneshot::channel();
        tokio::select! {
            sent = self.jobs.send(Job { items, done }) => match sent {
                Ok(()) => Ok(Taken::Later(taken)),
                // The writer ended: an error it met was reported with the
                // batch before.
                Err(_) => Ok(Taken::Stopped),
            },
            _ = stop.cancelled() => Ok(Taken::Stopped),
        }
    }
}

/// A sequence number as PostgreSQL's bigint: they never come near 2^63.
fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Sets the schema up in an empty database, or checks its version and
/// migrates it from an older one, in one transaction.
async fn migrate(client: &mut Client, url: &str) -> Result<(), SinkError> {
    let fail = |e: tokio_postgres::Error| classify(url, &e);
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail)?;
    let exists: bool = tx
        .query_one("SELECT to_regclass('sensorgate_schema') IS NOT NULL", &[])
        .await
        .map_err(fail)?
        .get(0);
    let found = if exists {
        let found: Option<i32> = tx
            .query_opt("SELECT max(version) FROM sensorgate_schema", &[])
            .await
            .map_err(fail)?
            .and_then(|row| row.get(0));
        match found {
            Some(version @ 1..=SCHEMA_VERSION) => version,
            found => {
                return Err(SinkError::SchemaVersion {
                    url: redacted(url),
                    found: found.unwrap_or(0),
                });
            }
        }
    } else {
        tx.batch_execute(SCHEMA_1).await.map_err(fail)?;
        1
    };
    for step in &MIGRATIONS[found as usize - 1..] {
        tx.batch_execute(step).await.map_err(fail)?;
    }
    tx.commit().await.map_err(fail)?;
    if exists && found < SCHEMA_VERSION {
        eprintln!(
            "sensorgate: migrated the schema in PostgreSQL at {} from version {found} to {SCHEMA_VERSION}",
            redacted(url)
        );
    }
    Ok(())
}

/// TLS to the database, its certificate checked against `ca_file` and the
/// URL's host name; *ring* as for the uplink.
fn tls_connector(
    path: &std::path::Path,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, SinkError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let fail = |detail: String| SinkError::CaFile {
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("postgresql://ingest:s3cret@db.example:5432/fleet?sslmode=require"),
            "postgresql://ingest:***@db.example:5432/fleet?sslmode=require"
        );
        assert_eq!(
            redacted("postgresql://ingest@db.example/fleet"),
            "postgresql://ingest@db.example/fleet"
        );
        assert_eq!(redacted("host=db user=x"), "host=db user=x");
    }
}
