"""MPD's block form on the GPU: whole-network inference with `mpdref.kernels.cuda`.

(It sits here, beside the block form it runs, rather than in `mpdref.kernels`: it reads
the network's layers, and the kernels import nothing above them.)
"""
from __future__ import annotations

import numpy as np

from mpdref import models
from mpdref.kernels import load_backend
from mpdref.models import Classifier
from mpdref.mpd.block_form import BlockConv2d, BlockDense, BlockLayer, BlockNetwork


class CudaBlockNetwork(Classifier):
    """Inference for a BlockNetwork on the GPU (`mpdref.kernels.cuda`).

    The weights are uploaded once. An input batch goes up once, transposed to the
    device's feature-major layout; the activations stay on the device between layers;
    the logits come back once, already in class order (the last layer's epilogue
    scatters its rows by `output_order`). Each layer's permutation is the gather
    fused into the next kernel's loads; a ReLU after a convolution, a dense layer or a
    max-pool runs in that kernel's epilogue. The logits equal `block_net.forward` to
    float rounding (the tests hold them to it).
    """

    def __init__(self, block_net: BlockNetwork):
        kc = load_backend("cuda")
        self._kc = kc
        self.name, self.dtype = block_net.name, block_net.dtype
        steps = [s for s in block_net.layers if not isinstance(s, models.Dropout)]  # identity at inference
        last_dense = max((i for i, s in enumerate(steps) if isinstance(s, BlockLayer)), default=-1)
        if last_dense != len(steps) - 1 or not isinstance(steps[last_dense], BlockDense):
            raise ValueError("CudaBlockNetwork needs a network that ends with a dense layer")
        self._plan = []  # (what, device layer or argument, fuse a ReLU)
        params = block_net.params
        for i, step in enumerate(steps):
            relu_next = i + 1 < len(steps) and isinstance(steps[i + 1], models.ReLU)
            if isinstance(step, models.ReLU):
                if self._plan and self._plan[-1][2]:
                    continue  # already fused into the previous kernel
                self._plan.append(("relu", None, False))
            elif isinstance(step, models.Flatten):
                self._plan.append(("flatten", None, False))
            elif isinstance(step, models.MaxPool2d):
                self._plan.append(("pool", step.kernel, relu_next))
            elif isinstance(step, BlockConv2d):
                layer = kc.DeviceBlockConv(step.blocks(params), step.gather, params[f"{step.name}.bias"], step.stride,
                                           step.padding)
                self._plan.append(("conv", layer, relu_next))
            elif isinstance(step, BlockDense):
                blocks = step.blocks(params)
                row_dest = block_net.output_order if i == last_dense else None
                layer = kc.DeviceBlockDense(blocks, step.gather, params[f"{step.name}.bias"], row_dest)
                self._plan.append(("dense", layer, relu_next))
            else:
                raise TypeError(f"CudaBlockNetwork cannot run a {type(step).__name__} layer")

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) on the host -> logits (N, classes) on the host."""
        if x.dtype != self.dtype:
            raise TypeError(f"x is {x.dtype}, the network is {self.dtype}")
        kc = self._kc
        a = kc.to_device(np.moveaxis(x, 0, -1))  # (C, H, W, N): the batch index fastest
        for what, layer, relu in self._plan:
            if what == "flatten":
                *features, n = a.shape
                a = a.reshape(int(np.prod(features)), n)
            elif what == "relu":
                a = kc.relu(a)
            elif what == "pool":
                a = kc.max_pool(a, layer, relu)
            else:
                a = layer(a, relu=relu)
        return a.copy_to_host().T

    def predict(self, x: np.ndarray, batch_size: int = 10000) -> np.ndarray:
        return super().predict(x, batch_size)

    def error_rate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 10000) -> float:
        return super().error_rate(x, y, batch_size)
