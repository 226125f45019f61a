"""The encode stage: the network into RUN_DIR/model.mpdz (`mpdref.compress`), checked by decoding it."""
from __future__ import annotations

import sys

import numpy as np

from mpdref import huffman
from mpdref.compress import compress, decompress, describe_folded, fold_biases, format_size_table
from mpdref.runner.options import Option
from mpdref.runner.registry import Stage, register


@register
class EncodeStage(Stage):
    """Write the network as RUN_DIR/model.mpdz, print its size table, and check what decodes from it."""

    type = "encode"
    description = "write the compressed model file (model.mpdz) and its size table"
    options = {
        "max_code_length": Option(int, 11, check=lambda v: 1 <= v <= huffman.MAX_LENGTH,
                                  accepted=f"an integer in [1, {huffman.MAX_LENGTH}]"),
        "index_bits": Option(int, None, check=lambda v: 1 <= v <= 8,
                             accepted="an integer in [1, 8] (default: the smallest file per weight)"),
        "fold_biases": Option(bool, True, help="first move into the next layer's bias what it receives from "
                                                "biases alone (mpdref.compress.fold_biases: the same function, "
                                                "fewer nonzero biases to store); the run goes on with that network"),
    }

    def run(self, ctx, settings, resume):
        path = ctx.out / "model.mpdz"
        folded = fold_biases(ctx.net) if settings["fold_biases"] else {}
        if line := describe_folded(folded):
            print(line, file=sys.stderr)
        table = compress(ctx.net, path, settings["max_code_length"], settings["index_bits"])
        print(format_size_table(table), file=sys.stderr)
        decoded = decompress(path)
        _, val, test = ctx.datasets()
        same = bool(np.array_equal(decoded.predict(test[0]), ctx.net.predict(test[0])))
        if not same:
            raise RuntimeError(f"{path}: the decoded model predicts differently from the network it came from")
        return {"biases_folded": folded, "file_bytes": table["file_bytes"], "ratio": table["ratio"],
                "dense_bits": table["dense_bits"], "file_bits": table["file_bits"], "same_predictions": same,
                "layers": {r["layer"]: {k: v for k, v in r.items() if k != "layer"} for r in table["layers"]},
                **ctx.errors()}
