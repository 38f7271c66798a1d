"""The CNN on Spark with no matrix store: the `spark` and `none` exchanges.

Both are SparkCNN's driver loop with other hooks:

- `spark` (`CachedCNN`): the forward stage is an RDD with one partition per
  batch, mapped by `kept_forward_task` into one element per chunk of images
  (`KeptChunk`, a few MB, so Spark can spill a partition that does not fit
  to disk element by element) and persisted, so each batch's caches stay in
  Spark's block manager on the executor that computed them. The forward
  tasks send the driver only their scores, through an accumulator (the
  caches never leave the executors); the backward stage maps over the same
  persisted RDD, so Spark runs each backward task where its partition is and
  recomputes a lost partition from its lineage (the forward function, the
  broadcasts) by itself. The RDD is unpersisted after the backward stage,
  also after a failure.
- `none` (`FusedCNN`): one stage per iteration; each task runs forward, the
  softmax loss of its own images (normalised by the minibatch size) and
  backward, and returns its loss and gradients, which a reduce sums.

Both store nothing in Redis or HDFS: no heartbeat, no clean-up of dead runs,
no server needed.
"""
import functools

from pyspark import StorageLevel

from .spark_cnn import SparkCNN
from .storage.exchange import ExchangeConfig
from .tasks import (
    ScoresByBatch,
    add_loss_results,
    add_results,
    fused_task,
    kept_backward_task,
    kept_forward_task,
)


class InMemoryCNN(SparkCNN):
    """SparkCNN whose iterations store nothing outside Spark."""

    store_kind = None

    def exchange_settings(self, settings):
        # Only the timeout of the stage clean-up: no server address, no password.
        return ExchangeConfig(kind=self.store_kind, run_id=self.run_id, webhdfs="", hdfs_user="",
                              hdfs_root="", io_timeout=settings.io_timeout)

    def _start_storing(self):
        pass                         # nothing stored: no heartbeat, no dead runs to clear

    def release(self, quietly=False):
        pass

    def clear_intermediates(self):
        pass


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
    _kept = None                     # the iteration's persisted forward RDD

    def forward_stage(self, job, data_bc, state_bc, items):
        """Each batch forward, its caches persisted -> its BatchScores, in batch order."""
        if self._scores is None:
            self._scores = self.sc.accumulator({}, ScoresByBatch())
        self._scores.value = {}
        self._kept = (self.sc.parallelize(items, len(items))
                      .mapPartitions(functools.partial(kept_forward_task, job, data_bc, state_bc,
                                                       self._scores))
                      .persist(self.storage_level))
        # Counted by the JVM (the RDD's Java side): the forward function runs once
        # per batch, its results are cached, and only the scores travel.
        self._kept._jrdd.count()
        got = self._scores.value
        if sorted(got) != list(range(len(items))):
            raise RuntimeError(f"the forward stage returned the scores of batches "
                               f"{sorted(got)}, expected 0..{len(items) - 1}")
        return [got[b] for b in range(len(items))]

    def backward_stage(self, job, data_bc, state_bc, dscores_bc, forward):
        """Each batch backward where its partition is kept -> BackwardResult (summed)."""
        return self._kept.mapPartitions(functools.partial(
            kept_backward_task, job, data_bc, state_bc, dscores_bc)).reduce(add_results)

    def release(self, quietly=False):
        if self._kept is not None:
            self._kept.unpersist()
            self._kept = None


class FusedCNN(InMemoryCNN):
    """The `none` exchange: forward, loss and backward of a batch in one task."""

    store_kind = "none"
    stage_names = ("forward-backward",)

    def forward_stage(self, job, data_bc, state_bc, items):
        """Each batch's loss and gradients -> LossResult (summed)."""
        return self.sc.parallelize(items, len(items)).map(
            functools.partial(fused_task, job, data_bc, state_bc)).reduce(add_loss_results)
