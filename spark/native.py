"""Loading of the native kernels of spark.im2col: the ``spark.matrix`` extension.

:func:`load` finds the compiled extension, checks it and returns it, or None
and why spark.im2col is to run its NumPy fallback (spark.im2col_numpy).
``SPARK_CNN_IM2COL=numpy`` forces the fallback, ``=native`` makes a failure
to load the extension an ImportError, anything else (default ``auto``) tries
native and falls back with a warning, recording the reason.

A loaded extension must have the kernel API this code calls
(``KERNEL_API``) and pass a self-test: the public functions built over its
kernels must give the same bytes as the NumPy reference on small cases of
every function.  One failure means NumPy for every function.

When the package is imported from a zipped egg (``spark-submit --py-files
spark_cnn-....egg``) the extension cannot be imported from inside the zip
(the setuptools egg stub fails on Python 3.11 in Spark's workers).  In that
case ``spark/matrix*.so`` is read out of the archive, written once to
``$SPARK_CNN_CACHE_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/spark-cnn/native
/<sha256>/`` (falling back to ``$TMPDIR/spark-cnn-<uid>/native/<sha256>/``)
atomically (temp file + rename, so concurrent workers do not race), and
loaded from there as ``spark.matrix``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
import tempfile
import zipfile
from typing import Any, Callable, NamedTuple

import numpy as np

from .atomic import fsynced, replacing

__all__ = ["Native", "load"]

_log = logging.getLogger(__name__)

_PKG = __name__.rpartition(".")[0] or "spark"
_EXT_NAME = _PKG + ".matrix"
_ENV_BACKEND = "SPARK_CNN_IM2COL"
_ENV_CACHE = "SPARK_CNN_CACHE_DIR"
KERNEL_API = 3  # spark.matrix.KERNEL_API: the kernel signatures spark.im2col calls


class Native(NamedTuple):
    """What :func:`load` found (spark.im2col.backend() says which back end is live)."""

    kernels: Any          # the spark.matrix module, or None: use the NumPy kernels
    path: str | None      # the loaded shared object
    error: str | None     # why the NumPy kernels are used (None when native)


# ------------------------------------------------------------ finding the .so

def _zip_location():
    """(archive path, package prefix inside it) if this package is zipped."""
    loader = globals().get("__loader__")
    spec = globals().get("__spec__")
    if spec is not None and spec.loader is not None:
        loader = spec.loader
    archive = getattr(loader, "archive", None)
    if archive and os.path.isfile(archive) and zipfile.is_zipfile(archive):
        here = os.path.dirname(os.path.abspath(__file__))
        root = os.path.abspath(archive)
        if here.startswith(root + os.sep):
            inner = os.path.relpath(here, root).replace(os.sep, "/")
            return archive, inner + "/"
        prefix = getattr(loader, "prefix", None)
        if prefix is not None:
            return archive, prefix
    # Generic fallback: walk up __file__ until an existing zip file is found.
    path = os.path.dirname(os.path.abspath(__file__))
    inner = []
    while path and not os.path.exists(path):
        path, tail = os.path.split(path)
        if not tail:
            break
        inner.append(tail)
    if inner and os.path.isfile(path) and zipfile.is_zipfile(path):
        return path, "/".join(reversed(inner)) + "/"
    return None


def _suffix_rank(name):
    for rank, suffix in enumerate(importlib.machinery.EXTENSION_SUFFIXES):
        if name.endswith(suffix):
            return rank
    return None


def _cache_roots():
    roots = []
    env = os.environ.get(_ENV_CACHE)
    if env:
        roots.append(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if not xdg or not os.path.isabs(xdg):
        xdg = os.path.join(os.path.expanduser("~"), ".cache")
    roots.append(os.path.join(xdg, "spark-cnn", "native"))
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    roots.append(os.path.join(tempfile.gettempdir(), f"spark-cnn-{uid}",
                              "native"))
    return roots


def _file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _extract(data, basename):
    """Write `data` to <cache root>/<sha256>/<basename> atomically; return path."""
    digest = hashlib.sha256(data).hexdigest()
    errors = []
    for root in _cache_roots():
        directory = os.path.join(root, digest)
        target = os.path.join(directory, basename)
        try:
            if os.path.isfile(target) and _file_sha256(target) == digest:
                return target
            os.makedirs(directory, mode=0o700, exist_ok=True)
            with replacing(target) as tmp, open(tmp, "wb") as f:  # racing workers write equal bytes
                f.write(data)
                fsynced(f)
                os.chmod(tmp, 0o755)
            return target
        except OSError as exc:
            errors.append(f"{directory}: {exc}")
    raise OSError("cannot write the native extension to any cache directory: "
                  + "; ".join(errors))


def _load_from_file(path):
    loader = importlib.machinery.ExtensionFileLoader(_EXT_NAME, path)
    spec = importlib.util.spec_from_file_location(_EXT_NAME, path,
                                                  loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[_EXT_NAME] = module
    parent = sys.modules.get(_PKG)
    if parent is not None:
        parent.matrix = module
    return module


def _load_from_zip(archive, prefix):
    with zipfile.ZipFile(archive) as zf:
        candidates = []
        for info in zf.infolist():
            name = info.filename
            if not name.startswith(prefix):
                continue
            base = name[len(prefix):]
            if "/" in base or not base.startswith("matrix"):
                continue
            rank = _suffix_rank(base)
            if rank is not None and base[len("matrix"):].startswith("."):
                candidates.append((rank, name, base))
        if not candidates:
            raise ImportError(f"no compiled {prefix}matrix*.so inside {archive}"
                              f" (suffixes {importlib.machinery.EXTENSION_SUFFIXES})")
        _, member, base = min(candidates)
        data = zf.read(member)
    return _load_from_file(_extract(data, base)), member


# ------------------------------------------------------------ checking it

def _self_test(module, front_ends, reference):
    """Run the module's kernels through the front ends on small cases and
    compare with the NumPy reference; raise ImportError on any difference.

    front_ends(kernels): the public functions of spark.im2col over `kernels`
    (a namespace: im2col, col2im, maxpool_forward, ...); reference: the same
    over the NumPy kernels.
    """
    api = getattr(module, "KERNEL_API", None)
    if api != KERNEL_API:
        raise ImportError(f"{_EXT_NAME} has kernel API {api!r}, spark.im2col "
                          f"needs {KERNEL_API} (stale build: rebuild it)")
    got, ref = front_ends(module), reference

    def same(name, outputs, expected):
        if len(outputs) != len(expected) or not all(
                x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
                for x, y in zip(outputs, expected)):
            raise ImportError(f"native {name} disagrees with the NumPy reference")

    x = np.arange(2 * 3 * 4 * 2, dtype=np.float64).reshape(2, 3, 4, 2)
    cols = got.im2col(x, 2, 3, 1, 1)
    same("im2col", [cols], [ref.im2col(x, 2, 3, 1, 1)])
    same("col2im", [got.col2im(cols, x.shape, 2, 3, 1, 1)],
         [ref.col2im(cols, x.shape, 2, 3, 1, 1)])
    # Pooling: overlapping 3x2 windows, stride 1, with ties (small integers).
    x = (np.arange(2 * 5 * 4 * 3) * 7 % 5).astype(np.float64).reshape(2, 5, 4, 3)
    out, arg = got.maxpool_forward(x, 3, 2, 1)
    same("maxpool_forward", [out, arg], ref.maxpool_forward(x, 3, 2, 1))
    dout = np.linspace(-1.0, 1.0, out.size).reshape(out.shape)
    same("maxpool_backward", [got.maxpool_backward(dout, arg, 5, 4, 3, 2, 1)],
         [ref.maxpool_backward(dout, arg, 5, 4, 3, 2, 1)])
    # Fused pooling + ReLU: 2x2 windows with gaps (stride 3), 11 channels
    # (partly filled packed bytes), ties and values of both signs.
    x = ((np.arange(2 * 7 * 8 * 11) * 5 % 9) - 4.0).reshape(2, 7, 8, 11)
    bias = np.linspace(-1.0, 1.0, 11)
    out, arg, positive = ref.maxpool_relu_forward(x, bias, 2, 2, 3)
    same("maxpool_relu_forward", got.maxpool_relu_forward(x, bias, 2, 2, 3),
         [out, arg, positive])
    dout = np.linspace(-1.0, 1.0, out.size).reshape(out.shape)
    same("maxpool_relu_backward",
         got.maxpool_relu_backward(dout, arg, positive, 7, 8, 2, 2, 3),
         ref.maxpool_relu_backward(dout, arg, positive, 7, 8, 2, 2, 3))


def _load_native():
    """The spark.matrix module (already imported, out of the zip, or imported)."""
    existing = sys.modules.get(_EXT_NAME)
    if existing is not None and hasattr(existing, "im2col"):
        return existing
    where = _zip_location()
    if where is not None:
        return _load_from_zip(*where)[0]
    return importlib.import_module(_EXT_NAME)


def load(front_ends: Callable[[Any], Any], reference) -> Native:
    """The kernels spark.im2col is to run (see the module docstring).

    front_ends, reference: as for the self-test (`_self_test`).
    """
    mode = os.environ.get(_ENV_BACKEND, "auto").strip().lower() or "auto"
    if mode == "numpy":
        return Native(None, None, f"forced by {_ENV_BACKEND}=numpy")
    try:
        module = _load_native()
        _self_test(module, front_ends, reference)
    except Exception as exc:  # any failure means fallback
        reason = f"{type(exc).__name__}: {exc}"
        if mode == "native":
            raise ImportError(f"{_ENV_BACKEND}=native but the native "
                              f"im2col extension is unavailable: {reason}") \
                from exc
        _log.warning("spark-cnn: native im2col unavailable, using NumPy "
                     "fallback (%s)", reason)
        return Native(None, None, reason)
    return Native(module, getattr(module, "__file__", None), None)
