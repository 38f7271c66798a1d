"""Functions that run inside Spark's Python workers.

Top-level and free of driver state: each takes a `Job` (what the run is), the
broadcasts it reads, and one RDD element, and returns plain values. A worker
keeps one network object per network shape between tasks (Spark reuses its
Python workers) and only swaps the parameters in.

A forward task stores its batch's matrices and returns a `ForwardResult`: the
scores, and a `BatchRecord` (where the batch is in the iteration, the keys of
its matrices, the names of the node it ran on). The driver gives each record
to one backward task, placed on that node. A backward task whose matrices are
gone (a node lost, Redis flushed or restarted, HDFS files deleted) recomputes
its batch's forward pass from the broadcast weights and images, which gives
the same numbers, and counts it in `recomputed_batches`.

Without a store: the `spark` exchange keeps each batch's forward pass as
`KeptChunk`s, the elements of a persisted RDD (`kept_forward_task`), and sends
the driver only its `BatchScores` through an accumulator (`ScoresByBatch`);
`kept_backward_task` maps over the same RDD. The `none` exchange runs
forward, loss and backward in one task (`fused_task`, the local trainer's
CNN.loss_and_gradients on the batch's rows) and returns a `LossResult`.

Every task reads the run's images (and labels) from one broadcast of
(images, labels), sent once per run.
"""
import functools
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from pyspark.accumulators import AccumulatorParam

from . import im2col
from .cnn import CNN, chunk_slices
from .data.preprocess import batch_input
from .recipe import slice_augmentation
from .storage.exchange import ExchangeConfig, address_is_local, open_matrix_store
from .storage.store import StoreAuthError, StoreError
from .workers import prepare_worker

_NETWORKS = {}


@dataclass(frozen=True)
class Job:
    """What every task of one stage needs besides its own data."""

    network: dict            # CNN keyword arguments: arch, input_shape, the dtypes, chunk
    exchange: ExchangeConfig
    iteration: int
    # spark.driver.host: tasks name their node by the address that reaches it
    driver_host: str = ""


@dataclass
class BatchRecord:
    """One batch of an iteration, as the forward stage left it for the backward stage."""

    batch: int
    offset: int              # the batch is rows offset..offset+count of the iteration's index
    count: int
    keys: list               # [layer, cache name, store key] of every stored matrix
    inputs: list             # [layer, cache name] entries that held the network input (not stored)
    hosts: list = field(default_factory=list)   # names of the node that ran the forward task

    def to_json(self):
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


@dataclass
class PredictResult:
    batch: int
    scores: np.ndarray       # (count, K)


@dataclass
class ForwardResult:
    batch: int
    scores: np.ndarray       # (count, K)
    record: BatchRecord
    stats: dict


@dataclass
class BackwardResult:
    grads: dict              # parameter name -> summed gradient of the batches
    stats: dict              # numbers are summed, lists joined (see add_results)


@functools.lru_cache(maxsize=8)
def node_names(driver_host=""):
    """Names this node may have in Spark's eyes: SPARK_LOCAL_HOSTNAME, the address
    it reaches the driver from, its host names. The first is the one to report.
    Worked out once per worker process (getfqdn may ask DNS)."""
    names = []
    if os.environ.get("SPARK_LOCAL_HOSTNAME"):
        names.append(os.environ["SPARK_LOCAL_HOSTNAME"])
    if driver_host:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((driver_host, 9))        # no packet is sent: this only picks a route
                names.append(probe.getsockname()[0])
        except OSError:
            pass
    for name in (socket.gethostname(), socket.getfqdn()):
        names.append(name)
    return tuple(dict.fromkeys(n for n in names if n))


def _network(spec, params):
    prepare_worker()
    key = json.dumps(spec, sort_keys=True)
    net = _NETWORKS.get(key)
    if net is None:
        net = _NETWORKS[key] = CNN(**spec)
    net.set_params(params)
    return net


