"""The `mpdref` command line: one function per command, no math here."""
from __future__ import annotations

import argparse
import inspect
import itertools
import sys

from mpdref.kernels import BackendUnavailable


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where to find help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_data_option(p):
    p.add_argument("--data", metavar="DIR", help="folder holding the four MNIST IDX files "
                   "(default: $MPDREF_DATA, then ./data/mnist, then ../shared/data/mnist beside a "
                   "source checkout, then ~/.cache/mpdref/mnist)")


def _add_recipe_options(p):
    from mpdref.train import SCHEDULES

    g = p.add_argument_group("recipe (defaults: the network's default recipe)")
    g.add_argument("--epochs", type=int, help="number of epochs")
    g.add_argument("--batch-size", type=int, help="mini-batch size")
    g.add_argument("--lr", type=float, help="initial learning rate")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, help="L2 weight decay (weights only)")
    g.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule")
    g.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and dropout (default 0)")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float32 for speed, float64 for audits (default float32)")


def _add_dask_options(p):
    """Where a sweep's runs go (sweep, reproduce), what happens to failed ones, and the progress bar."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="worker processes of the LocalCluster on this machine, one run each at a time "
                            "(default: the number of cores)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="a running Dask scheduler (tcp://HOST:PORT) instead; DIR must be on a filesystem "
                            "that every worker sees")
    p.add_argument("--retry-failed", action="store_true", help="run the failed runs again (from their checkpoints)")
    p.add_argument("--no-share", action="store_true",
                   help="run every stage of every run, even the first stages several runs have in common "
                        "(by default those run once and the other runs copy them: the same bits)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar: a line per run")


def _add_command(sub, name: str, func) -> argparse.ArgumentParser:
    """A subcommand that runs `func`, documented by its docstring: the first line is the
    command's line in `mpdref --help` (lower case, no period, as argparse writes its own), the
    rest the description that `mpdref NAME --help` prints."""
    summary, _, description = inspect.getdoc(func).partition("\n\n")
    p = sub.add_parser(name, help=summary, description=description)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from mpdref import __version__
    from mpdref.models import ARCHITECTURES

    parser = _Parser(
        prog="mpdref",
        description="mpdref: a NumPy/Numba reference implementation of deep-network compression "
                    "on MNIST. Each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"mpdref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = _add_command(sub, "demo", cmd_demo)
    _add_data_option(p)
    p.add_argument("--epochs", type=int,
                   help="epochs of the first (dense or MPD) training (default: the config's, 30)")
    p.add_argument("--out", default="runs/demo", metavar="RUN_DIR", help="run directory (default runs/demo)")
    p.add_argument("--seed", type=int, help="seed (default: the config's, 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = _add_command(sub, "run", cmd_run)
    p.add_argument("config", nargs="?", metavar="EXPERIMENT.toml", help="experiment file (see configs/)")
    p.add_argument("--stages", action="store_true", help="list the stage types and their settings, then exit")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/NAME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR")
    p.add_argument("--force", action="store_true", help="overwrite a run in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = _add_command(sub, "show", cmd_show)
    p.add_argument("run_dir", metavar="RUN_DIR|SWEEP_DIR")

    p = _add_command(sub, "compare", cmd_compare)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")

    p = _add_command(sub, "figures", cmd_figures)
    p.add_argument("dirs", nargs="+", metavar="RUN_OR_SWEEP_DIR")
    p.add_argument("-o", "--out", metavar="DIR",
                   help="folder for the figures (default: figures/ in the first directory given)")
    p.add_argument("--svg", action="store_true", help="SVG files instead of PNG")
    p.add_argument("--bench", metavar="FILE.json",
                   help="also draw kernel speed against the dense BLAS product from a benchmark's JSON output "
                        "(benchmarks/mpd_inference.py --json, benchmarks/block_diagonal_cuda.py --out)")

    p = _add_command(sub, "sweep", cmd_sweep)
    p.add_argument("sweep_file", metavar="SWEEP.toml", help="sweep file (see configs/sweeps/)")
    p.add_argument("--out", metavar="DIR", help="sweep directory (default runs/STEM, STEM the sweep file's name)")
    _add_dask_options(p)

    p = _add_command(sub, "reproduce", cmd_reproduce)
    p.add_argument("--quick", action="store_true",
                   help="shrink every run (2,000 training images, 1,000 validation images, one epoch or ADMM "
                        "update per stage): a smoke check, not comparable to the papers")
    p.add_argument("--out", metavar="DIR",
                   help="reproduction directory (default runs/reproduce; runs/reproduce-quick with --quick)")
    p.add_argument("--only", nargs="+", metavar="CONFIG",
                   help="run only these configs of configs/ (a name such as lenet-5 or lenet-5.toml) and the "
                        "dense baselines their claims compare with; the other claims read 'not run'")
    _add_dask_options(p)

    p = _add_command(sub, "train", cmd_train)
    p.add_argument("--model", required=True, choices=tuple(ARCHITECTURES), help="network to train")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create")
    _add_data_option(p)
    _add_recipe_options(p)
    p.add_argument("--val-size", type=int, default=5000,
                   help="validation images held out from the end of the training set (default 5000)")
    p.add_argument("--force", action="store_true", help="overwrite a finished run in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = _add_command(sub, "evaluate", cmd_evaluate)
    p.add_argument("model_file", metavar="MODEL.h5|MODEL.mpdz")
    _add_data_option(p)
    p.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: the masked network with NumPy and Numba (default); cuda: block-diagonal "
                        "form on the GPU")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="test: the 10,000 test images (default); val: the last 5,000 training "
                        "images; train: the other 55,000")

    p = _add_command(sub, "compress", cmd_compress)
    p.add_argument("model_file", metavar="MODEL.h5")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.mpdz")
    p.add_argument("--max-code-length", type=int, default=11, metavar="BITS",
                   help="longest Huffman codeword (default 11: one 2048-entry decoding table)")
    p.add_argument("--index-bits", type=int, default=None, metavar="B",
                   help="bits per relative index (1-8; forces relative indices over DARB offsets; "
                        "default: the smallest file per weight)")
    p.add_argument("--no-fold-biases", dest="fold_biases", action="store_false",
                   help="store the biases as they are (default: first move into the next layer's bias what "
                        "it receives from biases alone, which computes the same function with fewer nonzero "
                        "biases to store)")

    p = _add_command(sub, "decompress", cmd_decompress)
    p.add_argument("mpdz_file", metavar="MODEL.mpdz")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.h5")

    p = _add_command(sub, "size", cmd_size)
    p.add_argument("mpdz_file", metavar="MODEL.mpdz")

    p = _add_command(sub, "crosscheck", cmd_crosscheck)
    p.add_argument("model", metavar="MODEL.onnx|MODEL.h5|MODEL.mpdz")
    inputs = p.add_mutually_exclusive_group()
    inputs.add_argument("--inputs", metavar="FILE.npz", help="input arrays keyed by graph input name")
    inputs.add_argument("--data", choices=("test", "val"), help="MNIST images of this split (default: test)")
    inputs.add_argument("--random", type=int, metavar="N", help="N standard-normal images")
    p.add_argument("--limit", type=int, metavar="N", help="the first N images of --data (default 100)")
    p.add_argument("--raw", action="store_true", help="MNIST pixels in [0, 1], not normalized")
    p.add_argument("--against", default="onnxruntime", metavar="onnxruntime|torch|FILE.npz",
                   help="the other side (default onnxruntime; torch for a model file)")
    p.add_argument("--rtol", type=float, metavar="R", help="relative tolerance (default: torch.testing's for the dtype)")
    p.add_argument("--atol", type=float, metavar="A", help="absolute tolerance (default: torch.testing's for the dtype)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.add_argument("--mnist", metavar="DIR", help="folder holding the MNIST IDX files (default: the usual lookup)")

    p = _add_command(sub, "convert", cmd_convert)
    p.add_argument("input", metavar="IN", help="a .pt/.pth state_dict, a .safetensors file or an .onnx file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    p.add_argument("--model", choices=tuple(ARCHITECTURES),
                   help="the architecture (a safetensors file mpdref wrote names its own)")

    p = _add_command(sub, "export", cmd_export)
    p.add_argument("model_file", metavar="MODEL.h5|MODEL.mpdz")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx|OUT.safetensors")
    p.add_argument("--form", choices=("auto", "dense", "blocks"), default="auto",
                   help="ONNX: dense, or MPD block form (auto: blocks for an MPD-masked model)")

    p = sub.add_parser("data", help="fetch or check MNIST",
                       description="Fetch MNIST from a public mirror, or check the copy that mpdref finds.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser, required=True)
    q = _add_command(data_sub, "fetch", cmd_data_fetch)
    q.add_argument("--dest", metavar="DIR", help="target folder (default ~/.cache/mpdref/mnist)")
    q.add_argument("--mirror", action="append", metavar="URL",
                   help="base URL to fetch from (repeatable; default: the built-in public mirrors)")
    q = _add_command(data_sub, "check", cmd_data_check)
    _add_data_option(q)
    return parser


# ----------------------------------------------------------------------------- commands


def _training_config(model, stage, seed=0, dtype="float32", data_root=None, val_size=5000):
    """A one-stage experiment from command-line options; problems are named by their option."""
    import re

    from mpdref.runner.config import ConfigError, resolve_config

    raw = {"experiment": {"name": model, "model": model, "seed": seed, "dtype": dtype},
           "data": {"validation_size": val_size, **({"root": str(data_root)} if data_root else {})},
           "stages": [{"type": "train", **{k: v for k, v in stage.items() if v is not None}}]}
    try:
        return resolve_config(raw, "options")
    except ConfigError as e:
        message = re.sub(r"(?:stages\[0\]|experiment|data)\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(e))
        raise ConfigError(message.replace("--validation-size", "--val-size")) from None


def _report(metrics, out) -> None:
    from mpdref.runner.report import percent, format_table
    from mpdref.train import PAPER_DENSE_ERROR

    paper = PAPER_DENSE_ERROR.get(metrics["model"])
    stage = metrics["stages"][0]
    print(format_table(
        ("network", "parameters", "epochs", "train time", "val error", "test error", "paper (dense)"),
        [(metrics["model"], f"{metrics['parameters']:,}", stage.get("epochs", "-"),
          f"{metrics['train_seconds']:.0f} s", percent(metrics["val_error"]), percent(metrics["test_error"]),
          percent(paper))]))
    print(f"run directory: {out}")


def cmd_train(args) -> int:
    """train a network into a run directory

    Train a network with SGD: a one-stage experiment written into RUN_DIR (config.json,
    log.jsonl, checkpoint.h5, model.h5, metrics.json, figures/). `mpdref run --resume RUN_DIR`
    continues it if interrupted.
    """
    from mpdref.runner import run_experiment

    stage = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum,
             "weight_decay": args.weight_decay, "schedule": args.schedule}
    config = _training_config(args.model, stage, args.seed, args.dtype, args.data, args.val_size)
    metrics = run_experiment(config, args.out, force=args.force, progress=not args.no_progress)
    _report(metrics, args.out)
    return 0


DEMO_PIPELINES = ("dense", "deep-compression", "mpd")  # mpdref/configs/demo/NAME.toml, run in this order


def _header_summary(toml_text: str) -> str:
    """The first paragraph of a TOML file's comment header, on one line: what the config shows."""
    paragraph = itertools.takewhile(lambda line: line.startswith("# "), toml_text.splitlines())
    return " ".join(line[2:] for line in paragraph)


