"""Parquet sources on the local disk (spark/data/parquet.py, parquet_decode.py,
parquet_images.py, synthetic_parquet.py): the layouts, labels and class names,
the errors, the splits, and the lazy images (row groups read, cache, pickle,
threads). The same files on HDFS: test_parquet_hdfs.py."""
import io
import json
import pickle
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from spark.data import parquet_images
from spark.data.dataset import DataError, TooFewImagesError
from spark.data.parquet import CLASS_NAMES_KEY, load_parquet
from spark.data.parquet_images import ParquetImages
from spark.data.source import DataOptions, detect_format, load_dataset
from spark.data.synthetic_parquet import main as synthetic_main
from spark.data.synthetic_parquet import write_synthetic_parquet


@pytest.fixture(autouse=True)
def fresh_cache():
    parquet_images.clear_cache()
    yield
    parquet_images.clear_cache()


def pixels(n, height=6, width=5, channels=3, seed=0):
    """Random uint8 images (n, height, width, channels)."""
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, channels), np.uint8)


def png(image, mode=None):
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image, mode)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def write(path, columns, names=None, row_group=None):
    """Write a Parquet file of `columns` (name -> pyarrow array or list), the class names
    in the metadata if given; returns the path as a str."""
    table = pa.table(columns)
    if names is not None:
        table = table.replace_schema_metadata({CLASS_NAMES_KEY: json.dumps(names)})
    pq.write_table(table, path, row_group_size=row_group)
    return str(path)


def raw_columns(images, labels):
    """The converter's layout: raw bytes, height, width, channels (int32), label (int64)."""
    n, h, w, c = images.shape
    return {"image": pa.array([i.tobytes() for i in images], pa.binary()),
            "height": pa.array([h] * n, pa.int32()), "width": pa.array([w] * n, pa.int32()),
            "channels": pa.array([c] * n, pa.int32()), "label": pa.array(labels, pa.int64())}


def error_line(excinfo):
    text = str(excinfo.value)
    assert "\n" not in text, text
    return text


# -- layouts -----------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_raw_and_png_layouts_give_the_images_they_were_made_from(tmp_path, channels):
    images = pixels(40, channels=channels)
    labels = np.arange(40) % 4
    raw = write(tmp_path / "raw.parquet", raw_columns(images, labels), row_group=16)
    encoded = write(tmp_path / "png.parquet", {"image": [png(i) for i in images],
                                               "label": labels}, row_group=16)
    for path in (raw, encoded):
        data = load_parquet(path)
        assert isinstance(data.images, ParquetImages)
        assert data.images.shape == images.shape and data.images.dtype == np.uint8
        assert data.image_shape == images.shape[1:]
        np.testing.assert_array_equal(data.images[:], images)
        np.testing.assert_array_equal(data.labels, labels)
        assert data.labels.dtype == np.int64


def test_other_layouts_tensor_types_shape_lists_structs_and_rgba(tmp_path):
    images = pixels(12, 4, 3, 3)
    flat = pa.array([i.ravel() for i in images], pa.list_(pa.uint8(), 36))
    tensor = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.uint8(), (4, 3, 3)), flat)
    nested = pa.array([i.tolist() for i in images],
                      pa.list_(pa.list_(pa.list_(pa.uint8(), 3), 3), 4))
    rgba = np.concatenate([images, np.full((12, 4, 3, 1), 7, np.uint8)], axis=3)
    layouts = {
        "tensor": {"image": tensor},
        "nested": {"img": nested},
        "shape_list": {"data": pa.array([i.tobytes() for i in images]),
                       "shape": pa.array([[4, 3, 3]] * 12, pa.list_(pa.int32()))},
        "int_lists": {"image": pa.array([i.ravel().tolist() for i in images],
                                        pa.list_(pa.int64())),
                      "height": [4] * 12, "width": [3] * 12},
        "hugging_face": {"image": pa.array([{"bytes": png(i), "path": f"{k}.png"}
                                            for k, i in enumerate(images)])},
        "rgba_png": {"bytes": [png(i) for i in rgba]},
        "raw_rgba": {"image": [i.tobytes() for i in rgba], "height": [4] * 12,
                     "width": [3] * 12, "channels": [4] * 12},
    }
    for name, columns in layouts.items():
        path = write(tmp_path / f"{name}.parquet", {**columns, "target": list(range(12))})
        np.testing.assert_array_equal(load_parquet(path).images[:], images, err_msg=name)


