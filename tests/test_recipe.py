"""The training recipe: schedules, shuffling, augmentation, label smoothing,
--arch, --eval-every and --per-class, and --resume continuing all of them."""
import json
import math

import numpy as np
import pytest
from gradcheck import numerical_gradient
from sparkjobs import run_script

from spark.arch import format_arch, parse_arch
from spark.cnn import CNN, DEFAULT_ARCH
from spark.data.preprocess import augment_images, batch_input, normalize_images
from spark.evaluation import confusion_matrix, per_class_lines
from spark.loss import softmax_loss
from spark.recipe import batch_indices, draw_augmentation, learning_rate, slice_augmentation

# ----- learning-rate schedules ----------------------------------------------------------

def test_warmup_rises_linearly_then_the_schedule_takes_over():
    rates = [learning_rate(i, 0.1, "cosine", total=20, warmup=4) for i in range(20)]
    np.testing.assert_allclose(rates[:4], [0.025, 0.05, 0.075, 0.1])
    assert rates[4] == pytest.approx(0.1)                        # cosine starts at the base rate
    assert all(a > b for a, b in zip(rates[4:], rates[5:]))      # then falls every iteration
    assert rates[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert learning_rate(12, 0.1, "cosine", total=20, warmup=4) == pytest.approx(0.05)


def test_step_and_constant_schedules():
    step = [learning_rate(i, 1.0, "step", total=100) for i in range(100)]
    assert step[49] == 1.0 and step[50] == pytest.approx(0.1) and step[74] == pytest.approx(0.1)
    assert step[75] == pytest.approx(0.01) and step[99] == pytest.approx(0.01)
    assert {learning_rate(i, 0.3, "constant", total=10) for i in range(10)} == {0.3}
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0, 0.1, "linear", total=10)


# ----- minibatch order --------------------------------------------------------------------

@pytest.mark.parametrize("size", [10, 7])                        # divides 50, does not
def test_shuffle_uses_every_image_once_per_epoch_in_a_new_order(size):
    total = 50
    taken = np.concatenate([batch_indices(i, size, total, seed=3, order="shuffle")
                            for i in range(4 * total // size)])  # whole epochs' worth
    epochs = taken[:len(taken) // total * total].reshape(-1, total)
    for epoch in epochs:
        assert sorted(epoch) == list(range(total))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], np.arange(total))
    again = batch_indices(3, size, total, seed=3, order="shuffle")
    assert np.array_equal(again, taken[3 * size:4 * size])       # a function of (seed, iteration)
    assert not np.array_equal(batch_indices(3, size, total, seed=4, order="shuffle"), again)


def test_cycle_and_full_batch_orders():
    assert list(batch_indices(2, 4, 10, order="cycle")) == [8, 9, 0, 1]
    assert batch_indices(0, 10, 10, order="shuffle") is None
    with pytest.raises(ValueError, match="unknown order"):
        batch_indices(0, 2, 10, order="random")


# ----- augmentation ---------------------------------------------------------------------

def reference_augment(image, shift, flip, pad):
    """One image by hand: pad with zeros, crop, mirror."""
    h, w, c = image.shape
    padded = np.zeros((h + 2 * pad, w + 2 * pad, c), image.dtype)
    padded[pad:pad + h, pad:pad + w] = image
    crop = padded[shift[0]:shift[0] + h, shift[1]:shift[1] + w]
    return crop[:, ::-1] if flip else crop


def test_augmentation_is_a_padded_crop_and_a_flip():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(40, 8, 9, 3), dtype=np.uint8)
    draw = draw_augmentation(seed=1, iteration=5, count=40, pad=2)
    assert draw["shift"].min() == 0 and draw["shift"].max() == 4
    assert 5 < draw["flip"].sum() < 35
    out = augment_images(images, draw["shift"], draw["flip"], 2)
    assert out.dtype == np.uint8 and out.shape == images.shape
    for k in range(40):
        np.testing.assert_array_equal(out[k], reference_augment(images[k], draw["shift"][k],
                                                                draw["flip"][k], 2))
    centre = augment_images(images, np.full((40, 2), 2, np.uint8), np.zeros(40, bool), 2)
    np.testing.assert_array_equal(centre, images)
    again = draw_augmentation(seed=1, iteration=5, count=40, pad=2)
    assert np.array_equal(again["shift"], draw["shift"])
    assert np.array_equal(again["flip"], draw["flip"])
    other = draw_augmentation(seed=1, iteration=6, count=40, pad=2)
    assert not np.array_equal(other["shift"], draw["shift"])
    assert draw_augmentation(seed=1, iteration=5, count=40, pad=None) is None


def test_batch_input_picks_augments_and_normalizes_rows_of_a_batch():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(30, 6, 6, 3), dtype=np.uint8)
    index = rng.permutation(30)[:12]
    draw = draw_augmentation(seed=0, iteration=0, count=12, pad=1)
    rows = slice(4, 9)
    got = batch_input(images, index, rows, draw)
    part = slice_augmentation(draw, rows)
    want = normalize_images(augment_images(images[index[rows]], part["shift"], part["flip"], 1))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(batch_input(images, None, rows), normalize_images(images[rows]))


