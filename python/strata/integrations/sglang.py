"""``StrataHiCacheStorage``: strata as SGLang's HiCache storage tier (L3).

Load it with SGLang's dynamic backend::

    --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "strata",
        "module_path": "strata.integrations.sglang", "class_name": "StrataHiCacheStorage",
        "interface_v1": 1, "server": "127.0.0.1:50088"}'

The contract is SGLang's ``HiCacheStorage`` (sgl-project/sglang
``python/sglang/srt/mem_cache/hicache_storage.py``, and ``storage/backend_factory.py``
which builds a dynamic backend as ``cls(storage_config, kwargs)``; read at commit
001067fffe33427bee0ed2f007fb7551a1d76b44). With ``interface_v1`` SGLang calls
``batch_exists`` to find how many leading pages are stored, then ``batch_get_v1`` /
``batch_set_v1`` with host-pool indices; the page pointers come from the host pool's
``get_page_buffer_meta`` and the bytes move between them and the store without a copy in
Python.

Keys: SGLang names each page by a chained hash of its tokens. MHA models store one object
per page and rank for K and one for V (``{prefix}{page}@tp_rank:{r}@k`` and ``...@v``;
pipeline stages add ``@pp_rank:{p}``); MLA models, whose latent cache is the same on every
rank, store one object per page (``{prefix}{page}@mla@k``). ``prefix`` is the extra
config's ``key_prefix`` (a tenant tag) and the model name.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import errors
from ._connect import connect

log = logging.getLogger("strata.sglang")

try:  # The real base class when SGLang is installed: its factory checks the subclass.
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base
except ImportError:  # Without SGLang: the same shape, so the contract can be tested.

    class _Base:  # type: ignore[no-redef]
        def register_mem_pool_host(self, mem_pool_host: Any) -> None:
            self.mem_pool_host = mem_pool_host


#: The extra-config keys SGLang's dynamic loader itself reads.
LOADER_KEYS = {"backend_name", "module_path", "class_name", "interface_v1"}
#: The extra-config keys this backend reads.
OPTION_KEYS = {
    "server": "strata server host:port (else STRATA_SERVER, else this host's server)",
    "token": "the server's auth token (else STRATA_AUTH_TOKEN)",
    "token_file": "file holding the token (else STRATA_AUTH_TOKEN_FILE)",
    "ca": "certificate to trust (else STRATA_CA, else the local server's)",
    "transport": "auto, shm, tcp or quic (else STRATA_TRANSPORT, else auto)",
    "timeout": "seconds bounding each call (else STRATA_TIMEOUT, else 10)",
    "key_prefix": "a tag put before every key: a tenant, a deployment",
    "lease": "lease the pages batch_exists finds until the load (default true)",
}


def _span(buffer: Any) -> Tuple[int, int]:
    """(address, bytes) of a host tensor or array."""
    if hasattr(buffer, "data_ptr"):  # torch
        return int(buffer.data_ptr()), int(buffer.numel() * buffer.element_size())
    if hasattr(buffer, "ctypes"):  # numpy
        return int(buffer.ctypes.data), int(buffer.nbytes)
    raise TypeError(f"cannot register a {type(buffer).__name__}: a torch tensor or numpy array is needed")


def _int_list(values: Any) -> List[int]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, int):
        return [values]
    return [int(v) for v in values]


class StrataHiCacheStorage(_Base):
    """SGLang's HiCache storage backend over a strata server. See the module's text."""

    def __init__(self, storage_config: Any = None, kwargs: Optional[Dict[str, Any]] = None):
        extra = dict(getattr(storage_config, "extra_config", None) or {})
        unknown = sorted(set(extra) - LOADER_KEYS - set(OPTION_KEYS))
        if unknown:
            accepted = ", ".join(sorted(OPTION_KEYS))
            raise ValueError(
                f"strata HiCache backend: unknown extra config key(s) {unknown}; it reads {accepted}"
            )
        self.tp_rank = int(getattr(storage_config, "tp_rank", 0) or 0)
        self.tp_size = int(getattr(storage_config, "tp_size", 1) or 1)
        self.pp_rank = int(getattr(storage_config, "pp_rank", 0) or 0)
        self.pp_size = int(getattr(storage_config, "pp_size", 1) or 1)
        self.is_mla = bool(getattr(storage_config, "is_mla_model", False))
        if getattr(storage_config, "should_split_heads", False):
            raise ValueError(
                "strata HiCache backend: should_split_heads (a TP size differing across "
                "prefill and decode) is not supported"
            )
        model = getattr(storage_config, "model_name", None) or ""
        tag = [str(extra["key_prefix"])] if extra.get("key_prefix") else []
        if model:
            tag.append(model.replace("/", "-"))
        self.prefix = "".join(f"{t}/" for t in tag)
        self.lease = bool(extra.get("lease", True))
        self.suffixes = self._suffixes()
        options = {k: extra.get(k) for k in ("token", "token_file", "ca", "transport", "timeout")}
        self.client = connect(extra.get("server"), **options)
        self.mem_pool_host: Any = None
        self.registered: List[int] = []

    # -- keys ------------------------------------------------------------------------

    def _suffixes(self) -> List[str]:
        """What follows a page's key in the strata keys of its objects, in the order
        get_page_buffer_meta lists their pointers."""
        stage = f"@pp_rank:{self.pp_rank}" if self.pp_size > 1 else ""
        if self.is_mla:
            return [f"@mla{stage}@k"]
        rank = f"@tp_rank:{self.tp_rank}{stage}"
        return [f"{rank}@k", f"{rank}@v"]

    def _objects(self, page_key: str) -> List[str]:
        """The strata keys of one page's objects."""
        base = self.prefix + page_key
        return [base + s for s in self.suffixes]

    # -- memory ----------------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        """Registers the host pool's buffers with the client, so page pointers into them
        can be loaded into and stored from directly."""
        super().register_mem_pool_host(mem_pool_host)
        buffers = getattr(mem_pool_host, "get_hybrid_pool_buffer", None)
        buffers = buffers() if buffers else [getattr(mem_pool_host, "kv_buffer", None)]
        for buffer in buffers:
            if buffer is None:
                continue
            # A (2, ...) MHA buffer is one allocation: register it whole.
            address, size = _span(buffer)
            if size == 0 or address in self.registered:
                continue
            self.client.register_buffer(address, size)
            self.registered.append(address)

    def _regions(self, keys: Sequence[str], host_indices: Any) -> Tuple[List[str], List[Any], int]:
        """Each page's strata keys and their regions (one (address, size), or pieces when
        the pool lists several pointers per object), and the objects per page."""
        if self.mem_pool_host is None:
            raise RuntimeError("strata HiCache backend: register_mem_pool_host was not called")
        pointers, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        pointers = _int_list(pointers)
        sizes = _int_list(sizes)
        if len(sizes) == 1 and len(pointers) > 1:
            sizes = sizes * len(pointers)
        objects = [o for k in keys for o in self._objects(k)]
        per_page = len(objects) // max(1, len(keys))
        if not objects or len(pointers) % len(objects) or len(sizes) != len(pointers):
            raise ValueError(
                f"strata HiCache backend: the host pool gave {len(pointers)} pointers and "
                f"{len(sizes)} sizes for {len(keys)} pages ({len(objects)} objects)"
            )
        each = len(pointers) // len(objects)
        regions: List[Any] = []
        for i in range(len(objects)):
            pieces = list(zip(pointers[i * each:(i + 1) * each], sizes[i * each:(i + 1) * each]))
            regions.append(pieces[0] if each == 1 else pieces)
        return objects, regions, per_page

    @staticmethod
    def _per_page(results: Sequence[Any], per_page: int, ok: Any) -> List[bool]:
        return [
            all(ok(r) for r in results[i:i + per_page])
            for i in range(0, len(results), per_page)
        ]

    # -- the zero-copy interface (interface_v1) --------------------------------------

    def batch_exists(self, keys: List[str], extra_info: Any = None) -> int:
        """How many leading pages are stored, in one server round trip; with ``lease``
        (the default) the pages found stay until the load that follows."""
        if not keys:
            return 0
        try:
            # The object keys are made in Rust: in Python they cost a third of the lookup.
            return self.client.prefix_len_expanded(keys, self.suffixes, self.prefix, lease=self.lease)
        except errors.Error as e:
            log.warning("strata batch_exists: %s", e)
            return 0

    def batch_get_v1(self, keys: List[str], host_indices: Any, extra_info: Any = None) -> List[bool]:
        """Loads each page into the host pool at ``host_indices``; per page whether every
        object of it arrived whole."""
        if not keys:
            return []
        objects, regions, per_page = self._regions(keys, host_indices)
        results = self.client.batch_get_into(objects, regions)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, errors.NotFound):
                log.warning("strata batch_get_v1: %s", r)
        sizes = [sum(s for _, s in r) if isinstance(r, list) else r[1] for r in regions]
        return self._per_page(
            [r == n for r, n in zip(results, sizes)], per_page, lambda ok: ok is True
        )

    def batch_set_v1(self, keys: List[str], host_indices: Any, extra_info: Any = None) -> List[bool]:
        """Stores each page from the host pool at ``host_indices``; per page whether every
        object of it is stored (a page already stored is success)."""
        if not keys:
            return []
        objects, regions, per_page = self._regions(keys, host_indices)
        results = self.client.batch_put_from(objects, regions)
        for r in results:
            if r is not None:
                log.warning("strata batch_set_v1: %s", r)
        return self._per_page(results, per_page, lambda r: r is None)

    # -- the legacy interface (copies, or raw pointers) ------------------------------

    def _value(self, value: Any) -> Any:
        if hasattr(value, "numpy"):  # a CPU torch tensor: its bytes
            value = value.contiguous().view(-1).numpy()
        return value

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Any:
        """The page's value: into ``target_location`` (a registered pointer, with
        ``target_sizes``) returning whether it arrived, else as a new uint8 tensor (bytes
        without torch), or None when it is not stored."""
        try:
            if target_location is not None:
                size = _int_list(target_sizes)[0]
                return self.client.get_into(self.prefix + key, int(target_location), size) > 0
            data = self.client.get(self.prefix + key)
        except errors.NotFound:
            return None if target_location is None else False
        except errors.Error as e:
            log.warning("strata get: %s", e)
            return None if target_location is None else False
        try:
            import torch

            return torch.frombuffer(bytearray(data), dtype=torch.uint8)
        except ImportError:
            return data

    def batch_get(self, keys: List[str], target_locations: Any = None, target_sizes: Any = None) -> Any:
        """Per key :meth:`get`; with pointers, the number of leading keys loaded."""
        if target_locations is None:
            return [self.get(k) for k in keys]
        locations, sizes = _int_list(target_locations), _int_list(target_sizes)
        results = self.client.batch_get_into(
            [self.prefix + k for k in keys], list(zip(locations, sizes))
        )
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                return i
        return len(keys)

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        """Stores ``value`` (a tensor or bytes-like object), or the bytes at
        ``target_location``; True when stored (already stored counts)."""
        try:
            if target_location is not None:
                size = _int_list(target_sizes)[0]
                self.client.put_from(self.prefix + key, int(target_location), size)
            else:
                self.client.put(self.prefix + key, self._value(value))
            return True
        except errors.Error as e:
            log.warning("strata set: %s", e)
            return False

    def batch_set(self, keys: List[str], values: Any = None, target_locations: Any = None, target_sizes: Any = None) -> bool:
        """Per key :meth:`set`; True when every key is stored."""
        if not keys:
            return False
        if target_locations is not None:
            regions = list(zip(_int_list(target_locations), _int_list(target_sizes)))
        else:
            regions = [self._value(v) for v in values]
        results = self.client.batch_put_from([self.prefix + k for k in keys], regions)
        return all(r is None for r in results)

    def exists(self, key: str) -> bool:
        """Whether the object ``key`` is stored."""
        try:
            return self.client.exists(self.prefix + key)
        except errors.Error as e:
            log.warning("strata exists: %s", e)
            return False

    def clear(self) -> None:
        """Removes every object of the server that no reader holds (SGLang's
        clear-storage endpoint; the pool is the server's, shared by its tenants)."""
        self.client.remove_all(False)

    def close(self) -> None:
        """Closes the connection."""
        self.client.close()
