"""Images in Parquet files, read a row group at a time: :class:`ParquetImages`.

    images = ParquetImages(files, parts, shape=(N, H, W, C), fit=None)
    images[10:20], images[np.array([3, 999])], images[[5, 6]]   # -> uint8 (n, H, W, C)

`ParquetImages` behaves like the (N, H, W, C) uint8 array of the images of
one split (`len`, `.shape`, `.dtype`, `.ndim`, `.nbytes`, indexing by an int,
a slice, an int or bool array or a list of ints; `chunks()` for a pass over
all) without holding it: an index reads only the row groups that hold the
rows asked for, decodes them (parquet_decode.py), and keeps the decoded row
groups in a per-process cache, least recently used first out, bounded in
bytes by SPARK_CNN_PARQUET_CACHE_MB (default 2048; 0: no cache). Two threads
asking for the same row group wait for one read of it.

It pickles as a small descriptor and never as images: the files' settings
(WebHDFS address, user, timeout), for each file its path, size, modification
time, image layout and the rows of each of its row groups used, the shape and
the resize. A Spark broadcast of it is a few hundred bytes per file, and each
task reads the row groups it needs from the files themselves (on HDFS, one
WebHDFS range read per row group, served by a DataNode holding it).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import astuple

import numpy as np

from .dataset import DataError
from .locations import Files
from .parquet_decode import Layout, decode_rows

__all__ = ["ParquetImages", "cache_budget", "cache_info", "clear_cache", "open_parquet",
           "row_group_span"]

CACHE_ENV = "SPARK_CNN_PARQUET_CACHE_MB"
DEFAULT_CACHE_MB = 2048


# --------------------------------------------------------------------------------------
# The per-process cache of decoded row groups, and of file footers

class _Cache:
    """Decoded row groups, least recently used first out, bounded by SPARK_CNN_PARQUET_CACHE_MB.

    `get(key, load)` returns the cached array or `load()`'s; while one thread loads a
    key, the others asking for it wait for that load instead of repeating it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: OrderedDict = OrderedDict()
        self._loading: dict = {}
        self.bytes = 0
        self.hits = 0
        self.loads = 0

    def get(self, key, load) -> np.ndarray:
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return self._items[key]
                event = self._loading.get(key)
                if event is None:
                    event = self._loading[key] = threading.Event()
                    break
            event.wait()    # another thread is loading it: take its result (or retry on failure)
        try:
            value = load()
            value.flags.writeable = False       # shared by every caller: nobody changes it
            with self._lock:
                self.loads += 1
                self._keep(key, value)
            return value
        finally:
            with self._lock:
                del self._loading[key]
            event.set()

    def peek(self, key):
        """The cached array of `key` or None; neither loads nor counts a hit."""
        with self._lock:
            return self._items.get(key)

    def _keep(self, key, value: np.ndarray) -> None:
        budget = cache_budget()
        if value.nbytes > budget:
            return
        self._items[key] = value
        self.bytes += value.nbytes
        while self.bytes > budget:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = self.hits = self.loads = 0

    def after_fork(self) -> None:
        """In a forked child (a PySpark worker): new locks, no loads in flight (their
        threads are not in the child); the cached row groups stay."""
        self._lock = threading.Lock()
        self._loading = {}


def cache_budget() -> int:
    """The decoded row-group cache's size limit in bytes (SPARK_CNN_PARQUET_CACHE_MB)."""
    text = os.environ.get(CACHE_ENV, "").strip()
    if not text:
        return DEFAULT_CACHE_MB << 20
    try:
        megabytes = float(text)
    except ValueError:
        raise ValueError(f"{CACHE_ENV}={text!r}: expected a number of megabytes") from None
    return max(0, int(megabytes * (1 << 20)))


_CACHE = _Cache()
_FOOTERS: OrderedDict = OrderedDict()    # (files settings, path, size, mtime) -> FileMetaData
_FOOTERS_LOCK = threading.Lock()
_MAX_FOOTERS = 256


def _after_fork() -> None:
    global _FOOTERS_LOCK
    _CACHE.after_fork()
    _FOOTERS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def cache_info() -> dict:
    """This process's cache: {"entries", "bytes", "budget", "hits", "loads"} (loads: row
    groups read and decoded)."""
    with _CACHE._lock:
        return {"entries": len(_CACHE._items), "bytes": _CACHE.bytes, "budget": cache_budget(),
                "hits": _CACHE.hits, "loads": _CACHE.loads}


