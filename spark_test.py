"""Accuracy of the HDFS-exchange CNN on the first N test images, over B Spark tasks:
spark-submit --py-files <egg> spark_test.py [num images] [num iterations] [num batches]
    [--exchange ...]."""
import sys

from spark.cli import run, test_parser
from spark.runner import evaluate

if __name__ == "__main__":
    sys.exit(run(lambda args: evaluate("spark", "test", args),
                 test_parser("spark_test.py", distributed=True, split="test")))
