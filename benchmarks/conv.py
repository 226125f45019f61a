"""The convolutions of LeNet-5 and Deep MNIST on the CPU: the direct kernel against im2col + BLAS and PyTorch.

    python benchmarks/conv.py [--repeats 10] [--threads N] [--keep-blas-env]

For each convolution layer of the two networks (float32, the layer's own input size), at
batch 64 (training: forward, then both gradients, as a training step calls them; the first
layer computes no input gradient) and batch 1024 (inference: forward only):

- direct:  mpdref's fast op set (`mpdref.kernels.fast_ops`, whose stride-1 convolution is
           `mpdref.kernels.direct_conv`: no patch matrix);
- im2col:  the reference op (`mpdref.ops.conv2d_forward` / `conv2d_backward`) with the compiled
           im2col and col2im of `mpdref.kernels.cpu` and one BLAS product per pass: the fast
           path before the direct kernel;
- torch:   torch.nn.functional.conv2d (and its autograd backward), PyTorch's CPU path.

Printed: milliseconds (the best of `repeats` calls) and the ratios direct / im2col and
direct / torch. Where the direct kernel pays is where direct / im2col < 1.

Threads: Numba's (the direct kernel), NumPy's BLAS (im2col's product) and PyTorch's intra-op
pool, each its default unless --threads N sets all three. Needs torch: pip install -e
'.[crosscheck]'.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process, as on a user's machine
(benchmarks/blas_env.py; --keep-blas-env keeps them), and the CPU's vector extensions and the
BLAS kernel in use are printed first.
"""
from __future__ import annotations

import argparse
import time

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np
from timing import best_of

from mpdref.kernels import cpu, fast_ops
from mpdref.kernels.allocator import reuse_freed_memory
from mpdref.ops import conv

#: (network, layer, in channels, image size, filters, kernel, padding), as mpdref.models builds them
LAYERS = [
    ("lenet-5", "conv1", 1, 28, 20, 5, 0),
    ("lenet-5", "conv2", 20, 12, 50, 5, 0),
    ("deep-mnist", "conv1", 1, 28, 32, 5, 2),
    ("deep-mnist", "conv2", 32, 14, 64, 5, 2),
]
PAUSE = 0.2  # seconds of rest before each timing: the last contender's thread pool may still spin


def contenders(x, w, b, padding, train, first_layer):
    """{name: a call of one forward pass (and with `train`, its backward pass too)}."""
    import torch

    need_dx = not first_layer
    dout = np.ones((x.shape[0], w.shape[0], x.shape[2] + 2 * padding - w.shape[2] + 1,
                    x.shape[3] + 2 * padding - w.shape[3] + 1), dtype=x.dtype)

    def direct():
        y, cache = fast_ops.conv2d_forward(x, w, b, 1, padding)
        return fast_ops.conv2d_backward(dout, cache, need_dx) if train else y

    def im2col():
        y, cache = conv.conv2d_forward(x, w, b, 1, padding, im2col=fast_ops.im2col)
        return conv.conv2d_backward(dout, cache, need_dx, col2im=cpu.col2im) if train else y

    tx, tw, tb, td = (torch.from_numpy(a) for a in (x, w, b, dout))

    def torch_conv():
        if not train:
            with torch.no_grad():
                return torch.nn.functional.conv2d(tx, tw, tb, padding=padding)
        xs = tx.clone().requires_grad_(need_dx)
        ws, bs = tw.clone().requires_grad_(), tb.clone().requires_grad_()
        torch.nn.functional.conv2d(xs, ws, bs, padding=padding).backward(td)
        return ws.grad

    return {"direct": direct, "im2col": im2col, "torch": torch_conv}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, help="threads for Numba, NumPy's BLAS and PyTorch alike")
    blas_env.add_argument(p)
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("this benchmark needs torch: pip install -e '.[crosscheck]'")
    import numba

    if args.threads:
        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads, user_api="blas")
        except ImportError:
            print("threadpoolctl is not installed: NumPy's BLAS keeps its own thread count")
    print(blas_env.describe())
    print(f"threads: Numba {numba.get_num_threads()}, PyTorch {torch.get_num_threads()}; best of {args.repeats}")
    reuse_freed_memory()
    rng = np.random.default_rng(0)
    print(f"{'layer':<18}{'batch':>6}  {'pass':<16}{'direct ms':>10}{'im2col ms':>10}{'torch ms':>10}"
          f"{'direct/im2col':>15}{'direct/torch':>14}")
    for net, layer, c, size, f, k, padding in LAYERS:
        x = rng.standard_normal((1024, c, size, size)).astype(np.float32)
        w = (rng.standard_normal((f, c, k, k)) * 0.1).astype(np.float32)
        b = rng.standard_normal(f).astype(np.float32)
        for batch, train in ((64, True), (1024, False)):
            calls = contenders(np.ascontiguousarray(x[:batch]), w, b, padding, train, layer == "conv1")
            times = {}
            for name, fn in calls.items():
                time.sleep(PAUSE)
                times[name] = best_of(fn, args.repeats)[0] * 1e3
            what = ("forward + dw" if layer == "conv1" else "forward + dw, dx") if train else "forward"
            print(f"{net + ' ' + layer:<18}{batch:>6}  {what:<16}{times['direct']:>10.2f}{times['im2col']:>10.2f}"
                  f"{times['torch']:>10.2f}{times['direct'] / times['im2col']:>15.2f}"
                  f"{times['direct'] / times['torch']:>14.2f}")


if __name__ == "__main__":
    main()
