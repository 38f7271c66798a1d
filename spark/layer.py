"""What every layer has in common.

A layer is built for one per-image input shape and knows its output shape.
`forward(x)` returns `(out, cache)`; `cache` is a dict of named arrays holding
exactly what `backward` needs and nothing more, so the Spark trainers can store
it between their forward and backward stages. `backward(dout, cache)` returns
`(dx, grads)`; `dx` is None when the layer was told its input needs no gradient
(the first layer of a network), and `grads` maps parameter names to arrays.
"""
import numpy as np


class Layer:
    """Base class. Subclasses set `kind`, `out_shape` and, if they learn, `params`."""

    kind = "layer"

    def __init__(self, name, in_shape, dtype=np.float32):
        self.name = name
        self.in_shape = tuple(int(s) for s in in_shape)
        self.dtype = np.dtype(dtype)
        self.params = {}
        self.out_shape = self.in_shape

    def config(self):
        """The layer's settings as a JSON-ready dict: its entry of an arch list, as
        spark.cnn.build_layers reads it."""
        return {"type": self.kind}

    def configs(self):
        """The arch entries this layer stands for: [config()], except for a
        layer made of several (spark.conv_relu_pool)."""
        return [self.config()]

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout, cache):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.name}: {self.in_shape} -> {self.out_shape})"


def pair(value):
    """An int or a 2-sequence -> (rows, cols)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected one number or two, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def he_normal(rng, shape, fan_in, dtype):
    """He initialisation: normal with standard deviation sqrt(2 / fan_in)."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)
