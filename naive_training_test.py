"""Accuracy of the locally trained CNN on the first N training images:
python3 naive_training_test.py [N]."""
import sys

from spark.cli import run, test_parser
from spark.runner import evaluate

if __name__ == "__main__":
    sys.exit(run(lambda args: evaluate("naive", "train", args),
                 test_parser("naive_training_test.py", distributed=False, split="training")))
