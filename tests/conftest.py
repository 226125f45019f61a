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
