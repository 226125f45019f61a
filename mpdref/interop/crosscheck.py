"""Crosscheck reports: mpdref's float64 reference against another framework, value by value.

    report = crosscheck_onnx("lenet-5.onnx", {"input": x})                 # against onnxruntime
    report = crosscheck_onnx("lenet-5.onnx", {"input": x}, against=saved)  # against values saved elsewhere
    report = crosscheck_torch(net, x, labels)                              # logits, loss, gradients vs PyTorch
    print(format_report(report)); sys.exit(exit_status(report))

Each compared value is a row: the value's name, the node that computes it and its op, its
shape, max |a − e|, max |a − e| / |e|, and how many elements are mismatched,

    |a − e| > atol + rtol·|e|            (the rule of torch.testing.assert_close),

NaN against NaN counting as equal. e is the reference side: for ONNX, mpdref's float64
evaluation (`run_onnx(..., dtype=float64)`), for PyTorch, the torch float64 twin. Without
rtol and atol, each value gets torch.testing's defaults for the coarser dtype of the two sides
(float32: rtol 1.3e-6, atol 1e-5; float64: 1e-7, 1e-7; float16: 1e-3, 1e-5; integers and
bool: exact). Rows are in graph order; the first row that does not agree is the first
divergent value, where to look. For a classifier (an output (N, C), C > 1) the report also
gives the fraction of inputs whose predicted class is the same on both sides.

The onnxruntime side runs the model with every node output made a graph output, as
Polygraphy's ``--onnx-outputs mark all`` does, so every intermediate value is compared. The
report is a dict of JSON values (`report_json` writes non-finite numbers as strings).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mpdref import data, models
from mpdref.interop.export import load_network, network_in_dtype
from mpdref.interop.onnx_eval import load_onnx, run_onnx, value_dtype
from mpdref.interop.torch_twin import require_torch, torch_twin
from mpdref.io import FormatError
from mpdref.io.atomic import write_bytes_atomic

import onnx

#: torch.testing.assert_close's default (rtol, atol) by dtype; every other dtype is compared exactly.
DEFAULT_TOLERANCES = {np.dtype(np.float16): (1e-3, 1e-5), np.dtype(np.float32): (1.3e-6, 1e-5),
                      np.dtype(np.float64): (1e-7, 1e-7)}

RULE = "mismatched: |a - e| > atol + rtol·|e| (torch.testing.assert_close's rule), NaN equal to NaN"

#: The inputs used where none are named: the first images of the MNIST test set.
DEFAULT_LIMIT = 100


# ----------------------------------------------------------------------------- comparing one value


def tolerances(a: np.ndarray, e: np.ndarray, rtol, atol) -> tuple[float, float]:
    """(rtol, atol) for one value: those given, or torch.testing's defaults for the coarser of the two
    dtypes (exact where either is not floating)."""
    if rtol is not None and atol is not None:
        return float(rtol), float(atol)
    known = [DEFAULT_TOLERANCES.get(array.dtype) for array in (a, e)]
    default = (0.0, 0.0) if None in known else max(known)
    return float(default[0] if rtol is None else rtol), float(default[1] if atol is None else atol)


def compare_values(actual, expected, rtol=None, atol=None) -> dict:
    """One row's numbers (module docstring) for `actual` (a) against `expected` (e): shape, dtypes,
    max_abs_diff, max_rel_diff (inf where e = 0 ≠ a), mismatched (of size), rtol, atol, ok."""
    a, e = np.asarray(actual), np.asarray(expected)
    rtol, atol = tolerances(a, e, rtol, atol)
    row = {"shape": list(e.shape), "dtype": str(a.dtype), "expected_dtype": str(e.dtype), "size": int(e.size),
           "rtol": rtol, "atol": atol}
    if a.shape != e.shape:
        return {**row, "max_abs_diff": None, "max_rel_diff": None, "mismatched": int(e.size), "ok": False,
                "note": f"shapes differ: {list(a.shape)} against {list(e.shape)}"}
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        same = (a64 == e64) | (np.isnan(a64) & np.isnan(e64))  # equal infinities too
        difference = np.where(same, 0.0, np.abs(a64 - e64))  # NaN where one side alone is NaN
        relative = np.where(difference == 0, 0.0, difference / np.abs(e64))
        close = same | (np.isfinite(a64) & np.isfinite(e64) & (difference <= atol + rtol * np.abs(e64)))
    mismatched = int(np.count_nonzero(~close))
    greatest = (lambda v: float(np.max(v)) if v.size else 0.0)
    return {**row, "max_abs_diff": greatest(difference), "max_rel_diff": greatest(relative),
            "mismatched": mismatched, "ok": mismatched == 0}


def prediction_agreement(actual: np.ndarray, expected: np.ndarray, name: str) -> dict | None:
    """{"output", "equal", "total", "fraction"}: how many rows of two (N, C) outputs, C > 1, have the same
    argmax; None where they are not such outputs."""
    if (actual.ndim != 2 or actual.shape != expected.shape or actual.shape[1] < 2
            or expected.dtype.kind != "f" or actual.dtype.kind != "f" or len(actual) == 0):
        return None
    equal = int(np.count_nonzero(actual.argmax(axis=1) == expected.argmax(axis=1)))
    return {"output": name, "equal": equal, "total": len(actual), "fraction": equal / len(actual)}


def assemble_report(rows: list[dict], **fields) -> dict:
    """The report: `fields` (model, actual, expected, inputs, predictions, ...), the rows, and the verdict."""
    if not rows:
        raise ValueError("nothing to compare: no value is on both sides")
    differing = [row["value"] for row in rows if not row["ok"]]
    return {**fields, "rule": RULE, "values": rows, "compared": len(rows), "differing": differing,
            "first_divergent": next((row for row in rows if not row["ok"]), None), "agree": not differing}


# ----------------------------------------------------------------------------- ONNX


def graph_order(proto: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(value, node, op) of every named value in graph order: the graph inputs, the initializers
    (node "", op "input" / "initializer"), then each node's outputs."""
    order = [(info.name, "", "input") for info in proto.graph.input]
    order += [(tensor.name, "", "initializer") for tensor in proto.graph.initializer
              if tensor.name not in {info.name for info in proto.graph.input}]
    for index, node in enumerate(proto.graph.node):
        order += [(name, node.name or f"#{index}", node.op_type) for name in node.output if name]
    return order


