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
mod handlers;
pub mod shm;
mod stream;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint};
use strata_proto::limits;
use strata_proto::msg::{DeviceOffer, HandshakeResponse, Limits};
use strata_proto::wire::{self, PROTOCOL_VERSION};
use strata_proto::{Error, ErrorCode, Result};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::Store;
use data::DataPlane;
pub use data::DataPlaneConfig;
use handlers::{Session, Shared};
use shm::ShmExport;
use stream::{reply_error, Failure};
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
}

/// A bound, not yet running, QUIC service. Create it inside a tokio runtime.
pub struct Service {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    cert_path: PathBuf,
    shutdown_grace: Duration,
}

impl Service {
    /// Loads (or generates) the certificate and binds the UDP socket.
    pub fn bind(store: Arc<Store>, config: ServiceConfig) -> Result<Service> {
        let identity = tls::load_identity(&config.tls)?;
        let cert_path = identity.cert_path.clone();
        let rustls_config = tls::rustls_config(identity)?;
        let data = match &config.data_plane {
            Some(dp) => {
                let tls = dp.tls.then(|| rustls_config.clone());
                Some(Arc::new(DataPlane::bind(dp, Arc::clone(&store), tls)?))
            }
            None => None,
        };
        let server_config = tls::server_config(rustls_config)?;
        let endpoint = Endpoint::server(server_config, config.listen).map_err(|e| {
            let msg = format!("cannot listen on {}: {e}", config.listen);
            Error::new(ErrorCode::Unavailable, msg)
        })?;
        let shm = match &config.shm_socket {
            Some(path) => match ShmExport::bind(path, Arc::clone(&store)) {
                Ok(export) => export.map(Arc::new),
                Err(e) => {
                    tracing::warn!("shared-memory transport off: {e}");
                    None
                }
            },
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
        let shared = Arc::new(Shared {
            store,
            auth_token: config.auth_token,
            hello,
            connections: AtomicU64::new(0),
            shm,
            data,
        });
        Ok(Service {
            endpoint,
            shared,
            cert_path,
            shutdown_grace: config.shutdown_grace,
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

    /// The certificate file clients should trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Serves until `shutdown` completes, then shuts down gracefully. Returns whether every
    /// in-flight request finished within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let tracker = TaskTracker::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(shm) = &self.shared.shm {
            tracker.spawn(Arc::clone(shm).serve(stop_rx.clone()));
        }
        if let Some(data) = &self.shared.data {
            tracker.spawn(Arc::clone(data).serve(stop_rx.clone(), tracker.clone()));
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
        drained
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    conn: Connection,
    mut stop: watch::Receiver<bool>,
    streams: TaskTracker,
) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
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
            match handlers::serve(&shared, &session, &mut send, &mut recv).await {
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
    session.close(&shared);
    shared.connections.fetch_sub(1, Ordering::Relaxed);
}
