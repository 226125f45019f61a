"""DARB, block-max masking and block pruning (mpdref.darb), and the darb layers of .mpdz files."""
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from mpdref import darb, models
from mpdref.compress import _pack_widths, _unpack_widths, compress, decompress, size_table
from mpdref.io import FormatError
from mpdref.quantize import quantize_weight


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 23), seed=st.integers(0, 2**32 - 1), levels=st.integers(2, 6))
def test_block_max_mask_keeps_each_blocks_first_largest_magnitude(rows, cols, seed, levels):
    rng = np.random.default_rng(seed)
    w = rng.integers(-levels, levels + 1, (rows, cols)).astype(np.float64)  # few values: ties everywhere
    sizes = rng.integers(1, cols + 1, rows)
    np.testing.assert_array_equal(darb.block_max_mask(w, sizes), naive.block_max_mask(w, sizes))
    b = int(sizes[0])
    np.testing.assert_array_equal(darb.block_max_mask(w, b), naive.block_max_mask(w, np.full(rows, b)))


def test_conv_filters_are_rows(rng):
    w = rng.standard_normal((6, 3, 5, 5))
    mask = darb.block_max_mask(w, 7)
    assert mask.shape == w.shape and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask.reshape(6, -1), darb.block_max_mask(w.reshape(6, -1), 7))
    assert np.all(mask.reshape(6, -1).sum(axis=1) == 11)  # ⌈75 / 7⌉ blocks a filter


def test_bad_block_sizes_are_refused(rng):
    w = rng.standard_normal((3, 10))
    for sizes in (0, 11, [2, 3], 2.5):
        with pytest.raises(ValueError, match="block sizes must be integers in \\[1, 10\\]"):
            darb.block_max_mask(w, sizes)


@pytest.mark.parametrize("shape, keep", [((300, 784), 0.075), ((100, 300), 0.09), ((10, 100), 0.26),
                                         ((50, 20, 5, 5), 0.12), ((500, 800), 0.02)])
@pytest.mark.parametrize("sizes", ["any", "pow2"])
def test_darb_sizes_follow_density_and_keep_the_target_within_ten_percent(shape, keep, sizes, rng):
    # rows of different scales: their densities differ, as after training
    w = rng.standard_normal(shape) * rng.uniform(0.2, 3.0, (shape[0],) + (1,) * (len(shape) - 1))
    mask, block_sizes = darb.darb_mask(w, keep, sizes)
    target = round(keep * w.size)
    assert abs(int(mask.sum()) - target) <= 0.1 * target
    density = darb.row_densities(w, keep)
    order = np.argsort(density, kind="stable")
    assert np.all(np.diff(block_sizes[order]) <= 0), "a denser row got a larger block"
    assert np.ptp(block_sizes) > 0, "rows of different densities all got one size"
    np.testing.assert_array_equal(mask, darb.block_max_mask(w, block_sizes))
    if sizes == "pow2":
        cols = w[0].size
        assert all(b == cols or (b & (b - 1)) == 0 for b in block_sizes.tolist())


def test_rows_of_equal_density_are_moved_one_at_a_time_to_reach_the_target(rng):
    """Ten identical rows change size at the same α: 1,000 kept at size 1, 500 at size 2, nothing
    between. The target 700 is reached by giving six rows, the first in density order, size 2."""
    w = np.tile(rng.standard_normal(100), (10, 1))
    mask, sizes = darb.darb_mask(w, 0.7)
    assert int(mask.sum()) == 700
    assert sorted(sizes.tolist()) == [1] * 4 + [2] * 6
    order = np.argsort(darb.row_densities(w, 0.7), kind="stable")
    assert np.all(np.diff(sizes[order]) <= 0), "a denser row got a larger block"


def test_darb_says_when_no_sizes_reach_the_target(rng):
    with pytest.raises(ValueError, match="within 10% of 10 weights .* the nearest keeps 20"):
        darb.darb_mask(rng.standard_normal((20, 25)), 0.02)  # at least one weight a row: 20


