"""Tests for spark.data.folder: image folder trees made here with Pillow (tens of
small PNGs), their splits, order, errors, notes and the decoded-image cache."""
from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from PIL import Image

from spark.data import folder as folder_module
from spark.data import images as images_module
from spark.data.dataset import DataError, TooFewImagesError
from spark.data.folder import _decode_all, load_folder
from spark.data.source import DataOptions, detect_format, load_dataset

CLASSES = ("cat", "dog", "emu")


def pixels(key: str, shape=(8, 8, 3)) -> np.ndarray:
    """Repeatable pixels for a file name."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_png(path, shape=(8, 8, 3)):
    """A PNG at `path` whose pixels are pixels(relative name); -> the pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = pixels(path.name + path.parent.name, shape)
    Image.fromarray(array[:, :, 0] if shape[2] == 1 else array).save(path)
    return array


def make_tree(root, counts, shape=(8, 8, 3)):
    """root/<class>/<i>.png for {class: count} -> {relative path: pixels}."""
    written = {}
    for name, count in counts.items():
        for i in range(count):
            path = root / name / f"{i:03d}.png"
            written[f"{name}/{path.name}"] = write_png(path, shape)
    return written


@pytest.fixture
def opts(tmp_path):
    """Options with a cache folder of this test's own."""
    def make(**kwargs):
        kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
        return DataOptions(**kwargs)
    return make


@pytest.fixture
def split_tree(tmp_path):
    """ROOT/train/{cat: 4, dog: 2, emu: 3} and ROOT/test/{cat: 1, emu: 2}."""
    root = tmp_path / "data"
    train = make_tree(root / "train", {"cat": 4, "dog": 2, "emu": 3})
    test = make_tree(root / "test", {"cat": 1, "emu": 2})
    return root, train, test


# ----------------------------------------------------------------------------- layouts

