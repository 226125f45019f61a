"""numba.cuda kernels for MPD networks in block-diagonal form.

Activations live on the device feature-major: a dense activation is (features, N),
a convolutional one (C, H, W, N), with the batch index fastest. Then the permutation
between layers, which picks whole features, reads whole contiguous rows: the gather
fused into a kernel's tile loads is coalesced. Flattening (C, H, W, N) to (C·H·W, N)
is a reshape, in the same feature order as the NCHW flatten of `mpdref.ops`.

The kernels, and the reference each one must equal:

* `block_diagonal_matmul` (and `DeviceBlockDense`): for every block b,

      y[row_dest[r0_b + i], n] = act(bias[r0_b + i] + Σ_j B_b[i, j] · x[gather[c0_b + j], n])

  which is `permuted_block_diagonal_matmul` of tests/naive.py. Shared-memory tiles with
  register tiling (sizes in `mpdref.kernels.config`); one grid dimension runs over the
  blocks, which may differ in size.
* `DeviceBlockConv`: a grouped convolution with unequal groups (direct, one thread per
  output), the channel gather, bias and ReLU fused; `mpdref.ops.grouped_conv2d_forward` of the
  gathered channels.
* `max_pool`: `mpdref.ops.max_pool2d_forward`; `relu`: `mpdref.ops.relu_forward`.

Accumulators are typed with the arrays' dtype (``zero = dtype(0)``): in float32 the
products are summed in float32, never silently in float64.

This module is imported only when the CUDA backend is asked for
(`mpdref.kernels.load_backend("cuda")`); it needs the numba-cuda package
(``pip install -e '.[cuda]'``). With ``NUMBA_ENABLE_CUDASIM=1`` every kernel runs in
Numba's CUDA simulator instead (slow: for tests on machines without a GPU).
"""
from __future__ import annotations

import ctypes
import functools
import math
import warnings

import numpy as np

from mpdref.kernels.config import (CUDA_SIM_THREADS, CUDA_THREADS, FASTMATH, BackendUnavailable, CudaTiles,
                                   choose_cuda_tiles)

_ALTERNATIVES = ("Use backend='cpu' (mpdref evaluate --backend cpu), or set NUMBA_ENABLE_CUDASIM=1 "
                 "to run the CUDA kernels in Numba's simulator (slow; meant for tests).")

try:
    import numba
    from numba import cuda
    from numba.core import config as _numba_config
except ImportError as e:  # pragma: no cover - numba is a dependency
    raise BackendUnavailable(f"backend='cuda' needs numba.cuda, which does not import ({e}). {_ALTERNATIVES}") from e

if getattr(cuda, "implementation", "Built-in") != "NVIDIA":
    raise BackendUnavailable(
        "backend='cuda' needs the maintained numba-cuda package, which is not installed "
        "(pip install -e '.[cuda]'; Numba's own built-in CUDA target is deprecated). " + _ALTERNATIVES
    )


def simulator() -> bool:
    """True when NUMBA_ENABLE_CUDASIM=1: kernels run in Numba's CUDA simulator."""
    return bool(_numba_config.ENABLE_CUDASIM)


def require_device() -> None:
    """Raise BackendUnavailable, naming the cause, unless a GPU (or the simulator) can run the kernels."""
    if simulator():
        return
    try:
        cuda.current_context()
    except Exception as e:  # CudaSupportError and driver errors
        cause = " ".join(str(e).split()) or type(e).__name__
        raise BackendUnavailable(f"backend='cuda': no usable NVIDIA GPU ({cause}). {_ALTERNATIVES}") from None


def _numba_type(dtype):
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return numba.float32
    if dtype == np.float64:
        return numba.float64
    raise TypeError(f"the CUDA kernels take float32 or float64, not {dtype}")


def _threads() -> int:
    return CUDA_SIM_THREADS if simulator() else CUDA_THREADS


def _configured(kernel, grid, threads):
    """kernel[grid, threads], made once per shape on a GPU (the simulator's kernel[...] sets
    the grid on the kernel itself, so there it is made every time)."""
    if simulator():
        return kernel[grid, threads]
    return _configured_once(kernel, grid, threads)


