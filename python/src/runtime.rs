//! The tokio runtime the calls of this process wait on, and the wait itself: with the GIL
//! released, so other Python threads run and calls from many threads proceed in parallel.

use std::future::Future;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use strata_proto::{Error, ErrorCode};
use tokio::runtime::Runtime;

/// The runtime of this process, made on first use. A process forked after that (vLLM and
/// SGLang start workers this way) inherits it without its threads: the child gets a
/// runtime of its own, and the parent's is never touched there (see [`Runtime::owner`]).
static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// The runtime for clients made in this process.
pub fn current() -> Result<Arc<Runtime>, Error> {
    let pid = std::process::id();
    let mut slot = RUNTIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((owner, runtime)) = slot.as_ref() {
        if *owner == pid {
            return Ok(runtime.clone());
        }
        // Inherited across fork: its worker threads do not exist here, and dropping it
        // would join them. Leave it be.
        if let Some((_, inherited)) = slot.take() {
            std::mem::forget(inherited);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
        .thread_name("strata-client")
        .enable_all()
        .build()
        .map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot start the client's runtime: {e}"),
            )
        })?;
    let runtime = Arc::new(runtime);
    *slot = Some((pid, runtime.clone()));
    Ok(runtime)
}

/// Runs `op` to completion on `runtime` with the GIL released.
pub fn wait<F>(py: Python<'_>, runtime: &Runtime, op: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    py.detach(|| runtime.block_on(op))
}

/// Refuses a call on a client that was closed, or made in another process before a fork
/// (its connections and runtime did not come along): `class` names it in the message.
pub fn usable(
    py: Python<'_>,
    class: &str,
    made_in: u32,
    closed: &std::sync::atomic::AtomicBool,
) -> PyResult<()> {
    let error = if made_in != std::process::id() {
        format!(
            "this {class} was made in process {made_in} before a fork; make a new {class} in \
             this process"
        )
    } else if closed.load(std::sync::atomic::Ordering::Acquire) {
        format!("this {class} is closed")
    } else {
        return Ok(());
    };
    Err(crate::errors::raise(
        py,
        &Error::new(ErrorCode::Unavailable, error),
    ))
}
