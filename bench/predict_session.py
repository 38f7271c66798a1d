"""Batch prediction's cold and warm cost: predict_to_parquet run again and again in one
Spark application, so the first job's start-up shows apart from the per-image rate.

    spark-submit --master local[2] --py-files dist/spark_cnn-*.egg bench/predict_session.py \\
        CHECKPOINT [--images N] [--runs R] [--data-dir SOURCE]

Prints one line per run: its seconds and images/s (the first is the cold one), and
the local prediction's (CNN.predict_scores in this driver, all its threads) of the
same images timed right after it, so that each ratio comes from one moment of a
noisy machine.
"""
import argparse
import os
import sys
import tempfile
import time

from pyspark.sql import SparkSession

from spark.cnn import CNN
from spark.data.source import load_dataset
from spark.predict import predict_to_parquet
from spark.spark_context import spark_context


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a trainer's checkpoint (e.g. params/naive.npz)")
    parser.add_argument("--images", type=int, default=50000, help="training images to predict")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("SPARK_CNN_DATA_DIR", "data"))
    args = parser.parse_args(argv)
    net = CNN.load(args.checkpoint)
    data = load_dataset(args.data_dir, "train", limit=args.images)
    with spark_context("spark-cnn predict session") as sc, \
            tempfile.TemporaryDirectory() as tmp:
        spark = SparkSession(sc)                  # the settings predict.py runs with
        for run in range(args.runs):
            started = time.perf_counter()
            predict_to_parquet(spark, net, data, os.path.join(tmp, f"run-{run}"))
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            net.predict_scores(data.images)
            local = time.perf_counter() - started
            print(f"run {run + 1} of {args.runs}{' (cold)' if run == 0 else ''}: "
                  f"{len(data)} images in {seconds:.2f} s, {len(data) / seconds:.0f} images/s; "
                  f"local {len(data) / local:.0f} images/s ({net.threads} threads): "
                  f"{local / seconds:.2f}x local", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
