"""Golden values: what a refactoring must leave unchanged, bit for bit, on one machine.

    python -m tests.golden.record            # print the values this checkout computes
    python -m tests.golden.record --write    # store them in tests/golden/values.json

`synthetic_values()` needs no data: for each network, float32 logits of a fixed random
batch, and the parameters after three masked SGD steps with dropout on (for the two
convolutional networks at training's batch of 64 as well: the fast convolution takes another
path for a batch that fills its vector lanes); for each network
under MPD masks, the masked and the block-form logits, and the parameters after three
steps in block form (written back to the masked layout). `pipeline_values(mnist)` runs
the two short pipelines beside this file and takes the SHA-256 of each `model.mpdz`.

Floating-point results depend on the CPU, the BLAS kernels and the library versions, so
the values are tied to the fingerprint of the machine that recorded them; elsewhere the
test that compares them skips and says why.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VALUES = HERE / "values.json"
PIPELINES = ("dc-short", "mpd-quantized-short")
MODELS = ("lenet-300-100", "lenet-5", "deep-mnist")


def fingerprint() -> dict:
    """What the bits depend on besides the code."""
    import numba

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"machine": platform.machine(), "cpu": cpu or platform.processor(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "")}


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def params_digest(params: dict) -> str:
    return digest(*(params[k] for k in sorted(params)))


def _batch(n=8, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)).astype(dtype), rng.integers(0, 10, n)


def _three_steps(net, x, y, lr=0.05):
    from mpdref.train import SGD

    sgd = SGD(net, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        _, grads, _ = net.loss_grads_and_logits(x, y, train=True)
        sgd.step(grads, lr)


def _mpd_masked(name, seed=0):
    from mpdref import models
    from mpdref.mpd import channel_mask, mpd_mask

    net = models.build(name, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for weight in net.weight_names():
        shape = net.params[weight].shape
        net.set_mask(weight, channel_mask(shape, mpd_mask(shape[0], shape[1], min(4, *shape[:2]), rng)))
    return net


def synthetic_values() -> dict:
    from mpdref import models
    from mpdref.mpd import to_block_diagonal

    x, y = _batch()
    out = {}
    for name in MODELS:
        net = models.build(name, seed=0)
        out[f"{name}/logits"] = digest(net.forward(x))
        _three_steps(net, x, y)
        out[f"{name}/after-3-steps"] = params_digest(net.params)

        masked = _mpd_masked(name)
        block = to_block_diagonal(masked)
        out[f"{name}/mpd-masked-logits"] = digest(masked.forward(x))
        out[f"{name}/mpd-block-logits"] = digest(block.forward(x))
        _three_steps(block, x, y)
        block.to_masked(masked)
        out[f"{name}/mpd-block-after-3-steps"] = params_digest(masked.params)
    x64, y64 = _batch(64)
    for name in ("lenet-5", "deep-mnist"):
        net = models.build(name, seed=0)
        out[f"{name}/batch-64-logits"] = digest(net.forward(x64))
        _three_steps(net, x64, y64)
        out[f"{name}/batch-64-after-3-steps"] = params_digest(net.params)
    net64 = models.build("lenet-5", dtype=np.float64, seed=0)
    out["lenet-5/float64-logits"] = digest(net64.forward(_batch(dtype=np.float64)[0]))
    return out


def pipeline_values(mnist) -> dict:
    from mpdref.runner import run_experiment
    from mpdref.runner.config import load_config

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in PIPELINES:
            config = load_config(HERE / f"{name}.toml")
            config["data"]["root"] = str(mnist)
            run_experiment(config, Path(tmp) / name, progress=False)
            out[f"{name}/model.mpdz"] = hashlib.sha256((Path(tmp) / name / "model.mpdz").read_bytes()).hexdigest()
    return out


def main(argv=None) -> int:
    import argparse

    sys.path.insert(0, str(HERE.parents[1]))
    from tests.conftest import mnist_root

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"store the values in {VALUES}")
    args = p.parse_args(argv)
    mnist = mnist_root()
    if mnist is None:
        p.error("real MNIST not found: set MPDREF_DATA")
    values = {"fingerprint": fingerprint(), "synthetic": synthetic_values(), "pipelines": pipeline_values(mnist)}
    text = json.dumps(values, indent=2, sort_keys=True) + "\n"
    print(text, end="")
    if args.write:
        VALUES.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
