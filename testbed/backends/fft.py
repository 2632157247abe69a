"""``fft``: the convolution theorem with scipy.fft.

A transposed convolution is the *full linear convolution* of the stride-dilated input
``x_s[ih·s] = x[ih]`` with the dilated kernel ``W_d[kh·d] = W[kh]``, summed over input channels and cropped
by ``padding``. So ``Ŷ[n, co] = Σ_ci X̂_s[n, ci] · Ŵ_d[ci, co]`` (real FFTs of size ≥ canvas, computed with
``scipy.fft.next_fast_len``), then one inverse FFT per output plane. The channel sum is a batched complex
GEMM over frequencies, taken over blocks of output channels so the kernel spectra stay within
``SPECTRUM_BUDGET_BYTES``. NaN or inf anywhere spreads over the whole plane (every frequency sees every
sample), unlike the direct methods.

Accuracy over the dtype's range. Each image and each output channel's weights are scaled by a power of two
to a largest magnitude in [0.5, 1) before the transforms and the result is scaled back with ``ldexp``
(exact: only the mantissas enter the FFT), so no intermediate sum overflows or underflows wherever the
inputs sit in the dtype's range (1e38 in float32 works). What scaling cannot fix is the FFT's error model:
every output of a plane carries an absolute error of about ε·log(size)·(largest input)·(largest weight),
spread evenly over the plane, so an output much smaller than the largest values is lost (at 1e30 next to
1.0, a 1.0 output comes out near 1e23 in float32). ``fft`` therefore refuses data whose magnitudes span
more than ``2**(mantissa bits / 2)`` (float32: ~2900×, float64: ~6.7e7×) between an image's (or an output
channel's weights') largest and median non-zero finite magnitude: it raises UnsupportedConfiguration with
the measured range, instead of returning outputs that look valid and are not.

Memory follows the transform: the stride-dilated input is ``(H-1)·s + d·(k-1) + 1`` samples per axis whatever
the padding crops, so when the transforms would exceed :attr:`Problem.workspace_limit` the configuration is
declined with the size it would need (the direct backends compute it in memory proportional to the output).

The FFTs run on as many threads as scipy's default allows: one, unless the caller raises it with
``with scipy.fft.set_workers(n):`` (the backend passes no ``workers`` argument, so that setting governs).
"""

import math

import numpy as np
import scipy.fft

from ..problem import UnsupportedConfiguration
from ..registry import Backend, register


def _zero_inserted(a, step, shape):
    """``a`` placed at every ``step``-th position of a zero array of ``shape`` (last two axes)."""
    out = np.zeros(a.shape[:-2] + shape, dtype=a.dtype)
    out[..., ::step[0], ::step[1]][..., :a.shape[-2], :a.shape[-1]] = a
    return out


#: Bytes of kernel spectra held at once: output channels are processed in blocks that fit, because all
#: C_in·C_out spectra together reach gigabytes on the U-Net shapes (1024·512 planes of 57×29 complex values).
SPECTRUM_BUDGET_BYTES = 256 * 2**20


def _linear_size(problem):
    """The full linear convolution's extent per axis (the canvas without output_padding)."""
    return tuple(c - op for c, op in zip(problem.canvas_size, problem.output_padding))


