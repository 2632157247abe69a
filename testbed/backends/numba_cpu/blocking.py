"""``numba_cpu``'s blockings, one row per instruction set (BLIS's ``config/<arch>/bli_cntx_init_<arch>.c``).

The algorithms (the path modules) are portable; what depends on the CPU is gathered here: the register tile of
the micro-kernels (:mod:`.intrinsics`), the cache blocks, the prefetch distances and the path thresholds. The row
is chosen once per process by :func:`testbed.isa.selected_isa` (the CPU Numba compiles for, capped by
``TESTBED_ISA``), and :func:`blocking` returns it.

**Register tile** (``blocked_direct``, ``nonoverlap_direct`` in both layouts): ``panel_pixels`` (MR) pixels, or
weight rows in ``nonoverlap_direct``'s NCHW kernel, × one *panel vector* of ``panel_vectors`` (NR) registers of
output channels (input pixels in NCHW) = ``MR·NR`` accumulator registers, each step one load of the panel vector
(``NR`` register loads) and ``MR`` broadcasts for ``MR·NR`` FMAs. A core with two FMA pipes of latency 4 needs at
least 8 independent accumulators to keep them busy; the register file bounds the tile from above (16 ymm on AVX2,
32 zmm on AVX-512, 16 xmm on SSE and 32 on NEON), less the ``NR`` weight registers and a broadcast.

=========  ======  =====================  =========================  =========================================
row        vector  tile MR × NR           accumulators (loads/FMA)    as in
=========  ======  =====================  =========================  =========================================
avx512     64 B    12 × 2 (32 float32)    24 zmm (14 / 24)            BLIS ``skx`` sgemm 32×12: 24 zmm
avx2       32 B    6 × 2 (16 float32)     12 ymm (8 / 12)             BLIS ``haswell`` sgemm 6×16: 12 ymm
generic    16 B    6 × 2 (8 float32)      12 xmm (8 / 12)             fits SSE's 16 xmm and NEON's 32
=========  ======  =====================  =========================  =========================================

Lanes per panel vector: ``panel_bytes // itemsize`` (float64 has half as many); the output channels of
``blocked_direct``'s packed weight are padded to a whole panel vector, so a row with wider panels pads more (a
group of 16 channels fills half an ``avx512`` panel).

Where the numbers come from. The ``avx2`` row is the blocking this backend was tuned with on a 2-core AMD EPYC
(Zen 3: AVX2, no AVX-512); the measurements are in the docstrings of :func:`~testbed.backends.numba_cpu.choose_path`
and the path modules. The ``avx512`` and ``generic`` rows take the same cache blocks, prefetch distances and
thresholds (not measured on such hosts), and their own register tiles. The ``avx512`` tile could not be timed:
no AVX-512 host was available. It follows BLIS's and OpenBLAS's SkylakeX kernels (24 zmm accumulators), and its
assembly was read instead, compiled for Sapphire Rapids on the AVX2 host (``python -m experiments.numba_cpu_paths
--asm``: ``NUMBA_CPU_NAME=sapphirerapids NUMBA_CPU_FEATURES=""``, Numba 0.68.1, LLVM 22; the micro-kernel's
input-channel loop, float32 and float64 alike; loads are the weight vectors and the broadcasts):

==================================  ===============  ===============  =====  =============
tile MR × NR (zmm)                  FMAs per loop    accumulators     loads  loads per FMA
==================================  ===============  ===============  =====  =============
6 × 1 (the 64-byte panel before)    12 (2 steps)     6 zmm            14     1.17
6 × 2                               12               12 zmm           8      0.67
8 × 2                               16               16 zmm           10     0.62
**12 × 2** (the ``avx512`` row)     24               24 zmm           14     0.58
14 × 2                              28               28 zmm           16     0.57
==================================  ===============  ===============  =====  =============

Every FMA there is a ``vfmadd231ps``/``pd`` on zmm registers. Compiled for this host (``znver3``) the ``avx2``
row's 6 × 64-byte tile is 24 ymm FMAs per loop (2 steps unrolled) on 12 ymm accumulators with 16 loads (0.67 per
FMA). ``python -m experiments.numba_cpu_paths --panels 6,8,12,14 --threads 1`` on an AVX-512 host is the
measurement that should confirm or replace the 12 × 2 choice.

Each row timed on the AVX2 host (AMD EPYC Zen 3, 2 cores, shared with other jobs, load average 5-8), one thread,
thread CPU time, float32, median of 3 fresh processes (each the median of its calls), every row's kernels through
``run_path(..., isa=row)``; GFLOP/s of useful work and the share of the host's single-thread SGEMM (NumPy/OpenBLAS
1024³, 81.8 GFLOP/s, same processes' clock). ``TESTBED_ISA`` selects a row's tiles, not the instructions: the
``generic`` column is its 6 × 32-byte tile on AVX2 instructions (6 ymm accumulators: too few for two FMA pipes of
latency 4), and the ``avx512`` column is its 12 × 2 zmm tile legalised into 48 ymm accumulators (spilled): correct,
but not a speed. The ``avx2`` row is the fastest here and stays this host's default.

=====================================  ============  ============  ===========================
kernel                                 avx2          generic       avx512 (legalised)
=====================================  ============  ============  ===========================
blocked_direct k3s1p1 64→64 @64² N4    57.9 (71 %)   45.8 (56 %)   27.3 (33 %)
blocked_direct k4s2p1 256→128 @32²     65.8 (80 %)   46.5 (57 %)   29.0 (36 %)
nonoverlap_direct unet3 NCHW           74.4 (91 %)   58.7 (72 %)   26.2 (32 %)
nonoverlap_direct unet3 NHWC           78.7 (96 %)   54.0 (66 %)   30.7 (38 %)
=====================================  ============  ============  ===========================

After ``blocked_direct`` came to sum a phase's taps in registers (:func:`.intrinsics.fma_panel_taps`; same host,
load average 0.7-1.0, ``python -m experiments.numba_cpu_paths --threads 1 --shapes k3s1p1,k3d2,k4s2p1 --isa
avx2,generic --rounds 3``: wall time through ``conv_transpose2d``, a fresh process per cell, median (min); SGEMM
93 GFLOP/s, best of a few): k3s1p1 (N1) ``avx2`` 63 (69) GFLOP/s, ``generic`` 37 (42); k3d2 56 (67) and 30 (41);
k4s2p1 69 (74) and 34 (37). Thread CPU time in one process, in turns with SGEMM: k3s1p1 74-80 GFLOP/s, 80-86 % of
SGEMM (``avx2``). After its weight became GEMM panels, its NCHW tiles were written out in register transposes and
its packing went parallel (same command with ``--shapes k3s1p1,k3d2``, load average 1.0-1.2, SGEMM 95 GFLOP/s in
the same run): k3s1p1 ``avx2`` 80 (83) GFLOP/s, 84 % (87 %) of SGEMM, ``generic`` 54 (55); k3d2 82 (85) and 53
(55). ``nonoverlap_direct`` on unet3 (``--unet --threads 1 --shapes unet3:NCHW,unet3:NHWC --rounds 3``, SGEMM 92):
NCHW 87 GFLOP/s (95 %), NHWC 88 (96 %).

A row's kernels are separate compiled functions (see :func:`kernel_shape`): Numba's on-disk cache keys a
closure's entries by the values it closes over, so kernels compiled for one row are never loaded for another.
"""

