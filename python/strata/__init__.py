"""strata: the KV-cache store for LLM inference, from Python.

>>> import strata
>>> with strata.Client() as client:          # the server on this host
...     client.put("greeting", b"hello")
...     client.get("greeting")
b'hello'

``Client`` moves value bytes by the most direct path the server offers (shared memory
on the same host, else its TCP data plane, else QUIC) and releases the GIL while it
waits or copies. ``ClusterClient`` is the same over a cluster of servers
(docs/cluster.md). ``BlockHasher`` and ``KeyFormatter`` name blocks as every strata client
does. ``strata.mooncake.MooncakeDistributedStore`` runs code written for Mooncake Store.
Errors: ``strata.Error`` and its subclasses (``strata.errors``). Guide: docs/python.md.
"""

from ._native import DEFAULT_SERVER, BlockHasher, Client, ClusterClient, DeviceMemory, KeyFormatter, __version__
from .aio import AsyncClient
from .errors import (
    AlreadyExists,
    Busy,
    ConnectionError,
    Corrupt,
    Error,
    Internal,
    InvalidArgument,
    InvalidKey,
    Leased,
    LeaseExpired,
    NoSpace,
    NotFound,
    NotWriter,
    ProtocolError,
    Timeout,
    TooLarge,
    Unauthorized,
)

__all__ = [
    "DEFAULT_SERVER",
    "AsyncClient",
    "BlockHasher",
    "Client",
    "ClusterClient",
    "DeviceMemory",
    "KeyFormatter",
    "__version__",
    "AlreadyExists",
    "Busy",
    "ConnectionError",
    "Corrupt",
    "Error",
    "Internal",
    "InvalidArgument",
    "InvalidKey",
    "Leased",
    "LeaseExpired",
    "NoSpace",
    "NotFound",
    "NotWriter",
    "ProtocolError",
    "Timeout",
    "TooLarge",
    "Unauthorized",
]
