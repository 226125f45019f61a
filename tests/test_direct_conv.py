"""The direct convolution (mpdref.kernels.direct_conv) and its gathered register tile, against the
loop oracles of tests/naive.py; and what the fast op set does with it."""
import numba
import numpy as np
import pytest

import naive
from compare import assert_close, max_norm_atol
from conftest import on_each_thread_count
from mpdref.kernels import direct_conv, fast_ops
from mpdref.kernels.config import CPU_TILES
from mpdref.kernels.intrinsics import make_gathered_tile_product, make_term_tile_product, tile_columns

# (n, c, h, w, f, k, padding): channels and filters that are not multiples of the tile's rows, images
# that are not square, grids whose pixels end inside a tile, every padding a kernel allows
SHAPES = [
    (1, 1, 7, 7, 1, 3, 0),
    (2, 3, 9, 6, 4, 3, 1),
    (3, 2, 8, 11, 7, 5, 2),
    (1, 4, 5, 5, 13, 5, 0),
    (2, 5, 10, 7, 3, 4, 3),
    (2, 1, 28, 28, 20, 5, 0),
    (1, 6, 6, 6, 9, 1, 0),
]
TOL = {np.float32: 2e-6, np.float64: 1e-14}


def _check_tile(kernel, oracle, rows, nr, dtype, rng, name):
    """kernel(c, c_start, c_stride, accumulate) against oracle(c as float64, the same, rows, nr): the
    tile's rows × nr values of c, nr + 4 apart from index 2, written over (and then added to); nothing
    else of c written."""
    c = rng.standard_normal(rows * (nr + 4) + 2).astype(dtype)
    in_tile = np.zeros(c.shape, bool)
    in_tile[2:2 + rows * (nr + 4)].reshape(rows, nr + 4)[:, :nr] = True
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for accumulate in (False, True):
        expected = c.astype(np.float64)
        oracle(expected, 2, nr + 4, accumulate, rows, nr)
        before = c.copy()
        kernel(c, 2, nr + 4, accumulate)
        assert_close(c[in_tile], expected[in_tile], name=name, **tol)
        np.testing.assert_array_equal(c[~in_tile], before[~in_tile])  # nothing outside the tile is written


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("depth", [0, 1, 7, 60])
@pytest.mark.parametrize("shape", sorted(CPU_TILES))
def test_gathered_tile_product_equals_its_loops(dtype, depth, shape, rng):
    tile = CPU_TILES[shape]
    gathered = make_gathered_tile_product(tile)

    @numba.njit
    def run(a, a_start, a_rows, a_row0, b, b_start, b_steps, c, c_start, c_stride, depth, accumulate):
        gathered(a, a_start, a_rows, a_row0, b, b_start, b_steps, c, c_start, c_stride, depth, accumulate)

    rows, nr = tile.rows, tile_columns(dtype, tile)
    a = rng.standard_normal(500).astype(dtype)
    a_rows = rng.permutation(400)[: rows + 3].astype(np.int64)  # rows anywhere, in any order
    b = rng.standard_normal(depth * 3 + nr + 50).astype(dtype)
    b_steps = rng.integers(0, depth * 3 + 40, depth).astype(np.int64)  # steps anywhere, repeats allowed
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    _check_tile(lambda c, *where: run(a, 7, a_rows, 2, b, 5, b_steps, c, where[0], where[1], depth, where[2]),
                lambda c, *where: naive.gathered_tile_product(a64, 7, a_rows, 2, b64, 5, b_steps, c, where[0],
                                                              where[1], depth, *where[2:]),
                rows, nr, dtype, rng, "the gathered tile")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("depth", [0, 1, 7, 60])
