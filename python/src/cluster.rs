//! `strata.ClusterClient`: the Rust cluster client for Python (docs/cluster.md). Connect
//! to any member; keys are placed by runs of a chain's blocks, each owner asked directly.
//! As `Client`, calls wait with the GIL released and copy straight between the caller's
//! buffers and the members.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use strata_client::{ClusterOptions, MemberState};
use strata_proto::Error;
use tokio::runtime::Runtime;

use crate::client::{config, seconds};
use crate::errors::{exception_object, invalid, IntoPy};
use crate::keys::{about, Keys};
use crate::region::Exported;
use crate::runtime::{self, wait};

/// A client of a whole cluster (a server alone is a cluster of one).
#[pyclass(frozen, module = "strata._native", name = "ClusterClient")]
pub struct ClusterClient {
    inner: strata_client::ClusterClient,
    runtime: Arc<Runtime>,
    pid: u32,
    closed: AtomicBool,
}

impl ClusterClient {
    fn live(&self, py: Python<'_>) -> PyResult<&strata_client::ClusterClient> {
        runtime::usable(py, "ClusterClient", self.pid, &self.closed)?;
        Ok(&self.inner)
    }
}

/// Positions of a chain as slices of one flat key list.
fn positions<'a>(keys: &'a [&'a [u8]], ends: &[usize]) -> Vec<&'a [&'a [u8]]> {
    let mut start = 0;
    ends.iter()
        .map(|&end| {
            let group = &keys[start..end];
            start = end;
            group
        })
        .collect()
}

/// Exports each buffer of `buffers` (writable for loads), refusing overlapping writable
/// ones (two loads into one byte).
fn export_all(buffers: &Bound<'_, PyAny>, writable: bool) -> PyResult<Vec<Exported>> {
    let mut out = Vec::new();
    for b in buffers.try_iter()? {
        out.push(Exported::new(&b?, writable)?);
    }
    if writable {
        let mut spans: Vec<(usize, usize)> = out.iter().map(|e| (e.addr(), e.len())).collect();
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            return Err(crate::errors::raise(
                buffers.py(),
                &invalid("two destination buffers overlap"),
            ));
        }
    }
    Ok(out)
}

fn results<T>(
    py: Python<'_>,
    keys: &[&[u8]],
    answers: Vec<Result<T, Error>>,
    ok: impl Fn(T) -> Py<PyAny>,
) -> Vec<Py<PyAny>> {
    answers
        .into_iter()
        .zip(keys)
        .map(|(a, key)| match a.map_err(|e| about(key, e)) {
            Ok(v) => ok(v),
            Err(e) => exception_object(py, &e),
        })
        .collect()
}

