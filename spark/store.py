"""Matrix storage for spark-cnn: NumPy arrays in Redis or HDFS, never pickled.

The forward and backward Spark stages hand layer matrices to each other
through an :class:`ArrayStore`.  Two implementations share one small
interface::

    store.put(key, array) -> int          # bytes written
    store.get(key, where=None) -> ndarray  # where: a hint (Redis address)
    store.keys() -> list[str]             # what is left under the namespace
    store.delete_all()                    # remove everything under the namespace
    store.close()

Every store is created with a ``namespace`` (a run id); two namespaces never
share a key.  Namespaces may use ``A-Z a-z 0-9 _ . -`` only.  Keys are
non-empty relative paths of the same characters plus ``/`` (no empty, ``.``
or ``..`` segments), so they map onto HDFS paths as well as Redis keys.

Array format (:func:`encode_array` / :func:`decode_array`)
---------------------------------------------------------
All integers little-endian::

    offset      size      field
    0           4         magic b"SCNA"
    4           1         format version, 1
    5           1         ndim, 0..64
    6           2         reserved, 0
    8           8         dtype string, ASCII, NUL-padded: b"<f4", b"|b1", b">i8", ...
    16          8*ndim    shape, one uint64 per axis
    16+8*ndim   ...       the data in C order: exactly prod(shape) * itemsize bytes

The header length is a multiple of 8, so the data stays 8-byte aligned.
Allowed dtypes: bool, int8..int64, uint8..uint64, float16/32/64,
complex64/128, in either byte order.  Nothing else (no object, string,
datetime or structured dtypes) is accepted, and nothing is ever unpickled.

Redis layout (:class:`RedisStore`)
---------------------------------
``spark-cnn:<namespace>:k:<key>`` holds a small record: b"SCNR", version,
chunk count, chunk size, a random 16-byte write token, then the array header
above.  Arrays of at most ``min(chunk_bytes, 1 MiB)`` data bytes are stored
inline after the header (one GET reads them).  Larger data is split into
``spark-cnn:<namespace>:c:<token hex>:<i>`` keys of ``chunk_bytes`` each
(Redis refuses values over 512 MB), written before the record so a reader
never sees a half-written array; an overwrite swaps the record atomically
(SET ... GET) and then drops the old token's chunks.

HDFS layout (:class:`HdfsStore`)
-------------------------------
``<root>/<namespace>/<key>`` holds the encoded array, replication 1.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import struct
import threading
import time
from typing import Iterable

import numpy as np

__all__ = [
    "ArrayStore",
    "RedisStore",
    "HdfsStore",
    "StoreError",
    "StoreUnavailableError",
    "MissingKeyError",
    "StoreTimeoutError",
    "StoreAuthError",
    "StorePermissionError",
    "encode_array",
    "decode_array",
    "encode_header",
    "parse_redis_addresses",
]

log = logging.getLogger(__name__)

START_HINT = "start it with scripts/services.sh start"
# Connect and read timeout of every Redis and WebHDFS call, seconds
# (SPARK_CNN_IO_TIMEOUT): a stalled server ends a run instead of hanging it.
DEFAULT_TIMEOUT = 30.0
# Redis keys expire after this many seconds as a last resort, should every
# clean-up be missed (SPARK_CNN_REDIS_TTL).
DEFAULT_TTL = 24 * 3600

# ---------------------------------------------------------------------------
# errors


class StoreError(Exception):
    """Base class of every error raised by this module."""


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


# ---------------------------------------------------------------------------
# array encoding

MAGIC = b"SCNA"
FORMAT_VERSION = 1
MAX_NDIM = 64
_FIXED = struct.Struct("<4sBBH8s")  # magic, version, ndim, reserved, dtype
assert _FIXED.size == 16


def _allowed_dtypes() -> frozenset[str]:
    names = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32",
             "int64", "uint64", "float16", "float32", "float64",
             "complex64", "complex128"]
    out = set()
    for name in names:
        dt = np.dtype(name)
        out.add(dt.newbyteorder("<").str)
        out.add(dt.newbyteorder(">").str)
    return frozenset(out)


ALLOWED_DTYPES = _allowed_dtypes()


def _check_dtype(dt: np.dtype) -> None:
    if dt.str not in ALLOWED_DTYPES:
        raise ValueError(
            f"dtype {dt} ({dt.str!r}) cannot be stored: only bool, int8..int64, "
            "uint8..uint64, float16/32/64 and complex64/128 arrays are supported")


def _as_c_array(array) -> np.ndarray:
    """The array as a C-contiguous ndarray with an allowed dtype (copy only if needed)."""
    a = np.asarray(array)
    _check_dtype(a.dtype)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # np.ascontiguousarray would turn 0-d into 1-d
    return a


def _data_view(a: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array, without copying."""
    return memoryview(a.reshape(-1).view(np.uint8))


