"""Every asv benchmark body runs once, without asv, so CI catches a broken benchmark.

For each benchmark (a ``time_``/``peakmem_``/``track_``/``mem_`` method of a class in
``experiments/benchmarks``) this runs setup_cache → setup → method → teardown as asv does, once per backend on
the smallest parameters: the case with the fewest flops, every spatial rank (on a tiny case of each rank, see
``tiny_rank_cases``), and the first value of every other axis. ``NotImplementedError`` in setup is asv's "skip"
and skips here too (a backend that does not declare a rank skips it).
"""

import importlib
import inspect
import json
import math
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest

import testbed
from testbed.problem import Problem

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_DIR = ROOT / "experiments" / "benchmarks"
BENCHMARK_NAME = re.compile(r"^(time|timeraw|peakmem|mem|track)_")
#: Benchmarks run at one rank here (2-D): each of their runs is a cold Numba compile in a fresh interpreter (~16 s).
ONE_RANK = {"NumbaCompile"}


def benchmark_modules():
    return [
        importlib.import_module(f"experiments.benchmarks.{info.name}")
        for info in pkgutil.iter_modules([str(BENCHMARK_DIR)])
    ]


def benchmark_classes():
    return [
        cls
        for module in benchmark_modules()
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__ and any(BENCHMARK_NAME.match(n) for n in vars(cls))
    ]


def smallest_parameters(cls):
    """Parameter tuples to run: every backend, the smallest case, the first value of any other axis."""
    from experiments.benchmarks.common import CASES

    names = getattr(cls, "param_names", [])
    axes = []
    for name, values in zip(names, getattr(cls, "params", [])):
        if name == "backend":
            axes.append(values)
        elif name == "rank":
            axes.append([2] if cls.__name__ in ONE_RANK else values)
        elif all(v in CASES for v in values):
            axes.append([min(values, key=lambda case: CASES[case].flops)])
        else:
            axes.append(values[:1])
    combos = [()]
    for values in axes:
        combos = [(*combo, value) for combo in combos for value in values]
    return combos


def benchmark_runs():
    for cls in benchmark_classes():
        for method in sorted(n for n in vars(cls) if BENCHMARK_NAME.match(n)):
            for params in smallest_parameters(cls):
                yield pytest.param(
                    cls,
                    method,
                    params,
                    id=f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}.{method}[{'-'.join(map(str, params))}]",
                )


_CACHE = {}


def cached_setup(cls):
    """``setup_cache()``'s value, computed once per class as asv does once per environment."""
    if cls not in _CACHE:
        _CACHE[cls] = cls().setup_cache()
    return _CACHE[cls]


@pytest.fixture
def quick_compile(monkeypatch):
    """One configuration per rank for the compile benchmark (a cold Numba compile of three takes ~15 s here)."""
    from experiments.benchmarks import bench_compile

    one_each = {rank: dict(list(cases.items())[1:2]) for rank, cases in bench_compile.COMPILE_CASES.items()}
    monkeypatch.setattr(bench_compile, "COMPILE_CASES", one_each)


@pytest.fixture
def tiny_rank_cases(monkeypatch):
    """The rank benchmarks on a tiny case of each rank (the real ones take seconds per call in ``naive``)."""
    from experiments.benchmarks import common

    def tiny(rank, **fields):
        return Problem(batch=2, in_channels=4, out_channels=3, dtype=np.dtype(np.float32), rank=rank, **fields)

    cases = {
        1: ("tiny_k4s2p1_1d", tiny(1, in_size=9, kernel_size=4, stride=2, padding=1)),
        2: ("tiny_k2s2", common.CASES["tiny_k2s2"]),
        3: ("tiny_k2s2_3d", tiny(3, in_size=3, kernel_size=2, stride=2)),
    }
    for rank, (case, problem) in cases.items():
        monkeypatch.setitem(common.CASES, case, problem)
        monkeypatch.setitem(common.RANK_CASES, rank, case)


@pytest.mark.parametrize("cls, method, params", list(benchmark_runs()))
def test_benchmark_runs(cls, method, params, quick_compile, tiny_rank_cases):
    instance = cls()
    args = ((cached_setup(cls),) if hasattr(cls, "setup_cache") else ()) + tuple(params)
    try:
        if hasattr(instance, "setup"):
            instance.setup(*args)
    except NotImplementedError as exc:
        pytest.skip(f"setup skips this combination: {exc}")
    try:
        value = getattr(instance, method)(*args)
    finally:
        if hasattr(instance, "teardown"):
            instance.teardown(*args)
    if method.startswith("track_"):
        assert isinstance(value, float) and math.isfinite(value) and value >= 0, value
        assert isinstance(getattr(cls, method).unit, str)
        if "error" in method:
            # Far below this and the benchmark compares the right arrays; parity tests hold the real bounds.
            assert value < 1e-3, f"{params}: relative error {value}"
        else:
            assert value > 0


