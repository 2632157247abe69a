"""What ``numba_cpu``'s two backward directions share: every rank as 3-D, and the im2col of the output gradient.

**Every rank as 3-D** (:func:`lift`): a rank-``r`` problem's arrays are viewed (reshapes of C-contiguous arrays,
no copy) with ``3 - r`` leading spatial axes of size 1, and its per-axis parameters padded with kernel 1,
stride 1, padding 0, dilation 1 there, so one set of kernels addressing ``(d, h, w)`` computes ranks 1, 2 and 3
(the same products, summed in the same order).

**The columns of the output gradient** (Caffe's ``Deconvolution`` backward, PyTorch's
``slow_conv_transpose2d_backward``): for an input pixel ``i = (i_d, i_h, i_w)`` and a kernel tap ``k``,

    columns[(co, k), i] = grad_output[n, co, i·s - p + k·d]     (0 where that position is outside the output)

so both gradients are GEMMs against them (:mod:`.backward_data`, :mod:`.backward_weight`). With stride == kernel
(the U-Net up-convolution) this is the pixel unshuffle (space-to-depth) of ``grad_output``: every element
exactly once, no zeros. Channels first the columns are ``(C_out·Πk, pixels)`` (rows ``(co, k)``, the weight's
own order); channels last ``(pixels, C_out·Πk)`` with columns ``(group, k, co)``, so each ``(pixel, tap)``
copies a contiguous run of output channels. :func:`pixel_chunk` bounds the buffer: at most
``min(Problem.workspace_limit, column_buffer_bytes)`` (at least one pixel's columns), a chunk of pixels at a time.

The packing kernels only copy (each column element written by one thread), so they are exact and repeatable.
"""

import numpy as np
from numba import prange

from .._blas import INT32_MAX
from .._runtime import parallel_kernel

__all__ = ["balanced_block", "fits_blas", "lift", "pack_first", "pack_last", "parameters_3d", "pixel_chunk"]


def parameters_3d(problem):
    """``(in_size, out_size, kernel, stride, padding, dilation)``, each a 3-tuple: the problem's axes after
    ``3 - rank`` leading axes of size 1 (kernel 1, stride 1, padding 0, dilation 1)."""
    lead = 3 - problem.rank
    return (
        (1,) * lead + tuple(problem.in_size),
        (1,) * lead + tuple(problem.out_size),
        (1,) * lead + tuple(problem.kernel_size),
        (1,) * lead + tuple(problem.stride),
        (0,) * lead + tuple(problem.padding),
        (1,) * lead + tuple(problem.dilation),
    )


def lift(array, spatial, channels_last):
    """A batched ``(N, C, *sizes)`` (or ``(N, *sizes, C)``) array viewed with the 3-D ``spatial`` sizes; a weight
    ``(C_in, C_out/G, *kernel)`` with ``channels_last=False``."""
    if channels_last:
        return array.reshape(array.shape[0], *spatial, array.shape[-1])
    return array.reshape(array.shape[0], array.shape[1], *spatial)


