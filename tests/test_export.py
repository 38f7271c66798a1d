"""ONNX export (spark/export.py): the model onnx's checker accepts, ONNX Runtime's scores
equal to CNN.predict_scores, the metadata, and python3 -m spark.export as a user runs it.

Scores are compared with rtol 1e-5 and atol 1e-6 times the largest score (at least
1e-6): ONNX Runtime sums the conv and fc products in another order than NumPy's BLAS,
which moves a score near zero by a few 1e-7 of the scores' scale (measured: at most
0.31 of that bound). Probabilities (0..1) with rtol 1e-5 and atol 1e-5.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from project import ROOT

from spark.arch import parse_arch
from spark.checkpoint import save_checkpoint
from spark.cnn import CNN
from spark.export import ExportError, export_onnx
from spark.layer import Layer

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
               "ship", "truck"]


def saved_network(tmp_path, arch, shape, seed=0, train=0, **settings):
    """A CNN of `arch` on `shape` (H, W, C) images, saved and loaded back as the command
    loads it, after `train` iterations on random images -> (net, checkpoint path, images)."""
    net = CNN(arch=parse_arch(arch), input_shape=shape, seed=seed, threads=1, **settings)
    rng = np.random.default_rng(seed + 1)
    images = rng.integers(0, 256, (7, *shape), dtype=np.uint8)
    if train:
        labels = rng.integers(0, net.num_classes, len(images))
        for _ in range(train):
            net.train_iteration(images, labels)
    path = tmp_path / "net.npz"
    net.save(path)
    return CNN.load(path), path, images


def run_model(path, images):
    """ONNX Runtime on the model at `path` -> (scores, probabilities)."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["scores", "probabilities"], {"images": images})


def assert_scores_close(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape
    atol = 1e-6 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)


def softmax(scores):
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


NETWORKS = [
    # arch, per-image shape, training iterations, other settings
    ("conv64-relu-pool-fc10", (32, 32, 3), 0, {}),
    ("conv64-relu-pool-fc10", (32, 32, 3), 3, {}),
    ("conv64-relu-pool-conv128-relu-pool-fc10", (32, 32, 3), 0, {}),
    ("conv64-relu-pool-conv128-relu-pool-fc10", (32, 32, 3), 3, {}),
    ("conv8x3s2-relu-pool-fc4", (28, 20, 1), 2, {"input_stats": ((0.3,), (0.2,))}),
    ("conv8-relu-pool-fc16-relu-fc5", (12, 10, 3), 2, {}),
    ("conv16x5s2p1-relu-pool3s2-fc10", (32, 32, 3), 2, {}),   # overlapping pool
    ("conv6x4s1p0-relu-pool3s1-conv4x2p1-fc3", (11, 9, 2), 0, {}),     # fc right after conv
    ("relu-pool-fc3", (6, 8, 3), 0, {}),                               # fc right after pool
]


@pytest.mark.parametrize("arch, shape, train, settings", NETWORKS,
                         ids=[f"{a}-{'x'.join(map(str, s))}-train{t}"
                              for a, s, t, _ in NETWORKS])
def test_onnx_runtime_gives_the_networks_scores(tmp_path, arch, shape, train, settings):
    net, _, images = saved_network(tmp_path, arch, shape, train=train, **settings)
    assert net.iteration == train
    if train:
        assert any(np.any(p != 0) for name, p in net.params().items() if name.endswith(".b"))
    model_path = tmp_path / "net.onnx"
    model = export_onnx(net, model_path)
    assert isinstance(model, onnx.ModelProto)
    onnx.checker.check_model(onnx.load(model_path), full_check=True)

    want = net.predict_scores(images)
    scores, probabilities = run_model(model_path, images)
    assert_scores_close(scores, want)
    np.testing.assert_allclose(probabilities, softmax(want.astype(np.float64)),
                               rtol=1e-5, atol=1e-5)
    one, _ = run_model(model_path, images[3:4])                         # the batch is dynamic
    assert_scores_close(one, want[3:4])


