"""DARB: density-adaptive regular-block pruning (Ren, Zhang, Wang, Lin, Dong, Chen, Xie and Wang,
AAAI 2020, arXiv 1911.08020), with the baselines it is compared against.

A weight is seen as rows, ``w.reshape(F, -1)``: a dense layer's output units, a conv
layer's filters (C·KH·KW columns each).

The paper's:
- **Block-max weight masking (BMWM).** Each row is cut into contiguous blocks of b columns
  (the last one shorter when b does not divide the row) and the largest-magnitude weight of
  each block is kept:

      m[r, s + j] = 1   iff   j = argmax_{0 ≤ j' < b} |w[r, s + j']|     for every block start s = 0, b, 2b, ...

  One weight per block makes the index regular: a kept weight's column is s + j, so it is
  stored as its offset j alone, ⌈log2 b⌉ bits, with no chain of gaps to decode.
- **Density adaptivity.** After irregular magnitude pruning rows keep very different
  fractions of their weights, and denser rows are more sensitive to pruning; DARB gives each
  row a block size of its own, a denser row smaller blocks (so it keeps more weights).
- **The baselines:** BMWM with one block size for the whole layer, and block pruning (whole
  tiles kept by their norm), the structured pruning the paper measures against.

Our reading (the paper's full text was not available when this was written; a reader who
has it can check each choice against it):
- Row r's density d_r is the fraction of row r that magnitude pruning of the whole layer to
  `keep` keeps (`mpdref.prune.magnitude_mask`).
- Row r's block size is b_r = clip(round(α / d_r), 1, C) (b_r = C for a row magnitude pruning
  empties), with one α per layer: b_r ≈ α / d_r gives row r about C·d_r / α kept weights, its
  share of the layer's. α is found by bisection so that the total kept, Σ_r ⌈C / b_r⌉, is the
  nearest it can be to round(keep · size); `darb_mask` raises ValueError when that is not
  within 10%. With ``sizes="pow2"`` b_r is the power of two nearest to α / d_r (in log scale),
  so that a row's size is one of a few classes.
- Ties (equal magnitudes in a block): the first column wins, as np.argmax does.
- Block pruning: the row view cut into tile × tile squares (smaller at the edges), squares
  kept whole by their L2 norm, largest first (ties: row-major order), until the kept weights
  reach round(keep · size).
- Storage (`mpdref.compress`): the table of the layer's distinct block sizes, each row's class
  in it, and per kept weight its offset, ⌈log2 b_r⌉ bits (0 bits when b_r = 1) or Huffman-coded.
"""
from __future__ import annotations

import math

import numpy as np

from mpdref.prune import magnitude_mask

SIZES = ("any", "pow2")


def _rows(w: np.ndarray) -> np.ndarray:
    if w.ndim < 2 or w.size == 0:
        raise ValueError(f"a weight to mask must have rows and columns, got shape {w.shape}")
    return w.reshape(w.shape[0], -1)


def _check_keep(keep: float) -> None:
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], not {keep}")


