//! `strata.Client`: the Rust client's operations for Python. Each call converts its
//! arguments with the GIL held, then waits for the operation with the GIL released, so one
//! `Client` serves many Python threads at once; the bytes move straight between the
//! caller's buffers and the server's memory (shared memory, the TCP data plane or QUIC, as
//! the Rust client chooses), never through a Python object in between.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use strata_client::{ClientConfig, MemoryKind, Transport};
use strata_device::Device;
use strata_proto::{Error, ErrorCode};
use tokio::runtime::Runtime;

use crate::errors::{exception_object, invalid, IntoPy};
use crate::keys::{about, shown, Keys};
use crate::region::{any_device, device_ranges_as_pieces, gather, overlapping, Piece, Region};
use crate::runtime::{self, wait};

/// A connection to one strata server, shared by every thread that uses it.
#[pyclass(frozen, module = "strata._native", name = "Client")]
pub struct Client {
    inner: strata_client::Client,
    runtime: Arc<Runtime>,
    /// The process that made it: its connection and runtime do not survive a fork.
    pid: u32,
    closed: AtomicBool,
    address: String,
    /// The device module `Client(device=...)` named, for pieces of device memory when the
    /// server has no device tier on this host.
    own_device: Option<Arc<dyn Device>>,
}

/// The environment variable `name`, if set and not empty.
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Seconds as a duration; `what` names the setting in the error.
pub(crate) fn seconds(what: &str, value: f64) -> Result<Duration, Error> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(invalid(format!(
            "{what} must be a positive number of seconds, not {value}"
        )))
    }
}

/// The settings of `Client(...)`: each argument not given falls back to the environment
/// variable the `strata` command line reads, then to the Rust client's default.
#[allow(clippy::too_many_arguments)]
pub(crate) fn config(
    address: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
    server_name: Option<String>,
    transport: Option<String>,
    timeout: Option<f64>,
    connect_timeout: Option<f64>,
) -> Result<ClientConfig, Error> {
    let timeout = match timeout {
        Some(t) => t,
        None => match env("STRATA_TIMEOUT") {
            Some(text) => text.trim().parse::<f64>().map_err(|_| {
                invalid(format!(
                    "STRATA_TIMEOUT is not a number of seconds: {text:?}"
                ))
            })?,
            None => 10.0,
        },
    };
    let transfer_timeout = seconds("timeout", timeout)?;
    let connect_timeout = match connect_timeout {
        Some(t) => seconds("connect_timeout", t)?,
        None => transfer_timeout,
    };
    let transport_name = transport
        .or_else(|| env("STRATA_TRANSPORT"))
        .unwrap_or_else(|| "auto".to_owned());
    let transport: Transport = transport_name.parse().map_err(invalid)?;
    // A token given here wins over both variables; the variables as the CLI reads them.
    let (auth_token, auth_token_file) = match (token, token_file) {
        (None, None) => match env("STRATA_AUTH_TOKEN") {
            Some(t) => (Some(t), None),
            None => (None, env("STRATA_AUTH_TOKEN_FILE").map(PathBuf::from)),
        },
        given => given,
    };
    Ok(ClientConfig {
        server: address
            .or_else(|| env("STRATA_SERVER"))
            .unwrap_or_else(|| strata_client::DEFAULT_SERVER.to_owned()),
        ca_cert: ca.or_else(|| env("STRATA_CA").map(PathBuf::from)),
        server_name: server_name.or_else(|| env("STRATA_SERVER_NAME")),
        auth_token,
        auth_token_file,
        connect_timeout,
        transfer_timeout,
        transport,
        ..ClientConfig::default()
    })
}

impl Client {
    /// The Rust client, unless this one was closed or made before a fork.
    fn live(&self, py: Python<'_>) -> PyResult<&strata_client::Client> {
        runtime::usable(py, "Client", self.pid, &self.closed)?;
        Ok(&self.inner)
    }