def test_the_graph_is_nchw_after_one_transpose_of_the_normalised_input(tmp_path):
    net, _, _ = saved_network(tmp_path, "conv8x3s2-relu-pool-conv4-relu-pool-fc4", (28, 20, 1))
    graph = export_onnx(net).graph
    ops = [node.op_type for node in graph.node]
    assert ops == ["Cast", "Mul", "Sub", "Transpose", "Conv", "Relu", "MaxPool", "Conv", "Relu",
                   "MaxPool", "Flatten", "Gemm", "Softmax"]
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    assert weights["conv1.W"] == (8, 1, 3, 3) and weights["conv4.W"] == (4, 8, 3, 3)
    assert weights["fc7.W"] == (3 * 2 * 4, 4)
    [image] = graph.input
    assert image.name == "images"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 28, 20, 1]
    assert [o.name for o in graph.output] == ["scores", "probabilities"]


def test_metadata(tmp_path):
    net, _, _ = saved_network(tmp_path, "conv8-relu-pool-fc10", (8, 8, 3), train=2,
                              class_names=CIFAR_NAMES)
    model = export_onnx(net, opset=17)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"]) == CIFAR_NAMES
    assert json.loads(meta["input_shape"]) == [8, 8, 3]
    assert meta["iteration"] == "2" and meta["num_classes"] == "10"
    assert meta["arch"] == "conv8-relu-pool-fc10"
    stats = json.loads(meta["input_stats"])
    assert stats == {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
    assert [o.version for o in model.opset_import] == [17]
    assert model.producer_name == "spark-cnn"

    unnamed, _, _ = saved_network(tmp_path, "fc3", (4, 4, 1))
    assert "class_names" not in {p.key for p in export_onnx(unnamed).metadata_props}


class Dropout(Layer):
    """A layer kind the exporter has never heard of."""

    kind = "dropout"

    def forward(self, x):
        return x, {}


def test_a_layer_the_exporter_does_not_know(tmp_path):
    net, _, _ = saved_network(tmp_path, "conv4-relu-fc3", (6, 6, 1))
    net.layers.insert(2, Dropout("dropout3", net.layers[1].out_shape))
    with pytest.raises(ExportError, match=r"dropout3 \(dropout\) cannot be exported: .*conv, "
                                          r"relu, pool, fc"):
        export_onnx(net)


def test_bad_opset_and_unwritable_path(tmp_path):
    net, _, _ = saved_network(tmp_path, "fc3", (4, 4, 1))
    with pytest.raises(ExportError, match="opset 9 is not one this exporter writes"):
        export_onnx(net, opset=9)
    with pytest.raises(ExportError, match="cannot write .*missing.*No such file"):
        export_onnx(net, tmp_path / "missing" / "net.onnx")


# ----- the command line -------------------------------------------------------------

def export_command(*args, pythonpath=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*pythonpath, ROOT]))
    return subprocess.run([sys.executable, "-m", "spark.export", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_command_writes_the_model_and_says_so(tmp_path):
    net, checkpoint, images = saved_network(tmp_path, "conv8-relu-pool-fc10", (10, 12, 3),
                                            train=1, class_names=CIFAR_NAMES)
    out = tmp_path / "model.onnx"
    result = export_command(checkpoint, out, "--opset", "17")
    assert result.returncode == 0, result.stderr
    size = os.path.getsize(out) / 1024
    assert result.stdout == (f"wrote {out}: input [N, 10, 12, 3] uint8 NHWC, 10 classes "
                             f"({', '.join(CIFAR_NAMES)}), {size:.1f} KB\n")
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import] == [17]
    assert_scores_close(run_model(out, images)[0], net.predict_scores(images))

    gray, checkpoint, _ = saved_network(tmp_path, "conv8x3s2-relu-pool-fc4", (28, 20, 1))
    result = export_command(checkpoint, out)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"wrote {re.escape(str(out))}: input \[N, 28, 20, 1\] uint8 NHWC, "
                        r"4 classes, \d+\.\d KB\n", result.stdout)


