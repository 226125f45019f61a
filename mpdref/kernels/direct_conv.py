"""Direct 2-D convolution on the CPU: the patches read straight from the padded image, never
gathered into a patch matrix.

    y[n, f, i, j] = b[f] + Σ_{c, p, q} w[f, c, p, q] · x̃[n, c, i + p, j + q]      (stride 1)

The reference (`mpdref.ops.conv2d_forward`) writes every patch out (im2col: KH·KW copies of
the input, 642 MB for Deep MNIST's conv2 at batch 1024) and multiplies once. Here each
image is zero-padded once into x̃ (C, Hp, Wp), and the outputs are computed on the grid of
x̃'s width: output pixel P = i·Wp + j, for j < Wp rather than j < OW. On that grid the input
that weight (c, p, q) meets at pixel P is x̃ₙ[c·Hp·Wp + p·Wp + q + P]: for every weight a
run of consecutive pixels reads a run of consecutive inputs, which is what a register tile
wants (`mpdref.kernels.intrinsics.gathered_tile_product`: TILE_ROWS filters × NR pixels in
vector registers, the weights' offsets in a table). The Wp − OW columns past each output row
are computed and dropped: (Wp / OW − 1) more arithmetic (29% for Deep MNIST's conv2, 50% for
LeNet-5's), against no patch matrix at all.

The gradient with respect to the input is the same kernel: for stride 1,

    dx[n, c, h, w] = Σ_{f, p, q} w[f, c, KH−1−p, KW−1−q] · dỹ[n, f, h + p, w + q]

with dỹ = dy zero-padded by KH−1−padding (a "full" correlation with the flipped, transposed
weights). The gradient of the weights, a sum over the batch, stays the reference's patch
matrix and one BLAS product (`conv2d_backward`).

Each output is one running sum over (c, p, q) in row-major order, so it does not depend on
the batch it comes in or the number of threads; it differs from the reference's BLAS sum
in rounding only (tests/test_ops.py holds both to the loop oracle of tests/naive.py). The
threads share the images (`prange`).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from mpdref.kernels.config import PARALLEL
from mpdref.kernels.intrinsics import CPU_TILE, gathered_tile_product, tile_columns

TILE_ROWS = CPU_TILE.rows


def supported(w_shape: tuple, stride: int, padding: int) -> bool:
    """Whether the direct path computes this convolution, forward and backward (else the reference's
    im2col does): stride 1, a square kernel, padding at most its size − 1."""
    kh, kw = w_shape[2:]
    return stride == 1 and kh == kw and padding <= kh - 1


def _grid(h, w, kh, kw, padding, nr):
    """(Hp, Wp, OH, OW, pixels on the grid rounded up to whole tiles of nr)."""
    hp, wp = h + 2 * padding, w + 2 * padding
    oh, ow = hp - kh + 1, wp - kw + 1
    return hp, wp, oh, ow, -(-oh * wp // nr) * nr


@numba.njit(**PARALLEL)
def _pad_images(x, padding, image_len):
    """x (N, C, H, W) -> (N · image_len,) with image n at [n · image_len:], channel c at c·Hp·Wp of
    it, zero-padded by `padding` on each side, zeros after the last channel."""
    n_batch, channels, height, width = x.shape
    hp, wp = height + 2 * padding, width + 2 * padding
    out = np.zeros(n_batch * image_len, dtype=x.dtype)
    for n in prange(n_batch):
        for c in range(channels):
            for h in range(height):
                start = n * image_len + c * hp * wp + (h + padding) * wp + padding
                out[start:start + width] = x[n, c, h]
    return out


@numba.njit(**PARALLEL)
def _direct_conv(xp, image_len, w_rows, row_starts, steps, bias, n_batch, filters, oh, ow, wp, pixels, nr):
    """y (N, F, OH, OW) from the padded images xp (see _pad_images): for each image, every tile of
    TILE_ROWS filters (w_rows: the weights, (F rounded up to whole tiles) × C·KH·KW, row f at
    row_starts[f]) against every run of nr grid pixels, through the register tile."""
    depth = len(steps)
    f_pad = len(row_starts)
    y = np.empty((n_batch, filters, oh, ow), dtype=xp.dtype)
    for n in prange(n_batch):
        grid = np.empty(f_pad * pixels, dtype=xp.dtype)  # (F_pad, pixels): outputs on the grid
        for f0 in range(0, f_pad, TILE_ROWS):
            for p0 in range(0, pixels, nr):
                gathered_tile_product(w_rows, 0, row_starts, f0, xp, n * image_len + p0, steps,
                                      grid, f0 * pixels + p0, pixels, depth, False)
        for f in range(filters):
            for i in range(oh):
                src = f * pixels + i * wp
                for j in range(ow):
                    y[n, f, i, j] = grid[src + j] + bias[f]
    return y


def conv2d_direct(x: np.ndarray, w: np.ndarray, b: np.ndarray, padding: int) -> np.ndarray:
    """y (N, F, OH, OW) = the stride-1 convolution of x (N, C, H, W) with w (F, C, KH, KW) and b (F,),
    x zero-padded by `padding`; arguments checked by the caller (`mpdref.ops.conv.check_conv2d_args`)."""
    n, channels, h, wd = x.shape
    f, _, kh, kw = w.shape
    nr = tile_columns(x.dtype)
    hp, wp, oh, ow, pixels = _grid(h, wd, kh, kw, padding, nr)
    # the weights' offsets in a padded image, in (c, p, q) row-major order: the order of the sum
    c_idx, p_idx, q_idx = np.meshgrid(np.arange(channels), np.arange(kh), np.arange(kw), indexing="ij")
    steps = (c_idx * hp * wp + p_idx * wp + q_idx).ravel().astype(np.int64)
    image_len = int(steps[-1]) + pixels  # the last tile of pixels reads up to here
    f_pad = -(-f // TILE_ROWS) * TILE_ROWS
    w_rows = np.zeros((f_pad, steps.size), dtype=x.dtype)
    w_rows[:f] = w.reshape(f, -1)
    row_starts = np.arange(f_pad, dtype=np.int64) * steps.size
    xp = _pad_images(np.ascontiguousarray(x), padding, image_len)
    return _direct_conv(xp, image_len, w_rows.ravel(), row_starts, steps, np.ascontiguousarray(b), n, f, oh, ow,
                        wp, pixels, nr)


def conv2d_input_gradient(dout: np.ndarray, w: np.ndarray, padding: int) -> np.ndarray:
    """dx (N, C, H, W) of a stride-1 convolution from dy (N, F, OH, OW): the direct convolution of dy,
    zero-padded by KH − 1 − padding, with the weights flipped and transposed (F ↔ C)."""
    kh, kw = w.shape[2:]
    if not supported(w.shape, 1, padding):
        raise ValueError(f"conv2d_input_gradient: padding {padding} with a {kh}x{kw} kernel (see supported)")
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    return conv2d_direct(dout, flipped, np.zeros(w.shape[1], dtype=w.dtype), kh - 1 - padding)
