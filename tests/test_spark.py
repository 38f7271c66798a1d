"""The Spark trainers against the local one, on real HDFS and Redis, in-process on local[2]."""
import uuid

import numpy as np
import pytest
from sparkjobs import local_spark

from spark.cnn import CNN
from spark.locality_cnn import LocalityCNN
from spark.memory_cnn import CachedCNN, FusedCNN
from spark.recipe import batch_indices, draw_augmentation, learning_rate, split_batches
from spark.settings import Settings
from spark.spark_cnn import SparkCNN
from spark.storage.exchange import exchange_config, hdfs_store, open_matrix_store, redis_store
from spark.storage.runs import HDFS_FOLDER, REDIS_PREFIX

KINDS = {"spark": SparkCNN, "locality": LocalityCNN}
# Every two-stage or fused --exchange mode: the class spark.trainers.trainer_class picks.
EXCHANGES = {"hdfs": SparkCNN, "redis": LocalityCNN, "spark": CachedCNN, "none": FusedCNN}


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


def persisted_rdds(sc):
    """Ids of the RDDs Spark holds persisted."""
    return sorted(sc._jsc.getPersistentRDDs().keys())


def assert_nothing_left(net, settings=None):
    """Nothing of the run in its store, nor (modes without a store) under its id in
    Redis or HDFS; no RDD left persisted."""
    if net.store_kind in ("hdfs", "redis"):
        assert open_matrix_store(net.exchange).keys() == []
        assert hdfs_store(net.exchange).keys() == []
    else:
        assert settings is not None
        config = exchange_config("redis", net.run_id, settings)
        assert redis_store(config).keys() == [] and hdfs_store(config).keys() == []
        redis = redis_store(config)                                       # no heartbeat either
        assert [redis.client(a).get(REDIS_PREFIX + net.run_id) for a in redis.addresses] == [
            None] * len(redis.addresses)
        assert net.run_id not in hdfs_store(config, namespace=HDFS_FOLDER).keys()
    assert persisted_rdds(net.sc) == []


