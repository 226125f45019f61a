import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_resume_is_bit_identical

from mpdref import models
from mpdref.io import FormatError
from mpdref.runner import RunDirectoryError, resume_experiment, run_experiment
from mpdref.runner.checkpoint import read_checkpoint, write_checkpoint
from mpdref.runner.config import ConfigError, config_digest, load_config, resolve_config
from mpdref.runner.report import compare_runs, show_run

ROOT = Path(__file__).resolve().parents[1]

SMALL = """
[experiment]
name = "small"
model = "lenet-300-100"
seed = 3

[data]
root = "{root}"
train_limit = 1500
validation_size = 500

[[stages]]
type = "train"
epochs = 3
lr = 0.05

[[stages]]
type = "train"
name = "finetune"
epochs = 2
lr = 0.01
schedule = "constant"

[[stages]]
type = "evaluate"
"""


# An ADMM run: Z, U and rho live in its checkpoints (mpdref.runner.stages.admm).
SMALL_ADMM = """
[experiment]
name = "small-admm"
model = "lenet-300-100"
seed = 3

[data]
root = "{root}"
train_limit = 1500
validation_size = 500

[[stages]]
type = "train"
epochs = 1
lr = 0.05

[[stages]]
type = "admm_prune"
keep_all = 0.2
rho = 0.01
rho_growth = 2.0
updates = 4
lr = 0.01

[[stages]]
type = "train"
name = "retrain"
epochs = 1
lr = 0.01
"""


def small_config(tmp_path, root, text=SMALL):
    path = tmp_path / "small.toml"
    path.write_text(text.format(root=root))
    return path


# ----------------------------------------------------------------------------- config validation


def test_config_defaults_are_filled_in(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[experiment]\nmodel = "lenet-5"\n[[stages]]\ntype = "train"\nepochs = 2\n')
    config = load_config(path)
    assert config["experiment"] == {"name": "exp", "model": "lenet-5", "seed": 0, "dtype": "float32"}
    assert config["data"] == {"root": None, "validation_size": 5000, "train_limit": None}
    stage = config["stages"][0]
    assert stage["epochs"] == 2 and stage["lr"] == 0.01 and stage["batch_size"] == 64  # lenet-5's recipe
    assert stage["name"] == "train" and config["mpdref_version"]


@pytest.mark.parametrize(
    "text, messages",
    [
        ('[experiment]\nmodel = "lenet-5"\nsede = 1\n[[stages]]\ntype = "train"\n',
         ["experiment.sede: unknown key (accepted: name, model, seed, dtype)"]),
        ('[experiment]\n[[stages]]\ntype = "train"\n', ["experiment.model: missing (expected one of 'lenet-300-100'"]),
        ('[experiment]\nmodel = "lenet-5"\nseed = -1\ndtype = "float16"\n[[stages]]\ntype = "evaluate"\n',
         ["experiment.seed: expected an integer >= 0, got -1", "experiment.dtype: expected one of 'float32', 'float64'"]),
        ('[experiment]\nmodel = "lenet-5"\n[[stages]]\ntype = "train"\nlr = "fast"\nepochs = 1.5\n',
         ["stages[0].lr: expected a number > 0, got 'fast' (str)", "stages[0].epochs: expected an integer >= 1, got 1.5"]),
        ('[experiment]\nmodel = "lenet-5"\n[[stages]]\ntype = "distill"\n',
         ["stages[0].type: expected one of 'train', 'teacher', 'evaluate', ", "'mpd'", "'prune'", "'quantize'",
          "'sensitivity'", "got 'distill'"]),
        ('[experiment]\nmodel = "lenet-5"\n', ["stages: expected a non-empty list"]),
        ('[experiment]\nmodel = "lenet-5"\n[data]\nvalidation_size = 60000\n[[stages]]\ntype = "evaluate"\nx = 1\n',
         ["data.validation_size: expected an integer in [0, 60000)", "stages[0].x: unknown key"]),
        ('[experiment]\nmodel = "lenet-5"\n[[stages]]\ntype = "train"\nmomentum = true\n',
         ["stages[0].momentum: expected a number in [0, 1), got True (bool)"]),
        ('[experiment]\nmodel = "lenet-5"\n[extra]\n[[stages]]\ntype = "train"\n', ["extra: unknown section"]),
        ('[experiment\nmodel = 1', ["not valid TOML"]),
        ('[experiment]\nmodel = "lenet-5"\n[[stages]]\ntype = "train"\nteacher = "later"\n'
         '[[stages]]\ntype = "teacher"\nname = "later"\n',
         ["stages[0].teacher: 'later' is neither the name of an earlier stage (earlier stages: none) nor a model "
          "file ending in .h5", "stages[1].model: missing (expected one of 'lenet-300-100'"]),
        ('[experiment]\nmodel = "lenet-5"\n[[stages]]\ntype = "train"\n[[stages]]\ntype = "quantize"\n'
         'bits_all = 4\nteacher = "dense"\ntemperature = 0\nteacher_weight = 2\n',
         ["stages[1].teacher: 'dense' is neither the name of an earlier stage (earlier stages: train)",
          "stages[1].temperature: expected a number > 0, got 0.0", "stages[1].teacher_weight: expected a number "
          "in [0, 1], got 2.0"]),
    ],
)
def test_bad_configs_are_refused_with_every_problem_named(tmp_path, text, messages):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    for m in messages:
        assert m in str(info.value)


def test_a_resolved_config_resolves_to_itself():
    raw = {"experiment": {"model": "lenet-300-100"},
           "stages": [{"type": "mpd", "ratio": 10.0}, {"type": "train"}, {"type": "evaluate"}]}
    config = resolve_config(raw)
    assert config["data"]["root"] is None and config["stages"][0]["k"] is None
    assert resolve_config(json.loads(json.dumps(config))) == config  # what resume reads back


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "none.toml")


