"""`mpdref reproduce`: every paper configuration in configs/ run as one sweep, and REPRODUCTION.md.

One table, CLAIMS, holds what the papers claim that mpdref reproduces: per claim its paper, its
words, the numbers as the paper writes them ("40x", "1.58%"), the config in configs/ that
measures it, and, where the claim is relative to a dense network ("less than 1% accuracy
loss"), the config of that baseline. A number is read from the finished run directory
(QUANTITIES: metrics.json, the model after a named stage, model.mpdz's size table), never from
memory, and compared as the paper writes it: rounded to the paper's decimals, so 39.6x meets
"40x" (Han et al.'s own 40x is 1,070 KB / 27 KB = 39.6x) and 71.16x meets "71.2x".

    DIR/sweep.json, DIR/runs/NAME/, DIR/results.csv, .json
                            the sweep engine's (mpdref.sweep): one run per config, NAME its file's stem
    DIR/REPRODUCTION.md     per paper a table: claim, the paper's number, mpdref's, the config,
                            and met / not met / failed / unfinished / not run / cannot measure
    DIR/figures/            the papers' figures of those runs (mpdref.figures.write_figures)

`--quick` shrinks every run (QUICK_DATA, and every stage setting in QUICK_PASSES set to 1,
found by the stage type's options so that a new config shrinks too): a smoke check of the
whole pipeline, whose report says that its numbers are not comparable to the papers'.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from mpdref import __version__, data, models
from mpdref.compress import size_table
from mpdref.figures import write_figures
from mpdref.io.atomic import write_bytes_atomic
from mpdref.prune import weights_kept
from mpdref.runner.config import ConfigError, config_digest, load_config, resolve_config
from mpdref.runner.files import RunDirectoryError, read_json
from mpdref.runner.registry import STAGES
from mpdref.sweep import (FAILED, Point, Sweep, apply_settings, config_value, prepare_sweep_directory,
                          run_points, run_status, write_results)
from mpdref.train import PAPER_DEEP_COMPRESSION, PAPER_DENSE_ERROR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: the paper configurations: configs/ of the source checkout (they are not installed with the package)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REPORT = "REPRODUCTION.md"
DEFAULT_OUT = {False: Path("runs/reproduce"), True: Path("runs/reproduce-quick")}
#: sweep.json's keys, so that `mpdref show DIR` names each run's experiment and network
KEYS = ("experiment.name", "experiment.model")

#: --quick: every run trains on the first 2,000 training images and validates on 1,000 ...
QUICK_DATA = {"data.train_limit": 2000, "data.validation_size": 1000}
#: ... and every stage setting that counts passes over the training data is 1, wherever a stage
#: type has the setting (train, teacher, quantize: epochs; admm_*: updates and epochs_per_update)
QUICK_PASSES = ("epochs", "updates", "epochs_per_update")
SMOKE_LABEL = "smoke check, not comparable to the papers"


# ----------------------------------------------------------------------------- the claims

PAPERS = {
    "deep-compression": "Han et al. 2016, Deep Compression (ICLR 2016, arXiv 1510.00149)",
    "mpdcompress": "Supic et al. 2018, MPDCompress (arXiv 1805.12085)",
    "admm": "Zhang et al. 2018, ADMM weight pruning (ECCV 2018, arXiv 1804.03294)",
    "progressive-admm": "Ye et al. 2019, progressive ADMM (arXiv 1903.09769)",
    "admm-nn": "Ren et al. 2019, ADMM-NN (ASPLOS 2019, arXiv 1812.11677)",
    "darb": "Ren et al. 2020, DARB (AAAI 2020, arXiv 1911.08020)",
    "dense": "LeNet dense baselines (Han et al. 2016, Table 1; TensorFlow's Deep MNIST tutorial)",
}


@dataclass(frozen=True)
class Measure:
    """One number of a claim: a quantity (a key of QUANTITIES), how it must compare with the paper's
    number ("<=", "<" or ">="), that number as the paper writes it ("1.58%", "71.2x", "1,910x",
    "1.00 points"), and the stage after which it is read (the config's stage name; None: the run's end)."""

    quantity: str
    op: str
    paper: str
    stage: str | None = None


@dataclass(frozen=True)
class Claim:
    paper: str                 # a key of PAPERS
    claim: str                 # the claim in words
    config: str                # the file in configs/ whose run measures it
    measures: tuple            # Measure, all of which must hold
    baseline: str | None = None  # the config of the dense run that "error above dense" subtracts
    note: str = ""             # where a number comes from when it is not the paper's own


def _ratio(x) -> str:
    return f"{x:,g}x"


def _pct(fraction) -> str:
    return f"{100 * fraction:.2f}%"


_DC = PAPER_DEEP_COMPRESSION
_MPD = "stored 10x smaller than dense float32 with less than 1% accuracy loss (here: under 1 point of test error " \
    "above the dense run)"
_MPD_LOSS = Measure("error above dense", "<", "1.00 points")

CLAIMS = (
    Claim("deep-compression", "LeNet-300-100: pruning, 5-bit trained quantization and Huffman coding; the file "
          "against dense float32", "deep-compression-lenet-300-100.toml",
          (Measure("file ratio", ">=", _ratio(_DC["lenet-300-100"]["ratio"])),
           Measure("test error", "<=", _pct(_DC["lenet-300-100"]["test_error"])))),
    Claim("deep-compression", "LeNet-5: pruning, trained quantization and Huffman coding; the file against dense "
          "float32", "deep-compression-lenet-5.toml",
          (Measure("file ratio", ">=", _ratio(_DC["lenet-5"]["ratio"])),
           Measure("test error", "<=", _pct(_DC["lenet-5"]["test_error"])))),

    Claim("mpdcompress", f"LeNet-300-100, fc1 and fc2 masked: {_MPD}", "mpd-lenet-300-100.toml",
          (Measure("MPD ratio", ">=", "10x"), _MPD_LOSS), baseline="lenet-300-100.toml"),
    Claim("mpdcompress", f"Deep MNIST, fc1 masked: {_MPD}", "mpd-deep-mnist.toml",
          (Measure("MPD ratio", ">=", "10x"), _MPD_LOSS), baseline="deep-mnist.toml"),
    Claim("mpdcompress", "LeNet-5, conv2 and fc1 masked: the same claim", "mpd-lenet-5.toml",
          (Measure("MPD ratio", ">=", "10x"), _MPD_LOSS), baseline="lenet-5.toml",
          note="the paper's claim carried to LeNet-5, which it does not report"),
    Claim("mpdcompress", "LeNet-300-100, every layer masked with k = 10 (the README's test error against k)",
          "mpd-lenet-300-100-k.toml", (Measure("MPD ratio", ">=", "10x"), _MPD_LOSS), baseline="lenet-300-100.toml",
          note="the paper's claim at the k of its 10x"),
    Claim("mpdcompress", "LeNet-300-100: MPD masks, 5-bit codebooks and Huffman coding, a LeNet-5 teacher; the "
          "file against dense float32", "mpd-quantized-lenet-300-100.toml",
          (Measure("file ratio", ">=", "60x"), Measure("test error", "<=", "1.80%")),
          note="mpdref's target from the README, not the paper's"),

    Claim("admm", "LeNet-5, one-shot ADMM pruning to the paper's per-layer fractions, then retraining",
          "admm-lenet-5.toml", (Measure("fewer weights", ">=", "71.2x"), Measure("test error", "<=", "0.80%"))),
    Claim("admm", "LeNet-300-100, first ADMM step, after retraining", "admm-lenet-300-100.toml",
          (Measure("fewer weights", ">=", "30x", "retrain-32x"), Measure("test error", "<=", "1.80%", "retrain-32x")),
          note="mpdref's required target from the README"),
    Claim("admm", "LeNet-300-100, second ADMM step, after retraining", "admm-lenet-300-100.toml",
          (Measure("fewer weights", ">=", "60x", "retrain-60x"), Measure("test error", "<=", "1.64%", "retrain-60x")),
          note="mpdref's target from the README: the error of Han et al.'s dense network"),
    Claim("admm", "LeNet-300-100 distilled from a LeNet-5 teacher, first ADMM step, after retraining",
          "admm-lenet-300-100-teacher.toml",
          (Measure("fewer weights", ">=", "30x", "retrain-32x"), Measure("test error", "<=", "1.80%", "retrain-32x")),
          note="mpdref's required target from the README"),
    Claim("admm", "LeNet-300-100 distilled from a LeNet-5 teacher, second ADMM step, after retraining",
          "admm-lenet-300-100-teacher.toml",
          (Measure("fewer weights", ">=", "60x", "retrain-60x"), Measure("test error", "<=", "1.64%", "retrain-60x")),
          note="mpdref's target from the README: the error of Han et al.'s dense network"),

    Claim("progressive-admm", "LeNet-5, progressive ADMM pruning, second step, after retraining",
          "admm-progressive-lenet-5.toml",
          (Measure("fewer weights", ">=", "167x", "retrain-167x"),
           Measure("test error", "<=", "0.80%", "retrain-167x")),
          note="the error bound is the dense LeNet-5's: the paper claims no accuracy loss"),
    Claim("progressive-admm", "LeNet-5, progressive ADMM pruning, third step, after retraining",
          "admm-progressive-lenet-5.toml",
          (Measure("fewer weights", ">=", "246x", "retrain-246x"),
           Measure("test error", "<=", "0.80%", "retrain-246x")),
          note="the error bound is the dense LeNet-5's: the paper claims \u201c(almost) zero accuracy loss\u201d"),
    Claim("progressive-admm", "LeNet-5, every weight tensor binarized (\u00b1s, one bit per weight)",
          "admm-binary-lenet-5.toml",
          (Measure("weight-data ratio", ">=", "32x"), Measure("test error", "<=", "0.80%")),
          note="the error bound: mpdref's required target from the README, the dense LeNet-5's"),

    Claim("admm-nn", "LeNet-5, progressive ADMM pruning and ADMM quantization (4, 2, 2 and 3 bits by layer); "
          "the weight data (kept weights x index bits, the paper's count)", "admm-compressed-lenet-5.toml",
          (Measure("weight-data ratio", ">=", "1,910x"), Measure("test error", "<=", "0.80%"))),
    Claim("admm-nn", "The same network's whole .mpdz file (positions, codebooks and biases included)",
          "admm-compressed-lenet-5.toml", (Measure("file ratio", ">=", "300x"), Measure("test error", "<=", "0.80%")),
          note="mpdref's target for the whole file"),

    Claim("darb", "LeNet-300-100, density-adaptive regular blocks: fewer weights before quantization",
          "darb-lenet-300-100.toml",
          (Measure("fewer weights", ">=", "13x", "train-11"), Measure("test error", "<=", "1.64%", "train-11"))),
    Claim("darb", "LeNet-300-100 with 5-bit codebooks and Huffman coding: the file against dense float32",
          "darb-lenet-300-100.toml", (Measure("file ratio", ">=", "40x"), Measure("test error", "<=", "1.64%"))),
    Claim("darb", "LeNet-300-100 distilled from a LeNet-5 teacher: fewer weights before quantization",
          "darb-lenet-300-100-teacher.toml",
          (Measure("fewer weights", ">=", "13x", "train-12"), Measure("test error", "<=", "1.64%", "train-12"))),
    Claim("darb", "LeNet-300-100 distilled from a LeNet-5 teacher, 5-bit codebooks: the file",
          "darb-lenet-300-100-teacher.toml",
          (Measure("file ratio", ">=", "40x"), Measure("test error", "<=", "1.64%"))),
    Claim("darb", "LeNet-5, density-adaptive regular blocks: fewer weights before quantization",
          "darb-lenet-5.toml",
          (Measure("fewer weights", ">=", "13x", "train-7"), Measure("test error", "<=", "0.80%", "train-7"))),
    Claim("darb", "LeNet-5 with codebooks and Huffman coding: the file against dense float32", "darb-lenet-5.toml",
          (Measure("file ratio", ">=", "39x"), Measure("test error", "<=", "0.80%"))),

    Claim("dense", "LeNet-300-100, dense, the default recipe", "lenet-300-100.toml",
          (Measure("test error", "<=", _pct(PAPER_DENSE_ERROR["lenet-300-100"])),)),
    Claim("dense", "LeNet-5 (Caffe's), dense, the default recipe", "lenet-5.toml",
          (Measure("test error", "<=", _pct(PAPER_DENSE_ERROR["lenet-5"])),)),
    Claim("dense", "Deep MNIST (TensorFlow's), dense", "deep-mnist.toml", (Measure("test error", "<=", "0.80%"),),
          note="the tutorial's \u201capproximately 99.2%\u201d accuracy"),
)




# ----------------------------------------------------------------------------- reading a number


class MeasureError(ValueError):
    """A finished run lacks what a claim reads (a stage, a file)."""


@dataclass(frozen=True)
class FinishedRun:
    """A finished run directory's config.json and metrics.json."""

    dir: Path
    config: dict
    metrics: dict

    @classmethod
    def read(cls, run_dir: Path) -> "FinishedRun":
        return cls(run_dir, read_json(run_dir / "config.json", "not a run directory"),
                   read_json(run_dir / "metrics.json", "a finished run has metrics.json"))

    def result(self, stage: str) -> dict:
        """metrics.json's result of the stage named `stage`."""
        found = next((r for r in self.metrics["stages"] if r.get("stage") == stage), None)
        if found is None:
            raise MeasureError(f"{self.dir}/metrics.json: no stage named {stage!r} "
                               f"(stages: {', '.join(r.get('stage', '?') for r in self.metrics['stages'])})")
        return found

    def model_file(self, stage: str | None) -> Path:
        """model.h5, or the model after the named stage (stages/NN-NAME.h5, as the runner names it)."""
        if stage is None:
            return self.dir / "model.h5"
        names = [s["name"] for s in self.config["stages"]]
        if stage not in names:
            raise MeasureError(f"{self.dir}/config.json: no stage named {stage!r}")
        return self.dir / "stages" / f"{names.index(stage) + 1:02d}-{stage}.h5"


