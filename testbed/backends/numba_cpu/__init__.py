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
measured 9× slower. In NHWC (channels last) the GEMM is ``(H·W × C_in/G) · (C_in/G × C_out/G·kH·kW)`` against
the weight as given, and each tap's products, every ``kH·kW``-th of a block row, are gathered into a contiguous
run of output channels. The per-thread blocks are kept across calls (:mod:`testbed.workspace`), so a repeated
call page-faults only on its output, and with ``out=`` on nothing.

``nonoverlap_direct`` (stride == kernel with kernel width 2, no padding and at least 1024 input pixels: the U-Net
up-convolution; chosen over ``nonoverlap_gemm`` there, see :func:`_nonoverlap_direct_suits`). The same GEMM, but
computed by this module's own register-tile micro-kernel (:func:`_fma_panel`, as ``blocked_direct``'s) on operands
packed once per call and shared by both threads, with every tile written straight from registers to its outputs: no
product block, no second pass, no per-call BLAS packing per thread. NHWC (:func:`_nonoverlap_tiles`): a tile is 6
input pixels × one 64-byte vector of output channels of one tap, stored as 6 contiguous vectors with the bias added
(:func:`_fma_panel_out`). NCHW (:func:`_nonoverlap_tiles_nchw`): a tile is 6 weight rows ``(co, a, b)`` × one
vector of 16 consecutive input pixels, the two columns ``b`` of each row pair interleaved in registers into one
contiguous run of 32 outputs (:func:`_fma_panel_pairs_out`). Each sum runs over the input channels in ascending
order from +0.0, one FMA per product, as ``blocked_direct``'s, so all three give bitwise the same result, in both
layouts. Measured against ``nonoverlap_gemm`` on the U-Net shapes in the README.

``gemm_col2im`` (overlapping taps with GEMM-sized channels). The same GEMM gives every (input pixel, tap)
product summed over input channels, ``columns[co, kh, kw, n, ih, iw]``; then a *gathering* col2im: each
thread owns output planes and adds, per row, for each tap ``kh`` with ``(oh + p - kh·d) ≡ 0 (mod s)``, the column
entries that land in the row (Caffe's / PyTorch's ``slow_conv_transpose2d`` design, with its scatter
turned into an output-stationary gather and the bias fused in). Only useful products are computed.

``blocked_direct`` (overlapping taps: the default for them, see :func:`choose_path`). A direct kernel with no
intermediate buffer (:func:`_blocked_direct_tiles`): output-stationary and phase-decomposed (each output phase
visits only its sub-kernel's taps, so no inserted zero is multiplied), a work item being a tile of output
channels × up to 128 output pixels (rows of one row phase, across images when narrow), owned by one thread.
Its micro-kernel :func:`_fma_panel` is a register tile, as in a GEMM: 6 pixels × one 64-byte vector of output
channels (16 float32 or 8 float64) of accumulators stay in registers for a tap's whole input-channel sum, each
step loading one weight vector (the weight packed ``(G, kH, kW, C_in/G, C_out/G⁺)``) and broadcasting 6
inputs (the input channels-last). It is written as LLVM vector IR (``llvm.fma`` on ``<16 x float>``) because
Numba's pipeline vectorises innermost loops only (its SLP vectoriser is off): a first version that let LLVM
vectorise the output-channel loop (2 pixels × 4 channels per call, accumulators in an L1 tile) reached
40-60 GFLOP/s per core here, this one 55-70, against ~75-85 for OpenBLAS's SGEMM. Assembly
(``_blocked_direct_tiles.parallel.inspect_asm(sig)`` with ``TESTBED_NUMBA_CACHE=0``): on this project's current
host, an AMD EPYC (Zen 3: AVX2, no AVX-512), the panel loop is 12 ``vfmadd231ps`` on ymm registers (two per
16-channel vector) fed by ``vbroadcastss`` and two ``vmovups`` weight loads (98 ymm FMAs in the float32
kernel, ``vfmadd231pd`` in the float64 one); compiled for ``sapphirerapids`` (``NUMBA_CPU_NAME``/``FEATURES``)
the same IR gives zmm ``vfmadd231ps`` (89 of them). Tile sizes, measured single-threaded (thread CPU time,
best of interleaved rounds, GFLOP/s):

==========================  =================================================================================
micro-kernel                autovectorised 2 pixels × 4 channels: 43-56 at 64 output channels (3×4, 4×4 and
                            the tree-summed variants within noise, 1×8 42); register panel 6 × 16: 70 in
                            isolation (the classic AVX2 SGEMM shape: 12 accumulators + weight + broadcast)
input layout                NCHW 42-58 → channels-last 53-65 (a panel's 6 × C_in inputs stay in L1; in NCHW
                            the channel step is a multiple of 4 KB and they all map to one cache set)
pixels per tile             32 / 64 / 128: k4s2p1 58/66/69, k3s1p1 60/62/66, k5s3 55/57/59, k3s2p1op1
                            53/54/56, 512→256 @8² N8 60/58/71: 128 (64 KB of float32 accumulators, touched
                            only at each panel's start and end)
output channels per tile    ms at 16/32/64/128 (first version): k4s2p1 53/44/42/29, 512→256 @8² 137/124/78/47:
                            the largest the group allows, ≤ 128
rows per tile               several when the image is narrow: 1024→512 @4² N16 7.6 → 38 GFLOP/s
==========================  =================================================================================

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
in ``(kh, kw)`` order, channels inside the GEMM or in ascending order, the bias last), so results are bitwise
repeatable (``blocked_direct``'s do not even depend on its tiles), and an output is never -0.0 (PyTorch's
sign of zero).

Resources follow the output, not the parameters: the per-plane accumulators hold ``min(s_w, W_out)`` phases
of ``ceil(W_out / s_w)`` columns (a stride of 10⁹ or 2⁶² costs nothing), all index arithmetic stays inside
int64 (``Problem`` refuses parameters whose extent does not fit), and the GEMM paths are taken only when one
image's column buffer ``C_out·kH·kW·H·W`` fits :attr:`Problem.workspace_limit` (a 128×128 kernel would need
gigabytes for a 1 MB output): beyond it ``blocked_direct`` (or ``direct``) computes the same products with no
buffer at all; ``blocked_direct``'s accumulators are a fixed stack tile per thread.

Threads and fork: the kernels are :func:`._runtime.parallel_kernel` s, safe to call from several threads under
every Numba threading layer and in children forked after a parallel call (see ``_runtime``).

NaN/inf: every path forms exactly the (input pixel, tap) products of the scatter definition (no padding, no
zero-inserted input, no multiplication by a filler zero; the GEMM paths' products for outputs cropped away
by ``padding`` are never read), so NaN/inf in ``x``, ``W`` or the bias reach exactly the outputs the
definition says.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import carray, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import workspace
from ..registry import Backend, register, run_converted
from ._blas import INT32_MAX, gemm, single_threaded_blas
from ._runtime import parallel_kernel, serial_kernel
from ._tasks import mark_done, next_task, wait_done

__all__ = ["choose_path", "PATHS"]

#: The algorithms of this backend.
PATHS = ("direct", "nonoverlap_gemm", "gemm_col2im", "blocked_direct", "nonoverlap_direct")

#: ``direct`` below this product C_in/G · C_out/G: a GEMM that thin (depthwise: 1) spends its time in call
#: and packing overhead, while the gather loop is memory-bound anyway.
DIRECT_MAX_CHANNEL_PRODUCT = 16

#: The fused path (``nonoverlap_gemm``) computes the GEMM in blocks of about this many bytes of products per
#: task, each moved into place by the thread that computed it while it is still in cache (L3) ...
BLOCK_BYTES = 8 * 2**20
#: ... with at most this many weight rows (NCHW) or columns (NHWC), output channels × taps, per block. Every BLAS
#: call repacks both operands, K·(rows + pixels) values for K·rows·pixels multiply-adds, so blocks this large
#: keep the repacking a few percent; 256 KiB blocks of 256 rows cost 1.2-1.5× the single GEMM here (measured
#: single-threaded, CPU time, unet1..4), 4 MiB of 512 rows 1.0-1.2×. On unet1 in NCHW (784 pixels, all in one
#: block), 1024 rows (2 tasks) against 512 (4): median 25.1 against 25.7 ms (bare GEMM 22.7), fresh processes,
#: 6 alternations, two threads: each task repacks the whole input.
BLOCK_WIDTH = 1024

