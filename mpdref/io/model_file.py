"""Network files: model files and checkpoints, validated on load.

Layout (format ``mpdref-model`` or ``mpdref-checkpoint``, version 1), inside a
checksummed HDF5 file (:mod:`mpdref.io.hdf5`)::

    /                  attrs: format, version, architecture, dtype, mpdref_version,
                              metadata (JSON; a checkpoint's also holds its progress)
    /parameters/NAME   one dataset per parameter, PyTorch state_dict names and layout
    /masks/NAME        uint8 0/1, one per masked weight, the weight's shape
    /velocity/NAME     checkpoints only: the SGD momentum of each parameter

Loading never executes code: the checksum is verified first, then only numeric
datasets and string or integer attributes are read, and every one is checked
(presence, dtype, shape, finiteness, 0/1 masks, masked weights and their
momentum zero) before a network is built from it.
"""
from __future__ import annotations

import json

import numpy as np

from mpdref.io import FormatError
from mpdref.io.hdf5 import attr_str, check_format, open_verified_hdf5, read_dataset, write_verified_hdf5

MODEL_FORMAT = "mpdref-model"
CHECKPOINT_FORMAT = "mpdref-checkpoint"
FORMAT_VERSION = 1
_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def write_network_file(path, fmt: str, architecture: str, dtype, params: dict, masks: dict,
                       metadata: dict | None = None, mpdref_version: str = "",
                       per_parameter: dict[str, dict] | None = None) -> None:
    """Write a model file or checkpoint atomically (temporary file, checksum, fsync, rename).

    `per_parameter` adds groups keyed like the parameters (a checkpoint's ``velocity``).
    """
    dtype = np.dtype(dtype)
    with write_verified_hdf5(path) as f:
        f.attrs["format"] = fmt
        f.attrs["version"] = FORMAT_VERSION
        f.attrs["architecture"] = architecture
        f.attrs["dtype"] = dtype.name
        f.attrs["mpdref_version"] = mpdref_version
        f.attrs["metadata"] = json.dumps(metadata or {}, sort_keys=True)
        groups = {"parameters": params, **(per_parameter or {})}
        for group_name, arrays in groups.items():
            group = f.create_group(group_name)
            for name, value in arrays.items():
                group.create_dataset(name, data=np.asarray(value, dtype=dtype))
        group = f.create_group("masks")
        for name, value in masks.items():
            group.create_dataset(name, data=np.asarray(value, dtype=np.uint8))


def read_network_file(path, fmt: str, parameter_shapes, per_parameter: tuple[str, ...] = (),
                      optional: tuple[str, ...] = ()) -> dict:
    """Read and validate a model file or checkpoint.

    `parameter_shapes(architecture)` returns the dict name -> shape of a known
    architecture (and raises ValueError for an unknown one). Returns a dict with
    architecture, dtype, params, masks, metadata and one entry per name in
    `per_parameter`, and per name in `optional` whose group the file holds (validated
    the same way). Any problem raises :class:`FormatError` naming the file.
    """
    with open_verified_hdf5(path) as f:
        check_format(f, path, fmt, FORMAT_VERSION)
        architecture = attr_str(f, path, "architecture")
        try:
            expected = parameter_shapes(architecture)
        except ValueError as e:
            raise FormatError(f"{path}: {e}") from None
        dtype_name = attr_str(f, path, "dtype")
        if dtype_name not in _DTYPES:
            raise FormatError(f"{path}: dtype {dtype_name!r} is not float32 or float64")
        dtype = _DTYPES[dtype_name]
        try:
            metadata = json.loads(attr_str(f, path, "metadata"))
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: metadata is not valid JSON ({e})") from None
        if not isinstance(metadata, dict):
            raise FormatError(f"{path}: metadata must be a JSON object")

        content = {"architecture": architecture, "dtype": dtype, "metadata": metadata}
        per_parameter = (*per_parameter, *(name for name in optional if name in f))
        for group_name in ("parameters", *per_parameter):
            content[group_name] = _read_parameter_group(f, path, group_name, expected, dtype)
        params = content.pop("parameters")

        if "masks" not in f:
            raise FormatError(f"{path}: group /masks is missing")
        masks = {}
        for name in f["masks"].keys():
            if name not in expected:
                raise FormatError(f"{path}: /masks/{name} masks no parameter of {architecture}")
            mask = read_dataset(f["masks"], path, f"/masks/{name}", expected[name], np.dtype(np.uint8))
            if np.any(mask > 1):
                raise FormatError(f"{path}: /masks/{name} holds values other than 0 and 1")
            for group_name in ("parameters", *per_parameter):
                values = params if group_name == "parameters" else content[group_name]
                if np.any(values[name][mask == 0] != 0):
                    raise FormatError(f"{path}: /{group_name}/{name} is nonzero where /masks/{name} is 0")
            masks[name] = mask.astype(bool)
    return {**content, "params": params, "masks": masks}


def _read_parameter_group(f, path, group_name, expected, dtype) -> dict:
    if group_name not in f:
        raise FormatError(f"{path}: group /{group_name} is missing")
    group = f[group_name]
    stored = set(group.keys())
    missing = [k for k in expected if k not in stored]
    extra = sorted(stored - set(expected))
    if missing or extra:
        raise FormatError(f"{path}: /{group_name} does not match the architecture: missing {missing}, unexpected {extra}")
    arrays = {}
    for name, shape in expected.items():
        arrays[name] = read_dataset(group, path, f"/{group_name}/{name}", shape, dtype)
        if not np.all(np.isfinite(arrays[name])):
            raise FormatError(f"{path}: /{group_name}/{name} holds NaN or Inf")
    return arrays