def test_grayscale_without_a_channels_column_and_mixed_channels_read_as_color(tmp_path):
    gray = pixels(5, channels=1)
    path = write(tmp_path / "gray.parquet", {"image": [i.tobytes() for i in gray],
                                             "height": [6] * 5, "width": [5] * 5, "label": [0] * 5})
    np.testing.assert_array_equal(load_parquet(path).images[:], gray)
    color = pixels(5, seed=1)
    mixed = write(tmp_path / "mixed.parquet",
                  {"image": [png(i) for i in gray] + [png(i) for i in color], "label": [0] * 10})
    images = load_parquet(mixed).images[:]
    assert images.shape == (10, 6, 5, 3)
    np.testing.assert_array_equal(images[:5], np.repeat(gray, 3, axis=3))
    np.testing.assert_array_equal(images[5:], color)


def test_the_synthetic_writer_raw_and_png_equal_and_learnable_labels(tmp_path, capsys):
    raw = tmp_path / "raw.parquet"
    assert synthetic_main([str(raw), "--images", "130", "--size", "20x24", "--channels", "1",
                           "--classes", "4", "--row-group", "50"]) == 0
    assert "wrote 130 synthetic 20x24x1 images" in capsys.readouterr().out
    encoded = write_synthetic_parquet(tmp_path / "png.parquet", 130, (20, 24), 1, "png", 4, 50)
    a, b = load_parquet(raw), load_parquet(encoded)
    assert a.images.shape == (130, 20, 24, 1) and a.images.row_groups == 3
    np.testing.assert_array_equal(a.images[:], b.images[:])
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.class_names == ["class0", "class1", "class2", "class3"]
    assert np.bincount(a.labels).tolist() == [33, 33, 32, 32]
    schema = pq.read_schema(raw)
    assert schema.names == ["image", "height", "width", "channels", "label"]
    assert [str(t) for t in schema.types] == ["binary", "int32", "int32", "int32", "int64"]
    # the class is in the images: class means differ more than the noise of the means
    x = a.images[:].reshape(130, -1).astype(float)
    means = np.stack([x[a.labels == k].mean(axis=0) for k in range(4)])
    assert np.abs(means[0] - means[2]).mean() > 5


# -- labels and class names --------------------------------------------------------------

def test_string_labels_become_the_sorted_names_over_both_splits(tmp_path):
    write(tmp_path / "train.parquet", {"image": [png(i) for i in pixels(4)],
                                       "class": ["dog", "cat", "dog", "bird"]})
    write(tmp_path / "test.parquet", {"image": [png(i) for i in pixels(2)],
                                      "class": ["emu", "cat"]})
    train = load_parquet(tmp_path, "train")
    test = load_parquet(tmp_path, "test")
    assert train.class_names == test.class_names == ["bird", "cat", "dog", "emu"]
    assert train.labels.tolist() == [2, 1, 2, 0] and test.labels.tolist() == [3, 1]


