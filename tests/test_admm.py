"""ADMM (mpdref.admm): the exact projections, the penalty's gradient, the iteration."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from compare import assert_close
from mpdref import admm, models
from mpdref.train import SGD


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 30), keep=st.floats(0.01, 1.0), seed=st.integers(0, 2**32 - 1), masked=st.booleans())
def test_sparse_projection_keeps_the_largest_allowed_magnitudes(n, keep, seed, masked):
    rng = np.random.default_rng(seed)
    w = rng.integers(-3, 4, (n, 3)).astype(np.float32)  # ties everywhere
    allowed = rng.random(w.shape) < 0.6 if masked else np.ones(w.shape, bool)
    z, kept = admm.project_sparse(w, keep, allowed if masked else None)
    count = min(round(keep * w.size), int(allowed.sum()))
    np.testing.assert_array_equal(z, naive.sparse_projection(w, count, allowed))
    assert int(kept.sum()) == count and not np.any(kept & ~allowed)
    assert z.dtype == w.dtype


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 5), seed=st.integers(0, 2**32 - 1), levels=st.sampled_from(["binary", "ternary", 2, 3]))
def test_the_scale_is_the_exact_optimum_over_every_assignment(n, seed, levels):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n) * rng.choice([0.1, 1.0, 10.0], n)  # spread magnitudes: many pieces
    z, scale = admm.project_quantized(w, levels)
    error = float(np.sum((w - z) ** 2))
    best = naive.quantization_error(w, admm.level_magnitudes(levels))
    assert error <= best + 1e-12 * max(1.0, best), (error, best)
    # z is a point of scale · Q: every entry on a level
    q = z / scale
    assert np.all(np.isin(np.abs(np.round(q, 9)), admm.level_magnitudes(levels)))


def test_binary_scale_is_the_mean_magnitude_and_masked_weights_stay_zero(rng):
    w = rng.standard_normal((20, 30))
    mask = rng.random(w.shape) < 0.3
    z, scale = admm.project_quantized(w, "binary", mask)
    assert scale == pytest.approx(np.abs(w[mask]).mean(), rel=1e-12)
    assert np.all(z[~mask] == 0)
    np.testing.assert_array_equal(z[mask], scale * np.where(w[mask] < 0, -1, 1))


def test_the_exact_scale_beats_admm_nn_s_scan(rng):
    """ADMM-NN scans s over 0.9-1.1 · max|w| / n; the exact scale is never worse, and on bell-shaped
    weights markedly better."""
    w = rng.standard_normal(5000)
    for bits in (2, 3, 4):
        z, _ = admm.project_quantized(w, bits)
        top = 2 ** (bits - 1)
        scan = min(float(np.sum((w - s * admm.round_to_levels(w / s, admm.level_magnitudes(bits))) ** 2))
                   for s in np.linspace(0.9, 1.1, 201) * np.abs(w).max() / top)
        assert float(np.sum((w - z) ** 2)) < 0.9 * scan


def test_bad_levels_are_refused():
    for levels in ("quaternary", 1, 9, True, 2.0):
        with pytest.raises(ValueError, match="levels must be 'binary', 'ternary' or an integer b in \\[2, 8\\]"):
            admm.level_magnitudes(levels)
    with pytest.raises(ValueError, match="cannot quantize NaN or infinite weights"):
        admm.project_quantized(np.array([1.0, np.nan]), "binary")


def test_the_penalty_gradient_by_finite_differences(rng):
    w, z, u = rng.standard_normal((3, 4, 5))
    value, grad = admm.penalty(w, z, u, 0.7)
    assert value == pytest.approx(0.35 * np.sum((w - z + u) ** 2), rel=1e-12)
    v = rng.standard_normal(w.shape)
    numeric = naive.directional_derivative(lambda t: admm.penalty(w + t * v, z, u, 0.7)[0], 0.0, 1.0)
    assert numeric == pytest.approx(float(np.sum(grad * v)), rel=1e-7)


def test_one_admm_update_is_the_z_and_u_steps(rng):
    net = models.build("lenet-300-100", seed=0)
    state = admm.ADMMState(net.params, {"fc1.weight": admm.sparse_constraint(0.1),
                                        "fc2.weight": admm.levels_constraint("ternary")}, rho=1e-3, rho_growth=1.3)
    np.testing.assert_array_equal(state.z["fc1.weight"], admm.project_sparse(net.params["fc1.weight"], 0.1)[0])
    assert np.all(state.u["fc2.weight"] == 0)
    w = {k: v + 0.01 for k, v in net.params.items()}  # as if a W-step had moved them
    u_before = {k: v.copy() for k, v in state.u.items()}
    report = state.update(w)
    for name in ("fc1.weight", "fc2.weight"):
        np.testing.assert_array_equal(state.z[name], state.projections[name](w[name] + u_before[name]))
        np.testing.assert_array_equal(state.u[name], u_before[name] + w[name] - state.z[name])
        assert report["layers"][name]["residual"] == pytest.approx(
            np.linalg.norm(w[name] - state.z[name]) / np.linalg.norm(w[name]), rel=1e-6)
    assert report["rho"] == 1e-3 and state.rho == pytest.approx(1.3e-3)


def test_the_w_step_adds_the_penalty_gradient_before_masked_sgd(rng):
    net = models.build("lenet-300-100", seed=0)
    twin = models.build("lenet-300-100", seed=0)
    state = admm.ADMMState(net.params, {"fc1.weight": admm.sparse_constraint(0.2)}, rho=0.5)
    grads = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in net.params.items()}
    extra = state.penalty_gradients(net.params)
    admm.ADMMSGD(SGD(net, 0.9, 1e-4), state).step(grads, 0.01)
    SGD(twin, 0.9, 1e-4).step({k: g + extra[k] if k in extra else g for k, g in grads.items()}, 0.01)
    for k in net.params:
        assert_close(net.params[k], twin.params[k], rtol=0, atol=0, name=k)
    assert not np.array_equal(extra["fc1.weight"], 0)


def test_straight_through_steps_move_the_float_copies_and_keep_the_weights_on_levels(rng):
    """One step: the gradient (taken at the weights on their levels) moves the float copy W̃ exactly as
    the optimizer would move a weight that is W̃, and the network then holds Π(W̃)."""
    net = models.build("lenet-300-100", seed=0)
    mask = rng.random(net.params["fc2.weight"].shape) < 0.5
    net.set_mask("fc2.weight", mask)
    projections = {"fc1.weight": admm.levels_constraint("binary"),
                   "fc2.weight": admm.levels_constraint("ternary", mask)}
    start = {k: v.copy() for k, v in net.params.items()}
    ste = admm.StraightThroughSGD(SGD(net, 0.9, 1e-4), projections)
    for name, project in projections.items():  # on the levels from the start; the copies are the weights
        np.testing.assert_array_equal(net.params[name], project(start[name]))
        np.testing.assert_array_equal(ste.latent[name], start[name])
    twin = models.build("lenet-300-100", seed=0)  # a network whose weights are the float copies
    twin.set_mask("fc2.weight", mask)
    twin_sgd = SGD(twin, 0.9, 1e-4)
    for _ in range(2):
        grads = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in net.params.items()}
        ste.step(grads, 0.05)
        twin_sgd.step(grads, 0.05)
    for name, project in projections.items():
        np.testing.assert_array_equal(ste.latent[name], twin.params[name])
        np.testing.assert_array_equal(net.params[name], project(twin.params[name]))
        assert len(np.unique(np.abs(net.params[name][net.params[name] != 0]))) == 1, name
    assert not np.array_equal(ste.latent["fc1.weight"], start["fc1.weight"])
    assert np.all(net.params["fc2.weight"][~mask] == 0) and np.all(ste.latent["fc2.weight"][~mask] == 0)
    np.testing.assert_array_equal(net.params["fc3.weight"], twin.params["fc3.weight"])  # unconstrained: plain SGD


@pytest.mark.parametrize("levels, bits", [("binary", 1), ("ternary", 2), (2, 2), (4, 4)])
def test_weight_bits(levels, bits):
    assert admm.weight_bits(levels) == bits


# ----------------------------------------------------------------------------- the stages


def _admm_config(mnist_dir, **prune):
    from mpdref.runner.config import resolve_config

    return resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 5},
        "data": {"root": str(mnist_dir), "train_limit": 320, "validation_size": 100},
        "stages": [{"type": "train", "epochs": 1, "batch_size": 32},
                   {"type": "admm_prune", "keep": {"fc1.weight": 0.1, "fc2.weight": 0.2}, "updates": 3,
                    "epochs_per_update": 1, "rho": 0.01, "rho_growth": 2.0, "batch_size": 32, **prune},
                   {"type": "train", "name": "retrain", "epochs": 1, "batch_size": 32, "lr": 0.01},
                   {"type": "admm_quantize", "levels_all": "ternary", "updates": 2, "batch_size": 32,
                    "teacher": "train"},
                   {"type": "train", "name": "biases", "epochs": 1, "batch_size": 32,
                    "freeze": ["fc1.weight", "fc2.weight", "fc3.weight"]},
                   {"type": "encode"}]})


def test_dead_weights_are_those_no_later_kept_weight_reads(rng):
    """LeNet-300-100 (dense layers: the rule is exact): fc3 reads fc2's units 0-9 only, fc2's rows 10-99
    are dead, and fc1's rows that only those rows read; dropping them changes no logit, bit for bit."""
    from mpdref.prune import dead_weights, drop_dead_weights

    net = models.build("lenet-300-100", seed=2)
    fc3 = np.zeros((10, 100), bool)
    fc3[:, :10] = True
    net.set_mask("fc3.weight", fc3)
    fc2 = rng.random((100, 300)) < 0.05
    net.set_mask("fc2.weight", fc2)
    dead = dead_weights(net)
    assert not dead["fc3.weight"].any()
    np.testing.assert_array_equal(dead["fc2.weight"], fc2 & (np.arange(100) >= 10)[:, None])
    read_by_live_fc2 = fc2[:10].any(axis=0)  # fc1 units that a live fc2 row reads
    np.testing.assert_array_equal(dead["fc1.weight"], ~read_by_live_fc2[:, None] & np.ones((300, 784), bool))
    x = rng.standard_normal((7, 1, 28, 28)).astype(np.float32)
    before = net.forward(x)
    dropped = drop_dead_weights(net)
    assert dropped == {"fc1.weight": int(dead["fc1.weight"].sum()), "fc2.weight": int(dead["fc2.weight"].sum()),
                       "fc3.weight": 0}
    np.testing.assert_array_equal(net.forward(x), before)
    assert not any(d.any() for d in dead_weights(net).values())  # nothing left to drop


