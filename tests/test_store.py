"""The array wire format (spark/storage/wire.py) and the stores (spark/storage/redis_store.py,
spark/storage/hdfs_store.py) against the real Redis and HDFS servers (see tests/conftest.py)."""

from __future__ import annotations

import pickle
import shutil
import socket
import subprocess
import time
import uuid

import numpy as np
import pytest
import redis

from spark.storage.hdfs_store import HdfsStore
from spark.storage.redis_store import RedisStore, parse_redis_addresses
from spark.storage.store import MissingKeyError, StoreError, StoreUnavailableError
from spark.storage.wire import decode_array, encode

# ---------------------------------------------------------------- helpers


def new_ns() -> str:
    """A namespace no other test (or concurrent test run) uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


def raw_client(address: str) -> redis.Redis:
    if address.startswith("unix://"):
        return redis.Redis(unix_socket_path=address[len("unix://"):])
    host, _, port = address.rpartition(":")
    return redis.Redis(host=host, port=int(port))


def raw_keys(address: str, pattern: str) -> list[bytes]:
    with raw_client(address) as c:
        return sorted(c.scan_iter(match=pattern, count=1000))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_address(addresses: list[str]) -> str:
    return next(a for a in addresses if not a.startswith("unix://"))


@pytest.fixture
def rstore(redis_addresses):
    stores = []

    def make(addresses=None, ns=None, **kw):
        s = RedisStore(addresses or redis_addresses, ns or new_ns(), **kw)
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.delete_all()


@pytest.fixture
def hstore(hdfs_settings):
    s = HdfsStore(hdfs_settings.webhdfs, hdfs_settings.user, hdfs_settings.root, new_ns())
    yield s
    s.delete_all()


@pytest.fixture(scope="module")
def second_redis(tmp_path_factory):
    """A second, throw-away redis-server on another port (a 'remote' node)."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server not on PATH (scripts/services.sh start installs it)"
    d = tmp_path_factory.mktemp("redis2")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(d), "--daemonize", "no", "--logfile", str(d / "redis.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with raw_client(address) as c:
                    c.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("second redis-server did not start: "
                                f"{(d / 'redis.log').read_text()}")
                time.sleep(0.05)
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------- encoding

DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64", "complex64", "complex128", ">f8", ">i4", ">u2"]
SHAPES = [(), (0,), (3, 0, 2), (7,), (2, 3, 4), (1, 1, 1, 1, 5)]


def sample(dtype, shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt.newbyteorder("="),
                            endpoint=True).astype(dt)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return (rng.standard_normal(shape) * 1000).astype(dt)


def encode_array(a) -> bytes:
    """The whole encoding of ``a``: what the stores send, header then data."""
    header, data = encode(a)
    return header + data.tobytes()


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_encode_decode_round_trip(dtype, shape):
    a = sample(dtype, shape)
    blob = encode_array(a)
    assert isinstance(blob, bytes)
    assert blob[:4] == b"SCNA"
    assert len(blob) == 16 + 8 * len(shape) + a.nbytes
    assert blob[16 + 8 * len(shape):] == a.tobytes()
    b = decode_array(blob)
    assert_same(a, b)
    assert b.flags.writeable and b.flags.c_contiguous


def test_encode_non_contiguous_and_views():
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    for v in (a.T, a[:, ::2], np.asfortranarray(a), a[1:3]):
        assert_same(np.ascontiguousarray(v), decode_array(encode_array(v)))
    zero_d = np.float64(2.5)
    out = decode_array(encode_array(zero_d))
    assert out.shape == () and out.dtype == np.float64 and out[()] == 2.5
    header, data = encode(a)
    assert np.shares_memory(np.frombuffer(data, np.uint8), a)  # sent from the array itself


@pytest.mark.parametrize("bad", [
    np.array(["a", "b"]), np.array([object(), 1], dtype=object),
    np.zeros(2, dtype="datetime64[s]"), np.zeros(2, dtype=[("x", "<f4")]),
])
def test_encode_rejects_non_numeric(bad):
    with pytest.raises(ValueError, match="cannot be stored"):
        encode_array(bad)


def _with_dtype(blob: bytes, dt: bytes) -> bytes:
    return blob[:8] + dt.ljust(8, b"\0") + blob[16:]


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"NOPE" + b[4:], "bad magic"),
    (lambda b: b[:10], "shorter than"),
    (lambda b: b"", "shorter than"),
    (lambda b: b[:20], "truncated"),           # header says ndim=2: shape cut short
    (lambda b: b[:-1], "truncated"),           # one data byte missing
    (lambda b: b + b"\0", "too long"),
    (lambda b: b[:4] + b"\x02" + b[5:], "version 2"),
    (lambda b: _with_dtype(b, b"|O8"), "unsupported dtype"),
    (lambda b: _with_dtype(b, b"<U4"), "unsupported dtype"),
    (lambda b: _with_dtype(b, b"zz\xff"), "unsupported dtype"),
    (lambda b: b[:5] + b"\xff" + b[6:], "ndim 255"),
])
def test_decode_rejects_bad_input(mutate, message):
    blob = encode_array(np.arange(6, dtype="<f4").reshape(2, 3))
    with pytest.raises(ValueError, match=message):
        decode_array(mutate(blob))


