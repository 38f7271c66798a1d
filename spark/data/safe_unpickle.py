"""The restricted unpickler of spark.data.cifar10 and spark.data.cifar100: a CIFAR-10 or
CIFAR-100 python-version file (a protocol-2 pickle of a dict holding numpy arrays and
lists) read without trusting it. CIFAR-100's files use the same few names as CIFAR-10's.

The pickle is never given to ``pickle.load``: the unpickler resolves only the few
names a numpy array pickle uses (``numpy.core.multiarray._reconstruct`` or its
numpy-2 spelling ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype`` and ``_codecs.encode``), and even those are mapped to small local
stand-ins that rebuild the array from its raw bytes, so no numpy or builtin
constructor ever sees attacker-chosen arguments. Anything else (``os.system``,
``builtins.eval``, persistent ids, ...) is refused before it can run.

``unpickle_dict(fileobj, where)`` -> the dict (str keys), its arrays still wrapped;
``unwrap(value)`` -> the numpy array a wrapped value stands for (other values as
they are). Both raise ``Refused`` (or ``ValueError`` naming ``where``).
"""

from __future__ import annotations

import math
import pickle
from typing import BinaryIO

import numpy as np

__all__ = ["Refused", "unpickle_dict", "unwrap"]


class Refused(pickle.UnpicklingError):
    """A pickle asked for something a CIFAR-10 batch never contains."""


class _NdarrayName:
    """Stands in for ``numpy.ndarray``; only usable as the subtype given to _reconstruct."""


_NDARRAY = _NdarrayName()

# dtype codes a plain numeric array may use; never object, void, strings or structured types.
_DTYPE_CODES = frozenset(
    ["b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]
)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, str):
        return value
    raise Refused(f"expected a string, got {type(value).__name__}")


class _DtypeStub:
    """Built by ``numpy.dtype(code, align, copy)`` in a pickle; holds a vetted dtype."""

    def __init__(self, code: object, align: object = False, copy: object = True) -> None:
        code = _text(code)
        if code not in _DTYPE_CODES:
            raise Refused(f"dtype {code!r} is not a plain numeric type")
        self.dtype = np.dtype(code)

    def __setstate__(self, state: object) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, ...).
        if not (isinstance(state, tuple) and len(state) >= 5):
            raise Refused("malformed dtype state")
        if any(part is not None for part in state[2:5]):
            raise Refused("structured or sub-array dtypes are not allowed")
        order = _text(state[1])
        if order not in ("|", "<", ">", "="):
            raise Refused(f"bad dtype byte order {order!r}")
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)


class _ArrayStub:
    """Built by ``_reconstruct(ndarray, (0,), b'b')``; BUILD fills in the real array."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        # numpy's ndarray state: (version, shape, dtype, is_fortran, rawdata); version 0 omits
        # the leading version number.
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise Refused("malformed ndarray state")
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeStub):
            raise Refused("ndarray state without a vetted dtype")
        if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
            raise Refused("bad ndarray shape")
        if isinstance(raw, str):  # only if read with encoding="latin1"
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise Refused("ndarray data must be raw bytes")
        count = math.prod(shape)
        if len(raw) != count * dtype.dtype.itemsize:
            raise Refused(
                f"ndarray holds {len(raw)} bytes but shape {shape} needs "
                f"{count * dtype.dtype.itemsize}"
            )
        flat = np.frombuffer(raw, dtype=dtype.dtype)  # read-only view, no copy
        self.array = flat.reshape(shape, order="F" if fortran else "C")


def _reconstruct(subtype: object, shape: object, typecode: object) -> _ArrayStub:
    if subtype is not _NDARRAY:
        raise Refused("_reconstruct called for something other than numpy.ndarray")
    return _ArrayStub()


def _encode(text: object, encoding: object = "utf-8") -> bytes:
    # Python 3 pickles bytes in protocol 2 as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused("_codecs.encode is only allowed for latin1 text")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,   # written by numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 2.x
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _encode,                            # bytes, pickled by Python 3
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise Refused(f"it references {module}.{name}") from None

    def persistent_load(self, pid: object) -> object:
        raise Refused("it uses persistent ids")


def unwrap(value: object) -> object:
    if isinstance(value, _ArrayStub):
        if value.array is None:
            raise Refused("an ndarray was never filled in")
        return value.array
    return value


def unpickle_dict(fileobj: BinaryIO, where: str, kind: str = "CIFAR-10") -> dict:
    """Unpickle a dict safely; str or bytes keys both come back as str. `kind` names the
    data set in the error for a file that is no pickle."""
    try:
        obj = _RestrictedUnpickler(fileobj, encoding="bytes").load()
    except Refused as exc:
        raise ValueError(f"{where}: refused to unpickle: {exc}") from None
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or garbage file: pickle raises many kinds
        raise ValueError(
            f"{where}: not a valid {kind} pickle ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if isinstance(key, bytes):
            key = key.decode("latin1")
        out[key] = value
    return out
