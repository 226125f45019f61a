"""Damage files the ways disks, networks and people do, and check how the readers react.

Test tooling, not part of the package: it drives the readers of every layer (IDX files
in mpdref.data, model files in mpdref.models, checkpoints in mpdref.runner, .mpdz files
in mpdref.compress), so it belongs to none of them. The hypothesis test
(tests/test_fuzz.py; pytest puts tests/ on sys.path) and `benchmarks/fuzz_formats.py`
(which puts tests/ on sys.path itself) both use :func:`mutate`, :func:`allowed_contents`
and :func:`load_outcome` from here.

The rule for every reader in mpdref: a damaged file gives either the reader's documented
error (`mpdref.data.DataError` for IDX files, `mpdref.io.FormatError` for model files,
checkpoints and .mpdz files) or a load of the right content; never a load of other
content, another exception, a crash or a hang. The right content:

- Model files, checkpoints and .mpdz files carry a SHA-256 over everything they hold,
  so one that loads despite its damage (the damage hit, say, the padding of the HDF5
  user block) must hold exactly what the undamaged sample held: the architecture, every
  parameter and mask, a checkpoint's velocity and progress (counters, results, random
  generator states), a model file's metadata.
- A splice joins the start of the sample to the end of a second valid file (`other`);
  cut at the very start of both, it is `other` whole. So a spliced file that loads may
  hold the sample's content or `other`'s, and nothing else.
- IDX files carry no checksum at all, over the pixels or the header, and `read_idx` only
  checks that the header is well-formed and that the payload has the length it declares.
  Damage that keeps those consistent loads, with other content: changed pixels, but also
  a type code turned from 0x08 (uint8) to 0x09 (int8) by one flipped bit, or dimensions
  and payload length changed together by a deleted run. Nothing in the file can tell
  such a load from the original (MNIST itself is guarded by the SHA-256 that
  `mpdref.data.load_mnist` checks), so the right content is what the damaged bytes say:
  exactly what an independent decoder, `naive.idx_decode`, makes of them (dtype, shape and
  every value, bit for bit); and where the header (the magic number and the sizes, 4 + 4·d
  bytes) is still the original's, the original's dtype and shape (`idx_expected`).
"""
from __future__ import annotations

import contextlib
import gzip
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

import naive
from mpdref import models
from mpdref.compress import compress, decompress
from mpdref.darb import regular_prune
from mpdref.data import DataError, read_idx
from mpdref.io import FormatError
from mpdref.prune import prune
from mpdref.quantize import quantize_weight
from mpdref.runner.checkpoint import read_checkpoint, write_checkpoint

MUTATIONS = ("flip_bit", "set_byte", "overwrite_run", "truncate", "extend", "delete_run", "duplicate_run",
             "splice", "zero_run")
FUZZ_DIGEST = "fuzz"  # the config fingerprint of the sample checkpoints


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


def read(kind: str, path):
    """What the reader of `kind` (idx, model, checkpoint, mpdz) returns for `path`."""
    if kind == "idx":
        return read_idx(path)
    if kind == "model":
        return models.load(path)
    if kind == "checkpoint":
        return read_checkpoint(path, FUZZ_DIGEST)
    if kind == "mpdz":
        return decompress(path)
    raise ValueError(f"unknown kind of file {kind!r}")


def _network_content(net: models.Network) -> dict:
    return {"architecture": net.name,
            **{f"params/{name}": value for name, value in net.params.items()},
            **{f"masks/{name}": mask for name, mask in net.masks.items()}}


def content_of(kind: str, loaded) -> dict:
    """What of `read(kind, ...)`'s result a load must get right, by name (see the module docstring).

    Model file: the network and its metadata. Checkpoint: the network, the velocity of each
    parameter and every progress field. .mpdz: the decoded network (the format stores no
    metadata). IDX: the array's dtype, shape and values.
    """
    if kind == "idx":
        return {"dtype": str(loaded.dtype), "shape": loaded.shape, "values": loaded}
    if kind == "model":
        return {**_network_content(loaded), "metadata": loaded.metadata}
    if kind == "checkpoint":
        progress = {f"progress/{key}": value for key, value in loaded.items() if key not in ("net", "velocity")}
        return {**_network_content(loaded["net"]),
                **{f"velocity/{name}": value for name, value in loaded["velocity"].items()}, **progress}
    if kind == "mpdz":
        return _network_content(loaded)
    raise ValueError(f"unknown kind of file {kind!r}")


def differences(expected: dict, found: dict) -> list[str]:
    """The names, sorted, of the items that are in one content only, or differ (arrays: in dtype, shape or bits)."""
    def same(a, b) -> bool:
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                    and a.shape == b.shape and a.tobytes() == b.tobytes())
        return a == b

    return [name for name in sorted(expected.keys() | found.keys())
            if name not in expected or name not in found or not same(expected[name], found[name])]


@dataclass(frozen=True)
class Sample:
    """A valid file to damage: its name's suffix (the readers go by it), its bytes, and its content
    (`content_of` its undamaged load: what a damaged copy that loads must reproduce; for an IDX
    file, with its "header", for `idx_expected`)."""

    suffix: str
    data: bytes
    content: dict


def allowed_contents(sample: Sample, other: Sample, mutations) -> list[dict]:
    """The contents `sample` may load with after `mutations` were applied: its own, after a splice also `other`'s
    (for an IDX file, the originals whose headers `idx_expected` compares with the damaged file's)."""
    return [sample.content, other.content] if "splice" in mutations else [sample.content]


