"""The one registry of pipeline stages.

A stage is a class with a `type` name, its `options` (mpdref.runner.config.Option),
`defaults(model)`, `check(settings)` and `run(ctx, settings, resume)`. A method
adds a stage by decorating its class with :func:`register`; the runner finds it
here and needs no change.
"""
from __future__ import annotations

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