def _test_error(run: FinishedRun, stage, baseline) -> float:
    return 100 * (run.result(stage) if stage else run.metrics)["test_error"]


def _file_ratio(run: FinishedRun, stage, baseline) -> float:
    encoded = [r for r in run.metrics["stages"] if r.get("type") == "encode"]
    if not encoded:
        raise MeasureError(f"{run.dir}/metrics.json: no encode stage")
    return encoded[-1]["ratio"]


def _fewer_weights(run: FinishedRun, stage, baseline) -> float:
    path = run.model_file(stage)
    if not path.exists():
        raise MeasureError(f"{path}: missing")
    return 1 / weights_kept(models.load(path))


def _weight_data_ratio(run: FinishedRun, stage, baseline) -> float:
    path = run.dir / "model.mpdz"
    if not path.exists():
        raise MeasureError(f"{path}: missing (the config has no encode stage)")
    return size_table(path)["weight_data_ratio"]


def _mpd_ratio(run: FinishedRun, stage, baseline) -> float:
    results = [r for r in run.metrics["stages"] if r.get("type") == "mpd"]
    if not results:
        raise MeasureError(f"{run.dir}/metrics.json: no mpd stage")
    return results[0]["ratio"]


def _error_above(run: FinishedRun, stage, baseline: FinishedRun) -> float:
    return _test_error(run, stage, None) - _test_error(baseline, None, None)


