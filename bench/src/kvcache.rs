//! `strata-bench kvcache`: the deployment guides' scenario, an inference engine's use of
//! the store.
//!
//! Requests of T tokens are cut into blocks of B tokens; each block's KV cache is one
//! value per tensor-parallel rank, its size given by the model. N engine instances (each
//! its own client connection) share the R requests: request `i`'s home is instance
//! `i mod N`. Three phases, each over the same requests at concurrency C in all:
//! * `cold` — each request's home instance looks up its prefix (prefix_len) and stores
//!   the blocks it lacks;
//! * `warm` — the home instance looks up again and loads every block;
//! * `warm-cross` — the next instance (`i + 1 mod N`), one that did not store the
//!   request, does the same.
//!
//! Per phase and system: the prefix hit ratio, lookup latency, store or load time per
//! request, GB/s, and the time per request beyond a memcpy of the same bytes (what the
//! store adds). memcpy of the same block sizes is measured in the same run as the ceiling,
//! right before and right after each system's phases (see [`Ceiling`]).
//!
//! Each load phase runs in rounds, every round between two short memcpy samples, and its
//! `vs_memcpy` is the median of the rounds' ratios to the samples either side: this
//! machine's memory bandwidth moves by a third from one second to the next, so only a
//! ceiling measured next to the load says what the load could have had (see
//! [`load_rounds`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use strata_client::device::{Backend as DeviceBackend, DeviceMemory};
use strata_client::{BlockHasher, Client, KeyFormatter, MemoryKind, Transport};
use strata_engine::{Store, StoreConfig, TierConfig};

use crate::ceiling::CopyWay;
use crate::engine::round3;
use crate::harness::{runtime, serve_tiers};
use crate::peers::RedisServer;
use crate::report::{Record, Report};
use crate::systems::{DeviceInstance, System, STRATA_TRANSPORTS};
use crate::threads::{torn_down, Threads};
use crate::values::Values;

/// A model's KV-cache geometry: bytes of one token's KV cache on one rank.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    pub name: &'static str,
    pub bytes_per_token_per_rank: u64,
    pub ranks: u32,
}

/// The presets: K and V (or MLA's latent) of every layer, bf16, split over the ranks.
pub const MODELS: &[Model] = &[
    // 28 layers x 4 KV heads x 128 dims x (K, V) x 2 bytes.
    Model {
        name: "qwen2.5-7b",
        bytes_per_token_per_rank: 28 * 4 * 128 * 2 * 2,
        ranks: 1,
    },
    // 80 layers x 8 KV heads x 128 x 2 x 2, over 4 ranks.
    Model {
        name: "qwen2.5-72b-tp4",
        bytes_per_token_per_rank: 80 * 8 * 128 * 2 * 2 / 4,
        ranks: 4,
    },
    // 80 layers x 8 KV heads x 128 x 2 x 2, over 8 ranks.
    Model {
        name: "llama3-70b-tp8",
        bytes_per_token_per_rank: 80 * 8 * 128 * 2 * 2 / 8,
        ranks: 8,
    },
    // 61 layers x (512 latent + 64 rope) x 2 bytes, one copy (MLA: no K/V split).
    Model {
        name: "deepseek-v3-mla",
        bytes_per_token_per_rank: 61 * (512 + 64) * 2,
        ranks: 1,
    },
];

/// How the requests' prompts share prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sharing {
    /// Every prompt is different.
    Distinct,
    /// One system prompt (half the tokens) shared by all, then a distinct suffix.
    SystemPrompt,
    /// Conversations of 4 turns, each turn's prompt the previous one plus more tokens.
    MultiTurn,
}

#[derive(Clone, Debug)]
pub struct KvParams {
    pub tokens: usize,
    pub block_tokens: usize,
    pub model: Model,
    /// Overrides the model's block size (bytes per block per rank).
    pub block_bytes: Option<u64>,
    pub requests: usize,
    pub concurrency: usize,
    /// Engine instances (client connections), at least 2.
    pub instances: usize,
    pub sharing: Sharing,
    /// Only these systems (all when `None`).
    pub systems: Option<Vec<String>>,
    /// Length of one memcpy ceiling sample.
    pub ceiling_sample: Duration,
    /// Rounds of each load phase (at least one)...
    pub rounds: usize,
    /// ...unless the rounds so far took this long.
    pub round_budget: Duration,
}

impl KvParams {
    pub fn full() -> KvParams {
        KvParams {
            tokens: 1024,
            block_tokens: 128,
            model: MODELS[0],
            block_bytes: None,
            requests: 100,
            concurrency: 25,
            instances: 2,
            sharing: Sharing::Distinct,
            systems: None,
            ceiling_sample: Duration::from_secs(1),
            rounds: 5,
            round_budget: Duration::from_secs(20),
        }
    }

    pub fn quick() -> KvParams {
        KvParams {
            tokens: 512,
            requests: 8,
            concurrency: 4,
            ceiling_sample: Duration::from_millis(250),
            rounds: 2,
            round_budget: Duration::from_secs(2),
            ..KvParams::full()
        }
    }

    fn block_bytes(&self) -> u64 {
        self.block_bytes
            .unwrap_or(self.model.bytes_per_token_per_rank * self.block_tokens as u64)
    }
}

/// One request: its blocks, each a group of one key per rank.
struct Request {
    groups: Vec<Vec<String>>,
}

fn requests(p: &KvParams) -> Vec<Request> {
    let hasher = BlockHasher::new(0x5eed, p.block_tokens);
    let keys = KeyFormatter::new(p.model.name);
    let t = p.tokens as u32;
    (0..p.requests as u32)
        .map(|i| {
            let tokens: Vec<u32> = match p.sharing {
                Sharing::Distinct => (0..t).map(|k| i * t + k).collect(),
                Sharing::SystemPrompt => (0..t)
                    .map(|k| if k < t / 2 { k } else { (i + 1) * t + k })
                    .collect(),
                Sharing::MultiTurn => {
                    let (conversation, turn) = (i / 4, i % 4 + 1);
                    (0..t * turn / 4).map(|k| conversation * t + k).collect()
                }
            };
            let groups = hasher
                .block_hashes(&tokens)
                .into_iter()
                .map(|h| keys.group(p.model.ranks, h))
                .collect();
            Request { groups }
        })
        .collect()
}

