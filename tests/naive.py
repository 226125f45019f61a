"""Slow, obvious implementations: the oracles the library's fast paths are tested against."""
import numpy as np


def conv2d(x, w, b, stride=1, padding=0):
    """y[n, f, i, j] = b[f] + Σ_{c,p,q} w[f, c, p, q] · x̃[n, c, i·s + p, j·s + q], one term at a time."""
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


def max_pool2d(x, kernel, stride):
    """Window maxima, and the gradient routing matrix: the first maximum in row-major order wins."""
    n, c, h, w = x.shape
    oh = (h - kernel) // stride + 1
    ow = (w - kernel) // stride + 1
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    winner = np.zeros((n, c, oh, ow, 2), dtype=np.int64)
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    best = None
                    for p in range(kernel):
                        for q in range(kernel):
                            v = x[ni, ci, i * stride + p, j * stride + q]
                            if best is None or v > best:
                                best = v
                                winner[ni, ci, i, j] = (i * stride + p, j * stride + q)
                    y[ni, ci, i, j] = best
    return y, winner


def max_pool2d_backward(dout, winner, x_shape):
    dx = np.zeros(x_shape, dtype=dout.dtype)
    n, c, oh, ow = dout.shape
    for ni in range(n):
        for ci in range(c):
            for i in range(oh):
                for j in range(ow):
                    h, w = winner[ni, ci, i, j]
                    dx[ni, ci, h, w] += dout[ni, ci, i, j]
    return dx


def directional_derivative(f, x, v, eps=1e-6):
    """(f(x + eps v) - f(x - eps v)) / 2 eps, for a scalar f; central differences in float64."""
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


def check_vjp(forward, backward, inputs, rng, n_directions=3, rtol=1e-6):
    """Check a backward pass along random directions (HIPS autograd's check_vjp).

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


def huffman_decode(data, codes, lengths, count):
    """Canonical Huffman decoding one bit at a time (the oracle of mpdref.huffman.decode):
    the `count` symbols, or None where the stream is not exactly `count` codewords followed by
    fewer than 8 zero bits of padding."""
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
