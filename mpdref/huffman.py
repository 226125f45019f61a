"""Canonical, length-limited Huffman codes over bit-packed uint8 streams (Deep Compression, stage 3).

A code is stored as its code lengths alone (one per symbol of the alphabet, 0 for an
unused symbol); the codes themselves follow canonically: symbols sorted by (length,
symbol) take consecutive code values, each shifted left when the length grows. The
lengths come from package-merge (Larmore and Hirschberg), which gives the optimal
prefix code whose longest codeword is at most `max_length` bits, so that a decoder
needs one table of 2^max_length entries and resolves a codeword per lookup.

Bits are packed most significant first; the last byte is padded with zero bits.

Errors: lengths that are not a complete prefix code (over-subscribed or incomplete;
a single used symbol of length 1 is the one allowed exception), a stream that ends
early, a bit pattern that is no codeword, a stream longer than its symbols need, or
non-zero padding raise CodecError. A bit flip that turns one valid stream into another
valid stream of the same length cannot be detected by any prefix code: the file that
holds the stream carries a checksum for that.
"""
from __future__ import annotations

import numba
import numpy as np

from mpdref.kernels.config import SERIAL

#: the longest codeword mpdref writes or reads (a decoding table of 2^15 entries)
MAX_LENGTH = 15


class CodecError(ValueError):
    """A Huffman code or bitstream is malformed (the message says how)."""


# ----------------------------------------------------------------------------- code construction


def code_lengths(counts, max_length: int = 11) -> np.ndarray:
    """Optimal code lengths (uint8, one per symbol) for these symbol counts, none above max_length.

    Package-merge: the lists of level 1 (deepest) to max_length hold the used symbols by
    weight, each level also holding the pairwise packages of the level below; the 2n - 2
    lightest items of the top list are selected, and a symbol's length is the number of
    selected items, at all levels, that contain it.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or np.any(counts < 0):
        raise ValueError("counts must be a 1-D array of non-negative integers")
    if not 1 <= max_length <= MAX_LENGTH:
        raise ValueError(f"max_length must be in [1, {MAX_LENGTH}], not {max_length}")
    lengths = np.zeros(len(counts), np.uint8)
    used = np.flatnonzero(counts)
    n = len(used)
    if n == 0:
        return lengths
    if n == 1:
        lengths[used[0]] = 1
        return lengths
    if n > 2**max_length:
        raise ValueError(f"{n} symbols need codes longer than max_length = {max_length}")
    order = used[np.argsort(counts[used], kind="stable")]  # leaves by weight, ties by symbol
    leaf_w = counts[order].astype(np.int64)
    leaf_ids = np.arange(n)
    w, kind = leaf_w, leaf_ids  # kind: the leaf's index in `order`, or -1 for a package
    levels = [kind]
    for _ in range(max_length - 1):
        pairs = len(w) // 2
        packages = w[0 : 2 * pairs : 2] + w[1 : 2 * pairs : 2]
        merged_w = np.concatenate([leaf_w, packages])
        merged_kind = np.concatenate([leaf_ids, np.full(pairs, -1)])
        by_weight = np.argsort(merged_w, kind="stable")  # on ties, leaves (listed first) come first
        w, kind = merged_w[by_weight], merged_kind[by_weight]
        levels.append(kind)
    per_leaf = np.zeros(n, np.int64)
    take = 2 * n - 2
    for kind in reversed(levels):  # the packages selected at a level select twice as many items below
        chosen = kind[:take]
        per_leaf[chosen[chosen >= 0]] += 1
        take = 2 * int(np.count_nonzero(chosen < 0))
    lengths[order] = per_leaf
    return lengths


def check_lengths(lengths) -> np.ndarray:
    """lengths as uint8 after checking that they form a complete prefix code (else CodecError)."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise CodecError("code lengths must be a 1-D integer array")
    if np.any(lengths < 0) or np.any(lengths > MAX_LENGTH):
        raise CodecError(f"code lengths must be in [0, {MAX_LENGTH}]")
    used = lengths[lengths > 0].astype(np.int64)
    if len(used) == 0:
        return lengths.astype(np.uint8)
    kraft = int(np.sum(np.left_shift(1, MAX_LENGTH - used)))  # Σ 2^-l, in units of 2^-MAX_LENGTH
    if len(used) == 1 and used[0] == 1:
        return lengths.astype(np.uint8)  # one symbol: the codeword "0"
    if kraft > 2**MAX_LENGTH:
        raise CodecError("the code lengths are over-subscribed (Kraft sum above 1): no prefix code has them")
    if kraft < 2**MAX_LENGTH:
        raise CodecError("the code lengths are incomplete (Kraft sum below 1): some bit patterns decode to nothing")
    return lengths.astype(np.uint8)


