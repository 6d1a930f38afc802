//! The server binary's settings: command-line flags, their environment fallbacks and an
//! optional TOML file, resolved into the engine's and the service's configurations.
//!
//! Precedence, highest first: flag, environment variable (`STRATA_<FLAG>`), config file
//! (`--config`, keys named like the flags: `dram-capacity = "4GiB"`), built-in default.
//! Flag names follow Mooncake's where one exists, so deployment guides map one to one.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use strata_device::Backend;
use strata_proto::{Error, ErrorCode, Result};

use crate::net::{DataPlaneConfig, ServiceConfig, TlsSource};
use strata_engine::{DeviceOptions, SsdOptions, StoreConfig, TierConfig};

/// Default QUIC port (Mooncake's master uses the same number).
pub const DEFAULT_PORT: u16 = 50088;

/// Where `/metrics` and `/health` are served unless told otherwise: loopback only, since
/// the figures describe the host's cache.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9003);

/// A byte size: plain bytes (`1073741824`) or with a unit (`1GB`, `512MiB`, `64 KiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Size, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Size(n));
        }
        s.parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("{s:?} is not a size like 1GB, 512MiB or 1073741824 ({e})"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `strata-server`: one per host; stores KV-cache blocks for inference engines.
#[derive(Parser, Debug, Default, Deserialize)]
#[command(name = "strata-server", version, about)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ServerArgs {
    /// TOML file with any of these settings, keys named like the flags.
    #[arg(long, env = "STRATA_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "STRATA_HOST")]
    pub host: Option<String>,
    /// QUIC (UDP) port [default: 50088].
    #[arg(long, env = "STRATA_PORT")]
    pub port: Option<u16>,
    /// Bytes of host memory for the dram tier [default: 512MiB].
    #[arg(long, env = "STRATA_DRAM_CAPACITY")]
    pub dram_capacity: Option<Size>,
    /// Evict a tier once its used bytes pass this fraction of capacity [default: 0.9].
    #[arg(long, env = "STRATA_EVICTION_HIGH_WATERMARK_RATIO")]
    pub eviction_high_watermark_ratio: Option<f64>,
    /// Fraction of capacity one eviction pass frees [default: 0.1].
    #[arg(long, env = "STRATA_EVICTION_RATIO")]
    pub eviction_ratio: Option<f64>,
    /// Fraction of a tier's capacity that objects read there may keep before they are
    /// evicted ahead of unread ones [default: 0.8].
    #[arg(long, env = "STRATA_EVICTION_PROTECTED_RATIO")]
    pub eviction_protected_ratio: Option<f64>,
    /// Read lease length in milliseconds [default: 10000].
    #[arg(long, env = "STRATA_DEFAULT_KV_LEASE_TTL")]
    pub default_kv_lease_ttl: Option<u64>,
    /// Milliseconds a writer has from put_start to put_end [default: 30000].
    #[arg(long, env = "STRATA_PUT_TIMEOUT")]
    pub put_timeout: Option<u64>,
    /// Where the server keeps its certificate and (later) its ssd tier
    /// [default: <data home>/strata, e.g. ~/.local/share/strata].
    #[arg(long, env = "STRATA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain to serve instead of the generated self-signed one.
    #[arg(long, env = "STRATA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "STRATA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Shared token clients must present (none: any client that trusts the certificate).
    /// A flag's value is visible to every local user (/proc/PID/cmdline): prefer
    /// --auth-token-file or the STRATA_AUTH_TOKEN environment variable.
    #[arg(long, env = "STRATA_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// File holding the shared token (one line; it must not be readable by other users:
    /// chmod 600). Not with --auth-token.
    #[arg(long, env = "STRATA_AUTH_TOKEN_FILE", conflicts_with = "auth_token")]
    pub auth_token_file: Option<PathBuf>,
    /// HTTP address serving Prometheus metrics (`/metrics`) and `/health`, or `off`
    /// [default: 127.0.0.1:9003; with --port 0, a free port on the listen address].
    #[arg(long, env = "STRATA_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// QUIC connections served at once; one more is refused with a clear reason
    /// [default: 4096].
    #[arg(long, env = "STRATA_MAX_CONNECTIONS")]
    pub max_connections: Option<u64>,
    /// Index shards, a power of two [default: 64].
    #[arg(long, env = "STRATA_SHARDS")]
    pub shards: Option<usize>,
    /// Milliseconds shutdown waits for in-flight requests [default: 5000].
    #[arg(long, env = "STRATA_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<u64>,
    /// Unix socket through which same-host clients map the dram tier (shared-memory
    /// transport), or `off` [default: <data dir>/shm.sock].
    #[arg(long, env = "STRATA_SHM_SOCKET")]
    pub shm_socket: Option<String>,
    /// Directory of the ssd tier's files, or `off` for no ssd tier [default: <data dir>/ssd].
    #[arg(long, env = "STRATA_SSD_PATH")]
    pub ssd_path: Option<String>,
    /// Bytes of the ssd tier [default: 1GiB]. Its files are sparse: disk is used as filled.
    #[arg(long, env = "STRATA_SSD_CAPACITY")]
    pub ssd_capacity: Option<Size>,
    /// I/O engine of the ssd tier: auto, io_uring or psync [default: auto, which is
    /// io_uring where the kernel allows it].
    #[arg(long, env = "STRATA_SSD_IO_ENGINE")]
    pub ssd_io_engine: Option<String>,
    /// Operations the ssd tier keeps in flight per batch [default: 32].
    #[arg(long, env = "STRATA_SSD_QUEUE_DEPTH")]
    pub ssd_queue_depth: Option<u32>,
    /// What the ssd tier does with its files at start: none (start empty), quick (index
    /// every valid record header) or verify (also re-check every value) [default: quick].
    #[arg(long, env = "STRATA_SSD_RECOVERY")]
    pub ssd_recovery: Option<String>,
    /// Which dram victims are written to ssd: admit-all or second-hit (only those read at
    /// least once after their put) [default: admit-all].
    #[arg(long, env = "STRATA_SSD_ADMISSION")]
    pub ssd_admission: Option<String>,
    /// Device module of the device tier: host-sim, cuda, ascend, the path of a plugin
    /// implementing strata_device.h, or `off` for no device tier [default: host-sim].
    #[arg(long, env = "STRATA_DEVICE_PLUGIN")]
    pub device_plugin: Option<String>,
    /// Which device of the module [default: 0].
    #[arg(long, env = "STRATA_DEVICE_INDEX")]
    pub device_index: Option<u32>,
    /// Bytes of device memory the server allocates for the device tier; 0 keeps only the
    /// segments clients mount [default: 128MiB].
    #[arg(long, env = "STRATA_DEVICE_CAPACITY")]
    pub device_capacity: Option<Size>,
    /// Milliseconds a mounted segment's owner may go without a heartbeat before the
    /// segment is dropped with its objects [default: 5000].
    #[arg(long, env = "STRATA_SEGMENT_HEARTBEAT_TIMEOUT")]
    pub segment_heartbeat_timeout: Option<u64>,
    /// On SIGINT/SIGTERM, move dram's contents to the ssd tier before exiting, so they are
    /// there after the restart [default: false].
    #[arg(long, env = "STRATA_PERSIST_ON_SHUTDOWN", num_args = 0..=1, default_missing_value = "true")]
    pub persist_on_shutdown: Option<bool>,
    /// Data plane for value bytes between hosts: tcp (a TCP port beside QUIC's, each
    /// connection proven by its QUIC session) or off [default: tcp].
    #[arg(long, env = "STRATA_DATA_PLANE")]
    pub data_plane: Option<String>,
    /// TCP port of the data plane [default: the QUIC port + 1; 0 picks a free one].
    #[arg(long, env = "STRATA_DATA_PORT")]
    pub data_port: Option<u16>,
    /// Data connections speak TLS (the QUIC certificate), for untrusted networks
    /// [default: false].
    #[arg(long, env = "STRATA_DATA_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub data_tls: Option<bool>,
    /// Milliseconds one data-plane transfer may take before the server gives up on its
    /// connection (a put then is revoked) [default: 30000].
    #[arg(long, env = "STRATA_TRANSFER_TIMEOUT")]
    pub transfer_timeout: Option<u64>,
    /// etcd client URLs, comma-separated (http://127.0.0.1:2379,...): this server joins
    /// the cluster --cluster-id there (docs/cluster.md). Without it the server runs alone.
    #[arg(long, env = "STRATA_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,
    /// CA certificates (PEM) that sign etcd's certificates, for https:// endpoints
    /// [default: the bundled public roots].
    #[arg(long, env = "STRATA_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an etcd that requires one (--client-cert-auth).
    #[arg(long, env = "STRATA_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long, env = "STRATA_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Which cluster in etcd to join [default: default].
    #[arg(long, env = "STRATA_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// This server's stable id in the cluster [default: made once and kept in
    /// <data dir>/node-id].
    #[arg(long, env = "STRATA_NODE_ID")]
    pub node_id: Option<String>,
    /// HOST[:PORT] clients reach this server's QUIC service at [default: the listen
    /// address, which then must not be 0.0.0.0 or ::].
    #[arg(long, env = "STRATA_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Seconds this server's member record outlives its last renewal in etcd
    /// [default: 5].
    #[arg(long, env = "STRATA_MEMBER_TTL")]
    pub member_ttl: Option<u64>,
    /// This server's share of the cluster's keys relative to the others [default: 1].
    #[arg(long, env = "STRATA_WEIGHT")]
    pub weight: Option<f64>,
    /// Blocks per placement run, for a cluster this server creates; must match an
    /// existing cluster's [default: 16, or the cluster's].
    #[arg(long, env = "STRATA_RUN_BLOCKS")]
    pub run_blocks: Option<u32>,
    /// Placement seed, as --run-blocks [default: the cluster's, or a fixed one].
    #[arg(long, env = "STRATA_PLACEMENT_SEED")]
    pub placement_seed: Option<u64>,
    /// Seconds after a member joins during which clients also look a miss up at the
    /// run's previous owner [default: 600].
    #[arg(long, env = "STRATA_JOIN_WINDOW")]
    pub join_window: Option<u64>,
    /// Milliseconds a leaving member goes on serving after it left the view, for reads
    /// leased just before [default: 1000].
    #[arg(long, env = "STRATA_LEAVE_GRACE")]
    pub leave_grace: Option<u64>,
}

