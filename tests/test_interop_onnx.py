"""mpdref.interop.run_onnx: ONNX graphs evaluated with mpdref's reference ops.

(a) The ONNX project's own node test cases (`onnx.backend.test.loader.load_model_tests(kind="node")`,
which onnx 1.23 generates and older wheels read from onnx/backend/test/data/node): every case whose
graph uses only supported op types runs and is compared with the case's expected outputs at the
tolerances the ONNX backend tests use, each case's rtol and atol (1e-3 and 1e-7 unless the case
says otherwise), |a - e| <= atol + rtol·|e|, NaN equal to NaN; integer and bool outputs exactly;
dtypes and shapes equal. The cases that use what run_onnx deliberately does not evaluate are
named below with the reason, and each must be refused with UnsupportedModel.
(b) Small onnx.helper graphs: the window attributes against loop oracles (tests/naive.py) and
onnxruntime, the opset-dependent semantics, the operator-version table against onnx.defs, the
error paths.
(c) The three networks exported by torch.onnx.export (the TorchScript exporter): float64 against
torch float64, float32 against onnxruntime and equal to mpdref's own forward, intermediate values.
"""
import glob
import inspect
import os
import sys
import warnings
from typing import NamedTuple

import numpy as np
import pytest

import naive
from compare import assert_close, max_norm_atol
from conftest import needs_torch

