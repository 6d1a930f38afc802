//! The `strata-server` process: logging, the runtime, the service, and signals.
//!
//! Lives in the library so the binary is one line and the end-to-end tests can build a
//! binary from the very same entry point.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use std::path::Path;

use crate::cluster::{ClusterConfig, LocalMember, Membership};
use crate::metrics::Metrics;
use crate::net::{Service, TlsSource};
use crate::settings::{ClusterArgs, ServerArgs};
use clap::{CommandFactory, FromArgMatches};
use strata_engine::Store;

/// Runs `strata-server` with the process's arguments; exit code 0 after a graceful
/// shutdown, 2 when it cannot start.
pub fn main() -> ExitCode {
    let matches = ServerArgs::command().get_matches();
    let token_on_command_line =
        matches.value_source("auth_token") == Some(clap::parser::ValueSource::CommandLine);
    let args = match ServerArgs::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    // Everything the process creates is private to its user, whatever umask it inherited
    // (the engine also sets each mode itself; this covers what libraries create).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if token_on_command_line {
        tracing::warn!(
            "--auth-token on the command line is visible to every local user \
             (/proc/PID/cmdline); use --auth-token-file or STRATA_AUTH_TOKEN instead"
        );
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-server: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: ServerArgs) -> strata_engine::Result<()> {
    let settings = args.resolve()?;
    // The data dir holds the ssd tier's files, the TLS key and the shm socket: private to
    // the server's user, tightened if it was left open, refused if another user owns it.
    let changes = strata_engine::private_files::private_dir(&settings.data_dir).map_err(|e| {
        strata_engine::Error::new(
            strata_engine::ErrorCode::InvalidArgument,
            format!("data dir {}: {e}", settings.data_dir.display()),
        )
    })?;
    for change in changes {
        tracing::warn!("{change}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| internal(format!("starting the runtime: {e}")))?;
    let metrics = Arc::new(Metrics::new());
    // In the registry's scope, so the engine's own handles (ssd latencies) count there.
    let store = Arc::new(metrics.scope(|| Store::open(settings.store))?);
    let stats = store.stats();
    if let Some((i, device)) = store.device_tier() {
        let d = device.device();
        tracing::info!(
            backend = d.backend(),
            index = d.index(),
            "device tier of {} bytes",
            stats.tiers[i as usize].capacity
        );
    }
    let capacity: u64 = stats.tiers.iter().map(|t| t.capacity).sum();
    let self_signed = matches!(settings.service.tls, TlsSource::SelfSigned { .. });
    for t in stats.tiers {
        if let Some(io) = t.io {
            tracing::info!(
                engine = io.engine,
                direct = io.direct,
                queue_depth = io.queue_depth,
                recovered = io.recovered_records,
                "{} tier of {} bytes",
                t.kind.name(),
                t.capacity
            );
        }
    }
    let service_store = Arc::clone(&store);
    runtime.block_on(async {
        let service = Service::bind_with_metrics(service_store, settings.service, metrics)?;
        // Scripts and tests read these lines: keep their shape. The metrics line (when
        // served) comes first, the certificate line last.
        let mut out = std::io::stdout().lock();
        if let Some(addr) = service.metrics_addr() {
            let _ = writeln!(out, "metrics: http://{addr}/metrics");
        }
        let _ = writeln!(out, "strata-server listening on {}", service.local_addr());
        let _ = writeln!(out, "certificate: {}", service.cert_path().display());
        let _ = out.flush();
        drop(out);
        if let Some(addr) = service.data_addr() {
            tracing::info!("data plane (tcp) listening on {addr}");
        }
        let membership = match &settings.cluster {
            Some(cluster) => {
                let config = cluster_config(cluster, &settings.data_dir, service.local_addr())?;
                let me = LocalMember {
                    host_id: strata_proto::host_id(),
                    capacity,
                    // A self-signed certificate travels in the view, so clients that
                    // trust one member trust them all; an operator's CA needs no help.
                    cert_pem: if self_signed {
                        std::fs::read_to_string(service.cert_path())
                            .map_err(|e| internal(format!("reading the certificate: {e}")))?
                    } else {
                        String::new()
                    },
                };
                let state = service.cluster_state();
                let joined =
                    tokio::task::spawn_blocking(move || Membership::join(config, me, state))
                        .await
                        .map_err(|e| internal(format!("joining the cluster: {e}")))?
                        .map_err(|e| {
                            strata_engine::Error::new(strata_engine::ErrorCode::Unavailable, e)
                        })?;
                let (members, epoch) = service.cluster_state().summary();
                tracing::info!(members, epoch, "cluster view");
                Some((joined, cluster.leave_grace))
            }
            None => None,
        };
        let shutdown = async move {
            shutdown_signal().await;
            if let Some((membership, grace)) = membership {
                // Out of the view first, so clients stop placing here; then serve what
                // was leased just before for `grace`, then stop as a server alone does.
                let _ = tokio::task::spawn_blocking(move || membership.leave()).await;
                tokio::time::sleep(grace).await;
            }
        };
        let drained = service.run(shutdown).await;
        tracing::info!(drained, "stopped serving");
        Ok::<(), strata_engine::Error>(())
    })?;
    // Every connection is closed: nothing else uses the store now.
    drop(runtime);
    if settings.persist_on_shutdown {
        let moved = store.demote_all();
        tracing::info!(moved, "persisted dram contents to ssd");
    }
    // Dropping the store finishes pending ssd frees and syncs its files.
    drop(store);
    tracing::info!("stopped");
    Ok(())
}

/// The cluster flags completed: the node id (from the flag, or the one this data dir
/// keeps) and the address clients reach this server at.
fn cluster_config(
    args: &ClusterArgs,
    data_dir: &Path,
    listen: std::net::SocketAddr,
) -> strata_engine::Result<ClusterConfig> {
    let invalid =
        |m: String| strata_engine::Error::new(strata_engine::ErrorCode::InvalidArgument, m);
    let node_id = match &args.node_id {
        Some(id) => id.clone(),
        None => stored_node_id(data_dir).map_err(|e| internal(format!("node id: {e}")))?,
    };
    let advertise = match &args.advertise_addr {
        Some(a) if a.parse::<std::net::SocketAddr>().is_ok() => a.clone(),
        Some(a) if a.starts_with('[') || a.matches(':').count() == 1 => a.clone(),
        // A host alone (or a bare IPv6 address): the port is the one we listen on.
        Some(a) if a.contains(':') => format!("[{a}]:{}", listen.port()),
        Some(a) => format!("{a}:{}", listen.port()),
        None if listen.ip().is_unspecified() => {
            return Err(invalid(format!(
                "listening on {listen}: give --advertise-addr, the address clients reach                  this server at"
            )))
        }
        None => listen.to_string(),
    };
    Ok(ClusterConfig {
        etcd_endpoints: args.etcd_endpoints.clone(),
        etcd_tls: args.etcd_tls.clone(),
        cluster_id: args.cluster_id.clone(),
        node_id,
        advertise,
        member_ttl: args.member_ttl,
        weight: args.weight,
        run_blocks: args.run_blocks,
        seed: args.seed,
        join_window: args.join_window,
    })
}

/// The node id kept in `<data dir>/node-id`, made (host name and random hex) at first use,
/// so a restarted server owns the same runs, and its recovered ssd tier serves them.
fn stored_node_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) => {
            let id = id.trim().to_owned();
            crate::cluster::membership::check_id("node id", &id)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let host: String = hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect();
            let mut random = [0u8; 4];
            getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
            let tail = u32::from_le_bytes(random);
            let id = if host.is_empty() {
                format!("node-{tail:08x}")
            } else {
                format!("{host}-{tail:08x}")
            };
            std::fs::write(&path, format!("{id}\n"))?;
            tracing::info!(node = %id, "made this server's node id, kept in {}", path.display());
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

fn internal(msg: String) -> strata_engine::Error {
    strata_engine::Error::new(strata_engine::ErrorCode::Internal, msg)
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