def canonical_codes(lengths) -> np.ndarray:
    """The canonical code value of each symbol (uint32; read its lowest `length` bits)."""
    lengths = check_lengths(lengths)
    codes = np.zeros(len(lengths), np.uint32)
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]  # by length, then by symbol
    code, prev = 0, 0
    for s in order:
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


# ----------------------------------------------------------------------------- encode and decode

_OK, _BAD_SYMBOL, _TRUNCATED, _NO_CODEWORD, _TRAILING, _PADDING = range(6)
_MESSAGES = {
    _BAD_SYMBOL: "a symbol has no codeword (outside the alphabet, or of length 0)",
    _TRUNCATED: "the stream ends before all symbols are decoded (truncated, or the symbol count is too large)",
    _NO_CODEWORD: "a bit pattern in the stream is no codeword",
    _TRAILING: "the stream is longer than its symbols need (trailing bytes, or the symbol count is too small)",
    _PADDING: "the padding bits after the last codeword are not zero",
}


@numba.njit(**SERIAL)
def _encode(symbols, codes, lengths, out):
    """Write the symbols' codewords into out: (status, bytes written); the bytes are those of
    `huffman_encode` in tests/naive.py."""
    alphabet = len(lengths)
    acc = 0  # the pending bits, right-aligned; never more than 7 + MAX_LENGTH of them
    pending = 0
    pos = 0
    for i in range(len(symbols)):
        s = symbols[i]
        if s < 0 or s >= alphabet or lengths[s] == 0:
            return _BAD_SYMBOL, pos
        n = np.int64(lengths[s])
        acc = ((acc << n) | np.int64(codes[s])) & 0xFFFFFFFF
        pending += n
        while pending >= 8:
            pending -= 8
            out[pos] = (acc >> pending) & 0xFF
            pos += 1
    if pending:
        out[pos] = (acc << (8 - pending)) & 0xFF
        pos += 1
    return _OK, pos


@numba.njit(**SERIAL)
def _decode(data, table_symbol, table_length, pair_symbol, pair_length, table_bits, count, out):
    """Decode `count` symbols. A lookup of the next table_bits bits gives the codeword that starts
    there, and, where a second whole codeword fits in the same bits, that one too (pair_*). Decodes,
    and fails, as `huffman_decode` of tests/naive.py does."""
    n_bytes = len(data)
    mask = (1 << table_bits) - 1
    buf = 0  # the next `have` bits of the stream, right-aligned
    have = 0
    pos = 0
    i = 0
    # The bulk, away from both ends: after a refill to more than 48 bits, each of `lookups`
    # lookups finds whole codewords (one codeword, or a pair, is at most table_bits long), so
    # they need neither a refill nor the truncation test in between. The body is the end loop's
    # less those tests, written out twice on purpose: as one shared Numba function (even inlined)
    # the decoder ran at 74 Msym/s instead of 270-290 (benchmarks/huffman.py).
    lookups = 49 // table_bits
    while i + 2 * lookups <= count and pos + 7 <= n_bytes:
        while have <= 48:
            buf = (buf << 8) | np.int64(data[pos])
            pos += 1
            have += 8
        for _ in range(lookups):
            peek = (buf >> (have - table_bits)) & mask
            n2 = np.int64(pair_length[peek])
            if n2 != 0:
                out[i] = table_symbol[peek]
                out[i + 1] = pair_symbol[peek]
                i += 2
                have -= n2
            else:
                n = np.int64(table_length[peek])
                if n == 0:
                    return _NO_CODEWORD, i
                out[i] = table_symbol[peek]
                i += 1
                have -= n
        buf &= (1 << have) - 1
    # The ends, one lookup at a time with every test.
    while i < count:
        while have <= 48 and pos < n_bytes:
            buf = (buf << 8) | np.int64(data[pos])
            pos += 1
            have += 8
        if have >= table_bits:
            peek = (buf >> (have - table_bits)) & mask
        else:
            peek = (buf << (table_bits - have)) & mask
        n2 = np.int64(pair_length[peek])
        if n2 != 0 and n2 <= have and i + 1 < count:
            out[i] = table_symbol[peek]
            out[i + 1] = pair_symbol[peek]
            i += 2
            have -= n2
        else:
            n = np.int64(table_length[peek])
            if n == 0:
                return _NO_CODEWORD, i
            if n > have:
                return _TRUNCATED, i
            out[i] = table_symbol[peek]
            i += 1
            have -= n
        buf &= (1 << have) - 1
    if have >= 8 or pos < n_bytes:
        return _TRAILING, count
    if buf != 0:
        return _PADDING, count
    return _OK, count


