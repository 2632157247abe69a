"""``polyphase``: the sub-pixel / phase decomposition (Shi et al. 2016, "Is the deconvolution layer the same
as a convolutional layer?", arXiv:1609.07009), for every spatial rank.

Along each spatial axis ``a``, output ``o`` receives tap ``k`` iff ``o + p_a - k·d_a ≡ 0 (mod s_a)``, from input
``(o + p_a - k·d_a) / s_a``. Grouping the outputs of each axis by phase ``o = φ_a + s_a·m`` gives ``s_a`` phases,
each with the sub-kernel of the taps with ``k·d_a ≡ φ_a + p_a (mod s_a)`` and a fixed input offset per tap
(:func:`phase_subkernels`). The axes are independent, so the phases of the problem are the product of the
per-axis phases (``Π s_a`` of them: ``s`` in 1-D, ``s_h·s_w`` in 2-D, ``s_d·s_h·s_w`` in 3-D) and the taps of a
phase the product of its per-axis taps. Each phase ``φ = (φ_1, ..., φ_r)`` is a dense stride-1 correlation of
the *undilated* input,

    Y_φ[m] = Σ_{taps k of φ} W[:, :, k]ᵀ · x[m + offset_k]        (m, offset_k: r-tuples)

computed as one GEMM per tap over the channels (channels-last, so every GEMM is ``(N·Π m_a × C_in) · (C_in ×
C_out)``: channels-last layouts are computed as they come; channels first, the input is a transposed view and the
result is transposed back once). The phases are then interleaved (depth-to-space: ``y[φ_a::s_a, ...] = Y_φ``).
No multiplication by inserted zeros and no padding of the input: out-of-range rows are skipped, so NaN/inf reach
exactly the outputs the definition says.
"""

import itertools

import numpy as np

from ..registry import Backend, register


def phase_subkernels(out_len, in_len, kernel, stride, padding, dilation):
    """Per output phase ``ph`` of one axis: ``(ph, rows, taps)`` with ``rows`` the phase's output count and
    ``taps`` a list of ``(k, offset, m_lo, m_hi)``: tap ``k`` adds input ``m + offset`` to phase row ``m`` for
    ``m_lo <= m < m_hi``."""
    phases = []
    for ph in range(min(stride, out_len)):
        rows = len(range(ph, out_len, stride))
        taps = []
        for k in range(kernel):
            shift = ph + padding - k * dilation
            if shift % stride:
                continue
            offset = shift // stride
            m_lo, m_hi = max(0, -offset), min(rows, in_len - offset)
            if m_lo < m_hi:
                taps.append((k, offset, m_lo, m_hi))
        phases.append((ph, rows, taps))
    return phases


def _tap_gemm(pixels, tap_weight):
    """``Σ_i pixels[n, *m, g, i] · tap_weight[g, i, o]`` → ``(n, *m, g, o)``: one BLAS GEMM per group.

    NumPy's matmul calls BLAS only for operands with a unit stride along one of their two matrix axes: a tap's
    window of the channels-first input viewed channels last is a column-major matrix (unit stride along the
    pixels), and ``tap_weight`` must be contiguous. A tap's weight sliced out of ``(C_in, C_out, *kernel)`` has a
    stride of ``Π k_a`` along both axes: 3× slower here for ``(86 × 512) · (512 × 256)`` with a 16-tap kernel.
    Several groups: one batched matmul (BLAS per group; ``np.einsum`` without BLAS measured 7× slower on
    ``64→64, 4 groups, k4 s2``); one input channel per group (depthwise): a broadcast product."""
    g, cig, cog = tap_weight.shape
    if cig == 1:  # no sum to make
        return pixels * tap_weight[:, 0]
    flat = pixels.reshape(-1, g, cig)  # a view unless the window of a tap is strided
    if g == 1:
        return (flat[:, 0] @ tap_weight[0]).reshape(*pixels.shape[:-2], 1, cog)
    per_group = np.matmul(flat.transpose(1, 0, 2), tap_weight)  # (G, N·Π m_a, Co_g)
    return per_group.transpose(1, 0, 2).reshape(*pixels.shape[:-2], g, cog)


def _axis_phases(problem, axis):
    """:func:`phase_subkernels` of spatial ``axis`` as slices: per phase ``(outputs, rows, taps)``, the step-``s``
    slice of the output it fills, its output count, and per tap ``(k, phase rows, input rows)``."""
    sizes = (problem.out_size, problem.in_size, problem.kernel_size, problem.stride, problem.padding, problem.dilation)
    stride = problem.stride[axis]
    return [
        (
            slice(ph, None, stride),
            rows,
            [(k, slice(lo, hi), slice(lo + offset, hi + offset)) for k, offset, lo, hi in taps],
        )
        for ph, rows, taps in phase_subkernels(*(size[axis] for size in sizes))
    ]


def polyphase_gemm(x, weight, bias, problem):
    n, g, rank = problem.batch, problem.groups, problem.rank
    cig, cog = problem.in_per_group, problem.out_per_group
    # (N, *in_size, G, Ci_g): channels last, so each tap is one GEMM over the channels. Channels first, a view
    # whose full windows reshape to a column-major matrix, which BLAS takes as it is (no copy).
    if problem.channels_last:
        x_cl = x.reshape(n, *problem.in_size, g, cig)
    else:
        x_cl = x.reshape(n, g, cig, *problem.in_size).transpose(0, *range(3, 3 + rank), 1, 2)
    # (*kernel, G, Ci_g, Co_g): each tap's weight contiguous, as BLAS needs (see _tap_gemm)
    taps_first = (*range(3, 3 + rank), 0, 1, 2)
    w_taps = np.ascontiguousarray(weight.reshape(g, cig, cog, *problem.kernel_size).transpose(taps_first))
    y_cl = np.zeros((n, *problem.out_size, g, cog), dtype=problem.dtype)
    every_image = slice(None)
    for phase_axes in itertools.product(*(_axis_phases(problem, axis) for axis in range(rank))):
        interleaved, counts, axis_taps = zip(*phase_axes)  # per axis: outputs, count, taps of this phase
        # A dense phase, copied into its strided place once: adding the taps straight into the strided view of
        # y_cl measured 5-15 % slower (1-D, 2-D and 3-D, one thread).
        phase = np.zeros((n, *counts, g, cog), dtype=problem.dtype)
        for taps in itertools.product(*axis_taps):  # one (k, phase rows, input rows) per axis
            ks, rows, inputs = zip(*taps)
            rows_at, inputs_at = (every_image, *rows), (every_image, *inputs)
            phase[rows_at] += _tap_gemm(x_cl[inputs_at], w_taps[ks])
        phase_at = (every_image, *interleaved)
        y_cl[phase_at] = phase
    if problem.channels_last:
        y = y_cl.reshape(problem.output_shape)
        if bias is not None:
            y += bias
        return y
    y = np.ascontiguousarray(y_cl.reshape(n, *problem.out_size, -1).transpose(0, 1 + rank, *range(1, 1 + rank)))
    if bias is not None:
        y += bias.reshape(-1, *(1,) * rank)
    return y


register(
    Backend(
        name="polyphase",
        description="sub-pixel decomposition: Π s_a stride-1 phase correlations (one GEMM per tap), interleaved",
        run=polyphase_gemm,
        layouts=("NCHW", "NHWC"),
        ranks=(1, 2, 3),
    )
)
