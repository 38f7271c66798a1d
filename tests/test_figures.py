"""python3 bench/bench.py figures as a user runs it, tiny: every chart a valid PNG, the page
referencing each one and describing the machine; bad --accuracy input refused in one line."""
import json
import os
import subprocess
import sys

from pngs import check_png
from project import ROOT

TIMING_PNGS = ["iteration_vs_images.png", "iteration_vs_batches.png", "layer_profile.png",
               "prediction_vs_images.png"]
ACCURACY_PNGS = ["accuracy_epoch.png", "accuracy_wall.png"]
TINY = ["--sizes", "40,80", "--batches", "2", "--batch-counts", "1,2", "--batch-images", "80",
        "--iterations", "2", "--profile-images", "64"]


def figures(*args, timeout=1800):
    return subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench.py"), "figures",
                           *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def write_accuracy_metrics(path, epochs=4, per_epoch=10):
    """What a trainer's --metrics with --eval-every writes: test_accuracy once an epoch."""
    lines = []
    for i in range(1, epochs * per_epoch + 1):
        record = dict(iteration=i, loss=2.3 - 0.02 * i, images=128, images_per_s=2500.0,
                      epoch=i / per_epoch, wall_s=0.05 * i)
        if i % per_epoch == 0:
            record["test_accuracy"] = 0.3 + 0.05 * i / per_epoch
        lines.append(json.dumps(record) + "\n")
    path.write_text("".join(lines))
    return path


def check_page(out, pngs):
    page = (out / "README.md").read_text()
    for name in pngs:
        assert f"]({name})" in page, name
    for words in ("## Machine", "cores (nproc)", "CPU (lscpu)", "memory", "Python", "Java",
                  "Spark", "load average (1 / 5 / 15 min) at start", "load average at end",
                  "python3 bench/bench.py figures --out"):
        assert words in page, words
    return page


def test_figures_of_every_mode_are_pngs_on_a_page(tmp_path, synthetic_dir, egg, service_env):
    accuracy = write_accuracy_metrics(tmp_path / "recipe.jsonl")
    out = tmp_path / "figures"
    result = figures("--out", out, "--data-dir", synthetic_dir, "--egg", egg, *TINY,
                     "--modes", "redis,none", "--accuracy", f"{accuracy},tiny recipe")
    assert result.returncode == 0, result.stderr[-3000:]
    pngs = TIMING_PNGS + ACCURACY_PNGS
    assert sorted(os.listdir(out)) == sorted(pngs + ["README.md"])
    for name in pngs:
        check_png(out / name)
    page = check_page(out, pngs)
    # A column per exchange asked for, in both charts (two modes: every spark-submit costs
    # about 10 s, and the modes themselves are tested elsewhere).
    for mode in ("redis", "none"):
        assert f"Spark {mode}" in page
        assert f"Spark --exchange {mode}, B=1, N=80" in result.stdout
        assert f"Spark --exchange {mode}, B=2, N=40" in result.stdout
    for mode in ("hdfs", "spark"):
        assert f"Spark {mode}" not in page
    assert "| tiny recipe |" in page and "50.00%" in page          # epoch 4: 0.3 + 0.2
    for title in ("iteration time against N", "iteration time against B",
                  "per-layer profile", "prediction time against N", "test accuracy"):
        assert title in result.stdout, title


def test_local_only_figures_skip_accuracy_with_a_note(tmp_path, synthetic_dir):
    out = tmp_path / "figures"
    result = figures("--out", out, "--data-dir", synthetic_dir, "--modes", "", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "note: no --accuracy" in result.stdout
    assert sorted(os.listdir(out)) == sorted(["iteration_vs_images.png", "layer_profile.png",
                                              "prediction_vs_images.png", "README.md"])
    for name in os.listdir(out):
        if name.endswith(".png"):
            check_png(out / name)
    page = check_page(out, ["iteration_vs_images.png", "layer_profile.png",
                            "prediction_vs_images.png"])
    assert "Not drawn: the run was given no `--accuracy`" in page


def test_bad_accuracy_file_is_refused_before_measuring(tmp_path):
    no_accuracy = tmp_path / "plain.jsonl"
    no_accuracy.write_text('{"iteration": 1, "loss": 2.3}\n')
    for spec, message in ((tmp_path / "missing.jsonl", "cannot read"),
                          (no_accuracy, "has no line with test_accuracy")):
        result = figures("--out", tmp_path / "figures", "--accuracy", spec, timeout=120)
        assert result.returncode == 1
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("bench.py: error: --accuracy: "), lines
        assert message in lines[0]
        assert not (tmp_path / "figures").exists()


def test_figures_without_out_is_a_usage_error():
    result = figures(timeout=120)
    assert result.returncode == 2 and "figures needs --out DIR" in result.stderr
