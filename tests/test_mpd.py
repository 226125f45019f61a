import numpy as np
import pytest
from hypothesis import given, settings, example
from hypothesis import strategies as st

import naive
from compare import assert_close, max_norm_atol
from conftest import assert_resume_is_bit_identical, on_each_thread_count
from mpdref.mpd import block_diagonal_matmul, block_structure, mpd_mask, split_bounds


def test_block_sizes_follow_array_split():
    assert np.diff(split_bounds(784, 10)).tolist() == [79, 79, 79, 79, 78, 78, 78, 78, 78, 78]
    for n, k in [(300, 7), (10, 10), (5, 1)]:
        assert np.diff(split_bounds(n, k)).tolist() == [len(a) for a in np.array_split(np.arange(n), k)]


def test_mask_is_a_permuted_block_diagonal(rng):
    m = mpd_mask(300, 784, 10, rng)
    assert m.mask.shape == (300, 784) and m.mask.dtype == bool and m.k == 10
    permuted = m.mask[np.ix_(m.row_perm, m.col_perm)]
    np.testing.assert_array_equal(permuted, naive.block_diagonal_mask(300, 784, m.row_bounds, m.col_bounds))
    assert m.mask.sum() == sum(np.diff(m.row_bounds) * np.diff(m.col_bounds))
    assert sorted(m.row_perm.tolist()) == list(range(300))


@pytest.mark.parametrize("rows, cols, k", [(3, 10, 4), (10, 3, 4), (5, 5, 0)])
def test_k_larger_than_a_dimension_is_refused(rows, cols, k, rng):
    with pytest.raises(ValueError, match="k must be between 1 and"):
        mpd_mask(rows, cols, k, rng)


def _block_sets(m):
    return {(frozenset(m.block_rows(b).tolist()), frozenset(m.block_cols(b).tolist())) for b in range(m.k)}


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_recovery_from_the_bare_mask_reproduces_the_blocks(rows, cols, data, seed):
    k = data.draw(st.integers(1, min(rows, cols)))
    made = mpd_mask(rows, cols, k, np.random.default_rng(seed))
    found = block_structure(made.mask.astype(np.uint8))
    assert found.k == k
    assert _block_sets(found) == _block_sets(made)  # the same blocks, up to their order
    np.testing.assert_array_equal(found.mask, made.mask)


