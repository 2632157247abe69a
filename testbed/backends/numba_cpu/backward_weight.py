"""``numba_cpu``'s weight gradient: the correlation of the input with the output gradient, every rank.

    grad_W[ci, co, k] = Σ_n Σ_i x[n, ci, i] · grad_output[n, co, i·s - p + k·d]

over the input pixels ``i`` whose tap ``k`` lands inside the output (every rank through
:func:`.backward_columns.lift`).

**gemm** (the default): per image and chunk of input pixels, the columns of the output gradient
(:mod:`.backward_columns`) and per group the GEMM reducing over the chunk's pixels

    channels first:  grad_W_g (C_in/G × C_out/G·Πk) += x[n, g] (C_in/G × pixels) · columns_gᵀ (pixels × C_out/G·Πk)
    channels last:   grad_W_g (C_in/G × Πk·C_out/G) += x[n, :, g]ᵀ (C_in/G × pixels) · columns_g (pixels × Πk·C_out/G)

(channels last the result's taps and channels are swapped back at the end, one copy of the weight's size).
The *outputs* are cut into blocks of ``block_rows × block_columns`` weights (:func:`block_plan`, from the problem
alone), handed out to Numba's threads (:mod:`.tasks`); the thread that takes a block reduces it over the whole
chunk in one single-threaded BLAS call (the first chunk of the first image writes it, the later ones are
computed into the thread's buffer and added). So no weight is a sum of per-thread partials: each is the sum,
in ascending (image, chunk) order, of BLAS reductions whose sizes depend on the problem only, and results are
bitwise repeatable on any number of threads and any scheduling. (A GEMM with the pixels as its reduction also
suits the weight gradient's shape: ``C_in × C_out·Πk`` outputs, often more than there are pixels.)

**direct** (``C_in/G·C_out/G`` below the row's ``direct_max_channel_product``: depthwise, tiny channels): one
thread per ``(ci, co)`` pair sums each tap's products over images and pixels in ascending order from +0.0;
channels last is transposed to channels first. Only the definition's products are formed (NaN/inf reach exactly
the weights the definition says; the gemm path multiplies the input by the columns' zeros).
"""

import numba
import numpy as np
from numba import prange

from ... import workspace
from .._blas import gemm, single_threaded_blas
from .._runtime import parallel_kernel
from . import blocking as _blocking
from .backward_columns import balanced_block, fits_blas, lift, pack_first, pack_last, parameters_3d, pixel_chunk
from .tasks import next_task

__all__ = ["PATHS", "block_plan", "choose_path", "run"]

#: The weight gradient's algorithms (see the module docstring).
PATHS = ("gemm", "direct")


def choose_path(problem, blocking=None) -> str:
    """``"direct"`` for channel products below the row's ``direct_max_channel_product`` or sizes past BLAS's
    32-bit integers, else ``"gemm"``."""
    b = _blocking.blocking() if blocking is None else blocking
    if problem.in_per_group * problem.out_per_group < b.direct_max_channel_product or not fits_blas(problem):
        return "direct"
    return "gemm"


def block_plan(problem):
    """``(rows, columns)`` of one block of the weight gradient: input channels × output channels·taps of a group,
    each at most 512 in blocks as equal as can be. Depends on the problem only."""
    reduction = problem.out_per_group * int(np.prod(problem.kernel_size))
    return balanced_block(problem.in_per_group, 512), balanced_block(reduction, 512)


