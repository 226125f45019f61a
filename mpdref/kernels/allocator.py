"""Keep freed large blocks in the heap instead of returning them to the OS.

By default glibc hands every freed block above its mmap threshold (adaptive,
128 KiB to 32 MiB) back to the kernel, and the next training batch page-faults
the same memory in again: for LeNet-5 that is a fifth of a step. Raising the
mmap and trim thresholds keeps those blocks for reuse. Peak memory does not
grow: it is the same working set, only not returned between batches.

Every network pass (`mpdref.models.LayerStack`, inference included), `mpdref.train.fit` and
the block-diagonal product set it, for the whole process: a PyTorch model timed in the same
process (benchmarks/mpd_inference.py) gets the same setting. Inference needs it as much as
training: an MPD Deep MNIST forward pass at batch 1024 faulted in 65,000 pages (256 MiB) per
call and took 300 ms without it, none and 190 ms with it (2-core development machine).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.cache
def reuse_freed_memory(mmap_threshold: int = 512 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
