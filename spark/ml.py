"""Spark ML: `CNNClassifier`, an Estimator, and `CNNModel`, its Model.

    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StringIndexer
    from spark.ml import CNNClassifier

    images = spark.read.format("image").load("data/png/train")        # or binaryFile
    indexer = StringIndexer(inputCol="class", outputCol="label")
    cnn = CNNClassifier(featuresCol="image", labelCol="label", epochs=10, minibatch=128)
    model = Pipeline(stages=[indexer, cnn]).fit(images)
    scored = model.transform(test)            # rawPrediction, probability, prediction

The image column may be Spark's image data source's struct (BGR, as Spark
stores it; made RGB here), encoded bytes (`binaryFile`'s `content`), or an
array of 0..255 values with the shape given by `imageShape` ("HxWxC"). Labels
are integers, or the doubles StringIndexer makes (its labels become the class
names).

`fit` trains with the trainers' engine (spark.runner.fit_network) on the
caller's SparkContext, with the same defaults as the scripts: the same seed,
data and settings give the same losses. `transform` runs the network in the
executors on Arrow batches (a pandas UDF), the model broadcast once. A model
saves with Spark ML's persistence (`write().save(path)`, local or on HDFS):
Spark ML's metadata plus the trainers' checkpoint file, so a model and a
checkpoint turn into each other (`CNNModel.fromCheckpoint`,
`model.saveCheckpoint`).
"""
import functools
import hashlib
import math
import os
import sys
import tempfile

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasFeaturesCol,
    HasLabelCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasSeed,
)
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)

from .config import RunConfig
from .data.dataset import DataError, Dataset
from .loss import softmax

MODEL_FORMAT = "spark-cnn-model/1"
CHECKPOINT_FILE = "checkpoint.npz"
_NETWORKS = {}                       # executor side: the model's digest -> CNN


class MLError(ValueError):
    """A DataFrame, column or model folder this module cannot use (one line)."""


# ----- image columns ----------------------------------------------------------

def column_kind(schema, column, shape=None):
    """What an image column holds: "image" (Spark's image struct), "encoded" (bytes)
    or "array" (values, with `shape` "HxWxC") -> (kind, (H, W, C) or None)."""
    from pyspark.sql.types import ArrayType, BinaryType, NumericType, StructType
    if column not in schema.names:
        raise MLError(f"no column {column!r} in the DataFrame (it has "
                      f"{', '.join(schema.names)})")
    data_type = schema[column].dataType
    if isinstance(data_type, StructType) and {"data", "height", "width", "nChannels"} <= set(
            data_type.names):
        return "image", None
    if isinstance(data_type, BinaryType):
        return "encoded", None
    if isinstance(data_type, ArrayType) and isinstance(data_type.elementType, NumericType):
        if not shape:
            raise MLError(f"column {column!r} holds arrays: give imageShape ('HxWxC', e.g. "
                          "'28x28x1') to say how to read them")
        return "array", parse_shape(shape)
    raise MLError(f"column {column!r} is {data_type.simpleString()}: use Spark's image source "
                  "(spark.read.format('image')), encoded bytes (binaryFile's content) or an "
                  "array of 0..255 values with imageShape")


