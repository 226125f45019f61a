"""`mpdref sweep` against `mpdref run`: short runs on a LocalCluster against the same runs one
after the other, and what a sweep adds to each run.

    python benchmarks/sweep_overhead.py [--runs 8] [--workers 2] [--train-limit 2000] [--epochs 2]
                                        [--data DIR] [--keep-blas-env]

Writes a short LeNet-300-100 experiment (train, prune to 30%, 4-bit codebooks with one epoch of
fine-tuning, encode) into a temporary folder, and a sweep over `runs` seeds of it. Every
command runs as a fresh process, as a user types it, and is timed by the wall clock:

1. `mpdref run` of each seed, one after the other: the baseline, what one would do without a
   sweep. As a user runs it (OpenBLAS and Numba take every core), and again with one thread
   each, as a sweep's worker runs (OPENBLAS_NUM_THREADS=1 and so on): where other work shares
   the cores, OpenBLAS's threads wait on each other and the first is the slower by far;
2. `mpdref sweep --workers W` of the same runs, against both. Target: at most 0.6x;
3. `mpdref sweep --workers 1` of one run, against `mpdref run` of it (both ways): the overhead of
   a sweep of one run, its cluster's start included;
4. `mpdref sweep --workers 1` of all the runs: the overhead per run, (4 - 1) / runs, against
   both baselines. Target: at most 2 s;
5. the same runs in one Python process that calls the runner for each (`run_experiment`), one
   thread: no process start, import or cluster per run; (4 - 5) / runs is what the sweep itself
   costs a run (its cluster's start shared among the runs).

Then whether a sweep's run is the other runs', bit for bit (seed 0): it is, whatever their threads
(each worker runs the same loop, and a fast-set network's passes give the same bits on one
thread as on all the cores: mpdref.kernels.threads).

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process and so in the commands it
starts, as on a user's machine (benchmarks/blas_env.py; --keep-blas-env keeps them).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np

MPDREF = [sys.executable, "-m", "mpdref.cli"]
#: a sweep's worker has one thread in each pool (mpdref.sweep.THREAD_VARIABLES)
ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

EXPERIMENT = """
[experiment]
name = "short"
model = "lenet-300-100"
seed = 0

[data]
root = "{root}"
train_limit = {train_limit}
validation_size = 1000

[[stages]]
type = "train"
epochs = {epochs}

[[stages]]
type = "prune"
keep = {{ "fc1.weight" = 0.3, "fc2.weight" = 0.3, "fc3.weight" = 0.6 }}

[[stages]]
type = "quantize"
bits_all = 4
epochs = 1
lr = 0.001

[[stages]]
type = "encode"
"""


def timed(argv, env=None) -> float:
    """Seconds of wall clock for one command, which must succeed (its output is discarded)."""
    argv = [str(a) for a in argv]
    started = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{result.stderr}")
    return seconds


def same_weights(a: Path, b: Path) -> bool:
    from mpdref import models

    na, nb = models.load(a), models.load(b)
    return na.params.keys() == nb.params.keys() and all(np.array_equal(na.params[k], nb.params[k]) for k in na.params)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=8, help="runs in the sweep (default 8)")
    p.add_argument("--workers", type=int, default=2, help="workers of the parallel sweep (default 2)")
    p.add_argument("--train-limit", type=int, default=2000, help="training images per run (default 2000)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the first training (default 2)")
    p.add_argument("--data", metavar="DIR", help="MNIST folder (default: mpdref's lookup order)")
    blas_env.add_argument(p)
    args = p.parse_args()

    from mpdref.data import find_mnist

    print(blas_env.describe())
    root = find_mnist(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "short.toml"
        config.write_text(EXPERIMENT.format(root=root, train_limit=args.train_limit, epochs=args.epochs))
        seeds = list(range(args.runs))
        sweep = tmp / "seeds.toml"
        sweep.write_text(f'config = "short.toml"\n[grid]\n"experiment.seed" = {seeds}\n')
        one = tmp / "one.toml"
        one.write_text('config = "short.toml"\n[grid]\n"experiment.seed" = [0]\n')
        print(f"{args.runs} runs of LeNet-300-100, {args.train_limit} training images, {args.epochs} + 1 epochs, "
              f"prune, quantize, encode; {os.cpu_count()} CPUs")

        one_thread = {**os.environ, **dict.fromkeys(ONE_THREAD, "1")}
        baselines = {}
        for label, env in (("as a user runs it", None), ("one thread", one_thread)):
            times = []
            for seed in seeds:
                seeded = tmp / f"seed{seed}.toml"
                seeded.write_text(config.read_text().replace("seed = 0", f"seed = {seed}"))
                times.append(timed([*MPDREF, "run", seeded, "--out", tmp / label / f"seed{seed}", "--no-progress"],
                                   env))
            baselines[label] = sum(times)
            print(f"1. mpdref run, one after the other, {label}: {sum(times):.1f} s "
                  f"({sum(times) / args.runs:.2f} s a run: " + ", ".join(f"{t:.1f}" for t in times) + ")")
        user, single = baselines.values()

        parallel = timed([*MPDREF, "sweep", sweep, "--out", tmp / "parallel", "--workers", args.workers,
                          "--no-progress"])
        print(f"2. mpdref sweep --workers {args.workers}: {parallel:.1f} s = {parallel / user:.2f}x the runs one after "
              f"the other as a user runs them, {parallel / single:.2f}x with one thread (target <= 0.6)")

        single_sweep = timed([*MPDREF, "sweep", one, "--out", tmp / "one", "--workers", "1", "--no-progress"])
        run_user = timed([*MPDREF, "run", config, "--out", tmp / "again-user", "--no-progress"])
        run_single = timed([*MPDREF, "run", config, "--out", tmp / "again-single", "--no-progress"], one_thread)
        print(f"3. a sweep of one run: {single_sweep:.1f} s; mpdref run of it {run_user:.1f} s, one thread "
              f"{run_single:.1f} s: overhead {single_sweep - run_user:+.1f} s, {single_sweep - run_single:+.1f} s "
              f"(the cluster's start included)")

        serial_sweep = timed([*MPDREF, "sweep", sweep, "--out", tmp / "serial", "--workers", "1", "--no-progress"])
        print(f"4. mpdref sweep --workers 1: {serial_sweep:.1f} s: overhead {(serial_sweep - user) / args.runs:+.2f} s "
              f"a run over mpdref run as a user runs it, {(serial_sweep - single) / args.runs:+.2f} s over one thread "
              f"(target <= 2)")

        loop = ("import sys; from mpdref.runner import run_experiment; from mpdref.runner.config import load_config\n"
                "for i, path in enumerate(sys.argv[2:]): run_experiment(load_config(path), f'{sys.argv[1]}/{i}', "
                "progress=False)")
        warm = timed([sys.executable, "-c", loop, tmp / "loop", *(tmp / f"seed{seed}.toml" for seed in seeds)],
                     one_thread)
        print(f"5. the runs in one process, one thread: {warm:.1f} s; mpdref sweep --workers 1 costs "
              f"{(serial_sweep - warm) / args.runs:+.2f} s a run over it")

        swept = tmp / "parallel" / "runs" / "seed=0" / "model.h5"
        print("seed 0: the sweep's model is, bit for bit, " + "; ".join(
            f"{'' if same_weights(tmp / where / 'model.h5', swept) else 'not '}{what}'s"
            for where, what in ((Path("as a user runs it") / "seed0", "mpdref run"),
                                (Path("one thread") / "seed0", "mpdref run with one thread"),
                                (Path("loop") / "0", "the one-process loop"))))

if __name__ == "__main__":
    main()
