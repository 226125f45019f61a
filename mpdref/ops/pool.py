"""2-D max-pooling, NCHW, no padding.

    y[n, c, i, j] = max_{p < KH, q < KW} x[n, c, i·SH + p·DH, j·SW + q·DW]

with a kernel of KH × KW taps, strides SH, SW and dilations DH, DW (the gaps between taps; 1:
adjacent taps). The networks use square kernels, one stride and no dilation; ONNX's MaxPool
(`mpdref.interop`) the rest.

The gradient goes to the first maximum of each window in row-major order,
as in PyTorch and ONNX (after a ReLU, ties between zeros are common):

    dx[n, c, h, w] = Σ_{i, j : argmax[n, c, i, j] = h·W + w} dy[n, c, i, j]

`mpdref.kernels.fast_ops` has compiled equals of both directions.
"""
from __future__ import annotations

import numpy as np

from mpdref.ops._checks import common_float_dtype, require_ndim


def _pair(value) -> tuple[int, int]:
    """(rows, columns) from one int for both axes or a pair."""
    rows, cols = (value, value) if np.ndim(value) == 0 else value
    return int(rows), int(cols)


def pool_output_size(x_shape, kernel, stride, dilation=1) -> tuple[int, int]:
    """(OH, OW) after checking that the window fits; raises ValueError otherwise.

    kernel, stride, dilation: an int for both axes or (rows, columns). A window reaches across
    D·(K - 1) + 1 rows (columns), so OH = (H - DH·(KH - 1) - 1) // SH + 1."""
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel), _pair(stride), _pair(dilation)
    oh = (x_shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (x_shape[3] - dw * (kw - 1) - 1) // sw + 1
    if min(kh, kw, sh, sw, dh, dw) < 1 or oh < 1 or ow < 1:
        dilated = f", dilation {dilation}" if _pair(dilation) != (1, 1) else ""
        raise ValueError(
            f"max_pool2d_forward: kernel {kernel}, stride {stride}{dilated} do not fit input {x_shape}"
        )
    return oh, ow


def check_max_pool2d_args(x, kernel, stride, dilation=1) -> tuple[int, int]:
    common_float_dtype("max_pool2d_forward", x=x)
    require_ndim("max_pool2d_forward", "x", x, 4, "(N, C, H, W)")
    return pool_output_size(x.shape, kernel, stride, dilation)


def max_pool2d_forward(x: np.ndarray, kernel=2, stride=None, dilation=1):
    """x (N, C, H, W) -> y (N, C, OH, OW), cache. kernel, stride, dilation: an int for both axes or
    (rows, columns); the stride defaults to the kernel size, the dilation to 1.

    The cache holds argmax (N, C, OH, OW) int32: the flat index h·W + w, within its
    (H, W) plane, of each window's first maximum (row-major over the window's taps)."""
    stride = kernel if stride is None else stride
    oh, ow = check_max_pool2d_args(x, kernel, stride, dilation)
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel), _pair(stride), _pair(dilation)
    reach = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)  # the rows and columns one window spans
    windows = np.lib.stride_tricks.sliding_window_view(x, reach, axis=(2, 3))
    windows = windows[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :oh, :ow]  # (N, C, OH, OW, KH, KW)
    flat = windows.reshape(*windows.shape[:4], kh * kw)
    first = flat.argmax(axis=-1)  # np.argmax returns the first maximum
    y = np.take_along_axis(flat, first[..., None], axis=-1)[..., 0]
    p, q = np.divmod(first, kw)
    rows = np.arange(oh)[:, None] * sh + p * dh  # (N, C, OH, OW)
    cols = np.arange(ow)[None, :] * sw + q * dw
    argmax = (rows * x.shape[3] + cols).astype(np.int32)
    return y, (argmax, x.shape)


def max_pool2d_backward(dout: np.ndarray, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W): each window's gradient to its first maximum,
    summed where windows overlap (in window order)."""
    argmax, x_shape = cache
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w), dtype=dout.dtype)
    planes = np.repeat(np.arange(n * c), argmax[0, 0].size)  # the plane of every window
    np.add.at(dx, (planes, argmax.reshape(-1)), dout.reshape(-1))
    return dx.reshape(x_shape)
