"""The numba.cuda kernels of the ``numba_cuda*`` backends: pure loops over the arrays they are given.

Semantics (PyTorch's, see ``testbed.api.conv_transpose2d``)::

    y[n, g·Co_g + co, ih·s - p + kh·d, iw·s - p + kw·d] += x[n, g·Ci_g + ci, ih, iw] · W[g·Ci_g + ci, co, kh, kw]

Gather form (one output element at a time): output row ``o`` receives tap ``kh`` iff
``kh·d ≡ o + p (mod s)``, from input row ``(o + p - kh·d) / s``. With ``g = gcd(s, d)`` a tap exists only if
``g`` divides ``(o + p) mod s``; the first one is ``kh0 = ((o + p) mod s / g) · inv(d/g mod s/g) mod s/g``,
and the others follow every ``s/g`` taps while the input row steps back by ``d/g`` (the phase-aware loop
of the reference notes, section (b) row 2: exactly the useful multiply-adds, no modulo test per tap).
The wrapper (``numba_cuda``) precomputes ``g`` and the modular inverse per axis.

Each kernel exists once per dtype (``KERNELS[name][dtype]`` is the plain Python function, kept reachable
for ``numba.cuda.compile_ptx``): the factory closes over the numba scalar type so that accumulators are
in the data's own precision (a bare ``0.0`` literal would promote float32 sums to float64).
This module imports ``numba.cuda``; the backend module imports it only on first use.
"""

import numba
from numba import cuda

#: Output tile of ``tiled_gather``: one thread per output element of a TILE×TILE block.
TILE = 16


