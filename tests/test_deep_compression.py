"""Deep Compression stages 1-2: magnitude pruning, sensitivity, 1-D k-means, trained quantization."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from compare import assert_close
from mpdref import models
from mpdref.prune import magnitude_mask, prune, sensitivity
from mpdref.quantize import CodebookSGD, codebook_of, initial_centroids, kmeans_1d, quantize_weight, sse
from conftest import assert_resume_is_bit_identical


# ----------------------------------------------------------------------------- pruning


def test_keep_fraction_keeps_exactly_the_largest_magnitudes(rng):
    w = rng.standard_normal((30, 40))
    m = magnitude_mask(w, keep=0.1)
    assert m.sum() == 120
    assert np.abs(w[m]).min() >= np.abs(w[~m]).max()
    # pruning again never revives a weight, and counts against the whole layer
    m2 = magnitude_mask(w * m, m, keep=0.05)
    assert m2.sum() == 60 and not np.any(m2 & ~m)


def test_quality_threshold_is_q_times_the_std_of_the_kept_weights(rng):
    w = rng.standard_normal((50, 50))
    m = magnitude_mask(w, quality=1.0)
    t = np.std(w)
    np.testing.assert_array_equal(m, np.abs(w) >= t)
    kept = np.ones_like(m)
    kept[:10] = False
    m2 = magnitude_mask(w, kept, quality=0.5)
    np.testing.assert_array_equal(m2, kept & (np.abs(w) >= 0.5 * np.std(w[kept])))
    with pytest.raises(ValueError, match="exactly one"):
        magnitude_mask(w)
    with pytest.raises(ValueError, match="keep"):
        magnitude_mask(w, keep=1.5)


def test_pruned_weights_and_momentum_stay_zero_through_retraining(rng):
    from mpdref.train import SGD

    net = models.build("lenet-300-100", np.float32, seed=0)
    kept = prune(net, keep={"fc1.weight": 0.1, "fc2.weight": 0.2})
    assert abs(kept["fc1.weight"] - 0.1) < 1e-3
    sgd = SGD(net, 0.9, 1e-4)
    x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    for _ in range(3):
        _, grads, _ = net.loss_grads_and_logits(x, y)
        sgd.step(grads, 0.1)
    for name in ("fc1.weight", "fc2.weight"):
        m = net.masks[name]
        assert np.all(net.params[name][~m] == 0.0) and np.all(sgd.velocity[name][~m] == 0.0)
        assert np.any(net.params[name][m] != 0.0)


def test_sensitivity_leaves_the_network_unchanged(rng):
    net = models.build("lenet-300-100", np.float64, seed=0)
    before = {k: v.copy() for k, v in net.params.items()}
    x = rng.standard_normal((50, 1, 28, 28))
    y = rng.integers(0, 10, 50)
    table = sensitivity(net, ["fc1.weight", "fc3.weight"], [1.0, 0.1, 0.01], x, y)
    assert set(table) == {"fc1.weight", "fc3.weight"} and all(len(v) == 3 for v in table.values())
    assert table["fc1.weight"][0] == net.error_rate(x, y)  # keeping 100% changes nothing
    assert not net.masks
    for k in before:
        np.testing.assert_array_equal(net.params[k], before[k])


# ----------------------------------------------------------------------------- 1-D k-means


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=11), st.integers(1, 5), st.data())
def test_optimal_kmeans_equals_brute_force_and_never_loses_to_lloyd(values, k, data):
    values = np.array(values)
    k = min(k, len(values))
    c, labels = kmeans_1d(values, k, method="optimal")
    best = naive.optimal_kmeans_sse(values, k)
    assert sse(values, c, labels) <= best + 1e-9 * (1 + best)
    init = data.draw(st.sampled_from(["linear", "density", "random"]))
    c2, l2 = kmeans_1d(values, k, init=init, rng=np.random.default_rng(0))
    assert sse(values, c, labels) <= sse(values, c2, l2) + 1e-9 * (1 + best)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_lloyd_on_prefix_sums_equals_the_naive_lloyd(init, rng):
    # heavy tails: linear init leaves clusters empty, which exercises their relocation
    values = np.concatenate([rng.laplace(0, 0.3, 700), 3 + 0.2 * rng.standard_normal(300), [40.0, -25.0]])
    for iterations in (1, 2, 5, 50):
        c, labels = kmeans_1d(values, 8, init=init, iterations=iterations, rng=np.random.default_rng(1))
        expected = naive.lloyd(values, initial_centroids(values, 8, init, np.random.default_rng(1)), iterations)
        assert_close(c, expected, rtol=1e-12, atol=1e-12, name="centroids")
        np.testing.assert_array_equal(labels, naive.nearest_centroid(values, c))


def test_kmeans_inputs_are_checked():
    with pytest.raises(ValueError, match="k = 5"):
        kmeans_1d(np.arange(3.0), 5)
    with pytest.raises(ValueError, match="NaN"):
        kmeans_1d(np.array([1.0, np.nan]), 1)
    with pytest.raises(ValueError, match="unknown init"):
        kmeans_1d(np.arange(3.0), 2, init="kmeans++")


# ----------------------------------------------------------------------------- trained quantization


def test_quantization_touches_only_the_kept_weights(rng):
    w = rng.standard_normal((20, 30)).astype(np.float32)
    mask = rng.random((20, 30)) < 0.3
    w *= mask
    q = quantize_weight(w, mask, bits=3)
    assert np.all(q[~mask] == 0.0)
    kept, centroids, labels = codebook_of(q, mask)
    assert len(centroids) <= 8 and np.array_equal(q.ravel()[kept], centroids[labels])


def _quantized_net(rng):
    net = models.build("lenet-300-100", np.float64, seed=1)
    prune(net, keep={"fc1.weight": 0.2, "fc2.weight": 0.3})
    for name, bits in (("fc1.weight", 3), ("fc2.weight", 2)):
        net.params[name] = quantize_weight(net.params[name], net.masks[name], bits)
    return net


def test_centroid_gradient_is_the_derivative_of_the_loss(rng):
    net = _quantized_net(rng)
    x = rng.standard_normal((16, 1, 28, 28))
    y = rng.integers(0, 10, 16)
    _, grads, _ = net.loss_grads_and_logits(x, y, train=False)
    for name in ("fc1.weight", "fc2.weight"):
        kept, centroids, labels = codebook_of(net.params[name], net.masks[name])
        analytic = CodebookSGD.centroid_gradient(grads[name], kept, labels, len(centroids))
        w0 = net.params[name].copy()
        for c in range(len(centroids)):

            def loss_at(t):  # the loss with centroid c moved by t
                shifted = centroids.copy()
                shifted[c] += t
                w = w0.copy()
                w.ravel()[kept] = shifted[labels]
                net.params[name] = w
                return net.loss_grads_and_logits(x, y, train=False)[0]

            numeric = naive.directional_derivative(loss_at, 0.0, 1.0, eps=1e-6)
            net.params[name] = w0
            assert abs(numeric - analytic[c]) <= 1e-6 * max(1.0, abs(analytic[c])), (name, c)


def test_codebook_training_keeps_every_weight_on_its_centroid(rng):
    net = _quantized_net(rng)
    opt = CodebookSGD(net, ["fc1.weight", "fc2.weight"], momentum=0.9)
    before = {n: codebook_of(net.params[n], net.masks[n]) for n in ("fc1.weight", "fc2.weight")}
    x = rng.standard_normal((32, 1, 28, 28))
    y = rng.integers(0, 10, 32)
    for _ in range(3):
        _, grads, _ = net.loss_grads_and_logits(x, y)
        opt.step(grads, 0.05)
    for name, (kept, c0, l0) in before.items():
        kept1, c1, l1 = codebook_of(net.params[name], net.masks[name])
        np.testing.assert_array_equal(kept1, kept)
        assert len(c1) == len(c0) and not np.array_equal(c1, c0)  # the centroids moved, their number did not
        assert np.all(net.params[name][~net.masks[name]] == 0.0)
        # the assignment is fixed: weights that shared a centroid still share one
        assert len(np.unique(np.stack([l0, l1]), axis=1).T) == len(c0)
    # velocity round-trips through the parameter layout (checkpoints)
    v = opt.velocity
    other = CodebookSGD(net, ["fc1.weight", "fc2.weight"], momentum=0.9)
    other.velocity = v
    for name in opt.centroid_velocity:
        np.testing.assert_array_equal(np.sort(other.centroid_velocity[name]), np.sort(opt.centroid_velocity[name]))


@pytest.mark.mnist
def test_prune_quantize_pipeline_runs_and_reports(tmp_path, mnist_dir):
    from mpdref.runner import run_experiment
    from mpdref.runner.config import ConfigError, resolve_config

    raw = {
        "experiment": {"model": "lenet-300-100", "seed": 0},
        "data": {"root": str(mnist_dir), "train_limit": 2000, "validation_size": 500},
        "stages": [{"type": "train", "epochs": 2},
                   {"type": "sensitivity", "layers": ["fc1.weight"], "keep": [1.0, 0.1]},
                   {"type": "prune", "keep": {"fc1.weight": 0.1, "fc2.weight": 0.2}},
                   {"type": "train", "epochs": 1, "lr": 0.01},
                   {"type": "quantize", "bits_all": 4, "epochs": 1},
                   {"type": "encode"}]}
    metrics = run_experiment(resolve_config(raw), tmp_path / "run", progress=False)
    assert metrics["test_error"] < 0.3
    net = models.load(tmp_path / "run" / "model.h5")
    for name in net.weight_names():
        kept, centroids, _ = codebook_of(net.params[name], net.masks.get(name))
        assert len(centroids) <= 16
    assert abs(net.masks["fc1.weight"].mean() - 0.1) < 1e-3
    report = json.loads((tmp_path / "run" / "sensitivity.json").read_text())
    assert report["keep"] == [1.0, 0.1] and len(report["error"]["fc1.weight"]) == 2
    encoded = metrics["stages"][-1]
    assert encoded["same_predictions"] and encoded["ratio"] > 10
    assert encoded["file_bytes"] == (tmp_path / "run" / "model.mpdz").stat().st_size
    for figure in ("sensitivity.png", "quantize.png"):
        assert (tmp_path / "run" / "figures" / figure).exists()
    bad = dict(raw, stages=[{"type": "prune", "keep": {"fc9.weight": 0.1}}, {"type": "quantize"}])
    with pytest.raises(ConfigError) as e:
        resolve_config(bad)
    assert "fc9.weight" in str(e.value) and "bits" in str(e.value)


@pytest.mark.mnist
@pytest.mark.parametrize("stop_after", [2, 3, 4])
def test_quantize_stage_resumes_bit_identically(tmp_path, mnist_dir, monkeypatch, stop_after):
    from mpdref.runner.config import resolve_config

    config = resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 3},
        "data": {"root": str(mnist_dir), "train_limit": 320, "validation_size": 100},
        "stages": [{"type": "prune", "keep": {"fc1.weight": 0.2}},
                   {"type": "quantize", "bits": {"fc1.weight": 3, "fc2.weight": 4}, "epochs": 3, "batch_size": 32}]})
    assert_resume_is_bit_identical(config, tmp_path, monkeypatch, stop_after)
