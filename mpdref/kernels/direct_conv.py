"""Direct 2-D convolution on the CPU: the patches read straight from the image (padded, or laid out
in vector lanes), never gathered into a patch matrix.

    y[n, f, i, j] = b[f] + Σ_{c, p, q} w[f, c, p, q] · x̃[n, c, i + p, j + q]      (stride 1)

The reference (`mpdref.ops.conv2d_forward`) writes every patch out (im2col: KH·KW copies of
the input, 642 MB for Deep MNIST's conv2 at batch 1024) and multiplies once. Here each
image is zero-padded once into x̃, and the outputs are computed on the grid of x̃'s width:
output pixel P = i·Wg + j, for j < Wg rather than j < OW. On that grid the input that weight
(c, p, q) meets at pixel P is x̃ₙ[c·Hp·Wg + p·Wg + q + P]: for every weight a run of
consecutive pixels reads a run of consecutive inputs, which is what a register tile wants
(`mpdref.kernels.intrinsics.gathered_tile_product`: TILE_ROWS filters × NR pixels in vector
registers, the weights' offsets in a table).

The rows of x̃ are Wg = W + padding wide, not W + 2·padding: each row holds its W inputs and
then `padding` zeros, which serve as that row's right padding and, read one row on, as the
next row's left padding (a window that starts `padding` columns left of a row's first input
reads the end of the row above: zeros). Hp = H + 2·padding rows, zeros above and below,
and `padding` zeros before the first row, where the first window starts. The Wg − OW =
KW − 1 − padding columns past each output row are computed and dropped: (Wg / OW − 1) more
arithmetic (14% for Deep MNIST's conv2, 50% for LeNet-5's), against no patch matrix at all.
Every output still sums the same terms in the same order as on a grid of W + 2·padding.

The gradient with respect to the input is the same kernel: for stride 1,

    dx[n, c, h, w] = Σ_{f, p, q} w[f, c, KH−1−p, KW−1−q] · dỹ[n, f, h + p, w + q]

with dỹ = dy zero-padded by KH−1−padding (a "full" correlation with the flipped, transposed
weights; its grid is W + padding wide, the columns past W dropped). The gradient of the
weights is the same tile turned around (`conv2d_parameter_gradients`):

    dw[f, c, p, q] = Σ_n Σ_P dyₙ[f, P] · x̃ₙ[c·Hp·Wg + p·Wg + q + P]

over the output pixels P = i·Wg + j, j < OW (the grid's dropped columns, where dy would be 0,
are left out of the sum: `mpdref.kernels.intrinsics.term_tile_product` over the list of them),
TILE_ROWS weights (c, p, q) × NR filters per tile, its rows read from the padded image at the
weights' offsets.

A batch of at least NR images (NR = tile_columns(dtype), 32 float32 with AVX-512) and sums of at
least LANE_MIN_DEPTH terms go another way (`_lane_conv`): the images in the tile's vector lanes,
blocks of NR laid out as x[c, h, w, lane], and for each output pixel a list of the terms whose
input is inside the image (`mpdref.kernels.intrinsics.term_tile_product`). Nothing meets the
padding and no column is dropped: LeNet-5's conv2 input gradient, whose padded grid above does
307 M multiply-adds a batch of 64 for 102 M that count, does those (123 M with its 20 output
channels rounded up to the tile's 24 rows). A product of a finite weight with a padded zero is
±0, and adding ±0 leaves a nonzero running sum as it is: both ways give the same value, and the
same bits (tests/test_direct_conv.py; tests/golden at a batch of 64), but for the sign of a zero
result: a sum whose every product underflows to −0 (|w·x| below half the smallest subnormal,
under FMA) stays −0 here and becomes +0 on the padded grid. An infinite or NaN weight times a
padded zero is NaN on the padded grid, and skipped here. The same holds for the weight
gradient's dropped columns below: dy's zeros there met real inputs, so an infinite input gave
NaN in gradients whose true sum has none.

Each output of the forward pass and of the input gradient is one running sum over its
terms in row-major order, so it does not depend on the batch it comes in or the number of
threads; each weight gradient is one running sum over the images in order, then the
pixels, whatever the threads. All differ from the reference's BLAS sums in rounding only
(tests/test_direct_conv.py and tests/test_ops.py hold both to the loop oracles of
tests/naive.py). The threads share the images (forward, input gradient; in lanes, the blocks
of images and output pixels) or the weights (weight gradient), with `prange`. The bias gradient
comes with the weight gradient's layout pass: each image's running sum, then the images' in
order (the reference sums them pairwise).
"""
from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import prange