from __future__ import annotations

import dataclasses

from ... import isa as _isa

__all__ = ["ROWS", "Blocking", "blocking"]


@dataclasses.dataclass(frozen=True)
class Blocking:
    """One instruction set's blocking for ``numba_cpu``: the register tile, cache blocks, prefetch distances and
    path thresholds. The fields that shape compiled code are :meth:`kernel_shape`; the others are read at run
    time (``dataclasses.replace`` gives a variant for experiments and tests)."""

    #: The :data:`testbed.isa.ISA_ROWS` row.
    isa: str
    #: Bytes of one vector register.
    vector_bytes: int
    #: MR: pixels (``nonoverlap_direct`` NCHW: weight rows) of one register tile; even (NCHW pairs rows).
    panel_pixels: int
    #: NR: registers per panel vector of output channels (NCHW: input pixels).
    panel_vectors: int
    #: ``blocked_direct``: phase pixels per accumulator tile (on the stack, touched at a sum's start and end) ...
    tile_pixels: int = 128
    #: ... and at most this many output channels per work item (a multiple of every panel vector's lanes).
    max_tile_co: int = 128
    #: ``blocked_direct`` sums as many taps in registers as have at most this many bytes of one panel vector's
    #: weights (``taps · C_in/G · panel_bytes``, read again for every panel of pixels). On Zen 3 (32 KiB L1),
    #: one thread: k3s1p1's 9 taps × 64 channels (36 KiB) 7 % faster at once than one tap at a time; k4s2p1's
    #: 256 channels as fast in pairs (32 KiB) as one by one, 13 % slower in fours ...
    tap_block_bytes: int = 36 * 2**10
    #: ... and keeps this many work items per thread (fewer rows per tile) when a problem is small.
    items_per_thread: int = 4
    #: ``nonoverlap_direct`` takes kernels of at most this many taps (its stack tile holds a panel per tap) ...
    nonoverlap_max_taps: int = 16
    #: ... gives each task about this many bytes of input pixels (in L2 across its panel vectors) ...
    nonoverlap_block_bytes: int = 192 * 2**10
    #: ... at most this many pixels ...
    nonoverlap_max_pixels: int = 384
    #: ... and is chosen from this many input pixels (N·H·W) on (2-D).
    nonoverlap_min_pixels: int = 512
    #: ``nonoverlap_gemm``: bytes of products per task (moved into place while in cache) ...
    block_bytes: int = 8 * 2**20
    #: ... and at most this many weight rows (NCHW) or columns (NHWC) per block.
    block_width: int = 1024
    #: Weight rows prefetched ahead of the one packed (rows a whole weight row apart: no hardware prefetch).
    pack_prefetch_rows: int = 16
    #: Input planes prefetched ahead by ``nonoverlap_direct``'s NCHW packing.
    pack_prefetch_planes: int = 4
    #: Row tiles per packing task of ``nonoverlap_direct``'s NCHW kernel.
    pack_row_tiles: int = 32
    #: ``blocked_direct`` transposes its input channels-last and packs its weight on every thread above this size
    #: (in one process, 2 threads, in turns against 4 MiB: k3s1p1 2.38 → 2.22 ms, k4s2p1 8.7 → 7.8, k5s3 1.29 →
    #: 1.17; 256 KiB in between: done serially, the other thread waits for them).
    parallel_copy_bytes: int = 64 * 2**10
    #: The GEMM paths compute at most this many bytes of columns at a time (larger batches in slices).
    column_buffer_bytes: int = 256 * 2**20
    #: ``direct`` below this channel product C_in/G · C_out/G.
    direct_max_channel_product: int = 16
    #: Not ``blocked_direct`` with fewer output channels per group ...
    blocked_min_out_per_group: int = 16
    #: ... or with at least this many input channels per group on one row (a 1-D problem) ...
    gemm_min_in_per_group: int = 256
    #: ... or this many on an image of several rows (``gemm_col2im``).
    gemm_min_in_per_group_2d: int = 1024
    #: ``gemm_col2im`` puts a batch's images side by side in one GEMM below this many pixels per image.
    gemm_side_by_side_pixels: int = 1024

    def __post_init__(self):
        if self.isa not in _isa.ISA_ROWS:
            raise ValueError(f"isa: expected one of {', '.join(_isa.ISA_ROWS)}, got {self.isa!r}")
        if self.panel_pixels < 2 or self.panel_pixels % 2 or self.panel_pixels > 16:
            raise ValueError(f"panel_pixels: expected an even number from 2 to 16, got {self.panel_pixels}")
        if self.max_tile_co % (self.panel_bytes // 4):
            raise ValueError(
                f"max_tile_co: expected a multiple of {self.panel_bytes // 4} (float32 lanes of a "
                f"panel vector), got {self.max_tile_co}"
            )

    @property
    def panel_bytes(self) -> int:
        """Bytes of one panel vector (``NR`` registers)."""
        return self.vector_bytes * self.panel_vectors

    def lanes(self, itemsize: int) -> int:
        """Elements of one panel vector of ``itemsize``-byte values (16 float32 in ``avx2``)."""
        return self.panel_bytes // itemsize

    @property
    def accumulators(self) -> int:
        """Registers of accumulators in one register tile, ``MR·NR``."""
        return self.panel_pixels * self.panel_vectors

    def kernel_shape(self) -> tuple[int, int, int, int, int, int]:
        """The fields compiled into the kernels (closure constants, part of their cache keys): ``(panel_pixels,
        panel_bytes, tile_pixels, max_tile_co, nonoverlap_max_taps, nonoverlap_max_pixels)``."""
        return (
            self.panel_pixels,
            self.panel_bytes,
            self.tile_pixels,
            self.max_tile_co,
            self.nonoverlap_max_taps,
            self.nonoverlap_max_pixels,
        )


#: The rows: :data:`testbed.isa.ISA_ROWS` → :class:`Blocking`.
ROWS = {
    "avx512": Blocking("avx512", vector_bytes=64, panel_pixels=12, panel_vectors=2),
    "avx2": Blocking("avx2", vector_bytes=32, panel_pixels=6, panel_vectors=2),
    "generic": Blocking("generic", vector_bytes=16, panel_pixels=6, panel_vectors=2),
}


def blocking(isa: str | None = None) -> Blocking:
    """The row of ``isa`` (default: this process's, :func:`testbed.isa.selected_isa`)."""
    row = _isa.selected_isa() if isa is None else isa
    if row not in ROWS:
        raise ValueError(f"isa: expected one of {', '.join(ROWS)}, got {row!r}")
    return ROWS[row]