onnx = pytest.importorskip("onnx", reason="the interop extra is not installed (pip install -e '.[interop]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mpdref import models, ops  # noqa: E402
from mpdref.interop import SUPPORTED_OPS, UnsupportedModel, run_onnx  # noqa: E402
from mpdref.interop import onnx_eval  # noqa: E402
from mpdref.interop.torch_twin import torch_network  # noqa: E402
from mpdref.io import FormatError  # noqa: E402

try:
    import onnxruntime
except ImportError:  # the interop extra installs it; without it only the comparisons with it skip
    onnxruntime = None

needs_onnxruntime = pytest.mark.skipif(onnxruntime is None, reason="onnxruntime is not installed "
                                                                   "(pip install -e '.[interop]')")

# ----------------------------------------------------------------------------- (a) the ONNX node test cases

#: Fewer node cases than this running means the selection broke, not that the evaluator is right.
MIN_NODE_CASES = 170

#: Node cases of supported op types that use what run_onnx deliberately does not evaluate, by reason,
#: with what the UnsupportedModel message must say. Besides these, every case whose inputs, outputs or
#: Cast targets have an element type without a NumPy dtype that mpdref computes with (bfloat16, the
#: float8, float4, int4, int2 and e8m0 types: `unsupported_element_types`) is refused, naming the type.
EXCLUDED = {
    "3-D pooling: mpdref's ops are 2-D (NCHW); 1-D runs as images one row high": ("3-D", [
        "test_averagepool_3d_default", "test_averagepool_3d_dilations_small",
        "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True",
        "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False",
        "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True",
        "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False",
        "test_maxpool_3d_default", "test_maxpool_3d_dilations", "test_maxpool_3d_dilations_use_ref_impl",
        "test_maxpool_3d_dilations_use_ref_impl_large"]),
    "Dropout in training mode draws a random mask (inference only; training with ratio 0 runs)": ("training mode", [
        "test_training_dropout", "test_training_dropout_mask", "test_training_dropout_default",
        "test_training_dropout_default_mask"]),
    "sequence and optional values: run_onnx evaluates tensors only": ("tensors only", [
        "test_identity_sequence", "test_identity_opt"]),
}


def unsupported_element_types(model) -> list[str]:
    """The element types of a graph's inputs, outputs and Cast targets that run_onnx does not compute with."""
    graph = model.graph
    types = [info.type.tensor_type.elem_type for info in [*graph.input, *graph.output]
             if info.type.WhichOneof("value") == "tensor_type"]
    types += [a.i for node in graph.node if node.op_type == "Cast" for a in node.attribute if a.name == "to"]
    return sorted({TensorProto.DataType.Name(t) for t in types if t not in onnx_eval.ELEMENT_TYPES})


class NodeCase(NamedTuple):
    model: "onnx.ModelProto"
    data_sets: list  # [(inputs, expected outputs)], each a list of arrays or TensorProtos
    rtol: float
    atol: float


def node_case(case) -> NodeCase:
    """A node test case's model and data: generated (onnx >= 1.23), or read from its directory
    (model.onnx, test_data_set_*/input_i.pb and output_i.pb: the wheels up to 1.22). A value that is not a
    tensor (sequence, optional) is read as None: those cases are refused before their inputs are read."""
    if case.model is not None:
        return NodeCase(case.model, case.data_sets, case.rtol, case.atol)
    model = onnx.load(os.path.join(case.model_dir, "model.onnx"))

    def read(directory, kind, infos):
        files = [os.path.join(directory, f"{kind}_{i}.pb") for i in range(len(infos))]
        return [onnx.load_tensor(f) if info.type.WhichOneof("value") == "tensor_type" else None
                for f, info in zip(files, infos) if os.path.exists(f)]

    data_sets = [(read(d, "input", model.graph.input), read(d, "output", model.graph.output))
                 for d in sorted(glob.glob(os.path.join(case.model_dir, "test_data_set_*")))]
    return NodeCase(model, data_sets, case.rtol, case.atol)


@pytest.fixture(scope="module")
def node_cases():
    """The node test cases whose graphs use only supported op types, by name."""
    from onnx.backend.test import loader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators' own overflow warnings (float8 casts)
        cases = {case.name: node_case(case) for case in loader.load_model_tests(kind="node")}
    return {name: case for name, case in cases.items()
            if all(n.op_type in SUPPORTED_OPS and n.domain in ("", "ai.onnx") for n in case.model.graph.node)}


def feeds_and_expected(case: NodeCase):
    """(feeds, expected outputs) of each of a case's data sets, TensorProtos as arrays."""
    def array(value):
        return numpy_helper.to_array(value) if isinstance(value, TensorProto) else value

    initialized = {t.name for t in case.model.graph.initializer}
    names = [info.name for info in case.model.graph.input if info.name not in initialized]
    return [({n: array(v) for n, v in zip(names, inputs)}, [array(v) for v in outputs])
            for inputs, outputs in case.data_sets]


def excluded_reason(name, case):
    """(reason, what the error says) where the case is excluded, else None."""
    for reason, (says, names) in EXCLUDED.items():
        if name in names:
            return reason, says
    types = unsupported_element_types(case.model)
    return ("element type without a NumPy dtype mpdref computes with", types[0]) if types else None


def test_every_onnx_node_case_of_the_supported_ops_gives_the_expected_outputs(node_cases):
    ran, failures = [], []
    for name, case in node_cases.items():
        if excluded_reason(name, case):
            continue
        try:
            for feeds, expected in feeds_and_expected(case):
                outputs = run_onnx(case.model, feeds)
                assert len(outputs) == len(expected), (len(outputs), len(expected))
                for i, (actual, wanted) in enumerate(zip(outputs, expected)):
                    assert actual.dtype == wanted.dtype, f"output {i}: dtype {actual.dtype}, expected {wanted.dtype}"
                    exact = wanted.dtype.kind != "f"
                    assert_close(actual, wanted, rtol=0 if exact else case.rtol, atol=0 if exact else case.atol,
                                 name=f"{name} output {i}", equal_nan=True)
            ran.append(name)
        except Exception as error:  # noqa: BLE001 (every failure is collected and reported below)
            failures.append(f"{name}: {type(error).__name__}: {error}")
    ops_run = sorted({n.op_type for name in ran for n in node_cases[name].model.graph.node})
    print(f"\nONNX node cases: {len(node_cases)} use only supported op types; {len(ran)} ran and passed, "
          f"{len(failures)} failed, {len(node_cases) - len(ran) - len(failures)} excluded; op types run: {ops_run}")
    assert not failures, f"{len(failures)} ONNX node cases failed:\n" + "\n".join(failures)
    assert len(ran) >= MIN_NODE_CASES, f"only {len(ran)} node cases ran (at least {MIN_NODE_CASES} expected)"
    assert set(ops_run) == set(SUPPORTED_OPS), f"op types no node case ran: {set(SUPPORTED_OPS) - set(ops_run)}"


def test_the_excluded_node_cases_exist_and_are_refused_naming_what_they_use(node_cases):
    listed = {name for _, names in EXCLUDED.values() for name in names}
    assert listed <= set(node_cases), f"excluded cases not among the node cases: {sorted(listed - set(node_cases))}"
    counts = {}
    for name, case in node_cases.items():
        reason = excluded_reason(name, case)
        if reason is None:
            continue
        counts[reason[0]] = counts.get(reason[0], 0) + 1
        feeds, _ = feeds_and_expected(case)[0]
        with pytest.raises(UnsupportedModel, match=reason[1]):
            run_onnx(case.model, feeds)
    print("\nexcluded ONNX node cases: " + "; ".join(f"{n} ({reason})" for reason, n in counts.items()))
    assert sum(counts.values()) >= len(listed) + 50  # the element-type rule catches the float8 and int4 casts


# ----------------------------------------------------------------------------- (b) small graphs


def single_node_model(op_type, inputs: dict, outputs, opset=17, output_types=None, output_rank=None, **attributes):
    """A model of one node named "the_node": `inputs` (name -> array) its graph inputs, `outputs` its output
    names, of `output_types` (default: the first input's) and rank `output_rank` (default: the first input's)."""
    def info(name, array):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)

    first = next(iter(inputs.values()))
    output_types = output_types or [helper.np_dtype_to_tensor_dtype(first.dtype)] * len(outputs)
    rank = first.ndim if output_rank is None else output_rank
    graph = helper.make_graph(
        [helper.make_node(op_type, list(inputs), list(outputs), name="the_node", **attributes)], "one_node",
        [info(n, a) for n, a in inputs.items()],
        [helper.make_tensor_value_info(n, t, [None] * rank) for n, t in zip(outputs, output_types)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def onnxruntime_outputs(model, feeds):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


# Conv attributes beyond what the op takes (asymmetric pads, unequal strides, dilations, groups, auto_pad),
# each with the pads [h_begin, w_begin, h_end, w_end] it amounts to on a 7 × 8 image, worked out by hand
# from the spec (SAME: ceil(size / stride) outputs, the total padding (out - 1)·stride + window - size,
# the odd one at the end for SAME_UPPER and at the beginning for SAME_LOWER).
CONV_ATTRIBUTES = [
    (dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), [1, 1, 1, 1]),
    (dict(kernel_shape=[3, 2], pads=[0, 1, 2, 1], strides=[2, 1]), [0, 1, 2, 1]),
    (dict(kernel_shape=[2, 3], pads=[2, 0, 1, 1], dilations=[2, 1], strides=[1, 2]), [2, 0, 1, 1]),
    (dict(kernel_shape=[3, 3], group=2, strides=[2, 2], dilations=[1, 2]), [0, 0, 0, 0]),
    (dict(kernel_shape=[3, 2], auto_pad="SAME_LOWER", strides=[2, 3]), [1, 0, 1, 0]),  # H 4 out: 2; W 3 out: 0
    (dict(kernel_shape=[2, 2], auto_pad="SAME_UPPER", strides=[2, 1]), [0, 0, 1, 1]),  # H 4 out: 1; W 8 out: 1
    (dict(kernel_shape=[2, 2], auto_pad="SAME_UPPER", dilations=[2, 3]), [1, 1, 1, 2]),  # windows 3 and 4
    (dict(kernel_shape=[3, 3], auto_pad="VALID", strides=[1, 2]), [0, 0, 0, 0]),
]


def conv_inputs(attributes, rng, dtype):
    group = attributes.get("group", 1)
    kh, kw = attributes["kernel_shape"]
    return {"x": rng.standard_normal((2, 4, 7, 8)).astype(dtype),
            "w": rng.standard_normal((6, 4 // group, kh, kw)).astype(dtype),
            "b": rng.standard_normal(6).astype(dtype)}


@pytest.mark.parametrize("attributes, pads", CONV_ATTRIBUTES, ids=str)
def test_conv_attributes_against_the_loop_oracle_in_float64(attributes, pads, rng):
    inputs = conv_inputs(attributes, rng, np.float64)
    y, = run_onnx(single_node_model("Conv", inputs, ["y"], **attributes), inputs)
    expected = naive.onnx_conv2d(*inputs.values(), attributes.get("strides", [1, 1]), pads,
                                 attributes.get("dilations", [1, 1]), attributes.get("group", 1))
    assert y.dtype == np.float64
    assert_close(y, expected, rtol=0, atol=max_norm_atol(1e-12, expected), name="Conv")


@needs_onnxruntime
@pytest.mark.parametrize("attributes", [a for a, _ in CONV_ATTRIBUTES
                                        if not ("dilations" in a and a.get("auto_pad", "").startswith("SAME"))],
                         ids=str)
def test_conv_attributes_against_onnxruntime_in_float32(attributes, rng):
    """(onnxruntime refuses dilations with SAME padding: that case is the oracle's only.)"""
    inputs = conv_inputs(attributes, rng, np.float32)
    model = single_node_model("Conv", inputs, ["y"], **attributes)
    y, = run_onnx(model, inputs)
    expected, = onnxruntime_outputs(model, inputs)
    assert_close(y, expected, rtol=0, atol=max_norm_atol(1e-5, expected), name="Conv")


# Pooling attributes: rectangular kernels, unequal strides, asymmetric pads, dilations, ceil_mode
POOL_ATTRIBUTES = [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 0, 1]),
    dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[1, 2], dilations=[2, 1], pads=[1, 1, 1, 0], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[3, 2], pads=[1, 1, 1, 1], ceil_mode=1),
]