def parse_shape(text):
    """'HxWxC' (or 'HxW' for one channel) -> (H, W, C)."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 2:
        parts.append(1)
    if len(parts) != 3 or min(parts) < 1 or parts[2] not in (1, 3):
        raise MLError(f"imageShape {text!r}: expected HxWxC with C 1 or 3, e.g. 32x32x3")
    return tuple(parts)


def images_of(values, kind, shape=None, where="image"):
    """A column's values (a sequence of Spark image structs as dicts or Rows, of
    bytes, or of arrays) -> (n, H, W, C) uint8, RGB or grayscale."""
    from .data.images import decode_image_bytes
    out = []
    for i, value in enumerate(values):
        if value is None:
            raise MLError(f"{where}: row {i} of the batch has no image (null)")
        if kind == "image":
            image = _spark_image(value, f"{where} row {i}")
        elif kind == "encoded":
            try:
                image = decode_image_bytes(value, f"{where} row {i}")
            except DataError as e:
                raise MLError(str(e)) from None
        else:
            flat = np.asarray(value)
            if flat.size != int(np.prod(shape)):
                raise MLError(f"{where} row {i}: {flat.size} values, not the "
                              f"{'x'.join(map(str, shape))} of imageShape")
            if flat.size and (flat.min() < 0 or flat.max() > 255):
                raise MLError(f"{where} row {i}: values outside 0..255")
            image = flat.reshape(shape).astype(np.uint8)
        out.append(image)
    if not out:
        return np.empty((0,) + tuple(shape or (0, 0, 0)), np.uint8)
    first = out[0].shape
    for i, image in enumerate(out):
        if image.shape != first:
            raise MLError(f"{where}: images of different shapes ({'x'.join(map(str, first))} "
                          f"and {'x'.join(map(str, image.shape))} at row {i}): resize them "
                          "first")
    return np.stack(out)                                          # (n, H, W, C)


def _spark_image(value, where):
    """One struct of Spark's image source -> (H, W, C) uint8 RGB or grayscale."""
    get = value.get if isinstance(value, dict) else lambda key: value[key]
    height, width, channels = int(get("height")), int(get("width")), int(get("nChannels"))
    data = get("data")
    if data is None or channels not in (1, 3, 4) or len(data) != height * width * channels:
        raise MLError(f"{where}: not an 8-bit image of Spark's image source ({height}x{width}, "
                      f"{channels} channels, {0 if data is None else len(data)} bytes)")
    image = np.frombuffer(bytes(data), np.uint8).reshape(height, width, channels)
    if channels == 1:
        return image
    return np.ascontiguousarray(image[:, :, 2::-1])             # BGR(A) -> RGB


def _partition_images(column, label, kind, shape, rows):
    """mapPartitions: a partition's rows -> [(images (n, H, W, C), labels (n,) or None)]."""
    rows = list(rows)
    images = images_of([row[0] for row in rows], kind, shape, where=f"column {column!r}")
    labels = None if label is None else [row[1] for row in rows]
    yield images, labels


def dataframe_images(df, column, label=None, shape=None):
    """A DataFrame's images (converted in the executors) and labels on the driver ->
    (images (N, H, W, C) uint8, labels int64 (N,) or None, class names or None)."""
    kind, shape = column_kind(df.schema, column, shape)
    names = None
    if label is not None:
        if label not in df.schema.names:
            raise MLError(f"no label column {label!r} in the DataFrame (it has "
                          f"{', '.join(df.schema.names)})")
        names = label_names(df.schema, label)
    selected = df.select(column, label) if label is not None else df.select(column)
    parts = selected.rdd.mapPartitions(functools.partial(
        _partition_images, column, label, kind, shape)).collect()
    parts = [(images, labels) for images, labels in parts if len(images)]
    if not parts:
        raise MLError(f"the DataFrame has no rows in column {column!r}")
    shapes = {images.shape[1:] for images, _ in parts}
    if len(shapes) > 1:
        raise MLError(f"column {column!r} holds images of different shapes "
                      f"({', '.join('x'.join(map(str, s)) for s in sorted(shapes))}): resize "
                      "them first")
    images = np.concatenate([images for images, _ in parts])
    labels = None
    if label is not None:
        labels = check_labels([v for _, values in parts for v in values], label, names)
    return images, labels, names


def label_names(schema, label):
    """The class names StringIndexer left in a label column's metadata, or None."""
    attr = schema[label].metadata.get("ml_attr", {})
    values = attr.get("vals") or attr.get("values")
    return [str(v) for v in values] if values else None


def check_labels(values, label, names=None):
    """Label values -> int64 (N,); refused: nulls, non-integers, outside 0..K-1."""
    if any(v is None for v in values):
        first = next(i for i, v in enumerate(values) if v is None)
        raise MLError(f"label column {label!r} has {sum(v is None for v in values)} nulls "
                      f"(the first at row {first})")
    array = np.asarray(values, np.float64)
    bad = (array != np.round(array)) | (array < 0)
    if names is not None:
        bad |= array >= len(names)
    if bad.any():
        first = int(np.argmax(bad))
        limit = f"0..{len(names) - 1}" if names is not None else "0, 1, 2, ..."
        raise MLError(f"label column {label!r} has values outside {limit}: {values[first]} "
                      f"(row {first}) and {int(bad.sum()) - 1} more")
    return array.astype(np.int64)


