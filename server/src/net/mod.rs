//! The QUIC service: a thin layer that puts the engine's operations on the network.
//!
//! One QUIC connection per client process; one bi-directional stream per request
//! ([`strata_proto::wire`] documents the frames). Each stream is served by its own task,
//! so a slow transfer never holds up a lookup behind it, and a request that breaks the
//! protocol gets an error frame on its own stream while the connection keeps serving.
//!
//! Shutdown: stop accepting connections and streams, let in-flight requests finish within
//! a grace period, then close every connection with [`wire::CLOSE_SHUTDOWN`].

pub mod data;
mod request;
mod session;
pub mod shm;
mod stream;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use strata_proto::limits;
use strata_proto::msg::{DeviceOffer, HandshakeResponse, Limits};
use strata_proto::wire::{self, PROTOCOL_VERSION};
use strata_proto::{Error, ErrorCode, Result};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::metrics::http::MetricsEndpoint;
use crate::metrics::{Health, Metrics, UPKEEP_INTERVAL};
pub use data::DataPlaneConfig;
use data::{DataPlane, DataRuntime};
use request::{Failure, Shared};
use session::Session;
use shm::ShmExport;
use strata_engine::Store;
use stream::reply_error;
pub use tls::TlsSource;

/// How the service listens and whom it lets in.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Where the TLS certificate comes from.
    pub tls: TlsSource,
    /// When set, a connection must present this token in its handshake before anything else.
    pub auth_token: Option<String>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Where to listen for same-host clients of the shared-memory transport (a Unix
    /// socket path; [`shm::SOCKET_FILE`] in the data dir by default). `None`: the
    /// transport is off and every client uses QUIC.
    pub shm_socket: Option<PathBuf>,
    /// The TCP data plane for value bytes between hosts; `None`: off (remote clients move
    /// bytes on QUIC streams).
    pub data_plane: Option<DataPlaneConfig>,
    /// QUIC connections served at once, at most; one more is closed at once with
    /// [`wire::CLOSE_BUSY`] and a reason naming the limit.
    pub max_connections: u64,
    /// TCP address of the HTTP port serving `/metrics` and `/health`; `None`: not served
    /// (the service still counts, for an embedder that renders [`Service::metrics`]).
    pub metrics_addr: Option<SocketAddr>,
}

/// A bound, not yet running, QUIC service. Create it inside a tokio runtime.
pub struct Service {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    cert_path: PathBuf,
    shutdown_grace: Duration,
    metrics_endpoint: Option<MetricsEndpoint>,
    health: Arc<Health>,
    /// The data plane's threads (see [`DataRuntime`]); dropped last, with the service.
    data_runtime: Option<DataRuntime>,
}

impl Service {
    /// Loads (or generates) the certificate and binds the UDP socket, with a registry of
    /// its own for metrics.
    pub fn bind(store: Arc<Store>, config: ServiceConfig) -> Result<Service> {
        Service::bind_with_metrics(store, config, Arc::new(Metrics::new()))
    }

