"""Slow, obvious implementations: the oracles the library's fast paths are tested against.

Each function's docstring names what it is the oracle of; the library's kernels name their
oracle here in turn. Most are plain loops; a few are compositions of `mpdref.ops` (the NumPy
reference) where the thing checked is the data movement around it.
"""
import gzip
import heapq
import itertools
import math
import zlib

import numpy as np

from mpdref.ops import block_diagonal_matmul

# ----------------------------------------------------------------------------- ops


def conv2d(x, w, b, stride=1, padding=0):
    """The oracle of mpdref.ops.conv2d_forward:
    y[n, f, i, j] = b[f] + Σ_{c,p,q} w[f, c, p, q] · x̃[n, c, i·s + p, j·s + q], one term at a time."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding), dtype=x.dtype)
    xp[:, :, padding : padding + h, padding : padding + wd] = x
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, f, oh, ow), dtype=x.dtype)
    for ni in range(n):
        for fi in range(f):
            for i in range(oh):
                for j in range(ow):
                    acc = b[fi]
                    for ci in range(c):
                        for p in range(kh):
                            for q in range(kw):
                                acc += w[fi, ci, p, q] * xp[ni, ci, i * stride + p, j * stride + q]
                    y[ni, fi, i, j] = acc
    return y


def grouped_conv2d(x, weights, b, stride=1, padding=0):
    """The oracle of mpdref.ops.grouped_conv2d_forward: group g convolves the next c_g input channels
    with weights[g] (f_g, c_g, KH, KW) and the next f_g biases (`conv2d`); the groups' outputs side by side."""
    outs, c0, f0 = [], 0, 0
    for w in weights:
        f_g, c_g = w.shape[:2]
        outs.append(conv2d(x[:, c0 : c0 + c_g], w, b[f0 : f0 + f_g], stride, padding))
        c0, f0 = c0 + c_g, f0 + f_g
    return np.concatenate(outs, axis=1)


def max_pool2d(x, kernel, stride):
    """The oracle of mpdref.ops.max_pool2d_forward: window maxima, and the gradient routing matrix
    (the (h, w) of each window's maximum): the first maximum in row-major order wins. A square
    kernel and stride without dilation: `max_pool2d_dilated`'s loop."""
    return max_pool2d_dilated(x, (kernel, kernel), (stride, stride), (1, 1))


def max_pool2d_backward(dout, winner, x_shape):
    """The oracle of mpdref.ops.max_pool2d_backward: each window's gradient added at its winner
    (from `max_pool2d`), one window at a time."""
    dx = np.zeros(x_shape, dtype=dout.dtype)
    n, c, oh, ow = dout.shape
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    h, w = winner[ni, ci, i, j]
                    dx[ni, ci, h, w] += dout[ni, ci, i, j]
    return dx


