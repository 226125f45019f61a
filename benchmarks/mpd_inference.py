"""MPD inference on the CPU: mpdref's block form against PyTorch's best, in one run.

    python benchmarks/mpd_inference.py [--repeats 5 | --quick] [--threads N] [--json OUT] [--keep-blas-env]

For the three MPD networks as configs/mpd-lenet-300-100.toml, mpd-lenet-5.toml and
mpd-deep-mnist.toml set them up (the config's network and seed, its mpd stage's layers and
ratio, the masks drawn from the run's "mpd" random stream: the network the config's first
training epoch starts from; random weights time like trained ones), float32, batch 1, 64
and 1024:

- mpdref:       `mpdref.mpd.block_network(net, "cpu").forward(x)`: the k blocks of each
                masked layer as one stacked, zero-padded product (dense layers) or one
                convolution per block (conv layers), one gather per layer;
- torch dense:  an nn.Sequential of the masked dense weights (the (k-1)/k masked entries
                multiplied as zeros);
- torch block:  PyTorch's own block form of the same blocks: per masked dense layer, an
                index_select gather into zero-padded blocks and torch.bmm; per masked conv
                layer, the gathered channels (zero channels as padding) through one
                conv2d with groups = k; an unmasked layer is one dense layer, with the
                permutation of the layer before it folded into its weight.

mpdref's logits are checked against each PyTorch variant's before any timing (float32:
max |difference| <= 1e-4 · max |logit|). Printed: images/s for each (the best of `repeats`
timings, each of enough calls to take about 20 ms, contenders alternating, after a
warm-up) and mpdref's time / the faster PyTorch variant's. Required at batch 64 and 1024,
for all three networks: <= 1.0 (never slower than PyTorch); target <= 0.67.

Threads: PyTorch is given as many intra-op threads as Numba has (both print); NumPy's BLAS
(which mpdref's products call) uses its own pool, also printed. --threads N sets all three
to N (NumPy's BLAS through threadpoolctl, where it is installed). Needs torch: pip install
-e '.[crosscheck]'.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process, as on a user's machine
(benchmarks/blas_env.py; --keep-blas-env keeps them), and the CPU's vector extensions and
the BLAS kernel in use are printed first.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np
from timing import best_of

CONFIGS = {"lenet-300-100": "mpd-lenet-300-100.toml", "lenet-5": "mpd-lenet-5.toml",
           "deep-mnist": "mpd-deep-mnist.toml"}
BATCHES = (1, 64, 1024)
#: seconds of rest before each timing: a thread pool (OpenBLAS's, Numba's, PyTorch's) keeps
#: spinning for a while after its last call and would share the cores with the next contender
PAUSE = 0.2
#: float32 agreement demanded before timing: max |difference| <= TOLERANCE · max |logit|
TOLERANCE = 1e-4


def mpd_network(config_path: Path):
    """(the masked float32 network, k per masked weight) as the config's mpd stage leaves it."""
    from mpdref import models
    from mpdref.mpd import apply_mpd_masks, blocks_per_layer
    from mpdref.runner.config import load_config
    from mpdref.streams import random_stream

    config = load_config(config_path)
    seed = config["experiment"]["seed"]
    net = models.build(config["experiment"]["model"], np.float32, seed=seed)
    index, settings = next((i, s) for i, s in enumerate(config["stages"]) if s["type"] == "mpd")
    ks = blocks_per_layer(net.parameter_shapes(), settings["layers"] or net.weight_names(), settings["k"],
                          settings["k_all"], settings["ratio"])
    trained_before = any(s["type"] == "train" for s in config["stages"][:index])
    rescale = settings["rescale"] == "yes" or (settings["rescale"] == "auto" and not trained_before)
    apply_mpd_masks(net, ks, random_stream(seed, "mpd", index), rescale)
    return net, ks


# ----------------------------------------------------------------------------- PyTorch


def _torch_parameter_free(layer):
    """The nn module of a layer without parameters (dropout: inference, so the identity)."""
    from torch import nn

    from mpdref import models

    if isinstance(layer, models.MaxPool2d):
        return nn.MaxPool2d(layer.kernel)
    return {models.ReLU: nn.ReLU, models.Flatten: nn.Flatten, models.Dropout: nn.Identity}[type(layer)]()


def torch_dense(net):
    """The masked network as a PyTorch user writes it: nn layers holding the masked dense weights."""
    import torch
    from torch import nn

    from mpdref import models

    p = {name: torch.from_numpy(value.copy()) for name, value in net.params.items()}
    modules = []
    for layer in net.layers:
        if isinstance(layer, models.Dense):
            m = nn.Linear(layer.in_features, layer.out_features)
        elif isinstance(layer, models.Conv2d):
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding)
        else:
            modules.append(_torch_parameter_free(layer))
            continue
        with torch.no_grad():
            m.weight.copy_(p[f"{layer.name}.weight"])
            m.bias.copy_(p[f"{layer.name}.bias"])
        modules.append(m)
    return nn.Sequential(*modules).eval()


