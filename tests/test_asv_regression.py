"""experiments.asv_regression's parts that run without asv: the planted slowdown computes the same answer twice,
asv's --bench expression selects exactly the benchmarks meant, and asv's comparison tables are read right.
(The whole check builds an asv environment, minutes: ``make bench-regression-check``.)"""

import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import testbed
import testbed.registry
from experiments import asv_regression

BACKENDS_DIR = Path(testbed.__file__).parent / "backends"


@pytest.mark.parametrize("module", sorted(BACKENDS_DIR.glob("*.py")), ids=lambda p: p.stem)
def test_planting_gives_valid_code_or_a_clear_refusal(module, tmp_path):
    copy = tmp_path / module.name
    shutil.copyfile(module, copy)
    try:
        wrapper = asv_regression.plant_slowdown(copy, module.stem)
    except ValueError as exc:
        assert module.stem in str(exc) and "run=" in str(exc)
        return
    text = copy.read_text()
    compile(text, str(copy), "exec")
    assert f"run={wrapper}," in text and f"def {wrapper}(" in text


def test_the_planted_kron_computes_twice_and_the_same(tmp_path, monkeypatch):
    copy = tmp_path / "kron.py"
    shutil.copyfile(BACKENDS_DIR / "kron.py", copy)
    asv_regression.plant_slowdown(copy, "kron")
    registered = []
    monkeypatch.setattr(testbed.registry, "register", registered.append)
    spec = importlib.util.spec_from_file_location("testbed.backends._planted_kron", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (backend,) = registered
    calls = []
    original = module.outer_product_blocks

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "outer_product_blocks", counted)
    problem = testbed.Problem(batch=2, in_channels=3, in_size=5, out_channels=4, kernel_size=2, stride=2)
    x, weight, bias = problem.random_arrays(0)
    y = backend.run(x, weight, bias, problem)
    assert len(calls) == 2
    np.testing.assert_array_equal(y, original(x, weight, bias, problem))


def test_benchmark_regex_selects_the_named_backends_on_the_case():
    regex = asv_regression.benchmark_regex(["kron", "col2im"], "unet1")
    name = asv_regression.BENCHMARK
    assert re.search(regex, f"{name}('kron', 'unet1')")
    assert re.search(regex, f"{name}('col2im', 'unet1')")
    assert not re.search(regex, f"{name}('torch', 'unet1')")
    assert not re.search(regex, f"{name}('kron', 'unet2')")
    assert not re.search(regex, "bench_conv.Speed.track_gflops('kron', 'unet1')")


def test_flagged_worse_reads_asv_tables():
    """The layout of ``asv compare --split`` (0.6): change mark, before, after, ratio, name."""
    table = """
Change   | Before [fb922875]  | After [d3db85d6]  | Ratio | Benchmark (Parameter)
|--------|--------------------|-------------------|-------|-----------------------------|
| +      | 112±3ms            | 231±8ms           | 2.06  | Speed.time('kron', 'unet1') |
| -      | 200±3ms            | 100±8ms           | 0.5   | Speed.time('torch', 'unet1') |
|        | 257±100ms          | 447±40ms          | ~1.74 | Speed.time('col2im', 'unet1') |
|        | n/a                | n/a               | n/a   | Speed.time('kron', 'k4s2g8') |
"""
    assert asv_regression.flagged_worse(table) == ["Speed.time('kron', 'unet1')"]
    assert asv_regression.flagged_worse("BENCHMARKS NOT SIGNIFICANTLY CHANGED.") == []
