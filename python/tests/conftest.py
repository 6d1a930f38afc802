"""Fixtures: a real strata-server per test module, started on free loopback ports with a
fresh data dir, and clients of it.

The server binary is $STRATA_SERVER_BIN, else the workspace's target/debug or
target/release build (`cargo build -p strata-server` makes it).
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

import strata

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0

# The client falls back to these; a test sets what it means to, nothing leaks in.
for _name in [n for n in os.environ if n.startswith("STRATA_")]:
    if _name not in ("STRATA_SERVER_BIN", "STRATA_REQUIRE_EXTERNAL"):
        del os.environ[_name]


def server_binary() -> Path:
    given = os.environ.get("STRATA_SERVER_BIN")
    if given:
        return Path(given)
    for profile in ("debug", "release"):
        candidate = REPO / "target" / profile / "strata-server"
        if candidate.exists():
            return candidate
    pytest.fail("no strata-server binary: run `cargo build -p strata-server` or set STRATA_SERVER_BIN")


class Server:
    """A strata-server child process on loopback, killed at the end."""

    def __init__(self, args: Optional[List[str]] = None, data_dir: Optional[Path] = None):
        self._owned = None
        if data_dir is None:
            self._owned = tempfile.mkdtemp(prefix="strata-py-")
            data_dir = Path(self._owned)
        self.data_dir = data_dir
        args = list(args or [])
        if "--dram-capacity" not in args:
            args += ["--dram-capacity", "256MiB"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
        env["STRATA_LOG"] = "warn"
        self.process = subprocess.Popen(
            [
                str(server_binary()),
                "--host", "127.0.0.1",
                "--port", "0",
                "--metrics-addr", "127.0.0.1:0",
                "--data-port", "0",
                "--data-dir", str(data_dir),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=None,
            env=env,
            text=True,
        )
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def pump() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        self.address: Optional[str] = None
        self.cert: Optional[str] = None
        deadline = time.monotonic() + START_TIMEOUT
        while self.address is None or self.cert is None:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.kill()
                raise RuntimeError("strata-server exited or did not report its address in time")
            if line.startswith("strata-server listening on "):
                self.address = line.split("listening on ", 1)[1].strip()
            elif line.startswith("certificate: "):
                self.cert = line.split(": ", 1)[1].strip()

    def client(self, **kwargs) -> strata.Client:
        kwargs.setdefault("ca", self.cert)
        kwargs.setdefault("timeout", 20.0)
        return strata.Client(self.address, **kwargs)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=20)

    def close(self) -> None:
        self.kill()
        if self._owned:
            shutil.rmtree(self._owned, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[strata.Client]:
    c = server.client()
    yield c
    c.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"t-{uuid.uuid4().hex[:12]}-"


def _starter() -> Iterator:
    """Starts servers (``start(args, data_dir=None)``) and stops them all at the end."""
    started: List[Server] = []

    def start(args: Optional[List[str]] = None, data_dir: Optional[Path] = None) -> Server:
        s = Server(args, data_dir)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


@pytest.fixture(scope="module")
def start_module_server() -> Iterator:
    """``start_server`` for servers a whole test module shares."""
    yield from _starter()


@pytest.fixture
def start_server() -> Iterator:
    """Starts servers of this test's own (``start_server(args, data_dir=None)``); all are
    stopped at its end."""
    yield from _starter()
