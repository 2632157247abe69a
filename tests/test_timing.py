"""testbed.timing: isolation modes, allocation modes, page-fault counts, statistics, worker failures.

The fake backends (tests/timing_fakes.py) have known costs and known dependence on process state, so these
tests check what each mode measures without timing anything real (no speed is asserted).
"""

import math
import time
from dataclasses import replace

import numpy as np
import pytest

import timing_fakes as fakes
from testbed.problem import Problem
from testbed.timing import (
    TimingJob,
    TimingSettings,
    WorkerError,
    machine_state,
    run_in_worker,
    speedup_ci,
    summarize,
    time_call,
    time_jobs,
)

SMALL = Problem(batch=1, in_channels=2, in_size=4, out_channels=2, kernel_size=2, stride=2, dtype=np.float32)
#: A 64 MiB float32 output (16 × 1024²): above glibc's largest dynamic mmap threshold (32 MiB), so a fresh
#: result is mmapped and faulted in on every call.
LARGE = Problem(batch=1, in_channels=1, in_size=1024, out_channels=16, kernel_size=1, dtype=np.float32)
FEW = TimingSettings(warmup=0, min_repeats=3, max_repeats=3, budget_s=0.0, min_sample_s=0.0)


def test_inline_timing_inherits_process_state_and_process_isolation_does_not(monkeypatch):
    monkeypatch.setattr(fakes, "POLLUTED", False)
    jobs = [TimingJob(SMALL, fakes.POLLUTER), TimingJob(SMALL, fakes.VICTIM)]
    inline = time_jobs(jobs, FEW, isolation="inline")
    assert [row["status"] for row in inline] == ["ok", "ok"]
    assert inline[1]["median_s"] >= fakes.VICTIM_DELAY_S  # slowed by what ran before it
    monkeypatch.setattr(fakes, "POLLUTED", False)
    interleaved = time_jobs(jobs, FEW, isolation="interleaved")
    assert interleaved[1]["median_s"] >= fakes.VICTIM_DELAY_S  # one process: the state is shared
    isolated = time_jobs(jobs, FEW, isolation="process")
    assert [row["status"] for row in isolated] == ["ok", "ok"], isolated
    assert isolated[1]["median_s"] < fakes.VICTIM_DELAY_S / 2  # a fresh process: no pollution
    for rows, mode in ((inline, "inline"), (interleaved, "interleaved"), (isolated, "process")):
        assert {row["isolation"] for row in rows} == {mode}
        assert [row["backend"] for row in rows] == ["fake_polluter", "fake_victim"]


def test_fresh_64mb_result_faults_in_alloc_mode_and_not_with_out():
    jobs = [TimingJob(LARGE, fakes.FRESH_RESULT, allocation) for allocation in ("alloc", "out")]
    alloc, out = time_jobs(jobs, FEW, isolation="inline")
    assert alloc["allocation"] == "alloc" and out["allocation"] == "out"
    # 64 MiB is 16384 faults per call in 4 KiB pages, 32 in 2 MiB pages (numpy madvises large arrays for
    # transparent huge pages where the kernel allows it); with out= there is nothing to fault in
    assert alloc["minor_faults_per_call"] >= 32, alloc
    assert out["minor_faults_per_call"] < 1, out
    assert alloc["peak_rss_increase_mb"] >= 60 or math.isnan(alloc["peak_rss_increase_mb"])


def test_auto_ranged_loops_for_sub_millisecond_calls():
    stats = time_call(
        lambda: None, TimingSettings(warmup=1, min_repeats=3, max_repeats=3, budget_s=0.0, min_sample_s=1e-3)
    )
    assert stats["loops"] > 10 and stats["repeats"] == 3
    assert 0 < stats["min_s"] <= stats["median_s"] < 1e-4
    slow = time_call(lambda: sum(range(200_000)), FEW)
    assert slow["loops"] == 1


