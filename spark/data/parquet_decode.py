"""A Parquet row group's image column -> uint8 images (N, H, W, C).

    layout = Layout("image", "raw", shape_columns=("height", "width", "channels"))
    decode_rows(table, layout, (H, W, C), fit=None, where=...) -> uint8 (n, H, W, C)

How a file's image column is read (`Layout`, decided by spark/data/parquet.py):
- kind "raw": uint8 pixels of one image per row, row-major H x W x C; the
  column holds bytes (binary), lists of integers 0..255, or fixed-size lists
  (nested H x W x C fixed-size lists and Arrow's fixed_shape_tensor carry
  the shape in their type); otherwise the shape is in int columns `height`,
  `width` and (optional) `channels`, or in a list column `shape` of
  (H, W[, C]). A missing channel count is bytes / (H * W).
- kind "encoded": PNG, JPEG or any format Pillow reads, as bytes (or a struct
  with a `bytes` field, as Hugging Face datasets store images).
Grayscale stays one channel, RGB three; an alpha channel is dropped; 16-bit
grayscale keeps its high byte. In a split whose images have mixed channels
(some grayscale, some color), grayscale images are repeated to three.

Images of another size than asked are resized by `fit_image` (Pillow), a
private stand-in for spark/data/images.py's fit_images.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .dataset import DataError

__all__ = ["PILLOW_ERRORS", "Layout", "decode_rows", "fit_image", "image_column", "image_header",
           "row_values", "shape_rows"]

PILLOW_ERRORS = (OSError, ValueError, SyntaxError, EOFError)   # what Pillow raises on bad bytes


@dataclass(frozen=True)
class Layout:
    """How one file's images are stored (see the module docstring).

    column: the image column; field: its struct field holding the bytes, or "";
    kind: "raw" or "encoded"; shape_columns: ("height", "width"[, "channels"]),
    ("shape",) or (); fixed_shape: (H, W, C) given by the column's type, or ().
    """

    column: str
    kind: str
    field: str = ""
    shape_columns: tuple = ()
    fixed_shape: tuple = ()

    @property
    def columns(self) -> list[str]:
        """The columns a row group is read with."""
        return [self.column, *self.shape_columns]


def row_values(array) -> tuple[np.ndarray, np.ndarray]:
    """The image column `array` (a pyarrow Array of bytes or integer lists, no nulls) as
    (values, starts): uint8 (total,) and int64 (n + 1,); row i is values[starts[i]:starts[i+1]]."""
    import pyarrow as pa

    if isinstance(array.type, pa.BaseExtensionType):
        array = array.storage
    kind, n = array.type, len(array)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        width = np.int64 if pa.types.is_large_binary(kind) else np.int32
        starts = np.frombuffer(array.buffers()[1], dtype=width)[array.offset:array.offset + n + 1]
        data = array.buffers()[2]
        values = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
        return values, starts.astype(np.int64)
    if pa.types.is_fixed_size_binary(kind):
        size = kind.byte_width
        values = np.frombuffer(array.buffers()[1], np.uint8)
        values = values[array.offset * size:(array.offset + n) * size]
        return values, np.arange(n + 1, dtype=np.int64) * size
    if pa.types.is_fixed_size_list(kind):
        size = 1
        while pa.types.is_fixed_size_list(array.type):
            size *= array.type.list_size
            array = array.flatten()
        return _uint8(array), np.arange(n + 1, dtype=np.int64) * size
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        starts = np.asarray(array.offsets, dtype=np.int64)
        values = _uint8(array.values)
        return values, starts
    raise TypeError(f"unsupported image column type {kind}")


def _uint8(values) -> np.ndarray:
    """Integer pixel values (a pyarrow Array) as uint8; ValueError if any is outside 0..255."""
    if values.null_count:
        raise ValueError("null pixel values")
    out = np.asarray(values)
    if out.dtype == np.uint8:
        return out
    if out.size and (out.min() < 0 or out.max() > 255):
        raise ValueError(f"pixel values {out.min()}..{out.max()} outside 0..255")
    return out.astype(np.uint8)


def image_header(data) -> tuple[int, int, int]:
    """(height, width, channels) of an encoded image, from its header only (channels:
    1 for grayscale, 3 for color, alpha not counted). Pillow's errors pass through."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        return height, width, _channels_of(image.mode)