def test_train_and_test_folders(split_tree, opts):
    root, train, test = split_tree
    data = load_folder(root, "train", options=opts())
    assert data.class_names == ["cat", "dog", "emu"]
    assert data.images.shape == (9, 8, 8, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    # round-robin over the sorted classes, files sorted within each class
    order = ["cat/000", "dog/000", "emu/000", "cat/001", "dog/001", "emu/001", "cat/002",
             "emu/002", "cat/003"]
    np.testing.assert_array_equal(data.labels, [0, 1, 2, 0, 1, 2, 0, 2, 0])
    for image, rel in zip(data.images, order):
        np.testing.assert_array_equal(image, train[rel + ".png"])
    assert detect_format(root) == "folder"
    again = load_dataset(root, "train", options=opts())
    np.testing.assert_array_equal(again.images, data.images)

    tested = load_folder(root, "test", options=opts())
    assert tested.class_names == ["cat", "dog", "emu"]  # the training split's
    np.testing.assert_array_equal(tested.labels, [0, 2, 2])
    np.testing.assert_array_equal(tested.images[1], test["emu/000.png"])


def test_limit_takes_the_first_of_the_interleaved_order(split_tree, opts):
    root, train, _ = split_tree
    data = load_folder(root, "train", limit=4, options=opts())
    np.testing.assert_array_equal(data.labels, [0, 1, 2, 0])
    np.testing.assert_array_equal(data.images[3], train["cat/001.png"])
    assert len(load_folder(root, "train", limit=0, options=opts())) == 0
    with pytest.raises(TooFewImagesError, match=r"limit=10 but the train split of .* only 9"):
        load_folder(root, "train", limit=10, options=opts())
    with pytest.raises(ValueError, match="limit"):
        load_folder(root, "train", limit=-1, options=opts())


def test_a_test_class_the_training_split_lacks_is_refused(split_tree, opts):
    root, _, _ = split_tree
    write_png(root / "test" / "yak" / "a.png")
    with pytest.raises(DataError) as info:
        load_folder(root, "test", options=opts())
    assert str(info.value).startswith(f"{root / 'test' / 'yak'}: class 'yak' is not in the "
                                      f"training split {root / 'train'}")
    load_folder(root, "train", options=opts())  # the training split does not care


def test_one_tree_is_all_training_data_and_needs_a_fraction_for_test(tmp_path, opts):
    root = tmp_path / "flowers"
    make_tree(root, {"daisy": 5, "rose": 3})
    data = load_folder(root, "train", options=opts())
    assert len(data) == 8 and data.class_names == ["daisy", "rose"]
    with pytest.raises(DataError, match="give --test-fraction"):
        load_folder(root, "test", options=opts())


def test_a_held_out_share_is_seeded_stratified_and_disjoint(tmp_path, opts):
    root = tmp_path / "flowers"
    written = make_tree(root, {"daisy": 20, "rose": 10, "tulip": 1})
    options = opts(test_fraction=0.2, seed=5)
    train = load_folder(root, "train", options=options)
    test = load_folder(root, "test", options=options)
    assert train.class_names == test.class_names == ["daisy", "rose", "tulip"]
    # round(0.2 n) per class, and a class of one keeps its image for training
    assert np.bincount(test.labels, minlength=3).tolist() == [4, 2, 0]
    assert np.bincount(train.labels, minlength=3).tolist() == [16, 8, 1]
    seen = {image.tobytes() for image in np.concatenate([train.images, test.images])}
    assert seen == {a.tobytes() for a in written.values()}  # disjoint, and all of them
    again = load_folder(root, "test", options=opts(test_fraction=0.2, seed=5, cache_dir=""))
    np.testing.assert_array_equal(again.images, test.images)
    other = load_folder(root, "test", options=opts(test_fraction=0.2, seed=6, cache_dir=""))
    assert not np.array_equal(other.images, test.images)


def test_train_folder_alone_with_a_fraction(tmp_path, opts):
    root = tmp_path / "data"
    make_tree(root / "train", {"a": 10, "b": 10})
    with pytest.raises(DataError, match=r"no test/ folder beside train/.*--test-fraction"):
        load_folder(root, "test", options=opts())
    options = opts(test_fraction=0.3)
    assert len(load_folder(root, "test", options=options)) == 6
    assert len(load_folder(root, "train", options=options)) == 14
    assert len(load_folder(root, "train", options=opts())) == 20


def test_a_fraction_with_train_and_test_folders_is_refused(split_tree, opts):
    root, _, _ = split_tree
    with pytest.raises(DataError, match="--test-fraction is for one tree"):
        load_folder(root, "train", options=opts(test_fraction=0.1))
    with pytest.raises(DataError, match="between 0 and 1"):
        load_folder(root, "train", options=opts(test_fraction=1.5))


def test_hidden_and_other_files_are_skipped_and_counted(split_tree, opts, capsys):
    root, _, _ = split_tree
    (root / "train" / ".DS_Store").write_bytes(b"x")
    (root / "train" / "cat" / "._000.png").write_bytes(b"x")
    (root / "train" / "cat" / "notes.txt").write_text("x")
    (root / "train" / "README").write_text("x")
    (root / "train" / ".hidden_class").mkdir()
    (root / "val").mkdir()
    data = load_folder(root, "train", options=opts())
    assert len(data) == 9
    err = capsys.readouterr().err
    assert f"note: skipped 5 files of {root / 'train'} that are not images (3 hidden, 2 not " in err
    assert f"note: ignored {root / 'val'} (only train/ and test/ are read)" in err


def test_subfolders_of_a_class_are_read_and_upper_case_suffixes_count(tmp_path, opts):
    root = tmp_path / "data"
    make_tree(root, {"a": 1, "b": 1})
    write_png(root / "a" / "deeper" / "x.PNG")
    data = load_folder(root, "train", options=opts())
    assert np.bincount(data.labels).tolist() == [2, 1]


# ----------------------------------------------------------------------------- sizes

def test_mixed_sizes_are_refused_naming_a_file_of_each(tmp_path, opts):
    root = tmp_path / "data"
    make_tree(root, {"cat": 2})
    write_png(root / "dog" / "b.png", shape=(6, 8, 3))
    with pytest.raises(DataError) as info:
        load_folder(root, "train", options=opts())
    assert str(info.value) == (f"{root / 'cat' / '000.png'} is 8x8, {root / 'dog' / 'b.png'} "
                               "is 6x8: give --image-size HxW (or with --crop)")
    resized = load_folder(root, "train", options=opts(image_size=(5, 4)))
    assert resized.images.shape == (3, 5, 4, 3)
    cropped = load_folder(root, "train", options=opts(image_size=(6, 6), crop=True))
    np.testing.assert_array_equal(cropped.images[1], pixels("b.pngdog", (6, 8, 3))[:, 1:7])
    with pytest.raises(DataError, match=r"b\.png is 6x8, smaller than the crop 7x7"):
        load_folder(root, "train", options=opts(image_size=(7, 7), crop=True))


def test_grayscale_stays_one_channel_and_a_mix_becomes_rgb(tmp_path, opts, capsys):
    root = tmp_path / "gray"
    written = make_tree(root, {"a": 2, "b": 2}, shape=(8, 8, 1))
    data = load_folder(root, "train", options=opts())
    assert data.images.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(data.images[0], written["a/000.png"])
    write_png(root / "c" / "x.png")
    mixed = load_folder(root, "train", options=opts())
    assert mixed.images.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(mixed.images[0], np.repeat(written["a/000.png"], 3, axis=2))
    assert "note: made 4 grayscale images RGB" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad input

def test_corrupt_and_truncated_images_are_named(tmp_path, opts):
    root = tmp_path / "data"
    make_tree(root, {"a": 3, "b": 3})
    good = (root / "b" / "001.png").read_bytes()
    (root / "b" / "001.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=rf"^{root / 'b' / '001.png'}: not a readable image"):
        load_folder(root, "train", options=opts())
    (root / "b" / "001.png").write_bytes(b"GIF89a garbage")
    with pytest.raises(DataError, match=rf"^{root / 'b' / '001.png'}: not a readable image"):
        load_folder(root, "train", options=opts())


def test_folders_without_images(tmp_path, opts):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match=rf"^{root}: the folder is empty$"):
        load_folder(root, "train", options=opts())
    (root / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=rf"^{root}: no class folders"):
        load_folder(root, "train", options=opts())
    make_tree(root, {"a": 1})
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=rf"^{root / 'b'}: no images in the class folder"):
        load_folder(root, "train", options=opts())
    with pytest.raises(DataError, match="no such folder"):
        load_folder(tmp_path / "absent", "train", options=opts())
    with pytest.raises(DataError, match="not a folder"):
        load_folder(root / "readme.txt", "train", options=opts())
    (root / "train").mkdir()
    with pytest.raises(DataError, match=rf"^{root / 'train'}: the folder is empty"):
        load_folder(root, "train", options=opts())


