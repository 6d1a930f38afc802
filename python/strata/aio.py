"""``strata.AsyncClient``: the calls of :class:`strata.Client` as coroutines.

Each call runs the blocking ``Client`` call on a worker thread of the event loop's
executor. ``Client`` releases the GIL while it waits, so the loop keeps running and
several calls proceed in parallel; the bytes move exactly as with ``Client``.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, List, Optional, Sequence, TypeVar, Union

from ._native import Client

T = TypeVar("T")


class AsyncClient:
    """A :class:`strata.Client` whose calls are awaited.

    Make one with ``await AsyncClient.connect(...)`` (same arguments as ``Client``), or
    wrap an existing client with ``AsyncClient(client)``.
    """

    def __init__(self, client: Client):
        self.client = client

    @classmethod
    async def connect(cls, *args: Any, **kwargs: Any) -> "AsyncClient":
        """Connects as ``Client(*args, **kwargs)`` does, without blocking the loop."""
        loop = asyncio.get_running_loop()
        client = await loop.run_in_executor(None, functools.partial(Client, *args, **kwargs))
        return cls(client)

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(call, *args, **kwargs))

    async def put(self, key: Union[str, bytes], value: Any) -> None:
        """See :meth:`strata.Client.put`."""
        return await self._run(self.client.put, key, value)

    async def put_from(self, key: Union[str, bytes], source: Any, size: Optional[int] = None) -> None:
        """See :meth:`strata.Client.put_from`."""
        return await self._run(self.client.put_from, key, source, size)

    async def get(self, key: Union[str, bytes]) -> bytes:
        """See :meth:`strata.Client.get`."""
        return await self._run(self.client.get, key)

    async def get_into(self, key: Union[str, bytes], destination: Any, size: Optional[int] = None) -> int:
        """See :meth:`strata.Client.get_into`."""
        return await self._run(self.client.get_into, key, destination, size)

    async def batch_get_into(self, keys: Sequence[Union[str, bytes]], buffers: Sequence[Any]) -> List[Any]:
        """See :meth:`strata.Client.batch_get_into`."""
        return await self._run(self.client.batch_get_into, keys, buffers)

    async def batch_put_from(self, keys: Sequence[Union[str, bytes]], buffers: Sequence[Any]) -> List[Any]:
        """See :meth:`strata.Client.batch_put_from`."""
        return await self._run(self.client.batch_put_from, keys, buffers)

    async def exists(self, key: Union[str, bytes]) -> bool:
        """See :meth:`strata.Client.exists`."""
        return await self._run(self.client.exists, key)

    async def batch_exists(self, keys: Sequence[Union[str, bytes]]) -> List[Any]:
        """See :meth:`strata.Client.batch_exists`."""
        return await self._run(self.client.batch_exists, keys)

    async def prefix_len(self, groups: Sequence[Sequence[Union[str, bytes]]], lease: bool = False) -> int:
        """See :meth:`strata.Client.prefix_len`."""
        return await self._run(self.client.prefix_len, groups, lease)

    async def remove(self, key: Union[str, bytes], force: bool = False) -> None:
        """See :meth:`strata.Client.remove`."""
        return await self._run(self.client.remove, key, force)

    async def batch_remove(self, keys: Sequence[Union[str, bytes]], force: bool = False) -> List[Any]:
        """See :meth:`strata.Client.batch_remove`."""
        return await self._run(self.client.batch_remove, keys, force)

    async def remove_all(self, force: bool = False) -> int:
        """See :meth:`strata.Client.remove_all`."""
        return await self._run(self.client.remove_all, force)

    async def stats(self) -> dict:
        """See :meth:`strata.Client.stats`."""
        return await self._run(self.client.stats)

    async def close(self) -> None:
        """See :meth:`strata.Client.close`."""
        return await self._run(self.client.close)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
