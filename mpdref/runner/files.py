"""The JSON files of a run directory: written atomically, read with errors that name the file."""
from __future__ import annotations

import json
from pathlib import Path

from mpdref.io.atomic import write_bytes_atomic


class RunDirectoryError(ValueError):
    """The run directory cannot be used (it holds a finished run, or is not a directory)."""


def write_json(path: Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunDirectoryError(f"{path}: missing; {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirectoryError(f"{path}: unreadable ({e})") from None


def read_log(out) -> list[dict]:
    """The complete JSON lines of RUN_DIR/log.jsonl (a torn last line is skipped)."""
    path = Path(out) / "log.jsonl"
    records = []
    if not path.exists():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records
