"""Sweeps: a grid of experiment configs run as ordinary run directories on Dask workers.

A sweep file names a base experiment config and the settings that vary::

    config = "../deep-compression-lenet-300-100.toml"   # relative to this file

    [set]                                   # optional: applied to every run, not part of run names
    "data.train_limit" = 5000

    [grid]                                  # the runs are the Cartesian product of these lists
    "stages[12].bits_all" = [4, 5, 6]
    "experiment.seed" = [0, 1]

    [[points]]                              # optional: more runs, one per table, beside the grid
    "stages[12].bits_all" = 8
    "experiment.seed" = 0

A key is a config path written as config errors print it: ``experiment.KEY``, ``data.KEY`` or
``stages[N].KEY`` (N counts the base config's [[stages]] from 0). A run's config is the base
config's TOML with the run's values put in, validated by the runner as `mpdref run` validates a
file; every run is validated before any starts.

    DIR/sweep.json              the sweep: its file, base config, keys and runs (name and values)
    DIR/runs/NAME/              an ordinary run directory (mpdref.runner), NAME from its values,
                                e.g. ``bits_all=4,seed=0`` (stage keys carry the stage's name:
                                ``quantize.bits_all=4``); plus output.log (what the run printed)
                                and, for a run that failed, failed.json (its error); .lock
                                is held by the worker running it
    DIR/shared/KEY/             a snapshot of a run after the stages it shares with other runs
                                (mpdref.runner.shared): the others begin from it, not from scratch
    DIR/results.csv, .json      one row per run: its values, status, errors, ratio, file bytes,
                                fraction of weights kept, seconds (start to end) and training seconds

Runs go to Dask (`run_sweep`): a LocalCluster of one-thread workers, or a running scheduler by
address. Each worker calls the runner on a run directory: a finished run is never run again, an
unfinished one resumes from its checkpoint (also when Dask reschedules it after its worker
died), a failed one is recorded and the others go on. Results are read back from the run
directories, never from the workers' memory. Runs that begin with the same stages (the dense
training before each pruning setting, at one seed) run them once: the first to finish them
publishes a snapshot, and the runs that start later copy it and go on, ending with the same bits
as if they had run those stages themselves (`--no-share` runs every stage of every run). Dask
is imported only to run a sweep (pip install -e '.[sweep]').
"""
from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import itertools
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from mpdref import models
from mpdref.io.atomic import write_bytes_atomic
from mpdref.kernels import BackendUnavailable
from mpdref.prune import weights_kept
from mpdref.runner import resume_experiment, run_experiment
from mpdref.runner.config import ConfigError, config_digest, resolve_config
from mpdref.runner.files import RunDirectoryError, read_json, write_json
from mpdref.runner.report import format_table, percent
from mpdref.runner.shared import SharedStages, prefix_keys, shared_prefixes
from mpdref.train import DEFAULT_RECIPES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SWEEP_FORMAT = ("mpdref-sweep", 1)  # DIR/sweep.json
RESULTS_FORMAT = ("mpdref-sweep-results", 1)  # DIR/results.json
SWEEP_KEYS = ("config", "set", "grid", "points")
OUTPUT = "output.log"  # what a run printed in its worker
FAILED = "failed.json"  # {"error": exception type, "message": ...}: the run failed
SHARED_DIR = "shared"  # DIR/shared/KEY: snapshots of the stages runs share (mpdref.runner.shared)
RESULT_COLUMNS = ("status", "test_error", "val_error", "ratio", "file_bytes", "weights_kept", "seconds",
                  "train_seconds", "run_dir", "message")
#: task errors (not worker deaths) that Dask retries; a run's own failure is recorded, not raised
RETRIES = 1
#: the thread pools a worker of a LocalCluster gets one thread of (set before the worker starts:
#: OpenBLAS and Numba read them when they load)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
NAME_LIMIT = 150  # characters of a run name; longer ones end in a hash of the whole
_KEY = re.compile(r"^(?:(experiment|data)|stages\[(\d+)\])\.([A-Za-z_][A-Za-z0-9_]*)$")