def test_integer_labels_number_the_classes_or_take_the_metadata_names(tmp_path):
    images = [png(i) for i in pixels(3)]
    path = write(tmp_path / "a.parquet", {"image": images, "labels": pa.array([0, 4, 2],
                                                                              pa.int16())})
    data = load_parquet(path)
    assert data.class_names == ["0", "1", "2", "3", "4"] and data.labels.tolist() == [0, 4, 2]
    named = write(tmp_path / "b.parquet", {"image": images, "label": [0, 1, 1]},
                  names=["left", "right"])
    assert load_parquet(named).class_names == ["left", "right"]
    strings = write(tmp_path / "c.parquet", {"image": images, "label": ["right", "up", "up"]},
                    names=["up", "right"])
    assert load_parquet(strings).labels.tolist() == [1, 0, 0]
    too_big = write(tmp_path / "d.parquet", {"image": images, "label": [0, 2, 1]},
                    names=["left", "right"])
    with pytest.raises(DataError) as excinfo:
        load_parquet(too_big)
    assert "row 1: label 2 but only 2 class names" in error_line(excinfo)


def test_a_label_column_with_nulls_says_how_many_and_the_first_row(tmp_path):
    path = write(tmp_path / "nulls.parquet", {"image": [png(i) for i in pixels(6)],
                                              "label": [1, 0, None, 1, None, None]})
    with pytest.raises(DataError) as excinfo:
        load_parquet(path)
    assert error_line(excinfo) == (f"{path}: column 'label' has 3 nulls (the first in row 2); "
                                   "every image needs a label")


# -- errors ------------------------------------------------------------------------------

def test_missing_columns_name_the_columns_the_file_has(tmp_path):
    path = write(tmp_path / "cols.parquet", {"picture": [b"x"], "label": [0], "note": ["a"]})
    with pytest.raises(DataError) as excinfo:
        load_parquet(path)
    assert error_line(excinfo) == (f"{path} has no image column (image, img, data, bytes); its "
                                   "columns: picture, label, note; name it with --image-column")
    with pytest.raises(DataError) as excinfo:
        load_parquet(path, options=DataOptions(image_column="picture", label_column="kind"))
    assert error_line(excinfo) == (f"{path} has no column 'kind' (--label-column); its "
                                   "columns: picture, label, note")


def test_an_undecodable_image_names_its_row(tmp_path):
    images = [png(i) for i in pixels(6)]
    images[4] = b"not an image at all"
    path = write(tmp_path / "bad.parquet", {"image": images, "label": [0] * 6}, row_group=3)
    with pytest.raises(DataError) as excinfo:
        load_parquet(path)
    assert error_line(excinfo).startswith(f"{path} row 4: column 'image' holds 19 bytes that "
                                          "are not an image Pillow can decode")


def test_raw_bytes_of_the_wrong_length_name_their_row(tmp_path):
    images = pixels(4)
    columns = raw_columns(images, [0] * 4)
    blobs = [i.tobytes() for i in images]
    blobs[3] = blobs[3][:-1]
    columns["image"] = pa.array(blobs)
    path = write(tmp_path / "short.parquet", columns, row_group=2)
    data = load_parquet(path)
    np.testing.assert_array_equal(data.images[:2], images[:2])     # the other row group
    with pytest.raises(DataError) as excinfo:
        data.images[3]
    assert error_line(excinfo) == (f"{path} row 3: column 'image' holds 89 bytes, not the "
                                   "6x5x3 = 90 of raw pixels of its shape (columns height, "
                                   "width, channels)")


