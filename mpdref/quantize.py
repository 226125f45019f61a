"""Weight sharing by 1-D k-means, and trained quantization (Deep Compression, stage 2).

A quantized layer stores a codebook C (k = 2^bits float32 centroids) and, per kept
weight, the index I of its centroid: W = C[I], pruned weights exactly 0 and no codebook
entry. Training then updates the centroids only, by the sum of the gradients of the
weights that share them (Han, Mao and Dally 2016, equation 3):

    ∂L/∂C_c = Σ_{ij kept, I_ij = c} ∂L/∂W_ij

k-means in one dimension: the optimal clusters of sorted values are contiguous runs, so

* Lloyd's algorithm sorts once; an iteration finds each cluster's run by binary search
  of the midpoints between consecutive centroids and its mean from prefix sums:
  O(k log n) per iteration.
* The optimum (minimum SSE) is a dynamic programme over the sorted values,

      D[m, j] = min_{i < j} D[m-1, i] + SSE(x[i:j]),      SSE from prefix sums in O(1),

  whose minimising i is non-decreasing in j; divide and conquer over j then needs
  O(k n log n) (as in Ckmeans.1d.dp).
"""
from __future__ import annotations

import numba
import numpy as np

from mpdref.kernels.config import SERIAL

INITS = ("linear", "density", "random")
METHODS = ("lloyd", "optimal")


# ----------------------------------------------------------------------------- 1-D k-means


def initial_centroids(values: np.ndarray, k: int, init: str = "linear", rng=None) -> np.ndarray:
    """k starting centroids, ascending. linear: evenly over [min, max]; density: evenly over the
    CDF (the (i + ½)/k quantiles); random: k distinct values drawn from `values` (Forgy)."""
    v = np.asarray(values, np.float64).ravel()
    if init == "linear":
        return np.linspace(v.min(), v.max(), k)
    if init == "density":
        return np.quantile(v, (np.arange(k) + 0.5) / k)
    if init == "random":
        rng = rng if rng is not None else np.random.default_rng(0)
        return np.sort(rng.choice(v, size=k, replace=False))
    raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")


@numba.njit(**SERIAL)
def _lloyd_sorted(x, prefix, centroids, iterations):
    """Lloyd on ascending x with prefix[i] = Σ x[:i]; centroids ascending. Returns (centroids, iterations run).

    The centroids are those of `lloyd` in tests/naive.py, to rounding, empty clusters included.
    """
    n, k = len(x), len(centroids)
    c = centroids.copy()
    mids = np.empty(max(k - 1, 0))
    starts = np.empty(k + 1, np.int64)
    done = 0
    for _ in range(iterations):
        old = c.copy()
        for j in range(k - 1):
            mids[j] = 0.5 * (c[j] + c[j + 1])
        starts[0] = 0
        for j in range(k - 1):  # x[starts[j]:starts[j+1]] is nearest to c[j]; a tie goes to the lower centroid
            starts[j + 1] = np.searchsorted(x, mids[j], side="right")
        starts[k] = n
        changed = False
        empty = 0
        for j in range(k):
            s, e = starts[j], starts[j + 1]
            if e > s:
                mean = (prefix[e] - prefix[s]) / (e - s)
                if mean != c[j]:
                    changed = True
                    c[j] = mean
            else:
                empty += 1
        if empty:
            # The `empty` values farthest from their cluster's old centroid, largest first: in one
            # dimension they are taken from the two ends of the runs, moving inward.
            lo = starts[:k].copy()
            hi = starts[1:].copy() - 1
            j_empty = 0
            for _ in range(empty):
                best, best_run, best_end = -1.0, -1, 0
                for r in range(k):
                    if lo[r] <= hi[r]:
                        d_lo, d_hi = abs(x[lo[r]] - old[r]), abs(x[hi[r]] - old[r])
                        if d_lo > best:
                            best, best_run, best_end = d_lo, r, 0
                        if d_hi > best:
                            best, best_run, best_end = d_hi, r, 1
                if best_run < 0:
                    break
                while starts[j_empty + 1] > starts[j_empty]:
                    j_empty += 1
                if best_end == 0:
                    c[j_empty] = x[lo[best_run]]
                    lo[best_run] += 1
                else:
                    c[j_empty] = x[hi[best_run]]
                    hi[best_run] -= 1
                j_empty += 1
                changed = True
        done += 1
        c.sort()
        if not changed:
            break
    return c, done