def cmd_demo(args) -> int:
    """LeNet-300-100 dense, Deep-Compressed and MPD-compressed, and a results table

    Three short pipelines on LeNet-300-100, the experiment files in mpdref/configs/demo/: dense
    training with the default recipe; Deep Compression (3 rounds of pruning and retraining,
    distilling from the dense network, 5-bit codebooks, Huffman coding into model.mpdz); MPD
    masks at 10x trained in block form, 6-bit codebooks, Huffman. Prints each compressed file's
    size table and the test errors, and draws the three models' test error against compression
    ratio beside the papers' points (tradeoff.png in the --out folder). Fetches MNIST if it is
    found nowhere.
    """
    from importlib import resources
    from pathlib import Path

    from mpdref.compress import size_table
    from mpdref.data import find_or_fetch_mnist
    from mpdref.figures import PAPER_DPI, method_of, save_figure, tradeoff_figure
    from mpdref.runner import run_experiment
    from mpdref.runner.config import load_config, resolve_config
    from mpdref.runner.report import format_table, percent
    from mpdref.train import PAPER_DEEP_COMPRESSION, PAPER_DENSE_ERROR

    root = find_or_fetch_mnist(args.data)
    rows, points = [], []
    for name in DEMO_PIPELINES:
        with resources.as_file(resources.files("mpdref") / "configs" / "demo" / f"{name}.toml") as path:
            config = load_config(path)
            what = _header_summary(path.read_text())
        first_train = next(i for i, s in enumerate(config["stages"]) if s["type"] == "train")
        if args.epochs is not None:
            config["stages"][first_train]["epochs"] = args.epochs
        if args.seed is not None:
            config["experiment"]["seed"] = args.seed
        config["data"]["root"] = str(root)
        config = resolve_config(config, f"{path} with the demo's options")  # checks the options' values
        dense = config["stages"][first_train]
        print(f"mpdref demo [{name}]: {what}; {dense['epochs']} epochs of SGD first (batch {dense['batch_size']}, "
              f"lr {dense['lr']} {dense['schedule']}, momentum {dense['momentum']}, weight decay "
              f"{dense['weight_decay']}); MNIST from {root}", file=sys.stderr)
        out = f"{args.out}/{name}"
        metrics = run_experiment(config, out, force=True, progress=not args.no_progress)
        encoded = any(s["type"] == "encode" for s in config["stages"])  # the encode stage printed the size table
        table = size_table(f"{out}/model.mpdz") if encoded else None
        rows.append((name, percent(metrics["test_error"]), percent(metrics["val_error"]),
                     f"{table['file_bytes']:,} B" if table else f"{4 * metrics['parameters']:,} B (float32)",
                     f"{table['ratio']:.1f}x" if table else "1.0x", f"{metrics['train_seconds']:.0f} s"))
        points.append({"network": config["experiment"]["model"], "series": method_of(config), "counts": "file",
                       "ratio": table["ratio"] if table else 1.0, "error": metrics["test_error"]})
    print(format_table(("pipeline", "test error", "val error", "model size", "smaller", "train time"), rows))
    paper = PAPER_DEEP_COMPRESSION["lenet-300-100"]
    print(f"LeNet-300-100 dense test error in the paper: {percent(PAPER_DENSE_ERROR['lenet-300-100'])}; "
          f"Deep Compression: {percent(paper['test_error'])} at {paper['ratio']}x. Run directories: {args.out}/*")
    # the table's errors and ratios, drawn: the three models beside the papers' points
    figure = save_figure(tradeoff_figure(points), Path(args.out) / "tradeoff.png", PAPER_DPI)
    print(f"test error against compression ratio: {figure}")
    return 0


