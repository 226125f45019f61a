"""The canonical Huffman codec: optimal lengths, round trips, edge cases, corrupt input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from mpdref.huffman import (MAX_LENGTH, CodecError, canonical_codes, check_lengths, code_lengths, decode,
                            encode)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=2, max_size=40))
def test_unlimited_lengths_cost_what_huffman_costs(counts):
    counts = np.array(counts)
    if np.count_nonzero(counts) < 2:
        return
    lengths = code_lengths(counts, MAX_LENGTH)
    check_lengths(lengths)  # a complete prefix code
    cost = int(np.sum(counts * lengths))
    if lengths.max() < MAX_LENGTH:  # the limit did not bind: as good as Huffman's
        assert cost == naive.huffman_cost(counts)
    else:
        assert cost >= naive.huffman_cost(counts)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=2, max_size=6), st.integers(3, 4))
def test_length_limited_code_is_optimal(counts, max_length):
    counts = np.array(counts)
    if len(counts) > 2**max_length:
        return
    lengths = code_lengths(counts, max_length)
    assert lengths.max() <= max_length
    check_lengths(lengths)
    assert int(np.sum(counts * lengths)) == naive.limited_huffman_cost(counts, max_length)


def test_canonical_codes_are_prefix_free_and_ordered():
    lengths = np.array([2, 0, 3, 3, 2, 2])
    codes = canonical_codes(lengths)
    words = {s: format(int(codes[s]), f"0{lengths[s]}b") for s in np.flatnonzero(lengths)}
    assert words == {0: "00", 4: "01", 5: "10", 2: "110", 3: "111"}


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_round_trip(data):
    alphabet = data.draw(st.integers(1, 300))
    n = data.draw(st.integers(0, 2000))
    skew = data.draw(st.floats(0.0, 3.0))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    p = np.exp(-skew * np.arange(alphabet) / max(alphabet, 1) * 10)
    symbols = rng.choice(alphabet, size=n, p=p / p.sum())
    used = max(np.count_nonzero(np.bincount(symbols, minlength=alphabet)), 1)
    max_length = data.draw(st.integers(max(1, int(np.ceil(np.log2(used)))), MAX_LENGTH))
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet), max_length)
    stream = encode(symbols, lengths)
    assert len(stream) == (int(np.sum(lengths[symbols])) + 7) // 8
    np.testing.assert_array_equal(stream, naive.huffman_encode(symbols, canonical_codes(lengths), lengths))
    np.testing.assert_array_equal(decode(stream, lengths, n), symbols)


def test_edge_cases():
    # empty stream
    lengths = code_lengths(np.zeros(5, int))
    assert encode(np.zeros(0, int), lengths).size == 0
    assert decode(np.zeros(0, np.uint8), lengths, 0).size == 0
    # one distinct symbol: one bit each
    lengths = code_lengths(np.bincount([3, 3, 3], minlength=6))
    stream = encode([3] * 11, lengths)
    assert len(stream) == 2 and list(stream) == [0, 0]
    np.testing.assert_array_equal(decode(stream, lengths, 11), [3] * 11)
    # all 256 symbols, equally likely: 8 bits each
    symbols = np.arange(256).repeat(3)
    lengths = code_lengths(np.bincount(symbols), 11)
    assert np.all(lengths == 8)
    np.testing.assert_array_equal(decode(encode(symbols, lengths), lengths, len(symbols)), symbols)
    # lengths at the maximum: a Fibonacci-like distribution forced under MAX_LENGTH
    counts = np.array([int(1.6**i) + 1 for i in range(40)])
    lengths = code_lengths(counts, MAX_LENGTH)
    assert lengths.max() == MAX_LENGTH
    symbols = np.repeat(np.arange(40), 2)
    np.testing.assert_array_equal(decode(encode(symbols, lengths), lengths, len(symbols)), symbols)
    with pytest.raises(ValueError, match="max_length"):
        code_lengths(np.ones(40, int), 5)


def test_corrupt_input_is_named():
    rng = np.random.default_rng(0)
    symbols = rng.integers(0, 5, 1000)
    lengths = code_lengths(np.bincount(symbols))
    stream = encode(symbols, lengths)
    with pytest.raises(CodecError, match="truncated"):
        decode(stream[:-3], lengths, 1000)
    with pytest.raises(CodecError, match="too large|truncated"):
        decode(stream, lengths, 1200)
    with pytest.raises(CodecError, match="trailing|too small"):
        decode(stream, lengths, 900)
    with pytest.raises(CodecError, match="trailing"):
        decode(np.concatenate([stream, [0]]), lengths, 1000)
    with pytest.raises(CodecError, match="over-subscribed"):
        decode(stream, np.array([1, 1, 2]), 10)
    with pytest.raises(CodecError, match="incomplete"):
        decode(stream, np.array([2, 2, 2]), 10)
    with pytest.raises(CodecError, match="no codeword"):
        encode([7], lengths)
    one = code_lengths(np.array([0, 4]))  # one symbol, codeword "0": a 1 bit is no codeword
    with pytest.raises(CodecError, match="no codeword"):
        decode(np.array([0x80], np.uint8), one, 1)
    padded = encode(symbols[:3], lengths)
    if (int(np.sum(lengths[symbols[:3]])) % 8) != 0:
        bad = padded.copy()
        bad[-1] |= 1
        with pytest.raises(CodecError, match="padding"):
            decode(bad, lengths, 3)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_streams_raise_or_decode_to_the_right_length(data):
    # A prefix code cannot detect every change (the file's checksum does); the codec must
    # never crash, hang or return a wrong number of symbols.
    rng = np.random.default_rng(1)
    symbols = rng.choice(12, 300, p=np.arange(12, 0, -1) / 78)
    lengths = code_lengths(np.bincount(symbols, minlength=12), 6)
    stream = encode(symbols, lengths).copy()
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "lengths"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(stream) - 1))
            stream[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        stream = stream[: data.draw(st.integers(0, len(stream) - 1))]
    elif kind == "extend":
        stream = np.concatenate([stream, np.array(data.draw(st.lists(st.integers(0, 255), min_size=1,
                                                                              max_size=5)), np.uint8)])
    else:
        lengths = lengths.copy()
        lengths[data.draw(st.integers(0, 11))] = data.draw(st.integers(0, MAX_LENGTH))
    try:
        out = decode(stream, lengths, 300)
    except CodecError:
        return
    assert out.shape == (300,) and out.min() >= 0 and out.max() < 12


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_decode_equals_a_bit_by_bit_decoder_on_damaged_long_streams(data):
    # Long enough that most of the stream goes through the decoder's bulk loop (no tests between
    # the lookups after a refill): it must decode, and fail, exactly where the oracle does.
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    alphabet = data.draw(st.integers(2, 40))
    n = data.draw(st.integers(50, 1500))
    symbols = rng.choice(alphabet, n, p=np.arange(alphabet, 0, -1) / (alphabet * (alphabet + 1) / 2))
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet), data.draw(st.integers(6, MAX_LENGTH)))
    stream = encode(symbols, lengths).copy()
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] ^= 1 << data.draw(st.integers(0, 7))
    count = n + data.draw(st.sampled_from([0, 0, -1, 1]))
    expected = naive.huffman_decode(stream, canonical_codes(lengths), lengths, count)
    try:
        got = decode(stream, lengths, count)
    except CodecError:
        assert expected is None
        return
    assert expected is not None
    np.testing.assert_array_equal(got, expected)
