"""python/bench/compare.py runs end to end (a smoke run: its figures are not checked here, only
that both clients made every call and the report has the brief's fields)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_compares_both_clients_call_for_call(tmp_path):
    server = Path(os.environ.get("STRATA_SERVER_BIN", ROOT / "target/debug/strata-server"))
    bench = server.with_name("strata-bench")
    if not bench.exists():
        pytest.fail(f"no {bench}: run `cargo build -p strata-bench`")
    out = tmp_path / "report.jsonl"
    subprocess.run(
        [sys.executable, str(ROOT / "python/bench/compare.py"), "--quick", "--transports", "auto",
         "--server-bin", str(server), "--bench-bin", str(bench), "--json", str(out)],
        check=True, timeout=300,
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    seen = {(r["system"], r["op"]) for r in records}
    for system in ("strata-rust", "strata-python"):
        for op in ("batch_get_into", "batch_exists", "prefix_len"):
            assert (system, op) in seen
    fields = {"workload", "system", "op", "phase", "value_size", "concurrency", "batch", "ops",
              "seconds", "ops_per_s", "bytes_per_s", "p50_us", "p99_us"}
    for r in records:
        assert fields <= set(r), r
        assert r["ops"] > 0 and r["phase"] == "shm"
    assert all("ratio_to_rust" in r for r in records if r["system"] == "strata-python")


def test_the_integrations_benchmark_runs_every_path(tmp_path):
    server = Path(os.environ.get("STRATA_SERVER_BIN", ROOT / "target/debug/strata-server"))
    bench = server.with_name("strata-bench")
    out = tmp_path / "integrations.jsonl"
    subprocess.run(
        [sys.executable, str(ROOT / "python/bench/integrations.py"), "--quick",
         "--server-bin", str(server), "--bench-bin", str(bench), "--json", str(out)],
        check=True, timeout=300,
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    seen = {(r["system"], r["op"]) for r in records}
    for system in ("strata-rust", "sglang", "vllm-ascend"):
        assert {(system, "load"), (system, "lookup")} <= seen, system
    assert all(r["ops"] > 0 and "ratio_to_rust" in r for r in records)
