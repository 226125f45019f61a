"""Element-wise layers: ReLU, dropout, flatten."""
from __future__ import annotations

import numpy as np

from mpdref.ops._checks import common_float_dtype


def relu_forward(x: np.ndarray):
    """y = max(x, 0); any shape. The cache is y itself (y > 0 exactly where x > 0)."""
    common_float_dtype("relu_forward", x=x)
    y = np.maximum(x, 0)
    return y, y


def relu_backward(dout: np.ndarray, cache):
    """dx = dy · [x > 0] (the subgradient at 0 is taken as 0, as in PyTorch)."""
    y = cache
    return np.where(y > 0, dout, 0)


def dropout_mask(shape, p: float, rng: np.random.Generator, dtype) -> np.ndarray:
    """Inverted-dropout mask: 1/(1-p) with probability 1-p, else 0, drawn from `rng`."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    dtype = np.dtype(dtype)
    keep = rng.random(shape, dtype=dtype) >= dtype.type(p)
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - p))


def dropout_forward(x: np.ndarray, p: float, rng: np.random.Generator):
    """y = x ⊙ m, m = dropout_mask(x.shape, p, rng); E[y] = x. The cache is m."""
    common_float_dtype("dropout_forward", x=x)
    mask = dropout_mask(x.shape, p, rng, x.dtype)
    return x * mask, mask


def dropout_backward(dout: np.ndarray, cache):
    """dx = dy ⊙ m."""
    return dout * cache


def flatten_forward(x: np.ndarray):
    """(N, ...) -> (N, prod(...)) in C order, as torch's ``x.view(N, -1)``."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dout: np.ndarray, cache):
    return dout.reshape(cache)
