"""2-D convolution (cross-correlation, as in PyTorch), NCHW, w (F, C, KH, KW).

    y[n, f, i, j] = b[f] + Σ_{c, p, q} w[f, c, p, q] · x̃[n, c, i·s + p, j·s + q]

where x̃ is x zero-padded by `padding` on each side and s the stride. The
product is computed as one matrix multiply over patches (im2col):
w.reshape(F, C·KH·KW) @ cols (C·KH·KW, N·OH·OW). The patch gathering and its
adjoint run as Numba kernels (`mpdref.kernels.cpu`); the NumPy references for
both are below and the tests hold them equal.
"""
from __future__ import annotations

import numpy as np

from mpdref.kernels import cpu
from mpdref.ops._checks import common_float_dtype, require_ndim


def conv2d_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _check_conv_args(x, w, b, stride, padding):
    common_float_dtype("conv2d_forward", x=x, w=w, b=b)
    require_ndim("conv2d_forward", "x", x, 4, "(N, C, H, W)")
    require_ndim("conv2d_forward", "w", w, 4, "(F, C, KH, KW)")
    if x.shape[1] != w.shape[1] or b.shape != (w.shape[0],):
        raise ValueError(
            f"conv2d_forward: shapes do not fit: x {x.shape}, w {w.shape}, b {b.shape}"
        )
    if stride < 1 or padding < 0:
        raise ValueError(f"conv2d_forward: need stride >= 1 and padding >= 0, got {stride}, {padding}")
    oh = conv2d_output_size(x.shape[2], w.shape[2], stride, padding)
    ow = conv2d_output_size(x.shape[3], w.shape[3], stride, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d_forward: kernel {w.shape[2:]} larger than padded input {x.shape[2:]}")
    return oh, ow


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, padding: int = 0):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) -> y (N, F, OH, OW), cache."""
    oh, ow = _check_conv_args(x, w, b, stride, padding)
    n, f = x.shape[0], w.shape[0]
    kh, kw = w.shape[2:]
    cols = cpu.im2col(np.ascontiguousarray(x), kh, kw, stride, padding, oh, ow)
    cols = cols.reshape(-1, n * oh * ow)  # (C·KH·KW, N·OH·OW)
    y = w.reshape(f, -1) @ cols  # (F, N·OH·OW)
    y = y.reshape(f, n, oh * ow).transpose(1, 0, 2) + b[:, None]  # (N, F, OH·OW)
    return y.reshape(n, f, oh, ow), (cols, w, x.shape, stride, padding)


def conv2d_backward(dout: np.ndarray, cache, need_dx: bool = True):
    """dout (N, F, OH, OW) -> (dx (N, C, H, W) or None, dw (F, C, KH, KW), db (F,)).

    dw = Σ_patches dy ⊗ patch; dx scatters wᵀ dy back onto the patches (col2im).
    """
    cols, w, x_shape, stride, padding = cache
    n, f, oh, ow = dout.shape
    dy = np.ascontiguousarray(dout.reshape(n, f, oh * ow).transpose(1, 0, 2)).reshape(f, -1)  # (F, N·OH·OW)
    db = dy.sum(axis=1)
    dw = (dy @ cols.T).reshape(w.shape)  # (F, C·KH·KW) -> (F, C, KH, KW)
    dx = None
    if need_dx:
        dcols = w.reshape(f, -1).T @ dy  # (C·KH·KW, N·OH·OW)
        dcols = dcols.reshape(*w.shape[1:], n, oh, ow)  # (C, KH, KW, N, OH, OW)
        dx = cpu.col2im(dcols, x_shape[2], x_shape[3], stride, padding)
    return dx, dw, db


# ----------------------------------------------------------------------------- references


def im2col_reference(x: np.ndarray, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """NumPy reference for `kernels.cpu.im2col`: (N, C, H, W) -> (C, KH, KW, N, OH, OW)."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (N, C, OH, OW, KH, KW)
    return np.ascontiguousarray(windows.transpose(1, 4, 5, 0, 2, 3))


def col2im_reference(dcols: np.ndarray, height: int, width: int, stride: int, padding: int) -> np.ndarray:
    """NumPy reference for `kernels.cpu.col2im`: (C, KH, KW, N, OH, OW) -> (N, C, H, W)."""
    c, kh, kw, n, oh, ow = dcols.shape
    dxp = np.zeros((n, c, height + 2 * padding, width + 2 * padding), dtype=dcols.dtype)
    for p in range(kh):
        for q in range(kw):
            dxp[:, :, p : p + stride * oh : stride, q : q + stride * ow : stride] += (
                dcols[:, p, q].transpose(1, 0, 2, 3)
            )
    return dxp[:, :, padding : padding + height, padding : padding + width]