def test_repository_configs_are_valid():
    paths = sorted((ROOT / "configs").glob("*.toml")) + sorted((ROOT / "configs" / "compare").glob("*.toml"))
    assert len(paths) > 10
    for path in paths:
        load_config(path)


# ----------------------------------------------------------------------------- running


@pytest.mark.mnist
def test_run_directory_contents_and_reports(tmp_path, mnist_dir):
    out = tmp_path / "run"
    metrics = run_experiment(load_config(small_config(tmp_path, mnist_dir)), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.h5", "config.json", "figures", "log.jsonl",
                                                     "metrics.json", "model.h5", "stages"]
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["01-train.h5", "02-finetune.h5", "03-evaluate.h5"]
    assert (out / "figures" / "training.png").stat().st_size > 1000
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in log if "epoch" in r] == [1, 2, 3, 1, 2]
    assert sum("result" in r for r in log) == 3
    assert metrics["test_error"] == log[-1]["result"]["test_error"]
    # the final model reproduces the reported test error
    net = models.load(out / "model.h5")
    from mpdref.runner import load_datasets

    _, _, test = load_datasets(net.dtype, mnist_dir, 500, 1500, fetch=False)
    assert net.error_rate(*test) == metrics["test_error"]
    text = show_run(out)
    assert "finetune" in text and f"{metrics['test_error']:.2%}" in text and "finished" in text
    assert "small" in compare_runs([out])
    with pytest.raises(RunDirectoryError, match="already holds a finished run"):
        run_experiment(load_config(small_config(tmp_path, mnist_dir)), out, progress=False)
    with pytest.raises(RunDirectoryError, match="already finished"):
        resume_experiment(out, progress=False)


def _weights(path):
    net = models.load(path)
    return {**net.params, **{f"mask:{k}": v for k, v in net.masks.items()}}


