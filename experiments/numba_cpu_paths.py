"""Which ``numba_cpu`` path is fastest where: the measurements behind ``numba_cpu.choose_path``.

    python -m experiments.numba_cpu_paths [--threads N] [--isolation process] [--budget 0.3] [--shapes a,b]
                                          [--blocked-tiles | --unet] [--rounds N]

Times each overlapping-tap path of ``numba_cpu`` (``blocked_direct``, ``gemm_col2im``, the ``direct`` gather;
``nonoverlap_gemm`` is left to the U-Net shapes) on the decoder suite and on shapes chosen to bracket the
rule: thin and wide channel counts, grouped and depthwise-like products, small and large kernels. Each
(shape, path) is timed through the public ``conv_transpose2d`` with :mod:`testbed.timing` (fresh worker process
per cell by default), float32, and printed as a markdown table with the load average, since the machine may be
shared. ``--blocked-tiles`` times ``blocked_direct`` with a range of output-channel tiles instead. ``--unet``
times the stride == kernel paths (``nonoverlap_gemm``, ``nonoverlap_direct``) and the bare GEMM of the same
matrices (:mod:`experiments.references`) on the U-Net suite in both layouts instead. ``--rounds N`` times each
cell in N fresh workers, the paths of a shape taking turns (:class:`testbed.timing.TimingSettings`).

``--threads 1`` runs the workers with one Numba and one OpenBLAS thread. On a shared 2-core host that is the
comparison to trust: with two threads each parallel region waits for both, and when another process holds a
core the wait is a scheduler time slice, so the times of every path collapse onto multiples of ~8 ms.
"""

from __future__ import annotations

import argparse
import functools
import os

import numpy as np

from testbed.backends import numba_cpu
from testbed.cases import suite
from testbed.problem import Problem
from testbed.registry import Backend
from testbed.timing import ISOLATIONS, TimingJob, TimingSettings, time_jobs

from .common import DEFAULT_ROUNDS, add_rounds_argument
from .references import GEMM

#: Overlapping paths compared (``nonoverlap_gemm`` needs stride == kernel).
PATHS = ("blocked_direct", "gemm_col2im", "direct")
#: The stride == kernel paths compared with ``--unet``.
NONOVERLAP_PATHS = ("nonoverlap_gemm", "nonoverlap_direct")


def _p(c_in, c_out, size, kernel, stride=1, padding=0, output_padding=0, dilation=1, groups=1, batch=1):
    return Problem(batch=batch, in_channels=c_in, in_size=size, out_channels=c_out, kernel_size=kernel,
                   stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
                   groups=groups, dtype=np.dtype(np.float32))


#: Shapes beyond the decoder suite that bracket choose_path's rule.
EXTRA_SHAPES = {
    "dcgan_rgb": _p(64, 3, 32, 4, 2, 1, batch=8),             # a generator's last layer: 3 output channels
    "dcgan_head": _p(512, 256, 8, 4, 2, 1, batch=8),          # wide channels, small images
    "wide_4x4": _p(1024, 512, 4, 4, 2, 1, batch=16),
    "thin8": _p(8, 8, 64, 3, 1, 1, batch=2),                  # channel product 64
    "thin4": _p(4, 4, 64, 3, 2, 1, 1, batch=2),               # channel product 16
    "g16_4x4": _p(64, 64, 64, 3, 2, 1, 1, groups=16),          # per group 4 × 4
    "g32_1x2": _p(32, 64, 64, 3, 2, 1, 1, groups=32),          # depth multiplier 2
    "k2s1": _p(64, 64, 32, 2, 1, batch=4),
    "k7s1p3": _p(32, 32, 32, 7, 1, 3, batch=2),
    "k2s3_gaps": _p(64, 64, 32, 2, 3, batch=2),                # stride > kernel: gaps, no overlap
}


def run_path(path, x, weight, bias, problem, out=None):
    """``numba_cpu`` forced onto ``path`` (module level, so a worker process can unpickle it)."""
    return numba_cpu._RUNNERS[path](x, weight, bias, problem, out)


def run_blocked_tile(tile_co, x, weight, bias, problem, out=None):
    """``blocked_direct`` with a given output-channel tile."""
    return numba_cpu._blocked_direct(x, weight, bias, problem, out, tile_co=tile_co)


