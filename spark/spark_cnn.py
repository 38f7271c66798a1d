"""The CNN trained on Spark, with layer matrices exchanged through HDFS.

`SparkCNN` holds the one driver loop of every iteration-per-stage exchange
(`loss_and_gradients`); the exchanges differ only in its hooks:

1. broadcast the parameters and the iteration's image index (the images and
   labels are broadcast once per run);
2. `forward_stage`: one task per batch runs it forward and keeps what the
   backward pass needs: here in the matrix store (HDFS files; Redis in
   spark/locality_cnn.py), in Spark's block manager for `--exchange spark`;
   the tasks return their scores (`--exchange none` runs forward, loss and
   backward in this one stage, spark/memory_cnn.py);
3. the driver computes the softmax loss and its gradient over all scores and
   broadcasts the gradient;
4. `backward_stage`: one task per batch, placed where its forward task ran,
   returns the summed gradients; a task whose matrices are gone recomputes them;
5. the driver updates the weights; `release` drops the iteration's matrices.

The timings of an iteration are built in one place (`_timings`). The first
layer's input is never stored: backward tasks rebuild it from the broadcast
images. While the run stores anything it keeps a heartbeat
(spark/storage/runs.py), and its first iteration removes what runs whose
driver died left behind. `--exchange allreduce` (spark/allreduce_cnn.py)
runs whole segments instead and uses only the broadcasts, predict and the
stage bookkeeping of this class.
"""
import functools
import sys
import time
import uuid

import numpy as np

from .cnn import CNN
from .loss import softmax_loss
from .recipe import split_batches
from .spark_context import cancel_and_wait, executor_hosts, located_rdd
from .storage.exchange import clear_run, exchange_config, note_stalls, open_matrix_store
from .storage.runs import Heartbeat, remove_dead_runs
from .tasks import Job, add_results, add_stats, backward_task, forward_task, predict_task

# Broadcasts of image sets kept at once: the training set and the test set of
# --eval-every, so that neither is sent again after the other was used.
KEPT_DATA = 2
# Metrics of the tasks' stats that a row reports as they are.
_STORE_STATS = ("store_write_s", "store_read_s", "backward_reads_local", "backward_reads_remote",
                "store_read_bytes_remote")


