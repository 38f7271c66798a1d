"""Arrays as HDFS files: :class:`HdfsStore` and its helpers, through WebHDFS.

Layout: ``<root>/<namespace>/<key>`` holds the array in the format of
:mod:`spark.storage.wire`, replication 1.
"""

from __future__ import annotations

import os
import posixpath
import threading
from urllib.parse import quote, urlsplit

import numpy as np

from .store import (
    DEFAULT_TIMEOUT,
    START_HINT,
    ArrayStore,
    MissingKeyError,
    StallMemory,
    StoreError,
    StorePermissionError,
    StoreTimeoutError,
    StoreUnavailableError,
    check_key,
    check_namespace,
    reason,
)
from .wire import FIXED_SIZE, MAGIC, MAX_NDIM, data_view, encode, parse_header

__all__ = ["HdfsStore"]

_HDFS_CLIENTS: dict = {}
_HDFS_LOCK = threading.Lock()
# WebHDFS servers (the NameNode's or a DataNode's host:port) that timed out moments ago
_STALLED = StallMemory()


def _hdfs_client(url: str, user: str, timeout: float):
    key = (url, user, timeout, os.getpid())  # no HTTP connection shared across fork()
    client = _HDFS_CLIENTS.get(key)
    if client is None:
        from hdfs import InsecureClient

        with _HDFS_LOCK:
            client = _HDFS_CLIENTS.get(key)
            if client is None:
                client = InsecureClient(url, user=user, timeout=timeout,
                                        session=_stall_aware_session(timeout))
                _HDFS_CLIENTS[key] = client
    return client


def remember_stalled(server: str, seconds: float) -> None:
    """Count a WebHDFS server (host:port) as stalled for ``seconds`` (see redis_store's)."""
    _STALLED.remember(server, seconds)


def _stall_aware_session(timeout: float):
    """A requests session for WebHDFS calls that remembers a server (NameNode or
    DataNode) that did not answer within ``timeout`` and, during the next
    ``timeout`` seconds, fails requests to it at once with the same kind of
    error (a requests timeout), so that the clean-up after a stall costs no
    further timeouts."""
    import requests
    from requests.adapters import HTTPAdapter

    class StallAwareAdapter(HTTPAdapter):
        def send(self, request, **kwargs):
            server = urlsplit(request.url).netloc
            if _STALLED.stalled(server):
                raise requests.exceptions.ReadTimeout(f"{server} did not answer moments ago",
                                                      request=request)
            try:
                return super().send(request, **kwargs)
            except requests.exceptions.Timeout:
                _STALLED.remember(server, timeout)
                raise

    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, StallAwareAdapter())
    return session


class _Body:
    """File-like request body made of buffers, read without joining them."""

    def __init__(self, parts: list):
        self._parts = [memoryview(p).cast("B") for p in parts if len(p)]
        self._len = sum(len(p) for p in self._parts)
        self._i = 0
        self._pos = 0

    def __len__(self) -> int:
        return self._len

    def read(self, size: int = -1):
        if self._i >= len(self._parts):
            return b""
        part = self._parts[self._i]
        if size is None or size < 0:
            size = len(part) - self._pos
        size = max(size, 4 << 20)  # http.client asks for 8 KiB; send bigger slices
        out = part[self._pos:self._pos + size]
        self._pos += len(out)
        if self._pos >= len(part):
            self._i += 1
            self._pos = 0
        return out


def _readinto_exact(reader, out: memoryview, what: str) -> None:
    pos, n = 0, len(out)
    while pos < n:
        got = reader.readinto(out[pos:pos + (8 << 20)])  # bounded temporary buffers
        if not got:
            raise StoreError(f"{what} is truncated: expected {n} bytes, got {pos}")
        pos += got


