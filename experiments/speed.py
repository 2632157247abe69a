"""Speed of every backend on the named suites (testbed.cases: unet, decoder, tiny; the 3-D unet3d and the 1-D
vocoder1d with ``--suite``).

Per case × backend × dtype, through the public ``conv_transpose2d`` (``1d``/``3d`` at the other ranks), with
:mod:`testbed.timing`: first-call time (includes Numba's compile or cache load), median / min / IQR of warm
per-call times (auto-ranged loops for sub-millisecond calls), minor page faults per call, peak RSS, GFLOP/s of
useful work (``Problem.flops`` = 2·N·C_in·C_out/groups·prod(in_size)·prod(kernel_size), at every rank), GB/s of
``Problem.bytes_moved`` (input + weight + output once), arithmetic intensity, and speedup over a baseline backend
(default ``torch`` when available, else ``col2im``; > 1 means faster than the baseline) with a bootstrap 95 %
confidence interval.

``--layout NHWC`` times every backend on channels-last input and output (default NCHW: channels first). The
name stands for its family at every case's rank (:data:`testbed.problem.LAYOUTS_BY_RANK`): NHWC is NLC for a
1-D case and NDHWC for a 3-D one (those names are accepted too, with the same meaning); every row's ``layout``
column holds the layout it was timed in, its ``rank`` column the spatial rank. On the cases with stride ==
kernel and no padding (the U-Net up-convolutions, 2-D and 3-D) two reference rows are timed in the same run,
the same way (:mod:`experiments.references`, not registered in the library): ``gemm``, the bare GEMM of the
same matrices, the floor of a fused up-convolution, and ``torch_channels_last``, PyTorch on channels-last
tensors (always channels last: NHWC with ``torch.channels_last``, NDHWC with ``torch.channels_last_3d``; none
in 1-D, where PyTorch has no channels-last format); the report gives every backend's ``ratio_to_gemm`` (median
/ the gemm row's median). Leave them out with ``--references none``, or add them to every such case of the
other suites with ``all``.

``--direction`` (default ``forward``): a comma list of :data:`testbed.registry.DIRECTIONS`; ``backward_data`` and
``backward_weight`` time :func:`testbed.conv_transpose_backward` asked for that one gradient (``output_mask``) of
a standard-normal ``grad_output`` (:func:`testbed.timing.prepare_call`). Every row has a ``direction`` column; a
backend that does not declare a direction (``Backend.directions``) gets ``unsupported`` rows there; speedups
compare cells of the same direction. Each gradient's GFLOP/s counts the forward's useful work (``Problem.flops``:
the data gradient is the product of ``grad_output``'s columns with the weight, the weight gradient that of the
input with them, the same sizes as the forward); its ``ratio_to_gemm`` is over the forward's bare GEMM, a
product of the same size (the reference rows are timed in the forward direction).

``--isolation`` (default ``process``): each cell in a fresh worker process, so no backend's thread pools or
allocator state reach another's time; ``interleaved``: one process, the backends of a case sampled
round-robin; ``inline``: one after another in this process (the default with ``--quick``, for tests).
``--allocation``: ``alloc`` (each call allocates its result) or ``out`` (written into a preallocated
``out=``). The baseline runs first in each case and, except when interleaved, is timed again after the
case's last backend (``baseline_drift``), so drift over the case shows.

The machine's float32 GEMM rate (NumPy matmul) and copy bandwidth (np.copyto, read + write bytes) are
measured at the start and stored in meta.json, with the thread pools, allocator/OpenBLAS environment and load
average before and after; they are the ceilings of the roofline figure (Williams, Waterman & Patterson, CACM
2009).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from experiments.harness.metadata import (
    machine_state_lines,
    measure_copy_gbps,
    measure_gemm_gflops,
    record_end_state,
    thread_pools_after_every_backend,
)
from experiments.harness.reporting import (
    finish_report,
    grouped_bar_figure,
    load_run,
    markdown_table,
    report_header,
    roofline_figure,
    spans_hosts,
)
from experiments.harness.runner import Cell, cell_rng, grid, run_sweep
from testbed.cases import SUITES, suite
from testbed.problem import LAYOUTS_BY_RANK, is_channels_last
from testbed.registry import DIRECTIONS, available_backends, get_backend
from testbed.timing import ALLOCATIONS, ISOLATIONS, TimingJob, TimingSettings, speedup_ci, time_jobs

from .common import (
    add_rounds_argument,
    available_backend,
    finish,
    make_parser,
    rounds_of,
    selected_backends,
    start_run,
    sweep_executor,
)
from .references import GEMM, TORCH_CHANNELS_LAST

NAME = "speed"
#: Columns of the report's table of every cell.
CELL_COLUMNS = [
    "suite",
    "case",
    "descriptor",
    "backend",
    "resolved_backend",
    "dtype",
    "direction",
    "rank",
    "layout",
    "status",
    "median_s",
    "min_s",
    "iqr_s",
    "repeats",
    "loops",
    "unstable",
    "first_call_s",
    "gflops",
    "gemm_ceiling_pct",
    "gbps",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "ratio_to_gemm",
    "minor_faults_per_call",
    "peak_rss_increase_mb",
    "load_1min",
    "isolation",
    "rounds",
    "round_spread",
    "allocation",
    "timing_method",
]
#: Cells left out unless --exclude says otherwise: on the U-Net shapes the oracle ``naive`` takes 5-15 s per
#: call here, and ``fft`` ~80 s (its channel sum is C_in·C_out kernel spectra, unet1: 1024·512·57·29 complex
#: values ≈ 7 GB, computed in blocks of output channels and streamed through a per-frequency GEMM). On the 3-D
#: U-Net ``naive`` takes 2 s per call on the smallest layer (unet3d1, 0.21 GFLOP) and 8 s on unet3d2 (1.3
#: GFLOP) here, and the largest has 13 times unet3d2's work; ``fft``'s spectra grow with the 128³ output.
DEFAULT_EXCLUDE = "unet:naive,unet:fft,unet3d:naive,unet3d:fft"
#: The suites whose cases get the reference rows by default (``--references unet``): the U-Net up-convolutions,
#: 2-D and 3-D.
REFERENCE_SUITES = ("unet", "unet3d")
#: Every layout name ``--layout`` accepts: the 2-D names and those of the other ranks, each meaning its family.
LAYOUT_NAMES = tuple(name for pair in LAYOUTS_BY_RANK.values() for name in pair)


def layout_at_rank(layout: str, rank: int) -> str:
    """The layout of ``layout``'s family (channels first or last) at spatial ``rank``: NHWC -> NLC, NHWC, NDHWC."""
    return LAYOUTS_BY_RANK[rank][is_channels_last(layout)]


