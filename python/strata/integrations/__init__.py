"""strata inside the inference engines: one module per engine's plug-in contract.

- ``strata.integrations.sglang``: ``StrataHiCacheStorage``, an SGLang HiCache storage
  backend (``--hicache-storage-backend dynamic``).

Each module imports its engine lazily: it loads without the engine installed, so its
contract can be tested against a real server with the engine's argument shapes.
"""
