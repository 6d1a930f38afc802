"""``MooncakeDistributedStore`` on strata: code written for Mooncake Store runs on strata by
changing its import::

    # from mooncake.store import MooncakeDistributedStore
    from strata.mooncake import MooncakeDistributedStore

The calls and return conventions are Mooncake's, as its Python binding defines them
(kvcache-ai/Mooncake ``mooncake-integration/store/store_py.cpp``, read at commit
3b5a594133958449a1feaf1c9e0fc1b553e34a28): 0 or a byte count on success, a negative
Mooncake error code on failure, per key in batch calls; ``get`` answers ``b""`` for a
missing key; ``is_exist`` answers 1, 0 or -1. Nothing raises except for a wrong argument
type. ``setup``'s ``master_server_addr`` names the strata server (``host:port``); the
arguments strata has no use for are accepted and ignored (see docs/python.md).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Union

from . import errors
from ._native import Client

log = logging.getLogger("strata.mooncake")

# Mooncake's error codes (mooncake-store/include/types.h, same commit).
OK = 0
INTERNAL_ERROR = -1
NO_AVAILABLE_HANDLE = -200
INVALID_KEY = -400
INVALID_PARAMS = -600
ILLEGAL_CLIENT = -601
INVALID_WRITE = -700
OBJECT_NOT_FOUND = -704
OBJECT_ALREADY_EXISTS = -705
OBJECT_HAS_LEASE = -706
LEASE_EXPIRED = -707
OBJECT_REPLICA_BUSY = -714
CHECKSUM_MISMATCH = -801
RPC_FAIL = -900
RPC_TIMEOUT = -901

#: strata's stable codes as Mooncake's.
_MOONCAKE_CODE: Dict[int, int] = {
    errors.NotFound.code: OBJECT_NOT_FOUND,
    errors.AlreadyExists.code: OBJECT_ALREADY_EXISTS,
    errors.Busy.code: OBJECT_REPLICA_BUSY,
    errors.NoSpace.code: NO_AVAILABLE_HANDLE,
    errors.LeaseExpired.code: LEASE_EXPIRED,
    errors.InvalidKey.code: INVALID_KEY,
    errors.InvalidArgument.code: INVALID_PARAMS,
    errors.TooLarge.code: INVALID_PARAMS,
    errors.NotWriter.code: INVALID_WRITE,
    errors.Internal.code: INTERNAL_ERROR,
    errors.Leased.code: OBJECT_HAS_LEASE,
    errors.ProtocolError.code: RPC_FAIL,
    errors.Unauthorized.code: ILLEGAL_CLIENT,
    errors.Timeout.code: RPC_TIMEOUT,
    errors.ConnectionError.code: RPC_FAIL,
    errors.Corrupt.code: CHECKSUM_MISMATCH,
}

Key = Union[str, bytes]


def mooncake_code(error: BaseException) -> int:
    """The Mooncake error code for a strata error (or any other exception)."""
    if isinstance(error, errors.Error):
        return _MOONCAKE_CODE.get(error.code, INTERNAL_ERROR)
    if isinstance(error, (ValueError, TypeError, OverflowError)):
        return INVALID_PARAMS
    return INTERNAL_ERROR


def _codes(results: Sequence[Any], success: Any = None) -> List[int]:
    """Per-key results of a strata batch call as Mooncake's ints."""
    out = []
    for r in results:
        if isinstance(r, BaseException):
            out.append(mooncake_code(r))
        elif success is not None:
            out.append(success)
        else:
            out.append(int(r) if r is not None else OK)
    return out