class SweepError(ConfigError):
    """A sweep file that cannot run; the message names the file and every problem."""


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its name, the values the sweep gives it, and its resolved config."""

    name: str
    settings: dict  # key -> value as the sweep file writes it (grid and points keys only)
    config: dict


@dataclass(frozen=True)
class Sweep:
    path: Path
    config_path: Path
    keys: tuple  # the grid's and the points' keys, in file order: the results' columns
    points: tuple


# ----------------------------------------------------------------------------- the sweep file


def _read_toml(path: Path, error=ConfigError) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read: {e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML: {e}") from None


def parse_key(key: str) -> tuple[str, int | None, str]:
    """``experiment.seed`` -> ("experiment", None, "seed"); ``stages[2].lr`` -> ("stages", 2, "lr")."""
    match = _KEY.match(key)
    if match is None:
        raise ValueError(f"{key!r} is not a config key (write experiment.KEY, data.KEY or stages[N].KEY, "
                         f"as config errors print them)")
    section, index, option = match.groups()
    return (section, None, option) if section else ("stages", int(index), option)


def config_value(config: dict, key: str):
    """The value at `key` in a (resolved) config."""
    section, index, option = parse_key(key)
    return config[section][option] if index is None else config["stages"][index][option]


def apply_settings(raw: dict, settings: dict) -> dict:
    """A copy of the raw (TOML) config `raw` with each key of `settings` set to its value."""
    raw = copy.deepcopy(raw)
    for key, value in settings.items():
        section, index, option = parse_key(key)
        table = raw.setdefault(section, {}) if index is None else raw["stages"][index]
        if isinstance(table, dict):  # else the runner names the malformed section
            table[option] = copy.deepcopy(value)
    return raw


def _key_problems(where: str, key: str, n_stages: int) -> list[str]:
    try:
        _, index, _ = parse_key(key)
    except ValueError as e:
        return [f"{where}: {e}"]
    if index is not None and index >= n_stages:
        stages = f"{n_stages} stages (stages[0] to stages[{n_stages - 1}])" if n_stages else "no [[stages]] list"
        return [f"{where}: the base config has {stages}"]
    return []


def expand(grid: dict, points: list) -> list[dict]:
    """The Cartesian product of `grid` (key -> list of values; the first key varies slowest), then
    `points` (explicit key -> value tables), as one settings dict per run."""
    product = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    return product + [dict(p) for p in points]


def _value_label(value) -> str:
    """A value as a run name writes it: numbers and plain words as TOML would; anything else (a
    table, a list, a path) as a short hash of its JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, (int, float)) else value if isinstance(value, str) else None
    if text is not None and re.fullmatch(r"[A-Za-z0-9_.+-]{1,40}", text):
        return text
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def run_name(settings: dict, config: dict) -> str:
    """A run's directory name from the values the sweep gives it, in the sweep file's order:
    ``seed=1,train.lr=0.05`` (a stage's key is labelled with the stage's name; experiment and
    data keys do not overlap, so they need no prefix)."""
    parts = []
    for key, value in settings.items():
        _, index, option = parse_key(key)
        label = option if index is None else f"{config['stages'][index]['name']}.{option}"
        parts.append(f"{label}={_value_label(value)}")
    name = ",".join(parts)
    if len(name) > NAME_LIMIT:  # a file name has 255 bytes at most
        name = name[: NAME_LIMIT - 9] + "," + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def _describe(settings: dict) -> str:
    return ", ".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())


