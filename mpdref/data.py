"""MNIST: reading IDX files, verifying them, finding them, fetching them.

Where MNIST is looked for, in order:

1. an explicit ``root`` (``--data`` on the command line);
2. ``$MPDREF_DATA``;
3. ``./data/mnist``;
4. ``../shared/data/mnist`` beside a source checkout of mpdref (where this project's
   development machines keep the byte-exact copy), only when mpdref runs from one;
5. ``~/.cache/mpdref/mnist``.

An explicit root or ``$MPDREF_DATA`` that does not hold the files is an error,
not a reason to look further: a typo must not silently pick other data.

Each of the four files may be stored raw or gzip-compressed (``name`` or
``name.gz``). The SHA-256 of the *uncompressed* bytes is checked against the
canonical MNIST checksums, so a re-compressed ``.gz`` is accepted and a
corrupted one is not.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from mpdref.io.atomic import atomic_write


class DataError(ValueError):
    """A data file is missing, truncated, malformed or not the canonical MNIST."""


# SHA-256 of the uncompressed canonical MNIST files (their MD5s are the published ones).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60000, "test": 10000}

# Public mirrors of the four .gz files, tried in order by `fetch_mnist`.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# Per-pixel statistics of the 60,000 training images scaled to [0, 1].
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
VALIDATION_SIZE = 5000

# IDX type codes (third byte of the magic number) -> big-endian dtype.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# ----------------------------------------------------------------------------- IDX


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in .gz."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file into an array (native byte order).

    Layout: a big-endian uint32 magic ``0x0000TTDD`` (TT the type code, DD the
    number of dimensions), one big-endian uint32 per dimension, then exactly
    prod(dims) items. Anything else raises :class:`DataError` naming `name`.
    """
    if len(data) < 4:
        raise DataError(f"{name}: truncated: {len(data)} bytes, an IDX header needs at least 4")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{name}: wrong magic number 0x{data[:4].hex()}: an IDX file starts with two zero bytes"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX type code 0x{type_code:02x}")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated header: {len(data)} bytes, {header} expected")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize  # exact: a corrupt header cannot overflow it
    payload = len(data) - header
    if payload < expected:
        raise DataError(
            f"{name}: truncated: {payload} payload bytes, dimensions {dims} need {expected}"
        )
    if payload > expected:
        raise DataError(
            f"{name}: {payload - expected} unexpected trailing bytes after the {dims} payload"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, raw or ``.gz``, validating magic, dimensions and payload length."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


# ----------------------------------------------------------------------------- finding


#: the source checkout mpdref runs from, if it runs from one (an editable install), else None
CHECKOUT = Path(__file__).resolve().parents[1]
CHECKOUT = CHECKOUT if (CHECKOUT / "pyproject.toml").is_file() else None


def default_search_path() -> list[tuple[str, Path]]:
    """The places looked in when no root is given, with how each was chosen."""
    places = []
    env = os.environ.get("MPDREF_DATA")
    if env:
        places.append(("$MPDREF_DATA", Path(env)))
    places.append(("./data/mnist", Path("data") / "mnist"))
    if CHECKOUT is not None:
        places.append(("../shared/data/mnist beside the checkout", CHECKOUT.parent / "shared" / "data" / "mnist"))
    places.append(("~/.cache/mpdref/mnist", Path.home() / ".cache" / "mpdref" / "mnist"))
    return places


def _file_in(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _holds_mnist(root: Path) -> bool:
    return all(_file_in(root, name) is not None for name in MNIST_SHA256)


def find_mnist(root: str | os.PathLike | None = None) -> Path:
    """The directory that holds the four MNIST files (see the module docstring for the order)."""
    if root is not None:
        root = Path(root)
        _require_all_files(root, "the given data directory")
        return root
    env = os.environ.get("MPDREF_DATA")
    if env:
        _require_all_files(Path(env), "$MPDREF_DATA")
        return Path(env)
    for _, place in default_search_path():
        if _holds_mnist(place):
            return place
    raise DataError(not_found_message())


def _require_all_files(root: Path, what: str) -> None:
    missing = [name for name in MNIST_SHA256 if _file_in(root, name) is None]
    if missing:
        raise DataError(
            f"{root}: {what} lacks {', '.join(missing)} (raw or .gz); "
            f"it must hold all four MNIST IDX files"
        )


def not_found_message() -> str:
    places = ", ".join(str(p) for _, p in default_search_path())
    return (
        f"MNIST not found (looked in: {places}). Put the four IDX files (raw or .gz) in one of "
        f"those folders, set $MPDREF_DATA, pass --data DIR, or run `mpdref data fetch`"
    )


# ----------------------------------------------------------------------------- loading


def _verify_sha256(path, data: bytes, name: str) -> None:
    """`path` names the file (or URL) in the message."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != MNIST_SHA256[name]:
        raise DataError(
            f"{path}: SHA-256 of the uncompressed bytes is {digest}, the canonical {name} "
            f"has {MNIST_SHA256[name]}: the file is corrupt or not MNIST; fetch it again"
        )


def load_mnist(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one MNIST split, verified against the canonical checksums.

    Returns ``(images, labels)``: images uint8 (N, 28, 28), labels uint8 (N,),
    N = 60,000 for ``"train"`` and 10,000 for ``"test"``.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    directory = find_mnist(root)
    image_name, label_name = SPLIT_FILES[split]
    arrays = []
    for name in (image_name, label_name):
        path = _file_in(directory, name)
        data = _read_bytes(path)
        _verify_sha256(path, data, name)
        arrays.append((path, parse_idx(data, str(path))))
    (image_path, images), (label_path, labels) = arrays
    # The checksums pin the content; these checks keep the messages exact should they be relaxed.
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: expected uint8 images (N, 28, 28), found {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{label_path}: expected uint8 labels (N,), found {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{image_path}: {len(images)} images but {label_path} has {len(labels)} labels")
    return images, labels


def split_validation(
    images: np.ndarray, labels: np.ndarray, n_val: int = VALIDATION_SIZE
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Split the training set: the last `n_val` examples validate, the rest train.

    The validation split is for choosing hyper-parameters; the test set is for
    reporting only.
    """
    if not 0 <= n_val < len(images):
        raise ValueError(f"validation size must be in [0, {len(images)}), not {n_val}")
    cut = len(images) - n_val
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def to_network_input(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """uint8 images (N, 28, 28) -> normalized float (N, 1, 28, 28).

    x = (pixel / 255 - MNIST_MEAN) / MNIST_STD, computed in `dtype`. Every
    network in mpdref takes this input (a PyTorch model trained with
    ``Normalize((0.1307,), (0.3081,))`` takes the same).
    """
    dtype = np.dtype(dtype)
    x = images.astype(dtype)[:, None, :, :]
    x /= dtype.type(255.0)
    x -= dtype.type(MNIST_MEAN)
    x /= dtype.type(MNIST_STD)
    return x


def shift_images(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each image moved by whole pixels (random-translation augmentation): image i down by
    offsets[i, 0] rows and right by offsets[i, 1] columns (negative: up, left),

        out[i, c, r, q] = x[i, c, clip(r − offsets[i, 0]), clip(q − offsets[i, 1])],

    clip(·) holding an index in the image, so the uncovered margin repeats the edge pixel: MNIST's
    digits sit 4 pixels inside a blank border, whose normalized value the margin thus takes, whatever
    the normalization. x (N, C, H, W), offsets (N, 2) integers; a new array of x's dtype."""
    x = np.asarray(x)
    offsets = np.asarray(offsets)
    if x.ndim != 4:
        raise ValueError(f"shift_images needs images (N, C, H, W), not an array of shape {x.shape}")
    if offsets.shape != (len(x), 2) or not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"shift_images needs integer offsets of shape ({len(x)}, 2), not {offsets.dtype} "
                         f"{offsets.shape}")
    n, channels, h, w = x.shape
    rows = np.clip(np.arange(h) - offsets[:, :1], 0, h - 1)  # (N, H)
    cols = np.clip(np.arange(w) - offsets[:, 1:], 0, w - 1)  # (N, W)
    return x[np.arange(n)[:, None, None, None], np.arange(channels)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]


# ----------------------------------------------------------------------------- fetching


def default_fetch_dir() -> Path:
    return Path.home() / ".cache" / "mpdref" / "mnist"


def fetch_mnist(
    dest: str | os.PathLike | None = None,
    mirrors: tuple[str, ...] = MIRRORS,
    timeout: float = 30.0,
    log=None,
) -> Path:
    """Download the four MNIST files into `dest`, verify them, move them into place.

    Each file is downloaded to a temporary name, its uncompressed SHA-256 is
    checked, and only then is it renamed to its final name: an interrupted or
    corrupt download never leaves a file that looks complete. Files already
    present and valid are kept. Raises :class:`DataError` when no mirror can
    be reached, saying where to put the files by hand.
    """
    dest = Path(dest) if dest is not None else default_fetch_dir()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{dest}: cannot create the data directory: {e.strerror or e}") from None
    for name in MNIST_SHA256:
        existing = _file_in(dest, name)
        if existing is not None:
            try:
                _verify_sha256(existing, _read_bytes(existing), name)
                continue
            except DataError:
                log(f"{existing}: invalid, downloading it again")
        errors = []
        for mirror in mirrors:
            url = f"{mirror}{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    payload = response.read()
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{url}: {getattr(e, 'reason', e)}")
                continue
            try:
                _verify_sha256(url, parse_gzip_bytes(payload, url), name)
            except DataError as e:
                errors.append(str(e))
                continue
            target = dest / f"{name}.gz"
            with atomic_write(target) as tmp:
                tmp.write_bytes(payload)
            log(f"fetched {url} -> {target}")
            break
        else:
            raise DataError(
                f"could not download {name}.gz ({'; '.join(errors)}). Without network access, "
                f"copy the four MNIST IDX files (raw or .gz) into {dest} or another folder "
                f"and pass --data DIR or set $MPDREF_DATA"
            )
    return dest


def parse_gzip_bytes(payload: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(payload)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: corrupt or truncated gzip data ({e})") from None


def find_or_fetch_mnist(root=None, log=None) -> Path:
    """`find_mnist`, falling back to `fetch_mnist` (saying so) when MNIST is found nowhere.

    An explicit root or ``$MPDREF_DATA`` that lacks the files is still an error.
    """
    if root is not None or os.environ.get("MPDREF_DATA"):
        return find_mnist(root)
    try:
        return find_mnist()
    except DataError:
        log = log or (lambda msg: print(msg, file=sys.stderr))
        log(f"MNIST was found nowhere; downloading it to {default_fetch_dir()}")
        return fetch_mnist(log=log)