#: ``blocked_direct``'s tile: at most this many output channels per work item, and phase pixels per accumulator
#: tile (``BLOCKED_TILE_PIXELS × BLOCKED_MAX_TILE_CO`` elements on each thread's stack: 64 KB in float32; the
#: micro-kernel touches it only at the start and end of each input-channel sum, so L2 serves).
BLOCKED_MAX_TILE_CO = 128
BLOCKED_TILE_PIXELS = 128
#: Pixels of one :func:`_fma_panel` call: 6 pixels × one 64-byte vector of output channels is 12 AVX2 registers
#: of accumulators (the classic 6×16 float32 GEMM micro-kernel shape), plus a weight vector and a broadcast.
BLOCKED_PANEL_PIXELS = 6
#: Work items per thread ``blocked_direct`` keeps (fewer rows per tile) when a problem is small.
BLOCKED_ITEMS_PER_THREAD = 4
_BLOCKED_TILE_SIZE = BLOCKED_MAX_TILE_CO * BLOCKED_TILE_PIXELS
#: ``nonoverlap_direct`` takes kernels of at most this many taps (its stack tile holds a panel's products for
#: every tap: 16 × 6 pixels × 16 lanes, 6 KB of float32) ...
NONOVERLAP_MAX_TAPS = 16
_NONOVERLAP_TILE_SIZE = NONOVERLAP_MAX_TAPS * BLOCKED_PANEL_PIXELS * 16
#: ... and gives each task about this many bytes of input pixels (kept in L2 across its vectors of output
#: channels), at most :data:`NONOVERLAP_MAX_PIXELS` pixels.
NONOVERLAP_BLOCK_BYTES = 192 * 2**10
NONOVERLAP_MAX_PIXELS = 384
#: ``nonoverlap_direct`` from this many input pixels (N·H·W) on; below, ``nonoverlap_gemm`` (see
#: :func:`_nonoverlap_direct_suits`).
NONOVERLAP_MIN_PIXELS = 1024
_NONOVERLAP_NCHW_TILE = 6 * 16
#: :func:`_pack_panel` and :func:`_pack_row_tiles` ask for a weight row's cache lines this many rows ahead of
#: the one they pack (:func:`_prefetch`) ...
PACK_PREFETCH_ROWS = 16
#: ... and :func:`_nonoverlap_tiles_nchw` for the input pixels of a plane this many planes ahead of the one it packs.
PACK_PREFETCH_PLANES = 4
#: Row tiles per packing task of :func:`_nonoverlap_tiles_nchw` (each a run of 6·this weights per weight row).
PACK_ROW_TILES = 32
#: ``blocked_direct`` moves its input channels-last on both threads above this size, on the calling thread below:
#: every parallel region waits for all threads, and on a busy host a thread's core may be a time slice away.
PARALLEL_COPY_BYTES = 4 * 2**20

#: The GEMM paths compute this many bytes of ``columns`` (C_out·kH·kW·H·W per image) at most at a time;
#: larger batches are done in slices.
COLUMN_BUFFER_BYTES = 256 * 2 ** 20


#: Not ``blocked_direct`` when fewer output channels per group than this (its vector of 16 output channels
#: would be mostly padding): ``gemm_col2im`` with one group, ``direct`` with several (one small GEMM per
#: group) ...
BLOCKED_MIN_OUT_PER_GROUP = 16
#: ... or at least this many input channels per group (a GEMM that deep runs at BLAS speed and the column pass
#: is small beside it).
GEMM_MIN_IN_PER_GROUP = 512


def choose_path(problem) -> str:
    """The algorithm (one of :data:`PATHS`) ``numba_cpu`` runs for ``problem``.

    For overlapping taps, from ``python -m experiments.numba_cpu_paths [--threads 1]`` (median ms, float32, a
    fresh process per cell; 2-core AMD EPYC (Zen 3, AVX2) shared with other jobs, load average 0.7-2 during the
    single-thread run, 2-12 during the two-thread one):

    ============================  =========  ===========  ======  =========  ===========  ======
    shape                         2 threads                       1 thread
    ----------------------------  -------------------------------  -------------------------------
    (decoder suite + extras)      blocked    gemm_col2im  direct  blocked    gemm_col2im  direct
    ============================  =========  ===========  ======  =========  ===========  ======
    k4s2p1 256→128 @32²           32         38           323     21         16           284
    k3s2p1op1 128→64 @64²         24         32           116     13         9.3          76
    k3s1p1 64→64 @64²             16         35           64      5.1        4.9          41
    k3d2 64→64 @64² dilation 2    16         33           62      5.0        5.3          55
    k4s2g8 256→256 g8 @32²        20         144          88      8.1        9.5          60
    k5s3 64→32 @32²               16         36           33      2.2        2.4          23
    k2s1 64→64 @32² N4            16         15           26      4.4        3.9          42
    k7s1p3 32→32 @32² N2          16         8.3          35      4.6        18           65
    k2s3 64→64 @32² (gaps)        16         16           22      5.5        2.5          21
    dcgan_head 512→256 @8² N8     58         55           1590    36         31           1850
    wide 1024→512 @4² N16         187        128          6900    150        74           7340
    dcgan_rgb 64→3 @32² N8        16         27           16      6.3        1.2          11
    thin8 8→8 @64² N2             16         24           7.9     1.1        0.98         2.0
    g16 64→64 g16 @64²            24         256          2.6     9.3        4.5          5.1
    depthwise 128 g128 @64²       67         41           8.0     44         23           4.4
    ============================  =========  ===========  ======  =========  ===========  ======

    With both threads (the way ``numba_cpu`` runs and the speed suite times it) ``blocked_direct`` wins on the
    overlapping decoder shapes: one parallel region per call, where ``gemm_col2im`` has OpenBLAS's pool and then
    Numba's, each waiting for its second thread on a busy host (times below ~30 ms come in steps of ~8 ms, a
    scheduler time slice lost to the other jobs, so the thin shapes are decided by the single-thread columns).
    Single-threaded, ``blocked_direct`` is within ±15 % of OpenBLAS GEMM + col2im on stride 1, dilation and
    k5s3, ahead with groups and large kernels, and 20-25 % behind on k4s2p1 and k3s2p1op1 (at most 2.25 taps
    per output there: the tile's zeroing and write-out weigh more) and where the GEMM is deep (C_in/G ≥ 512)
    or the taps leave gaps (stride ≥ the dilated kernel: at most one tap per output).
    """
    if problem.in_per_group * problem.out_per_group < DIRECT_MAX_CHANNEL_PRODUCT:
        return "direct"
    if problem.is_nonoverlapping and _nonoverlap_direct_suits(problem):
        return "nonoverlap_direct"
    if problem.is_nonoverlapping and _fits_blas(problem):
        return "nonoverlap_gemm"          # blocks of the GEMM: no column buffer, any size
    if _column_bytes_per_image(problem) > problem.workspace_limit:
        return "direct" if problem.is_nonoverlapping else "blocked_direct"
    if problem.is_nonoverlapping:
        return "gemm_col2im"              # sizes past BLAS's 32-bit integers: numpy's matmul splits them
    if problem.out_per_group < BLOCKED_MIN_OUT_PER_GROUP:
        return "gemm_col2im" if problem.groups == 1 else "direct"
    if problem.in_per_group >= GEMM_MIN_IN_PER_GROUP or _taps_leave_gaps(problem):
        return "gemm_col2im"
    return "blocked_direct"


def _nonoverlap_direct_suits(problem) -> bool:
    """Kernel width 2, no padding, at most :data:`NONOVERLAP_MAX_TAPS` taps, and at least
    :data:`NONOVERLAP_MIN_PIXELS` input pixels (N·H·W); the same rule in both layouts, so that NCHW and NHWC sum
    alike. Elsewhere ``nonoverlap_gemm`` is as fast or faster: with another kernel width or padding, NCHW tiles
    would go out element by element; with few pixels, packing the weight (per call, for each thread's share)
    weighs more. From ``python -m experiments.numba_cpu_paths --unet`` (median (min) ms, float32, 2 threads, 3
    rounds of fresh workers; two runs, the first NCHW only; 2-core AMD EPYC, load average 0.2-1.4):

    ===============  =======================  =======================  =====================
    case             nonoverlap_gemm          nonoverlap_direct        bare GEMM (NumPy)
    ===============  =======================  =======================  =====================
    unet1 NCHW       23.5; 26.7 (20.8)        23.7; 36 (24.9)          21.9; 23.4 (20)
    unet1 NHWC       31.8 (26.4)              30.9 (24.3)              23.3 (20.2)
    unet2 NCHW       18.1; 21.7 (17.8)        17.0; 23 (17.9)          15.9; 20.3 (17.8)
    unet2 NHWC       21.6 (17.8)              18.0 (16.6)              19.7 (18.8)
    unet3 NCHW       20.3; 22.2 (19.5)        18.2; 18.6 (16.2)        18.4; 18 (15)
    unet3 NHWC       20.2 (18.9)              16.0 (15.2)              18.4 (16.2)
    unet4 NCHW       25.6; 25.3 (21.3)        22.4; 25.7 (20.8)        24.1; 24.9 (18.8)
    unet4 NHWC       24.5 (20.2)              21.2 (19.9)              21.0 (19.1)
    ===============  =======================  =======================  =====================

    Single-threaded (CPU time, interleaved in one process, ratio to the bare GEMM) the two were within ±10 % on
    unet2-4, and on unet1 (784 pixels against an 8 MB weight) ``nonoverlap_gemm`` was ahead in NCHW (1.12-1.13
    against 1.16-1.31)."""
    return (problem.kernel_size[1] == 2 and problem.padding == (0, 0)
            and problem.kernel_size[0] * problem.kernel_size[1] <= NONOVERLAP_MAX_TAPS
            and problem.batch * problem.in_size[0] * problem.in_size[1] >= NONOVERLAP_MIN_PIXELS)


