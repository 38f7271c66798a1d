"""One task of an all-reduce segment (--exchange allreduce), run inside Spark's Python worker.

A segment is one barrier stage of K tasks that trains many iterations. Task
r holds the whole uint8 training set (a broadcast sent once per run: its
share of each minibatch is drawn from all of them), the parameters and the
velocities. For every iteration it computes the loss and the gradients of
its share of the minibatch (rows split_batches(M, K)[r] of the same global
sequence of minibatches, crops and flips as the local trainer), the tasks sum
them with an all-reduce (spark.allreduce), and every task applies the same
update, so all tasks hold bit-identical parameters throughout.

With average_every H > 1 a task instead takes H steps on its own share, then
the tasks average their parameters and velocities (weighted by share size).

The segment ends at `end`, or, when the driver gave it a time, at the first
iteration (a multiple of H) after that many seconds: rank 0 decides and its
flag travels in the sum, so every task stops at the same iteration. A task
returns one SegmentResult: where it stopped, a digest of its parameters and
velocities (the driver checks that all are equal), and, from rank 0, the
parameters, the velocities and every iteration's metrics row.
"""
import hashlib
import socket
import time
from dataclasses import dataclass, field

import numpy as np

from . import im2col
from .allreduce import Mesh
from .cnn import CNN
from .coordinator import CoordinatorClient
from .recipe import iteration_inputs, slice_augmentation, split_batches
from .workers import prepare_worker


@dataclass(frozen=True)
class SegmentJob:
    """What every task of one segment attempt needs besides the broadcasts."""

    network: dict            # CNN keyword arguments (architecture, dtypes, optimiser, chunk)
    run: object              # the run's spark.config.RunConfig: its recipe
    start: int               # the first (0-based) iteration
    end: int                 # the segment ends before this iteration at the latest ...
    seconds: float = None    # ... or after this long (None: at `end`)
    size: int = 1            # K, the tasks of the segment
    coordinator: str = ""    # the driver's Coordinator address
    timeout: float = 30.0    # SPARK_CNN_IO_TIMEOUT
    driver_host: str = ""
    token: bytes = field(default=b"", repr=False)   # the attempt's secret


@dataclass
class SegmentResult:
    rank: int
    host: str
    iteration: int           # the iterations done when the task stopped
    digest: str              # of its parameters and velocities
    diverged: bool = False
    rows: list = None        # rank 0: one metrics row per iteration
    params: dict = None      # rank 0: name -> array
    velocity: dict = None    # rank 0


def address_towards(host):
    """This node's address on the route to `host` (no packet is sent)."""
    if not host:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))
        return probe.getsockname()[0]


def digest(net):
    """A digest of the parameters and velocities, bit for bit."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(net.velocity):
        h.update(np.ascontiguousarray(net.params()[name]).tobytes())
        h.update(np.ascontiguousarray(net.velocity[name]).tobytes())
    return h.hexdigest()


class _Flat:
    """Packs named arrays and a few scalars into one 1-d array, and back."""

    def __init__(self, shapes, dtype, scalars):
        self.names = sorted(shapes)
        self.shapes = [shapes[n] for n in self.names]
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.dtype, self.scalars = np.dtype(dtype), int(scalars)
        self.size = int(self.offsets[-1]) + self.scalars

    def pack(self, groups, scalars, weight=None):
        """groups: dicts of arrays packed one after the other; scalars: numbers."""
        out = np.empty(self.size * len(groups) - self.scalars * (len(groups) - 1), self.dtype)
        at = 0
        for arrays in groups:
            for name in self.names:
                a = arrays[name].ravel()
                if weight is None:
                    out[at:at + a.size] = a
                else:
                    np.multiply(a, weight, out=out[at:at + a.size])
                at += a.size
        out[at:] = scalars
        return out

    def unpack(self, flat, groups):
        """-> ([dict per group], scalars (array))."""
        out, at = [], 0
        for _ in range(groups):
            arrays = {}
            for name, shape in zip(self.names, self.shapes):
                size = int(np.prod(shape))
                arrays[name] = flat[at:at + size].reshape(shape)
                at += size
            out.append(arrays)
        return out, flat[at:]


def segment_task(job, data_bc, state_bc, partition):
    """The barrier task of one rank -> [SegmentResult]. data_bc: (images, labels)
    broadcast once per run; state_bc: {"params", "velocity"} at the segment's start."""
    from pyspark import BarrierTaskContext

    for _ in partition:
        pass
    context = BarrierTaskContext.get()
    rank = context.partitionId()
    prepare_worker()
    images, labels = data_bc.value
    state = state_bc.value
    net = CNN(**job.network, threads=max(1, context.cpus()))
    net.set_params(state["params"])
    for name, v in state["velocity"].items():
        net.velocity[name][...] = v
    net.iteration = job.start
    host = address_towards(job.driver_host)
    with CoordinatorClient(job.coordinator, job.token, rank, job.timeout) as client, \
            Mesh(rank, job.size, job.token, job.timeout, host) as mesh:
        mesh.connect(client.rendezvous(mesh.address, host))
        if job.run.average_every > 1:
            rows, diverged = _train_averaging(net, mesh, client, job, images, labels, rank)
        else:
            rows, diverged = _train_summing(net, mesh, client, job, images, labels, rank)
    result = SegmentResult(rank=rank, host=host, iteration=net.iteration, digest=digest(net),
                           diverged=diverged)
    if rank == 0:
        result.rows = rows
        result.params = {name: p.copy() for name, p in net.params().items()}
        result.velocity = net.velocity
    return [result]


