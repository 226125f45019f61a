"""Decoding sparse weights, and y = W x from the stored form: DARB offsets against CSR, relative
indices and block pruning's tiles, in one run.

    python benchmarks/sparse_decode.py [--lenet-300-100 MODEL.h5] [--lenet-5 MODEL.h5] [--repeats 7]

For the fc1 weight of LeNet-300-100 (kept 7.4%, configs/darb-lenet-300-100.toml) and of
LeNet-5 (kept 7%, configs/darb-lenet-5.toml): the weight of a trained model file when one
is given, else a freshly initialized network's, masked four ways at the same kept fraction
(a model file's own mask is not used, but its pruned weights are zero: from a DARB model,
DARB finds its own mask again, and the other masks are drawn from its kept weights): DARB (its own mask), magnitude pruning (CSR with int32 column
indices, and relative indices with fillers at the bits that make them smallest, as
`mpdref compress` chooses), and block pruning (4 × 4 tiles). For each: the positions decoded
per second, and the time of y = W x at batch 1 and 64 (x of shape (cols, N); the best of
`repeats`, each timing many calls). CSR's product is scipy's; the others are Numba kernels
of the same shape (`mpdref.kernels.sparse`), each checked against the dense product first.
Offsets and relative indices are held in the smallest unsigned type that fits them (uint8
here), CSR's column indices in int32.
Target: DARB's decode-and-multiply at batch 1 at least 2x faster than relative indexing's,
and no slower than CSR's.

This benchmark unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in its own process (as a user's
machine has neither); --keep-blas-env keeps them.
"""
from __future__ import annotations

import argparse
import os
import sys

KEEP = "--keep-blas-env" in sys.argv
REMOVED = {} if KEEP else {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}

import numpy as np  # noqa: E402  (after the environment is settled: OpenBLAS reads it when it loads)
import scipy.sparse  # noqa: E402
from timing import best_of  # noqa: E402

KEPT = {"lenet-300-100": 0.074, "lenet-5": 0.07}


def timed(fn, repeats):
    """Seconds per call: the best of `repeats` timings of enough calls to take about 20 ms."""
    fn()
    calls = 1
    while best_of(lambda: [fn() for _ in range(calls)], 1, warmup=False)[0] < 0.02:
        calls *= 2
    return best_of(lambda: [fn() for _ in range(calls)], repeats, warmup=False)[0] / calls


def _smallest_uint(n: int):
    """The smallest unsigned integer type that holds 0 to n - 1 (a decoder's array of indices)."""
    return np.uint8 if n <= 1 << 8 else np.uint16 if n <= 1 << 16 else np.uint32


