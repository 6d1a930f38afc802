#!/usr/bin/env python3
"""The engine backends against the Rust client: the KV-cache scenario's lookup and load
of one request, same server, same transport, alternating rounds.

A request of 32 pages of an MHA model (page 64 tokens, 16 layers, 4 KV heads, head dim
128, bf16: 1 MiB of K and 1 MiB of V per page, 64 objects, 64 MiB) is stored once; each
round then times, per request, its lookup (leased) and the load of every page into fresh
slots, through:

- ``strata-rust``: the Rust client (``strata-bench client --lease``): prefix_len over the
  32 positions of 2 keys, batch_get_into of the 64 values;
- ``sglang``: ``StrataHiCacheStorage.batch_exists`` then ``batch_get_v1`` into a
  page_first host pool (SGLang's shapes);
- ``vllm-ascend``: ``StrataBackend.batch_is_exist`` over both TP ranks' keys, then each
  rank's ``get`` into its KV cache in (host-sim) device memory, 16 per-layer pieces per
  block (vllm-ascend's shapes), the two ranks at once as their worker processes load
  (one thread each); ``vllm-ascend-serial``: the same, one rank after the other.

Targets (docs/benchmarks.md): load GB/s >= 0.85x the Rust client's, lookup p99 <= 1.2x.

    cargo build --release -p strata-server -p strata-bench && pip install ./python
    python3 python/bench/integrations.py --json integrations.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import ROOT, rust_round, start_server  # noqa: E402

import strata  # noqa: E402
from strata.integrations.sglang import StrataHiCacheStorage  # noqa: E402
from strata.integrations.vllm_ascend import StrataBackend  # noqa: E402

PAGES, PAGE_TOKENS, LAYERS, HEADS, DIM = 32, 64, 16, 4, 128
HALF = PAGE_TOKENS * LAYERS * HEADS * DIM * 2  # bytes of K (or V) of one page: 1 MiB
OBJECTS = 2 * PAGES


class HostPool:
    """SGLang's page_first MHA host pool."""

    def __init__(self, pages):
        self.layout, self.page_size, self.size = "page_first", PAGE_TOKENS, pages * PAGE_TOKENS
        self.kv_buffer = np.zeros((2, self.size, LAYERS, HEADS, DIM), dtype=np.float16)

    def get_page_buffer_meta(self, indices):
        indices = indices.tolist()
        base, per_token = self.kv_buffer.ctypes.data, LAYERS * HEADS * DIM * 2
        ptrs = []
        for i in range(0, len(indices), self.page_size):
            k = base + indices[i] * per_token
            ptrs += [k, k + self.size * per_token]
        return ptrs, [HALF] * len(ptrs)

    def indices(self, slots):
        return np.array([s * PAGE_TOKENS + t for s in slots for t in range(PAGE_TOKENS)])


def record(system, op, phase, calls, elapsed, samples_ns, nbytes=0):
    s = sorted(samples_ns)
    pct = lambda q: s[min(len(s) - 1, int(q * len(s)))] / 1000.0  # noqa: E731
    return {"workload": "integrations", "system": system, "op": op, "phase": phase,
            "value_size": HALF if nbytes else 0, "concurrency": 1, "batch": OBJECTS,
            "ops": calls, "seconds": elapsed, "ops_per_s": calls / elapsed,
            "bytes_per_s": nbytes / sum(samples_ns) * 1e9 if nbytes else 0.0,
            "p50_us": pct(0.5), "p99_us": pct(0.99)}


def timed(seconds, lookup, load):
    """The request's load, timed in a loop of its own, then its lookup in another: as
    `strata-bench client` times the Rust client's (loads first), so the two compare call
    for call."""
    hit = lookup()
    load(hit)  # untimed, as the Rust client's first load is
    loads, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter_ns()
        load(hit)
        loads.append(time.perf_counter_ns() - t0)
    looks, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter_ns()
        hit = lookup()
        looks.append(time.perf_counter_ns() - t0)
    return len(loads), 2 * seconds, looks, loads


def sglang_round(address, cert, prefix, phase, seconds, transport):
    config = SimpleNamespace(tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, is_mla_model=False,
                             should_split_heads=False, model_name="bench-model",
                             extra_config={"server": address, "ca": cert, "key_prefix": prefix,
                                           "transport": transport})
    backend = StrataHiCacheStorage(config, {})
    pool = HostPool(2 * PAGES)
    backend.register_mem_pool_host(pool)
    keys = [f"{i:064x}" for i in range(PAGES)]  # SGLang's page keys: SHA-256 hex
    assert backend.batch_set_v1(keys, pool.indices(range(PAGES))) == [True] * PAGES
    fresh = pool.indices(range(PAGES, 2 * PAGES))

    def load(hit):
        assert hit == PAGES and backend.batch_get_v1(keys, fresh) == [True] * PAGES

    calls, elapsed, looks, loads = timed(seconds, lambda: backend.batch_exists(keys), load)
    backend.close()
    return [record("sglang", "lookup", phase, len(looks), elapsed, looks),
            record("sglang", "load", phase, calls, elapsed, loads, OBJECTS * HALF * calls)]


