"""2-D max-pooling, NCHW, no padding.

    y[n, c, i, j] = max_{p < K, q < K} x[n, c, i·s + p, j·s + q]

The gradient goes to the first maximum of each window in row-major order,
as in PyTorch and ONNX (after a ReLU, ties between zeros are common):

    dx[n, c, h, w] = Σ_{i, j : argmax[n, c, i, j] = h·W + w} dy[n, c, i, j]

`mpdref.kernels.fast_ops` has compiled equals of both directions.
"""
from __future__ import annotations

import numpy as np

from mpdref.ops._checks import common_float_dtype, require_ndim


def pool_output_size(x_shape, kernel: int, stride: int) -> tuple[int, int]:
    """(OH, OW) after checking that the window fits; raises ValueError otherwise."""
    oh = (x_shape[2] - kernel) // stride + 1
    ow = (x_shape[3] - kernel) // stride + 1
    if kernel < 1 or stride < 1 or oh < 1 or ow < 1:
        raise ValueError(
            f"max_pool2d_forward: kernel {kernel}, stride {stride} do not fit input {x_shape}"
        )
    return oh, ow


def check_max_pool2d_args(x, kernel, stride) -> tuple[int, int]:
    common_float_dtype("max_pool2d_forward", x=x)
    require_ndim("max_pool2d_forward", "x", x, 4, "(N, C, H, W)")
    return pool_output_size(x.shape, kernel, stride)


def max_pool2d_forward(x: np.ndarray, kernel: int = 2, stride: int | None = None):
    """x (N, C, H, W) -> y (N, C, OH, OW), cache; stride defaults to the kernel size.

    The cache holds argmax (N, C, OH, OW) int32: the flat index h·W + w, within its
    (H, W) plane, of each window's first maximum."""
    stride = kernel if stride is None else stride
    oh, ow = check_max_pool2d_args(x, kernel, stride)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride][:, :, :oh, :ow]  # (N, C, OH, OW, K, K)
    flat = windows.reshape(*windows.shape[:4], kernel * kernel)
    first = flat.argmax(axis=-1)  # np.argmax returns the first maximum
    y = np.take_along_axis(flat, first[..., None], axis=-1)[..., 0]
    p, q = np.divmod(first, kernel)
    rows = np.arange(oh)[:, None] * stride + p  # (N, C, OH, OW)
    cols = np.arange(ow)[None, :] * stride + q
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
