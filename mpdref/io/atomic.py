"""Atomic file writes: write beside the target, fsync, rename.

A crash at any moment leaves either the old file or the new one, never a
half-written file. Every writer in mpdref (model files, downloads, logs that
are rewritten whole) goes through :func:`atomic_write`.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(e: OSError) -> str:
    if e.errno:
        return os.strerror(e.errno)  # short and standard ("No space left on device"); h5py's own is pages long
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Yield a temporary path in the target's directory; on success rename it to `path`.

    The caller writes the whole file to the yielded path (by name, so that
    h5py and numpy can use it). When the block ends without an exception the
    temporary file is fsynced and renamed over `path`, and the directory is
    fsynced so that the rename itself is durable. When the block raises, the
    temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OSError(f"{path}: cannot write, directory {parent} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise OSError(e.errno, f"{path}: cannot write in {parent}: {_reason(e)}") from None
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; a finished file gets the usual permissions
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except OSError as e:  # disk full, quota, a file-size limit: one line that names the file
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(e.errno, f"{path}: could not write: {_reason(e)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # not every file system can fsync a directory
        _fsync_path(parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
