"""ONNX graphs evaluated with mpdref's own reference ops (`mpdref.ops`): not onnxruntime, not onnx.reference.

    logits, = run_onnx("lenet-5.onnx", {"input": x})                  # the graph's outputs, in its order
    values = run_onnx(model, {"input": x}, dtype=np.float64, intermediate=True)   # every named value

One function per ONNX operator below, named after it: its positional arguments are the node's
inputs (None for an optional input left out), its keyword arguments the node's attributes under
their ONNX names with the defaults of the spec, and it returns the node's outputs. `OPERATORS`
maps an op type and the operator version that a model's opset selects (its ``since_version``)
to the function; a version not listed there is one whose semantics mpdref does not know, and a
model that uses one is refused before anything is computed (`UnsupportedModel`), as is every
op type not listed. Where the semantics changed between versions (Softmax and LogSoftmax at 13,
Dropout at 10 and 12) the table points each version to its own function.

The math is `mpdref.ops` wherever an op exists there: Conv is `conv2d_forward` (groups:
`grouped_conv2d_forward`), MaxPool `max_pool2d_forward`, Gemm as PyTorch's Linear exports it
`dense_forward`, Relu `relu_forward`, Softmax and LogSoftmax `log_softmax`. What those ops do
not take (asymmetric pads, unequal strides, a dilated convolution kernel, ceil_mode) is
spelled out around them here, each in a line or two. Element-wise arithmetic is NumPy's
broadcasting, which is ONNX's from opset 7; the integer ops (Shape, Gather, Concat, Cast) are
plain NumPy.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from mpdref import ops
from mpdref.io import FormatError

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as error:  # pragma: no cover (the interop extra is installed wherever the tests run)
    raise ImportError("mpdref.interop needs onnx: pip install -e '.[interop]'") from error

#: The oldest default-domain opset read: from 7 on, the element-wise operators broadcast as NumPy does.
MIN_OPSET = 7

#: The tensor element types mpdref computes with, and their NumPy dtypes. Others (bfloat16, the
#: float8, float4 and int4/int2 types, strings, complex) have no NumPy dtype that mpdref's ops take.
ELEMENT_TYPES = {
    TensorProto.FLOAT: np.dtype(np.float32), TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.FLOAT16: np.dtype(np.float16), TensorProto.BOOL: np.dtype(np.bool_),
    TensorProto.INT8: np.dtype(np.int8), TensorProto.INT16: np.dtype(np.int16),
    TensorProto.INT32: np.dtype(np.int32), TensorProto.INT64: np.dtype(np.int64),
    TensorProto.UINT8: np.dtype(np.uint8), TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.UINT32: np.dtype(np.uint32), TensorProto.UINT64: np.dtype(np.uint64),
}


class UnsupportedModel(ValueError):
    """The model uses an operator, an operator version, an element type or a feature that
    `run_onnx` does not evaluate; the message names the node (or value) and what it uses."""


def element_dtype(data_type: int, what: str) -> np.dtype:
    """The NumPy dtype of ONNX element type `data_type`; UnsupportedModel naming `what` if mpdref has none."""
    if data_type not in ELEMENT_TYPES:
        name = TensorProto.DataType.Name(data_type) if data_type in TensorProto.DataType.values() else data_type
        supported = ", ".join(TensorProto.DataType.Name(t) for t in ELEMENT_TYPES)
        raise UnsupportedModel(f"{what} has element type {name}, which mpdref does not compute with "
                               f"(supported: {supported})")
    return ELEMENT_TYPES[data_type]


def tensor_array(tensor: onnx.TensorProto, what: str) -> np.ndarray:
    """The array a TensorProto holds (an initializer or a Constant's value), of a supported element type."""
    element_dtype(tensor.data_type, what)
    return numpy_helper.to_array(tensor)


# ----------------------------------------------------------------------------- windows (Conv, pooling)


def spatial_padding(auto_pad: str, pads, sizes, windows, strides) -> tuple[list[int], list[int]]:
    """(begins, ends): how much padding goes before and after each spatial axis.

    NOTSET: the `pads` attribute, [x1_begin, x2_begin, ..., x1_end, x2_end] (none by default);
    VALID: none; SAME_UPPER / SAME_LOWER: enough for ceil(size / stride) outputs, in all
    max(0, (out - 1)·stride + window - size), the odd one after (UPPER) or before (LOWER) the
    input. `windows`: what one window spans, (kernel - 1)·dilation + 1."""
    rank = len(sizes)
    if auto_pad in ("NOTSET", ""):
        pads = list(pads) if pads else [0] * (2 * rank)
        if len(pads) != 2 * rank or min(pads) < 0:
            raise ValueError(f"pads {pads} are not {2 * rank} numbers >= 0")
        return pads[:rank], pads[rank:]
    if auto_pad == "VALID":
        return [0] * rank, [0] * rank
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max(0, (math.ceil(n / s) - 1) * s + k - n) for n, k, s in zip(sizes, windows, strides)]
        smaller, larger = [t // 2 for t in totals], [t - t // 2 for t in totals]
        return (smaller, larger) if auto_pad == "SAME_UPPER" else (larger, smaller)
    raise ValueError(f"auto_pad {auto_pad!r} is none of NOTSET, VALID, SAME_UPPER, SAME_LOWER")


def output_size(size: int, begin: int, end: int, window: int, stride: int, ceil_mode: int = 0) -> int:
    """The number of windows along one axis: floor((size + begin + end - window) / stride) + 1, or
    with `ceil_mode` the ceiling, less one where that last window would start in the end padding
    (the spec drops such windows)."""
    reach = size + begin + end - window
    if reach < 0:
        raise ValueError(f"a window of {window} does not fit {size} padded by {begin} and {end}")
    if not ceil_mode:
        return reach // stride + 1
    out = -(-reach // stride) + 1
    return out - 1 if (out - 1) * stride >= size + begin else out


def padded_for_windows(x: np.ndarray, begins, spans, fill) -> np.ndarray:
    """x (N, C, H, W) with `fill` added begins[a] before spatial axis a and after it up to spans[a]
    in all, the extent the windows read ((out - 1)·stride + window); cut there where the end
    padding reaches past every window."""
    after = [max(0, span - begin - size) for span, begin, size in zip(spans, begins, x.shape[2:])]
    if begins == [0, 0] and after == [0, 0]:
        return x[:, :, : spans[0], : spans[1]]  # no padding (the networks' pooling): no copy
    padded = np.pad(x, ((0, 0), (0, 0), (begins[0], after[0]), (begins[1], after[1])), constant_values=fill)
    return padded[:, :, : spans[0], : spans[1]]


def window_geometry(x_shape, kernel, auto_pad, pads, strides, dilations, ceil_mode=0):
    """(begins, ends, spans, windows) of a 2-D windowed op, per spatial axis: the padding before and
    after it, the extent the windows read ((out - 1)·stride + window) and what one window spans."""
    windows = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    begins, ends = spatial_padding(auto_pad, pads, x_shape[2:], windows, strides)
    outs = [output_size(n, b, e, k, s, ceil_mode)
            for n, b, e, k, s in zip(x_shape[2:], begins, ends, windows, strides)]
    spans = [(o - 1) * s + k for o, s, k in zip(outs, strides, windows)]
    return begins, ends, spans, windows


def spatial_attributes(x: np.ndarray, kernel_shape, strides, dilations, what: str):
    """(kernel, strides, dilations) as lists for the 2-D image x, ONNX's defaults filled in (stride 1,
    dilation 1); UnsupportedModel unless x is (N, C, H, W)."""
    if x.ndim != 4:
        raise UnsupportedModel(f"{x.ndim - 2}-D {what}: mpdref's ops are 2-D (NCHW; 1-D as one row)")
    if kernel_shape is None or len(kernel_shape) != 2:
        raise ValueError(f"kernel_shape {kernel_shape} does not fit a 2-D input")
    return list(kernel_shape), list(strides or [1, 1]), list(dilations or [1, 1])


def as_one_row(x, pads, strides, dilations, kernel_shape):
    """A 1-D input (N, C, L) as 2-D images one row high (N, C, 1, L), and the attributes to match."""
    def with_row(values):  # (L,) attribute -> (1, L)
        return None if values is None else [1, *values]

    pads = None if pads is None else [0, pads[0], 0, pads[1]]
    return x[:, :, None, :], pads, with_row(strides), with_row(dilations), with_row(kernel_shape)


def computes_with_ops(*arrays) -> bool:
    """Whether the arrays are all float32 or all float64, the dtypes `mpdref.ops` computes with."""
    dtypes = {a.dtype for a in arrays}
    return len(dtypes) == 1 and dtypes <= {np.dtype(np.float32), np.dtype(np.float64)}


# ----------------------------------------------------------------------------- the operators


def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    """Y (N, F, OH, OW) from X (N, C, H, W), W (F, C/G, KH, KW), B (F,) (none: 0), G = `group`:

        Y[n, f, i, j] = B[f] + Σ_{c, p, q} W[f, c, p, q] · X̃[n, g·C/G + c, i·SH + p·DH, j·SW + q·DW]

    f in group g = f // (F/G); X̃ is X with zeros added as `pads` / `auto_pad` say. By
    `mpdref.ops.conv2d_forward` (`grouped_conv2d_forward` for G > 1), which takes one symmetric
    padding, one stride and no dilation: asymmetric pads are added here, a dilated kernel is the
    kernel with D - 1 zero taps between its taps (the same sum for finite X), and with unequal
    strides the op runs at stride 1 and every SH-th row and SW-th column is kept. A 1-D input
    (N, C, L) is an image one row high."""
    if x.ndim == 3:
        x2, pads, strides, dilations, kernel_shape = as_one_row(x, pads, strides, dilations, kernel_shape)
        return conv(x2, w[:, :, None, :], b, auto_pad=auto_pad, dilations=dilations, group=group,
                    kernel_shape=kernel_shape, pads=pads, strides=strides)[:, :, 0, :]
    kernel, strides, dilations = spatial_attributes(x, kernel_shape or w.shape[2:], strides, dilations, "convolution")
    if tuple(kernel) != w.shape[2:]:
        raise ValueError(f"kernel_shape {kernel} differs from the weight's {w.shape[2:]}")
    begins, ends, _, windows = window_geometry(x.shape, kernel, auto_pad, pads, strides, dilations)
    if dilations != [1, 1]:
        dilated = np.zeros((*w.shape[:2], *windows), w.dtype)  # (F, C/G, DH·(KH - 1) + 1, DW·(KW - 1) + 1)
        dilated[:, :, :: dilations[0], :: dilations[1]] = w
        w = dilated
    if begins[0] == begins[1] == ends[0] == ends[1]:
        padding = begins[0]  # symmetric: the op's own
    else:
        x, padding = np.pad(x, ((0, 0), (0, 0), (begins[0], ends[0]), (begins[1], ends[1]))), 0
    stride = strides[0] if strides[0] == strides[1] else 1
    b = np.zeros(w.shape[0], w.dtype) if b is None else b
    if group == 1:
        y, _ = ops.conv2d_forward(x, w, b, stride, padding)
    else:
        y, _ = ops.grouped_conv2d_forward(x, np.split(w, group), b, stride, padding)
    return y if stride == strides[0] == strides[1] else y[:, :, :: strides[0], :: strides[1]]


def max_pool(x, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None):
    """(Y, Indices) from X (N, C, H, W):

        Y[n, c, i, j] = max over the window's taps X[n, c, i·SH + p·DH - begin_h, j·SW + q·DW - begin_w]
        Indices[n, c, i, j] = the first maximum's flat index in X, ((n·C + c)·H + h)·W + w
                              (storage_order 1: (n·C + c)·H·W + w·H + h)

    "First" in row-major order over the window's taps. X is padded with -inf, which never wins,
    before each axis and after it as far as the windows read (past `pads` with ceil_mode), and
    `mpdref.ops.max_pool2d_forward` pools that. int8 and uint8 X (opset 12) is pooled in float64,
    where every value is exact. A 1-D input (N, C, L) is an image one row high."""
    if x.ndim == 3:
        x2, pads, strides, dilations, kernel_shape = as_one_row(x, pads, strides, dilations, kernel_shape)
        y, indices = max_pool(x2, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                              kernel_shape=kernel_shape, pads=pads, storage_order=storage_order, strides=strides)
        return y[:, :, 0, :], indices[:, :, 0, :]
    kernel, strides, dilations = spatial_attributes(x, kernel_shape, strides, dilations, "max pooling")
    begins, _, spans, _ = window_geometry(x.shape, kernel, auto_pad, pads, strides, dilations, ceil_mode)
    pooled = x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)
    padded = padded_for_windows(pooled, begins, spans, -np.inf)
    y, (argmax, _) = ops.max_pool2d_forward(padded, kernel, strides, dilations)
    n, c, h, w = x.shape
    row, col = np.divmod(argmax.astype(np.int64), padded.shape[3])
    row, col = row - begins[0], col - begins[1]  # in X
    plane = np.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
    indices = plane + (row * w + col if storage_order == 0 else col * h + row)
    return y.astype(x.dtype, copy=False), indices


def average_pool(x, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                 pads=None, strides=None):
    """Y from X (N, C, H, W): each window's sum over its taps divided by how many taps it counts,

        Y[n, c, i, j] = Σ_{p, q} X̃[n, c, i·SH + p·DH, j·SW + q·DW]
                        / Σ_{p, q} counted[i·SH + p·DH, j·SW + q·DW]

    X̃: X padded with zeros (as `pads` / `auto_pad` say, and past the pads as far as ceil_mode's
    windows read); counted: 1 on X, and with count_include_pad on its pads too, never past them.
    mpdref has no average-pooling op: the window sums are NumPy's. A 1-D input (N, C, L) is an
    image one row high."""
    if x.ndim == 3:
        x2, pads, strides, dilations, kernel_shape = as_one_row(x, pads, strides, dilations, kernel_shape)
        return average_pool(x2, auto_pad=auto_pad, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                            dilations=dilations, kernel_shape=kernel_shape, pads=pads, strides=strides)[:, :, 0, :]
    kernel, strides, dilations = spatial_attributes(x, kernel_shape, strides, dilations, "average pooling")
    begins, ends, spans, windows = window_geometry(x.shape, kernel, auto_pad, pads, strides, dilations, ceil_mode)
    ones = np.ones((1, 1, *x.shape[2:]), x.dtype)
    if count_include_pad:
        counted = padded_for_windows(np.pad(ones, ((0, 0), (0, 0), (begins[0], ends[0]), (begins[1], ends[1])),
                                            constant_values=1), [0, 0], spans, 0)
    else:
        counted = padded_for_windows(ones, begins, spans, 0)

    def window_sums(a):  # (N, C, spans) -> (N, C, OH, OW)
        taps = np.lib.stride_tricks.sliding_window_view(a, windows, axis=(2, 3))
        return taps[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]].sum(axis=(-2, -1))

    return window_sums(padded_for_windows(x, begins, spans, 0)) / window_sums(counted)