def test_decode_never_unpickles(monkeypatch):
    """An .npy/pickle payload is refused, and no pickle function is ever called."""
    def boom(*a, **k):
        raise AssertionError("pickle used")

    for name in ("loads", "load", "dumps", "dump", "Unpickler", "Pickler"):
        monkeypatch.setattr(pickle, name, boom)
    a = np.arange(10, dtype=np.int64)
    assert_same(a, decode_array(encode_array(a)))
    with pytest.raises(ValueError):
        decode_array(b"\x80\x04\x95" + bytes(40))


# ---------------------------------------------------------------- addresses

def test_parse_redis_addresses():
    assert parse_redis_addresses("127.0.0.1:6390") == ["127.0.0.1:6390"]
    assert parse_redis_addresses(" unix:///tmp/r.sock , 127.0.0.1:6390,10.0.0.2:1,127.0.0.1:6390") \
        == ["unix:///tmp/r.sock", "127.0.0.1:6390", "10.0.0.2:1"]
    assert parse_redis_addresses("[::1]:6390") == ["[::1]:6390"]
    for bad, msg in [("", "no Redis address"), ("a:1,,b:2", "entry 2"), ("localhost", "neither"),
                     ("h:0", "out of range"), ("h:70000", "out of range"),
                     ("unix://rel/x.sock", "absolute"), ("redis://h:1", "neither")]:
        with pytest.raises(ValueError, match=msg):
            parse_redis_addresses(bad)


def test_bad_names_rejected(redis_addresses):
    for ns in ("", "a:b", "a*", "a/b", "x" * 201):
        with pytest.raises(ValueError, match="namespace"):
            RedisStore(redis_addresses, ns)
    s = RedisStore(redis_addresses, new_ns())
    for key in ("", "/abs", "a//b", "../x", "a b", "k:1"):
        with pytest.raises(ValueError, match="key"):
            s.put(key, np.zeros(1))


# ---------------------------------------------------------------- redis

@pytest.mark.parametrize("which", ["first", "tcp", "unix"])
def test_redis_put_get_round_trip(rstore, redis_addresses, which, monkeypatch):
    if which == "tcp":
        addresses = [tcp_address(redis_addresses)]
    elif which == "unix":
        addresses = [a for a in redis_addresses if a.startswith("unix://")]
        if not addresses:
            pytest.fail("SPARK_CNN_REDIS has no unix:// entry; services.sh should export one")
    else:
        addresses = redis_addresses
    s = rstore(addresses)
    assert s.local_address == addresses[0]
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle used"))
    for i, (dtype, shape) in enumerate([("float32", (3, 4)), ("int64", ()), ("bool", (0, 5)),
                                        ("complex128", (2, 2)), ("float64", (300, 500))]):
        a = sample(dtype, shape, seed=i)
        written = s.put(f"layer{i}/w", a)
        assert written >= a.nbytes + 16 + 8 * a.ndim
        assert_same(a, s.get(f"layer{i}/w"))
        assert s.last_get_address == addresses[0]
    assert s.keys() == [f"layer{i}/w" for i in range(5)]
    # overwrite with a different dtype and shape
    s.put("layer0/w", np.ones(7, dtype=np.uint8))
    assert_same(np.ones(7, dtype=np.uint8), s.get("layer0/w"))