def _torch_block_layers():
    """The nn.Module classes of PyTorch's block form (defined here so that torch loads only when needed)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class BlockLinear(nn.Module):
        """A BlockDense layer: y = (x's columns gathered into k zero-padded blocks) · w[b]ᵀ, valid rows + bias."""

        def __init__(self, layer, params):
            super().__init__()
            w = params[layer.weight_name]  # (k, R, C), zero-padded
            self.k, self.r_max, self.c_max = w.shape
            self.cols = len(layer.gather)
            gather = layer.padded_gather.copy()
            self.padded = bool((gather < 0).any())
            gather[gather < 0] = self.cols  # the zero column appended to x
            self.register_buffer("gather", torch.from_numpy(gather))
            self.register_buffer("valid_rows", torch.from_numpy(layer.valid_rows.copy()))
            self.register_buffer("wt", torch.from_numpy(np.ascontiguousarray(w.transpose(0, 2, 1))))  # (k, C, R)
            self.register_buffer("bias", torch.from_numpy(params[f"{layer.name}.bias"].copy()))

        def forward(self, x):
            n = x.shape[0]
            if self.padded:
                x = F.pad(x, (0, 1))
            xs = x.index_select(1, self.gather).view(n, self.k, self.c_max).transpose(0, 1)  # (k, N, C)
            ys = torch.bmm(xs, self.wt)  # (k, N, R)
            return ys.transpose(0, 1).reshape(n, self.k * self.r_max).index_select(1, self.valid_rows) + self.bias

    class BlockConv(nn.Module):
        """A BlockConv2d layer: the gathered channels (zero channels padding each group to the widest)
        through one grouped conv2d, then the valid output channels."""

        def __init__(self, layer, params):
            super().__init__()
            blocks = layer.blocks(params)
            self.k, self.stride, self.padding = layer.k, layer.stride, layer.padding
            r_max, c_max = max(layer.row_sizes), max(layer.col_sizes)
            channels = len(layer.gather)
            gather = np.full((self.k, c_max), channels, np.int64)  # `channels`: the appended zero channel
            valid = []
            w = np.zeros((self.k * r_max, c_max, layer.kernel, layer.kernel), np.float32)
            start = 0
            for b, block in enumerate(blocks):
                r, c = block.shape[:2]
                gather[b, :c] = layer.gather[start : start + c]
                w[b * r_max : b * r_max + r, :c] = block
                valid += range(b * r_max, b * r_max + r)
                start += c
            self.padded = bool((gather == channels).any())
            self.register_buffer("gather", torch.from_numpy(gather.ravel()))
            self.register_buffer("valid", torch.from_numpy(np.array(valid, np.int64)))
            self.register_buffer("weight", torch.from_numpy(w))
            self.register_buffer("bias", torch.from_numpy(params[f"{layer.name}.bias"].copy()))

        def forward(self, x):
            if self.padded:
                x = F.pad(x, (0, 0, 0, 0, 0, 1))
            y = F.conv2d(x.index_select(1, self.gather), self.weight, None, self.stride, self.padding, 1, self.k)
            return y.index_select(1, self.valid) + self.bias[:, None, None]

    class ClassOrder(nn.Module):
        """The logits back in the classes' order: class c is the block-ordered output position[c]."""

        def __init__(self, position):
            super().__init__()
            self.register_buffer("position", torch.from_numpy(position.copy()))

        def forward(self, z):
            return z.index_select(1, self.position)

    return BlockLinear, BlockConv, ClassOrder


def torch_block(block_net):
    """PyTorch's own block form of a BlockNetwork: bmm / grouped conv where k > 1; a layer of one
    block is an ordinary dense layer with the gather folded into its weight."""
    import torch
    from torch import nn

    from mpdref.mpd import BlockConv2d, BlockDense

    BlockLinear, BlockConv, ClassOrder = _torch_block_layers()
    params = block_net.params
    modules = []
    for layer in block_net.layers:
        if isinstance(layer, (BlockDense, BlockConv2d)) and layer.k == 1:
            (block,) = layer.blocks(params)
            inverse = np.argsort(layer.gather)  # x[:, gather] · Bᵀ = x · B[:, inverse]ᵀ
            w = np.ascontiguousarray(block[:, inverse])
            if isinstance(layer, BlockDense):
                m = nn.Linear(w.shape[1], w.shape[0])
            else:
                m = nn.Conv2d(w.shape[1], w.shape[0], layer.kernel, layer.stride, layer.padding)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(w))
                m.bias.copy_(torch.from_numpy(params[f"{layer.name}.bias"]))
            modules.append(m)
        elif isinstance(layer, BlockDense):
            modules.append(BlockLinear(layer, params))
        elif isinstance(layer, BlockConv2d):
            modules.append(BlockConv(layer, params))
        else:
            modules.append(_torch_parameter_free(layer))
    body = nn.Sequential(*modules).eval()
    order = block_net.output_order
    if order is None or np.array_equal(order, np.arange(len(order))):
        return body
    return nn.Sequential(body, ClassOrder(block_net.label_position)).eval()