/// The phases, in order: name, whether it stores (else it loads), and how many instances
/// along from its home a request is served by.
const PHASES: [(&str, bool, usize); 3] = [
    ("cold", true, 0),
    ("warm", false, 0),
    ("warm-cross", false, 1),
];

/// The instance that serves request `request` in a phase `shift` instances along from its
/// home (`request mod instances`).
fn instance_for(request: usize, shift: usize, instances: usize) -> usize {
    (request + shift) % instances
}

/// What one phase measured.
#[derive(Default)]
struct Phase {
    asked: u64,
    hits: u64,
    bytes: u64,
    /// Keys (one per block and rank) a store found stored, or being stored, by another
    /// request.
    skipped: u64,
    lookup_ns: Option<Histogram<u64>>,
    move_ns: Option<Histogram<u64>>,
    elapsed: Duration,
}

impl Phase {
    fn new() -> Phase {
        Phase {
            lookup_ns: Some(histogram()),
            move_ns: Some(histogram()),
            ..Phase::default()
        }
    }

    /// Adds `other`'s requests, bytes, latencies and time to this one's.
    fn absorb(&mut self, other: &Phase) {
        self.asked += other.asked;
        self.hits += other.hits;
        self.bytes += other.bytes;
        self.skipped += other.skipped;
        merge(&mut self.lookup_ns, &other.lookup_ns);
        merge(&mut self.move_ns, &other.move_ns);
        self.elapsed += other.elapsed;
    }

    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

/// Each task's buffers, allocated and written once per system, before any clock starts,
/// as an engine loads into its long-lived KV-cache pool: the first touch of fresh pages
/// is the allocator's cost, not the store's.
type Pools = Vec<Vec<Vec<u8>>>;

/// `tasks` pools of `buffers` written buffers of `block` bytes.
fn pools(tasks: usize, buffers: usize, block: usize) -> Pools {
    (0..tasks)
        .map(|_| (0..buffers).map(|_| vec![0x5a; block]).collect())
        .collect()
}

/// Runs one phase: each task takes the next request, looks up its prefix on the
/// instance `shift` along from the request's home, then stores the missing blocks
/// (`store`) or loads them all into its pool (one pool per task, `p.concurrency` of them;
/// they are handed back when the phase ends).
fn phase(
    rt: &tokio::runtime::Runtime,
    instances: &[System],
    shift: usize,
    requests: &Arc<Vec<Request>>,
    p: &KvParams,
    store: bool,
    pools: &mut Pools,
) -> Phase {
    let next = Arc::new(AtomicUsize::new(0));
    let block = p.block_bytes() as usize;
    let values = Arc::new(Values::new(block as u64));
    let taken = std::mem::take(pools);
    let bytes_put = || -> Option<u64> { instances.iter().map(System::bytes_put).sum() };
    let put_before = bytes_put();
    // Each task's histograms, made here: zeroing their counts takes about a millisecond,
    // which on the runtime's threads held up every task's replies at the phase's start.
    let outs: Vec<Phase> = taken.iter().map(|_| Phase::new()).collect();
    let mut total = rt.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = taken
            .into_iter()
            .zip(outs)
            .enumerate()
            .map(|(task, (mut bufs, mut out))| {
                let (instances, requests, next, values) = (
                    instances.to_vec(),
                    Arc::clone(requests),
                    Arc::clone(&next),
                    Arc::clone(&values),
                );
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(r) = requests.get(i) else { break };
                        let client = &instances[instance_for(i, shift, instances.len())];
                        let t = Instant::now();
                        let hit = client.lookup(&r.groups).await;
                        let looked = t.elapsed();
                        out.asked += r.groups.len() as u64;
                        out.hits += hit as u64;
                        let t = Instant::now();
                        let moved = if store {
                            let keys: Vec<&str> = r.groups[hit..]
                                .iter()
                                .flatten()
                                .map(String::as_str)
                                .collect();
                            let stored = client.store(&keys, &values).await;
                            out.skipped += (keys.len() - stored) as u64;
                            stored * block
                        } else {
                            let keys: Vec<&str> = r.groups[..hit]
                                .iter()
                                .flatten()
                                .map(String::as_str)
                                .collect();
                            client.load(&keys, task, &mut bufs, &values).await;
                            keys.len() * block
                        };
                        out.bytes += moved as u64;
                        record(&mut out.lookup_ns, looked);
                        record(&mut out.move_ns, t.elapsed());
                    }
                    (out, bufs)
                })
            })
            .collect();
        let mut total = Phase::new();
        for task in tasks {
            let (part, bufs) = task.await.expect("phase task");
            total.absorb(&part);
            pools.push(bufs);
        }
        total.elapsed = started.elapsed();
        total
    });
    if let (true, Some(before), Some(after)) = (store, put_before, bytes_put()) {
        let moved = after - before;
        total.skipped += total.bytes.saturating_sub(moved) / block as u64;
        total.bytes = moved;
    }
    total
}

fn record(h: &mut Option<Histogram<u64>>, d: Duration) {
    if let Some(h) = h {
        let _ = h.record((d.as_nanos() as u64).max(1));
    }
}

fn merge(into: &mut Option<Histogram<u64>>, from: &Option<Histogram<u64>>) {
    if let (Some(a), Some(b)) = (into, from) {
        let _ = a.add(b);
    }
}