def encode(symbols, lengths) -> np.ndarray:
    """The symbols' codewords, bit-packed into uint8 (most significant bit first, zero-padded)."""
    lengths = check_lengths(lengths)
    symbols = np.ascontiguousarray(symbols, dtype=np.int64).ravel()
    codes = canonical_codes(lengths)
    in_range = (symbols >= 0) & (symbols < len(lengths))
    if not np.all(in_range) or np.any(lengths[symbols[in_range]] == 0):
        raise CodecError(_MESSAGES[_BAD_SYMBOL])
    total_bits = int(np.sum(lengths[symbols], dtype=np.int64))
    out = np.zeros((total_bits + 7) // 8, np.uint8)
    status, written = _encode(symbols, codes, lengths, out)
    if status != _OK:
        raise CodecError(_MESSAGES[status])
    assert written == len(out)
    return out


def decoding_table(lengths) -> tuple[np.ndarray, np.ndarray, int]:
    """(symbol, length) per `bits`-bit prefix, and `bits` (the longest codeword)."""
    lengths = check_lengths(lengths)
    codes = canonical_codes(lengths)
    bits = max(int(lengths.max(initial=0)), 1)
    table_symbol = np.zeros(1 << bits, np.int32)
    table_length = np.zeros(1 << bits, np.uint8)  # 0: no codeword starts with this prefix
    for s in np.flatnonzero(lengths):
        n = int(lengths[s])
        first = int(codes[s]) << (bits - n)
        table_symbol[first : first + (1 << (bits - n))] = s
        table_length[first : first + (1 << (bits - n))] = n
    return table_symbol, table_length, bits


def pair_table(table_symbol, table_length, bits) -> tuple[np.ndarray, np.ndarray]:
    """Per `bits`-bit prefix: the second codeword that fits wholly after the first, and the two
    lengths together (0 where none fits)."""
    prefix = np.arange(1 << bits)
    first = table_length.astype(np.int64)
    rest = (prefix << first) & ((1 << bits) - 1)  # the bits after the first codeword, left-aligned
    second = table_length[rest].astype(np.int64)
    fits = (first > 0) & (second > 0) & (first + second <= bits)
    return (np.where(fits, table_symbol[rest], 0).astype(np.int32),
            np.where(fits, first + second, 0).astype(np.uint8))


def decode(data, lengths, count: int) -> np.ndarray:
    """The `count` symbols (int32) coded in `data`; CodecError if `data` is not exactly such a stream."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(data, np.uint8)
    data = np.ascontiguousarray(data, dtype=np.uint8).ravel()
    if count < 0:
        raise CodecError(f"the symbol count must be >= 0, not {count}")
    table_symbol, table_length, bits = decoding_table(lengths)
    if count == 0:
        if len(data):
            raise CodecError(_MESSAGES[_TRAILING])
        return np.zeros(0, np.int32)
    if not np.any(table_length):
        raise CodecError("the code has no symbols, but the stream should hold some")
    if len(data) * 8 < count:  # every codeword has at least one bit
        raise CodecError(_MESSAGES[_TRUNCATED])
    out = np.empty(count, np.int32)
    pair_symbol, pair_length = pair_table(table_symbol, table_length, bits)
    status, _ = _decode(data, table_symbol, table_length, pair_symbol, pair_length, bits, count, out)
    if status != _OK:
        raise CodecError(_MESSAGES[status])
    return out


def entropy_bits(counts) -> float:
    """The Shannon entropy of the symbol distribution, in bits per symbol."""
    p = np.asarray(counts, np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())
