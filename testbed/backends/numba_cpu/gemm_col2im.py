"""``gemm_col2im``: overlapping taps with GEMM-sized channels.

``gemm_col2im`` (overlapping taps with GEMM-sized channels). The same GEMM gives every (input pixel, tap)
product summed over input channels, ``columns[co, kh, kw, n, ih, iw]``; then a *gathering* col2im: each
thread owns output planes and adds, per row, for each tap ``kh`` with ``(oh + p - kh·d) ≡ 0 (mod s)``, the column
entries that land in the row (Caffe's / PyTorch's ``slow_conv_transpose2d`` design, with its scatter
turned into an output-stationary gather and the bias fused in). Only useful products are computed.
"""

import numpy as np
from numba import prange

from ... import workspace
from .._runtime import parallel_kernel
from ._common import bias_or_zeros

__all__ = ["column_bytes_per_image", "gemm_columns", "image_chunks", "run"]


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
                    start = kw * dil_w - pad_w  # ow of input column 0
                    iw_lo = max(0, -(start // stride_w))  # first iw with ow >= 0
                    iw_hi = min(in_w, (out_w - 1 - start) // stride_w + 1)
                    if iw_hi <= iw_lo:
                        continue
                    skip = start // stride_w  # ow = b + s·(iw + skip)
                    dst = acc[start % stride_w, iw_lo + skip : iw_hi + skip]
                    run = columns[c, kh, kw, n, ih, iw_lo:iw_hi]
                    for i in range(iw_hi - iw_lo):
                        dst[i] += run[i]
            line, b_c = y[n, c, oh], bias[c]
            for b in range(phases):
                for j in range((out_w - 1 - b) // stride_w + 1):
                    line[b + stride_w * j] = acc[b, j] + b_c


def gemm_columns(x, weight, problem):
    """``columns[co, kh, kw, n, ih, iw] = Σ_ci W[ci, co, kh, kw] · x[n, ci, ih, iw]`` (ci over co's group) for
    the images of ``x``: one BLAS GEMM per group for all of them."""
    n, g = x.shape[0], problem.groups
    (h, w), (kh, kw) = problem.in_size, problem.kernel_size
    cig, cog = problem.in_per_group, problem.out_per_group
    weight_t = weight.reshape(g, cig, cog * kh * kw).transpose(0, 2, 1)  # (G, Co_g·kH·kW, Ci_g), a view
    pixels = x.reshape(n, g, cig, h * w)
    # (G, Ci_g, N·HW): the batch becomes GEMM columns (a copy of the input only when N > 1).
    pixels = pixels[0] if n == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0, 3))
    columns = np.matmul(weight_t, pixels.reshape(g, cig, n * h * w))  # (G, Co_g·kH·kW, N·HW)
    return columns.reshape(problem.out_channels, kh, kw, n, h, w)


def column_bytes_per_image(problem):
    """Bytes of the GEMM paths' ``columns`` (C_out·kH·kW·H·W) for one image."""
    return (
        problem.out_channels
        * problem.kernel_size[0]
        * problem.kernel_size[1]
        * problem.in_size[0]
        * problem.in_size[1]
        * problem.dtype.itemsize
    )


def image_chunks(problem, blocking):
    """Slices of the batch whose column buffers stay under ``blocking.column_buffer_bytes`` (at least 1 image)."""
    step = max(1, blocking.column_buffer_bytes // column_bytes_per_image(problem))
    return [slice(n0, min(problem.batch, n0 + step)) for n0 in range(0, problem.batch, step)]


def run(x, weight, bias, problem, out=None, *, blocking):
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    bias = bias_or_zeros(bias, problem)
    for images in image_chunks(problem, blocking):
        _col2im_gather(
            gemm_columns(x[images], weight, problem),
            bias,
            y[images],
            *problem.stride,
            *problem.padding,
            *problem.dilation,
        )
    return y
