"""How time grows with image size and channel count per backend, and numba_cpu's thread scaling.

Problems are U-Net up-convolutions (kernel 2, stride 2, C_in = 2·C_out), the project's main shape. Sweeps:

- ``size``: input H = W over powers of two at fixed channels. Useful work grows like H², so a backend whose
  time is proportional to its work has log-log slope 2 (smaller: fixed overhead still matters).
- ``channels``: C_out (and C_in = 2·C_out) over powers of two at fixed size; work grows like C_out², slope 2.
- ``threads``: ``numba_cpu`` at 1, 2, 4, … up to ``numba.config.NUMBA_NUM_THREADS`` threads
  (``numba.set_num_threads``) on two larger problems; skipped (and said so in the report) when numba_cpu is
  not registered, not available, or not among --backends.

Slopes are least-squares fits of log(time) on log(x) over each backend's points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.harness.reporting import (
    finish_report,
    fit_loglog_slope,
    load_run,
    loglog_figure,
    markdown_table,
    new_figure,
    report_header,
)
from experiments.harness.runner import TimingSettings, cell_rng, grid, run_sweep, time_backend
from experiments.harness.storage import save_figure
from testbed.problem import Problem
from testbed.registry import list_backends

from .common import finish, make_parser, selected_backends, start_run, sweep_executor

NAME = "scaling"
THREADED = "numba_cpu"


def upconv(size: int, out_channels: int) -> Problem:
    return Problem(
        batch=1,
        in_channels=2 * out_channels,
        in_size=size,
        out_channels=out_channels,
        kernel_size=2,
        stride=2,
        dtype=np.float32,
    )


def sweeps(quick: bool) -> dict:
    """``{sweep: {case: (x, Problem)}}`` for the size and channel sweeps."""
    sizes, size_channels = ((4, 8, 16), 4) if quick else ((8, 16, 32, 64, 128), 32)
    channels, channel_size = ((2, 4, 8), 8) if quick else ((8, 16, 32, 64, 128), 32)
    return {
        "size": {f"size{n}": (n, upconv(n, size_channels)) for n in sizes},
        "channels": {f"oc{c}": (c, upconv(channel_size, c)) for c in channels},
    }


def thread_cases(quick: bool) -> dict:
    if quick:
        return {"upconv_small": upconv(8, 4)}
    return {
        "unet3": upconv(100, 128),
        "k4s2p1": Problem(
            batch=1, in_channels=128, in_size=32, out_channels=64, kernel_size=4, stride=2, padding=1, dtype=np.float32
        ),
    }


def thread_counts() -> list[int]:
    import numba

    top = numba.config.NUMBA_NUM_THREADS
    counts = sorted({min(2**i, top) for i in range(int(np.log2(top)) + 2)})
    return counts


def threads_skip_reason(backends) -> str | None:
    if THREADED not in list_backends():
        return f"{THREADED} is not in the registry"
    if THREADED not in backends:
        return f"{THREADED} is not among the selected backends"
    from testbed.registry import get_backend

    ok, why = get_backend(THREADED).probe()
    return None if ok else f"{THREADED} is unavailable: {why}"


def make_measure(seed: int, settings: TimingSettings):
    def measure(cell, backend):
        tags = dict(cell.tags)
        problem = cell.problem
        x, weight, bias = problem.random_arrays(cell_rng(seed, cell))
        if "threads" not in tags:
            return time_backend(backend, problem, x, weight, bias, settings)
        import numba

        previous = numba.get_num_threads()
        numba.set_num_threads(int(tags["threads"]))
        try:
            return time_backend(backend, problem, x, weight, bias, settings)
        finally:
            numba.set_num_threads(previous)

    return measure


def build_parser():
    return make_parser(NAME, __doc__)


def main(argv=None, *, out=None):
    args = build_parser().parse_args(argv)
    backends = selected_backends(args)
    skip = threads_skip_reason(backends)
    settings = TimingSettings.quick() if args.quick else TimingSettings(budget_s=0.2)
    run_dir, _meta = start_run(NAME, args, argv, {"threads_skipped": skip, "timing": settings.__dict__}, out=out)
    cells = []
    for sweep, cases in sweeps(args.quick).items():
        for case, (x, problem) in cases.items():
            cells += grid({case: problem}, backends, tags=(("sweep", sweep), ("x", x)))
    if skip is None:
        for case, problem in thread_cases(args.quick).items():
            for threads in thread_counts():
                cells += grid(
                    {case: problem}, [THREADED], tags=(("sweep", "threads"), ("x", threads), ("threads", threads))
                )
    run_sweep(
        cells,
        make_measure(args.seed, settings),
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        desc=NAME,
        executor=sweep_executor(args),
        timed=True,
    )
    write_report(run_dir)
    finish(run_dir, NAME)
    return run_dir


def slope_table(ok):
    rows = []
    for (sweep, backend), group in ok[ok["sweep"] != "threads"].groupby(["sweep", "backend"], sort=False):
        rows.append(
            {
                "sweep": sweep,
                "backend": backend,
                "points": len(group),
                "slope": fit_loglog_slope(group["x"], group["median_s"]),
            }
        )
    import pandas as pd

    table = pd.DataFrame(rows)
    return table.pivot_table(index="backend", columns="sweep", values="slope", sort=False) if len(table) else table


def threads_figure(threads, path):
    fig, ax = new_figure(figsize=(6.5, 4.2))
    counts = sorted(threads["x"].unique())
    for case, group in threads.groupby("case", sort=False):
        group = group.sort_values("x")
        single = group[group["x"] == group["x"].min()]["median_s"].iloc[0]
        ax.plot(group["x"], single / group["median_s"], marker="o", label=f"{THREADED}, {case}")
    ax.plot(counts, counts, "k--", lw=1, label="ideal (linear)")
    ax.set_xlabel("numba threads (numba.set_num_threads)")
    ax.set_ylabel("speedup over 1 thread (×)")
    ax.set_xticks(counts)
    ax.set_title(f"{THREADED} thread scaling")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_report(run_dir) -> str:
    run_dir = Path(run_dir)
    meta, frame = load_run(run_dir)
    parts = [report_header(meta, "Scaling with image size, channel count and threads")]
    ok = frame[frame["status"] == "ok"].copy() if not frame.empty else frame
    if len(ok) and "median_s" in ok:
        ok["median_ms"] = ok["median_s"] * 1e3
        parts += [
            "## Fitted log-log slopes of time\n",
            "Work grows like x² in both sweeps, so slope 2 means time proportional to work; lower slopes "
            "mean fixed per-call overhead is still a large share.\n",
            markdown_table(slope_table(ok), floatfmt=".2f"),
        ]
        for sweep, label in (
            ("size", "input size H = W (pixels)"),
            ("channels", "output channels C_out (C_in = 2·C_out)"),
        ):
            part = ok[ok["sweep"] == sweep]
            if part.empty:
                continue
            path = run_dir / f"scaling_{sweep}.png"
            loglog_figure(
                part,
                "x",
                "median_ms",
                f"Time vs {sweep} (k2 s2 up-conv, float32)",
                label,
                "median time per call (ms)",
                path,
            )
            parts += [
                f"\n## Time vs {sweep}\n",
                markdown_table(
                    part.pivot_table(index="x", columns="backend", values="median_ms", sort=False), floatfmt=".3g"
                ),
                f"\n![time vs {sweep}]({path.name})\n",
            ]
    threads = ok[ok["sweep"] == "threads"] if len(ok) and "sweep" in ok else ok.iloc[0:0]
    parts.append("\n## numba_cpu thread scaling\n")
    if meta.get("threads_skipped"):
        parts.append(f"Skipped: {meta['threads_skipped']}.\n")
    elif len(threads):
        path = run_dir / "scaling_threads.png"
        threads_figure(threads, path)
        table = threads.pivot_table(index="x", columns="case", values="median_ms", sort=False)
        table.index.name = "threads"
        parts += ["Median time (ms):\n", markdown_table(table, floatfmt=".3g"), f"\n![thread scaling]({path.name})\n"]
    return finish_report(run_dir, parts, frame)


if __name__ == "__main__":
    main()
