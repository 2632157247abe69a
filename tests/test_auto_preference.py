"""``auto``'s class rule (testbed.preference): a data file whose order follows from its own measured medians, the
tool that regenerates it from a speed run, and the module's place in the layers (no cycle with the planner)."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import testbed
from experiments import auto_preference
from experiments.harness.descriptor import parse_descriptor
from testbed import preference

SHIPPED = preference.table_path(preference.MEASURED_ROW)
TABLE = preference.load_preference(SHIPPED.read_text(encoding="utf-8"))


@pytest.mark.parametrize("key", [*preference.CLASSES, preference.DEVICE])
def test_shipped_order_follows_its_medians(key):
    entry = TABLE["classes"][key]
    assert entry["order"] == preference.preference_order(entry["median_ms"], entry["fallback"])
    assert set(entry["order"]) <= set(testbed.list_backends())
    for case, descriptor in entry["descriptors"].items():
        assert case in entry["median_ms"]
        if key != preference.DEVICE:
            assert preference.problem_class(parse_descriptor(descriptor)) == key, case


def test_shipped_table_is_what_auto_uses():
    orders = preference.preference_table().orders
    assert orders == {key: tuple(TABLE["classes"][key]["order"]) for key in (*preference.CLASSES, preference.DEVICE)}
    for key in preference.CLASSES:
        assert orders[key][-1] == "naive"  # supports everything: auto never runs out
    assert {"run_id", "date", "machine", "command"} <= set(TABLE["source"])


def test_preference_order_ranks_by_geometric_mean():
    medians = {"small": {"a": 1.0, "b": 2.0, "c": 1.5, "partial": 0.1},
               "large": {"a": 100.0, "b": 40.0, "c": 90.0}}
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
    cases = {"unet1": "mb1ic1024ih28oc512kh2sh2", "k4s2p1": "mb1ic256ih32oc128kh4sh2ph1",
             "k4s2g8": "g8mb1ic256ih32oc256kh4sh2ph1", "depthwise": "g128mb1ic128ih64oc128kh4sh2ph1"}
    times = {"numba_cpu": 2e-3, "col2im": 1e-3, "auto": 0.5e-3}
    for case, descriptor in cases.items():
        for backend, seconds in times.items():
            rows.append({"case": case, "descriptor": descriptor, "backend": backend, "dtype": "float32",
                         "status": "ok", "median_s": seconds})
        rows.append({"case": case, "descriptor": descriptor, "backend": "polyphase", "dtype": "float32",
                     "status": "error", "median_s": math.nan})
        rows.append({"case": case, "descriptor": descriptor, "backend": "numba_cpu", "dtype": "float64",
                     "status": "ok", "median_s": 1e-6})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    meta = {"run_id": "20270101T000000Z-abc1234", "utc_time": "2027-01-01T00:00:00+00:00",
            "git": {"commit": "abc1234"}, "cpu_model": "Test CPU", "threads": {"cpu_count": 2},
            "command": ["python", "-m", "experiments.speed", "--suite", "unet,decoder"]}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return tmp_path


def test_regenerate_from_a_run(tmp_path):
    out = tmp_path / "auto_preference.json"
    auto_preference.main([str(fake_run(tmp_path)), "--out", str(out)])
    table = preference.load_preference(out.read_text())
    assert table["source"]["run_id"] == "20270101T000000Z-abc1234"
    assert "experiments.speed" in table["source"]["command"] and "Test CPU" in table["source"]["machine"]
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


def test_regenerated_table_drives_auto(tmp_path, monkeypatch):
    out = tmp_path / "auto_preference.json"
    auto_preference.main([str(fake_run(tmp_path)), "--out", str(out)])
    table = preference.load_preference(out.read_text())
    orders = {k: tuple(table["classes"][k]["order"]) for k in (*preference.CLASSES, preference.DEVICE)}
    monkeypatch.setattr(preference, "preference_table",
                        lambda: preference.PreferenceTable(row="avx2", orders=orders, source=table["source"]))
    x, w = np.empty((1, 4, 5, 5)), np.empty((4, 2, 2, 2))
    assert testbed.resolve_backend(x, w, stride=2).name == "col2im"


def test_the_rule_module_imports_neither_the_planner_nor_a_backend():
    """testbed.preference sits below the planner and above the registry: importing it loads neither
    testbed.planner nor testbed.backends.auto, so the two cannot form a cycle through it again. (testbed's
    __init__ imports the planner for the public API, so the probe imports the module without the package's
    __init__.)"""
    probe = ("import importlib.util, sys, types\n"
             "package = types.ModuleType('testbed')\n"
             "package.__path__ = importlib.util.find_spec('testbed').submodule_search_locations\n"
             "sys.modules['testbed'] = package\n"
             "import testbed.preference\n"
             "print(sorted(m for m in sys.modules if m.startswith('testbed.')))\n")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "'testbed.preference'" in loaded
    assert "testbed.planner" not in loaded and "testbed.backends" not in loaded
