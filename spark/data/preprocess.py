"""Turn stored uint8 images into the network's input.

Pure math: no I/O. Images are NHWC, (N, H, W, C) uint8.
"""
import numpy as np

# Per-channel mean and standard deviation of the CIFAR-10 training images
# (red, green, blue), on the 0..1 scale.
CHANNEL_MEAN = (0.4914, 0.4822, 0.4465)
CHANNEL_STD = (0.2470, 0.2435, 0.2616)


def default_stats(channels):
    """(mean, std) per channel when a run has none of its own (checkpoints written
    before the statistics were the training images'): CIFAR-10's for 3 channels."""
    if channels == 3:
        return CHANNEL_MEAN, CHANNEL_STD
    return (0.5,) * channels, (0.25,) * channels


def normalization(channels, dtype=np.float32, stats=None):
    """The per-channel affine map of normalize_images -> (scale, offset), (C,) `dtype` each.

    An image value v (0..255) becomes v * scale - offset, with scale =
    1 / (255 * std) and offset = mean / std computed in `dtype`. stats:
    (mean, std) as for normalize_images, None for default_stats(channels).
    spark.export puts the same two vectors into its ONNX graph.
    """
    dtype = np.dtype(dtype)
    mean, std = stats if stats is not None else default_stats(channels)
    mean, std = np.asarray(mean, dtype), np.asarray(std, dtype)
    scale = (1.0 / (255.0 * std)).astype(dtype)                    # (C,)
    offset = (mean / std).astype(dtype)                            # (C,)
    return scale, offset


def normalize_images(images, dtype=np.float32, stats=None):
    """(N, H, W, C) uint8 -> (N, H, W, C) `dtype`, per-channel zero mean, unit std.

    stats: (mean, std), C values each on the 0..1 scale (the training images'),
    or None for default_stats. Deterministic: the same uint8 images always
    give bit-identical output, so a Spark task can rebuild a batch's input
    instead of storing it.
    """
    dtype = np.dtype(dtype)
    channels = images.shape[-1]
    scale, offset = normalization(channels, dtype, stats)          # (C,) each
    out = images.astype(dtype, order="C")                          # (N, H, W, C)
    # Scale rows of W*C values by the per-channel factors tiled W times: the
    # same operations on every element as broadcasting (C,), in long loops.
    width = out.shape[-2] if out.ndim > 1 else 1
    rows = out.reshape(-1, width * channels)                       # (N*H, W*C)
    rows *= np.tile(scale, width)
    rows -= np.tile(offset, width)
    return out


def augment_images(images, shift, flip, pad):
    """Random-crop-and-flip augmentation of uint8 images, as drawn by spark.recipe.

    images: (n, H, W, C) uint8; shift: (n, 2) offsets (row, column) into the
    image padded by `pad` zeros on every side, each 0 .. 2 * pad; flip: (n,)
    bool, mirror left-right after the crop. Returns (n, H, W, C) uint8.
    """
    n, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))   # (n, H+2p, W+2p, C)
    rows = shift[:, :1].astype(np.intp) + np.arange(height)             # (n, H)
    cols = shift[:, 1:].astype(np.intp) + np.arange(width)              # (n, W)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def batch_input(images, index, rows, augment=None, dtype=np.float32, stats=None):
    """The network input for `rows` (a slice) of a batch -> (n, H, W, C) `dtype`.

    images: the whole set, (T, H, W, C) uint8; index: (N,) the batch's
    positions in it, or None for images[rows] itself; augment: the batch's
    augmentation draw (spark.recipe.draw_augmentation, N entries) or None;
    stats: the per-channel (mean, std) to normalise with (normalize_images).
    """
    picked = images[rows] if index is None else images[index[rows]]
    if augment is not None:
        picked = augment_images(picked, augment["shift"][rows], augment["flip"][rows],
                                augment["pad"])
    return normalize_images(picked, dtype, stats)


def channel_stats(images, chunk=4096):
    """Per-channel (mean, std) of uint8 images on the 0..1 scale, as tuples of C floats.

    images: (N, H, W, C) uint8, an array or an array-like source read `chunk`
    images at a time (`len`, `.shape`, slices `images[a:b]`); one that has
    `chunks()` (spark.data.parquet's lazy images) is read piece by piece
    without keeping what it read. Each piece is counted into a histogram of
    the 256 values per channel (exact integers); the mean and the population
    standard deviation (ddof 0, as np.std) are computed from the histograms in
    float64, so the result does not depend on how the images are cut. A
    constant channel gets std 1.0 (its scale left alone). ValueError for no
    images or a dtype other than uint8.
    """
    pieces = images.chunks() if hasattr(images, "chunks") else (
        images[start:start + chunk] for start in range(0, len(images), chunk))
    histogram = None                                               # (C, 256)
    for piece in pieces:
        piece = np.asarray(piece)                                  # (n, H, W, C)
        if piece.dtype != np.uint8:
            raise ValueError(f"channel_stats: images must be uint8, got {piece.dtype}")
        pixels = piece.reshape(-1, piece.shape[-1])                # (n*H*W, C)
        if histogram is None:
            histogram = np.zeros((pixels.shape[1], 256), dtype=np.int64)
        for c in range(pixels.shape[1]):
            histogram[c] += np.bincount(pixels[:, c], minlength=256)
    if histogram is None or not histogram.sum():
        raise ValueError("no images to compute channel statistics from")
    values = np.arange(256, dtype=np.float64) / 255.0              # (256,)
    total = histogram.sum(axis=1).astype(np.float64)               # (C,)
    mean = histogram @ values / total                              # (C,)
    var = (histogram * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    std = np.sqrt(var)
    std = np.where(std > 0, std, 1.0)          # a constant channel: leave its scale alone
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
