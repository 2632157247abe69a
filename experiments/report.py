"""Rebuild a saved run's report.md and figures, or compare two runs, without re-running anything.

    python -m experiments.report DIR            # rewrite DIR/report.md and DIR/*.png from results.csv, meta.json
                                                # (results.csv first rebuilt from rows.jsonl if it is stale)
    python -m experiments.report DIR_A DIR_B    # side by side: DIR_B/compare-<A's name>.md (also printed)

Both runs must come from the same experiment. The comparison joins rows on the cell (case, problem,
backend, dtype, tags) and shows the experiment's main metric in A and in B with the ratio B / A: for timings
(speed, scaling; the ``speed`` part of ``main``) a ratio below 1 means B is faster. Rows of a run on Dask
say where each cell ran (``host_A``, ``host_B``); when a run spans several hosts, the geometric mean of the
ratios is also given per pair of hosts.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import numpy as np

from experiments.harness.reporting import load_run, markdown_table, spans_hosts
from experiments.harness.runner import results_from_log
from experiments.harness.storage import atomic_write_csv, atomic_write_text

#: experiment: (metric compared, what a ratio B/A < 1 means)
METRICS = {
    "speed": ("median_s", "B is faster"),
    "scaling": ("median_s", "B is faster"),
    "training_step": ("median_s", "B is faster"),
    "correctness": ("rel_l2", "B is more accurate"),
    "seed": ("max_abs_diff", "B deviates less"),
    "checkerboard": ("unevenness", "B's map is more even"),
}
#: the parts of a composite run (experiment: sub-directories, each a run of its own)
PARTS = {"main": ("correctness", "speed")}
#: the columns an experiment's sweep derives from its whole table (run_sweep's ``finalize``), recomputed when
#: results.csv is rebuilt from rows.jsonl: experiment: finalize(frame, meta) -> frame
FINALIZE = {
    "speed": lambda frame, meta: importlib.import_module("experiments.speed").add_speedup(meta["baseline"])(frame),
    "training_step": lambda frame, meta: importlib.import_module("experiments.training_step").add_ratios(
        meta["baseline"]
    )(frame),
}


def experiment_of(run_dir: Path) -> str:
    meta_path = Path(run_dir) / "meta.json"
    if not meta_path.exists():
        raise SystemExit(f"{run_dir} is not a run directory: it has no meta.json")
    return json.loads(meta_path.read_text())["experiment"]


def refresh_results(run_dir) -> bool:
    """Rewrite ``run_dir/results.csv`` from rows.jsonl if it is missing or stale (a killed run), with the
    experiment's derived columns (:data:`FINALIZE`); whether it did."""
    run_dir = Path(run_dir)
    frame = results_from_log(run_dir)
    if frame is None:
        return False
    meta = json.loads((run_dir / "meta.json").read_text())
    finalize = FINALIZE.get(meta.get("experiment"))
    atomic_write_csv(run_dir / "results.csv", finalize(frame, meta) if finalize else frame)
    return True


def rebuild(run_dir) -> Path:
    """Rewrite ``run_dir``'s report (and its parts' reports) with the experiment's own ``write_report``, after
    bringing stale results.csv files up to date with their rows.jsonl."""
    run_dir = Path(run_dir)
    experiment = experiment_of(run_dir)
    for directory in [run_dir, *(run_dir / part for part in PARTS.get(experiment, ()))]:
        if (directory / "meta.json").exists():
            refresh_results(directory)
    importlib.import_module(f"experiments.{experiment}").write_report(run_dir)
    return run_dir / "report.md"


def compare_frames(a, b, metric: str):
    """Rows of A and B joined on the cell, with the metric of each, both statuses and the ratio B / A."""
    columns = ["cell_key", "case", "backend", "dtype", "status", metric]
    extra = [c for c in ("suite", "sweep", "x", "threads") if c in a and c in b]
    left = a[[c for c in columns + extra if c in a]]
    right = b[["cell_key", "status", metric] if metric in b else ["cell_key", "status"]]
    # where each side's cell ran (a run on Dask): host_A, host_B
    left, right = (
        frame.assign(**{f"host_{side}": whole["host"]}) if "host" in whole else frame
        for frame, whole, side in ((left, a, "A"), (right, b, "B"))
    )
    joined = left.merge(right, on="cell_key", how="outer", suffixes=("_A", "_B"), indicator=True)
    for side in ("A", "B"):
        if f"{metric}_{side}" not in joined:
            joined[f"{metric}_{side}"] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        joined["ratio_B_over_A"] = joined[f"{metric}_B"].astype(float) / joined[f"{metric}_A"].astype(float)
    # B-only rows lack A's descriptive columns: take them from the cell key
    missing = joined["case"].isna()
    if missing.any():
        parts = joined.loc[missing, "cell_key"].str.split("|", expand=True)
        joined.loc[missing, "case"], joined.loc[missing, "backend"], joined.loc[missing, "dtype"] = (
            parts[0],
            parts[2],
            parts[3],
        )
    joined["in"] = joined.pop("_merge").map({"both": "A and B", "left_only": "A only", "right_only": "B only"})
    order = [
        "case",
        *extra,
        "backend",
        "dtype",
        "host_A",
        "host_B",
        "status_A",
        "status_B",
        f"{metric}_A",
        f"{metric}_B",
        "ratio_B_over_A",
        "in",
    ]
    return joined[[c for c in order if c in joined]]


