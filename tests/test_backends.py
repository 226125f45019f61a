"""A whole network on the pure NumPy reference (`backend="reference"`) equals the fast path.

The fast op set differs from the reference in data movement (gathers, scatters, window
maxima, in the same order of additions) and in the arithmetic of a few ops: the stride-1
convolution, which `mpdref.kernels.direct_conv` sums in another order; the large dense
products, which `mpdref.kernels.gemm` sums on Numba's threads; and the training loss, whose
compiled pass (`fast_ops.training_loss`) sums each row in order with libm's exp and log. So at
a small batch (every product BLAS's, on one thread in both) a network without convolutions
agrees bit for bit in its logits, and to rounding in its loss and gradients; one with
convolutions agrees to rounding throughout (float64 1e-12, float32 1e-5 of the largest value,
after the rounding differences have passed through every later layer), for the networks,
their MPD-masked versions and their block forms.
"""
import numpy as np
import pytest

from compare import assert_close
from mpdref import models, ops
from mpdref.kernels import fast_ops, threads
from mpdref.mpd import apply_mpd_masks, to_block_diagonal


def test_the_fast_set_offers_every_reference_op():
    assert set(ops.__all__) == set(fast_ops.__all__)
    missing = [name for name in ops.__all__ if not callable(getattr(fast_ops, name, None))]
    assert not missing


def test_the_reference_set_is_plain_numpy():
    compiled = [name for name in ops.__all__ if type(getattr(ops, name)).__module__.startswith("numba")]
    assert not compiled


def _both(name, dtype, seed=0, mpd=False):
    nets = []
    for backend in ("fast", "reference"):
        net = models.build(name, dtype=dtype, seed=seed, backend=backend)
        if mpd:
            apply_mpd_masks(net, {w: min(3, *net.params[w].shape[:2]) for w in net.weight_names()},
                            np.random.default_rng(seed), rescale=False)
        nets.append(net)
    return nets


def _same(a, b, what, tol=0.0):
    """Exactly equal; with tol, max|a - b| <= tol · max|b|."""
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert_close(a, b, rtol=0, atol=tol * float(np.max(np.abs(b), initial=0.0)), name=what)


