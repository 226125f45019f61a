"""Comparing arrays, with a report that says where and by how much they differ.

`assert_close` is the one comparison of the tests: element by element, as
`torch.testing.assert_close` (and `np.testing.assert_allclose`) compare,

    a and e are close  ⇔  |a - e| <= atol + rtol·|e|,

an infinity only close to an equal one, NaN only to NaN and only with equal_nan. With
rtol = atol = 0 it is the exact comparison (-0.0 equals 0.0), with the same report.

A norm-wise relative error, max|a - e| / max|e| <= tol, is not an elementwise rtol: it is
assert_close with rtol = 0 and atol = tol·max|e|, which is the same check (`max_norm_atol`).
"""
from __future__ import annotations

import numpy as np


def max_norm_atol(tol: float, reference) -> float:
    """tol·max|reference|: with rtol = 0, the atol under which assert_close checks the error relative to
    the largest element of `reference`, max|a - e| <= tol·max|reference|, instead of element by element."""
    return tol * float(np.max(np.abs(reference), initial=0.0))


def assert_close(actual, expected, rtol: float, atol, name: str = "", equal_nan: bool = False) -> None:
    """Raise AssertionError unless actual and expected have one shape and every element is close:

        |actual - expected| <= atol + rtol·|expected|

    (atol: a number, or an array of bounds, one per element). The report names `name`, the
    shapes and dtypes, the greatest absolute and relative differences and where they are, and
    how many elements are not close out of how many. Differences are taken in float64; the
    dtypes are reported, not compared.
    """
    a = np.asarray(actual)
    e = np.asarray(expected)
    title = f"{name}: " if name else ""
    arrays = f"actual {a.shape} {a.dtype}, expected {e.shape} {e.dtype}"
    if a.shape != e.shape:
        raise AssertionError(f"{title}shapes differ: {arrays}")
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore"):
        allowed = np.broadcast_to(np.asarray(atol, np.float64) + rtol * np.abs(e64), e.shape)
        difference = np.abs(a64 - e64)
        close = (a64 == e64) | (np.isfinite(a64) & np.isfinite(e64) & (difference <= allowed))
    if equal_nan:
        close |= np.isnan(a64) & np.isnan(e64)
    failing = int(np.count_nonzero(~close))
    if failing == 0:
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(difference == 0, 0.0, difference / np.abs(e64))
    lines = [f"{title}not close (rtol={rtol:g}, atol={_number(atol)}{', NaN equal to NaN' if equal_nan else ''}): "
             f"{arrays}",
             f"  {failing} of {e.size} elements fail |a - e| <= atol + rtol·|e|"]
    for what, values in (("absolute", difference), ("relative", relative)):
        at = _greatest(values)
        lines.append(f"  greatest {what} difference {values[at]:.6g} at index {at} "
                     f"(actual {a64[at]:.17g}, expected {e64[at]:.17g}, allowed |a - e| <= {allowed[at]:.6g})")
    raise AssertionError("\n".join(lines))


def _greatest(values: np.ndarray) -> tuple[int, ...]:
    """The index of the greatest value, NaN counting as the greatest (the first in C order on ties)."""
    return tuple(int(i) for i in np.unravel_index(np.argmax(np.where(np.isnan(values), np.inf, values)),
                                                  values.shape))


def _number(atol) -> str:
    return f"{atol:g}" if np.ndim(atol) == 0 else f"per element, {np.min(atol):g} to {np.max(atol):g}"
