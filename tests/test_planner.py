"""testbed.planner and testbed.wisdom: planner modes, tune, wisdom storage, explain, and auto's hook.

Every test runs against its own wisdom file (``TESTBED_WISDOM`` in a temporary directory). ``tune`` is checked
on fake backends with known costs (tests/planner_fakes.py, never registered); no real speed is asserted.
"""

import contextvars
import json
import multiprocessing
import threading
import warnings
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import planner_fakes as fakes
import testbed
from testbed import machine, planner, preference, wisdom
from testbed.problem import Problem
from testbed.timing import TimingSettings

DEVICE_ROW = preference.preference_table().orders[preference.DEVICE]
FEW = TimingSettings(warmup=0, min_repeats=3, max_repeats=3, budget_s=0.0, min_sample_s=0.0)
#: A U-Net-like up-convolution (class nonoverlapping) and a decoder one (class general), small.
UP = {"x": np.zeros((1, 8, 6, 6), np.float32), "w": np.zeros((8, 4, 2, 2), np.float32), "kwargs": {"stride": 2}}
DEC = {
    "x": np.zeros((1, 4, 5, 5), np.float32),
    "w": np.zeros((4, 3, 3, 3), np.float32),
    "kwargs": {"stride": 2, "padding": 1, "output_padding": 1},
}


def problem_of(case) -> Problem:
    return planner._call_problem(
        case["x"],
        case["w"],
        None,
        groups=1,
        dilation=1,
        output_size=None,
        **{"stride": 1, "padding": 0, "output_padding": 0, **case["kwargs"]},
    )[0]


#: Every test against its own wisdom file (the ``wisdom_file`` fixture of tests/conftest.py).
pytestmark = pytest.mark.usefixtures("wisdom_file")


# ---- planner modes ---------------------------------------------------------------------------------------------


def test_planner_mode_default_env_and_context_manager(monkeypatch):
    assert testbed.get_planner().mode == "estimate"
    monkeypatch.setenv("TESTBED_PLANNER", "measure")
    assert testbed.get_planner().mode == "measure"
    with testbed.set_planner("estimate") as config:
        assert config.mode == "estimate" and testbed.get_planner() is config
        with testbed.set_planner("measure", isolation="inline"):
            assert testbed.get_planner().isolation == "inline"
        assert testbed.get_planner() is config
    assert testbed.get_planner().mode == "measure"  # the environment again

    def plain_call():  # a plain call sets the mode for its context
        testbed.set_planner("estimate")
        return testbed.get_planner().mode

    assert contextvars.copy_context().run(plain_call) == "estimate"
    assert testbed.get_planner().mode == "measure"

    monkeypatch.setenv("TESTBED_PLANNER", "fastest")
    with pytest.warns(RuntimeWarning, match="TESTBED_PLANNER") as caught:
        assert testbed.get_planner().mode == "estimate"
        assert testbed.get_planner().mode == "estimate"
    assert len(caught) == 1
    with pytest.raises(ValueError, match="planner mode"):
        testbed.set_planner("patient")
    with pytest.raises(ValueError, match="isolation"):
        testbed.set_planner("measure", isolation="thread")


def test_planner_mode_is_local_to_a_thread():
    seen = {}
    inside, done = threading.Event(), threading.Event()

    def worker():
        with testbed.set_planner("measure"):
            seen["worker"] = testbed.get_planner().mode
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(10)
    seen["main"] = testbed.get_planner().mode
    done.set()
    thread.join()
    assert seen == {"worker": "measure", "main": "estimate"}


# ---- tune ------------------------------------------------------------------------------------------------------


