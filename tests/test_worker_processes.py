"""Timing workers run only testbed's code (testbed._worker): a research script without an
``if __name__ == "__main__":`` guard runs its body once when it calls ``tune`` or uses the ``measure`` planner,
from a file, ``python -c`` or standard input; Ctrl-C in the parent leaves no worker behind.

Before: workers were started with multiprocessing's ``spawn``, which re-ran the script's body in every worker
(the nested ``tune`` there failed with multiprocessing's bootstrapping error, and the outer one returned
winner None)."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from testbed._worker import MainModuleError
from testbed.timing import WorkerError, run_in_worker

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

#: The top of every script: it counts its own runs (one line per run of its body) and puts the worktree first
#: on its path, as a user's installed testbed would be.
HEADER = f"""
import os, sys
sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]
with open(os.environ["BODY_LOG"], "a") as log:
    log.write("body\\n")
import numpy as np
import testbed
from testbed.timing import TimingSettings
QUICK = TimingSettings(warmup=0, min_repeats=3, max_repeats=3, budget_s=0.0, min_sample_s=0.0, warmup_s=0.0,
                       worker_timeout_s=120.0)
"""

TUNE_THREE = (
    HEADER
    + """
winners = []
for channels in (2, 3, 4):
    x = np.zeros((1, channels, 4, 4), np.float32)
    w = np.zeros((channels, 2, 2, 2), np.float32)
    winners.append(testbed.tune(x, w, stride=2, candidates=["col2im"], settings=QUICK).winner)
print("WINNERS", *winners)
"""
)

MEASURE_PLANNER = (
    HEADER
    + """
testbed.planner.list_backends = lambda: ["naive", "col2im", "auto"]     # one candidate: a worker costs seconds
x = np.ones((1, 2, 4, 4), np.float32)
w = np.ones((2, 2, 2, 2), np.float32)
testbed.set_planner("measure", settings=QUICK)
y = testbed.conv_transpose2d(x, w, stride=2)
why = testbed.explain(x, w, stride=2)
assert np.allclose(y, testbed.conv_transpose2d(x, w, stride=2, backend="naive"))
print("WINNERS", why.reason, why.backend)
"""
)


def run_script(tmp_path, code: str, how: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``code`` as a file, with ``python -c`` or from standard input; the result and its body's run count."""
    log = tmp_path / "body.log"
    env = {**os.environ, "BODY_LOG": str(log), "TESTBED_WISDOM": str(tmp_path / "wisdom.json")}
    env.pop("PYTHONPATH", None)
    script = tmp_path / "research.py"  # a plain script, no __main__ guard
    script.write_text(code)
    command = {
        "file": [sys.executable, str(script)],
        "-c": [sys.executable, "-c", code],
        "stdin": [sys.executable, "-"],
    }[how]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        input=code if how == "stdin" else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    runs = len(log.read_text().splitlines()) if log.exists() else 0
    return done, runs


def test_a_guardless_script_tuning_three_problems_runs_once_and_gets_three_winners(tmp_path):
    done, runs = run_script(tmp_path, TUNE_THREE, "file")
    assert done.returncode == 0, done.stderr
    assert runs == 1, done.stderr
    winners = done.stdout.split("WINNERS", 1)[1].split()
    assert winners == ["col2im"] * 3, done.stdout


def test_a_guardless_script_using_the_measure_planner_runs_once(tmp_path):
    done, runs = run_script(tmp_path, MEASURE_PLANNER, "file")
    assert done.returncode == 0, done.stderr
    assert runs == 1, done.stderr
    reason, backend = done.stdout.split("WINNERS", 1)[1].split()
    assert (reason, backend) == ("wisdom", "col2im"), done.stdout


@pytest.mark.parametrize("how", ["-c", "stdin"])
def test_workers_start_from_python_c_and_standard_input(tmp_path, how):
    code = HEADER + textwrap.dedent("""
        from testbed.timing import run_in_worker
        print("WINNERS", run_in_worker(divmod, 7, 2), run_in_worker(os.getcwd))
    """)
    done, runs = run_script(tmp_path, code, how)
    assert done.returncode == 0, done.stderr
    assert runs == 1 and done.stdout.split("WINNERS", 1)[1].split() == ["(3,", "1)", str(tmp_path)], done.stdout


