"""MPD's block-diagonal product on the GPU: the numba.cuda kernel against cuBLAS, in one run.

    python benchmarks/block_diagonal_cuda.py [--repeats 50] [--out results.json] [--keep-blas-env]

Needs a GPU, numba-cuda and torch with CUDA. float32 with TF32 off throughout. For a
4096 × 4096 weight under a permuted block-diagonal mask with k in {4, 16, 64}, and batch
in {1, 64, 1024}, activations feature-major (features, batch) as the kernel keeps them:

- kernel: mpdref.kernels.cuda.DeviceBlockDense: input gather fused into the tile loads,
          bias + ReLU + output scatter fused into the epilogue;
- bmm:    torch.bmm on the same blocks, stacked (k, r, c) @ (k, c, N), the input already
          gathered into block order (cuBLAS batched; no gather, bias or ReLU);
- dense:  torch.matmul of the masked 4096 × 4096 matrix (cuBLAS), no gather needed.

Each time is the median over `repeats` timed loops of 10 launches (CUDA events around
each loop, Python launch cost included, three input sets in rotation), after a warm-up.
Printed: µs, TFLOP/s (useful flops, 2·N·Σ r_b c_b; dense: the flops it does) and the
ratios bmm/kernel (target >= 0.5 at batch 1024) and dense/kernel (target >= 0.8·k).
Before timing, the kernel's output is checked against a float64 product.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process, as in every benchmark here
(benchmarks/blas_env.py; --keep-blas-env keeps them): nothing timed here runs on
the CPU's BLAS, the flag is taken for uniformity, and the CPU's vector extensions
and the BLAS kernel in use are printed first.
"""
from __future__ import annotations

import argparse
import json
import statistics

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np

LAUNCHES = 10


def timed(fn, record, repeats):
    """Median µs per call of fn over `repeats` loops of LAUNCHES calls; record() -> (start, end) event pair."""
    for _ in range(3):
        fn(0)
    samples = []
    for r in range(repeats):
        start, end, elapsed = record()
        start()
        for i in range(LAUNCHES):
            fn(r * LAUNCHES + i)
        end()
        samples.append(elapsed() * 1e3 / LAUNCHES)
    return statistics.median(samples)


def numba_events():
    from numba import cuda

    s, e = cuda.event(), cuda.event()

    def elapsed():
        e.synchronize()
        return cuda.event_elapsed_time(s, e)

    return s.record, e.record, elapsed


def torch_events():
    import torch

    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def elapsed():
        e.synchronize()
        return s.elapsed_time(e)

    return s.record, e.record, elapsed


