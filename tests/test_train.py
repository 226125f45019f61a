import copy
import io
import json
import math

import numpy as np
import pytest

import naive
from compare import assert_close
from conftest import needs_torch
from mpdref import data, models
from mpdref.kernels import cpu
from mpdref.train import DEFAULT_RECIPES, SGD, Recipe, fit, learning_rate


def synthetic(n, rng, dtype=np.float32):
    """A learnable toy problem in MNIST's shape: the label is the brightest of 10 stripes."""
    labels = rng.integers(0, 10, n)
    x = rng.standard_normal((n, 1, 28, 28)).astype(dtype) * 0.3
    for i, y in enumerate(labels):
        x[i, 0, 2 * y : 2 * y + 3, :] += 1.5
    return x, labels


def test_sgd_step_is_the_documented_rule(rng):
    net = models.build("lenet-300-100", np.float64)
    mask = rng.random((100, 300)) < 0.3
    net.set_mask("fc2.weight", mask)
    sgd = SGD(net, momentum=0.9, weight_decay=0.01)
    w0 = {k: v.copy() for k, v in net.params.items()}
    v_prev = {k: rng.standard_normal(v.shape) for k, v in w0.items()}
    sgd.velocity = {k: v.copy() for k, v in v_prev.items()}
    grads = {k: rng.standard_normal(v.shape) for k, v in w0.items()}
    sgd.step(grads, lr=0.1)
    for k in w0:
        w, v = naive.sgd_step(w0[k], v_prev[k], grads[k], mask if k == "fc2.weight" else None, lr=0.1, momentum=0.9,
                              weight_decay=0.01 if k.endswith(".weight") else 0.0)
        assert_close(sgd.velocity[k], v, rtol=1e-14, atol=0, name=f"velocity {k}")
        assert_close(net.params[k], w, rtol=1e-14, atol=1e-300, name=k)


@needs_torch
def test_unmasked_sgd_matches_torch_sgd(rng):
    import torch

    net = models.build("lenet-300-100", np.float64, seed=2)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in net.params.items()}
    weights = [p for k, p in tparams.items() if k.endswith(".weight")]
    biases = [p for k, p in tparams.items() if k.endswith(".bias")]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": 5e-4}, {"params": biases, "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9)
    sgd = SGD(net, momentum=0.9, weight_decay=5e-4)
    for step in range(4):
        grads = {k: rng.standard_normal(v.shape) for k, v in net.params.items()}
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        opt.step()
        sgd.step(grads, lr=0.05)
    for k, p in tparams.items():
        assert_close(net.params[k], p.detach().numpy(), rtol=1e-12, atol=1e-15, name=k)


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_masked_weights_stay_exactly_zero_through_training(name, rng):
    net = models.build(name)
    masks = {k: rng.random(v.shape) < 0.2 for k, v in net.params.items() if k.endswith(".weight")}
    for k, m in masks.items():
        net.set_mask(k, m)
    sgd = SGD(net, 0.9, 5e-4)
    fit(net, synthetic(256, rng), Recipe(epochs=2, batch_size=32, lr=0.05), progress=False, optimizer=sgd)
    for k, m in masks.items():
        assert np.all(net.params[k][~m] == 0.0), k
        assert np.all(sgd.velocity[k][~m] == 0.0), k
        assert np.count_nonzero(net.params[k][m]) == m.sum(), k  # the kept weights did train


def test_same_seed_same_bits_and_another_seed_differs(rng):
    train = synthetic(300, rng)

    def run(seed):
        net = models.build("deep-mnist", seed=seed)  # has dropout: its generator is seeded too
        fit(net, (train[0][:96], train[1][:96]), Recipe(epochs=2, batch_size=32, lr=0.01),
            seed=seed, progress=False)
        return net.params

    a, b, c = run(7), run(7), run(8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["fc1.weight"], c["fc1.weight"])


def test_distillation_at_weight_zero_trains_to_the_same_bits(rng):
    from mpdref.train import Distillation

    train = synthetic(96, rng)
    nets = [models.build("lenet-300-100", seed=1) for _ in range(2)]
    recipe = Recipe(epochs=2, batch_size=32, lr=0.05)
    fit(nets[0], train, recipe, seed=3, progress=False)
    teacher = Distillation(rng.standard_normal((96, 10)).astype(np.float32), temperature=2.0, weight=0.0)
    fit(nets[1], train, recipe, seed=3, progress=False, distill=teacher)
    assert all(np.array_equal(nets[0].params[k], nets[1].params[k]) for k in nets[0].params)


