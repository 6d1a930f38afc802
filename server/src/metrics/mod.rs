//! Prometheus metrics: the registry, the handles the hot paths count with, and the
//! figures sampled from the engine when Prometheus scrapes.
//!
//! Two ways a number gets here:
//! * **counted as it happens** (requests, errors, latencies, transport bytes, prefix
//!   lookups, connections, ssd I/O latencies): through handles taken from the registry
//!   once, when the service starts. A handle is an atomic (a histogram's is a lock-free
//!   bucket of samples), so counting takes no lock and never touches the registry;
//! * **sampled at scrape time** (tier fill, object counts, evictions, leases,
//!   reservations, ssd I/O totals): the engine keeps these in its own atomics already, so
//!   [`Metrics::render`] reads them once per scrape instead of counting twice.
//!
//! Each server has its own registry (no process-global recorder), so tests and embedders
//! can run several. The engine's own handles (ssd latencies) are taken from the recorder
//! in scope when the store opens: open it inside [`Metrics::scope`].

pub mod catalog;
pub(crate) mod http;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;
use strata_proto::wire::Opcode;

use catalog::*;
use strata_engine::{Store, TierKind};

/// How often recorded histogram samples are folded into their buckets when nobody
/// scrapes (they are folded at every scrape too), which bounds the memory they hold.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Label value of requests whose opcode could not be read.
const UNKNOWN_OP: &str = "unknown";

/// Error label of requests whose stream or connection failed before an answer.
pub const LOST: &str = "Lost";

/// One server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Indexed by opcode number; slot 0 is for requests whose opcode was unreadable.
    ops: Vec<OpMetrics>,
    pub(crate) bytes: TransportBytes,
    pub(crate) prefix: PrefixMetrics,
    pub(crate) quic_connections: ConnectionMetrics,
    pub(crate) tcp_connections: ConnectionMetrics,
    /// Shared-memory hand-offs refused.
    pub(crate) shm_refused: Counter,
    /// One scrape samples the engine at a time (absolute counters must not go back).
    sampling: Mutex<()>,
    /// The cluster view the service answers with (sampled at scrape time).
    cluster: Mutex<Option<std::sync::Arc<crate::cluster::ClusterState>>>,
}

struct OpMetrics {
    name: &'static str,
    requests: Counter,
    duration: Histogram,
}

/// Value bytes by transport and direction.
pub(crate) struct TransportBytes {
    pub quic_in: Counter,
    pub quic_out: Counter,
    pub tcp_in: Counter,
    pub tcp_out: Counter,
    pub shm_in: Counter,
    pub shm_out: Counter,
    pub device_in: Counter,
    pub device_out: Counter,
    /// Read by same-host clients from the ssd tier's files themselves.
    pub file_out: Counter,
}

impl TransportBytes {
    /// The counter of bytes clients copy themselves into (`inbound`) or out of a tier of
    /// `kind`, if clients copy that tier's bytes themselves.
    pub fn direct(&self, kind: TierKind, inbound: bool) -> Option<&Counter> {
        match (kind, inbound) {
            (TierKind::Dram, true) => Some(&self.shm_in),
            (TierKind::Dram, false) => Some(&self.shm_out),
            (TierKind::Device, true) => Some(&self.device_in),
            (TierKind::Device, false) => Some(&self.device_out),
            (TierKind::Ssd, false) => Some(&self.file_out),
            (TierKind::Ssd, true) => None,
        }
    }
}

pub(crate) struct PrefixMetrics {
    pub lookups: Counter,
    pub keys: Counter,
    pub blocks: Counter,
    pub hits: Counter,
}

pub(crate) struct ConnectionMetrics {
    open: Gauge,
    accepted: Counter,
    /// Closed at once: the server held its limit.
    pub refused: Counter,
    /// Side channels (shm hand-offs, data-plane openings) refused at their opening.
    pub handoffs_refused: Counter,
}

impl ConnectionMetrics {
    /// Counts a connection open until the guard drops.
    pub fn open(&self) -> OpenConnection<'_> {
        self.accepted.increment(1);
        self.open.increment(1.0);
        OpenConnection(self)
    }
}

