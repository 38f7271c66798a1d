"""Where a Spark run keeps the matrices its forward stage leaves for its backward stage.

`ExchangeConfig` is a small picklable description that travels to the
executors; `open_matrix_store` and `open_marker_store` turn it into the stores
of `spark.store` inside a task. Keys and paths live under the run's id, so runs
sharing a Redis or an HDFS never collide, and `clear_run` removes all of a run.
"""
import json
import os
import socket
from dataclasses import dataclass

from .store import HdfsStore, RedisStore, parse_redis_addresses

# Marker files are padded to this many bytes: equal sizes make
# sc.wholeTextFiles give every marker (every batch) its own partition.
MARKER_BYTES = 4096


@dataclass(frozen=True)
class ExchangeConfig:
    """Everything a task needs to reach the run's storage."""

    kind: str            # "hdfs" or "redis": where the matrices go
    run_id: str
    webhdfs: str
    hdfs: str
    hdfs_user: str
    hdfs_root: str
    redis: tuple = ()

    def marker_url(self, folder):
        """hdfs:// URL of a folder of marker files, for sc.wholeTextFiles."""
        return self.hdfs.rstrip("/") + open_marker_store(self).hdfs_path(folder)


def _is_local(address):
    """Whether a Redis address names this machine (a unix socket here, loopback, our name)."""
    if address.startswith("unix://"):
        return os.path.exists(address[len("unix://"):])
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "::1") or host.startswith("127."):
        return True
    try:
        names = {socket.gethostname(), socket.getfqdn()}
        mine = {socket.gethostbyname(n) for n in names}
    except OSError:
        return False
    return host in names or host in mine


def local_first(addresses):
    """The Redis addresses with this node's own server(s) first, the rest in their order.

    One SPARK_CNN_REDIS list serves every node of a cluster: each task puts its
    matrices into the server on its own machine and reads there first.
    """
    local = [a for a in addresses if _is_local(a)]
    return local + [a for a in addresses if a not in local]


def open_matrix_store(config):
    """The store for layer matrices: HDFS files or the local node's Redis."""
    if config.kind == "redis":
        return RedisStore(local_first(list(config.redis)), namespace=config.run_id)
    if config.kind == "hdfs":
        return open_marker_store(config)
    raise ValueError(f"unknown matrix store {config.kind!r} (use hdfs or redis)")


def open_marker_store(config):
    """The HDFS store that holds the run's marker files (and, for kind hdfs, its matrices)."""
    return HdfsStore(config.webhdfs, config.hdfs_user, config.hdfs_root, namespace=config.run_id)


def exchange_config(kind, run_id, settings):
    redis = tuple(parse_redis_addresses(settings.redis)) if kind == "redis" else ()
    return ExchangeConfig(kind=kind, run_id=run_id, webhdfs=settings.webhdfs, hdfs=settings.hdfs,
                          hdfs_user=settings.hdfs_user, hdfs_root=settings.hdfs_root, redis=redis)


def encode_marker(record):
    """A marker record (JSON-ready dict) as text padded to MARKER_BYTES."""
    text = json.dumps(record, sort_keys=True)
    if len(text) >= MARKER_BYTES:
        raise ValueError(f"marker of {len(text)} bytes exceeds {MARKER_BYTES}")
    return text + " " * (MARKER_BYTES - len(text))


def decode_marker(text):
    return json.loads(text)


def clear_run(config):
    """Delete every matrix and marker of the run (idempotent)."""
    open_marker_store(config).delete_all()
    if config.kind == "redis":
        RedisStore(list(config.redis), namespace=config.run_id).delete_all()
