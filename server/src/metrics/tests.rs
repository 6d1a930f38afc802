//! The exporter, rendered after engine work: every catalog metric is there, and the
//! figures sampled from the engine say what the engine did.

use std::time::Duration;

use super::catalog::{Kind, ALL};
use super::{series_value as value, Metrics};
use strata_engine::{Clock, PutOptions, SsdOptions, Store, StoreConfig, TierConfig};

const KIB: u64 = 1024;

/// Whether any series of metric `name` is rendered.
fn rendered(text: &str, name: &str, kind: Kind) -> bool {
    let sample = match kind {
        Kind::Histogram => format!("{name}_bucket"),
        _ => name.to_owned(),
    };
    text.lines()
        .any(|l| l.starts_with(&format!("{sample}{{")) || l.starts_with(&format!("{sample} ")))
}

#[test]
fn engine_figures_are_rendered_after_the_work_that_drives_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut dram = TierConfig::dram(256 * KIB);
    dram.alignment = 64;
    let config = StoreConfig {
        tiers: vec![dram, TierConfig::ssd(64 << 20, SsdOptions::new(dir.path()))],
        lease_ttl: Duration::from_secs(10),
        put_timeout: Duration::from_secs(5),
        shards: 8,
        maintenance_interval: None,
        ..StoreConfig::default()
    };
    let metrics = Metrics::new();
    let (clock, manual) = Clock::manual();
    let store = metrics
        .scope(|| Store::open_with_clock(config, clock))
        .unwrap();
    let value_of = |i: u8| vec![i; 64 * KIB as usize];
    for i in 0..6u8 {
        store
            .put(&[i], &value_of(i), PutOptions::default())
            .unwrap();
    }
    // Demote the oldest dram objects to ssd until dram is under its watermark.
    store.demote_tier(0);
    let st = store.stats();
    let demoted = st.tiers[0].demotions;
    assert!(demoted >= 1, "demotion ran: {st:?}");
    // The demoted objects' dram space comes back once no reader can still hold it (the
    // epoch), which other tests' threads in this process can delay: wait for it, so the
    // promotion below finds room rather than being skipped.
    assert!(
        store.reclaim(Duration::from_secs(10)),
        "demoted space came back"
    );
    // Reading a demoted object back reads the ssd; the second read promotes it.
    assert_eq!(store.get(&[0]).unwrap(), value_of(0));
    assert_eq!(store.get(&[0]).unwrap(), value_of(0));
    assert!(store.get(b"absent").is_err());
    // Leases: two granted, then their end passes.
    let leased = store.get_locations(&[[1u8], [2u8]]);
    assert!(leased.iter().all(Result::is_ok));
    let during = store.lease_counts();
    assert_eq!((during.granted, during.active), (2, 2));
    // Reservations: one revoked by its writer, one left to pass its deadline.
    store
        .put_start(b"revoked", 100, PutOptions::default())
        .unwrap()
        .revoke()
        .unwrap();
    let abandoned = store
        .put_start(b"abandoned", 100, PutOptions::default())
        .unwrap();
    std::mem::forget(abandoned); // its writer vanished without a word
    manual.advance(Duration::from_secs(11));
    store.run_maintenance();

    let text = metrics.render(&store);
    // An error series appears with its first error (the other test drives one).
    for d in ALL
        .iter()
        .filter(|d| d.name != super::catalog::REQUEST_ERRORS)
    {
        assert!(
            rendered(&text, d.name, d.kind),
            "{} is not rendered",
            d.name
        );
    }
    let st = store.stats();
    let dram = |name: &str| value(&text, &format!("{name}{{tier=\"dram\"}}"));
    assert_eq!(
        dram("strata_tier_capacity_bytes"),
        Some(st.tiers[0].capacity as f64)
    );
    assert_eq!(dram("strata_tier_high_watermark_bytes"), Some(235_929.0));
    assert_eq!(
        dram("strata_tier_objects"),
        Some(st.tiers[0].objects as f64)
    );
    assert_eq!(dram("strata_tier_demotions_total"), Some(demoted as f64));
    assert_eq!(dram("strata_tier_evictions_total"), Some(demoted as f64));
    assert_eq!(dram("strata_tier_promotions_total"), Some(1.0));
    assert_eq!(
        value(&text, "strata_tier_demotions_total{tier=\"ssd\"}"),
        Some(0.0),
        "the last tier demotes nothing"
    );
    assert_eq!(
        value(&text, "strata_store_gets_total{result=\"miss\"}"),
        Some(1.0)
    );
    assert_eq!(value(&text, "strata_leases_granted_total"), Some(2.0));
    assert_eq!(value(&text, "strata_leases_active"), Some(0.0));
    assert_eq!(value(&text, "strata_leases_expired_total"), Some(2.0));
    assert_eq!(value(&text, "strata_reservations_revoked_total"), Some(1.0));
    assert_eq!(value(&text, "strata_reservations_expired_total"), Some(1.0));
    assert_eq!(value(&text, "strata_reservations_active"), Some(0.0));
    assert_eq!(value(&text, "strata_store_objects"), Some(6.0));
    let ssd_writes = value(&text, "strata_ssd_io_ops_total{op=\"write\"}").unwrap();
    // Each demoted record (a 4 KiB header block, then the value) is written whole; records
    // that lie end to end share a write, so the bytes count, not the writes.
    let ssd_bytes = value(&text, "strata_ssd_io_bytes_total{op=\"write\"}").unwrap();
    assert!(ssd_writes >= 1.0, "demotions wrote the ssd");
    assert!(
        ssd_bytes >= (demoted * (64 * KIB + 4096)) as f64,
        "every demoted record was written: {ssd_bytes} bytes for {demoted}"
    );
    assert_eq!(
        value(&text, "strata_ssd_io_duration_seconds_count{op=\"write\"}"),
        Some(ssd_writes),
        "every ssd write's latency is in the histogram (the store opened in scope)"
    );
    assert!(value(&text, "strata_ssd_io_duration_seconds_count{op=\"read\"}").unwrap() >= 1.0);
    assert!(text.contains("strata_ssd_info{engine="));
}

#[test]
fn requests_count_by_operation_and_errors_by_code() {
    use strata_proto::wire::Opcode;
    let metrics = Metrics::new();
    let store = Store::open(StoreConfig::default()).unwrap();
    let started = std::time::Instant::now();
    metrics.request(Some(Opcode::Get), started, None);
    metrics.request(
        Some(Opcode::Get),
        started,
        Some(strata_engine::ErrorCode::NotFound.name()),
    );
    metrics.request(None, started, Some(super::LOST));
    let text = metrics.render(&store);
    assert_eq!(value(&text, "strata_requests_total{op=\"get\"}"), Some(2.0));
    assert_eq!(
        value(&text, "strata_requests_total{op=\"unknown\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "strata_request_errors_total{op=\"get\",code=\"NotFound\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "strata_request_errors_total{op=\"unknown\",code=\"Lost\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "strata_request_duration_seconds_count{op=\"get\"}"),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            "strata_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"}"
        ),
        Some(2.0)
    );
    // Buckets are the catalog's, 10 µs to 10 s.
    assert!(text.contains("strata_request_duration_seconds_bucket{op=\"get\",le=\"0.00001\"}"));
    assert!(text.contains("strata_request_duration_seconds_bucket{op=\"get\",le=\"10\"}"));
}
