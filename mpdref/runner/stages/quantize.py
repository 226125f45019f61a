"""The quantize stage: settings to `mpdref.quantize`'s codebooks and their fine-tuning."""
from __future__ import annotations

import sys

from mpdref.figures import plot_codebooks
from mpdref.quantize import INITS, METHODS, CodebookSGD, codebook_of, quantize_weight
from mpdref.runner.options import Option
from mpdref.runner.registry import Stage, register, weight_setting_problems
from mpdref.runner.stages.train import (DISTILL_OPTIONS, RECIPE_OPTIONS, TrainStage, distillation_from, fit_in_stage,
                                        recipe_from)


@register
class QuantizeStage(Stage):
    """k-means weight sharing per layer (on the kept weights), then fine-tuning of the centroids."""

    type = "quantize"
    description = "trained quantization: per-layer k-means codebooks, then centroid fine-tuning by SGD"

    options = {
        "bits": Option(dict, None, accepted="a table of weight name = bits per index (1-16)"),
        "bits_all": Option(int, None, check=lambda v: 1 <= v <= 16,
                           accepted="an integer in [1, 16]: the same bits for every weight"),
        "init": Option(str, "linear", choices=INITS, help="k-means start: linear over [min, max], density "
                                                          "over the CDF, or random values (Forgy)"),
        "method": Option(str, "lloyd", choices=METHODS, help="lloyd, or optimal (minimum SSE, dynamic programming)"),
        **RECIPE_OPTIONS,  # the centroid fine-tuning
        **DISTILL_OPTIONS,
    }

    @classmethod
    def defaults(cls, model):
        """The network's default recipe, shortened to 3 epochs at a tenth of its learning rate, no decay."""
        recipe = TrainStage.defaults(model)
        return {**recipe, "epochs": 3, "lr": recipe["lr"] / 10, "weight_decay": 0.0}

    @classmethod
    def check(cls, settings, model):
        problems = []
        if (settings["bits"] is None) == (settings["bits_all"] is None):
            problems.append("give exactly one of bits and bits_all")
        return problems + weight_setting_problems(
            model, "bits", settings["bits"],
            lambda name, b: isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 16, "an integer in [1, 16]")

    def run(self, ctx, settings, resume):
        net = ctx.net
        bits = dict(settings["bits"]) if settings["bits"] else {n: settings["bits_all"] for n in net.weight_names()}
        before = None  # (kept weights before quantization, k-means centroids) per weight, for the figure
        if resume is None:  # cluster; a resumed stage reads its codebooks back from the weights
            rng = ctx.rng("quantize")
            before = {}
            for name, b in bits.items():
                mask = net.masks.get(name)
                values = net.params[name][mask] if mask is not None else net.params[name].ravel()
                net.params[name] = quantize_weight(net.params[name], mask, b, settings["init"], settings["method"], rng)
                before[name] = (values, codebook_of(net.params[name], mask)[1])
        recipe = recipe_from(settings)
        optimizer = CodebookSGD(net, list(bits), recipe.momentum, recipe.weight_decay)
        if resume is not None:
            optimizer.velocity = resume["velocity"]
        # the checkpoint before the first epoch holds the quantized weights, from which a resumed
        # stage reads its codebooks back
        distill, teacher = distillation_from(ctx, settings)
        fit_in_stage(ctx, net, recipe, optimizer, resume, lambda: optimizer.velocity, checkpoint_at_start=True,
                     distill=distill)
        books = {name: codebook_of(net.params[name], net.masks.get(name))[1] for name in bits}
        if before:  # a resumed stage no longer has the weights before quantization: no figure
            plot_codebooks(before, books, ctx.out / "figures" / "quantize.png")
        print("quantize: " + ", ".join(f"{n} {b} bits ({len(books[n])} centroids)" for n, b in bits.items()),
              file=sys.stderr)
        return {"bits": bits, "centroids": {n: len(c) for n, c in books.items()},
                **({"teacher": teacher} if teacher else {}), **ctx.errors()}
