"""Block-diagonal dense products: the layers of MPD's block form (`mpdref.mpd`).

A dense layer trained under a permuted block-diagonal mask is k dense blocks B_b
(r_b × c_b). In block form its input is gathered once into the blocks' column order
and each block multiplies only its own columns:

    y[:, rows of block b] = x[:, gather[columns of block b]] · B_bᵀ + bias[rows of block b]

`block_diagonal_matmul` is that product on a list of blocks (the reference of
`mpdref.kernels.blockdiag`). `block_dense_forward/backward` are the training layer:
the blocks stacked and zero-padded to the largest, w (k, R, C), so that the layer is
one batched matrix product; `padded_gather` (k·C,) names the input column each padded
block column reads (-1: a padding column, which reads 0), `valid_rows` (rows,) where
each block-ordered output sits among the k·R padded rows.
"""
from __future__ import annotations

import numpy as np

from mpdref.ops._checks import common_float_dtype


def block_diagonal_matmul(blocks: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """y = x · blockdiag(B_1, ..., B_k)ᵀ.

    blocks[b] (r_b, c_b); x (N, Σ c_b) with its columns already in block order
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


def gather_blocks(x: np.ndarray, padded_gather: np.ndarray, k: int) -> np.ndarray:
    """xs (k, N, C)[b, n, j] = x[n, padded_gather[b·C + j]], 0 where that index is -1."""
    n = x.shape[0]
    x_ext = np.concatenate([x, np.zeros((n, 1), x.dtype)], axis=1)  # index -1 reads this zero column
    return np.ascontiguousarray(x_ext[:, padded_gather].reshape(n, k, -1).transpose(1, 0, 2))


def rows_from_blocks(ys: np.ndarray, valid_rows: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """y (N, rows)[n, q] = ys (k, N, R)[b, n, r] + bias[q], where valid_rows[q] = b·R + r."""
    k, n, r_max = ys.shape
    rows = ys.transpose(1, 0, 2).reshape(n, k * r_max)[:, valid_rows]
    return np.ascontiguousarray(rows) + bias  # C order, as every activation: reductions over it round alike


def blocks_from_rows(dout: np.ndarray, valid_rows: np.ndarray, k: int, r_max: int) -> np.ndarray:
    """The adjoint of `rows_from_blocks` (without the bias): dys (k, N, R), 0 on the padding rows."""
    n = dout.shape[0]
    dys = np.zeros((n, k * r_max), dout.dtype)
    dys[:, valid_rows] = dout
    return np.ascontiguousarray(dys.reshape(n, k, r_max).transpose(1, 0, 2))


def scatter_blocks(dxs: np.ndarray, padded_gather: np.ndarray, cols: int) -> np.ndarray:
    """The adjoint of `gather_blocks`: dx (N, cols)[n, padded_gather[b·C + j]] = dxs[b, n, j], padding
    dropped (padded_gather is a permutation of the columns but for the padding)."""
    k, n, c_max = dxs.shape
    valid = padded_gather >= 0
    dx = np.empty((n, cols), dxs.dtype)
    dx[:, padded_gather[valid]] = dxs.transpose(1, 0, 2).reshape(n, k * c_max)[:, valid]
    return dx


def check_block_dense_args(x: np.ndarray, w: np.ndarray, b: np.ndarray, padded_gather: np.ndarray,
                           valid_rows: np.ndarray) -> None:
    """Raise on arguments block_dense_forward cannot take (dtypes, shapes), naming them."""
    common_float_dtype("block_dense_forward", x=x, w=w, b=b)
    k, _, c_max = w.shape
    if x.ndim != 2 or padded_gather.shape != (k * c_max,) or b.shape != valid_rows.shape:
        raise ValueError(f"block_dense_forward: shapes do not fit: x {x.shape}, w {w.shape}, b {b.shape}, "
                         f"padded_gather {padded_gather.shape}, valid_rows {valid_rows.shape}")


def block_dense_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, padded_gather: np.ndarray,
                        valid_rows: np.ndarray, gather_blocks=gather_blocks, rows_from_blocks=rows_from_blocks,
                        matmul=np.matmul):
    """x (N, cols), w (k, R, C) zero-padded blocks, b (rows,) in block order -> y (N, rows), cache:

        xs[b] = gathered columns of block b (N, C);   ys[b] = xs[b] · w[b]ᵀ (N, R);   y = ys's valid rows + b

    `gather_blocks`, `rows_from_blocks`: the data movement (this module's, or compiled equals); `matmul`:
    the stacked product (NumPy's, or one on other threads, equal to rounding)."""
    check_block_dense_args(x, w, b, padded_gather, valid_rows)
    xs = gather_blocks(np.ascontiguousarray(x), padded_gather, w.shape[0])  # (k, N, C)
    ys = matmul(xs, w.transpose(0, 2, 1))  # (k, N, R)
    return rows_from_blocks(ys, valid_rows, b), (xs, w, padded_gather, valid_rows, x.shape[1])


def block_dense_inference(x: np.ndarray, w: np.ndarray, b: np.ndarray, padded_gather: np.ndarray,
                          valid_rows: np.ndarray) -> np.ndarray:
    """block_dense_forward's y alone, for a pass that keeps no cache (inference). The reference is
    block_dense_forward itself; the fast set computes it in one compiled pass
    (`mpdref.kernels.blockdiag.stacked_blocks_in_lanes`)."""
    return block_dense_forward(x, w, b, padded_gather, valid_rows)[0]


def block_dense_backward(dout: np.ndarray, cache, need_dx: bool = True, blocks_from_rows=blocks_from_rows,
                         scatter_blocks=scatter_blocks, matmul=np.matmul):
    """dout (N, rows) -> (dx (N, cols) or None, dw (k, R, C), db (rows,)):

        dys = dout in block layout (k, N, R);   dw[b] = dys[b]ᵀ · xs[b];   db = Σ_n dout
        dx = the gathered dxs[b] = dys[b] · w[b] scattered back to the input's columns

    dw is zero on the padding (its rows of dys and columns of xs are zero). `blocks_from_rows`,
    `scatter_blocks`, `matmul`: as in block_dense_forward."""
    xs, w, padded_gather, valid_rows, cols = cache
    k, r_max, _ = w.shape
    dys = blocks_from_rows(np.ascontiguousarray(dout), valid_rows, k, r_max)  # (k, N, R)
    dw = matmul(dys.transpose(0, 2, 1), xs)  # (k, R, C)
    db = dout.sum(axis=0)
    if not need_dx:
        return None, dw, db
    return scatter_blocks(matmul(dys, w), padded_gather, cols), dw, db
