"""Experiments: a validated config runs its stages into one run directory.

    RUN_DIR/config.json         the resolved config (every default filled in, mpdref version)
    RUN_DIR/log.jsonl           one JSON line per epoch and per stage result
    RUN_DIR/checkpoint.h5       the last checkpoint (every epoch, every stage's end)
    RUN_DIR/stages/NN-NAME.h5   the model after each stage
    RUN_DIR/model.h5            the final model (mpdref.models.load reads it)
    RUN_DIR/metrics.json        the final numbers; its presence marks a finished run
    RUN_DIR/figures/            training curves
    RUN_DIR/shared.json         where the run's first stages came from, if from another run's
                                snapshot (mpdref.runner.shared; sweeps share stages)

`run_experiment(config, out)` runs a resolved config (see mpdref.runner.config);
`resume_experiment(out)` continues an interrupted run from its checkpoint and
ends with the same weights, bit for bit, as a run that was never interrupted.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from mpdref import data, models
from mpdref.figures import plot_training_curves
from mpdref.io.atomic import write_bytes_atomic
from mpdref.runner import stages as _stages  # noqa: F401  (registers every stage)
from mpdref.runner.checkpoint import read_checkpoint, write_checkpoint
from mpdref.runner.files import RunDirectoryError, read_json, read_log, write_json
from mpdref.runner.config import ConfigError, config_digest, resolve_config
from mpdref.runner.registry import STAGES
from mpdref.runner.shared import SHARED, SharedStages, shared_record
from mpdref.streams import random_stream

RUN_FILES = ("config.json", "log.jsonl", "checkpoint.h5", "model.h5", "metrics.json", SHARED)
RUN_FOLDERS = ("stages", "figures")


def load_datasets(dtype, root=None, val_size: int = data.VALIDATION_SIZE, train_limit: int | None = None,
                  fetch: bool = True):
    """(train, val, test) as (normalized x, labels) pairs in `dtype`."""
    if fetch:
        root = data.find_or_fetch_mnist(root)
    images, labels = data.load_mnist("train", root)
    (tr_images, tr_labels), (va_images, va_labels) = data.split_validation(images, labels, val_size)
    if train_limit is not None:
        tr_images, tr_labels = tr_images[:train_limit], tr_labels[:train_limit]
    te_images, te_labels = data.load_mnist("test", root)
    return ((data.to_network_input(tr_images, dtype), tr_labels),
            (data.to_network_input(va_images, dtype), va_labels),
            (data.to_network_input(te_images, dtype), te_labels))


class RunContext:
    """What a stage sees: the network, the data, the log and the checkpoint writer."""

    def __init__(self, config: dict, out: Path, net, progress: bool, log_lines: int, results: list,
                 digest: str | None = None):
        self.config = config
        self.out = out
        self.net = net
        self.seed = config["experiment"]["seed"]
        self.progress = progress
        self.stage_index = 0
        self.log_lines = log_lines
        self.results = results
        self._datasets = None
        self.teachers = {}  # model file -> (its logits over the training set, its report, the network): stages share it
        # The fingerprint of config.json as written: a newer mpdref that fills in a new default
        # still resumes an older run.
        self._digest = digest or config_digest(config)

    def datasets(self):
        if self._datasets is None:
            d = self.config["data"]
            self._datasets = load_datasets(self.net.dtype, d["root"], d["validation_size"], d["train_limit"])
        return self._datasets

    def errors(self, net=None) -> dict:
        """Test and (where there is a validation set) validation error of `net` (default: the run's
        network); the images are cast to its dtype (a teacher from a file may have another)."""
        net = net or self.net
        _, val, test = self.datasets()
        out = {"test_error": net.error_rate(test[0].astype(net.dtype, copy=False), test[1])}
        if len(val[0]):
            out["val_error"] = net.error_rate(val[0].astype(net.dtype, copy=False), val[1])
        return out

    def rng(self, stream: str) -> np.random.Generator:
        """The generator of the named random stream `stream` (mpdref.streams) for this run's seed and this stage."""
        return random_stream(self.seed, stream, self.stage_index)

    def log(self, record: dict) -> None:
        stage = self.config["stages"][self.stage_index]
        line = json.dumps({"stage": stage["name"], "stage_index": self.stage_index, **record})
        with open(self.out / "log.jsonl", "a") as f:
            f.write(line + "\n")
            f.flush()
        self.log_lines += 1

    def checkpoint(self, epochs_done: int, finished: bool, velocity=None, shuffle=None,
                   stage_state: dict | None = None) -> None:
        """stage_state: a stage's own state inside it, {"groups": arrays keyed like the parameters
        (mpdref.runner.checkpoint.STAGE_GROUPS), "progress": JSON values}; resume hands both back."""
        velocity = velocity if velocity is not None else {k: np.zeros_like(v) for k, v in self.net.params.items()}
        progress = {"config_digest": self._digest, "stage_index": self.stage_index, "epochs_done": epochs_done,
                    "finished": finished, "log_lines": self.log_lines, "results": self.results,
                    "rng": {"dropout": self.net.rng.bit_generator.state,
                            "shuffle": None if shuffle is None else shuffle.bit_generator.state}}
        if stage_state is not None:
            progress["stage_state"] = stage_state.get("progress", {})
        write_checkpoint(self.out / "checkpoint.h5", self.net, velocity, progress,
                         None if stage_state is None else stage_state.get("groups"))