@dataclass(frozen=True)
class Quantity:
    unit: str      # how the paper writes it: "x", "%" or "points"
    read: object   # (FinishedRun, stage or None, baseline FinishedRun or None) -> the number in `unit`
    meaning: str   # said in the report
    staged: bool   # whether it can be read after a named stage (else only at the run's end)


QUANTITIES = {
    "test error": Quantity(
        "%", _test_error, "the error on the 10,000 MNIST test images (metrics.json; after a stage: its result)",
        staged=True),
    "file ratio": Quantity(
        "x", _file_ratio, "dense float32 bits / the bits of model.mpdz (the encode stage's ratio in metrics.json)",
        staged=False),
    "fewer weights": Quantity(
        "x", _fewer_weights, "all weights / the weights the masks keep, biases not counted (model.h5; after a "
        "stage: stages/NN-NAME.h5)", staged=True),
    "weight-data ratio": Quantity(
        "x", _weight_data_ratio, "dense float32 weight bits / kept weights x their fixed-width codebook index bits, "
        "the ADMM papers' count (weight_data_ratio of model.mpdz's size table)", staged=False),
    "MPD ratio": Quantity(
        "x", _mpd_ratio, "dense float32 bits / the bits stored under the MPD masks: blocks, biases, permutations, "
        "block boundaries (the mpd stage's ratio in metrics.json)", staged=False),
    "error above dense": Quantity(
        "points", _error_above, "the test error minus the baseline dense run's, in percentage points", staged=True),
}