def idx_header(path) -> bytes:
    """The header of the IDX file at `path` (gunzipped where its name ends in .gz, as read_idx reads it):
    the magic number and one size per dimension, 4 + 4·d bytes, d its fourth byte."""
    data = Path(path).read_bytes()
    idx = gzip.decompress(data) if Path(path).name.endswith(".gz") else data
    return idx[: 4 + 4 * idx[3]]


def idx_expected(path, originals: list[dict]) -> dict:
    """The content the IDX file at `path`, which loaded, must have loaded (see the module docstring):
    what `naive.idx_decode` makes of its bytes (where it makes nothing, no content is right); and
    where its header is one of `originals`' (contents of undamaged samples), that one's dtype and shape."""
    decoded = naive.idx_decode(Path(path).read_bytes(), gzipped=Path(path).name.endswith(".gz"))
    if decoded is None:
        expected = {"dtype": None, "shape": None, "values": None}
    else:
        expected = {"dtype": str(decoded.dtype), "shape": decoded.shape, "values": decoded}
    header = idx_header(path)  # it loaded: its gzip stream, if any, is whole, and its header too
    for original in originals:
        if header == original["header"]:
            expected.update(dtype=original["dtype"], shape=original["shape"])
    return expected


class Outcome(NamedTuple):
    verdict: str  # "loaded", "rejected" or "loaded-different"
    differing: tuple[str, ...] = ()  # for "loaded-different": the items that differ, e.g. "params/fc1.weight"


def load_outcome(kind: str, path, allowed: list[dict], seconds: float = 10.0) -> Outcome:
    """Load `path` as `kind` within `seconds` and judge the load against `allowed` (contents).

    "rejected": the reader raised its documented error. "loaded": the content is one of
    `allowed` (IDX: the one `idx_expected` derives from the file and `allowed`).
    "loaded-different": it is none of them; `differing` names what differs from the closest.
    Any other exception propagates (CaseTimeout for a hang).
    """
    with time_limit(seconds):
        try:
            loaded = read(kind, path)
        except (DataError, FormatError):
            return Outcome("rejected")
    found = content_of(kind, loaded)
    if kind == "idx":
        allowed = [idx_expected(path, allowed)]
    differing = min((differences(expected, found) for expected in allowed), key=len)
    return Outcome("loaded-different", tuple(differing)) if differing else Outcome("loaded")


def sample_files(tmp_dir) -> dict[str, list[Sample]]:
    """Valid files of each kind, written by mpdref's own writers and read back for their content."""
    tmp_dir = Path(tmp_dir)
    rng = np.random.default_rng(0)
    files: dict[str, list[tuple[str, bytes]]] = {"idx": [], "model": [], "checkpoint": [], "mpdz": []}
    for shape, code in (((40, 28, 28), 0x08), ((300,), 0x08)):
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        raw = bytes([0, 0, code, arr.ndim]) + np.array(shape, ">u4").tobytes() + arr.tobytes()
        files["idx"] += [("", raw), (".gz", gzip.compress(raw))]
    for seed in (0, 1):
        net = models.build("lenet-300-100", seed=seed)
        net.set_mask("fc3.weight", rng.random((10, 100)) < 0.5)
        models.save(net, tmp_dir / "m.h5", {"seed": seed})
        files["model"].append((".h5", (tmp_dir / "m.h5").read_bytes()))
        velocity = {name: value / 10 for name, value in net.params.items()}  # nonzero, zero where masked
        progress = {"config_digest": FUZZ_DIGEST, "stage_index": 0, "epochs_done": seed, "finished": False,
                    "log_lines": 1, "results": [], "rng": {"dropout": net.rng.bit_generator.state, "shuffle": None}}
        write_checkpoint(tmp_dir / "c.h5", net, velocity, progress)
        files["checkpoint"].append((".h5", (tmp_dir / "c.h5").read_bytes()))
        prune(net, keep={"fc1.weight": 0.05, "fc2.weight": 0.2})
        net.params["fc1.weight"] = quantize_weight(net.params["fc1.weight"], net.masks["fc1.weight"], 4)
        compress(net, tmp_dir / "m.mpdz")
        files["mpdz"].append((".mpdz", (tmp_dir / "m.mpdz").read_bytes()))
    net = models.build("lenet-300-100", seed=2)  # darb layers: an .mpdz of version 3
    regular_prune(net, {"fc1.weight": 0.05, "fc2.weight": 0.2}, "darb")
    regular_prune(net, {"fc3.weight": 0.5}, "bmwm")
    net.params["fc1.weight"] = quantize_weight(net.params["fc1.weight"], net.masks["fc1.weight"], 4)
    compress(net, tmp_dir / "m.mpdz")
    files["mpdz"].append((".mpdz", (tmp_dir / "m.mpdz").read_bytes()))
    samples: dict[str, list[Sample]] = {}
    for kind, entries in files.items():
        samples[kind] = []
        for i, (suffix, raw) in enumerate(entries):
            path = tmp_dir / f"sample-{kind}-{i}{suffix}"
            path.write_bytes(raw)
            content = content_of(kind, read(kind, path))
            if kind == "idx":
                content["header"] = idx_header(path)
            samples[kind].append(Sample(suffix, raw, content))
    return samples
