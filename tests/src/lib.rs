//! Harness of the end-to-end tests: runs the real `strata-server` binary as a child
//! process and hands out clients for it.
//!
//! Every test shares one build of the server: this crate's binaries `e2e-strata-server`
//! and `e2e-strata` are one-line mains calling the same entry points as `strata-server`
//! and `strata` (`strata_server::launch::main`, `strata_client::cli::main`). Cargo builds
//! them before it runs this crate's tests, with the same features, so the binary under test
//! is never stale and no nested cargo build runs. `STRATA_SERVER_BIN` / `STRATA_CLI_BIN`
//! point the tests at other binaries (a release build, an installed one).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strata_client::ClientConfig;

/// How long a server may take to print its listen address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn target_dir() -> PathBuf {
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable under <target>/<profile>/deps")
        .to_path_buf()
}

fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let path = target_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The `strata-server` binary under test.
pub fn server_binary() -> PathBuf {
    binary("STRATA_SERVER_BIN", "e2e-strata-server")
}

/// The `strata` command-line client under test.
pub fn cli_binary() -> PathBuf {
    binary("STRATA_CLI_BIN", "e2e-strata")
}

/// The same-host client process of the shared-memory tests (`src/bin/e2e-shm-client.rs`).
pub fn shm_client_binary() -> PathBuf {
    binary("STRATA_SHM_CLIENT_BIN", "e2e-shm-client")
}

/// A running `strata-server` child process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The certificate clients must trust.
    pub cert: PathBuf,
    /// Its data dir.
    pub data_dir: PathBuf,
    _owned_dir: Option<tempfile::TempDir>,
}

impl ServerProcess {
    /// Starts a server on a free loopback port with a fresh data dir and `args`.
    pub fn start(args: &[&str]) -> ServerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = ServerProcess::start_in(dir.path(), "127.0.0.1:0", args);
        server._owned_dir = Some(dir);
        server
    }

    /// Starts a server listening on `listen` with data dir `data_dir`.
    pub fn start_in(data_dir: &Path, listen: &str, args: &[&str]) -> ServerProcess {
        let listen: SocketAddr = listen.parse().expect("listen address");
        // A small tier unless the test sizes it itself.
        let capacity: &[&str] = if args.contains(&"--dram-capacity") {
            &[]
        } else {
            &["--dram-capacity", "256MiB"]
        };
        let mut child = Command::new(server_binary())
            .arg("--host")
            .arg(listen.ip().to_string())
            .arg("--port")
            .arg(listen.port().to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(capacity)
            .args(args)
            .env("STRATA_LOG", "warn")
            .env_remove("STRATA_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning strata-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut addr = None;
        let mut cert = None;
        while addr.is_none() || cert.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "strata-server exited or did not report its address within {START_TIMEOUT:?}"
                );
            };
            if let Some(a) = line.strip_prefix("strata-server listening on ") {
                addr = Some(a.trim().parse().expect("listen address"));
            } else if let Some(c) = line.strip_prefix("certificate: ") {
                cert = Some(PathBuf::from(c.trim()));
            }
        }
        ServerProcess {
            child,
            addr: addr.expect("checked above"),
            cert: cert.expect("checked above"),
            data_dir: data_dir.to_path_buf(),
            _owned_dir: None,
        }
    }

    /// A client configuration that reaches this server and trusts its certificate.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            server: self.addr.to_string(),
            ca_cert: Some(self.cert.clone()),
            ..ClientConfig::default()
        }
    }

    /// Kills the process with SIGKILL (a crash: no shutdown work at all) and reaps it.
    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL to the server");
        let status = self.child.wait().expect("reaping the server");
        assert!(
            !status.success(),
            "a killed server cannot exit cleanly: {status}"
        );
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting on the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 10 ms until it returns true or `within` passes; returns whether it
/// did. For conditions the server reaches on its own time (revokes, expiries).
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Deterministic bytes for block `i` of a test, `len` long: a value that differs at every
/// position and between blocks, so a misplaced or torn copy cannot pass a comparison.
pub fn block_value(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
