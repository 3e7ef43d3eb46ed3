//! Starts the stages, wires them with bounded channels, and stops them in
//! order: stop reading, flush batches, seal, drain the spool to the broker
//! within `drain_timeout`, record the sequence counters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::batch::Batcher;
use crate::config;
use crate::config::Config;
use crate::health::{Health, Stage};
use crate::metrics::{self, Metrics, QueueDepth};
use crate::modbus::poller::BusSource;
use crate::notify::{self, Notifier};
use crate::record::{FieldPool, Record};
use crate::seal::{self, KeyError, SealedMessage, Sealer};
use crate::serial::{OpenError, SensorSource};
use crate::spool::disk::DiskError;
use crate::spool::sequences::{StateDir, StateError};
use crate::spool::{Fsync, Spool, SpoolSettings};
use crate::telemetry::{self, RateLimits, Snapshot, Stats};
use crate::uplink::{self, UplinkSettings, tls::TlsError};

/// Batches waiting to be sealed. Small on purpose: what sits in the
/// channel when the process dies is lost, so it (with `max_records`)
/// bounds what a crash can cost, and the spool behind it is fast.
pub const BATCH_CHANNEL: usize = 4;

/// The most records of one sensor that can be read but not yet in the
/// spool: its open batch (or the full one its reader is handing over),
/// the batches waiting to be sealed and the one being sealed and stored.
/// A crash (or SIGKILL) loses at most these, plus the undecoded bytes in
/// the serial read buffer ([`crate::serial::READ_BUFFER`]); the next
/// start reports the range.
pub fn records_in_flight_bound(max_records: usize) -> usize {
    (BATCH_CHANNEL + 2) * max_records
}

/// The most sealed messages that can be on their way to the spool when it
/// refuses data and a stop comes: the batches in the channel, the one
/// being sealed, and per sensor its open batch, the full one it is handing
/// over and what its read buffer still decodes into. A stop must store
/// them: the spool keeps room for that many of its largest message
/// ([`SpoolSettings::stop_reserve`]).
pub fn messages_in_flight_bound(sensors: usize) -> u64 {
    (BATCH_CHANNEL + 1 + 3 * sensors) as u64
}

/// Why the pipeline could not start. Runtime faults are never errors: they
/// are logged, counted and survived.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Spool(#[from] DiskError),
    #[error(transparent)]
    Device(#[from] OpenError),
    #[error("cannot start the seal stage's thread: {0}")]
    Thread(std::io::Error),
}

impl StartError {
    /// The sysexits code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::State(_) | StartError::Spool(_) => 73,
            StartError::Device(e) => e.exit_code(),
            StartError::Key(e) => e.exit_code(),
            StartError::Tls(e) => e.exit_code(),
            StartError::Thread(_) => 71,
        }
    }
}

/// How long a stop waits, after `drain_timeout`, for the readers and the
/// seal stage to hand over what they hold once the closed spool no longer
/// blocks: they only seal and store (or count) what was already read.
const INTAKE_GRACE: Duration = Duration::from_secs(10);

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// The final counters.
    pub stats: Snapshot,
    /// Records read before the stop that could be neither stored nor sent
    /// (the spool was full and the broker away): each range was logged.
    pub records_lost: u64,
    /// The readers did not hand over what they held in time: the next
    /// start reports the range that may be lost.
    pub readers_aborted: bool,
}

impl Stopped {
    /// 0 for a stop that lost nothing; EX_IOERR (74) when records read
    /// before it were (or may have been) lost, so that systemd marks the
    /// stop failed.
    pub fn exit_code(&self) -> u8 {
        if self.records_lost > 0 || self.readers_aborted {
            74
        } else {
            0
        }
    }
}