def cmd_run(args) -> int:
    """run an experiment (TOML) into a run directory, or resume one

    Run the stages of an experiment file in order. The whole config is validated before any
    work starts. A checkpoint closes every epoch and every stage; --resume continues an
    interrupted run exactly. --stages lists the stage types and their settings.
    """
    from mpdref.runner import resume_experiment, run_experiment
    from mpdref.runner.config import load_config
    from mpdref.runner.report import show_run

    if args.stages:
        from mpdref.runner.registry import describe_stages

        print(describe_stages())
        return 0
    if (args.config is None) == (args.resume is None):
        raise ValueError("give either EXPERIMENT.toml or --resume RUN_DIR (or --stages)")
    if args.resume:
        if args.out or args.force:
            raise ValueError("--resume continues RUN_DIR as it is: --out and --force do not apply")
        out = args.resume
        resume_experiment(out, progress=not args.no_progress)
    else:
        config = load_config(args.config)
        out = args.out or f"runs/{config['experiment']['name']}"
        print(f"mpdref run: {args.config} -> {out}", file=sys.stderr)
        run_experiment(config, out, force=args.force, progress=not args.no_progress)
    print(show_run(out))
    return 0


def cmd_sweep(args) -> int:
    """run a grid of experiments (a sweep file) on Dask workers

    Expand the sweep file's grid over its base experiment config into runs, validate every one,
    and run them as ordinary run directories DIR/runs/NAME (NAME from the run's values) on Dask:
    a LocalCluster of one-thread workers on this machine, or the workers of a running scheduler
    (--scheduler; DIR must then be on a filesystem that every worker sees). Finished runs are not
    run again; unfinished ones resume from their checkpoints, also after a worker died; a failed
    run is recorded and the others go on, so calling the command again continues the sweep. Runs
    that begin with the same stages (the same model, seed, data and first stages: the dense
    training before each pruning setting) run them once, and the others start from a copy
    (DIR/shared/; the same bits; --no-share runs them all). At the end: DIR/results.csv and
    DIR/results.json, one row per run, and the table that `mpdref show DIR` prints. Needs Dask:
    pip install -e '.[sweep]'.
    """
    from mpdref.sweep import run_sweep, show_sweep

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: expected an integer >= 1, got {args.workers}")
    out, counts = run_sweep(args.sweep_file, args.out, workers=args.workers, scheduler=args.scheduler,
                            progress=not args.no_progress, retry_failed=args.retry_failed, share=not args.no_share)
    print(show_sweep(out))
    print(f"results: {out}/results.csv, {out}/results.json", file=sys.stderr)
    if counts["failed"] or counts["unfinished"] or counts["pending"]:
        print(f"mpdref sweep: {counts['finished']} of {sum(counts.values())} runs finished, {counts['failed']} failed",
              file=sys.stderr)
        return 1
    return 0


