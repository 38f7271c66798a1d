"""The Spark trainers against the local one, on real HDFS and Redis, in-process on local[2]."""
import os
import uuid

import numpy as np
import pytest

from spark.cnn import CNN
from spark.exchange import hdfs_store, open_matrix_store
from spark.locality_cnn import LocalityCNN
from spark.recipe import batch_indices, draw_augmentation, learning_rate
from spark.settings import Settings
from spark.spark_cnn import SparkCNN, split_batches
from sparkjobs import local_spark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = {"spark": SparkCNN, "locality": LocalityCNN}


@pytest.fixture(scope="module")
def sc():
    with local_spark("spark-cnn tests", "local[2]") as context:
        yield context


@pytest.fixture(scope="module")
def settings(redis_addresses, hdfs_settings):
    return Settings(data_dir="", params_dir="", redis=",".join(redis_addresses),
                    webhdfs=hdfs_settings.webhdfs, hdfs=hdfs_settings.hdfs,
                    hdfs_user=hdfs_settings.user,
                    hdfs_root=f"/spark-cnn-tests/{uuid.uuid4().hex[:8]}")


def assert_nothing_left(net):
    assert open_matrix_store(net.exchange).keys() == []
    assert hdfs_store(net.exchange).keys() == []


def relative_difference(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def test_split_batches_differ_by_at_most_one():
    items = split_batches(5000, 60)
    sizes = [count for _, _, count in items]
    assert len(items) == 60 and sum(sizes) == 5000 and max(sizes) - min(sizes) <= 1
    assert [offset for _, offset, _ in items] == list(np.cumsum([0] + sizes[:-1]))
    with pytest.raises(ValueError, match="at least one image"):
        split_batches(3, 4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batches", [1, 2, 3, 7])
def test_spark_gradients_equal_naive_for_uneven_batches(kind, batches, sc, settings, synthetic_train):
    images, labels = synthetic_train.images, synthetic_train.labels
    index = np.arange(100, 123)                                   # N = 23, not divisible by B > 1
    local = CNN(seed=5, chunk=8)
    dist = KINDS[kind](sc=sc, settings=settings, batches=batches, seed=5, chunk=8)
    loss_l, grads_l, _ = local.loss_and_gradients(images, labels, index)
    loss_d, grads_d, timings = dist.loss_and_gradients(images, labels, index)
    assert abs(loss_d - loss_l) <= 1e-5 * abs(loss_l)
    for name in grads_l:
        assert relative_difference(grads_d[name], grads_l[name]) <= 1e-5, name
    assert timings["backward_partitions"] == batches
    assert timings["im2col"] == ["native"]
    assert timings["store_bytes"] > 0
    assert_nothing_left(dist)
    dist.close()


@pytest.mark.parametrize("kind", KINDS)
def test_spark_loss_curve_equals_naive_over_five_iterations(kind, sc, settings, synthetic_train):
    images, labels = synthetic_train.images[:200], synthetic_train.labels[:200]
    local = CNN(seed=2, chunk=32)
    dist = KINDS[kind](sc=sc, settings=settings, batches=3, seed=2, chunk=32)
    curve_l, curve_d = [], []
    for i in range(5):
        index = np.arange(i * 40, i * 40 + 61) % 200            # minibatches of 61, cycling
        curve_l.append(local.train_iteration(images, labels, index)["loss"])
        curve_d.append(dist.train_iteration(images, labels, index)["loss"])
    np.testing.assert_allclose(curve_d, curve_l, rtol=1e-5)
    assert curve_l[-1] < curve_l[0]
    for name, p in local.params().items():
        assert relative_difference(dist.params()[name], p) <= 1e-4, name
    np.testing.assert_allclose(dist.predict_scores(images[:50]), local.predict_scores(images[:50]),
                               rtol=1e-4, atol=1e-4)
    assert_nothing_left(dist)
    dist.close()


@pytest.mark.parametrize("kind", KINDS)
def test_spark_equals_naive_with_the_training_recipe(kind, sc, settings, synthetic_train):
    """Shuffled minibatches, crops and flips, label smoothing and a schedule: the
    Spark tasks draw the same images and crops as the local trainer."""
    images, labels = synthetic_train.images[:300], synthetic_train.labels[:300]
    local = CNN(seed=6, chunk=16, label_smoothing=0.1)
    dist = KINDS[kind](sc=sc, settings=settings, batches=3, seed=6, chunk=16, label_smoothing=0.1)
    curve_l, curve_d = [], []
    for i in range(4):
        index = batch_indices(i, 70, 300, seed=6, order="shuffle")
        augment = draw_augmentation(6, i, 70, pad=2)
        lr = learning_rate(i, 0.01, "cosine", total=4, warmup=1)
        curve_l.append(local.train_iteration(images, labels, index, augment=augment, lr=lr)["loss"])
        curve_d.append(dist.train_iteration(images, labels, index, augment=augment, lr=lr)["loss"])
    np.testing.assert_allclose(curve_d, curve_l, rtol=1e-5)
    plain = CNN(seed=6, chunk=16).loss_and_gradients(images, labels, index)[0]
    assert abs(plain - curve_l[-1]) > 1e-3          # the recipe did change what was computed
    for name, p in local.params().items():
        assert relative_difference(dist.params()[name], p) <= 1e-4, name
    assert_nothing_left(dist)
    dist.close()


def test_intermediates_are_deleted_after_a_failed_iteration(sc, settings, synthetic_train):
    dist = LocalityCNN(sc=sc, settings=settings, batches=2, seed=0, chunk=16)
    bad_labels = np.full(len(synthetic_train.labels), 99)         # out of range: fails on the driver
    with pytest.raises(IndexError):
        dist.loss_and_gradients(synthetic_train.images, bad_labels, np.arange(20))
    assert_nothing_left(dist)


def test_runs_sharing_the_servers_do_not_collide(sc, settings):
    a = SparkCNN(sc=sc, settings=settings, batches=1)
    b = SparkCNN(sc=sc, settings=settings, batches=1)
    assert a.run_id != b.run_id
    open_matrix_store(a.exchange).put("x", np.ones(3))
    assert open_matrix_store(b.exchange).keys() == []
    a.close()
    assert_nothing_left(a)
