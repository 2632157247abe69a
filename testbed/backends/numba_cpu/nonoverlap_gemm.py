"""``nonoverlap_gemm``: stride == kernel, dilation 1 (the U-Net up-convolution), by blocks of one GEMM.

``nonoverlap_gemm`` (stride == kernel, dilation 1: the U-Net up-convolution). No two taps share an output, so ``y[n,
co, i·kH + a, j·kW + b] = Σ_ci W[ci, co, a, b] · x[n, ci, i, j]``: per image and group the GEMM ``(C_out/G·kH·kW ×
C_in/G) · (C_in/G × H·W)`` followed by a pixel shuffle (depth-to-space), fused: one Numba parallel region hands out
blocks of the GEMM (``block_bytes`` of the :mod:`.blocking` row), and the thread that takes a block computes it with a
*single-threaded* BLAS call into its own buffer and moves it into place (padding crop, ``output_padding`` rows and
columns, bias) while it is still in cache. So the products never make a round trip through memory, and only one thread
pool (Numba's) ever runs: the alternative, OpenBLAS's pool for the GEMM and Numba's for the shuffle, pays a hand-off
per block, and concurrent calls into a multithreaded OpenBLAS from Numba's threads were measured 9× slower. In NHWC
(channels last) the GEMM is ``(H·W × C_in/G) · (C_in/G × C_out/G·kH·kW)`` against the weight as given, and each tap's
products, every ``kH·kW``-th of a block row, are gathered into a contiguous run of output channels. The per-thread
blocks are kept across calls (:mod:`testbed.workspace`), so a repeated call page-faults only on its output, and with
``out=`` on nothing."""

import numba
import numpy as np
from numba import prange

from ... import workspace
from .._blas import INT32_MAX, gemm, single_threaded_blas
from .._runtime import parallel_kernel
from ._common import bias_or_zeros
from .tasks import next_task

__all__ = ["block_plan", "fits_blas", "run"]


