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

computed as one GEMM per tap over the channels in the layout the arrays come in: ``(N·Π m_a × C_in) · (C_in ×
C_out)`` channels last, ``(C_out × C_in) · (C_in × Π m_a)`` per image channels first (per group, both); nothing is
transposed but each tap's weight. The phases are then interleaved (depth-to-space: ``y[φ_a::s_a, ...] = Y_φ``).
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


def _tap_gemm_channels_last(pixels, tap_weight):
    """``Σ_i pixels[n, *m, g, i] · tap_weight[g, i, o]`` → ``(n, *m, g, o)``: one BLAS GEMM per group."""
    g, cig, cog = tap_weight.shape
    if cig == 1:  # depthwise: no sum to make
        return pixels * tap_weight[:, 0]
    flat = pixels.reshape(-1, g, cig)  # a view unless the tap's window is strided
    if g == 1:
        return (flat[:, 0] @ tap_weight[0]).reshape(*pixels.shape[:-2], 1, cog)
    per_group = np.matmul(flat.transpose(1, 0, 2), tap_weight)  # (G, N·Π m_a, Co_g)
    return per_group.transpose(1, 0, 2).reshape(*pixels.shape[:-2], g, cog)


def _tap_gemm_channels_first(pixels, tap_weight):
    """``Σ_i tap_weight[g, i, o] · pixels[n, g, i, *m]`` → ``(n, g, o, *m)``: one BLAS GEMM per image and group
    (the weight transposed: a view BLAS takes as it is)."""
    g, cig, cog = tap_weight.shape
    n, m = pixels.shape[0], pixels.shape[3:]
    if cig == 1:  # depthwise: no sum to make
        return pixels * tap_weight.reshape(g, cog, *(1,) * len(m))
    flat = pixels.reshape(n, g, cig, -1)  # a view unless the tap's window is strided
    return np.matmul(tap_weight.transpose(0, 2, 1), flat).reshape(n, g, cog, *m)


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
    taps_first = tuple(range(3, 3 + rank))
    every = slice(None)
    # Both layouts as they come: the channels (G, C_g) after the spatial axes or before them, the result written in
    # place (no transposition of the input or the output). Each tap's weight (*kernel, G, Ci_g, Co_g) is
    # contiguous: NumPy's matmul calls BLAS only for operands with a unit stride along one of their matrix axes,
    # and a tap sliced out of (C_in, C_out, *kernel) has a stride of Π k_a along both (3× slower for 16 taps).
    w_taps = np.ascontiguousarray(weight.reshape(g, cig, cog, *problem.kernel_size).transpose(*taps_first, 0, 1, 2))
    y = np.zeros(problem.output_shape, dtype=problem.dtype)
    lead: tuple[slice, ...]
    if problem.channels_last:
        xs, ys = x.reshape(n, *problem.in_size, g, cig), y.reshape(n, *problem.out_size, g, cog)
        tap_gemm, lead, phase_shape = _tap_gemm_channels_last, (every,), lambda counts: (n, *counts, g, cog)
    else:
        xs, ys = x.reshape(n, g, cig, *problem.in_size), y.reshape(n, g, cog, *problem.out_size)
        tap_gemm, lead, phase_shape = _tap_gemm_channels_first, (every,) * 3, lambda counts: (n, g, cog, *counts)
    for phase_axes in itertools.product(*(_axis_phases(problem, axis) for axis in range(rank))):
        interleaved, counts, axis_taps = zip(*phase_axes)  # per axis: outputs, count, taps of this phase
        # A dense phase, copied into its strided place once: adding the taps straight into the strided view of
        # the output measured 5-15 % slower (1-D, 2-D and 3-D, one thread).
        phase = np.zeros(phase_shape(counts), dtype=problem.dtype)
        for taps in itertools.product(*axis_taps):  # one (k, phase rows, input rows) per axis
            ks, rows, inputs = zip(*taps)
            rows_at, inputs_at = (*lead, *rows), (*lead, *inputs)
            phase[rows_at] += tap_gemm(xs[inputs_at], w_taps[ks])
        phase_at = (*lead, *interleaved)
        ys[phase_at] = phase
    if bias is not None:
        y += bias if problem.channels_last else bias.reshape(-1, *(1,) * rank)
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
