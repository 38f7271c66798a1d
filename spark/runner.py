"""What the entry scripts do: train with progress lines and checkpoints, or evaluate.

`kind` names the trainer: "naive" (local), "spark" (HDFS exchange) or
"locality" (Redis exchange). The Spark kinds need a SparkContext; it is made
here and always stopped.
"""
import contextlib
import os
import sys
import time

import numpy as np

from .cifar10 import TooFewImagesError, load_cifar10
from .cli import UsageError
from .im2col import backend as im2col_backend
from .metrics import MetricsLog, rss_mb
from .progress import NoProgress, Progress
from .settings import Settings

# Iterations or evaluations over at least this many images get a progress bar.
PROGRESS_FROM = 20000


def checkpoint_path(settings, kind):
    return os.path.join(settings.params_dir, f"{kind}.npz")


def load_images(settings, split, count):
    """The first `count` images of a split; too few images is a usage error."""
    try:
        return load_cifar10(settings.data_dir, split, limit=count)
    except TooFewImagesError as e:
        raise UsageError(f"asked for {count} images: {e}") from None


@contextlib.contextmanager
def open_network(kind, settings, args, checkpoint=None, **options):
    """A network of the given kind, fresh or loaded from `checkpoint`, ready to use."""
    if kind == "naive":
        from .cnn import CNN
        net = CNN.load(checkpoint, **options) if checkpoint else CNN(**options)
        yield net
        return
    from .spark_context import spark_network
    with spark_network(kind, settings, args, checkpoint, **options) as net:
        yield net


def batch_indices(iteration, size, total):
    """Indices of the images used in 0-based `iteration`: the next `size` of `total`, cycling."""
    if size >= total:
        return None
    return (iteration * size + np.arange(size)) % total


def train(kind, args, out=sys.stdout):
    """Train for args.iterations iterations, saving after each one."""
    settings = Settings.from_flags(args)
    minibatch = args.minibatch or args.images
    if minibatch > args.images:
        raise UsageError(f"--minibatch {minibatch} is larger than the {args.images} images")
    if getattr(args, "batches", 1) > minibatch:
        raise UsageError(f"{args.batches} batches for {minibatch} images per iteration: "
                         "each batch needs at least one image")
    data = load_images(settings, "train", args.images)
    path = checkpoint_path(settings, kind)
    options = dict(lr=args.lr, momentum=args.momentum, reg=args.reg)
    if not args.resume:
        options.update(dtype=args.dtype, seed=args.seed)
    metrics = MetricsLog(args.metrics)
    with open_network(kind, settings, args, path if args.resume else None, **options) as net:
        print(f"training {kind} CNN on {args.images} images of {settings.data_dir}: "
              f"{args.iterations} iterations of {minibatch} images, from iteration "
              f"{net.iteration} (im2col back end here: {im2col_backend()})", file=out)
        for _ in range(args.iterations):
            index = batch_indices(net.iteration, minibatch, args.images)
            progress = (Progress(minibatch, f"iteration {net.iteration + 1}")
                        if minibatch >= PROGRESS_FROM else NoProgress())
            record = net.train_iteration(data.images, data.labels, index, progress)
            started = time.perf_counter()
            net.save(path)
            record["save_s"] = time.perf_counter() - started
            record["rss_mb"] = rss_mb()
            metrics.write(record)
            exchange = ""
            if "store_bytes" in record:
                exchange = (f" stored {record['store_bytes'] / 2**20:.1f} MB "
                            f"(write {record['store_write_s']:.2f}s read {record['store_read_s']:.2f}s)")
            print(f"iteration {record['iteration']}: forward {record['forward_s']:.2f}s "
                  f"backward {record['backward_s']:.2f}s loss {record['loss']:.4f} "
                  f"({record['images_per_s']:.0f} images/s){exchange}", file=out, flush=True)
        if getattr(net, "im2col_backends", None):
            print(f"im2col back end in the Spark tasks: {', '.join(sorted(net.im2col_backends))}",
                  file=out)
        print(f"parameters saved to {path}", file=out)


def evaluate(kind, split, args, out=sys.stdout):
    """Print the accuracy of the saved parameters on the first args.images images of a split."""
    settings = Settings.from_flags(args)
    data = load_images(settings, split, args.images)
    with open_network(kind, settings, args, checkpoint_path(settings, kind)) as net:
        progress = (Progress(len(data), "evaluating") if len(data) >= PROGRESS_FROM
                    else NoProgress())
        predicted = net.predict(data.images, progress)
    correct = int(np.sum(predicted == data.labels))
    print(f"{correct} of {len(data)} {split} images right (parameters of iteration "
          f"{net.iteration})", file=out)
    print(f"accuracy {correct / len(data):.4f} on {len(data)} images", file=out)