def cmd_reproduce(args) -> int:
    """run every paper configuration and write REPRODUCTION.md: each claim against mpdref's number

    Run every config in configs/ that a paper's claim names (mpdref.reproduce.CLAIMS: Deep
    Compression, MPDCompress, the ADMM papers, DARB, the dense baselines) through the sweep
    engine, as run directories DIR/runs/NAME (NAME the config's file name without .toml) on
    Dask, as `mpdref sweep` runs them (--workers, --scheduler, --retry-failed, --no-share; calling
    again continues; configs that begin alike, such as the dense training most start with, run
    those stages once). Then DIR/results.csv and results.json (a row per run), the papers' figures in
    DIR/figures/, and DIR/REPRODUCTION.md: per paper a table of its claims with the paper's
    number, mpdref's number read from the run directories, the config that measured it, and
    met / not met / failed / unfinished / not run. Numbers are compared at the decimals the
    paper writes (39.6x meets 40x). --quick shrinks every run to a smoke check of the
    pipelines (2,000 training images, one epoch or ADMM update per stage; meant to finish within
    15 minutes on 2 cores), labelled in the report as not comparable to the papers. --only runs some configs
    (and their claims' dense baselines). Prints the report. Exit status: 0 when every run
    finished, whether or not each claim is met; 1 otherwise. Needs Dask: pip install -e
    '.[sweep]'.
    """
    from mpdref.reproduce import reproduce, summary

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: expected an integer >= 1, got {args.workers}")
    path, outcomes, counts = reproduce(args.out, quick=args.quick, only=args.only, workers=args.workers,
                                       scheduler=args.scheduler, progress=not args.no_progress,
                                       retry_failed=args.retry_failed, share=not args.no_share)
    print(path.read_text())
    print(f"mpdref reproduce: {summary(outcomes)}; report: {path}", file=sys.stderr)
    if counts["failed"] or counts["unfinished"] or counts["pending"]:
        print(f"mpdref reproduce: {counts['finished']} of {sum(counts.values())} runs finished, "
              f"{counts['failed']} failed", file=sys.stderr)
        return 1
    return 0


