"""--exchange allreduce in-process on local Spark: the same numbers as the local trainer,
segments that do not change them, parameter averaging, live rows, and faults done
to the real Python workers of a running segment."""
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
from sparkjobs import busy_python_workers, local_spark, python_workers

from spark.allreduce import Mesh, PeerTimeout, pieces
from spark.allreduce_cnn import AllReduceCNN, SegmentError
from spark.cnn import CNN
from spark.config import RunConfig
from spark.recipe import iteration_inputs, slice_augmentation, split_batches
from spark.settings import Settings

# Three task slots, and a segment that fails is run again up to 3 times in all.
MASTER = "local[3,3]"


@pytest.fixture(scope="module")
def sc():
    with local_spark("spark-cnn all-reduce tests", MASTER) as context:
        yield context


def settings(timeout=30.0):
    """Servers that do not exist: the all-reduce needs neither Redis nor HDFS."""
    return Settings(data_dir="", params_dir="", redis="127.0.0.1:1", webhdfs="http://127.0.0.1:1",
                    hdfs_user="nobody", hdfs_root="/nowhere", io_timeout=timeout)


def recipe(**changes):
    base = dict(images=200, minibatch=61, seed=4, lr=0.02, exchange="allreduce",
                schedule_length=12, save_every=1000)
    base.update(changes)
    return RunConfig(**base)


def local_run(images, labels, run, iterations):
    net = CNN(**run.network_options(), chunk=16)
    return net, net.train_segment(images, labels, run, iterations)


def relative_difference(a, b):
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def assert_bit_identical(a, b):
    for name, value in a.params().items():
        assert np.array_equal(value, b.params()[name]), name
        assert np.array_equal(a.velocity[name], b.velocity[name]), name


def test_pieces_cover_the_array_and_differ_by_at_most_one():
    bounds = pieces(10, 3)
    assert list(bounds) == [0, 4, 7, 10]
    assert list(pieces(2, 3)) == [0, 1, 2, 2]


def test_the_mesh_sums_in_rank_order_and_names_a_silent_peer():
    """Three meshes in threads of this process: every one gets the same bits, the
    sum of the three in rank order; a peer that never sends is named after the timeout."""
    token = os.urandom(16)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(1001).astype(np.float32) for _ in range(3)]
    meshes = [Mesh(r, 3, token, 5.0, "127.0.0.1") for r in range(3)]
    for mesh in meshes:
        mesh.connect([m.address for m in meshes])
    results = [None] * 3

    def run(r):
        results[r] = [meshes[r].allreduce(arrays[r] * (k + 1), k) for k in range(3)]

    threads = [threading.Thread(target=run, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for k in range(3):
        expected = (arrays[0] * (k + 1) + arrays[1] * (k + 1)) + arrays[2] * (k + 1)
        for r in range(3):
            assert np.array_equal(results[r][k], expected), (r, k)
    # rank 0 sends the two pieces it does not own, then its own summed piece to both peers
    assert meshes[0].bytes_sent == 3 * 4 * ((1001 - 334) + 2 * 334)
    late = Mesh(0, 2, token, 0.5, "127.0.0.1")
    silent = Mesh(1, 2, token, 0.5, "127.0.0.1")
    late.connect([late.address, silent.address])
    started = time.monotonic()
    with pytest.raises(PeerTimeout, match=r"no part of sum 7 from task 1 .* within 0.5 s"):
        late.allreduce(np.ones(10, np.float32), 7)
    assert time.monotonic() - started < 3
    for mesh in meshes + [late, silent]:
        mesh.close()


@pytest.mark.parametrize("batches", [1, 2, 3])
def test_allreduce_equals_the_local_trainer_for_uneven_shares(batches, sc, synthetic_train):
    """Minibatches of 61 over 1, 2 and 3 tasks (shares of 31/30 and 21/20/20 images)."""
    images, labels = synthetic_train.images[:200], synthetic_train.labels[:200]
    run = recipe()
    local, expected = local_run(images, labels, run, 6)
    net = AllReduceCNN(sc=sc, settings=settings(), batches=batches, **run.network_options(),
                       chunk=16)
    rows = net.train_segment(images, labels, run, 6)
    assert [r["iteration"] for r in rows] == list(range(1, 7)) and net.iteration == 6
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in expected],
                               rtol=1e-5)
    for name, p in local.params().items():
        assert relative_difference(net.params()[name], p) <= 1e-4, name
    for r in rows:
        assert r["tasks"] == batches and r["exchange"] == "allreduce" and r["images"] == 61
        assert r["im2col"] == ["native"]
        # rank 0 sends the K-1 pieces it does not own, then its summed piece to K-1
        # peers: about 2 (K-1)/K of the gradients (and 2 scalars) per iteration
        size = sum(p.size for p in local.params().values()) + 2
        assert r["allreduce_bytes"] == 4 * (size + (batches - 2) * pieces(size, batches)[1])
    net.close()