@parallel_kernel
def _fused_nchw(x, weight, bias, y, blocks, co_block, px_block, pad_h, pad_w, groups):
    """``nonoverlap_gemm`` in NCHW, the GEMM and the pixel shuffle fused. Tasks ``(n, group, block of output channels,
    block of input pixels)`` are handed out one at a time (:mod:`.tasks`); the worker that takes one computes
    ``products[(co, a, b), p] = Σ_ci W[ci, co, a, b] · x[n, ci, p]`` for its block with one single-threaded BLAS call
    into its own buffer ``blocks[worker]`` (``block_bytes`` of the :mod:`.blocking` row), then moves it into place
    while it is still in cache: ``y[n, co, i·kH + a - p_h, j·kW + b - p_w] = (products + 0) + bias[co]`` for pixel ``p
    = i·W + j``. A task owns its channels' outputs of its pixels; the one that ends an input row also writes that
    row's columns no tap reaches, the one that ends the image the ``output_padding`` rows below (bias alone)."""
    batch, in_channels, in_h, in_w = x.shape
    out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    k_h, k_w = weight.shape[2], weight.shape[3]
    per_group_in, per_group_out, taps = in_channels // groups, out_channels // groups, k_h * k_w
    pixels = in_h * in_w
    flat_x = x.reshape((batch, in_channels, pixels))
    flat_w = weight.reshape((in_channels, per_group_out * taps))
    co_blocks, px_blocks = (per_group_out - 1) // co_block + 1, (pixels - 1) // px_block + 1
    covered_h = max(0, min(out_h, in_h * k_h - pad_h))  # rows below are output_padding: bias only
    covered_w = max(0, min(out_w, in_w * k_w - pad_w))
    zero = np.zeros(1, dtype=y.dtype)[0]  # +0.0 in y's dtype (a 0.0 literal would be float64)
    tasks, counter = batch * groups * co_blocks * px_blocks, np.zeros(1, np.int64)
    for worker in prange(blocks.shape[0]):  # one worker per thread, tasks handed out in turn
        task = next_task(counter)
        while task < tasks:
            pb = task % px_blocks  # pixel blocks innermost: neighbours share weights
            cb = (task // px_blocks) % co_blocks
            g = (task // (px_blocks * co_blocks)) % groups
            n = task // (px_blocks * co_blocks * groups)
            c0, c1 = cb * co_block, min(per_group_out, (cb + 1) * co_block)
            p0, p1 = pb * px_block, min(pixels, (pb + 1) * px_block)
            ci0, ci1 = g * per_group_in, (g + 1) * per_group_in
            products = blocks[worker, : (c1 - c0) * taps * (p1 - p0)].reshape(((c1 - c0) * taps, p1 - p0))
            gemm(flat_w[ci0:ci1, c0 * taps : c1 * taps], flat_x[n, ci0:ci1, p0:p1], products, True, False)
            for c in range(c0, c1):
                co = g * per_group_out + c
                b_c = bias[co]
                for i in range(p0 // in_w, (p1 - 1) // in_w + 1):
                    j0, j1 = max(p0 - i * in_w, 0), min(p1 - i * in_w, in_w)
                    q0 = i * in_w + j0 - p0  # products column of pixel (i, j0)
                    for a in range(k_h):
                        oh = i * k_h + a - pad_h
                        if oh < 0 or oh >= out_h:
                            continue
                        line, base = y[n, co, oh], (c - c0) * taps + a * k_w
                        if k_w == 2 and pad_w == 0:  # the U-Net case: interleave two rows, vectorised
                            left, right = products[base, q0 : q0 + j1 - j0], products[base + 1, q0 : q0 + j1 - j0]
                            dst = line[2 * j0 : 2 * j1]
                            for t in range(j1 - j0):
                                dst[2 * t] = (left[t] + zero) + b_c
                                dst[2 * t + 1] = (right[t] + zero) + b_c
                        else:
                            for b in range(k_w):
                                lo = max(j0, -((b - pad_w) // k_w))  # first j with j·kW + b - p_w >= 0
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
    for worker in prange(blocks.shape[0]):  # one worker per thread, tasks handed out in turn
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
            products = blocks[worker, : (p1 - p0) * width].reshape((p1 - p0, width))
            gemm(flat_x[n, p0:p1, ci0:ci1], flat_w[ci0:ci1, c0 * taps : c1 * taps], products, False, False)
            b_c = bias[lo : lo + run]
            for p in range(p0, p1):
                i, j = p // in_w, p % in_w
                row = products[p - p0]
                if k_h == 2 and k_w == 2 and pad_h == 0 and pad_w == 0:  # the U-Net case: a 4-way de-interleave
                    d0, d1 = y[n, 2 * i, 2 * j, lo : lo + run], y[n, 2 * i, 2 * j + 1, lo : lo + run]
                    d2, d3 = y[n, 2 * i + 1, 2 * j, lo : lo + run], y[n, 2 * i + 1, 2 * j + 1, lo : lo + run]
                    for q in range(run):
                        t0, t1, t2, t3 = row[4 * q], row[4 * q + 1], row[4 * q + 2], row[4 * q + 3]
                        d0[q], d1[q] = (t0 + zero) + b_c[q], (t1 + zero) + b_c[q]
                        d2[q], d3[q] = (t2 + zero) + b_c[q], (t3 + zero) + b_c[q]
                else:
                    for tap in range(taps):
                        oh, ow = i * k_h + tap // k_w - pad_h, j * k_w + tap % k_w - pad_w
                        if oh < 0 or oh >= out_h or ow < 0 or ow >= out_w:
                            continue
                        dst = y[n, oh, ow, lo : lo + run]
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


def block_plan(problem, blocking):
    """The fused path's blocks: ``(output channels per block, pixels per block)`` in NCHW (whole input rows when
    a row fits), ``(weight columns per block, pixels per block)`` in NHWC. They depend on the problem only, not
    on the thread count, so every thread count gives the same blocks and bitwise the same result."""
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    elements = max(1, blocking.block_bytes // problem.dtype.itemsize)
    channels = max(1, min(problem.out_per_group, blocking.block_width // taps))
    pixels, row = max(1, elements // (channels * taps)), problem.in_size[1]
    if problem.layout == "NHWC":
        return channels, pixels
    return channels, (pixels // row * row if pixels >= row else pixels)


def fits_blas(problem):
    """Whether every size and leading dimension the fused path hands to BLAS fits its 32-bit integers."""
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    return max(problem.in_size[0] * problem.in_size[1], problem.out_per_group * taps, problem.in_channels) <= INT32_MAX


def run(x, weight, bias, problem, out=None, *, blocking):
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    bias = bias_or_zeros(bias, problem)
    channels, pixels = block_plan(problem, blocking)
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    # one worker (and buffer) per Numba thread, kept across calls
    blocks = workspace.scratch("numba_cpu.blocks", (numba.get_num_threads(), channels * taps * pixels), problem.dtype)
    fused = _fused_nhwc if problem.layout == "NHWC" else _fused_nchw
    with single_threaded_blas():
        fused(x, weight, bias, y, blocks, channels, pixels, *problem.padding, problem.groups)
    return y