def suite_list(text: str) -> list[str]:
    import argparse

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in SUITES for name in names):
        raise argparse.ArgumentTypeError(f"--suite must be a comma list of {', '.join(SUITES)}; got {text!r}")
    return names


def direction_list(text: str) -> list[str]:
    """argparse type: a comma list of :data:`testbed.registry.DIRECTIONS`."""
    import argparse

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in DIRECTIONS for name in names):
        raise argparse.ArgumentTypeError(f"--direction must be a comma list of {', '.join(DIRECTIONS)}; got {text!r}")
    return list(dict.fromkeys(names))


def exclusion_list(text: str) -> list[tuple[str, str]]:
    """argparse type: ``suite:backend`` pairs (``*`` matches any), or ``none``."""
    import argparse

    if text.strip().lower() == "none":
        return []
    pairs = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        suite_name, _, backend = item.partition(":")
        if not backend or (suite_name != "*" and suite_name not in SUITES):
            raise argparse.ArgumentTypeError(
                f"--exclude must be 'none' or a comma list of suite:backend "
                f"(suite one of {', '.join(SUITES)} or *), got {text!r}"
            )
        pairs.append((suite_name, backend))
    return pairs


def excluded(pairs, suite_name: str, backend: str) -> bool:
    return any(s in ("*", suite_name) and b in ("*", backend) for s, b in pairs)