def test_allreduce_equals_the_local_trainer_with_the_training_recipe(sc, synthetic_train):
    images, labels = synthetic_train.images[:300], synthetic_train.labels[:300]
    run = recipe(images=300, minibatch=70, augment=True, schedule="cosine", warmup=2,
                 label_smoothing=0.1, nesterov=True, order="shuffle", reg=1e-4)
    local, expected = local_run(images, labels, run, 8)
    net = AllReduceCNN(sc=sc, settings=settings(), batches=3, **run.network_options(),
                       chunk=16)
    rows = net.train_segment(images, labels, run, 8)
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in expected],
                               rtol=1e-5)
    np.testing.assert_allclose([r["lr"] for r in rows], [r["lr"] for r in expected], rtol=1e-12)
    for name, p in local.params().items():
        assert relative_difference(net.params()[name], p) <= 1e-4, name
    net.close()


def test_allreduce_equals_the_local_trainer_for_a_two_block_stack(sc, synthetic_train):
    """--arch with two conv-ReLU-pool blocks: the same losses and parameters over 2 tasks."""
    images, labels = synthetic_train.images[:200], synthetic_train.labels[:200]
    run = recipe(arch="conv8-relu-pool-conv16-relu-pool-fc10")
    local, expected = local_run(images, labels, run, 5)
    assert [type(layer).__name__ for layer in local.layers] == [
        "ConvReluPool", "ConvReluPool", "FullyConnected"]
    net = AllReduceCNN(sc=sc, settings=settings(), batches=2, **run.network_options(),
                       chunk=16)
    rows = net.train_segment(images, labels, run, 5)
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in expected],
                               rtol=1e-5)
    for name, p in local.params().items():
        assert relative_difference(net.params()[name], p) <= 1e-4, name
    net.close()


def test_where_segments_end_changes_no_bit(sc, synthetic_train):
    """One segment of 6, three of 2, and segments cut by time: the same bits."""
    images, labels = synthetic_train.images[:200], synthetic_train.labels[:200]
    run = recipe()
    whole = AllReduceCNN(sc=sc, settings=settings(), batches=2, **run.network_options())
    whole.train_segment(images, labels, run, 6)
    pieces_net = AllReduceCNN(sc=sc, settings=settings(), batches=2, **run.network_options())
    for end in (2, 4, 6):
        rows = pieces_net.train_segment(images, labels, run, end)
        assert rows[-1]["iteration"] == end
    assert_bit_identical(pieces_net, whole)
    timed = AllReduceCNN(sc=sc, settings=settings(), batches=2, **run.network_options())
    untimed = run.replace(save_every=None, segment_seconds=0.0)      # every segment: 1 iteration
    while timed.iteration < 6:
        rows = timed.train_segment(images, labels, untimed, 6)
        assert len(rows) == 1
    assert_bit_identical(timed, whole)
    for net in (whole, pieces_net, timed):
        net.close()


