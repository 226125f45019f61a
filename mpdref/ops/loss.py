"""Softmax cross-entropy with integer labels, mean over the batch."""
from __future__ import annotations

import numpy as np

from mpdref.ops._checks import common_float_dtype, require_ndim


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p = z - max z - log Σ exp(z - max z), row-wise; stable for any finite z."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def check_logits_and_labels(logits: np.ndarray, labels) -> np.ndarray:
    """Raise unless logits are (N, classes) float and labels N integers (their range is checked
    where they are used: `label_range_error`); return the labels as an array."""
    common_float_dtype("softmax_cross_entropy_forward", logits=logits)
    require_ndim("softmax_cross_entropy_forward", "logits", logits, 2, "(N, classes)")
    labels = np.asarray(labels)
    n = logits.shape[0]
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"softmax_cross_entropy_forward: labels must be integers of shape ({n},), "
            f"got {labels.dtype} {labels.shape}"
        )
    return labels


def label_range_error(classes: int) -> ValueError:
    return ValueError(f"softmax_cross_entropy_forward: labels must lie in [0, {classes})")


def softmax_cross_entropy_forward(logits: np.ndarray, labels: np.ndarray):
    """L = -(1/N) Σ_n log softmax(z_n)[y_n].

    logits (N, classes) float, labels (N,) integers in [0, classes) -> (L, cache),
    L a scalar of the logits' dtype.
    """
    labels = check_logits_and_labels(logits, labels)
    n, classes = logits.shape
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise label_range_error(classes)
    log_probs = log_softmax(logits)
    loss = -log_probs[np.arange(n), labels].mean(dtype=logits.dtype)
    return logits.dtype.type(loss), (log_probs, labels)


def softmax_cross_entropy_backward(dloss, cache):
    """dL/dz_n = dloss · (softmax(z_n) - onehot(y_n)) / N."""
    log_probs, labels = cache
    n = len(labels)
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1
    dlogits *= log_probs.dtype.type(dloss / n)
    return dlogits


def distillation_forward(logits: np.ndarray, labels: np.ndarray, teacher_logits: np.ndarray,
                         temperature: float, weight: float):
    """Knowledge distillation (Hinton, Vinyals and Dean 2015): hard labels and a teacher's soft targets.

    L = (1 - α) · CE(z, y) + α · T² · (1/N) Σ_n KL(q_n ‖ p_n),
    q_n = softmax(t_n / T) (the teacher), p_n = softmax(z_n / T) (the student),
    KL(q ‖ p) = Σ_c q_c (log q_c - log p_c).

    The T² keeps the soft term's gradient on the scale of the hard term's as T changes.
    logits, teacher_logits (N, classes) of one dtype, labels (N,) integers; α = `weight`
    in [0, 1] (0: plain cross-entropy), T = `temperature` > 0 -> (L, cache).
    """
    check_distillation_args(logits, teacher_logits, temperature, weight)
    t = logits.dtype.type
    hard, hard_cache = softmax_cross_entropy_forward(logits, labels)
    log_p = log_softmax(logits / t(temperature))          # (N, classes)
    log_q = log_softmax(teacher_logits / t(temperature))  # (N, classes)
    q = np.exp(log_q)
    kl = (q * (log_q - log_p)).sum(axis=1)                 # (N,)
    soft = kl.mean(dtype=logits.dtype) * t(temperature) ** 2
    loss = t(1 - weight) * hard + t(weight) * soft
    return t(loss), (hard_cache, log_p, q, t(temperature), t(weight))


def check_distillation_args(logits, teacher_logits, temperature, weight) -> None:
    """Raise unless the teacher's logits match the logits, T > 0 and α is in [0, 1]."""
    common_float_dtype("distillation_forward", logits=logits, teacher_logits=teacher_logits)
    if teacher_logits.shape != logits.shape:
        raise ValueError(f"distillation_forward: teacher_logits must have the logits' shape {logits.shape}, "
                         f"got {teacher_logits.shape}")
    if not temperature > 0 or not 0 <= weight <= 1:
        raise ValueError(f"distillation_forward: need temperature > 0 and weight in [0, 1], "
                         f"got {temperature!r} and {weight!r}")


def distillation_backward(dloss, cache):
    """dL/dz_n = dloss · [(1 - α)(softmax(z_n) - onehot(y_n)) + α · T · (p_n - q_n)] / N."""
    hard_cache, log_p, q, temperature, weight = cache
    n = len(q)
    dlogits = softmax_cross_entropy_backward(dloss, hard_cache)
    dlogits *= 1 - weight
    dlogits += (np.exp(log_p) - q) * (weight * temperature * log_p.dtype.type(dloss / n))
    return dlogits


def training_loss(logits: np.ndarray, labels: np.ndarray, teacher=None):
    """(L, dL/dlogits) of a training step: softmax cross-entropy, or with `teacher` =
    (teacher_logits (N, classes), temperature, weight) the distillation loss above."""
    if teacher is None:
        loss, cache = softmax_cross_entropy_forward(logits, labels)
        return loss, softmax_cross_entropy_backward(1.0, cache)
    loss, cache = distillation_forward(logits, labels, *teacher)
    return loss, distillation_backward(1.0, cache)
