"""The matrix product on Numba's threads (mpdref.kernels.gemm) against NumPy's in float64, and the
fast op set's dense layer, which uses it inside a pass on Numba's threads (kernels.threads.numba_pass)."""
import numba
import numpy as np
import pytest

from compare import assert_close, max_norm_atol
from conftest import on_each_thread_count
from mpdref.kernels import fast_ops, gemm, threads
from mpdref.kernels.intrinsics import tile_columns
from mpdref.ops import dense

# (m, k, n): rows that end inside a tile, columns that end inside a panel, a depth shorter and
# longer than a slice, vectors, and Deep MNIST's fc1 at batch 7
# widths that end in half a panel take the half tile (on the AVX-512 tile: 16, 48 and 784 float32; 8 and 24 float64)
SHAPES = [(1, 1, 1), (5, 3, 31), (6, 64, 32), (7, 300, 33), (13, 1000, 97), (64, 513, 100), (1, 40, 300),
          (300, 2, 1), (7, 3136, 1024), (5, 7, 16), (9, 20, 48), (3, 5, 8), (11, 9, 24), (300, 64, 784)]
TOL = {np.float32: 2e-6, np.float64: 1e-14}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_equals_the_float64_product(shape, dtype, rng):
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    c = gemm.matmul(a, b)
    assert c.shape == (m, n) and c.dtype == dtype
    # each output a sum of k products: its rounding grows with k
    assert_close(c, expected, rtol=0, atol=max_norm_atol(TOL[dtype] * max(1.0, np.sqrt(k)), expected), name="matmul")


def test_matmul_takes_views_and_empty_products(rng):
    a = rng.standard_normal((9, 20))
    b = rng.standard_normal((11, 20))
    np.testing.assert_allclose(gemm.matmul(a[:, ::2], b.T[::2]), a[:, ::2] @ b.T[::2], rtol=1e-13)
    assert gemm.matmul(np.zeros((0, 4)), np.zeros((4, 3))).shape == (0, 3)
    np.testing.assert_array_equal(gemm.matmul(np.zeros((2, 0)), np.zeros((0, 3))), np.zeros((2, 3)))


def test_matmul_names_what_does_not_multiply():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        gemm.matmul(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="float32"):
        gemm.matmul(np.zeros((2, 3), np.float32), np.zeros((3, 5)))
    with pytest.raises(TypeError, match="int64"):
        gemm.matmul(np.zeros((2, 3), np.int64), np.zeros((3, 5), np.int64))


@pytest.mark.parametrize("shape", [(64, 3136, 100), (200, 64, 70), (30, 64, 784)])
def test_matmul_gives_the_same_bits_whatever_the_threads_and_slices(shape, rng, monkeypatch):
    """Each output is one running sum over the depth in order: neither the number of threads, nor how
    rows or panels are shared between them, nor the depth slices change a bit."""
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    results = on_each_thread_count(lambda: gemm.matmul(a, b))
    monkeypatch.setattr(gemm, "SLICE_BYTES", 5 * a.itemsize * tile_columns(a.dtype))  # slices of 5 steps
    results.append(gemm.matmul(a, b))
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 70), (64, 1024), (33, 65), (300, 64), (1030, 301), (17, 9000), (4, 0),
                                   (0, 5)])
def test_transposed_is_the_transpose(shape, dtype, rng):
    """Both ways of cutting the work (bands of whole rows below SMALL_TRANSPOSE elements, blocks above:
    (1030, 301) and (17, 9000), with rows and columns past the last whole unit; empty arrays come back
    as they are), with and without the per-row addend, against NumPy's copy and NumPy's addition, bit
    for bit; an addend of the wrong length or dtype is refused."""
    a = rng.standard_normal(shape).astype(dtype)
    addend = rng.standard_normal(shape[0]).astype(dtype)
    assert (a.size > gemm.SMALL_TRANSPOSE) == (shape in [(1030, 301), (17, 9000)])
    t = gemm.transposed(a)
    assert t.flags.c_contiguous and t.dtype == dtype
    np.testing.assert_array_equal(t, a.T)
    t = gemm.transposed(a, row_addend=addend)
    assert t.flags.c_contiguous
    np.testing.assert_array_equal(t, a.T + addend)
    for wrong in (addend[:-1] if len(addend) else np.zeros(1, dtype), addend.astype(np.float16)):
        with pytest.raises(ValueError, match="row_addend"):
            gemm.transposed(a, row_addend=wrong)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 800, 500), (5, 3136, 1024), (64, 100, 10), (7, 3100, 1000)])
