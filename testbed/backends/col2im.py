"""``col2im``: one GEMM into a column buffer, then col2im accumulation.

The Caffe / PyTorch ``slow_conv_transpose2d`` design: per image and group,
``columns[(co, kh, kw), (ih, iw)] = Σ_ci W[ci, co, kh, kw] · x[ci, ih, iw]`` (a BLAS GEMM
``(C_out·kH·kW × C_in) · (C_in × H·W)``), then every column row is added into the output at
``(ih·s + kh·d - p, iw·s + kw·d - p)``. The column buffer holds ``C_out·kH·kW·H·W`` values per image.
"""

import numpy as np

from ..registry import Backend, register


def col2im_accumulate(columns, problem, canvas):
    """Add ``columns`` ``(C_out, kH, kW, H, W)`` into ``canvas`` ``(C_out, *canvas_size)``: the col2im step."""
    (sh, sw), (dh, dw) = problem.stride, problem.dilation
    (h, w), (kh_size, kw_size) = problem.in_size, problem.kernel_size
    for kh in range(kh_size):
        for kw in range(kw_size):
            canvas[:, kh * dh:kh * dh + (h - 1) * sh + 1:sh,
                   kw * dw:kw * dw + (w - 1) * sw + 1:sw] += columns[:, kh, kw]


def gemm_col2im(x, weight, bias, problem):
    g, (h, w), (kh, kw) = problem.groups, problem.in_size, problem.kernel_size
    cig, cog = problem.in_per_group, problem.out_per_group
    # (G, Co_g·kH·kW, Ci_g): the transposed weight of each group, the GEMM's left operand.
    weight_t = weight.reshape(g, cig, cog * kh * kw).transpose(0, 2, 1)
    y = np.empty(problem.output_shape, dtype=problem.dtype)
    canvas = np.empty((problem.out_channels, *problem.canvas_size), dtype=problem.dtype)
    for n in range(problem.batch):
        columns = np.matmul(weight_t, x[n].reshape(g, cig, h * w))        # (G, Co_g·kH·kW, HW)
        canvas[...] = 0
        col2im_accumulate(columns.reshape(problem.out_channels, kh, kw, h, w), problem, canvas)
        y[n] = problem.crop(canvas)
    if bias is not None:
        y += bias[None, :, None, None]
    return y


register(Backend(
    name="col2im",
    description="GEMM into a column buffer (C_out·kH·kW × H·W per image), then col2im accumulation",
    run=gemm_col2im,
))
