"""The stages of the reference core: train (from scratch or further, masked or in MPD block form), teacher,
evaluate, swa (stochastic weight averaging), load (start from a model file); and the recipe and
distillation settings that other training stages share."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from mpdref import admm, models
from mpdref.io import FormatError
from mpdref.models import ARCHITECTURES, parameter_shapes
from mpdref.mpd import block_arrays, to_block_diagonal
from mpdref.runner.options import REQUIRED, Option
from mpdref.runner.registry import Stage, register, weight_setting_problems
from mpdref.streams import random_stream
from mpdref.train import DEFAULT_RECIPES, MAX_SHIFT, SCHEDULES, SGD, Distillation, Recipe, WeightAverage, fit

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
    "shift": Option(int, check=lambda v: 0 <= v <= MAX_SHIFT, accepted=f"an integer in [0, {MAX_SHIFT}]",
                    help="random translations: each training image moved by up to this many pixels down or up "
                         "and right or left, drawn anew each epoch (mpdref.train.fit); a teacher sees the "
                         "shifted images too; 0: the images as they are"),
}


DISTILL_OPTIONS = {
    "teacher": Option(str, None, accepted="the name of an earlier stage, or a model file ending in .h5",
                      help="distil from a teacher (Hinton et al. 2015): the name of an earlier stage (the "
                           "network a `teacher` stage trained, or this run's network as that stage left "
                           "it), or a model file (.h5) of any architecture; unset: plain cross-entropy"),
    "temperature": Option(float, 4.0, check=lambda v: v > 0, accepted="a number > 0",
                          help="T: softens the teacher's and the student's distributions alike"),
    "teacher_weight": Option(float, 0.9, check=lambda v: 0 <= v <= 1, accepted="a number in [0, 1]",
                             help="alpha: the weight of the teacher's soft targets; 1 - alpha goes to the labels"),
}


def recipe_from(settings: dict) -> Recipe:
    """The Recipe that a stage's recipe options (RECIPE_OPTIONS) describe; other settings are ignored."""
    return Recipe(**{k: (tuple(v) if k == "milestones" else v) for k, v in settings.items() if k in RECIPE_OPTIONS})


def recipe_problems(settings: dict) -> list[str]:
    """What makes recipe_from(settings) fail (a stage's check), or nothing."""
    try:
        recipe_from(settings)
    except (ValueError, TypeError) as e:
        return [str(e)]
    return []


def is_level(value) -> bool:
    """Whether `value` names levels of `mpdref.admm` ('binary', 'ternary' or bits b)."""
    try:
        admm.level_magnitudes(value)
    except ValueError:
        return False
    return True


LEVELS_OPTIONS = {
    "levels": Option(dict, None, accepted="a table of weight name = 'binary', 'ternary' or bits b in "
                                          f"[2, {admm.MAX_BITS}]"),
    "levels_all": Option(object, None, check=is_level,
                         accepted=f"'binary', 'ternary' or bits b in [2, {admm.MAX_BITS}] for every weight"),
}


def levels_problems(settings: dict, model: str) -> list[str]:
    """What is wrong with a stage's `levels` table (names and values)."""
    return weight_setting_problems(model, "levels", settings["levels"], lambda name, v: is_level(v),
                                   f"'binary', 'ternary' or an integer in [2, {admm.MAX_BITS}]")


def per_weight(names: list[str], settings: dict, key: str) -> dict:
    """{weight name: value} from a stage's table `key` (e.g. levels) or its `key`_all (one value for
    each of `names`); empty when neither is set (the stages' checks allow at most one)."""
    if settings[f"{key}_all"] is not None:
        return {name: settings[f"{key}_all"] for name in names}
    return dict(settings[key] or {})


def teacher_file(ctx, teacher: str) -> Path:
    """The model file that a `teacher` setting names (see DISTILL_OPTIONS)."""
    for i, stage in enumerate(ctx.config["stages"][: ctx.stage_index]):
        if stage["name"] == teacher:
            if stage["type"] == TeacherStage.type:
                return ctx.out / "teachers" / f"{teacher}.h5"
            return ctx.out / "stages" / f"{i + 1:02d}-{teacher}.h5"
    return Path(teacher)


