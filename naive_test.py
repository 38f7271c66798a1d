"""Accuracy of the locally trained CNN on the first N test images: python3 naive_test.py [N]."""
import sys

from spark.cli import run, test_parser
from spark.runner import evaluate

if __name__ == "__main__":
    sys.exit(run(lambda args: evaluate("naive", "test", args),
                 test_parser("naive_test.py", distributed=False, split="test")))
