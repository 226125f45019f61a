"""MPDCompress (matrix permutation decomposition): permuted block-diagonal masks.

A weight matrix W (rows × cols) is trained under the 0/1 mask

    M = P_r B P_cᵀ,      B = blockdiag(1_{r_1×c_1}, ..., 1_{r_k×c_k}),

with P_r, P_c random permutations. Here a permutation is stored as an index
array: ``row_perm[i]`` is the original row at permuted position i, so

    M[row_perm[i], col_perm[j]] = B[i, j],   i.e.   M[np.ix_(row_perm, col_perm)] = B,

and W[np.ix_(row_perm, col_perm)] is block diagonal for a W trained under M.
Block b holds permuted rows row_bounds[b]:row_bounds[b+1] and columns
col_bounds[b]:col_bounds[b+1]; the sizes follow np.array_split (the first
n mod k blocks are one larger).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from mpdref.kernels import cpu
from mpdref.models import Classifier


class MPDMask(NamedTuple):
    """A permuted block-diagonal mask and its structure (see the module docstring)."""

    mask: np.ndarray  # bool (rows, cols)
    row_perm: np.ndarray  # int64 (rows,)
    col_perm: np.ndarray  # int64 (cols,)
    row_bounds: np.ndarray  # int64 (k + 1,)
    col_bounds: np.ndarray  # int64 (k + 1,)

    @property
    def k(self) -> int:
        return len(self.row_bounds) - 1

    def block_rows(self, b: int) -> np.ndarray:
        """The original row indices of block b."""
        return self.row_perm[self.row_bounds[b] : self.row_bounds[b + 1]]

    def block_cols(self, b: int) -> np.ndarray:
        return self.col_perm[self.col_bounds[b] : self.col_bounds[b + 1]]

    def blocks(self, w: np.ndarray) -> list[np.ndarray]:
        """The k dense blocks of a matrix w trained under this mask: w[rows_b, cols_b]."""
        return [w[np.ix_(self.block_rows(b), self.block_cols(b))] for b in range(self.k)]


def split_bounds(n: int, k: int) -> np.ndarray:
    """Block boundaries of np.array_split(range(n), k): 0 = b_0 < b_1 < ... < b_k = n."""
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} blocks cannot split a dimension of size {n}: need 1 <= k <= {n}")
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def _mask_from_structure(rows, cols, row_perm, col_perm, row_bounds, col_bounds) -> np.ndarray:
    mask = np.zeros((rows, cols), dtype=bool)
    for b in range(len(row_bounds) - 1):
        r = row_perm[row_bounds[b] : row_bounds[b + 1]]
        c = col_perm[col_bounds[b] : col_bounds[b + 1]]
        mask[np.ix_(r, c)] = True
    return mask


def mpd_mask(rows: int, cols: int, k: int, rng: np.random.Generator) -> MPDMask:
    """A random permuted block-diagonal mask M = P_r B P_cᵀ with k blocks.

    Raises ValueError when k is larger than either dimension (a block would be empty).
    """
    if k > min(rows, cols) or k < 1:
        raise ValueError(
            f"k = {k} blocks do not fit a {rows}×{cols} matrix: k must be between 1 and {min(rows, cols)}"
        )
    row_bounds, col_bounds = split_bounds(rows, k), split_bounds(cols, k)
    row_perm = rng.permutation(rows).astype(np.int64)
    col_perm = rng.permutation(cols).astype(np.int64)
    mask = _mask_from_structure(rows, cols, row_perm, col_perm, row_bounds, col_bounds)
    return MPDMask(mask, row_perm, col_perm, row_bounds, col_bounds)


def block_structure(mask: np.ndarray) -> MPDMask:
    """Recover the permutations and blocks of a bare 0/1 mask.

    The blocks are the connected components of the bipartite graph whose
    vertices are rows and columns and whose edges are the mask's ones; a
    permuted block-diagonal mask is one where every component is a full block
    (all ones) with at least one row and one column. Blocks are ordered by
    their smallest row index, rows and columns inside a block ascending.
    Raises ValueError saying what is wrong otherwise.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"a mask must be a non-empty 2-D array, got shape {mask.shape}")
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError("a mask must hold only 0 and 1")
    ones = mask.astype(bool)
    rows, cols = ones.shape
    r, c = np.nonzero(ones)
    graph = scipy.sparse.coo_matrix((np.ones(len(r)), (r, rows + c)), shape=(rows + cols, rows + cols))
    n_components, label = scipy.sparse.csgraph.connected_components(graph, directed=False)
    row_label, col_label = label[:rows], label[rows:]
    empty_rows = np.flatnonzero(~ones.any(axis=1))
    empty_cols = np.flatnonzero(~ones.any(axis=0))
    if len(empty_rows) or len(empty_cols):
        raise ValueError(
            f"not a permuted block-diagonal mask: {len(empty_rows)} rows and {len(empty_cols)} columns are all zero "
            f"(first: rows {empty_rows[:5].tolist()}, columns {empty_cols[:5].tolist()}); every row and column "
            f"belongs to one block"
        )
    order = sorted(set(row_label.tolist()), key=lambda lab: int(np.flatnonzero(row_label == lab)[0]))
    row_perm, col_perm, row_bounds, col_bounds = [], [], [0], [0]
    for lab in order:
        block_r = np.flatnonzero(row_label == lab)
        block_c = np.flatnonzero(col_label == lab)
        count = int(ones[np.ix_(block_r, block_c)].sum())
        if count != len(block_r) * len(block_c):
            raise ValueError(
                f"not a permuted block-diagonal mask: the block of rows {block_r[:5].tolist()}... and columns "
                f"{block_c[:5].tolist()}... ({len(block_r)}×{len(block_c)}) holds {count} ones, not "
                f"{len(block_r) * len(block_c)}"
            )
        row_perm += block_r.tolist()
        col_perm += block_c.tolist()
        row_bounds.append(row_bounds[-1] + len(block_r))
        col_bounds.append(col_bounds[-1] + len(block_c))
    return MPDMask(ones, np.array(row_perm, np.int64), np.array(col_perm, np.int64),
                   np.array(row_bounds, np.int64), np.array(col_bounds, np.int64))


