"""strata.integrations.sglang driven as SGLang's HiCache drives a storage backend.

Contract read from sgl-project/sglang at commit 001067fffe33427bee0ed2f007fb7551a1d76b44:
python/sglang/srt/mem_cache/hicache_storage.py (HiCacheStorage, HiCacheStorageConfig),
python/sglang/srt/mem_cache/storage/backend_factory.py (dynamic backends are built as
``cls(storage_config, kwargs)``); host pool layout from
python/sglang/srt/mem_cache/pool_host/mha.py at 39baee9e09735ebb7916f64ceb00dbfe395ab52b
(page_first: kv_buffer dims (2, size, layer_num, head_num, head_dim) for MHA, (size,
layer_num, 1, dim) for MLA; get_page_buffer_meta lists per page the K then V pointer, or
the one latent pointer, each of page_size * layer_num * head_num * head_dim * itemsize).
SGLang is not installed here (its wheel pulls torch with CUDA, beyond CI's budget): the
pools below follow that layout with numpy, and the sequence is the cache controller's.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pytest

import strata
from strata.integrations.sglang import StrataHiCacheStorage


@dataclass
class StorageConfig:  # HiCacheStorageConfig's fields
    tp_rank: int = 0
    tp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    attn_cp_rank: int = 0
    attn_cp_size: int = 1
    is_mla_model: bool = False
    enable_storage_metrics: bool = False
    is_page_first_layout: bool = True
    model_name: Optional[str] = "Qwen/Qwen3-8B"
    dp_rank: int = 0
    dp_size: int = 1
    tp_lcm_size: Optional[int] = None
    should_split_heads: bool = False
    extra_config: Optional[dict] = field(default_factory=dict)


class HostPool:
    """A page_first host KV pool: MHA (K and V per page) or MLA (one latent per page)."""

    def __init__(self, mla=False, pages=16, page_size=4, layers=3, heads=2, dim=16, seed=0):
        self.layout, self.page_size, self.size = "page_first", page_size, pages * page_size
        self.layer_num, self.head_num, self.head_dim = layers, (1 if mla else heads), dim
        self.dtype = np.float16
        shape = (self.size, layers, self.head_num, dim)
        self.kv_buffer = np.zeros(shape if mla else (2,) + shape, dtype=self.dtype)
        self.mla = mla

    def per_token(self):
        return self.layer_num * self.head_num * self.head_dim * np.dtype(self.dtype).itemsize

    def get_page_buffer_meta(self, indices):
        indices = indices.tolist()
        base = self.kv_buffer.ctypes.data
        v_offset = self.size * self.per_token()
        ptrs = []
        for i in range(0, len(indices), self.page_size):
            k = base + indices[i] * self.per_token()
            ptrs += [k] if self.mla else [k, k + v_offset]
        return ptrs, [self.page_size * self.per_token()] * len(ptrs)

    def page(self, slot):
        tokens = slice(slot * self.page_size, (slot + 1) * self.page_size)
        return self.kv_buffer[tokens].copy() if self.mla else self.kv_buffer[:, tokens].copy()

    def fill(self, slot, seed):
        tokens = slice(slot * self.page_size, (slot + 1) * self.page_size)
        rng = np.random.default_rng(seed)
        target = self.kv_buffer[tokens] if self.mla else self.kv_buffer[:, tokens]
        target[...] = rng.standard_normal(target.shape).astype(self.dtype)

    def indices(self, slots):
        return np.array([s * self.page_size + t for s in slots for t in range(self.page_size)])


def page_keys(tokens, page_size):
    """SGLang's page keys: a SHA-256 chained over each page's token ids."""
    keys, prior = [], None
    for i in range(0, len(tokens) - len(tokens) % page_size, page_size):
        h = hashlib.sha256()
        if prior:
            h.update(bytes.fromhex(prior))
        h.update(np.array(tokens[i:i + page_size], dtype=np.uint32).tobytes())
        prior = h.hexdigest()
        keys.append(prior)
    return keys


def backend(server, rank=0, tp=1, mla=False, **extra):
    config = StorageConfig(tp_rank=rank, tp_size=tp, is_mla_model=mla, extra_config={
        "backend_name": "strata", "module_path": "strata.integrations.sglang",
        "class_name": "StrataHiCacheStorage", "interface_v1": 1,
        "server": server.address, "ca": server.cert, **extra,
    })
    return StrataHiCacheStorage(config, {})


def test_the_methods_take_sglangs_argument_names():
    pinned = {
        "batch_exists": ["keys", "extra_info"],
        "batch_get_v1": ["keys", "host_indices", "extra_info"],
        "batch_set_v1": ["keys", "host_indices", "extra_info"],
        "get": ["key", "target_location", "target_sizes"],
        "batch_get": ["keys", "target_locations", "target_sizes"],
        "set": ["key", "value", "target_location", "target_sizes"],
        "batch_set": ["keys", "values", "target_locations", "target_sizes"],
        "exists": ["key"],
        "register_mem_pool_host": ["mem_pool_host"],
        "clear": [],
    }
    for name, args in pinned.items():
        params = list(inspect.signature(getattr(StrataHiCacheStorage, name)).parameters)[1:]
        assert params == args, name


@pytest.mark.parametrize("mla", [False, True], ids=["mha", "mla"])
def test_pages_stored_by_one_instance_load_in_another_every_byte(server, prefix, mla):
    tp = 1 if mla else 2
    tag = {"key_prefix": prefix}
    # Instance A: every TP rank backs up the pages of request 1 from its host pool.
    writers = [backend(server, r, tp, mla, **tag) for r in range(tp)]
    pools_a = [HostPool(mla) for _ in range(tp)]
    first = list(range(4 * 6 + 2))  # six full pages and a partial one
    keys_1 = page_keys(first, 4)
    assert len(keys_1) == 6
    for r, (b, pool) in enumerate(zip(writers, pools_a)):
        b.register_mem_pool_host(pool)
        slots = [3, 7, 1, 9, 4, 0]
        for page, slot in enumerate(slots):
            pool.fill(slot, seed=1000 * r + page)
        assert b.batch_set_v1(keys_1, pool.indices(slots)) == [True] * 6
        # A page stored again is success, not an error.
        assert b.batch_set_v1(keys_1[:2], pool.indices(slots[:2])) == [True, True]
    # Instance B: a longer request sharing the first 6 pages.
    second = first[:24] + list(range(500, 540))
    keys_2 = page_keys(second, 4)
    readers = [backend(server, r, tp, mla, **tag) for r in range(tp)]
    for r, b in enumerate(readers):
        pool = HostPool(mla)
        b.register_mem_pool_host(pool)
        assert b.batch_exists(keys_2) == 6, f"rank {r}"
        fresh = [11, 12, 13, 14, 15, 10]
        assert b.batch_get_v1(keys_2[:6], pool.indices(fresh)) == [True] * 6
        for page, (old, new) in enumerate(zip([3, 7, 1, 9, 4, 0], fresh)):
            assert pool_bytes(pools_a[r], old) == pool_bytes(pool, new), (r, page)
        # Pages not stored: reported as failed, the buffers of stored ones untouched.
        got = b.batch_get_v1(keys_2[5:8], pool.indices([2, 5, 6]))
        assert got == [True, False, False]
    for b in writers + readers:
        b.close()


def pool_bytes(pool, slot):
    return pool.page(slot).tobytes()


def test_ranks_count_only_where_every_rank_stored(server, prefix):
    tag = {"key_prefix": prefix}
    rank0, rank1 = backend(server, 0, 2, **tag), backend(server, 1, 2, **tag)
    pool0, pool1 = HostPool(), HostPool()
    rank0.register_mem_pool_host(pool0)
    rank1.register_mem_pool_host(pool1)
    keys = page_keys(list(range(40)), 4)
    assert rank0.batch_set_v1(keys[:5], pool0.indices(range(5))) == [True] * 5
    assert rank1.batch_set_v1(keys[:3], pool1.indices(range(3))) == [True] * 3
    assert rank0.batch_exists(keys) == 5
    assert rank1.batch_exists(keys) == 3


def test_a_page_whose_put_failed_is_reported_and_never_counted(server, prefix):
    b = backend(server, key_prefix=prefix)
    pool = HostPool()
    b.register_mem_pool_host(pool)
    keys = page_keys(list(range(16)), 4)
    honest = pool.get_page_buffer_meta

    def broken(indices):  # page 2's V pointer outside every registered buffer
        ptrs, sizes = honest(indices)
        ptrs[2 * 2 + 1] = 0x1000
        return ptrs, sizes

    pool.get_page_buffer_meta = broken
    assert b.batch_set_v1(keys, pool.indices(range(4))) == [True, True, False, True]
    pool.get_page_buffer_meta = honest
    assert b.batch_exists(keys) == 2
    b.close()


def test_legacy_calls_copy_or_use_pointers(server, prefix):
    b = backend(server, key_prefix=prefix)
    pool = HostPool()
    b.register_mem_pool_host(pool)
    value = np.arange(256, dtype=np.uint8)
    assert b.set("legacy-a", value)
    assert b.exists("legacy-a") and not b.exists("legacy-b")
    got = b.get("legacy-a")
    assert bytes(got) == value.tobytes()
    assert b.get("legacy-b") is None
    assert b.batch_set(["l1", "l2"], [b"one", b"two"])
    assert [bytes(v) for v in b.batch_get(["l1", "l2"])] == [b"one", b"two"]
    ptrs, sizes = pool.get_page_buffer_meta(pool.indices([0]))
    pool.fill(0, seed=5)
    assert b.set("legacy-ptr", target_location=ptrs[0], target_sizes=sizes[0])
    before = pool.page(0).copy()
    pool.kv_buffer[...] = 0
    assert b.get("legacy-ptr", ptrs[0], sizes[0]) is True
    assert np.array_equal(pool.page(0)[0], before[0])
    assert b.batch_get(["legacy-ptr", "nope"], [ptrs[0], ptrs[1]], [sizes[0], sizes[1]]) == 1
    b.close()


def test_bad_configuration_fails_at_start_with_one_clear_error(server, prefix):
    with pytest.raises(ValueError, match="unknown extra config key.*'bogus'"):
        backend(server, bogus=1)
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        config = StorageConfig(extra_config={"server": f"127.0.0.1:{s.getsockname()[1]}",
                                             "ca": server.cert, "timeout": 1})
        with pytest.raises((strata.ConnectionError, strata.Timeout)):
            StrataHiCacheStorage(config, {})
    with pytest.raises(ValueError, match="should_split_heads"):
        StrataHiCacheStorage(StorageConfig(should_split_heads=True, extra_config={
            "server": server.address, "ca": server.cert}), {})
