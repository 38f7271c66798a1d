"""Convolution layer on NHWC activations, by im2col and one matrix product.

A conv followed by a ReLU and a max pool whose windows hold at most 4 values
and do not overlap (the default 2x2 stride 2) runs as one stage: see
`fuse_conv_relu_pool`.
"""
import numpy as np

from .im2col import (MAX_FUSED_WINDOW, col2im, im2col, maxpool_relu_backward,
                     maxpool_relu_forward, output_size)
from .layer import Layer, he_normal, pair


class Conv(Layer):
    """x: (N, H, W, C) -> out: (N, OH, OW, F).

    Parameters: W (KH, KW, C, F), b (F,). OH = (H + 2*pad - KH) // stride + 1.
    Cache: {"x": x}, the layer input; the im2col matrix is rebuilt in backward
    rather than kept (it is KH*KW times larger). Once fused with the ReLU and
    pool that follow (`fuse`), forward returns the pooled output and the cache
    also holds the packed pooling argmax and ReLU mask.
    """

    kind = "conv"
    # Conv output pixels per im2col + matrix product + pooling pass of a fused
    # conv: 4 CIFAR images, whose conv output (1 MB in float32) stays in the
    # L2 cache. Blocks of 2 to 4 images measured fastest (1 BLAS thread).
    block_pixels = 4096

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
        self.pool = None            # (kh, kw, stride, pooled shape) once fused

    def fuse(self, relu, pool):
        """Take over the ReLU and max pool that follow this layer.

        forward then returns the pooled output, (N, *pool.out_shape), with
        cache {"x": input, "argmax": (N, OH, OW, ceil(F/4)) uint8 2-bit window
        offsets, "positive": (N, OH, OW, ceil(F/8)) uint8 ReLU mask bits of
        the pooled values}; backward takes the gradient of that output. The
        ReLU is applied after the pooling (relu(max) == max(relu), exactly),
        so the full-size ReLU pass and its mask are gone. `relu` and `pool`
        pass their input through from then on.
        """
        self.pool = (pool.kh, pool.kw, pool.stride, pool.out_shape)
        relu.absorbed_by = pool.absorbed_by = self.name

    def config(self):
        return {"type": self.kind, "filters": self.filters, "size": [self.kh, self.kw],
                "stride": self.stride, "pad": self.pad}

    def _cols(self, x):
        return im2col(x, self.kh, self.kw, self.stride, self.pad)  # (N*OH*OW, KH*KW*C)

    def _blocks(self, n):
        height, width, _ = self.in_shape
        step = max(1, self.block_pixels // max(1, height * width))
        return [slice(start, min(n, start + step)) for start in range(0, n, step)]

    def _forward_pooled(self, x):
        kh, kw, stride, (oh, ow, filters) = self.pool
        n = x.shape[0]
        height, width, _ = self.out_shape
        weights = self.params["W"].reshape(-1, filters)              # (KH*KW*C, F)
        out = np.empty((n, oh, ow, filters), self.dtype)
        argmax = np.empty((n, oh, ow, (filters + 3) // 4), np.uint8)
        positive = np.empty((n, oh, ow, (filters + 7) // 8), np.uint8)
        for rows in self._blocks(n):
            conv = self._cols(x[rows]) @ weights                    # (B*H'*W', F)
            conv = conv.reshape((-1, height, width, filters))       # (B, H', W', F)
            out[rows], argmax[rows], positive[rows] = maxpool_relu_forward(
                conv, self.params["b"], kh, kw, stride)              # (B, OH, OW, F)
        return out, {"x": x, "argmax": argmax, "positive": positive}

    def _backward_pooled(self, dout, cache):
        kh, kw, stride, _ = self.pool
        x = cache["x"]
        height, width, filters = self.out_shape
        weights = self.params["W"].reshape(-1, filters)              # (KH*KW*C, F)
        dweights = np.zeros((filters, weights.shape[0]), self.dtype)  # (F, KH*KW*C)
        dbias = np.zeros(filters, np.float64)
        dx = np.empty(x.shape, self.dtype) if self.input_grad else None
        for rows in self._blocks(x.shape[0]):
            dconv, db = maxpool_relu_backward(dout[rows], cache["argmax"][rows],
                                              cache["positive"][rows], height, width,
                                              kh, kw, stride)        # (B, H', W', F)
            dconv = dconv.reshape(-1, filters)                      # (B*H'*W', F)
            dweights += dconv.T @ self._cols(x[rows])                # see backward
            dbias += db
            if dx is not None:
                dx[rows] = col2im(dconv @ weights.T, x[rows].shape, self.kh, self.kw,
                                  self.stride, self.pad)
        grads = {"W": dweights.T.reshape(self.params["W"].shape),
                 "b": dbias.astype(self.dtype)}
        return dx, grads

    def forward(self, x):
        if self.pool is not None:
            return self._forward_pooled(x)
        n = x.shape[0]
        weights = self.params["W"].reshape(-1, self.filters)         # (KH*KW*C, F)
        out = self._cols(x) @ weights                                # (N*OH*OW, F)
        out += self.params["b"]
        return out.reshape((n,) + self.out_shape), {"x": x}

    def backward(self, dout, cache):
        if self.pool is not None:
            return self._backward_pooled(dout, cache)
        x = cache["x"]
        dout2 = dout.reshape(-1, self.filters)                       # (N*OH*OW, F)
        weights = self.params["W"]
        grads = {
            # (F, KH*KW*C) then transposed: OpenBLAS is slow on cols.T @ dout2
            # with several threads (a long, thin inner dimension).
            "W": (dout2.T @ self._cols(x)).T.reshape(weights.shape),  # (KH, KW, C, F)
            "b": dout2.sum(axis=0),
        }
        dx = None
        if self.input_grad:
            dcols = dout2 @ weights.reshape(-1, self.filters).T      # (N*OH*OW, KH*KW*C)
            dx = col2im(dcols, x.shape, self.kh, self.kw, self.stride, self.pad)
        return dx, grads


def fuse_conv_relu_pool(layers):
    """Run every conv -> ReLU -> max pool of `layers` as one stage (Conv.fuse)
    where the pool's windows hold at most 4 values and do not overlap.

    Parameters, configs and shapes stay as they are; only the caches change.
    """
    for conv, relu, pool in zip(layers, layers[1:], layers[2:]):
        if (conv.kind, relu.kind, pool.kind) == ("conv", "relu", "pool") \
                and pool.kh * pool.kw <= MAX_FUSED_WINDOW \
                and pool.stride >= max(pool.kh, pool.kw):
            conv.fuse(relu, pool)
    return layers
