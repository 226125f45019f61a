"""ADMM compression: pruning and quantization as constrained training (Zhang et al., ECCV 2018,
arXiv 1804.03294; Ye et al., arXiv 1903.09769, progressive; Ren et al., ADMM-NN, arXiv
1812.11677).

Training minimizes the loss f(W) subject to Wᵢ ∈ Sᵢ for each constrained weight i (at most a
number of nonzeros, or values on a set of levels). With Z = W as a copy held in the set and
U the scaled dual variable, ADMM alternates

    W-step:  W ← SGD on  f(W) + Σᵢ ρᵢ/2 · ‖Wᵢ − Zᵢ + Uᵢ‖²_F           (`penalty`, `ADMMSGD`)
    Z-step:  Zᵢ ← Πᵢ(Wᵢ + Uᵢ)                                          (`project_sparse`, `project_quantized`)
    U-step:  Uᵢ ← Uᵢ + Wᵢ − Zᵢ

from Z⁰ = Π(W⁰), U⁰ = 0, with ρ multiplied by a growth factor at each Z/U update
(`ADMMState`). The penalty is the *squared* Frobenius norm (its gradient ρ(W − Z + U) joins
the loss gradient); ports that write the norm itself train a different problem. After
ADMM, the hard projection W ← Π(W) and a retraining that keeps the constraint exactly
finish the method: masked retraining for sparsity; for levels, either the quantized weights
frozen while the biases train, or `StraightThroughSGD` (every step on the levels, the
updates gathered in a float copy).

Both projections are exact Euclidean projections:
- onto arrays with at most k nonzeros: keep the k largest magnitudes;
- onto s·Q for one scale s > 0 per tensor, Q = {−1, +1}, {−1, 0, +1} or {±1, ..., ±2^(b−1)}:
  for a given s the projection rounds each w/s to its nearest level, so the squared error
  E(s) = Σ min_q (w − s·q)² is the lower envelope of one quadratic in s per assignment of
  levels. As s grows, a weight's level steps down one magnitude each time |w|/s crosses the
  midpoint between two magnitudes: between consecutive crossings E(s) = Σw² − 2sA + s²B with
  A = Σ q|w|, B = Σ q², minimized at s = A / B (clamped to the interval). `best_scale` sweeps
  every crossing and keeps the best of these minima: the global optimum, not a scan.
"""
from __future__ import annotations

import math

import numpy as np

LEVELS = ("binary", "ternary")  # or an integer b in [2, MAX_BITS]: {±1, ..., ±2^(b-1)}
# best_scale's exact sweep holds n · 2^(b-1) crossings (about 88 bytes each): b = 8 on a 400,000-weight
# layer takes 4.5 GB. Beyond 8 bits a codebook (mpdref.quantize) is the tool.
MAX_BITS = 8


# ----------------------------------------------------------------------------- projections


def project_sparse(w: np.ndarray, keep: float, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(z, mask): the Euclidean projection of w onto arrays with at most round(keep · w.size)
    nonzeros, the largest magnitudes, only among `mask`'s positions when given (a pruned weight is
    never revived); ties: the first in row-major order. mask: bool, w's shape."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], not {keep}")
    allowed = np.ones(w.shape, bool) if mask is None else np.asarray(mask, bool)
    if allowed.shape != w.shape:
        raise ValueError(f"mask has shape {allowed.shape}, the weight has {w.shape}")
    count = min(round(keep * w.size), int(allowed.sum()))
    magnitude = np.where(allowed, np.abs(w), -1.0).ravel()  # outside the mask: never among the largest
    order = np.argsort(-magnitude, kind="stable")  # largest first, the first position on ties
    kept = np.zeros(w.size, bool)
    kept[order[:count]] = True
    kept = kept.reshape(w.shape)
    return np.where(kept, w, 0).astype(w.dtype), kept


def level_magnitudes(levels) -> np.ndarray:
    """The magnitudes a quantized weight may take, in units of the scale: binary (1), ternary (0, 1),
    or an integer b >= 2: 1, 2, ..., 2^(b-1)."""
    if levels == "binary":
        return np.array([1.0])
    if levels == "ternary":
        return np.array([0.0, 1.0])
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool) and 2 <= levels <= MAX_BITS:
        return np.arange(1, 2 ** (int(levels) - 1) + 1, dtype=np.float64)
    raise ValueError(f"levels must be 'binary', 'ternary' or an integer b in [2, {MAX_BITS}], not {levels!r}")


def round_to_levels(values: np.ndarray, magnitudes: np.ndarray) -> np.ndarray:
    """q with |q| the magnitude nearest to |values| (the smaller on a tie) and the sign of values
    (+ for 0): values already divided by the scale."""
    a = np.abs(values)
    midpoints = (magnitudes[1:] + magnitudes[:-1]) / 2
    q = magnitudes[np.searchsorted(midpoints, a, side="left")]
    return np.where(values < 0, -q, q)


