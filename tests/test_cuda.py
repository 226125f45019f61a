"""The numba.cuda kernels against the NumPy references.

Without a GPU these run in Numba's CUDA simulator (conftest sets NUMBA_ENABLE_CUDASIM=1
unless the environment says otherwise), on tiny shapes and tiles so that inputs cross
every tile boundary. On a GPU (``NUMBA_ENABLE_CUDASIM=0 pytest tests/test_cuda.py``) the
same tests run at full size, with the GPU's tile sets.
"""
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import naive
from compare import assert_close, max_norm_atol
from mpdref import models, ops
from mpdref.kernels import BackendUnavailable, load_backend
from mpdref.kernels.config import CUDA_SIM_TILES, CUDA_TILES, CudaTiles, choose_cuda_tiles
from mpdref.mpd import BlockNetwork, block_diagonal_matmul, channel_mask, mpd_mask, to_block_diagonal

try:
    kc = load_backend("cuda")
except BackendUnavailable as e:
    pytest.skip(f"CUDA backend unavailable: {e}", allow_module_level=True)

SIM = kc.simulator()
EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}

# (row sizes, column sizes, batch): a 1-row block, unequal blocks, batch 1, sizes that are no
# multiple of any tile; on a GPU also the benchmark's shape.
if SIM:
    SHAPES = [([3, 1, 5], [4, 2, 7], 9), ([1], [1], 1), ([6, 6], [5, 3], 1), ([2, 9, 4, 1], [3, 3, 8, 2], 6)]
    TILE_SETS = [CUDA_SIM_TILES, CudaTiles(bm=4, bn=2, bk=2, tm=2, tn=1, prefetch=False),
                 CudaTiles(bm=16, bn=16, bk=2, tm=8, tn=8)]  # two runs of 4 rows and columns per thread
else:
    SHAPES = [([3, 1, 5], [4, 2, 7], 9), ([1], [1], 1), ([300, 1, 77], [784, 3, 129], 1000),
              ([256] * 16, [256] * 16, 1024), ([64] * 64, [64] * 64, 64), ([30, 31, 29], [79, 78, 80], 17)]
    TILE_SETS = list(CUDA_TILES.values()) + [CudaTiles(bm=64, bn=64, bk=8, tm=4, tn=4, prefetch=False)]


def _random_blocks(rng, row_sizes, col_sizes, dtype):
    return [rng.standard_normal((r, c)).astype(dtype) for r, c in zip(row_sizes, col_sizes)]


def _assert_float_rounding(got, ref, bound_scale, depth, dtype):
    """|got - ref| within the worst-case rounding of a depth-term sum (γ_depth · Σ|terms|), ref in float64."""
    assert got.dtype == dtype and got.shape == ref.shape
    assert np.all(np.isfinite(got))
    assert_close(got, ref, rtol=0, atol=(depth + 2) * EPS[dtype] * bound_scale, name="y")  # a bound per element


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s[0])}blocks-n{s[2]}")
def test_block_diagonal_matmul_equals_the_reference(shape, dtype, rng):
    rows, cols, n = shape
    blocks = _random_blocks(rng, rows, cols, dtype)
    x = rng.standard_normal((n, sum(cols))).astype(dtype)
    got = kc.block_diagonal_matmul(blocks, x)
    blocks64 = [b.astype(np.float64) for b in blocks]
    ref = block_diagonal_matmul(blocks64, x.astype(np.float64))
    scale = block_diagonal_matmul([np.abs(b) for b in blocks64], np.abs(x.astype(np.float64)))
    _assert_float_rounding(got, ref, scale, max(cols), dtype)
    if dtype == np.float64:
        assert np.linalg.norm(got - ref) <= 1e-12 * np.linalg.norm(ref)