@numba.njit(**SERIAL)
def _nearest(values, centroids):
    """Index of the nearest of the ascending centroids, per value (ties to the lower one;
    `nearest_centroid` of tests/naive.py): the number of midpoints between consecutive
    centroids that lie strictly below the value.

    A guess from a table over 4096 equal bins of [min, max], then a local walk to the exact
    count (a bin rarely holds a midpoint, so the walk is usually no step at all)."""
    k = len(centroids)
    m = k - 1
    out = np.zeros(len(values), np.int64)
    if m == 0 or len(values) == 0:
        return out
    mids = np.empty(m)
    for j in range(m):
        mids[j] = 0.5 * (centroids[j] + centroids[j + 1])
    lo, hi = np.float64(values.min()), np.float64(values.max())
    bins = 4096
    scale = bins / (hi - lo) if hi > lo else 0.0
    guess = np.empty(bins, np.int64)  # midpoints below each bin's left edge
    a = 0
    for g in range(bins):
        edge = lo + g / scale if scale > 0 else lo
        while a < m and mids[a] < edge:
            a += 1
        guess[g] = a
    for i in range(len(values)):
        v = np.float64(values[i])
        g = min(int((v - lo) * scale), bins - 1)
        a = guess[g]
        while a > 0 and mids[a - 1] >= v:
            a -= 1
        while a < m and mids[a] < v:
            a += 1
        out[i] = a
    return out


@numba.njit(**SERIAL)
def _prefix_sums(x):
    """p[i] = Σ x[:i] in float64 (p has len(x) + 1 entries)."""
    p = np.empty(len(x) + 1)
    p[0] = 0.0
    acc = 0.0
    for i in range(len(x)):
        acc += x[i]
        p[i + 1] = acc
    return p


@numba.njit(**SERIAL)
def _optimal_dp(x, k):
    """Minimum-SSE split of ascending x into k contiguous non-empty runs: the start of each run.
    Its SSE is `optimal_kmeans_sse` of tests/naive.py (brute force)."""
    n = len(x)
    p1 = np.zeros(n + 1)
    p2 = np.zeros(n + 1)
    for i in range(n):
        p1[i + 1] = p1[i] + x[i]
        p2[i + 1] = p2[i] + x[i] * x[i]
    prev = np.empty(n + 1)
    cur = np.empty(n + 1)
    for j in range(n + 1):
        prev[j] = np.inf if j == 0 else p2[j] - p1[j] * p1[j] / j  # one run x[0:j]
    arg = np.zeros((k, n + 1), dtype=np.int32)  # arg[m, j]: where the last run of the best m+1 runs of x[:j] starts
    stack = np.empty((130, 4), dtype=np.int64)  # pending intervals: one more per level, ≤ log2(n) + 2
    for m in range(1, k):
        for j in range(n + 1):
            cur[j] = np.inf
        # D&C: solve j in [lo, hi] knowing the argmin lies in [opt_lo, opt_hi]
        stack[0, 0], stack[0, 1], stack[0, 2], stack[0, 3] = m + 1, n, m, n - 1
        top = 1
        while top > 0:
            top -= 1
            lo, hi, opt_lo, opt_hi = stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3]
            if lo > hi:
                continue
            j = (lo + hi) // 2
            best, best_i = np.inf, opt_lo
            for i in range(opt_lo, min(opt_hi, j - 1) + 1):
                cnt = j - i
                s = p1[j] - p1[i]
                v = prev[i] + (p2[j] - p2[i]) - s * s / cnt
                if v < best:
                    best, best_i = v, i
            cur[j] = best
            arg[m, j] = best_i
            stack[top, 0], stack[top, 1], stack[top, 2], stack[top, 3] = lo, j - 1, opt_lo, best_i
            stack[top + 1, 0], stack[top + 1, 1], stack[top + 1, 2], stack[top + 1, 3] = j + 1, hi, best_i, opt_hi
            top += 2
        for j in range(n + 1):
            prev[j] = cur[j]
    starts = np.zeros(k + 1, dtype=np.int64)
    starts[k] = n
    j = n
    for m in range(k - 1, 0, -1):
        j = arg[m, j]
        starts[m] = j
    return starts


