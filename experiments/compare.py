"""Do two speed runs agree? Per (suite, case, backend, dtype, layout, direction) the medians of run A and run B, their
ratio, and how many agree within a tolerance (default 15 %): the check that a timing depends on neither the order the
backends ran in nor the minute it ran at.

    python -m experiments.speed --suite unet,decoder --backends numba_cpu,torch,col2im,kron,polyphase,auto --out A
    python -m experiments.speed --suite unet,decoder --backends auto,polyphase,kron,col2im,torch,numba_cpu --out B
    python -m experiments.compare A B [--tolerance 0.15]

Prints a markdown report (and writes it to ``--out`` when given); exits 0 whatever the agreement: it reports, it
does not judge.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.harness.reporting import load_run, markdown_table
from experiments.harness.storage import atomic_write_text

#: The columns that identify a cell in both runs (those both runs have: older runs have no ``direction``).
KEYS = ["suite", "case", "backend", "dtype", "layout", "direction"]


def compare(frame_a, frame_b, tolerance: float = 0.15):
    """One row per cell timed ``ok`` in both runs: ``median_a_ms``, ``median_b_ms``, ``ratio`` (A / B) and
    ``agrees`` (``|A / B - 1| <= tolerance`` both ways, i.e. ``max/min - 1 <= tolerance``); where both runs
    have a ``speedup`` column, ``speedup_a``, ``speedup_b`` and ``speedup_agrees`` alike."""
    keys = [k for k in KEYS if k in frame_a and k in frame_b]
    values = ["median_s", *(["speedup"] if "speedup" in frame_a and "speedup" in frame_b else [])]
    ok_a = frame_a[frame_a["status"] == "ok"][[*keys, *values]]
    ok_b = frame_b[frame_b["status"] == "ok"][[*keys, *values]]
    both = ok_a.merge(ok_b, on=keys, suffixes=("_a", "_b"))
    both = both.assign(median_a_ms=both["median_s_a"] * 1e3, median_b_ms=both["median_s_b"] * 1e3)
    both["ratio"] = both["median_s_a"] / both["median_s_b"]
    spread = both[["median_s_a", "median_s_b"]].max(axis=1) / both[["median_s_a", "median_s_b"]].min(axis=1)
    both["agrees"] = spread - 1 <= tolerance
    if "speedup" in values:  # the ratio to the baseline measured in the same run, A's against B's
        high = both[["speedup_a", "speedup_b"]].max(axis=1)
        both["speedup_agrees"] = high / both[["speedup_a", "speedup_b"]].min(axis=1) - 1 <= tolerance
    return both.drop(columns=["median_s_a", "median_s_b"])


def report(run_a, run_b, tolerance: float = 0.15) -> str:
    meta_a, frame_a = load_run(Path(run_a))
    meta_b, frame_b = load_run(Path(run_b))
    rows = compare(frame_a, frame_b, tolerance)
    cells = rows.assign(
        cell=[
            f"{a:.3g} / {b:.3g}" + ("" if ok else " ✗")
            for a, b, ok in zip(rows["median_a_ms"], rows["median_b_ms"], rows["agrees"])
        ]
    )
    table = cells.pivot_table(index="case", columns="backend", values="cell", aggfunc="first", sort=False)
    lines = [
        f"# Run A vs run B: medians (ms), A / B; ✗ = apart by more than {tolerance:.0%}\n",
        f"- A: `{meta_a.get('run_id')}`, load average before/after {meta_a.get('load_average_before')} / "
        f"{meta_a.get('load_average_after')}",
        f"- B: `{meta_b.get('run_id')}`, load average before/after {meta_b.get('load_average_before')} / "
        f"{meta_b.get('load_average_after')}\n",
        markdown_table(table),
        f"\n**{int(rows['agrees'].sum())} of {len(rows)}** cells agree within {tolerance:.0%}; "
        f"median |A/B − 1| = {float((rows['ratio'] - 1).abs().median()):.1%}, "
        f"largest {float((rows['ratio'] - 1).abs().max()):.1%}.\n",
    ]
    if "speedup_agrees" in rows:
        paired = rows.dropna(subset=["speedup_a", "speedup_b"])
        lines.append(
            f"Speedups over each run's own baseline (`{meta_a.get('baseline')}`) agree within {tolerance:.0%} "
            f"in **{int(paired['speedup_agrees'].sum())} of {len(paired)}** cells: a burst of other load "
            f"moves a whole case, the ratios measured side by side in it much less.\n"
        )
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.15, help="relative difference allowed (default 0.15)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    text = report(args.run_a, args.run_b, args.tolerance)
    if args.out is not None:
        atomic_write_text(args.out, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