def ratios_by_host(table):
    """Per (host of A, host of B): the cells with both values and the geometric mean of their ratios B / A."""
    import pandas as pd

    hosts = [c for c in ("host_A", "host_B") if c in table]
    rows = []
    for key, group in table.fillna(dict.fromkeys(hosts, "-")).groupby(hosts, sort=True):
        ratios = group["ratio_B_over_A"].replace([np.inf, -np.inf], np.nan).dropna()
        ratios = ratios[ratios > 0]
        rows.append(
            {
                **dict(zip(hosts, key if isinstance(key, tuple) else (key,))),
                "cells": len(ratios),
                "geometric_mean_B_over_A": float(np.exp(np.log(ratios).mean())) if len(ratios) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def compare(dir_a, dir_b) -> str:
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    experiment = experiment_of(dir_a)
    if experiment_of(dir_b) != experiment:
        raise SystemExit(f"cannot compare a {experiment!r} run ({dir_a}) with a {experiment_of(dir_b)!r} run ({dir_b})")
    meta_a, meta_b = (json.loads((d / "meta.json").read_text()) for d in (dir_a, dir_b))
    lines = [
        f"# Comparison of two {experiment} runs",
        "",
        f"- A: `{dir_a}` (run `{meta_a.get('run_id')}`, commit `{meta_a.get('git', {}).get('commit')}`)",
        f"- B: `{dir_b}` (run `{meta_b.get('run_id')}`, commit `{meta_b.get('git', {}).get('commit')}`)",
        "",
    ]
    parts = (
        [(name, dir_a / name, dir_b / name) for name in PARTS[experiment]]
        if experiment in PARTS
        else [(experiment, dir_a, dir_b)]
    )
    for name, part_a, part_b in parts:
        metric, meaning = METRICS[name]
        _, frame_a = load_run(part_a)
        _, frame_b = load_run(part_b)
        if frame_a.empty or frame_b.empty:
            lines += [f"## {name}\n", "_(one of the runs has no rows)_\n"]
            continue
        table = compare_frames(frame_a, frame_b, metric)
        lines += [
            f"## {name}: {metric}, ratio B / A (< 1: {meaning})\n",
            markdown_table(table, floatfmt=".4g", index=False),
        ]
        both = table["ratio_B_over_A"].replace([np.inf, -np.inf], np.nan).dropna()
        both = both[both > 0]
        if len(both):
            lines.append(
                f"\nGeometric mean of B / A over {len(both)} cells with both values: "
                f"**{float(np.exp(np.log(both).mean())):.3g}**.\n"
            )
        if spans_hosts(frame_a) or spans_hosts(frame_b):
            lines += [
                "\nPer host (the host of each side's cell; a ratio across hosts compares machines too):\n",
                markdown_table(ratios_by_host(table), floatfmt=".4g", index=False),
            ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="DIR", help="one run to rebuild, or two to compare")
    parser.add_argument(
        "--out", type=Path, default=None, help="where the comparison goes (default DIR_B/compare-<DIR_A name>.md)"
    )
    args = parser.parse_args(argv)
    if len(args.runs) == 1:
        path = rebuild(args.runs[0])
        print(f"rebuilt {path}")
        return path
    if len(args.runs) != 2:
        parser.error(f"give one run directory (rebuild) or two (compare), got {len(args.runs)}")
    text = compare(*args.runs)
    out = args.out or args.runs[1] / f"compare-{args.runs[0].resolve().name}.md"
    atomic_write_text(out, text)
    print(text)
    print(f"comparison written to {out}")
    return out


if __name__ == "__main__":
    main()