def prepare_run_directory(out, force: bool) -> Path:
    """Create `out`, refusing to overwrite a run in it unless `force` (then its files are removed)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out}: exists and is not a directory")
    if not force:
        if (out / "metrics.json").exists():
            raise RunDirectoryError(f"{out}: already holds a finished run; choose another --out or pass --force")
        if (out / "config.json").exists():
            raise RunDirectoryError(f"{out}: holds an unfinished run; continue it with --resume {out}, "
                                    f"or pass --force to start over")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirectoryError(f"{out}: cannot create the run directory: {e.strerror or e}") from None
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)
    return out


def run_experiment(config: dict, out, force: bool = False, progress: bool = True,
                   shared: SharedStages | None = None) -> dict:
    """Run a resolved config into a new run directory; return the final metrics. With `shared`
    (mpdref.runner.shared), begin from the longest snapshot of this run's first stages there is,
    and publish the stages it asks for."""
    out = prepare_run_directory(out, force)
    write_json(out / "config.json", config)
    (out / "log.jsonl").touch()
    e = config["experiment"]
    net = models.build(e["model"], dtype=np.dtype(e["dtype"]), seed=e["seed"])
    return _run_stages(config, out, RunContext(config, out, net, progress, 0, []), None, shared)


def resume_experiment(out, progress: bool = True, shared: SharedStages | None = None) -> dict:
    """Continue the run in `out` from its last checkpoint (or from the start if it has none);
    `shared` as for run_experiment (a snapshot is taken only at a stage's end, never inside one)."""
    out = Path(out)
    if (out / "metrics.json").exists():
        raise RunDirectoryError(f"{out}: the run is already finished; nothing to resume")
    raw = read_json(out / "config.json", "not a run directory (start a run with `mpdref run CONFIG --out DIR`)")
    try:
        config = resolve_config(raw, str(out / "config.json"))
    except ConfigError as e:
        raise RunDirectoryError(f"cannot resume: {e}") from None
    for stale in out.glob(".*.tmp"):  # a write that a crash interrupted
        stale.unlink(missing_ok=True)
    digest = config_digest(raw)
    if not (out / "checkpoint.h5").exists():
        e = config["experiment"]
        net = models.build(e["model"], dtype=np.dtype(e["dtype"]), seed=e["seed"])
        (out / "log.jsonl").write_text("")
        (out / SHARED).unlink(missing_ok=True)
        return _run_stages(config, out, RunContext(config, out, net, progress, 0, [], digest), None, shared)
    state = read_checkpoint(out / "checkpoint.h5", digest)
    _truncate_log(out / "log.jsonl", state["log_lines"])
    ctx = RunContext(config, out, state["net"], progress, state["log_lines"], list(state["results"]), digest)
    return _run_stages(config, out, ctx, state, shared)


def _truncate_log(path: Path, keep: int) -> None:
    """Keep the first `keep` lines: those the checkpoint accounts for (later ones will be written again)."""
    complete = path.read_bytes().split(b"\n")[:-1] if path.exists() else []  # a torn last line is dropped
    if len(complete) < keep:
        raise RunDirectoryError(f"{path}: has {len(complete)} lines, fewer than its checkpoint accounts for ({keep})")
    write_bytes_atomic(path, b"".join(line + b"\n" for line in complete[:keep]))


def _run_stages(config: dict, out: Path, ctx: RunContext, state: dict | None,
                shared: SharedStages | None = None) -> dict:
    stages = config["stages"]
    first = 0
    resume = None
    if state is not None:
        first = state["stage_index"] + (1 if state["finished"] else 0)
        if not state["finished"]:
            resume = state
    if shared is not None and resume is None and shared.restore(config, out, ctx._digest, first) is not None:
        state = read_checkpoint(out / "checkpoint.h5", ctx._digest)  # as a resume at that stage's end
        ctx = RunContext(config, out, state["net"], ctx.progress, state["log_lines"], list(state["results"]),
                         ctx._digest)
        first = state["stage_index"] + 1
    for i in range(first, len(stages)):
        stage = stages[i]
        ctx.stage_index = i
        settings = {k: v for k, v in stage.items() if k not in ("type", "name")}
        result = STAGES[stage["type"]]().run(ctx, settings, resume if i == first else None)
        ctx.results.append({"stage": stage["name"], "type": stage["type"], **result})
        (out / "stages").mkdir(exist_ok=True)
        models.save(ctx.net, out / "stages" / f"{i + 1:02d}-{stage['name']}.h5", {"stage": stage["name"]})
        ctx.log({"result": result})
        ctx.checkpoint(epochs_done=result.get("epochs", 0), finished=True)
        if shared is not None:
            shared.publish(config, out, i, ctx._digest)
    return _finish(config, out, ctx)


def _finish(config: dict, out: Path, ctx: RunContext) -> dict:
    e = config["experiment"]
    models.save(ctx.net, out / "model.h5", {"experiment": e["name"], "stages": [s["name"] for s in config["stages"]]})
    last = next((r for r in reversed(ctx.results) if "test_error" in r), {})
    metrics = {"name": e["name"], "model": e["model"], "seed": e["seed"], "parameters": ctx.net.num_parameters(),
               "stages": ctx.results, "test_error": last.get("test_error"), "val_error": last.get("val_error"),
               "train_seconds": sum(r.get("seconds", 0.0) for r in read_log(out))}
    taken = shared_record(out)
    if taken is not None:  # the first stages' files (log lines, seconds included) came from another run
        metrics["shared_stages"] = {"stages": taken["stages"], "from": taken["from"]}
    plot_training_curves([r for r in read_log(out) if "epoch" in r], f"{e['name']} ({e['model']})",
                         out / "figures" / "training.png")
    write_json(out / "metrics.json", metrics)
    return metrics
