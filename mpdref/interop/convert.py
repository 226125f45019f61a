"""Other frameworks' weights in: a state_dict from a PyTorch, safetensors or ONNX file, as an mpdref network.

    state = read_state_dict("lenet.pt")                     # {name: array}, any of the three formats
    net = convert("lenet.safetensors", "lenet-300-100")      # a Network, masks included where the file has them

Each reader validates what it reads before it trusts it, and raises `mpdref.io.FormatError`
naming the file for anything it cannot read: a damaged, truncated or foreign file, a tensor
type mpdref has no NumPy dtype for.

- ``.pt`` / ``.pth``: PyTorch's zip archive (``torch.save`` since 1.6). The archive is checked
  first with Python's zipfile: its directory, and the CRC-32 of every record (torch.load itself
  checks none, so a flipped bit in a tensor would load as another weight); then
  ``torch.load(weights_only=True)``, which unpickles no code. The file holds a state_dict (a
  mapping of names to tensors), or a checkpoint dict with one under ``state_dict``,
  ``model_state_dict`` or ``model``. Needs torch (``pip install -e '.[crosscheck]'``).
- ``.safetensors``: read with NumPy alone, after the whole header is checked: an 8-byte
  little-endian header length that fits the file, a JSON object (no duplicate names) of
  {name: {dtype, shape, data_offsets}} and an optional ``__metadata__`` of strings, a known
  dtype, each tensor's byte count equal to its shape's, and the tensors covering the data
  exactly, back to back without gap or overlap (the safetensors library's own rule). BF16 is
  widened to float32 (exactly); BOOL bytes must be 0 or 1.
- ``.onnx``: the graph's initializers (`mpdref.interop.load_onnx` parses and checks the model).

`convert` maps the names to an architecture's parameters: they are PyTorch's names, as mpdref
uses them (``fc1.weight``), with DataParallel's ``module.`` prefix taken off where every name
has it. Masks come from ``mask.NAME`` (what `export_safetensors` writes) and from PyTorch's
pruning (``torch.nn.utils.prune`` leaves ``NAME_orig`` and ``NAME_mask``: the weight is their
product). In an ONNX file, integer initializers are graph constants (shapes, gather indices)
and are not parameters. Names or shapes that do not fit raise one ValueError, one line that
lists every missing and unexpected name and every shape that differs.
"""
from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mpdref import models
from mpdref.interop.export import MASK_PREFIX, STATE_DICT_FORMAT
from mpdref.interop.onnx_eval import UnsupportedModel, load_onnx, tensor_array
from mpdref.interop.torch_twin import require_torch
from mpdref.io import FormatError

SUFFIXES = {".pt": "pytorch", ".pth": "pytorch", ".safetensors": "safetensors", ".onnx": "onnx"}

#: safetensors dtype -> the NumPy dtype of its bytes (little-endian). BF16 is read as uint16 bits and widened.
SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

#: The largest header read, as the safetensors library limits it (100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000