def test_symlink_loops_are_refused(tmp_path, opts):
    root = tmp_path / "data"
    make_tree(root, {"a": 1, "b": 1})
    os.symlink(root / "a", root / "a" / "again")
    with pytest.raises(DataError, match=rf"^{root / 'a' / 'again'}: a symlink loop \(it leads "
                                        rf"back to {root / 'a'}\)"):
        load_folder(root, "train", options=opts())
    os.unlink(root / "a" / "again")
    os.symlink("self.png", root / "b" / "self.png")
    with pytest.raises(DataError, match=rf"^{root / 'b' / 'self.png'}: a symlink loop$"):
        load_folder(root, "train", options=opts())
    os.unlink(root / "b" / "self.png")
    os.symlink(root / "missing.png", root / "b" / "dangling.png")
    with pytest.raises(DataError, match="a broken symlink"):
        load_folder(root, "train", options=opts())


def test_permission_denied(tmp_path, opts, monkeypatch):
    root = tmp_path / "data"
    make_tree(root, {"a": 2, "b": 2})
    locked = str(root / "b" / "001.png")
    real_open = open

    def guarded(file, *args, **kwargs):
        if os.fspath(file) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(images_module, "open", guarded, raising=False)
    with pytest.raises(DataError, match=rf"^{locked}: permission denied"):
        load_folder(root, "train", options=opts())
    monkeypatch.undo()

    real_scandir = os.scandir

    def no_listing(path="."):
        if os.fspath(path) == str(root / "a"):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(folder_module.os, "scandir", no_listing)
    with pytest.raises(DataError, match=rf"^{root / 'a'}: permission denied \(cannot list"):
        load_folder(root, "train", options=opts())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_by_the_file_mode(tmp_path, opts):
    root = tmp_path / "data"
    make_tree(root, {"a": 1})
    (root / "a" / "000.png").chmod(0)
    with pytest.raises(DataError, match="permission denied"):
        load_folder(root, "train", options=opts())


# ----------------------------------------------------------------------------- decoding

