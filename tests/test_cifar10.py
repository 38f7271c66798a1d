"""Tests for spark.data.cifar10 (loading), spark.data.synthetic and spark.data.download_cifar10.

Everything runs on small synthetic data made in tmp folders; nothing here reads real CIFAR-10.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import pickle
import pickletools
import tarfile

import numpy as np
import pytest

from spark.data import download_cifar10 as dl
from spark.data.cifar10 import Dataset, load_cifar10
from spark.data.synthetic import CLASS_NAMES, make_synthetic_cifar10, write_batch, write_meta
from spark.data.synthetic import main as synthetic_main

TRAIN, TEST, BATCHES = 500, 100, 5  # 100 images per training batch


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def py_dir(tmp_path_factory):
    """A synthetic set in the python-version layout: <tmp>/cifar-10-batches-py/."""
    folder = tmp_path_factory.mktemp("syn") / "cifar-10-batches-py"
    make_synthetic_cifar10(folder, train=TRAIN, test=TEST, seed=3, batches=BATCHES)
    return folder


def make_tar(py_folder, archive):
    """Pack a python-version folder the way the official tar.gz is laid out."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(py_folder.iterdir()):
            tar.add(path, arcname=f"cifar-10-batches-py/{path.name}")
    return archive


def make_bin_folder(py_folder, out):
    """Write the binary-version layout holding the same images and labels as ``py_folder``."""
    out.mkdir()
    names = [f"data_batch_{i}" for i in range(1, BATCHES + 1)] + ["test_batch"]
    for name in names:
        with open(py_folder / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")  # our own trusted test file
        records = np.concatenate(
            [np.asarray(batch["labels"], np.uint8)[:, None], batch["data"]], axis=1
        )
        (out / f"{name}.bin").write_bytes(records.tobytes())
    with open(py_folder / "batches.meta", "rb") as f:
        names = pickle.load(f, encoding="latin1")["label_names"]
    (out / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    return out


def copy_py_folder(src, dst):
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def assert_same(a: Dataset, b: Dataset):
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.labels, b.labels)
    assert a.class_names == b.class_names


# ------------------------------------------------------------------- the three forms

def test_python_folder_loads(py_dir):
    train = load_cifar10(py_dir, "train")
    test = load_cifar10(py_dir, "test")
    assert train.images.shape == (TRAIN, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.shape == (TRAIN,) and train.labels.dtype == np.int64
    assert test.images.shape == (TEST, 32, 32, 3) and len(test) == TEST
    assert train.class_names == CLASS_NAMES
    assert set(np.bincount(train.labels)) == {TRAIN // 10}
    assert train.images.flags["C_CONTIGUOUS"]


def test_all_three_forms_and_parent_folders_agree(py_dir, tmp_path):
    archive = make_tar(py_dir, tmp_path / "cifar-10-python.tar.gz")
    bin_dir = make_bin_folder(py_dir, tmp_path / "cifar-10-batches-bin")
    for split in ("train", "test"):
        ref = load_cifar10(py_dir, split)
        assert_same(ref, load_cifar10(archive, split))
        assert_same(ref, load_cifar10(str(bin_dir), split))
        assert_same(ref, load_cifar10(py_dir.parent, split))  # folder holding cifar-10-batches-py
    only_tar = tmp_path / "only_tar"
    only_tar.mkdir()
    os.replace(archive, only_tar / archive.name)
    assert_same(load_cifar10(py_dir, "test"), load_cifar10(only_tar, "test"))
    assert_same(load_cifar10(py_dir, "test"), load_cifar10(tmp_path, "test"))  # holds the bin one


def test_nhwc_layout_known_pixels(tmp_path):
    data = np.zeros((2, 3072), np.uint8)
    data[0, 0 * 1024 + 2 * 32 + 5] = 200   # red,   row 2,  column 5
    data[0, 1 * 1024 + 7 * 32 + 1] = 100   # green, row 7,  column 1
    data[1, 2 * 1024 + 31 * 32 + 30] = 50  # blue,  row 31, column 30 of the second image
    write_batch(tmp_path / "data_batch_1", data, [4, 9], "b")
    write_batch(tmp_path / "test_batch", data, [0, 1], "t")
    write_meta(tmp_path / "batches.meta", CLASS_NAMES, 2)
    ds = load_cifar10(tmp_path, "train")
    assert ds.images.shape == (2, 32, 32, 3)
    assert ds.images[0, 2, 5, 0] == 200 and ds.images[0, 7, 1, 1] == 100
    assert ds.images[1, 31, 30, 2] == 50
    assert int(ds.images.sum()) == 350
    assert ds.labels.tolist() == [4, 9]


def test_bytes_keys_are_accepted(tmp_path):
    """Files whose keys come back as bytes (as with encoding='bytes') load the same way."""
    data = np.arange(3 * 3072, dtype=np.int64).astype(np.uint8).reshape(3, 3072)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"t", b"labels": [1, 2, 3], b"data": data}, f, protocol=2)
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CLASS_NAMES]}, f, protocol=2)
    ds = load_cifar10(tmp_path, "test")
    assert ds.labels.tolist() == [1, 2, 3] and ds.class_names == CLASS_NAMES
    assert np.array_equal(ds.images, data.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))


