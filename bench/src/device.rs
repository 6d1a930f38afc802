//! `strata-bench device`: the device transport (host-sim) next to the shm transport and a
//! memcpy of the same sizes, in one run; and demotion from the device tier to dram.
//!
//! The server runs in this process with a host-sim device tier above dram; the client is
//! the default one (`auto`), which imports the device segments and maps the dram ones.
//! Values are placed explicitly (`Placement::Device` / `Placement::Dram`), so each path is
//! measured alone. Host-sim "device memory" is shared memory and its copies are memcpy
//! behind the C ABI, so the device rows measure what the transport and the FFI boundary
//! add on top of the copy — on a GPU the copy itself would be the PCIe/NVLink transfer.
//!
//! Demotion is measured on an embedded store: fill the device tier, then `demote_tier(0)`
//! moves everything to dram (one device-to-host copy per object, straight into its dram
//! extent); GB/s = bytes moved / time.
//!
//! Device to device (`d2d` rows): the client registers two allocations of its own device
//! memory as buffers, puts from one into the device tier and gets into the other, every
//! byte checked; beside them, the device's own copy between the same two allocations is
//! the ceiling. `--backend cuda` runs all of it on a GPU (`device/gpu-check.sh`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_client::{Client, ClientConfig, MemoryKind, Placement};
use strata_engine::device::{Backend, DeviceMemory};
use strata_engine::{PutOptions, Store, StoreConfig, TierConfig};

use crate::ceiling::fastest;
use crate::engine::pattern;
use crate::harness::{device_tier_of, loopback_tls, runtime, serve_store, timed};
use crate::report::{histogram, Record, Report};

pub struct DeviceParams {
    pub seconds: f64,
    pub sizes: Vec<u64>,
    /// Bytes of the device tier (the transport rounds and the demotion run).
    pub device_capacity: u64,
    /// Pause after connecting, for the client's background prefault of the dram
    /// segments to finish (as in `strata-bench shm`), so it does not compete with the loops.
    pub settle: Duration,
    /// The device tier's backend (and the client's, which follows the server's).
    pub backend: Backend,
    /// Value sizes of the device-to-device rows.
    pub d2d_sizes: Vec<u64>,
    /// A `strata-server` to measure, with the certificate to trust, instead of a service
    /// in this process. A vendor runtime imports device memory only in another process
    /// (CUDA refuses a process's own IPC handles), so on a GPU the server runs apart.
    pub server: Option<(String, std::path::PathBuf)>,
}

impl DeviceParams {
    pub fn full() -> DeviceParams {
        DeviceParams {
            seconds: 2.0,
            sizes: vec![4 << 20, 16 << 20],
            device_capacity: 512 << 20,
            settle: Duration::from_secs(5),
            backend: Backend::HostSim,
            d2d_sizes: vec![1 << 20, 4 << 20, 16 << 20, 64 << 20],
            server: None,
        }
    }

    pub fn quick() -> DeviceParams {
        DeviceParams {
            seconds: 0.1,
            sizes: vec![4 << 20],
            device_capacity: 64 << 20,
            settle: Duration::ZERO,
            backend: Backend::HostSim,
            d2d_sizes: vec![1 << 20],
            server: None,
        }
    }
}

/// Values in each read working set.
const WORKING_SET: usize = 8;