def encode_header(array) -> bytes:
    """The header :func:`encode_array` puts in front of the data of ``array``."""
    a = np.asarray(array)
    _check_dtype(a.dtype)
    if a.ndim > MAX_NDIM:
        raise ValueError(f"arrays with more than {MAX_NDIM} dimensions are not supported")
    return (_FIXED.pack(MAGIC, FORMAT_VERSION, a.ndim, 0, a.dtype.str.encode("ascii"))
            + struct.pack(f"<{a.ndim}Q", *a.shape))


def encode_array(array) -> bytes:
    """Encode a numeric or bool array as header + raw C-order bytes (see module doc)."""
    a = _as_c_array(array)
    return encode_header(a) + a.tobytes()


def _parse_header(buf, what: str = "data") -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse a header at the start of ``buf``; returns (dtype, shape, header length)."""
    mv = memoryview(buf).cast("B")
    if len(mv) < _FIXED.size:
        raise ValueError(f"{what} is not an encoded array: {len(mv)} bytes is shorter "
                         f"than the {_FIXED.size}-byte header")
    magic, version, ndim, _reserved, dt_raw = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC:
        raise ValueError(f"{what} is not an encoded array: bad magic {bytes(magic)!r} "
                         f"(expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise ValueError(f"{what} uses array format version {version}; this code reads "
                         f"version {FORMAT_VERSION}")
    if ndim > MAX_NDIM:
        raise ValueError(f"{what} has a corrupt header: ndim {ndim} > {MAX_NDIM}")
    dt_str = dt_raw.rstrip(b"\0").decode("ascii", "replace")
    if dt_str not in ALLOWED_DTYPES:
        raise ValueError(f"{what} has an unknown or unsupported dtype {dt_str!r}")
    hlen = _FIXED.size + 8 * ndim
    if len(mv) < hlen:
        raise ValueError(f"{what} is truncated: the header needs {hlen} bytes, "
                         f"got {len(mv)}")
    shape = struct.unpack_from(f"<{ndim}Q", mv, _FIXED.size)
    if any(d >= 2**62 for d in shape):
        raise ValueError(f"{what} has a corrupt header: shape {shape}")
    return np.dtype(dt_str), tuple(int(d) for d in shape), hlen


def _nbytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n


def decode_array(data, copy: bool = True) -> np.ndarray:
    """Decode bytes made by :func:`encode_array`.

    Raises ValueError for a bad magic, version or dtype, and for truncated or
    overlong input.  With ``copy=False`` the result is a view of ``data``
    (read-only when ``data`` is ``bytes``); by default it owns its memory.
    """
    mv = memoryview(data).cast("B")
    dtype, shape, hlen = _parse_header(mv)
    need = _nbytes(dtype, shape)
    have = len(mv) - hlen
    if have != need:
        kind = "truncated" if have < need else "too long"
        raise ValueError(f"encoded array is {kind}: shape {shape} of {dtype.str} needs "
                         f"{need} data bytes, got {have}")
    a = np.frombuffer(mv, dtype=dtype, count=need // dtype.itemsize if dtype.itemsize else 0,
                      offset=hlen).reshape(shape)
    return a.copy() if copy else a


# ---------------------------------------------------------------------------
# names

_NS_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-/]{1,1000}$")


def _check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _NS_RE.match(namespace):
        raise ValueError(f"bad namespace {namespace!r}: use 1-200 characters from "
                         "A-Z a-z 0-9 _ . -")
    return namespace


def _check_key(key: str, what: str = "key") -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key) or any(
            seg in ("", ".", "..") for seg in key.split("/")):
        raise ValueError(f"bad {what} {key!r}: use a relative path of A-Z a-z 0-9 _ . - / "
                         "without empty, '.' or '..' segments")
    return key


# ---------------------------------------------------------------------------
# base class


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

    def close(self) -> None:
        """Release the store.  Connections are shared per process and stay open."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Redis

