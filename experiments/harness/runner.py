"""The resumable sweep runner shared by the experiments: a grid of cases × backends × dtypes, one tidy row each.

Each cell's row (descriptor, every problem parameter as a column, status, the experiment's metrics) is
appended to ``rows.jsonl`` as soon as the cell finishes (flushed and fsynced), so an interrupted sweep keeps
its finished rows, and ``resume=True`` skips every cell already on disk. At the end (and on interruption)
``results.csv`` is rewritten atomically from the log, one row per cell.

The cell itself (``Cell``, ``grid``, ``cell_rng``, ``call_backend``, ``run_cell``, the statuses and the
leading columns) lives in :mod:`~.cells` and is re-exported here.

Timing (``TimingSettings``, ``time_call``, ``time_backend``, re-exported here) lives in :mod:`testbed.timing`,
the one place that owns how a time is taken (isolation, allocation, statistics).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from testbed.registry import Backend
from testbed.timing import TimingSettings, time_backend, time_call

from .cells import ROW_COLUMNS, STATUSES, Cell, call_backend, cell_rng, grid, run_cell
from .storage import (
    ResultsNotWritten,
    RowLog,
    atomic_write_csv,
    holds_run_lock,
    lock_run_directory,
    unlock_run_directory,
    writing,
)

__all__ = [
    "Cell",
    "grid",
    "run_sweep",
    "run_cell",
    "TimingSettings",
    "time_backend",
    "time_call",
    "call_backend",
    "cell_rng",
    "ROW_COLUMNS",
    "STATUSES",
]


def run_sweep(
    cells: list[Cell],
    measure: Callable[[Cell, Backend], dict],
    out_dir,
    *,
    resume: bool = False,
    progress: bool = True,
    desc: str = "sweep",
    finalize: Callable | None = None,
    executor=None,
    timed: bool = False,
):
    """Run every cell not yet on disk, appending each row to ``out_dir/rows.jsonl``; return the results table.

    ``executor`` runs the cells: :class:`~.executors.LocalExecutor` (the default: in this process, in order)
    or :class:`~.executors.DaskExecutor` (as tasks of a Dask cluster; ``measure`` must then be picklable and
    importable on the workers). ``timed``: the cells are timings, which an executor never runs two at a time
    on one host. Rows are appended by this process alone, as cells finish.

    Without ``resume`` the directory must not hold rows already (ValueError), so a finished run is never
    silently overwritten. ``finalize(frame) -> frame`` may add derived columns (e.g. speedups) before
    ``results.csv`` is written. Returns the pandas DataFrame written to ``out_dir/results.csv``.

    The directory is created if need be and locked for the sweep (:func:`~.storage.lock_run_directory`;
    :class:`~.storage.RunLocked` if another process holds it). A lock this process already held (taken by
    ``start_run``) is kept for the rest of the run unless the sweep fails; then it is released too.
    """
    out_dir = Path(out_dir)
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    locked_before = holds_run_lock(out_dir)
    lock_run_directory(out_dir)
    try:
        frame = _sweep(cells, measure, out_dir, resume, progress, desc, finalize, executor, timed)
    except BaseException:
        unlock_run_directory(out_dir)
        raise
    if not locked_before:
        unlock_run_directory(out_dir)
    return frame


def _sweep(cells, measure, out_dir: Path, resume: bool, progress: bool, desc: str, finalize, executor, timed):
    from tqdm.auto import tqdm

    from .executors import LocalExecutor

    executor = executor or LocalExecutor()

    log = RowLog(out_dir / "rows.jsonl")
    previous = log.read()
    if previous and not resume:
        raise ValueError(
            f"{out_dir} already holds {len(previous)} result rows; pass resume=True (--resume) to "
            f"complete that run, or choose another output directory"
        )
    keys = [cell.key for cell in cells]
    if len(set(keys)) != len(keys):
        raise ValueError("the sweep has duplicate cells (same case, problem, backend, dtype and tags)")
    done = {row.get("cell_key") for row in previous}
    todo = [cell for cell in cells if cell.key not in done]

    def write_table():
        frame = results_frame(log.read(), keys)
        if finalize is not None and len(frame):
            frame = finalize(frame)
        atomic_write_csv(out_dir / "results.csv", frame)
        return frame

    try:
        with tqdm(
            total=len(cells),
            initial=len(cells) - len(todo),
            desc=desc,
            unit="cell",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        ) as bar:
            if todo:
                executor.run(todo, measure, log.append, timed=timed, run_dir=out_dir, bar=bar)
    except BaseException:
        try:
            write_table()  # the table of the rows finished so far
        except ResultsNotWritten:
            pass  # the disk is full or gone as well: the first error is the one to report
        raise
    return write_table()


def results_frame(rows: list[dict], order: list[str] | None = None):
    """The rows as a DataFrame, one per cell (the last logged row wins), in sweep order, standard columns
    first."""
    import pandas as pd

    latest = {row["cell_key"]: row for row in rows if "cell_key" in row}
    if order is not None:
        rank = {key: i for i, key in enumerate(order)}
        keys = sorted(latest, key=lambda k: (rank.get(k, len(rank)), k))
    else:
        keys = list(latest)
    frame = pd.DataFrame([latest[k] for k in keys])
    if frame.empty:
        return pd.DataFrame(columns=list(ROW_COLUMNS))
    standard = [c for c in ROW_COLUMNS if c in frame]
    return frame[standard + [c for c in frame.columns if c not in ROW_COLUMNS]]


def results_from_log(run_dir):
    """The results table rebuilt from ``run_dir/rows.jsonl`` (log order, the last row of a cell wins) when
    ``results.csv`` is missing, empty or stale: older than the log, or holding other cells (a run killed
    before it rewrote the table). None when results.csv is up to date or the log holds no rows. Columns a
    sweep's ``finalize`` derives are not in the log."""
    import pandas as pd

    run_dir = Path(run_dir)
    table, log = run_dir / "results.csv", RowLog(run_dir / "rows.jsonl")
    logged = results_frame(log.read()) if log.path.exists() else None
    if logged is None or not len(logged):
        return None
    if table.exists() and table.stat().st_size and log.path.stat().st_mtime_ns <= table.stat().st_mtime_ns:
        try:
            tabled = pd.read_csv(table, usecols=["cell_key"])["cell_key"]
        except ValueError:  # no cell_key column: not a table this runner wrote
            tabled = ()
        if set(tabled) == set(logged["cell_key"]):
            return None
    return logged
