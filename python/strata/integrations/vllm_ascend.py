"""strata as a vllm-ascend KV pool backend: ``"backend": "strata"``.

vllm-ascend's ``AscendStoreConnector`` picks its pool backend by name from the closed dict
``backend_map`` (vllm-project/vllm-ascend
``vllm_ascend/distributed/kv_transfer/kv_pool/ascend_store/backend/__init__.py``; the
contract is ``backend/base.py``'s ``Backend``; read at commit
182b75ea84ff13ece27b57391331ef8935410aea). Loading this module through vLLM's
``kv_connector_module_path`` adds ``"strata"`` to that dict, so no vllm-ascend file
changes::

    --kv-transfer-config '{"kv_connector": "StrataAscendStoreConnector",
        "kv_connector_module_path": "strata.integrations.vllm_ascend",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"backend": "strata"}}'

The server, token, certificate and transport come from ``STRATA_SERVER``,
``STRATA_AUTH_TOKEN`` (or ``STRATA_AUTH_TOKEN_FILE``), ``STRATA_CA`` and
``STRATA_TRANSPORT``, as for every strata client. The KV cache's addresses are device
(NPU) pointers: on a host whose strata server has a device tier of the same vendor, the
client's device module copies them (device-to-device where a value is in the device
tier); otherwise set ``STRATA_DEVICE=ascend`` (the rank's device is ``set_device``'s)
and values are staged through host memory by that module's copies.
"""

from __future__ import annotations

import logging
import os
from typing import Any, List, Optional

from .. import errors
from ._connect import connect
from ..mooncake import mooncake_code

log = logging.getLogger("strata.vllm_ascend")

_BACKENDS = "vllm_ascend.distributed.kv_transfer.kv_pool.ascend_store.backend"

try:
    from vllm_ascend.distributed.kv_transfer.kv_pool.ascend_store.backend.base import (
        Backend as _Base,
    )
except ImportError:  # Without vllm-ascend: the same contract, so it can be tested.
    from abc import ABC

    class _Base(ABC):  # type: ignore[no-redef]
        store: Any = None

        @classmethod
        def create_scheduler_client(cls, parallel_config: Any) -> Any:
            return cls(parallel_config)

        def batch_is_exist(self, keys: List[str]) -> List[int]:
            return self.exists(keys)  # type: ignore[attr-defined]


class StrataBackend(_Base):
    """vllm-ascend's pool ``Backend`` over a strata server."""

    def __init__(self, parallel_config: Any = None, lazy_init: bool = False, **_: Any):
        self.parallel_config = parallel_config
        # lazy_init exists for memory that appears after start (vllm-ascend's compressed
        # DSV4 caches); a strata client contributes no memory, so it connects at once: a
        # missing server stops the engine at start, not at its first request.
        self.lazy_init = lazy_init
        self.device_spec: Optional[str] = os.environ.get("STRATA_DEVICE") or None
        self.store = self.client = connect(device=self.device_spec)

    @classmethod
    def create_scheduler_client(cls, parallel_config: Any) -> "StrataBackend":
        """The scheduler's lookup-only client: same connection, no device needed."""
        return cls(parallel_config)

    def set_device(self) -> None:
        """Nothing to bind: the client copies with the device module that owns the
        registered memory (the server's, or ``STRATA_DEVICE``'s)."""

    def register_buffer(self, ptrs: List[int], lengths: List[int]) -> None:
        """Registers each KV-cache region (device memory) for the pointer calls."""
        for ptr, length in zip(ptrs, lengths):
            if length:
                self.client.register_buffer(int(ptr), int(length), device=True)

    def exists(self, keys: List[str]) -> List[int]:
        """Per key 1 if stored, 0 if not (exact, one round trip per 65,536 keys)."""
        answers = self.client.batch_exists(keys)
        return [1 if a is True else 0 for a in answers]

    def batch_is_exist(self, keys: List[str]) -> List[int]:
        """The scheduler's lookup: keys of consecutive blocks, each block's keys over every
        rank. Answered by one leased prefix lookup on the server: the keys of the blocks
        stored on every rank are 1 (and stay leased until the workers load them, so a block
        counted here cannot be evicted before its load), the rest 0. Keys not grouped by
        block are answered key by key."""
        # A block's keys (every rank's, every layer's) end in its hash and come together.
        try:
            hits = self.client.prefix_keys_by_tail(keys, "@", lease=True)
        except errors.Error as e:
            log.error("strata lookup of %d keys failed: %s", len(keys), e)
            return [0] * len(keys)
        if hits is None:
            return self.exists(keys)  # not grouped by block: answer key by key
        return [1] * hits + [0] * (len(keys) - hits)

    def put(self, keys: List[str], addrs: List[List[int]], sizes: List[List[int]]) -> None:
        """Stores each key from its pieces (device pointers); failures are logged, and a
        key whose put failed is never counted by a lookup."""
        regions = [_pieces(a, s) for a, s in zip(addrs, sizes)]
        results = self.client.batch_put_from(keys, regions)
        failed = [r for r in results if r is not None]
        if failed:
            log.error("strata put: %d of %d keys failed: %s", len(failed), len(keys), failed[0])

    def get(self, keys: List[str], addrs: List[List[int]], sizes: List[List[int]]) -> Optional[List[int]]:
        """Loads each key into its pieces; per key 0, or a negative (Mooncake) code."""
        try:
            regions = [_pieces(a, s) for a, s in zip(addrs, sizes)]
            results = self.client.batch_get_into(keys, regions)
        except errors.Error as e:
            log.error("strata get of %d keys failed: %s", len(keys), e)
            return None
        out = []
        for r in results:
            if isinstance(r, BaseException):
                log.error("strata get: %s", r)
                out.append(mooncake_code(r))
            else:
                out.append(0)
        return out

    def batch_add_lease(self, keys: List[str], lease_ttl_ms: int = 0) -> List[int]:
        """Leases each key for a load; per key 0 or a negative code. The lease lasts the
        server's lease TTL (``--default-kv-lease-ttl``), not ``lease_ttl_ms``."""
        return [mooncake_code(r) if isinstance(r, BaseException) else 0 for r in self.client.batch_lease(keys)]

    def batch_remove_lease(self, keys: List[str]) -> int:
        """Returns 0: strata's read leases end on their own at the server's TTL."""
        return 0


def _pieces(addrs: List[int], sizes: List[int]) -> Any:
    pieces = [(int(a), int(s)) for a, s in zip(addrs, sizes)]
    return pieces[0] if len(pieces) == 1 else pieces


def register() -> bool:
    """Adds ``"strata"`` to vllm-ascend's ``backend_map``; False without vllm-ascend."""
    try:
        import importlib

        backends = importlib.import_module(_BACKENDS)
    except ImportError:
        return False
    backends.backend_map["strata"] = {"name": "StrataBackend", "path": __name__}
    return True


if register():
    from vllm_ascend.distributed.kv_transfer.kv_pool.ascend_store.ascend_store_connector import (
        AscendStoreConnector,
    )

    class StrataAscendStoreConnector(AscendStoreConnector):  # type: ignore[misc]
        """vllm-ascend's ``AscendStoreConnector``, loaded from this module so that
        ``"backend": "strata"`` is registered before it starts."""