    /// The server's prefix lookup over `groups`, leased or not.
    fn prefix<G: AsRef<[K]> + Sync, K: AsRef<[u8]> + Sync>(
        &self,
        py: Python<'_>,
        groups: &[G],
        lease: bool,
    ) -> PyResult<usize> {
        let client = self.live(py)?;
        wait(py, &self.runtime, async {
            if lease {
                client.prefix_len_leased(groups).await.map(|m| m.len)
            } else {
                client.prefix_len(groups).await
            }
        })
        .or_raise(py)
    }

    /// The device module that copies pieces of registered device memory: the one of the
    /// server's device tier when the connection has it (the module the client's own
    /// device copies use), else the one `Client(device=...)` opened.
    async fn copier(&self, client: &strata_client::Client) -> Option<Arc<dyn Device>> {
        match client.device().await {
            Ok(Some(device)) => Some(device),
            _ => self.own_device.clone(),
        }
    }

    /// Single device ranges go by the client's device transport when the server has a
    /// device tier here (device-to-device where the value is there); otherwise they are
    /// staged like pieces, by the module `Client(device=...)` opened.
    fn route_device_ranges(
        &self,
        py: Python<'_>,
        client: &strata_client::Client,
        regions: &mut [Result<Region, PyErr>],
    ) {
        if !regions
            .iter()
            .any(|r| matches!(r, Ok(Region::Device { .. })))
        {
            return;
        }
        let routed = wait(py, &self.runtime, client.device());
        if !matches!(routed, Ok(Some(_))) && self.own_device.is_some() {
            device_ranges_as_pieces(regions);
        }
    }

    /// Loads each key's value into its region; per-key results.
    fn load(
        &self,
        py: Python<'_>,
        keys: &[&[u8]],
        mut regions: Vec<Result<Region, PyErr>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.live(py)?;
        self.route_device_ranges(py, client, &mut regions);
        let refused = overlapping(&regions.iter().map(|r| r.as_ref().ok()).collect::<Vec<_>>());
        let needs_device = regions
            .iter()
            .any(|r| matches!(r, Ok(Region::Pieces(p)) if any_device(p)));
        let mut results: Vec<Option<Result<usize, Error>>> = vec![None; keys.len()];
        let mut host_keys: Vec<&[u8]> = Vec::new();
        let mut host_bufs: Vec<&mut [u8]> = Vec::new();
        let mut host_index: Vec<usize> = Vec::new();
        let mut device = Vec::new();
        let mut spread_keys: Vec<&[u8]> = Vec::new();
        let mut spread_pieces: Vec<Vec<strata_client::Piece>> = Vec::new();
        let mut spread_index: Vec<usize> = Vec::new();
        for (i, region) in regions.iter_mut().enumerate() {
            let Ok(region) = region else { continue };
            if refused[i] {
                results[i] = Some(Err(invalid(format!(
                    "the destination of {} overlaps another destination of the batch",
                    shown(keys[i])
                ))));
                continue;
            }
            let buf = match region {
                Region::Pieces(pieces) => {
                    spread_keys.push(keys[i]);
                    spread_pieces.push(pieces.iter().map(Piece::for_client).collect());
                    spread_index.push(i);
                    continue;
                }
                Region::Device {
                    id, offset, len, ..
                } => {
                    device.push((i, *id, *offset, *len));
                    continue;
                }
                other => other.destination().expect("a host region"),
            };
            host_keys.push(keys[i]);
            host_bufs.push(buf);
            host_index.push(i);
        }
        let (host, device, spread) = wait(py, &self.runtime, async {
            let host = client.batch_get_into(&host_keys, &mut host_bufs).await;
            let mut loaded = Vec::with_capacity(device.len());
            for &(i, id, offset, len) in &device {
                loaded.push((i, load_device(client, keys[i], id, offset, len).await));
            }
            let copier = match needs_device {
                true => self.copier(client).await,
                false => None,
            };
            // SAFETY: every piece lies inside a registered buffer of its kind (checked at
            // parse), which the registration promises is valid while registered; host
            // pieces overlapping another destination were refused above.
            let spread = unsafe {
                client
                    .batch_get_into_pieces(&spread_keys, &spread_pieces, copier)
                    .await
            };
            (host, loaded, spread)
        });
        let answered = (host_index.into_iter().zip(host))
            .chain(device)
            .chain(spread_index.into_iter().zip(spread));
        for (i, result) in answered {
            results[i] = Some(result.map_err(|e| about(keys[i], e)));
        }
        Ok(regions
            .into_iter()
            .zip(results)
            .map(|(region, result)| match (region, result) {
                (Err(e), _) => e.into_value(py).into_any(),
                (_, Some(Ok(n))) => n.into_pyobject(py).expect("an int").into_any().unbind(),
                (_, Some(Err(e))) => exception_object(py, &e),
                (_, None) => exception_object(
                    py,
                    &Error::new(ErrorCode::Internal, "no result for this key"),
                ),
            })
            .collect())
    }