/// The cluster flags, checked; the node id and advertised port are settled at start.
#[derive(Clone, Debug)]
pub struct ClusterArgs {
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// TLS for https:// endpoints.
    pub etcd_tls: crate::cluster::etcd::EtcdTls,
    /// The cluster's id.
    pub cluster_id: String,
    /// `--node-id`, if given.
    pub node_id: Option<String>,
    /// `--advertise-addr`, if given.
    pub advertise_addr: Option<String>,
    /// Member record TTL.
    pub member_ttl: Duration,
    /// Weight.
    pub weight: f64,
    /// `--run-blocks`, if given.
    pub run_blocks: Option<u32>,
    /// `--placement-seed`, if given.
    pub seed: Option<u64>,
    /// The join window.
    pub join_window: Duration,
    /// Serving after leaving.
    pub leave_grace: Duration,
}

/// Everything the binary needs to start, resolved and checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The engine.
    pub store: StoreConfig,
    /// The network service.
    pub service: ServiceConfig,
    /// The data dir (certificate, later the ssd tier).
    pub data_dir: PathBuf,
    /// Demote dram to ssd on a graceful shutdown.
    pub persist_on_shutdown: bool,
    /// The cluster to join, if any.
    pub cluster: Option<ClusterArgs>,
}

fn invalid(msg: String) -> Error {
    Error::new(ErrorCode::InvalidArgument, msg)
}

