"""2-D convolution (cross-correlation, as in PyTorch), NCHW, w (F, C, KH, KW).

    y[n, f, i, j] = b[f] + Σ_{c, p, q} w[f, c, p, q] · x̃[n, c, i·s + p, j·s + q]

where x̃ is x zero-padded by `padding` on each side and s the stride. The
product is computed as one matrix multiply over patches (im2col):
w.reshape(F, C·KH·KW) @ cols (C·KH·KW, N·OH·OW).

A grouped convolution splits the channels into consecutive groups, group g of
c_g input channels feeding its own f_g filters; groups may differ in size (MPD's
block-diagonal conv layers: `mpdref.mpd`).

The data movement (`im2col`, `col2im`) has Numba versions in
`mpdref.kernels.cpu`; `mpdref.kernels.fast_ops` puts them in these functions' place.
"""
from __future__ import annotations

import numpy as np

from mpdref.ops._checks import common_float_dtype, require_ndim


def conv2d_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def check_conv2d_args(x, w, b, stride, padding) -> tuple[int, int]:
    """(OH, OW) after checking dtypes and shapes; raises TypeError or ValueError naming the problem."""
    common_float_dtype("conv2d_forward", x=x, w=w, b=b)
    require_ndim("conv2d_forward", "x", x, 4, "(N, C, H, W)")
    require_ndim("conv2d_forward", "w", w, 4, "(F, C, KH, KW)")
    if x.shape[1] != w.shape[1] or b.shape != (w.shape[0],):
        raise ValueError(f"conv2d_forward: shapes do not fit: x {x.shape}, w {w.shape}, b {b.shape}")
    if stride < 1 or padding < 0:
        raise ValueError(f"conv2d_forward: need stride >= 1 and padding >= 0, got {stride}, {padding}")
    oh = conv2d_output_size(x.shape[2], w.shape[2], stride, padding)
    ow = conv2d_output_size(x.shape[3], w.shape[3], stride, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d_forward: kernel {w.shape[2:]} larger than padded input {x.shape[2:]}")
    return oh, ow


def im2col(x: np.ndarray, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """Patches of x: (N, C, H, W) -> cols (C, KH, KW, N, OH, OW),

        cols[c, p, q, n, i, j] = x̃[n, c, i·s + p, j·s + q]

    reshaped to (C·KH·KW, N·OH·OW) it is the patch matrix."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))  # x̃
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))  # (N, C, H', W', KH, KW)
    windows = windows[:, :, ::stride, ::stride]  # (N, C, OH, OW, KH, KW)
    return np.ascontiguousarray(windows.transpose(1, 4, 5, 0, 2, 3))


def col2im(dcols: np.ndarray, height: int, width: int, stride: int, padding: int) -> np.ndarray:
    """The adjoint of `im2col`: every patch gradient summed back onto the image,

        dx̃[n, c, i·s + p, j·s + q] += dcols[c, p, q, n, i, j],   dx = dx̃ without its padding

    dcols (C, KH, KW, N, OH, OW) -> dx (N, C, H, W); for each element the terms are added
    in (p, q) row-major order."""
    c, kh, kw, n, oh, ow = dcols.shape
    dxp = np.zeros((n, c, height + 2 * padding, width + 2 * padding), dtype=dcols.dtype)
    for p in range(kh):
        for q in range(kw):
            dxp[:, :, p : p + stride * oh : stride, q : q + stride * ow : stride] += (
                dcols[:, p, q].transpose(1, 0, 2, 3)
            )
    return np.ascontiguousarray(dxp[:, :, padding : padding + height, padding : padding + width])


def conv2d_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, padding: int = 0, im2col=im2col):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) -> y (N, F, OH, OW), cache.

    `im2col`: the patch gathering (the NumPy one above, or a compiled equal)."""
    oh, ow = check_conv2d_args(x, w, b, stride, padding)
    n, f = x.shape[0], w.shape[0]
    kh, kw = w.shape[2:]
    cols = im2col(np.ascontiguousarray(x), kh, kw, stride, padding)
    cols = cols.reshape(-1, n * oh * ow)  # (C·KH·KW, N·OH·OW)
    y = w.reshape(f, -1) @ cols  # (F, N·OH·OW)
    y = y.reshape(f, n, oh * ow).transpose(1, 0, 2) + b[:, None]  # (N, F, OH·OW)
    return y.reshape(n, f, oh, ow), (cols, w, x.shape, stride, padding)


def conv2d_backward(dout: np.ndarray, cache, need_dx: bool = True, col2im=col2im):
    """dout (N, F, OH, OW) -> (dx (N, C, H, W) or None, dw (F, C, KH, KW), db (F,)).

        db[f] = Σ_{n,i,j} dy[n, f, i, j]
        dw[f, c, p, q] = Σ_{n,i,j} dy[n, f, i, j] · x̃[n, c, i·s + p, j·s + q]      (dy · colsᵀ)
        dx̃[n, c, i·s + p, j·s + q] += Σ_f w[f, c, p, q] · dy[n, f, i, j]           (col2im of wᵀ · dy)

    With `need_dx` False (the network's first layer) dx is not computed. `col2im`: the
    scatter back onto the image (the NumPy one above, or a compiled equal)."""
    cols, w, x_shape, stride, padding = cache
    n, f, oh, ow = dout.shape
    dy = np.ascontiguousarray(dout.reshape(n, f, oh * ow).transpose(1, 0, 2)).reshape(f, -1)  # (F, N·OH·OW)
    db = dy.sum(axis=1)
    dw = (dy @ cols.T).reshape(w.shape)  # (F, C·KH·KW) -> (F, C, KH, KW)
    dx = None
    if need_dx:
        dcols = w.reshape(f, -1).T @ dy  # (C·KH·KW, N·OH·OW)
        dcols = dcols.reshape(*w.shape[1:], n, oh, ow)  # (C, KH, KW, N, OH, OW)
        dx = col2im(dcols, x_shape[2], x_shape[3], stride, padding)
    return dx, dw, db


def grouped_conv2d_forward(x: np.ndarray, weights: list[np.ndarray], b: np.ndarray, stride: int = 1,
                           padding: int = 0, conv2d_forward=conv2d_forward):
    """Groups of channels convolved apart: weights[g] (f_g, c_g, KH, KW), sizes free.

    Group g reads input channels C_g = [Σ_{h<g} c_h, Σ_{h≤g} c_h) and writes output channels
    F_g = [Σ_{h<g} f_h, Σ_{h≤g} f_h):

        y[:, F_g] = conv2d(x[:, C_g], weights[g], b[F_g])

    x (N, Σ c_g, H, W), b (Σ f_g,) -> y (N, Σ f_g, OH, OW), cache. With equal groups this is
    PyTorch's conv2d(groups=G) with w = concatenate(weights). `conv2d_forward`: the
    per-group convolution (this module's, or a compiled equal)."""
    if not weights:
        raise ValueError("grouped_conv2d_forward: no groups")
    c_in, f_out = sum(w.shape[1] for w in weights), sum(w.shape[0] for w in weights)
    if x.ndim != 4 or x.shape[1] != c_in or b.shape != (f_out,):
        raise ValueError(f"grouped_conv2d_forward: shapes do not fit: x {x.shape}, groups of "
                         f"{[tuple(w.shape) for w in weights]} (need {c_in} channels), b {b.shape} (need {f_out},)")
    outs, caches, c0, f0 = [], [], 0, 0
    for w in weights:
        f_g, c_g = w.shape[:2]
        y, cache = conv2d_forward(np.ascontiguousarray(x[:, c0 : c0 + c_g]), w, b[f0 : f0 + f_g], stride, padding)
        outs.append(y)
        caches.append(cache)
        c0, f0 = c0 + c_g, f0 + f_g
    return (outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)), caches  # one group: no copy


def grouped_conv2d_backward(dout: np.ndarray, cache, need_dx: bool = True, conv2d_backward=conv2d_backward):
    """dout (N, Σ f_g, OH, OW) -> (dx (N, Σ c_g, H, W) or None, [dw_g (f_g, c_g, KH, KW)], db (Σ f_g,)):
    each group's `conv2d_backward` on its own output channels F_g, the dx_g side by side."""
    dxs, dws, dbs, f0 = [], [], [], 0
    for group_cache in cache:
        f_g = group_cache[1].shape[0]  # the group's weight
        dx_g, dw, db = conv2d_backward(np.ascontiguousarray(dout[:, f0 : f0 + f_g]), group_cache, need_dx)
        dxs.append(dx_g)
        dws.append(dw)
        dbs.append(db)
        f0 += f_g
    dx = (dxs[0] if len(dxs) == 1 else np.concatenate(dxs, axis=1)) if need_dx else None
    return dx, dws, np.concatenate(dbs)
