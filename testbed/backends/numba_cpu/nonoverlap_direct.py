"""``nonoverlap_direct``: stride == kernel, kernel width 2 (the U-Net up-convolution), by this backend's own
register-tile GEMM written straight to the outputs.

``nonoverlap_direct`` (stride == kernel with kernel width 2, no padding and at least 512 input pixels: the U-Net
up-convolution; chosen over ``nonoverlap_gemm`` there, see :func:`suits`). The same GEMM, but computed by this
module's own register-tile micro-kernel (:func:`.intrinsics.fma_panel`, as ``blocked_direct``'s) on operands packed
once per call and shared by both threads, with every tile written straight from registers to its outputs: no product
block, no second pass, no per-call BLAS packing per thread. NHWC: a tile is MR input pixels × one panel vector of
output channels of one tap, stored as MR contiguous vectors with the bias added (:func:`.intrinsics.fma_panel_out`).
NCHW: a tile is MR weight rows ``(co, a, b)`` × one panel vector of consecutive input pixels (16 float32 on AVX2), the
two columns ``b`` of each row pair interleaved in registers into one contiguous run of twice as many outputs
(:func:`.intrinsics.fma_panel_pairs_out`). Each sum runs over the input channels in ascending order from +0.0, one FMA
per product, as ``blocked_direct``'s, so all three give bitwise the same result, in both layouts. Measured against
``nonoverlap_gemm`` on the U-Net shapes in the README.

3-D (the nnU-Net decoder's 2×2×2 up-convolution, NCDHW and NDHWC): the same GEMM with ``kD·kH·kW`` taps, the input
pixels ``p`` running over ``(d, h, w)`` and each output addressed through ``(d·kD + a_d, h·kH + a, w·kW + b)``; a
2-D problem is the depth-1 case (its arrays handed over as views with a depth axis of 1), so one compiled kernel
per layout and dtype serves both ranks, and a 2-D result is bitwise what it was.

NCHW packs the weight on every call, however few the pixels: each tile's MR rows × C_in/G channels one contiguous
run (:func:`.packing.row_tiles_packer`, vector copies of a tile's MR values), read by the micro-kernel as a stream
of 24 bytes per channel. Reading it as given instead (a tile's rows adjacent in each input channel's row, C_in/G
cache lines a tile, each a weight row apart) was kept for few pixels (N·D·H·W < 512) while packing was an element
loop: on unet3d1 (320→320 @4³ batch 2: 128 pixels against a 3.1 MiB weight) the kernel on packed rows takes 2.32
ms of one thread against 2.77 as given (one process, in turns, min of 60; packing excluded), and the packing, 1.08
ms element by element, now takes 0.21. With it the whole call is 2.54 against 2.81 ms on one thread, 1.38 against
1.50 on two (thread CPU time and wall time, min of 60, in turns, AMD EPYC Zen 3, AVX2): packed 256→256 @4³ N2 0.97
against 1.05 ms, 384→384 2.14 against 2.38; 64→320 and 320→320 at batch 1 a tie, 128→128 @4³ N2 0.46 against
0.44 (a tile's 128 lines stay in L1 as given). Bitwise the same sums either way.
(NHWC packed a vector's panels inside the task that used them on every pixel: no difference measured, not kept.)

A pair of rows' outputs is stored from registers as four runs of a quarter panel each (:func:`.intrinsics
.fma_panel_pairs_out`) wherever each quarter of the panel's pixels lies in one input row: every panel when the rows
are a multiple of a quarter panel (4 float32 pixels on AVX2: unet3d's 4³ and 8³, U-Net's 28² and 52²); other panels
are staged through the stack tile."""

import functools
import math

import numba
import numpy as np
from numba import carray, prange

from ... import workspace
from .._runtime import parallel_kernel
from ._common import bias_or_zeros
from .intrinsics import fma_panel, fma_panel_out, fma_panel_pairs_out, offsets_from, prefetch, stack_tile, strided
from .packing import pack_panel, panel_weight, row_tiles_packer, row_weight
from .tasks import mark_done, next_task, wait_done

__all__ = ["block_pixels", "computes", "nchw_kernel", "nhwc_kernel", "run", "suits"]


