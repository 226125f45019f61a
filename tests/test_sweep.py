"""`mpdref sweep`: grid expansion and validation, and sweeps on Dask (a LocalCluster, and a scheduler
and workers started here on loopback), including a worker killed in the middle of a run."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from mpdref import models
from mpdref.runner.config import ConfigError, load_config
from mpdref.sweep import SweepError, load_sweep, run_name, run_sweep

ROOT = Path(__file__).resolve().parents[1]
DASK = Path(sys.executable).parent / "dask"

BASE = """
[experiment]
name = "tiny"
model = "lenet-300-100"
seed = 0

[data]
root = "{root}"
train_limit = {train_limit}
validation_size = 100

[[stages]]
type = "train"
epochs = {epochs}
batch_size = 32
lr = 0.05

[[stages]]
type = "prune"
keep = {{ "fc1.weight" = 0.3, "fc2.weight" = 0.3, "fc3.weight" = 0.6 }}

[[stages]]
type = "encode"
"""


def write_sweep(tmp_path, sweep_text, root="/nowhere", train_limit=320, epochs=1, name="sweep.toml"):
    (tmp_path / "base.toml").write_text(BASE.format(root=root, train_limit=train_limit, epochs=epochs))
    path = tmp_path / name
    path.write_text('config = "base.toml"\n' + sweep_text)
    return path


def weights(path):
    net = models.load(path)
    return {**net.params, **{f"mask:{k}": v for k, v in net.masks.items()}}


def model_files(run: Path) -> list[Path]:
    """model.h5, model.mpdz and stages/*.h5 (the checkpoint holds run state, not a model)."""
    return sorted(p.relative_to(run) for p in run.rglob("*") if p.suffix in (".h5", ".mpdz")
                  and p.name != "checkpoint.h5")


def assert_same_model_files(a: Path, b: Path):
    files = model_files(a)
    assert files == model_files(b)
    assert Path("model.h5") in files and Path("model.mpdz") in files and len(files) == 5  # + 3 stages
    for f in files:
        if f.suffix == ".mpdz":
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
        else:
            wa, wb = weights(a / f), weights(b / f)
            assert wa.keys() == wb.keys()
            for k in wa:
                assert np.array_equal(wa[k], wb[k]), f"{f}: {k}"


# ----------------------------------------------------------------------------- the sweep file


def test_grid_and_points_expand_in_file_order_with_readable_names(tmp_path):
    path = write_sweep(tmp_path, '[set]\n"stages[0].epochs" = 2\n'
                                 '[grid]\n"experiment.seed" = [0, 1]\n"stages[0].lr" = [0.05, 0.1]\n'
                                 '[[points]]\n"data.train_limit" = 64\n')
    sweep = load_sweep(path)
    assert sweep.keys == ("experiment.seed", "stages[0].lr", "data.train_limit")
    assert [p.name for p in sweep.points] == ["seed=0,train.lr=0.05", "seed=0,train.lr=0.1", "seed=1,train.lr=0.05",
                                              "seed=1,train.lr=0.1", "train_limit=64"]
    # A run's config is what `mpdref run` makes of the base file with its values written in.
    edited = tmp_path / "edited.toml"
    edited.write_text((tmp_path / "base.toml").read_text().replace("seed = 0", "seed = 1")
                      .replace("lr = 0.05", "lr = 0.1").replace("epochs = 1", "epochs = 2"))
    assert sweep.points[3].config == load_config(edited)
    assert sweep.points[4].config["data"]["train_limit"] == 64 and sweep.points[4].config["experiment"]["seed"] == 0
    assert all(p.config["stages"][0]["epochs"] == 2 for p in sweep.points)  # [set] reaches every run
    # a table value is named by a hash of its content: stable, and different for another table
    config = sweep.points[0].config
    a = run_name({"stages[1].keep": {"fc1.weight": 0.1}}, config)
    b = run_name({"stages[1].keep": {"fc1.weight": 0.2}}, config)
    assert a.startswith("prune.keep=") and len(a) == len("prune.keep=") + 8 and a != b
    assert a == run_name({"stages[1].keep": {"fc1.weight": 0.1}}, config)


@pytest.mark.parametrize("sweep_text, messages", [
    ('[grid]\n"stages[0].lr" = [0.1, -1]\n"experiment.seed" = [0, 1, 2, 3]\n',
     ["4 of 8 runs cannot run", "stages[0].lr: expected a number > 0, got -1.0 "
      "(in stages[0].lr = -1, experiment.seed = 0; stages[0].lr = -1, experiment.seed = 1; stages[0].lr = -1, "
      "experiment.seed = 2; and 1 more)"]),
    ('[grid]\n"stages[0].lrr" = [1]\n', ["stages[0].lrr: unknown key (accepted: epochs, batch_size, lr,"]),
    ('[grid]\n"stages[2].index_bits" = [9]\n"experiment.dtype" = ["float16"]\n',
     ["stages[2].index_bits: expected an integer in [1, 8]", "experiment.dtype: expected one of 'float32', 'float64'"]),
    ('[grid]\n"stages[7].lr" = [1]\n', ['grid."stages[7].lr": the base config has 3 stages (stages[0] to stages[2])']),
    ('[grid]\n"seed" = [1]\n', ["grid.\"seed\": 'seed' is not a config key (write experiment.KEY, data.KEY or "
                                "stages[N].KEY"]),
    ('[grid]\n"experiment.seed" = 3\n', ['grid."experiment.seed": expected a non-empty list of values, got 3']),
    ('[grid]\n"experiment.seed" = []\n', ['grid."experiment.seed": expected a non-empty list of values, got []']),
    ('[set]\n"experiment.seed" = 1\n[grid]\n"experiment.seed" = [2]\n', ["also in [set]"]),
    ('[grid]\n"stages[0].lr" = [1, 1.0]\n', ["the runs with stages[0].lr = 1 and with stages[0].lr = 1.0 are the "
                                             "same run"]),
    ('grids = 1\n', ["grids: unknown key (accepted: config, set, grid, points)", "no runs: give a [grid]"]),
    ('[[points]]\n', ["points: expected [[points]] tables, each setting at least one config key"]),
])
def test_every_run_is_validated_before_anything_runs(tmp_path, sweep_text, messages):
    path = write_sweep(tmp_path, sweep_text)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    assert str(path) in str(info.value)
    for m in messages:
        assert m in str(info.value)


def test_a_runs_problem_reads_as_mpdref_run_says_it(tmp_path):
    """The runner's own message for the same value, word for word."""
    path = write_sweep(tmp_path, '[grid]\n"stages[0].momentum" = [true]\n"stages[1].keep" = [{ "fc9.weight" = 0.5 }]\n')
    edited = tmp_path / "edited.toml"
    edited.write_text((tmp_path / "base.toml").read_text().replace("lr = 0.05", "lr = 0.05\nmomentum = true")
                      .replace('"fc1.weight" = 0.3, "fc2.weight" = 0.3, "fc3.weight" = 0.6', '"fc9.weight" = 0.5'))
    with pytest.raises(ConfigError) as run_error:
        load_config(edited)
    with pytest.raises(ConfigError) as sweep_error:
        load_sweep(path)
    problems = str(run_error.value).removeprefix(f"{edited}: ")
    assert "stages[0].momentum" in problems and "fc9.weight" in problems
    assert f": {problems} (in stages[0].momentum = true" in str(sweep_error.value)


def test_sweep_file_problems(tmp_path):
    (tmp_path / "a.toml").write_text('[grid]\n"experiment.seed" = [1]\n')
    with pytest.raises(SweepError, match="config: expected the path of the base experiment config"):
        load_sweep(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text('config = "none.toml"\n[grid]\n"experiment.seed" = [1]\n')
    with pytest.raises(ConfigError, match="none.toml: file not found"):
        load_sweep(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text('config = "b.toml"\n[grid\n')
    with pytest.raises(SweepError, match="c.toml: not valid TOML"):
        load_sweep(tmp_path / "c.toml")


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.toml")), ids=lambda p: p.stem)
def test_every_repository_sweep_is_valid(path):
    sweep = load_sweep(path)  # every point validated as `mpdref run` validates a config
    names = [p.name for p in sweep.points]
    assert len(names) >= 2 and len(set(names)) == len(names)


def test_the_example_sweep_is_valid():
    sweep = load_sweep(ROOT / "configs" / "sweeps" / "dc-lenet-300-100-quick.toml")
    assert len(sweep.points) == 6 and sweep.points[0].name == "quantize.bits_all=4,seed=0"
    assert all(p.config["data"]["train_limit"] == 5000 for p in sweep.points)


def test_cli_refuses_a_bad_sweep_in_one_line_before_any_work(capsys, tmp_path):
    path = write_sweep(tmp_path, '[grid]\n"stages[0].epochs" = [0]\n')
    code, out, err = run_cli(capsys, "sweep", path, "--out", tmp_path / "out")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "stages[0].epochs: expected an integer >= 1, got 0" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    code, out, err = run_cli(capsys, "sweep", path, "--workers", "0")
    assert code == 1 and "--workers: expected an integer >= 1, got 0" in err
    code, out, err = run_cli(capsys, "sweep", path, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2 and "not allowed with argument" in err
    code, out, err = run_cli(capsys, "sweep", "--help")
    assert code == 0 and "--scheduler ADDRESS" in out and "pip install -e '.[sweep]'" in " ".join(out.split())


def test_without_dask_the_extra_is_named(capsys, tmp_path, monkeypatch):
    path = write_sweep(tmp_path, '[grid]\n"experiment.seed" = [0]\n')
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    code, out, err = run_cli(capsys, "sweep", path, "--out", tmp_path / "out")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "pip install -e '.[sweep]'" in err and not (tmp_path / "out").exists()
    # importing the module does not import Dask
    check = "import sys, mpdref.sweep; print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'distributed'}))"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


# ----------------------------------------------------------------------------- on a LocalCluster


@pytest.mark.mnist
@pytest.mark.slow
def test_a_local_sweep_writes_results_that_show_reads_and_a_second_call_runs_nothing(capsys, tmp_path, mnist_dir):
    from mpdref.compress import size_table

    path = write_sweep(tmp_path, '[grid]\n"experiment.seed" = [0, 1]\n[[points]]\n"stages[0].lr" = 1e6\n',
                       root=mnist_dir)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "sweep", path, "--out", out, "--workers", "2", "--no-progress")
    assert code == 1, err  # one run failed; the others finished
    assert "running on a LocalCluster of 2 workers" in err and "2 of 3 runs finished, 1 failed" in err
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["name", "experiment.seed", "stages[0].lr", "status", "test_error", "val_error", "ratio",
                              "file_bytes", "weights_kept", "seconds", "train_seconds", "run_dir", "message"]
    assert [r["name"] for r in table] == ["seed=0", "seed=1", "train.lr=1000000.0"]
    assert [r["status"] for r in table] == ["finished", "finished", "failed"]
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert [r["name"] for r in rows] == [r["name"] for r in table]
    for row, csv_row in zip(rows[:2], table):
        run = out / row["run_dir"]
        metrics = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "config.json").read_text())
        assert row["experiment.seed"] == config["experiment"]["seed"] == int(csv_row["experiment.seed"])
        assert row["stages[0].lr"] == config["stages"][0]["lr"] == 0.05
        assert row["test_error"] == metrics["test_error"] == float(csv_row["test_error"])
        assert row["val_error"] == metrics["val_error"] and row["train_seconds"] == metrics["train_seconds"]
        assert row["file_bytes"] == (run / "model.mpdz").stat().st_size == int(csv_row["file_bytes"])
        assert row["ratio"] == size_table(run / "model.mpdz")["ratio"]
        net = models.load(run / "model.h5")
        masks = [net.masks.get(n, np.ones(net.params[n].shape, bool)) for n in net.weight_names()]
        assert row["weights_kept"] == sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)
        assert 0.3 < row["weights_kept"] < 0.32 and 0 < row["seconds"] < 120
    failed = rows[2]
    assert failed["status"] == "failed" and failed["message"].startswith("training diverged in epoch 1")
    assert failed["test_error"] is None and failed["stages[0].lr"] == 1e6 and failed["experiment.seed"] == 0
    assert "FloatingPointError" in (out / "runs" / "train.lr=1000000.0" / "output.log").read_text()

    # each worker runs the loop `mpdref run` runs: the same model, with one thread as in the workers
    seeded = tmp_path / "seed1.toml"
    seeded.write_text((tmp_path / "base.toml").read_text().replace("seed = 0", "seed = 1"))
    one_thread = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "mpdref.cli", "run", seeded, "--out", tmp_path / "alone", "--no-progress"],
                   env=one_thread, check=True, capture_output=True)
    assert_same_model_files(tmp_path / "alone", out / "runs" / "seed=1")

    # show reads the sweep directory and its runs; compare reads the runs
    code, shown, _ = run_cli(capsys, "show", out)
    assert code == 0 and shown == stdout
    assert f"{rows[1]['test_error']:.2%}" in shown and "failed: runs/train.lr=1000000.0: training diverged" in shown
    assert "2 finished, 1 failed" in shown
    code, shown, _ = run_cli(capsys, "show", out / "runs" / "seed=1")
    assert code == 0 and "finished" in shown and f"{rows[1]['test_error']:.2%}" in shown
    code, compared, _ = run_cli(capsys, "compare", *(out / r["run_dir"] for r in rows))
    assert code == 0 and all(r["name"] in compared for r in rows)

    # the same command again: nothing runs, not even a cluster
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent.name != out.name}
    code, again, err = run_cli(capsys, "sweep", path, "--out", out, "--workers", "2", "--no-progress")
    assert code == 1 and again == stdout
    assert "2 finished, 1 failed before (--retry-failed runs them again), 0 to run" in err and "running on" not in err
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent.name != out.name}

    # a run directory of another config under a run's name is refused, not resumed or taken as done
    path.write_text(path.read_text().replace("[grid]", '[set]\n"stages[0].batch_size" = 64\n[grid]'))
    code, _, err = run_cli(capsys, "sweep", path, "--out", out)
    assert code == 1 and "of another config than the sweep's" in err


# ----------------------------------------------------------------------------- on a scheduler started here


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory):
    """`dask scheduler` and `dask worker` (2 one-thread worker processes, each under a nanny that
    restarts it) on 127.0.0.1: the scheduler's address."""
    tmp = tmp_path_factory.mktemp("dask")
    file = tmp / "scheduler.json"
    logs = open(tmp / "dask.log", "w")
    common = {"cwd": ROOT, "stdout": logs, "stderr": subprocess.STDOUT}
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", file], **common)]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        procs.append(subprocess.Popen([DASK, "worker", "--scheduler-file", file, "--nworkers", "2", "--nthreads", "1",
                                       "--no-dashboard", "--memory-limit", "0", "--local-directory", tmp], **common))
        address = json.loads(file.read_text())["address"]
        from distributed import Client

        with Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logs.close()


def test_one_run_of_each_group_that_shares_stages_is_given_to_dask_first(tmp_path):
    from mpdref.runner.shared import shared_prefixes
    from mpdref.sweep import leaders_first

    keeps = '[{ "fc1.weight" = 0.3 }, { "fc1.weight" = 0.2 }]'
    sweep = load_sweep(write_sweep(tmp_path, f'[grid]\n"stages[1].keep" = {keeps}\n"experiment.seed" = [0, 1]\n'
                                             '[[points]]\n"experiment.seed" = 7\n'))
    publish = shared_prefixes([p.config for p in sweep.points])
    assert len(publish) == 2  # the dense stage of each of seeds 0 and 1; seed 7 shares nothing
    names = [p.name for p in leaders_first(sweep.points, publish)]
    assert names[:3] == [sweep.points[0].name, sweep.points[1].name, sweep.points[4].name]  # seeds 0, 1, 7
    assert sorted(names) == sorted(p.name for p in sweep.points)
    assert leaders_first(sweep.points, ()) == list(sweep.points)


def test_the_longest_runs_are_given_to_dask_first_and_lead_their_group(tmp_path):
    """Longest processing time first: the runs go to Dask by their estimated length, so the longest does
    not start last; of runs that share their first stages, the longest runs them and publishes them."""
    from mpdref.runner.shared import shared_prefixes
    from mpdref.sweep import estimated_cost, leaders_first, longest_first

    base = BASE.replace('type = "encode"', 'type = "train"\nname = "retrain"\nepochs = 1\nbatch_size = 32\nlr = 0.01')
    (tmp_path / "base.toml").write_text(base.format(root="/nowhere", train_limit=320, epochs=2))
    (tmp_path / "sweep.toml").write_text('config = "base.toml"\n[grid]\n"stages[2].epochs" = [1, 5, 3]\n'
                                         '[[points]]\n"experiment.seed" = 1\n"stages[0].epochs" = 4\n')
    sweep = load_sweep(tmp_path / "sweep.toml")
    assert [estimated_cost(p.config) for p in sweep.points] == [3, 7, 5, 5]  # dense epochs + retraining epochs
    ordered = longest_first(list(sweep.points))
    assert [p.name for p in ordered] == [sweep.points[i].name for i in (1, 2, 3, 0)]  # ties keep their order
    publish = shared_prefixes([p.config for p in sweep.points])
    assert publish  # seed 0's three runs share their dense training and pruning
    names = [p.name for p in leaders_first(ordered, publish)]
    assert names == [sweep.points[i].name for i in (1, 3, 2, 0)]  # the 7-epoch run leads seed 0's group
    # a teacher stage counts on its own network; LeNet-5's epochs cost more than LeNet-300-100's
    config = {"experiment": {"model": "lenet-300-100"},
              "stages": [{"type": "teacher", "model": "lenet-5", "epochs": 2}, {"type": "admm_prune", "updates": 3,
                                                                                  "epochs_per_update": 2},
                         {"type": "encode"}]}
    assert estimated_cost(config) == 2 * 12 + 6
    config["stages"][0]["epochs"] = None  # unset: the teacher network's recipe (LeNet-5: 20 epochs)
    assert estimated_cost(config) == 20 * 12 + 6


@pytest.mark.mnist
@pytest.mark.slow
def test_runs_that_begin_alike_share_their_first_stages_and_end_with_their_own_bits(capsys, tmp_path, mnist_dir):
    """Three pruning settings at one seed: the dense training runs once (the first run publishes it,
    the two after it begin from the copy), and each run's files are those of the sweep run with
    --no-share, whose runs run every stage (one-thread workers both: BLAS's sums may depend on its
    threads)."""
    keeps = '[{ "fc1.weight" = 0.3 }, { "fc1.weight" = 0.2 }, { "fc1.weight" = 0.1 }]'
    path = write_sweep(tmp_path, f'[grid]\n"stages[1].keep" = {keeps}\n', root=mnist_dir)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "sweep", path, "--out", out, "--workers", "1", "--no-progress")
    assert code == 0, err
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 3 and len(list((out / "shared").iterdir())) == 1
    taken = [json.loads((run / "shared.json").read_text()) for run in runs if (run / "shared.json").exists()]
    assert len(taken) == 2 and all(t["stages"] == 1 for t in taken)
    unshared = tmp_path / "unshared"
    code, _, err = run_cli(capsys, "sweep", path, "--out", unshared, "--workers", "1", "--no-progress", "--no-share")
    assert code == 0, err
    assert not (unshared / "shared").exists() and not list((unshared / "runs").glob("*/shared.json"))
    for run in runs:
        assert_same_model_files(run, unshared / "runs" / run.name)