@parallel_kernel
def _gemm(x_2d, columns, grad_weight, n, p0, groups, accumulate, block_rows, block_columns, sums, channels_last):
    """``grad_weight[g·Ci_g + m, j] (+)= Σ_q x(n, g·Ci_g + m, p0 + q) · columns(q, g·K + j)`` by blocks of
    ``block_rows × block_columns`` outputs, one single-threaded GEMM each over the chunk's pixels; ``accumulate``:
    into the worker's row of ``sums``, then added. ``x_2d`` is ``(N, C_in, pixels)`` channels first (columns
    ``(K·G, chunk)``), ``(N, pixels, C_in)`` channels last (columns ``(chunk, G·K)``)."""
    in_channels, reduction = grad_weight.shape
    per_group = in_channels // groups
    chunk = columns.shape[0] if channels_last else columns.shape[1]
    row_blocks, column_blocks = (per_group - 1) // block_rows + 1, (reduction - 1) // block_columns + 1
    tasks, counter = groups * row_blocks * column_blocks, np.zeros(1, np.int64)
    for worker in prange(sums.shape[0]):
        task = next_task(counter)
        while task < tasks:
            cb, rb = task % column_blocks, (task // column_blocks) % row_blocks
            g = task // (column_blocks * row_blocks)
            m0, m1 = g * per_group + rb * block_rows, g * per_group + min(per_group, (rb + 1) * block_rows)
            j0, j1 = cb * block_columns, min(reduction, (cb + 1) * block_columns)
            target = grad_weight[m0:m1, j0:j1]
            into = sums[worker, : (m1 - m0) * (j1 - j0)].reshape((m1 - m0, j1 - j0)) if accumulate else target
            if channels_last:
                gemm(
                    x_2d[n, p0 : p0 + chunk, m0:m1],
                    columns[:, g * reduction + j0 : g * reduction + j1],
                    into,
                    True,
                    False,
                )
            else:
                gemm(
                    x_2d[n, m0:m1, p0 : p0 + chunk], columns[g * reduction + j0 : g * reduction + j1], into, False, True
                )
            if accumulate:
                for r in range(m1 - m0):
                    for c in range(j1 - j0):
                        target[r, c] += into[r, c]
            task = next_task(counter)


@parallel_kernel
def _direct(grad_output, x, grad_weight, groups, stride, padding, dilation):
    """Channels first, 3-D: one ``(ci, c)`` pair per iteration, each tap's weight the sum over images and pixels in
    ascending order from +0.0 of the products that land."""
    batch, in_channels, in_d, in_h, in_w = x.shape
    out_d, out_h, out_w = grad_output.shape[2:]
    per_group_out, k_d, k_h, k_w = grad_weight.shape[1:]
    per_group_in = in_channels // groups
    s_d, s_h, s_w = stride
    p_d, p_h, p_w = padding
    d_d, d_h, d_w = dilation
    zero = np.zeros(1, dtype=grad_weight.dtype)[0]
    for pair in prange(in_channels * per_group_out):
        ci, c = pair // per_group_out, pair % per_group_out
        co = (ci // per_group_in) * per_group_out + c
        for a in range(k_d):
            for b in range(k_h):
                for e in range(k_w):
                    total = zero
                    for n in range(batch):
                        for i in range(in_d):
                            od = i * s_d - p_d + a * d_d
                            if od < 0 or od >= out_d:
                                continue
                            for j in range(in_h):
                                oh = j * s_h - p_h + b * d_h
                                if oh < 0 or oh >= out_h:
                                    continue
                                for u in range(in_w):
                                    ow = u * s_w - p_w + e * d_w
                                    if 0 <= ow < out_w:
                                        total += x[n, ci, i, j, u] * grad_output[n, co, od, oh, ow]
                    grad_weight[ci, c, a, b, e] = total


def _run_direct(grad_output, x, problem):
    in_3d, out_3d, kernel, stride, padding, dilation = parameters_3d(problem)
    if problem.channels_last:
        grad_output = np.ascontiguousarray(np.moveaxis(grad_output, -1, 1))
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    grad_weight = np.empty((problem.in_channels, problem.out_per_group, *kernel), dtype=problem.dtype)
    _direct(
        lift(grad_output, out_3d, False), lift(x, in_3d, False), grad_weight, problem.groups, stride, padding, dilation
    )
    return grad_weight.reshape(problem.weight_shape)


def _run_gemm(grad_output, x, problem, blocking):
    in_3d, out_3d, kernel, stride, padding, dilation = parameters_3d(problem)
    g, cog = problem.groups, problem.out_per_group
    taps, pixels = int(np.prod(kernel)), int(np.prod(in_3d))
    chunk = pixel_chunk(problem, blocking)
    rows, columns_per_block = block_plan(problem)
    sums = workspace.scratch(
        "numba_cpu.backward_sums", (numba.get_num_threads(), rows * columns_per_block), problem.dtype
    )
    grad_weight = np.empty((problem.in_channels, cog * taps), dtype=problem.dtype)
    geometry = (kernel, stride, padding, dilation, in_3d[1], in_3d[2])
    cl = problem.channels_last
    go = lift(grad_output, out_3d, cl)
    x_2d = (
        x.reshape(problem.batch, pixels, problem.in_channels)
        if cl
        else x.reshape(problem.batch, problem.in_channels, pixels)
    )
    shape = (chunk, problem.out_channels * taps) if cl else (problem.out_channels * taps, chunk)
    buffer = workspace.scratch("numba_cpu.backward_columns", shape, problem.dtype)
    with single_threaded_blas():
        for n in range(problem.batch):
            for p0 in range(0, pixels, chunk):
                width = min(chunk, pixels - p0)
                if cl:
                    columns = buffer[:width]
                    pack_last(go, n, p0, columns, g, *geometry)
                else:
                    columns = buffer.reshape(-1)[: problem.out_channels * taps * width].reshape(-1, width)
                    pack_first(go, n, p0, columns, *geometry)
                accumulate = n > 0 or p0 > 0
                _gemm(x_2d, columns, grad_weight, n, p0, g, accumulate, rows, columns_per_block, sums, cl)
    if cl:  # columns (k, co) back to the weight's (co, k)
        grad_weight = np.ascontiguousarray(grad_weight.reshape(problem.in_channels, taps, cog).transpose(0, 2, 1))
    return grad_weight.reshape(problem.weight_shape)


def run(grad_output, x, problem, *, path=None, blocking=None):
    """The weight gradient of ``problem`` (the :class:`~testbed.registry.Backend` ``backward_weight`` contract:
    batched C-contiguous ``grad_output`` and ``x`` in ``problem.layout``, either family); ``path`` (one of
    :data:`PATHS`) forces an algorithm, ``blocking`` a :mod:`.blocking` row (default this process's)."""
    blocking = _blocking.blocking() if blocking is None else blocking
    path = choose_path(problem, blocking) if path is None else path
    if path not in PATHS:
        raise ValueError(f"path: expected one of {', '.join(PATHS)}, got {path!r}")
    if path == "direct":
        return _run_direct(grad_output, x, problem)
    return _run_gemm(grad_output, x, problem, blocking)