_PAPER_NUMBER = re.compile(r"^(\d{1,3}(?:,\d{3})*|\d+)(?:\.(\d+))?(x|%| points?)$")
_SYMBOLS = {"<=": "\u2264", "<": "<", ">=": "\u2265"}


def paper_number(text: str) -> tuple[float, int, str]:
    """ "1,910x" -> (1910.0, 0, "x"); "1.58%" -> (1.58, 2, "%"); "1.00 points" -> (1.0, 2, "points"):
    the value, its decimals as written, its unit."""
    match = _PAPER_NUMBER.match(text)
    if match is None:
        raise ValueError(f"{text!r}: not a paper's number (write 40x, 71.2x, 1,910x, 1.58% or 1.00 points)")
    whole, decimals, unit = match.groups()
    value = float(whole.replace(",", "") + "." + (decimals or "0"))
    return value, len(decimals or ""), "points" if "point" in unit else unit


def meets(value: float, measure: Measure) -> bool:
    """Whether `value` (in the paper's unit) meets the paper's number, compared at the paper's decimals."""
    bound, decimals, _ = paper_number(measure.paper)
    shown = round(value, decimals)
    return {"<=": shown <= bound, "<": shown < bound, ">=": shown >= bound}[measure.op]


def format_value(value: float, measure: Measure) -> str:
    """A measured number in the paper's unit: errors to 0.01 (a test image), ratios to one decimal more
    than the paper writes."""
    _, decimals, unit = paper_number(measure.paper)
    if unit == "%":
        return f"{value:.2f}%"
    if unit == "points":
        return f"{value:+.2f} points"
    return f"{value:,.{decimals + 1}f}x"


