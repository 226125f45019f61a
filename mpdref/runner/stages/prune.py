"""The prune and sensitivity stages: settings to `mpdref.prune`'s calls."""
from __future__ import annotations

import json
import sys

from mpdref.figures import plot_sensitivity
from mpdref.io.atomic import write_bytes_atomic
from mpdref.prune import prune, sensitivity, weights_kept
from mpdref.runner.options import Option
from mpdref.runner.registry import Stage, register, weight_setting_problems


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
        fraction = weights_kept(ctx.net)
        print("prune: " + ", ".join(f"{n} {f:.1%}" for n, f in kept.items())
              + f"; all weights {fraction:.2%} kept ({1 / fraction:.1f}x fewer)", file=sys.stderr)
        return {"kept": kept, "weights_kept": fraction, **ctx.errors()}


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
