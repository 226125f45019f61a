"""Every figure mpdref draws: pure functions from arrays (or a run's records) to a PNG or SVG.

Each `*_figure` function takes what it plots and returns a matplotlib Figure (Agg backend, no
display needed); `save_figure` writes it atomically, as SVG when the target ends in .svg and as
PNG otherwise. Nothing else in mpdref imports matplotlib; the methods compute, the runner and
the CLI call these.

In a run (the runner draws these as its stages finish, into RUN_DIR/figures/):

    plot_training_curves   loss and errors per epoch of a run            training.png
    plot_sensitivity       error against fraction kept, per layer        sensitivity.png
    plot_codebooks         weights and their k-means / fine-tuned centroids   quantize.png
    plot_masks             MPD masks as trained and permuted             mpd-masks.png
    plot_admm              ADMM's residual per layer and validation error per update   admm-*.png

The papers' figures (`mpdref figures`), sized for one column of a two-column paper
(COLUMN_WIDTH inches wide, 7-8 pt text, every text checked not to overlap by the tests):

    tradeoff_figure        1. test error against compression ratio, a curve per method, the papers' points
    storage_figure         2. stored bits per layer: weights, index or permutations, codebook, biases
    codebook_figure        3. a layer's weights with its k-means centroids and its fine-tuned centroids
    sensitivity_figure     4. validation error against the fraction kept, one layer pruned at a time
    mask_figure            5. MPD masks as trained and with rows and columns permuted
    huffman_figure         6. Huffman code length against symbol frequency, per layer
    kernel_speed_figure    7. kernel speed-up over the dense (BLAS) product, from a benchmark's JSON

Reading (files -> what the figures take; the only part that opens files): `read_run`,
`tradeoff_points`, `storage_parts`, `codebook_layers`, `read_sensitivity`, `mask_structures`,
`huffman_codes`, `read_benchmark`; `write_figures` draws every figure that the given run
directories hold the inputs of. Nothing here trains: a figure shows files already written.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np

from mpdref import huffman, models
from mpdref.compress import _read_checked, _unpack_lengths, size_table
from mpdref.io import FormatError
from mpdref.io.atomic import atomic_write
from mpdref.mpd import weight_structure
from mpdref.prune import weights_kept
from mpdref.quantize import codebook_of, quantize_weight
from mpdref.streams import random_stream
from mpdref.train import PAPER_DEEP_COMPRESSION, PAPER_DENSE_ERROR

#: inches: one column of a two-column paper (IEEE, ACM, NeurIPS's two-column venues)
COLUMN_WIDTH = 3.5
#: dots per inch of a PNG at column width: 700 pixels across, sharp in print
PAPER_DPI = 200
_TEXT_SIZE = 8
_SMALL_SIZE = 7
_COLUMN_STYLE = {"font.size": _TEXT_SIZE, "axes.titlesize": _TEXT_SIZE, "axes.labelsize": _TEXT_SIZE,
                 "xtick.labelsize": _SMALL_SIZE, "ytick.labelsize": _SMALL_SIZE, "legend.fontsize": _SMALL_SIZE,
                 "legend.frameon": False, "lines.linewidth": 1.2, "lines.markersize": 4, "axes.linewidth": 0.6,
                 "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.minor.width": 0.4,
                 "ytick.minor.width": 0.4, "grid.linewidth": 0.4, "grid.alpha": 0.4}

NETWORK_TITLES = {"lenet-300-100": "LeNet-300-100", "lenet-5": "LeNet-5", "deep-mnist": "Deep MNIST"}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, target, dpi: int = 90) -> Path:
    """Write `fig` at `target` (its folder made if missing, the file atomically), then close it: SVG
    when `target` ends in .svg, PNG (at `dpi`) otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as tmp:
        fig.savefig(tmp, format="svg" if target.suffix.lower() == ".svg" else "png", dpi=dpi)
    pyplot().close(fig)
    return target


def _column_figure(draw):
    """A figure function drawn in the column style. matplotlib makes tick labels when it first draws
    a figure, so the figure is drawn once inside the style (constrained layout settles then too)."""

    @functools.wraps(draw)
    def styled(*args, **kwargs):
        plt = pyplot()
        with plt.rc_context(_COLUMN_STYLE):
            fig = draw(*args, **kwargs)
            for ax in fig.axes:
                ax.tick_params(labelsize=_SMALL_SIZE)
            fig.canvas.draw()
        return fig

    return styled


def _times(x, _=None) -> str:
    """A ratio axis' tick label: 1×, 10×, 100×."""
    return f"{x:g}×"