#[pymethods]
impl ClusterClient {
    /// Connects to a member of a cluster and fetches its view. See `strata.ClusterClient`
    /// in `strata/_native.pyi`.
    #[new]
    #[pyo3(signature = (address=None, *, token=None, token_file=None, ca=None, server_name=None, transport=None, timeout=None, connect_timeout=None, view_refresh=0.5, lookup_timeout=1.0))]
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
        view_refresh: f64,
        lookup_timeout: f64,
    ) -> PyResult<ClusterClient> {
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
        let options = ClusterOptions {
            view_refresh: seconds("view_refresh", view_refresh).or_raise(py)?,
            lookup_timeout: seconds("lookup_timeout", lookup_timeout).or_raise(py)?,
            retry_after: Duration::from_secs(1),
            local_node: None,
        };
        let runtime = runtime::current().or_raise(py)?;
        let inner = wait(py, &runtime, async {
            strata_client::ClusterClient::connect(config, options).await
        })
        .or_raise(py)?;
        Ok(ClusterClient {
            inner,
            runtime,
            pid: std::process::id(),
            closed: AtomicBool::new(false),
        })
    }

    /// How many leading positions of `groups` (a chain: per block its keys) are stored,
    /// asking every run's owner in one parallel round; `lease` leases what matched.
    #[pyo3(signature = (groups, lease=false))]
    fn prefix_len(
        &self,
        py: Python<'_>,
        groups: &Bound<'_, PyAny>,
        lease: bool,
    ) -> PyResult<usize> {
        let client = self.live(py)?;
        let (owned, ends) = Keys::grouped(groups).or_raise(py)?;
        let keys = owned.slices();
        let chain = positions(&keys, &ends);
        wait(py, &self.runtime, async {
            if lease {
                client.prefix_len_leased(&chain).await.map(|m| m.len)
            } else {
                client.prefix_len(&chain).await
            }
        })
        .or_raise(py)
    }

    /// Stores every key of the chain `groups` (block after block, each block's keys in
    /// order) from the bytes-like object at the same place in `values`, at its run's owner;
    /// per key None, or the exception.
    fn batch_put_chain(
        &self,
        py: Python<'_>,
        groups: &Bound<'_, PyAny>,
        values: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.live(py)?;
        let (owned, ends) = Keys::grouped(groups).or_raise(py)?;
        let keys = owned.slices();
        let chain = positions(&keys, &ends);
        let exported = export_all(values, false)?;
        let sources: Vec<&[u8]> = exported.iter().map(Exported::bytes).collect();
        let answers = wait(py, &self.runtime, client.batch_put_chain(&chain, &sources));
        Ok(results(py, &keys, answers, |()| py.None()))
    }

    /// Loads the first `len(buffers)` keys of the chain `groups` into the writable
    /// buffers, each from its run's owner (or, in a join window, the previous owner); per
    /// key the length, or the exception.
    fn batch_get_chain_into(
        &self,
        py: Python<'_>,
        groups: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let client = self.live(py)?;
        let (owned, ends) = Keys::grouped(groups).or_raise(py)?;
        let keys = owned.slices();
        let chain = positions(&keys, &ends);
        let mut exported = export_all(buffers, true)?;
        let mut dests: Vec<&mut [u8]> = exported.iter_mut().map(Exported::bytes_mut).collect();
        let n = dests.len().min(keys.len());
        let answers = wait(
            py,
            &self.runtime,
            client.batch_get_chain_into(&chain, &mut dests),
        );
        Ok(results(py, &keys[..n], answers, |len| {
            len.into_pyobject(py)
                .map_or_else(|_| py.None(), |o| o.into_any().unbind())
        }))
    }

    /// Stores `value` (bytes-like) under `key`, at the key's own owner.
    fn put(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let client = self.live(py)?;
        let owned = Keys::one(key).or_raise(py)?;
        let key = owned.slices()[0];
        let value = Exported::new(value, false)?;
        let bytes = value.bytes();
        wait(py, &self.runtime, client.put(key, bytes))
            .map_err(|e| about(key, e))
            .or_raise(py)
    }

    /// The value of `key` as bytes, from its owner.
    fn get<'py>(&self, py: Python<'py>, key: &Bound<'_, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let client = self.live(py)?;
        let owned = Keys::one(key).or_raise(py)?;
        let key = owned.slices()[0];
        let value = wait(py, &self.runtime, client.get(key))
            .map_err(|e| about(key, e))
            .or_raise(py)?;
        Ok(PyBytes::new(py, &value))
    }

    /// Whether `key` is stored at its owner.
    fn exists(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let client = self.live(py)?;
        let owned = Keys::one(key).or_raise(py)?;
        let key = owned.slices()[0];
        wait(py, &self.runtime, client.exists(key))
            .map_err(|e| about(key, e))
            .or_raise(py)
    }

    /// Removes `key` from its owner.
    #[pyo3(signature = (key, force=false))]
    fn remove(&self, py: Python<'_>, key: &Bound<'_, PyAny>, force: bool) -> PyResult<()> {
        let client = self.live(py)?;
        let owned = Keys::one(key).or_raise(py)?;
        let key = owned.slices()[0];
        wait(py, &self.runtime, client.remove(key, force))
            .map_err(|e| about(key, e))
            .or_raise(py)
    }

    /// The node id that owns `key` placed by itself (None for a server alone).
    fn owner(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        let client = self.live(py)?;
        let owned = Keys::one(key).or_raise(py)?;
        Ok(client.owner_of_key(owned.slices()[0]))
    }

    /// The view in use: `cluster_id`, `epoch`, `run_blocks`, `seed`, `node_id` (of the
    /// member that answered) and `members` (dicts: `node_id`, `addr`, `host_id`,
    /// `weight`, `state`, `capacity`, `joined_ms_ago`).
    fn view<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let view = self.live(py)?.view();
        let d = PyDict::new(py);
        d.set_item("cluster_id", &view.cluster_id)?;
        d.set_item("epoch", view.epoch)?;
        d.set_item("run_blocks", view.run_blocks)?;
        d.set_item("seed", view.seed)?;
        d.set_item("node_id", &view.node_id)?;
        let members = PyList::empty(py);
        for m in &view.members {
            let md = PyDict::new(py);
            md.set_item("node_id", &m.node_id)?;
            md.set_item("addr", &m.addr)?;
            md.set_item("host_id", &m.host_id)?;
            md.set_item("weight", m.weight)?;
            let state = match m.state {
                MemberState::Active => "active",
                MemberState::Draining => "draining",
            };
            md.set_item("state", state)?;
            md.set_item("capacity", m.capacity)?;
            md.set_item("joined_ms_ago", m.joined_ms_ago)?;
            members.append(md)?;
        }
        d.set_item("members", members)?;
        Ok(d)
    }

    /// What this client counted: `lookups`, `lookup_servers` (servers those lookups
    /// asked), `second_rank_hits`, `unreachable`, `view_changes`.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.live(py)?.counters();
        let d = PyDict::new(py);
        d.set_item("lookups", c.lookups)?;
        d.set_item("lookup_servers", c.lookup_servers)?;
        d.set_item("second_rank_hits", c.second_rank_hits)?;
        d.set_item("unreachable", c.unreachable)?;
        d.set_item("view_changes", c.view_changes)?;
        Ok(d)
    }

    /// Fetches the view now (it is fetched every `view_refresh` seconds anyway).
    fn refresh_view(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.live(py)?;
        wait(py, &self.runtime, client.refresh_view()).or_raise(py)
    }

    /// Ends the client; later calls raise. Connections close as the last use ends.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        let view = self.inner.view();
        if view.members.is_empty() {
            "<strata.ClusterClient of a server alone>".to_owned()
        } else {
            format!(
                "<strata.ClusterClient of cluster {} ({} members)>",
                view.cluster_id,
                view.members.len()
            )
        }
    }
}
