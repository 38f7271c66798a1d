"""Numerical gradient checks of every layer, in float64, on assorted shapes."""
import numpy as np
import pytest

from spark.conv import Conv
from spark.fc import FullyConnected
from spark.pool import MaxPool
from spark.relu import ReLU

from gradcheck import numerical_gradient, relative_error, sample_indices

TOLERANCE = 1e-6


def check_layer(layer, x, rng, samples=60):
    """Compare backward() with central differences of sum(forward(x) * dout)."""
    out, cache = layer.forward(x)
    assert out.shape == (x.shape[0],) + layer.out_shape
    dout = rng.standard_normal(out.shape)
    dx, grads = layer.backward(dout, cache)

    def objective():
        return float(np.sum(layer.forward(x)[0] * dout))

    targets = [("x", x, dx)] + [(k, layer.params[k], grads[k]) for k in layer.params]
    for name, array, analytic in targets:
        assert analytic.shape == array.shape, name
        numeric = numerical_gradient(objective, array,
                                     indices=sample_indices(rng, array.size, samples))
        error = relative_error(analytic, numeric)
        assert error < TOLERANCE, f"{layer}: gradient of {name} off by {error:.2e}"


@pytest.mark.parametrize("in_shape, filters, size, stride, pad", [
    ((5, 5, 3), 4, 3, 1, 1),
    ((7, 6, 2), 3, (3, 2), 2, 0),
    ((6, 9, 1), 2, (2, 3), 1, 2),
    ((8, 8, 3), 5, 5, 3, 2),
])
def test_conv_gradients_match_numerical(in_shape, filters, size, stride, pad):
    rng = np.random.default_rng(1)
    layer = Conv("conv", in_shape, filters, size, stride, pad, dtype=np.float64, rng=rng)
    layer.params["b"][...] = rng.standard_normal(filters)
    check_layer(layer, rng.standard_normal((2,) + in_shape), rng)


def test_conv_first_layer_skips_input_gradient():
    rng = np.random.default_rng(2)
    layer = Conv("conv", (4, 4, 3), 2, 3, 1, 1, input_grad=False, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 4, 4, 3))
    out, cache = layer.forward(x)
    dx, grads = layer.backward(np.ones_like(out), cache)
    assert dx is None and set(grads) == {"W", "b"}


def test_relu_gradient_matches_numerical():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5, 11))
    x[np.abs(x) < 1e-3] = 0.5                      # stay off the kink
    check_layer(ReLU("relu", x.shape[1:], dtype=np.float64), x, rng)


def test_relu_mask_is_packed_to_bits():
    x = np.random.default_rng(4).standard_normal((2, 4, 4, 64)).astype(np.float32)
    _, cache = ReLU("relu", x.shape[1:]).forward(x)
    assert cache["mask"].dtype == np.uint8 and cache["mask"].nbytes == x.size // 8


@pytest.mark.parametrize("in_shape, size, stride", [
    ((4, 4, 3), 2, 2),
    ((5, 7, 2), 2, 2),          # leftover row and column
    ((6, 5, 3), 3, 1),          # overlapping windows
    ((7, 7, 2), (2, 3), 2),     # non-square window
    ((9, 8, 1), 2, 3),          # gaps between windows
])
def test_maxpool_gradient_matches_numerical(in_shape, size, stride):
    rng = np.random.default_rng(5)
    layer = MaxPool("pool", in_shape, size, stride, dtype=np.float64)
    # distinct values, far apart relative to h, so no window has a near-tie
    x = rng.permutation(np.prod((2,) + in_shape)).reshape((2,) + in_shape) * 0.01
    check_layer(layer, x.astype(np.float64), rng)


def test_maxpool_matches_direct_window_maximum():
    rng = np.random.default_rng(6)
    layer = MaxPool("pool", (7, 6, 3), 3, 2)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    out, cache = layer.forward(x)
    oh, ow, _ = layer.out_shape
    for i in range(oh):
        for j in range(ow):
            window = x[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :].reshape(2, 9, 3)
            np.testing.assert_array_equal(out[:, i, j], window.max(axis=1))
            np.testing.assert_array_equal(cache["argmax"][:, i, j], window.argmax(axis=1))


@pytest.mark.parametrize("in_shape, outputs", [((4, 3, 2), 5), ((7,), 3)])
def test_fully_connected_gradients_match_numerical(in_shape, outputs):
    rng = np.random.default_rng(7)
    layer = FullyConnected("fc", in_shape, outputs, dtype=np.float64, rng=rng)
    layer.params["b"][...] = rng.standard_normal(outputs)
    check_layer(layer, rng.standard_normal((3,) + in_shape), rng)


def test_layers_reject_impossible_shapes():
    with pytest.raises(ValueError, match="does not fit"):
        Conv("conv", (2, 2, 1), 1, 5, 1, 0)
    with pytest.raises(ValueError, match="does not fit"):
        MaxPool("pool", (1, 4, 1), 2, 2)
