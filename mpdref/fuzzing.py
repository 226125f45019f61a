"""Damage files the ways disks, networks and people do, and check how the readers react.

(It sits beside the runner, above io, models and data, because it drives all their readers.)

The rule for every reader in mpdref: a damaged file gives either a correct load
(the damage happened to be harmless, e.g. in padding) or the reader's documented
error (`mpdref.data.DataError` for IDX files, `mpdref.io.FormatError` for model
files and checkpoints); never another exception, a crash or a hang. The
hypothesis test (tests/test_fuzz.py) and `benchmarks/fuzz_formats.py` both use
:func:`mutate` and :func:`load_outcome` from here.
"""
from __future__ import annotations

import contextlib
import signal

import numpy as np

from mpdref.data import DataError
from mpdref.io import FormatError

MUTATIONS = ("flip_bit", "set_byte", "overwrite_run", "truncate", "extend", "delete_run", "duplicate_run",
             "splice", "zero_run")


def mutate(data: bytes, rng: np.random.Generator, other: bytes = b"", kind: str | None = None) -> tuple[str, bytes]:
    """One random damage to `data` (`other`: a second valid file to splice from). Returns (kind, damaged)."""
    kind = kind or MUTATIONS[rng.integers(len(MUTATIONS))]
    b = bytearray(data)
    n = len(b)
    # Headers hold most of the structure: aim half of the point damages at the first 600 bytes.
    pos = int(rng.integers(min(n, 600))) if n and rng.random() < 0.5 else int(rng.integers(max(n, 1)))
    run = int(rng.integers(1, 64))
    if kind == "flip_bit" and n:
        b[pos] ^= 1 << int(rng.integers(8))
    elif kind == "set_byte" and n:
        b[pos] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(256))]))
    elif kind == "overwrite_run" and n:
        b[pos : pos + run] = rng.integers(0, 256, min(run, n - pos), dtype=np.uint8).tobytes()
    elif kind == "truncate":
        b = b[: int(rng.integers(n + 1))] if n else b
    elif kind == "extend":
        b += rng.integers(0, 256, run, dtype=np.uint8).tobytes()
    elif kind == "delete_run":
        del b[pos : pos + run]
    elif kind == "duplicate_run":
        b[pos:pos] = b[pos : pos + run]
    elif kind == "splice" and other:
        cut, cut_other = int(rng.integers(n + 1)), int(rng.integers(len(other) + 1))
        b = b[:cut] + bytearray(other[cut_other:])
    elif kind == "zero_run" and n:
        b[pos : pos + run * 64] = bytes(len(b[pos : pos + run * 64]))
    return kind, bytes(b)


class CaseTimeout(Exception):
    """A reader ran past its time limit: a hang."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise CaseTimeout in the main thread after `seconds` (POSIX; no limit where SIGALRM is missing)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_outcome(kind: str, path, seconds: float = 10.0) -> str:
    """Load `path` as `kind` (idx, model, checkpoint, mpdz): "loaded" or "rejected"; anything else propagates."""
    from mpdref import data, models
    from mpdref.compress import decompress
    from mpdref.runner.checkpoint import read_checkpoint

    readers = {
        "idx": lambda: data.read_idx(path),
        "model": lambda: models.load(path),
        "checkpoint": lambda: read_checkpoint(path, FUZZ_DIGEST),
        "mpdz": lambda: decompress(path),
    }
    with time_limit(seconds):
        try:
            readers[kind]()
        except (DataError, FormatError):
            return "rejected"
    return "loaded"


FUZZ_DIGEST = "fuzz"


def sample_files(tmp_dir) -> dict[str, list[tuple[str, bytes]]]:
    """Valid files of each kind, written by mpdref's own writers, to damage: kind -> [(suffix, bytes)]."""
    import gzip
    from pathlib import Path

    from mpdref import models
    from mpdref.runner.checkpoint import write_checkpoint

    tmp_dir = Path(tmp_dir)
    rng = np.random.default_rng(0)
    samples: dict[str, list[tuple[str, bytes]]] = {"idx": [], "model": [], "checkpoint": [], "mpdz": []}
    for shape, code in (((40, 28, 28), 0x08), ((300,), 0x08)):
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        raw = bytes([0, 0, code, arr.ndim]) + np.array(shape, ">u4").tobytes() + arr.tobytes()
        samples["idx"] += [("", raw), (".gz", gzip.compress(raw))]
    for seed in (0, 1):
        net = models.build("lenet-300-100", seed=seed)
        net.set_mask("fc3.weight", rng.random((10, 100)) < 0.5)
        models.save(net, tmp_dir / "m.h5", {"seed": seed})
        samples["model"].append((".h5", (tmp_dir / "m.h5").read_bytes()))
        velocity = {k: np.zeros_like(v) for k, v in net.params.items()}
        progress = {"config_digest": FUZZ_DIGEST, "stage_index": 0, "epochs_done": seed, "finished": False,
                    "log_lines": 1, "results": [], "rng": {"dropout": net.rng.bit_generator.state, "shuffle": None}}
        write_checkpoint(tmp_dir / "c.h5", net, velocity, progress)
        samples["checkpoint"].append((".h5", (tmp_dir / "c.h5").read_bytes()))
        from mpdref.compress import compress
        from mpdref.prune import prune
        from mpdref.quantize import quantize_weight

        prune(net, keep={"fc1.weight": 0.05, "fc2.weight": 0.2})
        net.params["fc1.weight"] = quantize_weight(net.params["fc1.weight"], net.masks["fc1.weight"], 4)
        compress(net, tmp_dir / "m.mpdz")
        samples["mpdz"].append((".mpdz", (tmp_dir / "m.mpdz").read_bytes()))
    return samples
