"""The run configuration: every hyperparameter and recipe setting in one place.

`RunConfig` is frozen. Each field says its default, the command-line flag
that sets it, and what `--resume` does with it (`resume=`):

- "fixed": part of what the run is (the data, the network, the draws of the
  recipe); a different value on `--resume` is refused, it would be another run;
- "adjustable": kept in the checkpoint; a value given on `--resume` replaces
  the saved one from there on, with a note;
- "run": a setting of this invocation only (where to evaluate, how often to
  save, which exchange); never saved.

The command line (spark.cli) builds its flags from these fields, the
checkpoint keeps the "fixed" and "adjustable" ones, the metrics report them
and the trainers read them from here.
"""
import dataclasses
from dataclasses import dataclass, field

EXCHANGES = ("hdfs", "redis", "spark", "none", "allreduce")
# The exchange of each script family when --exchange is left out.
DEFAULT_EXCHANGE = {"naive": "local", "spark": "hdfs", "locality": "redis"}
# Spark tasks of a two-stage or fused iteration when [num batches] is left out.
DEFAULT_BATCHES = 4


_SAME = object()


def setting(default, resume, word, before=_SAME, **cli):
    """A RunConfig field. word: how a person names it (its flag, or the positional
    argument); before: what a checkpoint written before the setting existed was
    trained with (None: unknown; by default, the default); cli: argparse
    options of its flag (kind, choices, metavar, help, group), absent for
    positional arguments."""
    return field(default=default, metadata=dict(resume=resume, word=word,
                                                before=default if before is _SAME else before,
                                                cli=cli))


