"""mpdref.interop's export, convert and crosscheck (issue #18).

(a) export: the ONNX files of a dense, a Deep Compression (pruned, quantized, from its .mpdz file) and an
MPD LeNet-300-100 give mpdref's predictions in onnxruntime on the whole MNIST test set; the MPD one is in
block form and at least 5x smaller than the dense one; a conv network's block form; safetensors round trips.
(b) convert: from PyTorch files torch writes here, safetensors, and ONNX (torch's and mpdref's), and the
one-line errors for names and shapes that do not fit, and for damaged files.
(c) crosscheck: a torch-exported network against onnxruntime agrees; against values that diverge from one
node on, the report names that node's value first; the PyTorch crosscheck agrees, and catches a difference.
Every ONNX file is made here (by torch or mpdref); nothing is downloaded.
"""
import json
import sys
import warnings

import numpy as np
import pytest

from compare import assert_close, max_norm_atol
from conftest import needs_torch

onnx = pytest.importorskip("onnx", reason="the interop extra is not installed (pip install -e '.[interop]')")
onnxruntime = pytest.importorskip("onnxruntime", reason="the interop extra is not installed")
safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="the interop extra is not installed")

from mpdref import data, models, train  # noqa: E402
from mpdref.compress import compress, decompress  # noqa: E402
from mpdref.interop import crosscheck as xc  # noqa: E402
from mpdref.interop import run_onnx  # noqa: E402
from mpdref.interop.convert import convert, convert_file, read_safetensors, read_state_dict  # noqa: E402
from mpdref.interop.export import export, export_onnx, onnx_model  # noqa: E402
from mpdref.interop.torch_twin import torch_network, torch_twin  # noqa: E402
from mpdref.io import FormatError  # noqa: E402
from mpdref.mpd import apply_mpd_masks, choose_k, storage_table  # noqa: E402
from mpdref.prune import prune  # noqa: E402
from mpdref.quantize import quantize_weight  # noqa: E402

MPD_LAYERS = ["fc1.weight", "fc2.weight"]  # as configs/mpd-lenet-300-100.toml


def onnxruntime_logits(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def form_of(path) -> str:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}["mpdref.form"]


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    """(x_train, y_train) of the first 6,000 training images and the whole test set, normalized."""
    images, labels = data.load_mnist("train", mnist_dir)
    test_images, test_labels = data.load_mnist("test", mnist_dir)
    return ((data.to_network_input(images[:6000]), labels[:6000].astype(np.int64)),
            (data.to_network_input(test_images), test_labels.astype(np.int64)))


@pytest.fixture(scope="module")
def lenets(mnist, tmp_path_factory):
    """Three LeNet-300-100 models trained on 6,000 images, as a user's model files: dense (.h5, one epoch),
    Deep Compression (the dense one pruned to the paper's fractions, retrained one epoch and quantized to 5
    bits, .mpdz) and MPD (k for 10x on fc1 and fc2, trained three epochs under its masks, .h5)."""
    directory = tmp_path_factory.mktemp("lenets")
    recipe = train.Recipe(epochs=1, lr=0.05, weight_decay=1e-4)
    dense = models.build("lenet-300-100", seed=0)
    train.fit(dense, mnist[0], recipe, progress=False)
    models.save(dense, directory / "dense.h5")
    pruned = models.load(directory / "dense.h5")
    prune(pruned, keep={"fc1.weight": 0.08, "fc2.weight": 0.09, "fc3.weight": 0.26})
    train.fit(pruned, mnist[0], recipe.replace(lr=0.01), progress=False)  # retrained under the masks
    for name in pruned.weight_names():
        pruned.params[name] = quantize_weight(pruned.params[name], pruned.masks[name], 5)
    compress(pruned, directory / "pruned.mpdz")
    mpd = models.build("lenet-300-100", seed=0)
    ks = choose_k(mpd.parameter_shapes(), MPD_LAYERS, 10.0)
    apply_mpd_masks(mpd, ks, np.random.default_rng(0), rescale=True)
    train.fit(mpd, mnist[0], recipe.replace(epochs=3), progress=False)
    models.save(mpd, directory / "mpd.h5")
    return {"dense": directory / "dense.h5", "pruned": directory / "pruned.mpdz", "mpd": directory / "mpd.h5"}


