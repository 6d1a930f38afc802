"""How every backend connects: the options an engine's config gives, the environment
variables for the rest (as ``strata.Client`` reads them)."""

from __future__ import annotations

from typing import Any, Optional

from .._native import Client


def connect(server: Optional[str] = None, *, timeout: Any = None, **options: Any) -> Client:
    """A client of ``server`` with the options given (``token``, ``token_file``, ``ca``,
    ``transport``, ``device``); empty ones fall back to the environment. It connects now,
    so a missing server or a wrong token stops the engine at start."""
    given = {k: v for k, v in options.items() if v not in (None, "")}
    if timeout is not None:
        given["timeout"] = float(timeout)
    return Client(server or None, **given)