def softmax(z):
    """Row-wise softmax, exp(z - max z) / Σ exp(z - max z)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits, labels):
    """The oracle of mpdref.ops.softmax_cross_entropy_forward: -(1/N) Σ_n log softmax(z_n)[y_n]."""
    return -np.mean(np.log(softmax(logits)[np.arange(len(labels)), labels]))


def distillation_loss(logits, labels, teacher_logits, temperature, weight):
    """The oracle of mpdref.ops.distillation_forward: (1 - α)·CE(z, y) + α·T²·(1/N) Σ_n KL(q_n ‖ p_n),
    q = softmax(t / T) (the teacher), p = softmax(z / T) (the student), KL(q ‖ p) = Σ_c q_c log(q_c / p_c)."""
    q, p = softmax(teacher_logits / temperature), softmax(logits / temperature)
    soft = np.mean(np.sum(q * np.log(q / p), axis=1)) * temperature**2
    return (1 - weight) * cross_entropy(logits, labels) + weight * soft


def directional_derivative(f, x, v, eps=1e-6):
    """(f(x + eps v) - f(x - eps v)) / 2 eps, for a scalar f; central differences in float64."""
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


def check_vjp(forward, backward, inputs, rng, n_directions=3, rtol=1e-6):
    """Check a backward pass along random directions (HIPS autograd's check_vjp): the oracle of
    every backward pass in mpdref.ops.

    forward(*inputs) -> out; backward(dout) -> gradients, one per input (None to skip).
    For random dout and direction v_k of each input, the scalar <dout, forward(...)>
    has directional derivative Σ_k <grad_k, v_k>, which central differences give.
    """
    out = forward(*inputs)
    dout = rng.standard_normal(np.shape(out))
    grads = backward(dout)
    for _ in range(n_directions):
        directions = [rng.standard_normal(np.shape(a)) if g is not None else np.zeros(np.shape(a))
                      for a, g in zip(inputs, grads)]

        def scalar(t):
            shifted = [a + t * v for a, v in zip(inputs, directions)]
            return float(np.sum(dout * forward(*shifted)))

        numeric = directional_derivative(scalar, 0.0, 1.0)
        analytic = sum(float(np.sum(g * v)) for g, v in zip(grads, directions) if g is not None)
        scale = max(abs(numeric), abs(analytic), 1e-8)
        assert abs(numeric - analytic) <= rtol * scale + 1e-9, (numeric, analytic)


# ----------------------------------------------------------------------------- training


def sgd_step(w, v, g, mask, lr, momentum, weight_decay):
    """The oracle of mpdref.train.SGD.step (the kernel mpdref.kernels.cpu.sgd_momentum_update) and of
    SGD.reference_step, for one parameter: masked SGD with momentum and weight decay,

        v ← (μ·v + g + λ·w) ⊙ m,   w ← (w − η·v) ⊙ m      (m = 1 without a mask).

    Returns the new (w, v)."""
    m = 1.0 if mask is None else mask
    v = (momentum * v + (g + weight_decay * w)) * m
    return (w - lr * v) * m, v


# ----------------------------------------------------------------------------- MPD


def block_diagonal_mask(rows, cols, row_bounds, col_bounds):
    """The oracle of mpdref.mpd.mpd_mask's mask with its permutations undone
    (mask[np.ix_(row_perm, col_perm)]): True exactly where block b's rows
    [row_bounds[b], row_bounds[b+1]) meet its columns [col_bounds[b], col_bounds[b+1]), one entry at a time."""
    mask = np.zeros((rows, cols), bool)
    for b in range(len(row_bounds) - 1):
        for i in range(row_bounds[b], row_bounds[b + 1]):
            for j in range(col_bounds[b], col_bounds[b + 1]):
                mask[i, j] = True
    return mask


def permuted_block_diagonal_matmul(blocks, x, gather, row_dest, bias=None, relu=False):
    """The oracle of mpdref.kernels.blockdiag.block_diagonal_matmul_permuted (gather = col_perm,
    row_dest = row_perm) and of mpdref.kernels.cuda.block_diagonal_matmul (with its bias and ReLU):

        z = mpdref.ops.block_diagonal_matmul(blocks, x[:, gather]) + bias,   y[:, row_dest[i]] = act(z[:, i])

    act the ReLU with `relu`, else the identity; no bias: 0."""
    z = block_diagonal_matmul(blocks, x[:, gather])
    if bias is not None:
        z = z + bias
    if relu:
        z = np.maximum(z, 0.0)
    y = np.empty_like(z)
    y[:, row_dest] = z
    return y


def tile_product(a, a_start, a_stride, b, b_start, c, c_start, c_stride, depth, accumulate, rows, columns):
    """The oracle of mpdref.kernels.intrinsics.tile_product (rows = TILE_ROWS, columns = tile_columns(dtype)),
    in place: for m < rows, j < columns,

        c[c_start + m·c_stride + j] (+)= Σ_{p < depth} a[a_start + m·a_stride + p] · b[b_start + p·columns + j]

    added to what c holds with `accumulate`, else written over it; nothing else of c is touched.
    Sums in the arrays' precision (pass float64 copies for a reference)."""
    for m in range(rows):
        for j in range(columns):
            total = 0.0
            for p in range(depth):
                total += a[a_start + m * a_stride + p] * b[b_start + p * columns + j]
            slot = c_start + m * c_stride + j
            c[slot] = c[slot] + total if accumulate else total


def gathered_tile_product(a, a_start, a_rows, a_row0, b, b_start, b_steps, c, c_start, c_stride, depth, accumulate,
                          rows, columns):
    """The oracle of mpdref.kernels.intrinsics.gathered_tile_product, in place: for m < rows, j < columns,

        c[c_start + m·c_stride + j] (+)= Σ_{p < depth} a[a_start + a_rows[a_row0 + m] + p] · b[b_start + b_steps[p] + j]

    added to what c holds with `accumulate`, else written over it; nothing else of c is touched."""
    for m in range(rows):
        for j in range(columns):
            total = 0.0
            for p in range(depth):
                total += a[a_start + a_rows[a_row0 + m] + p] * b[b_start + b_steps[p] + j]
            slot = c_start + m * c_stride + j
            c[slot] = c[slot] + total if accumulate else total


def term_tile_product(a, a_start, a_rows, a_row0, b, b_start, terms, t0, c, c_start, c_stride, depth, accumulate,
                      rows, columns):
    """The oracle of mpdref.kernels.intrinsics.term_tile_product, in place: for m < rows, j < columns,

        c[c_start + m·c_stride + j] (+)= Σ_{t < depth} a[a_start + a_rows[a_row0 + m] + terms[2(t0 + t)]]
                                                        · b[b_start + terms[2(t0 + t) + 1] + j]

    added to what c holds with `accumulate`, else written over it; nothing else of c is touched."""
    for m in range(rows):
        for j in range(columns):
            total = 0.0
            for t in range(depth):
                a_offset, b_offset = terms[2 * (t0 + t)], terms[2 * (t0 + t) + 1]
                total += a[a_start + a_rows[a_row0 + m] + a_offset] * b[b_start + b_offset + j]
            slot = c_start + m * c_stride + j
            c[slot] = c[slot] + total if accumulate else total


def mpd_stored_bits(params, masks, ks):
    """The oracle of mpdref.mpd.storage_table(shapes, ks)["stored_bits"], counted from a network's own
    parameters and masks: a masked weight (rows, cols, ...) with ks[name] blocks stores 32 bits per
    kept entry of its mask, ceil(log2 n) bits per index of its two permutations (n = rows, cols) and
    ceil(log2 (n + 1)) bits per inner block boundary (k - 1 of each); every other parameter 32 bits
    per entry."""
    stored = 0
    for name, value in params.items():
        if name in masks:
            rows, cols = value.shape[:2]
            stored += 32 * int(masks[name].sum())  # kept weights, counted from the mask itself
            stored += rows * int(np.ceil(np.log2(rows))) + cols * int(np.ceil(np.log2(cols)))
            stored += (ks[name] - 1) * (int(np.ceil(np.log2(rows + 1))) + int(np.ceil(np.log2(cols + 1))))
        else:
            stored += 32 * value.size
    return stored


# ----------------------------------------------------------------------------- 1-D k-means


def nearest_centroid(values, centroids):
    """The oracle of kmeans_1d's labels (mpdref.quantize._nearest): the index of each value's nearest
    centroid, the lower index on a tie."""
    labels = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        labels[i] = np.argmin(np.abs(v - centroids))  # np.argmin: the first of equal distances
    return labels


def lloyd(values, centroids, iterations):
    """The oracle of mpdref.quantize.kmeans_1d(method="lloyd") (its centroids; the kernel
    mpdref.quantize._lloyd_sorted): Lloyd as usually written, from the given ascending centroids.

    Each iteration assigns every value to its nearest centroid (`nearest_centroid`) and moves each
    centroid to the mean of its values; the clusters left empty take instead the values farthest
    from the old centroid of the cluster they were assigned to, the farthest for the first empty
    cluster (as scikit-learn relocates empty clusters, without moving the donors' centroids). Stops
    after `iterations` iterations or when no centroid moves; returns the centroids, ascending."""
    c = np.array(centroids, float)
    for _ in range(iterations):
        labels = nearest_centroid(values, c)
        new = np.array([values[labels == j].mean() if np.any(labels == j) else c[j] for j in range(len(c))])
        empty = [j for j in range(len(c)) if not np.any(labels == j)]
        far = np.argsort(-np.abs(values - c[labels]), kind="stable")[: len(empty)]
        new[empty] = values[far]
        if np.array_equal(new, c):
            break
        c = np.sort(new)
    return c


def optimal_kmeans_sse(values, k):
    """The oracle of mpdref.quantize.kmeans_1d(method="optimal") (the kernel mpdref.quantize._optimal_dp):
    its SSE, the minimum over all splits of the sorted values into k contiguous non-empty runs, by brute
    force (tiny inputs)."""
    x = np.sort(values)
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), k - 1):
        bounds = (0, *cuts, len(x))
        best = min(best, sum(float(((x[a:b] - x[a:b].mean()) ** 2).sum()) for a, b in zip(bounds, bounds[1:])))
    return best


