//! The operation contract of the design brief, one behaviour per test, on a manual clock.

use std::time::Duration;

use strata_engine::{Clock, ErrorCode, ManualClock, PutOptions, Store, StoreConfig, TierConfig};

const KIB: u64 = 1024;

fn config(capacity: u64) -> StoreConfig {
    let mut tier = TierConfig::dram(capacity);
    tier.alignment = 64;
    StoreConfig {
        tiers: vec![tier],
        maintenance_interval: None,
        lease_ttl: Duration::from_secs(10),
        put_timeout: Duration::from_secs(5),
        shards: 8,
        ..StoreConfig::default()
    }
}

fn store(capacity: u64) -> (Store, ManualClock) {
    let (clock, manual) = Clock::manual();
    (
        Store::open_with_clock(config(capacity), clock).unwrap(),
        manual,
    )
}

fn value(key: &[u8], len: usize) -> Vec<u8> {
    let seed = xxhash(key);
    (0..len)
        .map(|i| (seed.wrapping_add(i as u64).wrapping_mul(0x9E37_79B9) >> 24) as u8)
        .collect()
}

fn xxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn put_get_round_trip_and_stats() {
    let (s, _) = store(1 << 20);
    let v = value(b"a", 5000);
    s.put(b"a", &v, PutOptions::default()).unwrap();
    assert_eq!(s.get(b"a").unwrap(), v);
    let mut buf = vec![0u8; 8000];
    assert_eq!(s.get_into(b"a", &mut buf).unwrap(), 5000);
    assert_eq!(&buf[..5000], &v[..]);
    let st = s.stats();
    assert_eq!(st.objects, 1);
    assert_eq!(st.tiers[0].objects, 1);
    assert_eq!(
        st.tiers[0].used, 5056,
        "5000 rounded up to the 64-byte alignment"
    );
    assert_eq!(st.counters.ops.puts, 1);
    assert_eq!(st.counters.ops.get_hits, 2);
    assert!(st.index_bytes_per_object > 0.0);
}

#[test]
fn pending_is_invisible_until_put_end() {
    let (s, _) = store(1 << 20);
    let mut r = s.put_start(b"k", 100, PutOptions::default()).unwrap();
    r.write_at(0, &[7u8; 100]).unwrap();
    assert!(!s.exists(b"k").unwrap());
    let err = s.get(b"k").unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(err.message().contains("pending"), "{err}");
    assert_eq!(s.prefix_len(&[[b"k"]], false).unwrap().len, 0);
    assert!(s.get_locations(&[b"k"])[0].is_err());
    r.commit().unwrap();
    assert!(s.exists(b"k").unwrap());
    assert_eq!(s.get(b"k").unwrap(), vec![7u8; 100]);
}

#[test]
fn duplicate_and_concurrent_puts() {
    let (s, _) = store(1 << 20);
    let r = s.put_start(b"k", 10, PutOptions::default()).unwrap();
    assert_eq!(
        s.put_start(b"k", 10, PutOptions::default())
            .unwrap_err()
            .code(),
        ErrorCode::Busy
    );
    assert_eq!(
        s.put(b"k", &[1; 10], PutOptions::default())
            .unwrap_err()
            .code(),
        ErrorCode::Busy
    );
    let mut r = r;
    r.write_at(0, &[2; 10]).unwrap();
    r.commit().unwrap();
    let again = s.put(b"k", &[3; 10], PutOptions::default()).unwrap_err();
    assert_eq!(again.code(), ErrorCode::AlreadyExists);
    assert_eq!(s.get(b"k").unwrap(), vec![2; 10], "the first value stays");
    assert_eq!(s.stats().objects, 1, "never two copies");
}

