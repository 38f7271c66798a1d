"""The whole network: gradients, chunking, training, saving and reloading."""
import numpy as np
import pytest
from gradcheck import numerical_gradient, relative_error, sample_indices

from spark.checkpoint import CheckpointError
from spark.cnn import CNN
from spark.data.preprocess import normalize_images
from spark.loss import softmax_loss

SMALL_ARCH = (
    {"type": "conv", "filters": 4, "size": 3, "stride": 1, "pad": 1},
    {"type": "relu"},
    {"type": "pool", "size": 2, "stride": 2},
    {"type": "conv", "filters": 3, "size": (2, 3), "stride": 1, "pad": 1},
    {"type": "relu"},
    {"type": "fc", "outputs": 5},
)


def random_images(rng, n, shape):
    return rng.integers(0, 256, size=(n,) + shape, dtype=np.uint8)


def test_network_gradients_match_numerical():
    rng = np.random.default_rng(0)
    net = CNN(SMALL_ARCH, input_shape=(6, 8, 3), dtype=np.float64, reg=0.1, seed=3)
    x = rng.standard_normal((4, 6, 8, 3))
    labels = rng.integers(0, 5, size=4)

    def total_loss():
        scores, _ = net.forward(x)
        loss, _ = softmax_loss(scores, labels)
        return net.regularize(loss, {k: np.zeros_like(v) for k, v in net.params().items()})

    scores, caches = net.forward(x)
    loss, dscores = softmax_loss(scores, labels)
    grads = net.backward(dscores, caches)
    net.regularize(loss, grads)
    for name, param in net.params().items():
        numeric = numerical_gradient(total_loss, param,
                                     indices=sample_indices(rng, param.size, 40))
        error = relative_error(grads[name], numeric)
        assert error < 1e-6, f"{name}: relative error {error:.2e}"


def test_softmax_loss_of_uniform_scores_is_log_k():
    loss, dscores = softmax_loss(np.zeros((3, 10)), np.array([0, 4, 9]))
    assert loss == pytest.approx(np.log(10))
    np.testing.assert_allclose(dscores.sum(axis=1), 0, atol=1e-12)


def test_chunked_gradients_equal_whole_batch():
    rng = np.random.default_rng(1)
    images = random_images(rng, 11, (8, 8, 3))
    labels = rng.integers(0, 5, size=11)
    arch = SMALL_ARCH[:3] + ({"type": "fc", "outputs": 5},)
    whole = CNN(arch, (8, 8, 3), dtype=np.float64, chunk=11)
    chunked = CNN(arch, (8, 8, 3), dtype=np.float64, chunk=3)
    loss_w, grads_w, _ = whole.loss_and_gradients(images, labels)
    loss_c, grads_c, _ = chunked.loss_and_gradients(images, labels)
    assert loss_c == pytest.approx(loss_w, rel=1e-12)
    for name in grads_w:
        np.testing.assert_allclose(grads_c[name], grads_w[name], rtol=1e-10, atol=1e-14)


def test_normalize_images_is_deterministic_and_centred():
    images = np.random.default_rng(2).integers(0, 256, size=(50, 4, 4, 3), dtype=np.uint8)
    a, b = normalize_images(images), normalize_images(images.copy())
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and abs(float(a.mean())) < 0.5


def test_training_lowers_loss_on_synthetic_data(synthetic_train):
    images, labels = synthetic_train.images[:300], synthetic_train.labels[:300]
    net = CNN(seed=0)
    first = net.train_iteration(images, labels)["loss"]
    for _ in range(14):
        last = net.train_iteration(images, labels)["loss"]
    assert last < 0.7 * first, (first, last)
    assert net.accuracy(images, labels) > 0.5


def test_minibatch_iterations_learn_too(synthetic_train):
    images, labels = synthetic_train.images, synthetic_train.labels
    net = CNN(seed=1)
    before = net.accuracy(images[:500], labels[:500])
    for i in range(30):
        part = slice((i * 50) % 1000, (i * 50) % 1000 + 50)
        net.train_iteration(images[part], labels[part])
    assert net.accuracy(images[:500], labels[:500]) > max(0.4, before + 0.2)


def test_save_and_reload_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    net = CNN(SMALL_ARCH, (6, 8, 3), dtype=np.float64, lr=0.05, momentum=0.5, reg=0.01, seed=4)
    images = random_images(rng, 6, (6, 8, 3))
    labels = rng.integers(0, 5, size=6)
    net.train_iteration(images, labels)
    net.save(tmp_path / "net.npz")
    again = CNN.load(tmp_path / "net.npz")
    assert again.iteration == 1 and again.arch == net.arch and again.dtype == np.float64
    assert (again.lr, again.momentum, again.reg) == (0.05, 0.5, 0.01)
    for name, value in net.params().items():
        np.testing.assert_array_equal(again.params()[name], value)
        np.testing.assert_array_equal(again.velocity[name], net.velocity[name])
    # a resumed run continues exactly like the original one
    a = net.train_iteration(images, labels)["loss"]
    b = again.train_iteration(images, labels)["loss"]
    assert a == b


def test_checkpoint_is_not_a_pickle_and_bad_files_are_refused(tmp_path):
    net = CNN(SMALL_ARCH, (6, 8, 3))
    net.save(tmp_path / "net.npz")
    with np.load(tmp_path / "net.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
    (tmp_path / "bad.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        CNN.load(tmp_path / "bad.npz")
    with pytest.raises(CheckpointError, match="no saved parameters"):
        CNN.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_images_equals_per_channel_broadcast_bit_for_bit(dtype):
    from spark.data.preprocess import CHANNEL_MEAN, CHANNEL_STD
    rng = np.random.default_rng(12)
    for shape in [(4, 32, 32, 3), (3, 5, 7, 1), (2, 4, 6, 2), (0, 4, 4, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        channels = shape[-1]
        mean = np.asarray(CHANNEL_MEAN if channels == 3 else [0.5] * channels, dtype)
        std = np.asarray(CHANNEL_STD if channels == 3 else [0.25] * channels, dtype)
        expected = (images.astype(dtype) * (1.0 / (255.0 * std)).astype(dtype)
                    - (mean / std).astype(dtype))
        for view in (images, images[:, ::-1, ::2]):        # also non-contiguous input
            got = normalize_images(view, dtype)
            want = expected[:, ::-1, ::2] if view is not images else expected
            assert got.dtype == dtype and got.flags.c_contiguous
            assert got.tobytes() == np.ascontiguousarray(want).tobytes()
