"""Magnitude pruning (Han, Pool, Tran and Dally 2015; Deep Compression, stage 1).

A weight survives when its magnitude reaches the layer's threshold,

    m_ij = 1  if |w_ij| >= t   and it survived so far,        t = q · std(W)   (quality q)

or, for a target fraction kept f, t is the magnitude of the ⌈f · size⌉-th largest weight,
so that exactly that many survive (ties broken by position). std(W) is taken over the
weights still kept. The mask joins the network's masks: masked SGD keeps pruned weights
and their momentum exactly 0 from then on. Iterative pruning is a sequence of
prune and train stages in an experiment (configs/deep-compression-*.toml), each prune
stage keeping a smaller fraction and each train stage retraining under the mask at a
lower learning rate.

Sensitivity analysis prunes one layer at a time, without retraining, over a range of
fractions kept, and measures the validation error: the table and figure from which a
per-layer plan is chosen.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from mpdref.runner.config import Option
from mpdref.runner.registry import Stage, register, weight_setting_problems


def magnitude_mask(w: np.ndarray, mask: np.ndarray | None = None, keep: float | None = None,
                   quality: float | None = None) -> np.ndarray:
    """The new bool mask of weight `w` (its current mask `mask`, or all kept): by fraction or by quality.

    keep: the fraction of all of w's entries to keep, in (0, 1]; quality: t = quality · std(kept w).
    Exactly one of the two. The result is never larger than `mask`.
    """
    if (keep is None) == (quality is None):
        raise ValueError("give exactly one of keep and quality")
    current = np.ones(w.shape, bool) if mask is None else np.asarray(mask, bool)
    kept_values = np.abs(w[current])
    if keep is not None:
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], not {keep}")
        count = min(math.ceil(keep * w.size), kept_values.size)
        order = np.argsort(-np.abs(w).ravel() * current.ravel(), kind="stable")  # largest first, by position on ties
        new = np.zeros(w.size, bool)
        new[order[:count]] = True
        return new.reshape(w.shape) & current
    if quality < 0:
        raise ValueError(f"quality must be >= 0, not {quality}")
    threshold = quality * float(np.std(w[current])) if kept_values.size else 0.0
    return current & (np.abs(w) >= threshold)


def prune(net, keep: dict | None = None, quality: dict | None = None) -> dict:
    """Prune the named weights of `net` in place; returns {name: fraction kept}."""
    out = {}
    for name, value in list((keep or {}).items()) + list((quality or {}).items()):
        by_keep = name in (keep or {})
        new = magnitude_mask(net.params[name], net.masks.get(name),
                             keep=value if by_keep else None, quality=None if by_keep else value)
        net.set_mask(name, new)
        out[name] = float(new.mean())
    return out


def sensitivity(net, layers: list[str], keeps: list[float], x: np.ndarray, y: np.ndarray) -> dict:
    """{layer: [error after pruning only that layer to each fraction in keeps]}; `net` is left unchanged."""
    table = {}
    for name in layers:
        saved_w, saved_mask = net.params[name], net.masks.get(name)
        try:
            errors = []
            for keep in keeps:  # each prunes the saved weights afresh (set_mask zeroes a copy)
                net.params[name] = saved_w.copy()
                net.set_mask(name, magnitude_mask(saved_w, saved_mask, keep=keep))
                errors.append(net.error_rate(x, y))
            table[name] = errors
        finally:
            net.params[name] = saved_w
            if saved_mask is None:
                net.masks.pop(name, None)
            else:
                net.masks[name] = saved_mask
    return table


def plot_sensitivity(table: dict, keeps: list[float], baseline: float, target) -> None:
    from mpdref.io.figure import pyplot, save_figure

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


def _number(check):
    return lambda name, v: isinstance(v, (int, float)) and not isinstance(v, bool) and check(v)


@register
class PruneStage(Stage):
    """Magnitude-prune weights (by fraction kept or by quality × std); the next train stage retrains."""

    type = "prune"
    description = "magnitude pruning: keep a fraction of each listed weight, or those above quality x std"
    options = {
        "keep": Option(dict, None, accepted="a table of weight name = fraction kept, in (0, 1]"),
        "quality": Option(dict, None, accepted="a table of weight name = quality parameter q >= 0 "
                                               "(threshold q x std of the layer's kept weights)"),
    }

    @classmethod
    def check(cls, settings, model):
        problems = weight_setting_problems(model, "keep", settings["keep"], _number(lambda v: 0 < v <= 1),
                                           "a number in (0, 1]")
        problems += weight_setting_problems(model, "quality", settings["quality"], _number(lambda v: v >= 0),
                                            "a number >= 0")
        if not settings["keep"] and not settings["quality"]:
            problems.append("give keep or quality (or both, for different weights)")
        both = set(settings["keep"] or {}) & set(settings["quality"] or {})
        problems += [f"{name}: given in both keep and quality" for name in sorted(both)]
        return problems

    def run(self, ctx, settings, resume):
        kept = prune(ctx.net, settings["keep"], settings["quality"])
        net = ctx.net
        total = sum(net.params[n].size for n in net.weight_names())
        nonzero = sum(int(net.masks[n].sum()) if n in net.masks else net.params[n].size for n in net.weight_names())
        print("prune: " + ", ".join(f"{n} {f:.1%}" for n, f in kept.items())
              + f"; all weights {nonzero / total:.2%} kept ({total / nonzero:.1f}x fewer)", file=sys.stderr)
        return {"kept": kept, "weights_kept": nonzero / total, **ctx.errors()}


@register
class SensitivityStage(Stage):
    """Prune each listed layer alone over a range of fractions; write the table and figure (the network is unchanged)."""

    type = "sensitivity"
    description = "pruning sensitivity per layer (validation error against fraction kept, no retraining)"
    options = {
        "layers": Option(list, [], accepted="a list of weight names (empty: all weights)"),
        "keep": Option(list, [1.0, 0.5, 0.3, 0.2, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01],
                       check=lambda v: len(v) > 0 and all(isinstance(k, (int, float)) and not isinstance(k, bool)
                                                           and 0 < k <= 1 for k in v),
                       accepted="a non-empty list of fractions in (0, 1]"),
    }

    @classmethod
    def check(cls, settings, model):
        return weight_setting_problems(model, "layers", settings["layers"])

    def run(self, ctx, settings, resume):
        import json

        from mpdref.io.atomic import write_bytes_atomic

        _, val, test = ctx.datasets()
        x, y = val if len(val[0]) else test  # validation error; the test set only when no validation set is held out
        layers = settings["layers"] or ctx.net.weight_names()
        keeps = [float(k) for k in settings["keep"]]
        baseline = ctx.net.error_rate(x, y)
        table = sensitivity(ctx.net, layers, keeps, x, y)
        report = {"keep": keeps, "baseline_error": baseline, "error": table, "split": "val" if len(val[0]) else "test"}
        write_bytes_atomic(ctx.out / "sensitivity.json", (json.dumps(report, indent=2) + "\n").encode())
        plot_sensitivity(table, keeps, baseline, ctx.out / "figures" / "sensitivity.png")
        for name, errors in table.items():
            print(f"sensitivity {name}: " + ", ".join(f"{k:.0%} {e:.2%}" for k, e in zip(keeps, errors)),
                  file=sys.stderr)
        return {"baseline_error": baseline, "sensitivity": table, "keep": keeps}