def cmd_show(args) -> int:
    """summarize a run directory or a sweep directory

    Print a run's settings and one row per stage; for a sweep directory (mpdref sweep --out DIR),
    one row per run.
    """
    from pathlib import Path

    from mpdref.runner.report import show_run

    if (Path(args.run_dir) / "sweep.json").exists() and not (Path(args.run_dir) / "config.json").exists():
        from mpdref.sweep import show_sweep

        print(show_sweep(args.run_dir))
        return 0
    print(show_run(args.run_dir))
    return 0


def cmd_figures(args) -> int:
    """the papers' figures from run and sweep directories

    Draw the figures of the compression papers from files that runs have written (nothing is
    trained): from all runs, a sweep's runs included, 1. test error against compression ratio
    (log axis), a curve per method, the papers' reported points marked (tradeoff) and 2. the
    stored bits per layer, weights, index or permutations, codebook and biases, as stacked
    bars, a bar per run with a model.mpdz (storage); from each run directory given alone,
    3. the weights before quantization with the k-means and the fine-tuned centroids
    (codebooks), 4. the sensitivity stage's curves (pruning-sensitivity), 5. the MPD masks as
    trained and permuted (masks) and 6. the Huffman code lengths against symbol frequency in
    model.mpdz (huffman); with --bench, 7. kernel speed against the dense BLAS product
    (kernel-speed). A run's ratio is its encode stage's file ratio, else 1 / the fraction of
    weights kept (open markers). Figures are one paper column wide (3.5 in), PNG at 200 dpi or
    SVG. Prints each file written; a figure whose inputs are missing is named with the files
    it needs.
    """
    from pathlib import Path

    from mpdref.figures import write_figures

    runs = []
    for d in map(Path, args.dirs):
        if (d / "sweep.json").exists() and not (d / "config.json").exists():
            from mpdref.sweep import read_sweep_record

            names = [r["name"] for r in read_sweep_record(d)["runs"]]
            runs += [(d / "runs" / n, d.resolve().name) for n in names if (d / "runs" / n / "config.json").exists()]
        else:
            runs.append((d, None))
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "figures"
    written = 0
    for path, note in write_figures(runs, out, svg=args.svg, bench=args.bench):
        if path is None:
            print(f"mpdref figures: {note}", file=sys.stderr)
        else:
            print(path)
            written += 1
    if not written:
        print("mpdref figures: no figure drawn: none of its inputs are in the directories given", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args) -> int:
    """several runs side by side

    Print one row per run: network, stages, errors, time.
    """
    from mpdref.runner.report import compare_runs

    print(compare_runs(args.run_dirs))
    return 0