# ----------------------------------------------------------------------------- Huffman


def huffman_cost(counts):
    """The oracle of the cost of mpdref.huffman.code_lengths(counts) where its length limit does not
    bind: Σ count · length of an unrestricted Huffman code (textbook heap construction)."""
    heap = [c for c in counts if c > 0]
    if len(heap) <= 1:
        return sum(heap)
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def limited_huffman_cost(counts, max_length):
    """The oracle of the cost of mpdref.huffman.code_lengths(counts, max_length): the cheapest complete
    prefix code with lengths <= max_length, by brute force over every assignment of lengths (tiny alphabets)."""
    used = [c for c in counts if c > 0]
    best = None
    for lengths in itertools.product(range(1, max_length + 1), repeat=len(used)):
        if sum(2.0 ** -l for l in lengths) == 1.0:
            cost = sum(c * l for c, l in zip(used, lengths))
            best = cost if best is None else min(best, cost)
    return best


def huffman_encode(symbols, codes, lengths):
    """The oracle of mpdref.huffman.encode (the kernel mpdref.huffman._encode): each symbol's codeword (the
    lengths[s] lowest bits of codes[s]) written one bit at a time, most significant first, then zero bits
    up to a whole byte; returned as uint8."""
    bits = []
    for s in symbols:
        for j in reversed(range(int(lengths[s]))):
            bits.append((int(codes[s]) >> j) & 1)
    bits += [0] * (-len(bits) % 8)
    return np.array([sum(bit << (7 - j) for j, bit in enumerate(bits[i : i + 8])) for i in range(0, len(bits), 8)],
                    np.uint8)


