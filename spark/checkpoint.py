"""Saving and reloading parameters as .npz files, never as pickles.

A checkpoint holds named arrays (parameters and velocities) plus a JSON string
of metadata (network shape, iteration, optimiser settings, the run's settings).
It is written to a temporary file in the same folder and renamed over the
target, so a crash mid-write leaves the previous checkpoint whole. The
temporary file's name carries the writer's process id and host
(`.tmp-<pid>-<host>-<random>.npz`), so a later run can tell the leftovers of a
killed writer from a file that a live run is writing (`remove_stale_temporaries`).
"""
import contextlib
import fcntl
import json
import os
import re
import socket
import time

import numpy as np

from .atomic import fsynced, host_tag, replacing
from .processes import process_gone

FORMAT = "spark-cnn-checkpoint/1"

# A temporary file whose writer cannot be checked (another host, an older
# name without a pid) is taken as abandoned once it is this old, in seconds:
# a live writer renames its file within moments of creating it.
STALE_AFTER = 3600
_TMP_NAME = re.compile(r"^\.tmp-(?:(\d+)-([A-Za-z0-9._]*)-)?[A-Za-z0-9_]+\.npz$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not one of ours."""


class CheckpointInUse(RuntimeError):
    """Another live run holds the checkpoint."""


def save_checkpoint(path, arrays, meta):
    """Atomically write `arrays` (name -> ndarray) and `meta` (JSON-ready dict) to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = {f"a/{name}": np.ascontiguousarray(a) for name, a in arrays.items()}
    payload["meta"] = np.array(json.dumps(dict(meta, format=FORMAT), sort_keys=True))
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **payload)
        fsynced(f)


def remove_stale_temporaries(folder, now=None):
    """Delete the `.tmp-*.npz` files a killed saver left in `folder` -> their paths.

    A file is removed when its writer (pid in the name, on this host) is gone,
    or, when the writer cannot be checked, when it is older than STALE_AFTER.
    A file being written by a live run is never touched.
    """
    now = time.time() if now is None else now
    removed = []
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    host = host_tag()
    for name in names:
        match = _TMP_NAME.match(name)
        if not match:
            continue
        path = os.path.join(folder, name)
        pid, writer_host = match.group(1), match.group(2)
        if pid is not None and writer_host == host:
            stale = int(pid) != os.getpid() and process_gone(pid)
        else:
            try:
                stale = now - os.stat(path).st_mtime > STALE_AFTER
            except FileNotFoundError:
                continue
        if stale:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


def load_checkpoint(path):
    """Read a checkpoint written by `save_checkpoint` -> (arrays, meta).

    Every failure is a CheckpointError whose message names `path`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no saved parameters at {path}: train first, "
                              "or point --params-dir / SPARK_CNN_PARAMS_DIR at them")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"PK\x03\x04":      # np.load would try (and refuse) a pickle
            reason = "the file is empty" if not magic else "not an .npz (zip) archive"
            raise CheckpointError(f"{path} is not a readable spark-cnn checkpoint "
                                  f"(damaged or not ours: {reason})")
        with np.load(path, allow_pickle=False) as npz:
            if "meta" not in npz.files:
                raise CheckpointError(f"{path} is not a spark-cnn checkpoint "
                                      "(it holds no metadata)")
            meta = json.loads(str(npz["meta"]))
            arrays = {k[2:]: npz[k] for k in npz.files if k.startswith("a/")}
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - zip, CRC, EOF, JSON, pickle refusal...: all say the path
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror
        else:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable spark-cnn checkpoint "
                              f"(damaged or not ours: {reason})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} is not a spark-cnn checkpoint (format {found!r})")
    return arrays, meta


@contextlib.contextmanager
def checkpoint_lock(path, err=None):
    """Hold `path` (a checkpoint) for one run: `<path>.lock`, locked with flock.

    A second run into the same checkpoint raises CheckpointInUse naming the
    first run's pid and host. The lock dies with its process, so a lock file
    left by a killed run is taken over (with a note on `err`). The file is
    removed when the run ends; a run that locked a file another run has just
    removed notices it (the path no longer names the file it holds) and tries
    again.
    """
    lock_path = f"{path}.lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise CheckpointInUse(
                f"{path} is in use by another run ({holder}): wait for it to end, or give "
                "this run another --params-dir") from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)                       # removed by the run that held it: take the new one
    try:
        left = _read_holder(fd)
        if left and err is not None:
            print(f"note: took over {lock_path}, left by {left}, which is gone", file=err)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


def _read_holder(fd):
    """'pid P on host H (since S)' from a lock file, '' when it is empty."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"null")
        return (f"pid {info['pid']} on host {info['host']}, started {info['started']}"
                if info else "")
    except (OSError, ValueError, TypeError, KeyError):
        return "a run that wrote no readable name"