/// The default data dir: `strata` under the user's data home.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("strata")
}

impl ServerArgs {
    /// Fills every setting not given by flag or environment from `file`.
    fn or_file(self, file: ServerArgs) -> ServerArgs {
        // The token comes whole from one level: a token file given by flag is not in
        // conflict with a token in the config file, it overrides it.
        let (auth_token, auth_token_file) =
            if self.auth_token.is_some() || self.auth_token_file.is_some() {
                (self.auth_token, self.auth_token_file)
            } else {
                (file.auth_token, file.auth_token_file)
            };
        ServerArgs {
            config: self.config,
            host: self.host.or(file.host),
            port: self.port.or(file.port),
            dram_capacity: self.dram_capacity.or(file.dram_capacity),
            eviction_high_watermark_ratio: self
                .eviction_high_watermark_ratio
                .or(file.eviction_high_watermark_ratio),
            eviction_ratio: self.eviction_ratio.or(file.eviction_ratio),
            eviction_protected_ratio: self
                .eviction_protected_ratio
                .or(file.eviction_protected_ratio),
            default_kv_lease_ttl: self.default_kv_lease_ttl.or(file.default_kv_lease_ttl),
            put_timeout: self.put_timeout.or(file.put_timeout),
            data_dir: self.data_dir.or(file.data_dir),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            auth_token,
            auth_token_file,
            metrics_addr: self.metrics_addr.or(file.metrics_addr),
            shards: self.shards.or(file.shards),
            max_connections: self.max_connections.or(file.max_connections),
            shutdown_grace: self.shutdown_grace.or(file.shutdown_grace),
            shm_socket: self.shm_socket.or(file.shm_socket),
            ssd_path: self.ssd_path.or(file.ssd_path),
            ssd_capacity: self.ssd_capacity.or(file.ssd_capacity),
            ssd_io_engine: self.ssd_io_engine.or(file.ssd_io_engine),
            ssd_queue_depth: self.ssd_queue_depth.or(file.ssd_queue_depth),
            ssd_recovery: self.ssd_recovery.or(file.ssd_recovery),
            ssd_admission: self.ssd_admission.or(file.ssd_admission),
            persist_on_shutdown: self.persist_on_shutdown.or(file.persist_on_shutdown),
            device_plugin: self.device_plugin.or(file.device_plugin),
            device_index: self.device_index.or(file.device_index),
            device_capacity: self.device_capacity.or(file.device_capacity),
            segment_heartbeat_timeout: self
                .segment_heartbeat_timeout
                .or(file.segment_heartbeat_timeout),
            data_plane: self.data_plane.or(file.data_plane),
            data_port: self.data_port.or(file.data_port),
            data_tls: self.data_tls.or(file.data_tls),
            transfer_timeout: self.transfer_timeout.or(file.transfer_timeout),
            etcd_endpoints: self.etcd_endpoints.or(file.etcd_endpoints),
            etcd_ca: self.etcd_ca.or(file.etcd_ca),
            etcd_cert: self.etcd_cert.or(file.etcd_cert),
            etcd_key: self.etcd_key.or(file.etcd_key),
            cluster_id: self.cluster_id.or(file.cluster_id),
            node_id: self.node_id.or(file.node_id),
            advertise_addr: self.advertise_addr.or(file.advertise_addr),
            member_ttl: self.member_ttl.or(file.member_ttl),
            weight: self.weight.or(file.weight),
            run_blocks: self.run_blocks.or(file.run_blocks),
            placement_seed: self.placement_seed.or(file.placement_seed),
            join_window: self.join_window.or(file.join_window),
            leave_grace: self.leave_grace.or(file.leave_grace),
        }
    }