def test_masks_that_are_not_permuted_block_diagonal_are_named(rng):
    m = mpd_mask(6, 8, 2, rng).mask.copy()
    r, c = np.argwhere(m)[0]
    m[r, c] = False
    with pytest.raises(ValueError, match="holds .* ones, not"):
        block_structure(m)
    z = mpd_mask(6, 8, 2, rng).mask.copy()
    z[:, 3] = False
    with pytest.raises(ValueError, match="all zero"):
        block_structure(z)
    with pytest.raises(ValueError, match="only 0 and 1"):
        block_structure(np.full((2, 2), 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_diagonal_matmul_equals_the_masked_dense_product(dtype, rng):
    m = mpd_mask(37, 53, 5, rng)  # uneven blocks
    w = (rng.standard_normal((37, 53)) * m.mask).astype(dtype)
    x = rng.standard_normal((4, 53)).astype(dtype)
    dense = x @ w.T  # (4, 37)
    y = block_diagonal_matmul(m.blocks(w), x[:, m.col_perm])  # gather the input once
    assert y.dtype == dtype
    assert_close(y, dense[:, m.row_perm], rtol=1e-5 if dtype == np.float32 else 1e-12, atol=0, name="y")
    with pytest.raises(ValueError, match="columns"):
        block_diagonal_matmul(m.blocks(w), x[:, :50])


# Shapes that cross the kernel's boundaries: blocks narrower than a panel and wider than
# several, depths beyond one slice (256 in both dtypes with AVX2's tile, 128 with AVX-512's),
# batches of several strips (48 rows) and past a tile (6 rows), a single block. Each runs on
# both register tiles: the one this machine chooses and the other, forced (LLVM splits vectors
# wider than the CPU's, so both run anywhere).
TILES = ["avx2", "avx512"]
KERNEL_CASES = [(37, 53, 5, 4), (8, 8, 8, 1), (64, 33, 3, 17), (5, 40, 1, 2), (70, 600, 2, 100), (40, 1100, 2, 53)]


def assert_within_rounding(y, m, w, x):
    """|y - oracle| <= 1.01·n·u·(|x| |W|ᵀ), the textbook bound for a sum of n products in precision u
    (Higham, Accuracy and Stability of Numerical Algorithms, 3.1), n the largest block depth; the
    oracle: the kernel's loop oracle in float64. For float32 the oracle is exact to far below u;
    for float64 it rounds as much as the kernel may, in another order, so the two may differ by
    twice the bound (|y - oracle| <= |y - exact| + |exact - oracle|)."""
    depth = int(np.diff(m.col_bounds).max())
    exact = naive.permuted_block_diagonal_matmul(m.blocks(w.astype(np.float64)), x.astype(np.float64), m.col_perm,
                                                 m.row_perm)
    both_round = 2 if x.dtype == np.float64 else 1
    bound = (both_round * 1.01 * depth * np.finfo(x.dtype).eps / 2
             * (np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T))
    assert_close(y, exact, rtol=0, atol=bound, name="y")  # the bound, element by element


@pytest.mark.parametrize("rows, cols, k, n", KERNEL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile", TILES)
def test_numba_kernel_equals_the_numpy_reference(rows, cols, k, n, dtype, tile, rng):
    from mpdref.kernels.blockdiag import block_diagonal_matmul_permuted, pack_blocks
    from mpdref.kernels.config import CPU_TILES

    m = mpd_mask(rows, cols, k, rng)
    w = (rng.standard_normal((rows, cols)) * m.mask).astype(dtype)
    x = rng.standard_normal((n, cols)).astype(dtype)
    flat, offsets = pack_blocks(m.blocks(w), dtype, CPU_TILES[tile])
    y = block_diagonal_matmul_permuted(flat, offsets, m.row_bounds, m.col_bounds, m.row_perm, m.col_perm, x,
                                       tile=CPU_TILES[tile])
    assert y.dtype == dtype and y.shape == (n, rows)
    assert_within_rounding(y, m, w, x)
    assert not np.array_equal(y, np.zeros_like(y))


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 70), cols=st.integers(1, 300), k=st.integers(1, 40), n=st.integers(0, 60),
       seed=st.integers(0, 2**32 - 1), double=st.booleans(), tile=st.sampled_from(TILES))
@example(rows=23, cols=52, k=21, n=30, seed=1700, double=True, tile="avx2")  # float64 oracle and kernel round apart
def test_numba_kernel_on_random_shapes(rows, cols, k, n, seed, double, tile):
    from mpdref.kernels.blockdiag import block_diagonal_matmul_permuted, pack_blocks
    from mpdref.kernels.config import CPU_TILES

    k = min(k, rows, cols)
    dtype = np.float64 if double else np.float32
    rng = np.random.default_rng(seed)
    m = mpd_mask(rows, cols, k, rng)
    w = (rng.standard_normal((rows, cols)) * m.mask).astype(dtype)
    x = rng.standard_normal((n, cols)).astype(dtype)
    flat, offsets = pack_blocks(m.blocks(w), dtype, CPU_TILES[tile])
    y = block_diagonal_matmul_permuted(flat, offsets, m.row_bounds, m.col_bounds, m.row_perm, m.col_perm, x,
                                       tile=CPU_TILES[tile])
    assert y.shape == (n, rows) and y.dtype == dtype
    assert_within_rounding(y, m, w, x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_row_of_the_kernel_does_not_depend_on_how_the_work_is_split(dtype, rng):
    # Each output is one running sum in a fixed order, whatever the strips, groups of blocks
    # and depth slices: the results must be the same bits.
    from mpdref.kernels import blockdiag
    from mpdref.kernels.config import CPU_TILES
    from mpdref.kernels.intrinsics import tile_columns

    m = mpd_mask(90, 700, 3, rng)
    w = (rng.standard_normal((90, 700)) * m.mask).astype(dtype)
    x = rng.standard_normal((61, 700)).astype(dtype)
    flat, offsets = blockdiag.pack_blocks(m.blocks(w), dtype)
    nr = tile_columns(dtype)
    args = (flat, offsets, m.row_bounds, m.col_bounds, m.row_perm, m.col_perm)
    results = []
    for strip_rows, groups, depth_slice in [(6, 1, 256), (48, 1, 256), (66, 3, 256), (12, 2, 64), (6, 3, 1000)]:
        y = blockdiag._block_diagonal_matmul(*args, x, nr, strip_rows, groups, depth_slice)
        assert_within_rounding(y, m, w, x)
        results.append(y)
    assert all(np.array_equal(y, results[0]) for y in results[1:])
    one_row = blockdiag.block_diagonal_matmul_permuted(*args, x[17:18])
    assert np.array_equal(one_row[0], results[0][17])
    # What a benchmark calls (kernel_arguments, all phases named) is the product itself.
    timed = blockdiag._block_diagonal_matmul(*blockdiag.kernel_arguments(*args, x), blockdiag.ALL_PHASES)
    assert np.array_equal(timed, results[0])
    # The register tile changes the speed, not the sums: either tile gives the same bits.
    for tile in CPU_TILES.values():
        packed = blockdiag.pack_blocks(m.blocks(w), dtype, tile)
        y = blockdiag.block_diagonal_matmul_permuted(*packed, *args[2:], x, tile=tile)
        assert np.array_equal(y, results[0]), tile


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("depth", [0, 1, 7, 300])
@pytest.mark.parametrize("shape", TILES)
def test_tile_product_equals_its_loops(dtype, depth, shape, rng):
    import numba

    from mpdref.kernels.config import CPU_TILES
    from mpdref.kernels.intrinsics import make_tile_product, tile_columns

    tile_product = make_tile_product(CPU_TILES[shape])
    rows = CPU_TILES[shape].rows

    @numba.njit
    def tile(a, a_start, a_stride, b, c, c_start, c_stride, depth, accumulate):
        tile_product(a, a_start, a_stride, b, 0, c, c_start, c_stride, depth, accumulate)

    nr = tile_columns(dtype, CPU_TILES[shape])
    assert nr * np.dtype(dtype).itemsize == {"avx2": 64, "avx512": 128}[shape]  # two vectors
    a = rng.standard_normal(rows * (depth + 5) + 3).astype(dtype)  # rows of depth + 5, from 3 on
    b = rng.standard_normal(depth * nr).astype(dtype)
    c = rng.standard_normal(rows * (nr + 4) + 2).astype(dtype)  # rows of nr + 4, from 2 on
    in_tile = np.zeros(c.shape, bool)
    in_tile[2:2 + rows * (nr + 4)].reshape(rows, nr + 4)[:, :nr] = True
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for accumulate in (False, True):
        expected = c.astype(np.float64)
        naive.tile_product(a.astype(np.float64), 3, depth + 5, b.astype(np.float64), 0, expected, 2, nr + 4, depth,
                           accumulate, rows, nr)
        before = c.copy()
        tile(a, 3, depth + 5, b, c, 2, nr + 4, depth, accumulate)
        assert_close(c[in_tile], expected[in_tile], name="the tile", **tol)
        np.testing.assert_array_equal(c[~in_tile], before[~in_tile])  # nothing outside the tile is written


def test_the_register_tile_is_chosen_from_the_features_numba_compiles_for(monkeypatch):
    import numba.core.config

    from mpdref.kernels import blockdiag, intrinsics
    from mpdref.kernels.config import CPU_TILES, choose_cpu_tile

    assert choose_cpu_tile({"sse4_2", "avx", "avx2", "fma"}) is CPU_TILES["avx2"]
    assert choose_cpu_tile({"avx2", "fma", "avx512f", "avx512bw"}) is CPU_TILES["avx512"]
    assert choose_cpu_tile(set()) is CPU_TILES["avx2"]
    # This process's tile: the one its features ask for, and the one the kernel is compiled with.
    assert intrinsics.CPU_TILE is choose_cpu_tile(intrinsics.compiled_cpu_features())
    assert intrinsics.tile_product is intrinsics.make_tile_product(intrinsics.CPU_TILE)
    assert blockdiag._block_diagonal_matmul is blockdiag.kernel_for(intrinsics.CPU_TILE)
    # NUMBA_CPU_FEATURES, where set, is what Numba compiles for, not the host's features.
    monkeypatch.setattr(numba.core.config, "CPU_FEATURES", "+avx,+avx2,+fma,-avx512f,-avx512bw")
    assert {"avx2", "fma"} <= intrinsics.compiled_cpu_features() and "avx512f" not in intrinsics.compiled_cpu_features()
    monkeypatch.setattr(numba.core.config, "CPU_FEATURES", "+avx2,+avx512f")
    assert choose_cpu_tile(intrinsics.compiled_cpu_features()) is CPU_TILES["avx512"]


def test_work_split_covers_the_batch_and_shares_the_weights():
    from mpdref.kernels.blockdiag import STRIP_ROWS, work_split
    from mpdref.kernels.intrinsics import TILE_ROWS

    for n in (0, 1, 5, 6, 7, 64, 100, 1024, 5000):
        for k in (1, 4, 64):
            for threads in (1, 2, 16):
                for weights in (1 << 10, 64 << 20):
                    activations = max(n, 1) * 8192
                    rows, groups = work_split(n, k, threads, weights, activations)
                    strips = -(-max(n, 1) // rows)
                    assert rows % TILE_ROWS == 0 and rows >= TILE_ROWS and 1 <= groups <= k
                    assert strips * rows >= n and (strips - 1) * rows < max(n, 1)  # no empty strip
                    if weights > 4 * activations:  # one strip, the blocks shared
                        assert strips == 1 and groups == min(k, threads)
                    else:
                        assert rows <= STRIP_ROWS and (groups == 1 or strips < threads)
    assert work_split(1024, 64, 2, 1 << 20, 1024 * 32768) == (48, 1)
    assert work_split(64, 4, 2, 64 << 20, 64 * 32768) == (66, 2)  # weights 32x the activations: share them
    assert work_split(64, 64, 2, 4 << 20, 64 * 32768) == (36, 1)  # weights 2x: split the batch
    assert work_split(7, 64, 16, 1 << 10, 7 * 32768) == (6, 8)  # 2 strips for 16 threads: 8 groups each


def test_the_kernel_rejects_inputs_it_would_read_outside_of(rng):
    from mpdref.kernels.blockdiag import block_diagonal_matmul_permuted, pack_blocks
    from mpdref.kernels.config import CPU_TILES
    from mpdref.kernels.intrinsics import CPU_TILE

    other_tile = next(tile for tile in CPU_TILES.values() if tile != CPU_TILE)
    m = mpd_mask(20, 30, 3, rng)
    flat, offsets = pack_blocks(m.blocks(rng.standard_normal((20, 30)) * m.mask), np.float64)
    x = rng.standard_normal((4, 30))
    good = dict(flat=flat, offsets=offsets, row_bounds=m.row_bounds, col_bounds=m.col_bounds,
                row_perm=m.row_perm, col_perm=m.col_perm, x=x)
    block_diagonal_matmul_permuted(**good)
    bad_perm = m.col_perm.copy()
    bad_perm[5] = 30
    for change, error, match in [
        (dict(x=x[:, :29]), ValueError, r"x must be \(N, 30\)"),
        (dict(x=x.astype(np.float32)), TypeError, "float32"),
        (dict(col_perm=bad_perm), ValueError, "col_perm"),
        (dict(row_perm=m.row_perm[:-1]), ValueError, "row_perm"),
        (dict(offsets=offsets + 1), ValueError, "pack_blocks"),
        (dict(flat=flat[:-1]), ValueError, "pack_blocks"),
        (dict(row_bounds=m.row_bounds[::-1].copy()), ValueError, "increasing"),
        (dict(tile=other_tile), ValueError, "pack_blocks"),  # packed for the host's panels, not these
    ]:
        with pytest.raises(error, match=match):
            block_diagonal_matmul_permuted(**{**good, **change})


# ----------------------------------------------------------------------------- storage and the stage

from mpdref import models  # noqa: E402
from mpdref.mpd import (channel_mask, choose_k, index_bits, layer_storage_bits, storage_table,  # noqa: E402
                        weight_structure)


def test_layer_storage_bits_by_hand():
    bits = layer_storage_bits((300, 784), 10, 300)
    # blocks: rows 30 each; columns 4 blocks of 79 and 6 of 78 -> 30·(4·79 + 6·78) = 23,520 kept weights
    assert bits == {"weights": 23_520 * 32, "bias": 300 * 32, "permutations": 300 * 9 + 784 * 10,
                    "boundaries": 9 * (9 + 10)}
    assert layer_storage_bits((20, 1, 5, 5), None, 20) == {"weights": 500 * 32, "bias": 640, "permutations": 0,
                                                          "boundaries": 0}
    assert [index_bits(n) for n in (1, 2, 3, 784, 1024, 1025)] == [1, 1, 2, 10, 10, 11]


def test_choose_k_is_the_smallest_k_reaching_the_ratio():
    shapes = models.parameter_shapes("lenet-300-100")
    layers = ["fc1.weight", "fc2.weight", "fc3.weight"]
    ks = choose_k(shapes, layers, 10.0)
    assert ks == {"fc1.weight": 11, "fc2.weight": 11, "fc3.weight": 10}
    assert storage_table(shapes, ks)["ratio"] >= 10.0
    assert storage_table(shapes, {n: min(10, *shapes[n][:2]) for n in layers})["ratio"] < 10.0
    with pytest.raises(ValueError, match="no k reaches"):
        choose_k(shapes, ["fc3.weight"], 2.0)


def test_storage_table_recomputed_independently_from_a_saved_model(tmp_path, rng):
    net = models.build("lenet-5")
    ks = {"conv2.weight": 5, "fc1.weight": 25, "fc2.weight": 10}
    for name, k in ks.items():
        shape = net.params[name].shape
        net.set_mask(name, channel_mask(shape, mpd_mask(shape[0], shape[1], k, rng)))
    models.save(net, tmp_path / "m.h5")
    back = models.load(tmp_path / "m.h5")
    for name in back.masks:
        assert weight_structure(back.masks[name]).k == ks[name]  # the structure from the bare mask in the file
    table = storage_table(back.parameter_shapes(), ks)
    assert table["stored_bits"] == naive.mpd_stored_bits(back.params, back.masks, ks)
    assert table["dense_bits"] == 32 * 431_080


def test_conv_masks_keep_whole_kernels(rng):
    m = mpd_mask(50, 20, 4, rng)
    mask = channel_mask((50, 20, 5, 5), m)
    assert mask.shape == (50, 20, 5, 5) and np.all(mask == m.mask[:, :, None, None])
    assert _block_sets(weight_structure(mask)) == _block_sets(m)
    mask[0, 0, 0, 0] = not mask[0, 0, 0, 0]
    with pytest.raises(ValueError, match="whole kernels"):
        weight_structure(mask)


@pytest.mark.parametrize("stage, message", [
    ({"type": "mpd", "ratio": 10.0, "k": {"fc1.weight": 2}}, "exactly one of ratio, k and k_all"),
    ({"type": "mpd"}, "exactly one of ratio, k and k_all"),
    ({"type": "mpd", "k": {"fc9.weight": 2}}, "'fc9.weight' is not a weight of lenet-300-100"),
    ({"type": "mpd", "k": {"fc3.weight": 11}}, "k.fc3.weight: expected an integer in [1, 10]"),
    ({"type": "mpd", "ratio": 0.5}, "ratio: expected a number > 1"),
    ({"type": "mpd", "k_all": 4, "layers": ["fc1.bias"]}, "'fc1.bias' is not a weight"),
])
def test_mpd_stage_config_checks(stage, message):
    from mpdref.runner.config import ConfigError, resolve_config

    with pytest.raises(ConfigError) as info:
        resolve_config({"experiment": {"model": "lenet-300-100"}, "stages": [stage]})
    assert message in str(info.value)


@pytest.mark.mnist
def test_mpd_pipeline_trains_under_recoverable_masks(tmp_path, mnist_dir):
    from mpdref.runner import run_experiment
    from mpdref.runner.config import resolve_config

    config = resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 1},
        "data": {"root": str(mnist_dir), "train_limit": 2000, "validation_size": 500},
        "stages": [{"type": "mpd", "ratio": 10.0}, {"type": "train", "epochs": 2}]})
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    assert metrics["stages"][0]["ratio"] >= 10.0 and metrics["stages"][0]["rescaled"] is True
    assert metrics["test_error"] < 0.5  # trains (chance is 0.9)
    net = models.load(tmp_path / "run" / "model.h5")
    for name, k in metrics["stages"][0]["k"].items():
        m = weight_structure(net.masks[name])
        assert m.k == k
        assert np.all(net.params[name][~net.masks[name]] == 0.0)
    assert (tmp_path / "run" / "figures" / "mpd-masks.png").exists()