def test_tune_picks_the_fastest_fake_and_cuts_the_slow_one(wisdom_file):
    result = testbed.tune(
        UP["x"],
        UP["w"],
        candidates=[fakes.FAST, fakes.MEDIUM, fakes.SLOW],
        isolation="inline",
        settings=FEW,
        **UP["kwargs"],
    )
    assert result.winner == "fake_fast"
    fast, slow = result.timing("fake_fast"), result.timing("fake_slow")
    assert fast.status == "ok" and fast.repeats == 3 and fast.ratio == 1.0
    assert fast.median_s >= fakes.COSTS["fake_fast"] and fast.ci_s[0] <= fast.median_s <= fast.ci_s[1]
    assert slow.status == "cut" and slow.pilot_s >= fakes.COSTS["fake_slow"] and "best median" in slow.message
    assert "fake_fast" in str(result) and "cut" in str(result)
    # the decision is wisdom now, with every timed median; an unregistered winner is never applied by auto
    entry = wisdom.load_entries()[result.signature]
    assert entry["backend"] == "fake_fast" and entry["source"] == "tune"
    assert set(entry["median_s"]) == set(result.medians_s)
    why = testbed.explain(UP["x"], UP["w"], **UP["kwargs"])
    assert why.reason == "rule" and "fake_fast" in why.note and "not a registered backend" in why.note


def test_tune_in_worker_processes_and_without_storing(wisdom_file):
    result = testbed.tune(
        UP["x"],
        UP["w"],
        candidates=[fakes.MEDIUM, fakes.FAST],
        isolation="process",
        settings=FEW,
        store=False,
        **UP["kwargs"],
    )
    assert [c.status for c in result.candidates] == ["ok", "ok"], result
    assert result.winner == "fake_fast" and result.timing("fake_medium").ratio > 1
    assert result.stored is None and not wisdom_file.exists()
    assert result.timing("fake_fast").repeats == FEW.min_repeats


def test_tune_in_rounds_pools_each_candidates_fresh_workers(wisdom_file):
    result = testbed.tune(
        UP["x"],
        UP["w"],
        candidates=[fakes.MEDIUM, fakes.FAST],
        isolation="process",
        settings=replace(FEW, rounds=2),
        store=False,
        **UP["kwargs"],
    )
    assert result.winner == "fake_fast"
    assert [c.repeats for c in result.candidates] == [2 * FEW.min_repeats] * 2
    assert all(len(c.samples_s) == 2 * FEW.min_repeats for c in result.candidates)


def test_default_candidates_follow_the_rule_and_leave_out_the_references():
    problem = problem_of(DEC)
    timed, skipped = planner._candidates(problem, False, None)
    names = [b.name for b in timed]
    assert names and names[0] == planner.rule_backend(problem).name
    assert not set(names) & set(planner.REFERENCE_BACKENDS) and "auto" not in names
    status = {c.backend: c.status for c in skipped}
    assert status["naive"] == "excluded" and status["kron"] == "unsupported"
    # explicitly named, a reference backend is timed
    timed, _ = planner._candidates(problem, False, ["naive", "col2im"])
    assert [b.name for b in timed] == ["col2im", "naive"]  # in the class row's order


def test_tune_validates_like_the_call():
    with pytest.raises(ValueError, match=r"weight\.shape"):
        testbed.tune(UP["x"], np.zeros((3, 4, 2, 2), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        testbed.tune(UP["x"], UP["w"].astype(np.float64))
    with pytest.raises(ValueError, match="isolation"):
        testbed.tune(UP["x"], UP["w"], isolation="threads")
    with pytest.raises(ValueError, match="cut_factor"):
        testbed.tune(UP["x"], UP["w"], cut_factor=0.5)


def test_measure_mode_times_the_first_call_only_and_stores_the_winner(monkeypatch, wisdom_file):
    monkeypatch.setattr(planner, "list_backends", lambda: ["naive", "col2im", "kron", "polyphase", "auto"])
    calls = []
    real = planner.tune_problem
    monkeypatch.setattr(planner, "tune_problem", lambda *a, **k: calls.append(k) or real(*a, **k))
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 8, 6, 6)).astype(np.float32), rng.standard_normal((8, 4, 2, 2)).astype(np.float32)
    with testbed.set_planner("measure", isolation="inline", settings=FEW):
        y = testbed.conv_transpose2d(x, w, stride=2)
        y_again = testbed.conv_transpose2d(x, w, stride=2)
        why = testbed.explain(x, w, stride=2)
    assert len(calls) == 1 and calls[0]["source"] == "measure"
    reference = testbed.conv_transpose2d(x, w, stride=2, backend="naive")
    np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, y_again)
    assert why.reason == "wisdom" and why.backend in ("col2im", "kron", "polyphase")
    assert why.wisdom["source"] == "measure" and set(why.measured_s) <= {"col2im", "kron", "polyphase"}
    assert testbed.explain(x, w, stride=2).reason == "wisdom"  # estimate mode applies the wisdom too