def test_no_imported_name_looks_like_a_benchmark():
    """asv collects every module-level callable named like a benchmark (``time_call`` imported from
    ``testbed.timing`` once was, and failed with a missing argument): such names must be defined in the module."""
    for module in benchmark_modules():
        for name, value in vars(module).items():
            if BENCHMARK_NAME.match(name) and callable(value):
                assert getattr(value, "__module__", None) == module.__name__, f"{module.__name__}.{name}"


def test_every_backend_is_benchmarked():
    backends = set(testbed.list_backends())
    for cls in benchmark_classes():
        names = getattr(cls, "param_names", [])
        if "backend" in names and cls.__name__ != "NumbaCompile":
            assert set(cls.params[names.index("backend")]) == backends, cls


def test_cases_come_from_the_suites():
    from experiments.benchmarks import common

    for cases in (common.SPEED_CASES, common.MEMORY_CASES, common.ACCURACY_CASES, list(common.RANK_CASES.values())):
        assert cases and all(isinstance(common.CASES[case], Problem) for case in cases)
    assert {rank: common.CASES[case].rank for rank, case in common.RANK_CASES.items()} == {1: 1, 2: 2, 3: 3}
    assert {common.CASES[case].rank for case in common.ACCURACY_CASES} == {1, 2, 3}


def test_rank_benchmarks_skip_ranks_a_backend_does_not_declare():
    """Every backend's rank benchmarks: a rank it does not declare is asv's skip naming the rank, at every layout;
    a rank it declares gets the case's problem in the channels-first or channels-last layout of that rank."""
    from experiments.benchmarks import common

    for name in testbed.available_backends():
        backend = testbed.get_backend(name)
        for rank, case in common.RANK_CASES.items():
            for family in common.LAYOUT_FAMILIES:
                layout = common.layout_of(family, rank)
                if rank not in backend.ranks:
                    with pytest.raises(NotImplementedError, match=f"{rank}-D transposed convolution not supported"):
                        common.require(name, case, timed=False, layout=layout)
                elif backend.supports(common.CASES[case].with_(layout=layout)) and not (
                    case in common.LARGE_CASES and name in common.SLOW_ON_LARGE
                ):
                    problem = common.require(name, case, timed=False, layout=layout)
                    assert (problem.rank, problem.layout) == (rank, layout)
    assert [common.layout_of(family, 3) for family in common.LAYOUT_FAMILIES] == ["NCDHW", "NDHWC"]
    assert [common.layout_of(family, 1) for family in common.LAYOUT_FAMILIES] == ["NCL", "NLC"]


def test_asv_configuration():
    config = pytest.importorskip("asv.config")
    conf = config.Config.load(str(ROOT / "asv.conf.json"))
    assert conf.branches == ["main"]
    assert Path(conf.benchmark_dir).resolve() == BENCHMARK_DIR
    for directory in (conf.results_dir, conf.html_dir, conf.env_dir):
        assert Path(directory).resolve().is_relative_to(ROOT / ".asv"), directory
    assert any("--no-deps" in command for command in conf.build_command)
    # Each commit's wheel replaces the previous one only if the uninstall names the distribution (same version).
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    distribution = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert any(
        re.search(rf"pip uninstall -y {re.escape(distribution)}\b", command) for command in conf.uninstall_command
    ), conf.uninstall_command
    assert json.dumps(conf.matrix)  # a valid matrix (asv parsed the commented JSON)


def test_direction_benchmark_times_each_declared_direction():
    """SpeedByDirection on its smallest case: every direction a backend supports there is timed (a positive
    GFLOP/s), every other one (a direction it does not declare, a case it declines) is asv's skip naming the
    direction."""
    from experiments.benchmarks import bench_conv, common

    case = min(common.DIRECTION_CASES, key=lambda name: common.CASES[name].flops)
    timed = set()
    for name in bench_conv.BACKENDS:
        backend = testbed.get_backend(name)
        if not backend.available or backend.timing_kind is None or name in common.SLOW_ON_LARGE:
            continue
        for direction in bench_conv.SpeedByDirection.params[2]:
            benchmark = bench_conv.SpeedByDirection()
            if backend.unsupported_reason(common.CASES[case], direction) is not None:
                with pytest.raises(NotImplementedError, match=direction):
                    benchmark.setup(name, case, direction)
                continue
            benchmark.setup(name, case, direction)
            benchmark.time_conv_transpose(name, case, direction)
            assert benchmark.track_gflops(name, case, direction) > 0
            timed.add((name, direction))
    assert ("numba_cpu", "backward_data") in timed and ("numba_cpu", "backward_weight") in timed
