"""Fake backends with known costs for tests/test_planner.py, never registered: ``tune`` receives the Backend
objects themselves, and a worker process unpickles them by importing this module (tests/ is on its sys.path).
Also the body of the concurrent-writer processes.
"""

import time

import numpy as np

from testbed.registry import Backend

#: Seconds per call of each fake (sleep-based, so the order holds on a busy machine).
COSTS = {"fake_fast": 0.001, "fake_medium": 0.010, "fake_slow": 0.060}


def _result(problem, out, cost):
    time.sleep(cost)
    result = np.empty(problem.output_shape, dtype=problem.dtype) if out is None else out
    result.fill(0.0)
    return result


def _fast(x, weight, bias, problem, out=None):
    return _result(problem, out, COSTS["fake_fast"])


def _medium(x, weight, bias, problem, out=None):
    return _result(problem, out, COSTS["fake_medium"])


def _slow(x, weight, bias, problem, out=None):
    return _result(problem, out, COSTS["fake_slow"])


FAST = Backend("fake_fast", "sleeps 1 ms", run=_fast, writes_out=True)
MEDIUM = Backend("fake_medium", "sleeps 10 ms", run=_medium, writes_out=True)
SLOW = Backend("fake_slow", "sleeps 60 ms", run=_slow, writes_out=True)


def write_entries(path, first_batch, count, backend):
    """In a fresh process: record ``count`` decisions (batch sizes ``first_batch...``) into the wisdom file
    ``path``, one write each, as concurrent tuning processes would."""
    import os

    os.environ["TESTBED_WISDOM"] = str(path)
    from testbed import wisdom
    from testbed.problem import Problem

    for batch in range(first_batch, first_batch + count):
        problem = Problem(
            batch=batch, in_channels=2, in_size=4, out_channels=2, kernel_size=2, stride=2, dtype=np.float32
        )
        wisdom.record(problem, "cpu", {"backend": backend, "median_s": {backend: 1e-3}})
    return count
