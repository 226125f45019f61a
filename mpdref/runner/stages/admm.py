"""The ADMM stages: settings to `mpdref.admm`'s constrained training (pruning to a number of
nonzeros, or quantization onto scaled levels), ending in the hard projection.

Each stage trains epochs_per_update × updates epochs of the W-step (masked SGD on the loss
plus the ADMM penalty, one learning-rate schedule over all of them) and makes a Z/U update
after every epochs_per_update epochs; ρ grows by rho_growth at each update. Z, U and ρ are in
every checkpoint, so an interrupted stage resumes bit for bit. The retraining that keeps the
constraint is the next `train` stage: under the masks that admm_prune sets, or with the
quantized weights frozen (`freeze`) or retrained on their levels (`levels`, the straight-through
estimator) after admm_quantize.
"""
from __future__ import annotations

import sys

import numpy as np

from mpdref import admm
from mpdref.figures import plot_admm
from mpdref.prune import drop_dead_weights, weights_kept
from mpdref.runner.options import Option
from mpdref.runner.registry import Stage, register, weight_setting_problems
from mpdref.runner.stages.train import (DISTILL_OPTIONS, LEVELS_OPTIONS, RECIPE_OPTIONS, TrainStage,
                                        distillation_from, fit_in_stage, levels_problems, per_weight,
                                        recipe_from, recipe_problems)
from mpdref.train import SGD

ADMM_OPTIONS = {
    "rho": Option(float, 1e-3, check=lambda v: v > 0, accepted="a number > 0",
                  help="the penalty's weight rho at the first update"),
    "rho_growth": Option(float, 1.3, check=lambda v: v >= 1, accepted="a number >= 1",
                         help="rho is multiplied by this at every Z/U update"),
    "epochs_per_update": Option(int, 1, check=lambda v: v >= 1, accepted="an integer >= 1",
                                help="W-step epochs between two Z/U updates"),
    "updates": Option(int, 10, check=lambda v: v >= 1, accepted="an integer >= 1",
                      help="Z/U updates; the stage trains epochs_per_update x updates epochs"),
}
# The W-step's recipe: every training setting but epochs (which the updates give).
W_STEP_OPTIONS = {k: v for k, v in RECIPE_OPTIONS.items() if k != "epochs"}


class _ADMMStage(Stage):
    """What both ADMM stages share: the W-step's recipe, the Z/U loop, checkpoints and the figure."""

    target = ""  # the setting naming each weight's constraint: "keep" or "levels"

    @classmethod
    def defaults(cls, model):
        return {k: v for k, v in TrainStage.defaults(model).items() if k in W_STEP_OPTIONS}

    @classmethod
    def check(cls, settings, model):
        problems = []
        if (settings[cls.target] is None) == (settings[f"{cls.target}_all"] is None):
            problems.append(f"give exactly one of {cls.target} and {cls.target}_all")
        return problems + recipe_problems({**settings, "epochs": settings["epochs_per_update"] * settings["updates"]})

    def constraints(self, net, settings) -> dict:
        """{weight name: its setting} for every constrained weight."""
        return per_weight(net.weight_names(), settings, self.target)

    def projection(self, net, name, setting):
        raise NotImplementedError

    def finish(self, net, constraints, settings) -> dict:
        """The hard projection W <- Π(W); returns what to report per weight."""
        raise NotImplementedError

    def run(self, ctx, settings, resume):
        net = ctx.net
        constraints = self.constraints(net, settings)
        state = admm.ADMMState(net.params, {name: self.projection(net, name, c) for name, c in constraints.items()},
                               settings["rho"], settings["rho_growth"])
        recipe = recipe_from({**settings, "epochs": settings["epochs_per_update"] * settings["updates"]})
        sgd = SGD(net, recipe.momentum, recipe.weight_decay)
        updates = {"done": 0}
        if resume is not None:
            sgd.velocity = resume["velocity"]
            state.z = {name: resume["admm_z"][name] for name in constraints}
            state.u = {name: resume["admm_u"][name] for name in constraints}
            state.rho = resume["stage_state"]["rho"]
            updates["done"] = resume["stage_state"]["updates_done"]

        def after_epoch(epoch, record):
            if (epoch + 1) % settings["epochs_per_update"] == 0:
                report = state.update(net.params)
                updates["done"] += 1
                record["admm"] = {"update": updates["done"], **report}

        def stage_state():
            zeros = {k: np.zeros_like(v) for k, v in net.params.items()}
            return {"groups": {"admm_z": {**zeros, **state.z}, "admm_u": {**zeros, **state.u}},
                    "progress": {"rho": state.rho, "updates_done": updates["done"]}}

        distill, teacher = distillation_from(ctx, settings)
        fit_in_stage(ctx, net, recipe, admm.ADMMSGD(sgd, state), resume, lambda: sgd.velocity, distill=distill,
                     epoch_hook=after_epoch, stage_state=stage_state)
        name = ctx.config["stages"][ctx.stage_index]["name"]
        records = [r for r in _stage_records(ctx) if "admm" in r]
        plot_admm(records, f"{name}: ADMM {self.target}", ctx.out / "figures" / f"admm-{name}.png")
        last = records[-1]["admm"] if records else {"layers": {}}
        layers = self.finish(net, constraints, settings)
        for layer, report in layers.items():
            report.update(last["layers"].get(layer, {}))
        fraction = weights_kept(net)
        print(f"{self.type}: " + ", ".join(f"{n} {self.describe(r)}" for n, r in layers.items())
              + f"; all weights {fraction:.2%} kept ({1 / fraction:.1f}x fewer)", file=sys.stderr)
        return {"epochs": recipe.epochs, "updates": updates["done"], "rho_last": state.rho / state.rho_growth,
                "layers": layers, "weights_kept": fraction, **({"teacher": teacher} if teacher else {}),
                **ctx.errors()}

    def describe(self, report: dict) -> str:
        raise NotImplementedError