def _epoch_records(out):
    drop = {"seconds", "samples_per_second"}
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (Path(out) / "log.jsonl").read_text().splitlines()]


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.parametrize("text", [SMALL, SMALL_ADMM], ids=["train", "admm"])
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path, mnist_dir, text):
    config_path = small_config(tmp_path, mnist_dir, text)
    reference = tmp_path / "reference"
    run_experiment(load_config(config_path), reference, progress=False)
    expected_weights = _weights(reference / "model.h5")
    expected_log = _epoch_records(reference)
    total_lines = len(expected_log)
    rng = np.random.default_rng(int(time.time()))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    resumed = 0
    for trial, kill_after_lines in enumerate(sorted(rng.choice(total_lines, size=3, replace=False))):
        out = tmp_path / f"killed{trial}"
        proc = subprocess.Popen([sys.executable, "-m", "mpdref.cli", "run", str(config_path), "--out", str(out),
                                 "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            log = out / "log.jsonl"
            if log.exists() and log.read_bytes().count(b"\n") >= kill_after_lines:
                time.sleep(rng.uniform(0, 0.3))  # land anywhere: mid-epoch, mid-checkpoint, mid-stage
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (out / "metrics.json").exists():
            continue  # finished before the kill: nothing to resume
        resume_experiment(out, progress=False)
        resumed += 1
        got = _weights(out / "model.h5")
        assert got.keys() == expected_weights.keys()
        for k in got:
            assert np.array_equal(got[k], expected_weights[k]), f"{k} differs after resume (trial {trial})"
        assert _epoch_records(out) == expected_log
        assert not list(out.glob(".*.tmp"))
    assert resumed >= 1, "every run finished before it could be killed"


def test_checkpoint_round_trip_restores_generators_and_velocity(tmp_path, rng):
    net = models.build("deep-mnist", seed=4)
    net.set_mask("fc2.weight", rng.random((10, 1024)) < 0.5)
    velocity = {k: rng.standard_normal(v.shape).astype(v.dtype) * (net.masks.get(k, 1)) for k, v in net.params.items()}
    shuffle = np.random.default_rng(9)
    shuffle.random(5)
    net.rng.random(17)
    progress = {"config_digest": "abc", "stage_index": 1, "epochs_done": 2, "finished": False, "log_lines": 7,
                "results": [{"stage": "train"}], "rng": {"dropout": net.rng.bit_generator.state,
                                                        "shuffle": shuffle.bit_generator.state}}
    write_checkpoint(tmp_path / "c.h5", net, velocity, progress)
    state = read_checkpoint(tmp_path / "c.h5", "abc")
    assert state["epochs_done"] == 2 and state["log_lines"] == 7 and state["results"] == [{"stage": "train"}]
    assert np.array_equal(state["net"].rng.random(8), net.rng.random(8))  # the same dropout masks follow
    restored = np.random.default_rng(0)
    restored.bit_generator.state = state["rng"]["shuffle"]
    assert np.array_equal(restored.permutation(100), shuffle.permutation(100))
    for k in velocity:
        assert np.array_equal(state["velocity"][k], velocity[k])
    with pytest.raises(FormatError, match="another config"):
        read_checkpoint(tmp_path / "c.h5", "other")
    bad = dict(progress, rng={"dropout": {"bit_generator": "PCG64", "state": "x"}, "shuffle": None})
    write_checkpoint(tmp_path / "d.h5", net, velocity, bad)
    with pytest.raises(FormatError, match="generator states are malformed"):
        read_checkpoint(tmp_path / "d.h5", "abc")
    velocity["fc2.weight"][~net.masks["fc2.weight"]] = 1.0
    write_checkpoint(tmp_path / "e.h5", net, velocity, progress)
    with pytest.raises(FormatError, match="/velocity/fc2.weight is nonzero where"):
        read_checkpoint(tmp_path / "e.h5", "abc")


def test_unfinished_run_is_not_overwritten_without_force(tmp_path):
    config = resolve_config({"experiment": {"model": "lenet-5"}, "stages": [{"type": "evaluate"}]})
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirectoryError, match="unfinished run"):
        run_experiment(config, tmp_path, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="not a directory"):
        run_experiment(config, tmp_path / "file", progress=False)
    assert config_digest(config) == config_digest(json.loads(json.dumps(config)))


# ----------------------------------------------------------------------------- distillation


def _distilled_config(mnist_dir, **teacher_settings):
    return resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 3},
        "data": {"root": str(mnist_dir), "train_limit": 320, "validation_size": 100},
        "stages": [{"type": "teacher", "model": "lenet-300-100", "epochs": 1, "batch_size": 32, **teacher_settings},
                   {"type": "mpd", "k_all": 4},
                   {"type": "train", "epochs": 2, "batch_size": 32, "teacher": "teacher", "form": "block"},
                   {"type": "quantize", "bits_all": 4, "epochs": 1, "lr": 0.001, "batch_size": 32,
                    "teacher": "train", "teacher_weight": 0.5}]})