# ----------------------------------------------------------------------------- (a) export


@pytest.mark.parametrize("kind, form", [("dense", "dense"), ("pruned", "dense"), ("mpd", "blocks")])
def test_exported_models_predict_as_mpdref_on_the_whole_test_set(kind, form, lenets, mnist, tmp_path):
    x_test, y_test = mnist[1]
    net = models.load(lenets[kind]) if lenets[kind].suffix == ".h5" else decompress(lenets[kind])
    path = tmp_path / f"{kind}.onnx"
    export_onnx(lenets[kind], path)  # from the model file, as `mpdref export` does
    assert form_of(path) == form
    theirs = onnxruntime_logits(path, x_test)
    ours = net.logits(x_test)
    assert_close(theirs, ours, rtol=0, atol=max_norm_atol(1e-5, ours), name=f"{kind} logits")
    equal = int(np.count_nonzero(theirs.argmax(axis=1) == ours.argmax(axis=1)))
    error = np.mean(ours.argmax(axis=1) != y_test)
    print(f"\n{kind}: {equal} of {len(x_test)} test predictions equal; test error {error:.4f}")
    assert equal == len(x_test) == 10_000
    assert error < 0.15  # trained: the comparison is not between two coin tosses


def test_the_mpd_onnx_file_is_at_least_5x_smaller_than_the_dense_one(lenets, tmp_path):
    mpd = models.load(lenets["mpd"])
    export_onnx(mpd, tmp_path / "mpd.onnx")
    export_onnx(mpd, tmp_path / "mpd-dense.onnx", form="dense")  # the same weights, masked ones stored as zeros
    export_onnx(lenets["dense"], tmp_path / "dense.onnx")
    sizes = {name: (tmp_path / f"{name}.onnx").stat().st_size for name in ("mpd", "mpd-dense", "dense")}
    model_ratio = storage_table(mpd.parameter_shapes(), choose_k(mpd.parameter_shapes(), MPD_LAYERS, 10.0))["ratio"]
    print(f"\nONNX bytes {sizes}: dense / MPD {sizes['dense'] / sizes['mpd']:.2f}x (the model's storage ratio "
          f"{model_ratio:.2f}x)")
    assert sizes["dense"] / sizes["mpd"] >= 5
    assert abs(sizes["mpd-dense"] - sizes["dense"]) < 2000  # the dense form of the MPD model is no smaller
    x = np.random.default_rng(1).standard_normal((64, 1, 28, 28)).astype(np.float32)
    assert_close(onnxruntime_logits(tmp_path / "mpd-dense.onnx", x), onnxruntime_logits(tmp_path / "mpd.onnx", x),
                 rtol=0, atol=max_norm_atol(1e-5, mpd.forward(x)), name="dense form against block form")


