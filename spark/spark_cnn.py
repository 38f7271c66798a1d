"""The CNN trained on Spark, with layer matrices exchanged through HDFS.

One iteration, with B batches (one Spark task per batch):
1. broadcast the parameters and the iteration's image index;
2. forward stage: each task runs its batch forward, writes what the backward
   pass needs to the matrix store, and returns its scores and a record of
   the batch (the keys of its matrices, the node it ran on);
3. the driver computes the softmax loss and its gradient over all scores and
   broadcasts the gradient;
4. backward stage: one task per batch record, placed by Spark on the node
   that ran the batch's forward task (a location preference), so it reads
   its matrices where they were written; a task whose matrices are gone
   recomputes them; the gradients are summed by a reduce;
5. the driver updates the weights; the iteration's matrices are deleted.

The images are broadcast once per run as uint8. The first layer's input is
never stored: backward tasks rebuild it from the broadcast images. While the
run stores anything it keeps a heartbeat (spark/storage/runs.py), and its first
iteration removes what runs whose driver died left behind.
"""
import functools
import sys
import time
import uuid

import numpy as np

from .cnn import CNN
from .storage.exchange import clear_run, exchange_config, note_stalls, open_matrix_store
from .loss import softmax_loss
from .recipe import split_batches
from .storage.runs import Heartbeat, remove_dead_runs
from .spark_context import cancel_and_wait, executor_hosts, located_rdd
from .tasks import Job, add_results, add_stats, backward_task, forward_task, predict_task