_HOSTPORT_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]+)):(?P<port>\d{1,5})$")


def _normalize_address(entry: str) -> str:
    entry = entry.strip()
    if not entry:
        raise ValueError("empty entry")
    if entry.startswith("unix://"):
        path = entry[len("unix://"):]
        if not path.startswith("/"):
            raise ValueError(f"{entry!r}: a unix socket must be written unix:///absolute/path")
        return "unix://" + posixpath.normpath(path)
    m = _HOSTPORT_RE.match(entry)
    if not m:
        raise ValueError(f"{entry!r} is neither host:port nor unix:///path")
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise ValueError(f"{entry!r}: port {port} is out of range")
    return entry


def parse_redis_addresses(text: str) -> list[str]:
    """Parse the comma-separated ``SPARK_CNN_REDIS`` form into a list of addresses.

    Entries are ``host:port`` (``[v6addr]:port`` for IPv6) or ``unix:///abs/path``;
    the local node comes first.  Duplicates are dropped, order kept.
    """
    if text is None or not str(text).strip():
        raise ValueError("no Redis address given: expected 'host:port[,host:port...]' "
                         "(e.g. SPARK_CNN_REDIS=127.0.0.1:6390)")
    out: list[str] = []
    for i, entry in enumerate(str(text).split(",")):
        try:
            addr = _normalize_address(entry)
        except ValueError as e:
            raise ValueError(f"bad Redis address list {text!r}: entry {i + 1}: {e}") from None
        if addr not in out:
            out.append(addr)
    return out


_REDIS_CLIENTS: dict = {}
_REDIS_LOCK = threading.Lock()
_INLINE_MAX = 1 << 20  # data up to this size is stored inside the record
_READ_PIECE = 4 << 20  # GETRANGE piece size when reading chunks
_READ_BATCH = 16       # pieces per pipeline round trip (bounds temporary memory)
_REC = struct.Struct("<4sBBHIQ16s")  # magic, version, flags, reserved, nchunks, chunk_bytes, token
_REC_MAGIC = b"SCNR"


# address -> time.monotonic() until which it counts as stalled (it timed out)
_STALLED_UNTIL: dict[str, float] = {}


def _redis_client(address: str, password: str | None = None, timeout: float = DEFAULT_TIMEOUT):
    """The process-wide client for ``address`` with this password and timeout.

    A broken connection (say, after the server restarted) is retried once; a
    timeout is not: a stalled server fails the call after ``timeout`` seconds.
    """
    key = (address, password, float(timeout), os.getpid())
    client = _REDIS_CLIENTS.get(key)
    if client is not None:
        return client
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with _REDIS_LOCK:
        client = _REDIS_CLIENTS.get(key)
        if client is None:
            common = dict(socket_connect_timeout=timeout, socket_timeout=timeout,
                          socket_read_size=1 << 20, password=password or None,
                          retry=Retry(NoBackoff(), 1,
                                      supported_errors=(redis.exceptions.ConnectionError,)),
                          health_check_interval=0)
            if address.startswith("unix://"):
                client = redis.Redis(unix_socket_path=address[len("unix://"):], **common)
            else:
                host, _, port = address.rpartition(":")
                client = redis.Redis(host=host.strip("[]"), port=int(port), **common)
            _REDIS_CLIENTS[key] = client
    return client