def case(n_features, k, batch, repeats, rng, try_tiles=()):
    import torch
    from numba import cuda

    from mpdref.kernels import cuda as kc
    from mpdref.mpd import mpd_mask

    m = mpd_mask(n_features, n_features, k, rng)
    w = (rng.standard_normal((n_features, n_features)) * m.mask / np.sqrt(n_features / k)).astype(np.float32)
    blocks = m.blocks(w)
    bias = rng.standard_normal(n_features).astype(np.float32)
    # y[row_perm[i]] = relu(bias_i + Σ_j B[i, j] x[col_perm[j]]): gather by col_perm, scatter by row_perm
    layer = kc.DeviceBlockDense(blocks, gather=m.col_perm, bias=bias, row_dest=m.row_perm)
    xs_host = [rng.standard_normal((n_features, batch)).astype(np.float32) for _ in range(3)]
    xs = [cuda.to_device(x) for x in xs_host]
    out = cuda.device_array((n_features, batch), np.float32)

    y = layer(xs[0], relu=True, out=out).copy_to_host()
    bias_by_unit = np.empty_like(bias)
    bias_by_unit[m.row_perm] = bias  # bias is given in block order
    ref = np.maximum(w.astype(np.float64) @ xs_host[0].astype(np.float64) + bias_by_unit[:, None], 0.0)
    rel = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
    assert rel < 1e-5, f"kernel differs from the float64 product: {rel:.2e}"

    dev = torch.device("cuda")
    stacked = torch.tensor(np.stack(blocks), device=dev)  # (k, r, c)
    gathered = [torch.tensor(np.ascontiguousarray(x[m.col_perm].reshape(k, n_features // k, batch)), device=dev)
                for x in xs_host]  # (k, c, N), in block order
    dense_w = torch.tensor(w, device=dev)
    dense_x = [torch.tensor(x, device=dev) for x in xs_host]
    bmm_out = torch.empty((k, n_features // k, batch), device=dev)
    dense_out = torch.empty((n_features, batch), device=dev)

    times = {
        "kernel": timed(lambda i: layer(xs[i % 3], relu=True, out=out), numba_events, repeats),
        "bmm": timed(lambda i: torch.bmm(stacked, gathered[i % 3], out=bmm_out), torch_events, repeats),
        "dense": timed(lambda i: torch.matmul(dense_w, dense_x[i % 3], out=dense_out), torch_events, repeats),
    }
    for tiles in try_tiles if batch >= 64 else ():
        try:
            times[f"kernel {tiles}"] = timed(lambda i: layer(xs[i % 3], relu=True, out=out, tiles=tiles),
                                             numba_events, repeats)
        except Exception as e:  # e.g. more registers × threads than a multiprocessor has
            print(f"      {tiles}: does not launch ({' '.join(str(e).split())[:120]})", flush=True)
    useful = 2.0 * batch * sum(b.size for b in blocks)
    dense_flops = 2.0 * batch * n_features * n_features
    return {"k": k, "batch": batch, "rel_error": rel, "us": times,
            "tflops": {"kernel": useful / times["kernel"] / 1e6, "bmm": useful / times["bmm"] / 1e6,
                       "dense": dense_flops / times["dense"] / 1e6},
            "bmm_over_kernel": times["bmm"] / times["kernel"], "dense_over_kernel": times["dense"] / times["kernel"],
            "target_dense_over_kernel": 0.8 * k}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--try-tiles", action="append", default=[], metavar="BM,BN,BK,TM,TN[,PREFETCH[,MAXREG]]",
                        help="also time the kernel with this tile set (batch >= 64; repeatable)")
    blas_env.add_argument(parser)
    args = parser.parse_args()
    print(blas_env.describe())

    import torch

    from mpdref.kernels import load_backend
    from mpdref.kernels.config import CudaTiles

    try_tiles = []
    for spec in args.try_tiles:
        v = [int(p) for p in spec.split(",")]
        try_tiles.append(CudaTiles(*v[:5], prefetch=bool(v[5]) if len(v) > 5 else True,
                                   max_registers=v[6] if len(v) > 6 else 0))

    load_backend("cuda")
    if not torch.cuda.is_available():
        raise SystemExit("torch sees no GPU: this benchmark compares with cuBLAS through torch")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(0)
    print(f"device: {torch.cuda.get_device_name()}, float32, TF32 off, {args.features}x{args.features}")
    results = []
    header = (f"{'k':>3} {'batch':>5} | {'kernel µs':>9} {'bmm µs':>8} {'dense µs':>9} | "
              f"{'kernel':>6} {'bmm':>6} {'dense':>6} TFLOP/s | {'bmm/kernel':>10} {'dense/kernel':>12} {'0.8k':>5}")
    print(header)
    for k in (4, 16, 64):
        for batch in (1, 64, 1024):
            r = case(args.features, k, batch, args.repeats, rng, try_tiles)
            results.append(r)
            t, f = r["us"], r["tflops"]
            print(f"{k:>3} {batch:>5} | {t['kernel']:>9.1f} {t['bmm']:>8.1f} {t['dense']:>9.1f} | "
                  f"{f['kernel']:>6.2f} {f['bmm']:>6.2f} {f['dense']:>6.2f}         | "
                  f"{r['bmm_over_kernel']:>10.2f} {r['dense_over_kernel']:>12.1f} {0.8 * k:>5.1f}", flush=True)
            for name, us in t.items():
                if name.startswith("kernel "):
                    print(f"      {name[7:]}: {us:.1f} µs", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
