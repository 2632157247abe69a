"""One training step of the U-Net decoder's up-convolutions (forward + backward) per backend, against torch.

    python -m experiments.training_step [--suite unet|unet3d] [--backends ...] [--budget S] [--quick]

For every case of the suite (``unet``: the four 2-D U-Net up-convolutions, k = s = 2, batch 1; ``unet3d``: the
3-D ones of nnU-Net) and every backend that declares all three directions (:data:`testbed.registry.DIRECTIONS`,
``Backend.directions``; the others get ``unsupported`` rows naming the missing direction), a fresh worker
process (:func:`testbed.timing.run_in_worker`; ``--isolation inline`` times in this process, the default with
``--quick``) times with :func:`testbed.timing.time_call`, on the same inputs:

* ``forward_s``: ``conv_transpose2d``/``3d(x, weight, bias)``;
* ``backward_data_s``, ``backward_weight_s``: :func:`testbed.conv_transpose_backward` asked for that one
  gradient of a standard-normal ``grad_output`` (:func:`testbed.timing.prepare_call`, as the speed experiment's
  ``--direction``), and ``backward_bias_s``: the bias gradient alone (a sum of ``grad_output`` over the batch and
  every position);
* ``step_s`` (the ``median_s`` of the row): the whole step, the forward then ``conv_transpose_backward`` with
  ``output_mask=(True, True, True)``, as a model's layer runs it (autograd would add its own bookkeeping).

Reported: the median times, the speedup of the step over the baseline (default ``torch``, the registered backend:
PyTorch's ``conv_transpose`` and ``aten.convolution_backward`` through the same public calls; > 1 = faster), and
the ratio of the step to its floor. Reference rows ``gemm`` (:mod:`experiments.references`, not a library
backend): the bare GEMM of the forward's matrices (``forward_s``); the step's three products (the forward, the
data gradient and the weight gradient) each have the forward GEMM's size, 2·N·C_in·C_out·prod(in)·prod(k) flops,
so three such GEMMs (``step_s`` = 3 × the GEMM's median) are the floor of a step (the bias sum and any pixel
shuffle are extra), and ``ratio_to_floor`` = step / that floor. GFLOP/s of the step count the three products'
useful work, 3 · ``Problem.flops``.

Rows (``results.csv``, one per case × backend × dtype), ``report.md`` and a bar figure of the step times are
written atomically under ``results/training_step/<UTC time>-<git hash>/``; ``--resume`` completes a killed run.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from experiments.harness.metadata import machine_state_lines, record_end_state
from experiments.harness.reporting import finish_report, grouped_bar_figure, load_run, markdown_table, report_header
from experiments.harness.runner import Cell, cell_rng, grid, run_sweep
from testbed import timing
from testbed.cases import suite
from testbed.registry import DIRECTIONS, available_backends, get_backend
from testbed.testing import call_kwargs

from .common import available_backend, finish, make_parser, selected_backends, start_run, sweep_executor
from .references import GEMM

NAME = "training_step"
#: The suites of the experiment: the U-Net decoder's up-convolutions, 2-D and 3-D.
STEP_SUITES = ("unet", "unet3d")
#: The parts of a step timed one by one, each a column ``<part>_s``.
PARTS = ("forward", "backward_data", "backward_weight", "backward_bias")
#: Backends left out unless named in --backends: on the U-Net shapes one call of the oracle ``naive`` takes
#: seconds and ``fft``'s gradients 4-10 s here (fft module docstring); a step times five such calls per sample.
SLOW = ("naive", "fft")
#: The floor of a step in bare GEMMs of the forward's size: the forward, the data gradient, the weight gradient.
GEMMS_PER_STEP = 3
CELL_COLUMNS = [
    "suite",
    "case",
    "descriptor",
    "backend",
    "dtype",
    "rank",
    "layout",
    "status",
    "median_s",
    *(f"{part}_s" for part in PARTS),
    "step_gflops",
    "speedup",
    "ratio_to_floor",
    "repeats",
    "load_1min",
]


def quick_cases(suite_name: str) -> dict:
    """``--quick``: the suite's first case shrunk to a few channels and positions (still k = s = 2)."""
    name, problem = next(iter(suite(suite_name).items()))
    return {name: problem.with_(in_channels=8, out_channels=4, in_size=3)}


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(NAME, __doc__, dtypes="float32")
    parser.add_argument(
        "--suite",
        choices=STEP_SUITES,
        default="unet",
        help="the U-Net up-convolutions: unet (2-D, default) or unet3d (3-D); with --quick its first case, tiny",
    )
    parser.add_argument(
        "--baseline",
        type=available_backend,
        default=None,
        help="backend the speedups are relative to (default torch if available, else col2im)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed repeats per part of a cell (default 0.5; 0.01 with --quick)",
    )
    parser.add_argument(
        "--isolation",
        choices=("process", "inline"),
        default=None,
        help="process: each cell in a fresh worker process (default); inline: in this process (default with --quick)",
    )
    return parser