/// The memcpy ceiling beside one system: memcpy in blocks of the block size on every core
/// at once (the loads run on every core too), the GB/s a load can never beat; libc's
/// memcpy and strata's streaming copy are both measured, and the faster is the ceiling
/// ([`crate::ceiling`]).
///
/// This machine's memory bandwidth moves by a third from second to second and from minute
/// to minute (its neighbours), so a ceiling measured minutes before a system ran says
/// little about the bandwidth that system had. Each system's ceiling is therefore measured
/// right before its phases and right after them, each time as the best of two samples per
/// way, both reported as their own lines (`memcpy copy ceiling`, `beside` the system,
/// `when` before or after); and each load round is bracketed by short samples of the
/// faster way ([`load_rounds`]).
struct Ceiling {
    block: usize,
    blocks: usize,
    sample: Duration,
    /// Every copying thread's buffers, made at the first sample and kept: writing 256 MiB
    /// of source takes longer than a sample, and a round's samples must follow it closely.
    buffers: Vec<CopyBuffers>,
    /// The faster way at the last full measurement; the rounds' samples copy this way.
    way: CopyWay,
}

impl Ceiling {
    fn new(block: usize, blocks: usize, sample: Duration) -> Ceiling {
        Ceiling {
            block,
            blocks,
            sample,
            buffers: Vec::new(),
            way: CopyWay::Libc,
        }
    }

    /// Measures beside `system`, `when` (before or after its phases), and reports it.
    fn measure(&mut self, system: &'static str, when: &'static str, report: &mut Report) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (way, record) = crate::ceiling::fastest_way(self.block, |way| {
            let sample = self.sample;
            let gbps = (0..2)
                .map(|_| self.all_cores(way, sample))
                .fold(0.0, f64::max);
            Record::new("kvcache", "memcpy", "copy", "ceiling")
                .size(self.block as u64)
                .concurrency(cores as u32)
                .timed(1, (gbps * 1e9) as u64, Duration::from_secs(1), None)
                .with("beside", system)
                .with("when", when)
        });
        self.way = way;
        let gbps = record.bytes_per_s() / 1e9;
        report.add(record);
        gbps
    }

    /// One short sample of the faster way, on every core: what the machine gave a copy
    /// just now.
    fn sample_now(&mut self) -> f64 {
        let (way, sample) = (self.way, self.sample / 2);
        self.all_cores(way, sample)
    }

    fn all_cores(&mut self, way: CopyWay, sample: Duration) -> f64 {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.buffers.len() != threads {
            let (block, blocks) = (self.block, self.blocks);
            self.buffers = std::thread::scope(|s| {
                let made: Vec<_> = (0..threads)
                    .map(|_| s.spawn(move || CopyBuffers::new(block, blocks)))
                    .collect();
                made.into_iter()
                    .map(|m| m.join().expect("memcpy buffers"))
                    .collect()
            });
        }
        std::thread::scope(|s| {
            let copies: Vec<_> = self
                .buffers
                .iter_mut()
                .map(|buffers| s.spawn(move || buffers.gbps(way, sample)))
                .collect();
            copies
                .into_iter()
                .map(|c| c.join().expect("memcpy thread"))
                .sum()
        })
    }
}

/// Bytes of source each memcpy thread cycles through: beyond the last-level cache.
const MEMCPY_SOURCE: usize = 256 << 20;

/// One memcpy thread's blocks: a source far larger than any cache (loads read blocks no
/// one touched lately) and one request's worth of destination, both written before any
/// clock starts, as a store's memory and an engine's KV-cache pool are.
struct CopyBuffers {
    src: Vec<Vec<u8>>,
    dst: Vec<Vec<u8>>,
}

impl CopyBuffers {
    fn new(block: usize, blocks: usize) -> CopyBuffers {
        let sources = MEMCPY_SOURCE.div_ceil(block.max(1)).max(blocks.max(1));
        CopyBuffers {
            src: (0..sources).map(|i| vec![i as u8; block]).collect(),
            dst: (0..blocks.max(1)).map(|_| vec![0xa5u8; block]).collect(),
        }
    }

    /// This thread's GB/s copying `way` for `sample` (whole passes over the source).
    fn gbps(&mut self, way: CopyWay, sample: Duration) -> f64 {
        let (sources, blocks) = (self.src.len(), self.dst.len());
        let block = self.src[0].len();
        let started = Instant::now();
        let mut copied = 0usize;
        for (i, s) in self.src.iter().cycle().enumerate() {
            if i % sources == 0 && started.elapsed() >= sample {
                break;
            }
            way.copy(&mut self.dst[i % blocks], s);
            std::hint::black_box(&self.dst[i % blocks]);
            copied += block;
        }
        copied as f64 / started.elapsed().as_secs_f64() / 1e9
    }
}

/// What the cold phase stores: each distinct key once (shared prefixes are stored once).
fn distinct_bytes(requests: &[Request], block: u64) -> u64 {
    let distinct: std::collections::HashSet<&str> = requests
        .iter()
        .flat_map(|r| r.groups.iter().flatten().map(String::as_str))
        .collect();
    distinct.len() as u64 * block
}

/// Keys of the largest request: what one task's pool holds.
fn most_keys(requests: &[Request]) -> usize {
    requests
        .iter()
        .map(|r| r.groups.iter().map(Vec::len).sum::<usize>())
        .max()
        .unwrap_or(0)
}

/// Every store's dram: room for every block with the watermark's headroom, since this
/// scenario measures a warm cache, not eviction.
fn store_capacity(data: u64) -> u64 {
    (data + data / 4).max(256 << 20)
}

/// The memory a run holds at its peak, by part. The systems run one after another, each
/// store gone before the next starts, so the largest one counts.
#[derive(Debug, PartialEq)]
pub struct MemoryNeed {
    /// One request's blocks per task in flight: the engine's KV-cache pool.
    pub pools: u64,
    /// The memcpy ceiling's source and destination, per core.
    pub ceiling: u64,
    /// The largest store: strata's dram, written up front, or Redis' blocks plus its
    /// replies in flight (about two pools' worth: in the server's output buffers and in
    /// the client's parsed values; see docs/benchmarks.md for the measurement).
    pub store: u64,
}

