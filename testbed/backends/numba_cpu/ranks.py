"""How ``numba_cpu`` computes 1-D and 3-D problems with its 2-D paths (and one 3-D kernel).

**1-D is 2-D with one row** (exact, no copy): an ``(N, C, L)`` input is the ``(N, C, 1, L)`` view (``NLC``:
``(N, 1, L, C)``), the ``(C_in, C_out/G, k)`` weight the ``(C_in, C_out/G, 1, k)`` view, and the problem the 2-D one
with ``in_size (1, L)``, ``kernel (1, k)``, ``stride (1, s)``, ``padding (0, p)``, ``output_padding (0, op)``,
``dilation (1, d)`` (:func:`as_2d`): the same (pixel, tap) products, summed in the same order, so every 2-D path
computes it as it computes a 2-D problem. Long sequences with few output channels get their parallelism from
``blocked_direct``'s column blocks (a single row has no other).

**3-D with stride == kernel** (the nnU-Net up-convolution) runs ``nonoverlap_direct``'s kernels natively: they
address their outputs through ``(d, h, w)`` (a 2-D problem is the depth-1 case), see that module.

**Every other 3-D problem is a sum over depth taps of 2-D problems** (:func:`depth_taps`): with ``od = id·s_d -
p_d + kd·d_d``,

    y[n, :, od] = bias + Σ_{kd ascending} conv_transpose2d(x[n, :, id], W[:, :, kd])   (the 2-D parameters)

over the ``(id, kd)`` pairs that land on ``od`` (:meth:`Problem.landing`). The input's depth slices become a batch
of 2-D images (copied depth-major a chunk at a time), each depth tap one 2-D call of the 2-D path on as many slices
at a time as fit ``column_buffer_bytes`` and a quarter of :attr:`Problem.workspace_limit` (input copy and result),
added into the output (zeroed first) in ascending ``kd``; the bias last. Correct for any configuration (only the
products of the scatter definition are formed, so NaN/inf reach exactly the outputs the definition says; the sums
run in a fixed order, so results are bitwise repeatable), but it reads and writes the output once per depth tap: a
fallback, not a fast path.
"""

from __future__ import annotations

import numpy as np

from ... import workspace

__all__ = ["as_2d", "depth_slice_problem", "depth_taps", "views_2d"]


def as_2d(problem):
    """The 2-D problem of a 1-D one: one row, the sizes and parameters of the one axis along the width."""
    cl = problem.channels_last
    return problem.with_(
        in_size=(1, *problem.in_size),
        kernel_size=(1, *problem.kernel_size),
        stride=(1, *problem.stride),
        padding=(0, *problem.padding),
        output_padding=(0, *problem.output_padding),
        dilation=(1, *problem.dilation),
        layout="NHWC" if cl else "NCHW",
        rank=2,
    )


def views_2d(x, weight, out, problem):
    """The 1-D call's arrays as :func:`as_2d`'s problem takes them: views with a height of 1 (``out`` may be None)."""
    row = (slice(None), None) if problem.channels_last else (slice(None), slice(None), None)
    return x[row], weight[:, :, None], None if out is None else out[row]


def depth_slice_problem(problem, images=None):
    """The 2-D problem of one depth tap of a 3-D ``problem`` (see the module docstring): ``images`` input depth slices
    (default all ``N·D``), the height and width parameters, no bias."""
    return problem.with_(
        batch=problem.batch * problem.in_size[0] if images is None else images,
        in_size=problem.in_size[1:],
        kernel_size=problem.kernel_size[1:],
        stride=problem.stride[1:],
        padding=problem.padding[1:],
        output_padding=problem.output_padding[1:],
        dilation=problem.dilation[1:],
        layout="NHWC" if problem.channels_last else "NCHW",
        rank=2,
        has_bias=False,
    )


def depth_taps(run_2d, x, weight, bias, problem, out, *, buffer_bytes):
    """A 3-D ``problem`` as a sum over its depth taps of 2-D problems (the module docstring), ``run_2d(x, weight,
    None, problem_2d)`` computing each; at most ``buffer_bytes`` of 2-D results at a time (at least one depth
    slice's)."""
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    y[...] = 0
    depth_axis = 1 if problem.channels_last else 2
    y_by_depth = np.moveaxis(y, depth_axis, 0)  # (D_out, N, ...), a view
    if problem.batch:
        slices = np.moveaxis(x, depth_axis, 0)  # (D, N, ...): depth slices as 2-D images (a view)
        sub = depth_slice_problem(problem, problem.batch)
        per_slice = max(1, (int(np.prod(sub.output_shape)) + int(np.prod(sub.input_shape))) * problem.dtype.itemsize)
        # a chunk's input copy and 2-D result together within the buffer and a quarter of the workspace limit (the
        # 2-D path's own packing takes its share of the rest)
        step = max(1, min(buffer_bytes, problem.workspace_limit // 4) // per_slice)
        for tap in range(problem.kernel_size[0]):
            span = problem.landing(0, tap)
            if span is None:
                continue
            inputs, outputs = span
            tap_weight = np.ascontiguousarray(weight[:, :, tap])
            for i0 in range(inputs.start, inputs.stop, step):
                i1 = min(inputs.stop, i0 + step)
                chunk = np.ascontiguousarray(slices[i0:i1])
                images = chunk.reshape((i1 - i0) * problem.batch, *slices.shape[2:])
                z = run_2d(images, tap_weight, None, sub.with_(batch=(i1 - i0) * problem.batch))
                o0 = outputs.start + (i0 - inputs.start) * outputs.step
                target = y_by_depth[o0 : o0 + (i1 - i0 - 1) * outputs.step + 1 : outputs.step]
                target += z.reshape(target.shape)
    if bias is not None:
        y += bias if problem.channels_last else bias.reshape(-1, 1, 1, 1)
    return y
