//! The peers the bench starts for a run, on loopback, and stops with it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `tool --version` runs.
pub fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A free TCP port on loopback (bound, then released for the peer to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `redis-server` started for the run (no persistence), killed when dropped.
pub struct RedisServer {
    server: Child,
    pub port: u16,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl RedisServer {
    /// Starts one; `None` (with the reason printed) where `redis-server` is missing or
    /// does not listen within 10 s.
    pub fn start() -> Option<RedisServer> {
        if !installed("redis-server") {
            println!("redis: skipped (not installed: apt-get install redis-server)");
            return None;
        }
        let port = free_port();
        let server = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let redis = RedisServer { server, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                println!("redis: redis-server did not listen within 10 s; skipped");
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// A `memcached` with extstore started for the run: `memory` bytes of DRAM and a flash
/// file of `disk` bytes in `dir`, killed when dropped.
pub struct MemcachedServer {
    server: Child,
    pub port: u16,
    /// The command line, for the report.
    pub args: String,
}

impl MemcachedServer {
    /// The server's process id, to watch its memory.
    pub fn pid(&self) -> u32 {
        self.server.id()
    }
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl MemcachedServer {
    /// Starts one; `None` (with the reason printed) where `memcached` is missing or does
    /// not listen within 10 s.
    pub fn start(memory: u64, disk: u64, dir: &std::path::Path) -> Option<MemcachedServer> {
        if !installed("memcached") {
            println!("memcached-extstore: skipped (not installed: apt-get install memcached)");
            return None;
        }
        let port = free_port();
        let mut args = vec![
            "-l".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-U".into(),
            "0".into(),
            "-m".into(),
            (memory >> 20).max(1).to_string(),
            "-t".into(),
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .to_string(),
            "-o".into(),
            format!(
                "ext_path={}:{}m",
                dir.join("extstore").display(),
                disk >> 20
            ),
        ];
        // memcached refuses to run as root unless told which user to be.
        if rustix::process::geteuid().is_root() {
            args.extend(["-u".into(), "root".into()]);
        }
        let server = Command::new("memcached")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let memcached = MemcachedServer {
            server,
            port,
            args: format!("memcached {}", args.join(" ")),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                println!("memcached-extstore: memcached did not listen within 10 s; skipped");
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(memcached)
    }
}

/// One connection speaking memcached's text protocol: `set` and `get`, one at a time.
pub struct Memcached {
    stream: tokio::io::BufStream<tokio::net::TcpStream>,
    line: Vec<u8>,
}

impl Memcached {
    pub async fn connect(port: u16) -> std::io::Result<Memcached> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Memcached {
            stream: tokio::io::BufStream::new(stream),
            line: Vec::new(),
        })
    }

    async fn read_line(&mut self) -> std::io::Result<&[u8]> {
        use tokio::io::AsyncBufReadExt;
        self.line.clear();
        self.stream.read_until(b'\n', &mut self.line).await?;
        if !self.line.ends_with(b"\r\n") {
            return Err(std::io::Error::other("memcached closed the connection"));
        }
        Ok(&self.line[..self.line.len() - 2])
    }

    /// Stores `value` under `key`; false where memcached refused it (out of memory).
    pub async fn set(&mut self, key: &str, value: &[u8]) -> std::io::Result<bool> {
        use tokio::io::AsyncWriteExt;
        let header = format!("set {key} 0 0 {}\r\n", value.len());
        self.stream.write_all(header.as_bytes()).await?;
        self.stream.write_all(value).await?;
        self.stream.write_all(b"\r\n").await?;
        self.stream.flush().await?;
        let line = self.read_line().await?;
        match line {
            b"STORED" => Ok(true),
            l if l.starts_with(b"SERVER_ERROR") => Ok(false),
            l => Err(std::io::Error::other(format!(
                "memcached set: {}",
                String::from_utf8_lossy(l)
            ))),
        }
    }

    /// Whether `key` is stored, without moving its value (a meta get with no flags:
    /// `HD` on a hit, `EN` on a miss).
    pub async fn contains(&mut self, key: &str) -> std::io::Result<bool> {
        use tokio::io::AsyncWriteExt;
        self.stream
            .write_all(format!("mg {key}\r\n").as_bytes())
            .await?;
        self.stream.flush().await?;
        match self.read_line().await? {
            b"HD" => Ok(true),
            b"EN" => Ok(false),
            l => Err(std::io::Error::other(format!(
                "memcached mg: {}",
                String::from_utf8_lossy(l)
            ))),
        }
    }

    /// Reads `key`'s value into `buf` (which must be its length); false on a miss.
    pub async fn get_into(&mut self, key: &str, buf: &mut [u8]) -> std::io::Result<bool> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream
            .write_all(format!("get {key}\r\n").as_bytes())
            .await?;
        self.stream.flush().await?;
        let line = self.read_line().await?;
        if line == b"END" {
            return Ok(false);
        }
        // VALUE <key> <flags> <bytes>
        let len = std::str::from_utf8(line)
            .ok()
            .filter(|l| l.starts_with("VALUE "))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                std::io::Error::other(format!("memcached get: {}", String::from_utf8_lossy(line)))
            })?;
        if len != buf.len() {
            return Err(std::io::Error::other(format!(
                "memcached get: {len} bytes, expected {}",
                buf.len()
            )));
        }
        self.stream.read_exact(buf).await?;
        let mut end = [0u8; 7]; // "\r\nEND\r\n"
        self.stream.read_exact(&mut end).await?;
        if &end != b"\r\nEND\r\n" {
            return Err(std::io::Error::other("memcached get: bad value terminator"));
        }
        Ok(true)
    }
}

/// For the bench's own tests: whether `tool` is there to be run beside strata. A missing
/// tool is a printed skip, or a failure under `STRATA_REQUIRE_EXTERNAL=1` (CI installs it).
#[cfg(test)]
pub fn expect_installed(tool: &str, package: &str) -> bool {
    if installed(tool) {
        return true;
    }
    let required = std::env::var("STRATA_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{tool} is not installed and STRATA_REQUIRE_EXTERNAL=1: apt-get install {package}"
    );
    println!("{tool} not installed (apt-get install {package}): its rows are not checked");
    false
}