@pytest.mark.parametrize("tiles", TILE_SETS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_gather_bias_relu_and_scatter(tiles, dtype, rng):
    rows, cols, n = SHAPES[0] if SIM else SHAPES[2]
    blocks = _random_blocks(rng, rows, cols, dtype)
    x = rng.standard_normal((n, sum(cols))).astype(dtype)
    gather = rng.permutation(sum(cols))
    bias = rng.standard_normal(sum(rows)).astype(dtype)
    row_dest = rng.permutation(sum(rows))
    got = kc.block_diagonal_matmul(blocks, x, gather=gather, bias=bias, relu=True, row_dest=row_dest, tiles=tiles)
    blocks64, x64 = [b.astype(np.float64) for b in blocks], x.astype(np.float64)
    ref = naive.permuted_block_diagonal_matmul(blocks64, x64, gather, row_dest, bias, relu=True)
    scale = naive.permuted_block_diagonal_matmul([np.abs(b) for b in blocks64], np.abs(x64), gather, row_dest,
                                                 np.abs(bias))
    _assert_float_rounding(got, ref, scale, max(cols) + 1, dtype)
    assert np.any(got == 0.0) and np.all(got >= 0.0)  # the ReLU ran


def test_every_output_is_written(rng):
    # The output buffer starts full of NaN; every element must be overwritten.
    blocks = _random_blocks(rng, [2, 5], [3, 4], np.float32)
    layer = kc.DeviceBlockDense(blocks)
    x = kc.to_device(rng.standard_normal((7, 3)).astype(np.float32))
    out = kc.to_device(np.full((7, 3), np.nan, np.float32))
    assert np.all(np.isfinite(layer(x, out=out).copy_to_host()))


def test_bad_arguments_are_named(rng):
    blocks = _random_blocks(rng, [2, 3], [3, 4], np.float32)
    with pytest.raises(ValueError, match="gather"):
        kc.DeviceBlockDense(blocks, gather=np.arange(6))
    with pytest.raises(ValueError, match="row_dest"):
        kc.DeviceBlockDense(blocks, row_dest=np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="bias"):
        kc.DeviceBlockDense(blocks, bias=np.zeros(5, np.float64))
    with pytest.raises(TypeError, match="float32"):
        kc.block_diagonal_matmul(blocks, np.zeros((2, 7), np.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        kc.DeviceBlockDense([b.astype(np.float16) for b in blocks])
    with pytest.raises(ValueError, match="device array"):
        kc.DeviceBlockDense(blocks)(kc.to_device(np.zeros((6, 2), np.float32)))


def test_tile_sets_are_checked():
    with pytest.raises(ValueError, match="divide"):
        CudaTiles(bm=6, bn=4, bk=2, tm=4, tn=2)
    with pytest.raises(ValueError, match="evenly"):
        CudaTiles(bm=4, bn=4, bk=1, tm=1, tn=1)  # 16 threads cannot load a 4x1 tile evenly
    for tiles in CUDA_TILES.values():
        assert tiles.threads <= 1024


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grouped_conv_pool_and_relu_equal_the_ops(dtype, rng):
    c_in, size, n = (3, 7, 2) if SIM else (32, 14, 50)
    rows, cols = ([2, 3], [1, 2]) if SIM else ([30, 34], [15, 17])
    blocks = [rng.standard_normal((r, c, 3, 3)).astype(dtype) for r, c in zip(rows, cols)]
    gather = rng.permutation(c_in)
    bias = rng.standard_normal(sum(rows)).astype(dtype)
    x = rng.standard_normal((n, c_in, size, size)).astype(dtype)
    conv = kc.DeviceBlockConv(blocks, gather, bias, stride=1, padding=1)
    y = conv(kc.to_device(np.moveaxis(x, 0, -1)), relu=True)
    pooled = kc.max_pool(y, 2).copy_to_host()
    ref_conv, _ = ops.grouped_conv2d_forward(x[:, gather].astype(np.float64), [b.astype(np.float64) for b in blocks],
                                             bias.astype(np.float64), 1, 1)
    ref_conv = np.maximum(ref_conv, 0.0)
    got_conv = np.moveaxis(y.copy_to_host(), -1, 0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    # Norm-wise relative errors, max|got - ref| <= tol·max|ref|: rtol = 0, atol = tol·max|ref|.
    assert_close(got_conv, ref_conv, rtol=0, atol=max_norm_atol(tol, ref_conv), name="conv")
    ref_pool, _ = ops.max_pool2d_forward(ref_conv, 2, 2)
    assert_close(np.moveaxis(pooled, -1, 0), ref_pool, rtol=0, atol=max_norm_atol(tol, ref_pool), name="pool")
    a = kc.to_device(x)
    assert np.array_equal(kc.relu(a).copy_to_host(), np.maximum(x, 0))


def _tiny_network(dtype, rng, monkeypatch):
    """A small conv + dense MPD network (input 2×6×6), small enough for the simulator."""
    monkeypatch.setattr(models, "INPUT_SHAPE", (2, 6, 6))
    layers = [models.Conv2d("conv1", 2, 4, 3, padding=1), models.ReLU(), models.MaxPool2d(2),
              models.Conv2d("conv2", 4, 5, 2), models.Flatten(), models.Dense("fc1", 20, 7), models.ReLU(),
              models.Dropout(0.5), models.Dense("fc2", 7, 5)]
    params, masks = {}, {}
    for layer in layers:
        for name, shape in getattr(layer, "parameter_shapes", dict)().items():
            params[name] = rng.standard_normal(shape).astype(dtype)
    for name, k in {"conv1.weight": 2, "conv2.weight": 2, "fc1.weight": 3}.items():
        shape = params[name].shape
        masks[name] = channel_mask(shape, mpd_mask(shape[0], shape[1], k, rng))
        params[name] *= masks[name]
    return types.SimpleNamespace(name="tiny", dtype=np.dtype(dtype), layers=layers, params=params, masks=masks,
                                 rng=np.random.default_rng(0))


def _mpd_network(name, dtype, rng):
    ks = {"lenet-300-100": {"fc1.weight": 10, "fc2.weight": 7, "fc3.weight": 3},
          "deep-mnist": {"conv2.weight": 8, "fc1.weight": 16, "fc2.weight": 5}}[name]
    net = models.build(name, dtype, seed=3)
    for layer, k in ks.items():
        shape = net.params[layer].shape
        net.set_mask(layer, channel_mask(shape, mpd_mask(shape[0], shape[1], k, rng)))
    for key in net.params:
        if key.endswith(".bias"):
            net.params[key] = rng.standard_normal(net.params[key].shape).astype(dtype) * 0.1
    return to_block_diagonal(net)


NETWORKS = ["tiny"] if SIM else ["tiny", "lenet-300-100", "deep-mnist"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NETWORKS)
def test_whole_network_on_the_device_equals_the_block_network(name, dtype, rng, monkeypatch):
    from mpdref.mpd import CudaBlockNetwork, block_network

    if name == "tiny":
        masked = _tiny_network(dtype, rng, monkeypatch)
        block, gpu = block_network(masked, "cpu"), block_network(masked, "cuda")
        x = rng.standard_normal((3, *models.INPUT_SHAPE)).astype(dtype)
    else:
        block = _mpd_network(name, dtype, rng)
        gpu = CudaBlockNetwork(block)
        x = rng.standard_normal((257, 1, 28, 28)).astype(dtype)
    assert isinstance(block, BlockNetwork) and isinstance(gpu, CudaBlockNetwork)
    got = gpu.forward(x)
    expected = block.forward(x)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert got.shape == expected.shape and got.dtype == dtype
    # A norm-wise relative error: rtol = 0, atol = tol·max|expected|.
    assert_close(got, expected, rtol=0, atol=max_norm_atol(tol, expected), name="logits")
    assert np.array_equal(gpu.predict(x), block.predict(x))


def test_without_a_gpu_the_error_names_the_cause_and_the_alternatives(tmp_path):
    # No visible device (and, where Numba honours it, no driver library) stands for a machine without a GPU.
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "CUDA_VISIBLE_DEVICES": "",
           "NUMBA_CUDA_DRIVER": str(tmp_path / "no-libcuda.so")}
    code = ("from mpdref.kernels import load_backend, BackendUnavailable\n"
            "try:\n    load_backend('cuda')\nexcept BackendUnavailable as e:\n    print('UNAVAILABLE', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("UNAVAILABLE")
    assert "backend='cpu'" in out.stdout and "NUMBA_ENABLE_CUDASIM=1" in out.stdout
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend("tpu")
    from mpdref.mpd import block_network

    with pytest.raises(ValueError, match="unknown backend"):
        block_network(models.build("lenet-300-100"), "tpu")
    # the command line says it in one line, before reading any data
    model = tmp_path / "model.h5"
    models.save(models.build("lenet-300-100", np.float32, seed=0), model)
    out = subprocess.run([sys.executable, "-m", "mpdref.cli", "evaluate", str(model), "--backend", "cuda",
                          "--data", str(tmp_path / "nowhere")], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpdref evaluate: error: backend='cuda'"), out.stderr


@pytest.mark.skipif(SIM, reason="the direct launch is bypassed in the simulator")
def test_direct_launch_gives_the_bits_of_numba_cudas_launch(rng):
    """After its first call a kernel launches without numba-cuda's dispatch (kc._DirectLaunch):
    the same bits as numba-cuda's own launch, for the dense product and the elementwise kernels."""
    blocks = _random_blocks(rng, [40, 24], [30, 50], np.float32)
    layer = kc.DeviceBlockDense(blocks, bias=rng.standard_normal(64).astype(np.float32))
    x = kc.to_device(rng.standard_normal((80, 33)).astype(np.float32))
    first = layer(x, relu=True).copy_to_host()  # through numba-cuda: compiles
    second = layer(x, relu=True).copy_to_host()  # direct
    tiles = choose_cuda_tiles(layer.max_rows, 33)
    grid = (math.ceil(layer.max_rows / tiles.bm), math.ceil(33 / tiles.bn), layer.k)
    launcher = kc._configured_once(kc._block_matmul_kernel(tiles, np.dtype(np.float32), True), grid, tiles.threads)
    assert launcher.kernels, "the second call should have launched directly"
    via_numba = kc.cuda.device_array((64, 33), np.float32)
    launcher.configured(layer._params, layer._meta, x, via_numba)
    assert np.array_equal(first, second) and np.array_equal(second, via_numba.copy_to_host())
    z = rng.standard_normal((4, 6, 6, 5)).astype(np.float32)
    pooled = [kc.max_pool(kc.to_device(z), 2, relu=True).copy_to_host() for _ in range(3)]
    assert all(np.array_equal(pooled[0], p) for p in pooled[1:])
    assert np.array_equal(pooled[0], np.maximum(z.reshape(4, 3, 2, 3, 2, 5).max(axis=(2, 4)), 0))