def huffman_decode(data, codes, lengths, count):
    """Canonical Huffman decoding one bit at a time (the oracle of mpdref.huffman.decode, the kernel
    mpdref.huffman._decode): the `count` symbols, or None where the stream is not exactly `count`
    codewords followed by fewer than 8 zero bits of padding."""
    words = {(int(lengths[s]), int(codes[s])): s for s in range(len(lengths)) if lengths[s]}
    bits = [(int(byte) >> (7 - j)) & 1 for byte in data for j in range(8)]
    out, pos = [], 0
    for _ in range(count):
        length, word = 0, 0
        while (length, word) not in words:
            if pos == len(bits) or length == 16:
                return None
            word, length, pos = (word << 1) | bits[pos], length + 1, pos + 1
        out.append(words[(length, word)])
    rest = bits[pos:]
    return out if len(rest) < 8 and not any(rest) else None


# ----------------------------------------------------------------------------- sparse indices


def relative_indices(positions, bits):
    """The oracle of mpdref.sparse_index.relative_indices (the kernel mpdref.sparse_index._gaps):
    (symbols, is_filler), walking every flat position from 0 to the last kept one. A kept position
    stores the number of positions since the previous stored entry, less one (the first counts from
    position -1); a position not kept, 2^bits positions after the previous stored entry, stores a
    filler, the symbol 2^bits - 1, and is a stored entry."""
    kept = {int(p) for p in positions}
    symbols, is_filler = [], []
    previous = -1
    for p in range(max(kept, default=-1) + 1):
        if p in kept:
            symbols.append(p - previous - 1)
            is_filler.append(False)
            previous = p
        elif p - previous == 2**bits:
            symbols.append(2**bits - 1)
            is_filler.append(True)
            previous = p
    return np.array(symbols, np.int64), np.array(is_filler, bool)


# ----------------------------------------------------------------------------- IDX files

#: IDX type code -> the dtype of its items (big-endian in the file)
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype("i2"), 0x0C: np.dtype("i4"),
              0x0D: np.dtype("f4"), 0x0E: np.dtype("f8")}