MPD_KS = {
    "lenet-300-100": {"fc1.weight": 10, "fc2.weight": 7, "fc3.weight": 3},
    "lenet-5": {"conv1.weight": 1, "conv2.weight": 4, "fc1.weight": 9},  # fc2 stays dense
    "deep-mnist": {"conv2.weight": 8, "fc1.weight": 16, "fc2.weight": 5},
}


@pytest.mark.parametrize("name", list(MPD_KS))
def test_block_form_logits_equal_the_masked_network(name, rng):
    from mpdref.mpd import to_block_diagonal

    net = models.build(name, np.float64, seed=2)
    for layer, k in MPD_KS[name].items():
        shape = net.params[layer].shape
        net.set_mask(layer, channel_mask(shape, mpd_mask(shape[0], shape[1], k, rng)))
    # bias too: it must follow its rows through the permutation
    for k_ in net.params:
        if k_.endswith(".bias"):
            net.params[k_] = rng.standard_normal(net.params[k_].shape)
    x = rng.standard_normal((5, 1, 28, 28))
    block = to_block_diagonal(net)
    expected = net.forward(x)
    got = block.forward(x)
    # A norm-wise relative error, max|got - expected| <= 1e-12·max|expected|: rtol = 0, atol = 1e-12·max|expected|.
    assert_close(got, expected, rtol=0, atol=max_norm_atol(1e-12, expected), name="logits")
    assert block.stored_parameters() == sum(int(net.masks[k].sum()) if k in net.masks else v.size
                                            for k, v in net.params.items())


