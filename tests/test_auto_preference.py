"""``auto``'s preference table: a data file whose order follows from its own measured medians, and the tool that
regenerates it from a speed run."""

import json
import math

import numpy as np
import pandas as pd
import pytest

import testbed
from experiments import auto_preference
from experiments.harness.descriptor import parse_descriptor
from testbed.backends import auto

TABLE = auto.load_preference()


@pytest.mark.parametrize("key", [*auto.CLASSES, auto.DEVICE])
def test_shipped_order_follows_its_medians(key):
    entry = TABLE["classes"][key]
    assert entry["order"] == auto.preference_order(entry["median_ms"], entry["fallback"])
    assert set(entry["order"]) <= set(testbed.list_backends())
    for case, descriptor in entry["descriptors"].items():
        assert case in entry["median_ms"]
        if key != auto.DEVICE:
            assert auto.problem_class(parse_descriptor(descriptor)) == key, case


def test_shipped_table_is_what_auto_uses():
    assert auto.PREFERENCE == {key: tuple(TABLE["classes"][key]["order"]) for key in auto.CLASSES}
    assert auto.DEVICE_PREFERENCE == tuple(TABLE["classes"][auto.DEVICE]["order"])
    for key in auto.CLASSES:
        assert auto.PREFERENCE[key][-1] == "naive"  # supports everything: auto never runs out
    assert {"run_id", "date", "machine", "command"} <= set(TABLE["source"])


def test_preference_order_ranks_by_geometric_mean():
    medians = {"small": {"a": 1.0, "b": 2.0, "c": 1.5, "partial": 0.1},
               "large": {"a": 100.0, "b": 40.0, "c": 90.0}}
    # geometric means: a 10, b 8.9, c 11.6; "partial" misses a shape and falls back
    assert auto.preference_order(medians, ["naive", "partial", "b"]) == ["b", "a", "c", "naive", "partial"]
    assert auto.preference_order({}, ["x", "y"]) == ["x", "y"]


def test_load_preference_rejects_a_missing_class():
    broken = {"classes": {key: {"order": ["naive"]} for key in auto.CLASSES}}
    with pytest.raises(ValueError, match="class 'device' needs a non-empty 'order'"):
        auto.load_preference(json.dumps(broken))


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
    table = auto.load_preference(out.read_text())
    assert table["source"]["run_id"] == "20270101T000000Z-abc1234"
    assert "experiments.speed" in table["source"]["command"] and "Test CPU" in table["source"]["machine"]
    for key in auto.CLASSES:
        entry = table["classes"][key]
        # float32 ok rows only; the dispatcher is never a candidate; col2im (1 ms) before numba_cpu (2 ms)
        assert entry["order"] == ["col2im", "numba_cpu", "naive"]
        assert all(set(times) == {"col2im", "numba_cpu"} for times in entry["median_ms"].values())
    assert table["classes"]["nonoverlapping"]["median_ms"] == {"unet1": {"numba_cpu": 2.0, "col2im": 1.0}}
    # no GPU rows: the device list is carried over from the current file
    assert table["classes"][auto.DEVICE] == TABLE["classes"][auto.DEVICE]
    # one line per shape: the file stays reviewable
    assert '"unet1": { "numba_cpu": 2.0, "col2im": 1.0 }' in out.read_text()


def test_regenerated_table_drives_auto(tmp_path, monkeypatch):
    out = tmp_path / "auto_preference.json"
    auto_preference.main([str(fake_run(tmp_path)), "--out", str(out)])
    table = auto.load_preference(out.read_text())
    monkeypatch.setattr(auto, "PREFERENCE", {k: tuple(table["classes"][k]["order"]) for k in auto.CLASSES})
    x, w = np.empty((1, 4, 5, 5)), np.empty((4, 2, 2, 2))
    assert testbed.resolve_backend(x, w, stride=2).name == "col2im"
