"""The papers' figures (`mpdref figures`, mpdref.figures): every figure function on small synthetic
inputs (written as PNG and SVG, one paper column wide, no text overlapping or cut off), the readers
held to the files they read (and to the quantize stage's own centroids), and the command on tiny
real runs: a sweep of two Deep Compression runs and an MPD run."""
import itertools
import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numba
import numpy as np
import pytest

from conftest import run_cli
from mpdref import figures, huffman, models
from mpdref.compress import decompress, size_table
from mpdref.mpd import mpd_mask
from mpdref.prune import prune, weights_kept

TINY = """
[experiment]
name = "tiny"
model = "lenet-300-100"
seed = 0

[data]
root = "{root}"
train_limit = 300
validation_size = 100

[[stages]]
type = "train"
epochs = 1

[[stages]]
type = "prune"
keep = {{ "fc1.weight" = 0.1, "fc2.weight" = 0.2, "fc3.weight" = 0.5 }}

[[stages]]
type = "quantize"
bits_all = 3
epochs = 1

[[stages]]
type = "encode"
"""

TINY_MPD = """
[experiment]
name = "tiny-mpd"
model = "lenet-300-100"
seed = 1

[data]
root = "{root}"
train_limit = 300
validation_size = 100

[[stages]]
type = "mpd"
layers = ["fc1.weight", "fc2.weight"]
k_all = 4

[[stages]]
type = "train"
epochs = 1

[[stages]]
type = "sensitivity"
keep = [1.0, 0.5, 0.2]

[[stages]]
type = "quantize"
bits = {{ "fc1.weight" = 3, "fc3.weight" = 2 }}
init = "random"
method = "optimal"
epochs = 1

[[stages]]
type = "encode"
"""


# ----------------------------------------------------------------------------- readability


def drawn_texts(fig):
    """Every text that matplotlib draws in `fig`: the labels of the ticks it draws (not those outside
    the view), axis labels and offsets, titles, annotations, legends, the figure's own texts."""
    fig.canvas.draw()
    texts = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis._update_ticks():  # the ticks inside the view, which are drawn
                texts += [tick.label1, tick.label2]
            texts += [axis.label, axis.offsetText]
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.get_legend():
            texts += ax.get_legend().get_texts()
    for legend in fig.legends:
        texts += legend.get_texts()
    texts += fig.texts
    unique = {id(t): t for t in texts}
    return [t for t in unique.values() if t.get_visible() and t.get_text().strip()]


def text_problems(fig) -> list[str]:
    """Texts that stick out of the figure, and pairs of texts that overlap (by more than a pixel)."""
    renderer = fig.canvas.get_renderer()
    texts = drawn_texts(fig)
    boxes = [t.get_window_extent(renderer) for t in texts]
    width, height = fig.bbox.width, fig.bbox.height
    problems = [f"cut off: {t.get_text()!r}" for t, b in zip(texts, boxes)
                if b.x0 < -0.5 or b.y0 < -0.5 or b.x1 > width + 0.5 or b.y1 > height + 0.5]
    for ax in fig.axes:  # labels placed in a panel stay inside it
        frame = ax.patch.get_window_extent(renderer).padded(0.5)
        for t in ax.texts:
            box = t.get_window_extent(renderer)
            if t.get_visible() and not (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)):
                problems.append(f"outside its panel: {t.get_text()!r}")
    for (t1, b1), (t2, b2) in itertools.combinations(zip(texts, boxes), 2):
        if min(b1.x1, b2.x1) - max(b1.x0, b2.x0) > 1 and min(b1.y1, b2.y1) - max(b1.y0, b2.y0) > 1:
            problems.append(f"overlap: {t1.get_text()!r} and {t2.get_text()!r}")
    return problems


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_column_png(path: Path):
    """A PNG one column wide (3.5 in at 200 dpi) and of a sane height, with something drawn in it."""
    width, height = png_size(path)
    assert width == round(figures.COLUMN_WIDTH * figures.PAPER_DPI) == 700
    assert 300 <= height <= 2400 and path.stat().st_size > 8000, (path, width, height)


def assert_svg(path: Path):
    text = path.read_text()
    assert text.startswith("<?xml") and "<svg" in text and len(text) > 5000


