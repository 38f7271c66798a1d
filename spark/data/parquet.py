"""Images and labels in Parquet files, local or on HDFS.

    load_parquet(path, split="train", limit=None, options=DataOptions()) -> Dataset

`path`: a .parquet file, or a folder of them; local, or on HDFS as
``hdfs://host:port/path`` (read through the WebHDFS address options.webhdfs:
host:port is the NameNode's RPC address) or ``webhdfs://host:port/path``.

The splits. A folder with ``train*.parquet`` and/or ``test*.parquet`` files, or
with ``train/`` and ``test/`` subfolders (of .parquet files), holds both
splits; any other folder, or a single file, is the training split alone. Files
whose names start with "_" or "." are left out; files are read in name order.

Each row is one image. The columns (checked in every file):

- image: options.image_column (--image-column), else the first of
  ``image``, ``img``, ``data``, ``bytes`` present. It holds either encoded
  images (PNG, JPEG, ... anything Pillow reads; or a struct whose ``bytes``
  field holds them, as Hugging Face datasets write) or raw uint8 pixels,
  row-major height x width x channels (see spark/data/parquet_decode.py for
  every form). Raw pixels need their shape: int columns ``height``, ``width``
  and (optional) ``channels``, a list column ``shape`` of (H, W[, C]), or a
  column type that carries it (nested fixed-size lists H x W x C, Arrow's
  fixed_shape_tensor). Bytes with a shape are raw when the first row's length
  is H * W * C and it is not an encoded image of that size; else encoded.
  This is what ``python3 -m spark.data.convert`` writes: ``image`` (raw bytes),
  ``height``, ``width``, ``channels`` (int32), ``label`` (int64).
- label: options.label_column (--label-column), else the first of ``label``,
  ``labels``, ``class``, ``target`` present: integers 0..K-1, or strings.

The class names: the JSON list in the schema metadata key
``spark-cnn.class_names`` (of the first file that has it; the converter
writes it), else the sorted distinct string labels, else "0".."K-1" with K
one more than the largest label; the last two over all the files of both
splits, so that both splits number the classes alike.

The images are not read here: `Dataset.images` is a ParquetImages, read a
row group at a time when indexed (parquet_images.py). What is read now: the
footers, the labels, the first row group of a file whose bytes have a shape
(raw or encoded?), and the image sizes: from the shape columns or the column
type, or for encoded images without ``height``, ``width`` and ``channels``
columns, from every image's header (the image column passes through once, a
row group at a time). `limit` keeps the split's first rows, in file order,
and reads only the files and row groups holding them (and, for class names
not in the metadata, the label columns of every file).

Images of mixed sizes are an error naming a row of each size unless
options.image_size (--image-size) is given: then each is resized to it, or
with options.crop scaled to cover it and center-cropped. A split with both
grayscale and color images is read as color. Failures are one-line
DataErrors naming the file, column or row.
"""
from __future__ import annotations

import json

import numpy as np

from .dataset import DataError, Dataset, TooFewImagesError, check_limit
from .locations import Files, locate
from .options import DataOptions
from .parquet_decode import (
    PILLOW_ERRORS,
    Layout,
    image_column,
    image_header,
    row_values,
    shape_rows,
)
from .parquet_images import ParquetImages, open_parquet

__all__ = ["CLASS_NAMES_KEY", "IMAGE_COLUMNS", "LABEL_COLUMNS", "ParquetImages",
           "find_splits", "load_parquet"]

IMAGE_COLUMNS = ("image", "img", "data", "bytes")
LABEL_COLUMNS = ("label", "labels", "class", "target")
CLASS_NAMES_KEY = "spark-cnn.class_names"
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
               b"II*\x00", b"MM\x00*", b"RIFF")
_MAX_SIZES_SHOWN = 4