def onnxruntime_values(proto: onnx.ModelProto, feeds: dict) -> tuple[dict, str]:
    """({value name: array} of every node output, "onnxruntime VERSION"): the model run by onnxruntime's CPU
    provider with every node output marked as a graph output (Polygraphy's "mark all")."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("comparing with onnxruntime needs it: pip install -e '.[interop]'") from error
    marked = onnx.ModelProto()
    marked.CopyFrom(proto)
    declared = {info.name for info in marked.graph.output}
    marked.graph.output.extend(onnx.ValueInfoProto(name=name) for node in marked.graph.node
                               for name in node.output if name and name not in declared)
    session = onnxruntime.InferenceSession(marked.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds))), f"onnxruntime {onnxruntime.__version__} (CPU)"


def read_values(path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file by name (np.load without pickles); FormatError naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except Exception as error:  # a damaged archive, a pickled array, not a zip: all say what the file is not
        raise FormatError(f"{path}: not a readable .npz file of arrays ({type(error).__name__}: {error})") from None


def onnx_feeds(proto: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """{input name: x} for a graph with one input (not an initializer), x reshaped to the input's rank
    where it declares (N, 784) and cast to its element type."""
    initialized = {tensor.name for tensor in proto.graph.initializer}
    infos = [info for info in proto.graph.input if info.name not in initialized]
    if len(infos) != 1:
        raise ValueError(f"the graph takes {len(infos)} inputs ({', '.join(i.name for i in infos)}): give them "
                         f"in an .npz file (--inputs)")
    info = infos[0]
    rank = len(info.type.tensor_type.shape.dim)
    x = x.reshape(len(x), -1) if rank == 2 else x
    return {info.name: x.astype(value_dtype(info, "graph input"), copy=False)}


def random_feeds(proto: onnx.ModelProto, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard normal inputs (integers: 0) of each graph input's declared shape, a symbolic dimension n."""
    rng = np.random.default_rng(seed)
    initialized = {tensor.name for tensor in proto.graph.initializer}
    feeds = {}
    for info in proto.graph.input:
        if info.name in initialized:
            continue
        dims = info.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else n for d in dims]
        dtype = value_dtype(info, "graph input")
        feeds[info.name] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
    return feeds