def _channels_of(mode: str) -> int:
    return 1 if mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16") else 3


def _decode(data) -> np.ndarray:
    """An encoded image -> uint8 (H, W, 1) grayscale or (H, W, 3) color."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        mode = image.mode
        if mode == "L" or mode == "RGB":
            pixels = np.asarray(image)
        elif mode.startswith("I;16"):
            pixels = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        elif _channels_of(mode) == 1:
            pixels = np.asarray(image.convert("L"))
        elif mode in ("P", "PA"):
            pixels = np.asarray(image.convert("RGBA").convert("RGB"))
        else:
            pixels = np.asarray(image.convert("RGB"))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(h, w, c) uint8, c in 1..4 -> (h, w, channels): alpha dropped, gray repeated, or
    color to luminance."""
    have = image.shape[2]
    if have in (2, 4):
        image, have = image[:, :, :have - 1], have - 1
    if have == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    from PIL import Image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("L"))[:, :, None]


def fit_image(image: np.ndarray, size: tuple, crop: bool) -> np.ndarray:
    """(h, w, c) uint8 -> (H, W, c) for size (H, W): resized (bilinear, Pillow), or with
    crop, scaled keeping its aspect ratio to just cover H x W and center-cropped.

    Private stand-in until spark/data/images.py's fit_images is there."""
    from PIL import Image

    height, width = (int(s) for s in size)
    h, w, c = image.shape
    if (h, w) == (height, width):
        return image
    picture = Image.fromarray(np.ascontiguousarray(image[:, :, 0] if c == 1 else image))
    if crop:
        scale = max(height / h, width / w)
        sw, sh = max(width, round(w * scale)), max(height, round(h * scale))
        if (sw, sh) != (w, h):
            picture = picture.resize((sw, sh), Image.Resampling.BILINEAR)
        left, top = (sw - width) // 2, (sh - height) // 2
        picture = picture.crop((left, top, left + width, top + height))
    else:
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(picture)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def shape_rows(table, layout: Layout, where) -> np.ndarray:
    """(n, 3) int64 (height, width, channels) of the rows of `table` from the layout's
    shape columns or type; channels 0 where no column gives it. DataError on nulls."""
    n = table.num_rows
    if layout.fixed_shape:
        return np.tile(np.asarray(layout.fixed_shape, dtype=np.int64), (n, 1))
    out = np.zeros((n, 3), dtype=np.int64)
    if layout.shape_columns == ("shape",):
        column = table.column("shape").combine_chunks()
        _no_nulls(column, "shape", where)
        values, starts = _int_lists(column)
        counts = np.diff(starts)
        bad = np.flatnonzero((counts < 2) | (counts > 3))
        if len(bad):
            raise DataError(f"{where(bad[0])}: column 'shape' has {counts[bad[0]]} values: "
                            "expected (height, width) or (height, width, channels)")
        out[:, 0] = values[starts[:-1]]
        out[:, 1] = values[starts[:-1] + 1]
        three = counts == 3
        out[three, 2] = values[starts[:-1][three] + 2]
    else:
        for axis, name in enumerate(layout.shape_columns):
            column = table.column(name).combine_chunks()
            _no_nulls(column, name, where)
            out[:, axis] = np.asarray(column, dtype=np.int64)
    bad = np.flatnonzero((out[:, 0] < 1) | (out[:, 1] < 1) | (out[:, 2] < 0) | (out[:, 2] > 4))
    if len(bad):
        h, w, c = out[bad[0]]
        raise DataError(f"{where(bad[0])}: image shape {h}x{w}x{c} from the columns "
                        f"{', '.join(layout.shape_columns)}: expected a size >= 1x1 and 1 to 4 "
                        "channels")
    return out


