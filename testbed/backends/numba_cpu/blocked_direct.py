"""``blocked_direct``: overlapping taps (the default for them, see
:func:`~testbed.backends.numba_cpu.choose_path`), a direct kernel with register tiles.

A direct kernel with no intermediate buffer (the kernel :func:`tiles_kernel` builds): output-stationary and
phase-decomposed (each output phase visits only its sub-kernel's taps, so no inserted zero is multiplied), a work
item being a tile of output channels × up to 128 output pixels (rows of one row phase, across images when narrow),
owned by one thread; the items are handed out one at a time (:mod:`.tasks`), so a thread whose core is taken for a
while computes fewer of them instead of holding up the others. Its micro-kernel :func:`.intrinsics.fma_panel_taps` is
a register tile, as in a GEMM: MR pixels × one panel vector of output channels (:mod:`.blocking`; on AVX2 6 × 64
bytes, 16 float32 or 8 float64) of accumulators stay in registers for the whole input-channel sum of several taps
(pixels whose every tap's input exists; a border pixel's taps one at a time), each step loading one weight vector
(the weight packed as GEMM panels ``(G, C_out/G⁺/L, kH, kW, C_in/G, L)``: a panel vector's weights for all its
taps one contiguous run) and broadcasting MR inputs (the input channels-last). Summing the taps in registers rather
than one tap per call (accumulators stored and reloaded between taps) took k3s1p1 64→64 @64² from 63-64 to 74-77
GFLOP/s on one Zen 3 thread (in turns with the one-tap kernel, thread CPU time); the panels, against the weight
``(G, kH, kW, C_in/G, C_out/G⁺)`` whose vector of channels is a 64-byte piece of each 256-byte row there, 3-6 %
more on k3s1p1, k3d2, k4s2p1, k5s3 and k3s2p1op1 (minimum of 40-60 calls in turns: k3s1p1 75.5 → 79.5); an NCHW
tile written out in 8 × 8 blocks transposed in registers where a row's outputs are one run (stride 1), rather than
element by element down the tile's columns, 3-4 % more (k3s1p1 80.3 → 82.8, k3d2 82.6 → 85.4; NHWC: 86). It is
written as LLVM vector IR (``llvm.fma`` on ``<16 x float>``) because Numba's pipeline vectorises innermost loops only
(its SLP vectoriser is off): a first version that let LLVM vectorise the output-channel loop (2 pixels × 4 channels
per call, accumulators in an L1 tile) reached 40-60 GFLOP/s per core here, this one 55-70, against ~75-85 for
OpenBLAS's SGEMM. Assembly (``tiles_kernel(blocking().kernel_shape()).parallel.inspect_asm(sig)`` with
``TESTBED_NUMBA_CACHE=0``): on this project's current host, an AMD EPYC (Zen 3: AVX2, no AVX-512), the panel loop is
12 ``vfmadd231ps`` on ymm registers (two per 16-channel vector) fed by ``vbroadcastss`` and two ``vmovups`` weight
loads (98 ymm FMAs in the float32 kernel, ``vfmadd231pd`` in the float64 one); the ``avx512`` row's tile, compiled
for ``sapphirerapids``, is in :mod:`.blocking`. Tile sizes (the ``avx2`` row's), measured single-threaded before the
per-ISA table (thread CPU time, best of interleaved rounds, GFLOP/s):

==========================  =================================================================================
micro-kernel                autovectorised 2 pixels × 4 channels: 43-56 at 64 output channels (3×4, 4×4 and
                            the tree-summed variants within noise, 1×8 42); register panel 6 × 16: 70 in
                            isolation (the classic AVX2 SGEMM shape: 12 accumulators + weight + broadcast)
input layout                NCHW 42-58 → channels-last 53-65 (a panel's 6 × C_in inputs stay in L1; in NCHW
                            the channel step is a multiple of 4 KB and they all map to one cache set)
pixels per tile             32 / 64 / 128: k4s2p1 58/66/69, k3s1p1 60/62/66, k5s3 55/57/59, k3s2p1op1
                            53/54/56, 512→256 @8² N8 60/58/71: 128 (64 KB of float32 accumulators, touched
                            only at each panel's start and end)
output channels per tile    ms at 16/32/64/128 (first version): k4s2p1 53/44/42/29, 512→256 @8² 137/124/78/47:
                            the largest the group allows, ≤ 128
rows per tile               several when the image is narrow: 1024→512 @4² N16 7.6 → 38 GFLOP/s
==========================  =================================================================================
"""

