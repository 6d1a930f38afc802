#!/usr/bin/env python3
"""The Python package against the Rust client: same server, same transport, same calls.

For each transport, starts a release strata-server, stores 16 x 4 MiB values and 1024
small keys, then alternates rounds of the Rust client (`strata-bench client`, a process of
its own) and of this process through the `strata` package:

- batch_get_into: the 16 values into a registered 64 MiB buffer (raw addresses), GB/s;
- batch_exists: 1024 keys, latency per call;
- prefix_len: 1024 keys (128 positions x 8 ranks), latency per call.

Both sides make one call at a time from one thread. Prints a table and writes JSON Lines
in strata-bench's report format (`--json FILE`), the Python records carrying their
ratio to the Rust client's median round. Targets (docs/benchmarks.md): loads >= 0.9x
the Rust client's GB/s, lookups <= 1.2x its latency.

    cargo build --release -p strata-server -p strata-bench
    pip install ./python          # a release build of the package
    python3 python/bench/compare.py --json python-bench.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import strata

ROOT = Path(__file__).resolve().parents[2]
VALUES, VALUE_SIZE, LOOKUP_KEYS, RANKS = 16, 4 << 20, 1024, 8


def value(i: int) -> np.ndarray:
    """Load value i: the bytes `strata-bench client` stores and checks."""
    j = np.arange(VALUE_SIZE, dtype=np.int64)
    return (((i * 31) ^ (j * 7)) & 0xFF).astype(np.uint8)


def start_server(binary: Path, data_dir: str, extra=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env["STRATA_LOG"] = "warn"
    process = subprocess.Popen(
        [str(binary), "--host", "127.0.0.1", "--port", "0", "--metrics-addr", "off",
         "--data-port", "0", "--data-dir", data_dir, "--dram-capacity", "1GiB", *extra],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    address = cert = None
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while (address is None or cert is None) and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("strata-server listening on "):
            address = line.split("listening on ", 1)[1].strip()
        elif line.startswith("certificate: "):
            cert = line.split(": ", 1)[1].strip()
    if address is None or cert is None:
        process.kill()
        sys.exit("strata-server did not start")
    return process, address, cert


def latency_record(op, phase, calls, elapsed, samples_ns):
    samples = sorted(samples_ns)
    pct = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] / 1000.0  # noqa: E731
    return {
        "workload": "python", "system": "strata-python", "op": op, "phase": phase,
        "value_size": 0, "concurrency": 1, "batch": LOOKUP_KEYS, "ops": calls,
        "seconds": elapsed, "ops_per_s": calls / elapsed, "bytes_per_s": 0.0,
        "p50_us": pct(0.50), "p99_us": pct(0.99),
    }


def python_round(client, phase, pool, load_keys, lookup_keys, seconds):
    records = []
    base = pool.ctypes.data
    regions = [(base + i * VALUE_SIZE, VALUE_SIZE) for i in range(VALUES)]
    samples, calls, start = [], 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter_ns()
        got = client.batch_get_into(load_keys, regions)
        samples.append(time.perf_counter_ns() - t)
        if got != [VALUE_SIZE] * VALUES:
            sys.exit(f"batch_get_into answered {got}")
        calls += 1
    elapsed = time.perf_counter() - start
    for i in range(VALUES):
        if not np.array_equal(pool[i * VALUE_SIZE:(i + 1) * VALUE_SIZE], value(i)):
            sys.exit(f"value {i} arrived wrong")
    r = latency_record("batch_get_into", phase, calls, elapsed, samples)
    r.update(value_size=VALUE_SIZE, batch=VALUES, bytes_per_s=calls * VALUES * VALUE_SIZE / elapsed)
    records.append(r)
    groups = [lookup_keys[i:i + RANKS] for i in range(0, LOOKUP_KEYS, RANKS)]
    # ping: the bare round trip under both, so a lookup's gap can be told from it.
    for op in ("ping", "batch_exists", "prefix_len"):
        samples, calls, start = [], 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter_ns()
            if op == "ping":
                answer = client.ping()
            elif op == "batch_exists":
                answer = client.batch_exists(lookup_keys)
            else:
                answer = client.prefix_len(groups)
            samples.append(time.perf_counter_ns() - t)
            if op == "ping":
                found = LOOKUP_KEYS
            elif op == "batch_exists":
                found = answer.count(True)
            else:
                found = answer * RANKS
            if found != LOOKUP_KEYS:
                sys.exit(f"{op} found {found} of {LOOKUP_KEYS}")
            calls += 1
        r = latency_record(op, phase, calls, time.perf_counter() - start, samples)
        if op == "ping":
            r["batch"] = 0
        records.append(r)
    return records


def rust_round(bench_bin, address, cert, transport, seconds, prefix, extra=()):
    out = subprocess.run(
        [str(bench_bin), "--json", "-", "client", "--server", address, "--ca", cert,
         "--transport", transport, "--seconds", str(seconds), "--key-prefix", prefix, *extra],
        check=True, capture_output=True, text=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-bin", type=Path, default=ROOT / "target/release/strata-server")
    parser.add_argument("--bench-bin", type=Path, default=ROOT / "target/release/strata-bench")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transports", default="auto,tcp")
    parser.add_argument("--json", help="write JSON Lines here")
    parser.add_argument("--quick", action="store_true", help="0.2 s loops, one round: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.2, 1
    records = []
    for transport in args.transports.split(","):
        with tempfile.TemporaryDirectory(prefix="strata-pybench-") as data_dir:
            process, address, cert = start_server(args.server_bin, data_dir)
            try:
                prefix = "pybench-"
                client = strata.Client(address, ca=cert, transport=transport, timeout=60)
                phase = client.transport
                load_keys = [f"{prefix}load-{i}" for i in range(VALUES)]
                lookup_keys = [f"{prefix}lookup-{i}" for i in range(LOOKUP_KEYS)]
                client.batch_put_from(load_keys, [value(i) for i in range(VALUES)])
                client.batch_put_from(lookup_keys, [b"\1" * 16] * LOOKUP_KEYS)
                pool = np.zeros(VALUES * VALUE_SIZE, dtype=np.uint8)
                client.register_buffer(pool.ctypes.data, pool.nbytes)
                for _ in range(args.rounds):
                    records += rust_round(args.bench_bin, address, cert, transport, args.seconds, prefix)
                    records += python_round(client, phase, pool, load_keys, lookup_keys, args.seconds)
                client.close()
            finally:
                process.kill()
                process.wait()
    summary = []
    for phase in sorted({r["phase"] for r in records}):
        for op in ("batch_get_into", "ping", "batch_exists", "prefix_len"):
            rows = {s: [r for r in records if r["phase"] == phase and r["op"] == op and r["system"] == s]
                    for s in ("strata-rust", "strata-python")}
            if not all(rows.values()):
                continue
            med = {s: {k: statistics.median(r[k] for r in rs) for k in ("bytes_per_s", "p50_us", "p99_us")}
                   for s, rs in rows.items()}
            if op == "batch_get_into":
                ratio = med["strata-python"]["bytes_per_s"] / med["strata-rust"]["bytes_per_s"]
                target, met = ">= 0.9x GB/s", ratio >= 0.9
            elif op == "ping":
                ratio = med["strata-python"]["p50_us"] / med["strata-rust"]["p50_us"]
                target, met = "(no target)", True
            else:
                ratio = med["strata-python"]["p50_us"] / med["strata-rust"]["p50_us"]
                target, met = "<= 1.2x p50", ratio <= 1.2
            for r in rows["strata-python"]:
                r["ratio_to_rust"] = ratio
            summary.append((phase, op, med, ratio, target, met))
    print(f"{'transport':9} {'op':15} {'rust GB/s|p50 us':>17} {'python':>10} {'p99 rust/py us':>16} {'ratio':>6}  target")
    for phase, op, med, ratio, target, met in summary:
        key = "bytes_per_s" if op == "batch_get_into" else "p50_us"
        scale = 1e9 if key == "bytes_per_s" else 1.0
        rust, py = med["strata-rust"][key] / scale, med["strata-python"][key] / scale
        p99 = f"{med['strata-rust']['p99_us']:.0f}/{med['strata-python']['p99_us']:.0f}"
        print(f"{phase:9} {op:15} {rust:17.2f} {py:10.2f} {p99:>16} {ratio:6.2f}  {target} {'met' if met else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