#: Where a checkpoint dict may keep its state_dict.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def read_state_dict(path) -> dict[str, np.ndarray]:
    """The named arrays a ``.pt``/``.pth``, ``.safetensors`` or ``.onnx`` file holds (see the module
    docstring for what each reader checks). FormatError naming the file for one it cannot read;
    FileNotFoundError for a missing one; ImportError naming the extra for a .pt file without torch."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind == "pytorch":
        return read_torch_file(path)
    if kind == "safetensors":
        return read_safetensors(path)[0]
    if kind == "onnx":
        return read_onnx_initializers(path)
    raise ValueError(f"{path}: not a file convert reads; give a .pt, .pth, .safetensors or .onnx file")


# ----------------------------------------------------------------------------- safetensors


def _no_duplicate_names(pairs):
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"the name {next(n for n in names if names.count(n) > 1)!r} appears twice")
    return dict(pairs)


def _natural_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def safetensors_header(data: bytes, path) -> tuple[dict, dict, int]:
    """(entries {name: (dtype, shape, begin, end)} by offset, metadata, where the data starts) of a
    safetensors file's bytes, every field checked against the file; FormatError naming `path` otherwise."""
    if len(data) < 8:
        raise FormatError(f"{path}: {len(data)} bytes, too short for a safetensors file (an 8-byte header length)")
    length = int.from_bytes(data[:8], "little")
    if length > min(len(data) - 8, MAX_SAFETENSORS_HEADER):
        raise FormatError(f"{path}: its header would be {length:,} bytes; the file has {len(data) - 8:,} after the "
                          f"length (and a header may have {MAX_SAFETENSORS_HEADER:,})")
    try:
        text = data[8 : 8 + length].decode("utf-8")
        if not text.startswith("{"):
            raise ValueError("it does not begin with '{'")
        header = json.loads(text, object_pairs_hook=_no_duplicate_names)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError, JSONDecodeError; nesting past the stack
        raise FormatError(f"{path}: the header is not a JSON object: {error}") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{path}: __metadata__ is not a mapping of strings to strings")
    buffer_size = len(data) - 8 - length
    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{path}: tensor {name!r} is not {{dtype, shape, data_offsets}}: {str(info)[:200]}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise FormatError(f"{path}: tensor {name!r} has dtype {str(dtype)[:40]!r}, which mpdref does not read "
                              f"(it reads {', '.join(SAFETENSORS_DTYPES)})")
        if not isinstance(shape, list) or not all(_natural_number(d) for d in shape):
            raise FormatError(f"{path}: tensor {name!r} has shape {str(shape)[:200]}, not a list of sizes >= 0")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_natural_number(o) for o in offsets)
                or offsets[0] > offsets[1] or offsets[1] > buffer_size):
            raise FormatError(f"{path}: tensor {name!r} has data_offsets {str(offsets)[:200]}, not [begin, end] "
                              f"within the {buffer_size:,} bytes of data")
        expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != expected:
            raise FormatError(f"{path}: tensor {name!r} ({dtype} {shape}) needs {expected:,} bytes; its offsets "
                              f"span {offsets[1] - offsets[0]:,}")
        entries[name] = (dtype, tuple(shape), offsets[0], offsets[1])
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != position:
            what = "overlaps the one before" if begin < position else "leaves a gap after the one before"
            raise FormatError(f"{path}: tensor {name!r} begins at byte {begin:,} of the data and {what} "
                              f"(which ends at {position:,})")
        position = end
    if position != buffer_size:
        raise FormatError(f"{path}: the tensors cover {position:,} bytes; the data after the header is "
                          f"{buffer_size:,}")
    return entries, metadata, 8 + length


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors by name, in the file's order, native byte order; the header's __metadata__) of a
    safetensors file, read with NumPy after `safetensors_header` checked it."""
    path = Path(path)
    data = path.read_bytes()
    entries, metadata, start = safetensors_header(data, path)
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        stored = SAFETENSORS_DTYPES[dtype]
        raw = np.frombuffer(data, stored, math.prod(shape), start + begin).reshape(shape)
        if dtype == "BF16":  # bfloat16 is float32's upper half: widening is exact
            tensors[name] = (raw.astype(np.uint32) << 16).view(np.float32)
        elif dtype == "BOOL":
            as_bytes = raw.view(np.uint8)
            if np.any(as_bytes > 1):
                raise FormatError(f"{path}: BOOL tensor {name!r} holds bytes other than 0 and 1")
            tensors[name] = as_bytes.astype(np.bool_)
        else:
            tensors[name] = raw.astype(stored.newbyteorder("="))  # a copy, in native order
    return tensors, metadata


# ----------------------------------------------------------------------------- PyTorch


def check_zip_archive(data: bytes, path) -> None:
    """FormatError naming `path` unless `data` is a zip archive whose every record has its CRC-32."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            damaged = archive.testzip()  # reads every record and checks its CRC-32
    except Exception as error:  # zipfile's BadZipFile, and what a damaged directory makes struct or zlib raise
        if not data.startswith(b"PK"):
            raise FormatError(f"{path}: not a PyTorch zip archive (torch.save writes one since PyTorch 1.6; "
                              f"load and save the file again with a current torch)") from None
        raise FormatError(f"{path}: a damaged zip archive ({type(error).__name__}: {error})") from None
    if damaged is not None:
        raise FormatError(f"{path}: record {damaged!r} fails its CRC-32 check: the file is damaged")