    /// [`Service::bind`] counting into `metrics` (whose scope the store was opened in, for
    /// the engine's own handles).
    pub fn bind_with_metrics(
        store: Arc<Store>,
        config: ServiceConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Service> {
        let metrics_endpoint = config.metrics_addr.map(MetricsEndpoint::bind).transpose()?;
        let identity = tls::load_identity(&config.tls)?;
        let cert_path = identity.cert_path.clone();
        let rustls_config = tls::rustls_config(identity)?;
        let (data, data_runtime) = match &config.data_plane {
            Some(dp) => {
                let tls = dp.tls.then(|| rustls_config.clone());
                let runtime = DataRuntime::start()?;
                // The listener registers with the reactor of the runtime it is made in.
                let plane = {
                    let _in = runtime.handle().enter();
                    DataPlane::bind(dp, Arc::clone(&store), tls, Arc::clone(&metrics))?
                };
                (Some(Arc::new(plane)), Some(runtime))
            }
            None => (None, None),
        };
        let server_config = tls::server_config(rustls_config)?;
        let endpoint = Endpoint::server(server_config, config.listen).map_err(|e| {
            let msg = format!("cannot listen on {}: {e}", config.listen);
            Error::new(ErrorCode::Unavailable, msg)
        })?;
        let shm = match &config.shm_socket {
            Some(path) => {
                match ShmExport::bind(path, Arc::clone(&store), metrics.shm_refused.clone()) {
                    Ok(export) => export.map(Arc::new),
                    Err(e) => {
                        tracing::warn!("shared-memory transport off: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let mut instance = [0u8; 8];
        getrandom::fill(&mut instance)
            .map_err(|e| Error::new(ErrorCode::Internal, format!("no randomness: {e}")))?;
        let hello = HandshakeResponse {
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: PROTOCOL_VERSION,
            host_id: strata_proto::host_id(),
            lease_ttl_ms: store.config().lease_ttl.as_millis() as u64,
            put_timeout_ms: store.config().put_timeout.as_millis() as u64,
            limits: Limits {
                max_key_len: limits::MAX_KEY_LEN as u32,
                max_batch_keys: limits::MAX_BATCH_KEYS as u32,
                max_prefix_groups: limits::MAX_PREFIX_GROUPS as u32,
                max_group_keys: limits::MAX_GROUP_KEYS as u32,
                max_header_len: limits::MAX_HEADER_LEN,
                max_value_len: store.max_value_len(),
            },
            instance: u64::from_le_bytes(instance),
            shm: None,
            device: store.device_tier().map(|(tier, d)| DeviceOffer {
                tier,
                backend: d.options().backend.spec(),
                device_index: d.options().index,
                heartbeat_timeout_ms: d.options().heartbeat_timeout.as_millis() as u64,
            }),
            data_plane: None,
        };
        let cluster: Arc<crate::cluster::ClusterState> = Arc::default();
        metrics.watch_cluster(Arc::clone(&cluster));
        let shared = Arc::new(Shared {
            store,
            auth_token: config.auth_token,
            hello,
            connections: AtomicU64::new(0),
            shm,
            data,
            metrics,
            cluster,
            max_connections: config.max_connections,
        });
        Ok(Service {
            endpoint,
            shared,
            cert_path,
            shutdown_grace: config.shutdown_grace,
            metrics_endpoint,
            health: Arc::new(Health::default()),
            data_runtime,
        })
    }

    /// The address the service listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// The shared-memory transport's socket, when it is on.
    pub fn shm_socket(&self) -> Option<&Path> {
        self.shared.shm.as_deref().map(ShmExport::path)
    }

    /// The data plane's TCP address, when it is on.
    pub fn data_addr(&self) -> Option<SocketAddr> {
        self.shared.data.as_deref().map(DataPlane::local_addr)
    }

    /// The HTTP address of `/metrics` and `/health`, when served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint
            .as_ref()
            .map(MetricsEndpoint::local_addr)
    }

    /// The service's metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The cluster view this service answers `ClusterView` with: hand it to
    /// [`crate::cluster::Membership::join`] (a server alone leaves it empty).
    pub fn cluster_state(&self) -> Arc<crate::cluster::ClusterState> {
        Arc::clone(&self.shared.cluster)
    }

    /// The certificate file clients should trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Serves until `shutdown` completes, then shuts down gracefully. Returns whether every
    /// in-flight request finished within the grace period.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> bool {
        let tracker = TaskTracker::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        // The metrics port outlives the drain, answering /health with 503 meanwhile.
        let (http_stop_tx, http_stop_rx) = watch::channel(false);
        let http = self.metrics_endpoint.take().map(|endpoint| {
            tokio::spawn(endpoint.serve(
                Arc::clone(&self.shared.metrics),
                Arc::clone(&self.shared.store),
                Arc::clone(&self.health),
                http_stop_rx,
            ))
        });
        tracker.spawn(upkeep(Arc::clone(&self.shared.metrics), stop_rx.clone()));
        if let Some(shm) = &self.shared.shm {
            tracker.spawn(Arc::clone(shm).serve(stop_rx.clone()));
        }
        if let (Some(data), Some(runtime)) = (&self.shared.data, &self.data_runtime) {
            // On the data plane's threads; so are its connections, which it spawns.
            let serve = Arc::clone(data).serve(stop_rx.clone(), tracker.clone());
            runtime.handle().spawn(tracker.track_future(serve));
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let shared = Arc::clone(&self.shared);
                    let stop = stop_rx.clone();
                    let streams = tracker.clone();
                    tracker.spawn(async move {
                        match incoming.await {
                            Ok(conn) => serve_connection(shared, conn, stop, streams).await,
                            Err(e) => tracing::debug!("handshake failed: {e}"),
                        }
                    });
                }
            }
        }
        tracing::info!("shutting down: no new connections or requests");
        self.health.stop();
        self.endpoint.set_server_config(None);
        let _ = stop_tx.send(true);
        tracker.close();
        let drained = tokio::time::timeout(self.shutdown_grace, tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                "requests still in flight after {:?}; closing anyway",
                self.shutdown_grace
            );
        }
        self.endpoint
            .close(wire::CLOSE_SHUTDOWN.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        let _ = http_stop_tx.send(true);
        if let Some(http) = http {
            let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
        }
        drained
    }
}

/// Folds histogram samples into buckets now and then, so they never pile up unscraped.
async fn upkeep(metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(UPKEEP_INTERVAL) => metrics.upkeep(),
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    conn: Connection,
    mut stop: watch::Receiver<bool>,
    streams: TaskTracker,
) {
    let holding = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
    if holding > shared.max_connections {
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        shared.metrics.quic_connections.refused.increment(1);
        let reason = format!(
            "too many connections: this server takes at most {}; retry later",
            shared.max_connections
        );
        tracing::debug!("refused {}: {reason}", conn.remote_address());
        conn.close(wire::CLOSE_BUSY.into(), reason.as_bytes());
        return;
    }
    let open = shared.metrics.quic_connections.open();
    tracing::debug!("connection from {}", conn.remote_address());
    let session = Arc::new(Session::default());
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept_bi() => accepted,
            _ = stop.changed() => break,
        };
        let Ok((mut send, mut recv)) = accepted else {
            break; // closed by the peer, timed out, or lost
        };
        let shared = Arc::clone(&shared);
        let session = Arc::clone(&session);
        let conn = conn.clone();
        streams.spawn(async move {
            let started = Instant::now();
            let mut op = None;
            let served = stream::serve(&shared, &session, &mut send, &mut recv, &mut op).await;
            let error = match &served {
                Ok(()) => None,
                Err(Failure::Reply(e) | Failure::Refuse(e)) => Some(e.code().name()),
                Err(Failure::Broken) => Some(crate::metrics::LOST),
            };
            // Counted before an error frame goes out: a refusal waits up to a second for
            // its frame to arrive, which is not the request's time.
            shared.metrics.request(op, started, error);
            match served {
                Ok(()) => {}
                Err(Failure::Reply(e)) => reply_error(&mut send, &mut recv, &e).await,
                Err(Failure::Refuse(e)) => {
                    reply_error(&mut send, &mut recv, &e).await;
                    // Let the error frame reach the client before the close overtakes it.
                    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                    conn.close(wire::CLOSE_UNAUTHORIZED.into(), e.message().as_bytes());
                }
                Err(Failure::Broken) => {
                    let _ = send.reset(0u8.into());
                }
            }
        });
    }
    shared.close_session(&session);
    drop(open);
    shared.connections.fetch_sub(1, Ordering::Relaxed);
}
