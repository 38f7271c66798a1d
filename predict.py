"""Predict every image of a source with a trained checkpoint, on Spark, into a Parquet
table: spark-submit --py-files <egg> predict.py CHECKPOINT OUT.parquet [flags]."""
import sys

from spark.cli import run
from spark.predict import main, parser

if __name__ == "__main__":
    sys.exit(run(main, parser()))
