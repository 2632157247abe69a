"""The LLVM-IR intrinsics of ``numba_cpu``'s micro-kernels: register tiles of FMAs, stack tiles, prefetches.

Written as LLVM vector IR because Numba's pipeline vectorises only innermost loops (its SLP vectoriser is off),
which cannot keep a tile of accumulators in registers across the input-channel loop. One *panel vector* is
``panel_bytes`` (a literal argument: :attr:`.blocking.Blocking.panel_bytes`, 64 on AVX2, 128 on AVX-512) of
float32 or float64 lanes; LLVM legalises it into the target's registers (two ymm or two zmm), so every row's
kernels compute (bitwise the same) on every x86-64 host, fast only on their own. The offsets of a tile's pixels
are tuples of a literal length (:func:`offsets_from`, :func:`strided`), so one body is generated per tile shape.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "fma_panel",
    "fma_panel_out",
    "fma_panel_pairs_out",
    "fma_panel_taps",
    "offsets_from",
    "prefetch",
    "stack_tile",
    "strided",
    "transpose_runs",
]


@intrinsic
def stack_tile(typingctx, like, size):
    """A pointer to ``size`` (a literal) elements of ``like``'s type on the stack, allocated once per call in the
    function's entry block (so once per thread in a parallel region): ``blocked_direct``'s accumulator tile,
    with no heap allocation per work item."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(like), size=context.get_constant(types.intp, count))

    return types.CPointer(like)(like, size), codegen


def _vector_type(context, dtype, panel_bytes):
    """One panel vector of ``dtype`` (``panel_bytes // itemsize`` lanes) and its element width in bytes."""
    width = dtype.bitwidth // 8
    return ir.VectorType(context.get_value_type(dtype), panel_bytes // width), width


def _vector_at(builder, vector, base, offset):
    return builder.bitcast(builder.gep(base, [offset]), vector.as_pointer())


def _panel_sums(
    context, builder, starts, w_p, w_start, w_step, x_p, x_offsets, x_step, count, dtype, panel_bytes, taps=None
):
    """The IR of the micro-kernels' channel loop: register ``p`` starts at ``starts[p]`` and gets
    ``Σ_{k < count} x[x_offsets[p] + k·x_step] · w[w_start + k·w_step : +L]`` (one FMA per product, ``k`` ascending);
    returns the final vectors. With ``taps = (w_starts, x_shifts, first, number)`` (pointers to int64 and two
    indices) that sum runs once per tap ``t`` from ``first`` to ``first + number - 1``, in that order, with
    ``w_start`` moved by ``w_starts[t]`` and every ``x_offsets[p]`` by ``x_shifts[t]``: the registers stay live
    across the taps."""
    vector, width = _vector_type(context, dtype, panel_bytes)
    lanes = vector.count
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.v{lanes}f{8 * width}"
    )
    registers = []
    for start in starts:
        register = cgutils.alloca_once(builder, vector)  # promoted to a register by mem2reg
        builder.store(start, register)
        registers.append(register)
    undefined = ir.Constant(vector, ir.Undefined)
    lane0 = ir.Constant(ir.IntType(32), 0)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)

    def channel_loop(w_start, x_offsets):
        with cgutils.for_range(builder, count) as loop:
            w = builder.load(
                _vector_at(builder, vector, w_p, builder.add(w_start, builder.mul(loop.index, w_step))), align=width
            )
            step = builder.mul(loop.index, x_step)
            for offset, register in zip(x_offsets, registers):
                value = builder.load(builder.gep(x_p, [builder.add(offset, step)]))
                broadcast = builder.shuffle_vector(builder.insert_element(undefined, value, lane0), undefined, splat)
                builder.store(builder.call(fma, [broadcast, w, builder.load(register)]), register)

    if taps is None:
        channel_loop(w_start, x_offsets)
    else:
        w_starts, x_shifts, first, number = taps
        with cgutils.for_range(builder, number) as tap:
            t = builder.add(first, tap.index)
            shift = builder.load(builder.gep(x_shifts, [t]))
            tap_w = builder.add(w_start, builder.load(builder.gep(w_starts, [t])))
            channel_loop(tap_w, [builder.add(o, shift) for o in x_offsets])
    return [builder.load(register) for register in registers]