def pixel_chunk(problem, blocking):
    """Input pixels per chunk of columns: the buffer ``C_out·Πk·chunk`` within ``min(workspace_limit,
    column_buffer_bytes)``, at least one pixel. Depends on the problem only (never the thread count)."""
    pixels = int(np.prod(problem.in_size))
    per_pixel = problem.out_channels * int(np.prod(problem.kernel_size)) * problem.dtype.itemsize
    budget = min(problem.workspace_limit, blocking.column_buffer_bytes)
    return max(1, min(pixels, budget // per_pixel))


def balanced_block(extent, most):
    """The block of ``extent`` items into the fewest blocks of at most ``most``, as equal as they can be (so the
    last block of a GEMM is not a sliver that leaves a thread idle)."""
    blocks = -(-extent // most)
    return max(1, -(-extent // blocks))


def fits_blas(problem):
    """Whether every size and leading dimension the GEMM paths hand to BLAS fits its 32-bit integers."""
    taps = int(np.prod(problem.kernel_size))
    return max(int(np.prod(problem.in_size)), problem.out_channels * taps, problem.in_channels) <= INT32_MAX


@parallel_kernel
def pack_first(grad_output, n, p0, columns, kernel, stride, padding, dilation, in_h, in_w):
    """Channels first: ``columns[(co, k), q] = grad_output[n, co, o]`` for the input pixels ``p0 + q`` of the
    chunk (``o = i·s - p + k·d``), 0 where ``o`` is outside; one ``(co, k)`` row per iteration."""
    out_channels, out_d, out_h, out_w = grad_output.shape[1:]
    k_d, k_h, k_w = kernel
    s_d, s_h, s_w = stride
    p_d, p_h, p_w = padding
    d_d, d_h, d_w = dilation
    taps, chunk = k_d * k_h * k_w, columns.shape[1]
    p1 = p0 + chunk
    zero = np.zeros(1, dtype=columns.dtype)[0]
    for row in prange(out_channels * taps):
        co, tap = row // taps, row % taps
        a, b, e = tap // (k_h * k_w), (tap // k_w) % k_h, tap % k_w
        dst = columns[row]
        offset = e * d_w - p_w
        first = max(0, -(offset // s_w))  # the first column u with u·s_w + offset >= 0
        last = (out_w - 1 - offset) // s_w + 1  # one past the last with u·s_w + offset < out_w
        for r in range(p0 // in_w, (p1 - 1) // in_w + 1):  # input rows (i_d, i_h) of the chunk
            l0, l1 = max(p0 - r * in_w, 0), min(p1 - r * in_w, in_w)
            q0 = r * in_w + l0 - p0
            od, oh = (r // in_h) * s_d - p_d + a * d_d, (r % in_h) * s_h - p_h + b * d_h
            if od < 0 or od >= out_d or oh < 0 or oh >= out_h:
                for u in range(l0, l1):
                    dst[q0 + u - l0] = zero
                continue
            src = grad_output[n, co, od, oh]
            lo = min(max(l0, first), l1)  # columns [l0, lo) and [hi, l1) are outside the output
            hi = max(min(l1, last), lo)
            for u in range(l0, lo):
                dst[q0 + u - l0] = zero
            for u in range(lo, hi):
                dst[q0 + u - l0] = src[u * s_w + offset]
            for u in range(hi, l1):
                dst[q0 + u - l0] = zero


@parallel_kernel
def pack_last(grad_output, n, p0, columns, groups, kernel, stride, padding, dilation, in_h, in_w):
    """Channels last: ``columns[q, (g, k, c)] = grad_output[n, o, g·C_out/G + c]`` for the input pixels ``p0 + q``
    of the chunk, 0 where ``o`` is outside; one pixel per iteration, a contiguous run of channels per tap."""
    out_d, out_h, out_w, out_channels = grad_output.shape[1:]
    k_d, k_h, k_w = kernel
    s_d, s_h, s_w = stride
    p_d, p_h, p_w = padding
    d_d, d_h, d_w = dilation
    taps, chunk = k_d * k_h * k_w, columns.shape[0]
    per_group = out_channels // groups
    zero = np.zeros(1, dtype=columns.dtype)[0]
    for q in prange(chunk):
        p = p0 + q
        r, u = p // in_w, p % in_w
        i_d, i_h = r // in_h, r % in_h
        row = columns[q]
        for tap in range(taps):
            a, b, e = tap // (k_h * k_w), (tap // k_w) % k_h, tap % k_w
            od, oh, ow = i_d * s_d - p_d + a * d_d, i_h * s_h - p_h + b * d_h, u * s_w - p_w + e * d_w
            inside = 0 <= od < out_d and 0 <= oh < out_h and 0 <= ow < out_w
            for g in range(groups):
                base = (g * taps + tap) * per_group
                if inside:
                    src = grad_output[n, od, oh, ow, g * per_group : (g + 1) * per_group]
                    for c in range(per_group):
                        row[base + c] = src[c]
                else:
                    for c in range(per_group):
                        row[base + c] = zero