impl MemoryNeed {
    pub fn of(p: &KvParams, cores: usize) -> MemoryNeed {
        let requests = requests(p);
        let block = p.block_bytes();
        let most_keys = most_keys(&requests) as u64;
        let per_request = ((p.tokens / p.block_tokens).max(1) * p.model.ranks as usize) as u64;
        let sources = (MEMCPY_SOURCE as u64)
            .div_ceil(block.max(1))
            .max(per_request);
        let pools = p.concurrency as u64 * most_keys * block;
        let data = distinct_bytes(&requests, block);
        let chosen = |system: &str| crate::report::chosen(&p.systems, system);
        let redis = chosen("redis").then_some(data + 2 * pools);
        let device = chosen("strata-device").then_some(store_capacity(data) + DEVICE_SERVER_DRAM);
        MemoryNeed {
            pools,
            ceiling: cores as u64 * (sources + per_request) * block,
            store: [Some(store_capacity(data)), redis, device]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(0),
        }
    }

    pub fn total(&self) -> u64 {
        self.pools + self.ceiling + self.store
    }

    /// `Err` with what to change when the run would not fit in `available` bytes.
    pub fn fits(&self, available: u64) -> Result<(), String> {
        if self.total() <= available {
            return Ok(());
        }
        let gb = |b: u64| b as f64 / 1e9;
        Err(format!(
            "this run needs about {:.1} GB of memory ({:.1} GB of engine buffers: one \
             request's blocks per task in flight; {:.1} GB for the largest store: the \
             distinct blocks and headroom, or Redis' replies in flight; {:.1} GB for the \
             memcpy ceiling) and {:.1} GB is available. \
             Lower --concurrency (buffers), --requests (store) or --tokens, or pick a \
             smaller --model",
            gb(self.total()),
            gb(self.pools),
            gb(self.store),
            gb(self.ceiling),
            gb(available)
        ))
    }
}

/// `MemAvailable` of /proc/meminfo: what the kernel can give without swapping.
pub fn memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn run(p: &KvParams, report: &mut Report) {
    // The CLI refuses fewer; from code, one instance would make warm-cross a second warm
    // phase on the home instance and report it as cross-instance.
    assert!(
        p.instances >= 2,
        "kvcache needs at least 2 engine instances (warm-cross loads on another), got {}",
        p.instances
    );
    let requests = Arc::new(requests(p));
    let block = p.block_bytes();
    let data = distinct_bytes(&requests, block);
    println!(
        "kvcache: {} x {} tokens (blocks of {}), {} ({} ranks, {} KiB per block per rank), \
         {:?} prompts, concurrency {} over {} instances: {:.2} GB of distinct blocks",
        p.requests,
        p.tokens,
        p.block_tokens,
        p.model.name,
        p.model.ranks,
        block >> 10,
        p.sharing,
        p.concurrency,
        p.instances,
        data as f64 / 1e9
    );
    let per_request = (p.tokens / p.block_tokens).max(1) * p.model.ranks as usize;
    let mut ceiling = Ceiling::new(block as usize, per_request, p.ceiling_sample);

    let wanted = |name: &str| crate::report::chosen(&p.systems, name);
    let dir = tempfile::tempdir().expect("temp dir");
    let server_rt = runtime(2);
    let client_rt = runtime(2);
    let tls = crate::harness::loopback_tls(dir.path());
    let capacity = store_capacity(data);
    // The engine in-process: what the store costs with no transport at all.
    if wanted("strata-embedded") {
        let threads = Threads::now();
        embedded_phases(&client_rt, capacity, &requests, p, &mut ceiling, report);
        torn_down("strata-embedded", &threads);
    }
    let transports: Vec<_> = STRATA_TRANSPORTS
        .into_iter()
        .filter(|(system, _)| wanted(system))
        .collect();
    if !transports.is_empty() {
        let threads = Threads::now();
        // The TCP data plane too, for the transport a client on another host would use.
        let data_plane = crate::harness::loopback_data_plane();
        let served = serve_tiers(
            &server_rt,
            0,
            capacity,
            tls,
            Some(dir.path().join("shm.sock")),
            Some(data_plane),
        );
        for (system, transport) in transports {
            let clients: Vec<Arc<Client>> = (0..p.instances)
                .map(|_| served.client(&client_rt, transport))
                .collect();
            client_rt.block_on(async {
                clients[0].remove_all(true).await.expect("remove_all");
                prefaulted(&clients).await;
            });
            let instances: Vec<System> = clients.iter().cloned().map(System::Strata).collect();
            phases(
                &client_rt,
                system,
                &instances,
                &requests,
                p,
                &mut ceiling,
                report,
            );
            client_rt.block_on(async {
                for c in &clients {
                    c.close().await;
                }
            });
        }
        served.stop(&server_rt);
        torn_down("the strata server", &threads);
    }
    if wanted("strata-device") {
        let threads = Threads::now();
        let rts = (&server_rt, &client_rt);
        device_phases(
            rts,
            dir.path(),
            capacity,
            &requests,
            p,
            &mut ceiling,
            report,
        );
        torn_down("strata-device", &threads);
    }
    if wanted("raw-quic") {
        raw_quic_ceiling(&server_rt, &client_rt, dir.path(), p, report);
    }
    // Redis holds the same blocks on the same machine, as strings.
    if !wanted("redis") {
        return;
    }
    if let Some(redis) = RedisServer::start() {
        let connect = || {
            client_rt.block_on(async {
                let client = redis::Client::open(redis.url()).expect("redis url");
                // No response timeout: a pipeline of many 7 MiB SETs at concurrency 25
                // takes longer than the crate's default, and a slow answer is a figure.
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .expect("connect to redis");
                System::Redis(conn)
            })
        };
        let instances: Vec<System> = (0..p.instances).map(|_| connect()).collect();
        phases(
            &client_rt,
            "redis",
            &instances,
            &requests,
            p,
            &mut ceiling,
            report,
        );
    }
}

/// Waits until every client has prefaulted its mapping of the server's segments: a
/// long-running engine's mapping is, so the bench measures that state, not the page
/// faults of its first minutes.
async fn prefaulted(clients: &[Arc<Client>]) {
    for c in clients {
        tokio::time::timeout(Duration::from_secs(120), c.shm_prefaulted())
            .await
            .expect("shm prefault took over 2 minutes")
            .expect("shm_prefaulted");
    }
}

