"""The one registry of pipeline stages.

A stage is a class with a `type` name, its `options` (mpdref.runner.options.Option),
`defaults(model)`, `check(settings)` and `run(ctx, settings, resume)`. A method
adds a stage by decorating its class with :func:`register`; the runner finds it
here and needs no change.
"""
from __future__ import annotations

from mpdref.runner.options import REQUIRED

STAGES: dict[str, type] = {}


def register(cls):
    """Class decorator: make `cls` available as ``type = cls.type`` in [[stages]]."""
    if cls.type in STAGES and STAGES[cls.type] is not cls:
        raise ValueError(f"two stages are registered as {cls.type!r}")
    STAGES[cls.type] = cls
    return cls


class Stage:
    """Base class: a stage with no options and nothing to check."""

    type = ""
    description = ""
    options: dict = {}

    @classmethod
    def defaults(cls, model: str) -> dict:
        """Defaults that depend on the network (e.g. its default recipe)."""
        return {}

    @classmethod
    def check(cls, settings: dict, model: str) -> list[str]:
        """Problems that involve several settings together, or the network."""
        return []

    def run(self, ctx, settings: dict, resume: dict | None) -> dict:
        raise NotImplementedError


def weight_setting_problems(model: str, setting: str, names, value_ok=None, accepted="") -> list[str]:
    """Problems of a setting that names weights of `model`: a list of names, or a table of
    name = value whose values must pass ``value_ok(name, value)`` (`accepted` says what passes:
    a string, or a function of the name)."""
    from mpdref.models import parameter_shapes

    if not names:
        return []  # nothing named: nothing to check (and the network may be the config's problem)
    weights = [n for n in parameter_shapes(model) if n.endswith(".weight")]
    items = names.items() if isinstance(names, dict) else ((n, None) for n in names or ())
    problems = []
    for name, value in items:
        if name not in weights:
            problems.append(f"{setting}: {name!r} is not a weight of {model} (weights: {', '.join(weights)})")
        elif value_ok is not None and not value_ok(name, value):
            what = accepted(name) if callable(accepted) else accepted
            problems.append(f"{setting}.{name}: expected {what}, got {value!r}")
    return problems


def describe_stages() -> str:
    """Every registered stage: its type, what it does, and each setting with what it accepts and its
    default (`mpdref run --stages`). Importing mpdref.runner (as importing this module does) registers
    them all."""
    from mpdref.models import ARCHITECTURES

    lines = []
    for stage_type, cls in STAGES.items():
        lines.append(f"{stage_type}: {cls.description}")
        from_network = cls.defaults(next(iter(ARCHITECTURES)))
        for key, option in cls.options.items():
            if key in from_network:
                default = "default: from the network's recipe"
            elif option.default is REQUIRED:
                default = "required"
            else:
                default = "default: unset" if option.default is None else f"default: {option.default!r}"
            lines.append(f"  {key}: {option.describe()}; {default}" + (f". {option.help}" if option.help else ""))
        lines.append("")
    return "\n".join(lines).rstrip()