def test_repeats_follow_the_budget_and_caps():
    capped = time_call(
        lambda: None, TimingSettings(warmup=0, min_repeats=1, max_repeats=4, budget_s=10.0, min_sample_s=0.0)
    )
    assert capped["repeats"] == 4
    floor = time_call(
        lambda: None, TimingSettings(warmup=0, min_repeats=6, max_repeats=50, budget_s=0.0, min_sample_s=0.0)
    )
    assert floor["repeats"] == 6


def test_warm_up_lasts_warmup_s_and_no_sample_sees_the_transient():
    """A call that is slow for its first 50 ms of calls (a fresh process's transient) is timed only after it."""
    start = time.perf_counter()

    def settling():
        time.sleep(0.02 if time.perf_counter() - start < 0.05 else 0.001)

    settings = TimingSettings(warmup=1, min_repeats=5, max_repeats=5, budget_s=0.0, min_sample_s=0.0, warmup_s=0.1)
    stats = time_call(settling, settings, keep_samples=True)
    assert max(stats["samples_s"]) < 0.015
    assert time_call(settling, replace(settings, warmup_s=0.0))["repeats"] == 5  # a count alone is allowed


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_repeats"):
        TimingSettings(min_repeats=5, max_repeats=2)
    with pytest.raises(ValueError, match="budget_s"):
        TimingSettings(budget_s=-1)
    with pytest.raises(ValueError, match="warmup_s"):
        TimingSettings(warmup_s=math.nan)
    with pytest.raises(ValueError, match="allocation"):
        TimingJob(SMALL, "naive", allocation="stack")
    with pytest.raises(ValueError, match="isolation"):
        time_jobs([], isolation="thread")


def test_summarize_and_unstable_flag():
    steady = summarize([1.0, 1.01, 0.99, 1.0, 1.02])
    assert steady["median_s"] == 1.0 and steady["min_s"] == 0.99 and not steady["unstable"]
    noisy = summarize([1.0, 2.0, 1.0, 2.0, 1.5])
    assert noisy["unstable"] and noisy["iqr_s"] == pytest.approx(1.0)


def test_speedup_ci_on_synthetic_samples():
    rng = np.random.default_rng(1)
    base = 0.010 * np.exp(rng.normal(0, 0.02, 40))
    fast = 0.005 * np.exp(rng.normal(0, 0.02, 40))
    low, high = speedup_ci(base, fast)
    assert 1.9 < low < 2.0 < high < 2.1
    wide_low, wide_high = speedup_ci(0.010 * np.exp(rng.normal(0, 0.3, 40)), 0.005 * np.exp(rng.normal(0, 0.3, 40)))
    assert wide_high - wide_low > 3 * (high - low)
    assert speedup_ci([1.0, 1.0, 1.0], [0.5, 0.5, 0.5]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in speedup_ci([1.0], [0.5, 0.6]))
    assert speedup_ci(base, fast) == (low, high)  # seeded: repeatable


def test_speedup_ci_covers_the_true_ratio():
    """Lognormal samples have a known median, so the true ratio of medians is known: the 95 % interval
    must contain it in most of many simulated experiments (percentile bootstrap of medians, n = 15)."""
    rng = np.random.default_rng(7)
    trials, covered = 120, 0
    for trial in range(trials):
        base = np.exp(np.log(3.0) + rng.normal(0, 0.2, 15))
        other = np.exp(rng.normal(0, 0.2, 15))
        low, high = speedup_ci(base, other, n_resamples=500, seed=trial)
        covered += low <= 3.0 <= high
    assert covered / trials > 0.85, covered


def test_killed_worker_becomes_an_error_row_and_the_sweep_goes_on():
    jobs = [TimingJob(SMALL, fakes.KILLER), TimingJob(SMALL, fakes.VICTIM)]
    killed, survivor = time_jobs(jobs, FEW, isolation="process")
    assert killed["status"] == "error" and "SIGKILL" in killed["message"], killed
    assert killed["backend"] == "fake_killer" and killed["isolation"] == "process"
    assert survivor["status"] == "ok" and survivor["median_s"] < fakes.VICTIM_DELAY_S / 2


