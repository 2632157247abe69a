"""``gemm_col2im``: overlapping taps with GEMM-sized channels.

``gemm_col2im`` (overlapping taps with GEMM-sized channels). The GEMM gives every (input pixel, tap) product summed
over input channels, ``columns[(co, kh, kw), (ih, iw)] = Σ_ci W[ci, co, kh, kw] · x[n, ci, ih, iw]``; then a
*gathering* col2im: each output plane adds, per row, for each tap ``kh`` with ``(oh + p - kh·d) ≡ 0 (mod s)``, the
column entries that land in the row (Caffe's / PyTorch's ``slow_conv_transpose2d`` design, with its scatter turned
into an output-stationary gather and the bias fused in). Only useful products are computed.

Both in one Numba parallel region, as ``nonoverlap_gemm`` does: a task is a block of output channels of one image
and group; the thread that takes it computes that block's columns with one *single-threaded* BLAS call into its own
buffer (at most ``block_bytes`` of the :mod:`.blocking` row, kept across calls) and gathers the block's output planes
from them while they are in cache. Only Numba's thread pool runs: a multithreaded GEMM followed by a Numba gather
hands the call from OpenBLAS's pool to Numba's, which on this 2-core host cost more than the arithmetic (HiFi-GAN's
first up-sampling, 512→256 k16 s8 over 86 frames: 8.0 ms on two threads against 5.1 on one, measured in one process;
see :func:`~testbed.backends.numba_cpu.choose_path`). The blocks depend on the problem only, never on the thread
count, so every thread count gives bitwise the same result.
"""

import math

import numba
import numpy as np
from numba import prange

from ... import workspace
from .._blas import INT32_MAX, gemm, single_threaded_blas
from .._runtime import parallel_kernel
from ._common import bias_or_zeros, column_span, write_phases
from .tasks import next_task

__all__ = ["block_channels", "column_bytes_per_image", "fits_blas", "run", "side_by_side"]

#: A call is cut into at least this many tasks where its channels allow (a slow thread then takes fewer of them);
#: a constant, not the thread count, so that the blocks, and the bits of the result, are the same on any thread count.
MIN_TASKS = 8


