"""Whole-network MPD inference on the GPU against the CPU, over the MNIST test set.

    python benchmarks/mpd_inference_cuda.py MODEL.h5 [MODEL.h5 ...] [--data DIR] [--repeats 5] [--keep-blas-env]

For each saved MPD model (e.g. runs/NAME/model.h5 of `mpdref run configs/mpd-*.toml`):
its block-diagonal form (mpdref.mpd.to_block_diagonal) predicts the 10,000 test images
on the CPU (BlockNetwork: k small products per layer) and on the GPU
(CudaBlockNetwork: one upload, activations kept on the device, one copy back). Printed:
test error of each, how many predictions differ, and images/s (best of `repeats`
passes over the whole test set, host array in, predictions out, after a warm-up).

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process, as in every benchmark here
(benchmarks/blas_env.py; --keep-blas-env keeps them): the CPU
side's convolutions and products call NumPy's BLAS, and the CPU's vector extensions
and the BLAS kernel in use are printed first.
"""
from __future__ import annotations

import argparse

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np
from timing import best_of


def images_per_second(predict, x, repeats):
    return len(x) / best_of(lambda: predict(x), repeats, warmup=False)[0]  # warmed up by the caller


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="MODEL.h5")
    parser.add_argument("--data", help="MNIST folder (default: the usual lookup)")
    parser.add_argument("--repeats", type=int, default=5)
    blas_env.add_argument(parser)
    args = parser.parse_args()
    print(blas_env.describe())

    from mpdref import data, models
    from mpdref.mpd import CudaBlockNetwork, to_block_diagonal, weight_structure

    images, labels = data.load_mnist("test", args.data)
    print(f"{'model':<40} {'k per layer':<28} {'CPU err':>7} {'GPU err':>7} {'differ':>6} "
          f"{'CPU img/s':>10} {'GPU img/s':>10} {'GPU/CPU':>7}")
    for path in args.models:
        net = models.load(path)
        x = data.to_network_input(images, net.dtype)
        block = to_block_diagonal(net)
        gpu = CudaBlockNetwork(block)
        gpu.predict(x[:1000])  # compile and warm up
        cpu_pred, gpu_pred = block.predict(x), gpu.predict(x)
        assert np.array_equal(cpu_pred, net.predict(x)), "block form and masked network disagree"
        cpu_rate = images_per_second(block.predict, x, args.repeats)
        gpu_rate = images_per_second(gpu.predict, x, args.repeats)
        ks = ",".join(f"{name.split('.')[0]}={weight_structure(m).k}" for name, m in net.masks.items())
        print(f"{path:<40} {ks:<28} {np.mean(cpu_pred != labels):>7.2%} {np.mean(gpu_pred != labels):>7.2%} "
              f"{int(np.sum(cpu_pred != gpu_pred)):>6} {cpu_rate:>10,.0f} {gpu_rate:>10,.0f} {gpu_rate / cpu_rate:>7.1f}",
              flush=True)


if __name__ == "__main__":
    main()