def default_baseline() -> str:
    return "torch" if "torch" in available_backends() else "col2im"


def build_parser():
    parser = make_parser(NAME, __doc__, dtypes="float32")
    parser.add_argument(
        "--suite",
        type=suite_list,
        default=None,
        help="comma list of suites (default unet,decoder,tiny; tiny with --quick)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        type=available_backend,
        help="backend the speedups are relative to (default torch if available, else col2im)",
    )
    parser.add_argument(
        "--exclude",
        type=exclusion_list,
        default=exclusion_list(DEFAULT_EXCLUDE),
        help=f"suite:backend cells not to run, or 'none' (default {DEFAULT_EXCLUDE}: the oracle "
        f"takes seconds and fft over a minute per call on the U-Net shapes)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed repeats per cell after warm-up; repeats go on until it is spent "
        "(default: 0.3 s and at most 30 repeats; 0.01 s and at most 3 with --quick)",
    )
    parser.add_argument(
        "--cases",
        type=lambda text: {c.strip() for c in text.split(",") if c.strip()},
        default=None,
        help="comma list of case names: only these cases of the suites",
    )
    parser.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default=None,
        help="process: each cell in a fresh worker process (default); interleaved: one process, "
        "backends round-robin within each repeat; inline: one after another in this "
        "process (default with --quick)",
    )
    add_rounds_argument(parser, "cell (the backends of a case)")
    parser.add_argument(
        "--allocation",
        choices=ALLOCATIONS,
        default="alloc",
        help="alloc: every call allocates its result (default); out: the result is written "
        "into a preallocated out= array",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUT_NAMES,
        default="NCHW",
        help="memory layout of every input and output, as its family at each case's rank (default NCHW: "
        "channels first, NCL/NCHW/NCDHW; NHWC: channels last, NLC/NHWC/NDHWC)",
    )
    parser.add_argument(
        "--direction",
        type=direction_list,
        default=["forward"],
        help=f"comma list of {', '.join(DIRECTIONS)} (default forward): the gradients time "
        "conv_transpose_backward asked for that one gradient; a backend not declaring a direction is unsupported",
    )
    parser.add_argument(
        "--references",
        choices=("unet", "all", "none"),
        default="unet",
        help="where to time the reference rows (bare GEMM, torch channels-last): the cases of "
        f"suites {' and '.join(REFERENCE_SUITES)} (default), every case with stride == kernel and no padding, "
        "or none",
    )
    return parser


def with_references(cells, baseline: str, where: str = "unet") -> list:
    """``cells`` with the reference rows (:mod:`experiments.references`) of every case the bare GEMM is defined
    for (``where``: of the :data:`REFERENCE_SUITES` only, or ``all``), right after the case's baseline cell (so
    a case's rows stay together): ``gemm`` on the case's own problem, ``torch_channels_last`` on its
    channels-last form where it has one (2-D and 3-D)."""
    out, done = [], set()
    for cell in cells:
        out.append(cell)
        # the references are timed once per case, in the forward direction (a gradient is a product of the same
        # size as the forward's GEMM: backward rows are compared with the same reference)
        forward_tags = tuple((name, "forward" if name == "direction" else value) for name, value in cell.tags)
        key = (forward_tags, cell.case, str(cell.problem.dtype))
        in_scope = where == "all" or any(("suite", name) in cell.tags for name in REFERENCE_SUITES)
        if key in done or not in_scope or not GEMM.supports(cell.problem):
            continue
        following = [c for c in cells if (c.tags, c.case, str(c.problem.dtype)) == (cell.tags, *key[1:])]
        if cell is not next((c for c in following if c.backend_name == baseline), following[0]):
            continue
        done.add(key)
        out.append(Cell(cell.case, cell.problem, GEMM, forward_tags))
        channels_last = cell.problem.with_(layout=layout_at_rank("NHWC", cell.problem.rank))
        if TORCH_CHANNELS_LAST.available and TORCH_CHANNELS_LAST.supports(channels_last):
            out.append(Cell(cell.case, channels_last, TORCH_CHANNELS_LAST, forward_tags))
    return out