def write_unknown_layer_checkpoint(path):
    net = CNN(arch=parse_arch("conv4-relu-fc3"), input_shape=(6, 6, 1))
    meta = dict(net.checkpoint_meta(), iteration=0, run={})
    meta["arch"] = [meta["arch"][0], {"type": "dropout"}, meta["arch"][2]]
    save_checkpoint(path, {}, meta)


@pytest.mark.parametrize("case, expected", [
    ("missing", r"no checkpoint at .*missing\.npz: give the file a trainer saved"),
    ("text", r"text\.npz is not a readable spark-cnn checkpoint \(damaged or not ours"),
    ("unknown layer", r"does not describe a usable network: unknown layer type 'dropout'"),
    ("no folder", r"cannot write .*nofolder/model\.onnx: No such file or directory"),
    ("a folder", r"cannot write .*: Is a directory"),
    ("the checkpoint", r"net\.npz is the checkpoint itself: give another output path"),
    ("opset", r"opset 12 is not one this exporter writes: use one from 13 to"),
])
def test_command_errors_are_one_line_exit_1(tmp_path, case, expected):
    _, checkpoint, _ = saved_network(tmp_path, "conv4-relu-pool-fc3", (6, 6, 1))
    out, extra = tmp_path / "model.onnx", []
    if case == "missing":
        checkpoint = tmp_path / "missing.npz"
    elif case == "text":
        checkpoint = tmp_path / "text.npz"
        checkpoint.write_text("not a checkpoint\n")
    elif case == "unknown layer":
        checkpoint = tmp_path / "unknown.npz"
        write_unknown_layer_checkpoint(checkpoint)
    elif case == "no folder":
        out = tmp_path / "nofolder" / "model.onnx"
    elif case == "a folder":
        out = tmp_path
    elif case == "the checkpoint":
        out = checkpoint
    elif case == "opset":
        extra = ["--opset", "12"]
    result = export_command(checkpoint, out, *extra)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python3 -m spark.export: error: "), lines
    assert re.search(expected, lines[0]), lines[0]
    assert result.stdout == ""
    if case == "the checkpoint":
        assert CNN.load(checkpoint).num_classes == 3           # left as it was


@pytest.mark.parametrize("args", [[], ["net.npz"], ["net.npz", "m.onnx", "--opset", "x"],
                                  ["net.npz", "m.onnx", "--ops", "17"],
                                  ["net.npz", "m.onnx", "--bogus"]])
def test_bad_command_lines_exit_2(args):
    result = export_command(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


def test_without_onnx_says_how_to_install(tmp_path):
    blocker = tmp_path / "blocker" / "onnx"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("No module named onnx")\n')
    _, checkpoint, _ = saved_network(tmp_path, "fc3", (4, 4, 1))
    result = export_command(checkpoint, tmp_path / "m.onnx", pythonpath=[str(blocker.parent)])
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == ("python3 -m spark.export: error: onnx is not installed: "
                        "pip install spark-cnn[onnx] (or pip install onnx)")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_stays_optional():
    """Only spark/export.py imports onnx, and only when a model is built."""
    pattern = re.compile(r"^\s*(?:import|from)\s+onnx(?:runtime)?\b", re.M)
    allowed = {os.path.join("spark", "export.py"), os.path.join("tests", "test_export.py"),
               # the README's Spark ML example as a script: it runs the exported model
               os.path.join("bench", "pipeline_example.py")}
    importers = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("build", "dist")]
        for name in files:
            if name.endswith((".py", ".pyx")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    if pattern.search(f.read()):
                        importers.add(os.path.relpath(path, ROOT))
    assert importers <= allowed, importers - allowed
    check = ("import sys, spark.export, spark.cnn, spark.runner; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime')))")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
