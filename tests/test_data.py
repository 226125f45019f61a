import gzip
import os
import shutil
import time

import numpy as np
import pytest

from mpdref import data
from mpdref.data import DataError


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    header = bytes([0, 0, type_code, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(dtype).tobytes()


@pytest.mark.parametrize("type_code, dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                                              (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_round_trip(tmp_path, rng, type_code, dtype, compressed):
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    payload = idx_bytes(arr, type_code)
    path = tmp_path / ("a.idx.gz" if compressed else "a.idx")
    path.write_bytes(gzip.compress(payload) if compressed else payload)
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b[:3], "truncated"),
        (lambda b: b"\x01" + b[1:], "wrong magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX type code"),
        (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
        (lambda b: b[:3] + b"\x20" + b[4:], "truncated header"),
        (lambda b: b[:-1], "truncated: 59 payload bytes"),
        (lambda b: b + b"\x00\x00", "2 unexpected trailing bytes"),
        (lambda b: b[:4] + np.array([3, 4, 6], ">u4").tobytes() + b[16:], "truncated"),
        # 2^32-1 cubed overflows int64; the length check must still say "truncated"
        (lambda b: b[:4] + np.array([2**32 - 1] * 3, ">u4").tobytes() + b[16:], "truncated"),
    ],
)
def test_read_idx_rejects_malformed_files_naming_them(tmp_path, mangle, message):
    good = idx_bytes(np.zeros((3, 4, 5), np.uint8))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mangle(good))
    with pytest.raises(DataError, match=message) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_gzip_and_missing_file(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 10), np.uint8)))[:-8])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        data.read_idx(path)
    with pytest.raises(DataError, match="file not found"):
        data.read_idx(tmp_path / "missing")
    assert issubclass(DataError, ValueError)