@pytest.mark.mnist
@pytest.mark.slow
def test_a_sweep_on_a_scheduler_and_retry_failed(capsys, tmp_path, mnist_dir, loopback_cluster):
    path = write_sweep(tmp_path, '[grid]\n"stages[0].lr" = [0.05, 1e6]\n', root=mnist_dir)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "sweep", path, "--out", out, "--scheduler", loopback_cluster, "--no-progress")
    assert code == 1 and f"running on the scheduler at {loopback_cluster}" in err
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["name"], r["status"]) for r in rows] == [("train.lr=0.05", "finished"), ("train.lr=1000000.0", "failed")]
    assert rows[0]["file_bytes"] == (out / "runs" / "train.lr=0.05" / "model.mpdz").stat().st_size
    finished_model = (out / "runs" / "train.lr=0.05" / "model.h5").stat().st_mtime_ns
    failed_log = out / "runs" / "train.lr=1000000.0" / "output.log"
    assert failed_log.read_text().count("mpdref sweep: starting") == 1

    code, _, err = run_cli(capsys, "sweep", path, "--out", out, "--scheduler", loopback_cluster, "--no-progress",
                           "--retry-failed")
    assert code == 1 and "1 finished, 1 to run" in err
    assert failed_log.read_text().count("mpdref sweep: resuming") == 1  # the failed run, from its checkpoint
    assert (out / "runs" / "train.lr=0.05" / "model.h5").stat().st_mtime_ns == finished_model
    assert json.loads((out / "results.json").read_text())["runs"][1]["status"] == "failed"