def test_the_block_form_of_a_conv_network_and_from_an_mpdz_file(tmp_path, rng):
    """LeNet-5 with every layer MPD-masked (conv1 as one block; conv2 over channel pairs, blocks of unequal
    sizes): per-block Gather and Conv; exported in float64 and evaluated by mpdref's own run_onnx it is mpdref's
    forward to 1e-12. Exported from its float64 model file (float32 by default) and from its .mpdz file,
    onnxruntime gives the float32 network's logits to 1e-5."""
    net = models.build("lenet-5", np.float64, seed=2)
    ks = {"conv1.weight": 1, "conv2.weight": 7, "fc1.weight": 9, "fc2.weight": 4}
    apply_mpd_masks(net, ks, rng, rescale=False)
    proto = onnx_model(net, dtype=np.float64)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Conv") == 1 + 7 and ops.count("Gemm") == 9 + 4 and ops.count("Concat") == 3
    x = rng.standard_normal((8, 1, 28, 28))
    assert_close(run_onnx(proto, {"input": x})[0], net.forward(x), rtol=0, atol=max_norm_atol(1e-12, net.forward(x)),
                 name="block form, float64")
    models.save(net, tmp_path / "lenet-5-float64.h5")
    export_onnx(tmp_path / "lenet-5-float64.h5", tmp_path / "from-float64.onnx")  # float32 unless asked
    assert onnx.load(str(tmp_path / "from-float64.onnx")).graph.input[0].type.tensor_type.elem_type == 1
    net32 = models.build("lenet-5", np.float32)
    net32.load_state_dict(net.params)
    for name, mask in net.masks.items():
        net32.set_mask(name, mask)
    compress(net32, tmp_path / "lenet-5.mpdz")
    export_onnx(tmp_path / "lenet-5.mpdz", tmp_path / "lenet-5.onnx")
    assert form_of(tmp_path / "lenet-5.onnx") == "blocks"
    x32 = x.astype(np.float32)
    ours = decompress(tmp_path / "lenet-5.mpdz").forward(x32)
    assert_close(onnxruntime_logits(tmp_path / "lenet-5.onnx", x32), ours, rtol=0, atol=max_norm_atol(1e-5, ours),
                 name="block form from .mpdz, onnxruntime")
    assert_close(onnxruntime_logits(tmp_path / "from-float64.onnx", x32), ours, rtol=0,
                 atol=max_norm_atol(1e-5, ours), name="block form of the float64 network, onnxruntime")


def test_export_forms_and_bad_requests(tmp_path):
    import mpdref.interop

    assert mpdref.interop.export_onnx is export_onnx and mpdref.interop.crosscheck_torch is xc.crosscheck_torch
    pruned = models.build("lenet-300-100")
    prune(pruned, keep={"fc1.weight": 0.1})
    assert {p.key: p.value for p in onnx_model(pruned).metadata_props}["mpdref.form"] == "dense"
    with pytest.raises(ValueError, match="no block form: the mask of fc1.weight is not permuted block-diagonal"):
        onnx_model(pruned, form="blocks")
    with pytest.raises(ValueError, match="unknown form 'sparse'"):
        onnx_model(pruned, form="sparse")
    with pytest.raises(ValueError, match="ending in .onnx or .safetensors"):
        export(pruned, tmp_path / "model.tflite")
    with pytest.raises(ValueError, match="not an mpdref model file"):
        export_onnx(tmp_path / "model.pt", tmp_path / "out.onnx")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_safetensors_round_trip_masks_and_all(lenets, tmp_path):
    mpd = models.load(lenets["mpd"])
    export(lenets["mpd"], tmp_path / "mpd.safetensors")
    theirs = safetensors_numpy.load_file(str(tmp_path / "mpd.safetensors"))  # the library reads what mpdref wrote
    assert set(theirs) == set(mpd.params) | {f"mask.{name}" for name in MPD_LAYERS}
    for name, value in mpd.params.items():
        assert theirs[name].dtype == np.float32 and np.array_equal(theirs[name], value), name
    for name, mask in mpd.masks.items():
        assert theirs[f"mask.{name}"].dtype == np.bool_ and np.array_equal(theirs[f"mask.{name}"], mask), name
    _, metadata = read_safetensors(tmp_path / "mpd.safetensors")
    assert metadata["format"] == "mpdref-state-dict" and metadata["architecture"] == "lenet-300-100"
    back = convert(tmp_path / "mpd.safetensors")  # the architecture from the file's metadata
    assert back.name == "lenet-300-100" and set(back.masks) == set(MPD_LAYERS)
    for name in mpd.params:
        assert np.array_equal(back.params[name], mpd.params[name]), name
    for name in mpd.masks:
        assert np.array_equal(back.masks[name], mpd.masks[name]), name
    convert_file(tmp_path / "mpd.safetensors", tmp_path / "back.h5", "lenet-300-100")
    saved = models.load(tmp_path / "back.h5")
    assert saved.metadata == {"converted_from": "mpd.safetensors"} and set(saved.masks) == set(MPD_LAYERS)
    with pytest.raises(ValueError, match="does not fit lenet-5: the file was written for lenet-300-100"):
        convert(tmp_path / "mpd.safetensors", "lenet-5")


