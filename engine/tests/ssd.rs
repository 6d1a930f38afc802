//! The engine over a dram tier and an ssd tier: demotion, promotion, admission, corruption,
//! restart. Real files in a temporary directory, the engine the platform gives (io_uring
//! where available).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use strata_engine::{
    Admission, Clock, ErrorCode, Extent, ManualClock, PutOptions, RecoveryMode, SsdOptions, Store,
    StoreConfig, TierConfig,
};
use strata_proto::msg::Location;

const KIB: usize = 1024;
const MIB: u64 = 1 << 20;
/// Dram holds 32 of these values; the tests write up to three times that.
const VALUE: usize = 256 * KIB;

fn config(dir: &Path, admission: Admission) -> StoreConfig {
    let mut ssd = SsdOptions::new(dir);
    ssd.admission = admission;
    StoreConfig {
        tiers: vec![TierConfig::dram(8 * MIB), TierConfig::ssd(64 * MIB, ssd)],
        maintenance_interval: None,
        shards: 8,
        ..StoreConfig::default()
    }
}

fn open(dir: &Path) -> Store {
    Store::open(config(dir, Admission::AdmitAll)).unwrap()
}

fn key(i: usize) -> Vec<u8> {
    format!("model@tp_rank:0@{i:08x}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    let seed = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..VALUE)
        .map(|j| (seed.rotate_left((j % 61) as u32) >> 7) as u8 ^ (j as u8))
        .collect()
}

/// Which tier holds `key` now (0 dram, 1 ssd).
fn tier_of(s: &Store, key: &[u8]) -> u8 {
    s.get_locations(&[key]).pop().unwrap().unwrap().extent.tier
}

fn fill(s: &Store, n: usize) {
    fill_from(s, 0, n);
}

#[test]
fn three_times_dram_reads_back_byte_identical_some_from_ssd() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    fill(&s, 96);
    let st = s.stats();
    assert!(st.counters.demotions >= 60, "{:?}", st.counters);
    assert_eq!(
        st.counters.evictions, st.counters.demotions,
        "nothing dropped"
    );
    assert_eq!(st.objects, 96);
    assert!(st.tiers[1].objects >= 60);
    let io = st.tiers[1].io.clone().expect("ssd figures");
    assert!(io.write_bytes >= 60 * VALUE as u64, "{io:?}");
    for i in 0..96 {
        assert_eq!(s.get(&key(i)).unwrap(), value(i), "object {i}");
    }
    assert!(s.stats().tiers[1].io.clone().unwrap().read_ops > 0);
    // A put never lands on ssd directly, so the largest put is dram's.
    assert_eq!(s.max_value_len(), 8 * MIB);
}

/// Puts from many threads into a full dram: one of them evicts at a time, in batches,
/// while the others wait for the space it frees. None is refused for want of space (the
/// ssd below has room for all) and every value reads back identical.
#[test]
fn concurrent_puts_past_a_full_dram_all_land_and_read_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (threads, per_thread) = (8, 24); // 192 values: six times dram
    std::thread::scope(|scope| {
        for t in 0..threads {
            let s = &s;
            scope.spawn(move || {
                for i in (t..threads * per_thread).step_by(threads) {
                    s.put(&key(i), &value(i), PutOptions::default())
                        .unwrap_or_else(|e| panic!("put {i}: {e}"));
                }
            });
        }
    });
    let st = s.stats();
    assert!(st.counters.demotions >= 150, "{:?}", st.counters);
    for i in 0..threads * per_thread {
        assert!(
            s.get(&key(i)).unwrap() == value(i),
            "value {i} came back different"
        );
    }
}

#[test]
fn a_hot_object_is_promoted_past_the_watermark_and_maintenance_demotes_colder_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    fill(&s, 40);
    s.run_maintenance();
    s.reclaim(Duration::from_secs(5));
    // Fill dram past its watermark (90% of 32 values) while leaving room for one more.
    let mut next = 40;
    while (s.stats().tiers[0].used as f64) <= 0.9 * (8 * MIB) as f64 {
        s.put(&key(next), &value(next), PutOptions::default())
            .unwrap();
        next += 1;
    }
    let dram = s.stats().tiers[0].clone();
    assert!(dram.used + VALUE as u64 <= dram.capacity, "{dram:?}");
    let hot = key(0);
    assert_eq!(tier_of(&s, &hot), 1, "the oldest object was demoted");
    assert_eq!(s.get(&hot).unwrap(), value(0));
    assert_eq!(s.get(&hot).unwrap(), value(0));
    assert_eq!(
        tier_of(&s, &hot),
        0,
        "promoted although dram is past its watermark"
    );
    assert_eq!(s.stats().counters.promotions, 1);
    s.run_maintenance();
    s.reclaim(Duration::from_secs(5));
    let dram = s.stats().tiers[0].clone();
    assert!(
        dram.used as f64 <= 0.9 * dram.capacity as f64,
        "maintenance brought dram back under its watermark: {dram:?}"
    );
    assert_eq!(
        tier_of(&s, &hot),
        0,
        "the hot object stays; colder ones went down"
    );
    for i in 0..next {
        assert_eq!(s.get(&key(i)).unwrap(), value(i), "object {i}");
    }
}

