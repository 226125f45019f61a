"""Mask-constrained SGD with momentum, learning-rate schedules, the epoch loop.

The update, for every parameter w with gradient g, velocity v and 0/1 mask m
(m = 1 where a weight has no mask):

    g ← g + λ·w            (weight decay, on weights only, not biases)
    v ← (μ·v + g) ⊙ m      (masked weights keep zero momentum)
    w ← (w − η·v) ⊙ m      (masked weights stay exactly 0.0)

which is PyTorch's ``SGD(momentum=μ, weight_decay=λ)`` plus the two mask
products. Everything random (shuffling, dropout) comes from generators seeded
by the run's seed, so the same seed gives bit-identical weights.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from tqdm import tqdm

from mpdref.data import shift_images
from mpdref.kernels.allocator import reuse_freed_memory
from mpdref.kernels.cpu import sgd_momentum_update
from mpdref.models import Network
from mpdref.streams import random_stream

SCHEDULES = ("cosine", "step", "constant")
MAX_SHIFT = 8  # pixels: a recipe's largest random translation (more moves a 28 × 28 digit out of its image)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how a network is trained."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine: η_t = η/2·(1 + cos(π t / T)), per step
    milestones: tuple[int, ...] = field(default=())  # step: epochs after which η ← γ·η
    gamma: float = 0.1
    shift: int = 0  # random translations: each image moved by up to `shift` pixels each way (see fit)

    def __post_init__(self):
        problems = []
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            problems.append(f"epochs must be an integer >= 1, not {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            problems.append(f"batch_size must be an integer >= 1, not {self.batch_size!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a positive number, not {self.lr!r}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), not {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            problems.append(f"weight_decay must be >= 0, not {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if not 0 < self.gamma <= 1:
            problems.append(f"gamma must be in (0, 1], not {self.gamma!r}")
        if not (isinstance(self.shift, int) and 0 <= self.shift <= MAX_SHIFT):
            problems.append(f"shift must be an integer in [0, {MAX_SHIFT}], not {self.shift!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def replace(self, **changes) -> "Recipe":
        known = {f.name for f in fields(self)}
        values = asdict(self)
        values.update({k: v for k, v in changes.items() if k in known and v is not None})
        values["milestones"] = tuple(values["milestones"])
        return Recipe(**values)


#: The default recipe of each network (test errors measured with these are in the README).
DEFAULT_RECIPES = {
    "lenet-300-100": Recipe(epochs=30, lr=0.05, weight_decay=1e-4),
    # Caffe's LeNet has no ReLU between its convolutions; at lr 0.05 it diverges in the first epoch.
    "lenet-5": Recipe(epochs=20, lr=0.01, weight_decay=5e-4),
    "deep-mnist": Recipe(epochs=12, lr=0.05, weight_decay=5e-4),
}

# The papers' numbers, quoted beside mpdref's: Deep Compression (Han et al. 2016), Table 1: the
# reference networks' test errors, and after pruning, quantization and Huffman coding the test
# error and how many times smaller the model is than dense float32.
PAPER_DENSE_ERROR = {"lenet-300-100": 0.0164, "lenet-5": 0.0080}
PAPER_DEEP_COMPRESSION = {"lenet-300-100": {"test_error": 0.0158, "ratio": 40},
                          "lenet-5": {"test_error": 0.0074, "ratio": 39}}


def learning_rate(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """η at optimizer step `step` (0-based)."""
    if recipe.schedule == "constant":
        return recipe.lr
    if recipe.schedule == "step":
        epoch = step // steps_per_epoch
        return recipe.lr * recipe.gamma ** sum(epoch >= m for m in recipe.milestones)
    total = recipe.epochs * steps_per_epoch
    return 0.5 * recipe.lr * (1.0 + math.cos(math.pi * step / total))


class SGD:
    """Masked SGD with momentum and weight decay (see the module docstring).

    `step` runs the rule in one pass per parameter (a Numba kernel); `reference_step`
    is the same rule in NumPy, which the tests hold it equal to, value for value.
    """

    def __init__(self, net: Network, momentum: float = 0.9, weight_decay: float = 0.0, frozen=()):
        self.net = net
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.frozen = frozenset(frozen)  # parameters this optimizer leaves alone (another one updates them)
        self.velocity = {k: np.zeros_like(v) for k, v in net.params.items()}
        self._views: dict[str, tuple] = {}  # see _flat_views

    def step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        for name, w in self.net.params.items():
            if name in self.frozen:
                continue
            g = grads[name]
            one = self._flat_views(name, w)
            if one is None or g.dtype != w.dtype:
                self._reference_one(name, w, g, lr)
                continue
            w_flat, v_flat, mask_flat, momentum, decay = one
            sgd_momentum_update(w_flat, v_flat, np.ascontiguousarray(g).reshape(-1), mask_flat,
                                w.dtype.type(lr), momentum, decay)

    def _flat_views(self, name, w):
        """(w's flat view, its velocity's, its mask's or None, momentum and decay in w's dtype) for the
        kernel, or None where w or its velocity is not C-contiguous (the NumPy rule takes those). Kept
        from step to step while the parameter, velocity and mask are the same arrays and the settings
        the same values (LeNet-300-100's six parameters: `step` 43.7 against 30.7 µs, one timing of
        each); a mask that is not a C-contiguous array is copied at every step, as before."""
        v, mask = self.velocity[name], self.net.masks.get(name)
        kept = self._views.get(name)
        if kept is not None:
            k = kept[0]
            if k[0] is w and k[1] is v and k[2] is mask and k[3] == self.momentum and k[4] == self.weight_decay:
                return kept[1]
        if not (w.flags.c_contiguous and v.flags.c_contiguous):
            return None
        t = w.dtype.type
        decay = self.weight_decay if name.endswith(".weight") else 0.0
        views = (w.reshape(-1), v.reshape(-1), None if mask is None else np.ascontiguousarray(mask).reshape(-1),
                 t(self.momentum), t(decay))
        if mask is None or (isinstance(mask, np.ndarray) and mask.flags.c_contiguous):  # else a copy: not kept
            self._views[name] = ((w, v, mask, float(self.momentum), float(self.weight_decay)), views)
        return views

    def __getstate__(self):
        # a copy (copy.deepcopy, pickle) gets its own arrays: views of the original's must not go with it
        return {**self.__dict__, "_views": {}}

    def reference_step(self, grads: dict[str, np.ndarray], lr: float) -> None:
        for name, w in self.net.params.items():
            if name not in self.frozen:
                self._reference_one(name, w, grads[name], lr)

    def _reference_one(self, name, w, g, lr) -> None:
        if self.weight_decay and name.endswith(".weight"):
            g = g + self.weight_decay * w
        v = self.velocity[name]
        v *= self.momentum
        v += g
        mask = self.net.masks.get(name)
        if mask is not None:
            v *= mask
        w -= lr * v
        if mask is not None:
            w *= mask


class WeightAverage:
    """The running mean of a network's parameters over snapshots, for stochastic weight averaging
    (Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018):

        mean₀ = 0;   after snapshot n (1, 2, ...) of w:   meanₙ = meanₙ₋₁ + (w − meanₙ₋₁) / n

    (PyTorch's ``torch.optim.swa_utils.AveragedModel`` rule; the first snapshot is copied exactly). A
    weight that a mask holds at 0.0 in every snapshot has a mean of exactly 0.0, so the mean keeps
    the masks. The mean is kept in the parameters' dtype.
    """

    def __init__(self, params: dict[str, np.ndarray], mean: dict[str, np.ndarray] | None = None, count: int = 0):
        if mean is not None:
            for k, v in params.items():
                if mean[k].dtype != v.dtype or mean[k].shape != v.shape:
                    raise ValueError(f"the mean of {k} is {mean[k].dtype} {mean[k].shape}, the parameter "
                                     f"{v.dtype} {v.shape}")
        self.mean = ({k: np.zeros_like(v) for k, v in params.items()} if mean is None
                     else {k: np.array(mean[k]) for k in params})
        self.count = count

    def add(self, params: dict[str, np.ndarray]) -> None:
        self.count += 1
        for name, w in params.items():
            mean = self.mean[name]
            mean += (w - mean) / w.dtype.type(self.count)

    def apply(self, params: dict[str, np.ndarray]) -> None:
        """Write the mean into `params` in place; with no snapshot yet, there is nothing to average."""
        if self.count == 0:
            raise ValueError("no snapshot has been added: there is no mean to apply")
        for name, w in params.items():
            w[...] = self.mean[name]


@dataclass(frozen=True, eq=False)
class Distillation:
    """Soft targets for `fit` (knowledge distillation, `mpdref.ops.distillation_forward`).

    logits: the teacher's logits (N, classes) for every training image, in the training set's
    order and the student's dtype; computed once, since the teacher does not change.
    network: the teacher itself (anything with forward(x) -> logits and a dtype), for a recipe
    with random shifts: the teacher sees the student's shifted images, not the originals (a
    "consistent" teacher, Beyer et al., "Knowledge distillation: A good teacher is patient and
    consistent", CVPR 2022), at one teacher forward pass a step.
    """

    logits: np.ndarray
    temperature: float = 4.0
    weight: float = 0.9
    network: object | None = None

    def __post_init__(self):
        if not self.temperature > 0 or not 0 <= self.weight <= 1:
            raise ValueError(f"distillation needs temperature > 0 and weight in [0, 1], "
                             f"not {self.temperature!r} and {self.weight!r}")
        if not np.all(np.isfinite(self.logits)):
            raise ValueError("the teacher's logits are not all finite")

    def targets(self, idx: np.ndarray, images: np.ndarray | None = None):
        """The teacher argument of `loss_grads_and_logits` for the training images `idx`: the stored
        logits, or with `images` (those images as the student sees them, e.g. shifted) the teacher
        network's logits of them."""
        if images is None:
            return self.logits[idx], self.temperature, self.weight
        if self.network is None:
            raise ValueError("soft targets for changed (e.g. shifted) images need the teacher network, "
                             "not only its logits of the training images")
        logits = self.network.forward(images.astype(self.network.dtype, copy=False))
        return logits.astype(self.logits.dtype, copy=False), self.temperature, self.weight


def _shuffle_rng(seed: int) -> np.random.Generator:
    return random_stream(seed, "fit")


def fit(
    net: Network,
    train: tuple[np.ndarray, np.ndarray],
    recipe: Recipe,
    seed: int = 0,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    log_file=None,
    progress: bool = True,
    start_epoch: int = 0,
    optimizer: SGD | None = None,
    shuffle_rng: np.random.Generator | None = None,
    on_epoch_end=None,
    distill: Distillation | None = None,
) -> list[dict]:
    """Train `net` in place; return one record per epoch.

    train/val/test are (x (N, 1, 28, 28) in the network's dtype, labels (N,)).
    Each record holds the epoch, learning rate, mean train loss and error, the
    validation and test error (when given), seconds and samples per second; it
    is also written to `log_file` (an open text file) as one JSON line, and
    passed to ``on_epoch_end(epoch, record)`` (the runner checkpoints there).

    To resume, pass the optimizer and shuffling generator in their saved states
    and the number of epochs already done as `start_epoch`. With `distill`, the
    loss is the distillation loss against the teacher's logits (the reported train
    loss too); without, softmax cross-entropy.

    With recipe.shift = s > 0, each epoch's images are randomly translated
    (`mpdref.data.shift_images`): after the epoch's permutation, the shuffling
    generator draws one (rows, columns) offset per image, each uniform in
    [-s, s]; the train loss and error are those of the shifted images, the
    validation and test errors those of the originals. Distillation then needs
    the teacher network (`Distillation.network`), which sees the shifted images.
    With s = 0 nothing more is drawn, so such runs are as they were.
    """
    reuse_freed_memory()
    x_train, y_train = train
    n = len(x_train)
    if distill is not None and distill.logits.shape[0] != n:
        raise ValueError(f"the teacher's logits cover {distill.logits.shape[0]} images, the training set {n}")
    if recipe.shift and distill is not None and distill.network is None:
        raise ValueError(f"a recipe with shift = {recipe.shift} distils from the teacher network (which sees the "
                         "shifted images); this Distillation holds only the teacher's logits")
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    optimizer = optimizer or SGD(net, recipe.momentum, recipe.weight_decay)
    rng = shuffle_rng if shuffle_rng is not None else _shuffle_rng(seed)
    history = []
    for epoch in range(start_epoch, recipe.epochs):
        order = rng.permutation(n)
        offsets = rng.integers(-recipe.shift, recipe.shift + 1, size=(n, 2)) if recipe.shift else None
        started = time.perf_counter()
        loss_sum = 0.0
        wrong = 0
        bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="img", unit_scale=True,
                   # None: tqdm's own test, no bar where stderr is not a terminal (a log file, a
                   # pipe), in which each redraw would be one more line; the epoch lines stay
                   disable=None if progress else True, leave=False, file=sys.stderr, dynamic_ncols=True)
        with bar, net.pass_threads():
            for b in range(steps_per_epoch):
                idx = order[b * recipe.batch_size : (b + 1) * recipe.batch_size]
                # np.take copies the same rows as x_train[idx], a few µs sooner (benchmarks/README.md)
                xb, yb = np.take(x_train, idx, axis=0), y_train[idx]
                if offsets is not None:
                    xb = shift_images(xb, offsets[b * recipe.batch_size : (b + 1) * recipe.batch_size])
                teacher = None if distill is None else distill.targets(idx, None if offsets is None else xb)
                loss, grads, logits = net.loss_grads_and_logits(xb, yb, teacher=teacher)
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged in epoch {epoch + 1}, step {b + 1} (loss is {loss}); "
                        f"lower the learning rate (it was {recipe.lr})")
                lr = learning_rate(recipe, epoch * steps_per_epoch + b, steps_per_epoch)
                optimizer.step(grads, lr)
                loss_sum += float(loss) * len(idx)
                wrong += int(np.sum(logits.argmax(axis=1) != yb))
                bar.update(len(idx))
                if b % 20 == 0 or b == steps_per_epoch - 1:
                    seen = min((b + 1) * recipe.batch_size, n)
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{1 - wrong / seen:.4f}")
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": loss_sum / n,
            "train_error": wrong / n,
            "seconds": seconds,
            "samples_per_second": n / seconds,
        }
        if val is not None and len(val[0]):
            record["val_error"] = net.error_rate(*val)
        if test is not None:
            record["test_error"] = net.error_rate(*test)
        history.append(record)
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if progress:
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in record.items() if k != "epoch")
            tqdm.write(f"epoch {epoch + 1}/{recipe.epochs}: {shown}", file=sys.stderr)
    return history


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