    /// Stores each key's value from its region; per-key results.
    fn store(
        &self,
        py: Python<'_>,
        keys: &[&[u8]],
        mut regions: Vec<Result<Region, PyErr>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.live(py)?;
        self.route_device_ranges(py, client, &mut regions);
        let mut results: Vec<Option<Result<(), Error>>> = vec![None; keys.len()];
        let mut host: Vec<(usize, &[u8], &[u8])> = Vec::new();
        let mut pieces: Vec<(usize, &[Piece])> = Vec::new();
        let mut device = Vec::new();
        for (i, region) in regions.iter().enumerate() {
            match region {
                Err(_) => {}
                Ok(Region::Pieces(p)) => pieces.push((i, p.as_slice())),
                Ok(Region::Device {
                    id, offset, len, ..
                }) => device.push((i, *id, *offset, *len)),
                Ok(other) => host.push((i, keys[i], other.source().expect("a host region"))),
            }
        }
        let needs_device = pieces.iter().any(|(_, p)| any_device(p));
        let (stored, device) = wait(py, &self.runtime, async {
            // Pieces are gathered into one value each (one copy), then stored with the rest.
            let copier = match needs_device {
                true => self.copier(client).await,
                false => None,
            };
            let mut gathered = Vec::with_capacity(pieces.len());
            let mut failed = Vec::new();
            for &(i, p) in &pieces {
                match gather(p, copier.as_deref()) {
                    Ok(value) => gathered.push((i, value)),
                    Err(e) => failed.push((i, Err(e))),
                }
            }
            let mut index: Vec<usize> = host.iter().map(|h| h.0).collect();
            let mut items: Vec<(&[u8], &[u8])> = host.iter().map(|h| (h.1, h.2)).collect();
            for (i, value) in &gathered {
                index.push(*i);
                items.push((keys[*i], value));
            }
            let mut stored: Vec<_> = index
                .into_iter()
                .zip(client.batch_put_from(&items).await)
                .collect();
            stored.extend(failed);
            let mut done = Vec::with_capacity(device.len());
            for &(i, id, offset, len) in &device {
                done.push((i, client.put_from_buffer(keys[i], id, offset, len).await));
            }
            (stored, done)
        });
        for (i, result) in stored.into_iter().chain(device) {
            results[i] = Some(result.map_err(|e| about(keys[i], e)));
        }
        Ok(regions
            .into_iter()
            .zip(results)
            .map(|(region, result)| match (region, result) {
                (Err(e), _) => e.into_value(py).into_any(),
                (_, Some(Ok(()))) => py.None(),
                (_, Some(Err(e))) => exception_object(py, &e),
                (_, None) => exception_object(
                    py,
                    &Error::new(ErrorCode::Internal, "no result for this key"),
                ),
            })
            .collect())
    }

    /// The one result of a single-key batch: its value, or its exception raised.
    fn single(py: Python<'_>, mut results: Vec<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let result = results.pop().expect("one result");
        let bound = result.bind(py);
        if bound.is_instance_of::<pyo3::exceptions::PyBaseException>() {
            return Err(PyErr::from_value(bound.clone()));
        }
        Ok(result)
    }

