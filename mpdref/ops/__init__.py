"""The reference path: pure forward/backward functions in plain NumPy, NCHW, weights in PyTorch layout.

Each op is a pair ``X_forward(...) -> (out, cache)`` and ``X_backward(dout, cache) -> grads``
that reads like the equation in its docstring (and `block_dense_inference`, the block layer's
forward output alone, for passes that keep no cache). The dtype of the output is the dtype of
the input (float32 or float64); mixing them raises TypeError. Nothing here uses Numba:
the compiled equals of some of these functions are in `mpdref.kernels.fast_ops`, and a
network chooses between the two sets with ``backend=`` (`mpdref.models.build`).
"""
from mpdref.ops.activation import (
    dropout_backward,
    dropout_forward,
    dropout_mask,
    flatten_backward,
    flatten_forward,
    relu_backward,
    relu_forward,
)
from mpdref.ops.block import block_dense_backward, block_dense_forward, block_dense_inference, block_diagonal_matmul
from mpdref.ops.conv import conv2d_backward, conv2d_forward, grouped_conv2d_backward, grouped_conv2d_forward
from mpdref.ops.dense import dense_backward, dense_forward
from mpdref.ops.loss import (
    distillation_backward,
    distillation_forward,
    log_softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
    training_loss,
)
from mpdref.ops.pool import max_pool2d_backward, max_pool2d_forward

__all__ = [
    "block_dense_backward",
    "block_dense_forward",
    "block_dense_inference",
    "block_diagonal_matmul",
    "conv2d_backward",
    "conv2d_forward",
    "dense_backward",
    "dense_forward",
    "distillation_backward",
    "distillation_forward",
    "dropout_backward",
    "dropout_forward",
    "dropout_mask",
    "flatten_backward",
    "flatten_forward",
    "grouped_conv2d_backward",
    "grouped_conv2d_forward",
    "log_softmax",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "relu_backward",
    "relu_forward",
    "softmax_cross_entropy_backward",
    "softmax_cross_entropy_forward",
    "training_loss",
]