@pytest.mark.mnist
def test_a_teacher_stage_trains_a_network_for_later_stages(tmp_path, mnist_dir):
    metrics = run_experiment(_distilled_config(mnist_dir), tmp_path / "run", progress=False)
    teacher = models.load(tmp_path / "run" / "teachers" / "teacher.h5")
    stages = {s["stage"]: s for s in metrics["stages"]}
    assert stages["teacher"]["teacher"]["epochs"] == 1 and "test_error" not in stages["teacher"]
    # The teacher trained with lenet-300-100's default recipe where the stage left it unset.
    assert stages["teacher"]["teacher"]["recipe"]["lr"] == 0.05
    assert stages["train"]["teacher"]["file"] == str(Path("teachers") / "teacher.h5")  # in the run directory
    assert stages["quantize"]["teacher"]["file"] == str(Path("stages") / "03-train.h5")
    assert stages["train"]["teacher"]["test_error"] == stages["teacher"]["teacher"]["test_error"]
    assert not teacher.masks  # the teacher is not the run's network: no MPD masks
    # Its epochs are logged apart from the run's own: the run's curves have only train's and quantize's.
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum("teacher" in r and "epoch" in r["teacher"] for r in log) == 1
    assert sum("epoch" in r for r in log) == 3
    row = next(line for line in show_run(tmp_path / "run").splitlines() if "teacher (lenet-300-100)" in line)
    assert row.split()[4] == "1/1" and f"{100 * stages['teacher']['teacher']['test_error']:.2f}%" in row


@pytest.mark.mnist
def test_the_teacher_is_the_network_a_run_of_its_own_trains(tmp_path, mnist_dir):
    config = _distilled_config(mnist_dir, lr=0.02)
    config["stages"] = config["stages"][:1]
    run_experiment(config, tmp_path / "distilled", progress=False)
    own = resolve_config({"experiment": {"model": "lenet-300-100", "seed": 3},
                          "data": config["data"], "stages": [{"type": "train", "epochs": 1, "batch_size": 32,
                                                              "lr": 0.02}]})
    run_experiment(own, tmp_path / "own", progress=False)
    a, b = models.load(tmp_path / "distilled" / "teachers" / "teacher.h5"), models.load(tmp_path / "own" / "model.h5")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


@pytest.mark.mnist
@pytest.mark.parametrize("stop_after", [1, 3])
def test_a_distilled_run_resumes_bit_identically(tmp_path, mnist_dir, monkeypatch, stop_after):
    assert_resume_is_bit_identical(_distilled_config(mnist_dir), tmp_path, monkeypatch, stop_after)


def _shifted_config(mnist_dir):
    return resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 2},
        "data": {"root": str(mnist_dir), "train_limit": 320, "validation_size": 100},
        "stages": [{"type": "train", "epochs": 2, "batch_size": 32, "shift": 2},
                   {"type": "admm_prune", "keep_all": 0.3, "updates": 2, "batch_size": 32, "shift": 1,
                    "teacher": "train"},
                   {"type": "train", "name": "retrain", "epochs": 2, "batch_size": 32, "shift": 1,
                    "teacher": "train"}]})


@pytest.mark.mnist
@pytest.mark.parametrize("stop_after", [1, 4])
def test_a_run_on_shifted_images_resumes_bit_identically(tmp_path, mnist_dir, monkeypatch, stop_after):
    assert_resume_is_bit_identical(_shifted_config(mnist_dir), tmp_path, monkeypatch, stop_after)


@pytest.mark.mnist
def test_a_shift_setting_reaches_every_stage_and_changes_the_run(tmp_path, mnist_dir):
    shifted = _shifted_config(mnist_dir)
    assert [s["shift"] for s in shifted["stages"]] == [2, 1, 1]
    plain = resolve_config({**shifted, "stages": [{k: v for k, v in s.items() if k != "shift"}
                                                  for s in shifted["stages"]]})
    assert [s["shift"] for s in plain["stages"]] == [0, 0, 0]  # the default: the images as they are
    run_experiment(shifted, tmp_path / "shifted", progress=False)
    run_experiment(plain, tmp_path / "plain", progress=False)
    a, b = models.load(tmp_path / "shifted" / "model.h5"), models.load(tmp_path / "plain" / "model.h5")
    assert not np.array_equal(a.params["fc1.weight"], b.params["fc1.weight"])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.shift: .*an integer in \[0, 8\]"):
        resolve_config({**shifted, "stages": [{**shifted["stages"][0], "shift": 9}]})