def best_scale(values: np.ndarray, magnitudes: np.ndarray) -> float:
    """The s > 0 that minimizes E(s) = Σ min_q (v − s·q)² over q ∈ ±magnitudes (see the module
    docstring): every interval between crossings, its quadratic's minimum clamped to it."""
    a = np.abs(np.asarray(values, np.float64)).ravel()
    if not np.all(np.isfinite(a)):
        raise ValueError("cannot quantize NaN or infinite weights")
    if a.size == 0 or not np.any(a > 0):
        return 1.0  # every weight is 0 (or there are none): any scale projects to the same point
    top = magnitudes[-1]
    # Crossing (weight i, step j): |v_i| / s falls below the midpoint between magnitudes j and j+1,
    # at s = |v_i| / midpoint_j; the weight's level drops from magnitude j+1 to j.
    midpoints = (magnitudes[1:] + magnitudes[:-1]) / 2  # (L - 1,)
    lower, upper = magnitudes[:-1], magnitudes[1:]
    at = (a[:, None] / midpoints[None, :]).ravel()  # (n·(L - 1),) crossing points
    d_a = (a[:, None] * (upper - lower)[None, :]).ravel()  # A drops by |v|·(m_{j+1} − m_j)
    d_b = np.broadcast_to(upper**2 - lower**2, (len(a), len(midpoints))).ravel()  # B drops by m_{j+1}² − m_j²
    order = np.argsort(at, kind="stable")
    at, d_a, d_b = at[order], d_a[order], d_b[order]
    # On interval k, (at[k-1], at[k]) with at[-1] = 0 and at[n] = ∞, every crossing before it is done.
    a_sum = top * a.sum() - np.concatenate([[0.0], np.cumsum(d_a)])
    b_sum = top**2 * len(a) - np.concatenate([[0.0], np.cumsum(d_b)])
    starts = np.concatenate([[0.0], at])
    ends = np.concatenate([at, [np.inf]])
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(b_sum > 0, a_sum / b_sum, ends)  # B = 0: every level 0, E constant on the interval
    s = np.clip(s, starts, ends)
    s = np.where(np.isfinite(s), s, starts)  # the last interval, unbounded: its clamp is its start
    s = np.where(s > 0, s, np.nextafter(0.0, 1.0))
    errors = -2 * s * a_sum + s**2 * b_sum  # E(s) − Σv², on each interval's quadratic
    return float(s[np.argmin(errors)])


