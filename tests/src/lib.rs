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

/// The client process of the soak test (`src/bin/e2e-soak-client.rs`).
pub fn soak_client_binary() -> PathBuf {
    binary("STRATA_SOAK_CLIENT_BIN", "e2e-soak-client")
}

/// The same-host client process of the shared-memory tests (`src/bin/e2e-shm-client.rs`).
pub fn shm_client_binary() -> PathBuf {
    binary("STRATA_SHM_CLIENT_BIN", "e2e-shm-client")
}

/// How [`ServerProcess::start_with`] sets up the server's process.
#[derive(Debug, Default)]
pub struct StartOptions {
    /// The umask the process starts with (default: this process's).
    pub umask: Option<u32>,
    /// Where its standard error goes (default: this process's).
    pub stderr: Option<std::fs::File>,
}

/// Runs `command` to its end, killing it if it has not ended `within`; its exit status and
/// its standard output and error as text. For commands expected to end by themselves (a
/// server refusing to start, a CLI call).
pub fn run_bounded(command: &mut Command, within: Duration) -> (ExitStatus, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the command");
    let pipe = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut text);
            }
            text
        })
    };
    let out = pipe(child.stdout.take().map(|s| Box::new(s) as _));
    let err = pipe(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting on the command") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not end within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// A running `strata-server` child process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The certificate clients must trust.
    pub cert: PathBuf,
    /// Where it serves `/metrics` and `/health`, unless told `--metrics-addr off`.
    pub metrics: Option<SocketAddr>,
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
        ServerProcess::start_with(data_dir, listen, args, StartOptions::default())
    }

    /// [`ServerProcess::start_in`], with the process set up as `options` say.
    pub fn start_with(
        data_dir: &Path,
        listen: &str,
        args: &[&str],
        options: StartOptions,
    ) -> ServerProcess {
        Self::try_start_with(data_dir, listen, args, options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ServerProcess::start_in`], or why the server did not start (it exited, for
    /// example because another process took its port, or it did not report in time).
    pub fn try_start_in(data_dir: &Path, listen: &str, args: &[&str]) -> Result<Self, String> {
        Self::try_start_with(data_dir, listen, args, StartOptions::default())
    }

    fn try_start_with(
        data_dir: &Path,
        listen: &str,
        args: &[&str],
        options: StartOptions,
    ) -> Result<ServerProcess, String> {
        let listen: SocketAddr = listen.parse().expect("listen address");
        // A small tier unless the test sizes it itself.
        let capacity: &[&str] = if args.contains(&"--dram-capacity") {
            &[]
        } else {
            &["--dram-capacity", "256MiB"]
        };
        let mut command = match options.umask {
            // The shell sets the umask, then becomes the server (same pid).
            Some(mask) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
                    .arg(server_binary());
                sh
            }
            None => Command::new(server_binary()),
        };
        // Every listener on a port of its own, so the suite runs beside a server on the
        // default ports and beside another copy of itself: a fixed QUIC port (a restart
        // on the same address) must not drag in the default metrics port or QUIC + 1.
        let mut own_ports: Vec<String> = Vec::new();
        if !args.contains(&"--metrics-addr") {
            own_ports.push("--metrics-addr".into());
            own_ports.push(SocketAddr::new(listen.ip(), 0).to_string());
        }
        if !args.contains(&"--data-port") {
            own_ports.push("--data-port".into());
            own_ports.push("0".into());
        }
        let stderr = match options.stderr {
            Some(file) => Stdio::from(file),
            None => Stdio::inherit(),
        };
        let mut child = command
            .arg("--host")
            .arg(listen.ip().to_string())
            .arg("--port")
            .arg(listen.port().to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(capacity)
            .args(&own_ports)
            .args(args)
            .env("STRATA_LOG", "warn")
            .env_remove("STRATA_CONFIG")
            .stdout(Stdio::piped())
            .stderr(stderr)
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
        let mut metrics = None;
        while addr.is_none() || cert.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "strata-server exited or did not report its address within {START_TIMEOUT:?}"
                ));
            };
            if let Some(url) = line.strip_prefix("metrics: http://") {
                let a = url.trim().trim_end_matches("/metrics");
                metrics = Some(a.parse().expect("metrics address"));
            } else if let Some(a) = line.strip_prefix("strata-server listening on ") {
                addr = Some(a.trim().parse().expect("listen address"));
            } else if let Some(c) = line.strip_prefix("certificate: ") {
                cert = Some(PathBuf::from(c.trim()));
            }
        }
        Ok(ServerProcess {
            child,
            addr: addr.expect("checked above"),
            cert: cert.expect("checked above"),
            metrics,
            data_dir: data_dir.to_path_buf(),
            _owned_dir: None,
        })
    }

    /// A client configuration that reaches this server and trusts its certificate.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            server: self.addr.to_string(),
            ca_cert: Some(self.cert.clone()),
            ..ClientConfig::default()
        }
    }

    /// The body of `GET /metrics` (panics unless it answers 200).
    pub fn scrape(&self) -> String {
        let addr = self.metrics.expect("this server serves metrics");
        let (status, body) = http_get(&format!("http://{addr}/metrics"));
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
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

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process now, bytes (`VmRSS` of `/proc/PID/status`).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading the server's status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("a VmRSS line")
            * 1024
    }

    /// Threads the process runs now (`/proc/PID/status`).
    pub fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading the server's status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("a Threads line")
    }

    /// Sends `signal` (`TERM`, `STOP`, ...) without waiting for anything.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "kill -{signal} {pid} failed"
        );
    }

    /// Waits (bounded) for the process to exit after a signal.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting on the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// `GET url` on loopback: the status and the body as text. Panics only when nothing
/// answers; an error status is returned like any other.
pub fn http_get(url: &str) -> (u16, String) {
    try_http_get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// [`http_get`], with `Err` when nothing answers (a server still starting).
pub fn try_http_get(url: &str) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut answer = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    let body = answer
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok((status, body))
}

pub use strata_server::metrics::series_value as metric;

/// A test that cannot run here says why and returns (the caller returns right after);
/// under `STRATA_REQUIRE_EXTERNAL=1` (CI, which provides everything) it fails instead.
pub fn skip_or_fail(why: &str) {
    let required = std::env::var("STRATA_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "cannot run: {why}, and STRATA_REQUIRE_EXTERNAL=1 (provide it, or unset the variable \
         to skip)"
    );
    eprintln!("skipped: {why}");
}

/// The path of external program `name` (of Debian package `package`), found on PATH. Where it is missing the test
/// should skip: this prints why and returns `None` — unless `STRATA_REQUIRE_EXTERNAL=1`
/// (CI, which installs it), where a missing program fails the test.
pub fn external_program(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip_or_fail(&format!(
            "{name} is not installed (Debian: apt-get install {package})"
        ));
    }
    found
}

/// The ssd tier's files (`*.ssd`) in `ssd_dir`, in name order.
pub fn ssd_files(ssd_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(ssd_dir)
        .expect("reading the ssd dir")
        .map(|e| e.expect("reading the ssd dir").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ssd"))
        .collect();
    files.sort();
    files
}

/// A free TCP port on loopback (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A real etcd (Debian's `etcd-server`) on free loopback ports with its data in a temp
/// dir, for the cluster tests; killed when dropped.
pub struct EtcdProcess {
    child: Option<Child>,
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    tls: Option<EtcdTlsFiles>,
}

/// The certificates of an etcd that serves clients over TLS and requires client
/// certificates (`--client-cert-auth`), all signed by one throwaway CA.
#[derive(Clone, Debug)]
pub struct EtcdTlsFiles {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// etcd's certificate and key (for 127.0.0.1).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate etcd accepts.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl EtcdTlsFiles {
    /// Makes a CA, a server certificate for 127.0.0.1 and a client certificate in `dir`.
    pub fn generate(dir: &Path) -> EtcdTlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let leaf = |names: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().expect("a key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.extended_key_usages = usages;
            let cert = params
                .signed_by(&key, &ca, &ca_key)
                .expect("a signed certificate");
            (cert.pem(), key.serialize_pem())
        };
        // etcd's gateway dials etcd's own gRPC port with the server certificate: it must
        // be good for client authentication too (etcd's security guide says as much).
        let (server_pem, server_key) = leaf(
            vec!["127.0.0.1".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_pem, client_key) = leaf(
            vec!["strata".into()],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("writing a certificate");
            path
        };
        EtcdTlsFiles {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("etcd.pem", &server_pem),
            server_key: write("etcd-key.pem", &server_key),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client-key.pem", &client_key),
        }
    }
}

impl EtcdProcess {
    /// Starts etcd and waits until it answers; `None` (after saying why) where etcd is
    /// not installed and the run may skip.
    pub fn start() -> Option<EtcdProcess> {
        EtcdProcess::start_with(false)
    }

    /// [`EtcdProcess::start`], serving clients over TLS with client certificates
    /// required ([`EtcdProcess::tls`] names the files).
    pub fn start_tls() -> Option<EtcdProcess> {
        EtcdProcess::start_with(true)
    }

    fn start_with(tls: bool) -> Option<EtcdProcess> {
        let binary = external_program("etcd", "etcd-server")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = tls.then(|| EtcdTlsFiles::generate(dir.path()));
        let mut etcd = EtcdProcess {
            child: None,
            binary,
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            tls,
        };
        etcd.spawn();
        Some(etcd)
    }

    /// The certificates, when etcd serves over TLS.
    pub fn tls(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    /// The client URL servers are given (`--etcd-endpoints`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// An HTTP agent that reaches this etcd (with the client certificate under TLS).
    fn agent(&self, timeout: Duration) -> ureq::Agent {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout));
        if let Some(files) = &self.tls {
            use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
            let read = |p: &Path| std::fs::read(p).expect("reading a certificate");
            let ca = Certificate::from_pem(&read(&files.ca)).expect("the CA");
            let cert = Certificate::from_pem(&read(&files.client_cert)).expect("the client cert");
            let key = PrivateKey::from_pem(&read(&files.client_key)).expect("the client key");
            config = config.tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::new_with_certs(&[ca]))
                    .client_cert(Some(ClientCert::new_with_certs(&[cert], key)))
                    .build(),
            );
        }
        config.build().into()
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.binary);
        if let Some(files) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&files.server_cert)
                .arg("--key-file")
                .arg(&files.server_key)
                .arg("--trusted-ca-file")
                .arg(&files.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg("strata-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
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
            .arg("--initial-cluster")
            .arg(format!("strata-test={peer}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("etcd.log")).expect("etcd log"))
            .spawn()
            .expect("spawning etcd");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/health", self.endpoint());
        let agent = self.agent(Duration::from_secs(2));
        let healthy = || {
            let mut answer = agent.get(&url).call().ok()?;
            let body = answer.body_mut().read_to_string().ok()?;
            Some(answer.status().as_u16() == 200 && body.contains("true"))
        };
        while healthy() != Some(true) {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many keys start with `prefix`, as etcd answers now (`None`: it does not).
    pub fn count_prefix(&self, prefix: &str) -> Option<u64> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("a non-empty prefix") += 1;
        let body = serde_json::json!({
            "key": b64.encode(prefix),
            "range_end": b64.encode(end),
            "count_only": true,
        });
        let agent = self.agent(Duration::from_millis(500));
        let mut answer = agent
            .post(&format!("{}/v3/kv/range", self.endpoint()))
            .send(body.to_string())
            .ok()?;
        let v: serde_json::Value =
            serde_json::from_str(&answer.body_mut().read_to_string().ok()?).ok()?;
        Some(v["count"].as_str().map_or(0, |c| c.parse().unwrap_or(0)))
    }

    /// Sends `signal` (`STOP`, `CONT`) to etcd.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("etcd runs").id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "kill -{signal} {pid} failed"
        );
    }

    /// Kills etcd (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
