//! `strata-bench cluster`: the kvcache scenario against one server process and against a
//! cluster of three (etcd on loopback, `strata-server` processes joining it), in one run.
//!
//! Prompts come in families: 8 blocks shared by the family, then 16 to 48 of the
//! prompt's own, one key per TP rank. Every prompt is stored once; then `concurrency`
//! tasks repeat, per prompt, a leased prefix lookup and the load of what matched. The
//! client pretends to share its host with one member only: the others are reached over
//! their TCP data plane, as a client on one host of a real cluster reaches the rest.
//! Last, one member is killed (SIGKILL) and the share of prefix blocks still found is
//! measured once the view has dropped it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_client::{ClientConfig, ClusterClient, ClusterOptions, Transport};

use crate::harness::{runtime, timed};
use crate::report::{Record, Report};

/// Parameters of `strata-bench cluster`.
pub struct ClusterParams {
    pub families: usize,
    pub per_family: usize,
    pub ranks: usize,
    pub block_bytes: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub member_ttl: u64,
}

impl ClusterParams {
    pub fn full() -> ClusterParams {
        ClusterParams {
            families: 24,
            per_family: 4,
            ranks: 2,
            block_bytes: 64 << 10,
            concurrency: 4,
            seconds: 3.0,
            member_ttl: 2,
        }
    }

    pub fn quick() -> ClusterParams {
        ClusterParams {
            families: 4,
            per_family: 2,
            block_bytes: 16 << 10,
            seconds: 0.5,
            ..ClusterParams::full()
        }
    }
}

type Chain = Vec<Vec<String>>;

fn prompts(p: &ClusterParams) -> Vec<Chain> {
    let mut out = Vec::new();
    for f in 0..p.families {
        for q in 0..p.per_family {
            let own = 16 + (f * 7 + q * 13) % 33;
            out.push(
                (0..8 + own)
                    .map(|b| {
                        let hash = if b < 8 {
                            format!("f{f}-b{b}")
                        } else {
                            format!("f{f}-p{q}-b{b}")
                        };
                        (0..p.ranks)
                            .map(|r| format!("bench@tp{r}@{hash}"))
                            .collect()
                    })
                    .collect(),
            );
        }
    }
    out
}