#[test]
fn a_second_read_promotes_into_dram_when_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    fill(&s, 40);
    let cold = key(0);
    assert_eq!(tier_of(&s, &cold), 1, "the oldest object was demoted");
    // Make room in dram so promotion is allowed (under the watermark).
    for i in 30..40 {
        s.remove(&key(i), true).unwrap();
    }
    s.reclaim(Duration::from_secs(5));
    assert_eq!(s.get(&cold).unwrap(), value(0));
    assert_eq!(tier_of(&s, &cold), 1, "one read is not enough");
    assert_eq!(s.get(&cold).unwrap(), value(0));
    assert_eq!(tier_of(&s, &cold), 0, "promoted after its second read");
    assert_eq!(s.stats().counters.promotions, 1);
    assert_eq!(s.get(&cold).unwrap(), value(0), "and served from dram");
}

#[test]
fn second_hit_admission_drops_victims_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(config(dir.path(), Admission::SecondHit)).unwrap();
    fill(&s, 8);
    for i in 0..4 {
        s.get(&key(i)).unwrap(); // Read once while in dram.
    }
    fill_from(&s, 8, 64); // Push the first eight out of dram.
    for i in 0..4 {
        assert_eq!(
            s.get(&key(i)).unwrap(),
            value(i),
            "read victims are demoted"
        );
    }
    for i in 4..8 {
        assert_eq!(
            s.get(&key(i)).unwrap_err().code(),
            ErrorCode::NotFound,
            "unread victims are dropped"
        );
    }
}

/// A store on a manual clock (leases end when the test says), with `key(0)` on ssd and
/// room in dram for promotions; returns it with `key(0)`'s leased ssd extent.
fn one_object_on_ssd(dir: &Path) -> (Store, ManualClock, Extent) {
    let (clock, manual) = Clock::manual();
    let s = Store::open_with_clock(config(dir, Admission::AdmitAll), clock).unwrap();
    fill(&s, 40);
    for i in 30..40 {
        s.remove(&key(i), true).unwrap();
    }
    s.reclaim(Duration::from_secs(5));
    let lease = s.get_locations(&[key(0)]).pop().unwrap().unwrap();
    assert_eq!(lease.extent.tier, 1, "the oldest object was demoted");
    (s, manual, lease.extent)
}

fn location(e: &Extent) -> Location {
    Location {
        tier: e.tier,
        segment: u32::from(e.segment),
        offset: e.offset,
        len: e.len,
    }
}

/// What a data-plane reader leased on `at` gets.
fn read_at(s: &Store, at: &Extent) -> strata_engine::Result<Vec<u8>> {
    let mut buf = vec![0u8; at.len as usize];
    s.read_value_at(&key(0), &location(at), &mut buf)
        .map(|()| buf)
}

/// A promotion moves a leased object: the reader holding the old location must still
/// read it there, and demoting the object again must not write its bytes a second time.
#[test]
fn a_promoted_object_keeps_its_ssd_copy_for_leased_readers_and_returns_to_it_without_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock, on_ssd) = one_object_on_ssd(dir.path());
    for _ in 0..2 {
        assert_eq!(s.get(&key(0)).unwrap(), value(0));
    }
    assert_eq!(tier_of(&s, &key(0)), 0, "promoted by its second read");
    assert_eq!(
        read_at(&s, &on_ssd).expect("the leased ssd location still holds the value"),
        value(0)
    );

    // Once the leases end, push it out of dram with new puts. Its lease counted as a read
    // in dram, which protects it from unread objects: the new ones are read too.
    clock.advance(Duration::from_secs(60));
    let before = s.stats();
    fill_and_read_from(&s, 100, 140);
    let after = s.stats();
    assert_eq!(tier_of(&s, &key(0)), 1, "demoted again");
    let now = s.get_locations(&[key(0)]).pop().unwrap().unwrap().extent;
    assert_eq!(now, on_ssd, "back on its own ssd copy");
    assert_eq!(s.get(&key(0)).unwrap(), value(0));
    // Every other demotion writes its record (header block and value); this one wrote
    // nothing.
    let demoted = after.counters.demotions - before.counters.demotions;
    let (io0, io1) = (before.tiers[1].io.clone(), after.tiers[1].io.clone());
    let written = io1.unwrap().write_bytes - io0.unwrap().write_bytes;
    assert!(demoted >= 2, "{demoted}");
    assert_eq!(
        written,
        (demoted - 1) * (VALUE as u64 + 4096), // a header block, then the value (4 KiB multiple)
        "{demoted} demotions"
    );
}

