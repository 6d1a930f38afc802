"""The exceptions of strata: one hierarchy under :class:`Error`.

Every exception carries the server's stable error code (``code``, an int that never
changes meaning, and ``code_name``) and a message that names the key or address involved.
Batch calls do not raise for a single key: they return these exception objects in the
place of that key's result.
"""

from __future__ import annotations

import builtins
from typing import Dict, Optional, Type


class Error(Exception):
    """A strata error. ``code`` is the stable number, ``code_name`` its name."""

    code: int = 10
    code_name: str = "Internal"

    def __init__(self, message: str, code: Optional[int] = None, code_name: Optional[str] = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if code_name is not None:
            self.code_name = code_name

    def __str__(self) -> str:
        return f"{self.code_name} ({self.code}): {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.code == self.code  # type: ignore[attr-defined]
            and other.message == self.message  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self), self.code, self.message))


class NotFound(Error):
    """The key is not stored (or is still being written)."""

    code, code_name = 1, "NotFound"


class AlreadyExists(Error):
    """A complete object with this key exists (puts treat it as success)."""

    code, code_name = 2, "AlreadyExists"


class Busy(Error):
    """Another writer holds a live reservation for this key."""

    code, code_name = 3, "Busy"


class NoSpace(Error):
    """No tier can hold the value, even after evicting everything evictable."""

    code, code_name = 4, "NoSpace"


class LeaseExpired(Error):
    """A read lease or write reservation ended before the operation completed."""

    code, code_name = 5, "LeaseExpired"


class InvalidArgument(Error, ValueError):
    """An argument is out of range, of the wrong kind, or inconsistent."""

    code, code_name = 7, "InvalidArgument"


class InvalidKey(InvalidArgument):
    """The key is empty, too long, or neither str nor bytes."""

    code, code_name = 6, "InvalidKey"


class TooLarge(InvalidArgument):
    """A value, batch or header is larger than any limit allows."""

    code, code_name = 8, "TooLarge"


class NotWriter(Error):
    """Only the writer that reserved a key may commit or revoke it."""

    code, code_name = 9, "NotWriter"


class Internal(Error):
    """A bug or an unexpected system failure; the message says which."""

    code, code_name = 10, "Internal"


class Leased(Error):
    """The object is leased by a reader and the removal was not forced."""

    code, code_name = 11, "Leased"


class ProtocolError(Error):
    """A frame broke the wire protocol (a client and server of different versions)."""

    code, code_name = 12, "Protocol"


class Unauthorized(Error, builtins.PermissionError):
    """The server's auth token is missing or wrong."""

    code, code_name = 13, "Unauthorized"


class Timeout(Error, builtins.TimeoutError):
    """The operation did not finish within its time bound."""

    code, code_name = 14, "Timeout"


class ConnectionError(Error, builtins.ConnectionError):
    """The server cannot be reached, the connection was lost, or the client is closed."""

    code, code_name = 15, "Unavailable"


class Corrupt(Error):
    """Stored bytes failed their checksum; the object was dropped, never served."""

    code, code_name = 16, "Corrupt"


#: Each stable code's class.
BY_CODE: Dict[int, Type[Error]] = {
    cls.code: cls
    for cls in (
        NotFound,
        AlreadyExists,
        Busy,
        NoSpace,
        LeaseExpired,
        InvalidKey,
        InvalidArgument,
        TooLarge,
        NotWriter,
        Internal,
        Leased,
        ProtocolError,
        Unauthorized,
        Timeout,
        ConnectionError,
        Corrupt,
    )
}


def _from_code(code: int, code_name: str, message: str) -> Error:
    """The exception for a stable code (called by the native module)."""
    cls = BY_CODE.get(code, Error)
    return cls(message, code, code_name)
