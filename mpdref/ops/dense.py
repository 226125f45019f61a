"""Fully connected layer, PyTorch layout: w (out, in), b (out,)."""
from __future__ import annotations

import numpy as np

from mpdref.ops._checks import common_float_dtype, require_ndim


def check_dense_args(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> None:
    """Raise on arguments dense_forward cannot take (dtypes, shapes), naming them."""
    common_float_dtype("dense_forward", x=x, w=w, b=b)
    require_ndim("dense_forward", "x", x, 2, "(N, in)")
    if w.ndim != 2 or b.shape != (w.shape[0],) or x.shape[1] != w.shape[1]:
        raise ValueError(
            f"dense_forward: shapes do not fit: x {x.shape}, w {w.shape} (out, in), b {b.shape} (out,)"
        )


def dense_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray):
    """y = x wᵀ + b.

    x (N, in), w (out, in), b (out,) -> y (N, out); cache for the backward pass.
    """
    check_dense_args(x, w, b)
    y = x @ w.T  # (N, out)
    y += b
    return y, (x, w)


def dense_backward(dout: np.ndarray, cache, need_dx: bool = True):
    """dx = dy w, dw = dyᵀ x, db = Σ_n dy.

    dout (N, out) -> (dx (N, in) or None, dw (out, in), db (out,)). With
    `need_dx` False (the network's first layer) dx is not computed.
    """
    x, w = cache
    dx = dout @ w if need_dx else None  # (N, in)
    dw = dout.T @ x  # (out, in)
    db = dout.sum(axis=0)  # (out,)
    return dx, dw, db