def test_fast_dense_layer_in_a_numba_pass_equals_the_reference(shape, dtype, rng):
    """Inside numba_pass the fast set's dense layer multiplies on Numba's threads (gemm, to rounding; a
    small product stays with BLAS); outside it is the reference's own, bit for bit."""
    n, fan_in, fan_out = shape
    x = rng.standard_normal((n, fan_in)).astype(dtype)
    w = rng.standard_normal((fan_out, fan_in)).astype(dtype)
    b = rng.standard_normal(fan_out).astype(dtype)
    dy = rng.standard_normal((n, fan_out)).astype(dtype)
    y_ref, cache_ref = dense.dense_forward(x, w, b)
    grads_ref = dense.dense_backward(dy, cache_ref)
    with threads.numba_pass():
        assert threads.in_numba_pass()
        y, cache = fast_ops.dense_forward(x, w, b)
        grads = fast_ops.dense_backward(dy, cache)
        _, dw_only, _ = fast_ops.dense_backward(dy, cache, need_dx=False)
    assert not threads.in_numba_pass()
    tol = TOL[dtype] * np.sqrt(max(fan_in, n))
    for name, got, want in [("y", y, y_ref), ("dx", grads[0], grads_ref[0]), ("dw", grads[1], grads_ref[1]),
                            ("db", grads[2], grads_ref[2]), ("dw (no dx)", dw_only, grads_ref[1])]:
        assert got.shape == want.shape and got.dtype == dtype and got.flags.c_contiguous, name
        assert_close(got, want, rtol=0, atol=max_norm_atol(tol, want), name=name)
    y_out, cache_out = fast_ops.dense_forward(x, w, b)
    np.testing.assert_array_equal(y_out, y_ref)
    for got, want in zip(fast_ops.dense_backward(dy, cache_out), grads_ref):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_mid_sized_product_goes_to_the_gemm_where_it_needs_no_padding(dtype, rng, monkeypatch):
    """A layer the size of LeNet-300-100's fc2 at batch 64 (1.9 M multiply-adds, between
    SMALL_UNPADDED_PRODUCT and SMALL_PRODUCT), its fan-in 301: its forward product w xᵀ is 64 wide,
    whole half panels on every CPU, and goes to the gemm; its backward products are 301 wide (odd:
    padded on every CPU) and stay with BLAS; both to rounding of the reference. (fc2's own fan-in,
    300, is a whole number of half panels where a half tile is 4 wide, float64 on AVX2.)"""
    n, fan_in, fan_out = 64, 301, 100
    assert gemm.SMALL_UNPADDED_PRODUCT <= n * fan_in * fan_out < gemm.SMALL_PRODUCT
    assert n % tile_columns(dtype, gemm.HALF_TILE) == 0 and fan_in % tile_columns(dtype, gemm.HALF_TILE) != 0
    assert not gemm.is_small(fan_out, fan_in, n, dtype) and gemm.is_small(n, fan_out, fan_in, dtype)
    assert gemm.is_small(fan_out, fan_in, n)  # without a dtype: the padded rule
    calls = []
    matmul = gemm.matmul
    monkeypatch.setattr(gemm, "matmul", lambda a, b: calls.append((a.shape, b.shape)) or matmul(a, b))
    x = rng.standard_normal((n, fan_in)).astype(dtype)
    w = rng.standard_normal((fan_out, fan_in)).astype(dtype)
    b = rng.standard_normal(fan_out).astype(dtype)
    dy = rng.standard_normal((n, fan_out)).astype(dtype)
    with threads.numba_pass():
        y, cache = fast_ops.dense_forward(x, w, b)
        grads = fast_ops.dense_backward(dy, cache)
    assert calls == [((fan_out, fan_in), (fan_in, n))]
    with threads.blas_on_one_thread():
        y_ref, cache_ref = dense.dense_forward(x, w, b)
        grads_ref = dense.dense_backward(dy, cache_ref)
    assert_close(y, y_ref, rtol=0, atol=max_norm_atol(TOL[dtype] * np.sqrt(fan_in), y_ref), name="y")
    for got, want in zip(grads, grads_ref):
        np.testing.assert_array_equal(got, want)  # BLAS's on one thread, as the reference's there


def test_fast_dense_layer_checks_its_arguments_in_a_numba_pass():
    w, b = np.zeros((1024, 3136), np.float32), np.zeros(1024, np.float32)
    with threads.numba_pass():
        with pytest.raises(ValueError, match="shapes do not fit"):
            fast_ops.dense_forward(np.zeros((64, 3000), np.float32), w, b)
        with pytest.raises(ValueError, match="x must be 2-D"):
            fast_ops.dense_forward(np.zeros((64, 1, 3136), np.float32), w, b)


