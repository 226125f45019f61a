"""One thread pool at a time, and sums that do not depend on it: Numba's, in every pass of a
fast-set network.

The fast paths have two thread pools: OpenBLAS's (NumPy's matrix products) and Numba's
(the parallel kernels: the direct convolution, the block-diagonal product, `kernels.gemm`).
Two reasons keep every pass of a network on the fast set (`models.LayerStack.numba_threads`)
inside `numba_pass()`, with BLAS on one thread and the large dense products on Numba's threads
(`mpdref.kernels.gemm`, whose sums are the same whatever the threads):

- Bits. BLAS's sums depend on its threads: on two threads OpenBLAS (SkylakeX kernels, as on a
  user's AVX-512 machine) splits the depth of LeNet-300-100's 64 × 784 @ 784 × 300 product
  in two and adds the halves, so a LeNet-300-100 trained under `mpdref run` (BLAS on every
  core) and in a sweep worker (one thread each) differed after two epochs. On Numba's threads
  a run gives the same bits on one thread as on all the cores.
- Speed. Each pool's threads keep spinning for a while after their last task, so a network
  whose layers take turns between the two has four busy threads on a two-core machine:
  measured on the development machine (2 cores, batch 64), a LeNet-5 training step took 30.2 ms
  against 9.3 ms with BLAS kept to one thread, and an MPD Deep MNIST forward pass at batch 64
  ran at 2,300 against 5,900 images/s.

The products that `gemm.is_small` calls small stay with BLAS, on its one thread.

The limit goes through threadpoolctl, which finds the BLAS library NumPy loaded and calls
its own set-threads function; it is undone on leaving the block.
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


@functools.cache
def _blas_libraries() -> tuple:
    """threadpoolctl's controllers of the BLAS libraries loaded when first asked (NumPy's)."""
    return tuple(lib for lib in _controller().lib_controllers if lib.user_api == "blas")


class _OneBlasThread:
    """The context of blas_on_one_thread: each BLAS library's thread count read on entering, set to 1
    where it is not, and put back on leaving; through threadpoolctl's controllers of the libraries,
    found once (its `limit()` finds and describes them again at each use: 10 µs against 2.5 µs a
    pass, timed with both cores busy; an MPD LeNet-300-100 forward pass at batch 64 is about 90 µs)."""

    __slots__ = ("_before",)

    def __enter__(self):
        self._before = before = [(lib, lib.get_num_threads()) for lib in _blas_libraries()]
        for lib, n in before:
            if n != 1:
                lib.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        for lib, n in self._before:
            if n != 1:
                lib.set_num_threads(n)
        return False


def blas_on_one_thread():
    """A context in which NumPy's BLAS uses one thread, whatever Numba's thread count: so that the
    products, whose rounding can depend on BLAS's threads, give the same bits in every process.
    (`mpdref.train.fit` enters numba_pass once for an epoch's steps, not twice a step.)"""
    return _OneBlasThread()


@contextlib.contextmanager
def numba_pass():
    """A context for a pass of a fast-set network: BLAS on one thread
    (blas_on_one_thread), and `in_numba_pass()` true, which sends the fast set's dense products to
    Numba's threads (`kernels.fast_ops.dense_forward`, `dense_backward`). Inside one already, it
    changes nothing (so that a caller can hold one around many passes)."""
    if _IN_NUMBA_PASS.get():
        yield
        return
    token = _IN_NUMBA_PASS.set(True)
    try:
        with blas_on_one_thread():
            yield
    finally:
        _IN_NUMBA_PASS.reset(token)


def in_numba_pass() -> bool:
    """Whether this code runs inside numba_pass()."""
    return _IN_NUMBA_PASS.get()