def blocks_per_row(block_sizes: np.ndarray, cols: int) -> np.ndarray:
    """⌈C / b_r⌉: how many blocks, and so how many kept weights, each row has."""
    return -(-cols // np.asarray(block_sizes, np.int64))


def block_max_mask(w: np.ndarray, block_size) -> np.ndarray:
    """The BMWM mask of w: in each block of `block_size` consecutive columns of a row, its
    largest |w| (the first on ties). block_size: an integer, or one per row. uint8, w's shape."""
    rows = _rows(w)
    n_rows, cols = rows.shape
    sizes = np.asarray(block_size)
    if sizes.ndim == 0:
        sizes = np.full(n_rows, sizes)
    if (sizes.shape != (n_rows,) or not np.issubdtype(sizes.dtype, np.integer) or sizes.min() < 1
            or sizes.max() > cols):
        raise ValueError(f"block sizes must be integers in [1, {cols}] (the row length), one or one per row "
                         f"({n_rows}), got {block_size!r}")
    mask = np.zeros(rows.shape, np.uint8)
    for r in range(n_rows):
        b = int(sizes[r])
        for start in range(0, cols, b):
            block = np.abs(rows[r, start : start + b])
            mask[r, start + int(np.argmax(block))] = 1
    return mask.reshape(w.shape)


def row_densities(w: np.ndarray, keep: float) -> np.ndarray:
    """d_r: the fraction of row r that magnitude pruning of the whole of w to `keep` keeps."""
    _check_keep(keep)
    return magnitude_mask(w, keep=keep).reshape(w.shape[0], -1).mean(axis=1)


def density_block_sizes(density: np.ndarray, alpha: float, cols: int, sizes: str = "any") -> np.ndarray:
    """b_r = clip(round(α / d_r), 1, C), or with sizes="pow2" the power of two nearest to α / d_r;
    C for d_r = 0. Non-increasing in d_r."""
    if sizes not in SIZES:
        raise ValueError(f"sizes must be one of {', '.join(SIZES)}, not {sizes!r}")
    with np.errstate(divide="ignore"):
        ideal = np.where(density > 0, alpha / density, np.inf)
    if sizes == "pow2":
        ideal = np.exp2(np.round(np.log2(np.maximum(ideal, 1.0))))
    return np.clip(np.round(ideal), 1, cols).astype(np.int64)


def darb_block_sizes(w: np.ndarray, keep: float, sizes: str = "any") -> np.ndarray:
    """One block size per row: `density_block_sizes` with the α whose total kept is nearest to
    round(keep · size); where rows of equal density make that total jump past the target by more
    than 10%, the rows between the two sides are moved one at a time (sparsest first) to the step
    nearest the target. ValueError when nothing comes within 10% of it."""
    density = row_densities(w, keep)
    n_rows, cols = _rows(w).shape
    target = max(round(keep * w.size), 1)

    def kept(alpha):
        return int(blocks_per_row(density_block_sizes(density, alpha, cols, sizes), cols).sum())

    # kept(α) does not increase with α: from every b_r = 1 (all kept) to every b_r = C (one a row).
    positive = density[density > 0]
    lo = 0.25 * positive.min() if len(positive) else 1.0  # α / d_r < 1.5 for every row: all sizes 1
    hi = 2.0 * cols * max(positive.max() if len(positive) else 1.0, 1.0)  # every size C
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        if kept(mid) >= target:
            lo = mid
        else:
            hi = mid
    alpha = min((lo, hi), key=lambda a: abs(kept(a) - target))
    best = density_block_sizes(density, alpha, cols, sizes)
    achieved = int(blocks_per_row(best, cols).sum())
    if abs(achieved - target) > 0.1 * target:
        # Rows of equal density change size at the same α, so kept(α) can jump over the target (a
        # network trained briefly has such rows). Between lo and hi, move the rows that differ one
        # at a time, sparsest first (the order in which α / d_r grows; ties by row), and keep the
        # step nearest the target: a denser row still never gets the larger block.
        small, large = density_block_sizes(density, lo, cols, sizes), density_block_sizes(density, hi, cols, sizes)
        current = small.copy()
        for r in np.argsort(density, kind="stable"):
            if current[r] != large[r]:
                current[r] = large[r]
                total = int(blocks_per_row(current, cols).sum())
                if abs(total - target) < abs(achieved - target):
                    best, achieved = current.copy(), total
    if abs(achieved - target) > 0.1 * target:
        raise ValueError(f"no block sizes of this layer ({n_rows} rows of {cols}) keep within 10% of "
                         f"{target} weights (keep {keep}): the nearest keeps {achieved}")
    return best


def darb_mask(w: np.ndarray, keep: float, sizes: str = "any") -> tuple[np.ndarray, np.ndarray]:
    """(mask, block_sizes): every row r of the mask is `block_max_mask` of that row with its own
    block size b_r (`darb_block_sizes`), the kept total within 10% of round(keep · w.size)."""
    block_sizes = darb_block_sizes(w, keep, sizes)
    return block_max_mask(w, block_sizes), block_sizes


def uniform_block_size(w: np.ndarray, keep: float) -> int:
    """BMWM's one block size for the layer: the b whose kept total, rows · ⌈C / b⌉, is nearest to
    round(keep · size) (the smaller b on ties)."""
    _check_keep(keep)
    n_rows, cols = _rows(w).shape
    target = round(keep * w.size)
    b = np.arange(1, cols + 1)
    return int(b[np.argmin(np.abs(n_rows * blocks_per_row(b, cols) - target))])


def bmwm_mask(w: np.ndarray, keep: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask, block_sizes): block-max masking with `uniform_block_size` for every row."""
    b = uniform_block_size(w, keep)
    block_sizes = np.full(w.shape[0], b, np.int64)
    return block_max_mask(w, block_sizes), block_sizes


def block_prune_mask(w: np.ndarray, keep: float, tile: int = 4) -> np.ndarray:
    """Block pruning: the row view's tile × tile squares (smaller at the edges) kept whole, by
    their L2 norm, largest first (ties: row-major order), until round(keep · size) weights are kept
    (the last square taken is the one that reaches it). uint8, w's shape."""
    _check_keep(keep)
    if tile < 1:
        raise ValueError(f"tile must be >= 1, not {tile}")
    rows = _rows(w)
    n_rows, cols = rows.shape
    starts = [(r, c) for r in range(0, n_rows, tile) for c in range(0, cols, tile)]  # row-major
    norms = np.array([np.linalg.norm(rows[r : r + tile, c : c + tile]) for r, c in starts])
    target = round(keep * w.size)
    mask = np.zeros(rows.shape, np.uint8)
    kept = 0
    for i in np.argsort(-norms, kind="stable"):
        if kept >= target:
            break
        r, c = starts[i]
        mask[r : r + tile, c : c + tile] = 1
        kept += mask[r : r + tile, c : c + tile].size
    return mask.reshape(w.shape)


def offset_bits(block_sizes: np.ndarray) -> np.ndarray:
    """⌈log2 b_r⌉: the bits of one offset in a block of row r (0 when the block is one column)."""
    return np.ceil(np.log2(np.asarray(block_sizes, np.float64))).astype(np.int64)


def mean_offset_bits(block_sizes: np.ndarray, cols: int) -> float:
    """The fixed-width offset bits per kept weight of a layer with these block sizes (before Huffman):
    Σ_r ⌈C / b_r⌉ · ⌈log2 b_r⌉ / Σ_r ⌈C / b_r⌉."""
    counts = blocks_per_row(block_sizes, cols)
    return float(np.sum(counts * offset_bits(block_sizes)) / counts.sum())


METHODS = ("darb", "bmwm", "block")


def regular_prune(net, keep: dict, method: str = "darb", sizes: str = "any", tile: int = 4) -> dict:
    """Mask the named weights of `net` in place with a regular mask of `method` ("darb": `darb_mask`,
    "bmwm": `bmwm_mask`, "block": `block_prune_mask`), computed from the current weights; the new
    mask replaces any earlier one. Returns {name: {"kept": fraction, "block_sizes": per row (None for
    block pruning)}}."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    out = {}
    for name, fraction in keep.items():
        w = net.params[name]
        if method == "block":
            mask, block_sizes = block_prune_mask(w, fraction, tile), None
        elif method == "bmwm":
            mask, block_sizes = bmwm_mask(w, fraction)
        else:
            mask, block_sizes = darb_mask(w, fraction, sizes)
        net.masks.pop(name, None)  # a block may keep a weight an earlier mask dropped (it restarts at 0)
        net.set_mask(name, mask)
        out[name] = {"kept": float(mask.mean()), "block_sizes": block_sizes}
    return out


def row_block_sizes(mask: np.ndarray) -> np.ndarray | None:
    """The smallest block size of each row for which `mask` is block-max regular (every block of
    every row, `block_max_mask`'s blocks, holds exactly one kept weight); None when no size fits
    some row (e.g. a row keeps nothing).

    Row r keeps n weights at columns p_0 < ... < p_{n-1} of C. A size b fits when it cuts the row
    into n blocks, (n - 1)·b < C ≤ n·b, and block i holds p_i, i·b ≤ p_i < (i + 1)·b: b lies in
    [max(⌈C / n⌉, max_i ⌊p_i / (i + 1)⌋ + 1), min(⌊(C - 1) / (n - 1)⌋, min_{i≥1} ⌊p_i / i⌋)].
    The smallest b has the shortest offsets.
    """
    rows = _rows(np.asarray(mask))
    cols = rows.shape[1]
    out = np.empty(rows.shape[0], np.int64)
    for r, row in enumerate(rows):
        p = np.flatnonzero(row)
        n = len(p)
        if n == 0:
            return None
        i = np.arange(n)
        lower = max(-(-cols // n), int(np.max(p // (i + 1))) + 1)
        upper = cols if n == 1 else min((cols - 1) // (n - 1), int(np.min(p[1:] // i[1:])))
        if lower > upper:
            return None
        out[r] = lower
    return out


# ----------------------------------------------------------------------------- decoding


def darb_positions(block_sizes: np.ndarray, offsets: np.ndarray, cols: int) -> np.ndarray:
    """The flat positions (row·C + column) of a regular mask's kept weights, row by row, block by
    block: the k-th kept weight, in block i of row r, is at column i·b_r + offsets[k]."""
    block_sizes = np.asarray(block_sizes, np.int64)
    counts = blocks_per_row(block_sizes, cols)
    row_of = np.repeat(np.arange(len(block_sizes)), counts)  # the row of each kept weight
    block = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)  # its block in the row
    return row_of * cols + block * block_sizes[row_of] + np.asarray(offsets, np.int64)


def darb_offsets(block_sizes: np.ndarray, positions: np.ndarray, cols: int) -> np.ndarray:
    """The inverse of `darb_positions`: each kept weight's offset in its block."""
    return np.asarray(positions, np.int64) - darb_positions(block_sizes, 0, cols)


def darb_matmul(block_sizes: np.ndarray, offsets: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y = W x straight from the stored form: y[r] = Σ_k values[k] · x[column of k] over row r's kept
    weights. x (C, N) -> y (rows, N)."""
    cols = x.shape[0]
    positions = darb_positions(block_sizes, offsets, cols)
    y = np.zeros((len(block_sizes), x.shape[1]), np.result_type(values, x))
    np.add.at(y, positions // cols, values[:, None] * x[positions % cols])
    return y