def cmd_evaluate(args) -> int:
    """error rate of a saved model on MNIST

    Load a model file (HDF5, validated) and print its error rate. --backend cuda runs the
    network on the GPU in block-diagonal form (MPD layers as k small products, the
    permutations fused into the kernels; an unmasked layer is one block); it needs numba-cuda
    (pip install -e '.[cuda]') and an NVIDIA GPU, or NUMBA_ENABLE_CUDASIM=1 for Numba's (slow)
    simulator.
    """
    from mpdref import data

    net = _load_any(args.model_file)
    classifier = net
    if args.backend == "cuda":  # before the data: a missing GPU is said at once
        from mpdref.mpd import block_network

        classifier = block_network(net, "cuda")
    if args.split == "test":
        images, labels = data.load_mnist("test", args.data)
    else:
        train, val = data.split_validation(*data.load_mnist("train", args.data))
        images, labels = val if args.split == "val" else train
    x = data.to_network_input(images, net.dtype)
    error = classifier.error_rate(x, labels)
    kept = _kept_fraction(net)
    print(f"{args.model_file}: {net.name} ({net.dtype}), {net.num_parameters():,} parameters"
          + (f", {kept:.2%} of masked weights kept" if kept is not None else "") + f"; backend {args.backend}")
    print(f"{args.split} error {error:.2%} ({round(error * len(labels))} of {len(labels)} wrong), "
          f"accuracy {1 - error:.2%}")
    return 0


def _load_any(path):
    """A model from an HDF5 model file or an .mpdz file (told apart by their first bytes)."""
    from mpdref import models

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        magic = b""
    if magic == b"MPDZ":
        from mpdref.compress import decompress

        return decompress(path)
    return models.load(path)


