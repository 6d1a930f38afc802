"""strata as an LMCache L2 store in multi-process mode: a ``native_plugin`` connector.

LMCache loads a third-party connector with (``docs/source/developer_guide/
extending_lmcache/native_connectors.rst`` and ``lmcache/v1/distributed/l2_adapters/
native_connector_l2_adapter.py`` of LMCache/LMCache, read at commits
05d4437c6ebf4d9f1373921222b1ca5313eb03d9 and 0b43a45563fe5c25dc80ac9f8be16d3f20d86b22)::

    --l2-adapter '{"type": "native_plugin", "module_path": "strata.integrations.lmcache",
                   "class_name": "StrataConnector",
                   "adapter_params": {"server": "127.0.0.1:50088"}}'

LMCache builds ``StrataConnector(**adapter_params)`` and wraps it in its
``NativeConnectorL2Adapter``, which submits batches with host memoryviews, waits on
``event_fd()`` and collects ``drain_completions()``: tuples ``(future_id, ok, error,
per-key results)``. Each batch runs on a worker thread of this connector as one strata
batch call (the GIL released while it waits and copies), so the bytes go straight between
LMCache's memory objects and the server's memory. A lookup leases the keys it finds, so
the load that follows cannot miss them.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .. import errors
from ._connect import connect

Completion = Tuple[int, bool, str, Optional[List[bool]]]


class _Notifier:
    """A file descriptor that polls readable while completions wait: an eventfd, or a
    pipe where the Python has no ``os.eventfd`` (before 3.10)."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self.read_fd = self.write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.is_eventfd = True
        else:
            self.read_fd, self.write_fd = os.pipe()
            os.set_blocking(self.read_fd, False)
            self.is_eventfd = False

    def notify(self) -> None:
        if self.is_eventfd:
            os.eventfd_write(self.write_fd, 1)
        else:
            os.write(self.write_fd, b"\0")

    def reset(self) -> None:
        try:
            if self.is_eventfd:
                os.eventfd_read(self.read_fd)
            else:
                while os.read(self.read_fd, 4096):
                    pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.read_fd)
        if self.write_fd != self.read_fd:
            os.close(self.write_fd)


class StrataConnector:
    """LMCache's native connector over a strata server."""

    def __init__(
        self,
        server: Optional[str] = None,
        *,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        ca: Optional[str] = None,
        transport: Optional[str] = None,
        timeout: Optional[float] = None,
        key_prefix: str = "",
        num_workers: int = 4,
    ):
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be at least 1, not {num_workers}")
        self.client = connect(server, token=token, token_file=token_file, ca=ca,
                              transport=transport, timeout=timeout)
        self.prefix = key_prefix
        self._ids = itertools.count(1)
        self._done: List[Completion] = []
        self._lock = threading.Lock()
        self._notifier = _Notifier()
        self._pool = ThreadPoolExecutor(int(num_workers), thread_name_prefix="strata-lmcache")
        self._closed = False

    # -- the connector contract ------------------------------------------------------

    def event_fd(self) -> int:
        """Readable while completions wait to be drained."""
        return self._notifier.read_fd

    def submit_batch_get(self, keys: List[str], memoryviews: List[memoryview]) -> int:
        """Loads each key into its memoryview; per key whether it arrived whole."""
        views = list(memoryviews)

        def run() -> Tuple[bool, str, List[bool]]:
            results = self.client.batch_get_into(self._keys(keys), views)
            loaded = [r == len(v) for r, v in zip(results, views)]
            return all(loaded), _first_error(results), loaded

        return self._submit(run)

    def submit_batch_set(self, keys: List[str], memoryviews: List[memoryview]) -> int:
        """Stores each key from its memoryview (a stored key is success)."""
        views = list(memoryviews)

        def run() -> Tuple[bool, str, List[bool]]:
            results = self.client.batch_put_from(self._keys(keys), views)
            stored = [r is None for r in results]
            return all(stored), _first_error(results), stored

        return self._submit(run)

    def submit_batch_exists(self, keys: List[str]) -> int:
        """Per key whether it is stored; the keys found are leased for the load."""

        def run() -> Tuple[bool, str, List[bool]]:
            results = self.client.batch_lease(self._keys(keys))
            found = [isinstance(r, int) for r in results]
            failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, errors.NotFound)]
            return not failures, _first_error(failures), found

        return self._submit(run)

    def submit_batch_delete(self, keys: List[str]) -> int:
        """Removes each key; per key whether it was removed."""

        def run() -> Tuple[bool, str, List[bool]]:
            results = self.client.batch_remove(self._keys(keys))
            removed = [r is None for r in results]
            failures = [r for r in results if r is not None and not isinstance(r, errors.NotFound)]
            return not failures, _first_error(failures), removed

        return self._submit(run)

    def drain_completions(self) -> List[Completion]:
        """The completions since the last drain: (future_id, ok, error, per-key results)."""
        with self._lock:
            self._notifier.reset()
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Waits for the batches in flight, then closes the connection."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        self.client.close()
        self._notifier.close()

    # -- internals -------------------------------------------------------------------

    def _keys(self, keys: Sequence[str]) -> List[str]:
        return [self.prefix + k for k in keys] if self.prefix else list(keys)

    def _submit(self, run: Callable[[], Tuple[bool, str, List[bool]]]) -> int:
        if self._closed:
            raise errors.ConnectionError("this connector is closed", 15, "Unavailable")
        future_id = next(self._ids)

        def task() -> None:
            try:
                ok, error, per_key = run()
                completion: Completion = (future_id, ok, error, per_key)
            except Exception as e:  # noqa: BLE001 - a failed batch is a completion, not a crash
                completion = (future_id, False, str(e), None)
            with self._lock:
                self._done.append(completion)
                self._notifier.notify()

        self._pool.submit(task)
        return future_id


def _first_error(results: Sequence[Any]) -> str:
    for r in results:
        if isinstance(r, BaseException):
            return str(r)
    return ""
