"""Convolution layer on NHWC activations, by im2col and one matrix product.

A conv followed by a ReLU and a small max pool runs as one layer instead,
spark.conv_relu_pool.ConvReluPool, built around the Conv.
"""
import numpy as np

from .im2col import col2im, im2col, output_size
from .layer import Layer, he_normal, pair


class Conv(Layer):
    """x: (N, H, W, C) -> out: (N, OH, OW, F).

    Parameters: W (KH, KW, C, F), b (F,). OH = (H + 2*pad - KH) // stride + 1.
    Cache: {"x": x}, the layer input; the im2col matrix is rebuilt in backward
    rather than kept (it is KH*KW times larger).
    """

    kind = "conv"

    def __init__(self, name, in_shape, filters, size=3, stride=1, pad=0,
                 input_grad=True, dtype=np.float32, rng=None):
        super().__init__(name, in_shape, dtype)
        height, width, channels = self.in_shape
        self.kh, self.kw = pair(size)
        self.stride, self.pad, self.filters = int(stride), int(pad), int(filters)
        if self.stride < 1 or self.pad < 0 or self.filters < 1:
            raise ValueError(f"{name}: need stride >= 1, pad >= 0, filters >= 1")
        try:
            oh = output_size(height, self.kh, self.stride, self.pad)
            ow = output_size(width, self.kw, self.stride, self.pad)
        except ValueError:
            raise ValueError(f"{name}: a {self.kh}x{self.kw} filter does not fit a "
                             f"{height}x{width} input with pad {self.pad}") from None
        self.out_shape = (oh, ow, self.filters)
        self.input_grad = input_grad
        rng = rng or np.random.default_rng(0)
        fan_in = self.kh * self.kw * channels
        self.params = {
            "W": he_normal(rng, (self.kh, self.kw, channels, self.filters), fan_in, self.dtype),
            "b": np.zeros(self.filters, self.dtype),
        }

    def config(self):
        return {"type": self.kind, "filters": self.filters, "size": [self.kh, self.kw],
                "stride": self.stride, "pad": self.pad}

    def cols(self, x):
        """The im2col matrix of x (N, H, W, C) for this layer: (N*OH*OW, KH*KW*C)."""
        return im2col(x, self.kh, self.kw, self.stride, self.pad)

    def forward(self, x):
        n = x.shape[0]
        weights = self.params["W"].reshape(-1, self.filters)         # (KH*KW*C, F)
        out = self.cols(x) @ weights                                 # (N*OH*OW, F)
        out += self.params["b"]
        return out.reshape((n,) + self.out_shape), {"x": x}

    def backward(self, dout, cache):
        x = cache["x"]
        dout2 = dout.reshape(-1, self.filters)                       # (N*OH*OW, F)
        weights = self.params["W"]
        grads = {
            # (F, KH*KW*C) then transposed: OpenBLAS is slow on cols.T @ dout2
            # with several threads (a long, thin inner dimension).
            "W": (dout2.T @ self.cols(x)).T.reshape(weights.shape),  # (KH, KW, C, F)
            "b": dout2.sum(axis=0),
        }
        dx = None
        if self.input_grad:
            dcols = dout2 @ weights.reshape(-1, self.filters).T      # (N*OH*OW, KH*KW*C)
            dx = col2im(dcols, x.shape, self.kh, self.kw, self.stride, self.pad)
        return dx, grads

