"""Numba CPU kernels for the data movement around convolution, max-pooling and MPD's block form.

Most kernels are serial: they are small beside the products around them. The block form's four
layout moves (gather_blocks, rows_from_blocks, blocks_from_rows, scatter_blocks) share the images
between Numba's threads: a network's passes run inside `mpdref.kernels.threads.numba_pass` (BLAS on
one thread, no second pool spinning), and at batch 1024 these moves were most of an MPD
LeNet-300-100 forward pass. Each output is a copy (or a copy plus the bias), so the threads
change no bit. So does the SGD update of a large parameter (`sgd_momentum_update`), element by
element in chunks. Patch matrices are laid out (C·KH·KW, N·OH·OW) so that the
innermost loops of these kernels, and every transpose around the matrix
products, move contiguous runs of memory.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from mpdref.kernels.config import PARALLEL, SERIAL


@numba.njit(**SERIAL)
def im2col(x, kh, kw, stride, padding, oh, ow):
    """Patches of x as columns; equals `mpdref.ops.conv.im2col` (tests/test_ops.py holds them equal).

    x (N, C, H, W) -> cols (C, KH, KW, N, OH, OW) with
    cols[c, p, q, n, i, j] = x[n, c, i·s - pad + p, j·s - pad + q] (0 outside the
    image); reshaped to (C·KH·KW, N·OH·OW) it is the patch matrix.
    """
    n_batch, channels, height, width = x.shape
    cols = np.empty((channels, kh, kw, n_batch, oh, ow), dtype=x.dtype)
    for c in range(channels):
        for p in range(kh):
            for q in range(kw):
                for n in range(n_batch):
                    for i in range(oh):
                        h = i * stride - padding + p
                        for j in range(ow):
                            w = j * stride - padding + q
                            if 0 <= h < height and 0 <= w < width:
                                cols[c, p, q, n, i, j] = x[n, c, h, w]
                            else:
                                cols[c, p, q, n, i, j] = 0
    return cols


@numba.njit(**SERIAL)
def col2im(dcols, height, width, stride, padding):
    """Adjoint of `im2col`: sum each patch gradient back onto the image.

    dcols (C, KH, KW, N, OH, OW) -> dx (N, C, H, W); equals `mpdref.ops.conv.col2im` bit for bit
    (the same additions in the same order).
    """
    channels, kh, kw, n_batch, oh, ow = dcols.shape
    dx = np.zeros((n_batch, channels, height, width), dtype=dcols.dtype)
    for c in range(channels):
        for p in range(kh):
            for q in range(kw):
                for n in range(n_batch):
                    for i in range(oh):
                        h = i * stride - padding + p
                        if h < 0 or h >= height:
                            continue
                        for j in range(ow):
                            w = j * stride - padding + q
                            if 0 <= w < width:
                                dx[n, c, h, w] += dcols[c, p, q, n, i, j]
    return dx


@numba.njit(**SERIAL)
def max_pool2d_forward(x, kh, kw, stride, oh, ow):
    """Window maxima and where they are; equals `mpdref.ops.max_pool2d_forward` (its y and argmax).

    x (N, C, H, W) -> (y (N, C, OH, OW), argmax int32 (N, C, OH, OW)), argmax the
    flat index h·W + w of the *first* maximum in row-major window order
    (strict `>`), the tie rule of PyTorch and ONNX.
    """
    n_batch, channels, height, width = x.shape
    planes = x.reshape(n_batch * channels, height, width)
    y = np.empty((n_batch * channels, oh, ow), dtype=x.dtype)
    argmax = np.empty((n_batch * channels, oh, ow), dtype=np.int32)
    for nc in range(n_batch * channels):
        plane = planes[nc]
        for i in range(oh):
            h0 = i * stride
            for j in range(ow):
                w0 = j * stride
                best = plane[h0, w0]
                where = h0 * width + w0
                for p in range(kh):
                    for q in range(kw):
                        v = plane[h0 + p, w0 + q]
                        if v > best:
                            best = v
                            where = (h0 + p) * width + (w0 + q)
                y[nc, i, j] = best
                argmax[nc, i, j] = where
    return y.reshape(n_batch, channels, oh, ow), argmax.reshape(n_batch, channels, oh, ow)


@numba.njit(**SERIAL)
def max_pool2d_forward_2x2(x):
    """`max_pool2d_forward` for kernel 2, stride 2 (both MNIST conv nets), unrolled; equal to it."""
    n_batch, channels, height, width = x.shape
    oh, ow = height // 2, width // 2
    planes = x.reshape(n_batch * channels, height, width)
    y = np.empty((n_batch * channels, oh, ow), dtype=x.dtype)
    argmax = np.empty((n_batch * channels, oh, ow), dtype=np.int32)
    for nc in range(n_batch * channels):
        plane = planes[nc]
        for i in range(oh):
            top = plane[2 * i]
            bottom = plane[2 * i + 1]
            for j in range(ow):
                best = top[2 * j]
                where = 2 * i * width + 2 * j
                if top[2 * j + 1] > best:  # strict: the first maximum in row-major order wins
                    best = top[2 * j + 1]
                    where = 2 * i * width + 2 * j + 1
                if bottom[2 * j] > best:
                    best = bottom[2 * j]
                    where = (2 * i + 1) * width + 2 * j
                if bottom[2 * j + 1] > best:
                    best = bottom[2 * j + 1]
                    where = (2 * i + 1) * width + 2 * j + 1
                y[nc, i, j] = best
                argmax[nc, i, j] = where
    return y.reshape(n_batch, channels, oh, ow), argmax.reshape(n_batch, channels, oh, ow)


@numba.njit(**SERIAL)
def max_pool2d_backward(dout, argmax, height, width):
    """Route each window's gradient to its first maximum (summing where windows overlap); equals
    `mpdref.ops.max_pool2d_backward`.

    dout, argmax (N, C, OH, OW) -> dx (N, C, H, W).
    """
    n_batch, channels, oh, ow = dout.shape
    dx = np.zeros((n_batch * channels, height * width), dtype=dout.dtype)
    d = dout.reshape(n_batch * channels, oh * ow)
    a = argmax.reshape(n_batch * channels, oh * ow)
    for nc in range(n_batch * channels):
        for k in range(oh * ow):
            dx[nc, a[nc, k]] += d[nc, k]
    return dx.reshape(n_batch, channels, height, width)


@numba.njit(**SERIAL)
def _sgd_momentum_serial(w, v, g, mask, lr, momentum, weight_decay):
    for i in range(w.size):
        gi = g[i] + weight_decay * w[i] if weight_decay != 0 else g[i]
        vi = momentum * v[i]
        vi += gi
        if mask is not None and not mask[i]:
            v[i] = 0
            w[i] = 0
            continue
        v[i] = vi
        w[i] = w[i] - lr * vi


#: elements of a parameter from which its SGD update runs on Numba's threads (in chunks of SGD_CHUNK)
SGD_THREADS_FROM = 1 << 16
SGD_CHUNK = 1 << 14


@numba.njit(**PARALLEL)
def _sgd_momentum_threads(w, v, g, mask, lr, momentum, weight_decay):
    # each chunk as views handed to the serial loop (written with start and stop indices in the loop
    # instead, it compiled to code five times slower than the serial loop)
    for chunk in prange(-(-w.size // SGD_CHUNK)):
        s0, s1 = chunk * SGD_CHUNK, min(w.size, (chunk + 1) * SGD_CHUNK)
        if mask is None:
            _sgd_momentum_serial(w[s0:s1], v[s0:s1], g[s0:s1], None, lr, momentum, weight_decay)
        else:
            _sgd_momentum_serial(w[s0:s1], v[s0:s1], g[s0:s1], mask[s0:s1], lr, momentum, weight_decay)


def sgd_momentum_update(w, v, g, mask, lr, momentum, weight_decay):
    """One pass of `mpdref.train.SGD.reference_step`'s rule, in place, for one parameter (flat views):
    `sgd_step` of tests/naive.py. Element by element, so a large parameter (SGD_THREADS_FROM
    elements and up: LeNet-300-100's fc1, 235,200) is shared out between Numba's threads in chunks
    with the same bits.

    lr, momentum and weight_decay arrive in w's dtype, so the arithmetic (and its
    rounding) is that of the NumPy rule; `mask` is None or bool.
    """
    if w.size >= SGD_THREADS_FROM:
        _sgd_momentum_threads(w, v, g, mask, lr, momentum, weight_decay)
    else:
        _sgd_momentum_serial(w, v, g, mask, lr, momentum, weight_decay)


@numba.njit(**SERIAL)
def relu_forward(x, out):
    """out = max(x, 0) (flat arrays) as np.maximum(x, 0) gives it, bit for bit: NaN passes through
    with its bits, and -0.0 becomes +0.0."""
    for i in range(x.size):
        xi = x[i]
        out[i] = xi if xi > 0 or xi != xi else 0


@numba.njit(**SERIAL)
def relu_backward(dout, y, out):
    """out = dout where y > 0, else 0 (flat arrays): `mpdref.ops.relu_backward`'s np.where in one pass."""
    for i in range(dout.size):
        out[i] = dout[i] if y[i] > 0 else 0


