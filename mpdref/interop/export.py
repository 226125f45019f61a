"""mpdref models out: ONNX that onnxruntime runs, and safetensors holding the state_dict.

    export_onnx("runs/mpd-lenet-300-100/model.h5", "mpd.onnx")        # MPD masks: the block form
    export_safetensors(net, "lenet.safetensors")                      # parameters, and masks as mask.NAME

The ONNX graph (opset `OPSET`, 17) takes ``input`` (N, 1, 28, 28), MNIST images normalized as
`mpdref.data.to_network_input` does, and gives ``logits`` (N, 10), in float32 (a float64
network's weights are rounded; onnxruntime has no float64 Conv, so dtype=float64 suits only
networks without one). Two forms:

- dense: one node per layer, as PyTorch's exporter writes the same network: Flatten; Gemm
  (transB = 1: y = x·Wᵀ + b, W (out, in) as stored); Conv; MaxPool; Relu. Dropout is left out
  (inference). Pruned weights are zeros.
- blocks (MPD): a weight trained under M = P_r B P_cᵀ (`mpdref.mpd.masks`) is its k blocks
  alone, as `mpdref.mpd.to_block_diagonal` lays them out: per block b, a Gather of the inputs it
  reads (the permutations of consecutive layers composed into one index per block) and a Gemm
  (dense) or Conv (conv) with that block's weight W_b (r_b, c_b[, KH, KW]) and bias; the blocks'
  outputs are joined by a Concat in block order, and a last Gather puts the logits back in class
  order. Only the kept weights are stored: the file is about as many times smaller as the masks
  keep fewer weights (plus one int64 per input position for the indices).

"auto" chooses the block form when every masked weight of the network has permuted block-diagonal
structure (`mpdref.mpd.weight_structure` recovers it from the bare mask) and one has more than one
block; else dense. A model file is an HDF5 model (`mpdref.models.load`) or an .mpdz file
(`mpdref.compress.decompress`).

The safetensors file holds the state_dict under PyTorch's names (``fc1.weight``), and each mask
under ``mask.`` and its weight's name (``mask.fc1.weight``, bool, True = kept); its metadata says
``format = mpdref-state-dict``, its version, the architecture and mpdref's version, so that
`mpdref.interop.convert` reads it back masks and all. Both files are written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mpdref import __version__, compress, models
from mpdref.data import MNIST_MEAN, MNIST_STD
from mpdref.io.atomic import write_bytes_atomic
from mpdref.mpd import BlockConv2d, BlockDense, to_block_diagonal, weight_structure

import onnx  # mpdref.interop needs onnx: its __init__ says so where it is missing
from onnx import helper, numpy_helper

#: The default-domain opset of exported graphs: one that onnxruntime 1.17 (the oldest the interop
#: extra takes) and `mpdref.interop.run_onnx` both evaluate.
OPSET = 17

#: The format name and version in the metadata of the safetensors files mpdref writes.
STATE_DICT_FORMAT = "mpdref-state-dict"
STATE_DICT_VERSION = "1"

#: Where a mask is stored in a safetensors file: this prefix and the weight's name.
MASK_PREFIX = "mask."

FORMS = ("auto", "dense", "blocks")

INPUT_DESCRIPTION = (f"MNIST images (N, 1, 28, 28), normalized as mpdref.data.to_network_input: "
                     f"(pixel / 255 - {MNIST_MEAN}) / {MNIST_STD}")


def network_in_dtype(net: models.Network, dtype, backend: str | None = None) -> models.Network:
    """`net` itself where it has `dtype` (and `backend`), else a copy in that dtype: parameters rounded or
    widened by load_state_dict, masks and metadata the same."""
    dtype = np.dtype(dtype)
    if net.dtype == dtype and backend in (None, net.backend):
        return net
    copy = models.build(net.name, dtype, backend=backend or net.backend)
    copy.load_state_dict(net.params)
    for name, mask in net.masks.items():
        copy.set_mask(name, mask)
    copy.metadata = dict(net.metadata)
    return copy


def load_network(model) -> models.Network:
    """`model` itself if it is a Network; else the model file at that path: an HDF5 model file
    (``.h5``, `mpdref.models.load`) or a compressed one (``.mpdz``, `mpdref.compress.decompress`).
    Both raise `mpdref.io.FormatError` for a damaged file."""
    if isinstance(model, models.Network):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a Network or a path, not {type(model).__name__}")
    path = Path(model)
    if path.suffix == ".mpdz":
        return compress.decompress(path)
    if path.suffix in (".h5", ".hdf5"):
        return models.load(path)
    raise ValueError(f"{path}: not an mpdref model file (.h5 or .mpdz)")


# ----------------------------------------------------------------------------- ONNX


class GraphBuilder:
    """Nodes and initializers of a graph being written: each node's one output is named as the node."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, array: np.ndarray) -> str:
        """An initializer named `name`, holding `array` as it is (dtype included); returns the name."""
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op_type: str, inputs: list[str], name: str, **attributes) -> str:
        """A node `name` of `op_type` with one output, also called `name`; returns it."""
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name