def machine_ceilings(quick: bool) -> dict:
    if quick:
        return {
            "gemm_gflops_f32": measure_gemm_gflops(n=256, seconds=0.1, repeats=5),
            "copy_gbps": measure_copy_gbps(megabytes=16, seconds=0.1, repeats=5),
            "ceilings_quick": True,
        }
    return {"gemm_gflops_f32": measure_gemm_gflops(), "copy_gbps": measure_copy_gbps(), "ceilings_quick": False}


def make_measure(seed: int, settings: TimingSettings, isolation: str, allocation: str, cells, baseline: str):
    """The runner's ``measure(cell, backend)``: the cell timed with ``isolation``; the last cell of each case
    also re-times the baseline (``baseline_end_median_s``); ``interleaved`` times a whole case at its first
    cell and hands out the rows."""

    def group_of(cell):
        return cell.tags, cell.case, str(cell.problem.dtype)

    groups: dict = {}
    for cell in cells:
        groups.setdefault(group_of(cell), []).append(cell)
    baseline_cells = {
        key: next((c for c in group if c.backend_name == baseline), None) for key, group in groups.items()
    }

    def timed(cell):
        backend = get_backend(cell.backend)
        return backend.available and backend.supports(cell.problem)

    # the last cell of each case that runs (not unsupported/unavailable) also re-times the baseline
    last_timed = {key: [c for c in group if timed(c)][-1:] for key, group in groups.items()}
    closing = {
        last[0].key
        for key, last in last_timed.items()
        if baseline_cells[key] is not None and last and last[0] is not baseline_cells[key]
    }
    timed_groups: dict = {}

    def job(cell):
        return TimingJob(cell.problem, cell.backend, allocation, rng=cell_rng(seed, cell), direction=cell.direction)

    def measure(cell, backend):
        if isolation == "interleaved" or settings.rounds > 1:  # a case at once: its backends take turns
            key = group_of(cell)
            if key not in timed_groups:
                group = groups[key]
                rows = time_jobs([job(c) for c in group], settings, isolation=isolation, keep_samples=True)
                timed_groups[key] = dict(zip((c.key for c in group), rows))
            stats = timed_groups[key].pop(cell.key)
        else:
            (stats,) = time_jobs([job(cell)], settings, isolation=isolation, keep_samples=True)
            if cell.key in closing:
                (end,) = time_jobs([job(baseline_cells[group_of(cell)])], settings, isolation=isolation)
                stats["baseline_end_median_s"] = end.get("median_s", np.nan)
        problem = cell.problem
        stats.update(
            flops=problem.flops,
            bytes_moved=problem.bytes_moved,
            intensity=problem.flops / problem.bytes_moved,
            layout=problem.layout,
        )
        if "median_s" in stats:
            stats["gflops"] = problem.flops / stats["median_s"] / 1e9
            stats["gbps"] = problem.bytes_moved / stats["median_s"] / 1e9
        return stats

    return measure


