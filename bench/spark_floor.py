"""What Spark itself costs per job on a master, with no work in it (bench.py compare).

    spark-submit --master M --py-files EGG bench/spark_floor.py B [--repeats R]

Prints one JSON line of medians over R repeats, seconds:
- empty_job_s: a job of B one-element tasks through Python workers (map + collect),
  the shape of every stage of an iteration with its work taken out;
- jvm_job_s: the same job counted by the JVM alone (no Python worker);
- broadcast_s: sc.broadcast of the default network's parameters (CNN().params(),
  as an iteration broadcasts them) and its unpersist.
"""
import argparse
import json
import statistics
import time

from pyspark import SparkContext

from spark.cnn import CNN


def median_seconds(action, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def identity(x):
    return x


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("batches", type=int)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)     # bench passes it to every script
    args = parser.parse_args()
    sc = SparkContext.getOrCreate()
    sc.setLogLevel("FATAL")
    b = args.batches
    params = CNN().params()

    def empty_job():
        sc.parallelize(range(b), b).map(identity).collect()

    def jvm_job():
        sc.parallelize(range(b), b)._jrdd.count()

    def broadcast():
        sc.broadcast(params).unpersist()

    empty_job()                                   # start the Python workers
    figures = {"batches": b, "master": sc.master,
               "empty_job_s": median_seconds(empty_job, args.repeats),
               "jvm_job_s": median_seconds(jvm_job, args.repeats),
               "broadcast_s": median_seconds(broadcast, args.repeats)}
    sc.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