def distillation_from(ctx, settings: dict) -> tuple[Distillation | None, dict]:
    """The soft targets that a stage's DISTILL_OPTIONS ask for (None without a teacher), and what to
    report about the teacher (its file, validation and test error)."""
    if settings.get("teacher") is None:
        return None, {}
    path = teacher_file(ctx, settings["teacher"])
    if str(path) not in ctx.teachers:
        if not path.exists():
            raise FileNotFoundError(f"teacher {settings['teacher']!r}: no model file at {path}")
        try:
            teacher = models.load(path)
        except FormatError as e:
            raise FormatError(f"teacher {settings['teacher']!r}: {e}") from None
        train_images = ctx.datasets()[0][0]
        # a file of the run itself is named relative to its directory: the report holds wherever the
        # run directory goes (and whichever run made a shared stage, mpdref.runner.shared)
        shown = path.relative_to(ctx.out) if path.is_relative_to(ctx.out) else path
        ctx.teachers[str(path)] = (teacher.logits(train_images.astype(teacher.dtype, copy=False)),
                                   {"file": str(shown), "model": teacher.name, **ctx.errors(teacher)}, teacher)
    logits, report, teacher = ctx.teachers[str(path)]
    distill = Distillation(logits.astype(ctx.net.dtype), settings["temperature"], settings["teacher_weight"],
                           network=teacher)
    return distill, report


def fit_in_stage(ctx, net, recipe, optimizer, resume, velocity, checkpoint_at_start=False, distill=None,
                 epoch_hook=None, stage_state=None) -> None:
    """`fit` inside a stage: the stage's own shuffling stream, a checkpoint after every epoch (and, with
    checkpoint_at_start, one before the first), and the rest of an interrupted stage on `resume`.
    velocity(): the optimizer's state in the network's parameter layout, as checkpoints hold it; the
    caller restores the optimizer from resume["velocity"] itself. distill: soft targets, or None.
    epoch_hook(epoch, record): runs at each epoch's end before the record is logged (it may add to
    it); stage_state(): the stage's own state for the checkpoint (RunContext.checkpoint), or None."""
    train_set, val_set, test_set = ctx.datasets()
    shuffle = ctx.rng("shuffle")
    state = stage_state or (lambda: None)
    start_epoch = 0
    if resume is not None:
        shuffle.bit_generator.state = resume["rng"]["shuffle"]
        start_epoch = resume["epochs_done"]
    elif checkpoint_at_start:
        ctx.checkpoint(epochs_done=0, finished=False, velocity=velocity(), shuffle=shuffle, stage_state=state())

    def on_epoch_end(epoch, record):
        if epoch_hook is not None:
            epoch_hook(epoch, record)
        ctx.log(record)
        ctx.checkpoint(epochs_done=epoch + 1, finished=False, velocity=velocity(), shuffle=shuffle,
                       stage_state=state())

    fit(net, train_set, recipe, val=val_set, test=test_set, progress=ctx.progress, start_epoch=start_epoch,
        optimizer=optimizer, shuffle_rng=shuffle, on_epoch_end=on_epoch_end, distill=distill)


