"""Spark ML: CNNClassifier in a Pipeline on each kind of image column, the same
numbers as the script trainer, the evaluator's accuracy against the test
script's, persistence, and one-line refusals. In-process on local[2]."""
import numpy as np
import pytest
from PIL import Image
from sparkjobs import local_spark, run_script

from spark.cnn import CNN
from spark.data.cifar10 import load_cifar10
from spark.ml import CNNClassifier, CNNModel, MLError

CLASSES = ("cat", "dog", "emu")


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession
    with local_spark("spark-cnn ml tests", "local[2]") as sc:
        yield SparkSession(sc)


def png_folder(root, per_class=8, size=(12, 10)):
    """root/<class>/<i>.png, each class a colour with noise -> {path: (class, pixels)}."""
    rng = np.random.default_rng(0)
    written = {}
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size + (3,), dtype=np.uint8)
            pixels[:, :, k] += 150
            path = root / name / f"{i:02d}.png"
            Image.fromarray(pixels).save(path)
            written[str(path)] = (name, pixels)
    return written


def array_frame(spark, images, labels):
    rows = [(image.astype(int).ravel().tolist(), int(label))
            for image, label in zip(images, labels)]
    return spark.createDataFrame(rows, ["pixels", "label"])


@pytest.mark.parametrize("source", ["image", "binaryFile", "array"])
def test_fit_and_transform_in_a_pipeline_for_each_kind_of_column(source, spark, tmp_path):
    from pyspark.ml import Pipeline
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import StringIndexer
    from pyspark.sql import functions as F
    written = png_folder(tmp_path / "png")
    if source == "image":
        df = spark.read.format("image").load(str(tmp_path / "png" / "*"))
        df = df.withColumn("class", F.element_at(F.split("image.origin", "/"), -2))
        column, shape = "image", ""
    elif source == "binaryFile":
        df = spark.read.format("binaryFile").load(str(tmp_path / "png" / "*"))
        df = df.withColumn("class", F.element_at(F.split("path", "/"), -2))
        column, shape = "content", ""
    else:
        rows = [(pixels.astype(int).ravel().tolist(), name) for name, pixels in written.values()]
        df = spark.createDataFrame(rows, ["pixels", "class"])
        column, shape = "pixels", "12x10x3"
    cnn = CNNClassifier(featuresCol=column, labelCol="label", imageShape=shape, iterations=30,
                        minibatch=12, lr=0.01, exchange="none", batches=2,
                        arch="conv4-relu-pool-fc3")
    model = Pipeline(stages=[StringIndexer(inputCol="class", outputCol="label"), cnn]).fit(df)
    out = model.transform(df)
    assert {"rawPrediction", "probability", "prediction"} <= set(out.columns)
    cnn_model = model.stages[-1]
    assert isinstance(cnn_model, CNNModel) and sorted(cnn_model.classNames) == sorted(CLASSES)
    assert tuple(cnn_model.network.input_shape) == (12, 10, 3)
    rows = out.select("probability", "prediction").collect()
    assert all(abs(sum(r.probability) - 1) < 1e-9 for r in rows)
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(out)
    assert accuracy > 0.6, accuracy                        # three colours: learnable


def test_fit_equals_the_script_trainer_and_the_evaluator_the_test_script(spark, synthetic_dir,
                                                                         tmp_path):
    """The same images, seed and settings as naive_train.py: the same parameters (1e-5);
    the evaluator's accuracy on the model's output = the test script's on its checkpoint."""
    from pyspark.ml import Pipeline
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import StringIndexer
    result = run_script("naive_train.py", 200, 3, "--minibatch", 50, "--seed", 2, "--lr", 0.01,
                        "--data-dir", synthetic_dir, "--params-dir", tmp_path / "script")
    assert result.returncode == 0, result.stderr
    script = CNN.load(tmp_path / "script" / "naive.npz")
    train = load_cifar10(synthetic_dir, "train", limit=200)

    def named(data):                          # class names as strings, indexed alphabetically
        rows = [(image.astype(int).ravel().tolist(), data.class_names[label])
                for image, label in zip(data.images, data.labels)]
        return spark.createDataFrame(rows, ["pixels", "class"])

    indexer = StringIndexer(inputCol="class", outputCol="label", stringOrderType="alphabetAsc")
    for exchange in ("none", "allreduce"):
        cnn = CNNClassifier(featuresCol="pixels", imageShape="32x32x3", iterations=3,
                            minibatch=50, seed=2, lr=0.01, exchange=exchange)
        model = Pipeline(stages=[indexer, cnn]).fit(named(train))
        network = model.stages[-1].network
        assert network.class_names == script.class_names
        for name, value in script.params().items():
            got = network.params()[name]
            assert np.max(np.abs(got - value)) <= 1e-5 * np.max(np.abs(value)), (exchange, name)
    model.stages[-1].saveCheckpoint(tmp_path / "script" / "naive.npz")
    test = load_cifar10(synthetic_dir, "test", limit=120)
    scored = model.transform(named(test))
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)
    result = run_script("naive_test.py", 120, "--data-dir", synthetic_dir, "--params-dir",
                        tmp_path / "script")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"accuracy {accuracy:.4f} on 120 images"