@pytest.mark.mnist
def test_stages_sharing_a_teacher_load_and_run_it_once(tmp_path, mnist_dir, monkeypatch):
    import mpdref.models

    config = _distilled_config(mnist_dir)
    config["stages"] = config["stages"][:3] + [dict(config["stages"][2], name="again", epochs=1)]
    loads = []
    original = mpdref.models.load
    monkeypatch.setattr(mpdref.models, "load", lambda path: loads.append(str(path)) or original(path))
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    teacher = str(tmp_path / "run" / "teachers" / "teacher.h5")
    assert loads.count(teacher) == 1
    stages = {s["stage"]: s for s in metrics["stages"]}
    assert stages["again"]["teacher"] == stages["train"]["teacher"]


@pytest.mark.mnist
def test_a_missing_teacher_file_is_named(tmp_path, mnist_dir):
    config = resolve_config({
        "experiment": {"model": "lenet-300-100"},
        "data": {"root": str(mnist_dir), "train_limit": 64, "validation_size": 0},
        "stages": [{"type": "train", "epochs": 1, "teacher": str(tmp_path / "none.h5")}]})
    with pytest.raises(FileNotFoundError, match="teacher '.*none.h5': no model file at"):
        run_experiment(config, tmp_path / "run", progress=False)


# ----------------------------------------------------------------------------- shared stages


def _sharing_configs(mnist_dir, keeps=(0.5, 0.3), names=("a", "b")):
    """Runs that agree up to their prune stage: a dense training, then a kept fraction each, then a
    distilled retraining whose teacher is the shared stage's network."""
    return [resolve_config({
        "experiment": {"name": name, "model": "lenet-300-100", "seed": 3},
        "data": {"root": str(mnist_dir), "train_limit": 320, "validation_size": 100},
        "stages": [{"type": "train", "epochs": 2, "batch_size": 32, "lr": 0.05},
                   {"type": "prune", "keep": {"fc1.weight": keep, "fc2.weight": keep}},
                   {"type": "train", "name": "retrain", "epochs": 1, "batch_size": 32, "teacher": "train"}]})
        for name, keep in zip(names, keeps)]


def test_shared_prefixes_are_the_ends_of_the_longest_runs_of_stages_in_common(mnist_dir):
    from mpdref.runner.shared import prefix_keys, shared_prefixes

    a, b = _sharing_configs(mnist_dir)
    ka, kb = prefix_keys(a), prefix_keys(b)
    assert ka[0] == kb[0] and ka[1] != kb[1]  # the experiment's name is not part of the key
    assert shared_prefixes([a, b]) == {ka[0]}
    assert shared_prefixes([a]) == set()
    other_seed = resolve_config({**a, "experiment": {**a["experiment"], "seed": 4}})
    assert prefix_keys(other_seed)[0] != ka[0] and shared_prefixes([a, other_seed]) == set()
    # three runs: the dense stage is shared by all three, stages 0..1 by two (a and its twin)
    twin = resolve_config({**a, "experiment": {**a["experiment"], "name": "twin"}})
    assert shared_prefixes([a, b, twin]) == {ka[0], ka[2]}  # the twin shares a's whole run


