"""The project's main job (``make run``): correctness of every backend, then speed on the U-Net up-convolutions.

Writes ``results/main/<run-id>/`` with ``correctness/`` and ``speed/`` (each a complete run: meta.json,
results.csv, report.md, figures) and a top-level report.md that summarises both.

The default is sized to finish in under two minutes on a 2-core machine, a cold Numba cache included: the
correctness grid, then every backend on the smallest and the largest U-Net up-convolution (:data:`SPEED_CASES`:
1024→512 channels at 28², the ``nonoverlap_gemm`` path of ``numba_cpu``, and 128→64 at 196², its
``nonoverlap_direct`` path), each (case, backend) timed in one fresh worker process (:data:`SPEED_ROUNDS`). A worker
costs 1.5-2 s to start (it imports numpy, scipy and numba, and torch for the torch rows: measured on the 2-core
AMD EPYC host), against 0.3-0.7 s of timing, so the number of cells is what the run's length is made of. ``--full``
times experiments.speed's defaults instead (:data:`FULL_SPEED_SUITES`, every case, ``DEFAULT_ROUNDS`` rounds pooled
per cell: the numbers to quote, several minutes); ``--quick`` (seconds, for tests) runs the small correctness grid
and the tiny suite in this process. The correctness grid covers every spatial rank; the 3-D and 1-D speed suites
(whose largest call writes 512 MiB) are left to ``python -m experiments.speed --suite unet3d,vocoder1d``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.harness.reporting import load_run, markdown_table, report_header, truthy
from experiments.harness.storage import atomic_write_text
from testbed.testing import tolerance

from . import correctness, speed
from .common import DEFAULT_ROUNDS, executor_argv, finish, make_parser, start_run

NAME = "main"
#: The speed part of the default job: the smallest and the largest U-Net up-convolution, one fresh worker per cell.
SPEED_SUITES = ("unet",)
SPEED_CASES = ("unet1", "unet4")
SPEED_ROUNDS = 1
#: ``--full``: the suites experiments.speed times by default, each cell in DEFAULT_ROUNDS workers.
FULL_SPEED_SUITES = ("unet", "decoder", "tiny")


def build_parser():
    parser = make_parser(NAME, __doc__)
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"time every case of the suites {', '.join(FULL_SPEED_SUITES)} with {DEFAULT_ROUNDS} "
        f"rounds per cell (several minutes) instead of {', '.join(SPEED_CASES)} with "
        f"{SPEED_ROUNDS}",
    )
    return parser


def speed_plan(args) -> tuple[list[str], list[str]]:
    """The speed part's suites and its extra arguments (``--cases``, ``--rounds``) for the parsed ``args``."""
    if args.quick:
        return ["tiny"], []
    if args.full:
        return list(FULL_SPEED_SUITES), ["--rounds", str(DEFAULT_ROUNDS)]
    return list(SPEED_SUITES), ["--cases", ",".join(SPEED_CASES), "--rounds", str(SPEED_ROUNDS)]


def part_argv(args) -> list[str]:
    argv = ["--seed", str(args.seed)]
    for flag in ("quick", "resume", "no_progress"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    if args.backends:
        argv += ["--backends", ",".join(args.backends)]
    return argv + executor_argv(args)


def main(argv=None):
    args = build_parser().parse_args(argv)
    suites, speed_argv = speed_plan(args)
    run_dir, _ = start_run(NAME, args, argv, {"parts": ["correctness", "speed"], "suites": suites})
    common = part_argv(args)
    correctness.main(common, out=run_dir / "correctness")
    speed.main([*common, "--suite", ",".join(suites), *speed_argv], out=run_dir / "speed")
    write_report(run_dir)
    finish(run_dir, NAME)
    return run_dir


def write_report(run_dir) -> str:
    """Rebuild both parts' reports and the summary report.md from the saved results."""
    run_dir = Path(run_dir)
    meta, _ = load_run(run_dir)
    parts = [report_header(meta, "Main job: correctness and speed of every backend")]
    correctness_dir, speed_dir = run_dir / "correctness", run_dir / "speed"
    if (correctness_dir / "meta.json").exists():
        correctness.write_report(correctness_dir)
        _, frame = load_run(correctness_dir)
        if not frame.empty and "passed" in frame:
            ok = frame[frame["status"] == "ok"]
            passed = int(truthy(ok["passed"]).sum())
            parts += [
                "## Correctness against the naive oracle\n",
                f"**{passed} of {len(ok)} computed cells pass** (relative L2 error and adjoint residual "
                f"within {tolerance('float32'):g} for float32, {tolerance('float64'):g} for float64). "
                f"Details: [correctness/report.md](correctness/report.md).\n",
                markdown_table(correctness.summary_table(frame).reset_index(), index=False),
                "\n![float32 errors](correctness/heatmap_float32.png)\n",
            ]
    if (speed_dir / "meta.json").exists():
        speed.write_report(speed_dir)
        speed_meta, frame = load_run(speed_dir)
        if not frame.empty and "median_s" in frame:
            ok = frame[frame["status"] == "ok"].copy()
            ok["median_ms"] = ok["median_s"] * 1e3
            parts += [
                "## Speed\n",
                f"Median time per call (ms) and speedup over **{speed_meta.get('baseline')}**; machine "
                f"ceilings {speed_meta.get('gemm_gflops_f32', np.nan):.0f} GFLOP/s float32 GEMM, "
                f"{speed_meta.get('copy_gbps', np.nan):.1f} GB/s copy. Details: "
                f"[speed/report.md](speed/report.md)."
                + (
                    f" Cells not run: {', '.join(speed_meta['excluded'])} (see `--exclude` of experiments.speed)."
                    if speed_meta.get("excluded")
                    else ""
                )
                + "\n",
            ]
            for suite_name, group in ok.groupby("suite", sort=False):
                for dtype, sub in group.groupby("dtype", sort=False):
                    parts += [
                        f"### {suite_name} ({dtype}): median ms\n",
                        markdown_table(
                            sub.pivot_table(index="case", columns="backend", values="median_ms", sort=False),
                            floatfmt=".3g",
                        ),
                        f"\n### {suite_name} ({dtype}): GFLOP/s\n",
                        markdown_table(
                            sub.pivot_table(index="case", columns="backend", values="gflops", sort=False),
                            floatfmt=".3g",
                        ),
                        f"\n### {suite_name} ({dtype}): speedup over {speed_meta.get('baseline')}\n",
                        markdown_table(
                            sub.pivot_table(index="case", columns="backend", values="speedup", sort=False),
                            floatfmt=".3g",
                        ),
                        f"\n![{suite_name} GFLOP/s](speed/speed_{suite_name}_{dtype}.png)\n",
                    ]
            parts.append("![roofline](speed/roofline.png)\n")
    text = "\n".join(parts)
    atomic_write_text(run_dir / "report.md", text)
    return text


if __name__ == "__main__":
    main()
