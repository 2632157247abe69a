"""The Numba disk cache of the backends' kernels (``testbed.backends._runtime``): a corrupt entry is recompiled
and rewritten, ``TESTBED_NUMBA_CACHE=0`` turns it off, a cache file anyone could write is not unpickled, and
with no writable location the kernels compile in memory.

Tested in child processes with a private ``NUMBA_CACHE_DIR``."""

import os
import pickle
import pickletools
import shutil

import pytest

from helpers import ROOT, check, run_python

KERNEL_MODULE = """
import numpy as np
from numba import prange
from testbed.backends._runtime import parallel_kernel


@parallel_kernel
def doubled(a, out):
    for i in prange(a.size):
        out[i] = 2.0 * a[i]
"""

KERNEL_CALL = """
    import warnings
    warnings.simplefilter("always")
    import numpy as np, sys
    sys.path.insert(0, {folder!r})
    import tiny_kernel
    a = np.arange(5.0); out = np.empty(5)
    tiny_kernel.doubled(a, out)
    assert out.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    print("ok")
"""


@pytest.fixture(scope="module")
def pristine_cache(tmp_path_factory):
    """A one-line parallel kernel in its own module, compiled once into a private NUMBA_CACHE_DIR."""
    base = tmp_path_factory.mktemp("tiny_kernel")
    (base / "module").mkdir()
    (base / "module" / "tiny_kernel.py").write_text(KERNEL_MODULE)
    first = run_kernel(base / "module", base / "cache")
    assert check(first).strip() == "ok" and "NumbaCacheWarning" not in first.stderr
    return base


def run_kernel(module, cache, **env):
    return run_python(KERNEL_CALL.format(folder=str(module)), env={"NUMBA_CACHE_DIR": str(cache), **env}, timeout=120)


@pytest.fixture
def tiny_kernel(pristine_cache, tmp_path):
    """(run the kernel with a copy of the compiled cache, that cache folder)."""
    cache = tmp_path / "cache"
    shutil.copytree(pristine_cache / "cache", cache)
    return (lambda **env: run_kernel(pristine_cache / "module", cache, **env)), cache


def _cache_file(cache, suffix):
    (path,) = [p for p in cache.rglob(f"*{suffix}") if "doubled" in p.name and "_serial" not in p.name]
    return path


def _whole_pickles(path):
    """The file is complete pickles again (parsed, not loaded): the index holds two, a data file one."""
    data, count = path.read_bytes(), 0
    while data:
        stop = [pos for _, _, pos in pickletools.genops(data)][-1] + 1  # after the STOP opcode
        data, count = data[stop:], count + 1
    return count == (2 if path.suffix == ".nbi" else 1)


@pytest.mark.parametrize(
    "suffix,damage", [(".nbi", "empty"), (".nbi", "truncated"), (".nbc", "empty"), (".nbc", "truncated")]
)
def test_corrupt_cache_entry_is_recompiled_and_rewritten(tiny_kernel, suffix, damage):
    """As after a power loss; before, every later process failed with an unpickling error that never named
    the cache."""
    run, cache = tiny_kernel
    path = _cache_file(cache, suffix)
    content = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else content[: len(content) // 2])
    damaged = run()
    assert check(damaged).strip() == "ok"
    assert "NumbaCacheWarning" in damaged.stderr and path.name in damaged.stderr
    assert _whole_pickles(path)  # rewritten for the next process


def test_cache_switch_turns_the_disk_cache_off(pristine_cache, tmp_path):
    assert check(run_kernel(pristine_cache / "module", tmp_path, TESTBED_NUMBA_CACHE="0")).strip() == "ok"
    assert not list(tmp_path.rglob("*.nb*"))


def test_untrusted_cache_file_is_not_unpickled(tiny_kernel, tmp_path):
    """A cache index anyone could have written is not loaded: unpickling it would run its code."""
    run, cache = tiny_kernel
    index = _cache_file(cache, ".nbi")
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import numba

    index.write_bytes(pickle.dumps(numba.__version__) + pickle.dumps(Payload()))
    index.chmod(0o666)  # writable by everyone
    result = run()
    assert check(result).strip() == "ok"
    assert not marker.exists()
    assert "NumbaCacheWarning" in result.stderr and "not loading" in result.stderr


def test_no_writable_cache_location_compiles_in_memory(tmp_path):
    """A read-only install, an unwritable HOME and no NUMBA_CACHE_DIR: before, importing the registry failed
    for every backend ("cannot cache function ...: no locator available")."""
    env = {"PYTHONPATH": str(tmp_path), "HOME": str(tmp_path / "home"), "NUMBA_CACHE_DIR": None, "XDG_CACHE_HOME": None}
    if os.geteuid() == 0:
        # Permissions do not stop root: leave Numba only a locator that never applies (its own switch).
        from numba.core import config

        if not hasattr(config, "CACHE_LOCATOR_CLASSES"):
            pytest.skip("running as root, and this Numba has no NUMBA_CACHE_LOCATOR_CLASSES")
        env["NUMBA_CACHE_LOCATOR_CLASSES"] = "IPythonCacheLocator"
    shutil.copytree(ROOT / "testbed", tmp_path / "testbed", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "home").mkdir()
    read_only = [tmp_path / "home", tmp_path / "testbed", *(tmp_path / "testbed").rglob("*")]
    for path in read_only:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        result = run_python(
            f"""
            import warnings
            warnings.simplefilter("always")
            import numpy as np, testbed
            assert testbed.__file__.startswith({str(tmp_path)!r}), testbed.__file__
            for name in ("naive", "numba_cpu", "auto"):
                y = testbed.conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), stride=2, backend=name)
                assert y.sum() == 16.0, name
            print(sorted(testbed.available_backends()))
        """,
            cwd=tmp_path,
            env=env,
        )
        out = check(result)
        assert "numba_cpu" in out and "naive" in out
        assert result.stderr.count("NumbaCacheWarning") == 1 and "no writable cache location" in result.stderr
        assert not list((tmp_path / "testbed").rglob("*.nbi"))
    finally:
        for path in read_only:
            path.chmod(0o755)
