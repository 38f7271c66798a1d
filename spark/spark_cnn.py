"""The CNN trained on Spark, with layer matrices exchanged through HDFS.

One iteration, with B batches (one Spark task per batch):
1. broadcast the parameters and the iteration's image index;
2. forward stage: each task runs its batch forward, writes what the backward
   pass needs to the matrix store and a marker file to HDFS, and returns its
   scores;
3. the driver computes the softmax loss and its gradient over all scores and
   broadcasts the gradient;
4. backward stage: an RDD built from the marker files with sc.wholeTextFiles,
   one partition per batch, so Spark prefers the node that holds each batch's
   files; each task reads its matrices and returns weight gradients, summed
   by a reduce;
5. the driver updates the weights; the iteration's matrices and markers are
   deleted.

The images are broadcast once per run as uint8. The first layer's input is
never stored: backward tasks rebuild it from the broadcast images.
"""
import functools
import time
import uuid

import numpy as np

from .cnn import CNN
from .exchange import clear_run, exchange_config
from .loss import softmax_loss
from .tasks import Job, add_results, backward_task, forward_task, marker_folder, predict_task


def new_run_id():
    """A name no other run shares: time plus randomness, safe in keys and paths."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:10]


def split_batches(n, batches):
    """(batch, offset, count) for B batches of n rows whose sizes differ by at most one."""
    if batches > n:
        raise ValueError(f"{batches} batches for {n} images: each batch needs at least one image")
    base, extra = divmod(n, batches)
    items, offset = [], 0
    for b in range(batches):
        count = base + (1 if b < extra else 0)
        items.append((b, offset, count))
        offset += count
    return items


class SparkCNN(CNN):
    """CNN whose forward and backward passes run as Spark tasks, one per batch."""

    store_kind = "hdfs"

    def __init__(self, sc, settings, batches, run_id=None, **options):
        super().__init__(**options)
        if int(batches) < 1:
            raise ValueError("the number of batches must be at least 1")
        self.sc, self.batches = sc, int(batches)
        self.run_id = run_id or new_run_id()
        self.exchange = exchange_config(self.store_kind, self.run_id, settings)
        self._images = None              # (the array broadcast, its broadcast)
        self.im2col_backends = set()

    def job(self):
        network = dict(arch=self.arch, input_shape=list(self.input_shape),
                       dtype=self.dtype.name, chunk=self.chunk)
        return Job(network=network, exchange=self.exchange, iteration=self.iteration)

    def _broadcast_images(self, images):
        if self._images is None or self._images[0] is not images:
            if self._images is not None:
                self._images[1].unpersist()
            self._images = (images, self.sc.broadcast(np.ascontiguousarray(images)))
        return self._images[1]

    def _describe(self, stage):
        self.sc.setJobDescription(f"spark-cnn {self.store_kind} iteration {self.iteration + 1}: {stage}")

    def _batch_stage(self, stage, task, job, images_bc, state_bc, items):
        """One task per (batch, offset, count) item -> the tasks' results in batch order."""
        self._describe(stage)
        results = (self.sc.parallelize(items, len(items))
                   .map(functools.partial(task, job, images_bc, state_bc))
                   .collect())
        return sorted(results, key=lambda r: r[0])

    def loss_and_gradients(self, images, labels, index=None, progress=None):
        n = len(labels) if index is None else len(index)
        index = np.arange(n) if index is None else np.asarray(index)
        items = split_batches(n, self.batches)
        job = self.job()
        t0 = time.perf_counter()
        images_bc = self._broadcast_images(images)
        state_bc = self.sc.broadcast({"params": self.params(), "index": index})
        t1 = time.perf_counter()
        try:
            forward = self._batch_stage("forward", forward_task, job, images_bc, state_bc, items)
            scores = np.concatenate([r[1] for r in forward])                # (N, K)
            loss, dscores = softmax_loss(scores, labels[index])
            t2 = time.perf_counter()
            dscores_bc = self.sc.broadcast(dscores)
            t3 = time.perf_counter()
            self._describe("backward")
            markers = self.sc.wholeTextFiles(self.exchange.marker_url(marker_folder(self.iteration)),
                                             minPartitions=len(items))
            grads, back_stats = (markers
                                 .map(functools.partial(backward_task, job, images_bc, state_bc,
                                                        dscores_bc))
                                 .reduce(add_results))
            t4 = time.perf_counter()
            dscores_bc.unpersist()
        except BaseException:
            self.clear_quietly()
            raise
        finally:
            state_bc.unpersist()
        self.clear_intermediates()
        if progress is not None:
            progress.update(n)
        stats = functools.reduce(add_results, [({}, r[2]) for r in forward])[1]
        self.im2col_backends |= set(stats["im2col"]) | set(back_stats["im2col"])
        timings = {
            "forward_s": t2 - t1,
            "backward_s": t4 - t3,
            "broadcast_s": (t1 - t0) + (t3 - t2),
            "store_write_s": stats["store_write_s"],
            "store_read_s": back_stats["store_read_s"],
            "store_bytes": stats["store_bytes"],
            "task_forward_s": stats["task_forward_s"],
            "task_backward_s": back_stats["task_backward_s"],
            "backward_partitions": markers.getNumPartitions(),
            "im2col": sorted(self.im2col_backends),
        }
        return loss, grads, timings

    def predict_scores(self, images, progress=None):
        items = split_batches(len(images), self.batches)
        images_bc = self._broadcast_images(images)
        state_bc = self.sc.broadcast({"params": self.params(), "index": np.arange(len(images))})
        try:
            results = self._batch_stage("predict", predict_task, self.job(), images_bc, state_bc,
                                        items)
        finally:
            state_bc.unpersist()
        if progress is not None:
            progress.update(len(images))
        return np.concatenate([r[1] for r in results])

    def clear_intermediates(self):
        """Delete every matrix and marker this run has stored (safe to call twice)."""
        clear_run(self.exchange)

    def clear_quietly(self):
        """clear_intermediates while another error is on its way: that error is the one to report."""
        try:
            self.clear_intermediates()
        except Exception:  # noqa: BLE001
            pass

    def close(self):
        self.clear_intermediates()
        if self._images is not None:
            self._images[1].unpersist()
            self._images = None