@cuda.jit(device=True, inline=True)
def phase_taps(shifted, stride, dilation, gcd, inverse, kernel, in_len):
    """Taps of one axis hitting output ``o`` (``shifted = o + p``): ``(first tap, its input index, count)``;
    tap ``j`` is ``first + j·s/g`` reading input ``index - j·d/g``."""
    tap_step = stride // gcd
    in_step = dilation // gcd
    residue = shifted % stride
    if residue % gcd != 0:
        return 0, 0, 0
    first = ((residue // gcd) * inverse) % tap_step
    index = (shifted - first * dilation) // stride
    if first >= kernel or index < 0:
        return 0, 0, 0
    # skip taps whose input index lies past the end (large padding / dilation)
    skip = 0
    if index >= in_len:
        skip = (index - in_len + in_step) // in_step
    first += skip * tap_step
    index -= skip * in_step
    if first >= kernel or index < 0:
        return 0, 0, 0
    count = min((kernel - 1 - first) // tap_step, index // in_step) + 1
    return first, index, count


def _make_kernels(scalar):
    """The kernels for one numba scalar type (float32 or float64)."""

    def gather(x, weight, bias, y, has_bias, sh, sw, ph, pw, dh, dw, gh, gw, inv_h, inv_w):
        """One thread per output element ``y[n, co, oh, ow]``, visiting only the taps that reach it;
        the bias is added after the sum, as in the definition. No atomics: bitwise deterministic."""
        i = cuda.grid(1)
        batch, out_channels, out_h, out_w = y.shape
        if i >= batch * out_channels * out_h * out_w:
            return
        in_channels, in_h, in_w = x.shape[1], x.shape[2], x.shape[3]
        out_per_group, kernel_h, kernel_w = weight.shape[1], weight.shape[2], weight.shape[3]
        in_per_group = in_channels // (out_channels // out_per_group)
        ow = i % out_w
        rest = i // out_w
        oh = rest % out_h
        rest //= out_h
        co = rest % out_channels
        n = rest // out_channels
        group = co // out_per_group
        co_in_group = co - group * out_per_group
        ci_first = group * in_per_group

        kh, ih, count_h = phase_taps(oh + ph, sh, dh, gh, inv_h, kernel_h, in_h)
        kw_first, iw_first, count_w = phase_taps(ow + pw, sw, dw, gw, inv_w, kernel_w, in_w)
        tap_step_h, in_step_h = sh // gh, dh // gh
        tap_step_w, in_step_w = sw // gw, dw // gw
        acc = scalar(0)
        for _ in range(count_h):
            kw, iw = kw_first, iw_first
            for _ in range(count_w):
                for ci in range(ci_first, ci_first + in_per_group):
                    acc += x[n, ci, ih, iw] * weight[ci, co_in_group, kh, kw]
                kw += tap_step_w
                iw -= in_step_w
            kh += tap_step_h
            ih -= in_step_h
        if has_bias:
            acc += bias[co]
        y[n, co, oh, ow] = acc

    def fill_bias(bias, y, has_bias):
        """``y[n, co, :, :] = bias[co]`` (or 0): the starting value of the atomic scatter."""
        i = cuda.grid(1)
        batch, out_channels, out_h, out_w = y.shape
        if i >= batch * out_channels * out_h * out_w:
            return
        co = (i // (out_h * out_w)) % out_channels
        rest = i // out_w
        value = scalar(0)
        if has_bias:
            value = bias[co]
        y[rest // (out_h * out_channels), co, rest % out_h, i % out_w] = value

    def scatter_atomic(x, weight, y, sh, sw, ph, pw, dh, dw):
        """One thread per (input element, output channel of its group): its kH·kW products are
        ``cuda.atomic.add``-ed into the output (filled with the bias first). The order in which threads
        add into one element is the hardware's, so float results vary from run to run (cuDNN ALGO_0)."""
        i = cuda.grid(1)
        batch, in_channels, in_h, in_w = x.shape
        out_per_group, kernel_h, kernel_w = weight.shape[1], weight.shape[2], weight.shape[3]
        out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
        if i >= batch * in_channels * out_per_group * in_h * in_w:
            return
        in_per_group = in_channels // (out_channels // out_per_group)
        iw = i % in_w
        rest = i // in_w
        ih = rest % in_h
        rest //= in_h
        co_in_group = rest % out_per_group
        rest //= out_per_group
        ci = rest % in_channels
        n = rest // in_channels
        co = (ci // in_per_group) * out_per_group + co_in_group
        value = x[n, ci, ih, iw]
        for kh in range(kernel_h):
            oh = ih * sh - ph + kh * dh
            if 0 <= oh < out_h:
                for kw in range(kernel_w):
                    ow = iw * sw - pw + kw * dw
                    if 0 <= ow < out_w:
                        cuda.atomic.add(y, (n, co, oh, ow), value * weight[ci, co_in_group, kh, kw])

    def tiled_gather(x, weight, bias, y, has_bias, sh, sw, ph, pw, dh, dw, gh, gw, inv_h, inv_w,
                     chunk_h, chunk_w, halo_h, halo_w):
        """The gather of ``gather`` for a TILE×TILE block of one output plane ``y[n, co]``, with the
        block's weights and input halo staged in (dynamic) shared memory, per input channel and per chunk
        of ``chunk_h × chunk_w`` taps. Chunking bounds the halo (``halo_h × halo_w``, sized by the wrapper)
        whatever the dilation or kernel size; for ordinary kernels one chunk holds every tap.
        Shared layout: ``chunk_h·chunk_w`` weights, then the halo, row-major."""
        staged = cuda.shared.array(0, dtype=scalar)
        out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
        in_channels, in_h, in_w = x.shape[1], x.shape[2], x.shape[3]
        out_per_group, kernel_h, kernel_w = weight.shape[1], weight.shape[2], weight.shape[3]
        in_per_group = in_channels // (out_channels // out_per_group)
        tiles_w = (out_w + TILE - 1) // TILE
        tiles_h = (out_h + TILE - 1) // TILE
        block = cuda.blockIdx.x
        tile_c = block % tiles_w
        rest = block // tiles_w
        tile_r = rest % tiles_h
        rest //= tiles_h
        co = rest % out_channels
        n = rest // out_channels
        group = co // out_per_group
        co_in_group = co - group * out_per_group
        ci_first = group * in_per_group
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        thread = ty * TILE + tx
        oh0, ow0 = tile_r * TILE, tile_c * TILE
        oh, ow = oh0 + ty, ow0 + tx
        inside = oh < out_h and ow < out_w
        tap_step_h, in_step_h = sh // gh, dh // gh
        tap_step_w, in_step_w = sw // gw, dw // gw
        # this thread's taps over the whole kernel; each chunk visits the part of them inside it
        kh_first, ih_first, count_h = phase_taps(oh + ph, sh, dh, gh, inv_h, kernel_h, in_h)
        kw_first, iw_first, count_w = phase_taps(ow + pw, sw, dw, gw, inv_w, kernel_w, in_w)
        if not inside:
            count_h = 0
        weights_len = chunk_h * chunk_w
        acc = scalar(0)
        for ci in range(ci_first, ci_first + in_per_group):
            for kh_lo in range(0, kernel_h, chunk_h):
                kh_hi = min(kh_lo + chunk_h, kernel_h)
                # input rows the block's outputs read through taps kh_lo..kh_hi-1, clamped to the input
                row_lo = max((oh0 + ph - (kh_hi - 1) * dh) // sh, 0)
                row_hi = min((oh0 + TILE - 1 + ph - kh_lo * dh) // sh, in_h - 1)
                for kw_lo in range(0, kernel_w, chunk_w):
                    kw_hi = min(kw_lo + chunk_w, kernel_w)
                    col_lo = max((ow0 + pw - (kw_hi - 1) * dw) // sw, 0)
                    col_hi = min((ow0 + TILE - 1 + pw - kw_lo * dw) // sw, in_w - 1)
                    rows = row_hi - row_lo + 1
                    cols = col_hi - col_lo + 1
                    for j in range(thread, weights_len, TILE * TILE):
                        a = j // chunk_w
                        b = j - a * chunk_w
                        if kh_lo + a < kernel_h and kw_lo + b < kernel_w:
                            staged[j] = weight[ci, co_in_group, kh_lo + a, kw_lo + b]
                    if rows > 0 and cols > 0:
                        for j in range(thread, rows * cols, TILE * TILE):
                            r = j // cols
                            staged[weights_len + r * halo_w + (j - r * cols)] = \
                                x[n, ci, row_lo + r, col_lo + j - r * cols]
                    cuda.syncthreads()
                    # this thread's taps within the chunk: kh = kh_first + a·tap_step_h in [kh_lo, kh_hi)
                    a_lo = 0
                    if kh_first < kh_lo:
                        a_lo = (kh_lo - kh_first + tap_step_h - 1) // tap_step_h
                    a_hi = min(count_h, (kh_hi - kh_first + tap_step_h - 1) // tap_step_h)
                    b_lo = 0
                    if kw_first < kw_lo:
                        b_lo = (kw_lo - kw_first + tap_step_w - 1) // tap_step_w
                    b_hi = min(count_w, (kw_hi - kw_first + tap_step_w - 1) // tap_step_w)
                    for a in range(a_lo, a_hi):
                        kh = kh_first + a * tap_step_h
                        r = ih_first - a * in_step_h - row_lo
                        for b in range(b_lo, b_hi):
                            kw = kw_first + b * tap_step_w
                            c = iw_first - b * in_step_w - col_lo
                            acc += staged[weights_len + r * halo_w + c] * \
                                staged[(kh - kh_lo) * chunk_w + kw - kw_lo]
                    cuda.syncthreads()
        if inside:
            if has_bias:
                acc += bias[co]
            y[n, co, oh, ow] = acc

    return {"gather": gather, "fill_bias": fill_bias, "scatter_atomic": scatter_atomic,
            "tiled_gather": tiled_gather}


_BY_DTYPE = {"float32": _make_kernels(numba.float32), "float64": _make_kernels(numba.float64)}

#: ``KERNELS[kernel name][dtype name]`` → the kernel's plain Python function (compile it with cuda.jit).
KERNELS = {name: {dtype: kernels[name] for dtype, kernels in _BY_DTYPE.items()} for name in _BY_DTYPE["float32"]}