from mpdref.kernels.config import PARALLEL
from mpdref.kernels.intrinsics import CPU_TILE, gathered_tile_product, term_tile_product, tile_columns

TILE_ROWS = CPU_TILE.rows


def supported(w_shape: tuple, stride: int, padding: int) -> bool:
    """Whether the direct path computes this convolution, forward and backward (else the reference's
    im2col does): stride 1, a square kernel, padding at most its size − 1."""
    kh, kw = w_shape[2:]
    return stride == 1 and kh == kw and padding <= kh - 1


def _grid(h, w, kh, kw, padding, nr):
    """(Hp, Wg, OH, OW, pixels on the grid rounded up to whole tiles of nr)."""
    hp, wg = h + 2 * padding, w + padding
    oh, ow = hp - kh + 1, w + 2 * padding - kw + 1
    return hp, wg, oh, ow, -(-oh * wg // nr) * nr


@numba.njit(**PARALLEL)
def _pad_images(x, padding, image_len):
    """x (N, C, H, W) -> (N · image_len,): image n at [n · image_len:], `padding` zeros, then
    channel c at padding + c·Hp·Wg, its input row h at row h + padding of Hp = H + 2·padding,
    each row Wg = W + padding wide (W inputs, then zeros); zeros after the last channel."""
    n_batch, channels, height, width = x.shape
    hp, wg = height + 2 * padding, width + padding
    out = np.zeros(n_batch * image_len, dtype=x.dtype)
    for n in prange(n_batch):
        for c in range(channels):
            for h in range(height):
                start = n * image_len + padding + c * hp * wg + (h + padding) * wg
                out[start:start + width] = x[n, c, h]
    return out


@numba.njit(**PARALLEL)
def _direct_conv(xp, image_len, w_rows, row_starts, steps, bias, n_batch, filters, oh, ow, wg, pixels, nr):
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
                src = f * pixels + i * wg
                for j in range(ow):
                    y[n, f, i, j] = grid[src + j] + bias[f]
    return y


@numba.njit(**PARALLEL)
def _weight_gradient(xp, image_len, offsets, dyv, terms, f_pad, nr, chunks):
    """dwᵀ (len(offsets), f_pad): row r the gradient of the weight at offset offsets[r] of a padded
    image, for every filter: Σ_n Σ_P xp[n·image_len + offsets[r] + P] · dyv[n, P, f] over the output
    pixels P = i·Wg + j (j < OW; terms: `_output_terms`). The rows' tiles are cut into `chunks`
    consecutive runs, one per unit of work; each unit goes through the images in order (its tiles'
    running sums: image by image, pixel by pixel)."""
    rows = len(offsets)
    pixels = len(terms) // 2
    n_batch = len(dyv) // (pixels * f_pad)
    dwt = np.zeros(rows * f_pad, dtype=xp.dtype)
    tiles = rows // TILE_ROWS
    for chunk in prange(chunks):
        t0, t1 = chunk * tiles // chunks, (chunk + 1) * tiles // chunks
        for n in range(n_batch):
            for t in range(t0, t1):
                for f0 in range(0, f_pad, nr):
                    term_tile_product(xp, n * image_len, offsets, t * TILE_ROWS, dyv, n * pixels * f_pad + f0, terms, 0,
                                      dwt, t * TILE_ROWS * f_pad + f0, f_pad, pixels, n > 0)
    return dwt


@functools.lru_cache(maxsize=32)
def _output_terms(oh, ow, wg, f_pad):
    """The weight gradient's terms (see term_tile_product): for output pixel (i, j) in row-major
    order, (i·Wg + j: where it meets a weight's input on the padded grid, (i·OW + j)·f_pad: its row
    of dyv). Only the pixels that are outputs: the grid's dropped columns would add dy's zeros."""
    i, j = np.divmod(np.arange(oh * ow, dtype=np.int64), ow)
    terms = np.stack([i * wg + j, (i * ow + j) * f_pad], axis=1).ravel()
    terms.flags.writeable = False
    return terms


@numba.njit(**PARALLEL)
def _dy_in_rows(dout, f_pad):
    """dy (N, F, OH, OW) -> (dyv, db): dyv (N · OH·OW · f_pad,) holds image n's output pixel
    (i, j), filter f at [(n·OH·OW + i·OW + j)·f_pad + f], zero past F; db (F,) = Σ_n Σ_{i,j}
    dy[n, f, i, j], each image's sum a running sum over its pixels in order, then the images' sums
    added in order (the same bits whatever the threads)."""
    n_batch, filters, oh, ow = dout.shape
    pixels = oh * ow
    out = np.zeros(n_batch * pixels * f_pad, dtype=dout.dtype)
    per_image = np.empty((n_batch, filters), dtype=dout.dtype)
    for n in prange(n_batch):
        for f in range(filters):  # dy read in order; the image's rows (pixels × f_pad) stay in cache
            total = dout.dtype.type(0)
            for i in range(oh):
                row = (n * pixels + i * ow) * f_pad + f
                for j in range(ow):
                    value = dout[n, f, i, j]
                    out[row + j * f_pad] = value
                    total += value
            per_image[n, f] = total
    db = np.zeros(filters, dtype=dout.dtype)
    for n in range(n_batch):
        for f in range(filters):
            db[f] += per_image[n, f]
    return out, db


@functools.lru_cache(maxsize=32)
def _weight_offsets(channels, kh, kw, hp, wg):
    """Padded.offsets (read-only, one array per shape)."""
    c_idx, p_idx, q_idx = np.meshgrid(np.arange(channels), np.arange(kh), np.arange(kw), indexing="ij")
    offsets = (c_idx * hp * wg + p_idx * wg + q_idx).ravel().astype(np.int64)
    offsets.flags.writeable = False
    return offsets


class Padded:
    """Images zero-padded for the direct kernels, and the weights' offsets in them.

    x (N, C, H, W), a kernel of KH × KW, `padding`: `flat` holds image n at [n · image_len:] as
    `_pad_images` lays it out (rows Wg = W + padding wide); `offsets[r]` is where weight r (of
    C·KH·KW, in (c, p, q) row-major order: the order of the sums) meets output pixel 0: the
    window of output (0, 0) starts `padding` columns left of the first input row, at the
    `padding` zeros before channel 0 (for c > 0, at the end of channel c − 1's last row: zeros).
    """

    def __init__(self, x: np.ndarray, kh: int, kw: int, padding: int):
        self.n, channels, h, w = x.shape
        self.nr = tile_columns(x.dtype)
        self.hp, self.wg, self.oh, self.ow, self.pixels = _grid(h, w, kh, kw, padding, self.nr)
        self.offsets = _weight_offsets(channels, kh, kw, self.hp, self.wg)
        self.image_len = int(self.offsets[-1]) + self.pixels  # the last tile of pixels reads up to here
        self.flat = _pad_images(np.ascontiguousarray(x), padding, self.image_len)


#: the fewest terms per output (C·KH·KW) for which `_lane_conv` pays: it lays the images out in
#: lanes and its outputs back, a cost per input and output that a deep sum hides and a shallow one
#: does not (alone at batch 64, float32, against the padded grid: the conv1 layers of LeNet-5 and
#: Deep MNIST, 25 terms, 1.39 and 2.20 times its time; LeNet-5's conv2, 500 terms, 0.85-0.99;
#: conv2's input gradient, 1,250 terms of which 56% meet the padding, 0.59-0.60)
LANE_MIN_DEPTH = 100


def in_lanes(x_shape: tuple, w_shape: tuple, dtype) -> bool:
    """Whether conv2d_direct puts the images in the vector lanes (`_lane_conv`): a batch that fills a
    tile's columns at least once, and sums of at least LANE_MIN_DEPTH terms. Either way each output
    sums the same nonzero terms in the same order (the module's docstring)."""
    return x_shape[0] >= tile_columns(dtype) and math.prod(w_shape[1:]) >= LANE_MIN_DEPTH


@functools.lru_cache(maxsize=32)
def _lane_terms(channels, h, w, kh, kw, padding, lanes):
    """The terms of `_lane_conv` for x (C, H, W, lanes) and a KH × KW kernel: (terms, starts, lengths,
    pattern, base). Output pixel P = (i, j) sums, in (c, p, q) row-major order, the weights whose
    input x[c, i + p − padding, j + q − padding] lies inside the image (the others meet the zero
    padding, and a product with zero adds nothing to the sum: see the module's docstring). The
    rows p of those weights run over [max(0, padding − i), min(KH, H + padding − i)), the columns
    q likewise: pixels with the same ranges (a border class)
    share one list, terms[2·starts[k]:][: 2·lengths[k]] for k = pattern[P], of (weight offset
    (c·KH + p)·KW + q, input offset ((c·H + p)·W + q)·lanes) pairs; base[P] = ((i − padding)·W +
    j − padding)·lanes moves the input offsets to pixel P."""
    oh, ow = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    c_idx = np.arange(channels)[:, None, None]
    lists, index, pattern = [], {}, np.empty(oh * ow, dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            key = (max(0, padding - i), min(kh, h + padding - i), max(0, padding - j), min(kw, w + padding - j))
            if key not in index:
                p = np.arange(key[0], key[1])[None, :, None]
                q = np.arange(key[2], key[3])[None, None, :]
                a_offsets = ((c_idx * kh + p) * kw + q).ravel()
                b_offsets = (((c_idx * h + p) * w + q) * lanes).ravel()
                index[key] = len(lists)
                lists.append(np.stack([a_offsets, b_offsets], axis=1).ravel())
            pattern[i * ow + j] = index[key]
    lengths = np.array([len(terms) // 2 for terms in lists], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    i, j = np.divmod(np.arange(oh * ow), ow)
    base = (((i - padding) * w + j - padding) * lanes).astype(np.int64)
    tables = (np.concatenate(lists).astype(np.int64), starts, lengths, pattern, base)
    for table in tables:
        table.flags.writeable = False
    return tables


@numba.njit(**PARALLEL)
def _lane_conv(x, w_rows, row_starts, terms, starts, lengths, pattern, base, bias, filters, oh, ow, nr):
    """y (N, F, OH, OW) = the convolution of x (N, C, H, W) with the filters in w_rows (F rounded up to
    whole tiles, row f at row_starts[f]: the filter's weights in (c, p, q) order). First the images
    in blocks of nr lanes, xt: x[n, c, h, w] at ((((n // nr)·C + c)·H + h)·W + w)·nr + n % nr (zeros in the
    lanes past N); then for each block and output pixel, every tile of TILE_ROWS filters × nr images
    sums the pixel's terms (see _lane_terms) and the pixel's outputs go to y. One kernel, so that a
    process compiles one (parallel kernels are not cached on disk)."""
    n_batch, channels, height, width = x.shape
    f_pad = len(row_starts)
    blocks = -(-n_batch // nr)
    image_len = channels * height * width
    xt = np.zeros(blocks * image_len * nr, dtype=x.dtype)
    for unit in prange(blocks * channels):
        block, c = unit // channels, unit % channels
        for h in range(height):
            for w in range(width):
                row = (((block * channels + c) * height + h) * width + w) * nr
                for n in range(block * nr, min(n_batch, (block + 1) * nr)):
                    xt[row + n - block * nr] = x[n, c, h, w]
    pixels = oh * ow
    y = np.empty((n_batch, filters, oh, ow), dtype=x.dtype)
    for unit in prange(blocks * pixels):
        block, pixel = unit // pixels, unit % pixels
        i, j = pixel // ow, pixel % ow
        k = pattern[pixel]
        grid = np.empty(f_pad * nr, dtype=x.dtype)  # (F_pad, nr): this pixel's outputs
        for f0 in range(0, f_pad, TILE_ROWS):
            term_tile_product(w_rows, 0, row_starts, f0, xt, block * image_len * nr + base[pixel], terms, starts[k],
                              grid, f0 * nr, nr, lengths[k], False)
        for f in range(filters):
            for lane in range(min(nr, n_batch - block * nr)):
                y[block * nr + lane, f, i, j] = grid[f * nr + lane] + bias[f]
    return y


def conv2d_direct(x: np.ndarray, w: np.ndarray, b: np.ndarray, padding: int, padded: Padded | None = None):
    """y (N, F, OH, OW) = the stride-1 convolution of x (N, C, H, W) with w (F, C, KH, KW) and b (F,),
    x zero-padded by `padding` (or given as `padded`, which the weight gradient can use again);
    arguments checked by the caller (`mpdref.ops.conv.check_conv2d_args`). A batch `in_lanes`
    (and no `padded`) goes through `_lane_conv`, which skips the padding; else each image on its
    padded grid (`_direct_conv`). The two give the same bits but for the sign of a zero result (the
    module's docstring says when; tests/test_direct_conv.py)."""
    f, _, kh, kw = w.shape
    if padded is None and in_lanes(x.shape, w.shape, x.dtype):
        return _conv_in_lanes(x, w, b, padding)
    xp = padded or Padded(x, kh, kw, padding)
    w_rows, row_starts = _filter_rows(w)
    return _direct_conv(xp.flat, xp.image_len, w_rows, row_starts, xp.offsets, np.ascontiguousarray(b),
                        xp.n, f, xp.oh, xp.ow, xp.wg, xp.pixels, xp.nr)


def _filter_rows(w):
    """(w_rows, row_starts): the filters of w (F, C, KH, KW) as rows of C·KH·KW weights in (c, p, q)
    order, F rounded up to whole tiles with zero rows, flat, row f at row_starts[f] (the tiles'
    left operand)."""
    f = w.shape[0]
    depth = w[0].size
    f_pad = -(-f // TILE_ROWS) * TILE_ROWS
    w_rows = np.zeros((f_pad, depth), dtype=w.dtype)
    w_rows[:f] = w.reshape(f, -1)
    return w_rows.reshape(-1), np.arange(f_pad, dtype=np.int64) * depth


def _conv_in_lanes(x, w, b, padding):
    """conv2d_direct with the images in the vector lanes (`_lane_conv`, its terms from `_lane_terms`)."""
    _, channels, h, width = x.shape
    f, _, kh, kw = w.shape
    nr = tile_columns(x.dtype)
    terms, starts, lengths, pattern, base = _lane_terms(channels, h, width, kh, kw, padding, nr)
    w_rows, row_starts = _filter_rows(w)
    oh, ow = h + 2 * padding - kh + 1, width + 2 * padding - kw + 1
    return _lane_conv(np.ascontiguousarray(x), w_rows, row_starts, terms, starts, lengths, pattern, base,
                      np.ascontiguousarray(b), f, oh, ow, nr)


def conv2d_parameter_gradients(dout: np.ndarray, padded: Padded, w_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(dw (F, C, KH, KW), db (F,)) of a stride-1 convolution from dy (N, F, OH, OW) and its input as
    `padded`; db is summed in the pass that lays dy out for dw (`_dy_in_rows`)."""
    f = w_shape[0]
    nr = padded.nr
    f_pad = -(-f // nr) * nr
    rows = padded.offsets.size
    rows_pad = -(-rows // TILE_ROWS) * TILE_ROWS
    offsets = np.zeros(rows_pad, dtype=np.int64)  # rows past the weights read offset 0 and are dropped
    offsets[:rows] = padded.offsets
    dyv, db = _dy_in_rows(np.ascontiguousarray(dout), f_pad)
    terms = _output_terms(padded.oh, padded.ow, padded.wg, f_pad)
    chunks = min(rows_pad // TILE_ROWS, numba.get_num_threads())
    dwt = _weight_gradient(padded.flat, padded.image_len, offsets, dyv, terms, f_pad, nr, chunks)
    return np.ascontiguousarray(dwt.reshape(rows_pad, f_pad)[:rows, :f].T).reshape(w_shape), db


def conv2d_input_gradient(dout: np.ndarray, w: np.ndarray, padding: int) -> np.ndarray:
    """dx (N, C, H, W) of a stride-1 convolution from dy (N, F, OH, OW): the direct convolution of dy,
    zero-padded by KH − 1 − padding, with the weights flipped and transposed (F ↔ C)."""
    kh, kw = w.shape[2:]
    if not supported(w.shape, 1, padding):
        raise ValueError(f"conv2d_input_gradient: padding {padding} with a {kh}x{kw} kernel (see supported)")
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    return conv2d_direct(dout, flipped, np.zeros(w.shape[1], dtype=w.dtype), kh - 1 - padding)