def _share(job, rank, iteration):
    """This task's rows of an iteration's minibatch -> (index, augment, lr, count)."""
    run = job.run
    _, offset, count = split_batches(run.batch_size, job.size)[rank]
    index, augment, lr = iteration_inputs(run, iteration)
    rows = slice(offset, offset + count)
    share = np.arange(offset, offset + count) if index is None else index[rows]
    return share, slice_augmentation(augment, rows), lr, count


def _row(job, net, iteration, loss, lr, seconds, t, **parts):
    """The metrics row of a finished iteration (rank 0): seconds, its wall time; t,
    the seconds since the segment's loop began when it ended; parts: timings."""
    m = job.run.batch_size
    return dict(iteration=iteration + 1, loss=float(loss), lr=lr, exchange="allreduce",
                exchange_dtype=net.exchange_dtype.name, images=m, images_per_s=m / seconds,
                tasks=job.size, average_every=job.run.average_every,
                im2col=[im2col.backend()], t=t, **parts)


def _time_is_up(job, started):
    return job.seconds is not None and time.perf_counter() - started >= job.seconds


def _train_summing(net, mesh, client, job, images, labels, rank):
    """H = 1: the tasks sum their gradients every iteration -> (rows, diverged)."""
    flat = _Flat({name: p.shape for name, p in net.params().items()}, net.dtype, scalars=2)
    m, rows, started = job.run.batch_size, [], time.perf_counter()
    for i in range(job.start, job.end):
        began = time.perf_counter()
        index, augment, lr, count = _share(job, rank, i)
        client.progress.start(i, count)
        loss, grads, timings = net.loss_and_gradients(images, labels, index, client.progress,
                                                      augment, normalizer=m)
        stop = 1.0 if rank == 0 and _time_is_up(job, started) else 0.0
        computed = time.perf_counter()
        mesh.bytes_sent = 0
        total = mesh.allreduce(flat.pack([grads], [loss, stop]), i)          # (size,)
        summed = time.perf_counter()
        (grads,), (loss, stop) = flat.unpack(total, 1)
        loss = net.regularize(float(loss), grads)
        net.update(grads, lr)
        if rank == 0:
            now = time.perf_counter()
            row = _row(job, net, i, loss, lr, now - began, now - started, **timings,
                       allreduce_s=summed - computed, update_s=now - summed,
                       allreduce_bytes=mesh.bytes_sent)
            rows.append(row)
            client.send_row(row)
        if not np.isfinite(loss):            # NaN or inf in a parameter: in the next loss
            return rows, True
        if stop > 0:
            break
    return rows, not all(np.all(np.isfinite(p)) for p in net.params().values())


def _train_averaging(net, mesh, client, job, images, labels, rank):
    """H > 1: H local steps on this task's share, then the parameters and velocities
    averaged (weighted by share size) -> (rows, diverged)."""
    every, m = job.run.average_every, job.run.batch_size
    shapes = {name: p.shape for name, p in net.params().items()}
    losses, pending, rows, started = [], [], [], time.perf_counter()
    flat = None
    for i in range(job.start, job.end):
        began = time.perf_counter()
        index, augment, lr, count = _share(job, rank, i)
        client.progress.start(i, count)
        loss, grads, timings = net.loss_and_gradients(images, labels, index, client.progress,
                                                      augment)
        loss = net.regularize(loss, grads)
        t0 = time.perf_counter()
        net.update(grads, lr)
        timings["update_s"] = time.perf_counter() - t0
        losses.append(loss)
        now = time.perf_counter()
        pending.append((i, lr, timings, now - began, now - started))
        last = i + 1 == job.end or (i + 1) % every == 0
        if not last:
            continue
        stop = 1.0 if rank == 0 and _time_is_up(job, started) else 0.0
        weight = count / m
        if flat is None or flat.scalars != len(losses) + 1:
            flat = _Flat(shapes, net.dtype, scalars=len(losses) + 1)
        t0 = time.perf_counter()
        mesh.bytes_sent = 0
        total = mesh.allreduce(flat.pack([net.params(), net.velocity],
                                         [loss * weight for loss in losses] + [stop],
                                         weight=weight), i)
        averaged = time.perf_counter() - t0
        (params, velocity), scalars = flat.unpack(total, 2)
        net.set_params(params)
        for name, v in velocity.items():
            net.velocity[name][...] = v
        if rank == 0:
            for k, (j, rate, parts, seconds, t) in enumerate(pending):
                if j == i:                        # the iteration that ended with the average
                    seconds, t = seconds + averaged, time.perf_counter() - started
                row = _row(job, net, j, scalars[k], rate, seconds, t, **parts,
                           allreduce_s=averaged if j == i else 0.0,
                           allreduce_bytes=mesh.bytes_sent if j == i else 0)
                rows.append(row)
                client.send_row(row)
        diverged = not np.all(np.isfinite(scalars)) or not all(
            np.all(np.isfinite(p)) for p in net.params().values())
        losses, pending = [], []
        if diverged:
            return rows, True
        if scalars[-1] > 0:
            break
    return rows, False
