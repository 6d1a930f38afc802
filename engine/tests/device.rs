//! The device tier in the engine: placement, demotion to dram with contents and pins kept,
//! contributed segments (mount, graceful unmount, an owner that stops heart-beating).
//! Every byte crosses the real FFI boundary of the host-sim plugin.

use std::sync::Arc;
use std::time::Duration;

use strata_engine::device::{Backend, Device, DeviceMemory};
use strata_engine::{
    Clock, DeviceOptions, ErrorCode, ManualClock, Placement, PutOptions, Store, StoreConfig,
    TierConfig, TierKind,
};

const KIB: u64 = 1024;

fn options(heartbeat: Duration) -> DeviceOptions {
    DeviceOptions {
        backend: Backend::HostSim,
        index: 0,
        heartbeat_timeout: heartbeat,
    }
}

fn config(device_capacity: u64, heartbeat: Duration) -> StoreConfig {
    let mut device = TierConfig::device(device_capacity, options(heartbeat));
    device.segment_size = device_capacity.max(4096);
    StoreConfig {
        tiers: vec![device, TierConfig::dram(8 << 20)],
        maintenance_interval: None,
        lease_ttl: Duration::from_millis(300),
        shards: 8,
        ..StoreConfig::default()
    }
}

/// A store on the real clock (a graceful unmount waits for leases in real time).
fn store(device_capacity: u64, heartbeat: Duration) -> Store {
    Store::open(config(device_capacity, heartbeat)).unwrap()
}

/// A store on a manual clock: leases and heartbeats age only when the test says so.
fn manual_store(device_capacity: u64, heartbeat: Duration) -> (Store, ManualClock) {
    let (clock, manual) = Clock::manual();
    let s = Store::open_with_clock(config(device_capacity, heartbeat), clock).unwrap();
    (s, manual)
}

fn value(i: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (j as u32).wrapping_mul(2654435761).wrapping_add(i * 7919) as u8)
        .collect()
}

fn device_put(s: &Store, key: &[u8], v: &[u8], pin: bool) {
    let opts = PutOptions {
        pin,
        placement: Placement::Device,
    };
    s.put(key, v, opts).unwrap();
}

