"""Numba CPU kernel for MPD's block-diagonal product, with the permutations fused.

Equals `permuted_block_diagonal_matmul` of tests/naive.py (gather = col_perm, row_dest =
row_perm), to rounding: the input gather and the output scatter happen inside the kernel, a
strip of the batch at a time, never as separate permuted copies of the whole matrix.

For each strip of up to STRIP_ROWS rows of x (the strips, or strips × groups of blocks
for small batches, are the units of work the threads share; see work_split):

1. gather: each row of x is read once, in the order col_perm asks for, into a block-major
   buffer (block b's inputs a (rows, c_b) matrix), while the next row is prefetched;
2. multiply: a GEMM in the style of Goto and van de Geijn (2008): each panel of NR
   outputs of a block, packed once by pack_blocks, stays in L1 while every tile of
   TILE_ROWS rows passes over it; the tile is `mpdref.kernels.intrinsics.tile_product`,
   which keeps its TILE_ROWS × NR results in vector registers. Deep blocks are cut into
   slices of DEPTH_SLICE_BYTES of panel; the next slice is prefetched into L2 meanwhile;
3. un-permute: each row of y is written in order, output o read from where its block
   put it.

No BLAS is called, so no BLAS thread pool competes with Numba's. Each output is one
running sum over its block's inputs in a fixed order, so a row's result does not depend
on the batch it comes in, the strip it falls in or the number of threads.

The tile's shape (TILE_ROWS, NR) is the host's (`mpdref.kernels.intrinsics.CPU_TILE`: AVX-512's
where the CPU has it, else AVX2's); `kernel_for(tile)` compiles the kernel for another shape,
and pack_blocks and block_diagonal_matmul_permuted take that shape as `tile` (the tests run
both). The shape changes the speed, never the result.

`stacked_blocks_in_lanes` (at the end) is the block form's dense layer for inference: the stacked,
zero-padded blocks of `mpdref.ops.block_dense_forward` with a strip of images in the tile's lanes.

`phases` (GATHER | MULTIPLY | UNPERMUTE by default) lets `benchmarks/block_diagonal.py
--phases` time each phase alone; a product with any phase left out is meaningless.
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from mpdref.kernels.allocator import reuse_freed_memory
from mpdref.kernels.config import PARALLEL, SERIAL, CpuTile
from mpdref.kernels.intrinsics import (CPU_TILE, make_gathered_tile_product, make_tile_product, prefetch,
                                      prefetch_ahead, tile_columns)


#: the kernel's phases, as bits of its `phases` argument
GATHER, MULTIPLY, UNPERMUTE = 1, 2, 4
ALL_PHASES = GATHER | MULTIPLY | UNPERMUTE


@numba.njit(inline="always")
def _strip_block_start(padded, col_bounds, b0, b, line):
    """Where block b's inputs start in a strip's gather buffer (blocks b0.. of a group, rows padded
    to `padded`, each block's rows c_b + line apart)."""
    return padded * (col_bounds[b] - col_bounds[b0] + line * (b - b0))


@functools.cache
def kernel_for(tile: CpuTile):
    """The compiled kernel for register tiles of this shape (its arguments: see kernel_arguments)."""
    tile_rows = tile.rows
    tile_product = make_tile_product(tile)

    @numba.njit(**PARALLEL)
    def block_diagonal_matmul(panels, offsets, row_bounds, col_bounds, row_perm, col_perm, x, nr, strip_rows,
                              groups, depth_slice, phases=ALL_PHASES):
        n, cols = x.shape
        k = len(row_bounds) - 1
        rows = row_bounds[k]
        line = 64 // x.itemsize  # elements per cache line
        # Results are computed in block order, each block's outputs rounded up to whole panels of NR
        # (a panel's spare outputs land in the rounding): block b starts at column padded_start[b]
        # of a result row, and output o of the layer is its column out_pos[o].
        padded_start = np.empty(k + 1, dtype=np.int64)
        padded_start[0] = 0
        out_pos = np.empty(rows, dtype=np.uint32)  # unsigned: no test for Python's negative indexing
        for b in range(k):
            r0, r1 = row_bounds[b], row_bounds[b + 1]
            padded_start[b + 1] = padded_start[b] + (r1 - r0 + nr - 1) // nr * nr
            for j in range(r1 - r0):
                out_pos[row_perm[r0 + j]] = padded_start[b] + j
        gather_pos = col_perm.astype(np.uint32)
        # Buffer rows a multiple of 4 KiB apart would fall into the same L1 sets: pad by a line.
        yg_stride = padded_start[k] + line
        y = np.empty((n, rows), dtype=x.dtype)
        x_flat = x.ravel()
        n_strips = (n + strip_rows - 1) // strip_rows
        # A unit of work: one strip of the batch × one group of consecutive blocks.
        for unit in prange(n_strips * groups):
            strip, group = unit // groups, unit % groups
            i0 = strip * strip_rows
            m = min(strip_rows, n - i0)
            padded = (m + tile_rows - 1) // tile_rows * tile_rows
            b0, b1 = group * k // groups, (group + 1) * k // groups

            # 1. Gather: block b's inputs for the strip, a (padded, c_b) matrix with row stride
            # c_b + line at xg[_strip_block_start(b):]; rows past the batch are zero.
            xg = np.empty(_strip_block_start(padded, col_bounds, b0, b1, line), dtype=x.dtype)
            for r in range(padded if phases & GATHER else 0):
                i = i0 + r
                row = x[min(i, n - 1)]
                for b in range(b0, b1):
                    c0, c1 = col_bounds[b], col_bounds[b + 1]
                    dst = xg[_strip_block_start(padded, col_bounds, b0, b, line) + r * (c1 - c0 + line):]
                    if i + 1 < n:  # random reads would fetch each line of the next row as a miss of its own
                        for j in range(c0, c1, line):
                            prefetch(x_flat, (i + 1) * cols + j)
                    if i < n:
                        for j in range(c1 - c0):
                            dst[j] = row[gather_pos[c0 + j]]
                    else:
                        dst[: c1 - c0] = 0

            # 2. Multiply into yg (padded, yg_stride), block by block, panel by panel, slice by slice.
            yg = np.empty(padded * yg_stride, dtype=x.dtype)
            tiles = padded // tile_rows
            for b in range(b0, b1 if phases & MULTIPLY else b0):
                c0, c1 = col_bounds[b], col_bounds[b + 1]
                a_start = _strip_block_start(padded, col_bounds, b0, b, line)
                for q in range((padded_start[b + 1] - padded_start[b]) // nr):
                    panel = offsets[b] + q * nr * (c1 - c0)
                    for d0 in range(0, c1 - c0, depth_slice):
                        d1 = min(d0 + depth_slice, c1 - c0)
                        # A panel deeper than a slice: the weights that come next (the next slice,
                        # or panel: they are consecutive in `panels`), a few lines after each tile.
                        # (For shallower panels the hardware prefetcher does better alone: measured.)
                        ahead, ahead_end = panel + d1 * nr, min(panel + (d1 + depth_slice) * nr, offsets[k])
                        per_tile = (ahead_end - ahead) // (line * tiles) + 1 if c1 - c0 > depth_slice else 0
                        for t in range(tiles):
                            for _ in range(per_tile):
                                if ahead < ahead_end:
                                    prefetch_ahead(panels, ahead)
                                    ahead += line
                            tile_product(xg, a_start + t * tile_rows * (c1 - c0 + line) + d0, c1 - c0 + line,
                                         panels, panel + d0 * nr,
                                         yg, t * tile_rows * yg_stride + padded_start[b] + q * nr, yg_stride,
                                         d1 - d0, d0 > 0)

            # 3. Un-permute: y's rows written in order, each output read from where its block put it.
            lo, hi = padded_start[b0], padded_start[b1]
            for r in range(m if phases & UNPERMUTE else 0):
                dst, src = y[i0 + r], yg[r * yg_stride:]
                if groups == 1:
                    for o in range(rows):
                        dst[o] = src[out_pos[o]]
                else:  # this unit holds only the outputs of blocks b0..b1-1
                    for o in range(rows):
                        p = out_pos[o]
                        if lo <= p < hi:
                            dst[o] = src[p]
        return y

    return block_diagonal_matmul


#: the kernel for the host's tile
_block_diagonal_matmul = kernel_for(CPU_TILE)


def pack_blocks(blocks, dtype, tile: CpuTile = CPU_TILE):
    """The blocks in the kernel's storage for tiles of shape `tile`: (flat, offsets).

    Block b (r_b, c_b) is stored as ceil(r_b / NR) panels of NR = tile_columns(dtype, tile)
    outputs, each (c_b, NR) depth-major (panel[p, j] = B_b[q·NR + j, p], zero past r_b),
    starting at flat[offsets[b]]. Packed once, when a layer's weights are fixed.
    """
    nr = tile_columns(dtype, tile)
    panels = []
    for block in blocks:
        r, c = block.shape
        padded = np.zeros((-(-r // nr) * nr, c), dtype=dtype)
        padded[:r] = block
        panels.append(padded.reshape(-1, nr, c).transpose(0, 2, 1).ravel())  # (panels, c, NR)
    sizes = [p.size for p in panels]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    flat = np.concatenate(panels) if panels else np.empty(0, dtype)
    return flat, offsets


#: bytes of one slice of a weight panel: a deep block's depth is cut into slices that fit in L1
DEPTH_SLICE_BYTES = 16 << 10
#: rows of the batch per unit of work, at most: more rows share each pass over the weights, fewer
#: keep the strip's buffers in cache (of 24, 48 and 96 rows, 48 was fastest on two cores)
STRIP_ROWS = 48


def work_split(n: int, k: int, threads: int, weight_bytes: int, activation_bytes: int,
               tile_rows: int = CPU_TILE.rows) -> tuple[int, int]:
    """(rows per strip, groups of blocks) for a batch of n rows, k blocks and `threads` threads, in
    whole tiles of `tile_rows` rows.

    Each strip reads all the weights of its group of blocks. Where the weights outweigh the
    activations (x and y) more than 4 times, the whole batch is one strip and the blocks are
    shared among the threads, so that each thread reads only its share of the weights.
    Otherwise the batch is cut into strips of at most STRIP_ROWS rows, each taking every
    block, and into groups of blocks too only where there are fewer strips than threads.
    """
    n = max(n, 1)
    whole_tiles = lambda rows: -(-rows // tile_rows) * tile_rows  # noqa: E731
    if weight_bytes > 4 * activation_bytes:
        return whole_tiles(n), min(k, threads)
    rows = whole_tiles(min(STRIP_ROWS, -(-n // threads)))
    return rows, max(1, min(k, threads // -(-n // rows)))


_LAYOUT_PROBLEMS = (
    "",
    "row_bounds and col_bounds must be increasing from 0, with one entry per block and one more",
    "row_perm must hold one index in [0, rows) per row",
    "col_perm must hold one index in [0, cols) per column",
    "flat and offsets do not hold these blocks as pack_blocks stores them",
)


@numba.njit(**SERIAL)
def _indices_below(perm, size):
    if len(perm) != size:
        return False
    for i in range(size):
        if perm[i] < 0 or perm[i] >= size:
            return False
    return True


@numba.njit(**SERIAL)
def _check_layout(flat, offsets, row_bounds, col_bounds, row_perm, col_perm, nr):
    """0, or the index in _LAYOUT_PROBLEMS of what is wrong (compiled: a product of batch 1 takes ~10 us)."""
    k = len(row_bounds) - 1
    if k < 1 or len(col_bounds) != k + 1 or row_bounds[0] != 0 or col_bounds[0] != 0:
        return 1
    for b in range(k):
        if row_bounds[b + 1] <= row_bounds[b] or col_bounds[b + 1] <= col_bounds[b]:
            return 1
    if not _indices_below(row_perm, row_bounds[k]):
        return 2
    if not _indices_below(col_perm, col_bounds[k]):
        return 3
    if len(offsets) != k + 1 or offsets[0] != 0 or offsets[k] != flat.size:
        return 4
    for b in range(k):
        panels = (row_bounds[b + 1] - row_bounds[b] + nr - 1) // nr
        if offsets[b + 1] - offsets[b] != panels * nr * (col_bounds[b + 1] - col_bounds[b]):
            return 4
    return 0


def kernel_arguments(flat, offsets, row_bounds, col_bounds, row_perm, col_perm, x, tile: CpuTile = CPU_TILE):
    """The checked arguments of the compiled kernel for this product (work split and depth slice
    included): block_diagonal_matmul_permuted's first half, for benchmarks that call the kernel
    (kernel_for(tile)) themselves."""
    if x.dtype != flat.dtype:
        raise TypeError(f"x is {x.dtype}, the blocks are {flat.dtype}")
    if flat.ndim != 1 or not flat.flags.c_contiguous:
        raise ValueError("flat must be the 1-D contiguous array pack_blocks returns")
    # The kernel reads through these indices unchecked: check that none points outside.
    nr = tile_columns(flat.dtype, tile)
    problem = _LAYOUT_PROBLEMS[_check_layout(flat, offsets, row_bounds, col_bounds, row_perm, col_perm, nr)]
    if problem:
        raise ValueError(problem)
    k = len(row_bounds) - 1
    rows, cols = int(row_bounds[-1]), int(col_bounds[-1])
    if x.ndim != 2 or x.shape[1] != cols:
        raise ValueError(f"x must be (N, {cols}); got {x.shape}")
    strip_rows, groups = work_split(len(x), k, numba.get_num_threads(), flat.nbytes,
                                    len(x) * (rows + cols) * x.itemsize, tile.rows)
    return (flat, offsets, row_bounds, col_bounds, row_perm, col_perm, np.ascontiguousarray(x), nr, strip_rows,
            groups, DEPTH_SLICE_BYTES // (nr * flat.itemsize))


def block_diagonal_matmul_permuted(flat, offsets, row_bounds, col_bounds, row_perm, col_perm, x,
                                   tile: CpuTile = CPU_TILE):
    """y = x Wᵀ for W = P_r blockdiag(B_b) P_cᵀ, computed block by block (see the module docstring).

    flat, offsets: the blocks as pack_blocks stores them for tiles of shape `tile` (the host's by
    default). x (N, cols) float32 or float64 in the original column order -> y (N, rows) in the
    original row order.
    """
    arguments = kernel_arguments(flat, offsets, row_bounds, col_bounds, row_perm, col_perm, x, tile)
    reuse_freed_memory()  # the strips' buffers and y: kept in the heap for the next product
    return kernel_for(tile)(*arguments)


# ----------------------------------------------------------------------------- the stacked blocks, images in lanes


@functools.cache
def lanes_kernel_for(tile: CpuTile):
    """The compiled kernel of stacked_blocks_in_lanes for register tiles of this shape (its arguments:
    x, w, bias, padded_gather, valid_rows, nr = tile_columns(dtype, tile))."""
    tile_rows = tile.rows
    tile_product = make_gathered_tile_product(tile)

    @numba.njit(**PARALLEL)
    def stacked_in_lanes(x, w, bias, padded_gather, valid_rows, nr):
        """See stacked_blocks_in_lanes. Per strip of nr images (the units the threads share):

        1. gather: xt (k·C, nr), xt[p, lane] = x[i0 + lane, padded_gather[p]] (0 for a padding column,
           index -1, and for the lanes past the batch): block b's inputs are rows b·C .. b·C + C − 1;
        2. multiply: for each block, tiles of TILE_ROWS of its rows of w (read where they lie; a tile's
           rows past R repeat row R − 1, and their results are never read) × nr images,
           grid[(b·R_pad + r), lane] = Σ_{c < C} w[b, r, c] · xt[b·C + c, lane];
        3. out: y[i0 + lane, q] = grid[row of output q, lane] + bias[q], each image's row in order.
        """
        n, cols = x.shape
        k, r_max, c_max = w.shape
        rows = len(valid_rows)
        # The tile reads through these tables unchecked: refuse one that points outside (here, compiled:
        # NumPy's min and max of the tables took about 10 µs a layer, a tenth of a LeNet-300-100 pass).
        for p in range(len(padded_gather)):
            if padded_gather[p] < -1 or padded_gather[p] >= cols:
                raise ValueError("block_dense_inference: padded_gather must hold column indices of x or -1 "
                                 "(padding)")
        for q in range(rows):
            if valid_rows[q] < 0 or valid_rows[q] >= k * r_max:
                raise ValueError("block_dense_inference: valid_rows must hold indices in [0, k·R)")
        r_pad = -(-r_max // tile_rows) * tile_rows
        w_flat = w.ravel()
        x_flat = x.ravel()
        w_rows = np.empty(k * r_pad, dtype=np.int64)  # where each tile row of w starts in w_flat
        for b in range(k):
            for m in range(r_pad):
                w_rows[b * r_pad + m] = (b * r_max + min(m, r_max - 1)) * c_max
        grid_row = np.empty(rows, dtype=np.int64)  # output q's row of the grid: block b's rows are r_pad apart
        for q in range(rows):
            grid_row[q] = valid_rows[q] + valid_rows[q] // r_max * (r_pad - r_max)
        steps = np.arange(c_max) * nr
        depth = k * c_max
        y = np.empty((n, rows), dtype=x.dtype)
        for strip in prange(-(-n // nr)):
            i0 = strip * nr
            m = min(nr, n - i0)
            xt = np.empty(depth * nr, dtype=x.dtype)
            for p in range(depth):
                src = padded_gather[p]
                if src >= 0 and m == nr:  # a whole strip: nr loads cols apart (one vector gather)
                    for lane in range(nr):
                        xt[p * nr + lane] = x_flat[(i0 + lane) * cols + src]
                else:
                    for lane in range(nr):
                        xt[p * nr + lane] = x_flat[(i0 + lane) * cols + src] if src >= 0 and lane < m else 0
            grid = np.empty(k * r_pad * nr, dtype=x.dtype)
            for b in range(k):
                for t0 in range(0, r_pad, tile_rows):
                    tile_product(w_flat, 0, w_rows, b * r_pad + t0, xt, b * c_max * nr, steps, grid,
                                 (b * r_pad + t0) * nr, nr, c_max, False)
            for lane in range(m):
                out = y[i0 + lane]
                for q in range(rows):
                    out[q] = grid[grid_row[q] * nr + lane] + bias[q]
        return y

    return stacked_in_lanes


def stacked_blocks_in_lanes(x, w, bias, padded_gather, valid_rows, tile: CpuTile = CPU_TILE):
    """y (N, rows) = `mpdref.ops.block_dense_forward`'s y for x (N, cols), the stacked zero-padded blocks
    w (k, R, C), bias (rows,) and the layer's padded_gather and valid_rows (shapes checked by the caller,
    `mpdref.kernels.fast_ops.block_dense_inference`; the tables' index ranges by the kernel, which
    raises ValueError; tiles of shape `tile`, the host's by default), in one parallel pass with the
    images in the vector lanes: the gather, the k products and the rows put back with the bias, with
    no (k, N, C) or (k, N, R) array in between (the block form's training layer keeps those for its
    backward pass; inference needs none).

    Each output is one running sum over its block's C columns in order, padding included (products
    with zero), then plus the bias: the reference's sums to rounding (the same bits where BLAS's
    stacked product sums in that order with fused multiply-adds, as OpenBLAS's SkylakeX kernels did
    for MPD LeNet-300-100's fc1 and fc2). The gather reads each strip's nr images column by column,
    nr values cols apart, slower per element than the training layer's row-by-row gather; skipping
    the (k, N, ·) arrays and two passes over them more than repays it (LeNet-300-100's fc1 at batch
    64: 35 against 53 µs, benchmarks/README.md)."""
    x = np.ascontiguousarray(x)
    return lanes_kernel_for(tile)(x, np.ascontiguousarray(w), np.ascontiguousarray(bias), padded_gather, valid_rows,
                                  tile_columns(x.dtype, tile))
