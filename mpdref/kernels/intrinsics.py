"""LLVM code Numba cannot express: a register-tiled matrix tile (vector types) and prefetch hints.

The tile,

    c[m, j] = Σ_p a[m, p] · b[p, j],   m < TILE_ROWS, j < tile_columns(dtype), p < depth,

is the inner kernel of a GEMM in the style of Goto and van de Geijn ("Anatomy of
high-performance matrix multiplication", 2008): `a` is TILE_ROWS rows of the left matrix
(row-major, any row stride), `b` a packed panel of tile_columns columns of the right one
(p-major: one contiguous row of the panel per step), and the whole TILE_ROWS ×
tile_columns result stays in vector registers across the loop over p. Each step
broadcasts TILE_ROWS values of `a`, loads VECTORS_PER_ROW vectors of `b` and issues
TILE_ROWS·VECTORS_PER_ROW vector multiply-adds.

The tile's shape is generated for the host (`mpdref.kernels.config.CPU_TILES`), chosen once,
at import, from the CPU features Numba compiles for (CPU_TILE): where there is AVX-512, 6
rows × 2 vectors of 16 float32 (12 of the 32 zmm registers hold results); else AVX2's 6
rows × 2 vectors of 8 float32 (12 of 16 ymm registers, plus 3 operands). `make_tile_product`
generates any other shape (the tests run the tile the host does not choose as well: LLVM
splits vectors wider than the CPU's). `python benchmarks/block_diagonal.py --tile`
measures the tiles against single-threaded BLAS on the same product.

Why IR: Numba has no vector types, and LLVM's loop and SLP vectorizers do not turn
scalar code into a register tile (written with 96 scalar accumulators, it compiled to
scalar multiply-adds with spills, 25 times slower). `llvm.fmuladd` fuses the multiply
and the add where the CPU has FMA and keeps them apart where not; on one machine the
result is the same bit for bit on every call, and with every tile shape (the order of the
sum over p is fixed: p = 0, 1, ..., depth - 1, one running sum per output).

The tile does no bounds checks: its callers (mpdref.kernels.blockdiag, direct_conv and gemm)
size and pad the arrays and index tables they hand it, check the indices they are given, and
are tested against the NumPy reference.
"""
from __future__ import annotations

import functools

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import config as numba_config
from numba.core.extending import intrinsic

from mpdref.kernels.config import CpuTile, choose_cpu_tile


def compiled_cpu_features() -> set[str]:
    """The CPU features Numba compiles for: NUMBA_CPU_FEATURES where set, else the host's (as Numba's
    code generator takes them)."""
    features = numba_config.CPU_FEATURES
    if features is None:
        features = ll.get_host_cpu_features().flatten()
    return {f[1:] for f in features.split(",") if f.startswith("+")}


#: the register tile of this process, chosen once, here, from the features Numba compiles for
CPU_TILE = choose_cpu_tile(compiled_cpu_features())
#: rows of the left matrix per tile (broadcast operands)
TILE_ROWS = CPU_TILE.rows
#: bytes of one vector register the tile is written for (32: AVX2, 64: AVX-512)
VECTOR_BYTES = CPU_TILE.vector_bytes
#: vectors per tile row
VECTORS_PER_ROW = CPU_TILE.vectors_per_row


def tile_columns(dtype, tile: CpuTile = CPU_TILE) -> int:
    """Columns of one tile (and of one packed panel of the right matrix): on CPU_TILE, 32 float32 and
    16 float64 with AVX-512, 16 and 8 without."""
    return tile.columns(np.dtype(dtype).itemsize)


