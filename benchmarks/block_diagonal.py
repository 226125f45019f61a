"""MPD's block-diagonal product on the CPU: the Numba kernel against its alternatives, in one run.

    python benchmarks/block_diagonal.py [--repeats 20] [--tile | --phases] [--keep-blas-env]

y = x Wᵀ for a 4096 x 4096 float32 W under a permuted block-diagonal mask with k in
{4, 16, 64} blocks, batch in {1, 64, 1024}, and the LeNet-300-100 layer shapes at k = 11:

- kernel:  mpdref.kernels.blockdiag (input gather and output scatter included);
- dense:   BLAS on the masked dense matrix, x @ Wᵀ;
- stacked: np.matmul over the k equal blocks, stacked (k, r, c), input already in block
           order: the practical ideal, with no gather or scatter;
- permuted: the same stacked np.matmul with the permutations done by NumPy, as one would
           write it without the kernel: x[:, col_perm] into block order, then the
           outputs back into row order;
- bsr/csr: scipy.sparse with the permuted blocks (BSR, block size = one block; batch <= 64
           only, it takes tens of seconds at 1024) and the masked matrix (CSR).

Printed: microseconds for each and the ratios. Targets for batch >= 64: kernel >= 0.9x
stacked (stacked time / kernel time) and >= 0.8·k times faster than dense. Each
contender is timed after a pause (PAUSE): the thread pool of the one before would
otherwise still be spinning on the same cores. The kernel calls no BLAS.

--phases times the kernel's three phases (gather, multiply, un-permute) one at a time
at batch 1024, beside the whole kernel, stacked np.matmul, and a plain copy of x into a
new array on all threads (the memory traffic of each permuting phase, without the
permutation): where the kernel's time goes.
--tile times the register tiles alone (AVX2's and AVX-512's; the kernel uses the host's)
against BLAS on one core.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process, as on a user's machine
(benchmarks/blas_env.py; --keep-blas-env keeps them), and the CPU's vector extensions and
the BLAS kernel in use are printed first.
"""
from __future__ import annotations

import argparse
import time

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np
import scipy.sparse

from mpdref.kernels.allocator import reuse_freed_memory
from mpdref.kernels import blockdiag
from mpdref.kernels.blockdiag import block_diagonal_matmul_permuted, pack_blocks
from mpdref.mpd import mpd_mask
from timing import best_of


#: seconds of rest before each contender is timed: OpenBLAS's threads keep spinning for about
#: 0.1 s after a product (and Numba's OpenMP threads for a while after a parallel loop), and
#: whichever contender comes next would share the cores with them
PAUSE = 0.3


def best_time(fn, repeats):
    """Microseconds of the fastest call (timing.best_of), after a pause for the other pool's threads."""
    time.sleep(PAUSE)
    return best_of(fn, repeats)[0] * 1e6


def problem(rows, cols, k, batch, rng):
    """A float32 layer under a fresh MPD mask, and a batch for it: (mask, w, x, blocks)."""
    m = mpd_mask(rows, cols, k, rng)
    w = (rng.standard_normal((rows, cols)) * m.mask).astype(np.float32)
    x = rng.standard_normal((batch, cols)).astype(np.float32)
    return m, w, x, m.blocks(w)


def block_order(x, m, k):
    """x's columns gathered into block order and stacked (k, N, c), for k equal blocks."""
    return np.ascontiguousarray(x[:, m.col_perm].reshape(len(x), k, -1).transpose(1, 0, 2))


