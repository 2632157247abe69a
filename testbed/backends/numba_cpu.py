"""``numba_cpu``: parallel Numba kernels (``prange`` over output rows) around BLAS GEMMs, one algorithm per
configuration, chosen by :func:`choose_path`:

``nonoverlap_gemm`` (stride == kernel, dilation 1: the U-Net up-convolution). No two taps share an output, so
``y[n, co, i·kH + a, j·kW + b] = Σ_ci W[ci, co, a, b] · x[n, ci, i, j]``: one GEMM per image and group,
``(C_out/G·kH·kW × C_in/G) · (C_in/G × H·W)``, on the input exactly as it is laid out (no transpose, no
column buffer), then one parallel pixel shuffle (depth-to-space) that writes every output once, with the
padding crop, the ``output_padding`` rows (bias only) and the bias fused in.

``phase_gemm`` (every other configuration with enough channels). The sub-pixel / phase decomposition
(Shi et al. 2016, arXiv:1609.07009): output ``o = ph + s·m`` receives tap ``k`` iff
``(ph + p - k·d) ≡ 0 (mod s)``, from input ``m + (ph + p - k·d)/s``. Per output phase ``(ph, pw)`` the
``T`` taps that reach it form a dense stride-1 correlation of the *undilated* input, computed as one GEMM per
group ``(C_out/G × T·C_in/G) · (T·C_in/G × N·rows·cols)`` over a per-phase column buffer (im2col of the
phase's taps only: no multiplication by inserted zeros, exactly the useful work ``problem.flops``). The
``s_h·s_w`` phase results are interleaved by the same shuffle as above, bias fused.

``direct`` (depthwise and other tiny channel counts, and any weight holding NaN/inf). An output-stationary
gather: each thread owns whole output rows ``y[n, co, oh, :]`` and adds, for every tap ``kh`` with
``(oh + p - kh·d) ≡ 0 (mod s)`` and every input pixel in range, ``x[n, ci, ih, iw] · W[ci, co, kh, kw]``
into ``oh``'s row.

No thread ever writes an element another thread writes (rows are partitioned), and every summation order is
fixed, so results are bitwise repeatable for a fixed thread count.

NaN/inf: ``nonoverlap_gemm`` and ``direct`` combine exactly the (input pixel, tap) pairs of the scatter
definition, so a NaN or inf reaches exactly the outputs the definition says. ``phase_gemm`` fills the column
entries of out-of-range input pixels with zeros; with a finite weight these add exact zeros, but a NaN/inf
*weight* would turn them into NaN at the borders. So ``run`` checks ``np.isfinite(weight)`` (cheap: the
weight is small) and takes ``direct`` for a non-finite weight: the definition's propagation holds everywhere.
(The only remaining difference is the sign of a zero: bias is added as ``+ 0.0`` when absent.)
"""

import numpy as np
from numba import njit, prange

from ..registry import Backend, register
from .polyphase import phase_subkernels

__all__ = ["choose_path", "PATHS"]

#: The algorithms of this backend, in the order :func:`choose_path` considers them.
PATHS = ("direct", "nonoverlap_gemm", "phase_gemm")

#: ``direct`` below this many multiply-adds per (input pixel, tap), C_in/G · C_out/G: a GEMM that short
#: (depthwise: 1) spends its time in call and packing overhead, while the gather loop is memory-bound anyway.
DIRECT_MAX_CHANNEL_PRODUCT = 16

#: Column buffers of ``phase_gemm`` larger than this are built for a slice of the batch at a time.
COLUMN_BUFFER_BYTES = 256 * 2 ** 20


def choose_path(problem, weight=None) -> str:
    """The algorithm ``numba_cpu`` runs for ``problem`` (and ``weight``, if given: NaN/inf forces ``direct``)."""
    if weight is not None and not np.isfinite(weight).all():
        return "direct"
    if problem.in_per_group * problem.out_per_group < DIRECT_MAX_CHANNEL_PRODUCT:
        return "direct"
    if problem.is_nonoverlapping:
        return "nonoverlap_gemm"
    return "phase_gemm"


