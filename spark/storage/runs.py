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

from ..processes import process_gone
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
    return process_gone(beat["pid"])


def is_dead(beat, now=None):
    """Whether a run with this heartbeat (None: none found) has lost its driver."""
    if not beat:
        return True
    now = time.time() if now is None else now
    return _process_gone(beat) or now - float(beat.get("time", 0)) > STALE_AFTER


class _RedisBeats:
    """Heartbeats as keys beside the runs' namespaces, on every server of the run."""

    def __init__(self, config):
        self.config = config
        self.store = redis_store(config)

    def _each_server(self, call):
        """call(client) on every server -> the results of those that answered."""
        results = []
        for address in self.store.addresses:
            try:
                results.append(call(self.store.client(address)))
            except Exception as e:  # noqa: BLE001 - a down server is reported by the stages
                log.debug("heartbeat on %s: %s", address, e)
        return results

    def write(self, run_id, beat):
        text = json.dumps(beat)
        self._each_server(lambda c: c.set(REDIS_PREFIX + run_id, text, ex=int(STALE_AFTER)))

    def read(self, run_id):
        """The newest heartbeat of a run on any server (None if none)."""
        beats = [_parse(raw) for raw in self._each_server(lambda c: c.get(REDIS_PREFIX + run_id))]
        return max(filter(None, beats), key=lambda beat: beat["time"], default=None)

    def delete(self, run_id):
        self._each_server(lambda c: c.delete(REDIS_PREFIX + run_id))

    def runs_with_data(self):
        return self.store.namespaces()

    def remove_data(self, run_id):
        redis_store(self.config, namespace=run_id).delete_all()


class _HdfsBeats:
    """Heartbeats as files of the namespace HDFS_FOLDER beside the runs' folders."""

    def __init__(self, config):
        self.config = config
        self.beats = hdfs_store(config, namespace=HDFS_FOLDER)

    def write(self, run_id, beat):
        self.beats.write_text(run_id, json.dumps(beat))

    def read(self, run_id):
        try:
            return _parse(self.beats.read_text(run_id))
        except MissingKeyError:
            return None

    def delete(self, run_id):
        self.beats.delete(run_id)
        self.beats.delete_if_empty()     # the folder goes with the last heartbeat, not before

    def runs_with_data(self):
        runs = set(hdfs_store(self.config).namespaces()) - {HDFS_FOLDER}
        return runs | set(self.beats.list_dir())

    def remove_data(self, run_id):
        hdfs_store(self.config, namespace=run_id).delete_all()


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
            beats.remove_data(run_id)
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
        except Exception:  # noqa: BLE001 - a heartbeat left behind goes stale; the next run removes it
            pass