def add_speedup(baseline: str):
    """Speedup over the baseline's (start-of-case) median with its bootstrap 95 % CI, and the baseline's
    drift over the case (end / start - 1); the raw samples are dropped from results.csv."""

    def finalize(frame):
        if "median_s" not in frame:
            return frame
        frame = frame.copy()
        if "direction" not in frame:  # a run from before the direction column: every row is the forward
            frame["direction"] = "forward"
        # a run on several hosts compares each time with its own host's baseline; speedups within a direction
        by = ["case", "dtype", "direction"]
        if spans_hosts(frame):
            frame, by = frame.assign(host=frame["host"].fillna("")), ["host", *by]
        keys = list(zip(*(frame[c] for c in by)))
        base = frame[(frame["backend"] == baseline) & (frame["status"] == "ok")].set_index(by)
        base_median = base["median_s"].to_dict()
        base_samples = base["samples_s"].to_dict() if "samples_s" in base else {}
        frame["baseline"] = baseline
        frame["speedup"] = [base_median.get(k, np.nan) / m for k, m in zip(keys, frame["median_s"])]
        intervals = [
            speedup_ci(base_samples[k], samples)
            if isinstance(samples, list) and isinstance(base_samples.get(k), list)
            else (np.nan, np.nan)
            for k, samples in zip(keys, frame.get("samples_s", [None] * len(frame)))
        ]
        frame["speedup_ci_low"], frame["speedup_ci_high"] = zip(*intervals) if intervals else ((), ())
        # every direction over the (forward-timed) bare GEMM of its case: a product of the same size
        gemm = frame[(frame["backend"] == GEMM.name) & (frame["status"] == "ok")].set_index(by[:-1])
        gemm_median = gemm["median_s"].to_dict()
        frame["ratio_to_gemm"] = [m / gemm_median.get(k[:-1], np.nan) for k, m in zip(keys, frame["median_s"])]
        if "baseline_end_median_s" in frame:
            end = frame.dropna(subset=["baseline_end_median_s"]).set_index(by)
            end = end["baseline_end_median_s"].to_dict()
            frame["baseline_drift"] = [end.get(k, np.nan) / base_median.get(k, np.nan) - 1 for k in keys]
        return frame.drop(columns=["samples_s"], errors="ignore")

    return finalize


def ordered_backends(backends, baseline: str) -> list:
    """The baseline first (timed at the start of each case), the others in the order given."""
    return ([baseline] if baseline in backends else []) + [b for b in backends if b != baseline]


def main(argv=None, *, out=None, suites=None):
    args = build_parser().parse_args(argv)
    suites = args.suite or suites or (["tiny"] if args.quick else ["unet", "decoder", "tiny"])
    baseline = args.baseline or default_baseline()
    isolation = args.isolation or ("inline" if args.quick else "process")
    settings = TimingSettings.quick() if args.quick else TimingSettings()
    if args.budget is not None:
        # an explicit budget governs: repeats continue until it is spent (capped only against runaway loops)
        settings = replace(settings, max_repeats=100_000, budget_s=args.budget)
    settings = replace(settings, rounds=rounds_of(args) if isolation == "process" else 1)
    backends = ordered_backends(selected_backends(args), baseline)

    def extra_meta():
        return {
            "suites": suites,
            "baseline": baseline,
            "excluded": [f"{s}:{b}" for s, b in args.exclude],
            "timing": settings.__dict__,
            "isolation": isolation,
            "allocation": args.allocation,
            "layout": args.layout,
            "references": args.references,
            "directions": args.direction,
            "backend_order": backends,
            **machine_ceilings(args.quick),
            **({} if args.quick else {"threadpools_after_every_backend": thread_pools_after_every_backend(backends)}),
        }

    run_dir, meta = start_run(NAME, args, argv, extra_meta, out=out)
    if args.cases and not args.cases <= {case for name in suites for case in suite(name)}:
        raise SystemExit(
            f"--cases: unknown in suites {', '.join(suites)}: "
            f"{', '.join(sorted(args.cases - {c for name in suites for c in suite(name)}))}"
        )
    cells = [
        cell
        for name in suites
        for direction in args.direction
        for cell in grid(
            {
                case: problem.with_(layout=layout_at_rank(args.layout, problem.rank))
                for case, problem in suite(name).items()
                if not args.cases or case in args.cases
            },
            [b for b in backends if not excluded(args.exclude, name, b)],
            args.dtypes,
            tags=(("suite", name), ("direction", direction)),
        )
    ]
    baseline = meta.get("baseline", baseline)
    if args.references != "none":
        cells = with_references(cells, baseline, args.references)
    isolation, allocation = meta.get("isolation", isolation), meta.get("allocation", args.allocation)
    speedups = add_speedup(baseline)

    def finalize(frame):  # every row says how the run timed, the untimed (unsupported, ...) rows too
        return speedups(frame.assign(isolation=isolation, allocation=allocation))

    run_sweep(
        cells,
        make_measure(args.seed, settings, isolation, allocation, cells, baseline),
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        desc=NAME,
        finalize=finalize,
        executor=sweep_executor(args),
        timed=True,
    )
    record_end_state(run_dir)
    write_report(run_dir)
    finish(run_dir, NAME)
    return run_dir


