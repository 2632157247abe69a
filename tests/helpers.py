"""Helpers shared by the tests (imported as ``from helpers import ...``; pytest puts ``tests/`` on the path):
the arrays and :class:`~testbed.Problem` of a call, a call that skips only where the backend declares the
configuration unsupported, and a fresh interpreter running this checkout's ``testbed``.

The tolerances and the relative error every comparison uses are the library's (:mod:`testbed.testing`).
"""

import inspect
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import testbed

#: The checkout under test (its ``testbed`` is what a child process imports).
ROOT = Path(__file__).resolve().parents[1]

#: Two tiny problems for the planner and wisdom tests: a U-Net up-convolution (class nonoverlapping) and a
#: strided overlapping one (class general, which kron does not support).
UP = testbed.Problem(batch=1, in_channels=8, in_size=6, out_channels=4, kernel_size=2, stride=2, dtype=np.float32)
DEC = testbed.Problem(
    batch=1,
    in_channels=4,
    in_size=5,
    out_channels=3,
    kernel_size=3,
    stride=2,
    padding=1,
    output_padding=1,
    dtype=np.float32,
)


def call_arrays(batch, c_in, c_out, size, kernel, params, dtype, bias, seed=0):
    """Standard-normal ``(input, weight, bias)`` for a call with ``params`` (only ``groups`` is read)."""
    rng = np.random.default_rng(seed)
    groups = params.get("groups", 1)
    x = rng.standard_normal((batch, c_in, *size)).astype(dtype)
    w = rng.standard_normal((c_in, c_out // groups, *kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if bias else None
    return x, w, b


_SIGNATURE = inspect.signature(testbed.conv_transpose2d)  # conv_transpose1d's and 3d's are the same

#: The transposed convolution of each spatial rank (the weight's number of axes minus 2).
CONV_TRANSPOSE = {1: testbed.conv_transpose1d, 2: testbed.conv_transpose2d, 3: testbed.conv_transpose3d}


def call_problem(*args, **kwargs) -> testbed.Problem:
    """The :class:`~testbed.Problem` of the call ``conv_transpose2d(*args, **kwargs)`` (host arrays), or of
    ``conv_transpose1d``/``3d``: the weight's number of axes gives the rank."""
    call = _SIGNATURE.bind(*args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    x = a["input"] if hasattr(a["input"], "shape") else np.asarray(a["input"])
    dtype = np.dtype(x.dtype)
    if dtype.kind in "iub":
        dtype = np.dtype(np.float64)  # the API's promotion rule
    return testbed.Problem.from_shapes(
        tuple(x.shape),
        tuple(np.shape(a["weight"])),
        stride=a["stride"],
        padding=a["padding"],
        output_padding=a["output_padding"],
        dilation=a["dilation"],
        groups=a["groups"],
        dtype=dtype,
        has_bias=a["bias"] is not None,
        output_size=a["output_size"],
        layout=a["layout"],
    )


def run_or_skip(impl, *args, **kwargs):
    """Call ``conv_transpose2d`` (``1d``/``3d`` for a 3-D/5-D weight) with backend ``impl``; skip only where
    ``impl`` declares the call unsupported.

    An ``UnsupportedConfiguration`` from a backend that declared support fails the test, and so does any
    declared limit of ``auto``: the declarations are what the capability table (test_capabilities.py) pins.
    """
    problem = call_problem(*args, **kwargs)
    reason = impl.unsupported_reason(problem)
    if reason is not None:
        if impl.name == "auto":
            pytest.fail(f"auto must support every valid configuration, but declares: {reason}")
        pytest.skip(f"{impl.name} declares this configuration unsupported: {reason}")
    return CONV_TRANSPOSE[problem.rank](*args, backend=impl.name, **kwargs)


def run_python(code, *, env=None, timeout=180, cwd=None):
    """Run ``code`` in a fresh interpreter with this checkout first on ``sys.path``; a child that outlives
    ``timeout`` is killed with its whole process group (pool workers included) and the test fails. ``env``
    entries set to None are removed."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    for name, value in list(full_env.items()):
        if value is None:
            del full_env[name]
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd or ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        pytest.fail(f"the child process hung (killed after {timeout} s)\nstdout:\n{out}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def check(result):
    """The stdout of a :func:`run_python` child that exited 0; otherwise the test fails with its output."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    )
    return result.stdout