def load_sweep(path) -> Sweep:
    """Read a sweep file, expand it and validate every run's config; raise SweepError (the file's
    shape) or ConfigError (the runs' configs, with the runner's messages) before anything runs."""
    path = Path(path)
    raw = _read_toml(path, SweepError)
    problems = [f"{key}: unknown key (accepted: {', '.join(SWEEP_KEYS)})" for key in raw if key not in SWEEP_KEYS]
    config_name = raw.get("config")
    if not isinstance(config_name, str) or not config_name:
        problems.append("config: expected the path of the base experiment config (relative to this file), "
                        f"got {config_name!r}")
        raise SweepError(f"{path}: " + "; ".join(problems))
    config_path = path.parent / config_name
    base = _read_toml(config_path)
    n_stages = len(base["stages"]) if isinstance(base.get("stages"), list) else 0
    fixed, grid, points = raw.get("set", {}), raw.get("grid", {}), raw.get("points", [])
    for name, table in (("set", fixed), ("grid", grid)):
        if not isinstance(table, dict):
            problems.append(f"{name}: expected a table of config keys")
    if not isinstance(points, list) or not all(isinstance(p, dict) and p for p in points):
        problems.append("points: expected [[points]] tables, each setting at least one config key")
    if not grid and not points:
        problems.append("no runs: give a [grid] table or [[points]] tables")
    if problems:
        raise SweepError(f"{path}: " + "; ".join(problems))
    for key in fixed:
        problems += _key_problems(f"set.{json.dumps(key)}", key, n_stages)
    for key, values in grid.items():
        problems += _key_problems(f"grid.{json.dumps(key)}", key, n_stages)
        if not isinstance(values, list) or not values:
            problems.append(f"grid.{json.dumps(key)}: expected a non-empty list of values, got {values!r}")
        elif key in fixed:
            problems.append(f"grid.{json.dumps(key)}: also in [set]; give it in one of them")
    for i, point in enumerate(points):
        for key in point:
            problems += _key_problems(f"points[{i}].{json.dumps(key)}", key, n_stages)
            if key in fixed:
                problems.append(f"points[{i}].{json.dumps(key)}: also in [set]; give it in one of them")
    if problems:
        raise SweepError(f"{path}: " + "; ".join(problems))

    runs, invalid = [], {}
    all_settings = expand(grid, points)
    for settings in all_settings:
        source = f"{path} run with {_describe(settings)}"
        try:
            config = resolve_config(apply_settings(base, {**fixed, **settings}), source, config_path.stem)
        except ConfigError as e:
            # the runner's message without its source: runs with the same problem are listed together
            invalid.setdefault(str(e).removeprefix(f"{source}: "), []).append(_describe(settings))
            continue
        runs.append(Point(run_name(settings, config), settings, config))
    if invalid:
        groups = [f"{problem} (in {'; '.join(where[:3])}{f'; and {len(where) - 3} more' if len(where) > 3 else ''})"
                  for problem, where in invalid.items()]
        bad = sum(map(len, invalid.values()))
        raise ConfigError(f"{path}: {bad} of {len(all_settings)} runs cannot run (base config {config_path}): "
                          + " | ".join(groups))
    by_name, by_digest = {}, {}
    for point in runs:
        digest = config_digest(point.config)
        twin = by_name.get(point.name) or by_digest.get(digest)
        if twin is not None:
            raise SweepError(f"{path}: the runs with {_describe(twin.settings)} and with {_describe(point.settings)} "
                             f"are the same run (the same name {point.name!r} or the same config)")
        by_name[point.name] = by_digest[digest] = point
    keys = tuple(dict.fromkeys(k for p in runs for k in p.settings))
    return Sweep(path, config_path, keys, tuple(runs))


# ----------------------------------------------------------------------------- the sweep directory


def run_status(run_dir: Path) -> str:
    """finished (metrics.json), failed (failed.json), unfinished (a config.json), or pending."""
    if (run_dir / "metrics.json").exists():
        return "finished"
    if (run_dir / FAILED).exists():
        return "failed"
    return "unfinished" if (run_dir / "config.json").exists() else "pending"


def prepare_sweep_directory(out, sweep: Sweep) -> Path:
    """Check that every run directory that exists holds its run's config; write DIR/sweep.json."""
    out = Path(out)
    if (out / "config.json").exists():
        raise RunDirectoryError(f"{out}: holds a run, not a sweep; choose another --out")
    stale = []
    for point in sweep.points:
        config_file = out / "runs" / point.name / "config.json"
        if config_file.exists() and config_digest(read_json(config_file, "")) != config_digest(point.config):
            stale.append(str(config_file.parent))
    if stale:
        raise RunDirectoryError(f"{', '.join(stale[:3])}{' and others' if len(stale) > 3 else ''}: "
                                f"{'holds a run' if len(stale) == 1 else 'hold runs'} of another config than the "
                                f"sweep's (its base config or [set] changed since); remove "
                                f"{'it' if len(stale) == 1 else 'them'} or choose another --out")
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirectoryError(f"{out}: cannot create the sweep directory: {e.strerror or e}") from None
    write_json(out / "sweep.json", {
        "format": SWEEP_FORMAT[0], "version": SWEEP_FORMAT[1], "sweep_file": str(sweep.path.resolve()),
        "config": str(sweep.config_path.resolve()), "keys": list(sweep.keys),
        "runs": [{"name": p.name, "settings": {k: config_value(p.config, k) for k in sweep.keys}}
                 for p in sweep.points]})
    return out


