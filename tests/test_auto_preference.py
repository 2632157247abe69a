"""``auto``'s class rule (testbed.preference): one table per ISA row, each a data file whose order follows from its
own measured medians; the fallback to the nearest measured row; the tools that regenerate the table of this host's
row (and no other); and the module's place in the layers (no cycle with the planner)."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import testbed
from experiments import auto_preference
from experiments.harness.descriptor import parse_descriptor
from testbed import isa, preference
from testbed.machine import cpu_model

SHIPPED = {
    row: preference.load_preference(preference.table_path(row).read_text(encoding="utf-8"), row=row)
    for row in preference.measured_rows()
}
#: The table measured on the AVX2 host (AMD EPYC, Zen 3); the fallback of the other rows while they have none.
TABLE = SHIPPED["avx2"]


@pytest.fixture
def tables(tmp_path, monkeypatch):
    """A tables folder of its own holding only the avx2 table; ``preference`` reads and writes there."""
    folder = tmp_path / "preference_tables"
    folder.mkdir()
    shutil.copy(preference.table_path("avx2"), folder / "avx2.json")
    monkeypatch.setattr(preference, "tables_folder", lambda: folder)
    preference._table_for.cache_clear()
    yield folder
    preference._table_for.cache_clear()


def as_row(monkeypatch, row, host=None):
    """Make this process run ISA row ``row`` on a host whose CPU has row ``host`` (default ``row``), as far as the
    tables are concerned."""
    monkeypatch.setattr(isa, "selected_isa", lambda: row)
    monkeypatch.setattr(isa, "host_isa", lambda: host or row)


@pytest.mark.parametrize("row", sorted(SHIPPED))
@pytest.mark.parametrize("key", [*preference.CLASSES, preference.DEVICE])
def test_shipped_order_follows_its_medians(key, row):
    entry = SHIPPED[row]["classes"][key]
    assert entry["order"] == preference.preference_order(entry["median_ms"], entry["fallback"])
    assert set(entry["order"]) <= set(testbed.list_backends())
    for case, descriptor in entry["descriptors"].items():
        assert case in entry["median_ms"]
        if key != preference.DEVICE:
            assert preference.problem_class(parse_descriptor(descriptor)) == key, case


@pytest.mark.parametrize("row", sorted(SHIPPED))
def test_shipped_table_is_what_auto_uses(row):
    table = preference.preference_table(row)
    assert table.measured_row == row and not table.fallback
    assert table.orders == {
        key: tuple(SHIPPED[row]["classes"][key]["order"]) for key in (*preference.CLASSES, preference.DEVICE)
    }
    for key in preference.CLASSES:
        assert table.orders[key][-1] == "naive"  # supports everything: auto never runs out
    assert {"isa_row", "run_id", "date", "machine", "command"} <= set(SHIPPED[row]["source"])


def test_the_avx2_table_comes_from_an_avx2_host():
    assert "AMD EPYC" in TABLE["source"]["machine"] and TABLE["source"]["isa_row"] == "avx2"


def test_this_hosts_row_answers(monkeypatch):
    as_row(monkeypatch, "avx2")
    table = preference.preference_table()
    assert (table.row, table.measured_row, table.fallback) == ("avx2", "avx2", False)
    assert "fallback" not in table.describe() and "avx2.json" in table.describe()


@pytest.mark.parametrize("row", ["avx512", "generic"])
def test_an_unmeasured_row_falls_back_to_avx2(tables, monkeypatch, row):
    as_row(monkeypatch, row)
    table = preference.preference_table()
    assert (table.row, table.measured_row, table.fallback) == (row, "avx2", True)
    assert table.orders == preference.preference_table("avx2").orders
    assert f"this process runs the {row!r} row, which has no measured table" in table.describe()
    problem = testbed.Problem.from_shapes((1, 4, 5, 5), (4, 2, 2, 2), stride=2)
    assert testbed.resolve_backend(np.empty((1, 4, 5, 5)), np.empty((4, 2, 2, 2)), stride=2) is table.choose(problem)


def test_a_measured_row_answers_for_itself_and_the_nearest_is_next(tables, monkeypatch):
    avx512 = json.loads((tables / "avx2.json").read_text())
    avx512["source"]["isa_row"] = "avx512"
    avx512["classes"]["general"]["order"] = ["col2im", "naive"]
    (tables / "avx512.json").write_text(json.dumps(avx512))
    assert preference.measured_rows() == ("avx2", "avx512")
    as_row(monkeypatch, "avx512")
    table = preference.preference_table()
    assert not table.fallback and table.orders["general"] == ("col2im", "naive")
    (tables / "avx2.json").unlink()
    preference._table_for.cache_clear()
    table = preference.preference_table("generic")  # generic → avx2 (gone) → avx512
    assert (table.measured_row, table.fallback) == ("avx512", True)
    (tables / "avx512.json").unlink()
    preference._table_for.cache_clear()
    with pytest.raises(FileNotFoundError, match="no preference table for ISA row 'generic'"):
        preference.preference_table("generic")


def test_a_table_names_its_row():
    with pytest.raises(ValueError, match=r"row: expected one of generic, avx2, avx512, got 'sse2'"):
        preference.preference_table("sse2")
    with pytest.raises(ValueError, match=r"avx512\.json: source\.isa_row must be 'avx512'.*got 'avx2'"):
        preference.load_preference(json.dumps(TABLE), "avx512.json", "avx512")


def test_preference_order_ranks_by_geometric_mean():
    medians = {"small": {"a": 1.0, "b": 2.0, "c": 1.5, "partial": 0.1}, "large": {"a": 100.0, "b": 40.0, "c": 90.0}}
    # geometric means: a 10, b 8.9, c 11.6; "partial" misses a shape and falls back
    assert preference.preference_order(medians, ["naive", "partial", "b"]) == ["b", "a", "c", "naive", "partial"]
    assert preference.preference_order({}, ["x", "y"]) == ["x", "y"]


def test_load_preference_rejects_a_missing_class():
    broken = {"classes": {key: {"order": ["naive"]} for key in preference.CLASSES}}
    with pytest.raises(ValueError, match=r"broken\.json: class 'device' needs a non-empty 'order'"):
        preference.load_preference(json.dumps(broken), "broken.json")


def fake_run(tmp_path):
    """A speed run directory: every CPU class measured, float32, naive slowest, one error row."""
    rows = []
    cases = {
        "unet1": "mb1ic1024ih28oc512kh2sh2",
        "k4s2p1": "mb1ic256ih32oc128kh4sh2ph1",
        "k3s1p1": "mb1ic64ih64oc64kh3ph1",
        "k4s2g8": "g8mb1ic256ih32oc256kh4sh2ph1",
        "depthwise": "g128mb1ic128ih64oc128kh4sh2ph1",
    }
    times = {"numba_cpu": 2e-3, "col2im": 1e-3, "auto": 0.5e-3}
    for case, descriptor in cases.items():
        for backend, seconds in times.items():
            rows.append(
                {
                    "case": case,
                    "descriptor": descriptor,
                    "backend": backend,
                    "dtype": "float32",
                    "status": "ok",
                    "median_s": seconds,
                }
            )
        rows.append(
            {
                "case": case,
                "descriptor": descriptor,
                "backend": "polyphase",
                "dtype": "float32",
                "status": "error",
                "median_s": math.nan,
            }
        )
        rows.append(
            {
                "case": case,
                "descriptor": descriptor,
                "backend": "numba_cpu",
                "dtype": "float64",
                "status": "ok",
                "median_s": 1e-6,
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    meta = {
        "run_id": "20270101T000000Z-abc1234",
        "utc_time": "2027-01-01T00:00:00+00:00",
        "git": {"commit": "abc1234"},
        "cpu_model": cpu_model(),
        "threads": {"cpu_count": 2},
        "command": ["python", "-m", "experiments.speed", "--suite", "unet,decoder"],
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return tmp_path


def test_regenerate_from_a_run(tmp_path):
    out = tmp_path / "auto_preference.json"
    auto_preference.main([str(fake_run(tmp_path)), "--out", str(out)])
    table = preference.load_preference(out.read_text())
    assert table["source"]["run_id"] == "20270101T000000Z-abc1234"
    assert "experiments.speed" in table["source"]["command"] and cpu_model() in table["source"]["machine"]
    assert table["source"]["isa_row"] == isa.selected_isa()
    for key in preference.CLASSES:
        entry = table["classes"][key]
        # float32 ok rows only; the dispatcher is never a candidate; col2im (1 ms) before numba_cpu (2 ms)
        assert entry["order"] == ["col2im", "numba_cpu", "naive"]
        assert all(set(times) == {"col2im", "numba_cpu"} for times in entry["median_ms"].values())
    assert table["classes"]["nonoverlapping"]["median_ms"] == {"unet1": {"numba_cpu": 2.0, "col2im": 1.0}}
    # no GPU rows: the device list is carried over from the current file
    assert table["classes"][preference.DEVICE] == TABLE["classes"][preference.DEVICE]
    # one line per shape: the file stays reviewable
    assert '"unet1": { "numba_cpu": 2.0, "col2im": 1.0 }' in out.read_text()


def test_regenerated_table_drives_auto(tmp_path, tables, monkeypatch):
    """By default the table of this host's row is rewritten, and only that one: here the generic row's, which had
    none (the avx2 table answered for it) and now answers for itself."""
    as_row(monkeypatch, "generic")
    x, w = np.empty((1, 4, 5, 5)), np.empty((4, 2, 2, 2))
    assert testbed.resolve_backend(x, w, stride=2).name == TABLE["classes"]["nonoverlapping"]["order"][0]
    before = (tables / "avx2.json").read_text()
    written = auto_preference.main([str(fake_run(tmp_path))])
    assert written == (tables / "generic.json").resolve() and (tables / "avx2.json").read_text() == before
    preference._table_for.cache_clear()
    assert preference.preference_table().measured_row == "generic"
    assert testbed.resolve_backend(x, w, stride=2).name == "col2im"


def test_regenerating_refuses_another_rows_table_and_another_hosts_run(tmp_path, tables, monkeypatch):
    as_row(monkeypatch, "generic")
    with pytest.raises(SystemExit):
        auto_preference.main([str(fake_run(tmp_path)), "--out", str(tables / "avx2.json")])
    with pytest.raises(ValueError, match="this host runs the 'generic' ISA row"):
        auto_preference.table_destination(tables / "other.json")
    assert auto_preference.table_destination(tmp_path / "review.json") == tmp_path / "review.json"
    as_row(monkeypatch, "avx2", host="avx512")  # TESTBED_ISA=avx2 on an AVX-512 host
    with pytest.raises(ValueError, match="TESTBED_ISA='avx2' caps this 'avx512' host"):
        auto_preference.table_destination()
    assert auto_preference.table_destination(tmp_path / "review.json") == tmp_path / "review.json"
    as_row(monkeypatch, "generic")
    meta = json.loads((fake_run(tmp_path) / "meta.json").read_text())
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "cpu_model": "Another CPU"}))
    with pytest.raises(SystemExit):
        auto_preference.main([str(tmp_path), "--out", str(tmp_path / "review.json")])
    assert sorted(p.name for p in tables.iterdir()) == ["avx2.json"]


def test_the_rule_module_imports_neither_the_planner_nor_a_backend():
    """testbed.preference sits below the planner and above the registry: importing it loads neither
    testbed.planner nor testbed.backends.auto, so the two cannot form a cycle through it again. (testbed's
    __init__ imports the planner for the public API, so the probe imports the module without the package's
    __init__.)"""
    probe = (
        "import importlib.util, sys, types\n"
        "package = types.ModuleType('testbed')\n"
        "package.__path__ = importlib.util.find_spec('testbed').submodule_search_locations\n"
        "sys.modules['testbed'] = package\n"
        "import testbed.preference\n"
        "print(sorted(m for m in sys.modules if m.startswith('testbed.')))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "'testbed.preference'" in loaded
    assert "testbed.planner" not in loaded and "testbed.backends" not in loaded


def test_tune_writes_only_the_table_of_this_hosts_row(tmp_path, tables, monkeypatch):
    """``experiments.tune --write-table`` rewrites the table of the row this host runs (here avx512, which had
    none), stamped with that row; the avx2 table is left as it was, and naming it is refused."""
    from experiments import tune

    as_row(monkeypatch, "avx512")
    before = (tables / "avx2.json").read_text()
    args = ["--quick", "--no-progress", "--isolation", "inline", "--backends", "col2im,kron", "--no-store"]
    with pytest.raises(SystemExit):
        tune.main([*args, "--out", str(tmp_path / "refused"), "--write-table", str(tables / "avx2.json")])
    assert not (tmp_path / "refused").exists()
    tune.main([*args, "--out", str(tmp_path / "run"), "--write-table"])
    assert sorted(p.name for p in tables.iterdir()) == ["avx2.json", "avx512.json"]
    assert (tables / "avx2.json").read_text() == before
    written = preference.load_preference((tables / "avx512.json").read_text(), row="avx512")
    assert written["source"]["host_isa"] == isa.host_isa()
    assert written["classes"]["nonoverlapping"]["order"][-1] == "naive"
    preference._table_for.cache_clear()
    assert not preference.preference_table().fallback
