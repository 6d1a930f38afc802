//! strata-bench: KV-cache workloads side by side with their physical ceilings.
//!
//! Each workload prints a table and, with `--json FILE` (or `--json -`), writes JSON Lines in
//! the report format of the design brief.

mod ceiling;
mod client_ops;
mod cluster;
mod device;
mod engine;
mod harness;
mod heap;
mod kvcache;
mod memory;
mod mixed;
mod peers;
mod plot;
mod quic;
mod report;
mod shm;
mod ssd;
mod systems;
mod tcp;
mod threads;
mod values;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: heap::CountingAlloc = heap::CountingAlloc;

#[derive(Parser)]
#[command(name = "strata-bench", version, about)]
struct Cli {
    /// Write JSON Lines to FILE (`-` for stdout, after the table).
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<String>,
    /// Write charts of the run (throughput and latency per system and phase, SVG and PNG)
    /// into DIR.
    #[arg(long, global = true, value_name = "DIR")]
    plot: Option<std::path::PathBuf>,
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
    /// The device tier and transport (host-sim): get/put of 4 and 16 MiB by device copy,
    /// by shared memory and by memcpy in one run; demotion throughput device to dram.
    Device {
        /// Seconds per timed loop (default 2, or 0.1 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// The device tier's backend: host-sim (default), cuda, ascend or a plugin's path.
        #[arg(long)]
        backend: Option<String>,
        /// Bytes of the device tier (default 512MiB, or 64MiB with --quick).
        #[arg(long)]
        device_mib: Option<u64>,
        /// Measure this running strata-server (host:port) instead of one in this process;
        /// its device tier must use --backend's runtime. Needs --ca-cert.
        #[arg(long, requires = "ca_cert")]
        server: Option<String>,
        /// The certificate the server printed (`certificate: PATH`).
        #[arg(long)]
        ca_cert: Option<std::path::PathBuf>,
    },
    /// The TCP data plane across processes, with a raw TCP stream and Redis beside it.
    Tcp {
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// The deployment guides' scenario: R requests of T tokens in blocks of B, a model's
    /// block size, spread over N engine instances: stored cold, loaded warm by the
    /// instance that stored them and by another one, on each same-host transport, with
    /// memcpy as the ceiling.
    Kvcache {
        /// Tokens per request (default 1024, or 512 with --quick).
        #[arg(long)]
        tokens: Option<usize>,
        /// Tokens per block (default 128).
        #[arg(long)]
        block_tokens: Option<usize>,
        /// Model preset: qwen2.5-7b, qwen2.5-72b-tp4, llama3-70b-tp8, deepseek-v3-mla.
        #[arg(long)]
        model: Option<String>,
        /// Bytes of one block on one rank, instead of the model's.
        #[arg(long)]
        block_bytes: Option<u64>,
        /// Requests per phase (default 100, or 8 with --quick).
        #[arg(long)]
        requests: Option<usize>,
        /// Requests in flight (default 25, or 4 with --quick).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Engine instances, each its own client connection (default 2, at least 2: the
        /// warm-cross phase loads each request on an instance that did not store it).
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..=64))]
        instances: Option<u32>,
        /// How the prompts share prefixes.
        #[arg(long, value_enum, default_value = "distinct")]
        sharing: kvcache::Sharing,
        /// Rounds of each load phase, each between two short memcpy samples; the ratio to
        /// memcpy is the median round's (default 5, or 2 with --quick; fewer once a
        /// phase's rounds took 20 s, or 2 s with --quick).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        rounds: Option<u32>,
        /// Only these systems, comma-separated: strata-embedded, strata-shm, strata-tcp,
        /// strata-quic, strata-device (pools in host-sim device memory), raw-quic, redis
        /// (default: all; the memcpy ceiling is measured beside each).
        #[arg(long, value_delimiter = ',')]
        systems: Option<Vec<String>>,
    },
    /// Gets and puts over a working set larger than memory (so the disk serves part):
    /// strata embedded and over shm, tcp and quic, memcached with extstore and foyer, all with
    /// the same memory and disk budgets, next to the disk's raw O_DIRECT throughput.
    Mixed {
        /// Memory budget of every system, MiB (default 256, or 16 with --quick).
        #[arg(long)]
        dram_mib: Option<u64>,
        /// Disk budget of every system, MiB (default 2048, or 128 with --quick).
        #[arg(long)]
        disk_mib: Option<u64>,
        /// Value size, KiB (default 256).
        #[arg(long)]
        value_kib: Option<u64>,
        /// Working set as a multiple of the memory budget (default 4).
        #[arg(long)]
        ratio: Option<f64>,
        /// Fraction of operations that are reads (default 0.9); the rest put new keys.
        #[arg(long)]
        read_ratio: Option<f64>,
        /// How reads choose their keys.
        #[arg(long, value_enum, default_value = "zipf")]
        keys: mixed::KeyChoice,
        /// Zipf exponent (default 0.99).
        #[arg(long)]
        zipf: Option<f64>,
        /// Tasks (connections) running the mix (default 16, or 4 with --quick).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Operations of the mix per system, at most (default 100000, or 1000 with --quick).
        #[arg(long)]
        ops: Option<u64>,
        /// Seconds of the mix per system, at most (default 30, or 5 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// Directory for the disk files (default: the system temp dir). Put it on the
        /// device to measure.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Only these systems, comma-separated: raw-odirect, memcached-extstore, foyer,
        /// strata-embedded, strata-shm, strata-tcp, strata-quic (default: all).
        #[arg(long, value_delimiter = ',')]
        systems: Option<Vec<String>>,
        /// foyer's submit queue, MiB, and as much again for its flush buffers, both taken
        /// out of its memory budget (default 16, or 2 with --quick).
        #[arg(long)]
        foyer_flush_mib: Option<u64>,
        /// foyer's disk I/O engine.
        #[arg(long, value_enum, default_value = "psync")]
        foyer_io: mixed::FoyerIo,
        /// GB of KV cache an engine recomputes per second: each missed get is charged its
        /// bytes at this rate and its value put back (default 1.86: Qwen2.5-7B prefill on
        /// one H100, see docs/bench/history.md). 0: misses cost nothing and are not put back.
        #[arg(long)]
        recompute_gbps: Option<f64>,
    },
    /// The Rust client's half of the Python package's benchmark (python/bench/compare.py runs it
    /// beside the same calls through the package): against the server at --server, a batch
    /// load of 16 x 4 MiB values into one buffer, batch_exists and prefix_len of 1024 keys.
    Client {
        /// The server (host:port).
        #[arg(long)]
        server: String,
        /// Its certificate.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// auto, shm, tcp or quic.
        #[arg(long, default_value = "auto")]
        transport: String,
        /// Seconds per timed loop (default 2, or 0.2 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// Prefix of the keys (python/bench/compare.py passes its own).
        #[arg(long, default_value = "bench-")]
        key_prefix: String,
        /// Values in each batch load.
        #[arg(long, default_value_t = 16)]
        values: usize,
        /// Bytes of each value.
        #[arg(long, default_value_t = 4 << 20)]
        value_size: usize,
        /// Keys in each lookup.
        #[arg(long, default_value_t = 1024)]
        lookup_keys: usize,
        /// Keys of one position in prefix_len (the TP ranks, or a page's K and V).
        #[arg(long, default_value_t = 8)]
        ranks: usize,
        /// prefix_len takes leases, as a lookup before a load does.
        #[arg(long)]
        lease: bool,
    },
    /// The kvcache scenario over one server process and over a cluster of three on etcd
    /// (docs/cluster.md), in one run: leased lookup latency, load throughput, servers per
    /// lookup, the share of reads served same-host, and the prefix blocks still found after
    /// one member is killed. Needs etcd (Debian: etcd-server) and strata-server beside
    /// this binary.
    Cluster {
        /// Seconds of each timed loop (default 3, or 0.5 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// Bytes of one block on one rank (default 65536, or 16384 with --quick).
        #[arg(long)]
        block_bytes: Option<usize>,
        /// Tasks running lookups and loads (default 4).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// (internal) The server process of `tcp`.
    #[command(hide = true)]
    ServeTcp,
    /// Draws the charts of a report written earlier with --json into the --plot DIR,
    /// without running anything.
    Chart {
        /// The JSON Lines report.
        report: std::path::PathBuf,
    },
    /// The ssd tier: demotion writes and reads of 1 and 4 MiB values with io_uring and
    /// psync, next to the raw O_DIRECT throughput of the same file (the ceiling).
    Ssd {
        /// Directory for the tier's files (default: the system temp dir). Put it on the
        /// device to measure.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Operations in flight per batch (default 8).
        #[arg(long)]
        queue_depth: Option<u32>,
        /// Bytes written and read per pass (default 1GiB, or 32MiB with --quick).
        #[arg(long)]
        total_mib: Option<u64>,
        /// Times the whole sequence runs; each tier row's `vs_raw` compares it with the
        /// raw pass of its own round (default 1).
        #[arg(long)]
        rounds: Option<u32>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Workload::ServeTcp = cli.workload {
        // The server process of `tcp`: its stdout carries addresses, not a report.
        tcp::serve_child();
        return;
    }
    if let Workload::Chart { report } = &cli.workload {
        chart(report, cli.plot.as_deref());
        return;
    }
    let mut report = report::Report::new();
    match cli.workload {
        Workload::Cluster {
            seconds,
            block_bytes,
            concurrency,
        } => {
            let mut params = if cli.quick {
                cluster::ClusterParams::quick()
            } else {
                cluster::ClusterParams::full()
            };
            if let Some(s) = seconds {
                params.seconds = s;
            }
            if let Some(b) = block_bytes {
                params.block_bytes = b;
            }
            if let Some(c) = concurrency {
                params.concurrency = c;
            }
            cluster::run(&params, &mut report);
        }
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
        Workload::Device {
            seconds,
            backend,
            device_mib,
            server,
            ca_cert,
        } => {
            let mut params = if cli.quick {
                device::DeviceParams::quick()
            } else {
                device::DeviceParams::full()
            };
            if let Some(s) = seconds {
                params.seconds = s;
            }
            if let Some(b) = backend {
                params.backend = strata_engine::device::Backend::parse(&b);
            }
            if let Some(m) = device_mib {
                params.device_capacity = m.max(16) << 20;
            }
            params.server = server.zip(ca_cert);
            device::run(&params, &mut report);
        }
        Workload::Tcp { seconds } => {
            let mut params = if cli.quick {
                tcp::TcpParams::quick()
            } else {
                tcp::TcpParams::full()
            };
            if let Some(s) = seconds {
                params.seconds = s;
            }
            tcp::run(&params, &mut report);
        }
        Workload::Client {
            server,
            ca,
            transport,
            seconds,
            key_prefix,
            values,
            value_size,
            lookup_keys,
            ranks,
            lease,
        } => {
            let transport = transport.parse().unwrap_or_else(|e: String| {
                eprintln!("strata-bench client: {e}");
                std::process::exit(2);
            });
            let params = client_ops::ClientOpsParams {
                server,
                ca,
                transport,
                seconds: seconds.unwrap_or(if cli.quick { 0.2 } else { 2.0 }),
                values: values.max(1),
                value_size: value_size.max(1),
                lookup_keys: lookup_keys.max(1),
                ranks: ranks.max(1),
                lease,
                key_prefix,
            };
            client_ops::run(&params, &mut report);
        }
        Workload::ServeTcp | Workload::Chart { .. } => unreachable!("handled before the report"),
        Workload::Kvcache {
            tokens,
            block_tokens,
            model,
            block_bytes,
            requests,
            concurrency,
            instances,
            sharing,
            rounds,
            systems,
        } => {
            let mut p = if cli.quick {
                kvcache::KvParams::quick()
            } else {
                kvcache::KvParams::full()
            };
            if let Some(name) = model {
                let Some(m) = kvcache::MODELS.iter().find(|m| m.name == name) else {
                    let names: Vec<&str> = kvcache::MODELS.iter().map(|m| m.name).collect();
                    eprintln!(
                        "strata-bench: no model preset {name:?}; presets: {}",
                        names.join(", ")
                    );
                    std::process::exit(2);
                };
                p.model = *m;
            }
            p.tokens = tokens.unwrap_or(p.tokens).max(1);
            p.block_tokens = block_tokens.unwrap_or(p.block_tokens).max(1);
            p.block_bytes = block_bytes.filter(|&b| b > 0);
            p.requests = requests.unwrap_or(p.requests).max(1);
            p.concurrency = concurrency.unwrap_or(p.concurrency).max(1);
            p.instances = instances.map_or(p.instances, |n| n as usize);
            p.sharing = sharing;
            p.rounds = rounds.map_or(p.rounds, |n| n as usize);
            p.systems = systems;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let need = kvcache::MemoryNeed::of(&p, cores);
            if let Some(available) = kvcache::memory_available() {
                if let Err(e) = need.fits(available) {
                    eprintln!("strata-bench kvcache: {e}");
                    std::process::exit(2);
                }
            }
            kvcache::run(&p, &mut report);
        }
        Workload::Mixed {
            dram_mib,
            disk_mib,
            value_kib,
            ratio,
            read_ratio,
            keys,
            zipf,
            concurrency,
            ops,
            seconds,
            dir,
            systems,
            foyer_flush_mib,
            foyer_io,
            recompute_gbps,
        } => {
            let mut p = if cli.quick {
                mixed::MixedParams::quick()
            } else {
                mixed::MixedParams::full()
            };
            p.dram = dram_mib.map_or(p.dram, |m| m.max(1) << 20);
            p.disk = disk_mib.map_or(p.disk, |m| m.max(1) << 20);
            p.value_size = value_kib.map_or(p.value_size, |k| k.max(1) << 10);
            p.ratio = ratio.unwrap_or(p.ratio).max(0.01);
            p.read_ratio = read_ratio.unwrap_or(p.read_ratio).clamp(0.0, 1.0);
            p.keys = keys;
            p.zipf = zipf.unwrap_or(p.zipf).max(0.0);
            p.concurrency = concurrency.unwrap_or(p.concurrency).clamp(1, 1024);
            p.ops = ops.unwrap_or(p.ops).max(1);
            p.seconds = seconds.unwrap_or(p.seconds).max(0.1);
            p.dir = dir;
            p.systems = systems;
            p.foyer_flush = foyer_flush_mib.map_or(p.foyer_flush, |m| m.saturating_mul(1 << 20));
            p.foyer_io = foyer_io;
            if let Some(gbps) = recompute_gbps {
                p.recompute = (gbps > 0.0).then_some(gbps * 1e9);
            }
            mixed::run(&p, &mut report);
        }
        Workload::Ssd {
            dir,
            queue_depth,
            total_mib,
            rounds,
        } => {
            let mut params = if cli.quick {
                ssd::SsdParams::quick()
            } else {
                ssd::SsdParams::full()
            };
            params.dir = dir;
            if let Some(q) = queue_depth {
                params.queue_depth = q.clamp(1, 4096);
            }
            if let Some(t) = total_mib {
                params.total = t.max(1) << 20;
            }
            params.rounds = rounds.unwrap_or(1).max(1);
            ssd::run(&params, &mut report);
        }
    }
    if let Some(dir) = cli.plot {
        match plot::write(report.records(), &dir) {
            Ok(files) => println!("plots: {}", files.join(" ")),
            Err(e) => eprintln!("strata-bench: plots skipped: {e}"),
        }
    }
    if let Some(path) = cli.json {
        if let Err(e) = report.write_json(&path) {
            eprintln!("strata-bench: writing {path}: {e}");
            std::process::exit(2);
        }
    }
}

/// `strata-bench --plot DIR chart REPORT`: the charts of a saved report.
fn chart(path: &std::path::Path, dir: Option<&std::path::Path>) {
    let fail = |message: String| -> ! {
        eprintln!("strata-bench chart: {message}");
        std::process::exit(2);
    };
    let Some(dir) = dir else {
        fail("where to? give --plot DIR".into())
    };
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
    let records: Vec<report::Record> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            report::Record::from_json(line)
                .unwrap_or_else(|e| fail(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect();
    match plot::write(&records, dir) {
        Ok(files) => println!("plots: {}", files.join(" ")),
        Err(e) => fail(e),
    }
}
