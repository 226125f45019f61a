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
import numpy as np

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
    """y (rows, N) = W x, W stored as DARB block sizes, offsets and values; y starts at 0.

    The indices are unsigned (np.uint64): Numba skips the negative-index wraparound test on
    them, which at batch 1 costs as much as the multiply-add itself. At batch 1, two sums
    (even and odd blocks) halve the chain of dependent additions; they are added at the end,
    so the result differs from a single running sum's by rounding only."""
    n = x.shape[1]
    end = np.uint64(cols)
    one = np.uint64(1)
    k = np.uint64(0)
    for r in range(len(block_sizes)):
        b = np.uint64(block_sizes[r])
        start = np.uint64(0)
        if n == 1:  # a matrix-vector product: two running sums per row, even and odd blocks
            even = odd = values[0] * 0
            while start + b < end:
                even += values[k] * x[start + offsets[k], 0]
                odd += values[k + one] * x[start + b + offsets[k + one], 0]
                k += one + one
                start += b + b
            if start < end:
                even += values[k] * x[start + offsets[k], 0]
                k += one
            y[r, 0] += even + odd
            continue
        while start < end:
            v = values[k]
            src = start + offsets[k]
            for j in range(n):
                y[r, j] += v * x[src, j]
            k += one
            start += b


@numba.njit(**SERIAL)
def relative_positions(symbols, out):
    """out[k] = the flat position of stored entry k: the running sum of the gaps symbols + 1, from -1."""
    p = -1
    for k in range(len(symbols)):
        p += symbols[k] + 1
        out[k] = p


@numba.njit(**SERIAL)
def relative_matmul(symbols, values, cols, x, y):
    """y (rows, N) = W x, W stored as relative indices and values (fillers carry 0); y starts at 0.

    The column is carried from entry to entry (a gap moves it right, wrapping into the next
    rows), so no entry pays a division; indices unsigned as in darb_matmul."""
    n = x.shape[1]
    zero = np.zeros(1, values.dtype)[0]
    r, c, acc = 0, -1, zero  # acc: the running sum of row r, at batch 1
    for k in range(len(symbols)):
        c += symbols[k] + 1
        while c >= cols:
            if n == 1:
                y[np.uint64(r), 0] += acc
                acc = zero
            c -= cols
            r += 1
        v = values[np.uint64(k)]
        if v == 0:
            continue  # a filler
        if n == 1:
            acc += v * x[np.uint64(c), 0]
            continue
        for j in range(n):
            y[np.uint64(r), j] += v * x[np.uint64(c), j]
    if n == 1 and r < y.shape[0]:
        y[np.uint64(r), 0] += acc


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