def step_backends(args, baseline: str) -> list[str]:
    """--backends, or every available backend but :data:`SLOW` (and their baseline first); all are rows (a
    backend not declaring every direction gets an ``unsupported`` row)."""
    names = list(args.backends) if args.backends else [b for b in selected_backends(args) if b not in SLOW]
    return ([baseline] if baseline in names else []) + [b for b in names if b != baseline]


def time_step(problem, backend, settings: timing.TimingSettings, rng) -> dict:
    """In a worker (or here): the median of every part of a step and of the whole step (see the module
    docstring), each a :func:`testbed.timing.time_call` of the public calls on the same inputs."""
    from testbed import conv_transpose_backward

    x, weight, bias = problem.random_arrays(rng)
    backend = get_backend(backend)
    row: dict = {}
    for direction in DIRECTIONS:
        call = timing.prepare_call(backend, problem, x, weight, bias, direction=direction)
        row[f"{direction}_s"] = timing.time_call(call, settings)["median_s"]
    kwargs = call_kwargs(problem)
    grad_output = np.random.default_rng(1).standard_normal(problem.output_shape).astype(problem.dtype)

    def gradients(mask):
        return conv_transpose_backward(grad_output, x, weight, output_mask=mask, backend=backend, **kwargs)

    row["backward_bias_s"] = timing.time_call(lambda: gradients((False, False, True)), settings)["median_s"]
    forward = timing.prepare_call(backend, problem, x, weight, bias, direction="forward")

    def step():
        forward()
        return gradients((True, True, True))

    stats = timing.time_call(step, settings)
    row.update(median_s=stats["median_s"], repeats=stats["repeats"], first_call_s=stats["first_call_s"])
    return row


def time_gemm(problem, settings: timing.TimingSettings, rng) -> dict:
    """The bare GEMM of the forward's matrices (``forward_s``) and the step's floor, three of them (``median_s``)."""
    (stats,) = timing.time_jobs([timing.TimingJob(problem, GEMM, rng=rng)], settings, isolation="inline")
    if stats.get("status", "ok") != "ok":
        return {"status": stats["status"], "message": stats.get("message", "")}
    return {"forward_s": stats["median_s"], "median_s": GEMMS_PER_STEP * stats["median_s"], "repeats": stats["repeats"]}


def make_measure(seed: int, settings: timing.TimingSettings, isolation: str):
    def measure(cell: Cell, backend) -> dict:
        rng = cell_rng(seed, cell)
        if backend is GEMM:
            args = (time_gemm, cell.problem, settings, rng)
        else:
            missing = [d for d in DIRECTIONS if backend.unsupported_reason(cell.problem, d) is not None]
            if missing:
                return {"status": "unsupported", "message": backend.unsupported_reason(cell.problem, missing[0])}
            args = (time_step, cell.problem, cell.backend, settings, rng)
        row = timing.run_in_worker(*args) if isolation == "process" else args[0](*args[1:])
        load = timing.load_average()
        row.update(layout=cell.problem.layout, flops=cell.problem.flops, load_1min=load[0] if load else np.nan)
        if "median_s" in row:
            row["step_gflops"] = GEMMS_PER_STEP * cell.problem.flops / row["median_s"] / 1e9
        return row

    return measure


def add_ratios(baseline: str):
    """``speedup`` (the baseline's step / this step, within a case and dtype) and ``ratio_to_floor`` (this step /
    three bare GEMMs of the case)."""

    def finalize(frame):
        if "median_s" not in frame:
            return frame
        keys = list(zip(frame["case"], frame["dtype"]))
        ok = frame[frame["status"] == "ok"]
        base = ok[ok["backend"] == baseline].set_index(["case", "dtype"])["median_s"].to_dict()
        floor = ok[ok["backend"] == GEMM.name].set_index(["case", "dtype"])["median_s"].to_dict()
        return frame.assign(
            baseline=baseline,
            speedup=[base.get(k, np.nan) / m for k, m in zip(keys, frame["median_s"])],
            ratio_to_floor=[m / floor.get(k, np.nan) for k, m in zip(keys, frame["median_s"])],
        )

    return finalize