def _pivot(frame, value, aggfunc="mean"):
    """case × backend (case @ host where the run spans several hosts)."""
    if spans_hosts(frame):
        frame = frame.assign(case=frame["case"] + " @ " + frame["host"].astype(str))
    return frame.pivot_table(index="case", columns="backend", values=value, aggfunc=aggfunc, sort=False)


ISOLATION_TEXT = {
    "process": "each (case, backend, dtype) in a fresh worker process (a new interpreter, testbed._worker), so "
    "no other backend's thread pools or allocator state reach its time",
    "interleaved": "all backends of a case in one process, sampled round-robin (the first rotating each "
    "repeat), so pool and allocator state spread evenly over them",
    "inline": "one backend after another in one process: a time may include what the previous backend left "
    "behind (spinning thread pools, a raised mmap threshold)",
}
ALLOCATION_TEXT = {
    "alloc": "every call allocates its result (what a user's call costs)",
    "out": "the result is written into a preallocated, already faulted-in `out=` array",
}


def how_measured(meta: dict) -> str:
    """The report paragraph that says how every time was taken."""
    timing = meta.get("timing", {})
    isolation, allocation = meta.get("isolation", "inline"), meta.get("allocation", "alloc")
    layout = meta.get("layout", "NCHW")
    at_ranks = "/".join(layout_at_rank(layout, rank) for rank in LAYOUTS_BY_RANK)
    references = (
        " Reference rows (not library backends): `gemm`, the bare GEMM of the same matrices, and "
        "`torch_channels_last`, PyTorch on channels-last input (always channels last: NHWC, NDHWC; none in "
        "1-D) with a channels-last weight."
        if meta.get("references") not in (None, "none", False)
        else ""
    )
    return (
        f"**How the times were taken** (testbed.timing): layout `{layout}` (at ranks 1/2/3: {at_ranks}); "
        f"isolation `{isolation}`: "
        f"{ISOLATION_TEXT.get(isolation, '?')}; allocation `{allocation}`: {ALLOCATION_TEXT.get(allocation, '?')}. "
        f"{_rounds_text(timing.get('rounds', 1))}"
        f"Per cell: one first call (timed alone: Numba compile or cache load), warm-up calls (at least "
        f"{timing.get('warmup')}, for at least {timing.get('warmup_s', 0)} s), then samples of `loops` "
        f"back-to-back calls (each sample at least "
        f"{timing.get('min_sample_s', 0) * 1e3:g} ms) until {timing.get('budget_s')} s are spent "
        f"({timing.get('min_repeats')} to {timing.get('max_repeats')} samples), all through "
        f"`conv_transpose1d`/`2d`/`3d` with time.perf_counter. Reported: the median (min, IQR) per-call time; "
        f"`unstable` when IQR/median > {timing.get('unstable_ratio', 0.1):g}; minor page faults per timed call "
        f"(getrusage); the process's peak RSS increase during the cell. Speedup = baseline median / median, "
        f"with a bootstrap 95 % interval (scipy.stats.bootstrap, percentile, both sample sets resampled). "
        f"The baseline is timed first in each case and again after the case's last backend (except "
        f"interleaved or in rounds): `baseline_drift` = end / start - 1.{references}{_directions_text(meta)}\n"
    )


