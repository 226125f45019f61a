"""`mpdref.interop.run_onnx` against mpdref's own forward pass: LeNet-5 over the MNIST test set, float32.

    python benchmarks/onnx_eval.py [--model MODEL.h5] [--batch 1000] [--repeats 3] [--keep-blas-env]

The network (a trained LeNet-5 model file, else a freshly initialized one, seed 0) is written as
the ONNX graph that `torch.onnx.export` gives it (Conv, MaxPool, Conv, MaxPool, Flatten, Gemm,
Relu, Gemm; built here with onnx.helper, so that no torch is needed) and the 10,000 test images
are classified in batches of `--batch`, three ways: `run_onnx` on that graph (a ModelProto,
checked by the ONNX checker at each call, as run_onnx does), `models.build`'s network forward
(its default op set, "fast": the reference with its data movement compiled) and the same
network on the reference op set (what run_onnx computes with). The logits of run_onnx are
checked against the network's first (they are equal bit for bit: the same ops in the same
order). Each time is the best of `--repeats` (`timing.best_of`). Target: run_onnx / network
forward <= 2.

This benchmark unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in its own process (as a user's
machine has neither; benchmarks/blas_env.py) and prints the CPU's vector extensions and the
BLAS kernel in use; --keep-blas-env keeps them.
"""
from __future__ import annotations

import argparse

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np
from timing import best_of


def lenet_5_graph(params: dict):
    """The ONNX model (opset 13) torch.onnx.export writes for LeNet-5 (mpdref.models), with `params` as initializers."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1"], kernel_shape=[5, 5]),
        helper.make_node("MaxPool", ["conv1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"], ["conv2"], kernel_shape=[5, 5]),
        helper.make_node("MaxPool", ["conv2"], ["pool2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool2"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["fc1"], transB=1),
        helper.make_node("Relu", ["fc1"], ["relu1"]),
        helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "lenet-5",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in params.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a trained LeNet-5 model file (default: initial weights, seed 0)")
    p.add_argument("--batch", type=int, default=1000, help="images per call (default 1000)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts (default 3)")
    blas_env.add_argument(p)
    args = p.parse_args()

    from mpdref import data, models
    from mpdref.interop import run_onnx

    print(blas_env.describe())
    net = models.load(args.model) if args.model else models.build("lenet-5", np.float32, seed=0)
    if net.name != "lenet-5" or net.dtype != np.float32:
        raise SystemExit(f"{args.model}: a float32 LeNet-5 is needed, this is {net!r}")
    images, labels = data.load_mnist("test")
    x = data.to_network_input(images, np.float32)
    model = lenet_5_graph(net.params)
    reference = models.build("lenet-5", np.float32, backend="reference")
    reference.params = net.params

    def onnx_logits():
        return np.concatenate([run_onnx(model, {"input": x[i : i + args.batch]})[0]
                               for i in range(0, len(x), args.batch)])

    onnx_out = onnx_logits()
    net_out = net.logits(x, args.batch)
    equal = np.array_equal(onnx_out, net_out)
    error = np.abs(onnx_out - net_out).max() / np.abs(net_out).max()
    if error > 1e-5:
        raise SystemExit(f"run_onnx's logits differ from the network's: max relative error {error:.3g}")
    t_onnx, _ = best_of(onnx_logits, args.repeats)
    t_net, _ = best_of(lambda: net.logits(x, args.batch), args.repeats)
    t_ref, _ = best_of(lambda: reference.logits(x, args.batch), args.repeats)
    print(f"LeNet-5, {'weights of ' + args.model if args.model else 'initial weights (seed 0)'}, "
          f"{len(x):,} test images in batches of {args.batch}, float32; logits "
          f"{'equal bit for bit' if equal else f'within {error:.2g} (relative)'}, "
          f"test error {np.mean(onnx_out.argmax(1) != labels):.2%}")
    print(f"{'run_onnx (reference ops)':<38}{t_onnx:8.3f} s {len(x) / t_onnx:10,.0f} img/s")
    print(f"{'network forward (fast op set)':<38}{t_net:8.3f} s {len(x) / t_net:10,.0f} img/s")
    print(f"{'network forward (reference op set)':<38}{t_ref:8.3f} s {len(x) / t_ref:10,.0f} img/s")
    print(f"run_onnx / network forward {t_onnx / t_net:.2f} (target <= 2); "
          f"run_onnx / reference network {t_onnx / t_ref:.2f}")


if __name__ == "__main__":
    main()
