"""Turn stored uint8 images into the network's input.

Pure math: no I/O. Images are NHWC, (N, H, W, C) uint8.
"""
import numpy as np

# Per-channel mean and standard deviation of the CIFAR-10 training images
# (red, green, blue), on the 0..1 scale.
CHANNEL_MEAN = (0.4914, 0.4822, 0.4465)
CHANNEL_STD = (0.2470, 0.2435, 0.2616)


def normalize_images(images, dtype=np.float32):
    """(N, H, W, C) uint8 -> (N, H, W, C) `dtype`, per-channel zero mean, unit std.

    Deterministic: the same uint8 images always give bit-identical output, so a
    Spark task can rebuild a batch's input instead of storing it.
    """
    dtype = np.dtype(dtype)
    channels = images.shape[-1]
    mean = np.asarray(CHANNEL_MEAN[:channels] if channels == 3 else [0.5] * channels, dtype)
    std = np.asarray(CHANNEL_STD[:channels] if channels == 3 else [0.25] * channels, dtype)
    scale = (1.0 / (255.0 * std)).astype(dtype)                    # (C,)
    offset = (mean / std).astype(dtype)                            # (C,)
    out = images.astype(dtype)
    out *= scale
    out -= offset
    return out