def idx_decode(data, gzipped=False):
    """The oracle of mpdref.data.read_idx: the array an IDX file's bytes hold, or None where they hold
    none (where read_idx must raise DataError).

    With `gzipped` (read_idx: a file name ending in .gz) the bytes are gunzipped first; None where
    that fails. The file: bytes 0 and 1 zero, byte 2 a type code of IDX_DTYPES, byte 3 the number
    of dimensions d >= 1; d sizes, each 4 bytes big-endian; then exactly prod(sizes) items, each
    big-endian: an integer from its bytes, a float the IEEE 754 number its bits spell. The array is
    in native byte order, as read_idx returns it.
    """
    if gzipped:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES or data[3] == 0:
        return None
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        return None
    shape = tuple(int.from_bytes(data[4 + 4 * d : 8 + 4 * d], "big") for d in range(ndim))
    size = dtype.itemsize
    if len(data) - header != math.prod(shape) * size:
        return None
    items = [data[i : i + size] for i in range(header, len(data), size)]
    if dtype.kind == "f":
        bits = [int.from_bytes(item, "big") for item in items]
        return np.array(bits, np.dtype(f"u{size}")).view(dtype).reshape(shape)
    return np.array([int.from_bytes(item, "big", signed=dtype.kind == "i") for item in items], dtype).reshape(shape)


# ----------------------------------------------------------------------------- DARB (mpdref.darb)


def block_max_mask(w, block_sizes):
    """The oracle of mpdref.darb.block_max_mask, from the definition: a weight is kept iff, in its
    block of its row, no weight before it is as large in magnitude and none after it is larger."""
    rows = np.abs(w.reshape(w.shape[0], -1))
    mask = np.zeros(rows.shape, np.uint8)
    for r in range(rows.shape[0]):
        b = int(block_sizes[r])
        for j in range(rows.shape[1]):
            start = j - j % b
            block = rows[r, start : start + b]
            k = j - start
            if all(block[i] < block[k] for i in range(k)) and all(block[i] <= block[k] for i in range(k + 1, len(block))):
                mask[r, j] = 1
    return mask.reshape(w.shape)


def smallest_regular_block_sizes(mask):
    """The oracle of mpdref.darb.row_block_sizes: per row, the smallest b for which every block of b
    columns holds exactly one kept weight, trying every b; None when some row has none."""
    rows = mask.reshape(mask.shape[0], -1)
    cols = rows.shape[1]
    out = []
    for row in rows:
        fits = [b for b in range(1, cols + 1) if all(row[s : s + b].sum() == 1 for s in range(0, cols, b))]
        if not fits:
            return None
        out.append(fits[0])
    return np.array(out, np.int64)


# ----------------------------------------------------------------------------- ADMM (mpdref.admm)


def sparse_projection(w, count, allowed):
    """The oracle of mpdref.admm.project_sparse: among the allowed positions, repeatedly keep the
    largest magnitude not yet kept (the first position on ties), `count` times."""
    flat, ok = w.ravel(), allowed.ravel()
    kept = np.zeros(w.size, bool)
    for _ in range(count):
        best = None
        for i in range(w.size):
            if ok[i] and not kept[i] and (best is None or abs(flat[i]) > abs(flat[best])):
                best = i
        kept[best] = True
    return np.where(kept, flat, 0).reshape(w.shape)


def quantization_error(values, magnitudes):
    """The oracle of mpdref.admm.best_scale's optimum: the least Σ (v − s·q)² over every assignment of a
    signed level q ∈ ±magnitudes to every value (each with its best s > 0 in closed form,
    s = Σ q·v / Σ q²), trying all of them."""
    values = np.asarray(values, np.float64).ravel()
    signed = sorted({float(m) for m in magnitudes} | {-float(m) for m in magnitudes})
    best = float(np.sum(values**2))  # every level 0 (or s → 0)
    for q in itertools.product(signed, repeat=len(values)):
        q = np.array(q)
        if np.sum(q**2) == 0:
            continue
        s = max(float(q @ values) / float(q @ q), 0.0)
        best = min(best, float(np.sum((values - s * q) ** 2)))
    return best


# ----------------------------------------------------------------------------- ONNX (mpdref.interop)


def onnx_output_size(size, begin, end, kernel, stride, dilation, ceil_mode=False):
    """The number of windows of ONNX's Conv, MaxPool and AveragePool along one axis, as the spec words it:
    (size + begin + end - ((kernel - 1)·dilation + 1)) / stride + 1, rounded down, or up with ceil_mode,
    where a last window that would start past the input and its begin padding is dropped."""
    exact = (size + begin + end - ((kernel - 1) * dilation + 1)) / stride + 1
    if not ceil_mode:
        return math.floor(exact)
    out = math.ceil(exact)
    return out - 1 if (out - 1) * stride >= size + begin else out


