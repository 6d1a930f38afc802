"""Type stubs of ``strata._native``, the Rust half of the package (re-exported by ``strata``)."""

from types import TracebackType
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

from typing_extensions import Buffer

from .errors import Error

DEFAULT_SERVER: str
__version__: str

Key = Union[str, bytes]
#: (address, size) inside a registered buffer.
Range = Tuple[int, int]
#: What a value's bytes come from or go to: an object with the buffer protocol
#: (``bytes`` as a source only), one (address, size), or a list of (address, size) pieces.
Region = Union[Buffer, Range, List[Range]]

class Client:
    """A connection to one strata server, shared by every thread that uses it.

    Every argument not given falls back to the environment variable the ``strata``
    command line reads: ``STRATA_SERVER`` (else ``127.0.0.1:50088``), ``STRATA_AUTH_TOKEN``
    or ``STRATA_AUTH_TOKEN_FILE``, ``STRATA_CA`` (else the certificate a local server keeps
    in the default data dir), ``STRATA_SERVER_NAME``, ``STRATA_TRANSPORT`` (else
    ``"auto"``), ``STRATA_TIMEOUT`` (else 10 seconds).

    ``transport``: ``"auto"`` (shared memory with a server on this host, else the TCP data
    plane, else QUIC), ``"shm"``, ``"tcp"`` or ``"quic"``. ``timeout`` bounds every call
    (seconds); ``connect_timeout`` bounds connecting (default: ``timeout``). ``device``
    (``STRATA_DEVICE``) names a device module, ``backend[:index]`` (``ascend:0``,
    ``cuda:1``, ``host-sim``), that copies pieces of registered device memory when the
    server has no device tier on this host.

    Raises ``strata.ConnectionError`` (no server), ``strata.Timeout``,
    ``strata.Unauthorized`` (wrong or missing token), ``strata.InvalidArgument`` (a bad
    setting). Every call releases the GIL while it waits or copies.
    """

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        ca: Optional[str] = None,
        server_name: Optional[str] = None,
        transport: Optional[str] = None,
        timeout: Optional[float] = None,
        connect_timeout: Optional[float] = None,
        device: Optional[str] = None,
    ) -> None: ...
    @property
    def address(self) -> str:
        """The server address this client was made for."""
    @property
    def transport(self) -> str:
        """How value bytes travel now: ``"shm"``, ``"tcp"`` or ``"quic"``."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def put(self, key: Key, value: Buffer) -> None:
        """Stores ``value`` under ``key``. An existing key is success: values are
        immutable, the same key names the same bytes."""
    def put_from(self, key: Key, source: Region | int, size: Optional[int] = None) -> None:
        """Stores the bytes of ``source``: a bytes-like object (its first ``size`` bytes
        when given), an address with ``size`` inside a registered buffer, or a list of
        (address, size) pieces, stored as one value in order."""
    def get(self, key: Key) -> bytes:
        """The value of ``key``. Raises ``strata.NotFound`` when it is not stored."""
    def get_into(self, key: Key, destination: Region | int, size: Optional[int] = None) -> int:
        """Copies the value of ``key`` into ``destination`` (a writable buffer, an address
        with ``size`` inside a registered buffer, or a list of (address, size) pieces filled
        in order) and returns its length. ``strata.InvalidArgument`` when it does not fit."""
    def batch_get_into(self, keys: Sequence[Key], buffers: Sequence[Region]) -> List[Union[int, Error]]:
        """Loads each key into its buffer (paired by position). Per key: the length, or
        the exception for that key (a failed key never fails the others). Destinations
        that overlap an earlier one of the batch are refused."""
    def batch_put_from(self, keys: Sequence[Key], buffers: Sequence[Region]) -> List[Optional[Error]]:
        """Stores each key from its buffer. Per key: None, or the exception for that key."""
    def exists(self, key: Key) -> bool:
        """Whether ``key`` is stored (complete). Takes no lease."""
    def batch_exists(self, keys: Sequence[Key]) -> List[Union[bool, Error]]:
        """Per key whether it is stored, in one round trip per 65,536 keys."""
    def prefix_len(self, groups: Sequence[Sequence[Key]], lease: bool = False) -> int:
        """The number of leading groups whose keys are all stored; a group is every
        tensor-parallel rank's key of one block. With ``lease``, the matched objects are
        leased so the loads that follow cannot miss."""
    def prefix_len_expanded(
        self, keys: Sequence[Key], suffixes: Optional[Sequence[Key]] = None, prefix: str = "", lease: bool = False
    ) -> int:
        """``prefix_len`` of positions whose keys are ``prefix + keys[i] + s`` for each
        ``s`` of ``suffixes`` (a page's K and V objects, every rank's part): the keys are
        made in Rust, which spares a lookup the time Python takes to make them."""
    def prefix_keys_by_tail(self, keys: Sequence[Key], separator: str = "@", lease: bool = False) -> Optional[int]:
        """The number of leading keys whose positions are all stored, a position being a
        run of consecutive keys with the same text after their last ``separator`` (a
        block's hash after every rank's part). None when the keys are not grouped so."""
    def size(self, key: Key) -> int:
        """The length of the value of ``key`` (takes a read lease, as a load would)."""
    def batch_lease(self, keys: Sequence[Key]) -> List[Union[int, Error]]:
        """Leases each key as a load would: the server keeps it in place until the lease
        ends (its ``--default-kv-lease-ttl``). Per key the value's size, or the exception."""
    def remove(self, key: Key, force: bool = False) -> None:
        """Removes ``key``. A leased object raises ``strata.Leased`` unless ``force``."""
    def batch_remove(self, keys: Sequence[Key], force: bool = False) -> List[Optional[Error]]:
        """Removes each key. Per key: None, or the exception for that key."""
    def remove_all(self, force: bool = False) -> int:
        """Removes every object (leased ones only with ``force``); returns how many."""
    def register_buffer(self, address: int, size: int, *, device: bool = False) -> None:
        """Registers ``[address, address + size)`` so the calls accept raw addresses in it
        (a torch tensor's ``data_ptr()``). Host memory must be mapped writable in this
        process (checked); ``device=True`` names memory of the server's device tier's
        device (or of ``Client(device=...)``'s). The memory must stay valid while
        registered."""
    def unregister_buffer(self, address: int) -> None:
        """Forgets the buffer registered at ``address`` (``strata.NotFound`` if none)."""
    def stats(self) -> Dict[str, Any]:
        """The server's figures, as ``strata stats --json`` prints them."""
    def transport_stats(self) -> Dict[str, int]:
        """How this client has moved value bytes since it connected, by path."""
    def ping(self) -> float:
        """One round trip with no work; returns its seconds."""
    def close(self) -> None:
        """Closes the connection; later calls raise ``strata.ConnectionError``."""
    def __enter__(self) -> "Client": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class ClusterClient:
    """A client of a whole strata cluster (docs/cluster.md); a server running alone is a
    cluster of one, so the same code serves both.

    Connects to ``address`` (any member; the same arguments and environment variables as
    ``Client``), fetches the member view and refetches it every ``view_refresh`` seconds.
    Keys of a chain (a prompt's blocks, each block's keys: one per TP rank) are placed by
    runs of blocks, each run at its owner; a lookup asks every owner once, in parallel. An
    owner that does not answer within ``lookup_timeout`` seconds counts as a miss.
    """

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        ca: Optional[str] = None,
        server_name: Optional[str] = None,
        transport: Optional[str] = None,
        timeout: Optional[float] = None,
        connect_timeout: Optional[float] = None,
        view_refresh: float = 0.5,
        lookup_timeout: float = 1.0,
    ) -> None: ...
    def prefix_len(self, groups: Sequence[Sequence[Key]], lease: bool = False) -> int:
        """How many leading blocks of the chain ``groups`` have every key stored, asking
        each run's owner in one parallel round; ``lease`` keeps what matched loadable."""
    def batch_put_chain(self, groups: Sequence[Sequence[Key]], values: Sequence[Buffer]) -> List[Optional[Error]]:
        """Stores every key of the chain (block after block, each block's keys in order)
        from the bytes-like object at the same place in ``values``; per key None or the
        exception."""
    def batch_get_chain_into(self, groups: Sequence[Sequence[Key]], buffers: Sequence[Buffer]) -> List[Union[int, Error]]:
        """Loads the first ``len(buffers)`` keys of the chain into the writable buffers, each
        from its owner; per key the length or the exception."""
    def put(self, key: Key, value: Buffer) -> None:
        """Stores ``value`` under ``key`` at the key's own owner."""
    def get(self, key: Key) -> bytes:
        """The value of ``key``, from its owner."""
    def exists(self, key: Key) -> bool:
        """Whether ``key`` is stored at its owner."""
    def remove(self, key: Key, force: bool = False) -> None:
        """Removes ``key`` from its owner."""
    def owner(self, key: Key) -> Optional[str]:
        """The node id that owns ``key`` placed by itself (None for a server alone)."""
    def view(self) -> Dict[str, Any]:
        """The member view in use: ``cluster_id``, ``epoch``, ``run_blocks``, ``seed``,
        ``node_id`` and ``members`` (``node_id``, ``addr``, ``host_id``, ``weight``,
        ``state``, ``capacity``, ``joined_ms_ago``)."""
    def counters(self) -> Dict[str, int]:
        """``lookups``, ``lookup_servers`` (servers they asked), ``second_rank_hits``,
        ``unreachable``, ``view_changes``."""
    def refresh_view(self) -> None:
        """Fetches the member view now."""
    def close(self) -> None:
        """Ends the client; later calls raise ``strata.ConnectionError``."""
    def __enter__(self) -> "ClusterClient": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class BlockHasher:
    """Chained 128-bit hashes of full blocks of tokens (strata block hash v1), identical
    to the Rust client's and published with test vectors (tests/block_hash_vectors.json)."""

    def __init__(self, seed: int = 0, block_size: int = 128, extra_keys: Sequence[Key] = ()) -> None: ...
    @property
    def block_size(self) -> int:
        """Tokens per block."""
    def root(self) -> int:
        """The parent of the first block."""
    def hash_block(self, parent: int, tokens: Sequence[int]) -> int:
        """The hash of one block of ``tokens`` whose parent block hashed to ``parent``."""
    def block_hashes(self, tokens: Sequence[int]) -> List[int]:
        """The hash of every full block of ``tokens``, in order."""
    @staticmethod
    def hex(hash: int) -> str:
        """A hash as 32 lower-case hex digits, as it appears in keys."""

class KeyFormatter:
    """Keys ``"{model}@tp_rank:{rank}@{hex}"`` for block hashes."""

    def __init__(self, model: str) -> None: ...
    def key(self, rank: int, hash: int) -> str:
        """The key of rank ``rank``'s part of the block hashed to ``hash``."""
    def group(self, ranks: int, hash: int) -> List[str]:
        """The keys of all ``ranks`` ranks of one block: one ``prefix_len`` group."""

class DeviceMemory:
    """Memory of a device module, freed with this object: what an engine's KV cache is on
    a GPU or NPU, allocated here (on ``host-sim`` for tests, or as a staging area)."""

    def __init__(self, size: int, device: str = "host-sim") -> None: ...
    @property
    def address(self) -> int:
        """The device address of the first byte."""
    @property
    def size(self) -> int:
        """Bytes allocated."""
    def write(self, offset: int, data: Buffer) -> None:
        """Copies ``data`` to ``offset`` (host to device)."""
    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (device to host)."""
