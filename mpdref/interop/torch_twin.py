"""The PyTorch twin of an mpdref network: the same layers as standard torch modules, the same names.

    module = torch_network("lenet-5")              # nn.Sequential: conv1, pool1, conv2, pool2, flatten, fc1, relu1, fc2
    module = torch_twin(net, torch.float64)        # with net's parameters, in eval mode

The twin is an ``nn.Sequential`` built from the architecture's layer list (`mpdref.models.
ARCHITECTURES`): Dense is ``nn.Linear``, Conv2d ``nn.Conv2d``, MaxPool2d ``nn.MaxPool2d``, ReLU
``nn.ReLU``, Dropout ``nn.Dropout``, Flatten ``nn.Flatten``. A layer with parameters is named as in
mpdref (``fc1``), so the twin's state_dict keys are mpdref's parameter names (``fc1.weight``) and
either network loads the other's weights as they are; the parameter-free layers are named by kind
and count (``relu1``, ``pool2``). It is what `crosscheck_torch`, the tests and `torch.onnx.export`
fixtures build. Needs torch: ``pip install -e '.[crosscheck]'``.
"""
from __future__ import annotations

import collections

import numpy as np

from mpdref import models


def require_torch():
    """The torch module; ImportError saying which extra installs it where it is missing."""
    try:
        import torch
    except ImportError as error:
        raise ImportError("this needs PyTorch, which is not installed: pip install -e '.[crosscheck]' "
                          "(the CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)") \
            from error
    return torch


def torch_network(name: str):
    """A freshly initialized ``nn.Sequential`` twin of architecture `name` (float32, training mode)."""
    models.parameter_shapes(name)  # an unknown name fails here, naming the choices
    torch = require_torch()
    nn = torch.nn
    modules, counts = collections.OrderedDict(), collections.Counter()

    def unnamed(kind: str, module):
        counts[kind] += 1
        modules[f"{kind}{counts[kind]}" if kind != "flatten" else kind] = module

    for layer in models.ARCHITECTURES[name]():
        if isinstance(layer, models.Dense):
            modules[layer.name] = nn.Linear(layer.in_features, layer.out_features)
        elif isinstance(layer, models.Conv2d):
            modules[layer.name] = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, stride=layer.stride,
                                            padding=layer.padding)
        elif isinstance(layer, models.MaxPool2d):
            unnamed("pool", nn.MaxPool2d(layer.kernel))
        elif isinstance(layer, models.ReLU):
            unnamed("relu", nn.ReLU())
        elif isinstance(layer, models.Dropout):
            unnamed("dropout", nn.Dropout(layer.p))
        elif isinstance(layer, models.Flatten):
            unnamed("flatten", nn.Flatten())
        else:  # a new layer type must be given its twin here
            raise TypeError(f"{type(layer).__name__} has no PyTorch twin")
    return nn.Sequential(modules)


def torch_twin(net: models.Network, dtype=None):
    """`torch_network(net.name)` holding a copy of `net`'s parameters (masked weights are zero in
    them), in eval mode (dropout off), in torch dtype `dtype` (default: the network's own)."""
    torch = require_torch()
    module = torch_network(net.name)
    dtype = dtype or {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[net.dtype]
    module.to(dtype)
    module.load_state_dict({name: torch.tensor(value, dtype=dtype) for name, value in net.params.items()})
    return module.eval()
