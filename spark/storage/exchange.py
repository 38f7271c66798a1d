"""Where a Spark run keeps the matrices its forward stage leaves for its backward stage.

`ExchangeConfig` is a small picklable description that travels to the
executors; `open_matrix_store` turns it into a `spark.storage.store.ArrayStore` inside
a task: HDFS files (kind "hdfs") or the Redis server of the task's own node
(kind "redis"). Keys and paths live under the run's id, so runs sharing a
Redis or an HDFS never collide, and `clear_run` removes all of a run.
"""
import functools
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field

from . import hdfs_store as _hdfs
from . import redis_store as _redis
from .hdfs_store import HdfsStore
from .redis_store import RedisStore, parse_redis_addresses
from .store import DEFAULT_TIMEOUT


@dataclass(frozen=True)
class ExchangeConfig:
    """Everything a task needs to reach the run's storage."""

    kind: str            # "hdfs" or "redis": where the matrices go ("spark", "none": nowhere)
    run_id: str
    webhdfs: str
    hdfs_user: str
    hdfs_root: str
    redis: tuple = ()
    io_timeout: float = DEFAULT_TIMEOUT
    # Travels inside the tasks' closures: never in Spark's UI, logs or environment.
    redis_password: str = field(default=None, repr=False)


@functools.lru_cache(maxsize=256)
def is_local_host(host):
    """Whether `host` (a name or an address) is this machine, as seen from this network namespace.

    An address is ours if we can bind a socket to it: true for loopback and
    for the addresses of our own interfaces, whatever the (shared) host name says.
    """
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        if ipaddress.ip_address(ip.split("%")[0]).is_loopback:
            return True
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((ip, 0))
                return True
            except OSError:
                continue
    return False


def address_is_local(address):
    """Whether `address` (unix:///path, host:port, [v6]:port or a bare host) is on this node."""
    if address.startswith("unix://"):
        return os.path.exists(address[len("unix://"):])
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.startswith("[")):
        host = address                              # a bare host name or IPv6 address
    return is_local_host(host.strip("[]"))


def local_first(addresses):
    """The Redis addresses with this node's own server(s) first, the rest in their order.

    One SPARK_CNN_REDIS list serves every node of a cluster: each task puts its
    matrices into the server on its own machine and reads there first.
    """
    local = [a for a in addresses if address_is_local(a)]
    return local + [a for a in addresses if a not in local]


def open_matrix_store(config):
    """The store for layer matrices: HDFS files or the local node's Redis."""
    if config.kind == "redis":
        return redis_store(config, local_first(list(config.redis)))
    if config.kind == "hdfs":
        return hdfs_store(config)
    raise ValueError(f"unknown matrix store {config.kind!r} (use hdfs or redis)")


def hdfs_store(config, namespace=None):
    """The run's (or another namespace's) folder in HDFS."""
    return HdfsStore(config.webhdfs, config.hdfs_user, config.hdfs_root,
                     namespace=namespace or config.run_id, timeout=config.io_timeout)


def redis_store(config, addresses=None, namespace=None):
    """A RedisStore on the run's servers (or `addresses`) under the run's (or another) namespace."""
    return RedisStore(list(addresses or config.redis), namespace=namespace or config.run_id,
                      password=config.redis_password, timeout=config.io_timeout)


def exchange_config(kind, run_id, settings):
    redis = tuple(parse_redis_addresses(settings.redis)) if kind == "redis" else ()
    return ExchangeConfig(kind=kind, run_id=run_id, webhdfs=settings.webhdfs,
                          hdfs_user=settings.hdfs_user, hdfs_root=settings.hdfs_root, redis=redis,
                          io_timeout=settings.io_timeout, redis_password=settings.redis_password)


def clear_run(config):
    """Delete every matrix of the run (idempotent)."""
    open_matrix_store(config).delete_all()


_REDIS_STALL = re.compile(r"Redis at (\S+) did not answer within")
_HDFS_STALL = re.compile(r"(?:HDFS DataNode at|NameNode's WebHDFS at \w+://)([\w.\-\[\]:]+) "
                         r"did not answer within")


def note_stalls(text, seconds):
    """Remember the servers a failed Spark task's error says stalled (Redis or WebHDFS),
    so that this process's clean-up skips them instead of waiting for each again."""
    for address in _REDIS_STALL.findall(text):
        _redis.remember_stalled(address, seconds)
    for server in _HDFS_STALL.findall(text):
        _hdfs.remember_stalled(server, seconds)
