"""The fast op set: `mpdref.ops` with the data movement compiled.

The same functions, names and signatures as `mpdref.ops`; where a Numba kernel of
`mpdref.kernels.cpu` does an op's data movement in one pass, the function here is the
reference op with that kernel put in: the arithmetic (the matrix products, the sums)
is the reference's own, so the two sets agree bit for bit (the tests hold them to it).
Four exceptions compute the same values another way, equal to the reference to
rounding: the stride-1 convolution (`mpdref.kernels.direct_conv`, forward and backward;
both held to the loop oracle of tests/naive.py); a dense layer's large products and the
block form's large stacked products inside a pass on Numba's threads
(`mpdref.kernels.threads.numba_pass`, every pass of a network on this set), which
`mpdref.kernels.gemm` computes there instead of BLAS; and the block form's inference layer
(`block_dense_inference`) from a batch of one tile's columns on, in one pass with the images
in the vector lanes (`mpdref.kernels.blockdiag.stacked_blocks_in_lanes`); and a training step's
loss and its gradient (`training_loss`), in one pass per row with each row's sum in order,
the softmax as e / Σ e (not the exp of the log-softmax), libm's exp and log, and the loss
summed over the batch in float64 (`mpdref.kernels.cpu.softmax_cross_entropy`,
`distillation`). Every other op is the reference itself. A network takes this set by default and the
reference with ``backend="reference"`` (`mpdref.models.build`).
"""
from __future__ import annotations

import numpy as np

from mpdref.kernels import blockdiag, cpu, direct_conv, gemm, threads
from mpdref.kernels.intrinsics import tile_columns
from mpdref.ops import activation, block, conv, dense, loss, pool
from mpdref.ops._checks import common_float_dtype
from mpdref.ops import __all__  # noqa: F401  (the same names as the reference set)
from mpdref.ops import (  # noqa: F401  (the ops that have no compiled equal are the reference's)
    block_diagonal_matmul,
    distillation_backward,
    distillation_forward,
    dropout_backward,
    dropout_forward,
    dropout_mask,
    flatten_backward,
    flatten_forward,
    log_softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)


def dense_forward(x, w, b):
    """`mpdref.ops.dense_forward`; inside `threads.numba_pass()`, y = x wᵀ + b with the product
    computed as (w xᵀ)ᵀ by `kernels.gemm.matmul` (w's rows are the tile's rows as they lie: no
    copy of w) and b added in the copy back to (N, out) (`gemm.transposed`; one addition per
    element, as NumPy's), unless it is small (`gemm.is_small`: BLAS's, on one thread)."""
    if not threads.in_numba_pass() or (isinstance(x, np.ndarray) and isinstance(w, np.ndarray) and x.ndim == 2
                                       and w.ndim == 2 and gemm.is_small(w.shape[0], x.shape[1], x.shape[0], x.dtype)):
        return dense.dense_forward(x, w, b)  # which checks the arguments
    dense.check_dense_args(x, w, b)
    yt = gemm.matmul(w, gemm.transposed(x))  # (out, N)
    return gemm.transposed(yt, row_addend=b), (x, w)


def dense_backward(dout, cache, need_dx=True):
    """`mpdref.ops.dense_backward`; inside `threads.numba_pass()`, dx = dy w and dw = dyᵀ x by
    `kernels.gemm.matmul` (db as the reference), unless they are small (`gemm.is_small`)."""
    x, w = cache
    # (both products are x.shape[1] wide: dy w (N, out) @ (out, in), dyᵀ x (out, N) @ (N, in))
    if not threads.in_numba_pass() or gemm.is_small(*dout.shape, x.shape[1], x.dtype):
        return dense.dense_backward(dout, cache, need_dx)
    dx = gemm.matmul(dout, w) if need_dx else None
    dw = gemm.matmul(gemm.transposed(dout), x)
    db = dout.sum(axis=0)
    return dx, dw, db


def im2col(x, kh, kw, stride, padding):
    """`mpdref.ops.conv.im2col` by `kernels.cpu.im2col` (the same patches, one compiled pass)."""
    oh = conv.conv2d_output_size(x.shape[2], kh, stride, padding)
    ow = conv.conv2d_output_size(x.shape[3], kw, stride, padding)
    return cpu.im2col(x, kh, kw, stride, padding, oh, ow)


class _DirectCache(tuple):
    """What a direct convolution keeps for its backward pass: (the input, padded (`direct_conv.Padded`)
    where the forward pass padded it, else the caller's array itself, not a copy, as the dense
    layer's cache keeps its x; w, padding)."""