def fake_mnist(root, n_train=12, n_test=7, labels_train=None):
    """Well-formed IDX files that are not the canonical MNIST."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": np.zeros((n_train, 28, 28), np.uint8),
        "train-labels-idx1-ubyte": labels_train if labels_train is not None else np.zeros(n_train, np.uint8),
        "t10k-images-idx3-ubyte": np.zeros((n_test, 28, 28), np.uint8),
        "t10k-labels-idx1-ubyte": np.zeros(n_test, np.uint8),
    }
    for name, arr in files.items():
        (root / name).write_bytes(idx_bytes(arr))
    return root


def test_load_mnist_rejects_files_that_are_not_mnist(tmp_path):
    root = fake_mnist(tmp_path / "m")
    with pytest.raises(DataError, match="SHA-256 of the uncompressed bytes") as info:
        data.load_mnist("train", root)
    assert "train-images-idx3-ubyte" in str(info.value)
    with pytest.raises(ValueError, match="split"):
        data.load_mnist("validation", root)


def test_lookup_order(tmp_path, monkeypatch):
    home, cwd, checkout = tmp_path / "home", tmp_path / "cwd", tmp_path / "work" / "mpdref"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MPDREF_DATA", raising=False)
    monkeypatch.setattr(data, "CHECKOUT", checkout)
    with pytest.raises(DataError, match="MNIST not found") as info:
        data.find_mnist()
    assert "mpdref data fetch" in str(info.value)
    assert str(tmp_path / "work" / "shared" / "data" / "mnist") in str(info.value)
    cache = fake_mnist(home / ".cache" / "mpdref" / "mnist")
    assert data.find_mnist() == cache
    shared = fake_mnist(tmp_path / "work" / "shared" / "data" / "mnist")
    assert data.find_mnist() == shared
    local = fake_mnist(cwd / "data" / "mnist")
    assert data.find_mnist().resolve() == local.resolve()
    env = fake_mnist(tmp_path / "env")
    monkeypatch.setenv("MPDREF_DATA", str(env))
    assert data.find_mnist() == env
    explicit = fake_mnist(tmp_path / "explicit")
    assert data.find_mnist(explicit) == explicit
    # An explicit root or $MPDREF_DATA that lacks the files is an error, not a reason to look elsewhere.
    with pytest.raises(DataError, match="lacks"):
        data.find_mnist(tmp_path / "nowhere")
    monkeypatch.setenv("MPDREF_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"\$MPDREF_DATA lacks"):
        data.find_mnist()


def test_split_validation_takes_the_last_examples():
    images, labels = np.arange(20).reshape(20, 1, 1), np.arange(20)
    (ti, tl), (vi, vl) = data.split_validation(images, labels, 5)
    np.testing.assert_array_equal(tl, np.arange(15))
    np.testing.assert_array_equal(vl, np.arange(15, 20))
    with pytest.raises(ValueError):
        data.split_validation(images, labels, 20)


@pytest.mark.mnist
def test_real_mnist(mnist_dir):
    images, labels = data.load_mnist("train", mnist_dir)
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist()[:2] == [5923, 6742]  # the canonical class counts
    test_images, test_labels = data.load_mnist("test", mnist_dir)
    assert test_images.shape == (10000, 28, 28) and np.bincount(test_labels)[0] == 980
    x = data.to_network_input(images[:55000], np.float32)
    assert x.shape == (55000, 1, 28, 28) and x.dtype == np.float32
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01


@pytest.mark.mnist
def test_fetch_from_a_mirror_verifies_and_places_files_atomically(mnist_dir, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in data.MNIST_SHA256:
        src = mnist_dir / f"{name}.gz"
        if src.exists():
            shutil.copyfile(src, mirror / f"{name}.gz")
        else:
            (mirror / f"{name}.gz").write_bytes(gzip.compress((mnist_dir / name).read_bytes()))
    dest = tmp_path / "dest"
    messages = []
    data.fetch_mnist(dest, mirrors=(mirror.as_uri() + "/",), log=messages.append)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in data.MNIST_SHA256)
    assert data.load_mnist("test", dest)[0].shape == (10000, 28, 28)
    assert len(messages) == 4

    # A corrupt mirror is refused, and nothing that looks like a finished file is left.
    bad = tmp_path / "bad"
    shutil.copytree(mirror, bad)
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 4))
    dest2 = tmp_path / "dest2"
    with pytest.raises(DataError, match="could not download t10k-labels-idx1-ubyte.gz"):
        data.fetch_mnist(dest2, mirrors=(bad.as_uri() + "/",), log=lambda m: None)
    assert not (dest2 / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in dest2.iterdir() if p.name.endswith(".tmp")]


def test_fetch_offline_fails_at_once_saying_where_to_put_the_files(tmp_path):
    started = time.monotonic()
    # Port 9 (discard) on loopback: the connection is refused at once, as offline.
    with pytest.raises(DataError, match="copy the four MNIST IDX files") as info:
        data.fetch_mnist(tmp_path / "d", mirrors=("http://127.0.0.1:9/",), timeout=5, log=lambda m: None)
    assert time.monotonic() - started < 5
    assert str(tmp_path / "d") in str(info.value)
    assert os.listdir(tmp_path / "d") == []


def test_shift_images_moves_each_image_by_its_own_offset_and_repeats_the_edge(rng):
    x = rng.standard_normal((5, 2, 7, 6)).astype(np.float32)
    offsets = np.array([[0, 0], [1, -2], [-3, 2], [6, 0], [-1, -1]])
    out = data.shift_images(x, offsets)
    assert out.dtype == x.dtype and out.shape == x.shape
    for i, (dy, dx) in enumerate(offsets):  # the formula, one pixel at a time
        for c in range(2):
            for r in range(7):
                for q in range(6):
                    assert out[i, c, r, q] == x[i, c, min(max(r - dy, 0), 6), min(max(q - dx, 0), 5)]
    assert np.array_equal(out[0], x[0])
    # a digit inside a blank (constant) border moves whole, and the margin it leaves is the border's value
    img = np.full((1, 1, 28, 28), -0.42, np.float32)
    img[0, 0, 10:15, 8:20] = rng.random((5, 12))
    moved = data.shift_images(img, np.array([[2, -3]]))
    assert np.array_equal(moved[0, 0, 12:17, 5:17], img[0, 0, 10:15, 8:20])
    assert np.count_nonzero(moved != -0.42) == np.count_nonzero(img != -0.42)


def test_shift_images_refuses_shapes_it_cannot_take():
    x = np.zeros((3, 1, 28, 28), np.float32)
    with pytest.raises(ValueError, match=r"integer offsets of shape \(3, 2\)"):
        data.shift_images(x, np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="integer offsets"):
        data.shift_images(x, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"images \(N, C, H, W\)"):
        data.shift_images(x[:, 0], np.zeros((3, 2), np.int64))