def _forward_chunks(net, images, index, augment=None):
    """Forward over images[index] (cropped and flipped by `augment`) chunk by chunk.

    Returns scores (n, K), the caches of the whole batch (one dict per layer,
    each array (n, ...), filled chunk by chunk into arrays allocated once), and
    the (layer, name) cache entries that held the network input, which are
    left out: the input is rebuilt from the broadcast images.
    """
    n = len(index)
    scores = caches = None
    input_entries = set()
    for rows in chunk_slices(n, net.chunk):
        x = batch_input(images, index, rows, augment, net.dtype,
                        net.input_stats)                         # (n_chunk, H, W, C)
        chunk_scores, chunk_caches = net.forward_kept(x)           # in net.exchange_dtype
        if caches is None:
            scores = np.empty((n,) + chunk_scores.shape[1:], chunk_scores.dtype)
            input_entries = {(layer, name) for layer, cache in enumerate(chunk_caches)
                             for name, array in cache.items() if array is x}
            caches = [{name: np.empty((n,) + a.shape[1:], a.dtype) for name, a in cache.items()
                       if (layer, name) not in input_entries}
                      for layer, cache in enumerate(chunk_caches)]
        scores[rows] = chunk_scores
        for cache, chunk_cache in zip(caches, chunk_caches):
            for name, array in cache.items():
                array[rows] = chunk_cache[name]
    return scores, caches, sorted(input_entries)


def _open_batch(job, state_bc, offset, count):
    """What a task on rows offset..offset+count of the iteration needs -> (the
    broadcast state, the network with its parameters, index, augmentation draw)."""
    state = state_bc.value
    net = _network(job.network, state["params"])
    rows = slice(offset, offset + count)
    return state, net, state["index"][rows], slice_augmentation(state.get("augment"), rows)


def _backward_chunks(net, images, index, augment, dscores, caches, inputs):
    """Backward over a batch chunk by chunk -> gradients summed over its images.

    dscores: (n, K); caches: one dict per layer, arrays (n, ...), as
    _forward_chunks left them; inputs: the (layer, name) entries that held the
    network input, rebuilt here from the images.
    """
    grads = {name: np.zeros_like(p) for name, p in net.params().items()}
    for rows in chunk_slices(len(dscores), net.chunk):
        chunk_caches = [{name: a[rows] for name, a in cache.items()} for cache in caches]
        if inputs:
            x = batch_input(images, index, rows, augment, net.dtype,
                            net.input_stats)                     # (n_chunk, H, W, C)
            for layer, name in inputs:
                chunk_caches[layer][name] = x
        for name, g in net.backward(dscores[rows], chunk_caches).items():
            grads[name] += g
    return grads


def predict_task(job, data_bc, state_bc, item):
    """item: (batch, offset, count) -> PredictResult. Nothing is stored."""
    batch, offset, count = item
    state = state_bc.value
    net = _network(job.network, state["params"])
    index = state["index"][offset:offset + count]
    scores = np.concatenate([net.forward(batch_input(data_bc.value[0], index, rows,
                                                     dtype=net.dtype, stats=net.input_stats))[0]
                             for rows in chunk_slices(count, net.chunk)])
    return PredictResult(batch, scores)


def _cache_key(job, batch, layer, name):
    return f"iteration-{job.iteration:06d}/batch-{batch:05d}/{layer}-{name}"


def forward_task(job, data_bc, state_bc, item):
    """Forward pass of one batch; its caches go to the matrix store -> ForwardResult.

    item: (batch, offset, count): the batch covers rows offset..offset+count of
    the iteration's index.
    """
    batch, offset, count = item
    started = time.perf_counter()
    state, net, index, augment = _open_batch(job, state_bc, offset, count)
    scores, caches, input_entries = _forward_chunks(net, data_bc.value[0], index, augment)
    computed = time.perf_counter()
    store = open_matrix_store(job.exchange)
    keys, written = [], 0
    for layer, cache in enumerate(caches):
        for name, array in cache.items():
            key = _cache_key(job, batch, layer, name)
            written += store.put(key, array)
            keys.append([layer, name, key])
    record = BatchRecord(batch=batch, offset=offset, count=count, keys=keys,
                         inputs=[list(e) for e in input_entries],
                         hosts=list(node_names(job.driver_host)))
    stats = {"task_forward_s": computed - started, "store_write_s": time.perf_counter() - computed,
             "store_bytes": written, "im2col": [im2col.backend()]}
    return ForwardResult(batch, scores, record, stats)