def pool_input(rng, dtype):
    """(2, 3, 7, 8) with ties: a third of the values are 0, as after a ReLU."""
    return np.maximum(rng.standard_normal((2, 3, 7, 8)), -0.4).clip(0, None).astype(dtype)


def pool_oracle_arguments(attributes):
    return (attributes["kernel_shape"], attributes.get("strides", [1, 1]), attributes.get("pads", [0] * 4),
            attributes.get("dilations", [1, 1]), bool(attributes.get("ceil_mode", 0)))


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("attributes", POOL_ATTRIBUTES, ids=str)
def test_max_pool_values_and_indices_against_the_loop_oracle(attributes, storage_order, rng):
    x = pool_input(rng, np.float64)
    model = single_node_model("MaxPool", {"x": x}, ["y", "indices"],
                              output_types=[TensorProto.DOUBLE, TensorProto.INT64], storage_order=storage_order,
                              **attributes)
    y, indices = run_onnx(model, {"x": x})
    expected, expected_indices = naive.onnx_pool2d(x, "max", *pool_oracle_arguments(attributes))
    if storage_order == 1:  # (n·C + c)·H·W + w·H + h
        plane, rest = np.divmod(expected_indices, 7 * 8)
        expected_indices = plane * 7 * 8 + (rest % 8) * 7 + rest // 8
    assert_close(y, expected, rtol=0, atol=0, name="MaxPool Y")
    assert indices.dtype == np.int64 and np.array_equal(indices, expected_indices)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("attributes", POOL_ATTRIBUTES, ids=str)
