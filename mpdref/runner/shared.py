"""Stages that several runs begin with alike, run once and copied.

The runs of a sweep often begin alike: the same network, seed and data and the same first
stages (the dense training before every pruning setting of a trade-off curve; the progressive
steps that a longer config repeats before going on). A run that finishes the last stage such
a group shares publishes a snapshot of its run directory at that point, DIR/KEY/; a run that
begins with the same stages copies the longest snapshot there is and goes on from it as from
its own checkpoint. Resuming is exact (a run resumed from a checkpoint ends with the same bits
as one never stopped), so a run that starts from a snapshot ends with the same bits as one that
ran those stages itself (tests/test_runner.py holds the model files equal).

KEY fingerprints what the run is after its stage i: the mpdref version, the model, seed and
dtype (not the experiment's name), the data table, and stages 0..i with every setting resolved
(names included: later stages name earlier ones). A run that started from a snapshot says so in
RUN_DIR/shared.json and in its metrics.json ("shared_stages": how many stages, from which run).

Two runs of a group that start together both run the shared stages; the first to finish
publishes (a rename: never a half-written snapshot), the other's copy is dropped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from mpdref.runner.checkpoint import rebind_checkpoint
from mpdref.runner.files import RunDirectoryError, read_json, write_json

SNAPSHOT = "snapshot.json"
SHARED = "shared.json"
#: what a snapshot leaves out of its run directory: the run's own config and end, the sweep's files
NOT_COPIED = frozenset({"config.json", "metrics.json", "model.h5", "output.log", "failed.json", ".lock", SHARED})


def prefix_keys(config: dict) -> list[str]:
    """KEY (see the module's text) after each stage of a resolved config, in order."""
    e = config["experiment"]
    base = {"mpdref_version": config.get("mpdref_version"), "model": e["model"], "seed": e["seed"],
            "dtype": e["dtype"], "data": config["data"]}
    return [hashlib.sha256(json.dumps({**base, "stages": config["stages"][: i + 1]}, sort_keys=True).encode())
            .hexdigest()[:32] for i in range(len(config["stages"]))]


def shared_prefixes(configs: list[dict]) -> set[str]:
    """The KEYs worth a snapshot among these runs: the last stage of each run's longest prefix that
    another run shares (stage i where more runs share stages 0..i than 0..i+1, at least two)."""
    keys = [prefix_keys(c) for c in configs]
    counts = Counter(k for run in keys for k in run)
    return {run[i] for run in keys for i in range(len(run))
            if counts[run[i]] >= 2 and (i + 1 == len(run) or counts[run[i + 1]] < counts[run[i]])}


class SharedStages:
    """Snapshots in `root` (a sweep's DIR/shared): `restore` the longest one a run begins with,
    `publish` a run's state after a stage whose KEY is among `publish_keys`."""

    def __init__(self, root, publish_keys):
        self.root = Path(root)
        self.publish_keys = frozenset(publish_keys)

    def restore(self, config: dict, out: Path, digest: str, first: int) -> int | None:
        """Copy into run directory `out` the longest snapshot of stages 0..i (i >= first) of
        `config` there is, its checkpoint rebound to the run's config (`digest`); write
        RUN_DIR/shared.json. Returns i, or None where there is none."""
        keys = prefix_keys(config)
        for i in range(len(keys) - 1, first - 1, -1):
            snapshot = self.root / keys[i]
            if not (snapshot / SNAPSHOT).exists():
                continue
            record = read_json(snapshot / SNAPSHOT, "not a snapshot of shared stages")
            for source in sorted(snapshot.rglob("*")):
                target = out / source.relative_to(snapshot)
                if source.is_dir():
                    target.mkdir(exist_ok=True)
                elif source.name not in (SNAPSHOT, "checkpoint.h5"):
                    shutil.copy2(source, target)
            write_json(out / SHARED, {"stages": i + 1, "from": record["source"], "key": keys[i]})
            # the checkpoint last, written whole under its name: a run stopped before it starts again
            # (from the start: the resume of a run without a checkpoint clears the log and shared.json)
            rebind_checkpoint(snapshot / "checkpoint.h5", out / "checkpoint.h5", record["config_digest"], digest)
            return i
        return None

    def publish(self, config: dict, out: Path, i: int, digest: str) -> bool:
        """Publish run directory `out` as it is after stage i (its checkpoint just written), if
        stage i's KEY is wanted and not there yet; True if this call published it."""
        key = prefix_keys(config)[i]
        target = self.root / key
        if key not in self.publish_keys or target.exists():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(out, tmp, ignore=lambda folder, names: [
            n for n in names if n in NOT_COPIED or n.endswith(".tmp")] if Path(folder) == out else [])
        write_json(tmp / SNAPSHOT, {"stage_index": i, "source": str(out), "config_digest": digest})
        try:
            os.rename(tmp, target)
        except OSError:  # another run published it first
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        return True


def shared_record(out: Path) -> dict | None:
    """RUN_DIR/shared.json: the stages a run took from a snapshot, or None."""
    path = Path(out) / SHARED
    if not path.exists():
        return None
    record = read_json(path, "not a record of shared stages")
    if not isinstance(record, dict) or not isinstance(record.get("stages"), int):
        raise RunDirectoryError(f"{path}: malformed (stages and from expected)")
    return record