def load_parquet(path, split: str = "train", limit=None, options=None) -> Dataset:
    """The first `limit` images (all if None) of `split` ("train" or "test") of the Parquet
    source at `path`, as `options` (a DataOptions) say; see the module docstring."""
    options = options or DataOptions()
    want = check_limit(limit)
    files, root = locate(path, options)
    splits = find_splits(files, root)
    if split not in splits:
        raise DataError(_no_split(files, root, split, splits))
    fit = _check_size(options)

    opened, total = [], 0
    for name in splits[split]:
        if want is not None and total >= want and opened:
            break
        opened.append(_ParquetSource(files, name))
        total += opened[-1].rows
    if want is not None and total < want:
        raise TooFewImagesError(f"limit={want} but the {split} split in {files.url(root)} has "
                                f"only {total} images")
    used = _rows_used(opened, want)
    layouts = [source.layout(options.image_column) for source in opened]
    labels = [source.labels(options.label_column, rows) for source, rows in zip(opened, used)]
    class_names, labels = _class_names(files, splits, opened, labels, options.label_column)
    sizes = [source.sizes(layout, rows) for source, layout, rows in zip(opened, layouts, used)]
    if not sum(used) and opened[0].rows:      # limit 0: the shape of the first image
        sizes = [opened[0].sizes(layouts[0], 1)]
    height, width = _image_size(files.url(root), opened, sizes, fit)
    channels = 3 if any((s[:, 2] >= 3).any() for s in sizes) else 1
    count = int(sum(used))
    parts = [(source.path, source.size, source.mtime, layout, source.group_rows(rows))
             for source, layout, rows in zip(opened, layouts, used)]
    images = ParquetImages(files, parts, (count, height, width, channels),
                           None if fit is None else (fit, options.crop))
    return Dataset(images=images, labels=np.concatenate(labels).astype(np.int64, copy=False),
                   class_names=class_names)


def find_splits(files: Files, root: str) -> dict[str, list[str]]:
    """{"train": [paths], "test": [paths]} of the source at `root` (a split without files is
    left out); see the module docstring."""
    kind = files.kind(root)
    if kind is None:
        raise DataError(f"{files.url(root)}: no such file or folder")
    if kind == "file":
        return {"train": [root]}
    entries = [(name, folder) for name, folder in files.list(root)
               if not name.startswith(("_", "."))]
    parquet = [name for name, folder in entries if not folder and name.endswith(".parquet")]
    named = {split: [files.join(root, n) for n in parquet if n.startswith(split)]
             for split in ("train", "test")}
    if not any(named.values()):
        folders = {name for name, folder in entries if folder}
        if folders & {"train", "test"}:
            named = {split: _parquet_files(files, files.join(root, split))
                     for split in ("train", "test") if split in folders}
        else:
            named = {"train": [files.join(root, n) for n in parquet]}
            if not parquet:
                raise DataError(f"{files.url(root)}: no .parquet files in the folder")
    return {split: paths for split, paths in named.items() if paths}


def _parquet_files(files: Files, folder: str) -> list[str]:
    return [files.join(folder, name) for name, is_folder in files.list(folder)
            if not is_folder and name.endswith(".parquet") and not name.startswith(("_", "."))]


def _no_split(files: Files, root: str, split: str, splits: dict) -> str:
    url = files.url(root)
    if files.kind(root) == "file":
        return (f"{url} is one Parquet file, read as the training split: give the {split} split "
                f"as a Parquet file of its own (or a folder with train*.parquet and "
                f"test*.parquet files, or train/ and test/ subfolders)")
    if set(splits) == {"train"} and not _has_split_names(files, root):
        return (f"{url} is one folder of Parquet files, read as the training split: give the "
                f"{split} split as a Parquet file of its own (or name the files train*.parquet "
                f"and test*.parquet, or use train/ and test/ subfolders)")
    return f"{url}: no {split}*.parquet files and no {split}/ folder of .parquet files"


def _has_split_names(files: Files, root: str) -> bool:
    return any(name.startswith(("train", "test")) for name, _ in files.list(root))



def _check_size(options) -> tuple[int, int] | None:
    if options.image_size is None:
        return None
    size = tuple(options.image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in size):
        raise DataError(f"image size {options.image_size!r}: expected (height, width), "
                        "positive integers")
    return int(size[0]), int(size[1])


def _rows_used(opened: list, want) -> list[int]:
    """The rows read from each file: all, except that the first `want` rows end the list."""
    used, left = [], want
    for source in opened:
        take = source.rows if left is None else min(left, source.rows)
        used.append(take)
        left = None if left is None else left - take
    return used


def _first_of(source: _ParquetSource, given: str | None, defaults: tuple, what: str,
              flag: str) -> str:
    names = source.schema.names
    if given:
        if given in names:
            return given
        raise DataError(f"{source.url} has no column {given!r} ({flag}); its columns: "
                        f"{', '.join(names)}")
    for name in defaults:
        if name in names:
            return name
    raise DataError(f"{source.url} has no {what} column ({', '.join(defaults)}); its columns: "
                    f"{', '.join(names)}; name it with {flag}")


