//! strata-bench: KV-cache workloads side by side with their physical ceilings.
//!
//! Each workload prints a table and, with `--json FILE` (or `--json -`), writes JSON Lines in
//! the report format of the design brief.

mod engine;
mod heap;
mod quic;
mod report;
mod shm;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: heap::CountingAlloc = heap::CountingAlloc;

#[derive(Parser)]
#[command(name = "strata-bench", version, about)]
struct Cli {
    /// Write JSON Lines to FILE (`-` for stdout, after the table).
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<String>,
    /// Small sizes and short loops: a smoke run, not figures to quote.
    #[arg(long, global = true)]
    quick: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// The in-process engine: put/get_into vs memcpy, batch_exists, prefix_len, pressure,
    /// index memory.
    Engine {
        /// Seconds per timed loop (default 2, or 0.1 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// The QUIC service on loopback: put/get of large values at several concurrencies,
    /// small gets, batch_exists and prefix_len, next to a raw quinn stream (the ceiling).
    Quic {
        /// Seconds per timed loop (default 2, or 0.1 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// The shared-memory transport on this host: get_into and put_from of 1, 4 and 16 MiB
    /// at batch 1 and 32, next to memcpy (the ceiling) and to the QUIC transport.
    Shm {
        /// Seconds per timed loop (default 2, or 0.1 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
    },
}

fn main() {
    let cli = Cli::parse();
    let mut report = report::Report::new();
    match cli.workload {
        Workload::Engine { seconds } => {
            let mut params = if cli.quick {
                engine::EngineParams::quick()
            } else {
                engine::EngineParams::full()
            };
            if let Some(s) = seconds {
                params.seconds = s;
            }
            engine::run(&params, &mut report);
        }
        Workload::Quic { seconds } => {
            let mut params = if cli.quick {
                quic::QuicParams::quick()
            } else {
                quic::QuicParams::full()
            };
            if let Some(s) = seconds {
                params.seconds = s;
            }
            quic::run(&params, &mut report);
        }
        Workload::Shm { seconds } => {
            let mut params = if cli.quick {
                shm::ShmParams::quick()
            } else {
                shm::ShmParams::full()
            };
            if let Some(s) = seconds {
                params.seconds = s;
            }
            shm::run(&params, &mut report);
        }
    }
    if let Some(path) = cli.json {
        if let Err(e) = report.write_json(&path) {
            eprintln!("strata-bench: writing {path}: {e}");
            std::process::exit(2);
        }
    }
}
