//! The fault-injection soak (docs/reliability.md): client processes put, get, look up and
//! remove values whose bytes derive from their keys, every read checked, while a chaos
//! loop SIGKILLs clients in the middle of their work and SIGKILLs and restarts the server
//! on its data dir (the ssd tier recovering each time), with tiers small enough that
//! eviction, demotion and refused puts run all along. Then: no client ever read a wrong
//! byte, leases and reservations are back to 0 within the lease TTL and put timeout, every
//! extent is given back (removing everything leaves every tier at 0 bytes used), and the
//! server's memory is bounded.
//!
//! CI runs it for 60 s; `STRATA_SOAK_SECONDS=600` runs the 10-minute version.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_client::Client;
use strata_tests::{eventually, free_port, metric, soak_client_binary, ServerProcess};

const LEASE_TTL_MS: u64 = 2_000;
const PUT_TIMEOUT_MS: u64 = 3_000;

fn server_args() -> Vec<String> {
    [
        "--device-plugin",
        "off",
        "--dram-capacity",
        "32MiB",
        "--ssd-capacity",
        "96MiB",
        "--default-kv-lease-ttl",
        &LEASE_TTL_MS.to_string(),
        "--put-timeout",
        &PUT_TIMEOUT_MS.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts the server on `port`, trying again a few times: the port was free when chosen,
/// but another test's server may bind it in between (its own ports are the kernel's
/// choice), and a server killed a moment ago may not have let go of it yet. Once
/// `may_move`, a port still taken is given up for another free one.
fn start_server(dir: &std::path::Path, port: &mut u16, may_move: bool) -> ServerProcess {
    let args = server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut last = String::new();
    for attempt in 0..5 {
        match ServerProcess::try_start_in(dir, &format!("127.0.0.1:{port}"), &args) {
            Ok(server) => return server,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200 * (attempt + 1)));
        if may_move {
            *port = free_port();
        }
    }
    panic!("the server did not start in 5 tries: {last}");
}

/// A runtime for the test's own client calls.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The server's figures now (asked by a client of its own, over QUIC).
fn stats_now(server: &ServerProcess) -> strata_client::ServerStats {
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect(server.client_config()).await.unwrap();
        client.stats().await.unwrap()
    })
}

/// Objects the server indexes now.
fn objects_now(server: &ServerProcess) -> u64 {
    stats_now(server).objects
}

/// Objects whose bytes are on the ssd tier now.
fn ssd_objects_now(server: &ServerProcess) -> u64 {
    let stats = stats_now(server);
    stats
        .tiers
        .iter()
        .filter(|t| t.kind == "ssd")
        .map(|t| t.objects)
        .sum()
}

/// Sends `signal` to a child process.
fn signal(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
}

struct SoakClient {
    child: Child,
    seed: u64,
}