# ----- label smoothing ----------------------------------------------------------------

def test_label_smoothing_loss_and_gradient():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, 6)
    plain, dplain = softmax_loss(scores, labels)
    loss, dscores = softmax_loss(scores, labels, smoothing=0.2)
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    target = np.full((6, 5), 0.2 / 5)
    target[np.arange(6), labels] += 0.8
    assert loss == pytest.approx(-np.sum(target * np.log(p)) / 6, rel=1e-12)
    assert loss != pytest.approx(plain)
    probe = scores.copy()
    numeric = numerical_gradient(lambda: softmax_loss(probe, labels, smoothing=0.2)[0], probe)
    np.testing.assert_allclose(dscores, numeric, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dscores.sum(axis=1), 0, atol=1e-12)
    assert softmax_loss(scores, labels, smoothing=0.0)[0] == plain
    np.testing.assert_array_equal(softmax_loss(scores, labels, smoothing=0.0)[1], dplain)


# ----- --arch ---------------------------------------------------------------------------

def test_arch_strings():
    assert parse_arch("conv64-relu-pool-fc10") == [dict(spec) for spec in DEFAULT_ARCH]
    deep = parse_arch("conv32-relu-pool, conv64x5s1p2-relu-pool3s2 fc10")
    assert deep[3] == {"type": "conv", "filters": 64, "size": 5, "stride": 1, "pad": 2}
    assert deep[5] == {"type": "pool", "size": 3, "stride": 2}
    net = CNN(arch=deep)
    assert format_arch(net.arch) == "conv32-relu-pool-conv64x5-relu-pool3s2-fc10"
    assert parse_arch(format_arch(net.arch)) == deep
    for bad, says in (("conv-relu", "'conv' is not a layer"), ("conv8-softmax", "'softmax'"),
                      ("conv0-fc10", "at least 1"), ("", "no layers")):
        with pytest.raises(ValueError, match=says):
            parse_arch(bad)


# ----- per-class report ------------------------------------------------------------------

def test_confusion_matrix_and_per_class_lines():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 1])
    matrix = confusion_matrix(labels, predicted, 3)
    assert matrix.tolist() == [[1, 1, 0], [1, 2, 0], [0, 1, 0]]
    lines = per_class_lines(matrix, ["cat", "dog", "frog"])
    assert lines[1].split() == ["cat", "0.5000", "(1", "of", "2)"]
    assert lines[2].split()[:2] == ["dog", "0.6667"] and lines[3].split()[:2] == ["frog", "0.0000"]
    assert lines[-1].split() == ["frog", "0", "1", "0"]


# ----- the trainers' command line -------------------------------------------------------

