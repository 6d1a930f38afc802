//! How a [`Client`](crate::Client) reaches its server.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The default server address: a server on this host with its default port.
pub const DEFAULT_SERVER: &str = "127.0.0.1:50088";

/// How value bytes travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// The most direct transport that works: shared memory (and device copies) when the
    /// server is on this host and shares its segments with this user, else the TCP data
    /// plane, else QUIC.
    #[default]
    Auto,
    /// Value bytes on QUIC streams, also on the same host.
    Quic,
    /// Shared memory only: connecting fails (`Unavailable`) when the segments cannot be
    /// mapped. Objects on tiers that cannot be mapped still come through the server.
    Shm,
    /// The TCP data plane, also on the same host: connecting fails (`Unavailable`) when
    /// the server runs none or its data port cannot be reached.
    Tcp,
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Transport, String> {
        match s {
            "auto" => Ok(Transport::Auto),
            "quic" => Ok(Transport::Quic),
            "shm" => Ok(Transport::Shm),
            "tcp" => Ok(Transport::Tcp),
            other => Err(format!(
                "unknown transport {other:?} (expected auto, quic, shm or tcp)"
            )),
        }
    }
}

/// Client settings. `ClientConfig::default()` reaches a server on this host started with
/// no flags: it trusts the certificate that server keeps in the default data dir.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of the server (a name or an address; `[::1]:50088` for IPv6).
    pub server: String,
    /// Certificate (PEM) to trust: the server's self-signed `server-cert.pem`, or the CA
    /// that issued its certificate. `None`: the certificate in the default data dir
    /// ([`default_cert_path`]) if there is one, and the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// Certificates (PEM text) trusted besides `ca_cert`: a cluster member's self-signed
    /// certificate, as the member view published it.
    pub trusted_pem: Option<String>,
    /// Name to check the server's certificate against. `None`: the host part of `server`.
    pub server_name: Option<String>,
    /// Token the server requires, if it requires one.
    pub auth_token: Option<String>,
    /// File holding the token (one line, not readable by other users), read at connect;
    /// not with `auth_token`.
    pub auth_token_file: Option<PathBuf>,
    /// Bound on establishing a connection (QUIC + TLS + handshake).
    pub connect_timeout: Duration,
    /// Bound on one operation once connected, transfer included.
    pub transfer_timeout: Duration,
    /// How value bytes travel.
    pub transport: Transport,
    /// Verify each value read from a QUIC stream against the checksum the server recorded
    /// at commit.
    pub verify_checksums: bool,
    /// Verify each value copied from shared memory too. Off by default: the bytes never
    /// leave this host's memory and the lease check already refuses reused space; hashing
    /// as it copies halves the read rate (`docs/benchmarks.md`). Turn it on to catch a
    /// reader racing a forced removal, or a process scribbling over the segments.
    pub verify_shm_checksums: bool,
    /// Locations kept in the lease cache (0: none; every read leases anew).
    pub location_cache_capacity: u64,
    /// A cached location is dropped this long before its lease ends, so it is never used
    /// with a lease about to lapse.
    pub lease_margin: Duration,
    /// Requests of a batch in flight at once.
    pub batch_concurrency: usize,
    /// Threads that copy one batch's values through shared memory in parallel.
    pub shm_copy_threads: usize,
    /// Connections to the server's TCP data plane, at most. They open as transfers
    /// overlap: a transfer takes an idle one rather than queue behind another.
    pub data_connections: usize,
    /// A value larger than this moves over the data plane in slices of at least this
    /// size, one per data connection (up to), side by side. Below it a value moves whole
    /// on one connection: on a 2-core loopback, cutting a 4 MiB value into 1 MiB slices
    /// halved its get rate (`docs/benchmarks.md`).
    pub stripe_size: u64,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            server: DEFAULT_SERVER.to_owned(),
            ca_cert: None,
            trusted_pem: None,
            server_name: None,
            auth_token: None,
            auth_token_file: None,
            connect_timeout: Duration::from_secs(10),
            transfer_timeout: Duration::from_secs(10),
            transport: Transport::Auto,
            verify_checksums: true,
            verify_shm_checksums: false,
            location_cache_capacity: 1 << 20,
            lease_margin: Duration::from_millis(500),
            batch_concurrency: 64,
            shm_copy_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            data_connections: 16,
            stripe_size: 8 << 20,
        }
    }
}

/// Where a server started without `--data-dir` keeps its certificate:
/// `<data home>/strata/server-cert.pem` (e.g. `~/.local/share/strata/server-cert.pem`).
pub fn default_cert_path() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("strata").join("server-cert.pem"))
}
