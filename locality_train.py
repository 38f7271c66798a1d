"""Train the CNN on Spark (layer matrices kept in node-local Redis unless --exchange
hdfs|spark|none says otherwise):
spark-submit --py-files <egg> locality_train.py [num images] [num iterations] [num batches]."""
import sys

from spark.cli import run, train_parser
from spark.runner import train

if __name__ == "__main__":
    sys.exit(run(lambda args: train("locality", args),
                 train_parser("locality_train.py", distributed=True)))
