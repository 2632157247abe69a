"""The numba.cuda kernels of the ``numba_cuda*`` backends: pure loops over the arrays they are given.

Semantics (PyTorch's, see ``testbed.api.conv_transpose2d``)::

    y[n, g·Co_g + co, ih·s - p + kh·d, iw·s - p + kw·d] += x[n, g·Ci_g + ci, ih, iw] · W[g·Ci_g + ci, co, kh, kw]

Gather form (one output element at a time): output row ``o`` receives tap ``kh`` iff
``kh·d ≡ o + p (mod s)``, from input row ``(o + p - kh·d) / s``. With ``g = gcd(s, d)`` a tap exists only if
``g`` divides ``(o + p) mod s``; the first one is ``kh0 = ((o + p) mod s / g) · inv(d/g mod s/g) mod s/g``,
and the others follow every ``s/g`` taps while the input row steps back by ``d/g`` (the phase-aware loop
of the reference notes, section (b) row 2: exactly the useful multiply-adds, no modulo test per tap).
The wrapper (``numba_cuda``) precomputes ``g`` and the modular inverse per axis.

Signed zeros as PyTorch's CPU kernels give them: every sum starts from ``+0.0`` and the bias is added
last, ``y = (+0 + Σ products) + bias``, so an output is never ``-0.0``.

**32-bit index arithmetic.** Every array arrives flattened to 1-D (C order) and every extent as a
``uint32`` (the tuples ``shape`` and ``geometry``); all index maths is unsigned 32-bit, so no signed
floor-division fix-ups, no negative-index wrap-around and no 64-bit division subroutines (which cost
64-bit kernels 120–224 registers). Numba widens integer arithmetic to 64 bits, so each intermediate is
cast back with ``u32(...)``; NVVM then narrows the operation itself to 32 bits. Loops count in
``int32`` (``range`` has a 32-bit state only for int32). The host wrapper declares any problem whose
element counts or index extents do not fit in int32 unsupported (``numba_cuda.index_limit_reason``), so
the arithmetic never wraps; no quantity here is ever negative (differences are taken only after a
comparison).

Each kernel exists once per dtype (``KERNELS[name][dtype]`` is the plain Python function, kept reachable
for ``numba.cuda.compile_ptx``): the factory closes over the numba scalar type so that accumulators are
in the data's own precision (a bare ``0.0`` literal would promote float32 sums to float64).
This module imports ``numba.cuda``; the backend module imports it only on first use.
"""

import numba
import numpy as np
from numba import cuda

#: Output tile of ``tiled_gather``: one thread per output element of a TILE×TILE block.
TILE = 16
#: Threads per block of ``tiled_gather``.
TILE_THREADS = TILE * TILE

# numpy's casts compile to the same code as numba.uint32(...) and run 4x faster in the simulator
u32, u64, i32 = np.uint32, np.uint64, np.int32

#: Field order of the ``shape`` tuple every gather/scatter kernel receives (all uint32).
SHAPE_FIELDS = ("in_channels", "in_h", "in_w", "out_channels", "out_h", "out_w", "in_per_group",
                "out_per_group", "kernel_h", "kernel_w")
#: Field order of the ``geometry`` tuple of the gather kernels (all uint32; ``g``/``inv`` per axis from
#: ``numba_cuda._phase_constants``).
GEOMETRY_FIELDS = ("stride_h", "stride_w", "padding_h", "padding_w", "dilation_h", "dilation_w",
                   "gcd_h", "gcd_w", "inverse_h", "inverse_w")
#: Field order of the ``chunks`` tuple of ``tiled_gather`` (see ``numba_cuda.tiled_plan``).
CHUNK_FIELDS = ("chunk_h", "chunk_w", "halo_h", "halo_w")


