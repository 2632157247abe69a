"""Performance over commits from asv's stored results: per benchmark and backend, the value against the commit,
with the steps that asv's step detection finds marked.

    python -m experiments.history [--config asv.conf.json] [--machine NAME] [--bench REGEX] [--out DIR]

Reads what ``asv run`` stored (``<results_dir>/<machine>/<commit>-<env>.json`` and ``benchmarks.json``, through
asv's own loaders :func:`asv.results.iter_results_for_machine` and :meth:`asv.benchmarks.Benchmarks.load`) and
writes ``results/history/<run-id>/``: ``results.csv`` (one row per machine × environment × commit × benchmark ×
parameter combination: the value, asv's 99 % confidence interval and quartiles), ``steps.csv`` (every level of
every series), ``regressions.csv``, ``meta.json``, one PNG per benchmark (a panel per combination of the
parameters other than ``backend``, a line per backend and environment) and ``report.md`` with the same as
``report.html`` for a browser.

Commits are ordered as git orders them (``git rev-list --topo-order``; by commit date when the repository does
not know a commit). Step detection is asv's, as ``asv publish`` runs it: each series (one backend on one
parameter combination in one environment) is fitted with a piecewise constant function by
:func:`asv.step_detect.detect_steps` (the L1 Potts-model segmentation of ``solve_potts_autogamma``, points
weighted by ``2/width`` of their 99 % confidence interval), and :func:`asv.step_detect.detect_regressions`
reports the upward steps that make the latest value worse than the best one by more than the threshold of
``asv.conf.json``'s ``regressions_thresholds`` (the largest matching one; asv's default 0.05 otherwise). asv
treats every value as lower-is-better; for a throughput (a unit ending in ``/s``, such as GFLOP/s) the series is
detected on its reciprocal, so a drop in throughput is the regression. The figures draw every detected step
(the fitted level as a dashed line) and mark each regression (a red arrow from the last good commit to the first
bad one, labelled with the ratio).

Time benchmarks whose parameters include a ``case`` of ``testbed.cases.SUITES`` also get a GFLOP/s figure:
``Problem.flops / seconds``, the useful work ``2·N·C_in·(C_out/groups)·prod(in_size)·prod(kernel_size)`` at the
case's spatial rank, marked where its time series is (the same steps and regressions, converted). (The rank
benchmarks, parametrised by ``rank`` rather than ``case``, track their GFLOP/s themselves: ``track_gflops``.)
"""

from __future__ import annotations

import argparse
import ast
import itertools
import math
import re
import subprocess
import sys
from html import escape
from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter

from experiments.common import RESULTS_ROOT
from experiments.harness.metadata import collect_metadata, run_id
from experiments.harness.reporting import markdown_table, new_figure, report_header
from experiments.harness.storage import atomic_write_csv, atomic_write_json, atomic_write_text, save_figure

NAME = "history"
#: asv's threshold when no ``regressions_thresholds`` pattern matches (asv.plugins.regressions).
ASV_DEFAULT_THRESHOLD = 0.05
#: Derived series: time benchmark -> its throughput, drawn with the same steps.
GFLOPS_UNIT = "GFLOP/s"


def higher_is_better(unit) -> bool:
    """Whether a larger value is better: a rate (``GFLOP/s``, ``GB/s``). Times, bytes and errors are not."""
    return isinstance(unit, str) and unit.endswith("/s")


def parse_param(text: str):
    """asv stores parameter values as their ``repr`` (``"'col2im'"``, ``"3"``); the Python value, or the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def regression_threshold(conf, entry_name: str) -> float:
    """The largest ``regressions_thresholds`` value whose pattern matches ``entry_name`` from its start, as
    ``asv publish`` computes it; asv's default 0.05 if none does."""
    matching = [float(value) for pattern, value in conf.regressions_thresholds.items() if re.match(pattern, entry_name)]
    return max(matching, default=ASV_DEFAULT_THRESHOLD)


