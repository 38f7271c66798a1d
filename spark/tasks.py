"""Functions that run inside Spark's Python workers.

Top-level and free of driver state: each takes a `Job` (what the run is), the
broadcasts it reads, and one RDD element, and returns plain values. A worker
keeps one network object per network shape between tasks (Spark reuses its
Python workers) and only swaps the parameters in.
"""
import json
import time
from dataclasses import dataclass

import numpy as np

from . import im2col
from .cnn import CNN, chunk_slices
from .exchange import ExchangeConfig, decode_marker, encode_marker, open_marker_store, open_matrix_store
from .preprocess import normalize_images

_NETWORKS = {}


@dataclass(frozen=True)
class Job:
    """What every task of one stage needs besides its own data."""

    network: dict            # CNN keyword arguments: arch, input_shape, dtype, chunk
    exchange: ExchangeConfig
    iteration: int


def _network(spec, params):
    key = json.dumps(spec, sort_keys=True)
    net = _NETWORKS.get(key)
    if net is None:
        net = _NETWORKS[key] = CNN(**spec)
    net.set_params(params)
    return net


def marker_folder(iteration):
    return f"batches/iteration-{iteration:06d}"


def _forward_chunks(net, images, index):
    """Forward over images[index] chunk by chunk.

    Returns scores (n, K), the caches of the whole batch (one dict per layer,
    each array (n, ...), filled chunk by chunk into arrays allocated once), and
    the (layer, name) cache entries that held the network input, which are
    left out: the input is rebuilt from the broadcast images.
    """
    n = len(index)
    scores = caches = None
    input_entries = set()
    for rows in chunk_slices(n, net.chunk):
        x = normalize_images(images[index[rows]], net.dtype)       # (n_chunk, H, W, C)
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


def predict_task(job, images_bc, state_bc, item):
    """item: (batch, offset, count) -> (batch, scores (count, K)). Nothing is stored."""
    batch, offset, count = item
    state = state_bc.value
    net = _network(job.network, state["params"])
    index = state["index"][offset:offset + count]
    scores = np.concatenate([net.forward(normalize_images(images_bc.value[index[rows]], net.dtype))[0]
                             for rows in chunk_slices(count, net.chunk)])
    return batch, scores


def forward_task(job, images_bc, state_bc, item):
    """Forward pass of one batch; its caches go to the matrix store, a marker to HDFS.

    item: (batch, offset, count): the batch covers rows offset..offset+count of
    the iteration's index. Returns (batch, scores (count, K), stats).
    """
    batch, offset, count = item
    started = time.perf_counter()
    state = state_bc.value
    net = _network(job.network, state["params"])
    index = state["index"][offset:offset + count]
    scores, caches, input_entries = _forward_chunks(net, images_bc.value, index)
    computed = time.perf_counter()
    store = open_matrix_store(job.exchange)
    keys, written = [], 0
    for layer, cache in enumerate(caches):
        for name, array in cache.items():
            key = f"iteration-{job.iteration:06d}/batch-{batch:05d}/{layer}-{name}"
            written += store.put(key, array)
            keys.append([layer, name, key])
    marker = encode_marker({"batch": batch, "offset": offset, "count": count, "keys": keys,
                            "inputs": input_entries})
    open_marker_store(job.exchange).write_text(f"{marker_folder(job.iteration)}/batch-{batch:05d}",
                                               marker)
    stats = {"task_forward_s": computed - started, "store_write_s": time.perf_counter() - computed,
             "store_bytes": written, "im2col": [im2col.backend()]}
    return batch, scores, stats


def backward_task(job, images_bc, state_bc, dscores_bc, marker_file):
    """Backward pass of the batch named by a marker file -> (grads, stats).

    marker_file: (path, text) as sc.wholeTextFiles gives it.
    """
    started = time.perf_counter()
    marker = decode_marker(marker_file[1])
    state = state_bc.value
    net = _network(job.network, state["params"])
    store = open_matrix_store(job.exchange)
    caches = [{} for _ in net.layers]
    for layer, name, key in marker["keys"]:
        caches[layer][name] = store.get(key)
    loaded = time.perf_counter()
    offset, count = marker["offset"], marker["count"]
    index = state["index"][offset:offset + count]
    dscores = dscores_bc.value[offset:offset + count]
    grads = {name: np.zeros_like(p) for name, p in net.params().items()}
    for rows in chunk_slices(count, net.chunk):
        chunk_caches = [{name: a[rows] for name, a in cache.items()} for cache in caches]
        if marker["inputs"]:
            x = normalize_images(images_bc.value[index[rows]], net.dtype)
            for layer, name in marker["inputs"]:
                chunk_caches[layer][name] = x
        for name, g in net.backward(dscores[rows], chunk_caches).items():
            grads[name] += g
    stats = {"store_read_s": loaded - started, "task_backward_s": time.perf_counter() - loaded,
             "im2col": [im2col.backend()]}
    return grads, stats


def add_results(a, b):
    """Reduce step: sum gradients and numeric stats, join lists."""
    grads = {name: a[0][name] + b[0][name] for name in a[0]}
    stats = {}
    for key in set(a[1]) | set(b[1]):
        x, y = a[1].get(key), b[1].get(key)
        stats[key] = y if x is None else x if y is None else x + y
    return grads, stats