def _accumulate(context, builder, a, dtype, panel_bytes, operands, taps=None):
    """The IR of an in-place register tile: the accumulators at ``a``'s array 0 and offsets 1 loaded, summed by
    :func:`_panel_sums` over ``operands`` (``w, w_start, w_step, x, x_offsets, x_step, count``; ``taps`` as
    there) and stored back."""
    vector, width = _vector_type(context, dtype, panel_bytes)
    homes = [_vector_at(builder, vector, a.data(0), offset) for offset in a.indices(1)]
    starts = [builder.load(home, align=width) for home in homes]
    w, w_start, w_step, x, x_offsets, x_step, count = operands
    sums = _panel_sums(
        context, builder, starts, w, w_start, w_step, x, x_offsets, x_step, count, dtype, panel_bytes, taps
    )
    for home, value in zip(homes, sums):
        builder.store(value, home, align=width)
    return context.get_dummy_value()


def _panel_types_ok(arrays, starts, dtype, panel_bytes):
    return (
        isinstance(panel_bytes, types.IntegerLiteral)
        and panel_bytes.literal_value % 16 == 0
        and all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == dtype for a in arrays)
        and dtype in (types.float32, types.float64)
        and all(isinstance(t, types.UniTuple) and isinstance(t.dtype, types.Integer) for t in starts)
    )


class _Args:
    """An intrinsic's arguments in codegen: ``data(i)`` an array's pointer, ``index(i)`` an integer as intp,
    ``indices(i)`` a tuple of integers as intp values."""

    def __init__(self, context, builder, signature, args):
        self.context, self.builder, self.types, self.values = context, builder, signature.args, args

    def data(self, i):
        return self.context.make_array(self.types[i])(self.context, self.builder, self.values[i]).data

    def index(self, i):
        return self.context.cast(self.builder, self.values[i], self.types[i], types.intp)

    def indices(self, i):
        ty = self.types[i]
        return [
            self.context.cast(self.builder, v, ty.dtype, types.intp)
            for v in cgutils.unpack_tuple(self.builder, self.values[i], ty.count)
        ]


