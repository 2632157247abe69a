"""``polyphase``: the sub-pixel / phase decomposition (Shi et al. 2016, "Is the deconvolution layer the same
as a convolutional layer?", arXiv:1609.07009).

Output row ``o`` receives tap ``kh`` iff ``o + p - kh·d ≡ 0 (mod s)``, from input row
``(o + p - kh·d) / s``. Grouping outputs by phase ``o = ph + s·m`` gives ``s_h·s_w`` phase sub-kernels
(the taps with ``kh·d ≡ ph + p (mod s)``); each phase is a dense stride-1 correlation of the *undilated*
input, ``Y_ph[m] = Σ_taps W[kh]ᵀ · x[m + offset_kh]``, computed as one GEMM per tap over the channels
(channels-last so every GEMM is ``(N·rows·cols × C_in) · (C_in × C_out)``). The phases are then interleaved
(depth-to-space). No multiplication by inserted zeros and no padding of the input: out-of-range rows are
skipped, so NaN/inf reach exactly the outputs the definition says.
"""

import numpy as np

from ..registry import Backend, register


def phase_subkernels(out_len, in_len, kernel, stride, padding, dilation):
    """Per output phase ``ph``: ``(ph, rows, taps)`` with ``rows`` the phase's output count and ``taps`` a
    list of ``(k, offset, m_lo, m_hi)``: tap ``k`` adds input ``m + offset`` to phase row ``m`` for
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
    """``Σ_i pixels[n, r, c, g, i] · tap_weight[g, i, o]`` → ``(n, r, c, g, o)``."""
    if tap_weight.shape[0] == 1:  # one group: a single BLAS GEMM
        flat = pixels.reshape(-1, tap_weight.shape[1]) @ tap_weight[0]
        return flat.reshape(*pixels.shape[:3], 1, tap_weight.shape[2])
    return np.einsum("nrcgi,gio->nrcgo", pixels, tap_weight)


def polyphase_gemm(x, weight, bias, problem):
    n, g = problem.batch, problem.groups
    (h, w), (ho, wo) = problem.in_size, problem.out_size
    cig, cog = problem.in_per_group, problem.out_per_group
    x_cl = x.reshape(n, g, cig, h, w).transpose(0, 3, 4, 1, 2)  # (N, H, W, G, Ci_g), a view
    w_g = weight.reshape(g, cig, cog, *problem.kernel_size)
    rows_phases = phase_subkernels(
        ho, h, problem.kernel_size[0], problem.stride[0], problem.padding[0], problem.dilation[0]
    )
    cols_phases = phase_subkernels(
        wo, w, problem.kernel_size[1], problem.stride[1], problem.padding[1], problem.dilation[1]
    )
    y_cl = np.zeros((n, ho, wo, g, cog), dtype=problem.dtype)
    sh, sw = problem.stride
    for ph, rows, row_taps in rows_phases:
        for pw, cols, col_taps in cols_phases:
            phase = np.zeros((n, rows, cols, g, cog), dtype=problem.dtype)
            for kh, off_h, r0, r1 in row_taps:
                for kw, off_w, c0, c1 in col_taps:
                    pixels = x_cl[:, r0 + off_h : r1 + off_h, c0 + off_w : c1 + off_w]
                    phase[:, r0:r1, c0:c1] += _tap_gemm(pixels, w_g[..., kh, kw])
            y_cl[:, ph::sh, pw::sw] = phase
    y = y_cl.reshape(n, ho, wo, problem.out_channels).transpose(0, 3, 1, 2)
    if bias is not None:
        y = y + bias[None, :, None, None]
    return np.ascontiguousarray(y)


register(
    Backend(
        name="polyphase",
        description="sub-pixel decomposition: s_h·s_w stride-1 phase correlations (one GEMM per tap), interleaved",
        run=polyphase_gemm,
    )
)