# ----------------------------------------------------------------------------- (b) convert


def assert_same_parameters(net, state: dict):
    assert list(net.params) == list(state)
    for name, value in state.items():
        assert np.array_equal(net.params[name], np.asarray(value, np.float32)), name


@needs_torch
def test_convert_pytorch_files(tmp_path):
    import torch
    import torch.nn.utils.prune

    module = torch_network("lenet-5")
    state = {name: value.detach().numpy().copy() for name, value in module.state_dict().items()}
    torch.save(module.state_dict(), tmp_path / "lenet-5.pt")
    assert_same_parameters(convert(tmp_path / "lenet-5.pt", "lenet-5"), state)
    # a checkpoint dict, the model wrapped in DataParallel: "module." in front of every name
    wrapped = {f"module.{name}": value for name, value in module.state_dict().items()}
    torch.save({"epoch": 7, "model_state_dict": wrapped, "lr": 0.01}, tmp_path / "checkpoint.pth")
    assert_same_parameters(convert(tmp_path / "checkpoint.pth", "lenet-5"), state)
    # torch.nn.utils.prune's weight_orig and weight_mask: a masked weight
    torch.nn.utils.prune.l1_unstructured(module.fc1, "weight", amount=0.75)
    torch.save(module.state_dict(), tmp_path / "pruned.pt")
    assert {"fc1.weight_orig", "fc1.weight_mask"} <= set(module.state_dict())
    net = convert(tmp_path / "pruned.pt", "lenet-5")
    mask = module.fc1.weight_mask.numpy().astype(bool)
    assert list(net.masks) == ["fc1.weight"] and np.array_equal(net.masks["fc1.weight"], mask)
    assert np.array_equal(net.params["fc1.weight"], module.fc1.weight.detach().numpy()) and mask.mean() == 0.25
    # torch.save of a model object is not a state_dict: weights_only refuses it
    torch.save(module, tmp_path / "module.pt")
    with pytest.raises(FormatError, match=r"module.pt: torch.load\(weights_only=True\) cannot read it"):
        read_state_dict(tmp_path / "module.pt")


