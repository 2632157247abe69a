"""``numba_cpu``'s data gradient: the strided convolution of the output gradient with the kernel, every rank.

    grad_input[n, ci, i] = Σ_{co in ci's group} Σ_k grad_output[n, co, i·s - p + k·d] · W[ci, co, k]

over the taps ``k`` whose position lands inside the output (every rank through :func:`.backward_columns.lift`).

**gemm** (the default): per image and chunk of input pixels, the columns of the output gradient
(:mod:`.backward_columns`: the pixel unshuffle when stride == kernel) and per group one GEMM

    channels first:  grad_input[n, g] (C_in/G × pixels) = W_g (C_in/G × K) · columns_g (K × pixels)
    channels last:   grad_input[n, :, g] (pixels × C_in/G) = columns_g (pixels × K) · Wᵀ_g (K × C_in/G)

with ``K = C_out/G·Πk``

(``Wᵀ_g``, the weight's taps and output channels swapped, is one small copy). The GEMM is cut into blocks of
``block_rows × block_pixels`` outputs (:func:`block_plan`, from the problem alone, at most 512 × 512), handed out
to Numba's threads (:mod:`.tasks`); the thread that takes a block computes it with one single-threaded BLAS call
over the whole reduction (``C_out/G·Πk``). Every output is owned by one block and summed inside one BLAS call
whose sizes do not depend on the thread count, so results are bitwise repeatable on any number of threads.

**direct** (``C_in/G·C_out/G`` below the row's ``direct_max_channel_product``: depthwise, tiny channels, where a
GEMM per group is all overhead): one thread per ``(n, ci)`` plane sums the definition's products in ascending
``(co, k)`` from +0.0; channels last is transposed to channels first and back. No filler zero is multiplied, so
NaN/inf reach exactly the outputs the definition says (the gemm path, like PyTorch's, multiplies the weight by
the columns' zeros).
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

#: The data gradient's algorithms (see the module docstring).
PATHS = ("gemm", "direct")


def choose_path(problem, blocking=None) -> str:
    """``"direct"`` for channel products below the row's ``direct_max_channel_product`` or sizes past BLAS's
    32-bit integers, else ``"gemm"``."""
    b = _blocking.blocking() if blocking is None else blocking
    if problem.in_per_group * problem.out_per_group < b.direct_max_channel_product or not fits_blas(problem):
        return "direct"
    return "gemm"


def block_plan(problem, chunk):
    """``(rows, pixels)`` of one GEMM block: input channels of a group × input pixels of a ``chunk``, each at most
    512 in blocks as equal as can be (one thread, unet1-unet4: 512 × 512 blocks 35-39 ms where 256 × 256 took
    38-60 and one ``numpy.matmul`` 47-52, AMD EPYC Zen 3 under load 6). Depends on the problem only, so every
    thread count computes the same blocks."""
    return balanced_block(problem.in_per_group, 512), balanced_block(chunk, 512)


@parallel_kernel
def _gemm_first(weight_2d, columns, grad_input, n, p0, groups, block_rows, block_pixels, workers):
    """Channels first: ``grad_input[n, g·Ci_g + m, p0 + q] = Σ_j weight_2d[g·Ci_g + m, j] · columns[g·K + j, q]``
    (``K = C_out/G·Πk``) by blocks of ``block_rows × block_pixels``, one single-threaded GEMM each."""
    in_channels, reduction = weight_2d.shape
    per_group, chunk = in_channels // groups, columns.shape[1]
    row_blocks, pixel_blocks = (per_group - 1) // block_rows + 1, (chunk - 1) // block_pixels + 1
    tasks, counter = groups * row_blocks * pixel_blocks, np.zeros(1, np.int64)
    for _worker in prange(workers):
        task = next_task(counter)
        while task < tasks:
            pb, rb, g = task % pixel_blocks, (task // pixel_blocks) % row_blocks, task // (pixel_blocks * row_blocks)
            m0, m1 = g * per_group + rb * block_rows, g * per_group + min(per_group, (rb + 1) * block_rows)
            q0, q1 = pb * block_pixels, min(chunk, (pb + 1) * block_pixels)
            gemm(
                weight_2d[m0:m1],
                columns[g * reduction : (g + 1) * reduction, q0:q1],
                grad_input[n, m0:m1, p0 + q0 : p0 + q1],
                False,
                False,
            )
            task = next_task(counter)


@parallel_kernel
def _gemm_last(weight_t, columns, grad_input, n, p0, groups, block_rows, block_pixels, workers):
    """Channels last: ``grad_input[n, p0 + q, g·Ci_g + m] = Σ_j columns[q, g·K + j] · weight_t[g, j, m]`` by blocks
    of ``block_pixels × block_rows``, one single-threaded GEMM each."""
    reduction, per_group = weight_t.shape[1], weight_t.shape[2]
    chunk = columns.shape[0]
    row_blocks, pixel_blocks = (per_group - 1) // block_rows + 1, (chunk - 1) // block_pixels + 1
    tasks, counter = groups * row_blocks * pixel_blocks, np.zeros(1, np.int64)
    for _worker in prange(workers):
        task = next_task(counter)
        while task < tasks:
            rb, pb, g = task % row_blocks, (task // row_blocks) % pixel_blocks, task // (pixel_blocks * row_blocks)
            m0, m1 = rb * block_rows, min(per_group, (rb + 1) * block_rows)
            q0, q1 = pb * block_pixels, min(chunk, (pb + 1) * block_pixels)
            gemm(
                columns[q0:q1, g * reduction : (g + 1) * reduction],
                weight_t[g, :, m0:m1],
                grad_input[n, p0 + q0 : p0 + q1, g * per_group + m0 : g * per_group + m1],
                False,
                False,
            )
            task = next_task(counter)


@parallel_kernel
def _direct(grad_output, weight, grad_input, groups, stride, padding, dilation):
    """Channels first, 3-D: one ``(n, ci)`` plane per iteration, each output the definition's sum in ascending
    ``(co, k)`` from +0.0."""
    batch, in_channels, in_d, in_h, in_w = grad_input.shape
    out_d, out_h, out_w = grad_output.shape[2:]
    per_group_out, k_d, k_h, k_w = weight.shape[1:]
    per_group_in = in_channels // groups
    s_d, s_h, s_w = stride
    p_d, p_h, p_w = padding
    d_d, d_h, d_w = dilation
    zero = np.zeros(1, dtype=grad_input.dtype)[0]
    for plane in prange(batch * in_channels):
        n, ci = plane // in_channels, plane % in_channels
        co0 = (ci // per_group_in) * per_group_out
        for i in range(in_d):
            for j in range(in_h):
                for u in range(in_w):
                    total = zero
                    for c in range(per_group_out):
                        for a in range(k_d):
                            od = i * s_d - p_d + a * d_d
                            if od < 0 or od >= out_d:
                                continue
                            for b in range(k_h):
                                oh = j * s_h - p_h + b * d_h
                                if oh < 0 or oh >= out_h:
                                    continue
                                for e in range(k_w):
                                    ow = u * s_w - p_w + e * d_w
                                    if 0 <= ow < out_w:
                                        total += grad_output[n, co0 + c, od, oh, ow] * weight[ci, c, a, b, e]
                    grad_input[n, ci, i, j, u] = total


def _run_direct(grad_output, weight, problem):
    in_3d, out_3d, kernel, stride, padding, dilation = parameters_3d(problem)
    if problem.channels_last:
        grad_output = np.ascontiguousarray(np.moveaxis(grad_output, -1, 1))
    grad_input = np.empty((problem.batch, problem.in_channels, *in_3d), dtype=problem.dtype)
    _direct(
        lift(grad_output, out_3d, False),
        lift(weight, kernel, False),
        grad_input,
        problem.groups,
        stride,
        padding,
        dilation,
    )
    grad_input = grad_input.reshape(problem.batch, problem.in_channels, *problem.in_size)
    if problem.channels_last:
        return np.ascontiguousarray(np.moveaxis(grad_input, 1, -1))
    return grad_input


def _run_gemm(grad_output, weight, problem, blocking):
    in_3d, out_3d, kernel, stride, padding, dilation = parameters_3d(problem)
    g, cig, cog = problem.groups, problem.in_per_group, problem.out_per_group
    taps, pixels = int(np.prod(kernel)), int(np.prod(in_3d))
    chunk = pixel_chunk(problem, blocking)
    rows, block_pixels = block_plan(problem, chunk)
    workers = numba.get_num_threads()
    grad_input = workspace.empty_result(problem.input_shape, problem.dtype)
    geometry = (kernel, stride, padding, dilation, in_3d[1], in_3d[2])
    with single_threaded_blas():
        if problem.channels_last:
            go = lift(grad_output, out_3d, True)
            # Wᵀ per group: (G, Πk·Co_g, Ci_g), the columns' (k, co) order
            weight_t = np.ascontiguousarray(weight.reshape(g, cig, cog, taps).transpose(0, 3, 2, 1)).reshape(
                g, taps * cog, cig
            )
            flat = grad_input.reshape(problem.batch, pixels, problem.in_channels)
            buffer = workspace.scratch(
                "numba_cpu.backward_columns", (chunk, problem.out_channels * taps), problem.dtype
            )
            for n in range(problem.batch):
                for p0 in range(0, pixels, chunk):
                    columns = buffer[: min(chunk, pixels - p0)]
                    pack_last(go, n, p0, columns, g, *geometry)
                    _gemm_last(weight_t, columns, flat, n, p0, g, rows, block_pixels, workers)
        else:
            go = lift(grad_output, out_3d, False)
            weight_2d = weight.reshape(problem.in_channels, cog * taps)
            flat = grad_input.reshape(problem.batch, problem.in_channels, pixels)
            buffer = workspace.scratch(
                "numba_cpu.backward_columns", (problem.out_channels * taps, chunk), problem.dtype
            )
            for n in range(problem.batch):
                for p0 in range(0, pixels, chunk):
                    width = min(chunk, pixels - p0)
                    columns = buffer.reshape(-1)[: problem.out_channels * taps * width].reshape(-1, width)
                    pack_first(go, n, p0, columns, *geometry)
                    _gemm_first(weight_2d, columns, flat, n, p0, g, rows, block_pixels, workers)
    return grad_input


def run(grad_output, weight, problem, *, path=None, blocking=None):
    """The data gradient of ``problem`` (the :class:`~testbed.registry.Backend` ``backward_data`` contract: batched
    C-contiguous ``grad_output`` in ``problem.layout``, either family); ``path`` (one of :data:`PATHS`) forces an
    algorithm, ``blocking`` a :mod:`.blocking` row (default this process's)."""
    blocking = _blocking.blocking() if blocking is None else blocking
    path = choose_path(problem, blocking) if path is None else path
    if path not in PATHS:
        raise ValueError(f"path: expected one of {', '.join(PATHS)}, got {path!r}")
    if path == "direct":
        return _run_direct(grad_output, weight, problem)
    return _run_gemm(grad_output, weight, problem, blocking)
