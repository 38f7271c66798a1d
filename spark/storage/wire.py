"""The array wire format of spark-cnn: a NumPy array as a small header plus its raw bytes.

Free of I/O: the stores (spark.storage.redis_store, spark.storage.hdfs_store) send what
:func:`encode` gives and read back with :func:`decode_array`, or, when they
fill an array piece by piece, with :func:`parse_header` and :func:`data_view`.

All integers little-endian::

    offset      size      field
    0           4         magic b"SCNA"
    4           1         format version, 1
    5           1         ndim, 0..64
    6           2         reserved, 0
    8           8         dtype string, ASCII, NUL-padded: b"<f4", b"|b1", b">i8", ...
    16          8*ndim    shape, one uint64 per axis
    16+8*ndim   ...       the data in C order: exactly prod(shape) * itemsize bytes

The header length is a multiple of 8, so the data stays 8-byte aligned.
Allowed dtypes: bool, int8..int64, uint8..uint64, float16/32/64,
complex64/128, in either byte order.  Nothing else (no object, string,
datetime or structured dtypes) is accepted, and nothing is ever unpickled.
"""

from __future__ import annotations

import math
import struct

import numpy as np

__all__ = ["MAGIC", "MAX_NDIM", "FIXED_SIZE", "encode", "decode_array", "parse_header",
           "data_view"]

MAGIC = b"SCNA"
FORMAT_VERSION = 1
MAX_NDIM = 64
_FIXED = struct.Struct("<4sBBH8s")  # magic, version, ndim, reserved, dtype
FIXED_SIZE = _FIXED.size            # the header without the shape
assert FIXED_SIZE == 16


def _allowed_dtypes() -> frozenset[str]:
    names = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32",
             "int64", "uint64", "float16", "float32", "float64",
             "complex64", "complex128"]
    out = set()
    for name in names:
        dt = np.dtype(name)
        out.add(dt.newbyteorder("<").str)
        out.add(dt.newbyteorder(">").str)
    return frozenset(out)


ALLOWED_DTYPES = _allowed_dtypes()


def _check_dtype(dt: np.dtype) -> None:
    if dt.str not in ALLOWED_DTYPES:
        raise ValueError(
            f"dtype {dt} ({dt.str!r}) cannot be stored: only bool, int8..int64, "
            "uint8..uint64, float16/32/64 and complex64/128 arrays are supported")


def data_view(a: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array, without copying."""
    return memoryview(a.reshape(-1).view(np.uint8))


def encode(array) -> tuple[bytes, memoryview]:
    """``(header, data)`` of a numeric or bool array: sent one after the other
    they are its encoding.  ``data`` is a view of the array's memory, copied
    only if the array is not C-contiguous."""
    a = np.asarray(array)
    _check_dtype(a.dtype)
    if a.ndim > MAX_NDIM:
        raise ValueError(f"arrays with more than {MAX_NDIM} dimensions are not supported")
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # np.ascontiguousarray would turn 0-d into 1-d
    header = (_FIXED.pack(MAGIC, FORMAT_VERSION, a.ndim, 0, a.dtype.str.encode("ascii"))
              + struct.pack(f"<{a.ndim}Q", *a.shape))
    return header, data_view(a)


def parse_header(buf, what: str = "data") -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse a header at the start of ``buf``; returns (dtype, shape, header length).

    ``what`` names the data in the ValueError raised for a bad magic, version,
    ndim or dtype and for a header cut short.
    """
    mv = memoryview(buf).cast("B")
    if len(mv) < FIXED_SIZE:
        raise ValueError(f"{what} is not an encoded array: {len(mv)} bytes is shorter "
                         f"than the {FIXED_SIZE}-byte header")
    magic, version, ndim, _reserved, dt_raw = _FIXED.unpack_from(mv, 0)
    if magic != MAGIC:
        raise ValueError(f"{what} is not an encoded array: bad magic {bytes(magic)!r} "
                         f"(expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise ValueError(f"{what} uses array format version {version}; this code reads "
                         f"version {FORMAT_VERSION}")
    if ndim > MAX_NDIM:
        raise ValueError(f"{what} has a corrupt header: ndim {ndim} > {MAX_NDIM}")
    dt_str = dt_raw.rstrip(b"\0").decode("ascii", "replace")
    if dt_str not in ALLOWED_DTYPES:
        raise ValueError(f"{what} has an unknown or unsupported dtype {dt_str!r}")
    hlen = FIXED_SIZE + 8 * ndim
    if len(mv) < hlen:
        raise ValueError(f"{what} is truncated: the header needs {hlen} bytes, "
                         f"got {len(mv)}")
    shape = struct.unpack_from(f"<{ndim}Q", mv, FIXED_SIZE)
    if any(d >= 2**62 for d in shape):
        raise ValueError(f"{what} has a corrupt header: shape {shape}")
    return np.dtype(dt_str), tuple(int(d) for d in shape), hlen


def decode_array(data) -> np.ndarray:
    """Decode header + data bytes into an array that owns its memory.

    Raises ValueError for a bad magic, version or dtype, and for truncated or
    overlong input.
    """
    mv = memoryview(data).cast("B")
    dtype, shape, hlen = parse_header(mv)
    need = dtype.itemsize * math.prod(shape)   # Python ints: a corrupt shape cannot overflow
    have = len(mv) - hlen
    if have != need:
        kind = "truncated" if have < need else "too long"
        raise ValueError(f"encoded array is {kind}: shape {shape} of {dtype.str} needs "
                         f"{need} data bytes, got {have}")
    return np.frombuffer(mv, dtype=dtype, count=need // dtype.itemsize,
                         offset=hlen).reshape(shape).copy()
