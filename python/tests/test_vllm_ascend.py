"""strata.integrations.vllm_ascend driven as vllm-ascend's KV pool drives a backend.

Contract read from vllm-project/vllm-ascend at commit
182b75ea84ff13ece27b57391331ef8935410aea, under
vllm_ascend/distributed/kv_transfer/kv_pool/ascend_store/: backend/base.py (the Backend
methods), backend/__init__.py (backend_map), pool_scheduler.py (the scheduler's
create_scheduler_client and batch_is_exist over every rank's keys, a block counting only
when all its keys are 1), pool_worker.py (the worker's backend built with lazy_init,
register_buffer(ptrs, lengths) of the KV cache, put/get(keys, addrs[][], sizes[][]) with one
address per layer's K and V), metadata.py (PoolKey.to_string).
vllm-ascend needs torch-npu and vLLM, which do not install here: the KV cache below is
host-sim device memory (strata.DeviceMemory), laid out as the worker's per-layer K and V
caches, and the calls are the ones those files make.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import strata
from strata.integrations import vllm_ascend
from strata.integrations.vllm_ascend import StrataBackend


def key(prefix, rank, block_hash, model="qwen3"):
    """vllm-ascend's PoolKey.to_string()."""
    return (f"{prefix}{model}@pcp0@dcp0@head_or_tp_rank:{rank}@pp_rank:0@group:0"
            f"@cache_role:kv@cache_family:default@{block_hash}")


class RankCache:
    """One TP rank's paged KV cache in device memory: per layer a K and a V cache of
    `blocks` blocks of `block_bytes` each."""

    def __init__(self, layers=4, blocks=8, block_bytes=4096):
        self.layers, self.blocks, self.block_bytes = layers, blocks, block_bytes
        self.region = blocks * block_bytes
        self.memory = strata.DeviceMemory(layers * 2 * self.region)

    def ptrs_lengths(self):
        return [self.memory.address + i * self.region for i in range(self.layers * 2)], [self.region] * (self.layers * 2)

    def block(self, b):
        addrs = [self.memory.address + i * self.region + b * self.block_bytes for i in range(self.layers * 2)]
        return addrs, [self.block_bytes] * len(addrs)

    def fill(self, b, seed):
        data = np.random.default_rng(seed).integers(0, 256, self.block_bytes * self.layers * 2, dtype=np.uint8).tobytes()
        addrs, _ = self.block(b)
        for i, a in enumerate(addrs):
            self.memory.write(a - self.memory.address, data[i * self.block_bytes:(i + 1) * self.block_bytes])
        return data

    def read(self, b):
        addrs, _ = self.block(b)
        return b"".join(self.memory.read(a - self.memory.address, self.block_bytes) for a in addrs)


@pytest.fixture
def env(server, monkeypatch):
    monkeypatch.setenv("STRATA_SERVER", server.address)
    monkeypatch.setenv("STRATA_CA", server.cert)


def test_the_backend_takes_vllm_ascends_argument_names():
    pinned = {
        "__init__": ["parallel_config", "lazy_init"],
        "create_scheduler_client": ["parallel_config"],
        "set_device": [],
        "register_buffer": ["ptrs", "lengths"],
        "exists": ["keys"],
        "batch_is_exist": ["keys"],
        "put": ["keys", "addrs", "sizes"],
        "get": ["keys", "addrs", "sizes"],
        "batch_add_lease": ["keys", "lease_ttl_ms"],
        "batch_remove_lease": ["keys"],
    }
    for name, args in pinned.items():
        params = [p for p in inspect.signature(getattr(StrataBackend, name)).parameters.values()
                  if p.name not in ("self", "cls") and p.kind is not p.VAR_KEYWORD]
        assert [p.name for p in params] == args, name