@pytest.mark.parametrize("name", list(models.ARCHITECTURES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["dense", "mpd-masked", "mpd-block"])
def test_reference_and_fast_networks_agree(name, dtype, form, rng):
    fast, reference = _both(name, dtype, mpd=form != "dense")
    if form == "mpd-block":
        fast, reference = to_block_diagonal(fast), to_block_diagonal(reference)
    assert fast.layers[0].ops is fast_ops and reference.layers[0].ops is ops
    convolutions = any(type(layer).__name__.endswith("Conv2d") for layer in fast.layers)
    assert convolutions == (name != "lenet-300-100")
    tol = 1e-5 if dtype == np.float32 else 1e-12
    forward_tol = tol if convolutions else 0.0
    x = rng.standard_normal((5, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, 5)
    # At batch 5 LeNet-300-100's dense products are below gemm.SMALL_PRODUCT: the fast set leaves them to
    # BLAS on one thread (its passes hold BLAS there); the reference, on one thread too, gives the same
    # bits. (Deep MNIST's fc1 is above it at any batch: the gemm, within the tolerance.)
    with threads.blas_on_one_thread():
        _same(fast.forward(x), reference.forward(x), "logits", forward_tol)
        # train=True: dropout draws from each network's own generator, which start equal
        loss_f, grads_f, logits_f = fast.loss_grads_and_logits(x, y, train=True)
        loss_r, grads_r, logits_r = reference.loss_grads_and_logits(x, y, train=True)
    assert abs(loss_f - loss_r) <= tol * abs(loss_r)
    _same(logits_f, logits_r, "training logits", forward_tol)
    assert list(grads_f) == list(grads_r) == list(fast.params)
    for k in grads_f:
        _same(grads_f[k], grads_r[k], f"gradient of {k}", tol)


def test_use_backend_switches_a_loaded_network(tmp_path, rng):
    net = models.build("lenet-5", seed=1)
    models.save(net, tmp_path / "m.h5")
    loaded = models.load(tmp_path / "m.h5")
    assert loaded.backend == "fast"
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    fast_logits = loaded.forward(x)
    assert loaded.use_backend("reference") is loaded and loaded.backend == "reference"
    assert all(layer.ops is ops for layer in loaded.layers)
    _same(loaded.forward(x), fast_logits, "logits", 1e-5)  # LeNet-5: the direct convolution's rounding
    with pytest.raises(ValueError, match="unknown op backend 'numpy'"):
        loaded.use_backend("numpy")


def test_networks_and_block_forms_copy_as_data(rng):
    """Layers name their op set instead of holding it: a network deep-copies (benchmarks copy one
    base network per contender) and the copy computes the same bits."""
    import copy

    net = models.build("lenet-5", seed=3)
    apply_mpd_masks(net, {"conv2.weight": 4, "fc1.weight": 5}, np.random.default_rng(0), rescale=False)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    for original in (net, to_block_diagonal(net)):
        twin = copy.deepcopy(original)
        assert [layer.backend for layer in twin.layers] == [layer.backend for layer in original.layers]
        _same(twin.forward(x), original.forward(x), "logits of the copy")


@pytest.mark.parametrize("name, backend", [("lenet-5", "fast"), ("deep-mnist", "fast"), ("lenet-300-100", "fast"),
                                           ("lenet-300-100", "reference"), ("lenet-5", "reference")])
def test_passes_on_the_fast_set_keep_blas_to_one_thread(name, backend, rng, monkeypatch):
    """A fast-set network computes on Numba's threads: during its passes (and its block form's), NumPy's
    BLAS is held to one thread (mpdref.kernels.threads), and given back after; the reference set
    leaves BLAS as it is."""
    limited = backend == "fast"
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    for net in (models.build(name, seed=0, backend=backend),
                to_block_diagonal(_both(name, np.float32, mpd=True)[0 if limited else 1])):
        assert net.numba_threads is limited
        seen = []
        layer = net.layers[-1]
        original = type(layer).infer  # what a forward pass calls (no cache kept)
        monkeypatch.setattr(type(layer), "infer", lambda self, *a: (seen.append(blas_threads()), original(self, *a))[1])
        net.forward(rng.standard_normal((2, 1, 28, 28)).astype(np.float32))
        monkeypatch.undo()
        assert seen and all(threads == ([1] * len(before) if limited else before) for threads in seen), (seen, before)
        assert blas_threads() == before


_TRAIN_A_LITTLE = """
import hashlib, sys
import numba
import numpy as np
from threadpoolctl import threadpool_info
from mpdref import models
from mpdref.train import Recipe, fit
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 1, 28, 28)).astype(np.float32)
y = rng.integers(0, 10, 256)
net = models.build(sys.argv[1], seed=0)
fit(net, (x, y), Recipe(epochs=1, batch_size=64, lr=0.05), progress=False)
x_eval = rng.standard_normal((1000, 1, 28, 28)).astype(np.float32)
digest = hashlib.sha256()
for value in [*net.params.values(), net.forward(x_eval)]:
    digest.update(np.ascontiguousarray(value).tobytes())
blas = max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")
print(numba.get_num_threads(), blas, digest.hexdigest())
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_training_gives_the_same_bits_on_one_thread_and_on_all_cores(name):
    """A sweep worker runs with one thread (BLAS's and Numba's), `mpdref run` with all the cores: the same
    training must give the same weights and logits in both. BLAS on two threads did not (OpenBLAS split
    the depth of LeNet-300-100's 64 x 784 @ 784 x 300 product between them; see mpdref.kernels.threads)."""
    import os
    import subprocess
    import sys

    cores = max(2, os.cpu_count() or 1)
    digests = {}
    for count in (1, cores):
        env = {**os.environ, **{v: str(count) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                          "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}}
        out = subprocess.run([sys.executable, "-c", _TRAIN_A_LITTLE, name], env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr
        numba_threads, blas_threads, digests[count] = out.stdout.strip().splitlines()[-1].split()
        assert int(numba_threads) == int(blas_threads) == count, (count, out.stdout)  # the setting took
    assert digests[1] == digests[cores], digests
