"""Train the CNN locally: python3 naive_train.py [num images] [num iterations] [flags]."""
import sys

from spark.cli import run, train_parser
from spark.runner import train

if __name__ == "__main__":
    sys.exit(run(lambda args: train("naive", args),
                 train_parser("naive_train.py", distributed=False)))
