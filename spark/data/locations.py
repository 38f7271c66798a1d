"""Where data files are: a local folder, or HDFS read through WebHDFS.

    files, path = locate("hdfs://namenode:8020/data/cifar", options)
    files.kind(path)          -> "file", "folder" or None (no such path)
    files.list(path)          -> [(name, is_folder)], sorted by name
    files.stat(path)          -> (size in bytes, modification time)
    files.open(path, size)    -> a seekable binary file object
    files.url(path)           -> the path as people write it, for messages

Path forms: a local path; ``hdfs://host:port/path``, whose host:port is the
NameNode's RPC address and so is not used: the file is read through the
WebHDFS address ``options.webhdfs`` (--webhdfs, SPARK_CNN_WEBHDFS); or
``webhdfs://host:port/path``, read through ``http://host:port``.

On HDFS, ``open`` gives a :class:`RangeFile`: every read is a WebHDFS range
read (the ``offset``/``length`` of the ``hdfs`` client's ``read``), which the
NameNode sends to a DataNode holding the block (the reader's own node when it
holds one). ``RangeFile.prefetch`` fetches a byte range in one request, so
that Parquet's reads of a row group's column chunks cost one round trip.

WebHDFS calls go through the project's client of spark/storage/hdfs_store.py
(one per process and settings, with its timeout and the memory of stalled
servers) and their failures become a one-line :class:`DataError`.
"""
from __future__ import annotations

import getpass
import io
import os
import posixpath
import threading
from urllib.parse import urlsplit

from .dataset import DataError

__all__ = ["Files", "RangeFile", "locate"]


def locate(text, options) -> tuple[Files, str]:
    """The files holding `text` (a local path, hdfs:// or webhdfs:// URL) and the path
    in them. `options` is a DataOptions (its webhdfs, hdfs_user (default: you) and timeout)."""
    text = os.fspath(text)
    if not text.startswith(("hdfs://", "webhdfs://")):
        return Files(), text
    parts = urlsplit(text)
    path = posixpath.normpath(parts.path or "/")
    if parts.scheme == "webhdfs":
        if not parts.netloc:
            raise DataError(f"{text}: a webhdfs:// path needs the WebHDFS host:port "
                            "(webhdfs://host:port/path)")
        webhdfs = f"http://{parts.netloc}"
    else:
        webhdfs = (options.webhdfs or "").rstrip("/")
        if not webhdfs:
            raise DataError(f"{text}: reading HDFS needs the NameNode's WebHDFS address: give "
                            "--webhdfs http://host:port (or SPARK_CNN_WEBHDFS), or write the "
                            "path as webhdfs://host:port/path")
        if not webhdfs.startswith(("http://", "https://")):
            raise DataError(f"bad WebHDFS address {webhdfs!r}: expected http://host:port")
    prefix = f"{parts.scheme}://{parts.netloc}"
    # the user is fixed here, not in each reader: Spark tasks may run as another OS user
    user = options.hdfs_user or getpass.getuser()
    return Files(webhdfs, user, float(options.timeout), prefix), path