@dataclass(frozen=True)
class RunConfig:
    """What one training run is; see the module docstring for `resume`."""

    images: int = setting(1000, "fixed", "[num images]", before=None)
    minibatch: int = setting(None, "fixed", "--minibatch", metavar="M", kind="positive",
                             help="images per iteration, taken in turn from the N "
                                  "(default N: full-batch gradient descent)")
    batches: int = setting(None, "adjustable", "[num batches]")
    lr: float = setting(1e-3, "adjustable", "--lr", kind="number", help="learning rate")
    momentum: float = setting(0.9, "adjustable", "--momentum", kind="number", help="momentum")
    reg: float = setting(5e-4, "adjustable", "--reg", kind="number",
                         help="L2 regularisation strength (weights, not biases)")
    seed: int = setting(0, "fixed", "--seed", kind="count",
                        help="seed of the initial weights, the shuffle and the augmentation")
    dtype: str = setting("float32", "fixed", "--dtype", choices=("float32", "float64"),
                         help="floating point type")
    arch: str = setting(None, "fixed", "--arch", kind="arch", metavar="LAYERS", group="recipe",
                          help="the network as a layer string, e.g. conv64-relu-pool-conv128-"
                               "relu-pool-fc10 (default conv64-relu-pool-fc10; see spark/arch.py)")
    augment: bool = setting(False, "fixed", "--augment", kind="flag", group="recipe",
                            help="random crop of the image padded by --augment-pad pixels and "
                                 "random horizontal flip, drawn per image per iteration")
    augment_pad: int = setting(2, "fixed", "--augment-pad", kind="count", metavar="P",
                               group="recipe", help="padding of the random crop")
    augment_flip: str = setting("on", "fixed", "--augment-flip", group="recipe",
                                choices=("on", "off"),
                                help="--augment's random horizontal flip (off for data whose "
                                     "mirror image is another class, such as digits)")
    order: str = setting("shuffle", "fixed", "--order", before="cycle", group="recipe",
                         choices=("shuffle", "cycle"),
                         help="minibatches from a new permutation of the N images every epoch "
                              "(shuffle, drawn from --seed) or in stored order (cycle)")
    schedule: str = setting("constant", "adjustable", "--schedule", group="recipe",
                            choices=("constant", "cosine", "step"),
                            help="learning-rate schedule over [num iterations]: constant, cosine "
                                 "to 0, or step (x0.1 at 50%% and 75%%)")
    schedule_length: int = setting(None, "adjustable", "--schedule-length", kind="positive",
                                   metavar="K", group="recipe",
                                   help="iterations the schedule spans (default [num iterations]; "
                                        "with --resume, the checkpoint's)")
    warmup: int = setting(0, "adjustable", "--warmup", kind="count", metavar="K", group="recipe",
                          help="the first K iterations rise linearly to --lr")
    label_smoothing: float = setting(0.0, "adjustable", "--label-smoothing", kind="fraction",
                                     metavar="E", group="recipe",
                                     help="target (1 - E) on the label plus E / classes on every "
                                          "class")
    nesterov: bool = setting(False, "adjustable", "--nesterov", kind="flag", group="recipe",
                             help="Nesterov momentum (default: plain momentum)")
    exchange_dtype: str = setting(None, "adjustable", "--exchange-dtype", group="recipe",
                                  choices=("float32", "float16"),
                                  help="float type of the activations kept between the forward "
                                       "and the backward pass (what the Spark exchanges store; the "
                                       "local trainer rounds the same ones): float16 halves them "
                                       "(default: --dtype, nothing rounded)")
    average_every: int = setting(1, "adjustable", "--average-every", kind="positive", metavar="H",
                                 group="allreduce",
                                 help="--exchange allreduce: 1 sums the tasks' gradients every "
                                      "iteration; H > 1 lets every task take H steps on its own "
                                      "share of the minibatches, then averages the parameters "
                                      "and velocities (for slow networks)")
    # ----- the data (what it is: fixed; how to read it: adjustable) -------
    labels: str = setting("fine", "fixed", "--labels", group="data", choices=("fine", "coarse"),
                          help="CIFAR-100: the 100 fine classes or the 20 coarse ones")
    test_fraction: float = setting(None, "fixed", "--test-fraction", kind="open_fraction",
                                   metavar="F", group="data",
                                   help="an image folder with no train/ and test/: hold out "
                                        "this class-stratified share of it (drawn from --seed) "
                                        "as the test images")
    image_size: str = setting(None, "fixed", "--image-size", kind="size", metavar="HxW",
                              group="data",
                              help="resize every image to H x W (default: the images' own "
                                   "size; images of mixed sizes need this)")
    crop: bool = setting(False, "fixed", "--crop", kind="flag", group="data",
                         help="with --image-size: center-crop to H x W instead of resizing")
    data_format: str = setting(None, "adjustable", "--data-format", group="data",
                               choices=("cifar10", "cifar100", "mnist", "folder", "parquet"),
                               help="the format of --data-dir (default: detected)")
    image_column: str = setting(None, "adjustable", "--image-column", metavar="NAME", group="data",
                                help="Parquet: the image column (default: image, img, data or "
                                     "bytes, the first there is)")
    label_column: str = setting(None, "adjustable", "--label-column", metavar="NAME", group="data",
                                help="Parquet: the label column (default: label, labels, class "
                                     "or target, the first there is)")
    # ----- this invocation only --------------------------------------------
    exchange: str = setting(None, "run", "--exchange")
    save_every: int = setting(None, "run", "--save-every", kind="positive", metavar="K",
                              help="save the checkpoint every K iterations and at the end "
                                   "(default 1; --exchange allreduce: at the end of every "
                                   "segment); --resume goes on from the last save")
    segment_seconds: float = setting(30.0, "run", "--segment-seconds", kind="number", metavar="S",
                                     group="allreduce",
                                     help="--exchange allreduce without --save-every: a segment "
                                          "(one Spark job, a checkpoint at its end) ends after "
                                          "about S seconds of training")
    eval_every: int = setting(None, "run", "--eval-every", kind="count", metavar="K",
                              group="recipe",
                              help="accuracy on the test images every K iterations and at the "
                                   "end, printed and in the metrics as test_accuracy "
                                   "(default: never)")
    eval_images: int = setting(None, "run", "--eval-images", kind="positive", metavar="N",
                               group="recipe",
                               help="test images --eval-every uses (default: all of them)")

    # ----- derived ---------------------------------------------------------
    @property
    def batch_size(self):
        """Images per iteration: the minibatch, or all the images."""
        return self.minibatch or self.images

    @property
    def image_hw(self):
        """--image-size as (H, W), or None."""
        return None if self.image_size is None else parse_size(self.image_size)

    @property
    def augment_padding(self):
        """The crop padding if the run augments, else None (spark.recipe's convention)."""
        return self.augment_pad if self.augment else None

    def network_options(self):
        """CNN keyword arguments of this run's network and optimiser."""
        from .arch import parse_arch
        options = dict(dtype=self.dtype, seed=self.seed, lr=self.lr, momentum=self.momentum,
                       reg=self.reg, label_smoothing=self.label_smoothing,
                       nesterov=self.nesterov, exchange_dtype=self.exchange_dtype)
        if self.arch is not None:
            options["arch"] = parse_arch(self.arch)
        return options

    def saved(self):
        """The fields a checkpoint keeps, as a JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields() if f.metadata["resume"] != "run"}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def parse_size(text):
    """An --image-size "HxW" (or "S" for S x S) -> (H, W); ValueError if it is not one."""
    parts = str(text).lower().split("x")
    try:
        size = tuple(int(p) for p in parts) * (2 if len(parts) == 1 else 1)
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"expected a size HxW such as 32x32, got {text!r}")
    return size


def fields():
    return dataclasses.fields(RunConfig)


def field_info(name):
    return next(f for f in fields() if f.name == name)


def word(name):
    """How a person names a setting: its flag or its positional argument."""
    return field_info(name).metadata["word"]


def exchange_of(script, given=None):
    """The exchange a run uses: --exchange if given, else its script family's default.

    script: "naive" (the local trainer), "spark" (spark_*.py) or "locality"
    (locality_*.py). The local trainer always exchanges nothing ("local")."""
    if script == "naive":
        return "local"
    if given is not None and given not in EXCHANGES:
        raise ValueError(f"unknown exchange {given!r} (use {', '.join(EXCHANGES)})")
    return given or DEFAULT_EXCHANGE[script]


class ResumeConflict(ValueError):
    """A setting given on --resume contradicts the checkpoint's run."""