@functools.lru_cache(maxsize=512)
def _configured_once(kernel, grid, threads):
    # numba-cuda's notice that a grid under 128 blocks under-uses the GPU is silenced here:
    # small batches and small layers give small grids on purpose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Grid size .* under-utilization")
        return _DirectLaunch(kernel[grid, threads])


class _DirectLaunch:
    """kernel[grid, threads](*args), without numba-cuda's per-call dispatch after the first call.

    A numba-cuda launch from Python costs 17-27 µs for one array argument and 5-7 µs per
    further array (benchmarks/NOTES-cuda.md): each call types every argument, looks up
    the compiled kernel and converts each array through several wrappers. A network
    launches the same kernels with the same kinds of arguments batch after batch, so
    here the first call of each kind of argument list goes through numba-cuda (which
    compiles), and later ones launch that compiled kernel with the arguments flattened
    exactly as numba-cuda's Kernel._prepare_args flattens them (an array: meminfo, parent,
    size, itemsize, data pointer, shape, strides). Anything else (a host array, a
    non-contiguous view, an argument kind not seen before) takes numba-cuda's path.
    tests/test_cuda.py checks that both paths give the same bits.
    """

    def __init__(self, configured):
        self.configured = configured
        self.kernels = {}  # kind of each argument -> (cuda.core kernel, argument types)
        self.config = None
        try:
            from cuda.core import LaunchConfig, launch
            self._launch = launch
            self.config = LaunchConfig(grid=configured.griddim, block=configured.blockdim,
                                       shmem_size=configured.sharedmem)
        except Exception:  # another numba-cuda or cuda.core than the one this was written against
            self._launch = None

    @staticmethod
    def _kind(a):
        if isinstance(a, cuda.devicearray.DeviceNDArray):
            return (a.dtype.char, a.ndim) if a.is_c_contiguous() else None
        if isinstance(a, (bool, int, float)):
            return type(a)
        return None

    def __call__(self, *args):
        kinds = tuple(self._kind(a) for a in args)
        entry = self.kernels.get(kinds)
        if entry is None or None in kinds or self._launch is None:
            self.configured(*args)
            if None not in kinds and self._launch is not None:
                self._remember(kinds, args)
            return
        kernel, types = entry
        flat = []
        for ty, a in zip(types, args):
            if ty is None:  # an array
                flat += [0, 0, a.size, a.dtype.itemsize, a.device_ctypes_pointer.value or 0, *a.shape, *a.strides]
            else:
                flat.append(ty(a))
        self._launch(self.configured.stream, self.config, kernel, *flat)

    def _remember(self, kinds, args):
        from numba import types as nt

        dispatcher = self.configured.dispatcher
        argtypes = tuple(dispatcher.typeof_pyval(a) for a in args)
        compiled = dispatcher.overloads.get(argtypes)
        if compiled is None or compiled.debug:
            return
        converters = []
        for ty in argtypes:
            if isinstance(ty, nt.Array):
                converters.append(None)
            elif ty == nt.boolean:
                converters.append(bool)
            elif isinstance(ty, nt.Integer):
                converters.append(getattr(ctypes, f"c_{ty}"))
            elif ty == nt.float64:
                converters.append(ctypes.c_double)
            else:
                return  # a kind this launcher does not flatten: numba-cuda's path every time
        self.kernels[kinds] = (compiled._codelibrary.get_cufunc().kernel, converters)


def _blocks_for(total: int) -> int:
    return max(1, min(math.ceil(total / _threads()), 65535))


# ----------------------------------------------------------------------------- vector loads from shared memory


