"""Interference: how much one backend's time depends on what ran before it in the same process.

For each case and each backend B, every measurement in its own fresh worker process (testbed.timing):

- ``fresh``: B alone, each call allocating its result;
- ``warmed``: B alone after glibc's dynamic mmap threshold was raised to its 32 MiB ceiling (one freed
  block of just under 32 MiB): results up to that size then come from the already faulted-in heap;
- ``out``: B alone, writing into a preallocated ``out=`` (no allocation at all);
and for each other backend A:
- ``after A``: A timed in full first (warm-up and repeats), then B — what an in-process sweep measures;
- ``after A, out=``: the same with B writing into ``out=`` (what remains is thread-pool interference);
- ``alternating A``: one untimed call of A right before every timed sample of B (A's thread pools still
  spinning when B starts).

Every row gives B's median, min, IQR, minor page faults per call and peak RSS, and its ratio to ``fresh``
with a bootstrap 95 % interval (> 1: slower than in a fresh process). The allocator effect is fresh vs
warmed vs out=; the thread-pool effect is ``after A, out=`` and ``alternating A`` vs ``out``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from experiments.harness.metadata import machine_state_lines, record_end_state
from experiments.harness.reporting import finish_report, grouped_bar_figure, load_run, markdown_table, report_header
from experiments.harness.runner import Cell, cell_rng, run_sweep
from testbed.cases import suite
from testbed.problem import Problem
from testbed.registry import available_backends, get_backend
from testbed.timing import TimingSettings, WorkerError, prepare_call, run_in_worker, speedup_ci, time_backend, time_call

from .common import finish, make_parser, start_run, sweep_executor

NAME = "interference"
#: The cases: the depthwise layer and the two decoder shapes where the effects were first seen (see
#: results/README.md, "How a time is taken"), and the largest U-Net layer (39 MB output: above the mmap ceiling).
CASES = {
    "depthwise_n4": Problem(
        batch=4,
        in_channels=64,
        in_size=64,
        out_channels=64,
        kernel_size=3,
        stride=2,
        padding=1,
        output_padding=1,
        groups=64,
        dtype=np.float32,
    ),
    "k3s1p1": suite("decoder")["k3s1p1"],
    "k5s3": suite("decoder")["k5s3"],
    "unet4": suite("unet")["unet4"],
}
QUICK_CASES = {"tiny_k2s2": suite("tiny")["tiny_k2s2"]}
QUICK_BACKENDS = ["kron", "col2im"]
SOLO_CONDITIONS = ("fresh", "warmed", "out")
PAIR_CONDITIONS = ("after", "after_out", "alternating")
#: Just under glibc's DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit): freeing a mmapped chunk up to that size
#: raises the dynamic threshold to it.
WARM_BLOCK_BYTES = 32 * 2**20 - 2**16
#: The effects measured on another host before this experiment existed, to compare with.
EARLIER = [
    ("depthwise_n4", "torch", "fresh", "warmed", "10 ms fresh, 1.5 ms after a few other large calls"),
    ("k3s1p1", "torch", "fresh", "after numba_cpu", "4.1 ms alone, 9.1 ms right after numba_cpu"),
    ("k5s3", "torch", "fresh", "after numba_cpu", "1.6 ms alone, 5.8 ms right after numba_cpu"),
    ("unet4", "numba_cpu", "fresh", "out", "42 ms default allocator, 27 ms with the mmap threshold raised"),
]


def setting_label(condition: str, other: str) -> str:
    return {
        "fresh": "fresh",
        "warmed": "warmed",
        "out": "out=",
        "after": f"after {other}",
        "after_out": f"after {other}, out=",
        "alternating": f"alternating {other}",
    }[condition]


def build_parser():
    parser = make_parser(NAME, __doc__)
    parser.add_argument(
        "--cases",
        type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
        default=None,
        help=f"comma list of {', '.join(CASES)} (default all; tiny_k2s2 with --quick)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed repeats per measurement (default 0.3; 0.01 with --quick)",
    )
    return parser


def _warm_allocator() -> None:
    block = np.empty(WARM_BLOCK_BYTES, dtype=np.uint8)  # mmapped (above the 128 KiB starting threshold)
    del block  # munmap: the threshold rises to the block's size


def measure_in_worker(problem: Problem, backend: str, condition: str, other: str, rng, settings) -> dict:
    """(Runs in a fresh worker process.) ``backend`` timed under ``condition`` (``other`` = A)."""
    x, weight, bias = problem.random_arrays(rng)
    if condition == "warmed":
        _warm_allocator()
    if condition in ("after", "after_out"):
        first = time_backend(other, problem, x, weight, bias, settings)
        if first.get("status", "ok") != "ok":
            return {"status": first["status"], "message": f"A = {other}: {first.get('message')}"}
    if condition == "alternating":
        before = prepare_call(get_backend(other), problem, x, weight, bias)
        return {
            **time_call(
                prepare_call(get_backend(backend), problem, x, weight, bias),
                settings,
                before_each=before,
                keep_samples=True,
            ),
            "allocation": "alloc",
        }
    allocation = "out" if condition in ("out", "after_out") else "alloc"
    return time_backend(backend, problem, x, weight, bias, settings, allocation=allocation, keep_samples=True)


def make_measure(seed: int, settings: TimingSettings):
    def measure(cell, backend):
        tags = dict(cell.tags)
        try:
            return run_in_worker(
                measure_in_worker,
                cell.problem,
                cell.backend_name,
                tags["condition"],
                tags["after"],
                cell_rng(seed, cell),
                settings,
                timeout_s=settings.worker_timeout_s,
            )
        except WorkerError as exc:
            return {"status": "error", "message": str(exc)}

    return measure


def build_cells(cases: dict, backends: list, targets: list) -> list:
    """Every setting of each target backend B (others as A) on every case."""
    cells = []
    for name, problem in cases.items():
        for b in targets:
            cells += [Cell(name, problem, b, (("condition", c), ("after", "-"))) for c in SOLO_CONDITIONS]
            cells += [
                Cell(name, problem, b, (("condition", c), ("after", a)))
                for a in backends
                if a != b
                for c in PAIR_CONDITIONS
            ]
    return cells


def add_ratios(frame):
    """``vs_fresh`` = median / fresh median of the same (case, backend), with its bootstrap 95 % interval."""
    frame = frame.copy()
    keys = list(zip(frame["case"], frame["backend"]))
    fresh = frame[(frame["condition"] == "fresh") & (frame["status"] == "ok")].set_index(["case", "backend"])
    medians = fresh["median_s"].to_dict() if "median_s" in fresh else {}
    samples = fresh["samples_s"].to_dict() if "samples_s" in fresh else {}
    frame["setting"] = [setting_label(c, a) for c, a in zip(frame["condition"], frame["after"])]
    if "median_s" in frame:
        frame["vs_fresh"] = [m / medians.get(k, np.nan) for k, m in zip(keys, frame["median_s"])]
        intervals = [
            speedup_ci(own, samples[k])
            if isinstance(own, list) and isinstance(samples.get(k), list)
            else (np.nan, np.nan)
            for k, own in zip(keys, frame.get("samples_s", [None] * len(frame)))
        ]
        frame["vs_fresh_ci_low"], frame["vs_fresh_ci_high"] = zip(*intervals) if intervals else ((), ())
    return frame.drop(columns=["samples_s"], errors="ignore")


def main(argv=None, *, out=None):
    args = build_parser().parse_args(argv)
    cases = QUICK_CASES if args.quick and not args.cases else CASES
    if args.cases:
        unknown = [c for c in args.cases if c not in CASES]
        if unknown:
            raise SystemExit(f"--cases must be a comma list of {', '.join(CASES)}; unknown: {', '.join(unknown)}")
        cases = {c: CASES[c] for c in args.cases}
    if args.backends:
        backends = list(args.backends)
    elif args.quick:
        backends = QUICK_BACKENDS
    else:
        backends = [b for b in ("numba_cpu", "torch") if b in available_backends()] or ["col2im", "polyphase"]
    settings = TimingSettings.quick() if args.quick else TimingSettings()
    if args.budget is not None:
        settings = replace(settings, max_repeats=100_000, budget_s=args.budget)
    run_dir, _ = start_run(
        NAME,
        args,
        argv,
        {"cases": list(cases), "backends": backends, "timing": settings.__dict__, "isolation": "process"},
        out=out,
    )
    # --quick times one B (the first backend) against one A: six worker processes in all
    targets = backends[:1] if args.quick else backends
    run_sweep(
        build_cells(cases, backends, targets),
        make_measure(args.seed, settings),
        run_dir,
        resume=args.resume,
        progress=not args.no_progress,
        desc=NAME,
        finalize=add_ratios,
        executor=sweep_executor(args),
        timed=True,
    )
    record_end_state(run_dir)
    write_report(run_dir)
    finish(run_dir, NAME)
    return run_dir


def _ratio_text(row) -> str:
    if row["vs_fresh_ci_low"] == row["vs_fresh_ci_low"]:
        return f"{row['vs_fresh']:.2f} [{row['vs_fresh_ci_low']:.2f}–{row['vs_fresh_ci_high']:.2f}]"
    return f"{row['vs_fresh']:.2f}"


def _lookup(ok, case, backend, setting):
    hit = ok[(ok["case"] == case) & (ok["backend"] == backend) & (ok["setting"] == setting)]
    return hit.iloc[0] if len(hit) else None


def write_report(run_dir) -> str:
    """Rebuild report.md and the figure from the saved results.csv and meta.json."""
    run_dir = Path(run_dir)
    meta, frame = load_run(run_dir)
    timing = meta.get("timing", {})
    parts = [
        report_header(meta, "Interference: a backend's time after other backends in the same process"),
        machine_state_lines(meta),
        f"Every number below is B's per-call median in its own fresh worker process (a new interpreter, "
        f"testbed._worker); what differs is what ran in that process before B (see the module docstring of "
        f"`experiments/interference.py`). Per measurement: one first call, {timing.get('warmup')} warm-up "
        f"call(s), then samples until {timing.get('budget_s')} s ({timing.get('min_repeats')} to "
        f"{timing.get('max_repeats')}). `vs fresh` = median / B's fresh median with a bootstrap 95 % interval "
        f"(> 1: slower than alone). Reproduce: `python -m experiments.interference`.\n",
    ]
    if not frame.empty and "median_s" in frame:
        ok = frame[frame["status"] == "ok"].copy()
        ok["median_ms"] = ok["median_s"] * 1e3
        ok["label"] = ok["case"] + " · " + ok["backend"]
        order = list(dict.fromkeys(ok["setting"]))
        path = run_dir / "interference.png"
        table = ok.pivot_table(index="label", columns="setting", values="median_ms", sort=False)
        grouped_bar_figure(
            table[[c for c in order if c in table]],
            "Median ms of B (rows) by what ran before it in its process (lower is better)",
            "ms per call",
            path,
        )
        parts.append(f"![median ms per setting]({path.name})\n")
        for case, sub in ok.groupby("case", sort=False):
            ratios = sub.assign(text=sub.apply(_ratio_text, axis=1))
            parts += [
                f"## {case} ({sub['descriptor'].iloc[0]})\n",
                "Median ms:\n",
                markdown_table(
                    sub.pivot_table(index="backend", columns="setting", values="median_ms", sort=False), floatfmt=".3g"
                ),
                "\nvs fresh [95 % interval]:\n",
                markdown_table(
                    ratios.pivot_table(index="backend", columns="setting", values="text", aggfunc="first", sort=False)
                ),
                "\nMinor page faults per call:\n",
                markdown_table(
                    sub.pivot_table(index="backend", columns="setting", values="minor_faults_per_call", sort=False),
                    floatfmt=".4g",
                ),
            ]
        lines = []
        for case, backend, before, after, claim in EARLIER:
            a, b = _lookup(ok, case, backend, before), _lookup(ok, case, backend, after)
            if a is not None and b is not None:
                lines.append(
                    f"| {case} | {backend} | {before} → {after} | {claim} | {a['median_ms']:.3g} → "
                    f"{b['median_ms']:.3g} ms ({b['median_ms'] / a['median_ms']:.2f}×) |"
                )
        if lines:
            parts += [
                "## The effects reported earlier, re-measured\n",
                "| case | backend | settings | earlier (another host) | this run |",
                "|:--|:--|:--|:--|:--|",
                *lines,
                "",
            ]
    return finish_report(
        run_dir,
        parts,
        frame,
        [
            "case",
            "backend",
            "setting",
            "status",
            "median_s",
            "iqr_s",
            "repeats",
            "vs_fresh",
            "vs_fresh_ci_low",
            "vs_fresh_ci_high",
            "minor_faults_per_call",
            "peak_rss_increase_mb",
            "message",
        ],
    )


if __name__ == "__main__":
    main()