def parameter_free_node(graph: GraphBuilder, layer, x: str, index: int) -> str:
    """The node of a layer without parameters (or x itself for Dropout, the identity at inference)."""
    if isinstance(layer, models.Flatten):
        return graph.node("Flatten", [x], f"flatten{index}", axis=1)
    if isinstance(layer, models.ReLU):
        return graph.node("Relu", [x], f"relu{index}")
    if isinstance(layer, models.MaxPool2d):
        return graph.node("MaxPool", [x], f"pool{index}", kernel_shape=[layer.kernel] * 2,
                          strides=[layer.kernel] * 2)
    if isinstance(layer, models.Dropout):
        return x
    raise TypeError(f"{type(layer).__name__} has no ONNX export")


def dense_nodes(net: models.Network, graph: GraphBuilder, x: str) -> str:
    """The dense form: every layer one node, every parameter under its own name. Returns the logits' value."""
    for index, layer in enumerate(net.layers):
        if isinstance(layer, models.Dense):
            w, b = (graph.constant(f"{layer.name}.{kind}", net.params[f"{layer.name}.{kind}"])
                    for kind in ("weight", "bias"))
            x = graph.node("Gemm", [x, w, b], layer.name, transB=1)  # x·Wᵀ + b: PyTorch's Linear
        elif isinstance(layer, models.Conv2d):
            w, b = (graph.constant(f"{layer.name}.{kind}", net.params[f"{layer.name}.{kind}"])
                    for kind in ("weight", "bias"))
            x = graph.node("Conv", [x, w, b], layer.name, kernel_shape=[layer.kernel] * 2,
                           strides=[layer.stride] * 2, pads=[layer.padding] * 4)
        else:
            x = parameter_free_node(graph, layer, x, index)
    return x


def block_nodes(net: models.Network, graph: GraphBuilder, x: str) -> str:
    """The block form (module docstring): per block a Gather and a Gemm or Conv, per layer a Concat, and a
    last Gather into class order. Returns the logits' value."""
    block = to_block_diagonal(net)
    for index, layer in enumerate(block.layers):
        if not isinstance(layer, (BlockDense, BlockConv2d)):
            x = parameter_free_node(graph, layer, x, index)
            continue
        bias = block.params[f"{layer.name}.bias"]  # (rows,), in block order
        row_bounds, col_bounds = np.cumsum([0, *layer.row_sizes]), np.cumsum([0, *layer.col_sizes])
        outputs = []
        for b, w in enumerate(layer.blocks(block.params)):
            prefix = f"{layer.name}.block{b}" if layer.k > 1 else layer.name
            columns = layer.gather[col_bounds[b] : col_bounds[b + 1]]  # (c_b,): the inputs block b reads
            xb = x
            if not np.array_equal(columns, np.arange(len(layer.gather))):  # an unpermuted single block reads all
                xb = graph.node("Gather", [x, graph.constant(f"{prefix}.columns", columns.astype(np.int64))],
                                f"{prefix}.gather", axis=1)
            wb = graph.constant(f"{prefix}.weight", w)
            bb = graph.constant(f"{prefix}.bias", bias[row_bounds[b] : row_bounds[b + 1]])
            if isinstance(layer, BlockDense):
                outputs.append(graph.node("Gemm", [xb, wb, bb], prefix, transB=1))
            else:
                outputs.append(graph.node("Conv", [xb, wb, bb], prefix, kernel_shape=[layer.kernel] * 2,
                                          strides=[layer.stride] * 2, pads=[layer.padding] * 4))
        x = outputs[0] if layer.k == 1 else graph.node("Concat", outputs, layer.name, axis=1)
    if not np.array_equal(block.label_position, np.arange(len(block.label_position))):
        # logits[:, c] = z[:, label_position[c]]: the block-ordered outputs back in class order
        x = graph.node("Gather", [x, graph.constant("class_positions", block.label_position.astype(np.int64))],
                       "class_order", axis=1)
    return x


def mpd_structured(net: models.Network) -> tuple[bool, str]:
    """(whether every masked weight has permuted block-diagonal structure and one has k > 1, why not)."""
    if not net.masks:
        return False, "the network has no masks"
    most_blocks = 0
    for name, mask in net.masks.items():
        try:
            most_blocks = max(most_blocks, weight_structure(mask).k)
        except ValueError as error:
            return False, f"the mask of {name} is not permuted block-diagonal ({error})"
    return most_blocks > 1, "" if most_blocks > 1 else "every mask is a single block"


