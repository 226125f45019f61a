"""The mpd stage: settings to `mpdref.mpd`'s masks (k per layer, one k, or k for a ratio)."""
from __future__ import annotations

import sys

from mpdref.figures import plot_masks
from mpdref.models import parameter_shapes
from mpdref.mpd import apply_mpd_masks, blocks_per_layer, storage_table
from mpdref.runner.options import Option
from mpdref.runner.registry import Stage, register, weight_setting_problems


@register
class MPDStage(Stage):
    """Mask chosen weights with random permuted block-diagonal masks; the next train stage trains under them."""

    type = "mpd"
    description = "apply MPD masks (k blocks per layer, or k chosen to reach a compression ratio)"
    options = {
        "layers": Option(list, [], accepted="a list of weight names, e.g. [\"fc1.weight\"] (empty: all weights)"),
        "ratio": Option(float, None, check=lambda v: v > 1, accepted="a number > 1: choose k to reach it"),
        "k": Option(dict, None, accepted="a table of weight name = number of blocks"),
        "k_all": Option(int, None, check=lambda v: v >= 1, accepted="an integer >= 1: the same k for every "
                        "listed layer, capped at the layer's smaller dimension"),
        "rescale": Option(str, "auto", choices=("auto", "yes", "no"),
                          help="scale the kept weights by sqrt(fan-in / kept fan-in), so a masked layer starts "
                               "with the variance of a dense layer of its true fan-in; auto: yes unless an "
                               "earlier stage trained the network"),
    }

    @classmethod
    def check(cls, settings, model):
        shapes = parameter_shapes(model)
        problems = weight_setting_problems(model, "layers", settings["layers"])
        if sum(settings[key] is not None for key in ("ratio", "k", "k_all")) != 1:
            problems.append("give exactly one of ratio, k and k_all")
        problems += weight_setting_problems(
            model, "k", settings["k"],
            lambda name, k: isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= min(shapes[name][:2]),
            lambda name: f"an integer in [1, {min(shapes[name][:2])}]")
        return problems

    def run(self, ctx, settings, resume):
        net = ctx.net
        shapes = net.parameter_shapes()
        ks = blocks_per_layer(shapes, settings["layers"] or net.weight_names(), settings["k"], settings["k_all"],
                              settings["ratio"])
        rescale = settings["rescale"] == "yes" or (
            settings["rescale"] == "auto"
            and not any(s["type"] == "train" for s in ctx.config["stages"][: ctx.stage_index]))
        structures = apply_mpd_masks(net, ks, ctx.rng("mpd"), rescale)
        table = storage_table(shapes, ks)
        print(f"mpd: k = {ks}; stored {table['stored_bits']:,} bits against {table['dense_bits']:,} dense: "
              f"{table['ratio']:.2f}x", file=sys.stderr)
        plot_masks(structures, ctx.out / "figures" / "mpd-masks.png")
        return {"k": ks, "rescaled": rescale, "stored_bits": table["stored_bits"],
                "dense_bits": table["dense_bits"], "ratio": table["ratio"]}
