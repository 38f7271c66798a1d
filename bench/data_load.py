"""How fast an image folder loads: decoding, then from the cache, against CIFAR-10's pickles.

    python3 bench/data_load.py --make DIR [--images 50000] [--test-images 10000] [--cifar10 PATH]
        writes the first N training and test images of the real CIFAR-10 (read
        with spark.data.cifar10) as 32x32 PNGs, DIR/{train,test}/<class>/<index>.png;
    python3 bench/data_load.py DIR [--cifar10 PATH] [--executors]
        loads DIR's training split twice with a fresh, empty cache folder and
        prints the images/s of the first load (decoding) and of the second (from
        the cache), then CIFAR-10's own load of as many images from its pickles;
        --executors also times decoding the same files on threads, on processes
        and on the calling thread alone (what spark/data/folder.py chose from).

PATH defaults to $SPARK_CNN_DATA_DIR, else data/cifar-10-batches-py.
"""
import argparse
import concurrent.futures
import contextlib
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from spark.data import folder  # noqa: E402 - after the path set-up above
from spark.data.cifar10 import load_cifar10  # noqa: E402
from spark.data.source import DataOptions, load_dataset  # noqa: E402

CIFAR10 = os.environ.get("SPARK_CNN_DATA_DIR", os.path.join(ROOT, "data", "cifar-10-batches-py"))


def make(out, counts, cifar10):
    """Write the first counts[split] CIFAR-10 images of each split as PNGs under
    out/<split>/<class>/."""
    from PIL import Image
    for split, count in counts.items():
        if not count:
            continue
        data = load_cifar10(cifar10, split, count)
        for name in data.class_names:
            os.makedirs(os.path.join(out, split, name), exist_ok=True)

        def write(i, data=data, split=split):
            name = data.class_names[int(data.labels[i])]
            Image.fromarray(data.images[i]).save(os.path.join(out, split, name, f"{i:05d}.png"))

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(write, range(len(data))))
        print(f"wrote {len(data)} PNGs of {cifar10} to {os.path.join(out, split)} "
              f"in {time.perf_counter() - start:.1f} s")


def rate(count, seconds):
    return f"{count / seconds:12,.0f} images/s ({seconds:.3f} s)"


def load(root, cifar10, executors):
    cache = tempfile.mkdtemp(prefix="spark-cnn-bench-cache-")
    try:
        options = DataOptions(format="folder", cache_dir=cache)
        start = time.perf_counter()
        first = load_dataset(root, "train", options=options)
        decoded = time.perf_counter() - start
        start = time.perf_counter()
        second = load_dataset(root, "train", options=options)
        cached = time.perf_counter() - start
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    assert (first.images == second.images).all()
    count = len(first)
    print(f"{root}: {count} images {first.image_shape}, {len(first.class_names)} classes, "
          f"{folder._workers()} workers")
    print(f"folder, decoding   {rate(count, decoded)}")
    print(f"folder, cached     {rate(count, cached)}")
    start = time.perf_counter()
    cifar = load_cifar10(cifar10, "train", min(count, 50000))
    print(f"CIFAR-10 pickles   {rate(len(cifar), time.perf_counter() - start)}")
    if executors:
        paths = [path for path, _ in folder._plan(root, "train", options)[0]]
        for kind in ("thread", "process", "serial"):
            start = time.perf_counter()
            with contextlib.closing(folder._decode_all(paths, None, False, kind)) as images:
                for _ in images:
                    pass
            print(f"decode on {kind:8s} {rate(len(paths), time.perf_counter() - start)}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 bench/data_load.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", metavar="DIR", help="the image folder tree")
    parser.add_argument("--make", action="store_true",
                        help="write DIR from CIFAR-10 instead of loading it")
    parser.add_argument("--images", type=int, default=50000,
                        help="--make: how many training images (default 50000)")
    parser.add_argument("--test-images", dest="test_images", type=int, default=10000,
                        help="--make: how many test images (default 10000)")
    parser.add_argument("--cifar10", default=CIFAR10,
                        help="CIFAR-10 (default $SPARK_CNN_DATA_DIR or data/cifar-10-batches-py)")
    parser.add_argument("--executors", action="store_true",
                        help="also time decoding on threads, processes and one thread")
    args = parser.parse_args(argv)
    if args.make:
        make(args.dir, {"train": args.images, "test": args.test_images}, args.cifar10)
    else:
        load(args.dir, args.cifar10, args.executors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
