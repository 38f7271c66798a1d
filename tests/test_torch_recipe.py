"""bench/torch_recipe.py's pure helpers (no PyTorch needed), and `bench.py torch-recipe`
refused in one line where PyTorch is missing (where it is installed, the test hides it
from the interpreter it runs, so the refusal is checked there too)."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from project import ROOT

from spark.arch import parse_arch
from spark.cnn import CNN
from spark.data.preprocess import normalize_images

sys.path.insert(0, os.path.join(ROOT, "bench"))
from torch_recipe import recipe_iterations, torch_weights


def nchw_scores(weights, x):
    """bench.torch_network's forward in NumPy, NCHW, from its state dict: the layout torch uses."""
    conv_w, conv_b = weights["0.weight"], weights["0.bias"]          # (F, C, 3, 3), (F,)
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((n, len(conv_b), h, w), np.float64)
    for a in range(3):
        for b in range(3):
            conv += np.einsum("nchw,fc->nfhw", padded[:, :, a:a + h, b:b + w], conv_w[:, :, a, b])
    conv = np.maximum(conv + conv_b[:, None, None], 0)
    pooled = conv.reshape(n, -1, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    return pooled.reshape(n, -1) @ weights["4.weight"].T + weights["4.bias"]


def test_torch_weights_give_the_projects_network():
    net = CNN(seed=3)
    rng = np.random.default_rng(0)
    for p in net.params().values():                 # biases too, so their layout is checked
        p += rng.normal(0, 0.01, p.shape).astype(p.dtype)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    weights = torch_weights(net.params(), net.layers[-1].in_shape)
    assert {k: v.shape for k, v in weights.items()} == {
        "0.weight": (64, 3, 3, 3), "0.bias": (64,), "4.weight": (10, 64 * 16 * 16), "4.bias": (10,)}
    x = normalize_images(images).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(nchw_scores(weights, x), net.predict_scores(images),
                               rtol=1e-4, atol=1e-4)


def test_torch_weights_refuse_another_network():
    net = CNN(arch=parse_arch("conv8-relu-pool-conv8-relu-pool-fc10"))
    with pytest.raises(ValueError, match="default network"):
        torch_weights(net.params(), net.layers[-1].in_shape)


def test_recipe_iterations_round_epochs_up():
    assert recipe_iterations(1, 50000, 128) == 391
    assert recipe_iterations(30, 50000, 128) == 11719
    assert recipe_iterations(1.024, 5000, 128) == 40                # 5120 images exactly
    assert recipe_iterations(0.0001, 100, 128) == 1


def without_torch(folder):
    """The environment in which sys.executable runs as if PyTorch were not installed:
    os.environ where it is not; where it is, a `torch` module that fails to import,
    first on PYTHONPATH, hides it. Skips the test if even that cannot hide it."""
    env = dict(os.environ)
    if importlib.util.find_spec("torch") is None:
        return env
    folder.mkdir()
    (folder / "torch.py").write_text(
        'raise ModuleNotFoundError("No module named \'torch\' (hidden by the test)", '
        'name="torch")\n')
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    if probe.returncode == 0:
        pytest.skip(f"PyTorch is installed for {sys.executable} and a torch module first on "
                    "PYTHONPATH does not hide it: no interpreter here lacks PyTorch")
    return env


def test_torch_recipe_without_pytorch_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench.py"),
                             "torch-recipe", "--epochs", "1"],
                            cwd=ROOT, env=without_torch(tmp_path / "no-torch"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench.py: error: PyTorch is not installed")
