"""Train the CNN on Spark (layer matrices exchanged through HDFS unless --exchange
redis|spark|none says otherwise):
spark-submit --py-files <egg> spark_train.py [num images] [num iterations] [num batches]."""
import sys

from spark.cli import run, train_parser
from spark.runner import train

if __name__ == "__main__":
    sys.exit(run(lambda args: train("spark", args),
                 train_parser("spark_train.py", distributed=True)))