/// Runs until `stop` is cancelled, then shuts down in order.
pub async fn run(
    cfg: Config,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Result<Stopped, StartError> {
    let state = StateDir::open(&cfg.gateway.state_dir)?;
    let key = seal::load_gateway_key(&cfg.seal.signing_key)?;
    let recipient = seal::load_public_key(&cfg.seal.recipient_key)?;
    info!(gateway = %cfg.gateway.id, kid = %key.kid(), recipient_kid = %recipient.kid(),
        epoch = %state.epoch(), "sealing keys loaded");
    let sealer = Sealer::new(
        &cfg.gateway.id,
        state.epoch(),
        key,
        recipient,
        &cfg.seal.encrypt,
    )
    .with_options(seal::SealerOptions {
        rotate_after_messages: cfg.seal.rotate_after_messages,
        rotate_after: cfg.seal.rotate_after,
        format: if cfg.seal.format == 1 {
            seal::WireFormat::V1
        } else {
            seal::WireFormat::V2
        },
    });
    let tls = if cfg.mqtt.tls {
        let config = uplink::tls::load_client_config(&cfg.mqtt)?;
        record_cert_expiry(&cfg.mqtt, &stats);
        Some(config)
    } else {
        warn!(broker = %UplinkSettings::new(&cfg).broker(),
            "TLS IS OFF (mqtt.tls = false): messages and the client identity travel in plaintext; \
             the payloads are still signed and the selected fields encrypted");
        None
    };

    let (spool, recovery) = Spool::open(spool_settings(&cfg), stats.clone())?;
    let spool = Arc::new(spool);
    let health = Arc::new(Health::new());
    spool.watch(&health);
    let notifier = Notifier::from_env();
    if recovery.messages > 0 {
        info!(
            messages = recovery.messages,
            bytes = recovery.bytes,
            segments = recovery.segments,
            "messages from before the stop wait in the spool; they are sent first"
        );
    }
    // Every range known to be lost (or possibly lost) is logged here and
    // said in band too: a signed gap notice per range, sent ahead of the
    // new records (docs/FORMAT.md, "Gap notices").
    let mut notices: Vec<seal::GapNotice> = recovery
        .seq_losses
        .iter()
        .map(|loss| seal::GapNotice {
            sensor: Arc::clone(&loss.sensor),
            first: loss.first_seq,
            last: loss.last_seq,
            lost: loss.records,
            exact: loss.exact,
            cause: seal::GapCause::SpoolDamage,
        })
        .collect();
    if let Some(reserved) = state.unclean_previous_run() {
        notices.extend(report_unclean_stop(reserved, &recovery.last_seq));
    } else if let (Some(next), Some(intact)) =
        (state.clean_previous_run(), &recovery.intact_after_loss)
    {
        notices.extend(report_damage_beyond_spool(
            next,
            &recovery.last_seq,
            intact,
            &stats,
        ));
    }
    let clock_check = crate::clock::SyncCheck::new(&cfg.time);
    let clock = crate::clock::start(&clock_check, &stats);
    let stop_reading = CancellationToken::new();
    let abort = CancellationToken::new();
    let (batch_tx, batch_rx) = mpsc::channel::<Vec<Record>>(BATCH_CHANNEL);

    // Streaming sensors are read each by its own task; Modbus slaves are
    // polled by one task per bus (the sensors that name one device).
    let streamed: Vec<&config::Sensor> = cfg
        .sensor
        .iter()
        .filter(|s| s.framing != config::Framing::ModbusRtu)
        .collect();
    let sensors: Vec<SensorSource> = streamed.iter().map(|s| SensorSource::new(s)).collect();
    for source in &sensors {
        source.check_required()?;
    }
    let buses = BusSource::group(&cfg.sensor);
    for bus in &buses {
        bus.check_required(&cfg.sensor)?;
    }
    let counters: Vec<_> = sensors
        .iter()
        .map(|s| s.counters().clone())
        .chain(buses.iter().flat_map(|b| b.counters().cloned()))
        .collect();
    let fields = FieldPool::default();
    let mut sealing = spawn_seal_stage(
        sealer,
        notices,
        Batches {
            rx: batch_rx,
            spent: fields.clone(),
        },
        publish_limit(&cfg),
        spool.clone(),
        stats.clone(),
        health.stage("seal"),
    )
    .map_err(StartError::Thread)?;
    let mut sources = JoinSet::new();
    let batcher = || {
        Batcher::new(cfg.batch.max_records, cfg.batch.linger)
            .recycling(fields.clone())
            .clocked(clock.clone())
    };
    for (source, sensor) in sensors.into_iter().zip(&streamed) {
        let read = source.run(
            state.allocator(&sensor.name),
            batcher(),
            batch_tx.clone(),
            stats.clone(),
            stop_reading.clone(),
        );
        sources.spawn(async move { vec![read.await] });
    }
    for bus in buses {
        let seqs = bus.names().map(|n| state.allocator(n)).collect();
        let batchers = bus.names().map(|_| batcher()).collect();
        sources.spawn(bus.run(
            seqs,
            batchers,
            batch_tx.clone(),
            stats.clone(),
            stop_reading.clone(),
        ));
    }
    let queues = vec![queue_depth("batches".to_string(), &batch_tx)];
    drop(batch_tx);
    let (tls_tx, tls_rx) = tokio::sync::watch::channel(tls);
    let (clock_tx, clock_rx) = tokio::sync::watch::channel(clock.synced());
    let reload_task = tokio::spawn(reload_tls_on_sighup(
        cfg.mqtt.clone(),
        tls_tx,
        notifier.clone(),
        stats.clone(),
        abort.clone(),
    ));
    let expiry_task = tokio::spawn(warn_of_certificate_expiry(
        cfg.mqtt.clone(),
        clock_rx.clone(),
        abort.clone(),
    ));
    let mut uplink = tokio::spawn(uplink::run(
        UplinkSettings::new(&cfg),
        tls_rx,
        clock_rx,
        spool.clone(),
        stats.clone(),
        abort.clone(),
    ));
    let clock_task = tokio::spawn(crate::clock::watch(
        clock.clone(),
        clock_check,
        stats.clone(),
        clock_tx,
        abort.clone(),
    ));
    let sync_task = tokio::spawn(sync_loop(
        spool.clone(),
        cfg.buffer.fsync_interval,
        abort.clone(),
    ));
    let stats_task = tokio::spawn(telemetry::stats_loop(
        stats.clone(),
        counters.clone(),
        cfg.log.stats_interval,
        abort.clone(),
        {
            let spool = spool.clone();
            move || spool.refresh_age()
        },
    ));
    // Metrics are optional: a port already taken is logged, not fatal.
    let metrics_server = cfg.metrics.listen_addr().and_then(|addr| {
        let m = Arc::new(Metrics::new(stats.clone(), counters.clone(), queues));
        metrics::serve(addr, m)
            .inspect_err(|e| {
                error!(listen = %addr, error = %e, error_kind = telemetry::error_kind(e),
                    "cannot serve metrics; running without them")
            })
            .ok()
    });
    info!(sensors = cfg.sensor.len(), broker = %UplinkSettings::new(&cfg).broker(), "started");
    // Ready: every stage runs. Not "connected": starting offline is normal,
    // the spool holds the data until the broker is back.
    let supervisor = tokio::spawn(notify::supervise(
        notifier.clone(),
        health,
        stats.clone(),
        counters.clone(),
        abort.clone(),
    ));

    stop.cancelled().await;
    info!("stopping: no more reading; sending what is queued");
    notifier.stopping(&format!(
        "stopping: sending {} queued messages (at most {})",
        stats.snapshot().spool_messages,
        humantime::format_duration(cfg.mqtt.drain_timeout)
    ));
    stop_reading.cancel();
    // Everything below is bounded by drain_timeout as a whole: with the
    // broker gone and `when_full = "block"`, the stages would wait forever.
    let deadline = tokio::time::Instant::now() + cfg.mqtt.drain_timeout;
    // First the intake: what was read is sealed and in the spool.
    let (intake_in_time, intake_done, sequences_closed) = {
        let intake = async {
            let mut sequences_closed = true;
            while let Some(done) = sources.join_next().await {
                match done {
                    Ok(seqs) => {
                        for seq in seqs {
                            if let Err(e) = seq.close() {
                                sequences_closed = false;
                                error!(error = %e, error_kind = telemetry::error_kind(&e),
                                    "cannot record sequence counters; the next run skips ahead");
                            }
                        }
                    }
                    Err(e) => {
                        sequences_closed = false;
                        error!(error = %e, "serial source task failed");
                    }
                }
            }
            if (&mut sealing).await.is_err() {
                error!("the seal stage's thread failed");
            }
            sequences_closed
        };
        tokio::pin!(intake);
        let in_time = tokio::time::timeout_at(deadline, &mut intake).await;
        // Closing also ends a push still waiting for room (`block` with
        // the broker gone): what is left is stored in the filesystem's
        // reserve if it fits, and counted and reported by range if not.
        spool.close();
        match in_time {
            Ok(closed) => (true, true, closed),
            Err(_) => match tokio::time::timeout(INTAKE_GRACE, &mut intake).await {
                Ok(closed) => (false, true, closed),
                Err(_) => (false, false, false),
            },
        }
    };
    // Then the upload: the uplink returns by itself once the closed spool
    // is empty.
    let drained = intake_in_time && tokio::time::timeout_at(deadline, &mut uplink).await.is_ok();
    abort.cancel();
    if !intake_done {
        error!(grace = ?INTAKE_GRACE,
            "the serial readers did not stop in time; what they still held is lost and the next start reports its range");
        sources.abort_all();
    }
    if !drained {
        let (messages, bytes) = spool.backlog();
        info!(
            messages,
            bytes,
            "the broker did not take everything before drain_timeout; the rest stays in the spool for the next start"
        );
        let _ = uplink.await;
    }
    let _ = sync_task.await;
    let _ = clock_task.await;
    let _ = reload_task.await;
    let _ = expiry_task.await;
    let _ = supervisor.await;
    drop(metrics_server);
    {
        let spool = spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.finish()).await;
    }
    let lost = spool.lost_at_stop();
    for (sensor, r) in lost.iter() {
        error!(sensor = %sensor, seq_first = r.first_seq, seq_last = r.last_seq, records = r.records,
            error_kind = "spool_full",
            "records read before the stop were lost: the spool was full and the broker did not take them in time");
    }
    if intake_done && sequences_closed {
        // Every allocator was closed with its exact next number, and every
        // record read is in the spool or reported lost above.
        if let Err(e) = state.mark_clean() {
            error!(error = %e, error_kind = telemetry::error_kind(&e), "cannot record the clean stop");
        }
    }
    let _ = stats_task.await;
    spool.refresh_age();
    let last = stats.snapshot();
    telemetry::log_stats(&last);
    for sensor in &counters {
        telemetry::log_sensor(sensor);
    }
    info!("stopped");
    Ok(Stopped {
        stats: last,
        records_lost: lost.records(),
        readers_aborted: !intake_done,
    })
}