def resolve(given, saved=None, path="the checkpoint", describe=lambda name, value: value):
    """The configuration of a run -> (RunConfig, notes).

    given: {field name: value or None (left out)} from the command line;
    saved: the checkpoint's {field name: value} (fields it lacks were not
    settings yet when it was written: their `before` values), or None for a
    fresh run; path: the checkpoint, as messages name it; describe(name,
    value): a value as the command line writes it. Left-out settings come from
    the checkpoint, else the defaults. A "fixed" setting that contradicts the
    checkpoint raises ResumeConflict; an "adjustable" one that differs
    replaces it, and a note (a line for stderr) says so.
    """
    values, notes = {}, []
    allreduce = given.get("exchange") == "allreduce"
    for f in fields():
        name, info = f.name, f.metadata
        value = given.get(name)
        if saved is None or info["resume"] == "run" or (name == "batches" and allreduce):
            values[name] = f.default if value is None else value
            continue
        kept = saved.get(name, info["before"])
        if value is None:
            values[name] = kept
            continue
        if kept is not None and value != kept:
            if info["resume"] == "fixed":
                raise ResumeConflict(
                    f"{info['word']} {describe(name, value)} contradicts {path}, whose run has "
                    f"{describe(name, kept)}: leave it out to resume that run, or start afresh "
                    "without --resume")
            if name == "batches":
                notes.append(f"note: {value} batches where {path} had {kept}: gradients are "
                             "summed in another order (results differ in rounding)")
            else:
                notes.append(f"note: {info['word']} {describe(name, value)} replaces "
                             f"{describe(name, kept)} of {path} from here on")
        values[name] = value
    if values["images"] is None:                   # a checkpoint that does not say
        values["images"] = RunConfig.images
    if values["batches"] is None and values["exchange"] not in ("allreduce", "local"):
        values["batches"] = DEFAULT_BATCHES
    return RunConfig(**values), notes
