"""Writes are all or nothing, and a failed write is one clear line naming the file."""
import errno
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from mpdref import models
from mpdref.io.atomic import atomic_write, write_bytes_atomic


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "f.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_missing_parent_directory_is_one_clear_line(tmp_path):
    with pytest.raises(OSError, match="does not exist") as info:
        models.save(models.build("lenet-300-100"), tmp_path / "no" / "such" / "m.h5")
    assert str(tmp_path / "no" / "such") in str(info.value) and "\n" not in str(info.value)


def test_read_only_directory_is_one_clear_line(tmp_path, monkeypatch):
    # CI runs as root, which writes anywhere: refuse the temporary file as a read-only directory would.
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OSError, match="cannot write in .*Permission denied"):
        write_bytes_atomic(tmp_path / "x", b"1")
    assert os.listdir(tmp_path) == []


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


@pytest.mark.mnist
def test_disk_full_during_a_run_is_one_line_and_leaves_no_partial_file(tmp_path, mnist_dir):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "mpdref.cli", "train", "--model", "lenet-300-100", "--epochs", "1",
         "--out", str(out), "--data", str(mnist_dir), "--no-progress"],
        capture_output=True, text=True, preexec_fn=_limit_file_size)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not write" in lines[0] and "checkpoint.h5" in lines[0], result.stderr
    assert "Errno" not in lines[0]
    assert not (out / "checkpoint.h5").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_disk_full_while_saving_a_model_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.h5"
    models.save(models.build("lenet-300-100", seed=1), path)
    before = path.read_bytes()
    code = (f"import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); "
            f"from mpdref import models; models.save(models.build('lenet-300-100', seed=2), {str(path)!r})")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "could not write" in result.stderr
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.h5"]
    np.testing.assert_array_equal(models.load(path).params["fc3.bias"], models.build("lenet-300-100", seed=1).params["fc3.bias"])
