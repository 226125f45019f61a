import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpdref.mpd import block_diagonal_matmul, block_structure, mpd_mask, split_bounds


def test_block_sizes_follow_array_split():
    assert np.diff(split_bounds(784, 10)).tolist() == [79, 79, 79, 79, 78, 78, 78, 78, 78, 78]
    for n, k in [(300, 7), (10, 10), (5, 1)]:
        assert np.diff(split_bounds(n, k)).tolist() == [len(a) for a in np.array_split(np.arange(n), k)]


def test_mask_is_a_permuted_block_diagonal(rng):
    m = mpd_mask(300, 784, 10, rng)
    assert m.mask.shape == (300, 784) and m.mask.dtype == bool and m.k == 10
    permuted = m.mask[np.ix_(m.row_perm, m.col_perm)]
    expected = np.zeros((300, 784), bool)
    for b in range(10):
        expected[m.row_bounds[b] : m.row_bounds[b + 1], m.col_bounds[b] : m.col_bounds[b + 1]] = True
    np.testing.assert_array_equal(permuted, expected)
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
    np.testing.assert_allclose(y, dense[:, m.row_perm], rtol=1e-5 if dtype == np.float32 else 1e-12)
    with pytest.raises(ValueError, match="columns"):
        block_diagonal_matmul(m.blocks(w), x[:, :50])


@pytest.mark.parametrize("rows, cols, k, n", [(37, 53, 5, 4), (8, 8, 8, 1), (64, 33, 3, 17), (5, 40, 1, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_kernel_equals_the_numpy_reference(rows, cols, k, n, dtype, rng):
    from mpdref.kernels.blockdiag import block_diagonal_matmul_permuted, pack_blocks

    m = mpd_mask(rows, cols, k, rng)
    w = (rng.standard_normal((rows, cols)) * m.mask).astype(dtype)
    x = rng.standard_normal((n, cols)).astype(dtype)
    flat, offsets = pack_blocks(m.blocks(w), dtype)
    y = block_diagonal_matmul_permuted(flat, offsets, m.row_bounds, m.col_bounds, m.row_perm, m.col_perm, x)
    reference = np.empty((n, rows), dtype)
    reference[:, m.row_perm] = block_diagonal_matmul(m.blocks(w), x[:, m.col_perm])
    assert y.dtype == dtype
    np.testing.assert_allclose(y, reference, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-5)