def claimed_configs(claims=CLAIMS) -> list[str]:
    """Every config file that the claims name (their own and their baselines'), in claim order."""
    return list(dict.fromkeys(name for c in claims for name in (c.config, c.baseline) if name))


def claim_problems(claim: Claim, config: dict) -> list[str]:
    """What in `claim` cannot be read from a run of `config` (its resolved config): an unknown paper or
    quantity, a number that is not written as the quantity's unit, a stage the config does not have."""
    where = f"the claim {claim.claim!r} ({claim.config})"
    problems = [] if claim.paper in PAPERS else [f"{where}: unknown paper {claim.paper!r}"]
    names = [s["name"] for s in config["stages"]]
    for m in claim.measures:
        quantity = QUANTITIES.get(m.quantity)
        if quantity is None or m.op not in _SYMBOLS:
            problems.append(f"{where}: {m.quantity!r} {m.op!r}: expected one of {', '.join(QUANTITIES)} and "
                            f"one of {', '.join(_SYMBOLS)}")
            continue
        try:
            unit = paper_number(m.paper)[2]
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        if unit != quantity.unit:
            problems.append(f"{where}: {m.quantity} is in {quantity.unit}, the paper's number {m.paper!r} in {unit}")
        if m.stage is not None and not quantity.staged:
            problems.append(f"{where}: {m.quantity} is read at the run's end, not after a stage")
        elif m.stage is not None and m.stage not in names:
            problems.append(f"{where}: no stage named {m.stage!r} (stages: {', '.join(names)})")
        if m.quantity == "error above dense" and not claim.baseline:
            problems.append(f"{where}: {m.quantity} needs a baseline config")
    return problems