#[test]
fn only_the_writer_may_end_or_revoke() {
    let (s, _) = store(1 << 20);
    let r = s.put_start(b"k", 10, PutOptions::default()).unwrap();
    let other = strata_engine::WriterId::from_raw(r.writer().get() + 1000);
    assert_eq!(
        s.put_end(b"k", other).unwrap_err().code(),
        ErrorCode::NotWriter
    );
    assert_eq!(
        s.put_revoke(b"k", other).unwrap_err().code(),
        ErrorCode::NotWriter
    );
    let w = r.writer();
    // The raw API (as the network layer uses it) commits; the guard then has nothing to do.
    s.put_end(b"k", w).unwrap();
    assert_eq!(
        s.put_end(b"k", w).unwrap_err().code(),
        ErrorCode::AlreadyExists,
        "double put_end"
    );
    drop(r);
    assert!(
        s.exists(b"k").unwrap(),
        "dropping a committed reservation must not remove it"
    );
}

#[test]
fn dropped_reservation_revokes_and_returns_space() {
    let (s, _) = store(1 << 20);
    {
        let mut r = s.put_start(b"k", 4000, PutOptions::default()).unwrap();
        r.write_at(0, &[1; 4000]).unwrap();
        assert_eq!(s.stats().pending, 1);
    }
    assert!(!s.exists(b"k").unwrap());
    assert!(s.reclaim(Duration::from_secs(5)));
    let st = s.stats();
    assert_eq!((st.pending, st.tiers[0].used), (0, 0));
    s.put(b"k", &[9; 10], PutOptions::default()).unwrap();
}

#[test]
fn expired_reservation_is_reaped_and_its_writer_refused() {
    let (s, clock) = store(1 << 20);
    let mut r = s.put_start(b"k", 4000, PutOptions::default()).unwrap();
    clock.advance(Duration::from_secs(6));
    // Another writer may take the key over once the deadline passed.
    s.run_maintenance();
    assert!(s.reclaim(Duration::from_secs(5)));
    assert_eq!(
        s.stats().tiers[0].used,
        0,
        "reaped reservation returned its space"
    );
    assert_eq!(s.stats().counters.expired_reservations, 1);
    assert_eq!(
        r.write_at(0, &[1; 10]).unwrap_err().code(),
        ErrorCode::LeaseExpired
    );
    assert_eq!(r.commit().unwrap_err().code(), ErrorCode::LeaseExpired);
    assert!(!s.exists(b"k").unwrap());
}

#[test]
fn expired_reservation_blocks_nobody() {
    let (s, clock) = store(1 << 20);
    let old = s.put_start(b"k", 100, PutOptions::default()).unwrap();
    clock.advance(Duration::from_secs(6));
    // No maintenance ran: put_start itself revokes the stale reservation.
    s.put(b"k", &[5; 100], PutOptions::default()).unwrap();
    assert_eq!(old.commit().unwrap_err().code(), ErrorCode::AlreadyExists);
    assert_eq!(s.get(b"k").unwrap(), vec![5; 100]);
}

#[test]
fn put_end_past_deadline_is_lease_expired() {
    let (s, clock) = store(1 << 20);
    let r = s.put_start(b"k", 100, PutOptions::default()).unwrap();
    clock.advance(Duration::from_secs(5));
    assert_eq!(r.commit().unwrap_err().code(), ErrorCode::LeaseExpired);
    assert!(!s.exists(b"k").unwrap());
    assert!(s.reclaim(Duration::from_secs(5)));
    assert_eq!(s.stats().tiers[0].used, 0);
}