def _workspace_bytes(problem, fft_shape):
    """Bytes of the transforms held at once with one output channel per block: the zero-inserted input and its
    spectrum (with the channels-last copy the GEMM reads), then per block a kernel, its spectrum, the output
    spectra and planes."""
    n, g, cig = problem.batch, problem.groups, problem.in_per_group
    real = math.prod(fft_shape)
    spectrum = 2 * fft_shape[0] * (fft_shape[1] // 2 + 1)          # real numbers in one complex half-spectrum
    planes = (n * problem.in_channels * (real + 2 * spectrum) + g * cig * (real + spectrum)
              + n * g * (real + 2 * spectrum))
    return planes * problem.dtype.itemsize


def _too_large(problem):
    """Why the transforms do not fit :attr:`Problem.workspace_limit`, or None."""
    limit = problem.workspace_limit
    full = _linear_size(problem)
    # A lower bound first: next_fast_len on an astronomically large size is pointless (and may overflow).
    if problem.batch * problem.in_channels * math.prod(full) * problem.dtype.itemsize <= limit:
        fft_shape = tuple(scipy.fft.next_fast_len(m, real=True) for m in full)
        need = _workspace_bytes(problem, fft_shape)
        if need <= limit:
            return None
    else:
        fft_shape, need = full, problem.batch * problem.in_channels * math.prod(full) * problem.dtype.itemsize
    return (f"the transforms of the stride-dilated input ({fft_shape[0]}×{fft_shape[1]} samples per plane, "
            f"whatever padding crops) need about {need:.3g} bytes, above the workspace limit of {limit:.3g} bytes "
            f"(testbed.problem.WORKSPACE_BYTES, or twice the call's arrays); polyphase and numba_cpu compute "
            f"only the output")


def _scale_exponents(rows, what, dtype):
    """Per row of ``rows`` (2-D): the power-of-two exponent of its largest finite magnitude (``frexp``: that
    value scaled by ``2**-e`` lies in [0.5, 1)), after checking that the row's magnitudes span no more than the
    FFT can carry (see the module docstring); ``what(i)`` names row ``i`` in the refusal."""
    limit = 2.0 ** (np.finfo(dtype).nmant / 2)
    magnitude = np.abs(rows)
    magnitude[~np.isfinite(magnitude)] = 0                         # NaN/inf spread anyway; they set no scale
    largest = magnitude.max(axis=1)
    for i in np.flatnonzero(largest):
        nonzero = magnitude[i][magnitude[i] > 0]
        spread = largest[i] / np.median(nonzero)
        if spread > limit:
            raise UnsupportedConfiguration(
                "fft", f"{what(i)} spans {spread:.3g}× between its largest and its median non-zero magnitude; "
                       f"the FFT's rounding error (ε × the largest value, spread over every output of the plane) "
                       f"would swamp the smaller outputs ({dtype} carries at most {limit:.3g}×); use a direct "
                       f"backend such as polyphase or numba_cpu")
    return np.frexp(largest)[1].astype(np.int64)


def fft_convolve(x, weight, bias, problem):
    n, g = problem.batch, problem.groups
    cig, cog = problem.in_per_group, problem.out_per_group
    (ph, pw), (ho, wo) = problem.padding, problem.out_size
    full = _linear_size(problem)
    fft_shape = tuple(scipy.fft.next_fast_len(m, real=True) for m in full)
    kernels = weight.reshape(g, cig, cog, *problem.kernel_size)
    x_exp = _scale_exponents(x.reshape(n, -1), lambda i: f"input image {i}", problem.dtype)
    w_exp = _scale_exponents(kernels.transpose(0, 2, 1, 3, 4).reshape(g * cog, -1),
                             lambda i: f"the weights of output channel {i}", problem.dtype).reshape(g, cog)
    x_scaled = np.ldexp(x, -x_exp[:, None, None, None])
    x_hat = scipy.fft.rfft2(_zero_inserted(x_scaled, problem.stride, full), s=fft_shape)
    del x_scaled
    freq = x_hat.shape[-2:]
    xs = x_hat.reshape(n, g, cig, -1).transpose(1, 3, 0, 2)               # (G, F, N, Ci_g)
    # The output window within the linear convolution; rows/columns past it (output_padding) get no tap.
    rows, cols = max(0, min(full[0] - ph, ho)), max(0, min(full[1] - pw, wo))
    y = np.zeros(problem.output_shape, dtype=problem.dtype)
    out = y.reshape(n, g, cog, ho, wo)
    block = max(1, SPECTRUM_BUDGET_BYTES // (g * cig * xs.shape[1] * x_hat.itemsize))
    for c0 in range(0, cog, block):
        c1 = min(cog, c0 + block)
        w_scaled = np.ldexp(kernels[:, :, c0:c1], -w_exp[:, None, c0:c1, None, None])
        # (G, Ci_g, block, F1, F2)
        w_hat = scipy.fft.rfft2(_zero_inserted(w_scaled, problem.dilation, full), s=fft_shape)
        ws = w_hat.reshape(g, cig, c1 - c0, -1).transpose(0, 3, 1, 2)       # (G, F, Ci_g, block)
        y_hat = np.matmul(xs, ws)                                            # channel sum per frequency
        y_hat = y_hat.transpose(2, 0, 3, 1).reshape(n, g, c1 - c0, *freq)
        planes = scipy.fft.irfft2(y_hat, s=fft_shape)[..., ph:ph + rows, pw:pw + cols]
        scale = x_exp[:, None, None, None, None] + w_exp[None, :, c0:c1, None, None]
        # + 0.0: an output is never -0.0 (PyTorch's sign of zero; see naive).
        out[:, :, c0:c1, :rows, :cols] = np.ldexp(planes, scale) + 0.0
    if bias is not None:
        y += bias[None, :, None, None]
    return y


register(Backend(
    name="fft",
    description="convolution theorem: rfft2 of the stride-dilated input × kernel spectrum, summed over channels",
    run=fft_convolve,
    check=_too_large,
))