# ----------------------------------------------------------------------------- claims against runs


@dataclass(frozen=True)
class Outcome:
    claim: Claim
    status: str        # met, not met, failed, unfinished, not run, cannot measure
    values: tuple      # per measure: the number in the paper's unit, or None
    message: str = ""  # why not measured (a failed run's error, a missing file)
    as_paper: bool = True  # the runs' configs are configs/'s files as they are now (not shrunk by --quick)


STATUSES = ("met", "not met", "failed", "unfinished", "not run", "cannot measure")
_STATE = {"failed": "failed", "unfinished": "unfinished", "pending": "not run"}


def _failure(run_dir: Path) -> str:
    try:
        record = read_json(run_dir / FAILED, "")
        return f"{record['error']}: {record['message']}"
    except (RunDirectoryError, KeyError, TypeError):
        return "(no message)"


def _as_paper(run: FinishedRun, configs: Path) -> bool:
    """Whether the run's config is configs/NAME.toml as it is now. Both are resolved by today's runner
    (as a resume resolves config.json): a default added since the run was made is no difference."""
    try:
        ran = resolve_config(run.config, str(run.dir / "config.json"))
        return config_digest(ran) == config_digest(load_config(configs / f"{run.dir.name}.toml"))
    except ConfigError:
        return False


def assess(claim: Claim, runs: Path, configs: Path = CONFIGS) -> Outcome:
    """The claim against the run directories RUNS/STEM of its config and baseline, read from their files."""
    needed = [claim.config] + ([claim.baseline] if claim.baseline else [])
    for name in needed:
        run_dir = runs / Path(name).stem
        state = run_status(run_dir)
        if state != "finished":
            detail = {"failed": _failure(run_dir), "unfinished": "started, not finished (call again to resume it)",
                      "pending": "no run directory" if name != claim.config else ""}[state]
            what = "" if name == claim.config else f"its baseline {name}: "
            return Outcome(claim, _STATE[state], (None,) * len(claim.measures), what + detail if detail else "")
    try:
        run = FinishedRun.read(runs / Path(claim.config).stem)
        baseline = FinishedRun.read(runs / Path(claim.baseline).stem) if claim.baseline else None
        values = tuple(float(QUANTITIES[m.quantity].read(run, m.stage, baseline)) for m in claim.measures)
    except (ValueError, KeyError, TypeError, OSError) as e:  # FormatError, RunDirectoryError, MeasureError
        return Outcome(claim, "cannot measure", (None,) * len(claim.measures), f"{type(e).__name__}: {e}")
    as_paper = _as_paper(run, configs) and (baseline is None or _as_paper(baseline, configs))
    met = all(meets(v, m) for v, m in zip(values, claim.measures))
    return Outcome(claim, "met" if met else "not met", values, as_paper=as_paper)


# ----------------------------------------------------------------------------- the report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _paper_cell(claim: Claim) -> str:
    text = ", ".join(f"{_SYMBOLS[m.op]} {m.paper}" for m in claim.measures)
    return text + (f"; {claim.note}" if claim.note else "")


def _measured_cell(outcome: Outcome) -> str:
    if outcome.values[0] is None:
        return "-"
    return ", ".join(format_value(v, m) + ("" if meets(v, m) else " \u2717")
                     for v, m in zip(outcome.values, outcome.claim.measures))


def _config_cell(outcome: Outcome) -> str:
    c = outcome.claim
    stages = list(dict.fromkeys(m.stage for m in c.measures if m.stage))
    text = f"`{c.config}`" + (f" after stage `{'`, `'.join(stages)}`" if stages else "")
    text += f" against `{c.baseline}`" if c.baseline else ""
    return text


