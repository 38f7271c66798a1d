"""conv -> ReLU -> max pool as one layer, a "sandwich" layer in the CS231n sense.

spark.cnn.build_layers picks it for a conv, ReLU and max pool in a row whose
pool windows hold at most 4 values and do not overlap (the default 2x2 stride
2): per block of a few images, im2col, one matrix product and one pass that
adds the bias, pools and applies the ReLU to the pooled values (relu(max) ==
max(relu), exactly). The full-size conv output stays in the CPU cache, and the
full-size ReLU pass and its mask are gone.
"""
import numpy as np

from .im2col import MAX_FUSED_WINDOW, col2im, maxpool_relu_backward, maxpool_relu_forward
from .layer import Layer


class ConvReluPool(Layer):
    """x: (N, H, W, C) -> out: (N, PH, PW, F) = pool(relu(conv(x))).

    Made of the Conv, ReLU and MaxPool layers it stands for, which keep their
    settings; it computes with the conv's parameters W (KH, KW, C, F) and b
    (F,) and takes the conv's name, so they keep their names ("conv1.W").
    The conv gives (N, H', W', F), the pool PH = (H' - PKH) // stride + 1.
    Cache: {"x": x, "argmax": (N, PH, PW, ceil(F/4)) uint8, the window offset
    of each pooled value in 2 bits, "positive": (N, PH, PW, ceil(F/8)) uint8,
    the ReLU mask of the pooled values in bits}; the im2col matrix is rebuilt
    in backward, block by block.
    """

    kind = "conv_relu_pool"
    # Conv output pixels per im2col + matrix product + pooling pass: 4 CIFAR
    # images, whose conv output (1 MB in float32) stays in the L2 cache. Blocks
    # of 2 to 4 images measured fastest (1 BLAS thread).
    block_pixels = 4096

    def __init__(self, conv, relu, pool):
        if not self.fits(conv, relu, pool):
            raise ValueError(f"{conv.name}, {relu.name}, {pool.name}: not a conv, ReLU and a "
                             f"max pool of at most {MAX_FUSED_WINDOW} values a window "
                             "without overlap")
        super().__init__(conv.name, conv.in_shape, conv.dtype)
        self.conv, self.relu, self.pool = conv, relu, pool
        self.params = conv.params
        self.out_shape = pool.out_shape
        self.input_grad = conv.input_grad

    @staticmethod
    def fits(conv, relu, pool):
        """Whether these three layers in a row can run as one ConvReluPool."""
        return ((conv.kind, relu.kind, pool.kind) == ("conv", "relu", "pool")
                and pool.kh * pool.kw <= MAX_FUSED_WINDOW
                and pool.stride >= max(pool.kh, pool.kw))

    def config(self):
        raise TypeError(f"{self.name} stands for three arch entries: use configs()")

    def configs(self):
        return [self.conv.config(), self.relu.config(), self.pool.config()]

    def _blocks(self, n):
        height, width, _ = self.in_shape
        step = max(1, self.block_pixels // max(1, height * width))
        return [slice(start, min(n, start + step)) for start in range(0, n, step)]

    def forward(self, x):
        conv, pool = self.conv, self.pool
        n = x.shape[0]
        height, width, filters = conv.out_shape
        oh, ow, _ = self.out_shape
        weights = self.params["W"].reshape(-1, filters)              # (KH*KW*C, F)
        out = np.empty((n, oh, ow, filters), self.dtype)
        argmax = np.empty((n, oh, ow, (filters + 3) // 4), np.uint8)
        positive = np.empty((n, oh, ow, (filters + 7) // 8), np.uint8)
        for rows in self._blocks(n):
            z = conv.cols(x[rows]) @ weights                         # (B*H'*W', F)
            z = z.reshape((-1, height, width, filters))              # (B, H', W', F)
            out[rows], argmax[rows], positive[rows] = maxpool_relu_forward(
                z, self.params["b"], pool.kh, pool.kw, pool.stride)  # (B, PH, PW, F)
        return out, {"x": x, "argmax": argmax, "positive": positive}

    def backward(self, dout, cache):
        conv, pool = self.conv, self.pool
        x = cache["x"]
        height, width, filters = conv.out_shape
        weights = self.params["W"].reshape(-1, filters)              # (KH*KW*C, F)
        dweights = np.zeros((filters, weights.shape[0]), self.dtype)  # (F, KH*KW*C)
        dbias = np.zeros(filters, np.float64)
        dx = np.empty(x.shape, self.dtype) if self.input_grad else None
        for rows in self._blocks(x.shape[0]):
            dz, db = maxpool_relu_backward(dout[rows], cache["argmax"][rows],
                                           cache["positive"][rows], height, width,
                                           pool.kh, pool.kw, pool.stride)  # (B, H', W', F)
            dz = dz.reshape(-1, filters)                             # (B*H'*W', F)
            dweights += dz.T @ conv.cols(x[rows])                    # as in Conv.backward
            dbias += db
            if dx is not None:
                dx[rows] = col2im(dz @ weights.T, x[rows].shape, conv.kh, conv.kw,
                                  conv.stride, conv.pad)             # (B, H, W, C)
        grads = {"W": dweights.T.reshape(self.params["W"].shape),    # (KH, KW, C, F)
                 "b": dbias.astype(self.dtype)}
        return dx, grads
