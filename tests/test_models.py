import h5py
import numpy as np
import pytest

import naive
from compare import assert_close, max_norm_atol
from conftest import needs_torch
from mpdref import models
from mpdref.io import FormatError

PARAMETER_COUNTS = {"lenet-300-100": 266_610, "lenet-5": 431_080, "deep-mnist": 3_274_634}


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_parameter_names_shapes_and_counts(name):
    net = models.build(name)
    assert net.num_parameters() == PARAMETER_COUNTS[name]
    assert list(net.params) == list(models.parameter_shapes(name))
    assert all(v.dtype == np.float32 for v in net.params.values())
    logits = net.forward(np.zeros((3, 1, 28, 28), np.float32))
    assert logits.shape == (3, 10) and logits.dtype == np.float32


def test_float32_and_float64_networks_of_one_seed_agree():
    a, b = models.build("lenet-5", np.float32, seed=3), models.build("lenet-5", np.float64, seed=3)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k].astype(np.float32))
    assert not np.array_equal(models.build("lenet-5", seed=4).params["conv1.weight"], a.params["conv1.weight"])


def _kink_pattern(net, x):
    """Which side of every kink the network is on: ReLU signs and max-pool winners."""
    pattern = []
    for layer in net.layers:
        x, cache = layer.forward(net.params, x, False, None)
        if isinstance(layer, models.ReLU):
            pattern.append(cache > 0)
        elif isinstance(layer, models.MaxPool2d):
            pattern.append(cache[0])
    return pattern


@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_whole_network_gradients_by_finite_differences(name, rng):
    net = models.build(name, np.float64, seed=1)
    x = rng.standard_normal((2, 1, 28, 28))
    y = np.array([3, 7])
    # train=False: dropout off, so the loss is a deterministic function of the parameters.
    _, grads = net.loss_and_grads(x, y, train=False)
    base = {k: v.copy() for k, v in net.params.items()}
    eps = 1e-5
    checked = 0
    for _ in range(20):
        direction = {k: rng.standard_normal(v.shape) for k, v in base.items()}
        norm = np.sqrt(sum(np.sum(v * v) for v in direction.values()))
        direction = {k: v / norm for k, v in direction.items()}  # a unit step moves every unit little

        def at(t):
            net.params = {k: base[k] + t * direction[k] for k in base}

        # Central differences are only exact to O(eps²) where the loss is smooth: skip a
        # direction that crosses a ReLU or max-pool kink between the two points.
        at(eps)
        plus = _kink_pattern(net, x)
        at(-eps)
        minus = _kink_pattern(net, x)
        if any(not np.array_equal(p, m) for p, m in zip(plus, minus)):
            continue

        def loss_at(t):
            at(t)
            return float(net.loss_and_grads(x, y, train=False)[0])

        numeric = naive.directional_derivative(loss_at, 0.0, 1.0, eps=eps)
        analytic = sum(float(np.sum(grads[k] * direction[k])) for k in base)
        assert abs(numeric - analytic) <= 1e-6 * max(abs(numeric), 1e-8)
        checked += 1
        if checked == 2:
            break
    net.params = base
    assert checked == 2, "no direction free of kinks was found"


