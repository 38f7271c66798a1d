"""The CNN on Spark with no matrix store: the `spark` and `none` exchanges.

- `spark` (`CachedCNN`): the forward stage is an RDD with one partition per
  batch, mapped by `kept_forward_task` into one element per chunk of images
  (`KeptChunk`, a few MB, so Spark can spill a partition that does not fit
  to disk element by element) and persisted, so each batch's caches stay in
  Spark's block manager on the executor that computed them. The
  forward tasks send the driver only their scores, through an accumulator
  (the caches never leave the executors); the driver computes the loss
  gradient and broadcasts it; the
  backward stage maps over the same persisted RDD, so Spark runs each
  backward task where its partition is and recomputes a lost partition from
  its lineage (the forward function, the broadcasts) by itself. The RDD is
  unpersisted after the backward stage, also after a failure.
- `none` (`FusedCNN`): one stage per iteration; each task runs forward, the
  softmax loss of its own images (normalised by the minibatch size) and
  backward, and returns its loss and gradients, which a reduce sums.

Both store nothing in Redis or HDFS: no heartbeat, no clean-up of dead runs,
no server needed.
"""
import functools
import time

import numpy as np
from pyspark import StorageLevel

from .storage.exchange import ExchangeConfig
from .loss import softmax_loss
from .recipe import split_batches
from .spark_cnn import SparkCNN
from .tasks import (ScoresByBatch, add_loss_results, add_results, add_stats, fused_task,
                    kept_backward_task, kept_forward_task)


class InMemoryCNN(SparkCNN):
    """SparkCNN whose iterations store nothing outside Spark."""

    store_kind = None

    def exchange_settings(self, settings):
        # Only the timeout of the stage clean-up: no server address, no password.
        return ExchangeConfig(kind=self.store_kind, run_id=self.run_id, webhdfs="", hdfs_user="",
                              hdfs_root="", io_timeout=settings.io_timeout)

    def _start_storing(self):
        pass                         # nothing stored: no heartbeat, no dead runs to clear

    def clear_intermediates(self):
        pass

    def _iteration_input(self, images, labels, index):
        """-> (n, index, batch items, job)."""
        n = len(labels) if index is None else len(index)
        index = np.arange(n) if index is None else np.asarray(index)
        return n, index, split_batches(n, self.batches), self.job()


class CachedCNN(InMemoryCNN):
    """The `spark` exchange: the forward stage's caches stay in Spark's block manager.

    Storage level: memory and disk, deserialized on the JVM side (Scala's
    MEMORY_AND_DISK). Disk: a partition that does not fit in the executor's
    storage memory goes to its local disk instead of being dropped; dropped
    (as MEMORY_ONLY would), it would cost the backward task a whole forward
    pass of its batch, while reading it back costs a sequential read. The
    caches take 70-90 KB per image, more than an executor's default storage
    memory (about 400 MB) holds beyond a few thousand images. Deserialized:
    a PySpark element is already a pickled byte array; PySpark's own
    MEMORY_AND_DISK constant (serialized) makes the JVM serialize those bytes
    once more, which measured 1.4-2.5x slower writing 4 x 35 MB here.

    The forward job is a JVM-side count of the persisted RDD, so no Python
    worker reads the caches back just to pick the scores out (a projection
    `kept.map(scores).collect()` measured about 1.2 s more per 140 MB); the
    scores come back in an accumulator, keyed by batch.
    """

    store_kind = "spark"
    storage_level = StorageLevel(useDisk=True, useMemory=True, useOffHeap=False,
                                 deserialized=True)
    _scores = None                   # the run's ScoresByBatch accumulator, made on first use

    def loss_and_gradients(self, images, labels, index=None, progress=None, augment=None):
        n, index, items, job = self._iteration_input(images, labels, index)
        t0 = time.perf_counter()
        images_bc = self._broadcast_images(images)
        state_bc = self.sc.broadcast({"params": self.params(), "index": index, "augment": augment})
        t1 = time.perf_counter()
        if self._scores is None:
            self._scores = self.sc.accumulator({}, ScoresByBatch())
        self._scores.value = {}
        kept = (self.sc.parallelize(items, len(items))
                .mapPartitions(functools.partial(kept_forward_task, job, images_bc, state_bc,
                                                 self._scores))
                .persist(self.storage_level))
        dscores_bc = None
        try:
            # Counted by the JVM (the RDD's Java side): the forward function runs
            # once per batch, its results are cached, and only the scores travel.
            self._run_stage("forward", kept._jrdd.count)
            got = self._scores.value
            if sorted(got) != list(range(len(items))):
                raise RuntimeError(f"the forward stage returned the scores of batches "
                                   f"{sorted(got)}, expected 0..{len(items) - 1}")
            forward = [got[b] for b in range(len(items))]
            scores = np.concatenate([r.scores for r in forward])                # (N, K)
            loss, dscores = softmax_loss(scores, labels[index], smoothing=self.label_smoothing)
            t2 = time.perf_counter()
            dscores_bc = self.sc.broadcast(dscores)
            t3 = time.perf_counter()
            backward = self._run_stage("backward", lambda: kept.mapPartitions(functools.partial(
                kept_backward_task, job, images_bc, state_bc, dscores_bc)).reduce(add_results))
            t4 = time.perf_counter()
        finally:
            kept.unpersist()
            if dscores_bc is not None:
                dscores_bc.unpersist()
            state_bc.unpersist()
        if progress is not None:
            progress.update(n)
        stats = functools.reduce(add_stats, [r.stats for r in forward])
        # store_bytes: the arrays of the persisted caches
        timings = self._two_stage_timings((t0, t1, t2, t3, t4), stats, backward.stats,
                                          kept.getNumPartitions())
        return loss, backward.grads, timings


class FusedCNN(InMemoryCNN):
    """The `none` exchange: forward, loss and backward of a batch in one task."""

    store_kind = "none"

    def loss_and_gradients(self, images, labels, index=None, progress=None, augment=None):
        n, index, items, job = self._iteration_input(images, labels, index)
        t0 = time.perf_counter()
        images_bc = self._broadcast_images(images)
        state_bc = self.sc.broadcast({"params": self.params(), "index": index, "augment": augment,
                                      "labels": np.asarray(labels)[index],
                                      "smoothing": self.label_smoothing})
        t1 = time.perf_counter()
        try:
            result = self._run_stage("forward-backward", lambda: self.sc.parallelize(
                items, len(items)).map(functools.partial(fused_task, job, images_bc, state_bc))
                .reduce(add_loss_results))
        finally:
            state_bc.unpersist()
        t2 = time.perf_counter()
        if progress is not None:
            progress.update(n)
        stats = result.stats
        self.im2col_backends |= set(stats["im2col"])
        busy = stats["task_forward_s"] + stats["task_backward_s"]
        share = stats["task_forward_s"] / busy if busy else 0.5
        timings = {
            # One stage: its wall time split as the tasks' own forward and backward times.
            "forward_s": (t2 - t1) * share,
            "backward_s": (t2 - t1) * (1 - share),
            "broadcast_s": t1 - t0,
            "store_bytes": 0,
            "task_forward_s": stats["task_forward_s"],
            "task_backward_s": stats["task_backward_s"],
            "backward_partitions": len(items),
            "backward_hosts": sorted(set(stats["backward_hosts"])),
            "im2col": sorted(self.im2col_backends),
            "exchange": self.store_kind,
        }
        return result.loss, result.grads, timings