def clear_cache() -> None:
    """Forget this process's decoded row groups and file footers (and zero the counts)."""
    _CACHE.clear()
    with _FOOTERS_LOCK:
        _FOOTERS.clear()


@contextmanager
def open_parquet(files: Files, path: str, size: int, mtime: int):
    """A context giving the pyarrow.parquet.ParquetFile of the file `path` (`size` bytes, last
    changed at `mtime`) and its file object (None for a local file); the footer is parsed
    once per process. DataError if the file is not Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    key = (files.settings, path, size, mtime)
    with _FOOTERS_LOCK:
        metadata = _FOOTERS.get(key)
    handle = files.open(path, size) if files.remote else None
    try:
        try:
            parquet = pq.ParquetFile(handle if handle is not None else path, metadata=metadata)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{files.url(path)}: not a Parquet file ({_first_line(e)})") from None
        if metadata is None:
            with _FOOTERS_LOCK:
                _FOOTERS[key] = parquet.metadata
                while len(_FOOTERS) > _MAX_FOOTERS:
                    _FOOTERS.popitem(last=False)
        with parquet:
            yield parquet, handle
    finally:
        if handle is not None:
            handle.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def row_group_span(metadata, group: int, columns) -> tuple[int, int]:
    """(start, end) bytes of the file holding row group `group`'s chunks of `columns`."""
    row_group = metadata.row_group(group)
    start, end = None, 0
    for j in range(row_group.num_columns):
        chunk = row_group.column(j)
        if chunk.path_in_schema.split(".")[0] not in columns:
            continue
        first = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset:
            first = min(first, chunk.dictionary_page_offset)
        start = first if start is None else min(start, first)
        end = max(end, first + chunk.total_compressed_size)
    return (start or 0), end


# --------------------------------------------------------------------------------------
# The lazy images