def suits(problem, blocking) -> bool:
    """Kernel width 2, no padding, at most ``nonoverlap_max_taps`` taps, and at least
    ``nonoverlap_min_pixels`` input pixels (N·H·W; at rank 3 any number: there the alternative is a sum over depth
    taps, which reads and writes the output once per tap); the same rule in both layouts, so that NCHW and NHWC sum
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
    against 1.16-1.31). Since the NCHW kernel's later changes (5 rounds, 2 threads, same host, load 1.2-1.4; median
    (min) ms): unet1 NCHW ``nonoverlap_gemm`` 21.0 (18.9), ``nonoverlap_direct`` 21.2 (19.2), bare GEMM 20.5 (18.1);
    NHWC 22.5 (19.9), 20.2 (18.5), 21.1 (17.8): a tie in NCHW and 10 % in NHWC, so unet1 (784 pixels) is now
    ``nonoverlap_direct``'s in both layouts (``nonoverlap_min_pixels`` 1024 → 512)."""
    return (
        problem.kernel_size[-1] == 2
        and not any(problem.padding)
        and math.prod(problem.kernel_size) <= blocking.nonoverlap_max_taps
        and (problem.rank == 3 or problem.batch * math.prod(problem.in_size) >= blocking.nonoverlap_min_pixels)
    )