def test_average_pool_against_the_loop_oracle(attributes, count_include_pad, rng):
    x = rng.standard_normal((2, 3, 7, 8))
    y, = run_onnx(single_node_model("AveragePool", {"x": x}, ["y"], opset=19, count_include_pad=count_include_pad,
                                    **attributes), {"x": x})
    expected = naive.onnx_pool2d(x, "average", *pool_oracle_arguments(attributes), bool(count_include_pad))
    assert_close(y, expected, rtol=1e-12, atol=1e-15, name="AveragePool")


@needs_onnxruntime
@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attributes", [*POOL_ATTRIBUTES,
                                        dict(kernel_shape=[3, 2], auto_pad="SAME_LOWER", strides=[2, 3]),
                                        dict(kernel_shape=[2, 3], auto_pad="SAME_UPPER", strides=[2, 2])], ids=str)
def test_pooling_against_onnxruntime(op_type, attributes, rng):
    x = pool_input(rng, np.float32)
    outputs = ["y", "indices"] if op_type == "MaxPool" else ["y"]
    model = single_node_model(op_type, {"x": x}, outputs, opset=19,
                              output_types=[TensorProto.FLOAT, TensorProto.INT64][: len(outputs)], **attributes)
    ours, theirs = run_onnx(model, {"x": x}), onnxruntime_outputs(model, {"x": x})
    assert_close(ours[0], theirs[0], rtol=1e-6, atol=1e-7, name=op_type)
    if op_type == "MaxPool":
        assert np.array_equal(ours[1], theirs[1])


def test_one_dimensional_conv_and_pooling_are_images_one_row_high(rng):
    x, w, b = rng.standard_normal((2, 3, 9)), rng.standard_normal((4, 3, 3)), rng.standard_normal(4)
    y, = run_onnx(single_node_model("Conv", {"x": x, "w": w, "b": b}, ["y"], pads=[2, 1], strides=[2]),
                  {"x": x, "w": w, "b": b})
    expected = naive.onnx_conv2d(x[:, :, None], w[:, :, None], b, [1, 2], [0, 2, 0, 1], [1, 1], 1)[:, :, 0]
    assert_close(y, expected, rtol=0, atol=max_norm_atol(1e-12, expected), name="1-D Conv")
    y, indices = run_onnx(single_node_model("MaxPool", {"x": x}, ["y", "i"], output_types=[TensorProto.DOUBLE,
                                                                                         TensorProto.INT64],
                                            kernel_shape=[3], strides=[2], pads=[1, 0]), {"x": x})
    expected, expected_indices = naive.onnx_pool2d(x[:, :, None], "max", [1, 3], [1, 2], [0, 1, 0, 0], [1, 1])
    assert_close(y, expected[:, :, 0], rtol=0, atol=0, name="1-D MaxPool")
    assert np.array_equal(indices, expected_indices[:, :, 0])