@pytest.mark.parametrize("name", ["lenet-5", "deep-mnist"])
def test_dropping_dead_weights_leaves_every_logit_unchanged(name, rng):
    """Convolutions and pooling (the rule per channel), ReLU and dropout: sparse random masks leave
    units and filters unread; what is dropped changes no logit, and each dropped weight alone,
    perturbed in the original network, changes none either."""
    from mpdref.prune import dead_weights, drop_dead_weights

    net = models.build(name, seed=3)
    for w in net.weight_names():
        net.set_mask(w, rng.random(net.params[w].shape) < {"lenet-5": 0.01, "deep-mnist": 0.003}[name])
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    before = net.forward(x)
    dead = dead_weights(net)
    for w, d in dead.items():
        for index in list(zip(*np.nonzero(d)))[:3]:
            probe = models.build(name, seed=3)
            probe.params = {k: v.copy() for k, v in net.params.items()}
            probe.params[w][index] += 1.0
            np.testing.assert_array_equal(probe.forward(x), before)
    dropped = drop_dead_weights(net)
    assert sum(dropped.values()) >= sum(int(d.sum()) for d in dead.values()) > 0
    np.testing.assert_array_equal(net.forward(x), before)


@pytest.mark.mnist
def test_admm_stages_prune_exactly_quantize_onto_levels_and_log_each_update(tmp_path, mnist_dir):
    import json

    from mpdref.compress import size_table
    from mpdref.runner import run_experiment

    metrics = run_experiment(_admm_config(mnist_dir), tmp_path / "run", progress=False)
    stages = {s["stage"]: s for s in metrics["stages"]}
    net = models.load(tmp_path / "run" / "model.h5")
    # pruning: exactly round(keep · size) nonzeros, and the masks hold them through the retraining
    for name, keep in (("fc1.weight", 0.1), ("fc2.weight", 0.2)):
        assert int(net.masks[name].sum()) == round(keep * net.params[name].size)
        assert np.all(net.params[name][~net.masks[name]] == 0)
    assert "fc3.weight" not in net.masks or net.masks["fc3.weight"].all()
    assert stages["admm_prune"]["updates"] == 3
    # quantization: each weight is scale · {-1, 0, +1} on its kept positions, the frozen stage kept it
    after_admm = models.load(tmp_path / "run" / "stages" / "04-admm_quantize.h5")
    for name in net.weight_names():
        scale = stages["admm_quantize"]["layers"][name]["scale"]
        w = net.params[name]
        levels = np.unique(np.round(w[w != 0] / scale, 4))
        assert set(levels) <= {-1.0, 1.0}, name
        assert np.array_equal(w, after_admm.params[name]), f"{name} moved in the frozen retraining"
    assert not np.array_equal(net.params["fc1.bias"], after_admm.params["fc1.bias"])  # biases did train
    # the log: one record per Z/U update with residual, violation, rho and validation error
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    updates = [r for r in log if r.get("stage") == "admm_prune" and "admm" in r]
    assert [r["admm"]["update"] for r in updates] == [1, 2, 3]
    assert [r["admm"]["rho"] for r in updates] == [0.01, 0.02, 0.04]
    for r in updates:
        assert set(r["admm"]["layers"]) == {"fc1.weight", "fc2.weight"} and "val_error" in r
        assert all(0 <= v["residual"] and 0 <= v["violation"] for v in r["admm"]["layers"].values())
    assert (tmp_path / "run" / "figures" / "admm-admm_prune.png").stat().st_size > 1000
    # the file: three-symbol codebooks (ternary levels without the zero, which the mask stores)
    table = size_table(tmp_path / "run" / "model.mpdz")
    assert all(layer["weight_bits_fixed"] <= 2 for layer in table["layers"])
    # the weight-data-only count, recomputed from the network: kept weights x ceil(log2 distinct values)
    data_bits = 0
    for name in net.weight_names():
        kept = net.params[name][net.masks[name]] if name in net.masks else net.params[name].ravel()
        data_bits += kept.size * max(1, int(np.ceil(np.log2(len(np.unique(kept))))))
    assert table["weight_data_bits"] == data_bits
    assert table["weight_data_ratio"] == 32 * sum(net.params[n].size for n in net.weight_names()) / data_bits


