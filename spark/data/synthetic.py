"""Write a small, learnable stand-in for CIFAR-10 in exactly the python-version layout.

    python3 -m spark.data.synthetic OUT_DIR [--train N] [--test N] [--seed S] [--batches B]

writes ``data_batch_1`` .. ``data_batch_B``, ``test_batch`` and ``batches.meta`` into OUT_DIR:
protocol-2 pickles of dicts with ``data`` (uint8, N x 3072: red plane, green, blue, each
row-major), ``labels`` (list of ints), ``batch_label`` and ``filenames``, and a meta dict with
``label_names``, ``num_cases_per_batch`` and ``num_vis``. The pickles use the same opcodes as the
official (Python 2) files, so anything that reads CIFAR-10 reads these the same way:
a standard pickle reader with ``encoding='latin1'`` gives str keys, ``encoding='bytes'`` gives
bytes keys, and the only globals are ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
``numpy.dtype``, as ``spark.data.cifar10.load_cifar10``'s restricted unpickler allows.

What the images look like. Classes are named ``class0`` .. ``class9`` (deliberately not the
CIFAR-10 names, so nobody mistakes a result on this data for a CIFAR-10 result). Every image is
a grey-ish background of random brightness and tint with one brighter square patch filled with
stripes. The class decides two things:

* where the patch sits: class k is centred on a ring of radius 9 px around the image centre, at
  angle 36 * k degrees (class 0 right of centre, going clockwise on screen);
* the direction of the stripes in it (period 4 px): vertical for class 0, turning by 18
  degrees per class (class 5 horizontal).

Everything else is random per image: patch position (+-2 px), patch size (9-13 px), patch
colour and brightness, background level and tint, stripe phase, and Gaussian pixel noise
(sigma 25). Neighbouring classes' patches overlap, so the task is easy for a small CNN but not
trivial; the mean colour of an image says nothing about its class. Pixel mean about 110 and
std about 40 per channel (CIFAR-10: about 120 and 63), close enough that CIFAR-10
normalisation and hyper-parameters suit it. Measured (2,000 training / 500 test images): a
nearest-class-mean classifier on raw pixels scores about 75% (chance is 10%); conv 3x3x8 ->
ReLU -> 2x2 max-pool -> fully connected reaches about 95% after 40 full-batch gradient steps
(lr 0.1); the project's default CNN (``spark.cnn.CNN()``) takes 300 images from loss 3.6 to
0.7 in 15 full-batch iterations.

Labels are balanced (each class equally often, up to one image) and shuffled. The same
arguments give the same images; the test set depends only on ``seed`` and ``test``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from ..atomic import replacing

__all__ = [
    "CLASS_NAMES", "make_synthetic_cifar10", "make_images", "write_batch", "write_meta", "main",
]

CLASS_NAMES = [f"class{k}" for k in range(10)]

_RING_RADIUS = 9.0
_JITTER = 2.0
_NOISE = 25.0
_BACK_LEVEL, _BACK_TINT = (65.0, 145.0), 20.0
_PATCH_LEVEL, _PATCH_COLOUR = (210.0, 255.0), (0.7, 1.0)
_STRIPE_DEPTH = 0.25
_CHUNK = 2000  # images generated at a time, to bound temporary float memory


def _per_image(values) -> np.ndarray:
    """One value per image, shaped (n, 1, 1) to broadcast over a (n, 32, 32) grid."""
    return np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return uint8 rows (N, 3072), CIFAR order (R plane, G plane, B plane), for ``labels``."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.empty((len(labels), 3072), dtype=np.uint8)
    ys, xs = np.mgrid[0:32, 0:32].astype(np.float32)
    for start in range(0, len(labels), _CHUNK):
        k = labels[start : start + _CHUNK]
        n = len(k)

        angle = 2 * np.pi * k / 10
        cy = _per_image(15.5 + _RING_RADIUS * np.sin(angle) + rng.uniform(-_JITTER, _JITTER, n))
        cx = _per_image(15.5 + _RING_RADIUS * np.cos(angle) + rng.uniform(-_JITTER, _JITTER, n))
        half = _per_image(rng.uniform(4.5, 6.5, n))
        inside = (np.abs(ys - cy) <= half) & (np.abs(xs - cx) <= half)  # (n, 32, 32)

        theta = np.pi * k / 10
        phase = _per_image(rng.uniform(0, 2 * np.pi, n))
        along = xs * _per_image(np.cos(theta)) + ys * _per_image(np.sin(theta))  # (n, 32, 32)
        wave = np.sin((2 * np.pi / 4.0) * along + phase)  # period 4 px
        patch = (1 - _STRIPE_DEPTH) + _STRIPE_DEPTH * wave  # (n, 32, 32)

        # Bright patch of random colour; dark background of random level and tint (n, 3).
        patch_rgb = rng.uniform(*_PATCH_LEVEL, (n, 1)) * rng.uniform(*_PATCH_COLOUR, (n, 3))
        back_rgb = rng.uniform(*_BACK_LEVEL, (n, 1)) + rng.uniform(-_BACK_TINT, _BACK_TINT, (n, 3))

        img = np.where(
            inside[:, None],
            patch[:, None] * patch_rgb.astype(np.float32)[:, :, None, None],
            back_rgb.astype(np.float32)[:, :, None, None],
        )  # (n, 3, 32, 32): channel planes, as CIFAR stores them
        img += rng.standard_normal(img.shape, dtype=np.float32) * _NOISE
        np.clip(img, 0, 255, out=img)
        out[start : start + n] = np.rint(img).reshape(n, 3072)
    return out


# The official files were written by Python 2's cPickle, protocol 2. Python 3's pickle cannot
# write a Python 2 str, so it would store keys and names as unicode (then encoding='bytes'
# readers get str keys) and raw bytes via _codecs.encode. To be byte-for-byte the same kind of
# file, the few opcodes those files use are written directly (see pickletools for their names).
_PROTO2 = b"\x80\x02"
_MARK, _STOP, _NONE, _FALSE = b"(", b".", b"N", b"\x89"
_EMPTY_DICT, _SETITEMS, _EMPTY_LIST, _APPENDS = b"}", b"u", b"]", b"e"
_TUPLE, _TUPLE1, _TUPLE2, _TUPLE3 = b"t", b"\x85", b"\x86", b"\x87"
_REDUCE, _BUILD = b"R", b"b"


def _py2_str(text: str | bytes) -> bytes:
    """SHORT_BINSTRING / BINSTRING: a Python 2 str (bytes; read back per encoding=...)."""
    raw = text.encode("latin1") if isinstance(text, str) else bytes(text)
    if len(raw) < 256:
        return b"U" + bytes([len(raw)]) + raw
    return b"T" + len(raw).to_bytes(4, "little") + raw


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])  # BININT1
    if 0 <= value < 65536:
        return b"M" + value.to_bytes(2, "little")  # BININT2
    return b"J" + value.to_bytes(4, "little", signed=True)  # BININT


def _py2_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _py2_uint8_matrix(array: np.ndarray) -> list[bytes]:
    """A 2-D uint8 array, pickled as numpy does it (reconstruct, then set the raw bytes)."""
    rows, cols = array.shape
    return [
        _py2_global("numpy.core.multiarray", "_reconstruct"), _py2_global("numpy", "ndarray"),
        _py2_int(0), _TUPLE1, _py2_str("b"), _TUPLE3, _REDUCE,
        _MARK, _py2_int(1), _py2_int(rows), _py2_int(cols), _TUPLE2,
        _py2_global("numpy", "dtype"), _py2_str("u1"), _py2_int(0), _py2_int(1), _TUPLE3, _REDUCE,
        _MARK, _py2_int(3), _py2_str("|"), _NONE, _NONE, _NONE,
        _py2_int(-1), _py2_int(-1), _py2_int(0), _TUPLE, _BUILD,
        _FALSE, _py2_str(array.tobytes()), _TUPLE, _BUILD,
    ]


def _py2_value(value: object) -> list[bytes]:
    if isinstance(value, np.ndarray):
        return _py2_uint8_matrix(value)
    if isinstance(value, (str, bytes)):
        return [_py2_str(value)]
    if isinstance(value, int) and not isinstance(value, bool):
        return [_py2_int(value)]
    if isinstance(value, list):
        return [_EMPTY_LIST, _MARK, *(_py2_str(v) if isinstance(v, (str, bytes)) else _py2_int(v)
                                      for v in value), _APPENDS] if value else [_EMPTY_LIST]
    raise TypeError(f"cannot write {type(value).__name__} in a CIFAR-10 batch")


def _write_pickle(path: Path, obj: dict) -> None:
    """Write ``obj`` as the official files are written, to a temp file, then rename."""
    parts = [_PROTO2, _EMPTY_DICT, _MARK]
    for key, value in obj.items():
        parts.append(_py2_str(key))
        parts.extend(_py2_value(value))
    parts += [_SETITEMS, _STOP]
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.writelines(parts)


def write_batch(path: str | os.PathLike, data: np.ndarray, labels, batch_label: str,
                filenames: list[str] | None = None) -> None:
    """Write one python-version batch file (uint8 ``data`` N x 3072, int ``labels``)."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if data.ndim != 2:
        raise ValueError(f"data must be a 2-D (N, 3072) array, got shape {data.shape}")
    labels = [int(v) for v in labels]  # plain ints: numpy scalars would pickle as numpy globals
    if filenames is None:
        filenames = [f"{CLASS_NAMES[v] if 0 <= v < 10 else 'image'}_s_{i:06d}.png"
                     for i, v in enumerate(labels)]
    _write_pickle(Path(path), {
        "batch_label": str(batch_label),
        "labels": labels,
        "data": data,
        "filenames": [str(f) for f in filenames],
    })


