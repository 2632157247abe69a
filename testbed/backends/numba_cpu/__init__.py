"""``numba_cpu``: parallel Numba kernels (``prange`` over output rows or planes, each owned by one thread)
around at most one BLAS GEMM per group; the algorithm is chosen per configuration by :func:`choose_path`.

The package keeps apart what BLIS keeps apart: the portable algorithms, the micro-kernels and the
per-architecture table.

* one module per path (the algorithm, its kernels and the wrapper that allocates and calls them):
  :mod:`.direct`, :mod:`.gemm_col2im`, :mod:`.nonoverlap_gemm`, :mod:`.blocked_direct`, :mod:`.nonoverlap_direct`;
* :mod:`.ranks`: 1-D problems as one row of a 2-D one (views, every path), 3-D ones natively by
  ``nonoverlap_direct`` (stride == kernel) or as a sum over depth taps of 2-D problems (any path);
* the backward pass: :mod:`.backward_data` and :mod:`.backward_weight`, every rank as 3-D views: the columns of the
  output gradient (:mod:`.backward_columns`, the pixel unshuffle at stride == kernel), then blocks of one GEMM,
  each block one single-threaded BLAS call owning its outputs (bitwise repeatable on any thread count);
* :mod:`.intrinsics`: the LLVM-IR register-tile micro-kernels (FMA panels), stack tiles and prefetches;
* :mod:`.packing`: the operands rearranged for the micro-kernels;
* :mod:`.tasks`: dynamic hand-out of tasks to the threads of a kernel (the BLAS GEMM callable from kernels, and
  the BLAS thread count around it, are :mod:`testbed.backends._blas`, shared with ``fft``);
* :mod:`.blocking`: one row per instruction set (``avx512``, ``avx2``, ``generic``): the register tile, cache
  blocks, prefetch distances and thresholds; the row is :func:`testbed.isa.selected_isa`'s, decided once per
  process (a cap above the CPU raises at the first call, not at import).

:func:`run_path` is the one seam through which tests and experiments run a given path, under a given row
(``isa=``) or blocking (``blocking=``), without the dispatcher: ``run_path("blocked_direct", x, w, b, problem,
isa="avx512")``. Every row's kernels compute bitwise the same result on every host (the sums run in the same
order; LLVM legalises a wider vector into narrower instructions), only at different speeds.

Why so few BLAS calls (and not the per-phase sub-pixel GEMMs of ``polyphase``): on a busy 2-core host every
multithreaded BLAS call and every Numba parallel region waits for its second thread to be scheduled, and
alternating OpenBLAS's spinning pool with Numba's costs more than the arithmetic of a small GEMM. The
sub-pixel form needs ``s_h·s_w`` GEMMs plus a column build; measured 3–10× slower than ``gemm_col2im`` on the
decoder shapes here.

No thread ever writes an element another thread writes, and every summation order is fixed (from +0.0, taps
in ``(kh, kw)`` order, channels inside the GEMM or in ascending order, the bias last), so results are bitwise
repeatable (``blocked_direct``'s do not even depend on its tiles), and an output is never -0.0 (PyTorch's
sign of zero).

Resources follow the output, not the parameters: the per-plane accumulators hold ``min(s_w, W_out)`` phases
of ``ceil(W_out / s_w)`` columns (a stride of 10⁹ or 2⁶² costs nothing), all index arithmetic stays inside
int64 (``Problem`` refuses parameters whose extent does not fit), and the GEMM paths are taken only when one
image's column buffer ``C_out·kH·kW·H·W`` fits :attr:`Problem.workspace_limit` (a 128×128 kernel would need
gigabytes for a 1 MB output): beyond it ``blocked_direct`` (or ``direct``) computes the same products with no
buffer at all; ``blocked_direct``'s accumulators are a fixed stack tile per thread.

Threads and fork: the kernels are :func:`.._runtime.parallel_kernel` s, safe to call from several threads under
every Numba threading layer and in children forked after a parallel call (see ``_runtime``).

NaN/inf: every path forms exactly the (input pixel, tap) products of the scatter definition (no padding, no
zero-inserted input, no multiplication by a filler zero; the GEMM paths' products for outputs cropped away
by ``padding`` are never read), so NaN/inf in ``x``, ``W`` or the bias reach exactly the outputs the
definition says.
"""

from __future__ import annotations