def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):  # noqa: N803 (the spec's names)
    """Y = α·A'·B' + β·C, A' = Aᵀ if transA else A (M, K), B' = Bᵀ if transB else B (K, N), C
    broadcast to (M, N) (optional from opset 11: none is 0).

    As PyTorch's Linear exports it (transB = 1, α = β = 1, C of shape (N,)) this is
    `mpdref.ops.dense_forward(A, B, C)`: y = x·wᵀ + b with w = B (N, K)."""
    a = a.T if transA else a
    w = b if transB else b.T  # (N, K): the dense layer's weight
    if alpha == 1 and beta == 1 and c is not None and c.shape == (w.shape[0],) and computes_with_ops(a, w, c):
        return ops.dense_forward(a, w, c)[0]
    y = alpha * (a @ w.T)
    if c is not None:
        y = y + beta * c
    return y.astype(a.dtype, copy=False)


def matmul(a, b):
    """A·B as NumPy's matmul: matrices in the last two axes, the others broadcast; a 1-D operand is a
    vector (ONNX's MatMul is defined as numpy.matmul)."""
    return np.matmul(a, b)


def add(a, b):
    """A + B, broadcast as NumPy does."""
    return np.add(a, b)


def sub(a, b):
    """A - B, broadcast as NumPy does."""
    return np.subtract(a, b)


