"""``numba_cpu``: parallel Numba kernels (``prange`` over output rows or planes, each owned by one thread)
around at most one BLAS GEMM per group; the algorithm is chosen per configuration by :func:`choose_path`.

``nonoverlap_gemm`` (stride == kernel, dilation 1: the U-Net up-convolution). No two taps share an output, so
``y[n, co, i·kH + a, j·kW + b] = Σ_ci W[ci, co, a, b] · x[n, ci, i, j]``: per image and group the GEMM
``(C_out/G·kH·kW × C_in/G) · (C_in/G × H·W)`` followed by a pixel shuffle (depth-to-space), fused: one Numba
parallel region hands out blocks of the GEMM (:data:`BLOCK_BYTES`), and the thread that takes a block computes it
with a *single-threaded* BLAS call into its own buffer and moves it into place (padding crop, ``output_padding``
rows and columns, bias) while it is still in cache. So the products never make a round trip through memory, and
only one thread pool (Numba's) ever runs: the alternative, OpenBLAS's pool for the GEMM and Numba's for the
shuffle, pays a hand-off per block, and concurrent calls into a multithreaded OpenBLAS from Numba's threads were
measured 9× slower. In NHWC (channels last) the GEMM is ``(H·W × C_in/G) · (C_in/G × kH·kW·C_out/G)`` against
the weight repacked with its output channels innermost, and each tap's products are a contiguous run of
output channels copied into place. The buffers (per thread blocks, the repacked weight) are kept across calls
(:mod:`testbed.workspace`), so a repeated call page-faults only on its output, and with ``out=`` on nothing.

``gemm_col2im`` (overlapping taps with GEMM-sized channels). The same GEMM gives every (input pixel, tap)
product summed over input channels, ``columns[co, kh, kw, n, ih, iw]``; then a *gathering* col2im: each
thread owns output planes and adds, per row, for each tap ``kh`` with ``(oh + p - kh·d) ≡ 0 (mod s)``, the column
entries that land in the row (Caffe's / PyTorch's ``slow_conv_transpose2d`` design, with its scatter
turned into an output-stationary gather and the bias fused in). Only useful products are computed.

``direct`` (depthwise and other tiny channel products). An output-stationary
gather straight from ``x`` and ``W``: per output row, every tap and input channel of its group adds a
contiguous run of ``x[n, ci, ih, :] · W[ci, co, kh, kw]`` into one phase of a phase-split row buffer
(``ow = b + s·j`` stored at ``[b, j]``, so the inner loop is unit-stride), interleaved into ``y`` at the end.

Why so few BLAS calls (and not the per-phase sub-pixel GEMMs of ``polyphase``): on a busy 2-core host every
multithreaded BLAS call and every Numba parallel region waits for its second thread to be scheduled, and
alternating OpenBLAS's spinning pool with Numba's costs more than the arithmetic of a small GEMM. The
sub-pixel form needs ``s_h·s_w`` GEMMs plus a column build; measured 3–10× slower than ``gemm_col2im`` on the
decoder shapes here.

No thread ever writes an element another thread writes, and every summation order is fixed (from +0.0, taps
in ``(kh, kw)`` order, channels inside the GEMM, the bias last), so results are bitwise repeatable, and an
output is never -0.0 (PyTorch's sign of zero).

Resources follow the output, not the parameters: the per-plane accumulators hold ``min(s_w, W_out)`` phases
of ``ceil(W_out / s_w)`` columns (a stride of 10⁹ or 2⁶² costs nothing), all index arithmetic stays inside
int64 (``Problem`` refuses parameters whose extent does not fit), and the GEMM paths are taken only when one
image's column buffer ``C_out·kH·kW·H·W`` fits :attr:`Problem.workspace_limit` (a 128×128 kernel would need
gigabytes for a 1 MB output): beyond it ``direct`` computes the same products with no buffer at all.

Threads and fork: the kernels are :func:`._runtime.parallel_kernel` s, safe to call from several threads under
every Numba threading layer and in children forked after a parallel call (see ``_runtime``).

NaN/inf: every path forms exactly the (input pixel, tap) products of the scatter definition (no padding, no
zero-inserted input, no multiplication by a filler zero; the GEMM paths' products for outputs cropped away
by ``padding`` are never read), so NaN/inf in ``x``, ``W`` or the bias reach exactly the outputs the
definition says.
"""

