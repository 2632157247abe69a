"""Speed of every backend on the named suites (testbed.cases: unet, decoder, tiny).

Per case × backend × dtype: first-call time (includes Numba's compile or cache load), median / min / IQR of
the warm calls (time.perf_counter through the public ``conv_transpose2d``), GFLOP/s of useful work
(``Problem.flops`` = 2·N·C_in·C_out/groups·H·W·kH·kW), GB/s of ``Problem.bytes_moved`` (input + weight +
output once), arithmetic intensity, and speedup over a baseline backend (default ``torch`` when available,
else ``col2im``; > 1 means faster than the baseline). The machine's float32 GEMM rate (NumPy matmul) and copy
bandwidth (np.copyto, read + write bytes) are measured at the start and stored in meta.json; they are the
ceilings of the roofline figure (Williams, Waterman & Patterson, CACM 2009).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from testbed.cases import SUITES, suite
from experiments.harness.metadata import measure_copy_gbps, measure_gemm_gflops
from testbed.registry import available_backends
from experiments.harness.reporting import (finish_report, grouped_bar_figure, load_run, markdown_table, report_header,
                               roofline_figure)
from experiments.harness.runner import TimingSettings, cell_rng, grid, run_sweep, time_backend

from .common import available_backend, finish, make_parser, selected_backends, start_run

NAME = "speed"
#: Columns of the report's table of every cell.
CELL_COLUMNS = ["suite", "case", "descriptor", "backend", "resolved_backend", "dtype", "status", "median_s",
                "min_s", "iqr_s", "repeats", "first_call_s", "gflops", "gbps", "speedup", "timing_method"]
#: Cells left out unless --exclude says otherwise: on the U-Net shapes the oracle ``naive`` takes 5-15 s per
#: call here, and ``fft`` ~80 s (its channel sum is C_in·C_out kernel spectra, unet1: 1024·512·57·29 complex
#: values ≈ 7 GB, computed in blocks of output channels and streamed through a per-frequency GEMM).
DEFAULT_EXCLUDE = "unet:naive,unet:fft"


def suite_list(text: str) -> list[str]:
    import argparse
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in SUITES for name in names):
        raise argparse.ArgumentTypeError(f"--suite must be a comma list of {', '.join(SUITES)}; got {text!r}")
    return names


def exclusion_list(text: str) -> list[tuple[str, str]]:
    """argparse type: ``suite:backend`` pairs (``*`` matches any), or ``none``."""
    import argparse
    if text.strip().lower() == "none":
        return []
    pairs = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        suite_name, _, backend = item.partition(":")
        if not backend or (suite_name != "*" and suite_name not in SUITES):
            raise argparse.ArgumentTypeError(f"--exclude must be 'none' or a comma list of suite:backend "
                                             f"(suite one of {', '.join(SUITES)} or *), got {text!r}")
        pairs.append((suite_name, backend))
    return pairs


def excluded(pairs, suite_name: str, backend: str) -> bool:
    return any(s in ("*", suite_name) and b in ("*", backend) for s, b in pairs)


def default_baseline() -> str:
    return "torch" if "torch" in available_backends() else "col2im"


def build_parser():
    parser = make_parser(NAME, __doc__, dtypes="float32")
    parser.add_argument("--suite", type=suite_list, default=None,
                        help="comma list of suites (default unet,decoder,tiny; tiny with --quick)")
    parser.add_argument("--baseline", default=None, type=available_backend,
                        help="backend the speedups are relative to (default torch if available, else col2im)")
    parser.add_argument("--exclude", type=exclusion_list, default=exclusion_list(DEFAULT_EXCLUDE),
                        help=f"suite:backend cells not to run, or 'none' (default {DEFAULT_EXCLUDE}: the oracle "
                             f"takes seconds and fft over a minute per call on the U-Net shapes)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed repeats per cell after warm-up; repeats go on until it is spent "
                             "(default: 0.3 s and at most 30 repeats; 0.01 s and at most 3 with --quick)")
    return parser


def machine_ceilings(quick: bool) -> dict:
    if quick:
        return {"gemm_gflops_f32": measure_gemm_gflops(n=256, seconds=0.1, repeats=5),
                "copy_gbps": measure_copy_gbps(megabytes=16, seconds=0.1, repeats=5), "ceilings_quick": True}
    return {"gemm_gflops_f32": measure_gemm_gflops(), "copy_gbps": measure_copy_gbps(), "ceilings_quick": False}


def make_measure(seed: int, settings: TimingSettings):
    def measure(cell, backend):
        problem = cell.problem
        x, weight, bias = problem.random_arrays(cell_rng(seed, cell))
        stats = time_backend(backend, problem, x, weight, bias, settings)
        stats.update(flops=problem.flops, bytes_moved=problem.bytes_moved,
                     intensity=problem.flops / problem.bytes_moved)
        if "median_s" in stats:
            stats["gflops"] = problem.flops / stats["median_s"] / 1e9
            stats["gbps"] = problem.bytes_moved / stats["median_s"] / 1e9
        return stats
    return measure


def add_speedup(baseline: str):
    def finalize(frame):
        if "median_s" not in frame:
            return frame
        base = frame[frame["backend"] == baseline].set_index(["case", "dtype"])["median_s"]
        keys = list(zip(frame["case"], frame["dtype"]))
        frame = frame.copy()
        frame["baseline"] = baseline
        frame["speedup"] = [base.get(k, np.nan) / m if m == m else np.nan for k, m in zip(keys, frame["median_s"])]
        return frame
    return finalize


def main(argv=None, *, out=None, suites=None):
    args = build_parser().parse_args(argv)
    suites = args.suite or suites or (["tiny"] if args.quick else ["unet", "decoder", "tiny"])
    baseline = args.baseline or default_baseline()
    settings = TimingSettings.quick() if args.quick else TimingSettings()
    if args.budget is not None:
        # an explicit budget governs: repeats continue until it is spent (capped only against runaway loops)
        settings = TimingSettings(settings.warmup, settings.min_repeats, 100_000, args.budget)
    run_dir, meta = start_run(NAME, args, argv, lambda: {"suites": suites, "baseline": baseline,
                                                          "excluded": [f"{s}:{b}" for s, b in args.exclude],
                                                          "timing": settings.__dict__,
                                                          **machine_ceilings(args.quick)}, out=out)
    backends = selected_backends(args)
    cells = [cell for name in suites
             for cell in grid(suite(name), [b for b in backends if not excluded(args.exclude, name, b)],
                              args.dtypes, tags=(("suite", name),))]
    run_sweep(cells, make_measure(args.seed, settings), run_dir, resume=args.resume,
              progress=not args.no_progress, desc=NAME, finalize=add_speedup(meta.get("baseline", baseline)))
    write_report(run_dir)
    finish(run_dir, NAME)
    return run_dir


def _pivot(frame, value):
    return frame.pivot_table(index="case", columns="backend", values=value, sort=False)


def write_report(run_dir) -> str:
    """Rebuild report.md, the bar charts and the roofline from the saved results.csv and meta.json."""
    run_dir = Path(run_dir)
    meta, frame = load_run(run_dir)
    peak, bandwidth = meta.get("gemm_gflops_f32"), meta.get("copy_gbps")
    parts = [report_header(meta, "Speed of the backends"),
             f"Machine ceilings measured at the start of the run: float32 GEMM **{peak:.1f} GFLOP/s** "
             f"(NumPy matmul), copy bandwidth **{bandwidth:.1f} GB/s** (np.copyto, read + write). Baseline for "
             f"speedups: **{meta.get('baseline')}** (> 1 = faster). Times are medians of warm calls through "
             f"`conv_transpose2d`; first call = the call before warm-up (includes Numba compilation or cache "
             f"load).\n"]
    if meta.get("excluded"):
        parts.append(f"Cells not run (--exclude): {', '.join(meta['excluded'])}.\n")
    if not frame.empty and "median_s" in frame:
        ok = frame[frame["status"] == "ok"].copy()
        ok["median_ms"] = ok["median_s"] * 1e3
        ok["first_call_ms"] = ok["first_call_s"] * 1e3
        for suite_name, group in ok.groupby("suite", sort=False):
            for dtype, sub in group.groupby("dtype", sort=False):
                title = f"suite {suite_name}, {dtype}"
                path = run_dir / f"speed_{suite_name}_{dtype}.png"
                grouped_bar_figure(_pivot(sub, "gflops"), f"GFLOP/s of useful work, {title} (higher is better)",
                                   "GFLOP/s (2·N·Cin·Cout/g·H·W·kH·kW / median time)", path)
                descriptors = sub.drop_duplicates("case").set_index("case")["descriptor"]
                parts += [f"## {title}\n", markdown_table(descriptors.to_frame()),
                          "\nMedian time (ms):\n", markdown_table(_pivot(sub, "median_ms"), floatfmt=".3g"),
                          "\nGFLOP/s:\n", markdown_table(_pivot(sub, "gflops"), floatfmt=".3g"),
                          f"\nSpeedup over {meta.get('baseline')}:\n",
                          markdown_table(_pivot(sub, "speedup"), floatfmt=".3g"),
                          "\nFirst call (ms):\n", markdown_table(_pivot(sub, "first_call_ms"), floatfmt=".3g"),
                          f"\n![GFLOP/s bars, {title}]({path.name})\n"]
        if peak and bandwidth and len(ok):
            path = run_dir / "roofline.png"
            roofline_figure(ok[["backend", "case", "intensity", "gflops"]], peak, bandwidth,
                            "Roofline: every (backend, case) of this run", path)
            parts += ["## Roofline\n", f"![roofline]({path.name})\n"]
    return finish_report(run_dir, parts, frame, CELL_COLUMNS)


if __name__ == "__main__":
    main()