@pytest.mark.mnist
@pytest.mark.slow
def test_a_worker_killed_mid_run_resumes_and_the_models_are_bit_identical(tmp_path, mnist_dir, loopback_cluster):
    from distributed import Client

    path = write_sweep(tmp_path, '[grid]\n"experiment.seed" = [0, 1]\n', root=mnist_dir, train_limit=1000, epochs=8)
    reference, out = tmp_path / "reference", tmp_path / "killed"
    _, counts = run_sweep(path, reference, scheduler=loopback_cluster, progress=False)
    assert counts["finished"] == 2

    sweep = threading.Thread(target=run_sweep, args=(path, out), kwargs={"scheduler": loopback_cluster,
                                                                          "progress": False})
    sweep.start()
    killed = None
    with Client(loopback_cluster) as client:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline:
            for run in (out / "runs").glob("*"):
                log = run / "log.jsonl"
                # two epochs done, six to go: the middle of the run
                if log.exists() and log.read_bytes().count(b"\n") >= 2 and not (run / "metrics.json").exists():
                    worker = next((w for w, keys in client.processing().items()
                                   if any(str(k).startswith(f"mpdref-run-{run.name}-") for k in keys)), None)
                    if worker is not None:
                        pid = client.run(os.getpid, workers=[worker])[worker]
                        os.kill(pid, signal.SIGKILL)
                        killed = run
                        break
            time.sleep(0.005)
    sweep.join(timeout=180)
    assert killed is not None, "no run was caught in the middle"
    assert not sweep.is_alive()
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert "resuming" in (killed / "output.log").read_text()  # from its checkpoint, not from the start
    for name in ("seed=0", "seed=1"):
        assert_same_model_files(reference / "runs" / name, out / "runs" / name)
        drop = {"seconds", "samples_per_second"}
        records = [[{k: v for k, v in json.loads(line).items() if k not in drop}
                    for line in (d / "runs" / name / "log.jsonl").read_text().splitlines()] for d in (reference, out)]
        assert records[0] == records[1]


