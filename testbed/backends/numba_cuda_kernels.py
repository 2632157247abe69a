"""The numba.cuda kernels of the ``numba_cuda*`` backends: pure loops over the arrays they are given.

Semantics (PyTorch's, see ``testbed.api.conv_transpose2d``)::

    y[n, g·Co_g + co, ih·s - p + kh·d, iw·s - p + kw·d] += x[n, g·Ci_g + ci, ih, iw] · W[g·Ci_g + ci, co, kh, kw]

Gather form (one output element at a time): output row ``o`` receives tap ``kh`` iff
``kh·d ≡ o + p (mod s)``, from input row ``(o + p - kh·d) / s``. With ``g = gcd(s, d)`` a tap exists only if
``g`` divides ``(o + p) mod s``; the first one is ``kh0 = ((o + p) mod s / g) · inv(d/g mod s/g) mod s/g``,
and the others follow every ``s/g`` taps while the input row steps back by ``d/g`` (the phase-aware loop
of the reference notes, section (b) row 2: exactly the useful multiply-adds, no modulo test per tap).
The wrapper (``numba_cuda``) precomputes ``g`` and the modular inverse per axis.

Spatial ranks: every kernel here is 2-D except ``gather3d``, the same gather over a depth axis too (each axis
has its own ``phase_taps``; ``y[n, co, od, oh, ow]`` sums ``x[n, ci, id, ih, iw]·W[ci, co, kd, kh, kw]``). It and
``gather`` share the micro-kernel ``plane_sum`` (the row × column × channel loops), inlined, so ``gather``'s
PTX is what it was before ``gather3d`` existed. A 1-D problem reaches the 2-D kernels as one row
(``numba_cuda.as_rank``): with ``H = kH = 1`` each output has its one row tap, and nothing else changes.

Backward (issue 24; ``numba_cuda`` only), gathers as well, so no atomics and a fixed summation order (bitwise
repeatable). With ``o = i·s - p + k·d`` per axis:

* ``backward_data`` (``backward_data3d``): one thread per ``grad_input[n, ci, i]``, summing
  ``grad_output[n, g·Co + co, o] · W[ci, co, k]`` over the taps ``k`` whose ``o`` lies inside the output and the
  ``co`` of the group: the strided convolution, the forward's gather seen from the input side;
* ``backward_weight`` (``backward_weight3d``): one thread per ``grad_weight[ci, co, k]``, summing
  ``grad_output[n, g·Co + co, o] · x[n, ci, i]`` over the inputs ``i`` whose ``o`` lies inside the output and the
  images ``n``.

Both walk one axis's range with ``reach_span`` (the taps, resp. inputs, landing inside the output: a contiguous
range, found by two divisions) and sum with the forward's ``plane_sum``, whose row/column walk steps the
position it reads by ``-step`` per tap: the forward walks its input down (``+d/g``), the backward kernels walk
the output up (a negative int32 step: ``-d`` per tap, resp. ``-s`` per input). ``plane_sum``'s channel loop
runs over the group's output channels (data gradient) or over the images (weight gradient); 3-D adds a depth
loop outside it, as ``gather3d`` does. The summation order is rows, columns, then channels (or images)
innermost, after depth.

Signed zeros as PyTorch's CPU kernels give them: every sum starts from ``+0.0`` and the bias is added
last, ``y = (+0 + Σ products) + bias``, so an output is never ``-0.0``.

**32-bit index arithmetic.** Every array arrives flattened to 1-D (C order) and every extent as a ``uint32``
(the tuples ``shape``, ``geometry`` and ``gather3d``'s ``depth``, in :mod:`.numba_cuda_layout`'s field order);
all index maths is unsigned 32-bit, so no signed floor-division fix-ups, no negative-index wrap-around and no
64-bit division subroutines (which cost 64-bit kernels 120–224 registers). Numba widens integer arithmetic to
64 bits, so every variable, division operand and array index is cast back with ``u32(...)``; NVVM then narrows
the operations themselves to 32 bits. Loops are ``while`` loops up to a uint32 bound: numba's ``range`` keeps
a trip count and a counter besides the offsets (and divides when it has a step), which cost the gather 16
registers and the tiled kernel 20–40 more. The host wrapper declares any problem whose element counts or index
extents do not fit in int32 unsupported (``numba_cuda.index_limit_reason``), so the arithmetic never wraps.
Differences are taken only after a comparison, so unsigned values never go below 0; the exceptions, halo and
input positions that step down tap by tap, are int32 (their step after the last tap may pass 0, unused).
64-bit operations left: the first-tap product in ``phase_taps`` and the tiled kernel's per-row steps (which
wrap explicitly).

Each kernel exists once per dtype (``KERNELS[name][dtype]`` is the plain Python function, kept reachable
for ``numba.cuda.compile_ptx``): the factory closes over the numba scalar type so that accumulators are
in the data's own precision (a bare ``0.0`` literal would promote float32 sums to float64).
This module imports ``numba.cuda``; the backend module imports it only on first use.
"""