def test_a_file_that_is_not_parquet(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_bytes(b"these are not the bytes of a Parquet file")
    with pytest.raises(DataError) as excinfo:
        load_dataset(path)
    assert error_line(excinfo).startswith(f"{path}: not a Parquet file (")
    with pytest.raises(DataError) as excinfo:
        load_dataset(tmp_path / "absent.parquet")
    assert error_line(excinfo) == f"{tmp_path / 'absent.parquet'}: no such file or folder"


def test_mixed_sizes_name_a_row_of_each_size_or_are_resized(tmp_path):
    small, big = pixels(3, 6, 5), pixels(2, 8, 10, seed=1)
    first = write(tmp_path / "part-1.parquet", raw_columns(small, [0, 1, 0]))
    second = write(tmp_path / "part-2.parquet",
                   {"image": [png(big[0]), png(small[0]), png(big[1])], "label": [1, 0, 1]})
    with pytest.raises(DataError) as excinfo:
        load_parquet(tmp_path)
    assert error_line(excinfo) == (f"{tmp_path}: images of mixed sizes: 6x5 ({first} row 0), "
                                   f"8x10 ({second} row 0); give --image-size HxW to resize "
                                   "them (with --crop, to center-crop)")
    data = load_parquet(tmp_path, options=DataOptions(image_size=(6, 5)))
    assert data.images.shape == (6, 6, 5, 3)
    every = data.images[:]
    np.testing.assert_array_equal(every[:3], small)          # already 6x5: untouched
    np.testing.assert_array_equal(every[4], small[0])
    expected = np.asarray(Image.fromarray(big[0]).resize((5, 6), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(every[3], expected)
    cropped = load_parquet(tmp_path, options=DataOptions(image_size=(4, 4), crop=True))
    assert cropped.images[:].shape == (6, 4, 4, 3)
    # 6x5 covers 4x4 scaled by 0.8 (to 5x4), then the middle 4 rows
    scaled = np.asarray(Image.fromarray(small[1]).resize((4, 5), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(cropped.images[1], scaled[0:4])


# -- splits and limits -------------------------------------------------------------------

def test_splits_from_file_names_subfolders_or_a_single_file(tmp_path):
    a, b = pixels(5), pixels(3, seed=1)
    named = tmp_path / "named"
    named.mkdir()
    write(named / "train-0.parquet", raw_columns(a[:2], [0, 1]))
    write(named / "train-1.parquet", raw_columns(a[2:], [1, 0, 1]))
    write(named / "test.parquet", raw_columns(b, [0, 0, 1]))
    (named / "_SUCCESS").write_bytes(b"")
    folders = tmp_path / "folders"
    for split, images in (("train", a), ("test", b)):
        (folders / split).mkdir(parents=True)
        write(folders / split / "part-00000.parquet", raw_columns(images, [0] * len(images)))
    assert detect_format(folders) == "parquet" and detect_format(named) == "parquet"
    for root in (named, folders):
        np.testing.assert_array_equal(load_dataset(root, "train").images[:], a)
        np.testing.assert_array_equal(load_dataset(root, "test").images[:], b)
    single = named / "test.parquet"
    with pytest.raises(DataError) as excinfo:
        load_parquet(single, "test")
    assert error_line(excinfo).startswith(f"{single} is one Parquet file, read as the training "
                                          "split: give the test split as a Parquet file of its "
                                          "own")
    plain = tmp_path / "plain"
    plain.mkdir()
    write(plain / "x.parquet", raw_columns(b, [0, 0, 1]))
    assert len(load_parquet(plain)) == 3
    with pytest.raises(DataError) as excinfo:
        load_parquet(plain, "test")
    assert "read as the training split: give the test split" in error_line(excinfo)


def test_limit_takes_the_first_rows_and_reads_only_their_row_groups(tmp_path):
    images = pixels(50)
    write(tmp_path / "train-a.parquet", raw_columns(images[:20], np.arange(20) % 3), row_group=8)
    write(tmp_path / "train-b.parquet", raw_columns(images[20:], np.arange(20, 50) % 3))
    data = load_parquet(tmp_path, limit=17)
    assert len(data) == 17 and data.images.row_groups == 3
    assert len(data.images.files) == 1
    np.testing.assert_array_equal(data.images[:], images[:17])
    np.testing.assert_array_equal(data.labels, np.arange(17) % 3)
    assert data.class_names == ["0", "1", "2"]      # over every file of the source
    data = load_parquet(tmp_path, limit=23)
    np.testing.assert_array_equal(data.images[:], images[:23])
    assert len(load_parquet(tmp_path, limit=0)) == 0
    with pytest.raises(TooFewImagesError) as excinfo:
        load_parquet(tmp_path, limit=51)
    assert error_line(excinfo) == f"limit=51 but the train split in {tmp_path} has only 50 images"


# -- the lazy images ---------------------------------------------------------------------

def count_row_group_reads(monkeypatch):
    """Record (row group) of every ParquetFile.read_row_group call."""
    calls = []
    original = pq.ParquetFile.read_row_group

    def read_row_group(self, i, *args, **kwargs):
        calls.append(i)
        return original(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", read_row_group)
    return calls


def test_indexing_reads_only_the_row_groups_holding_the_rows(tmp_path, monkeypatch):
    images = pixels(100)
    path = write(tmp_path / "rg.parquet", raw_columns(images, [0] * 100), row_group=10)
    data = load_parquet(path)
    reads = count_row_group_reads(monkeypatch)
    np.testing.assert_array_equal(data.images[[57, 3, 55, 3]], images[[57, 3, 55, 3]])
    assert sorted(reads) == [0, 5]
    np.testing.assert_array_equal(data.images[50:60], images[50:60])     # cached: no read
    assert sorted(reads) == [0, 5]
    np.testing.assert_array_equal(data.images[np.array([99, -100])], images[[99, 0]])
    assert sorted(reads) == [0, 5, 9]
    info = parquet_images.cache_info()
    assert info["loads"] == 3 and info["entries"] == 3 and info["bytes"] == 3 * 10 * 90
    # other index forms
    np.testing.assert_array_equal(data.images[-1], images[-1])
    np.testing.assert_array_equal(data.images[8:30:7], images[8:30:7])
    mask = np.zeros(100, bool)
    mask[[1, 98]] = True
    np.testing.assert_array_equal(data.images[mask], images[mask])
    np.testing.assert_array_equal(data.images[np.array([[1, 2], [3, 4]])],
                                  images[np.array([[1, 2], [3, 4]])])
    assert data.images[[]].shape == (0, 6, 5, 3)
    np.testing.assert_array_equal(np.asarray(data.images), images)
    for bad in (100, -101, [5, 100]):
        with pytest.raises(IndexError):
            data.images[bad]


def test_the_cache_is_bounded_in_bytes_and_chunks_pass_without_filling_it(tmp_path,
                                                                          monkeypatch):
    images = pixels(100, 20, 20)                      # 1,200 bytes an image, 12,000 a row group
    path = write(tmp_path / "big.parquet", raw_columns(images, [0] * 100), row_group=10)
    monkeypatch.setenv("SPARK_CNN_PARQUET_CACHE_MB", str(30_000 / 2**20))
    data = load_parquet(path)
    np.testing.assert_array_equal(data.images[:], images)
    info = parquet_images.cache_info()
    assert info["entries"] == 2 and info["bytes"] == 24_000 and info["loads"] == 10
    np.testing.assert_array_equal(data.images[95], images[95])         # the last: kept
    assert parquet_images.cache_info()["loads"] == 10
    np.testing.assert_array_equal(data.images[0], images[0])           # the first: evicted
    assert parquet_images.cache_info()["loads"] == 11
    parquet_images.clear_cache()
    chunks = list(data.images.chunks())
    assert [len(c) for c in chunks] == [10] * 10
    np.testing.assert_array_equal(np.concatenate(chunks), images)
    assert parquet_images.cache_info()["entries"] == 0


def test_pickles_as_a_small_descriptor_that_reads_the_same(tmp_path):
    path = write_synthetic_parquet(tmp_path / "thousand.parquet", 1000, row_group=100)
    data = load_parquet(path, limit=950)
    blob = pickle.dumps(data.images)
    assert len(blob) < 10_000, len(blob)
    assert b"\x89PNG" not in blob and len(blob) < 3072
    parquet_images.clear_cache()
    copy = pickle.loads(blob)
    assert isinstance(copy, ParquetImages) and copy.shape == (950, 32, 32, 3)
    assert copy.row_groups == 10
    index = np.array([0, 949, 512, 100, 99])
    np.testing.assert_array_equal(copy[index], data.images[index])
    assert parquet_images.cache_info()["loads"] == 4
    state = data.images.__getstate__()
    assert set(state) == {"files", "parts", "shape", "fit"}
    assert state["parts"][0][4] == (100,) * 9 + (50,)


def test_a_file_changed_after_loading_is_refused(tmp_path):
    path = write(tmp_path / "x.parquet", raw_columns(pixels(4), [0] * 4))
    data = load_parquet(path)
    write(tmp_path / "x.parquet", raw_columns(pixels(5), [0] * 5))
    with pytest.raises(DataError) as excinfo:
        data.images[0]
    assert error_line(excinfo) == f"{path} changed since it was opened; load the data again"


def test_threads_reading_the_same_row_groups_decode_each_once(tmp_path, monkeypatch):
    images = pixels(60)
    path = write(tmp_path / "threads.parquet", raw_columns(images, [0] * 60), row_group=20)
    data = load_parquet(path)
    reads = count_row_group_reads(monkeypatch)
    original = parquet_images.decode_rows
    started = threading.Barrier(8)

    def slow_decode(*args, **kwargs):
        threading.Event().wait(0.05)         # the other threads ask while this one decodes
        return original(*args, **kwargs)

    monkeypatch.setattr(parquet_images, "decode_rows", slow_decode)
    results, errors = [None] * 8, []

    def read(k):
        try:
            started.wait()
            index = np.arange(60)[::-1] if k % 2 else np.arange(60)
            results[k] = (index, data.images[index])
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=read, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for index, got in results:
        np.testing.assert_array_equal(got, images[index])
    assert sorted(reads) == [0, 1, 2]
    assert parquet_images.cache_info()["loads"] == 3


# -- HDFS without a server: the path forms, errors, and range reads -----------------------

def test_hdfs_paths_need_a_webhdfs_address_and_a_server_that_answers():
    with pytest.raises(DataError) as excinfo:
        load_dataset("hdfs://namenode:8020/data/x.parquet")
    assert error_line(excinfo).startswith("hdfs://namenode:8020/data/x.parquet: reading HDFS "
                                          "needs the NameNode's WebHDFS address: give --webhdfs")
    with pytest.raises(DataError) as excinfo:
        load_dataset("webhdfs://127.0.0.1:1/data/x.parquet", options=DataOptions(timeout=5))
    assert error_line(excinfo).startswith(
        "cannot reach the NameNode's WebHDFS at http://127.0.0.1:1 (looking up "
        "webhdfs://127.0.0.1:1/data/x.parquet): ")


def test_a_range_file_serves_a_row_group_from_one_fetch(tmp_path):
    from spark.data.locations import RangeFile
    from spark.data.parquet_images import row_group_span

    path = write_synthetic_parquet(tmp_path / "r.parquet", 300, row_group=100)
    content = path.read_bytes()
    fetched = []

    class MemoryFiles:
        def read_range(self, _path, offset, length):
            fetched.append((offset, length))
            return content[offset:offset + length]

    footer = RangeFile(MemoryFiles(), "r.parquet", len(content))
    metadata = pq.ParquetFile(footer).metadata
    assert fetched == [(len(content) - 64 * 1024, 64 * 1024)]     # pyarrow's footer read
    handle = RangeFile(MemoryFiles(), "r.parquet", len(content))
    columns = ["image", "height", "width", "channels"]
    handle.prefetch(*row_group_span(metadata, 1, columns))
    table = pq.ParquetFile(handle, metadata=metadata).read_row_group(1, columns=columns)
    assert handle.fetches == 1 and table.num_rows == 100
    assert fetched[1][1] < len(content) / 2
    expected = pq.read_table(path).slice(100, 100)
    assert table.column("image").equals(expected.column("image"))