#[test]
fn bad_input_is_a_typed_error_and_disturbs_nothing() {
    let (s, _) = store(1 << 20);
    s.put(b"keep", &[1; 100], PutOptions::default()).unwrap();
    let long = vec![b'x'; 1025];
    let cases = [
        (
            s.put(b"", &[1], PutOptions::default()).unwrap_err(),
            ErrorCode::InvalidKey,
        ),
        (
            s.put(&long, &[1], PutOptions::default()).unwrap_err(),
            ErrorCode::InvalidKey,
        ),
        (
            s.put_start(b"z", 0, PutOptions::default()).err().unwrap(),
            ErrorCode::InvalidArgument,
        ),
        (
            s.put_start(b"z", 2 << 20, PutOptions::default())
                .err()
                .unwrap(),
            ErrorCode::TooLarge,
        ),
        (s.get(b"").unwrap_err(), ErrorCode::InvalidKey),
        (s.exists(&long).unwrap_err(), ErrorCode::InvalidKey),
        (s.remove(b"", false).unwrap_err(), ErrorCode::InvalidKey),
        (s.get(b"missing").unwrap_err(), ErrorCode::NotFound),
        (
            s.remove(b"missing", false).unwrap_err(),
            ErrorCode::NotFound,
        ),
        (
            s.get_into(b"keep", &mut [0u8; 10]).unwrap_err(),
            ErrorCode::InvalidArgument,
        ),
        (
            s.prefix_len(&[[&long[..]]], false).unwrap_err(),
            ErrorCode::InvalidKey,
        ),
    ];
    for (err, code) in cases {
        assert_eq!(err.code(), code, "{err}");
        assert!(!err.message().is_empty());
    }
    let mut r = s.put_start(b"w", 10, PutOptions::default()).unwrap();
    assert_eq!(
        r.write_at(5, &[0; 6]).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        r.write_at(u64::MAX, &[0; 6]).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    drop(r);
    let mut bufs: Vec<&mut [u8]> = vec![];
    assert_eq!(
        s.batch_get_into(&[b"keep"], &mut bufs)[0]
            .as_ref()
            .unwrap_err()
            .code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(s.get(b"keep").unwrap(), vec![1; 100]);
    assert_eq!(s.stats().objects, 1);
}

#[test]
fn batches_report_per_key() {
    let (s, _) = store(1 << 20);
    let res = s.batch_put(
        &[
            (&b"a"[..], &[1u8; 10][..]),
            (b"", &[1u8; 10]),
            (b"b", &[2u8; 20]),
        ],
        PutOptions::default(),
    );
    assert!(res[0].is_ok() && res[2].is_ok());
    assert_eq!(res[1].as_ref().unwrap_err().code(), ErrorCode::InvalidKey);
    let exists = s.batch_exists(&[&b"a"[..], b"nope", b"b"]);
    assert_eq!(
        exists
            .iter()
            .map(|r| *r.as_ref().unwrap())
            .collect::<Vec<_>>(),
        vec![true, false, true]
    );
    let (mut x, mut y, mut z) = ([0u8; 10], [0u8; 10], [0u8; 20]);
    let mut bufs: Vec<&mut [u8]> = vec![&mut x, &mut y, &mut z];
    let got = s.batch_get_into(&[&b"a"[..], b"nope", b"b"], &mut bufs);
    assert_eq!(*got[0].as_ref().unwrap(), 10);
    assert_eq!(got[1].as_ref().unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(*got[2].as_ref().unwrap(), 20);
    assert_eq!((x, z), ([1u8; 10], [2u8; 20]));
}

#[test]
fn prefix_len_counts_whole_groups() {
    let (s, _) = store(1 << 20);
    // 4 positions x 2 ranks; position 2 lacks rank 1.
    let key = |pos: usize, rank: usize| format!("m@tp_rank:{rank}@{pos:064x}").into_bytes();
    for pos in 0..4 {
        for rank in 0..2 {
            if (pos, rank) != (2, 1) {
                s.put(&key(pos, rank), &[pos as u8; 64], PutOptions::default())
                    .unwrap();
            }
        }
    }
    let groups: Vec<Vec<Vec<u8>>> = (0..4)
        .map(|p| (0..2).map(|r| key(p, r)).collect())
        .collect();
    assert_eq!(s.prefix_len(&groups, false).unwrap().len, 2);
    assert_eq!(s.prefix_len(&groups[..1], false).unwrap().len, 1);
    assert_eq!(s.prefix_len(&groups[3..], false).unwrap().len, 1);
    let empty: Vec<Vec<Vec<u8>>> = vec![];
    assert_eq!(s.prefix_len(&empty, false).unwrap().len, 0);
    // No lease taken without asking; with `lease` the matched objects are leased.
    assert!(s.remove(&key(0, 0), false).is_ok());
    s.put(&key(0, 0), &[0; 64], PutOptions::default()).unwrap();
    let m = s.prefix_len(&groups, true).unwrap();
    assert_eq!(m.len, 2);
    assert!(m.leased_until.is_some());
    assert_eq!(
        s.remove(&key(1, 1), false).unwrap_err().code(),
        ErrorCode::Leased
    );
    assert!(
        s.remove(&key(3, 0), false).is_ok(),
        "keys past the match are not leased"
    );
}

#[test]
fn prefix_len_makes_the_head_most_recent() {
    // Capacity for 4 values of 64 KiB; a prefix lookup over a..d, then one more put: the
    // victim must be the prefix's *last* block (touched first, so least recent).
    let (s, _) = store(256 * KIB);
    for k in [b"a", b"b", b"c", b"d"] {
        s.put(k, &vec![1; 64 * KIB as usize], PutOptions::default())
            .unwrap();
    }
    assert_eq!(
        s.prefix_len(&[[b"d"], [b"c"], [b"b"], [b"a"]], false)
            .unwrap()
            .len,
        4
    );
    s.put(b"e", &vec![2; 64 * KIB as usize], PutOptions::default())
        .unwrap();
    assert!(s.exists(b"d").unwrap() && s.exists(b"c").unwrap() && s.exists(b"b").unwrap());
    assert!(
        !s.exists(b"a").unwrap(),
        "the prefix's last position is evicted first"
    );
}

#[test]
fn remove_respects_leases_unless_forced() {
    let (s, clock) = store(1 << 20);
    s.put(b"k", &[1; 10], PutOptions::default()).unwrap();
    let lease = s.get_locations(&[b"k"])[0].clone().unwrap();
    assert!(s.lease_valid(&lease));
    assert_eq!(s.remove(b"k", false).unwrap_err().code(), ErrorCode::Leased);
    assert_eq!(s.remove_all(false), 0);
    clock.advance(Duration::from_secs(11));
    assert!(!s.lease_valid(&lease));
    s.remove(b"k", false).unwrap();
    s.put(b"k", &[1; 10], PutOptions::default()).unwrap();
    s.get_locations(&[b"k"]);
    s.remove(b"k", true).unwrap();
    assert!(!s.exists(b"k").unwrap());
}

#[test]
fn remove_all_skips_leased_and_pending_unless_forced() {
    let (s, _) = store(1 << 20);
    for k in [b"a", b"b", b"c"] {
        s.put(k, &[1; 10], PutOptions::default()).unwrap();
    }
    s.get_locations(&[b"b"]);
    let _pending = s.put_start(b"p", 10, PutOptions::default()).unwrap();
    assert_eq!(s.remove_all(false), 2);
    assert!(s.exists(b"b").unwrap());
    assert_eq!(s.stats().pending, 1);
    assert_eq!(s.remove_all(true), 2);
    assert!(s.reclaim(Duration::from_secs(5)));
    let st = s.stats();
    assert_eq!((st.objects, st.pending, st.tiers[0].used), (0, 0, 0));
}

#[test]
fn eviction_is_lru_and_spares_leased_and_pinned() {
    let (s, _) = store(512 * KIB);
    let v = vec![3u8; 64 * KIB as usize];
    s.put(
        b"pinned",
        &v,
        PutOptions {
            pin: true,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..7u8 {
        s.put(&[b'k', i], &v, PutOptions::default()).unwrap();
    }
    // k0 is the oldest; lease it. Touch k1 so k2 becomes the oldest evictable.
    s.get_locations(&[[b'k', 0]]);
    s.get(&[b'k', 1]).unwrap();
    s.put(b"new", &v, PutOptions::default()).unwrap();
    assert!(s.exists(b"pinned").unwrap());
    assert!(s.exists(&[b'k', 0]).unwrap(), "leased");
    assert!(s.exists(&[b'k', 1]).unwrap(), "recently used");
    assert!(
        !s.exists(&[b'k', 2]).unwrap(),
        "least recently used goes first"
    );
    assert_eq!(s.stats().counters.evictions, 1);
    assert!(s.stats().tiers[0].used <= 512 * KIB);
}

/// Segmented LRU: a stream of blocks written and never read must not push out the blocks
/// that are read; once read blocks pass their share of the tier, the least recently used
/// of them goes.
#[test]
fn eviction_takes_unread_objects_before_read_ones_until_those_pass_their_share() {
    let (s, _) = store(512 * KIB); // eight values; read ones may keep 0.8 of it
    let v = vec![5u8; 64 * KIB as usize];
    let put = |k: &[u8]| s.put(k, &v, PutOptions::default()).unwrap();
    for i in 0..4u8 {
        put(&[b'h', i]);
        assert_eq!(s.get(&[b'h', i]).unwrap(), v);
    }
    for i in 0..20u8 {
        put(&[b's', i]);
    }
    for i in 0..4u8 {
        assert!(s.exists(&[b'h', i]).unwrap(), "read object h{i} kept");
    }
    let streamed: Vec<bool> = (0..20u8).map(|i| s.exists(&[b's', i]).unwrap()).collect();
    assert_eq!(
        streamed.iter().filter(|&&kept| kept).count(),
        4,
        "{streamed:?}"
    );
    assert!(streamed[16..].iter().all(|&kept| kept), "{streamed:?}");

    // Three more read objects take the read ones past 0.8 of the tier (7 of 8): the
    // oldest read object goes before any of the newer ones.
    for i in 0..3u8 {
        put(&[b'r', i]);
        assert_eq!(s.get(&[b'r', i]).unwrap(), v);
    }
    put(b"unread");
    put(b"unread again");
    assert!(
        !s.exists(&[b'h', 0]).unwrap(),
        "least recently used read object"
    );
    for k in [
        [b'h', 1],
        [b'h', 2],
        [b'h', 3],
        [b'r', 0],
        [b'r', 1],
        [b'r', 2],
    ] {
        assert!(s.exists(&k).unwrap(), "{k:?}");
    }
    assert!(s.stats().tiers[0].used <= 512 * KIB);
}

#[test]
fn put_fails_only_when_nothing_is_evictable() {
    let (s, _) = store(256 * KIB);
    let v = vec![1u8; 64 * KIB as usize];
    for i in 0..4u8 {
        s.put(
            &[i],
            &v,
            PutOptions {
                pin: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
    let err = s.put(b"x", &v, PutOptions::default()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoSpace);
    for i in 0..4u8 {
        assert_eq!(s.get(&[i]).unwrap(), v, "a failed put disturbs nothing");
    }
    s.remove(&[0], false).unwrap();
    s.put(b"x", &v, PutOptions::default()).unwrap();
}

#[test]
fn background_eviction_keeps_tiers_under_the_watermark() {
    let mut cfg = config(1 << 20);
    cfg.maintenance_interval = Some(Duration::from_millis(1));
    let s = Store::open(cfg).unwrap();
    let v = vec![1u8; 16 * KIB as usize];
    for i in 0..60u32 {
        s.put(&i.to_le_bytes(), &v, PutOptions::default()).unwrap();
    }
    // 60 x 16 KiB = 94% of capacity: above the 90% mark, so the thread must act.
    let mark = (0.9 * (1 << 20) as f64) as u64;
    // The eviction counter moves with the pass's first victim, while the thread may still
    // be choosing the rest, and a victim's space returns through the epoch: so wait
    // (bounded) for the tier to be under the mark, not for the first eviction.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let under = loop {
        let evicted = s.stats().counters.evictions > 0;
        if evicted && s.reclaim(Duration::from_millis(100)) && s.stats().tiers[0].used <= mark {
            break true;
        }
        if std::time::Instant::now() >= deadline {
            break false;
        }
        std::thread::yield_now();
    };
    let st = s.stats();
    assert!(
        st.counters.evictions > 0,
        "maintenance thread never evicted"
    );
    assert!(
        under,
        "used {} still above the watermark {mark} after 10 s",
        st.tiers[0].used
    );
}

#[test]
fn eviction_demotes_to_the_next_tier() {
    let mut cfg = config(256 * KIB);
    let mut lower = TierConfig::dram(1 << 20);
    lower.alignment = 64;
    cfg.tiers.push(lower);
    let (clock, _) = Clock::manual();
    let s = Store::open_with_clock(cfg, clock).unwrap();
    let v = |i: u8| vec![i; 64 * KIB as usize];
    for i in 0..6u8 {
        s.put(&[i], &v(i), PutOptions::default()).unwrap();
    }
    // Placement: the top tier until it passes its watermark (4 x 64 KiB fill it), then the
    // next tier under its own, rather than evicting synchronously.
    let st = s.stats();
    assert_eq!((st.tiers[0].objects, st.tiers[1].objects), (4, 2));
    assert_eq!(st.counters.demotions, 0);
    // Maintenance brings the top tier under its watermark by demoting its oldest object.
    s.run_maintenance();
    let st = s.stats();
    assert_eq!(st.counters.demotions, 1);
    assert_eq!(
        st.counters.evictions, 1,
        "a demotion is an eviction from its tier"
    );
    assert_eq!((st.tiers[0].objects, st.tiers[1].objects), (3, 3));
    let per_tier = |t: &strata_engine::TierStats| (t.evictions, t.demotions, t.promotions);
    assert_eq!(
        per_tier(&st.tiers[0]),
        (1, 1, 0),
        "counted on the tier it left"
    );
    assert_eq!(per_tier(&st.tiers[1]), (0, 0, 0));
    assert_eq!(st.tiers[0].evicted_bytes, 64 * KIB);
    for i in 0..6u8 {
        assert_eq!(
            s.get(&[i]).unwrap(),
            v(i),
            "demoted values are byte-identical"
        );
    }
    let lease = &s.get_locations(&[[0u8]])[0];
    assert_eq!(lease.as_ref().unwrap().extent.tier, 1);
}

#[test]
fn read_guard_survives_concurrent_removal() {
    let (s, _) = store(1 << 20);
    let v = value(b"k", 100_000);
    s.put(b"k", &v, PutOptions::default()).unwrap();
    let guard = s.read(b"k").unwrap();
    // Removal and a new put of the same size while the guard is held: the reused space
    // must not be the guarded extent.
    std::thread::scope(|t| {
        t.spawn(|| {
            s.remove(b"k", true).unwrap();
            s.put(b"k2", &vec![0xAA; 100_000], PutOptions::default())
                .unwrap();
        });
    });
    assert_eq!(guard.bytes().unwrap(), &v[..]);
    drop(guard);
    assert!(s.reclaim(Duration::from_secs(5)));
}

#[test]
fn config_is_validated() {
    let mut bad = config(1 << 20);
    bad.shards = 3;
    assert_eq!(
        Store::open(bad).err().unwrap().code(),
        ErrorCode::InvalidArgument
    );
    let mut bad = config(1 << 20);
    bad.eviction_ratio = 0.0;
    assert_eq!(
        Store::open(bad).err().unwrap().code(),
        ErrorCode::InvalidArgument
    );
    let mut bad = config(1 << 20);
    bad.eviction_protected_ratio = 1.5;
    let err = Store::open(bad).err().unwrap();
    assert!(err.message().contains("eviction_protected_ratio"), "{err}");
    let mut bad = config(1 << 20);
    bad.tiers[0].alignment = 3;
    let err = Store::open(bad).err().unwrap();
    assert!(err.message().contains("alignment"), "{err}");
}

#[test]
fn prefix_len_across_lookup_windows() {
    // 300 positions x 3 ranks = 900 keys: several lookup windows, positions never split.
    let (s, _) = store(4 << 20);
    let key = |pos: usize, rank: usize| format!("m@{rank}@{pos:08x}").into_bytes();
    let groups: Vec<Vec<Vec<u8>>> = (0..300)
        .map(|p| (0..3).map(|r| key(p, r)).collect())
        .collect();
    for (p, g) in groups.iter().enumerate() {
        for (r, k) in g.iter().enumerate() {
            if (p, r) != (200, 2) {
                s.put(k, &[1; 64], PutOptions::default()).unwrap();
            }
        }
    }
    assert_eq!(s.prefix_len(&groups, false).unwrap().len, 200);
    s.put(&key(200, 2), &[1; 64], PutOptions::default())
        .unwrap();
    let m = s.prefix_len(&groups, true).unwrap();
    assert_eq!(m.len, 300);
    for p in [0, 85, 86, 255, 299] {
        assert_eq!(
            s.remove(&key(p, 1), false).unwrap_err().code(),
            ErrorCode::Leased,
            "position {p}"
        );
    }
}

#[test]
fn space_evicted_by_a_thread_that_goes_idle_comes_back() {
    // Space one thread evicted (and then idles, as a server worker between requests) is
    // usable by another thread's put that can evict nothing else.
    let (s, _) = store(8 * 64 * KIB);
    let s = std::sync::Arc::new(s);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (quit_tx, quit_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let s = std::sync::Arc::clone(&s);
        std::thread::spawn(move || {
            for i in 0..12u32 {
                let key = format!("k{i}");
                s.put(
                    key.as_bytes(),
                    &value(key.as_bytes(), 64 * KIB as usize),
                    PutOptions::default(),
                )
                .unwrap();
            }
            done_tx.send(()).unwrap();
            let _ = quit_rx.recv(); // idle, alive, holding whatever it did not hand over
        })
    };
    done_rx.recv().unwrap();
    assert!(
        s.stats().counters.evictions >= 4,
        "the writer's puts evicted"
    );
    // Lease everything still stored: the next put can only use space already evicted.
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let leased = s.get_locations(&keys).iter().filter(|r| r.is_ok()).count();
    assert!(leased > 0 && leased < 12);
    let free_slots = 8 - leased;
    for i in 0..free_slots {
        let key = format!("late{i}");
        s.put(
            key.as_bytes(),
            &value(key.as_bytes(), 64 * KIB as usize),
            PutOptions::default(),
        )
        .unwrap_or_else(|e| panic!("put {i} of {free_slots} found no space: {e}"));
    }
    quit_tx.send(()).unwrap();
    writer.join().unwrap();
}

/// A put hashes its value a piece at a time as it copies it in; what it records must be
/// the whole value's checksum, the one a commit that reads the stored bytes records.
#[test]
fn put_records_the_whole_value_s_checksum() {
    let (s, _) = store(16 << 20);
    let piece = strata_copy::STREAM_MIN;
    for len in [1, 4096, piece - 1, piece, piece + 1, 3 * piece + 5] {
        let put_key = format!("put-{len}");
        let v = value(put_key.as_bytes(), len);
        s.put(put_key.as_bytes(), &v, PutOptions::default())
            .unwrap();
        let written_key = format!("written-{len}");
        let mut w = s
            .put_start(written_key.as_bytes(), len as u64, PutOptions::default())
            .unwrap();
        w.write_at(0, &v).unwrap();
        w.commit().unwrap();

        let checksum = |key: &str| s.get_locations(&[key])[0].clone().unwrap().checksum;
        let whole = xxhash_rust::xxh3::xxh3_64(&v);
        assert_eq!(checksum(&put_key), whole, "put of {len} bytes");
        assert_eq!(checksum(&written_key), whole, "commit of {len} bytes");
        assert_eq!(s.get(put_key.as_bytes()).unwrap(), v);
    }
}

/// Fills a 512 KiB dram store with eight 64 KiB objects, k0 (least recent) to k7.
fn full_store(put_timeout: Duration) -> Store {
    let mut c = config(8 * 64 * KIB);
    c.put_timeout = put_timeout;
    let s = Store::open(c).unwrap();
    for i in 0..8 {
        let key = format!("k{i}");
        let v = value(key.as_bytes(), 64 * KIB as usize);
        s.put(key.as_bytes(), &v, PutOptions::default()).unwrap();
    }
    s
}

/// Evicted space returns only once every reader pinned before the eviction is done (say,
/// one reading the disk through a stall). A put waits for it: evicting more would not help,
/// since what it evicted next would wait behind the same reader.
#[test]
fn a_put_waits_for_space_a_slow_reader_holds_rather_than_evicting_more() {
    let s = full_store(Duration::from_secs(20));
    let slow_reader = s.read(b"k7").unwrap();
    let v = value(b"new", 64 * KIB as usize);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|t| {
        let put = t.spawn(|| {
            let result = s.put(b"new", &v, PutOptions::default());
            let _ = done_tx.send(());
            result
        });
        // The reader holds on past a second, the time a put used to wait before it went
        // on evicting (and then refused the put with NoSpace once the tier was empty).
        assert_eq!(
            done_rx.recv_timeout(Duration::from_millis(1500)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "the put ended while the space was held"
        );
        let evicted: Vec<u32> = (0..8)
            .filter(|i| !s.exists(format!("k{i}").as_bytes()).unwrap())
            .collect();
        assert_eq!(evicted, vec![0], "only what the put needs is evicted");
        assert_eq!(
            slow_reader.bytes().unwrap(),
            value(b"k7", 64 * KIB as usize)
        );
        drop(slow_reader);
        put.join()
            .unwrap()
            .expect("the put takes the space once the reader is done");
    });
    assert_eq!(s.get(b"new").unwrap(), v);
    for i in 1..8 {
        let key = format!("k{i}");
        assert_eq!(
            s.get(key.as_bytes()).unwrap(),
            value(key.as_bytes(), 64 * KIB as usize)
        );
    }
}

/// The wait is bounded by the put's timeout: then the put is refused, saying why, and
/// nothing more is evicted for it.
#[test]
fn a_put_is_refused_after_its_timeout_when_readers_keep_holding_the_evicted_space() {
    let s = full_store(Duration::from_millis(300));
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|t| {
        // Another thread's reader: a guard is not Send, so it is taken there.
        let s = &s;
        t.spawn(move || {
            let slow_reader = s.read(b"k7").unwrap();
            held_tx.send(()).unwrap();
            let _ = done_rx.recv();
            drop(slow_reader);
        });
        held_rx.recv().unwrap();
        let started = std::time::Instant::now();
        let err = s
            .put(b"new", &[5u8; 64 * KIB as usize], PutOptions::default())
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(err.code(), ErrorCode::NoSpace);
        assert!(err.message().contains("held by readers"), "{err}");
        assert!(!s.exists(b"new").unwrap());
        assert!(!s.exists(b"k0").unwrap());
        for i in 1..8 {
            assert!(s.exists(format!("k{i}").as_bytes()).unwrap(), "k{i}");
        }
        done_tx.send(()).unwrap();
    });
    assert!(s.reclaim(Duration::from_secs(5)));
    s.put(b"new", &[5u8; 64 * KIB as usize], PutOptions::default())
        .unwrap();
}

/// A put made while its own thread holds a read guard cannot wait for the evicted space
/// (the guard holds it back): it is refused at once, saying so, and evicts no more.
#[test]
fn a_put_under_its_own_read_guard_is_refused_at_once() {
    let s = full_store(Duration::from_secs(20));
    let guard = s.read(b"k7").unwrap();
    let started = std::time::Instant::now();
    let err = s
        .put(b"new", &[5u8; 64 * KIB as usize], PutOptions::default())
        .unwrap_err();
    // Far below the 20 s it would have waited.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(err.code(), ErrorCode::NoSpace);
    assert!(err.message().contains("this thread"), "{err}");
    for i in 1..8 {
        assert!(s.exists(format!("k{i}").as_bytes()).unwrap(), "k{i}");
    }
    drop(guard);
    assert!(s.reclaim(Duration::from_secs(5)));
    s.put(b"new", &[5u8; 64 * KIB as usize], PutOptions::default())
        .unwrap();
}
