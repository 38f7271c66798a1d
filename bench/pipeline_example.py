"""The README's Spark ML example, run as written: CIFAR-10 as PNG folders, Spark's
image source, StringIndexer + CNNClassifier in a Pipeline, the evaluator's
accuracy, save and load, ONNX.

    python3 bench/data_load.py --make data/cifar10-png      # 50,000 + 10,000 PNGs
    spark-submit --master local[2] --driver-memory 4g --py-files dist/spark_cnn-*.egg \\
        bench/pipeline_example.py data/cifar10-png [--epochs 5] [--out models]

Prints the time of each step, the test accuracy, and the largest difference
between ONNX Runtime's scores and the model's on 1,000 test images.
"""
import argparse
import os
import sys
import time

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.feature import StringIndexer
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark.export import export_onnx
from spark.ml import CNNClassifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="ROOT with train/<class>/*.png and test/<class>/*.png")
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--out", default="models", help="where the model and ONNX file go")
    args = parser.parse_args(argv)
    spark = SparkSession.builder.getOrCreate()

    def images(split):                     # the class is the folder the file is in
        df = spark.read.format("image").load(os.path.join(args.folder, split, "*"))
        return df.withColumn("class", F.element_at(F.split("image.origin", "/"), -2))

    started = time.perf_counter()
    pipeline = Pipeline(stages=[
        StringIndexer(inputCol="class", outputCol="label"),
        CNNClassifier(featuresCol="image", labelCol="label", epochs=args.epochs,
                      minibatch=128, lr=0.02, warmup=391, schedule="cosine", augment=True,
                      labelSmoothing=0.1, reg=1e-4, nesterov=True)])
    model = pipeline.fit(images("train"))
    fitted = time.perf_counter()
    test = images("test")
    scored = model.transform(test)
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)
    evaluated = time.perf_counter()
    path = os.path.join(args.out, "cifar10-pipeline")
    model.write().overwrite().save(path)
    again = PipelineModel.load(path)
    same = again.transform(test).select("prediction").collect() == scored.select(
        "prediction").collect()
    onnx_path = os.path.join(args.out, "cifar10.onnx")
    export_onnx(again.stages[-1].network, onnx_path)
    difference = onnx_difference(onnx_path, again.stages[-1].network, test)
    print(f"fit {fitted - started:.0f} s ({args.epochs:g} epochs), transform and evaluate "
          f"{evaluated - fitted:.0f} s; test accuracy {accuracy:.4f}; saved to {path} and "
          f"loaded again ({'same' if same else 'DIFFERENT'} predictions); ONNX {onnx_path}: "
          f"largest score difference {difference:.2e} on 1,000 test images")
    spark.stop()
    return 0


def onnx_difference(path, network, test):
    """The largest |ONNX Runtime's score - the network's| over 1,000 test images."""
    import onnxruntime

    from spark.ml import column_kind, images_of
    rows = test.select("image").limit(1000).collect()
    kind, shape = column_kind(test.schema, "image")
    batch = images_of([row.image for row in rows], kind, shape)        # (n, H, W, C) uint8
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    scores = session.run(["scores"], {"images": batch})[0]
    return float(np.max(np.abs(scores - network.predict_scores(batch))))


if __name__ == "__main__":
    sys.exit(main())
