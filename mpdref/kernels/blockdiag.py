"""Numba CPU kernel for MPD's block-diagonal product, with the permutations fused.

Equals ``block_diagonal_matmul(blocks, x[:, col_perm])[:, inverse(row_perm)]`` of
`mpdref.mpd`: the input gather and the output scatter happen inside the kernel,
block by block, never as separate permuted copies of the whole matrix.
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from mpdref.kernels.config import PARALLEL


@numba.njit(**PARALLEL)
def _block_diagonal_matmul(weights, offsets, row_bounds, col_bounds, row_perm, col_perm, x):
    n, cols = x.shape
    k = len(row_bounds) - 1
    rows = row_bounds[k]
    # Gather row by row into a block-major buffer: block b's inputs are the contiguous
    # (n, c_b) matrix at xb[n·c0 : n·c1]. Each source row is read while it is in cache.
    xb = np.empty(n * cols, dtype=x.dtype)
    for i in prange(n):
        for b in range(k):
            c0, c1 = col_bounds[b], col_bounds[b + 1]
            base = n * c0 + i * (c1 - c0)
            for j in range(c1 - c0):
                xb[base + j] = x[i, col_perm[c0 + j]]
    yb = np.empty(n * rows, dtype=x.dtype)
    for b in prange(k):
        r0, r1 = row_bounds[b], row_bounds[b + 1]
        c0, c1 = col_bounds[b], col_bounds[b + 1]
        block = weights[offsets[b] : offsets[b + 1]].reshape((r1 - r0, c1 - c0))
        lhs = xb[n * c0 : n * c1].reshape((n, c1 - c0))
        yb[n * r0 : n * r1] = np.dot(lhs, block.T).ravel()  # (n, r_b) on BLAS
    # Scatter row by row back to the original output order.
    y = np.empty((n, rows), dtype=x.dtype)
    for i in prange(n):
        for b in range(k):
            r0, r1 = row_bounds[b], row_bounds[b + 1]
            base = n * r0 + i * (r1 - r0)
            for j in range(r1 - r0):
                y[i, row_perm[r0 + j]] = yb[base + j]
    return y


@functools.cache
def _blas_controller():
    # Inspecting the process's libraries takes ~0.1 ms; do it once, not per product.
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def pack_blocks(blocks, dtype):
    """Concatenate blocks into one flat array with offsets (the kernel's storage)."""
    sizes = [b.size for b in blocks]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = np.concatenate([np.ascontiguousarray(b, dtype=dtype).ravel() for b in blocks]) if blocks else np.empty(0, dtype)
    return flat, offsets


def block_diagonal_matmul_permuted(flat, offsets, row_bounds, col_bounds, row_perm, col_perm, x):
    """y = x Wᵀ for W = P_r blockdiag(B_b) P_cᵀ, computed block by block (see the module docstring).

    x (N, cols) float32 or float64 in the original column order -> y (N, rows) in the original row order.
    """
    if x.dtype != flat.dtype:
        raise TypeError(f"x is {x.dtype}, the blocks are {flat.dtype}")
    with _blas_controller().limit(limits=1, user_api="blas"):  # BLAS inside prange: one thread each
        return _block_diagonal_matmul(flat, offsets, row_bounds, col_bounds, row_perm, col_perm,
                                      np.ascontiguousarray(x))