def averaged_reference(images, labels, run, tasks, iterations):
    """What --average-every H computes, spelled out with local networks: each task
    steps on its own share, and every H iterations (and at the end) the parameters
    and velocities are averaged, weighted by share size."""
    nets = [CNN(**run.network_options()) for _ in range(tasks)]
    losses = []
    pending = [[] for _ in range(tasks)]
    for i in range(iterations):
        index, augment, lr = iteration_inputs(run, i)
        for r, (_, offset, count) in enumerate(split_batches(run.batch_size, tasks)):
            rows = slice(offset, offset + count)
            share = np.arange(offset, offset + count) if index is None else index[rows]
            loss, grads, _ = nets[r].loss_and_gradients(images, labels, share, None,
                                                        slice_augmentation(augment, rows))
            pending[r].append(nets[r].regularize(loss, grads) * count / run.batch_size)
            nets[r].update(grads, lr)
        if (i + 1) % run.average_every == 0 or i + 1 == iterations:
            weights = [count / run.batch_size for _, _, count in
                       split_batches(run.batch_size, tasks)]
            for name in nets[0].params():
                p = sum(w * n.params()[name] for w, n in zip(weights, nets))
                v = sum(w * n.velocity[name] for w, n in zip(weights, nets))
                for n in nets:
                    n.params()[name][...] = p
                    n.velocity[name][...] = v
            losses += [sum(parts) for parts in zip(*pending)]
            pending = [[] for _ in range(tasks)]
    return nets[0], losses


def test_average_every_h_averages_parameters_and_velocities(sc, synthetic_train):
    images, labels = synthetic_train.images[:200], synthetic_train.labels[:200]
    run = recipe(average_every=3, minibatch=60)
    expected_net, expected = averaged_reference(images, labels, run, 2, 7)
    net = AllReduceCNN(sc=sc, settings=settings(), batches=2, **run.network_options())
    rows = net.train_segment(images, labels, run, 7)
    np.testing.assert_allclose([r["loss"] for r in rows], expected, rtol=1e-5)
    assert [r["allreduce_bytes"] > 0 for r in rows] == [False, False, True, False, False, True,
                                                        True]
    for name, p in expected_net.params().items():
        assert relative_difference(net.params()[name], p) <= 1e-4, name
    summed, _ = local_run(images, labels, run.replace(average_every=1), 7)
    assert any(relative_difference(net.params()[n], p) > 1e-4 for n, p in summed.params().items())
    net.close()


def test_rows_arrive_while_the_segment_runs(sc, synthetic_train):
    images, labels = synthetic_train.images[:1000], synthetic_train.labels[:1000]
    run = recipe(images=1000, minibatch=200)
    net = AllReduceCNN(sc=sc, settings=settings(), batches=2, **run.network_options())
    arrived = []
    rows = net.train_segment(images, labels, run, 40,
                             on_row=lambda row: arrived.append((row["iteration"],
                                                                time.monotonic())))
    returned = time.monotonic()
    assert [i for i, _ in arrived] == list(range(1, 41))
    assert arrived[0][1] < returned - 0.3                  # printed long before the segment ended
    assert all(r["segment_s"] <= rows[-1]["segment_s"] for r in rows)
    net.close()


def test_a_long_iteration_shows_progress_while_it_runs(sc, synthetic_train):
    """Rank 0's beats carry how far it is: the driver's progress counter moves
    inside an iteration, before its row arrives. Beats come once a second, so the
    iterations are made to take longer than that: two 3x3 convolutions of 32
    filters over 1,000 images a task."""
    images, labels = synthetic_train.images, synthetic_train.labels
    run = recipe(images=2000, minibatch=None,                       # full batch: 2 x 1000 images
                 arch="conv32-relu-conv32-relu-pool-fc10")
    net = AllReduceCNN(sc=sc, settings=settings(), batches=2, **run.network_options(), chunk=8)
    seen = []

    class Recorder:
        def __init__(self, iteration):
            self.iteration, self.done = iteration, 0

        def update(self, n):
            self.done += n
            seen.append((self.iteration, self.done, time.monotonic()))

    rows = {}
    net.train_segment(images, labels, run, 3, progress=Recorder,
                      on_row=lambda row: rows.setdefault(row["iteration"], time.monotonic()))
    inside = [(i, done) for i, done, when in seen
              if 0 < done < 2000 and when < rows.get(i + 1, float("inf"))]
    assert inside, seen
    for i in {i for i, _, _ in seen}:                 # one task's counter: it only goes up
        done = [d for j, d, _ in seen if j == i]
        assert done == sorted(done), (i, done)
    net.close()


