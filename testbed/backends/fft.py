"""``fft``: the convolution theorem with scipy.fft.

A transposed convolution is the *full linear convolution* of the stride-dilated input
``x_s[ih·s] = x[ih]`` with the dilated kernel ``W_d[kh·d] = W[kh]``, summed over input channels and cropped
by ``padding``. So ``Ŷ[n, co] = Σ_ci X̂_s[n, ci] · Ŵ_d[ci, co]`` (real FFTs of size ≥ canvas, computed with
``scipy.fft.next_fast_len``), then one inverse FFT per output plane. The channel sum is a batched complex
GEMM over frequencies, taken over blocks of output channels so the kernel spectra stay within
``SPECTRUM_BUDGET_BYTES``. Rounding error grows like ``log(size)``; NaN or inf anywhere spreads over the whole
plane (every frequency sees every sample), unlike the direct methods.

The FFTs run on as many threads as scipy's default allows: one, unless the caller raises it with
``with scipy.fft.set_workers(n):`` (the backend passes no ``workers`` argument, so that setting governs).
"""

import numpy as np
import scipy.fft

from ..registry import Backend, register


def _zero_inserted(a, step, shape):
    """``a`` placed at every ``step``-th position of a zero array of ``shape`` (last two axes)."""
    out = np.zeros(a.shape[:-2] + shape, dtype=a.dtype)
    out[..., ::step[0], ::step[1]][..., :a.shape[-2], :a.shape[-1]] = a
    return out


#: Bytes of kernel spectra held at once: output channels are processed in blocks that fit, because all
#: C_in·C_out spectra together reach gigabytes on the U-Net shapes (1024·512 planes of 57×29 complex values).
SPECTRUM_BUDGET_BYTES = 256 * 2**20


def fft_convolve(x, weight, bias, problem):
    n, g = problem.batch, problem.groups
    cig, cog = problem.in_per_group, problem.out_per_group
    full = tuple(c - op for c, op in zip(problem.canvas_size, problem.output_padding))
    fft_shape = tuple(scipy.fft.next_fast_len(m, real=True) for m in full)
    x_hat = scipy.fft.rfft2(_zero_inserted(x, problem.stride, full), s=fft_shape)  # (N, C_in, F1, F2)
    freq = x_hat.shape[-2:]
    xs = x_hat.reshape(n, g, cig, -1).transpose(1, 3, 0, 2)               # (G, F, N, Ci_g)
    canvas = np.zeros((n, problem.out_channels, *problem.canvas_size), dtype=problem.dtype)
    block = max(1, SPECTRUM_BUDGET_BYTES // (g * cig * xs.shape[1] * x_hat.itemsize))
    kernels = weight.reshape(g, cig, cog, *problem.kernel_size)
    for c0 in range(0, cog, block):
        c1 = min(cog, c0 + block)
        w_hat = scipy.fft.rfft2(_zero_inserted(kernels[:, :, c0:c1], problem.dilation, full),
                                s=fft_shape)                                 # (G, Ci_g, block, F1, F2)
        ws = w_hat.reshape(g, cig, c1 - c0, -1).transpose(0, 3, 1, 2)       # (G, F, Ci_g, block)
        y_hat = np.matmul(xs, ws)                                            # channel sum per frequency
        y_hat = y_hat.transpose(2, 0, 3, 1).reshape(n, g, c1 - c0, *freq)
        planes = scipy.fft.irfft2(y_hat, s=fft_shape)[..., :full[0], :full[1]]
        canvas.reshape(n, g, cog, *problem.canvas_size)[:, :, c0:c1, :full[0], :full[1]] = planes
    y = problem.crop(canvas)
    if bias is not None:
        y = y + bias[None, :, None, None]
    return np.ascontiguousarray(y, dtype=problem.dtype)


register(Backend(
    name="fft",
    description="convolution theorem: rfft2 of the stride-dilated input × kernel spectrum, summed over channels",
    run=fft_convolve,
))
