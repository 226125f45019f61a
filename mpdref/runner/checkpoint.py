"""Checkpoints: everything needed to continue a run exactly where it stopped.

One ``mpdref-checkpoint`` file (see :mod:`mpdref.io.model_file`) holds the
network (parameters and masks), the SGD velocity, and in its metadata the
progress: which stage, how many of its epochs are done, whether the stage is
finished, how many log lines belong to the run so far, the results of finished
stages, the states of the random generators, and the fingerprint of the config
it belongs to. A stage with state of its own (ADMM's Z, U and ρ; the float copies of a
retraining on levels) adds arrays keyed like the parameters (STAGE_GROUPS) and an entry of
the progress named after it. It is written to a temporary name and renamed, so a crash
leaves the previous checkpoint or the new one, never a broken one.
"""
from __future__ import annotations

import numpy as np

from mpdref import __version__, models
from mpdref.io import FormatError
from mpdref.io.model_file import CHECKPOINT_FORMAT, read_network_file, write_network_file

# optional groups keyed like the parameters: ADMM's Z and U, the float copies of weights retrained on levels,
# the running mean of stochastic weight averaging
STAGE_GROUPS = ("admm_z", "admm_u", "latent", "swa_mean")
_PROGRESS_FIELDS = {"config_digest": str, "stage_index": int, "epochs_done": int, "finished": bool,
                    "log_lines": int, "results": list, "rng": dict}


def write_checkpoint(path, net, velocity: dict, progress: dict, groups: dict | None = None) -> None:
    """groups: a stage's own arrays, {name in STAGE_GROUPS: {parameter name: array}}."""
    unknown = set(groups or {}) - set(STAGE_GROUPS)
    if unknown:
        raise ValueError(f"checkpoint groups {sorted(unknown)} are not among {STAGE_GROUPS}")
    write_network_file(path, CHECKPOINT_FORMAT, net.name, net.dtype, net.params, net.masks,
                       metadata=progress, mpdref_version=__version__,
                       per_parameter={"velocity": velocity, **(groups or {})})


def _valid_rng_state(state) -> bool:
    try:
        np.random.PCG64().state = state
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return True


def read_checkpoint(path, config_digest: str) -> dict:
    """Read and validate a checkpoint; returns net, velocity, the progress fields and the stage groups
    it holds (STAGE_GROUPS)."""
    content = read_network_file(path, CHECKPOINT_FORMAT, models.parameter_shapes, per_parameter=("velocity",),
                                optional=STAGE_GROUPS)
    progress = content["metadata"]
    for key, kind in _PROGRESS_FIELDS.items():
        value = progress.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise FormatError(f"{path}: progress field {key!r} is missing or not a {kind.__name__}")
    if progress["config_digest"] != config_digest:
        raise FormatError(f"{path}: this checkpoint belongs to another config (fingerprint "
                          f"{progress['config_digest']}, the run's config has {config_digest})")
    if min(progress["stage_index"], progress["epochs_done"], progress["log_lines"]) < 0:
        raise FormatError(f"{path}: negative progress counters")
    rng = progress["rng"]
    if not _valid_rng_state(rng.get("dropout")) or not (rng.get("shuffle") is None or _valid_rng_state(rng["shuffle"])):
        raise FormatError(f"{path}: random generator states are malformed")
    net = models.network_from_content(content)
    net.metadata = {}
    net.rng.bit_generator.state = rng["dropout"]
    groups = {name: content[name] for name in STAGE_GROUPS if name in content}
    return {"net": net, "velocity": content["velocity"], **groups, **progress}


def rebind_checkpoint(source, target, config_digest_from: str, config_digest_to: str) -> None:
    """Write checkpoint `source` of one config as `target` of another (its fingerprint
    `config_digest_to`): the same network, velocity, progress and stage state. For runs whose
    configs agree up to the checkpoint's stage (mpdref.runner.shared)."""
    state = read_checkpoint(source, config_digest_from)
    progress = {key: state[key] for key in _PROGRESS_FIELDS} | {"config_digest": config_digest_to}
    if "stage_state" in state:
        progress["stage_state"] = state["stage_state"]
    write_checkpoint(target, state["net"], state["velocity"], progress,
                     {name: state[name] for name in STAGE_GROUPS if name in state})