def test_listening_sockets_of_a_segment_are_closed(sc, synthetic_train):
    def listening():
        return sorted(c.laddr for c in psutil.Process().net_connections("tcp")
                      if c.status == psutil.CONN_LISTEN)

    before = listening()
    run = recipe()
    net = AllReduceCNN(sc=sc, settings=settings(), batches=2, **run.network_options())
    net.train_segment(synthetic_train.images[:200], synthetic_train.labels[:200], run, 2)
    net.close()
    assert listening() == before                      # the coordinator's port is closed again


def test_too_many_tasks_for_the_slots_is_one_line(sc):
    started = time.monotonic()
    with pytest.raises(SegmentError, match=r"needs 4 task slots at once, the cluster has 3"):
        AllReduceCNN(sc=sc, settings=settings(), batches=4)
    assert time.monotonic() - started < 60
    assert AllReduceCNN(sc=sc, settings=settings()).batches == 3     # B from the slots


def fault_during_segment(net, images, labels, run, end, at_iteration, fault):
    """train_segment, doing fault() once the row of `at_iteration` has arrived."""
    done = {}

    def on_row(row):
        if row["iteration"] == at_iteration and "result" not in done:
            done["result"] = fault()

    rows = net.train_segment(images, labels, run, end, on_row=on_row)
    assert "result" in done, "the fault was never done"
    return rows, done["result"]


def test_a_killed_python_worker_reruns_the_segment_bit_identically(sc, synthetic_train, capfd):
    images, labels = synthetic_train.images[:600], synthetic_train.labels[:600]
    run = recipe(images=600, minibatch=120)
    reference = AllReduceCNN(sc=sc, settings=settings(), batches=3, **run.network_options())
    reference.train_segment(images, labels, run, 80)
    net = AllReduceCNN(sc=sc, settings=settings(), batches=3, **run.network_options())

    def kill():                  # the rows come every 0.5 s: the segment is still running
        victims = python_workers()
        for victim in victims:
            victim.kill()
        return len(victims)

    rows, killed = fault_during_segment(net, images, labels, run, 80, 2, kill)
    assert killed >= 1
    assert [r["iteration"] for r in rows] == list(range(1, 81))
    assert "running it again (attempt 2 of 3)" in capfd.readouterr().err
    assert_bit_identical(net, reference)


def test_a_stalled_task_ends_the_segment_within_the_timeout(sc, synthetic_train, capfd):
    """SIGSTOP one task's Python worker: its peers give up after SPARK_CNN_IO_TIMEOUT,
    the segment runs again without it, and the result is the same."""
    images, labels = synthetic_train.images[:600], synthetic_train.labels[:600]
    run = recipe(images=600, minibatch=120)
    reference = AllReduceCNN(sc=sc, settings=settings(), batches=2, **run.network_options())
    reference.train_segment(images, labels, run, 40)
    net = AllReduceCNN(sc=sc, settings=settings(timeout=4), batches=2, **run.network_options())
    stopped = []

    def stop():
        victim = busy_python_workers()[0]
        victim.send_signal(signal.SIGSTOP)
        stopped.append(victim)
        return time.monotonic()

    try:
        rows, when = fault_during_segment(net, images, labels, run, 40, 3, stop)
        took = time.monotonic() - when
    finally:
        for victim in stopped:
            try:
                victim.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass
    err = capfd.readouterr().err
    assert "running it again" in err and ("within 4 s" in err or "for 4 s" in err), err
    assert took < 60, took
    assert [r["iteration"] for r in rows] == list(range(1, 41))
    assert_bit_identical(net, reference)
