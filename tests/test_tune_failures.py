"""tune never fails silently and one noisy round never decides for good.

* no candidate measured (killed, timed out, unsupported): TuneError naming each and why (before: winner None,
  no exception, no warning);
* some candidates failed: the winner is the fastest of the others, a warning names the failed ones, and the
  wisdom entry (and explain) records them (before: stored as if complete);
* the measure planner, when nothing can be measured, warns once and follows the class rule;
* a winner that overturns the class rule's choice, or wins by less than the spread, must win a second round;
  the rounds and the margin are kept in the wisdom entry and shown by explain.
"""

import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

import planner_fakes
import testbed
import timing_fakes
from helpers import DEC, UP
from testbed import planner, wisdom
from testbed.timing import TimingSettings

FEW = TimingSettings(
    warmup=0, min_repeats=3, max_repeats=3, budget_s=0.0, min_sample_s=0.0, warmup_s=0.0, worker_timeout_s=120.0
)


#: Every test against its own wisdom file (the ``wisdom_file`` fixture of tests/conftest.py).
pytestmark = pytest.mark.usefixtures("wisdom_file")


def test_no_candidate_measured_raises_naming_each_and_why(wisdom_file):
    settings = replace(FEW, worker_timeout_s=8.0)  # room for the killer's worker to start and kill itself
    with pytest.raises(testbed.TuneError) as failed:
        planner.tune_problem(
            DEC, candidates=[timing_fakes.KILLER, timing_fakes.SLEEPER, "kron"], isolation="process", settings=settings
        )
    message = str(failed.value)
    assert "fake_killer: error (worker process died without a result (killed by SIGKILL))" in message
    assert "fake_sleeper: error (worker process timed out after 8 s and was killed)" in message
    assert "kron: unsupported (needs stride == kernel size" in message
    assert failed.value.result.winner is None and not wisdom_file.exists()
    assert isinstance(failed.value, RuntimeError)


def test_a_killed_candidate_is_recorded_in_wisdom_and_explained(wisdom_file):
    with pytest.warns(RuntimeWarning, match=r"fake_killer: worker process died .*killed by SIGKILL"):
        result = planner.tune_problem(UP, candidates=["col2im", timing_fakes.KILLER], isolation="process", settings=FEW)
    assert result.winner == "col2im"
    entry = wisdom.load_entries()[result.signature]
    assert entry["backend"] == "col2im" and "killed by SIGKILL" in entry["failed"]["fake_killer"]
    why = testbed.explain(np.zeros((1, 8, 6, 6), np.float32), np.zeros((8, 4, 2, 2), np.float32), stride=2)
    assert why.reason == "wisdom"
    assert "not measured: fake_killer (worker process died without a result (killed by SIGKILL))" in str(why)


def _failing_measure(problem, backends, isolation, settings, cut_factor, seed, direction="forward"):
    return [
        {"status": "error", "message": "worker process died without a result (killed by SIGKILL)"} for _ in backends
    ]


