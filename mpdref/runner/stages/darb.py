"""The darb stage: settings to `mpdref.darb`'s regular masks (DARB, block-max, block pruning)."""
from __future__ import annotations

import sys

from mpdref.darb import METHODS, SIZES, mean_offset_bits, regular_prune
from mpdref.prune import weights_kept
from mpdref.runner.options import Option
from mpdref.runner.registry import Stage, register, weight_setting_problems


@register
class DARBStage(Stage):
    """Mask weights with regular masks from their current values; the next train stage retrains under them."""

    type = "darb"
    description = ("regular pruning: DARB (density-adaptive block-max), block-max with one block size, or "
                   "block pruning; keep a fraction of each listed weight")
    options = {
        "keep": Option(dict, None, accepted="a table of weight name = fraction kept, in (0, 1]"),
        "keep_all": Option(float, None, check=lambda v: 0 < v <= 1,
                           accepted="a number in (0, 1]: the same fraction for every weight"),
        "method": Option(str, "darb", choices=METHODS,
                         help="darb: a block size per row from its density; bmwm: one block size per layer; "
                              "block: whole tile x tile squares by their L2 norm"),
        "sizes": Option(str, "any", choices=SIZES, help="darb's block sizes: any integer, or powers of two"),
        "tile": Option(int, 4, check=lambda v: v >= 1, accepted="an integer >= 1",
                       help="block pruning's square side"),
    }

    @classmethod
    def check(cls, settings, model):
        problems = weight_setting_problems(
            model, "keep", settings["keep"],
            lambda name, v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
            "a number in (0, 1]")
        if (settings["keep"] is None) == (settings["keep_all"] is None):
            problems.append("give exactly one of keep and keep_all")
        return problems

    def run(self, ctx, settings, resume):
        net = ctx.net
        keep = settings["keep"] or {name: settings["keep_all"] for name in net.weight_names()}
        layers = regular_prune(net, keep, settings["method"], settings["sizes"], settings["tile"])
        fraction = weights_kept(net)
        report = {}
        for name, layer in layers.items():
            report[name] = {"kept": layer["kept"]}
            if layer["block_sizes"] is not None:
                sizes = layer["block_sizes"]
                report[name].update(block_sizes={"min": int(sizes.min()), "max": int(sizes.max())},
                                    offset_bits=mean_offset_bits(sizes, net.params[name][0].size))
        print(f"darb ({settings['method']}): " + ", ".join(f"{n} {r['kept']:.1%}" for n, r in report.items())
              + f"; all weights {fraction:.2%} kept ({1 / fraction:.1f}x fewer)", file=sys.stderr)
        return {"method": settings["method"], "layers": report, "weights_kept": fraction, **ctx.errors()}