def conv2d_forward(x, w, b, stride=1, padding=0):
    """`mpdref.ops.conv2d_forward` computed by the direct convolution of `kernels.direct_conv` (where it
    applies: `direct_conv.supported`; equal to the reference to rounding), else with the patches gathered by `kernels.cpu.im2col`."""
    if not direct_conv.supported(w.shape, stride, padding):
        return conv.conv2d_forward(x, w, b, stride, padding, im2col=im2col)
    conv.check_conv2d_args(x, w, b, stride, padding)
    if direct_conv.in_lanes(x.shape, w.shape, x.dtype):  # the images in lanes; padded for dw when it is due
        return direct_conv.conv2d_direct(x, w, b, padding), _DirectCache((x, w, padding))
    padded = direct_conv.Padded(x, w.shape[2], w.shape[3], padding)
    return direct_conv.conv2d_direct(x, w, b, padding, padded), _DirectCache((padded, w, padding))


def conv2d_backward(dout, cache, need_dx=True):
    """`mpdref.ops.conv2d_backward`: after a direct forward pass, by the direct kernels
    (`kernels.direct_conv.conv2d_parameter_gradients`, `conv2d_input_gradient`); else the reference
    with `kernels.cpu.col2im`."""
    if not isinstance(cache, _DirectCache):
        return conv.conv2d_backward(dout, cache, need_dx, col2im=cpu.col2im)
    x, w, padding = cache
    padded = x if isinstance(x, direct_conv.Padded) else direct_conv.Padded(x, w.shape[2], w.shape[3], padding)
    dout = np.ascontiguousarray(dout)
    dw, db = direct_conv.conv2d_parameter_gradients(dout, padded, w.shape)
    dx = direct_conv.conv2d_input_gradient(dout, w, padding) if need_dx else None
    return dx, dw, db


def grouped_conv2d_forward(x, weights, b, stride=1, padding=0):
    """`mpdref.ops.grouped_conv2d_forward`, each group through `conv2d_forward` above."""
    return conv.grouped_conv2d_forward(x, weights, b, stride, padding, conv2d_forward=conv2d_forward)


def grouped_conv2d_backward(dout, cache, need_dx=True):
    """`mpdref.ops.grouped_conv2d_backward`, each group through `conv2d_backward` above."""
    return conv.grouped_conv2d_backward(dout, cache, need_dx, conv2d_backward=conv2d_backward)


def max_pool2d_forward(x, kernel=2, stride=None):
    """`mpdref.ops.max_pool2d_forward` in one pass (`kernels.cpu.max_pool2d_forward`; 2 × 2 unrolled)."""
    stride = kernel if stride is None else stride
    oh, ow = pool.check_max_pool2d_args(x, kernel, stride)
    x = np.ascontiguousarray(x)
    if kernel == 2 and stride == 2:
        y, argmax = cpu.max_pool2d_forward_2x2(x)
    else:
        y, argmax = cpu.max_pool2d_forward(x, kernel, kernel, stride, oh, ow)
    return y, (argmax, x.shape)


def max_pool2d_backward(dout, cache):
    """`mpdref.ops.max_pool2d_backward` in one pass (`kernels.cpu.max_pool2d_backward`)."""
    argmax, x_shape = cache
    return cpu.max_pool2d_backward(np.ascontiguousarray(dout), argmax, x_shape[2], x_shape[3])


def relu_forward(x):
    """`mpdref.ops.relu_forward` in one pass (`kernels.cpu.relu_forward`: the same bits as np.maximum,
    in half its time at a LeNet-300-100 layer's size, 64 × 300)."""
    common_float_dtype("relu_forward", x=x)
    y = np.empty(x.shape, x.dtype)  # C order, so that y.reshape(-1) is a view the kernel writes through
    cpu.relu_forward(np.ascontiguousarray(x).reshape(-1), y.reshape(-1))
    return y, y


def relu_backward(dout, cache):
    """`mpdref.ops.relu_backward` in one pass (`kernels.cpu.relu_backward`; np.where takes three)."""
    y = cache
    if dout.dtype != y.dtype or dout.shape != y.shape:
        return activation.relu_backward(dout, cache)
    out = np.empty(y.shape, y.dtype)  # C order, so that out.reshape(-1) is a view the kernel writes through
    cpu.relu_backward(np.ascontiguousarray(dout).reshape(-1), np.ascontiguousarray(y).reshape(-1), out.reshape(-1))
    return out