@pytest.mark.parametrize("shape", sorted(CPU_TILES))
def test_term_tile_product_equals_its_loops(dtype, depth, shape, rng):
    tile = CPU_TILES[shape]
    term_tile = make_term_tile_product(tile)

    @numba.njit
    def run(a, a_start, a_rows, a_row0, b, b_start, terms, t0, c, c_start, c_stride, depth, accumulate):
        term_tile(a, a_start, a_rows, a_row0, b, b_start, terms, t0, c, c_start, c_stride, depth, accumulate)

    rows, nr = tile.rows, tile_columns(dtype, tile)
    a = rng.standard_normal(500).astype(dtype)
    a_rows = rng.permutation(400)[: rows + 3].astype(np.int64)  # rows anywhere, in any order
    b = rng.standard_normal(depth * 3 + nr + 80).astype(dtype)
    # pairs anywhere, in any order, repeats allowed; b_start below zero, brought back by every b offset
    terms = np.stack([rng.integers(0, 60, depth + 4), rng.integers(30, depth * 3 + 70, depth + 4)], axis=1)
    terms = terms.ravel().astype(np.int64)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    _check_tile(lambda c, *where: run(a, 9, a_rows, 2, b, -25, terms, 3, c, where[0], where[1], depth, where[2]),
                lambda c, *where: naive.term_tile_product(a64, 9, a_rows, 2, b64, -25, terms, 3, c, where[0],
                                                          where[1], depth, *where[2:]),
                rows, nr, dtype, rng, "the term tile")


def _case(shape, dtype, rng):
    n, c, h, w, f, k, padding = shape
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return x, wt, b, padding


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_direct_convolution_equals_the_loops(shape, dtype, rng):
    x, w, b, padding = _case(shape, dtype, rng)
    y = direct_conv.conv2d_direct(x, w, b, padding)
    expected = naive.conv2d(*(v.astype(np.float64) for v in (x, w, b)), 1, padding)
    assert y.dtype == dtype and y.shape == expected.shape
    assert_close(y, expected, rtol=0, atol=max_norm_atol(TOL[dtype], expected), name="y")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_direct_input_gradient_is_the_adjoint_of_the_convolution(shape, dtype, rng):
    """<conv(x), d> = <x, dx(d)> for the convolution without bias, and dx equals the loops' transposed
    convolution (each input gathering every output it fed)."""
    x, w, b, padding = _case(shape, dtype, rng)
    y = naive.conv2d(x.astype(np.float64), w.astype(np.float64), np.zeros(len(b)), 1, padding)
    d = rng.standard_normal(y.shape).astype(dtype)
    dx = direct_conv.conv2d_input_gradient(d, w, padding)
    assert dx.dtype == dtype and dx.shape == x.shape
    expected = np.zeros(x.shape)
    n, c, h, wd = x.shape
    k = w.shape[2]
    for ni in range(n):
        for ci in range(c):
            for hi in range(h):
                for wi in range(wd):
                    total = 0.0
                    for fi in range(w.shape[0]):
                        for p in range(k):
                            for q in range(k):
                                i, j = hi + padding - p, wi + padding - q
                                if 0 <= i < y.shape[2] and 0 <= j < y.shape[3]:
                                    total += float(w[fi, ci, p, q]) * float(d[ni, fi, i, j])
                    expected[ni, ci, hi, wi] = total
    assert_close(dx, expected, rtol=0, atol=max_norm_atol(TOL[dtype], expected), name="dx")
    assert_close(np.sum(y * d), np.sum(x.astype(np.float64) * expected), rtol=1e-12, atol=1e-9,
                 name="<conv(x), d> against <x, dx(d)>")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_direct_weight_gradient_equals_the_loops(shape, dtype, rng):
    """dw[f, c, p, q] = Σ_{n,i,j} dy[n, f, i, j] · x̃[n, c, i + p, j + q], one term at a time."""
    x, w, b, padding = _case(shape, dtype, rng)
    n, c, h, wd = x.shape
    k = w.shape[2]
    xp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding))
    xp[:, :, padding:padding + h, padding:padding + wd] = x
    oh, ow = h + 2 * padding - k + 1, wd + 2 * padding - k + 1
    d = rng.standard_normal((n, w.shape[0], oh, ow)).astype(dtype)
    dw, db = direct_conv.conv2d_parameter_gradients(d, direct_conv.Padded(x, k, k, padding), w.shape)
    assert dw.dtype == db.dtype == dtype and dw.shape == w.shape and db.shape == (w.shape[0],)
    expected_db = [sum(float(v) for v in d[:, fi].ravel()) for fi in range(w.shape[0])]
    assert_close(db, np.array(expected_db), rtol=0, atol=max_norm_atol(TOL[dtype] * 5, np.array(expected_db)),
                 name="db")
    expected = np.zeros(w.shape)
    for fi in range(w.shape[0]):
        for ci in range(c):
            for p in range(k):
                for q in range(k):
                    expected[fi, ci, p, q] = sum(float(d[ni, fi, i, j]) * xp[ni, ci, i + p, j + q]
                                                 for ni in range(n) for i in range(oh) for j in range(ow))
    assert_close(dw, expected, rtol=0, atol=max_norm_atol(TOL[dtype] * 5, expected), name="dw")


