"""Arrays in Redis: :class:`RedisStore` and its helpers (addresses, clients, stall memory).

Layout: ``spark-cnn:<namespace>:k:<key>`` holds a small record: b"SCNR",
version, chunk count, chunk size, a random 16-byte write token, then the
array header of :mod:`spark.storage.wire`.  Arrays of at most ``min(chunk_bytes, 1
MiB)`` data bytes are stored inline after the header (one GET reads them).
Larger data is split into ``spark-cnn:<namespace>:c:<token hex>:<i>`` keys of
``chunk_bytes`` each (Redis refuses values over 512 MB), written before the
record so a reader never sees a half-written array; an overwrite swaps the
record atomically (SET ... GET) and then drops the old token's chunks.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import struct
import threading
from typing import Iterable

import numpy as np

from .store import (
    DEFAULT_TIMEOUT,
    START_HINT,
    ArrayStore,
    MissingKeyError,
    StallMemory,
    StoreAuthError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    check_key,
    check_namespace,
    reason,
)
from .wire import data_view, decode_array, encode, parse_header

__all__ = ["RedisStore", "parse_redis_addresses"]

log = logging.getLogger(__name__)

# Redis keys expire after this many seconds as a last resort, should every
# clean-up be missed.
DEFAULT_TTL = 24 * 3600

_HOSTPORT_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]+))"
                          r":(?P<port>\d{1,5})$")


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


# Redis servers that timed out moments ago, by server (see _server_of)
_STALLED = StallMemory()
# address -> the server's run_id: one server may be listed under several
# addresses (a unix socket and a TCP port, say); a stall of one is a stall of all
_SERVER_IDS: dict[str, str] = {}


def _server_of(address: str) -> str:
    """The server behind an address, as far as this process knows it."""
    return _SERVER_IDS.get(address, address)


def remember_stalled(address: str, seconds: float) -> None:
    """Count the Redis server at ``address`` (all its addresses) as stalled for ``seconds``:
    for what a Spark task found out, so that the driver's clean-up does not wait for it."""
    _STALLED.remember(_server_of(address), seconds)


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


def _loopback(address: str) -> bool:
    """Whether a Redis address is a unix socket or a loopback one (as in scripts/services.sh)."""
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
            redis.exceptions.AuthenticationError,
            redis.exceptions.AuthenticationWrongNumberOfArgsError,
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
        self.namespace = check_namespace(namespace)
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
        if _STALLED.stalled(_server_of(address)):
            import redis
            raise redis.exceptions.TimeoutError(f"Redis at {address} did not answer moments ago")
        return _redis_client(address, self._password, self.timeout)

    # -- key names
    def _record_key(self, key: str) -> bytes:
        return f"{self._prefix}k:{check_key(key)}".encode()

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
            _STALLED.remember(_server_of(address), self.timeout)
            return StoreTimeoutError(
                f"Redis at {address} did not answer within {self.timeout:g} s "
                "(stalled or overloaded?; SPARK_CNN_IO_TIMEOUT sets the limit)")
        hint = START_HINT if _loopback(address) else "is the server up and reachable from here?"
        return StoreUnavailableError(f"cannot reach Redis at {address}: {reason(exc)}; {hint}")

    # -- put
    def put(self, key: str, array) -> int:
        """Write ``array`` to the local node (:attr:`local_address`); returns bytes written."""
        rkey = self._record_key(key)
        header, data = encode(array)
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
        """Pipelined SETs (EX ttl if given), sending the values straight from the array memory."""
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
                except Exception as e:  # collect server errors, keep reading; re-raise the rest
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
                down.append(f"{address} ({reason(e)})")
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
                dtype, shape, hlen = parse_header(body, what)
            except ValueError as e:
                raise StoreError(str(e)) from None
            out = np.empty(shape, dtype=dtype)
            if self._read_chunks(client, self._chunk_keys(token, nchunks), cb, data_view(out)):
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
            for (_, s, e, off), value in zip(batch, pipe.execute()):
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
        """PING every server; raise the error of the first that does not answer properly.

        Also learns which addresses lead to the same server (its run_id), so that
        a stall seen on one of them is not waited for again on another."""
        for address in self.addresses:
            try:
                client = self.client(address)
                client.ping()
                _SERVER_IDS[address] = "redis:" + str(client.info("server")["run_id"])
            except _redis_errors() as e:
                raise self._unavailable(address, e) from None
            except (KeyError, TypeError):
                pass                                   # a server that does not say: by address

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
