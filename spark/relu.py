"""Rectified linear unit."""
import numpy as np

from .layer import Layer


class ReLU(Layer):
    """x: (N, ...) -> max(x, 0), same shape.

    Cache: {"mask": uint8}, where x > 0, packed eight positions to a byte along
    the last axis: (N, ..., ceil(C / 8)). One bit per value instead of a copy.
    """

    kind = "relu"

    def forward(self, x):
        positive = x > 0
        return np.maximum(x, 0), {"mask": np.packbits(positive, axis=-1)}

    def backward(self, dout, cache):
        channels = dout.shape[-1]
        positive = np.unpackbits(cache["mask"], axis=-1, count=channels).view(bool)
        return np.multiply(dout, positive, dtype=dout.dtype), {}
