"""`mpdref reproduce`: the claims table against configs/, reading claims from run directories written
here by hand (finished, failed, unfinished, missing, unmeasurable), REPRODUCTION.md, the --quick
shrinking of every config, and one small end-to-end reproduction on Dask."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from mpdref import models
from mpdref.admm import project_sparse
from mpdref.compress import compress
from mpdref.reproduce import (CLAIMS, CONFIGS, QUICK_DATA, REPORT, SMOKE_LABEL, Claim, Measure, claim_problems,
                              claimed_configs, meets, paper_number, reproduction_sweep, write_report)
from mpdref.runner.config import ConfigError, config_digest, load_config
from mpdref.runner.files import write_json

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the claims table


def test_every_paper_config_is_claimed_and_every_claim_names_one():
    """A config added to configs/ without a claim (or a claim naming a removed config) fails here."""
    assert CONFIGS == ROOT / "configs"
    assert sorted(claimed_configs()) == sorted(p.name for p in CONFIGS.glob("*.toml"))


def test_every_claim_can_be_read_from_a_run_of_its_config():
    """Stages named by the claims exist in their configs (shrunk or not), units match, baselines are given."""
    for quick in (False, True):
        sweep = reproduction_sweep(quick)  # raises ConfigError naming every problem
        assert [p.name for p in sweep.points] == [Path(n).stem for n in claimed_configs()]
    config = load_config(CONFIGS / "admm-lenet-300-100.toml")
    bad = Claim("admm", "a claim", "admm-lenet-300-100.toml",
                (Measure("fewer weights", ">=", "30x", "retrain-33x"), Measure("test error", "<=", "1.8x"),
                 Measure("file ratio", ">=", "40x", "retrain-32x"), Measure("error above dense", "<", "1.00 points")))
    problems = claim_problems(bad, config)
    assert len(problems) == 4, problems
    assert "no stage named 'retrain-33x' (stages: train, admm-32x, retrain-32x, admm-60x" in problems[0]
    assert "test error is in %, the paper's number '1.8x' in x" in problems[1]
    assert "file ratio is read at the run's end, not after a stage" in problems[2]
    assert "error above dense needs a baseline config" in problems[3]
    with pytest.raises(ConfigError, match="retrain-33x"):
        reproduction_sweep(claims=CLAIMS + (bad,))


def test_quick_shrinks_every_training_stage_of_every_config_and_each_validates():
    full = {p.name: p.config for p in reproduction_sweep().points}
    quick = reproduction_sweep(True)
    passes = 0
    for point in quick.points:
        assert config_digest(full[point.name]) == config_digest(load_config(CONFIGS / f"{point.name}.toml"))
        config = point.config
        assert config["data"]["train_limit"] == QUICK_DATA["data.train_limit"]
        assert config["data"]["validation_size"] == QUICK_DATA["data.validation_size"]
        assert len(config["stages"]) == len(full[point.name]["stages"])
        for stage, original in zip(config["stages"], full[point.name]["stages"]):
            shrunk = {k: v for k, v in stage.items() if k in ("epochs", "updates", "epochs_per_update")}
            assert all(v == 1 for v in shrunk.values()), (point.name, stage)
            # nothing else of the stage changes (the settings that decide what it does)
            assert {k: v for k, v in stage.items() if k not in shrunk} == \
                {k: v for k, v in original.items() if k not in shrunk}
            passes += len(shrunk)
    # every stage type that trains was found: train, teacher, quantize (epochs) and both ADMM stages
    types = {s["type"] for p in quick.points for s in p.config["stages"] if "epochs" in s or "updates" in s}
    assert types == {"train", "teacher", "quantize", "admm_prune", "admm_quantize"}
    assert passes > 60


def test_a_number_is_compared_at_the_decimals_the_paper_writes():
    assert paper_number("1,910x") == (1910.0, 0, "x")
    assert paper_number("71.2x") == (71.2, 1, "x")
    assert paper_number("1.58%") == (1.58, 2, "%")
    assert paper_number("1.00 points") == (1.0, 2, "points")
    with pytest.raises(ValueError, match="not a paper's number"):
        paper_number("40")
    assert meets(39.6, Measure("file ratio", ">=", "40x"))       # Han et al.'s 40x is 1,070 KB / 27 KB
    assert not meets(39.4, Measure("file ratio", ">=", "40x"))
    assert meets(430500 / 6050, Measure("fewer weights", ">=", "71.2x"))  # 71.157x: the paper's 71.2x
    assert not meets(71.14, Measure("fewer weights", ">=", "71.2x"))
    assert meets(1.58, Measure("test error", "<=", "1.58%")) and not meets(1.59, Measure("test error", "<=", "1.58%"))
    assert meets(2.40 - 1.50, Measure("error above dense", "<", "1.00 points"))
    assert not meets(2.50 - 1.50, Measure("error above dense", "<", "1.00 points"))  # less than, strictly


# ----------------------------------------------------------------------------- claims read from run directories


def _finished(runs: Path, stem: str, stages: list, test_error: float, config=None) -> Path:
    """A finished run directory written by hand: config.json (the file's resolved config), metrics.json."""
    run = runs / stem
    (run / "stages").mkdir(parents=True, exist_ok=True)
    config = config or load_config(CONFIGS / f"{stem}.toml")
    write_json(run / "config.json", config)
    write_json(run / "metrics.json", {"name": stem, "model": config["experiment"]["model"], "seed": 0,
                                      "parameters": 1, "stages": stages, "test_error": test_error,
                                      "val_error": test_error, "train_seconds": 1.0})
    return run


def _pruned(model: str, keep: dict):
    """A network with exactly round(keep x size) weights of each named weight kept, as an admm_prune stage
    leaves it (mpdref.admm.project_sparse)."""
    net = models.build(model, np.float32, seed=0)
    for name, fraction in keep.items():
        net.set_mask(name, project_sparse(net.params[name], fraction)[1])
    return net


def _kept(net) -> int:
    return sum(int(m.sum()) for m in net.masks.values()) + sum(
        net.params[n].size for n in net.weight_names() if n not in net.masks)


def _row(text: str, config: str, first: str) -> str:
    """The table row of the claim of `config` whose text starts with `first`."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {first}") and f"`{config}`" in line]
    assert len(rows) == 1, (config, first, rows)
    return rows[0]


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduction")
    runs = out / "runs"
    encode = {"stage": "encode", "type": "encode"}
    _finished(runs, "deep-compression-lenet-300-100", [{**encode, "ratio": 41.87, "test_error": 0.0154}], 0.0154)
    _finished(runs, "deep-compression-lenet-5", [{**encode, "ratio": 39.6, "test_error": 0.0075}], 0.0075)
    _finished(runs, "lenet-300-100", [{"stage": "train", "type": "train", "test_error": 0.0150}], 0.0150)
    _finished(runs, "mpd-lenet-300-100", [{"stage": "mpd", "type": "mpd", "ratio": 10.27}], 0.0240)
    _finished(runs, "mpd-lenet-300-100-k", [{"stage": "mpd", "type": "mpd", "ratio": 9.69}], 0.0255)
    _finished(runs, "mpd-lenet-5", [{"stage": "mpd", "type": "mpd", "ratio": 10.28}], 0.0101)  # no lenet-5 run

    # one-shot ADMM: the paper's fractions keep 100 + 2,000 + 3,600 + 350 of LeNet-5's 430,500 weights
    net = _pruned("lenet-5", load_config(CONFIGS / "admm-lenet-5.toml")["stages"][1]["keep"])
    assert _kept(net) == 6050
    models.save(net, _finished(runs, "admm-lenet-5", [], 0.0080) / "model.h5")

    # two ADMM steps: each claim reads the model its stage left (model.h5 here is dense: 1x)
    steps = load_config(CONFIGS / "admm-lenet-300-100.toml")["stages"]
    run = _finished(runs, "admm-lenet-300-100", [{"stage": "retrain-32x", "type": "train", "test_error": 0.0161},
                                                 {"stage": "retrain-60x", "type": "train", "test_error": 0.0170}],
                    0.0170)
    step1, step2 = _pruned("lenet-300-100", steps[1]["keep"]), _pruned("lenet-300-100", steps[3]["keep"])
    models.save(step1, run / "stages" / "03-retrain-32x.h5")
    models.save(step2, run / "stages" / "05-retrain-60x.h5")
    models.save(models.build("lenet-300-100", np.float32, seed=0), run / "model.h5")

    # ADMM-NN: the weight data of model.mpdz (unquantized here: 32 bits per kept weight) and the file's ratio
    compressed = _pruned("lenet-5", load_config(CONFIGS / "admm-compressed-lenet-5.toml")["stages"][3]["keep"])
    run = _finished(runs, "admm-compressed-lenet-5", [{**encode, "ratio": 317.6, "test_error": 0.0080}], 0.0080)
    compress(compressed, run / "model.mpdz")

    # a failed run, an unfinished one, a finished one that lacks the stage its claim reads, a shrunk one
    failed = runs / "admm-binary-lenet-5"
    failed.mkdir()
    write_json(failed / "config.json", load_config(CONFIGS / "admm-binary-lenet-5.toml"))
    write_json(failed / "failed.json", {"error": "FloatingPointError", "message": "training diverged | in epoch 3"})
    unfinished = runs / "admm-progressive-lenet-5"
    unfinished.mkdir()
    write_json(unfinished / "config.json", load_config(CONFIGS / "admm-progressive-lenet-5.toml"))
    _finished(runs, "darb-lenet-5", [{**encode, "ratio": 42.4, "test_error": 0.0070}], 0.0070)
    shrunk = reproduction_sweep(True, only=["darb-lenet-300-100"]).points[0].config
    _finished(runs, "darb-lenet-300-100", [{"stage": "train-11", "type": "train", "test_error": 0.0168},
                                           {**encode, "ratio": 45.5, "test_error": 0.0172}], 0.0172, config=shrunk)
    run = runs / "darb-lenet-300-100"
    models.save(_pruned("lenet-300-100", {"fc1.weight": 0.074, "fc2.weight": 0.09, "fc3.weight": 0.26}),
                run / "stages" / "11-train-11.h5")
    path, outcomes = write_report(out, quick=False)
    return {"text": path.read_text(), "outcomes": outcomes, "path": path, "step1": step1, "step2": step2,
            "compressed": compressed}


def test_claims_are_met_or_not_at_the_papers_numbers(by_hand):
    text = by_hand["text"]
    assert _row(text, "deep-compression-lenet-300-100.toml", "LeNet-300-100") == (
        "| LeNet-300-100: pruning, 5-bit trained quantization and Huffman coding; the file against dense float32 | "
        "≥ 40x, ≤ 1.58% | 41.9x, 1.54% | `deep-compression-lenet-300-100.toml` | met |")
    assert _row(text, "deep-compression-lenet-5.toml", "LeNet-5").endswith(
        "| ≥ 39x, ≤ 0.74% | 39.6x, 0.75% ✗ | `deep-compression-lenet-5.toml` | not met |")
    assert _row(text, "lenet-300-100.toml", "LeNet-300-100, dense").endswith("| ≤ 1.64% | 1.50% | "
                                                                              "`lenet-300-100.toml` | met |")
    # relative to the dense run: 2.40% - 1.50% and 2.55% - 1.50%
    assert "| ≥ 10x, < 1.00 points | 10.3x, +0.90 points | `mpd-lenet-300-100.toml` against `lenet-300-100.toml` " \
           "| met |" in _row(text, "mpd-lenet-300-100.toml", "LeNet-300-100, fc1")
    assert "| 9.7x, +1.05 points ✗ | `mpd-lenet-300-100-k.toml` against `lenet-300-100.toml` | not met |" in \
           _row(text, "mpd-lenet-300-100-k.toml", "LeNet-300-100, every")
    # fewer weights from the model files: model.h5, and the models the named stages left
    assert "| 71.16x, 0.80% | `admm-lenet-5.toml` | met |" in _row(text, "admm-lenet-5.toml", "LeNet-5, one-shot")
    first = 266200 / _kept(by_hand["step1"])
    second = 266200 / _kept(by_hand["step2"])
    assert 31 < first < 33 and 60 < second < 63
    assert f"| {first:.1f}x, 1.61% | `admm-lenet-300-100.toml` after stage `retrain-32x` | met |" in \
           _row(text, "admm-lenet-300-100.toml", "LeNet-300-100, first")
    assert f"| {second:.1f}x, 1.70% ✗ | `admm-lenet-300-100.toml` after stage `retrain-60x` | not met |" in \
           _row(text, "admm-lenet-300-100.toml", "LeNet-300-100, second")
    # ADMM-NN: the weight data is 32 bits per kept (unquantized) weight here: far from 1,910x; the file meets 300x
    weight_data = 430500 / _kept(by_hand["compressed"])
    assert 135 < weight_data < 150
    assert f"| {weight_data:,.1f}x ✗, 0.80% | `admm-compressed-lenet-5.toml` | not met |" in \
           _row(text, "admm-compressed-lenet-5.toml", "LeNet-5, progressive")
    assert "| 317.6x, 0.80% | `admm-compressed-lenet-5.toml` | met |" in \
           _row(text, "admm-compressed-lenet-5.toml", "The same network")


def test_failed_unfinished_missing_and_unmeasurable_runs_are_said_so(by_hand):
    text = by_hand["text"]
    assert _row(text, "admm-binary-lenet-5.toml", "LeNet-5, every").endswith(
        "| - | `admm-binary-lenet-5.toml` | failed |")
    assert "- `admm-binary-lenet-5.toml`, failed: FloatingPointError: training diverged \\| in epoch 3" not in text
    assert "- `admm-binary-lenet-5.toml`, failed: FloatingPointError: training diverged | in epoch 3" in text
    for step in ("second", "third"):
        assert _row(text, "admm-progressive-lenet-5.toml", f"LeNet-5, progressive ADMM pruning, {step}").endswith(
            "| - | `admm-progressive-lenet-5.toml` after stage " + ("`retrain-167x`" if step == "second" else
                                                                   "`retrain-246x`") + " | unfinished |")
    assert text.count("- `admm-progressive-lenet-5.toml`, unfinished: started, not finished") == 1
    # the baseline is missing: the claim is not run, and says why
    assert _row(text, "mpd-lenet-5.toml", "LeNet-5, conv2").endswith(
        "| - | `mpd-lenet-5.toml` against `lenet-5.toml` | not run |")
    assert "- `mpd-lenet-5.toml`, not run: its baseline lenet-5.toml: no run directory" in text
    assert _row(text, "deep-mnist.toml", "Deep MNIST (TensorFlow's)").endswith("| - | `deep-mnist.toml` | not run |")
    # finished, but metrics.json has no stage train-7 and there is no stages/07-train-7.h5
    assert _row(text, "darb-lenet-5.toml", "LeNet-5, density").endswith(
        "| - | `darb-lenet-5.toml` after stage `train-7` | cannot measure |")
    assert "- `darb-lenet-5.toml`, cannot measure: MeasureError: " in text and "07-train-7.h5: missing" in text
    assert _row(text, "darb-lenet-5.toml", "LeNet-5 with").endswith("| 42.4x, 0.70% | `darb-lenet-5.toml` | met |")
    # a run of another config than the file's is marked, and the header says which
    assert "(*config changed*)" in _row(text, "darb-lenet-300-100.toml", "LeNet-300-100, density")
    assert "the runs of `darb-lenet-300-100.toml` ran another config" in text
    counts = {s: sum(o.status == s for o in by_hand["outcomes"]) for s in
              ("met", "not met", "failed", "unfinished", "not run", "cannot measure")}
    assert counts == {"met": 7, "not met": 6, "failed": 1, "unfinished": 2, "not run": 9, "cannot measure": 1}
    assert "26 claims: 7 met, 6 not met, 1 failed, 2 unfinished, 9 not run, 1 cannot measure." in text
    assert SMOKE_LABEL not in text.lower()
    # every paper has its table, in the table's order, and no claim is left out
    assert [line for line in text.splitlines() if line.startswith("## ")][:7] == [
        "## Han et al. 2016, Deep Compression (ICLR 2016, arXiv 1510.00149)",
        "## Supic et al. 2018, MPDCompress (arXiv 1805.12085)",
        "## Zhang et al. 2018, ADMM weight pruning (ECCV 2018, arXiv 1804.03294)",
        "## Ye et al. 2019, progressive ADMM (arXiv 1903.09769)",
        "## Ren et al. 2019, ADMM-NN (ASPLOS 2019, arXiv 1812.11677)",
        "## Ren et al. 2020, DARB (AAAI 2020, arXiv 1911.08020)",
        "## LeNet dense baselines (Han et al. 2016, Table 1; TensorFlow's Deep MNIST tutorial)"]
    assert sum(line.startswith("| ") and not line.startswith("| claim") for line in text.splitlines()) == len(CLAIMS)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.mnist
@pytest.mark.slow
def test_a_quick_reproduction_of_one_config_on_dask(capsys, tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setenv("MPDREF_DATA", str(mnist_dir))  # the workers look MNIST up as `mpdref run` does
    code, _, err = run_cli(capsys, "reproduce", "--only", "no-such-config", "--out", tmp_path / "x")
    assert code == 1 and "--only: 'no-such-config' is not a config that a claim names (those are: " in err
    assert not (tmp_path / "x").exists()

    out = tmp_path / "quick"
    code, stdout, err = run_cli(capsys, "reproduce", "--quick", "--only", "mpd-lenet-300-100.toml", "--out", out,
                                "--workers", "1", "--no-progress")
    assert code == 0, err
    assert "2 runs" in err and "running on a LocalCluster of 1 worker" in err
    text = (out / REPORT).read_text()
    assert stdout.strip() == text.strip() and SMOKE_LABEL[1:] in text
    results = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["name"], r["status"]) for r in results] == [("mpd-lenet-300-100", "finished"),
                                                          ("lenet-300-100", "finished")]
    # each number in the report is the run directory's
    mpd = json.loads((out / "runs" / "mpd-lenet-300-100" / "metrics.json").read_text())
    dense = json.loads((out / "runs" / "lenet-300-100" / "metrics.json").read_text())
    config = json.loads((out / "runs" / "mpd-lenet-300-100" / "config.json").read_text())
    assert config["data"]["train_limit"] == 2000 and config["stages"][1]["epochs"] == 1
    ratio = next(s["ratio"] for s in mpd["stages"] if s["type"] == "mpd")
    above = 100 * mpd["test_error"] - 100 * dense["test_error"]
    assert f"| {ratio:.1f}x, {above:+.2f} points" in _row(text, "mpd-lenet-300-100.toml", "LeNet-300-100, fc1")
    assert _row(text, "lenet-300-100.toml", "LeNet-300-100, dense").endswith(
        f"| {100 * dense['test_error']:.2f}% ✗ | `lenet-300-100.toml` | not met |")  # one epoch on 2,000 images
    assert _row(text, "lenet-5.toml", "LeNet-5 (Caffe's)").endswith("| - | `lenet-5.toml` | not run |")
    assert "24 not run" in text
    assert (out / "figures" / "tradeoff.png").stat().st_size > 10_000
    assert (out / "figures" / "mpd-lenet-300-100-masks.png").exists()
    assert "![tradeoff](figures/tradeoff.png)" in text and "- [mpd-lenet-300-100-masks]" in text

    # again: nothing runs; `mpdref show` reads the directory as a sweep's
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    code, again, err = run_cli(capsys, "reproduce", "--quick", "--only", "mpd-lenet-300-100", "--out", out,
                               "--no-progress")
    assert code == 0 and again == stdout and "2 finished, 0 to run" in err and "running on" not in err
    assert before == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    code, shown, _ = run_cli(capsys, "show", out)
    assert code == 0 and "mpd-lenet-300-100" in shown and "2 finished" in shown
    # the full reproduction into the same directory would mix shrunk and full runs: refused
    code, _, err = run_cli(capsys, "reproduce", "--only", "mpd-lenet-300-100", "--out", out, "--no-progress")
    assert code == 1 and "hold runs of another config" in err
