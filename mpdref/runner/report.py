"""Reading run directories back: summary tables and training-curve figures."""
from __future__ import annotations

import json
from pathlib import Path

from mpdref.runner import read_json  # the runner imports this module lazily: no cycle


def read_log(out) -> list[dict]:
    """The complete JSON lines of RUN_DIR/log.jsonl (a torn last line is skipped)."""
    path = Path(out) / "log.jsonl"
    records = []
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def percent(v):
    return "-" if v is None else f"{v:.2%}"


def format_table(header, rows) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join(lines + [fmt.format(*map(str, r)) for r in rows])


def _status(out: Path):
    if (out / "metrics.json").exists():
        return "finished", read_json(out / "metrics.json", "a finished run has metrics.json")
    return f"unfinished: `mpdref run --resume {out}` continues it", None


def show_run(out) -> str:
    """A readable summary of one run: settings, then one row per stage."""
    out = Path(out)
    config_path = out / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{out}: not a run directory (no config.json)")
    config = read_json(config_path, "not a run directory")
    status, metrics = _status(out)
    log = read_log(out)
    e = config["experiment"]
    lines = [f"run {out}: {e['name']}, {status}",
             f"network {e['model']} ({e['dtype']}), seed {e['seed']}, mpdref {config.get('mpdref_version', '?')}", ""]
    rows = []
    for i, stage in enumerate(config["stages"]):
        epochs = [r for r in log if r.get("stage_index") == i and "epoch" in r]
        result = next((r["result"] for r in log if r.get("stage_index") == i and "result" in r), None)
        planned = stage.get("epochs")
        if stage["type"] == "teacher":  # its row shows the teacher's epochs and errors
            epochs = [r["teacher"] for r in log if r.get("stage_index") == i and "epoch" in r.get("teacher", {})]
            result = result and result["teacher"]
            planned = result["epochs"] if result else planned or "?"
        last = epochs[-1] if epochs else {}
        named = stage["type"] == "teacher" and stage["name"] != stage["model"]
        rows.append((i + 1, stage["name"] + (f" ({stage['model']})" if named else ""),
                     stage["type"], f"{len(epochs)}/{planned}" if "epochs" in stage else "-",
                     f"{last['train_loss']:.4f}" if "train_loss" in last else "-",
                     percent((result or last).get("val_error")), percent((result or last).get("test_error")),
                     f"{sum(r['seconds'] for r in epochs):.0f} s" if epochs else "-",
                     "done" if result is not None else ("in progress" if epochs else "pending")))
    lines.append(format_table(("#", "stage", "type", "epochs", "train loss", "val error", "test error", "time",
                               "state"), rows))
    if metrics is not None:
        lines += ["", f"final: test error {percent(metrics['test_error'])}, val error {percent(metrics['val_error'])}, "
                      f"{metrics['parameters']:,} parameters"]
    return "\n".join(lines)


def compare_runs(outs) -> str:
    """Several runs side by side, one row each."""
    rows = []
    for out in map(Path, outs):
        if not (out / "config.json").exists():
            raise FileNotFoundError(f"{out}: not a run directory (no config.json)")
        config = read_json(out / "config.json", "not a run directory")
        status, metrics = _status(out)
        e = config["experiment"]
        rows.append((str(out), e["name"], e["model"], e["seed"], " > ".join(s["name"] for s in config["stages"]),
                     percent(metrics["val_error"]) if metrics else "-", percent(metrics["test_error"]) if metrics else "-",
                     f"{metrics['train_seconds']:.0f} s" if metrics else "-", status.split(":")[0]))
    return format_table(("run", "name", "network", "seed", "stages", "val error", "test error", "train time",
                         "status"), rows)


def plot_training_curves(out) -> Path | None:
    """figures/training.png: train loss and validation/test error per epoch, across all training stages."""
    from mpdref.io.figure import pyplot, save_figure

    epochs = [r for r in read_log(out) if "epoch" in r]
    if not epochs:
        return None
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    x = list(range(1, len(epochs) + 1))
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    ax_loss.plot(x, [r["train_loss"] for r in epochs], label="train loss")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mean cross-entropy")
    for key, label in (("train_error", "train"), ("val_error", "validation"), ("test_error", "test")):
        if all(key in r for r in epochs):
            ax_err.plot(x, [100 * r[key] for r in epochs], label=label)
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("error (%)")
    ax_err.set_yscale("log")  # the differences that matter are tenths of a percent
    for ax in (ax_loss, ax_err):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
    for i in range(1, len(epochs)):
        if epochs[i]["stage_index"] != epochs[i - 1]["stage_index"]:
            for ax in (ax_loss, ax_err):
                ax.axvline(i + 0.5, color="0.6", lw=0.8, ls="--")
    ax_err.legend()
    ax_loss.legend()
    config = read_json(Path(out) / "config.json", "not a run directory")
    fig.suptitle(f"{config['experiment']['name']} ({config['experiment']['model']})")
    return save_figure(fig, Path(out) / "figures" / "training.png", dpi=100)