def read_sweep_record(out) -> dict:
    """DIR/sweep.json, validated."""
    record = read_json(Path(out) / "sweep.json", "not a sweep directory (start one with `mpdref sweep SWEEP.toml`)")
    if not isinstance(record, dict) or (record.get("format"), record.get("version")) != SWEEP_FORMAT:
        raise RunDirectoryError(f"{out}/sweep.json: not an {SWEEP_FORMAT[0]} version {SWEEP_FORMAT[1]} file")
    if not isinstance(record.get("keys"), list) or not isinstance(record.get("runs"), list) or not all(
            isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("settings"), dict)
            for r in record["runs"]):
        raise RunDirectoryError(f"{out}/sweep.json: malformed (keys and runs expected)")
    return record


# ----------------------------------------------------------------------------- in a worker


@contextlib.contextmanager
def _exclusive(run_dir: Path):
    """Hold RUN_DIR/.lock: a run left going by a sweep that was stopped (a worker cannot stop a
    task it started) and the same run from the next call never write one directory together.
    The lock goes with its process, so a dead worker leaves none behind."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(run_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_point(run_dir: str, config: dict, shared_root: str | None = None, publish: tuple = ()) -> str:
    """Run one sweep run in this process (a Dask worker): start it, or resume it from its
    checkpoint, or nothing if it is finished; return "finished" or "failed". With `shared_root`,
    the run begins from the longest snapshot of its first stages there (and publishes the stages
    whose keys are in `publish`: mpdref.runner.shared).

    A run's own error (a setting found bad late, training that diverged) is written to
    RUN_DIR/failed.json and returned as "failed", so that Dask does not run it again. Numba uses
    one thread here: a worker runs one run on one core. What the run prints goes to RUN_DIR/output.log.
    """
    import numba

    numba.set_num_threads(1)
    shared = None if shared_root is None else SharedStages(shared_root, publish)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(run_dir), open(run_dir / OUTPUT, "a") as output, \
            contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        if (run_dir / "metrics.json").exists():
            return "finished"
        (run_dir / FAILED).unlink(missing_ok=True)
        try:
            if (run_dir / "config.json").exists():
                where = "its checkpoint" if (run_dir / "checkpoint.h5").exists() else "the start (no checkpoint yet)"
                print(f"mpdref sweep: resuming {run_dir} from {where} (pid {os.getpid()})", flush=True)
                resume_experiment(run_dir, progress=False, shared=shared)
            else:
                print(f"mpdref sweep: starting {run_dir} (pid {os.getpid()})", flush=True)
                run_experiment(config, run_dir, progress=False, shared=shared)
        except Exception as e:
            traceback.print_exc()
            write_json(run_dir / FAILED, {"error": type(e).__name__, "message": str(e)})
            return "failed"
    return "finished"


# ----------------------------------------------------------------------------- on the client


def _distributed():
    try:
        import distributed
    except ImportError:
        raise BackendUnavailable("mpdref sweep runs on Dask, which is not installed: "
                                 "pip install -e '.[sweep]'") from None
    return distributed


def dask_setup(worker) -> None:
    """Dask's preload hook, run as each worker of a LocalCluster starts (its module, this one, is
    imported then: the runner's imports are paid before the first run). Ctrl-C in the terminal
    reaches the workers too; the client alone answers it, closing the cluster, so that the
    workers do not each print a traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _one_thread_each():
    """Workers started in this block get one thread in each of their thread pools: the spawned
    worker processes inherit the environment. It is restored after (Dask's nanny writes it too)."""
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None):
    """(a Dask client, what it runs on): a running scheduler by address, or a LocalCluster of
    `workers` one-thread worker processes (default: the number of cores)."""
    import logging

    distributed = _distributed()
    if scheduler:
        with distributed.Client(scheduler) as client:
            yield client, f"the scheduler at {scheduler}"
        return
    workers = workers or os.cpu_count() or 1
    # memory_limit=0: the nanny does not kill a worker for a run's memory, as nothing kills `mpdref run`.
    # dashboard_address ":0": the scheduler's HTTP server (which it starts even without a dashboard) on a
    # free port, so that two sweeps at once do not both ask for 8787 (and the second warn).
    with _one_thread_each(), distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit=0,
            silence_logs=logging.ERROR, preload=[__name__]) as cluster, distributed.Client(cluster) as client:
        yield client, f"a LocalCluster of {workers} worker{'s' if workers > 1 else ''}"