from ...registry import Backend, register, run_converted
from . import blocked_direct, direct, gemm_col2im, nonoverlap_direct, nonoverlap_gemm, ranks
from . import blocking as _blocking
from .backward_data import run as run_backward_data
from .backward_weight import run as run_backward_weight
from .blocking import Blocking

__all__ = ["NHWC_PATHS", "PATHS", "choose_path", "describe", "run_path"]

#: The algorithms of this backend, each a module of this package.
PATHS = ("direct", "nonoverlap_gemm", "gemm_col2im", "blocked_direct", "nonoverlap_direct")

#: The paths that compute NHWC natively; the others get NHWC arrays transposed to NCHW and back.
NHWC_PATHS = ("nonoverlap_gemm", "blocked_direct", "nonoverlap_direct")

_MODULES = {
    "direct": direct,
    "nonoverlap_gemm": nonoverlap_gemm,
    "gemm_col2im": gemm_col2im,
    "blocked_direct": blocked_direct,
    "nonoverlap_direct": nonoverlap_direct,
}


def choose_path(problem, blocking: Blocking | None = None) -> str:
    """The algorithm (one of :data:`PATHS`) ``numba_cpu`` runs for ``problem`` under ``blocking``'s thresholds
    (default: this process's row, :func:`.blocking.blocking`).

    For overlapping taps, from ``python -m experiments.numba_cpu_paths --rounds 2`` (two threads: median ms, float32,
    2 rounds of fresh workers taking turns, 2026-12-06, 2-core AMD EPYC (Zen 3, AVX2), load average 1.0-1.4, with
    ``gemm_col2im`` as it is now, GEMM and col2im in one Numba parallel region) and, for one thread, an earlier run of
    ``--threads 1`` (load average 0.7-2):

    ============================  =========  ===========  ======  =========  ===========  ======
    shape                         2 threads                       1 thread (earlier run)
    ----------------------------  -------------------------------  -------------------------------
    (decoder suite + extras)      blocked    gemm_col2im  direct  blocked    gemm_col2im  direct
    ============================  =========  ===========  ======  =========  ===========  ======
    k4s2p1 256→128 @32²           11.6       9.11         120     21         16           284
    k3s2p1op1 128→64 @64²         7.98       6.09         39      13         9.3          76
    k3s1p1 64→64 @64²             2.96       3.25         21      5.1        4.9          41
    k3d2 64→64 @64² dilation 2    3.61       3.37         20      5.0        5.3          55
    k4s2g8 256→256 g8 @32²        3.78       3.76         29      8.1        9.5          60
    k5s3 64→32 @32²               1.34       1.36         11      2.2        2.4          23
    k2s1 64→64 @32² N4            1.34       1.89         13      4.4        3.9          42
    k7s1p3 32→32 @32² N2          1.54       2.56         20      4.6        18           65
    k2s3 64→64 @32² (gaps)        1.70       1.42         7.8     5.5        2.5          21
    dcgan_head 512→256 @8² N8     19         18.6         826     36         31           1850
    wide 1024→512 @4² N16         47         33.7         3360    150        74           7340
    dcgan_rgb 64→3 @32² N8        3.73       0.83         6.7     6.3        1.2          11
    thin8 8→8 @64² N2             0.79       0.79         1.1     1.1        0.98         2.0
    g16 64→64 g16 @64²            4.34       1.90         2.5     9.3        4.5          5.1
    depthwise 128 g128 @64²       23         4.09         2.25    44         23           4.4
    ============================  =========  ===========  ======  =========  ===========  ======

    Two threads, run to run (this run and one before it): ``blocked_direct`` wins on stride 1 with small channel
    counts and large kernels (k3s1p1, k2s1, k7s1p3, k5s3), ``gemm_col2im`` where the GEMM is deep or the taps leave
    gaps (wide, dcgan_head, k2s3, thin outputs), the two within noise of each other on k4s2p1, k3d2 and k4s2g8 (the
    winner changed between the runs), and ``gemm_col2im`` ahead by 25 % on k3s2p1op1 (128 input channels) in both.
    The rule took ``gemm_col2im`` from ``gemm_min_in_per_group`` = 256 input channels per group (k4s2p1, the
    vocoder's voc1 and voc2), not from 128: the vocoder's voc3 (128→64, k4 s2, one row of 5504) goes the other way
    (in one process, interleaved: 4.6 against ``blocked_direct``'s 3.7 ms). Before ``gemm_col2im`` ran its GEMM in
    Numba's threads (a multithreaded OpenBLAS call, then Numba's gather) it lost on every decoder shape with two
    threads, each pool waiting for its second thread (voc1: 8.0 ms on two threads, 5.1 on one).

    After ``blocked_direct``'s weight panels and NCHW write-out (3-7 % on one thread), the 2-D shapes with 256-512
    input channels went the other way (``python -m experiments.numba_cpu_paths --shapes
    k4s2p1,k3s2p1op1,k4s2g8,k3d2,dcgan_head --rounds 3``, then ``--shapes wide_4x4,k2s3_gaps,k2s1,k7s1p3 --rounds 2``,
    2 threads, same host, load 0.9-1.4; median (min) ms, ``blocked_direct`` / ``gemm_col2im``): k4s2p1 7.98 (7.21) /
    8.26 (7.53), dcgan_head 14.2 (13.9) / 15.6 (15.2), k3s2p1op1 5.51 / 6.12, k4s2g8 4.04 (2.88) / 3.82 (3.65),
    wide_4x4 33.7 / 32.4, k2s3_gaps 1.53 / 1.38. So on images of several rows ``gemm_col2im`` starts at
    ``gemm_min_in_per_group_2d`` = 1024 input channels per group (wide), on one row (1-D) still at 256: there, in one
    process interleaved, voc1 5.1 / 3.2 ms and voc2 6.5 / 5.2 (one row reuses each weight for few pixels).

    At rank 1 the path of the 2-D problem of one row (:func:`.ranks.as_2d`; ``blocked_direct`` splits the row's
    columns into work items and reads an NCL input as given); the 2-D rule sends voc1 and voc2 (512 and 256 input
    channels) to ``gemm_col2im`` and voc3, voc4 to ``blocked_direct``. At rank 3 ``nonoverlap_direct``
    where it suits (stride == kernel of width 2, no padding, at most ``nonoverlap_max_taps`` taps: the nnU-Net
    up-convolution, with no pixel minimum: the alternative reads and writes the output once per depth tap), else
    the path of the 2-D problem of one depth tap (:func:`.ranks.depth_slice_problem`), which :func:`run_path` runs
    once per depth tap (:func:`.ranks.depth_taps`).
    """
    b = _blocking.blocking() if blocking is None else blocking
    if problem.rank == 1:  # one row of a 2-D problem (see .ranks)
        return choose_path(ranks.as_2d(problem), b)
    if problem.rank == 3:  # stride == kernel natively, else a sum over depth taps of the 2-D path's problems
        if problem.is_nonoverlapping and nonoverlap_direct.suits(problem, b):
            return "nonoverlap_direct"
        return choose_path(ranks.depth_slice_problem(problem), b)
    if problem.in_per_group * problem.out_per_group < b.direct_max_channel_product:
        return "direct"
    if problem.is_nonoverlapping and nonoverlap_direct.suits(problem, b):
        return "nonoverlap_direct"
    if problem.is_nonoverlapping:
        # blocks of the GEMM: no column buffer, any size; sizes past BLAS's 32-bit integers: the gather
        return "nonoverlap_gemm" if nonoverlap_gemm.fits_blas(problem) else "direct"
    if gemm_col2im.column_bytes_per_image(problem) > problem.workspace_limit or not gemm_col2im.fits_blas(problem):
        return "blocked_direct"
    if problem.out_per_group < b.blocked_min_out_per_group:
        return "gemm_col2im" if problem.groups == 1 else "direct"
    deep = b.gemm_min_in_per_group if problem.in_size[0] == 1 else b.gemm_min_in_per_group_2d
    if problem.in_per_group >= deep or _taps_leave_gaps(problem):
        return "gemm_col2im"
    return "blocked_direct"