def onnx_model(net: models.Network, form: str = "auto", opset: int = OPSET, dtype=np.float32) -> onnx.ModelProto:
    """The ONNX model of `net` in `form` ("auto", "dense" or "blocks"; see the module docstring), computing in
    `dtype` (float32 by default, whatever the network's: onnxruntime has no float64 Conv), checked by
    `onnx.checker`. ValueError for "blocks" where a mask is not permuted block-diagonal."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, not {np.dtype(dtype)}")
    net = network_in_dtype(net, dtype)
    structured, why_not = mpd_structured(net)
    if form == "blocks" and not structured and net.masks:
        raise ValueError(f"{net.name}: no block form: {why_not}")
    blocks = form == "blocks" or (form == "auto" and structured)
    graph = GraphBuilder()
    (block_nodes if blocks else dense_nodes)(net, graph, "input")
    graph.nodes[-1].output[0] = "logits"  # the graph's output, named as torch.onnx.export is usually told to
    element = helper.np_dtype_to_tensor_dtype(net.dtype)
    proto = helper.make_model(
        helper.make_graph(graph.nodes, f"{net.name}-{'blocks' if blocks else 'dense'}",
                          [helper.make_tensor_value_info("input", element, ["N", *models.INPUT_SHAPE])],
                          [helper.make_tensor_value_info("logits", element, ["N", 10])], graph.initializers,
                          doc_string=f"input: {INPUT_DESCRIPTION}; logits: (N, 10), class c in column c"),
        opset_imports=[helper.make_opsetid("", opset)], producer_name="mpdref", producer_version=__version__)
    helper.set_model_props(proto, {"mpdref.architecture": net.name, "mpdref.form": "blocks" if blocks else "dense",
                                   "mpdref.input": INPUT_DESCRIPTION})
    proto.ir_version = min(proto.ir_version, 8)  # IR 8 goes with opset 17; onnxruntime 1.17 reads up to 9
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, out_path, form: str = "auto", opset: int = OPSET, dtype=np.float32) -> onnx.ModelProto:
    """Write `model` (a Network, or an .h5 / .mpdz model file) as ONNX to `out_path`, atomically.

    Dense networks, pruned ones (their pruned weights zeros) and quantized ones export in the
    dense form; MPD-masked networks in the block form, which stores only the blocks (see the
    module docstring; form="dense" or "blocks" chooses). Opset `OPSET` (17), float32 (`dtype`).
    The graph takes ``input`` (N, 1, 28, 28), normalized MNIST images, and gives ``logits``
    (N, 10). Returns the model written."""
    net = load_network(model)
    proto = onnx_model(net, form, opset, dtype)
    write_bytes_atomic(out_path, proto.SerializeToString())
    return proto


# ----------------------------------------------------------------------------- safetensors


def state_dict_tensors(net: models.Network) -> dict[str, np.ndarray]:
    """The state_dict (PyTorch's names) and every mask under MASK_PREFIX + its weight's name, bool."""
    return {**net.state_dict(), **{MASK_PREFIX + name: mask.astype(np.bool_) for name, mask in net.masks.items()}}


def export_safetensors(model, out_path) -> dict[str, np.ndarray]:
    """Write `model`'s (a Network, or an .h5 / .mpdz model file) state_dict and masks to a safetensors
    file at `out_path`, atomically (see the module docstring for the names and the metadata). Returns
    the tensors written. Needs the safetensors package (the interop extra)."""
    try:
        import safetensors.numpy
    except ImportError as error:
        raise ImportError("writing safetensors needs the safetensors package: pip install -e '.[interop]'") \
            from error
    net = load_network(model)
    tensors = state_dict_tensors(net)
    metadata = {"format": STATE_DICT_FORMAT, "format_version": STATE_DICT_VERSION, "architecture": net.name,
                "mpdref_version": __version__}
    write_bytes_atomic(out_path, safetensors.numpy.save(tensors, metadata=metadata))
    return tensors


def export(model, out_path, form: str = "auto") -> None:
    """mpdref export MODEL.h5|MODEL.mpdz -o OUT.onnx|OUT.safetensors [--form auto|dense|blocks]

    Write an mpdref model for other frameworks; the output's suffix chooses the format.

    OUT.onnx: an ONNX graph (opset 17) that onnxruntime runs with mpdref's predictions. It takes
    "input" (N, 1, 28, 28), MNIST images normalized as mpdref's networks expect them
    ((pixel / 255 - 0.1307) / 0.3081), and gives "logits" (N, 10). Dense and pruned models are
    one node per layer (pruned weights as zeros); MPD models are written in block form (per
    block a Gather of the inputs it reads and a Gemm or Conv of its weights, blocks joined by
    a Concat), which stores only the kept weights: the file is about as much smaller than the
    dense one as the model is. --form dense writes an MPD model densely (masked weights as
    zeros); --form blocks insists on the block form.

    OUT.safetensors: the state_dict under PyTorch's names (fc1.weight, ...), which
    torch's load_state_dict and safetensors.torch.load_file take as they are, and every mask
    under its own name (mask.fc1.weight, bool, true = kept). `mpdref convert` reads it back,
    masks and all.

    Needs the interop extra: pip install -e '.[interop]'.
    """
    suffix = Path(out_path).suffix
    if suffix == ".onnx":
        export_onnx(model, out_path, form)
    elif suffix == ".safetensors":
        if form not in ("auto", "dense"):
            raise ValueError("--form concerns ONNX files; a safetensors file holds the state_dict")
        export_safetensors(model, out_path)
    else:
        raise ValueError(f"{out_path}: give an output file ending in .onnx or .safetensors")