def write_meta(path: str | os.PathLike, label_names: list[str], num_cases_per_batch: int) -> None:
    """Write a python-version ``batches.meta``."""
    _write_pickle(Path(path), {
        "num_cases_per_batch": int(num_cases_per_batch),
        "label_names": [str(n) for n in label_names],
        "num_vis": 3072,
    })


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n, dtype=np.int64) % 10)


def make_synthetic_cifar10(out_dir: str | os.PathLike, train: int = 5000, test: int = 1000,
                           seed: int = 0, batches: int = 5) -> Path:
    """Write a synthetic CIFAR-10 look-alike into ``out_dir`` (created if needed).

    ``train`` images are split over ``batches`` files ``data_batch_1..`` (sizes differ by at
    most one), ``test`` images go to ``test_batch``. Returns ``out_dir`` as a Path.
    """
    for name, value, low in (("train", train, 1), ("test", test, 1), ("batches", batches, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if batches > train:
        raise ValueError(f"batches ({batches}) must not exceed train ({train})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    train_rng = np.random.default_rng([seed, 0])
    train_labels = _balanced_labels(train, train_rng)
    sizes = [len(part) for part in np.array_split(np.arange(train), batches)]
    start = 0
    for i, size in enumerate(sizes, 1):
        labels = train_labels[start : start + size]
        write_batch(out / f"data_batch_{i}", make_images(labels, train_rng), labels,
                    f"training batch {i} of {batches}")
        start += size

    test_rng = np.random.default_rng([seed, 1])
    test_labels = _balanced_labels(test, test_rng)
    write_batch(out / "test_batch", make_images(test_labels, test_rng), test_labels,
                "testing batch 1 of 1")
    # Written last: a folder without batches.meta is recognisably incomplete.
    write_meta(out / "batches.meta", CLASS_NAMES, sizes[0])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m spark.data.synthetic",
        description="Write a small synthetic CIFAR-10 look-alike (python-version layout: "
                    "data_batch_1..B, test_batch, batches.meta) that a tiny CNN can learn.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if needed)")
    parser.add_argument("--train", type=int, default=5000, help="training images (default 5000)")
    parser.add_argument("--test", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--batches", type=int, default=5,
                        help="number of training batch files (default 5, as CIFAR-10)")
    args = parser.parse_args(argv)
    try:
        out = make_synthetic_cifar10(args.out_dir, args.train, args.test, args.seed, args.batches)
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"error: cannot write {args.out_dir}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.train} training and {args.test} test synthetic images "
          f"(10 classes, {args.batches} training batches, CIFAR-10 python layout) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