def _taps_leave_gaps(problem) -> bool:
    """No two taps reach the same output (stride ≥ the dilated kernel extent along both axes)."""
    return all(s >= d * (k - 1) + 1 for s, d, k in zip(problem.stride, problem.dilation, problem.kernel_size))


def run_path(name, x, weight, bias, problem, out=None, *, isa=None, blocking=None, **options):
    """``numba_cpu`` forced onto path ``name`` (one of :data:`PATHS`), as the dispatcher would run it: arrays in
    ``problem.layout`` (converted through NCHW for a path outside :data:`NHWC_PATHS`), the result written into
    ``out`` when given.

    ``isa`` (a :data:`testbed.isa.ISA_ROWS` row) runs that row's kernels and blocking, whatever this process's
    row; ``blocking`` (a :class:`.blocking.Blocking`, e.g. ``dataclasses.replace(blocking.ROWS["avx2"],
    block_bytes=4096)``) gives every field; default: this process's row. ``options`` go to the path (``blocked_direct``
    takes ``tile_co``, ``tile_rows`` and ``tile_cols``). The path must be able to compute ``problem``
    (``nonoverlap_*``: stride == kernel, dilation 1), else ``ValueError``. Every path computes every rank: a 1-D
    problem as one row of a 2-D one, a 3-D one as a sum over depth taps of the path's 2-D problems, but
    ``nonoverlap_direct`` computes 3-D natively wherever its kernels can (:mod:`.ranks`)."""
    if name not in _MODULES:
        raise ValueError(f"name: expected one of {', '.join(PATHS)}, got {name!r}")
    if isa is not None and blocking is not None:
        raise ValueError(f"isa={isa!r} and blocking: give one of them")
    if blocking is None:
        blocking = _blocking.blocking(isa)
    elif not isinstance(blocking, Blocking):
        raise TypeError(f"blocking: expected a numba_cpu Blocking, got {type(blocking).__name__}")
    if name.startswith("nonoverlap") and not problem.is_nonoverlapping:
        raise ValueError(
            f"{name} needs stride == kernel and dilation 1, got stride {problem.stride}, kernel "
            f"{problem.kernel_size}, dilation {problem.dilation}"
        )
    if problem.rank == 1:  # the 2-D problem of one row, on views (see .ranks)
        flat = ranks.as_2d(problem)
        x_2d, weight_2d, out_2d = ranks.views_2d(x, weight, out, problem)
        y = run_path(name, x_2d, weight_2d, bias, flat, out_2d, blocking=blocking, **options)
        return y[:, 0] if problem.channels_last else y[:, :, 0]
    if problem.rank == 3 and not (name == "nonoverlap_direct" and nonoverlap_direct.computes(problem, blocking)):

        def run_2d(x, weight, bias, problem_2d):
            return run_path(name, x, weight, bias, problem_2d, blocking=blocking, **options)

        return ranks.depth_taps(run_2d, x, weight, bias, problem, out, buffer_bytes=blocking.column_buffer_bytes)

    def runner(x, weight, bias, problem, out=None):
        return _MODULES[name].run(x, weight, bias, problem, out, blocking=blocking, **options)

    if problem.layout == "NHWC" and name not in NHWC_PATHS:
        return run_converted(runner, x, weight, bias, problem, "NCHW", out)
    return runner(x, weight, bias, problem, out)