/// Keeps the client certificate's end date for the metrics.
fn record_cert_expiry(mqtt: &config::Mqtt, stats: &Stats) {
    let t = uplink::tls::not_after(mqtt).unwrap_or(0);
    Stats::set(&stats.client_cert_not_after, u64::try_from(t).unwrap_or(0));
}

/// The depth of a channel for the metrics, without keeping it open.
fn queue_depth<T: Send + 'static>(stage: String, tx: &mpsc::Sender<T>) -> QueueDepth {
    let weak = tx.downgrade();
    QueueDepth {
        stage,
        depth: Box::new(move || {
            weak.upgrade()
                .map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as u64)
        }),
    }
}

/// The spool settings from `[gateway]` and `[buffer]`.
pub fn spool_settings(cfg: &Config) -> SpoolSettings {
    SpoolSettings {
        dir: cfg.gateway.state_dir.join("spool"),
        memory: cfg.buffer.memory,
        disk: cfg.buffer.disk,
        when_full: cfg.buffer.when_full,
        durability: cfg.buffer.durability,
        spill_after: cfg.buffer.spill_after,
        fsync: match cfg.buffer.fsync {
            config::Fsync::Always => Fsync::Always,
            config::Fsync::Interval => Fsync::Interval,
            config::Fsync::Never => Fsync::Never,
        },
        min_free: cfg.buffer.min_free.fraction(),
        stop_reserve: stop_reserve(cfg.sensor.len()),
    }
}

