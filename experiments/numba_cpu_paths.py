"""Which ``numba_cpu`` path is fastest where: the measurements behind ``numba_cpu.choose_path``.

    python -m experiments.numba_cpu_paths [--threads N] [--isolation process] [--budget 0.3] [--shapes a,b]
                                          [--blocked-tiles | --unet | --panels 6,8,12,14] [--isa all|avx2,...]
                                          [--rounds N]
    python -m experiments.numba_cpu_paths --asm [--cpu sapphirerapids]
    python -m experiments.numba_cpu_paths --suite unet3d,vocoder1d [--rounds N] [--allocation alloc|out]

Times each overlapping-tap path of ``numba_cpu`` (``blocked_direct``, ``gemm_col2im``, the ``direct`` gather;
``nonoverlap_gemm`` is left to the U-Net shapes) on the decoder suite and on shapes chosen to bracket the
rule: thin and wide channel counts, grouped and depthwise-like products, small and large kernels. Each
(shape, path) is timed through the public ``conv_transpose2d`` with :mod:`testbed.timing` (fresh worker process
per cell by default), float32, and printed as a markdown table with the load average, since the machine may be
shared. ``--blocked-tiles`` times ``blocked_direct`` with a range of output-channel tiles instead. ``--unet``
times the stride == kernel paths (``nonoverlap_gemm``, ``nonoverlap_direct``) and the bare GEMM of the same
matrices (:mod:`experiments.references`) on the U-Net suite in both layouts instead. ``--rounds N`` times each
cell in N fresh workers, the paths of a shape taking turns (:class:`testbed.timing.TimingSettings`).

**ISA rows** (:mod:`testbed.backends.numba_cpu.blocking`). ``--isa avx2,generic`` (or ``all``) times every path
under each of those rows' kernels and blockings (columns ``path@row``), so one run compares the rows on the host
it runs on; without it, the process's row only (:func:`testbed.isa.selected_isa`). A row's kernels are compiled
for the CPU Numba targets: a row below the host's runs its own register tile with the host's instructions, and a
row above it (``avx512`` on an AVX2 host) is legalised by LLVM into narrower instructions: correct, but not a
speed (the report says so). To time the ``generic`` row with 128-bit instructions, run the whole experiment
with ``NUMBA_CPU_NAME=x86-64 NUMBA_CPU_FEATURES=""`` (then it is the host's row). ``--panels 6,8,12,14`` times
``blocked_direct`` and ``nonoverlap_direct`` with those register-tile heights (MR) of the row instead (the tile
candidates of :mod:`~testbed.backends.numba_cpu.blocking`). Every cell is quoted in GFLOP/s of useful work beside
the host's single-thread SGEMM (NumPy, ``OPENBLAS_NUM_THREADS=1``, measured in a fresh process at the start).

``--asm`` compiles the micro-kernel of each ``avx512`` tile candidate for ``--cpu`` (default ``sapphirerapids``:
``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES=""``) in a subprocess, without running it, and counts in its inner loop
the FMAs, the distinct zmm accumulators and the loads per FMA (``dispatcher.inspect_asm``).

``--suite unet3d,vocoder1d`` (the other ranks' targets, issue 23) times ``numba_cpu`` as dispatched (its
``choose_path``) against its peers on those suites instead, the backends of a case taking turns in fresh workers:
on ``unet3d`` in both layouts beside the bare GEMM of the same matrices (:mod:`experiments.references`) and torch
(``conv_transpose3d``; channels last: ``channels_last_3d`` input and weight), on ``vocoder1d`` (channels first)
beside torch (``conv_transpose1d``); the tables give each ratio of medians (numba_cpu / GEMM, torch / numba_cpu).

``--threads 1`` runs the workers with one Numba and one OpenBLAS thread. On a shared 2-core host that is the
comparison to trust: with two threads each parallel region waits for both, and when another process holds a
core the wait is a scheduler time slice, so the times of every path collapse onto multiples of ~8 ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys

import numpy as np

from testbed import isa as isa_rows
from testbed.backends import numba_cpu
from testbed.backends.numba_cpu import blocking as numba_blocking
from testbed.cases import suite
from testbed.problem import Problem
from testbed.registry import Backend
from testbed.timing import ISOLATIONS, TimingJob, TimingSettings, time_jobs

from .common import DEFAULT_ROUNDS, add_rounds_argument
from .references import GEMM, TORCH_CHANNELS_LAST

#: Overlapping paths compared (``nonoverlap_gemm`` needs stride == kernel).
PATHS = ("blocked_direct", "gemm_col2im", "direct")
#: The stride == kernel paths compared with ``--unet``.
NONOVERLAP_PATHS = ("nonoverlap_gemm", "nonoverlap_direct")


def _p(c_in, c_out, size, kernel, stride=1, padding=0, output_padding=0, dilation=1, groups=1, batch=1):
    return Problem(
        batch=batch,
        in_channels=c_in,
        in_size=size,
        out_channels=c_out,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        dtype=np.dtype(np.float32),
    )


#: Shapes beyond the decoder suite that bracket choose_path's rule.
EXTRA_SHAPES = {
    "dcgan_rgb": _p(64, 3, 32, 4, 2, 1, batch=8),  # a generator's last layer: 3 output channels
    "dcgan_head": _p(512, 256, 8, 4, 2, 1, batch=8),  # wide channels, small images
    "wide_4x4": _p(1024, 512, 4, 4, 2, 1, batch=16),
    "thin8": _p(8, 8, 64, 3, 1, 1, batch=2),  # channel product 64
    "thin4": _p(4, 4, 64, 3, 2, 1, 1, batch=2),  # channel product 16
    "g16_4x4": _p(64, 64, 64, 3, 2, 1, 1, groups=16),  # per group 4 × 4
    "g32_1x2": _p(32, 64, 64, 3, 2, 1, 1, groups=32),  # depth multiplier 2
    "k2s1": _p(64, 64, 32, 2, 1, batch=4),
    "k7s1p3": _p(32, 32, 32, 7, 1, 3, batch=2),
    "k2s3_gaps": _p(64, 64, 32, 2, 3, batch=2),  # stride > kernel: gaps, no overlap
}


def run_path(path, row, panel_pixels, x, weight, bias, problem, out=None):
    """``numba_cpu`` forced onto ``path`` under ISA row ``row`` (None: the process's), its register tile
    ``panel_pixels`` high (None: the row's); module level, so a worker process can unpickle it."""
    blocking = numba_blocking.blocking(row)
    if panel_pixels is not None:
        blocking = dataclasses.replace(blocking, panel_pixels=panel_pixels)
    return numba_cpu.run_path(path, x, weight, bias, problem, out, blocking=blocking)


def run_blocked_tile(tile_co, x, weight, bias, problem, out=None):
    """``blocked_direct`` with a given output-channel tile."""
    return numba_cpu.run_path("blocked_direct", x, weight, bias, problem, out, tile_co=tile_co)


def path_backend(path: str, row: str | None = None, panel_pixels: int | None = None) -> Backend:
    # (the layouts the path computes natively: the others are converted, as numba_cpu's dispatcher does)
    layouts = ("NCHW", "NHWC") if path in numba_cpu.NHWC_PATHS else ("NCHW",)
    name = f"numba_cpu:{path}" + (f"@{row}" if row else "") + (f"@mr{panel_pixels}" if panel_pixels else "")
    return Backend(
        name=name,
        description=f"numba_cpu forced onto {path}",
        writes_out=True,
        layouts=layouts,
        run=functools.partial(run_path, path, row, panel_pixels),
    )


def tile_backend(tile_co: int) -> Backend:
    return Backend(
        name=f"blocked_direct:co{tile_co}",
        description=f"blocked_direct, tile_co={tile_co}",
        run=functools.partial(run_blocked_tile, tile_co),
        writes_out=True,
    )


#: The AVX-512 register tiles compared by ``--asm``, (MR pixels, NR zmm): the AVX2 row's 64-byte panel vector
#: (6 zmm accumulators, before the per-ISA table), then 12 to 28 accumulators.
ASM_TILES = ((6, 1), (6, 2), (8, 2), (12, 2), (14, 2))


def _panel_kernel(panel: int, panel_bytes: int):
    """An ``@njit`` function that is one micro-kernel call (``panel`` pixels × one panel vector), for its assembly."""
    from numba import njit

    from testbed.backends.numba_cpu.intrinsics import fma_panel, strided

    def kernel(acc, w, x, n):
        fma_panel(acc, strided(0, 64, panel), w, 0, 64, x, strided(0, 1, panel), panel, n, panel_bytes)

    return njit(kernel)


def _inner_loop(asm: str) -> list:
    """The lines from a label to the backward jump to it that hold the most FMAs: the input-channel loop."""
    lines, best = asm.splitlines(), []
    for at, line in enumerate(lines):
        jump = re.match(r"\s*j\w+\s+(\.LBB\w+)", line)
        if not jump:
            continue
        start = next((k for k in range(at, -1, -1) if lines[k].startswith(jump.group(1) + ":")), None)
        if start is not None:
            body = lines[start : at + 1]
            if sum("vfmadd" in b for b in body) > sum("vfmadd" in b for b in best):
                best = body
    return best


def _is_load(line: str) -> bool:
    """A vector load or broadcast from memory (AT&T syntax: the memory operand is a source, not the last one)."""
    fields = line.split(None, 1)
    if len(fields) < 2 or "(" not in fields[1]:
        return False
    op, operands = fields[0], fields[1]
    return op.startswith(("vbroadcast", "vfmadd")) or (op.startswith("vmov") and not operands.rstrip().endswith(")"))


def _asm_child(tiles) -> dict:
    from numba import types

    counts = {}
    for panel, vectors in tiles:
        for name, dtype in (("float32", types.float32), ("float64", types.float64)):
            kernel = _panel_kernel(panel, 64 * vectors)
            array = types.Array(dtype, 1, "C")
            kernel.compile((array, array, array, types.int64))
            loop = _inner_loop(next(iter(kernel.inspect_asm().values())))
            fmas = [line for line in loop if "vfmadd" in line]
            counts[f"{panel}x{vectors} {name}"] = {
                "fmas": len(fmas),
                "zmm_fmas": sum("zmm" in line for line in fmas),
                "accumulators": len({line.split(",")[-1].strip() for line in fmas}),
                "loads": sum(_is_load(line) for line in loop),
            }
    return counts


def assembly_counts(cpu: str = "sapphirerapids", tiles=ASM_TILES) -> dict:
    """``{"MRxNR dtype": {fmas, zmm_fmas, accumulators, loads}}`` in the inner (channel) loop of the micro-kernel of
    each AVX-512 tile candidate (MR pixels × NR zmm), compiled for ``cpu`` in a subprocess (never run)."""
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": "", "TESTBED_NUMBA_CACHE": "0"}
    code = f"import json; from experiments.numba_cpu_paths import _asm_child; print(json.dumps(_asm_child({tiles!r})))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"compiling for {cpu} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def assembly_markdown(counts: dict, cpu: str) -> str:
    lines = [
        f"Micro-kernel inner loop compiled for {cpu} (loads: weight vectors and broadcasts):",
        "",
        "| tile MR × NR | FMAs (zmm) | accumulators | loads | loads per FMA |",
        "|---|---|---|---|---|",
    ]
    for name, c in counts.items():
        lines.append(
            f"| {name} | {c['fmas']} ({c['zmm_fmas']}) | {c['accumulators']} | {c['loads']} | "
            f"{c['loads'] / max(1, c['fmas']):.2f} |"
        )
    return "\n".join(lines)


def unet_shapes() -> dict:
    """The U-Net suite in both layouts, named ``unet1:NCHW`` … ``unet4:NHWC``."""
    return {
        f"{name}:{layout}": problem.with_(layout=layout)
        for name, problem in suite("unet").items()
        for layout in ("NCHW", "NHWC")
    }


def shapes(names=None, unet=False) -> dict:
    every = unet_shapes() if unet else {**suite("decoder"), **EXTRA_SHAPES}
    unknown = set(names or ()) - set(every)
    if unknown:
        raise SystemExit(f"--shapes: unknown {sorted(unknown)}; known: {', '.join(every)}")
    return {name: problem for name, problem in every.items() if not names or name in names}


#: The peers of ``--suite``: per suite, the layouts timed (channels first, channels last) and per layout the
#: columns, numba_cpu first.
SUITE_PEERS = {
    "unet3d": {"NCDHW": ("numba_cpu", GEMM, "torch"), "NDHWC": ("numba_cpu", GEMM, TORCH_CHANNELS_LAST)},
    "vocoder1d": {"NCL": ("numba_cpu", "torch")},
}


def suite_jobs(names) -> dict:
    """``{case: [TimingJob]}``: every (layout, peer) of each case of the suites ``names`` (:data:`SUITE_PEERS`),
    columns named ``backend LAYOUT``."""
    unknown = [n for n in names if n not in SUITE_PEERS]
    if unknown:
        raise SystemExit(f"--suite: unknown {unknown}; known: {', '.join(SUITE_PEERS)}")
    return {
        case: [
            (f"{getattr(peer, 'name', peer)} {layout}", problem.with_(layout=layout), peer)
            for layout, peers in SUITE_PEERS[name].items()
            for peer in peers
        ]
        for name in names
        for case, problem in suite(name).items()
    }


def measure_suites(cases: dict, settings: TimingSettings, isolation: str, allocation: str) -> dict:
    """``{case: {column: (median ms, min ms)}}`` of :func:`suite_jobs`' cases (NaN where a cell failed)."""
    table = {}
    for case, columns in cases.items():
        jobs = [TimingJob(problem, peer, allocation, rng=0) for _, problem, peer in columns]
        rows = time_jobs(jobs, settings, isolation=isolation)
        table[case] = {
            column: (row["median_s"] * 1e3, row["min_s"] * 1e3) if row["status"] == "ok" else (np.nan, np.nan)
            for (column, _, _), row in zip(columns, rows)
        }
        print(f"  {case}: " + ", ".join(f"{c} {ms[0]:.3g} ms" for c, ms in table[case].items()), flush=True)
    return table


def suite_markdown(table: dict, cases: dict) -> str:
    """Per suite, median (min) ms of each column, numba_cpu's ratio to the bare GEMM (within 1.15 is the target)
    and torch's time over numba_cpu's (above 1: numba_cpu faster)."""
    blocks = []
    for name, layouts in SUITE_PEERS.items():
        rows = [case for case in table if case in suite(name)]
        if not rows:
            continue
        header, ratios = ["case", "path"], []
        for layout, peers in layouts.items():
            names = [f"{getattr(peer, 'name', peer)} {layout}" for peer in peers]
            header += names
            ratios += [(f"numba_cpu / gemm {layout}", names[0], names[1])] if GEMM in peers else []
            ratios += [(f"torch / numba_cpu {layout}", names[-1], names[0])]
        lines = [f"{name}:", "", "| " + " | ".join(header + [r[0] for r in ratios]) + " |"]
        lines.append("|---" * (len(header) + len(ratios)) + "|")
        for case in rows:
            cells = table[case]
            problem = next(problem for column, problem, _ in cases[case] if column.startswith("numba_cpu"))
            text = [case, numba_cpu.choose_path(problem)]
            text += [f"{cells[c][0]:.3g} ({cells[c][1]:.3g})" for c in header[2:]]
            text += [f"{cells[a][0] / cells[b][0]:.2f}" for _, a, b in ratios]
            lines.append("| " + " | ".join(text) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def measure(problems: dict, backends: list, settings: TimingSettings, isolation: str) -> dict:
    """``{shape: {backend: (median ms, min ms)}}`` (NaN where a cell failed)."""
    table = {}
    for name, problem in problems.items():
        jobs = [TimingJob(problem, backend, rng=0) for backend in backends]
        rows = time_jobs(jobs, settings, isolation=isolation)
        table[name] = {
            row["backend"]: (row["median_s"] * 1e3, row["min_s"] * 1e3) if row["status"] == "ok" else (np.nan, np.nan)
            for row in rows
        }
        print(f"  {name}: " + ", ".join(f"{b} {ms[0]:.3g} ms" for b, ms in table[name].items()), flush=True)
    return table


def markdown(table: dict, problems: dict) -> str:
    """Median (min) ms and the median's GFLOP/s of useful work per cell."""
    columns = list(next(iter(table.values())))
    lines = ["| shape | choose_path | " + " | ".join(columns) + " | fastest |", "|---" * (len(columns) + 3) + "|"]
    for name, cells in table.items():
        fastest = min(cells, key=lambda b: cells[b][0] if cells[b][0] == cells[b][0] else np.inf)
        flops = problems[name].flops
        text = [f"{cells[b][0]:.3g} ({cells[b][1]:.3g}) {flops / cells[b][0] / 1e6:.0f} GF/s" for b in columns]
        lines.append(f"| {name} | {numba_cpu.choose_path(problems[name])} | " + " | ".join(text) + f" | {fastest} |")
    return "\n".join(lines)


def single_thread_sgemm_gflops() -> float:
    """The host's single-thread SGEMM rate (NumPy's BLAS, 1024³, best of a few), in a fresh process with every
    BLAS and OpenMP pool at one thread."""
    env = {**os.environ, **dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), "1")}
    code = "from experiments.harness.metadata import measure_gemm_gflops; print(measure_gemm_gflops())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def isa_list(text: str) -> list:
    rows = list(isa_rows.ISA_ROWS) if text == "all" else [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in isa_rows.ISA_ROWS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown rows {unknown}; known: {', '.join(isa_rows.ISA_ROWS)}, all")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.numba_cpu_paths",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--isolation", choices=ISOLATIONS, default="process")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of timed repeats per cell")
    parser.add_argument(
        "--threads", type=int, default=None, help="Numba/OpenMP/OpenBLAS threads of the workers (default: all cores)"
    )
    parser.add_argument("--shapes", type=lambda t: [s.strip() for s in t.split(",") if s.strip()], default=None)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--blocked-tiles",
        action="store_true",
        help="time blocked_direct with output-channel tiles 16, 32, 64, 128 instead of the paths",
    )
    which.add_argument(
        "--unet",
        action="store_true",
        help="time nonoverlap_gemm, nonoverlap_direct and the bare GEMM on the U-Net suite, NCHW and NHWC, instead",
    )
    which.add_argument(
        "--panels",
        type=lambda t: [int(v) for v in t.split(",")],
        default=None,
        help="time blocked_direct and nonoverlap_direct with these register-tile heights (MR)",
    )
    which.add_argument(
        "--asm",
        action="store_true",
        help="count FMAs, accumulators and loads of the AVX-512 tile candidates compiled for --cpu",
    )
    which.add_argument(
        "--suite",
        type=lambda t: [s.strip() for s in t.split(",") if s.strip()],
        default=None,
        help="time numba_cpu against the bare GEMM and torch on these suites (unet3d, vocoder1d) instead",
    )
    parser.add_argument(
        "--allocation",
        choices=("alloc", "out"),
        default="alloc",
        help="--suite: each call allocates its result, or writes into a preallocated one",
    )
    parser.add_argument("--cpu", default="sapphirerapids", help="the CPU --asm compiles for (NUMBA_CPU_NAME)")
    parser.add_argument(
        "--isa",
        type=isa_list,
        default=None,
        help="ISA rows whose kernels to time (comma-separated, or all; default: this process's)",
    )
    add_rounds_argument(parser, "cell")
    args = parser.parse_args(argv)
    if args.asm:
        print(assembly_markdown(assembly_counts(args.cpu), args.cpu))
        return
    if args.suite:
        settings = TimingSettings(budget_s=args.budget, rounds=args.rounds or DEFAULT_ROUNDS)
        if args.threads is not None:
            for variable in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                os.environ[variable] = str(args.threads)
        cases = suite_jobs(args.suite)
        if args.shapes:
            cases = {case: jobs for case, jobs in cases.items() if case in args.shapes}
        load_before = os.getloadavg()
        table = measure_suites(cases, settings, args.isolation, args.allocation)
        print(
            f"\nMedian (min) ms per call (float32, isolation {args.isolation}, {settings.rounds} rounds, threads "
            f"{args.threads or 'all'}, allocation {args.allocation}, load average before {load_before[0]:.2f}, after "
            f"{os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; CPU {isa_rows.target_cpu()[0]}, ISA row "
            f"{isa_rows.selected_isa()}).\n"
        )
        print(suite_markdown(table, cases))
        return
    problems = shapes(args.shapes, args.unet)
    rows = args.isa or [None]
    if args.blocked_tiles:
        backends = [tile_backend(t) for t in (16, 32, 64, 128)]
    elif args.panels:
        backends = [
            path_backend(p, row, mr)
            for p in ("blocked_direct", "nonoverlap_direct")
            for row in rows
            for mr in args.panels
        ]
    elif args.unet:
        backends = [*(path_backend(p, row) for p in NONOVERLAP_PATHS for row in rows), GEMM]
    else:
        backends = [path_backend(p, row) for p in PATHS for row in rows]
    settings = TimingSettings(budget_s=args.budget, rounds=args.rounds or DEFAULT_ROUNDS)
    if args.threads is not None:  # read by the spawned workers at import
        for variable in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[variable] = str(args.threads)
    sgemm = single_thread_sgemm_gflops()
    load_before = os.getloadavg()
    table = measure(problems, backends, settings, args.isolation)
    host = isa_rows.host_isa()
    above = [r for r in rows if r and isa_rows.ISA_ROWS.index(r) > isa_rows.ISA_ROWS.index(host)]
    print(
        f"\nMedian (min) ms per call and GFLOP/s of the median (float32, isolation {args.isolation}, threads "
        f"{args.threads or 'all'}, load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}, "
        f"{os.cpu_count()} CPUs; CPU {isa_rows.target_cpu()[0]}, ISA row {isa_rows.selected_isa()}, host row "
        f"{host}). Single-thread SGEMM here: {sgemm:.0f} GFLOP/s (NumPy, OPENBLAS_NUM_THREADS=1)."
        + (
            f" Rows above this host's ({', '.join(above)}) ran legalised into narrower instructions: correct, not "
            f"a speed."
            if above
            else ""
        )
        + "\n"
    )
    print(markdown(table, problems))


if __name__ == "__main__":
    main()
