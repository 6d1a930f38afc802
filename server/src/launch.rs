//! The `strata-server` process: logging, the runtime, the service, and signals.
//!
//! Lives in the library so the binary is one line and the end-to-end tests can build a
//! binary from the very same entry point.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::net::Service;
use crate::settings::ServerArgs;
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
        let drained = service.run(shutdown_signal()).await;
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