# ----------------------------------------------------------------------------- the training loss
# `mpdref.ops.training_loss` row by row: the gradient in the logits' dtype (the constants arrive in
# it), the loss's two sums over the batch in float64; one exp per logit, where the reference takes a
# second (softmax as the exp of the log-softmax; here e / Σ e), each row's sum in order, libm's exp
# and log, where NumPy sums pairwise with its own vectorized exp and log: equal to the reference
# to rounding (tests/test_ops.py). About fifteen NumPy calls of a few microseconds each become one
# compiled pass.


@numba.njit(**SERIAL)
def _softmax_row(z, probs):
    """probs = softmax(z) = e / Σ e with e = exp(z − max z), for one row; returns (max z, log Σ e),
    from which log softmax(z)_c = (z_c − max z) − log Σ e (`mpdref.ops.log_softmax`). NaN propagates."""
    m = z[0]
    for c in range(1, z.size):
        if z[c] > m or z[c] != z[c]:
            m = z[c]
    s = np.exp(z[0] - m)  # (the first term, not a zero made of z[0] - z[0]: that is NaN where z[0] is -inf)
    probs[0] = s
    for c in range(1, z.size):
        e = np.exp(z[c] - m)
        probs[c] = e
        s += e
    for c in range(z.size):
        probs[c] /= s
    return m, np.log(s)


