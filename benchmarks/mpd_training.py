"""Block-form training against masked dense training, LeNet-300-100 under MPD masks at 10x.

    python benchmarks/mpd_training.py [--repeats 2] [--data DIR] [--keep-blas-env]

Both train one epoch of the 55,000 MNIST training images at batch 64 from the same
masked network with the same shuffles (mpdref.train.fit); the masked dense network
multiplies full matrices whose (k-1)/k masked entries are zero, the block network
(mpdref.mpd.to_block_diagonal) multiplies only the k blocks. Printed: seconds per epoch,
their ratio (target <= 0.5) and the test error after the epoch (they must agree: the
two are the same computation up to float rounding).

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process, as on a user's machine
(benchmarks/blas_env.py; --keep-blas-env keeps them), and the CPU's vector extensions and
the BLAS kernel in use are printed first.
"""
from __future__ import annotations

import argparse
import copy

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np

from mpdref import data, models
from mpdref.mpd import channel_mask, choose_k, mpd_mask, storage_table, to_block_diagonal
from mpdref.runner import load_datasets
from mpdref.train import DEFAULT_RECIPES, fit


def masked_network(seed=0):
    net = models.build("lenet-300-100", seed=seed)
    shapes = net.parameter_shapes()
    ks = choose_k(shapes, ["fc1.weight", "fc2.weight"], 10.0)
    rng = np.random.default_rng(seed)
    for name, k in ks.items():
        net.set_mask(name, channel_mask(shapes[name], mpd_mask(*shapes[name][:2], k, rng)))
    return net, ks, storage_table(shapes, ks)["ratio"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data")
    blas_env.add_argument(p)
    args = p.parse_args()
    print(blas_env.describe())
    train, _, test = load_datasets(np.float32, args.data, data.VALIDATION_SIZE, fetch=False)
    recipe = DEFAULT_RECIPES["lenet-300-100"].replace(epochs=1)
    base, ks, ratio = masked_network()
    warm = (train[0][:640], train[1][:640])
    fit(copy.deepcopy(base), warm, recipe, progress=False)
    fit(to_block_diagonal(copy.deepcopy(base)), warm, recipe, progress=False)
    best = {"masked dense": (float("inf"), None), "block form": (float("inf"), None)}
    for _ in range(args.repeats):
        for label in best:
            net = copy.deepcopy(base)
            if label == "block form":
                net = to_block_diagonal(net)
            seconds = fit(net, train, recipe, seed=0, progress=False)[0]["seconds"]
            if seconds < best[label][0]:
                best[label] = (seconds, net.error_rate(*test))
    print(f"LeNet-300-100, k = {ks} ({ratio:.2f}x), one epoch of 55,000 images at batch 64")
    for label, (seconds, error) in best.items():
        print(f"{label:>14}: {seconds:6.2f} s/epoch, test error after it {error:.2%}")
    print(f"block / masked dense epoch time: {best['block form'][0] / best['masked dense'][0]:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
