"""One thread pool at a time: NumPy's BLAS on one thread while Numba's parallel kernels do the work.

The fast paths have two thread pools: OpenBLAS's (NumPy's matrix products) and Numba's
(the parallel kernels: the direct convolution, the block-diagonal product). Each pool's
threads keep spinning for a while after their last task, so a network whose layers take
turns between the two has four busy threads on a two-core machine: measured on the
development machine (2 cores, batch 64), a LeNet-5 training step took 30.2 ms against
9.3 ms with BLAS kept to one thread, and an MPD Deep MNIST forward pass at batch 64 ran at
2,300 against 5,900 images/s. So a network with parallel kernels (`LayerStack.
parallel_kernels`) runs its passes inside `blas_on_one_thread()`; a network without them
(LeNet-300-100: dense layers only) leaves BLAS its threads, which are its only parallelism.

The limit goes through threadpoolctl, which finds the BLAS library NumPy loaded and calls
its own set-threads function, and is undone on leaving the block.
"""
from __future__ import annotations

import functools


@functools.cache
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def blas_on_one_thread():
    """A context in which NumPy's BLAS uses one thread, whatever Numba's thread count: so that the
    products, whose rounding can depend on BLAS's threads, give the same bits in every process."""
    return _controller().limit(limits=1, user_api="blas")
