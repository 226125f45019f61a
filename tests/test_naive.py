"""The test tooling itself: the comparison of tests/compare.py, and oracles of tests/naive.py checked by hand."""
import gzip

import numpy as np
import pytest

import naive
from compare import assert_close, max_norm_atol


def test_assert_close_fails_when_it_should_and_says_where():
    expected = np.arange(1.0, 13.0).reshape(3, 4)
    actual = expected.copy()
    actual[2, 3] += 0.6  # the greatest absolute difference (relative: 0.05)
    actual[0, 0] += 0.3  # the greatest relative difference
    actual[1, 1] += 0.05  # within rtol·|e| = 0.06
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, rtol=1e-2, atol=0, name="w")
    report = str(info.value)
    assert report.startswith("w: not close (rtol=0.01, atol=0): actual (3, 4) float64, expected (3, 4) float64")
    assert "2 of 12 elements fail" in report
    assert "greatest absolute difference 0.6 at index (2, 3)" in report
    assert "greatest relative difference 0.3 at index (0, 0)" in report
    assert_close(actual, expected, rtol=0.31, atol=0, name="w")  # above the greatest relative difference
    per_element = np.full((3, 4), 0.5)
    per_element[0, 0] = 0.0
    with pytest.raises(AssertionError, match="1 of 12 elements fail"):
        assert_close(actual, expected, rtol=1e-2, atol=per_element)
    # Norm-wise: max|a - e| <= tol·max|e| = tol·12.
    assert_close(actual, expected, rtol=0, atol=max_norm_atol(0.05, expected))
    with pytest.raises(AssertionError, match="1 of 12 elements fail"):
        assert_close(actual, expected, rtol=0, atol=max_norm_atol(0.04, expected))
    # Exact (rtol = atol = 0): one ulp is a failure; NaN equals NaN only if asked; an infinity only itself.
    with pytest.raises(AssertionError, match="1 of 1 elements fail"):
        assert_close(np.nextafter(1.0, 2.0), 1.0, rtol=0, atol=0)
    assert_close([0.0, np.inf, -np.inf], [-0.0, np.inf, -np.inf], rtol=0, atol=0)
    with pytest.raises(AssertionError, match="1 of 2 elements fail"):
        assert_close([1.0, np.nan], [1.0, np.nan], rtol=0, atol=0)
    assert_close([1.0, np.nan], [1.0, np.nan], rtol=0, atol=0, equal_nan=True)
    with pytest.raises(AssertionError, match="1 of 1 elements fail"):
        assert_close([1.0], [np.inf], rtol=1.0, atol=1.0)
    with pytest.raises(AssertionError, match=r"shapes differ: actual \(3,\) float64, expected \(1, 3\) float64"):
        assert_close(np.zeros(3), np.zeros((1, 3)), rtol=1.0, atol=1.0)


def _idx(type_code, sizes, payload):
    return bytes([0, 0, type_code, len(sizes)]) + b"".join(n.to_bytes(4, "big") for n in sizes) + payload


def test_idx_decode_reads_every_type_code_and_nothing_else():
    cases = [  # (type code, sizes, payload, what it holds), the payloads written out by hand
        (0x08, (2, 2), bytes([0, 1, 254, 255]), np.array([[0, 1], [254, 255]], np.uint8)),
        (0x09, (3,), bytes([0x7F, 0x80, 0xFF]), np.array([127, -128, -1], np.int8)),
        (0x0B, (2,), bytes([0xFF, 0xFE, 0x01, 0x00]), np.array([-2, 256], np.int16)),
        (0x0C, (1, 1, 2), bytes([0x80, 0, 0, 0, 0, 0, 1, 2]), np.array([[[-2**31, 258]]], np.int32)),
        (0x0D, (2,), bytes([0x3F, 0x80, 0, 0, 0xC0, 0x20, 0, 0]), np.array([1.0, -2.5], np.float32)),
        (0x0E, (1,), bytes([0x40, 0x09, 0x21, 0xFB, 0x54, 0x44, 0x2D, 0x18]), np.array([np.pi])),
        (0x08, (0, 3), b"", np.zeros((0, 3), np.uint8)),
    ]
    for type_code, sizes, payload, holds in cases:
        for got in (naive.idx_decode(_idx(type_code, sizes, payload)),
                    naive.idx_decode(gzip.compress(_idx(type_code, sizes, payload)), gzipped=True)):
            assert got.dtype == holds.dtype and got.shape == holds.shape and np.array_equal(got, holds), type_code
    good = _idx(0x0B, (2,), bytes(4))
    for no_idx in [b"", good[:3], b"\x01" + good[1:], good[:2] + b"\x0a" + good[3:], _idx(0x08, (), b"\x00"),
                   good[:6], good[:-1], good + b"\x00", gzip.compress(good)]:
        assert naive.idx_decode(no_idx) is None, no_idx
    assert naive.idx_decode(good, gzipped=True) is None  # not gzip data
