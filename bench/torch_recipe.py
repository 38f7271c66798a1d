"""The training recipe in PyTorch, for `bench.py torch-recipe`.

The default network (bench.torch_network) trained as `naive_train.py --augment
--order shuffle --schedule S --warmup K --label-smoothing E --reg R [--nesterov]`
trains it: the minibatches, crops, flips and learning rates come from the same
spark.recipe functions (drawn from --seed), the input from the same
spark.data.preprocess.batch_input (NumPy, on the uint8 minibatch), the update is
CNN.update's momentum SGD written in torch ops (v = m v - lr g, the rate inside
the velocity), the L2 term is added to the weights' gradients and not the
biases', and the loss is CrossEntropyLoss(label_smoothing=E) plus the L2 penalty,
as the trainers' metrics count it. By default the weights start as the local
trainer's do for the same --seed (--init project), so the two runs differ only by
floating-point rounding; --init torch keeps PyTorch's own initialisation.

Test accuracy on the test images every ceil(N / M) iterations (an epoch, as
`--eval-every ceil(N/M)` does in the trainers) and at the end; the metrics file
has the trainers' fields (iteration, loss, lr, forward_s, backward_s, update_s,
images, images_per_s, epoch, wall_s, test_accuracy) plus input_s, the time spent
building the minibatch's input. wall_s is training time: evaluation is not in it.
"""
import math
import time

import numpy as np

TORCH_NAMES = {"conv": "0", "fc": "4"}          # modules of bench.torch_network


def recipe_iterations(epochs, images, minibatch):
    """Iterations of `epochs` passes over `images` images, `minibatch` at a time (rounded up)."""
    return max(1, math.ceil(round(epochs * images / minibatch, 6)))


def torch_weights(params, fc_in_shape):
    """The parameters of a spark CNN of the default network -> the same values as
    bench.torch_network's state dict (NumPy arrays, float32).

    params: CNN.params(), conv weights (KH, KW, C, F) over NHWC input and fc
    weights (H*W*F, K) over the NHWC-flattened pooled output of shape
    fc_in_shape (H, W, F); torch wants (F, C, KH, KW) and (K, F*H*W).
    """
    conv = [name[:-2] for name in params if name.startswith("conv") and name.endswith(".W")]
    fc = [name[:-2] for name in params if name.startswith("fc") and name.endswith(".W")]
    if len(conv) != 1 or len(fc) != 1:
        raise ValueError("not the default network (one conv and one fc layer)")
    (conv,), (fc,) = conv, fc
    height, width, filters = fc_in_shape
    fc_w = params[f"{fc}.W"]
    classes = fc_w.shape[1]
    fc_w = fc_w.reshape(height, width, filters, classes).transpose(3, 2, 0, 1)
    out = {"conv.weight": params[f"{conv}.W"].transpose(3, 2, 0, 1),
           "conv.bias": params[f"{conv}.b"],
           "fc.weight": fc_w.reshape(classes, filters * height * width),
           "fc.bias": params[f"{fc}.b"]}
    return {f"{TORCH_NAMES[key.split('.')[0]]}.{key.split('.')[1]}":
            np.ascontiguousarray(value, np.float32) for key, value in out.items()}


def as_nchw(torch, x, channels_last):
    """(N, H, W, C) float NumPy -> (N, C, H, W) tensor in the chosen memory format
    (channels_last: a view of x itself)."""
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    return t if channels_last else t.contiguous()


def sgd_step(torch, params, velocity, decay, lr, momentum, reg, nesterov):
    """CNN.update on tensors, with CNN.regularize's reg * W on the weights' gradients."""
    with torch.no_grad():
        for p, v, regularised in zip(params, velocity, decay):
            g = p.grad.add(p, alpha=reg) if regularised else p.grad
            v.mul_(momentum).add_(g, alpha=-lr)
            if nesterov:
                p.add_(v, alpha=momentum).add_(g, alpha=-lr)
            else:
                p.add_(v)
            p.grad = None


def accuracy(torch, model, x, labels, batch=1000):
    """Fraction of the test tensor x (N, C, H, W) whose predicted label is right."""
    model.eval()
    right = 0
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            right += int((model(x[start:start + batch]).argmax(1) == labels[start:start + batch])
                         .sum())
    model.train()
    return right / len(x)


