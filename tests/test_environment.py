"""The TESTBED_* environment variables: one policy (testbed._environ). A malformed value never breaks
``import testbed`` or a call: it gives one warning naming the variable, its value and what is accepted, and the
default is used."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from testbed import _environ, isa, planner, workspace
from testbed.backends import _runtime


def _selected_isa() -> str:
    isa.selected_isa.cache_clear()  # decided once per process: decide again under this test's value
    try:
        return isa.selected_isa()
    finally:
        isa.selected_isa.cache_clear()


ROOT = Path(__file__).resolve().parents[1]

#: Each variable read by testbed, its malformed values and (reader, the default it must fall back to).
READERS = {
    "TESTBED_WORKSPACE_BYTES": (
        workspace._cap_from_environment,
        256 * 2**20,
        ["", "   ", "a lot", "-1", "1.5", "256MiB", "0x10"],
    ),
    "TESTBED_PLANNER": (lambda: planner.get_planner().mode, "estimate", ["fastest", "1", "estimate!"]),
    "TESTBED_NUMBA_CACHE": (_runtime.cache_enabled, True, ["maybe", "2", "enabled"]),
    "TESTBED_ISA": (_selected_isa, isa.host_isa(), ["sse", "avx-512", "1"]),
}


def test_every_variable_the_code_reads_is_covered():
    """A TESTBED_* name in testbed's source that has no entry in the policy's table is an unreviewed variable."""
    import re

    named = set()
    for path in (ROOT / "testbed").rglob("*.py"):
        named |= set(re.findall(r"TESTBED_[A-Z_]+[A-Z]", path.read_text(encoding="utf-8")))
    named -= {"TESTBED_EXAMPLE"}  # the doctests' variable
    assert named <= set(_environ.VARIABLES), named - set(_environ.VARIABLES)


@pytest.mark.parametrize("name", sorted(READERS))
def test_malformed_values_warn_once_and_use_the_default(name, monkeypatch):
    read, default, bad_values = READERS[name]
    monkeypatch.setattr(_environ, "_warned", set())
    monkeypatch.setattr(planner, "_PLANNER", planner.ContextVar("testbed_planner_test", default=None))
    for value in bad_values:
        monkeypatch.setenv(name, value)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert read() == default
            assert read() == default
        if not value.strip():  # blank means unset: the default, silently
            assert caught == []
            continue
        assert len(caught) == 1, [str(w.message) for w in caught]
        message = str(caught[0].message)
        assert issubclass(caught[0].category, _environ.EnvironmentVariableWarning)
        assert f"{name}={value.strip()!r}" in message and "accepted values are" in message, message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TESTBED_WORKSPACE_BYTES", " 1_000 ", 1000),
        ("TESTBED_WORKSPACE_BYTES", "0", 0),
        ("TESTBED_PLANNER", "MEASURE", "measure"),
        ("TESTBED_NUMBA_CACHE", "Off", False),
        ("TESTBED_NUMBA_CACHE", "yes", True),
        ("TESTBED_NUMBA_CACHE", "0", False),
    ],
)
def test_good_values_are_read(name, value, expected, monkeypatch):
    monkeypatch.setattr(planner, "_PLANNER", planner.ContextVar("testbed_planner_test", default=None))
    monkeypatch.setenv(name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert READERS[name][0]() == expected


def test_import_testbed_survives_every_malformed_variable_at_once():
    """Before: TESTBED_WORKSPACE_BYTES="" (or "a lot") made ``import testbed`` raise ValueError,
    TESTBED_NUMBA_CACHE=maybe was silently taken as on, and TESTBED_ISA=sse made the first call raise."""
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "import numpy as np, testbed\n"
        "from testbed import workspace\n"
        "from testbed.backends import _runtime\n"
        "y = testbed.conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), stride=2)\n"
        "print(y.shape, workspace.WORKSPACE_CACHE_BYTES, _runtime.cache_enabled(), testbed.get_planner().mode)\n"
    )
    env = {
        "TESTBED_WORKSPACE_BYTES": "a lot",
        "TESTBED_NUMBA_CACHE": "maybe",
        "TESTBED_PLANNER": "fastest",
        "TESTBED_ISA": "sse",
        "TESTBED_WISDOM": "off",
        "PATH": "/usr/bin:/bin",
        "HOME": str(Path.home()),
    }
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(1,", "1,", "4,", "4)", str(256 * 2**20), "True", "estimate"]
    for name, value in (
        ("TESTBED_WORKSPACE_BYTES", "a lot"),
        ("TESTBED_NUMBA_CACHE", "maybe"),
        ("TESTBED_PLANNER", "fastest"),
        ("TESTBED_ISA", "sse"),
    ):
        assert done.stderr.count(f"{name}={value!r}") == 1, done.stderr
    assert done.stderr.count("EnvironmentVariableWarning") == 4, done.stderr


def test_empty_workspace_bytes_no_longer_breaks_import():
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import testbed"],
        cwd=ROOT,
        env={"TESTBED_WORKSPACE_BYTES": "", "TESTBED_WISDOM": "off", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