def _read_caches(net, store, record):
    """The batch's stored caches, one dict per layer -> (caches, read from this node?, bytes).

    Raises StoreError when a matrix is missing or does not have the batch's rows.
    """
    caches = [{} for _ in net.layers]
    local, nbytes = True, 0
    for layer, name, key in record.keys:
        array = store.get(key)
        if array.shape[:1] != (record.count,):
            raise StoreError(f"{key} holds {array.shape[0] if array.ndim else 0} rows, "
                             f"expected {record.count}")
        caches[layer][name] = array
        nbytes += array.nbytes
        where = getattr(store, "last_get_address", None)     # Redis address or DataNode host
        local = local and bool(where) and address_is_local(where)
    return caches, local, nbytes


def backward_task(job, data_bc, state_bc, dscores_bc, record_json):
    """Backward pass of the batch a forward task described -> BackwardResult.

    record_json: a BatchRecord as JSON. When its matrices are missing or
    incomplete, the batch's forward pass is recomputed here instead.
    """
    started = time.perf_counter()
    record = BatchRecord.from_json(record_json)
    offset, count = record.offset, record.count
    state, net, index, augment = _open_batch(job, state_bc, offset, count)
    store = open_matrix_store(job.exchange)
    recomputed = 0
    try:
        caches, local, nbytes = _read_caches(net, store, record)
        inputs = record.inputs
    except StoreAuthError:
        raise
    except StoreError as e:
        print(f"spark-cnn: iteration {job.iteration + 1} batch {record.batch}: its matrices are "
              f"gone ({e}); recomputing its forward pass", file=sys.stderr, flush=True)
        _, caches, inputs = _forward_chunks(net, data_bc.value[0], index, augment)
        recomputed, local, nbytes = 1, None, 0
    loaded = time.perf_counter()
    dscores = dscores_bc.value[offset:offset + count]
    grads = _backward_chunks(net, data_bc.value[0], index, augment, dscores, caches, inputs)
    stats = {"store_read_s": loaded - started, "task_backward_s": time.perf_counter() - loaded,
             "im2col": [im2col.backend()], "recomputed_batches": recomputed,
             "backward_reads_local": int(local is True),
             "backward_reads_remote": int(local is False),
             "store_read_bytes_remote": nbytes if local is False else 0,
             "backward_hosts": list(node_names(job.driver_host)[:1])}
    return BackwardResult(grads, stats)


def add_stats(a, b):
    """Numbers summed, lists joined, key by key."""
    stats = {}
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        stats[key] = y if x is None else x if y is None else x + y
    return stats


def add_results(a, b):
    """Reduce step over BackwardResults: sum gradients and stats."""
    return BackwardResult({name: a.grads[name] + b.grads[name] for name in a.grads},
                          add_stats(a.stats, b.stats))


# ----- exchanges without a store: `spark` (Spark's block manager) and `none` -----

@dataclass
class KeptChunk:
    """Up to `chunk` images of a batch's forward pass, kept by Spark as one element of
    a persisted RDD. Small elements let Spark spill a partition to disk piece by piece
    instead of holding a batch's caches (tens to hundreds of MB) as one array."""

    batch: int
    offset: int              # the batch is rows offset.. of the iteration's index
    start: int               # this chunk is rows start..stop of the batch
    stop: int
    caches: list             # one dict per layer, arrays (stop - start, ...); the input left out
    inputs: list             # (layer, cache name) entries that held the network input
    stage: int               # the Spark stage that computed it: the backward one if recomputed


@dataclass
class BatchScores:
    """What the driver gets of a batch's forward pass: its scores, not its caches."""

    batch: int
    scores: np.ndarray       # (count, K)
    stats: dict


class ScoresByBatch(AccumulatorParam):
    """Accumulator of {batch: BatchScores}. A batch computed twice (a retried
    task, a partition recomputed from lineage) gives the same entry again, so
    repeated updates change nothing."""

    def zero(self, value):
        return {}

    def addInPlace(self, a, b):
        a.update(b)
        return a


@dataclass
class LossResult:
    """Loss and gradients of some batches, both already divided by the minibatch size."""

    loss: float
    grads: dict              # parameter name -> summed gradient
    stats: dict


