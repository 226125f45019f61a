"""The stages of the reference core: train (from scratch or further), evaluate."""
from __future__ import annotations

import numpy as np

from mpdref.runner.config import Option
from mpdref.runner.registry import Stage, register
from mpdref.train import DEFAULT_RECIPES, SCHEDULES, SGD, Recipe, fit

RECIPE_OPTIONS = {
    "epochs": Option(int, check=lambda v: v >= 1, accepted="an integer >= 1"),
    "batch_size": Option(int, check=lambda v: v >= 1, accepted="an integer >= 1"),
    "lr": Option(float, check=lambda v: v > 0, accepted="a number > 0"),
    "momentum": Option(float, check=lambda v: 0 <= v < 1, accepted="a number in [0, 1)"),
    "weight_decay": Option(float, check=lambda v: v >= 0, accepted="a number >= 0"),
    "schedule": Option(str, choices=SCHEDULES),
    "milestones": Option(list, check=lambda v: all(isinstance(m, int) and not isinstance(m, bool) and m >= 1
                                                   for m in v),
                         accepted="a list of epoch numbers >= 1"),
    "gamma": Option(float, check=lambda v: 0 < v <= 1, accepted="a number in (0, 1]"),
}


def recipe_from(settings: dict) -> Recipe:
    """The Recipe that a stage's recipe options (RECIPE_OPTIONS) describe; other settings are ignored."""
    return Recipe(**{k: (tuple(v) if k == "milestones" else v) for k, v in settings.items() if k in RECIPE_OPTIONS})


def fit_in_stage(ctx, net, recipe, optimizer, resume, velocity, checkpoint_at_start=False) -> None:
    """`fit` inside a stage: the stage's own shuffling stream, a checkpoint after every epoch (and, with
    checkpoint_at_start, one before the first), and the rest of an interrupted stage on `resume`.
    velocity(): the optimizer's state in the network's parameter layout, as checkpoints hold it; the
    caller restores the optimizer from resume["velocity"] itself."""
    train_set, val_set, test_set = ctx.datasets()
    shuffle = np.random.default_rng(np.random.SeedSequence(ctx.seed, spawn_key=(1, ctx.stage_index)))
    start_epoch = 0
    if resume is not None:
        shuffle.bit_generator.state = resume["rng"]["shuffle"]
        start_epoch = resume["epochs_done"]
    elif checkpoint_at_start:
        ctx.checkpoint(epochs_done=0, finished=False, velocity=velocity(), shuffle=shuffle)

    def on_epoch_end(epoch, record):
        ctx.log(record)
        ctx.checkpoint(epochs_done=epoch + 1, finished=False, velocity=velocity(), shuffle=shuffle)

    fit(net, train_set, recipe, val=val_set, test=test_set, progress=ctx.progress, start_epoch=start_epoch,
        optimizer=optimizer, shuffle_rng=shuffle, on_epoch_end=on_epoch_end)


@register
class TrainStage(Stage):
    """Masked SGD on the current network; defaults are the network's default recipe."""

    type = "train"
    description = "train the network (from its current weights, under its masks)"
    options = {**RECIPE_OPTIONS,
               "form": Option(str, "masked", choices=("masked", "block"),
                              help="masked: dense products under the masks; block: MPD block-diagonal form, "
                                   "multiplying only the blocks (the same result to float rounding)")}

    @classmethod
    def defaults(cls, model):
        recipe = DEFAULT_RECIPES[model]
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in vars(recipe).items() if k in cls.options}

    @classmethod
    def check(cls, settings, model):
        try:
            recipe_from(settings)
        except (ValueError, TypeError) as e:
            return [str(e)]
        return []

    def run(self, ctx, settings, resume):
        recipe = recipe_from(settings)
        net = ctx.net
        trained = net
        if settings["form"] == "block":
            from mpdref.mpd import block_arrays, to_block_diagonal

            trained = to_block_diagonal(net)
        sgd = SGD(trained, recipe.momentum, recipe.weight_decay)
        if resume is not None:
            sgd.velocity = resume["velocity"] if trained is net else block_arrays(net, resume["velocity"])

        def sync():
            """Checkpoints and later stages see the masked network; the block form writes back into it."""
            if trained is net:
                return sgd.velocity
            trained.to_masked(net)
            net.rng.bit_generator.state = trained.rng.bit_generator.state
            return trained.masked_arrays(net, sgd.velocity)

        fit_in_stage(ctx, trained, recipe, sgd, resume, sync)
        sync()
        return {"epochs": recipe.epochs, **ctx.errors()}


@register
class EvaluateStage(Stage):
    """Validation and test error of the current network."""

    type = "evaluate"
    description = "measure validation and test error"

    def run(self, ctx, settings, resume):
        return ctx.errors()