def formats(w, keep):
    """Each format's (kept weights, decode(), matmul(x) -> y, its dense W) for the weight w (rows, cols)
    at the kept fraction `keep`."""
    from mpdref import darb
    from mpdref.kernels import sparse
    from mpdref.prune import magnitude_mask
    from mpdref.sparse_index import relative_indices

    rows, cols = w.shape
    out = {}

    mask, block_sizes = darb.darb_mask(w, keep)
    positions = np.flatnonzero(mask)
    offsets = darb.darb_offsets(block_sizes, positions, cols).astype(_smallest_uint(int(block_sizes.max())))
    values = w.ravel()[positions]
    buf = np.empty(len(positions), np.int64)

    def darb_mm(x):
        y = np.zeros((rows, x.shape[1]), w.dtype)
        sparse.darb_matmul(block_sizes, offsets, values, cols, x, y)
        return y

    out["DARB offsets"] = (len(positions), lambda: sparse.darb_positions(block_sizes, offsets, cols, buf),
                           darb_mm, w * mask)

    pruned = magnitude_mask(w, keep=keep)
    csr = scipy.sparse.csr_matrix(w * pruned)
    csr.indices = csr.indices.astype(np.int32)
    csr.indptr = csr.indptr.astype(np.int32)
    buf_csr = np.empty(csr.nnz, np.int64)
    out["CSR (int32)"] = (csr.nnz, lambda: sparse.csr_positions(csr.indptr, csr.indices, cols, buf_csr),
                          lambda x: csr @ x, w * pruned)

    kept = np.flatnonzero(pruned)
    bits = min(range(1, 9), key=lambda b: len(relative_indices(kept, b)[0]) * b)  # the smallest index
    symbols, fillers = relative_indices(kept, bits)
    symbols = symbols.astype(_smallest_uint(1 << bits))  # as small in memory as DARB's offsets
    stored = np.zeros(len(symbols), w.dtype)
    stored[~fillers] = w.ravel()[kept]
    buf_rel = np.empty(len(symbols), np.int64)

    def relative_mm(x):
        y = np.zeros((rows, x.shape[1]), w.dtype)
        sparse.relative_matmul(symbols, stored, cols, x, y)
        return y

    out[f"relative ({bits}-bit, {int(fillers.sum())} fillers)"] = (
        len(kept), lambda: sparse.relative_positions(symbols, buf_rel), relative_mm, w * pruned)

    tiled = darb.block_prune_mask(w, keep, tile=4)
    starts = [(r, c) for r in range(0, rows, 4) for c in range(0, cols, 4) if tiled[r, c]]
    tile_rows = np.array([r // 4 for r, _ in starts], np.int64)
    tile_cols = np.array([c // 4 for _, c in starts], np.int64)
    tiles = np.zeros((len(starts), 4, 4), w.dtype)
    for t, (r, c) in enumerate(starts):
        block = w[r : r + 4, c : c + 4]
        tiles[t, : block.shape[0], : block.shape[1]] = block
    buf_tile = np.empty(int(tiled.sum()), np.int64)

    def tile_mm(x):
        y = np.zeros((rows, x.shape[1]), w.dtype)
        sparse.tile_matmul(tile_rows, tile_cols, tiles, x, y)
        return y

    out["block pruning (4 x 4 tiles)"] = (
        int(tiled.sum()), lambda: sparse.tile_positions(tile_rows, tile_cols, 4, rows, cols, buf_tile), tile_mm,
        w * tiled)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lenet-300-100", dest="lenet_300_100", help="a trained LeNet-300-100 model file")
    p.add_argument("--lenet-5", dest="lenet_5", help="a trained LeNet-5 model file")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--keep-blas-env", action="store_true", help="keep OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE as set")
    args = p.parse_args()

    from mpdref import models

    print("OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: " + ("kept as set" if KEEP else
          (f"unset in this process (were {REMOVED})" if REMOVED else "not set")))
    rng = np.random.default_rng(0)
    for name, path in (("lenet-300-100", args.lenet_300_100), ("lenet-5", args.lenet_5)):
        net = models.load(path) if path else models.build(name, seed=0)
        w = net.params["fc1.weight"].astype(np.float32)
        print(f"\n{name} fc1 {w.shape[0]} x {w.shape[1]}, kept {KEPT[name]:.1%}, "
              f"{'weights of ' + path if path else 'initial weights (seed 0)'}")
        print(f"{'format':<34}{'kept':>8}{'Mpos/s':>9}{'batch 1 µs':>12}{'batch 64 µs':>13}")
        rows = {}
        for label, (kept, decode, matmul, dense) in formats(w, KEPT[name]).items():
            for n in (1, 64):  # correctness first
                x = rng.standard_normal((w.shape[1], n)).astype(np.float32)
                got, expected = matmul(x), dense @ x
                assert np.allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()), label
            x1 = rng.standard_normal((w.shape[1], 1)).astype(np.float32)
            x64 = rng.standard_normal((w.shape[1], 64)).astype(np.float32)
            decode_s = timed(decode, args.repeats)
            t1, t64 = timed(lambda: matmul(x1), args.repeats), timed(lambda: matmul(x64), args.repeats)
            rows[label] = t1
            print(f"{label:<34}{kept:>8,}{kept / decode_s / 1e6:>9.1f}{1e6 * t1:>12.1f}{1e6 * t64:>13.1f}")
        darb_t = rows["DARB offsets"]
        relative_t = next(t for label, t in rows.items() if label.startswith("relative"))
        print(f"batch 1: relative / DARB {relative_t / darb_t:.2f} (target >= 2), "
              f"CSR / DARB {rows['CSR (int32)'] / darb_t:.2f} (target >= 1)")


if __name__ == "__main__":
    main()