/// dram behind the device tier of `strata-device`'s server: every block fits the device
/// tier, so dram only has to exist.
const DEVICE_SERVER_DRAM: u64 = 256 << 20;

/// `strata-device`: a server whose host-sim device tier holds every block, engine
/// instances on the default transport (shared memory and device copies), each task's
/// pool in device memory registered with every instance's client.
fn device_phases(
    (server_rt, client_rt): (&tokio::runtime::Runtime, &tokio::runtime::Runtime),
    dir: &std::path::Path,
    capacity: u64,
    requests: &Arc<Vec<Request>>,
    p: &KvParams,
    ceiling: &mut Ceiling,
    report: &mut Report,
) {
    let device = match DeviceBackend::HostSim.open(0) {
        Ok(device) => device,
        Err(e) => return println!("strata-device: skipped (the host-sim device: {e})"),
    };
    let tls = crate::harness::loopback_tls(&dir.join("device"));
    let socket = Some(dir.join("device.sock"));
    // Both tiers written through at start, as the other systems' dram is: a GPU's
    // allocation is backed at once, host-sim's shared memory only once touched.
    let store = StoreConfig {
        tiers: vec![
            TierConfig {
                populate: true,
                ..crate::harness::device_tier(capacity)
            },
            TierConfig {
                populate: true,
                ..TierConfig::dram(DEVICE_SERVER_DRAM)
            },
        ],
        ..StoreConfig::default()
    };
    let served = crate::harness::serve_store(server_rt, store, tls, socket, None);
    let clients: Vec<Arc<Client>> = (0..p.instances)
        .map(|_| served.client(client_rt, Transport::Auto))
        .collect();
    let block = p.block_bytes();
    let most_keys = most_keys(requests) as u64;
    // Written before any clock starts, as an engine's long-lived pool is.
    let written = vec![0x5a; block as usize];
    let pools: Arc<Vec<DeviceMemory>> = Arc::new(
        (0..p.concurrency)
            .map(|_| {
                let pool =
                    DeviceMemory::alloc(&device, (most_keys * block).max(1)).expect("device pool");
                for k in 0..most_keys {
                    pool.write(k * block, &written).expect("device pool write");
                }
                pool
            })
            .collect(),
    );
    let instances: Vec<System> = clients
        .iter()
        .map(|c| {
            let ids = pools
                .iter()
                .map(|pool| {
                    // SAFETY: the pool is device memory of the host-sim backend, the
                    // server's device tier's; it outlives the client's use (both are
                    // dropped after the phases), and only this client's copies use it.
                    unsafe {
                        c.register_buffer(
                            pool.ptr() as usize,
                            pool.size() as usize,
                            MemoryKind::Device,
                        )
                    }
                    .expect("register the device pool")
                })
                .collect();
            System::Device(DeviceInstance {
                client: Arc::clone(c),
                pools: Arc::clone(&pools),
                ids: Arc::new(ids),
            })
        })
        .collect();
    client_rt.block_on(prefaulted(&clients));
    phases(
        client_rt,
        "strata-device",
        &instances,
        requests,
        p,
        ceiling,
        report,
    );
    let copies: u64 = clients
        .iter()
        .map(|c| c.transport_stats().device_gets)
        .sum();
    assert!(
        copies > 0,
        "strata-device: no block was loaded by a device copy"
    );
    println!("strata-device: {copies} blocks loaded device-to-device");
    drop(instances);
    client_rt.block_on(async {
        for c in &clients {
            c.close().await;
        }
    });
    served.stop(server_rt);
}

fn embedded_phases(
    client_rt: &tokio::runtime::Runtime,
    capacity: u64,
    requests: &Arc<Vec<Request>>,
    p: &KvParams,
    ceiling: &mut Ceiling,
    report: &mut Report,
) {
    let embedded = Arc::new(
        Store::open(StoreConfig {
            tiers: vec![TierConfig {
                populate: true,
                ..TierConfig::dram(capacity)
            }],
            ..StoreConfig::default()
        })
        .expect("embedded store"),
    );
    // One store, as every instance on a host shares its server.
    let instances = vec![System::Embedded(Arc::clone(&embedded)); p.instances];
    phases(
        client_rt,
        "strata-embedded",
        &instances,
        requests,
        p,
        ceiling,
        report,
    );
    drop(instances);
    drop(embedded);
}