def test_threads_processes_and_one_thread_decode_alike(tmp_path):
    root = tmp_path / "data"
    make_tree(root, {"a": 40, "b": 40})
    paths = sorted(str(p) for p in root.rglob("*.png"))
    serial = [image for _, image in _decode_all(paths, None, False, "serial")]
    threads = [image for _, image in _decode_all(paths, None, False, "thread", workers=3)]
    assert len(serial) == 80
    for a, b in zip(serial, threads):
        np.testing.assert_array_equal(a, b)
    (root / "b" / "010.png").write_bytes(b"broken")
    (root / "b" / "030.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"b/010\.png"):  # the first bad one, in order
        list(_decode_all(paths, None, False, "thread", workers=3))


# ----------------------------------------------------------------------------- cache

def cache_files(tmp_path):
    folder = tmp_path / "cache"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def count_decodes(monkeypatch):
    calls = []
    real = folder_module.decode_image

    def counting(path, shrink_to=None):
        calls.append(path)
        return real(path, shrink_to)

    monkeypatch.setattr(folder_module, "decode_image", counting)
    return calls


def test_a_second_load_comes_from_the_cache(split_tree, opts, tmp_path, monkeypatch):
    root, _, _ = split_tree
    first = load_folder(root, "train", options=opts())
    files = cache_files(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npz")
    with np.load(tmp_path / "cache" / files[0], allow_pickle=False) as data:
        assert sorted(data.files) == ["class_names", "images", "labels"]
        assert data["images"].shape == (9, 8, 8, 3)
    calls = count_decodes(monkeypatch)
    second = load_folder(root, "train", options=opts())
    assert calls == []
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.class_names == first.class_names
    assert len(load_folder(root, "train", limit=5, options=opts())) == 5 and calls == []
    load_folder(root, "test", options=opts())
    assert len(cache_files(tmp_path)) == 2  # a file per split


def test_changed_added_and_removed_files_change_the_key(split_tree, opts, tmp_path,
                                                        monkeypatch):
    root, _, _ = split_tree
    load_folder(root, "train", options=opts())
    key = cache_files(tmp_path)
    calls = count_decodes(monkeypatch)

    changed = root / "train" / "dog" / "001.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    data = load_folder(root, "train", options=opts())
    assert len(calls) == 9
    np.testing.assert_array_equal(data.images[4], 0)
    assert set(cache_files(tmp_path)) - set(key)

    before = set(cache_files(tmp_path))
    write_png(root / "train" / "dog" / "002.png")
    assert len(load_folder(root, "train", options=opts())) == 10
    assert set(cache_files(tmp_path)) - before

    before = set(cache_files(tmp_path))
    (root / "train" / "cat" / "000.png").unlink()
    assert len(load_folder(root, "train", options=opts())) == 9
    assert set(cache_files(tmp_path)) - before


def test_options_that_change_the_arrays_change_the_key(split_tree, opts, tmp_path):
    root, _, _ = split_tree
    load_folder(root, "train", options=opts())
    load_folder(root, "train", options=opts(image_size=(4, 4)))
    load_folder(root, "train", options=opts(image_size=(4, 4), crop=True))
    assert len(cache_files(tmp_path)) == 3
    assert load_folder(root, "train", options=opts(image_size=(4, 4))).images.shape[1:3] == (4, 4)


def test_a_bigger_limit_decodes_only_the_missing_images(split_tree, opts, tmp_path,
                                                        monkeypatch):
    root, _, _ = split_tree
    load_folder(root, "train", limit=3, options=opts())
    calls = count_decodes(monkeypatch)
    whole = load_folder(root, "train", options=opts())
    assert len(calls) == 6
    fresh = load_folder(root, "train", options=opts(cache_dir=""))
    np.testing.assert_array_equal(whole.images, fresh.images)
    assert len(cache_files(tmp_path)) == 1


def test_a_damaged_cache_file_is_ignored_and_rewritten(split_tree, opts, tmp_path, capsys):
    root, _, _ = split_tree
    first = load_folder(root, "train", options=opts())
    (name,) = cache_files(tmp_path)
    path = tmp_path / "cache" / name
    for damage in (b"not a zip file", path.read_bytes()[:200]):
        path.write_bytes(damage)
        again = load_folder(root, "train", options=opts())
        np.testing.assert_array_equal(again.images, first.images)
        assert "ignored the damaged image cache" in capsys.readouterr().err
        with np.load(path, allow_pickle=False) as data:
            assert data["images"].shape == (9, 8, 8, 3)
    assert cache_files(tmp_path) == [name]  # no temporary file left behind


def test_where_the_cache_goes(split_tree, tmp_path, monkeypatch):
    root, _, _ = split_tree
    load_folder(root, "train", options=DataOptions(cache_dir=""))
    assert not (tmp_path / "cache").exists()
    monkeypatch.setenv("SPARK_CNN_CACHE_DIR", str(tmp_path / "env-cache"))
    load_folder(root, "train", options=DataOptions())
    assert len(list((tmp_path / "env-cache").iterdir())) == 1
    monkeypatch.delenv("SPARK_CNN_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert folder_module.default_cache_dir() == str(
        tmp_path / "home" / ".cache" / "spark-cnn" / "images")


def test_an_unwritable_cache_is_only_a_note(split_tree, tmp_path, capsys):
    root, _, _ = split_tree
    blocker = tmp_path / "file"
    blocker.write_text("x")
    data = load_folder(root, "train", options=DataOptions(cache_dir=str(blocker / "cache")))
    assert len(data) == 9
    assert "note: cannot write the image cache" in capsys.readouterr().err
