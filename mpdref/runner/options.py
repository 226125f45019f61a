"""A setting of an experiment config: its type, default, accepted values and help (`Option`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

REQUIRED = object()  # the default of a setting that a config must give


@dataclass(frozen=True)
class Option:
    """One setting: its type, default (or REQUIRED), accepted values and a description."""

    kind: type  # int, float, str, bool, list, dict (a TOML table), or object (any value; `check` decides)
    default: Any = REQUIRED
    choices: tuple = ()
    check: Callable[[Any], bool] | None = None
    accepted: str = ""  # how to say what `check` accepts
    help: str = ""

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return self.accepted or f"a {self.kind.__name__}"

    def validate(self, path: str, value, problems: list):
        kind_ok = {
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
            bool: isinstance(value, bool),
            list: isinstance(value, list),
            dict: isinstance(value, dict),
            object: True,
        }[self.kind]
        if not kind_ok:
            problems.append(f"{path}: expected {self.describe()}, got {value!r} ({type(value).__name__})")
            return None
        if self.kind is float:
            value = float(value)
            if not math.isfinite(value):
                problems.append(f"{path}: expected a finite number, got {value!r}")
                return None
        if self.choices and value not in self.choices:
            problems.append(f"{path}: expected {self.describe()}, got {value!r}")
            return None
        if self.check is not None and not self.check(value):
            problems.append(f"{path}: expected {self.describe()}, got {value!r}")
            return None
        return value