def mul(a, b):
    """A · B, broadcast as NumPy does."""
    return np.multiply(a, b)


def div(a, b):
    """A / B, broadcast as NumPy does; an integer quotient is truncated toward zero (as in C), where
    NumPy's // floors: one is added where the floored quotient is negative and inexact."""
    if np.issubdtype(np.result_type(a, b), np.integer):
        quotient = a // b
        return quotient + ((quotient < 0) & (quotient * b != a))
    return np.divide(a, b)


def relu(x):
    """Y = max(X, 0): `mpdref.ops.relu_forward`; integer X (opset 14) by np.maximum."""
    if computes_with_ops(x):
        return ops.relu_forward(x)[0]
    return np.maximum(x, x.dtype.type(0))


def flatten(x, *, axis=1):
    """X reshaped to (d_0 ⋯ d_(axis-1), d_axis ⋯ d_(r-1)), C order; a negative axis counts from the end."""
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def reshape(data, shape, *, allowzero=0):
    """`data` in the shape `shape`, C order: -1 is inferred from the size, and 0 copies the input's
    dimension at that place, or with allowzero (opset 14) is a dimension of size 0."""
    target = [data.shape[i] if d == 0 and not allowzero else int(d) for i, d in enumerate(shape)]
    return data.reshape(target)