class MooncakeDistributedStore:
    """Mooncake's store class over a strata server. See the module's documentation."""

    def __init__(self) -> None:
        self._client: Optional[Client] = None

    # -- lifecycle -------------------------------------------------------------------

    def setup(
        self,
        local_hostname: Union[str, Dict[str, Any], None] = None,
        metadata_server: Optional[str] = None,
        global_segment_size: int = 16 << 20,
        local_buffer_size: int = 16 << 20,
        protocol: str = "tcp",
        rdma_devices: str = "",
        master_server_addr: Optional[str] = None,
        engine: Any = None,
        **options: Any,
    ) -> int:
        """Connects to the strata server at ``master_server_addr`` (or ``STRATA_SERVER``,
        or this host's default). Also takes Mooncake's one-dict form, ``setup(config)``.

        strata additions (keywords or dict keys): ``token``, ``token_file``, ``ca``,
        ``transport``, ``timeout``. Ignored: ``local_hostname``, ``metadata_server``,
        ``global_segment_size``, ``local_buffer_size``, ``protocol``, ``rdma_devices``,
        ``engine`` and Mooncake's other options; the server's tiers are the server's.
        Returns 0, or a negative code (the reason is logged)."""
        if isinstance(local_hostname, dict):
            config = dict(local_hostname)
            master_server_addr = config.pop("master_server_addr", None) or config.pop(
                "master_server_address", None
            )
            options = {**config, **options}
        strata_options = {
            name: options[name]
            for name in ("token", "token_file", "ca", "transport", "timeout")
            if options.get(name) is not None
        }
        if "timeout" in strata_options:
            strata_options["timeout"] = float(strata_options["timeout"])
        if self._client is not None:
            self._client.close()
            self._client = None
        try:
            self._client = Client(master_server_addr or None, **strata_options)
        except errors.Error as e:
            log.error("strata setup: cannot reach the server: %s", e)
            return mooncake_code(e)
        return OK

    def close(self) -> int:
        """Closes the connection. Returns 0."""
        if self._client is not None:
            self._client.close()
            self._client = None
        return OK

    def health_check(self) -> int:
        """0 if the server answers, 1 if not set up or closed, 2 if unreachable."""
        if self._client is None or self._client.closed:
            return 1
        try:
            self._client.ping()
        except errors.Error:
            return 2
        return 0

    def _call(self, what: str, call: Any, *args: Any) -> Any:
        """``call(*args)``, or the Mooncake code of its failure (logged)."""
        if self._client is None:
            log.error("strata %s: the store is not set up (call setup first)", what)
            return INVALID_PARAMS
        try:
            return call(self._client, *args)
        except (errors.Error, ValueError, TypeError, OverflowError) as e:
            if not isinstance(e, errors.NotFound):
                log.warning("strata %s: %s", what, e)
            return mooncake_code(e)

    def _batch(self, what: str, n: int, call: Any, *args: Any) -> List[int]:
        """A batch call's per-key codes; a call that fails whole fails every key."""
        result = self._call(what, call, *args)
        if isinstance(result, int):
            return [result] * n
        return result

    # -- memory ----------------------------------------------------------------------

    def register_buffer(self, buffer_ptr: int, size: int) -> int:
        """Registers host memory for the pointer calls. Returns 0 or a negative code."""
        return self._call("register_buffer", lambda c: c.register_buffer(buffer_ptr, size) or OK)

    def unregister_buffer(self, buffer_ptr: int) -> int:
        """Forgets the buffer registered at ``buffer_ptr``. Returns 0 or a negative code."""
        return self._call("unregister_buffer", lambda c: c.unregister_buffer(buffer_ptr) or OK)

    # -- values ----------------------------------------------------------------------

    def put(self, key: Key, value: Any, config: Any = None) -> int:
        """Stores a bytes-like ``value``. An existing key is success (values are
        immutable: the same key names the same bytes). Returns 0 or a negative code."""
        return self._call("put", lambda c: c.put(key, value) or OK)

    def get(self, key: Key) -> bytes:
        """The value, or ``b""`` when the key is missing or the call fails."""
        result = self._call("get", lambda c: c.get(key))
        return result if isinstance(result, bytes) else b""

    def put_from(self, key: Key, buffer_ptr: int, size: int, config: Any = None) -> int:
        """Stores ``size`` bytes at ``buffer_ptr`` (registered). Returns 0 or a code."""
        return self._call("put_from", lambda c: c.put_from(key, buffer_ptr, size) or OK)

    def get_into(self, key: Key, buffer_ptr: int, size: int) -> int:
        """Copies the value into ``size`` bytes at ``buffer_ptr`` (registered). Returns
        the bytes read, or a negative code."""
        return self._call("get_into", lambda c: c.get_into(key, buffer_ptr, size))

    def batch_put_from(
        self, keys: Sequence[Key], buffer_ptrs: Sequence[int], sizes: Sequence[int], config: Any = None
    ) -> List[int]:
        """Per key 0 or a negative code."""
        if not len(keys) == len(buffer_ptrs) == len(sizes):
            return [INVALID_PARAMS] * len(keys)
        regions = [(p, s) for p, s in zip(buffer_ptrs, sizes)]
        return self._batch(
            "batch_put_from", len(keys), lambda c: _codes(c.batch_put_from(keys, regions), OK)
        )

    def batch_get_into(self, keys: Sequence[Key], buffer_ptrs: Sequence[int], sizes: Sequence[int]) -> List[int]:
        """Per key the bytes read, or a negative code."""
        if not len(keys) == len(buffer_ptrs) == len(sizes):
            return [INVALID_PARAMS] * len(keys)
        regions = [(p, s) for p, s in zip(buffer_ptrs, sizes)]
        return self._batch("batch_get_into", len(keys), lambda c: _codes(c.batch_get_into(keys, regions)))

    def batch_put_from_multi_buffers(
        self,
        keys: Sequence[Key],
        all_buffer_ptrs: Sequence[Sequence[int]],
        all_sizes: Sequence[Sequence[int]],
        config: Any = None,
    ) -> List[int]:
        """Each key's value from its pieces, in order. Per key 0 or a negative code."""
        regions = _pieces(keys, all_buffer_ptrs, all_sizes)
        if regions is None:
            return [INVALID_PARAMS] * len(keys)
        return self._batch(
            "batch_put_from_multi_buffers", len(keys), lambda c: _codes(c.batch_put_from(keys, regions), OK)
        )

    def batch_get_into_multi_buffers(
        self,
        keys: Sequence[Key],
        all_buffer_ptrs: Sequence[Sequence[int]],
        all_sizes: Sequence[Sequence[int]],
        prefer_alloc_in_same_node: bool = False,
    ) -> List[int]:
        """Each key's value spread over its pieces, in order. Per key the bytes read, or
        a negative code."""
        regions = _pieces(keys, all_buffer_ptrs, all_sizes)
        if regions is None:
            return [INVALID_PARAMS] * len(keys)
        return self._batch(
            "batch_get_into_multi_buffers", len(keys), lambda c: _codes(c.batch_get_into(keys, regions))
        )

    # -- lookups and removal ---------------------------------------------------------

    def is_exist(self, key: Key) -> int:
        """1 if stored, 0 if not, -1 on error."""
        result = self._call("is_exist", lambda c: c.exists(key))
        return int(result) if isinstance(result, bool) else -1

    def batch_is_exist(self, keys: Sequence[Key]) -> List[int]:
        """Per key 1, 0, or -1 on error."""
        result = self._call("batch_is_exist", lambda c: c.batch_exists(keys))
        if isinstance(result, int):
            return [-1] * len(keys)
        return [int(r) if isinstance(r, bool) else -1 for r in result]

    def get_size(self, key: Key) -> int:
        """The value's size in bytes, or a negative code. Takes a short read lease, as a
        load would (a ``remove`` without ``force`` right after it answers
        OBJECT_HAS_LEASE until the lease ends)."""
        return self._call("get_size", lambda c: c.size(key))

    def remove(self, key: Key, force: bool = False) -> int:
        """0, or a negative code (OBJECT_HAS_LEASE for a leased object unless ``force``)."""
        return self._call("remove", lambda c: c.remove(key, force) or OK)

    def batch_remove(self, keys: Sequence[Key], force: bool = False) -> List[int]:
        """Per key 0 or a negative code."""
        return self._batch("batch_remove", len(keys), lambda c: _codes(c.batch_remove(keys, force), OK))

    def remove_all(self, force: bool = False) -> int:
        """The number of objects removed, or a negative code."""
        return self._call("remove_all", lambda c: c.remove_all(force))


def _pieces(
    keys: Sequence[Key], all_ptrs: Sequence[Sequence[int]], all_sizes: Sequence[Sequence[int]]
) -> Optional[List[Any]]:
    """Each key's (address, size) pieces; one piece alone as one region."""
    if not len(keys) == len(all_ptrs) == len(all_sizes):
        return None
    regions: List[Any] = []
    for ptrs, sizes in zip(all_ptrs, all_sizes):
        if len(ptrs) != len(sizes) or not ptrs:
            return None
        pieces = [(p, s) for p, s in zip(ptrs, sizes)]
        regions.append(pieces[0] if len(pieces) == 1 else pieces)
    return regions
