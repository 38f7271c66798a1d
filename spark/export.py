"""A trained network as an ONNX model, for ONNX Runtime and other ONNX tools.

    python3 -m spark.export CHECKPOINT OUT.onnx [--opset N]

`export_onnx(net, path=None, opset=DEFAULT_OPSET)` builds the model of a
spark.cnn.CNN (and writes it when given a path); the command line loads a
trainer's checkpoint with CNN.load and calls it.

The graph, for a network on (H, W, C) images with K classes:

    images    uint8 (N, H, W, C), N dynamic ("batch"): the images as stored
    Cast      -> float32 (N, H, W, C)
    Mul, Sub  v * scale - offset per channel (spark.data.preprocess.normalization,
              the network's input statistics): the trainer's own input, in NHWC
    Transpose -> (N, C, H, W): the one layout change; ONNX's Conv and MaxPool are NCHW
    Conv      W (KH, KW, C, F) stored as (F, C, KH, KW); pads = the layer's pad on all sides
    Relu
    MaxPool   the layer's window and stride, no padding, floor (ceil_mode 0)
    Flatten   before the first fc: (N, C*H*W) in NCHW order, so that fc's weights
              (H*W*C, M), whose rows follow NHWC order, are stored with their rows
              permuted to (C, H, W) order; later fc layers take (N, D) as it is
    Gemm      x @ W + b
    scores         float32 (N, K), the last layer's output (CNN.predict_scores)
    probabilities  float32 (N, K), Softmax of the scores over the classes

A conv, ReLU and pool that the trainer runs as one ConvReluPool are exported
as the three nodes (it pools before the ReLU: the same numbers, exactly).
The graph computes in float32 whatever the network's dtype: ONNX Runtime's
CPU Conv takes float32 only. The model's metadata (metadata_props, strings):
arch, input_shape (JSON [H, W, C]), input ("uint8 NHWC ..."), input_stats
(JSON {"mean": [...], "std": [...]}), iteration, num_classes, class_names
(JSON, when the checkpoint has them), network_dtype.

onnx is an optional extra (`pip install spark-cnn[onnx]`): it is imported
only when a model is built, and nothing else in the package imports it.
"""
import argparse
import contextlib
import json
import numbers
import os
import sys

import numpy as np

from . import __version__
from .arch import format_arch
from .checkpoint import CheckpointError
from .cnn import CNN
from .data.preprocess import default_stats, normalization

PROG = "python3 -m spark.export"
INSTALL_HINT = "pip install spark-cnn[onnx] (or pip install onnx)"
# Softmax, Cast, Gemm and the rest as they are from opset 13 on; ONNX Runtime 1.31
# loads models of opsets 13 to 26 (tried), and the tests run the default, 21.
MIN_OPSET = 13
DEFAULT_OPSET = 21
INPUT, SCORES, PROBABILITIES = "images", "scores", "probabilities"
KNOWN_LAYERS = ("conv", "relu", "pool", "fc")


class ExportError(Exception):
    """The network cannot be exported or the model cannot be written (exit code 1)."""


def import_onnx():
    """The onnx module -> onnx; ExportError saying how to install it when it is missing."""
    try:
        import onnx
        import onnx.checker
        import onnx.defs
        import onnx.helper
        import onnx.numpy_helper
    except ImportError:
        raise ExportError(f"onnx is not installed: {INSTALL_HINT}") from None
    return onnx


def plain_layers(net):
    """The layers of `net`, one per arch entry: a ConvReluPool as its conv, ReLU and pool."""
    for layer in net.layers:
        if layer.kind == "conv_relu_pool":
            yield from (layer.conv, layer.relu, layer.pool)
        else:
            yield layer


class _Graph:
    """Nodes and initializers (float32 weights) as they are added, in order."""

    def __init__(self, onnx):
        self.onnx, self.helper, self.numpy_helper = onnx, onnx.helper, onnx.numpy_helper
        self.nodes, self.initializers = [], []

    def weight(self, name, array, dtype=np.float32):
        self.initializers.append(self.numpy_helper.from_array(
            np.ascontiguousarray(array, dtype=dtype), name))
        return name

    def node(self, op, inputs, output, name=None, **attributes):
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=name or output,
                                                **attributes))
        return output