@needs_torch
def test_damaged_and_foreign_pytorch_files_are_refused(tmp_path):
    import torch

    torch.save({"fc3.bias": torch.arange(10.0)}, tmp_path / "small.pt")
    data = (tmp_path / "small.pt").read_bytes()
    at = data.find(np.arange(10.0, dtype=np.float32).tobytes())
    damaged = bytearray(data)
    damaged[at + 5] ^= 0x10
    (tmp_path / "flipped.pt").write_bytes(damaged)
    with pytest.raises(FormatError, match="flipped.pt: record 'small/data/0' fails its CRC-32 check"):
        read_state_dict(tmp_path / "flipped.pt")
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="cut.pt: a damaged zip archive"):
        read_state_dict(tmp_path / "cut.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match="legacy.pt: not a PyTorch zip archive"):
        read_state_dict(tmp_path / "legacy.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(FormatError, match="list.pt: holds a list, not a state_dict"):
        read_state_dict(tmp_path / "list.pt")


def test_a_pytorch_file_without_torch_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[crosscheck\]'"):
        read_state_dict(tmp_path / "model.pt")


@needs_torch
def test_convert_onnx_files_from_torch_and_from_mpdref(tmp_path):
    import torch

    net = models.build("lenet-5", seed=3)
    module = torch_twin(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, torch.zeros(1, 1, 28, 28), str(tmp_path / "torch.onnx"), dynamo=False,
                          input_names=["input"], output_names=["logits"])
    assert_same_parameters(convert(tmp_path / "torch.onnx", "lenet-5"), net.params)
    export_onnx(net, tmp_path / "mpdref.onnx")
    assert_same_parameters(convert(tmp_path / "mpdref.onnx", "lenet-5"), net.params)
    mpd = models.build("lenet-300-100")
    apply_mpd_masks(mpd, {"fc1.weight": 4}, np.random.default_rng(0), rescale=False)
    export_onnx(mpd, tmp_path / "blocks.onnx")
    with pytest.raises(ValueError, match="blocks.onnx does not fit lenet-300-100: missing fc1.weight, fc1.bias; "
                                         "unexpected fc1.block0.weight, fc1.block0.bias, fc1.block1.weight"):
        convert(tmp_path / "blocks.onnx", "lenet-300-100")


def test_names_and_shapes_that_do_not_fit_are_one_line(tmp_path):
    state = models.build("lenet-300-100").state_dict()
    state["fc1.weight"] = state["fc1.weight"].T.copy()
    state["fc2.bias"] = state["fc2.bias"][:50].copy()
    del state["fc3.weight"], state["fc3.bias"]
    state["fc4.weight"] = np.zeros((10, 10), np.float32)
    state["mask.fc9.weight"] = np.ones(3, bool)
    safetensors_numpy.save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ValueError) as info:
        convert(tmp_path / "odd.safetensors", "lenet-300-100")
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"{tmp_path / 'odd.safetensors'} does not fit lenet-300-100: missing fc3.weight, fc3.bias; "
                       "unexpected fc4.weight; fc1.weight is (784, 300) in the file, lenet-300-100 needs (300, 784) "
                       "(its transpose); fc2.bias is (50,) in the file, lenet-300-100 needs (100,); a mask of "
                       "fc9.weight, which lenet-300-100 does not have")
    with pytest.raises(ValueError, match="name the architecture"):
        convert(tmp_path / "odd.safetensors")  # a file mpdref did not write names none
    with pytest.raises(ValueError, match="unknown network 'lenet'"):
        convert(tmp_path / "odd.safetensors", "lenet")
    with pytest.raises(ValueError, match="give a .pt, .pth, .safetensors or .onnx file"):
        read_state_dict(tmp_path / "odd.npz")


def safetensors_bytes(header: dict, data: bytes, pad: bytes = b"") -> bytes:
    text = json.dumps(header).encode() + pad
    return len(text).to_bytes(8, "little") + text + data


@pytest.mark.parametrize("header, payload, says", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "not .begin, end. within the 4 bytes"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, r"needs 12 bytes; its offsets span 8"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "'b' begins at byte 4 .* overlaps"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "leaves a gap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "cover 4 bytes; the data .* is 8"),
    ({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "dtype 'F8_E4M3', which mpdref"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "not a list of sizes >= 0"),
    ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "is not {dtype, shape, data_offsets}"),
    ({"__metadata__": {"n": 1}}, b"", "__metadata__ is not a mapping of strings"),
    ({"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x02", "bytes other than 0 and 1"),
])
def test_damaged_safetensors_headers_are_refused_naming_the_file(header, payload, says, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, payload))
    with pytest.raises(FormatError, match=f"bad.safetensors: .*{says}"):
        read_state_dict(path)


def test_safetensors_edge_cases(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(FormatError, match="its header would be"):
        read_state_dict(path)
    path.write_bytes(safetensors_bytes({}, b"")[:5])
    with pytest.raises(FormatError, match="too short"):
        read_state_dict(path)
    text = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], ' \
           b'"data_offsets": [0, 4]}}'
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"\0" * 4)
    with pytest.raises(FormatError, match="the name 'a' appears twice"):
        read_state_dict(path)
    # bfloat16 (which NumPy lacks) widens to float32 exactly; the header may be padded with spaces
    bf16 = np.array([1.5, -2.0, 3.140625], np.float32).view(np.uint32) >> 16
    path.write_bytes(safetensors_bytes({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}},
                                       bf16.astype("<u2").tobytes(), pad=b"   "))
    assert np.array_equal(read_state_dict(path)["w"], np.array([1.5, -2.0, 3.140625], np.float32))


