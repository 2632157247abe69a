"""``kron``: the outer-product form for stride == kernel, dilation 1 (the U-Net up-convolution).

With no overlap, ``y[n, co, i·k + a, j·k + b] = Σ_ci x[n, ci, i, j] · W[ci, co, a, b]``: the seed's APL
``ker ∘.× inp`` followed by laminating the k×k blocks. One contraction over input channels (a GEMM
``(N·H·W × C_in) · (C_in × C_out·kH·kW)`` per group) plus a reshape; padding crops, output_padding extends.
The laminated blocks are the uncropped canvas, so a padding that crops most of it away would make memory
follow the padding rather than the output: above :attr:`Problem.workspace_limit` the configuration is
declined with the size it would need.
"""

import math

import numpy as np

from ..registry import Backend, register


def outer_product_blocks(x, weight, bias, problem):
    n, g = problem.batch, problem.groups
    (h, w), (kh, kw) = problem.in_size, problem.kernel_size
    cig, cog = problem.in_per_group, problem.out_per_group
    pixels = x.reshape(n, g, cig, h * w).transpose(1, 0, 3, 2)  # (G, N, HW, Ci_g)
    kernels = weight.reshape(g, cig, cog * kh * kw)  # (G, Ci_g, Co_g·kH·kW)
    blocks = np.matmul(pixels, kernels[:, None])  # (G, N, HW, Co_g·kH·kW)
    blocks = blocks.reshape(g, n, h, w, cog, kh, kw)
    laminated = blocks.transpose(1, 0, 4, 2, 5, 3, 6).reshape(n, g * cog, h * kh, w * kw)
    if problem.output_padding == (0, 0):
        canvas = laminated
    else:
        canvas = np.zeros((n, problem.out_channels, *problem.canvas_size), dtype=problem.dtype)
        canvas[:, :, : h * kh, : w * kw] = laminated
    y = problem.crop(canvas)
    if bias is not None:
        y = y + bias[None, :, None, None]
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
    )
)
