"""Damage files the ways disks, networks and people do, and check how the readers react.

Test tooling, not part of the package: it drives the readers of every layer (IDX files
in mpdref.data, model files in mpdref.models, checkpoints in mpdref.runner, .mpdz files
in mpdref.compress, and other frameworks' ONNX, safetensors and PyTorch files in
mpdref.interop.convert), so it belongs to none of them. The hypothesis test
(tests/test_fuzz.py; pytest puts tests/ on sys.path) and `benchmarks/fuzz_formats.py`
(which puts tests/ on sys.path itself) both use :func:`mutate`, :func:`allowed_contents`
and :func:`load_outcome` from here.

The rule for every reader in mpdref: a damaged file gives either the reader's documented
error (`mpdref.data.DataError` for IDX files, `mpdref.io.FormatError` for model files,
checkpoints, .mpdz files and the files `mpdref.interop.convert.read_state_dict` reads) or a
load of the right content; never a load of other content, another exception, a crash or a
hang. The right content:

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
- PyTorch files (.pt, kind "pt") are zip archives with a CRC-32 over every record, which
  `read_state_dict` checks before torch.load: like the checksummed formats, one that loads
  must hold the sample's state_dict exactly (after a splice, either file's).
- safetensors and ONNX files carry no checksum either: what loads must be what the damaged
  bytes say, by a decoder that is not the reader. For safetensors that is the safetensors
  library itself (Rust; `safetensors.deserialize`, its names, dtypes, shapes and bytes);
  for ONNX `onnx_initializers_decode` below, a plain protobuf walk of ModelProto.graph
  .initializer that follows protobuf's parsing rules (last value wins, repeated and packed
  fields, merged repeats of a message, unknown fields and groups skipped) and numpy_helper's
  conversion. Where the decoder finds nothing, nothing may load.
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
from mpdref.compress import compress, decompress, fold_biases
from mpdref.darb import regular_prune
from mpdref.data import DataError, read_idx
from mpdref.io import FormatError
from mpdref.prune import prune
from mpdref.quantize import quantize_weight
from mpdref.runner.checkpoint import read_checkpoint, write_checkpoint

try:  # the interop extra; without it the ONNX, safetensors and PyTorch kinds are left out
    import safetensors

    from mpdref.interop.convert import read_state_dict
    from mpdref.interop.export import export_onnx, export_safetensors
    from mpdref.mpd import apply_mpd_masks
except ImportError:
    read_state_dict = None
try:
    import torch
except ImportError:
    torch = None

#: The kinds of file, by the reader that reads them (see `read`).
BASE_KINDS = ("idx", "model", "checkpoint", "mpdz")
INTEROP_KINDS = ("onnx", "safetensors", "pt")


def available_kinds() -> tuple[str, ...]:
    """The kinds whose readers (and samples' writers) are installed: the interop ones need the interop
    extra, "pt" torch too."""
    if read_state_dict is None:
        return BASE_KINDS
    return BASE_KINDS + tuple(k for k in INTEROP_KINDS if k != "pt" or torch is not None)

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
    if kind in INTEROP_KINDS:
        return read_state_dict(path)
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
    if kind in INTEROP_KINDS:
        return {f"tensors/{name}": value for name, value in loaded.items()}
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


# ----------------------------------------------------------------------------- decoders of the unchecksummed formats


def decoded_content(kind: str, data: bytes) -> dict:
    """The content the reader of `kind` ("onnx", "safetensors") must load from `data`, by a decoder that is not
    the reader; {"undecodable": True} where that finds nothing (then nothing may load)."""
    decoded = onnx_initializers_decode(data) if kind == "onnx" else safetensors_decode(data)
    if decoded is None:
        return {"undecodable": True}
    return {f"tensors/{name}": value for name, value in decoded.items()}


#: safetensors dtype -> NumPy dtype of its bytes, as mpdref's reader documents it (BF16 widened to float32).
SAFETENSORS_BYTES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
                     "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1"}


def safetensors_decode(data: bytes) -> dict | None:
    """{name: array} as the safetensors library reads `data` (its own validation; its names, dtypes, shapes and
    bytes), converted as `read_safetensors` documents: BF16 widened to float32, BOOL only from bytes 0 and 1.
    None where the library refuses the bytes or they hold a dtype or bool byte mpdref does not read."""
    try:
        entries = safetensors.deserialize(data)
    except Exception:  # noqa: BLE001 - safetensors.SafetensorError, and whatever else it raises: it refuses
        return None
    decoded = {}
    for name, info in entries:
        if info["dtype"] not in SAFETENSORS_BYTES:
            return None
        array = np.frombuffer(bytes(info["data"]), SAFETENSORS_BYTES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] == "BOOL":
            if np.any(array > 1):
                return None
            array = array.astype(np.bool_)
        decoded[name] = array.astype(array.dtype.newbyteorder("="))
    return decoded


class ProtobufError(ValueError):
    """Bytes that no protobuf parser reads as a message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`: at most 10 bytes, bits past 64 dropped."""
    value = 0
    for i in range(10):
        if pos >= len(data):
            raise ProtobufError("a varint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value & 0xFFFF_FFFF_FFFF_FFFF, pos
    raise ProtobufError("a varint longer than 10 bytes")


def protobuf_fields(data: bytes, pos: int = 0, group: int | None = None) -> tuple[list, int]:
    """([(field number, wire type, value)], the end) of one message's bytes, from `pos`: varints as unsigned
    64-bit integers, fixed and length-delimited values as bytes. A group (wire types 3 and 4, the deprecated
    encoding) is read to its end and left out, as parsers skip an unknown one; ProtobufError for bytes that
    are no message."""
    fields = []
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if key > 0xFFFF_FFFF or number == 0:
            raise ProtobufError(f"field number {number}")
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(data):
                raise ProtobufError("a fixed-size value runs past the end")
            value, pos = data[pos : pos + size], pos + size
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("a length-delimited value runs past the end")
            value, pos = data[pos : pos + length], pos + length
        elif wire == 3:
            _, pos = protobuf_fields(data, pos, group=number)
            continue
        elif wire == 4 and group == number:
            return fields, pos
        else:
            raise ProtobufError(f"wire type {wire} of field {number}")
        fields.append((number, wire, value))
    if group is not None:
        raise ProtobufError(f"group {group} does not end")
    return fields, pos


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _packed_varints(payload: bytes) -> list[int]:
    values, pos = [], 0
    while pos < len(payload):
        value, pos = _varint(payload, pos)
        values.append(value)
    return values


#: ONNX element type -> (NumPy dtype, the TensorProto field that holds its values when raw_data is absent), for
#: the types `run_onnx` computes with (`mpdref.interop.onnx_eval.ELEMENT_TYPES`); the reader refuses the others.
ONNX_TYPES = {1: (np.float32, "float_data"), 11: (np.float64, "double_data"), 10: (np.float16, "int32_data"),
              9: (np.bool_, "int32_data"), 3: (np.int8, "int32_data"), 5: (np.int16, "int32_data"),
              6: (np.int32, "int32_data"), 7: (np.int64, "int64_data"), 2: (np.uint8, "int32_data"),
              4: (np.uint16, "int32_data"), 12: (np.uint32, "uint64_data"), 13: (np.uint64, "uint64_data")}


def onnx_tensor_decode(payload: bytes) -> tuple[str, np.ndarray] | None:
    """(name, array) of a serialized TensorProto, as onnx.numpy_helper.to_array converts it; None where that
    refuses (a segment, external data, an element type not in ONNX_TYPES, values that do not fit the dims)."""
    dims, typed = [], {"float_data": [], "double_data": [], "int32_data": [], "int64_data": [], "uint64_data": []}
    data_type, name, raw, segment, location = 0, b"", None, False, 0
    for number, wire, value in protobuf_fields(payload)[0]:
        if number == 1 and wire in (0, 2):  # dims, int64: unpacked or packed
            dims += [_signed(v, 64) for v in ([value] if wire == 0 else _packed_varints(value))]
        elif number == 2 and wire == 0:
            data_type = _signed(value, 32)
        elif number == 3 and wire == 2:
            segment = True
        elif number == 4 and wire in (2, 5):
            if len(value) % 4:
                raise ProtobufError("packed floats of a length not a multiple of 4")
            typed["float_data"] += np.frombuffer(value, "<f4").tolist()
        elif number in (5, 7, 11) and wire in (0, 2):
            values = [value] if wire == 0 else _packed_varints(value)
            field, bits = {5: ("int32_data", 32), 7: ("int64_data", 64), 11: ("uint64_data", None)}[number]
            typed[field] += values if bits is None else [_signed(v, bits) for v in values]
        elif number == 8 and wire == 2:
            name = value
        elif number == 9 and wire == 2:
            raw = value
        elif number == 10 and wire in (1, 2):
            if len(value) % 8:
                raise ProtobufError("packed doubles of a length not a multiple of 8")
            typed["double_data"] += np.frombuffer(value, "<f8").tolist()
        elif number == 14 and wire == 0 and _signed(value, 32) in (0, 1):  # a closed enum: others are unknown
            location = _signed(value, 32)
    if segment or location == 1 or data_type not in ONNX_TYPES:
        return None
    try:
        name = name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    dtype, field = ONNX_TYPES[data_type]
    try:
        with np.errstate(all="ignore"):
            if raw is not None:
                return name, np.frombuffer(raw, dtype).reshape(dims)
            values = typed[field]
            if dtype in (np.float16, np.int16, np.uint16):
                return name, np.array(values, np.int32).view(np.uint32).astype(np.uint16).reshape(dims).view(dtype)
            if dtype == np.bool_:
                return name, np.array(values, np.int32).view(np.uint32).astype(np.uint8).view(dtype).reshape(dims)
            storage = {"float_data": np.float32, "double_data": np.float64, "int32_data": np.int32,
                       "int64_data": np.int64, "uint64_data": np.uint64}[field]
            return name, np.asarray(values, storage).astype(dtype).reshape(dims)
    except (ValueError, OverflowError):
        return None


def onnx_initializers_decode(data: bytes) -> dict | None:
    """{name: array} of the initializers of a serialized ModelProto: the graph (field 7; repeats of it merge,
    so their initializers join) and its initializers (field 5), in order. None where the bytes are no
    ModelProto, an initializer does not convert (`onnx_tensor_decode`) or two share a name."""
    try:
        graph = b"".join(value for number, wire, value in protobuf_fields(data)[0] if number == 7 and wire == 2)
        tensors = [onnx_tensor_decode(value) for number, wire, value in protobuf_fields(graph)[0]
                   if number == 5 and wire == 2]
    except ProtobufError:
        return None
    if any(t is None for t in tensors) or len({name for name, _ in tensors}) != len(tensors):
        return None
    return dict(tensors)


class Outcome(NamedTuple):
    verdict: str  # "loaded", "rejected" or "loaded-different"
    differing: tuple[str, ...] = ()  # for "loaded-different": the items that differ, e.g. "params/fc1.weight"


def load_outcome(kind: str, path, allowed: list[dict], seconds: float = 10.0) -> Outcome:
    """Load `path` as `kind` within `seconds` and judge the load against `allowed` (contents).

    "rejected": the reader raised its documented error. "loaded": the content is one of
    `allowed` (IDX: the one `idx_expected` derives from the file and `allowed`; ONNX and
    safetensors: the one `decoded_content` reads from the file's bytes, whatever `allowed` says).
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
    elif kind in ("onnx", "safetensors"):
        allowed = [decoded_content(kind, Path(path).read_bytes())]
    differing = min((differences(expected, found) for expected in allowed), key=len)
    return Outcome("loaded-different", tuple(differing)) if differing else Outcome("loaded")


def interop_files(tmp_dir, rng) -> dict[str, list[tuple[str, bytes]]]:
    """(suffix, bytes) of valid files of the interop kinds that are installed: ONNX files that
    `export_onnx` writes (a pruned network, dense, and an MPD network in block form), safetensors files
    that `export_safetensors` writes (the same two networks, masks included) and PyTorch files that
    torch.save writes (a state_dict, and a checkpoint dict holding one)."""
    kinds = available_kinds()
    files = {kind: [] for kind in INTEROP_KINDS if kind in kinds}
    if not files:
        return files
    pruned = models.build("lenet-300-100", seed=3)
    prune(pruned, keep={"fc1.weight": 0.05, "fc2.weight": 0.2})
    mpd = models.build("lenet-300-100", seed=4)
    apply_mpd_masks(mpd, {"fc1.weight": 10, "fc2.weight": 10}, rng, rescale=False)
    for net in (pruned, mpd):
        export_onnx(net, tmp_dir / "m.onnx")
        files["onnx"].append((".onnx", (tmp_dir / "m.onnx").read_bytes()))
        export_safetensors(net, tmp_dir / "m.safetensors")
        files["safetensors"].append((".safetensors", (tmp_dir / "m.safetensors").read_bytes()))
    if "pt" in files:
        for seed in (0, 1):
            state = {name: torch.from_numpy(value) for name, value in models.build("lenet-300-100", seed=seed)
                     .params.items()}
            torch.save(state if seed == 0 else {"epoch": 3, "model_state_dict": state}, tmp_dir / "m.pt")
            files["pt"].append((".pt", (tmp_dir / "m.pt").read_bytes()))
    return files


def sample_files(tmp_dir) -> dict[str, list[Sample]]:
    """Valid files of each kind (`available_kinds`), written by their writers and read back for their content."""
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
    net = models.build("lenet-5", seed=3)  # folded biases, stored sparse: an .mpdz of version 4
    prune(net, keep={"conv1.weight": 0.5, "conv2.weight": 0.03, "fc1.weight": 0.003, "fc2.weight": 0.07})
    fold_biases(net)
    compress(net, tmp_dir / "m.mpdz")
    files["mpdz"].append((".mpdz", (tmp_dir / "m.mpdz").read_bytes()))
    files.update(interop_files(tmp_dir, rng))
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