def test_the_measure_planner_warns_once_and_follows_the_rule(monkeypatch):
    monkeypatch.setattr(planner, "_measure", _failing_measure)
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((8, 4, 2, 2)).astype(np.float32)
    with testbed.set_planner("measure", isolation="inline", settings=FEW):
        with pytest.warns(RuntimeWarning, match="could not time .*TuneError.*killed by SIGKILL.*class rules"):
            y = testbed.conv_transpose2d(x, w, stride=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            testbed.conv_transpose2d(x, w, stride=2)  # not measured again, no second warning
        assert testbed.explain(x, w, stride=2).reason == "rule"
    np.testing.assert_allclose(y, testbed.conv_transpose2d(x, w, stride=2, backend="naive"), rtol=1e-5, atol=1e-5)


# ---- confirmation rounds ---------------------------------------------------------------------------------------


def _timed(median, iqr=0.0):
    samples = [median - iqr / 2, median, median + iqr / 2]
    return {
        "status": "ok",
        "median_s": median,
        "min_s": min(samples),
        "iqr_s": iqr,
        "repeats": 3,
        "samples_s": samples,
        "first_call_s": median,
        "pilot_s": median,
    }


def _scripted(monkeypatch, rounds):
    """``_measure`` answering round after round from ``rounds`` (``{name: (median, iqr)}`` each); the order
    the candidates were timed in, per round, is kept."""
    orders = []

    def measure(problem, backends, isolation, settings, cut_factor, seed, direction="forward"):
        answers = rounds[len(orders)]
        orders.append([b.name for b in backends])
        return [_timed(*answers[b.name]) for b in backends]

    monkeypatch.setattr(planner, "_measure", measure)
    return orders


def test_a_burst_in_the_first_round_does_not_decide(monkeypatch, wisdom_file):
    """The unet4 case: col2im won the first round only because numba_cpu's round met a burst of other load."""
    monkeypatch.setattr(planner, "rule_backend", lambda *_: testbed.get_backend("numba_cpu"))
    orders = _scripted(
        monkeypatch,
        [
            {"numba_cpu": (26.2e-3, 1e-3), "col2im": (25.1e-3, 1e-3)},
            {"numba_cpu": (12.8e-3, 1e-4), "col2im": (25.0e-3, 1e-4)},
            {"numba_cpu": (12.9e-3, 1e-4), "col2im": (25.2e-3, 1e-4)},
        ],
    )
    result = planner.tune_problem(UP, candidates=["numba_cpu", "col2im"], isolation="process", settings=FEW)
    assert result.winner == "numba_cpu" and result.rounds == 3
    assert result.round_winners == ("col2im", "numba_cpu", "numba_cpu")
    assert orders[1] == list(reversed(orders[0])) and orders[2] == orders[0]  # taking turns
    entry = wisdom.load_entries()[result.signature]
    assert entry["backend"] == "numba_cpu" and entry["rounds"] == 3
    assert "overturns the class rule's choice numba_cpu" in entry["confirmation"]
    assert entry["margin"] == pytest.approx(result.timing("col2im").median_s / result.timing("numba_cpu").median_s - 1)
    assert result.timing("numba_cpu").repeats == 9  # three rounds pooled


def test_a_winner_that_wins_again_is_kept_after_two_rounds(monkeypatch, wisdom_file):
    monkeypatch.setattr(planner, "rule_backend", lambda *_: testbed.get_backend("numba_cpu"))
    _scripted(
        monkeypatch,
        [
            {"numba_cpu": (20e-3, 1e-4), "col2im": (10e-3, 1e-4), "kron": (30e-3, 1e-4)},
            {"numba_cpu": (20e-3, 1e-4), "col2im": (10e-3, 1e-4)},
        ],
    )
    result = planner.tune_problem(UP, candidates=["numba_cpu", "col2im", "kron"], isolation="process", settings=FEW)
    assert (result.winner, result.rounds, result.round_winners) == ("col2im", 2, ("col2im", "col2im"))
    assert result.margin == pytest.approx(1.0) and "2 rounds (col2im, col2im), margin 100.0%" in str(result)
    why = testbed.explain(np.zeros((1, 8, 6, 6), np.float32), np.zeros((8, 4, 2, 2), np.float32), stride=2)
    assert why.reason == "wisdom" and why.backend == "col2im"
    text = str(why)
    assert "2 rounds (col2im, col2im), margin 100.0%" in text and "overturns the class rule's choice" in text


def test_a_clear_winner_the_rule_agrees_with_takes_one_round(monkeypatch, wisdom_file):
    monkeypatch.setattr(planner, "rule_backend", lambda *_: testbed.get_backend("col2im"))
    _scripted(monkeypatch, [{"col2im": (10e-3, 1e-4), "kron": (30e-3, 1e-4)}])
    result = planner.tune_problem(UP, candidates=["col2im", "kron"], isolation="process", settings=FEW)
    assert (result.winner, result.rounds) == ("col2im", 1)
    assert wisdom.load_entries()[result.signature]["confirmation"] is None


def test_a_win_within_the_spread_needs_a_second_round(monkeypatch, wisdom_file):
    monkeypatch.setattr(planner, "rule_backend", lambda *_: testbed.get_backend("kron"))
    _scripted(
        monkeypatch,
        [
            {"col2im": (10.2e-3, 1e-3), "kron": (10.0e-3, 1e-3)},
            {"col2im": (10.0e-3, 1e-3), "kron": (10.3e-3, 1e-3)},
            {"col2im": (10.0e-3, 1e-3), "kron": (10.4e-3, 1e-3)},
        ],
    )
    result = planner.tune_problem(UP, candidates=["col2im", "kron"], isolation="process", settings=FEW)
    assert result.winner == "col2im" and result.round_winners == ("kron", "col2im", "col2im")
    assert "by less than their spread" in wisdom.load_entries()[result.signature]["confirmation"]


def test_overturning_the_rule_with_real_fakes_inline(monkeypatch, wisdom_file):
    """The same path end to end, timing sleep-based fakes in this process."""
    monkeypatch.setattr(planner, "rule_backend", lambda *_: planner_fakes.MEDIUM)
    result = planner.tune_problem(
        UP, candidates=[planner_fakes.MEDIUM, planner_fakes.FAST], isolation="inline", settings=FEW
    )
    assert result.winner == "fake_fast" and result.rounds == 2 and result.round_winners == ("fake_fast",) * 2
    assert math.isfinite(result.margin) and result.margin > 1
    assert wisdom.load_entries()[result.signature]["rounds"] == 2