def cmd_compress(args) -> int:
    """write a model as a compressed .mpdz file and print its size table

    Deep Compression's storage: per weight, its distinct values as a float32 codebook with
    Huffman-coded indices (raw float32 when that is smaller), and the positions of the kept
    weights as Huffman-coded relative indices, or, for MPD masks, the permutations and block
    boundaries, or, for block-max regular (DARB) masks, block sizes and offsets where that is
    smaller. Biases that the next layer can carry are moved there first (the same function; a
    pruned network's dead units then store no bias, except in the output layer and before a
    padded convolution). The table's bits are the bytes of the file.
    """
    from mpdref import models
    from mpdref.compress import compress, describe_folded, fold_biases, format_size_table

    net = models.load(args.model_file)
    if args.fold_biases and (line := describe_folded(fold_biases(net))):
        print(line)
    table = compress(net, args.output, max_length=args.max_code_length, index_bits=args.index_bits)
    print(f"{args.model_file} -> {args.output}")
    print(format_size_table(table))
    return 0


def cmd_decompress(args) -> int:
    """turn an .mpdz file back into a model file

    Decode an .mpdz file (verified first) into an HDF5 model file with the same weights,
    biases and masks.
    """
    from mpdref import models
    from mpdref.compress import decompress

    net = decompress(args.mpdz_file)
    models.save(net, args.output)
    print(f"{args.mpdz_file} -> {args.output}: {net.name}, {net.num_parameters():,} parameters")
    return 0


def cmd_size(args) -> int:
    """the size table of an .mpdz file

    Per weight: weights, fraction kept, bits per weight and per index before and after Huffman
    coding, codebook and code-table bits, index or permutation bits, bias bits, and the ratio
    to dense float32; then the container and the total. Counted from the file's sections.
    """
    from mpdref.compress import format_size_table, size_table

    print(format_size_table(size_table(args.mpdz_file)))
    return 0


def cmd_data_fetch(args) -> int:
    """download MNIST, verify it, move it into place

    Download the four MNIST files, verify their SHA-256, and move them into place atomically.
    """
    from mpdref import data

    mirrors = tuple(args.mirror) if args.mirror else data.MIRRORS
    dest = data.fetch_mnist(args.dest, mirrors=mirrors)
    print(f"MNIST is in {dest} (all four files verified)")
    return 0


def cmd_data_check(args) -> int:
    """find MNIST and verify its checksums

    Say where MNIST is found and verify all four files.
    """
    from mpdref import data

    root = data.find_mnist(args.data)
    for split in ("train", "test"):
        images, _ = data.load_mnist(split, root)
        print(f"{split}: {len(images):,} images, checksums match")
    print(f"MNIST found in {root}")
    return 0


# ----------------------------------------------------------------------------- formatting


def _kept_fraction(net):
    if not net.masks:
        return None
    return sum(int(m.sum()) for m in net.masks.values()) / sum(m.size for m in net.masks.values())



def _interop():
    """mpdref.interop, or an error naming the extra to install."""
    try:
        import mpdref.interop as interop
    except ImportError as e:
        raise BackendUnavailable(f"{e} (the interop extra: pip install -e '.[interop]')") from None
    return interop


