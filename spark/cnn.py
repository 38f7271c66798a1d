"""The network: a stack of layers, softmax loss, momentum SGD.

`CNN` is the local ("naive") trainer and the base of the Spark trainers, which
override only `loss_and_gradients` (where the forward and backward passes run)
and `predict_scores`.

Images arrive as uint8 NHWC (N, H, W, C); `batch_input` turns each chunk
into the network's float input just before use, so the whole training set is
held once, as bytes.

`exchange_dtype` is the float type of the caches while they wait between the
forward and the backward pass (`forward_kept`, `backward`): float16 halves
what the Spark trainers store, and the local trainer rounds the same arrays
the same way, so both compute the same numbers.
"""
import contextlib
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import ThreadpoolController

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .conv import Conv
from .conv_relu_pool import ConvReluPool
from .data.preprocess import batch_input
from .fc import FullyConnected
from .loss import l2_penalty, softmax_loss
from .pool import MaxPool
from .recipe import iteration_inputs
from .relu import ReLU

# conv 64 filters 3x3 stride 1 pad 1 -> ReLU -> 2x2 max-pool stride 2 -> fc to 10.
DEFAULT_ARCH = (
    {"type": "conv", "filters": 64, "size": 3, "stride": 1, "pad": 1},
    {"type": "relu"},
    {"type": "pool", "size": 2, "stride": 2},
    {"type": "fc", "outputs": 10},
)
CIFAR10_SHAPE = (32, 32, 3)


class Diverged(ArithmeticError):
    """An iteration's loss or parameters are not finite."""

    def __init__(self, iteration, loss):
        super().__init__(f"training diverged at iteration {iteration + 1} (loss {loss})")
        self.iteration, self.loss = iteration + 1, loss


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """The BLAS libraries of this process, found once (finding them takes milliseconds)."""
    return ThreadpoolController()


