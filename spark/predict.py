"""Batch prediction on Spark: a checkpoint and an image source in, a Parquet table out.

    spark-submit --py-files <egg> predict.py CHECKPOINT OUT.parquet [--split test]
        [--limit N] [--data-dir SOURCE] [the data flags of the test scripts]

The source is any the trainers read (spark.data.source), read as the
checkpoint's run read it unless the flags say otherwise. The images are
broadcast once (a Parquet source as its description: each task reads its own
row groups); `spark.range` cut into partitions feeds `mapInArrow`, whose
tasks run the network on Arrow batches and return Arrow batches; Spark's
writer writes them. Columns: `row` (the image's position in the split),
`id` (its file under the source, or the row as text), `label` (the true class
when the source has one, else -1), `prediction` (the class index),
`class_name`, `probabilities` (K floats).
"""
import argparse
import functools
import os
import sys
import time

import numpy as np

# Images per task at most: a task costs about 0.1 s to start beside 0.09 s per 1,000
# images, so 50,000 images on 2 cores run as 2 tasks (6.1 s against 8.3 s as 13).
PARTITION_IMAGES = 25000


def output_schema():
    from pyspark.sql.types import (
        ArrayType,
        FloatType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
    )
    return StructType([StructField("row", LongType()), StructField("id", StringType()),
                       StructField("label", IntegerType()),
                       StructField("prediction", IntegerType()),
                       StructField("class_name", StringType()),
                       StructField("probabilities", ArrayType(FloatType()))])


def predict_batches(spec, data_bc, params_bc, names, batches):
    """mapInArrow: Arrow batches of `id` (row numbers) -> Arrow batches of predictions.

    Runs in the executors: the network is built once per worker and model."""
    import pyarrow as pa

    from .loss import softmax
    from .tasks import _network
    net = _network(spec, params_bc.value)
    images, labels, ids = data_bc.value
    for batch in batches:
        rows = batch.column(0).to_numpy()                               # (n,) int64
        if not len(rows):
            continue
        scores = net.predict_scores(images[rows]).astype(np.float64)  # (n, K)
        predicted = scores.argmax(axis=1)
        probabilities = softmax(scores).astype(np.float32)             # (n, K)
        yield pa.RecordBatch.from_pydict({
            "row": rows,
            "id": [ids[r] if ids is not None else str(r) for r in rows],
            "label": labels[rows].astype(np.int32) if labels is not None else np.full(
                len(rows), -1, np.int32),
            "prediction": predicted.astype(np.int32),
            "class_name": [names[k] for k in predicted],
            "probabilities": pa.FixedSizeListArray.from_arrays(
                pa.array(probabilities.ravel()), probabilities.shape[1]).cast(
                    pa.list_(pa.float32())),
        }, schema=_arrow_schema())


@functools.lru_cache(maxsize=1)
def _arrow_schema():
    import pyarrow as pa
    return pa.schema([("row", pa.int64()), ("id", pa.string()), ("label", pa.int32()),
                      ("prediction", pa.int32()), ("class_name", pa.string()),
                      ("probabilities", pa.list_(pa.float32()))])


def predict_to_parquet(spark, net, data, out, partitions=None):
    """Predict every image of `data` (a Dataset) with `net` on Spark and write the table
    to `out` -> the rows written. net: a spark.cnn.CNN."""
    sc = spark.sparkContext
    spec = dict(arch=net.arch, input_shape=list(net.input_shape), dtype=net.dtype.name,
                exchange_dtype=net.exchange_dtype.name, chunk=net.chunk, threads=1,
                input_stats=net.input_stats)
    images = data.images
    if isinstance(images, np.ndarray):
        images = np.ascontiguousarray(images)
    data_bc = sc.broadcast((images, data.labels, data.ids))
    params_bc = sc.broadcast(net.params())
    names = list(net.class_names or [str(k) for k in range(net.num_classes)])
    count = len(data)
    partitions = partitions or max(sc.defaultParallelism, -(-count // PARTITION_IMAGES))
    try:
        rows = spark.range(0, count, numPartitions=partitions)
        table = rows.mapInArrow(functools.partial(predict_batches, spec, data_bc, params_bc,
                                                  names), output_schema())
        table.write.parquet(out)
    finally:
        data_bc.unpersist()
        params_bc.unpersist()
    return count


def parser():
    from .cli import DATA_FLAGS, _add_config_flags, _common, _positive
    p = argparse.ArgumentParser(
        prog="predict.py", allow_abbrev=False,
        description="Predict the class of every image of a source with a trained checkpoint, "
                    "on Spark, into a Parquet table.")
    p.add_argument("checkpoint", help="a trainer's checkpoint (e.g. params/locality.npz)")
    p.add_argument("out", help="the Parquet table to write (a folder; local, or hdfs://...)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="which split of --data-dir (default test)")
    p.add_argument("--limit", type=_positive, metavar="N",
                   help="only the first N images of the split (default: all)")
    p.add_argument("--partitions", type=_positive, metavar="P",
                   help=f"Spark tasks (default: the cores, at least one per "
                        f"{PARTITION_IMAGES} images)")
    _add_config_flags(p, distributed=True, only=DATA_FLAGS)
    _common(p, distributed=True)
    return p


def main(args, out=sys.stdout):
    from .checkpoint import CheckpointError
    from .cli import DATA_FLAGS, UsageError
    from .cnn import CNN
    from .runner import check_fits, data_options, load_images
    from .settings import Settings
    from .spark_context import spark_context
    settings = Settings.from_flags(args)
    if not os.path.exists(args.checkpoint):
        raise CheckpointError(f"no checkpoint at {args.checkpoint}")
    net = CNN.load(args.checkpoint)
    if "://" not in args.out and os.path.exists(args.out):
        raise UsageError(f"{args.out} exists already: give a new folder for the table")
    reading = dict(net.run_info, seed=net.seed)
    reading.update({key: getattr(args, key) for key in DATA_FLAGS
                    if getattr(args, key, None) is not None})
    data = load_images(settings, args.split, args.limit, data_options(reading, settings))
    check_fits(net, args.checkpoint, data, settings.data_dir)
    with spark_context("spark-cnn predict", args.debug) as sc:
        from pyspark.sql import SparkSession
        spark = SparkSession(sc)
        started = time.perf_counter()
        count = predict_to_parquet(spark, net, data, args.out, args.partitions)
        seconds = time.perf_counter() - started
    print(f"wrote the predictions of {count} images of {settings.data_dir} ({args.split}) to "
          f"{args.out} in {seconds:.1f}s ({count / seconds:.0f} images/s)", file=out)
