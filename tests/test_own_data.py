"""The trainers on the project's other sources: an image folder tree of PNGs, MNIST's
IDX files, CIFAR-100, Parquet (lazy row groups). The Spark trainers (in-process
on local[2]) give the local trainer's losses; the test scripts name the classes
and refuse a checkpoint of other classes or another input shape."""
import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image
from sparkjobs import local_spark, run_script

from spark import cli
from spark.data.dataset import DataError
from spark.data.synthetic_parquet import write_synthetic_parquet
from spark.runner import evaluate, train

CLASSES = ("circle", "square", "stripe")


def shape_image(kind, rng, size=(20, 24), channels=3):
    """A learnable picture of a class: a disc, a square or stripes, in noise."""
    height, width = size
    rows, cols = np.mgrid[:height, :width]
    image = rng.normal(60, 20, (height, width, channels))
    if kind == "circle":
        mask = (rows - height / 2) ** 2 + (cols - width / 2) ** 2 < (min(size) / 3) ** 2
    elif kind == "square":
        mask = (abs(rows - height / 2) < height / 4) & (abs(cols - width / 2) < width / 4)
    else:
        mask = (cols // 3) % 2 == 0
    image[mask] += 140
    return np.clip(image, 0, 255).astype(np.uint8)


def png_tree(root, per_class=(30, 8), channels=3):
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                image = shape_image(kind, rng, channels=channels)
                Image.fromarray(image[:, :, 0] if channels == 1 else image).save(
                    folder / f"{i:03d}.png")
    return root


def idx_files(root, count=60):
    """MNIST-shaped IDX files (28x28x1, 3 classes)."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for prefix, n in (("train", count), ("t10k", count // 3)):
        labels = np.arange(n) % 3
        images = np.stack([shape_image(CLASSES[k], rng, (28, 28), 1)[:, :, 0] for k in labels])
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([2051, n, 28, 28], ">i4").tobytes() + images.tobytes())
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([2049, n], ">i4").tobytes() + labels.astype(np.uint8).tobytes())
    return root


def parquet_file(root):
    root.mkdir(parents=True)
    write_synthetic_parquet(root / "train.parquet", 90, size=(16, 12), classes=4, row_group=25,
                            encoded="png")
    write_synthetic_parquet(root / "test.parquet", 30, size=(16, 12), classes=4, row_group=25,
                            seed=1, encoded="png")
    return root


SOURCES = {"folder": png_tree, "mnist": idx_files, "parquet": parquet_file}


@pytest.fixture(scope="module")
def sc():
    with local_spark("spark-cnn own data", "local[2]") as context:
        yield context


def run_trainer(script, args, settings_dir):
    parser = cli.train_parser(f"{script}_train.py", distributed=script != "naive")
    out, err = io.StringIO(), io.StringIO()
    train(script, parser.parse_args(list(map(str, args))), out, err)
    return out.getvalue(), err.getvalue()


def losses(path):
    return [json.loads(line)["loss"] for line in open(path)]


@pytest.mark.parametrize("source", SOURCES)
def test_spark_trainers_on_each_source_equal_the_local_one(source, sc, tmp_path):
    data = SOURCES[source](tmp_path / "data")
    common = ["--minibatch", 30, "--lr", 0.05, "--seed", 2, "--data-dir", data]
    images = 60 if source == "mnist" else 90
    run_trainer("naive", [images, 4, *common, "--params-dir", tmp_path / "naive", "--metrics",
                          tmp_path / "naive.jsonl"], tmp_path)
    expected = losses(tmp_path / "naive.jsonl")
    for exchange in ("none", "allreduce"):
        run_trainer("locality", [images, 4, 2, "--exchange", exchange, *common, "--params-dir",
                                 tmp_path / exchange, "--metrics", tmp_path / f"{exchange}.jsonl"],
                    tmp_path)
        np.testing.assert_allclose(losses(tmp_path / f"{exchange}.jsonl"), expected, rtol=1e-5)
    # the test script reads the data as the run did, and names every class
    args = cli.test_parser("naive_test.py", distributed=False, split="test").parse_args(
        ["20", "--data-dir", str(data), "--params-dir", str(tmp_path / "naive")])
    out = io.StringIO()
    evaluate("naive", "test", args, out)
    text = out.getvalue()
    assert "accuracy per class:" in text and text.strip().splitlines()[-1].startswith("accuracy")
    names = {"folder": CLASSES, "mnist": ("0", "1", "2"),
             "parquet": ("class0", "class1", "class2", "class3")}[source]
    for name in names:
        assert any(line.strip().startswith(name + " ") for line in text.splitlines()), name


def test_lazy_parquet_images_travel_as_their_description(tmp_path):
    """What a Spark broadcast of a Parquet source carries is a description, not images."""
    from spark.data.source import DataOptions, load_dataset
    data = load_dataset(parquet_file(tmp_path / "data"), "train",
                        options=DataOptions(cache_dir=""))
    assert not isinstance(data.images, np.ndarray)
    assert len(pickle.dumps(data.images)) < 10_000 < data.images.nbytes


def test_a_test_script_refuses_a_checkpoint_of_other_classes_or_shape(tmp_path):
    folder = png_tree(tmp_path / "folder", per_class=(6, 2))
    mnist = idx_files(tmp_path / "mnist", count=30)
    run_trainer("naive", [18, 1, "--data-dir", folder, "--params-dir", tmp_path / "p"], tmp_path)
    saved = (tmp_path / "p" / "naive.npz").read_bytes()
    for data, says in ((mnist, "holds a network for 20x24x3 images"),):
        result = run_script("naive_test.py", 10, "--data-dir", data, "--params-dir",
                            tmp_path / "p")
        assert result.returncode == 1 and says in result.stderr, result.stderr
    other = png_tree(tmp_path / "other", per_class=(4, 2))
    (other / "train" / "stripe").rename(other / "train" / "wave")
    (other / "test" / "stripe").rename(other / "test" / "wave")
    result = run_script("naive_test.py", 4, "--data-dir", other, "--params-dir", tmp_path / "p")
    assert result.returncode == 1, result.stderr
    assert "holds a network for the classes [circle, square, stripe] (3)" in result.stderr
    assert "wave unknown to it" in result.stderr
    assert (tmp_path / "p" / "naive.npz").read_bytes() == saved


def test_a_test_class_the_training_set_lacks_is_refused(tmp_path):
    folder = png_tree(tmp_path / "folder", per_class=(4, 2))
    (folder / "test" / "extra").mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(folder / "test" / "extra" / "a.png")
    with pytest.raises(DataError, match="extra"):
        from spark.data.source import DataOptions, load_dataset
        load_dataset(folder, "test", options=DataOptions(cache_dir=""))
    result = run_script("naive_train.py", 12, 1, "--eval-every", 1, "--data-dir", folder,
                        "--params-dir", tmp_path / "p")
    assert result.returncode == 1 and "extra" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "p" / "naive.npz").exists()




def test_each_source_loads_the_same_arrays_as_its_cifar10_layout(synthetic_dir, tmp_path):
    """The same 200 images as CIFAR-10 pickles, as a PNG folder tree and as Parquet
    (python3 -m spark.data.convert): the same pixels, labels and class names."""
    from spark.data.cifar10 import load_cifar10
    from spark.data.convert import main as convert
    from spark.data.source import DataOptions, load_dataset
    cifar = load_cifar10(synthetic_dir, "train", limit=200)
    root = tmp_path / "png"
    for i, (image, label) in enumerate(zip(cifar.images, cifar.labels)):
        folder = root / "train" / cifar.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    options = DataOptions(cache_dir="")
    folder = load_dataset(root, "train", options=options)
    assert folder.class_names == sorted(cifar.class_names)
    by_file = {int(name.split("/")[-1][:4]): k for k, name in enumerate(folder.ids)}
    for i in range(200):                    # the folder's order is its own: match by file
        k = by_file[i]
        assert np.array_equal(folder.images[k], cifar.images[i])
        assert folder.class_names[folder.labels[k]] == cifar.class_names[cifar.labels[i]]
    assert convert([str(synthetic_dir), str(tmp_path / "cifar.parquet"), "--split", "train"]) == 0
    parquet = load_dataset(tmp_path / "cifar.parquet", "train", 200, options)
    assert np.array_equal(parquet.images[np.arange(200)], cifar.images)
    assert np.array_equal(parquet.labels, cifar.labels)
    assert parquet.class_names == cifar.class_names
