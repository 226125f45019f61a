import warnings

import numpy as np
import pytest

import naive
from compare import assert_close, max_norm_atol
from conftest import needs_torch
from mpdref import ops as reference_ops
from mpdref.kernels import cpu, fast_ops
from mpdref.ops import conv
from mpdref.ops.conv import conv2d_output_size

# (N, C, H, W, F, K, stride, padding): batch 1, non-square, stride 2 with padding, C = 1, F = 1
CONV_SHAPES = [
    (1, 1, 7, 7, 1, 3, 1, 0),
    (2, 3, 9, 6, 4, 3, 2, 1),
    (3, 2, 8, 11, 5, 5, 1, 2),
    (1, 4, 5, 5, 2, 5, 1, 0),
    (2, 1, 10, 7, 3, 4, 3, 2),
]
POOL_SHAPES = [(1, 1, 4, 4, 2, 2), (2, 3, 7, 9, 2, 2), (1, 2, 7, 6, 3, 2), (2, 1, 5, 8, 3, 3), (1, 1, 6, 6, 1, 1)]


@pytest.fixture(params=["reference", "fast"])
def ops(request):
    """Every test that takes `ops` runs on both op sets: the NumPy reference and the compiled one."""
    return reference_ops if request.param == "reference" else fast_ops


# ----------------------------------------------------------------------------- against the oracles


@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_forward_matches_loops(ops, shape, dtype, rng):
    n, c, h, w, f, k, s, p = shape
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    y, _ = ops.conv2d_forward(x, wt, b, s, p)
    expected = naive.conv2d(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), s, p)
    assert y.dtype == dtype and y.shape == expected.shape
    # A norm-wise relative error, max|y - expected| <= tol·max|expected|: rtol = 0, atol = tol·max|expected|.
    assert_close(y, expected, rtol=0, atol=max_norm_atol(1e-5 if dtype == np.float32 else 1e-13, expected), name="y")


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_im2col_and_col2im_kernels_equal_numpy_references(shape, rng):
    n, c, h, w, f, k, s, p = shape
    x = rng.standard_normal((n, c, h, w))
    oh, ow = conv2d_output_size(h, k, s, p), conv2d_output_size(w, k, s, p)
    cols = cpu.im2col(x, k, k, s, p, oh, ow)
    np.testing.assert_array_equal(cols, conv.im2col(x, k, k, s, p))
    dcols = rng.standard_normal(cols.shape)
    dx = cpu.col2im(dcols, h, w, s, p)
    np.testing.assert_array_equal(dx, conv.col2im(dcols, h, w, s, p))  # the same sums in the same order
    # col2im is the adjoint of im2col: <im2col(x), d> = <x, col2im(d)>
    assert_close(np.sum(cols * dcols), np.sum(x * dx), rtol=1e-12, atol=1e-8,  # np.isclose's default atol
                 name="<im2col(x), d> against <x, col2im(d)>")


@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_matches_loops_including_ties(ops, shape, dtype, rng):
    n, c, h, w, k, s = shape
    # Few distinct values, many zeros: ties everywhere, as after a ReLU.
    x = np.maximum(rng.integers(-2, 3, size=(n, c, h, w)), 0).astype(dtype)
    y, cache = ops.max_pool2d_forward(x, k, s)
    y_ref, winner = naive.max_pool2d(x, k, s)
    np.testing.assert_array_equal(y, y_ref)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = ops.max_pool2d_backward(dout, cache)
    assert dx.dtype == dtype
    assert_close(dx, naive.max_pool2d_backward(dout, winner, x.shape), rtol=1e-6, atol=0, name="dx")
    y_np, (argmax_np, _) = reference_ops.max_pool2d_forward(x, k, s)
    np.testing.assert_array_equal(y_np, y)
    np.testing.assert_array_equal(argmax_np, cache[0])