def test_the_checker_finds_overlapping_and_cut_off_text():
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_xticks(np.arange(10), [f"label {i}" for i in range(10)])
    ax.text(0.5, 0.5, "one")
    ax.text(0.5, 0.5, "two")
    fig.text(0.9, 0.5, "far too long to fit")
    ax.text(0.1, 1.0, "astride the frame", transform=ax.transAxes)
    problems = text_problems(fig)
    plt.close(fig)
    assert "overlap: 'one' and 'two'" in problems and "overlap: 'label 0' and 'label 1'" in problems
    assert "cut off: 'far too long to fit'" in problems and "outside its panel: 'astride the frame'" in problems
    assert "outside its panel: 'one'" not in problems


# ----------------------------------------------------------------------------- each figure, synthetic inputs


STORAGE_LAYERS = {"fc1.weight": 235_200, "fc2.weight": 30_000, "fc3.weight": 1_000}


def synthetic_storage(i: int) -> dict:
    """`storage_parts` of a made-up file: run 1 has no index (as if its layers were dense)."""
    return {"layers": {n: {"weights": 4.0 * size / (i + 8), "index": 3.0 * size / (i + 8) * (i != 1),
                           "codebook": 1200.0, "bias": 32.0 * size // 784, "dense": 32.0 * size}
                       for n, size in STORAGE_LAYERS.items()}, "container": 2000.0}


def synthetic_figure(name: str, rng):
    if name == "tradeoff":  # points out of order: the curve sorts them
        points = [{"network": "lenet-300-100", "series": "Deep Compression", "ratio": r, "error": e, "counts": "file"}
                  for r, e in ((41.0, 0.0162), (12.0, 0.0150), (25.0, 0.0155))]
        points += [{"network": "lenet-300-100", "series": "MPD", "ratio": r, "error": e, "counts": "file"}
                   for r, e in ((10.0, 0.0158), (48.0, 0.0185))]
        points += [{"network": "lenet-5", "series": "ADMM", "ratio": r, "error": e, "counts": "weights"}
                   for r, e in ((71.0, 0.0079), (167.0, 0.0090))]
        return figures.tradeoff_figure(points)
    if name == "storage":
        return figures.storage_figure({f"quantize.bits_all={i + 4},seed=0": synthetic_storage(i) for i in range(3)})
    if name == "codebooks":
        layers = {}
        for layer, n, k in (("fc1.weight", 20_000, 32), ("fc2.weight", 3_000, 16), ("fc3.weight", 500, 4)):
            values = rng.laplace(0, 0.05, n)
            initial = np.quantile(values, (np.arange(k) + 0.5) / k)
            layers[layer] = (values, initial, initial * 1.05 + 0.002)
        return figures.codebook_figure(layers)
    if name == "sensitivity":
        keeps = [1.0, 0.5, 0.2, 0.1, 0.05, 0.02]
        table = {"fc1.weight": [0.02, 0.02, 0.021, 0.025, 0.04, 0.12],
                 "fc2.weight": [0.02, 0.021, 0.024, 0.03, 0.06, 0.2],
                 "fc3.weight": [0.02, 0.022, 0.03, 0.05, 0.15, 0.45]}
        return figures.sensitivity_figure(table, keeps, 0.02)
    if name == "masks":
        return figures.mask_figure({"fc1.weight": mpd_mask(300, 784, 10, rng),
                                    "fc2.weight": mpd_mask(100, 300, 10, rng),
                                    "conv2.weight": mpd_mask(50, 20, 5, rng)})
    if name == "huffman":
        layers = {}
        for layer, n in (("fc1.weight", 33), ("fc2.weight", 17), ("fc3.weight", 9)):
            counts = rng.geometric(0.15, size=4000) % n
            counts = np.bincount(counts, minlength=n)
            index_counts = np.bincount(rng.geometric(0.3, size=4000) % 32, minlength=32)
            layers[layer] = {"codebook indices": (counts, huffman.code_lengths(counts, 11)),
                             "relative indices": (index_counts, huffman.code_lengths(index_counts, 11))}
        return figures.huffman_figure(layers)
    if name == "kernel-speed":
        panels = {network: {"mpdref block form": [(1, 0.8 * s), (64, 2.0 * s), (1024, 2.5 * s)],
                            "PyTorch block form": [(1, 0.5 * s), (64, 1.5 * s), (1024, 1.9 * s)]}
                  for network, s in (("LeNet-300-100", 1.0), ("LeNet-5", 0.6), ("Deep MNIST", 1.4))}
        return figures.kernel_speed_figure(panels, "PyTorch dense, masked (BLAS)", "MPD inference on the CPU")
    raise ValueError(name)


FIGURES = ("tradeoff", "storage", "codebooks", "sensitivity", "masks", "huffman", "kernel-speed")


@pytest.mark.parametrize("name", FIGURES)
def test_each_figure_is_readable_at_column_width_as_png_and_svg(tmp_path, rng, name):
    fig = synthetic_figure(name, rng)
    assert text_problems(fig) == []
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert any(ax.get_xlabel() for ax in shown) and any(ax.get_ylabel() for ax in shown)
    assert name == "masks" or [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert fig.get_size_inches()[0] == figures.COLUMN_WIDTH
    png = figures.save_figure(fig, tmp_path / f"{name}.png", figures.PAPER_DPI)
    assert_column_png(png)
    svg = figures.save_figure(synthetic_figure(name, np.random.default_rng(12345)), tmp_path / f"{name}.svg")
    assert_svg(svg)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.png", f"{name}.svg"]  # no temporary left


def test_tradeoff_draws_each_series_sorted_by_ratio_in_percent_and_the_papers_points(rng):
    fig = synthetic_figure("tradeoff", rng)
    top, bottom = fig.axes
    assert top.get_title() == "LeNet-300-100" and bottom.get_title() == "LeNet-5"
    assert top.get_xscale() == "log" and top.get_ylabel() == "test error (%)"
    curves = [line for line in top.lines if len(line.get_xdata()) > 1 and line.get_linestyle() == "-"]
    assert [list(line.get_xdata()) for line in curves] == [[12.0, 25.0, 41.0], [10.0, 48.0]]
    assert np.allclose(curves[0].get_ydata(), [1.50, 1.55, 1.62])
    stars = {(line.get_xdata()[0], round(line.get_ydata()[0], 4), line.get_markerfacecolor())
             for ax in (top, bottom) for line in ax.lines if line.get_marker() == "*"}
    assert stars == {(40.0, 1.58, "k"), (39.0, 0.74, "k"), (71.2, 0.8, "white")}  # Han et al.; Zhang et al.
    ratio_only = [line.get_xdata()[0] for line in bottom.lines if line.get_linestyle() == ":"]
    assert ratio_only == [246.0]  # Ye et al. state no error number: a line at the ratio alone
    open_markers = [line.get_xdata()[0] for line in bottom.lines if line.get_marker() == "o"
                    and line.get_markerfacecolor() == "white"]
    assert open_markers == [71.0, 167.0]  # ratios that count weights kept, not file bits
    assert [t.get_text() for t in fig.legends[0].get_texts()][:3] == ["Deep Compression", "MPD", "ADMM"]
    figures.pyplot().close(fig)
    # a series called "dense" (mpdref demo's first model) beside the papers' dense error: both in the legend
    fig = figures.tradeoff_figure([{"network": "lenet-300-100", "series": "dense", "ratio": 1.0, "error": 0.016,
                                    "counts": "file"}])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["dense", "papers: dense error", "papers: file ratio"]
    figures.pyplot().close(fig)


def test_tradeoff_curves_go_through_each_settings_mean_with_a_marker_per_seed():
    """Runs of one setting (seeds) are one point of the curve, their mean ratio and error; each keeps its marker."""
    points = [{"network": "lenet-300-100", "series": "DC", "ratio": r, "error": e, "counts": "file", "setting": k}
              for r, e, k in ((40.0, 0.016, "a"), (42.0, 0.018, "a"), (80.0, 0.020, "b"), (78.0, 0.024, "b"),
                              (60.0, 0.019, "c"))]
    fig = figures.tradeoff_figure(points)
    ax = fig.axes[0]
    curve, = [line for line in ax.lines if len(line.get_xdata()) > 1 and line.get_linestyle() == "-"]
    assert np.allclose(curve.get_xdata(), [41.0, 60.0, 79.0]) and np.allclose(curve.get_ydata(), [1.7, 1.9, 2.2])
    markers = sorted(line.get_xdata()[0] for line in ax.lines
                     if line.get_marker() == "o" and len(line.get_xdata()) == 1)
    assert markers == [40.0, 42.0, 60.0, 78.0, 80.0]
    figures.pyplot().close(fig)


def test_storage_bars_add_up_to_each_runs_bits(rng):
    fig = synthetic_figure("storage", rng)
    whole = fig.axes[0]
    assert whole.get_title(loc="left") == "whole file" and [ax.get_title(loc="left") for ax in fig.axes[1:]] == [
        "fc1.weight", "fc2.weight", "fc3.weight"]
    ends = {}
    for bar in whole.patches:
        y = round(bar.get_y() + bar.get_height() / 2)
        ends[y] = max(ends.get(y, 0.0), bar.get_x() + bar.get_width())
    for i in range(3):
        bits = sum(v for layer in synthetic_storage(i)["layers"].values() for k, v in layer.items() if k != "dense")
        assert ends[i] == pytest.approx((bits + 2000) / 8000)
        # each bar ends in its ratio to dense float32
        dense = 32 * sum(STORAGE_LAYERS.values())
        assert whole.texts[i].get_text().strip() == f"{dense / (bits + 2000):.0f}×"
    figures.pyplot().close(fig)


# ----------------------------------------------------------------------------- tiny real runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir):
    """A sweep of two Deep Compression runs (k-means from a linear and a random start) and an MPD run
    with a sensitivity stage; the quantize stages' own centroids, as they handed them to their figure."""
    import mpdref.runner.stages.quantize as quantize_stage
    from mpdref.runner import run_experiment
    from mpdref.runner.config import load_config
    from mpdref.sweep import load_sweep, prepare_sweep_directory, run_point

    root = tmp_path_factory.mktemp("figures")
    (root / "tiny.toml").write_text(TINY.format(root=mnist_dir))
    (root / "mpd.toml").write_text(TINY_MPD.format(root=mnist_dir))
    (root / "sweep.toml").write_text('config = "tiny.toml"\n[grid]\n"stages[2].init" = ["linear", "random"]\n')
    captured = {}

    def capture(before, after, target):
        captured[Path(target).parents[1].name] = (before, after)

    threads = numba.get_num_threads()  # run_point sets a worker's to 1: this process gets its own back
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantize_stage, "plot_codebooks", capture)
        sweep = load_sweep(root / "sweep.toml")
        out = prepare_sweep_directory(root / "sweep", sweep)
        try:
            for point in sweep.points:
                assert run_point(str(out / "runs" / point.name), point.config) == "finished"
        finally:
            numba.set_num_threads(threads)
        run_experiment(load_config(root / "mpd.toml"), root / "mpd", progress=False)
    return SimpleNamespace(root=root, sweep=out, dc=[out / "runs" / p.name for p in sweep.points], mpd=root / "mpd",
                           captured=captured)


@pytest.mark.mnist
def test_codebook_figure_shows_the_quantize_stages_own_centroids(runs):
    for run in (*runs.dc, runs.mpd):
        before, after = runs.captured[run.name]
        layers = figures.codebook_layers(run)
        assert list(layers) == list(before)
        for name, (values, initial, tuned) in layers.items():
            assert np.array_equal(values, before[name][0])
            assert np.array_equal(initial, before[name][1]), f"{run.name} {name}: k-means centroids"
            assert np.array_equal(tuned, after[name])
    # a random start differs from a linear one: the random stream was the stage's own
    linear, random = (figures.codebook_layers(run)["fc1.weight"][1] for run in runs.dc)
    assert not np.array_equal(linear, random)


@pytest.mark.mnist
def test_storage_parts_are_the_files_bits(runs):
    for run in (*runs.dc, runs.mpd):
        parts = figures.storage_parts(run / "model.mpdz")
        table = size_table(run / "model.mpdz")
        stored = sum(sum(v for k, v in layer.items() if k != "dense") for layer in parts["layers"].values())
        assert stored + parts["container"] == table["file_bits"] == 8 * (run / "model.mpdz").stat().st_size
        net = models.load(run / "model.h5")
        for name, layer in parts["layers"].items():
            assert layer["dense"] == 32 * (net.params[name].size + net.params[name.replace("weight", "bias")].size)
            assert layer["bias"] == 32 * net.params[name.replace("weight", "bias")].size
            assert min(layer.values()) >= 0
        kinds = {row["layer"]: row["kind"] for row in table["layers"]}
        if run == runs.mpd:
            assert kinds == {"fc1.weight": "mpd", "fc2.weight": "mpd", "fc3.weight": "dense"}
            assert parts["layers"]["fc3.weight"]["index"] == 0 < parts["layers"]["fc1.weight"]["index"]


@pytest.mark.mnist
def test_huffman_codes_are_the_encoders(runs):
    for run in (*runs.dc, runs.mpd):
        codes = figures.huffman_codes(run / "model.mpdz")
        net = decompress(run / "model.mpdz")
        rows = {row["layer"]: row for row in size_table(run / "model.mpdz")["layers"]}
        for name, kinds in codes.items():
            expected = {"codebook indices", "relative indices"} if rows[name]["kind"] == "sparse" else {
                "codebook indices"}
            assert set(kinds) == expected
            for kind, (counts, lengths) in kinds.items():
                assert counts.sum() == rows[name]["stored"]
                # the lengths an encoder builds from these counts are the lengths the file stores
                assert np.array_equal(lengths, huffman.code_lengths(counts, 11))
            mask = net.masks.get(name, np.ones(net.params[name].shape, bool))
            _, value_counts = np.unique(net.params[name][mask], return_counts=True)
            counts = kinds["codebook indices"][0]
            assert np.array_equal(counts[: len(value_counts)], value_counts)  # then the fillers, then padding


@pytest.mark.mnist
def test_read_run_ratio_method_and_series(runs, tmp_path):
    record = figures.read_run(runs.dc[0])
    metrics = json.loads((runs.dc[0] / "metrics.json").read_text())
    assert record["method"] == "Deep Compression" and record["network"] == "lenet-300-100"
    assert record["ratio"] == size_table(runs.dc[0] / "model.mpdz")["ratio"] and record["counts"] == "file"
    assert record["test_error"] == metrics["test_error"] and record["finished"]
    # a run without an encode stage: 1 / the weights its masks keep
    bare = tmp_path / "admm"
    bare.mkdir()
    config = json.loads((runs.dc[0] / "config.json").read_text())
    config["stages"] = [{"type": "train", "name": "train"}, {"type": "admm_prune", "name": "admm_prune"}]
    (bare / "config.json").write_text(json.dumps(config))
    (bare / "metrics.json").write_text(json.dumps({"stages": [], "test_error": 0.03}))
    net = models.build("lenet-300-100")
    prune(net, {"fc1.weight": 0.05, "fc2.weight": 0.1})
    models.save(net, bare / "model.h5")
    record = figures.read_run(bare)
    assert record["method"] == "ADMM" and record["counts"] == "weights"
    assert record["ratio"] == pytest.approx(1 / weights_kept(net)) and 8 < record["ratio"] < 20
    # the same method from a sweep and from runs given alone: two series, each labelled by its source
    points = figures.tradeoff_points([(figures.read_run(d), "sweep") for d in runs.dc]
                                     + [(figures.read_run(runs.dc[0]), None), (figures.read_run(runs.mpd), None)])
    assert [p["series"] for p in points] == ["Deep Compression (sweep)", "Deep Compression (sweep)",
                                             "Deep Compression (runs)", "MPD"]
    # a run's setting is its config but for its name, seed and version: seeds of one setting share it
    config = json.loads((runs.dc[0] / "config.json").read_text())
    assert points[0]["setting"] == figures.run_setting(config) != points[1]["setting"]
    reseeded = {**config, "experiment": {**config["experiment"], "name": "other", "seed": 12},
                "mpdref_version": "9.9"}
    assert figures.run_setting(reseeded) == figures.run_setting(config)
    other_data = {**config, "data": {**config["data"], "train_limit": 7}}
    assert figures.run_setting(other_data) != figures.run_setting(config)


@pytest.mark.parametrize("stages, method", [
    ([], "dense"),
    (["train"], "dense"),
    (["train", "prune", "train", "quantize", "encode"], "Deep Compression"),
    (["train", "quantize"], "quantized only"),
    (["mpd", "train", "quantize", "encode"], "MPD"),
    (["train", "admm_prune", "train", "admm_quantize"], "ADMM"),
    (["train", ("darb", "bmwm")], "block-max (BMWM)"),
    (["train", ("darb", "darb"), ("darb", "block")], "DARB + block pruning"),
    (["mpd", "prune"], "MPD + Deep Compression"),
])
def test_method_of_a_config(stages, method):
    config = {"stages": [{"type": s[0], "method": s[1]} if isinstance(s, tuple) else {"type": s} for s in stages]}
    assert figures.method_of(config) == method


# ----------------------------------------------------------------------------- the command


@pytest.mark.mnist
def test_figures_of_a_sweep_and_a_run(capsys, runs, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "figures", runs.sweep, runs.mpd, "-o", out)
    assert code == 0, err
    names = ["tradeoff", "storage", "codebooks", "pruning-sensitivity", "masks", "huffman"]
    assert stdout.splitlines() == [str(out / f"{n}.png") for n in names]
    for n in names:
        assert_column_png(out / f"{n}.png")
    assert "drawn for run directories given alone, not for a sweep's runs" in err and "Traceback" not in err


@pytest.mark.mnist
def test_figures_of_a_deep_compression_run_go_into_its_figures_folder(capsys, runs, tmp_path):
    run = tmp_path / "dc"
    shutil.copytree(runs.dc[0], run)
    code, stdout, err = run_cli(capsys, "figures", run)
    assert code == 0, err
    assert stdout.splitlines() == [str(run / "figures" / f"{n}.png") for n in ("tradeoff", "storage", "codebooks",
                                                                                 "huffman")]
    assert f"pruning-sensitivity: not drawn for {run}: sensitivity.json: missing" in err
    assert f"masks: not drawn for {run}: model.h5: no MPD mask" in err
    assert "Traceback" not in err


@pytest.mark.mnist
def test_figures_as_svg_with_a_benchmark(capsys, runs, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"benchmark": "mpd_inference", "results": [
        {"network": n, "batch": b, "seconds_per_call": {"mpdref": 1e-4 * b / s, "torch dense": 1e-4 * b,
                                                        "torch block": 2e-4 * b / s}}
        for n in ("lenet-300-100", "lenet-5") for b, s in ((1, 0.7), (64, 2.0), (1024, 2.6))]}))
    out = tmp_path / "svg"
    code, stdout, err = run_cli(capsys, "figures", runs.mpd, "-o", out, "--svg", "--bench", bench)
    assert code == 0, err
    names = ["tradeoff", "storage", "codebooks", "pruning-sensitivity", "masks", "huffman", "kernel-speed"]
    assert stdout.splitlines() == [str(out / f"{n}.svg") for n in names]
    for n in names:
        assert_svg(out / f"{n}.svg")
    speed = figures.read_benchmark(bench)
    assert speed["panels"]["LeNet-5"]["mpdref block form"] == [(1, pytest.approx(0.7)), (64, pytest.approx(2.0)),
                                                               (1024, pytest.approx(2.6))]