# ----- the estimator ----------------------------------------------------------

def _param(name, doc, converter):
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class _CNNParams(HasFeaturesCol, HasLabelCol, HasPredictionCol, HasProbabilityCol,
                 HasRawPredictionCol, HasSeed):
    """Params shared by the estimator and the model."""

    imageShape = _param("imageShape", "HxWxC of an array image column", TypeConverters.toString)
    batchSize = _param("batchSize", "transform: images per Arrow batch", TypeConverters.toInt)


class CNNClassifier(Estimator, _CNNParams, DefaultParamsReadable, DefaultParamsWritable):
    """Trains the CNN on a DataFrame's images (see the module docstring)."""

    arch = _param("arch", "the network, e.g. conv64-relu-pool-fc10 (default: that, with the "
                  "data's class count)", TypeConverters.toString)
    iterations = _param("iterations", "iterations to train (0: from epochs)", TypeConverters.toInt)
    epochs = _param("epochs", "passes over the images, when iterations is 0",
                    TypeConverters.toFloat)
    minibatch = _param("minibatch", "images per iteration (0: all: full batch)",
                       TypeConverters.toInt)
    lr = _param("lr", "learning rate", TypeConverters.toFloat)
    momentum = _param("momentum", "momentum", TypeConverters.toFloat)
    reg = _param("reg", "L2 regularisation strength", TypeConverters.toFloat)
    schedule = _param("schedule", "constant, cosine or step", TypeConverters.toString)
    warmup = _param("warmup", "iterations of linear warm-up", TypeConverters.toInt)
    augment = _param("augment", "random crops and flips", TypeConverters.toBoolean)
    augmentPad = _param("augmentPad", "padding of the random crop", TypeConverters.toInt)
    augmentFlip = _param("augmentFlip", "with augment: flip images (on or off)",
                         TypeConverters.toString)
    labelSmoothing = _param("labelSmoothing", "label smoothing E in [0, 1)",
                            TypeConverters.toFloat)
    nesterov = _param("nesterov", "Nesterov momentum", TypeConverters.toBoolean)
    exchange = _param("exchange", "how the Spark tasks combine their work: allreduce "
                      "(default, the fastest), none, spark, redis or hdfs",
                      TypeConverters.toString)
    batches = _param("batches", "Spark tasks (0: allreduce: the task slots; else 4)",
                     TypeConverters.toInt)
    checkpointDir = _param("checkpointDir", "a folder for the checkpoint: fit resumes from it "
                           "when it holds one (default: none kept)", TypeConverters.toString)

    _DEFAULTS = dict(featuresCol="image", labelCol="label", iterations=0, epochs=1.0,
                     minibatch=0, lr=RunConfig.lr, momentum=RunConfig.momentum,
                     reg=RunConfig.reg, schedule=RunConfig.schedule, warmup=RunConfig.warmup,
                     augment=False, augmentPad=RunConfig.augment_pad,
                     augmentFlip=RunConfig.augment_flip,
                     labelSmoothing=RunConfig.label_smoothing, nesterov=False,
                     exchange="allreduce", batches=0, seed=RunConfig.seed, batchSize=4096,
                     imageShape="", checkpointDir="", arch="")

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self._setDefault(**self._DEFAULTS)
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        return self._set(**self._input_kwargs)

    def run_config(self, images):
        """The RunConfig of a fit on `images` images -> (config, iterations)."""
        get = self.getOrDefault
        minibatch = get(self.minibatch) or None
        if minibatch is not None and minibatch > images:
            raise MLError(f"minibatch {minibatch} is larger than the {images} images")
        exchange = get(self.exchange)
        if exchange not in ("allreduce", "none", "spark", "redis", "hdfs"):
            raise MLError(f"exchange {exchange!r}: use allreduce, none, spark, redis or hdfs")
        run = RunConfig(images=images, minibatch=minibatch, lr=get(self.lr),
                        momentum=get(self.momentum), reg=get(self.reg), seed=get(self.seed),
                        arch=_canonical(get(self.arch)), augment=get(self.augment),
                        augment_pad=get(self.augmentPad), augment_flip=get(self.augmentFlip),
                        schedule=get(self.schedule), warmup=get(self.warmup),
                        label_smoothing=get(self.labelSmoothing), nesterov=get(self.nesterov),
                        exchange=exchange, batches=get(self.batches) or (
                            None if exchange == "allreduce" else 4))
        iterations = get(self.iterations) or max(1, math.ceil(
            round(get(self.epochs) * images / run.batch_size, 6)))
        return run, iterations

    def _fit(self, dataset):
        from .cnn import CNN
        from .metrics import MetricsLog
        from .runner import fit_network, resolve_config_for, saved_settings
        from .settings import Settings

        images, labels, names = dataframe_images(dataset, self.getFeaturesCol(),
                                                 self.getLabelCol(), self.getOrDefault(
                                                     self.imageShape) or None)
        classes = int(labels.max()) + 1
        data = Dataset(images, labels, names or [str(k) for k in range(classes)])
        run, total = self.run_config(len(data))
        folder = self.getOrDefault(self.checkpointDir)
        with tempfile.TemporaryDirectory() as scratch:
            settings = Settings.from_flags(_Flags(params_dir=folder or scratch))
            path = os.path.join(settings.params_dir, "cnn.npz")
            saved = CNN.load(path) if folder and os.path.exists(path) else None
            if saved is not None:
                run = resolve_config_for(run, saved_settings(saved), path)
            with MetricsLog(None) as metrics:
                net = fit_network("ml", run, data, None, total, path, saved, settings, metrics,
                                  out=sys.stderr, err=sys.stderr)
            model = CNNModel._from_network(net)
        return self._copyValues(model)


