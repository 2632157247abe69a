"""``kron``: the outer-product form for stride == kernel, dilation 1 (the U-Net up-convolution), any rank.

With no overlap, each input pixel ``i = (i_1, ..., i_r)`` of the ``r`` spatial axes owns the output block
``o_a = i_a·k_a + t_a`` (``0 <= t_a < k_a``), and

    y[n, co, i_1·k_1 + t_1, ..., i_r·k_r + t_r] = Σ_ci x[n, ci, i] · W[ci, co, t_1, ..., t_r]

(in 2-D ``y[n, co, i·k + a, j·k + b] = Σ_ci x[n, ci, i, j] · W[ci, co, a, b]``): the seed's APL ``ker ∘.× inp``
followed by laminating the blocks. One contraction over input channels (a GEMM ``(N·Π n_a × C_in) · (C_in ×
C_out·Π k_a)`` per group) plus a reshape that interleaves each input axis with its kernel axis; padding crops,
output_padding extends. The rank never enters the arithmetic: 1-D and 3-D are the same GEMM and one more or one
fewer axis pair in the reshape. The laminated blocks are the uncropped canvas, so a padding that crops most of
it away would make memory follow the padding rather than the output: above :attr:`Problem.workspace_limit` the
configuration is declined with the size it would need.
"""

import math

import numpy as np

from ..registry import Backend, register


def outer_product_blocks(x, weight, bias, problem):
    n, g, rank = problem.batch, problem.groups, problem.rank
    cig, cog = problem.in_per_group, problem.out_per_group
    pixels = x.reshape(n, g, cig, -1).transpose(1, 0, 3, 2)  # (G, N, Π n_a, Ci_g)
    kernels = weight.reshape(g, cig, -1)  # (G, Ci_g, Co_g·Π k_a)
    blocks = np.matmul(pixels, kernels[:, None])  # (G, N, Π n_a, Co_g·Π k_a)
    blocks = blocks.reshape(g, n, *problem.in_size, cog, *problem.kernel_size)
    # (N, G, Co_g, n_1, k_1, ..., n_r, k_r): each input axis followed by its kernel axis, laminated by the reshape
    interleaved = [axis for a in range(rank) for axis in (2 + a, 3 + rank + a)]
    laminated = blocks.transpose(1, 0, 2 + rank, *interleaved).reshape(
        n, problem.out_channels, *(size * k for size, k in zip(problem.in_size, problem.kernel_size))
    )
    if not any(problem.output_padding):
        canvas = laminated
    else:
        canvas = np.zeros((n, problem.out_channels, *problem.canvas_size), dtype=problem.dtype)
        canvas[tuple(slice(0, extent) for extent in laminated.shape)] = laminated  # the blocks start the canvas
    y = problem.crop(canvas)
    if bias is not None:
        y = y + bias.reshape(-1, *(1,) * rank)
    return np.ascontiguousarray(y)


def _needs_stride_equal_kernel(problem):
    if not problem.is_nonoverlapping:
        return (
            f"needs stride == kernel size and dilation 1, got stride {problem.stride}, kernel "
            f"{problem.kernel_size}, dilation {problem.dilation}"
        )
    # The GEMM result and its laminated copy are both canvas-sized.
    need = 2 * problem.batch * problem.out_channels * math.prod(problem.canvas_size) * problem.dtype.itemsize
    if need > problem.workspace_limit:
        return (
            f"the uncropped canvas {problem.canvas_size} (twice, GEMM result and laminated copy) needs "
            f"{need:.3g} bytes, above the workspace limit of {problem.workspace_limit:.3g} bytes"
        )
    return None


register(
    Backend(
        name="kron",
        description="outer product ker ∘.× inp laminated into blocks (stride == kernel only): one GEMM + reshape",
        run=outer_product_blocks,
        check=_needs_stride_equal_kernel,
        ranks=(1, 2, 3),
    )
)
