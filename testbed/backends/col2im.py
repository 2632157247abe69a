"""``col2im``: one GEMM into a column buffer, then col2im accumulation, for every spatial rank.

The Caffe / PyTorch ``slow_conv_transpose2d`` / ``slow_conv_transpose3d`` design (col2im in 2-D, col2vol in 3-D):
per image and group, with ``k = (k_1, ..., k_r)`` a kernel tap and ``i = (i_1, ..., i_r)`` an input pixel over
the ``r`` spatial axes,

    columns[(co, k), i] = Σ_ci W[ci, co, k] · x[ci, i]

(a BLAS GEMM ``(C_out·Π k_a × C_in) · (C_in × Π n_a)``), then every column row ``(co, k)`` is added into the
output at ``o_a = i_a·s_a + k_a·d_a - p_a`` on each axis ``a``. In 2-D that is ``(ih·s + kh·d - p, iw·s + kw·d -
p)``; 1-D has one axis, 3-D three (the vol2col/col2vol of PyTorch's 3-D path).

Resources follow the work: the columns cover only the input pixels that reach the output
(:meth:`Problem.landing_inputs`, per axis), each tap adds only the pixels that land (:meth:`Problem.landing`, per
axis) straight into the output (no uncropped canvas), and when the buffer ``C_out·Π k_a·Π n_a`` would exceed
:attr:`Problem.workspace_limit` it is computed a block of output channels (then of taps) at a time; the
smallest block, one channel and one tap, is one input image.
"""

import itertools
import math

import numpy as np

from ..registry import Backend, register