def test_a_student_learns_what_its_teacher_says_not_the_labels(rng):
    from mpdref.train import Distillation

    x, labels = synthetic(600, rng)
    # The teacher calls every stripe one class higher than the labels do; at weight 1 the labels are unused.
    says = (labels + 1) % 10
    teacher_logits = (8.0 * np.eye(10)[says]).astype(np.float32)
    net = models.build("lenet-300-100", seed=2)
    fit(net, (x, labels), Recipe(epochs=4, batch_size=32, lr=0.05), seed=1, progress=False,
        distill=Distillation(teacher_logits, temperature=2.0, weight=1.0))
    predicted = net.predict(x)
    assert np.mean(predicted == says) > 0.95
    assert np.mean(predicted == labels) < 0.05


def test_distillation_refuses_logits_that_do_not_fit(rng):
    from mpdref.train import Distillation

    with pytest.raises(ValueError, match="not all finite"):
        Distillation(np.full((4, 10), np.nan, np.float32))
    with pytest.raises(ValueError, match="temperature > 0"):
        Distillation(np.zeros((4, 10), np.float32), temperature=-1.0)
    with pytest.raises(ValueError, match="cover 4 images, the training set 96"):
        fit(models.build("lenet-300-100"), synthetic(96, rng), Recipe(epochs=1), progress=False,
            distill=Distillation(np.zeros((4, 10), np.float32)))


def test_learning_rate_schedules():
    cos = Recipe(epochs=2, lr=0.1)
    assert learning_rate(cos, 0, 10) == 0.1
    assert math.isclose(learning_rate(cos, 10, 10), 0.05)
    assert learning_rate(cos, 19, 10) < 0.001
    step = Recipe(epochs=10, lr=0.1, schedule="step", milestones=(3, 6), gamma=0.5)
    assert [learning_rate(step, e * 5, 5) for e in (0, 2, 3, 5, 6, 9)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert learning_rate(Recipe(schedule="constant", lr=0.3), 1000, 10) == 0.3


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(momentum=1.0), dict(schedule="linear"),
                                 dict(batch_size=0), dict(weight_decay=float("nan")), dict(gamma=0.0),
                                 dict(shift=-1), dict(shift=9), dict(shift=1.5)])
def test_bad_recipes_are_refused_before_any_work(bad):
    with pytest.raises(ValueError):
        Recipe(**bad)


def test_divergence_is_reported_at_once(rng):
    net = models.build("lenet-300-100")
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(net, synthetic(512, rng), Recipe(epochs=1, lr=1e6, schedule="constant"), progress=False)


def test_progress_off_a_terminal_is_one_line_per_epoch(rng, capsys):
    # stderr captured, as in a log file or CI: no bar redrawn with carriage returns, only the epochs' lines.
    net = models.build("lenet-300-100")
    fit(net, synthetic(256, rng), Recipe(epochs=2, batch_size=32, lr=0.05), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split(":")[0] for line in err.splitlines()] == ["epoch 1/2", "epoch 2/2"]


def test_fit_logs_one_json_line_per_epoch(rng):
    log = io.StringIO()
    net = models.build("lenet-300-100")
    train, val = synthetic(400, rng), synthetic(100, rng)
    history = fit(net, train, Recipe(epochs=3, lr=0.05), val=val, test=val, log_file=log, progress=False)
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert lines == history and [r["epoch"] for r in lines] == [1, 2, 3]
    assert set(lines[0]) >= {"train_loss", "train_error", "val_error", "test_error", "seconds", "lr"}
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[-1]["val_error"] == net.error_rate(*val)


@pytest.mark.mnist
def test_short_training_on_real_mnist_learns(mnist_dir):
    images, labels = data.load_mnist("train", mnist_dir)
    (tr_x, tr_y), (va_x, va_y) = data.split_validation(images[:6000], labels[:6000], 1000)
    net = models.build("lenet-300-100")
    fit(net, (data.to_network_input(tr_x), tr_y), DEFAULT_RECIPES["lenet-300-100"].replace(epochs=2),
        progress=False)
    # 5,000 images, 2 epochs: a correct implementation is near 7% error; a broken one near 90%.
    assert net.error_rate(data.to_network_input(va_x), va_y) < 0.12


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_sgd_step_equals_the_numpy_rule(dtype, masked, rng):
    """fc1 (400,000 weights) takes the kernel's threaded path, the other parameters its serial one."""
    nets = [models.build("lenet-5", dtype, seed=1) for _ in range(2)]
    assert nets[0].params["fc1.weight"].size >= cpu.SGD_THREADS_FROM > nets[0].params["conv2.weight"].size
    mask = rng.random((500, 800)) < 0.3
    for net in nets:
        if masked:
            net.set_mask("fc1.weight", mask)
    fast, reference = SGD(nets[0], 0.9, 5e-4), SGD(nets[1], 0.9, 5e-4)
    for step in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in nets[0].params.items()}
        fast.step(grads, lr=0.05 / (step + 1))
        reference.reference_step(grads, lr=0.05 / (step + 1))
    for k in nets[0].params:
        assert np.array_equal(nets[0].params[k], nets[1].params[k]), k
        assert np.array_equal(fast.velocity[k], reference.velocity[k]), k


