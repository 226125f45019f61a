"""The three MNIST networks of the compression papers.

Parameters are named like the equivalent PyTorch module's state_dict keys
(``fc1.weight``, ``conv2.bias``) and stored in PyTorch layout, so a PyTorch
model's ``{k: v.numpy() for k, v in model.state_dict().items()}`` loads
directly. Every network takes the normalized input of
:func:`mpdref.data.to_network_input`, shape (N, 1, 28, 28).

A weight may carry a 0/1 mask: data, never a trainable parameter. The masked
weights are zero (set when the mask is set) and training keeps them zero.

A network computes with one of two op sets, its `backend`: "fast" (the default:
`mpdref.kernels.fast_ops`, the reference with its data movement compiled) or
"reference" (`mpdref.ops`, plain NumPy: what an audit reads). The two agree to rounding
(the logits bit for bit where both leave every product to BLAS on one thread: a network
without convolutions at a small batch; `mpdref.kernels.fast_ops` says where they differ);
``build(..., backend="reference")`` or ``net.use_backend("reference")`` chooses.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from mpdref import __version__, ops
from mpdref.io.model_file import MODEL_FORMAT, read_network_file, write_network_file
from mpdref.kernels import threads as kernel_threads
from mpdref.kernels.allocator import reuse_freed_memory

OP_BACKENDS = ("fast", "reference")
_NO_CONTEXT = contextlib.nullcontext()  # reusable: it holds no state


@functools.cache
def op_set(backend: str) -> ModuleType:
    """The functions a network's layers call: `mpdref.ops` ("reference") or `mpdref.kernels.fast_ops` ("fast").

    Cached: every layer asks at every pass, and an import statement costs about a microsecond
    even when the module is loaded."""
    if backend == "reference":
        return ops
    if backend == "fast":
        from mpdref.kernels import fast_ops  # numba compiles its kernels on first use, not here

        return fast_ops
    raise ValueError(f"unknown op backend {backend!r}; choose one of {', '.join(OP_BACKENDS)}")


# ----------------------------------------------------------------------------- layers
# A layer holds its hyper-parameters, its parameter names and the name of its op set; the
# math is in `ops`. The interface: forward(params, x, train, rng) -> (y, cache) and
# backward(dout, cache, need_dx) -> (dx, {parameter name: gradient}); infer(params, x, train,
# rng) -> y for a pass that keeps no cache (Layer's: forward's y); a layer with parameters
# also has parameter_shapes().


@dataclass(frozen=True)
class Layer:
    """What every layer shares: `backend`, the name of the op set it computes with (the reference
    until a network gives its own; a name, so that layers and networks copy and compare as data)."""

    backend: str = field(default="reference", kw_only=True, compare=False, repr=False)

    @property
    def ops(self) -> ModuleType:
        return op_set(self.backend)

    def infer(self, params, x, train, rng):
        """The output alone, for a pass that keeps no cache (inference: `LayerStack.forward`): forward's
        output here; a layer may compute it another way (MPD's block layer does)."""
        return self.forward(params, x, train, rng)[0]


@dataclass(frozen=True)
class Dense(Layer):
    name: str
    in_features: int
    out_features: int

    def parameter_shapes(self):
        return {f"{self.name}.weight": (self.out_features, self.in_features),
                f"{self.name}.bias": (self.out_features,)}

    def fan_in(self):
        return self.in_features

    def forward(self, params, x, train, rng):
        return self.ops.dense_forward(x, params[f"{self.name}.weight"], params[f"{self.name}.bias"])

    def backward(self, dout, cache, need_dx):
        dx, dw, db = self.ops.dense_backward(dout, cache, need_dx)
        return dx, {f"{self.name}.weight": dw, f"{self.name}.bias": db}


@dataclass(frozen=True)
class Conv2d(Layer):
    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0

    def parameter_shapes(self):
        return {f"{self.name}.weight": (self.out_channels, self.in_channels, self.kernel, self.kernel),
                f"{self.name}.bias": (self.out_channels,)}

    def fan_in(self):
        return self.in_channels * self.kernel * self.kernel

    def forward(self, params, x, train, rng):
        return self.ops.conv2d_forward(x, params[f"{self.name}.weight"], params[f"{self.name}.bias"],
                                       self.stride, self.padding)

    def backward(self, dout, cache, need_dx):
        dx, dw, db = self.ops.conv2d_backward(dout, cache, need_dx)
        return dx, {f"{self.name}.weight": dw, f"{self.name}.bias": db}


@dataclass(frozen=True)
class MaxPool2d(Layer):
    kernel: int = 2

    def forward(self, params, x, train, rng):
        return self.ops.max_pool2d_forward(x, self.kernel, self.kernel)

    def backward(self, dout, cache, need_dx):
        return self.ops.max_pool2d_backward(dout, cache), {}


@dataclass(frozen=True)
class ReLU(Layer):

    def forward(self, params, x, train, rng):
        return self.ops.relu_forward(x)

    def backward(self, dout, cache, need_dx):
        return self.ops.relu_backward(dout, cache), {}


@dataclass(frozen=True)
class Dropout(Layer):
    p: float = 0.5

    def forward(self, params, x, train, rng):
        if not train or self.p == 0.0:
            return x, None
        return self.ops.dropout_forward(x, self.p, rng)

    def backward(self, dout, cache, need_dx):
        return (dout if cache is None else self.ops.dropout_backward(dout, cache)), {}


@dataclass(frozen=True)
class Flatten(Layer):

    def forward(self, params, x, train, rng):
        return self.ops.flatten_forward(x)

    def backward(self, dout, cache, need_dx):
        return self.ops.flatten_backward(dout, cache), {}


# ----------------------------------------------------------------------------- architectures


def _lenet_300_100():
    return [Flatten(), Dense("fc1", 784, 300), ReLU(), Dense("fc2", 300, 100), ReLU(),
            Dense("fc3", 100, 10)]


def _lenet_5():
    # Caffe's LeNet as in the Deep Compression paper: no ReLU after the convolutions.
    return [Conv2d("conv1", 1, 20, 5), MaxPool2d(2), Conv2d("conv2", 20, 50, 5), MaxPool2d(2),
            Flatten(), Dense("fc1", 800, 500), ReLU(), Dense("fc2", 500, 10)]


def _deep_mnist():
    # TensorFlow's "Deep MNIST for experts" tutorial network.
    return [Conv2d("conv1", 1, 32, 5, padding=2), ReLU(), MaxPool2d(2),
            Conv2d("conv2", 32, 64, 5, padding=2), ReLU(), MaxPool2d(2),
            Flatten(), Dense("fc1", 3136, 1024), ReLU(), Dropout(0.5), Dense("fc2", 1024, 10)]


ARCHITECTURES = {"lenet-300-100": _lenet_300_100, "lenet-5": _lenet_5, "deep-mnist": _deep_mnist}
INPUT_SHAPE = (1, 28, 28)


def _layers(name: str, backend: str = "reference"):
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    op_set(backend)  # an unknown name fails here
    return [dataclasses.replace(layer, backend=backend) for layer in ARCHITECTURES[name]()]


def parameter_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of architecture `name`, in layer order."""
    shapes = {}
    for layer in _layers(name):
        if hasattr(layer, "parameter_shapes"):
            shapes.update(layer.parameter_shapes())
    return shapes


# ----------------------------------------------------------------------------- network


class Classifier:
    """logits, predict and error_rate for anything with forward(x) -> logits."""

    def logits(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """forward(x) (N, classes), computed in batches."""
        if len(x) == 0:
            return np.zeros((0, 10), self.dtype)
        return np.concatenate([self.forward(x[start : start + batch_size]) for start in range(0, len(x), batch_size)])

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Class predictions (N,) int64, computed in batches."""
        return self.logits(x, batch_size).argmax(axis=1).astype(np.int64, copy=False)

    def error_rate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
        """Fraction of misclassified examples."""
        if len(x) == 0:
            return float("nan")
        return float(np.mean(self.predict(x, batch_size) != y))


def _inference_order(layers: list) -> list:
    """The layers in the order an inference pass runs them: a ReLU followed by a max-pooling runs after
    it. The two commute, since ReLU is monotone: max_i max(a_i, 0) = max(max_i a_i, 0) for every window,
    the same bits where the ReLU turns -0.0 into +0.0 and passes NaN through, as both op sets' do (a
    test holds the two orders' logits to the same bytes); pooled first, the ReLU reads a quarter of
    the values (2 × 2 windows: Deep MNIST's two ReLUs at batch 1024, 11.6 ms of a 138 ms pass
    before)."""
    order = list(layers)
    for i in range(len(order) - 1):
        if isinstance(order[i], ReLU) and isinstance(order[i + 1], MaxPool2d):
            order[i], order[i + 1] = order[i + 1], order[i]
    return order


class LayerStack(Classifier):
    """The loop over a list of layers (see "layers" above) that a network and its MPD block form share.

    A subclass has `layers`, `params`, `rng` (dropout) and `dtype`. `output_order`: None when
    the last layer's outputs are the classes in order; else the last layer's output i is the
    logit of class output_order[i] (MPD's block form), and `label_position[c]` is where class c is.
    """

    output_order: np.ndarray | None = None
    label_position: np.ndarray | None = None

    @property
    def numba_threads(self) -> bool:
        """Whether a pass runs on Numba's threads: every network on the fast set (`mpdref.kernels.threads`).
        Its passes run in `numba_pass()`: NumPy's BLAS held to one thread, and the fast set's large dense
        products, its direct convolution and its block products on Numba's threads, whose sums do not
        depend on the number of threads. So a run gives the same bits in a one-thread sweep worker as
        under `mpdref run` on all the cores; BLAS on two threads does not (OpenBLAS splits the depth of
        LeNet-300-100's 64 × 784 @ 784 × 300 product between them)."""
        return any(layer.backend == "fast" for layer in self.layers)

    def pass_threads(self):
        """The thread-pool setting of a pass (see numba_threads), as a context. Every pass enters it; a
        caller that runs many passes may hold it around them all (`mpdref.train.fit` does, for each
        epoch's steps), so that it is set once, not twice a step."""
        if kernel_threads.in_numba_pass() or not self.numba_threads:  # (inside one, a second changes nothing)
            return _NO_CONTEXT
        return kernel_threads.numba_pass()

    def _run(self, x: np.ndarray, train: bool, keep_caches: bool = True):
        """The last layer's output and every layer's cache; without keep_caches (a pass no backward
        follows), each layer's `infer` and no caches."""
        reuse_freed_memory()  # once per process: the next pass reuses this one's freed arrays (see there)
        caches = []
        with self.pass_threads():
            if keep_caches:
                for layer in self.layers:
                    x, cache = layer.forward(self.params, x, train, self.rng)
                    caches.append(cache)
            else:
                for layer in _inference_order(self.layers):
                    x = layer.infer(self.params, x, train, self.rng)
        return x, caches

    def _backward(self, dout: np.ndarray, caches: list) -> dict:
        """Gradients of every parameter, keyed like params, from the gradient of the last output."""
        grads = {}
        first = next(i for i, layer in enumerate(self.layers) if hasattr(layer, "parameter_shapes"))
        with self.pass_threads():
            for i in range(len(self.layers) - 1, first - 1, -1):
                # The input needs no gradient: the first layer with parameters skips dx.
                dout, layer_grads = self.layers[i].backward(dout, caches[i], need_dx=i > first)
                grads.update(layer_grads)
        return {k: grads[k] for k in self.params}

    def _check_input(self, x):
        """Raise on an input the network cannot take (Network checks shape and dtype)."""

    def _class_logits(self, z: np.ndarray) -> np.ndarray:
        """The last layer's outputs (N, classes) in the classes' order."""
        if self.output_order is None:
            return z
        logits = np.empty_like(z)
        logits[:, self.output_order] = z  # the one scatter, back to the classes' order
        return logits

    def forward(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """x (N, 1, 28, 28) -> logits (N, 10). `train` turns dropout on (drawn from self.rng)."""
        self._check_input(x)
        z, _ = self._run(x, train, keep_caches=False)
        return self._class_logits(z)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray, train: bool = True):
        """Mean softmax cross-entropy and its gradient for every parameter.

        x (N, 1, 28, 28), y (N,) integer labels -> (loss, grads), grads keyed like params.
        `train` turns dropout on.
        """
        loss, grads, _ = self.loss_grads_and_logits(x, y, train)
        return loss, grads

    def loss_grads_and_logits(self, x: np.ndarray, y: np.ndarray, train: bool = True, teacher=None):
        """`loss_and_grads`, plus the logits (N, 10) of the same forward pass.

        teacher: None (cross-entropy), or (teacher_logits (N, 10), temperature, weight) for the
        distillation loss (`mpdref.ops.distillation_forward`)."""
        self._check_input(x)
        z, caches = self._run(x, train)
        if self.output_order is not None:
            # The loss is invariant to the order of the logits: compare the last layer's outputs with
            # labels (and teacher logits) put in their order, instead of reordering every batch.
            y = self.label_position[y]
            if teacher is not None:
                teacher_logits, temperature, weight = teacher
                teacher = (teacher_logits[:, self.output_order], temperature, weight)
        loss, dout = self.layers[-1].ops.training_loss(z, y, teacher)  # the last layer's op set
        return loss, self._backward(dout, caches), self._class_logits(z)


class Network(LayerStack):
    """A feed-forward network: an ordered list of layers, parameters and masks by name.

    Attributes:
        name: architecture name (a key of ARCHITECTURES).
        dtype: float32 or float64; every parameter has it.
        params: dict name -> array, in layer order.
        masks: dict name -> bool array of the parameter's shape (only masked weights).
        rng: the generator that draws dropout masks.
        backend: the op set its layers call ("fast" or "reference", see OP_BACKENDS).
    """

    def __init__(self, name: str, dtype=np.float32, seed: int = 0, backend: str = "fast"):
        self.layers = _layers(name, backend)
        self.name = name
        self.backend = backend
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, not {self.dtype}")
        self.masks: dict[str, np.ndarray] = {}
        self.metadata: dict = {}  # free-form, saved with the model (e.g. the recipe that trained it)
        init_seed, dropout_seed = np.random.SeedSequence(seed).spawn(2)  # the init and dropout streams
        self.params = self._initial_parameters(np.random.default_rng(init_seed))
        self.rng = np.random.default_rng(dropout_seed)

    def use_backend(self, backend: str) -> "Network":
        """Compute with op set `backend` from now on ("fast" or "reference"); returns the network."""
        self.layers = _layers(self.name, backend)
        self.backend = backend
        return self

    def _initial_parameters(self, rng):
        """PyTorch's default init: weight and bias ~ U(-1/√fan_in, 1/√fan_in).

        Drawn in float64 and rounded to the dtype, so the float32 and float64
        networks of one seed are the same network up to rounding.
        """
        params = {}
        for layer in self.layers:
            if not hasattr(layer, "parameter_shapes"):
                continue
            bound = 1.0 / np.sqrt(layer.fan_in())
            for pname, shape in layer.parameter_shapes().items():
                params[pname] = rng.uniform(-bound, bound, size=shape).astype(self.dtype)
        return params

    # -- description

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return parameter_shapes(self.name)

    def weight_names(self) -> list[str]:
        return [n for n in self.params if n.endswith(".weight")]

    def num_parameters(self) -> int:
        return sum(p.size for p in self.params.values())

    def __repr__(self):
        return f"Network({self.name!r}, {self.dtype}, {self.num_parameters():,} parameters, {len(self.masks)} masked)"

    # -- state

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, keyed like PyTorch's state_dict."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state: dict) -> None:
        """Load parameters from a plain dict of arrays (PyTorch tensors' ``.numpy()`` work).

        Every parameter must be present with its exact shape; extra keys are an
        error. Values are converted to the network's dtype (an explicit, visible
        cast: loading is the one place where that is asked for). Masked weights
        are zeroed again.
        """
        expected = self.parameter_shapes()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            raise ValueError(f"state dict does not fit {self.name}: missing {missing}, unexpected {unexpected}")
        new = {}
        for k, shape in expected.items():
            value = np.asarray(state[k])
            if value.shape != shape:
                raise ValueError(f"state dict: {k} has shape {value.shape}, {self.name} needs {shape}")
            new[k] = np.array(value, dtype=self.dtype, copy=True)
        self.params = new
        for k, m in self.masks.items():
            self.params[k] *= m

    def set_mask(self, name: str, mask) -> None:
        """Constrain weight `name` to the 0/1 `mask` (same shape); masked weights become 0."""
        if name not in self.params:
            raise KeyError(f"{self.name} has no parameter {name!r}")
        mask = np.asarray(mask)
        if mask.shape != self.params[name].shape:
            raise ValueError(f"mask for {name} has shape {mask.shape}, the weight has {self.params[name].shape}")
        if not np.all((mask == 0) | (mask == 1)):
            raise ValueError(f"mask for {name} must hold only 0 and 1")
        self.masks[name] = mask.astype(bool)
        self.params[name] *= self.masks[name]

    # -- computation

    def _check_input(self, x):
        if x.ndim != 4 or x.shape[1:] != INPUT_SHAPE:
            raise ValueError(f"{self.name}: input must have shape (N, 1, 28, 28), got {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"{self.name}: input is {x.dtype}, the network is {self.dtype}")


def build(name: str, dtype=np.float32, seed: int = 0, backend: str = "fast") -> Network:
    """A freshly initialized network: ``lenet-300-100``, ``lenet-5`` or ``deep-mnist``, computing with
    op set `backend` ("fast" or "reference"; equal to rounding, see the module's text)."""
    return Network(name, dtype=dtype, seed=seed, backend=backend)


def save(net: Network, path, metadata: dict | None = None) -> None:
    """Write `net` (architecture, parameters, masks) to an HDF5 model file, atomically."""
    write_network_file(path, MODEL_FORMAT, net.name, net.dtype, net.params, net.masks, metadata, __version__)


def load(path) -> Network:
    """Read a model file written by :func:`save`; raises `mpdref.io.FormatError` on any problem."""
    return network_from_content(read_network_file(path, MODEL_FORMAT, parameter_shapes))


def network_from_content(content: dict) -> Network:
    """A Network from the validated content of a model file or checkpoint."""
    net = Network(content["architecture"], dtype=content["dtype"])
    net.params = content["params"]
    net.masks = content["masks"]
    net.metadata = content["metadata"]
    return net