/// A program next to this bench binary (`cargo build --release -p strata-server` puts
/// strata-server there), or on PATH.
fn program(name: &str) -> Option<PathBuf> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    sibling.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_etcd(dir: &Path) -> (Process, String) {
    let etcd =
        program("etcd").expect("etcd is not installed (Debian: apt-get install etcd-server)");
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new(etcd)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("bench={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting etcd");
    let deadline = Instant::now() + Duration::from_secs(30);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .into();
    while agent
        .get(&format!("{client}/health"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .is_none_or(|body| !body.contains("true"))
    {
        assert!(Instant::now() < deadline, "etcd did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Process(child), client)
}

/// A `strata-server` process; its QUIC address and certificate.
fn start_server(dir: &Path, capacity: u64, cluster: &[&str]) -> (Process, String, PathBuf) {
    let server = program("strata-server")
        .expect("no strata-server next to strata-bench: cargo build --release -p strata-server");
    let mut child = Command::new(server)
        .args(["--port", "0", "--data-port", "0", "--metrics-addr", "off"])
        .args(["--device-plugin", "off", "--ssd-path", "off"])
        .arg("--dram-capacity")
        .arg(capacity.to_string())
        .arg("--data-dir")
        .arg(dir)
        .args(cluster)
        .env("STRATA_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting strata-server");
    let out = child.stdout.take().expect("piped");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
    let (mut addr, mut cert) = (None, None);
    while addr.is_none() || cert.is_none() {
        let line = lines
            .next()
            .expect("strata-server exited before it listened")
            .expect("reading strata-server's output");
        if let Some(a) = line.strip_prefix("strata-server listening on ") {
            addr = Some(a.trim().to_owned());
        } else if let Some(c) = line.strip_prefix("certificate: ") {
            cert = Some(PathBuf::from(c.trim()));
        }
    }
    // Its stdout must keep draining; nothing more is printed there.
    std::thread::spawn(move || lines.for_each(drop));
    (Process(child), addr.unwrap(), cert.unwrap())
}

/// One system's two timed loops: leased lookups alone (their latency), then per prompt a
/// leased lookup and the load of what matched (the load's throughput).
fn lookups_and_loads(
    rt: &tokio::runtime::Runtime,
    client: &ClusterClient,
    prompts: &Arc<Vec<Chain>>,
    p: &ClusterParams,
    system: &'static str,
    report: &mut Report,
) {
    let lookup = {
        let (client, prompts) = (client.clone(), Arc::clone(prompts));
        move |task: usize, i: u64| {
            let (client, prompts) = (client.clone(), Arc::clone(&prompts));
            async move {
                let chain = &prompts[(task + i as usize * 7) % prompts.len()];
                let m = client.prefix_len_leased(chain).await.expect("lookup");
                assert_eq!(m.len, chain.len(), "a stored prompt matched in part");
            }
        }
    };
    let (n, elapsed, lookups) = timed(rt, p.concurrency, p.seconds, lookup);
    report.add(
        Record::new("cluster", system, "lookup", "warm")
            .concurrency(p.concurrency as u32)
            .timed(n, 0, elapsed, Some(&lookups)),
    );
    let bytes = Arc::new(AtomicU64::new(0));
    let lookup_ns = Arc::new(parking_lot::Mutex::new(crate::report::histogram()));
    let op = {
        let (client, prompts, bytes, lookup_ns) = (
            client.clone(),
            Arc::clone(prompts),
            Arc::clone(&bytes),
            Arc::clone(&lookup_ns),
        );
        let block = p.block_bytes;
        move |task: usize, i: u64| {
            let (client, prompts, bytes, lookup_ns) = (
                client.clone(),
                Arc::clone(&prompts),
                Arc::clone(&bytes),
                Arc::clone(&lookup_ns),
            );
            async move {
                let chain = &prompts[(task + i as usize * 7) % prompts.len()];
                let started = Instant::now();
                let m = client.prefix_len_leased(chain).await.expect("lookup");
                let _ = lookup_ns
                    .lock()
                    .record(started.elapsed().as_nanos().max(1) as u64);
                let keys = m.len * chain[0].len();
                let mut bufs = vec![vec![0u8; block]; keys];
                let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                for r in client.batch_get_chain_into(chain, &mut slices).await {
                    r.expect("load of a matched block");
                }
                bytes.fetch_add((keys * block) as u64, Ordering::Relaxed);
            }
        }
    };
    let (n, elapsed, _) = timed(rt, p.concurrency, p.seconds, op);
    let under_load = lookup_ns.lock().clone();
    report.add(
        Record::new("cluster", system, "lookup", "with_loads")
            .concurrency(p.concurrency as u32)
            .timed(n, 0, elapsed, Some(&under_load)),
    );
    report.add(
        Record::new("cluster", system, "load", "warm")
            .size(p.block_bytes as u64)
            .concurrency(p.concurrency as u32)
            .timed(n, bytes.load(Ordering::Relaxed), elapsed, None),
    );
}

async fn found_share(client: &ClusterClient, prompts: &[Chain]) -> f64 {
    let (mut found, mut all) = (0, 0);
    for chain in prompts {
        found += client.prefix_len(chain).await.unwrap_or(0);
        all += chain.len();
    }
    found as f64 / all as f64
}

async fn put_all(client: &ClusterClient, prompts: &[Chain], block: usize) {
    let value = vec![0x5au8; block];
    for chain in prompts {
        let keys: usize = chain.iter().map(Vec::len).sum();
        let values = vec![&value[..]; keys];
        for r in client.batch_put_chain(chain, &values).await {
            r.expect("put");
        }
    }
}

fn connect(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    cert: &Path,
    local: Option<&str>,
) -> ClusterClient {
    let config = ClientConfig {
        server: addr.to_owned(),
        ca_cert: Some(cert.to_path_buf()),
        transport: Transport::Auto,
        transfer_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    };
    let options = ClusterOptions {
        local_node: local.map(str::to_owned),
        ..ClusterOptions::default()
    };
    rt.block_on(ClusterClient::connect(config, options))
        .expect("connecting to the cluster")
}

pub fn run(p: &ClusterParams, report: &mut Report) {
    let prompts = Arc::new(prompts(p));
    let blocks: usize = prompts.iter().map(Vec::len).sum();
    let data = (blocks * p.ranks * p.block_bytes) as u64;
    println!(
        "cluster: {} prompts ({} families), {} blocks of {} ranks x {} KiB: {:.2} GB; \
         concurrency {}, member TTL {} s",
        prompts.len(),
        p.families,
        blocks,
        p.ranks,
        p.block_bytes >> 10,
        data as f64 / 1e9,
        p.concurrency,
        p.member_ttl
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime(2);
    // Room for everything on each server, so the two systems hold the same data.
    let capacity = (data * 2).max(64 << 20);

    // One server alone.
    {
        let (_server, addr, cert) = start_server(&dir.path().join("alone"), capacity, &[]);
        let client = connect(&rt, &addr, &cert, None);
        rt.block_on(put_all(&client, &prompts, p.block_bytes));
        lookups_and_loads(&rt, &client, &prompts, p, "strata-1-server", report);
    }

    // Three servers on etcd.
    let (_etcd, endpoint) = start_etcd(dir.path());
    let ttl = p.member_ttl.to_string();
    let mut servers: Vec<(Process, String, PathBuf)> = ["n1", "n2", "n3"]
        .iter()
        .map(|node| {
            let args = [
                "--etcd-endpoints",
                &endpoint,
                "--cluster-id",
                "bench",
                "--node-id",
                node,
                "--member-ttl",
                &ttl,
                "--join-window",
                "0",
            ];
            start_server(&dir.path().join(node), capacity, &args)
        })
        .collect();
    let client = connect(&rt, &servers[0].1, &servers[0].2, Some("n1"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.view().members.len() < 3 {
        assert!(Instant::now() < deadline, "the cluster never had 3 members");
        std::thread::sleep(Duration::from_millis(50));
        let _ = rt.block_on(client.refresh_view());
    }
    rt.block_on(put_all(&client, &prompts, p.block_bytes));
    let before = client.transport_stats();
    lookups_and_loads(&rt, &client, &prompts, p, "strata-3-servers", report);
    let moved = client.transport_stats();
    let same_host = moved.shm_get_bytes - before.shm_get_bytes;
    let remote =
        moved.tcp_get_bytes - before.tcp_get_bytes + moved.quic_get_bytes - before.quic_get_bytes;
    let c = client.counters();
    let share = same_host as f64 / (same_host + remote).max(1) as f64;
    println!(
        "  servers per lookup {:.2}; reads served same-host {:.0}% ({} of {} bytes); member \
         lookup round trips {:?}",
        c.lookup_servers as f64 / c.lookups.max(1) as f64,
        share * 100.0,
        same_host,
        same_host + remote,
        client.member_latencies()
    );
    report.add(
        Record::new("cluster", "strata-3-servers", "same_host_reads", "warm")
            .with("share", share)
            .with(
                "servers_per_lookup",
                c.lookup_servers as f64 / c.lookups.max(1) as f64,
            ),
    );

    // One member lost: what the repeated workload still finds at once.
    let killed = Instant::now();
    let mut n3 = servers.pop().expect("three servers").0;
    let _ = n3.0.kill();
    let _ = n3.0.wait();
    while client.view().members.iter().any(|m| m.node_id == "n3") {
        assert!(
            killed.elapsed() < Duration::from_secs(p.member_ttl + 10),
            "n3 was never dropped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dropped_after = killed.elapsed();
    let kept = rt.block_on(found_share(&client, &prompts));
    println!(
        "  after killing n3: dropped from the view in {:.2} s, {:.0}% of the prefix blocks still found",
        dropped_after.as_secs_f64(),
        kept * 100.0
    );
    report.add(
        Record::new("cluster", "strata-3-servers", "after_loss", "warm")
            .with("prefix_blocks_found", kept)
            .with("dropped_after_s", dropped_after.as_secs_f64()),
    );
    drop(client);
    drop(servers);
}