def test_redis_missing_key_error(rstore, redis_addresses):
    s = rstore()
    with pytest.raises(KeyError) as info:
        s.get("no/such/key")
    assert isinstance(info.value, MissingKeyError)
    text = str(info.value)
    assert "no/such/key" in text
    for address in redis_addresses:
        assert address in text


def _chunk_keys(address, ns):
    return raw_keys(address, f"spark-cnn:{ns}:c:*")


@pytest.mark.parametrize("nbytes, chunks", [
    (0, 0), (1, 0), (63, 0), (64, 0),  # up to chunk_bytes: stored inline in the record
    (65, 2), (128, 2), (129, 3), (640, 10), (64 * 37 + 1, 38),
])
def test_redis_chunk_boundaries(rstore, redis_addresses, nbytes, chunks):
    s = rstore(chunk_bytes=64)
    a = np.frombuffer(np.random.default_rng(nbytes).bytes(nbytes), dtype=np.uint8).copy()
    written = s.put("m", a)
    assert written >= nbytes + 16 + 8  # record + header + data
    assert len(_chunk_keys(s.local_address, s.namespace)) == chunks
    assert_same(a, s.get("m"))


def test_redis_many_tiny_chunks(rstore, redis_addresses):
    s = rstore(chunk_bytes=7)
    a = np.random.default_rng(1).standard_normal((25, 10)).astype(np.float32)  # 1000 bytes
    s.put("w", a)
    keys = _chunk_keys(s.local_address, s.namespace)
    assert len(keys) == 143  # ceil(1000 / 7)
    with raw_client(s.local_address) as c:
        assert max(len(c.get(k)) for k in keys) == 7
    assert_same(a, s.get("w"))
    # a reader configured with another chunk size still reads it (size is in the record)
    other = RedisStore(redis_addresses, s.namespace, chunk_bytes=1000)
    assert_same(a, other.get("w"))


def test_redis_large_value_default_chunking(rstore):
    s = rstore()  # 256 MiB chunks; 3 MiB is above the 1 MiB inline limit -> 1 chunk key
    a = np.random.default_rng(2).standard_normal(3 * 2**18).astype(np.float32)
    assert s.put("big", a) > a.nbytes
    assert len(_chunk_keys(s.local_address, s.namespace)) == 1
    assert_same(a, s.get("big"))


