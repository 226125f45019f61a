"""Reading run directories back: summary tables."""
from __future__ import annotations

from pathlib import Path

from mpdref.runner.files import read_json, read_log
from mpdref.runner.shared import shared_record


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
    taken = shared_record(out)
    copied = taken["stages"] if taken else 0
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
                     ("copied" if i < copied else "done") if result is not None
                     else ("in progress" if epochs else "pending")))
    lines.append(format_table(("#", "stage", "type", "epochs", "train loss", "val error", "test error", "time",
                               "state"), rows))
    if taken:
        lines += ["", f"stages 1-{copied} copied from {taken['from']} (the stages the two runs share, "
                      f"run once: the same bits)"]
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
