"""experiments.history on asv results written by asv's own API: a planted step is found and drawn, flat series are
not flagged, throughputs regress downwards, and bad input is refused."""

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("asv")
from asv import util
from asv.results import Results
from asv.runner import BenchmarkResult

from experiments import history
from experiments.benchmarks.common import CASES

TIME = "bench_conv.Speed.time_conv_transpose2d"
GFLOPS = "bench_conv.Speed.track_gflops"
MACHINE, ENV = "testhost", "virtualenv-py3.11"
COMMITS = [c * 40 for c in "abcde"]  # five fake hashes, oldest first


def benchmark(name, kind, unit, backends, case="unet1"):
    return {
        "name": name,
        "type": kind,
        "unit": unit,
        "version": "1",
        "param_names": ["backend", "case"],
        "params": [[repr(b) for b in backends], [repr(case)]],
    }


def write_project(root: Path, series: dict, *, threshold=0.2, shuffle=False):
    """An asv project folder: asv.conf.json, results/benchmarks.json and one result file per commit, written with
    asv's Results API from ``series = {benchmark dict name: (benchmark dict, {backend: [value per commit]})}``,
    each value drawn as 10 samples within ±2 % (so asv computes its confidence intervals)."""
    (root / "asv.conf.json").write_text(
        json.dumps(
            {
                "version": 1,
                "project": "t",
                "repo": ".",
                "branches": ["main"],
                "results_dir": "results",
                "regressions_thresholds": {".*": threshold},
            }
        )
    )
    results_dir = root / "results"
    util.write_json(
        str(results_dir / "benchmarks.json"), {name: bench for name, (bench, _) in series.items()}, api_version=2
    )
    (results_dir / MACHINE).mkdir(parents=True)
    util.write_json(str(results_dir / MACHINE / "machine.json"), {"machine": MACHINE}, api_version=1)
    rng = np.random.default_rng(0)
    order = list(range(len(COMMITS)))
    if shuffle:
        order = order[::-1]
    for i in order:
        result = Results(
            {"machine": MACHINE, "python": "3.11"}, {}, COMMITS[i], 1_700_000_000_000 + i * 60_000, "3.11", ENV, {}
        )
        for bench, values in series.values():
            samples = [list(values[b][i] * (1 + 0.02 * rng.uniform(-1, 1, 10))) for b in values]
            result.add_result(
                bench,
                BenchmarkResult(
                    result=[float(np.median(s)) for s in samples],
                    samples=samples,
                    number=[1] * len(samples),
                    errcode=0,
                    stderr="",
                    profile=None,
                ),
                record_samples=True,
            )
        result.save(str(results_dir))
    return root / "asv.conf.json"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """kron twice as slow from the fourth commit on; col2im and torch unchanged."""
    times = {"kron": [0.1, 0.1, 0.1, 0.2, 0.2], "col2im": [0.3] * 5, "torch": [0.05] * 5}
    bench = benchmark(TIME, "time", "seconds", list(times))
    return write_project(tmp_path_factory.mktemp("planted"), {TIME: (bench, times)}, shuffle=True)


@pytest.fixture(scope="module")
def report(planted, tmp_path_factory):
    """The history report of the planted project (one run shared by the tests that read it)."""
    out = tmp_path_factory.mktemp("history")
    assert history.main(["--config", str(planted), "--out", str(out)]) == 0
    return out


def read(out, name):
    return pd.read_csv(out / name, dtype={"good": str, "bad": str, "commit": str, "first": str, "last": str})


def regressions_of(config):
    """What the history finds in a project, without drawing: its regressions table."""
    from asv.config import Config

    conf = Config.load(str(config))
    conf.results_dir = str(Path(config).parent / conf.results_dir)
    frame = history.add_gflops(history.load_results(conf))
    return history.detect(frame, history.commit_order(frame, Path(config).parent), conf)[1]


def test_the_planted_step_is_the_only_regression(report):
    regressions, results = read(report, "regressions.csv"), read(report, "results.csv")
    flops = CASES["unet1"].flops
    assert set(regressions["params"]) == {"'kron', 'unet1'"}
    assert set(regressions["benchmark"]) == {TIME, f"{TIME} [GFLOP/s]"}
    for row in regressions.itertuples():
        assert (row.good, row.bad) == (COMMITS[2], COMMITS[3])  # last good, first bad: in commit order
        assert row.worse_by == pytest.approx(2, rel=0.06)
    # every stored value is in the table, and GFLOP/s is the useful work over the time
    timed = results[results["benchmark"] == TIME]
    assert len(timed) == 15 and set(timed["backend"]) == {"kron", "col2im", "torch"}
    derived = results[(results["benchmark"] == f"{TIME} [GFLOP/s]") & (results["backend"] == "torch")]
    torch_times = timed[timed["backend"] == "torch"]["value"].to_numpy()
    assert derived["value"].to_numpy() == pytest.approx(flops / 1e9 / torch_times)


