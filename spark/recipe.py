"""The training recipe: which images each iteration takes, how they are
augmented, and the learning rate of each iteration.

Pure functions of (seed, iteration): a run, its Spark variants and a resumed
run all draw the same numbers, so they stay equal and --resume continues the
schedule, the shuffle and the augmentation stream where they stopped.
"""
import functools
import math

import numpy as np

SCHEDULES = ("constant", "cosine", "step")
ORDERS = ("shuffle", "cycle")
# Streams of random numbers drawn from the run's seed, kept apart by a tag.
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0x5348, 0x4155
# "step": the rate is multiplied by STEP_FACTOR at each of these fractions of the run.
STEP_AT, STEP_FACTOR = (0.5, 0.75), 0.1


def learning_rate(iteration, base, schedule="constant", total=1, warmup=0):
    """The rate of 0-based `iteration` of a run of `total` iterations.

    warmup: the first `warmup` iterations rise linearly to `base`
    (base * (i + 1) / warmup). After it, "constant" keeps `base`, "cosine"
    falls from `base` to 0 along half a cosine over the remaining iterations,
    "step" multiplies it by STEP_FACTOR at each fraction of STEP_AT.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r} (use {', '.join(SCHEDULES)})")
    if iteration < warmup:
        return base * (iteration + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (iteration - warmup) / span)               # 0 .. 1
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return base * STEP_FACTOR ** sum(progress >= at for at in STEP_AT)
    return base


@functools.lru_cache(maxsize=4)
def _epoch_order(seed, epoch, total):
    order = np.random.default_rng([seed, _SHUFFLE_STREAM, epoch]).permutation(total)
    order.flags.writeable = False
    return order


def batch_indices(iteration, size, total, seed=0, order="cycle"):
    """Indices (size,) of the images 0-based `iteration` uses, or None for all `total`.

    The run walks through the images `size` at a time: "cycle" in their stored
    order, again and again; "shuffle" through a new permutation of them every
    epoch (drawn from the seed), so every image is used once per epoch. A
    minibatch that spans two epochs takes the end of one and the start of the next.
    """
    if size >= total:
        return None
    positions = iteration * size + np.arange(size)                 # (size,) over all epochs
    if order == "cycle":
        return positions % total
    if order != "shuffle":
        raise ValueError(f"unknown order {order!r} (use {', '.join(ORDERS)})")
    epochs, offsets = np.divmod(positions, total)
    out = np.empty(size, np.int64)
    for epoch in np.unique(epochs):
        mask = epochs == epoch
        out[mask] = _epoch_order(seed, int(epoch), total)[offsets[mask]]
    return out


def draw_augmentation(seed, iteration, count, pad, flips=True):
    """The crops and flips of 0-based `iteration`'s `count` images, or None (pad None).

    Returns {"pad": pad, "shift": (count, 2) uint8 row and column offsets into
    the image padded by `pad` (0 .. 2 * pad), "flip": (count,) bool}; with
    flips False no image is flipped (the crops stay the same draws).
    """
    if pad is None:
        return None
    rng = np.random.default_rng([seed, _AUGMENT_STREAM, iteration])
    shift = rng.integers(0, 2 * pad + 1, size=(count, 2), dtype=np.uint8)
    flip = rng.random(count) < 0.5
    if not flips:
        flip[:] = False
    return {"pad": int(pad), "shift": shift, "flip": flip}


def slice_augmentation(augment, rows):
    """The part of an augmentation draw for `rows` (a slice or index array) of its images."""
    if augment is None:
        return None
    return {"pad": augment["pad"], "shift": augment["shift"][rows], "flip": augment["flip"][rows]}


def iteration_inputs(run, iteration):
    """What 0-based `iteration` of a run takes -> (index, augment, lr).

    run: a spark.config.RunConfig. index: the minibatch's image positions
    (None: all the images); augment: its crops and flips (None without
    --augment); lr: its learning rate. The local trainer, every Spark
    trainer and every all-reduce task draw the same three from here.
    """
    index = batch_indices(iteration, run.batch_size, run.images, run.seed, run.order)
    augment = draw_augmentation(run.seed, iteration, run.batch_size, run.augment_padding,
                                run.augment_flip != "off")
    lr = learning_rate(iteration, run.lr, run.schedule, run.schedule_length or 1, run.warmup)
    return index, augment, lr


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
