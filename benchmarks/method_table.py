"""The comparison of pruning methods on one set of networks, from finished runs: Deep
Compression's magnitude pruning, block-max weight masking (BMWM), DARB, block pruning and
MPDCompress side by side.

    python benchmarks/method_table.py runs/compare/*        (after `mpdref run` of configs/compare/*.toml)

Per run directory, one row:
- kept: the fraction of all weights that the masks keep (model.h5);
- test error: the finished run's final test error (metrics.json);
- index bits per kept weight: the bits the file spends on positions (relative indices, DARB
  offsets and block sizes, or MPD's permutations), summed over layers, divided by the kept
  weights: `mpdref.compress.size_table` of model.mpdz, the numbers `mpdref size` prints;
- file ratio: dense float32 bits over the whole file's bits (the same table);
- fc1 y = W x at batch 1 (µs): the product straight from the stored form that the method
  implies, the best of `--repeats` timings: relative indices with fillers (magnitude
  pruning), DARB offsets (DARB and BMWM: one weight per block), whole 4 × 4 tiles (block
  pruning: the tiles are its index; the file itself stores them with relative indices),
  and MPD's block form (one gather and one batched product of the blocks,
  `mpdref.mpd.block_network(net, "cpu")`). Each is checked against the dense product first.
- `--markdown` prints the table as Markdown, for the README.

The method of a run is read from its config: the mask stage's type (prune, darb, mpd) and,
for darb, its method. Timings are the fastest of a few calls (benchmarks/timing.py).

This script unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in its own process (as a user's
machine has neither; benchmarks/blas_env.py) and prints the CPU's vector extensions and the
BLAS kernel in use; --keep-blas-env keeps them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np
from sparse_decode import darb_form, relative_form, tile_form, timed

LABELS = {"prune": "magnitude (Deep Compression)", "darb": "DARB", "bmwm": "BMWM (one block size)",
          "block": "block pruning (4 × 4)", "mpd": "MPD"}


def method_of(config: dict) -> str:
    """'prune', 'darb', 'bmwm', 'block' or 'mpd': the run's mask stage."""
    for stage in config["stages"]:
        if stage["type"] in ("prune", "mpd"):
            return stage["type"]
        if stage["type"] == "darb":
            return stage["method"]
    raise ValueError(f"{config['experiment']['name']}: no prune, darb or mpd stage")


def fc1_product(net, method: str, rng, repeats: int) -> float:
    """Seconds for fc1's y = W x at batch 1 from the stored form of `method`, checked first."""
    from mpdref import models, mpd

    w = net.params["fc1.weight"]
    x = rng.standard_normal((w.shape[1], 1)).astype(w.dtype)
    dense = w @ x
    if method == "mpd":
        block = mpd.block_network(net, "cpu")
        images = rng.standard_normal((64, *models.INPUT_SHAPE)).astype(w.dtype)
        assert np.array_equal(block.predict(images), net.predict(images)), "the block form predicts otherwise"
        layer = next(layer for layer in block.layers if getattr(layer, "name", None) == "fc1")
        # fc1 alone, on an input in the previous block layer's order (any values time the same)
        return timed(lambda: layer.forward(block.params, x.T, False, None), repeats)
    form = {"prune": relative_form, "darb": darb_form, "bmwm": darb_form, "block": tile_form}[method]
    _, _, matmul = form(w, net.masks["fc1.weight"].astype(bool))
    scale = np.abs(dense).max()
    np.testing.assert_allclose(matmul(x), dense, rtol=1e-4, atol=1e-5 * scale)
    return timed(lambda: matmul(x), repeats)


def row(run: Path, rng, repeats: int) -> dict:
    from mpdref import models
    from mpdref.compress import size_table
    from mpdref.prune import weights_kept

    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    net = models.load(run / "model.h5")
    table = size_table(run / "model.mpdz")
    index_bits = sum(layer["structure_bits"] for layer in table["layers"])
    kept_weights = sum(round(layer["kept"] * layer["weights"]) for layer in table["layers"])
    method = method_of(config)
    return {"run": str(run), "model": config["experiment"]["model"], "method": LABELS[method],
            "kept": weights_kept(net), "test_error": metrics["test_error"],
            "index_bits_per_kept_weight": index_bits / kept_weights, "file_bytes": table["file_bytes"],
            "file_ratio": table["ratio"], "fc1_batch1_us": 1e6 * fc1_product(net, method, rng, repeats)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished run directories (model.h5, model.mpdz, metrics.json)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", help="also write the rows to this JSON file")
    blas_env.add_argument(p)
    args = p.parse_args()
    print(blas_env.describe())
    rng = np.random.default_rng(0)
    rows = [row(Path(r), rng, args.repeats) for r in args.runs]
    rows.sort(key=lambda r: (r["model"], -r["file_ratio"]))
    head = ["network", "method", "kept", "test error", "index bits / kept weight", "file", "ratio",
            "fc1 y = Wx, batch 1"]
    lines = [[r["model"], r["method"], f"{r['kept']:.2%}", f"{r['test_error']:.2%}",
              f"{r['index_bits_per_kept_weight']:.2f}", f"{r['file_bytes']:,} B", f"{r['file_ratio']:.1f}x",
              f"{r['fc1_batch1_us']:.1f} µs"] for r in rows]
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        print("\n".join("| " + " | ".join(line) + " |" for line in lines))
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        print("\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