class HdfsStore(ArrayStore):
    """Arrays as files ``<root>/<namespace>/<key>`` in HDFS, through WebHDFS.

    ``webhdfs_url`` is the NameNode HTTP address (``SPARK_CNN_WEBHDFS``, e.g.
    ``http://127.0.0.1:19870``), ``user`` the HDFS user name and ``root`` an
    absolute HDFS folder (``SPARK_CNN_HDFS_ROOT``).  Files are written with
    replication 1, overwriting.  ``where`` is ignored by :meth:`get`.

    A server (the NameNode or a DataNode) that did not answer within
    ``timeout`` is not waited for again during the next ``timeout`` seconds:
    calls that need it fail at once with the same StoreTimeoutError.
    """

    def __init__(self, webhdfs_url: str, user: str, root: str, namespace: str,
                 timeout: float = DEFAULT_TIMEOUT):
        if not webhdfs_url or not webhdfs_url.startswith(("http://", "https://")):
            raise ValueError(f"bad WebHDFS URL {webhdfs_url!r}: expected http://host:port")
        if not root or not root.startswith("/"):
            raise ValueError(f"HDFS root must be an absolute path, got {root!r}")
        if not user:
            raise ValueError("an HDFS user name is required (SPARK_CNN_HDFS_USER)")
        self.webhdfs_url = webhdfs_url.rstrip("/")
        self.user = user
        self.root = posixpath.normpath(root)
        self.namespace = check_namespace(namespace)
        self.base = posixpath.join(self.root, self.namespace)
        self.timeout = float(timeout)
        self._client = _hdfs_client(self.webhdfs_url, user, self.timeout)
        self.last_get_address: str | None = None   # host of the DataNode that served the last get

    def __repr__(self) -> str:
        return f"HdfsStore({self.webhdfs_url!r}, root={self.root!r}, namespace={self.namespace!r})"

    def hdfs_path(self, relpath: str = "") -> str:
        """Absolute HDFS path of ``relpath`` under the namespace (prefix it with SPARK_CNN_HDFS)."""
        if relpath in ("", "."):
            return self.base
        return posixpath.join(self.base, check_key(relpath, "path"))

    def _server(self, exc: BaseException) -> str:
        """Which server a failed request went to: the NameNode or a DataNode, with its address."""
        request = getattr(exc, "request", None)
        netloc = urlsplit(getattr(request, "url", "") or "").netloc
        if not netloc or netloc == urlsplit(self.webhdfs_url).netloc:
            return f"the NameNode's WebHDFS at {self.webhdfs_url}"
        return f"the HDFS DataNode at {netloc}"

    def _call(self, what: str, fn, *args, **kwargs):
        """Run a WebHDFS call, turning failures into errors written for people."""
        import requests
        from hdfs.util import HdfsError

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.Timeout as e:
            raise StoreTimeoutError(
                f"{self._server(e)} did not answer within {self.timeout:g} s ({what}; stalled or "
                "overloaded?; SPARK_CNN_IO_TIMEOUT sets the limit)") from e
        except requests.exceptions.ConnectionError as e:
            raise StoreUnavailableError(
                f"cannot reach {self._server(e)} ({what}): {reason(e)}; {START_HINT}") from e
        except HdfsError as e:
            exception = getattr(e, "exception", None)
            if exception == "FileNotFoundException" or "does not exist" in str(e):
                raise MissingKeyError(f"{what}: no such file in HDFS at {self.webhdfs_url} "
                                      f"(namespace {self.namespace!r})") from None
            if exception == "AccessControlException" or "Permission denied" in str(e):
                first = str(e).splitlines()[0] if str(e) else exception
                raise StorePermissionError(
                    f"HDFS refused {what} to user {self.user!r}: {first}; give that user write "
                    "access to SPARK_CNN_HDFS_ROOT or set SPARK_CNN_HDFS_USER") from None
            raise StoreError(f"WebHDFS {what} failed: {e}") from e

    def _open(self, path: str):
        """GET the file's bytes as a stream, remembering the DataNode that serves them.

        The NameNode answers OPEN with a redirect to a DataNode holding the
        block (the reader's own node if it holds one): that host is the
        locality of the read.
        """
        from hdfs.util import HdfsError

        session, timeout = self._client._session, self.timeout
        url = f"{self.webhdfs_url}/webhdfs/v1{quote(path)}"
        response = session.get(url, params={"op": "OPEN", "user.name": self.user},
                               allow_redirects=False, timeout=timeout)
        if response.status_code in (301, 302, 303, 307, 308):
            location = response.headers["Location"]
            response.close()
            self.last_get_address = urlsplit(location).hostname
            response = session.get(location, stream=True, timeout=timeout)
        if response.status_code != 200:
            try:
                remote = response.json().get("RemoteException", {})
            except ValueError:
                remote = {}
            response.close()
            error = HdfsError(remote.get("message") or f"HTTP {response.status_code}")
            error.exception = remote.get("exception")
            raise error
        response.raw.decode_content = True
        return response

    def put(self, key: str, array) -> int:
        """Write ``array`` to ``hdfs_path(key)``; returns bytes written."""
        path = self.hdfs_path(check_key(key))
        body = _Body(list(encode(array)))
        n = len(body)
        self._call(f"writing {path}", self._client.write, path, data=body,
                   overwrite=True, replication=1)
        return n

    def get(self, key: str, where: str | None = None) -> np.ndarray:
        """Read the array stored under ``key``."""
        path = self.hdfs_path(check_key(key))
        what = f"HDFS file {path}"

        def read():
            with self._open(path) as response:
                reader = response.raw
                fixed = bytearray(FIXED_SIZE)
                _readinto_exact(reader, memoryview(fixed), what)
                ndim = fixed[5]
                rest = bytearray(8 * min(ndim, MAX_NDIM + 1))
                if fixed[:4] == MAGIC and ndim <= MAX_NDIM:
                    _readinto_exact(reader, memoryview(rest), what)
                dtype, shape, _ = parse_header(bytes(fixed) + bytes(rest), what)
                out = np.empty(shape, dtype=dtype)
                _readinto_exact(reader, data_view(out), what)
                if reader.read(1):
                    raise StoreError(f"{what} has trailing bytes after the array data")
                return out

        try:
            return self._call(f"reading {path}", read)
        except ValueError as e:
            raise StoreError(str(e)) from None

    def write_text(self, relpath: str, text: str) -> None:
        """Write a small UTF-8 text file (e.g. a heartbeat) at ``hdfs_path(relpath)``."""
        path = self.hdfs_path(relpath)
        self._call(f"writing {path}", self._client.write, path, data=text.encode("utf-8"),
                   overwrite=True, replication=1)

    def read_text(self, relpath: str) -> str:
        """Read a text file written by :meth:`write_text`; MissingKeyError if absent."""
        path = self.hdfs_path(relpath)

        def read():
            with self._client.read(path) as reader:
                return reader.read().decode("utf-8")

        return self._call(f"reading {path}", read)

    def list_dir(self, relpath: str = "") -> list[str]:
        """Sorted names in the folder ``relpath`` under the namespace ([] if it is absent)."""
        path = self.hdfs_path(relpath)
        try:
            return sorted(self._call(f"listing {path}", self._client.list, path))
        except MissingKeyError:
            return []

    def keys(self) -> list[str]:
        """Every file under the namespace folder, as paths relative to it."""
        def walk():
            out = []
            for dirpath, _dirs, files in self._client.walk(self.base):
                rel = posixpath.relpath(dirpath, self.base)
                out.extend(f if rel == "." else f"{rel}/{f}" for f in files)
            return out

        if self._call(f"checking {self.base}", self._client.status, self.base,
                      strict=False) is None:
            return []
        return sorted(self._call(f"listing {self.base}", walk))

    def delete(self, relpath: str) -> bool:
        """Remove one file under the namespace; False if it was not there."""
        path = self.hdfs_path(relpath)
        return bool(self._call(f"deleting {path}", self._client.delete, path))

    def delete_if_empty(self) -> bool:
        """Remove the namespace folder only if it holds nothing (one atomic HDFS call)."""
        try:
            return bool(self._call(f"deleting {self.base}", self._client.delete, self.base))
        except StoreError:          # not empty
            return False

    def namespaces(self) -> list[str]:
        """Sorted names of every namespace folder under the root (for clean-up of dead runs)."""
        try:
            return sorted(self._call(f"listing {self.root}", self._client.list, self.root))
        except MissingKeyError:
            return []

    def delete_all(self) -> int:
        """Remove the namespace folder recursively; returns 1 if it existed, else 0."""
        return int(bool(self._call(f"deleting {self.base}", self._client.delete,
                                   self.base, recursive=True)))