def numba_conv_transpose2d(x, weight, bias, problem, out=None):
    return run_path(choose_path(problem), x, weight, bias, problem, out)


def describe(problem) -> str:
    """The path ``numba_cpu`` takes for ``problem`` and the ISA row its kernels were built for (for ``explain``)."""
    row = _blocking.blocking()
    path = choose_path(problem, row)
    if problem.rank == 1:
        how = " (the 1-D problem as one row of a 2-D one)"
    elif problem.rank == 3 and path != "nonoverlap_direct":
        how = " per depth tap (the 3-D problem as a sum over its depth taps of 2-D problems)"
    else:
        how = ""
    return (
        f"path {path}{how}, kernels of the {row.isa} row ({row.vector_bytes}-byte vectors, "
        f"register tile {row.panel_pixels} × {row.panel_vectors} vectors)"
    )


register(
    Backend(
        name="numba_cpu",
        description="Numba prange kernels: one GEMM + fused pixel shuffle (stride == kernel) or gathering "
        "col2im (overlapping taps), or an output-stationary gather (depthwise, tiny channels)",
        run=numba_conv_transpose2d,
        writes_out=True,
        layouts=("NCHW", "NHWC"),
        describe=describe,
        ranks=(1, 2, 3),
        backward_data=run_backward_data,  # columns of grad_output (pixel unshuffle at stride == kernel) + GEMM blocks
        backward_weight=run_backward_weight,  # the same columns, GEMM blocks of the weight reduced in a fixed order
    )
)
