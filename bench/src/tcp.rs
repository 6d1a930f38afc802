//! `strata-bench tcp`: the TCP data plane across processes on loopback, with its ceiling
//! and a peer measured in the same run:
//! * `strata-tcp`: a client forced to the data plane (default settings: 4 data
//!   connections, values above 8 MiB striped, checksums verified), put and get_into at 1,
//!   4 and 16 requests in flight, reads from a working set of 16 values;
//! * `strata-tcp-tls`: the same with `--data-tls`, the price of encryption;
//! * `raw-tcp`: the ceiling, one plain TCP connection per task moving the same bytes with
//!   an 8-byte request and nothing else (read: the server sends from a buffer as large as
//!   the gets' working set; write: it receives);
//! * `redis`: `redis-benchmark` GET and SET of the same sizes and client counts against a
//!   `redis-server` started for the run (skipped, with the reason, where it is missing).
//!
//! The servers run in a child process (this binary, `serve-tcp`), so every byte crosses
//! a process boundary as it would between hosts; the clients run here on two threads.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_client::{Client, ClientConfig, Transport};
use strata_server::net::DataPlaneConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::engine::{pattern, round3};
use crate::harness::{runtime, serve_tiers, timed};
use crate::peers::RedisServer;
use crate::report::{Record, Report};

/// What to run.
pub struct TcpParams {
    pub seconds: f64,
    pub sizes: Vec<u64>,
    pub concurrency: Vec<usize>,
}

impl TcpParams {
    pub fn full() -> TcpParams {
        TcpParams {
            seconds: 2.0,
            sizes: vec![1 << 20, 4 << 20],
            concurrency: vec![1, 4, 16],
        }
    }

    pub fn quick() -> TcpParams {
        TcpParams {
            seconds: 0.1,
            sizes: vec![1 << 20],
            concurrency: vec![2],
        }
    }
}

/// Values in the read working set.
const WORKING_SET: usize = 16;

/// A raw request with this bit set sends that many bytes to the server.
const WRITE_BIT: u64 = 1 << 63;

/// The child process's servers.
struct Servers {
    child: Child,
    strata: (SocketAddr, String),
    strata_tls: (SocketAddr, String),
    raw: SocketAddr,
}

impl Drop for Servers {
    fn drop(&mut self) {
        // Closing its stdin tells the child to stop; kill it if it lingers.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_servers() -> Servers {
    let exe = std::env::current_exe().expect("this binary's path");
    let mut child = Command::new(exe)
        .arg("serve-tcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the server process");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next = |tag: &str| -> Vec<String> {
        let line = lines
            .next()
            .and_then(|l| l.ok())
            .unwrap_or_else(|| panic!("the server process said nothing of {tag}"));
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(words.first().map(String::as_str), Some(tag), "{line}");
        words
    };
    let strata = next("strata");
    let tls = next("strata-tls");
    let raw = next("raw");
    Servers {
        child,
        strata: (strata[1].parse().expect("address"), strata[2].clone()),
        strata_tls: (tls[1].parse().expect("address"), tls[2].clone()),
        raw: raw[1].parse().expect("address"),
    }
}

/// The child process: a strata server with a plain data plane, one with TLS on it, and a
/// raw TCP server; runs until its stdin closes.
pub fn serve_child() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime(2);
    let data_plane = |tls| DataPlaneConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        transfer_timeout: Duration::from_secs(60),
    };
    let mut out = std::io::stdout().lock();
    for (tag, tls) in [("strata", false), ("strata-tls", true)] {
        let sub = dir.path().join(tag);
        let source = crate::harness::loopback_tls(&sub);
        let served = serve_tiers(&rt, 0, 1 << 30, source, None, Some(data_plane(tls)));
        writeln!(out, "{tag} {} {}", served.addr, served.cert.display()).unwrap();
        std::mem::forget(served); // serves until the process exits
    }
    let raw = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("raw listener");
    writeln!(out, "raw {}", raw.local_addr().unwrap()).unwrap();
    out.flush().unwrap();
    drop(out);
    rt.spawn(serve_raw(raw));
    // Until the parent closes our stdin (or dies).
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
}

/// Bytes the raw server sends from: as large as the gets' working set at 4 MiB, so the
/// ceiling reads memory as cold as strata's values are, not one hot buffer.
const RAW_SOURCE: usize = WORKING_SET * (4 << 20);

