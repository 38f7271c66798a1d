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
