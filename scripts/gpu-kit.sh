#!/usr/bin/env bash
# Builds here what device/gpu-check.sh runs on the GPU machine (which has no Rust): the
# server, the bench and the device crate's FFI tests, release builds stripped of debug
# info, into gpu-kit/ (ignored by git; the device tool's `carry` takes it along).
#
#   scripts/gpu-kit.sh            # then: run command="bash device/gpu-check.sh", carry ["gpu-kit"]
set -euo pipefail
cd "$(dirname "$0")/.."
kit=gpu-kit
rm -rf "$kit"
mkdir -p "$kit"
cargo build --release -p strata-server -p strata-bench
ffi=$(cargo test --release -p strata-device --test ffi --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "ffi":
        print(m["executable"])' | tail -n 1)
[ -n "$ffi" ] || { echo "gpu-kit: the device FFI test binary was not built" >&2; exit 1; }
strip -o "$kit/strata-server" target/release/strata-server
strip -o "$kit/strata-bench" target/release/strata-bench
strip -o "$kit/device-ffi-tests" "$ffi"
git rev-parse HEAD > "$kit/commit"
du -sh "$kit"