def transpose(x, *, perm=None):
    """X with its axes permuted: output axis i is input axis perm[i]; by default they are reversed."""
    return np.transpose(x, perm)


def softmax_rows(rows: np.ndarray) -> np.ndarray:
    """softmax along each row of a matrix: exp(log softmax), the log by `mpdref.ops.log_softmax`."""
    return np.exp(ops.log_softmax(rows))


def as_rows_from(x: np.ndarray, axis: int, row_function) -> np.ndarray:
    """row_function over X coerced to a matrix as Flatten does at `axis`, shaped back: Softmax and
    LogSoftmax before opset 13."""
    return row_function(flatten(x, axis=axis)).reshape(x.shape)


def along_axis(x: np.ndarray, axis: int, row_function) -> np.ndarray:
    """row_function along the one axis `axis` of X: Softmax and LogSoftmax from opset 13."""
    moved = np.moveaxis(x, axis, -1)
    out = row_function(moved.reshape(-1, moved.shape[-1])).reshape(moved.shape)
    return np.moveaxis(out, -1, axis)


def softmax_1(x, *, axis=1):
    """Softmax before opset 13: over X coerced to 2-D at `axis` (every dimension from it on is one row)."""
    return as_rows_from(x, axis, softmax_rows)


def softmax_13(x, *, axis=-1):
    """Softmax from opset 13: along the one axis `axis`."""
    return along_axis(x, axis, softmax_rows)


