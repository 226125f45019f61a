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

from mpdref.kernels.allocator import reuse_freed_memory
from mpdref.kernels.config import PARALLEL


@numba.njit(**PARALLEL)
def _block_diagonal_matmul(weights, offsets, row_bounds, col_bounds, row_perm, col_perm, x):
    n, cols = x.shape
    k = len(row_bounds) - 1
    rows = row_bounds[k]
    # Gather row by row into a block-major buffer: block b's inputs are the contiguous
    # (n, c_b) matrix at xb[n·c0 : n·c1]. Each source row is read while it is in cache.
    # Indices go through uint32: an unsigned index needs no test for Python's negative
    # indexing (permutation indices are < 2^32); the gather alone took half the time with it.
    xb = np.empty(n * cols, dtype=x.dtype)
    for i in prange(n):
        row = x[i]
        for b in range(k):
            c0, c1 = col_bounds[b], col_bounds[b + 1]
            dst = xb[n * c0 + i * (c1 - c0) : n * c0 + (i + 1) * (c1 - c0)]
            src = col_perm[c0:c1]
            for j in range(c1 - c0):
                dst[j] = row[np.uint32(src[j])]
    yb = np.empty(n * rows, dtype=x.dtype)
    for b in prange(k):
        r0, r1 = row_bounds[b], row_bounds[b + 1]
        c0, c1 = col_bounds[b], col_bounds[b + 1]
        block = weights[offsets[b] : offsets[b + 1]].reshape((r1 - r0, c1 - c0))
        lhs = xb[n * c0 : n * c1].reshape((n, c1 - c0))
        np.dot(lhs, block.T, yb[n * r0 : n * r1].reshape((n, r1 - r0)))  # (n, r_b) on BLAS, in place
    # Scatter row by row back to the original output order.
    y = np.empty((n, rows), dtype=x.dtype)
    for i in prange(n):
        out = y[i]
        for b in range(k):
            r0, r1 = row_bounds[b], row_bounds[b + 1]
            src = yb[n * r0 + i * (r1 - r0) : n * r0 + (i + 1) * (r1 - r0)]
            dst = row_perm[r0:r1]
            for j in range(r1 - r0):
                out[np.uint32(dst[j])] = src[j]
    return y


@functools.cache
def _blas_controller():
    # Inspecting the process's libraries takes ~0.1 ms; do it once, not per product. Numba's
    # np.dot calls the BLAS that scipy.linalg.cython_blas loads, which is not NumPy's: load it
    # first, or the limit misses it and each prange thread's BLAS starts threads of its own.
    import scipy.linalg.cython_blas  # noqa: F401
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
    # The gather and product buffers are as large as x and y: let glibc keep them for the next
    # product instead of returning them to the OS and faulting them in again (as `fit` does).
    reuse_freed_memory()
    with _blas_controller().limit(limits=1, user_api="blas"):  # BLAS inside prange: one thread each
        return _block_diagonal_matmul(flat, offsets, row_bounds, col_bounds, row_perm, col_perm,
                                      np.ascontiguousarray(x))