@needs_torch
@pytest.mark.parametrize("name", models.ARCHITECTURES)
def test_logits_loss_and_every_gradient_agree_with_torch_float64(name, rng):
    import torch
    import torch.nn.functional as F

    torch_twin = pytest.importorskip("mpdref.interop.torch_twin", reason="the interop extra is not installed")
    m = torch_twin.torch_network(name).double()  # nn.Sequential of torch's own layers, named as mpdref's
    net = models.build(name, np.float64)
    net.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})  # PyTorch weights load directly
    x = rng.standard_normal((4, 1, 28, 28))
    y = np.array([0, 9, 4, 4])
    logits_t = m.eval()(torch.tensor(x))  # dropout off, as train=False below
    loss_t = F.cross_entropy(logits_t, torch.tensor(y))
    loss_t.backward()
    loss, grads = net.loss_and_grads(x, y, train=False)
    logits = net.forward(x)
    # Norm-wise relative errors, max|ours - theirs| <= 1e-10·max|...|: rtol = 0, atol = 1e-10·max|...|
    # (for the logits relative to ours, for the gradients to PyTorch's).
    assert_close(logits, logits_t.detach().numpy(), rtol=0, atol=max_norm_atol(1e-10, logits), name="logits")
    assert abs(loss - loss_t.item()) <= 1e-10 * loss_t.item()
    for k, p in m.named_parameters():
        theirs = p.grad.numpy()
        assert_close(grads[k], theirs, rtol=0, atol=max_norm_atol(1e-10, theirs), name=f"gradient of {k}")


def test_state_dict_round_trip_and_errors():
    a, b = models.build("lenet-300-100", seed=1), models.build("lenet-300-100", seed=2)
    b.load_state_dict(a.state_dict())
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    state = a.state_dict()
    state["fc1.weight"] = state["fc1.weight"][:, :10]
    with pytest.raises(ValueError, match="fc1.weight has shape"):
        b.load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({"fc1.weight": a.params["fc1.weight"]})
    with pytest.raises(ValueError, match="unknown network"):
        models.build("resnet")


def test_set_mask_zeroes_weights_and_is_validated(rng):
    net = models.build("lenet-300-100")
    mask = rng.random((300, 784)) < 0.1
    net.set_mask("fc1.weight", mask)
    assert np.all(net.params["fc1.weight"][~mask] == 0.0)
    assert np.all(net.params["fc1.weight"][mask] != 0.0)
    with pytest.raises(ValueError, match="shape"):
        net.set_mask("fc2.weight", mask)
    with pytest.raises(ValueError, match="only 0 and 1"):
        net.set_mask("fc1.weight", mask * 2)


def test_save_and_load_round_trip_with_masks(tmp_path, rng):
    net = models.build("lenet-5", np.float64, seed=5)
    net.set_mask("fc1.weight", rng.random((500, 800)) < 0.5)
    path = tmp_path / "m.h5"
    models.save(net, path, {"note": "test"})
    back = models.load(path)
    assert back.name == "lenet-5" and back.dtype == np.float64 and back.metadata == {"note": "test"}
    for k in net.params:
        np.testing.assert_array_equal(back.params[k], net.params[k])
    np.testing.assert_array_equal(back.masks["fc1.weight"], net.masks["fc1.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]  # no temporary file left behind


def _saved(tmp_path):
    path = tmp_path / "m.h5"
    models.save(models.build("lenet-300-100"), path)
    return path


def _rewrite(path, corrupt):
    """Copy the model file's content into a new, correctly checksummed file, changed by `corrupt`.

    This reaches the content checks: a file changed after it was written is caught by its checksum
    before any of them (see test_damaged_bytes_are_caught_by_the_checksum).
    """
    from mpdref.io.hdf5 import write_verified_hdf5

    with h5py.File(path, "r") as src, write_verified_hdf5(path.with_suffix(".new")) as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        for g in src:
            src.copy(src[g], dst, name=g)
        corrupt(dst)
    path.with_suffix(".new").replace(path)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda f: f.attrs.__setitem__("format", "keras"), "not an mpdref-model"),
        (lambda f: f.attrs.__setitem__("version", 99), "version 99 is not supported"),
        (lambda f: f.attrs.__setitem__("version", "1"), "must be an integer"),
        (lambda f: f.attrs.__delitem__("architecture"), "'architecture' is missing"),
        (lambda f: f.attrs.__setitem__("architecture", "vgg"), "unknown network"),
        (lambda f: f.attrs.__setitem__("dtype", "float16"), "not float32 or float64"),
        (lambda f: f.attrs.__setitem__("metadata", "{oops"), "not valid JSON"),
        (lambda f: f["parameters"].__delitem__("fc2.bias"), r"missing \['fc2.bias'\]"),
        (lambda f: f["parameters"].create_dataset("fc9.weight", data=np.zeros(3)), "unexpected"),
        (lambda f: (f["parameters"].__delitem__("fc3.bias"),
                    f["parameters"].create_dataset("fc3.bias", data=np.zeros(11, np.float32))), "shape"),
        (lambda f: (f["parameters"].__delitem__("fc3.bias"),
                    f["parameters"].create_dataset("fc3.bias", data=np.zeros(10, np.int32))), "int32"),
        (lambda f: f["parameters"]["fc2.weight"].__setitem__((0, 0), np.nan), "NaN or Inf"),
        (lambda f: f["masks"].create_dataset("fc3.weight", data=np.full((10, 100), 2, np.uint8)), "0 and 1"),
        (lambda f: f["masks"].create_dataset("fc3.weight", data=np.zeros((10, 100), np.uint8)), "nonzero where"),
        (lambda f: f["masks"].create_dataset("fc3.bogus", data=np.zeros(3, np.uint8)), "masks no parameter"),
        (lambda f: f.__delitem__("masks"), "/masks is missing"),
    ],
)
def test_invalid_model_files_raise_format_error_naming_the_file(tmp_path, corrupt, message):
    path = _saved(tmp_path)
    _rewrite(path, corrupt)
    with pytest.raises(FormatError, match=message) as info:
        models.load(path)
    assert str(path) in str(info.value)