#[cfg(not(feature = "fault-injection"))]
fn stop_reserve(sensors: usize) -> u64 {
    messages_in_flight_bound(sensors)
}

/// `SENSORGATE_FAULT=no-stop-reserve` keeps no room for a stop, so that
/// the tests can see a stop with nowhere to store what it read.
#[cfg(feature = "fault-injection")]
fn stop_reserve(sensors: usize) -> u64 {
    if std::env::var("SENSORGATE_FAULT").is_ok_and(|f| f == "no-stop-reserve") {
        0
    } else {
        messages_in_flight_bound(sensors)
    }
}

/// After a crash or power cut: says which sequence numbers may have been
/// read but lost before they reached the spool (still in a batch, or in
/// the `fsync` window).
fn report_unclean_stop(
    reserved: &std::collections::BTreeMap<String, u64>,
    spooled: &std::collections::BTreeMap<String, u64>,
) -> Vec<seal::GapNotice> {
    let mut notices = Vec::new();
    for (sensor, &next) in reserved {
        let first_maybe_lost = spooled.get(sensor).map_or(0, |s| s + 1);
        if next > first_maybe_lost {
            warn!(sensor = %sensor, seq_first = first_maybe_lost, seq_last = next - 1,
                at_most = next - first_maybe_lost,
                "the last run did not stop cleanly: records in this range may have been read and lost before reaching the spool (some numbers may never have been used)");
            notices.push(seal::GapNotice {
                sensor: Arc::from(sensor.as_str()),
                first: first_maybe_lost,
                last: next - 1,
                lost: next - first_maybe_lost,
                exact: false,
                cause: seal::GapCause::UncleanStop,
            });
        }
    }
    notices
}