def onnx_conv2d(x, w, b, strides, pads, dilations, group):
    """The oracle of mpdref.interop's Conv on 2-D images, one term at a time:

        y[n, f, i, j] = b[f] + Σ_{c, p, q} w[f, c, p, q] · x[n, g·C/G + c, i·SH + p·DH - pads[0],
                                                               j·SW + q·DW - pads[1]]

    g = f // (F/G), G = group; a tap outside x adds nothing. pads: [h_begin, w_begin, h_end, w_end]."""
    n, channels, h, wd = x.shape
    f, c_g, kh, kw = w.shape
    oh = onnx_output_size(h, pads[0], pads[2], kh, strides[0], dilations[0])
    ow = onnx_output_size(wd, pads[1], pads[3], kw, strides[1], dilations[1])
    y = np.zeros((n, f, oh, ow), dtype=x.dtype)
    for ni in range(n):
        for fi in range(f):
            g = fi // (f // group)
            for i in range(oh):
                for j in range(ow):
                    acc = b[fi]
                    for ci in range(c_g):
                        for p in range(kh):
                            for q in range(kw):
                                r = i * strides[0] + p * dilations[0] - pads[0]
                                s = j * strides[1] + q * dilations[1] - pads[1]
                                if 0 <= r < h and 0 <= s < wd:
                                    acc += w[fi, ci, p, q] * x[ni, g * c_g + ci, r, s]
                    y[ni, fi, i, j] = acc
    return y


def onnx_pool2d(x, kind, kernel, strides, pads, dilations, ceil_mode=False, count_include_pad=False):
    """The oracle of mpdref.interop's MaxPool (kind "max": y and the indices) and AveragePool (kind "average":
    y) on 2-D images, one window at a time. Window (i, j) has the taps
    (r, s) = (i·SH + p·DH - pads[0], j·SW + q·DW - pads[1]), p < KH, q < KW. "max": the largest of the taps
    inside x, the first in row-major tap order, and its flat index ((n·C + c)·H + r)·W + s in x; "average":
    the sum of the taps inside x over their count, or with count_include_pad over the count of the taps
    inside x and its pads, -pads[0] <= r < H + pads[2] (likewise s)."""
    n, c, h, wd = x.shape
    oh = onnx_output_size(h, pads[0], pads[2], kernel[0], strides[0], dilations[0], ceil_mode)
    ow = onnx_output_size(wd, pads[1], pads[3], kernel[1], strides[1], dilations[1], ceil_mode)
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    indices = np.zeros((n, c, oh, ow), dtype=np.int64)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, best_index, total, counted = None, -1, 0.0, 0
                    for p in range(kernel[0]):
                        for q in range(kernel[1]):
                            r = i * strides[0] + p * dilations[0] - pads[0]
                            s = j * strides[1] + q * dilations[1] - pads[1]
                            if 0 <= r < h and 0 <= s < wd:
                                v = x[ni, ci, r, s]
                                total += v
                                counted += 1
                                if best is None or v > best:
                                    best, best_index = v, ((ni * c + ci) * h + r) * wd + s
                            elif count_include_pad and -pads[0] <= r < h + pads[2] and -pads[1] <= s < wd + pads[3]:
                                counted += 1
                    y[ni, ci, i, j] = best if kind == "max" else total / counted
                    indices[ni, ci, i, j] = best_index
    return (y, indices) if kind == "max" else y


def max_pool2d_dilated(x, kernel, stride, dilation):
    """The oracle of mpdref.ops.max_pool2d_forward with (rows, columns) kernel, stride and dilation: window maxima
    over the taps x[n, c, i·SH + p·DH, j·SW + q·DW], the first maximum in row-major tap order winning, and where
    it is (h, w) (as `max_pool2d` returns it)."""
    n, c, h, w = x.shape
    oh = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    winner = np.zeros((n, c, oh, ow, 2), dtype=np.int64)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    best = None
                    for p in range(kernel[0]):
                        for q in range(kernel[1]):
                            r, s = i * stride[0] + p * dilation[0], j * stride[1] + q * dilation[1]
                            if best is None or x[ni, ci, r, s] > best:
                                best = x[ni, ci, r, s]
                                winner[ni, ci, i, j] = (r, s)
                    y[ni, ci, i, j] = best
    return y, winner
