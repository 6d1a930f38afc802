//! Every metric the server exports: name, kind, labels and help text, in one table.
//!
//! `docs/metrics.md` documents the same list (a test keeps the two in step), and the
//! Grafana dashboard queries only names from it. Labels never carry a key, a client
//! address or anything else without a small fixed set of values.

/// What kind of Prometheus metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    /// Label names; each has a small fixed set of values.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Buckets of every latency histogram, in seconds: 10 µs to 10 s, about three per decade.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

macro_rules! catalog {
    ($($const:ident = $name:expr, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(pub const $const: &str = $name;)*
        /// The whole catalog, in documentation order.
        pub const ALL: &[MetricDef] = &[
            $(MetricDef { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help },)*
        ];
    };
}

catalog! {
    SERVER_INFO = "strata_server_info", Gauge, ["version"],
        "Always 1; the label names the server's version.";

    // Operations, as served on the QUIC control plane and the TCP data plane.
    REQUESTS = "strata_requests_total", Counter, ["op"],
        "Requests served, by operation (errors included).";
    REQUEST_ERRORS = "strata_request_errors_total", Counter, ["op", "code"],
        "Requests answered with an error, by operation and stable error code.";
    REQUEST_DURATION = "strata_request_duration_seconds", Histogram, ["op"],
        "Time from a request's head to its last answer byte, by operation.";
    TRANSPORT_BYTES = "strata_transport_bytes_total", Counter, ["transport", "direction"],
        "Value bytes moved, by transport (quic, tcp: through the server; shm, device: \
         copied by same-host clients themselves under a lease or reservation; file: read \
         by same-host clients from the ssd tier's files under a lease) and direction \
         (in: puts, out: gets).";
    CONNECTIONS = "strata_connections", Gauge, ["transport"],
        "Client connections open now (quic: control connections, tcp: data connections).";
    CONNECTIONS_ACCEPTED = "strata_connections_accepted_total", Counter, ["transport"],
        "Client connections accepted.";
    HANDOFFS_REFUSED = "strata_handoffs_refused_total", Counter, ["transport"],
        "Side channels refused at their opening: shm (a bad, used or expired ticket, another \
         uid, a peer that timed out, too many at once) and tcp (a data connection with a \
         wrong proof, or none in time).";
    CONNECTIONS_REFUSED = "strata_connections_refused_total", Counter, ["transport"],
        "Client connections closed at once because the server held --max-connections.";

    // Prefix lookups: the inference engine's question "how much of this prompt is stored".
    PREFIX_LOOKUPS = "strata_prefix_lookups_total", Counter, [],
        "prefix_len requests answered.";
    PREFIX_KEYS = "strata_prefix_keys_asked_total", Counter, [],
        "Keys named by prefix lookups (every key of every block asked).";
    PREFIX_BLOCKS = "strata_prefix_blocks_asked_total", Counter, [],
        "Blocks (key groups) asked by prefix lookups.";
    PREFIX_HITS = "strata_prefix_hit_blocks_total", Counter, [],
        "Blocks of the stored prefixes found; divided by blocks asked, the prefix hit ratio.";

    // The cluster (docs/cluster.md): this server's view of it, and its etcd.
    CLUSTER_MEMBERS = "strata_cluster_members", Gauge, ["state"],
        "Members in this server's view of its cluster, by state (active, draining); 0 for \
         a server alone.";
    CLUSTER_VIEW_EPOCH = "strata_cluster_view_epoch", Gauge, [],
        "The etcd revision this server's member view was read at (0 alone).";
    CLUSTER_ETCD_UP = "strata_cluster_etcd_up", Gauge, [],
        "1 when this server's last etcd call was answered, 0 when it was not (or alone).";
    CLUSTER_ETCD_ERRORS = "strata_cluster_etcd_errors_total", Counter, [],
        "etcd calls (renewals, member reads) that got no answer.";
    CLUSTER_REGISTRATIONS = "strata_cluster_registrations_total", Counter, [],
        "Times this server registered its member record: once at start, once more after \
         each lapse of its lease (etcd away longer than the member TTL).";

    // The engine.
    STORE_GETS = "strata_store_gets_total", Counter, ["result"],
        "Reads of whole values by key, by result (hit or miss).";
    STORE_OBJECTS = "strata_store_objects", Gauge, [],
        "Complete objects stored in all tiers.";
    STORE_INDEX_BYTES = "strata_store_index_bytes", Gauge, [],
        "Heap bytes of the index, keys excluded.";
    CORRUPT_OBJECTS = "strata_corrupt_objects_total", Counter, [],
        "Objects dropped because their stored bytes failed their checksum.";
    NO_SPACE = "strata_no_space_total", Counter, [],
        "Reservations refused because no tier had room after eviction.";

    // Tiers.
    TIER_CAPACITY = "strata_tier_capacity_bytes", Gauge, ["tier"],
        "Bytes the tier can hold.";
    TIER_USED = "strata_tier_used_bytes", Gauge, ["tier"],
        "Bytes allocated in the tier, extents waiting to be reclaimed included.";
    TIER_OBJECTS = "strata_tier_objects", Gauge, ["tier"],
        "Complete objects whose bytes are in the tier.";
    TIER_HIGH_WATERMARK = "strata_tier_high_watermark_bytes", Gauge, ["tier"],
        "Used bytes past which the tier is evicted.";
    TIER_FRAGMENTATION = "strata_tier_fragmentation_ratio", Gauge, ["tier"],
        "1 - largest free extent / free bytes: 0 when the free space is one extent.";
    TIER_EVICTIONS = "strata_tier_evictions_total", Counter, ["tier"],
        "Objects that left the tier to make room (demoted or dropped).";
    TIER_EVICTED_BYTES = "strata_tier_evicted_bytes_total", Counter, ["tier"],
        "Bytes of the objects evicted from the tier.";
    TIER_DEMOTIONS = "strata_tier_demotions_total", Counter, ["tier"],
        "Objects moved from the tier to the one below.";
    TIER_PROMOTIONS = "strata_tier_promotions_total", Counter, ["tier"],
        "Objects moved into the tier from the one below because they were read again.";

    // Leases and reservations.
    LEASES_GRANTED = "strata_leases_granted_total", Counter, [],
        "Read leases granted (get_locations, prefix_len with lease), renewals included.";
    LEASES_ACTIVE = "strata_leases_active", Gauge, [],
        "Read leases that have not reached their end.";
    LEASES_EXPIRED = "strata_leases_expired_total", Counter, [],
        "Read leases that reached their end without being renewed.";
    RESERVATIONS_ACTIVE = "strata_reservations_active", Gauge, [],
        "Write reservations not yet committed or ended.";
    RESERVATIONS_REVOKED = "strata_reservations_revoked_total", Counter, [],
        "Write reservations cancelled by their writer or by the end of its connection.";
    RESERVATIONS_EXPIRED = "strata_reservations_expired_total", Counter, [],
        "Write reservations revoked because their deadline passed.";

    // The ssd tier's I/O.
    SSD_INFO = "strata_ssd_info", Gauge, ["engine", "direct"],
        "Always 1 when there is an ssd tier; labels: its I/O engine and whether files are O_DIRECT.";
    SSD_QUEUE_DEPTH = "strata_ssd_queue_depth", Gauge, [],
        "Most ssd operations the engine keeps in flight per batch (configured).";
    SSD_IN_FLIGHT = "strata_ssd_io_in_flight", Gauge, [],
        "Ssd operations submitted and not yet completed.";
    SSD_OPS = "strata_ssd_io_ops_total", Counter, ["op"],
        "Ssd operations completed, by op (read or write).";
    SSD_BYTES = "strata_ssd_io_bytes_total", Counter, ["op"],
        "Bytes read from or written to the ssd tier's files.";
    SSD_ERRORS = "strata_ssd_io_errors_total", Counter, [],
        "Ssd operations that failed.";
    SSD_DURATION = strata_engine::SSD_IO_DURATION, Histogram, ["op"],
        "Time from an ssd operation's submission to its completion, by op.";
    SSD_CORRUPT_RECORDS = "strata_ssd_corrupt_records_total", Counter, [],
        "Ssd records whose bytes failed their checksum when read.";
}

/// The definition of `name`.
pub fn find(name: &str) -> Option<&'static MetricDef> {
    ALL.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_suffixed_by_kind() {
        let mut seen = std::collections::HashSet::new();
        for d in ALL {
            assert!(seen.insert(d.name), "{} is defined twice", d.name);
            assert!(d.name.starts_with("strata_"), "{}", d.name);
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                d.name
            );
            if d.kind == Kind::Histogram {
                assert!(d.name.ends_with("_seconds"), "{}", d.name);
            }
            assert!(!d.labels.contains(&"key"), "{}: no per-key labels", d.name);
        }
    }

    #[test]
    fn buckets_span_ten_microseconds_to_ten_seconds() {
        assert_eq!(LATENCY_BUCKETS.first(), Some(&0.000_01));
        assert_eq!(LATENCY_BUCKETS.last(), Some(&10.0));
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn docs_list_every_metric_and_no_other() {
        let doc = include_str!("../../../docs/metrics.md");
        for d in ALL {
            assert!(
                doc.contains(&format!("`{}`", d.name)),
                "docs/metrics.md does not document {}",
                d.name
            );
        }
        let names = doc.split('`').filter(|w| {
            w.starts_with("strata_") && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        for word in names {
            let base = word
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(
                find(word).is_some() || find(base).is_some(),
                "docs/metrics.md names {word}, which the server does not export"
            );
        }
    }
}
