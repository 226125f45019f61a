"""What an MPD network costs to store, and the k that reaches a compression ratio.

A layer with k blocks stores its kept weights (the blocks) and its bias in float32, its
two permutations at ceil(log2 n) bits per index, and the k - 1 inner boundaries of each
dimension at ceil(log2 (n + 1)) bits each; the ratio is against every parameter in dense
float32.
"""
from __future__ import annotations

import numpy as np

from mpdref.bits import index_bits
from mpdref.mpd.masks import split_bounds


def layer_storage_bits(weight_shape: tuple[int, ...], k: int | None, bias_size: int) -> dict:
    """Stored bits of one layer: dense (k None) or MPD with k blocks.

    MPD: the kept weights (the blocks) in float32, the bias in float32, both
    permutations at ceil(log2 n) bits per index, and the k - 1 inner boundaries
    of each dimension at ceil(log2 (n + 1)) bits each.
    """
    rows, cols = weight_shape[0], weight_shape[1]
    kernel = int(np.prod(weight_shape[2:], dtype=np.int64)) if len(weight_shape) > 2 else 1
    if k is None:
        return {"weights": rows * cols * kernel * 32, "bias": bias_size * 32, "permutations": 0, "boundaries": 0}
    row_sizes, col_sizes = np.diff(split_bounds(rows, k)), np.diff(split_bounds(cols, k))
    kept = int(np.sum(row_sizes * col_sizes)) * kernel
    return {"weights": kept * 32, "bias": bias_size * 32,
            "permutations": rows * index_bits(rows) + cols * index_bits(cols),
            "boundaries": (k - 1) * (index_bits(rows + 1) + index_bits(cols + 1))}


def storage_table(shapes: dict[str, tuple[int, ...]], ks: dict[str, int]) -> dict:
    """Per-layer and total stored bits of a network whose weights `ks` are MPD-masked.

    `shapes`: parameter name -> shape (weights and biases). Returns
    {"layers": {weight: {..bits..}}, "stored_bits", "dense_bits", "ratio"}.
    """
    layers = {}
    for name, shape in shapes.items():
        if not name.endswith(".weight"):
            continue
        bias = shapes.get(name[: -len("weight")] + "bias", (0,))
        layers[name] = layer_storage_bits(shape, ks.get(name), int(np.prod(bias)))
    dense = 32 * sum(int(np.prod(s)) for s in shapes.values())
    stored = sum(sum(v.values()) for v in layers.values())
    return {"layers": layers, "stored_bits": stored, "dense_bits": dense, "ratio": dense / stored}


def choose_k(shapes: dict[str, tuple[int, ...]], layers: list[str], ratio: float) -> dict[str, int]:
    """The smallest common k for `layers` (capped per layer at its smaller dimension) that stores
    the network at least `ratio` times smaller than dense float32; ValueError if none does."""
    for k in range(1, max(min(shapes[n][:2]) for n in layers) + 1):
        ks = {n: min(k, *shapes[n][:2]) for n in layers}
        if storage_table(shapes, ks)["ratio"] >= ratio:
            return ks
    best = storage_table(shapes, {n: min(shapes[n][:2]) for n in layers})["ratio"]
    raise ValueError(f"no k reaches {ratio}x on layers {layers}: the most is {best:.2f}x; mask more layers")


def blocks_per_layer(shapes: dict[str, tuple[int, ...]], layers: list[str], k: dict | None = None,
                     k_all: int | None = None, ratio: float | None = None) -> dict[str, int]:
    """k per weight from exactly one of: `k` (weight -> k, taken as given), `k_all` (one k for every
    listed layer, capped at each layer's smaller dimension) or `ratio` (`choose_k`)."""
    if sum(v is not None for v in (k, k_all, ratio)) != 1:
        raise ValueError("give exactly one of k, k_all and ratio")
    if k is not None:
        return dict(k)
    if k_all is not None:
        return {n: min(k_all, *shapes[n][:2]) for n in layers}
    return choose_k(shapes, layers, ratio)