@register
class TrainStage(Stage):
    """Masked SGD on the current network; defaults are the network's default recipe."""

    type = "train"
    description = "train the network (from its current weights, under its masks)"
    options = {**RECIPE_OPTIONS,
               "form": Option(str, "masked", choices=("masked", "block"),
                              help="masked: dense products under the masks; block: MPD block-diagonal form, "
                                   "multiplying only the blocks (the same result to float rounding)"),
               "freeze": Option(list, [], accepted="a list of weight names",
                                help="weights left exactly as they are (e.g. on the levels admm_quantize put "
                                     "them on) while biases and the other weights train"),
               **{k: replace(v, help="retrain these weights on scale x levels (one scale per tensor, the exact "
                                     "projection of mpdref.admm): every step at the weights on their levels, "
                                     "the updates gathered in float copies (the straight-through estimator, "
                                     "mpdref.admm.StraightThroughSGD); the weights end on their levels")
                  for k, v in LEVELS_OPTIONS.items()},
               **DISTILL_OPTIONS}

    @classmethod
    def defaults(cls, model):
        recipe = DEFAULT_RECIPES[model]
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in vars(recipe).items() if k in cls.options}

    @classmethod
    def check(cls, settings, model):
        problems = weight_setting_problems(model, "freeze", settings["freeze"]) + levels_problems(settings, model)
        if settings["levels"] is not None and settings["levels_all"] is not None:
            problems.append("give at most one of levels and levels_all")
        for option in ("freeze", "levels", "levels_all"):
            if settings[option] and settings["form"] == "block":
                problems.append(f"{option}: only with form = \"masked\" (the block form renames the weights)")
        weights = [n for n in parameter_shapes(model) if n.endswith(".weight")] if model in ARCHITECTURES else []
        both = sorted(set(per_weight(weights, settings, "levels")) & set(settings["freeze"] or []))
        if both:
            problems.append(f"freeze and levels both name {', '.join(both)}: a weight is frozen or retrained "
                            "on levels, not both")
        return problems + recipe_problems(settings)

    def run(self, ctx, settings, resume):
        recipe = recipe_from(settings)
        net = ctx.net
        trained = net
        if settings["form"] == "block":
            trained = to_block_diagonal(net)
        sgd = SGD(trained, recipe.momentum, recipe.weight_decay, frozen=settings["freeze"])
        if resume is not None:
            sgd.velocity = resume["velocity"] if trained is net else block_arrays(net, resume["velocity"])
        levels = per_weight(net.weight_names(), settings, "levels")
        optimizer = sgd
        if levels:  # the masked form only (check): trained is net
            optimizer = admm.StraightThroughSGD(
                sgd, {name: admm.levels_constraint(v, net.masks.get(name)) for name, v in levels.items()},
                latent=None if resume is None else resume["latent"])

        def latent_state():
            """The float copies of the weights on levels, for the checkpoint (zeros for the others)."""
            return {"groups": {"latent": {**{k: np.zeros_like(v) for k, v in net.params.items()},
                                          **optimizer.latent}}}

        def sync():
            """Checkpoints and later stages see the masked network; the block form writes back into it."""
            if trained is net:
                return sgd.velocity
            trained.to_masked(net)
            net.rng.bit_generator.state = trained.rng.bit_generator.state
            return trained.masked_arrays(net, sgd.velocity)

        distill, teacher = distillation_from(ctx, settings)
        fit_in_stage(ctx, trained, recipe, optimizer, resume, sync, distill=distill,
                     stage_state=latent_state if levels else None)
        sync()
        report = {}
        if levels:
            report["levels"] = {name: {"levels": v, "scale": admm.project_quantized(
                optimizer.latent[name], v, net.masks.get(name))[1]} for name, v in levels.items()}
        return {"epochs": recipe.epochs, **report, **({"teacher": teacher} if teacher else {}), **ctx.errors()}


@register
class TeacherStage(Stage):
    """Train a separate network, of any architecture, for later stages to distil from."""

    type = "teacher"
    description = ("train a teacher network (any architecture) into teachers/NAME.h5 for later stages' "
                   "`teacher` setting; the run's own network is unchanged")
    # Unset recipe options take the teacher architecture's default recipe, not the run's.
    options = {"model": Option(str, REQUIRED, choices=tuple(ARCHITECTURES), help="the teacher's architecture"),
               **{k: replace(v, default=None, help="unset: the teacher architecture's recipe")
                  for k, v in RECIPE_OPTIONS.items()}}

    def run(self, ctx, settings, resume):
        name = ctx.config["stages"][ctx.stage_index]["name"]
        recipe = replace(DEFAULT_RECIPES[settings["model"]],
                         **{k: (tuple(v) if k == "milestones" else v) for k, v in settings.items()
                            if k in RECIPE_OPTIONS and v is not None})
        # The init and the shuffling stream of a run of that model with this seed whose first stage is a
        # train stage of this recipe: the teacher is that run's network, bit for bit (a test checks it).
        teacher = models.build(settings["model"], dtype=ctx.net.dtype, seed=ctx.seed)
        shuffle = random_stream(ctx.seed, "shuffle", 0)
        train_set, val_set, test_set = ctx.datasets()
        # No checkpoints inside: an interrupted teacher stage is trained again from the start (same seed,
        # same bits). Its epochs are logged under "teacher", apart from the run's own training curves.
        fit(teacher, train_set, recipe, val=val_set, test=test_set, progress=ctx.progress, shuffle_rng=shuffle,
            on_epoch_end=lambda epoch, record: ctx.log({"teacher": record}))
        (ctx.out / "teachers").mkdir(exist_ok=True)
        models.save(teacher, ctx.out / "teachers" / f"{name}.h5", {"teacher_stage": name})
        return {"teacher": {"model": settings["model"], "epochs": recipe.epochs, "recipe": asdict(recipe),
                            **ctx.errors(teacher)}}