# ---- kernels ---------------------------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _interleave(phases, bias, y, offset_h, offset_w, limit_h, limit_w):
    """Depth-to-space with bias: ``y[n, c, oh, ow] = phases[a, b, c, n, m, l] + bias[c]`` where
    ``oh + offset_h = a + s_h·m`` and ``ow + offset_w = b + s_w·l`` (``s_h, s_w = phases.shape[:2]``);
    positions with ``m >= limit_h`` or ``l >= limit_w`` (reached by no tap) get the bias alone.
    One thread per output row."""
    stride_h, stride_w = phases.shape[0], phases.shape[1]
    batch, channels, out_h, out_w = y.shape
    for row in prange(batch * channels * out_h):
        n = row // (channels * out_h)
        c = (row // out_h) % channels
        oh = row % out_h
        b_c = bias[c]
        line = y[n, c, oh]
        a, m = (oh + offset_h) % stride_h, (oh + offset_h) // stride_h
        if m >= limit_h:
            line[:] = b_c
            continue
        for b in range(stride_w):
            first = (b - offset_w) % stride_w
            l = (first + offset_w) // stride_w
            for ow in range(first, out_w, stride_w):
                line[ow] = phases[a, b, c, n, m, l] + b_c if l < limit_w else b_c
                l += 1


@njit(parallel=True, cache=True)
def _build_columns(x, taps, per_group, columns):
    """The column buffer of every phase at once: ``columns[g, t·Ci_g + ci, n, m, l] = x[n, g·Ci_g + ci,
    m + off_h, l + off_w]`` for ``taps[t] = (off_h, lo_h, hi_h, off_w, lo_w, hi_w)``, zero outside
    ``lo_h <= m < hi_h``, ``lo_w <= l < hi_w`` (the tap's input pixel lies outside the image).
    ``columns`` is ``(G, T·Ci_g, N, R, C)``; one thread per (group, tap, channel, image) block."""
    groups, depth, batch, rows, cols = columns.shape
    for block in prange(groups * depth * batch):
        g = block // (depth * batch)
        k = (block // batch) % depth
        n = block % batch
        t, ci = k // per_group, k % per_group
        off_h, lo_h, hi_h = taps[t, 0], taps[t, 1], taps[t, 2]
        off_w, lo_w, hi_w = taps[t, 3], min(taps[t, 4], cols), min(taps[t, 5], cols)
        plane = x[n, g * per_group + ci]
        out = columns[g, k, n]
        for m in range(rows):
            line = out[m]
            if m < lo_h or m >= hi_h:
                line[:] = 0
                continue
            src = plane[m + off_h]
            for l in range(lo_w):
                line[l] = 0
            for l in range(lo_w, hi_w):
                line[l] = src[l + off_w]
            for l in range(max(hi_w, lo_w), cols):
                line[l] = 0


@njit(parallel=True, cache=True)
def _direct_gather(x, weight, bias, y, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups):
    """Output-stationary gather: ``y[n, co, oh, :] = bias[co] + Σ x[n, ci, ih, iw] · W[ci, co_g, kh, kw]``
    over the taps with ``oh = ih·s_h - p_h + kh·d_h`` and the input pixels whose ``ow`` is in range.
    One thread per output row; only (pixel, tap) pairs of the scatter definition are combined."""
    batch, in_channels, in_h, in_w = x.shape
    out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    per_group_in, per_group_out = in_channels // groups, out_channels // groups
    k_h, k_w = weight.shape[2], weight.shape[3]
    for row in prange(batch * out_channels * out_h):
        n = row // (out_channels * out_h)
        co = (row // out_h) % out_channels
        oh = row % out_h
        g, co_g = co // per_group_out, co % per_group_out
        line = y[n, co, oh]
        line[:] = bias[co]
        for kh in range(k_h):
            shift = oh + pad_h - kh * dil_h
            if shift < 0 or shift % stride_h != 0 or shift // stride_h >= in_h:
                continue
            ih = shift // stride_h
            for ci in range(g * per_group_in, (g + 1) * per_group_in):
                src = x[n, ci, ih]
                for kw in range(k_w):
                    w = weight[ci, co_g, kh, kw]
                    start = kw * dil_w - pad_w                       # ow of input column 0
                    iw_lo = max(0, -((start) // stride_w))            # first iw with ow >= 0
                    iw_hi = min(in_w, (out_w - 1 - start) // stride_w + 1)
                    for iw in range(iw_lo, iw_hi):
                        line[iw * stride_w + start] += src[iw] * w


# ---- wrappers: allocate, pick the path, call the kernels -----------------------------------------------------

def _bias_or_zeros(bias, problem):
    return np.zeros(problem.out_channels, dtype=problem.dtype) if bias is None else bias


def _nonoverlap_gemm(x, weight, bias, problem):
    n, g = problem.batch, problem.groups
    (h, w), (kh, kw) = problem.in_size, problem.kernel_size
    cig, cog = problem.in_per_group, problem.out_per_group
    # (G, Co_g·kH·kW, Ci_g): a transposed view; BLAS reads it with a transpose flag, nothing is copied.
    weight_t = weight.reshape(g, cig, cog * kh * kw).transpose(0, 2, 1)
    blocks = np.matmul(weight_t, x.reshape(n, g, cig, h * w))           # (N, G, Co_g·kH·kW, HW)
    # As phases[a, b, c, n, i, j]: tap (a, b) of input pixel (i, j) is canvas pixel (i·kH + a, j·kW + b).
    phases = blocks.reshape(n, problem.out_channels, kh, kw, h, w).transpose(2, 3, 1, 0, 4, 5)
    y = np.empty(problem.output_shape, dtype=problem.dtype)
    _interleave(phases, _bias_or_zeros(bias, problem), y, problem.padding[0], problem.padding[1], h, w)
    return y


def _phase_gemm(x, weight, bias, problem):
    g, cig, cog = problem.groups, problem.in_per_group, problem.out_per_group
    (sh, sw), (ho, wo) = problem.stride, problem.out_size
    row_phases = phase_subkernels(ho, problem.in_size[0], problem.kernel_size[0], sh, problem.padding[0],
                                  problem.dilation[0])
    col_phases = phase_subkernels(wo, problem.in_size[1], problem.kernel_size[1], sw, problem.padding[1],
                                  problem.dilation[1])
    rows, cols = -(-ho // sh), -(-wo // sw)          # the largest phase; smaller ones leave a row/col unused
    w_g = weight.reshape(g, cig, cog, *problem.kernel_size)
    # Every phase's taps in one table, so one parallel call builds all column buffers and the BLAS calls
    # then run back to back (alternating Numba's and BLAS's thread pools costs more than the copies).
    phase_list, taps = [], []
    for ph, _, row_taps in row_phases:
        for pw, _, col_taps in col_phases:
            first = len(taps)
            taps += [(oh, lh, hh, ow, lw, hw) for _, oh, lh, hh in row_taps for _, ow, lw, hw in col_taps]
            kh = np.array([t[0] for t in row_taps], dtype=np.int64)
            kw = np.array([t[0] for t in col_taps], dtype=np.int64)
            # (G, Co_g, Th, Tw, Ci_g) → (G, Co_g, T·Ci_g), matching the column rows (th, tw, ci).
            sub_kernel = w_g[:, :, :, kh[:, None], kw[None, :]].transpose(0, 2, 3, 4, 1)
            phase_list.append((ph, pw, first, len(taps), sub_kernel.reshape(g, cog, -1)))
    taps = np.array(taps, dtype=np.int64).reshape(-1, 6)
    image_bytes = max(len(taps), 1) * problem.in_channels * rows * cols * problem.dtype.itemsize
    chunk = max(1, min(problem.batch, COLUMN_BUFFER_BYTES // image_bytes))
    bias = _bias_or_zeros(bias, problem)
    y = np.empty(problem.output_shape, dtype=problem.dtype)
    for n0 in range(0, problem.batch, chunk):
        x_part, y_part = x[n0:n0 + chunk], y[n0:n0 + chunk]
        batch = x_part.shape[0]
        columns = np.empty((g, len(taps) * cig, batch, rows, cols), dtype=problem.dtype)
        _build_columns(x_part, taps, cig, columns)
        columns = columns.reshape(g, len(taps) * cig, -1)
        # phases[a, b, g, co, n, m, l]: phase (a, b) of output channel g·Co_g + co.
        phases = np.empty((sh, sw, g, cog, batch, rows, cols), dtype=problem.dtype)
        for ph, pw, first, last, sub_kernel in phase_list:
            if first == last:                        # s > d·(k-1)+1 leaves gaps no tap reaches: bias only
                phases[ph, pw] = 0
            else:
                np.matmul(sub_kernel, columns[:, first * cig:last * cig],
                          out=phases[ph, pw].reshape(g, cog, -1))
        _interleave(phases.reshape(sh, sw, problem.out_channels, batch, rows, cols), bias, y_part, 0, 0,
                    rows, cols)
    return y


def _direct(x, weight, bias, problem):
    y = np.empty(problem.output_shape, dtype=problem.dtype)
    _direct_gather(x, weight, _bias_or_zeros(bias, problem), y, *problem.stride, *problem.padding,
                   *problem.dilation, problem.groups)
    return y


_RUNNERS = {"direct": _direct, "nonoverlap_gemm": _nonoverlap_gemm, "phase_gemm": _phase_gemm}


def numba_conv_transpose2d(x, weight, bias, problem):
    return _RUNNERS[choose_path(problem, weight)](x, weight, bias, problem)


register(Backend(
    name="numba_cpu",
    description="Numba prange kernels: GEMM + fused pixel shuffle (stride == kernel), per-phase im2col GEMMs "
                "(sub-pixel), or an output-stationary gather (depthwise, tiny channels, non-finite weights)",
    run=numba_conv_transpose2d,
))
