"""Every Numba option mpdref uses, in one place: CPU flags, the CPU register tile, CUDA threads and
tile sizes; and the backends (devices) a block network can run on.

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


# ----------------------------------------------------------------------------- CPU register tile


@dataclass(frozen=True)
class CpuTile:
    """The register tile of the CPU block-diagonal product (mpdref.kernels.intrinsics.tile_product).

    `rows` rows of the left matrix against `vectors_per_row` vectors of `vector_bytes` bytes of a
    packed panel: rows × vectors_per_row accumulators stay in vector registers, plus
    vectors_per_row operands and a broadcast. A panel is vectors_per_row · vector_bytes bytes
    wide (16 float32 on AVX2's tile, 32 on AVX-512's). The shape changes the speed only: each
    output is one running sum over its inputs in order, whatever the tile.
    """

    rows: int
    vector_bytes: int
    vectors_per_row: int

    def __post_init__(self):
        if self.rows < 1 or self.vectors_per_row < 1 or self.vector_bytes not in (16, 32, 64):
            raise ValueError(f"a tile needs rows, vectors per row >= 1 and vectors of 16, 32 or 64 bytes: {self}")

    def columns(self, itemsize: int) -> int:
        """Columns of one tile (and of one packed panel) for elements of `itemsize` bytes."""
        return self.vectors_per_row * self.vector_bytes // itemsize


#: the tiles, by the widest vector extension the code is compiled for: 16 vector registers on AVX2
#: (12 accumulators), 32 of twice the width on AVX-512 (measured on two cores of an AMD EPYC (Zen 5):
#: see benchmarks/block_diagonal.py --tile)
CPU_TILES = {
    "avx2": CpuTile(rows=6, vector_bytes=32, vectors_per_row=2),
    "avx512": CpuTile(rows=6, vector_bytes=64, vectors_per_row=2),
}


def choose_cpu_tile(features: set[str]) -> CpuTile:
    """AVX-512's tile where the code is compiled with AVX-512 (avx512f among `features`), else AVX2's
    (which LLVM splits into narrower vectors where there is no AVX2). mpdref.kernels.intrinsics
    chooses once, at import, from the features Numba compiles for."""
    return CPU_TILES["avx512" if "avx512f" in features else "avx2"]


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
