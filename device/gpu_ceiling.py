"""The ceilings of device/gpu-check.sh, measured with torch on the same GPU: a plain
device-to-device copy, and host-to-device / device-to-host copies from pinned memory, at
the sizes the bench moves. Writes JSON Lines (one row per copy and size) to the path given.
Without torch or a GPU it writes one row saying why, and exits 0: the rest of the check
still runs."""

import json
import sys
import time

SIZES = [1 << 20, 4 << 20, 16 << 20, 64 << 20]
SECONDS = 1.0


def row(out, **fields):
    out.write(json.dumps({"workload": "device", "system": "torch", **fields}) + "\n")
    out.flush()


def timed(torch, copy, size):
    copy()  # first use: allocation, page-in, kernels loaded
    torch.cuda.synchronize()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS and n < 100_000:
        copy()
        torch.cuda.synchronize()
        n += 1
    took = time.perf_counter() - started
    return {"ops": n, "seconds": took, "bytes_per_s": n * size / took}


def main(path):
    with open(path, "w") as out:
        try:
            import torch
        except ImportError as e:
            row(out, op="none", phase="skipped", why=f"no torch: {e}")
            return
        if not torch.cuda.is_available():
            row(out, op="none", phase="skipped", why="torch sees no CUDA device")
            return
        row(out, op="none", phase="machine", device=torch.cuda.get_device_name(0),
            torch=torch.__version__, cuda=torch.version.cuda)
        for size in SIZES:
            src = torch.empty(size, dtype=torch.uint8, device="cuda").random_(0, 255)
            dst = torch.empty_like(src)
            pinned = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            pageable = torch.empty(size, dtype=torch.uint8)
            for op, copy in [
                ("d2d", lambda: dst.copy_(src)),
                ("h2d_pinned", lambda: dst.copy_(pinned, non_blocking=True)),
                ("d2h_pinned", lambda: pinned.copy_(src, non_blocking=True)),
                ("d2h_pageable", lambda: pageable.copy_(src)),
            ]:
                row(out, op=op, phase="ceiling", value_size=size, **timed(torch, copy, size))
            assert torch.equal(dst.cpu(), src.cpu()), "a ceiling copy lost bytes"


if __name__ == "__main__":
    main(sys.argv[1])
