"""``kron``: the outer-product form for stride == kernel, dilation 1 (the U-Net up-convolution), any rank.

With no overlap, each input pixel ``i = (i_1, ..., i_r)`` of the ``r`` spatial axes owns the output block
``o_a = i_a·k_a + t_a`` (``0 <= t_a < k_a``), and

    y[n, co, i_1·k_1 + t_1, ..., i_r·k_r + t_r] = Σ_ci x[n, ci, i] · W[ci, co, t_1, ..., t_r]

(in 2-D ``y[n, co, i·k + a, j·k + b] = Σ_ci x[n, ci, i, j] · W[ci, co, a, b]``): the seed's APL ``ker ∘.× inp``
followed by laminating the blocks. One contraction over input channels (a GEMM
``(N·Π n_a × C_in) · (C_in × C_out·Π k_a)`` per group) plus a reshape that interleaves each input axis with its
kernel axis; padding crops, output_padding extends. Channels-last layouts are computed as they come (the GEMM's
columns ordered taps first, ``Π k_a·C_out``, so the channels stay innermost). The rank never enters the
arithmetic: 1-D and 3-D are the same GEMM and one more or one fewer axis pair in the reshape. The laminated blocks
are the uncropped canvas, so a padding that crops most of it away would make memory follow the padding rather than
the output: above :attr:`Problem.workspace_limit` the configuration is declined with the size it would need.
"""

import math

import numpy as np

from ..registry import Backend, register


def outer_product_blocks(x, weight, bias, problem):
    n, g, rank = problem.batch, problem.groups, problem.rank
    cig, cog = problem.in_per_group, problem.out_per_group
    blocked = (*problem.in_size, *problem.kernel_size)  # (n_1, ..., n_r, k_1, ..., k_r)
    # each input axis followed by its kernel axis (n_1, k_1, ..., n_r, k_r), laminated by the reshape below
    interleaved = [axis for a in range(rank) for axis in (a, rank + a)]
    laminated_size = tuple(size * k for size, k in zip(problem.in_size, problem.kernel_size))
    if problem.channels_last:
        # The taps before the output channels in the GEMM's columns, so that the laminated copy moves runs of
        # C_out contiguous values (1.5-2.6× faster than computing channels first between two transpositions).
        pixels = x.reshape(n, -1, g, cig).transpose(2, 0, 1, 3)  # (G, N, Π n_a, Ci_g)
        kernels = weight.reshape(g, cig, cog, -1).transpose(0, 1, 3, 2).reshape(g, cig, -1)  # (G, Ci_g, Π k_a·Co_g)
        blocks = np.matmul(pixels, kernels[:, None]).reshape(g, n, *blocked, cog)
        order = (1, *(2 + axis for axis in interleaved), 0, 2 + 2 * rank)  # (N, n_1, k_1, ..., G, Co_g)
        laminated = blocks.transpose(order).reshape(n, *laminated_size, problem.out_channels)
        canvas_shape = (n, *problem.canvas_size, problem.out_channels)
    else:
        pixels = x.reshape(n, g, cig, -1).transpose(1, 0, 3, 2)  # (G, N, Π n_a, Ci_g)
        kernels = weight.reshape(g, cig, -1)  # (G, Ci_g, Co_g·Π k_a)
        blocks = np.matmul(pixels, kernels[:, None]).reshape(g, n, *problem.in_size, cog, *problem.kernel_size)
        order = (1, 0, 2 + rank, *(2 + axis + (axis >= rank) for axis in interleaved))  # (N, G, Co_g, n_1, k_1, ...)
        laminated = blocks.transpose(order).reshape(n, problem.out_channels, *laminated_size)
        canvas_shape = (n, problem.out_channels, *problem.canvas_size)
    if not any(problem.output_padding):
        canvas = laminated
    else:
        canvas = np.zeros(canvas_shape, dtype=problem.dtype)
        canvas[tuple(slice(0, extent) for extent in laminated.shape)] = laminated  # the blocks start the canvas
    if problem.channels_last:  # Problem.crop crops the trailing axes: the channels go first for it, in a view
        y = np.moveaxis(problem.crop(np.moveaxis(canvas, -1, 1)), 1, -1)
    else:
        y = problem.crop(canvas)
    y = np.ascontiguousarray(y)  # a copy only when padding cropped the canvas
    if bias is not None:
        y += bias if problem.channels_last else bias.reshape(-1, *(1,) * rank)
    return y


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
        layouts=("NCHW", "NHWC"),
        ranks=(1, 2, 3),
    )
)
