"""``naive``: the scatter definition, the oracle.

``y[n, g·Co_g + co, ih·s + kh·d - p, iw·s + kw·d - p] += x[n, g·Ci_g + ci, ih, iw] · W[g·Ci_g + ci, co, kh, kw]``

Vectorised only over batch, output channels and input pixels; input channels and kernel taps are plain
loops, in that order, so the summation order is the definition's and nothing else is clever. Each tap adds
only the input pixels that land inside the output (:meth:`Problem.landing`), straight into the output: no
uncropped canvas, so memory is the output plus one tap's products however large stride or padding are.

Every output starts at +0.0, receives its products in (ci, kh, kw) order, then the bias: the sign of zero is
PyTorch's (an output is never -0.0).
"""

import numpy as np

from ..registry import Backend, register


def scatter_definition(x, weight, bias, problem):
    cig, cog = problem.in_per_group, problem.out_per_group
    rows = [problem.landing(0, kh) for kh in range(problem.kernel_size[0])]
    cols = [problem.landing(1, kw) for kw in range(problem.kernel_size[1])]
    y = np.zeros(problem.output_shape, dtype=problem.dtype)
    for ci in range(problem.in_channels):
        group = ci // cig
        block = y[:, group * cog : (group + 1) * cog]
        for kh, row in enumerate(rows):
            for kw, col in enumerate(cols):
                if row is None or col is None:
                    continue
                (in_rows, out_rows), (in_cols, out_cols) = row, col
                tap = weight[ci, :, kh, kw][None, :, None, None]  # (1, Co_g, 1, 1)
                block[:, :, out_rows, out_cols] += x[:, ci, None, in_rows, in_cols] * tap
    if bias is not None:
        y += bias[None, :, None, None]
    return y


register(
    Backend(
        name="naive",
        description="scatter definition: every input pixel times the kernel, added into its output window (oracle)",
        run=scatter_definition,
    )
)