    /// The regions of a batch: one per key, each parse failure kept for its key alone.
    fn regions(
        &self,
        py: Python<'_>,
        keys: &[&[u8]],
        objects: &Bound<'_, PyAny>,
        writable: bool,
    ) -> PyResult<Vec<Result<Region, PyErr>>> {
        let client = self.live(py)?;
        let objects: Vec<Bound<'_, PyAny>> = objects
            .try_iter()
            .and_then(|it| it.collect::<PyResult<_>>())
            .map_err(|_| crate::errors::raise(py, &invalid("buffers is a list, one per key")))?;
        if objects.len() != keys.len() {
            let msg = format!(
                "{} keys but {} buffers: each key needs its buffer",
                keys.len(),
                objects.len()
            );
            return Err(crate::errors::raise(py, &invalid(msg)));
        }
        Ok(objects
            .iter()
            .map(|o| Region::parse(client, o, None, writable))
            .collect())
    }
}

/// Loads `key` into registered device memory: the value's size is checked against the
/// destination first (its lease, cached, serves the copy that follows).
async fn load_device(
    client: &strata_client::Client,
    key: &[u8],
    id: strata_client::BufferId,
    offset: usize,
    len: usize,
) -> Result<usize, Error> {
    let lease = client
        .get_locations(&[key])
        .await
        .pop()
        .expect("one answer")?;
    if lease.location.len > len as u64 {
        return Err(invalid(format!(
            "the value of {} is {} bytes and does not fit the {len}-byte destination",
            shown(key),
            lease.location.len
        )));
    }
    client.get_into_buffer(key, id, offset).await
}

