"""strata.integrations.vllm driven as vLLM's tiered offloading drives a secondary tier.

Contract read from vllm-project/vllm vllm/v1/kv_offload/tiering/base.py at
041410b9b13a5e762e6bfce4a0ce39574def5919 (SecondaryTierManager: lookup -> True / False /
None to retry, submit_store / submit_load of JobMetadata(job_id, keys, block_ids, ...),
get_finished -> JobResult(job_id, success), touch, shutdown; everything non-blocking),
tiering/fs/manager.py at 0255eeaabf66661958ae72b1e85eebcdb39de2a5 (a block is
primary_kv_view.strides[0] bytes at block_id * that), and tiering/factory.py (the tier
built from its config's keys). vLLM is not installed here (torch with CUDA): the primary
tier below is a numpy array viewed as vLLM views its CPU cache.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

import strata
from strata.integrations.vllm import StrataTier


@dataclass
class Job:  # JobMetadata's fields
    job_id: int
    keys: list
    block_ids: np.ndarray
    is_promotion: bool = False
    req_context: object = None


def spec(model="Qwen/Qwen3-8B", rank=0):
    return SimpleNamespace(config=SimpleNamespace(
        model=SimpleNamespace(name=model, dtype="bfloat16"),
        cache=SimpleNamespace(tokens_per_hash=16),
        parallel=SimpleNamespace(tp_size=1, pp_size=1, rank=rank),
    ))


def primary(blocks=16, block_bytes=32 * 1024):
    cache = np.zeros((blocks, block_bytes), dtype=np.uint8)
    return cache, memoryview(cache)


def finish(tier, job_ids, timeout=20.0):
    done, deadline = {}, time.monotonic() + timeout
    while set(job_ids) - set(done):
        assert time.monotonic() < deadline, "jobs did not finish"
        for r in tier.get_finished():
            done[r.job_id] = r.success
        time.sleep(0.005)
    return done


def resolve(tier, key, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (answer := tier.lookup(key, None)) is None:
        assert time.monotonic() < deadline, "lookup never resolved"
        time.sleep(0.002)
    return answer


def tier_of(server, prefix, **kw):
    cache, view = primary()
    tier = StrataTier(kw.pop("spec", spec()), view, "strata", server=server.address, ca=server.cert,
                      key_prefix=prefix, **kw)
    return cache, tier


def test_the_tier_has_vllms_methods():
    for name, args in {
        "lookup": ["key", "req_context"], "submit_store": ["job_metadata"],
        "submit_load": ["job_metadata"], "get_finished": [], "touch": ["keys", "req_context"],
        "shutdown": [],
    }.items():
        assert list(inspect.signature(getattr(StrataTier, name)).parameters)[1:] == args, name


def test_blocks_offloaded_by_one_instance_promote_in_another(server, prefix):
    cache_a, a = tier_of(server, prefix)
    cache_a[:] = np.random.default_rng(1).integers(0, 256, cache_a.shape, dtype=np.uint8)
    keys = [bytes([i]) * 32 for i in range(6)]
    t0 = time.monotonic()
    a.submit_store(Job(1, keys, np.array([3, 5, 7, 9, 11, 13])))
    assert time.monotonic() - t0 < 0.05, "submit_store must not block on the transfer"
    assert finish(a, [1]) == {1: True}
    cache_b, b = tier_of(server, prefix)
    # A lookup answers "retry" until its background lookup returns, then the truth.
    assert b.lookup(keys[0], None) is None
    assert [resolve(b, k) for k in keys] == [True] * 6
    assert resolve(b, bytes([99]) * 32) is False
    b.submit_load(Job(2, keys, np.array([0, 1, 2, 4, 6, 8])))
    assert finish(b, [2]) == {2: True}
    for src, dst in zip([3, 5, 7, 9, 11, 13], [0, 1, 2, 4, 6, 8]):
        assert np.array_equal(cache_b[dst], cache_a[src])
    # A load of a block not stored fails its job.
    b.submit_load(Job(3, [bytes([98]) * 32], np.array([15])))
    assert finish(b, [3]) == {3: False}
    b.drain_jobs()
    a.shutdown()
    b.shutdown()


def test_different_models_never_share_blocks(server, prefix):
    cache_a, a = tier_of(server, prefix, spec=spec(model="a"))
    _, b = tier_of(server, prefix, spec=spec(model="b"))
    a.submit_store(Job(1, [b"k" * 32], np.array([0])))
    assert finish(a, [1]) == {1: True}
    assert resolve(a, b"k" * 32) is True
    assert resolve(b, b"k" * 32) is False
    a.shutdown()
    b.shutdown()


def test_bad_configuration_fails_at_start(server):
    _, view = primary()
    with pytest.raises(TypeError, match="bogus"):
        StrataTier(spec(), view, "strata", server=server.address, ca=server.cert, bogus=1)
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises((strata.ConnectionError, strata.Timeout)):
            StrataTier(spec(), view, "strata", server=f"127.0.0.1:{s.getsockname()[1]}", ca=server.cert, timeout=1)