# ----------------------------------------------------------------------------- timing


def calls_for(fn, seconds=0.02):
    """How many calls of fn (already warmed up) take about `seconds`."""
    calls = 1
    while best_of(lambda: [fn() for _ in range(calls)], 1, warmup=False)[0] < seconds:
        calls *= 2
    return calls


def seconds_per_call(contenders: dict, repeats: int) -> dict:
    """Seconds per call of each contender: the best of `repeats` rounds in which each contender in
    turn times its `calls` calls after a pause (alternating, so that a noisy moment hits all)."""
    calls = {name: calls_for(fn) for name, fn in contenders.items()}
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, fn in contenders.items():
            time.sleep(PAUSE)
            t = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / calls[name])
    return best


def check_equal(label, got, expected):
    """Hold `got` to `expected` within float32 tolerance; return the max |difference| / max |expected|."""
    scale = float(np.abs(expected).max())
    worst = float(np.abs(got - expected).max()) / scale
    if not np.isfinite(worst) or worst > TOLERANCE:
        sys.exit(f"{label}: logits differ from mpdref's by {worst:.2e} of their largest (allowed {TOLERANCE:g})")
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timing rounds per case; the best is kept (default 5)")
    p.add_argument("--quick", action="store_true", help="2 rounds instead of --repeats")
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    p.add_argument("--threads", type=int, help="threads for Numba, PyTorch and NumPy's BLAS alike (default: Numba's)")
    p.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    blas_env.add_argument(p)
    args = p.parse_args()
    repeats = 2 if args.quick else args.repeats
    try:
        import torch
    except ImportError:
        sys.exit("this benchmark needs torch: pip install -e '.[crosscheck]'")
    import numba

    from mpdref.mpd import block_network

    torch_default = torch.get_num_threads()
    if args.threads:
        numba.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            print("--threads: NumPy's BLAS threads left as they are (pip install threadpoolctl to set them)")
        else:
            threadpool_limits(limits=args.threads, user_api="blas")  # kept for the rest of the process
    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    print(blas_env.describe())
    print(f"threads: mpdref's Numba {threads}; PyTorch {torch.get_num_threads()} intra-op (its default here: "
          f"{torch_default}), set equal to Numba's; torch {torch.__version__}; best of {repeats} rounds")
    configs = Path(__file__).resolve().parents[1] / "configs"
    rng = np.random.default_rng(0)
    results = []
    header = (f"{'network':<15}{'k':<22}{'batch':>6}{'mpdref img/s':>14}{'torch dense':>13}{'torch block':>13}"
              f"{'mpdref / best torch':>21}")
    print(header)
    for model in args.models:
        net, ks = mpd_network(configs / CONFIGS[model])
        block = block_network(net, "cpu")
        dense_module, block_module = torch_dense(net), torch_block(block)
        k_text = ", ".join(f"{name.split('.')[0]} {k}" for name, k in ks.items())
        for batch in args.batches:
            x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                ours = block.forward(x)
                differences = {"mpdref masked dense": check_equal(f"{model} mpdref masked dense", net.forward(x), ours),
                               "torch dense": check_equal(f"{model} torch dense", dense_module(xt).numpy(), ours),
                               "torch block": check_equal(f"{model} torch block", block_module(xt).numpy(), ours)}
                seconds = seconds_per_call({"mpdref": lambda: block.forward(x),
                                            "torch dense": lambda: dense_module(xt),
                                            "torch block": lambda: block_module(xt)}, repeats)
            rate = {name: batch / s for name, s in seconds.items()}
            best_torch = min(("torch dense", "torch block"), key=seconds.get)
            ratio = seconds["mpdref"] / seconds[best_torch]
            results.append({"network": model, "k": ks, "batch": batch, "images_per_s": rate,
                            "seconds_per_call": seconds, "best_torch": best_torch, "ratio": ratio,
                            "max_relative_difference": differences})
            print(f"{model:<15}{k_text:<22}{batch:>6}{rate['mpdref']:>14,.0f}{rate['torch dense']:>13,.0f}"
                  f"{rate['torch block']:>13,.0f}{ratio:>15.2f} ({best_torch.split()[1]})", flush=True)
    print("ratio: mpdref's time / the faster PyTorch variant's; required <= 1.0 at batch 64 and 1024, target <= 0.67")
    if args.json:
        out = {"benchmark": "mpd_inference", "environment": blas_env.summary(),
               "threads": {"numba": threads, "torch": torch.get_num_threads(), "torch_default": torch_default},
               "torch_version": torch.__version__, "repeats": repeats, "results": results}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
