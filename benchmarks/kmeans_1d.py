"""1-D k-means for weight sharing: mpdref against scikit-learn and the kmeans1d package, in one run.

    python benchmarks/kmeans_1d.py [--n 1000000] [--k 32] [--iterations 30] [--repeats 3] [--keep-blas-env]

Needs `pip install scikit-learn kmeans1d` (benchmark-only; mpdref does not depend on them).
Input: n float32 values drawn like trained weights (a narrow Laplace distribution).

- Lloyd, linear init, `iterations` iterations: mpdref.quantize.kmeans_1d(method="lloyd")
  against sklearn.cluster.KMeans(n_init=1, init=the same centroids, max_iter=iterations,
  tol=0, algorithm="lloyd"). Both SSEs are printed. Required >= 5x faster at equal or
  lower SSE; target >= 20x.
- Optimal (minimum SSE): kmeans_1d(method="optimal") against kmeans1d.cluster (exact,
  C++). Same SSE required; target >= 3x faster.

Times are the best of `repeats` runs, each from the unsorted input (mpdref's sort included),
after one warm-up run (Numba compilation).

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process, as on a user's machine
(benchmarks/blas_env.py; --keep-blas-env keeps them), and the CPU's vector extensions and
the BLAS kernel in use are printed first.
"""
from __future__ import annotations

import argparse

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np
from timing import best_of


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    blas_env.add_argument(parser)
    args = parser.parse_args()
    print(blas_env.describe())

    import kmeans1d
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info

    from mpdref.quantize import initial_centroids, kmeans_1d, sse

    rng = np.random.default_rng(0)
    values = rng.laplace(0.0, 0.02, args.n).astype(np.float32)
    v64 = values.astype(np.float64)
    init = initial_centroids(values, args.k, "linear")
    print(f"{args.n:,} values, k = {args.k}; sklearn {KMeans.__module__.split('.')[0]} threads: "
          f"{[i.get('num_threads') for i in threadpool_info()]}")

    t_ours, (c, labels) = best_of(lambda: kmeans_1d(values, args.k, "linear", "lloyd", args.iterations),
                                    args.repeats)

    def sk():
        km = KMeans(n_clusters=args.k, init=init.reshape(-1, 1), n_init=1, max_iter=args.iterations, tol=0.0,
                    algorithm="lloyd")
        km.fit(v64.reshape(-1, 1))
        return km

    t_sk, km = best_of(sk, args.repeats)
    sse_ours, sse_sk = sse(values, c, labels), float(km.inertia_)
    print(f"Lloyd   mpdref {t_ours * 1e3:9.1f} ms  SSE {sse_ours:.6f} | scikit-learn {t_sk * 1e3:9.1f} ms  "
          f"SSE {sse_sk:.6f} ({km.n_iter_} iterations) | speed-up {t_sk / t_ours:6.1f}x  "
          f"SSE ratio {sse_ours / sse_sk:.6f}")

    t_opt, (co, lo) = best_of(lambda: kmeans_1d(values, args.k, method="optimal"), args.repeats)
    t_ref, (lr, cr) = best_of(lambda: kmeans1d.cluster(v64, args.k), args.repeats)
    sse_opt, sse_ref = sse(values, co, lo), sse(values, np.array(cr), np.array(lr))
    print(f"Optimal mpdref {t_opt * 1e3:9.1f} ms  SSE {sse_opt:.6f} | kmeans1d     {t_ref * 1e3:9.1f} ms  "
          f"SSE {sse_ref:.6f} | speed-up {t_ref / t_opt:6.1f}x  SSE ratio {sse_opt / sse_ref:.9f}")


if __name__ == "__main__":
    main()