@pytest.mark.mnist
def test_admm_prune_can_drop_the_dead_weights_after_its_projection(tmp_path, mnist_dir):
    from mpdref.prune import dead_weights
    from mpdref.runner import run_experiment
    from mpdref.runner.config import resolve_config

    config = resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 5},
        "data": {"root": str(mnist_dir), "train_limit": 320, "validation_size": 100},
        "stages": [{"type": "train", "epochs": 1, "batch_size": 32},
                   {"type": "admm_prune", "keep": {"fc2.weight": 0.2, "fc3.weight": 0.02}, "updates": 2,
                    "rho": 0.01, "batch_size": 32, "drop_dead": True}]})
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    layers = metrics["stages"][1]["layers"]
    net = models.load(tmp_path / "run" / "model.h5")
    assert not any(d.any() for d in dead_weights(net).values())
    assert int(net.masks["fc3.weight"].sum()) == 20  # fc3 reads at most 20 of fc2's 100 units
    fc2_kept = int(net.masks["fc2.weight"].sum())
    assert layers["fc2.weight"]["dead_dropped"] == round(0.2 * 30000) - fc2_kept > 0
    rows_read = net.masks["fc3.weight"].any(axis=0)
    assert not net.masks["fc2.weight"][~rows_read].any()  # fc2 keeps only the units fc3 reads
    assert layers["fc2.weight"]["kept"] == fc2_kept / 30000