def _log_ticks(axis, low: float, high: float, label=_times, room: float = 2.8) -> None:
    """Labelled ticks on a log axis spanning [low, high] that is `room` inches long: at 1-9, 1-2-3-5,
    1-2-5, 1-3 or 1 per decade, the most whose closest two labels are 0.3 in apart (for a y axis, whose
    labels are shorter than wide, give twice its length); minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    inches_per_decade = room / max(math.log10(high / low), 0.05)
    closest = {(1, 2, 3, 4, 5, 6, 7, 8, 9): math.log10(10 / 9), (1, 2, 3, 5): math.log10(3 / 2),
               (1, 2, 5): math.log10(2), (1, 3): math.log10(10 / 3)}
    subs = next((s for s, gap in closest.items() if gap * inches_per_decade >= 0.3), (1,))
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=max(3, int(room / 0.3))))
    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(NullFormatter())


def _figure_legend(fig, handles) -> None:
    """The figure's legend below its panels, in as many columns (up to 4) as fit the figure's width."""
    renderer = fig.canvas.get_renderer()
    for ncols in range(min(4, len(handles)), 0, -1):
        legend = fig.legend(handles=handles, loc="outside lower center", ncols=ncols, handlelength=1.5,
                            columnspacing=1.0)
        if ncols == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return
        legend.remove()


# ----------------------------------------------------------------------------- figures of a run


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
    """`sensitivity_figure` of a sensitivity stage (`mpdref.prune.sensitivity`), written to `target`."""
    save_figure(sensitivity_figure(table, keeps, baseline), target, PAPER_DPI)


def plot_codebooks(before: dict, after: dict, target) -> None:
    """`codebook_figure` of a quantize stage: before = {weight: (kept weights before quantization, k-means
    centroids)}, after = {weight: fine-tuned centroids}; written to `target`."""
    save_figure(codebook_figure({name: (values, initial, after[name]) for name, (values, initial) in before.items()}),
                target, PAPER_DPI)


def plot_masks(structures: dict, target) -> None:
    """`mask_figure` of an mpd stage's masks, written to `target`."""
    save_figure(mask_figure(structures), target, PAPER_DPI)


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


# ----------------------------------------------------------------------------- the papers' figures

#: What the papers report, marked beside our points. ratio: what the paper calls its compression
#: ("file": dense float32 bits / stored bits, as our .mpdz ratio; "weights": all weights / weights
#: kept, as our 1 / weights kept); error: the test error it states, None where it states no number.
PAPER_POINTS = (
    *({"network": network, "paper": "Han et al. 2016", "method": "Deep Compression", "ratio": float(p["ratio"]),
       "error": p["test_error"], "counts": "file"} for network, p in PAPER_DEEP_COMPRESSION.items()),
    # Zhang et al., ECCV 2018 (arXiv 1804.03294): 71.2x fewer weights, 99.2% accuracy, as dense
    {"network": "lenet-5", "paper": "Zhang et al. 2018", "method": "ADMM", "ratio": 71.2, "error": 0.008,
     "counts": "weights"},
    # Ye et al., arXiv 1903.09769: "246x ... with (almost) zero accuracy loss"; no error number
    {"network": "lenet-5", "paper": "Ye et al. 2019", "method": "ADMM", "ratio": 246.0, "error": None,
     "counts": "weights", "note": "“(almost) zero” loss"},
)

#: a method's colour in every figure (other series take the remaining colours of the cycle)
METHOD_COLORS = {"dense": "0.25", "Deep Compression": "C0", "MPD": "C1", "ADMM": "C2", "DARB": "C3",
                 "block-max (BMWM)": "C4", "block pruning": "C5", "quantized only": "C6"}


def _series_colors(series: list[str], methods: dict) -> dict:
    """A colour per series: its method's (METHOD_COLORS) for the first series of each method; the
    others take the cycle's colours that no method in the figure has, then grey."""
    taken = {METHOD_COLORS[m] for m in methods.values() if m in METHOD_COLORS}
    spare = iter([c for c in (f"C{i}" for i in range(10)) if c not in taken])
    colors = {}
    for s in series:
        color = METHOD_COLORS.get(methods[s])
        colors[s] = color if color is not None and color not in colors.values() else next(spare, "0.5")
    return colors


