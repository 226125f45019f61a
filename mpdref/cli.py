"""The `mpdref` command line: one function per command, no math here."""
from __future__ import annotations

import argparse
import sys

# Paper baselines quoted beside mpdref's numbers (dense test error, Han et al. 2016, Table 1-2).
PAPER_DENSE_ERROR = {"lenet-300-100": 0.0164, "lenet-5": 0.0080}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where to find help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_data_option(p):
    p.add_argument("--data", metavar="DIR", help="folder holding the four MNIST IDX files "
                   "(default: $MPDREF_DATA, then ./data/mnist, then ~/.cache/mpdref/mnist)")


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


def _recipe(args):
    from mpdref.train import DEFAULT_RECIPES

    return DEFAULT_RECIPES[args.model].replace(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule)


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

    p = sub.add_parser("demo", help="train LeNet-300-100 on MNIST and print a results table",
                       description="Train LeNet-300-100 with its default recipe and print the test "
                                   "error beside the paper's baseline. Fetches MNIST if it is found nowhere.")
    _add_data_option(p)
    p.add_argument("--epochs", type=int, help="epochs (default: the recipe's)")
    p.add_argument("--out", default="runs/demo", metavar="RUN_DIR", help="run directory (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a network into a run directory",
                       description="Train a network with SGD and write config.json, log.jsonl, "
                                   "model.h5 and metrics.json into RUN_DIR.")
    p.add_argument("--model", required=True, choices=tuple(ARCHITECTURES), help="network to train")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create")
    _add_data_option(p)
    _add_recipe_options(p)
    p.add_argument("--val-size", type=int, default=5000,
                   help="validation images held out from the end of the training set (default 5000)")
    p.add_argument("--force", action="store_true", help="overwrite a finished run in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="error rate of a saved model on MNIST",
                       description="Load a model file (HDF5, validated) and print its error rate.")
    p.add_argument("model_file", metavar="MODEL.h5")
    _add_data_option(p)
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="test: the 10,000 test images (default); val: the last 5,000 training "
                        "images; train: the other 55,000")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("data", help="fetch or check MNIST",
                       description="Fetch MNIST from a public mirror, or check the copy that mpdref finds.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser, required=True)
    q = data_sub.add_parser("fetch", help="download MNIST, verify it, move it into place",
                            description="Download the four MNIST files, verify their SHA-256, and "
                                        "move them into place atomically.")
    q.add_argument("--dest", metavar="DIR", help="target folder (default ~/.cache/mpdref/mnist)")
    q.add_argument("--mirror", action="append", metavar="URL",
                   help="base URL to fetch from (repeatable; default: the built-in public mirrors)")
    q.set_defaults(func=cmd_data_fetch)
    q = data_sub.add_parser("check", help="find MNIST and verify its checksums",
                            description="Say where MNIST is found and verify all four files.")
    _add_data_option(q)
    q.set_defaults(func=cmd_data_check)
    return parser


# ----------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    import numpy as np

    from mpdref.runner import run_training

    recipe = _recipe(args)
    metrics = run_training(args.model, recipe, args.out, seed=args.seed, dtype=np.dtype(args.dtype),
                           data_root=args.data, val_size=args.val_size,
                           progress=not args.no_progress, force=args.force)
    print(_results_table([metrics]))
    print(f"run directory: {args.out}")
    return 0


def cmd_demo(args) -> int:
    from mpdref.runner import run_training
    from mpdref.train import DEFAULT_RECIPES

    recipe = DEFAULT_RECIPES["lenet-300-100"].replace(epochs=args.epochs)
    print(f"mpdref demo: LeNet-300-100 on MNIST, {recipe.epochs} epochs of SGD (batch {recipe.batch_size}, "
          f"lr {recipe.lr} {recipe.schedule}, momentum {recipe.momentum}, weight decay {recipe.weight_decay})",
          file=sys.stderr)
    metrics = run_training("lenet-300-100", recipe, args.out, seed=args.seed, data_root=args.data,
                           progress=not args.no_progress, force=True)
    print(_results_table([metrics]))
    print(f"run directory: {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from mpdref import data, models

    net = models.load(args.model_file)
    if args.split == "test":
        images, labels = data.load_mnist("test", args.data)
    else:
        train, val = data.split_validation(*data.load_mnist("train", args.data))
        images, labels = val if args.split == "val" else train
    x = data.to_network_input(images, net.dtype)
    error = net.error_rate(x, labels)
    kept = _kept_fraction(net)
    print(f"{args.model_file}: {net.name} ({net.dtype}), {net.num_parameters():,} parameters"
          + (f", {kept:.2%} of masked weights kept" if kept is not None else ""))
    print(f"{args.split} error {error:.2%} ({round(error * len(labels))} of {len(labels)} wrong), "
          f"accuracy {1 - error:.2%}")
    return 0


def cmd_data_fetch(args) -> int:
    from mpdref import data

    mirrors = tuple(args.mirror) if args.mirror else data.MIRRORS
    dest = data.fetch_mnist(args.dest, mirrors=mirrors)
    print(f"MNIST is in {dest} (all four files verified)")
    return 0


def cmd_data_check(args) -> int:
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


def _results_table(rows) -> str:
    header = ("network", "parameters", "epochs", "train time", "val error", "test error", "paper (dense)")
    lines = []
    for m in rows:
        paper = PAPER_DENSE_ERROR.get(m["model"])
        val = m.get("val_error")
        lines.append((m["model"], f"{m['parameters']:,}", str(m["epochs"]), f"{m['train_seconds']:.0f} s",
                      "-" if val is None else f"{val:.2%}", f"{m['test_error']:.2%}",
                      "-" if paper is None else f"{paper:.2%}"))
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in lines]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    # DataError, FormatError, RunDirectoryError and bad recipe values are ValueErrors whose
    # message names the file or setting; OSError covers disk full and permissions.
    except (ValueError, OSError, FloatingPointError) as e:
        print(f"mpdref {args.command}: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"mpdref {args.command}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