@register
class EvaluateStage(Stage):
    """Validation and test error of the current network."""

    type = "evaluate"
    description = "measure validation and test error"

    def run(self, ctx, settings, resume):
        return ctx.errors()


@register
class WeightAveragingStage(Stage):
    """Stochastic weight averaging: train on, and end on the mean of the weights at each epoch's end."""

    type = "swa"
    description = ("stochastic weight averaging (Izmailov et al. 2018): train `epochs` more epochs (under the "
                   "masks; by default at the recipe's lr, held constant) and end on the mean of the weights at "
                   "each epoch's end (mpdref.train.WeightAverage); the report gives the last epoch's errors too")
    options = {**RECIPE_OPTIONS, **DISTILL_OPTIONS}

    @classmethod
    def defaults(cls, model):
        # A constant rate keeps the snapshots apart: a schedule that decays to 0 averages one point.
        return {**TrainStage.defaults(model), "schedule": "constant"}

    @classmethod
    def check(cls, settings, model):
        return recipe_problems(settings)

    def run(self, ctx, settings, resume):
        recipe = recipe_from(settings)
        net = ctx.net
        sgd = SGD(net, recipe.momentum, recipe.weight_decay)
        average = WeightAverage(net.params)
        if resume is not None:
            sgd.velocity = resume["velocity"]
            # one snapshot an epoch: the checkpoint's epochs are the mean's count
            average = WeightAverage(net.params, resume["swa_mean"], resume["epochs_done"])

        def after_epoch(epoch, record):
            average.add(net.params)
            record["averaged"] = average.count

        def stage_state():
            return {"groups": {"swa_mean": average.mean}}

        distill, teacher = distillation_from(ctx, settings)
        fit_in_stage(ctx, net, recipe, sgd, resume, lambda: sgd.velocity, distill=distill, epoch_hook=after_epoch,
                     stage_state=stage_state)
        last = ctx.errors()
        average.apply(net.params)
        return {"epochs": recipe.epochs, "averaged": average.count, "last_epoch": last,
                **({"teacher": teacher} if teacher else {}), **ctx.errors()}


@register
class LoadStage(Stage):
    """Start from a network trained elsewhere: its weights and masks replace the run's."""

    type = "load"
    description = ("replace the network's weights and masks with a model file's (written by mpdref: a run's "
                   "model.h5 or stages/NN-NAME.h5; the same architecture and dtype)")
    options = {"file": Option(str, REQUIRED, check=lambda v: v.endswith(".h5"),
                              accepted="a model file ending in .h5",
                              help="the model file, relative to the directory mpdref runs in or absolute; runs "
                                   "of a sweep that share a load stage share what follows it too (its path, not "
                                   "its content, identifies it)")}

    def run(self, ctx, settings, resume):
        path = Path(settings["file"])
        if not path.is_file():
            raise FileNotFoundError(f"load: no model file at {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        loaded = models.load(path)  # FormatError names the file and the problem
        net = ctx.net
        if loaded.name != net.name or loaded.dtype != net.dtype:
            raise ValueError(f"load: {path} holds a {loaded.name} network in {loaded.dtype}; this run's is "
                             f"{net.name} in {net.dtype}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"load: {path} changed while it was read; run again")
        net.params = {k: np.ascontiguousarray(v) for k, v in loaded.params.items()}
        net.masks = dict(loaded.masks)
        return {"file": str(path), "path": str(path.resolve()), "sha256": digest, **ctx.errors()}