def _normalize(graph, net, x):
    """uint8 NHWC `x` -> float32 NCHW, normalised as CNN.predict_scores does."""
    # The trainer's own constants, computed in the network's dtype (then float32).
    scale, offset = normalization(net.input_shape[-1], net.dtype, net.input_stats)  # (C,)
    x = graph.node("Cast", [x], "input_float", to=graph.onnx.TensorProto.FLOAT)  # (N, H, W, C)
    x = graph.node("Mul", [x, graph.weight("input_scale", scale)], "input_scaled")
    x = graph.node("Sub", [x, graph.weight("input_offset", offset)], "input_normalized")
    return graph.node("Transpose", [x], "input_nchw", perm=[0, 3, 1, 2])       # (N, C, H, W)


def _layer(graph, layer, x, out):
    """Add one layer's nodes reading `x` (NCHW, or (N, D) after an fc) -> its output `out`."""
    name, kind = layer.name, layer.kind
    if kind == "conv":
        weights = layer.params["W"].transpose(3, 2, 0, 1)                      # (F, C, KH, KW)
        pad = layer.pad
        return graph.node("Conv", [x, graph.weight(f"{name}.W", weights),
                                   graph.weight(f"{name}.b", layer.params["b"])], out,
                          name=name, kernel_shape=[layer.kh, layer.kw],
                          strides=[layer.stride] * 2, pads=[pad, pad, pad, pad])
    if kind == "relu":
        return graph.node("Relu", [x], out, name=name)
    if kind == "pool":
        return graph.node("MaxPool", [x], out, name=name, kernel_shape=[layer.kh, layer.kw],
                          strides=[layer.stride] * 2, ceil_mode=0)
    if kind == "fc":
        weights = layer.params["W"]                                            # (D, M)
        if len(layer.in_shape) == 3:
            # NCHW activation: flatten it in (C, H, W) order and permute W's rows,
            # which follow the trainer's NHWC order (H, W, C), to match.
            height, width, channels = layer.in_shape
            weights = (weights.reshape(height, width, channels, -1)
                       .transpose(2, 0, 1, 3).reshape(height * width * channels, -1))
            x = graph.node("Flatten", [x], f"{name}_flat", axis=1)             # (N, C*H*W)
        return graph.node("Gemm", [x, graph.weight(f"{name}.W", weights),
                                   graph.weight(f"{name}.b", layer.params["b"])], out,
                          name=name)
    raise ExportError(f"layer {name} ({kind}) cannot be exported: spark.export knows "
                      f"{', '.join(KNOWN_LAYERS)}; export a network of those layers")


def metadata(net):
    """The model's metadata: name -> string (JSON for lists)."""
    mean, std = net.input_stats or default_stats(net.input_shape[-1])
    meta = {
        "arch": format_arch(net.arch),
        "input_shape": json.dumps(list(net.input_shape)),
        "input": "uint8 NHWC (N, H, W, C), values 0..255, normalised inside the graph",
        "input_stats": json.dumps({"mean": list(mean), "std": list(std)}),
        "iteration": str(net.iteration),
        "num_classes": str(net.num_classes),
        "outputs": f"{SCORES}: class scores (N, K); {PROBABILITIES}: their softmax",
        "network_dtype": net.dtype.name,
    }
    if net.class_names is not None:
        meta["class_names"] = json.dumps(list(net.class_names))
    return meta