fn spawn_client(server: &ServerProcess, transport: &str, seed: u64, seconds: f64) -> SoakClient {
    let child = Command::new(soak_client_binary())
        .arg(server.addr.to_string())
        .arg(&server.cert)
        .arg(transport)
        .arg(seed.to_string())
        .arg(format!("{seconds:.1}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning a soak client");
    SoakClient { child, seed }
}

/// Waits for a client that ran to its end; its report line. Fails on a wrong byte (exit 3)
/// or any other failure.
fn finish(client: SoakClient) -> String {
    let out = client
        .child
        .wait_with_output()
        .expect("waiting on a soak client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "soak client {} ended {}: {stdout}{stderr}",
        client.seed,
        out.status
    );
    stdout
}

#[test]
fn chaos_serves_no_wrong_byte_and_leaks_nothing() {
    let seconds: f64 = std::env::var("STRATA_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0);
    let dir = tempfile::tempdir().unwrap();
    // The ssd tier (96 MiB of sparse files) on a 48 MiB filesystem where this process may
    // mount one: demotions then also run into ENOSPC all along.
    let full_disk = Tmpfs::mount(&dir.path().join("ssd"), "48m");
    let mut port = free_port();
    let mut server = start_server(dir.path(), &mut port, true);
    let transports = ["shm", "tcp", "quic"];
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let left = |now: Instant| end.saturating_duration_since(now).as_secs_f64().max(1.0);
    let mut next_seed = 1u64;
    let mut clients: Vec<SoakClient> = transports
        .iter()
        .map(|t| {
            next_seed += 1;
            spawn_client(&server, t, next_seed, left(Instant::now()))
        })
        .collect();
    let (mut client_kills, mut server_kills, mut reports) = (0, 0, Vec::new());
    let mut recovered = Vec::new();
    let mut tick = 0u64;
    while Instant::now() + Duration::from_secs(3) < end {
        std::thread::sleep(Duration::from_millis(500));
        tick += 1;
        if tick % 4 == 0 {
            // A client killed in the middle of whatever it was doing, and replaced.
            let victim = (tick / 4) as usize % clients.len();
            let mut old = clients.remove(victim);
            let _ = old.child.kill();
            let _ = old.child.wait();
            client_kills += 1;
            next_seed += 1;
            let transport = transports[victim % transports.len()];
            clients.insert(
                victim,
                spawn_client(&server, transport, next_seed, left(Instant::now())),
            );
        }
        if tick % 24 == 0 {
            // The server killed (no shutdown work at all) and started on its data dir.
            // The clients held still, the ssd tier's objects counted, the server killed
            // (no shutdown work at all) and started on its data dir: it must index at
            // least what its ssd tier held (dram's contents died with the process).
            for c in &clients {
                signal(&c.child, "STOP");
            }
            std::thread::sleep(Duration::from_millis(300));
            let on_ssd = ssd_objects_now(&server);
            server.kill_hard();
            server_kills += 1;
            server = start_server(dir.path(), &mut port, false);
            let back = objects_now(&server);
            for c in &clients {
                signal(&c.child, "CONT");
            }
            assert!(
                back >= on_ssd,
                "restart {server_kills}: {on_ssd} objects on ssd before the kill, {back} after"
            );
            recovered.push((on_ssd, back));
        }
    }
    for c in clients {
        reports.push(finish(c));
    }
    let ops: u64 = reports
        .iter()
        .filter_map(|r| r.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    let checked: u64 = reports
        .iter()
        .filter_map(|r| r.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum();
    eprintln!(
        "soak {seconds} s, ssd on a 48 MiB tmpfs: {}",
        full_disk.is_some()
    );
    eprintln!(
        "soak {seconds} s: {client_kills} clients and {server_kills} servers killed (objects on \
         ssd before each kill, and indexed after it: {recovered:?}); the last clients did {ops} operations and \
         checked {checked} values: {reports:?}"
    );
    assert!(checked > 0, "no value was ever read back");
    assert!(
        recovered.iter().all(|(on_ssd, _)| *on_ssd > 0),
        "the ssd tier was empty at a kill, so recovery went untested: {recovered:?}"
    );

    // Leases and reservations end on their own within their TTL and put timeout.
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect(server.client_config()).await.unwrap();
        let settle = Duration::from_millis(LEASE_TTL_MS.max(PUT_TIMEOUT_MS) + 3_000);
        let drained = eventually(settle, || async {
            let stats = client.stats().await.unwrap();
            let text = server.scrape();
            stats.pending == 0 && metric(&text, "strata_leases_active") == Some(0.0)
        })
        .await;
        let stats = client.stats().await.unwrap();
        assert!(
            drained,
            "leases or reservations outlived their time: {stats:?}"
        );

        // Every extent is given back: with everything removed, no tier holds a byte.
        client.remove_all(true).await.unwrap();
        let empty = eventually(Duration::from_secs(10), || async {
            let stats = client.stats().await.unwrap();
            stats.objects == 0 && stats.tiers.iter().all(|t| t.used == 0)
        })
        .await;
        let stats = client.stats().await.unwrap();
        assert!(empty, "space leaked: {:?}", stats.tiers);
    });
    // Memory: the dram tier (32 MiB) plus the server's own overhead, bounded.
    let rss = server.rss();
    eprintln!("server RSS at the end: {} MiB", rss >> 20);
    assert!(rss < 256 << 20, "server RSS {} MiB", rss >> 20);
}

/// Mounts a tmpfs of `size` at `dir`; unmounted when dropped. `None` (after saying why)
/// where this process may not mount (not root, or a container without the capability).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs here ({})",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: no mount command ({e})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_ssd_filesystem_costs_values_never_bytes_or_the_server() {
    let dir = tempfile::tempdir().unwrap();
    // An 8 MiB filesystem under a 64 MiB ssd tier (its files are sparse, so they fit
    // until written): demotions run into ENOSPC.
    let Some(fs) = Tmpfs::mount(&dir.path().join("ssd"), "8m") else {
        return;
    };
    let ssd = fs.0.to_str().unwrap().to_owned();
    let server = ServerProcess::start(&[
        "--device-plugin",
        "off",
        "--dram-capacity",
        "16MiB",
        "--ssd-path",
        &ssd,
        "--ssd-capacity",
        "64MiB",
    ]);
    let rt = runtime();
    rt.block_on(async {
        let client = Client::connect(server.client_config()).await.unwrap();
        let value = |i: u64| strata_tests::block_value(i, 512 << 10);
        let mut stored = 0;
        for i in 0..96u64 {
            // 48 MiB through a 16 MiB dram tier: most of it is demoted, and the disk is
            // full after 8 MiB.
            if client
                .put_from(format!("full-{i}").as_bytes(), &value(i))
                .await
                .is_ok()
            {
                stored += 1;
            }
        }
        assert!(stored > 0);
        let (mut served, mut gone) = (0, 0);
        for i in 0..96u64 {
            match client.get(format!("full-{i}").as_bytes()).await {
                Ok(v) => {
                    assert!(v[..] == value(i)[..], "full-{i}: wrong bytes");
                    served += 1;
                }
                Err(e) => {
                    assert!(
                        matches!(
                            e.code(),
                            strata_client::ErrorCode::NotFound | strata_client::ErrorCode::Corrupt
                        ),
                        "full-{i}: {e}"
                    );
                    gone += 1;
                }
            }
        }
        eprintln!(
            "full ssd filesystem: {stored} puts accepted, {served} served intact, {gone} lost"
        );
        assert!(served > 0, "nothing survived");
        let text = server.scrape();
        let errors = metric(&text, "strata_ssd_io_errors_total").unwrap_or(0.0);
        eprintln!("ssd I/O errors counted: {errors}");
        // Failed tombstones are retried with a growing wait, not at every placement: a
        // full disk once made over 11,000 failed writes (and warnings) in two seconds here.
        assert!(
            errors < 2_000.0,
            "{errors} ssd I/O errors: a retry loop without a wait?"
        );
        // And the server still takes and serves new values.
        client.ping().await.unwrap();
        client.put_from(b"after-full", &value(1000)).await.unwrap();
        assert!(client.get(b"after-full").await.unwrap()[..] == value(1000)[..]);
    });
    drop(server);
}
