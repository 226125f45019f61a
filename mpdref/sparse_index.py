"""Relative-index sparse storage (Han, Mao and Dally 2016, Figure 2).

The kept entries of a weight, in row-major order, are stored as the gaps between
consecutive positions: the first gap counts from position -1, so every gap is >= 1,
and gap g is stored as the b-bit symbol g - 1. A gap larger than 2^b is split by
filler entries: a filler sits 2^b positions after the previous entry, is stored with
the weight 0, and is counted like any other stored entry.
"""
from __future__ import annotations

import numba
import numpy as np

from mpdref.kernels.config import SERIAL


@numba.njit(**SERIAL)
def _gaps(positions, span):
    """relative_indices' (symbols, is_filler) for span = 2^bits: `relative_indices` of tests/naive.py."""
    n_fill = 0
    prev = -1
    for p in positions:
        n_fill += (p - prev - 1) // span
        prev = p
    symbols = np.empty(len(positions) + n_fill, np.int64)
    is_filler = np.zeros(len(positions) + n_fill, np.bool_)
    prev = -1
    j = 0
    for p in positions:
        while p - prev > span:
            symbols[j] = span - 1
            is_filler[j] = True
            prev += span
            j += 1
        symbols[j] = p - prev - 1
        prev = p
        j += 1
    return symbols, is_filler


def relative_indices(positions, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, is_filler) for ascending flat positions: one b-bit symbol per stored entry."""
    if not 1 <= bits <= 16:
        raise ValueError(f"index bits must be in [1, 16], not {bits}")
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    if len(positions) and (positions[0] < 0 or np.any(np.diff(positions) <= 0)):
        raise ValueError("positions must be ascending and non-negative")
    return _gaps(positions, 1 << bits)


def positions_from_indices(symbols, size: int) -> np.ndarray:
    """The flat position of every stored entry, fillers included (the inverse of relative_indices)."""
    symbols = np.asarray(symbols, np.int64)
    positions = np.cumsum(symbols + 1) - 1
    if len(positions) and positions[-1] >= size:
        raise ValueError(f"the relative indices run past the end of the weight ({positions[-1]} >= {size})")
    return positions
