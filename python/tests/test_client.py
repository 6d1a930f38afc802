"""strata.Client against a real server: every call, on every transport, bytes checked."""

from __future__ import annotations


import numpy as np
import pytest

import strata


def value(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module", params=["auto", "shm", "tcp", "quic"])
def asked_and_client(request, server):
    c = server.client(transport=request.param)
    yield request.param, c
    c.close()


@pytest.fixture
def any_client(asked_and_client):
    return asked_and_client[1]


def test_auto_picks_shared_memory_on_the_same_host(client):
    assert client.transport == "shm"


def test_each_transport_is_the_one_asked_for(asked_and_client):
    asked, c = asked_and_client
    assert c.transport == {"auto": "shm"}.get(asked, asked)


def test_put_get_round_trip_on_every_transport(any_client, prefix):
    for i, n in enumerate([1, 4095, 4096, 1 << 20, (4 << 20) + 3]):
        v = value(n, i)
        any_client.put(f"{prefix}{i}", v)
        assert any_client.get(f"{prefix}{i}") == v
        assert any_client.exists(f"{prefix}{i}")


def test_keys_may_be_str_or_bytes_and_name_the_same_object(client, prefix):
    client.put(prefix + "k", b"abc")
    assert client.get((prefix + "k").encode()) == b"abc"


def test_put_is_idempotent_for_an_existing_key(client, prefix):
    client.put(prefix + "same", b"first")
    client.put(prefix + "same", b"first")
    assert client.get(prefix + "same") == b"first"


def test_get_into_fills_the_front_of_any_writable_buffer(any_client, prefix):
    v = value(100_000, 7)
    any_client.put(prefix + "v", v)
    into_bytearray = bytearray(200_000)
    assert any_client.get_into(prefix + "v", into_bytearray) == len(v)
    assert bytes(into_bytearray[: len(v)]) == v
    arr = np.zeros(150_000, dtype=np.uint8)
    assert any_client.get_into(prefix + "v", arr) == len(v)
    assert arr[: len(v)].tobytes() == v
    mv = memoryview(bytearray(len(v)))
    assert any_client.get_into(prefix + "v", mv) == len(v)
    assert mv.tobytes() == v
    # A numpy array of another dtype is its bytes.
    floats = np.zeros(len(v) // 4 + 1, dtype=np.float32)
    assert any_client.get_into(prefix + "v", floats) == len(v)
    assert floats.tobytes()[: len(v)] == v


def test_put_from_takes_any_bytes_like_source(client, prefix):
    v = value(64 * 1024, 3)
    client.put_from(prefix + "a", bytearray(v))
    client.put_from(prefix + "b", memoryview(v)[1000:])
    client.put_from(prefix + "c", np.frombuffer(v, dtype=np.uint8))
    client.put_from(prefix + "d", v, 10)  # a size takes the front
    assert client.get(prefix + "a") == v
    assert client.get(prefix + "b") == v[1000:]
    assert client.get(prefix + "c") == v
    assert client.get(prefix + "d") == v[:10]


def test_batch_get_into_and_batch_put_from_pair_keys_with_buffers(any_client, prefix):
    keys = [f"{prefix}{i}" for i in range(16)]
    values = [value(256 * 1024 + i, i) for i in range(16)]
    assert any_client.batch_put_from(keys, values) == [None] * 16
    outs = [bytearray(len(v)) for v in values]
    assert any_client.batch_get_into(keys, outs) == [len(v) for v in values]
    assert [bytes(o) for o in outs] == values


def test_a_failed_key_never_fails_the_batch(client, prefix):
    client.put(prefix + "here", b"x" * 10)
    outs = [bytearray(10), bytearray(10), bytearray(2)]
    got = client.batch_get_into([prefix + "here", prefix + "missing", prefix + "here"], outs)
    assert got[0] == 10 and bytes(outs[0]) == b"x" * 10
    assert isinstance(got[1], strata.NotFound) and prefix + "missing" in str(got[1])
    assert isinstance(got[2], strata.InvalidArgument)  # 10 bytes into 2
    puts = client.batch_put_from([prefix + "p1", "", prefix + "p2"], [b"1", b"2", b"3"])
    assert puts[0] is None and puts[2] is None
    assert isinstance(puts[1], strata.InvalidKey)
    assert client.get(prefix + "p2") == b"3"


def test_overlapping_destinations_are_refused_not_raced(client, prefix):
    client.batch_put_from([prefix + "a", prefix + "b"], [b"a" * 100, b"b" * 100])
    pool = bytearray(150)
    mv = memoryview(pool)
    got = client.batch_get_into([prefix + "a", prefix + "b"], [mv[0:100], mv[50:150]])
    assert got[0] == 100
    assert isinstance(got[1], strata.InvalidArgument) and "overlaps" in str(got[1])
    assert bytes(pool[:100]) == b"a" * 100


def test_exists_and_batch_exists(client, prefix):
    keys = [f"{prefix}{i}" for i in range(1024)]
    client.batch_put_from(keys[::2], [b"v"] * 512)
    assert client.exists(keys[0]) and not client.exists(keys[1])
    got = client.batch_exists(keys)
    assert got == [i % 2 == 0 for i in range(1024)]


def test_prefix_len_counts_groups_whose_every_rank_is_stored(client, prefix):
    hasher = strata.BlockHasher(seed=1, block_size=4)
    keys = strata.KeyFormatter(prefix + "model")
    hashes = hasher.block_hashes(list(range(40)))
    groups = [keys.group(2, h) for h in hashes]
    flat = [k for g in groups[:6] for k in g] + [groups[6][0]]  # block 6 has one rank only
    client.batch_put_from(flat, [b"kv"] * len(flat))
    assert client.prefix_len(groups) == 6
    assert client.prefix_len(groups, lease=True) == 6
    assert client.prefix_len([]) == 0


def test_a_leased_prefix_cannot_be_removed_until_forced(client, prefix):
    client.put(prefix + "x", b"data")
    assert client.prefix_len([[prefix + "x"]], lease=True) == 1
    with pytest.raises(strata.Leased):
        client.remove(prefix + "x")
    assert client.get(prefix + "x") == b"data"
    client.remove(prefix + "x", force=True)
    assert not client.exists(prefix + "x")


def test_remove_batch_remove_and_remove_all(server, prefix):
    with server.client() as c:
        c.batch_put_from([prefix + "a", prefix + "b", prefix + "c"], [b"1", b"2", b"3"])
        c.remove(prefix + "a")
        with pytest.raises(strata.NotFound):
            c.remove(prefix + "a")
        got = c.batch_remove([prefix + "b", prefix + "missing"])
        assert got[0] is None and isinstance(got[1], strata.NotFound)
        assert c.exists(prefix + "c")
        assert c.remove_all(force=True) >= 1
        assert not c.exists(prefix + "c")


def test_size_is_the_stored_length(client, prefix):
    client.put(prefix + "s", b"12345")
    assert client.size(prefix + "s") == 5
    with pytest.raises(strata.NotFound):
        client.size(prefix + "nothing")


def test_stats_and_transport_stats(client, prefix):
    stats = client.stats()
    assert {"objects", "tiers", "puts", "get_hits"} <= set(stats)
    def direct(s):  # copies from the server's memory (dram, or the host-sim device tier)
        return s["shm_gets"] + s["device_gets"]

    before = client.transport_stats()
    client.put(prefix + "t", b"t" * 1000)
    client.get_into(prefix + "t", bytearray(1000))
    after = client.transport_stats()
    assert direct(after) == direct(before) + 1
    assert after["quic_gets"] == before["quic_gets"]
    assert client.ping() > 0


class RegisteredPool:
    """A numpy array registered with the client, addressed by raw pointers."""

    def __init__(self, client, size):
        self.client = client
        self.array = np.zeros(size, dtype=np.uint8)
        self.base = self.array.ctypes.data
        client.register_buffer(self.base, size)

    def close(self):
        self.client.unregister_buffer(self.base)


def test_raw_addresses_inside_a_registered_buffer(client, prefix):
    pool = RegisteredPool(client, 1 << 20)
    try:
        v = value(4096, 11)
        pool.array[:4096] = np.frombuffer(v, dtype=np.uint8)
        client.put_from(prefix + "raw", pool.base, 4096)
        assert client.get(prefix + "raw") == v
        assert client.get_into(prefix + "raw", pool.base + 8192, 4096) == 4096
        assert pool.array[8192 : 8192 + 4096].tobytes() == v
        # (address, size) pairs in batches.
        got = client.batch_get_into([prefix + "raw"], [(pool.base + 65536, 4096)])
        assert got == [4096] and pool.array[65536 : 65536 + 4096].tobytes() == v
    finally:
        pool.close()


def test_pieces_scatter_and_gather_a_value(client, prefix):
    pool = RegisteredPool(client, 64 * 1024)
    try:
        src = value(3000, 5)
        pool.array[:1000] = np.frombuffer(src[:1000], dtype=np.uint8)
        pool.array[5000:7000] = np.frombuffer(src[1000:], dtype=np.uint8)
        pieces = [(pool.base, 1000), (pool.base + 5000, 2000)]
        assert client.batch_put_from([prefix + "p"], [pieces]) == [None]
        assert client.get(prefix + "p") == src
        out = [(pool.base + 20000, 500), (pool.base + 30000, 2500)]
        assert client.get_into(prefix + "p", out) == 3000
        assert pool.array[20000:20500].tobytes() + pool.array[30000:32500].tobytes() == src
    finally:
        pool.close()


def test_a_wrong_address_is_a_clear_error(client, prefix):
    client.put(prefix + "w", b"w" * 100)
    with pytest.raises(strata.InvalidArgument, match="register"):
        client.get_into(prefix + "w", 0x1000, 100)  # never registered
    with pytest.raises(strata.InvalidArgument, match="not all mapped"):
        client.register_buffer(0x1000, 4096)  # not mapped in this process
    with pytest.raises(strata.InvalidArgument, match="needs a size"):
        client.get_into(prefix + "w", 12345)
    pool = RegisteredPool(client, 4096)
    try:
        with pytest.raises(strata.InvalidArgument):
            client.get_into(prefix + "w", pool.base + 4000, 200)  # runs past the end
        with pytest.raises(strata.InvalidArgument, match="overlaps"):
            client.register_buffer(pool.base + 100, 10)
    finally:
        pool.close()
    with pytest.raises(strata.NotFound):
        client.unregister_buffer(pool.base)
    assert client.get(prefix + "w") == b"w" * 100


def test_a_buffer_too_small_or_read_only_is_refused_and_nothing_is_lost(client, prefix):
    v = value(5000, 2)
    client.put(prefix + "v", v)
    with pytest.raises(strata.InvalidArgument):
        client.get_into(prefix + "v", bytearray(4999))
    with pytest.raises(strata.InvalidArgument, match="writable"):
        client.get_into(prefix + "v", b"\0" * 6000)
    with pytest.raises(strata.InvalidArgument):
        client.get_into(prefix + "v", bytearray(10), 20)  # size past the buffer
    with pytest.raises(strata.InvalidArgument):
        client.put(prefix + "bad", 12.5)
    with pytest.raises(strata.InvalidKey):
        client.put(42, b"x")
    with pytest.raises(strata.InvalidKey):
        client.put("", b"x")
    with pytest.raises(strata.InvalidArgument):
        client.batch_get_into([prefix + "v"], [])
    assert client.get(prefix + "v") == v


def test_a_missing_key_raises_not_found_naming_it(client, prefix):
    with pytest.raises(strata.NotFound) as e:
        client.get(prefix + "absent")
    assert prefix + "absent" in str(e.value)
    assert e.value.code == 1 and e.value.code_name == "NotFound"
    assert isinstance(e.value, strata.Error)


def test_close_and_context_manager(server, prefix):
    with server.client() as c:
        c.put(prefix + "a", b"1")
        assert not c.closed
    assert c.closed
    with pytest.raises(strata.ConnectionError, match="closed"):
        c.get(prefix + "a")
    c.close()  # twice is fine


def test_environment_variables_are_the_defaults(server, prefix, monkeypatch):
    monkeypatch.setenv("STRATA_SERVER", server.address)
    monkeypatch.setenv("STRATA_CA", server.cert)
    monkeypatch.setenv("STRATA_TRANSPORT", "quic")
    monkeypatch.setenv("STRATA_TIMEOUT", "7.5")
    with strata.Client() as c:
        assert c.address == server.address
        assert c.transport == "quic"
        c.put(prefix + "env", b"e")
    monkeypatch.setenv("STRATA_TIMEOUT", "soon")
    with pytest.raises(strata.InvalidArgument, match="STRATA_TIMEOUT"):
        strata.Client()
    monkeypatch.setenv("STRATA_TIMEOUT", "5")
    with pytest.raises(strata.InvalidArgument, match="transport"):
        strata.Client(transport="pigeon")
    with pytest.raises(strata.InvalidArgument, match="timeout"):
        strata.Client(timeout=-1)


def test_block_hasher_matches_the_published_vectors():
    import json
    from pathlib import Path

    vectors = json.loads((Path(__file__).resolve().parents[2] / "tests" / "block_hash_vectors.json").read_text())
    assert vectors["cases"]
    for case in vectors["cases"]:
        hasher = strata.BlockHasher(case["seed"], case["block_size"], case["extra_keys"])
        hashes = hasher.block_hashes(case["tokens"])
        assert [strata.BlockHasher.hex(h) for h in hashes] == case["hashes"]
        keys = strata.KeyFormatter(case["model"])
        assert [keys.key(case["rank"], h) for h in hashes] == case["keys"]
        # Chaining by hand gives the same hashes.
        parent, bs = hasher.root(), case["block_size"]
        for i, h in enumerate(hashes):
            parent = hasher.hash_block(parent, case["tokens"][i * bs : (i + 1) * bs])
            assert parent == h


def test_memory_wrongly_registered_as_device_memory_is_refused_by_the_device_module(client, prefix):
    # The server's device tier is host-sim, which checks every device pointer against its
    # allocations: host memory registered as device memory fails the copy with a clear
    # error, and the put is revoked, never half stored.
    pool = np.zeros(1 << 20, dtype=np.uint8)
    base = pool.ctypes.data
    client.register_buffer(base, pool.nbytes, device=True)
    try:
        with pytest.raises(strata.Error, match="not inside an allocation"):
            client.put_from(prefix + "dev", base, 64 * 1024)
        with pytest.raises(strata.Error, match="not inside an allocation"):
            client.put_from(prefix + "dev", [(base, 100), (base + 200, 200)])
        assert not client.exists(prefix + "dev")
    finally:
        client.unregister_buffer(base)


def test_device_memory_single_ranges_and_pieces(client, prefix):
    # Memory of the host-sim device module, allocated here as an engine allocates HBM.
    mem = strata.DeviceMemory(1 << 20)
    base = mem.address
    client.register_buffer(base, mem.size, device=True)
    try:
        v = value(64 * 1024, 21)
        mem.write(0, v)
        before = client.transport_stats()
        client.put_from(prefix + "one", base, len(v))
        assert client.get(prefix + "one") == v
        assert client.get_into(prefix + "one", base + 512 * 1024, len(v)) == len(v)
        assert mem.read(512 * 1024, len(v)) == v
        with pytest.raises(strata.InvalidArgument, match="does not fit"):
            client.get_into(prefix + "one", base, len(v) - 1)
        # A value in pieces of device memory (a block's K and V slices across layers).
        pieces = [(base + 4096 * i, 1000) for i in range(0, 16, 2)]
        w = value(8000, 22)
        for i, (addr, n) in enumerate(pieces):
            mem.write(addr - base, w[i * 1000:(i + 1) * 1000])
        assert client.batch_put_from([prefix + "pieces"], [pieces]) == [None]
        assert client.get(prefix + "pieces") == w
        out = [(base + 700 * 1024 + 3000 * i, 1000) for i in range(8)]
        assert client.batch_get_into([prefix + "pieces"], [out]) == [8000]
        assert b"".join(mem.read(a - base, n) for a, n in out) == w
        after = client.transport_stats()
        assert after["device_puts"] >= before["device_puts"] + 1
        assert after["device_gets"] >= before["device_gets"] + 1
    finally:
        client.unregister_buffer(base)


def test_device_pieces_without_a_device_tier_use_the_module_the_client_names(start_server, prefix):
    s = start_server(["--device-plugin", "off"])
    mem = strata.DeviceMemory(1 << 16)
    with s.client() as plain:
        plain.register_buffer(mem.address, mem.size, device=True)
        with pytest.raises(strata.InvalidArgument, match="device module"):
            plain.put_from(prefix + "x", [(mem.address, 10), (mem.address + 100, 10)])
    with s.client(device="host-sim:0") as c:
        c.register_buffer(mem.address, mem.size, device=True)
        mem.write(0, b"a" * 10)
        mem.write(100, b"b" * 10)
        c.put_from(prefix + "x", [(mem.address, 10), (mem.address + 100, 10)])
        assert c.get(prefix + "x") == b"a" * 10 + b"b" * 10
        assert c.get_into(prefix + "x", [(mem.address + 200, 5), (mem.address + 300, 15)]) == 20
        assert mem.read(200, 5) + mem.read(300, 15) == b"a" * 10 + b"b" * 10
        # A single device range too, staged by the same module.
        c.put_from(prefix + "y", mem.address, 10)
        assert c.get_into(prefix + "y", mem.address + 400, 10) == 10
        assert mem.read(400, 10) == b"a" * 10
    with pytest.raises(strata.ConnectionError, match="device pigeon"):
        s.client(device="pigeon")


def test_prefix_lookups_that_make_or_group_their_keys(client, prefix):
    pages = [f"p{i}" for i in range(6)]
    stored = [f"{prefix}{p}{s}" for p in pages[:4] for s in ("@k", "@v")] + [f"{prefix}p4@k"]
    client.batch_put_from(stored, [b"x"] * len(stored))
    assert client.prefix_len_expanded(pages, ["@k", "@v"], prefix) == 4
    assert client.prefix_len_expanded(pages, ["@k"], prefix, lease=True) == 5
    assert client.prefix_len_expanded([f"{prefix}p0@k"]) == 1
    keys = [f"{prefix}r{r}@{p}" for p in pages for r in range(2)]
    client.batch_put_from(keys[:6], [b"y"] * 6)  # pages 0-2 on both ranks
    assert client.prefix_keys_by_tail(keys) == 6
    assert client.prefix_keys_by_tail(keys, lease=True) == 6
    assert client.prefix_keys_by_tail([]) == 0
    # Not grouped by tail (page 0 comes back): no prefix to take.
    assert client.prefix_keys_by_tail([keys[0], keys[2], keys[1]]) is None
