"""``fft``: the convolution theorem with scipy.fft.

A transposed convolution is the *full linear convolution* of the stride-dilated input
``x_s[ih·s] = x[ih]`` with the dilated kernel ``W_d[kh·d] = W[kh]``, summed over input channels and cropped
by ``padding``. So ``Ŷ[n, co] = Σ_ci X̂_s[n, ci] · Ŵ_d[ci, co]`` over a ``P1×P2`` grid (real FFTs, ``P`` the
linear size rounded up by ``scipy.fft.next_fast_len``), then one inverse FFT per output plane. The input
spectra come from ``scipy.fft.rfft2``; a kernel has only ``kH·kW`` non-zero samples, so its spectrum is the
DFT evaluated directly, ``Ŵ[f1, f2] = Σ_a,b W[a, b]·e^(-2πi(f1·a·d/P1 + f2·b·d/P2))``, as two small matrix
products (``kH`` complex multiply-adds per frequency, where an FFT of the zero-padded plane costs
``O(log P)`` and a plane of memory). The channel sum is a batched complex GEMM per frequency. NaN or inf
anywhere spreads over the whole plane (every frequency sees every sample), unlike the direct methods.

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

Memory stays under :attr:`Problem.workspace_limit`. All spectra are frequency-major (``(P1, Q, G, ...)``,
``Q = P2//2 + 1``) so that the GEMMs read them contiguously and a block of them is a slice. One call holds the
input spectra of a block of images, the output spectra of a block of output channels and the kernel spectra
of a slab of column frequencies (:func:`_blocks` picks the blocks from the peak they would hold,
:func:`_peak_bytes`); kernel spectra are recomputed per block of images. The transforms are
``(H-1)·s + d·(k-1) + 1`` samples per axis whatever the padding crops, so where even one image, one output
channel and one column of frequencies do not fit (one image's input spectra over all its channels dominate),
the configuration is declined with the size it would need (the direct backends compute it in memory
proportional to the output).

The FFTs run on as many threads as scipy's default allows: one, unless the caller raises it with
``with scipy.fft.set_workers(n):`` (the backend passes no ``workers`` argument, so that setting governs).
The GEMMs run with BLAS on one thread (:func:`~testbed.backends._blas.single_threaded_blas`): one per
frequency is small, and BLAS's threads only contend over it (4× slower on 128→128 k3 @64², 2 cores).
"""

import contextlib
import functools
from typing import NamedTuple

import numpy as np
import scipy.fft

from ..problem import UnsupportedConfiguration
from ..registry import Backend, register
from ._blas import single_threaded_blas


def _linear_size(problem):
    """The full linear convolution's extent per axis (the canvas without output_padding)."""
    return tuple(c - op for c, op in zip(problem.canvas_size, problem.output_padding))


def _fft_shape(problem):
    return tuple(scipy.fft.next_fast_len(m, real=True) for m in _linear_size(problem))


class Blocks(NamedTuple):
    """How much of the work one step holds: images, output channels (per group), column frequencies."""

    images: int
    channels: int
    columns: int


#: Bytes of kernel spectra computed at once (a slab of column frequencies), when the workspace limit allows
#: more: a slab is written by one GEMM and read at once by the next, which is fastest while it stays in cache.
#: Swept from 0.25 to 64 MiB on 128→128 k3 @64² and 256→128 k2 s2 @64² (Zen 3, busy host): 1-16 MiB within
#: noise of each other, 64 MiB 1.3-2× slower, 0.25 MiB slower on the U-Net shape.
SLAB_BYTES = 4 * 2**20


def _peak_bytes(problem, fft_shape, blocks):
    """Bytes of temporaries held at once by :func:`fft_convolve` with ``blocks`` (the result excluded).

    Input step: an image block's zero-inserted planes and their spectra (``rfft2`` writes a new array and
    transforms the first axis in place). Then, kept: those spectra. Per channel block: the output spectra plus
    either the block's taps, a slab's column-transformed taps and its kernel spectra (during the GEMMs), or
    the output planes (``ifft`` in place over the rows, then ``irfft`` into a new array)."""
    (p1, p2), q = fft_shape, fft_shape[1] // 2 + 1
    real = problem.dtype.itemsize
    cplx = 2 * real
    ci, g, (kh, kw) = problem.in_channels, problem.groups, problem.kernel_size
    nb, cb, columns = blocks
    x_planes = nb * ci * p1 * p2 * real
    x_hat = nb * ci * p1 * q * cplx
    y_hat = p1 * q * g * nb * cb * cplx
    w_step = (kh * kw + (kh + p1) * columns) * ci * cb * cplx
    y_planes = p1 * p2 * g * nb * cb * real
    return max(x_planes + x_hat, x_hat + y_hat + max(w_step, y_planes))