def test_worker_past_its_timeout_is_killed():
    settings = TimingSettings(warmup=0, min_repeats=1, max_repeats=1, worker_timeout_s=1.0)
    (row,) = time_jobs([TimingJob(SMALL, fakes.SLEEPER)], settings, isolation="process")
    assert row["status"] == "error" and "timed out" in row["message"]


def test_unsupported_and_failing_jobs_are_rows_not_exceptions():
    k3 = Problem(batch=1, in_channels=2, in_size=4, out_channels=2, kernel_size=3, stride=2, dtype=np.float32)
    rows = time_jobs([TimingJob(k3, "kron"), TimingJob(k3, "naive")], FEW, isolation="interleaved")
    assert rows[0]["status"] == "unsupported" and rows[1]["status"] == "ok"


def test_run_in_worker_reports_exceptions_and_refuses_fork():
    with pytest.raises(WorkerError, match="ZeroDivisionError"):
        run_in_worker(divmod, 1, 0)
    assert run_in_worker(divmod, 7, 2) == (3, 1)
    with pytest.raises(ValueError, match="fork"):
        run_in_worker(divmod, 7, 2, start_method="fork")


def test_machine_state_records_thread_pools_and_environment(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("UNRELATED_VARIABLE", "1")
    state = machine_state()
    assert state["environment"]["MALLOC_ARENA_MAX"] == "2" and "UNRELATED_VARIABLE" not in state["environment"]
    pytest.importorskip("threadpoolctl")
    assert any(pool.get("internal_api") == "openblas" for pool in state["threadpools"])
    assert len(state["load_average"]) == 3


def _results(run_dir):
    import json

    import pandas as pd

    return json.loads((run_dir / "meta.json").read_text()), pd.read_csv(run_dir / "results.csv")


def test_speed_experiment_in_process_isolation_records_how_it_timed(tmp_path):
    from experiments import speed

    run_dir = speed.main(
        [
            "--quick",
            "--no-progress",
            "--isolation",
            "process",
            "--allocation",
            "out",
            "--backends",
            "kron,col2im",
            "--baseline",
            "col2im",
            "--suite",
            "tiny",
            "--cases",
            "tiny_k2s2",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    meta, frame = _results(run_dir)
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 2 and set(frame["isolation"]) == {"process"} and set(frame["allocation"]) == {"out"}
    for column in (
        "minor_faults_per_call",
        "peak_rss_mb",
        "speedup_ci_low",
        "speedup_ci_high",
        "unstable",
        "baseline_drift",
    ):
        assert column in frame, column
    assert "samples_s" not in frame
    assert (ok["speedup_ci_low"] <= ok["speedup_ci_high"]).all()
    assert ok["baseline_drift"].notna().all()  # the baseline was timed again after kron
    assert meta["isolation"] == "process" and meta["backend_order"] == ["col2im", "kron"]
    assert {"threadpools", "environment", "load_average_before", "load_average_after"} <= set(meta)
    assert "isolation `process`" in (run_dir / "report.md").read_text()


def test_process_rounds_take_turns_and_pool_their_samples(tmp_path):
    """rounds=2: every job timed in two fresh workers, the jobs alternating; one row per job with the samples
    of both rounds pooled; an unsupported job is asked once."""
    settings = replace(FEW, rounds=2)
    rows = time_jobs(
        [TimingJob(SMALL, "kron"), TimingJob(SMALL.with_(stride=1), "kron"), TimingJob(SMALL, "col2im")],
        settings,
        isolation="process",
        keep_samples=True,
    )
    kron, unsupported, col2im = rows
    assert kron["status"] == col2im["status"] == "ok" and unsupported["status"] == "unsupported"
    assert kron["rounds"] == col2im["rounds"] == 2
    assert kron["repeats"] == len(kron["samples_s"]) == 6 and kron["round_spread"] >= 0
    assert "rounds" not in unsupported
    with pytest.raises(ValueError, match="rounds"):
        TimingSettings(rounds=0)
    from experiments import speed

    run_dir = speed.main(
        [
            "--quick",
            "--no-progress",
            "--isolation",
            "process",
            "--rounds",
            "2",
            "--backends",
            "kron,col2im",
            "--baseline",
            "col2im",
            "--suite",
            "tiny",
            "--cases",
            "tiny_k2s2",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    meta, frame = _results(run_dir)
    assert set(frame["rounds"]) == {2} and meta["timing"]["rounds"] == 2
    assert "2 fresh worker processes" in (run_dir / "report.md").read_text()


def test_interference_quick(tmp_path):
    from experiments import interference

    run_dir = interference.main(["--quick", "--no-progress", "--out", str(tmp_path / "run")])
    _meta, frame = _results(run_dir)
    assert (frame["status"] == "ok").all(), frame[["setting", "message"]]
    assert set(frame["setting"]) == {
        "fresh",
        "warmed",
        "out=",
        "after col2im",
        "after col2im, out=",
        "alternating col2im",
    }
    assert set(frame["backend"]) == {"kron"}
    fresh = frame[frame["setting"] == "fresh"]
    assert (fresh["vs_fresh"] == 1).all() and frame["vs_fresh"].notna().all()
    assert (run_dir / "interference.png").read_bytes()[:4] == b"\x89PNG"
    assert "vs fresh" in (run_dir / "report.md").read_text()


def test_measurement_statistics_rounds_and_row():
    """One measurement type: the statistics are properties, merge pools rounds, row() gives the CSV columns."""
    from testbed.timing import Measurement, pool_rounds

    first = Measurement(
        (1.0, 2.0, 3.0, 4.0),
        loops=5,
        first_call_s=9.0,
        minor_faults_per_call=2.0,
        peak_rss_mb=10.0,
        peak_rss_increase_mb=1.0,
    )
    assert (first.median_s, first.min_s, first.iqr_s, first.repeats) == (2.5, 1.0, 1.5, 4)
    assert first.unstable and first.rounds == 1 and first.round_spread == 0
    assert first.statistics() == summarize([1.0, 2.0, 3.0, 4.0])
    second = Measurement(
        (5.0, 5.0, 5.0),
        loops=3,
        first_call_s=7.0,
        minor_faults_per_call=4.0,
        peak_rss_mb=12.0,
        peak_rss_increase_mb=0.5,
    )
    merged = Measurement.merge([first, second])
    assert merged.samples_s == (1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0) and merged.round_medians_s == (2.5, 5.0)
    assert (merged.rounds, merged.round_spread, merged.first_call_s, merged.loops) == (2, 1.0, 9.0, 5)
    assert (merged.minor_faults_per_call, merged.peak_rss_mb, merged.peak_rss_increase_mb) == (3.0, 12.0, 1.0)
    row = merged.row(keep_samples=True)
    assert list(row) == [
        "median_s",
        "min_s",
        "iqr_s",
        "repeats",
        "unstable",
        "first_call_s",
        "loops",
        "minor_faults_per_call",
        "peak_rss_mb",
        "peak_rss_increase_mb",
        "rounds",
        "round_spread",
        "samples_s",
    ]
    # pool_rounds is the merge of result rows
    rows = [{"status": "ok", "timing_method": "perf_counter", **m.row(keep_samples=True)} for m in (first, second)]
    pooled = pool_rounds(rows, TimingSettings())
    assert {key: pooled[key] for key in row if key != "samples_s"} == {k: v for k, v in row.items() if k != "samples_s"}
    assert Measurement.from_row(rows[1]) == second and Measurement.from_row({"status": "cut"}) is None
    with pytest.raises(ValueError, match="no samples"):
        Measurement(())
