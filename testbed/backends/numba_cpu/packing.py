"""``numba_cpu``'s packing routines: the operands rearranged once per call so that the micro-kernels stream them.

* :func:`to_channels_last`: the NCHW input as NHWC (a pixel's channels one contiguous run, for the broadcasts);
* :func:`pack_panel`: the weight as GEMM panels ``(G, C_out/G⁺/L, kH, kW, C_in/G, L)`` (``nonoverlap_direct``
  NHWC; :func:`pack_weight`, all of them, for ``blocked_direct``);
* :func:`row_tiles_packer`: as tiles of ``P`` weight rows ``(G, ⌈R/P⌉, C_in/G, P)`` (``nonoverlap_direct`` NCHW);

``L`` is a panel vector's lanes and ``P`` the register tile's rows, from the :mod:`.blocking` row. The
``*_weight`` and :func:`channels_last_input` wrappers give the packed operands a home in this thread's kept
workspace (:mod:`testbed.workspace`), so a repeated call allocates nothing.
"""

import functools
import math

import numpy as np
from numba import prange

from ... import workspace
from .._runtime import parallel_kernel, serial_kernel
from .intrinsics import prefetch, transpose_runs

__all__ = [
    "channels_last_input",
    "pack_panel",
    "pack_weight",
    "packed_weight",
    "panel_weight",
    "round_up",
    "row_tiles_packer",
    "row_weight",
    "to_channels_last",
]