def ci_weight(stats: dict):
    """A value's weight in step detection as ``asv publish`` gives it (``asv._stats.get_weight``): ``2 / width`` of
    its 99 % confidence interval; None (the series' median weight) without a finite, non-empty interval."""
    low, high = stats.get("ci_99_a"), stats.get("ci_99_b")
    if low is None or high is None or not math.isfinite(high - low) or high == low:
        return None
    return 2 / abs(high - low)


def machines(results_dir: Path) -> list[str]:
    """The machines with results: sub-folders of ``results_dir`` holding asv's ``machine.json``."""
    return sorted(p.name for p in results_dir.iterdir() if (p / "machine.json").is_file())


def load_results(conf, machine_names=None, bench=None):
    """asv's stored results as a tidy DataFrame: ``machine, env, commit, date, benchmark, unit, type, params,
    <one column per parameter name>, value, weight, ci_low, ci_high, q_25, q_75``; one row per value that is
    a number (skipped and failed combinations, stored as null, are left out)."""
    import pandas as pd
    from asv.benchmarks import Benchmarks
    from asv.results import iter_results_for_machine

    results_dir = Path(conf.results_dir)
    if not results_dir.is_dir():
        raise SystemExit(f"{results_dir} does not exist: no asv results yet (run `make bench` or `make bench-history`)")
    benchmarks = Benchmarks.load(conf)
    pattern = re.compile(bench) if bench else None
    rows = []
    for machine in machine_names or machines(results_dir):
        for result in iter_results_for_machine(str(results_dir), machine):
            for key in sorted(result.get_result_keys(benchmarks)):
                if pattern is not None and not pattern.search(key):
                    continue
                benchmark = benchmarks[key]
                params = result.get_result_params(key)
                values = result.get_result_value(key, params)
                stats = result.get_result_stats(key, params)
                combos = list(itertools.product(*params)) if params else [()]
                if not params:
                    values, stats = [values], [stats]
                for combo, value, stat in zip(combos, values, stats):
                    if value is None or not np.isfinite(value):
                        continue
                    stat = stat or {}
                    row = {
                        "machine": machine,
                        "env": result.env_name,
                        "commit": result.commit_hash,
                        "date": result.date,
                        "benchmark": key,
                        "unit": benchmark.get("unit"),
                        "type": benchmark.get("type"),
                        "params": ", ".join(combo),
                        "value": float(value),
                        "weight": ci_weight(stat),
                        "ci_low": stat.get("ci_99_a"),
                        "ci_high": stat.get("ci_99_b"),
                        "q_25": stat.get("q_25"),
                        "q_75": stat.get("q_75"),
                    }
                    row.update({name: parse_param(text) for name, text in zip(benchmark.get("param_names", []), combo)})
                    rows.append(row)
    if not rows:
        raise SystemExit(
            f"no benchmark results under {results_dir}" + (f" matching --bench {bench!r}" if bench else "")
        )
    return pd.DataFrame(rows)