def _stage_id():
    """The Spark stage running this code (-1 outside a Spark task)."""
    from pyspark import TaskContext
    context = TaskContext.get()
    return context.stageId() if context is not None else -1


def _cache_bytes(caches):
    return sum(a.nbytes for cache in caches for a in cache.values())


def kept_forward_task(job, data_bc, state_bc, scores_acc, items):
    """mapPartitions over [(batch, offset, count)] -> a KeptChunk per chunk of the batch,
    persisted by Spark (and recomputed by this same function when a block is lost);
    the batch's BatchScores go to the driver through `scores_acc` (a ScoresByBatch
    accumulator) once its last chunk is out."""
    for batch, offset, count in items:
        started = time.perf_counter()
        state, net, index, augment = _open_batch(job, state_bc, offset, count)
        stage, kept_bytes, scores = _stage_id(), 0, None
        for rows in chunk_slices(count, net.chunk):
            x = batch_input(data_bc.value[0], index, rows, augment, net.dtype,
                            net.input_stats)                            # (n_chunk, H, W, C)
            chunk_scores, caches = net.forward_kept(x)
            if scores is None:
                scores = np.empty((count,) + chunk_scores.shape[1:], chunk_scores.dtype)
            scores[rows] = chunk_scores
            inputs = [[layer, name] for layer, cache in enumerate(caches)
                      for name, array in cache.items() if array is x]
            for layer, name in inputs:
                del caches[layer][name]
            kept_bytes += _cache_bytes(caches)
            yield KeptChunk(batch, offset, rows.start, rows.stop, caches, inputs, stage)
        stats = {"task_forward_s": time.perf_counter() - started, "store_bytes": kept_bytes,
                 "im2col": [im2col.backend()]}
        scores_acc.add({batch: BatchScores(batch, scores, stats)})


def kept_backward_task(job, data_bc, state_bc, dscores_bc, chunks):
    """mapPartitions over one batch's KeptChunks -> [BackwardResult]."""
    grads, started, recomputed, stage = None, time.perf_counter(), 0, _stage_id()
    for kept in chunks:
        state, net, index, augment = _open_batch(job, state_bc, kept.offset,
                                                 kept.stop)            # rows 0..stop of the batch
        rows = slice(kept.start, kept.stop)
        chunk_caches = kept.caches
        if kept.inputs:
            x = batch_input(data_bc.value[0], index, rows, augment, net.dtype,
                            net.input_stats)
            for layer, name in kept.inputs:
                chunk_caches[layer][name] = x
        dscores = dscores_bc.value[kept.offset + kept.start:kept.offset + kept.stop]
        chunk_grads = net.backward(dscores, chunk_caches)
        if grads is None:
            grads = chunk_grads
        else:
            for name, g in chunk_grads.items():
                grads[name] += g
        recomputed = recomputed or int(kept.stage == stage)      # made in this very stage
    if grads is None:
        return
    stats = {"task_backward_s": time.perf_counter() - started, "im2col": [im2col.backend()],
             "recomputed_batches": recomputed,
             "backward_hosts": list(node_names(job.driver_host)[:1])}
    yield BackwardResult(grads, stats)


def fused_task(job, data_bc, state_bc, item):
    """Forward, softmax loss and backward of one batch -> LossResult.

    item: (batch, offset, count). The loss and gradients are those of the
    local trainer's chunks (CNN.loss_and_gradients), normalised by the
    minibatch size N, so the tasks' results add up to the minibatch's.
    """
    batch, offset, count = item
    state, net, index, augment = _open_batch(job, state_bc, offset, count)
    images, labels = data_bc.value
    loss, grads, timings = net.loss_and_gradients(images, labels, index, None, augment,
                                                  normalizer=len(state["index"]))
    stats = {"task_forward_s": timings["forward_s"], "task_backward_s": timings["backward_s"],
             "im2col": [im2col.backend()], "backward_hosts": list(node_names(job.driver_host)[:1])}
    return LossResult(loss, grads, stats)


def add_loss_results(a, b):
    """Reduce step over LossResults: sum losses, gradients and stats."""
    return LossResult(a.loss + b.loss, {name: a.grads[name] + b.grads[name] for name in a.grads},
                      add_stats(a.stats, b.stats))
