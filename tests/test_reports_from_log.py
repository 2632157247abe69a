"""Reports from ``rows.jsonl``: the table is rebuilt from the log when results.csv is missing or stale, and
lines that are not row objects are skipped with a warning naming them."""

import json
import os

import pandas as pd
import pytest

from experiments import report
from experiments.harness.reporting import load_run
from experiments.harness.runner import grid, run_sweep
from experiments.harness.storage import RowLog, RowLogWarning
from run_helpers import seed_run
from testbed.problem import Problem


def test_report_is_rebuilt_from_rows_when_results_csv_is_missing(tmp_path):
    out = seed_run(tmp_path / "run")
    table = pd.read_csv(out / "results.csv")
    (out / "results.csv").unlink()  # as after a SIGKILL before the first table
    _, frame = load_run(out)
    assert list(frame["cell_key"]) == list(table["cell_key"]) and (frame["status"] == "ok").all()
    report.main([str(out)])
    text = (out / "report.md").read_text()
    assert "(no rows)" not in text and text.count("PASS") == 4
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)  # and results.csv is back


def test_load_run_prefers_the_log_when_results_csv_is_stale(tmp_path):
    out = seed_run(tmp_path / "run")
    table = pd.read_csv(out / "results.csv")
    table.iloc[:2].to_csv(out / "results.csv", index=False)  # a table from before the last rows were logged
    old = (out / "rows.jsonl").stat().st_mtime_ns - 10**9
    os.utime(out / "results.csv", ns=(old, old))
    _, frame = load_run(out)
    assert len(frame) == 4
    # same cells but a newer log (the same mtime on coarse file systems): the log still wins
    table.iloc[:2].to_csv(out / "results.csv", index=False)
    os.utime(out / "rows.jsonl", ns=(old + 2 * 10**9,) * 2)
    assert len(load_run(out)[1]) == 4
    # an up-to-date table is read as it is
    table.assign(extra=1).to_csv(out / "results.csv", index=False)
    os.utime(out / "rows.jsonl", ns=(old, old))
    assert "extra" in load_run(out)[1]


def test_lines_that_are_not_row_objects_are_skipped_with_a_warning_naming_them(tmp_path):
    cells = grid({"c": Problem(1, 1, 3, 1, 2), "d": Problem(1, 1, 4, 1, 2)}, ["naive"])
    first = {"cell_key": cells[0].key, "case": "c", "status": "ok"}
    (tmp_path / "rows.jsonl").write_text("\n".join([json.dumps(first), "5", "[1, 2]", '"text"', "null", "{oops", ""]))
    with pytest.warns(RowLogWarning) as caught:
        rows = RowLog(tmp_path / "rows.jsonl").read()
    assert rows == [first]
    messages = [str(w.message) for w in caught]
    for number, kind in ((2, "int"), (3, "list"), (4, "str"), (5, "NoneType")):
        assert any(f"line {number} is a JSON {kind}, not a row object" in m for m in messages), messages
    assert any("line 6 is not valid JSON" in m for m in messages)
    with pytest.warns(RowLogWarning):
        frame = run_sweep(cells, lambda c, b: {}, tmp_path, resume=True, progress=False)
    assert list(frame["cell_key"]) == [c.key for c in cells]
