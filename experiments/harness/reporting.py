"""Report building blocks shared by the experiments: markdown tables, the run header, and the common figures
(heatmap, grouped bars, roofline, log-log scaling). Figures are plain :class:`matplotlib.figure.Figure` objects
(no pyplot, so no global matplotlib state changes), saved atomically with
:func:`experiments.harness.storage.save_figure`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .storage import atomic_write_text, save_figure

__all__ = [
    "markdown_table",
    "report_header",
    "status_table",
    "spans_hosts",
    "hosts_lines",
    "load_run",
    "heatmap_figure",
    "grouped_bar_figure",
    "roofline_figure",
    "loglog_figure",
    "fit_loglog_slope",
    "new_figure",
]


def new_figure(*args, figsize=None, **kwargs):
    """``(figure, axes)``: a :class:`matplotlib.figure.Figure` of ``figsize`` and ``figure.subplots(*args,
    **kwargs)``. The figure is not registered with pyplot, which is never imported, so a caller's pyplot
    backend and figure list are left alone; :func:`~experiments.harness.storage.save_figure` renders it with
    Agg."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*args, **kwargs)


def markdown_table(frame, floatfmt: str = ".4g", index: bool = True) -> str:
    """A pandas DataFrame as a GitHub markdown table (``DataFrame.to_markdown``, which needs ``tabulate``)."""
    if frame is None or len(frame) == 0:
        return "_(no rows)_\n"
    try:
        return frame.to_markdown(floatfmt=floatfmt, index=index) + "\n"
    except ImportError:  # tabulate missing: a fixed-width table still reads fine in markdown
        return "```\n" + frame.to_string(index=index) + "\n```\n"


def load_run(run_dir):
    """``(meta dict, results DataFrame)`` of a saved run directory: results.csv, or the table rebuilt from
    rows.jsonl when results.csv is missing or stale (:func:`~.runner.results_from_log`; a run killed before it
    rewrote the table)."""
    import pandas as pd

    from .runner import results_from_log

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    frame = results_from_log(run_dir)
    if frame is None:
        results = run_dir / "results.csv"
        frame = (
            pd.read_csv(results, keep_default_na=True)
            if results.exists() and results.stat().st_size
            else pd.DataFrame()
        )
    return meta, frame


def truthy(values):
    """Booleans read back from a results.csv (``True``, ``"True"``, ``"true"``; ``False``, empty and NaN are
    false): a column gives a bool array, one value a bool."""
    result = np.char.lower(np.asarray(values, dtype=str)) == "true"
    return bool(result) if result.ndim == 0 else result


def report_header(meta: dict, title: str) -> str:
    git = meta.get("git", {})
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    threads = meta.get("threads", {})
    device = meta.get("device", {})
    gpu = device.get("gpu") or ("CUDA simulator" if device.get("cuda_simulator") else "none")
    lines = [
        f"# {title}",
        "",
        f"- run: `{meta.get('run_id')}` at {meta.get('utc_time')}, commit `{git.get('commit')}`{dirty}",
        f"- machine: {meta.get('cpu_model')}, {threads.get('cpu_count')} cores, numba threads "
        f"{threads.get('numba_threads')}, torch threads {threads.get('torch_threads')}, GPU: {gpu}; load "
        f"average at start {threads.get('load_average_1_5_15min')} (1/5/15 min; above the core count, "
        f"other processes compete and timings are noisy)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items() if v),
        f"- command: `{' '.join(str(a) for a in meta.get('command', []))}`"
        + (" (quick mode)" if meta.get("quick") else ""),
        f"- seed: {meta.get('seed')}",
    ]
    for resumed in meta.get("resumed", []):
        lines.append(f"- resumed at {resumed.get('utc_time')} UTC by `{' '.join(resumed.get('command', []))}`")
    if meta.get("hosts"):
        lines.append(hosts_lines(meta))
    return "\n".join(lines) + "\n"


def hosts_lines(meta: dict) -> str:
    """Where a run on Dask ran (meta.json's ``hosts`` and ``dask``): per host its CPU, cores, versions, GPU and
    workers with their resources; the warnings of the sessions. (The machine line above is the client's.)"""
    sessions = meta.get("dask", [])
    lines = [
        "- executor: Dask, scheduler "
        + ", ".join(sorted({str(s.get("scheduler")) for s in sessions}))
        + "; the cells ran on these hosts (the machine above is the client's):"
    ]
    for name, host in meta["hosts"].items():
        versions = host.get("versions", {})
        workers = host.get("workers", {})
        resources = [
            ",".join(f"{k}={v:g}" for k, v in w.get("resources", {}).items()) or "none" for w in workers.values()
        ]
        lines.append(
            f"  - `{name}`: {host.get('cpu_model')}, {host.get('threads', {}).get('cpu_count')} cores, "
            f"GPU {host.get('device', {}).get('gpu') or 'none'}, load {host.get('load_average_before')}; "
            + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
            + f", commit `{host.get('git', {}).get('short')}`; {len(workers)} worker(s), resources "
            + "; ".join(resources)
        )
    warnings = [w for s in sessions for w in s.get("warnings", [])]
    if meta.get("timing_overlaps"):
        warnings.append(
            f"{len(meta['timing_overlaps'])} pair(s) of timing cells overlapped on a host (meta.json, timing_overlaps)"
        )
    lines += [f"  - warning: {w}" for w in warnings]
    return "\n".join(lines)


