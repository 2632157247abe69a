"""One run at a time per directory (``flock`` on a lock file): a second run fails at once naming the holder,
the lock is held for the run and released at its end, when it fails and when its process dies."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from experiments import seed
from experiments.harness.metadata import PROJECT_ROOT
from experiments.harness.runner import grid, run_sweep
from experiments.harness.storage import RunLock, RunLocked, holds_run_lock
from run_helpers import ENV, SEED_RUN, lockable, one_line, seed_run, snapshot
from testbed.problem import Problem

HOLD_LOCK = (
    "import sys; from experiments.harness.storage import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
    "print('locked', flush=True); sys.stdin.read()"
)


def test_a_second_run_into_a_locked_directory_fails_at_once_naming_it_and_the_holder(tmp_path):
    out = seed_run(tmp_path / "run")
    before = snapshot(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        cwd=PROJECT_ROOT,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked) as info:
            seed_run(out, "--resume")
        message = one_line(info.value)
        assert str(out) in message and f"pid {holder.pid}" in message
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            run_sweep(grid({"c": Problem(1, 1, 3, 1, 2)}, ["naive"]), lambda c, b: {}, out, resume=True, progress=False)
        # the command line says it in one line too, exit status 1, within the timeout (it never waits)
        cli = subprocess.run(
            [sys.executable, "-m", "experiments.seed", *SEED_RUN, "--resume", "--out", str(out)],
            cwd=PROJECT_ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
        assert f"pid {holder.pid}" in cli.stderr.strip() and len(cli.stderr.strip().splitlines()) == 1
        assert snapshot(out) == before
    finally:
        holder.communicate("", timeout=60)
    assert lockable(out)


def test_the_lock_is_held_during_the_run_and_released_at_its_end(tmp_path):
    out = tmp_path / "run"
    seen = []

    def watching(seed_value):
        real = original(seed_value)

        def measure(cell, backend):
            seen.append((holds_run_lock(out), lockable(out)))
            return real(cell, backend)

        return measure

    original = seed.make_measure
    try:
        seed.make_measure = watching
        seed_run(out)
    finally:
        seed.make_measure = original
    assert seen and all(held and not free for held, free in seen)
    assert not (out / RunLock.FILENAME).exists() and lockable(out) and not holds_run_lock(out)


def test_the_lock_is_released_when_the_run_fails(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def interrupted(cell, backend):
        raise KeyboardInterrupt

    monkeypatch.setattr(seed, "make_measure", lambda _seed: interrupted)
    with pytest.raises(KeyboardInterrupt):
        seed_run(out)
    assert lockable(out) and not holds_run_lock(out)
    monkeypatch.undo()
    seed_run(out, "--resume")  # and the run can be completed at once
    assert len(pd.read_csv(out / "results.csv")) == 4


def test_the_lock_is_released_when_the_process_ends_with_an_exception(tmp_path):
    code = (
        "import sys; from experiments.harness.storage import lock_run_directory; "
        "lock_run_directory(sys.argv[1]); print('locked', flush=True); raise RuntimeError('during the run')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=PROJECT_ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "locked" and "RuntimeError: during the run" in done.stderr
    assert not (tmp_path / RunLock.FILENAME).exists() and lockable(tmp_path)  # atexit removed it


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        cwd=PROJECT_ROOT,
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=60)
    holder.stdin.close()
    holder.stdout.close()
    assert (out / RunLock.FILENAME).read_text().strip() == str(holder.pid)  # stale: its owner is dead
    seed_run(out)
    assert len(pd.read_csv(out / "results.csv")) == 4


def test_run_lock_unit(tmp_path):
    first = RunLock(tmp_path).acquire()
    assert (tmp_path / RunLock.FILENAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(RunLocked, match=f"{tmp_path} is in use by another run \\(pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    first.release()  # idempotent
    assert not (tmp_path / RunLock.FILENAME).exists()
    with RunLock(tmp_path) as again:
        assert again.held
    assert not again.held and lockable(tmp_path)
