"""Max pooling on NHWC activations.

Each of the KH*KW window offsets is a strided view of the input, so pooling is
KH*KW whole-array comparisons with no im2col copy; overlapping windows
(stride < size) work the same way.
"""
import numpy as np

from .im2col import output_size
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

    def _window(self, a, i, j):
        """The view of `a` (N, H, W, C) seen at window offset (i, j): (N, OH, OW, C)."""
        oh, ow, _ = self.out_shape
        s = self.stride
        return a[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :]

    def forward(self, x):
        out = self._window(x, 0, 0).copy()                            # (N, OH, OW, C)
        argmax = np.zeros(out.shape, np.uint8)
        for offset in range(1, self.kh * self.kw):
            view = self._window(x, *divmod(offset, self.kw))
            larger = view > out
            np.copyto(out, view, where=larger)
            np.copyto(argmax, offset, where=larger)
        return out, {"argmax": argmax}

    def backward(self, dout, cache):
        argmax = cache["argmax"]
        n = dout.shape[0]
        dx = np.zeros((n,) + self.in_shape, dout.dtype)              # (N, H, W, C)
        overlapping = self.stride < max(self.kh, self.kw)
        for offset in range(self.kh * self.kw):
            chosen = argmax == offset
            target = self._window(dx, *divmod(offset, self.kw))
            if overlapping:
                target += np.where(chosen, dout, 0)
            else:
                np.copyto(target, dout, where=chosen)
        return dx, {}