def block_diagonal_matmul(blocks: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """y = x · blockdiag(B_1, ..., B_k)ᵀ, the dense layer's product in block form (NumPy reference).

    blocks[b] (r_b, c_b); x (N, Σ c_b) with its columns already in permuted order
    -> y (N, Σ r_b), where y[:, rows of block b] = x[:, columns of block b] · B_bᵀ.
    """
    taken = sum(block.shape[1] for block in blocks)
    if x.ndim != 2 or x.shape[1] != taken:
        raise ValueError(f"x has shape {x.shape}; the blocks take (N, {taken}) columns")
    out = []
    start = 0
    for block in blocks:
        out.append(x[:, start : start + block.shape[1]] @ block.T)  # (N, r_b)
        start += block.shape[1]
    return np.concatenate(out, axis=1)


# ----------------------------------------------------------------------------- layers and storage


def channel_mask(weight_shape: tuple[int, ...], structure: MPDMask) -> np.ndarray:
    """The 0/1 mask of a weight from its (rows, cols) structure.

    Dense (out, in): the mask itself. Conv (F, C, KH, KW): the mask over
    (output, input) channel pairs, each kept pair keeping its whole kernel, so
    that after permutation the layer is a grouped convolution.
    """
    if len(weight_shape) == 2:
        return structure.mask.copy()
    return np.broadcast_to(structure.mask[:, :, None, None], weight_shape).copy()


def weight_structure(mask: np.ndarray) -> MPDMask:
    """`block_structure` of a dense or conv weight's mask (conv: over channel pairs)."""
    mask = np.asarray(mask)
    if mask.ndim == 4:
        pairs = mask[:, :, 0, 0]
        if not np.array_equal(np.broadcast_to(pairs[:, :, None, None], mask.shape), mask):
            raise ValueError("a conv mask must keep or drop whole kernels (one value per channel pair)")
        mask = pairs
    return block_structure(mask)


def index_bits(n: int) -> int:
    """Bits of one index into n items: ceil(log2 n), at least 1."""
    return max(1, int(np.ceil(np.log2(n)))) if n > 1 else 1


def layer_storage_bits(weight_shape: tuple[int, ...], k: int | None, bias_size: int) -> dict:
    """Stored bits of one layer: dense (k None) or MPD with k blocks.

    MPD: the kept weights (the blocks) in float32, the bias in float32, both
    permutations at ceil(log2 n) bits per index, and the k - 1 inner boundaries
    of each dimension at ceil(log2 (n + 1)) bits each.
    """
    rows, cols = weight_shape[0], weight_shape[1]
    kernel = int(np.prod(weight_shape[2:], dtype=np.int64)) if len(weight_shape) > 2 else 1
    if k is None:
        return {"weights": rows * cols * kernel * 32, "bias": bias_size * 32, "permutations": 0, "boundaries": 0}
    row_sizes, col_sizes = np.diff(split_bounds(rows, k)), np.diff(split_bounds(cols, k))
    kept = int(np.sum(row_sizes * col_sizes)) * kernel
    return {"weights": kept * 32, "bias": bias_size * 32,
            "permutations": rows * index_bits(rows) + cols * index_bits(cols),
            "boundaries": (k - 1) * (index_bits(rows + 1) + index_bits(cols + 1))}


def storage_table(shapes: dict[str, tuple[int, ...]], ks: dict[str, int]) -> dict:
    """Per-layer and total stored bits of a network whose weights `ks` are MPD-masked.

    `shapes`: parameter name -> shape (weights and biases). Returns
    {"layers": {weight: {..bits..}}, "stored_bits", "dense_bits", "ratio"}.
    """
    layers = {}
    for name, shape in shapes.items():
        if not name.endswith(".weight"):
            continue
        bias = shapes.get(name[: -len("weight")] + "bias", (0,))
        layers[name] = layer_storage_bits(shape, ks.get(name), int(np.prod(bias)))
    dense = 32 * sum(int(np.prod(s)) for s in shapes.values())
    stored = sum(sum(v.values()) for v in layers.values())
    return {"layers": layers, "stored_bits": stored, "dense_bits": dense, "ratio": dense / stored}


def choose_k(shapes: dict[str, tuple[int, ...]], layers: list[str], ratio: float) -> dict[str, int]:
    """The smallest common k for `layers` (capped per layer at its smaller dimension) that stores
    the network at least `ratio` times smaller than dense float32; ValueError if none does."""
    for k in range(1, max(min(shapes[n][:2]) for n in layers) + 1):
        ks = {n: min(k, *shapes[n][:2]) for n in layers}
        if storage_table(shapes, ks)["ratio"] >= ratio:
            return ks
    best = storage_table(shapes, {n: min(shapes[n][:2]) for n in layers})["ratio"]
    raise ValueError(f"no k reaches {ratio}x on layers {layers}: the most is {best:.2f}x; mask more layers")


# ----------------------------------------------------------------------------- the pipeline stage

from mpdref.runner.config import Option  # noqa: E402  (the stage plugs into the runner's registry)
from mpdref.runner.registry import Stage, register, weight_setting_problems  # noqa: E402


@register
class MPDStage(Stage):
    """Mask chosen weights with random permuted block-diagonal masks; the next train stage trains under them."""

    type = "mpd"
    description = "apply MPD masks (k blocks per layer, or k chosen to reach a compression ratio)"
    options = {
        "layers": Option(list, [], accepted="a list of weight names, e.g. [\"fc1.weight\"] (empty: all weights)"),
        "ratio": Option(float, None, check=lambda v: v > 1, accepted="a number > 1: choose k to reach it"),
        "k": Option(dict, None, accepted="a table of weight name = number of blocks"),
        "k_all": Option(int, None, check=lambda v: v >= 1, accepted="an integer >= 1: the same k for every "
                        "listed layer, capped at the layer's smaller dimension"),
        "rescale": Option(str, "auto", choices=("auto", "yes", "no"),
                          help="scale the kept weights by sqrt(fan-in / kept fan-in), so a masked layer starts "
                               "with the variance of a dense layer of its true fan-in; auto: yes unless an "
                               "earlier stage trained the network"),
    }

    @classmethod
    def check(cls, settings, model):
        from mpdref.models import parameter_shapes

        shapes = parameter_shapes(model)
        problems = weight_setting_problems(model, "layers", settings["layers"])
        if sum(settings[key] is not None for key in ("ratio", "k", "k_all")) != 1:
            problems.append("give exactly one of ratio, k and k_all")
        problems += weight_setting_problems(
            model, "k", settings["k"],
            lambda name, k: isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= min(shapes[name][:2]),
            lambda name: f"an integer in [1, {min(shapes[name][:2])}]")
        return problems

    def run(self, ctx, settings, resume):
        import sys

        net = ctx.net
        shapes = net.parameter_shapes()
        layers = settings["layers"] or net.weight_names()
        if settings["k"]:
            ks = dict(settings["k"])
        elif settings["k_all"]:
            ks = {n: min(settings["k_all"], *shapes[n][:2]) for n in layers}
        else:
            ks = choose_k(shapes, layers, settings["ratio"])
        rng = np.random.default_rng(np.random.SeedSequence(ctx.seed, spawn_key=(2, ctx.stage_index)))
        rescale = settings["rescale"] == "yes" or (
            settings["rescale"] == "auto"
            and not any(s["type"] == "train" for s in ctx.config["stages"][: ctx.stage_index]))
        structures = {}
        for name, k in ks.items():
            structures[name] = mpd_mask(shapes[name][0], shapes[name][1], k, rng)
            if rescale:
                # PyTorch's init draws from U(±1/sqrt(fan-in)); a row of block b sees cols_b of the cols.
                kept_fan_in = np.diff(structures[name].col_bounds).min()
                net.params[name] *= net.dtype.type(np.sqrt(shapes[name][1] / kept_fan_in))
            net.set_mask(name, channel_mask(shapes[name], structures[name]))
        table = storage_table(shapes, ks)
        print(f"mpd: k = {ks}; stored {table['stored_bits']:,} bits against {table['dense_bits']:,} dense: "
              f"{table['ratio']:.2f}x", file=sys.stderr)
        plot_masks(structures, ctx.out / "figures" / "mpd-masks.png")
        return {"k": ks, "rescaled": rescale, "stored_bits": table["stored_bits"],
                "dense_bits": table["dense_bits"], "ratio": table["ratio"]}


def plot_masks(structures: dict[str, MPDMask], target) -> None:
    """Spy plots of each mask before and after permutation (written atomically)."""
    from mpdref.io.figure import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, len(structures), figsize=(3.2 * len(structures), 6.2), squeeze=False,
                             constrained_layout=True)
    for col, (name, m) in enumerate(structures.items()):
        for row, (title, img) in enumerate((("as trained", m.mask),
                                            ("permuted", m.mask[np.ix_(m.row_perm, m.col_perm)]))):
            ax = axes[row, col]
            ax.imshow(img, cmap="Greys", interpolation="nearest", aspect="auto")
            ax.set_title(f"{name} (k={m.k}), {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    save_figure(fig, target)


# ----------------------------------------------------------------------------- block-diagonal form


@dataclass(frozen=True, eq=False)
class BlockLayer:
    """A dense or conv layer as k dense blocks, whose arrays live in BlockNetwork.params.

    Conv: ``{name}.block{b}.weight`` (r_b, c_b, KH, KW), one per block (a grouped
    convolution with unequal groups). Dense: the k blocks stacked and zero-padded to
    the largest, ``{name}.blocks.weight`` (k, R, C), so that a layer is three batched
    matrix products; BlockNetwork.masks keeps the padding exactly zero. Bias:
    ``{name}.bias`` (rows,) in block order. gather[j]: the position in the previous
    activation that block-ordered input j reads (the previous layer's row permutation
    and this layer's column permutation, composed). Output position i holds the
    original unit ``row_perm[i]``.
    """

    name: str
    kind: str  # "dense" or "conv"
    k: int
    gather: np.ndarray  # int64 (cols,), a permutation of the previous activation's positions
    row_sizes: tuple
    col_sizes: tuple
    stride: int = 1
    padding: int = 0

    def block_names(self):
        return [f"{self.name}.block{b}.weight" for b in range(self.k)]

    @property
    def stacked_name(self):
        return f"{self.name}.blocks.weight"

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


class BlockNetwork(Classifier):
    """An MPD network in block-diagonal form: inference and training on the blocks alone.

    It offers what `mpdref.train.fit` and `SGD` use (params, masks, rng, dtype,
    loss_grads_and_logits, error_rate), so it trains with the same loop; weight
    decay reaches the blocks (names end in ``.weight``) and not the biases.
    """

    def __init__(self, name, dtype, steps, params, output_order, rng):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.steps = steps  # BlockLayer, or a parameter-free layer of mpdref.models
        self.params = params
        self.masks: dict = {}  # nothing is masked: the zeros are not stored at all
        self.output_order = output_order  # logits[:, output_order[i]] = block-ordered logit i
        self.label_position = np.empty_like(output_order)  # class c is block-ordered logit label_position[c]
        self.label_position[output_order] = np.arange(len(output_order))
        self.rng = rng

    def _layer_forward(self, step, x):
        if step.kind == "dense":
            return self._dense_forward(step, x)
        from mpdref import ops

        xg = x[:, step.gather]  # the one permutation per layer boundary (fused in the kernels)
        bias = self.params[f"{step.name}.bias"]
        outs, caches, start, row = [], [], 0, 0
        for name in step.block_names():  # a grouped convolution with unequal groups
            block = self.params[name]
            r_b, c_b = block.shape[:2]
            y, cache = ops.conv2d_forward(np.ascontiguousarray(xg[:, start : start + c_b]), block,
                                          bias[row : row + r_b], step.stride, step.padding)
            outs.append(y)
            caches.append(cache)
            start, row = start + c_b, row + r_b
        return np.concatenate(outs, axis=1), caches

    def _dense_forward(self, step, x):
        """y = blocks applied to the gathered input, as one batched product over the padded blocks."""
        n, cols = x.shape
        k, r_max, c_max = self.params[step.stacked_name].shape
        xs = np.empty((k, n, c_max), dtype=x.dtype)  # the gathered input, block by block; 0 on the padding
        cpu.gather_blocks(np.ascontiguousarray(x), step.padded_gather, xs)
        w = self.params[step.stacked_name]  # (k, R, C)
        ys = np.matmul(xs, w.transpose(0, 2, 1))  # (k, N, R)
        valid = step.valid_rows
        y = np.empty((n, len(valid)), dtype=x.dtype)  # back to one row per example, plus the bias
        cpu.rows_from_blocks(ys, valid, self.params[f"{step.name}.bias"], y)
        return y, (xs, valid, cols)

    def _layer_backward(self, step, dout, caches, need_dx):
        if step.kind == "dense":
            return self._dense_backward(step, dout, caches, need_dx)
        from mpdref import ops

        grads, dxs, bias_grads, row = {}, [], [], 0
        for name, cache in zip(step.block_names(), caches):
            r_b = self.params[name].shape[0]
            dx_b, dw, db = ops.conv2d_backward(np.ascontiguousarray(dout[:, row : row + r_b]), cache, need_dx)
            grads[name] = dw
            bias_grads.append(db)
            dxs.append(dx_b)
            row += r_b
        grads[f"{step.name}.bias"] = np.concatenate(bias_grads)
        if not need_dx:
            return None, grads
        dxg = np.concatenate(dxs, axis=1)
        dx = np.empty_like(dxg)
        dx[:, step.gather] = dxg  # gather is a permutation: its adjoint is this scatter
        return dx, grads

    def _dense_backward(self, step, dout, cache, need_dx):
        xs, valid, cols = cache
        w = self.params[step.stacked_name]
        k, r_max, c_max = w.shape
        n = dout.shape[0]
        dys = np.empty((k, n, r_max), dtype=dout.dtype)  # (k, N, R), 0 on the padding
        cpu.blocks_from_rows(np.ascontiguousarray(dout), valid, dys)
        grads = {step.stacked_name: np.matmul(dys.transpose(0, 2, 1), xs),  # (k, R, C); zero on the padding
                 f"{step.name}.bias": dout.sum(axis=0)}
        if not need_dx:
            return None, grads
        dx = np.empty((n, cols), dtype=dout.dtype)
        cpu.scatter_blocks(np.matmul(dys, w), step.padded_gather, dx)  # a permutation but for the padding
        return dx, grads

    def _run(self, x, train):
        caches = []
        for step in self.steps:
            if isinstance(step, BlockLayer):
                x, cache = self._layer_forward(step, x)
            else:
                x, cache = step.forward({}, x, train, self.rng)
            caches.append(cache)
        return x, caches

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """x (N, 1, 28, 28) -> logits (N, 10), equal to the masked network's."""
        z, _ = self._run(x, train)
        logits = np.empty_like(z)
        logits[:, self.output_order] = z  # the one scatter, back to the classes' order
        return logits

    def loss_grads_and_logits(self, x, y, train: bool = True, teacher=None):
        from mpdref import ops

        z, caches = self._run(x, train)
        # The loss is invariant to the order of the logits: compare block-ordered logits with
        # block-ordered labels (and block-ordered teacher logits) instead of scattering every batch.
        if teacher is not None:
            teacher_logits, temperature, weight = teacher
            teacher = (teacher_logits[:, self.output_order], temperature, weight)
        loss, dout = ops.training_loss(z, self.label_position[y], teacher)
        grads = {}
        first = next(i for i, s in enumerate(self.steps) if isinstance(s, BlockLayer))
        for i in range(len(self.steps) - 1, first - 1, -1):
            step = self.steps[i]
            if isinstance(step, BlockLayer):
                dout, g = self._layer_backward(step, dout, caches[i], need_dx=i > first)
                grads.update(g)
            else:
                dout, _ = step.backward(dout, caches[i], True)
        logits = np.empty_like(z)
        logits[:, self.output_order] = z
        return loss, {k: grads[k] for k in self.params}, logits

    def stored_parameters(self) -> int:
        """Weights and biases actually stored (the padding of stacked blocks is not)."""
        return sum(int(self.masks[k].sum()) if k in self.masks else v.size for k, v in self.params.items())

    def to_masked(self, net) -> None:
        """Write the blocks back into the masked dense network `net` (the inverse of to_block_diagonal)."""
        net.params = self.masked_arrays(net, self.params)

    def masked_arrays(self, net, arrays: dict) -> dict:
        """Arrays keyed like this network's params (parameters, or SGD velocity) in `net`'s layout."""
        out = {k: v.copy() for k, v in net.params.items()}
        for step in self.steps:
            if not isinstance(step, BlockLayer):
                continue
            weight = f"{step.name}.weight"
            s = _structure_of(net, weight)
            w = np.zeros_like(net.params[weight])
            if step.kind == "dense":
                blocks = [arrays[step.stacked_name][b, :r, :c]
                          for b, (r, c) in enumerate(zip(step.row_sizes, step.col_sizes))]
            else:
                blocks = [arrays[name] for name in step.block_names()]
            for b, block in enumerate(blocks):
                w[np.ix_(s.block_rows(b), s.block_cols(b))] = block
            out[weight] = w
            bias = np.empty_like(net.params[f"{step.name}.bias"])
            bias[s.row_perm] = arrays[f"{step.name}.bias"]
            out[f"{step.name}.bias"] = bias
        return out


def block_arrays(net, arrays: dict) -> dict:
    """Arrays keyed like `net.params` (parameters, or SGD velocity) in block form."""
    from mpdref import models

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


def to_block_diagonal(net) -> BlockNetwork:
    """Convert an MPD-masked network into block-diagonal form.

    Each masked weight becomes its k dense blocks (an unmasked weight is one
    block); the permutations of consecutive layers are composed into one gather
    index per layer, since ReLU, max-pooling, dropout and the bias commute with
    a permutation of units or channels. Flattening turns a channel order into a
    feature order. The result's logits equal the masked network's (the tests
    hold them to 1e-12 relative in float64), and it trains like it.
    """
    from mpdref import models

    shapes = []  # the activation shape after every layer, from a dry run
    x = np.zeros((1, *models.INPUT_SHAPE), dtype=net.dtype)
    for layer in net.layers:
        x, _ = layer.forward(net.params, x, False, None)
        shapes.append(x.shape[1:])
    origin = np.arange(models.INPUT_SHAPE[0])  # position -> original channel (or feature) it holds
    steps = []
    prev_shape = models.INPUT_SHAPE
    for layer, shape in zip(net.layers, shapes):
        if isinstance(layer, models.Flatten):
            spatial = int(np.prod(prev_shape[1:]))
            origin = (origin[:, None] * spatial + np.arange(spatial)[None, :]).ravel()
            steps.append(layer)
        elif isinstance(layer, (models.Dense, models.Conv2d)):
            weight = f"{layer.name}.weight"
            s = _structure_of(net, weight)
            position = np.empty_like(origin)
            position[origin] = np.arange(len(origin))
            steps.append(BlockLayer(layer.name, "dense" if isinstance(layer, models.Dense) else "conv", s.k,
                                    position[s.col_perm], tuple(np.diff(s.row_bounds).tolist()),
                                    tuple(np.diff(s.col_bounds).tolist()), getattr(layer, "stride", 1),
                                    getattr(layer, "padding", 0)))
            origin = s.row_perm
        else:
            steps.append(layer)  # ReLU, MaxPool2d, Dropout: commute with the permutation
        prev_shape = shape
    rng = np.random.default_rng()
    rng.bit_generator.state = net.rng.bit_generator.state
    block = BlockNetwork(net.name, net.dtype, steps, block_arrays(net, net.params), origin, rng)
    block.masks = {s.stacked_name: _padding_mask(s.row_sizes, s.col_sizes)
                   for s in steps if isinstance(s, BlockLayer) and s.kind == "dense"}
    return block


class CudaBlockNetwork(Classifier):
    """Inference for a BlockNetwork on the GPU (`mpdref.kernels.cuda`).

    The weights are uploaded once. An input batch goes up once, transposed to the
    device's feature-major layout; the activations stay on the device between layers;
    the logits come back once, already in class order (the last layer's epilogue
    scatters its rows by `output_order`). Each layer's permutation is the gather
    fused into the next kernel's loads; a ReLU after a convolution, a dense layer or a
    max-pool runs in that kernel's epilogue. The logits equal `block_net.forward` to
    float rounding (the tests hold them to it).
    """

    def __init__(self, block_net: BlockNetwork):
        from mpdref import models
        from mpdref.kernels import load_backend

        kc = load_backend("cuda")
        self._kc = kc
        self.name, self.dtype = block_net.name, block_net.dtype
        steps = [s for s in block_net.steps if not isinstance(s, models.Dropout)]  # identity at inference
        last_dense = max((i for i, s in enumerate(steps) if isinstance(s, BlockLayer)), default=-1)
        if last_dense != len(steps) - 1 or steps[last_dense].kind != "dense":
            raise ValueError("CudaBlockNetwork needs a network that ends with a dense layer")
        self._plan = []  # (what, device layer or argument, fuse a ReLU)
        params = block_net.params
        for i, step in enumerate(steps):
            relu_next = i + 1 < len(steps) and isinstance(steps[i + 1], models.ReLU)
            if isinstance(step, models.ReLU):
                if self._plan and self._plan[-1][2]:
                    continue  # already fused into the previous kernel
                self._plan.append(("relu", None, False))
            elif isinstance(step, models.Flatten):
                self._plan.append(("flatten", None, False))
            elif isinstance(step, models.MaxPool2d):
                self._plan.append(("pool", step.kernel, relu_next))
            elif isinstance(step, BlockLayer) and step.kind == "conv":
                blocks = [params[name] for name in step.block_names()]
                layer = kc.DeviceBlockConv(blocks, step.gather, params[f"{step.name}.bias"], step.stride, step.padding)
                self._plan.append(("conv", layer, relu_next))
            elif isinstance(step, BlockLayer):
                stacked = params[step.stacked_name]
                blocks = [stacked[b, :r, :c] for b, (r, c) in enumerate(zip(step.row_sizes, step.col_sizes))]
                row_dest = block_net.output_order if i == last_dense else None
                layer = kc.DeviceBlockDense(blocks, step.gather, params[f"{step.name}.bias"], row_dest)
                self._plan.append(("dense", layer, relu_next))
            else:
                raise TypeError(f"CudaBlockNetwork cannot run a {type(step).__name__} layer")

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) on the host -> logits (N, classes) on the host."""
        if x.dtype != self.dtype:
            raise TypeError(f"x is {x.dtype}, the network is {self.dtype}")
        kc = self._kc
        a = kc.to_device(np.moveaxis(x, 0, -1))  # (C, H, W, N): the batch index fastest
        for what, layer, relu in self._plan:
            if what == "flatten":
                *features, n = a.shape
                a = a.reshape(int(np.prod(features)), n)
            elif what == "relu":
                a = kc.relu(a)
            elif what == "pool":
                a = kc.max_pool(a, layer, relu)
            else:
                a = layer(a, relu=relu)
        return a.copy_to_host().T

    def predict(self, x: np.ndarray, batch_size: int = 10000) -> np.ndarray:
        return super().predict(x, batch_size)

    def error_rate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 10000) -> float:
        return super().error_rate(x, y, batch_size)


def block_network(net, backend: str = "cpu"):
    """The block-diagonal form of the MPD-masked `net` on a backend: "cpu" gives a BlockNetwork
    (inference and training), "cuda" a CudaBlockNetwork (inference on the GPU). backend="cuda"
    without a usable GPU raises mpdref.kernels.BackendUnavailable, which names the cause and the
    alternatives."""
    from mpdref.kernels import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    block = to_block_diagonal(net)
    return CudaBlockNetwork(block) if backend == "cuda" else block
