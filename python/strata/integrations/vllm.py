"""strata as a secondary tier of vLLM's KV offloading: ``StrataTier``.

vLLM's tiered offloading keeps blocks in a CPU (primary) tier and cascades them to
secondary tiers, each a ``SecondaryTierManager`` (vllm-project/vllm
``vllm/v1/kv_offload/tiering/base.py``, read at commit
041410b9b13a5e762e6bfce4a0ce39574def5919; built by ``tiering/factory.py`` from a tier
config with the primary tier's memoryview). Configure a tier of type ``strata`` loaded
from this module (``"module_path": "strata.integrations.vllm", "class_name":
"StrataTier"``) with the strata options below.

Every call returns at once, as the scheduler requires: stores and loads run on worker
threads as single strata batch calls between the primary tier's memoryview and the
server (the GIL released), and report through ``get_finished()``; a lookup of a key not
yet known starts a batched, leased lookup in the background and answers "retry" (None)
until it returns, so the load that follows cannot miss.

Keys: ``{key_prefix}vllm/{namespace}/{block hash hex}``, the namespace a digest of what
makes blocks interchangeable (model, dtype, tokens per hash, parallel layout and rank),
read from the offloading spec, so different models or layouts sharing a server never
read each other's bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

from ._connect import connect

log = logging.getLogger("strata.vllm")

try:
    from vllm.v1.kv_offload.tiering.base import JobResult as _JobResult
    from vllm.v1.kv_offload.tiering.base import SecondaryTierManager as _Base
except ImportError:  # Without vLLM: the same contract, so it can be tested.

    @dataclass
    class _JobResult:  # type: ignore[no-redef]
        job_id: int
        success: bool

    class _Base:  # type: ignore[no-redef]
        def __init__(self, offloading_spec: Any, primary_kv_view: memoryview, tier_type: str) -> None:
            self._offloading_spec = offloading_spec
            self._primary_kv_view = primary_kv_view
            self.tier_type = tier_type


JobResult = _JobResult


def _namespace(spec: Any) -> Dict[str, Any]:
    """What makes this engine's blocks interchangeable with another's, as far as the
    offloading spec (or vLLM config) says."""

    def get(obj: Any, *path: str) -> Any:
        for name in path:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj

    config = get(spec, "config")
    vllm_config = get(spec, "vllm_config")
    fields = {
        "model": get(config, "model", "name") or get(vllm_config, "model_config", "model"),
        "dtype": get(config, "model", "dtype") or get(vllm_config, "cache_config", "cache_dtype"),
        "tokens_per_hash": get(config, "cache", "tokens_per_hash"),
        "tp_size": get(config, "parallel", "tp_size") or get(vllm_config, "parallel_config", "tensor_parallel_size"),
        "pp_size": get(config, "parallel", "pp_size") or get(vllm_config, "parallel_config", "pipeline_parallel_size"),
        "rank": get(config, "parallel", "rank") or get(vllm_config, "parallel_config", "rank"),
    }
    return {k: str(v) for k, v in fields.items() if v is not None}


class StrataTier(_Base):
    """A vLLM secondary offloading tier over a strata server."""

    def __init__(
        self,
        offloading_spec: Any = None,
        primary_kv_view: Optional[memoryview] = None,
        tier_type: str = "strata",
        *,
        vllm_config: Any = None,
        server: Optional[str] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        ca: Optional[str] = None,
        transport: Optional[str] = None,
        timeout: Optional[float] = None,
        key_prefix: str = "",
        num_workers: int = 4,
        lookup_ttl: float = 1.0,
        module_path: Optional[str] = None,
        class_name: Optional[str] = None,
    ):
        spec = offloading_spec if offloading_spec is not None else vllm_config
        if primary_kv_view is None:
            raise ValueError("strata tier: primary_kv_view (the CPU tier's memoryview) is required")
        super().__init__(spec, primary_kv_view, tier_type)
        view = memoryview(primary_kv_view)
        if not view.c_contiguous:
            raise ValueError("strata tier: the primary tier's memoryview must be C-contiguous")
        self.block_size = int(view.strides[0]) if view.ndim > 1 else int(view.itemsize)
        self.flat = view.cast("B")
        namespace = _namespace(spec)
        if not namespace:
            log.warning("strata tier: the offloading spec names no model or layout; keys rely on key_prefix alone")
        digest = hashlib.sha256(json.dumps(namespace, sort_keys=True).encode()).hexdigest()[:16]
        self.prefix = f"{key_prefix}vllm/{digest}/"
        self.client = connect(server, token=token, token_file=token_file, ca=ca,
                              transport=transport, timeout=timeout)
        self.lookup_ttl = float(lookup_ttl)
        self._pool = ThreadPoolExecutor(int(num_workers), thread_name_prefix="strata-vllm")
        self._lock = threading.Lock()
        self._finished: List[Any] = []
        self._known: Dict[str, tuple] = {}  # key -> (found, when)
        self._pending: List[str] = []
        self._inflight = 0
        self._idle = threading.Condition(self._lock)

    # -- keys and bytes --------------------------------------------------------------

    def _key(self, key: Any) -> str:
        if isinstance(key, (bytes, bytearray, memoryview)):
            return self.prefix + bytes(key).hex()
        return self.prefix + str(key)

    def _block(self, block_id: Any) -> memoryview:
        start = int(block_id) * self.block_size
        if start < 0 or start + self.block_size > len(self.flat):
            raise ValueError(f"block id {block_id} lies outside the primary tier")
        return self.flat[start:start + self.block_size]

    # -- the tier contract -----------------------------------------------------------

    def lookup(self, key: Any, req_context: Any = None) -> Optional[bool]:
        """True if stored (and leased for the load), False if not, None while the
        background lookup that answers it is under way."""
        name = self._key(key)
        now = time.monotonic()
        with self._lock:
            known = self._known.get(name)
            if known is not None and now - known[1] <= self.lookup_ttl:
                return known[0]
            if name in self._pending:
                return None
            self._pending.append(name)
            start = len(self._pending) == 1
        if start:
            self._run(self._resolve_lookups, job_id=None)
        return None

    def _resolve_lookups(self) -> bool:
        with self._lock:
            names, self._pending = self._pending, []
        # Leased: a block reported present stays until the load that follows.
        try:
            results: List[Any] = self.client.batch_lease(names)
        except Exception as e:  # noqa: BLE001 - answer "not stored", never leave a retry
            log.warning("strata lookup of %d blocks failed: %s", len(names), e)
            results = [e] * len(names)
        now = time.monotonic()
        with self._lock:
            for name, r in zip(names, results):
                self._known[name] = (isinstance(r, int), now)
            if len(self._known) > 65536:
                cutoff = now - self.lookup_ttl
                self._known = {k: v for k, v in self._known.items() if v[1] >= cutoff}
        return True

    def submit_store(self, job_metadata: Any) -> None:
        """Stores the blocks at ``block_ids`` of the primary tier under ``keys``."""
        names = [self._key(k) for k in job_metadata.keys]
        blocks = [self._block(b) for b in job_metadata.block_ids]

        def store() -> bool:
            results = self.client.batch_put_from(names, blocks)
            failed = [r for r in results if r is not None]
            if failed:
                log.warning("strata store of %d blocks: %d failed (%s)", len(names), len(failed), failed[0])
            with self._lock:
                for name, r in zip(names, results):
                    self._known[name] = (r is None, time.monotonic())
            return not failed

        self._run(store, job_id=job_metadata.job_id)

    def submit_load(self, job_metadata: Any) -> None:
        """Loads ``keys`` into the primary tier's blocks at ``block_ids``."""
        names = [self._key(k) for k in job_metadata.keys]
        blocks = [self._block(b) for b in job_metadata.block_ids]

        def load() -> bool:
            results = self.client.batch_get_into(names, blocks)
            ok = [r == self.block_size for r in results]
            if not all(ok):
                log.warning("strata load of %d blocks: %d failed", len(names), ok.count(False))
                with self._lock:
                    for name, good in zip(names, ok):
                        if not good:
                            self._known[name] = (False, time.monotonic())
            return all(ok)

        self._run(load, job_id=job_metadata.job_id)

    def get_finished(self) -> Iterable[Any]:
        """The stores and loads that finished since the last call."""
        with self._lock:
            done, self._finished = self._finished, []
        return done

    def touch(self, keys: Any, req_context: Any = None) -> None:
        """Nothing to do: the server's LRU sees every load, and leases keep blocks in place
        between a lookup and its load."""

    def get_request_offloading_context(self, req_context: Any) -> Any:
        """The default context: strata takes every block offered."""
        try:
            from vllm.v1.kv_offload.base import RequestOffloadingContext

            return RequestOffloadingContext()
        except ImportError:
            return None

    def request_finished(self, req_context: Any) -> None:
        """Nothing held per request."""

    def drain_jobs(self) -> None:
        """Waits until every submitted store and load has finished."""
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0)

    def shutdown(self) -> None:
        """Waits for the jobs in flight, then closes the connection."""
        self._pool.shutdown(wait=True)
        self.client.close()

    # Newer vLLM names for the same calls.
    get_finished_jobs = get_finished
    on_new_request = get_request_offloading_context
    on_request_finished = request_finished

    # -- internals -------------------------------------------------------------------

    def _run(self, work: Any, job_id: Optional[int]) -> None:
        with self._lock:
            self._inflight += 1

        def task() -> None:
            try:
                success = bool(work())
            except Exception as e:  # noqa: BLE001 - a failed job is a result, not a crash
                log.warning("strata tier job %s failed: %s", job_id, e)
                success = False
            with self._idle:
                if job_id is not None:
                    self._finished.append(JobResult(job_id=job_id, success=success))
                self._inflight -= 1
                self._idle.notify_all()

        self._pool.submit(task)