def path_backend(path: str) -> Backend:
    # (the layouts the path computes natively: the others are converted, as numba_cpu's dispatcher does)
    layouts = ("NCHW", "NHWC") if path in numba_cpu.NHWC_PATHS else ("NCHW",)
    return Backend(name=f"numba_cpu:{path}", description=f"numba_cpu forced onto {path}",
                   run=functools.partial(run_path, path), writes_out=True, layouts=layouts)


def tile_backend(tile_co: int) -> Backend:
    return Backend(name=f"blocked_direct:co{tile_co}", description=f"blocked_direct, tile_co={tile_co}",
                   run=functools.partial(run_blocked_tile, tile_co), writes_out=True)


def unet_shapes() -> dict:
    """The U-Net suite in both layouts, named ``unet1:NCHW`` … ``unet4:NHWC``."""
    return {f"{name}:{layout}": problem.with_(layout=layout) for name, problem in suite("unet").items()
            for layout in ("NCHW", "NHWC")}


def shapes(names=None, unet=False) -> dict:
    every = unet_shapes() if unet else {**suite("decoder"), **EXTRA_SHAPES}
    unknown = set(names or ()) - set(every)
    if unknown:
        raise SystemExit(f"--shapes: unknown {sorted(unknown)}; known: {', '.join(every)}")
    return {name: problem for name, problem in every.items() if not names or name in names}


def measure(problems: dict, backends: list, settings: TimingSettings, isolation: str) -> dict:
    """``{shape: {backend: (median ms, min ms)}}`` (NaN where a cell failed)."""
    table = {}
    for name, problem in problems.items():
        jobs = [TimingJob(problem, backend, rng=0) for backend in backends]
        rows = time_jobs(jobs, settings, isolation=isolation)
        table[name] = {row["backend"]: (row["median_s"] * 1e3, row["min_s"] * 1e3) if row["status"] == "ok"
                       else (np.nan, np.nan) for row in rows}
        print(f"  {name}: " + ", ".join(f"{b} {ms[0]:.3g} ms" for b, ms in table[name].items()), flush=True)
    return table


def markdown(table: dict, problems: dict) -> str:
    columns = list(next(iter(table.values())))
    lines = ["| shape | choose_path | " + " | ".join(columns) + " | fastest |",
             "|---" * (len(columns) + 3) + "|"]
    for name, cells in table.items():
        fastest = min(cells, key=lambda b: cells[b][0] if cells[b][0] == cells[b][0] else np.inf)
        lines.append(f"| {name} | {numba_cpu.choose_path(problems[name])} | "
                     + " | ".join(f"{cells[b][0]:.3g} ({cells[b][1]:.3g})" for b in columns) + f" | {fastest} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.numba_cpu_paths", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isolation", choices=ISOLATIONS, default="process")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of timed repeats per cell")
    parser.add_argument("--threads", type=int, default=None,
                        help="Numba/OpenMP/OpenBLAS threads of the workers (default: all cores)")
    parser.add_argument("--shapes", type=lambda t: [s.strip() for s in t.split(",") if s.strip()], default=None)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--blocked-tiles", action="store_true",
                       help="time blocked_direct with output-channel tiles 16, 32, 64, 128 instead of the paths")
    which.add_argument("--unet", action="store_true",
                       help="time nonoverlap_gemm, nonoverlap_direct and the bare GEMM on the U-Net suite, NCHW and "
                            "NHWC, instead")
    add_rounds_argument(parser, "cell")
    args = parser.parse_args(argv)
    problems = shapes(args.shapes, args.unet)
    backends = ([tile_backend(t) for t in (16, 32, 64, 128)] if args.blocked_tiles
                else [*map(path_backend, NONOVERLAP_PATHS), GEMM] if args.unet else [path_backend(p) for p in PATHS])
    settings = TimingSettings(budget_s=args.budget, rounds=args.rounds or DEFAULT_ROUNDS)
    if args.threads is not None:   # read by the spawned workers at import
        for variable in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[variable] = str(args.threads)
    load_before = os.getloadavg()
    table = measure(problems, backends, settings, args.isolation)
    print(f"\nMedian (min) ms per call (float32, isolation {args.isolation}, threads {args.threads or 'all'}, "
          f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs):\n")
    print(markdown(table, problems))


if __name__ == "__main__":
    main()
