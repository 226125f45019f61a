"""2-D max-pooling, NCHW, no padding.

    y[n, c, i, j] = max_{p < KH, q < KW} x[n, c, i·s + p, j·s + q]

The gradient goes to the first maximum of each window in row-major order,
as in PyTorch and ONNX (after a ReLU, ties between zeros are common).
"""
from __future__ import annotations

import numpy as np

from mpdref.kernels import cpu
from mpdref.ops._checks import common_float_dtype, require_ndim


def _output_size(x_shape, kernel, stride):
    oh = (x_shape[2] - kernel) // stride + 1
    ow = (x_shape[3] - kernel) // stride + 1
    if kernel < 1 or stride < 1 or oh < 1 or ow < 1:
        raise ValueError(
            f"max_pool2d_forward: kernel {kernel}, stride {stride} do not fit input {x_shape}"
        )
    return oh, ow


def max_pool2d_forward(x: np.ndarray, kernel: int = 2, stride: int | None = None):
    """x (N, C, H, W) -> y (N, C, OH, OW), cache; stride defaults to the kernel size."""
    stride = kernel if stride is None else stride
    common_float_dtype("max_pool2d_forward", x=x)
    require_ndim("max_pool2d_forward", "x", x, 4, "(N, C, H, W)")
    oh, ow = _output_size(x.shape, kernel, stride)
    x = np.ascontiguousarray(x)
    if kernel == 2 and stride == 2:
        y, argmax = cpu.max_pool2d_forward_2x2(x)
    else:
        y, argmax = cpu.max_pool2d_forward(x, kernel, kernel, stride, oh, ow)
    return y, (argmax, x.shape)


def max_pool2d_backward(dout: np.ndarray, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    argmax, x_shape = cache
    return cpu.max_pool2d_backward(np.ascontiguousarray(dout), argmax, x_shape[2], x_shape[3])


def max_pool2d_reference(x: np.ndarray, kernel: int = 2, stride: int | None = None):
    """NumPy reference for `kernels.cpu.max_pool2d_forward`: (y, argmax as flat h*W + w)."""
    stride = kernel if stride is None else stride
    oh, ow = _output_size(x.shape, kernel, stride)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride][:, :, :oh, :ow]  # (N, C, OH, OW, K, K)
    flat = windows.reshape(*windows.shape[:4], kernel * kernel)
    first = flat.argmax(axis=-1)  # np.argmax returns the first maximum
    y = np.take_along_axis(flat, first[..., None], axis=-1)[..., 0]
    p, q = np.divmod(first, kernel)
    rows = np.arange(oh)[:, None] * stride + p
    cols = np.arange(ow)[None, :] * stride + q
    return y, rows * x.shape[3] + cols