async fn serve_raw(listener: TcpListener) {
    let source = Arc::new(pattern(RAW_SOURCE as u64));
    while let Ok((mut conn, _)) = listener.accept().await {
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            let _ = conn.set_nodelay(true);
            let mut sink = vec![0u8; 1 << 20];
            let mut head = [0u8; 8];
            let mut at = 0usize;
            while conn.read_exact(&mut head).await.is_ok() {
                let ask = u64::from_le_bytes(head);
                let len = (ask & !WRITE_BIT) as usize;
                let done = if ask & WRITE_BIT == 0 {
                    // Each read starts where the last ended, wrapping around the source.
                    let mut left = len;
                    let mut sent = Ok(());
                    while left > 0 && sent.is_ok() {
                        if at == source.len() {
                            at = 0;
                        }
                        let n = left.min(source.len() - at);
                        sent = conn.write_all(&source[at..at + n]).await;
                        at += n;
                        left -= n;
                    }
                    sent
                } else {
                    let mut left = len;
                    let mut got = Ok(0);
                    while left > 0 && got.is_ok() {
                        let n = left.min(sink.len());
                        got = conn.read_exact(&mut sink[..n]).await;
                        left -= n;
                    }
                    match got {
                        Ok(_) => conn.write_all(&[1]).await,
                        Err(e) => Err(e),
                    }
                };
                if done.is_err() {
                    break;
                }
            }
        });
    }
}

pub fn run(p: &TcpParams, report: &mut Report) {
    let servers = spawn_servers();
    let rt = runtime(2);
    let connect = |(addr, cert): &(SocketAddr, String)| {
        let config = ClientConfig {
            server: addr.to_string(),
            ca_cert: Some(cert.into()),
            transport: Transport::Tcp,
            transfer_timeout: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        rt.block_on(Client::connect(config))
            .expect("connect over tcp")
    };
    let plain = connect(&servers.strata);
    let tls = connect(&servers.strata_tls);
    let redis = Redis::start();
    for &size in &p.sizes {
        for &c in &p.concurrency {
            let get = strata_round(p, &rt, &plain, "strata-tcp", size, c, report);
            strata_round(p, &rt, &tls, "strata-tcp-tls", size, c, report);
            let raw = raw_round(p, &rt, servers.raw, size, c, report);
            let redis_get = redis.as_ref().and_then(|r| r.round(p, size, c, report));
            // The figures the issue asks for, side by side.
            let mut line = format!(
                "  get {}: strata-tcp / raw-tcp = {}",
                crate::report::human_size(size),
                round3(get / raw.max(1.0))
            );
            if let Some(r) = redis_get {
                line += &format!(", strata-tcp / redis = {}", round3(get / r.max(1.0)));
            }
            println!("{line}  (c={c})");
        }
    }
    if redis.is_none() {
        println!("redis: skipped (no redis-server/redis-benchmark: apt-get install redis-server)");
    }
    drop(servers);
}

/// Per-task buffers for the reads, touched so no page fault is timed.
fn buffers(tasks: usize, size: u64) -> Arc<Vec<Mutex<Vec<u8>>>> {
    Arc::new(
        (0..tasks)
            .map(|_| Mutex::new(vec![1u8; size as usize]))
            .collect(),
    )
}

/// put and get_into of `size` at `c` in flight; the get rate in bytes/s.
fn strata_round(
    p: &TcpParams,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    system: &'static str,
    size: u64,
    c: usize,
    report: &mut Report,
) -> f64 {
    let value = Arc::new(pattern(size));
    let round = format!("{system}-{size}-{c}");
    let (cl, v, r) = (client.clone(), Arc::clone(&value), round.clone());
    let (n, t, h) = timed(rt, c, p.seconds, move |task, i| {
        let (cl, v) = (cl.clone(), Arc::clone(&v));
        let key = format!("put-{r}-{task}-{i}");
        async move { cl.put_from(key.as_bytes(), &v).await.expect("put") }
    });
    report.add(
        Record::new("tcp", system, "put", "cross")
            .size(size)
            .concurrency(c as u32)
            .timed(n, n * size, t, Some(&h)),
    );

    let keys: Vec<String> = (0..WORKING_SET)
        .map(|i| format!("get-{round}-{i}"))
        .collect();
    rt.block_on(async {
        for k in &keys {
            client
                .put_from(k.as_bytes(), &value)
                .await
                .expect("warm put");
        }
    });
    let (keys, bufs, cl) = (Arc::new(keys), buffers(c, size), client.clone());
    let (n, t, h) = timed(rt, c, p.seconds, move |task, i| {
        let (cl, keys, bufs) = (cl.clone(), Arc::clone(&keys), Arc::clone(&bufs));
        async move {
            let key = &keys[(task * 5 + i as usize) % keys.len()];
            let mut buf = bufs[task].lock().await;
            let got = cl.get_into(key.as_bytes(), &mut buf).await.expect("get");
            assert_eq!(got as u64, size);
        }
    });
    let get = Record::new("tcp", system, "get", "cross")
        .size(size)
        .concurrency(c as u32)
        .timed(n, n * size, t, Some(&h));
    let rate = get.bytes_per_s();
    report.add(get);
    rate
}

/// The raw TCP ceiling: read and write of `size` at `c` connections; the read rate.
fn raw_round(
    p: &TcpParams,
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    size: u64,
    c: usize,
    report: &mut Report,
) -> f64 {
    let conns = rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..c {
            let conn = TcpStream::connect(addr).await.expect("raw connect");
            conn.set_nodelay(true).expect("nodelay");
            conns.push(Mutex::new(conn));
        }
        Arc::new(conns)
    });
    let (bufs, value) = (buffers(c, size), Arc::new(pattern(size)));
    let mut rate = 0.0;
    for (op, write) in [("read", false), ("write", true)] {
        let (conns, bufs, value) = (Arc::clone(&conns), Arc::clone(&bufs), Arc::clone(&value));
        let (n, t, h) = timed(rt, c, p.seconds, move |task, _| {
            let (conns, bufs, value) = (Arc::clone(&conns), Arc::clone(&bufs), Arc::clone(&value));
            async move {
                let mut conn = conns[task].lock().await;
                if write {
                    conn.write_all(&(size | WRITE_BIT).to_le_bytes())
                        .await
                        .unwrap();
                    conn.write_all(&value).await.unwrap();
                    let mut ack = [0u8; 1];
                    conn.read_exact(&mut ack).await.unwrap();
                } else {
                    let mut buf = bufs[task].lock().await;
                    conn.write_all(&size.to_le_bytes()).await.unwrap();
                    conn.read_exact(&mut buf).await.unwrap();
                }
            }
        });
        let r = Record::new("tcp", "raw-tcp", op, "ceiling")
            .size(size)
            .concurrency(c as u32)
            .timed(n, n * size, t, Some(&h));
        if !write {
            rate = r.bytes_per_s();
        }
        report.add(r);
    }
    rate
}