@pytest.mark.parametrize("name, distilled", [("lenet-300-100", False), ("lenet-5", False),
                                             ("lenet-300-100", True)])
def test_block_form_training_equals_masked_dense_training(name, distilled, rng):
    from mpdref.mpd import to_block_diagonal
    from mpdref.train import Distillation, Recipe, fit
    from test_train import synthetic

    net = models.build(name, np.float64, seed=3)
    for layer, k in MPD_KS[name].items():
        shape = net.params[layer].shape
        net.set_mask(layer, channel_mask(shape, mpd_mask(shape[0], shape[1], k, rng)))
    block = to_block_diagonal(net)
    data = synthetic(96, rng, np.float64)
    # Teacher logits in the classes' order; the block form must reorder them as it reorders its logits.
    distill = Distillation(rng.standard_normal((96, 10)) * 3, temperature=3.0, weight=0.7) if distilled else None
    recipe = Recipe(epochs=2, batch_size=32, lr=0.05, weight_decay=1e-3)
    fit(net, data, recipe, seed=5, progress=False, distill=distill)
    fit(block, data, recipe, seed=5, progress=False, distill=distill)  # the same shuffles, the same schedule
    trained = models.build(name, np.float64)
    trained.masks = dict(net.masks)
    block.to_masked(trained)
    for k in net.params:  # norm-wise relative errors: rtol = 0, atol = 1e-10·max|masked-trained parameter|
        assert_close(trained.params[k], net.params[k], rtol=0, atol=max_norm_atol(1e-10, net.params[k]), name=k)
    assert block.stored_parameters() == sum(int(net.masks[k].sum()) if k in net.masks else v.size
                                            for k, v in net.params.items())