def test_max_pool_gradient_goes_to_first_maximum(ops):
    x = np.zeros((1, 1, 2, 2))
    y, cache = ops.max_pool2d_forward(x, 2)
    dx = ops.max_pool2d_backward(np.ones_like(y), cache)
    np.testing.assert_array_equal(dx[0, 0], [[1.0, 0.0], [0.0, 0.0]])
    x = np.array([[[[0.0, 3.0], [3.0, 1.0]]]])
    dx = ops.max_pool2d_backward(np.ones((1, 1, 1, 1)), ops.max_pool2d_forward(x, 2)[1])
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0], [0.0, 0.0]])


# ----------------------------------------------------------------------------- finite differences (float64)


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_conv2d_gradients_by_finite_differences(ops, shape, rng):
    n, c, h, w, f, k, s, p = shape
    inputs = [rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, k, k)), rng.standard_normal(f)]
    cache = {}

    def forward(x, wt, b):
        y, cache["c"] = ops.conv2d_forward(x, wt, b, s, p)
        return y

    def backward(dout):
        forward(*inputs)
        return ops.conv2d_backward(dout, cache["c"])

    naive.check_vjp(forward, backward, inputs, rng)


def test_dense_gradients_by_finite_differences(ops, rng):
    inputs = [rng.standard_normal((5, 7)), rng.standard_normal((3, 7)), rng.standard_normal(3)]
    naive.check_vjp(lambda x, w, b: ops.dense_forward(x, w, b)[0],
                    lambda d: ops.dense_backward(d, ops.dense_forward(*inputs)[1]), inputs, rng)


@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_max_pool_gradient_by_finite_differences(ops, shape, rng):
    n, c, h, w, k, s = shape
    x = rng.permutation(n * c * h * w).reshape(n, c, h, w).astype(np.float64)  # distinct: differentiable
    naive.check_vjp(lambda x: ops.max_pool2d_forward(x, k, s)[0],
                    lambda d: [ops.max_pool2d_backward(d, ops.max_pool2d_forward(x, k, s)[1])], [x], rng)


def test_relu_dropout_flatten_gradients_by_finite_differences(ops, rng):
    x = rng.standard_normal((4, 3, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    naive.check_vjp(lambda x: ops.relu_forward(x)[0], lambda d: [ops.relu_backward(d, ops.relu_forward(x)[1])],
                    [x], rng)
    mask = ops.dropout_mask(x.shape, 0.3, np.random.default_rng(0), np.float64)
    naive.check_vjp(lambda x: x * mask, lambda d: [ops.dropout_backward(d, mask)], [x], rng)
    naive.check_vjp(lambda x: ops.flatten_forward(x)[0],
                    lambda d: [ops.flatten_backward(d, ops.flatten_forward(x)[1])], [x], rng)


def test_softmax_cross_entropy_gradient_by_finite_differences(ops, rng):
    logits = rng.standard_normal((6, 10)) * 3
    labels = rng.integers(0, 10, 6)
    naive.check_vjp(lambda z: ops.softmax_cross_entropy_forward(z, labels)[0],
                    lambda d: [ops.softmax_cross_entropy_backward(d, ops.softmax_cross_entropy_forward(logits, labels)[1])],
                    [logits], rng)


def test_softmax_cross_entropy_value_and_stability(ops):
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = np.array([2, 0])
    expected = naive.cross_entropy(logits, labels)
    loss, _ = ops.softmax_cross_entropy_forward(logits, labels)
    assert abs(loss - expected) < 1e-15
    # Shifting every logit by 1e4 changes nothing (log-sum-exp), in float32 too.
    loss32, cache = ops.softmax_cross_entropy_forward((logits + 1e4).astype(np.float32), labels)
    assert loss32.dtype == np.float32 and abs(float(loss32) - expected) < 1e-3
    assert np.all(np.isfinite(ops.softmax_cross_entropy_backward(1.0, cache)))
    with pytest.raises(ValueError, match="labels"):
        ops.softmax_cross_entropy_forward(logits, np.array([0, 3]))


@pytest.mark.parametrize("temperature, weight", [(1.0, 0.5), (4.0, 0.9), (0.5, 1.0)])
def test_distillation_gradient_by_finite_differences(ops, temperature, weight, rng):
    logits = rng.standard_normal((6, 10)) * 3
    teacher = rng.standard_normal((6, 10)) * 3
    labels = rng.integers(0, 10, 6)
    args = (labels, teacher, temperature, weight)
    naive.check_vjp(lambda z: ops.distillation_forward(z, *args)[0],
                    lambda d: [ops.distillation_backward(d, ops.distillation_forward(logits, *args)[1])],
                    [logits], rng)


def test_distillation_value_by_hand(ops):
    z = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]])
    t = np.array([[3.0, 0.0, 1.0], [0.0, 0.0, 4.0]])
    y = np.array([1, 2])
    temperature, weight = 2.0, 0.75
    loss, _ = ops.distillation_forward(z, y, t, temperature, weight)
    assert abs(loss - naive.distillation_loss(z, y, t, temperature, weight)) < 1e-14
    # A student that copies its teacher pays only the hard term.
    same, _ = ops.distillation_forward(t, y, t, temperature, weight)
    assert abs(same - 0.25 * naive.cross_entropy(t, y)) < 1e-14


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_distillation_at_weight_zero_is_cross_entropy_to_the_bit(ops, dtype, rng):
    z = (rng.standard_normal((7, 10)) * 4).astype(dtype)
    t = (rng.standard_normal((7, 10)) * 4).astype(dtype)
    y = rng.integers(0, 10, 7)
    loss, grad = ops.training_loss(z, y, (t, 3.0, 0.0))
    ce, ce_grad = ops.training_loss(z, y)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert loss == ce
    np.testing.assert_array_equal(grad, ce_grad)