def log_softmax_1(x, *, axis=1):
    """LogSoftmax before opset 13 (`mpdref.ops.log_softmax` over X coerced to 2-D at `axis`)."""
    return as_rows_from(x, axis, ops.log_softmax)


def log_softmax_13(x, *, axis=-1):
    """LogSoftmax from opset 13 (`mpdref.ops.log_softmax` along the one axis `axis`)."""
    return along_axis(x, axis, ops.log_softmax)


def dropout_7(data, *, ratio=0.5):
    """Dropout at inference (opsets 7 to 9): the output is the data; the mask, of the data's type, all ones."""
    return data, np.ones_like(data)


def dropout_10(data, *, ratio=0.5):
    """Dropout at inference (opsets 10, 11): the output is the data; the mask, bool, all true."""
    return data, np.ones(data.shape, np.bool_)


def dropout_12(data, ratio=None, training_mode=None, *, seed=None):
    """Dropout from opset 12, where ratio and training_mode are inputs: at inference (training_mode
    absent or false) the output is the data and the mask all true. In training mode a random mask is
    drawn, which mpdref does not evaluate, unless the ratio is 0, which drops nothing."""
    if training_mode is not None and bool(training_mode) and (ratio is None or float(ratio) != 0.0):
        raise UnsupportedModel("Dropout in training mode draws a random mask; mpdref evaluates inference")
    return data, np.ones(data.shape, np.bool_)


def identity(x):
    """Y = X."""
    return x


def constant(*, value=None, sparse_value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
             value_string=None, value_strings=None):
    """The tensor of the one attribute set: `value` as stored; value_float(s) float32 and value_int(s)
    int64, a scalar or 1-D (opset 12). Sparse and string constants are not evaluated."""
    if sparse_value is not None or value_string is not None or value_strings is not None:
        raise UnsupportedModel("sparse and string constants are not evaluated")
    if value is not None:
        return value
    if value_float is not None or value_floats is not None:
        return np.array(value_float if value_floats is None else value_floats, np.float32)
    if value_int is not None or value_ints is not None:
        return np.array(value_int if value_ints is None else value_ints, np.int64)
    raise ValueError("Constant sets none of its value attributes")


