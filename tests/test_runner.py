"""The sweep runner: statuses per cell, append-as-you-go rows, interruption and resume, timing statistics,
atomic files. Test-only Backend objects are never registered (the registry stays as the project has it)."""

import json

import numpy as np
import pandas as pd
import pytest

from experiments.harness.runner import (
    ROW_COLUMNS,
    Cell,
    TimingSettings,
    call_backend,
    cell_rng,
    grid,
    run_sweep,
    time_backend,
    time_call,
)
from experiments.harness.storage import RowLog, RowLogWarning, atomic_write_text
from testbed.problem import Problem, UnsupportedConfiguration
from testbed.registry import Backend, get_backend

CASES = {
    f"c{i}": Problem(batch=1, in_channels=2, in_size=3 + i, out_channels=2, kernel_size=2, stride=2) for i in range(4)
}


def naive_run(x, weight, bias, problem):
    return get_backend("naive").run(x, weight, bias, problem)


def _raise(exc):
    def run(x, weight, bias, problem):
        raise exc

    return run


UNAVAILABLE = Backend("t_unavailable", "test: never available", naive_run, probe=lambda: (False, "no such device"))
DECLINES = Backend("t_declines", "test: declines every problem", naive_run, check=lambda p: "test limit")
RAISES_UNSUPPORTED = Backend("t_raises_unsupported", "test", _raise(UnsupportedConfiguration("t", "late refusal")))
BROKEN = Backend("t_broken", "test: raises", _raise(RuntimeError("kernel exploded")))
SIMULATED = Backend(
    "t_simulated",
    "test: simulator",
    naive_run,
    device="cuda",
    probe=lambda: (True, "simulator (NUMBA_ENABLE_CUDASIM=1)"),
)


def output_sum(cell, backend):
    x, weight, bias = cell.problem.random_arrays(cell_rng(0, cell))
    return {"total": float(call_backend(backend, cell.problem, x, weight, bias).sum())}


def test_every_status_is_recorded_and_the_sweep_goes_on(tmp_path):
    backends = ["naive", UNAVAILABLE, DECLINES, RAISES_UNSUPPORTED, BROKEN]
    frame = run_sweep(grid(CASES, backends), output_sum, tmp_path, progress=False)
    assert len(frame) == len(CASES) * len(backends)
    status = frame.groupby("backend")["status"].unique().map(list).to_dict()
    assert status == {
        "naive": ["ok"],
        "t_unavailable": ["unavailable"],
        "t_declines": ["unsupported"],
        "t_raises_unsupported": ["unsupported"],
        "t_broken": ["error"],
    }
    messages = frame.groupby("backend")["message"].first().to_dict()
    assert messages["t_unavailable"] == "no such device"
    assert messages["t_declines"] == "test limit"
    assert messages["t_raises_unsupported"] == "late refusal"
    assert messages["t_broken"] == "RuntimeError: kernel exploded"
    assert frame.loc[frame["backend"] == "naive", "total"].notna().all()
    assert list(frame.columns[: len(ROW_COLUMNS)]) == list(ROW_COLUMNS)
    on_disk = pd.read_csv(tmp_path / "results.csv")
    assert len(on_disk) == len(frame) and set(on_disk["cell_key"]) == set(frame["cell_key"])


class Interrupt(KeyboardInterrupt):
    """Stands for Ctrl-C / a kill: not an Exception, so the runner must not swallow it per cell."""


def test_interrupted_sweep_keeps_its_rows_and_resume_completes_without_duplicates(tmp_path):
    cells = grid(CASES, ["naive", "col2im"], dtypes=(np.float32, np.float64))
    calls = []

    def interrupted_after_five(cell, backend):
        if len(calls) == 5:
            raise Interrupt
        calls.append(cell.key)
        return output_sum(cell, backend)

    with pytest.raises(Interrupt):
        run_sweep(cells, interrupted_after_five, tmp_path, progress=False)
    assert len(RowLog(tmp_path / "rows.jsonl").read()) == 5
    assert len(pd.read_csv(tmp_path / "results.csv")) == 5  # partial table written on the way out

    with pytest.raises(ValueError, match="already holds 5 result rows"):
        run_sweep(cells, output_sum, tmp_path, progress=False)

    resumed = []
    frame = run_sweep(
        cells, lambda c, b: resumed.append(c.key) or output_sum(c, b), tmp_path, resume=True, progress=False
    )
    assert len(resumed) == len(cells) - 5 and not set(resumed) & set(calls)
    assert len(frame) == len(cells) and frame["cell_key"].is_unique
    assert list(frame["cell_key"]) == [c.key for c in cells]  # sweep order, not finishing order
    assert len(RowLog(tmp_path / "rows.jsonl").read()) == len(cells)
    assert frame["status"].eq("ok").all()


def test_a_torn_last_line_from_a_killed_run_is_ignored_and_recomputed(tmp_path):
    cells = grid(CASES, ["naive"])
    run_sweep(cells[:2], output_sum, tmp_path, progress=False)
    with open(tmp_path / "rows.jsonl", "a") as handle:
        handle.write('{"cell_key": "c2|torn')  # killed mid-write
    with pytest.warns(RowLogWarning, match="line 3 is not valid JSON"):
        frame = run_sweep(cells, output_sum, tmp_path, resume=True, progress=False)
    assert len(frame) == len(cells) and frame["cell_key"].is_unique
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    assert len([json.loads(line) for line in lines if line.endswith("}")]) == len(cells)


def test_duplicate_cells_are_refused(tmp_path):
    cell = grid(CASES, ["naive"])[0]
    with pytest.raises(ValueError, match="duplicate cells"):
        run_sweep([cell, cell], output_sum, tmp_path, progress=False)


def test_tags_distinguish_cells_and_become_columns(tmp_path):
    problem = CASES["c0"]
    cells = [Cell("c0", problem, "naive", (("threads", t),)) for t in (1, 2)]
    frame = run_sweep(cells, output_sum, tmp_path, progress=False)
    assert list(frame["threads"]) == [1, 2]


def test_same_inputs_for_every_backend_and_on_resume():
    a, b = grid({"c0": CASES["c0"]}, ["naive", "col2im"])
    assert cell_rng(3, a).integers(1 << 30) == cell_rng(3, b).integers(1 << 30)
    assert cell_rng(3, a).integers(1 << 30) != cell_rng(4, a).integers(1 << 30)


def test_time_call_statistics():
    stats = time_call(lambda: sum(range(1000)), TimingSettings(warmup=1, min_repeats=5, max_repeats=7, budget_s=0.0))
    assert stats["repeats"] == 5
    assert 0 < stats["min_s"] <= stats["median_s"] and stats["iqr_s"] >= 0 and stats["first_call_s"] > 0
    capped = time_call(lambda: None, TimingSettings(warmup=0, min_repeats=1, max_repeats=4, budget_s=10.0))
    assert capped["repeats"] == 4


def test_time_backend_never_times_the_simulator_and_times_cpu_backends():
    problem = CASES["c0"]
    x, weight, bias = problem.random_arrays(0)
    assert time_backend(SIMULATED, problem, x, weight, bias)["status"] == "simulator: not timed"
    stats = time_backend(get_backend("naive"), problem, x, weight, bias, TimingSettings.quick())
    assert stats["timing_method"] == "perf_counter" and stats["median_s"] > 0


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "report.md"
    target.parent.mkdir()
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["report.md"]