def _loss_rounding_scales(z, y, teacher):
    """(loss, gradient entries): the size of the terms each is a sum of, so that a tolerance of a few
    eps times them bounds the rounding of either order of summation (a difference of nearly equal
    terms, like the distillation's p − q or its KL, is not small beside its own rounding). A
    probability taken as exp(log p), as the reference takes it, carries |log p| times log p's
    relative rounding."""
    def softmax_scale(logits):  # log p, and p (1 + |log p|)
        log_p = reference_ops.log_softmax(logits.astype(np.float64))
        return log_p, np.exp(log_p) * (1 + np.abs(log_p))

    n = len(y)
    log_p, p_scale = softmax_scale(z)
    loss_scale = np.abs(log_p[np.arange(n), y]).mean() + 1.0
    grad_scale = (p_scale + 1) / n
    if teacher is not None:
        t, temperature, weight = teacher
        log_p, p_scale = softmax_scale(z / temperature)
        log_q, q_scale = softmax_scale(t / temperature)
        loss_scale += weight * temperature ** 2 * (np.exp(log_q) * (np.abs(log_q) + np.abs(log_p))).sum(axis=1).mean()
        grad_scale = (1 - weight) * grad_scale + weight * temperature * (p_scale + q_scale) / n
    return loss_scale, grad_scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, classes", [(1, 2), (7, 10), (64, 10), (33, 3)])
@pytest.mark.parametrize("teacher", [None, (4.0, 0.9), (0.5, 1.0), (2.0, 0.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_compiled_training_loss_equals_the_reference_to_rounding(n, classes, dtype, teacher, seed):
    # fast_ops.training_loss sums each row in order with libm's exp and log: to rounding, not the bit
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, classes)) * 6).astype(dtype)
    z[0, 0] += 80  # a dominant logit: the log-sum-exp's shift matters
    y = rng.integers(0, classes, n)
    if teacher is not None:
        teacher = ((rng.standard_normal((n, classes)) * 5).astype(dtype), *teacher)
    loss, grad = fast_ops.training_loss(z, y, teacher)
    expected_loss, expected_grad = reference_ops.training_loss(z, y, teacher)
    eps = np.finfo(dtype).eps
    loss_scale, grad_scale = _loss_rounding_scales(z, y, teacher)
    assert loss.dtype == grad.dtype == dtype and grad.shape == (n, classes)
    assert abs(float(loss) - float(expected_loss)) <= 16 * eps * loss_scale
    assert_close(grad, expected_grad, rtol=0, atol=16 * eps * grad_scale)
    # each row of the gradient sums to zero (two differences of distributions, each entry at most 1 / n)
    assert np.abs(grad.sum(axis=1, dtype=np.float64)).max() <= 4 * classes * eps / n


