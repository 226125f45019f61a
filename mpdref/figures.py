"""Every figure mpdref draws: pure functions from arrays (or a run's records) to a PNG.

Each function takes what it plots and the target path, draws with matplotlib on the Agg
backend (no display needed) and writes the PNG atomically (`save_figure`). Nothing else
in mpdref imports matplotlib; the methods compute, the runner calls these.

    plot_training_curves   loss and errors per epoch of a run            figures/training.png
    plot_sensitivity       error against fraction kept, per layer        figures/sensitivity.png
    plot_codebooks         weights and their k-means / fine-tuned centroids   figures/quantize.png
    plot_masks             MPD masks as trained and permuted             figures/mpd-masks.png
    plot_admm              ADMM's residual per layer and validation error per update   figures/admm-*.png
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mpdref.io.atomic import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, target, dpi: int = 90) -> Path:
    """Write `fig` as a PNG at `target` (its folder made if missing, the file atomically), then close it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    return target


def plot_training_curves(epochs: list[dict], title: str, target) -> Path | None:
    """Train loss and validation/test error per epoch, across all training stages, from a run's epoch
    records (log.jsonl lines with an "epoch"; a dashed line where the stage changes). None: no epochs."""
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
    fig.suptitle(title)
    return save_figure(fig, target, dpi=100)


def plot_sensitivity(table: dict, keeps: list[float], baseline: float, target) -> None:
    """Validation error against the fraction kept, one line per layer pruned alone (`mpdref.prune.sensitivity`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for name, errors in table.items():
        ax.plot([100 * k for k in keeps], [100 * e for e in errors], marker="o", label=name)
    ax.axhline(100 * baseline, color="grey", linestyle="--", label="unpruned")
    ax.set_xlabel("weights kept in the layer (%)")
    ax.set_ylabel("validation error (%)")
    ax.set_xscale("log")
    ax.set_title("Sensitivity to pruning one layer (no retraining)")
    ax.legend(fontsize=8)
    save_figure(fig, target)


def plot_codebooks(before: dict, after: dict, target) -> None:
    """Per layer: the histogram of the kept weights before quantization, the initial centroids and
    the fine-tuned ones."""
    plt = pyplot()
    fig, axes = plt.subplots(len(before), 1, figsize=(7, 2.4 * len(before)), squeeze=False, constrained_layout=True)
    for ax, (name, (values, initial)) in zip(axes[:, 0], before.items()):
        ax.hist(values, bins=200, color="0.75")
        for c in initial:
            ax.axvline(c, color="tab:blue", linewidth=0.6)
        for c in after[name]:
            ax.axvline(c, color="tab:red", linewidth=0.6, linestyle="--")
        ax.set_title(f"{name}: {len(values):,} kept weights; centroids from k-means (blue), fine-tuned (red)",
                     fontsize=9)
    save_figure(fig, target)


def plot_masks(structures: dict, target) -> None:
    """Spy plots of each mask before and after permutation (written atomically)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(structures), figsize=(3.2 * len(structures), 6.2), squeeze=False,
                             constrained_layout=True)
    for col, (name, m) in enumerate(structures.items()):
        for row, (title, img) in enumerate((("as trained", m.mask),
                                            ("permuted", m.mask[np.ix_(m.row_perm, m.col_perm)]))):
            ax = axes[row, col]
            ax.imshow(img, cmap="Greys", interpolation="nearest", aspect="auto")
            ax.set_title(f"{name} (k={m.k}), {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    save_figure(fig, target)


def plot_admm(updates: list[dict], title: str, target) -> Path | None:
    """ADMM's progress against the Z/U update: each constrained layer's primal residual ‖W − Z‖ / ‖W‖
    (log scale) and the validation error, from the stage's epoch records that carry an "admm" entry
    (mpdref.runner.stages.admm). None: no update yet."""
    updates = [r for r in updates if "admm" in r]
    if not updates:
        return None
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    x = [r["admm"]["update"] for r in updates]
    fig, (ax_res, ax_err) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for layer in updates[0]["admm"]["layers"]:
        ax_res.plot(x, [max(r["admm"]["layers"][layer]["residual"], 1e-12) for r in updates], marker=".",
                    label=layer)
    ax_res.set_yscale("log")
    ax_res.set_xlabel("Z/U update")
    ax_res.set_ylabel("primal residual ‖W − Z‖ / ‖W‖")
    ax_res.legend(fontsize="small")
    if all("val_error" in r for r in updates):
        ax_err.plot(x, [100 * r["val_error"] for r in updates], marker=".", label="validation")
        ax_err.legend(fontsize="small")
    ax_err.set_xlabel("Z/U update")
    ax_err.set_ylabel("error (%)")
    for ax in (ax_res, ax_err):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, target)