def main(argv=None, *, out=None):
    args = build_parser().parse_args(argv)
    baseline = args.baseline or ("torch" if "torch" in available_backends() else "col2im")
    isolation = args.isolation or ("inline" if args.quick else "process")
    settings = timing.TimingSettings.quick() if args.quick else timing.TimingSettings(budget_s=0.5, max_repeats=60)
    if args.budget is not None:
        settings = replace(settings, budget_s=args.budget, max_repeats=100_000)
    backends = step_backends(args, baseline)
    cases = quick_cases(args.suite) if args.quick else suite(args.suite)

    def extra_meta():
        return {
            "suites": [args.suite],
            "baseline": baseline,
            "isolation": isolation,
            "timing": settings.__dict__,
            "backend_order": backends,
        }

    run_dir, meta = start_run(NAME, args, argv, extra_meta, out=out)
    baseline = meta.get("baseline", baseline)
    tags = (("suite", args.suite),)
    cells = []
    for case, problem in cases.items():  # each case's backends, then its bare-GEMM reference row per dtype
        cells += grid({case: problem}, backends, args.dtypes, tags=tags)
        cells += [Cell(case, problem.with_(dtype=np.dtype(dtype)), GEMM, tags) for dtype in args.dtypes]
    run_sweep(
        cells,
        make_measure(args.seed, settings, meta.get("isolation", isolation)),
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        desc=NAME,
        finalize=add_ratios(baseline),
        executor=sweep_executor(args),
        timed=True,
    )
    record_end_state(run_dir)
    write_report(run_dir)
    finish(run_dir, NAME)
    return run_dir


def _pivot(frame, value):
    return frame.pivot_table(index="case", columns="backend", values=value, aggfunc="mean", sort=False)


def write_report(run_dir) -> str:
    """Rebuild report.md and the figure from the saved results.csv and meta.json."""
    run_dir = Path(run_dir)
    meta, frame = load_run(run_dir)
    timing_settings = meta.get("timing", {})
    parts = [
        report_header(meta, "A training step of the U-Net up-convolutions: forward + backward"),
        machine_state_lines(meta),
        f"Per case and backend, in {'a fresh worker process' if meta.get('isolation') == 'process' else 'this process'}"
        f": the median time of the forward, of each gradient alone (data, weight, bias) and of the whole step "
        f"(forward, then `conv_transpose_backward` with all three gradients), each over "
        f"{timing_settings.get('budget_s')} s of samples after a first call and warm-up (testbed.timing.time_call). "
        f"Speedup = {meta.get('baseline')}'s step / the step (> 1: faster). `gemm` is a reference row, not a "
        f"backend: its forward is the bare GEMM of the forward's matrices and its step **three such GEMMs, the "
        f"floor of a step** (the forward, the data and the weight gradient are each a product of that size; the "
        f"bias sum is extra); `ratio_to_floor` = step / that floor. Step GFLOP/s = 3 · 2·N·Cin·Cout·prod(in)·"
        f"prod(k) / step time.\n",
    ]
    if not frame.empty and "median_s" in frame:
        ok = frame[frame["status"] == "ok"].copy()
        ok["step_ms"] = ok["median_s"] * 1e3
        for part in PARTS:
            if f"{part}_s" in ok:
                ok[f"{part}_ms"] = ok[f"{part}_s"] * 1e3
        for (suite_name, dtype), sub in ok.groupby(["suite", "dtype"], sort=False):
            title = f"suite {suite_name}, {dtype}"
            path = run_dir / f"training_step_{suite_name}_{dtype}.png"
            steps = _pivot(sub, "step_ms").rename(columns={GEMM.name: f"{GEMM.name} ×3 (the floor)"})
            grouped_bar_figure(steps, f"Training step time, {title} (lower is better)", "ms", path)
            parts += [
                f"## {title}\n",
                markdown_table(sub.drop_duplicates("case").set_index("case")[["descriptor"]]),
                "\nStep (forward + data, weight and bias gradients), median ms:\n",
                markdown_table(_pivot(sub, "step_ms"), floatfmt=".3g"),
            ]
            for part in PARTS:
                if f"{part}_ms" in sub and sub[f"{part}_ms"].notna().any():
                    parts += [
                        f"\n{part} alone, median ms:\n",
                        markdown_table(_pivot(sub, f"{part}_ms"), floatfmt=".3g"),
                    ]
            parts += [
                f"\nSpeedup of the step over {meta.get('baseline')}:\n",
                markdown_table(_pivot(sub, "speedup"), floatfmt=".3g"),
                "\nStep / floor (three bare GEMMs of the forward's size, same run):\n",
                markdown_table(_pivot(sub, "ratio_to_floor"), floatfmt=".3g"),
                "\nStep GFLOP/s (three products' useful work):\n",
                markdown_table(_pivot(sub, "step_gflops"), floatfmt=".3g"),
                f"\n![step times, {title}]({path.name})\n",
            ]
    return finish_report(run_dir, parts, frame, CELL_COLUMNS)


if __name__ == "__main__":
    main()