class _Flags:
    """The attributes Settings.from_flags reads, for a fit without a command line."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def __getattr__(self, name):
        return None


def _canonical(arch):
    if not arch:
        return None
    from .arch import canonical_arch
    try:
        return canonical_arch(arch)
    except ValueError as e:
        raise MLError(f"arch {arch!r}: {e}") from None


# ----- the model --------------------------------------------------------------

class CNNModel(Model, _CNNParams, MLReadable, MLWritable):
    """A trained CNN: `transform` adds rawPrediction, probability and prediction."""

    def __init__(self):
        super().__init__()
        self._setDefault(featuresCol="image", labelCol="label", batchSize=4096, imageShape="")
        self._checkpoint = None          # the checkpoint file's bytes

    @classmethod
    def _from_network(cls, net):
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "cnn.npz")
            net.save(path)
            return cls._from_checkpoint_bytes(open(path, "rb").read())

    @classmethod
    def _from_checkpoint_bytes(cls, data, where="the model"):
        from .checkpoint import CheckpointError
        from .cnn import CNN
        model = cls()
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, CHECKPOINT_FILE)
            with open(path, "wb") as f:
                f.write(data)
            try:
                model._net = CNN.load(path)
            except CheckpointError as e:
                raise MLError(str(e).replace(path, where)) from None
        model._checkpoint = bytes(data)
        return model

    @classmethod
    def fromCheckpoint(cls, path):
        """The model of a trainer's checkpoint file (a local path)."""
        with open(path, "rb") as f:
            return cls._from_checkpoint_bytes(f.read(), where=str(path))

    def saveCheckpoint(self, path):
        """Write the model as a trainer's checkpoint file (a local path)."""
        with open(path, "wb") as f:
            f.write(self._checkpoint)

    @property
    def network(self):
        """The trained spark.cnn.CNN (on the driver)."""
        return self._net

    @property
    def numClasses(self):
        return self._net.num_classes

    @property
    def classNames(self):
        return list(self._net.class_names or [str(k) for k in range(self.numClasses)])

    def _transform(self, dataset):
        import pandas as pd
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F
        from pyspark.sql.functions import pandas_udf
        from pyspark.sql.types import ArrayType, DoubleType, StructField, StructType

        column = self.getFeaturesCol()
        kind, shape = column_kind(dataset.schema, column, self.getOrDefault(self.imageShape)
                                  or None)
        sc = dataset.sparkSession.sparkContext
        model_bc = sc.broadcast(self._checkpoint)                   # once, not per row
        key = hashlib.sha1(self._checkpoint).hexdigest()
        expected = tuple(self._net.input_shape)
        schema = StructType([StructField("raw", ArrayType(DoubleType())),
                             StructField("probability", ArrayType(DoubleType())),
                             StructField("prediction", DoubleType())])

        @pandas_udf(schema)
        def predict(values: pd.Series) -> pd.DataFrame:
            records = values.to_dict("records") if isinstance(values, pd.DataFrame) else values
            images = images_of(list(records), kind, shape, where=f"column {column!r}")
            scores = predict_scores(model_bc, key, images, expected)   # (n, K) float64
            return pd.DataFrame({"raw": list(scores), "probability": list(softmax(scores)),
                                 "prediction": scores.argmax(axis=1).astype(np.float64)})

        scored = dataset.withColumn("__cnn", predict(F.col(column)))
        return (scored
                .withColumn(self.getRawPredictionCol(), array_to_vector("__cnn.raw"))
                .withColumn(self.getProbabilityCol(), array_to_vector("__cnn.probability"))
                .withColumn(self.getPredictionCol(), F.col("__cnn.prediction"))
                .drop("__cnn"))

    def write(self):
        return _ModelWriter(self)

    @classmethod
    def read(cls):
        return _ModelReader(cls)


