import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from mpdref import models

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [[], ["demo"], ["train"], ["run"], ["show"], ["compare"], ["evaluate"], ["data"],
                                  ["data", "fetch"], ["data", "check"], ["compress"], ["decompress"], ["size"]])
def test_every_command_has_help(capsys, argv):
    code, out, err = run_cli(capsys, *argv, "--help")
    assert code == 0 and "usage: mpdref" in out and len(out.splitlines()) > 3


def test_run_lists_every_stage_and_its_settings(capsys):
    from mpdref.runner.registry import STAGES

    code, out, _ = run_cli(capsys, "run", "--stages")
    assert code == 0
    listed = [line.split(":")[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert listed == list(STAGES)
    assert "  teacher_weight: a number in [0, 1]; default: 0.9." in out
    assert "  lr: a number > 0; default: from the network's recipe" in out
    assert "  model: one of 'lenet-300-100', 'lenet-5', 'deep-mnist'; required." in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "vgg", "--out", "x"], "invalid choice: 'vgg'"),
        (["train", "--model", "lenet-5"], "required: --out"),
        (["train", "--model", "lenet-5", "--out", "x", "--epochs", "two"], "invalid int value"),
        (["train", "--model", "lenet-5", "--out", "x", "--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
        (["train", "--model", "lenet-5", "--out", "x", "--lr", "-1"], "--lr: expected a number > 0, got -1.0"),
        (["train", "--model", "lenet-5", "--out", "x", "--val-size", "-1"], "--val-size: expected an integer in"),
        (["frobnicate"], "invalid choice"),
        (["run"], "give either EXPERIMENT.toml or --resume RUN_DIR"),
        (["run", "missing.toml"], "missing.toml: file not found"),
        (["run", "--resume", "nowhere"], "not a run directory"),
        (["show", "nowhere"], "not a run directory"),
    ],
)
def test_wrong_arguments_give_one_clear_line(capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert code in (1, 2)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # refused before any work


def test_evaluate_reports_bad_model_files_in_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    code, out, err = run_cli(capsys, "evaluate", str(bad))
    assert code == 1 and err.count("\n") == 1 and str(bad) in err


def test_missing_data_is_one_clear_line(capsys, tmp_path):
    code, out, err = run_cli(capsys, "data", "check", "--data", str(tmp_path))
    assert code == 1 and "lacks" in err and err.count("\n") == 1


@pytest.mark.mnist
def test_train_then_evaluate_on_real_mnist(capsys, mnist_dir, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--model", "lenet-300-100", "--epochs", "1", "--out", str(out_dir),
                             "--data", str(mnist_dir), "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["checkpoint.h5", "config.json", "figures", "log.jsonl",
                                                         "metrics.json", "model.h5", "stages"]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    config = json.loads((out_dir / "config.json").read_text())
    assert config["stages"][0]["epochs"] == 1 and config["experiment"]["model"] == "lenet-300-100"
    assert metrics["test_error"] < 0.05  # one epoch of LeNet-300-100 is near 2.5%
    assert f"{metrics['test_error']:.2%}" in out

    # evaluate recomputes the test error from the saved file
    code, out, err = run_cli(capsys, "evaluate", str(out_dir / "model.h5"), "--data", str(mnist_dir))
    assert code == 0 and f"test error {metrics['test_error']:.2%}" in out
    net = models.load(out_dir / "model.h5")
    assert net.metadata["stages"] == ["train"]

    # a finished run is never overwritten without --force
    code, out, err = run_cli(capsys, "train", "--model", "lenet-300-100", "--epochs", "1", "--out", str(out_dir),
                             "--data", str(mnist_dir), "--no-progress")
    assert code == 1 and "already holds a finished run" in err


def test_console_script_runs_without_traceback():
    result = subprocess.run([sys.executable, "-m", "mpdref.cli", "train", "--model", "nope", "--out", "x"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1].strip().splitlines()
    commands = [line for line in first_block if not line.startswith(("#", "sh", "bash"))]
    assert len(commands) == 2
    assert commands[0].endswith("mpdref demo") and "pip install -e ." in commands[0]
    assert "pytest" in commands[1] and re.search(r"\[test(,[a-z]+)*\]", commands[1])
    # .ci/run reads the same line from the README rather than keeping a copy of its own
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "eval" in ci
    assert re.search(r"awk '/\^```/\{n\+\+; next\} n==1 && /pytest/' README.md", ci)
    assert readme.index("```") < 400  # the commands come first


@pytest.mark.mnist
def test_demo_runs_the_three_pipelines(capsys, tmp_path, mnist_dir):
    code, out, err = run_cli(capsys, "demo", "--epochs", "1", "--out", str(tmp_path / "demo"), "--data", str(mnist_dir),
                             "--no-progress")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in
            (["dense"], ["deep-compression"], ["mpd"])}
    assert set(rows) == {"dense", "deep-compression", "mpd"}
    for name in ("deep-compression", "mpd"):
        size = (tmp_path / "demo" / name / "model.mpdz").stat().st_size
        assert f"{size:,} B" in " ".join(rows[name])
    assert "fc1.weight" in err and "ratio" in err  # the size tables
    assert f"test error against compression ratio: {tmp_path / 'demo' / 'tradeoff.png'}" in out
    assert (tmp_path / "demo" / "tradeoff.png").stat().st_size > 10_000


# What `mpdref demo` ran before its pipelines moved into mpdref/configs/demo/*.toml, resolved (with the
# train stage's later `freeze`, `levels`, `levels_all` and `shift` settings at their defaults).
DEMO_TRAIN = {"type": "train", "name": "train", "epochs": 30, "batch_size": 64, "lr": 0.05, "momentum": 0.9,
              "weight_decay": 0.0001, "schedule": "cosine", "milestones": [], "gamma": 0.1, "shift": 0, "form": "masked",
              "freeze": [], "levels": None, "levels_all": None, "teacher": None, "temperature": 4.0,
              "teacher_weight": 0.9}
DEMO_RETRAIN = {**DEMO_TRAIN, "lr": 0.02, "teacher": "train"}
DEMO_QUANTIZE = {"type": "quantize", "name": "quantize", "bits": None, "init": "linear", "epochs": 1,
                 "batch_size": 64, "momentum": 0.9, "weight_decay": 0.0, "schedule": "cosine", "milestones": [],
                 "gamma": 0.1, "shift": 0, "teacher": None, "temperature": 4.0, "teacher_weight": 0.9}
DEMO_ENCODE = {"type": "encode", "name": "encode", "index_bits": None, "max_code_length": 11,
               "fold_biases": True}
DEMO_STAGES = {
    "dense": [DEMO_TRAIN],
    "deep-compression": [
        DEMO_TRAIN,
        {"type": "prune", "name": "prune", "keep": {"fc1.weight": 0.3, "fc2.weight": 0.3, "fc3.weight": 0.6},
         "quality": None},
        {**DEMO_RETRAIN, "name": "train-3", "epochs": 2},
        {"type": "prune", "name": "prune-4", "keep": {"fc1.weight": 0.12, "fc2.weight": 0.15, "fc3.weight": 0.4},
         "quality": None},
        {**DEMO_RETRAIN, "name": "train-5", "epochs": 2},
        {"type": "prune", "name": "prune-6", "keep": {"fc1.weight": 0.075, "fc2.weight": 0.09, "fc3.weight": 0.26},
         "quality": None},
        {**DEMO_RETRAIN, "name": "train-7", "epochs": 4},
        {**DEMO_QUANTIZE, "bits_all": 5, "method": "lloyd", "lr": 0.001, "teacher": "train"},
        DEMO_ENCODE,
    ],
    "mpd": [
        {"type": "mpd", "name": "mpd", "layers": ["fc1.weight", "fc2.weight"], "ratio": 10.0, "k": None,
         "k_all": None, "rescale": "auto"},
        {**DEMO_TRAIN, "form": "block"},
        {**DEMO_QUANTIZE, "bits_all": 6, "method": "optimal", "lr": 0.002},
        DEMO_ENCODE,
    ],
}


@pytest.mark.parametrize("options, epochs, seed", [([], 30, 0), (["--epochs", "1", "--seed", "3"], 1, 3)])
def test_demo_runs_its_three_configs_in_order_with_its_options(capsys, monkeypatch, tmp_path, options, epochs, seed):
    import mpdref
    import mpdref.compress
    import mpdref.data
    import mpdref.runner

    ran = []

    def run_experiment(config, out, force, progress):
        ran.append((out, config))
        return {"test_error": 0.02, "val_error": 0.02, "parameters": 266_610, "train_seconds": 1.0}

    monkeypatch.setattr(mpdref.data, "find_or_fetch_mnist", lambda root: tmp_path)
    monkeypatch.setattr(mpdref.runner, "run_experiment", run_experiment)
    monkeypatch.setattr(mpdref.compress, "size_table", lambda path: {"file_bytes": 26_000, "ratio": 41.0})
    monkeypatch.chdir(tmp_path)  # --out demo: the trade-off figure goes to ./demo
    code, out, err = run_cli(capsys, "demo", "--out", "demo", *options)
    assert code == 0, err
    assert out.endswith("test error against compression ratio: demo/tradeoff.png\n")
    assert (tmp_path / "demo" / "tradeoff.png").exists()
    assert [out for out, _ in ran] == ["demo/dense", "demo/deep-compression", "demo/mpd"]
    for name, (_, config) in zip(DEMO_STAGES, ran):
        first_train = next(i for i, stage in enumerate(DEMO_STAGES[name]) if stage["type"] == "train")
        stages = [dict(stage) for stage in DEMO_STAGES[name]]
        stages[first_train]["epochs"] = epochs  # --epochs sets the dense (or MPD) training only
        assert config == {"experiment": {"name": f"demo-{name}", "model": "lenet-300-100", "seed": seed,
                                         "dtype": "float32"},
                          "data": {"root": str(tmp_path), "validation_size": 5000, "train_limit": None},
                          "stages": stages, "mpdref_version": mpdref.__version__}
    assert "mpdref demo [deep-compression]: prune in 3 rounds, 5-bit codebooks, Huffman + relative indices; " \
           "the dense network teaches the retraining; " in err
    assert f"{epochs} epochs of SGD first" in err
