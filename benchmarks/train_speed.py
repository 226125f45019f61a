"""One training epoch, batch 64, mpdref against PyTorch (CPU), measured in one run.

    python benchmarks/train_speed.py [--models lenet-300-100 lenet-5 deep-mnist] [--repeats 2] [--data DIR]
                                     [--keep-blas-env]

Both frameworks train the same network on the same 55,000 MNIST images in the same
shuffled order, with SGD (momentum 0.9, weight decay 5e-4 on weights) at batch 64.
Each measurement runs in a fresh subprocess (so neither framework's thread pool
disturbs the other), alternating mpdref and PyTorch; the best of the repeats is
reported. The time is the epoch's training loop alone, after a warm-up of a few
steps (Numba compiles on first use). Also printed: the peak resident memory of the
mpdref process (data included) over an epoch.

Required (variables unset, as below): mpdref / PyTorch <= 0.5 for LeNet-300-100, <= 0.75 for
LeNet-5, <= 1.0 for Deep MNIST; targets LeNet-5 <= 0.6, Deep MNIST <= 0.8; and a Deep MNIST
epoch's peak memory under 1.5 GiB.
Needs torch: pip install -e '.[crosscheck]'.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process and so in its workers, as on
a user's machine (benchmarks/blas_env.py; --keep-blas-env keeps them, in the workers too), and
the CPU's vector extensions and the BLAS kernel in use are printed first.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np

BATCH = 64
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
WARMUP_STEPS = 5


def load_training_set(root):
    from mpdref import data

    images, labels = data.load_mnist("train", root)
    (images, labels), _ = data.split_validation(images, labels)
    return data.to_network_input(images, np.float32), labels


def worker_mpdref(model, root, seed):
    from mpdref import models
    from mpdref.train import SGD, Recipe, fit

    x, y = load_training_set(root)
    net = models.build(model, seed=seed)
    sgd = SGD(net, MOMENTUM, WEIGHT_DECAY)
    warm = (x[:WARMUP_STEPS * BATCH], y[:WARMUP_STEPS * BATCH])
    fit(models.build(model, seed=seed), warm, Recipe(epochs=1, batch_size=BATCH, lr=LR), progress=False)
    record = fit(net, (x, y), Recipe(epochs=1, batch_size=BATCH, lr=LR, momentum=MOMENTUM,
                                     weight_decay=WEIGHT_DECAY, schedule="constant"),
                 seed=seed, progress=False, optimizer=sgd)[0]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": record["seconds"], "train_loss": record["train_loss"], "peak_rss_mib": peak_kib / 1024}


def torch_network(model):
    import torch.nn as nn

    if model == "lenet-300-100":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                             nn.Linear(100, 10))
    if model == "lenet-5":
        return nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3136, 1024), nn.ReLU(), nn.Dropout(0.5), nn.Linear(1024, 10))


def worker_torch(model, root, seed):
    import torch
    import torch.nn.functional as F

    from mpdref.train import _shuffle_rng

    x, y = load_training_set(root)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(seed)
    net = torch_network(model)
    weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in net.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": WEIGHT_DECAY},
                           {"params": biases, "weight_decay": 0.0}], lr=LR, momentum=MOMENTUM)

    def step(idx):
        opt.zero_grad(set_to_none=True)
        logits = net(xt[idx])
        loss = F.cross_entropy(logits, yt[idx])
        loss.backward()
        opt.step()
        return loss.item(), int((logits.argmax(1) != yt[idx]).sum())  # mpdref's loop computes both too

    for s in range(WARMUP_STEPS):
        step(torch.arange(s * BATCH, (s + 1) * BATCH))
    order = torch.from_numpy(_shuffle_rng(seed).permutation(len(x)))
    started = time.perf_counter()
    total = 0.0
    for b in range(0, len(x), BATCH):
        idx = order[b : b + BATCH]
        loss, _ = step(idx)
        total += loss * len(idx)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "train_loss": total / len(x), "threads": torch.get_num_threads()}


def run_worker(framework, model, root, seed):
    cmd = [sys.executable, __file__, "--worker", framework, "--models", model, "--seed", str(seed)]
    if blas_env.KEEP:  # the workers inherit this process's environment: unset, unless kept
        cmd.append(blas_env.FLAG)
    if root:
        cmd += ["--data", str(root)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{framework} worker for {model} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet-300-100", "lenet-5", "deep-mnist"],
                   choices=["lenet-300-100", "lenet-5", "deep-mnist"])
    p.add_argument("--repeats", type=int, default=2, help="subprocess runs per framework and network (best is kept)")
    p.add_argument("--data", help="MNIST folder (default: mpdref's lookup)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=["mpdref", "torch"], help=argparse.SUPPRESS)
    blas_env.add_argument(p)
    args = p.parse_args()

    if args.worker:
        fn = worker_mpdref if args.worker == "mpdref" else worker_torch
        print(json.dumps(fn(args.models[0], args.data, args.seed)))
        return

    try:
        import torch
    except ImportError:
        sys.exit("this benchmark needs torch: pip install -e '.[crosscheck]'")
    print(blas_env.describe())
    print(f"one epoch of 55,000 MNIST images, batch {BATCH}, SGD; {os.cpu_count()} CPUs; "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads; best of {args.repeats}")
    rows = []
    for model in args.models:
        results = {"mpdref": [], "torch": []}
        for _ in range(args.repeats):
            for framework in ("mpdref", "torch"):
                results[framework].append(run_worker(framework, model, args.data, args.seed))
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in results.items()}
        ratio = best["mpdref"]["seconds"] / best["torch"]["seconds"]
        peak = max(r["peak_rss_mib"] for r in results["mpdref"])
        rows.append((model, best["mpdref"]["seconds"], best["torch"]["seconds"], ratio, peak,
                     best["mpdref"]["train_loss"], best["torch"]["train_loss"]))
    print(f"{'network':<15}{'mpdref s':>10}{'torch s':>10}{'mpdref/torch':>14}{'mpdref img/s':>14}"
          f"{'torch img/s':>13}{'peak RSS MiB':>14}{'loss mpdref':>13}{'loss torch':>12}")
    for model, ours, theirs, ratio, peak, loss_ours, loss_theirs in rows:
        print(f"{model:<15}{ours:>10.2f}{theirs:>10.2f}{ratio:>14.2f}{55000 / ours:>14.0f}{55000 / theirs:>13.0f}"
              f"{peak:>14.0f}{loss_ours:>13.4f}{loss_theirs:>12.4f}")
    print("required: mpdref/torch <= 0.5 (LeNet-300-100), <= 0.75 (LeNet-5, target 0.6), <= 1.0 (Deep MNIST, "
          "target 0.8); a Deep MNIST epoch's peak RSS < 1536 MiB")


if __name__ == "__main__":
    main()
