"""Every Numba option mpdref uses, in one place: CPU flags, CUDA threads and tile sizes; and the
backends (devices) a block network can run on.

fastmath stays off: the fast paths are compared with the NumPy reference and
runs must be reproducible bit for bit. ``cache=True`` is never combined with
``parallel=True`` (Numba's cache has known crashes with parallel kernels).
"""
from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("cpu", "cuda")


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here; the message names the cause and the alternatives."""


FASTMATH = False

#: options for serial kernels (cached on disk: they compile once per machine)
SERIAL = dict(nogil=True, fastmath=FASTMATH, cache=True)
#: options for kernels parallel over the batch (`prange`); never cached
PARALLEL = dict(nogil=True, fastmath=FASTMATH, parallel=True, cache=False)


# ----------------------------------------------------------------------------- CUDA


@dataclass(frozen=True)
class CudaTiles:
    """Tile sizes of the CUDA block-diagonal product (mpdref.kernels.cuda).

    A thread block computes a bm × bn tile of one block's output (bm output units
    × bn batch columns), stepping through the block's inputs bk at a time through
    shared memory; each thread holds tm × tn outputs in registers, so a thread
    block has (bm / tm)·(bn / tn) threads. With `prefetch`, the global loads of the
    next bk-slice are issued before the products of this one (register double
    buffering); without, after them. max_registers caps the registers per thread
    (0: the compiler's choice), so that more thread blocks fit on a multiprocessor.
    """

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    prefetch: bool = True
    max_registers: int = 0

    def __post_init__(self):
        if min(self.bm, self.bn, self.bk, self.tm, self.tn) < 1:
            raise ValueError(f"tile sizes must be positive: {self}")
        if self.bm % self.tm or self.bn % self.tn:
            raise ValueError(f"tm must divide bm and tn must divide bn: {self}")
        if (self.bm * self.bk) % self.threads or (self.bk * self.bn) % self.threads:
            raise ValueError(f"the threads ({self.threads}) must split both shared tiles evenly: {self}")

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)


#: tiles for a GPU, by the shape of the product (see choose_cuda_tiles)
CUDA_TILES = {
    # 256 threads of 8 × 8 outputs, registers capped at 128 so that two thread blocks fit on a
    # multiprocessor: with the shared tiles read as vectors, the fastest set measured on an H100
    # at k = 4 and 16, batch 1024 (benchmarks/block_diagonal_cuda.py --try-tiles; NOTES-cuda.md)
    "large": CudaTiles(bm=128, bn=128, bk=8, tm=8, tn=8, max_registers=128),
    "medium": CudaTiles(bm=64, bn=64, bk=8, tm=4, tn=4),  # 256 threads, 16 outputs each, 59 registers
    "narrow": CudaTiles(bm=64, bn=8, bk=32, tm=2, tn=1),  # small batches: 256 threads over units
}
#: tiles for the CUDA simulator (one Python thread per CUDA thread): 4 threads, tiny tiles,
#: so that test inputs of a few dozen elements cross every tile boundary; 4 × 4 per thread
#: takes the kernel's vector-load path, as the GPU tiles do
CUDA_SIM_TILES = CudaTiles(bm=8, bn=8, bk=2, tm=4, tn=4)
#: threads per block of the elementwise kernels (convolution, pooling, ReLU)
CUDA_THREADS = 256
CUDA_SIM_THREADS = 8


def choose_cuda_tiles(max_rows: int, batch: int, simulator: bool = False) -> CudaTiles:
    """The tile set for blocks of at most `max_rows` output units and a batch of `batch`."""
    if simulator:
        return CUDA_SIM_TILES
    if batch <= 16:
        return CUDA_TILES["narrow"]
    if max_rows <= 64 or batch <= 64:
        return CUDA_TILES["medium"]
    return CUDA_TILES["large"]
