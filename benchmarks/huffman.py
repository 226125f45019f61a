"""Huffman coding of codebook indices: mpdref.huffman against dahuffman, in one run.

    python benchmarks/huffman.py [--n 1000000] [--bits 5] [--repeats 5] [--keep-blas-env]

Needs `pip install dahuffman` (benchmark-only). The symbols are what Deep Compression
codes: the 5-bit codebook indices of n bell-shaped (normal) weights, quantized with the
quantize stage's default (k-means, linear init). Printed: bits per symbol against the
entropy, and encode and decode speed in Msym/s (best of `repeats`, after a warm-up) for
mpdref (11-bit length limit, table decoding) and dahuffman. Required: decode >= 100 and
encode >= 50 Msym/s; target decode >= 250.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset in this process, as on a user's machine
(benchmarks/blas_env.py; --keep-blas-env keeps them), and the CPU's vector extensions and
the BLAS kernel in use are printed first.
"""
from __future__ import annotations

import argparse

import blas_env  # first: it settles the environment NumPy's OpenBLAS loads with
import numpy as np
from timing import best_of


def best_rate(fn, n, repeats):
    """(million symbols per second of the fastest call, its result) for n symbols."""
    seconds, result = best_of(fn, repeats)
    return n / seconds / 1e6, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    blas_env.add_argument(parser)
    args = parser.parse_args()
    print(blas_env.describe())

    from dahuffman import HuffmanCodec

    from mpdref.huffman import code_lengths, decode, encode, entropy_bits
    from mpdref.quantize import kmeans_1d

    rng = np.random.default_rng(0)
    weights = rng.standard_normal(args.n)
    _, symbols = kmeans_1d(weights, 2 ** args.bits, init="linear")
    counts = np.bincount(symbols, minlength=2 ** args.bits)
    h = entropy_bits(counts)
    lengths = code_lengths(counts, 11)

    enc_rate, stream = best_rate(lambda: encode(symbols, lengths), args.n, args.repeats)
    dec_rate, decoded = best_rate(lambda: decode(stream, lengths, args.n), args.n, args.repeats)
    assert np.array_equal(decoded, symbols)
    ours_bits = len(stream) * 8 / args.n

    sample = symbols[: min(args.n, 200_000)].tolist()  # dahuffman is pure Python: a fifth of the symbols
    codec = HuffmanCodec.from_frequencies(dict(enumerate(counts.tolist())))
    da_enc, da_stream = best_rate(lambda: codec.encode(sample), len(sample), 1)
    da_dec, da_decoded = best_rate(lambda: codec.decode(da_stream), len(sample), 1)
    assert list(da_decoded) == sample
    da_bits = len(da_stream) * 8 / len(sample)

    print(f"{args.n:,} symbols, {2 ** args.bits} codebook indices of normal weights; entropy {h:.4f} bits/symbol")
    print(f"mpdref    {ours_bits:.4f} bits/symbol ({100 * (ours_bits / h - 1):+.2f}% over the entropy), "
          f"encode {enc_rate:7.1f} Msym/s, decode {dec_rate:7.1f} Msym/s")
    print(f"dahuffman {da_bits:.4f} bits/symbol ({100 * (da_bits / h - 1):+.2f}%), "
          f"encode {da_enc:7.2f} Msym/s, decode {da_dec:7.2f} Msym/s (on {len(sample):,} symbols)")
    print(f"speed-up: encode {enc_rate / da_enc:.0f}x, decode {dec_rate / da_dec:.0f}x")


if __name__ == "__main__":
    main()