def summary(outcomes) -> str:
    """One line: how many claims are met, not met, failed, ..."""
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    return f"{len(outcomes)} claims: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def format_report(outcomes: list[Outcome], quick: bool, figures=(), command: str = "mpdref reproduce") -> str:
    """REPRODUCTION.md's text: a header (the mode, how numbers are compared), a table per paper, the
    messages of runs that failed or could not be measured, how each quantity is read, the figures."""
    lines = ["# Reproducing the papers", ""]
    if quick:
        lines += [f"**{SMOKE_LABEL[0].upper() + SMOKE_LABEL[1:]}.** Every run was shrunk by `--quick` "
                  f"(data.train_limit = {QUICK_DATA['data.train_limit']:,}, data.validation_size = "
                  f"{QUICK_DATA['data.validation_size']:,}, and {', '.join(QUICK_PASSES)} = 1 in every stage that "
                  "has them): it shows that every pipeline runs end to end, not what it reaches. Its numbers say "
                  "nothing about the papers' claims.", ""]
    lines += [f"`{command}` with mpdref {__version__}: every paper configuration in `configs/` run through the "
              "sweep engine into `runs/` (`results.csv` has a row per run; `mpdref show` prints them). Each number "
              "below is read from those run directories. A claim is met when every number meets the paper's, "
              "compared at the decimals the paper writes: 39.6x meets 40x (Han et al.'s own 40x is "
              "1,070 KB / 27 KB = 39.6x); an error is exact to 0.01% (one test image in 10,000). A number that "
              "misses is marked \u2717.", ""]
    changed = sorted({o.claim.config for o in outcomes if not quick and not o.as_paper})
    if changed:
        lines += [f"**Not the configs as they are now:** the runs of {', '.join(f'`{c}`' for c in changed)} "
                  "ran another config than the file in `configs/` holds today (marked *config changed*).", ""]
    lines += [summary(outcomes) + ".", ""]
    for key, title in PAPERS.items():
        rows = [o for o in outcomes if o.claim.paper == key]
        if not rows:
            continue
        lines += [f"## {title}", "", "| claim | paper (or target) | mpdref | config | status |",
                  "|---|---|---|---|---|"]
        lines += [f"| {_cell(o.claim.claim)} | {_cell(_paper_cell(o.claim))} | {_cell(_measured_cell(o))} | "
                  f"{_cell(_config_cell(o))}{'' if quick or o.as_paper else ' (*config changed*)'} | {o.status} |"
                  for o in rows]
        problems = list(dict.fromkeys(f"- `{o.claim.config}`, {o.status}: {o.message}" for o in rows if o.message))
        lines += [""] + (problems + [""] if problems else [])
    lines += ["## How each number is read", ""]
    lines += [f"- {name} ({q.unit}): {q.meaning}." for name, q in QUANTITIES.items()]
    lines += ["", "## Figures", ""]
    drawn = [path for path, _ in figures if path is not None]
    notes = [note for path, note in figures if path is None]
    for path in drawn:
        name = Path(path).stem
        lines.append(f"![{name}](figures/{Path(path).name})" if name.startswith(("tradeoff", "storage"))
                     else f"- [{name}](figures/{Path(path).name})")
    if not drawn:
        lines.append("None drawn.")
    lines += [""] + ([f"Not drawn: {n}" for n in notes] + [""] if notes else [])
    return "\n".join(lines)


def write_report(out, quick: bool, figures=(), claims=CLAIMS, configs: Path = CONFIGS) -> tuple[Path, list[Outcome]]:
    """DIR/REPRODUCTION.md from the run directories DIR/runs/STEM (written atomically); returns its path and
    the claims' outcomes."""
    out = Path(out)
    outcomes = [assess(c, out / "runs", configs) for c in claims]
    command = "mpdref reproduce" + (" --quick" if quick else "")
    path = out / REPORT
    write_bytes_atomic(path, format_report(outcomes, quick, figures, command).encode())
    return path, outcomes


# ----------------------------------------------------------------------------- the sweep


def quick_settings(raw: dict) -> dict:
    """The sweep settings (config key -> value) that shrink the experiment `raw` (its TOML) for --quick:
    QUICK_DATA, and every QUICK_PASSES setting of each stage whose type has it set to 1."""
    settings = dict(QUICK_DATA)
    stages = raw.get("stages") if isinstance(raw.get("stages"), list) else []
    for i, stage in enumerate(stages):
        stage_type = STAGES.get(stage.get("type")) if isinstance(stage, dict) else None
        for option in QUICK_PASSES:
            if stage_type is not None and option in stage_type.options:
                settings[f"stages[{i}].{option}"] = 1
    return settings