@pytest.mark.mnist
def test_block_form_train_stage_equals_the_masked_one(tmp_path, mnist_dir):
    from mpdref.runner import run_experiment
    from mpdref.runner.config import resolve_config

    results = {}
    for form in ("masked", "block"):
        config = resolve_config({
            "experiment": {"model": "lenet-300-100", "seed": 4, "dtype": "float64"},
            "data": {"root": str(mnist_dir), "train_limit": 640, "validation_size": 200},
            "stages": [{"type": "mpd", "k_all": 6}, {"type": "train", "epochs": 2, "form": form}]})
        run_experiment(config, tmp_path / form, progress=False)
        results[form] = models.load(tmp_path / form / "model.h5")
    for k, v in results["masked"].params.items():  # norm-wise relative errors: rtol = 0, atol = 1e-10·max|v|
        assert_close(results["block"].params[k], v, rtol=0, atol=max_norm_atol(1e-10, v), name=k)
    np.testing.assert_array_equal(results["block"].masks["fc1.weight"], results["masked"].masks["fc1.weight"])


@pytest.mark.mnist
@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_block_form_run_resumes_bit_identically(tmp_path, mnist_dir, monkeypatch, stop_after):
    from mpdref.runner.config import resolve_config

    config = resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 2},
        "data": {"root": str(mnist_dir), "train_limit": 320, "validation_size": 100},
        "stages": [{"type": "mpd", "k": {"fc1.weight": 16}}, {"type": "train", "epochs": 3, "batch_size": 32,
                                                              "form": "block"}]})
    assert_resume_is_bit_identical(config, tmp_path, monkeypatch, stop_after)