# ----------------------------------------------------------------------------- (c) crosscheck


@pytest.fixture(scope="module")
def torch_lenet5(tmp_path_factory):
    """(net, path): LeNet-5 (seed 4) exported by torch.onnx.export from its PyTorch twin."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[crosscheck]')")
    net = models.build("lenet-5", seed=4)
    path = tmp_path_factory.mktemp("crosscheck") / "lenet-5.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch_twin(net), torch.zeros(2, 1, 28, 28), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return net, path


def test_a_torch_exported_network_agrees_with_onnxruntime(torch_lenet5, mnist, tmp_path):
    _, path = torch_lenet5
    x = mnist[1][0][:64]
    report = xc.crosscheck_onnx(path, {"input": x})
    model = onnx.load(str(path))
    assert [row["value"] for row in report["values"]] == [o for n in model.graph.node for o in n.output]
    assert report["agree"] and xc.exit_status(report) == 0 and report["first_divergent"] is None
    assert report["predictions"] == {"output": "logits", "equal": 64, "total": 64, "fraction": 1.0}
    conv2 = next(row for row in report["values"] if row["op"] == "Conv" and row["shape"][1] == 50)
    assert 0 < conv2["max_abs_diff"] < 1e-5 and conv2["rtol"] == 1.3e-6 and conv2["atol"] == 1e-5  # float32's
    text = xc.format_report(report)
    assert text.splitlines()[-1] == f"agree: all {len(model.graph.node)} compared values"
    xc.write_report_json(report, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["values"][0]["value"] == report["values"][0]["value"]


def test_values_that_diverge_from_one_node_on_name_its_value_first(torch_lenet5, rng):
    """The other side is mpdref's own float32 evaluation of the graph with conv2's weight nudged: conv1 and
    pool1 agree, conv2 and everything after it differ, and conv2's output is the first divergent value."""
    _, path = torch_lenet5
    model = onnx.load(str(path))
    conv2 = [node for node in model.graph.node if node.op_type == "Conv"][1]
    weight = next(t for t in model.graph.initializer if t.name == conv2.input[1])
    nudged = onnx.numpy_helper.to_array(weight).copy()
    nudged[3, 7, 2, 2] += 0.05
    weight.CopyFrom(onnx.numpy_helper.from_array(nudged, weight.name))
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    computed = run_onnx(model, {"input": x}, intermediate=True)
    saved = {o: computed[o] for node in onnx.load(str(path)).graph.node for o in node.output}
    report = xc.crosscheck_onnx(path, {"input": x}, against=saved)
    verdicts = {row["value"]: row["ok"] for row in report["values"]}
    assert report["first_divergent"]["value"] == conv2.output[0] and report["first_divergent"]["op"] == "Conv"
    order = list(verdicts)
    assert all(verdicts[v] for v in order[: order.index(conv2.output[0])])  # conv1, pool1
    assert not any(verdicts[v] for v in order[order.index(conv2.output[0]) :])
    assert xc.exit_status(report) == 1
    text = xc.format_report(report)
    assert f"first divergent value: {conv2.output[0]} (node {conv2.name}, op Conv)" in text
    assert text.splitlines()[-1].startswith(f"DIFFER: {len(order) - 2} of {len(order)} values")
    with pytest.raises(ValueError, match="the values given: nonsense is no value of the graph"):
        xc.crosscheck_onnx(path, {"input": x}, against={"nonsense": x})