class _ParquetSource:
    """One Parquet file: its size, footer and schema, and reading its small columns."""

    def __init__(self, files: Files, path: str):
        self.files, self.path = files, path
        self.url = files.url(path)
        self.size, self.mtime = files.stat(path)
        with open_parquet(files, path, self.size, self.mtime) as (parquet, _):
            self.metadata = parquet.metadata
            self.schema = parquet.schema_arrow
        self.rows = self.metadata.num_rows

    def group_rows(self, rows: int) -> tuple:
        """The rows used of each row group when the file's first `rows` rows are."""
        out, left = [], rows
        for g in range(self.metadata.num_row_groups):
            take = min(left, self.metadata.row_group(g).num_rows)
            if take <= 0:
                break
            out.append(take)
            left -= take
        return tuple(out)

    def read(self, columns: list[str], rows: int):
        """The first `rows` rows of `columns` (a pyarrow Table), reading only their row groups."""
        import pyarrow as pa

        groups = list(range(len(self.group_rows(rows))))
        with open_parquet(self.files, self.path, self.size, self.mtime) as (parquet, _):
            try:
                table = parquet.read_row_groups(groups, columns=columns)
            except (pa.ArrowException, OSError) as e:
                text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DataError(f"{self.url}: cannot read the columns {', '.join(columns)} "
                                f"({text})") from None
        return table.slice(0, rows)

    def class_names(self) -> list[str] | None:
        """The names in the schema metadata key CLASS_NAMES_KEY, or None."""
        raw = (self.schema.metadata or {}).get(CLASS_NAMES_KEY.encode())
        if raw is None:
            return None
        try:
            names = json.loads(raw)
        except ValueError:
            names = None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"{self.url}: schema metadata {CLASS_NAMES_KEY} is not a JSON list of "
                            "class names")
        return names

    # -- labels ------------------------------------------------------------------

    def labels(self, given: str | None, rows: int):
        """The first `rows` labels: int64 array, or an object array of strings."""
        import pyarrow as pa

        name = _first_of(self, given, LABEL_COLUMNS, "label", "--label-column")
        column = self.read([name], rows).column(name).combine_chunks()
        if column.null_count:
            first = int(np.flatnonzero(np.asarray(column.is_null()))[0])
            raise DataError(f"{self.url}: column {name!r} has {column.null_count} nulls (the "
                            f"first in row {first}); every image needs a label")
        kind = column.type
        if pa.types.is_dictionary(kind):
            column, kind = column.cast(kind.value_type), kind.value_type
        if pa.types.is_integer(kind):
            values = np.asarray(column, dtype=np.int64)
            if len(values) and values.min() < 0:
                row = int(np.argmin(values))
                raise DataError(f"{self.url} row {row}: label {values[row]} in column {name!r}: "
                                "expected classes numbered from 0")
            return values
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return np.asarray(column.to_pylist(), dtype=object)
        raise DataError(f"{self.url}: column {name!r} holds {kind}: expected integer classes or "
                        "string class names (name another with --label-column)")

    # -- images ------------------------------------------------------------------

    def layout(self, given: str | None) -> Layout:
        """How this file stores its images (see the module docstring)."""
        import pyarrow as pa

        name = _first_of(self, given, IMAGE_COLUMNS, "image", "--image-column")
        kind = self.schema.field(name).type
        shape_columns = self._shape_columns()
        if pa.types.is_struct(kind):
            fields = [kind.field(i) for i in range(kind.num_fields)]
            if any(f.name == "bytes" and _is_bytes(f.type) for f in fields):
                return Layout(name, "encoded", field="bytes")
        elif isinstance(kind, pa.FixedShapeTensorType):
            return Layout(name, "raw", fixed_shape=self._fixed(name, list(kind.shape)))
        elif pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) \
                or pa.types.is_large_list(kind):
            dims, leaf = [], kind
            while pa.types.is_fixed_size_list(leaf):
                dims.append(leaf.list_size)
                leaf = leaf.value_type
            if pa.types.is_list(leaf) or pa.types.is_large_list(leaf):
                leaf = leaf.value_type
            if pa.types.is_integer(leaf):
                if len(dims) >= 2:
                    return Layout(name, "raw", fixed_shape=self._fixed(name, dims))
                if shape_columns:
                    return Layout(name, "raw", shape_columns=shape_columns)
                raise DataError(f"{self.url}: column {name!r} holds flat lists of pixel values "
                                "but no shape: add int columns height, width, channels")
        elif _is_bytes(kind):
            if shape_columns and self._first_is_raw(name, shape_columns):
                return Layout(name, "raw", shape_columns=shape_columns)
            return Layout(name, "encoded", shape_columns=shape_columns)
        raise DataError(f"{self.url}: column {name!r} holds {kind}: expected image bytes "
                        "(encoded or raw), or lists of pixel values (name another with "
                        "--image-column)")

    def _fixed(self, name: str, dims: list) -> tuple:
        if len(dims) == 2:
            dims = [*dims, 1]
        if len(dims) != 3 or dims[2] not in (1, 2, 3, 4) or min(dims) < 1:
            raise DataError(f"{self.url}: column {name!r} has the shape {dims}: expected "
                            "height x width x channels, 1 to 4 channels")
        return tuple(int(d) for d in dims)

    def _shape_columns(self) -> tuple:
        import pyarrow as pa

        types = {f.name: f.type for f in self.schema}
        if pa.types.is_integer(types.get("height", pa.null())) \
                and pa.types.is_integer(types.get("width", pa.null())):
            if pa.types.is_integer(types.get("channels", pa.null())):
                return ("height", "width", "channels")
            return ("height", "width")
        shape = types.get("shape", pa.null())
        if (pa.types.is_list(shape) or pa.types.is_large_list(shape)
                or pa.types.is_fixed_size_list(shape)) and pa.types.is_integer(shape.value_type):
            return ("shape",)
        return ()

    def _first_is_raw(self, name: str, shape_columns: tuple) -> bool:
        """Whether the first row's bytes are raw pixels of the shape its columns give."""
        if not self.rows:
            return True
        table = self.read([name, *shape_columns], 1)
        layout = Layout(name, "raw", shape_columns=shape_columns)
        h, w, c = shape_rows(table, layout, self._row_name)[0]
        values, starts = row_values(image_column(table, layout))
        data = values[starts[0]:starts[1]].tobytes()
        expected = h * w * c if c else h * w * min(4, max(1, len(data) // (h * w)))
        if len(data) != expected:
            return False
        if data.startswith(_SIGNATURES):
            try:
                return image_header(data)[:2] != (h, w)
            except PILLOW_ERRORS:
                return True
        return True

    def _row_name(self, i) -> str:
        return f"{self.url} row {int(i)}"

    def sizes(self, layout: Layout, rows: int) -> np.ndarray:
        """(rows, 3) int64: the (height, width, channels) of each of the first `rows` images."""
        if layout.fixed_shape:
            return np.tile(np.asarray(layout.fixed_shape, dtype=np.int64), (rows, 1))
        if layout.kind == "raw" or layout.shape_columns == ("height", "width", "channels"):
            out = shape_rows(self.read(layout.shape_columns, rows), layout, self._row_name)
            if layout.kind == "raw" and (out[:, 2] == 0).any():
                out[out[:, 2] == 0, 2] = self._first_channels(layout, out)
            return out
        return self._headers(layout, rows)

    def _first_channels(self, layout: Layout, sizes: np.ndarray) -> int:
        """The channel count of raw images without one: the first row's bytes / (H * W)."""
        if not len(sizes):
            return 1
        table = self.read(layout.columns, 1)
        values, starts = row_values(image_column(table, layout))
        return int((starts[1] - starts[0]) // (sizes[0, 0] * sizes[0, 1]))

    def _headers(self, layout: Layout, rows: int) -> np.ndarray:
        """(rows, 3) sizes of encoded images, from their headers, a row group at a time."""
        out = np.zeros((rows, 3), dtype=np.int64)
        start = 0
        for g, used in enumerate(self.group_rows(rows)):
            with open_parquet(self.files, self.path, self.size, self.mtime) as (parquet, _):
                table = parquet.read_row_group(g, columns=[layout.column]).slice(0, used)
            column = image_column(table, layout)
            if column.null_count:
                first = int(np.flatnonzero(np.asarray(column.is_null()))[0])
                raise DataError(f"{self.url} row {start + first}: no image in column "
                                f"{layout.column!r} ({column.null_count} nulls in this row "
                                "group)")
            values, starts = row_values(column)
            for i in range(used):
                data = values[starts[i]:starts[i + 1]].tobytes()
                try:
                    out[start + i] = image_header(data)
                except PILLOW_ERRORS as e:
                    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                    raise DataError(f"{self.url} row {start + i}: column {layout.column!r} "
                                    f"holds {len(data)} bytes that are not an image Pillow can "
                                    f"decode ({reason})") from None
            start += used
        return out


def _is_bytes(kind) -> bool:
    import pyarrow as pa
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) \
        or pa.types.is_fixed_size_binary(kind)


def _image_size(where: str, opened: list, sizes: list, fit) -> tuple[int, int]:
    """(H, W) of the split's images: `fit` if given, else their one size (DataError if mixed)."""
    if fit is not None:
        return fit
    seen: dict = {}
    for source, size in zip(opened, sizes):
        if not len(size):
            continue
        pairs, first = np.unique(size[:, :2], axis=0, return_index=True)
        for (h, w), row in zip(pairs, first):
            seen.setdefault((int(h), int(w)), f"{source.url} row {int(row)}")
    if len(seen) > 1:
        shown = [f"{h}x{w} ({where_})" for (h, w), where_ in
                 sorted(seen.items(), key=lambda item: item[1])][:_MAX_SIZES_SHOWN]
        more = len(seen) - len(shown)
        shown += [f"and {more} more sizes"] if more > 0 else []
        raise DataError(f"{where}: images of mixed sizes: {', '.join(shown)}; give --image-size "
                        "HxW to resize them (with --crop, to center-crop)")
    if not seen:
        raise DataError(f"{where}: no images (empty files)")
    return next(iter(seen))


def _class_names(files: Files, splits: dict, opened: list, labels: list,
                 given: str | None) -> tuple[list[str], list[np.ndarray]]:
    """(class names, int64 labels per file) for the labels read from `opened`."""
    strings = [values.dtype == object for values in labels]
    if any(strings) and not all(strings):
        text = opened[strings.index(True)].url
        ints = opened[strings.index(False)].url
        raise DataError(f"labels are strings in {text} but integers in {ints}: use one kind")
    names = next((n for n in (source.class_names() for source in opened) if n), None)
    if names is None:
        names = _names_over_all(files, splits, opened, labels, given, any(strings))
    if any(strings):
        number = {name: k for k, name in enumerate(names)}
        out = []
        for source, values in zip(opened, labels):
            unknown = [v for v in values if v not in number]
            if unknown:
                raise DataError(f"{source.url}: label {unknown[0]!r} is not one of the class "
                                f"names in the metadata {CLASS_NAMES_KEY}")
            out.append(np.fromiter((number[v] for v in values), dtype=np.int64, count=len(values)))
        return names, out
    for source, values in zip(opened, labels):
        if len(values) and values.max() >= len(names):
            row = int(np.argmax(values))
            raise DataError(f"{source.url} row {row}: label {values[row]} but only "
                            f"{len(names)} class names (in {CLASS_NAMES_KEY}): expected 0.."
                            f"{len(names) - 1}")
    return names, labels


def _names_over_all(files: Files, splits: dict, opened: list, labels: list, given, strings):
    """Class names from the labels of every file of every split: the sorted strings, or
    "0".."K-1"."""
    read = {source.path: values for source, values in zip(opened, labels)
            if len(values) == source.rows}
    every = [path for paths in splits.values() for path in paths]
    found: set = set()
    largest = -1
    for path in every:
        values = read.get(path)
        if values is None:
            source = next((s for s in opened if s.path == path), None) or _ParquetSource(files,
                                                                                         path)
            names = source.class_names()
            if names:
                return names
            values = source.labels(given, source.rows)
        if len(values) and (values.dtype == object) != strings:
            raise DataError(f"labels are {'strings' if strings else 'integers'} in "
                            f"{opened[0].url} but not in {files.url(path)}: use one kind")
        if strings:
            found.update(values.tolist())
        elif len(values):
            largest = max(largest, int(values.max()))
    if strings:
        return sorted(found)
    return [str(k) for k in range(largest + 1)] or ["0"]