/// After spool damage that left no intact message of a sensor after it
/// (a lost segment at the end, say): the spool cannot tell what that
/// sensor lost, but the sequence state of a clean stop can. Every number
/// it handed out above the last one accounted for was in the damaged
/// part (or never sealed: an upper bound).
fn report_damage_beyond_spool(
    next: &std::collections::BTreeMap<String, u64>,
    spooled: &std::collections::BTreeMap<String, u64>,
    intact_after: &std::collections::BTreeSet<String>,
    stats: &Stats,
) -> Vec<seal::GapNotice> {
    let mut notices = Vec::new();
    for (sensor, &next) in next {
        if intact_after.contains(sensor) {
            continue;
        }
        let first = spooled.get(sensor).map_or(0, |s| s + 1);
        if next > first {
            Stats::add(&stats.spool_records_lost, next - first);
            error!(sensor = %sensor, seq_first = first, seq_last = next - 1, records = next - first,
                exact = false, error_kind = "corrupt",
                "records lost to spool damage; they will not be sent");
            notices.push(seal::GapNotice {
                sensor: Arc::from(sensor.as_str()),
                first,
                last: next - 1,
                lost: next - first,
                exact: false,
                cause: seal::GapCause::SpoolDamage,
            });
        }
    }
    notices
}

/// Forces the spool to disk every `interval` (the `interval` policy) and
/// records the acknowledged position.
async fn sync_loop(spool: Arc<Spool>, interval: std::time::Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let spool = spool.clone();
                let _ = tokio::task::spawn_blocking(move || spool.sync()).await;
            }
        }
    }
}

/// The largest sealed message that fits the broker's `max_packet` once
/// the MQTT header and the longest topic are added.
fn publish_limit(cfg: &Config) -> usize {
    let topic = cfg
        .sensor
        .iter()
        .map(|s| cfg.topic_for(&s.name).len())
        .max()
        .unwrap_or(0);
    // Fixed header (up to 5), topic length (2), packet id (2).
    cfg.mqtt.max_packet.saturating_sub(topic + 9)
}

