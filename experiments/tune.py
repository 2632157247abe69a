"""Tune ``auto`` on named suites: per case every candidate backend is timed (``testbed.planner.tune_problem``,
process isolation by default) and the winner is kept as wisdom, so ``auto`` runs it from then on, on this machine.

    python -m experiments.tune --suite unet,decoder                   # wisdom for every case
    python -m experiments.tune --suite unet,decoder --write-table     # ... and regenerate auto's class table

``--write-table [PATH]`` also rewrites the ``estimate`` planner's class table of the ISA row this host runs
(``testbed/preference_tables/<row>.json``, :mod:`testbed.preference`; never another row's: each is measured on a
host of its kind) from the same process-isolated timings, never by hand: per configuration class the medians of
every case and backend, the order they give (fastest geometric mean over the class's cases first, then the
oracle as the fallback) and the run, machine, command, date and ISA row they come from. It times every
candidate fully (no early cut), so that each class ranks complete rows.

The report gives, per case, the class rule's choice, the winner, ``auto``'s choice after tuning (from
``testbed.explain``), the medians of every candidate, and the wall time of the measurement (what the first
call of a new signature pays in the ``measure`` planner mode).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

from experiments.harness.descriptor import format_descriptor
from experiments.harness.reporting import finish_report, load_run, markdown_table, report_header
from experiments.harness.runner import results_frame
from experiments.harness.storage import RowLog, atomic_write_csv, atomic_write_text
from testbed import planner, preference
from testbed.cases import suite
from testbed.timing import ISOLATIONS, TimingJob, TimingSettings, time_jobs

from .auto_preference import current_table, dumps, row_provenance, table_destination
from .common import add_rounds_argument, finish, make_parser, rounds_of, start_run
from .speed import suite_list

NAME = "tune"
#: After the ranked backends of a class: the oracle supports every configuration.
FALLBACK = ["naive"]
#: How many times ``auto`` and the winner are timed alternately after tuning (see :func:`verify_auto`).
VERIFY_ROUNDS = 3
CELL_COLUMNS = [
    "suite",
    "case",
    "dtype",
    "backend",
    "status",
    "median_s",
    "ci_low_s",
    "ci_high_s",
    "ratio_to_winner",
    "first_call_s",
    "pilot_s",
    "repeats",
    "winner",
    "rule_choice",
    "auto_after",
    "auto_median_s",
    "winner_verify_s",
    "tune_elapsed_s",
    "tune_rounds",
    "margin",
]


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(NAME, __doc__, dtypes="float32")
    parser.add_argument(
        "--suite", type=suite_list, default=None, help="comma list of suites (default unet,decoder; tiny with --quick)"
    )
    parser.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default="process",
        help="how each candidate is timed (default process: a fresh worker per candidate)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timed samples per candidate (default 0.3; 0.01 with --quick)",
    )
    parser.add_argument(
        "--cut-factor",
        type=float,
        default=3.0,
        help="a candidate whose fastest of 3 warm calls is this many times slower than the best "
        "median so far is not timed further (default 3)",
    )
    parser.add_argument(
        "--write-table",
        type=Path,
        nargs="?",
        const=True,
        default=None,
        help="also regenerate auto's class table of this host's ISA row from these timings (default "
        "path testbed/preference_tables/<row>.json); times every candidate fully",
    )
    add_rounds_argument(parser, "fully timed candidate")
    parser.add_argument("--no-store", action="store_true", help="do not keep the winners as wisdom")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not time auto itself after tuning (by default each case's auto is timed with the "
        "same isolation, in a fresh worker for 'process': it must read the stored wisdom)",
    )
    return parser


def settings_for(args) -> TimingSettings:
    base = (
        TimingSettings.quick()
        if args.quick
        else TimingSettings(warmup=1, min_repeats=5, max_repeats=30, budget_s=0.3, worker_timeout_s=1800.0)
    )
    base = replace(base, rounds=rounds_of(args))
    if args.budget is None:
        return base
    return replace(base, max_repeats=100_000, budget_s=args.budget)


def verify_auto(
    problem, winner, settings: TimingSettings, isolation: str, seed: int, rounds: int = VERIFY_ROUNDS
) -> tuple[float, float]:
    """``(auto's median, the winner's median)`` on ``problem`` (NaN where not timed), timed like the candidates
    (under ``process`` isolation in fresh workers, so ``auto`` must find the winner through the wisdom file),
    side by side: ``rounds`` rounds in which the two take turns, their samples pooled, so that the machine's
    drift between the tuning and the check does not pass for a difference between them."""
    if winner is None:
        return math.nan, math.nan
    rows = time_jobs(
        [TimingJob(problem, "auto", rng=seed), TimingJob(problem, winner, rng=seed)],
        replace(settings, rounds=rounds),
        isolation=isolation,
    )
    auto_row, winner_row = (row.get("median_s", math.nan) if row.get("status") == "ok" else math.nan for row in rows)
    return float(auto_row), float(winner_row)


def case_rows(
    suite_name: str,
    case: str,
    problem,
    result: planner.TuneResult,
    auto_median_s: float = math.nan,
    winner_verify_s: float = math.nan,
) -> list[dict]:
    """One row per candidate of one tuned case."""
    after = planner.explain_problem(problem)
    common = {
        "suite": suite_name,
        "case": case,
        "descriptor": format_descriptor(problem),
        "dtype": str(problem.dtype),
        "signature": result.signature,
        "rule_choice": result.rule,
        "winner_backend": result.winner,
        "auto_after": after.backend,
        "auto_reason": after.reason,
        "auto_median_s": auto_median_s,
        "winner_verify_s": winner_verify_s,
        "auto_over_winner": auto_median_s / winner_verify_s,
        "tune_elapsed_s": result.elapsed_s,
        "isolation": result.isolation,
        "tune_rounds": result.rounds,
        "round_winners": " ".join(result.round_winners),
        "margin": result.margin,
    }
    rows = []
    for c in result.candidates:
        rows.append(
            {
                "cell_key": f"{suite_name}|{case}|{problem.dtype}|{c.backend}",
                **common,
                "backend": c.backend,
                "status": c.status,
                "message": c.message,
                "median_s": c.median_s,
                "ci_low_s": c.ci_s[0],
                "ci_high_s": c.ci_s[1],
                "min_s": c.min_s,
                "iqr_s": c.iqr_s,
                "repeats": c.repeats,
                "first_call_s": c.first_call_s,
                "pilot_s": c.pilot_s,
                "ratio_to_winner": c.ratio,
                "ratio_ci_low": c.ratio_ci[0],
                "ratio_ci_high": c.ratio_ci[1],
                "winner": c.backend == result.winner,
            }
        )
    return rows


def main(argv=None, *, out=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.write_table:
        try:
            table_path = table_destination(None if args.write_table is True else args.write_table)
        except ValueError as exc:
            parser.error(str(exc))
    suites = args.suite or (["tiny"] if args.quick else ["unet", "decoder"])
    settings = settings_for(args)
    cut_factor = math.inf if args.write_table else args.cut_factor
    run_dir, meta = start_run(
        NAME,
        args,
        argv,
        lambda: {
            "suites": suites,
            "isolation": args.isolation,
            "timing": settings.__dict__,
            "cut_factor": cut_factor,
            "wisdom": str(planner.wisdom.wisdom_path()),
            "store": not args.no_store,
        },
        out=out,
    )
    log = RowLog(run_dir / "rows.jsonl")
    previous = log.read()
    if previous and not args.resume:
        raise SystemExit(f"{run_dir} already holds results; pass --resume to complete that run, or another --out")
    done = {(row["suite"], row["case"], row["dtype"]) for row in previous}
    cases = [
        (name, case, problem.with_(dtype=dtype))
        for name in suites
        for case, problem in suite(name).items()
        for dtype in args.dtypes
    ]
    from tqdm.auto import tqdm

    for suite_name, case, problem in tqdm(cases, desc=NAME, unit="case", disable=args.no_progress):
        if (suite_name, case, str(problem.dtype)) in done:
            continue
        try:
            result = planner.tune_problem(
                problem,
                candidates=args.backends,
                isolation=args.isolation,
                settings=settings,
                cut_factor=cut_factor,
                store=not args.no_store,
                seed=args.seed,
            )
        except planner.TuneError as exc:  # nothing measurable: the rows say why, the sweep goes on
            result = exc.result
        verified = (
            (math.nan, math.nan)
            if args.no_verify or args.no_store
            else verify_auto(problem, result.winner, settings, args.isolation, args.seed)
        )
        for row in case_rows(suite_name, case, problem, result, *verified):
            log.append(row)
    frame = results_frame(log.read())
    atomic_write_csv(run_dir / "results.csv", frame)
    if args.write_table:
        text = dumps(preference_table(meta, frame, current_table(table_path)))
        atomic_write_text(table_path, text)
        print(f"{NAME}: class table of the {row_provenance()['isa_row']!r} ISA row written to {table_path}")
    write_report(run_dir)
    finish(run_dir, NAME)
    return run_dir


# ---- auto's class table ------------------------------------------------------------------------------------------


def preference_table(meta: dict, frame, current: dict, dtype: str = "float32") -> dict:
    """auto's class table from a tune run: per class the cases' medians (ms), descriptors and order; classes the
    run did not measure and the device row (not measured on the CPU) as in ``current``; the run and ISA row it
    comes from."""
    classes: dict[str, dict] = {}
    ok = frame[(frame["status"] == "ok") & (frame["dtype"] == dtype)]
    for row in ok.itertuples(index=False):
        problem = suite(row.suite)[row.case]
        entry = classes.setdefault(preference.problem_class(problem), {"descriptors": {}, "median_ms": {}})
        entry["descriptors"][row.case] = row.descriptor
        entry["median_ms"].setdefault(row.case, {})[row.backend] = round(float(row.median_s) * 1e3, 4)
    table = {}
    for name in preference.CLASSES:
        if name in classes:
            table[name] = {
                "order": preference.preference_order(classes[name]["median_ms"], FALLBACK),
                "fallback": FALLBACK,
                **classes[name],
            }
        elif name in current["classes"]:
            table[name] = {**current["classes"][name], "note": "not measured in this run: kept as it was"}
        else:
            raise ValueError(f"class {name!r}: not measured in this run, and the current table has none")
    table[preference.DEVICE] = {
        **current["classes"][preference.DEVICE],
        "note": "not measured by a CPU run: kept as it was",
    }
    threads, git = meta.get("threads", {}), meta.get("git", {})
    return {
        "about": "auto's preference per configuration class for one ISA row (source.isa_row; testbed/preference.py): "
        "order = the backends measured on every case of the class, fastest geometric mean of median_ms "
        "first, then the fallback. Regenerate on a host of that row with `python -m experiments.tune "
        "--suite unet,decoder --write-table`.",
        "source": {
            **row_provenance(),
            "run_id": meta.get("run_id"),
            "date": meta.get("utc_time"),
            "commit": git.get("commit"),
            "dirty": git.get("dirty"),
            "machine": f"{meta.get('cpu_model')}, {threads.get('cpu_count')} cores, numba threads "
            f"{threads.get('numba_threads')}, torch threads {threads.get('torch_threads')}; load average "
            f"at start {threads.get('load_average_1_5_15min')}",
            "versions": meta.get("versions"),
            "command": " ".join(str(a) for a in meta.get("command", [])[1:]),
            "settings": f"{dtype}, batch 1, no bias; {meta.get('isolation')} isolation (each backend timed in a "
            f"fresh worker process when 'process'); timing {meta.get('timing')}",
        },
        "classes": table,
    }


# ---- report ------------------------------------------------------------------------------------------------------


def _geomean(values) -> float:
    values = [v for v in values if v == v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def summary(frame):
    """Per case: the rule's choice and its median, the winner and its median, auto after tuning, torch's
    median, and the tuning time."""
    import pandas as pd

    rows = []
    for (suite_name, case, dtype), group in frame.groupby(["suite", "case", "dtype"], sort=False):
        median = dict(zip(group["backend"], group["median_s"] * 1e3))
        first = group.iloc[0]
        rule, winner = first["rule_choice"], first["winner_backend"]
        rows.append(
            {
                "suite": suite_name,
                "case": case,
                "dtype": dtype,
                "rule": rule,
                "rule ms": median.get(rule, math.nan),
                "winner": winner,
                "winner ms": median.get(winner, math.nan),
                "auto after tuning": first["auto_after"],
                "winner speedup over rule": median.get(rule, math.nan) / median.get(winner, math.nan),
                "auto ms": first["auto_median_s"] * 1e3,
                "winner ms, beside auto": first["winner_verify_s"] * 1e3,
                "auto / winner": first["auto_over_winner"],
                "torch ms": median.get("torch", math.nan),
                "tuning s": first["tune_elapsed_s"],
            }
        )
    return pd.DataFrame(rows)


def write_report(run_dir) -> str:
    """Rebuild report.md from the saved results.csv and meta.json."""
    run_dir = Path(run_dir)
    meta, frame = load_run(run_dir)
    cut = meta.get("cut_factor")  # None: infinite (--write-table), stored as JSON null
    cutting = (
        f"a candidate whose fastest of 3 warm calls exceeded {cut}× the best median so far is `cut`"
        if cut
        else "every candidate timed fully"
    )
    parts = [
        report_header(meta, "Tuning auto (wisdom)"),
        f"Each case's candidates timed with **{meta.get('isolation')}** isolation (timing settings "
        f"`{meta.get('timing')}`; {cutting}; the reference backends are `excluded`). Winners stored as wisdom "
        f"in `{meta.get('wisdom')}`: {meta.get('store')}. *rule* = the class table's choice before tuning; "
        f"*auto after tuning* = `testbed.explain` after the winner was stored; *auto ms* = `auto` itself "
        f"timed afterwards the same way (a fresh worker under process isolation: it reads the wisdom file), "
        f"in {VERIFY_ROUNDS} rounds alternating with the winner (*winner ms, beside auto*), each one's samples "
        f"pooled, and *auto / winner* their ratio. *tuning s* = wall time of the "
        f"measurement, which is what the first call of a new signature pays in the `measure` planner mode.\n",
    ]
    if not frame.empty:
        table = summary(frame)
        parts += ["## Per case\n", markdown_table(table, floatfmt=".3g", index=False)]
        with_torch = table.dropna(subset=["torch ms"])
        if len(with_torch):
            rule = _geomean(with_torch["torch ms"] / with_torch["rule ms"])
            best = _geomean(with_torch["torch ms"] / with_torch["winner ms"])
            parts.append(
                f"\nGeometric mean speedup over torch: class rule **{rule:.3g}×** (cases where the rule's "
                f"choice was timed), after tuning **{best:.3g}×** (the fastest per case).\n"
            )
        verified = table.dropna(subset=["auto / winner"])
        if len(verified):
            within = int((verified["auto / winner"] <= 1.05).sum())
            parts.append(
                f"\n`auto` within 5 % of the winner's median on **{within} of {len(verified)}** cases "
                f"(measured side by side, alternating; the noise between two fresh processes is itself "
                f"several %).\n"
            )
        ok = frame[frame["status"] == "ok"].copy()
        ok["median_ms"] = ok["median_s"] * 1e3
        parts += [
            "\n## Medians of every timed candidate (ms)\n",
            markdown_table(
                ok.pivot_table(index="case", columns="backend", values="median_ms", sort=False), floatfmt=".3g"
            ),
        ]
    return finish_report(run_dir, parts, frame, CELL_COLUMNS)


if __name__ == "__main__":
    main()
