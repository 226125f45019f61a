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
machine has neither; benchmarks/blas_env.py) and prints the CPU's vector extensions and the
BLAS kernel in use; --keep-blas-env keeps them.
"""
from __future__ import annotations

import argparse

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np
import scipy.sparse
from timing import best_of

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


def darb_form(w, mask):
    """(kept weights, decode(), matmul(x) -> y) for w under a block-max regular mask (DARB, BMWM): the
    stored form is each row's block size and one offset per block."""
    from mpdref import darb
    from mpdref.kernels import sparse

    rows, cols = w.shape
    block_sizes = darb.row_block_sizes(mask)
    if block_sizes is None:
        raise ValueError("the mask is not block-max regular: DARB's form cannot store it")
    positions = np.flatnonzero(mask)
    offsets = darb.darb_offsets(block_sizes, positions, cols).astype(_smallest_uint(int(block_sizes.max())))
    values = w.ravel()[positions]
    buf = np.empty(len(positions), np.int64)

    def matmul(x):
        y = np.zeros((rows, x.shape[1]), w.dtype)
        sparse.darb_matmul(block_sizes, offsets, values, cols, x, y)
        return y

    return len(positions), lambda: sparse.darb_positions(block_sizes, offsets, cols, buf), matmul


def csr_form(w, mask):
    """The same for scipy's CSR with int32 column indices (scipy's product)."""
    from mpdref.kernels import sparse

    csr = scipy.sparse.csr_matrix(w * mask)
    csr.indices = csr.indices.astype(np.int32)
    csr.indptr = csr.indptr.astype(np.int32)
    buf = np.empty(csr.nnz, np.int64)
    return csr.nnz, lambda: sparse.csr_positions(csr.indptr, csr.indices, w.shape[1], buf), lambda x: csr @ x


def relative_form(w, mask):
    """The same for relative indices with fillers, at the index bits that make them smallest (as
    `mpdref compress` chooses); the indices in the smallest unsigned type, as DARB's offsets."""
    from mpdref.kernels import sparse
    from mpdref.sparse_index import relative_indices

    rows, cols = w.shape
    kept = np.flatnonzero(mask)
    bits = min(range(1, 9), key=lambda b: len(relative_indices(kept, b)[0]) * b)
    symbols, fillers = relative_indices(kept, bits)
    symbols = symbols.astype(_smallest_uint(1 << bits))
    stored = np.zeros(len(symbols), w.dtype)
    stored[~fillers] = w.ravel()[kept]
    buf = np.empty(len(symbols), np.int64)

    def matmul(x):
        y = np.zeros((rows, x.shape[1]), w.dtype)
        sparse.relative_matmul(symbols, stored, cols, x, y)
        return y

    matmul.label = f"relative ({bits}-bit, {int(fillers.sum())} fillers)"
    return len(kept), lambda: sparse.relative_positions(symbols, buf), matmul


def tile_form(w, mask, tile: int = 4):
    """The same for block pruning's whole tile x tile squares (a tile is kept when its corner is)."""
    from mpdref.kernels import sparse

    rows, cols = w.shape
    starts = [(r, c) for r in range(0, rows, tile) for c in range(0, cols, tile) if mask[r, c]]
    tile_rows = np.array([r // tile for r, _ in starts], np.int64)
    tile_cols = np.array([c // tile for _, c in starts], np.int64)
    tiles = np.zeros((len(starts), tile, tile), w.dtype)
    for t, (r, c) in enumerate(starts):
        block = w[r : r + tile, c : c + tile] * mask[r : r + tile, c : c + tile]
        tiles[t, : block.shape[0], : block.shape[1]] = block
    buf = np.empty(int(mask.sum()), np.int64)

    def matmul(x):
        y = np.zeros((rows, x.shape[1]), w.dtype)
        sparse.tile_matmul(tile_rows, tile_cols, tiles, x, y)
        return y

    return int(mask.sum()), lambda: sparse.tile_positions(tile_rows, tile_cols, tile, rows, cols, buf), matmul


def formats(w, keep):
    """Each format's (kept weights, decode(), matmul(x) -> y, its dense W) for the weight w (rows, cols)
    at the kept fraction `keep`: DARB's own mask, magnitude pruning's (CSR and relative indices), and
    block pruning's tiles."""
    from mpdref import darb
    from mpdref.prune import magnitude_mask

    out = {}
    regular, _ = darb.darb_mask(w, keep)
    out["DARB offsets"] = (*darb_form(w, regular), w * regular)
    pruned = magnitude_mask(w, keep=keep).astype(bool)
    out["CSR (int32)"] = (*csr_form(w, pruned), w * pruned)
    kept, decode, matmul = relative_form(w, pruned)
    out[matmul.label] = (kept, decode, matmul, w * pruned)
    tiled = darb.block_prune_mask(w, keep, tile=4).astype(bool)
    out["block pruning (4 x 4 tiles)"] = (*tile_form(w, tiled), w * tiled)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lenet-300-100", dest="lenet_300_100", help="a trained LeNet-300-100 model file")
    p.add_argument("--lenet-5", dest="lenet_5", help="a trained LeNet-5 model file")
    p.add_argument("--repeats", type=int, default=7)
    blas_env.add_argument(p)
    args = p.parse_args()

    from mpdref import models

    print(blas_env.describe())
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
