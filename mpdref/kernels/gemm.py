"""A matrix product on Numba's threads, for the dense layers of every network on the fast set.

    c[m, j] = Σ_p a[m, p] · b[p, j]        a (M, K), b (K, N), both row-major

Why not BLAS: BLAS's sums depend on its threads (OpenBLAS on two threads splits the depth of
LeNet-300-100's 64 × 784 @ 784 × 300 product in two), so every pass of a fast-set network
keeps NumPy's BLAS to one thread (`mpdref.kernels.threads`; also: two spinning thread pools
on the same cores slow both), and its dense layers would multiply on one core while the
other waits. Deep MNIST's fc1 (3136 → 1024) was 8.7 of a 35 ms training step on one BLAS
thread. Here the same products run on Numba's threads, the pool the convolutions already
use, with sums that do not depend on them. (LeNet-300-100's training pays for it: two-thread
BLAS multiplied its 784 × 300 layer faster.)

The product is a GEMM in the style of Goto and van de Geijn (2008), as in
`mpdref.kernels.blockdiag`, without packing: the register tile
(`mpdref.kernels.intrinsics.gathered_tile_product`) takes the rows of a (TILE_ROWS of them)
and the steps of b (rows of b, NR columns each) where they lie, through index tables. The
depth is cut into slices of about SLICE_BYTES of a panel of b (NR columns), so that the
slice stays in L1 while every tile of rows of a passes over it; the rows of a that a thread
works on stay in L2 across the panels. The threads share the tiles of rows of a, or the
panels of b where there are more of those (a product with a short a, like dy·w at batch 64).
`batched_matmul` computes B such products at once (MPD's block form: one per block), the
threads sharing (product, tiles) pairs.

Each output is one running sum over p = 0, 1, ..., K − 1 in order (the slices add to what
the tile stored: the same float additions in the same order), so the result does not depend
on the number of threads or on how the work is cut; it differs from BLAS's sums in rounding
only. Held to NumPy's product in tests/test_gemm.py.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from mpdref.kernels.config import PARALLEL, CpuTile
from mpdref.kernels.intrinsics import CPU_TILE, gathered_tile_product, make_gathered_tile_product, tile_columns

TILE_ROWS = CPU_TILE.rows
#: the tile one vector narrower, for a last panel half as wide: a product whose width is a whole number
#: of half panels (LeNet-300-100's dw = dyᵀ x, 784 = 24.5 panels of 32 float32) then needs no padded
#: copy of b and c (40 of its 250 µs at batch 64)
#: (both of config.CPU_TILES have two vectors a row; a tile of an odd number would pad whole panels)
HALF_TILE = (CpuTile(CPU_TILE.rows, CPU_TILE.vector_bytes, CPU_TILE.vectors_per_row // 2)
             if CPU_TILE.vectors_per_row % 2 == 0 else CPU_TILE)
half_tile_product = make_gathered_tile_product(HALF_TILE)
#: bytes of one depth slice of a panel of b (NR columns): half of L1, the product's share
SLICE_BYTES = 16 * 1024
#: multiply-adds below which a product is left to BLAS (on one thread): too small to share
SMALL_PRODUCT = 1 << 22
#: the same for a product whose width is a whole number of half panels (no padded copies of b and c):
#: LeNet-300-100's fc2 forward, w xᵀ at batch 64 (1.9 M), 23.8 µs here against 30.9 µs on BLAS's
#: thread; its backward products (300 wide: padded on AVX-512) 22.8 and 24.2 against 20.6 and 20.5 µs
SMALL_UNPADDED_PRODUCT = 1 << 20


#: a transpose of more elements than this goes by blocks of 16 rows × 256 columns, a smaller one by
#: bands of 8 whole rows (fewer, longer units: less for the threads to share out)
SMALL_TRANSPOSE = 1 << 17


def _make_transpose(band: int, chunk: int):
    """out[c, r] = a[r, c] (+ row_addend[r] unless it is None), in units of `band` rows × `chunk`
    columns (chunk 0: all of them): each unit writes `band` consecutive values of each of its
    columns of out while it reads its `band` rows of a in order. band and chunk are constants of the
    compiled code (as arguments, the inner loop over the band compiled to code six times slower)."""

    @numba.njit(**PARALLEL)
    def transpose(a, out, row_addend):
        rows, cols = a.shape
        width = cols if chunk == 0 else chunk
        bands, chunks = rows // band, -(-cols // width)
        for unit in prange(bands * chunks):
            r0, c0 = (unit // chunks) * band, (unit % chunks) * width
            for c in range(c0, min(cols, c0 + width)):
                for r in range(band):
                    if row_addend is None:
                        out[c, r0 + r] = a[r0 + r, c]
                    else:
                        out[c, r0 + r] = a[r0 + r, c] + row_addend[r0 + r]
        for r in range(bands * band, rows):  # the rows past the last whole band
            for c in range(cols):
                if row_addend is None:
                    out[c, r] = a[r, c]
                else:
                    out[c, r] = a[r, c] + row_addend[r]

    return transpose


_transpose_bands = _make_transpose(8, 0)
_transpose_blocks = _make_transpose(16, 256)


def transposed(a: np.ndarray, row_addend: np.ndarray | None = None) -> np.ndarray:
    """aᵀ as a C-contiguous array, copied on Numba's threads; with `row_addend` (one value per row of
    a), aᵀ + row_addend, each element one float addition (as NumPy's). NumPy's copy of a transposed
    view runs on one thread, and slowly where a is large (0.47 ms for 1024 × 784 float32, against
    0.16-0.17 ms here on two cores; 13 against 6-7 µs for LeNet-300-100's 64 × 784 input)."""
    if row_addend is not None and (row_addend.shape != (a.shape[0],) or row_addend.dtype != a.dtype):
        raise ValueError(f"gemm.transposed: row_addend {row_addend.shape} {row_addend.dtype} is not one "
                         f"{a.dtype} value per row of a {a.shape}")
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    if a.size:
        (_transpose_blocks if a.size > SMALL_TRANSPOSE else _transpose_bands)(a, out, row_addend)
    return out


def is_small(m: int, k: int, n: int, dtype=None) -> bool:
    """Whether an (m, k) @ (k, n) product is better left to BLAS on one thread: below SMALL_PRODUCT
    multiply-adds; with its dtype given, below SMALL_UNPADDED_PRODUCT where n is a whole number of
    half panels (`matmul` then copies nothing into a padded layout). The dense layers give the dtype;
    the block form's stacked products (`fast_ops._stacked_matmul`) do not: the lower bound was
    measured on LeNet-300-100's fc2 only."""
    if dtype is not None and n % tile_columns(dtype, HALF_TILE) == 0:
        return m * k * n < SMALL_UNPADDED_PRODUCT
    return m * k * n < SMALL_PRODUCT


@numba.njit(**PARALLEL)
def _gemm(a, a_rows, a_batch, b, ldb, b_batch, c, ldc, c_batch, nr, panels, depth, slice_depth, batches, chunks,
          by_rows, half_last):
    """For each product i < batches: c[i·c_batch + m·ldc + j] = Σ_p a[i·a_batch + a_rows[m] + p] ·
    b[i·b_batch + p·ldb + j] for m < len(a_rows), j < panels · nr (the last panel nr / 2 wide with
    `half_last`). The work of each product, (row tiles) × (panels), is cut into `chunks` runs of row
    tiles (by_rows) or of panels; the units of work are the (product, chunk) pairs. Within one, slice
    by slice of the depth, every tile."""
    tiles = len(a_rows) // TILE_ROWS
    steps = np.arange(slice_depth) * ldb
    for unit in prange(batches * chunks):
        i, chunk = unit // chunks, unit % chunks
        a0, b0, c0 = i * a_batch, i * b_batch, i * c_batch
        if by_rows:
            t0, t1 = chunk * tiles // chunks, (chunk + 1) * tiles // chunks
            q0, q1 = 0, panels
        else:
            t0, t1 = 0, tiles
            q0, q1 = chunk * panels // chunks, (chunk + 1) * panels // chunks
        for k0 in range(0, depth, slice_depth):
            d = min(slice_depth, depth - k0)
            for q in range(q0, q1):
                for t in range(t0, t1):
                    if half_last and q == panels - 1:
                        half_tile_product(a, a0 + k0, a_rows, t * TILE_ROWS, b, b0 + k0 * ldb + q * nr, steps,
                                          c, c0 + t * TILE_ROWS * ldc + q * nr, ldc, d, k0 > 0)
                    else:
                        gathered_tile_product(a, a0 + k0, a_rows, t * TILE_ROWS, b, b0 + k0 * ldb + q * nr, steps,
                                              c, c0 + t * TILE_ROWS * ldc + q * nr, ldc, d, k0 > 0)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (M, K) @ b (K, N) -> (M, N), C-contiguous, on Numba's threads (see the module's text); a and b
    of one float dtype. Equals `a @ b` to rounding, and the same bits whatever the threads."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or a.dtype != b.dtype:
        raise ValueError(f"gemm.matmul: a {a.shape} {a.dtype} and b {b.shape} {b.dtype} do not multiply")
    return _products(a[None], b[None])[0]


def batched_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (B, M, K) @ b (B, K, N) -> (B, M, N), C-contiguous: B products as `matmul` computes one (each
    product's outputs the same running sums, so the bits of `matmul` on that product), all B on
    Numba's threads at once (the stacked blocks of MPD's block form: k small products)."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1] or a.dtype != b.dtype:
        raise ValueError(f"gemm.batched_matmul: a {a.shape} {a.dtype} and b {b.shape} {b.dtype} do not multiply")
    return _products(a, b)


class _Plan(NamedTuple):
    """How `_products` cuts one shape of product: what depends on the shapes and the threads only."""

    n_pad: int          # columns of b and c: whole panels, and a half one at the end where that is enough
    m_pad: int          # rows of c: whole tiles
    a_rows: np.ndarray  # offset of each row of a tile reads (rows past M read row M − 1; dropped)
    panels: int
    nr: int
    chunks: int
    by_rows: bool
    slice_depth: int


@functools.lru_cache(maxsize=64)
def _plan(dtype: np.dtype, batches: int, m: int, k: int, n: int, threads: int) -> _Plan:
    """The cut of a (batches, m, k) @ (batches, k, n) product on `threads` threads; cached, since a
    network multiplies the same shapes at every step (the fixed cost of a call, timed on a 6 × 4 @ 4 × 32
    product: 12.1 µs when each call worked it out, 5.8 µs with the cache; LeNet-300-100 makes two
    such calls a step)."""
    nr = tile_columns(dtype)
    half = tile_columns(dtype, HALF_TILE)  # nr itself where the tile cannot be halved
    n_pad = -(-n // half) * half
    m_pad = -(-m // TILE_ROWS) * TILE_ROWS
    a_rows = np.minimum(np.arange(m_pad), m - 1).astype(np.int64) * k
    a_rows.flags.writeable = False  # shared by every call of this shape
    tiles, panels = m_pad // TILE_ROWS, -(-n_pad // nr)
    by_rows = tiles >= panels
    # enough chunks that the units of work (products × chunks) share out evenly between the threads
    chunks = max(1, min(tiles if by_rows else panels, threads // math.gcd(batches, threads)))
    slice_depth = min(max(1, SLICE_BYTES // (nr * dtype.itemsize)), k)
    return _Plan(n_pad, m_pad, a_rows, panels, nr, chunks, by_rows, slice_depth)


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"gemm: float32 or float64, not {a.dtype}")
    batches, m, k = a.shape
    n = b.shape[2]
    if batches == 0 or m == 0 or n == 0 or k == 0:
        return np.zeros((batches, m, n), dtype=a.dtype)
    plan = _plan(a.dtype, batches, m, k, n, numba.get_num_threads())
    n_pad, m_pad = plan.n_pad, plan.m_pad
    a = np.ascontiguousarray(a)
    if n_pad == n:
        b = np.ascontiguousarray(b)
    else:  # the last panel reads its whole width: give it zeros to read
        b_padded = np.zeros((batches, k, n_pad), dtype=a.dtype)
        b_padded[:, :, :n] = b
        b = b_padded
    c = np.empty((batches, m_pad, n_pad), dtype=a.dtype)
    _gemm(a.reshape(-1), plan.a_rows, m * k, b.reshape(-1), n_pad, k * n_pad, c.reshape(-1), n_pad, m_pad * n_pad,
          plan.nr, plan.panels, k, plan.slice_depth, batches, plan.chunks, plan.by_rows, n_pad % plan.nr != 0)
    if n_pad == n and (m_pad == m or batches == 1):
        return c[:, :m]  # C order: whole rows of each product
    return np.ascontiguousarray(c[:, :m, :n])
