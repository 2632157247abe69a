"""``fft``: the convolution theorem with scipy.fft, for every spatial rank (1-D, 2-D, 3-D).

A transposed convolution is the *full linear convolution* of the stride-dilated input ``x_s[i·s] = x[i]``
with the dilated kernel ``W_d[k·d] = W[k]`` (per spatial axis), summed over input channels and cropped by
``padding``. So ``Ŷ[n, co] = Σ_ci X̂_s[n, ci] · Ŵ_d[ci, co]`` over a ``P_1×…×P_r`` grid (``r`` =
``problem.rank``; real FFTs, each ``P_a`` the linear size rounded up by ``scipy.fft.next_fast_len``), then one
inverse FFT per output volume. The input spectra come from ``scipy.fft.rfftn`` over the ``r`` spatial axes (the
last one halved, ``Q = P_r//2 + 1`` frequencies). A kernel has only ``k_1·…·k_r`` non-zero samples, so its
spectrum is the DFT evaluated directly,

    Ŵ[f_1, …, f_r] = Σ_{t_1..t_r} W[t_1, …, t_r] · Π_a e^(-2πi·f_a·t_a·d_a/P_a),

whose matrix is the Kronecker product ``E_1 ⊗ … ⊗ E_r`` of the per-axis DFT matrices of the taps
(``E_a[f, t]``, ``P_a × k_a``; ``Q × k_r`` for the last axis). It is applied one factor at a time, as
small GEMMs: the last axis's first (on a slab of its frequencies), then axes ``r-1, …, 1``, each turning that
axis's ``k_a`` taps into ``P_a`` frequencies. Applied in that order the work is ``≈ k_1`` complex
multiply-adds per frequency and (input, output) channel pair at every rank (``k_1·(1 + k_2/P_1 + …)``), where
the Kronecker matrix applied at once would cost ``k_1·…·k_{r-1}`` and an FFT of the zero-padded volume
``O(log P)`` plus a volume of memory per channel pair. The channel sum is a batched complex GEMM per
frequency. NaN or inf anywhere spreads over the whole volume (every frequency sees every sample), unlike the
direct methods.

Accuracy over the dtype's range. Each image and each output channel's weights are scaled by a power of two
to a largest magnitude in [0.5, 1) before the transforms and the result is scaled back with ``ldexp``
(exact: only the mantissas enter the FFT), so no intermediate sum overflows or underflows wherever the
inputs sit in the dtype's range (1e38 in float32 works). What scaling cannot fix is the FFT's error model:
every output of a volume carries an absolute error of about ε·log(size)·(largest input)·(largest weight),
spread evenly over the volume, so an output much smaller than the largest values is lost (at 1e30 next to
1.0, a 1.0 output comes out near 1e23 in float32). ``fft`` therefore refuses data whose magnitudes span
more than ``2**(mantissa bits / 2)`` (float32: ~2900×, float64: ~6.7e7×) between an image's (or an output
channel's weights') largest and median non-zero finite magnitude: it raises UnsupportedConfiguration with
the measured range, instead of returning outputs that look valid and are not.

Memory stays under :attr:`Problem.workspace_limit`. All spectra are frequency-major (``(P_1, …, P_{r-1}, Q,
G, ...)``) so that the GEMMs read them contiguously and a block of them is a slice. One call holds the input
spectra of a block of images, the output spectra of a block of output channels and the kernel spectra of a
slab of last-axis frequencies (:func:`_blocks` picks the blocks from the peak they would hold,
:func:`_peak_bytes`); kernel spectra are recomputed per block of images. The transforms are
``(n-1)·s + d·(k-1) + 1`` samples per axis whatever the padding crops, so where even one image, one output
channel and one last-axis frequency do not fit (one image's input spectra over all its channels dominate),
the configuration is declined with the size it would need (the direct backends compute it in memory
proportional to the output).

The FFTs run on as many threads as scipy's default allows: one, unless the caller raises it with
``with scipy.fft.set_workers(n):`` (the backend passes no ``workers`` argument, so that setting governs).
The GEMMs run with BLAS on one thread (:func:`~testbed.backends._blas.single_threaded_blas`): one per
frequency is small, and BLAS's threads only contend over it (4× slower on 128→128 k3 @64², 2 cores).
Channels-last layouts are computed channels first (``Backend.compute`` transposes them).

Backward (issue 24), on the same ``P`` grid, with the same blocks, peak model and scaling:

* data gradient (:func:`fft_data_gradient`): ``grad_input[n, ci, i] = Σ_{co, k} g[n, co, i·s − p + k·d] ·
  W[ci, co, k]``, the correlation of grad_output (placed at offset ``p`` in the linear-size canvas) with the
  dilated kernel, sampled at the stride: ``X̂[n, ci] = Σ_co Ĝ[n, co] · conj(Ŵ_d[ci, co])``, the forward's channel
  GEMM with the channels' roles swapped and the taps' DFT matrices conjugated, then the inverse and every
  ``s``-th sample;
* weight gradient (:func:`fft_weight_gradient`): ``grad_W[ci, co, k] = Σ_{n, i} x[n, ci, i] · g[n, co, i·s − p +
  k·d]``, the cross-correlation of the stride-dilated input with grad_output at the lags ``k·d``:
  ``R[ci, co] = Σ_n conj(X̂_s[n, ci]) · Ĝ[n, co]`` per frequency (a GEMM over the images), taken back to the
  ``k_1·…·k_r`` lags by the adjoint of the per-axis tap DFTs (the kernel-spectrum chain run backwards), so no
  inverse FFT of a ``C_in × C_out`` volume is made. With few images and taps the per-frequency GEMMs (inner
  dimension: the image count) run memory-bound; there each lag is summed over frequencies directly (Parseval),
  one real GEMM per tap with the frequencies and images as its inner dimension (:func:`_per_tap_lag_sums`,
  chosen by :func:`_parseval_cheaper`).

The circular correlations equal the linear ones because every lag that reaches a sample stays within ``P ≥ L``.
``Backend.check`` answers for the forward (the weight gradient holds the same arrays); the data gradient, which
transforms grad_output's channels, raises UnsupportedConfiguration with its own byte count when they do not fit.
The U-Net's k2 s2 shapes are this backend's worst case in every direction (the transforms cover 4× the input's
pixels for 4 taps): on 256→128 @100² float32 the forward took 3.9 s, the data gradient 2.6-4.8 s and the weight
gradient 4.0-5.4 s (10.7 s per frequency) against torch's 0.30, 0.17-0.29 and 0.17-0.31 s (medians of 5 calls, one
thread each, fresh processes, two runs on a busy 2-core Zen 3 host, load 7-9).
"""