def test_a_copied_sgd_steps_its_own_network(rng):
    """copy.deepcopy of a network and its optimizer after a step: the copy's steps move the copy's
    weights (not views of the original's), the same as the original's steps move the original."""
    net = models.build("lenet-300-100", np.float32, seed=1)
    sgd = SGD(net, 0.9, 5e-4)
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in net.params.items()}
    sgd.step(grads, 0.05)
    twin = copy.deepcopy(sgd)
    assert twin.net is not net
    twin.step(grads, 0.05)
    sgd.step(grads, 0.05)
    for k in net.params:
        assert np.array_equal(twin.net.params[k], net.params[k]), k
        assert np.array_equal(twin.velocity[k], sgd.velocity[k]), k


def test_fast_sgd_step_with_a_column_ordered_mask_writes_positive_zeros(rng):
    """A mask in Fortran order (set_mask keeps the order it is given) still goes through the kernel,
    which writes +0.0 at the masked weights (the NumPy rule's w *= mask leaves -0.0 where w was
    negative): the bits of a C-ordered mask's run."""
    mask = rng.random((784, 300)) < 0.4
    nets = [models.build("lenet-300-100", np.float32, seed=1) for _ in range(2)]
    nets[0].set_mask("fc1.weight", mask.T)  # a Fortran-ordered (300, 784) view
    nets[1].set_mask("fc1.weight", np.ascontiguousarray(mask.T))
    assert not nets[0].masks["fc1.weight"].flags.c_contiguous
    optimizers = [SGD(net, 0.9, 5e-4) for net in nets]
    for step in range(2):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in nets[0].params.items()}
        for opt in optimizers:
            opt.step(grads, 0.05)
    for k in nets[0].params:
        assert nets[0].params[k].tobytes() == nets[1].params[k].tobytes(), k
    assert not np.signbit(nets[0].params["fc1.weight"][~mask.T]).any()


def test_fast_sgd_step_follows_replaced_arrays_and_settings(rng):
    """step keeps each parameter's flat views between steps; a resumed velocity, a new mask, a loaded
    state dict or a changed setting must reach the kernel all the same (the rule, as reference_step)."""
    nets = [models.build("lenet-300-100", np.float32, seed=1) for _ in range(2)]
    fast, reference = SGD(nets[0], 0.9, 5e-4), SGD(nets[1], 0.9, 5e-4)

    def step_both(lr):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in nets[0].params.items()}
        fast.step(grads, lr)
        reference.reference_step(grads, lr)

    def changes():
        yield  # as built
        for opt in (fast, reference):  # a resume: a new dict of new arrays
            opt.velocity = {k: v + np.float32(0.5) for k, v in opt.velocity.items()}
        yield
        mask = rng.random((300, 784)) < 0.4
        for net in nets:
            net.set_mask("fc1.weight", mask)
        yield
        mask = rng.random((300, 784)) < 0.2
        for net in nets:
            net.set_mask("fc1.weight", mask)
        yield
        state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in nets[0].params.items()}
        for net in nets:
            net.load_state_dict(state)
        yield
        for opt in (fast, reference):
            opt.weight_decay = 0.0
        yield
        for opt in (fast, reference):
            opt.momentum = 0.5
        yield

    for i, _ in enumerate(changes()):
        step_both(0.05 / (i + 1))
        step_both(0.04 / (i + 1))
        for k in nets[0].params:
            assert np.array_equal(nets[0].params[k], nets[1].params[k]), (i, k)
            assert np.array_equal(fast.velocity[k], reference.velocity[k]), (i, k)