def train_recipe(torch, model, train, test, args, out=print):
    """Train `model` (bench.torch_network) on `train` with the recipe of args; evaluate
    on `test` every epoch; write args.metrics. -> the last metrics record."""
    from spark.cnn import CNN
    from spark.data.preprocess import batch_input, normalize_images
    from spark.metrics import MetricsLog, rss_mb
    from spark.recipe import batch_indices, draw_augmentation, learning_rate

    images, minibatch = len(train.images), args.minibatch
    total = recipe_iterations(args.epochs, images, minibatch)
    per_epoch = math.ceil(images / minibatch)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.init == "project":
        net = CNN(seed=args.seed, input_shape=train.images.shape[1:])
        weights = torch_weights(net.params(), net.layers[-1].in_shape)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    model = model.to(memory_format=fmt).train()
    params = list(model.parameters())
    names = [name for name, _ in model.named_parameters()]
    decay = [name.endswith("weight") for name in names]             # weights, not biases
    velocity = [torch.zeros_like(p) for p in params]
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    x_test = as_nchw(torch, normalize_images(test.images), args.channels_last)
    y_test = torch.from_numpy(test.labels.astype(np.int64))
    labels = torch.from_numpy(train.labels.astype(np.int64))
    layout = "NHWC" if args.channels_last else "NCHW"
    out(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, {layout}: "
        f"{images} images, {total} iterations of {minibatch} ({total * minibatch / images:.2f} "
        f"epochs), lr {args.lr} {args.schedule} with warm-up {args.warmup}, momentum "
        f"{args.momentum}{' Nesterov' if args.nesterov else ''}, reg {args.reg}, label "
        f"smoothing {args.label_smoothing}, crops of pad {args.augment_pad} and flips, "
        f"seed {args.seed}, init {args.init}")
    wall = input_wall = 0.0
    best = (0.0, 0.0)
    record = {}
    with MetricsLog(args.metrics) as metrics:
        for i in range(total):
            started = time.perf_counter()
            index = batch_indices(i, minibatch, images, args.seed, "shuffle")
            augment = draw_augmentation(args.seed, i, minibatch, args.augment_pad)
            x = as_nchw(torch, batch_input(train.images, index, slice(None), augment),
                        args.channels_last)
            y = labels if index is None else labels[torch.from_numpy(index)]
            lr = learning_rate(i, args.lr, args.schedule, total, args.warmup)
            built = time.perf_counter()
            loss = loss_fn(model(x), y)
            penalty = 0.5 * args.reg * sum(float(p.detach().double().square().sum())
                                           for p, d in zip(params, decay) if d)
            forward = time.perf_counter()
            loss.backward()
            backward = time.perf_counter()
            sgd_step(torch, params, velocity, decay, lr, args.momentum, args.reg, args.nesterov)
            done = time.perf_counter()
            wall += done - started
            input_wall += built - started
            n = len(y)
            record = dict(iteration=i + 1, loss=loss.item() + penalty, lr=lr,
                          input_s=built - started, forward_s=forward - built,
                          backward_s=backward - forward, update_s=done - backward,
                          images=n, images_per_s=n / (done - started), rss_mb=rss_mb(),
                          epoch=(i + 1) * minibatch / images, wall_s=wall)
            if not math.isfinite(record["loss"]):
                raise SystemExit(f"bench.py: error: torch-recipe diverged at iteration {i + 1} "
                                 f"(loss {record['loss']}): try a smaller --lr")
            if (i + 1) % per_epoch == 0 or i + 1 == total:
                record["test_accuracy"] = accuracy(torch, model, x_test, y_test)
                best = max(best, (record["test_accuracy"], record["epoch"]))
                out(f"epoch {record['epoch']:.2f} (iteration {i + 1}): training {wall:.1f}s "
                    f"(input {input_wall:.1f}s), loss {record['loss']:.4f}, "
                    f"test accuracy {record['test_accuracy']:.4f}")
            metrics.write(record)
    out(f"summary: {total} iterations ({record['epoch']:.2f} epochs) in {wall:.1f}s of "
        f"training, {wall / record['epoch']:.1f}s per epoch; building the input "
        f"(batch_input: crops, flips, normalization) {input_wall:.1f}s "
        f"({input_wall / wall:.1%}); test accuracy {record['test_accuracy']:.4f} on "
        f"{len(test.images)} images (best {best[0]:.4f} at epoch {best[1]:.2f})")
    return record
