//! Prometheus metrics (`[metrics] listen`, off by default): the same
//! counters as the stats lines, per sensor and reason, the queue depths
//! between the stages, the spool, the broker connection and the client
//! certificate's remaining life, in the Prometheus text format.
//!
//! The values are read from the live counters at each scrape (a
//! `prometheus-client` [`Collector`]), so nothing is copied or kept twice.
//! A small `tiny_http` server on its own thread answers `GET /metrics`;
//! a scrape never touches the data path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::serial::counters::SensorCounters;
use crate::serial::reject::Reject;
use crate::telemetry::Stats;

/// How many items wait in one queue between two stages now.
pub struct QueueDepth {
    pub stage: String,
    pub depth: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for QueueDepth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueDepth")
            .field("stage", &self.stage)
            .finish()
    }
}

/// Everything a scrape reports.
#[derive(Debug)]
pub struct Metrics {
    stats: Arc<Stats>,
    sensors: Vec<Arc<SensorCounters>>,
    queues: Vec<QueueDepth>,
}

impl Metrics {
    pub fn new(
        stats: Arc<Stats>,
        sensors: Vec<Arc<SensorCounters>>,
        queues: Vec<QueueDepth>,
    ) -> Metrics {
        Metrics {
            stats,
            sensors,
            queues,
        }
    }

    /// The Prometheus text exposition of every metric, now.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::with_prefix("sensorgate");
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = self.stats.snapshot();
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        {
            let mut m = e.encode_descriptor(
                "build_info",
                "Build information (always 1).",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("version", env!("CARGO_PKG_VERSION"))];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }

        // Per sensor.
        {
            let mut m = e.encode_descriptor(
                "sensor_records",
                "Records decoded from a sensor's frames.",
                None,
                MetricType::Counter,
            )?;
            for c in &self.sensors {
                let labels = [("sensor", &*c.name)];
                ConstCounter::new(c.records.load(Ordering::Relaxed))
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "sensor_rejected_frames",
                "Frames of a sensor that did not become records, by reason.",
                None,
                MetricType::Counter,
            )?;
            for c in &self.sensors {
                for r in Reject::ALL {
                    let labels = [("sensor", &*c.name), ("reason", r.as_str())];
                    ConstCounter::new(c.rejected(r)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "sensor_skipped_frames",
                "Frames that are neither readings nor errors (headers, NMEA types not decoded).",
                None,
                MetricType::Counter,
            )?;
            for c in &self.sensors {
                let labels = [("sensor", &*c.name)];
                ConstCounter::new(c.skipped.load(Ordering::Relaxed))
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "sensor_open",
                "1 while the sensor's serial device is open.",
                None,
                MetricType::Gauge,
            )?;
            for c in &self.sensors {
                let labels = [("sensor", &*c.name)];
                ConstGauge::new(i64::from(c.open.load(Ordering::Relaxed)))
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "sensor_lost",
                "Times the sensor's device was lost after being open.",
                None,
                MetricType::Counter,
            )?;
            for c in &self.sensors {
                let labels = [("sensor", &*c.name)];
                ConstCounter::new(c.lost.load(Ordering::Relaxed))
                    .encode(m.encode_family(&labels)?)?;
            }
        }

        // Between the stages.
        {
            let mut m = e.encode_descriptor(
                "queue_depth",
                "Items waiting between two stages (records per sensor, then batches).",
                None,
                MetricType::Gauge,
            )?;
            for q in &self.queues {
                let labels = [("queue", q.stage.as_str())];
                ConstGauge::new(g((q.depth)())).encode(m.encode_family(&labels)?)?;
            }
        }

        // Seal, spool, uplink.
        counter(
            &mut e,
            "records_sealed",
            "Records sealed into messages.",
            s.records_sealed,
        )?;
        counter(
            &mut e,
            "messages_sealed",
            "Sealed messages made.",
            s.messages_sealed,
        )?;
        counter(
            &mut e,
            "seal_errors",
            "Batches that could not be sealed.",
            s.seal_errors,
        )?;
        counter(
            &mut e,
            "records_dropped",
            "Records dropped by the spool's drop_oldest policy.",
            s.records_dropped,
        )?;
        gauge(
            &mut e,
            "spool_messages",
            "Sealed messages not yet acknowledged.",
            g(s.spool_messages),
        )?;
        gauge(
            &mut e,
            "spool_bytes",
            "Bytes of the spool on disk.",
            g(s.spool_bytes),
        )?;
        gauge(
            &mut e,
            "spool_memory_bytes",
            "Memory the queued messages take, their bookkeeping included (counted against [buffer] memory).",
            g(s.spool_memory_bytes),
        )?;
        gauge(
            &mut e,
            "signing_key_unavailable",
            "1 while the signing key's token fails: sealing waits for it, the queue holds what is read meanwhile.",
            g(s.signing_key_unavailable),
        )?;
        gauge(
            &mut e,
            "clock_unsynchronized",
            "1 while the wall clock is not synchronised: records are stamped so, and corrected on the cloud side later.",
            g(s.clock_unsynchronized),
        )?;
        gauge(
            &mut e,
            "spool_memory_only_messages",
            "Sealed messages held only in memory, not acknowledged yet: what a crash or power cut would lose now.",
            g(s.spool_memory_only_messages),
        )?;
        let (writes, bytes) = crate::telemetry::storage::counts();
        counter(
            &mut e,
            "storage_writes",
            "Writes to storage by the spool and the state files (file writes, fsyncs, renames, unlinks).",
            writes,
        )?;
        counter(
            &mut e,
            "storage_bytes_written",
            "Bytes written to storage by the spool and the state files.",
            bytes,
        )?;
        gauge(
            &mut e,
            "spool_oldest_age_seconds",
            "Age of the oldest unacknowledged message.",
            g(s.spool_oldest_age_s),
        )?;
        counter(
            &mut e,
            "spool_corrupt_entries",
            "Spool entries found damaged and skipped.",
            s.spool_corrupt_entries,
        )?;
        counter(
            &mut e,
            "spool_records_lost",
            "Records in spool messages lost to damage (each range logged).",
            s.spool_records_lost,
        )?;
        counter(
            &mut e,
            "spool_write_errors",
            "Failed writes to the spool (ENOSPC, I/O errors).",
            s.spool_write_errors,
        )?;
        gauge(
            &mut e,
            "broker_connected",
            "1 while connected to the broker.",
            g(s.broker_connected),
        )?;
        counter(
            &mut e,
            "publishes",
            "Publishes handed to the MQTT client (resends included).",
            s.messages_published,
        )?;
        counter(
            &mut e,
            "acks",
            "Messages acknowledged by the broker.",
            s.messages_acked,
        )?;
        counter(
            &mut e,
            "records_acked",
            "Records acknowledged by the broker.",
            s.records_acked,
        )?;
        counter(
            &mut e,
            "connects",
            "Successful broker connections.",
            s.connects,
        )?;
        counter(
            &mut e,
            "connect_failures",
            "Broker connections lost or refused.",
            s.connect_failures,
        )?;
        // Judged by a synchronised clock only: until then the wall clock
        // may be years off (docs/OPERATIONS.md, "Time").
        if s.client_cert_not_after > 0 && s.clock_unsynchronized == 0 {
            let now = crate::clock::wall_now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let left = s.client_cert_not_after as i64 - now as i64;
            gauge(
                &mut e,
                "client_cert_expiry_seconds",
                "Seconds until the client certificate in use expires (negative once it has).",
                left,
            )?;
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `listen` from a thread of its own until the
/// returned handle is dropped. Any other path gets 404.
pub fn serve(listen: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<Server> {
    let server = Arc::new(
        tiny_http::Server::http(listen).map_err(|e| std::io::Error::other(e.to_string()))?,
    );
    let addr = server.server_addr().to_ip().unwrap_or(listen);
    info!(listen = %addr, "metrics served at http://{addr}/metrics");
    let worker = server.clone();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in worker.incoming_requests() {
                let response =
                    if request.url() == "/metrics" || request.url().starts_with("/metrics?") {
                        let header = tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"text/plain; version=0.0.4; charset=utf-8"[..],
                        )
                        .expect("a valid static header");
                        tiny_http::Response::from_string(metrics.render()).with_header(header)
                    } else {
                        tiny_http::Response::from_string("not found; try /metrics\n")
                            .with_status_code(404)
                    };
                if let Err(e) = request.respond(response) {
                    warn!(error = %e, error_kind = "network", "metrics: cannot answer a scrape");
                }
            }
        })?;
    Ok(Server {
        server,
        thread: Some(thread),
        addr,
    })
}

/// The running metrics server; dropping it stops it.
pub struct Server {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    /// The address it listens on (the real port when `listen` said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            // A scrape in progress ends within its socket timeout.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_sensor_reason_and_queue() {
        let stats = Arc::new(Stats::default());
        Stats::set(&stats.broker_connected, 1);
        Stats::add(&stats.records_acked, 42);
        let gps = Arc::new(SensorCounters::new(Arc::from("gps")));
        gps.records.store(7, Ordering::Relaxed);
        gps.reject(Reject::Checksum);
        let m = Arc::new(Metrics::new(
            stats,
            vec![gps],
            vec![QueueDepth {
                stage: "records gps".into(),
                depth: Box::new(|| 3),
            }],
        ));
        let text = m.render();
        for line in [
            "sensorgate_build_info{version=\"",
            "sensorgate_sensor_records_total{sensor=\"gps\"} 7",
            "sensorgate_sensor_rejected_frames_total{sensor=\"gps\",reason=\"checksum\"} 1",
            "sensorgate_sensor_rejected_frames_total{sensor=\"gps\",reason=\"crc\"} 0",
            "sensorgate_queue_depth{queue=\"records gps\"} 3",
            "sensorgate_broker_connected 1",
            "sensorgate_records_acked_total 42",
            "# TYPE sensorgate_spool_bytes gauge",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert!(
            !text.contains("client_cert_expiry"),
            "unknown until TLS loads"
        );
    }
}