def _blocks(problem, pixels):
    """``(channel block, tap block)`` sizes whose column buffer and weight block (all groups) fit the workspace
    limit beside one image's input pixels (copied when padding crops them)."""
    taps = math.prod(problem.kernel_size)
    per_channel_tap = problem.groups * (pixels + problem.in_per_group) * problem.dtype.itemsize
    budget = problem.workspace_limit - problem.in_channels * pixels * problem.dtype.itemsize
    fit = max(1, budget // per_channel_tap)  # channel·tap products that fit
    if fit >= taps:
        return min(problem.out_per_group, fit // taps), taps
    return 1, fit


def _tap_windows(problem, reach):
    """Per kernel tap (row-major over the spatial axes, the order of the weight's trailing axes): ``(sources,
    outputs)``, per spatial axis the slice of the column buffer's pixels (those of ``reach``) that lands and the
    slice of the output it lands on; None when the tap lands nowhere on some axis."""
    per_axis = [[problem.landing(axis, k) for k in range(size)] for axis, size in enumerate(problem.kernel_size)]
    windows: list[tuple[tuple[slice, ...], tuple[slice, ...]] | None] = []
    for spans in itertools.product(*per_axis):
        if any(span is None for span in spans):
            windows.append(None)
            continue
        sources = tuple(
            slice(inputs.start - near.start, inputs.stop - near.start) for (inputs, _), near in zip(spans, reach)
        )
        windows.append((sources, tuple(outputs for _, outputs in spans)))
    return windows


def gemm_col2im(x, weight, bias, problem):
    g, rank = problem.groups, problem.rank
    cig, cog = problem.in_per_group, problem.out_per_group
    reach = tuple(problem.landing_inputs(axis) for axis in range(rank))
    extent = tuple(near.stop - near.start for near in reach)
    taps = math.prod(problem.kernel_size)
    pixels_count = math.prod(extent)
    y = np.zeros(problem.output_shape, dtype=problem.dtype)
    if pixels_count:
        windows = _tap_windows(problem, reach)
        weights = weight.reshape(g, cig, cog, taps)
        channel_block, tap_block = _blocks(problem, pixels_count)
        every = (slice(None), slice(None))
        every_channel = (slice(None), *reach)  # of one image: the pixels that reach the output
        for n in range(problem.batch):
            pixels = x[n][every_channel].reshape(g, cig, pixels_count)
            for c0 in range(0, cog, channel_block):
                c1 = min(cog, c0 + channel_block)
                out = y[n].reshape(g, cog, *problem.out_size)[:, c0:c1]
                for t0 in range(0, taps, tap_block):
                    t1 = min(taps, t0 + tap_block)
                    # (G, block·taps, Ci_g): the transposed weight of the block, the GEMM's left operand.
                    left = weights[:, :, c0:c1, t0:t1].transpose(0, 2, 3, 1).reshape(g, -1, cig)
                    columns = np.matmul(left, pixels).reshape(g, c1 - c0, t1 - t0, *extent)
                    for t, window in enumerate(windows[t0:t1]):
                        if window is None:
                            continue
                        sources, outputs = window
                        src_at, out_at = (*every, t, *sources), (*every, *outputs)  # every group and channel
                        src = columns[src_at]
                        out[out_at] += src
                    columns = src = None  # freed before the next block's buffer is allocated, not after
    if bias is not None:
        y += bias.reshape(-1, *(1,) * rank)
    return y


# ---- backward: im2col of the output gradient, then GEMMs -------------------------------------------------------


def _output_columns(grad_output_image, problem, t0, t1):
    """im2col of one image's output gradient for taps ``t0 .. t1`` (flattened kernel order), every spatial rank:
    ``columns[g, co, t, i] = grad_output[g·Co + co, i·s - p + k_t·d]`` at every input pixel ``i`` (flattened),
    0 where tap ``k_t`` of pixel ``i`` falls outside the output. Shape ``(G, Co_g, t1 - t0, prod(in_size))``."""
    g, cog = problem.groups, problem.out_per_group
    kernel = problem.kernel_size
    columns = np.zeros((g, cog, t1 - t0, *problem.in_size), dtype=problem.dtype)
    planes = grad_output_image.reshape(g, cog, *problem.out_size)
    for t in range(t0, t1):
        taps = np.unravel_index(t, kernel)
        landed = [problem.landing(axis, int(k)) for axis, k in enumerate(taps)]
        if any(span is None for span in landed):
            continue
        into = (slice(None), slice(None), t - t0, *(span[0] for span in landed))
        from_ = (slice(None), slice(None), *(span[1] for span in landed))
        columns[into] = planes[from_]
    return columns.reshape(g, cog, t1 - t0, -1)


def _tap_block(problem):
    """Taps whose output-gradient columns (``C_out·taps·prod(in_size)``) fit :attr:`Problem.workspace_limit`
    beside one image's gradient; at least one."""
    per_tap = problem.out_channels * math.prod(problem.in_size) * problem.dtype.itemsize
    budget = problem.workspace_limit - problem.in_channels * math.prod(problem.in_size) * problem.dtype.itemsize
    return max(1, min(math.prod(problem.kernel_size), budget // per_tap))


def im2col_data_gradient(grad_output, weight, problem):
    """``grad_input[n, g] = W_gᵀ · columns(grad_output[n, g])``: per image and group a GEMM
    ``(C_in/G × C_out/G·prod(k)) · (C_out/G·prod(k) × prod(in_size))`` against the im2col of the output gradient (the
    forward's col2im read backwards: Caffe's ``Deconvolution`` backward), a block of taps at a time."""
    g, cig, cog = problem.groups, problem.in_per_group, problem.out_per_group
    taps, pixels = math.prod(problem.kernel_size), math.prod(problem.in_size)
    weights = weight.reshape(g, cig, cog, taps)
    grad_input = np.zeros((problem.batch, g, cig, pixels), dtype=problem.dtype)
    block = _tap_block(problem)
    for n in range(problem.batch):
        for t0 in range(0, taps, block):
            t1 = min(taps, t0 + block)
            columns = _output_columns(grad_output[n], problem, t0, t1).reshape(g, -1, pixels)
            left = weights[:, :, :, t0:t1].reshape(g, cig, -1)  # (G, Ci_g, Co_g·taps)
            grad_input[n] += np.matmul(left, columns)
            columns = None  # freed before the next block's buffer is allocated
    return grad_input.reshape(problem.input_shape)


def im2col_weight_gradient(grad_output, x, problem):
    """``grad_weight_g += x[n, g] · columns(grad_output[n, g])ᵀ``: per image and group a GEMM
    ``(C_in/G × prod(in_size)) · (prod(in_size) × C_out/G·prod(k))`` reducing over the pixels, against the same
    im2col as the data gradient (PyTorch's ``slow_conv_transpose2d_acc_grad_parameters``), a block of taps at a
    time."""
    g, cig, cog = problem.groups, problem.in_per_group, problem.out_per_group
    taps, pixels = math.prod(problem.kernel_size), math.prod(problem.in_size)
    grad_weight = np.zeros((g, cig, cog, taps), dtype=problem.dtype)
    block = _tap_block(problem)
    for n in range(problem.batch):
        image = x[n].reshape(g, cig, pixels)
        for t0 in range(0, taps, block):
            t1 = min(taps, t0 + block)
            columns = _output_columns(grad_output[n], problem, t0, t1)  # (G, Co_g, taps, pixels)
            product = np.matmul(image, columns.reshape(g, -1, pixels).transpose(0, 2, 1))  # (G, Ci_g, Co_g·taps)
            grad_weight[:, :, :, t0:t1] += product.reshape(g, cig, cog, t1 - t0)
            columns = product = None
    return grad_weight.reshape(problem.weight_shape)


register(
    Backend(
        name="col2im",
        description="GEMM into a column buffer (C_out·Πk × Πn per image), then col2im accumulation (col2vol in 3-D)",
        run=gemm_col2im,
        ranks=(1, 2, 3),
        backward_data=im2col_data_gradient,
        backward_weight=im2col_weight_gradient,
    )
)