/// SIGHUP reloads the CA, client certificate and key from disk; the uplink
/// reconnects with them. A reload that fails keeps the old ones.
async fn reload_tls_on_sighup(
    mqtt: config::Mqtt,
    tls: tokio::sync::watch::Sender<Option<Arc<rustls::ClientConfig>>>,
    notifier: Notifier,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP; TLS material is reloaded only by a restart");
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup.recv() => {}
        }
        if !mqtt.tls {
            info!("SIGHUP: TLS is off, nothing to reload");
            continue;
        }
        notifier.reloading();
        // A key in a token is opened again (a login: tens of milliseconds
        // on a TPM), off the runtime's threads.
        let loading = mqtt.clone();
        let loaded =
            tokio::task::spawn_blocking(move || uplink::tls::load_client_config(&loading)).await;
        let outcome = match loaded.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())) {
            Ok(config) => {
                info!(cert_file = ?mqtt.cert_file, "SIGHUP: TLS material reloaded");
                tls.send_replace(Some(config));
                record_cert_expiry(&mqtt, &stats);
                "TLS material reloaded (SIGHUP)"
            }
            Err(e) => {
                error!(error = %e, error_kind = tls_error_kind(&e),
                    "SIGHUP: cannot reload the TLS material; keeping the current one");
                "TLS reload failed (SIGHUP); the current material is kept, see the log"
            }
        };
        notifier.ready(outcome);
    }
}

/// At start and once a day: warn while the client certificate nears its
/// end (`cert_warn_days`). Dates are judged only by a synchronised clock:
/// a Pi's clock at its boot time would call a good certificate not valid
/// yet, or one that expired good. Until the clock is synchronised the
/// check waits, and runs as soon as it is.
async fn warn_of_certificate_expiry(
    mqtt: config::Mqtt,
    mut clock: uplink::ClockWatch,
    stop: CancellationToken,
) {
    if !mqtt.tls {
        return;
    }
    // The interval runs on the monotonic clock: a jump of the wall clock
    // neither skips nor repeats a check.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        while !*clock.borrow_and_update() {
            debug!("certificate dates not checked: the clock is not synchronised");
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = clock.changed() => if changed.is_err() { return },
            }
        }
        match uplink::tls::check(&mqtt) {
            Ok(report) => {
                for w in report.warnings {
                    warn!(days_left = report.days_left, error_kind = "tls", "{w}");
                }
            }
            Err(e) => {
                error!(error = %e, error_kind = tls_error_kind(&e), "client certificate check failed")
            }
        }
    }
}

/// [`telemetry::error_kind`] of a failure to load TLS material: `tls`
/// unless an I/O cause says more (`permission`, `not_found`).
fn tls_error_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    match telemetry::error_kind(e) {
        "other" | "corrupt" => "tls",
        kind => kind,
    }
}

/// Seals `records`, splitting them until each message fits `limit` bytes.
/// A single record too large on its own cannot be sent: counted and logged
/// (at most once a minute per sensor, with `suppressed=N`).
/// Fails only when the signing key's token does: then nothing is lost and
/// the caller seals the batch again later.
fn seal_fitting(
    sealer: &mut Sealer,
    records: &[Record],
    limit: usize,
    out: &mut Vec<SealedMessage>,
    stats: &Stats,
    logs: &mut RateLimits<Arc<str>>,
) -> Result<(), crate::pkcs11::TokenError> {
    match sealer.seal(records) {
        Ok(msg) if msg.bytes.len() <= limit => out.push(msg),
        Ok(msg) if records.len() > 1 => {
            debug!(sensor = %msg.sensor, records = records.len(), bytes = msg.bytes.len(), limit,
                "sealed batch larger than max_packet; splitting");
            let mid = records.len() / 2;
            seal_fitting(sealer, &records[..mid], limit, out, stats, logs)?;
            seal_fitting(sealer, &records[mid..], limit, out, stats, logs)?;
        }
        Err(seal::SealError::Sign(e)) => return Err(e),
        Ok(msg) => {
            Stats::add(&stats.seal_errors, 1);
            Stats::add(&stats.records_dropped, 1);
            if let Some(suppressed) = logs.check(msg.sensor.clone(), Instant::now()) {
                error!(sensor = %msg.sensor, seq = msg.first_seq, seq_first = msg.first_seq,
                    seq_last = msg.last_seq, bytes = msg.bytes.len(), limit, error_kind = "too_large",
                    suppressed, "a single record is larger than mqtt.max_packet once sealed; record dropped");
            }
        }
        Err(e) => {
            Stats::add(&stats.seal_errors, 1);
            if let Some(suppressed) = logs.check(records[0].sensor.clone(), Instant::now()) {
                error!(sensor = %records[0].sensor, seq_first = records[0].seq,
                    seq_last = records[records.len() - 1].seq, records = records.len(), error = %e,
                    error_kind = "seal", suppressed, "cannot seal batch; records lost");
            }
        }
    }
    Ok(())
}

