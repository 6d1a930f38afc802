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

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_client::{Client, ClientConfig, Placement};
use strata_engine::{PutOptions, Store, StoreConfig, TierConfig};

use crate::ceiling::fastest;
use crate::engine::pattern;
use crate::harness::{device_tier, loopback_tls, runtime, serve_tiers, timed};
use crate::report::{histogram, Record, Report};

pub struct DeviceParams {
    pub seconds: f64,
    pub sizes: Vec<u64>,
    /// Bytes of the device tier (the transport rounds and the demotion run).
    pub device_capacity: u64,
    /// Pause after connecting, for the client's background prefault of the dram
    /// segments to finish (as in `strata-bench shm`), so it does not compete with the loops.
    pub settle: Duration,
}

impl DeviceParams {
    pub fn full() -> DeviceParams {
        DeviceParams {
            seconds: 2.0,
            sizes: vec![4 << 20, 16 << 20],
            device_capacity: 512 << 20,
            settle: Duration::from_secs(5),
        }
    }

    pub fn quick() -> DeviceParams {
        DeviceParams {
            seconds: 0.1,
            sizes: vec![4 << 20],
            device_capacity: 64 << 20,
            settle: Duration::ZERO,
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
    let served = serve_tiers(
        &server_rt,
        p.device_capacity,
        1 << 30,
        tls,
        Some(dir.path().join("shm.sock")),
        None,
    );
    let client = client_rt.block_on(async {
        let config = ClientConfig {
            server: served.addr.to_string(),
            ca_cert: Some(served.cert.clone()),
            transfer_timeout: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        Client::connect(config).await.expect("connect")
    });
    std::thread::sleep(p.settle);
    for &size in &p.sizes {
        transport_round(p, &client_rt, &client, size, report);
    }
    let stats = client.transport_stats();
    assert!(stats.device_gets > 0 && stats.shm_gets > 0, "{stats:?}");
    served.stop(&server_rt);
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

/// Demotion throughput: a full device tier moved to dram by `demote_tier`.
fn demotion(p: &DeviceParams, report: &mut Report) {
    let size = 4u64 << 20;
    let store = Store::open(StoreConfig {
        tiers: vec![
            device_tier(p.device_capacity),
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