def test_the_compiled_training_loss_takes_what_the_reference_takes(rng):
    z = (rng.standard_normal((9, 6)) * 3).astype(np.float32)
    t = (rng.standard_normal((9, 6)) * 3).astype(np.float32)
    y = rng.integers(0, 6, 9)
    teacher = (t, 3.0, 0.7)
    expected = reference_ops.training_loss(z, y, teacher)
    wide = np.zeros((9, 12), np.float32)
    wide[:, ::2] = z
    for logits, labels, soft in [(np.asfortranarray(z), y, teacher),                      # column-major
                                 (wide[:, ::2], y, teacher),                              # strided
                                 (z, y, (np.asfortranarray(t), 3.0, 0.7)),
                                 (z, y.astype(np.int32), teacher), (z, y.astype(np.uint8), teacher),
                                 (z, y.astype(">i8"), teacher), (z, list(y), teacher)]:
        loss, grad = fast_ops.training_loss(logits, labels, soft)
        assert abs(loss - expected[0]) <= 1e-5 * abs(expected[0])
        assert_close(grad, expected[1], rtol=0, atol=1e-6 * float(np.abs(expected[1]).max()))


def test_the_compiled_training_loss_refuses_and_propagates_as_the_reference(rng):
    z = rng.standard_normal((4, 5))
    for labels in ([0, 1, 5, 2], [0, -1, 1, 2]):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
            fast_ops.training_loss(z, np.array(labels))
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
            fast_ops.training_loss(z, np.array(labels), (z, 2.0, 0.5))
    with pytest.raises(ValueError, match="labels must be integers of shape"):
        fast_ops.training_loss(z, np.array([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="teacher_logits must have the logits' shape"):
        fast_ops.training_loss(z, np.arange(4), (z[:3], 2.0, 0.5))
    with pytest.raises(ValueError, match="temperature > 0"):
        fast_ops.training_loss(z, np.arange(4), (z, 0.0, 0.5))
    with pytest.raises(TypeError, match="float32 or all float64"):
        fast_ops.training_loss(z.astype(np.float32), np.arange(4), (z, 2.0, 0.5))
    # NaN and infinities among the logits or the teacher's: NaN where the reference has NaN, finite and
    # to rounding where it is finite (a -inf logit, first in its row or not, is a probability of 0)
    y = np.arange(4)
    for where in ("logits", "teacher"):
        for bad in (np.nan, np.inf, -np.inf):
            for column in (0, 3):
                z_bad, t_bad = z.copy(), z[::-1].copy()
                (z_bad if where == "logits" else t_bad)[2, column] = bad
                for teacher in ((None, (t_bad, 2.0, 0.5)) if where == "logits" else ((t_bad, 2.0, 0.5),)):
                    with np.errstate(invalid="ignore", divide="ignore"):
                        expected_loss, expected_grad = reference_ops.training_loss(z_bad, y, teacher)
                    loss, grad = fast_ops.training_loss(z_bad, y, teacher)
                    what = f"{bad} in the {where}' column {column}, teacher {teacher is not None}"
                    assert np.isnan(loss) == np.isnan(expected_loss), what
                    if np.isinf(expected_loss):
                        assert loss == expected_loss, what
                    elif not np.isnan(expected_loss):
                        assert abs(loss - expected_loss) <= 1e-12 * abs(expected_loss), what
                    assert np.array_equal(np.isnan(grad), np.isnan(expected_grad)), what
                    finite = np.isfinite(expected_grad)
                    assert_close(grad[finite], expected_grad[finite], rtol=0, atol=1e-14, name=what)
    # an empty batch: what the reference does (it raises)
    with pytest.raises(Exception) as reference_error, np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference_ops.training_loss(z[:0], np.arange(0))
    with pytest.raises(reference_error.type), np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast_ops.training_loss(z[:0], np.arange(0))


def test_distillation_refuses_what_it_cannot_use(ops):
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="teacher_logits must have the logits' shape"):
        ops.distillation_forward(z, np.array([0, 1]), np.zeros((2, 4)), 2.0, 0.5)
    with pytest.raises(ValueError, match="temperature > 0 and weight in"):
        ops.distillation_forward(z, np.array([0, 1]), z, 0.0, 0.5)
    with pytest.raises(ValueError, match="temperature > 0 and weight in"):
        ops.distillation_forward(z, np.array([0, 1]), z, 1.0, 1.5)
    with pytest.raises(TypeError, match="float32 or all float64"):
        ops.distillation_forward(z, np.array([0, 1]), z.astype(np.float32), 1.0, 0.5)


# ----------------------------------------------------------------------------- dtypes and shapes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_op_keeps_the_dtype(ops, dtype, rng):
    x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = np.zeros(4, dtype)
    y, c = ops.conv2d_forward(x, w, b, 1, 1)
    grads = ops.conv2d_backward(y, c)
    p, pc = ops.max_pool2d_forward(y)
    r, rc = ops.relu_forward(p)
    d, dc = ops.dropout_forward(r, 0.5, rng)
    f, fc = ops.flatten_forward(d)
    z, zc = ops.dense_forward(f, rng.standard_normal((10, f.shape[1])).astype(dtype), np.zeros(10, dtype))
    loss, lc = ops.softmax_cross_entropy_forward(z, np.arange(2))
    arrays = [y, *grads, p, ops.max_pool2d_backward(p, pc), r, ops.relu_backward(r, rc), d,
              ops.dropout_backward(d, dc), f, z, *ops.dense_backward(z, zc),
              ops.softmax_cross_entropy_backward(1.0, lc)]
    assert all(a.dtype == dtype for a in arrays)
    assert loss.dtype == dtype


def test_mixed_dtypes_are_refused(ops, rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="float32 or all float64"):
        ops.dense_forward(x, rng.standard_normal((4, 3)), np.zeros(4, np.float32))
    with pytest.raises(TypeError):
        ops.relu_forward(np.arange(3))
    with pytest.raises(ValueError, match="shapes do not fit"):
        ops.conv2d_forward(np.zeros((1, 2, 5, 5)), np.zeros((3, 1, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="do not fit"):
        ops.max_pool2d_forward(np.zeros((1, 1, 1, 1)), 2)


def test_dropout_mask_is_drawn_from_the_given_generator(ops, rng):
    x = np.ones((1000, 100))
    y1, m1 = ops.dropout_forward(x, 0.5, np.random.default_rng(3))
    y2, m2 = ops.dropout_forward(x, 0.5, np.random.default_rng(3))
    np.testing.assert_array_equal(m1, m2)
    assert set(np.unique(m1)) == {0.0, 2.0}
    assert abs(y1.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation
    with pytest.raises(ValueError):
        ops.dropout_mask((2,), 1.0, rng, np.float32)


# ----------------------------------------------------------------------------- torch float64


@needs_torch
@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_conv_pool_dense_loss_agree_with_torch(ops, shape, rng):
    import torch
    import torch.nn.functional as F

    n, c, h, w, f, k, s, p = shape
    x, wt, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, k, k)), rng.standard_normal(f)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
    ty = F.conv2d(tx, tw, tb, stride=s, padding=p)
    y, cache = ops.conv2d_forward(x, wt, b, s, p)
    dout = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dout))
    dx, dw, db = ops.conv2d_backward(dout, cache)
    # Norm-wise relative errors, max|ours - theirs| <= 1e-10·max|theirs|: rtol = 0, atol = 1e-10·max|theirs|.
    for what, ours, theirs in [("y", y, ty), ("dx", dx, tx.grad), ("dw", dw, tw.grad), ("db", db, tb.grad)]:
        theirs = theirs.detach().numpy()
        assert_close(ours, theirs, rtol=0, atol=max_norm_atol(1e-10, theirs), name=what)

    if min(y.shape[2:]) >= 2:
        tyy = ty.detach().requires_grad_(True)
        tp = F.max_pool2d(tyy, 2)
        pooled, pc = ops.max_pool2d_forward(y, 2)
        dp = rng.standard_normal(pooled.shape)
        tp.backward(torch.tensor(dp))
        assert_close(pooled, tp.detach().numpy(), rtol=0, atol=max_norm_atol(1e-10, tp.detach().numpy()),
                     name="pooled")
        assert_close(ops.max_pool2d_backward(dp, pc), tyy.grad.numpy(), rtol=0,
                     atol=max_norm_atol(1e-10, tyy.grad.numpy()), name="pool dx")

    feats = y.reshape(n, -1)
    wd, bd = rng.standard_normal((10, feats.shape[1])), rng.standard_normal(10)
    tf, twd, tbd = (torch.tensor(a, requires_grad=True) for a in (feats, wd, bd))
    labels = rng.integers(0, 10, n)
    tz = F.relu(F.linear(tf, twd, tbd))
    tloss = F.cross_entropy(tz, torch.tensor(labels))
    tloss.backward()
    z, zc = ops.dense_forward(feats, wd, bd)
    r, rc = ops.relu_forward(z)
    loss, lc = ops.softmax_cross_entropy_forward(r, labels)
    dz = ops.relu_backward(ops.softmax_cross_entropy_backward(1.0, lc), rc)
    dfeats, dwd, dbd = ops.dense_backward(dz, zc)
    assert abs(loss - tloss.item()) <= 1e-10 * abs(tloss.item())
    for what, ours, theirs in [("dense dx", dfeats, tf.grad), ("dense dw", dwd, twd.grad), ("dense db", dbd, tbd.grad)]:
        assert_close(ours, theirs.numpy(), rtol=0, atol=max_norm_atol(1e-10, theirs.numpy()), name=what)