import contextlib
import functools
import itertools
import math
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
    """How much of the work one step holds: images, output channels (per group), last-axis frequencies."""

    images: int
    channels: int
    columns: int


#: Bytes of kernel spectra computed at once (a slab of last-axis frequencies), when the workspace limit allows
#: more: a slab is written by one GEMM and read at once by the next, which is fastest while it stays in cache.
#: Swept from 0.25 to 64 MiB on 128→128 k3 @64² and 256→128 k2 s2 @64² (Zen 3, busy host): 1-16 MiB within
#: noise of each other, 64 MiB 1.3-2× slower, 0.25 MiB slower on the U-Net shape.
SLAB_BYTES = 4 * 2**20


def _kernel_stages(kernel_size, fft_shape):
    """Elements per last-axis frequency and per (input, output) channel pair of each array the kernel-spectrum
    chain of :func:`_kernel_spectra` makes, in order: after the last axis's DFT ``(k_1, …, k_{r-1})``, then
    after each earlier axis ``a`` (from ``r-1`` down to 1) ``(k_1, …, k_{a-1}, P_a, …, P_{r-1})``."""
    rank = len(kernel_size)
    return tuple(
        math.prod(kernel_size[:axis]) * math.prod(fft_shape[axis : rank - 1]) for axis in range(rank - 1, -1, -1)
    )


def _kernel_slab_elements(kernel_size, fft_shape):
    """The most of :func:`_kernel_stages` held at once (one GEMM's operand and result), per last-axis frequency
    and channel pair."""
    stages = _kernel_stages(kernel_size, fft_shape)
    return max([stages[0], *(a + b for a, b in itertools.pairwise(stages))])


#: Bytes a call holds beside the arrays :func:`_peak_bytes` names: scale exponents, index tuples, views and the
#: call's Python objects (10-14 KB by tracemalloc at the peak of the 1-D, 2-D and 3-D binding-limit cases of
#: tests/test_memory_limits.py; allowed for with room to spare, so that a block chosen at the limit's edge
#: stays under it).
_SMALL_BYTES = 32 * 2**10


def _channel_roles(problem, direction):
    """``(transformed, blocked)``: the channels whose spectra are computed first and kept per image block, and the
    channels per group that are computed in blocks. Forward: the input's channels, then blocks of output channels.
    The data gradient is the same computation with the roles swapped (grad_output's channels are transformed, the
    input channels blocked); the weight gradient transforms the input's channels and blocks grad_output's."""
    if direction == "backward_data":
        return problem.out_channels, problem.in_per_group
    return problem.in_channels, problem.out_per_group


def _peak_bytes(problem, fft_shape, blocks, direction="forward"):
    """Bytes of temporaries held at once by :func:`fft_convolve` (or the gradient of ``direction``) with
    ``blocks`` (the result excluded).

    Throughout: the per-axis DFT matrices of the taps and :data:`_SMALL_BYTES`. Input step: an image block's
    zero-inserted volumes and their spectra (``rfftn`` writes a new array for the last axis and transforms the
    others in place). Then, kept: those spectra. Per channel block: the output spectra plus either the block's
    taps and a slab's kernel-spectrum chain (two consecutive stages of :func:`_kernel_stages` during each
    GEMM), or the output volumes (``ifft`` in place over each leading axis, then ``irfft`` into a new
    array). The gradients hold the same arrays with the channels of :func:`_channel_roles`: the data gradient's
    are the forward's with input and output channels swapped; the weight gradient holds grad_output's volumes and
    spectra where the forward holds its output's, and the adjoint chain of the kernel spectra (the same stages in
    reverse, ending in a block's taps) where the forward holds the chain."""
    volume, q = math.prod(fft_shape), fft_shape[-1] // 2 + 1
    spectrum = volume // fft_shape[-1] * q
    real = problem.dtype.itemsize
    cplx = 2 * real
    transformed, _ = _channel_roles(problem, direction)
    g = problem.groups
    nb, cb, columns = blocks
    x_planes = nb * transformed * volume * real
    x_hat = nb * transformed * spectrum * cplx
    y_hat = spectrum * g * nb * cb * cplx
    taps = math.prod(problem.kernel_size)
    w_step = (taps + _kernel_slab_elements(problem.kernel_size, fft_shape) * columns) * transformed * cb * cplx
    y_planes = volume * g * nb * cb * real
    dft_matrices = (sum(map(math.prod, zip(fft_shape[:-1], problem.kernel_size))) + q * problem.kernel_size[-1]) * cplx
    return _SMALL_BYTES + dft_matrices + max(x_planes + x_hat, x_hat + y_hat + max(w_step, y_planes))


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