/// An open connection, counted until dropped.
pub(crate) struct OpenConnection<'a>(&'a ConnectionMetrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open.decrement(1.0);
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|&(k, v)| Label::from_static_parts(k, v))
        .collect();
    Key::from_parts(name, labels)
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric described and the hot paths' handles taken.
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        for d in ALL {
            let name = KeyName::from_const_str(d.name);
            let help = SharedString::const_str(d.help);
            match d.kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let counter = |name, labels: &[_]| recorder.register_counter(&key(name, labels), &METADATA);
        let gauge = |name, labels: &[_]| recorder.register_gauge(&key(name, labels), &METADATA);
        let op = |name: &'static str| OpMetrics {
            name,
            requests: counter(REQUESTS, &[("op", name)]),
            duration: recorder
                .register_histogram(&key(REQUEST_DURATION, &[("op", name)]), &METADATA),
        };
        let mut ops = vec![op(UNKNOWN_OP)];
        for o in Opcode::ALL {
            debug_assert_eq!(o as usize, ops.len(), "opcodes are numbered from 1 densely");
            ops.push(op(o.name()));
        }
        let bytes = |transport, direction| {
            counter(
                TRANSPORT_BYTES,
                &[("transport", transport), ("direction", direction)],
            )
        };
        let connections = |transport| ConnectionMetrics {
            open: gauge(CONNECTIONS, &[("transport", transport)]),
            accepted: counter(CONNECTIONS_ACCEPTED, &[("transport", transport)]),
            refused: counter(CONNECTIONS_REFUSED, &[("transport", transport)]),
            handoffs_refused: counter(HANDOFFS_REFUSED, &[("transport", transport)]),
        };
        gauge(SERVER_INFO, &[("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        Metrics {
            ops,
            bytes: TransportBytes {
                quic_in: bytes("quic", "in"),
                quic_out: bytes("quic", "out"),
                tcp_in: bytes("tcp", "in"),
                tcp_out: bytes("tcp", "out"),
                shm_in: bytes("shm", "in"),
                shm_out: bytes("shm", "out"),
                device_in: bytes("device", "in"),
                device_out: bytes("device", "out"),
                file_out: bytes("file", "out"),
            },
            prefix: PrefixMetrics {
                lookups: counter(PREFIX_LOOKUPS, &[]),
                keys: counter(PREFIX_KEYS, &[]),
                blocks: counter(PREFIX_BLOCKS, &[]),
                hits: counter(PREFIX_HITS, &[]),
            },
            quic_connections: connections("quic"),
            tcp_connections: connections("tcp"),
            shm_refused: counter(HANDOFFS_REFUSED, &[("transport", "shm")]),
            sampling: Mutex::new(()),
            cluster: Mutex::new(None),
            recorder,
            handle,
        }
    }

    /// Runs `f` with this registry as the recorder in scope: handles that code inside
    /// takes through the `metrics` macros (the store's, when it opens) record here.
    pub fn scope<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// Counts one request of `op` (`None`: its opcode was unreadable) that began at
    /// `started` and ended with `error` (a stable code name) or success.
    pub fn request(&self, op: Option<Opcode>, started: Instant, error: Option<&'static str>) {
        let m = &self.ops[op.map_or(0, |o| o as usize)];
        m.requests.increment(1);
        m.duration.record(started.elapsed().as_secs_f64());
        if let Some(code) = error {
            // Errors are the cold path: the registry's lookup is fine here.
            self.counter(REQUEST_ERRORS, &[("op", m.name), ("code", code)])
                .increment(1);
        }
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// Folds recorded histogram samples into their buckets.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Samples `store` and renders every metric in the Prometheus text format.
    pub fn render(&self, store: &Store) -> String {
        self.sample(store);
        self.handle.render()
    }

    /// Samples `state` (the service's cluster view) at each scrape.
    pub(crate) fn watch_cluster(&self, state: std::sync::Arc<crate::cluster::ClusterState>) {
        *self.cluster.lock() = Some(state);
    }

    /// Copies the engine's own figures into the registry.
    fn sample(&self, store: &Store) {
        let _one_at_a_time = self.sampling.lock();
        let s = store.stats();
        let c = &s.counters;
        for t in &s.tiers {
            let tier = [("tier", t.kind.name())];
            self.gauge(TIER_CAPACITY, &tier).set(t.capacity as f64);
            self.gauge(TIER_USED, &tier).set(t.used as f64);
            self.gauge(TIER_OBJECTS, &tier).set(t.objects as f64);
            self.gauge(TIER_HIGH_WATERMARK, &tier)
                .set(t.high_watermark as f64);
            self.gauge(TIER_FRAGMENTATION, &tier).set(t.fragmentation);
            self.counter(TIER_EVICTIONS, &tier).absolute(t.evictions);
            self.counter(TIER_EVICTED_BYTES, &tier)
                .absolute(t.evicted_bytes);
            self.counter(TIER_DEMOTIONS, &tier).absolute(t.demotions);
            self.counter(TIER_PROMOTIONS, &tier).absolute(t.promotions);
            if let Some(io) = &t.io {
                let direct = if io.direct { "true" } else { "false" };
                self.gauge(SSD_INFO, &[("engine", io.engine), ("direct", direct)])
                    .set(1.0);
                self.gauge(SSD_QUEUE_DEPTH, &[])
                    .set(f64::from(io.queue_depth));
                self.gauge(SSD_IN_FLIGHT, &[]).set(io.in_flight as f64);
                self.counter(SSD_OPS, &[("op", "read")])
                    .absolute(io.read_ops);
                self.counter(SSD_OPS, &[("op", "write")])
                    .absolute(io.write_ops);
                self.counter(SSD_BYTES, &[("op", "read")])
                    .absolute(io.read_bytes);
                self.counter(SSD_BYTES, &[("op", "write")])
                    .absolute(io.write_bytes);
                self.counter(SSD_ERRORS, &[]).absolute(io.errors);
                self.counter(SSD_CORRUPT_RECORDS, &[])
                    .absolute(io.corrupt_records);
            }
        }
        let cluster = self.cluster.lock().clone().unwrap_or_default();
        let (active, draining, epoch) = cluster.counts();
        self.gauge(CLUSTER_MEMBERS, &[("state", "active")])
            .set(active as f64);
        self.gauge(CLUSTER_MEMBERS, &[("state", "draining")])
            .set(draining as f64);
        self.gauge(CLUSTER_VIEW_EPOCH, &[]).set(epoch as f64);
        let up = cluster.etcd_up.load(Ordering::Relaxed);
        self.gauge(CLUSTER_ETCD_UP, &[])
            .set(if up { 1.0 } else { 0.0 });
        self.counter(CLUSTER_ETCD_ERRORS, &[])
            .absolute(cluster.etcd_errors.load(Ordering::Relaxed));
        self.counter(CLUSTER_REGISTRATIONS, &[])
            .absolute(cluster.registrations.load(Ordering::Relaxed));
        self.gauge(STORE_OBJECTS, &[]).set(s.objects as f64);
        self.gauge(STORE_INDEX_BYTES, &[]).set(s.index_bytes as f64);
        self.counter(STORE_GETS, &[("result", "hit")])
            .absolute(c.ops.get_hits);
        self.counter(STORE_GETS, &[("result", "miss")])
            .absolute(c.ops.get_misses);
        self.counter(CORRUPT_OBJECTS, &[]).absolute(c.corrupt);
        self.counter(NO_SPACE, &[]).absolute(c.no_space);
        self.gauge(RESERVATIONS_ACTIVE, &[]).set(s.pending as f64);
        self.counter(RESERVATIONS_REVOKED, &[])
            .absolute(c.revoked_reservations);
        self.counter(RESERVATIONS_EXPIRED, &[])
            .absolute(c.expired_reservations);
        let leases = store.lease_counts();
        self.counter(LEASES_GRANTED, &[]).absolute(leases.granted);
        self.gauge(LEASES_ACTIVE, &[]).set(leases.active as f64);
        self.counter(LEASES_EXPIRED, &[]).absolute(leases.expired);
    }
}

/// The value of the series rendered exactly as `series` (`name`, or `name{labels}` with
/// the labels in the order the exporter renders them) in a Prometheus text scrape: for
/// tests and tools that read a scrape.
pub fn series_value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Whether a server is serving, for `/health`.
#[derive(Default)]
pub(crate) struct Health {
    stopping: AtomicBool,
}

impl Health {
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }
    pub fn serving(&self) -> bool {
        !self.stopping.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests;