def crosscheck_onnx(model, inputs: dict, against="onnxruntime", rtol=None, atol=None) -> dict:
    """The report (module docstring) of mpdref's float64 evaluation of ONNX `model` (a path or ModelProto)
    on `inputs` ({graph input name: array}) against `against`: "onnxruntime" (every node output), or
    values another framework computed, {ONNX value name: array} or the path of an .npz file of them
    (the names given are compared; a name that is no value of the graph is an error)."""
    proto = load_onnx(model)
    source = str(model) if isinstance(model, (str, os.PathLike)) else "the ONNX model given"
    feeds = dict(inputs)
    declared = {info.name: info for info in proto.graph.input}
    for name, value in feeds.items():  # the float type the graph declares (what onnxruntime insists on)
        value = np.asarray(value)
        if name in declared and value.dtype.kind == "f":
            feeds[name] = value.astype(value_dtype(declared[name], "graph input"), copy=False)
    reference = run_onnx(proto, feeds, dtype=np.float64, intermediate=True)
    if isinstance(against, str) and against == "onnxruntime":
        other, label = onnxruntime_values(proto, feeds)
    elif isinstance(against, Mapping):
        other, label = {name: np.asarray(value) for name, value in against.items()}, "the values given"
    elif isinstance(against, (str, os.PathLike)):
        other, label = read_values(against), str(against)
    else:
        raise TypeError(f"against must be 'onnxruntime', a dict of arrays or an .npz path, not {type(against)}")
    unknown = sorted(set(other) - set(reference))
    if unknown:
        raise ValueError(f"{label}: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''} "
                         f"{'is no value' if len(unknown) == 1 else 'are no values'} of the graph")
    rows = [{"value": name, "node": node, "op": op, **compare_values(other[name], reference[name], rtol, atol)}
            for name, node, op in graph_order(proto) if name in other]
    predictions = None
    for info in proto.graph.output:
        if info.name in other:
            predictions = prediction_agreement(np.asarray(other[info.name]), reference[info.name], info.name)
            if predictions:
                break
    inputs_seen = {name: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)} for name, v in feeds.items()}
    return assemble_report(rows, model=source, actual=label, expected="mpdref run_onnx, float64",
                           inputs=inputs_seen, predictions=predictions)


# ----------------------------------------------------------------------------- PyTorch


def crosscheck_torch(model, x: np.ndarray, labels: np.ndarray, rtol=None, atol=None) -> dict:
    """The report (module docstring) of an mpdref network (a Network, or an .h5 / .mpdz file) against its
    PyTorch twin (`torch_twin`) built from its state_dict, both in float64, on images x (N, 1, 28, 28)
    and labels (N,): the logits, the mean cross-entropy loss, and the gradient of every parameter, in
    layer order (a: mpdref with its reference ops, e: PyTorch; dropout off on both sides)."""
    torch = require_torch()
    net = load_network(model)
    net64 = network_in_dtype(net, np.float64, backend="reference")
    twin = torch_twin(net64, torch.float64)
    x64, labels = np.asarray(x, np.float64), np.asarray(labels, np.int64)
    logits_t = twin(torch.tensor(x64))
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.tensor(labels))
    loss_t.backward()
    loss, grads, logits = net64.loss_grads_and_logits(x64, labels, train=False)
    theirs = dict(twin.named_parameters())
    rows = [{"value": "logits", "node": "", "op": "forward", **compare_values(logits, logits_t.detach().numpy(),
                                                                                rtol, atol)},
            {"value": "loss", "node": "", "op": "cross-entropy",
             **compare_values(np.float64(loss), loss_t.detach().numpy(), rtol, atol)}]
    for name in net64.params:
        layer = name.rsplit(".", 1)[0]
        rows.append({"value": f"grad {name}", "node": layer, "op": type(getattr(twin, layer)).__name__,
                     **compare_values(grads[name], theirs[name].grad.numpy(), rtol, atol)})
    return assemble_report(
        rows, model=str(model) if isinstance(model, (str, os.PathLike)) else repr(net),
        actual="mpdref, float64, reference ops", expected=f"PyTorch {torch.__version__} twin, float64",
        inputs={"images": {"shape": list(x64.shape), "dtype": "float64"}},
        predictions=prediction_agreement(logits, logits_t.detach().numpy(), "logits"))