def shape(data, *, start=0, end=None):
    """The dimensions of `data`, int64, from `start` up to `end` (opset 15; Python's slice, negative
    values counting from the end, clipped to the rank)."""
    return np.array(data.shape[start:end], np.int64)


def gather(data, indices, *, axis=0):
    """out[i_0, ..., j, ..., i_(r-1)] = data[i_0, ..., indices[j], ..., i_(r-1)] along `axis`: np.take (a
    negative index counts from the end; one out of range raises IndexError)."""
    return np.take(data, indices, axis=axis)


def concat(*inputs, axis):
    """The inputs joined along `axis` (negative from opset 11)."""
    return np.concatenate(inputs, axis=axis)


def cast(x, *, to, saturate=1, round_mode="up"):
    """X converted to element type `to` as NumPy's astype converts (a float to an integer rounds
    toward zero, to bool is x != 0). `saturate` and `round_mode` concern the float8 types only,
    which mpdref does not compute with."""
    return x.astype(element_dtype(to, f"Cast's target type {to}"))


def versions(function, *since):
    """{since_version: function} for the operator versions `since` that `function` implements."""
    return dict.fromkeys(since, function)


#: op type -> {operator version (its since_version) -> the function that evaluates it}. The versions
#: are those a default-domain opset from MIN_OPSET on selects; later versions that only admit more
#: element types share their predecessor's function.
OPERATORS = {
    "Add": versions(add, 7, 13, 14),
    "AveragePool": versions(average_pool, 7, 10, 11, 19, 22),
    "Cast": versions(cast, 6, 9, 13, 19, 21, 23, 24, 25, 28),
    "Concat": versions(concat, 4, 11, 13),
    "Constant": versions(constant, 1, 9, 11, 12, 13, 19, 21, 23, 24, 25),
    "Conv": versions(conv, 1, 11, 22),
    "Div": versions(div, 7, 13, 14),
    "Dropout": {**versions(dropout_7, 7), **versions(dropout_10, 10), **versions(dropout_12, 12, 13, 22)},
    "Flatten": versions(flatten, 1, 9, 11, 13, 21, 23, 24, 25),
    "Gather": versions(gather, 1, 11, 13),
    "Gemm": versions(gemm, 7, 9, 11, 13),
    "Identity": versions(identity, 1, 13, 14, 16, 19, 21, 23, 24, 25),
    "LogSoftmax": {**versions(log_softmax_1, 1, 11), **versions(log_softmax_13, 13)},
    "MatMul": versions(matmul, 1, 9, 13),
    "MaxPool": versions(max_pool, 1, 8, 10, 11, 12, 22),
    "Mul": versions(mul, 7, 13, 14),
    "Relu": versions(relu, 6, 13, 14),
    "Reshape": versions(reshape, 5, 13, 14, 19, 21, 23, 24, 25),
    "Shape": versions(shape, 1, 13, 15, 19, 21, 23, 24, 25),
    "Softmax": {**versions(softmax_1, 1, 11), **versions(softmax_13, 13)},
    "Sub": versions(sub, 7, 13, 14),
    "Transpose": versions(transpose, 1, 13, 21, 23, 24, 25),
}

SUPPORTED_OPS = tuple(sorted(OPERATORS))


# ----------------------------------------------------------------------------- the model


def load_onnx(model) -> onnx.ModelProto:
    """An ONNX model, checked by `onnx.checker.check_model`: `model` is a path or an onnx.ModelProto.

    A file that cannot be parsed (damaged, truncated, not ONNX) or a model the checker rejects
    raises `mpdref.io.FormatError` naming the file; a missing file, FileNotFoundError."""
    if isinstance(model, onnx.ModelProto):
        proto, source = model, "the ONNX model given"
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        source = str(path)
        data = path.read_bytes()  # FileNotFoundError names the file
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as error:  # protobuf's DecodeError and friends: the bytes are not a ModelProto
            raise FormatError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from error
        try:
            onnx.load_external_data_for_model(proto, str(path.parent))  # tensors stored beside the file, if any
        except Exception as error:
            raise FormatError(f"{path}: its external data cannot be read ({type(error).__name__}: {error})") \
                from error
    else:
        raise TypeError(f"model must be a path or an onnx.ModelProto, not {type(model).__name__}")
    try:
        onnx.checker.check_model(proto)
    except Exception as error:  # onnx.checker.ValidationError, or a C++ error on malformed content
        raise FormatError(f"{source}: not a valid ONNX model ({type(error).__name__}: {error})") from error
    return proto


