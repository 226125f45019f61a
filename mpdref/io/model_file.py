"""The HDF5 model file: architecture, parameters and masks, validated on load.

Layout (format ``mpdref-model``, version 1)::

    /                  attrs: format, version, architecture, dtype, mpdref_version, metadata (JSON)
    /parameters/NAME   one dataset per parameter, PyTorch state_dict names and layout
    /masks/NAME        uint8 0/1, one per masked weight, the weight's shape

Loading never executes code: only numeric datasets and string attributes are
read, and every one is checked (presence, dtype, shape, finiteness, 0/1
masks, masked weights zero) before a network is built from it.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from mpdref.io import FormatError
from mpdref.io.atomic import atomic_write

FORMAT_NAME = "mpdref-model"
FORMAT_VERSION = 1
_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def write_model_file(path, architecture: str, dtype, params: dict, masks: dict, metadata: dict | None = None,
                     mpdref_version: str = "") -> None:
    """Write a model file atomically (temporary file, fsync, rename)."""
    dtype = np.dtype(dtype)
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["version"] = FORMAT_VERSION
            f.attrs["architecture"] = architecture
            f.attrs["dtype"] = dtype.name
            f.attrs["mpdref_version"] = mpdref_version
            f.attrs["metadata"] = json.dumps(metadata or {}, sort_keys=True)
            group = f.create_group("parameters")
            for name, value in params.items():
                group.create_dataset(name, data=np.asarray(value, dtype=dtype))
            group = f.create_group("masks")
            for name, value in masks.items():
                group.create_dataset(name, data=np.asarray(value, dtype=np.uint8))


def _attr_str(f, path, key):
    if key not in f.attrs:
        raise FormatError(f"{path}: attribute {key!r} is missing")
    value = f.attrs[key]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise FormatError(f"{path}: attribute {key!r} must be a string, found {type(value).__name__}")
    return value


def read_model_file(path, parameter_shapes) -> dict:
    """Read and validate a model file.

    `parameter_shapes(architecture)` returns the dict name -> shape of a known
    architecture (and raises ValueError for an unknown one). Returns a dict
    with architecture, dtype, params, masks, metadata. Any problem raises
    :class:`FormatError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FormatError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {e}") from None
    try:
        with f:
            return _read_validated(f, path, parameter_shapes)
    except FormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise FormatError(f"{path}: corrupt model file: {type(e).__name__}: {e}") from None


def _read_validated(f, path, parameter_shapes) -> dict:
    fmt = _attr_str(f, path, "format")
    if fmt != FORMAT_NAME:
        raise FormatError(f"{path}: format is {fmt!r}, not an {FORMAT_NAME} file")
    if "version" not in f.attrs:
        raise FormatError(f"{path}: attribute 'version' is missing")
    version = f.attrs["version"]
    version = int(version) if isinstance(version, (int, np.integer)) else version
    if version != FORMAT_VERSION:
        raise FormatError(
            f"{path}: {FORMAT_NAME} version {version!r} is not supported (this mpdref reads version "
            f"{FORMAT_VERSION}); a newer file needs a newer mpdref"
        )
    architecture = _attr_str(f, path, "architecture")
    try:
        expected = parameter_shapes(architecture)
    except ValueError as e:
        raise FormatError(f"{path}: {e}") from None
    dtype_name = _attr_str(f, path, "dtype")
    if dtype_name not in _DTYPES:
        raise FormatError(f"{path}: dtype {dtype_name!r} is not float32 or float64")
    dtype = _DTYPES[dtype_name]
    try:
        metadata = json.loads(_attr_str(f, path, "metadata")) if "metadata" in f.attrs else {}
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: metadata is not valid JSON ({e})") from None
    for group in ("parameters", "masks"):
        if group not in f or not isinstance(f[group], h5py.Group):
            raise FormatError(f"{path}: group /{group} is missing")

    params = {}
    stored = set(f["parameters"].keys())
    missing = [k for k in expected if k not in stored]
    extra = sorted(stored - set(expected))
    if missing or extra:
        raise FormatError(
            f"{path}: parameters do not match {architecture}: missing {missing}, unexpected {extra}"
        )
    for name, shape in expected.items():
        params[name] = _read_dataset(f["parameters"], name, path, "parameters", shape, dtype)
        if not np.all(np.isfinite(params[name])):
            raise FormatError(f"{path}: /parameters/{name} holds NaN or Inf")

    masks = {}
    for name in f["masks"].keys():
        if name not in expected:
            raise FormatError(f"{path}: /masks/{name} masks no parameter of {architecture}")
        mask = _read_dataset(f["masks"], name, path, "masks", expected[name], np.dtype(np.uint8))
        if np.any(mask > 1):
            raise FormatError(f"{path}: /masks/{name} holds values other than 0 and 1")
        if np.any(params[name][mask == 0] != 0):
            raise FormatError(f"{path}: /parameters/{name} is nonzero where /masks/{name} is 0")
        masks[name] = mask.astype(bool)
    return {"architecture": architecture, "dtype": dtype, "params": params, "masks": masks,
            "metadata": metadata}


def _read_dataset(group, name, path, group_name, shape, dtype):
    item = group[name]
    if not isinstance(item, h5py.Dataset):
        raise FormatError(f"{path}: /{group_name}/{name} is not a dataset")
    if tuple(item.shape) != tuple(shape):
        raise FormatError(f"{path}: /{group_name}/{name} has shape {tuple(item.shape)}, expected {tuple(shape)}")
    if item.dtype != dtype:
        raise FormatError(f"{path}: /{group_name}/{name} is {item.dtype}, expected {dtype}")
    return item[()]