def test_the_onnx_oracles_by_hand():
    """tests/naive.py's ONNX oracles on inputs small enough to work out on paper."""
    x = np.ones((1, 1, 2, 2))  # pads of 1 around a 2 × 2 image, 2 × 2 windows at stride 2: one real tap each
    pooled = dict(kernel=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1])
    assert np.array_equal(naive.onnx_pool2d(x, "average", *pooled.values()), np.ones((1, 1, 2, 2)))
    assert np.array_equal(naive.onnx_pool2d(x, "average", *pooled.values(), count_include_pad=True),
                          np.full((1, 1, 2, 2), 0.25))
    x = np.arange(9.0).reshape(1, 1, 3, 3)  # ceil_mode: a second, partial window on each axis
    y, indices = naive.onnx_pool2d(x, "max", [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], ceil_mode=True)
    assert np.array_equal(y[0, 0], [[4, 5], [7, 8]]) and np.array_equal(indices[0, 0], [[4, 5], [7, 8]])
    y = naive.onnx_conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), np.array([0.5]), [1, 1], [1, 0, 0, 0],
                          [1, 1], 1)  # one row of padding on top only: the first output row sees one image row
    assert np.array_equal(y[0, 0], [[2.5, 2.5], [4.5, 4.5], [4.5, 4.5]])
    y = naive.onnx_conv2d(np.arange(5.0).reshape(1, 1, 1, 5), np.ones((1, 1, 1, 2)), np.zeros(1), [1, 1],
                          [0, 0, 0, 0], [1, 3], 1)  # dilation 3: taps 3 apart
    assert np.array_equal(y[0, 0], [[0 + 3, 1 + 4]])


@pytest.mark.parametrize("kernel, stride, dilation", [((2, 3), (1, 2), (1, 1)), ((3, 2), (2, 1), (2, 3)),
                                                      ((1, 2), (3, 1), (1, 2)), (2, 2, 2)])
def test_max_pool2d_op_with_rectangular_windows_and_dilations_against_the_oracle(kernel, stride, dilation, rng):
    """The op as extended for ONNX: its values, and its backward routing each window's gradient to the
    window's first maximum (the argmax of its cache), against tests/naive.py."""
    pair = (lambda v: (v, v) if np.ndim(v) == 0 else v)
    x = pool_input(rng, np.float64)
    y, cache = ops.max_pool2d_forward(x, kernel, stride, dilation)
    y_ref, winner = naive.max_pool2d_dilated(x, pair(kernel), pair(stride), pair(dilation))
    assert_close(y, y_ref, rtol=0, atol=0, name="y")
    dout = rng.standard_normal(y.shape)
    assert_close(ops.max_pool2d_backward(dout, cache), naive.max_pool2d_backward(dout, winner, x.shape), rtol=0,
                 atol=1e-15, name="dx")


# -- operator versions and opset-dependent semantics


def test_the_version_table_matches_onnx_defs():
    """Every listed version is one onnx.defs defines for the op, every attribute the spec gives it is a
    keyword of its function, and every version the opsets MIN_OPSET to 28 select is listed."""
    for op_type, versions in onnx_eval.OPERATORS.items():
        for since, function in versions.items():
            schema = onnx.defs.get_schema(op_type, since, "")
            assert schema.since_version == since, (op_type, since)
            keywords = {n for n, p in inspect.signature(function).parameters.items() if p.kind == p.KEYWORD_ONLY}
            assert set(schema.attributes) <= keywords, (op_type, since, set(schema.attributes) - keywords)
        for opset in range(onnx_eval.MIN_OPSET, min(28, onnx.defs.onnx_opset_version()) + 1):
            assert onnx.defs.get_schema(op_type, opset, "").since_version in versions, (op_type, opset)


def test_a_version_mpdref_does_not_know_is_refused_before_anything_runs(monkeypatch, rng):
    x = rng.standard_normal((2, 3))
    model = single_node_model("Relu", {"x": x}, ["y"], opset=14)
    monkeypatch.setitem(onnx_eval.OPERATORS, "Relu", {6: onnx_eval.relu, 13: onnx_eval.relu})
    with pytest.raises(UnsupportedModel, match=r"'the_node' \(Relu\): Relu-14 \(opset 14\) .* versions 6, 13"):
        run_onnx(model, {"x": x})


@pytest.mark.parametrize("op_type, function", [("Softmax", naive.softmax),
                                                ("LogSoftmax", lambda z: np.log(naive.softmax(z)))])