def test_an_image_gives_the_same_bits_in_any_batch(rng):
    """One running sum per output: an image's result does not depend on its batch (or the threads)."""
    x, w, b, padding = _case((9, 5, 12, 12, 11, 5, 2), np.float32, rng)
    whole = direct_conv.conv2d_direct(x, w, b, padding)
    for i in (0, 4, 8):
        np.testing.assert_array_equal(direct_conv.conv2d_direct(x[i:i + 1], w, b, padding), whole[i:i + 1])
    np.testing.assert_array_equal(direct_conv.conv2d_direct(x[3:7], w, b, padding), whole[3:7])


# (c, h, w, f, k, padding) for batches in the vector lanes, forward and input gradient (C·KH·KW and
# F·KH·KW >= LANE_MIN_DEPTH): channels and filters off the tile's rows, images that are not square,
# paddings from 0 to k − 1 (at k − 1 most terms of a border pixel meet the padding; the input
# gradient pads by k − 1 − padding)
LANE_SHAPES = [
    (5, 10, 7, 5, 5, 3),
    (4, 9, 6, 7, 5, 2),
    (12, 6, 6, 13, 3, 1),
    (4, 8, 11, 8, 5, 0),
    (4, 8, 11, 8, 5, 4),
    (7, 5, 9, 7, 4, 2),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", LANE_SHAPES)
def test_images_in_lanes_give_the_padded_grids_bits(shape, dtype, rng):
    """A batch in the vector lanes sums each output's terms inside the image in the padded grid's
    order, so forward and input gradient equal the padded grid's bit for bit, and the loops to
    rounding; batches of one block of lanes and of two, the second part empty."""
    c, h, wd, f, k, padding = shape
    nr = tile_columns(dtype)
    for n in (nr, nr + 3):
        x, w, b, padding = _case((n, c, h, wd, f, k, padding), dtype, rng)
        assert direct_conv.in_lanes(x.shape, w.shape, dtype)
        y = direct_conv.conv2d_direct(x, w, b, padding)
        grid = direct_conv.conv2d_direct(x, w, b, padding, direct_conv.Padded(x, k, k, padding))
        np.testing.assert_array_equal(y.view(f"u{y.itemsize}"), grid.view(f"u{y.itemsize}"))
        expected = naive.conv2d(*(v.astype(np.float64) for v in (x, w, b)), 1, padding)
        assert_close(y, expected, rtol=0, atol=max_norm_atol(TOL[dtype], expected), name="y")
        d = rng.standard_normal(y.shape).astype(dtype)
        dx = direct_conv.conv2d_input_gradient(d, w, padding)
        flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        assert direct_conv.in_lanes(d.shape, flipped.shape, dtype)
        dx_grid = direct_conv.conv2d_direct(d, flipped, np.zeros(c, dtype), k - 1 - padding,
                                            direct_conv.Padded(d, k, k, k - 1 - padding))
        np.testing.assert_array_equal(dx.view(f"u{dx.itemsize}"), dx_grid.view(f"u{dx.itemsize}"))
        whole = y
        for i in (0, n - 1):  # an image alone (on its padded grid) gives the bits it gives in the lanes
            np.testing.assert_array_equal(direct_conv.conv2d_direct(x[i:i + 1], w, b, padding), whole[i:i + 1])


def test_a_shallow_sum_or_a_small_batch_stays_on_the_padded_grid():
    nr = tile_columns(np.float32)
    assert direct_conv.in_lanes((nr, 4, 9, 9), (8, 4, 5, 5), np.float32)
    assert not direct_conv.in_lanes((nr - 1, 4, 9, 9), (8, 4, 5, 5), np.float32)
    assert not direct_conv.in_lanes((nr, 1, 9, 9), (8, 1, 5, 5), np.float32)  # 25 terms


def test_the_weight_gradient_sums_the_images_in_order_whatever_the_threads(rng):
    x, w, b, padding = _case((7, 5, 12, 12, 11, 5, 2), np.float32, rng)
    d = rng.standard_normal((7, 11, 12, 12)).astype(np.float32)
    padded = direct_conv.Padded(x, 5, 5, padding)
    results = on_each_thread_count(lambda: direct_conv.conv2d_parameter_gradients(d, padded, w.shape))
    for other in results[1:]:
        np.testing.assert_array_equal(other[0], results[0][0])  # dw
        np.testing.assert_array_equal(other[1], results[0][1])  # db


@pytest.mark.parametrize("stride, k, padding, direct", [(1, 5, 2, True), (1, 3, 0, True), (2, 3, 1, False),
                                                        (1, 3, 3, False), (1, 1, 1, False)])
def test_the_fast_set_takes_the_direct_path_where_it_applies(stride, k, padding, direct, rng):
    """Stride 1, a square kernel, padding below the kernel's size: direct, forward and backward; else
    the reference's patch matrix. Either way the gradients are the reference's to rounding."""
    from mpdref import ops

    x = rng.standard_normal((2, 3, 9, 9))
    w = rng.standard_normal((4, 3, k, k))
    b = rng.standard_normal(4)
    assert direct_conv.supported(w.shape, stride, padding) is direct
    y, cache = fast_ops.conv2d_forward(x, w, b, stride, padding)
    assert isinstance(cache, fast_ops._DirectCache) is direct
    y_ref, cache_ref = ops.conv2d_forward(x, w, b, stride, padding)
    assert_close(y, y_ref, rtol=0, atol=max_norm_atol(1e-14, y_ref), name="y")
    d = rng.standard_normal(y.shape)
    for got, want, name in zip(fast_ops.conv2d_backward(d, cache), ops.conv2d_backward(d, cache_ref),
                               ("dx", "dw", "db")):
        assert_close(got, want, rtol=0, atol=max_norm_atol(1e-14, want), name=name)
    assert fast_ops.conv2d_backward(d, cache, need_dx=False)[0] is None


def test_the_fast_set_gives_the_same_bits_with_the_images_in_lanes_or_not(rng):
    """A batch in lanes keeps its input and pads it for the weight gradient in the backward pass: its
    output and gradients through the fast set equal the padded grid's, bit for bit."""
    nr = tile_columns(np.float32)
    x = rng.standard_normal((nr + 5, 6, 10, 10)).astype(np.float32)
    w = rng.standard_normal((7, 6, 5, 5)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    y, cache = fast_ops.conv2d_forward(x, w, b, 1, 2)
    assert cache[0] is x
    d = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = fast_ops.conv2d_backward(d, cache)
    padded = direct_conv.Padded(x, 5, 5, 2)
    np.testing.assert_array_equal(y, direct_conv.conv2d_direct(x, w, b, 2, padded))
    dw_grid, db_grid = direct_conv.conv2d_parameter_gradients(d, padded, w.shape)
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    dx_grid = direct_conv.conv2d_direct(d, flipped, np.zeros(6, np.float32), 2, direct_conv.Padded(d, 5, 5, 2))
    for got, want in ((dx, dx_grid), (dw, dw_grid), (db, db_grid)):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
