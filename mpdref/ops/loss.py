"""Softmax cross-entropy with integer labels, mean over the batch."""
from __future__ import annotations

import numpy as np

from mpdref.ops._checks import common_float_dtype, require_ndim


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p = z - max z - log Σ exp(z - max z), row-wise; stable for any finite z."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy_forward(logits: np.ndarray, labels: np.ndarray):
    """L = -(1/N) Σ_n log softmax(z_n)[y_n].

    logits (N, classes) float, labels (N,) integers in [0, classes) -> (L, cache),
    L a scalar of the logits' dtype.
    """
    common_float_dtype("softmax_cross_entropy_forward", logits=logits)
    require_ndim("softmax_cross_entropy_forward", "logits", logits, 2, "(N, classes)")
    labels = np.asarray(labels)
    n, classes = logits.shape
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"softmax_cross_entropy_forward: labels must be integers of shape ({n},), "
            f"got {labels.dtype} {labels.shape}"
        )
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"softmax_cross_entropy_forward: labels must lie in [0, {classes})")
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
