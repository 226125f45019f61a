"""The interop commands (issue #18): mpdref export, convert and crosscheck from the command line,
their outputs, exit statuses (0 agree, 1 differ, 2 bad input) and one-line errors."""
import json

import numpy as np
import pytest

from conftest import needs_torch, run_cli as run

pytest.importorskip("onnx", reason="the interop extra is not installed (pip install -e '.[interop]')")
pytest.importorskip("onnxruntime", reason="the interop extra is not installed")

from mpdref import models  # noqa: E402


@pytest.fixture
def model_file(tmp_path):
    net = models.build("lenet-300-100", seed=2)
    net.set_mask("fc1.weight", np.random.default_rng(0).random(net.params["fc1.weight"].shape) < 0.2)
    net.params["fc1.weight"] *= net.masks["fc1.weight"]
    path = tmp_path / "model.h5"
    models.save(net, path)
    return net, path


def test_export_then_convert_round_trips_and_crosscheck_agrees(capsys, model_file, tmp_path):
    net, path = model_file
    code, out, err = run(capsys, "export", str(path), "-o", str(tmp_path / "m.safetensors"))
    assert code == 0, err
    assert "m.safetensors" in out and "bytes" in out
    code, out, err = run(capsys, "convert", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "back.h5"))
    assert code == 0, err
    back = models.load(tmp_path / "back.h5")
    for name in net.params:
        assert np.array_equal(back.params[name], net.params[name]), name
    assert np.array_equal(back.masks["fc1.weight"], net.masks["fc1.weight"])

    code, out, err = run(capsys, "export", str(path), "-o", str(tmp_path / "m.onnx"))
    assert code == 0, err
    code, out, err = run(capsys, "crosscheck", str(tmp_path / "m.onnx"), "--random", "4",
                         "--json", str(tmp_path / "report.json"))
    assert code == 0, out + err
    assert "fc1" in out.lower() or "gemm" in out.lower()
    report = json.loads((tmp_path / "report.json").read_text())
    assert isinstance(report, dict) and report


def test_crosscheck_exits_1_when_a_value_differs(capsys, model_file, tmp_path):
    from mpdref.interop import run_onnx

    _, path = model_file
    run(capsys, "export", str(path), "-o", str(tmp_path / "m.onnx"))
    x = np.random.default_rng(1).standard_normal((3, 1, 28, 28)).astype(np.float32)
    values = run_onnx(str(tmp_path / "m.onnx"), {"input": x}, dtype=np.float64, intermediate=True)
    logits = values["logits"].copy()
    logits[0, 0] += 1.0  # another framework's output, off in one element
    np.savez(tmp_path / "inputs.npz", input=x)
    np.savez(tmp_path / "theirs.npz", logits=logits)
    code, out, err = run(capsys, "crosscheck", str(tmp_path / "m.onnx"), "--inputs", str(tmp_path / "inputs.npz"),
                         "--against", str(tmp_path / "theirs.npz"))
    assert code == 1, out + err
    assert "logits" in out


def test_bad_input_exits_2_with_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 not a model")
    code, out, err = run(capsys, "crosscheck", str(bad), "--random", "2")
    assert code == 2
    assert "bad.onnx" in err and err.count("\n") == 1
    code, out, err = run(capsys, "crosscheck", str(tmp_path / "none.onnx"), "--random", "2")
    assert code == 2 and "none.onnx" in err


def test_convert_names_what_does_not_fit(capsys, tmp_path):
    from safetensors.numpy import save_file

    save_file({"fc1.weight": np.zeros((300, 784), np.float32)}, str(tmp_path / "w.safetensors"))
    code, out, err = run(capsys, "convert", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "w.h5"),
                         "--model", "lenet-300-100")
    assert code == 1
    assert "missing" in err and "fc1.bias" in err and err.count("\n") == 1
    assert not (tmp_path / "w.h5").exists()


@needs_torch
def test_crosscheck_against_torch_agrees(capsys, model_file):
    _, path = model_file
    code, out, err = run(capsys, "crosscheck", str(path), "--against", "torch", "--random", "4")
    assert code == 0, out + err
    assert "logits" in out and "loss" in out