def test_compare_values_counts_by_the_rule():
    e = np.array([1.0, 100.0, 0.0, np.nan, np.inf, 5.0])
    a = np.array([1.0 + 2e-5, 100.0 + 1e-4, 1e-5, np.nan, np.inf, np.nan])
    row = xc.compare_values(a, e, rtol=1e-6, atol=1e-5)
    # |a - e| > atol + rtol·|e|: 2e-5 > 1.1e-5 (mismatched); 1e-4 <= 1.1e-4; 1e-5 <= 1e-5; NaN = NaN;
    # inf = inf; NaN against 5 (mismatched)
    assert row["mismatched"] == 2 and not row["ok"] and np.isnan(row["max_abs_diff"])
    row = xc.compare_values(a[:5], e[:5], rtol=1e-6, atol=1e-5)
    assert row["max_abs_diff"] == pytest.approx(1e-4) and row["max_rel_diff"] == np.inf and row["mismatched"] == 1
    assert xc.compare_values(np.arange(3), np.arange(3.0))["atol"] == 0  # an integer side: exact
    assert xc.compare_values(np.zeros(2), np.zeros(3))["note"] == "shapes differ: [2] against [3]"
    assert json.loads(xc.report_json({"x": np.inf, "y": [np.nan]})) == {"x": "inf", "y": ["nan"]}


@needs_torch
def test_the_torch_crosscheck_agrees_and_catches_a_difference(lenets, mnist, monkeypatch):
    x, labels = mnist[1][0][:32], mnist[1][1][:32]
    report = xc.crosscheck_torch(lenets["mpd"], x, labels)
    assert report["agree"], xc.format_report(report)
    assert [row["value"] for row in report["values"]] == ["logits", "loss"] + [
        f"grad {name}" for name in models.parameter_shapes("lenet-300-100")]
    assert report["predictions"]["fraction"] == 1.0
    assert max(row["max_abs_diff"] for row in report["values"]) < 1e-12

    def twin_with_a_nudged_bias(net, dtype=None):
        module = torch_twin(net, dtype)
        with __import__("torch").no_grad():
            module.fc2.bias[5] += 1e-3
        return module

    monkeypatch.setattr(xc, "torch_twin", twin_with_a_nudged_bias)
    report = xc.crosscheck_torch(lenets["mpd"], x, labels)
    assert not report["agree"] and report["first_divergent"]["value"] == "logits"
    assert "grad fc2.weight" in report["differing"]


def test_crosscheck_command_inputs(lenets, mnist_dir, tmp_path):
    export_onnx(lenets["dense"], tmp_path / "dense.onnx")
    report = xc.crosscheck(tmp_path / "dense.onnx", data_split="val", limit=20, root=mnist_dir)
    assert report["agree"] and report["inputs"]["input"]["shape"] == [20, 1, 28, 28]
    assert report["inputs_from"].startswith("the first 20 MNIST val images, normalized")
    raw, labels = xc.mnist_images("test", 5, raw=True, root=mnist_dir)
    normalized, _ = xc.mnist_images("test", 5, root=mnist_dir)
    assert raw.min() == 0 and raw.max() == 1 and labels.dtype == np.int64
    assert np.allclose(normalized, (raw - data.MNIST_MEAN) / data.MNIST_STD, atol=1e-6)
    np.savez(tmp_path / "inputs.npz", input=raw)
    report = xc.crosscheck(tmp_path / "dense.onnx", inputs=tmp_path / "inputs.npz")
    assert report["agree"] and report["inputs_from"].endswith("inputs.npz")
    report = xc.crosscheck(tmp_path / "dense.onnx", random=3)
    assert report["agree"] and report["inputs"]["input"]["shape"] == [3, 1, 28, 28]
    with pytest.raises(ValueError, match="one source of inputs"):
        xc.crosscheck(tmp_path / "dense.onnx", inputs=tmp_path / "inputs.npz", random=3)
    with pytest.raises(ValueError, match="compared with --against torch"):
        xc.crosscheck(lenets["dense"])
    with pytest.raises(ValueError, match="--against torch compares an mpdref model file"):
        xc.crosscheck(tmp_path / "dense.onnx", against="torch")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="bad.npz: not a readable .npz"):
        xc.crosscheck(tmp_path / "dense.onnx", inputs=tmp_path / "bad.npz")
