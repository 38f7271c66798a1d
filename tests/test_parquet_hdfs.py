"""Parquet sources on the real HDFS of scripts/services.sh (services tier: the
`hdfs_settings` fixture fails, never skips, when it is not reachable): files
uploaded there read through hdfs:// and webhdfs:// paths equal the local read,
and a row group costs one WebHDFS range read."""
import pickle
import uuid
from urllib.parse import urlsplit

import numpy as np
import pytest

from spark.data import parquet_images
from spark.data.dataset import DataError
from spark.data.locations import Files
from spark.data.parquet import load_parquet
from spark.data.source import DataOptions, load_dataset
from spark.data.synthetic_parquet import write_synthetic_parquet


@pytest.fixture
def hdfs_folder(hdfs_settings):
    """(client, folder): a fresh HDFS folder /spark-cnn-parquet-tests/<random>, removed after."""
    from hdfs import InsecureClient

    client = InsecureClient(hdfs_settings.webhdfs, user=hdfs_settings.user, timeout=30)
    folder = f"/spark-cnn-parquet-tests/{uuid.uuid4().hex[:12]}"
    client.makedirs(folder)
    parquet_images.clear_cache()
    yield client, folder
    parquet_images.clear_cache()
    client.delete(folder, recursive=True)
    if not client.list("/spark-cnn-parquet-tests"):
        client.delete("/spark-cnn-parquet-tests")


def upload(client, local, remote):
    with open(local, "rb") as f:
        client.write(remote, data=f.read(), overwrite=True, replication=1)


def paths(hdfs_settings, remote):
    """The HDFS path `remote` as hdfs:// (NameNode RPC address) and webhdfs:// URLs."""
    return (f"{hdfs_settings.hdfs.rstrip('/')}{remote}",
            f"webhdfs://{urlsplit(hdfs_settings.webhdfs).netloc}{remote}")


def options(hdfs_settings, **more):
    return DataOptions(webhdfs=hdfs_settings.webhdfs, hdfs_user=hdfs_settings.user, timeout=30,
                       **more)


@pytest.mark.parametrize("encoded", ["raw", "png"])
def test_a_file_on_hdfs_reads_as_the_local_file(hdfs_settings, hdfs_folder, tmp_path, encoded):
    client, folder = hdfs_folder
    local = write_synthetic_parquet(tmp_path / "x.parquet", 300, (20, 16), 3, encoded, 5, 64)
    upload(client, local, f"{folder}/x.parquet")
    expected = load_parquet(local)
    want = expected.images[:]
    for path in paths(hdfs_settings, f"{folder}/x.parquet"):
        parquet_images.clear_cache()
        data = load_dataset(path, "train", options=options(hdfs_settings))
        assert data.images.files == [path]
        assert data.images.shape == (300, 20, 16, 3)
        assert data.class_names == expected.class_names
        np.testing.assert_array_equal(data.labels, expected.labels)
        np.testing.assert_array_equal(data.images[:], want)
        # a pickled copy (what a Spark task gets) reads the rows itself, from HDFS
        parquet_images.clear_cache()
        copy = pickle.loads(pickle.dumps(data.images))
        index = np.array([299, 0, 150, 64])
        np.testing.assert_array_equal(copy[index], want[index])


def test_a_row_group_is_one_range_read(hdfs_settings, hdfs_folder, tmp_path, monkeypatch):
    client, folder = hdfs_folder
    local = write_synthetic_parquet(tmp_path / "rg.parquet", 400, row_group=50)
    upload(client, local, f"{folder}/rg.parquet")
    hdfs_path, _ = paths(hdfs_settings, f"{folder}/rg.parquet")
    data = load_parquet(hdfs_path, limit=320, options=options(hdfs_settings))
    parquet_images.clear_cache()
    reads = []
    original = Files.read_range

    def read_range(self, path, offset, length):
        reads.append((offset, length))
        return original(self, path, offset, length)

    monkeypatch.setattr(Files, "read_range", read_range)
    image = data.images[170]
    np.testing.assert_array_equal(image, load_parquet(local).images[170])
    size = local.stat().st_size
    assert len(reads) == 2, reads                   # the footer, then row group 3
    footer, group = reads
    assert footer[0] + footer[1] == size
    assert 50 * 3072 <= group[1] < 50 * 3072 + 4096 and group[0] > 3 * 50 * 3072
    data.images[151:199]                            # the same row group: cached
    assert len(reads) == 2


def test_splits_in_an_hdfs_folder_and_a_missing_path(hdfs_settings, hdfs_folder, tmp_path):
    client, folder = hdfs_folder
    for split, count in (("train", 120), ("test", 30)):
        local = write_synthetic_parquet(tmp_path / f"{split}.parquet", count, seed=len(split))
        upload(client, local, f"{folder}/data/{split}/part-00000.parquet")
        for path in paths(hdfs_settings, f"{folder}/data"):
            data = load_parquet(path, split, options=options(hdfs_settings))
            np.testing.assert_array_equal(data.images[:], load_parquet(local).images[:])
    for path in paths(hdfs_settings, f"{folder}/absent.parquet"):
        with pytest.raises(DataError) as excinfo:
            load_parquet(path, options=options(hdfs_settings))
        assert str(excinfo.value) == f"{path}: no such file or folder"