def export_onnx(net, path=None, opset=DEFAULT_OPSET):
    """`net` (a spark.cnn.CNN) as an ONNX model -> onnx.ModelProto, written to `path` if given.

    Input `images`: uint8 (N, H, W, C); outputs `scores` and `probabilities`:
    float32 (N, K). The model passes onnx.checker.check_model(full_check=True).
    Raises ExportError: onnx missing, an opset out of range, a layer the
    exporter does not know, a path that cannot be written.
    """
    onnx = import_onnx()
    helper = onnx.helper
    newest = onnx.defs.onnx_opset_version()
    if (isinstance(opset, bool) or not isinstance(opset, numbers.Integral)
            or not MIN_OPSET <= opset <= newest):
        raise ExportError(f"opset {opset!r} is not one this exporter writes: use one from "
                          f"{MIN_OPSET} to {newest} (default {DEFAULT_OPSET})")
    opset = int(opset)
    graph = _Graph(onnx)
    layers = list(plain_layers(net))
    x = _normalize(graph, net, INPUT)
    for index, layer in enumerate(layers):
        last = index == len(layers) - 1
        x = _layer(graph, layer, x, SCORES if last else f"{layer.name}_out")
    graph.node("Softmax", [SCORES], PROBABILITIES, axis=1)

    float32, uint8 = onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8
    classes = net.num_classes
    inputs = [helper.make_tensor_value_info(INPUT, uint8, ["batch", *net.input_shape])]
    outputs = [helper.make_tensor_value_info(name, float32, ["batch", classes])
               for name in (SCORES, PROBABILITIES)]
    arch = format_arch(net.arch)
    body = helper.make_graph(graph.nodes, "spark_cnn", inputs, outputs, graph.initializers,
                             doc_string=f"spark-cnn {arch} on {net.describe_input()} images")
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(body, opset_imports=opsets, producer_name="spark-cnn",
                              producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    helper.set_model_props(model, metadata(net))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"the exported graph fails onnx's checker ({first}): a bug of "
                          "spark.export, please report it with the checkpoint's --arch") from None
    if path is not None:
        write_model(model, path)
    return model


def write_model(model, path):
    """Write `model` (an onnx.ModelProto) to `path` -> its size in bytes; ExportError if
    the path cannot be written (a partial file is removed)."""
    data = model.SerializeToString()
    opened = False
    try:
        with open(path, "wb") as f:
            opened = True
            f.write(data)
    except OSError as e:
        if opened:                      # a disk that filled up: no half model left behind
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise ExportError(f"cannot write {path}: {e.strerror or e}; "
                          "give an output path in a folder that exists and is writable") from None
    return len(data)


def describe(net, path, size):
    """The command's success line."""
    names = net.class_names
    classes = f"{net.num_classes} classes"
    if names is not None:
        shown = names if len(names) <= 10 else [*names[:9], "..."]
        classes += f" ({', '.join(shown)})"
    shape = ", ".join(str(s) for s in net.input_shape)
    return f"wrote {path}: input [N, {shape}] uint8 NHWC, {classes}, {size / 1024:.1f} KB"


# ----- command line ---------------------------------------------------------------

def parser():
    p = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="Export a trained network (a trainer's checkpoint) as an ONNX model: "
                    "uint8 NHWC images in, normalised inside the graph; class scores and "
                    "their softmax out. Needs onnx: " + INSTALL_HINT + ".")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a trainer's checkpoint, e.g. params/naive.npz")
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset of the model, {MIN_OPSET} or newer (default "
                        f"{DEFAULT_OPSET}; ONNX Runtime 1.31 runs {MIN_OPSET} to 26)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        import_onnx()          # without onnx: one line, before the checkpoint is read
        if not os.path.exists(args.checkpoint):
            raise CheckpointError(f"no checkpoint at {args.checkpoint}: give the file a trainer "
                                  "saved (params/naive.npz, spark.npz or locality.npz)")
        net = CNN.load(args.checkpoint)
        if os.path.exists(args.out) and os.path.samefile(args.out, args.checkpoint):
            raise ExportError(f"{args.out} is the checkpoint itself: give another output path")
        export_onnx(net, args.out, opset=args.opset)
        print(describe(net, args.out, os.path.getsize(args.out)), flush=True)
    except (ExportError, CheckpointError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