def new_run_id():
    """A name no other run shares: time plus randomness, safe in keys and paths."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:10]


class SparkCNN(CNN):
    """CNN whose forward and backward passes run as Spark tasks, one per batch."""

    store_kind = "hdfs"      # the --exchange mode
    stage_names = ("forward", "backward")

    def __init__(self, sc, settings, batches, run_id=None, **options):
        super().__init__(**options)
        if int(batches) < 1:
            raise ValueError("the number of batches must be at least 1")
        self.sc, self.batches = sc, int(batches)
        self.run_id = run_id or new_run_id()
        self.exchange = self.exchange_settings(settings)
        self._data = []                  # [(images array, broadcast of (images, labels))]
        self._heartbeat = None
        self._driver_host = sc.getConf().get("spark.driver.host", "")
        self.im2col_backends = set()

    # ----- what every Spark exchange shares ---------------------------------
    def exchange_settings(self, settings):
        """What the tasks need to reach the run's matrix store (an ExchangeConfig)."""
        return exchange_config(self.store_kind, self.run_id, settings)

    def network_spec(self):
        """CNN keyword arguments the tasks build their network from (one chunk at a time)."""
        return dict(arch=self.arch, input_shape=list(self.input_shape), dtype=self.dtype.name,
                    exchange_dtype=self.exchange_dtype.name, chunk=self.chunk, threads=1,
                    label_smoothing=self.label_smoothing, input_stats=self.input_stats)

    def job(self):
        return Job(network=self.network_spec(), exchange=self.exchange,
                   iteration=self.iteration, driver_host=self._driver_host)

    def _broadcast_data(self, images, labels=None):
        """The broadcast of (images, labels) for this image set: sent once, kept for the
        run (the KEPT_DATA sets used last). Lazy images (a Parquet source's) travel as
        their small description: each task reads the rows it needs from the source."""
        for kept, broadcast in self._data:
            if kept is images:
                return broadcast
        sent = np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images
        broadcast = self.sc.broadcast((sent, None if labels is None else np.asarray(labels)))
        self._data.append((images, broadcast))
        if len(self._data) > KEPT_DATA:
            self._data.pop(0)[1].unpersist()
        return broadcast

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

    def _batch_stage(self, stage, task, job, data_bc, state_bc, items):
        """One task per (batch, offset, count) item -> the tasks' results in batch order."""
        rdd = self.sc.parallelize(items, len(items)).map(
            functools.partial(task, job, data_bc, state_bc))
        results = self._run_stage(stage, rdd.collect)
        return sorted(results, key=lambda r: r.batch)

    # ----- the driver loop of an iteration ----------------------------------
    def loss_and_gradients(self, images, labels, index=None, progress=None, augment=None):
        n = len(labels) if index is None else len(index)
        index = np.arange(n) if index is None else np.asarray(index)
        items = split_batches(n, self.batches)
        self._start_storing()
        job = self.job()
        t0 = time.perf_counter()
        data_bc = self._broadcast_data(images, labels)
        state_bc = self.sc.broadcast({"params": self.params(), "index": index, "augment": augment})
        t1 = time.perf_counter()
        dscores_bc = None
        try:
            first = self._run_stage(self.stage_names[0], lambda: self.forward_stage(
                job, data_bc, state_bc, items))
            if len(self.stage_names) == 1:                  # loss and gradients in one stage
                loss, grads, forward, back = first.loss, first.grads, first.stats, first.stats
                t2 = t3 = t4 = time.perf_counter()
            else:
                scores = np.concatenate([r.scores for r in first])                  # (N, K)
                loss, dscores = softmax_loss(scores, labels[index], smoothing=self.label_smoothing)
                t2 = time.perf_counter()
                dscores_bc = self.sc.broadcast(dscores)
                t3 = time.perf_counter()
                result = self._run_stage(self.stage_names[1], lambda: self.backward_stage(
                    job, data_bc, state_bc, dscores_bc, first))
                t4 = time.perf_counter()
                grads = result.grads
                forward, back = functools.reduce(add_stats, [r.stats for r in first]), result.stats
        except BaseException:
            self.release(quietly=True)
            raise
        finally:
            for broadcast in (state_bc, dscores_bc):
                if broadcast is not None:
                    broadcast.unpersist()
        self.release()
        if progress is not None:
            progress.update(n)
        return loss, grads, self._timings((t0, t1, t2, t3, t4), forward, back, len(items))

    def _timings(self, stamps, forward, back, partitions):
        """The metrics of an iteration.

        stamps: (t0, t1, t2, t3, t4) around the broadcasts, the first stage,
        the loss and its broadcast, the backward stage (t2 = t3 = t4 when the
        first stage did everything: its wall time is then split as the tasks'
        own forward and backward times); forward / back: the stats of the
        forward / backward tasks, added up.
        """
        t0, t1, t2, t3, t4 = stamps
        self.im2col_backends |= set(forward["im2col"]) | set(back["im2col"])
        if t2 == t4:                                       # one stage
            busy = back["task_forward_s"] + back["task_backward_s"]
            share = back["task_forward_s"] / busy if busy else 0.5
            forward_s, backward_s = (t2 - t1) * share, (t2 - t1) * (1 - share)
        else:
            forward_s, backward_s = t2 - t1, t4 - t3
        timings = {
            "forward_s": forward_s,
            "backward_s": backward_s,
            "broadcast_s": (t1 - t0) + (t3 - t2),
            "store_bytes": forward.get("store_bytes", 0),
            "task_forward_s": forward["task_forward_s"],
            "task_backward_s": back["task_backward_s"],
            "backward_partitions": partitions,
            "backward_hosts": sorted(set(back["backward_hosts"])),
            "recomputed_batches": back.get("recomputed_batches", 0),
            "im2col": sorted(self.im2col_backends),
            "exchange": self.store_kind,
        }
        timings.update({key: {**forward, **back}[key] for key in _STORE_STATS
                        if key in forward or key in back})
        return timings

    # ----- the hooks: the matrix store (HDFS here, Redis in LocalityCNN) -------
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

    def forward_stage(self, job, data_bc, state_bc, items):
        """Each batch forward, its matrices stored -> its ForwardResults, in batch order."""
        results = self.sc.parallelize(items, len(items)).map(
            functools.partial(forward_task, job, data_bc, state_bc)).collect()
        return sorted(results, key=lambda r: r.batch)

    def backward_stage(self, job, data_bc, state_bc, dscores_bc, forward):
        """Each batch backward on the node that ran its forward task -> BackwardResult (summed)."""
        records = [r.record for r in forward]
        placed = located_rdd(self.sc, list(zip([r.to_json() for r in records],
                                               self._preferred_hosts(records))))
        return placed.map(functools.partial(backward_task, job, data_bc, state_bc, dscores_bc)
                          ).reduce(add_results)

    def _preferred_hosts(self, records):
        """For each batch record, the executor host that ran its forward task (None if unknown)."""
        known = executor_hosts(self.sc)
        return [next((h for h in record.hosts if h in known), None) for record in records]

    def release(self, quietly=False):
        """After an iteration (`quietly`: while another error is on its way): delete
        every matrix this run has stored."""
        if quietly:
            self.clear_quietly()
        else:
            self.clear_intermediates()

    # ----- prediction and the end -------------------------------------------
    def predict_scores(self, images, progress=None):
        items = split_batches(len(images), self.batches)
        data_bc = self._broadcast_data(images)
        state_bc = self.sc.broadcast({"params": self.params(), "index": np.arange(len(images))})
        try:
            results = self._batch_stage("predict", predict_task, self.job(), data_bc, state_bc,
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
        """clear_intermediates while another error is on its way.

        That error is the one to report, so a failure here is dropped.
        """
        try:
            self.clear_intermediates()
        except Exception:  # noqa: BLE001 - the error already on its way is the one to report
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
            for _, broadcast in self._data:
                broadcast.unpersist()
            self._data = []