def test_redis_value_above_the_512_mb_limit_round_trips(rstore):
    s = rstore()  # default 256 MiB chunks
    size = 600 * 2**20                            # above Redis's 512 MB value limit
    a = np.tile(np.arange(251, dtype=np.uint8), size // 251 + 1)[:size]
    assert s.put("huge", a) > size
    assert len(_chunk_keys(s.local_address, s.namespace)) == 3
    b = s.get("huge")
    assert b.shape == a.shape and np.array_equal(a, b)
    del b
    s.delete_all()
    assert _chunk_keys(s.local_address, s.namespace) == []


def test_redis_overwrite_drops_old_chunks(rstore):
    s = rstore(chunk_bytes=100)
    s.put("w", np.zeros(250, dtype=np.float64))  # 2000 bytes -> 20 chunks
    assert len(_chunk_keys(s.local_address, s.namespace)) == 20
    s.put("w", np.ones(50, dtype=np.float64))    # 400 bytes -> 4 chunks
    assert len(_chunk_keys(s.local_address, s.namespace)) == 4
    assert_same(np.ones(50), s.get("w"))
    s.put("w", np.int8(3))                        # inline
    assert _chunk_keys(s.local_address, s.namespace) == []
    assert s.get("w")[()] == 3


def test_redis_namespaces_do_not_collide(rstore):
    a, b = rstore(ns=new_ns()), rstore(ns=new_ns())
    a.put("w", np.full(3, 1.0))
    b.put("w", np.full(3, 2.0))
    a.put("only-a", np.zeros(1))
    assert a.get("w")[0] == 1.0 and b.get("w")[0] == 2.0
    with pytest.raises(MissingKeyError):
        b.get("only-a")
    assert a.keys() == ["only-a", "w"] and b.keys() == ["w"]
    a.delete_all()
    assert a.keys() == []
    assert b.get("w")[0] == 2.0
    # a namespace that is a prefix of another is still separate
    p = rstore(ns=a.namespace[:-1])
    p.put("w", np.zeros(2))
    a.put("w", np.ones(2))
    p.delete_all()
    assert_same(np.ones(2), a.get("w"))


def test_redis_delete_all_leaves_nothing(rstore, redis_addresses):
    ns = new_ns()
    s = rstore(ns=ns, chunk_bytes=16)
    for i in range(5):
        s.put(f"k{i}", np.arange(40 * i, dtype=np.int32))
    s.put("nested/a/b", np.zeros((2, 2)))
    tcp = tcp_address(redis_addresses)
    assert len(raw_keys(tcp, f"spark-cnn:{ns}:*")) > 6
    removed = s.delete_all()
    assert removed > 6
    assert raw_keys(tcp, f"*{ns}*") == []
    assert s.keys() == []
    assert s.delete_all() == 0


def test_redis_get_falls_back_across_addresses(rstore, redis_addresses, second_redis):
    main = tcp_address(redis_addresses)
    ns = new_ns()
    on_second = rstore([second_redis, main], ns=ns)  # "remote" node: writes to second_redis
    on_main = rstore([main, second_redis], ns=ns)    # local node: writes to main
    assert on_second.local_address == second_redis
    on_second.put("only-remote", np.arange(5))
    assert raw_keys(main, f"spark-cnn:{ns}:*") == []
    # not on the first address -> found on the second
    assert_same(np.arange(5), on_main.get("only-remote"))
    assert on_main.last_get_address == second_redis
    # same key on both nodes: the address order decides, unless 'where' says otherwise
    on_main.put("both", np.array([1.0]))
    on_second.put("both", np.array([2.0]))
    assert on_main.get("both")[0] == 1.0 and on_main.last_get_address == main
    assert on_main.get("both", where=second_redis)[0] == 2.0
    assert on_main.last_get_address == second_redis
    assert on_second.get("both")[0] == 2.0
    # an unreachable address in front of the list is skipped
    dead = f"127.0.0.1:{free_port()}"
    behind = RedisStore([dead, main], ns)
    assert behind.get("both")[0] == 1.0
    with pytest.raises(MissingKeyError, match=dead):
        behind.get("nope")
    # chunked values are read from the remote node too
    big = rstore([second_redis, main], ns=ns, chunk_bytes=64)
    big.put("chunked", np.arange(1000, dtype=np.int16))
    assert_same(np.arange(1000, dtype=np.int16), on_main.get("chunked"))
    # keys() and delete_all() see every address
    assert on_main.keys() == ["both", "chunked", "only-remote"]
    on_main.delete_all()
    assert raw_keys(main, f"*{ns}*") == [] and raw_keys(second_redis, f"*{ns}*") == []


def test_redis_unreachable_message():
    s = RedisStore([f"127.0.0.1:{free_port()}"], new_ns())
    with pytest.raises(StoreUnavailableError,
                       match=r"cannot reach Redis at 127\.0\.0\.1:\d+: connection refused; "
                             r"start it with scripts/services.sh start"):
        s.put("w", np.zeros(3))
    with pytest.raises(ConnectionError):
        s.get("w")


# ---------------------------------------------------------------- hdfs

@pytest.mark.parametrize("dtype, shape", [("float32", (64, 33)), ("int8", ()), ("float64", (0, 3)),
                                          ("bool", (5,)), (">i4", (2, 2, 2)), ("complex64", (3,))])
def test_hdfs_put_get_round_trip(hstore, dtype, shape):
    a = sample(dtype, shape)
    assert hstore.put("layer/w", a) == len(encode_array(a))
    assert_same(a, hstore.get("layer/w"))
    # the file holds exactly the documented encoding
    with hstore._client.read(hstore.hdfs_path("layer/w")) as r:
        assert r.read() == encode_array(a)


def test_hdfs_overwrite_missing_and_paths(hstore, hdfs_settings):
    hstore.put("w", np.zeros(4))
    hstore.put("w", np.arange(3, dtype=np.int16))
    assert_same(np.arange(3, dtype=np.int16), hstore.get("w"))
    with pytest.raises(KeyError, match="nope"):
        hstore.get("nope")
    assert hstore.hdfs_path() == f"{hdfs_settings.root.rstrip('/')}/{hstore.namespace}"
    assert hstore.hdfs_path("a/b") == f"{hstore.hdfs_path()}/a/b"
    status = hstore._client.status(hstore.hdfs_path("w"))
    assert status["replication"] == 1


def test_hdfs_text_helpers(hstore):
    assert hstore.list_dir("markers") == []
    hstore.write_text("markers/epoch-1.done", "ok ✓\n")
    hstore.write_text("markers/epoch-2.done", "")
    hstore.write_text("markers/epoch-1.done", "overwritten")
    assert hstore.read_text("markers/epoch-1.done") == "overwritten"
    assert hstore.read_text("markers/epoch-2.done") == ""
    assert hstore.list_dir("markers") == ["epoch-1.done", "epoch-2.done"]
    with pytest.raises(MissingKeyError):
        hstore.read_text("markers/epoch-3.done")


def test_hdfs_namespaces_and_delete_all(hdfs_settings):
    a = HdfsStore(hdfs_settings.webhdfs, hdfs_settings.user, hdfs_settings.root, new_ns())
    b = HdfsStore(hdfs_settings.webhdfs, hdfs_settings.user, hdfs_settings.root, new_ns())
    try:
        a.put("w", np.full(2, 1.0))
        b.put("w", np.full(2, 2.0))
        a.put("x/y", np.zeros(1))
        a.write_text("done", "1")
        assert a.keys() == ["done", "w", "x/y"] and b.keys() == ["w"]
        assert a.get("w")[0] == 1.0 and b.get("w")[0] == 2.0
        assert a.delete_all() == 1
        assert a._client.status(a.hdfs_path(), strict=False) is None
        assert a.keys() == [] and a.list_dir() == []
        assert b.get("w")[0] == 2.0
        assert a.delete_all() == 0
    finally:
        a.delete_all()
        b.delete_all()


def test_hdfs_unreachable_message(hdfs_settings):
    s = HdfsStore(f"http://127.0.0.1:{free_port()}", "u", "/spark-cnn", new_ns())
    with pytest.raises(StoreUnavailableError,
                       match="cannot reach the NameNode's WebHDFS at .*services.sh start"):
        s.put("w", np.zeros(1))


def test_hdfs_corrupt_file_rejected(hstore):
    hstore.write_text("w", "this is not an array")
    with pytest.raises(StoreError, match="bad magic"):
        hstore.get("w")
    blob = encode_array(np.arange(10, dtype=np.float32))
    hstore._client.write(hstore.hdfs_path("t"), data=blob[:-3], overwrite=True)
    with pytest.raises(StoreError, match="truncated"):
        hstore.get("t")
    hstore._client.write(hstore.hdfs_path("t"), data=blob + b"x", overwrite=True)
    with pytest.raises(StoreError, match="trailing"):
        hstore.get("t")
