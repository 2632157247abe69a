"""``direct``: depthwise and other tiny channel products (``numba_cpu`` takes it below
``direct_max_channel_product``, see :func:`~testbed.backends.numba_cpu.choose_path`).

``direct`` (depthwise and other tiny channel products). An output-stationary
gather straight from ``x`` and ``W``: per output row, every tap and input channel of its group adds a
contiguous run of ``x[n, ci, ih, :] · W[ci, co, kh, kw]`` into one phase of a phase-split row buffer
(``ow = b + s·j`` stored at ``[b, j]``, so the inner loop is unit-stride), interleaved into ``y`` at the end.
"""

import numpy as np
from numba import prange

from ... import workspace
from .._runtime import parallel_kernel
from ._common import bias_or_zeros, column_span, write_phases

__all__ = ["run"]


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
                        iw_lo, iw_hi, phase, skip = column_span(kw, dil_w, pad_w, stride_w, in_w, out_w)
                        if iw_hi <= iw_lo:
                            continue
                        # views indexed from 0 let LLVM vectorise the loop
                        dst = acc[phase, iw_lo + skip : iw_hi + skip]
                        run = src[iw_lo:iw_hi]
                        for i in range(iw_hi - iw_lo):
                            dst[i] += run[i] * w
            write_phases(acc, y[n, co, oh], bias[co], stride_w)


def run(x, weight, bias, problem, out=None, *, blocking):
    """``direct`` into ``out`` (or a new result); ``blocking`` is unused (no tiles)."""
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    _direct_gather(
        x, weight, bias_or_zeros(bias, problem), y, *problem.stride, *problem.padding, *problem.dilation, problem.groups
    )
    return y