def _emit_tile(context, builder, tile: CpuTile, scalar, a_at, b_row_at, c_ptr, c_stride, depth, accumulate):
    """The tile's loop, in LLVM IR: c (tile.rows × NR, rows c_stride apart from c_ptr) (+)= Σ_p
    a_at(m, p) · (the NR values at b_row_at(builder, p)), every result in vector registers across
    the loop over p. a_at(builder, m, p): the pointer to row m's value of a at step p (a list of
    tile.rows row pointers stands for `row[m] + p`); b_row_at(builder, p): the pointer to step p's
    NR values of b."""
    if isinstance(a_at, list):
        a_at = lambda bld, m, p, rows=a_at: bld.gep(rows[m], [p])  # noqa: E731
    itemsize = 8 if isinstance(scalar, ir.DoubleType) else 4
    lanes = tile.vector_bytes // itemsize
    tile_rows, vectors_per_row = tile.rows, tile.vectors_per_row
    vec = ir.VectorType(scalar, lanes)
    intp = depth.type
    const = lambda value: ir.Constant(intp, value)  # noqa: E731
    name = f"llvm.fmuladd.v{lanes}f{8 * itemsize}"
    module = builder.module
    fmuladd = module.globals.get(name) or ir.Function(module, ir.FunctionType(vec, [vec] * 3), name)
    n_acc = tile_rows * vectors_per_row
    zero = ir.Constant(vec, [0.0] * lanes)
    splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)

    slots = [builder.bitcast(builder.gep(c_ptr, [builder.add(builder.mul(c_stride, const(m)), const(v * lanes))]),
                             vec.as_pointer())
             for m in range(tile_rows) for v in range(vectors_per_row)]
    with builder.if_else(accumulate) as (add_to_c, start_at_zero):
        with add_to_c:
            loaded = [builder.load(slot, align=itemsize) for slot in slots]
            add_block = builder.block
        with start_at_zero:
            zero_block = builder.block
    start = [builder.phi(vec) for _ in range(n_acc)]
    for phi, value in zip(start, loaded):
        phi.add_incoming(value, add_block)
        phi.add_incoming(zero, zero_block)
    entry = builder.block
    loop = builder.append_basic_block("tile.loop")
    done = builder.append_basic_block("tile.done")
    builder.cbranch(builder.icmp_signed(">", depth, const(0)), loop, done)

    builder.position_at_end(loop)
    p = builder.phi(intp)
    acc = [builder.phi(vec) for _ in range(n_acc)]
    b_ptr = b_row_at(builder, p)
    b_row = [builder.load(builder.bitcast(builder.gep(b_ptr, [const(v * lanes)]), vec.as_pointer()), align=itemsize)
             for v in range(vectors_per_row)]
    new = []
    for m in range(tile_rows):
        a_value = builder.load(a_at(builder, m, p))
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), a_value,
                                                              ir.Constant(ir.IntType(32), 0)),
                                       ir.Constant(vec, ir.Undefined), splat_mask)
        new += [builder.call(fmuladd, [splat, b_row[v], acc[m * vectors_per_row + v]])
                for v in range(vectors_per_row)]
    p_next = builder.add(p, const(1))
    p.add_incoming(const(0), entry)
    p.add_incoming(p_next, builder.block)
    for phi, first, value in zip(acc, start, new):
        phi.add_incoming(first, entry)
        phi.add_incoming(value, builder.block)
    builder.cbranch(builder.icmp_signed("<", p_next, depth), loop, done)

    builder.position_at_end(done)
    results = [builder.phi(vec) for _ in range(n_acc)]
    for result, first, value, slot in zip(results, start, new, slots):
        result.add_incoming(first, entry)
        result.add_incoming(value, loop)
        builder.store(result, slot, align=itemsize)