/// At most one seal error line per sensor per this period.
const SEAL_LOG_PERIOD: Duration = Duration::from_secs(60);

/// The seal stage's input: the readers' batches, and where their field
/// vectors go back once sealed.
struct Batches {
    rx: mpsc::Receiver<Vec<Record>>,
    spent: FieldPool,
}

/// Starts the seal stage on a thread of its own: sealing is CPU work and
/// [`Spool::push`] blocks on the disk (and, under `block`, on room), so
/// neither belongs on the async workers. The receiver resolves when the
/// stage has stored its last batch (its input closed), or fails if the
/// thread panicked.
fn spawn_seal_stage(
    sealer: Sealer,
    notices: Vec<seal::GapNotice>,
    batches: Batches,
    limit: usize,
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    stage: Arc<Stage>,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("seal".into())
        .spawn(move || {
            seal_stage(sealer, &notices, batches, limit, &spool, &stats, &stage);
            let _ = done.send(());
        })?;
    Ok(finished)
}

/// Seals and stores the gap notices, then every batch, until every reader
/// has closed its end of `batches`.
fn seal_stage(
    mut sealer: Sealer,
    notices: &[seal::GapNotice],
    mut batches: Batches,
    limit: usize,
    spool: &Spool,
    stats: &Stats,
    stage: &Stage,
) {
    let mut key = KeyWait::new();
    declare_gaps(&mut sealer, notices, spool, &mut key, &batches, stats);
    let mut sealed = Vec::new();
    let mut logs = RateLimits::new(SEAL_LOG_PERIOD);
    while let Some(batch) = batches.rx.blocking_recv() {
        loop {
            let signed = {
                let _busy = stage.busy();
                #[cfg(feature = "fault-injection")]
                fault::maybe_hang_seal(stats);
                seal_fitting(&mut sealer, &batch, limit, &mut sealed, stats, &mut logs)
            };
            match signed {
                Ok(()) => {
                    key.back(stats);
                    break;
                }
                Err(e) => {
                    // Nothing of the batch is kept: it is sealed again whole.
                    sealed.clear();
                    if !key.wait(&e, &batches, stats) {
                        key.abandon(&batch, stats);
                        break;
                    }
                }
            }
        }
        batches.spent.give_back(batch);
        for msg in sealed.drain(..) {
            Stats::add(&stats.messages_sealed, 1);
            Stats::add(&stats.records_sealed, u64::from(msg.records));
            // False only when a stop ran out of time; the spool counted it.
            spool.push(msg);
        }
        declare_drops(&mut sealer, spool, &mut key, &batches, stats);
    }
    declare_drops(&mut sealer, spool, &mut key, &batches, stats);
}

/// The seal stage waiting for its signing key's token: the batch in hand
/// is sealed again after a pause (1 s, doubling to 30 s) while the queue
/// before the stage fills and then holds the readers back. The outage is
/// logged once when it starts and once when it ends. At a stop (the
/// readers gone) the wait ends: what is not sealed then is lost, and said.
struct KeyWait {
    since: Option<Instant>,
    backoff: crate::backoff::Backoff,
    /// Given up at a stop: later batches are not waited for.
    abandoned: bool,
}

impl KeyWait {
    fn new() -> KeyWait {
        KeyWait {
            since: None,
            backoff: crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            abandoned: false,
        }
    }