def default_threads():
    """Chunks worked on at once by the local trainer: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def chunk_slices(n, chunk):
    """slice objects covering range(n) in pieces of at most `chunk`."""
    return [slice(start, min(n, start + chunk)) for start in range(0, n, chunk)]


def build_layers(arch, input_shape, dtype, rng, fuse=True):
    """Layer objects for `arch` (a list of dicts) on per-image `input_shape` (H, W, C).

    Layer i + 1 of `arch` is named after its type and position ("conv1", "fc4").
    With `fuse`, each conv, ReLU and max pool in a row that ConvReluPool.fits
    (windows of at most 4 values, no overlap) are returned as one ConvReluPool
    made of them: the same parameters, names and configs, other caches.
    """
    layers, shape = [], tuple(input_shape)
    for index, spec in enumerate(arch):
        spec = dict(spec)
        kind = spec.pop("type", None)
        name = f"{kind}{index + 1}"
        first = index == 0
        try:
            if kind == "conv":
                layer = Conv(name, shape, input_grad=not first, dtype=dtype, rng=rng, **spec)
            elif kind == "fc":
                # The score layer starts at a tenth of He scale: scores near zero,
                # loss near ln K, and full-batch momentum SGD stays stable (measured).
                scale = 0.1 if index == len(arch) - 1 else 1.0
                layer = FullyConnected(name, shape, input_grad=not first, init_scale=scale,
                                       dtype=dtype, rng=rng, **spec)
            elif kind == "pool":
                layer = MaxPool(name, shape, dtype=dtype, **spec)
            elif kind == "relu":
                layer = ReLU(name, shape, dtype=dtype, **spec)
            else:
                raise ValueError(f"unknown layer type {kind!r} (use conv, relu, pool or fc)")
        except TypeError as e:
            raise ValueError(f"layer {index + 1} ({kind}): {e}") from None
        layers.append(layer)
        shape = layer.out_shape
    if not fuse:
        return layers
    picked, start = [], 0
    while start < len(layers):
        trio = layers[start:start + 3]
        if len(trio) == 3 and ConvReluPool.fits(*trio):
            picked.append(ConvReluPool(*trio))      # conv -> ReLU -> 2x2 pool in one pass
            start += 3
        else:
            picked.append(layers[start])
            start += 1
    return picked


class CNN:
    """A convolutional network trained by momentum SGD with L2 regularisation.

    One iteration = forward and backward over a batch of images, then one update.
    """

    def __init__(self, arch=DEFAULT_ARCH, input_shape=CIFAR10_SHAPE, dtype=np.float32,
                 lr=1e-3, momentum=0.9, reg=5e-4, seed=0, chunk=32, threads=None,
                 label_smoothing=0.0, nesterov=False, exchange_dtype=None, input_stats=None,
                 class_names=None):
        self.input_shape = tuple(int(s) for s in input_shape)
        # The per-channel (mean, std) of the training images the input is normalised
        # with (None: spark.data.preprocess.default_stats), and the classes' names.
        self.input_stats = (None if input_stats is None else
                            tuple(tuple(float(v) for v in part) for part in input_stats))
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        self.dtype = np.dtype(dtype)
        # The float type of the caches between forward and backward (None: self.dtype).
        self.exchange_dtype = np.dtype(self.dtype if exchange_dtype is None else exchange_dtype)
        if self.exchange_dtype.kind != "f":
            raise ValueError(f"exchange dtype {self.exchange_dtype} is not a float type")
        self.lr, self.momentum, self.reg = float(lr), float(momentum), float(reg)
        self.seed, self.chunk = int(seed), int(chunk)
        self.label_smoothing = float(label_smoothing)
        self.nesterov = bool(nesterov)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label smoothing {label_smoothing} is not in [0, 1)")
        self.threads = int(threads) if threads else default_threads()
        self.layers = build_layers(arch, self.input_shape, self.dtype,
                                   np.random.default_rng(self.seed))
        # canonical, JSON-ready: one dict per entry of `arch`
        self.arch = [config for layer in self.layers for config in layer.configs()]
        if len(self.layers[-1].out_shape) != 1:
            raise ValueError("the last layer must be fully connected (it gives the class scores)")
        self.num_classes = self.layers[-1].out_shape[0]
        self.velocity = {name: np.zeros_like(p) for name, p in self.params().items()}
        self.iteration = 0
        self._pool = None                  # chunk threads, started on first use (_workers)
        # What the run that trains this network was asked for (images, minibatch, ...):
        # saved with the checkpoint so that --resume continues the same run.
        self.run_info = {}

    # ----- parameters -------------------------------------------------------
    def params(self):
        """name -> array, e.g. "conv1.W"; the arrays are the layers' own (updated in place)."""
        return {f"{layer.name}.{key}": value
                for layer in self.layers for key, value in layer.params.items()}

    def set_params(self, params):
        """Copy values into the layers' parameters (shapes must match)."""
        own = self.params()
        if set(own) != set(params):
            raise ValueError(f"parameter names differ: have {sorted(own)}, got {sorted(params)}")
        for name, value in params.items():
            if own[name].shape != value.shape:
                raise ValueError(f"{name}: shape {value.shape}, expected {own[name].shape}")
            own[name][...] = value

    def weight_names(self):
        """The regularised parameters: weights, not biases."""
        return [name for name in self.params() if name.endswith(".W")]

    # ----- passes -----------------------------------------------------------
    def forward(self, x):
        """x: (N, H, W, C) float -> scores (N, K), caches (one dict per layer of
        `self.layers`, where a ConvReluPool is one layer)."""
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, caches

    def forward_kept(self, x):
        """forward, with the caches as they wait for the backward pass -> scores, caches.

        Every float array of the caches is rounded to `exchange_dtype`, except
        the input `x` itself (never stored: rebuilt from the uint8 images);
        integer arrays (pooling argmax, ReLU bits) are left as they are. The
        scores come from the unrounded activations: the rounding touches the
        gradients only. Spark tasks and the local trainer both call this.
        """
        scores, caches = self.forward(x)
        if self.exchange_dtype != self.dtype:
            caches = [{name: a if a is x or a.dtype.kind != "f" else a.astype(self.exchange_dtype)
                       for name, a in cache.items()} for cache in caches]
        return scores, caches

    def backward(self, dscores, caches):
        """dscores: (N, K) -> gradients, name -> array (data term only).

        Float caches kept in another type (`forward_kept`) are computed with in
        the network's own."""
        grads, dout = {}, dscores
        for layer, cache in zip(reversed(self.layers), reversed(caches)):
            cache = {name: a.astype(self.dtype, copy=False) if a.dtype.kind == "f" else a
                     for name, a in cache.items()}
            dout, layer_grads = layer.backward(dout, cache)
            for key, value in layer_grads.items():
                grads[f"{layer.name}.{key}"] = value
        return grads

    def chunk_loss_and_gradients(self, images, labels, index, rows, augment, normalizer):
        """Loss and gradients of `rows` (a slice) of a batch, both divided by `normalizer`.

        images: (T, H, W, C) uint8, the whole set; labels: (T,); index: (n,)
        the batch's positions in them (None: the first n); augment: the
        batch's crops and flips or None. The caches wait between forward and
        backward as every Spark exchange keeps them (`forward_kept`).
        Returns (loss, grads, forward seconds, backward seconds, images).
        """
        t0 = time.perf_counter()
        picked = rows if index is None else index[rows]
        x = batch_input(images, index, rows, augment, self.dtype,
                        self.input_stats)                              # (n_chunk, H, W, C)
        scores, caches = self.forward_kept(x)                          # (n_chunk, K)
        loss, dscores = softmax_loss(scores, labels[picked], normalizer=normalizer,
                                     smoothing=self.label_smoothing)
        t1 = time.perf_counter()
        grads = self.backward(dscores, caches)
        return loss, grads, t1 - t0, time.perf_counter() - t1, len(scores)

    def loss_and_gradients(self, images, labels, index=None, progress=None, augment=None,
                           normalizer=None):
        """Mean softmax loss over a batch and its gradients, data term only.

        images: (T, H, W, C) uint8; labels: (T,); index: (N,) positions of the
        batch's images in them, or None for all T; augment: the batch's crops
        and flips (spark.recipe.draw_augmentation) or None; normalizer: what
        the sums are divided by (default N; a share of a minibatch passes the
        minibatch's size). Worked through in chunks of `self.chunk` images:
        each image's loss gradient depends on its own scores only, so forward
        and backward run chunk by chunk and memory stays flat in N.
        `self.threads` chunks run at once (one BLAS thread each); chunk results
        are added in chunk order, so the sums do not depend on the thread
        count. Returns (loss, grads, timings) with timings {"forward_s",
        "backward_s"}: the wall time split in proportion to the chunks' own
        forward and backward times.
        """
        n = len(labels) if index is None else len(index)
        normalizer = n if normalizer is None else normalizer

        def chunk_work(rows):
            return self.chunk_loss_and_gradients(images, labels, index, rows, augment, normalizer)

        started = time.perf_counter()
        totals = {name: np.zeros_like(p) for name, p in self.params().items()}
        loss, forward_s, backward_s = 0.0, 0.0, 0.0
        with self._workers() as run:
            for chunk_loss, grads, f_s, b_s, count in run(chunk_work, chunk_slices(n, self.chunk)):
                loss += chunk_loss
                for name, g in grads.items():
                    totals[name] += g
                forward_s += f_s
                backward_s += b_s
                if progress is not None:
                    progress.update(count)
        wall = time.perf_counter() - started
        share = forward_s / (forward_s + backward_s) if forward_s + backward_s else 0.5
        return loss, totals, {"forward_s": wall * share, "backward_s": wall * (1 - share)}

    @contextlib.contextmanager
    def _workers(self):
        """A `map(fn, items)` running `self.threads` items at once, results in order.

        The threads are started once per network and kept (a minibatch
        iteration is a few tens of milliseconds: starting threads for each one
        cost a tenth of it); BLAS is held to one thread per chunk meanwhile.
        """
        if self.threads <= 1:
            yield map
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cnn-chunk")
        with _blas_controller().limit(limits=1, user_api="blas"):
            yield self._pool.map

    def regularize(self, loss, grads):
        """Add the L2 term to a data loss and its gradients (grads changed in place)."""
        params = self.params()
        names = self.weight_names()
        for name in names:
            grads[name] += self.reg * params[name]
        return loss + l2_penalty([params[name] for name in names], self.reg)

    def update(self, grads, lr=None):
        """One momentum SGD step: v = momentum * v - lr * g; p += v, or with
        Nesterov momentum p += momentum * v - lr * g (the step looks ahead along v).

        lr: this step's rate (a schedule's), else `self.lr`, the run's base rate.
        """
        lr = self.lr if lr is None else lr
        for name, p in self.params().items():
            v = self.velocity[name]
            g = grads[name].astype(self.dtype, copy=False)
            v *= self.momentum
            v -= lr * g
            if self.nesterov:
                p += self.momentum * v - lr * g
            else:
                p += v
        self.iteration += 1

    # ----- training and prediction -----------------------------------------
    def train_iteration(self, images, labels, index=None, progress=None, augment=None, lr=None):
        """Forward, backward and update on one batch -> metrics dict.

        images (T, H, W, C) uint8 and labels (T,) are the whole training set;
        index (N,) picks the batch (None: all T); augment: its crops and flips
        (or None); lr: this iteration's rate (None: the base rate).
        """
        started = time.perf_counter()
        loss, grads, timings = self.loss_and_gradients(images, labels, index, progress, augment)
        loss = self.regularize(loss, grads)
        t0 = time.perf_counter()
        self.update(grads, lr)
        update_s = time.perf_counter() - t0
        total = time.perf_counter() - started
        n = len(labels) if index is None else len(index)
        return dict(iteration=self.iteration, loss=loss, lr=self.lr if lr is None else lr,
                    exchange_dtype=self.exchange_dtype.name, **timings, update_s=update_s,
                    images=n, images_per_s=n / total if total else 0.0)

    def train_segment(self, images, labels, run, end, on_row=None, progress=None):
        """Train iterations self.iteration .. end - 1 of `run` (a RunConfig) -> their rows.

        Each iteration takes its minibatch, crops, flips and rate from
        spark.recipe.iteration_inputs. A row is train_iteration's metrics plus
        `segment_s`, the seconds since the segment began when it ended; each
        goes to `on_row` as soon as it is done. progress(iteration): a counter
        for one iteration's images, or None. Raises Diverged, before the
        parameters of a non-finite loss are kept anywhere but here.
        """
        started, rows = time.perf_counter(), []
        while self.iteration < end:
            index, augment, lr = iteration_inputs(run, self.iteration)
            counter = progress(self.iteration) if progress is not None else None
            row = self.train_iteration(images, labels, index, counter, augment, lr)
            if not np.isfinite(row["loss"]) or not all(
                    np.all(np.isfinite(p)) for p in self.params().values()):
                raise Diverged(self.iteration, row["loss"])
            row["segment_s"] = time.perf_counter() - started
            rows.append(row)
            if on_row is not None:
                on_row(row)
        return rows

    def predict_scores(self, images, progress=None):
        """images: (N, H, W, C) uint8 -> scores (N, K), chunk by chunk."""
        out = np.empty((len(images), self.num_classes), self.dtype)

        def chunk_scores(rows):
            out[rows], _ = self.forward(batch_input(images, None, rows, dtype=self.dtype,
                                                    stats=self.input_stats))
            return rows.stop - rows.start

        with self._workers() as run:
            for count in run(chunk_scores, chunk_slices(len(images), self.chunk)):
                if progress is not None:
                    progress.update(count)
        return out

    def predict(self, images, progress=None):
        """images: (N, H, W, C) uint8 -> predicted labels (N,)."""
        return self.predict_scores(images, progress).argmax(axis=1)

    def accuracy(self, images, labels, progress=None):
        """Fraction of images whose predicted label is right."""
        return float(np.mean(self.predict(images, progress) == labels))

    # ----- saving -----------------------------------------------------------
    def checkpoint_meta(self):
        meta = dict(arch=self.arch, input_shape=list(self.input_shape), dtype=self.dtype.name,
                    lr=self.lr, momentum=self.momentum, reg=self.reg, seed=self.seed,
                    label_smoothing=self.label_smoothing, nesterov=self.nesterov,
                    exchange_dtype=self.exchange_dtype.name)
        if self.input_stats is not None:
            meta["input_stats"] = [list(part) for part in self.input_stats]
        if self.class_names is not None:
            meta["class_names"] = list(self.class_names)
        return meta

    def save(self, path):
        """Atomically write parameters, velocities, iteration, network shape and
        the run's settings (`run_info`) to `path`."""
        arrays = {f"param/{k}": v for k, v in self.params().items()}
        arrays.update({f"velocity/{k}": v for k, v in self.velocity.items()})
        save_checkpoint(path, arrays, dict(self.checkpoint_meta(), iteration=self.iteration,
                                           run=dict(self.run_info)))

    @classmethod
    def load(cls, path, **overrides):
        """A network rebuilt from a checkpoint; `overrides` replace saved settings (e.g. lr).

        Anything wrong with the file (damaged, another format, parameters that do
        not fit its network, NaN or infinite values) is a CheckpointError naming `path`.
        """
        arrays, meta = load_checkpoint(path)
        settings = {k: meta[k] for k in ("arch", "input_shape", "dtype", "lr", "momentum",
                                         "reg", "seed", "label_smoothing", "nesterov",
                                         "exchange_dtype", "input_stats", "class_names")
                    if k in meta}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        try:
            for key in ("lr", "momentum", "reg", "label_smoothing"):
                value = settings.get(key, 0.0)
                if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                    raise ValueError(f"{key} is {value!r}, not a finite number of at least 0")
            iteration = meta.get("iteration", 0)
            if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
                raise ValueError(f"iteration is {iteration!r}, not a whole number of at least 0")
            run_info = meta.get("run") or {}
            if not isinstance(run_info, dict):
                raise ValueError(f"run settings are {run_info!r}, not a mapping")
            net = cls(**settings)
            if net.input_stats is not None:
                mean, std = net.input_stats
                channels = net.input_shape[-1]
                if len(mean) != channels or len(std) != channels or min(std) <= 0:
                    raise ValueError(f"input statistics {net.input_stats} do not fit "
                                     f"{channels} channels")
            if net.class_names is not None and len(net.class_names) != net.num_classes:
                raise ValueError(f"{len(net.class_names)} class names for "
                                 f"{net.num_classes} classes")
            net.set_params({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
            velocity = {k[9:]: v for k, v in arrays.items() if k.startswith("velocity/")}
            if set(velocity) != set(net.velocity):
                raise ValueError("velocities do not match the parameters")
            for name, v in velocity.items():
                if net.velocity[name].shape != v.shape:
                    raise ValueError(f"velocity {name}: shape {v.shape}, "
                                     f"expected {net.velocity[name].shape}")
                net.velocity[name][...] = v
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path} does not describe a usable network: {e}") from None
        for group, values in (("parameter", net.params()), ("velocity", net.velocity)):
            for name, value in values.items():
                if not np.all(np.isfinite(value)):
                    raise CheckpointError(
                        f"{path} holds NaN or infinite values ({group} {name}): the run it "
                        "comes from diverged or the file is damaged; start afresh without --resume")
        net.iteration = iteration
        net.run_info = dict(run_info)
        return net

    def describe_input(self):
        """The per-image input shape in words, e.g. '32x32x3'."""
        return "x".join(str(s) for s in self.input_shape)