# ----------------------------------------------------------------------------- inputs


def mnist_images(split: str = "test", limit: int | None = DEFAULT_LIMIT, raw: bool = False,
                 root=None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 1, 28, 28) float32, labels (N,) int64): the first `limit` images (None: all) of the MNIST
    test set ("test") or of the validation split ("val", the last 5,000 training images), found by the usual
    data lookup (`mpdref.data.load_mnist`), normalized as the networks expect (`to_network_input`:
    (pixel / 255 - 0.1307) / 0.3081), or with `raw` the pixels in [0, 1]."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', not {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    images, labels = data.load_mnist("test" if split == "test" else "train", root)
    if split == "val":
        _, (images, labels) = data.split_validation(images, labels)
    images, labels = images[:limit], labels[:limit]
    x = (images.astype(np.float32) / np.float32(255))[:, None] if raw else data.to_network_input(images)
    return x, labels.astype(np.int64)


def example_inputs(data_split: str | None = None, limit: int | None = None, random: int | None = None,
                   raw: bool = False, root=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(images (N, 1, 28, 28) float32, labels (N,), what they are): MNIST (`mnist_images`; by default the
    first DEFAULT_LIMIT test images) or `random` standard normal images with random labels."""
    if random is not None:
        if data_split is not None or raw:
            raise ValueError("give random inputs or MNIST images, not both")
        if random < 1:
            raise ValueError(f"random must be >= 1, not {random}")
        rng = np.random.default_rng(seed)
        return (rng.standard_normal((random, *models.INPUT_SHAPE)).astype(np.float32),
                rng.integers(0, 10, random), f"{random} standard normal images (seed {seed})")
    split = data_split or "test"
    limit = DEFAULT_LIMIT if limit is None and data_split is None else limit
    x, labels = mnist_images(split, limit, raw, root)
    scale = "pixels in [0, 1] (--raw)" if raw else "normalized as the networks expect: (pixel / 255 - 0.1307) / 0.3081"
    return x, labels, f"the first {len(x)} MNIST {split} images, {scale}"


def check_one_source(inputs, data_split, limit, random, raw) -> None:
    """ValueError unless the inputs come from one source: a file (or dict), MNIST (with its --limit and
    --raw) or random values."""
    if sum(source is not None for source in (inputs, data_split, random)) > 1:
        raise ValueError("give one source of inputs: --inputs, --data or --random")
    if (inputs is not None or random is not None) and (limit is not None or raw):
        raise ValueError("--limit and --raw concern MNIST images (--data)")


def crosscheck(model, inputs=None, data_split: str | None = None, limit: int | None = None,
               random: int | None = None, raw: bool = False, against="onnxruntime", rtol=None, atol=None,
               root=None, seed: int = 0) -> dict:
    """The report of `mpdref crosscheck` (its --help says the command), as a dict (see the module
    docstring): `model` an ONNX file (against onnxruntime, or `against` a mapping or .npz file of
    values saved elsewhere, keyed by ONNX value names) or an mpdref model file (.h5, .mpdz) with
    against="torch" (logits, loss and every gradient against the PyTorch twin, in float64).

    The inputs, exactly one source: `inputs` (a mapping or .npz file keyed by graph input name),
    `data_split` "test" or "val" (MNIST from `root` or the usual lookup; the first `limit` images,
    100 when unset), or `random` N standard-normal images (`seed`). MNIST images are normalized as
    mpdref's networks expect unless `raw`. rtol, atol: None for torch.testing's defaults per dtype.
    """
    path = Path(model)
    if path.suffix == ".onnx":
        if isinstance(against, str) and against == "torch":
            raise ValueError("--against torch compares an mpdref model file (.h5, .mpdz); an ONNX model is "
                             "compared with onnxruntime or saved values")
        proto = load_onnx(path)
        check_one_source(inputs, data_split, limit, random, raw)
        if isinstance(inputs, (str, os.PathLike)):
            feeds, what = read_values(inputs), str(inputs)
        elif inputs is not None:
            feeds, what = dict(inputs), "the inputs given"
        elif random is not None:
            feeds, what = random_feeds(proto, random, seed), f"{random} standard normal inputs (seed {seed})"
        else:
            x, _, what = example_inputs(data_split, limit, None, raw, root)
            feeds = onnx_feeds(proto, x)
        report = crosscheck_onnx(proto, feeds, against, rtol, atol)
        report["model"] = str(path)
    elif path.suffix in (".h5", ".hdf5", ".mpdz"):
        if not (isinstance(against, str) and against == "torch"):
            raise ValueError(f"{path}: an mpdref model file is compared with --against torch")
        if inputs is not None:
            raise ValueError("--inputs concerns ONNX models; give --data or --random")
        check_one_source(inputs, data_split, limit, random, raw)
        x, labels, what = example_inputs(data_split, limit, random, raw, root, seed)
        report = crosscheck_torch(path, x, labels, rtol, atol)
    else:
        raise ValueError(f"{path}: give an .onnx model, or an .h5 / .mpdz model with --against torch")
    report["inputs_from"] = what
    return report


# ----------------------------------------------------------------------------- output


def _number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def format_report(report: dict) -> str:
    """The report as text: what was compared, a row per value, the first divergent value, the predictions and a
    summary line."""
    shapes = ", ".join(f"{name} {tuple(value['shape'])} {value['dtype']}" for name, value in report["inputs"].items())
    lines = [f"crosscheck {report['model']}",
             f"  a: {report['actual']}", f"  e: {report['expected']}",
             f"  inputs: {report.get('inputs_from', 'given')} ({shapes})",
             f"  {report['rule']}", ""]
    header = ("value", "node", "op", "shape", "max |diff|", "max rel diff", "mismatched", "rtol", "atol")
    table = [header] + [
        (row["value"], row["node"], row["op"], "x".join(map(str, row["shape"])) or "scalar",
         _number(row["max_abs_diff"]), _number(row["max_rel_diff"]),
         f"{row['mismatched']}/{row['size']}" + ("" if row["ok"] else "  <-"), _number(row["rtol"]),
         _number(row["atol"])) for row in report["values"]]
    widths = [min(48, max(len(str(line[i])) for line in table)) for i in range(len(header))]
    lines += ["  ".join(str(cell)[:48].ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    lines.append("")
    first = report["first_divergent"]
    if first is not None:
        where = f"node {first['node']}, " if first["node"] else ""
        detail = first.get("note") or (f"{first['mismatched']} of {first['size']} elements mismatched, "
                                       f"max |diff| {_number(first['max_abs_diff'])}, "
                                       f"max rel diff {_number(first['max_rel_diff'])}")
        lines.append(f"first divergent value: {first['value']} ({where}op {first['op']}): {detail}")
    predictions = report.get("predictions")
    if predictions:
        lines.append(f"predictions: {predictions['equal']} of {predictions['total']} equal "
                     f"({predictions['fraction']:.4%}) on {predictions['output']}")
    if report["agree"]:
        lines.append(f"agree: all {report['compared']} compared values")
    else:
        named = ", ".join(report["differing"][:5]) + (" ..." if len(report["differing"]) > 5 else "")
        lines.append(f"DIFFER: {len(report['differing'])} of {report['compared']} values ({named}); "
                     f"the first is {first['value']}")
    return "\n".join(lines)


def exit_status(report: dict) -> int:
    """0 when every compared value agrees, 1 when any differs (bad input is 2, raised before a report exists)."""
    return 0 if report["agree"] else 1


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", "nan": JSON has no such numbers
    if isinstance(value, dict):
        return {key: _jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def report_json(report: dict) -> str:
    """The report as JSON text (non-finite numbers as the strings "inf" and "nan")."""
    return json.dumps(_jsonable(report), indent=1, allow_nan=False)


def write_report_json(report: dict, path) -> None:
    """The report as JSON at `path`, written atomically."""
    write_bytes_atomic(path, (report_json(report) + "\n").encode())
