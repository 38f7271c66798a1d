"""Fully connected (affine) layer."""
import numpy as np

from .layer import Layer, he_normal


class FullyConnected(Layer):
    """x: (N, *in_shape) -> out: (N, M), out = x.reshape(N, D) @ W + b.

    Parameters: W (D, M), b (M,), D = prod(in_shape), W drawn He-style times
    `init_scale`. Cache: {"x": (N, D)}.
    """

    kind = "fc"

    def __init__(self, name, in_shape, outputs, input_grad=True, init_scale=1.0,
                 dtype=np.float32, rng=None):
        super().__init__(name, in_shape, dtype)
        self.outputs = int(outputs)
        self.out_shape = (self.outputs,)
        self.input_grad = input_grad
        fan_in = int(np.prod(self.in_shape))
        rng = rng or np.random.default_rng(0)
        self.params = {
            "W": init_scale * he_normal(rng, (fan_in, self.outputs), fan_in, self.dtype),
            "b": np.zeros(self.outputs, self.dtype),
        }

    def config(self):
        return {"type": self.kind, "outputs": self.outputs}

    def forward(self, x):
        x2 = x.reshape(x.shape[0], -1)                                # (N, D)
        out = x2 @ self.params["W"]                                   # (N, M)
        out += self.params["b"]
        return out, {"x": x2}

    def backward(self, dout, cache):
        x2 = cache["x"]
        grads = {"W": x2.T @ dout, "b": dout.sum(axis=0)}
        dx = None
        if self.input_grad:
            dx = (dout @ self.params["W"].T).reshape((dout.shape[0],) + self.in_shape)
        return dx, grads