def relative_difference(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def test_split_batches_differ_by_at_most_one():
    items = split_batches(5000, 60)
    sizes = [count for _, _, count in items]
    assert len(items) == 60 and sum(sizes) == 5000 and max(sizes) - min(sizes) <= 1
    assert [offset for _, offset, _ in items] == list(np.cumsum([0] + sizes[:-1]))
    with pytest.raises(ValueError, match="at least one image"):
        split_batches(3, 4)


@pytest.mark.parametrize("exchange", EXCHANGES)
@pytest.mark.parametrize("batches", [1, 2, 3, 7])
def test_spark_gradients_equal_naive_for_uneven_batches(exchange, batches, sc, settings,
                                                        synthetic_train):
    images, labels = synthetic_train.images, synthetic_train.labels
    index = np.arange(100, 123)                                   # N = 23, not divisible by B > 1
    local = CNN(seed=5, chunk=8)
    dist = EXCHANGES[exchange](sc=sc, settings=settings, batches=batches, seed=5, chunk=8)
    loss_l, grads_l, _ = local.loss_and_gradients(images, labels, index)
    loss_d, grads_d, timings = dist.loss_and_gradients(images, labels, index)
    assert abs(loss_d - loss_l) <= 1e-5 * abs(loss_l)
    for name in grads_l:
        assert relative_difference(grads_d[name], grads_l[name]) <= 1e-5, name
    assert timings["backward_partitions"] == batches
    assert timings["im2col"] == ["native"]
    assert timings["exchange"] == exchange
    if exchange == "none":
        assert timings["store_bytes"] == 0
    else:
        assert 0 < timings["store_bytes"] / 23 < 100_000            # bytes per image
    if exchange == "spark":
        assert timings["recomputed_batches"] == 0                  # the persisted caches were used
    assert_nothing_left(dist, settings)
    dist.close()


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_spark_loss_curve_equals_naive_over_five_iterations(exchange, sc, settings,
                                                            synthetic_train):
    images, labels = synthetic_train.images[:200], synthetic_train.labels[:200]
    local = CNN(seed=2, chunk=32)
    dist = EXCHANGES[exchange](sc=sc, settings=settings, batches=3, seed=2, chunk=32)
    curve_l, curve_d = [], []
    for i in range(5):
        index = np.arange(i * 40, i * 40 + 61) % 200            # minibatches of 61, cycling
        curve_l.append(local.train_iteration(images, labels, index)["loss"])
        record = dist.train_iteration(images, labels, index)
        assert record["exchange"] == exchange
        curve_d.append(record["loss"])
    np.testing.assert_allclose(curve_d, curve_l, rtol=1e-5)
    assert curve_l[-1] < curve_l[0]
    for name, p in local.params().items():
        assert relative_difference(dist.params()[name], p) <= 1e-4, name
    np.testing.assert_allclose(dist.predict_scores(images[:50]), local.predict_scores(images[:50]),
                               rtol=1e-4, atol=1e-4)
    assert_nothing_left(dist, settings)
    dist.close()


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_float16_exchange_equals_naive_float16(exchange, sc, settings, synthetic_train):
    """--exchange-dtype float16: every mode stores (or keeps) its activations as float16,
    under 40 KB per image, and computes what the local trainer does with the same rounding."""
    images, labels = synthetic_train.images[:200], synthetic_train.labels[:200]
    local = CNN(seed=7, chunk=16, exchange_dtype="float16")
    dist = EXCHANGES[exchange](sc=sc, settings=settings, batches=3, seed=7, chunk=16,
                               exchange_dtype="float16")
    full = CNN(seed=7, chunk=16)
    curve_l, curve_d, curve_f = [], [], []
    for i in range(3):
        index = np.arange(i * 50, i * 50 + 61) % 200
        curve_l.append(local.train_iteration(images, labels, index)["loss"])
        curve_f.append(full.train_iteration(images, labels, index)["loss"])
        record = dist.train_iteration(images, labels, index)
        assert record["exchange_dtype"] == "float16"
        if exchange != "none":
            assert 0 < record["store_bytes"] / 61 <= 40_000            # bytes per image
        curve_d.append(record["loss"])
    np.testing.assert_allclose(curve_d, curve_l, rtol=1e-5)
    assert curve_l != curve_f                                     # the rounding is there
    for name, p in local.params().items():
        assert relative_difference(dist.params()[name], p) <= 1e-4, name
    assert_nothing_left(dist, settings)
    dist.close()


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_spark_equals_naive_with_the_training_recipe(exchange, sc, settings, synthetic_train):
    """Shuffled minibatches, crops and flips, label smoothing and a schedule: the
    Spark tasks draw the same images and crops as the local trainer."""
    images, labels = synthetic_train.images[:300], synthetic_train.labels[:300]
    local = CNN(seed=6, chunk=16, label_smoothing=0.1)
    dist = EXCHANGES[exchange](sc=sc, settings=settings, batches=3, seed=6, chunk=16,
                               label_smoothing=0.1)
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
    assert_nothing_left(dist, settings)
    dist.close()


@pytest.mark.parametrize("exchange", ["redis", "spark"])
def test_intermediates_are_deleted_after_a_failed_iteration(exchange, sc, settings,
                                                            synthetic_train):
    """The driver fails between the stages: the stored matrices, or the persisted RDD, go."""
    dist = EXCHANGES[exchange](sc=sc, settings=settings, batches=2, seed=0, chunk=16)
    bad_labels = np.full(len(synthetic_train.labels), 99)   # out of range: fails on the driver
    with pytest.raises(IndexError):
        dist.loss_and_gradients(synthetic_train.images, bad_labels, np.arange(20))
    assert_nothing_left(dist, settings)
    dist.close()


def test_runs_sharing_the_servers_do_not_collide(sc, settings):
    a = SparkCNN(sc=sc, settings=settings, batches=1)
    b = SparkCNN(sc=sc, settings=settings, batches=1)
    assert a.run_id != b.run_id
    open_matrix_store(a.exchange).put("x", np.ones(3))
    assert open_matrix_store(b.exchange).keys() == []
    a.close()
    assert_nothing_left(a)


def stage_result_bytes(sc, group):
    """Bytes the tasks of a job group's stages sent back to the driver (Spark's UI REST API)."""
    import json
    import urllib.request

    from sparkjobs import wait_for

    from spark.spark_context import group_stages

    def attempts():
        found = []
        for stage in group_stages(sc, group):
            url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/stages/{stage.stageId}"
            with urllib.request.urlopen(url, timeout=10) as reply:
                found += json.load(reply)
        # the listener bus reports stages a moment after their job ends
        return found if found and all(a["status"] == "COMPLETE" for a in found) else None

    return sum(a["resultSize"] for a in wait_for(attempts, 30, f"the stages of {group}"))


def test_spark_exchange_sends_the_driver_scores_not_caches(sc, settings, synthetic_train):
    dist = CachedCNN(sc=sc, settings=settings, batches=3, seed=1, chunk=32)
    _, _, timings = dist.loss_and_gradients(synthetic_train.images, synthetic_train.labels,
                                            np.arange(300))
    sent = stage_result_bytes(sc, f"{dist.run_id}-1-forward")
    scores_bytes = 300 * 10 * 4                                      # (N, K) float32
    assert timings["store_bytes"] > 1000 * scores_bytes            # what stayed on the executors
    assert scores_bytes <= sent < 3 * scores_bytes + 10_000
    assert timings["recomputed_batches"] == 0
    assert_nothing_left(dist, settings)
    dist.close()


@pytest.mark.parametrize("exchange", ["spark", "none"])
def test_exchanges_without_a_store_need_neither_redis_nor_hdfs(exchange, sc, synthetic_train):
    """Servers that do not exist: the run never touches them, and equals the local one."""
    nowhere = Settings(data_dir="", params_dir="", redis="127.0.0.1:1",
                       webhdfs="http://127.0.0.1:1", hdfs="hdfs://127.0.0.1:1",
                       hdfs_user="nobody", hdfs_root="/nowhere", io_timeout=2)
    images, labels = synthetic_train.images[:100], synthetic_train.labels[:100]
    local = CNN(seed=4, chunk=16)
    dist = EXCHANGES[exchange](sc=sc, settings=nowhere, batches=2, seed=4, chunk=16)
    for _ in range(2):
        expected = local.train_iteration(images, labels)["loss"]
        assert dist.train_iteration(images, labels)["loss"] == pytest.approx(expected, rel=1e-5)
    dist.close()
    assert persisted_rdds(sc) == []
