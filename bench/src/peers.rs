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