@pytest.mark.mnist
def test_a_run_from_a_shared_snapshot_ends_with_the_bits_of_a_run_of_its_own(tmp_path, mnist_dir):
    from mpdref.runner.shared import SharedStages, shared_prefixes

    a, b = _sharing_configs(mnist_dir)
    shared = SharedStages(tmp_path / "shared", shared_prefixes([a, b]))
    run_experiment(a, tmp_path / "a", progress=False, shared=shared)
    assert len(list((tmp_path / "shared").iterdir())) == 1  # the dense stage, published by a
    calls = []
    import mpdref.runner.stages.train as train_stage

    original = train_stage.TrainStage.run

    def counting(self, ctx, settings, resume):
        calls.append(ctx.config["stages"][ctx.stage_index]["name"])
        return original(self, ctx, settings, resume)

    train_stage.TrainStage.run = counting
    try:
        metrics = run_experiment(b, tmp_path / "b", progress=False, shared=shared)
    finally:
        train_stage.TrainStage.run = original
    assert calls == ["retrain"]  # the dense training was copied, not run
    assert metrics["shared_stages"] == {"stages": 1, "from": str(tmp_path / "a")}
    shown = show_run(tmp_path / "b")
    assert f"stages 1-1 copied from {tmp_path / 'a'}" in shown and shown.count("copied") == 2  # + its row
    alone = run_experiment(b, tmp_path / "alone", progress=False)
    assert "shared_stages" not in alone
    for name in ("model.h5", "stages/01-train.h5", "stages/02-prune.h5"):
        mine, theirs = _weights(tmp_path / "b" / name), _weights(tmp_path / "alone" / name)
        assert mine.keys() == theirs.keys()
        for k in mine:
            assert np.array_equal(mine[k], theirs[k]), (name, k)
    assert _epoch_records(tmp_path / "b") == _epoch_records(tmp_path / "alone")
    assert {k: v for k, v in metrics.items() if k not in ("shared_stages", "train_seconds")} == \
        {k: v for k, v in alone.items() if k != "train_seconds"}
    # a finished run resumes nothing; one stopped after the copy goes on from it
    (tmp_path / "b" / "metrics.json").unlink()
    (tmp_path / "b" / "model.h5").unlink()
    assert resume_experiment(tmp_path / "b", progress=False, shared=shared)["test_error"] == alone["test_error"]


def test_a_snapshot_is_published_once_and_never_half_written(tmp_path, mnist_dir, monkeypatch):
    from mpdref.runner import shared as shared_module
    from mpdref.runner.shared import SharedStages, prefix_keys

    a, _ = _sharing_configs(mnist_dir)
    key = prefix_keys(a)[0]
    out = tmp_path / "run"
    out.mkdir()
    (out / "stages").mkdir()
    (out / "stages" / "01-train.h5").write_bytes(b"x")
    (out / "log.jsonl").write_text("{}\n")
    (out / "config.json").write_text("{}")
    store = SharedStages(tmp_path / "shared", {key})
    assert not store.publish(a, out, 1, "digest")  # a stage no other run shares
    assert store.publish(a, out, 0, "digest")
    snapshot = tmp_path / "shared" / key
    assert sorted(p.name for p in snapshot.iterdir()) == ["log.jsonl", "snapshot.json", "stages"]
    assert not store.publish(a, out, 0, "digest")  # there already
    # a second publisher that loses the race leaves nothing behind
    monkeypatch.setattr(shared_module.os, "rename", lambda *_: (_ for _ in ()).throw(OSError("exists")))
    assert not SharedStages(tmp_path / "other", {key}).publish(a, out, 0, "digest")
    assert list((tmp_path / "other").iterdir()) == []


def _load_and_average_config(mnist_dir, file, teacher=None):
    return resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 5},
        "data": {"root": str(mnist_dir), "train_limit": 320, "validation_size": 100},
        "stages": [{"type": "load", "file": str(file)},
                   {"type": "swa", "epochs": 3, "batch_size": 32, "lr": 0.05,
                    **({"teacher": str(teacher)} if teacher else {})}]})


def _pruned_run(mnist_dir, out):
    config = resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 3},
        "data": {"root": str(mnist_dir), "train_limit": 320, "validation_size": 100},
        "stages": [{"type": "train", "epochs": 1, "batch_size": 32},
                   {"type": "prune", "keep": {"fc1.weight": 0.1, "fc2.weight": 0.2}}]})
    return run_experiment(config, out, progress=False)


@pytest.mark.mnist
def test_a_load_stage_starts_from_a_model_file_with_its_masks(tmp_path, mnist_dir):
    first = _pruned_run(mnist_dir, tmp_path / "first")
    config = _load_and_average_config(mnist_dir, tmp_path / "first" / "model.h5")
    config["stages"] = config["stages"][:1]
    metrics = run_experiment(config, tmp_path / "second", progress=False)
    assert (metrics["test_error"], metrics["val_error"]) == (first["test_error"], first["val_error"])
    a, b = models.load(tmp_path / "first" / "model.h5"), models.load(tmp_path / "second" / "model.h5")
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert a.masks.keys() == b.masks.keys() == {"fc1.weight", "fc2.weight"}
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    import hashlib

    report = metrics["stages"][0]
    assert report["sha256"] == hashlib.sha256((tmp_path / "first" / "model.h5").read_bytes()).hexdigest()
    assert report["path"] == str((tmp_path / "first" / "model.h5").resolve())