@_column_figure
def tradeoff_figure(points: list[dict], papers=PAPER_POINTS, dense_errors=PAPER_DENSE_ERROR):
    """Test error (%) against compression ratio (log axis), a panel per network, a marker per point and
    a curve per series through the means of its settings (mean ratio, mean error), sorted by ratio.

    points: {"network", "series" (the curve's label), "method" (its colour; default the series),
    "ratio", "error" (a fraction), "counts": "file" (filled marker: dense float32 bits / the .mpdz
    file's bits) or "weights" (open marker: 1 / the fraction of weights kept), optional "setting"
    (points of one series with the same setting, e.g. runs that differ only in seed, are one point
    of the curve, their mean; without it each point is its own)}. papers: PAPER_POINTS'
    entries of these networks, as stars (filled: a file ratio, open: a weight count); one without an
    error is a dotted vertical line at its ratio. dense_errors: {network: the papers' dense error},
    a dashed line.
    """
    from matplotlib.lines import Line2D

    plt = pyplot()
    networks = list(dict.fromkeys(p["network"] for p in points))
    series = list(dict.fromkeys(p["series"] for p in points))
    colors = _series_colors(series, {p["series"]: p.get("method", p["series"]) for p in points})
    fig, axes = plt.subplots(len(networks), 1, figsize=(COLUMN_WIDTH, 0.5 + 1.9 * len(networks)), squeeze=False,
                             layout="constrained")
    curves, legend = {}, {}  # the legend's entries: a curve per series, then what the markers and lines mean
    for ax, network in zip(axes[:, 0], networks):
        ours = [p for p in points if p["network"] == network]
        marked = [p for p in papers if p["network"] == network]
        for s in series:
            mine = sorted((p for p in ours if p["series"] == s), key=lambda p: p["ratio"])
            if not mine:
                continue
            ratios, errors = [p["ratio"] for p in mine], [100 * p["error"] for p in mine]
            settings = {}
            for i, p in enumerate(mine):
                settings.setdefault(p.get("setting", ("point", i)), []).append((p["ratio"], 100 * p["error"]))
            means = sorted((float(np.mean([x for x, _ in g])), float(np.mean([y for _, y in g])))
                           for g in settings.values())
            ax.plot([x for x, _ in means], [y for _, y in means], color=colors[s], zorder=2)
            for p, x, y in zip(mine, ratios, errors):
                ax.plot(x, y, "o", color=colors[s], mfc=colors[s] if p["counts"] == "file" else "white", zorder=3)
            curves[s] = Line2D([], [], color=colors[s], marker="o", label=s)
            if any(p["counts"] != "file" for p in mine):
                legend["ours: weights"] = Line2D([], [], ls="", marker="o", color="0.3", mfc="white",
                                                label="ours: 1 / weights kept (no .mpdz)")
        dense = dense_errors.get(network)
        if dense is not None:
            ax.axhline(100 * dense, color="0.5", ls="--", lw=0.8, zorder=1)
            legend["paper-dense"] = Line2D([], [], color="0.5", ls="--", lw=0.8, label="papers: dense error")
        xs = [p["ratio"] for p in ours] + [p["ratio"] for p in marked]
        low, high = min(xs) / 1.6, max(xs) * 1.6
        stars = sorted((p for p in marked if p["error"] is not None), key=lambda p: p["ratio"])
        for i, p in enumerate(stars):
            ax.plot(p["ratio"], 100 * p["error"], "*", ms=8, color="k", mfc="k" if p["counts"] == "file" else "white",
                    zorder=4)
            # a label left of a star near the right edge or whose right neighbour is near (log axis),
            # right of it otherwise
            crowded = (math.log(p["ratio"] / low) > 0.7 * math.log(high / low)
                       or i + 1 < len(stars) and math.log10(stars[i + 1]["ratio"] / p["ratio"]) < 0.6)
            ax.annotate(f"{p['paper'].split()[0]} {p['ratio']:g}×", (p["ratio"], 100 * p["error"]),
                        xytext=(-5 if crowded else 5, -2), textcoords="offset points", fontsize=6.5,
                        ha="right" if crowded else "left", va="top", zorder=2.5)  # under our markers
            legend["paper-" + p["counts"]] = Line2D(
                [], [], ls="", marker="*", ms=8, color="k", mfc="k" if p["counts"] == "file" else "white",
                label="papers: file ratio" if p["counts"] == "file" else "papers: 1 / weights kept")
        for p in (p for p in marked if p["error"] is None):
            ax.axvline(p["ratio"], color="k", ls=":", lw=0.8, zorder=1)
            ax.text(p["ratio"], 0.04, f"{p['paper'].split()[0]} {p['ratio']:g}× ", transform=ax.get_xaxis_transform(),
                    rotation=90, fontsize=6.5, ha="right", va="bottom")
            legend["paper-" + p["paper"]] = Line2D(
                [], [], color="k", ls=":", lw=0.8,
                label=f"{p['paper'].split()[0]}: {p.get('note', 'no error stated')}")
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        _log_ticks(ax.xaxis, low, high)
        ys = [100 * p["error"] for p in ours] + [100 * p["error"] for p in marked if p["error"] is not None]
        ys += [100 * dense] if dense is not None else []
        if max(ys) / max(min(ys), 1e-9) > 8:  # errors an order of magnitude apart: a log axis keeps both readable
            ax.set_yscale("log")
            ax.set_ylim(min(ys) / 1.3, max(ys) * 1.3)
        else:  # room for the papers' labels under their stars
            pad = 0.14 * (max(ys) - min(ys) or max(ys))
            ax.set_ylim(min(ys) - pad, max(ys) + pad)
        ax.set_ylabel("test error (%)")
        ax.set_title(NETWORK_TITLES.get(network, network))
        ax.grid(True, which="major")
    axes[-1, 0].set_xlabel("compression ratio (dense float32 / compressed)")
    _figure_legend(fig, [curves[s] for s in series] + list(legend.values()))
    # the panels keep their height however many entries the legend has: the figure grows by the legend's
    legend_height = fig.legends[-1].get_window_extent(fig.canvas.get_renderer()).height / fig.dpi
    fig.set_figheight(fig.get_figheight() + legend_height)
    return fig


#: the parts of a layer's stored bits, in the size table's terms (mpdref.compress.size_table)
STORAGE_PARTS = {"weights": "weights", "index": "index / permutations", "codebook": "codebook", "bias": "biases",
                 "container": "container"}
_STORAGE_COLORS = {"weights": "C0", "index": "C1", "codebook": "C2", "bias": "C3", "container": "0.6"}