def _directions_text(meta: dict) -> str:
    directions = meta.get("directions", ["forward"])
    if directions == ["forward"]:
        return ""
    return (
        f" Directions: {', '.join(directions)}; a gradient is `conv_transpose_backward` asked for that one "
        "gradient (`output_mask`) of a standard-normal `grad_output`. Its GFLOP/s counts the forward's useful work "
        "(2·N·Cin·Cout/g·prod(in)·prod(k): each gradient is a product of the same sizes), speedups compare cells "
        "of one direction, and `ratio_to_gemm` is over the forward's bare GEMM (a product of the same size)."
    )


def _rounds_text(rounds) -> str:
    if not rounds or rounds == 1:
        return ""
    return (
        f"Each cell was timed in {rounds} fresh worker processes, the backends of a case taking turns "
        f"(A B C A B C …), and its samples pooled; `round_spread` = slowest round's median / fastest's - 1. "
    )


def _with_ci(sub):
    """Speedup cells as 'x [low–high]'."""
    text = sub.apply(
        lambda r: (
            f"{r['speedup']:.3g} [{r['speedup_ci_low']:.3g}–{r['speedup_ci_high']:.3g}]"
            if r["speedup_ci_low"] == r["speedup_ci_low"]
            else f"{r['speedup']:.3g}"
        ),
        axis=1,
    )
    return _pivot(sub.assign(speedup_text=text), "speedup_text", aggfunc="first")


def with_ceiling_pct(frame, peak):
    """``gemm_ceiling_pct``: a float32 cell's GFLOP/s as a percentage of the run's float32 GEMM rate (NaN for
    float64 cells: no float64 ceiling is measured)."""
    if "gflops" not in frame or not peak:
        return frame
    float32 = frame["dtype"].astype(str) == "float32"
    return frame.assign(gemm_ceiling_pct=np.where(float32, frame["gflops"] / peak * 100, np.nan))


def _ceiling_table(sub, peak, dtype) -> list:
    """The report's '% of the GEMM ceiling' table of one suite and dtype (float32 only)."""
    if not peak or str(dtype) != "float32" or "gemm_ceiling_pct" not in sub:
        return []
    return [
        f"\nAttained GFLOP/s as % of this run's float32 GEMM ceiling ({peak:.1f} GFLOP/s, NumPy matmul, "
        f"best of several runs, all cores):\n",
        markdown_table(_pivot(sub, "gemm_ceiling_pct"), floatfmt=".1f"),
    ]


def _layout_title(sub, layout: str) -> str:
    """``", NCDHW"``: the run's layout at the ranks of a suite's rows (older runs without a rank column: none)."""
    if "rank" not in sub:
        return ""
    ranks = sorted({int(rank) for rank in sub["rank"].dropna()})
    return "".join(f", {layout_at_rank(layout, rank)}" for rank in ranks)


