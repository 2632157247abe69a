"""Fake backends for tests/test_timing.py, never registered: the timing module receives the Backend objects
themselves, and a worker process unpickles them by importing this module (tests/ is on its sys.path).

``polluter`` leaves state behind in its process (a stand-in for a spinning thread pool or a raised mmap
threshold) and ``victim`` is slow in a process where that state exists; ``fresh_result`` allocates (and
touches) a new output on every call unless given ``out``; ``killer`` kills its own process; ``sleeper``
never finishes in time; ``pid_sleeper`` writes its process id to the file ``$FAKE_WORKER_PID_FILE``, then
sleeps like ``sleeper`` (a test can then check that its worker was ended).
"""

import os
import signal
import time

import numpy as np

from testbed.registry import Backend

#: Set by ``polluter`` in the process it runs in.
POLLUTED = False
#: What ``victim`` costs in a polluted process (and almost nothing in a clean one).
VICTIM_DELAY_S = 0.02


def _filled(problem, out, value=0.0):
    """The result array (``out``, or a fresh one), every element written: a fresh one is faulted in here."""
    result = np.empty(problem.output_shape, dtype=problem.dtype) if out is None else out
    result.fill(value)
    return result


def _polluter(x, weight, bias, problem, out=None):
    global POLLUTED
    POLLUTED = True
    return _filled(problem, out)


def _victim(x, weight, bias, problem, out=None):
    if POLLUTED:
        time.sleep(VICTIM_DELAY_S)
    return _filled(problem, out)


def _fresh_result(x, weight, bias, problem, out=None):
    return _filled(problem, out, 1.0)


def _killer(x, weight, bias, problem, out=None):
    os.kill(os.getpid(), signal.SIGKILL)


def _sleeper(x, weight, bias, problem, out=None):
    time.sleep(600)


def _pid_sleeper(x, weight, bias, problem, out=None):
    with open(os.environ["FAKE_WORKER_PID_FILE"], "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(600)


POLLUTER = Backend("fake_polluter", "sets a process-wide flag", run=_polluter, writes_out=True)
VICTIM = Backend("fake_victim", "slow in a process where the polluter ran", run=_victim, writes_out=True)
FRESH_RESULT = Backend("fake_fresh_result", "allocates and fills its result", run=_fresh_result, writes_out=True)
KILLER = Backend("fake_killer", "SIGKILLs its own process", run=_killer)
SLEEPER = Backend("fake_sleeper", "sleeps for ten minutes", run=_sleeper)
PID_SLEEPER = Backend(
    "fake_pid_sleeper", "writes its pid to $FAKE_WORKER_PID_FILE, sleeps ten minutes", run=_pid_sleeper
)