@numba.njit(**SERIAL)
def softmax_cross_entropy(logits, labels, inv_n, dlogits):
    """Σ_n −log softmax(z_n)[y_n] (the loss times N, in float64), and dlogits = (softmax(z_n) −
    onehot(y_n)) · inv_n in place: `mpdref.ops.softmax_cross_entropy_forward` and `_backward`
    (dloss = 1) in one pass. A label outside [0, classes) stops it: (NaN, its row)."""
    n, classes = logits.shape
    total = 0.0
    for i in range(n):
        y = labels[i]
        if y < 0 or y >= classes:
            return np.nan, i
        row = dlogits[i]
        m, log_s = _softmax_row(logits[i], row)
        total -= (logits[i, y] - m) - log_s
        row[y] -= 1  # (in float64 for a float32 row, then rounded: the float32 difference itself, bit for bit)
        for c in range(classes):
            row[c] *= inv_n
    return total, -1


@numba.njit(**SERIAL)
def distillation(logits, labels, teacher_logits, temperature, hard_scale, soft_scale, inv_n, dlogits):
    """`mpdref.ops.distillation_forward` and `_backward` (dloss = 1) in one call (two passes over the
    rows: `softmax_cross_entropy`'s, then the soft term's): the cross-entropy's sum as
    `softmax_cross_entropy` gives it, Σ_n KL(q_n ‖ p_n) (both in float64), and in place
    dlogits = (softmax(z_n) − onehot(y_n)) · inv_n · hard_scale + (p_n − q_n) · soft_scale,
    p = softmax(z / T), q = softmax(t / T); hard_scale = 1 − α and soft_scale = α·T·inv_n in the
    logits' dtype, as the reference computes them."""
    n, classes = logits.shape
    total, bad = softmax_cross_entropy(logits, labels, inv_n, dlogits)
    if bad >= 0:
        return total, np.nan, bad
    scratch = np.empty((4, classes), dtype=logits.dtype)
    z_t, t_t, p, q = scratch[0], scratch[1], scratch[2], scratch[3]
    kl = 0.0
    for i in range(n):
        for c in range(classes):
            z_t[c] = logits[i, c] / temperature
            t_t[c] = teacher_logits[i, c] / temperature
        m_p, log_s_p = _softmax_row(z_t, p)
        m_q, log_s_q = _softmax_row(t_t, q)
        row = dlogits[i]
        for c in range(classes):
            kl += q[c] * (((t_t[c] - m_q) - log_s_q) - ((z_t[c] - m_p) - log_s_p))
            row[c] *= hard_scale
            row[c] += (p[c] - q[c]) * soft_scale
    return total, kl, -1


