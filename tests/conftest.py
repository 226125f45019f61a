import os
from pathlib import Path

# The CUDA kernels run in Numba's simulator unless the environment asks for the real GPU
# (NUMBA_ENABLE_CUDASIM=0). pytest has imported Numba already (for the warning filter in
# pyproject.toml), so its configuration is reloaded from the environment too; numba.cuda
# itself is imported later and reads it then.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
from numba.core import config as _numba_config  # noqa: E402

_numba_config.reload_config()

import numpy as np
import pytest

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def mnist_root():
    """The real MNIST for tests: $MPDREF_DATA, else ../shared/data/mnist beside the checkout."""
    env = os.environ.get("MPDREF_DATA")
    if env and Path(env).is_dir():
        return Path(env)
    if SHARED_MNIST.is_dir():
        return SHARED_MNIST
    return None


@pytest.fixture(scope="session")
def mnist_dir():
    root = mnist_root()
    if root is None:
        pytest.skip("real MNIST not found: set MPDREF_DATA (CI points it at ../shared/data/mnist)")
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (pip install -e '.[crosscheck]')")


def on_each_thread_count(compute):
    """[compute() on one Numba thread, then on all of them] (one result where there is one thread), the
    process's thread count restored after: for tests that a kernel's bits do not depend on its threads."""
    import numba

    before = numba.get_num_threads()
    results = []
    try:
        for count in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(count)
            results.append(compute())
    finally:
        numba.set_num_threads(before)
    return results


class Interrupted(Exception):
    """Stands for a crash or Ctrl-C right after a checkpoint was written."""


def assert_resume_is_bit_identical(config, tmp_path, monkeypatch, stop_after):
    """Run `config` whole; run it again, stopped after its `stop_after`-th checkpoint, and resume:
    the two final models must be equal bit for bit."""
    import mpdref.runner as runner
    from mpdref import models
    from mpdref.runner import resume_experiment, run_experiment

    run_experiment(config, tmp_path / "reference", progress=False)
    original = runner.RunContext.checkpoint
    calls = {"n": 0}

    def failing(self, *a, **k):
        original(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == stop_after:
            raise Interrupted

    monkeypatch.setattr(runner.RunContext, "checkpoint", failing)
    with pytest.raises(Interrupted):
        run_experiment(config, tmp_path / "run", progress=False)
    monkeypatch.setattr(runner.RunContext, "checkpoint", original)
    resume_experiment(tmp_path / "run", progress=False)
    a, b = models.load(tmp_path / "reference" / "model.h5"), models.load(tmp_path / "run" / "model.h5")
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k


def run_cli(capsys, *argv):
    """`mpdref ARGV...` in this process: (exit status, stdout, stderr); arguments may be paths."""
    from mpdref import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
