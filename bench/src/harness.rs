//! The bench's harness, shared by the workloads that run strata's service in this
//! process: tokio runtimes, a service on loopback (with its TLS, data plane and tiers),
//! clients for it, and the timed loop every throughput figure comes from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use strata_engine::device::Backend;
use strata_engine::{DeviceOptions, Store, StoreConfig, TierConfig};
use strata_server::net::{Service, ServiceConfig, TlsSource};

use crate::report::histogram;

pub(crate) fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A host-sim device tier of `capacity` bytes in one segment.
pub(crate) fn device_tier(capacity: u64) -> TierConfig {
    device_tier_of(capacity, Backend::HostSim)
}

/// A device tier of `capacity` bytes in one segment, on device 0 of `backend`.
pub(crate) fn device_tier_of(capacity: u64, backend: Backend) -> TierConfig {
    let mut tier = TierConfig::device(
        capacity,
        DeviceOptions {
            backend,
            index: 0,
            heartbeat_timeout: Duration::from_secs(5),
        },
    );
    tier.segment_size = capacity;
    tier
}

/// A strata service running on `rt` in this process, with a prefaulted dram tier of
/// `capacity` bytes.
pub(crate) struct Served {
    pub addr: std::net::SocketAddr,
    /// The store the service serves, for its figures.
    pub store: Arc<Store>,
    pub cert: std::path::PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<bool>,
}

/// A self-signed certificate in `dir` for a server on loopback.
pub(crate) fn loopback_tls(dir: &std::path::Path) -> TlsSource {
    TlsSource::SelfSigned {
        dir: dir.to_path_buf(),
        names: vec!["localhost".into(), "127.0.0.1".into()],
    }
}

/// A plain TCP data plane on a free loopback port.
pub(crate) fn loopback_data_plane() -> strata_server::net::DataPlaneConfig {
    strata_server::net::DataPlaneConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        tls: false,
        transfer_timeout: Duration::from_secs(120),
    }
}

pub(crate) fn serve(
    rt: &tokio::runtime::Runtime,
    capacity: u64,
    tls: TlsSource,
    shm_socket: Option<std::path::PathBuf>,
) -> Served {
    serve_tiers(rt, 0, capacity, tls, shm_socket, None)
}

/// [`serve`] with a host-sim device tier of `device_capacity` bytes on top (none if 0).
pub(crate) fn serve_tiers(
    rt: &tokio::runtime::Runtime,
    device_capacity: u64,
    capacity: u64,
    tls: TlsSource,
    shm_socket: Option<std::path::PathBuf>,
    data_plane: Option<strata_server::net::DataPlaneConfig>,
) -> Served {
    let mut tiers = Vec::new();
    if device_capacity > 0 {
        tiers.push(device_tier(device_capacity));
    }
    tiers.push(TierConfig {
        populate: true,
        ..TierConfig::dram(capacity)
    });
    let store = StoreConfig {
        tiers,
        ..StoreConfig::default()
    };
    serve_store(rt, store, tls, shm_socket, data_plane)
}

/// A service on loopback over a store opened from `store`.
pub(crate) fn serve_store(
    rt: &tokio::runtime::Runtime,
    store: StoreConfig,
    tls: TlsSource,
    shm_socket: Option<std::path::PathBuf>,
    data_plane: Option<strata_server::net::DataPlaneConfig>,
) -> Served {
    let store = Arc::new(Store::open(store).expect("store"));
    let config = ServiceConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        auth_token: None,
        shutdown_grace: Duration::from_secs(1),
        max_connections: 4096,
        shm_socket,
        data_plane,
        metrics_addr: None,
    };
    let service =
        rt.block_on(async { Service::bind(Arc::clone(&store), config).expect("bind the service") });
    let (addr, cert) = (service.local_addr(), service.cert_path().to_path_buf());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(service.run(async {
        let _ = stopped.await;
    }));
    Served {
        addr,
        store,
        cert,
        stop,
        task,
    }
}

impl Served {
    /// A client of this service on `transport`, with a transfer timeout long enough for
    /// the bench's largest batches.
    pub fn client(
        &self,
        rt: &tokio::runtime::Runtime,
        transport: strata_client::Transport,
    ) -> Arc<strata_client::Client> {
        let config = strata_client::ClientConfig {
            server: self.addr.to_string(),
            ca_cert: Some(self.cert.clone()),
            transport,
            transfer_timeout: Duration::from_secs(120),
            ..strata_client::ClientConfig::default()
        };
        rt.block_on(async {
            Arc::new(
                strata_client::Client::connect(config)
                    .await
                    .expect("connect"),
            )
        })
    }

    pub fn stop(self, rt: &tokio::runtime::Runtime) {
        let _ = self.stop.send(());
        let _ = rt.block_on(self.task);
    }
}

/// Runs `op(task, i)` from `concurrency` tasks until `seconds` pass; returns the count,
/// the elapsed time and the latency histogram (ns).
pub(crate) fn timed<F, Fut>(
    rt: &tokio::runtime::Runtime,
    concurrency: usize,
    seconds: f64,
    op: F,
) -> (u64, Duration, Histogram<u64>)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let bound = Duration::from_secs_f64(seconds);
    let total = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|task| {
                let op = Arc::clone(&op);
                let total = Arc::clone(&total);
                tokio::spawn(async move {
                    let mut h = histogram();
                    let mut i = 0u64;
                    // Bounded by time and by count, whichever comes first.
                    while start.elapsed() < bound && i < 10_000_000 {
                        let t = Instant::now();
                        op(task, i).await;
                        let _ = h.record(t.elapsed().as_nanos().max(1) as u64);
                        i += 1;
                    }
                    total.fetch_add(i, Ordering::Relaxed);
                    h
                })
            })
            .collect();
        let mut all = histogram();
        for t in tasks {
            all.add(t.await.expect("bench task")).expect("same bounds");
        }
        (total.load(Ordering::Relaxed), start.elapsed(), all)
    })
}