import numba
import numpy as np
from numba import carray, get_thread_id, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import workspace
from ..registry import Backend, register, run_converted
from ._blas import INT32_MAX, gemm, single_threaded_blas
from ._runtime import parallel_kernel
from ._tasks import next_task

__all__ = ["choose_path", "PATHS"]

#: The algorithms of this backend.
PATHS = ("direct", "nonoverlap_gemm", "gemm_col2im", "blocked_direct")

#: ``direct`` below this product C_in/G · C_out/G: a GEMM that thin (depthwise: 1) spends its time in call
#: and packing overhead, while the gather loop is memory-bound anyway.
DIRECT_MAX_CHANNEL_PRODUCT = 16

#: The fused path (``nonoverlap_gemm``) computes the GEMM in blocks of about this many bytes of products per
#: task, each moved into place by the thread that computed it while it is still in cache (L2/L3) ...
BLOCK_BYTES = 4 * 2**20
#: ... with at most this many weight rows (NCHW: output channels × taps) or columns (NHWC) per block. Every BLAS
#: call repacks both operands, K·(rows + pixels) values for K·rows·pixels multiply-adds, so blocks this large
#: keep the repacking a few percent; 256 KiB blocks of 256 rows cost 1.2-1.5× the single GEMM here (measured
#: single-threaded, CPU time, unet1..4), 4 MiB of 512 rows 1.0-1.2×.
BLOCK_WIDTH = 512
#: ``blocked_direct``'s tile: output channels per work item (the unit-stride, vectorised loop) and phase pixels
#: per accumulator tile (``BLOCKED_TILE_PIXELS × BLOCKED_TILE_CO`` elements on each thread's stack).
BLOCKED_TILE_CO = 64
BLOCKED_TILE_PIXELS = 32
_BLOCKED_TILE_SIZE = BLOCKED_TILE_CO * BLOCKED_TILE_PIXELS

#: The GEMM paths compute this many bytes of ``columns`` (C_out·kH·kW·H·W per image) at most at a time;
#: larger batches are done in slices.
COLUMN_BUFFER_BYTES = 256 * 2 ** 20


def choose_path(problem) -> str:
    """The algorithm (one of :data:`PATHS`) ``numba_cpu`` runs for ``problem``."""
    if problem.in_per_group * problem.out_per_group < DIRECT_MAX_CHANNEL_PRODUCT:
        return "direct"
    if problem.is_nonoverlapping and _fits_blas(problem):
        return "nonoverlap_gemm"          # blocks of the GEMM: no column buffer, any size
    if _column_bytes_per_image(problem) > problem.workspace_limit:
        return "direct"
    return "gemm_col2im"


# ---- kernels ---------------------------------------------------------------------------------------------

