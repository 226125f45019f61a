"""MPD's block-diagonal form: a masked network as its blocks alone, for inference and training.

A weight trained under M = P_r B P_cᵀ (`mpdref.mpd.masks`) is k dense blocks. The
permutations of consecutive layers compose into one gather per layer, since ReLU,
max-pooling, dropout and the bias commute with a permutation of units or channels, and
flattening turns a channel order into a feature order. A dense layer in block form is
`ops.block_dense_forward` (the blocks stacked and zero-padded, one batched product; a pass
that keeps no cache, inference, takes `ops.block_dense_inference`, one compiled pass on the
fast set); a conv layer is `ops.grouped_conv2d_forward` (one group per block, sizes free).
The block layers have the interface of `mpdref.models`' layers, so a BlockNetwork runs, and
trains with `mpdref.train.fit`, through the same loop as a Network.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
import numpy as np

from mpdref import models
from mpdref.mpd.masks import MPDMask, weight_structure


@dataclass(frozen=True, eq=False)
class BlockLayer(models.Layer):
    """A dense or conv layer as k dense blocks, whose arrays live in BlockNetwork.params.

    Bias: ``{name}.bias`` (rows,) in block order. gather[j]: the position in the previous
    activation that block-ordered input j reads (the previous layer's row permutation and
    this layer's column permutation, composed). Output position i holds the original unit
    ``row_perm[i]``.
    """

    name: str
    k: int
    gather: np.ndarray = field(repr=False)  # int64 (cols,), a permutation of the previous activation's positions
    row_sizes: tuple
    col_sizes: tuple


@dataclass(frozen=True, eq=False)
class BlockDense(BlockLayer):
    """Dense: the k blocks stacked and zero-padded to the largest, ``{name}.blocks.weight`` (k, R, C);
    BlockNetwork.masks keeps the padding exactly zero."""

    @property
    def weight_name(self) -> str:
        return f"{self.name}.blocks.weight"

    def parameter_shapes(self):
        return {self.weight_name: (self.k, max(self.row_sizes), max(self.col_sizes)),
                f"{self.name}.bias": (sum(self.row_sizes),)}

    @functools.cached_property
    def padded_gather(self) -> np.ndarray:
        """(k·C,): gather, with the padding columns of each block reading position -1 (a zero column)."""
        c_max = max(self.col_sizes)
        out = np.full((self.k, c_max), -1, dtype=np.int64)
        start = 0
        for b, c in enumerate(self.col_sizes):
            out[b, :c] = self.gather[start : start + c]
            start += c
        return out.ravel()

    @functools.cached_property
    def valid_rows(self) -> np.ndarray:
        """(rows,): where block-ordered output i sits in the padded (k·R) output."""
        r_max = max(self.row_sizes)
        return np.concatenate([b * r_max + np.arange(r) for b, r in enumerate(self.row_sizes)])

    def blocks(self, params) -> list[np.ndarray]:
        """The k blocks (r_b, c_b), without their padding."""
        stacked = params[self.weight_name]
        return [stacked[b, :r, :c] for b, (r, c) in enumerate(zip(self.row_sizes, self.col_sizes))]

    def forward(self, params, x, train, rng):
        return self.ops.block_dense_forward(x, params[self.weight_name], params[f"{self.name}.bias"],
                                            self.padded_gather, self.valid_rows)

    def infer(self, params, x, train, rng):
        return self.ops.block_dense_inference(x, params[self.weight_name], params[f"{self.name}.bias"],
                                              self.padded_gather, self.valid_rows)

    def backward(self, dout, cache, need_dx):
        dx, dw, db = self.ops.block_dense_backward(dout, cache, need_dx)
        return dx, {self.weight_name: dw, f"{self.name}.bias": db}


@dataclass(frozen=True, eq=False)
class BlockConv2d(BlockLayer):
    """Conv: ``{name}.block{b}.weight`` (r_b, c_b, KH, KW), one per block: a grouped convolution with
    unequal groups on the gathered channels."""

    kernel: int = 1
    stride: int = 1
    padding: int = 0

    def block_names(self) -> list[str]:
        return [f"{self.name}.block{b}.weight" for b in range(self.k)]

    def parameter_shapes(self):
        shapes = {name: (r, c, self.kernel, self.kernel)
                  for name, r, c in zip(self.block_names(), self.row_sizes, self.col_sizes)}
        return {**shapes, f"{self.name}.bias": (sum(self.row_sizes),)}

    def blocks(self, params) -> list[np.ndarray]:
        return [params[name] for name in self.block_names()]

    def forward(self, params, x, train, rng):
        xg = x[:, self.gather]  # the one permutation per layer boundary
        return self.ops.grouped_conv2d_forward(xg, self.blocks(params), params[f"{self.name}.bias"],
                                               self.stride, self.padding)

    def backward(self, dout, cache, need_dx):
        dxg, dws, db = self.ops.grouped_conv2d_backward(dout, cache, need_dx)
        grads = {**dict(zip(self.block_names(), dws)), f"{self.name}.bias": db}
        if not need_dx:
            return None, grads
        dx = np.empty_like(dxg)
        dx[:, self.gather] = dxg  # gather is a permutation: its adjoint is this scatter
        return dx, grads


class BlockNetwork(models.LayerStack):
    """An MPD network in block-diagonal form: inference and training on the blocks alone.

    It offers what `mpdref.train.fit` and `SGD` use (params, masks, rng, dtype,
    loss_grads_and_logits, error_rate), so it trains with the same loop; weight
    decay reaches the blocks (names end in ``.weight``) and not the biases. Its last
    layer's outputs are in block order: output_order maps them to the classes.
    """

    def __init__(self, name, dtype, layers, params, output_order, rng):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.layers = layers  # BlockDense, BlockConv2d, or a parameter-free layer of mpdref.models
        self.params = params
        self.masks: dict = {}  # the padding of stacked blocks (set by to_block_diagonal)
        self.output_order = output_order  # logits[:, output_order[i]] = block-ordered logit i
        self.label_position = np.empty_like(output_order)  # class c is block-ordered logit label_position[c]
        self.label_position[output_order] = np.arange(len(output_order))
        self.rng = rng

    def stored_parameters(self) -> int:
        """Weights and biases actually stored (the padding of stacked blocks is not)."""
        return sum(int(self.masks[k].sum()) if k in self.masks else v.size for k, v in self.params.items())

    def to_masked(self, net) -> None:
        """Write the blocks back into the masked dense network `net` (the inverse of to_block_diagonal)."""
        net.params = self.masked_arrays(net, self.params)

    def masked_arrays(self, net, arrays: dict) -> dict:
        """Arrays keyed like this network's params (parameters, or SGD velocity) in `net`'s layout."""
        out = {k: v.copy() for k, v in net.params.items()}
        for layer in self.layers:
            if not isinstance(layer, BlockLayer):
                continue
            weight = f"{layer.name}.weight"
            s = _structure_of(net, weight)
            w = np.zeros_like(net.params[weight])
            for b, block in enumerate(layer.blocks(arrays)):
                w[np.ix_(s.block_rows(b), s.block_cols(b))] = block
            out[weight] = w
            bias = np.empty_like(net.params[f"{layer.name}.bias"])
            bias[s.row_perm] = arrays[f"{layer.name}.bias"]
            out[f"{layer.name}.bias"] = bias
        return out


def block_arrays(net, arrays: dict) -> dict:
    """Arrays keyed like `net.params` (parameters, or SGD velocity) in block form."""
    out = {}
    for layer in net.layers:
        if not hasattr(layer, "parameter_shapes"):
            continue
        weight = f"{layer.name}.weight"
        s = _structure_of(net, weight)
        blocks = s.blocks(arrays[weight])
        if isinstance(layer, models.Dense):
            sizes = np.diff(s.row_bounds), np.diff(s.col_bounds)
            out[f"{layer.name}.blocks.weight"] = _stack_padded(blocks, *sizes, arrays[weight].dtype)
        else:
            for b, block in enumerate(blocks):
                out[f"{layer.name}.block{b}.weight"] = np.ascontiguousarray(block)
        out[f"{layer.name}.bias"] = arrays[f"{layer.name}.bias"][s.row_perm].copy()
    return out


def _structure_of(net, weight: str) -> MPDMask:
    mask = net.masks.get(weight)
    if mask is not None:
        return weight_structure(mask)
    rows, cols = net.params[weight].shape[:2]
    return MPDMask(None, np.arange(rows), np.arange(cols), np.array([0, rows]), np.array([0, cols]))


def _stack_padded(blocks, row_sizes, col_sizes, dtype):
    out = np.zeros((len(blocks), max(row_sizes), max(col_sizes)), dtype=dtype)
    for b, block in enumerate(blocks):
        out[b, : row_sizes[b], : col_sizes[b]] = block
    return out


def _padding_mask(row_sizes, col_sizes):
    mask = np.zeros((len(row_sizes), max(row_sizes), max(col_sizes)), dtype=bool)
    for b, (r, c) in enumerate(zip(row_sizes, col_sizes)):
        mask[b, :r, :c] = True
    return mask


def to_block_diagonal(net) -> BlockNetwork:
    """Convert an MPD-masked network into block-diagonal form.

    Each masked weight becomes its k dense blocks (an unmasked weight is one
    block); the permutations of consecutive layers are composed into one gather
    index per layer. The result computes with the network's op set; its logits
    equal the masked network's (the tests hold them to 1e-12 relative in float64),
    and it trains like it.
    """
    shapes = []  # the activation shape after every layer, from a dry run
    x = np.zeros((1, *models.INPUT_SHAPE), dtype=net.dtype)
    for layer in net.layers:
        x, _ = layer.forward(net.params, x, False, None)
        shapes.append(x.shape[1:])
    origin = np.arange(models.INPUT_SHAPE[0])  # position -> original channel (or feature) it holds
    layers = []
    prev_shape = models.INPUT_SHAPE
    for layer, shape in zip(net.layers, shapes):
        if isinstance(layer, models.Flatten):
            spatial = int(np.prod(prev_shape[1:]))
            origin = (origin[:, None] * spatial + np.arange(spatial)[None, :]).ravel()
            layers.append(layer)
        elif isinstance(layer, (models.Dense, models.Conv2d)):
            s = _structure_of(net, f"{layer.name}.weight")
            position = np.empty_like(origin)
            position[origin] = np.arange(len(origin))
            common = dict(name=layer.name, k=s.k, gather=position[s.col_perm],
                          row_sizes=tuple(np.diff(s.row_bounds).tolist()),
                          col_sizes=tuple(np.diff(s.col_bounds).tolist()), backend=layer.backend)
            if isinstance(layer, models.Dense):
                layers.append(BlockDense(**common))
            else:
                layers.append(BlockConv2d(**common, kernel=layer.kernel, stride=layer.stride, padding=layer.padding))
            origin = s.row_perm
        else:
            layers.append(layer)  # ReLU, MaxPool2d, Dropout: commute with the permutation
        prev_shape = shape
    rng = np.random.default_rng()
    rng.bit_generator.state = net.rng.bit_generator.state
    block = BlockNetwork(net.name, net.dtype, layers, block_arrays(net, net.params), origin, rng)
    block.masks = {layer.weight_name: _padding_mask(layer.row_sizes, layer.col_sizes)
                   for layer in layers if isinstance(layer, BlockDense)}
    return block