@pytest.mark.mnist
def test_a_directory_without_inputs_is_told_not_a_crash(capsys, runs, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs.dc[0] / "config.json", unfinished)
    code, stdout, err = run_cli(capsys, "figures", unfinished, "-o", tmp_path / "out")
    assert code == 1 and stdout == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0] == "mpdref figures: tradeoff: not drawn: no finished run (metrics.json with a test error)"
    assert f"codebooks: not drawn for {unfinished}: stages/03-quantize.h5: missing" in err
    assert lines[-1] == "mpdref figures: no figure drawn: none of its inputs are in the directories given"
    assert not (tmp_path / "out").exists()


def test_not_a_run_directory_is_one_line_and_an_unknown_benchmark_is_refused(capsys, tmp_path):
    code, stdout, err = run_cli(capsys, "figures", tmp_path)
    assert code == 1 and err.count("\n") == 1 and "not a run directory (no config.json) nor a sweep directory" in err
    bench = tmp_path / "bench.json"
    bench.write_text('{"results": []}')
    with pytest.raises(figures.FormatError, match="not a benchmark output that mpdref draws"):
        figures.read_benchmark(bench)


def test_figures_has_help(capsys):
    code, out, _ = run_cli(capsys, "figures", "--help")
    assert code == 0 and "RUN_OR_SWEEP_DIR" in out and "--svg" in out and "--bench" in out
    assert "the papers' figures" in run_cli(capsys, "--help")[1]
