"""Argument checks shared by the ops: one dtype per call, no silent casting."""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def common_float_dtype(op: str, **arrays) -> np.dtype:
    """The one float dtype (float32 or float64) that every named array shares.

    Raises TypeError naming the op and the offending arrays otherwise: mpdref
    never up- or down-casts behind the caller's back.
    """
    dtypes = {name: np.asarray(a).dtype for name, a in arrays.items() if a is not None}
    first = next(iter(dtypes.values()))
    if first not in FLOAT_DTYPES or any(d != first for d in dtypes.values()):
        listing = ", ".join(f"{name}: {d}" for name, d in dtypes.items())
        raise TypeError(f"{op}: all arrays must be float32 or all float64, got {listing}")
    return first


def require_ndim(op: str, name: str, a: np.ndarray, ndim: int, layout: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D {layout}, got shape {a.shape}")
