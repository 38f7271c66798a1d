"""Max pooling on NHWC activations.

The work is done by spark.im2col.maxpool_forward / maxpool_backward: the
native core (tight loops over the contiguous channel axis, GIL released) when
the extension is loaded, otherwise the bit-identical NumPy reference that
treats each of the KH*KW window offsets as a strided view of the input.
Overlapping windows (stride < size) and gaps (stride > size) both work.
"""
import numpy as np

from .im2col import maxpool_backward, maxpool_forward, output_size
from .layer import Layer, pair


class MaxPool(Layer):
    """x: (N, H, W, C) -> out: (N, OH, OW, C), OH = (H - KH) // stride + 1.

    Cache: {"argmax": uint8 (N, OH, OW, C)}, the offset kh*KW + kw of each
    window's maximum (the first one on ties).
    """

    kind = "pool"

    def __init__(self, name, in_shape, size=2, stride=None, dtype=np.float32):
        super().__init__(name, in_shape, dtype)
        height, width, channels = self.in_shape
        self.kh, self.kw = pair(size)
        self.stride = int(stride if stride is not None else self.kh)
        if self.kh * self.kw > 256 or self.stride < 1:
            raise ValueError(f"{name}: need a window of at most 256 values and stride >= 1")
        try:
            oh = output_size(height, self.kh, self.stride, 0)
            ow = output_size(width, self.kw, self.stride, 0)
        except ValueError:
            raise ValueError(f"{name}: a {self.kh}x{self.kw} window does not fit a "
                             f"{height}x{width} input") from None
        self.out_shape = (oh, ow, channels)

    def config(self):
        return {"type": self.kind, "size": [self.kh, self.kw], "stride": self.stride}

    def forward(self, x):
        out, argmax = maxpool_forward(x, self.kh, self.kw, self.stride)  # (N, OH, OW, C)
        return out, {"argmax": argmax}

    def backward(self, dout, cache):
        height, width, _ = self.in_shape
        dx = maxpool_backward(dout, cache["argmax"], height, width,
                              self.kh, self.kw, self.stride)       # (N, H, W, C)
        return dx, {}