def _task_key(run_dir: Path, config: dict) -> str:
    """The same run directory and config are one task on a cluster (a second client of the same
    sweep waits for it rather than running it again)."""
    return f"mpdref-run-{run_dir.name}-" + hashlib.sha256(
        f"{run_dir.resolve()}\0{config_digest(config)}".encode()).hexdigest()[:12]


def _failure_message(run_dir: Path) -> str:
    try:
        return read_json(run_dir / FAILED, "")["message"]
    except (RunDirectoryError, KeyError, TypeError):
        return "(no message)"


def run_sweep(path, out=None, workers: int | None = None, scheduler: str | None = None, progress: bool = True,
              retry_failed: bool = False, share: bool = True) -> tuple[Path, dict]:
    """Validate the sweep file at `path`, run its unfinished runs on Dask into `out` (default
    runs/STEM) and write DIR/results.csv and results.json; return (DIR, {status: number of runs}).

    Finished runs are not run again, nor failed ones unless `retry_failed` (they resume from their
    checkpoints). With `share`, runs that begin with the same stages run them once (run_points).
    """
    _distributed()  # a missing extra is said before anything else
    sweep = load_sweep(path)
    out = prepare_sweep_directory(out if out is not None else Path("runs") / sweep.path.stem, sweep)
    run_points(sweep, out, workers, scheduler, progress, retry_failed, command="sweep",
               heading=f"{sweep.path} -> {out}: {len(sweep.points)} runs", share=share)
    _, rows = write_results(out)
    return out, {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "unfinished", "pending")}


def run_points(sweep: Sweep, out: Path, workers: int | None, scheduler: str | None, progress: bool,
               retry_failed: bool, command: str, heading: str, share: bool = True) -> None:
    """Run the unfinished runs of `sweep` on Dask into OUT/runs/NAME (a prepared sweep directory):
    finished runs are not run again, nor failed ones unless `retry_failed`. `command` and `heading`
    begin the line that says what there is to do ("mpdref COMMAND: HEADING; ...").

    With `share`, the last stage of the longest run of first stages that two or more runs have in
    common is published once run, as a snapshot in OUT/shared/, and the other runs begin from it
    (mpdref.runner.shared): the same bits, without running those stages again."""
    status = {p.name: run_status(out / "runs" / p.name) for p in sweep.points}
    todo = [p for p in sweep.points if status[p.name] != "finished" and (retry_failed or status[p.name] != "failed")]
    finished = sum(s == "finished" for s in status.values())
    failed = len(sweep.points) - finished - len(todo)
    print(f"mpdref {command}: {heading}; {finished} finished, "
          + (f"{failed} failed before (--retry-failed runs them again), " if failed else "")
          + f"{len(todo)} to run", file=sys.stderr)
    if not todo:
        return
    with dask_client(workers, scheduler) as (dask, where):
        print(f"mpdref {command}: running on {where}", file=sys.stderr)
        shared_root = str(out / SHARED_DIR) if share else None
        publish = tuple(sorted(shared_prefixes([p.config for p in sweep.points]))) if share else ()

        def submit(p):
            return dask.submit(run_point, str(out / "runs" / p.name), p.config, shared_root, publish,
                               retries=RETRIES, key=_task_key(out / "runs" / p.name, p.config))

        _follow(dask, submit, leaders_first(longest_first(todo), publish), out, len(sweep.points),
                {"done": finished, "failed": failed}, progress)