def _gather_blocks(x, padded_gather, k):
    xs = np.empty((k, x.shape[0], len(padded_gather) // k), dtype=x.dtype)
    cpu.gather_blocks(x, padded_gather, xs)
    return xs


def _rows_from_blocks(ys, valid_rows, bias):
    y = np.empty((ys.shape[1], len(valid_rows)), dtype=ys.dtype)
    cpu.rows_from_blocks(ys, valid_rows, bias, y)
    return y


def _blocks_from_rows(dout, valid_rows, k, r_max):
    dys = np.empty((k, dout.shape[0], r_max), dtype=dout.dtype)
    cpu.blocks_from_rows(dout, valid_rows, dys)
    return dys


def _scatter_blocks(dxs, padded_gather, cols):
    dx = np.empty((dxs.shape[1], cols), dtype=dxs.dtype)
    cpu.scatter_blocks(dxs, padded_gather, dx)
    return dx


def _stacked_matmul(a, b):
    """The stacked product of the block form: inside `threads.numba_pass()` on Numba's threads
    (`kernels.gemm.batched_matmul`) unless small (`gemm.is_small` of all k products), else NumPy's."""
    if not threads.in_numba_pass() or gemm.is_small(a.shape[0] * a.shape[1], a.shape[2], b.shape[2]):
        return np.matmul(a, b)
    return gemm.batched_matmul(a, b)


def block_dense_forward(x, w, b, padded_gather, valid_rows):
    """`mpdref.ops.block_dense_forward` with the gather and the bias pass in `kernels.cpu`, and inside
    `threads.numba_pass()` the stacked product on Numba's threads (`_stacked_matmul`)."""
    return block.block_dense_forward(x, w, b, padded_gather, valid_rows, gather_blocks=_gather_blocks,
                                     rows_from_blocks=_rows_from_blocks, matmul=_stacked_matmul)


def block_dense_inference(x, w, b, padded_gather, valid_rows):
    """`mpdref.ops.block_dense_inference` in one parallel pass with the images in the vector lanes
    (`kernels.blockdiag.stacked_blocks_in_lanes`; the reference's sums to rounding), for a batch of at
    least one tile's columns (32 float32 images on AVX-512); a smaller one as block_dense_forward."""
    block.check_block_dense_args(x, w, b, padded_gather, valid_rows)
    if x.shape[0] < tile_columns(x.dtype):
        return block_dense_forward(x, w, b, padded_gather, valid_rows)[0]
    return blockdiag.stacked_blocks_in_lanes(x, w, b, padded_gather, valid_rows)  # which checks the index tables


def block_dense_backward(dout, cache, need_dx=True):
    """`mpdref.ops.block_dense_backward` with the two layout moves in `kernels.cpu`, and the stacked
    products as in block_dense_forward."""
    return block.block_dense_backward(dout, cache, need_dx, blocks_from_rows=_blocks_from_rows,
                                      scatter_blocks=_scatter_blocks, matmul=_stacked_matmul)


def training_loss(logits, labels, teacher=None):
    """`mpdref.ops.training_loss` (the loss and dL/dlogits of a training step) by the compiled passes
    of `kernels.cpu` (softmax_cross_entropy, distillation): the reference's checks and errors, its
    constants in the logits' dtype; equal to it to rounding (see the module's text). The
    reference's fifteen NumPy calls took about 20 µs of a 0.4 ms LeNet-300-100 step at batch 64."""
    if teacher is not None:
        loss.check_distillation_args(logits, *teacher)
    # (as the machine's integers: one compilation per logits dtype, and labels of any byte order)
    labels = loss.check_logits_and_labels(logits, labels).astype(np.intp, copy=False)
    n, classes = logits.shape
    if n == 0:
        return loss.training_loss(logits, labels, teacher)  # the reference's mean of nothing
    t = logits.dtype.type
    inv_n = t(1.0 / n)  # the reference's dloss / n, dloss = 1
    dlogits = np.empty((n, classes), dtype=logits.dtype)
    if teacher is None:
        total, bad = cpu.softmax_cross_entropy(logits, labels, inv_n, dlogits)
        if bad >= 0:
            raise loss.label_range_error(classes)
        return t(total / n), dlogits
    teacher_logits, temperature, weight = teacher
    temperature_t, weight_t = t(temperature), t(weight)
    total, kl, bad = cpu.distillation(logits, labels, teacher_logits, temperature_t, 1 - weight_t,
                                      weight_t * temperature_t * inv_n, inv_n, dlogits)
    if bad >= 0:
        raise loss.label_range_error(classes)
    hard, soft = t(total / n), t(kl / n) * temperature_t ** 2
    return t(t(1 - weight) * hard + t(weight) * soft), dlogits