@pytest.mark.mnist
def test_mpd_after_dense_training_fine_tunes_without_rescaling(tmp_path, mnist_dir):
    from mpdref.runner import run_experiment
    from mpdref.runner.config import resolve_config

    config = resolve_config({
        "experiment": {"model": "lenet-300-100", "seed": 1},
        "data": {"root": str(mnist_dir), "train_limit": 1000, "validation_size": 200},
        "stages": [{"type": "train", "epochs": 1}, {"type": "mpd", "k_all": 4}, {"type": "train", "epochs": 1}]})
    out = tmp_path / "run"
    metrics = run_experiment(config, out, progress=False)
    assert metrics["stages"][1]["rescaled"] is False
    dense = models.load(out / "stages" / "01-train.h5")
    masked = models.load(out / "stages" / "02-mpd.h5")
    m = masked.masks["fc1.weight"]
    np.testing.assert_array_equal(masked.params["fc1.weight"][m], dense.params["fc1.weight"][m])  # kept as trained
    assert np.all(masked.params["fc1.weight"][~m] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_block_layer_in_a_numba_pass_equals_the_reference_and_ignores_the_threads(dtype, rng, monkeypatch):
    """Inside numba_pass the fast set's block layer multiplies its stacked blocks on Numba's threads
    (kernels.gemm.batched_matmul, where not small): the reference's products to rounding, and the same
    bits on one thread as on all."""
    import numba

    from mpdref.kernels import fast_ops, gemm, threads
    from mpdref.mpd import BlockDense
    from mpdref.ops import block

    n, k, col_sizes, row_sizes = 300, 11, (72,) * 10 + (64,), (28,) * 10 + (20,)  # MPD LeNet-300-100's fc1
    cols, rows, c_max, r_max = sum(col_sizes), sum(row_sizes), 72, 28
    assert not gemm.is_small(k * n, c_max, r_max)
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread: nothing to compare")
    calls = []
    batched = gemm.batched_matmul
    monkeypatch.setattr(gemm, "batched_matmul", lambda a, b: calls.append(a.shape) or batched(a, b))
    layer = BlockDense("fc", k, rng.permutation(cols), row_sizes, col_sizes)
    x = rng.standard_normal((n, cols)).astype(dtype)
    w = rng.standard_normal((k, r_max, c_max)).astype(dtype)
    for b, (r, c) in enumerate(zip(row_sizes, col_sizes)):
        w[b, r:], w[b, :, c:] = 0, 0  # the padding, zero as BlockNetwork's masks keep it
    bias = rng.standard_normal(rows).astype(dtype)
    dout = rng.standard_normal((n, rows)).astype(dtype)
    gather, valid = layer.padded_gather, layer.valid_rows
    y_ref, cache_ref = block.block_dense_forward(x, w, bias, gather, valid)
    want = [y_ref, *block.block_dense_backward(dout, cache_ref)]

    def one_pass():
        with threads.numba_pass():
            y, cache = fast_ops.block_dense_forward(x, w, bias, gather, valid)
            return [y, *fast_ops.block_dense_backward(dout, cache)]

    results = on_each_thread_count(one_pass)
    assert len(calls) == 3 * len(results)  # y, dw and dx of each pass on Numba's threads
    tol = 2e-6 if dtype == np.float32 else 1e-14
    for name, got, expected in zip(["y", "dx", "dw", "db"], results[0], want):
        assert got.shape == expected.shape and got.dtype == dtype, name
        assert_close(got, expected, rtol=0, atol=max_norm_atol(tol * np.sqrt(n), expected), name=name)
    for other in results[1:]:
        for got, first in zip(other, results[0]):
            np.testing.assert_array_equal(got, first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_layout_kernels_equal_the_reference_ops(dtype, rng):
    from mpdref.kernels import fast_ops
    from mpdref.mpd import BlockDense
    from mpdref.ops import block

    n, cols, rows = 7, 23, 17
    col_sizes, row_sizes = (6, 6, 6, 5), (5, 4, 4, 4)  # unequal blocks: padding in both dimensions
    k, c_max, r_max = 4, 6, 5
    layer = BlockDense("fc", k, rng.permutation(cols), row_sizes, col_sizes)
    x = rng.standard_normal((n, cols)).astype(dtype)
    w = rng.standard_normal((k, r_max, c_max)).astype(dtype)
    bias = rng.standard_normal(rows).astype(dtype)
    ys = rng.standard_normal((k, n, r_max)).astype(dtype)
    dout = rng.standard_normal((n, rows)).astype(dtype)
    dxs = rng.standard_normal((k, n, c_max)).astype(dtype)
    gather, valid = layer.padded_gather, layer.valid_rows
    pairs = [(fast_ops._gather_blocks(x, gather, k), block.gather_blocks(x, gather, k)),
             (fast_ops._rows_from_blocks(ys, valid, bias), block.rows_from_blocks(ys, valid, bias)),
             (fast_ops._blocks_from_rows(dout, valid, k, r_max), block.blocks_from_rows(dout, valid, k, r_max)),
             (fast_ops._scatter_blocks(dxs, gather, cols), block.scatter_blocks(dxs, gather, cols))]
    y_fast, cache_fast = fast_ops.block_dense_forward(x, w, bias, gather, valid)
    y_ref, cache_ref = block.block_dense_forward(x, w, bias, gather, valid)
    pairs += [(y_fast, y_ref)]
    pairs += zip(fast_ops.block_dense_backward(dout, cache_fast), block.block_dense_backward(dout, cache_ref))
    for fast, reference in pairs:  # data movement only, and the same products: the same bits
        assert fast.dtype == reference.dtype == dtype
        np.testing.assert_array_equal(fast, reference)
    # the compiled moves write every element they own: the padding rows too (into a buffer of NaN)
    from mpdref.kernels import cpu
    dys = np.full((k, n, r_max), np.nan, dtype)
    cpu.blocks_from_rows(dout, valid, dys)
    np.testing.assert_array_equal(dys, block.blocks_from_rows(dout, valid, k, r_max))
    # the padding reads zeros and its gradient is dropped: the layer is the product of the blocks alone
    blocks = [w[b, :r, :c] for b, (r, c) in enumerate(zip(row_sizes, col_sizes))]
    expected = block.block_diagonal_matmul(blocks, x[:, layer.gather])
    assert_close(y_ref, expected + bias, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=0, name="y")


def _stacked_layer(rng, dtype, col_sizes, row_sizes):
    """A BlockDense layer's arrays: (layer, w with zero padding, bias)."""
    from mpdref.mpd import BlockDense

    k, cols = len(col_sizes), sum(col_sizes)
    layer = BlockDense("fc", k, rng.permutation(cols), tuple(row_sizes), tuple(col_sizes))
    w = rng.standard_normal((k, max(row_sizes), max(col_sizes))).astype(dtype)
    for b, (r, c) in enumerate(zip(row_sizes, col_sizes)):
        w[b, r:], w[b, :, c:] = 0, 0  # the padding, zero as BlockNetwork's masks keep it
    return layer, w, rng.standard_normal(sum(row_sizes)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("col_sizes, row_sizes", [
    ((72,) * 10 + (64,), (28,) * 10 + (20,)),  # MPD LeNet-300-100's fc1: R = 28, over four tiles of rows
    ((6, 6, 6, 5), (5, 4, 4, 4)),              # R = 5, under one tile of rows; padding in both dimensions
    ((100,), (10,)),                           # one block (an unmasked layer)
    ((3, 9, 1), (1, 13, 2)),                   # a block of one row, a block of one column
])
@pytest.mark.parametrize("tile", ["avx512", "avx2"])
def test_stacked_blocks_in_lanes_equal_the_reference_layer(dtype, col_sizes, row_sizes, tile, rng):
    from mpdref.kernels import blockdiag
    from mpdref.kernels.config import CPU_TILES
    from mpdref.kernels.intrinsics import tile_columns
    from mpdref.ops import block

    layer, w, bias = _stacked_layer(rng, dtype, col_sizes, row_sizes)
    tile = CPU_TILES[tile]  # the host's and the other (LLVM splits vectors wider than the CPU's)
    nr = tile_columns(dtype, tile)
    blocks = [w[b, :r, :c] for b, (r, c) in enumerate(zip(row_sizes, col_sizes))]
    for n in (1, nr - 1, nr, nr + 5, 3 * nr):  # a strip short of lanes, whole strips, a short last strip
        x = rng.standard_normal((n, sum(col_sizes))).astype(dtype)
        expected = block.block_dense_forward(x, w, bias, layer.padded_gather, layer.valid_rows)[0]
        results = on_each_thread_count(lambda: blockdiag.stacked_blocks_in_lanes(
            x, w, bias, layer.padded_gather, layer.valid_rows, tile))
        tol = 1e-5 if dtype == np.float32 else 1e-13
        for got in results:
            assert got.shape == expected.shape and got.dtype == dtype and got.flags.c_contiguous
            assert_close(got, expected, rtol=tol, atol=max_norm_atol(tol, expected), name=f"y, batch {n}")
            # and the layer as the blocks alone say it is
            assert_close(got, block.block_diagonal_matmul(blocks, x[:, layer.gather]) + bias, rtol=tol,
                         atol=max_norm_atol(tol, expected), name=f"y from the blocks, batch {n}")
        for other in results[1:]:  # each output's sum does not depend on the threads
            np.testing.assert_array_equal(other, results[0])


def test_the_fast_block_inference_takes_the_lanes_from_a_tile_of_images_on(rng, monkeypatch):
    from mpdref.kernels import blockdiag, fast_ops
    from mpdref.kernels.intrinsics import tile_columns
    from mpdref.ops import block

    layer, w, bias = _stacked_layer(rng, np.float32, (6, 6, 6, 5), (5, 4, 4, 4))
    calls = []
    lanes = blockdiag.stacked_blocks_in_lanes
    monkeypatch.setattr(blockdiag, "stacked_blocks_in_lanes", lambda *a: calls.append(a[0].shape) or lanes(*a))
    nr = tile_columns(np.float32)
    for n in (nr - 1, nr):
        x = rng.standard_normal((n, 23)).astype(np.float32)
        got = fast_ops.block_dense_inference(x, w, bias, layer.padded_gather, layer.valid_rows)
        want = block.block_dense_inference(x, w, bias, layer.padded_gather, layer.valid_rows)
        if n < nr:  # below a tile of images: the training layer's moves and product, the same bits
            np.testing.assert_array_equal(got, fast_ops.block_dense_forward(x, w, bias, layer.padded_gather,
                                                                           layer.valid_rows)[0])
        assert_close(got, want, rtol=1e-5, atol=max_norm_atol(1e-5, want), name=f"batch {n}")
    assert calls == [(nr, 23)]
    for ops in (block, fast_ops):  # the reference's checks name a wrong shape, in both sets
        with pytest.raises(ValueError, match="block_dense_forward: shapes do not fit"):
            ops.block_dense_inference(np.ones((nr, 23), np.float32), w, bias[:-1], layer.padded_gather,
                                      layer.valid_rows)
        with pytest.raises(TypeError):
            ops.block_dense_inference(np.ones((nr, 23), np.float64), w, bias, layer.padded_gather, layer.valid_rows)
    # the lanes kernel reads through the index tables unchecked: one pointing outside is refused first
    x = np.ones((nr, 23), np.float32)
    for gather, valid, problem in ((layer.padded_gather + 1, layer.valid_rows, "padded_gather"),
                                   (np.where(layer.padded_gather < 0, -2, layer.padded_gather), layer.valid_rows,
                                    "padded_gather"),
                                   (layer.padded_gather, np.append(layer.valid_rows[:-1], w.shape[0] * w.shape[1]), "valid_rows")):
        with pytest.raises(ValueError, match=f"block_dense_inference: {problem} must hold"):
            fast_ops.block_dense_inference(x, w, bias, gather, valid)


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_a_block_network_infers_without_caches_what_its_training_pass_computes(name, rng, monkeypatch):
    """forward (no backward follows) runs each layer's `infer`; the logits of the pass that keeps caches
    for a backward pass agree to rounding, at a batch that takes the lanes."""
    from mpdref.kernels import blockdiag
    from mpdref.mpd import BlockDense, to_block_diagonal

    lanes = []
    kernel = blockdiag.stacked_blocks_in_lanes
    monkeypatch.setattr(blockdiag, "stacked_blocks_in_lanes", lambda *a: lanes.append(a[0].shape) or kernel(*a))
    masked = models.build(name, np.float32, seed=2)
    for layer, k in MPD_KS[name].items():
        shape = masked.params[layer].shape
        masked.set_mask(layer, channel_mask(shape, mpd_mask(shape[0], shape[1], k, rng)))
    block = to_block_diagonal(masked)
    x = rng.standard_normal((70, 1, 28, 28)).astype(np.float32)
    inferred = []
    original = models.Layer.infer
    monkeypatch.setattr(models.Layer, "infer", lambda self, *a: inferred.append(type(self).__name__) or
                        original(self, *a))
    from_masked = masked.forward(x)
    inferred.clear()
    logits = block.forward(x)
    z, caches = block._run(x, False)
    assert_close(logits, block._class_logits(z), rtol=1e-5, atol=max_norm_atol(1e-5, logits), name="logits")
    assert_close(logits, from_masked, rtol=1e-4, atol=max_norm_atol(1e-4, logits), name="masked")
    dense_blocks = sum(isinstance(layer, BlockDense) for layer in block.layers)  # they override infer
    assert dense_blocks >= 1 and len(caches) == len(block.layers) == len(inferred) + dense_blocks
    assert len(lanes) == dense_blocks and all(shape[0] == 70 for shape in lanes)  # every one in the lanes