# ------------------------------------------------------------------------------ limit

def test_limit_takes_first_images_in_file_order(py_dir):
    full = load_cifar10(py_dir, "train")
    for n in (0, 1, 99, 100, 101, 250, TRAIN):
        part = load_cifar10(py_dir, "train", limit=n)
        assert len(part) == n and part.images.shape == (n, 32, 32, 3)
        assert np.array_equal(part.images, full.images[:n])
        assert np.array_equal(part.labels, full.labels[:n])


def test_limit_reads_only_the_batches_it_needs(py_dir, tmp_path):
    """Batches 3..5 are garbage; a limit within batches 1-2 never notices, in all three forms."""
    folder = copy_py_folder(py_dir, tmp_path / "cifar-10-batches-py")
    bin_dir = make_bin_folder(py_dir, tmp_path / "cifar-10-batches-bin")
    for i in (3, 4, 5):
        (folder / f"data_batch_{i}").write_bytes(b"not a pickle")
        (bin_dir / f"data_batch_{i}.bin").write_bytes(b"\xff" * 3073)  # label 255: invalid
    archive = make_tar(folder, tmp_path / "c.tar.gz")
    ref = load_cifar10(py_dir, "train", limit=200)
    for path in (folder, archive, bin_dir):
        assert_same(ref, load_cifar10(path, "train", limit=200))
        with pytest.raises(ValueError, match="data_batch_3"):
            load_cifar10(path, "train", limit=201)


def test_limit_larger_than_split(py_dir, tmp_path):
    bin_dir = make_bin_folder(py_dir, tmp_path / "cifar-10-batches-bin")
    for path in (py_dir, bin_dir):
        with pytest.raises(ValueError, match="limit"):
            load_cifar10(path, "test", limit=TEST + 1)
    with pytest.raises(ValueError):
        load_cifar10(py_dir, "test", limit=-1)
    with pytest.raises(ValueError, match="split"):
        load_cifar10(py_dir, "validation")


# -------------------------------------------------------------------- hostile files