#[test]
fn puts_land_in_the_device_tier_and_read_back() {
    let s = store(1 << 20, Duration::from_secs(5));
    let v = value(1, 300_000);
    s.put(b"auto", &v, PutOptions::default()).unwrap();
    let lease = s.get_locations(&[b"auto"])[0].clone().unwrap();
    assert_eq!(lease.extent.tier, 0, "the top tier under its watermark");
    assert_eq!(s.get(b"auto").unwrap(), v);
    let st = s.stats();
    assert_eq!(st.tiers[0].kind, TierKind::Device);
    assert_eq!((st.tiers[0].objects, st.tiers[1].objects), (1, 0));
    // Asking for dram skips the device tier.
    let dram = PutOptions {
        placement: Placement::Dram,
        ..Default::default()
    };
    s.put(b"dram", &v, dram).unwrap();
    assert_eq!(
        s.get_locations(&[b"dram"])[0].clone().unwrap().extent.tier,
        1
    );
    // A value larger than any device segment goes to dram under Auto, is refused under Device.
    let big = value(2, 2 << 20);
    s.put(b"big", &big, PutOptions::default()).unwrap();
    assert_eq!(s.get(b"big").unwrap(), big);
    let e = s
        .put(
            b"big2",
            &big,
            PutOptions {
                placement: Placement::Device,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
}

#[test]
fn eviction_demotes_device_objects_to_dram_keeping_contents_checksums_and_pins() {
    let (s, clock) = manual_store(256 * KIB, Duration::from_secs(5));
    let values: Vec<Vec<u8>> = (0..4).map(|i| value(i, 60 * KIB as usize)).collect();
    for (i, v) in values.iter().enumerate() {
        device_put(&s, &[i as u8], v, false);
    }
    let checksums: Vec<u64> = (0..4u8)
        .map(|i| s.get_locations(&[[i]])[0].clone().unwrap().checksum)
        .collect();
    // 4 x 60 KiB of 256 KiB is over the 90% mark: maintenance demotes the oldest.
    clock.advance(Duration::from_millis(350)); // the leases just taken end
    s.run_maintenance();
    let st = s.stats();
    assert!(st.counters.demotions >= 1, "{:?}", st.counters);
    assert!(st.tiers[1].objects >= 1);
    let demoted = s.get_locations(&[[0u8]])[0].clone().unwrap();
    assert_eq!(
        demoted.extent.tier, 1,
        "the least recently used went to dram"
    );
    assert_eq!(demoted.checksum, checksums[0], "the checksum moved with it");
    for (i, v) in values.iter().enumerate() {
        assert_eq!(&s.get(&[i as u8]).unwrap(), v, "object {i} intact");
    }
    // Everything demoted to make room; the device tier stays usable afterwards.
    assert!(s.demote_tier(0) >= 1);
    device_put(&s, b"after", &values[1], false);
    assert_eq!(s.get(b"after").unwrap(), values[1]);
}

fn client_memory(size: u64) -> DeviceMemory {
    // Another "process": its own device context, allocating and exporting as an engine does.
    let device: Arc<dyn Device> = Backend::HostSim.open(0).unwrap();
    DeviceMemory::alloc(&device, size).unwrap()
}

#[test]
fn a_mounted_segment_takes_objects_and_gives_them_back_on_unmount() {
    let s = store(0, Duration::from_secs(5));
    let (tier, _) = s.device_tier().unwrap();
    assert_eq!(tier, 0);
    assert_eq!(s.stats().tiers[0].capacity, 0, "no segment of its own");
    let memory = client_memory(1 << 20);
    let segment = s
        .mount_segment(&memory.export().unwrap(), 1 << 20, "test")
        .unwrap();
    assert_eq!(s.stats().tiers[0].capacity, 1 << 20);
    let values: Vec<Vec<u8>> = (0..5).map(|i| value(i, 100_000)).collect();
    for (i, v) in values.iter().enumerate() {
        device_put(&s, &[i as u8], v, i == 0);
    }
    let lease = s.get_locations(&[[3u8]])[0].clone().unwrap();
    assert_eq!(u32::from(lease.extent.segment), segment);
    // The owner sees the bytes in its own memory: they were copied there, not elsewhere.
    let mut seen = vec![0u8; 100_000];
    memory.read(lease.extent.offset, &mut seen).unwrap();
    assert_eq!(seen, values[3]);

    let report = s.unmount_segment(segment).unwrap();
    assert_eq!((report.moved, report.dropped), (5, 0), "{report:?}");
    assert_eq!(s.stats().tiers[0].capacity, 0);
    for (i, v) in values.iter().enumerate() {
        let lease = s.get_locations(&[[i as u8]])[0].clone().unwrap();
        assert_eq!(lease.extent.tier, 1);
        assert_eq!(&s.get(&[i as u8]).unwrap(), v);
    }
    assert_eq!(s.stats().counters.unmounted_objects, 0);
    // A second unmount, a heartbeat of it, or a mount of junk: clear errors.
    assert_eq!(
        s.unmount_segment(segment).unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert_eq!(
        s.heartbeat_segment(segment).unwrap_err().code(),
        ErrorCode::NotFound
    );
    let junk = strata_engine::device::IpcHandle([7; 128]);
    assert_eq!(
        s.mount_segment(&junk, 1 << 20, "x").unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
}

#[test]
fn a_silent_owner_loses_its_segment_and_only_its_objects() {
    let (s, clock) = manual_store(256 * KIB, Duration::from_millis(200));
    let memory = client_memory(1 << 20);
    let segment = s
        .mount_segment(&memory.export().unwrap(), 1 << 20, "test")
        .unwrap();
    // Fill the server's own segment first (under the watermark), then the mounted one.
    let own = value(100, 200 * KIB as usize);
    device_put(&s, b"own", &own, false);
    let big = value(1, 300 * KIB as usize);
    for i in 0..3u8 {
        device_put(&s, &[i], &big, false);
        assert_eq!(
            u32::from(s.get_locations(&[[i]])[0].clone().unwrap().extent.segment),
            segment
        );
    }
    let dram = value(2, 1000);
    s.put(
        b"dram",
        &dram,
        PutOptions {
            placement: Placement::Dram,
            ..Default::default()
        },
    )
    .unwrap();
    // Heart-beating keeps it; silence past the timeout drops it.
    for _ in 0..3 {
        clock.advance(Duration::from_millis(100));
        s.heartbeat_segment(segment).unwrap();
        s.run_maintenance();
    }
    assert!(s.exists(&[0]).unwrap());
    clock.advance(Duration::from_millis(150));
    s.run_maintenance();
    assert!(
        s.exists(&[0]).unwrap(),
        "within the timeout of the last beat"
    );
    clock.advance(Duration::from_millis(100));
    s.run_maintenance();
    for i in 0..3u8 {
        assert_eq!(s.get(&[i]).unwrap_err().code(), ErrorCode::NotFound);
        assert!(!s.exists(&[i]).unwrap());
    }
    assert_eq!(s.stats().counters.unmounted_objects, 3);
    assert_eq!(
        s.get(b"own").unwrap(),
        own,
        "the server's own segment is untouched"
    );
    assert_eq!(s.get(b"dram").unwrap(), dram);
    assert!(s.reclaim(Duration::from_secs(2)));
    let st = s.stats();
    assert_eq!(st.tiers[0].capacity, 256 * KIB);
    drop(memory); // the owner frees its memory; the store no longer maps it
}

/// A put that finds the device tier full, behind a reader that holds the space its eviction
/// retired, goes to dram (which has room) rather than wait for that reader: only the last
/// tier that can take a put waits for its retired space up to the put timeout.
#[test]
fn a_put_goes_to_the_tier_below_rather_than_wait_behind_a_slow_reader() {
    let s = store(8 * 64 * KIB, Duration::from_secs(5));
    let v = |i: u32| value(i, 64 * KIB as usize);
    for i in 0..8u32 {
        device_put(&s, format!("d{i}").as_bytes(), &v(i), false);
    }
    // dram past its watermark too, so the put comes to the evicting pass.
    let dram = PutOptions {
        placement: Placement::Dram,
        ..Default::default()
    };
    for i in 0..116u32 {
        s.put(format!("m{i}").as_bytes(), &v(100 + i), dram)
            .unwrap();
    }
    let slow_reader = s.read(b"m0").unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|t| {
        let put = t.spawn(|| {
            let result = s.put(b"new", &v(999), PutOptions::default());
            let _ = done_tx.send(());
            result
        });
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(5)),
            Ok(()),
            "the put waited behind the reader (the device tier's retired space)"
        );
        put.join().unwrap().unwrap();
    });
    drop(slow_reader);
    let at = s.get_locations(&[b"new"])[0].clone().unwrap();
    assert_eq!(at.extent.tier, 1, "the put went to dram");
    assert_eq!(s.get(b"new").unwrap(), v(999));
    for i in 0..8u32 {
        assert_eq!(s.get(format!("d{i}").as_bytes()).unwrap(), v(i), "d{i}");
    }
    for i in 0..116u32 {
        assert_eq!(
            s.get(format!("m{i}").as_bytes()).unwrap(),
            v(100 + i),
            "m{i}"
        );
    }
}

/// A populated device tier is written through once at open (host-sim's pages faulted in)
/// and then serves as any other: every byte of it writable and read back.
#[test]
fn a_populated_device_tier_opens_whole_and_serves() {
    let mut c = config(16 * MIB_U64 + 123 * KIB, Duration::from_secs(5));
    c.tiers[0].populate = true;
    let s = Store::open(c).unwrap();
    let st = s.stats();
    assert_eq!(
        st.tiers[0].capacity,
        16 * MIB_U64 + 123 * KIB,
        "two whole chunks and a tail"
    );
    let v = value(7, 3 * MIB_U64 as usize);
    device_put(&s, b"whole", &v, false);
    assert_eq!(s.get(b"whole").unwrap(), v);
}

const MIB_U64: u64 = 1 << 20;
