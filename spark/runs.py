"""Runs sharing the servers: each live run's heartbeat, and clean-up of what dead runs left.

A Spark run keeps its matrices under its run id in Redis or HDFS and deletes
them after every iteration and at the end. A driver killed with SIGKILL
cannot: so every live run keeps a heartbeat next to its data, refreshed by a
thread of the driver, and a starting run deletes the data of every run whose
heartbeat is missing, older than STALE_AFTER seconds, or names a process of
this machine that no longer exists.

Heartbeats: in Redis, the key ``spark-cnn-run:<run id>`` on every server, with
an expiry of STALE_AFTER seconds; in HDFS, the file ``<root>/.runs/<run id>``.
Both hold JSON: {"host", "boot", "pid", "time"}.
"""
import json
import logging
import os
import socket
import threading
import time

import psutil

from .exchange import hdfs_store, redis_store
from .store import MissingKeyError

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 10.0      # seconds between refreshes
STALE_AFTER = 120.0         # a heartbeat this old belongs to a dead run
REDIS_PREFIX = "spark-cnn-run:"
HDFS_FOLDER = ".runs"


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def this_process():
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid()}


def _process_gone(beat):
    """True when the heartbeat names a process of this machine (same boot) that has exited."""
    me = this_process()
    if beat.get("host") != me["host"] or beat.get("boot") != me["boot"] or not beat.get("pid"):
        return False
    try:
        return psutil.Process(int(beat["pid"])).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, ValueError, OverflowError):
        return False


def is_dead(beat, now=None):
    """Whether a run with this heartbeat (None: none found) has lost its driver."""
    if not beat:
        return True
    now = time.time() if now is None else now
    return _process_gone(beat) or now - float(beat.get("time", 0)) > STALE_AFTER


class _RedisBeats:
    def __init__(self, config):
        self.store = redis_store(config)

    def write(self, run_id, beat):
        text = json.dumps(beat)
        for address in self.store.addresses:
            try:
                self.store._client(address).set(REDIS_PREFIX + run_id, text, ex=int(STALE_AFTER))
            except Exception as e:  # noqa: BLE001 - a down server is reported by the stages
                log.debug("heartbeat on %s failed: %s", address, e)

    def read(self, run_id):
        """The newest heartbeat of a run on any server (None if none)."""
        newest = None
        for address in self.store.addresses:
            try:
                raw = self.store._client(address).get(REDIS_PREFIX + run_id)
            except Exception:  # noqa: BLE001
                continue
            beat = _parse(raw)
            if beat and (newest is None or beat["time"] > newest["time"]):
                newest = beat
        return newest

    def delete(self, run_id):
        for address in self.store.addresses:
            try:
                self.store._client(address).delete(REDIS_PREFIX + run_id)
            except Exception:  # noqa: BLE001
                pass

    def runs_with_data(self):
        return self.store.namespaces()

    def remove_data(self, config, run_id):
        redis_store(config, namespace=run_id).delete_all()


class _HdfsBeats:
    def __init__(self, config):
        self.store = hdfs_store(config)

    def _path(self, run_id):
        return f"{self.store.root.rstrip('/')}/{HDFS_FOLDER}/{run_id}"

    def write(self, run_id, beat):
        store = self.store
        store._call(f"writing {self._path(run_id)}", store._client.write, self._path(run_id),
                    data=json.dumps(beat).encode(), overwrite=True, replication=1)

    def read(self, run_id):
        store = self.store

        def read():
            with store._client.read(self._path(run_id)) as reader:
                return reader.read()

        try:
            return _parse(store._call(f"reading {self._path(run_id)}", read))
        except MissingKeyError:
            return None

    def delete(self, run_id):
        store = self.store
        store._call(f"deleting {self._path(run_id)}", store._client.delete, self._path(run_id))
        folder = f"{store.root.rstrip('/')}/{HDFS_FOLDER}"
        try:          # the folder goes with its last heartbeat (only if empty: others may be live)
            store._call(f"deleting {folder}", store._client.delete, folder, recursive=False)
        except Exception:  # noqa: BLE001 - not empty: another run is live
            pass

    def runs_with_data(self):
        store = self.store
        names = store._call(f"listing {store.root}", store._client.list, store.root) \
            if store._call(f"checking {store.root}", store._client.status, store.root,
                           strict=False) else []
        beats = store._call("listing heartbeats", store._client.list,
                            f"{store.root.rstrip('/')}/{HDFS_FOLDER}") \
            if store._call("checking heartbeats", store._client.status,
                           f"{store.root.rstrip('/')}/{HDFS_FOLDER}", strict=False) else []
        return {n for n in names if n != HDFS_FOLDER} | set(beats)

    def remove_data(self, config, run_id):
        store = self.store
        path = f"{store.root.rstrip('/')}/{run_id}"
        store._call(f"deleting {path}", store._client.delete, path, recursive=True)


def _parse(raw):
    try:
        beat = json.loads(raw)
        float(beat["time"])
        return beat
    except (TypeError, ValueError, KeyError):
        return None


def _beats(config):
    return _RedisBeats(config) if config.kind == "redis" else _HdfsBeats(config)


def remove_dead_runs(config):
    """Delete the data and heartbeats of every run (but ours) whose driver is gone -> their ids."""
    beats = _beats(config)
    removed = []
    for run_id in sorted(beats.runs_with_data() - {config.run_id}):
        if is_dead(beats.read(run_id)):
            beats.remove_data(config, run_id)
            beats.delete(run_id)
            removed.append(run_id)
    return removed


class Heartbeat:
    """Keeps the run's heartbeat fresh from a daemon thread until `stop`."""

    def __init__(self, config):
        self.config = config
        self._beats = _beats(config)
        self._stopped = threading.Event()
        self._thread = None

    def beat(self):
        self._beats.write(self.config.run_id, dict(this_process(), time=time.time()))

    def start(self):
        self.beat()                 # before any data of the run exists
        self._thread = threading.Thread(target=self._loop, name="spark-cnn-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        while not self._stopped.wait(HEARTBEAT_EVERY):
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001 - the stages report server failures
                log.debug("heartbeat failed: %s", e)

    def stop(self):
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._beats.delete(self.config.run_id)
        except Exception:  # noqa: BLE001
            pass
