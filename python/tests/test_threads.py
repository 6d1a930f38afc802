"""One Client shared by many threads: every value checked, and calls overlap."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import strata


def pattern(thread: int, i: int, n: int) -> bytes:
    return np.random.default_rng(thread * 100_003 + i).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_eight_threads_share_one_client_every_value_checked(client, prefix):
    rounds, size = 40, 64 * 1024 + 17
    errors = []

    def work(t: int) -> int:
        checked = 0
        for i in range(rounds):
            key = f"{prefix}{t}-{i}"
            v = pattern(t, i, size)
            client.put(key, v)
            if i % 2 == 0:
                assert client.get(key) == v
            else:
                out = bytearray(size)
                assert client.get_into(key, out) == size and bytes(out) == v
            batch = [f"{prefix}{t}-{j}" for j in range(max(0, i - 3), i + 1)]
            outs = [bytearray(size) for _ in batch]
            got = client.batch_get_into(batch, outs)
            for j, (r, o) in enumerate(zip(got, outs)):
                assert r == size, r
                assert bytes(o) == pattern(t, max(0, i - 3) + j, size)
            assert client.prefix_len([[k] for k in batch]) == len(batch)
            checked += 1 + len(batch)
        return checked

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(work, t) for t in range(8)]
        for f in futures:
            try:
                f.result(timeout=240)
            except Exception as e:  # noqa: BLE001 - collected, then reported together
                errors.append(e)
    assert not errors, errors
    assert all(client.batch_exists([f"{prefix}{t}-{i}" for t in range(8) for i in range(rounds)]))


def test_calls_from_several_threads_overlap(server):
    # Four connects to an address where nothing answers, each bounded by a 1 s timeout:
    # run one after another they take 4 s; side by side, about 1 s.
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

        def connect(_):
            try:
                strata.Client(f"127.0.0.1:{port}", ca=server.cert, timeout=1.0)
            except strata.Error:
                return True
            return False

        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(connect, range(4)))
        took = time.monotonic() - started
    assert took < 3.0, f"four 1 s waits in parallel took {took:.2f} s"


def test_async_client(server, prefix):
    async def main():
        async with await strata.AsyncClient.connect(server.address, ca=server.cert) as c:
            values = {f"{prefix}{i}": bytes([i]) * (1000 + i) for i in range(20)}
            await asyncio.gather(*(c.put(k, v) for k, v in values.items()))
            got = await asyncio.gather(*(c.get(k) for k in values))
            assert got == list(values.values())
            assert await c.prefix_len([[k] for k in values]) == 20
            outs = [bytearray(2000) for _ in values]
            assert await c.batch_get_into(list(values), outs) == [len(v) for v in values.values()]
            assert await c.exists(prefix + "0")

    asyncio.run(main())
    assert threading.active_count() < 50