def test_damaged_bytes_are_caught_by_the_checksum(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    for cut in (0, 100, 600, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.h5"
        bad.write_bytes(data[:cut])
        with pytest.raises(FormatError, match=str(bad)):
            models.load(bad)
    for offset in (0, 30, 700, len(data) // 2, len(data) - 1):
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        bad = tmp_path / f"flip{offset}.h5"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(FormatError, match="checksum|not an mpdref HDF5|damaged"):
            models.load(bad)
    (tmp_path / "appended.h5").write_bytes(bytes(data) + b"x")
    with pytest.raises(FormatError, match="bytes appended"):
        models.load(tmp_path / "appended.h5")
    with pytest.raises(FormatError, match="not found"):
        models.load(tmp_path / "nope.h5")
    with pytest.raises(FormatError, match="directory"):
        models.load(tmp_path)


def test_model_files_open_in_plain_h5py(tmp_path):
    # The checksum lives in HDF5's user block, which HDF5 skips: other tools read the file as usual.
    path = _saved(tmp_path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "mpdref-model" and f["parameters"]["fc1.weight"].shape == (300, 784)


def test_input_checks():
    net = models.build("lenet-5")
    with pytest.raises(TypeError, match="float64"):
        net.forward(np.zeros((1, 1, 28, 28)))
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        net.forward(np.zeros((1, 784), np.float32))


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_an_inference_pass_pools_before_its_relu_and_gives_the_same_values(backend, rng, monkeypatch):
    """forward (no cache kept) runs a ReLU that a max-pooling follows after the pooling, which commutes
    with it; the logits are the training pass's, bit for bit."""
    net = models.build("deep-mnist", np.float64, seed=1, backend=backend)
    x = rng.standard_normal((3, 1, 28, 28))
    order = []
    for cls in (models.ReLU, models.MaxPool2d):
        original = cls.infer
        monkeypatch.setattr(cls, "infer", lambda self, *a, original=original: order.append(type(self).__name__)
                            or original(self, *a))
    logits = net.forward(x)
    assert order == ["MaxPool2d", "ReLU", "MaxPool2d", "ReLU", "ReLU"]  # the last: fc1's, no pool after it
    z, _ = net._run(x, False)  # the pass that keeps caches: the layers in their own order
    assert logits.tobytes() == z.tobytes()  # the same bits, the sign of zeros included