@pytest.mark.mnist
def test_a_load_stage_names_a_missing_or_foreign_file(tmp_path, mnist_dir):
    with pytest.raises(FileNotFoundError, match="no model file at .*absent.h5"):
        run_experiment(_load_and_average_config(mnist_dir, tmp_path / "absent.h5"), tmp_path / "a", progress=False)
    models.save(models.build("lenet-5"), tmp_path / "lenet-5.h5")
    with pytest.raises(ValueError, match="lenet-5.h5 holds a lenet-5 network in float32; this run's is lenet-300-100"):
        run_experiment(_load_and_average_config(mnist_dir, tmp_path / "lenet-5.h5"), tmp_path / "b", progress=False)
    models.save(models.build("lenet-300-100", np.float64), tmp_path / "float64.h5")
    with pytest.raises(ValueError, match="holds a lenet-300-100 network in float64; this run's is lenet-300-100 in "
                                         "float32"):
        run_experiment(_load_and_average_config(mnist_dir, tmp_path / "float64.h5"), tmp_path / "d", progress=False)
    (tmp_path / "torn.h5").write_bytes((tmp_path / "lenet-5.h5").read_bytes()[:5000])
    with pytest.raises(FormatError, match="torn.h5"):
        run_experiment(_load_and_average_config(mnist_dir, tmp_path / "torn.h5"), tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="stages\\[0\\].file: expected a model file ending in .h5"):
        _load_and_average_config(mnist_dir, "model.npz")


@pytest.mark.mnist
def test_an_swa_stage_ends_on_the_mean_of_its_epochs_weights_under_the_masks(tmp_path, mnist_dir, monkeypatch):
    from mpdref.train import WeightAverage

    _pruned_run(mnist_dir, tmp_path / "first")
    snapshots = []
    original = WeightAverage.add
    monkeypatch.setattr(WeightAverage, "add", lambda self, params: snapshots.append(
        {k: v.astype(np.float64) for k, v in params.items()}) or original(self, params))
    config = _load_and_average_config(mnist_dir, tmp_path / "first" / "model.h5",
                                      teacher=tmp_path / "first" / "stages" / "01-train.h5")
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    report = metrics["stages"][1]
    assert report["averaged"] == report["epochs"] == len(snapshots) == 3
    assert set(report["last_epoch"]) == {"test_error", "val_error"} and report["teacher"]["model"] == "lenet-300-100"
    net = models.load(tmp_path / "run" / "model.h5")
    assert not np.array_equal(snapshots[0]["fc1.weight"], snapshots[-1]["fc1.weight"])  # the weights moved
    for k, w in net.params.items():
        np.testing.assert_allclose(w, np.mean([s[k] for s in snapshots], axis=0), rtol=1e-5, atol=1e-7)
        assert not np.array_equal(w, snapshots[-1][k].astype(w.dtype)), k  # the mean, not the last epoch's
    for k, mask in net.masks.items():
        assert np.all(net.params[k][~mask] == 0.0) and np.array_equal(mask, models.load(
            tmp_path / "first" / "model.h5").masks[k])


@pytest.mark.mnist
@pytest.mark.parametrize("stop_after", [1, 2, 3, 4])
def test_an_swa_stage_interrupted_resumes_bit_identically(tmp_path, mnist_dir, monkeypatch, stop_after):
    _pruned_run(mnist_dir, tmp_path / "first")
    # checkpoints: 1 the load stage's end (the swa stage starts over); 2-4 the swa stage's epochs (the
    # running mean of 1, 2 and 3 epochs' weights in them; after 4 only the stage's end is left)
    assert_resume_is_bit_identical(_load_and_average_config(mnist_dir, tmp_path / "first" / "model.h5"),
                                   tmp_path, monkeypatch, stop_after)
