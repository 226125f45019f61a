"""Numba kernels that decode sparse weights and multiply from the stored form, for
`benchmarks/sparse_decode.py`. Each equals a NumPy reference of the method it serves
(tests/test_darb.py holds them equal):

    darb_positions, darb_matmul              mpdref.darb.darb_positions, darb_matmul
    csr_positions                            the positions of scipy.sparse.csr_matrix's entries
    tile_positions                           the positions of block pruning's whole tiles
    relative_positions, relative_matmul      mpdref.sparse_index.positions_from_indices, then y = W x
    tile_matmul                              y = W x for a weight of whole tile × tile squares

Products are y (rows, N) = W x with x (cols, N): a kept weight adds its value times one
row of x to one row of y, so the inner loop runs over the batch in contiguous memory. A
DARB weight's column is block start + offset (a multiply-add); a relative index's is a
running sum of gaps, split into row and column by a division per weight.
"""
from __future__ import annotations

import numba

from mpdref.kernels.config import SERIAL


@numba.njit(**SERIAL)
def darb_positions(block_sizes, offsets, cols, out):
    """out[k] = r·C + i·b_r + offsets[k] for the k-th kept weight, in block i of row r."""
    k = 0
    for r in range(len(block_sizes)):
        b = block_sizes[r]
        for start in range(0, cols, b):
            out[k] = r * cols + start + offsets[k]
            k += 1


@numba.njit(**SERIAL)
def darb_matmul(block_sizes, offsets, values, cols, x, y):
    """y (rows, N) = W x, W stored as DARB block sizes, offsets and values; y starts at 0."""
    n = x.shape[1]
    k = 0
    for r in range(len(block_sizes)):
        b = block_sizes[r]
        if n == 1:  # a matrix-vector product: one running sum per row
            acc = y[r, 0]
            for start in range(0, cols, b):
                acc += values[k] * x[start + offsets[k], 0]
                k += 1
            y[r, 0] = acc
            continue
        for start in range(0, cols, b):
            v = values[k]
            src = start + offsets[k]
            for j in range(n):
                y[r, j] += v * x[src, j]
            k += 1


@numba.njit(**SERIAL)
def relative_positions(symbols, out):
    """out[k] = the flat position of stored entry k: the running sum of the gaps symbols + 1, from -1."""
    p = -1
    for k in range(len(symbols)):
        p += symbols[k] + 1
        out[k] = p


@numba.njit(**SERIAL)
def relative_matmul(symbols, values, cols, x, y):
    """y (rows, N) = W x, W stored as relative indices and values (fillers carry 0); y starts at 0."""
    n = x.shape[1]
    p = -1
    for k in range(len(symbols)):
        p += symbols[k] + 1
        v = values[k]
        if v == 0:
            continue  # a filler
        r = p // cols
        c = p - r * cols
        if n == 1:
            y[r, 0] += v * x[c, 0]
            continue
        for j in range(n):
            y[r, j] += v * x[c, j]


@numba.njit(**SERIAL)
def tile_matmul(tile_rows, tile_cols, tiles, x, y):
    """y (rows, N) = W x, W stored as whole tiles: tiles[t] (T, T) at rows tile_rows[t]·T, columns
    tile_cols[t]·T (cut at the weight's edges); y starts at 0."""
    t_size = tiles.shape[1]
    rows, n = y.shape
    cols = x.shape[0]
    for t in range(len(tile_rows)):
        r0 = tile_rows[t] * t_size
        c0 = tile_cols[t] * t_size
        for i in range(min(t_size, rows - r0)):
            for q in range(min(t_size, cols - c0)):
                v = tiles[t, i, q]
                for j in range(n):
                    y[r0 + i, j] += v * x[c0 + q, j]


@numba.njit(**SERIAL)
def csr_positions(indptr, indices, cols, out):
    """out[k] = r·C + indices[k] for the k-th stored entry, in row r (indptr[r] <= k < indptr[r + 1])."""
    for r in range(len(indptr) - 1):
        for k in range(indptr[r], indptr[r + 1]):
            out[k] = r * cols + indices[k]


@numba.njit(**SERIAL)
def tile_positions(tile_rows, tile_cols, t_size, rows, cols, out):
    """The flat positions of the weights of whole tiles, tile by tile, row-major inside a tile; returns
    how many (edge tiles are cut)."""
    k = 0
    for t in range(len(tile_rows)):
        r0 = tile_rows[t] * t_size
        c0 = tile_cols[t] * t_size
        for i in range(min(t_size, rows - r0)):
            for q in range(min(t_size, cols - c0)):
                out[k] = (r0 + i) * cols + c0 + q
                k += 1
    return k