@pytest.mark.mnist
@pytest.mark.parametrize("stop_after", [4, 9])
def test_an_admm_run_interrupted_in_the_middle_resumes_bit_identically(tmp_path, mnist_dir, monkeypatch,
                                                                        stop_after):
    from conftest import assert_resume_is_bit_identical

    # checkpoints: 1, 2 the train stage's epoch and end; 3-5 admm_prune's epochs (Z, U and rho in them),
    # 6 its end; 7, 8 the retraining; 9 admm_quantize's first epoch
    assert_resume_is_bit_identical(_admm_config(mnist_dir), tmp_path, monkeypatch, stop_after)


def _straight_through_config(mnist_dir):
    from mpdref.runner.config import resolve_config

    return resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 3},
        "data": {"root": str(mnist_dir), "train_limit": 320, "validation_size": 100},
        "stages": [{"type": "train", "epochs": 1, "batch_size": 32},
                   {"type": "admm_quantize", "levels_all": "binary", "updates": 2, "batch_size": 32},
                   {"type": "train", "name": "on-levels", "epochs": 2, "batch_size": 32, "lr": 0.5,
                    "levels": {"fc1.weight": "binary", "fc2.weight": "binary", "fc3.weight": 2},
                    "teacher": "train"}]})


@pytest.mark.mnist
def test_a_train_stage_on_levels_moves_weights_across_levels_and_ends_on_them(tmp_path, mnist_dir):
    from mpdref.runner import run_experiment

    metrics = run_experiment(_straight_through_config(mnist_dir), tmp_path / "run", progress=False)
    report = metrics["stages"][2]["levels"]
    net = models.load(tmp_path / "run" / "model.h5")
    before = models.load(tmp_path / "run" / "stages" / "02-admm_quantize.h5")
    for name, levels in (("fc1.weight", [1.0]), ("fc2.weight", [1.0]), ("fc3.weight", [1.0, 2.0])):
        w, scale = net.params[name], report[name]["scale"]
        assert set(np.unique(np.abs(w / scale).round(5))) <= set(levels), name
        assert not np.array_equal(np.sign(w), np.sign(before.params[name])), f"no {name} crossed a level"
    assert not np.array_equal(net.params["fc1.bias"], before.params["fc1.bias"])