    /// Reads the config file (if any) and resolves every setting.
    pub fn resolve(self) -> Result<Settings> {
        let args = match &self.config {
            Some(path) => {
                let file = read_file(path)?;
                self.or_file(file)
            }
            None => self,
        };
        args.into_settings()
    }

    fn into_settings(self) -> Result<Settings> {
        let host = self.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
        let port = self.port.unwrap_or(DEFAULT_PORT);
        let listen = resolve_addr(&host, port)?;
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let capacity = self.dram_capacity.map_or(512 << 20, |s| s.0);
        let mut tiers: Vec<TierConfig> = self.device_tier()?.into_iter().collect();
        tiers.push(TierConfig::dram(capacity));
        if let Some(ssd) = self.ssd_tier(&data_dir)? {
            tiers.push(ssd);
        }
        let store = StoreConfig {
            tiers,
            eviction_high_watermark_ratio: self.eviction_high_watermark_ratio.unwrap_or(0.9),
            eviction_ratio: self.eviction_ratio.unwrap_or(0.1),
            eviction_protected_ratio: self.eviction_protected_ratio.unwrap_or(0.8),
            lease_ttl: Duration::from_millis(self.default_kv_lease_ttl.unwrap_or(10_000)),
            put_timeout: Duration::from_millis(self.put_timeout.unwrap_or(30_000)),
            shards: self.shards.unwrap_or(64),
            ..StoreConfig::default()
        };
        store.validate()?;
        let data_plane = self.data_plane(listen)?;
        let cluster = self.cluster()?;
        let metrics_addr = self.metrics_addr(listen)?;
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            (None, None) => TlsSource::SelfSigned {
                dir: data_dir.clone(),
                names: certificate_names(listen.ip()),
            },
            _ => return Err(invalid("--tls-cert and --tls-key go together".into())),
        };
        let shm_socket = match self.shm_socket.as_deref() {
            Some("off") => None,
            Some("") => return Err(invalid("--shm-socket takes a path or `off`".into())),
            Some(path) => Some(PathBuf::from(path)),
            None => Some(data_dir.join(crate::net::shm::SOCKET_FILE)),
        };
        let auth_token = strata_proto::token::resolve_token(
            self.auth_token,
            self.auth_token_file.as_deref(),
            ("--auth-token", "--auth-token-file"),
        )?;
        Ok(Settings {
            store,
            service: ServiceConfig {
                listen,
                tls,
                auth_token,
                shutdown_grace: Duration::from_millis(self.shutdown_grace.unwrap_or(5_000)),
                max_connections: match self.max_connections.unwrap_or(4096) {
                    0 => return Err(invalid("--max-connections must be at least 1".into())),
                    n => n,
                },
                shm_socket,
                data_plane,
                metrics_addr,
            },
            data_dir,
            persist_on_shutdown: self.persist_on_shutdown.unwrap_or(false),
            cluster,
        })
    }

    /// The cluster flags, if `--etcd-endpoints` is given; the others alone are refused.
    fn cluster(&self) -> Result<Option<ClusterArgs>> {
        let Some(endpoints) = self.etcd_endpoints.as_deref() else {
            let stray = [
                ("--cluster-id", self.cluster_id.is_some()),
                ("--node-id", self.node_id.is_some()),
                ("--advertise-addr", self.advertise_addr.is_some()),
                ("--member-ttl", self.member_ttl.is_some()),
                ("--weight", self.weight.is_some()),
                ("--run-blocks", self.run_blocks.is_some()),
                ("--placement-seed", self.placement_seed.is_some()),
                ("--join-window", self.join_window.is_some()),
                ("--etcd-ca", self.etcd_ca.is_some()),
                ("--etcd-cert", self.etcd_cert.is_some()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(invalid(format!("{flag} needs --etcd-endpoints")));
            }
            return Ok(None);
        };
        let etcd_endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if etcd_endpoints.is_empty() {
            return Err(invalid(
                "--etcd-endpoints takes one or more etcd URLs".into(),
            ));
        }
        let cluster_id = self.cluster_id.clone().unwrap_or_else(|| "default".into());
        crate::cluster::membership::check_id("--cluster-id", &cluster_id).map_err(invalid)?;
        if let Some(id) = &self.node_id {
            crate::cluster::membership::check_id("--node-id", id).map_err(invalid)?;
        }
        let member_ttl = self.member_ttl.unwrap_or(5);
        if !(1..=3600).contains(&member_ttl) {
            return Err(invalid(format!(
                "--member-ttl is 1 to 3600 seconds, not {member_ttl}"
            )));
        }
        let weight = self.weight.unwrap_or(1.0);
        if !(weight.is_finite() && weight > 0.0) {
            return Err(invalid(format!(
                "--weight must be a positive number, not {weight}"
            )));
        }
        if self.run_blocks == Some(0) {
            return Err(invalid("--run-blocks must be at least 1".into()));
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return Err(invalid("--etcd-cert and --etcd-key go together".into()));
        }
        Ok(Some(ClusterArgs {
            etcd_endpoints,
            etcd_tls: crate::cluster::etcd::EtcdTls {
                ca: self.etcd_ca.clone(),
                cert: self.etcd_cert.clone(),
                key: self.etcd_key.clone(),
            },
            cluster_id,
            node_id: self.node_id.clone(),
            advertise_addr: self.advertise_addr.clone(),
            member_ttl: Duration::from_secs(member_ttl),
            weight,
            run_blocks: self.run_blocks,
            seed: self.placement_seed,
            join_window: Duration::from_secs(self.join_window.unwrap_or(600)),
            leave_grace: Duration::from_millis(self.leave_grace.unwrap_or(1_000)),
        }))
    }

    /// Where the metrics port listens, if anywhere.
    fn metrics_addr(&self, listen: SocketAddr) -> Result<Option<SocketAddr>> {
        match self.metrics_addr.as_deref() {
            Some("off") => Ok(None),
            Some(addr) => addr.parse().map(Some).map_err(|_| {
                invalid(format!(
                    "--metrics-addr takes an address such as 127.0.0.1:9003, or off; not {addr:?}"
                ))
            }),
            // Port 0 asks for a free port: the metrics port picks its own too.
            None if listen.port() == 0 => Ok(Some(SocketAddr::new(listen.ip(), 0))),
            None => Ok(Some(DEFAULT_METRICS_ADDR)),
        }
    }

    /// The data plane the flags describe, if any.
    fn data_plane(&self, listen: SocketAddr) -> Result<Option<DataPlaneConfig>> {
        match self.data_plane.as_deref() {
            None | Some("tcp") => {}
            Some("off") => return Ok(None),
            Some(other) => {
                return Err(invalid(format!(
                    "--data-plane takes tcp or off, not {other:?}"
                )))
            }
        }
        let port = match self.data_port {
            Some(p) => p,
            // Port 0 asks for a free port: let the data plane pick its own too.
            None if listen.port() == 0 => 0,
            None => listen.port().checked_add(1).ok_or_else(|| {
                invalid("--port 65535 leaves no default --data-port: give one".into())
            })?,
        };
        let timeout = self.transfer_timeout.unwrap_or(30_000);
        if timeout == 0 {
            return Err(invalid("--transfer-timeout must be positive".into()));
        }
        Ok(Some(DataPlaneConfig {
            listen: SocketAddr::new(listen.ip(), port),
            tls: self.data_tls.unwrap_or(false),
            transfer_timeout: Duration::from_millis(timeout),
        }))
    }

    /// The device tier the flags describe, if any.
    fn device_tier(&self) -> Result<Option<TierConfig>> {
        let backend = match self.device_plugin.as_deref() {
            Some("off") => return Ok(None),
            Some("") => {
                return Err(invalid(
                    "--device-plugin takes host-sim, cuda, ascend, a path or `off`".into(),
                ))
            }
            Some(spec) => Backend::parse(spec),
            None => Backend::HostSim,
        };
        let timeout = self.segment_heartbeat_timeout.unwrap_or(5_000);
        if timeout == 0 {
            return Err(invalid(
                "--segment-heartbeat-timeout must be positive".into(),
            ));
        }
        let opts = DeviceOptions {
            backend,
            index: self.device_index.unwrap_or(0),
            heartbeat_timeout: Duration::from_millis(timeout),
        };
        let capacity = self.device_capacity.map_or(128 << 20, |s| s.0);
        Ok(Some(TierConfig::device(capacity, opts)))
    }

    /// The ssd tier the flags describe, if any.
    fn ssd_tier(&self, data_dir: &Path) -> Result<Option<TierConfig>> {
        let dir = match self.ssd_path.as_deref() {
            Some("off") => return Ok(None),
            Some("") => return Err(invalid("--ssd-path takes a directory or `off`".into())),
            Some(path) => PathBuf::from(path),
            None => data_dir.join("ssd"),
        };
        let capacity = self.ssd_capacity.map_or(1 << 30, |s| s.0);
        let parse = |flag: &str, given: &Option<String>| -> Result<Option<String>> {
            match given.as_deref() {
                Some("") => Err(invalid(format!("--{flag} must not be empty"))),
                other => Ok(other.map(str::to_owned)),
            }
        };
        let mut opts = SsdOptions::new(dir);
        if let Some(e) = parse("ssd-io-engine", &self.ssd_io_engine)? {
            opts.engine = e
                .parse()
                .map_err(|m| invalid(format!("--ssd-io-engine: {m}")))?;
        }
        if let Some(r) = parse("ssd-recovery", &self.ssd_recovery)? {
            opts.recovery = r
                .parse()
                .map_err(|m| invalid(format!("--ssd-recovery: {m}")))?;
        }
        if let Some(a) = parse("ssd-admission", &self.ssd_admission)? {
            opts.admission = a
                .parse()
                .map_err(|m| invalid(format!("--ssd-admission: {m}")))?;
        }
        if let Some(depth) = self.ssd_queue_depth {
            if !(1..=4096).contains(&depth) {
                return Err(invalid(format!(
                    "--ssd-queue-depth {depth} is not in 1..=4096"
                )));
            }
            opts.queue_depth = depth;
        }
        Ok(Some(TierConfig::ssd(capacity, opts)))
    }
}