def _taps_leave_gaps(problem) -> bool:
    """No two taps reach the same output (stride ≥ the dilated kernel extent along both axes)."""
    return all(s >= d * (k - 1) + 1 for s, d, k in zip(problem.stride, problem.dilation, problem.kernel_size))


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
def _fused_nhwc(x, weight, bias, y, blocks, co_block, px_block, pad_h, pad_w, groups):
    """``nonoverlap_gemm`` in NHWC: ``products[p, (co, a, b)] = Σ_ci x[n, p, ci] · W[ci, co, a, b]`` for a block of
    pixels ``p = i·W + j`` and of output channels (the weight as given, so no repacked copy), one single-threaded
    BLAS call per task (handed out as in :func:`_fused_nchw`) into the worker's buffer, then each tap's channels
    gathered (a stride of ``kH·kW`` in the block, in cache) into their contiguous run of the output with the bias:
    ``y[n, i·kH + a - p_h, j·kW + b - p_w, co] = (products + 0) + bias[co]``. A task owns its channels of its
    pixels' outputs, and also writes those channels at the positions no tap reaches (bias alone) in the
    ``output_padding`` columns right of its pixels and, for the image's last pixels, in the rows below."""
    batch, in_h, in_w, in_channels = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    k_h, k_w = weight.shape[2], weight.shape[3]
    per_group_in, per_group_out, taps = in_channels // groups, weight.shape[1], k_h * k_w
    pixels = in_h * in_w
    flat_x = x.reshape((batch, pixels, in_channels))
    flat_w = weight.reshape((in_channels, per_group_out * taps))
    co_blocks, px_blocks = (per_group_out - 1) // co_block + 1, (pixels - 1) // px_block + 1
    covered_h = max(0, min(out_h, in_h * k_h - pad_h))
    covered_w = max(0, min(out_w, in_w * k_w - pad_w))
    zero = np.zeros(1, dtype=y.dtype)[0]
    tasks, counter = batch * groups * px_blocks * co_blocks, np.zeros(1, np.int64)
    for worker in prange(blocks.shape[0]):                   # one worker per thread, tasks handed out in turn
        task = next_task(counter)
        while task < tasks:
            cb = task % co_blocks
            pb = (task // co_blocks) % px_blocks
            g = (task // (co_blocks * px_blocks)) % groups
            n = task // (co_blocks * px_blocks * groups)
            c0, c1 = cb * co_block, min(per_group_out, (cb + 1) * co_block)
            p0, p1 = pb * px_block, min(pixels, (pb + 1) * px_block)
            ci0, ci1, lo = g * per_group_in, (g + 1) * per_group_in, g * per_group_out + c0
            width, run = (c1 - c0) * taps, c1 - c0
            products = blocks[worker, :(p1 - p0) * width].reshape((p1 - p0, width))
            gemm(flat_x[n, p0:p1, ci0:ci1], flat_w[ci0:ci1, c0 * taps:c1 * taps], products, False, False)
            b_c = bias[lo:lo + run]
            for p in range(p0, p1):
                i, j = p // in_w, p % in_w
                row = products[p - p0]
                if k_h == 2 and k_w == 2 and pad_h == 0 and pad_w == 0:   # the U-Net case: a 4-way de-interleave
                    d0, d1 = y[n, 2 * i, 2 * j, lo:lo + run], y[n, 2 * i, 2 * j + 1, lo:lo + run]
                    d2, d3 = y[n, 2 * i + 1, 2 * j, lo:lo + run], y[n, 2 * i + 1, 2 * j + 1, lo:lo + run]
                    for q in range(run):
                        t0, t1, t2, t3 = row[4 * q], row[4 * q + 1], row[4 * q + 2], row[4 * q + 3]
                        d0[q], d1[q] = (t0 + zero) + b_c[q], (t1 + zero) + b_c[q]
                        d2[q], d3[q] = (t2 + zero) + b_c[q], (t3 + zero) + b_c[q]
                else:
                    for tap in range(taps):
                        oh, ow = i * k_h + tap // k_w - pad_h, j * k_w + tap % k_w - pad_w
                        if oh < 0 or oh >= out_h or ow < 0 or ow >= out_w:
                            continue
                        dst = y[n, oh, ow, lo:lo + run]
                        for q in range(run):
                            dst[q] = (row[q * taps + tap] + zero) + b_c[q]
                if j == in_w - 1:
                    for a in range(k_h):
                        oh = i * k_h + a - pad_h
                        if 0 <= oh < out_h:
                            for ow in range(covered_w, out_w):
                                for q in range(run):
                                    y[n, oh, ow, lo + q] = zero + b_c[q]
            if p1 == pixels:
                for oh in range(covered_h, out_h):
                    for ow in range(out_w):
                        for q in range(run):
                            y[n, oh, ow, lo + q] = zero + b_c[q]
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
    function's entry block (so once per thread in a parallel region): ``blocked_direct``'s accumulator tile,
    with no heap allocation per work item."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    count = size.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(like),
                                   size=context.get_constant(types.intp, count))
    return types.CPointer(like)(like, size), codegen


def _vector_type(context, dtype):
    """One 64-byte vector of ``dtype`` (16 float32 or 8 float64 lanes) and its element width in bytes."""
    width = dtype.bitwidth // 8
    return ir.VectorType(context.get_value_type(dtype), 64 // width), width


def _vector_at(builder, vector, base, offset):
    return builder.bitcast(builder.gep(base, [offset]), vector.as_pointer())


def _panel_sums(context, builder, starts, w_p, w_start, w_step, x_p, x_offsets, x_step, count, dtype):
    """The IR of the micro-kernels' channel loop: register ``p`` starts at ``starts[p]`` and gets
    ``Σ_{k < count} x[x_offsets[p] + k·x_step] · w[w_start + k·w_step : +L]`` (one FMA per product, ``k`` ascending);
    returns the final vectors."""
    vector, width = _vector_type(context, dtype)
    lanes = vector.count
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                         f"llvm.fma.v{lanes}f{8 * width}")
    registers = []
    for start in starts:
        register = cgutils.alloca_once(builder, vector)              # promoted to a register by mem2reg
        builder.store(start, register)
        registers.append(register)
    undefined = ir.Constant(vector, ir.Undefined)
    lane0 = ir.Constant(ir.IntType(32), 0)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    with cgutils.for_range(builder, count) as loop:
        w = builder.load(_vector_at(builder, vector, w_p, builder.add(w_start, builder.mul(loop.index, w_step))),
                         align=width)
        step = builder.mul(loop.index, x_step)
        for offset, register in zip(x_offsets, registers):
            value = builder.load(builder.gep(x_p, [builder.add(offset, step)]))
            broadcast = builder.shuffle_vector(builder.insert_element(undefined, value, lane0), undefined, splat)
            builder.store(builder.call(fma, [broadcast, w, builder.load(register)]), register)
    return [builder.load(register) for register in registers]


def _panel_types_ok(arrays, starts, dtype):
    return (all(isinstance(a, types.Array) and a.layout == "C" and a.dtype == dtype for a in arrays)
            and dtype in (types.float32, types.float64)
            and all(isinstance(t, types.UniTuple) and isinstance(t.dtype, types.Integer) for t in starts))


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
        return [self.context.cast(self.builder, v, ty.dtype, types.intp)
                for v in cgutils.unpack_tuple(self.builder, self.values[i], ty.count)]


@intrinsic
def _prefetch(typingctx, array, index):
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
        flag = [ir.Constant(ir.IntType(32), value) for value in (0, 3, 1)]       # read, keep in all levels, data
        builder.call(hint, [builder.bitcast(builder.gep(a.data(0), [a.index(1)]), byte), *flag])
        return context.get_dummy_value()
    return types.none(array, index), codegen


@intrinsic
def _fma_panel(typingctx, acc, acc_starts, weights, w_start, w_step, x, x_starts, x_step, count):
    """The register-blocked micro-kernel: for each of the ``P = len(x_starts)`` pixels ``p`` and the ``L`` lanes
    of one 64-byte vector (16 float32 or 8 float64 output channels ``l``),

        acc.flat[acc_starts[p] + l] += Σ_{k < count} x.flat[x_starts[p] + k·x_step]
                                                     · weights.flat[w_start + k·w_step + l],

    one fused multiply-add per product, ``k`` (the input channel) ascending. The ``P`` accumulator vectors are
    loaded once, stay in registers for the whole ``k`` loop (each step: one weight-vector load, ``P`` broadcast
    inputs, ``P`` FMAs) and are stored once. Written as LLVM vector IR because Numba's pipeline vectorises only
    innermost loops (its SLP vectoriser is off), which cannot keep a tile in registers across the channel loop.
    The arrays must be C-contiguous; offsets are flat element indices, in bounds (not checked)."""
    if not (_panel_types_ok((acc, weights, x), (acc_starts, x_starts), acc.dtype)
            and acc_starts.count == x_starts.count):
        return None

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        vector, width = _vector_type(context, acc.dtype)
        homes = [_vector_at(builder, vector, a.data(0), offset) for offset in a.indices(1)]
        sums = _panel_sums(context, builder, [builder.load(home, align=width) for home in homes], a.data(2),
                           a.index(3), a.index(4), a.data(5), a.indices(6), a.index(7), a.index(8), acc.dtype)
        for home, value in zip(homes, sums):
            builder.store(value, home, align=width)
        return context.get_dummy_value()
    return types.none(acc, acc_starts, weights, w_start, w_step, x, x_starts, x_step, count), codegen


@intrinsic
def _fma_panel_out(typingctx, y, y_starts, bias, bias_start, weights, w_start, w_step, x, x_starts, x_step, count):
    """:func:`_fma_panel` with its accumulators starting at +0.0 and written out with a bias:
    ``y.flat[y_starts[p] + l] = (Σ_{k < count} x.flat[x_starts[p] + k·x_step] · weights.flat[w_start + k·w_step + l])
    + bias.flat[bias_start + l]``, the sum as there (from +0.0, ``k`` ascending, one FMA per product). For outputs
    whose ``L`` channels are one contiguous run (channels-last), so no tile is zeroed, loaded or copied."""
    if not (_panel_types_ok((y, bias, weights, x), (y_starts, x_starts), y.dtype) and y_starts.count == x_starts.count):
        return None

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        vector, width = _vector_type(context, y.dtype)
        zero = ir.Constant(vector, [0.0] * vector.count)
        sums = _panel_sums(context, builder, [zero] * x_starts.count, a.data(4), a.index(5), a.index(6),
                           a.data(7), a.indices(8), a.index(9), a.index(10), y.dtype)
        addend = builder.load(_vector_at(builder, vector, a.data(2), a.index(3)), align=width)
        for offset, value in zip(a.indices(1), sums):
            builder.store(builder.fadd(value, addend), _vector_at(builder, vector, a.data(0), offset), align=width)
        return context.get_dummy_value()
    return types.none(y, y_starts, bias, bias_start, weights, w_start, w_step, x, x_starts, x_step, count), codegen


@intrinsic
def _fma_panel_pairs_out(typingctx, y, y_starts, bias, bias_at, weights, w_start, w_step, x, x_starts, x_step,
                         count):
    """:func:`_fma_panel` for pairs of rows whose lanes interleave in the output (NCHW, kernel width 2: the
    columns ``2j`` and ``2j + 1`` of an output row): with ``s_p = Σ_{k < count} x.flat[x_starts[p] + k·x_step] ·
    weights.flat[w_start + k·w_step + l]`` (from +0.0, ``k`` ascending, one FMA per product) and pair ``q`` being
    the rows ``2q, 2q + 1``: ``y.flat[y_starts[q] + 2l] = s_2q[l] + bias[bias_at[q]]`` and
    ``y.flat[y_starts[q] + 2l + 1] = s_2q+1[l] + bias[bias_at[q]]``, one interleaved store of ``2L`` values."""
    if not (_panel_types_ok((y, bias, weights, x), (y_starts, bias_at, x_starts), y.dtype)
            and x_starts.count == 2 * y_starts.count == 2 * bias_at.count):
        return None

    def codegen(context, builder, signature, args):
        a = _Args(context, builder, signature, args)
        vector, width = _vector_type(context, y.dtype)
        lanes = vector.count
        pair = ir.VectorType(vector.element, 2 * lanes)
        zero = ir.Constant(vector, [0.0] * lanes)
        sums = _panel_sums(context, builder, [zero] * x_starts.count, a.data(4), a.index(5), a.index(6),
                           a.data(7), a.indices(8), a.index(9), a.index(10), y.dtype)
        interleave = ir.Constant(ir.VectorType(ir.IntType(32), 2 * lanes),
                                 [lane // 2 + (lane % 2) * lanes for lane in range(2 * lanes)])
        splat = ir.Constant(ir.VectorType(ir.IntType(32), 2 * lanes), [0] * (2 * lanes))
        undefined = ir.Constant(pair, ir.Undefined)
        for q, (offset, at) in enumerate(zip(a.indices(1), a.indices(3))):
            value = builder.load(builder.gep(a.data(2), [at]))
            addend = builder.shuffle_vector(builder.insert_element(undefined, value, ir.Constant(ir.IntType(32), 0)),
                                            undefined, splat)
            both = builder.shuffle_vector(sums[2 * q], sums[2 * q + 1], interleave)
            target = builder.bitcast(builder.gep(a.data(0), [offset]), pair.as_pointer())
            builder.store(builder.fadd(both, addend), target, align=width)
        return context.get_dummy_value()
    return (types.none(y, y_starts, bias, bias_at, weights, w_start, w_step, x, x_starts, x_step, count),
            codegen)


@parallel_kernel
def _blocked_direct_tiles(pixels, packed, bias, y, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, tile_co,
                          tile_rows):
    """Register-blocked, phase-decomposed direct kernel: ``y[n, g·Co_g + co, oh, ow] = Σ pixels[n, ih, iw, g·Ci_g + ci]
    · packed[g, kh, kw, ci, co] + bias`` over the taps of the scatter definition, ``pixels`` being the input
    channels-last (a pixel's channels are one contiguous run, so a panel's inputs stay in L1 for every vector
    of output channels) and ``packed`` the weight as
    ``(G, kH, kW, Ci_g, Co_g⁺)`` (output channels padded with zeros to a multiple of 16, whose accumulators are
    never written out) so that a vector of output channels is one contiguous run.

    Phases (Shi et al. 2016, see ``polyphase``): output row ``oh = ph + s_h·m`` receives exactly the taps ``kh``
    with ``ph + p_h - kh·d_h ≡ 0 (mod s_h)``, from input row ``ih = m + (ph + p_h - kh·d_h)/s_h``; output column
    ``ow = b + s_w·j`` the taps ``kw`` with ``b + p_w - kw·d_w ≡ 0 (mod s_w)``, from ``iw = j + off``. Only those
    taps are visited, each over the rows and columns whose input exists: no inserted zero is ever multiplied.

    Work item (owned by one thread): ``tile_co`` (a multiple of 16, ≤ :data:`BLOCKED_MAX_TILE_CO`) output
    channels of one group × ``tile_rows`` consecutive rows ``(n, m)`` of one row phase (several rows, across
    images, when the image is narrow, so that a tile has enough pixels to reuse each weight). Per column phase
    ``b`` and run of ``BLOCKED_TILE_PIXELS // tile_rows`` phase pixels, an accumulator tile ``acc[slot, co]``
    (on the stack, L1-resident) starts at +0.0; for each tap, each block of :data:`BLOCKED_PANEL_PIXELS`
    pixels whose input exists and each vector of output channels, :func:`_fma_panel` runs the whole
    input-channel sum in registers. Each output's sum runs in the same order everywhere, ``(kh, kw, ci)``
    ascending, one FMA per product, so the result depends neither on the tiling nor on the thread count; the
    bias is added last."""
    batch, in_h, in_w, in_channels = pixels.shape
    groups, k_h, k_w, per_group_in, padded_out = packed.shape
    out_h, out_w = y.shape[2], y.shape[3]
    per_group_out = y.shape[1] // groups
    lanes = 64 // y.itemsize                              # output channels per vector: 16 float32, 8 float64
    co_tiles = (per_group_out - 1) // tile_co + 1
    row_phases, col_phases = min(stride_h, out_h), min(stride_w, out_w)
    row_blocks = (batch * ((out_h - 1) // stride_h + 1) - 1) // tile_rows + 1      # of the longest row phase
    run = BLOCKED_TILE_PIXELS // tile_rows
    zero = np.zeros(1, dtype=y.dtype)[0]                  # +0.0 in y's dtype
    for item in prange(groups * co_tiles * row_phases * row_blocks):
        block = item % row_blocks
        ph = (item // row_blocks) % row_phases
        co0 = (item // (row_blocks * row_phases)) % co_tiles * tile_co
        g = item // (row_blocks * row_phases * co_tiles)
        cot = min(tile_co, padded_out - co0)              # a multiple of 16
        written = min(cot, per_group_out - co0)
        phase_rows = (out_h - 1 - ph) // stride_h + 1
        first = block * tile_rows
        rows = min(tile_rows, batch * phase_rows - first)
        if rows <= 0:
            continue
        acc = carray(_stack_tile(zero, _BLOCKED_TILE_SIZE), (BLOCKED_TILE_PIXELS, BLOCKED_MAX_TILE_CO))
        row_n = carray(_stack_tile(np.int64(0), BLOCKED_TILE_PIXELS), (BLOCKED_TILE_PIXELS,))
        row_m = carray(_stack_tile(np.int64(0), BLOCKED_TILE_PIXELS), (BLOCKED_TILE_PIXELS,))
        reached_acc = carray(_stack_tile(np.int64(0), BLOCKED_TILE_PIXELS), (BLOCKED_TILE_PIXELS,))
        reached_x = carray(_stack_tile(np.int64(0), BLOCKED_TILE_PIXELS), (BLOCKED_TILE_PIXELS,))
        for r in range(rows):
            row_n[r], row_m[r] = (first + r) // phase_rows, (first + r) % phase_rows
        for b in range(col_phases):
            phase_len = (out_w - 1 - b) // stride_w + 1
            for j0 in range(0, phase_len, run):
                jn = min(run, phase_len - j0)
                for slot in range(rows * run):
                    for c in range(cot):
                        acc[slot, c] = zero
                for kh in range(k_h):
                    shift_h = ph + pad_h - kh * dil_h
                    if shift_h % stride_h != 0:
                        continue
                    off_h = shift_h // stride_h                        # ih = m + off_h
                    for kw in range(k_w):
                        shift_w = b + pad_w - kw * dil_w
                        if shift_w % stride_w != 0:
                            continue
                        off = shift_w // stride_w                      # iw = j + off
                        j_lo, j_hi = max(j0, -off), min(j0 + jn, in_w - off)
                        if j_hi <= j_lo:
                            continue
                        w_start = (((g * k_h + kh) * k_w + kw) * per_group_in) * padded_out + co0
                        # The tile's pixels this tap reaches: accumulator offset and pixels.flat index of channel 0.
                        count = 0
                        for r in range(rows):
                            ih = row_m[r] + off_h
                            if ih < 0 or ih >= in_h:
                                continue
                            pixel0 = ((row_n[r] * in_h + ih) * in_w + off) * in_channels + g * per_group_in
                            for j in range(j_lo, j_hi):
                                reached_acc[count] = (r * run + j - j0) * BLOCKED_MAX_TILE_CO
                                reached_x[count] = pixel0 + j * in_channels
                                count += 1
                        for c in range(0, cot, lanes):
                            w = w_start + c
                            i = 0
                            while i + 6 <= count:                      # BLOCKED_PANEL_PIXELS
                                _fma_panel(acc, (reached_acc[i] + c, reached_acc[i + 1] + c, reached_acc[i + 2] + c,
                                                 reached_acc[i + 3] + c, reached_acc[i + 4] + c,
                                                 reached_acc[i + 5] + c),
                                           packed, w, padded_out, pixels,
                                           (reached_x[i], reached_x[i + 1], reached_x[i + 2], reached_x[i + 3],
                                            reached_x[i + 4], reached_x[i + 5]), 1, per_group_in)
                                i += 6
                            if i + 4 <= count:
                                _fma_panel(acc, (reached_acc[i] + c, reached_acc[i + 1] + c, reached_acc[i + 2] + c,
                                                 reached_acc[i + 3] + c), packed, w, padded_out, pixels,
                                           (reached_x[i], reached_x[i + 1], reached_x[i + 2], reached_x[i + 3]), 1,
                                           per_group_in)
                                i += 4
                            if i + 2 <= count:
                                _fma_panel(acc, (reached_acc[i] + c, reached_acc[i + 1] + c), packed, w, padded_out,
                                           pixels, (reached_x[i], reached_x[i + 1]), 1, per_group_in)
                                i += 2
                            if i < count:
                                _fma_panel(acc, (reached_acc[i] + c,), packed, w, padded_out, pixels, (reached_x[i],),
                                           1, per_group_in)
                for r in range(rows):
                    n, oh = row_n[r], ph + stride_h * row_m[r]
                    for c in range(written):
                        co = g * per_group_out + co0 + c
                        line, b_c = y[n, co, oh], bias[co]
                        for j in range(jn):
                            line[b + stride_w * (j0 + j)] = acc[r * run + j, c] + b_c

@parallel_kernel
def _nonoverlap_tiles(pixels, weight, packed, bias, y, pad_h, pad_w, block_pixels, workers):
    """``nonoverlap_direct`` in NHWC: ``y[n, i·kH + a - p_h, j·kW + b - p_w, co] = Σ_ci pixels[n, i, j, ci] · W[ci, co,
    a, b] + bias[co]`` (stride == kernel: each output has exactly one tap) as a GEMM whose register tiles are
    written straight to their outputs, with no product buffer and no second pass. ``packed`` receives the weight
    as GEMM panels ``(G, Co_g⁺/L, kH, kW, Ci_g, L)`` (``L`` lanes of one 64-byte vector; the output channels padded
    with zeros), so the ``(Ci_g × L)`` panel of one tap and vector of output channels is one contiguous stream,
    and ``pixels`` is the input channels-last. The first tasks (handed out as in :func:`_fused_nchw`) each pack
    one vector's panels (:func:`_pack_panel`), so packing and the GEMM share one parallel region; a later task is
    a vector of output channels × ``block_pixels`` input pixels of one image and group (their inputs stay in L2
    across the vectors), and waits for its vector's panels (:func:`~._tasks.wait_done`; by then they are almost
    always done). Per :data:`BLOCKED_PANEL_PIXELS` pixels, :func:`_fma_panel` runs each tap's input-channel sum
    in registers into a stack tile ``acc[tap, pixel, lane]``, which is then written out, bias added, to the
    ``kH × kW`` blocks of the pixels (without padding, straight from registers: :func:`_fma_panel_out`). Outputs
    no tap reaches (``output_padding``) are left to the caller. Each sum runs ``ci`` ascending from +0.0, one FMA
    per product, as ``blocked_direct``'s: the result is bitwise that kernel's, and independent of the tasks."""
    batch, in_h, in_w, in_channels = pixels.shape
    groups, vectors, k_h, k_w, per_group_in, lanes = packed.shape
    out_h, out_w, out_channels = y.shape[1], y.shape[2], y.shape[3]
    per_group_out, taps, area = out_channels // groups, k_h * k_w, in_h * in_w
    blocks = (area - 1) // block_pixels + 1
    panels = groups * vectors                                      # the first tasks: one vector's panels each
    ready = np.zeros(panels, np.int64)
    tasks, counter = panels + batch * groups * blocks * vectors, np.zeros(1, np.int64)
    zero = np.zeros(1, dtype=y.dtype)[0]
    direct_out = pad_h == 0 and pad_w == 0                          # every tap's output exists
    c1, c2, c3, c4, c5 = in_channels, 2 * in_channels, 3 * in_channels, 4 * in_channels, 5 * in_channels
    for _worker in prange(workers):                      # one worker per thread, tasks handed out in turn
        acc = carray(_stack_tile(zero, _NONOVERLAP_TILE_SIZE), (_NONOVERLAP_TILE_SIZE,))
        outputs = carray(_stack_tile(np.int64(0), NONOVERLAP_MAX_PIXELS), (NONOVERLAP_MAX_PIXELS,))
        task = next_task(counter)
        while task < tasks:
            if task < panels:
                _pack_panel(weight, packed, task // vectors, task % vectors)
                mark_done(ready, task)
                task = next_task(counter)
                continue
            item = task - panels
            v = item % vectors                               # vectors innermost: neighbours share the inputs
            block = (item // vectors) % blocks
            g = (item // (vectors * blocks)) % groups
            n = item // (vectors * blocks * groups)
            wait_done(ready, g * vectors + v)
            c0 = g * per_group_out + v * lanes
            written = min(lanes, per_group_out - v * lanes)
            w0 = (g * vectors + v) * taps * per_group_in * lanes
            p_lo, p_hi = block * block_pixels, min(area, (block + 1) * block_pixels)
            whole = p_lo
            if direct_out and written == lanes:
                # the U-Net case: each tap's 6 × L products go straight to their channels-last outputs, tap by
                # tap, so that one tap's weight panel and the block's inputs are what L2 holds
                whole = p_lo + (p_hi - p_lo) // 6 * 6
                for p in range(p_lo, whole):              # where input pixel p's block of outputs starts
                    i = p // in_w
                    outputs[p - p_lo] = ((n * out_h + i * k_h) * out_w + (p - i * in_w) * k_w) * out_channels + c0
                for a in range(k_h):
                    for b in range(k_w):
                        w, shift = w0 + (a * k_w + b) * per_group_in * lanes, (a * out_w + b) * out_channels
                        for p0 in range(p_lo, whole, 6):
                            o, x0 = p0 - p_lo, (n * area + p0) * in_channels + g * per_group_in
                            _fma_panel_out(y, (outputs[o] + shift, outputs[o + 1] + shift, outputs[o + 2] + shift,
                                               outputs[o + 3] + shift, outputs[o + 4] + shift, outputs[o + 5] + shift),
                                           bias, c0, packed, w, lanes, pixels,
                                           (x0, x0 + c1, x0 + c2, x0 + c3, x0 + c4, x0 + c5), 1, per_group_in)
            for p0 in range(whole, p_hi, 6):                 # BLOCKED_PANEL_PIXELS
                count = min(6, p_hi - p0)
                for e in range(taps * 96):
                    acc[e] = zero
                x0 = (n * area + p0) * in_channels + g * per_group_in
                for tap in range(taps):
                    w, a0 = w0 + tap * per_group_in * lanes, tap * 96
                    if count == 6:
                        _fma_panel(acc, (a0, a0 + 16, a0 + 32, a0 + 48, a0 + 64, a0 + 80), packed, w, lanes,
                                   pixels, (x0, x0 + c1, x0 + c2, x0 + c3, x0 + c4, x0 + c5), 1, per_group_in)
                        continue
                    t, xt = 0, x0
                    if count - t >= 4:
                        _fma_panel(acc, (a0, a0 + 16, a0 + 32, a0 + 48), packed, w, lanes, pixels,
                                   (xt, xt + c1, xt + c2, xt + c3), 1, per_group_in)
                        t, xt = t + 4, xt + c4
                    if count - t >= 2:
                        _fma_panel(acc, (a0 + 16 * t, a0 + 16 * t + 16), packed, w, lanes, pixels, (xt, xt + c1), 1,
                                   per_group_in)
                        t, xt = t + 2, xt + c2
                    if count - t >= 1:
                        _fma_panel(acc, (a0 + 16 * t,), packed, w, lanes, pixels, (xt,), 1, per_group_in)
                for t in range(count):
                    i = (p0 + t) // in_w
                    j = p0 + t - i * in_w
                    for a in range(k_h):
                        oh = i * k_h + a - pad_h
                        if oh < 0 or oh >= out_h:
                            continue
                        for b in range(k_w):
                            ow = j * k_w + b - pad_w
                            if ow < 0 or ow >= out_w:
                                continue
                            src, line = ((a * k_w + b) * 6 + t) * 16, y[n, oh, ow]
                            for lane in range(written):
                                line[c0 + lane] = acc[src + lane] + bias[c0 + lane]
            task = next_task(counter)


@parallel_kernel
def _nonoverlap_tiles_nchw(x, weight, rows, bias, y, pad_h, pad_w, block_pixels, panels):
    """``nonoverlap_direct`` in NCHW: the GEMM ``products[(co, a, b), p] = Σ_ci W[ci, co, a, b] · x[n, ci, p]`` with
    register tiles of 6 weight rows ``r = (co, a, b)`` × ``L`` consecutive input pixels (one 64-byte vector: 16
    float32 or 8 float64), so that a tile's vectors of pixels come from NCHW input rows and go to NCHW output
    rows, the two columns ``b`` of a row pair (``kW = 2``) interleaved into one contiguous run of
    ``y[n, co, i·kH + a - p_h, :]``. ``rows`` receives the weight as ``(G, ⌈R/6⌉, Ci_g, 6)`` (``R = C_out/G·kH·kW``,
    padded with zero rows): a tile's 6 weights per input channel are adjacent. The first tasks (handed out as in
    :func:`_fused_nchw`) each pack :data:`PACK_ROW_TILES` tiles of one group (:func:`_pack_row_tiles`), so
    packing and the GEMM share one parallel region; a later task waits for each chunk of tiles before its first
    use (:func:`~._tasks.wait_done`). Such a task is ``block_pixels`` input pixels of one image and group; its
    worker copies their inputs into its ``panels`` buffer as ``(Ci_g, L)`` panels (zero past the image's last
    pixel), then for each row tile and panel :func:`_fma_panel` runs the input-channel sum in registers and the
    tile is written out, bias added. Outputs no tap reaches are left to the caller. Each sum runs ``ci`` ascending
    from +0.0, one FMA per product, as in :func:`_nonoverlap_tiles` and ``blocked_direct``: bitwise their
    result."""
    batch, in_channels, in_h, in_w = x.shape
    groups, tiles, per_group_in = rows.shape[0], rows.shape[1], rows.shape[2]
    out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    k_h, k_w = weight.shape[2], weight.shape[3]
    per_group_out, taps, area, lanes = out_channels // groups, k_h * k_w, in_h * in_w, 64 // y.itemsize
    useful_rows = per_group_out * taps
    blocks = (area - 1) // block_pixels + 1
    chunks = (tiles - 1) // PACK_ROW_TILES + 1
    ready = np.zeros(groups * chunks, np.int64)
    tasks, counter = groups * chunks + batch * groups * blocks, np.zeros(1, np.int64)
    zero = np.zeros(1, dtype=y.dtype)[0]
    pairs = k_w == 2 and pad_w == 0                         # the U-Net case: interleave the two columns
    source, target = x.reshape(-1), y.reshape(-1)
    for worker in prange(panels.shape[0]):                # one worker per thread, tasks handed out in turn
        acc = carray(_stack_tile(zero, _NONOVERLAP_NCHW_TILE), (_NONOVERLAP_NCHW_TILE,))
        buffer = panels[worker]
        task = next_task(counter)
        while task < tasks:
            if task < groups * chunks:
                g, t0 = task // chunks, task % chunks * PACK_ROW_TILES
                _pack_row_tiles(weight, rows, g, t0, min(tiles, t0 + PACK_ROW_TILES))
                mark_done(ready, task)
                task = next_task(counter)
                continue
            item = task - groups * chunks
            block = item % blocks
            g = (item // blocks) % groups
            n = item // (blocks * groups)
            p_lo, p_hi = block * block_pixels, min(area, (block + 1) * block_pixels)
            count = (p_hi - p_lo - 1) // lanes + 1            # panels
            # channel by channel, so that each input plane is read in order (by panel, every load is another
            # plane: another page, a TLB miss each, measured 1.5-2× the whole kernel's time on unet4)
            for ci in range(per_group_in):
                at = (n * in_channels + g * per_group_in + ci) * area
                for line in range(p_lo, p_hi, lanes):          # the run of a plane a few planes on
                    _prefetch(source, at + PACK_PREFETCH_PLANES * area + line)
                for q in range(count):
                    p0, to = p_lo + q * lanes, (q * per_group_in + ci) * lanes
                    if p0 + lanes <= p_hi:
                        for lane in range(lanes):
                            buffer[to + lane] = source[at + p0 + lane]
                    else:
                        for lane in range(lanes):
                            buffer[to + lane] = source[at + p0 + lane] if p0 + lane < p_hi else zero
            for tile in range(tiles):
                if tile % PACK_ROW_TILES == 0:
                    wait_done(ready, g * chunks + tile // PACK_ROW_TILES)
                r0 = tile * 6
                w0 = (g * tiles + tile) * per_group_in * 6
                whole = pairs and pad_h == 0 and r0 + 6 <= useful_rows
                for q in range(count):
                    p0 = p_lo + q * lanes
                    used = min(lanes, p_hi - p0)
                    i = p0 // in_w
                    j0 = p0 - i * in_w
                    if whole and used == lanes and j0 + lanes <= in_w:
                        # the U-Net case: 3 row pairs, each one interleaved run of an output row
                        c0, c1, c2 = (g * per_group_out + r0 // taps, g * per_group_out + (r0 + 2) // taps,
                                      g * per_group_out + (r0 + 4) // taps)
                        h0, h1, h2 = (i * k_h + (r0 % taps) // 2, i * k_h + ((r0 + 2) % taps) // 2,
                                      i * k_h + ((r0 + 4) % taps) // 2)
                        _fma_panel_pairs_out(y, (((n * out_channels + c0) * out_h + h0) * out_w + 2 * j0,
                                                 ((n * out_channels + c1) * out_h + h1) * out_w + 2 * j0,
                                                 ((n * out_channels + c2) * out_h + h2) * out_w + 2 * j0),
                                             bias, (c0, c1, c2), buffer, q * per_group_in * lanes, lanes, rows,
                                             (w0, w0 + 1, w0 + 2, w0 + 3, w0 + 4, w0 + 5), 6, per_group_in)
                        continue
                    if pairs and pad_h == 0:
                        # a panel across input rows, or the last tile or pixels: the same interleaved runs, staged
                        b0, b1, b2 = (g * per_group_out + min(r0, useful_rows - 1) // taps,
                                      g * per_group_out + min(r0 + 2, useful_rows - 1) // taps,
                                      g * per_group_out + min(r0 + 4, useful_rows - 1) // taps)
                        _fma_panel_pairs_out(acc, (0, 2 * lanes, 4 * lanes), bias, (b0, b1, b2), buffer,
                                             q * per_group_in * lanes, lanes, rows,
                                             (w0, w0 + 1, w0 + 2, w0 + 3, w0 + 4, w0 + 5), 6, per_group_in)
                        for rr in range(0, min(6, useful_rows - r0), 2):
                            r = r0 + rr
                            co = g * per_group_out + r // taps
                            a = (r % taps) // 2
                            t = 0
                            while t < used:                   # one run per input row the panel crosses
                                ih = (p0 + t) // in_w
                                jt = p0 + t - ih * in_w
                                run = min(used - t, in_w - jt)
                                to = ((n * out_channels + co) * out_h + ih * k_h + a) * out_w + 2 * jt
                                at = rr * lanes + 2 * t
                                for u in range(2 * run):
                                    target[to + u] = acc[at + u]
                                t += run
                        continue
                    for e in range(6 * lanes):
                        acc[e] = zero
                    _fma_panel(acc, (0, lanes, 2 * lanes, 3 * lanes, 4 * lanes, 5 * lanes), buffer,
                               q * per_group_in * lanes, lanes, rows, (w0, w0 + 1, w0 + 2, w0 + 3, w0 + 4, w0 + 5), 6,
                               per_group_in)
                    for rr in range(min(6, useful_rows - r0)):
                        r = r0 + rr
                        co, tap = g * per_group_out + r // taps, r % taps
                        a, b, b_c = tap // k_w, tap % k_w, bias[co]
                        for t in range(used):
                            ih = (p0 + t) // in_w
                            oh, ow = ih * k_h + a - pad_h, (p0 + t - ih * in_w) * k_w + b - pad_w
                            if 0 <= oh < out_h and 0 <= ow < out_w:
                                target[((n * out_channels + co) * out_h + oh) * out_w + ow] = acc[rr * lanes + t] + b_c
            task = next_task(counter)


@serial_kernel
def _pack_row_tiles(weight, rows, g, t0, t1):
    """``rows[g, t, ci, e] = weight[g·Ci_g + ci].flat[6t + e]`` for the tiles ``t0 <= t < t1``, zero in the rows
    past ``R = C_out/G·kH·kW``: :func:`_nonoverlap_tiles_nchw`'s broadcast operand. Weight row by weight row
    (``ci``), a run of ``6·(t1 - t0)`` values split into the tiles, one sequential write stream each; the weight
    rows are a whole row apart (8 KB on unet1), a stride the hardware prefetchers do not follow, so each one's
    lines are asked for :data:`PACK_PREFETCH_ROWS` rows ahead. Measured on unet1's 8 MB weight, one thread,
    best (median) of 25 interleaved rounds: 1.9 (2.8) ms, against 2.5 (3.3) for the earlier pack of all tiles by 8
    rows at a time.
    (Broadcasting from the weight as given instead, at a stride of a whole row, made unet1 2.5× slower.)"""
    tiles, per_group_in = rows.shape[1], rows.shape[2]
    useful = weight.shape[1] * weight.shape[2] * weight.shape[3]
    source, target = weight.reshape(-1), rows.reshape(-1)
    zero = np.zeros(1, dtype=rows.dtype)[0]
    run = min(useful, 6 * t1) - 6 * t0
    for ci in range(per_group_in):
        at = (g * per_group_in + ci) * useful + 6 * t0
        for line in range(0, run, 64 // rows.itemsize):
            _prefetch(source, at + PACK_PREFETCH_ROWS * useful + line)
        for tile in range(t0, t1):
            to, first = ((g * tiles + tile) * per_group_in + ci) * 6, 6 * tile
            for e in range(6):
                target[to + e] = source[at + first - 6 * t0 + e] if first + e < useful else zero


@serial_kernel
def _pack_panel(weight, packed, g, v):
    """``packed[g, v, a, b, ci, l] = weight[g·Ci_g + ci, v·L + l, a, b]``, zero in the lanes past the group's
    output channels: one vector's GEMM panels for :func:`_nonoverlap_tiles`. Row by row, each a run of
    ``L·kH·kW`` weights split into its taps' panels (4 sequential write streams for the 2×2 kernel, a vectorised
    4-way split); the rows are a whole weight row apart (8 KB on unet1), a stride the hardware prefetchers do not
    follow, so each row's lines are asked for :data:`PACK_PREFETCH_ROWS` rows ahead. Measured on unet1's 8 MB
    weight, one thread, best (median) of 25 interleaved rounds: 1.4 (2.3) ms, against 1.9 (2.8) for the earlier
    whole-weight pack by 8 rows at a time (all vectors at once) and 0.7 (0.8) for a plain copy."""
    vectors, k_h, k_w, per_group_in, lanes = packed.shape[1:]
    per_group_out, taps = weight.shape[1], k_h * k_w
    source, target = weight.reshape(-1), packed.reshape(-1)
    panel, row = per_group_in * lanes, per_group_out * taps      # elements between tap panels, weight rows
    used = min(lanes, per_group_out - v * lanes)
    zero = np.zeros(1, dtype=packed.dtype)[0]
    ahead = PACK_PREFETCH_ROWS * row
    for ci in range(per_group_in):
        start = ((g * per_group_in + ci) * per_group_out + v * lanes) * taps
        for line in range(0, used * taps, 64 // packed.itemsize):
            _prefetch(source, start + ahead + line)
        to = ((g * vectors + v) * taps * per_group_in + ci) * lanes
        if taps == 4 and used == lanes:                          # the U-Net kernel
            for lane in range(lanes):
                t0, t1 = source[start + 4 * lane], source[start + 4 * lane + 1]
                t2, t3 = source[start + 4 * lane + 2], source[start + 4 * lane + 3]
                target[to + lane], target[to + panel + lane] = t0, t1
                target[to + 2 * panel + lane], target[to + 3 * panel + lane] = t2, t3
        else:
            for tap in range(taps):
                for lane in range(used):
                    target[to + tap * panel + lane] = source[start + lane * taps + tap]
                for lane in range(used, lanes):
                    target[to + tap * panel + lane] = zero


@parallel_kernel
def _to_channels_last(x, pixels):
    """``pixels[n, h, w, c] = x[n, c, h, w]``, a thread per input row ``(n, h)``, in runs of 16 columns: each
    run reads one cache line per channel (whole, at once) and writes a ``16 × C`` block that stays in L1.
    NumPy's strided copy walks the channels at a stride of a whole plane (a power of two of bytes for square
    images, all in one cache set) and took 0.85-1.05 ms for k3s1p1's 1 MB input here, this 0.1-0.2."""
    batch, channels, height, width = x.shape
    for row in prange(batch * height):
        n, h = row // height, row % height
        for w0 in range(0, width, 16):
            w1 = min(w0 + 16, width)
            for c in range(channels):
                for w in range(w0, w1):
                    pixels[n, h, w, c] = x[n, c, h, w]


@serial_kernel
def _pack_weight(weight, packed):
    """``packed[g, a, b, ci, co] = weight[g·Ci_g + ci, co, a, b]`` (the padding lanes left as they are). On one
    thread: weights are small, and a parallel region would wait for a second core (NumPy's strided copy took
    0.6 ms for k4s2p1's 2 MB weight here)."""
    groups, k_h, k_w, per_group_in = packed.shape[:4]
    per_group_out = weight.shape[1]
    for channel in range(groups * per_group_in):
        g, ci = channel // per_group_in, channel % per_group_in
        for a in range(k_h):
            for b in range(k_w):
                for co in range(per_group_out):
                    packed[g, a, b, ci, co] = weight[channel, co, a, b]


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
    channels = max(1, min(problem.out_per_group, BLOCK_WIDTH // taps))
    pixels, row = max(1, elements // (channels * taps)), problem.in_size[1]
    if problem.layout == "NHWC":
        return channels, pixels
    return channels, (pixels // row * row if pixels >= row else pixels)


def _fits_blas(problem):
    """Whether every size and leading dimension the fused path hands to BLAS fits its 32-bit integers."""
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    return max(problem.in_size[0] * problem.in_size[1], problem.out_per_group * taps,
               problem.in_channels) <= INT32_MAX


def _nonoverlap_gemm(x, weight, bias, problem, out=None):
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    bias = _bias_or_zeros(bias, problem)
    channels, pixels = _block_plan(problem)
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    # one worker (and buffer) per Numba thread, kept across calls
    blocks = workspace.scratch("numba_cpu.blocks", (numba.get_num_threads(), channels * taps * pixels),
                               problem.dtype)
    fused = _fused_nhwc if problem.layout == "NHWC" else _fused_nchw
    with single_threaded_blas():
        fused(x, weight, bias, y, blocks, channels, pixels, *problem.padding, problem.groups)
    return y


def _gemm_col2im(x, weight, bias, problem, out=None):
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    bias = _bias_or_zeros(bias, problem)
    for images in _image_chunks(problem):
        _col2im_gather(_gemm_columns(x[images], weight, problem), bias, y[images], *problem.stride,
                       *problem.padding, *problem.dilation)
    return y


def _direct(x, weight, bias, problem, out=None):
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    _direct_gather(x, weight, _bias_or_zeros(bias, problem), y, *problem.stride, *problem.padding,
                   *problem.dilation, problem.groups)
    return y


def _packed_weight(weight, problem):
    """The weight as ``(G, kH, kW, C_in/G, C_out/G⁺)``, the output channels padded with zeros to a multiple of 16:
    for each (group, tap, input channel) whole vectors of output channels are one contiguous run."""
    g, (kh, kw) = problem.groups, problem.kernel_size
    packed = workspace.scratch("numba_cpu.blocked_weight",
                               (g, kh, kw, problem.in_per_group, _round_up(problem.out_per_group, 16)), weight.dtype)
    packed[..., problem.out_per_group:] = 0     # never written out, but stale bits could be denormals: slow FMAs
    _pack_weight(weight, packed)
    return packed


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _tile_co(per_group_out):
    """``blocked_direct``'s output channels per work item: the group's channels in the fewest tiles of at most
    :data:`BLOCKED_MAX_TILE_CO`, of equal width rounded up to a multiple of 16 (one 64-byte vector of float32)."""
    tiles = (per_group_out - 1) // BLOCKED_MAX_TILE_CO + 1
    return min(BLOCKED_MAX_TILE_CO, _round_up(-(-per_group_out // tiles), 16))


def _tile_rows(problem):
    """``blocked_direct``'s output rows per work item: as many as fit :data:`BLOCKED_TILE_PIXELS` next to the
    longest column phase, ``⌈W_out / s_w⌉`` (one row when that phase alone fills the tile), but few enough to
    leave :data:`BLOCKED_ITEMS_PER_THREAD` work items per thread where the problem has that many rows."""
    (out_h, out_w), (s_h, s_w) = problem.out_size, problem.stride
    fit = max(1, BLOCKED_TILE_PIXELS // ((out_w - 1) // s_w + 1))
    rows = problem.batch * ((out_h - 1) // s_h + 1)                 # of the longest row phase
    others = problem.groups * -(-problem.out_per_group // _tile_co(problem.out_per_group)) * min(s_h, out_h)
    blocks = -(-BLOCKED_ITEMS_PER_THREAD * numba.get_num_threads() // others)
    return max(1, min(fit, rows // blocks))


def _channels_last_input(x, problem):
    """The input channels-last: ``x`` itself in NHWC, else a copy in this thread's kept workspace."""
    if problem.layout == "NHWC":
        return x
    pixels = workspace.scratch("numba_cpu.channels_last_input", x.shape[:1] + x.shape[2:] + x.shape[1:2], x.dtype)
    (_to_channels_last if x.nbytes > PARALLEL_COPY_BYTES else _to_channels_last.serial)(x, pixels)
    return pixels


def _blocked_direct(x, weight, bias, problem, out=None, *, tile_co=None, tile_rows=None):
    """``blocked_direct``; ``tile_co`` (a multiple of 16) and ``tile_rows`` override the chosen tiles (the
    result is the same bitwise). The channels-last input and the packed weight live in this thread's kept
    workspace (:mod:`testbed.workspace`), so a repeated call allocates only its result."""
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    # the kernel indexes the output as (n, c, h, w)
    y_nchw = y.transpose(0, 3, 1, 2) if problem.layout == "NHWC" else y
    _blocked_direct_tiles(_channels_last_input(x, problem), _packed_weight(weight, problem),
                          _bias_or_zeros(bias, problem), y_nchw,
                          *problem.stride, *problem.padding, *problem.dilation,
                          tile_co or _tile_co(problem.out_per_group), tile_rows or _tile_rows(problem))
    return y


def _panel_weight(problem):
    """Room for ``nonoverlap_direct``'s weight panels ``(G, C_out/G⁺/L, kH, kW, C_in/G, L)``, ``L`` lanes of a
    64-byte vector (filled by :func:`_nonoverlap_tiles`), in this thread's kept workspace."""
    lanes = 64 // problem.dtype.itemsize
    return workspace.scratch("numba_cpu.panel_weight", (problem.groups, -(-problem.out_per_group // lanes),
                                                        *problem.kernel_size, problem.in_per_group, lanes),
                             problem.dtype)


def _block_pixels(problem):
    """``nonoverlap_direct``'s input pixels per task: about :data:`NONOVERLAP_BLOCK_BYTES` of their input
    channels, a whole number of :data:`BLOCKED_PANEL_PIXELS`, at most :data:`NONOVERLAP_MAX_PIXELS`."""
    fit = NONOVERLAP_BLOCK_BYTES // (problem.in_per_group * problem.dtype.itemsize) // BLOCKED_PANEL_PIXELS
    return BLOCKED_PANEL_PIXELS * max(1, min(fit, NONOVERLAP_MAX_PIXELS // BLOCKED_PANEL_PIXELS))


def _fill_uncovered(y, bias, problem):
    """``(+0.0 + bias)`` (never -0.0) into the outputs no tap reaches in a non-overlapping problem: the
    ``output_padding`` rows and columns past ``H·kH - p_h``, ``W·kW - p_w``."""
    (in_h, in_w), (k_h, k_w), (pad_h, pad_w) = problem.in_size, problem.kernel_size, problem.padding
    covered_h, covered_w = max(0, in_h * k_h - pad_h), max(0, in_w * k_w - pad_w)
    (out_h, out_w), value = problem.out_size, bias + np.zeros((), problem.dtype)
    if covered_h >= out_h and covered_w >= out_w:
        return
    y_nhwc = y if problem.layout == "NHWC" else y.transpose(0, 2, 3, 1)
    y_nhwc[:, covered_h:] = value
    y_nhwc[:, :covered_h, covered_w:] = value


def _row_weight(problem):
    """Room for the NCHW kernel's weight rows ``(G, ⌈R/6⌉, C_in/G, 6)`` (filled by :func:`_nonoverlap_tiles_nchw`),
    in this thread's workspace."""
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    return workspace.scratch("numba_cpu.row_weight", (problem.groups, -(-problem.out_per_group * taps // 6),
                                                      problem.in_per_group, 6), problem.dtype)


def _nonoverlap_direct(x, weight, bias, problem, out=None):
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    if not problem.is_nonoverlapping or taps > NONOVERLAP_MAX_TAPS:     # (its stack tile holds that many taps)
        raise ValueError(f"nonoverlap_direct needs stride == kernel, dilation 1 and at most {NONOVERLAP_MAX_TAPS} "
                         f"taps, got stride {problem.stride}, kernel {problem.kernel_size}, dilation "
                         f"{problem.dilation}")
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    bias = _bias_or_zeros(bias, problem)
    _fill_uncovered(y, bias, problem)
    if problem.layout == "NHWC":
        _nonoverlap_tiles(x, weight, _panel_weight(problem), bias, y, *problem.padding,
                          _block_pixels(problem), numba.get_num_threads())
        return y
    lanes = 64 // problem.dtype.itemsize
    block = -(-_block_pixels(problem) // lanes) * lanes
    panels = workspace.scratch("numba_cpu.pixel_panels", (numba.get_num_threads(), block * problem.in_per_group),
                               problem.dtype)
    _nonoverlap_tiles_nchw(x, weight, _row_weight(problem), bias, y, *problem.padding, block, panels)
    return y


_RUNNERS = {"direct": _direct, "nonoverlap_gemm": _nonoverlap_gemm, "gemm_col2im": _gemm_col2im,
            "blocked_direct": _blocked_direct, "nonoverlap_direct": _nonoverlap_direct}


#: The paths that compute NHWC natively; the others get NHWC arrays transposed to NCHW and back.
NHWC_PATHS = ("nonoverlap_gemm", "blocked_direct", "nonoverlap_direct")


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