class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("kind", ["open", "system", "eval"])
def test_malicious_pickle_is_refused_and_never_runs(py_dir, tmp_path, kind):
    folder = copy_py_folder(py_dir, tmp_path / "evil")
    marker = tmp_path / "pwned"
    payload = {
        "open": _Payload(builtins.open, str(marker), "w"),
        "system": _Payload(os.system, f"touch '{marker}'"),
        "eval": _Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
    }[kind]
    with open(py_dir / "data_batch_1", "rb") as f:
        good = pickle.load(f, encoding="latin1")  # our own trusted test file
    good["batch_label"] = payload  # otherwise a perfectly valid batch
    (folder / "data_batch_1").write_bytes(pickle.dumps(good, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1.*refused"):
        load_cifar10(folder, "train")
    assert not marker.exists()
    archive = make_tar(folder, tmp_path / "evil.tar.gz")
    with pytest.raises(ValueError, match="refused"):
        load_cifar10(archive, "train")
    assert not marker.exists()
    if kind == "open":  # the payload is real: plain pickle would have run it
        pickle.loads((folder / "data_batch_1").read_bytes())["batch_label"].close()
        assert marker.exists()


def _dump(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # truncated
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)),
        lambda p: _dump(p, [1, 2, 3]),  # not a dict
        lambda p: _dump(p, {"data": np.zeros((3, 3072), np.uint8)}),  # no labels
        lambda p: _dump(p, {"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2]}),
        lambda p: _dump(p, {"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2, 10]}),
        lambda p: _dump(p, {"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2, -1]}),
        lambda p: _dump(p, {"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2, 3.0]}),
        lambda p: _dump(p, {"data": np.zeros((3, 3071), np.uint8), "labels": [1, 2, 3]}),
        lambda p: _dump(p, {"data": np.zeros((3, 3072), np.float32), "labels": [1, 2, 3]}),
        lambda p: _dump(p, {"data": np.zeros((3, 3072), object), "labels": [1, 2, 3]}),
        lambda p: _dump(p, {"data": b"\0" * 3072, "labels": [1]}),
    ],
    ids=["truncated", "empty", "random", "list", "no-labels", "short-labels", "label-10",
         "label-neg", "float-label", "width", "float-data", "object-data", "bytes-data"],
)
def test_corrupt_batch_gives_value_error_naming_the_file(py_dir, tmp_path, make_bad):
    folder = copy_py_folder(py_dir, tmp_path / "bad")
    make_bad(folder / "test_batch")
    with pytest.raises(ValueError, match="test_batch") as info:
        load_cifar10(folder, "test")
    assert "\n" not in str(info.value)


def test_corrupt_meta_and_binary_files(py_dir, tmp_path):
    folder = copy_py_folder(py_dir, tmp_path / "badmeta")
    _dump(folder / "batches.meta", {"label_names": ["a", "b"]})
    with pytest.raises(ValueError, match="batches.meta"):
        load_cifar10(folder, "test")

    bin_dir = make_bin_folder(py_dir, tmp_path / "cifar-10-batches-bin")
    (bin_dir / "test_batch.bin").write_bytes(b"\0" * 3072)  # not a whole record
    with pytest.raises(ValueError, match="test_batch.bin"):
        load_cifar10(bin_dir, "test")
    (bin_dir / "test_batch.bin").write_bytes(b"\x0c" + b"\0" * 3072)  # label 12
    with pytest.raises(ValueError, match="test_batch.bin"):
        load_cifar10(bin_dir, "test")

    not_tar = tmp_path / "cifar-10-python.tar.gz"
    not_tar.write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match="tar"):
        load_cifar10(not_tar, "test")


# -------------------------------------------------------------------- missing data

def test_missing_folder_gives_helpful_error(tmp_path):
    for path in (tmp_path / "nowhere", tmp_path):  # absent; present but empty
        with pytest.raises(FileNotFoundError) as info:
            load_cifar10(path, "train")
        text = str(info.value)
        assert "python3 -m spark.data.synthetic" in text
        assert "python3 -m spark.data.download_cifar10" in text
        assert "data_batch_1" in text and str(path) in text


def test_missing_batch_file_is_named(py_dir, tmp_path):
    folder = copy_py_folder(py_dir, tmp_path / "partial")
    (folder / "data_batch_2").unlink()  # a gap: batches 1, 3, 4, 5
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        load_cifar10(folder, "train")
    (folder / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(folder, "test")
    (folder / "batches.meta").unlink()
    with pytest.raises(FileNotFoundError, match="batches.meta"):
        load_cifar10(folder, "train")


# ----------------------------------------------------------------------- synthetic

def test_synthetic_is_learnable_by_nearest_class_mean(tmp_path):
    make_synthetic_cifar10(tmp_path, train=2000, test=500, seed=0)
    train, test = load_cifar10(tmp_path, "train"), load_cifar10(tmp_path, "test")
    x = train.images.reshape(len(train), -1).astype(np.float32)
    xt = test.images.reshape(len(test), -1).astype(np.float32)
    means = np.stack([x[train.labels == k].mean(0) for k in range(10)])
    dist = (xt ** 2).sum(1)[:, None] - 2 * xt @ means.T + (means ** 2).sum(1)
    accuracy = (dist.argmin(1) == test.labels).mean()
    assert accuracy > 0.6, accuracy
    # ... but not by colour alone: the mean colour of an image carries no class information.
    c = train.images.reshape(len(train), -1, 3).mean(1)
    ct = test.images.reshape(len(test), -1, 3).mean(1)
    cm = np.stack([c[train.labels == k].mean(0) for k in range(10)])
    assert (((ct[:, None] - cm[None]) ** 2).sum(-1).argmin(1) == test.labels).mean() < 0.3


def test_synthetic_layout_determinism_and_cli(tmp_path, capsys):
    argv = [str(tmp_path / "a"), "--train", "30", "--test", "20", "--seed", "7"]
    assert synthetic_main(argv) == 0
    out = capsys.readouterr().out.strip()
    assert "\n" not in out and "30" in out and str(tmp_path / "a") in out
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with open(tmp_path / "a" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="latin1")  # our own file, as a CIFAR user would read it
    assert set(batch) == {"batch_label", "labels", "data", "filenames"}
    assert batch["data"].dtype == np.uint8 and batch["data"].shape == (6, 3072)
    assert type(batch["labels"]) is list and all(type(v) is int for v in batch["labels"])
    raw = (tmp_path / "a" / "data_batch_1").read_bytes()
    as_bytes = pickle.loads(raw, encoding="bytes")  # the official files' other usual reading
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert np.array_equal(as_bytes[b"data"], batch["data"])
    assert {arg for op, arg, _ in pickletools.genops(raw) if "GLOBAL" in op.name} == {
        "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    with open(tmp_path / "a" / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    assert meta == {"num_cases_per_batch": 6, "label_names": CLASS_NAMES, "num_vis": 3072}

    make_synthetic_cifar10(tmp_path / "b", train=30, test=20, seed=7)
    make_synthetic_cifar10(tmp_path / "c", train=30, test=20, seed=8)
    a, b, c = (load_cifar10(tmp_path / n, "train") for n in "abc")
    assert_same(a, b)
    assert not np.array_equal(a.images, c.images)
    assert not [p for p in (tmp_path / "a").iterdir() if ".tmp" in p.name]

    with pytest.raises(SystemExit):
        synthetic_main([str(tmp_path / "d"), "--train", "3"])  # fewer images than batches


# ------------------------------------------------------------------------ download

def _tarball(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


def test_download_good_md5_is_verified_and_extracted(tmp_path):
    src, md5 = _tarball(tmp_path / "src.tar.gz",
                        [("cifar-10-batches-py/readme.txt", b"hello"),
                         ("cifar-10-batches-py/test_batch", b"x" * 100)])
    dest = tmp_path / "dest"
    archive = dl.download_cifar10(dest, url=src.as_uri(), md5=md5)
    assert archive == dest / dl.ARCHIVE_NAME and archive.read_bytes() == src.read_bytes()
    assert (dest / "cifar-10-batches-py" / "readme.txt").read_bytes() == b"hello"
    assert _leftovers(dest) == []
    # Already there with the right checksum: not fetched again (the URL is now dead).
    dl.download_cifar10(dest, url=(tmp_path / "gone.tar.gz").as_uri(), md5=md5)


def test_download_bad_md5_is_rejected_and_temp_removed(tmp_path):
    src, _ = _tarball(tmp_path / "src.tar.gz", [("cifar-10-batches-py/a", b"a")])
    dest = tmp_path / "dest"
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        dl.download_cifar10(dest, url=src.as_uri(), md5="0" * 32)
    assert list(dest.iterdir()) == []


def test_download_network_failure_is_one_line_and_leaves_nothing(tmp_path, capsys):
    dest = tmp_path / "dest"
    url = (tmp_path / "missing.tar.gz").as_uri()
    with pytest.raises(dl.DownloadError, match="could not download"):
        dl.download_cifar10(dest, url=url)
    assert list(dest.iterdir()) == []
    assert dl.main(["--dest", str(dest), "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download") and err.count("\n") == 1
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("bad_name", ["../escaped.txt", "ABSOLUTE",
                                      "cifar-10-batches-py/../../escaped.txt"])
def test_download_refuses_path_traversal(tmp_path, bad_name):
    if bad_name == "ABSOLUTE":
        bad_name = str(tmp_path / "escaped.txt")
    src, md5 = _tarball(tmp_path / "src.tar.gz",
                        [("cifar-10-batches-py/ok.txt", b"ok"), (bad_name, b"evil")])
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(dl.DownloadError, match="unsafe path"):
        dl.download_cifar10(dest, url=src.as_uri(), md5=md5)
    assert not (tmp_path / "deep" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert not (dest / "cifar-10-batches-py").exists()  # nothing extracted at all


def test_download_refuses_links(tmp_path):
    path = tmp_path / "src.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(dl.DownloadError, match="not a plain file"):
        dl.download_cifar10(tmp_path / "dest", url=path.as_uri(), md5=md5)