def case(rows, cols, k, batch, repeats, rng):
    m, w, x, blocks = problem(rows, cols, k, batch, rng)
    flat, offsets = pack_blocks(blocks, np.float32)
    args = (flat, offsets, m.row_bounds, m.col_bounds, m.row_perm, m.col_perm)
    y = block_diagonal_matmul_permuted(*args, x)
    assert np.allclose(y, x @ w.T, rtol=1e-3, atol=1e-3)
    times = {
        "kernel": best_time(lambda: block_diagonal_matmul_permuted(*args, x), repeats),
        "dense": best_time(lambda: x @ w.T, repeats),
    }
    if rows % k == 0 and cols % k == 0:
        stacked_wt = np.stack(blocks).transpose(0, 2, 1)  # (k, c, r)
        xs = block_order(x, m, k)  # (k, N, c)
        times["stacked"] = best_time(lambda: np.matmul(xs, stacked_wt), repeats)
        out_order = np.argsort(m.row_perm)  # output o is row out_order[o] of the stacked result

        def permuted():
            yb = np.matmul(block_order(x, m, k), stacked_wt)  # (k, N, r)
            return yb.transpose(1, 0, 2).reshape(batch, rows)[:, out_order]

        assert np.allclose(permuted(), y, rtol=1e-3, atol=1e-3)
        times["permuted"] = best_time(permuted, repeats)
        if batch <= 64:  # scipy's BSR times a dense matrix takes tens of seconds at batch 1024
            bsr = scipy.sparse.bsr_matrix(w[np.ix_(m.row_perm, m.col_perm)], blocksize=(rows // k, cols // k))
            xp = np.ascontiguousarray(x[:, m.col_perm].T)
            times["bsr"] = best_time(lambda: bsr @ xp, 3)
    csr = scipy.sparse.csr_matrix(w)
    xt = np.ascontiguousarray(x.T)
    times["csr"] = best_time(lambda: csr @ xt, 1 if batch > 64 else 3)
    return times


def phase_times(repeats, batch=1024):
    """Milliseconds of each phase of the kernel alone (the others skipped), 4096 x 4096, float32."""
    import numba

    @numba.njit(parallel=True)
    def copy(x):
        y = np.empty_like(x)
        for i in numba.prange(len(x)):
            y[i] = x[i]
        return y

    rng = np.random.default_rng(0)
    phases = {"gather": blockdiag.GATHER, "multiply": blockdiag.MULTIPLY, "un-permute": blockdiag.UNPERMUTE,
              "kernel": blockdiag.ALL_PHASES}
    print(f"{'k':>4}{'batch':>6}" + "".join(f"{name + ' ms':>15}" for name in phases)
          + f"{'sum of 3 ms':>13}{'stacked ms':>12}{'copy ms':>9}")
    for k in (4, 16, 64):
        m, _, x, blocks = problem(4096, 4096, k, batch, rng)
        arguments = blockdiag.kernel_arguments(*pack_blocks(blocks, np.float32), m.row_bounds, m.col_bounds,
                                               m.row_perm, m.col_perm, x)
        times = {name: best_time(lambda: blockdiag._block_diagonal_matmul(*arguments, bits), repeats) / 1e3
                 for name, bits in phases.items()}
        xs, stacked_wt = block_order(x, m, k), np.stack(blocks).transpose(0, 2, 1)  # stacked outside the timing
        stacked = best_time(lambda: np.matmul(xs, stacked_wt), repeats) / 1e3
        copied = best_time(lambda: copy(x), repeats) / 1e3
        alone = times["gather"] + times["multiply"] + times["un-permute"]
        print(f"{k:>4}{batch:>6}" + "".join(f"{t:>15.2f}" for t in times.values())
              + f"{alone:>13.2f}{stacked:>12.2f}{copied:>9.2f}")


def tile_speed(repeats):
    """GFLOP/s of each register tile of mpdref.kernels.config.CPU_TILES against BLAS, one core, float32.

    A tile: the panels of 64 outputs × depth 256 (64 KB) against one strip of tile-rows inputs,
    2,000 times in a compiled loop; the host's tile (intrinsics.CPU_TILE, which the kernel uses)
    is marked. BLAS: a (1020, 256) × (256, 64) product, the same 64 outputs against 170 strips
    of 6 rows, with its threads held to one (threadpoolctl, when it is installed; it comes with
    scikit-learn).
    """
    import numba

    from mpdref.kernels.config import CPU_TILES
    from mpdref.kernels.intrinsics import CPU_TILE, make_tile_product, tile_columns

    depth, reps, outputs = 256, 2000, 64
    rng = np.random.default_rng(0)
    for name, shape in CPU_TILES.items():
        nr = tile_columns(np.float32, shape)
        tile_product = make_tile_product(shape)

        @numba.njit(nogil=True)
        def tiles(a, panels, c, depth, reps):
            for _ in range(reps):
                for q in range(len(panels) // (depth * nr)):
                    tile_product(a, 0, depth, panels, q * depth * nr, c, q * nr, outputs, depth, False)

        a = rng.standard_normal(shape.rows * depth).astype(np.float32)
        panels = rng.standard_normal(outputs * depth).astype(np.float32)
        c = np.empty(shape.rows * outputs, np.float32)
        flops = 2.0 * reps * shape.rows * depth * outputs
        tile_s = best_of(lambda: tiles(a, panels, c, depth, reps), repeats)[0]
        print(f"tile {name} ({shape.rows} x {nr} float32{', this host' if shape == CPU_TILE else ''}): "
              f"{flops / tile_s / 1e9:.1f} GFLOP/s")
    lhs = rng.standard_normal((1020, depth)).astype(np.float32)
    rhs = rng.standard_normal((depth, outputs)).astype(np.float32)
    out = np.empty((1020, outputs), np.float32)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("BLAS on one core not measured: no threadpoolctl")
        return
    with threadpool_limits(limits=1, user_api="blas"):
        blas_s = best_of(lambda: np.dot(lhs, rhs, out), repeats * 20)[0]
    blas_flops = 2.0 * 1020 * depth * outputs
    print(f"BLAS on one core: {blas_flops / blas_s / 1e9:.1f} GFLOP/s")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20, help="calls per contender; the fastest is kept (default 20)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tile", action="store_true",
                      help="measure only the register tiles (AVX2's, AVX-512's) against BLAS on one core")
    mode.add_argument("--phases", action="store_true",
                      help="time the kernel's gather, multiply and un-permute one at a time (batch 1024)")
    blas_env.add_argument(p)
    args = p.parse_args()
    print(blas_env.describe())
    if args.tile:
        tile_speed(args.repeats)
        return
    # The kernel keeps freed large buffers in the heap (mpdref.kernels.allocator); set it before
    # any timing so that every contender's allocations are served the same way.
    reuse_freed_memory()
    if args.phases:
        phase_times(args.repeats)
        return
    rng = np.random.default_rng(0)
    shapes = [(4096, 4096, k) for k in (4, 16, 64)] + [(300, 784, 11), (100, 300, 11)]
    print(f"{'shape':>12}{'k':>4}{'batch':>6}{'kernel us':>11}{'stacked us':>12}{'dense us':>10}{'bsr us':>10}"
          f"{'csr us':>10}{'stacked/kernel':>16}{'permuted/kernel':>17}{'dense/kernel':>14}{'0.8k':>6}")
    for rows, cols, k in shapes:
        for batch in (1, 64, 1024):
            t = case(rows, cols, k, batch, args.repeats, rng)
            get = lambda key: f"{t[key]:.0f}" if key in t else "-"  # noqa: E731
            vs_stacked = f"{t['stacked'] / t['kernel']:.2f}" if "stacked" in t else "-"
            vs_permuted = f"{t['permuted'] / t['kernel']:.2f}" if "permuted" in t else "-"
            print(f"{f'{rows}x{cols}':>12}{k:>4}{batch:>6}{get('kernel'):>11}{get('stacked'):>12}{get('dense'):>10}"
                  f"{get('bsr'):>10}{get('csr'):>10}{vs_stacked:>16}{vs_permuted:>17}{t['dense'] / t['kernel']:>14.2f}"
                  f"{0.8 * k:>6.1f}")


if __name__ == "__main__":
    main()