def _stage_records(ctx) -> list[dict]:
    """This stage's epoch records so far (from log.jsonl: a resumed stage's earlier epochs included)."""
    from mpdref.runner.files import read_log

    return [r for r in read_log(ctx.out) if r.get("stage_index") == ctx.stage_index and "epoch" in r]


@register
class ADMMPruneStage(_ADMMStage):
    """ADMM pruning: train toward at most a number of nonzeros per weight, then keep exactly those."""

    type = "admm_prune"
    description = ("ADMM pruning (Zhang et al. 2018): train under the ADMM penalty toward at most keep x size "
                   "nonzeros per listed weight, then prune to them; the next train stage retrains under the masks")
    target = "keep"
    options = {
        "keep": Option(dict, None, accepted="a table of weight name = fraction kept, in (0, 1]"),
        "keep_all": Option(float, None, check=lambda v: 0 < v <= 1,
                           accepted="a number in (0, 1]: the same fraction for every weight"),
        "drop_dead": Option(bool, False, help="after the hard projection, also prune the kept weights that cannot "
                                              "change the output (into units or channels no later kept weight "
                                              "reads: mpdref.prune.dead_weights); the output is unchanged, bit for "
                                              "bit, and fewer weights are kept"),
        **ADMM_OPTIONS, **W_STEP_OPTIONS, **DISTILL_OPTIONS,
    }

    @classmethod
    def check(cls, settings, model):
        return super().check(settings, model) + weight_setting_problems(
            model, "keep", settings["keep"],
            lambda name, v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
            "a number in (0, 1]")

    def projection(self, net, name, keep):
        return admm.sparse_constraint(keep, net.masks.get(name))  # a pruned weight is never revived

    def finish(self, net, constraints, settings):
        out = {}
        for name, keep in constraints.items():
            z, kept = admm.project_sparse(net.params[name], keep, net.masks.get(name))
            net.params[name][...] = z
            net.set_mask(name, kept)
            out[name] = {"kept": float(kept.mean())}
        if settings["drop_dead"]:
            for name, count in drop_dead_weights(net).items():
                if name in out or count:
                    kept = net.masks[name] if name in net.masks else np.ones(net.params[name].shape, bool)
                    out.setdefault(name, {}).update(kept=float(kept.mean()), dead_dropped=count)
        return out

    def describe(self, report):
        return f"{report['kept']:.1%}" + (f" ({report['dead_dropped']} dead dropped)" if report.get("dead_dropped")
                                          else "")


@register
class ADMMQuantizeStage(_ADMMStage):
    """ADMM quantization: train toward scale x levels per weight (one scale per tensor), then round onto them."""

    type = "admm_quantize"
    description = ("ADMM quantization (Ren et al. 2019): train under the ADMM penalty toward one scale x levels "
                   "per listed weight (zeros stay where the masks are 0), then round onto them")
    target = "levels"
    options = {
        **LEVELS_OPTIONS, **ADMM_OPTIONS, **W_STEP_OPTIONS, **DISTILL_OPTIONS,
    }

    @classmethod
    def check(cls, settings, model):
        return super().check(settings, model) + levels_problems(settings, model)

    def projection(self, net, name, levels):
        return admm.levels_constraint(levels, net.masks.get(name))

    def finish(self, net, constraints, settings):
        out = {}
        for name, levels in constraints.items():
            z, scale = admm.project_quantized(net.params[name], levels, net.masks.get(name))
            net.params[name][...] = z
            out[name] = {"levels": levels, "scale": scale, "bits": admm.weight_bits(levels)}
        return out

    def describe(self, report):
        return f"{report['levels']} (scale {report['scale']:.4g})"