/// The QUIC ceiling: the warm phase's bytes (every block of every request) read over raw
/// quinn streams with strata's TLS and transport settings, requests at the same
/// concurrency, a request's blocks one after another on its connection.
fn raw_quic_ceiling(
    server_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    p: &KvParams,
    report: &mut Report,
) {
    let block = p.block_bytes();
    if block > crate::quic::RAW_MAX {
        return println!(
            "raw-quic: skipped (blocks above {} bytes)",
            crate::quic::RAW_MAX
        );
    }
    let tls = crate::harness::loopback_tls(&dir.join("raw-quic"));
    let addr = server_rt.block_on(async { crate::quic::spawn_raw_server(&tls) });
    let cert = match &tls {
        strata_server::net::TlsSource::SelfSigned { dir, .. } => {
            dir.join(strata_server::net::tls::CERT_FILE)
        }
        _ => unreachable!("loopback_tls is self-signed"),
    };
    let raw = client_rt.block_on(crate::quic::raw_client(addr, &cert));
    let per_request = (p.tokens / p.block_tokens).max(1) * p.model.ranks as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let (elapsed, lat) = client_rt.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = (0..p.concurrency)
            .map(|_| {
                let (raw, next, requests) = (raw.clone(), Arc::clone(&next), p.requests);
                tokio::spawn(async move {
                    let mut lat = histogram();
                    while next.fetch_add(1, Ordering::Relaxed) < requests {
                        let t = Instant::now();
                        for _ in 0..per_request {
                            raw.read(block).await;
                        }
                        let _ = lat.record(t.elapsed().as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        let mut all = histogram();
        for t in tasks {
            let _ = all.add(t.await.expect("raw task"));
        }
        (started.elapsed(), all)
    });
    let bytes = (p.requests * per_request) as u64 * block;
    report.add(
        Record::new("kvcache", "raw-quic", "read", "ceiling")
            .size(block)
            .concurrency(p.concurrency as u32)
            .timed(p.requests as u64, bytes, elapsed, Some(&lat)),
    );
}

/// The three phases on `instances` of one system, between two measurements of its memcpy
/// ceiling; the load phases in rounds ([`load_rounds`]).
fn phases(
    rt: &tokio::runtime::Runtime,
    system: &'static str,
    instances: &[System],
    requests: &Arc<Vec<Request>>,
    p: &KvParams,
    ceiling: &mut Ceiling,
    report: &mut Report,
) {
    let before = ceiling.measure(system, "before", report);
    let block = p.block_bytes() as usize;
    let most_keys = most_keys(requests);
    let mut no_buffers = pools(p.concurrency, 0, block);
    // A device instance loads into its device pools instead.
    let on_host = !matches!(instances.first(), Some(System::Device(_)));
    let mut load_buffers = pools(p.concurrency, if on_host { most_keys } else { 0 }, block);
    let measured: Vec<_> = PHASES
        .into_iter()
        .map(|(name, store, shift)| {
            if store {
                let m = phase(rt, instances, shift, requests, p, true, &mut no_buffers);
                return (name, store, m, None);
            }
            let run = |pools: &mut Pools| phase(rt, instances, shift, requests, p, false, pools);
            let (m, rounds) = load_rounds(run, &mut load_buffers, p, ceiling);
            report.add(rounds.ceiling_record(system, name, block, ceiling.way));
            (name, store, m, Some(rounds))
        })
        .collect();
    drop(load_buffers);
    let memcpy = before.max(ceiling.measure(system, "after", report));
    for (name, store, m, rounds) in measured {
        let gbps = m.gbps();
        let hit_ratio = m.hits as f64 / m.asked.max(1) as f64;
        let (lookup, moved) = (m.lookup_ns.as_ref().unwrap(), m.move_ns.as_ref().unwrap());
        let requests_run = lookup.len();
        let bytes_per_request = m.bytes as f64 / requests_run.max(1) as f64;
        // What the store adds per request beyond copying its bytes once.
        let added_us = (lookup.value_at_quantile(0.5) + moved.value_at_quantile(0.5)) as f64
            / 1000.0
            - bytes_per_request / (memcpy * 1e9) * 1e6;
        let op = if store { "store" } else { "load" };
        let lookup_rec = Record::new("kvcache", system, "lookup", name)
            .concurrency(p.concurrency as u32)
            .timed(requests_run, 0, m.elapsed, Some(lookup))
            .with("hit_ratio", hit_ratio);
        report.add(lookup_rec);
        let mut move_rec = Record::new("kvcache", system, op, name)
            .size(block as u64)
            .concurrency(p.concurrency as u32)
            .timed(requests_run, m.bytes, m.elapsed, Some(moved))
            .with("added_us_p50", added_us)
            .with("model", p.model.name)
            .with("instances", instances.len());
        move_rec = match rounds {
            // Stores run once: a second round would find every block stored.
            None => move_rec
                .with("vs_memcpy", gbps / memcpy)
                .with("skipped_keys", m.skipped),
            Some(r) => r.annotate(move_rec, gbps / memcpy),
        };
        report.add(move_rec);
    }
}

/// What the rounds of one load phase measured: each round's GB/s and the memcpy samples
/// around them (one more sample than rounds: before the first, after each).
#[derive(Debug, Default)]
struct Rounds {
    gbps: Vec<f64>,
    samples: Vec<f64>,
}

impl Rounds {
    /// Each round's GB/s over the higher of the two samples either side of it: a ceiling
    /// must not be a trough.
    fn ratios(&self) -> Vec<f64> {
        self.gbps
            .iter()
            .zip(self.samples.windows(2))
            .map(|(gbps, around)| gbps / around[0].max(around[1]))
            .collect()
    }

    /// The load row's ratios: `vs_memcpy` is the median round's, with the lowest and
    /// highest beside it; `vs_memcpy_peak` divides the phase's GB/s over all its rounds by
    /// the higher of the system's before and after ceilings (best of two one-second
    /// samples each), the stricter figure the rounds replace.
    fn annotate(&self, record: Record, vs_peak: f64) -> Record {
        let ratios = self.ratios();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(0.0, f64::max);
        record
            .with("vs_memcpy", median(&ratios))
            .with("vs_memcpy_min", round3(low))
            .with("vs_memcpy_max", round3(high))
            .with("vs_memcpy_peak", round3(vs_peak))
            .with("rounds", ratios.len())
    }

    /// The samples as their own ceiling line: their median, every sample beside it.
    fn ceiling_record(
        &self,
        system: &'static str,
        phase: &'static str,
        block: usize,
        way: CopyWay,
    ) -> Record {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let samples: Vec<f64> = self.samples.iter().map(|&g| round3(g)).collect();
        Record::new("kvcache", "memcpy", "copy", "ceiling")
            .size(block as u64)
            .concurrency(cores as u32)
            .timed(
                1,
                (median(&self.samples) * 1e9) as u64,
                Duration::from_secs(1),
                None,
            )
            .with("beside", system)
            .with("when", format!("{phase} rounds"))
            .with("way", way.name())
            .with("samples_gbps", samples)
    }
}

/// Runs a load phase (`run`) `p.rounds` times, or fewer once the rounds took
/// `p.round_budget` (at least once), sampling memcpy before the first round and after
/// each; returns the rounds together as one phase, and what each measured.
///
/// A round of this scenario lasts a third of a second on the fast systems, and this
/// machine's memory bandwidth moves by a third between seconds: one such phase divided by
/// the best of several one-second ceilings measured before and after (as before this)
/// read anywhere from 0.43 to 0.84 for the same build. Rounds bracketed by their own
/// samples compare each load with the bandwidth next to it, and the median round is
/// robust to one lucky or unlucky second.
fn load_rounds(
    mut run: impl FnMut(&mut Pools) -> Phase,
    pools: &mut Pools,
    p: &KvParams,
    ceiling: &mut Ceiling,
) -> (Phase, Rounds) {
    let mut total = Phase::new();
    let mut rounds = Rounds::default();
    rounds.samples.push(ceiling.sample_now());
    while rounds.gbps.is_empty() || (rounds.gbps.len() < p.rounds && total.elapsed < p.round_budget)
    {
        let m = run(pools);
        rounds.samples.push(ceiling.sample_now());
        rounds.gbps.push(m.gbps());
        total.absorb(&m);
    }
    (total, rounds)
}

/// The middle of `xs` (the mean of the two middle ones when even); 0 when empty.
fn median(xs: &[f64]) -> f64 {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Warm-cross loads every request on an instance that did not store it, and the
    /// requests spread over every instance in each phase.
    #[test]
    fn warm_cross_loads_each_request_on_another_instance() {
        for n in 2..=8 {
            let (_, _, cross) = PHASES[2];
            let mut served = vec![0usize; n];
            for request in 0..5 * n {
                let home = instance_for(request, 0, n);
                let other = instance_for(request, cross, n);
                assert_ne!(home, other, "request {request} of {n} instances");
                served[other] += 1;
            }
            assert!(served.iter().all(|&k| k == 5), "{n} instances: {served:?}");
        }
    }

    /// Prompts that share a prefix look it up at once, miss, and store the same blocks:
    /// the one that comes second finds it stored or being stored (`Busy`), and skips it.
    /// Once a `Busy` panicked the bench.
    #[test]
    fn shared_prefixes_are_stored_once_and_loaded_whole() {
        for sharing in [Sharing::SystemPrompt, Sharing::MultiTurn] {
            let p = KvParams {
                tokens: 512,
                block_bytes: Some(256 << 10),
                requests: 8,
                concurrency: 4,
                sharing,
                systems: Some(vec!["strata-embedded".into(), "strata-shm".into()]),
                ceiling_sample: Duration::from_millis(20),
                rounds: 2,
                ..KvParams::full()
            };
            let all = requests(&p);
            let every_block: u64 = all
                .iter()
                .map(|r| r.groups.iter().map(Vec::len).sum::<usize>() as u64 * (256 << 10))
                .sum();
            let keys: Vec<&String> = all.iter().flat_map(|r| r.groups.iter().flatten()).collect();
            let distinct = keys.iter().collect::<std::collections::HashSet<_>>().len() as u64;
            let groups: u64 = all.iter().map(|r| r.groups.len() as u64).sum();
            let ranks = keys.len() as u64 / groups;
            let mut report = Report::new();
            run(&p, &mut report);
            for system in ["strata-embedded", "strata-shm"] {
                let cold = |op: &str| {
                    report
                        .records()
                        .iter()
                        .find(|r| r.system == system && r.op == op && r.phase == "cold")
                        .unwrap_or_else(|| panic!("{sharing:?} {system} {op} cold"))
                };
                // Each distinct block is stored once; the bytes count only those stores.
                let store = cold("store");
                assert_eq!(store.bytes, distinct * (256 << 10), "{sharing:?} {system}");
                let hit_keys = (cold("lookup").extra["hit_ratio"].as_f64().unwrap() * groups as f64)
                    .round() as u64
                    * ranks;
                assert_eq!(
                    store.extra["skipped_keys"].as_u64().unwrap(),
                    keys.len() as u64 - distinct - hit_keys,
                    "{sharing:?} {system}: a key is found by the lookup, stored, or skipped"
                );
                for phase in ["warm", "warm-cross"] {
                    let row = |op: &str| {
                        report
                            .records()
                            .iter()
                            .find(|r| r.system == system && r.op == op && r.phase == phase)
                            .unwrap_or_else(|| panic!("{sharing:?} {system} {op} {phase}"))
                    };
                    assert_eq!(
                        row("lookup").extra["hit_ratio"],
                        1.0,
                        "{sharing:?} {system}"
                    );
                    let load = row("load");
                    let rounds = load.extra["rounds"].as_u64().unwrap();
                    assert_eq!(load.bytes, rounds * every_block, "{sharing:?} {system}");
                }
            }
        }
    }

    #[test]
    fn a_run_that_would_not_fit_in_memory_is_refused_saying_what_to_lower() {
        let mut p = KvParams {
            model: *MODELS.iter().find(|m| m.name == "llama3-70b-tp8").unwrap(),
            sharing: Sharing::SystemPrompt,
            ..KvParams::full()
        };
        p.systems = Some(vec!["strata-shm".into()]);
        let need = MemoryNeed::of(&p, 2);
        let block = 5u64 << 20;
        // 25 tasks, each with one request's 8 blocks x 8 ranks.
        assert_eq!(need.pools, 25 * 64 * block);
        // Half of every prompt is the shared system prompt: 4 blocks stored once, then
        // 4 distinct per request, 8 ranks each, with a quarter of headroom.
        let distinct = (4 + 100 * 4) * 8 * block;
        assert_eq!(need.store, distinct + distinct / 4);
        // Per core: 256 MiB of source (52 blocks), at least a request's worth (64), and
        // a request's worth of destination.
        assert_eq!(need.ceiling, 2 * (64 + 64) * block);
        let err = need.fits(24 << 30).unwrap_err();
        assert!(
            err.contains("30.9 GB") && err.contains("--concurrency"),
            "{err}"
        );
        assert_eq!(need.fits(need.total()), Ok(()));
        (p.requests, p.concurrency) = (20, 8);
        let strata = MemoryNeed::of(&p, 2);
        assert!(
            strata.fits(24 << 30).is_ok(),
            "the documented example, without redis"
        );
        // Redis holds the blocks and about two pools of replies in flight: more than
        // strata's store once the pools pass an eighth of the blocks.
        p.systems = None;
        let all = MemoryNeed::of(&p, 2);
        let distinct = (4 + 20 * 4) * 8 * block;
        assert_eq!(all.store, distinct + 2 * strata.pools);
        assert!(all.store > strata.store);
        assert!(
            all.fits(24 << 30).is_ok(),
            "the documented example, with redis"
        );
    }

    #[test]
    fn a_round_is_divided_by_the_higher_sample_beside_it() {
        let rounds = Rounds {
            gbps: vec![10.0, 12.0, 9.0],
            samples: vec![20.0, 16.0, 30.0, 15.0],
        };
        assert_eq!(rounds.ratios(), vec![0.5, 0.4, 0.3]);
        let row = rounds.annotate(Record::new("kvcache", "s", "load", "warm"), 0.25);
        let json = row.to_json();
        assert_eq!(json["vs_memcpy"], 0.4);
        assert_eq!(json["vs_memcpy_min"], 0.3);
        assert_eq!(json["vs_memcpy_max"], 0.5);
        assert_eq!(json["vs_memcpy_peak"], 0.25);
        assert_eq!(json["rounds"], 3);
        let line = rounds.ceiling_record("s", "warm", 1 << 20, CopyWay::Libc);
        assert_eq!(line.bytes_per_s(), 18e9, "the median sample");
        assert_eq!(line.to_json()["when"], "warm rounds");
    }

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn load_rounds_stop_at_the_count_or_the_budget_but_run_once() {
        let mut ceiling = Ceiling::new(64 << 10, 2, Duration::from_millis(4));
        let mut pools: Pools = Vec::new();
        let round = |secs: u64| {
            move |_: &mut Pools| Phase {
                bytes: 1 << 20,
                elapsed: Duration::from_secs(secs),
                ..Phase::new()
            }
        };
        let p = KvParams {
            rounds: 3,
            round_budget: Duration::from_secs(10),
            ..KvParams::quick()
        };
        let (total, rounds) = load_rounds(round(1), &mut pools, &p, &mut ceiling);
        assert_eq!((rounds.gbps.len(), rounds.samples.len()), (3, 4));
        assert_eq!(total.bytes, 3 << 20);
        assert!(rounds.samples.iter().all(|&g| g > 0.0));
        let more = KvParams {
            rounds: 5,
            ..p.clone()
        };
        let (total, rounds) = load_rounds(round(4), &mut pools, &more, &mut ceiling);
        assert_eq!(
            rounds.gbps.len(),
            3,
            "the budget ends them: the third began at 8 s"
        );
        assert_eq!(total.elapsed, Duration::from_secs(12));
        let (_, rounds) = load_rounds(round(60), &mut pools, &p, &mut ceiling);
        assert_eq!(rounds.gbps.len(), 1, "over budget after the first");
    }

    #[test]
    #[should_panic(expected = "at least 2 engine instances")]
    fn one_instance_is_refused_before_anything_runs() {
        let p = KvParams {
            instances: 1,
            ..KvParams::quick()
        };
        run(&p, &mut Report::new());
    }

    #[test]
    fn every_system_stores_cold_and_loads_every_block_warm() {
        let redis = crate::peers::expect_installed("redis-server", "redis-server");
        let p = KvParams {
            tokens: 512,
            block_tokens: 128,
            block_bytes: Some(64 << 10),
            requests: 6,
            concurrency: 2,
            instances: 3,
            model: MODELS[1], // 4 ranks: every block is 4 keys
            ceiling_sample: Duration::from_millis(50),
            ..KvParams::full()
        };
        let mut report = Report::new();
        run(&p, &mut report);
        let records = report.records();
        let find = |system: &str, op: &str, phase: &str| {
            records
                .iter()
                .find(|r| r.system == system && r.op == op && r.phase == phase)
                .unwrap_or_else(|| panic!("no {system} {op} {phase} row"))
        };
        // 6 requests x 4 blocks x 4 ranks x 64 KiB.
        let all_blocks = 6 * 4 * 4 * (64 << 10);
        // The memcpy ceiling of each system, measured right before and right after it.
        let ceiling = |system: &str, when: &str| {
            records.iter().find(|r| {
                r.system == "memcpy"
                    && r.extra.get("beside").and_then(|v| v.as_str()) == Some(system)
                    && r.extra.get("when").and_then(|v| v.as_str()) == Some(when)
            })
        };
        assert_eq!(find("raw-quic", "read", "ceiling").bytes, all_blocks);
        let mut systems = vec![
            "strata-embedded",
            "strata-shm",
            "strata-tcp",
            "strata-quic",
            "strata-device",
        ];
        if redis {
            systems.push("redis");
        }
        for system in systems {
            for when in ["before", "after"] {
                let c = ceiling(system, when).unwrap_or_else(|| panic!("{system} {when}"));
                assert!(c.bytes > 0, "{system} {when}: no memcpy measured");
            }
            assert_eq!(
                find(system, "lookup", "cold").extra["hit_ratio"],
                0.0,
                "{system}"
            );
            assert_eq!(find(system, "store", "cold").bytes, all_blocks, "{system}");
            for phase in ["warm", "warm-cross"] {
                assert_eq!(
                    find(system, "lookup", phase).extra["hit_ratio"],
                    1.0,
                    "{system}"
                );
                let load = find(system, "load", phase);
                // Every round loaded every block; the rounds' samples are their own line.
                let rounds = load.extra["rounds"].as_u64().unwrap();
                assert!(
                    (1..=5).contains(&rounds),
                    "{system} {phase}: {rounds} rounds"
                );
                assert_eq!(load.bytes, rounds * all_blocks, "{system} {phase}");
                assert_eq!(load.extra["instances"], 3, "{system} {phase}");
                assert!(load.p99_us.is_some() && load.extra.contains_key("vs_memcpy"));
                let when = format!("{phase} rounds");
                let samples = records
                    .iter()
                    .find(|r| {
                        r.system == "memcpy"
                            && r.extra["beside"] == system
                            && r.extra["when"] == when.as_str()
                    })
                    .unwrap_or_else(|| panic!("{system}: no memcpy line for {when}"));
                let samples = samples.extra["samples_gbps"].as_array().unwrap();
                assert_eq!(samples.len() as u64, rounds + 1, "{system} {phase}");
            }
        }
    }
}