def test_softmax_axis_coerces_to_2d_before_opset_13_and_is_one_axis_from_it(op_type, function, rng):
    x = rng.standard_normal((2, 3, 4))
    before, = run_onnx(single_node_model(op_type, {"x": x}, ["y"], opset=11, axis=1), {"x": x})
    from_13, = run_onnx(single_node_model(op_type, {"x": x}, ["y"], opset=13, axis=1), {"x": x})
    default_before, = run_onnx(single_node_model(op_type, {"x": x}, ["y"], opset=12), {"x": x})
    default_13, = run_onnx(single_node_model(op_type, {"x": x}, ["y"], opset=13), {"x": x})
    rows_of_12 = function(x.reshape(2, 12)).reshape(x.shape)  # axis 1 before 13: each (3, 4) block is one row
    along_1 = np.moveaxis(function(np.moveaxis(x, 1, -1).reshape(-1, 3)).reshape(2, 4, 3), -1, 1)
    along_last = function(x.reshape(-1, 4)).reshape(x.shape)
    for actual, expected, name in [(before, rows_of_12, "opset 11, axis 1"), (from_13, along_1, "opset 13, axis 1"),
                                   (default_before, rows_of_12, "opset 12, default axis 1"),
                                   (default_13, along_last, "opset 13, default axis -1")]:
        assert_close(actual, expected, rtol=1e-13, atol=1e-15, name=name)
    assert not np.allclose(rows_of_12, along_1)  # the two semantics differ on this input