def state_dict_of(loaded, path) -> Mapping:
    """The mapping of names to tensors that torch.load gave, directly or under a checkpoint's STATE_DICT_KEYS."""
    torch = require_torch()

    def is_state_dict(value) -> bool:
        return (isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
                and all(isinstance(v, torch.Tensor) for v in value.values()))

    if is_state_dict(loaded):
        return loaded
    if isinstance(loaded, Mapping):
        for key in STATE_DICT_KEYS:
            if key in loaded and is_state_dict(loaded[key]):
                return loaded[key]
    raise FormatError(f"{path}: holds a {type(loaded).__name__}, not a state_dict (a mapping of names to tensors, "
                      f"directly or under one of {', '.join(STATE_DICT_KEYS)})")


def read_torch_file(path) -> dict[str, np.ndarray]:
    """The state_dict of a PyTorch file (module docstring) as NumPy arrays; bfloat16 widened to float32."""
    torch = require_torch()
    path = Path(path)
    data = path.read_bytes()  # once: what is checked is what torch reads
    check_zip_archive(data, path)
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError (weights_only's refusals), RuntimeError from the archive
        raise FormatError(f"{path}: torch.load(weights_only=True) cannot read it "
                          f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    arrays = {}
    for name, tensor in state_dict_of(loaded, path).items():
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_complex():
            raise FormatError(f"{path}: tensor {name!r} is {tensor.layout} {tensor.dtype}; mpdref reads dense real "
                              f"tensors")
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()  # exact
        try:
            arrays[name] = tensor.numpy().copy()
        except TypeError as error:  # a dtype NumPy has none of (the float8 types, for one)
            raise FormatError(f"{path}: tensor {name!r}: {error}") from None
    return arrays


# ----------------------------------------------------------------------------- ONNX


def read_onnx_initializers(path) -> dict[str, np.ndarray]:
    """The initializers of an ONNX model file by name, in the graph's order."""
    proto = load_onnx(path)  # FormatError for a file that does not parse or check
    arrays = {}
    for tensor in proto.graph.initializer:
        if not isinstance(tensor.name, str):  # protobuf hands over a name that is not UTF-8 as bytes
            raise FormatError(f"{path}: an initializer's name is not UTF-8: {tensor.name[:60]!r}")
        if tensor.name in arrays:
            raise FormatError(f"{path}: two initializers are named {tensor.name!r}")
        try:
            arrays[tensor.name] = tensor_array(tensor, f"initializer {tensor.name!r}")
        except UnsupportedModel as error:
            raise FormatError(f"{path}: {error}") from None
        except Exception as error:  # to_array on data that does not fit the dims, a bad data_location
            raise FormatError(f"{path}: initializer {tensor.name!r} cannot be read ({type(error).__name__}: "
                              f"{error})") from None
    return arrays


# ----------------------------------------------------------------------------- to an mpdref network


def split_masks(tensors: dict[str, np.ndarray]) -> tuple[dict, dict, list[str]]:
    """(parameters, masks by weight name, problems) from a file's names: MASK_PREFIX + NAME is NAME's
    mask; PyTorch's pruning NAME_orig and NAME_mask are NAME = their product and its mask."""
    params, masks, problems = {}, {}, []
    for name, value in tensors.items():
        if name.startswith(MASK_PREFIX):
            masks[name[len(MASK_PREFIX):]] = value
        elif name.endswith("_mask") and name[: -len("_mask")] + "_orig" in tensors:
            masks[name[: -len("_mask")]] = value
        elif name.endswith("_orig") and name[: -len("_orig")] + "_mask" in tensors:
            mask = tensors[name[: -len("_orig")] + "_mask"]
            if mask.shape != value.shape:
                problems.append(f"{name} {value.shape} and its mask {mask.shape} differ in shape")
            else:
                params[name[: -len("_orig")]] = value * mask
        else:
            params[name] = value
    return params, masks, problems


def strip_common_prefix(names, prefix: str = "module.") -> str:
    """`prefix` where every one of `names` has it (DataParallel's), else ""."""
    return prefix if names and all(name.startswith(prefix) for name in names) else ""


def fit_problems(params: dict, masks: dict, model_name: str) -> list[str]:
    """What keeps `params` and `masks` from loading into `model_name`: missing and unexpected names, shapes
    that differ, values that are not real numbers, masks of no parameter."""
    expected = models.parameter_shapes(model_name)
    problems = []
    missing = [name for name in expected if name not in params]
    unexpected = [name for name in params if name not in expected]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    for name, value in params.items():
        if name not in expected:
            continue
        if value.shape != expected[name]:
            hint = " (its transpose)" if value.shape == expected[name][::-1] and value.ndim == 2 else ""
            problems.append(f"{name} is {value.shape} in the file, {model_name} needs {expected[name]}{hint}")
        elif value.dtype.kind not in "fiu":
            problems.append(f"{name} is {value.dtype}, not a number type")
    for name, mask in masks.items():
        if name not in expected:
            problems.append(f"a mask of {name}, which {model_name} does not have")
        elif mask.shape != expected[name]:
            problems.append(f"the mask of {name} is {mask.shape}, the weight {expected[name]}")
        elif not np.all((mask == 0) | (mask == 1)):
            problems.append(f"the mask of {name} holds values other than 0 and 1")
    return problems


def convert(in_path, model_name: str | None = None, dtype=np.float32) -> models.Network:
    """The mpdref network `model_name` holding the weights (and masks) of a .pt/.pth, .safetensors or .onnx
    file, in `dtype` (see the module docstring for the names). model_name None: the architecture a safetensors
    file written by mpdref names. ValueError, one line listing every problem, where the file does not fit."""
    path = Path(in_path)
    metadata = {}
    if SUFFIXES.get(path.suffix.lower()) == "safetensors":
        tensors, metadata = read_safetensors(path)
    else:
        tensors = read_state_dict(path)
    if SUFFIXES.get(path.suffix.lower()) == "onnx":  # shapes and indices the graph computes with: not parameters
        tensors = {name: value for name, value in tensors.items() if value.dtype.kind == "f"}
    written_for = metadata.get("architecture") if metadata.get("format") == STATE_DICT_FORMAT else None
    if model_name is None:
        if written_for is None:
            raise ValueError(f"{path}: name the architecture (one of {', '.join(models.ARCHITECTURES)})")
        model_name = written_for
    models.parameter_shapes(model_name)  # ValueError naming the choices for an unknown one
    prefix = strip_common_prefix(list(tensors))
    params, masks, problems = split_masks({name[len(prefix):]: value for name, value in tensors.items()})
    if written_for is not None and written_for != model_name:
        problems.insert(0, f"the file was written for {written_for}")
    problems += fit_problems(params, masks, model_name)
    if problems:
        raise ValueError(f"{path} does not fit {model_name}: {'; '.join(problems)}")
    net = models.build(model_name, dtype)
    net.load_state_dict(params)
    for name, mask in masks.items():
        net.set_mask(name, mask)
    return net


def convert_file(in_path, out_path, model_name: str | None = None) -> models.Network:
    """mpdref convert IN -o OUT.h5 --model NAME

    Read another framework's weights into an mpdref model file. IN is one of:

      .pt / .pth    a PyTorch state_dict (torch.save of model.state_dict(), or a checkpoint dict
                    holding one under state_dict, model_state_dict or model), read with
                    torch.load(weights_only=True) after its zip records' CRC-32s are checked.
                    Needs torch: pip install -e '.[crosscheck]'.
      .safetensors  read without torch; the header is validated before any byte is used.
      .onnx         the initializers of an ONNX model (e.g. from torch.onnx.export).

    Parameter names are PyTorch's, as mpdref's networks use them: fc1.weight, fc1.bias,
    conv1.weight, ... (a DataParallel "module." prefix is taken off). Masks are read from
    mask.NAME (what `mpdref export` writes) and from torch.nn.utils.prune's NAME_orig and
    NAME_mask. --model names the architecture (lenet-300-100, lenet-5, deep-mnist); a
    safetensors file written by mpdref names its own. Names or shapes that do not fit are one
    error line listing what is missing, what is unexpected and which shapes differ. OUT.h5 is
    written atomically, float32, with "converted_from" in its metadata.
    """
    net = convert(in_path, model_name)
    models.save(net, out_path, {"converted_from": Path(in_path).name})
    return net