def _make_load_vector():
    """load4(a, i) -> (a[i], a[i+1], a[i+2], a[i+3]) as one vector load.

    LLVM does not merge neighbouring scalar loads from shared memory into vector loads
    (the PTX showed one ld.shared.f32 per element: at 8 × 4 outputs per thread, 12 loads
    for 32 FMAs in the register-tiled product's inner loop). This reads the four elements as
    one <4 x T> (ld.shared.v4.f32; float64 is split into two v2 loads). The caller
    guarantees what makes that legal: a is a 1-D C-contiguous array whose data is
    aligned to 4 elements (a shared array declared with that alignment), and i is a
    multiple of 4. In the simulator it is four scalar reads.
    """
    if simulator():
        def load4(a, i):
            return a[i], a[i + 1], a[i + 2], a[i + 3]
        return cuda.jit(device=True, inline="always")(load4)

    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def load4(typingctx, a, i):
        if not (isinstance(a, types.Array) and a.ndim == 1 and isinstance(a.dtype, types.Float)
                and isinstance(i, types.Integer)):
            return None
        sig = types.UniTuple(a.dtype, 4)(a, i)

        def codegen(context, builder, sig, args):
            array_type, _ = sig.args
            array, index = args
            data = context.make_array(array_type)(context, builder, value=array).data
            element = context.get_value_type(array_type.dtype)
            ptr = builder.gep(data, [index], inbounds=True)
            vector_ptr = builder.bitcast(ptr, ir.VectorType(element, 4).as_pointer(ptr.type.addrspace))
            vector = builder.load(vector_ptr, align=4 * array_type.dtype.bitwidth // 8)
            values = [builder.extract_element(vector, ir.Constant(ir.IntType(32), j)) for j in range(4)]
            return context.make_tuple(builder, sig.return_type, values)

        return sig, codegen

    return load4


load4 = _make_load_vector()


# ----------------------------------------------------------------------------- block-diagonal product


@functools.cache
def _share_reader(count: int, run: int, threads: int):
    """read(tile, base, out): out[i] = tile[base + (i // run)·threads·run + i % run], i < count.

    A thread's share of one k-step of a shared tile: `count` values in runs of `run`
    (4: one vector load each, see load4; 1: scalar loads), the runs of consecutive
    threads side by side, `threads` threads along the tile.
    """

    @cuda.jit(device=True, inline="always")
    def read(tile, base, out):
        if run == 4:
            for i in range(0, count, 4):
                out[i], out[i + 1], out[i + 2], out[i + 3] = load4(tile, base + (i // 4) * threads * 4)
        else:
            for i in range(count):
                out[i] = tile[base + i * threads]

    return read


@functools.cache
def _block_matmul_kernel(tiles: CudaTiles, dtype, relu: bool):
    """The block-diagonal product for one tile set, dtype and epilogue (all compile-time constants)."""
    BM, BN, BK, TM, TN = tiles.bm, tiles.bn, tiles.bk, tiles.tm, tiles.tn
    THREADS_M, THREADS_N = BM // TM, BN // TN
    NT = tiles.threads
    # Thread (ty, tx) owns TM rows and TN columns of the tile, in runs of VA rows and VX
    # columns: row i of its share is (i // VA)·THREADS_M·VA + ty·VA + i % VA, and likewise
    # for columns. A run is read from shared memory as one vector (VA = 4 where TM allows,
    # the tiles aligned to 4 elements); consecutive threads read consecutive runs, so a
    # warp's vector reads of the input tile hit every bank once (runs of 8 per thread
    # would put two threads of a quarter-warp on the same banks).
    VA = 4 if TM % 4 == 0 else 1
    VX = 4 if TN % 4 == 0 else 1
    read_rows = _share_reader(TM, VA, THREADS_M)
    read_columns = _share_reader(TN, VX, THREADS_N)
    ALIGN = None if simulator() else 4 * np.dtype(dtype).itemsize  # the simulator refuses an alignment
    A_TILE, X_TILE = BK * BM, BK * BN
    A_LOADS, B_LOADS = BM * BK // NT, BK * BN // NT
    PREFETCH = tiles.prefetch
    RELU = relu
    nb = _numba_type(dtype)
    zero = nb(0)

    @cuda.jit(device=True, inline="always")
    def load_weights(wt, w0, r_b, c_b, m0, k0, tid, out):
        """out[l] = B_b[m0 + m, k0 + kk] for this thread's share of the tile (0 outside the block)."""
        inside = k0 + BK <= c_b and m0 + BM <= r_b  # the whole slice: no test per element
        for load in range(A_LOADS):  # consecutive threads read consecutive units: coalesced
            idx = tid + load * NT
            kk = idx // BM
            m = idx % BM
            if inside:
                out[load] = wt[w0 + (k0 + kk) * r_b + m0 + m]
            else:
                v = zero
                if k0 + kk < c_b and m0 + m < r_b:
                    v = wt[w0 + (k0 + kk) * r_b + m0 + m]
                out[load] = v

    @cuda.jit(device=True, inline="always")
    def load_inputs(x, gather, c0, c_b, n0, n_total, k0, tid, out):
        """out[l] = x[gather[c0 + k0 + kk], n0 + n]: the input permutation, fused into the load."""
        inside = k0 + BK <= c_b and n0 + BN <= n_total
        for load in range(B_LOADS):  # a warp reads one gathered feature row, contiguous in n
            idx = tid + load * NT
            kk = idx // BN
            n = idx % BN
            if inside:
                out[load] = x[gather[c0 + k0 + kk], n0 + n]
            else:
                v = zero
                if k0 + kk < c_b and n0 + n < n_total:
                    v = x[gather[c0 + k0 + kk], n0 + n]
                out[load] = v

    options = dict(fastmath=FASTMATH, **({"max_registers": tiles.max_registers} if tiles.max_registers else {}))

    @cuda.jit(**options)
    def kernel(params, meta, x, y):
        # Four arguments, because each costs launch time in Python (numba-cuda: about 7 µs an
        # array). params: the blocks, block b transposed to (c_b, r_b) row-major at
        # params[w_offsets[b]:], then the bias (rows,) at params[w_offsets[k]:]. meta (int64):
        # k, then w_offsets (k + 1), row_bounds (k + 1), col_bounds (k + 1), gather (cols) and
        # row_dest (rows), in that order. x (in, N) -> y (rows, N).
        k = meta[0]
        meta = meta[1:]
        row_bounds = meta[k + 1 : 2 * k + 2]
        col_bounds = meta[2 * k + 2 : 3 * k + 3]
        gather = meta[3 * k + 3 : 3 * k + 3 + col_bounds[k]]
        row_dest = meta[3 * k + 3 + col_bounds[k] :]
        wt = params
        bias = params[meta[k] :]
        b = cuda.blockIdx.z
        r0 = row_bounds[b]
        r_b = row_bounds[b + 1] - r0
        m0 = cuda.blockIdx.x * BM
        if m0 >= r_b:  # this block has fewer rows than the largest: the whole thread block idles
            return
        c0 = col_bounds[b]
        c_b = col_bounds[b + 1] - c0
        n0 = cuda.blockIdx.y * BN
        n_total = x.shape[1]
        w0 = meta[b]
        tid = cuda.threadIdx.x
        tx = tid % THREADS_N
        ty = tid // THREADS_N

        a_tile = cuda.shared.array(A_TILE, nb, alignment=ALIGN)  # a_tile[kk·BM + m] = B_b[m0 + m, k0 + kk]
        x_tile = cuda.shared.array(X_TILE, nb, alignment=ALIGN)  # x_tile[kk·BN + n] = x[gather[c0 + k0 + kk], n0 + n]
        a_next = cuda.local.array(A_LOADS, nb)  # the next tiles, loaded while this one is multiplied
        x_next = cuda.local.array(B_LOADS, nb)
        acc = cuda.local.array((TM, TN), nb)
        a_reg = cuda.local.array(TM, nb)
        x_reg = cuda.local.array(TN, nb)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = zero

        load_weights(wt, w0, r_b, c_b, m0, 0, tid, a_next)
        load_inputs(x, gather, c0, c_b, n0, n_total, 0, tid, x_next)
        for k0 in range(0, c_b, BK):
            for load in range(A_LOADS):
                a_tile[tid + load * NT] = a_next[load]
            for load in range(B_LOADS):
                x_tile[tid + load * NT] = x_next[load]
            cuda.syncthreads()
            if PREFETCH and k0 + BK < c_b:  # in flight during the products below
                load_weights(wt, w0, r_b, c_b, m0, k0 + BK, tid, a_next)
                load_inputs(x, gather, c0, c_b, n0, n_total, k0 + BK, tid, x_next)
            for kk in range(BK):
                read_rows(a_tile, kk * BM + ty * VA, a_reg)  # few distinct addresses per warp: broadcasts
                read_columns(x_tile, kk * BN + tx * VX, x_reg)
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += a_reg[i] * x_reg[j]
            cuda.syncthreads()
            if not PREFETCH and k0 + BK < c_b:
                load_weights(wt, w0, r_b, c_b, m0, k0 + BK, tid, a_next)
                load_inputs(x, gather, c0, c_b, n0, n_total, k0 + BK, tid, x_next)

        for i in range(TM):  # epilogue: bias, ReLU, and the output scatter
            m = m0 + (i // VA) * THREADS_M * VA + ty * VA + i % VA
            if m < r_b:
                row = r0 + m
                bias_row = bias[row]
                dest = row_dest[row]
                for j in range(TN):
                    n = n0 + (j // VX) * THREADS_N * VX + tx * VX + j % VX
                    if n < n_total:
                        v = acc[i, j] + bias_row
                        if RELU and v < zero:
                            v = zero
                        y[dest, n] = v

    return kernel


def _as_index(a, n: int, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must be an integer array of shape ({n},), not {a.dtype} {a.shape}")
    if n and (a.min() < 0):
        raise ValueError(f"{what} has negative entries")
    return np.ascontiguousarray(a, dtype=np.int32)


class DeviceBlockDense:
    """A dense layer in block form, uploaded once: y = act(blockdiag(B_b) · x[gather] + bias), rows scattered.

    blocks[b] (r_b, c_b); gather (Σ c_b,): the input row each block-ordered input reads
    (default: the identity); bias (Σ r_b,) in block order (default 0); row_dest (Σ r_b,):
    the output row of block-ordered output i (default: the identity).
    """

    def __init__(self, blocks, gather=None, bias=None, row_dest=None, in_features=None):
        if not blocks:
            raise ValueError("need at least one block")
        dtype = np.result_type(*[b.dtype for b in blocks])
        _numba_type(dtype)
        if any(b.ndim != 2 or b.dtype != dtype for b in blocks):
            raise ValueError("blocks must be 2-D arrays of one dtype")
        row_sizes = [b.shape[0] for b in blocks]
        col_sizes = [b.shape[1] for b in blocks]
        rows, cols = sum(row_sizes), sum(col_sizes)
        self.dtype = np.dtype(dtype)
        self.rows, self.cols = rows, cols
        self.max_rows = max(row_sizes)
        self.k = len(blocks)
        self.in_features = cols if in_features is None else in_features
        gather = np.arange(cols) if gather is None else gather
        row_dest = np.arange(rows) if row_dest is None else row_dest
        bias = np.zeros(rows, dtype) if bias is None else np.asarray(bias)
        if bias.shape != (rows,) or bias.dtype != dtype:
            raise ValueError(f"bias must be {dtype} of shape ({rows},), not {bias.dtype} {bias.shape}")
        gather = _as_index(gather, cols, "gather")
        if cols and gather.max() >= self.in_features:
            raise ValueError(f"gather reads feature {gather.max()} of an input with {self.in_features}")
        row_dest = _as_index(row_dest, rows, "row_dest")
        if rows and (row_dest.max() >= rows or len(np.unique(row_dest)) != rows):
            raise ValueError("row_dest must be a permutation of the output rows")
        # the kernel's two arrays (layout in _block_matmul_kernel): weights then bias; indices
        params = np.concatenate([np.ascontiguousarray(b.T).ravel() for b in blocks] + [bias])
        offsets = np.concatenate([[0], np.cumsum([b.size for b in blocks])])
        meta = np.concatenate([[len(blocks)], offsets, [0], np.cumsum(row_sizes), [0], np.cumsum(col_sizes),
                               gather, row_dest])
        self._params = cuda.to_device(params.astype(dtype))
        self._meta = cuda.to_device(meta.astype(np.int64))

    def __call__(self, x, relu: bool = False, out=None, tiles: CudaTiles | None = None):
        """x: device array (in_features, N) -> device array (rows, N)."""
        if x.ndim != 2 or x.shape[0] != self.in_features or np.dtype(x.dtype) != self.dtype:
            raise ValueError(f"x must be a {self.dtype} device array ({self.in_features}, N), "
                             f"not {x.dtype} {x.shape}")
        n = x.shape[1]
        if out is None:
            out = cuda.device_array((self.rows, n), dtype=self.dtype)
        tiles = tiles or choose_cuda_tiles(self.max_rows, n, simulator())
        grid = (math.ceil(self.max_rows / tiles.bm), math.ceil(n / tiles.bn), self.k)
        if n:
            _configured(_block_matmul_kernel(tiles, self.dtype, bool(relu)), grid, tiles.threads)(
                self._params, self._meta, x, out)
        return out


def block_diagonal_matmul(blocks, x, gather=None, bias=None, relu=False, row_dest=None,
                          tiles: CudaTiles | None = None) -> np.ndarray:
    """Host arrays in, host array out: x (N, in_features) -> y (N, Σ r_b) on the GPU.

    Without gather, bias, relu and row_dest this equals
    `mpdref.mpd.block_diagonal_matmul(blocks, x)`; see DeviceBlockDense for the rest.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be (N, features), not {x.shape}")
    layer = DeviceBlockDense(blocks, gather, bias, row_dest, in_features=x.shape[1])
    if x.dtype != layer.dtype:
        raise TypeError(f"x is {x.dtype}, the blocks are {layer.dtype}")
    y = layer(cuda.to_device(np.ascontiguousarray(x.T)), relu=relu, tiles=tiles)
    return y.copy_to_host().T.copy()


# ----------------------------------------------------------------------------- convolution, pooling, ReLU


@cuda.jit(device=True, inline="always")
def _unravel_chwn(idx, oh, ow, n_total):
    """(c, y, x, n) of the flat index idx into a C-ordered (C, oh, ow, n_total) array."""
    n = idx % n_total
    t = idx // n_total
    ox = t % ow
    t //= ow
    return t // oh, t % oh, ox, n


@functools.cache
def _conv_kernel(dtype):
    nb = _numba_type(dtype)
    zero = nb(0)

    @cuda.jit(fastmath=FASTMATH)
    def kernel(w, w_offsets, out_block, row_bounds, col_bounds, gather, bias, relu, kh, kw, stride, padding, x, y):
        # x (C_in, H, W, N), y (C_out, OH, OW, N); block b's weights (r_b, c_b, KH, KW) at w[w_offsets[b]:].
        c_out, oh, ow, n_total = y.shape
        _, height, width, _ = x.shape
        total = c_out * oh * ow * n_total
        start = cuda.grid(1)
        step = cuda.gridsize(1)
        for idx in range(start, total, step):
            o, oy, ox, n = _unravel_chwn(idx, oh, ow, n_total)
            b = out_block[o]
            c0 = col_bounds[b]
            c_b = col_bounds[b + 1] - c0
            base = w_offsets[b] + (o - row_bounds[b]) * c_b * kh * kw
            acc = zero
            for c in range(c_b):
                ch = gather[c0 + c]
                for p in range(kh):
                    iy = oy * stride - padding + p
                    if 0 <= iy < height:
                        for q in range(kw):
                            ix = ox * stride - padding + q
                            if 0 <= ix < width:
                                acc += w[base + (c * kh + p) * kw + q] * x[ch, iy, ix, n]
            v = acc + bias[o]
            if relu and v < zero:
                v = zero
            y[o, oy, ox, n] = v

    return kernel


class DeviceBlockConv:
    """A convolution in block form (a grouped convolution with unequal groups), uploaded once.

    blocks[b] (r_b, c_b, KH, KW); output channels in block order; gather[j]: the input
    channel block-ordered input channel j reads; bias (Σ r_b,) in block order.
    """

    def __init__(self, blocks, gather, bias, stride=1, padding=0):
        dtype = np.dtype(blocks[0].dtype)
        _numba_type(dtype)
        kh, kw = blocks[0].shape[2:]
        if any(b.ndim != 4 or b.shape[2:] != (kh, kw) or b.dtype != dtype for b in blocks):
            raise ValueError("conv blocks must be (r_b, c_b, KH, KW) arrays of one kernel size and dtype")
        row_sizes = [b.shape[0] for b in blocks]
        col_sizes = [b.shape[1] for b in blocks]
        self.dtype, self.rows, self.cols = dtype, sum(row_sizes), sum(col_sizes)
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        offsets = np.concatenate([[0], np.cumsum([b.size for b in blocks])]).astype(np.int64)
        self._w = cuda.to_device(np.concatenate([np.ascontiguousarray(b).ravel() for b in blocks]))
        self._offsets = cuda.to_device(offsets)
        self._out_block = cuda.to_device(np.repeat(np.arange(len(blocks)), row_sizes).astype(np.int32))
        self._row_bounds = cuda.to_device(np.concatenate([[0], np.cumsum(row_sizes)]).astype(np.int64))
        self._col_bounds = cuda.to_device(np.concatenate([[0], np.cumsum(col_sizes)]).astype(np.int64))
        self._gather = cuda.to_device(_as_index(gather, self.cols, "gather"))
        bias = np.asarray(bias)
        if bias.shape != (self.rows,) or bias.dtype != dtype:
            raise ValueError(f"bias must be {dtype} of shape ({self.rows},), not {bias.dtype} {bias.shape}")
        self._bias = cuda.to_device(bias)

    def __call__(self, x, relu: bool = False):
        """x: device array (C_in, H, W, N) -> (C_out, OH, OW, N)."""
        if x.ndim != 4 or np.dtype(x.dtype) != self.dtype:
            raise ValueError(f"x must be a {self.dtype} device array (C, H, W, N), not {x.dtype} {x.shape}")
        _, height, width, n = x.shape
        kh, kw = self.kernel_size
        oh = (height + 2 * self.padding - kh) // self.stride + 1
        ow = (width + 2 * self.padding - kw) // self.stride + 1
        y = cuda.device_array((self.rows, oh, ow, n), dtype=self.dtype)
        _configured(_conv_kernel(self.dtype), _blocks_for(y.size), _threads())(
            self._w, self._offsets, self._out_block, self._row_bounds, self._col_bounds, self._gather,
            self._bias, bool(relu), kh, kw, self.stride, self.padding, x, y)
        return y


@functools.cache
def _pool_kernel(dtype):
    zero = _numba_type(dtype)(0)

    @cuda.jit(fastmath=FASTMATH)
    def kernel(x, size, relu, y):
        c_total, oh, ow, n_total = y.shape
        total = c_total * oh * ow * n_total
        for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
            c, oy, ox, n = _unravel_chwn(idx, oh, ow, n_total)
            best = x[c, oy * size, ox * size, n]
            for p in range(size):
                for q in range(size):
                    v = x[c, oy * size + p, ox * size + q, n]
                    if v > best:
                        best = v
            if relu and best < zero:
                best = zero
            y[c, oy, ox, n] = best

    return kernel


def max_pool(x, size: int, relu: bool = False):
    """Max-pooling with a size × size window and stride size: (C, H, W, N) -> (C, H // size, W // size, N)."""
    c, h, w, n = x.shape
    y = cuda.device_array((c, h // size, w // size, n), dtype=x.dtype)
    _configured(_pool_kernel(np.dtype(x.dtype)), _blocks_for(y.size), _threads())(x, size, bool(relu), y)
    return y


@functools.cache
def _relu_kernel(dtype):
    zero = _numba_type(dtype)(0)

    @cuda.jit(fastmath=FASTMATH)
    def kernel(x):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            if x[i] < zero:
                x[i] = zero

    return kernel


def relu(x):
    """max(x, 0), in place on a device array of any shape; returns x."""
    flat = x.reshape(x.size)
    _configured(_relu_kernel(np.dtype(x.dtype)), _blocks_for(x.size), _threads())(flat)
    return x


def to_device(a):
    return cuda.to_device(np.ascontiguousarray(a))


def synchronize():
    cuda.synchronize()