    /// After a failed signature: false when the stage should give up (a
    /// stop), else true once it has waited its turn.
    fn wait(&mut self, e: &crate::pkcs11::TokenError, batches: &Batches, stats: &Stats) -> bool {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            Stats::set(&stats.signing_key_unavailable, 1);
            error!(error = %e, error_kind = "signing_key",
                "cannot sign: sealing waits for the signing key's token; what is read meanwhile waits in the queue, and reading stops when it is full");
        } else {
            debug!(error = %e, "the signing key's token is still unavailable");
        }
        if self.abandoned || batches.rx.is_closed() {
            return false;
        }
        std::thread::sleep(self.backoff.next_delay());
        !batches.rx.is_closed()
    }

    /// After a signature that worked.
    fn back(&mut self, stats: &Stats) {
        if let Some(since) = self.since.take() {
            Stats::set(&stats.signing_key_unavailable, 0);
            info!(
                after_s = since.elapsed().as_secs_f64(),
                "signing key back; sealing resumes"
            );
            self.backoff.reset();
        }
    }

    /// The stop came while the token was away: `batch` is lost.
    fn abandon(&mut self, batch: &[Record], stats: &Stats) {
        self.abandoned = true;
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return;
        };
        Stats::add(&stats.seal_errors, 1);
        Stats::add(&stats.records_dropped, batch.len() as u64);
        error!(sensor = %first.sensor, seq_first = first.seq, seq_last = last.seq,
            records = batch.len(), error_kind = "signing_key",
            "stopping while the signing key's token is unavailable: these records were never sealed and are lost");
    }
}

/// Seals and stores a gap notice for each range (`docs/FORMAT.md`, "Gap
/// notices"), ahead of what comes next.
fn declare_gaps(
    sealer: &mut Sealer,
    notices: &[seal::GapNotice],
    spool: &Spool,
    key: &mut KeyWait,
    batches: &Batches,
    stats: &Stats,
) {
    for notice in notices {
        let sealed = loop {
            match sealer.seal_notice(notice) {
                Ok(sealed) => {
                    key.back(stats);
                    break sealed;
                }
                Err(seal::SealError::Sign(e)) if key.wait(&e, batches, stats) => continue,
                Err(e) => {
                    error!(sensor = %notice.sensor, seq_first = notice.first, seq_last = notice.last,
                        error = %e, "cannot seal the gap notice for this range; it is not declared");
                    break None;
                }
            }
        };
        match sealed {
            Some(msg) => {
                info!(sensor = %notice.sensor, seq_first = notice.first, seq_last = notice.last,
                    cause = notice.cause.as_str(), "gap notice sealed: the cloud side will see this range declared");
                spool.push(msg);
            }
            None => {
                info!(sensor = %notice.sensor, seq_first = notice.first, seq_last = notice.last,
                    "no gap notice for this range: [seal] format = 1 has none (format 2 does)");
            }
        }
    }
}

/// Declares what `drop_oldest` dropped since the last call. A notice may
/// itself need room and drop more: that is declared at the next call.
fn declare_drops(
    sealer: &mut Sealer,
    spool: &Spool,
    key: &mut KeyWait,
    batches: &Batches,
    stats: &Stats,
) {
    let dropped = spool.take_dropped();
    let notices: Vec<seal::GapNotice> = dropped
        .iter()
        .map(|(sensor, r)| seal::GapNotice {
            sensor: Arc::clone(sensor),
            first: r.first_seq,
            last: r.last_seq,
            lost: r.records,
            exact: r.records == r.last_seq - r.first_seq + 1,
            cause: seal::GapCause::SpoolFull,
        })
        .collect();
    declare_gaps(sealer, &notices, spool, key, batches, stats);
}

/// Test-only faults, switched on by `SENSORGATE_FAULT` in builds with the
/// `fault-injection` feature (scripts/test); release builds have none.
#[cfg(feature = "fault-injection")]
mod fault {
    use crate::telemetry::Stats;

    /// `SENSORGATE_FAULT=hang-seal-after:N`: once `N` records were read,
    /// the seal stage hangs in the middle of its work, as it would on a
    /// lock that is never released.
    pub fn maybe_hang_seal(stats: &Stats) {
        let Ok(spec) = std::env::var("SENSORGATE_FAULT") else {
            return;
        };
        let Some(n) = spec
            .strip_prefix("hang-seal-after:")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return;
        };
        if stats.snapshot().records_read >= n {
            tracing::warn!("fault injection: the seal stage hangs now");
            loop {
                std::thread::park();
            }
        }
    }
}