fn read_file(path: &Path) -> Result<ServerArgs> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("reading config file {}: {e}", path.display())))?;
    let args: ServerArgs = toml::from_str(&text)
        .map_err(|e| invalid(format!("config file {}: {e}", path.display())))?;
    if args.auth_token.is_some() {
        // The file is then a token file: held to the same rule.
        let subject = format!("config file {} holds auth-token but", path.display());
        strata_proto::token::check_secret_file(path, &subject)?;
    }
    Ok(args)
}

fn resolve_addr(host: &str, port: u16) -> Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| invalid(format!("--host {host:?} is not an address or a known name")))
}

/// The names the self-signed certificate covers: loopback, this host's name, and the
/// address the server listens on when it is a specific one.
fn certificate_names(listen: IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = hostname::get() {
        names.push(h.to_string_lossy().into_owned());
    }
    if !listen.is_unspecified() && !listen.is_loopback() {
        names.push(listen.to_string());
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServerArgs {
        let mut all = vec!["strata-server"];
        all.extend_from_slice(args);
        ServerArgs::try_parse_from(all).unwrap()
    }

    #[test]
    fn sizes_accept_units_and_plain_bytes() {
        assert_eq!("1073741824".parse::<Size>(), Ok(Size(1 << 30)));
        assert_eq!("512MiB".parse::<Size>(), Ok(Size(512 << 20)));
        assert_eq!("1GB".parse::<Size>(), Ok(Size(1_000_000_000)));
        assert_eq!("64 KiB".parse::<Size>(), Ok(Size(64 << 10)));
        assert!("lots".parse::<Size>().is_err());
        assert!("-1".parse::<Size>().is_err());
    }

    #[test]
    fn metrics_are_served_on_loopback_9003_unless_told_otherwise() {
        let s = parse(&[]).resolve().unwrap();
        assert_eq!(s.service.metrics_addr, Some(DEFAULT_METRICS_ADDR));
        assert_eq!(DEFAULT_METRICS_ADDR.to_string(), "127.0.0.1:9003");
        let s = parse(&["--host", "::1", "--port", "0"]).resolve().unwrap();
        assert_eq!(s.service.metrics_addr, Some("[::1]:0".parse().unwrap()));
        let s = parse(&["--metrics-addr", "0.0.0.0:9100"])
            .resolve()
            .unwrap();
        assert_eq!(
            s.service.metrics_addr,
            Some("0.0.0.0:9100".parse().unwrap())
        );
        let s = parse(&["--metrics-addr", "off"]).resolve().unwrap();
        assert_eq!(s.service.metrics_addr, None);
        let e = parse(&["--metrics-addr", "9003"]).resolve().unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(e.message().contains("--metrics-addr"), "{e}");
    }

    #[test]
    fn the_data_plane_sits_beside_quic_unless_told_otherwise() {
        let s = parse(&[]).resolve().unwrap();
        let dp = s.service.data_plane.unwrap();
        assert_eq!(dp.listen, "127.0.0.1:50089".parse::<SocketAddr>().unwrap());
        assert!(!dp.tls);
        assert_eq!(dp.transfer_timeout, Duration::from_secs(30));
        let s = parse(&["--port", "0"]).resolve().unwrap();
        assert_eq!(s.service.data_plane.unwrap().listen.port(), 0);
        let s = parse(&[
            "--data-port",
            "7000",
            "--data-tls",
            "--transfer-timeout",
            "500",
        ])
        .resolve()
        .unwrap();
        let dp = s.service.data_plane.unwrap();
        assert_eq!((dp.listen.port(), dp.tls), (7000, true));
        assert_eq!(dp.transfer_timeout, Duration::from_millis(500));
        assert!(parse(&["--data-plane", "off"])
            .resolve()
            .unwrap()
            .service
            .data_plane
            .is_none());
        for bad in [
            &["--data-plane", "rdma"][..],
            &["--transfer-timeout", "0"],
            &["--port", "65535"],
        ] {
            let e = parse(bad).resolve().unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{bad:?}: {e}");
        }
    }

    #[test]
    fn no_flags_gives_safe_local_defaults() {
        let s = parse(&[]).resolve().unwrap();
        assert_eq!(
            s.service.listen,
            "127.0.0.1:50088".parse::<SocketAddr>().unwrap()
        );
        let device = &s.store.tiers[0];
        assert_eq!(device.kind, strata_engine::TierKind::Device);
        assert_eq!(device.capacity, 128 << 20);
        let opts = device.device.as_ref().unwrap();
        assert_eq!(opts.backend, Backend::HostSim);
        assert_eq!(opts.heartbeat_timeout, Duration::from_secs(5));
        assert_eq!(s.store.tiers[1].capacity, 512 << 20);
        assert_eq!(s.store.lease_ttl, Duration::from_secs(10));
        assert_eq!(s.store.eviction_high_watermark_ratio, 0.9);
        assert!(s.service.auth_token.is_none());
        assert!(matches!(s.service.tls, TlsSource::SelfSigned { .. }));
        let ssd = &s.store.tiers[2];
        assert_eq!(ssd.capacity, 1 << 30);
        let opts = ssd.ssd.as_ref().unwrap();
        assert_eq!(opts.dir, s.data_dir.join("ssd"));
        assert_eq!(opts.engine, strata_engine::IoEngineKind::Auto);
        assert!(!s.persist_on_shutdown);
    }

    #[test]
    fn ssd_flags_are_parsed_and_checked() {
        let s = parse(&[
            "--ssd-path",
            "/tmp/x",
            "--ssd-capacity",
            "2GiB",
            "--ssd-io-engine",
            "psync",
            "--ssd-recovery",
            "verify",
            "--ssd-admission",
            "second-hit",
            "--ssd-queue-depth",
            "8",
            "--persist-on-shutdown",
            "--device-plugin",
            "off",
        ])
        .resolve()
        .unwrap();
        let opts = s.store.tiers[1].ssd.as_ref().unwrap();
        assert_eq!(opts.dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.store.tiers[1].capacity, 2 << 30);
        assert_eq!(opts.engine, strata_engine::IoEngineKind::Psync);
        assert_eq!(opts.recovery, strata_engine::RecoveryMode::Verify);
        assert_eq!(opts.admission, strata_engine::Admission::SecondHit);
        assert_eq!(opts.queue_depth, 8);
        assert!(s.persist_on_shutdown);
        let s = parse(&["--ssd-path", "off", "--device-plugin", "off"])
            .resolve()
            .unwrap();
        assert_eq!(s.store.tiers.len(), 1);
        for bad in [
            &["--ssd-io-engine", "aio"][..],
            &["--ssd-recovery", "maybe"],
            &["--ssd-admission", "lfu"],
            &["--ssd-queue-depth", "0"],
            &["--ssd-capacity", "100"],
        ] {
            let e = parse(bad).resolve().unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let path = std::env::temp_dir().join(format!("strata-cfg-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "port = 6000\ndram-capacity = \"2GiB\"\neviction-ratio = 0.2\n\
             eviction-protected-ratio = 0.5\ndefault-kv-lease-ttl = 500\n",
        )
        .unwrap();
        let s = parse(&["--config", path.to_str().unwrap(), "--port", "7000"])
            .resolve()
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.service.listen.port(), 7000, "flag beats file");
        assert_eq!(s.store.tiers[1].capacity, 2 << 30, "file beats default");
        assert_eq!(s.store.eviction_ratio, 0.2);
        assert_eq!(s.store.eviction_protected_ratio, 0.5);
        assert_eq!(s.store.lease_ttl, Duration::from_millis(500));
    }

    #[test]
    fn device_flags_are_parsed_and_checked() {
        let s = parse(&[
            "--device-plugin",
            "/opt/vendor/libdev.so",
            "--device-index",
            "2",
            "--device-capacity",
            "0",
            "--segment-heartbeat-timeout",
            "750",
        ])
        .resolve()
        .unwrap();
        let device = &s.store.tiers[0];
        let opts = device.device.as_ref().unwrap();
        assert_eq!(
            opts.backend,
            Backend::Plugin("/opt/vendor/libdev.so".into())
        );
        assert_eq!((opts.index, device.capacity), (2, 0));
        assert_eq!(opts.heartbeat_timeout, Duration::from_millis(750));
        for bad in [
            &["--device-plugin", ""][..],
            &["--segment-heartbeat-timeout", "0"],
        ] {
            let e = parse(bad).resolve().unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn the_token_comes_from_a_private_file_or_the_flag_never_both() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = token.to_str().unwrap();
        let s = parse(&["--auth-token-file", path]).resolve().unwrap();
        assert_eq!(s.service.auth_token.as_deref(), Some("s3cret"));
        assert!(
            ServerArgs::try_parse_from(["s", "--auth-token", "x", "--auth-token-file", path])
                .is_err()
        );
        // A token file given by flag overrides a token in the config file.
        let config = dir.path().join("strata.toml");
        std::fs::write(&config, "auth-token = \"from-file\"\n").unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = config.to_str().unwrap();
        let s = parse(&["--config", cfg]).resolve().unwrap();
        assert_eq!(s.service.auth_token.as_deref(), Some("from-file"));
        let s = parse(&["--config", cfg, "--auth-token-file", path])
            .resolve()
            .unwrap();
        assert_eq!(s.service.auth_token.as_deref(), Some("s3cret"));
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&["--config", cfg]).resolve().unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(e.message().contains("chmod 600"), "{e}");
        let e = parse(&["--auth-token", ""]).resolve().unwrap_err();
        assert!(e.message().contains("must not be empty"), "{e}");
    }

    #[test]
    fn bad_settings_are_named() {
        let e = parse(&["--eviction-ratio", "1.5"]).resolve().unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        let e = parse(&["--eviction-protected-ratio", "0"])
            .resolve()
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(e.message().contains("eviction_protected_ratio"), "{e}");
        let e = parse(&["--host", "no such host.invalid"])
            .resolve()
            .unwrap_err();
        assert!(e.message().contains("--host"), "{e}");
        assert!(ServerArgs::try_parse_from(["s", "--dram-capacity", "big"]).is_err());
        assert!(ServerArgs::try_parse_from(["s", "--tls-cert", "c.pem"]).is_err());

        let path = std::env::temp_dir().join(format!("strata-bad-{}.toml", std::process::id()));
        std::fs::write(&path, "dram-capacty = 5\n").unwrap();
        let e = parse(&["--config", path.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(e.message().contains("dram-capacty"), "{e}");
    }
}