# ---- wisdom storage --------------------------------------------------------------------------------------------


def _record(problem, backend="col2im", **extra):
    return wisdom.record(problem, "cpu", {"backend": backend, "median_s": {backend: 1e-3}, **extra})


def test_wisdom_round_trip_export_forget_import(tmp_path, wisdom_file):
    up, dec = problem_of(UP), problem_of(DEC)
    _record(up, "col2im")
    _record(dec, "polyphase")
    assert wisdom.lookup(up)["backend"] == "col2im" and wisdom.lookup(dec)["backend"] == "polyphase"
    exported = tmp_path / "exported.json"
    assert testbed.export_wisdom(exported) == 2
    testbed.forget_wisdom()
    assert not wisdom_file.exists() and wisdom.lookup(up) is None
    assert testbed.import_wisdom(exported) == 2
    assert wisdom.lookup(up)["backend"] == "col2im" and wisdom.lookup(dec)["backend"] == "polyphase"
    # a newer decision for a signature wins over an older one in a merge
    _record(up, "kron")
    assert testbed.import_wisdom(exported) == 2 and wisdom.lookup(up)["backend"] == "kron"
    with pytest.raises(ValueError, match="not a testbed wisdom file"):
        (tmp_path / "bad.json").write_text("[1, 2]")
        testbed.import_wisdom(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        testbed.import_wisdom(tmp_path / "missing.json")


def test_two_processes_writing_at_once_lose_nothing(wisdom_file):
    context = multiprocessing.get_context("spawn")
    count = 25
    processes = [
        context.Process(target=fakes.write_entries, args=(wisdom_file, first, count, backend))
        for first, backend in ((1, "col2im"), (1001, "polyphase"))
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    data = json.loads(wisdom_file.read_text())  # valid JSON
    entries = wisdom.load_entries()  # the children share this machine's fingerprint
    assert len(entries) == 2 * count and len(data["machines"]) == 1
    assert {e["backend"] for e in entries.values()} == {"col2im", "polyphase"}
    assert not [p for p in wisdom_file.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content",
    [
        '{"format": "testbed-wisdom", "vers',
        "\x00\xff garbage",
        '{"format": "someone-else"}',
        "[]",
        '{"format": "testbed-wisdom", "version": "x", "machines": {}}',
    ],
)
def test_a_corrupted_or_foreign_file_warns_once_and_is_ignored(wisdom_file, content):
    wisdom_file.write_bytes(content.encode("latin-1"))
    with pytest.warns(wisdom.WisdomWarning, match="ignoring the wisdom file") as caught:
        for _ in range(3):
            assert testbed.explain(UP["x"], UP["w"], **UP["kwargs"]).reason == "rule"
            testbed.conv_transpose2d(UP["x"], UP["w"], **UP["kwargs"])
    assert len(caught) == 1
    with warnings.catch_warnings(record=True) as later:  # writing moves the bad file aside
        warnings.simplefilter("always")
        _record(problem_of(UP))
    assert [str(w.message) for w in later if "moved aside" in str(w.message)]
    backups = list(wisdom_file.parent.glob("wisdom.json.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == content.encode("latin-1")
    assert wisdom.lookup(problem_of(UP))["backend"] == "col2im"


def test_wisdom_of_another_machine_is_not_applied(monkeypatch, tmp_path, wisdom_file):
    up = problem_of(UP)
    _record(up, "col2im")
    assert testbed.explain(UP["x"], UP["w"], **UP["kwargs"]).reason == "wisdom"
    other = {**wisdom.machine_fingerprint(), "cpu_model": "another CPU", "cpu_count": 64}
    monkeypatch.setattr(wisdom, "machine_fingerprint", lambda: other)
    why = testbed.explain(UP["x"], UP["w"], **UP["kwargs"])
    assert why.reason == "rule" and why.backend == planner.rule_backend(up).name
    # its own decisions live beside the first machine's in the same file, and an export carries both
    _record(up, "kron")
    assert testbed.export_wisdom(tmp_path / "both.json") == 2
    monkeypatch.undo()
    monkeypatch.setenv("TESTBED_WISDOM", str(tmp_path / "fresh.json"))
    assert testbed.import_wisdom(tmp_path / "both.json") == 1  # one entry applies here
    assert wisdom.lookup(up)["backend"] == "col2im"


def test_an_unwritable_wisdom_file_keeps_decisions_in_memory(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("TESTBED_WISDOM", str(blocker / "wisdom.json"))  # its directory cannot be created
    with pytest.warns(wisdom.WisdomWarning, match="in memory"):
        _record(problem_of(UP), "polyphase")
    assert wisdom.lookup(problem_of(UP))["backend"] == "polyphase"
    monkeypatch.setenv("TESTBED_WISDOM", "off")
    assert wisdom.wisdom_path() is None
    _record(problem_of(DEC), "col2im")
    assert wisdom.lookup(problem_of(DEC))["backend"] == "col2im"


# ---- explain ---------------------------------------------------------------------------------------------------


def test_explain_rule_and_wisdom():
    dec = problem_of(DEC)
    why = testbed.explain(DEC["x"], DEC["w"], **DEC["kwargs"])
    assert why.reason == "rule" and why.problem_class == preference.problem_class(dec) == "general"
    assert why.table_row == preference.preference_table().orders["general"]
    assert why.backend == planner.choose_backend(dec).name
    assert why.table_row.index(why.backend) == len(why.skipped)  # earlier entries were passed over, with why
    assert "reason: rule" in str(why) and "class 'general'" in str(why)
    _record(dec, "polyphase", source="tune", isolation="process")
    why = testbed.explain(DEC["x"], DEC["w"], **DEC["kwargs"])
    assert why.reason == "wisdom" and why.backend == "polyphase" == planner.choose_backend(dec).name
    assert why.measured_s == {"polyphase": 1e-3} and "polyphase 1 ms" in str(why)
    with testbed.set_planner("measure"):
        assert testbed.explain(DEC["x"], DEC["w"], **DEC["kwargs"]).planner == "measure"


def test_explain_names_the_isa_row_whose_table_answered(monkeypatch):
    from testbed import isa

    monkeypatch.setattr(isa, "selected_isa", lambda: "avx2")
    why = testbed.explain(DEC["x"], DEC["w"], **DEC["kwargs"])
    assert (why.isa_row, why.table_isa, why.table_fallback) == ("avx2", "avx2", False)
    assert "preference table of the avx2 row: preference_tables/avx2.json (measured on AMD EPYC" in str(why)
    assert "fallback" not in str(why)
    unmeasured = [row for row in isa.ISA_ROWS if row not in preference.measured_rows()]
    if not unmeasured:
        pytest.skip("every ISA row has a measured table: no fallback to explain")
    monkeypatch.setattr(isa, "selected_isa", lambda: unmeasured[-1])
    why = testbed.explain(DEC["x"], DEC["w"], **DEC["kwargs"])
    assert why.isa_row == unmeasured[-1] and why.table_fallback and why.table_isa in preference.measured_rows()
    assert f"a fallback: this process runs the {unmeasured[-1]!r} row, which has no measured table" in str(why)
    assert why.table_row == preference.preference_table(why.table_isa).orders["general"]


def test_explain_ignores_wisdom_that_cannot_run_the_problem():
    dec = problem_of(DEC)
    _record(dec, "kron")  # kron needs stride == kernel
    why = testbed.explain(DEC["x"], DEC["w"], **DEC["kwargs"])
    assert why.reason == "rule" and "kron" in why.note and "unsupported" in why.note
    assert planner.choose_backend(dec).name == why.backend != "kron"


class FakeDeviceArray:
    """Just enough of a CUDA device array for the dispatch decision (``__cuda_array_interface__``)."""

    def __init__(self, array):
        self.shape, self.dtype = array.shape, array.dtype
        self.__cuda_array_interface__ = {
            "shape": array.shape,
            "typestr": array.dtype.str,
            "data": (0, False),
            "version": 3,
        }


def test_explain_device_arrays(monkeypatch):
    monkeypatch.setattr(machine, "gpu_name", lambda: "Fake GPU")
    why = testbed.explain(FakeDeviceArray(UP["x"]), FakeDeviceArray(UP["w"]), **UP["kwargs"])
    assert why.reason == "device" and why.table_row == DEVICE_ROW
    assert why.signature.endswith("cuda:Fake GPU")
    cuda_ready = [name for name in DEVICE_ROW if testbed.get_backend(name).available]
    assert why.backend == (cuda_ready[0] if cuda_ready else None)
    assert "device row" in str(why)


@pytest.mark.cudasim
def test_explain_simulator_device_arrays():
    from numba import cuda

    x, w = cuda.to_device(UP["x"]), cuda.to_device(UP["w"])
    why = testbed.explain(x, w, **UP["kwargs"])
    assert why.reason == "device" and why.backend == DEVICE_ROW[0]
    assert why.signature.endswith("cuda:simulator")


# ---- auto never raises UnsupportedConfiguration ------------------------------------------------------------------


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_auto_runs_every_valid_problem_whatever_the_wisdom(data):
    groups = data.draw(st.sampled_from([1, 2]), "groups")
    kernel = data.draw(st.integers(1, 4), "kernel")
    stride = data.draw(st.integers(1, 3), "stride")
    dilation = data.draw(st.integers(1, 2), "dilation")
    output_padding = data.draw(st.integers(0, max(stride, dilation) - 1), "output_padding")
    padding = data.draw(st.integers(0, 1), "padding")
    size = data.draw(st.integers(2, 5), "size")
    try:
        problem = Problem(
            batch=1,
            in_channels=2 * groups,
            in_size=size,
            out_channels=2 * groups,
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
            dtype=np.float64,
        )
    except ValueError:
        return  # not a valid configuration
    stale = data.draw(st.sampled_from([None, "kron", "naive", "fake_gone"]), "wisdom")
    if stale:
        _record(problem, stale)
    x, w, _ = problem.random_arrays(1)
    kwargs = {
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "dilation": dilation,
        "groups": groups,
    }
    why = testbed.explain(x, w, **kwargs)
    assert testbed.get_backend(why.backend).supports(problem)
    y = testbed.conv_transpose2d(x, w, **kwargs)  # never UnsupportedConfiguration
    np.testing.assert_allclose(y, testbed.conv_transpose2d(x, w, backend="naive", **kwargs), rtol=1e-10, atol=1e-10)
    testbed.forget_wisdom()


# ---- the experiment --------------------------------------------------------------------------------------------


def test_tune_experiment_quick(tmp_path, wisdom_file):
    from experiments import tune as tune_experiment

    table = tmp_path / "preference.json"
    run_dir = tune_experiment.main(
        [
            "--quick",
            "--no-progress",
            "--isolation",
            "inline",
            "--backends",
            "col2im,kron,polyphase",
            "--out",
            str(tmp_path / "run"),
            "--write-table",
            str(table),
        ]
    )
    report = (run_dir / "report.md").read_text()
    assert "auto after tuning" in report and "auto / winner" in report and "within 5 %" in report
    written = json.loads(table.read_text())
    assert written["source"]["command"].startswith("-m experiments.tune")
    order = written["classes"]["nonoverlapping"]["order"]
    assert set(order) >= {"col2im", "kron", "polyphase"} and order[-1] == "naive"
    assert len(wisdom.load_entries()) == len(testbed.cases.suite("tiny"))


@pytest.mark.cudasim
def test_measure_mode_on_the_simulator_times_nothing_and_follows_the_device_row(monkeypatch):
    from numba import cuda

    x, w = cuda.to_device(UP["x"]), cuda.to_device(UP["w"])
    with pytest.raises(testbed.TuneError, match="simulator: not timed") as failed:
        testbed.tune(x, w, **UP["kwargs"])
    result = failed.value.result
    assert result.winner is None and result.stored is None
    assert {c.status for c in result.candidates} == {"simulator: not timed"}
    with testbed.set_planner("measure"), pytest.warns(RuntimeWarning, match="could not time"):
        y = testbed.conv_transpose2d(x, w, **UP["kwargs"])
        assert testbed.explain(x, w, **UP["kwargs"]).reason == "device"
    np.testing.assert_allclose(y.copy_to_host(), testbed.conv_transpose2d(UP["x"], UP["w"], **UP["kwargs"]))