def vllm_ascend_round(prefix, phase, seconds):
    # One rank's share of a page: 8 layers' K and V slices (16 pieces of 64 KiB, 1 MiB in
    # all), so both ranks together move what the Rust client's 64 values hold.
    pieces, piece = 2 * 8, HALF // 16
    ranks = [StrataBackend(None) for _ in range(2)]
    caches = []
    keys = [[f"{prefix}m@pcp0@dcp0@head_or_tp_rank:{r}@pp_rank:0@group:0@cache_role:kv"
             f"@cache_family:default@{b:032x}" for b in range(PAGES)] for r in range(2)]
    for r, backend in enumerate(ranks):
        # Per layer a K and a V region of 2 * PAGES blocks of `piece` bytes (16 regions).
        region = 2 * PAGES * piece
        mem = strata.DeviceMemory(pieces * region)
        backend.register_buffer([mem.address], [mem.size])
        caches.append((mem, region))

    def block(r, b):
        mem, region = caches[r]
        return [mem.address + i * region + b * piece for i in range(pieces)], [piece] * pieces

    for r, backend in enumerate(ranks):
        addrs, sizes = zip(*(block(r, b) for b in range(PAGES)))
        backend.put(keys[r], list(addrs), list(sizes))
    query = [k for b in range(PAGES) for k in (keys[0][b], keys[1][b])]
    targets = [list(zip(*(block(r, PAGES + b) for b in range(PAGES)))) for r in range(2)]

    def lookup():
        return sum(ranks[0].batch_is_exist(query)) // 2

    def load_rank(r):
        addrs, sizes = targets[r]
        assert ranks[r].get(keys[r], list(addrs), list(sizes)) == [0] * PAGES

    def load_one_after_the_other(hit):
        assert hit == PAGES
        for r in range(len(ranks)):
            load_rank(r)

    # Each TP rank is its own worker process in vllm-ascend, so the ranks load at once:
    # here one thread each (every call releases the GIL).
    pool = ThreadPoolExecutor(max_workers=len(ranks))

    def load_side_by_side(hit):
        assert hit == PAGES
        list(pool.map(load_rank, range(len(ranks))))

    out = []
    for system, load in (("vllm-ascend", load_side_by_side), ("vllm-ascend-serial", load_one_after_the_other)):
        calls, elapsed, looks, loads = timed(seconds, lookup, load)
        out += [record(system, "lookup", phase, len(looks), elapsed, looks),
                record(system, "load", phase, calls, elapsed, loads, OBJECTS * HALF * calls)]
    pool.shutdown()
    for backend in ranks:
        backend.client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-bin", type=Path, default=ROOT / "target/release/strata-server")
    parser.add_argument("--bench-bin", type=Path, default=ROOT / "target/release/strata-bench")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write JSON Lines here")
    parser.add_argument("--quick", action="store_true", help="0.3 s loops, one round: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.3, 1
    records = []
    with tempfile.TemporaryDirectory(prefix="strata-intbench-") as data_dir:
        # Every value in dram, read the same way by every client; vllm-ascend's "device"
        # cache is host-sim memory, copied by the module STRATA_DEVICE names.
        process, address, cert = start_server(args.server_bin, data_dir, ["--device-plugin", "off"])
        os.environ.update(STRATA_SERVER=address, STRATA_CA=cert, STRATA_DEVICE="host-sim")
        try:
            phase = strata.Client(address, ca=cert).transport
            for rnd in range(args.rounds):
                # Keys as long as vllm-ascend's (a model tag, rank parts, a 32-hex hash).
                long_prefix = f"r{rnd}-m@pcp0@dcp0@head_or_tp_rank:0@pp_rank:0@group:0@cache_role:kv@cache_family:default@{0:024x}"
                rust = rust_round(args.bench_bin, address, cert, "auto", args.seconds, long_prefix,
                                  extra=["--values", str(OBJECTS), "--value-size", str(HALF),
                                         "--lookup-keys", str(OBJECTS), "--ranks", "2", "--lease"])
                for r in rust:
                    if r["op"] in ("batch_get_into", "prefix_len"):
                        r["workload"] = "integrations"
                        r["op"] = "load" if r["op"] == "batch_get_into" else "lookup"
                        records.append(r)
                records += sglang_round(address, cert, f"s{rnd}-", phase, args.seconds, "auto")
                records += vllm_ascend_round(f"v{rnd}-", phase, args.seconds)
        finally:
            process.kill()
            process.wait()
    print(f"{'system':12} {'load GB/s':>10} {'x rust':>7} {'lookup p50/p99 us':>19} {'p99 x rust':>11}")
    med = {}
    for system in ("strata-rust", "sglang", "vllm-ascend", "vllm-ascend-serial"):
        load = [r for r in records if r["system"] == system and r["op"] == "load"]
        look = [r for r in records if r["system"] == system and r["op"] == "lookup"]
        med[system] = (statistics.median(r["bytes_per_s"] for r in load),
                       statistics.median(r["p50_us"] for r in look),
                       statistics.median(r["p99_us"] for r in look))
    rust = med["strata-rust"]
    for system, (gbs, p50, p99) in med.items():
        print(f"{system:12} {gbs / 1e9:10.2f} {gbs / rust[0]:7.2f} {p50:9.0f}/{p99:<9.0f} {p99 / rust[2]:11.2f}")
        for r in records:
            if r["system"] == system:
                r["ratio_to_rust"] = (gbs / rust[0]) if r["op"] == "load" else (p99 / rust[2])
    if args.json:
        with open(args.json, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
