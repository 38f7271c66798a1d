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
"""
import functools
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import im2col
from .cnn import CNN, chunk_slices
from .exchange import ExchangeConfig, address_is_local, open_matrix_store
from .preprocess import batch_input
from .recipe import slice_augmentation
from .store import StoreAuthError, StoreError

_NETWORKS = {}


@dataclass(frozen=True)
class Job:
    """What every task of one stage needs besides its own data."""

    network: dict            # CNN keyword arguments: arch, input_shape, dtype, chunk
    exchange: ExchangeConfig
    iteration: int
    driver_host: str = ""    # spark.driver.host: tasks name their node by the address that reaches it


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
        x = batch_input(images, index, rows, augment, net.dtype)   # (n_chunk, H, W, C)
        chunk_scores, chunk_caches = net.forward(x)
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


def _batch_selection(state, offset, count):
    """The images of rows offset..offset+count of the iteration -> (index, augmentation draw)."""
    rows = slice(offset, offset + count)
    return state["index"][rows], slice_augmentation(state.get("augment"), rows)


def predict_task(job, images_bc, state_bc, item):
    """item: (batch, offset, count) -> PredictResult. Nothing is stored."""
    batch, offset, count = item
    state = state_bc.value
    net = _network(job.network, state["params"])
    index = state["index"][offset:offset + count]
    scores = np.concatenate([net.forward(batch_input(images_bc.value, index, rows,
                                                     dtype=net.dtype))[0]
                             for rows in chunk_slices(count, net.chunk)])
    return PredictResult(batch, scores)


def _cache_key(job, batch, layer, name):
    return f"iteration-{job.iteration:06d}/batch-{batch:05d}/{layer}-{name}"


def forward_task(job, images_bc, state_bc, item):
    """Forward pass of one batch; its caches go to the matrix store -> ForwardResult.

    item: (batch, offset, count): the batch covers rows offset..offset+count of
    the iteration's index.
    """
    batch, offset, count = item
    started = time.perf_counter()
    state = state_bc.value
    net = _network(job.network, state["params"])
    index, augment = _batch_selection(state, offset, count)
    scores, caches, input_entries = _forward_chunks(net, images_bc.value, index, augment)
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


def backward_task(job, images_bc, state_bc, dscores_bc, record_json):
    """Backward pass of the batch a forward task described -> BackwardResult.

    record_json: a BatchRecord as JSON. When its matrices are missing or
    incomplete, the batch's forward pass is recomputed here instead.
    """
    started = time.perf_counter()
    record = BatchRecord.from_json(record_json)
    state = state_bc.value
    net = _network(job.network, state["params"])
    offset, count = record.offset, record.count
    index, augment = _batch_selection(state, offset, count)
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
        _, caches, inputs = _forward_chunks(net, images_bc.value, index, augment)
        recomputed, local, nbytes = 1, None, 0
    loaded = time.perf_counter()
    dscores = dscores_bc.value[offset:offset + count]
    grads = {name: np.zeros_like(p) for name, p in net.params().items()}
    for rows in chunk_slices(count, net.chunk):
        chunk_caches = [{name: a[rows] for name, a in cache.items()} for cache in caches]
        if inputs:
            x = batch_input(images_bc.value, index, rows, augment, net.dtype)
            for layer, name in inputs:
                chunk_caches[layer][name] = x
        for name, g in net.backward(dscores[rows], chunk_caches).items():
            grads[name] += g
    stats = {"store_read_s": loaded - started, "task_backward_s": time.perf_counter() - loaded,
             "im2col": [im2col.backend()], "recomputed_batches": recomputed,
             "backward_reads_local": int(local is True), "backward_reads_remote": int(local is False),
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