#: a training epoch of each network relative to LeNet-300-100's, to order runs by their length
#: (`python benchmarks/train_speed.py`, session 13: 0.61 s, 7.34 s and 24.83 s an epoch)
EPOCH_COST = {"lenet-300-100": 1, "lenet-5": 12, "deep-mnist": 41}


def estimated_cost(config: dict) -> float:
    """A run's length in LeNet-300-100 training epochs, from its resolved config: each training stage's
    epochs (an ADMM stage's updates x epochs_per_update; a teacher stage's on its own network, its
    recipe's where the stage leaves them unset) times the network's EPOCH_COST. Only an ordering:
    stages without epochs (pruning, encoding) count 0."""
    own = EPOCH_COST.get(config["experiment"]["model"], 1)
    total = 0.0
    for stage in config["stages"]:
        epochs = stage.get("epochs") or stage.get("updates", 0) * stage.get("epochs_per_update", 1)
        if stage.get("type") == "teacher" and not epochs and stage.get("model") in DEFAULT_RECIPES:
            epochs = DEFAULT_RECIPES[stage["model"]].epochs
        total += (epochs or 0) * EPOCH_COST.get(stage.get("model"), own)
    return total


def longest_first(points: list) -> list:
    """`points` from the longest run to the shortest (estimated_cost; ties keep their order): Dask
    starts tasks in the order given, and the longest run started last is what keeps one worker busy
    after the others are done (a full `mpdref reproduce` ran its longest chain, progressive ADMM then
    quantization, among the last). Within a group sharing first stages (leaders_first), the longest
    run then leads and publishes the stages the shorter ones begin from."""
    return sorted(points, key=lambda p: -estimated_cost(p.config))


def leaders_first(points: list, publish) -> list:
    """`points` in their order, except that a run sharing a published stage (`publish`: KEYs of
    mpdref.runner.shared) with an earlier run goes after every run that shares none with an earlier
    one: Dask starts tasks in the order they are given, so one run of each group starts first and
    the others, started later, can begin from its snapshot instead of running the same stages
    beside it."""
    publish = set(publish)
    claimed, leaders, followers = set(), [], []
    for point in points:
        keys = set(prefix_keys(point.config)) & publish
        (followers if keys & claimed else leaders).append(point)
        claimed |= keys
    return leaders + followers