def test_the_cluster_is_given_no_more_runs_than_its_threads(tmp_path, capsys):
    """Dask hands independent tasks to workers as they come, expecting each to take half a second: a
    sweep given all at once left one worker idle while the other held the rest. _follow gives the
    cluster at most as many runs as it has threads, the next as one settles, in the points' order."""
    from types import SimpleNamespace

    from mpdref import sweep as sweep_module

    submitted, in_flight = [], []
    live = set()  # runs submitted and not yet seen done

    class Future:
        status = "finished"

        def __init__(self, name):
            self.name, self.polls = name, 0

        def done(self):  # done at the third look
            self.polls += 1
            if self.polls > 2:
                live.discard(self.name)
            return self.polls > 2

        def result(self):
            return "failed"  # "failed" reads no metrics.json: the test needs no run directory

    class Client:
        def nthreads(self):
            return {"tcp://a": 1, "tcp://b": 2}  # 3 threads

    def submit(point):
        submitted.append(point.name)
        live.add(point.name)
        in_flight.append(len(live))
        return Future(point.name)

    points = [SimpleNamespace(name=f"run{i}") for i in range(7)]
    counts = {"done": 0, "failed": 0}
    sweep_module._follow(Client(), submit, points, tmp_path, len(points), counts, progress=False)
    assert submitted == [p.name for p in points]
    assert max(in_flight) == 3 and in_flight[:3] == [1, 2, 3]
    assert counts == {"done": 0, "failed": 7}
    assert capsys.readouterr().err.count("mpdref sweep: [") == 7
