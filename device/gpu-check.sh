#!/usr/bin/env bash
# The device tier on a real GPU, in one short call (issue 38). Build the kit here first
# (scripts/gpu-kit.sh), then on the GPU machine, from the repository root:
#
#   run  command="bash device/gpu-check.sh"  carry=["gpu-kit"]  timeout_s=420
#
# Steps, each with its own time limit, each failing alone (the rest still run):
#   1. device-tests: the device crate's FFI tests against the backend: open, alloc, free,
#      H2D / D2H / D2D copies with bounds, IPC export in this process and import in a
#      child, the errors' strings (printed into the log).
#   2. server: strata-server --device-plugin $backend with a device tier of 4 GiB.
#   3. bench: strata-bench device against that server from another process: gets and
#      puts through the imported device segment, device-to-device through registered
#      device buffers (1-64 MiB, every byte checked) beside the device's own copy, a
#      segment of the bench's device memory mounted into the server's tier (values put,
#      read back, unmounted), and demotion of a full device tier to dram in an embedded
#      store.
#   4. ceiling: torch's D2D copy and pinned H2D / D2H copies of the same sizes.
# Everything lands in $OUT (./gpu-out when unset): summary.txt (one line per step),
# machine.txt, device.jsonl, ceiling.jsonl and a log per step.
#
# STRATA_GPU_CHECK_BACKEND=host-sim runs the same steps on a machine without a GPU: a dry
# run of the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
backend=${STRATA_GPU_CHECK_BACKEND:-cuda}
kit=${STRATA_GPU_KIT:-gpu-kit}
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
failed=0

# step NAME LIMIT_S COMMAND...: runs COMMAND with its output in $out/NAME.log.
step() {
    local name=$1 limit=$2 started rc
    shift 2
    started=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        echo "$name: pass ($(($(date +%s) - started)) s)" | tee -a "$summary"
    else
        failed=1
        echo "$name: FAIL, exit $rc ($(($(date +%s) - started)) s); last lines:" | tee -a "$summary"
        tail -n 15 "$out/$name.log" | sed 's/^/    /' | tee -a "$summary"
    fi
}

{
    date -u
    uname -a
    echo "backend: $backend; kit built from $(cat "$kit/commit" 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,pci.bus_id --format=csv 2>&1 ||
        echo "no nvidia-smi"
} >"$out/machine.txt"
cat "$out/machine.txt"

STRATA_DEVICE_TEST_BACKEND=$backend step device-tests 120 \
    "$kit/device-ffi-tests" --test-threads=1 --nocapture \
    copies_of_every_kind_round_trip streamed_and_overlapping_device_copies_keep_every_byte \
    out_of_bounds_and_wrong_kinds_are_refused ipc_handles_work_across_processes

data=$(mktemp -d)
STRATA_LOG=info "$kit/strata-server" --host 127.0.0.1 --port 0 --data-dir "$data" \
    --device-plugin "$backend" --device-capacity 4GiB --dram-capacity 8GiB --ssd-path off \
    >"$out/server.stdout" 2>"$out/server.log" &
server=$!
addr="" cert=""
for _ in $(seq 1 600); do
    addr=$(sed -n 's/^strata-server listening on //p' "$out/server.stdout" | head -n 1)
    cert=$(sed -n 's/^certificate: //p' "$out/server.stdout" | head -n 1)
    { [ -n "$addr" ] && [ -n "$cert" ]; } && break
    kill -0 $server 2>/dev/null || break
    sleep 0.1
done
if [ -n "$addr" ] && [ -n "$cert" ]; then
    echo "server: pass (listening on $addr)" | tee -a "$summary"
    step bench 240 "$kit/strata-bench" --json "$out/device.jsonl" device \
        --backend "$backend" --server "$addr" --ca-cert "$cert" --device-mib 4096 --seconds 1
else
    failed=1
    echo "server: FAIL, it did not start; last lines of its log:" | tee -a "$summary"
    tail -n 15 "$out/server.log" | sed 's/^/    /' | tee -a "$summary"
fi
kill -TERM $server 2>/dev/null
wait $server 2>/dev/null
rm -rf "$data"

step ceiling 120 python3 device/gpu_ceiling.py "$out/ceiling.jsonl"

[ -f "$out/device.jsonl" ] && python3 - "$out" <<'PY' | tee -a "$summary"
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/device.jsonl")]
ceil = {}
try:
    for l in open(f"{out}/ceiling.jsonl"):
        r = json.loads(l)
        if r.get("phase") == "ceiling":
            ceil[(r["op"], r["value_size"])] = r["bytes_per_s"]
except OSError:
    pass
for r in rows:
    size = r.get("value_size", 0)
    line = f"{r['system']} {r['op']} {r['phase']} {size >> 20} MiB: {r['bytes_per_s'] / 1e9:.2f} GB/s"
    if r["op"] == "get" and r["phase"] == "d2d" and ("d2d", size) in ceil:
        line += f", {r['bytes_per_s'] / ceil[('d2d', size)]:.2f}x torch's D2D copy"
    if r["op"] == "demote" and ("d2h_pinned", size) in ceil:
        line += f", {r['bytes_per_s'] / ceil[('d2h_pinned', size)]:.2f}x torch's pinned D2H"
    print(line)
PY
echo "gpu-check: $([ $failed -eq 0 ] && echo 'every step passed' || echo 'a step failed')" | tee -a "$summary"
exit $failed