import numba
import numpy as np
from numba import cuda

from .numba_cuda_layout import TILE

#: Threads per block of ``tiled_gather``: one per output element of a TILE×TILE block.
TILE_THREADS = TILE * TILE

# Casts: numpy's compile to the same code as numba.uint32(...) and run 4× faster in the simulator.
# Constants used in kernels are typed too: a bare int literal is int64, and uint64 op int64 is float64.
u32, u64, i32 = np.uint32, np.uint64, np.int32
ZERO, ONE, TILE_U32, TILE_THREADS_U32 = u32(0), u32(1), u32(TILE), u32(TILE_THREADS)


# inline="always" inlines at numba's IR level, so compile_ptx needs no device to compile the callers
@cuda.jit(device=True, inline="always")
def phase_taps(shifted, stride, dilation, gcd, inverse, kernel, in_len):
    """Taps of one axis hitting output ``o`` (``shifted = o + p``): ``(first tap, its input index, count)``;
    tap ``j`` is ``first + j·s/g`` reading input ``index - j·d/g``. All uint32."""
    none = (ZERO, ZERO, ZERO)
    residue = u32(shifted % stride)
    if residue % gcd != ZERO:
        return none
    tap_step = u32(stride // gcd)
    # (residue/g)·inv < (s/g)² may pass 2³²: the one product taken in 64 bits
    first = u32(u64(residue // gcd) * u64(inverse) % u64(tap_step))
    if first >= kernel:
        return none
    reach = u32(first * dilation)  # < kH·d: within the extent the host checked
    if reach > shifted:
        return none
    index = u32(u32(shifted - reach) // stride)
    in_step = u32(dilation // gcd)
    # taps j = 0..last stay inside the kernel and at input index >= 0; those before `skip` read past the end
    last = min(u32(u32(kernel - ONE - first) // tap_step), u32(index // in_step))
    skip = ZERO
    if index >= in_len:
        skip = u32(u32(index - in_len) // in_step + ONE)
    if skip > last:
        return none
    return u32(first + skip * tap_step), u32(index - skip * in_step), u32(last - skip + ONE)


@cuda.jit(device=True, inline="always")
def reach_span(position, step, padding, count, out_len):
    """The ``j < count`` whose canvas position ``position + j·step`` lands in the output, i.e.
    ``padding <= position + j·step < padding + out_len``: a contiguous range ``[first, end)``, returned as
    ``(first, its output index position + first·step - padding, end)``; ``(0, 0, 0)`` when none. The backward
    kernels' walk of one axis: the taps of an input (``position = i·s``, ``step = d``, ``count = k``) or the
    inputs of a tap (``position = k·d``, ``step = s``, ``count = in_len``). All uint32, every value below
    ``out_len + 2·padding + step`` (the extent the host checked)."""
    first = ZERO
    if position < padding:
        first = u32(u32(padding - position + step - ONE) // step)
    limit = u32(padding + out_len)
    end = ZERO
    if position < limit:
        end = min(count, u32(u32(limit - position - ONE) // step + ONE))
    if first >= end:
        return ZERO, ZERO, ZERO
    return first, u32(position + first * step - padding), end


@cuda.jit(device=True, inline="always")
def halo_span(origin, tap_lo, tap_hi, stride, dilation, in_len):
    """Input indices ``[lo, end)`` that the TILE outputs from ``origin - p`` (``origin = o0 + p``) read
    through taps ``[tap_lo, tap_hi)``: ``(origin - (tap_hi-1)·d) // s`` up to
    ``(origin + TILE-1 - tap_lo·d) // s``, clamped to ``[0, in_len)``; ``end <= lo`` when none."""
    reach = u32((tap_hi - ONE) * dilation)
    lo = ZERO
    if origin > reach:
        lo = u32(u32(origin - reach) // stride)
    last_origin = u32(origin + TILE_U32 - ONE)
    reach = u32(tap_lo * dilation)
    end = ZERO
    if last_origin >= reach:
        end = min(u32(u32(last_origin - reach) // stride + ONE), in_len)
    return lo, end


@cuda.jit(device=True, inline="always")
def chunk_taps(first, count, tap_step, lo, hi):
    """``(j_lo, j_hi)``: a thread's taps ``first + j·tap_step`` (``j < count``) inside the chunk
    ``[lo, hi)`` are those with ``j_lo <= j < j_hi``."""
    j_lo = ZERO
    if first < lo:
        j_lo = u32(u32(lo - first + tap_step - ONE) // tap_step)
    j_hi = ZERO
    if hi > first:
        j_hi = min(count, u32(u32(hi - first + tap_step - ONE) // tap_step))
    return j_lo, j_hi


@cuda.jit(device=True, inline="always")
def plane_sum(x, weight, acc, x_base, w_base, row_taps, col_taps, widths, channels):
    """``acc`` plus the products one output element receives through one plane of taps (all of a 2-D kernel;
    one depth tap of a 3-D one): for every row tap ``kh`` (reading input row ``ih``) and column tap ``kw``
    (input column ``iw``), ``Σ_ci x[x_base + ci·x_step + ih·W + iw] · weight[w_base + ci·w_step + kh·kW + kw]``
    over the input channels of the group. The micro-kernel that ``gather`` and ``gather3d`` share.

    ``row_taps = (kh, kh_end, tap step, ih, input step)`` (int32 ``ih``: it steps down once more after the
    last tap, possibly below 0; ``ih`` moves by minus the input step per tap: the forward passes ``d/g`` as
    uint32, the backward kernels a negative int32, which walks up), ``col_taps`` alike, ``widths = (W, kW)``,
    ``channels = (x_span, x_step, w_step)``: the input offsets of the group's channels span ``x_span``; offsets
    in the plane and channel steps as the caller lays them out."""
    kh, kh_end, tap_step_h, ih, in_step_h = row_taps
    kw_first, kw_end, tap_step_w, iw_first, in_step_w = col_taps
    in_w, kernel_w = widths
    x_span, x_step, w_step = channels
    while kh < kh_end:
        kw, iw = kw_first, iw_first
        while kw < kw_end:
            x_at = u32(x_base + ih * in_w + iw)
            w_at = u32(w_base + kh * kernel_w + kw)
            x_end = u32(x_at + x_span)
            while x_at < x_end:
                acc += x[x_at] * weight[w_at]
                x_at = u32(x_at + x_step)
                w_at = u32(w_at + w_step)
            kw = u32(kw + tap_step_w)
            iw = i32(iw - in_step_w)
        kh = u32(kh + tap_step_h)
        ih = i32(ih - in_step_h)
    return acc


def _make_kernels(scalar):
    """The kernels for one numba scalar type (float32 or float64)."""

    def gather(x, weight, bias, y, has_bias, shape, geometry):
        """One thread per output element ``y[n, co, oh, ow]``, visiting only the taps that reach it;
        the bias is added after the sum, as in the definition. No atomics: bitwise deterministic."""
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group, kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, gh, gw, inv_h, inv_w = geometry
        i = u32(cuda.grid(1))
        if i >= y.size:
            return
        ow, rest = u32(i % out_w), u32(i // out_w)
        oh, rest = u32(rest % out_h), u32(rest // out_h)
        co, n = u32(rest % out_channels), u32(rest // out_channels)
        group = u32(co // out_per_group)
        co_in_group = u32(co - group * out_per_group)
        ci_first = u32(group * in_per_group)

        kh, ih_first, count_h = phase_taps(u32(oh + ph), sh, dh, gh, inv_h, kernel_h, in_h)
        kw_first, iw_first, count_w = phase_taps(u32(ow + pw), sw, dw, gw, inv_w, kernel_w, in_w)
        tap_step_h, tap_step_w = u32(sh // gh), u32(sw // gw)
        in_step_h, in_step_w = u32(dh // gh), u32(dw // gw)
        x_step = u32(in_h * in_w)  # offset steps per input channel
        w_step = u32(out_per_group * kernel_h * kernel_w)
        x_base = u32((n * in_channels + ci_first) * x_step)
        w_base = u32((ci_first * out_per_group + co_in_group) * kernel_h * kernel_w)
        # int32: the input row/column steps down once more after the last tap, possibly below 0
        row_taps = (kh, u32(kh + count_h * tap_step_h), tap_step_h, i32(ih_first), in_step_h)
        col_taps = (kw_first, u32(kw_first + count_w * tap_step_w), tap_step_w, i32(iw_first), in_step_w)
        channels = (u32(in_per_group * x_step), x_step, w_step)
        acc = plane_sum(x, weight, scalar(0), x_base, w_base, row_taps, col_taps, (in_w, kernel_w), channels)
        if has_bias:
            acc += bias[co]
        y[i] = acc

    def gather3d(x, weight, bias, y, has_bias, shape, geometry, depth):
        """``gather`` over three spatial axes: one thread per output element ``y[n, co, od, oh, ow]``, each
        depth tap that reaches it (``phase_taps`` per axis, as for rows and columns) adding one plane of taps
        (``plane_sum``); the bias after the sum. ``shape`` and ``geometry`` hold the H and W axes (C-order
        offsets use ``D·H·W`` per channel), ``depth`` the D axis. No atomics: bitwise deterministic."""
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group, kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, gh, gw, inv_h, inv_w = geometry
        in_d, out_d, kernel_d, sd, pd, dd, gd, inv_d = depth
        i = u32(cuda.grid(1))
        if i >= y.size:
            return
        ow, rest = u32(i % out_w), u32(i // out_w)
        oh, rest = u32(rest % out_h), u32(rest // out_h)
        od, rest = u32(rest % out_d), u32(rest // out_d)
        co, n = u32(rest % out_channels), u32(rest // out_channels)
        group = u32(co // out_per_group)
        co_in_group = u32(co - group * out_per_group)
        ci_first = u32(group * in_per_group)

        kd, id_first, count_d = phase_taps(u32(od + pd), sd, dd, gd, inv_d, kernel_d, in_d)
        kh, ih_first, count_h = phase_taps(u32(oh + ph), sh, dh, gh, inv_h, kernel_h, in_h)
        kw, iw_first, count_w = phase_taps(u32(ow + pw), sw, dw, gw, inv_w, kernel_w, in_w)
        tap_step_d, tap_step_h, tap_step_w = u32(sd // gd), u32(sh // gh), u32(sw // gw)
        in_step_d, in_step_h, in_step_w = u32(dd // gd), u32(dh // gh), u32(dw // gw)
        in_plane, kernel_plane = u32(in_h * in_w), u32(kernel_h * kernel_w)
        x_step = u32(in_d * in_plane)  # offset steps per input channel
        w_step = u32(out_per_group * kernel_d * kernel_plane)
        x_base = u32((n * in_channels + ci_first) * x_step)
        w_base = u32((ci_first * out_per_group + co_in_group) * kernel_d * kernel_plane)
        # int32: the input slice/row/column steps down once more after the last tap, possibly below 0
        row_taps = (kh, u32(kh + count_h * tap_step_h), tap_step_h, i32(ih_first), in_step_h)
        col_taps = (kw, u32(kw + count_w * tap_step_w), tap_step_w, i32(iw_first), in_step_w)
        channels = (u32(in_per_group * x_step), x_step, w_step)
        acc = scalar(0)
        i_d = i32(id_first)
        kd_end = u32(kd + count_d * tap_step_d)
        while kd < kd_end:
            x_plane = u32(x_base + i_d * in_plane)
            w_plane = u32(w_base + kd * kernel_plane)
            acc = plane_sum(x, weight, acc, x_plane, w_plane, row_taps, col_taps, (in_w, kernel_w), channels)
            kd = u32(kd + tap_step_d)
            i_d = i32(i_d - in_step_d)
        if has_bias:
            acc += bias[co]
        y[i] = acc

    def fill_zero(y):
        """``y[:] = +0.0``: the starting value of the atomic scatter (PyTorch's sums start from +0)."""
        i = u32(cuda.grid(1))
        if i < y.size:
            y[i] = scalar(0)

    def add_bias(bias, y, out_channels, plane):
        """``y[n, co, :, :] += bias[co]`` (``plane = H_out·W_out``): the bias after the scattered sum."""
        i = u32(cuda.grid(1))
        if i < y.size:
            y[i] += bias[u32(i // plane) % out_channels]

    def scatter_atomic(x, weight, y, shape, geometry):
        """One thread per (input element, output channel of its group): its kH·kW products are
        ``cuda.atomic.add``-ed into the zero-filled output (the bias follows in ``add_bias``). The order
        in which threads add into one element is the hardware's, so float results vary from run to run
        (cuDNN ALGO_0)."""
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group, kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, _, _, _, _ = geometry
        i = u32(cuda.grid(1))
        if i >= x.size * out_per_group:
            return
        iw, rest = u32(i % in_w), u32(i // in_w)
        ih, rest = u32(rest % in_h), u32(rest // in_h)
        co_in_group, plane = u32(rest % out_per_group), u32(rest // out_per_group)  # plane = n·C_in + ci
        ci, n = u32(plane % in_channels), u32(plane // in_channels)
        co = u32(u32(ci // in_per_group) * out_per_group + co_in_group)
        value = x[u32((plane * in_h + ih) * in_w + iw)]
        w_at = u32((ci * out_per_group + co_in_group) * kernel_h * kernel_w)
        y_plane = u32((n * out_channels + co) * out_h)
        # canvas row ih·s + kh·d is output row (that - p) when it lies in [p, p + H_out); columns alike
        row = u32(ih * sh)
        w_end = u32(w_at + kernel_h * kernel_w)
        while w_at < w_end:
            if row >= ph and u32(row - ph) < out_h:
                y_row = u32((y_plane + row - ph) * out_w)
                col = u32(iw * sw)
                w_row_end = u32(w_at + kernel_w)
                w_here = w_at
                while w_here < w_row_end:
                    if col >= pw and u32(col - pw) < out_w:
                        cuda.atomic.add(y, u32(y_row + col - pw), value * weight[w_here])
                    col = u32(col + dw)
                    w_here = u32(w_here + ONE)
            row = u32(row + dh)
            w_at = u32(w_at + kernel_w)

    def tiled_gather(x, weight, bias, y, has_bias, shape, geometry, chunks):
        """The gather of ``gather`` for a TILE×TILE block of one output plane ``y[n, co]``, with the
        block's weights and input halo staged in (dynamic) shared memory, per input channel and per chunk
        of ``chunk_h × chunk_w`` taps. Chunking bounds the halo (``halo_h × halo_w``, sized by the wrapper)
        whatever the dilation or kernel size; for ordinary kernels one chunk holds every tap.
        Shared layout: ``chunk_h·chunk_w`` weights, then the halo, row-major."""
        staged = cuda.shared.array(0, dtype=scalar)
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group, kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, gh, gw, inv_h, inv_w = geometry
        chunk_h, chunk_w, _, halo_w = chunks  # the halo's height sized the shared array; its width strides it
        tiles_w = u32(u32(out_w + TILE_U32 - ONE) // TILE_U32)
        tiles_h = u32(u32(out_h + TILE_U32 - ONE) // TILE_U32)
        block = u32(cuda.blockIdx.x)
        tile_c, rest = u32(block % tiles_w), u32(block // tiles_w)
        tile_r, plane = u32(rest % tiles_h), u32(rest // tiles_h)  # plane = n·C_out + co
        co, n = u32(plane % out_channels), u32(plane // out_channels)
        group = u32(co // out_per_group)
        co_in_group = u32(co - group * out_per_group)
        ci_first = u32(group * in_per_group)
        ty, tx = u32(cuda.threadIdx.y), u32(cuda.threadIdx.x)
        thread = u32(ty * TILE_U32 + tx)
        oh0, ow0 = u32(tile_r * TILE_U32), u32(tile_c * TILE_U32)
        oh, ow = u32(oh0 + ty), u32(ow0 + tx)
        inside = oh < out_h and ow < out_w
        tap_step_h, tap_step_w = u32(sh // gh), u32(sw // gw)
        in_step_h, in_step_w = u32(dh // gh), u32(dw // gw)
        # this thread's taps over the whole kernel; each chunk visits the part of them inside it
        kh_first, ih_first, count_h = phase_taps(u32(oh + ph), sh, dh, gh, inv_h, kernel_h, in_h)
        kw_first, iw_first, count_w = phase_taps(u32(ow + pw), sw, dw, gw, inv_w, kernel_w, in_w)
        if not inside:
            count_h = ZERO
        weights_len = u32(chunk_h * chunk_w)
        x_step = u32(in_h * in_w)  # offset steps per input channel
        w_step = u32(out_per_group * kernel_h * kernel_w)
        x_first = u32((n * in_channels + ci_first) * x_step)
        w_first = u32((ci_first * out_per_group + co_in_group) * kernel_h * kernel_w)
        # staged offsets from one tap to the next along h (a) and w (b); the h steps may pass 2³² (huge
        # strides: then a thread has one tap per chunk and the step after it is unused), so they wrap
        # explicitly, from 64 bits
        w_step_a, w_step_b = u32(u64(tap_step_h) * chunk_w), tap_step_w
        halo_step_a, halo_step_b = u32(u64(in_step_h) * halo_w), in_step_w
        acc = scalar(0)
        # chunk loops outside the channel loop: the chunk's halo and this thread's taps in it are
        # computed once; for ordinary kernels (one chunk) the sum runs over channels, then taps, as gather's
        kh_lo = ZERO
        while kh_lo < kernel_h:
            kh_hi = min(u32(kh_lo + chunk_h), kernel_h)
            row_lo, row_end = halo_span(u32(oh0 + ph), kh_lo, kh_hi, sh, dh, in_h)
            a_lo, a_hi = chunk_taps(kh_first, count_h, tap_step_h, kh_lo, kh_hi)
            kw_lo = ZERO
            while kw_lo < kernel_w:
                kw_hi = min(u32(kw_lo + chunk_w), kernel_w)
                col_lo, col_end = halo_span(u32(ow0 + pw), kw_lo, kw_hi, sw, dw, in_w)
                b_lo, b_hi = chunk_taps(kw_first, count_w, tap_step_w, kw_lo, kw_hi)
                halo_len, cols = ZERO, ONE
                if row_end > row_lo and col_end > col_lo:
                    cols = u32(col_end - col_lo)
                    halo_len = u32((row_end - row_lo) * cols)
                w_tap, halo_tap = ZERO, i32(0)
                if a_hi > a_lo and b_hi > b_lo:
                    # staged offsets of this thread's first tap in the chunk: its weight, its halo element
                    # (the halo element is int32: it steps down, once more after the last tap)
                    kh, kw = u32(kh_first + a_lo * tap_step_h), u32(kw_first + b_lo * tap_step_w)
                    r = u32(ih_first - a_lo * in_step_h - row_lo)
                    c = u32(iw_first - b_lo * in_step_w - col_lo)
                    w_tap = u32((kh - kh_lo) * chunk_w + kw - kw_lo)
                    halo_tap = i32(weights_len + r * halo_w + c)
                x_at = u32(x_first + row_lo * in_w + col_lo)
                w_at = u32(w_first + kh_lo * kernel_w + kw_lo)
                x_end = u32(x_at + in_per_group * x_step)
                while x_at < x_end:
                    k = thread
                    while k < weights_len:
                        a = u32(k // chunk_w)
                        b = u32(k - a * chunk_w)
                        if kh_lo + a < kernel_h and kw_lo + b < kernel_w:
                            staged[k] = weight[u32(w_at + a * kernel_w + b)]
                        k = u32(k + TILE_THREADS_U32)
                    k = thread
                    while k < halo_len:
                        r = u32(k // cols)
                        c = u32(k - r * cols)
                        staged[u32(weights_len + r * halo_w + c)] = x[u32(x_at + r * in_w + c)]
                        k = u32(k + TILE_THREADS_U32)
                    cuda.syncthreads()
                    w_row, halo_row, a = w_tap, halo_tap, a_lo
                    while a < a_hi:
                        w_here, halo_here, b = w_row, halo_row, b_lo
                        while b < b_hi:
                            acc += staged[u32(halo_here)] * staged[w_here]
                            w_here = u32(w_here + w_step_b)
                            halo_here = i32(halo_here - halo_step_b)
                            b = u32(b + ONE)
                        w_row = u32(w_row + w_step_a)
                        halo_row = i32(halo_row - halo_step_a)
                        a = u32(a + ONE)
                    cuda.syncthreads()
                    x_at = u32(x_at + x_step)
                    w_at = u32(w_at + w_step)
                kw_lo = kw_hi
            kh_lo = kh_hi
        if inside:
            if has_bias:
                acc += bias[co]
            y[u32((plane * out_h + oh) * out_w + ow)] = acc

    def backward_data(grad_output, weight, grad_input, shape, geometry):
        """One thread per ``grad_input[n, ci, ih, iw]``: ``Σ_{kh, kw, co} grad_output[n, g·Co + co, oh, ow] ·
        W[ci, co, kh, kw]`` over the taps landing inside the output (``oh = ih·s - p + kh·d``, ``reach_span``)
        and the group's output channels (``plane_sum``'s channel loop). No atomics: bitwise deterministic."""
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group, kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, _, _, _, _ = geometry
        i = u32(cuda.grid(1))
        if i >= grad_input.size:
            return
        iw, rest = u32(i % in_w), u32(i // in_w)
        ih, rest = u32(rest % in_h), u32(rest // in_h)
        ci, n = u32(rest % in_channels), u32(rest // in_channels)
        group = u32(ci // in_per_group)
        kh, oh, kh_end = reach_span(u32(ih * sh), dh, ph, kernel_h, out_h)
        kw, ow, kw_end = reach_span(u32(iw * sw), dw, pw, kernel_w, out_w)
        out_plane, kernel_plane = u32(out_h * out_w), u32(kernel_h * kernel_w)
        go_base = u32((n * out_channels + group * out_per_group) * out_plane)
        w_base = u32(ci * out_per_group * kernel_plane)
        # the output row/column steps up by the dilation per tap: plane_sum subtracts a negative step
        row_taps = (kh, kh_end, ONE, i32(oh), i32(-i32(dh)))
        col_taps = (kw, kw_end, ONE, i32(ow), i32(-i32(dw)))
        channels = (u32(out_per_group * out_plane), out_plane, kernel_plane)
        grad_input[i] = plane_sum(
            grad_output, weight, scalar(0), go_base, w_base, row_taps, col_taps, (out_w, kernel_w), channels
        )

    def backward_data3d(grad_output, weight, grad_input, shape, geometry, depth):
        """``backward_data`` over three spatial axes: one thread per ``grad_input[n, ci, id, ih, iw]``, each
        depth tap landing inside the output (``reach_span``) adding one plane of taps (``plane_sum``)."""
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group, kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, _, _, _, _ = geometry
        in_d, out_d, kernel_d, sd, pd, dd, _, _ = depth
        i = u32(cuda.grid(1))
        if i >= grad_input.size:
            return
        iw, rest = u32(i % in_w), u32(i // in_w)
        ih, rest = u32(rest % in_h), u32(rest // in_h)
        i_d, rest = u32(rest % in_d), u32(rest // in_d)
        ci, n = u32(rest % in_channels), u32(rest // in_channels)
        group = u32(ci // in_per_group)
        kd, od, kd_end = reach_span(u32(i_d * sd), dd, pd, kernel_d, out_d)
        kh, oh, kh_end = reach_span(u32(ih * sh), dh, ph, kernel_h, out_h)
        kw, ow, kw_end = reach_span(u32(iw * sw), dw, pw, kernel_w, out_w)
        out_plane, kernel_plane = u32(out_h * out_w), u32(kernel_h * kernel_w)
        out_volume, kernel_volume = u32(out_d * out_plane), u32(kernel_d * kernel_plane)
        go_base = u32((n * out_channels + group * out_per_group) * out_volume)
        w_base = u32(ci * out_per_group * kernel_volume)
        row_taps = (kh, kh_end, ONE, i32(oh), i32(-i32(dh)))
        col_taps = (kw, kw_end, ONE, i32(ow), i32(-i32(dw)))
        channels = (u32(out_per_group * out_volume), out_volume, kernel_volume)
        acc = scalar(0)
        while kd < kd_end:
            go_plane = u32(go_base + od * out_plane)
            w_plane = u32(w_base + kd * kernel_plane)
            acc = plane_sum(
                grad_output, weight, acc, go_plane, w_plane, row_taps, col_taps, (out_w, kernel_w), channels
            )
            kd = u32(kd + ONE)
            od = u32(od + dd)
        grad_input[i] = acc

    def backward_weight(grad_output, x, grad_weight, batch, shape, geometry):
        """One thread per ``grad_weight[ci, co, kh, kw]``: ``Σ_{ih, iw, n} grad_output[n, g·Co + co, oh, ow] ·
        x[n, ci, ih, iw]`` over the inputs whose ``oh = ih·s - p + kh·d`` (and ``ow``) land inside the output
        (``reach_span``) and the ``batch`` images (``plane_sum``'s channel loop). A fixed order per thread, no
        atomics: bitwise deterministic."""
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group, kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, _, _, _, _ = geometry
        i = u32(cuda.grid(1))
        if i >= grad_weight.size:
            return
        kw, rest = u32(i % kernel_w), u32(i // kernel_w)
        kh, rest = u32(rest % kernel_h), u32(rest // kernel_h)
        co_in_group, ci = u32(rest % out_per_group), u32(rest // out_per_group)
        co = u32(u32(ci // in_per_group) * out_per_group + co_in_group)
        ih, oh, ih_end = reach_span(u32(kh * dh), sh, ph, in_h, out_h)
        iw, ow, iw_end = reach_span(u32(kw * dw), sw, pw, in_w, out_w)
        in_plane, out_plane = u32(in_h * in_w), u32(out_h * out_w)
        go_image, x_image = u32(out_channels * out_plane), u32(in_channels * in_plane)  # offset steps per image
        # the output row/column steps up by the stride per input: plane_sum subtracts a negative step
        rows = (ih, ih_end, ONE, i32(oh), i32(-i32(sh)))
        cols = (iw, iw_end, ONE, i32(ow), i32(-i32(sw)))
        images = (u32(batch * go_image), go_image, x_image)
        grad_weight[i] = plane_sum(
            grad_output, x, scalar(0), u32(co * out_plane), u32(ci * in_plane), rows, cols, (out_w, in_w), images
        )

    def backward_weight3d(grad_output, x, grad_weight, batch, shape, geometry, depth):
        """``backward_weight`` over three spatial axes: one thread per ``grad_weight[ci, co, kd, kh, kw]``, each
        input slice whose output slice lies inside the output (``reach_span``) adding one plane (``plane_sum``)."""
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group, kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, _, _, _, _ = geometry
        in_d, out_d, kernel_d, sd, pd, dd, _, _ = depth
        i = u32(cuda.grid(1))
        if i >= grad_weight.size:
            return
        kw, rest = u32(i % kernel_w), u32(i // kernel_w)
        kh, rest = u32(rest % kernel_h), u32(rest // kernel_h)
        kd, rest = u32(rest % kernel_d), u32(rest // kernel_d)
        co_in_group, ci = u32(rest % out_per_group), u32(rest // out_per_group)
        co = u32(u32(ci // in_per_group) * out_per_group + co_in_group)
        i_d, od, id_end = reach_span(u32(kd * dd), sd, pd, in_d, out_d)
        ih, oh, ih_end = reach_span(u32(kh * dh), sh, ph, in_h, out_h)
        iw, ow, iw_end = reach_span(u32(kw * dw), sw, pw, in_w, out_w)
        in_plane, out_plane = u32(in_h * in_w), u32(out_h * out_w)
        in_volume, out_volume = u32(in_d * in_plane), u32(out_d * out_plane)
        go_image, x_image = u32(out_channels * out_volume), u32(in_channels * in_volume)
        rows = (ih, ih_end, ONE, i32(oh), i32(-i32(sh)))
        cols = (iw, iw_end, ONE, i32(ow), i32(-i32(sw)))
        images = (u32(batch * go_image), go_image, x_image)
        go_base, x_base = u32(co * out_volume), u32(ci * in_volume)
        acc = scalar(0)
        while i_d < id_end:
            go_plane = u32(go_base + od * out_plane)
            x_plane = u32(x_base + i_d * in_plane)
            acc = plane_sum(grad_output, x, acc, go_plane, x_plane, rows, cols, (out_w, in_w), images)
            i_d = u32(i_d + ONE)
            od = u32(od + sd)
        grad_weight[i] = acc

    return {
        "gather": gather,
        "gather3d": gather3d,
        "fill_zero": fill_zero,
        "add_bias": add_bias,
        "scatter_atomic": scatter_atomic,
        "tiled_gather": tiled_gather,
        "backward_data": backward_data,
        "backward_data3d": backward_data3d,
        "backward_weight": backward_weight,
        "backward_weight3d": backward_weight3d,
    }


_BY_DTYPE = {"float32": _make_kernels(numba.float32), "float64": _make_kernels(numba.float64)}

#: ``KERNELS[kernel name][dtype name]`` → the kernel's plain Python function (compile it with cuda.jit).
KERNELS = {name: {dtype: kernels[name] for dtype, kernels in _BY_DTYPE.items()} for name in _BY_DTYPE["float32"]}