def _float_arrays(*arrays) -> bool:
    """1-D C-contiguous arrays of one float dtype (the tiles' operands)."""
    return (all(isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" for t in arrays)
            and len({t.dtype for t in arrays}) == 1 and arrays[0].dtype in (types.float32, types.float64))


def _index_args(tables, integers, accumulate) -> bool:
    """Index tables that are 1-D C-contiguous int64 arrays, offsets that are integers and a boolean
    `accumulate` (the gathered tiles' other operands)."""
    return (all(isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == types.int64
                for t in tables)
            and all(isinstance(t, types.Integer) for t in integers) and isinstance(accumulate, types.Boolean))


def _table_rows(builder, tile: CpuTile, a_data, a_start, rows, a_row0):
    """The tile.rows pointers a_data + a_start + rows[a_row0 + m], in LLVM IR: the rows of a where an
    index table puts them (the gathered tiles)."""
    row_at = lambda m: builder.load(builder.gep(rows, [builder.add(a_row0, ir.Constant(a_row0.type, m))]))  # noqa: E731
    return [builder.gep(a_data, [builder.add(a_start, row_at(m))]) for m in range(tile.rows)]


@functools.cache
def make_tile_product(tile: CpuTile):
    """The intrinsic tile_product(a, a_start, a_stride, b, b_start, c, c_start, c_stride, depth, accumulate)
    for a tile of this shape: the tile.rows × NR product of a (tile.rows × depth) and b (depth × NR),
    written into c.

    Equals `tile_product` of tests/naive.py with rows = tile.rows, columns = NR = tile_columns(dtype,
    tile), which spells out where a, b and c hold their elements; a, b, c: 1-D C-contiguous arrays of
    one float dtype. With `accumulate`, the product is added to what c holds (a depth split into slices).
    """

    @intrinsic
    def tile_product(typingctx, a, a_start, a_stride, b, b_start, c, c_start, c_stride, depth, accumulate):
        if not _float_arrays(a, b, c):
            return None
        if not all(isinstance(t, types.Integer) for t in (a_start, a_stride, b_start, c_start, c_stride, depth)):
            return None
        if not isinstance(accumulate, types.Boolean):
            return None
        sig = types.void(a, types.intp, types.intp, b, types.intp, c, types.intp, types.intp, types.intp,
                         types.boolean)
        cols = tile_columns(str(a.dtype), tile)

        def codegen(context, builder, signature, args):
            a_arr, a_start, a_stride, b_arr, b_start, c_arr, c_start, c_stride, depth, accumulate = args
            const = lambda value: ir.Constant(depth.type, value)  # noqa: E731
            data = [context.make_array(signature.args[i])(context, builder, v).data
                    for i, v in ((0, a_arr), (3, b_arr), (5, c_arr))]
            a_rows = [builder.gep(data[0], [builder.add(a_start, builder.mul(a_stride, const(m)))])
                      for m in range(tile.rows)]
            b_ptr = builder.gep(data[1], [b_start])
            _emit_tile(context, builder, tile, context.get_value_type(signature.args[0].dtype), a_rows,
                       lambda bld, p: bld.gep(b_ptr, [bld.mul(p, const(cols))]),
                       builder.gep(data[2], [c_start]), c_stride, depth, accumulate)
            return context.get_dummy_value()

        return sig, codegen

    return tile_product


@functools.cache
def make_gathered_tile_product(tile: CpuTile):
    """The intrinsic gathered_tile_product(a, a_start, a_rows, a_row0, b, b_start, b_steps, c, c_start,
    c_stride, depth, accumulate): tile_product with the rows of a and the steps of b where two index
    tables put them, for products whose operands are never copied into a packed panel (the direct
    convolution of mpdref.kernels.direct_conv reads its patches straight from the padded image, and
    mpdref.kernels.gemm multiplies matrices as they lie):

        c[c_start + m·c_stride + j] (+)= Σ_{p < depth} a[a_start + a_rows[a_row0 + m] + p] · b[b_start + b_steps[p] + j]

    for m < tile.rows, j < NR = tile_columns(dtype, tile). Equals `gathered_tile_product` of
    tests/naive.py. a, b, c: 1-D C-contiguous arrays of one float dtype; a_rows, b_steps: 1-D
    C-contiguous int64 arrays. Unchecked, like tile_product: the callers (direct_conv, gemm) size the
    arrays.
    """

    @intrinsic
    def gathered_tile_product(typingctx, a, a_start, a_rows, a_row0, b, b_start, b_steps, c, c_start, c_stride,
                              depth, accumulate):
        if not (_float_arrays(a, b, c)
                and _index_args((a_rows, b_steps), (a_start, a_row0, b_start, c_start, c_stride, depth), accumulate)):
            return None
        sig = types.void(a, types.intp, a_rows, types.intp, b, types.intp, b_steps, c, types.intp, types.intp,
                         types.intp, types.boolean)

        def codegen(context, builder, signature, args):
            (a_arr, a_start, rows_arr, a_row0, b_arr, b_start, steps_arr, c_arr, c_start, c_stride, depth,
             accumulate) = args
            array = lambda i, v: context.make_array(signature.args[i])(context, builder, v).data  # noqa: E731
            a_data, rows, b_data, steps, c_data = (array(0, a_arr), array(2, rows_arr), array(4, b_arr),
                                                   array(6, steps_arr), array(7, c_arr))
            a_rows = _table_rows(builder, tile, a_data, a_start, rows, a_row0)
            b_ptr = builder.gep(b_data, [b_start])
            _emit_tile(context, builder, tile, context.get_value_type(signature.args[0].dtype), a_rows,
                       lambda bld, p: bld.gep(b_ptr, [bld.load(bld.gep(steps, [p]))]),
                       builder.gep(c_data, [c_start]), c_stride, depth, accumulate)
            return context.get_dummy_value()

        return sig, codegen

    return gathered_tile_product


@functools.cache
def make_term_tile_product(tile: CpuTile):
    """The intrinsic term_tile_product(a, a_start, a_rows, a_row0, b, b_start, terms, t0, c, c_start,
    c_stride, depth, accumulate): gathered_tile_product over a list of terms, each naming where its
    value in a's rows and its run of b lie, for sums that skip terms known to be zero (the direct
    convolution's products with the zero padding, and with the columns of its grid that are
    dropped):

        c[c_start + m·c_stride + j] (+)= Σ_{t < depth} a[a_start + a_rows[a_row0 + m] + terms[2(t0 + t)]]
                                                        · b[b_start + terms[2(t0 + t) + 1] + j]

    for m < tile.rows, j < NR = tile_columns(dtype, tile). Equals `term_tile_product` of
    tests/naive.py. a, b, c: 1-D C-contiguous arrays of one float dtype; a_rows: a 1-D C-contiguous
    int64 array; terms: one of (a offset, b offset) pairs. b_start may be negative where every
    term's b offset brings it back inside b. Unchecked, like tile_product: the caller (direct_conv)
    sizes the arrays.
    """

    @intrinsic
    def term_tile_product(typingctx, a, a_start, a_rows, a_row0, b, b_start, terms, t0, c, c_start, c_stride, depth,
                          accumulate):
        if not (_float_arrays(a, b, c)
                and _index_args((a_rows, terms), (a_start, a_row0, b_start, t0, c_start, c_stride, depth), accumulate)):
            return None
        sig = types.void(a, types.intp, a_rows, types.intp, b, types.intp, terms, types.intp, c, types.intp,
                         types.intp, types.intp, types.boolean)

        def codegen(context, builder, signature, args):
            (a_arr, a_start, rows_arr, a_row0, b_arr, b_start, terms_arr, t0, c_arr, c_start, c_stride, depth,
             accumulate) = args
            const = lambda value: ir.Constant(depth.type, value)  # noqa: E731
            array = lambda i, v: context.make_array(signature.args[i])(context, builder, v).data  # noqa: E731
            a_data, rows, b_data, table, c_data = (array(0, a_arr), array(2, rows_arr), array(4, b_arr),
                                                   array(6, terms_arr), array(8, c_arr))
            a_rows = _table_rows(builder, tile, a_data, a_start, rows, a_row0)
            pairs = builder.gep(table, [builder.mul(t0, const(2))])

            def term(bld, p, which):  # terms[2(t0 + p) + which]
                return bld.load(bld.gep(pairs, [bld.add(bld.mul(p, const(2)), const(which))]))

            b_ptr = builder.gep(b_data, [b_start])
            _emit_tile(context, builder, tile, context.get_value_type(signature.args[0].dtype),
                       lambda bld, m, p: bld.gep(a_rows[m], [term(bld, p, 0)]),
                       lambda bld, p: bld.gep(b_ptr, [term(bld, p, 1)]),
                       builder.gep(c_data, [c_start]), c_stride, depth, accumulate)
            return context.get_dummy_value()

        return sig, codegen

    return term_tile_product


#: the tile of CPU_TILE's shape (see make_tile_product)
tile_product = make_tile_product(CPU_TILE)
#: the gathered tile of CPU_TILE's shape (see make_gathered_tile_product)
gathered_tile_product = make_gathered_tile_product(CPU_TILE)
#: the term-listed tile of CPU_TILE's shape (see make_term_tile_product)
term_tile_product = make_term_tile_product(CPU_TILE)


def _prefetch_intrinsic(locality: int, doc: str):
    @intrinsic
    def prefetch(typingctx, arr, index):
        if not (isinstance(arr, types.Array) and arr.layout == "C" and isinstance(index, types.Integer)):
            return None
        sig = types.void(arr, types.intp)

        def codegen(context, builder, signature, args):
            array, position = args
            pointer = builder.gep(context.make_array(signature.args[0])(context, builder, array).data, [position])
            byte_pointer = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            module = builder.module
            name = "llvm.prefetch.p0i8"
            function = module.globals.get(name) or ir.Function(
                module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), name)
            # (address, read (0), locality 0-3, data cache (1))
            builder.call(function, [builder.bitcast(pointer, byte_pointer), ir.Constant(i32, 0),
                                    ir.Constant(i32, locality), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen

    prefetch.__doc__ = doc
    return prefetch


# llvm.prefetch is a hint and never faults. The hardware prefetcher follows sequential reads
# only: a row read in random order brings each of its lines in as a miss of its own.
prefetch = _prefetch_intrinsic(3, "prefetch(arr, i): bring arr[i]'s cache line into L1 for reading, soon")
prefetch_ahead = _prefetch_intrinsic(2, "prefetch_ahead(arr, i): bring arr[i]'s line into L2 for reading, later")