class Files:
    """Local files (no arguments) or the files of an HDFS, through the WebHDFS address
    `webhdfs` as `user`, each call limited to `timeout` seconds. `prefix` is the
    scheme and host of the paths as people gave them (for messages).

    `settings` is a tuple of plain values that `Files(*settings)` turns back into
    the same files: what a pickled reader carries instead of this object.
    """

    def __init__(self, webhdfs: str = "", user: str = "", timeout: float = 30.0,
                 prefix: str = ""):
        self.webhdfs = webhdfs
        self.user = user
        self.timeout = float(timeout)
        self.prefix = prefix

    @property
    def settings(self) -> tuple:
        return (self.webhdfs, self.user, self.timeout, self.prefix)

    @property
    def remote(self) -> bool:
        return bool(self.webhdfs)

    def __repr__(self) -> str:
        return f"Files({self.webhdfs!r}, user={self.user!r})" if self.remote else "Files()"

    def url(self, path: str) -> str:
        """`path` as people wrote it: with its hdfs:// or webhdfs:// prefix if remote."""
        return f"{self.prefix}{path}" if self.remote else path

    def join(self, folder: str, name: str) -> str:
        return posixpath.join(folder, name) if self.remote else os.path.join(folder, name)

    def name(self, path: str) -> str:
        return posixpath.basename(path) if self.remote else os.path.basename(path)

    # -- what is there ---------------------------------------------------------

    def kind(self, path: str) -> str | None:
        """"file", "folder", or None if nothing is at `path`."""
        if not self.remote:
            if os.path.isdir(path):
                return "folder"
            return "file" if os.path.exists(path) else None
        status = self._call(f"looking up {self.url(path)}", self._client().status, path,
                            strict=False)
        if status is None:
            return None
        return "folder" if status.get("type") == "DIRECTORY" else "file"

    def list(self, path: str) -> list[tuple[str, bool]]:
        """The (name, is_folder) of every entry of the folder `path`, sorted by name."""
        if not self.remote:
            try:
                with os.scandir(path) as entries:
                    return sorted((e.name, e.is_dir()) for e in entries)
            except OSError as e:
                raise DataError(f"{path}: cannot list the folder ({e.strerror or e})") from None
        found = self._call(f"listing {self.url(path)}", self._client().list, path, status=True)
        return sorted((name, status.get("type") == "DIRECTORY") for name, status in found)

    def stat(self, path: str) -> tuple[int, int]:
        """(size in bytes, modification time: ns locally, ms on HDFS) of the file `path`."""
        if not self.remote:
            try:
                st = os.stat(path)
            except OSError as e:
                raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
            return st.st_size, st.st_mtime_ns
        status = self._call(f"looking up {self.url(path)}", self._client().status, path)
        return int(status["length"]), int(status["modificationTime"])

    def open(self, path: str, size: int):
        """A seekable binary file object reading `path`, a file of `size` bytes."""
        if not self.remote:
            try:
                return open(path, "rb")
            except OSError as e:
                raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
        return RangeFile(self, path, size)

    # -- WebHDFS ---------------------------------------------------------------

    def _client(self):
        # The project's WebHDFS client: one per process and settings, stall-aware.
        from spark.storage.hdfs_store import _hdfs_client
        return _hdfs_client(self.webhdfs, self.user, self.timeout)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """`length` bytes of the file `path` from `offset`: one WebHDFS range read."""
        what = f"reading {self.url(path)}"

        def read():
            with self._client().read(path, offset=offset, length=length) as reader:
                data = reader.read()
            if len(data) != length:
                raise DataError(f"{self.url(path)}: expected {length} bytes at offset {offset}, "
                                f"got {len(data)} (was the file changed while being read?)")
            return data

        return self._call(what, read)

    def _call(self, what: str, fn, *args, **kwargs):
        """Run a WebHDFS call; its failures become one-line DataErrors."""
        import requests
        from hdfs.util import HdfsError

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.Timeout as e:
            raise DataError(f"{self._server(e)} did not answer within {self.timeout:g} s ({what};"
                            " stalled or overloaded?; SPARK_CNN_IO_TIMEOUT sets the limit)"
                            ) from None
        except requests.exceptions.ConnectionError as e:
            from spark.storage.store import reason
            raise DataError(f"cannot reach {self._server(e)} ({what}): {reason(e)}; check "
                            "--webhdfs (SPARK_CNN_WEBHDFS) and that HDFS is running") from None
        except HdfsError as e:
            text = str(e).splitlines()[0] if str(e) else str(getattr(e, "exception", "") or "")
            exception = getattr(e, "exception", None)
            if exception == "FileNotFoundException" or "does not exist" in text:
                raise DataError(f"{what}: no such file or folder in HDFS") from None
            if exception == "AccessControlException" or "Permission denied" in text:
                raise DataError(f"HDFS refused {what} to user {self.user or 'you'!r}: {text}; "
                                "set --hdfs-user (SPARK_CNN_HDFS_USER)") from None
            raise DataError(f"WebHDFS failed {what}: {text}") from None

    def _server(self, exc: BaseException) -> str:
        request = getattr(exc, "request", None)
        netloc = urlsplit(getattr(request, "url", "") or "").netloc
        if not netloc or netloc == urlsplit(self.webhdfs).netloc:
            return f"the NameNode's WebHDFS at {self.webhdfs}"
        return f"the HDFS DataNode at {netloc}"


class RangeFile(io.RawIOBase):
    """A file of `size` bytes on HDFS, read by WebHDFS range reads.

    A read inside the window fetched last is served from memory; any other read
    fetches exactly the bytes asked for (no read-ahead: pyarrow asks for whole
    column chunks, and reading a label column must not pull in the images
    between its chunks). `prefetch(start, end)` fetches a byte range in one
    request; `fetches` counts the requests. One object is for one thread (as a
    local file object is).
    """

    def __init__(self, files: Files, path: str, size: int):
        super().__init__()
        self._files = files
        self._path = path
        self._size = int(size)
        self._pos = 0
        self._window_start = 0
        self._window = b""
        self.fetches = 0
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def size(self) -> int:
        return self._size

    def prefetch(self, start: int, end: int) -> None:
        """Fetch bytes start..end (end excluded) in one request, for the reads that follow."""
        start, end = max(0, start), min(self._size, end)
        if end > start:
            self._fetch(start, end - start)

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
            if end <= self._pos:
                return b""
            start = self._pos
            if not (self._window_start <= start
                    and end <= self._window_start + len(self._window)):
                self._fetch(start, end - start)
            at = start - self._window_start
            self._pos = end
            return self._window[at:at + end - start]

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def _fetch(self, start: int, length: int) -> None:
        self._window = self._files.read_range(self._path, start, length)
        self._window_start = start
        self.fetches += 1