def kmeans_1d(values, k: int, init: str = "linear", method: str = "lloyd", iterations: int = 300,
              rng=None) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means: (centroids (k,) float64 ascending, labels (n,) int64, the nearest centroid of each value).

    method "lloyd" starts from `init` and runs at most `iterations` iterations (it stops
    when no centroid moves); "optimal" returns the minimum-SSE clustering (init unused).
    """
    raw = np.asarray(values).ravel()
    v = raw if raw.dtype in (np.float32, np.float64) else raw.astype(np.float64)
    if not 1 <= k <= v.size:
        raise ValueError(f"k = {k} clusters need 1 <= k <= the number of values ({v.size})")
    if not np.all(np.isfinite(v)):
        raise ValueError("kmeans_1d: the values contain NaN or infinity")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "optimal":
        order = np.argsort(v, kind="stable")
        x = v[order].astype(np.float64)
        shift = x.mean()  # SSE is shift-invariant; centring keeps the prefix sums of squares small
        starts = _optimal_dp(x - shift, k)
        labels = np.empty(v.size, np.int64)
        centroids = np.empty(k)
        for c in range(k):
            run = x[starts[c] : starts[c + 1]]
            centroids[c] = run.mean()
            labels[order[starts[c] : starts[c + 1]]] = c
        return centroids, labels
    x = np.sort(v).astype(np.float64)  # sorted in the values' own precision (float32 sorts faster)
    centroids, _ = _lloyd_sorted(x, _prefix_sums(x), initial_centroids(v, k, init, rng), iterations)
    return centroids, _nearest(v, centroids)


def sse(values, centroids, labels) -> float:
    """Σ (value − its centroid)²."""
    v = np.asarray(values, np.float64).ravel()
    return float(np.sum((v - np.asarray(centroids)[labels]) ** 2))


# ----------------------------------------------------------------------------- trained quantization


def _kept_positions(w: np.ndarray, mask) -> np.ndarray:
    """Flat positions of the kept entries of w (all of them without a mask)."""
    return np.arange(w.size) if mask is None else np.flatnonzero(np.asarray(mask).ravel())


def codebook_of(w: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept positions (flat), centroids, labels) of a quantized weight, read back from its values."""
    kept = _kept_positions(w, mask)
    centroids, labels = np.unique(w.ravel()[kept], return_inverse=True)
    return kept, centroids, labels.astype(np.int64)


def quantize_weight(w: np.ndarray, mask, bits: int, init="linear", method="lloyd", rng=None) -> np.ndarray:
    """w with every kept weight replaced by its k-means centroid (2^bits of them, float32 values)."""
    kept = _kept_positions(w, mask)
    values = w.ravel()[kept]
    k = min(2 ** bits, values.size)
    centroids, labels = kmeans_1d(values, k, init, method, rng=rng)
    out = np.zeros_like(w)
    out.ravel()[kept] = centroids.astype(w.dtype)[labels]
    return out


class CodebookSGD:
    """SGD with momentum on the centroids of quantized weights (equation 3); masked SGD on the rest.

    After every step each quantized weight is W = C[I] again: pruned entries 0, every kept
    entry exactly its centroid. `velocity` is laid out like the parameters (a centroid's
    velocity at each weight that uses it), so checkpoints hold it as they hold SGD's.
    """

    def __init__(self, net, names, momentum=0.9, weight_decay=0.0):
        from mpdref.train import SGD

        self.net = net
        self.momentum = momentum
        self.books = {name: codebook_of(net.params[name], net.masks.get(name)) for name in names}
        self.sgd = SGD(net, momentum, weight_decay, frozen=self.books)
        self.centroid_velocity = {name: np.zeros(len(c), net.params[name].dtype) for name, (_, c, _) in self.books.items()}

    @staticmethod
    def centroid_gradient(grad: np.ndarray, kept: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
        """∂L/∂C_c = Σ over kept weights with label c of ∂L/∂W (equation 3)."""
        return np.bincount(labels, weights=grad.ravel()[kept], minlength=k)

    def step(self, grads, lr):
        self.sgd.step(grads, lr)
        for name, (kept, centroids, labels) in self.books.items():
            w = self.net.params[name]
            g = self.centroid_gradient(grads[name], kept, labels, len(centroids)).astype(w.dtype)
            v = self.centroid_velocity[name]
            v *= w.dtype.type(self.momentum)
            v += g
            centroids -= w.dtype.type(lr) * v.astype(centroids.dtype)
            w.ravel()[kept] = centroids.astype(w.dtype)[labels]

    @property
    def velocity(self):
        out = dict(self.sgd.velocity)
        for name, (kept, _, labels) in self.books.items():
            v = np.zeros_like(self.net.params[name])
            v.ravel()[kept] = self.centroid_velocity[name][labels]
            out[name] = v
        return out

    @velocity.setter
    def velocity(self, arrays):
        self.sgd.velocity = {k: v.copy() for k, v in arrays.items()}
        for name, (kept, centroids, labels) in self.books.items():
            v = np.zeros(len(centroids), self.net.params[name].dtype)
            v[labels] = arrays[name].ravel()[kept]
            self.centroid_velocity[name] = v