/// A lease taken before a promotion names the shadow, so the dram copy may go back onto
/// it while that lease runs (else reads under leases fill dram with copies that cannot
/// leave, and puts are refused). A lease on the dram copy holds it there.
#[test]
fn a_promoted_object_leased_only_on_its_shadow_can_be_evicted_onto_it() {
    let dir = tempfile::tempdir().unwrap();
    let (s, clock, on_ssd) = one_object_on_ssd(dir.path());
    for _ in 0..2 {
        assert_eq!(read_at(&s, &on_ssd).unwrap(), value(0));
    }
    let promoted = s.get_locations(&[key(0)]).pop().unwrap().unwrap().extent;
    assert_eq!(promoted.tier, 0, "promoted");
    // That lease names the dram copy: new puts must leave it in dram.
    fill_from(&s, 100, 140);
    assert_eq!(tier_of(&s, &key(0)), 0, "leased in dram: stays");

    // Once every lease has ended, promote it again without leasing the dram copy: the
    // lease taken on ssd before the promotion runs on while puts push it back down.
    clock.advance(Duration::from_secs(60));
    fill_and_read_from(&s, 200, 240);
    let back = s.get_locations(&[key(0)]).pop().unwrap().unwrap().extent;
    assert_eq!(back, on_ssd, "demoted onto its shadow");
    for _ in 0..2 {
        assert_eq!(read_at(&s, &on_ssd).unwrap(), value(0));
    }
    assert_eq!(s.stats().counters.promotions, 2);
    fill_from(&s, 300, 340);
    assert_eq!(
        read_at(&s, &on_ssd).expect("the ssd lease still reads"),
        value(0)
    );
    let st = s.stats();
    assert_eq!(st.tiers[0].objects + st.tiers[1].objects, st.objects);
    let now = s.get_locations(&[key(0)]).pop().unwrap().unwrap().extent;
    assert_eq!(now, on_ssd, "evicted onto its shadow under the ssd lease");
    assert_eq!(s.get(&key(0)).unwrap(), value(0));
}

/// The TCP data plane reads a leased ssd object by location. Those reads count as hits
/// and promote it, like gets: a value read only that way must not stay on disk for good.
#[test]
fn data_plane_reads_of_an_ssd_object_promote_it() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _clock, on_ssd) = one_object_on_ssd(dir.path());
    assert_eq!(read_at(&s, &on_ssd).unwrap(), value(0));
    assert_eq!(tier_of(&s, &key(0)), 1, "one read is not enough");
    assert_eq!(read_at(&s, &on_ssd).unwrap(), value(0));
    assert_eq!(tier_of(&s, &key(0)), 0, "promoted after its second read");
    assert_eq!(s.stats().counters.promotions, 1);
    assert_eq!(
        read_at(&s, &on_ssd).unwrap(),
        value(0),
        "shadow still served"
    );
}

/// Removing a promoted object frees both its copies.
#[test]
fn removing_a_promoted_object_frees_its_ssd_copy_too() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _clock, on_ssd) = one_object_on_ssd(dir.path());
    let ssd_used = |s: &Store| s.stats().tiers[1].used;
    let with_it = ssd_used(&s);
    for _ in 0..2 {
        s.get(&key(0)).unwrap();
    }
    assert_eq!(tier_of(&s, &key(0)), 0);
    assert_eq!(
        ssd_used(&s),
        with_it,
        "the ssd copy stays while it is in dram"
    );
    s.remove(&key(0), true).unwrap();
    assert!(s.reclaim(Duration::from_secs(5)));
    assert!(
        ssd_used(&s) < with_it,
        "its ssd record was freed: {} -> {}",
        with_it,
        ssd_used(&s)
    );
    assert_eq!(
        read_at(&s, &on_ssd).unwrap_err().code(),
        ErrorCode::LeaseExpired
    );
}

fn fill_from(s: &Store, from: usize, to: usize) {
    for i in from..to {
        s.put(&key(i), &value(i), PutOptions::default()).unwrap();
    }
}