def _follow(client, submit, points: list, out: Path, total: int, counts: dict, progress: bool) -> None:
    """Run `points` (`submit(point)` -> a future) and wait for them: one bar over them (done, failed,
    running) on a terminal, a line per settled run otherwise; `counts`: {"done": n, "failed": n}
    before these. A task that Dask gave up on (its workers kept dying) is recorded as failed.

    At most as many runs are given to the cluster as its workers have threads, the next one as one
    settles, in the order of `points`: Dask hands independent tasks to workers as they are
    submitted, expecting them to take half a second, so a sweep given all at once left one of two
    workers idle for half an hour while the other held the rest of the runs (mpdref reproduce,
    session 12). So a run that follows another's shared stages also starts after it has begun."""
    from tqdm import tqdm

    settled = sum(counts.values())
    bar = tqdm(total=total, initial=settled, unit="run", desc="sweep", file=sys.stderr, dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    waiting = list(points)
    pending = {}
    with bar:
        while pending or waiting:
            slots = max(1, sum(client.nthreads().values())) - len(pending) if waiting else 0
            while slots > 0 and waiting:
                point = waiting.pop(0)
                pending[submit(point)] = point
                slots -= 1
            settled_now = [f for f in pending if f.done()]
            for future in settled_now:
                point = pending.pop(future)
                run_dir = out / "runs" / point.name
                if future.status == "finished":
                    status = future.result()
                else:  # the task itself erred after its retries, or its workers died (KilledWorker)
                    try:
                        error = future.exception()
                    except Exception as e:  # cancelled: the scheduler lost it
                        error = e
                    write_json(run_dir / FAILED, {"error": type(error).__name__, "message": f"{error}"})
                    status = "failed"
                counts["done" if status == "finished" else "failed"] += 1
                settled += 1
                line = f"mpdref sweep: [{settled}/{total}] {point.name}: " + (
                    _finished_summary(run_dir) if status == "finished" else f"failed: {_failure_message(run_dir)}")
                if bar.disable:
                    print(line, file=sys.stderr, flush=True)
                elif status != "finished":
                    bar.write(line, file=sys.stderr)
                bar.update(1)
            if not bar.disable:
                bar.set_postfix(done=counts["done"], failed=counts["failed"], running=len(pending))
            if pending and not settled_now:
                time.sleep(0.2)


def _finished_summary(run_dir: Path) -> str:
    metrics = read_json(run_dir / "metrics.json", "a finished run has metrics.json")
    return f"test error {percent(metrics['test_error'])}, {metrics['train_seconds']:.1f} s of training"


# ----------------------------------------------------------------------------- results


def _run_row(out: Path, name: str) -> dict:
    run_dir = out / "runs" / name
    status = run_status(run_dir)
    row = dict.fromkeys(RESULT_COLUMNS)
    row.update(status=status, run_dir=f"runs/{name}")
    if status == "failed":
        row["message"] = _failure_message(run_dir)
    if status != "finished":
        return row
    metrics = read_json(run_dir / "metrics.json", "a finished run has metrics.json")
    encoded = next((s for s in reversed(metrics["stages"]) if s.get("type") == "encode"), None)
    # seconds: wall clock from the run's start (config.json written) to its end (metrics.json written),
    # whatever its worker did in between (loading data, evaluating, plotting, dying and resuming)
    seconds = (run_dir / "metrics.json").stat().st_mtime - (run_dir / "config.json").stat().st_mtime
    row.update(test_error=metrics["test_error"], val_error=metrics["val_error"],
               ratio=encoded and encoded["ratio"], file_bytes=encoded and encoded["file_bytes"],
               weights_kept=weights_kept(models.load(run_dir / "model.h5")), seconds=seconds,
               train_seconds=metrics["train_seconds"])
    return row


def sweep_results(out) -> tuple[dict, list[dict]]:
    """(DIR/sweep.json, one row per run: name, the run's value of every key, then RESULT_COLUMNS),
    read from DIR/sweep.json and the run directories."""
    out = Path(out)
    record = read_sweep_record(out)
    rows = [{"name": run["name"], **{k: run["settings"].get(k) for k in record["keys"]}, **_run_row(out, run["name"])}
            for run in record["runs"]]
    return record, rows


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return repr(value) if isinstance(value, float) else str(value)


def write_results(out) -> tuple[list, list[dict]]:
    """DIR/results.csv and DIR/results.json from the run directories; returns (columns, rows)."""
    out = Path(out)
    record, rows = sweep_results(out)
    columns = ["name", *record["keys"], *RESULT_COLUMNS]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_cell(row[c]) for c in columns] for row in rows)
    write_bytes_atomic(out / "results.csv", text.getvalue().encode())
    write_json(out / "results.json", {"format": RESULTS_FORMAT[0], "version": RESULTS_FORMAT[1],
                                      "sweep_file": record["sweep_file"], "config": record["config"],
                                      "columns": columns, "runs": rows})
    return columns, rows


def _short(value) -> str:
    return _value_label(value) if isinstance(value, (list, dict)) else _csv_cell(value)


def show_sweep(out) -> str:
    """The sweep's table: one row per run with its values, status, errors, ratio, size, weights
    kept and training time; then each failed run's message."""
    out = Path(out)
    record, rows = sweep_results(out)
    keys = record["keys"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "unfinished", "pending")}
    lines = [f"sweep {out}: {len(rows)} runs of {record['config']} ("
             + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ")", ""]
    table = [(*(_short(r[k]) for k in keys), r["status"], percent(r["val_error"]), percent(r["test_error"]),
              "-" if r["ratio"] is None else f"{r['ratio']:.1f}x",
              "-" if r["file_bytes"] is None else f"{r['file_bytes']:,} B",
              percent(r["weights_kept"]), "-" if r["seconds"] is None else f"{r['seconds']:.1f} s",
              "-" if r["train_seconds"] is None else f"{r['train_seconds']:.1f} s")
             for r in rows]
    lines.append(format_table((*keys, "status", "val error", "test error", "ratio", "file", "kept", "time",
                               "training"), table))
    failed = [f"failed: {r['run_dir']}: {r['message']}" for r in rows if r["status"] == "failed"]
    return "\n".join(lines + ([""] + failed if failed else []))