@parallel_kernel
def _fused_nchw(x, weight, bias, y, blocks, co_block, px_block, pad_h, pad_w, groups):
    """``nonoverlap_gemm`` in NCHW, the GEMM and the pixel shuffle fused. Tasks ``(n, group, block of output
    channels, block of input pixels)`` are handed out one at a time (:mod:`._tasks`); the worker that takes one
    computes ``products[(co, a, b), p] = Σ_ci W[ci, co, a, b] · x[n, ci, p]`` for its block with one
    single-threaded BLAS call into its own buffer ``blocks[worker]`` (:data:`BLOCK_BYTES`), then moves it into
    place while it is still in cache: ``y[n, co, i·kH + a - p_h, j·kW + b - p_w] = (products + 0) + bias[co]``
    for pixel ``p = i·W + j``. A task owns its channels' outputs of its pixels; the one that ends an input row
    also writes that row's columns no tap reaches, the one that ends the image the ``output_padding`` rows
    below (bias alone)."""
    batch, in_channels, in_h, in_w = x.shape
    out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    k_h, k_w = weight.shape[2], weight.shape[3]
    per_group_in, per_group_out, taps = in_channels // groups, out_channels // groups, k_h * k_w
    pixels = in_h * in_w
    flat_x = x.reshape((batch, in_channels, pixels))
    flat_w = weight.reshape((in_channels, per_group_out * taps))
    co_blocks, px_blocks = (per_group_out - 1) // co_block + 1, (pixels - 1) // px_block + 1
    covered_h = max(0, min(out_h, in_h * k_h - pad_h))      # rows below are output_padding: bias only
    covered_w = max(0, min(out_w, in_w * k_w - pad_w))
    zero = np.zeros(1, dtype=y.dtype)[0]                     # +0.0 in y's dtype (a 0.0 literal would be float64)
    tasks, counter = batch * groups * co_blocks * px_blocks, np.zeros(1, np.int64)
    for worker in prange(blocks.shape[0]):                   # one worker per thread, tasks handed out in turn
        task = next_task(counter)
        while task < tasks:
            pb = task % px_blocks                                # pixel blocks innermost: neighbours share weights
            cb = (task // px_blocks) % co_blocks
            g = (task // (px_blocks * co_blocks)) % groups
            n = task // (px_blocks * co_blocks * groups)
            c0, c1 = cb * co_block, min(per_group_out, (cb + 1) * co_block)
            p0, p1 = pb * px_block, min(pixels, (pb + 1) * px_block)
            ci0, ci1 = g * per_group_in, (g + 1) * per_group_in
            products = blocks[worker, :(c1 - c0) * taps * (p1 - p0)].reshape(((c1 - c0) * taps, p1 - p0))
            gemm(flat_w[ci0:ci1, c0 * taps:c1 * taps], flat_x[n, ci0:ci1, p0:p1], products, True, False)
            for c in range(c0, c1):
                co = g * per_group_out + c
                b_c = bias[co]
                for i in range(p0 // in_w, (p1 - 1) // in_w + 1):
                    j0, j1 = max(p0 - i * in_w, 0), min(p1 - i * in_w, in_w)
                    q0 = i * in_w + j0 - p0                      # products column of pixel (i, j0)
                    for a in range(k_h):
                        oh = i * k_h + a - pad_h
                        if oh < 0 or oh >= out_h:
                            continue
                        line, base = y[n, co, oh], (c - c0) * taps + a * k_w
                        if k_w == 2 and pad_w == 0:              # the U-Net case: interleave two rows, vectorised
                            left, right = products[base, q0:q0 + j1 - j0], products[base + 1, q0:q0 + j1 - j0]
                            dst = line[2 * j0:2 * j1]
                            for t in range(j1 - j0):
                                dst[2 * t] = (left[t] + zero) + b_c
                                dst[2 * t + 1] = (right[t] + zero) + b_c
                        else:
                            for b in range(k_w):
                                lo = max(j0, -((b - pad_w) // k_w))   # first j with j·kW + b - p_w >= 0
                                hi = min(j1, (out_w - 1 - b + pad_w) // k_w + 1)
                                src = products[base + b]
                                for j in range(lo, hi):
                                    line[j * k_w + b - pad_w] = (src[q0 + j - j0] + zero) + b_c
                        if j1 == in_w:
                            for ow in range(covered_w, out_w):
                                line[ow] = zero + b_c
                if p1 == pixels:
                    for oh in range(covered_h, out_h):
                        y[n, co, oh, :] = zero + b_c
            task = next_task(counter)


@parallel_kernel
def _fused_nhwc(x, packed, bias, y, blocks, m_block, px_block, pad_h, pad_w, groups):
    """``nonoverlap_gemm`` in NHWC: ``products[p, (a, b, co)] = Σ_ci x[n, p, ci] · P[ci, a, b, co]`` for a block
    of pixels ``p = i·W + j`` and columns (``P[ci, a, b, co] = W[ci, co, a, b]``), one single-threaded BLAS call per
    task (handed out as in :func:`_fused_nchw`) into the worker's buffer, then each tap's run of output channels
    copied in place with the bias: ``y[n, i·kH + a - p_h, j·kW + b - p_w, co] = (products + 0) + bias[co]``. A
    task owns its columns of its pixels' outputs; the first column block of a group also writes the positions
    no tap reaches (bias alone)."""
    batch, in_h, in_w, in_channels = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    k_h, k_w, per_group_out = packed.shape[1], packed.shape[2], packed.shape[3]
    per_group_in, width = in_channels // groups, k_h * k_w * per_group_out
    pixels = in_h * in_w
    flat_x = x.reshape((batch, pixels, in_channels))
    flat_p = packed.reshape((in_channels, width))
    m_blocks, px_blocks = (width - 1) // m_block + 1, (pixels - 1) // px_block + 1
    covered_h = max(0, min(out_h, in_h * k_h - pad_h))
    covered_w = max(0, min(out_w, in_w * k_w - pad_w))
    zero = np.zeros(1, dtype=y.dtype)[0]
    tasks, counter = batch * groups * px_blocks * m_blocks, np.zeros(1, np.int64)
    for worker in prange(blocks.shape[0]):                   # one worker per thread, tasks handed out in turn
        task = next_task(counter)
        while task < tasks:
            mb = task % m_blocks
            pb = (task // m_blocks) % px_blocks
            g = (task // (m_blocks * px_blocks)) % groups
            n = task // (m_blocks * px_blocks * groups)
            m0, m1 = mb * m_block, min(width, (mb + 1) * m_block)
            p0, p1 = pb * px_block, min(pixels, (pb + 1) * px_block)
            ci0, ci1, co0 = g * per_group_in, (g + 1) * per_group_in, g * per_group_out
            products = blocks[worker, :(p1 - p0) * (m1 - m0)].reshape((p1 - p0, m1 - m0))
            gemm(flat_x[n, p0:p1, ci0:ci1], flat_p[ci0:ci1, m0:m1], products, False, False)
            for p in range(p0, p1):
                i, j = p // in_w, p % in_w
                row = products[p - p0]
                for tap in range(m0 // per_group_out, (m1 - 1) // per_group_out + 1):
                    oh, ow = i * k_h + tap // k_w - pad_h, j * k_w + tap % k_w - pad_w
                    if oh < 0 or oh >= out_h or ow < 0 or ow >= out_w:
                        continue
                    lo, hi = max(m0, tap * per_group_out), min(m1, (tap + 1) * per_group_out)
                    c0 = co0 + lo - tap * per_group_out
                    dst, src, b_c = y[n, oh, ow, c0:c0 + hi - lo], row[lo - m0:hi - m0], bias[c0:c0 + hi - lo]
                    for q in range(hi - lo):
                        dst[q] = (src[q] + zero) + b_c[q]
                if m0 == 0 and j == in_w - 1:
                    for a in range(k_h):
                        oh = i * k_h + a - pad_h
                        if 0 <= oh < out_h:
                            for ow in range(covered_w, out_w):
                                for c in range(co0, co0 + per_group_out):
                                    y[n, oh, ow, c] = zero + bias[c]
            if m0 == 0 and p1 == pixels:
                for oh in range(covered_h, out_h):
                    for ow in range(out_w):
                        for c in range(co0, co0 + per_group_out):
                            y[n, oh, ow, c] = zero + bias[c]
            task = next_task(counter)


@parallel_kernel
def _col2im_gather(columns, bias, y, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """col2im as a gather: ``y[n, c, oh, ow] = Σ columns[c, kh, kw, n, ih, iw] + bias[c]`` over the taps with
    ``oh = ih·s_h - p_h + kh·d_h``, ``ow = iw·s_w - p_w + kw·d_w``, added in (kh, kw) order. One thread per
    output plane ``(n, c)``, which it owns."""
    channels, k_h, k_w, batch, in_h, in_w = columns.shape
    out_h, out_w = y.shape[2], y.shape[3]
    phases, phase_len = min(stride_w, out_w), (out_w - 1) // stride_w + 1
    for plane in prange(batch * channels):
        n, c = plane // channels, plane % channels
        # acc[b, j] holds output column b + s_w·j, so each tap adds one unit-stride run. A phase b that holds an
        # output has b <= ow < W_out, so min(s_w, W_out) phases suffice (a huge stride costs nothing).
        acc = np.empty((phases, phase_len), dtype=y.dtype)
        for oh in range(out_h):
            acc[:] = 0.0
            for kh in range(k_h):
                shift = oh + pad_h - kh * dil_h
                if shift < 0 or shift % stride_h != 0 or shift // stride_h >= in_h:
                    continue
                ih = shift // stride_h
                for kw in range(k_w):
                    start = kw * dil_w - pad_w                       # ow of input column 0
                    iw_lo = max(0, -(start // stride_w))             # first iw with ow >= 0
                    iw_hi = min(in_w, (out_w - 1 - start) // stride_w + 1)
                    if iw_hi <= iw_lo:
                        continue
                    skip = start // stride_w                         # ow = b + s·(iw + skip)
                    dst = acc[start % stride_w, iw_lo + skip:iw_hi + skip]
                    run = columns[c, kh, kw, n, ih, iw_lo:iw_hi]
                    for i in range(iw_hi - iw_lo):
                        dst[i] += run[i]
            line, b_c = y[n, c, oh], bias[c]
            for b in range(phases):
                for j in range((out_w - 1 - b) // stride_w + 1):
                    line[b + stride_w * j] = acc[b, j] + b_c


@parallel_kernel
def _direct_gather(x, weight, bias, y, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups):
    """Output-stationary gather: ``y[n, co, oh, :] = Σ x[n, ci, ih, iw] · W[ci, co_g, kh, kw] + bias[co]``
    over the taps with ``oh = ih·s_h - p_h + kh·d_h`` and the input pixels whose ``ow`` is in range.
    One thread per output plane ``(n, co)``; only (pixel, tap) pairs of the scatter definition are combined."""
    batch, in_channels, in_h, in_w = x.shape
    out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    per_group_in, per_group_out = in_channels // groups, out_channels // groups
    k_h, k_w = weight.shape[2], weight.shape[3]
    phases, phase_len = min(stride_w, out_w), (out_w - 1) // stride_w + 1
    for plane in prange(batch * out_channels):
        n, co = plane // out_channels, plane % out_channels
        g, co_g = co // per_group_out, co % per_group_out
        # acc[b, j] holds output column b + s_w·j, so each (tap, channel) adds one unit-stride run; only the
        # min(s_w, W_out) phases that hold outputs exist.
        acc = np.empty((phases, phase_len), dtype=y.dtype)
        for oh in range(out_h):
            acc[:] = 0.0
            for kh in range(k_h):
                shift = oh + pad_h - kh * dil_h
                if shift < 0 or shift % stride_h != 0 or shift // stride_h >= in_h:
                    continue
                ih = shift // stride_h
                for ci in range(g * per_group_in, (g + 1) * per_group_in):
                    src = x[n, ci, ih]
                    for kw in range(k_w):
                        w = weight[ci, co_g, kh, kw]
                        start = kw * dil_w - pad_w                   # ow of input column 0
                        iw_lo = max(0, -(start // stride_w))         # first iw with ow >= 0
                        iw_hi = min(in_w, (out_w - 1 - start) // stride_w + 1)
                        if iw_hi <= iw_lo:
                            continue
                        # ow = b + s·(iw + skip): views indexed from 0 let LLVM vectorise the loop.
                        skip = start // stride_w
                        dst = acc[start % stride_w, iw_lo + skip:iw_hi + skip]
                        run = src[iw_lo:iw_hi]
                        for i in range(iw_hi - iw_lo):
                            dst[i] += run[i] * w
            line, b_c = y[n, co, oh], bias[co]
            for b in range(phases):
                for j in range((out_w - 1 - b) // stride_w + 1):
                    line[b + stride_w * j] = acc[b, j] + b_c


@intrinsic
def _stack_tile(typingctx, like, size):
    """A pointer to ``size`` (a literal) elements of ``like``'s type on the stack, allocated once per call in the
    function's entry block (so once per thread in a parallel region). LLVM knows such memory aliases no array
    argument, so the loops that accumulate into it vectorise without runtime overlap checks; a heap buffer
    (``np.empty``) would need them on every call of the micro-kernel."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(like),
                                   size=context.get_constant(types.intp, count))
    return types.CPointer(like)(like, size), codegen


@parallel_kernel(fastmath={"contract"})
def _blocked_direct_rows(x, packed, bias, y, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """Register-blocked, phase-decomposed direct kernel: ``y[n, g·Co_g + co, oh, ow] = Σ x[n, g·Ci_g + ci, ih, iw] ·
    packed[g, kh, kw, ci, co] + bias`` over the taps of the scatter definition, ``packed`` being the weight as
    ``(G, kH, kW, Ci_g, Co_g)`` so that a block of output channels is one contiguous run.

    Work item: one output row ``(n, oh)`` × :data:`BLOCKED_TILE_CO` output channels of one group, owned by one
    thread. Per column phase ``b`` (outputs ``ow = b + s_w·j``) and run of :data:`BLOCKED_TILE_PIXELS` phase
    pixels ``j``, an accumulator tile ``acc[j, co]`` (on the stack, L1-resident) starts at +0.0; only the phase's
    taps are visited (``kh`` with ``oh + p_h - kh·d_h ≡ 0 mod s_h``, ``kw`` with ``b + p_w - kw·d_w ≡ 0 mod s_w``:
    no inserted zero is ever multiplied), each over the pixels whose input column ``iw = j + off`` exists. The
    micro-kernel takes 2 pixels × 4 input channels: their 8 input values are broadcast once into registers and
    one unit-stride loop over the output channels does 8 FMAs per vector of ``co`` (4 weight-row loads, 2
    accumulator loads and stores), which LLVM vectorises to full-width FMAs. Each output's sum runs in the same
    order everywhere, ``(kh, kw, ci)`` ascending, one fused multiply-add per product, so the result does not
    depend on the tiling or the thread count; the bias is added last."""
    batch, _, in_h, in_w = x.shape
    groups, k_h, k_w, per_group_in, per_group_out = packed.shape
    out_h, out_w = y.shape[2], y.shape[3]
    co_tiles = (per_group_out - 1) // BLOCKED_TILE_CO + 1
    phases = min(stride_w, out_w)
    zero = np.zeros(1, dtype=y.dtype)[0]                 # +0.0 in y's dtype
    for item in prange(batch * groups * co_tiles * out_h):
        oh = item % out_h
        g = (item // (out_h * co_tiles)) % groups
        n = item // (out_h * co_tiles * groups)
        co0 = (item // out_h) % co_tiles * BLOCKED_TILE_CO
        cot = min(BLOCKED_TILE_CO, per_group_out - co0)
        acc = carray(_stack_tile(zero, _BLOCKED_TILE_SIZE), (BLOCKED_TILE_PIXELS, BLOCKED_TILE_CO))
        for b in range(phases):
            phase_len = (out_w - 1 - b) // stride_w + 1
            for j0 in range(0, phase_len, BLOCKED_TILE_PIXELS):
                jn = min(BLOCKED_TILE_PIXELS, phase_len - j0)
                for j in range(jn):
                    for c in range(cot):
                        acc[j, c] = zero
                for kh in range(k_h):
                    shift = oh + pad_h - kh * dil_h
                    if shift < 0 or shift % stride_h != 0 or shift // stride_h >= in_h:
                        continue
                    ih = shift // stride_h
                    for kw in range(k_w):
                        shift_w = b + pad_w - kw * dil_w
                        if shift_w % stride_w != 0:
                            continue
                        off = shift_w // stride_w                 # iw = j + off
                        j_lo, j_hi = max(j0, -off), min(j0 + jn, in_w - off)
                        if j_hi <= j_lo:
                            continue
                        taps = packed[g, kh, kw]
                        ci = 0
                        while ci + 4 <= per_group_in:
                            w0 = taps[ci, co0:co0 + cot]
                            w1 = taps[ci + 1, co0:co0 + cot]
                            w2 = taps[ci + 2, co0:co0 + cot]
                            w3 = taps[ci + 3, co0:co0 + cot]
                            r0 = x[n, g * per_group_in + ci, ih]
                            r1 = x[n, g * per_group_in + ci + 1, ih]
                            r2 = x[n, g * per_group_in + ci + 2, ih]
                            r3 = x[n, g * per_group_in + ci + 3, ih]
                            j = j_lo
                            while j + 2 <= j_hi:
                                iw = j + off
                                x00, x01, x02, x03 = r0[iw], r1[iw], r2[iw], r3[iw]
                                x10, x11, x12, x13 = r0[iw + 1], r1[iw + 1], r2[iw + 1], r3[iw + 1]
                                pair = acc[j - j0:j - j0 + 2]             # rows a constant stride apart
                                for c in range(cot):
                                    pair[0, c] = ((((pair[0, c] + x00 * w0[c]) + x01 * w1[c]) + x02 * w2[c])
                                                  + x03 * w3[c])
                                    pair[1, c] = ((((pair[1, c] + x10 * w0[c]) + x11 * w1[c]) + x12 * w2[c])
                                                  + x13 * w3[c])
                                j += 2
                            if j < j_hi:
                                iw = j + off
                                x00, x01, x02, x03 = r0[iw], r1[iw], r2[iw], r3[iw]
                                row = acc[j - j0]
                                for c in range(cot):
                                    row[c] = (((row[c] + x00 * w0[c]) + x01 * w1[c]) + x02 * w2[c]) + x03 * w3[c]
                            ci += 4
                        for rest in range(ci, per_group_in):
                            w0 = taps[rest, co0:co0 + cot]
                            r0 = x[n, g * per_group_in + rest, ih]
                            for j in range(j_lo, j_hi):
                                x00 = r0[j + off]
                                row = acc[j - j0]
                                for c in range(cot):
                                    row[c] = row[c] + x00 * w0[c]
                for c in range(cot):
                    co = g * per_group_out + co0 + c
                    line, b_c = y[n, co, oh], bias[co]
                    for j in range(jn):
                        line[b + stride_w * (j0 + j)] = acc[j, c] + b_c


# ---- wrappers: allocate, pick the path, call the kernels -----------------------------------------------------

def _bias_or_zeros(bias, problem):
    return np.zeros(problem.out_channels, dtype=problem.dtype) if bias is None else bias


def _gemm_columns(x, weight, problem):
    """``columns[co, kh, kw, n, ih, iw] = Σ_ci W[ci, co, kh, kw] · x[n, ci, ih, iw]`` (ci over co's group) for
    the images of ``x``: one BLAS GEMM per group for all of them."""
    n, g = x.shape[0], problem.groups
    (h, w), (kh, kw) = problem.in_size, problem.kernel_size
    cig, cog = problem.in_per_group, problem.out_per_group
    weight_t = weight.reshape(g, cig, cog * kh * kw).transpose(0, 2, 1)    # (G, Co_g·kH·kW, Ci_g), a view
    pixels = x.reshape(n, g, cig, h * w)
    # (G, Ci_g, N·HW): the batch becomes GEMM columns (a copy of the input only when N > 1).
    pixels = pixels[0] if n == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0, 3))
    columns = np.matmul(weight_t, pixels.reshape(g, cig, n * h * w))      # (G, Co_g·kH·kW, N·HW)
    return columns.reshape(problem.out_channels, kh, kw, n, h, w)


def _column_bytes_per_image(problem):
    """Bytes of the GEMM paths' ``columns`` (C_out·kH·kW·H·W) for one image."""
    return (problem.out_channels * problem.kernel_size[0] * problem.kernel_size[1]
            * problem.in_size[0] * problem.in_size[1] * problem.dtype.itemsize)


def _image_chunks(problem):
    """Slices of the batch whose column buffers stay under :data:`COLUMN_BUFFER_BYTES` (at least 1 image)."""
    step = max(1, COLUMN_BUFFER_BYTES // _column_bytes_per_image(problem))
    return [slice(n0, min(problem.batch, n0 + step)) for n0 in range(0, problem.batch, step)]


def _block_plan(problem):
    """The fused path's blocks: ``(output channels per block, pixels per block)`` in NCHW (whole input rows when
    a row fits), ``(weight columns per block, pixels per block)`` in NHWC. They depend on the problem only, not
    on the thread count, so every thread count gives the same blocks and bitwise the same result."""
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    elements = max(1, BLOCK_BYTES // problem.dtype.itemsize)
    if problem.layout == "NHWC":
        width = min(taps * problem.out_per_group, BLOCK_WIDTH)
        return width, max(1, elements // width)
    channels = max(1, min(problem.out_per_group, BLOCK_WIDTH // taps))
    pixels, row = max(1, elements // (channels * taps)), problem.in_size[1]
    return channels, (pixels // row * row if pixels >= row else pixels)


def _fits_blas(problem):
    """Whether every size and leading dimension the fused path hands to BLAS fits its 32-bit integers."""
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    return max(problem.in_size[0] * problem.in_size[1], problem.out_per_group * taps,
               problem.in_channels) <= INT32_MAX


def _nonoverlap_gemm(x, weight, bias, problem, out=None):
    y = np.empty(problem.output_shape, dtype=problem.dtype) if out is None else out
    bias = _bias_or_zeros(bias, problem)
    first, pixels = _block_plan(problem)
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    # one worker (and buffer) per Numba thread, kept across calls
    threads, dtype = numba.get_num_threads(), problem.dtype
    with single_threaded_blas():
        if problem.layout == "NHWC":
            packed = workspace.scratch("numba_cpu.packed_weight", (problem.in_channels, *problem.kernel_size,
                                                                    problem.out_per_group), dtype)
            # (a copy in this thread: a second parallel region would cost another wait for both threads)
            np.copyto(packed, weight.transpose(0, 2, 3, 1))
            blocks = workspace.scratch("numba_cpu.blocks", (threads, first * pixels), dtype)
            _fused_nhwc(x, packed, bias, y, blocks, first, pixels, *problem.padding, problem.groups)
        else:
            blocks = workspace.scratch("numba_cpu.blocks", (threads, first * taps * pixels), dtype)
            _fused_nchw(x, weight, bias, y, blocks, first, pixels, *problem.padding, problem.groups)
    return y


def _gemm_col2im(x, weight, bias, problem, out=None):
    y = np.empty(problem.output_shape, dtype=problem.dtype) if out is None else out
    bias = _bias_or_zeros(bias, problem)
    for images in _image_chunks(problem):
        _col2im_gather(_gemm_columns(x[images], weight, problem), bias, y[images], *problem.stride,
                       *problem.padding, *problem.dilation)
    return y


def _direct(x, weight, bias, problem, out=None):
    y = np.empty(problem.output_shape, dtype=problem.dtype) if out is None else out
    _direct_gather(x, weight, _bias_or_zeros(bias, problem), y, *problem.stride, *problem.padding,
                   *problem.dilation, problem.groups)
    return y


def _packed_weight(weight, problem):
    """The weight as ``(G, kH, kW, C_in/G, C_out/G)``: for each (group, tap, input channel) the output channels
    are one contiguous run (``blocked_direct``'s vector loop)."""
    g, (kh, kw) = problem.groups, problem.kernel_size
    grouped = weight.reshape(g, problem.in_per_group, problem.out_per_group, kh, kw)
    return np.ascontiguousarray(grouped.transpose(0, 3, 4, 1, 2))


def _blocked_direct(x, weight, bias, problem, out=None):
    y = np.empty(problem.output_shape, dtype=problem.dtype) if out is None else out
    _blocked_direct_rows(x, _packed_weight(weight, problem), _bias_or_zeros(bias, problem), y, *problem.stride,
                         *problem.padding, *problem.dilation)
    return y


_RUNNERS = {"direct": _direct, "nonoverlap_gemm": _nonoverlap_gemm, "gemm_col2im": _gemm_col2im,
            "blocked_direct": _blocked_direct}


#: The paths that compute NHWC natively; the others get NHWC arrays transposed to NCHW and back.
NHWC_PATHS = ("nonoverlap_gemm",)


def numba_conv_transpose2d(x, weight, bias, problem, out=None):
    path = choose_path(problem)
    if problem.layout == "NHWC" and path not in NHWC_PATHS:
        return run_converted(_RUNNERS[path], x, weight, bias, problem, "NCHW", out)
    return _RUNNERS[path](x, weight, bias, problem, out)


register(Backend(
    name="numba_cpu",
    description="Numba prange kernels: one GEMM + fused pixel shuffle (stride == kernel) or gathering "
                "col2im (overlapping taps), or an output-stationary gather (depthwise, tiny channels)",
    run=numba_conv_transpose2d,
    writes_out=True,
    layouts=("NCHW", "NHWC"),
))