def test_a_model_saves_and_loads_and_turns_into_a_checkpoint(spark, synthetic_train, tmp_path):
    df = array_frame(spark, synthetic_train.images[:60], synthetic_train.labels[:60])
    model = CNNClassifier(featuresCol="pixels", imageShape="32x32x3", iterations=2,
                          minibatch=30, exchange="none", batches=2).fit(df)
    model.write().save(str(tmp_path / "model"))
    again = CNNModel.load(str(tmp_path / "model"))
    assert again.getFeaturesCol() == "pixels" and again.getOrDefault("imageShape") == "32x32x3"
    for name, value in model.network.params().items():
        assert np.array_equal(again.network.params()[name], value), name
    model.saveCheckpoint(tmp_path / "cnn.npz")
    assert CNN.load(tmp_path / "cnn.npz").iteration == 2
    from_checkpoint = CNNModel.fromCheckpoint(tmp_path / "cnn.npz")
    first = model.transform(df).select("rawPrediction").collect()
    second = from_checkpoint.copy({from_checkpoint.featuresCol: "pixels",
                                   from_checkpoint.imageShape: "32x32x3"})
    assert [r.rawPrediction for r in second.transform(df).select("rawPrediction").collect()] == \
        [r.rawPrediction for r in first]


def test_a_model_saves_and_loads_on_hdfs(spark, hdfs_settings, synthetic_train):
    import uuid

    from hdfs import InsecureClient
    df = array_frame(spark, synthetic_train.images[:40], synthetic_train.labels[:40])
    model = CNNClassifier(featuresCol="pixels", imageShape="32x32x3", iterations=1,
                          exchange="none", batches=2).fit(df)
    folder = f"/spark-cnn-ml-tests/{uuid.uuid4().hex[:8]}"
    try:
        model.write().save(f"{hdfs_settings.hdfs}{folder}/model")
        client = InsecureClient(hdfs_settings.webhdfs, user=hdfs_settings.user)
        assert "checkpoint.npz" in client.list(f"{folder}/model")
        again = CNNModel.load(f"{hdfs_settings.hdfs}{folder}/model")
        for name, value in model.network.params().items():
            assert np.array_equal(again.network.params()[name], value), name
    finally:
        InsecureClient(hdfs_settings.webhdfs, user=hdfs_settings.user).delete(
            folder, recursive=True)


def test_bad_input_is_one_line(spark, synthetic_train, tmp_path):
    df = array_frame(spark, synthetic_train.images[:40], synthetic_train.labels[:40])
    with pytest.raises(MLError, match=r"no column 'image' in the DataFrame \(it has pixels, "
                                      r"label\)"):
        CNNClassifier().fit(df)
    with pytest.raises(MLError, match="give imageShape"):
        CNNClassifier(featuresCol="pixels").fit(df)
    with pytest.raises(MLError, match=r"column 'label' is bigint"):
        CNNClassifier(featuresCol="label").fit(df)
    bad = spark.createDataFrame([(row.pixels, 12.5 if i == 3 else float(row.label))
                                 for i, row in enumerate(df.collect())], ["pixels", "label"])
    with pytest.raises(MLError, match=r"label column 'label' has values outside 0, 1, 2, ...: "
                                      r"12.5 \(row 3\)"):
        CNNClassifier(featuresCol="pixels", imageShape="32x32x3").fit(bad)
    model = CNNClassifier(featuresCol="pixels", imageShape="32x32x3", iterations=1,
                          exchange="none", batches=2).fit(df)
    small = array_frame(spark, synthetic_train.images[:4, :16, :16], synthetic_train.labels[:4])
    with pytest.raises(Exception, match=r"images of 16x16x3, but the model takes 32x32x3"):
        model.copy({model.imageShape: "16x16x3"}).transform(small).collect()
    (tmp_path / "notours").mkdir()
    with pytest.raises(MLError, match="is not a saved Spark ML model"):
        CNNModel.load(str(tmp_path / "notours"))
    CNNClassifier().write().save(str(tmp_path / "estimator"))
    with pytest.raises(MLError, match="is not a spark-cnn model"):
        CNNModel.load(str(tmp_path / "estimator"))


def test_the_prediction_script_writes_a_table_of_every_image(spark, tmp_path):
    """predict.py's table: every image of the source once, named by its file, with the
    network's own predictions, class names and probabilities."""
    import io

    import pyarrow.parquet as pq

    from spark.data.source import DataOptions, load_dataset
    from spark.predict import main, parser
    png_folder(tmp_path / "png" / "train", per_class=6)
    png_folder(tmp_path / "png" / "test", per_class=3)
    result = run_script("naive_train.py", 18, 2, "--data-dir", tmp_path / "png", "--params-dir",
                        tmp_path / "params")
    assert result.returncode == 0, result.stderr
    out = io.StringIO()
    main(parser().parse_args([str(tmp_path / "params" / "naive.npz"), str(tmp_path / "table"),
                              "--data-dir", str(tmp_path / "png"), "--partitions", "3"]), out)
    assert out.getvalue().startswith("wrote the predictions of 9 images of ")
    table = pq.read_table(tmp_path / "table").to_pandas().sort_values("row")
    data = load_dataset(tmp_path / "png", "test", options=DataOptions(cache_dir=""))
    net = CNN.load(tmp_path / "params" / "naive.npz")
    scores = net.predict_scores(data.images)
    assert list(table["row"]) == list(range(9)) and list(table["id"]) == data.ids
    assert list(table["label"]) == list(data.labels)
    assert list(table["prediction"]) == list(scores.argmax(axis=1))
    assert list(table["class_name"]) == [net.class_names[k] for k in scores.argmax(axis=1)]
    for probabilities in table["probabilities"]:
        assert len(probabilities) == 3 and abs(sum(probabilities) - 1) < 1e-5
    with pytest.raises(Exception, match="exists already"):
        main(parser().parse_args([str(tmp_path / "params" / "naive.npz"),
                                  str(tmp_path / "table"), "--data-dir", str(tmp_path / "png")]))