def test_report_and_figures(report):
    out = report
    report = (out / "report.md").read_text()
    assert "## Regressions (asv.step_detect)" in report and "'kron', 'unet1'" in report
    assert "'col2im', 'unet1'" not in report.split("## Regressions")[1].split("##")[0]
    for name in (f"{TIME}.png", f"{TIME}_gflops.png"):
        assert f"]({name})" in report
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["experiment"] == "history" and meta["asv"]["commits"] == COMMITS
    steps = read(out, "steps.csv")
    kron = steps[(steps["benchmark"] == TIME) & (steps["params"] == "'kron', 'unet1'")]
    assert list(kron["first_pos"]) == [0, 3] and kron["level"].iloc[1] / kron["level"].iloc[0] == pytest.approx(
        2, rel=0.06
    )


def test_a_throughput_regresses_downwards(tmp_path):
    rates = {"numba_cpu": [40.0, 40.0, 40.0, 20.0, 20.0], "torch": [20.0, 20.0, 20.0, 40.0, 40.0]}
    config = write_project(tmp_path, {GFLOPS: (benchmark(GFLOPS, "track", "GFLOP/s", list(rates)), rates)})
    regressions = regressions_of(config)
    # numba_cpu halved its throughput (worse); torch doubled it (better, not a regression)
    assert list(regressions["params"]) == ["'numba_cpu', 'unet1'"]
    assert regressions["worse_by"].iloc[0] == pytest.approx(2, rel=0.06)


@pytest.mark.parametrize("case", ["unet3d1", "voc3"])
def test_gflops_of_1d_and_3d_cases_is_their_useful_work(tmp_path, case):
    """The GFLOP/s series of a 3-D or 1-D case: Problem.flops over every spatial axis, over the time."""
    times = {"naive": [0.5, 0.5, 0.5, 0.5, 0.5]}
    config = write_project(tmp_path, {TIME: (benchmark(TIME, "time", "seconds", list(times), case), times)})
    from asv.config import Config

    conf = Config.load(str(config))
    conf.results_dir = str(Path(config).parent / conf.results_dir)
    frame = history.add_gflops(history.load_results(conf))
    derived = frame[frame["benchmark"] == f"{TIME} [GFLOP/s]"]
    timed = frame[frame["benchmark"] == TIME].set_index("commit")["value"]
    assert len(derived) == 5 and set(derived["case"]) == {case}
    expected = CASES[case].flops / 1e9 / timed.loc[derived["commit"]].to_numpy()
    assert derived["value"].to_numpy() == pytest.approx(expected)


def test_threshold_from_the_configuration(tmp_path):
    times = {"kron": [0.1, 0.1, 0.1, 0.115, 0.115]}  # 15 % slower: below a 0.2 threshold, above 0.1
    bench = benchmark(TIME, "time", "seconds", list(times))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quiet = write_project(tmp_path / "a", {TIME: (bench, times)}, threshold=0.2)
    loud = write_project(tmp_path / "b", {TIME: (bench, times)}, threshold=0.1)
    assert regressions_of(quiet).empty
    assert set(regressions_of(loud)["params"]) == {"'kron', 'unet1'"}


def test_regression_threshold_takes_the_largest_match():
    class Conf:
        regressions_thresholds: ClassVar = {".*": 0.2, r"bench_conv\.Memory": 0.5}

    assert history.regression_threshold(Conf, "bench_conv.Memory.peakmem('kron')") == 0.5
    assert history.regression_threshold(Conf, "bench_conv.Speed.time('kron')") == 0.2
    Conf.regressions_thresholds = {}
    assert history.regression_threshold(Conf, "x") == history.ASV_DEFAULT_THRESHOLD


def test_parse_param():
    assert history.parse_param("'col2im'") == "col2im"
    assert history.parse_param("3") == 3
    assert history.parse_param("<function f>") == "<function f>"


def test_bad_input_is_refused(tmp_path, planted, capsys):
    with pytest.raises(SystemExit):
        history.main(["--config", str(tmp_path / "missing.json")])
    assert "--config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        history.main(["--config", str(planted), "--bench", "("])
    assert "not a regular expression" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no benchmark results"):
        history.main(["--config", str(planted), "--bench", "no_such_benchmark", "--out", str(tmp_path / "o")])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "asv.conf.json").write_text('{"version": 1, "project": "t", "repo": ".", "results_dir": "results"}')
    with pytest.raises(SystemExit, match="no asv results yet"):
        history.main(["--config", str(empty / "asv.conf.json"), "--out", str(tmp_path / "o2")])


@pytest.mark.parametrize(
    "stats",
    [
        {"ci_99_a": 0.1, "ci_99_b": 0.3},
        {"ci_99_a": -np.inf, "ci_99_b": 0.3},
        {"ci_99_a": 0.2, "ci_99_b": 0.2},
        {},
        {"ci_99_a": 0.3, "ci_99_b": 0.1},
    ],
)
def test_weights_are_asvs(stats):
    """The weights step detection gets are those ``asv publish`` gives (asv keeps its own function private)."""
    from asv import _stats

    assert history.ci_weight(stats) == _stats.get_weight(stats)