# ----------------------------------------------------------------------------- MPD block form (mpdref.mpd)
# The layout moves of the block form's dense layers (`mpdref.ops.block`), each one pass;
# tests/test_mpd.py holds each equal to its NumPy reference.


@numba.njit(**PARALLEL)
def gather_blocks(x, padded_gather, out):
    """out (k, N, C)[b, i, j] = x[i, padded_gather[b·C + j]], 0 where that index is -1 (padding);
    equals `mpdref.ops.block.gather_blocks`. Image by image (the threads share them): each row of x is
    read while it is in L1, once for all k blocks (block by block, a batch of 1024 LeNet-300-100
    inputs, 3.2 MB, went through L3 eleven times: 410 us on one thread; 220 us so, on two)."""
    k, n, c = out.shape
    for i in prange(n):
        for b in range(k):
            for j in range(c):
                src = padded_gather[b * c + j]
                out[b, i, j] = x[i, src] if src >= 0 else 0


@numba.njit(**SERIAL)
def _block_and_row(valid_rows, r_max):
    """(block, row): valid_rows[q] = block[q]·R + row[q], divided once per call, not once per image
    (a 64-bit division costs tens of cycles: dividing in the loop took 43 us of a 93 us layer)."""
    block = np.empty(len(valid_rows), dtype=np.int64)
    row = np.empty(len(valid_rows), dtype=np.int64)
    for q in range(len(valid_rows)):
        block[q] = valid_rows[q] // r_max
        row[q] = valid_rows[q] - block[q] * r_max
    return block, row


@numba.njit(**PARALLEL)
def rows_from_blocks(ys, valid_rows, bias, out):
    """out (N, rows)[i, q] = ys (k, N, R)[b, i, r] + bias[q] where valid_rows[q] = b·R + r; equals
    `mpdref.ops.block.rows_from_blocks`. The threads share the images."""
    k, n, r_max = ys.shape
    block, row = _block_and_row(valid_rows, r_max)
    for i in prange(n):
        for q in range(len(valid_rows)):
            out[i, q] = ys[block[q], i, row[q]] + bias[q]


@numba.njit(**PARALLEL)
def blocks_from_rows(dout, valid_rows, out):
    """out (k, N, R) = 0, then out[b, i, r] = dout[i, q] where valid_rows[q] = b·R + r (the adjoint of
    rows_from_blocks without the bias); equals `mpdref.ops.block.blocks_from_rows`."""
    k, n, r_max = out.shape
    block, row = _block_and_row(valid_rows, r_max)
    for i in prange(n):
        for b in range(k):
            out[b, i, :] = 0
        for q in range(len(valid_rows)):
            out[block[q], i, row[q]] = dout[i, q]


@numba.njit(**PARALLEL)
def scatter_blocks(dxs, padded_gather, out):
    """out (N, cols)[i, padded_gather[b·C + j]] = dxs (k, N, C)[b, i, j], padding (index -1) dropped
    (the adjoint of gather_blocks; padded_gather is a permutation of the columns but for the padding);
    equals `mpdref.ops.block.scatter_blocks`."""
    k, n, c = dxs.shape
    for i in prange(n):
        for b in range(k):
            for j in range(c):
                dst = padded_gather[b * c + j]
                if dst >= 0:
                    out[i, dst] = dxs[b, i, j]