@pytest.mark.xfail(
    raises=subprocess.TimeoutExpired,
    strict=False,
    reason="in the full CPU suite (never alone or with this file) the interrupted script sometimes did not finish "
    "after its SIGINT: reproduced by running this test from a process whose SIGINT is ignored or blocked, which its "
    "child inherits; the script now restores both and reports what it inherited (in the timeout's message) -- kept "
    "non-strict until a full-suite run confirms; any other failure of this test still fails the suite",
)
def test_ctrl_c_during_tune_leaves_no_worker_behind(tmp_path):
    pid_file = tmp_path / "worker.pid"
    code = HEADER + textwrap.dedent("""
        import signal, threading, time
        import timing_fakes

        # A user's terminal delivers Ctrl-C to a script whose SIGINT is neither ignored nor blocked; a child of the
        # test process inherits both from it (whatever an earlier test's libraries left), so the script restores
        # them and reports what it inherited.
        inherited = (signal.getsignal(signal.SIGINT), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
        with open(os.environ["FAKE_WORKER_PID_FILE"] + ".sigint", "w") as state:
            state.write(f"handler {inherited[0]!r}, blocked {inherited[1]}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])

        def interrupt_once_the_worker_runs():
            while not os.path.exists(os.environ["FAKE_WORKER_PID_FILE"]):
                time.sleep(0.02)
            print("INTERRUPT", time.monotonic(), flush=True)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt_once_the_worker_runs, daemon=True).start()
        x = np.zeros((1, 2, 4, 4), np.float32)
        w = np.zeros((2, 2, 2, 2), np.float32)
        try:
            testbed.tune(x, w, stride=2, candidates=[timing_fakes.PID_SLEEPER], settings=QUICK)
        except KeyboardInterrupt:
            print("INTERRUPTED", time.monotonic(), flush=True)
    """)
    os.environ["FAKE_WORKER_PID_FILE"] = str(pid_file)
    try:
        done, runs = run_script(tmp_path, code, "file", timeout=60)
    except subprocess.TimeoutExpired as timeout:
        state = pid_file.with_name(pid_file.name + ".sigint")
        inherited = state.read_text() if state.exists() else "not recorded"
        raise subprocess.TimeoutExpired(
            timeout.cmd, timeout.timeout, f"{timeout.output}\nSIGINT inherited: {inherited}"
        ) from timeout
    finally:
        del os.environ["FAKE_WORKER_PID_FILE"]
    assert done.returncode == 0 and runs == 1, done.stderr
    interrupted_at = float(done.stdout.split("INTERRUPT", 1)[1].split()[0])
    handled_at = float(done.stdout.split("INTERRUPTED", 1)[1].split()[0])
    assert handled_at - interrupted_at < 10, done.stdout  # the worker was killed, not waited for
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(worker, 9)
        pytest.fail(f"worker {worker} outlived the interrupted script")


def test_run_in_worker_keeps_its_semantics():
    assert run_in_worker(divmod, 7, 2) == (3, 1)
    with pytest.raises(WorkerError, match="ZeroDivisionError in the worker: integer division or modulo by zero"):
        run_in_worker(divmod, 1, 0)
    with pytest.raises(WorkerError, match=r"died without a result \(killed by SIGABRT\)"):
        run_in_worker(os.abort)
    with pytest.raises(WorkerError, match=r"died without a result \(exit status 3\)"):
        run_in_worker(os._exit, 3)
    with pytest.raises(WorkerError, match=r"timed out after 0\.5 s and was killed"):
        run_in_worker(time.sleep, 60, timeout_s=0.5)
    os.environ["TESTBED_TEST_WORKER_VARIABLE"] = "inherited"
    try:
        assert run_in_worker(os.getenv, "TESTBED_TEST_WORKER_VARIABLE") == "inherited"
    finally:
        del os.environ["TESTBED_TEST_WORKER_VARIABLE"]
    assert run_in_worker(os.getpid) != os.getpid()


def _defined_in_main():
    return 1


def test_something_from_main_is_refused_before_a_worker_starts(monkeypatch):
    monkeypatch.setattr(_defined_in_main, "__module__", "__main__")
    with pytest.raises(MainModuleError, match="_defined_in_main is defined in the script being run"):
        run_in_worker(_defined_in_main)
    with pytest.raises(TypeError, match="importable module"):
        run_in_worker(divmod, _defined_in_main, 1)


def test_a_module_run_with_python_m_sends_its_functions_by_their_importable_name(tmp_path):
    """``python -m package.module`` (how every experiment runs): the module's own functions reach a worker by
    the module's importable name, and its ``__main__`` block runs once, in the parent only."""
    package = tmp_path / "research_jobs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "job.py").write_text(
        textwrap.dedent(
            f"""
            import os, sys
            sys.path[:0] = [{str(ROOT)!r}]
            from testbed.timing import run_in_worker

            def square(x):
                return x * x

            if __name__ == "__main__":
                print("main", run_in_worker(square, 7), run_in_worker(os.getpid) != os.getpid())
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "research_jobs.job"], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["main 49 True"]