@cuda.jit(device=True, inline="always")  # IR-level: compile_ptx needs no device
def phase_taps(shifted, stride, dilation, gcd, inverse, kernel, in_len):
    """Taps of one axis hitting output ``o`` (``shifted = o + p``): ``(first tap, its input index, count)``;
    tap ``j`` is ``first + j·s/g`` reading input ``index - j·d/g``. All arguments uint32."""
    none = (u32(0), u32(0), u32(0))
    tap_step = u32(stride // gcd)
    in_step = u32(dilation // gcd)
    residue = u32(shifted % stride)
    if u32(residue % gcd) != u32(0):
        return none
    # (residue/g)·inv < (s/g)² may pass 2³²: the one product taken in 64 bits
    first = u32(u64(u32(residue // gcd)) * u64(inverse) % u64(tap_step))
    if first >= kernel:
        return none
    reach = u32(first * dilation)  # < kH·d, an index extent the host checked
    if reach > shifted:
        return none
    index = u32(u32(shifted - reach) // stride)
    # taps j = 0..last stay inside the kernel and at input index >= 0; those before `skip` read past the end
    last = min(u32(u32(kernel - u32(1) - first) // tap_step), u32(index // in_step))
    skip = u32(0)
    if index >= in_len:
        skip = u32(u32(u32(index - in_len) // in_step) + u32(1))
    if skip > last:
        return none
    return u32(first + u32(skip * tap_step)), u32(index - u32(skip * in_step)), u32(u32(last - skip) + u32(1))


def _make_kernels(scalar):
    """The kernels for one numba scalar type (float32 or float64)."""

    def gather(x, weight, bias, y, has_bias, shape, geometry):
        """One thread per output element ``y[n, co, oh, ow]``, visiting only the taps that reach it;
        the bias is added after the sum, as in the definition. No atomics: bitwise deterministic."""
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group,
         kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, gh, gw, inv_h, inv_w = geometry
        i = u32(cuda.grid(1))
        if i >= u32(y.size):
            return
        ow = u32(i % out_w)
        rest = u32(i // out_w)
        oh = u32(rest % out_h)
        rest = u32(rest // out_h)
        co = u32(rest % out_channels)
        n = u32(rest // out_channels)
        group = u32(co // out_per_group)
        co_in_group = u32(co - u32(group * out_per_group))
        ci_first = u32(group * in_per_group)

        kh, ih_first, count_h = phase_taps(u32(oh + ph), sh, dh, gh, inv_h, kernel_h, in_h)
        kw_first, iw_first, count_w = phase_taps(u32(ow + pw), sw, dw, gw, inv_w, kernel_w, in_w)
        ih = i32(ih_first)  # input row/column step down from the first tap's: int32, as the step after the
        tap_step_h, in_step_h = u32(sh // gh), u32(dh // gh)  # last tap may leave [0, 2³¹)
        tap_step_w, in_step_w = u32(sw // gw), u32(dw // gw)
        x_plane = u32(in_h * in_w)                           # x offset step per input channel
        w_step = u32(u32(out_per_group * kernel_h) * kernel_w)  # weight offset step per input channel
        x_base = u32(u32(u32(n * in_channels) + ci_first) * x_plane)
        w_base = u32(u32(u32(ci_first * out_per_group) + co_in_group) * u32(kernel_h * kernel_w))
        acc = scalar(0)
        for _ in range(i32(count_h)):
            kw, iw = kw_first, i32(iw_first)
            for _ in range(i32(count_w)):
                x_at = u32(u32(x_base + u32(ih * in_w)) + u32(iw))
                w_at = u32(w_base + u32(kh * kernel_w) + kw)
                for _ in range(i32(in_per_group)):
                    acc += x[x_at] * weight[w_at]
                    x_at = u32(x_at + x_plane)
                    w_at = u32(w_at + w_step)
                kw = u32(kw + tap_step_w)
                iw = i32(iw - in_step_w)
            kh = u32(kh + tap_step_h)
            ih = i32(ih - in_step_h)
        if has_bias:
            acc += bias[co]
        y[i] = acc

    def fill_zero(y):
        """``y[:] = +0.0``: the starting value of the atomic scatter (PyTorch's sums start from +0)."""
        i = u32(cuda.grid(1))
        if i < u32(y.size):
            y[i] = scalar(0)

    def add_bias(bias, y, out_channels, plane):
        """``y[n, co, :, :] += bias[co]`` (``plane = H_out·W_out``): the bias after the scattered sum."""
        i = u32(cuda.grid(1))
        if i < u32(y.size):
            y[i] += bias[u32(u32(i // plane) % out_channels)]

    def scatter_atomic(x, weight, y, shape, geometry):
        """One thread per (input element, output channel of its group): its kH·kW products are
        ``cuda.atomic.add``-ed into the zero-filled output (the bias follows in ``add_bias``). The order
        in which threads add into one element is the hardware's, so float results vary from run to run
        (cuDNN ALGO_0)."""
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group,
         kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, _, _, _, _ = geometry
        i = u32(cuda.grid(1))
        if i >= u32(u32(x.size) * out_per_group):
            return
        iw = u32(i % in_w)
        rest = u32(i // in_w)
        ih = u32(rest % in_h)
        rest = u32(rest // in_h)
        co_in_group = u32(rest % out_per_group)
        rest = u32(rest // out_per_group)   # = n·C_in + ci
        ci = u32(rest % in_channels)
        n = u32(rest // in_channels)
        co = u32(u32(u32(ci // in_per_group) * out_per_group) + co_in_group)
        value = x[u32(u32(u32(rest * in_h) + ih) * in_w + iw)]
        w_at = u32(u32(u32(ci * out_per_group) + co_in_group) * u32(kernel_h * kernel_w))
        y_plane = u32(u32(u32(n * out_channels) + co) * out_h)
        # canvas coordinate ih·s + kh·d lands on output row (that - p) when it is inside [p, p + H_out)
        row = u32(ih * sh)
        for _ in range(i32(kernel_h)):
            if ph <= row and u32(row - ph) < out_h:
                y_row = u32(u32(y_plane + u32(row - ph)) * out_w)
                col = u32(iw * sw)
                for kw in range(i32(kernel_w)):
                    if pw <= col and u32(col - pw) < out_w:
                        cuda.atomic.add(y, u32(y_row + u32(col - pw)), value * weight[u32(w_at + u32(kw))])
                    col = u32(col + dw)
            row = u32(row + dh)
            w_at = u32(w_at + kernel_w)

    def tiled_gather(x, weight, bias, y, has_bias, shape, geometry, chunks):
        """The gather of ``gather`` for a TILE×TILE block of one output plane ``y[n, co]``, with the
        block's weights and input halo staged in (dynamic) shared memory, per input channel and per chunk
        of ``chunk_h × chunk_w`` taps. Chunking bounds the halo (``halo_h × halo_w``, sized by the wrapper)
        whatever the dilation or kernel size; for ordinary kernels one chunk holds every tap.
        Shared layout: ``chunk_h·chunk_w`` weights, then the halo, row-major."""
        staged = cuda.shared.array(0, dtype=scalar)
        (in_channels, in_h, in_w, out_channels, out_h, out_w, in_per_group, out_per_group,
         kernel_h, kernel_w) = shape
        sh, sw, ph, pw, dh, dw, gh, gw, inv_h, inv_w = geometry
        chunk_h, chunk_w, halo_h, halo_w = chunks
        tiles_w = u32(u32(out_w + u32(TILE - 1)) // u32(TILE))
        tiles_h = u32(u32(out_h + u32(TILE - 1)) // u32(TILE))
        block = u32(cuda.blockIdx.x)
        tile_c = u32(block % tiles_w)
        rest = u32(block // tiles_w)
        tile_r = u32(rest % tiles_h)
        plane = u32(rest // tiles_h)     # = n·C_out + co
        co = u32(plane % out_channels)
        n = u32(plane // out_channels)
        group = u32(co // out_per_group)
        co_in_group = u32(co - u32(group * out_per_group))
        ci_first = u32(group * in_per_group)
        ty, tx = u32(cuda.threadIdx.y), u32(cuda.threadIdx.x)
        thread = i32(u32(ty * u32(TILE)) + tx)
        oh0, ow0 = u32(tile_r * u32(TILE)), u32(tile_c * u32(TILE))
        oh, ow = u32(oh0 + ty), u32(ow0 + tx)
        inside = oh < out_h and ow < out_w
        tap_step_h, in_step_h = u32(sh // gh), u32(dh // gh)
        tap_step_w, in_step_w = u32(sw // gw), u32(dw // gw)
        # this thread's taps over the whole kernel; each chunk visits the part of them inside it
        kh_first, ih_first, count_h = phase_taps(u32(oh + ph), sh, dh, gh, inv_h, kernel_h, in_h)
        kw_first, iw_first, count_w = phase_taps(u32(ow + pw), sw, dw, gw, inv_w, kernel_w, in_w)
        if not inside:
            count_h = u32(0)
        weights_len = u32(chunk_h * chunk_w)
        x_plane = u32(in_h * in_w)
        x_channel = u32(u32(u32(n * in_channels) + ci_first) * x_plane)
        w_channel = u32(u32(u32(ci_first * out_per_group) + co_in_group) * u32(kernel_h * kernel_w))
        w_step = u32(u32(out_per_group * kernel_h) * kernel_w)
        acc = scalar(0)
        for _ in range(i32(in_per_group)):
            for kh_start in range(i32(0), i32(kernel_h), i32(chunk_h)):
                kh_lo = u32(kh_start)
                kh_hi = min(u32(kh_lo + chunk_h), kernel_h)
                # input rows the block's outputs read through taps kh_lo..kh_hi-1, clamped to the input:
                # (oh0 + p - (kh_hi - 1)·d) // s, at least 0, up to (oh0 + TILE - 1 + p - kh_lo·d) // s
                top = u32(oh0 + ph)
                reach = u32(u32(kh_hi - u32(1)) * dh)
                row_lo = u32(u32(top - reach) // sh) if top > reach else u32(0)
                top = u32(top + u32(TILE - 1))
                reach = u32(kh_lo * dh)
                row_end = u32(u32(u32(top - reach) // sh) + u32(1)) if top >= reach else u32(0)
                row_end = min(row_end, in_h)  # one past the last row
                for kw_start in range(i32(0), i32(kernel_w), i32(chunk_w)):
                    kw_lo = u32(kw_start)
                    kw_hi = min(u32(kw_lo + chunk_w), kernel_w)
                    left = u32(ow0 + pw)
                    reach = u32(u32(kw_hi - u32(1)) * dw)
                    col_lo = u32(u32(left - reach) // sw) if left > reach else u32(0)
                    left = u32(left + u32(TILE - 1))
                    reach = u32(kw_lo * dw)
                    col_end = u32(u32(u32(left - reach) // sw) + u32(1)) if left >= reach else u32(0)
                    col_end = min(col_end, in_w)
                    for j in range(thread, i32(weights_len), i32(TILE_THREADS)):
                        a = u32(u32(j) // chunk_w)
                        b = u32(u32(j) - u32(a * chunk_w))
                        if u32(kh_lo + a) < kernel_h and u32(kw_lo + b) < kernel_w:
                            staged[u32(j)] = weight[u32(u32(w_channel + u32(u32(kh_lo + a) * kernel_w)) + u32(kw_lo + b))]
                    if row_end > row_lo and col_end > col_lo:
                        rows, cols = u32(row_end - row_lo), u32(col_end - col_lo)
                        x_at = u32(u32(x_channel + u32(row_lo * in_w)) + col_lo)
                        for j in range(thread, i32(u32(rows * cols)), i32(TILE_THREADS)):
                            r = u32(u32(j) // cols)
                            c = u32(u32(j) - u32(r * cols))
                            staged[u32(u32(weights_len + u32(r * halo_w)) + c)] = x[u32(u32(x_at + u32(r * in_w)) + c)]
                    cuda.syncthreads()
                    # this thread's taps within the chunk: kh = kh_first + a·tap_step_h in [kh_lo, kh_hi)
                    a_lo = u32(0)
                    if kh_first < kh_lo:
                        a_lo = u32(u32(u32(kh_lo - kh_first) + u32(tap_step_h - u32(1))) // tap_step_h)
                    a_hi = u32(0)
                    if kh_hi > kh_first:
                        a_hi = min(count_h, u32(u32(u32(kh_hi - kh_first) + u32(tap_step_h - u32(1))) // tap_step_h))
                    b_lo = u32(0)
                    if kw_first < kw_lo:
                        b_lo = u32(u32(u32(kw_lo - kw_first) + u32(tap_step_w - u32(1))) // tap_step_w)
                    b_hi = u32(0)
                    if kw_hi > kw_first:
                        b_hi = min(count_w, u32(u32(u32(kw_hi - kw_first) + u32(tap_step_w - u32(1))) // tap_step_w))
                    if a_hi > a_lo and b_hi > b_lo:
                        kh = u32(kh_first + u32(a_lo * tap_step_h))
                        r = i32(u32(ih_first - u32(a_lo * in_step_h)) - row_lo)  # int32: see gather
                        kw_lo_tap = u32(kw_first + u32(b_lo * tap_step_w))    # this thread's first tap and
                        iw_lo_tap = u32(iw_first - u32(b_lo * in_step_w))     # column in the chunk
                        for _ in range(i32(u32(a_hi - a_lo))):
                            w_at = u32(u32(u32(kh - kh_lo) * chunk_w) + u32(kw_lo_tap - kw_lo))
                            halo_at = i32(u32(weights_len + u32(r * halo_w)) + u32(iw_lo_tap - col_lo))
                            for _ in range(i32(u32(b_hi - b_lo))):
                                acc += staged[u32(halo_at)] * staged[w_at]
                                halo_at = i32(halo_at - in_step_w)
                                w_at = u32(w_at + tap_step_w)
                            kh = u32(kh + tap_step_h)
                            r = i32(r - in_step_h)
                    cuda.syncthreads()
            x_channel = u32(x_channel + x_plane)
            w_channel = u32(w_channel + w_step)
        if inside:
            if has_bias:
                acc += bias[co]
            y[u32(u32(u32(plane * out_h) + oh) * out_w + ow)] = acc

    return {"gather": gather, "fill_zero": fill_zero, "add_bias": add_bias, "scatter_atomic": scatter_atomic,
            "tiled_gather": tiled_gather}


_BY_DTYPE = {"float32": _make_kernels(numba.float32), "float64": _make_kernels(numba.float64)}

#: ``KERNELS[kernel name][dtype name]`` → the kernel's plain Python function (compile it with cuda.jit).
KERNELS = {name: {dtype: kernels[name] for dtype, kernels in _BY_DTYPE.items()} for name in _BY_DTYPE["float32"]}
