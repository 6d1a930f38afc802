//! The `strata` command-line client. Exit codes: 0 success, 1 not found, 2 any other error
//! (its code and message on stderr).
//!
//! Lives in the library so the binary is one line and the end-to-end tests can build a
//! binary from the very same entry point.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::{Client, ClientConfig, Error, ErrorCode, ServerStats, Transport, DEFAULT_SERVER};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// `println!` that ends the process quietly (status 0) when standard output's reader has
/// gone (`strata stats | head`), instead of panicking as `println!` does.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_line(format_args!($($arg)*))
    };
}

fn write_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        quiet_on_broken_pipe(&e);
        eprintln!("strata: writing standard output: {e}");
        std::process::exit(2);
    }
}

/// Ends the process with status 0 if `e` says the reader of standard output went away.
fn quiet_on_broken_pipe(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
}

/// Reads `input` whole, refusing it with `TooLarge` as soon as it passes `limit` bytes.
fn read_bounded(input: impl Read, limit: u64, what: &str) -> Result<Vec<u8>, Error> {
    let mut value = Vec::new();
    input
        .take(limit.saturating_add(1))
        .read_to_end(&mut value)
        .map_err(|e| io_error(format!("reading {what}"), e))?;
    if value.len() as u64 > limit {
        let msg =
            format!("{what} holds more than the server's limit of {limit} bytes for one value");
        return Err(Error::new(ErrorCode::TooLarge, msg));
    }
    Ok(value)
}

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Command-line client of a strata server"
)]
struct Cli {
    /// Server address.
    #[arg(long, env = "STRATA_SERVER", default_value = DEFAULT_SERVER, global = true)]
    server: String,
    /// Certificate to trust (the server's server-cert.pem). Default: the one a local
    /// server keeps in the default data dir, and the system's roots.
    #[arg(long, env = "STRATA_CA", global = true)]
    ca: Option<PathBuf>,
    /// Name to check the server's certificate against (default: the host of --server).
    #[arg(long, env = "STRATA_SERVER_NAME", global = true)]
    server_name: Option<String>,
    /// The server's auth token, if it requires one. A flag's value is visible to every
    /// local user (/proc/PID/cmdline): prefer --auth-token-file or STRATA_AUTH_TOKEN.
    #[arg(long, env = "STRATA_AUTH_TOKEN", hide_env_values = true, global = true)]
    auth_token: Option<String>,
    /// File holding the server's auth token (one line, not readable by other users).
    #[arg(
        long,
        env = "STRATA_AUTH_TOKEN_FILE",
        global = true,
        conflicts_with = "auth_token"
    )]
    auth_token_file: Option<PathBuf>,
    /// Seconds to wait for the connection and for each operation.
    #[arg(long, env = "STRATA_TIMEOUT", default_value_t = 10.0, global = true)]
    timeout: f64,
    /// How value bytes travel: quic, shm (same host, shared memory), tcp (the server's
    /// data plane) or auto. One command moves one value, so mapping the server's segments
    /// or opening data connections rarely pays: quic by default.
    #[arg(long, env = "STRATA_TRANSPORT", default_value = "quic", global = true)]
    transport: Transport,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store FILE (or standard input with `-`) under KEY. An existing KEY is success.
    Put {
        key: String,
        file: PathBuf,
        /// Never evict it.
        #[arg(long)]
        pin: bool,
    },
    /// Write the value of KEY to standard output or to FILE.
    Get {
        key: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print whether each KEY is stored; exit 1 if any is not.
    Exists {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print how many leading KEYs (one per block) are all stored.
    Prefix {
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Remove KEY (with --force even when leased or being written).
    Rm {
        key: String,
        #[arg(long)]
        force: bool,
    },
    /// Print the server's figures.
    Stats {
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print the cluster the server belongs to: each member's address, state, weight,
    /// capacity and fill.
    Cluster {
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Round trip to the server; print its version and host.
    Ping,
    /// Allocate SIZE bytes of device memory here (through the device module) and mount
    /// them as a segment of the server's device tier; heart-beat it until SIGINT/SIGTERM,
    /// then unmount gracefully (objects move to dram). SIZE takes KiB/MiB/GiB.
    MountSegment {
        size: String,
        /// Device module: host-sim, cuda, ascend or a plugin path (the server's).
        #[arg(long, default_value = "host-sim")]
        device_plugin: String,
        /// Device index (the server's).
        #[arg(long, default_value_t = 0)]
        device_index: u32,
    },
}

/// Bytes from `1048576`, `64KiB`, `16MiB`, `1GiB`.
fn parse_size(text: &str) -> Result<u64, Error> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = match &text[digits.len()..] {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => {
            let msg = format!("size unit {other:?} is not one of B, KiB, MiB, GiB");
            return Err(Error::new(ErrorCode::InvalidArgument, msg));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::new(ErrorCode::InvalidArgument, format!("bad size {text:?}")))
}

/// Runs `strata` with the process's arguments and returns its exit code.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if matches.value_source("auth_token") == Some(clap::parser::ValueSource::CommandLine) {
        eprintln!(
            "strata: warning: --auth-token on the command line is visible to every local \
             user (/proc/PID/cmdline); use --auth-token-file or STRATA_AUTH_TOKEN instead"
        );
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: {e}");
            if e.code() == ErrorCode::NotFound {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn io_error(what: String, e: std::io::Error) -> Error {
    Error::new(ErrorCode::InvalidArgument, format!("{what}: {e}"))
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    if !(cli.timeout.is_finite() && cli.timeout > 0.0) {
        let msg = format!(
            "--timeout must be a positive number of seconds, not {}",
            cli.timeout
        );
        return Err(Error::new(ErrorCode::InvalidArgument, msg));
    }
    let timeout = Duration::from_secs_f64(cli.timeout);
    let config = ClientConfig {
        server: cli.server,
        ca_cert: cli.ca,
        server_name: cli.server_name,
        auth_token: cli.auth_token,
        auth_token_file: cli.auth_token_file,
        connect_timeout: timeout,
        transfer_timeout: timeout,
        transport: cli.transport,
        ..ClientConfig::default()
    };
    let client = Client::connect(config).await?;
    let code = command(&client, cli.command).await;
    client.close().await;
    code
}

async fn command(client: &Client, command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Put { key, file, pin } => {
            // Read no more than the server takes: a larger input is refused as it arrives,
            // not after it has all been held in memory.
            let limit = client.server_info().await?.limits.max_value_len;
            let value = if file.as_os_str() == "-" {
                read_bounded(std::io::stdin().lock(), limit, "standard input")?
            } else {
                let what = file.display().to_string();
                let f = std::fs::File::open(&file)
                    .map_err(|e| io_error(format!("reading {what}"), e))?;
                read_bounded(f, limit, &what)?
            };
            if pin {
                client.put_pinned(key.as_bytes(), &value).await?;
            } else {
                client.put_from(key.as_bytes(), &value).await?;
            }
        }
        Command::Get { key, output } => {
            let value = client.get(key.as_bytes()).await?;
            match output {
                Some(path) => std::fs::write(&path, &value)
                    .map_err(|e| io_error(format!("writing {}", path.display()), e))?,
                None => {
                    let mut out = std::io::stdout().lock();
                    if let Err(e) = out.write_all(&value).and_then(|()| out.flush()) {
                        quiet_on_broken_pipe(&e);
                        return Err(io_error("writing standard output".into(), e));
                    }
                }
            }
        }
        Command::Exists { keys } => {
            let mut all = true;
            for (key, present) in keys.iter().zip(client.batch_exists(&keys).await) {
                let present = present?;
                all &= present;
                outln!("{key}\t{present}");
            }
            if !all {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Prefix { keys } => {
            let groups: Vec<[&String; 1]> = keys.iter().map(|k| [k]).collect();
            outln!("{}", client.prefix_len(&groups).await?);
        }
        Command::Rm { key, force } => client.remove(key.as_bytes(), force).await?,
        Command::Stats { json } => {
            let stats = client.stats().await?;
            let view = client.cluster_view().await?;
            if json {
                let mut value = stats_json(&stats);
                if !view.members.is_empty() {
                    value["cluster"] = view_json(&view);
                }
                outln!("{value}");
            } else {
                print_stats(&stats);
                if !view.members.is_empty() {
                    let active = view
                        .members
                        .iter()
                        .filter(|m| m.state == crate::MemberState::Active)
                        .count();
                    outln!(
                        "cluster {} (epoch {}): node {} of {} members, {} active",
                        view.cluster_id,
                        view.epoch,
                        view.node_id,
                        view.members.len(),
                        active
                    );
                }
            }
        }
        Command::Cluster { json } => {
            let cluster =
                crate::ClusterClient::connect(client.config().clone(), Default::default()).await?;
            let view = cluster.view();
            let members = cluster.member_stats().await;
            if json {
                let mut value = view_json(&view);
                for (m, (_, stats)) in value["members"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                    .zip(&members)
                {
                    m["stats"] = match stats {
                        Ok(s) => stats_json(s),
                        Err(e) => serde_json::json!({ "error": e.to_string() }),
                    };
                }
                outln!("{value}");
            } else if view.members.is_empty() {
                outln!("{} runs alone (no cluster)", client.config().server);
            } else {
                print_cluster(&view, &members);
            }
        }
        Command::MountSegment {
            size,
            device_plugin,
            device_index,
        } => {
            let size = parse_size(&size)?;
            let device = crate::device::Backend::parse(&device_plugin)
                .open(device_index)
                .map_err(|e| Error::new(ErrorCode::Unavailable, e.to_string()))?;
            let segment = client.mount_segment(&device, size).await?;
            outln!("mounted segment {} ({size} bytes)", segment.segment());
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| io_error("SIGTERM handler".into(), e))?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let report = segment.unmount().await?;
            outln!(
                "unmounted: {} objects moved to dram, {} dropped",
                report.moved,
                report.dropped
            );
        }
        Command::Ping => {
            let rtt = client.ping().await?;
            let info = client.server_info().await?;
            outln!(
                "pong from {}: strata-server {} on {}, protocol {}, lease {} ms, rtt {:.3} ms",
                client.config().server,
                info.server_version,
                info.host_id,
                info.protocol,
                info.lease_ttl_ms,
                rtt.as_secs_f64() * 1e3
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The stats as JSON: every field of the message, named as there.
fn stats_json(s: &ServerStats) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

/// A view as JSON, without the members' certificates.
fn view_json(view: &crate::ClusterView) -> serde_json::Value {
    let mut value = serde_json::to_value(view)
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
    for m in value["members"].as_array_mut().into_iter().flatten() {
        if let Some(m) = m.as_object_mut() {
            m.remove("cert_pem");
        }
    }
    value
}

fn print_cluster(
    view: &crate::ClusterView,
    members: &[(crate::MemberInfo, Result<ServerStats, Error>)],
) {
    outln!(
        "cluster {} (epoch {}), runs of {} blocks, {} members",
        view.cluster_id,
        view.epoch,
        view.run_blocks,
        view.members.len()
    );
    outln!(
        "{:<20} {:<24} {:<9} {:>6} {:>14} {:>14} {:>6} {:>10} {:>9}",
        "node",
        "address",
        "state",
        "weight",
        "capacity",
        "used",
        "fill",
        "objects",
        "joined"
    );
    for (m, stats) in members {
        let state = match m.state {
            crate::MemberState::Active => "active",
            crate::MemberState::Draining => "draining",
        };
        let (used, objects) = match stats {
            Ok(s) => (
                s.tiers.iter().map(|t| t.used).sum::<u64>().to_string(),
                s.objects.to_string(),
            ),
            Err(_) => ("unreachable".to_owned(), "-".to_owned()),
        };
        let fill = used
            .parse::<u64>()
            .map(|u| format!("{:.1}%", 100.0 * u as f64 / m.capacity.max(1) as f64))
            .unwrap_or_else(|_| "-".into());
        outln!(
            "{:<20} {:<24} {:<9} {:>6} {:>14} {:>14} {:>6} {:>10} {:>8}s",
            m.node_id,
            m.addr,
            state,
            m.weight,
            m.capacity,
            used,
            fill,
            objects,
            m.joined_ms_ago / 1000
        );
    }
}

fn print_stats(s: &ServerStats) {
    for t in &s.tiers {
        outln!(
            "tier {:<6} used {:>14} of {:>14} bytes ({:.1}%), {} objects",
            t.kind,
            t.used,
            t.capacity,
            100.0 * t.used as f64 / t.capacity.max(1) as f64,
            t.objects
        );
        if !t.io_engine.is_empty() {
            outln!(
                "     io {:<8} read {} ops ({} bytes)  wrote {} ops ({} bytes)",
                t.io_engine,
                t.read_ops,
                t.read_bytes,
                t.write_ops,
                t.write_bytes
            );
        }
    }
    outln!("objects {}  pending {}", s.objects, s.pending);
    outln!(
        "puts {} ({} bytes)  gets {} hit / {} miss ({} bytes)  removes {}",
        s.puts,
        s.put_bytes,
        s.get_hits,
        s.get_misses,
        s.get_bytes,
        s.removes
    );
    outln!(
        "evictions {} ({} bytes)  expired reservations {}  refused for space {}",
        s.evictions,
        s.evicted_bytes,
        s.expired_reservations,
        s.no_space
    );
    outln!(
        "demotions {}  promotions {}  dropped as corrupt {}  dropped with unmounted segments {}",
        s.demotions,
        s.promotions,
        s.corrupt,
        s.unmounted_objects
    );
    outln!("connections {}", s.connections);
}