import functools

import numba
import numpy as np
from numba import carray, prange

from ... import workspace
from .._runtime import parallel_kernel
from ._common import bias_or_zeros
from .intrinsics import fma_panel_taps, offsets_from, stack_tile, transpose_runs
from .packing import channels_last_input, packed_weight, round_up
from .tasks import next_task

__all__ = [
    "default_tap_chunk",
    "default_tile_co",
    "default_tile_cols",
    "default_tile_rows",
    "reads_planar",
    "run",
    "tiles_kernel",
]


@functools.cache
def tiles_kernel(shape):
    """``blocked_direct``'s kernel for one :meth:`.blocking.Blocking.kernel_shape`: the register tile (MR pixels
    × ``panel_bytes``) and the stack tile (``tile_pixels × max_tile_co``) are constants of the compiled code,
    closed over, so each shape is its own function with its own cache entries."""
    PANEL, PANEL_BYTES, TILE_PIXELS, MAX_TILE_CO = shape[:4]
    TILE_SIZE = TILE_PIXELS * MAX_TILE_CO

    def _blocked_direct_tiles(
        pixels,
        packed,
        bias,
        y,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dil_h,
        dil_w,
        tile_co,
        tile_rows,
        tile_cols,
        planar,
        tap_chunk,
        workers,
        channels_last_out,
    ):
        """Register-blocked, phase-decomposed direct kernel:
        ``y[n, g·Co_g + co, oh, ow] = Σ pixels[n, ih, iw, g·Ci_g + ci] · packed[g, co // L, kh, kw, ci, co % L] +
        bias`` over the taps of the scatter definition, ``pixels`` being the input channels-last (a pixel's channels
        are one contiguous run, so a panel's inputs stay in L1 for every vector of output channels) and ``packed`` the
        weight as panels ``(G, Co_g⁺/L, kH, kW, Ci_g, L)`` (output channels padded with zeros to a whole panel vector,
        whose accumulators are never written out) so that one vector's weights are read as one stream; ``y``
        C-contiguous, ``(N, H_out, W_out, C_out)`` where ``channels_last_out``, else ``(N, C_out, H_out, W_out)``.

        Phases (Shi et al. 2016, see ``polyphase``): output row ``oh = ph + s_h·m`` receives exactly the taps ``kh``
        with ``ph + p_h - kh·d_h ≡ 0 (mod s_h)``, from input row ``ih = m + (ph + p_h - kh·d_h)/s_h``; output column
        ``ow = b + s_w·j`` the taps ``kw`` with ``b + p_w - kw·d_w ≡ 0 (mod s_w)``, from ``iw = j + off``. Only those
        taps are visited, each over the rows and columns whose input exists: no inserted zero is ever multiplied.

        Work item (owned by the thread that takes it): ``tile_co`` (a multiple of the lanes, ≤ ``max_tile_co``) output
        channels of one group × ``tile_rows`` consecutive rows ``(n, m)`` of one row phase (several rows, across
        images, when the image is narrow, so that a tile has enough pixels to reuse each weight) × ``tile_cols``
        consecutive columns of every column phase (the whole phase but where the rows are too few to give every
        thread work, as in a long 1-D sequence: one row). Per column phase
        ``b`` and run of ``tile_pixels // tile_rows`` phase pixels, an accumulator tile ``acc[slot, co]``
        (on the stack, L1-resident) starts at +0.0; for each chunk of ``tap_chunk`` of the phase's taps, each block
        of MR inner pixels (whose input exists for every tap of the phase) and each vector of output channels,
        :func:`.intrinsics.fma_panel_taps` runs the chunk's input-channel sums in registers; then the other pixels
        get their taps one by one, each over the pixels whose input exists. Each output's sum runs in the same
        order everywhere, ``(kh, kw, ci)`` ascending, one FMA per product, so the result depends neither on the
        tiling, the chunks nor on the thread count; the bias is added last."""
        if planar:  # the input as given, (N, C, H, W): each broadcast a plane further on (see run)
            batch, in_channels, in_h, in_w = pixels.shape
            step_c, step_w = in_h * in_w, 1
        else:
            batch, in_h, in_w, in_channels = pixels.shape
            step_c, step_w = 1, in_channels
        step_h, step_n = in_w * step_w, in_channels * in_h * in_w
        groups, vectors, k_h, k_w, per_group_in, lanes = packed.shape
        if channels_last_out:
            out_h, out_w, out_channels = y.shape[1], y.shape[2], y.shape[3]
        else:
            out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
        per_group_out, padded_out = out_channels // groups, vectors * lanes
        panel = k_h * k_w * per_group_in * lanes  # one panel vector's weights, every tap
        co_tiles = (per_group_out - 1) // tile_co + 1
        row_phases, col_phases = min(stride_h, out_h), min(stride_w, out_w)
        row_blocks = (batch * ((out_h - 1) // stride_h + 1) - 1) // tile_rows + 1  # of the longest row phase
        col_blocks = ((out_w - 1) // stride_w) // tile_cols + 1  # of the longest column phase
        run = TILE_PIXELS // tile_rows
        zero = np.zeros(1, dtype=y.dtype)[0]  # +0.0 in y's dtype
        items, counter = groups * co_tiles * row_phases * row_blocks * col_blocks, np.zeros(1, np.int64)
        for _worker in prange(workers):  # one worker per thread, work items handed out in turn (.tasks)
            # A phase's taps (see below), allocated once per worker, not per work item.
            tap_w, tap_shift = np.empty(k_h * k_w, np.int64), np.empty(k_h * k_w, np.int64)
            tap_h, tap_c = np.empty(k_h * k_w, np.int64), np.empty(k_h * k_w, np.int64)
            while True:
                item_cols = next_task(counter)
                if item_cols >= items:
                    break
                cols = item_cols % col_blocks  # column blocks innermost: neighbours share their rows' inputs
                item = item_cols // col_blocks
                block = item % row_blocks
                ph = (item // row_blocks) % row_phases
                co0 = (item // (row_blocks * row_phases)) % co_tiles * tile_co
                g = item // (row_blocks * row_phases * co_tiles)
                cot = min(tile_co, padded_out - co0)  # a multiple of lanes
                written = min(cot, per_group_out - co0)
                phase_rows = (out_h - 1 - ph) // stride_h + 1
                first = block * tile_rows
                rows = min(tile_rows, batch * phase_rows - first)
                if rows <= 0:
                    continue
                acc = carray(stack_tile(zero, TILE_SIZE), (TILE_PIXELS, MAX_TILE_CO))
                row_n = carray(stack_tile(np.int64(0), TILE_PIXELS), (TILE_PIXELS,))
                row_m = carray(stack_tile(np.int64(0), TILE_PIXELS), (TILE_PIXELS,))
                reached_acc = carray(stack_tile(np.int64(0), TILE_PIXELS), (TILE_PIXELS,))
                reached_x = carray(stack_tile(np.int64(0), TILE_PIXELS), (TILE_PIXELS,))
                for r in range(rows):
                    row_n[r], row_m[r] = (first + r) // phase_rows, (first + r) % phase_rows
                for b in range(col_phases):
                    # The taps of phase (ph, b), in (kh, kw) order: weight offset, input offset, row and column offsets.
                    ntaps = 0
                    lo_h, hi_h, lo_w, hi_w = in_h, -in_h, in_w, -in_w
                    for kh in range(k_h):
                        shift_h = ph + pad_h - kh * dil_h
                        if shift_h % stride_h != 0:
                            continue
                        for kw in range(k_w):
                            shift_w = b + pad_w - kw * dil_w
                            if shift_w % stride_w != 0:
                                continue
                            off_h, off = shift_h // stride_h, shift_w // stride_w  # ih = m + off_h, iw = j + off
                            tap_w[ntaps] = (g * vectors + co0 // lanes) * panel + (kh * k_w + kw) * per_group_in * lanes
                            tap_shift[ntaps] = off_h * step_h + off * step_w
                            tap_h[ntaps], tap_c[ntaps] = off_h, off
                            lo_h, hi_h, lo_w, hi_w = min(lo_h, off_h), max(hi_h, off_h), min(lo_w, off), max(hi_w, off)
                            ntaps += 1
                    phase_len = (out_w - 1 - b) // stride_w + 1
                    col_end = min(phase_len, (cols + 1) * tile_cols)
                    for j0 in range(cols * tile_cols, col_end, run):
                        jn = min(run, col_end - j0)
                        for slot in range(rows * run):
                            for c in range(cot):
                                acc[slot, c] = zero
                        # Inner pixels (every tap's input exists) sum taps in registers, then the others tap by tap.
                        in_lo, in_hi = max(j0, -lo_w), min(j0 + jn, in_w - hi_w)
                        chunks = (ntaps - 1) // tap_chunk + 1 if ntaps > 0 else 0
                        for step in range(chunks + ntaps):
                            count = 0
                            whole = step < chunks  # a chunk of taps over the inner pixels, else one tap over the others
                            tap0 = step * tap_chunk if whole else step - chunks
                            taps = min(tap_chunk, ntaps - tap0) if whole else 1
                            off_h, off = tap_h[tap0], tap_c[tap0]
                            j_lo, j_hi = (in_lo, in_hi) if whole else (max(j0, -off), min(j0 + jn, in_w - off))
                            for r in range(rows):
                                m = row_m[r]
                                inner = m + lo_h >= 0 and m + hi_h < in_h
                                if (whole and not inner) or (not whole and not 0 <= m + off_h < in_h):
                                    continue
                                pixel0 = row_n[r] * step_n + m * step_h + g * per_group_in * step_c
                                for j in range(j_lo, j_hi):
                                    if not whole and inner and in_lo <= j < in_hi:
                                        continue
                                    reached_acc[count] = (r * run + j - j0) * MAX_TILE_CO
                                    reached_x[count] = pixel0 + j * step_w
                                    count += 1
                            for c in range(0, cot, lanes):
                                i = 0
                                while i + PANEL <= count:
                                    fma_panel_taps(
                                        acc,
                                        offsets_from(reached_acc, i, c, PANEL),
                                        packed,
                                        c // lanes * panel,
                                        tap_w,
                                        lanes,
                                        pixels,
                                        offsets_from(reached_x, i, 0, PANEL),
                                        tap_shift,
                                        step_c,
                                        per_group_in,
                                        tap0,
                                        taps,
                                        PANEL_BYTES,
                                    )
                                    i += PANEL
                                if PANEL > 8 and i + 8 <= count:  # the rest, in registers too
                                    fma_panel_taps(
                                        acc,
                                        offsets_from(reached_acc, i, c, 8),
                                        packed,
                                        c // lanes * panel,
                                        tap_w,
                                        lanes,
                                        pixels,
                                        offsets_from(reached_x, i, 0, 8),
                                        tap_shift,
                                        step_c,
                                        per_group_in,
                                        tap0,
                                        taps,
                                        PANEL_BYTES,
                                    )
                                    i += 8
                                if PANEL > 4 and i + 4 <= count:
                                    fma_panel_taps(
                                        acc,
                                        offsets_from(reached_acc, i, c, 4),
                                        packed,
                                        c // lanes * panel,
                                        tap_w,
                                        lanes,
                                        pixels,
                                        offsets_from(reached_x, i, 0, 4),
                                        tap_shift,
                                        step_c,
                                        per_group_in,
                                        tap0,
                                        taps,
                                        PANEL_BYTES,
                                    )
                                    i += 4
                                if PANEL > 2 and i + 2 <= count:
                                    fma_panel_taps(
                                        acc,
                                        offsets_from(reached_acc, i, c, 2),
                                        packed,
                                        c // lanes * panel,
                                        tap_w,
                                        lanes,
                                        pixels,
                                        offsets_from(reached_x, i, 0, 2),
                                        tap_shift,
                                        step_c,
                                        per_group_in,
                                        tap0,
                                        taps,
                                        PANEL_BYTES,
                                    )
                                    i += 2
                                if i < count:
                                    fma_panel_taps(
                                        acc,
                                        offsets_from(reached_acc, i, c, 1),
                                        packed,
                                        c // lanes * panel,
                                        tap_w,
                                        lanes,
                                        pixels,
                                        offsets_from(reached_x, i, 0, 1),
                                        tap_shift,
                                        step_c,
                                        per_group_in,
                                        tap0,
                                        taps,
                                        PANEL_BYTES,
                                    )
                        co_g = g * per_group_out + co0
                        for r in range(rows):
                            n, oh = row_n[r], ph + stride_h * row_m[r]
                            if channels_last_out:  # a pixel's channels are one run
                                for j in range(jn):
                                    slot, ow = r * run + j, b + stride_w * (j0 + j)
                                    for c in range(written):
                                        y[n, oh, ow, co_g + c] = acc[slot, c] + bias[co_g + c]
                            elif stride_w == 1:  # the row's outputs of a channel are one run: 8 × 8 blocks
                                # transposed in registers (column by column, the tile's reads were a line apart each)
                                for slot in range(r * run, r * run + jn):
                                    for c in range(written):
                                        acc[slot, c] += bias[co_g + c]
                                whole_c, whole_j = written - written % 8, jn - jn % 8
                                start = ((n * out_channels + co_g) * out_h + oh) * out_w + b + j0  # y[n, co_g, oh, ·]
                                for c in range(0, whole_c, 8):
                                    for j in range(0, whole_j, 8):
                                        transpose_runs(
                                            acc,
                                            (r * run + j) * MAX_TILE_CO + c,
                                            MAX_TILE_CO,
                                            y,
                                            start + c * out_h * out_w + j,
                                            out_h * out_w,
                                            8,
                                            8,
                                        )
                                for c in range(written):
                                    line = y[n, co_g + c, oh]
                                    for j in range(whole_j if c < whole_c else 0, jn):
                                        line[b + j0 + j] = acc[r * run + j, c]
                            else:
                                for c in range(written):
                                    line, b_c = y[n, co_g + c, oh], bias[co_g + c]
                                    for j in range(jn):
                                        line[b + stride_w * (j0 + j)] = acc[r * run + j, c] + b_c

    return parallel_kernel(_blocked_direct_tiles)


def default_tile_co(per_group_out, blocking):
    """Output channels per work item: the group's channels in the fewest tiles of at most ``max_tile_co``, of
    equal width rounded up to a whole panel vector of float32 (16 lanes on AVX2)."""
    lanes = blocking.lanes(4)
    tiles = (per_group_out - 1) // blocking.max_tile_co + 1
    return min(blocking.max_tile_co, round_up(-(-per_group_out // tiles), lanes))


def default_tile_rows(problem, blocking):
    """Output rows per work item: as many as fit ``tile_pixels`` next to the longest column phase,
    ``⌈W_out / s_w⌉`` (one row when that phase alone fills the tile), but few enough to leave ``items_per_thread``
    work items per thread where the problem has that many rows."""
    (out_h, out_w), (s_h, s_w) = problem.out_size, problem.stride
    fit = max(1, blocking.tile_pixels // ((out_w - 1) // s_w + 1))
    rows = problem.batch * ((out_h - 1) // s_h + 1)  # of the longest row phase
    per_item = default_tile_co(problem.out_per_group, blocking)
    others = problem.groups * -(-problem.out_per_group // per_item) * min(s_h, out_h)
    blocks = -(-blocking.items_per_thread * numba.get_num_threads() // others)
    return max(1, min(fit, rows // blocks))


def default_tile_cols(problem, blocking, tile_co, tile_rows):
    """Phase columns per work item: the longest column phase, ``⌈W_out / s_w⌉``, whole, unless the work items of
    whole rows are fewer than ``items_per_thread`` per thread (a long 1-D sequence is one row: one item per tile of
    output channels); then that phase split into as many blocks as make up the difference, each at least one run
    of the stack tile (``tile_pixels // tile_rows`` columns)."""
    (out_h, out_w), (s_h, s_w) = problem.out_size, problem.stride
    phase = (out_w - 1) // s_w + 1
    rows = problem.batch * ((out_h - 1) // s_h + 1)
    items = problem.groups * -(-problem.out_per_group // tile_co) * min(s_h, out_h) * -(-rows // tile_rows)
    wanted = blocking.items_per_thread * numba.get_num_threads()
    if items >= wanted:
        return phase
    least = min(phase, max(1, blocking.tile_pixels // tile_rows))
    return max(least, -(-phase // -(-wanted // items)))


def default_tap_chunk(problem, blocking):
    """Taps whose sums run in registers at once: as many as have ``tap_block_bytes`` of one panel vector's weights,
    ``C_in/G · panel_bytes`` each (at least one)."""
    return max(1, blocking.tap_block_bytes // (problem.in_per_group * blocking.panel_bytes))


def reads_planar(problem) -> bool:
    """Whether the kernel broadcasts from the NCHW input as given rather than from a channels-last copy: where the
    input is one row (a 1-D problem), so that a panel's MR pixels are consecutive in every plane (one cache line
    per channel step, the next panels' too) and the copy would be a serial pass over the whole input. Elsewhere
    the pixels of a tile lie on several rows, a plane apart per channel (the docstring's input-layout row)."""
    return problem.layout == "NCHW" and problem.in_size[0] == 1


def run(
    x,
    weight,
    bias,
    problem,
    out=None,
    *,
    blocking,
    tile_co=None,
    tile_rows=None,
    tile_cols=None,
    planar=None,
    tap_chunk=None,
):
    """``blocked_direct`` with ``blocking``'s tiles; ``tile_co`` (a multiple of the float32 lanes of a panel
    vector, at most ``max_tile_co``), ``tile_rows`` and ``tile_cols`` (phase columns per work item) override the
    chosen tiles, ``tap_chunk`` the taps summed in registers at once (default :func:`default_tap_chunk`),
    ``planar`` (NCHW only) whether the NCHW input is read as given (default :func:`reads_planar`); the result is
    the same bitwise.
    The channels-last input and the packed weight live in this thread's kept workspace
    (:mod:`testbed.workspace`), so a repeated call allocates only its result."""
    lanes = blocking.lanes(4)
    tile_co = default_tile_co(problem.out_per_group, blocking) if tile_co is None else tile_co
    if tile_co <= 0 or tile_co % lanes or tile_co > blocking.max_tile_co:
        raise ValueError(
            f"tile_co: expected a multiple of {lanes} up to {blocking.max_tile_co} (the {blocking.isa} "
            f"row's panel vector and tile), got {tile_co}"
        )
    for name, value in (("tile_rows", tile_rows), ("tile_cols", tile_cols), ("tap_chunk", tap_chunk)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    tile_rows = tile_rows or default_tile_rows(problem, blocking)
    tile_cols = tile_cols or default_tile_cols(problem, blocking, tile_co, tile_rows)
    planar = reads_planar(problem) if planar is None else bool(planar) and problem.layout == "NCHW"
    y = workspace.empty_result(problem.output_shape, problem.dtype) if out is None else out
    # One compiled kernel per dtype: the result C-contiguous in its own layout (a strided out= through a copy).
    target = y if y.flags.c_contiguous else np.empty(y.shape, y.dtype)
    tiles_kernel(blocking.kernel_shape())(
        x if planar else channels_last_input(x, problem, blocking),
        packed_weight(weight, problem, blocking),
        bias_or_zeros(bias, problem),
        target,
        *problem.stride,
        *problem.padding,
        *problem.dilation,
        tile_co,
        tile_rows,
        tile_cols,
        planar,
        tap_chunk or default_tap_chunk(problem, blocking),
        numba.get_num_threads(),
        problem.layout == "NHWC",
    )
    if target is not y:
        y[...] = target
    return y
