"""Saving and reloading parameters as .npz files, never as pickles.

A checkpoint holds named arrays (parameters and velocities) plus a JSON string
of metadata (network shape, iteration, optimiser settings). It is written to a
temporary file in the same folder and renamed over the target, so a crash
mid-write leaves the previous checkpoint whole.
"""
import json
import os
import tempfile

import numpy as np

FORMAT = "spark-cnn-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not one of ours."""


def save_checkpoint(path, arrays, meta):
    """Atomically write `arrays` (name -> ndarray) and `meta` (JSON-ready dict) to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = {f"a/{name}": np.ascontiguousarray(a) for name, a in arrays.items()}
    payload["meta"] = np.array(json.dumps(dict(meta, format=FORMAT), sort_keys=True))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path):
    """Read a checkpoint written by `save_checkpoint` -> (arrays, meta)."""
    if not os.path.exists(path):
        raise CheckpointError(f"no saved parameters at {path}: train first, "
                              "or point --params-dir / SPARK_CNN_PARAMS_DIR at them")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {k[2:]: npz[k] for k in npz.files if k.startswith("a/")}
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} is not a readable spark-cnn checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a spark-cnn checkpoint (format {meta.get('format')!r})")
    return arrays, meta