@functools.cache
def nhwc_kernel(shape):
    """The NHWC kernel for one :meth:`.blocking.Blocking.kernel_shape` (its register and stack tiles are
    constants of the compiled code, closed over: each shape is its own function with its own cache entries)."""
    PANEL, PANEL_BYTES, _, _, MAX_TAPS, MAX_PIXELS = shape
    NHWC_TILE = MAX_TAPS * PANEL * (PANEL_BYTES // 4)  # a panel's products for every tap

    def _nonoverlap_tiles(pixels, weight, packed, bias, y, pad_d, pad_h, pad_w, block_pixels, workers, ahead_rows):
        """``nonoverlap_direct`` in NHWC: ``y[n, i·kH + a - p_h, j·kW + b - p_w, co] = Σ_ci pixels[n, i, j, ci] ·
        W[ci, co, a, b] + bias[co]`` (stride == kernel: each output has exactly one tap) as a GEMM whose register
        tiles are written straight to their outputs, with no product buffer and no second pass. ``packed`` receives
        the weight as GEMM panels ``(G, Co_g⁺/L, kH, kW, Ci_g, L)`` (``L`` lanes of one panel vector; the output
        channels padded with zeros), so the ``(Ci_g × L)`` panel of one tap and vector of output channels is one
        contiguous stream, and ``pixels`` is the input channels-last. The first tasks (handed out as in
        ``nonoverlap_gemm``) each pack one vector's panels (:func:`.packing.pack_panel`), so packing and the GEMM
        share one parallel region; a later task is a vector of output channels × ``block_pixels`` input pixels of one
        image and group (their inputs stay in L2 across the vectors), and waits for its vector's panels
        (:func:`.tasks.wait_done`; by then they are almost always done). Per MR pixels, :func:`.intrinsics.fma_panel`
        runs each tap's input-channel sum in registers into a stack tile ``acc[tap, pixel, lane]``, which is then
        written out, bias added, to the ``kH × kW`` blocks of the pixels (without padding, straight from registers:
        :func:`.intrinsics.fma_panel_out`). Outputs no tap reaches (``output_padding``) are left to the caller. Each
        sum runs ``ci`` ascending from +0.0, one FMA per product, as ``blocked_direct``'s: the result is bitwise that
        kernel's, and independent of the tasks."""
        batch, in_d, in_h, in_w, in_channels = pixels.shape
        groups, vectors, per_group_in, lanes = packed.shape[0], packed.shape[1], packed.shape[4], packed.shape[5]
        k_d, k_h, k_w = weight.shape[2], weight.shape[3], weight.shape[4]
        out_d, out_h, out_w, out_channels = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
        per_group_out, taps, plane = out_channels // groups, k_d * k_h * k_w, in_h * in_w
        area = in_d * plane
        blocks = (area - 1) // block_pixels + 1
        panels = groups * vectors  # the first tasks: one vector's panels each
        ready = np.zeros(panels, np.int64)
        tasks, counter = panels + batch * groups * blocks * vectors, np.zeros(1, np.int64)
        zero = np.zeros(1, dtype=y.dtype)[0]
        direct_out = pad_d == 0 and pad_h == 0 and pad_w == 0  # every tap's output exists
        for _worker in prange(workers):  # one worker per thread, tasks handed out in turn
            acc = carray(stack_tile(zero, NHWC_TILE), (NHWC_TILE,))
            outputs = carray(stack_tile(np.int64(0), MAX_PIXELS), (MAX_PIXELS,))
            task = next_task(counter)
            while task < tasks:
                if task < panels:
                    pack_panel(weight, packed, task // vectors, task % vectors, ahead_rows)
                    mark_done(ready, task)
                    task = next_task(counter)
                    continue
                item = task - panels
                v = item % vectors  # vectors innermost: neighbours share the inputs
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
                    # the U-Net case: each tap's MR × L products go straight to their channels-last outputs, tap by
                    # tap, so that one tap's weight panel and the block's inputs are what L2 holds
                    whole = p_lo + (p_hi - p_lo) // PANEL * PANEL
                    for p in range(p_lo, whole):  # where input pixel p = (d, i, j)'s block of outputs starts
                        d = p // plane
                        i = (p - d * plane) // in_w
                        j = p - d * plane - i * in_w
                        corner = ((n * out_d + d * k_d) * out_h + i * k_h) * out_w + j * k_w
                        outputs[p - p_lo] = corner * out_channels + c0
                    for tap in range(taps):
                        a_d, a, b = tap // (k_h * k_w), (tap // k_w) % k_h, tap % k_w
                        w = w0 + tap * per_group_in * lanes
                        shift = ((a_d * out_h + a) * out_w + b) * out_channels
                        for p0 in range(p_lo, whole, PANEL):
                            o, x0 = p0 - p_lo, (n * area + p0) * in_channels + g * per_group_in
                            fma_panel_out(
                                y,
                                offsets_from(outputs, o, shift, PANEL),
                                bias,
                                c0,
                                packed,
                                w,
                                lanes,
                                pixels,
                                strided(x0, in_channels, PANEL),
                                1,
                                per_group_in,
                                PANEL_BYTES,
                            )
                for p0 in range(whole, p_hi, PANEL):
                    count = min(PANEL, p_hi - p0)
                    for e in range(taps * PANEL * lanes):
                        acc[e] = zero
                    x0 = (n * area + p0) * in_channels + g * per_group_in
                    for tap in range(taps):
                        w, a0 = w0 + tap * per_group_in * lanes, tap * PANEL * lanes
                        if count == PANEL:
                            fma_panel(
                                acc,
                                strided(a0, lanes, PANEL),
                                packed,
                                w,
                                lanes,
                                pixels,
                                strided(x0, in_channels, PANEL),
                                1,
                                per_group_in,
                                PANEL_BYTES,
                            )
                            continue
                        t = 0
                        if PANEL > 8 and count - t >= 8:
                            fma_panel(
                                acc,
                                strided(a0 + lanes * t, lanes, 8),
                                packed,
                                w,
                                lanes,
                                pixels,
                                strided(x0 + in_channels * t, in_channels, 8),
                                1,
                                per_group_in,
                                PANEL_BYTES,
                            )
                            t += 8
                        if PANEL > 4 and count - t >= 4:
                            fma_panel(
                                acc,
                                strided(a0 + lanes * t, lanes, 4),
                                packed,
                                w,
                                lanes,
                                pixels,
                                strided(x0 + in_channels * t, in_channels, 4),
                                1,
                                per_group_in,
                                PANEL_BYTES,
                            )
                            t += 4
                        if PANEL > 2 and count - t >= 2:
                            fma_panel(
                                acc,
                                strided(a0 + lanes * t, lanes, 2),
                                packed,
                                w,
                                lanes,
                                pixels,
                                strided(x0 + in_channels * t, in_channels, 2),
                                1,
                                per_group_in,
                                PANEL_BYTES,
                            )
                            t += 2
                        if count - t >= 1:
                            fma_panel(
                                acc,
                                strided(a0 + lanes * t, lanes, 1),
                                packed,
                                w,
                                lanes,
                                pixels,
                                strided(x0 + in_channels * t, in_channels, 1),
                                1,
                                per_group_in,
                                PANEL_BYTES,
                            )
                    for t in range(count):
                        d = (p0 + t) // plane
                        i = (p0 + t - d * plane) // in_w
                        j = p0 + t - d * plane - i * in_w
                        for tap in range(taps):
                            od = d * k_d + tap // (k_h * k_w) - pad_d
                            oh = i * k_h + (tap // k_w) % k_h - pad_h
                            ow = j * k_w + tap % k_w - pad_w
                            if od < 0 or od >= out_d or oh < 0 or oh >= out_h or ow < 0 or ow >= out_w:
                                continue
                            src, line = (tap * PANEL + t) * lanes, y[n, od, oh, ow]
                            for lane in range(written):
                                line[c0 + lane] = acc[src + lane] + bias[c0 + lane]
                task = next_task(counter)

    return parallel_kernel(_nonoverlap_tiles)


@functools.cache
def nchw_kernel(shape):
    """The NCHW kernel for one :meth:`.blocking.Blocking.kernel_shape` (as :func:`nhwc_kernel`)."""
    PANEL, PANEL_BYTES, MAX_PIXELS = shape[0], shape[1], shape[5]
    HALF, NCHW_TILE = PANEL // 2, PANEL * (PANEL_BYTES // 4)
    pack_row_tiles = row_tiles_packer(PANEL)
    MAX_BLOCK = MAX_PIXELS + PANEL_BYTES // 4  # a task's pixels: at most MAX_PIXELS rounded up to a panel vector

    def _nonoverlap_tiles_nchw(
        x,
        weight,
        rows,
        bias,
        y,
        pad_d,
        pad_h,
        pad_w,
        block_pixels,
        tile_parts,
        panels,
        ahead_rows,
        ahead_planes,
        chunk_tiles,
    ):
        """``nonoverlap_direct`` in NCHW: the GEMM ``products[(co, a, b), p] = Σ_ci W[ci, co, a, b] · x[n, ci, p]``
        with register tiles of MR weight rows ``r = (co, a, b)`` × ``L`` consecutive input pixels (one panel vector:
        on AVX2 16 float32 or 8 float64), so that a tile's vectors of pixels come from NCHW input rows and go to NCHW
        output rows, the two columns ``b`` of a row pair (``kW = 2``) interleaved into one contiguous run of ``y[n,
        co, i·kH + a - p_h, :]``. ``rows`` receives the weight as ``(G, ⌈R/MR⌉, Ci_g, MR)`` (``R = C_out/G·kH·kW``,
        padded with zero rows): a tile's MR weights per input channel are adjacent. The first tasks (handed out as in
        ``nonoverlap_gemm``) each pack ``chunk_tiles`` tiles of one group (:func:`.packing.row_tiles_packer`), so
        packing and the GEMM share one parallel region; a later task waits for each chunk of tiles before its first
        use (:func:`.tasks.wait_done`). Such a task is ``block_pixels`` input pixels of one image and group; its
        worker copies their inputs into its ``panels`` buffer as ``(Ci_g, L)`` panels (zero past the image's last
        pixel), then for each row tile and panel :func:`.intrinsics.fma_panel` runs the input-channel sum in registers
        and the tile is written out, bias added. Outputs no tap reaches are left to the caller. Each sum runs ``ci``
        ascending from +0.0, one FMA per product, as in the NHWC kernel and ``blocked_direct``: bitwise their
        result. Each task is also one of ``tile_parts`` ranges of row tiles (more tasks when pixels are few), which
        changes no sum."""
        batch, in_channels, in_d, in_h, in_w = x.shape
        groups, per_group_in = rows.shape[0], rows.shape[2]
        out_channels, out_d, out_h, out_w = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
        k_d, k_h, k_w = weight.shape[2], weight.shape[3], weight.shape[4]
        per_group_out, taps, lanes = out_channels // groups, k_d * k_h * k_w, PANEL_BYTES // y.itemsize
        area = in_d * in_h * in_w
        useful_rows = per_group_out * taps
        tiles = (useful_rows - 1) // PANEL + 1
        blocks = (area - 1) // block_pixels + 1
        chunks = (tiles - 1) // chunk_tiles + 1
        ready = np.zeros(groups * chunks, np.int64)
        tasks, counter = groups * chunks + batch * groups * blocks * tile_parts, np.zeros(1, np.int64)
        packed = rows.reshape(-1)
        zero = np.zeros(1, dtype=y.dtype)[0]
        pairs = k_w == 2 and pad_w == 0  # the U-Net case: interleave the two columns
        pairs_whole = pairs and pad_h == 0 and pad_d == 0  # ... and every row of the pair's outputs exists
        source, target = x.reshape(-1), y.reshape(-1)
        for worker in prange(panels.shape[0]):  # one worker per thread, tasks handed out in turn
            acc = carray(stack_tile(zero, NCHW_TILE), (NCHW_TILE,))
            pair_y = carray(stack_tile(np.int64(0), HALF), (HALF,))
            pair_c = carray(stack_tile(np.int64(0), HALF), (HALF,))
            # where each panel's pairs start past its tile's rows (-1: its pixels are not four runs of a quarter
            # panel, each in one input row, or it ends past the block), and each pixel's (a block is at most
            # MAX_PIXELS rounded up to a panel vector)
            panel_at = carray(stack_tile(np.int64(0), MAX_BLOCK), (MAX_BLOCK,))
            pixel_at = carray(stack_tile(np.int64(0), MAX_BLOCK), (MAX_BLOCK,))
            quarter_at = carray(stack_tile(np.int64(0), MAX_BLOCK), (MAX_BLOCK,))  # a panel's four runs, from its first
            buffer = panels[worker]
            loaded = -1  # the (image, group, block) whose pixels ``buffer`` holds
            task = next_task(counter)
            while task < tasks:
                if task < groups * chunks:
                    g, t0 = task // chunks, task % chunks * chunk_tiles
                    pack_row_tiles(weight, rows, g, t0, min(tiles, t0 + chunk_tiles), ahead_rows)
                    mark_done(ready, task)
                    task = next_task(counter)
                    continue
                item = task - groups * chunks
                part = item % tile_parts
                block = (item // tile_parts) % blocks
                g = (item // (tile_parts * blocks)) % groups
                n = item // (tile_parts * blocks * groups)
                p_lo, p_hi = block * block_pixels, min(area, (block + 1) * block_pixels)
                count = (p_hi - p_lo - 1) // lanes + 1  # panels
                # the task's pixels as panels (and where their outputs go), unless this worker's last task had them
                if item // tile_parts != loaded:
                    loaded = item // tile_parts
                    # channel by channel, so that each input plane is read in order (by panel, every load is another
                    # plane: another page, a TLB miss each, measured 1.5-2× the whole kernel's time on unet4)
                    for ci in range(per_group_in):
                        at = (n * in_channels + g * per_group_in + ci) * area
                        for line in range(p_lo, p_hi, lanes):  # the run of a plane a few planes on
                            prefetch(source, at + ahead_planes * area + line)
                        for q in range(count):
                            p0, to = p_lo + q * lanes, (q * per_group_in + ci) * lanes
                            if p0 + lanes <= p_hi:
                                for lane in range(lanes):
                                    buffer[to + lane] = source[at + p0 + lane]
                            else:
                                for lane in range(lanes):
                                    buffer[to + lane] = source[at + p0 + lane] if p0 + lane < p_hi else zero
                    # the output offsets split into a panel's part (here) and a tile's (below), so that the panel loop,
                    # a few hundred cycles of FMAs when C_in/G is small (unet3d5: 64), does no integer division
                    if pairs_whole:
                        for t in range(p_hi - p_lo):
                            line = (p_lo + t) // in_w  # input row (d, i), of in_d·in_h
                            j = p_lo + t - line * in_w
                            pixel_at[t] = (line // in_h * k_d * out_h + line % in_h * k_h) * out_w + 2 * j
                        run = lanes // 4
                        for q in range(count):
                            p0, t = p_lo + q * lanes, q * lanes
                            # each quarter of the panel in one input row (its pixels' outputs 2 apart each)
                            runs = p0 + lanes <= p_hi
                            for r in range(4):
                                if runs:
                                    start = pixel_at[t + r * run]
                                    runs = pixel_at[t + r * run + run - 1] - start == 2 * (run - 1)
                                    quarter_at[4 * q + r] = start - pixel_at[t]
                            panel_at[q] = pixel_at[t] if runs else -1
                for tile in range(part * tiles // tile_parts, (part + 1) * tiles // tile_parts):
                    r0, w0 = tile * PANEL, (g * tiles + tile) * per_group_in * PANEL
                    if tile % chunk_tiles == 0 or tile == part * tiles // tile_parts:
                        wait_done(ready, g * chunks + tile // chunk_tiles)
                    whole = pairs_whole and r0 + PANEL <= useful_rows
                    if (
                        pairs_whole
                    ):  # each pair's output row at input pixel (0, 0, 0), its channel (rows past R: the last)
                        for e in range(HALF):
                            r = min(r0 + 2 * e, useful_rows - 1)
                            pair_c[e] = g * per_group_out + r // taps
                            a_d, a = (r % taps) // 2 // k_h, (r % taps) // 2 % k_h  # (kW = 2)
                            pair_y[e] = (((n * out_channels + pair_c[e]) * out_d + a_d) * out_h + a) * out_w
                    for q in range(count):
                        p0 = p_lo + q * lanes
                        used = min(lanes, p_hi - p0)
                        if whole and panel_at[q] >= 0:
                            # the U-Net case: MR/2 row pairs, each one interleaved run of an output row
                            fma_panel_pairs_out(
                                y,
                                offsets_from(pair_y, 0, panel_at[q], HALF),
                                offsets_from(quarter_at, 4 * q, 0, 4),
                                bias,
                                offsets_from(pair_c, 0, 0, HALF),
                                buffer,
                                q * per_group_in * lanes,
                                lanes,
                                packed,
                                strided(w0, 1, PANEL),
                                PANEL,
                                per_group_in,
                                PANEL_BYTES,
                            )
                            continue
                        if pairs_whole:
                            # a panel across input rows, or the last tile or pixels: the same interleaved runs, staged
                            fma_panel_pairs_out(
                                acc,
                                strided(0, 2 * lanes, HALF),
                                strided(0, lanes // 2, 4),
                                bias,
                                offsets_from(pair_c, 0, 0, HALF),
                                buffer,
                                q * per_group_in * lanes,
                                lanes,
                                packed,
                                strided(w0, 1, PANEL),
                                PANEL,
                                per_group_in,
                                PANEL_BYTES,
                            )
                            for rr in range(0, min(PANEL, useful_rows - r0), 2):
                                row_y, at = pair_y[rr // 2], rr * lanes
                                for t in range(used):  # the pair's two columns of each pixel
                                    to = row_y + pixel_at[p0 - p_lo + t]
                                    target[to] = acc[at + 2 * t]
                                    target[to + 1] = acc[at + 2 * t + 1]
                            continue
                        for e in range(PANEL * lanes):
                            acc[e] = zero
                        fma_panel(
                            acc,
                            strided(0, lanes, PANEL),
                            buffer,
                            q * per_group_in * lanes,
                            lanes,
                            packed,
                            strided(w0, 1, PANEL),
                            PANEL,
                            per_group_in,
                            PANEL_BYTES,
                        )
                        for rr in range(min(PANEL, useful_rows - r0)):
                            r = r0 + rr
                            co, tap = g * per_group_out + r // taps, r % taps
                            a_d, a, b, b_c = tap // (k_h * k_w), (tap // k_w) % k_h, tap % k_w, bias[co]
                            for t in range(used):
                                line = (p0 + t) // in_w
                                od, oh = line // in_h * k_d + a_d - pad_d, line % in_h * k_h + a - pad_h
                                ow = (p0 + t - line * in_w) * k_w + b - pad_w
                                if 0 <= od < out_d and 0 <= oh < out_h and 0 <= ow < out_w:
                                    at = (((n * out_channels + co) * out_d + od) * out_h + oh) * out_w + ow
                                    target[at] = acc[rr * lanes + t] + b_c
                task = next_task(counter)

    return parallel_kernel(_nonoverlap_tiles_nchw)


def block_pixels(problem, blocking):
    """Input pixels per task: about ``nonoverlap_block_bytes`` of their input channels, a whole number of register
    tiles (MR pixels), at most ``nonoverlap_max_pixels``."""
    panel = blocking.panel_pixels
    fit = blocking.nonoverlap_block_bytes // (problem.in_per_group * problem.dtype.itemsize) // panel
    return panel * max(1, min(fit, blocking.nonoverlap_max_pixels // panel))


def computes(problem, blocking) -> bool:
    """Whether the kernels compute ``problem`` at all (a 2-D or 3-D problem, stride == kernel, dilation 1, at most
    ``nonoverlap_max_taps`` taps: its stack tile holds that many); :func:`suits` says where they are chosen."""
    return (
        problem.rank in (2, 3)
        and problem.is_nonoverlapping
        and math.prod(problem.kernel_size) <= blocking.nonoverlap_max_taps
    )


def _fill_uncovered(y, bias, problem):
    """``(+0.0 + bias)`` (never -0.0) into the outputs no tap reaches in a non-overlapping problem: along each axis
    the ``output_padding`` entries past ``n·k - p``."""
    covered = [max(0, n * k - p) for n, k, p in zip(problem.in_size, problem.kernel_size, problem.padding)]
    if all(reach >= out for reach, out in zip(covered, problem.out_size)):  # (checked first: the common case)
        return
    value = bias + np.zeros((), problem.dtype)
    y_last = y if problem.channels_last else np.moveaxis(y, 1, -1)  # (N, *spatial, C), a view
    for axis, (reach, out) in enumerate(zip(covered, problem.out_size)):
        if reach < out:
            y_last[(slice(None),) * (axis + 1) + (slice(reach, None),)] = value


def _as_3d(array, problem):
    """A 2-D problem's input or output as the 3-D kernels take it, a view with depth 1: ``(N, 1, H, W, C)`` or
    ``(N, C, 1, H, W)``."""
    if problem.rank == 3:
        return array
    return array[:, None] if problem.channels_last else array[:, :, None]


def run(x, weight, bias, problem, out=None, *, blocking):
    """``nonoverlap_direct`` at rank 2 or 3 (a 2-D problem runs the 3-D kernels with depth 1, on views)."""
    if not computes(problem, blocking):
        raise ValueError(  # (a 1-D problem arrives here as a 2-D one)
            f"nonoverlap_direct needs stride == kernel, dilation 1 and at most {blocking.nonoverlap_max_taps} "
            f"taps (a 2-D or 3-D problem), got stride {problem.stride}, kernel {problem.kernel_size}, dilation "
            f"{problem.dilation}"
        )
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    bias = bias_or_zeros(bias, problem)
    _fill_uncovered(y, bias, problem)
    shape = blocking.kernel_shape()
    pads = (0,) * (3 - problem.rank) + tuple(problem.padding)
    # (C_in, C_out/G, kD, kH, kW), a view
    weight = weight.reshape(weight.shape[:2] + (1,) * (3 - problem.rank) + weight.shape[2:])
    x, y_3d = _as_3d(x, problem), _as_3d(y, problem)
    threads = numba.get_num_threads()
    if problem.channels_last:
        nhwc_kernel(shape)(
            x,
            weight,
            panel_weight(problem, blocking),
            bias,
            y_3d,
            *pads,
            block_pixels(problem, blocking),
            threads,
            blocking.pack_prefetch_rows,
        )
        return y
    lanes = blocking.lanes(problem.dtype.itemsize)
    block = -(-block_pixels(problem, blocking) // lanes) * lanes
    panels = workspace.scratch("numba_cpu.pixel_panels", (threads, block * problem.in_per_group), problem.dtype)
    # few tasks (few pixels): each also split by row tiles, so that every thread has some
    tiles = -(-problem.out_per_group * math.prod(problem.kernel_size) // blocking.panel_pixels)
    tasks = problem.batch * problem.groups * -(-math.prod(problem.in_size) // block)
    tile_parts = min(tiles, -(-threads * blocking.items_per_thread // max(1, tasks)))
    nchw_kernel(shape)(
        x,
        weight,
        row_weight(problem, blocking),
        bias,
        y_3d,
        *pads,
        block,
        tile_parts,
        panels,
        blocking.pack_prefetch_rows,
        blocking.pack_prefetch_planes,
        blocking.pack_row_tiles,
    )
    return y
