"""Run directories: a training run leaves its config, log, model and metrics in one folder.

    RUN_DIR/config.json    the resolved settings (recipe, network, seed, data, mpdref version)
    RUN_DIR/log.jsonl      one JSON line per epoch (train loss and error, val and test error, seconds)
    RUN_DIR/model.h5       the trained network (mpdref.models.load reads it)
    RUN_DIR/metrics.json   the final numbers

Every file but the append-only log is written to a temporary name and renamed.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mpdref import __version__, data, models
from mpdref.io.atomic import write_bytes_atomic
from mpdref.train import Recipe, fit


class RunDirectoryError(ValueError):
    """The run directory cannot be used (it holds a finished run, or is not a directory)."""


def write_json(path: Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def prepare_run_directory(out: Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out}: exists and is not a directory")
    if (out / "metrics.json").exists() and not force:
        raise RunDirectoryError(f"{out}: already holds a finished run; choose another --out or pass --force")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirectoryError(f"{out}: cannot create the run directory: {e.strerror or e}") from None
    return out


def load_datasets(dtype, root=None, val_size: int = data.VALIDATION_SIZE, fetch: bool = True):
    """(train, val, test) as (normalized x, labels) pairs in `dtype`."""
    if fetch:
        root = data.find_or_fetch_mnist(root)
    images, labels = data.load_mnist("train", root)
    (tr_images, tr_labels), (va_images, va_labels) = data.split_validation(images, labels, val_size)
    te_images, te_labels = data.load_mnist("test", root)
    return ((data.to_network_input(tr_images, dtype), tr_labels),
            (data.to_network_input(va_images, dtype), va_labels),
            (data.to_network_input(te_images, dtype), te_labels))


def run_training(model: str, recipe: Recipe, out, seed: int = 0, dtype=np.float32, data_root=None,
                 val_size: int = data.VALIDATION_SIZE, progress: bool = True, force: bool = False,
                 datasets=None) -> dict:
    """Train `model` with `recipe` into run directory `out`; return the final metrics."""
    out = prepare_run_directory(out, force)
    dtype = np.dtype(dtype)
    train_set, val_set, test_set = datasets or load_datasets(dtype, data_root, val_size)
    config = {"model": model, "recipe": asdict(recipe), "seed": seed, "dtype": dtype.name,
              "validation_size": val_size, "mpdref_version": __version__}
    write_json(out / "config.json", config)
    net = models.build(model, dtype=dtype, seed=seed)
    started = time.perf_counter()
    with open(out / "log.jsonl", "w") as log_file:
        history = fit(net, train_set, recipe, seed=seed, val=val_set, test=test_set,
                      log_file=log_file, progress=progress)
    seconds = time.perf_counter() - started
    net.metadata = {"recipe": asdict(recipe), "seed": seed}
    models.save(net, out / "model.h5", net.metadata)
    last = history[-1]
    metrics = {"model": model, "parameters": net.num_parameters(), "epochs": recipe.epochs,
               "train_seconds": seconds, "train_loss": last["train_loss"],
               "train_error": last["train_error"], "val_error": last.get("val_error"),
               "test_error": last["test_error"]}
    write_json(out / "metrics.json", metrics)
    return metrics
