"""The forward convolution whose adjoint is the transposed convolution, and the adjoint-identity residual.

For a problem ``P`` (weight ``W`` of shape ``(C_in, C_out/groups, kH, kW)``), ``conv_transpose2d`` is the
linear map ``T: x ↦ y`` and its adjoint is the ordinary strided, padded, dilated, grouped cross-correlation
(PyTorch's ``F.conv2d(z, W, stride=s, padding=p, dilation=d, groups=g)``, with ``W`` read as a forward
weight of ``C_in`` output and ``C_out/groups`` input channels):

    (Tᵀz)[n, g·Ci_g + ci, ih, iw] = Σ_{co, kh, kw} z[n, g·Co_g + co, ih·s - p + kh·d, iw·s - p + kw·d] · W[g·Ci_g + ci, co, kh, kw]

(taps falling outside ``z`` count as zero). The identity ``<Tᵀz, x> = <z, T x>`` holds for every ``x, z``
(Dumoulin & Visin 2016, ch. 4: the transposed convolution multiplies by ``Cᵀ``). Only the ``H × W``
positions that the transposed convolution reads are computed, so ``output_padding`` ≥ stride (allowed when
it is below the dilation) needs no special case.
"""

from __future__ import annotations

import numpy as np

from .problem import Problem

__all__ = ["conv2d_adjoint", "adjoint_residual"]


def conv2d_adjoint(z, weight, problem: Problem):
    """``Tᵀz``: the forward conv2d of ``z`` ``(N, C_out, H_out, W_out)`` → ``(N, C_in, H, W)``, in float64.

    Written directly from the formula in the module docstring (a zero canvas holding ``z`` at the padding
    offset, one strided window and one channel contraction per kernel tap), independent of every backend.
    """
    z = np.asarray(z, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if z.shape != problem.output_shape:
        raise ValueError(f"z must have the transposed convolution's output shape {problem.output_shape}, "
                         f"got {z.shape}")
    n, g = problem.batch, problem.groups
    cig, cog = problem.in_per_group, problem.out_per_group
    (h, w), (sh, sw), (dh, dw) = problem.in_size, problem.stride, problem.dilation
    canvas = np.zeros((n, problem.out_channels, *problem.canvas_size))
    problem.crop(canvas)[...] = z                 # canvas index = output index + padding
    grouped = canvas.reshape(n, g, cog, *problem.canvas_size)
    out = np.zeros((n, g, cig, h, w))
    for kh in range(problem.kernel_size[0]):
        for kw in range(problem.kernel_size[1]):
            window = grouped[..., kh * dh:kh * dh + (h - 1) * sh + 1:sh, kw * dw:kw * dw + (w - 1) * sw + 1:sw]
            taps = weight[:, :, kh, kw].reshape(g, cig, cog)
            out += np.einsum("ngohw,gio->ngihw", window, taps)
    return out.reshape(problem.input_shape)


def adjoint_residual(x, weight, y, z, problem: Problem) -> float:
    """``|<Tᵀz, x> - <z, y>| / (‖z‖·‖y‖)`` for ``y`` a backend's bias-free ``T x``, in float64.

    The scale is the Cauchy–Schwarz bound of ``<z, y>``, so the residual is at most the relative error of
    ``y`` and about the dtype's rounding error for a correct backend.
    """
    y = np.asarray(y, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    lhs = np.vdot(conv2d_adjoint(z, weight, problem).ravel(), np.asarray(x, dtype=np.float64).ravel())
    rhs = np.vdot(z.ravel(), y.ravel())
    scale = np.linalg.norm(z) * np.linalg.norm(y)
    return float(abs(lhs - rhs) / scale) if scale > 0 else float(abs(lhs - rhs))