@_column_figure
def storage_figure(runs: dict):
    """Stored kilobytes (of 1000 bytes) as stacked horizontal bars, one bar per run: a panel for the
    whole file, then one per layer; each bar ends in its ratio to dense float32. The parts
    (`storage_parts`): weights (the Huffman-coded codebook indices, or raw float32 values), index /
    permutations (what says where the kept weights are), codebook (its float32 values and their code
    lengths), biases, and, in the whole file, the container's header and checksum.

    runs: {label: `storage_parts` of its .mpdz}, all of one network.
    """
    from matplotlib.patches import Patch

    plt = pyplot()
    labels = list(runs)
    layers = list(dict.fromkeys(layer for parts in runs.values() for layer in parts["layers"]))
    panels = ["whole file", *layers]
    height = 0.42 + 0.17 * len(labels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(COLUMN_WIDTH, 0.55 + height * len(panels)), squeeze=False,
                             layout="constrained")
    shown = set()
    for ax, panel in zip(axes[:, 0], panels):
        widest = 0.0
        for y, label in enumerate(labels):
            parts = runs[label]
            if panel == "whole file":
                bits = {k: sum(layer[k] for layer in parts["layers"].values()) for k in ("weights", "index", "codebook",
                                                                                       "bias", "dense")}
                bits["container"] = parts["container"]
            elif panel in parts["layers"]:
                bits = dict(parts["layers"][panel], container=0)
            else:
                continue
            left = 0.0
            for part in STORAGE_PARTS:
                kb = bits[part] / 8000
                if kb > 0:
                    ax.barh(y, kb, left=left, height=0.7, color=_STORAGE_COLORS[part], lw=0)
                    shown.add(part)
                left += kb
            stored = sum(bits[part] for part in STORAGE_PARTS)
            ratio = bits["dense"] / stored if stored else float("inf")
            ax.text(left, y, f" {ratio:.0f}×" if ratio >= 10 else f" {ratio:.1f}×", va="center", ha="left",
                    fontsize=6.5)
            widest = max(widest, left)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)  # the first run on top
        ax.set_xlim(0, widest * 1.3 if widest else 1)  # room for the ratio after the longest bar
        ax.set_title(panel, loc="left")
        ax.grid(True, axis="x")
        ax.set_axisbelow(True)
    axes[0, 0].set_ylabel("run")
    axes[-1, 0].set_xlabel("stored size (kB)")
    _figure_legend(fig, [Patch(color=_STORAGE_COLORS[p], label=STORAGE_PARTS[p]) for p in STORAGE_PARTS if p in shown])
    return fig