@intrinsic
def prefetch(typingctx, array, index):
    """A hint to fetch the cache line of ``array.flat[index]`` (``llvm.prefetch``, for reading, into all
    levels): for access patterns the hardware prefetchers miss, such as a stride of several KB. The index need
    not be in bounds (a prefetch never faults)."""
    if not (isinstance(array, types.Array) and array.layout == "C" and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        byte = ir.IntType(8).as_pointer()
        signature_ = ir.FunctionType(ir.VoidType(), [byte] + [ir.IntType(32)] * 3)
        hint = cgutils.get_or_insert_function(builder.module, signature_, "llvm.prefetch.p0i8")
        flag = [ir.Constant(ir.IntType(32), value) for value in (0, 3, 1)]  # read, keep in all levels, data
        builder.call(hint, [builder.bitcast(builder.gep(a.data(0), [a.index(1)]), byte), *flag])
        return context.get_dummy_value()

    return types.none(array, index), codegen


@intrinsic
def transpose_runs(typingctx, source, start, start_step, target, target_start, target_step, rows, cols):
    """``target.flat[target_start + c·target_step + r] = source.flat[start + r·start_step + c]`` for ``r < rows``,
    ``c < cols`` (both literals): a ``rows × cols`` block transposed into ``cols`` runs of ``rows``, as vector loads
    (one when ``start_step`` is the literal ``cols``, the block contiguous; else one per row, ``rows`` a power of
    two), ``cols`` shuffles and ``cols`` vector stores (LLVM lowers the shuffles to the target's permutes), where
    scalar code would issue a load and a store per element. The weight panels (a row of lanes × taps split into one
    run per tap), the input made channels-last (channels × pixels blocks of an NCHW row) and ``blocked_direct``'s
    NCHW write-out (pixels × channels blocks of its accumulator tile). Arrays C-contiguous, of one dtype; indices
    in bounds (not checked)."""
    if not (
        isinstance(source, types.Array)
        and isinstance(target, types.Array)
        and source.layout == target.layout == "C"
        and source.dtype == target.dtype
        and isinstance(source.dtype, types.Float)
        and isinstance(rows, types.IntegerLiteral)
        and isinstance(cols, types.IntegerLiteral)
        and all(isinstance(t, types.Integer) for t in (start, start_step, target_start, target_step))
    ):
        return None
    count_r, count_c = rows.literal_value, cols.literal_value
    contiguous = isinstance(start_step, types.IntegerLiteral) and start_step.literal_value == count_c
    if not contiguous and count_r & (count_r - 1):
        return None

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        element = context.get_value_type(source.dtype)
        width = source.dtype.bitwidth // 8
        block = ir.VectorType(element, count_r * count_c)
        run = ir.VectorType(element, count_r)
        if contiguous:
            values = builder.load(_vector_at(builder, block, a.data(0), a.index(1)), align=width)
        else:  # the rows loaded one by one and concatenated pairwise
            row = ir.VectorType(element, count_c)
            parts = [
                builder.load(
                    _vector_at(
                        builder, row, a.data(0), builder.add(a.index(1), builder.mul(a.index(2), _intp(context, r)))
                    ),
                    align=width,
                )
                for r in range(count_r)
            ]
            while len(parts) > 1:
                size = parts[0].type.count
                both = ir.Constant(ir.VectorType(ir.IntType(32), 2 * size), list(range(2 * size)))
                parts = [builder.shuffle_vector(parts[i], parts[i + 1], both) for i in range(0, len(parts), 2)]
            values = parts[0]
        undefined = ir.Constant(block, ir.Undefined)
        for c in range(count_c):
            mask = ir.Constant(ir.VectorType(ir.IntType(32), count_r), [r * count_c + c for r in range(count_r)])
            offset = builder.add(a.index(4), builder.mul(a.index(5), _intp(context, c)))
            builder.store(
                builder.shuffle_vector(values, undefined, mask),
                _vector_at(builder, run, a.data(3), offset),
                align=width,
            )
        return context.get_dummy_value()

    return types.none(source, start, start_step, target, target_start, target_step, rows, cols), codegen


def _intp(context, value):
    return context.get_constant(types.intp, value)


@intrinsic
def fma_panel(typingctx, acc, acc_starts, weights, w_start, w_step, x, x_starts, x_step, count, panel_bytes):
    """The register-blocked micro-kernel: for each of the ``P = len(x_starts)`` pixels ``p`` and the ``L`` lanes
    of one panel vector of ``panel_bytes`` (a literal; 64: 16 float32 or 8 float64 output channels ``l``),

        acc.flat[acc_starts[p] + l] += Σ_{k < count} x.flat[x_starts[p] + k·x_step]
                                                     · weights.flat[w_start + k·w_step + l],

    one fused multiply-add per product, ``k`` (the input channel) ascending. The ``P`` accumulator vectors are
    loaded once, stay in registers for the whole ``k`` loop (each step: one weight-vector load, ``P`` broadcast
    inputs, ``P`` FMAs) and are stored once. Written as LLVM vector IR because Numba's pipeline vectorises only
    innermost loops (its SLP vectoriser is off), which cannot keep a tile in registers across the channel loop.
    The arrays must be C-contiguous; offsets are flat element indices, in bounds (not checked)."""
    if not (
        _panel_types_ok((acc, weights, x), (acc_starts, x_starts), acc.dtype, panel_bytes)
        and acc_starts.count == x_starts.count
    ):
        return None

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        operands = (a.data(2), a.index(3), a.index(4), a.data(5), a.indices(6), a.index(7), a.index(8))
        return _accumulate(context, builder, a, acc.dtype, panel_bytes.literal_value, operands)

    return types.none(acc, acc_starts, weights, w_start, w_step, x, x_starts, x_step, count, panel_bytes), codegen


@intrinsic
def fma_panel_taps(
    typingctx,
    acc,
    acc_starts,
    weights,
    w_start,
    w_starts,
    w_step,
    x,
    x_starts,
    x_shifts,
    x_step,
    count,
    first,
    taps,
    panel_bytes,
):
    """:func:`fma_panel` over several taps with the accumulators in registers throughout: for ``t`` from ``first``
    to ``first + taps - 1`` in turn, ``acc.flat[acc_starts[p] + l] += Σ_{k < count} x.flat[x_starts[p] +
    x_shifts[t] + k·x_step] · weights.flat[w_start + w_starts[t] + k·w_step + l]`` (``k`` ascending, one FMA per
    product): bitwise the same as one :func:`fma_panel` per tap, without storing and reloading the tile between taps, as
    direct convolutions keep it across ``(kh, kw, ci)`` (oneDNN's ``jit_avx2_conv`` kernels). ``w_starts`` and
    ``x_shifts`` are int64 arrays indexed by tap; the other arguments as :func:`fma_panel`'s."""
    if not (
        _panel_types_ok((acc, weights, x), (acc_starts, x_starts), acc.dtype, panel_bytes)
        and acc_starts.count == x_starts.count
        and all(
            isinstance(a, types.Array) and a.layout == "C" and a.ndim == 1 and a.dtype == types.int64
            for a in (w_starts, x_shifts)
        )
        and all(isinstance(i, types.Integer) for i in (w_start, first, taps))
    ):
        return None

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        operands = (a.data(2), a.index(3), a.index(5), a.data(6), a.indices(7), a.index(9), a.index(10))
        taps = (a.data(4), a.data(8), a.index(11), a.index(12))
        return _accumulate(context, builder, a, acc.dtype, panel_bytes.literal_value, operands, taps)

    return (
        types.none(
            acc,
            acc_starts,
            weights,
            w_start,
            w_starts,
            w_step,
            x,
            x_starts,
            x_shifts,
            x_step,
            count,
            first,
            taps,
            panel_bytes,
        ),
        codegen,
    )


@intrinsic
def fma_panel_out(
    typingctx, y, y_starts, bias, bias_start, weights, w_start, w_step, x, x_starts, x_step, count, panel_bytes
):
    """:func:`fma_panel` with its accumulators starting at +0.0 and written out with a bias:
    ``y.flat[y_starts[p] + l] = (Σ_{k < count} x.flat[x_starts[p] + k·x_step] · weights.flat[w_start + k·w_step + l])
    + bias.flat[bias_start + l]``, the sum as there (from +0.0, ``k`` ascending, one FMA per product). For outputs
    whose ``L`` channels are one contiguous run (channels-last), so no tile is zeroed, loaded or copied."""
    if not (
        _panel_types_ok((y, bias, weights, x), (y_starts, x_starts), y.dtype, panel_bytes)
        and y_starts.count == x_starts.count
    ):
        return None

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        vector, width = _vector_type(context, y.dtype, panel_bytes.literal_value)
        zero = ir.Constant(vector, [0.0] * vector.count)
        sums = _panel_sums(
            context,
            builder,
            [zero] * x_starts.count,
            a.data(4),
            a.index(5),
            a.index(6),
            a.data(7),
            a.indices(8),
            a.index(9),
            a.index(10),
            y.dtype,
            panel_bytes.literal_value,
        )
        addend = builder.load(_vector_at(builder, vector, a.data(2), a.index(3)), align=width)
        for offset, value in zip(a.indices(1), sums):
            builder.store(builder.fadd(value, addend), _vector_at(builder, vector, a.data(0), offset), align=width)
        return context.get_dummy_value()

    return (
        types.none(y, y_starts, bias, bias_start, weights, w_start, w_step, x, x_starts, x_step, count, panel_bytes),
        codegen,
    )


@intrinsic
def fma_panel_pairs_out(
    typingctx, y, y_starts, quarters, bias, bias_at, weights, w_start, w_step, x, x_starts, x_step, count, panel_bytes
):
    """:func:`fma_panel` for pairs of rows whose lanes interleave in the output (NCHW, kernel width 2: the
    columns ``2j`` and ``2j + 1`` of an output row): with ``s_p = Σ_{k < count} x.flat[x_starts[p] + k·x_step] ·
    weights.flat[w_start + k·w_step + l]`` (from +0.0, ``k`` ascending, one FMA per product) and pair ``q`` being
    the rows ``2q, 2q + 1``, the ``2L`` interleaved values ``s_2q[0] + b, s_2q+1[0] + b, s_2q[1] + b, …`` (``b =
    bias[bias_at[q]]``) stored as four runs of ``L/2`` (one vector register each), run ``r`` at ``y.flat[y_starts[q]
    + quarters[r]]``: one run of ``2L`` when ``quarters`` is ``(0, L/2, L, 3L/2)``; else the panel's pixels are four
    runs of input columns, a quarter of them each, whose outputs lie apart (rows of 4, 8 or 28 pixels)."""
    if not (
        _panel_types_ok((y, bias, weights, x), (y_starts, bias_at, x_starts), y.dtype, panel_bytes)
        and isinstance(quarters, types.UniTuple)
        and quarters.count == 4
        and isinstance(quarters.dtype, types.Integer)
        and x_starts.count == 2 * y_starts.count == 2 * bias_at.count
    ):
        return None

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        vector, width = _vector_type(context, y.dtype, panel_bytes.literal_value)
        lanes = vector.count
        pair = ir.VectorType(vector.element, 2 * lanes)
        zero = ir.Constant(vector, [0.0] * lanes)
        sums = _panel_sums(
            context,
            builder,
            [zero] * x_starts.count,
            a.data(5),
            a.index(6),
            a.index(7),
            a.data(8),
            a.indices(9),
            a.index(10),
            a.index(11),
            y.dtype,
            panel_bytes.literal_value,
        )
        interleave = ir.Constant(
            ir.VectorType(ir.IntType(32), 2 * lanes), [lane // 2 + (lane % 2) * lanes for lane in range(2 * lanes)]
        )
        splat = ir.Constant(ir.VectorType(ir.IntType(32), 2 * lanes), [0] * (2 * lanes))
        run = lanes // 2
        runs = [ir.Constant(ir.VectorType(ir.IntType(32), run), list(range(r * run, (r + 1) * run))) for r in range(4)]
        quarter = ir.VectorType(vector.element, run)
        undefined = ir.Constant(pair, ir.Undefined)
        starts = a.indices(2)
        for q, (offset, at) in enumerate(zip(a.indices(1), a.indices(4))):
            value = builder.load(builder.gep(a.data(3), [at]))
            addend = builder.shuffle_vector(
                builder.insert_element(undefined, value, ir.Constant(ir.IntType(32), 0)), undefined, splat
            )
            both = builder.fadd(builder.shuffle_vector(sums[2 * q], sums[2 * q + 1], interleave), addend)
            for lanes_of_run, start in zip(runs, starts):
                target = builder.bitcast(builder.gep(a.data(0), [builder.add(offset, start)]), quarter.as_pointer())
                builder.store(builder.shuffle_vector(both, undefined, lanes_of_run), target, align=width)
        return context.get_dummy_value()

    return (
        types.none(
            y, y_starts, quarters, bias, bias_at, weights, w_start, w_step, x, x_starts, x_step, count, panel_bytes
        ),
        codegen,
    )


def _offsets_ok(count, *integers):
    return isinstance(count, types.IntegerLiteral) and all(isinstance(t, types.Integer) for t in integers)


@intrinsic
def offsets_from(typingctx, array, start, add, count):
    """``(array[start] + add, …, array[start + count - 1] + add)``, a tuple of ``count`` (a literal) intp: a
    register tile's gathered pixel offsets. Indices in bounds (not checked)."""
    if not (
        isinstance(array, types.Array)
        and array.ndim == 1
        and isinstance(array.dtype, types.Integer)
        and array.layout == "C"
        and _offsets_ok(count, start, add)
    ):
        return None
    tuple_type = types.UniTuple(types.intp, count.literal_value)

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        base, first, shift = a.data(0), a.index(1), a.index(2)
        values = [
            builder.add(
                context.cast(
                    builder,
                    builder.load(builder.gep(base, [builder.add(first, context.get_constant(types.intp, t))])),
                    array.dtype,
                    types.intp,
                ),
                shift,
            )
            for t in range(tuple_type.count)
        ]
        return context.make_tuple(builder, tuple_type, values)

    return tuple_type(array, start, add, count), codegen


@intrinsic
def strided(typingctx, start, step, count):
    """``(start, start + step, …, start + (count - 1)·step)``, a tuple of ``count`` (a literal) intp."""
    if not _offsets_ok(count, start, step):
        return None
    tuple_type = types.UniTuple(types.intp, count.literal_value)

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        first, stride = a.index(0), a.index(1)
        values = [
            builder.add(first, builder.mul(stride, context.get_constant(types.intp, t)))
            for t in range(tuple_type.count)
        ]
        return context.make_tuple(builder, tuple_type, values)

    return tuple_type(start, step, count), codegen