def cmd_crosscheck(args) -> int:
    """compare mpdref's float64 reference with onnxruntime, saved values or PyTorch, value by value

    MODEL.onnx: mpdref evaluates the graph with its own reference ops in float64; the other
    side is onnxruntime (default; every node output is made a graph output, as Polygraphy
    does, so every intermediate value is compared) or the values another framework saved in
    an .npz file, keyed by ONNX value names. MODEL.h5 or .mpdz --against torch: the same
    network built in PyTorch from the state_dict; logits, loss and every parameter's
    gradient are compared, in float64.

    Inputs: --inputs FILE.npz (arrays keyed by graph input name), --data test|val (MNIST,
    found by the usual lookup or --mnist DIR; --limit N: the first N images, default 100) or
    --random N (standard normal). MNIST images are normalized as mpdref's networks expect,
    (pixel / 255 - 0.1307) / 0.3081; --raw gives pixels in [0, 1] instead.

    Printed per compared value, in graph order: node, op, shape, max |diff|, max relative
    diff and the mismatched elements, |a - e| > atol + rtol·|e| (torch.testing.assert_close's
    rule); then the first divergent value and, for a classifier, the fraction of equal
    predictions. Without --rtol/--atol each value gets torch.testing's defaults for its dtype
    (float32: 1.3e-6 and 1e-5, float64: 1e-7 and 1e-7). Exit status: 0 when every compared
    value agrees, 1 when any differs (the summary names it), 2 for bad input. Needs the
    interop extra (pip install -e '.[interop]'); --against torch needs torch
    (pip install -e '.[crosscheck]')."""
    try:
        interop = _interop()
        from mpdref.interop import crosscheck as module

        report = module.crosscheck(args.model, inputs=args.inputs, data_split=args.data, limit=args.limit,
                                   random=args.random, raw=args.raw, against=args.against, rtol=args.rtol,
                                   atol=args.atol, root=args.mnist)
    except (ValueError, FileNotFoundError, ImportError, BackendUnavailable) as e:
        print(f"mpdref crosscheck: error: {e}", file=sys.stderr)
        return 2
    print(interop.format_report(report))
    if args.json:
        interop.write_report_json(report, args.json)
        print(f"report: {args.json}")
    return interop.exit_status(report)


def cmd_convert(args) -> int:
    """read PyTorch, safetensors or ONNX weights into an mpdref model file

    IN is a PyTorch state_dict (.pt/.pth: torch.save of model.state_dict(), or a checkpoint
    dict holding one under state_dict, model_state_dict or model; every zip record's CRC-32
    is checked, then torch.load(weights_only=True); needs torch: pip install -e
    '.[crosscheck]'), a safetensors file (read without torch; the header is validated before
    any byte is used) or an ONNX file (its initializers, e.g. from torch.onnx.export).
    Parameter names are PyTorch's, as mpdref's networks use them (fc1.weight, conv1.bias, ...;
    a DataParallel "module." prefix is taken off). Masks come from mask.NAME (what `mpdref
    export` writes) or torch.nn.utils.prune's NAME_orig and NAME_mask. Names or shapes that do
    not fit are one error line listing what is missing, what is unexpected and which shapes
    differ. OUT.h5 is written atomically, float32. Needs the interop extra."""
    _interop()
    from mpdref.interop.convert import convert_file

    net = convert_file(args.input, args.output, args.model)
    print(f"{args.input} -> {args.output} ({net.name}, {net.num_parameters():,} parameters"
          f"{', masks: ' + ', '.join(sorted(net.masks)) if net.masks else ''})")
    return 0


def cmd_export(args) -> int:
    """write an mpdref model as ONNX (onnxruntime runs it) or safetensors

    OUT.onnx: an ONNX graph (opset 17, float32) that onnxruntime runs with mpdref's
    predictions. It takes "input" (N, 1, 28, 28), MNIST images normalized as mpdref's
    networks expect them ((pixel / 255 - 0.1307) / 0.3081), and gives "logits" (N, 10).
    Dense and pruned models are one node per layer (pruned weights as zeros); MPD models are
    written in block form (per block a Gather of the inputs it reads and a Gemm or Conv of
    its weights, joined by a Concat), which stores only the kept weights. --form dense writes
    an MPD model densely; --form blocks insists on the block form.

    OUT.safetensors: the state_dict under PyTorch's names (fc1.weight, ...), which torch's
    load_state_dict and safetensors.torch.load_file take as they are, and every mask under
    its own name (mask.fc1.weight, bool, true = kept); `mpdref convert` reads it back. Needs
    the interop extra: pip install -e '.[interop]'."""
    _interop()
    from mpdref.interop.export import export

    export(args.model_file, args.output, form=args.form)
    import os

    print(f"{args.model_file} -> {args.output} ({os.path.getsize(args.output):,} bytes)")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except BrokenPipeError:  # `mpdref show RUN | head`: the reader left; that is not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    # DataError, FormatError, RunDirectoryError and bad recipe values are ValueErrors whose
    # message names the file or setting; OSError covers disk full and permissions.
    except (ValueError, FloatingPointError, BackendUnavailable) as e:
        print(f"mpdref {args.command}: error: {e}", file=sys.stderr)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"mpdref {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"mpdref {args.command}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