@functools.cache
def row_tiles_packer(panel):
    """The packer of ``nonoverlap_direct``'s NCHW weight rows for tiles of ``panel`` rows (a constant of the compiled
    code, so that a tile's run is one vector copy); one function per tile height, each with its own cache entries."""

    def _pack_row_tiles(weight, rows, g, t0, t1, ahead_rows):
        """``rows[g, t, ci, e] = weight[g·Ci_g + ci].flat[P·t + e]`` for the tiles ``t0 <= t < t1`` (``P``, the
        register tile's rows, ``rows.shape[3]``), zero in the rows past ``R = C_out/G·kD·kH·kW``:
        ``nonoverlap_direct``'s NCHW broadcast operand. Weight row by weight row (``ci``), a run of ``P·(t1 - t0)``
        values split into the tiles, each tile's ``P`` values one vector load and store
        (:func:`.intrinsics.transpose_runs` of a ``P × 1`` block: LLVM splits a width such as 6 into the target's
        moves); the weight rows are a whole row apart (10 KB on unet3d1), a stride the hardware prefetchers do not
        follow, so each one's lines are asked for ``ahead_rows`` rows ahead. Measured on unet3d1's 3.1 MiB weight
        (P = 6), one thread, thread CPU time, median (min) of 40, in 32-tile chunks: 0.26 (0.21) ms, against 1.24
        (1.08) for the element-by-element copy before it and 0.12 (0.09) for a plain copy of the weight; tile by
        tile instead of row by row, 0.32 (0.31)."""
        tiles, per_group_in = rows.shape[1], rows.shape[2]
        useful = weight.size // weight.shape[0]  # C_out/G·taps: one weight row, at any rank
        source, target = weight.reshape(-1), rows.reshape(-1)
        zero = np.zeros(1, dtype=rows.dtype)[0]
        whole = min(t1, useful // panel)  # tiles of P useful rows
        for ci in range(per_group_in):
            at = (g * per_group_in + ci) * useful
            for line in range(panel * t0, min(useful, panel * t1), 64 // rows.itemsize):
                prefetch(source, at + ahead_rows * useful + line)
            for tile in range(t0, t1):
                to, first = ((g * tiles + tile) * per_group_in + ci) * panel, panel * tile
                if tile < whole:
                    transpose_runs(source, at + first, 1, target, to, 0, panel, 1)
                    continue
                for e in range(panel):  # the group's last tile, past R
                    target[to + e] = source[at + first + e] if first + e < useful else zero

    return serial_kernel(_pack_row_tiles)


@serial_kernel
def pack_panel(weight, packed, g, v, ahead_rows):
    """``packed[g, v, a, b, ci, l] = weight[g·Ci_g + ci, v·L + l, a, b]``, zero in the lanes past the group's
    output channels: one panel vector's GEMM panels for ``nonoverlap_direct``'s NHWC kernel. Row by row, each a run of
    ``L·kH·kW`` weights split into its taps' panels (a ``L × taps`` transpose in registers for 4 and 8 taps,
    :func:`.intrinsics.transpose_runs`; an element loop otherwise); the rows are a whole weight row apart (8 KB on
    unet1), a stride the hardware prefetchers do not follow, so each row's lines are asked for ``ahead_rows`` rows
    ahead. Measured on unet3d1's 3.1 MiB weight (320→320, 2×2×2), one thread, median (min) of 50 calls: 0.28 (0.27)
    ms, against 0.89 (0.86) for the element-by-element 8-way split and 0.13 (0.09) for a plain copy; its 16 × 8
    blocks as two 8 × 8 transposes, 0.20 (0.19) against 0.27 (0.26), thread CPU time, median (min) of 200 in turns
    (on unet1's 8 MB weight the 4-way split took 1.4 (2.3) ms, best (median) of 25; two 16 × 4 halves as 8 × 4
    blocks, 0.60 against 0.64 ms, within noise: not kept)."""
    vectors, k_h, k_w, per_group_in, lanes = packed.shape[1:]
    per_group_out, taps = weight.shape[1], k_h * k_w
    source, target = weight.reshape(-1), packed.reshape(-1)
    panel, row = per_group_in * lanes, per_group_out * taps  # elements between tap panels, weight rows
    used = min(lanes, per_group_out - v * lanes)
    zero = np.zeros(1, dtype=packed.dtype)[0]
    ahead = ahead_rows * row
    for ci in range(per_group_in):
        start = ((g * per_group_in + ci) * per_group_out + v * lanes) * taps
        for line in range(0, used * taps, 64 // packed.itemsize):
            prefetch(source, start + ahead + line)
        to = ((g * vectors + v) * taps * per_group_in + ci) * lanes
        if taps == 4 and used == lanes == 16:  # the U-Net kernel, float32 on AVX2: a 16 × 4 transpose in registers
            transpose_runs(source, start, 4, target, to, panel, 16, 4)
        elif taps == 4 and used == lanes == 8:  # float64 on AVX2, float32 on the generic row
            transpose_runs(source, start, 4, target, to, panel, 8, 4)
        elif taps == 4 and used == lanes == 32:  # float32 on AVX-512
            transpose_runs(source, start, 4, target, to, panel, 32, 4)
        elif taps == 8 and used == lanes and lanes % 8 == 0:  # the 3-D U-Net kernel (2×2×2): 8 × 8 blocks
            for block in range(lanes // 8):
                transpose_runs(source, start + 64 * block, 8, target, to + 8 * block, panel, 8, 8)
        else:
            for tap in range(taps):
                for lane in range(used):
                    target[to + tap * panel + lane] = source[start + lane * taps + tap]
                for lane in range(used, lanes):
                    target[to + tap * panel + lane] = zero


@parallel_kernel
def to_channels_last(x, pixels):
    """``pixels[n, h, w, c] = x[n, c, h, w]`` (``x`` C-contiguous), a thread per input row ``(n, h)``, in runs of
    16 columns: each run reads one cache line per channel (whole, at once) and writes a ``16 × C`` block that stays
    in L1, 8 channels × 8 pixels at a time transposed in registers (:func:`.intrinsics.transpose_runs`). NumPy's
    strided copy walks the channels at a stride of a whole plane (a power of two of bytes for square images, all in
    one cache set) and took 0.85-1.05 ms for k3s1p1's 1 MB input here; element by element in these runs 0.25 ms,
    in 8 × 8 blocks 0.11 (one thread, thread CPU time, median of 200; ``np.copyto`` of the same bytes: 0.04)."""
    batch, channels, height, width = x.shape
    plane = height * width
    whole_c, whole_w = channels - channels % 8, width - width % 8
    for row in prange(batch * height):
        n, h = row // height, row % height
        for w0 in range(0, width, 16):
            w1 = min(w0 + 16, width)
            for c0 in range(0, whole_c, 8):  # 8 channels × 8 pixels in registers
                for w in range(w0, min(w1, whole_w), 8):
                    transpose_runs(
                        x,
                        ((n * channels + c0) * height + h) * width + w,
                        plane,
                        pixels,
                        ((n * height + h) * width + w) * channels + c0,
                        channels,
                        8,
                        8,
                    )
                for w in range(max(w0, whole_w), w1):
                    for c in range(c0, c0 + 8):
                        pixels[n, h, w, c] = x[n, c, h, w]
            for c in range(whole_c, channels):
                for w in range(w0, w1):
                    pixels[n, h, w, c] = x[n, c, h, w]


@parallel_kernel
def pack_weight(weight, packed):
    """Every panel vector's GEMM panels (:func:`pack_panel`), a thread per vector: ``blocked_direct``'s weight."""
    vectors = packed.shape[1]
    for panel in prange(packed.shape[0] * vectors):
        pack_panel(weight, packed, panel // vectors, panel % vectors, 4)


def round_up(value, multiple):
    return -(-value // multiple) * multiple


def packed_weight(weight, problem, blocking):
    """The weight as GEMM panels ``(G, C_out/G⁺/L, kH, kW, C_in/G, L)`` (:func:`pack_panel`; the output channels
    padded with zeros to a whole panel vector of ``L`` lanes): one panel vector's weights for every tap and input
    channel are one contiguous run, read in order by :func:`.intrinsics.fma_panel_taps`. Packed on every thread
    above ``blocking.parallel_copy_bytes``."""
    g, (kh, kw) = problem.groups, problem.kernel_size
    lanes = blocking.lanes(weight.dtype.itemsize)
    packed = workspace.scratch(
        "numba_cpu.blocked_weight",
        (g, -(-problem.out_per_group // lanes), kh, kw, problem.in_per_group, lanes),
        weight.dtype,
    )
    (pack_weight if weight.nbytes > blocking.parallel_copy_bytes else pack_weight.serial)(weight, packed)
    return packed


def channels_last_input(x, problem, blocking):
    """The input channels-last: ``x`` itself in NHWC, else a copy in this thread's kept workspace (on both threads
    above ``blocking.parallel_copy_bytes``: every parallel region waits for all threads, and on a busy host a
    thread's core may be a time slice away)."""
    if problem.layout == "NHWC":
        return x
    pixels = workspace.scratch("numba_cpu.channels_last_input", x.shape[:1] + x.shape[2:] + x.shape[1:2], x.dtype)
    source = np.ascontiguousarray(x)  # the kernel's vector loads need C order (a strided x is rare)
    (to_channels_last if x.nbytes > blocking.parallel_copy_bytes else to_channels_last.serial)(source, pixels)
    return pixels


def panel_weight(problem, blocking):
    """Room for ``nonoverlap_direct``'s weight panels ``(G, C_out/G⁺/L, kH, kW, C_in/G, L)``, ``L`` lanes of a
    panel vector (filled by :func:`pack_panel`), in this thread's kept workspace; at rank 3 the depth and height
    taps share one axis, ``(..., kD·kH, kW, ...)`` (the taps in ``(kd, kh, kw)`` order, as :func:`pack_panel`
    writes them)."""
    lanes = blocking.lanes(problem.dtype.itemsize)
    *outer, k_w = problem.kernel_size
    return workspace.scratch(
        "numba_cpu.panel_weight",
        (problem.groups, -(-problem.out_per_group // lanes), math.prod(outer), k_w, problem.in_per_group, lanes),
        problem.dtype,
    )


def row_weight(problem, blocking):
    """Room for ``nonoverlap_direct``'s NCHW weight rows ``(G, ⌈R/P⌉, C_in/G, P)`` (filled by
    :func:`row_tiles_packer`'s function), in this thread's workspace."""
    taps, panel = math.prod(problem.kernel_size), blocking.panel_pixels
    return workspace.scratch(
        "numba_cpu.row_weight",
        (problem.groups, -(-problem.out_per_group * taps // panel), problem.in_per_group, panel),
        problem.dtype,
    )
