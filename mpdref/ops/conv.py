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


def _check_conv_args(x, w, b, stride, padding, groups=1):
    common_float_dtype("conv2d_forward", x=x, w=w, b=b)
    require_ndim("conv2d_forward", "x", x, 4, "(N, C, H, W)")
    require_ndim("conv2d_forward", "w", w, 4, "(F, C / groups, KH, KW)")
    if groups < 1 or x.shape[1] % groups or w.shape[0] % groups:
        raise ValueError(f"conv2d_forward: groups = {groups} must divide the channels {x.shape[1]} and filters {w.shape[0]}")
    if x.shape[1] != w.shape[1] * groups or b.shape != (w.shape[0],):
        raise ValueError(
            f"conv2d_forward: shapes do not fit: x {x.shape}, w {w.shape}, b {b.shape}, groups {groups}"
        )
    if stride < 1 or padding < 0:
        raise ValueError(f"conv2d_forward: need stride >= 1 and padding >= 0, got {stride}, {padding}")
    oh = conv2d_output_size(x.shape[2], w.shape[2], stride, padding)
    ow = conv2d_output_size(x.shape[3], w.shape[3], stride, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d_forward: kernel {w.shape[2:]} larger than padded input {x.shape[2:]}")
    return oh, ow


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, padding: int = 0,
                   groups: int = 1):
    """x (N, C, H, W), w (F, C / groups, KH, KW), b (F,) -> y (N, F, OH, OW), cache.

    With groups = g, input channels and filters split into g equal groups and
    group j's filters see only group j's channels (PyTorch's `groups`): MPD's
    block-diagonal conv layers with equal blocks. (Unequal groups: one call per
    block, as `mpdref.mpd.BlockNetwork` does.)
    """
    if groups != 1:
        _check_conv_args(x, w, b, stride, padding, groups)
        c, f = x.shape[1] // groups, w.shape[0] // groups
        parts = [conv2d_forward(np.ascontiguousarray(x[:, j * c : (j + 1) * c]), w[j * f : (j + 1) * f],
                                b[j * f : (j + 1) * f], stride, padding) for j in range(groups)]
        return np.concatenate([y for y, _ in parts], axis=1), ("groups", [cache for _, cache in parts])
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
    if isinstance(cache[0], str):  # ("groups", per-group caches)
        caches = cache[1]
        f = dout.shape[1] // len(caches)
        parts = [conv2d_backward(np.ascontiguousarray(dout[:, j * f : (j + 1) * f]), c, need_dx)
                 for j, c in enumerate(caches)]
        dx = np.concatenate([p[0] for p in parts], axis=1) if need_dx else None
        return dx, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
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
