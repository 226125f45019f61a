"""Experiment configs: TOML in, a validated and fully resolved dict out.

An experiment file has three parts::

    [experiment]            name, model, seed, dtype
    [data]                  root, validation_size, train_limit
    [[stages]]              an ordered list; each has a `type` (a registered stage) and its settings

Every key is checked before any work starts: unknown keys, wrong types and
impossible values are all reported together, each with its path
(``stages[1].lr``) and what is accepted. The resolved config has every default
filled in and the mpdref version, and is what a run directory stores.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mpdref import __version__
from mpdref.models import ARCHITECTURES
from mpdref.runner.options import REQUIRED, Option
from mpdref.runner.registry import STAGES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

class ConfigError(ValueError):
    """An experiment config that cannot be run; the message lists every problem by key path."""


EXPERIMENT_OPTIONS = {
    "name": Option(str, None, help="a name for the run (default: the config file's name)"),
    "model": Option(str, REQUIRED, choices=tuple(ARCHITECTURES), help="the network"),
    "seed": Option(int, 0, check=lambda v: v >= 0, accepted="an integer >= 0",
                   help="seeds the init, shuffling and dropout"),
    "dtype": Option(str, "float32", choices=("float32", "float64")),
}
DATA_OPTIONS = {
    "root": Option(str, None, help="MNIST folder (default: mpdref's lookup order)"),
    "validation_size": Option(int, 5000, check=lambda v: 0 <= v < 60000, accepted="an integer in [0, 60000)",
                              help="images held out from the end of the training set"),
    "train_limit": Option(int, None, check=lambda v: v >= 1, accepted="an integer >= 1",
                          help="train on only the first N training images (quick experiments)"),
}


def _validate_table(path: str, table, options: dict, problems: list, defaults: dict | None = None) -> dict:
    if not isinstance(table, dict):
        problems.append(f"{path}: expected a table, got {type(table).__name__}")
        return {}
    resolved = {}
    for key in table:
        if key not in options:
            problems.append(f"{path}.{key}: unknown key (accepted: {', '.join(options)})")
    for key, option in options.items():
        if key in table and table[key] is None and option.default is None:
            resolved[key] = None  # "not set", as a resolved config writes it
        elif key in table:
            value = option.validate(f"{path}.{key}", table[key], problems)
            if value is not None:
                resolved[key] = value
        elif defaults is not None and key in defaults:
            resolved[key] = defaults[key]
        elif option.default is REQUIRED:
            problems.append(f"{path}.{key}: missing (expected {option.describe()})")
        else:
            resolved[key] = option.default
    return resolved


def resolve_config(raw: dict, source: str = "<config>", default_name: str = "experiment") -> dict:
    """Validate a raw config dict (as parsed from TOML) and fill in every default."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a table")
    for key in raw:
        # mpdref_version is written into resolved configs, which resume reads back
        if key not in ("experiment", "data", "stages", "mpdref_version"):
            problems.append(f"{key}: unknown section (accepted: experiment, data, stages)")
    experiment = _validate_table("experiment", raw.get("experiment", {}), EXPERIMENT_OPTIONS, problems)
    if experiment.get("name") is None:
        experiment["name"] = default_name
    data = _validate_table("data", raw.get("data", {}), DATA_OPTIONS, problems)
    stages = []
    raw_stages = raw.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        problems.append("stages: expected a non-empty list of [[stages]] tables")
        raw_stages = []
    names = set()
    for i, raw_stage in enumerate(raw_stages):
        path = f"stages[{i}]"
        if not isinstance(raw_stage, dict):
            problems.append(f"{path}: expected a table")
            continue
        stage_type = raw_stage.get("type")
        if stage_type not in STAGES:
            problems.append(f"{path}.type: expected one of {', '.join(repr(s) for s in STAGES)}, got {stage_type!r}")
            continue
        stage_cls = STAGES[stage_type]
        settings = {k: v for k, v in raw_stage.items() if k not in ("type", "name")}
        name = raw_stage.get("name", stage_type)
        if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
            problems.append(f"{path}.name: expected letters, digits, '-' and '_', got {name!r}")
            continue
        if name in names:
            name = f"{name}-{i + 1}"
        names.add(name)
        model = experiment.get("model")
        # With no valid model there are no model-dependent defaults: do not also call them missing.
        defaults = stage_cls.defaults(model) if model in ARCHITECTURES else dict.fromkeys(stage_cls.options)
        before = len(problems)
        resolved = _validate_table(path, settings, stage_cls.options, problems, defaults)
        if len(problems) == before:
            problems.extend(f"{path}: {problem}" for problem in stage_cls.check(resolved, model))
        teacher = resolved.get("teacher")
        if isinstance(teacher, str) and teacher not in (s["name"] for s in stages) and not teacher.endswith(".h5"):
            earlier = ", ".join(s["name"] for s in stages) or "none"
            problems.append(f"{path}.teacher: {teacher!r} is neither the name of an earlier stage "
                            f"(earlier stages: {earlier}) nor a model file ending in .h5")
        stages.append({"type": stage_type, "name": name, **resolved})
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return {"experiment": experiment, "data": data, "stages": stages, "mpdref_version": __version__}


def load_config(path) -> dict:
    """Read, validate and resolve an experiment TOML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return resolve_config(raw, str(path), default_name=path.stem)


def config_digest(config: dict) -> str:
    """A short fingerprint of a resolved config (stored in checkpoints to tie them to their run)."""
    import hashlib

    body = {k: v for k, v in config.items() if k != "mpdref_version"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
