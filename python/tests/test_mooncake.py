"""strata.mooncake.MooncakeDistributedStore driven as the engines drive Mooncake's class.

Signatures pinned from kvcache-ai/Mooncake mooncake-integration/store/store_py.cpp at
commit 3b5a594133958449a1feaf1c9e0fc1b553e34a28 (the py::arg names of each .def).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from strata import mooncake
from strata.mooncake import MooncakeDistributedStore

PINNED = {
    "setup": ["local_hostname", "metadata_server", "global_segment_size", "local_buffer_size",
              "protocol", "rdma_devices", "master_server_addr", "engine"],
    "register_buffer": ["buffer_ptr", "size"],
    "unregister_buffer": ["buffer_ptr"],
    "put": ["key", "value", "config"],
    "get": ["key"],
    "put_from": ["key", "buffer_ptr", "size", "config"],
    "get_into": ["key", "buffer_ptr", "size"],
    "batch_put_from": ["keys", "buffer_ptrs", "sizes", "config"],
    "batch_get_into": ["keys", "buffer_ptrs", "sizes"],
    "batch_put_from_multi_buffers": ["keys", "all_buffer_ptrs", "all_sizes", "config"],
    "batch_get_into_multi_buffers": ["keys", "all_buffer_ptrs", "all_sizes", "prefer_alloc_in_same_node"],
    "is_exist": ["key"],
    "batch_is_exist": ["keys"],
    "get_size": ["key"],
    "remove": ["key", "force"],
    "batch_remove": ["keys", "force"],
    "remove_all": ["force"],
    "close": [],
    "health_check": [],
}


def test_the_calls_take_mooncakes_argument_names():
    for name, args in PINNED.items():
        params = [p for p in inspect.signature(getattr(MooncakeDistributedStore, name)).parameters
                  if p not in ("self", "options")]
        assert params[: len(args)] == args, name


@pytest.fixture
def store(server):
    s = MooncakeDistributedStore()
    # The argument shapes vllm-ascend and SGLang pass; only the address means anything.
    rc = s.setup("localhost", "P2PHANDSHAKE", 3200 << 20, 1 << 30, "rdma", "", server.address, ca=server.cert)
    assert rc == 0
    yield s
    s.close()


class KVPool:
    """A paged KV cache as an engine lays it out: per layer a K and a V region, each
    holding `blocks` blocks of `block_bytes`. One block's value = its K and V slice of
    every layer."""

    def __init__(self, layers=4, blocks=8, block_bytes=8192):
        self.layers, self.blocks, self.block_bytes = layers, blocks, block_bytes
        self.memory = np.zeros(layers * 2 * blocks * block_bytes, dtype=np.uint8)
        self.base = self.memory.ctypes.data

    def region(self, layer, kv):
        return (layer * 2 + kv) * self.blocks * self.block_bytes

    def pieces(self, block):
        ptrs = [self.base + self.region(layer, kv) + block * self.block_bytes
                for layer in range(self.layers) for kv in (0, 1)]
        return ptrs, [self.block_bytes] * len(ptrs)

    def fill(self, seed):
        self.memory[:] = np.random.default_rng(seed).integers(0, 256, self.memory.size, dtype=np.uint8)


def test_blocks_of_k_and_v_pieces_round_trip_the_way_vllm_ascend_moves_them(store, prefix):
    pool = KVPool()
    assert store.register_buffer(pool.base, pool.memory.nbytes) == 0
    pool.fill(1)
    saved = pool.memory.copy()
    keys = [f"{prefix}model@tp_rank:0@block{b}" for b in range(pool.blocks)]
    ptrs, sizes = zip(*(pool.pieces(b) for b in range(pool.blocks)))
    assert store.batch_put_from_multi_buffers(keys, list(ptrs), list(sizes)) == [0] * pool.blocks
    assert store.batch_is_exist(keys + [prefix + "nope"]) == [1] * pool.blocks + [0]
    pool.memory[:] = 0
    # Load the blocks into other slots (block b into slot blocks-1-b).
    rev = list(reversed(range(pool.blocks)))
    ptrs, sizes = zip(*(pool.pieces(b) for b in rev))
    got = store.batch_get_into_multi_buffers(keys, list(ptrs), list(sizes))
    block_value = pool.layers * 2 * pool.block_bytes
    assert got == [block_value] * pool.blocks
    for b in range(pool.blocks):
        for layer in range(pool.layers):
            for kv in (0, 1):
                at = pool.region(layer, kv)
                want = saved[at + b * pool.block_bytes: at + (b + 1) * pool.block_bytes]
                slot = rev[b]
                have = pool.memory[at + slot * pool.block_bytes: at + (slot + 1) * pool.block_bytes]
                assert np.array_equal(want, have), (b, layer, kv)
    assert store.get_size(keys[0]) == block_value
    assert store.unregister_buffer(pool.base) == 0


def test_one_pointer_per_key_the_way_sglang_moves_pages(store, prefix):
    page, n = 16384, 6
    host = np.random.default_rng(2).integers(0, 256, page * n, dtype=np.uint8)
    base = host.ctypes.data
    assert store.register_buffer(base, host.nbytes) == 0
    keys = [f"{prefix}page{i}" for i in range(n)]
    ptrs = [base + i * page for i in range(n)]
    assert store.batch_put_from(keys, ptrs, [page] * n) == [0] * n
    saved = host.copy()
    host[:] = 0
    assert store.batch_get_into(keys, ptrs, [page] * n) == [page] * n
    assert np.array_equal(host, saved)
    assert store.put_from(prefix + "one", base, 100) == 0
    assert store.get_into(prefix + "one", base + page, page) == 100
    assert store.unregister_buffer(base) == 0


def test_return_conventions(store, prefix):
    assert store.health_check() == 0
    assert store.put(prefix + "a", b"alpha") == 0
    assert store.put(prefix + "a", b"alpha") == 0  # existing: success
    assert store.get(prefix + "a") == b"alpha"
    assert store.get(prefix + "missing") == b""
    assert store.is_exist(prefix + "a") == 1
    assert store.is_exist(prefix + "missing") == 0
    assert store.get_size(prefix + "missing") == mooncake.OBJECT_NOT_FOUND
    assert store.remove(prefix + "missing") == mooncake.OBJECT_NOT_FOUND
    assert store.get_into(prefix + "a", 0x1000, 10) == mooncake.INVALID_PARAMS  # unregistered
    assert store.register_buffer(0x1000, 10) == mooncake.INVALID_PARAMS  # not mapped
    assert store.batch_get_into([prefix + "a"], [1, 2], [3]) == [mooncake.INVALID_PARAMS]
    assert store.batch_remove([prefix + "a", prefix + "missing"], force=True) == [0, mooncake.OBJECT_NOT_FOUND]
    assert store.put(prefix + "b", b"beta") == 0
    assert store.remove_all(force=True) >= 1
    assert store.is_exist(prefix + "b") == 0


def test_before_setup_and_after_close(server):
    s = MooncakeDistributedStore()
    assert s.health_check() == 1
    assert s.put("k", b"v") == mooncake.INVALID_PARAMS
    assert s.get("k") == b""
    assert s.setup({"local_hostname": "h", "metadata_server": "P2PHANDSHAKE",
                    "master_server_addr": server.address, "ca": server.cert, "protocol": "tcp"}) == 0
    assert s.health_check() == 0
    assert s.close() == 0
    assert s.health_check() == 1


def test_setup_against_no_server_is_a_negative_code(server):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        s = MooncakeDistributedStore()
        rc = s.setup("h", "P2PHANDSHAKE", 0, 0, "tcp", "", f"127.0.0.1:{port}", ca=server.cert, timeout=1)
    assert rc in (mooncake.RPC_FAIL, mooncake.RPC_TIMEOUT)
    assert s.health_check() == 1
