"""``naive``: the scatter definition, the oracle.

``y[n, g·Co_g + co, ih·s + kh·d - p, iw·s + kw·d - p] += x[n, g·Ci_g + ci, ih, iw] · W[g·Ci_g + ci, co, kh, kw]``

Vectorised only over batch, output channels and input pixels; input channels and kernel taps are plain
loops, in that order, so the summation order is the definition's and nothing else is clever.
"""

import numpy as np

from ..registry import Backend, register


def scatter_definition(x, weight, bias, problem):
    (sh, sw), (dh, dw) = problem.stride, problem.dilation
    (h, w), (kh_size, kw_size) = problem.in_size, problem.kernel_size
    cig, cog = problem.in_per_group, problem.out_per_group
    canvas = np.zeros((problem.batch, problem.out_channels, *problem.canvas_size), dtype=problem.dtype)
    for ci in range(problem.in_channels):
        group = ci // cig
        block = canvas[:, group * cog:(group + 1) * cog]
        pixel = x[:, ci, None, :, :]                       # (N, 1, H, W)
        for kh in range(kh_size):
            for kw in range(kw_size):
                tap = weight[ci, :, kh, kw][None, :, None, None]   # (1, Co_g, 1, 1)
                block[:, :, kh * dh:kh * dh + (h - 1) * sh + 1:sh,
                      kw * dw:kw * dw + (w - 1) * sw + 1:sw] += pixel * tap
    y = problem.crop(canvas)
    if bias is not None:
        y = y + bias[None, :, None, None]
    return np.ascontiguousarray(y)


register(Backend(
    name="naive",
    description="scatter definition: every input pixel times the kernel, added into its output window (oracle)",
    run=scatter_definition,
))