def write_report(run_dir) -> str:
    """Rebuild report.md, the bar charts and the roofline from the saved results.csv and meta.json."""
    run_dir = Path(run_dir)
    meta, frame = load_run(run_dir)
    peak, bandwidth = meta.get("gemm_gflops_f32"), meta.get("copy_gbps")
    frame = with_ceiling_pct(frame, peak)
    parts = [
        report_header(meta, "Speed of the backends"),
        machine_state_lines(meta),
        f"Machine ceilings measured at the start of the run: float32 GEMM **{peak:.1f} GFLOP/s** "
        f"(NumPy matmul), copy bandwidth **{bandwidth:.1f} GB/s** (np.copyto, read + write). Baseline for "
        f"speedups: **{meta.get('baseline')}** (> 1 = faster).\n",
        how_measured(meta),
    ]
    if meta.get("excluded"):
        parts.append(f"Cells not run (--exclude): {', '.join(meta['excluded'])}.\n")
    if not frame.empty and "median_s" in frame:
        ok = frame[frame["status"] == "ok"].copy()
        ok["median_ms"] = ok["median_s"] * 1e3
        ok["first_call_ms"] = ok["first_call_s"] * 1e3
        ok["direction"] = ok["direction"] if "direction" in ok else "forward"
        for (suite_name, direction), group in ok.groupby(["suite", "direction"], sort=False):
            for dtype, sub in group.groupby("dtype", sort=False):
                title = f"suite {suite_name}, {dtype}{_layout_title(sub, meta.get('layout', 'NCHW'))}, {direction}"
                # the forward's figure keeps its name (experiments.main links it)
                suffix = "" if direction == "forward" else f"_{direction}"
                path = run_dir / f"speed_{suite_name}_{dtype}{suffix}.png"
                grouped_bar_figure(
                    _pivot(sub, "gflops"),
                    f"GFLOP/s of useful work, {title} (higher is better)",
                    "GFLOP/s (2·N·Cin·Cout/g·prod(in)·prod(k) / median time)",
                    path,
                )
                shape_columns = [column for column in ("descriptor", "rank") if column in sub]
                descriptors = sub.drop_duplicates("case").set_index("case")[shape_columns]
                parts += [
                    f"## {title}\n",
                    markdown_table(descriptors),
                    "\nMedian time (ms):\n",
                    markdown_table(_pivot(sub, "median_ms"), floatfmt=".3g"),
                ]
                if "ratio_to_gemm" in sub and sub["ratio_to_gemm"].notna().any():
                    parts += [
                        "\nRatio to the bare GEMM of the same matrices, same run (median / gemm median; "
                        "1 = the GEMM's time, the floor of a fused up-convolution):\n",
                        markdown_table(_pivot(sub.dropna(subset=["ratio_to_gemm"]), "ratio_to_gemm"), floatfmt=".3g"),
                    ]
                parts += [
                    "\nGFLOP/s:\n",
                    markdown_table(_pivot(sub, "gflops"), floatfmt=".3g"),
                    *_ceiling_table(sub, peak, dtype),
                    f"\nSpeedup over {meta.get('baseline')} [bootstrap 95 % interval]:\n",
                    markdown_table(_with_ci(sub))
                    if "speedup_ci_low" in sub
                    else markdown_table(_pivot(sub, "speedup"), floatfmt=".3g"),
                    "\nFirst call (ms):\n",
                    markdown_table(_pivot(sub, "first_call_ms"), floatfmt=".3g"),
                ]
                if "minor_faults_per_call" in sub:
                    parts += [
                        "\nMinor page faults per call:\n",
                        markdown_table(_pivot(sub, "minor_faults_per_call"), floatfmt=".4g"),
                    ]
                if "baseline_drift" in sub and sub["baseline_drift"].notna().any():
                    drift = sub.drop_duplicates("case").set_index("case")["baseline_drift"] * 100
                    parts += [
                        "\nBaseline drift over each case (end / start - 1, %):\n",
                        markdown_table(drift.to_frame("drift %"), floatfmt=".1f"),
                    ]
                if "unstable" in sub:
                    shaky = sub[sub["unstable"].astype(str).str.lower() == "true"]
                    parts.append(
                        "\nUnstable cells (IQR/median above the threshold): "
                        + (", ".join(f"{c}/{b}" for c, b in zip(shaky["case"], shaky["backend"])) or "none")
                        + ".\n"
                    )
                parts.append(f"\n![GFLOP/s bars, {title}]({path.name})\n")
        if peak and bandwidth and len(ok):
            path = run_dir / "roofline.png"
            roofline_figure(
                ok[["backend", "case", "intensity", "gflops"]],
                peak,
                bandwidth,
                "Roofline: every (backend, case) of this run",
                path,
            )
            parts += ["## Roofline\n", f"![roofline]({path.name})\n"]
    return finish_report(run_dir, parts, frame, CELL_COLUMNS)


if __name__ == "__main__":
    main()
