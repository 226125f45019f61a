"""Magnitude pruning (Han, Pool, Tran and Dally 2015; Deep Compression, stage 1).

A weight survives when its magnitude reaches the layer's threshold,

    m_ij = 1  if |w_ij| >= t   and it survived so far,        t = q · std(W)   (quality q)

or, for a target fraction kept f, t is the magnitude of the ⌈f · size⌉-th largest weight,
so that exactly that many survive (ties broken by position). std(W) is taken over the
weights still kept. The mask joins the network's masks: masked SGD keeps pruned weights
and their momentum exactly 0 from then on. Iterative pruning is a sequence of
prune and train stages in an experiment (configs/deep-compression-*.toml), each prune
stage keeping a smaller fraction and each train stage retraining under the mask at a
lower learning rate.

Sensitivity analysis prunes one layer at a time, without retraining, over a range of
fractions kept, and measures the validation error: the table (and `mpdref.figures.
plot_sensitivity`'s figure) from which a per-layer plan is chosen. The stages are in
`mpdref.runner.stages.prune`.
"""
from __future__ import annotations

import math

import numpy as np


def magnitude_mask(w: np.ndarray, mask: np.ndarray | None = None, keep: float | None = None,
                   quality: float | None = None) -> np.ndarray:
    """The new bool mask of weight `w` (its current mask `mask`, or all kept): by fraction or by quality.

    keep: the fraction of all of w's entries to keep, in (0, 1]; quality: t = quality · std(kept w).
    Exactly one of the two. The result is never larger than `mask`.
    """
    if (keep is None) == (quality is None):
        raise ValueError("give exactly one of keep and quality")
    current = np.ones(w.shape, bool) if mask is None else np.asarray(mask, bool)
    kept_values = np.abs(w[current])
    if keep is not None:
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], not {keep}")
        count = min(math.ceil(keep * w.size), kept_values.size)
        order = np.argsort(-np.abs(w).ravel() * current.ravel(), kind="stable")  # largest first, by position on ties
        new = np.zeros(w.size, bool)
        new[order[:count]] = True
        return new.reshape(w.shape) & current
    if quality < 0:
        raise ValueError(f"quality must be >= 0, not {quality}")
    threshold = quality * float(np.std(w[current])) if kept_values.size else 0.0
    return current & (np.abs(w) >= threshold)


def weights_kept(net) -> float:
    """The fraction of all of `net`'s weights that its masks keep (biases not counted)."""
    names = net.weight_names()
    total = sum(net.params[n].size for n in names)
    return sum(int(net.masks[n].sum()) if n in net.masks else net.params[n].size for n in names) / total


def prune(net, keep: dict | None = None, quality: dict | None = None) -> dict:
    """Prune the named weights of `net` in place; returns {name: fraction kept}."""
    out = {}
    for name, value in list((keep or {}).items()) + list((quality or {}).items()):
        by_keep = name in (keep or {})
        new = magnitude_mask(net.params[name], net.masks.get(name),
                             keep=value if by_keep else None, quality=None if by_keep else value)
        net.set_mask(name, new)
        out[name] = float(new.mean())
    return out


def sensitivity(net, layers: list[str], keeps: list[float], x: np.ndarray, y: np.ndarray) -> dict:
    """{layer: [error after pruning only that layer to each fraction in keeps]}; `net` is left unchanged."""
    table = {}
    for name in layers:
        saved_w, saved_mask = net.params[name], net.masks.get(name)
        try:
            errors = []
            for keep in keeps:  # each prunes the saved weights afresh (set_mask zeroes a copy)
                net.params[name] = saved_w.copy()
                net.set_mask(name, magnitude_mask(saved_w, saved_mask, keep=keep))
                errors.append(net.error_rate(x, y))
            table[name] = errors
        finally:
            net.params[name] = saved_w
            if saved_mask is None:
                net.masks.pop(name, None)
            else:
                net.masks[name] = saved_mask
    return table


# ----------------------------------------------------------------------------- dead weights


def dead_weights(net) -> dict[str, np.ndarray]:
    """{weight name: bool array, True where the weight cannot change the network's output}.

    A pruned network leaves weights that feed only units no later weight reads: an fc1 unit
    whose column of fc2 is all zero, a conv2 filter whose every position fc1 ignores, a conv1
    filter no conv2 weight reads. Their values multiply into terms that later layers multiply
    by exact zeros, so removing them changes no output, bit for bit (finite weights and inputs).
    They are found walking the layers backward from the logits, carrying which of each layer's
    outputs are read (per unit for dense layers, per channel for convolutions: conservative, a
    filter read at any position is live as a whole). Weights already zero are not marked: the
    result is the nonzero weights to drop.
    """
    from mpdref.models import INPUT_SHAPE

    # each layer's input shape (per image), from one forward pass of a zero image
    shapes, x = [], np.zeros((1, *INPUT_SHAPE), dtype=net.dtype)
    for layer in net.layers:
        shapes.append(x.shape[1:])
        x, _ = layer.forward(net.params, x, False, None)
    live = np.ones(x.shape[1:], bool)  # the logits: all read
    dead = {}
    for layer, shape in zip(reversed(net.layers), reversed(shapes)):
        kind = type(layer).__name__
        if kind == "Dense":
            w = net.params[f"{layer.name}.weight"]
            dead[f"{layer.name}.weight"] = (w != 0) & ~live[:, None]
            live = ((w != 0) & live[:, None]).any(axis=0)
        elif kind == "Conv2d":
            w = net.params[f"{layer.name}.weight"]
            filter_live = live.reshape(live.shape[0], -1).any(axis=1)
            dead[f"{layer.name}.weight"] = (w != 0) & ~filter_live[:, None, None, None]
            channel_live = ((w != 0) & filter_live[:, None, None, None]).any(axis=(0, 2, 3))
            live = np.broadcast_to(channel_live[:, None, None], shape).copy()
        elif kind == "MaxPool2d":  # an input pixel is read where its window's output is
            k = layer.kernel
            c, oh, ow = live.shape
            read = np.zeros(shape, bool)
            read[:, : oh * k, : ow * k] = live.repeat(k, axis=1).repeat(k, axis=2)
            live = read
        elif kind == "Flatten":
            live = live.reshape(shape)
        elif kind in ("ReLU", "Dropout"):
            pass
        else:
            raise ValueError(f"dead_weights: no rule for a {kind} layer")
    return {name: dead[name] for name in net.weight_names() if name in dead}


def drop_dead_weights(net) -> dict[str, int]:
    """Prune the weights `dead_weights` finds (masks set, values 0); returns {name: weights dropped}.
    Repeated until none is left (dropping a layer's dead weights can leave earlier ones unread)."""
    dropped = {name: 0 for name in net.weight_names()}
    while True:
        found = {name: d for name, d in dead_weights(net).items() if d.any()}
        if not found:
            return dropped
        for name, d in found.items():
            mask = net.masks.get(name, np.ones(d.shape, bool))
            net.set_mask(name, mask & ~d)
            dropped[name] += int(d.sum())