@pytest.mark.mnist
def test_a_train_stage_on_levels_interrupted_resumes_bit_identically(tmp_path, mnist_dir, monkeypatch):
    from conftest import assert_resume_is_bit_identical

    # checkpoints: 1, 2 the first train stage; 3, 4 admm_quantize's epochs, 5 its end; 6 the first epoch
    # on the levels (its float copies in it)
    assert_resume_is_bit_identical(_straight_through_config(mnist_dir), tmp_path, monkeypatch, 6)


def test_admm_settings_are_checked(tmp_path):
    from mpdref.runner.config import ConfigError, resolve_config

    def problems(stage):
        with pytest.raises(ConfigError) as e:
            resolve_config({"experiment": {"model": "lenet-5"}, "stages": [stage]})
        return str(e.value)

    assert "exactly one of keep and keep_all" in problems({"type": "admm_prune"})
    assert "'fc9.weight' is not a weight of lenet-5" in problems({"type": "admm_prune", "keep": {"fc9.weight": 0.1}})
    assert "expected a number in (0, 1]" in problems({"type": "admm_prune", "keep_all": 1.5})
    assert "rho" in problems({"type": "admm_prune", "keep_all": 0.1, "rho": 0})
    assert "levels_all" in problems({"type": "admm_quantize", "levels_all": "quaternary"})
    assert "levels_all" in problems({"type": "train", "levels_all": "quaternary"})
    assert "at most one of levels and levels_all" in problems(
        {"type": "train", "levels_all": "binary", "levels": {"fc1.weight": 2}})
    assert "freeze and levels both name fc1.weight" in problems(
        {"type": "train", "levels_all": "binary", "freeze": ["fc1.weight"]})
    assert "levels: only with form" in problems({"type": "train", "form": "block", "levels": {"fc1.weight": 2}})
    assert "levels.fc1.weight" in problems({"type": "admm_quantize", "levels": {"fc1.weight": 9}})
    assert "freeze: only with form" in problems({"type": "train", "freeze": ["fc1.weight"], "form": "block"})
