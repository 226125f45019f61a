"""HDF5 files that are verified before the HDF5 library reads them.

Every HDF5 file mpdref writes reserves a 512-byte user block (a region at the
start of the file that HDF5 itself skips; h5py, h5dump and HDFView open such
files as usual). After the file is complete, the writer stores there:

    mpdref-hdf5-checksum 1\\n
    length <bytes in the whole file>\\n
    sha256 <hex digest of every byte after the user block>\\n

A reader checks the length and the digest *before* it lets the HDF5 library
parse anything, so a truncated, mutated or spliced file is rejected with a
:class:`FormatError` and never reaches the C parser. Files are written to a
temporary name and renamed (see :mod:`mpdref.io.atomic`).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path

import h5py

from mpdref.io import FormatError
from mpdref.io.atomic import atomic_write

USERBLOCK_SIZE = 512
_MAGIC = b"mpdref-hdf5-checksum 1\n"


def _digest_after_userblock(f, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    f.seek(USERBLOCK_SIZE)
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def write_verified_hdf5(path):
    """Yield an h5py.File open for writing; on success seal it with its checksum and rename it."""
    with atomic_write(path) as tmp:
        f = h5py.File(tmp, "w", userblock_size=USERBLOCK_SIZE)
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):  # closing a half-written file fails too; keep the first error
                f.close()
            raise
        try:
            f.close()
        except (RuntimeError, OSError) as e:  # the final flush can fail (disk full)
            raise OSError(getattr(e, "errno", None) or errno.EIO, f"HDF5 could not finish the file: {e}") from None
        with open(tmp, "r+b") as raw:
            digest = _digest_after_userblock(raw)
            length = os.fstat(raw.fileno()).st_size
            header = _MAGIC + f"length {length}\nsha256 {digest}\n".encode()
            raw.seek(0)
            raw.write(header.ljust(USERBLOCK_SIZE, b"\0"))


def verify_hdf5(path) -> None:
    """Raise FormatError unless `path` is a complete, unmodified file written by `write_verified_hdf5`."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            head = raw.read(USERBLOCK_SIZE)
            if not head.startswith(_MAGIC):
                raise FormatError(
                    f"{path}: not an mpdref HDF5 file (no mpdref checksum header; written by another "
                    f"program, or its first bytes are damaged)"
                )
            fields = {}
            for line in head[len(_MAGIC):].split(b"\0", 1)[0].splitlines():
                key, _, value = line.partition(b" ")
                fields[key] = value
            try:
                length = int(fields[b"length"])
                digest = fields[b"sha256"].decode("ascii")
            except (KeyError, ValueError, UnicodeDecodeError):
                raise FormatError(f"{path}: damaged mpdref checksum header") from None
            if size != length:
                raise FormatError(
                    f"{path}: {size} bytes but the file was written with {length}: "
                    f"{'truncated' if size < length else 'bytes appended'}"
                )
            if _digest_after_userblock(raw) != digest:
                raise FormatError(f"{path}: checksum mismatch: the file is corrupt (changed after it was written)")
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from None


@contextlib.contextmanager
def open_verified_hdf5(path):
    """Verify `path` (see `verify_hdf5`), then yield it opened read-only with h5py.

    Errors from h5py on a verified file (it was written by a buggy or foreign
    writer) are turned into FormatError as well.
    """
    verify_hdf5(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FormatError(f"{path}: HDF5 cannot open it: {e}") from None
    with f:
        try:
            yield f
        except FormatError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise FormatError(f"{path}: malformed content: {type(e).__name__}: {e}") from None


def attr_str(f, path, key) -> str:
    """A string attribute of `f`, or FormatError naming the file and the attribute."""
    if key not in f.attrs:
        raise FormatError(f"{path}: attribute {key!r} is missing")
    value = f.attrs[key]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise FormatError(f"{path}: attribute {key!r} must be a string, found {type(value).__name__}")
    return value


def attr_int(f, path, key) -> int:
    if key not in f.attrs:
        raise FormatError(f"{path}: attribute {key!r} is missing")
    value = f.attrs[key]
    if isinstance(value, (bool, float)) or not hasattr(value, "__index__"):
        raise FormatError(f"{path}: attribute {key!r} must be an integer, found {value!r}")
    return int(value)


def check_format(f, path, name: str, version: int) -> None:
    """The file's `format` and `version` attributes must be exactly `name` and `version`."""
    fmt = attr_str(f, path, "format")
    if fmt != name:
        raise FormatError(f"{path}: format is {fmt!r}, not an {name} file")
    found = attr_int(f, path, "version")
    if found != version:
        raise FormatError(
            f"{path}: {name} version {found} is not supported (this mpdref reads version {version}); "
            f"a newer file needs a newer mpdref"
        )


def read_dataset(group, path, where: str, shape, dtype):
    """group[name] as an array, after checking it is a dataset of `shape` and `dtype`."""
    name = where.rsplit("/", 1)[-1]
    if name not in group:
        raise FormatError(f"{path}: {where} is missing")
    item = group[name]
    if not isinstance(item, h5py.Dataset):
        raise FormatError(f"{path}: {where} is not a dataset")
    if tuple(item.shape) != tuple(shape):
        raise FormatError(f"{path}: {where} has shape {tuple(item.shape)}, expected {tuple(shape)}")
    if item.dtype != dtype:
        raise FormatError(f"{path}: {where} is {item.dtype}, expected {dtype}")
    return item[()]
