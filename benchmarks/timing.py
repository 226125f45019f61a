"""The timing rule every CPU-timed benchmark here uses: the fastest of a few calls.

Imported as `timing` by the scripts beside it (python puts a script's own folder first on
the import path).
"""
from __future__ import annotations

import time


def best_of(fn, repeats: int, warmup: bool = True):
    """(the fastest of `repeats` timed calls of fn in seconds, the last call's result).

    With `warmup`, one untimed call first (compilation, caches, allocator).
    """
    result = fn() if warmup else None
    best = float("inf")
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result