@parallel_kernel
def _gemm_col2im(
    pixels, in_h, in_w, weight, bias, y, blocks, co_block, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups
):
    """``y[n, c, oh, ow] = Σ columns[(c, kh, kw), (n, ih, iw)] + bias[c]`` over the taps with ``oh = ih·s_h - p_h +
    kh·d_h``, ``ow = iw·s_w - p_w + kw·d_w``, added in (kh, kw) order from +0.0, the columns of ``co_block`` output
    channels computed per task by one single-threaded BLAS call into the worker's buffer ``blocks[worker]``.
    ``pixels`` is the input as ``(B, C_in, images·H·W)``: the NCHW input itself (``B = N``, one image per GEMM) or,
    for small images, all images side by side (``B = 1``: one GEMM wide enough for BLAS). Tasks ``(b, group, block
    of output channels)`` are handed out one at a time (:mod:`.tasks`); a task owns its channels' output planes of
    its images."""
    batch, in_channels, columns_per_gemm = pixels.shape
    images = y.shape[0] // batch
    out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    k_h, k_w = weight.shape[2], weight.shape[3]
    per_group_in, per_group_out, taps = in_channels // groups, out_channels // groups, k_h * k_w
    flat_w = weight.reshape((in_channels, per_group_out * taps))
    co_blocks = (per_group_out - 1) // co_block + 1
    # acc[b, j] holds output column b + s_w·j, so each tap adds one unit-stride run. A phase b that holds an output
    # has b <= ow < W_out, so min(s_w, W_out) phases suffice (a huge stride costs nothing).
    phases, phase_len = min(stride_w, out_w), (out_w - 1) // stride_w + 1
    tasks, counter = batch * groups * co_blocks, np.zeros(1, np.int64)
    for worker in prange(blocks.shape[0]):  # one worker per thread, tasks handed out in turn
        acc = np.empty((phases, phase_len), dtype=y.dtype)
        task = next_task(counter)
        while task < tasks:
            cb = task % co_blocks
            g = (task // co_blocks) % groups
            first = task // (co_blocks * groups) * images  # the task's first image
            c0, c1 = cb * co_block, min(per_group_out, (cb + 1) * co_block)
            ci0, ci1 = g * per_group_in, (g + 1) * per_group_in
            products = blocks[worker, : (c1 - c0) * taps * columns_per_gemm].reshape(
                ((c1 - c0) * taps, columns_per_gemm)
            )
            gemm(flat_w[ci0:ci1, c0 * taps : c1 * taps], pixels[first // images, ci0:ci1], products, True, False)
            columns = products.reshape((c1 - c0, k_h, k_w, images, in_h, in_w))
            for c in range(c0, c1):
                co = g * per_group_out + c
                for image in range(images):
                    n = first + image
                    for oh in range(out_h):
                        acc[:] = 0.0
                        for kh in range(k_h):
                            shift = oh + pad_h - kh * dil_h
                            if shift < 0 or shift % stride_h != 0 or shift // stride_h >= in_h:
                                continue
                            ih = shift // stride_h
                            for kw in range(k_w):
                                iw_lo, iw_hi, phase, skip = column_span(kw, dil_w, pad_w, stride_w, in_w, out_w)
                                if iw_hi <= iw_lo:
                                    continue
                                dst = acc[phase, iw_lo + skip : iw_hi + skip]
                                run = columns[c - c0, kh, kw, image, ih, iw_lo:iw_hi]
                                for i in range(iw_hi - iw_lo):
                                    dst[i] += run[i]
                        write_phases(acc, y[n, co, oh], bias[co], stride_w)
            task = next_task(counter)


def column_bytes_per_image(problem):
    """Bytes of the GEMM paths' ``columns`` (C_out·kH·kW·H·W) for one image."""
    return problem.out_channels * math.prod(problem.kernel_size) * math.prod(problem.in_size) * problem.dtype.itemsize


def side_by_side(problem, blocking):
    """Whether the images go side by side into one GEMM (small images in a batch: one image's GEMM would be too narrow
    for BLAS to run at speed), within the ``block_bytes`` of one output channel's columns."""
    area = math.prod(problem.in_size)
    per_channel = column_bytes_per_image(problem) // problem.out_channels * problem.batch
    return problem.batch > 1 and area < blocking.gemm_side_by_side_pixels and per_channel <= blocking.block_bytes


def block_channels(problem, blocking):
    """Output channels per task: the group's, cut so that a block's columns fit ``block_bytes`` (and the blocks of all
    of Numba's threads a ``workspace_limit``) and the call has at least :data:`MIN_TASKS` tasks where the channels
    allow; from the problem and the row only."""
    merged = side_by_side(problem, blocking)
    per_channel = column_bytes_per_image(problem) // problem.out_channels * (problem.batch if merged else 1)
    budget = min(blocking.block_bytes, problem.workspace_limit // numba.config.NUMBA_NUM_THREADS)
    per_group_out = problem.out_per_group
    images_and_groups = (1 if merged else problem.batch) * problem.groups
    spread = -(-per_group_out // max(1, -(-MIN_TASKS // max(1, images_and_groups))))
    return max(1, min(per_group_out, spread, budget // max(1, per_channel)))


def fits_blas(problem):
    """Whether every size and leading dimension the path hands to BLAS fits its 32-bit integers."""
    taps, pixels = math.prod(problem.kernel_size), math.prod(problem.in_size)
    return max(pixels, problem.out_per_group * taps, problem.in_channels) <= INT32_MAX


def run(x, weight, bias, problem, out=None, *, blocking):
    if not fits_blas(problem):
        raise ValueError(
            f"gemm_col2im: a GEMM size of {problem} exceeds BLAS's 32-bit integers ({INT32_MAX}); use blocked_direct"
        )
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    if problem.batch == 0:
        return y
    bias = bias_or_zeros(bias, problem)
    channels = block_channels(problem, blocking)
    taps, area = math.prod(problem.kernel_size), math.prod(problem.in_size)
    pixels = np.ascontiguousarray(x).reshape(problem.batch, problem.in_channels, area)
    if side_by_side(problem, blocking):  # (1, C_in, N·H·W): a copy of the (small) input
        pixels = np.ascontiguousarray(pixels.transpose(1, 0, 2)).reshape(1, problem.in_channels, -1)
    # one worker (and buffer) per Numba thread, kept across calls
    blocks = workspace.scratch(
        "numba_cpu.column_blocks", (numba.get_num_threads(), channels * taps * pixels.shape[2]), problem.dtype
    )
    with single_threaded_blas():
        _gemm_col2im(
            pixels,
            *problem.in_size,
            np.ascontiguousarray(weight),
            bias,
            y,
            blocks,
            channels,
            *problem.stride,
            *problem.padding,
            *problem.dilation,
            problem.groups,
        )
    return y