def commit_order(frame, repo: Path) -> list[str]:
    """The frame's commits, oldest first: git's topological order, then commit date for commits git lacks."""
    commits = list(dict.fromkeys(frame.sort_values("date")["commit"]))
    try:
        listed = subprocess.run(
            ["git", "rev-list", "--topo-order", "--reverse", *commits],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return commits
    position = {commit: i for i, commit in enumerate(listed)}
    known = sorted((c for c in commits if c in position), key=position.__getitem__)
    return known + [c for c in commits if c not in position]


def commit_subjects(commits, repo: Path) -> dict:
    """``{hash: "YYYY-mm-dd subject"}`` from git, empty where git does not know a commit."""
    subjects = {}
    for commit in commits:
        try:
            subjects[commit] = subprocess.run(
                ["git", "log", "-1", "--format=%cs %s", commit],
                cwd=repo,
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            subjects[commit] = ""
    return subjects


def add_gflops(frame):
    """The frame plus a ``<benchmark> [GFLOP/s]`` row for each time value whose ``case`` is a named problem:
    flops / seconds / 1e9, its interval and quartiles converted the same way (so they swap ends)."""
    import pandas as pd

    from testbed.cases import SUITES

    flops = {name: problem.flops for cases in SUITES.values() for name, problem in cases.items()}
    if "case" not in frame:
        return frame
    timed = frame[(frame["type"] == "time") & frame["case"].isin(flops)].copy()
    if timed.empty:
        return frame
    work = timed["case"].map(flops).astype(float) / 1e9
    timed["gigaflop"] = work
    timed["value"] = work / timed["value"]
    for low, high in (("ci_low", "ci_high"), ("q_25", "q_75")):
        low_s, high_s = timed[low].astype(float), timed[high].astype(float)
        timed[low], timed[high] = work / high_s, work / low_s
    timed["weight"] = np.nan  # not detected on its own: it gets its time series' steps (see detect)
    timed["benchmark"] = timed["benchmark"] + f" [{GFLOPS_UNIT}]"
    timed["unit"], timed["type"] = GFLOPS_UNIT, "derived"
    return pd.concat([frame, timed], ignore_index=True)


def series_steps(values, weights, threshold: float, higher_better: bool):
    """asv's step detection on one series (``values`` in commit order, NaN where missing).

    Returns ``(steps, regressions)``: ``steps`` as :func:`asv.step_detect.detect_steps` gives them, ``(left,
    right, level, minimum, error)`` with ``left``/``right`` positions in ``values`` (right exclusive) and levels
    in the series' own unit; ``regressions`` as ``(before, after, value_before, best_after)`` from
    :func:`asv.step_detect.detect_regressions` (positions of the last good and first bad commit).
    """
    from asv.step_detect import detect_regressions, detect_steps

    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    if finite.sum() == 0:
        return [], []
    # asv's detection wants lower-is-better; a throughput is detected on its reciprocal, then mapped back.
    detected = np.where(finite, 1.0 / values, np.nan) if higher_better else values
    y = [None if not np.isfinite(v) else float(v) for v in detected]
    w = [None if w is None or not np.isfinite(w) else float(w) for w in weights]
    steps = detect_steps(y, w)
    _, _, regressions = detect_regressions(steps, threshold)
    back = (lambda v: 1.0 / v) if higher_better else (lambda v: v)
    steps = [(left, right, back(level), back(low), error) for left, right, level, low, error in steps]
    regressions = [(before, after, back(vb), back(va)) for before, after, vb, va in regressions or []]
    return steps, regressions


def detect(frame, commits, conf):
    """Step detection over every measured series of ``frame``: ``(steps, regressions)`` as DataFrames, one row per
    step (commit range and level) and per regression (last good and first bad commit, values, ratio by which the
    value got worse). A derived GFLOP/s series gets its time series' steps and regressions, converted (the same
    commits are marked in both figures)."""
    import pandas as pd

    position = {commit: i for i, commit in enumerate(commits)}
    step_rows, regression_rows = [], []
    measured = frame[frame["type"] != "derived"]
    for (machine, env, benchmark, params), series in measured.groupby(
        ["machine", "env", "benchmark", "params"], sort=False
    ):
        values = np.full(len(commits), np.nan)
        weights = np.full(len(commits), np.nan)
        index = series["commit"].map(position).to_numpy()
        values[index] = series["value"].to_numpy(dtype=float)
        weights[index] = series["weight"].to_numpy(dtype=float)
        unit = series["unit"].iloc[0]
        better_up = higher_is_better(unit)
        threshold = regression_threshold(conf, f"{benchmark}({params})" if params else benchmark)
        steps, regressions = series_steps(values, weights, threshold, better_up)
        key = {"machine": machine, "env": env, "benchmark": benchmark, "params": params, "unit": unit}
        for left, right, level, _minimum, error in steps:
            step_rows.append(
                {
                    **key,
                    "first": commits[left],
                    "last": commits[right - 1],
                    "first_pos": left,
                    "last_pos": right - 1,
                    "level": level,
                    "error": error,
                }
            )
        for before, after, value_before, value_after in regressions:
            ratio = value_before / value_after if better_up else value_after / value_before
            regression_rows.append(
                {
                    **key,
                    "threshold": threshold,
                    "good": commits[before],
                    "bad": commits[after],
                    "good_pos": before,
                    "bad_pos": after,
                    "value_good": value_before,
                    "value_bad": value_after,
                    "worse_by": ratio,
                }
            )
    key_columns = ["machine", "env", "benchmark", "params", "unit"]
    steps = pd.DataFrame(step_rows, columns=[*key_columns, "first", "last", "first_pos", "last_pos", "level", "error"])
    regressions = pd.DataFrame(
        regression_rows,
        columns=[
            *key_columns,
            "threshold",
            "good",
            "bad",
            "good_pos",
            "bad_pos",
            "value_good",
            "value_bad",
            "worse_by",
        ],
    )
    return with_derived(steps, frame), with_derived(regressions, frame)


def with_derived(table, frame):
    """``table`` (steps or regressions) plus, for each derived GFLOP/s series of ``frame``, its time series' rows
    in GFLOP/s: ``work / seconds`` for levels and values, the level's error to first order; ratios unchanged."""
    import pandas as pd

    derived = frame[frame["type"] == "derived"].drop_duplicates(["benchmark", "params"])
    if derived.empty or table.empty:
        return table
    sources = derived.assign(source=derived["benchmark"].str.removesuffix(f" [{GFLOPS_UNIT}]"))[
        ["source", "benchmark", "params", "gigaflop"]
    ].rename(columns={"benchmark": "derived"})
    rows = table.merge(sources, left_on=["benchmark", "params"], right_on=["source", "params"])
    if rows.empty:
        return table
    if "level" in rows:
        rows["error"] = rows["gigaflop"] * rows["error"] / rows["level"] ** 2
        rows["level"] = rows["gigaflop"] / rows["level"]
    for column in ("value_good", "value_bad"):
        if column in rows:
            rows[column] = rows["gigaflop"] / rows[column]
    rows = rows.assign(benchmark=rows["derived"], unit=GFLOPS_UNIT)[table.columns]
    return pd.concat([table, rows], ignore_index=True)


def leading_digit(value: float) -> int:
    return round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0


def plain_number(value: float, _position=None) -> str:
    """A log axis' tick as ``0.002``/``30`` rather than matplotlib's ``2×10⁻³``."""
    return f"{value:.3g}"


def figure_name(benchmark: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", benchmark.replace(" [GFLOP/s]", "_gflops")).strip("_") + ".png"


def draw_benchmark(frame, steps, regressions, commits, benchmark: str, path: Path) -> Path:
    """One figure for ``benchmark``: a panel per combination of its non-backend parameters, a line per backend
    (and environment, when there are several), the value against the commit; detected steps dashed, regressions
    as red arrows labelled with the ratio."""
    rows = frame[frame["benchmark"] == benchmark]
    unit = rows["unit"].iloc[0] or ""
    panel_names = [
        c for c in ("case", "rank", "layout", "allocation", "dtype", "cache") if c in rows and rows[c].notna().any()
    ]
    panels = [()] if not panel_names else sorted({tuple(r) for r in rows[panel_names].astype(str).to_numpy()})
    envs = sorted(rows["env"].unique())
    backends = list(dict.fromkeys(rows["backend"])) if "backend" in rows else ["value"]
    colours = {b: f"C{i % 10}" for i, b in enumerate(backends)}
    styles = dict(zip(envs, itertools.cycle(["-", ":", "-."])))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    figure, axes = new_figure(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows + 1.0), squeeze=False)
    figure.set_layout_engine("constrained")
    x = np.arange(len(commits))
    for ax, panel in zip(axes.flat, panels):
        selected = rows
        for name, value in zip(panel_names, panel):
            selected = selected[selected[name].astype(str) == value]
        for (backend, env, params), series in selected.groupby(
            ["backend" if "backend" in selected else "benchmark", "env", "params"], sort=False
        ):
            series = series.set_index("commit").reindex(commits)
            label = backend if len(envs) == 1 else f"{backend} [{env}]"
            ax.plot(
                x,
                series["value"].to_numpy(dtype=float),
                styles[env],
                marker="o",
                markersize=3,
                color=colours.get(backend, "k"),
                label=label,
            )
            key = (steps["benchmark"] == benchmark) & (steps["params"] == params) & (steps["env"] == env)
            for step in steps[key].itertuples():
                ax.hlines(
                    step.level,
                    step.first_pos - 0.3,
                    step.last_pos + 0.3,
                    colors=colours.get(backend, "k"),
                    linestyles="dashed",
                    linewidth=1,
                    alpha=0.6,
                )
            if not regressions.empty:
                key = (
                    (regressions["benchmark"] == benchmark)
                    & (regressions["params"] == params)
                    & (regressions["env"] == env)
                )
                for found in regressions[key].itertuples():
                    ax.annotate(
                        "",
                        xy=(found.bad_pos, found.value_bad),
                        xytext=(found.good_pos, found.value_good),
                        arrowprops={"arrowstyle": "->", "color": "red", "linewidth": 1.8},
                    )
                    ax.annotate(
                        f"{backend} ×{found.worse_by:.2g}",
                        (found.bad_pos, found.value_bad),
                        color="red",
                        fontsize=8,
                        xytext=(4, 4),
                        textcoords="offset points",
                    )
        ax.set_title(", ".join(f"{n}={v}" for n, v in zip(panel_names, panel)) or benchmark, fontsize=9)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(plain_number))
        low, high = ax.get_ylim()
        labelled = range(1, 10) if high < 10 * low else (2, 5)  # within a decade, every minor tick
        ax.yaxis.set_minor_formatter(
            FuncFormatter(lambda v, _, keep=labelled: plain_number(v) if leading_digit(v) in keep else "")
        )
        ax.set_ylabel(unit)
        ax.set_xticks(x, [c[:8] for c in commits], rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("commit (oldest left)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlim(-0.5, len(commits) - 0.5)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    legend = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
    figure.legend(
        legend.values(),
        legend.keys(),
        loc="outside lower center",
        ncol=min(8, len(legend)) or 1,
        fontsize=8,
        frameon=False,
    )
    figure.suptitle(
        f"{benchmark} ({unit}{', higher is better' if higher_is_better(unit) else ''}); dashed: "
        f"the levels of asv's step detection; red arrow: a regression it reports",
        fontsize=10,
    )
    return save_figure(figure, path)


def build_report(out: Path, meta: dict, frame, steps, regressions, commits, subjects, figures) -> str:
    """``report.md``, and the same as ``report.html`` for a browser: the run header, the commits, the regressions
    asv's step detection finds, the figures. Returns the markdown."""
    import pandas as pd

    title = "Performance over commits (asv)"
    header = report_header(meta, title)
    source = (
        f"- asv results: `{meta['asv']['results_dir']}`, machines {', '.join(meta['asv']['machines'])}, "
        f"environments {', '.join(meta['asv']['environments'])}; {len(frame)} values of "
        f"{frame['benchmark'].nunique()} benchmarks"
    )
    commit_table = pd.DataFrame(
        {
            "": range(len(commits)),
            "commit": [c[:10] for c in commits],
            "date and subject": [subjects.get(c, "")[:100] for c in commits],
        }
    )
    found = None
    if not regressions.empty:
        found = regressions.assign(good=regressions["good"].str[:8], bad=regressions["bad"].str[:8])[
            ["benchmark", "params", "env", "good", "bad", "value_good", "value_bad", "unit", "worse_by", "threshold"]
        ]
    none_found = "None: no series has an upward step beyond its threshold that its latest value keeps."
    levels = steps.groupby(["machine", "env", "benchmark", "params"]).size() if len(steps) else pd.Series()
    stepped = (
        f"{int((levels > 1).sum())} of {len(levels)} series have more than one level (a step); "
        f"`steps.csv` lists every level."
    )

    parts = [
        header,
        source,
        "\n## Commits\n",
        markdown_table(commit_table, index=False),
        "\n## Regressions (asv.step_detect)\n",
        none_found + "\n" if found is None else markdown_table(found, index=False),
        f"\n{stepped}\n",
        "\n## Figures\n",
        *(f"![{name}]({name})\n" for name in figures),
    ]
    text = "\n".join(parts)
    atomic_write_text(out / "report.md", text)

    def table(frame_):
        return frame_.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)

    page = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em 2em} table{border-collapse:collapse;font-size:13px} "
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left} img{max-width:100%;margin:1em 0} "
        "pre{white-space:pre-wrap}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<pre>{escape(header.split(chr(10), 2)[2] + source)}</pre>",
        "<h2>Commits</h2>",
        table(commit_table),
        "<h2>Regressions (asv.step_detect)</h2>",
        f"<p>{escape(none_found)}</p>" if found is None else table(found),
        f"<p>{escape(stepped)}</p>",
        "<h2>Figures</h2>",
        *(f'<h3>{escape(name)}</h3><img src="{escape(name)}" alt="{escape(name)}">' for name in figures),
        "</body></html>",
    ]
    atomic_write_text(out / "report.html", "\n".join(page) + "\n")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{NAME}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("asv.conf.json"), help="asv's configuration")
    parser.add_argument(
        "--machine",
        action="append",
        default=None,
        help="asv machine name (repeatable; default: every machine with results)",
    )
    parser.add_argument("--bench", default=None, help="regular expression: only benchmarks whose name matches")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"report directory (default results/{NAME}/<UTC time>-<git hash>/)"
    )
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file (run from the repository root)")
    if args.bench is not None:
        try:
            re.compile(args.bench)
        except re.error as exc:
            parser.error(f"--bench {args.bench!r} is not a regular expression: {exc}")
    from asv.config import Config

    conf = Config.load(str(args.config))
    repo = args.config.resolve().parent
    conf.results_dir = str(repo / conf.results_dir)  # asv reads it relative to the configuration's folder
    frame = add_gflops(load_results(conf, args.machine, args.bench))
    commits = commit_order(frame, repo)
    steps, regressions = detect(frame, commits, conf)
    rid = run_id()
    out = args.out or RESULTS_ROOT / NAME / rid
    out.mkdir(parents=True, exist_ok=True)
    meta = collect_metadata(
        NAME,
        rid,
        seed=None,
        argv=[f"-m experiments.{NAME}", *(argv or sys.argv[1:])],
        quick=False,
        extra={
            "asv": {
                "config": str(args.config.resolve()),
                "results_dir": str(conf.results_dir),
                "machines": sorted(frame["machine"].unique()),
                "environments": sorted(frame["env"].unique()),
                "commits": commits,
                "regressions_thresholds": conf.regressions_thresholds,
            }
        },
    )
    atomic_write_json(out / "meta.json", meta)
    atomic_write_csv(out / "results.csv", frame)
    atomic_write_csv(out / "steps.csv", steps)
    atomic_write_csv(out / "regressions.csv", regressions)
    figures = []
    for benchmark in sorted(frame["benchmark"].unique()):
        figures.append(draw_benchmark(frame, steps, regressions, commits, benchmark, out / figure_name(benchmark)).name)
    build_report(out, meta, frame, steps, regressions, commits, commit_subjects(commits, repo), figures)
    print(
        f"{NAME}: {len(commits)} commits, {frame['benchmark'].nunique()} benchmarks, {len(regressions)} "
        f"regression(s); report written to {out / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