class ParquetImages:
    """The (N, H, W, C) uint8 images of Parquet files, read a row group at a time.

    files: a locations.Files (local or WebHDFS); parts: for each file, a tuple
    (path, size, mtime, layout, rows) where layout is a Layout and rows the
    number of rows used of each of its row groups, in order (the last ones may
    be cut short or left out by a limit); shape: (N, H, W, C) with N the sum of
    the rows; fit: None, or ((H, W), crop) to resize images of other sizes.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, files: Files, parts, shape, fit=None):
        self._files = files
        self._parts = tuple((str(p), int(s), int(m), layout if isinstance(layout, Layout)
                             else Layout(*layout), tuple(int(r) for r in rows))
                            for p, s, m, layout, rows in parts)
        self.shape = tuple(int(s) for s in shape)
        self._fit = None if fit is None else (tuple(int(s) for s in fit[0]), bool(fit[1]))
        groups = [(f, g, rows) for f, part in enumerate(self._parts)
                  for g, rows in enumerate(part[4]) if rows > 0]
        self._group_file = np.array([f for f, _, _ in groups], dtype=np.int64)
        self._group_index = np.array([g for _, g, _ in groups], dtype=np.int64)
        self._group_rows = np.array([r for _, _, r in groups], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._group_rows)]).astype(np.int64)
        if self._starts[-1] != self.shape[0]:
            raise ValueError(f"ParquetImages: the row groups hold {self._starts[-1]} rows, "
                             f"shape says {self.shape[0]}")

    # -- pickling: a descriptor, never the images ------------------------------

    def __getstate__(self) -> dict:
        return {"files": self._files.settings,
                "parts": tuple((p, s, m, astuple(layout), rows)
                               for p, s, m, layout, rows in self._parts),
                "shape": self.shape, "fit": self._fit}

    def __setstate__(self, state: dict) -> None:
        self.__init__(Files(*state["files"]), state["parts"], state["shape"], state["fit"])

    # -- the array interface -----------------------------------------------------

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    @property
    def files(self) -> list[str]:
        """The files read, as people wrote their paths."""
        return [self._files.url(part[0]) for part in self._parts]

    @property
    def row_groups(self) -> int:
        """The number of row groups the images are read from."""
        return len(self._group_rows)

    def __repr__(self) -> str:
        files = self.files
        where = files[0] if len(files) == 1 else f"{len(files)} files from {files[0]}"
        return f"ParquetImages(shape={self.shape}, {self.row_groups} row groups, {where})"

    def __array__(self, dtype=None, copy=None):
        """All the images, read into memory (np.asarray(images))."""
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        """images[i] -> (H, W, C); images[slice], images[int array or list] -> (n, H, W, C);
        an int array of shape S gives S + (H, W, C); a bool array picks its True rows."""
        n = len(self)
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            index = int(key) + n if key < 0 else int(key)
            if not 0 <= index < n:
                raise IndexError(f"image {key} is out of range for {n} images")
            return self._take(np.array([index], dtype=np.int64))[0]
        if isinstance(key, slice):
            return self._take(np.arange(*key.indices(n), dtype=np.int64))
        if isinstance(key, tuple):
            raise IndexError("ParquetImages takes one index (an int, a slice or an int array)")
        index = np.asarray(key)
        if index.dtype == np.bool_:
            if index.shape != (n,):
                raise IndexError(f"boolean index of shape {index.shape} for {n} images")
            return self._take(np.flatnonzero(index))
        if index.size == 0:
            index = index.astype(np.int64)
        if not np.issubdtype(index.dtype, np.integer):
            raise IndexError(f"images can be indexed by ints, slices and int or bool arrays, "
                             f"not {index.dtype}")
        index = np.where(index < 0, index + n, index).astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= n):
            bad = np.asarray(key).ravel()[np.flatnonzero((index.ravel() < 0)
                                                         | (index.ravel() >= n))[0]]
            raise IndexError(f"image {bad} is out of range for {n} images")
        return self._take(index.ravel()).reshape(index.shape + self.shape[1:])

    def _take(self, index: np.ndarray) -> np.ndarray:
        """uint8 (len(index), H, W, C) for row numbers 0 <= index < N."""
        out = np.empty((len(index),) + self.shape[1:], dtype=np.uint8)
        if not len(index):
            return out
        group = np.searchsorted(self._starts, index, side="right") - 1
        order = np.argsort(group, kind="stable")
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        for positions in np.split(order, bounds):
            g = int(group[positions[0]])
            block = self._row_group(g)
            out[positions] = block[index[positions] - self._starts[g]]
        return out

    def chunks(self):
        """The images in order, a row group at a time: uint8 (rows, H, W, C) arrays. A row
        group not in the cache is read for this pass only (not kept): a pass over data
        bigger than the cache (spark.data.preprocess.channel_stats) does not flush it."""
        for g in range(self.row_groups):
            key = self._key(g)
            block = _CACHE.peek(key)
            yield block if block is not None else self._read_group(g)

    # -- reading ---------------------------------------------------------------

    def _key(self, g: int) -> tuple:
        """The cache key of the g-th row group used: its file (settings, path, size, mtime),
        index and rows, and how it is decoded."""
        part = self._parts[self._group_file[g]]
        return (self._files.settings[:3], part[0], part[1], part[2], int(self._group_index[g]),
                int(self._group_rows[g]), part[3], self.shape[1:], self._fit)

    def _row_group(self, g: int) -> np.ndarray:
        """The decoded images of the g-th row group used: uint8 (rows, H, W, C), cached."""
        return _CACHE.get(self._key(g), lambda: self._read_group(g))

    def _read_group(self, g: int) -> np.ndarray:
        part = self._parts[self._group_file[g]]
        return self._read(part, int(self._group_index[g]), int(self._group_rows[g]))

    def _read(self, part, group: int, rows: int) -> np.ndarray:
        import pyarrow as pa

        path, size, mtime, layout, _ = part
        url = self._files.url(path)
        if not self._files.remote:
            now = self._files.stat(path)
            if now != (size, mtime):
                raise DataError(f"{url} changed since it was opened; load the data again")
        with open_parquet(self._files, path, size, mtime) as (parquet, handle):
            if handle is not None:
                handle.prefetch(*row_group_span(parquet.metadata, group, layout.columns))
            try:
                table = parquet.read_row_group(group, columns=layout.columns)
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"{url}: cannot read row group {group} ({_first_line(e)})"
                                ) from None
        first = sum(part[4][:group])

        def where(i):
            return f"{url} row {first + int(i)}"

        return decode_rows(table.slice(0, rows), layout, self.shape[1:], self._fit, where)