def test_weight_average_is_the_mean_of_the_snapshots_and_keeps_masked_zeros(rng):
    from mpdref.train import WeightAverage

    mask = rng.random((30, 20)) < 0.3
    snapshots = [{"w": rng.standard_normal((30, 20)) * mask, "b": rng.standard_normal(20)} for _ in range(7)]
    params = {k: np.zeros_like(v) for k, v in snapshots[0].items()}
    average = WeightAverage(params)
    with pytest.raises(ValueError, match="no snapshot"):
        average.apply(params)
    average.add(snapshots[0])
    assert all(np.array_equal(average.mean[k], snapshots[0][k]) for k in params)  # the first: copied exactly
    for s in snapshots[1:]:
        average.add(s)
    average.apply(params)
    assert average.count == 7
    for k in params:
        np.testing.assert_allclose(params[k], np.mean([s[k] for s in snapshots], axis=0), rtol=1e-13, atol=1e-15)
    assert np.all(params["w"][~mask] == 0.0)
    with pytest.raises(ValueError, match="the mean of w is float32"):
        WeightAverage(params, {k: v.astype(np.float32) for k, v in average.mean.items()}, average.count)
    resumed = WeightAverage(params, average.mean, average.count)  # as a checkpoint restores it
    more = {"w": rng.standard_normal((30, 20)) * mask, "b": rng.standard_normal(20)}
    resumed.add(more)
    resumed.apply(params)
    for k in params:
        np.testing.assert_allclose(params[k], np.mean([s[k] for s in snapshots + [more]], axis=0), rtol=1e-13,
                                   atol=1e-15)


@pytest.mark.parametrize("distilled", [False, True])
def test_shifted_training_is_the_documented_loop(rng, distilled):
    """fit with recipe.shift: per epoch the permutation, then one offset pair per image from the same
    generator, each image shifted before its step; a teacher network sees the shifted images."""
    from mpdref.streams import random_stream
    from mpdref.train import Distillation

    x, labels = synthetic(80, rng)
    recipe = Recipe(epochs=2, batch_size=32, lr=0.05, shift=2)
    teacher = models.build("lenet-300-100", seed=9)
    distill = Distillation(teacher.logits(x), 3.0, 0.7, network=teacher) if distilled else None
    net = models.build("lenet-300-100", seed=1)
    fit(net, (x, labels), recipe, seed=4, progress=False, distill=distill)

    by_hand = models.build("lenet-300-100", seed=1)
    sgd = SGD(by_hand, recipe.momentum, recipe.weight_decay)
    draws = random_stream(4, "fit")
    moved = 0
    for epoch in range(recipe.epochs):
        order = draws.permutation(80)
        offsets = draws.integers(-2, 3, size=(80, 2))
        assert offsets.min() == -2 and offsets.max() == 2
        for b in range(3):
            idx = order[32 * b : 32 * (b + 1)]
            xb = data.shift_images(x[idx], offsets[32 * b : 32 * (b + 1)])
            moved += int(np.sum(np.any(xb != x[idx], axis=(1, 2, 3))))
            soft = None if distill is None else (teacher.forward(xb), 3.0, 0.7)
            _, grads, _ = by_hand.loss_grads_and_logits(xb, labels[idx], teacher=soft)
            sgd.step(grads, learning_rate(recipe, epoch * 3 + b, 3))
    assert moved > 100  # most images did move
    for k in net.params:
        assert np.array_equal(net.params[k], by_hand.params[k]), k
    unshifted = models.build("lenet-300-100", seed=1)
    fit(unshifted, (x, labels), recipe.replace(shift=0), seed=4, progress=False,
        distill=None if distill is None else Distillation(distill.logits, 3.0, 0.7))
    assert not np.array_equal(unshifted.params["fc1.weight"], net.params["fc1.weight"])


def test_shifted_distillation_needs_the_teacher_network(rng):
    from mpdref.train import Distillation

    x, labels = synthetic(64, rng)
    only_logits = Distillation(np.zeros((64, 10), np.float32))
    with pytest.raises(ValueError, match="shift = 1 distils from the teacher network"):
        fit(models.build("lenet-300-100"), (x, labels), Recipe(epochs=1, shift=1), progress=False,
            distill=only_logits)
    with pytest.raises(ValueError, match="need the teacher network"):
        only_logits.targets(np.arange(4), x[:4])
    teacher = models.build("lenet-5", dtype=np.float64)
    with_network = Distillation(np.zeros((64, 10), np.float32), network=teacher)
    logits, _, _ = with_network.targets(np.arange(4), x[:4])
    assert logits.dtype == np.float32  # the student's dtype, from a float64 teacher
    assert np.array_equal(logits, teacher.forward(x[:4].astype(np.float64)).astype(np.float32))