#[pymethods]
impl Client {
    /// Connects to a strata server. See `strata.Client` in `strata/_native.pyi`.
    #[new]
    #[pyo3(signature = (address=None, *, token=None, token_file=None, ca=None, server_name=None, transport=None, timeout=None, connect_timeout=None, device=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        address: Option<String>,
        token: Option<String>,
        token_file: Option<PathBuf>,
        ca: Option<PathBuf>,
        server_name: Option<String>,
        transport: Option<String>,
        timeout: Option<f64>,
        connect_timeout: Option<f64>,
        device: Option<String>,
    ) -> PyResult<Client> {
        let own_device = match device.or_else(|| env("STRATA_DEVICE")) {
            Some(spec) => Some(crate::device::open(&spec).or_raise(py)?),
            None => None,
        };
        let config = config(
            address,
            token,
            token_file,
            ca,
            server_name,
            transport,
            timeout,
            connect_timeout,
        )
        .or_raise(py)?;
        let runtime = runtime::current().or_raise(py)?;
        let address = config.server.clone();
        let inner = wait(py, &runtime, strata_client::Client::connect(config)).or_raise(py)?;
        Ok(Client {
            inner,
            runtime,
            pid: std::process::id(),
            closed: AtomicBool::new(false),
            address,
            own_device,
        })
    }

    /// The server address this client was made for.
    #[getter]
    fn address(&self) -> &str {
        &self.address
    }

    /// How value bytes travel: "shm", "tcp" or "quic".
    #[getter]
    fn transport(&self, py: Python<'_>) -> PyResult<&'static str> {
        let client = self.live(py)?;
        let transport = wait(py, &self.runtime, client.transport()).or_raise(py)?;
        Ok(match transport {
            Transport::Shm => "shm",
            Transport::Tcp => "tcp",
            Transport::Quic | Transport::Auto => "quic",
        })
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stores `value` (any bytes-like object) under `key`.
    fn put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.put_from(py, key, value, None)
    }

    /// Stores under `key` the bytes of `source`: a bytes-like object, an address with
    /// `size`, or a list of (address, size) pieces in registered memory.
    #[pyo3(signature = (key, source, size=None))]
    fn put_from(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        source: &Bound<'_, PyAny>,
        size: Option<usize>,
    ) -> PyResult<()> {
        let owned = Keys::one(key).or_raise(py)?;
        let key = owned.slices()[0];
        let region = Region::parse(self.live(py)?, source, size, false)?;
        Client::single(py, self.store(py, &[key], vec![Ok(region)])?).map(|_| ())
    }

    /// The value of `key` as bytes.
    fn get<'py>(&self, py: Python<'py>, key: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let client = self.live(py)?;
        let owned = Keys::one(key).or_raise(py)?;
        let key = owned.slices()[0];
        let value = wait(py, &self.runtime, client.get(key))
            .map_err(|e| about(key, e))
            .or_raise(py)?;
        Ok(PyBytes::new(py, &value))
    }

    /// Copies the value of `key` into `destination` (a writable buffer, an address with
    /// `size`, or a list of (address, size) pieces); returns its length.
    #[pyo3(signature = (key, destination, size=None))]
    fn get_into(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        destination: &Bound<'_, PyAny>,
        size: Option<usize>,
    ) -> PyResult<Py<PyAny>> {
        let owned = Keys::one(key).or_raise(py)?;
        let key = owned.slices()[0];
        let region = Region::parse(self.live(py)?, destination, size, true)?;
        Client::single(py, self.load(py, &[key], vec![Ok(region)])?)
    }

    /// Loads each key into its destination; per key the length, or the exception.
    fn batch_get_into(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let owned = Keys::many(keys).or_raise(py)?;
        let keys = owned.slices();
        let regions = self.regions(py, &keys, buffers, true)?;
        self.load(py, &keys, regions)
    }

    /// Stores each key from its source; per key None, or the exception.
    fn batch_put_from(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let owned = Keys::many(keys).or_raise(py)?;
        let keys = owned.slices();
        let regions = self.regions(py, &keys, buffers, false)?;
        self.store(py, &keys, regions)
    }

    /// Whether `key` is stored.
    fn exists(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let client = self.live(py)?;
        let owned = Keys::one(key).or_raise(py)?;
        let key = owned.slices()[0];
        wait(py, &self.runtime, client.exists(key))
            .map_err(|e| about(key, e))
            .or_raise(py)
    }

    /// Per key whether it is stored (or the exception), in one round trip per 65,536 keys.
    fn batch_exists(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.live(py)?;
        let owned = Keys::many(keys).or_raise(py)?;
        let keys = owned.slices();
        let answers = wait(py, &self.runtime, client.batch_exists(&keys));
        Ok(answers
            .into_iter()
            .zip(&keys)
            .map(|(a, key)| match a.map_err(|e| about(key, e)) {
                Ok(present) => pyo3::types::PyBool::new(py, present)
                    .to_owned()
                    .into_any()
                    .unbind(),
                Err(e) => exception_object(py, &e),
            })
            .collect())
    }

    /// The number of leading groups whose keys are all stored.
    #[pyo3(signature = (groups, lease=false))]
    fn prefix_len(
        &self,
        py: Python<'_>,
        groups: &Bound<'_, PyAny>,
        lease: bool,
    ) -> PyResult<usize> {
        let (owned, ends) = Keys::grouped(groups).or_raise(py)?;
        let keys = owned.slices();
        let mut start = 0;
        let groups: Vec<&[&[u8]]> = ends
            .iter()
            .map(|&end| {
                let group = &keys[start..end];
                start = end;
                group
            })
            .collect();
        self.prefix(py, &groups, lease)
    }

    /// prefix_len of positions named by `keys`, position i's keys being
    /// `prefix + keys[i] + s` for each `s` of `suffixes` (one key each when none): the
    /// keys are made here, not in Python, where an engine's lookup would spend a third of
    /// its time making them.
    #[pyo3(signature = (keys, suffixes=None, prefix="", lease=false))]
    fn prefix_len_expanded(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        suffixes: Option<&Bound<'_, PyAny>>,
        prefix: &str,
        lease: bool,
    ) -> PyResult<usize> {
        let owned = Keys::many(keys).or_raise(py)?;
        let suffix_keys = match suffixes {
            Some(s) => Some(Keys::many(s).or_raise(py)?),
            None => None,
        };
        let suffixes = suffix_keys
            .as_ref()
            .map_or_else(|| vec![&b""[..]], Keys::slices);
        let made: Vec<Vec<Vec<u8>>> = (owned.slices().iter())
            .map(|key| {
                (suffixes.iter())
                    .map(|s| [prefix.as_bytes(), key, s].concat())
                    .collect()
            })
            .collect();
        self.prefix(py, &made, lease)
    }

    /// The number of leading keys whose positions are all stored, a position being a run
    /// of consecutive keys with the same text after their last `separator` (a block's
    /// hash, after every rank's and layer's part of its keys). None when a tail comes back
    /// after another one: the keys are not grouped by block.
    #[pyo3(signature = (keys, separator="@", lease=false))]
    fn prefix_keys_by_tail(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        separator: &str,
        lease: bool,
    ) -> PyResult<Option<usize>> {
        let owned = Keys::many(keys).or_raise(py)?;
        let keys = owned.slices();
        let sep = separator.as_bytes();
        // The text after the last separator (the whole key when there is none). A vectorised
        // search: a window-by-window compare was a memcmp call per byte of every key.
        let tail = |key: &'_ [u8]| -> usize {
            match memchr::memmem::rfind(key, sep) {
                Some(at) if !sep.is_empty() => at + sep.len(),
                _ => 0,
            }
        };
        let mut groups: Vec<&[&[u8]]> = Vec::new();
        let mut seen: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
        let mut start = 0;
        let mut last: Option<&[u8]> = None;
        for (i, key) in keys.iter().enumerate() {
            let t = &key[tail(key)..];
            if last != Some(t) {
                if i > start {
                    groups.push(&keys[start..i]);
                }
                if !seen.insert(t) {
                    return Ok(None);
                }
                start = i;
                last = Some(t);
            }
        }
        if keys.len() > start {
            groups.push(&keys[start..]);
        }
        let matched = self.prefix(py, &groups, lease)?;
        Ok(Some(groups[..matched].iter().map(|g| g.len()).sum()))
    }

    /// The size in bytes of the value of `key` (takes a read lease, as a load would).
    fn size(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<u64> {
        let client = self.live(py)?;
        let owned = Keys::one(key).or_raise(py)?;
        let key = owned.slices()[0];
        let lease = wait(py, &self.runtime, async {
            client
                .get_locations(&[key])
                .await
                .pop()
                .expect("one answer")
        })
        .map_err(|e| about(key, e))
        .or_raise(py)?;
        Ok(lease.location.len)
    }

    /// Leases each key as a load would (the server keeps it in place until the lease
    /// ends); per key the value's size, or the exception.
    fn batch_lease(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.live(py)?;
        let owned = Keys::many(keys).or_raise(py)?;
        let keys = owned.slices();
        let leases = wait(py, &self.runtime, client.get_locations(&keys));
        Ok(leases
            .into_iter()
            .zip(&keys)
            .map(|(lease, key)| match lease.map_err(|e| about(key, e)) {
                Ok(lease) => lease
                    .location
                    .len
                    .into_pyobject(py)
                    .expect("an int")
                    .into_any()
                    .unbind(),
                Err(e) => exception_object(py, &e),
            })
            .collect())
    }

    /// Removes `key`; a leased object only with `force`.
    #[pyo3(signature = (key, force=false))]
    fn remove(&self, py: Python<'_>, key: &Bound<'_, PyAny>, force: bool) -> PyResult<()> {
        let client = self.live(py)?;
        let owned = Keys::one(key).or_raise(py)?;
        let key = owned.slices()[0];
        wait(py, &self.runtime, client.remove(key, force))
            .map_err(|e| about(key, e))
            .or_raise(py)
    }

    /// Removes each key; per key None, or the exception.
    #[pyo3(signature = (keys, force=false))]
    fn batch_remove(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        force: bool,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.live(py)?;
        let owned = Keys::many(keys).or_raise(py)?;
        let keys = owned.slices();
        let concurrency = client.config().batch_concurrency.max(1);
        let results: Vec<Result<(), Error>> = wait(py, &self.runtime, async {
            let removals: Vec<_> = keys.iter().map(|k| client.remove(k, force)).collect();
            stream::iter(removals).buffered(concurrency).collect().await
        });
        Ok(results
            .into_iter()
            .zip(&keys)
            .map(|(r, key)| match r.map_err(|e| about(key, e)) {
                Ok(()) => py.None(),
                Err(e) => exception_object(py, &e),
            })
            .collect())
    }

    /// Removes every object (leased ones only with `force`); returns how many.
    #[pyo3(signature = (force=false))]
    fn remove_all(&self, py: Python<'_>, force: bool) -> PyResult<u64> {
        let client = self.live(py)?;
        wait(py, &self.runtime, client.remove_all(force)).or_raise(py)
    }

    /// Registers `[address, address + size)` for the raw-address calls.
    #[pyo3(signature = (address, size, *, device=false))]
    fn register_buffer(
        &self,
        py: Python<'_>,
        address: usize,
        size: usize,
        device: bool,
    ) -> PyResult<()> {
        let client = self.live(py)?;
        let kind = if device {
            MemoryKind::Device
        } else {
            crate::region::check_mapped(address, size).or_raise(py)?;
            MemoryKind::Host
        };
        // SAFETY: host memory was just found mapped and writable in this process; that it
        // stays so while registered, and that device memory is the server's device's, is
        // the caller's promise, as with every raw-address API (Mooncake's included).
        unsafe { client.register_buffer(address, size, kind) }
            .map(|_| ())
            .or_raise(py)
    }

    /// Forgets the buffer registered at `address`.
    fn unregister_buffer(&self, py: Python<'_>, address: usize) -> PyResult<()> {
        let client = self.live(py)?;
        let id = client.registered_at(address).or_raise(py)?;
        client.unregister_buffer(id).or_raise(py)
    }

    /// The server's figures, as `strata stats --json` prints them.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.live(py)?;
        let stats = wait(py, &self.runtime, client.stats()).or_raise(py)?;
        let text = serde_json::to_string(&stats)
            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))
            .or_raise(py)?;
        py.import("json")?.call_method1("loads", (text,))
    }

    /// How this client has moved value bytes since it connected, by path.
    fn transport_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.transport_stats();
        let dict = PyDict::new(py);
        for (name, value) in [
            ("shm_gets", s.shm_gets),
            ("shm_get_bytes", s.shm_get_bytes),
            ("shm_puts", s.shm_puts),
            ("shm_put_bytes", s.shm_put_bytes),
            ("ssd_file_gets", s.ssd_file_gets),
            ("ssd_file_get_bytes", s.ssd_file_get_bytes),
            ("quic_gets", s.quic_gets),
            ("quic_get_bytes", s.quic_get_bytes),
            ("quic_puts", s.quic_puts),
            ("quic_put_bytes", s.quic_put_bytes),
            ("device_gets", s.device_gets),
            ("device_get_bytes", s.device_get_bytes),
            ("device_puts", s.device_puts),
            ("device_put_bytes", s.device_put_bytes),
            ("tcp_gets", s.tcp_gets),
            ("tcp_get_bytes", s.tcp_get_bytes),
            ("tcp_puts", s.tcp_puts),
            ("tcp_put_bytes", s.tcp_put_bytes),
            ("lease_expired", s.lease_expired),
        ] {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    /// One round trip with no work; returns its seconds.
    fn ping(&self, py: Python<'_>) -> PyResult<f64> {
        let client = self.live(py)?;
        let took = wait(py, &self.runtime, client.ping()).or_raise(py)?;
        Ok(took.as_secs_f64())
    }

    /// Closes the connection; later calls raise `strata.ConnectionError`.
    fn close(&self, py: Python<'_>) {
        if self.closed.swap(true, Ordering::AcqRel) || self.pid != std::process::id() {
            return;
        }
        wait(py, &self.runtime, self.inner.close());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        let state = if self.closed() { " closed" } else { "" };
        format!("<strata.Client {}{state}>", self.address)
    }
}