@_column_figure
def codebook_figure(layers: dict):
    """Per layer, the histogram of the weights that quantization replaced (the kept weights, before
    quantization), the k-means centroids it started fine-tuning from (solid) and the centroids after
    fine-tuning (dashed).

    layers: {weight name: (weights before quantization (n,), k-means centroids (k,), fine-tuned centroids (k,))}.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, axes = plt.subplots(len(layers), 1, figsize=(COLUMN_WIDTH, 0.6 + 1.25 * len(layers)), squeeze=False,
                             layout="constrained")
    for ax, (name, (values, initial, tuned)) in zip(axes[:, 0], layers.items()):
        values = np.asarray(values, np.float64).ravel()
        ax.hist(values, bins=120, color="0.72", lw=0)
        for c in initial:
            ax.axvline(c, color="C0", lw=0.6)
        for c in tuned:
            ax.axvline(c, color="C3", lw=0.6, ls=(0, (2, 1.5)))
        ax.set_title(f"{name}: {values.size:,} weights, {len(initial)} → {len(tuned)} centroids", loc="left")
        ax.set_ylabel("weights")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.xaxis.set_major_locator(MaxNLocator(6))
    axes[-1, 0].set_xlabel("weight value")
    _figure_legend(fig, [Patch(color="0.72", label="weights before quantization"),
                         Line2D([], [], color="C0", lw=0.8, label="k-means centroids"),
                         Line2D([], [], color="C3", lw=0.8, ls=(0, (2, 1.5)), label="centroids after fine-tuning")])
    return fig


@_column_figure
def sensitivity_figure(table: dict, keeps: list[float], baseline: float, split: str = "val"):
    """Error against the fraction of a layer's weights kept, one curve per layer pruned alone (no
    retraining; `mpdref.prune.sensitivity`); the unpruned network's error dashed.

    table: {weight name: [error at each keep]}; keeps: fractions in (0, 1]; baseline: the unpruned
    error; split: "val" or "test", the set the errors are measured on.
    """
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.7), layout="constrained")
    for name, errors in table.items():
        ax.plot([100 * k for k in keeps], [100 * e for e in errors], marker="o", label=name)
    ax.axhline(100 * baseline, color="0.4", ls="--", lw=0.8)
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, 100 * min(keeps), 100 * max(keeps), lambda x, _: f"{x:g}")
    ax.set_xlabel("weights kept in the layer (%)")
    ax.set_ylabel(f"{'validation' if split == 'val' else split} error (%)")
    ax.grid(True, which="major")
    handles = ax.get_legend_handles_labels()[0] + [Line2D([], [], color="0.4", ls="--", lw=0.8, label="unpruned")]
    _figure_legend(fig, handles)
    return fig


@_column_figure
def mask_figure(structures: dict):
    """Each MPD mask (kept entries black) as it is trained, rows and columns in the network's order,
    and with its rows and columns permuted (row_perm, col_perm), where it is block diagonal.

    structures: {weight name: `mpdref.mpd.MPDMask`} (a conv weight's over its channel pairs).
    """
    plt = pyplot()
    n = len(structures)
    width = COLUMN_WIDTH if n <= 3 else 2 * COLUMN_WIDTH  # more than three layers: the page's width
    fig, axes = plt.subplots(2, n, figsize=(width, 3.1), squeeze=False, layout="constrained")
    for col, (name, m) in enumerate(structures.items()):
        mask = np.asarray(m.mask, bool)
        for row, image in enumerate((mask, mask[np.ix_(m.row_perm, m.col_perm)])):
            ax = axes[row, col]
            ax.imshow(image, cmap="Greys", vmin=0, vmax=1, interpolation="antialiased", aspect="auto")
            ax.set_xticks([0, mask.shape[1] - 1], [1, mask.shape[1]])
            ax.set_yticks([0, mask.shape[0] - 1], [1, mask.shape[0]])
            if row == 0:
                ax.set_title(f"{name.removesuffix('.weight')}: k = {m.k}\n{mask.mean():.1%} kept")
            else:
                ax.set_xlabel("input")
        axes[0, col].tick_params(labelbottom=False)
    axes[0, 0].set_ylabel("as trained\noutput")
    axes[1, 0].set_ylabel("permuted\noutput")
    return fig


@_column_figure
def huffman_figure(layers: dict):
    """Per layer, each symbol's Huffman code length against its frequency in the stream (log axis),
    beside −log₂ p, the length an ideal code would give it.

    layers: {weight name: {symbol kind (e.g. "codebook indices"): (counts (n,), code lengths (n,))}};
    symbols with count 0 are left out.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    ncols = 2 if len(layers) > 1 else 1
    nrows = math.ceil(len(layers) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(COLUMN_WIDTH, 0.75 + 1.45 * nrows), squeeze=False,
                             layout="constrained", sharey=True)
    markers = {}
    for ax, (name, kinds) in zip(axes.ravel(), layers.items()):
        lowest = 1.0
        for kind, (counts, lengths) in kinds.items():
            counts, lengths = np.asarray(counts, np.float64), np.asarray(lengths)
            used = counts > 0
            p = counts[used] / counts[used].sum()
            lowest = min(lowest, p.min())
            markers.setdefault(kind, ("o", "s", "^", "D")[len(markers) % 4])
            ax.plot(p, lengths[used], ls="", marker=markers[kind], ms=3, alpha=0.7, mfc="none",
                    color=f"C{list(markers).index(kind)}")
        grid = np.geomspace(lowest, 1.0, 50)
        ax.plot(grid, -np.log2(grid), color="0.4", ls="--", lw=0.8)
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, lowest, 1.0, lambda x, _: f"{x:g}", room=1.3)
        ax.set_title(name, loc="left")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major")
    for ax in axes.ravel()[len(layers):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("code length (bits)")
    for col in range(ncols):
        bottom = [ax for ax in axes[:, col] if ax.get_visible()][-1]
        bottom.set_xlabel("symbol frequency p")
    handles = [Line2D([], [], ls="", marker=m, mfc="none", color=f"C{i}", label=kind)
               for i, (kind, m) in enumerate(markers.items())]
    handles.append(Line2D([], [], color="0.4", ls="--", lw=0.8, label="−log₂ p (ideal)"))
    _figure_legend(fig, handles)
    return fig


@_column_figure
def kernel_speed_figure(panels: dict, baseline: str, title: str = ""):
    """Speed-up over a baseline (the dense product on BLAS) against batch size, a panel per case, a line
    per contender; the baseline is the dashed line at 1×.

    panels: {panel title: {contender: [(batch, baseline time / contender time)]}}; baseline: its label.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(COLUMN_WIDTH, 0.8 + 1.5 * len(panels)), squeeze=False,
                             layout="constrained", sharex=True)
    contenders = list(dict.fromkeys(c for lines in panels.values() for c in lines))
    for ax, (panel, lines) in zip(axes[:, 0], panels.items()):
        values = [1.0]
        for contender, pairs in lines.items():
            pairs = sorted(pairs)
            ax.plot([b for b, _ in pairs], [s for _, s in pairs], marker="o",
                    color=f"C{contenders.index(contender)}")
            values += [s for _, s in pairs]
        ax.axhline(1.0, color="k", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        if max(values) / min(values) > 10:
            ax.set_yscale("log")
            _log_ticks(ax.yaxis, min(values), max(values), room=2.0)
        else:
            ax.yaxis.set_major_formatter(FuncFormatter(_times))
        ax.set_title(panel, loc="left")
        ax.set_ylabel("speed-up")
        ax.grid(True, which="major")
    batches = sorted({b for lines in panels.values() for pairs in lines.values() for b, _ in pairs})
    axes[-1, 0].set_xticks(batches, [str(b) for b in batches])
    axes[-1, 0].set_xlabel("batch size (images)")
    if title:
        fig.suptitle(title)
    handles = [Line2D([], [], color=f"C{i}", marker="o", label=c) for i, c in enumerate(contenders)]
    handles.append(Line2D([], [], color="k", ls="--", lw=0.8, label=f"{baseline} (1×)"))
    _figure_legend(fig, handles)
    return fig


# ----------------------------------------------------------------------------- reading run directories


class MissingInputs(ValueError):
    """A figure's input files are not in a directory: `where` (a run directory or file) and `reason`
    (what is missing there, the same words for every run that lacks it)."""

    def __init__(self, where, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


def _read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MissingInputs(Path(path).parent, f"{Path(path).name}: missing; {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: unreadable ({e})") from None


_STAGE_METHODS = {"prune": "Deep Compression", "mpd": "MPD", "admm_prune": "ADMM", "admm_quantize": "ADMM"}
_DARB_METHODS = {"darb": "DARB", "bmwm": "block-max (BMWM)", "block": "block pruning"}


def method_of(config: dict) -> str:
    """The compression method of a run, from its config's stage types: prune -> Deep Compression,
    mpd -> MPD, admm_prune / admm_quantize -> ADMM, darb -> DARB, block-max (BMWM) or block pruning
    (its `method`); several joined by " + "; a quantize stage alone -> quantized only; none -> dense."""
    stages = config["stages"]
    found = [(_DARB_METHODS.get(s.get("method"), "DARB") if s["type"] == "darb" else _STAGE_METHODS.get(s["type"]))
             for s in stages]
    found = list(dict.fromkeys(m for m in found if m))
    if found:
        return " + ".join(found)
    return "quantized only" if any(s["type"] == "quantize" for s in stages) else "dense"


def run_setting(config: dict) -> str:
    """The run's settings but its name, seed and mpdref version, as text: runs that differ only in seed
    share it, and `tradeoff_figure` draws their mean as one point of a curve."""
    experiment = {k: v for k, v in config["experiment"].items() if k not in ("name", "seed")}
    rest = {k: v for k, v in config.items() if k not in ("experiment", "mpdref_version")}
    return json.dumps({**rest, "experiment": experiment}, sort_keys=True, default=str)


def read_run(run_dir) -> dict:
    """What the cross-run figures need of a run directory: {"dir", "name", "network", "method",
    "finished", "test_error", "ratio", "counts", "setting" (`run_setting`)}. ratio: the encode
    stage's file ratio (counts "file") where the run has one, else 1 / the fraction of weights
    that model.h5's masks keep (counts "weights"); None (and test_error None) for an unfinished
    run (no metrics.json)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise MissingInputs(run_dir, "not a run directory (no config.json) nor a sweep directory (no sweep.json)")
    config = _read_json(run_dir / "config.json", "not a run directory")
    record = {"dir": run_dir, "name": run_dir.resolve().name, "network": config["experiment"]["model"],
              "method": method_of(config), "finished": False, "test_error": None, "ratio": None, "counts": None,
              "setting": run_setting(config)}
    if not (run_dir / "metrics.json").exists():
        return record
    metrics = _read_json(run_dir / "metrics.json", "a finished run has metrics.json")
    encoded = next((s for s in reversed(metrics["stages"]) if s.get("type") == "encode"), None)
    if encoded is not None:
        ratio, counts = encoded["ratio"], "file"
    else:
        ratio, counts = 1 / weights_kept(models.load(run_dir / "model.h5")), "weights"
    record.update(finished=True, test_error=metrics["test_error"], ratio=ratio, counts=counts)
    return record


def tradeoff_points(records: list[tuple[dict, str | None]]) -> list[dict]:
    """`tradeoff_figure`'s points from finished runs' records: (`read_run` record, the sweep it is from or
    None). A series per method and source: a method found in one source is labelled by the method
    alone, otherwise also by its sweep's name ("runs": the run directories given alone)."""
    usable = [(r, source) for r, source in records if r["finished"] and r["test_error"] is not None]
    sources = {}
    for r, source in usable:
        sources.setdefault(r["method"], []).append(source or "runs")
    points = []
    for r, source in usable:
        alone = len(set(sources[r["method"]])) == 1
        series = r["method"] if alone else f"{r['method']} ({source or 'runs'})"
        points.append({"network": r["network"], "series": series, "method": r["method"], "ratio": r["ratio"],
                       "error": r["test_error"], "counts": r["counts"], "name": r["name"], "setting": r["setting"]})
    return points


def storage_parts(mpdz) -> dict:
    """`storage_figure`'s input for one .mpdz file, in bits, from its size table (`mpdref.compress.size_table`):
    {"layers": {weight: {"weights", "index", "codebook", "bias", "dense"}}, "container": bits}. weights:
    the coded codebook indices or raw float32 values; index: relative indices, fillers, permutations and
    block boundaries, or DARB block sizes and offsets; codebook: the values and their code lengths."""
    table = size_table(mpdz)
    layers = {}
    for row in table["layers"]:
        parts = {"index": row["structure_bits"], "codebook": row["codebook_bits"], "bias": row["bias_bits"]}
        layers[row["layer"]] = {"weights": row["total_bits"] - sum(parts.values()), **parts, "dense": row["dense_bits"]}
    return {"layers": layers, "container": table["container_bits"]}


def _stage_file(run_dir: Path, stages: list, index: int) -> Path:
    """RUN_DIR/stages/NN-NAME.h5: the model after stage `index` (0-based), as the runner names it."""
    return run_dir / "stages" / f"{index + 1:02d}-{stages[index]['name']}.h5"


def codebook_layers(run_dir) -> dict:
    """`codebook_figure`'s input for the last quantize stage of a run: per quantized weight, its kept
    weights before quantization and its centroids before and after fine-tuning.

    The run directory does not store the k-means centroids (the stage keeps them in memory for its
    own figure), so they are recomputed exactly as the stage computed them: `quantize_weight` with the
    stage's bits, init and method, on the model the stage before it left (stages/NN-NAME.h5; the
    network's initialisation when it is the first stage), drawing from the stage's "quantize" random
    stream in the order of config.json's `bits` (network order for `bits_all`; only init = "random"
    draws). The fine-tuned centroids are the distinct kept values of the quantize stage's own model file.
    """
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json", "not a run directory")
    stages = config["stages"]
    index = next((i for i in reversed(range(len(stages))) if stages[i]["type"] == "quantize"), None)
    if index is None:
        raise MissingInputs(run_dir, "no quantize stage")
    after_file = _stage_file(run_dir, stages, index)
    if not after_file.exists():
        raise MissingInputs(run_dir, f"stages/{after_file.name}: missing (the quantize stage has not finished)")
    e = config["experiment"]
    if index == 0:
        before = models.build(e["model"], dtype=np.dtype(e["dtype"]), seed=e["seed"])
    else:
        before = models.load(_stage_file(run_dir, stages, index - 1))
    after = models.load(after_file)
    settings = stages[index]
    bits = settings["bits"] or {name: settings["bits_all"] for name in before.weight_names()}
    rng = random_stream(e["seed"], "quantize", index)
    layers = {}
    for name, b in bits.items():
        w, mask = before.params[name], before.masks.get(name)
        values = w[mask] if mask is not None else w.ravel()
        initial = codebook_of(quantize_weight(w, mask, b, settings["init"], settings["method"], rng), mask)[1]
        layers[name] = (values, initial, codebook_of(after.params[name], after.masks.get(name))[1])
    return layers


def read_sensitivity(run_dir) -> dict:
    """RUN_DIR/sensitivity.json (the sensitivity stage's table) as `sensitivity_figure`'s arguments:
    {"table", "keeps", "baseline", "split"}."""
    path = Path(run_dir) / "sensitivity.json"
    report = _read_json(path, "written by a sensitivity stage")
    try:
        keeps = [float(k) for k in report["keep"]]
        table = {name: [float(e) for e in errors] for name, errors in report["error"].items()}
        if any(len(errors) != len(keeps) for errors in table.values()) or not table:
            raise ValueError("an error per fraction kept, per layer, expected")
        return {"table": table, "keeps": keeps, "baseline": float(report["baseline_error"]),
                "split": report.get("split", "val")}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(f"{path}: not a sensitivity table ({e})") from None


def mask_structures(run_dir) -> dict:
    """`mask_figure`'s input: the structure (`mpdref.mpd.weight_structure`) of every mask in
    RUN_DIR/model.h5 that is a permuted block-diagonal mask of more than one block."""
    path = Path(run_dir) / "model.h5"
    if not path.exists():
        raise MissingInputs(run_dir, "model.h5: missing (the run has not finished)")
    net = models.load(path)
    structures = {}
    for name in net.weight_names():
        if name not in net.masks:
            continue
        try:
            s = weight_structure(net.masks[name])
        except ValueError:  # a mask of another method: not a permuted block-diagonal one
            continue
        if s.k > 1:
            structures[name] = s
    if not structures:
        raise MissingInputs(run_dir, "model.h5: no MPD mask (permuted block-diagonal, k > 1)")
    return structures


def huffman_codes(mpdz) -> dict:
    """`huffman_figure`'s input from an .mpdz file (validated first): per weight, for each of its
    Huffman-coded streams (codebook indices, relative indices, DARB block offsets), each symbol's count
    in the decoded stream and its code length as the file stores it."""
    header, sections, _, _ = _read_checked(mpdz)
    streams = (("codebook indices", "weight_lengths", "weights"), ("relative indices", "index_lengths", "indices"),
               ("block offsets", "offset_lengths", "offsets"))
    out = {}
    for layer in header["layers"]:
        name, stored = layer["name"], int(layer["stored"])
        codes = {}
        for kind, lengths_section, stream in streams:
            if f"{name}/{lengths_section}" not in sections:
                continue
            data = sections[f"{name}/{lengths_section}"]
            try:
                # 4 bits per length; an odd count leaves a 0 (unused symbol) in the padding
                lengths = _unpack_lengths(data, 2 * len(data), kind)
                symbols = huffman.decode(sections[f"{name}/{stream}"], lengths, stored)
            except (KeyError, ValueError) as e:
                raise FormatError(f"{mpdz}: layer {name}: {kind}: {e}") from None
            codes[kind] = (np.bincount(symbols, minlength=len(lengths)), lengths)
        if codes:
            out[name] = codes
    if not out:
        raise MissingInputs(mpdz, "no Huffman-coded stream (every layer raw float32)")
    return out


def read_benchmark(path) -> dict:
    """`kernel_speed_figure`'s arguments from a benchmark's JSON: {"panels", "baseline", "title"}.

    benchmarks/mpd_inference.py --json: a panel per network; mpdref's block form and PyTorch's block
    form against PyTorch's dense product of the masked weights. benchmarks/block_diagonal_cuda.py
    --out: a panel per k; the kernel and torch.bmm on the blocks against cuBLAS's dense product."""
    data = _read_json(Path(path), "a benchmark's JSON output")
    try:
        if isinstance(data, dict) and data.get("benchmark") == "mpd_inference":
            panels = {}
            for r in data["results"]:
                t = r["seconds_per_call"]
                lines = panels.setdefault(NETWORK_TITLES.get(r["network"], r["network"]), {})
                for name, label in (("mpdref", "mpdref block form"), ("torch block", "PyTorch block form")):
                    lines.setdefault(label, []).append((int(r["batch"]), t["torch dense"] / t[name]))
            return {"panels": panels, "baseline": "PyTorch dense, masked (BLAS)",
                    "title": "MPD inference on the CPU, float32"}
        if isinstance(data, list) and data and all(isinstance(r, dict) and {"k", "batch", "us"} <= set(r)
                                                   for r in data):
            panels = {}
            for r in data:
                lines = panels.setdefault(f"k = {r['k']} blocks", {})
                for name, label in (("kernel", "mpdref kernel"), ("bmm", "torch.bmm, blocks")):
                    lines.setdefault(label, []).append((int(r["batch"]), r["us"]["dense"] / r["us"][name]))
            return {"panels": panels, "baseline": "cuBLAS dense, masked",
                    "title": "block-diagonal product on the GPU, float32"}
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise FormatError(f"{path}: a benchmark's output with missing or bad values ({e})") from None
    raise FormatError(f"{path}: not a benchmark output that mpdref draws (those of benchmarks/mpd_inference.py "
                      "--json and benchmarks/block_diagonal_cuda.py --out)")


# ----------------------------------------------------------------------------- all figures of some runs


def _labels(dirs: list[Path]) -> list[str]:
    """A short unique label per run directory: its name, with its parent's where names repeat."""
    names = [d.resolve().name for d in dirs]
    return [f"{d.resolve().parent.name}/{n}" if names.count(n) > 1 else n for d, n in zip(dirs, names)]


def write_figures(runs: list[tuple[Path, str | None]], out, svg: bool = False, bench=None):
    """Draw every figure that the runs' files give into `out`; yield (path written, None) per figure and
    (None, why not) per figure that is not drawn, as they come.

    runs: (run directory, the name of the sweep it belongs to, or None for a run given alone). From all
    runs: tradeoff (finished runs) and storage (runs with a model.mpdz; one figure per network when
    they differ). From each run given alone: codebooks, pruning-sensitivity, masks and huffman (named
    LABEL-FIGURE when several are given). bench: a benchmark's JSON file, drawn as kernel-speed.
    """
    out = Path(out)
    ext = ".svg" if svg else ".png"
    records = [(read_run(run_dir), source) for run_dir, source in runs]

    points = tradeoff_points(records)
    if points:
        yield save_figure(tradeoff_figure(points), out / f"tradeoff{ext}", PAPER_DPI), None
    else:
        yield None, "tradeoff: not drawn: no finished run (metrics.json with a test error)"

    encoded = [(r, label) for (r, _), label in zip(records, _labels([r["dir"] for r, _ in records]))
               if r["finished"] and (r["dir"] / "model.mpdz").exists()]
    networks = list(dict.fromkeys(r["network"] for r, _ in encoded))
    for network in networks:
        parts = {label: storage_parts(r["dir"] / "model.mpdz") for r, label in encoded if r["network"] == network}
        name = "storage" if len(networks) == 1 else f"storage-{network}"
        yield save_figure(storage_figure(parts), out / f"{name}{ext}", PAPER_DPI), None
    if not networks:
        yield None, "storage: not drawn: no finished run with a model.mpdz (an encode stage)"

    alone = [r for r, source in records if source is None]
    labels = _labels([r["dir"] for r in alone])
    per_run = (("codebooks", lambda d: codebook_figure(codebook_layers(d))),
               ("pruning-sensitivity", lambda d: sensitivity_figure(**read_sensitivity(d))),
               ("masks", lambda d: mask_figure(mask_structures(d))),
               ("huffman", lambda d: huffman_figure(huffman_codes(_mpdz_of(d)))))
    for figure, draw in per_run:
        missing = {}  # what is missing -> the runs that lack it: one line for all of them
        for r, label in zip(alone, labels):
            name = f"{label}-{figure}" if len(alone) > 1 else figure
            try:
                fig = draw(r["dir"])
            except MissingInputs as e:
                missing.setdefault(e.reason, []).append(str(r["dir"]))
                continue
            yield save_figure(fig, out / f"{name}{ext}", PAPER_DPI), None
        for reason, where in missing.items():
            listed = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
            yield None, f"{figure}: not drawn for {listed}: {reason}"
    if len(alone) < len(records):
        yield None, ("codebooks, pruning-sensitivity, masks, huffman: drawn for run directories given alone, "
                     "not for a sweep's runs (give DIR/runs/NAME for those)")

    if bench is not None:
        speed = read_benchmark(bench)
        yield save_figure(kernel_speed_figure(**speed), out / f"kernel-speed{ext}", PAPER_DPI), None


def _mpdz_of(run_dir: Path) -> Path:
    path = Path(run_dir) / "model.mpdz"
    if not path.exists():
        raise MissingInputs(run_dir, "model.mpdz: missing (the run has no encode stage, or has not reached it)")
    return path
