"""strata.integrations.lmcache driven as LMCache's NativeConnectorL2Adapter drives a
native_plugin connector.

Contract read from LMCache/LMCache: docs/source/developer_guide/extending_lmcache/
native_connectors.rst at 05d4437c6ebf4d9f1373921222b1ca5313eb03d9 (the six methods, the
connector built as ``cls(**adapter_params)``) and lmcache/v1/distributed/l2_adapters/
native_connector_l2_adapter.py at 0b43a45563fe5c25dc80ac9f8be16d3f20d86b22 (keys
``<model>@<kv_rank:08x>@<group:x>@<chunk hash hex>``, memoryviews over ctypes byte arrays,
poll on event_fd then drain_completions, tuples (future_id, ok, error, result_bools)).
LMCache itself needs torch and CUDA extensions and does not install here.
"""

from __future__ import annotations

import ctypes
import inspect
import select

import numpy as np
import pytest

import strata
from strata.integrations.lmcache import StrataConnector


def lm_key(model, rank, group, chunk):
    return f"{model}@{rank:08x}@{group:x}@{chunk:064x}"


def wait_for(connector, future_ids, timeout_ms=20_000):
    """The adapter's demux loop: poll the eventfd, drain, route by future id."""
    poller = select.poll()
    poller.register(connector.event_fd(), select.POLLIN)
    done = {}
    while set(future_ids) - set(done):
        assert poller.poll(timeout_ms), "no completion within the timeout"
        for fid, ok, error, results in connector.drain_completions():
            done[fid] = (ok, error, results)
    return done


def chunk(nbytes, seed):
    data = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    buf = (ctypes.c_ubyte * nbytes).from_buffer_copy(data)
    return memoryview(buf), data


def test_the_connector_has_lmcaches_methods():
    pinned = {
        "event_fd": [],
        "submit_batch_get": ["keys", "memoryviews"],
        "submit_batch_set": ["keys", "memoryviews"],
        "submit_batch_exists": ["keys"],
        "submit_batch_delete": ["keys"],
        "drain_completions": [],
        "close": [],
    }
    for name, args in pinned.items():
        assert list(inspect.signature(getattr(StrataConnector, name)).parameters)[1:] == args, name


def test_chunks_stored_by_one_instance_load_in_another(server, prefix):
    params = {"server": server.address, "ca": server.cert, "key_prefix": prefix}
    writer, reader = StrataConnector(**params), StrataConnector(**params)
    keys = [lm_key("llama", 0, 0, c) for c in range(8)]
    views, datas = zip(*(chunk(64 * 1024, c) for c in range(8)))
    f1 = writer.submit_batch_set(keys, list(views))
    done = wait_for(writer, [f1])
    assert done[f1] == (True, "", [True] * 8)
    # Another instance: lookup (a longer request), then load into fresh buffers.
    query = keys + [lm_key("llama", 0, 0, c) for c in range(8, 10)]
    f2 = reader.submit_batch_exists(query)
    f3 = reader.submit_batch_exists([])
    done = wait_for(reader, [f2, f3])
    assert done[f2] == (True, "", [True] * 8 + [False] * 2)
    assert done[f3] == (True, "", [])
    fresh = [memoryview((ctypes.c_ubyte * (64 * 1024))()) for _ in range(9)]
    f4 = reader.submit_batch_get(query[:9], fresh)
    ok, error, loaded = wait_for(reader, [f4])[f4]
    assert loaded == [True] * 8 + [False] and not ok and "NotFound" in error
    assert [bytes(v) for v in fresh[:8]] == list(datas)
    # Eviction: a key the lookup leased stays until its lease ends (refused, reported);
    # keys no reader holds are removed, and a lookup no longer finds them.
    f5 = writer.submit_batch_delete(keys[:1])
    ok, error, removed = wait_for(writer, [f5])[f5]
    assert (ok, removed) == (False, [False]) and "Leased" in error
    more = [lm_key("llama", 1, 0, c) for c in range(3)]
    views, _ = zip(*(chunk(1024, 50 + c) for c in range(3)))
    f6 = writer.submit_batch_set(more, list(views))
    wait_for(writer, [f6])
    f7 = writer.submit_batch_delete(more + [lm_key("llama", 1, 0, 99)])
    assert wait_for(writer, [f7])[f7] == (True, "", [True, True, True, False])
    f8 = reader.submit_batch_exists(more)
    assert wait_for(reader, [f8])[f8][2] == [False] * 3
    writer.close()
    reader.close()


def test_many_batches_in_flight_complete_once_each(server, prefix):
    c = StrataConnector(server=server.address, ca=server.cert, key_prefix=prefix, num_workers=4)
    futures = []
    for b in range(20):
        views, _ = zip(*(chunk(4096, b * 10 + i) for i in range(5)))
        futures.append(c.submit_batch_set([lm_key("m", b, 0, i) for i in range(5)], list(views)))
    done = wait_for(c, futures)
    assert sorted(done) == sorted(futures)
    assert all(ok for ok, _, _ in done.values())
    assert c.drain_completions() == []
    c.close()
    with pytest.raises(strata.ConnectionError):
        c.submit_batch_exists(["x"])


def test_a_failed_store_is_reported_and_never_found(server, prefix):
    c = StrataConnector(server=server.address, ca=server.cert, key_prefix=prefix)
    good, _ = chunk(1000, 1)
    too_long = "k" * 2000  # over the key limit: refused
    f = c.submit_batch_set(["ok", too_long], [good, good])
    ok, error, stored = wait_for(c, [f])[f]
    assert not ok and stored == [True, False] and "InvalidKey" in error
    f = c.submit_batch_exists(["ok", "never-stored"])
    ok, _, found = wait_for(c, [f])[f]
    assert found == [True, False]
    c.close()


def test_bad_parameters_and_a_missing_server_fail_at_start(server):
    with pytest.raises(TypeError, match="bogus"):
        StrataConnector(server=server.address, ca=server.cert, bogus=1)
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises((strata.ConnectionError, strata.Timeout)):
            StrataConnector(server=f"127.0.0.1:{s.getsockname()[1]}", ca=server.cert, timeout=1)