def _blocks(problem, fft_shape, direction="forward"):
    """The blocks of :func:`fft_convolve` (or of the gradient of ``direction``, channels as
    :func:`_channel_roles`), or None if one image, one channel and one frequency do not fit.

    The most images whose input step takes at most half the limit (all of them if they fit: kernel spectra are
    recomputed per image block), then the most output channels that fit the rest, then the most last-axis
    frequencies that fit and (unless a single one exceeds it) keep the kernel slab within :data:`SLAB_BYTES`."""
    return _blocks_under(problem, fft_shape, problem.workspace_limit, SLAB_BYTES, direction)


@functools.lru_cache(maxsize=256)  # the check and the call ask for the same problem's blocks
def _blocks_under(problem, fft_shape, limit, slab_bytes, direction="forward"):
    n = problem.batch
    transformed, cog = _channel_roles(problem, direction)
    slab_elements = _kernel_slab_elements(problem.kernel_size, fft_shape)
    kernel_column = slab_elements * transformed * 2 * problem.dtype.itemsize

    def fits(images, channels=1, columns=1):
        return _peak_bytes(problem, fft_shape, Blocks(images, channels, columns), direction) <= limit

    if not fits(1):
        return None

    def input_step(images):  # the input's transform alone, before any channel block
        return _peak_bytes(problem, fft_shape, Blocks(images, 0, 0), direction)

    images = max(1, _largest(lambda b: fits(b) and input_step(b) <= limit // 2, n))
    channels = _largest(lambda c: fits(images, c) and (c == 1 or c * kernel_column <= slab_bytes), cog)
    columns = _largest(
        lambda f: fits(images, channels, f) and (f == 1 or f * channels * kernel_column <= slab_bytes),
        fft_shape[-1] // 2 + 1,
    )
    return Blocks(images, channels, columns)


#: Transform lengths beyond this are never attempted (scipy refuses above about 2**61; any such volume is far
#: above a workspace limit anyway).
_LONGEST_TRANSFORM = 2**40


#: What the transforms hold per direction, for a refusal: (the transformed array, the blocked one).
_HELD = {
    "forward": ("one image's stride-dilated input", "one output channel"),
    "backward_data": ("one image's output gradient", "one input channel"),
    "backward_weight": ("one image's stride-dilated input", "one output channel's gradient"),
}


def _too_large(problem, direction="forward"):
    """Why even the smallest blocks of ``direction`` do not fit :attr:`Problem.workspace_limit`, or None."""
    limit = problem.workspace_limit
    full = _linear_size(problem)
    if max(full) > _LONGEST_TRANSFORM:  # next_fast_len refuses these: the linear size is a lower bound
        fft_shape, bound = full, "at least"
    else:
        fft_shape, bound = _fft_shape(problem), "about"
        if _blocks(problem, fft_shape, direction) is not None:
            return None
    need = _peak_bytes(problem, fft_shape, Blocks(1, 1, 1), direction)
    transformed, blocked = _HELD[direction]
    channels, _ = _channel_roles(problem, direction)
    return (
        f"the transforms of {transformed} ({channels} channels of {'×'.join(map(str, fft_shape))} samples, "
        f"whatever padding crops) with {blocked} need {bound} {need:.3g} bytes, above the workspace limit of "
        f"{limit:.3g} bytes (testbed.problem.WORKSPACE_BYTES, or twice the call's arrays); "
        + (
            "polyphase and numba_cpu compute only the output"
            if direction == "forward"
            else "the direct backends compute the gradients without transforms"
        )
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
                f"the FFT's rounding error (ε × the largest value, spread over every output of the volume) "
                f"would swamp the smaller outputs ({dtype} carries at most {limit:.3g}×); use a direct "
                f"backend such as polyphase or numba_cpu",
            )
    return np.frexp(largest)[1].astype(np.int64)


def _kernel_spectra(taps, leading_dfts, last_dft):
    """The DFT of ``taps`` (``(k_1, …, k_r, M)``, ``M`` independent kernels) at every frequency of the leading
    axes and the rows of ``last_dft`` (``(slab, k_r)``): ``(P_1, …, P_{r-1}, slab, M)``.

    ``(E_1 ⊗ … ⊗ E_r) · vec(taps)`` one factor at a time (:func:`_kernel_stages` lists the arrays made): the
    last axis first, where a slab is only a few frequencies, then each earlier axis ``a`` as
    ``E_a @ (k_1…k_{a-1}, k_a, rest)``, so the first axis's GEMM, the largest, is one plain GEMM."""
    kernel_size, m = taps.shape[:-1], taps.shape[-1]
    spectra = np.matmul(last_dft, taps.reshape(math.prod(kernel_size[:-1]), kernel_size[-1], m))
    for axis in range(len(kernel_size) - 2, -1, -1):
        before = math.prod(kernel_size[:axis])
        spectra = np.matmul(leading_dfts[axis], spectra.reshape(before, kernel_size[axis], -1))
    return spectra.reshape(*(dft.shape[0] for dft in leading_dfts), last_dft.shape[0], m)


def fft_convolve(x, weight, bias, problem):
    n, g, r = problem.batch, problem.groups, problem.rank
    cig, cog = problem.in_per_group, problem.out_per_group
    in_size, kernel_size, out_size = problem.in_size, problem.kernel_size, problem.out_size
    full = _linear_size(problem)
    fft_shape = _fft_shape(problem)
    leading, q = fft_shape[:-1], fft_shape[-1] // 2 + 1
    spatial = tuple(range(r))
    blocks = _blocks(problem, fft_shape)
    complex_dtype = np.result_type(problem.dtype, np.complex64)
    kernels = weight.reshape(g, cig, cog, *kernel_size)
    x_exp = _scale_exponents(x.reshape(n, -1), lambda i: f"input image {i}", problem.dtype)
    w_exp = _scale_exponents(
        kernels.swapaxes(1, 2).reshape(g * cog, -1),
        lambda i: f"the weights of output channel {i}",
        problem.dtype,
    ).reshape(g, cog)
    leading_dfts = [
        _dft_matrix(range(p), p, k, d, complex_dtype)  # (P_a, k_a)
        for p, k, d in zip(leading, kernel_size, problem.dilation)
    ]
    last_dft = _dft_matrix(range(q), fft_shape[-1], kernel_size[-1], problem.dilation[-1], complex_dtype)
    # The stride-dilated input's samples within each transform, and the output window within the linear
    # convolution (samples past it, output_padding, get no tap).
    inserted = tuple(slice(None, (size - 1) * s + 1, s) for size, s in zip(in_size, problem.stride))
    window_size = tuple(max(0, min(m - p, o)) for m, p, o in zip(full, problem.padding, out_size))
    crop = tuple(slice(p, p + size) for p, size in zip(problem.padding, window_size))
    window_slices = tuple(slice(size) for size in window_size)
    y = np.zeros(problem.output_shape, dtype=problem.dtype)
    out = y.reshape(n, g, cog, *out_size)
    # Setting BLAS's thread count costs ~0.1 ms, more than all the GEMMs of a call below a million
    # multiply-adds.
    small = math.prod(leading) * q * n * problem.in_channels * cog < 2**20
    with contextlib.nullcontext() if small else single_threaded_blas():
        for n0 in range(0, n, blocks.images):
            n1 = min(n, n0 + blocks.images)
            # (P_1, …, P_r, G, images, Ci_g): the stride-dilated, scaled input, frequency-major after rfftn.
            x_planes = np.zeros((*fft_shape, g, n1 - n0, cig), dtype=problem.dtype)
            np.ldexp(
                x[n0:n1].reshape(n1 - n0, g, cig, *in_size).transpose(*(a + 3 for a in spatial), 1, 0, 2),
                -x_exp[n0:n1].reshape(-1, 1),
                out=x_planes[inserted],
            )
            x_hat = scipy.fft.rfftn(x_planes, axes=spatial)  # (P_1, …, Q, G, images, Ci_g)
            del x_planes
            for c0 in range(0, cog, blocks.channels):
                c1 = min(cog, c0 + blocks.channels)
                # (k_1, …, k_r, G·Ci_g·block): the scaled taps, complex for the GEMMs with the DFT matrices.
                taps = np.zeros((*kernel_size, g, cig, c1 - c0), dtype=complex_dtype)
                np.ldexp(
                    kernels[:, :, c0:c1].transpose(*(a + 3 for a in spatial), 0, 1, 2),
                    -w_exp[:, None, c0:c1],
                    out=taps.real,
                )
                taps = taps.reshape(*kernel_size, -1)
                y_hat = np.empty((*leading, q, g, n1 - n0, c1 - c0), dtype=complex_dtype)
                for f0 in range(0, q, blocks.columns):
                    f1 = min(q, f0 + blocks.columns)
                    w_hat = _kernel_spectra(taps, leading_dfts, last_dft[f0:f1])
                    # Channel sum per frequency: (images × Ci_g) · (Ci_g × block) for every (frequency, group).
                    np.matmul(
                        x_hat[..., f0:f1, :, :, :],
                        w_hat.reshape(*leading, f1 - f0, g, cig, c1 - c0),
                        out=y_hat[..., f0:f1, :, :, :],
                    )
                    del w_hat
                del taps  # the inverse's volumes take the taps' place (_peak_bytes: taps or volumes)
                # irfftn in steps: scipy's irfftn copies its input whatever overwrite_x says; ifft honours it (one
                # call per leading axis: ifftn does the same axis by axis, with ~10 µs more Python per call).
                for axis in spatial[:-1]:
                    y_hat = scipy.fft.ifft(y_hat, axis=axis, overwrite_x=True)
                y_planes = scipy.fft.irfft(y_hat, n=fft_shape[-1], axis=r - 1)
                del y_hat
                block = (slice(n0, n1), slice(None), slice(c0, c1), *window_slices)
                window = out[block]
                scale = (x_exp[n0:n1, None, None] + w_exp[None, :, c0:c1]).reshape(*window.shape[:3], *(1,) * r)
                np.ldexp(y_planes[crop].transpose(r + 1, r, r + 2, *spatial), scale, out=window)
                del y_planes
                window += 0.0  # an output is never -0.0 (PyTorch's sign of zero; see naive)
            del x_hat
    if bias is not None:
        y += bias.reshape(1, -1, *(1,) * r)
    return y


# ---- backward: the same spectra, multiplied the other way round -------------------------------------------------


def _declined(problem, direction):
    """Raise UnsupportedConfiguration where even the smallest blocks of ``direction`` exceed the workspace limit
    (``Backend.check`` is asked only the forward's question, and the data gradient transforms other channels)."""
    reason = _too_large(problem, direction)
    if reason is not None:
        raise UnsupportedConfiguration("fft", reason)


def _gradient_window(problem):
    """``(crop, window)``: where the samples of grad_output that any tap reaches lie in the linear convolution
    (``crop``, offset by the padding) and in grad_output (``window``; what lies past it, output_padding beyond
    the linear size, reaches no input and no weight)."""
    window_size = tuple(
        max(0, min(m - p, o)) for m, p, o in zip(_linear_size(problem), problem.padding, problem.out_size)
    )
    crop = tuple(slice(p, p + size) for p, size in zip(problem.padding, window_size))
    return crop, tuple(slice(size) for size in window_size)


def fft_data_gradient(grad_output, weight, problem):
    """``grad_input[n, ci, i] = Σ_{co, k} grad_output[n, co, i·s − p + k·d] · W[ci, co, k]``: the correlation of
    the linear-size canvas holding grad_output at offset ``p`` with the dilated kernel, sampled at ``i·s``.

    In the frequency domain ``X̂[n, ci] = Σ_co Ĝ[n, co] · conj(Ŵ_d[ci, co])``: the forward's channel GEMM with the
    roles of the channels swapped and conjugated kernel spectra (the taps are real, so the conjugate is the taps'
    DFT with conjugated DFT matrices). The circular correlation equals the linear one on the same ``P`` grid: the
    lags that reach an input sample lie in ``(−(n−1)·s, L)`` and ``P ≥ L``. Blocks: images, then input channels,
    then last-axis frequencies (:func:`_blocks` for ``"backward_data"``). Scaling as the forward: per image of
    grad_output, per input channel's weights."""
    _declined(problem, "backward_data")
    n, g, r = problem.batch, problem.groups, problem.rank
    cig, cog = problem.in_per_group, problem.out_per_group
    kernel_size, out_size = problem.kernel_size, problem.out_size
    fft_shape = _fft_shape(problem)
    leading, q = fft_shape[:-1], fft_shape[-1] // 2 + 1
    spatial = tuple(range(r))
    blocks = _blocks(problem, fft_shape, "backward_data")
    complex_dtype = np.result_type(problem.dtype, np.complex64)
    kernels = weight.reshape(g, cig, cog, *kernel_size)
    crop, window = _gradient_window(problem)
    reached = grad_output.reshape(n, g, cog, *out_size)[(slice(None),) * 3 + window]
    g_exp = _scale_exponents(reached.reshape(n, -1), lambda i: f"output gradient image {i}", problem.dtype)
    w_exp = _scale_exponents(
        weight.reshape(problem.in_channels, -1), lambda i: f"the weights of input channel {i}", problem.dtype
    ).reshape(g, cig)
    leading_dfts = [
        _dft_matrix(range(p), p, k, d, complex_dtype).conj()  # conj(E_a): the conjugate spectra of real taps
        for p, k, d in zip(leading, kernel_size, problem.dilation)
    ]
    last_dft = _dft_matrix(range(q), fft_shape[-1], kernel_size[-1], problem.dilation[-1], complex_dtype).conj()
    inserted = tuple(slice(None, (size - 1) * s + 1, s) for size, s in zip(problem.in_size, problem.stride))
    grad_input = np.empty(problem.input_shape, dtype=problem.dtype)
    into = grad_input.reshape(n, g, cig, *problem.in_size)
    small = math.prod(leading) * q * n * problem.out_channels * cig < 2**20  # as the forward
    with contextlib.nullcontext() if small else single_threaded_blas():
        for n0 in range(0, n, blocks.images):
            n1 = min(n, n0 + blocks.images)
            # (P_1, …, P_r, G, images, Co_g): grad_output placed at offset p in the canvas, scaled.
            g_planes = np.zeros((*fft_shape, g, n1 - n0, cog), dtype=problem.dtype)
            np.ldexp(
                reached[n0:n1].transpose(*(a + 3 for a in spatial), 1, 0, 2),
                -g_exp[n0:n1].reshape(-1, 1),
                out=g_planes[crop],
            )
            g_hat = scipy.fft.rfftn(g_planes, axes=spatial)  # (P_1, …, Q, G, images, Co_g)
            del g_planes
            for c0 in range(0, cig, blocks.channels):
                c1 = min(cig, c0 + blocks.channels)
                # (k_1, …, k_r, G·Co_g·block): the block of input channels' scaled taps, output channels first.
                taps = np.zeros((*kernel_size, g, cog, c1 - c0), dtype=complex_dtype)
                np.ldexp(
                    kernels[:, c0:c1].transpose(*(a + 3 for a in spatial), 0, 2, 1),
                    -w_exp[:, None, c0:c1],
                    out=taps.real,
                )
                taps = taps.reshape(*kernel_size, -1)
                x_hat = np.empty((*leading, q, g, n1 - n0, c1 - c0), dtype=complex_dtype)
                for f0 in range(0, q, blocks.columns):
                    f1 = min(q, f0 + blocks.columns)
                    w_hat = _kernel_spectra(taps, leading_dfts, last_dft[f0:f1])  # conj(Ŵ_d)
                    # Channel sum per frequency: (images × Co_g) · (Co_g × block) for every (frequency, group).
                    np.matmul(
                        g_hat[..., f0:f1, :, :, :],
                        w_hat.reshape(*leading, f1 - f0, g, cog, c1 - c0),
                        out=x_hat[..., f0:f1, :, :, :],
                    )
                    del w_hat
                del taps
                for axis in spatial[:-1]:  # in place, as the forward's inverse
                    x_hat = scipy.fft.ifft(x_hat, axis=axis, overwrite_x=True)
                x_planes = scipy.fft.irfft(x_hat, n=fft_shape[-1], axis=r - 1)
                del x_hat
                block = into[n0:n1, :, c0:c1]
                scale = (g_exp[n0:n1, None, None] + w_exp[None, :, c0:c1]).reshape(*block.shape[:3], *(1,) * r)
                np.ldexp(x_planes[inserted].transpose(r + 1, r, r + 2, *spatial), scale, out=block)
                del x_planes
            del g_hat
    grad_input += 0.0  # never -0.0, as the forward's outputs
    return grad_input


def _adjoint_kernel_spectra(spectra, leading_adjoints, last_adjoint):
    """The adjoint of :func:`_kernel_spectra`: ``spectra`` (``(P_1, …, P_{r-1}, slab, M)``) taken back to the
    taps, ``(k_1, …, k_r, M)``, through ``leading_adjoints`` (``E_a^H``, ``k_a × P_a``) and ``last_adjoint``
    (``k_r × slab``).

    The same stages as the forward chain in reverse order: the first axis first, one plain GEMM (the largest),
    then each later leading axis ``a`` as ``E_a^H @ (k_1…k_{a-1}, P_a, rest)``, the last axis's slab last."""
    m = spectra.shape[-1]
    for axis, adjoint in enumerate(leading_adjoints):
        before = math.prod(dft.shape[0] for dft in leading_adjoints[:axis])
        spectra = np.matmul(adjoint, spectra.reshape(before, adjoint.shape[1], -1))
    taps_leading = math.prod(dft.shape[0] for dft in leading_adjoints)
    result = np.matmul(last_adjoint, spectra.reshape(taps_leading, last_adjoint.shape[1], m))
    return result.reshape(*(dft.shape[0] for dft in leading_adjoints), last_adjoint.shape[0], m)


#: The per-tap form's speed relative to the per-frequency form's, per multiply-add of :func:`_parseval_cheaper`'s
#: counts (one large real GEMM per tap against complex GEMMs whose inner dimension is the image count). Fitted on
#: weight gradients, float32, one thread, busy 2-core Zen 3: 128→64 k3 s2 @32² per-tap / per-frequency 132 / 218 ms
#: with 1 image, 1384 / 473 ms with 8, k4 with 4 images 1306 / 297 ms; U-Net 256→128 k2 s2 @100², 1 image,
#: 4.0 / 10.7 s (speedups per counted multiply-add 1.3-1.8).
PARSEVAL_SPEEDUP = 1.5


def _parseval_cheaper(problem, images):
    """Whether :func:`_per_tap_lag_sums` beats the per-frequency products for ``images`` images: it costs
    ``2·taps·images`` real multiply-adds per frequency and channel pair in one large GEMM per tap, the
    per-frequency form ``≈ 4·(images + k_1)`` (the image-sum GEMM and the adjoint chain, complex) in GEMMs whose
    inner dimension is the image count."""
    taps = math.prod(problem.kernel_size)
    return 2 * taps * images <= PARSEVAL_SPEEDUP * 4 * (images + problem.kernel_size[0])


def _per_tap_lag_sums(x_hat, g_hat, leading_adjoints, last_adjoint, chunk, accumulator, kernel_size):
    """``accumulator[k, g] += Re Σ_{f, n} c_k(f) · conj(X̂[f, g, :, n])ᵀ · Ĝ[f, g, n, :]`` (Parseval: the lag-``k``
    correlation as a sum over frequencies), ``c_k(f) = Π_a E_a^H[k_a, f_a]`` with the last axis's half-spectrum
    weights and ``1/P`` folded in (``last_adjoint``), one real GEMM per tap, group and chunk of frequencies:
    ``[Re A, −Im A] @ [Re Ĝ; Im Ĝ]`` with ``A = c_k · conj(X̂)`` and the frequencies and images as the inner
    dimension. ``x_hat`` (``(P_1, …, Q, G, Ci_g, images)``) holds ``conj(X̂)`` already; ``accumulator`` is
    ``(k_1, …, k_r, G, Ci_g, block)``."""
    *leading, q, g, cig, nb = x_hat.shape
    cb = g_hat.shape[-1]
    frequencies = math.prod(leading) * q
    conj_x = x_hat.reshape(frequencies, g, cig, nb)
    grad = g_hat.reshape(frequencies, g, nb, cb)
    real = x_hat.real.dtype
    for f0 in range(0, frequencies, chunk):
        f1 = min(frequencies, f0 + chunk)
        at = np.unravel_index(np.arange(f0, f1), (*leading, q))  # each frequency's index per axis
        for group in range(g):
            xr = np.ascontiguousarray(conj_x[f0:f1, group].real.transpose(1, 0, 2))  # (Ci_g, chunk, images)
            xi = np.ascontiguousarray(conj_x[f0:f1, group].imag.transpose(1, 0, 2))
            stacked = np.empty((2, f1 - f0, nb, cb), dtype=real)  # [Re Ĝ; Im Ĝ]
            stacked[0], stacked[1] = grad[f0:f1, group].real, grad[f0:f1, group].imag
            products = np.empty((cig, 2, f1 - f0, nb), dtype=real)  # [Re A, −Im A]
            scratch = np.empty_like(xr)
            for taps in itertools.product(*(range(k) for k in kernel_size)):
                coefficient = last_adjoint[taps[-1], at[-1]]
                for axis, adjoint in enumerate(leading_adjoints):
                    coefficient = coefficient * adjoint[taps[axis], at[axis]]
                cr, ci = coefficient.real[:, None], coefficient.imag[:, None]
                np.multiply(xr, cr, out=products[:, 0])
                np.multiply(xi, ci, out=scratch)
                products[:, 0] -= scratch  # Re A = cr·xr − ci·xi
                np.multiply(xr, ci, out=products[:, 1])
                np.multiply(xi, cr, out=scratch)
                products[:, 1] += scratch
                np.negative(products[:, 1], out=products[:, 1])  # −Im A = −(ci·xr + cr·xi)
                into = (*taps, group)
                accumulator[into] += products.reshape(cig, -1) @ stacked.reshape(-1, cb)


def fft_weight_gradient(grad_output, x, problem):
    """``grad_W[ci, co, k] = Σ_{n, i} x[n, ci, i] · grad_output[n, co, i·s − p + k·d]``: the cross-correlation of
    the stride-dilated input with grad_output (placed at offset ``p`` in the linear-size canvas), read at the lags
    ``k·d``.

    In the frequency domain ``R[ci, co] = Σ_n conj(X̂_s[n, ci]) · Ĝ[n, co]`` per frequency (a GEMM over the
    images), and only ``k_1·…·k_r`` lags of its inverse are wanted, so the inverse is the adjoint of the kernel
    spectra's per-axis DFTs (:func:`_adjoint_kernel_spectra`) rather than an inverse FFT of a ``C_in × C_out``
    volume: ``r[t] = (1/P) Σ_f R(f) e^{+2πi f·t/P}``, and over the half spectrum of the last axis ``Re`` of the
    sum with the frequencies that stand for their mirror image (all but 0 and ``P_r/2``) counted twice. The lags
    stay inside the linear size (``j + t ≤ L − 1 < P``), so the circular correlation is the linear one. Blocks:
    images (the image sum is accumulated across blocks), then output channels, then last-axis frequencies
    (:func:`_blocks` for ``"backward_weight"``). Scaling by powers of two per channel (per input channel of ``x``,
    per output channel of grad_output, over the whole batch) so that the image sum needs no rescaling."""
    _declined(problem, "backward_weight")
    n, g, r = problem.batch, problem.groups, problem.rank
    cig, cog = problem.in_per_group, problem.out_per_group
    kernel_size, out_size = problem.kernel_size, problem.out_size
    fft_shape = _fft_shape(problem)
    leading, q = fft_shape[:-1], fft_shape[-1] // 2 + 1
    spatial = tuple(range(r))
    blocks = _blocks(problem, fft_shape, "backward_weight")
    complex_dtype = np.result_type(problem.dtype, np.complex64)
    crop, window = _gradient_window(problem)
    reached = grad_output.reshape(n, g, cog, *out_size)[(slice(None),) * 3 + window]
    x_exp = _scale_exponents(
        x.reshape(n, problem.in_channels, -1).swapaxes(0, 1).reshape(problem.in_channels, -1),
        lambda i: f"input channel {i}",
        problem.dtype,
    ).reshape(g, cig)
    g_exp = _scale_exponents(
        reached.reshape(n, g * cog, -1).swapaxes(0, 1).reshape(g * cog, -1),
        lambda i: f"output gradient channel {i}",
        problem.dtype,
    ).reshape(g, cog)
    leading_adjoints = [
        _dft_matrix(range(p), p, k, d, complex_dtype).conj().T  # E_a^H: (k_a, P_a)
        for p, k, d in zip(leading, kernel_size, problem.dilation)
    ]
    # E_r^H over the half spectrum, each frequency weighted by how many of the full spectrum it stands for and the
    # inverse transform's 1/(P_1·…·P_r) folded in.
    last_weights = np.full(q, 2.0)
    last_weights[0] = 1.0
    if fft_shape[-1] % 2 == 0:
        last_weights[-1] = 1.0
    last_adjoint = (
        _dft_matrix(range(q), fft_shape[-1], kernel_size[-1], problem.dilation[-1], complex_dtype).conj()
        * (last_weights / math.prod(fft_shape))[:, None]
    ).T.astype(complex_dtype)
    inserted = tuple(slice(None, (size - 1) * s + 1, s) for size, s in zip(problem.in_size, problem.stride))
    grad_weight = np.zeros(problem.weight_shape, dtype=problem.dtype)
    # (k_1, …, k_r, G, Ci_g, Co_g): the accumulator's view, in the order the adjoint chain yields.
    taps_major = grad_weight.reshape(g, cig, cog, *kernel_size).transpose(*(a + 3 for a in spatial), 0, 1, 2)
    small = math.prod(leading) * q * n * problem.in_channels * cog < 2**20  # as the forward
    with contextlib.nullcontext() if small else single_threaded_blas():
        for n0 in range(0, n, blocks.images):
            n1 = min(n, n0 + blocks.images)
            # (P_1, …, P_r, G, Ci_g, images): the stride-dilated, scaled input, images last for the image-sum GEMM.
            x_planes = np.zeros((*fft_shape, g, cig, n1 - n0), dtype=problem.dtype)
            np.ldexp(
                x[n0:n1].reshape(n1 - n0, g, cig, *problem.in_size).transpose(*(a + 3 for a in spatial), 1, 2, 0),
                -x_exp[..., None],
                out=x_planes[inserted],
            )
            x_hat = scipy.fft.rfftn(x_planes, axes=spatial)  # (P_1, …, Q, G, Ci_g, images)
            del x_planes
            np.conjugate(x_hat, out=x_hat)
            for c0 in range(0, cog, blocks.channels):
                c1 = min(cog, c0 + blocks.channels)
                g_planes = np.zeros((*fft_shape, g, n1 - n0, c1 - c0), dtype=problem.dtype)
                np.ldexp(
                    reached[n0:n1, :, c0:c1].transpose(*(a + 3 for a in spatial), 1, 0, 2),
                    -g_exp[:, None, c0:c1],
                    out=g_planes[crop],
                )
                g_hat = scipy.fft.rfftn(g_planes, axes=spatial)  # (P_1, …, Q, G, images, block)
                del g_planes
                budget = _kernel_slab_elements(kernel_size, fft_shape) * blocks.columns * problem.in_channels
                # Frequencies per chunk: its real arrays (5·Ci_g·images + 2·images·block per frequency) within half
                # the kernel chain's budget, which keeps the measured peak (NumPy's copies of strided operands
                # included) under the model (tests/test_numpy_backends.py, tracemalloc at the binding limit).
                chunk = budget * (c1 - c0) // ((5 * cig + 2 * (c1 - c0)) * (n1 - n0))
                if chunk >= 1 and _parseval_cheaper(problem, n1 - n0):
                    _per_tap_lag_sums(
                        x_hat, g_hat, leading_adjoints, last_adjoint, chunk, taps_major[..., c0:c1], kernel_size
                    )
                    del g_hat
                    continue
                for f0 in range(0, q, blocks.columns):
                    f1 = min(q, f0 + blocks.columns)
                    # The image sum per frequency: (Ci_g × images) · (images × block) for every (frequency, group).
                    products = np.matmul(x_hat[..., f0:f1, :, :, :], g_hat[..., f0:f1, :, :, :])
                    lags = _adjoint_kernel_spectra(
                        products.reshape(*leading, f1 - f0, -1), leading_adjoints, last_adjoint[:, f0:f1]
                    )
                    del products
                    accumulator = taps_major[..., c0:c1]
                    accumulator += lags.real.reshape(accumulator.shape)
                    del lags
                del g_hat
            del x_hat
    scale = (x_exp[:, :, None] + g_exp[:, None, :]).reshape(problem.in_channels, cog, *(1,) * r)
    np.ldexp(grad_weight, scale, out=grad_weight)
    return grad_weight


register(
    Backend(
        name="fft",
        description="convolution theorem: rfftn of the stride-dilated input × kernel spectrum, summed over channels",
        run=fft_convolve,
        check=_too_large,
        ranks=(1, 2, 3),
        backward_data=fft_data_gradient,
        backward_weight=fft_weight_gradient,
    )
)