def predict_scores(model_bc, key, images, expected):
    """Executor side: the broadcast model's scores of (n, H, W, C) uint8 images, one
    network per worker and model (`key`: the model's digest), one chunk at a time
    (the task has one core)."""
    from .cnn import CNN
    from .workers import prepare_worker
    if images.shape[1:] != expected:
        raise MLError(f"images of {'x'.join(map(str, images.shape[1:]))}, but the model "
                      f"takes {'x'.join(map(str, expected))}: resize them first")
    net = _NETWORKS.get(key)
    if net is None:
        prepare_worker()
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, CHECKPOINT_FILE)
            with open(path, "wb") as f:
                f.write(model_bc.value)
            net = _NETWORKS[key] = CNN.load(path, threads=1)
    return net.predict_scores(images).astype(np.float64)


# ----- persistence ------------------------------------------------------------

def _hadoop(sc, path):
    jvm = sc._jvm
    target = jvm.org.apache.hadoop.fs.Path(path)
    return target, target.getFileSystem(sc._jsc.hadoopConfiguration())


def write_bytes(sc, path, data):
    """Write `data` to `path` (local or hdfs://) through Spark's Hadoop file system."""
    target, fs = _hadoop(sc, path)
    out = fs.create(target, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def read_bytes(sc, path):
    """The bytes of `path` (local or hdfs://), through Spark's Hadoop file system."""
    target, fs = _hadoop(sc, path)
    stream = fs.open(target)
    try:
        return bytes(sc._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


class _ModelWriter(MLWriter):
    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path):
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sc,
                                         extraMetadata={"format": MODEL_FORMAT})
        write_bytes(self.sc, f"{path.rstrip('/')}/{CHECKPOINT_FILE}", self.instance._checkpoint)


class _ModelReader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path):
        try:
            metadata = DefaultParamsReader.loadMetadata(path, self.sc)
        except Exception as e:  # noqa: BLE001 - Spark says "not found" many ways: one line here
            raise MLError(f"{path} is not a saved Spark ML model (no metadata could be read: "
                          f"{str(e).splitlines()[0][:200]})") from None
        if metadata.get("format") != MODEL_FORMAT or not metadata.get("class", "").endswith(
                "CNNModel"):
            raise MLError(f"{path} is not a spark-cnn model (it is a {metadata.get('class')})")
        model = self.cls._from_checkpoint_bytes(
            read_bytes(self.sc, f"{path.rstrip('/')}/{CHECKPOINT_FILE}"), where=path)
        DefaultParamsReader.getAndSetParams(model, metadata)
        return model