def test_dropout_at_inference_across_opsets(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    y, mask = run_onnx(single_node_model("Dropout", {"x": x}, ["y", "mask"], opset=9, ratio=0.3), {"x": x})
    assert np.array_equal(y, x) and mask.dtype == np.float32 and np.all(mask == 1)  # opsets 7 to 9: mask of type T
    y, mask = run_onnx(single_node_model("Dropout", {"x": x}, ["y", "mask"], opset=10, output_types=[
        TensorProto.FLOAT, TensorProto.BOOL], ratio=0.3), {"x": x})
    assert np.array_equal(y, x) and mask.dtype == np.bool_ and mask.all()
    inputs = {"x": x, "ratio": np.array(0.5, np.float32), "training_mode": np.array(False)}
    model = single_node_model("Dropout", inputs, ["y", "mask"], opset=13,
                              output_types=[TensorProto.FLOAT, TensorProto.BOOL])
    y, mask = run_onnx(model, inputs)
    assert np.array_equal(y, x) and mask.all()
    with pytest.raises(UnsupportedModel, match="'the_node' .*training mode"):
        run_onnx(model, {**inputs, "training_mode": np.array(True)})
    y, mask = run_onnx(model, {**inputs, "training_mode": np.array(True), "ratio": np.array(0.0, np.float32)})
    assert np.array_equal(y, x) and mask.all()  # ratio 0 drops nothing


def test_reshape_zero_copies_a_dimension_unless_allowzero():
    data = np.arange(24.0).reshape(2, 3, 4)
    inputs = {"data": data, "shape": np.array([0, -1], np.int64)}
    y, = run_onnx(single_node_model("Reshape", inputs, ["y"], opset=14, output_types=[TensorProto.DOUBLE],
                                    output_rank=2), inputs)
    assert y.shape == (2, 12)
    empty = {"data": np.zeros((0, 3)), "shape": np.array([3, 0], np.int64)}
    y, = run_onnx(single_node_model("Reshape", empty, ["y"], opset=14, output_types=[TensorProto.DOUBLE],
                                    allowzero=1), empty)
    assert y.shape == (3, 0)
    with pytest.raises(ValueError, match=r"'the_node' \(Reshape\)"):  # without allowzero 0 copies the 0: (3, 3)
        run_onnx(single_node_model("Reshape", empty, ["y"], opset=14, output_types=[TensorProto.DOUBLE]), empty)


def test_gemm_attributes_and_optional_c(rng):
    a, b, c = rng.standard_normal((4, 3)), rng.standard_normal((5, 4)), rng.standard_normal((3, 1))
    inputs = {"a": a, "b": b, "c": c}
    y, = run_onnx(single_node_model("Gemm", inputs, ["y"], alpha=0.5, beta=-2.0, transA=1, transB=1), inputs)
    assert_close(y, 0.5 * a.T @ b.T - 2.0 * c, rtol=1e-14, atol=1e-15, name="Gemm")
    y, = run_onnx(single_node_model("Gemm", {"a": a, "b": b.T}, ["y"], opset=11, transA=1), {"a": a, "b": b.T})
    assert_close(y, a.T @ b.T, rtol=1e-14, atol=1e-15, name="Gemm without C")


def test_dtype_float64_casts_every_floating_value_and_integers_stay():
    """A float32 graph with a Cast to float32 inside and an int64 Shape: float64 throughout with dtype."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x32", "scale"], ["y"]),
         helper.make_node("Shape", ["y"], ["shape"])], "cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [numpy_helper.from_array(np.array([1 / 3], np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([0.1, 3.0])
    y, shape = run_onnx(model, {"x": x}, dtype=np.float64)
    assert y.dtype == np.float64 and shape.dtype == np.int64
    # the initializer is float32's 1/3, cast up; the product is float64's
    assert np.array_equal(y, x * np.float64(np.float32(1 / 3)))
    y32, _ = run_onnx(model, {"x": x.astype(np.float32)})
    assert y32.dtype == np.float32
    with pytest.raises(TypeError, match="'x' is float64, the graph declares float32"):
        run_onnx(model, {"x": x})


# -- error paths


def relu_sigmoid_model():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"], name="rectify"),
         helper.make_node("Sigmoid", ["h"], ["y"], name="squash")],
        "two_nodes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_unsupported_op_names_the_node_its_op_type_and_the_supported_ones():
    with pytest.raises(UnsupportedModel) as info:
        run_onnx(relu_sigmoid_model(), {"x": np.zeros((2, 3), np.float32)})
    message = str(info.value)
    assert "'squash'" in message and "'Sigmoid'" in message
    assert "supported: " + ", ".join(SUPPORTED_OPS) in message and "Conv" in SUPPORTED_OPS


def test_an_op_of_another_domain_and_an_old_opset_are_unsupported():
    model = relu_sigmoid_model()
    model.graph.node[1].op_type, model.graph.node[1].domain = "Relu", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedModel, match="'squash'.*'Relu' of domain 'com.example'"):
        run_onnx(model, {"x": np.zeros((2, 3), np.float32)})
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "old",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    with pytest.raises(UnsupportedModel, match="opset 6; mpdref reads opsets 7 and newer"):
        run_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)]), {"x": np.zeros(3, np.float32)})


def test_inputs_that_do_not_fit_the_graph_are_refused_by_name():
    model = relu_sigmoid_model()
    model.graph.node[1].op_type = "Relu"
    with pytest.raises(ValueError, match=r"missing \['x'\], unknown \['z'\]"):
        run_onnx(model, {"z": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match=r"'x' has shape \(2, 4\), the graph declares \('N', 3\)"):
        run_onnx(model, {"x": np.zeros((2, 4), np.float32)})
    with pytest.raises(ValueError, match="dtype must be None, float32 or float64"):
        run_onnx(model, {"x": np.zeros((2, 3), np.float32)}, dtype=np.float16)


def small_dense_model():
    """A two-layer dense graph with initializers (what a truncated file cuts into)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in [("w1", (64, 32)), ("b1", (64,)), ("w2", (10, 64)), ("b2", (10,))]]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_damaged_or_truncated_file_raises_an_error_naming_the_file(tmp_path):
    data = small_dense_model().SerializeToString()
    x = {"x": np.ones((2, 32), np.float32)}
    whole = tmp_path / "dense.onnx"
    whole.write_bytes(data)
    assert run_onnx(whole, x)[0].shape == (2, 10)
    cuts = [len(data) - 1, len(data) - 9, len(data) // 2, 1000, 40, 3, 0]
    for cut in cuts:
        path = tmp_path / f"cut-{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError, match=str(path).replace("\\", "\\\\")):
            run_onnx(str(path), x)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe this is not a protobuf" * 10)
    with pytest.raises(FormatError, match="garbage.onnx"):
        run_onnx(garbage, x)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        run_onnx(tmp_path / "missing.onnx", x)


def test_an_error_inside_a_node_names_the_node(rng):
    inputs = {"data": rng.standard_normal((2, 3)), "shape": np.array([4, 4], np.int64)}
    with pytest.raises(ValueError, match=r"node 'the_node' \(Reshape\): cannot reshape"):
        run_onnx(single_node_model("Reshape", inputs, ["y"], output_types=[TensorProto.DOUBLE]), inputs)


def test_without_onnx_the_import_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    for name in [m for m in sys.modules if m == "mpdref.interop" or m.startswith("mpdref.interop.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[interop\]'"):
        import mpdref.interop  # noqa: F401  (the import is what is tested)


def test_intermediate_returns_every_named_value():
    model = small_dense_model()
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    values = run_onnx(model, {"x": x}, intermediate=True)
    assert set(values) == {"x", "w1", "b1", "w2", "b2", "h", "r", "y"}
    assert np.array_equal(values["h"], ops.dense_forward(x, values["w1"], values["b1"])[0])
    assert np.array_equal(values["r"], np.maximum(values["h"], 0))
    assert np.array_equal(values["y"], run_onnx(model, {"x": x})[0])


# ----------------------------------------------------------------------------- (c) the networks, exported by torch


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(net float32, torch module, path of its ONNX file) by (name, opset): the networks' initial weights
    (seed 1) in a torch module, exported by the TorchScript exporter with a dynamic batch."""
    import torch

    cache = {}

    def export(name, opset):
        if (name, opset) not in cache:
            net = models.build(name, np.float32, seed=1)
            module = torch_network(name).eval()
            module.load_state_dict({k: torch.tensor(v) for k, v in net.params.items()})
            path = tmp_path_factory.mktemp("onnx") / f"{name}-{opset}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                torch.onnx.export(module, torch.zeros(2, 1, 28, 28), str(path), dynamo=False, input_names=["input"],
                                  output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                                  **({} if opset is None else {"opset_version": opset}))
            cache[name, opset] = net, module, path
        return cache[name, opset]

    return export


@needs_torch
@pytest.mark.parametrize("opset", [9, 13, None], ids=["opset-9", "opset-13", "torch-default-opset"])
@pytest.mark.parametrize("name", list(models.ARCHITECTURES))
def test_torch_exported_networks_float64_against_torch_and_float32_against_onnxruntime(name, opset, exported, rng):
    """Norm-wise relative errors, max|ours - theirs| <= tol·max|theirs| (rtol = 0, atol = tol·max|theirs|):
    float64 against torch float64 on the same weights <= 1e-12; float32 against onnxruntime <= 1e-5, and equal
    bit for bit to mpdref's own network on the reference ops, which run_onnx computes with, in the same order
    (the fast set's direct convolution rounds differently: within 1e-5)."""
    import torch

    net, module, path = exported(name, opset)
    x = rng.standard_normal((5, 1, 28, 28))
    logits64, = run_onnx(path, {"input": x}, dtype=np.float64)
    expected = module.double()(torch.tensor(x)).detach().numpy()
    module.float()
    assert logits64.dtype == np.float64
    assert_close(logits64, expected, rtol=0, atol=max_norm_atol(1e-12, expected), name=f"{name} float64 vs torch")
    x32 = x.astype(np.float32)
    logits32, = run_onnx(path, {"input": x32})
    assert logits32.dtype == np.float32
    fast = net.forward(x32)
    assert_close(logits32, net.use_backend("reference").forward(x32), rtol=0, atol=0,
                 name=f"{name} float32 vs mpdref's network on the reference ops")
    assert_close(logits32, fast, rtol=0, atol=max_norm_atol(1e-5, fast), name=f"{name} float32 vs the fast ops")
    net.use_backend("fast")
    if onnxruntime is not None:
        theirs, = onnxruntime_outputs(onnx.load(str(path)), {"input": x32})
        assert_close(logits32, theirs, rtol=0, atol=max_norm_atol(1e-5, theirs),
                     name=f"{name} float32 vs onnxruntime")


@needs_torch
def test_intermediate_values_of_exported_lenet_5_are_torch_activations(exported, rng):
    import torch

    net, module, path = exported("lenet-5", None)
    model = onnx.load(str(path))
    x = rng.standard_normal((3, 1, 28, 28))
    values = run_onnx(path, {"input": x}, dtype=np.float64, intermediate=True)
    named = {"input"} | {t.name for t in model.graph.initializer}
    named |= {o for n in model.graph.node for o in n.output if o}
    assert set(values) == named
    assert np.array_equal(values["logits"], run_onnx(path, {"input": x}, dtype=np.float64)[0])
    module.double()
    with torch.no_grad():
        conv1 = module.conv1(torch.tensor(x)).numpy()
        pool1 = torch.nn.functional.max_pool2d(torch.tensor(conv1), 2).numpy()
    module.float()
    conv_node, pool_node = model.graph.node[0], model.graph.node[1]
    assert (conv_node.op_type, pool_node.op_type) == ("Conv", "MaxPool")
    for value, expected, what in [(values[conv_node.output[0]], conv1, "conv1"),
                                  (values[pool_node.output[0]], pool1, "pool1")]:
        assert value.dtype == np.float64
        assert_close(value, expected, rtol=0, atol=max_norm_atol(1e-12, expected), name=what)
