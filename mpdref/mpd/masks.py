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

Conv layers are masked over (output, input) channel pairs and keep whole kernels
(`channel_mask`), so that after permutation a masked conv layer is a grouped convolution.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph


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


def apply_mpd_masks(net, ks: dict[str, int], rng: np.random.Generator, rescale: bool) -> dict[str, MPDMask]:
    """Mask each weight `name` of `net` with a random mask of ks[name] blocks (drawn from `rng`, in
    the order of `ks`); returns the masks' structures.

    rescale: multiply the kept weights by sqrt(fan-in / kept fan-in). PyTorch's init draws
    from U(±1/sqrt(fan-in)); a row of block b sees only c_b of the cols columns, so a masked
    layer trained from scratch starts with the variance of a dense layer of its true fan-in
    (the smallest block's, where blocks differ by one).
    """
    structures = {}
    for name, k in ks.items():
        shape = net.params[name].shape
        structures[name] = mpd_mask(shape[0], shape[1], k, rng)
        if rescale:
            kept_fan_in = np.diff(structures[name].col_bounds).min()
            net.params[name] *= net.dtype.type(np.sqrt(shape[1] / kept_fan_in))
        net.set_mask(name, channel_mask(shape, structures[name]))
    return structures
