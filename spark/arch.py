"""Network stacks written as one string, for --arch.

    conv64-relu-pool-fc10                       the default network
    conv64-relu-pool-conv128-relu-pool-fc10     two conv blocks

Layers are separated by "-" or ",":
    conv<F>[x<K>][s<S>][p<P>]   F filters of KxK (default 3), stride S (1), zero padding P (K // 2)
    relu
    pool[<K>][s<S>]             KxK max pool (default 2), stride S (default K)
    fc<O>                       fully connected to O outputs (the last layer: O = the classes)
"""
import re

_LAYER = {
    "conv": re.compile(r"^conv(?P<filters>\d+)(?:x(?P<size>\d+))?(?:s(?P<stride>\d+))?"
                       r"(?:p(?P<pad>\d+))?$"),
    "pool": re.compile(r"^pool(?P<size>\d+)?(?:s(?P<stride>\d+))?$"),
    "fc": re.compile(r"^fc(?P<outputs>\d+)$"),
    "relu": re.compile(r"^relu$"),
}
SYNTAX = "conv<filters>[x<size>][s<stride>][p<pad>], relu, pool[<size>][s<stride>], fc<outputs>"


def parse_arch(text):
    """An --arch string -> a list of layer dicts (spark.cnn.build_layers' input).

    Raises ValueError naming the part that is not a layer.
    """
    layers = []
    for part in filter(None, re.split(r"[-,\s]+", text.strip().lower())):
        kind = next((k for k, pattern in _LAYER.items() if pattern.match(part)), None)
        if kind is None:
            raise ValueError(f"{part!r} is not a layer (use {SYNTAX})")
        values = {k: int(v) for k, v in _LAYER[kind].match(part).groupdict().items()
                  if v is not None}
        if any(v < 1 for k, v in values.items() if k != "pad"):
            raise ValueError(f"{part!r}: sizes, strides and counts must be at least 1")
        if kind == "conv":
            size = values.get("size", 3)
            layers.append({"type": "conv", "filters": values["filters"], "size": size,
                           "stride": values.get("stride", 1), "pad": values.get("pad", size // 2)})
        elif kind == "pool":
            size = values.get("size", 2)
            layers.append({"type": "pool", "size": size, "stride": values.get("stride", size)})
        elif kind == "fc":
            layers.append({"type": "fc", "outputs": values["outputs"]})
        else:
            layers.append({"type": "relu"})
    if not layers:
        raise ValueError(f"no layers in {text!r} (use {SYNTAX})")
    return layers


def format_arch(arch):
    """A list of layer dicts (as CNN.arch holds them) -> the --arch string."""
    parts = []
    for spec in arch:
        kind = spec["type"]
        if kind == "conv":
            size = spec["size"][0] if isinstance(spec["size"], (list, tuple)) else spec["size"]
            part = f"conv{spec['filters']}"
            if size != 3:
                part += f"x{size}"
            if spec.get("stride", 1) != 1:
                part += f"s{spec['stride']}"
            if spec.get("pad", size // 2) != size // 2:
                part += f"p{spec['pad']}"
        elif kind == "pool":
            size = spec["size"][0] if isinstance(spec["size"], (list, tuple)) else spec["size"]
            part = "pool" + (str(size) if size != 2 else "")
            if spec.get("stride", size) != size:
                part += f"s{spec['stride']}"
        elif kind == "fc":
            part = f"fc{spec['outputs']}"
        else:
            part = kind
        parts.append(part)
    return "-".join(parts)


def canonical_arch(text):
    """An --arch string in its one canonical spelling (defaults left out), e.g.
    "conv64x3-relu-pool2-fc10" -> "conv64-relu-pool-fc10". Raises ValueError."""
    return format_arch(parse_arch(text))


def estimate_bytes(arch, input_shape, dtype="float32", chunk=32, threads=2):
    """Memory a network of `arch` on `input_shape` (H, W, C) needs to train, in bytes,
    without building it -> (total, its parts in words).

    Counted: the parameters three times (values, velocities, gradients) and, for
    `threads` chunks of `chunk` images at once, every layer's output, a conv's
    im2col matrix and the caches kept for the backward pass. An estimate: the
    real figure is a little lower (a fused conv's output is never whole).
    """
    itemsize = 8 if str(dtype) == "float64" else 4
    height, width, channels = (int(s) for s in input_shape)
    params = activations = 0
    for layer in arch:
        kind = layer["type"]
        if kind == "conv":
            size = layer["size"]
            kh, kw = (size, size) if not isinstance(size, (list, tuple)) else size
            kh, kw = int(kh), int(kw)
            stride, pad = int(layer.get("stride", 1)), int(layer.get("pad", 0))
            filters = int(layer["filters"])
            params += kh * kw * channels * filters + filters
            height = (height + 2 * pad - kh) // stride + 1
            width = (width + 2 * pad - kw) // stride + 1
            activations += height * width * (kh * kw * channels + 2 * filters)  # cols, out, cache
            channels = filters
        elif kind == "pool":
            size = layer.get("size", 2)
            size = int(size[0] if isinstance(size, (list, tuple)) else size)
            stride = int(layer.get("stride", size))
            height, width = (height - size) // stride + 1, (width - size) // stride + 1
            activations += height * width * channels
        elif kind == "relu":
            activations += height * width * channels
        elif kind == "fc":
            inputs, outputs = height * width * channels, int(layer["outputs"])
            params += inputs * outputs + outputs
            activations += outputs + inputs
            height, width, channels = 1, 1, outputs
    param_bytes = 3 * params * itemsize
    activation_bytes = threads * chunk * activations * itemsize
    words = (f"parameters, velocities and gradients {bytes_in_words(param_bytes)}, "
             f"{threads} chunks of {chunk} images in flight {bytes_in_words(activation_bytes)}")
    return param_bytes + activation_bytes, words


def bytes_in_words(count):
    """A byte count as people read it: '65 MB', '2.9 GiB'."""
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MB"