@needs_torch
def test_distillation_agrees_with_torch(ops, rng):
    import torch
    import torch.nn.functional as F

    z, t = rng.standard_normal((8, 10)) * 3, rng.standard_normal((8, 10)) * 3
    labels = rng.integers(0, 10, 8)
    temperature, weight = 3.0, 0.8
    tz = torch.tensor(z, requires_grad=True)
    # The usual PyTorch spelling: KL divergence on log-probabilities, batchmean, times T².
    soft = F.kl_div(F.log_softmax(tz / temperature, dim=1), F.log_softmax(torch.tensor(t) / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature**2
    tloss = (1 - weight) * F.cross_entropy(tz, torch.tensor(labels)) + weight * soft
    tloss.backward()
    loss, cache = ops.distillation_forward(z, labels, t, temperature, weight)
    assert abs(loss - tloss.item()) <= 1e-12 * abs(tloss.item())
    # A norm-wise relative error: rtol = 0, atol = 1e-12·max|theirs|.
    assert_close(ops.distillation_backward(1.0, cache), tz.grad.numpy(), rtol=0,
                 atol=max_norm_atol(1e-12, tz.grad.numpy()), name="dz")


@pytest.mark.parametrize("channels, filters", [((2, 2), (3, 3)), ((1, 1, 1), (1, 1, 1)), ((3, 1, 4), (2, 5, 1)), ((3,), (4,))])
def test_grouped_conv_matches_per_group_loops_and_gradients(ops, channels, filters, rng):
    x, b = rng.standard_normal((2, sum(channels), 7, 6)), rng.standard_normal(sum(filters))
    weights = [rng.standard_normal((f, c, 3, 3)) for c, f in zip(channels, filters)]  # unequal groups allowed
    y, cache = ops.grouped_conv2d_forward(x, weights, b, 1, 1)
    expected = naive.grouped_conv2d(x, weights, b, 1, 1)
    # A norm-wise relative error: rtol = 0, atol = 1e-13·max|expected|.
    assert_close(y, expected, rtol=0, atol=max_norm_atol(1e-13, expected), name="y")

    def backward(d):
        dx, dws, db = ops.grouped_conv2d_backward(d, cache)
        return (dx, *dws, db)

    naive.check_vjp(lambda x, *wb: ops.grouped_conv2d_forward(x, list(wb[:-1]), wb[-1], 1, 1)[0],
                    backward, [x, *weights, b], rng)
    with pytest.raises(ValueError, match="shapes do not fit"):
        ops.grouped_conv2d_forward(x[:, 1:], weights, b, 1, 1)


@needs_torch
def test_grouped_conv_agrees_with_torch(ops, rng):
    import torch
    import torch.nn.functional as F

    x, w, b = rng.standard_normal((3, 6, 9, 9)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, stride=2, padding=1, groups=2)
    y, cache = ops.grouped_conv2d_forward(x, [w[:2], w[2:]], b, 2, 1)
    dout = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dout))
    dx, dws, db = ops.grouped_conv2d_backward(dout, cache)
    # Norm-wise relative errors: rtol = 0, atol = 1e-10·max|theirs|.
    for what, ours, theirs in zip(("y", "dx", "dw", "db"), (y, dx, np.concatenate(dws), db),
                                  (ty, tx.grad, tw.grad, tb.grad)):
        theirs = theirs.detach().numpy()
        assert_close(ours, theirs, rtol=0, atol=max_norm_atol(1e-10, theirs), name=what)


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 7, 9), (3, 2, 24, 24), (1, 4, 5, 2)])
def test_unrolled_2x2_pool_equals_the_generic_kernel(shape, rng):
    for x in (rng.standard_normal(shape), np.maximum(rng.integers(-1, 2, shape), 0).astype(np.float64)):
        oh, ow = shape[2] // 2, shape[3] // 2
        y, arg = cpu.max_pool2d_forward_2x2(x)
        y_ref, arg_ref = cpu.max_pool2d_forward(x, 2, 2, 2, oh, ow)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(arg, arg_ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_forward_kernel_equals_the_reference_bit_for_bit(dtype, rng):
    wide = rng.standard_normal((33, 48)).astype(dtype)
    wide[0, :6] = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan]
    for x in (wide[:, :47], np.ascontiguousarray(wide[:, 1:]), np.asfortranarray(wide), wide[None, None]):
        (got, got_cache), (expected, _) = fast_ops.relu_forward(x), reference_ops.relu_forward(x)
        assert got.dtype == expected.dtype == dtype and got.shape == expected.shape
        assert got_cache is got
        np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint8),
                                      np.ascontiguousarray(expected).view(np.uint8))
    with pytest.raises(TypeError, match="relu_forward"):
        fast_ops.relu_forward(wide.astype(np.float16))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_kernel_equals_the_reference_bit_for_bit(dtype, rng):
    x = rng.standard_normal((33, 47)).astype(dtype)
    x[0, :5] = [0.0, -0.0, np.inf, -np.inf, np.nan]
    y, cache = reference_ops.relu_forward(x)
    wide = rng.standard_normal((33, 48)).astype(dtype)
    wide[1, :4] = [np.nan, -0.0, np.inf, 0.0]
    for dout in (wide[:, :47], np.ascontiguousarray(wide[:, 1:])):  # strided and contiguous
        for c in (cache, np.asfortranarray(cache)):  # the cache of a transposed activation is F-ordered
            got, expected = fast_ops.relu_backward(dout, c), reference_ops.relu_backward(dout, c)
            assert got.dtype == expected.dtype == dtype
            np.testing.assert_array_equal(np.ascontiguousarray(got).view(np.uint8),
                                          np.ascontiguousarray(expected).view(np.uint8))
