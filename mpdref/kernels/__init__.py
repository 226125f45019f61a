"""Numba fast paths. Each kernel names the NumPy reference in `mpdref.ops` it must equal.

The CPU kernels (`cpu`, `blockdiag`) always load; the CUDA kernels (`cuda`) load only
when asked for, through `load_backend("cuda")`.
"""
from __future__ import annotations

from mpdref.kernels.config import BACKENDS, BackendUnavailable  # noqa: F401  (public here)


def load_backend(name: str):
    """None for "cpu"; for "cuda", the module `mpdref.kernels.cuda`, after checking that it can run.

    Raises BackendUnavailable when numba-cuda is not installed or no GPU is usable, and
    ValueError for an unknown name.
    """
    if name == "cpu":
        return None
    if name != "cuda":
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    from mpdref.kernels import cuda  # raises BackendUnavailable without numba-cuda

    cuda.require_device()
    return cuda