def _largest(fits, upper):
    """The largest ``b`` in ``[1, upper]`` with ``fits(b)`` (monotone), or 0 if none."""
    low, high = 0, upper
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _blocks(problem, fft_shape):
    """The blocks of :func:`fft_convolve`, or None if one image, one channel and one column do not fit.

    The most images whose input step takes at most half the limit (all of them if they fit: kernel spectra are
    recomputed per image block), then the most output channels that fit the rest, then the most column
    frequencies that fit and (unless a single column exceeds it) keep the kernel slab within
    :data:`SLAB_BYTES`."""
    return _blocks_under(problem, fft_shape, problem.workspace_limit, SLAB_BYTES)


@functools.lru_cache(maxsize=256)  # the check and the call ask for the same problem's blocks
def _blocks_under(problem, fft_shape, limit, slab_bytes):
    n, cog, (p1, p2) = problem.batch, problem.out_per_group, fft_shape
    kernel_column = (problem.kernel_size[0] + p1) * problem.in_channels * 2 * problem.dtype.itemsize

    def fits(images, channels=1, columns=1):
        return _peak_bytes(problem, fft_shape, Blocks(images, channels, columns)) <= limit

    if not fits(1):
        return None

    def input_step(images):  # the input's transform alone, before any channel block
        return _peak_bytes(problem, fft_shape, Blocks(images, 0, 0))

    images = max(1, _largest(lambda b: fits(b) and input_step(b) <= limit // 2, n))
    channels = _largest(lambda c: fits(images, c) and (c == 1 or c * kernel_column <= slab_bytes), cog)
    columns = _largest(
        lambda f: fits(images, channels, f) and (f == 1 or f * channels * kernel_column <= slab_bytes), p2 // 2 + 1
    )
    return Blocks(images, channels, columns)


#: Transform lengths beyond this are never attempted (scipy refuses above about 2**61; any such plane is far
#: above a workspace limit anyway).
_LONGEST_TRANSFORM = 2**40


def _too_large(problem):
    """Why even the smallest blocks do not fit :attr:`Problem.workspace_limit`, or None."""
    limit = problem.workspace_limit
    full = _linear_size(problem)
    if max(full) > _LONGEST_TRANSFORM:  # next_fast_len refuses these: the linear size is a lower bound
        fft_shape, bound = full, "at least"
    else:
        fft_shape, bound = _fft_shape(problem), "about"
        if _blocks(problem, fft_shape) is not None:
            return None
    need = _peak_bytes(problem, fft_shape, Blocks(1, 1, 1))
    return (
        f"the transforms of one image's stride-dilated input ({problem.in_channels} channels of "
        f"{fft_shape[0]}×{fft_shape[1]} samples, whatever padding crops) with one output channel need {bound} "
        f"{need:.3g} bytes, above the workspace limit of {limit:.3g} bytes (testbed.problem.WORKSPACE_BYTES, "
        f"or twice the call's arrays); polyphase and numba_cpu compute only the output"
    )


def _dft_matrix(frequencies, period, taps, step, dtype):
    """``E[f, t] = exp(-2πi·f·t·step / period)`` for ``f`` in ``frequencies``, ``t < taps``, in ``dtype``;
    the phase index is reduced modulo ``period`` in integers, so the angle is exact before the cosine."""
    offsets = (np.arange(taps, dtype=np.int64) * step) % period  # products stay below period²
    phase = np.multiply.outer(np.asarray(frequencies, dtype=np.int64), offsets)
    return np.exp((-2j * np.pi / period) * (phase % period)).astype(dtype)


def _scale_exponents(rows, what, dtype):
    """Per row of ``rows`` (2-D): the power-of-two exponent of its largest finite magnitude (``frexp``: that
    value scaled by ``2**-e`` lies in [0.5, 1)), after checking that the row's magnitudes span no more than the
    FFT can carry (see the module docstring); ``what(i)`` names row ``i`` in the refusal."""
    limit = 2.0 ** (np.finfo(dtype).nmant / 2)
    magnitude = np.abs(rows)
    magnitude[~np.isfinite(magnitude)] = 0  # NaN/inf spread anyway; they set no scale
    largest = magnitude.max(axis=1)
    for i in np.flatnonzero(largest):
        nonzero = magnitude[i][magnitude[i] > 0]
        spread = largest[i] / np.median(nonzero)
        if spread > limit:
            raise UnsupportedConfiguration(
                "fft",
                f"{what(i)} spans {spread:.3g}× between its largest and its median non-zero magnitude; "
                f"the FFT's rounding error (ε × the largest value, spread over every output of the plane) "
                f"would swamp the smaller outputs ({dtype} carries at most {limit:.3g}×); use a direct "
                f"backend such as polyphase or numba_cpu",
            )
    return np.frexp(largest)[1].astype(np.int64)


def fft_convolve(x, weight, bias, problem):
    n, g = problem.batch, problem.groups
    cig, cog = problem.in_per_group, problem.out_per_group
    (h, w), (kh, kw) = problem.in_size, problem.kernel_size
    (sh, sw), (dh, dw) = problem.stride, problem.dilation
    (ph, pw), (ho, wo) = problem.padding, problem.out_size
    full = _linear_size(problem)
    (p1, p2) = fft_shape = _fft_shape(problem)
    q = p2 // 2 + 1
    blocks = _blocks(problem, fft_shape)
    complex_dtype = np.result_type(problem.dtype, np.complex64)
    kernels = weight.reshape(g, cig, cog, kh, kw)
    x_exp = _scale_exponents(x.reshape(n, -1), lambda i: f"input image {i}", problem.dtype)
    w_exp = _scale_exponents(
        kernels.transpose(0, 2, 1, 3, 4).reshape(g * cog, -1),
        lambda i: f"the weights of output channel {i}",
        problem.dtype,
    ).reshape(g, cog)
    row_dft = _dft_matrix(range(p1), p1, kh, dh, complex_dtype)  # (P1, kH)
    column_dft = _dft_matrix(range(q), p2, kw, dw, complex_dtype)  # (Q, kW)
    # The output window within the linear convolution; rows/columns past it (output_padding) get no tap.
    rows, cols = max(0, min(full[0] - ph, ho)), max(0, min(full[1] - pw, wo))
    y = np.zeros(problem.output_shape, dtype=problem.dtype)
    out = y.reshape(n, g, cog, ho, wo)
    # Setting BLAS's thread count costs ~0.1 ms, more than all the GEMMs of a call below a million
    # multiply-adds.
    small = p1 * q * n * problem.in_channels * cog < 2**20
    with contextlib.nullcontext() if small else single_threaded_blas():
        for n0 in range(0, n, blocks.images):
            n1 = min(n, n0 + blocks.images)
            # (P1, P2, G, images, Ci_g): the stride-dilated, scaled input, frequency-major after rfft2.
            x_planes = np.zeros((p1, p2, g, n1 - n0, cig), dtype=problem.dtype)
            np.ldexp(
                x[n0:n1].reshape(n1 - n0, g, cig, h, w).transpose(3, 4, 1, 0, 2),
                -x_exp[n0:n1].reshape(1, 1, 1, -1, 1),
                out=x_planes[: (h - 1) * sh + 1 : sh, : (w - 1) * sw + 1 : sw],
            )
            x_hat = scipy.fft.rfft2(x_planes, axes=(0, 1))  # (P1, Q, G, images, Ci_g)
            del x_planes
            for c0 in range(0, cog, blocks.channels):
                c1 = min(cog, c0 + blocks.channels)
                # (kH, kW, G·Ci_g·block): the scaled taps, complex for the GEMMs with the DFT matrices.
                taps = np.zeros((kh, kw, g, cig, c1 - c0), dtype=complex_dtype)
                np.ldexp(kernels[:, :, c0:c1].transpose(3, 4, 0, 1, 2), -w_exp[:, None, c0:c1], out=taps.real)
                taps = taps.reshape(kh, kw, -1)
                y_hat = np.empty((p1, q, g, n1 - n0, c1 - c0), dtype=complex_dtype)
                for f0 in range(0, q, blocks.columns):
                    f1 = min(q, f0 + blocks.columns)
                    # The kernel spectra of a slab of column frequencies: DFT along the columns, then the rows.
                    row_taps = np.matmul(column_dft[f0:f1], taps)  # (kH, slab, G·Ci_g·block)
                    w_hat = row_dft @ row_taps.reshape(kh, -1)  # (P1, slab·G·Ci_g·block)
                    del row_taps
                    # Channel sum per frequency: (images × Ci_g) · (Ci_g × block) for every (f1, f2, group).
                    np.matmul(x_hat[:, f0:f1], w_hat.reshape(p1, f1 - f0, g, cig, c1 - c0), out=y_hat[:, f0:f1])
                    del w_hat
                # irfft2 in two steps: scipy's irfft2 copies its input whatever overwrite_x says; ifft honours it.
                y_planes = scipy.fft.irfft(scipy.fft.ifft(y_hat, axis=0, overwrite_x=True), n=p2, axis=1)
                del y_hat
                window = out[n0:n1, :, c0:c1, :rows, :cols]
                scale = x_exp[n0:n1, None, None, None, None] + w_exp[None, :, c0:c1, None, None]
                np.ldexp(y_planes[ph : ph + rows, pw : pw + cols].transpose(3, 2, 4, 0, 1), scale, out=window)
                del y_planes
                window += 0.0  # an output is never -0.0 (PyTorch's sign of zero; see naive)
            del x_hat
    if bias is not None:
        y += bias[None, :, None, None]
    return y


register(
    Backend(
        name="fft",
        description="convolution theorem: rfft2 of the stride-dilated input × kernel spectrum, summed over channels",
        run=fft_convolve,
        check=_too_large,
    )
)