def test_bmwm_takes_the_one_block_size_nearest_to_the_target(rng):
    w = rng.standard_normal((30, 100))
    mask, sizes = darb.bmwm_mask(w, 0.1)
    assert np.all(sizes == 10) and int(mask.sum()) == 300
    b = darb.uniform_block_size(w, 0.07)
    best = min(range(1, 101), key=lambda c: abs(30 * -(-100 // c) - 210))
    assert b == best


def test_block_pruning_keeps_whole_tiles_with_the_largest_norms(rng):
    w = rng.standard_normal((18, 22))
    mask = darb.block_prune_mask(w, 0.3, tile=4)
    target = round(0.3 * w.size)
    assert target <= int(mask.sum()) < target + 16
    tiles = [(r, c) for r in range(0, 18, 4) for c in range(0, 22, 4)]
    kept = [t for t in tiles if mask[t[0], t[1]]]
    for r, c in tiles:  # a tile is kept or dropped whole
        assert len(np.unique(mask[r : r + 4, c : c + 4])) == 1
    norm = {t: np.linalg.norm(w[t[0] : t[0] + 4, t[1] : t[1] + 4]) for t in tiles}
    assert min(norm[t] for t in kept) >= max(norm[t] for t in tiles if t not in kept)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_row_block_sizes_finds_the_smallest_size_that_fits(rows, cols, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols))
    sizes = rng.integers(1, cols + 1, rows)
    found = darb.row_block_sizes(darb.block_max_mask(w, sizes))
    assert found is not None
    np.testing.assert_array_equal(found, naive.smallest_regular_block_sizes(darb.block_max_mask(w, sizes)))
    assert np.all(found <= sizes)


def test_block_sizes_of_small_masks_by_hand():
    np.testing.assert_array_equal(darb.row_block_sizes(np.array([[0, 1, 0, 0, 1, 0]])), [3])  # blocks [0, 3), [3, 6)
    np.testing.assert_array_equal(darb.row_block_sizes(np.array([[0, 0, 0, 0, 0, 1]])), [6])  # one block
    assert darb.row_block_sizes(np.array([[1, 1, 0, 0, 0, 0]])) is None  # two blocks of 3 to 5: both in the first
    assert darb.row_block_sizes(np.array([[1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]])) is None  # an empty row


@settings(max_examples=100, deadline=None)
@given(widths=st.lists(st.integers(0, 17), max_size=40), seed=st.integers(0, 2**32 - 1))
def test_values_of_varying_widths_pack_and_unpack(widths, seed):
    rng = np.random.default_rng(seed)
    widths = np.array(widths, np.int64)
    values = np.array([int(rng.integers(0, 1 << int(b))) if b else 0 for b in widths], np.int64)
    data = _pack_widths(values, widths)
    assert len(data) == (int(widths.sum()) + 7) // 8
    np.testing.assert_array_equal(_unpack_widths(data, widths), values)


def _darb_network(seed=0):
    net = models.build("lenet-5", seed=seed)
    darb.regular_prune(net, {"conv2.weight": 0.1, "fc1.weight": 0.07, "fc2.weight": 0.2}, "darb")
    darb.regular_prune(net, {"conv1.weight": 0.5}, "bmwm")
    for name in net.weight_names():
        net.params[name] = quantize_weight(net.params[name], net.masks.get(name), 5)
    return net


def test_a_darb_network_round_trips_through_mpdz_as_version_3(tmp_path):
    net = _darb_network()
    table = compress(net, tmp_path / "m.mpdz")
    assert struct.unpack_from("<4sH", (tmp_path / "m.mpdz").read_bytes()) == (b"MPDZ", 3)
    assert {r["kind"] for r in table["layers"]} == {"darb"}
    back = decompress(tmp_path / "m.mpdz")
    for k in net.params:
        np.testing.assert_array_equal(back.params[k], net.params[k])
    for k in net.masks:
        np.testing.assert_array_equal(back.masks[k], net.masks[k])
    fc1 = next(r for r in table["layers"] if r["layer"] == "fc1.weight")
    sizes = darb.row_block_sizes(net.masks["fc1.weight"])
    counts = darb.blocks_per_row(sizes, 800)
    assert fc1["index_bits_fixed"] == round(float(np.sum(counts * darb.offset_bits(sizes)) / counts.sum()), 2)


def test_a_network_without_darb_layers_stays_version_2(tmp_path):
    net = models.build("lenet-300-100", seed=0)
    compress(net, tmp_path / "m.mpdz")
    assert struct.unpack_from("<4sH", (tmp_path / "m.mpdz").read_bytes()) == (b"MPDZ", 2)


def test_a_darb_index_is_smaller_than_relative_indices_on_the_same_mask(tmp_path):
    net = _darb_network()
    darb_bits = {r["layer"]: r["structure_bits"] for r in compress(net, tmp_path / "d.mpdz")["layers"]}
    sparse = {r["layer"]: r["structure_bits"] for r in compress(net, tmp_path / "s.mpdz", index_bits=4)["layers"]}
    assert all(darb_bits[k] < sparse[k] for k in ("conv2.weight", "fc1.weight", "fc2.weight")), (darb_bits, sparse)


def test_the_stage_checks_its_settings():
    from mpdref.runner.config import ConfigError, resolve_config

    def config(**stage):
        return {"experiment": {"model": "lenet-300-100"}, "stages": [{"type": "darb", **stage}]}

    with pytest.raises(ConfigError, match="give exactly one of keep and keep_all"):
        resolve_config(config(keep={"fc1.weight": 0.1}, keep_all=0.1))
    with pytest.raises(ConfigError, match="'fc9.weight' is not a weight of lenet-300-100"):
        resolve_config(config(keep={"fc9.weight": 0.1}))
    with pytest.raises(ConfigError, match="stages\\[0\\].method: expected one of 'darb', 'bmwm', 'block'"):
        resolve_config(config(keep_all=0.1, method="rows"))


@pytest.mark.mnist
def test_darb_rounds_retrain_under_regular_masks_and_encode_as_darb(mnist_dir, tmp_path):
    from mpdref.runner import run_experiment
    from mpdref.runner.config import resolve_config

    config = resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 2},
        "data": {"root": str(mnist_dir), "train_limit": 1000, "validation_size": 200},
        "stages": [{"type": "train", "epochs": 1}, {"type": "darb", "keep_all": 0.2},
                   {"type": "train", "epochs": 1}, {"type": "darb", "keep_all": 0.1, "sizes": "pow2"},
                   {"type": "train", "epochs": 1}, {"type": "encode"}]})
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    second = metrics["stages"][3]
    assert abs(second["weights_kept"] - 0.1) <= 0.01
    net = models.load(tmp_path / "run" / "model.h5")
    for name in net.weight_names():
        sizes = darb.row_block_sizes(net.masks[name])  # still regular after retraining under the mask
        assert sizes is not None
        assert np.all(net.params[name][~net.masks[name]] == 0)
    assert {r["kind"] for r in size_table(tmp_path / "run" / "model.mpdz")["layers"]} == {"darb"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decoding_kernels_equal_their_references_and_the_dense_product(dtype, rng):
    from mpdref.kernels import sparse
    from mpdref.sparse_index import positions_from_indices, relative_indices
    from compare import assert_close

    w = rng.standard_normal((37, 53)).astype(dtype)
    mask, block_sizes = darb.darb_mask(w, 0.1)
    positions = np.flatnonzero(mask)
    offsets = darb.darb_offsets(block_sizes, positions, 53)
    values = w.ravel()[positions]
    x = rng.standard_normal((53, 5)).astype(dtype)
    dense = (w * mask) @ x
    tol = 1e-5 if dtype == np.float32 else 1e-12

    out = np.empty(len(positions), np.int64)
    sparse.darb_positions(block_sizes, offsets, 53, out)
    np.testing.assert_array_equal(out, darb.darb_positions(block_sizes, offsets, 53))
    np.testing.assert_array_equal(out, positions)
    for n in (5, 1):  # a batch, and the matrix-vector product's own loop
        y = np.zeros((37, n), dtype)
        sparse.darb_matmul(block_sizes, offsets, values, 53, x[:, :n].copy(), y)
        assert_close(y, darb.darb_matmul(block_sizes, offsets, values, x[:, :n]), rtol=tol, atol=tol,
                     name=f"darb kernel, batch {n}")
        assert_close(y, dense[:, :n], rtol=tol, atol=tol, name=f"darb against dense, batch {n}")
    # denser rows: every row with several groups of four blocks and a remainder
    mask2, sizes2 = darb.darb_mask(w, 0.6)
    positions2 = np.flatnonzero(mask2)
    offsets2, values2 = darb.darb_offsets(sizes2, positions2, 53), w.ravel()[positions2]
    y = np.zeros((37, 1), dtype)
    sparse.darb_matmul(sizes2, offsets2, values2, 53, x[:, :1].copy(), y)
    assert_close(y, (w * mask2) @ x[:, :1], rtol=tol, atol=tol, name="darb kernel, batch 1, keep 0.6")

    symbols, fillers = relative_indices(positions, 3)
    stored = np.zeros(len(symbols), dtype)
    stored[~fillers] = values
    out = np.empty(len(symbols), np.int64)
    sparse.relative_positions(symbols, out)
    np.testing.assert_array_equal(out, positions_from_indices(symbols, w.size))
    for n in (5, 1):
        y = np.zeros((37, n), dtype)
        sparse.relative_matmul(symbols, stored, 53, x[:, :n].copy(), y)
        assert_close(y, dense[:, :n], rtol=tol, atol=tol, name=f"relative indices against dense, batch {n}")

    tiled = darb.block_prune_mask(w, 0.3, tile=4)
    starts = [(r, c) for r in range(0, 37, 4) for c in range(0, 53, 4) if tiled[r, c]]
    tiles = np.zeros((len(starts), 4, 4), dtype)
    for t, (r, c) in enumerate(starts):
        block = w[r : r + 4, c : c + 4]
        tiles[t, : block.shape[0], : block.shape[1]] = block
    y = np.zeros((37, 5), dtype)
    sparse.tile_matmul(np.array([r // 4 for r, _ in starts]), np.array([c // 4 for _, c in starts]), tiles, x, y)
    assert_close(y, (w * tiled) @ x, rtol=tol, atol=tol, name="tiles against dense")


@pytest.mark.parametrize("damage, message", [
    (lambda layer, sections: layer.update(block_sizes=0), "0 block sizes for rows of 800"),
    (lambda layer, sections: layer.update(offset_code="gamma"), "unknown offset code 'gamma'"),
    (lambda layer, sections: layer.update(stored=layer["stored"] + 1), "the block sizes give 27976 kept weights, where 27977"),
    (lambda layer, sections: sections.update({"fc1.weight/offsets": b"\xff" * len(sections["fc1.weight/offsets"])}),
     "offset|Huffman|code"),
])
def test_a_darb_layer_that_does_not_add_up_is_refused_naming_it(damage, message, tmp_path):
    """Damage past the checksum (a well-formed file that says impossible things) is a FormatError."""
    from mpdref.io.mpdz import read_mpdz, write_mpdz

    compress(_darb_network(), tmp_path / "m.mpdz")
    header, sections, _ = read_mpdz(tmp_path / "m.mpdz")
    layer = next(layer for layer in header["layers"] if layer["name"] == "fc1.weight")
    damage(layer, sections)
    header.pop("sections")
    write_mpdz(tmp_path / "bad.mpdz", header, list(sections.items()), version=3)
    with pytest.raises(FormatError, match=f"bad.mpdz: layer fc1.weight: .*({message})"):
        decompress(tmp_path / "bad.mpdz")


@pytest.mark.parametrize("field, value, message", [
    ("shape", [], "layer fc1.weight: shape \\[\\], the network needs \\[500, 800\\]"),
    ("shape", [2**50, 1], "layer fc1.weight: shape \\[1125899906842624, 1\\], the network needs"),
    ("block_sizes", float("inf"), "layer fc1.weight: cannot convert float infinity"),
])
def test_header_sizes_are_checked_before_anything_is_decoded(field, value, message, tmp_path):
    """A re-signed file whose header claims impossible sizes: decompress and size_table both refuse it
    with a FormatError (never an IndexError, OverflowError or an allocation of the claimed size)."""
    from mpdref.io.mpdz import read_mpdz, write_mpdz

    compress(_darb_network(), tmp_path / "m.mpdz")
    header, sections, _ = read_mpdz(tmp_path / "m.mpdz")
    next(layer for layer in header["layers"] if layer["name"] == "fc1.weight")[field] = value
    header.pop("sections")
    write_mpdz(tmp_path / "bad.mpdz", header, list(sections.items()), version=3)
    for reader in (decompress, size_table):
        with pytest.raises(FormatError, match=message):
            reader(tmp_path / "bad.mpdz")
