"""``col2im``: one GEMM into a column buffer, then col2im accumulation.

The Caffe / PyTorch ``slow_conv_transpose2d`` design: per image and group,
``columns[(co, kh, kw), (ih, iw)] = Σ_ci W[ci, co, kh, kw] · x[ci, ih, iw]`` (a BLAS GEMM
``(C_out·kH·kW × C_in) · (C_in × H·W)``), then every column row is added into the output at
``(ih·s + kh·d - p, iw·s + kw·d - p)``.

Resources follow the work: the columns cover only the input pixels that reach the output
(:meth:`Problem.landing_inputs`), each tap adds only the pixels that land (:meth:`Problem.landing`) straight
into the output (no uncropped canvas), and when the buffer ``C_out·kH·kW·H·W`` would exceed
:attr:`Problem.workspace_limit` it is computed a block of output channels (then of taps) at a time; the
smallest block, one channel and one tap, is one input plane.
"""

import numpy as np

from ..registry import Backend, register


def _blocks(problem, pixels):
    """``(channel block, tap block)`` sizes whose column buffer and weight block (all groups) fit the workspace
    limit beside one image's input pixels (copied when padding crops them)."""
    taps = problem.kernel_size[0] * problem.kernel_size[1]
    per_channel_tap = problem.groups * (pixels + problem.in_per_group) * problem.dtype.itemsize
    budget = problem.workspace_limit - problem.in_channels * pixels * problem.dtype.itemsize
    fit = max(1, budget // per_channel_tap)  # channel·tap products that fit
    if fit >= taps:
        return min(problem.out_per_group, fit // taps), taps
    return 1, fit


def gemm_col2im(x, weight, bias, problem):
    g, (kh, kw) = problem.groups, problem.kernel_size
    cig, cog = problem.in_per_group, problem.out_per_group
    rows, cols = problem.landing_inputs(0), problem.landing_inputs(1)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    y = np.zeros(problem.output_shape, dtype=problem.dtype)
    if h and w:
        spans = [(t, problem.landing(0, t // kw), problem.landing(1, t % kw)) for t in range(kh * kw)]
        weights = weight.reshape(g, cig, cog, kh * kw)
        channel_block, tap_block = _blocks(problem, h * w)
        for n in range(problem.batch):
            pixels = x[n, :, rows, cols].reshape(g, cig, h * w)
            for c0 in range(0, cog, channel_block):
                c1 = min(cog, c0 + channel_block)
                out = y[n].reshape(g, cog, *problem.out_size)[:, c0:c1]
                for t0 in range(0, kh * kw, tap_block):
                    t1 = min(kh * kw, t0 + tap_block)
                    # (G, block·taps, Ci_g): the transposed weight of the block, the GEMM's left operand.
                    left = weights[:, :, c0:c1, t0:t1].transpose(0, 2, 3, 1).reshape(g, -1, cig)
                    columns = np.matmul(left, pixels).reshape(g, c1 - c0, t1 - t0, h, w)
                    for t, row, col in spans[t0:t1]:
                        if row is None or col is None:
                            continue
                        (in_rows, out_rows), (in_cols, out_cols) = row, col
                        src = columns[
                            :,
                            :,
                            t - t0,
                            in_rows.start - rows.start : in_rows.stop - rows.start,
                            in_cols.start - cols.start : in_cols.stop - cols.start,
                        ]
                        out[:, :, out_rows, out_cols] += src
                    columns = src = None  # freed before the next block's buffer is allocated, not after
    if bias is not None:
        y += bias[None, :, None, None]
    return y


register(
    Backend(
        name="col2im",
        description="GEMM into a column buffer (C_out·kH·kW × H·W per image), then col2im accumulation",
        run=gemm_col2im,
    )
)