def test_a_numba_pass_ends_with_its_block_even_on_an_error():
    with pytest.raises(RuntimeError), threads.numba_pass():
        assert threads.in_numba_pass()
        raise RuntimeError("inside")
    assert not threads.in_numba_pass()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(300, 64, 784), (7, 5, 24), (13, 9, 8)])
def test_a_half_last_panel_gives_the_bits_of_the_padded_product(shape, dtype, rng):
    """Where the width ends in half a panel the last panel takes the narrower tile (gemm.HALF_TILE); each
    output is the same running sum as when b is padded to whole panels, so the same bits."""
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    nr = tile_columns(dtype)
    padded = np.zeros((k, -(-n // nr) * nr), dtype=dtype)
    padded[:, :n] = b
    np.testing.assert_array_equal(gemm.matmul(a, b), gemm.matmul(a, padded)[:, :n])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (11, 64, 72, 28), (3, 7, 5, 16), (4, 13, 300, 10), (5, 6, 9, 48),
                                   (2, 0, 3, 4)])
def test_batched_matmul_is_matmul_on_each_product(shape, dtype, rng):
    """B products at once (MPD's stacked blocks): each the bits of `matmul` on that product alone, and
    NumPy's float64 product to rounding."""
    batches, m, k, n = shape
    a = rng.standard_normal((batches, m, k)).astype(dtype)
    b = rng.standard_normal((batches, k, n)).astype(dtype)
    c = gemm.batched_matmul(a, b)
    assert c.shape == (batches, m, n) and c.dtype == dtype and c.flags.c_contiguous
    for i in range(batches):
        np.testing.assert_array_equal(c[i], gemm.matmul(a[i], b[i]))
    expected = a.astype(np.float64) @ b.astype(np.float64)
    assert_close(c, expected, rtol=0, atol=max_norm_atol(TOL[dtype] * max(1.0, np.sqrt(k)), expected),
                 name="batched_matmul")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_matmul_takes_transposed_views(dtype, rng):
    """The block form hands it transposed stacks (w's blocks, dy's): views that are not C-contiguous, of
    a width that needs padding to whole panels."""
    a = rng.standard_normal((5, 9, 13)).astype(dtype)  # used as (5, 13, 9)
    b = rng.standard_normal((5, 28, 9)).astype(dtype)  # used as (5, 9, 28): 28 pads to a panel
    c = gemm.batched_matmul(a.transpose(0, 2, 1), b.transpose(0, 2, 1))
    expected = a.transpose(0, 2, 1).astype(np.float64) @ b.transpose(0, 2, 1).astype(np.float64)
    assert c.shape == (5, 13, 28) and c.flags.c_contiguous
    assert_close(c, expected, rtol=0, atol=max_norm_atol(TOL[dtype] * 3, expected), name="batched_matmul")


def test_batched_matmul_gives_the_same_bits_whatever_the_threads(rng):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread: nothing to compare")
    a = rng.standard_normal((11, 300, 72)).astype(np.float32)
    b = rng.standard_normal((11, 72, 28)).astype(np.float32)
    results = on_each_thread_count(lambda: gemm.batched_matmul(a, b))
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_batched_matmul_names_what_does_not_multiply():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(3, 4, 5\)"):
        gemm.batched_matmul(np.zeros((2, 3, 4)), np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="batched_matmul"):
        gemm.batched_matmul(np.zeros((3, 4)), np.zeros((4, 5)))


def test_numba_pass_holds_blas_to_one_thread_and_nests():
    """A pass holds BLAS to one thread and puts its count back; a pass inside a pass (fit holds one
    around an epoch's steps, each step's passes enter theirs) changes nothing and leaves the outer one
    in force."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():  # NumPy's own (other BLAS libraries loaded later, such as SciPy's, are not limited)
        return [lib["num_threads"] for lib in threadpool_info()
                if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]

    if not blas_threads():
        pytest.skip("NumPy's BLAS is not in a folder of NumPy's (not a wheel's build)")
    with threadpool_limits(limits=2, user_api="blas"):  # so that one thread inside the passes shows
        _passes_hold_blas_to_one_thread(blas_threads)


def _passes_hold_blas_to_one_thread(blas_threads):
    before = blas_threads()
    assert before and all(n == 2 for n in before)
    with threads.numba_pass():
        assert blas_threads() == [1] * len(before) and threads.in_numba_pass()
        with threads.numba_pass():
            assert blas_threads() == [1] * len(before) and threads.in_numba_pass()
        assert blas_threads() == [1] * len(before) and threads.in_numba_pass()
    assert blas_threads() == before and not threads.in_numba_pass()
