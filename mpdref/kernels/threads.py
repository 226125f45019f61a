"""One thread pool at a time: Numba's, while Numba's parallel kernels do the work.

The fast paths have two thread pools: OpenBLAS's (NumPy's matrix products) and Numba's
(the parallel kernels: the direct convolution, the block-diagonal product). Each pool's
threads keep spinning for a while after their last task, so a network whose layers take
turns between the two has four busy threads on a two-core machine: measured on the
development machine (2 cores, batch 64), a LeNet-5 training step took 30.2 ms against
9.3 ms with BLAS kept to one thread, and an MPD Deep MNIST forward pass at batch 64 ran at
2,300 against 5,900 images/s. So a network with parallel kernels (`LayerStack.
parallel_kernels`) runs its passes inside `numba_pass()`: BLAS on one thread, and the fast
set's dense layers multiplying on Numba's threads too (`mpdref.kernels.gemm`), so that they
do not run on one core while the other waits (Deep MNIST's fc1, 3136 → 1024, took 8.7 of a
35 ms training step on one BLAS thread). A network without parallel kernels (LeNet-300-100:
dense layers only) leaves BLAS its threads, which are its only parallelism.

The limit goes through threadpoolctl, which finds the BLAS library NumPy loaded and calls
its own set-threads function, and is undone on leaving the block.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

_IN_NUMBA_PASS = contextvars.ContextVar("mpdref_numba_pass", default=False)


@functools.cache
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def blas_on_one_thread():
    """A context in which NumPy's BLAS uses one thread, whatever Numba's thread count: so that the
    products, whose rounding can depend on BLAS's threads, give the same bits in every process."""
    return _controller().limit(limits=1, user_api="blas")


@contextlib.contextmanager
def numba_pass():
    """A context for a pass of a network with Numba's parallel kernels: BLAS on one thread
    (blas_on_one_thread), and `in_numba_pass()` true, which sends the fast set's dense products to
    Numba's threads (`kernels.fast_ops.dense_forward`, `dense_backward`)."""
    token = _IN_NUMBA_PASS.set(True)
    try:
        with blas_on_one_thread():
            yield
    finally:
        _IN_NUMBA_PASS.reset(token)


def in_numba_pass() -> bool:
    """Whether this code runs inside numba_pass()."""
    return _IN_NUMBA_PASS.get()