def project_quantized(w: np.ndarray, levels, mask: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(z, scale): the Euclidean projection of w onto scale · Q with one scale > 0 for the tensor,
    Q the `levels` (binary {−1, +1}, ternary {−1, 0, +1}, or an integer b: {±1, ..., ±2^(b−1)}).
    With `mask`, masked-out weights stay 0 and do not pull the scale (zeros come from the mask,
    not from a level)."""
    magnitudes = level_magnitudes(levels)
    kept = np.ones(w.shape, bool) if mask is None else np.asarray(mask, bool)
    values = w[kept].astype(np.float64)
    scale = best_scale(values, magnitudes)
    z = np.zeros(w.shape, w.dtype)
    z[kept] = (scale * round_to_levels(values / scale, magnitudes)).astype(w.dtype)
    return z, scale


# ----------------------------------------------------------------------------- the ADMM iteration


def penalty(w: np.ndarray, z: np.ndarray, u: np.ndarray, rho: float) -> tuple[float, np.ndarray]:
    """(ρ/2 · ‖W − Z + U‖²_F, its gradient ρ(W − Z + U) with respect to W)."""
    r = w - z + u
    return 0.5 * rho * float(np.sum(r.astype(np.float64) ** 2)), (rho * r).astype(w.dtype)


class ADMMState:
    """Z, U and ρ of each constrained weight, and the projection that defines its set.

    projections: weight name -> function W -> Π(W) (see `sparse_constraint`, `levels_constraint`).
    Z⁰ = Π(W⁰), U⁰ = 0, ρ⁰ = rho; `update(params)` is one Z-step and U-step, then ρ ← ρ·rho_growth.
    """

    def __init__(self, params: dict, projections: dict, rho: float, rho_growth: float = 1.0):
        if not rho > 0 or not rho_growth >= 1:
            raise ValueError(f"ADMM needs rho > 0 and rho_growth >= 1, not {rho!r} and {rho_growth!r}")
        self.projections = projections
        self.rho = float(rho)
        self.rho_growth = float(rho_growth)
        self.z = {name: project(params[name]) for name, project in projections.items()}
        self.u = {name: np.zeros_like(params[name]) for name in projections}

    def penalty_gradients(self, params: dict) -> dict:
        """ρ(Wᵢ − Zᵢ + Uᵢ) for each constrained weight: what the W-step adds to the loss gradient."""
        return {name: penalty(params[name], self.z[name], self.u[name], self.rho)[1] for name in self.projections}

    def update(self, params: dict) -> dict:
        """Z ← Π(W + U), U ← U + W − Z, then ρ grows. Returns per weight the primal residual
        ‖W − Z‖ / ‖W‖ and the constraint's violation ‖W − Π(W)‖ / ‖W‖, both before ρ grows."""
        report = {}
        for name, project in self.projections.items():
            w = params[name]
            self.z[name] = project(w + self.u[name])
            self.u[name] = self.u[name] + w - self.z[name]
            norm = max(float(np.linalg.norm(w)), np.finfo(np.float64).tiny)
            report[name] = {"residual": float(np.linalg.norm(w - self.z[name])) / norm,
                            "violation": float(np.linalg.norm(w - project(w))) / norm}
        report = {"rho": self.rho, "layers": report}
        self.rho *= self.rho_growth
        return report


class _AroundSGD:
    """An optimizer that changes what the wrapped one (masked SGD with momentum) is given; its velocity,
    which checkpoints hold, is the wrapped optimizer's."""

    optimizer = None

    @property
    def velocity(self):
        return self.optimizer.velocity

    @velocity.setter
    def velocity(self, arrays):
        self.optimizer.velocity = arrays


class ADMMSGD(_AroundSGD):
    """The W-step: the given optimizer (masked SGD with momentum) on f(W) plus the ADMM penalty, whose
    gradient is added to the loss gradient of each constrained weight before every step."""

    def __init__(self, optimizer, state: ADMMState):
        self.optimizer = optimizer
        self.state = state

    def step(self, grads: dict, lr: float) -> None:
        extra = self.state.penalty_gradients(self.optimizer.net.params)
        self.optimizer.step({k: g + extra[k] if k in extra else g for k, g in grads.items()}, lr)


class StraightThroughSGD(_AroundSGD):
    """Retraining on the levels by the straight-through estimator (Courbariaux et al., BinaryConnect,
    NeurIPS 2015; one scale per tensor as in Rastegari et al.'s binary-weight networks, ECCV 2016).

    Each constrained weight W has a float copy W̃ (`latent`). The network always holds W = Π(W̃),
    on its levels: every step's loss and gradient g are those of the network as it will be
    stored, and the step moves the copy, W̃ ← the optimizer's step from W̃ with gradient g
    (momentum, weight decay and the masks as for any weight), then W ← Π(W̃). Small steps add up
    in W̃ until they move a weight across a level's boundary, which the frozen retraining can
    never do. Unlike BinaryConnect, W̃ is not clipped: the scale is the projection's own (the
    exact optimum for W̃), so it follows W̃'s magnitudes. Each step projects anew; for b-bit levels
    that sorts the tensor's level crossings (`best_scale`), binary and ternary need no sort.

    projections: weight name -> W -> Π(W) (`levels_constraint`). latent: the copies to go on
    from (a resumed stage); default: the network's weights as they are.
    """

    def __init__(self, optimizer, projections: dict, latent: dict | None = None):
        self.optimizer = optimizer
        self.projections = projections
        params = optimizer.net.params
        self.latent = {name: (params[name] if latent is None else latent[name]).copy() for name in projections}
        for name, project in projections.items():
            params[name][...] = project(self.latent[name])

    def step(self, grads: dict, lr: float) -> None:
        params = self.optimizer.net.params
        for name, w in self.latent.items():
            params[name][...] = w  # the optimizer steps from W̃, with the gradient taken at Π(W̃)
        self.optimizer.step(grads, lr)
        for name, project in self.projections.items():
            self.latent[name][...] = params[name]
            params[name][...] = project(self.latent[name])


def sparse_constraint(keep: float, mask: np.ndarray | None = None):
    """Π onto at most round(keep · size) nonzeros (among `mask`'s positions), as W -> Π(W)."""
    return lambda w: project_sparse(w, keep, mask)[0]


def levels_constraint(levels, mask: np.ndarray | None = None):
    """Π onto scale · levels with one scale per tensor (zeros where `mask` is 0), as W -> Π(W)."""
    level_magnitudes(levels)  # refuse a bad value now, not at the first update
    return lambda w: project_quantized(w, levels, mask)[0]


def weight_bits(levels) -> int:
    """Bits of one quantized weight's level index, the weight-data count the ADMM papers quote."""
    count = len(level_magnitudes(levels)) * 2 - (1 if levels == "ternary" else 0)
    return max(1, math.ceil(math.log2(count)))
