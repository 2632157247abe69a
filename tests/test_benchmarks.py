"""Every asv benchmark body runs once, without asv, so CI catches a broken benchmark.

For each benchmark (a ``time_``/``peakmem_``/``track_``/``mem_`` method of a class in
``experiments/benchmarks``) this runs setup_cache → setup → method → teardown as asv does, once per backend on
the smallest parameters: the case with the fewest flops, and the first value of every other axis.
``NotImplementedError`` in setup is asv's "skip" and skips here too.
"""

import importlib
import inspect
import json
import math
import pkgutil
import re
from pathlib import Path

import pytest

import testbed
from testbed.problem import Problem

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_DIR = ROOT / "experiments" / "benchmarks"
BENCHMARK_NAME = re.compile(r"^(time|timeraw|peakmem|mem|track)_")


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
    """One configuration for the compile benchmark (a cold Numba compile of three takes ~15 s here)."""
    from experiments.benchmarks import bench_compile

    monkeypatch.setattr(bench_compile, "COMPILE_CASES", bench_compile.COMPILE_CASES[1:2])


@pytest.mark.parametrize("cls, method, params", list(benchmark_runs()))
def test_benchmark_runs(cls, method, params, quick_compile):
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

    for cases in (common.SPEED_CASES, common.MEMORY_CASES, common.ACCURACY_CASES):
        assert cases and all(isinstance(common.CASES[case], Problem) for case in cases)


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
