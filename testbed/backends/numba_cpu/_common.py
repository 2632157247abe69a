"""What several ``numba_cpu`` paths share."""

import numpy as np

from .._runtime import serial_kernel

__all__ = ["bias_or_zeros", "column_span", "write_phases"]


def bias_or_zeros(bias, problem):
    """``bias``, or zeros of the output channels' count and the problem's dtype."""
    return np.zeros(problem.out_channels, dtype=problem.dtype) if bias is None else bias


@serial_kernel
def column_span(kw, dil_w, pad_w, stride_w, in_w, out_w):
    """The input columns ``iw_lo <= iw < iw_hi`` whose outputs ``ow = iw·s_w - p_w + kw·d_w`` (kernel column ``kw``)
    lie in ``[0, W_out)``, as ``(iw_lo, iw_hi, phase, skip)`` with ``ow = phase + s_w·(iw + skip)``: the unit-stride
    run the tap adds into ``acc[phase, iw_lo + skip : iw_hi + skip]`` of a row's phase accumulators (``acc[b, j]``
    holds output column ``b + s_w·j``, so only the ``min(s_w, W_out)`` phases that hold outputs exist)."""
    start = kw * dil_w - pad_w  # ow of input column 0
    first = max(0, -(start // stride_w))  # the first iw with ow >= 0
    return first, min(in_w, (out_w - 1 - start) // stride_w + 1), start % stride_w, start // stride_w


@serial_kernel
def write_phases(acc, line, bias_c, stride_w):
    """``line[b + s_w·j] = acc[b, j] + bias_c``: a row's phase accumulators written out in output order."""
    for b in range(acc.shape[0]):
        for j in range((line.shape[0] - 1 - b) // stride_w + 1):
            line[b + stride_w * j] = acc[b, j] + bias_c