def new_run_id():
    """A name no other run shares: time plus randomness, safe in keys and paths."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:10]


class SparkCNN(CNN):
    """CNN whose forward and backward passes run as Spark tasks, one per batch."""

    store_kind = "hdfs"      # the --exchange mode; spark/memory_cnn.py has those that store nothing

    def __init__(self, sc, settings, batches, run_id=None, **options):
        super().__init__(**options)
        if int(batches) < 1:
            raise ValueError("the number of batches must be at least 1")
        self.sc, self.batches = sc, int(batches)
        self.run_id = run_id or new_run_id()
        self.exchange = self.exchange_settings(settings)
        self._images = None              # (the array broadcast, its broadcast)
        self._heartbeat = None
        self._driver_host = sc.getConf().get("spark.driver.host", "")
        self.im2col_backends = set()

    def exchange_settings(self, settings):
        """What the tasks need to reach the run's matrix store (an ExchangeConfig)."""
        return exchange_config(self.store_kind, self.run_id, settings)

    def job(self):
        network = dict(arch=self.arch, input_shape=list(self.input_shape),
                       dtype=self.dtype.name, exchange_dtype=self.exchange_dtype.name,
                       chunk=self.chunk)
        return Job(network=network, exchange=self.exchange, iteration=self.iteration,
                   driver_host=self._driver_host)

    def _broadcast_images(self, images):
        if self._images is None or self._images[0] is not images:
            if self._images is not None:
                self._images[1].unpersist()
            self._images = (images, self.sc.broadcast(np.ascontiguousarray(images)))
        return self._images[1]

    def _start_storing(self):
        """Before the run's first stored matrix: check the servers, start the
        heartbeat, remove what dead runs left behind."""
        if self._heartbeat is not None:
            return
        open_matrix_store(self.exchange).check()     # a server down now: say which, at once
        self._heartbeat = Heartbeat(self.exchange).start()
        for run_id in remove_dead_runs(self.exchange):
            print(f"spark-cnn: removed what run {run_id} left in {self.store_kind} "
                  "(its driver is gone)", file=sys.stderr)

    def _run_stage(self, stage, action):
        """Run `action()` (one Spark job) named after the iteration and stage.

        A failed job is cancelled and its running tasks waited for, so that no
        task writes after the clean-up that follows.
        """
        group = f"{self.run_id}-{self.iteration + 1}-{stage}"
        self.sc.setJobGroup(group, f"spark-cnn {self.store_kind} iteration {self.iteration + 1}: "
                                   f"{stage}", interruptOnCancel=True)
        try:
            return action()
        except BaseException as e:
            note_stalls(str(e), self.exchange.io_timeout)     # the clean-up skips them
            cancel_and_wait(self.sc, group, 2 * self.exchange.io_timeout)
            raise

    def _batch_stage(self, stage, task, job, images_bc, state_bc, items):
        """One task per (batch, offset, count) item -> the tasks' results in batch order."""
        rdd = self.sc.parallelize(items, len(items)).map(
            functools.partial(task, job, images_bc, state_bc))
        results = self._run_stage(stage, rdd.collect)
        return sorted(results, key=lambda r: r.batch)

    def _preferred_hosts(self, records):
        """For each batch record, the executor host that ran its forward task (None if unknown)."""
        known = executor_hosts(self.sc)
        return [next((h for h in record.hosts if h in known), None) for record in records]

    def loss_and_gradients(self, images, labels, index=None, progress=None, augment=None):
        n = len(labels) if index is None else len(index)
        index = np.arange(n) if index is None else np.asarray(index)
        items = split_batches(n, self.batches)
        self._start_storing()
        job = self.job()
        t0 = time.perf_counter()
        images_bc = self._broadcast_images(images)
        state_bc = self.sc.broadcast({"params": self.params(), "index": index, "augment": augment})
        t1 = time.perf_counter()
        try:
            forward = self._batch_stage("forward", forward_task, job, images_bc, state_bc, items)
            scores = np.concatenate([r.scores for r in forward])                # (N, K)
            loss, dscores = softmax_loss(scores, labels[index], smoothing=self.label_smoothing)
            t2 = time.perf_counter()
            dscores_bc = self.sc.broadcast(dscores)
            t3 = time.perf_counter()
            records = [r.record for r in forward]
            placed = located_rdd(self.sc, list(zip([r.to_json() for r in records],
                                                   self._preferred_hosts(records))))
            backward = self._run_stage("backward", lambda: placed.map(
                functools.partial(backward_task, job, images_bc, state_bc, dscores_bc))
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
        stats = functools.reduce(add_stats, [r.stats for r in forward])
        back = backward.stats
        timings = self._two_stage_timings((t0, t1, t2, t3, t4), stats, back,
                                          placed.getNumPartitions())
        timings["store_write_s"] = stats["store_write_s"]
        timings.update({key: back[key] for key in (
            "store_read_s", "backward_reads_local", "backward_reads_remote",
            "store_read_bytes_remote")})
        return loss, backward.grads, timings

    def _two_stage_timings(self, stamps, forward, back, partitions):
        """The metrics every two-stage iteration reports.

        stamps: (t0, t1, t2, t3, t4) around the broadcasts, the forward stage,
        the loss and its broadcast, the backward stage; forward / back: the
        stats of the forward / backward tasks, added up.
        """
        t0, t1, t2, t3, t4 = stamps
        self.im2col_backends |= set(forward["im2col"]) | set(back["im2col"])
        return {
            "forward_s": t2 - t1,
            "backward_s": t4 - t3,
            "broadcast_s": (t1 - t0) + (t3 - t2),
            "store_bytes": forward["store_bytes"],
            "task_forward_s": forward["task_forward_s"],
            "task_backward_s": back["task_backward_s"],
            "backward_partitions": partitions,
            "backward_hosts": sorted(set(back["backward_hosts"])),
            "recomputed_batches": back["recomputed_batches"],
            "im2col": sorted(self.im2col_backends),
            "exchange": self.store_kind,
        }

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
        return np.concatenate([r.scores for r in results])

    def clear_intermediates(self):
        """Delete every matrix this run has stored (safe to call twice)."""
        clear_run(self.exchange)

    def clear_quietly(self):
        """clear_intermediates while another error is on its way: that error is the one to report."""
        try:
            self.clear_intermediates()
        except Exception:  # noqa: BLE001
            pass

    def close(self, quietly=False):
        """Delete the run's matrices, stop its heartbeat, drop its broadcasts.
        quietly: while another error is on its way (clean-up errors are not reported)."""
        try:
            if quietly:
                self.clear_quietly()
            else:
                self.clear_intermediates()
        finally:
            if self._heartbeat is not None:
                self._heartbeat.stop()
                self._heartbeat = None
            if self._images is not None:
                self._images[1].unpersist()
                self._images = None