def test_blocks_saved_by_every_rank_load_on_another_instance(env, prefix):
    tp, hashes = 2, [f"{i:032x}" for i in range(1, 7)]
    # Instance A: each rank's worker saves blocks 0..4 (rank 1 misses block 5).
    saved = {}
    for rank in range(tp):
        worker = StrataBackend(None, lazy_init=False)
        worker.set_device()
        cache = RankCache()
        worker.register_buffer(*cache.ptrs_lengths())
        blocks = range(5) if rank == 1 else range(6)
        keys = [key(prefix, rank, hashes[b]) for b in blocks]
        addrs, sizes = zip(*(cache.block(b) for b in blocks))
        for b in blocks:
            saved[(rank, b)] = cache.fill(b, seed=rank * 100 + b)
        worker.put(keys, list(addrs), list(sizes))
    # The scheduler of instance B: all ranks' keys, block by block.
    scheduler = StrataBackend.create_scheduler_client(None)
    query = [key(prefix, r, h) for h in hashes for r in range(tp)]
    states = scheduler.batch_is_exist(query)
    assert states == [1] * 10 + [0] * 2  # block 5 lacks rank 1
    # Its workers load the 5 blocks into other slots; every byte compared.
    for rank in range(tp):
        worker = StrataBackend(None, lazy_init=True)
        cache = RankCache()
        worker.register_buffer(*cache.ptrs_lengths())
        keys = [key(prefix, rank, hashes[b]) for b in range(5)]
        slots = [7, 6, 5, 4, 3]
        addrs, sizes = zip(*(cache.block(s) for s in slots))
        assert worker.get(keys, list(addrs), list(sizes)) == [0] * 5
        for b, s in zip(range(5), slots):
            assert cache.read(s) == saved[(rank, b)], (rank, b)
        missing = worker.get([key(prefix, rank, "f" * 32)], [cache.block(0)[0]], [cache.block(0)[1]])
        assert missing == [vllm_ascend.mooncake_code(strata.NotFound("x"))]


def test_a_failed_put_is_never_counted(env, prefix):
    worker = StrataBackend(None)
    cache = RankCache(blocks=4)
    worker.register_buffer(*cache.ptrs_lengths())
    keys = [key(prefix, 0, f"{i:032x}") for i in range(4)]
    addrs, sizes = map(list, zip(*(cache.block(b) for b in range(4))))
    addrs[1] = [0x1000] + addrs[1][1:]  # block 1's first piece outside the registered cache
    worker.put(keys, addrs, sizes)
    assert worker.exists(keys) == [1, 0, 1, 1]
    assert worker.batch_is_exist(keys) == [1, 0, 0, 0]


def test_leases_and_the_exact_exists(env, prefix):
    worker = StrataBackend(None)
    cache = RankCache(blocks=2)
    worker.register_buffer(*cache.ptrs_lengths())
    keys = [key(prefix, 0, f"{i:032x}") for i in range(2)]
    addrs, sizes = zip(*(cache.block(b) for b in range(2)))
    worker.put(keys, list(addrs), list(sizes))
    assert worker.batch_add_lease(keys + [key(prefix, 0, "e" * 32)], 5000) == [0, 0, -704]
    with pytest.raises(strata.Leased):
        worker.client.remove(keys[0])
    assert worker.batch_remove_lease(keys) == 0
    assert worker.exists(keys) == [1, 1]


def test_keys_not_grouped_by_block_are_answered_key_by_key(env, prefix):
    worker = StrataBackend(None)
    cache = RankCache(blocks=2)
    worker.register_buffer(*cache.ptrs_lengths())
    stored = [key(prefix, 0, "a" * 32), key(prefix, 1, "b" * 32)]
    for k, b in zip(stored, range(2)):
        addrs, sizes = cache.block(b)
        worker.put([k], [addrs], [sizes])
    # Rank-major order: block a, block b, block a again: no prefix to take.
    query = [key(prefix, 0, "a" * 32), key(prefix, 0, "b" * 32), key(prefix, 1, "a" * 32),
             key(prefix, 1, "b" * 32)]
    assert worker.batch_is_exist(query) == [1, 0, 0, 1]


def test_without_a_server_the_backend_fails_at_start(monkeypatch, server):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("STRATA_SERVER", f"127.0.0.1:{s.getsockname()[1]}")
        monkeypatch.setenv("STRATA_CA", server.cert)
        monkeypatch.setenv("STRATA_TIMEOUT", "1")
        with pytest.raises((strata.ConnectionError, strata.Timeout)):
            StrataBackend(None)


def test_loading_the_module_registers_the_backend_where_vllm_ascend_is_installed():
    # vllm-ascend is not installed here: the module loads, registers nothing, and says so.
    assert vllm_ascend.register() is False
    assert not hasattr(vllm_ascend, "StrataAscendStoreConnector")