RECIPE = ["--minibatch", 40, "--lr", 0.02, "--augment", "--schedule", "cosine", "--warmup", 2,
          "--label-smoothing", 0.1, "--eval-every", 3, "--eval-images", 200, "--seed", 4]


def metrics_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_naive_train_follows_the_recipe_and_resumes_it_exactly(synthetic_dir, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    done = run_script("naive_train.py", 200, 8, *RECIPE, "--data-dir", synthetic_dir,
                      "--params-dir", whole, "--metrics", tmp_path / "whole.jsonl")
    assert done.returncode == 0, done.stderr
    records = metrics_of(tmp_path / "whole.jsonl")
    assert [r["iteration"] for r in records] == list(range(1, 9))
    np.testing.assert_allclose([r["lr"] for r in records],
                               [learning_rate(i, 0.02, "cosine", 8, 2) for i in range(8)])
    assert [r["iteration"] for r in records if "test_accuracy" in r] == [3, 6, 8]
    assert all(0 <= r["test_accuracy"] <= 1 for r in records if "test_accuracy" in r)
    assert [r["iteration"] for r in records if r.get("eval_s", 0) > 0] == [3, 6, 8]
    assert [r["epoch"] for r in records][:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert all(b["wall_s"] > a["wall_s"] for a, b in zip(records, records[1:]))
    assert "iteration 3: test accuracy " in done.stdout

    for total in (5, 8):                            # stop at 5 of the 8, then resume to 8
        flags = (RECIPE + ["--schedule-length", 8, "--save-every", 2] if total == 5 else
                 ["--resume", "--eval-every", 3, "--eval-images", 200])
        part = run_script("naive_train.py", 200, total, *flags, "--data-dir", synthetic_dir,
                          "--params-dir", split, "--metrics", tmp_path / "split.jsonl")
        assert part.returncode == 0, part.stderr
    resumed = metrics_of(tmp_path / "split.jsonl")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records]
    assert [r["lr"] for r in resumed][5:] == [r["lr"] for r in records][5:]
    a, b = CNN.load(whole / "naive.npz"), CNN.load(split / "naive.npz")
    for name, p in a.params().items():
        np.testing.assert_array_equal(b.params()[name], p)
    assert b.label_smoothing == 0.1 and b.run_info["augment"] is True


def test_augmentation_and_order_change_the_run(synthetic_dir, tmp_path):
    losses = {}
    for name, flags in (("plain", ["--order", "cycle"]), ("shuffled", []),
                        ("augmented", ["--order", "cycle", "--augment"])):
        result = run_script("naive_train.py", 200, 3, "--minibatch", 50, *flags,
                            "--data-dir", synthetic_dir, "--params-dir", tmp_path / name,
                            "--metrics", tmp_path / f"{name}.jsonl")
        assert result.returncode == 0, result.stderr
        losses[name] = [r["loss"] for r in metrics_of(tmp_path / f"{name}.jsonl")]
    # the first minibatch: other images (shuffled), the same images cropped and flipped (augmented)
    assert losses["plain"][0] != losses["shuffled"][0]
    assert losses["plain"][0] != losses["augmented"][0]
    assert abs(losses["plain"][0] - losses["augmented"][0]) < 0.5   # but still the same images


def test_arch_trains_evaluates_per_class_and_is_kept_on_resume(synthetic_dir, tmp_path):
    params = tmp_path / "params"
    common = ["--data-dir", synthetic_dir, "--params-dir", params]
    result = run_script("naive_train.py", 100, 2, "--arch", "conv8-relu-pool-conv8-relu-pool-fc10",
                        *common)
    assert result.returncode == 0, result.stderr
    net = CNN.load(params / "naive.npz")
    assert [spec["type"] for spec in net.arch] == ["conv", "relu", "pool"] * 2 + ["fc"]
    assert net.params()["conv4.W"].shape == (3, 3, 8, 8)

    report = run_script("naive_test.py", 150, "--per-class", *common)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    start = lines.index("confusion matrix (rows: true class, columns: predicted):")
    rows = [[int(v) for v in line.split()[1:]] for line in lines[start + 2:start + 12]]
    assert np.array(rows).shape == (10, 10) and np.array(rows).sum() == 150
    correct = int(lines[0].split()[0])
    assert np.trace(np.array(rows)) == correct
    assert lines[-1].startswith("accuracy ")

    again = run_script("naive_train.py", 100, 3, "--resume", "--arch", "conv8-relu-pool-fc10",
                       *common)
    assert again.returncode == 2
    assert "--arch conv8-relu-pool-fc10 contradicts" in again.stderr
    assert "conv8-relu-pool-conv8-relu-pool-fc10" in again.stderr
    same = run_script("naive_train.py", 100, 3, "--resume",
                      "--arch", "conv8-relu-pool-conv8-relu-pool-fc10", *common)
    assert same.returncode == 0, same.stderr


@pytest.mark.parametrize("flags, says", [
    (["--arch", "conv8-sigmoid-fc10"], "'sigmoid' is not a layer"),
    (["--label-smoothing", "1"], "expected a number below 1"),
    (["--schedule", "linear"], "invalid choice"),
    (["--arch", "conv8-relu-pool"], "the last layer must be fully connected"),
])
def test_bad_recipe_flags_are_one_line_errors(flags, says, synthetic_dir, tmp_path):
    result = run_script("naive_train.py", 20, 1, *flags, "--data-dir", synthetic_dir,
                        "--params-dir", tmp_path)
    assert result.returncode in (1, 2)
    assert says in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error:" in line]) == 1
    assert not (tmp_path / "naive.npz").exists()


def test_save_every_saves_less_often(synthetic_dir, tmp_path):
    """A run that diverges after a few iterations: saved after every iteration by
    default, but not at all when the next save was still to come."""
    saved_iterations = {}
    for every in (1, 100):
        params = tmp_path / str(every)
        result = run_script("naive_train.py", 60, 20, "--lr", 1e8, "--save-every", every,
                            "--data-dir", synthetic_dir, "--params-dir", params)
        assert result.returncode == 1 and "training diverged" in result.stderr, result.stderr
        path = params / "naive.npz"
        saved_iterations[every] = CNN.load(path).iteration if path.exists() else None
    assert saved_iterations[1] >= 1 and saved_iterations[100] is None


def test_nesterov_momentum_steps_along_the_new_velocity():
    plain, ahead = CNN(seed=1, lr=0.1, momentum=0.9), CNN(seed=1, lr=0.1, momentum=0.9,
                                                          nesterov=True)
    start = {k: v.copy() for k, v in ahead.params().items()}
    rng = np.random.default_rng(0)
    steps = [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in start.items()}
             for _ in range(2)]
    velocity = {k: np.zeros_like(v) for k, v in start.items()}
    expected = {k: v.copy() for k, v in start.items()}
    for grads in steps:
        plain.update(grads)
        ahead.update(grads, lr=0.05)
        for k in expected:
            velocity[k] = 0.9 * velocity[k] - 0.05 * grads[k]
            expected[k] += 0.9 * velocity[k] - 0.05 * grads[k]
    for k, p in ahead.params().items():
        np.testing.assert_allclose(p, expected[k], rtol=1e-5, atol=1e-6)
        assert not np.allclose(p, plain.params()[k])


def test_nesterov_is_saved_and_resumed(synthetic_dir, tmp_path):
    result = run_script("naive_train.py", 60, 2, "--nesterov", "--minibatch", 20,
                        "--data-dir", synthetic_dir, "--params-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert CNN.load(tmp_path / "naive.npz").nesterov is True
    again = run_script("naive_train.py", 60, 3, "--resume", "--data-dir", synthetic_dir,
                       "--params-dir", tmp_path)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert CNN.load(tmp_path / "naive.npz").nesterov is True