/// [`fill_from`], reading each value once after its put: objects read in dram are evicted
/// after unread ones (segmented LRU), so only read ones push out another read object.
fn fill_and_read_from(s: &Store, from: usize, to: usize) {
    for i in from..to {
        s.put(&key(i), &value(i), PutOptions::default()).unwrap();
        assert_eq!(s.get(&key(i)).unwrap(), value(i));
    }
}

#[test]
fn a_damaged_record_is_reported_corrupt_dropped_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    fill(&s, 64);
    let victim = key(1);
    let lease = s.get_locations(&[&victim]).pop().unwrap().unwrap();
    assert_eq!(lease.extent.tier, 1);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(
            dir.path()
                .join(format!("strata-{:03}.ssd", lease.extent.segment)),
        )
        .unwrap();
    // Past the header block, in the value.
    file.write_all_at(b"rot", lease.extent.offset + 4096 + 1000)
        .unwrap();
    file.sync_data().unwrap();
    let err = s.get(&victim).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Corrupt, "{err}");
    assert_eq!(s.get(&victim).unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(s.stats().counters.corrupt, 1);
    assert_eq!(s.stats().tiers[1].io.clone().unwrap().corrupt_records, 1);
    for i in (0..64).filter(|&i| i != 1) {
        assert_eq!(s.get(&key(i)).unwrap(), value(i), "object {i}");
    }
}

/// Demotion writes the checksum recorded at commit into the ssd record, not one computed
/// from the bytes it finds in dram: a value whose bytes differ from what its writer
/// vouched for is caught when read back from ssd, never laundered into a valid record.
#[test]
fn demotion_keeps_the_commit_checksum_so_bytes_that_differ_from_it_are_caught_on_ssd() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (bad, good) = (b"vouched-wrong".as_slice(), b"vouched-right".as_slice());
    for (k, checksum) in [
        (bad, xxhash_rust::xxh3::xxh3_64(&value(1)) ^ 1),
        (good, xxhash_rust::xxh3::xxh3_64(&value(2))),
    ] {
        let mut w = s.put_start(k, VALUE as u64, PutOptions::default()).unwrap();
        w.write_at(0, &value(if k == bad { 1 } else { 2 })).unwrap();
        w.commit_with_checksum(checksum).unwrap();
    }
    fill(&s, 64); // pushes both onto ssd
    assert_eq!((tier_of(&s, bad), tier_of(&s, good)), (1, 1));
    assert_eq!(s.get(good).unwrap(), value(2));
    let err = s.get(bad).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Corrupt, "{err}");
    assert_eq!(s.get(bad).unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(s.stats().counters.corrupt, 1);
}

#[test]
fn ssd_contents_survive_a_reopen_and_removals_stay_removed() {
    let dir = tempfile::tempdir().unwrap();
    let on_ssd: Vec<usize> = {
        let s = open(dir.path());
        fill(&s, 64);
        s.remove(&key(2), false).unwrap();
        (0..64)
            .filter(|&i| i != 2 && tier_of(&s, &key(i)) == 1)
            .collect()
    };
    assert!(on_ssd.len() >= 30);
    let s = open(dir.path());
    for &i in &on_ssd {
        assert_eq!(s.get(&key(i)).unwrap(), value(i), "object {i}");
    }
    assert_eq!(s.get(&key(2)).unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(s.stats().tiers[1].objects, on_ssd.len() as u64);
    assert_eq!(s.stats().tiers[0].objects, 0, "dram starts empty");
}

#[test]
fn demote_all_persists_dram_contents_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        fill(&s, 20);
        assert!(s.stats().tiers[0].objects > 0);
        assert_eq!(s.demote_all(), 20);
        assert_eq!(s.stats().tiers[0].objects, 0);
    }
    let s = open(dir.path());
    for i in 0..20 {
        assert_eq!(s.get(&key(i)).unwrap(), value(i), "object {i}");
    }
}

#[test]
fn recovery_none_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        fill(&s, 64);
    }
    let mut c = config(dir.path(), Admission::AdmitAll);
    c.tiers[1].ssd.as_mut().unwrap().recovery = RecoveryMode::None;
    let s = Store::open(c).unwrap();
    assert_eq!(s.stats().objects, 0);
    assert_eq!(s.get(&key(0)).unwrap_err().code(), ErrorCode::NotFound);
}

#[test]
fn an_ssd_tier_must_sit_below_a_memory_tier() {
    let dir = tempfile::tempdir().unwrap();
    let c = StoreConfig {
        tiers: vec![TierConfig::ssd(64 * MIB, SsdOptions::new(dir.path()))],
        ..StoreConfig::default()
    };
    let err = Store::open(c).err().expect("refused");
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.message().contains("last tier"), "{err}");
}