pub fn run(p: &DeviceParams, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server_rt = runtime(2);
    let client_rt = runtime(2);
    let tls = loopback_tls(dir.path());
    let served = p.server.is_none().then(|| {
        let store = StoreConfig {
            tiers: vec![
                device_tier_of(p.device_capacity, p.backend.clone()),
                TierConfig {
                    populate: true,
                    ..TierConfig::dram(1 << 30)
                },
            ],
            ..StoreConfig::default()
        };
        serve_store(
            &server_rt,
            store,
            tls,
            Some(dir.path().join("shm.sock")),
            None,
        )
    });
    let (server, ca_cert) = match (&p.server, &served) {
        (Some((addr, cert)), _) => (addr.clone(), cert.clone()),
        (None, Some(s)) => (s.addr.to_string(), s.cert.clone()),
        (None, None) => unreachable!("a service is started when no server is named"),
    };
    let client = client_rt.block_on(async {
        let config = ClientConfig {
            server,
            ca_cert: Some(ca_cert),
            transfer_timeout: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        Client::connect(config).await.expect("connect")
    });
    std::thread::sleep(p.settle);
    for &size in &p.sizes {
        transport_round(p, &client_rt, &client, size, report);
    }
    for &size in &p.d2d_sizes {
        if size <= p.device_capacity / 4 {
            device_to_device(p, &client_rt, &client, size, report);
        }
    }
    mounted_segment(&client_rt, &client, report);
    let stats = client.transport_stats();
    assert!(stats.device_gets > 0 && stats.shm_gets > 0, "{stats:?}");
    if let Some(served) = served {
        served.stop(&server_rt);
    }
    demotion(p, report);
}

fn transport_round(
    p: &DeviceParams,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    size: u64,
    report: &mut Report,
) {
    // The ceiling: memcpy from as many sources as the gets read.
    let sources: Arc<Vec<Vec<u8>>> = Arc::new((0..WORKING_SET).map(|_| pattern(size)).collect());
    let dst = Arc::new(tokio::sync::Mutex::new(vec![1u8; size as usize]));
    let memcpy = fastest(size as usize, |way| {
        let (sources, dst) = (Arc::clone(&sources), Arc::clone(&dst));
        let (n, t, h) = timed(rt, 1, p.seconds, move |_, i| {
            let (sources, dst) = (Arc::clone(&sources), Arc::clone(&dst));
            async move {
                way.copy(&mut dst.lock().await, &sources[i as usize % WORKING_SET]);
            }
        });
        Record::new("device", "memcpy", "copy", "ceiling")
            .size(size)
            .timed(n, n * size, t, Some(&h))
    });
    let ceiling = memcpy.bytes_per_s();
    report.add(memcpy);

    let value = pattern(size);
    for (system, placement) in [
        ("strata-device", Placement::Device),
        ("strata-shm", Placement::Dram),
    ] {
        let keys: Arc<Vec<String>> = Arc::new(
            (0..WORKING_SET)
                .map(|i| format!("{system}-{size}-{i}"))
                .collect(),
        );
        rt.block_on(async {
            client.remove_all(true).await.expect("remove_all");
            for k in keys.iter() {
                client
                    .put_placed(k.as_bytes(), &value, placement)
                    .await
                    .expect("warm put");
            }
        });
        let (n, t, h) = {
            let (cl, keys, dst) = (client.clone(), Arc::clone(&keys), Arc::clone(&dst));
            timed(rt, 1, p.seconds, move |_, i| {
                let (cl, keys, dst) = (cl.clone(), Arc::clone(&keys), Arc::clone(&dst));
                async move {
                    let key = &keys[i as usize % WORKING_SET];
                    let got = cl.get_into(key.as_bytes(), &mut dst.lock().await).await;
                    assert_eq!(got.expect("get_into") as u64, size);
                }
            })
        };
        let get = Record::new("device", system, "get", "warm")
            .size(size)
            .timed(n, n * size, t, Some(&h));
        let ratio = get.bytes_per_s() / ceiling;
        report.add(get.with("of_memcpy", crate::engine::round3(ratio)));

        // Puts: distinct keys, as many as the tier holds under its watermark, then the
        // tier is emptied (untimed) and the loop goes on until the time is up.
        let per_pass = ((p.device_capacity as f64 * 0.8) as u64 / size).max(1);
        let mut h = histogram();
        let (mut ops, mut busy) = (0u64, Duration::ZERO);
        let bound = Duration::from_secs_f64(p.seconds);
        let mut pass = 0;
        while busy < bound && ops < 100_000 {
            rt.block_on(client.remove_all(true)).expect("remove_all");
            for i in 0..per_pass {
                let key = format!("{system}-put-{size}-{pass}-{i}");
                let start = Instant::now();
                rt.block_on(client.put_placed(key.as_bytes(), &value, placement))
                    .expect("put");
                let took = start.elapsed();
                busy += took;
                let _ = h.record(took.as_nanos().max(1) as u64);
                ops += 1;
            }
            pass += 1;
        }
        let put = Record::new("device", system, "put", "cold")
            .size(size)
            .timed(ops, ops * size, busy, Some(&h));
        let ratio = put.bytes_per_s() / ceiling;
        report.add(put.with("of_memcpy", crate::engine::round3(ratio)));
    }
}

/// Puts from and gets into the client's own device memory (registered buffers), against
/// the device's copy between the same two allocations.
fn device_to_device(
    p: &DeviceParams,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    size: u64,
    report: &mut Report,
) {
    let Some(dev) = rt.block_on(client.device()).expect("the client's device") else {
        return eprintln!("device: the client has no device route; no d2d rows");
    };
    let value = pattern(size);
    let src = DeviceMemory::alloc(&dev, size).expect("source allocation");
    let dst = DeviceMemory::alloc(&dev, size).expect("destination allocation");
    src.write(0, &value).expect("fill the source");

    let bound = Duration::from_secs_f64(p.seconds);
    let mut h = histogram();
    let (mut ops, started) = (0u64, Instant::now());
    while started.elapsed() < bound && ops < 100_000 {
        let t = Instant::now();
        src.copy_to(0, &dst, 0, size as usize).expect("device copy");
        dev.synchronize().expect("synchronize");
        let _ = h.record(t.elapsed().as_nanos().max(1) as u64);
        ops += 1;
    }
    let ceiling = Record::new("device", "device-copy", "copy", "d2d")
        .size(size)
        .timed(ops, ops * size, started.elapsed(), Some(&h))
        .with("backend", dev.backend());
    let ceiling_bps = ceiling.bytes_per_s();
    report.add(ceiling);

    // SAFETY: both allocations outlive their registration (unregistered below, before
    // they are dropped), and the client only copies within their bounds.
    let (src_id, dst_id) = unsafe {
        (
            client
                .register_buffer(src.ptr() as usize, size as usize, MemoryKind::Device)
                .expect("register the source"),
            client
                .register_buffer(dst.ptr() as usize, size as usize, MemoryKind::Device)
                .expect("register the destination"),
        )
    };
    let keys: Vec<String> = (0..WORKING_SET)
        .map(|i| format!("d2d-{size}-{i}"))
        .collect();
    let mut h = histogram();
    let started = Instant::now();
    rt.block_on(async {
        client.remove_all(true).await.expect("remove_all");
        for k in &keys {
            let t = Instant::now();
            client
                .put_from_buffer(k.as_bytes(), src_id, 0, size as usize)
                .await
                .expect("put from device memory");
            let _ = h.record(t.elapsed().as_nanos().max(1) as u64);
        }
    });
    let put = Record::new("device", "strata-device", "put", "d2d")
        .size(size)
        .timed(
            keys.len() as u64,
            keys.len() as u64 * size,
            started.elapsed(),
            Some(&h),
        );
    let ratio = put.bytes_per_s() / ceiling_bps;
    report.add(put.with("of_device_copy", crate::engine::round3(ratio)));

    let mut h = histogram();
    let (mut ops, started) = (0u64, Instant::now());
    while started.elapsed() < bound && ops < 100_000 {
        let key = &keys[ops as usize % keys.len()];
        let t = Instant::now();
        let got = rt
            .block_on(client.get_into_buffer(key.as_bytes(), dst_id, 0))
            .expect("get into device memory");
        assert_eq!(got as u64, size);
        let _ = h.record(t.elapsed().as_nanos().max(1) as u64);
        ops += 1;
    }
    let get = Record::new("device", "strata-device", "get", "d2d")
        .size(size)
        .timed(ops, ops * size, started.elapsed(), Some(&h));
    let ratio = get.bytes_per_s() / ceiling_bps;
    report.add(get.with("of_device_copy", crate::engine::round3(ratio)));

    // Every byte: what the last get left in device memory is the value put.
    let mut back = vec![0u8; size as usize];
    dst.read(0, &mut back).expect("read the destination back");
    assert!(back == value, "a d2d get left other bytes than the put's");
    let stats = rt.block_on(client.stats()).expect("stats");
    client.unregister_buffer(src_id).expect("unregister");
    client.unregister_buffer(dst_id).expect("unregister");
    assert!(
        stats
            .tiers
            .first()
            .is_some_and(|t| t.objects >= keys.len() as u64),
        "the d2d values live in the device tier: {:?}",
        stats.tiers.first()
    );
}

/// A segment of this process's device memory mounted into the server's device tier (the
/// server imports it), values put on the device tier and read back while it is mounted,
/// then the unmount, after which every value must still read back (moved down a tier) or
/// be counted as dropped.
fn mounted_segment(rt: &tokio::runtime::Runtime, client: &Client, report: &mut Report) {
    let Some(dev) = rt.block_on(client.device()).expect("the client's device") else {
        return;
    };
    const SEGMENT: u64 = 64 << 20;
    const VALUE: u64 = 1 << 20;
    let started = Instant::now();
    let segment = rt
        .block_on(client.mount_segment(&dev, SEGMENT))
        .expect("mount a segment of this process's device memory");
    let mount_took = started.elapsed();
    let value = pattern(VALUE);
    let keys: Vec<String> = (0..32).map(|i| format!("mounted-{i}")).collect();
    rt.block_on(async {
        client.remove_all(true).await.expect("remove_all");
        for k in &keys {
            client
                .put_placed(k.as_bytes(), &value, Placement::Device)
                .await
                .expect("put on the device tier");
            assert_eq!(client.get(k.as_bytes()).await.expect("get"), value);
        }
    });
    let number = segment.segment();
    let unmounted = rt.block_on(segment.unmount()).expect("unmount");
    let mut kept = 0u64;
    rt.block_on(async {
        for k in &keys {
            if let Ok(got) = client.get(k.as_bytes()).await {
                assert_eq!(got, value, "{k} changed across the unmount");
                kept += 1;
            }
        }
    });
    assert_eq!(
        kept + unmounted.dropped,
        keys.len() as u64,
        "every value is kept or counted as dropped"
    );
    report.add(
        Record::new("device", "strata-device", "mount", "segment")
            .size(SEGMENT)
            .timed(1, SEGMENT, mount_took, None)
            .with("segment", number)
            .with("moved_at_unmount", unmounted.moved)
            .with("dropped_at_unmount", unmounted.dropped),
    );
}

/// Demotion throughput: a full device tier moved to dram by `demote_tier`.
fn demotion(p: &DeviceParams, report: &mut Report) {
    let size = 4u64 << 20;
    let store = Store::open(StoreConfig {
        tiers: vec![
            device_tier_of(p.device_capacity, p.backend.clone()),
            TierConfig {
                populate: true,
                ..TierConfig::dram(p.device_capacity * 2)
            },
        ],
        maintenance_interval: None,
        ..StoreConfig::default()
    })
    .expect("store");
    let value = pattern(size);
    let count = (p.device_capacity as f64 * 0.85) as u64 / size;
    let on_device = PutOptions {
        placement: Placement::Device,
        ..Default::default()
    };
    for i in 0..count {
        store
            .put(format!("demote-{i}").as_bytes(), &value, on_device)
            .expect("fill the device tier");
    }
    let start = Instant::now();
    let moved = store.demote_tier(0);
    let took = start.elapsed();
    assert_eq!(moved, count, "every object moved");
    let mut h = histogram();
    let _ = h.record(took.as_nanos().max(1) as u64);
    report.add(
        Record::new("device", "strata-embedded", "demote", "pressure")
            .size(size)
            .timed(moved, moved * size, took, None)
            .with(
                "gb_per_s",
                crate::engine::round3(moved as f64 * size as f64 / took.as_secs_f64() / 1e9),
            ),
    );
    assert_eq!(store.get(b"demote-0").expect("demoted object"), value);
}