/// `redis-benchmark` against the run's Redis.
struct Redis(RedisServer);

impl Redis {
    /// A `redis-server` for the run, if it and `redis-benchmark` are installed.
    fn start() -> Option<Redis> {
        if !crate::peers::installed("redis-benchmark") {
            return None;
        }
        RedisServer::start().map(Redis)
    }

    /// SET and GET of `size` from `c` clients; the GET rate in bytes/s.
    fn round(&self, p: &TcpParams, size: u64, c: usize, report: &mut Report) -> Option<f64> {
        // About `seconds` per test at ~2 GB/s, and a few requests per client at least.
        let requests = ((p.seconds * 2e9 / size as f64) as usize).max(4 * c);
        let out = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &self.0.port.to_string()])
            .args(["-t", "set,get", "--csv"])
            .args(["-d", &size.to_string(), "-c", &c.to_string()])
            .args(["-n", &requests.to_string()])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut get_rate = None;
        for line in text.lines() {
            let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            let (op, rps) = match (fields.first(), fields.get(1).and_then(|r| r.parse().ok())) {
                (Some(&"SET"), Some(rps)) => ("put", rps),
                (Some(&"GET"), Some(rps)) => ("get", rps),
                _ => continue,
            };
            let rps: f64 = rps;
            let ms = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            let mut r = Record::new("tcp", "redis", op, "cross")
                .size(size)
                .concurrency(c as u32)
                .timed(
                    requests as u64,
                    requests as u64 * size,
                    Duration::from_secs_f64(requests as f64 / rps.max(1e-9)),
                    None,
                );
            r.p50_us = ms(4).map(|v| v * 1000.0);
            r.p99_us = ms(6).map(|v| v * 1000.0);
            if op == "get" {
                get_rate = Some(r.bytes_per_s());
            }
            report.add(r);
        }
        get_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_server_answers_reads_and_writes_in_full() {
        let rt = runtime(1);
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve_raw(listener));
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(&100_000u64.to_le_bytes()).await.unwrap();
            let mut got = vec![0u8; 100_000];
            conn.read_exact(&mut got).await.unwrap();
            assert!(got[..] == pattern(RAW_SOURCE as u64)[..100_000]);
            conn.write_all(&(5000 | WRITE_BIT).to_le_bytes())
                .await
                .unwrap();
            conn.write_all(&[7u8; 5000]).await.unwrap();
            let mut ack = [0u8; 1];
            conn.read_exact(&mut ack).await.unwrap();
            assert_eq!(ack, [1]);
        });
    }
}