def _int_lists(column) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa

    if pa.types.is_fixed_size_list(column.type):
        size = column.type.list_size
        return (np.asarray(column.flatten(), dtype=np.int64),
                np.arange(len(column) + 1, dtype=np.int64) * size)
    return (np.asarray(column.values, dtype=np.int64),
            np.asarray(column.offsets, dtype=np.int64))


def _no_nulls(column, name: str, where) -> None:
    if column.null_count:
        first = int(np.flatnonzero(np.asarray(column.is_null()))[0])
        raise DataError(f"{where(first)}: no value in column {name!r} "
                        f"({column.null_count} nulls in this row group)")


def image_column(table, layout: Layout):
    """The layout's image column of `table` as one pyarrow Array (its struct field, if any)."""
    column = table.column(layout.column).combine_chunks()
    if layout.field:
        import pyarrow.compute as pc
        column = pc.struct_field(column, [layout.field])
    return column


def decode_rows(table, layout: Layout, shape: tuple, fit, where) -> np.ndarray:
    """The images of the rows of `table` (a pyarrow Table holding `layout.columns`) as
    uint8 (n, H, W, C) for shape (H, W, C). `fit`: None, or ((H, W), crop) to resize
    images of another size; `where(i)` names row i for messages."""
    height, width, channels = shape
    column = image_column(table, layout)
    _no_nulls(column, layout.column, where)
    n = len(column)
    out = np.empty((n, height, width, channels), dtype=np.uint8)
    try:
        values, starts = row_values(column)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where(0)}: column {layout.column!r} ({column.type}): {e}") from None
    if layout.kind == "encoded":
        for i in range(n):
            out[i] = _fitted(_decode_one(values[starts[i]:starts[i + 1]], layout, where, i),
                             shape, fit, where, i)
        return out
    sizes = shape_rows(table, layout, where)                             # (n, 3)
    lengths = np.diff(starts)
    pixels = sizes[:, 0] * sizes[:, 1]
    missing = sizes[:, 2] == 0
    sizes[missing, 2] = lengths[missing] // np.maximum(pixels[missing], 1)
    bad = np.flatnonzero((lengths != pixels * sizes[:, 2]) | (sizes[:, 2] < 1)
                         | (sizes[:, 2] > 4))
    if len(bad):
        i = bad[0]
        h, w, c = sizes[i]
        raise DataError(f"{where(i)}: column {layout.column!r} holds {lengths[i]} bytes, not the "
                        f"{h}x{w}x{c or '?'} = {pixels[i] * max(c, 1)} of raw pixels of its shape "
                        f"({_shape_source(layout)})")
    if (sizes == (height, width, channels)).all() and (lengths == height * width * channels).all():
        block = values[starts[0]:starts[-1]]
        out[:] = block.reshape(n, height, width, channels)
        return out
    for i in range(n):
        h, w, c = sizes[i]
        image = values[starts[i]:starts[i + 1]].reshape(h, w, c)
        out[i] = _fitted(image, shape, fit, where, i)
    return out


def _shape_source(layout: Layout) -> str:
    if layout.fixed_shape:
        return f"the column type's {'x'.join(str(s) for s in layout.fixed_shape)}"
    return "columns " + ", ".join(layout.shape_columns)


def _decode_one(data, layout: Layout, where, i) -> np.ndarray:
    from PIL import Image

    try:
        return _decode(data.tobytes())
    except (*PILLOW_ERRORS, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{where(i)}: column {layout.column!r} holds {len(data)} bytes that are "
                        f"not an image Pillow can decode ({reason})") from None


def _fitted(image: np.ndarray, shape: tuple, fit, where, i) -> np.ndarray:
    """(h, w, c) -> (H, W, C) of `shape`: channels adapted, resized by `fit` if needed."""
    image = _to_channels(image, shape[2])
    if image.shape[:2] != tuple(shape[:2]):
        if fit is None:
            h, w = image.shape[:2]
            raise DataError(f"{where(i)}: image is {h}x{w}, the others {shape[0]}x{shape[1]}; "
                            "give --image-size HxW to resize them all")
        image = fit_image(image, fit[0], fit[1])
    return image