def default_opset(proto: onnx.ModelProto) -> int:
    """The version of the default (ai.onnx) domain the model imports; UnsupportedModel below MIN_OPSET."""
    found = [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")]
    if not found:
        raise UnsupportedModel("the model imports no default-domain (ai.onnx) opset")
    if found[0] < MIN_OPSET:
        raise UnsupportedModel(f"the model imports ai.onnx opset {found[0]}; "
                               f"mpdref reads opsets {MIN_OPSET} and newer")
    return found[0]


def node_label(node: onnx.NodeProto, index: int) -> str:
    """How an error names a node: its name and op type, or its place and first output where it has no name."""
    if node.name:
        return f"{node.name!r} ({node.op_type})"
    return f"#{index} ({node.op_type}, output {node.output[0] if node.output else ''!r})"


def node_function(node: onnx.NodeProto, index: int, opset: int):
    """The function that evaluates `node` at `opset`; UnsupportedModel naming the node, its op type and
    the supported ones where there is none."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in OPERATORS:
        domain = f" of domain {node.domain!r}" if node.domain not in ("", "ai.onnx") else ""
        raise UnsupportedModel(f"node {node_label(node, index)}: op type {node.op_type!r}{domain} is not "
                               f"evaluated by mpdref; supported: {', '.join(SUPPORTED_OPS)}")
    version = onnx.defs.get_schema(node.op_type, opset, "").since_version
    known = OPERATORS[node.op_type]
    if version not in known:
        raise UnsupportedModel(f"node {node_label(node, index)}: {node.op_type}-{version} (opset {opset}) is a "
                               f"version mpdref does not know; it evaluates {node.op_type} versions "
                               f"{', '.join(map(str, known))}")
    return known[version]


def node_attributes(node: onnx.NodeProto, label: str) -> dict:
    """The node's attributes as Python values: strings decoded, tensors as arrays."""
    attributes = {}
    for attribute in node.attribute:
        if attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise UnsupportedModel(f"node {label}: attribute {attribute.name!r} is a subgraph")
        value = helper.get_attribute_value(attribute)
        if attribute.type == onnx.AttributeProto.STRING:
            value = value.decode()
        elif attribute.type == onnx.AttributeProto.TENSOR:
            value = tensor_array(value, f"node {label}: attribute {attribute.name!r}")
        attributes[attribute.name] = value
    return attributes


def value_dtype(info: onnx.ValueInfoProto, what: str) -> np.dtype:
    """The dtype a graph input or output declares; UnsupportedModel for anything but a tensor of a supported type."""
    kind = info.type.WhichOneof("value")
    if kind != "tensor_type":
        raise UnsupportedModel(f"{what} {info.name!r} has type {kind}; mpdref evaluates tensors only")
    return element_dtype(info.type.tensor_type.elem_type, f"{what} {info.name!r}")


def in_dtype(value: np.ndarray, dtype) -> np.ndarray:
    """`value` with a floating dtype cast to `dtype`, when one is asked for; other values as they are."""
    if dtype is None or value.dtype.kind != "f":
        return value
    return value.astype(dtype, copy=False)


def fed_value(info: onnx.ValueInfoProto, value, dtype) -> np.ndarray:
    """The array fed for graph input `info`, checked against its declared element type and shape."""
    declared = value_dtype(info, "graph input")
    array = np.asarray(value)
    if dtype is not None and declared.kind == "f" and array.dtype.kind == "f":
        array = array.astype(dtype, copy=False)
    elif array.dtype != declared:
        hint = " (or pass dtype= to evaluate in another float type)" if declared.kind == "f" else ""
        raise TypeError(f"input {info.name!r} is {array.dtype}, the graph declares {declared}{hint}")
    dims = info.type.tensor_type.shape.dim if info.type.tensor_type.HasField("shape") else None
    if dims is not None:
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(fixed) != array.ndim or any(f is not None and f != n for f, n in zip(fixed, array.shape)):
            shown = tuple(f if f is not None else (d.dim_param or "?") for f, d in zip(fixed, dims))
            raise ValueError(f"input {info.name!r} has shape {array.shape}, the graph declares {shown}")
    return array


def planned_nodes(graph: onnx.GraphProto, opset: int, dtype) -> list:
    """(node, its function, its label, its attributes) for each node, in order; UnsupportedModel for the
    first node that cannot be evaluated. With `dtype`, a Cast to a float type casts to `dtype` itself
    (not through the type the graph names first)."""
    plan = []
    for index, node in enumerate(graph.node):
        function, label = node_function(node, index, opset), node_label(node, index)
        attributes = node_attributes(node, label)
        to_float = node.op_type == "Cast" and ELEMENT_TYPES.get(attributes["to"], np.dtype("O")).kind == "f"
        if dtype is not None and to_float:
            attributes["to"] = helper.np_dtype_to_tensor_dtype(dtype)
        plan.append((node, function, label, attributes))
    return plan


def graph_values(graph: onnx.GraphProto, inputs: dict, dtype) -> dict:
    """The initializers and the fed inputs by name, checked against the graph's inputs."""
    if graph.sparse_initializer:
        raise UnsupportedModel(f"sparse initializer {graph.sparse_initializer[0].values.name!r}: not evaluated")
    values = {t.name: in_dtype(tensor_array(t, f"initializer {t.name!r}"), dtype) for t in graph.initializer}
    declared = {info.name: info for info in graph.input}
    unknown = sorted(set(inputs) - set(declared))
    missing = [name for name in declared if name not in inputs and name not in values]
    if unknown or missing:
        raise ValueError(f"inputs do not fit the graph: missing {missing}, unknown {unknown}; the graph takes "
                         f"{[name for name in declared if name not in values]}")
    for name, info in declared.items():
        if name in inputs:  # an input with an initializer may be fed: the fed value wins
            values[name] = fed_value(info, inputs[name], dtype)
    return values


def run_onnx(model, inputs: dict, dtype=None, intermediate: bool = False):
    """Evaluate an ONNX graph with mpdref's reference ops.

    model: a path or an onnx.ModelProto (checked by `load_onnx`). inputs: graph input name ->
    array, of the declared element type and shape (inputs that have an initializer may be left
    out). dtype: None (every value in the type the graph gives it), or np.float32 / np.float64 to
    evaluate every floating value in that type (the inputs, initializers and each node's outputs
    cast to it; a Cast to a float type gives it too). Returns the graph's outputs as a list in the
    graph's order (as onnxruntime's ``run(None, feeds)``), or with `intermediate` a dict of every
    named value: the inputs, the initializers and every node output.

    Raises UnsupportedModel, naming the node, for an op type, operator version, element type or
    feature not evaluated (before anything is computed where the graph alone shows it), and
    `mpdref.io.FormatError` for a file that is not a valid ONNX model.
    """
    if dtype is not None and np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be None, float32 or float64, not {np.dtype(dtype)}")
    dtype = None if dtype is None else np.dtype(dtype)
    proto = load_onnx(model)
    graph = proto.graph
    plan = planned_nodes(graph, default_opset(proto), dtype)
    for info in graph.output:
        value_dtype(info, "graph output")
    values = graph_values(graph, inputs, dtype)
    for node, function, label, attributes in plan:
        arguments = [values[name] if name else None for name in node.input]  # "": an optional input left out
        try:
            results = function(*arguments, **attributes)
        except (ValueError, TypeError, IndexError) as error:  # UnsupportedModel included: say which node
            kind = next(k for k in (UnsupportedModel, IndexError, TypeError, ValueError) if isinstance(error, k))
            raise kind(f"node {label}: {error}") from error
        results = results if isinstance(results, tuple) else (results,)
        if len(node.output) > len(results):
            raise ValueError(f"node {label}: {len(node.output)} outputs named, {node.op_type} has {len(results)}")
        for name, result in zip(node.output, results):
            if name:
                values[name] = in_dtype(np.asarray(result), dtype)
    if intermediate:
        return values
    return [values[info.name] for info in graph.output]
