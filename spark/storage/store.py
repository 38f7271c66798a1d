"""Matrix storage for spark-cnn: the interface, its errors and its names.

The forward and backward Spark stages hand layer matrices to each other
through an :class:`ArrayStore`.  Two implementations share one small
interface::

    store.put(key, array) -> int          # bytes written
    store.get(key, where=None) -> ndarray  # where: a hint (Redis address)
    store.keys() -> list[str]             # what is left under the namespace
    store.delete_all()                    # remove everything under the namespace

:class:`spark.storage.redis_store.RedisStore` keeps arrays in Redis,
:class:`spark.storage.hdfs_store.HdfsStore` as HDFS files; both send them in the
format of :mod:`spark.storage.wire`, never pickled.  ``spark.storage.exchange`` opens the one
a run uses.

Every store is created with a ``namespace`` (a run id); two namespaces never
share a key.  Namespaces may use ``A-Z a-z 0-9 _ . -`` only.  Keys are
non-empty relative paths of the same characters plus ``/`` (no empty, ``.``
or ``..`` segments), so they map onto HDFS paths as well as Redis keys.

A server that does not answer within the store's timeout is remembered as
stalled (:class:`StallMemory`) for as long again: calls to it fail at once
meanwhile, so the clean-up after a stall costs no further timeouts.
"""

from __future__ import annotations

import re
import time

import numpy as np

__all__ = [
    "ArrayStore",
    "StoreError",
    "StoreUnavailableError",
    "MissingKeyError",
    "StoreTimeoutError",
    "StoreAuthError",
    "StorePermissionError",
    "StallMemory",
    "check_namespace",
    "check_key",
    "reason",
]

START_HINT = "start it with scripts/services.sh start"
# Connect and read timeout of every Redis and WebHDFS call, seconds
# (SPARK_CNN_IO_TIMEOUT): a stalled server ends a run instead of hanging it.
DEFAULT_TIMEOUT = 30.0

# ---------------------------------------------------------------------------
# errors


class StoreError(Exception):
    """Base class of every error raised by the stores."""


class StoreUnavailableError(StoreError, ConnectionError):
    """A server could not be reached."""


class StoreTimeoutError(StoreUnavailableError):
    """A server accepted the connection but did not answer within the timeout."""


class StoreAuthError(StoreUnavailableError):
    """A Redis server wants a password, or refused the one given."""


class StorePermissionError(StoreError, PermissionError):
    """HDFS refused an operation to the HDFS user."""


class MissingKeyError(StoreError, KeyError):
    """The key is not in the store (a :class:`KeyError`)."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


def reason(exc: BaseException) -> str:
    """A short lower-case reason such as 'connection refused'."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip().rstrip(".")
    m = re.search(r"Error \d+ connecting to \S+ ?\.?\s*(.*)", text)
    if m and m.group(1):
        return m.group(1).rstrip(".").lower()
    return text or type(exc).__name__


class StallMemory:
    """Servers that did not answer within a timeout, remembered for as long again.

    A back end calls :meth:`remember` when a call to a server times out, and
    asks :meth:`stalled` before the next call to it: during the window that
    call fails at once (with the back end's own timeout error) instead of
    waiting another timeout.
    """

    def __init__(self) -> None:
        self._until: dict[str, float] = {}   # server -> time.monotonic() it counts as stalled until

    def remember(self, server: str, seconds: float) -> None:
        self._until[server] = max(self._until.get(server, 0.0), time.monotonic() + seconds)

    def stalled(self, server: str) -> bool:
        return time.monotonic() < self._until.get(server, 0.0)


# ---------------------------------------------------------------------------
# names

_NS_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,1000}$")


def check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _NS_RE.match(namespace):
        raise ValueError(f"bad namespace {namespace!r}: use 1-200 characters from "
                         "A-Z a-z 0-9 _ . -")
    return namespace


def check_key(key: str, what: str = "key") -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key) or any(
            seg in ("", ".", "..") for seg in key.split("/")):
        raise ValueError(f"bad {what} {key!r}: use a relative path of A-Z a-z 0-9 _ . - / "
                         "without empty, '.' or '..' segments")
    return key


# ---------------------------------------------------------------------------
# interface


class ArrayStore:
    """Puts and gets NumPy arrays under a namespace.  See the module docstring."""

    namespace: str

    def put(self, key: str, array) -> int:
        """Store ``array`` under ``key`` (overwriting); returns the bytes written."""
        raise NotImplementedError

    def get(self, key: str, where: str | None = None) -> np.ndarray:
        """Return the array stored under ``key``; raises :class:`MissingKeyError`."""
        raise NotImplementedError

    def keys(self) -> list[str]:
        """Sorted list of the keys currently stored under the namespace."""
        raise NotImplementedError

    def delete_all(self) -> int:
        """Remove everything under the namespace; returns how many items went."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise StoreUnavailableError (naming the server) if a server cannot be used.
        Stores whose first write says as much need not override it."""