def spans_hosts(frame) -> bool:
    """Whether the rows come from more than one host (a Dask run's ``host`` column)."""
    return "host" in frame and frame["host"].dropna().nunique() > 1


def status_table(frame) -> str:
    """Counts of each status per backend, plus the distinct non-ok messages (unsupported/unavailable/error)."""
    import pandas as pd

    if frame.empty:
        return "_(no rows)_\n"
    counts = pd.crosstab(frame["backend"], frame["status"])
    text = markdown_table(counts)
    notes = frame[frame["status"] != "ok"][["backend", "status", "message"]].fillna("")
    notes = notes.drop_duplicates().copy()
    if len(notes):
        notes["message"] = notes["message"].astype(str).str.slice(0, 160)
        text += "\nNot-ok cells (distinct reasons):\n\n" + markdown_table(notes, index=False)
    return text


def finish_report(run_dir, parts, frame, cell_columns=None) -> str:
    """Finish a run's ``report.md`` atomically: ``parts``, the status per backend, and (with ``cell_columns``)
    a table of every cell. Returns the text."""
    parts = [*parts, "\n## Status per backend\n", status_table(frame)]
    if spans_hosts(frame):
        import pandas as pd

        parts += ["\n## Cells per host\n", markdown_table(pd.crosstab(frame["host"], frame["status"]))]
    if cell_columns is not None and len(frame):
        columns = [*(c for c in cell_columns if c in frame), *(["host"] if spans_hosts(frame) else [])]
        parts += ["\n## All cells\n", markdown_table(frame[columns], index=False)]
    text = "\n".join(parts)
    atomic_write_text(Path(run_dir) / "report.md", text)
    return text


def heatmap_figure(
    matrix, title: str, colorbar_label: str, path, *, annotate_fmt: str = "{:.1f}", vmin=None, vmax=None, cmap="viridis"
):
    """A labelled heatmap of a DataFrame (rows × columns); NaN cells are drawn grey and marked '–'."""
    rows, cols = list(matrix.index), list(matrix.columns)
    values = matrix.to_numpy(dtype=float)
    fig, ax = new_figure(figsize=(1.0 + 0.75 * len(cols), 1.2 + 0.4 * len(rows)))
    masked = np.ma.masked_invalid(values)
    import matplotlib

    colormap = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")
    image = ax.imshow(masked, aspect="auto", cmap=colormap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = "–" if not np.isfinite(values[i, j]) else annotate_fmt.format(values[i, j])
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white"
                if np.isfinite(values[i, j]) and vmin is not None and values[i, j] < (vmin + (vmax - vmin) * 0.5)
                else "black",
            )
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return save_figure(fig, path)


def grouped_bar_figure(table, title: str, ylabel: str, path, *, log: bool = True):
    """Grouped bars: one group per row of ``table`` (cases), one bar per column (backends); NaN bars omitted."""
    cases, series = list(table.index), list(table.columns)
    width = 0.8 / max(len(series), 1)
    fig, ax = new_figure(figsize=(max(6.0, 1.2 * len(cases) + 2), 4.2))
    x = np.arange(len(cases))
    for i, name in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, table[name].to_numpy(dtype=float), width, label=name)
    ax.set_xticks(x, cases, rotation=20 if len(cases) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("case")
    if log:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=8, title="backend", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def roofline_figure(points, peak_gflops: float, bandwidth_gbps: float, title: str, path):
    """Roofline (Williams, Waterman & Patterson 2009): GFLOP/s against arithmetic intensity (FLOP/byte) of
    each (backend, case) point, under ``min(peak, bandwidth × intensity)``. ``points``: DataFrame with columns
    backend, case, intensity, gflops."""
    fig, ax = new_figure(figsize=(7.5, 5))
    finite = points[np.isfinite(points["gflops"]) & (points["gflops"] > 0)]
    lo = max(min(finite["intensity"].min() if len(finite) else 0.1, 0.1) / 2, 1e-3)
    hi = max(finite["intensity"].max() if len(finite) else 100, peak_gflops / bandwidth_gbps) * 2
    intensity = np.geomspace(lo, hi, 200)
    ax.plot(
        intensity,
        np.minimum(peak_gflops, bandwidth_gbps * intensity),
        color="black",
        lw=1.5,
        label=f"ceiling: {peak_gflops:.0f} GFLOP/s GEMM, {bandwidth_gbps:.1f} GB/s copy",
    )
    markers = "osD^v<>ph*"
    for i, (name, group) in enumerate(finite.groupby("backend", sort=False)):
        ax.scatter(group["intensity"], group["gflops"], marker=markers[i % len(markers)], label=name, s=28)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of input + weight + output)")
    ax.set_ylabel("achieved GFLOP/s (useful work)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def fit_loglog_slope(x, y) -> float:
    """Least-squares slope of log(y) against log(x) (the exponent of a power law), NaN if < 2 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def loglog_figure(frame, x: str, y: str, title: str, xlabel: str, ylabel: str, path, *, series="backend"):
    """One line per ``series`` value of ``y`` against ``x`` on log-log axes, slope in the legend."""
    fig, ax = new_figure(figsize=(7, 4.5))
    for name, group in frame.groupby(series, sort=False):
        group = group.sort_values(x)
        slope = fit_loglog_slope(group[x], group[y])
        ax.plot(group[x], group[y], marker="o", label=f"{name} (slope {slope:.2f})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)