def _reason(exc: BaseException) -> str:
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


def _loopback(address: str) -> bool:
    """Whether a Redis address is a unix socket or a loopback address (one of scripts/services.sh)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return address.startswith("unix://") or host in ("localhost", "::1") or host.startswith("127.")


_WARNED: set = set()


def _warn_once(what: str, error: BaseException) -> None:
    """Log a skipped server once per process, not at every iteration."""
    if str(error) not in _WARNED:
        _WARNED.add(str(error))
        log.warning("%s: skipping %s", what, error)


def _redis_errors():
    import redis
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
            redis.exceptions.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError,
            redis.exceptions.NoPermissionError, OSError)


def _is_timeout(exc: BaseException) -> bool:
    import redis
    seen = exc
    while seen is not None:
        if isinstance(seen, (redis.exceptions.TimeoutError, TimeoutError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _auth_problem(exc: BaseException) -> str | None:
    """'authentication required' or 'the password was refused', if that is what went wrong."""
    import redis
    text = str(exc).lower()
    if isinstance(exc, redis.exceptions.AuthenticationError) or "noauth" in text \
            or "authentication required" in text:
        if "invalid" in text or "wrongpass" in text or "invalid password" in text:
            return "the password was refused"
        return "authentication required"
    if isinstance(exc, redis.exceptions.AuthenticationWrongNumberOfArgsError) or \
            "without any password configured" in text or "no password is set" in text:
        return "a password was given but the server has none set"
    if "wrongpass" in text or "invalid username-password" in text:
        return "the password was refused"
    return None


class RedisStore(ArrayStore):
    """Arrays in Redis; puts go to the local node, gets search the address list.

    ``addresses``: list such as ``["unix:///.../redis.sock", "127.0.0.1:6390",
    "10.0.0.2:6390"]`` (or the comma-separated string form), local node first.
    :meth:`put` always writes to ``addresses[0]``, exposed as
    :attr:`local_address`; pass that to :meth:`get` as ``where`` on the
    reading side to go straight to the right node.  :attr:`last_get_address`
    tells where the last successful :meth:`get` found its key.

    Data larger than ``chunk_bytes`` (default 256 MiB, below Redis's 512 MB
    value limit) is split over several keys and reassembled transparently.
    """

    def __init__(self, addresses: list[str] | str, namespace: str,
                 chunk_bytes: int = 256 * 2**20, password: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, ttl: int | None = DEFAULT_TTL):
        if isinstance(addresses, str):
            addresses = parse_redis_addresses(addresses)
        else:
            addresses = parse_redis_addresses(",".join(addresses))
        if not isinstance(chunk_bytes, int) or chunk_bytes < 1 or chunk_bytes > 512 * 2**20:
            raise ValueError(f"chunk_bytes must be between 1 and 512 MiB, got {chunk_bytes!r}")
        self.addresses: list[str] = addresses
        self.namespace = _check_namespace(namespace)
        self.chunk_bytes = chunk_bytes
        self.local_address: str = addresses[0]
        self.last_get_address: str | None = None
        self._prefix = f"spark-cnn:{namespace}:"
        self._password = password or None            # never shown: not in repr or errors
        self.timeout = float(timeout)
        self.ttl = int(ttl) if ttl else None

    def __repr__(self) -> str:
        return f"RedisStore({self.addresses!r}, namespace={self.namespace!r})"

    def client(self, address: str):
        """The redis-py client of one of the store's servers (password and timeout applied).

        A server that did not answer within the timeout is not waited for again
        during the next `timeout` seconds: calls to it fail at once (as a
        redis-py timeout), so that the clean-up after a stalled server costs no
        further timeouts.
        """
        until = _STALLED_UNTIL.get(address)
        if until is not None and time.monotonic() < until:
            import redis
            raise redis.exceptions.TimeoutError(f"Redis at {address} did not answer moments ago")
        return _redis_client(address, self._password, self.timeout)

    # -- key names
    def _record_key(self, key: str) -> bytes:
        return f"{self._prefix}k:{_check_key(key)}".encode()

    def _chunk_keys(self, token: bytes, nchunks: int) -> list[bytes]:
        base = f"{self._prefix}c:{token.hex()}:".encode()
        return [base + str(i).encode() for i in range(nchunks)]

    def _unavailable(self, address: str, exc: BaseException) -> StoreUnavailableError:
        auth = _auth_problem(exc)
        if auth:
            hint = ("set SPARK_CNN_REDIS_PASSWORD or SPARK_CNN_REDIS_PASSWORD_FILE"
                    if auth == "authentication required" or self._password is None else
                    "check SPARK_CNN_REDIS_PASSWORD / SPARK_CNN_REDIS_PASSWORD_FILE")
            return StoreAuthError(f"Redis at {address}: {auth}; {hint}")
        if _is_timeout(exc):
            _STALLED_UNTIL[address] = max(_STALLED_UNTIL.get(address, 0.0),
                                          time.monotonic() + self.timeout)
            return StoreTimeoutError(
                f"Redis at {address} did not answer within {self.timeout:g} s "
                "(stalled or overloaded?; SPARK_CNN_IO_TIMEOUT sets the limit)")
        hint = START_HINT if _loopback(address) else "is the server up and reachable from here?"
        return StoreUnavailableError(f"cannot reach Redis at {address}: {_reason(exc)}; {hint}")

    # -- put
    def put(self, key: str, array) -> int:
        """Write ``array`` to the local node (:attr:`local_address`); returns bytes written."""
        rkey = self._record_key(key)
        a = _as_c_array(array)
        header = encode_header(a)
        data = _data_view(a)
        n = len(data)
        cb = self.chunk_bytes
        address = self.local_address
        try:
            client = self.client(address)
            if n <= min(cb, _INLINE_MAX):
                record = _REC.pack(_REC_MAGIC, 1, 0, 0, 0, cb, bytes(16)) + header + data.tobytes()
                old = client.set(rkey, record, get=True, ex=self.ttl)
                written = len(record)
            else:
                token = os.urandom(16)
                nchunks = -(-n // cb)
                keys = self._chunk_keys(token, nchunks)
                self._set_many(client, keys, [data[i * cb:(i + 1) * cb] for i in range(nchunks)],
                               self.ttl)
                record = _REC.pack(_REC_MAGIC, 1, 0, 0, nchunks, cb, token) + header
                old = client.set(rkey, record, get=True, ex=self.ttl)
                written = len(record) + n
            if old is not None:
                self._drop_chunks(client, old)
        except _redis_errors() as e:
            raise self._unavailable(address, e) from e
        return written

    @staticmethod
    def _set_many(client, keys: list[bytes], values: list[memoryview], ttl: int | None) -> None:
        """Pipelined SETs (with EX ttl if given) that send the values straight from the array memory."""
        parts: list = []
        expiry = b"" if not ttl else b"$2\r\nEX\r\n$%d\r\n%d\r\n" % (len(str(ttl)), ttl)
        for k, v in zip(keys, values):
            parts.append(b"*%d\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n"
                         % (5 if ttl else 3, len(k), k, len(v)))
            parts.append(v)
            parts.append(b"\r\n" + expiry)
        pool = client.connection_pool
        conn = pool.get_connection()
        conn.connect()          # AUTH happens here, before the raw commands
        ok = False
        try:
            conn.send_packed_command(parts)
            errors = []
            for _ in keys:
                try:
                    conn.read_response()
                except Exception as e:  # noqa: BLE001 - collect server errors, keep reading
                    import redis
                    if not isinstance(e, redis.exceptions.ResponseError):
                        raise
                    errors.append(e)
            ok = True
            if errors:
                raise StoreError(f"Redis refused a chunk write: {errors[0]}")
        finally:
            if not ok:
                conn.disconnect()
            pool.release(conn)

    def _drop_chunks(self, client, old_record: bytes) -> None:
        try:
            magic, _v, _f, _r, nchunks, _cb, token = _REC.unpack_from(old_record, 0)
        except struct.error:
            return
        if magic == _REC_MAGIC and nchunks:
            keys = self._chunk_keys(token, nchunks)
            for i in range(0, len(keys), 1000):
                client.unlink(*keys[i:i + 1000])

    # -- get
    def get(self, key: str, where: str | None = None) -> np.ndarray:
        """Read ``key``: from ``where`` first if given, then from each address in order."""
        rkey = self._record_key(key)
        order = list(self.addresses)
        if where:
            hint = _normalize_address(where)
            order = [hint] + [a for a in order if a != hint]
        searched, down, failures = [], [], []
        for address in order:
            try:
                a = self._get_from(address, rkey, key)
            except _redis_errors() as e:
                failure = self._unavailable(address, e)
                if isinstance(failure, StoreAuthError):
                    raise failure from None
                failures.append(failure)
                down.append(f"{address} ({_reason(e)})")
                continue
            if a is not None:
                self.last_get_address = address
                return a
            searched.append(address)
        if not searched:
            if len(failures) == 1:
                raise failures[0]
            raise StoreUnavailableError(
                f"cannot read {key!r}: no Redis server reachable: {', '.join(down)}; {START_HINT}")
        msg = (f"key {key!r} not found in namespace {self.namespace!r} on Redis "
               f"{', '.join(searched)}")
        if down:
            msg += f" (unreachable: {', '.join(down)})"
        raise MissingKeyError(msg)

    def _get_from(self, address: str, rkey: bytes, key: str) -> np.ndarray | None:
        client = self.client(address)
        for _attempt in range(3):
            record = client.get(rkey)
            if record is None:
                return None
            what = f"Redis record of {key!r} at {address}"
            if len(record) < _REC.size:
                raise StoreError(f"{what} is corrupt ({len(record)} bytes)")
            magic, version, _f, _r, nchunks, cb, token = _REC.unpack_from(record, 0)
            if magic != _REC_MAGIC or version != 1:
                raise StoreError(f"{what} is not a spark-cnn array record")
            body = memoryview(record)[_REC.size:]
            if nchunks == 0:
                try:
                    return decode_array(body)
                except ValueError as e:
                    raise StoreError(f"{what}: {e}") from None
            try:
                dtype, shape, hlen = _parse_header(body, what)
            except ValueError as e:
                raise StoreError(str(e)) from None
            out = np.empty(shape, dtype=dtype)
            if self._read_chunks(client, self._chunk_keys(token, nchunks), cb, _data_view(out)):
                return out
            # the key was overwritten while we read it: read the new record
        raise StoreError(f"{key!r} at {address} kept changing while being read")

    @staticmethod
    def _read_chunks(client, keys: list[bytes], cb: int, out: memoryview) -> bool:
        """Fill ``out`` from the chunk keys; False if a chunk is missing or short."""
        n = len(out)
        if len(keys) != -(-n // cb):
            raise StoreError(f"record lists {len(keys)} chunks for {n} bytes of {cb}")
        piece = min(_READ_PIECE, cb)
        plan = []  # (key, start, end, out offset)
        for i, k in enumerate(keys):
            base = i * cb
            size = min(cb, n - base)
            for s in range(0, size, piece):
                e = min(s + piece, size)
                plan.append((k, s, e, base + s))
        for b in range(0, len(plan), _READ_BATCH):
            batch = plan[b:b + _READ_BATCH]
            pipe = client.pipeline(transaction=False)
            for k, s, e, _ in batch:
                pipe.getrange(k, s, e - 1)
            for (k, s, e, off), value in zip(batch, pipe.execute()):
                if len(value) != e - s:
                    return False
                out[off:off + len(value)] = value
        return True

    # -- listing / cleanup
    def _scan(self, client, pattern: str) -> Iterable[bytes]:
        return client.scan_iter(match=pattern, count=1000)

    def keys(self) -> list[str]:
        """Keys stored under the namespace on every reachable address."""
        found: set[str] = set()
        start = len(self._prefix) + 2
        for address in self.addresses:
            try:
                for k in self._scan(self.client(address), f"{self._prefix}k:*"):
                    found.add(k.decode()[start:])
            except _redis_errors() as e:
                _warn_once("keys()", self._unavailable(address, e))
        return sorted(found)

    def check(self) -> None:
        """PING every server; raise the error of the first that does not answer properly."""
        for address in self.addresses:
            try:
                self.client(address).ping()
            except _redis_errors() as e:
                raise self._unavailable(address, e) from None

    def namespaces(self) -> set[str]:
        """Names of every namespace with keys on a reachable server (for clean-up of dead runs)."""
        found: set[str] = set()
        for address in self.addresses:
            try:
                for k in self._scan(self.client(address), "spark-cnn:*"):
                    parts = k.decode(errors="replace").split(":")
                    if len(parts) > 2:
                        found.add(parts[1])
            except _redis_errors() as e:
                _warn_once("namespaces()", self._unavailable(address, e))
        return found

    def delete_all(self) -> int:
        """Delete every Redis key of the namespace (SCAN + UNLINK on every address).

        Unreachable addresses are skipped with a warning; returns how many
        Redis keys (records and chunks) were removed.
        """
        removed = 0
        for address in self.addresses:
            try:
                client = self.client(address)
                batch: list[bytes] = []
                for k in self._scan(client, f"{self._prefix}*"):
                    batch.append(k)
                    if len(batch) >= 1000:
                        removed += client.unlink(*batch)
                        batch = []
                if batch:
                    removed += client.unlink(*batch)
            except _redis_errors() as e:
                _warn_once("clean-up", self._unavailable(address, e))
        return removed


# ---------------------------------------------------------------------------
# HDFS

_HDFS_CLIENTS: dict = {}


def _hdfs_client(url: str, user: str, timeout: float):
    key = (url, user, timeout, os.getpid())  # no HTTP connection shared across fork()
    client = _HDFS_CLIENTS.get(key)
    if client is None:
        from hdfs import InsecureClient

        with _REDIS_LOCK:
            client = _HDFS_CLIENTS.get(key)
            if client is None:
                client = InsecureClient(url, user=user, timeout=timeout)
                _HDFS_CLIENTS[key] = client
    return client


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
        self.namespace = _check_namespace(namespace)
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
        return posixpath.join(self.base, _check_key(relpath, "path"))

    def _server(self, exc: BaseException) -> str:
        """Which server a failed request went to: the NameNode or a DataNode, with its address."""
        from urllib.parse import urlsplit

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
                f"cannot reach {self._server(e)} ({what}): {_reason(e)}; {START_HINT}") from e
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
        from urllib.parse import quote, urlsplit

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
        path = self.hdfs_path(_check_key(key))
        a = _as_c_array(array)
        body = _Body([encode_header(a), _data_view(a)])
        n = len(body)
        self._call(f"writing {path}", self._client.write, path, data=body,
                   overwrite=True, replication=1)
        return n

    def get(self, key: str, where: str | None = None) -> np.ndarray:
        """Read the array stored under ``key``."""
        path = self.hdfs_path(_check_key(key))
        what = f"HDFS file {path}"

        def read():
            with self._open(path) as response:
                reader = response.raw
                fixed = bytearray(_FIXED.size)
                _readinto_exact(reader, memoryview(fixed), what)
                ndim = fixed[5]
                rest = bytearray(8 * min(ndim, MAX_NDIM + 1))
                if fixed[:4] == MAGIC and ndim <= MAX_NDIM:
                    _readinto_exact(reader, memoryview(rest), what)
                dtype, shape, _ = _parse_header(bytes(fixed) + bytes(rest), what)
                out = np.empty(shape, dtype=dtype)
                _readinto_exact(reader, _data_view(out), what)
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