def _config_names(only, claims) -> list[str]:
    """The configs to run: every claimed one, or those `only` names (a stem or a file name) and the
    baselines of their claims."""
    names = claimed_configs(claims)
    if not only:
        return names
    chosen = []
    for item in only:
        name = Path(item).name if str(item).endswith(".toml") else f"{Path(item).name}.toml"
        if name not in names:
            raise ValueError(f"--only: {item!r} is not a config that a claim names (those are: "
                             f"{', '.join(Path(n).stem for n in names)})")
        chosen.append(name)
    chosen += [c.baseline for c in claims if c.config in chosen and c.baseline]
    return [n for n in names if n in chosen]


def reproduction_sweep(quick: bool = False, only=None, claims=CLAIMS, configs: Path = CONFIGS) -> Sweep:
    """The sweep of the claims' configs (all, or `only` these and their baselines), each a run named by
    its file's stem, shrunk with `quick_settings` when `quick`; every config is validated as `mpdref run`
    validates a file, all problems reported together."""
    configs = Path(configs)
    if not configs.is_dir():
        raise ConfigError(f"{configs}: not found: `mpdref reproduce` runs the paper configurations of a source "
                          "checkout (configs/ beside the mpdref package)")
    points, problems = [], []
    for name in _config_names(only, claims):
        path = configs / name
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            problems.append(f"{path}: cannot read: {e}")
            continue
        settings = quick_settings(raw) if quick else {}
        source = f"{path}" + (" shrunk by --quick" if quick else "")
        try:
            config = resolve_config(apply_settings(raw, settings), source, path.stem)
        except ConfigError as e:
            problems.append(str(e))
            continue
        points.append(Point(path.stem, {k: config_value(config, k) for k in KEYS}, config))
        problems += [p for c in claims if c.config == name for p in claim_problems(c, config)]
    if problems:
        raise ConfigError(" | ".join(problems))
    return Sweep(configs, configs, KEYS, tuple(points))


def draw_figures(out: Path, names) -> list[tuple]:
    """The papers' figures of the runs OUT/runs/NAME (those started) into OUT/figures: [(path, None) per
    figure drawn, (None, why) per figure not drawn]. A file that cannot be read ends the drawing, said so."""
    runs = [(out / "runs" / n, None) for n in names if (out / "runs" / n / "config.json").exists()]
    if not runs:
        return [(None, "no run has started")]
    drawn = []
    try:
        for item in write_figures(runs, out / "figures"):
            drawn.append(item)
    except (ValueError, OSError) as e:
        drawn.append((None, f"stopped: {e}"))
    return drawn


def reproduce(out=None, quick: bool = False, only=None, workers: int | None = None, scheduler: str | None = None,
              progress: bool = True, retry_failed: bool = False, share: bool = True) -> tuple[Path, list[Outcome], dict]:
    """Run the claims' configs (shrunk when `quick`) as a sweep into `out` (default runs/reproduce, or
    runs/reproduce-quick), then write DIR/results.csv and .json, DIR/figures/ and DIR/REPRODUCTION.md;
    return (the report's path, the claims' outcomes, {run status: number of runs})."""
    sweep = reproduction_sweep(quick, only)
    out = Path(out) if out is not None else DEFAULT_OUT[quick]
    if scheduler is None:
        # the workers of a LocalCluster look MNIST up as this process does: fetched once here, not by each
        data.find_or_fetch_mnist(log=lambda line: print(f"mpdref reproduce: {line}", file=sys.stderr))
    prepare_sweep_directory(out, sweep)
    run_points(sweep, out, workers, scheduler, progress, retry_failed, command="reproduce",
               heading=f"{len(sweep.points)} runs -> {out}/runs", share=share)
    _, rows = write_results(out)
    figures = draw_figures(out, [p.name for p in sweep.points])
    path, outcomes = write_report(out, quick, figures)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "unfinished", "pending")}
    return path, outcomes, counts

