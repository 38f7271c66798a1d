"""Numerical gradient checks of every layer, in float64, on assorted shapes."""
import numpy as np
import pytest
from gradcheck import numerical_gradient, relative_error, sample_indices

from spark.conv import Conv
from spark.fc import FullyConnected
from spark.pool import MaxPool
from spark.relu import ReLU

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


# ------------------------------------------- conv -> ReLU -> pool in one pass

def _stack(arch, in_shape, fused, seed=8):
    from spark.cnn import build_layers
    return build_layers(arch, in_shape, np.float64, np.random.default_rng(seed), fuse=fused)


def _params(layers):
    return {f"{layer.name}.{key}": value for layer in layers for key, value in layer.params.items()}


def _run(layers, x, dout):
    caches, out = [], x
    for layer in layers:
        out, cache = layer.forward(out)
        caches.append(cache)
    grads, d = {}, dout
    for layer, cache in zip(reversed(layers), reversed(caches)):
        d, g = layer.backward(d, cache)
        grads.update({f"{layer.name}.{k}": v for k, v in g.items()})
    return out, caches, grads, d


FUSED_ARCHS = [
    ((6, 6, 3), [{"type": "conv", "filters": 5, "size": 3, "stride": 1, "pad": 1},
                 {"type": "relu"}, {"type": "pool", "size": 2, "stride": 2}]),
    ((7, 9, 2), [{"type": "conv", "filters": 70, "size": [2, 3], "stride": 1, "pad": 0},
                 {"type": "relu"}, {"type": "pool", "size": [1, 2], "stride": 3}]),
    ((8, 5, 1), [{"type": "conv", "filters": 3, "size": 1, "stride": 1, "pad": 0},
                 {"type": "conv", "filters": 9, "size": 3, "stride": 2, "pad": 2},
                 {"type": "relu"}, {"type": "pool", "size": [2, 1], "stride": 2}]),
]


@pytest.mark.parametrize("in_shape, arch", FUSED_ARCHS)
def test_fused_conv_relu_pool_equals_the_separate_layers(in_shape, arch, monkeypatch):
    from spark.conv_relu_pool import ConvReluPool
    monkeypatch.setattr(ConvReluPool, "block_pixels", 2 * in_shape[0] * in_shape[1])  # 2 a block
    rng = np.random.default_rng(9)
    fused, plain = _stack(arch, in_shape, True), _stack(arch, in_shape, False)
    sandwich = fused[-1]
    assert isinstance(sandwich, ConvReluPool) and sandwich.name == plain[-3].name
    assert [part.name for part in (sandwich.conv, sandwich.relu, sandwich.pool)] == \
        [layer.name for layer in plain[-3:]]
    assert not any(isinstance(layer, ConvReluPool) for layer in plain)
    assert [c for layer in fused for c in layer.configs()] == [layer.config() for layer in plain]
    for layer in plain:                        # same parameters: a bias that matters
        for value in layer.params.values():
            value[...] = rng.standard_normal(value.shape) * 0.5
    fused_params, plain_params = _params(fused), _params(plain)
    assert list(fused_params) == list(plain_params)
    for name, value in plain_params.items():
        fused_params[name][...] = value
    x = rng.standard_normal((5,) + in_shape)
    dout = rng.standard_normal((5,) + plain[-1].out_shape)
    out_f, caches_f, grads_f, _ = _run(fused, x, dout)
    out_p, _, grads_p, _ = _run(plain, x, dout)
    assert out_f.tobytes() == out_p.tobytes()
    assert set(grads_f) == set(grads_p)
    for name in grads_p:
        np.testing.assert_allclose(grads_f[name], grads_p[name], rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    assert len(caches_f) == len(plain) - 2         # no caches of the ReLU and pool alone
    assert set(caches_f[-1]) == {"x", "argmax", "positive"}


def test_fused_conv_relu_pool_gradients_match_numerical():
    from spark.conv_relu_pool import ConvReluPool
    rng = np.random.default_rng(10)
    conv = Conv("conv", (6, 7, 2), 9, (3, 2), 1, 1, dtype=np.float64, rng=rng)
    relu = ReLU("relu", conv.out_shape, dtype=np.float64)
    pool = MaxPool("pool", conv.out_shape, 2, 2, dtype=np.float64)
    stage = ConvReluPool(conv, relu, pool)
    assert stage.params is conv.params and stage.out_shape == pool.out_shape
    conv.params["b"][...] = rng.standard_normal(9) * 0.3
    x = rng.standard_normal((3, 6, 7, 2))
    check_layer(stage, x, rng)


def test_default_network_fuses_and_stores_less_per_image():
    from spark.cnn import CNN
    from spark.conv_relu_pool import ConvReluPool
    net = CNN()
    sandwich, fc = net.layers
    assert isinstance(sandwich, ConvReluPool) and sandwich.name == "conv1"
    assert [part.name for part in (sandwich.conv, sandwich.relu, sandwich.pool)] == \
        ["conv1", "relu2", "pool3"]
    assert sorted(net.params()) == ["conv1.W", "conv1.b", "fc4.W", "fc4.b"]
    x = np.random.default_rng(11).standard_normal((4, 32, 32, 3)).astype(np.float32)
    scores, caches = net.forward(x)
    stored = sum(a.nbytes for cache in caches for a in cache.values() if a is not x)
    # fc input 16*16*64 float32 + 2-bit argmax + 1-bit ReLU mask of the pooled values
    assert stored / 4 == 16 * 16 * 64 * (4 + 0.25 + 0.125) == 71680
    assert caches[0]["x"] is x
    # the first layer computes no input gradient
    dx, grads = sandwich.backward(np.ones((4,) + sandwich.out_shape, np.float32), caches[0])
    assert sandwich.input_grad is False and dx is None and set(grads) == {"W", "b"}
    with pytest.raises(TypeError, match="configs"):
        sandwich.config()


def test_overlapping_or_large_pool_is_not_fused():
    from spark.cnn import build_layers
    from spark.conv_relu_pool import ConvReluPool
    for pool in ({"type": "pool", "size": 3, "stride": 2},
                 {"type": "pool", "size": 3, "stride": 3}):
        layers = build_layers([{"type": "conv", "filters": 2, "size": 3, "pad": 1},
                               {"type": "relu"}, pool], (8, 8, 1), np.float32,
                              np.random.default_rng(0))
        assert [layer.kind for layer in layers] == ["conv", "relu", "pool"]
        with pytest.raises(ValueError, match="not a conv, ReLU and a max pool"):
            ConvReluPool(*layers)
