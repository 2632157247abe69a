"""Helpers of the tests of experiment runs (imported as ``from run_helpers import ...``): a complete run
directory in well under a second, a snapshot of one, and the checks every refusal shares (one-line message,
lock released)."""

import os
import stat
from pathlib import Path

from experiments import seed
from experiments.harness.metadata import PROJECT_ROOT
from experiments.harness.storage import RunLock, RunLocked

#: The seed experiment on the oracle alone: 4 cells in well under a second, a complete run directory.
SEED_RUN = ["--quick", "--no-progress", "--backends", "naive"]
ENV = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` but the lock file, with its bytes and mode."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != RunLock.FILENAME
    }


def seed_run(out: Path, *extra: str) -> Path:
    """The seed experiment's run (:data:`SEED_RUN` and ``extra``) into ``out``; its run directory."""
    return seed.main([*SEED_RUN, *extra, "--out", str(out)])


def one_line(exc) -> str:
    """The message of ``exc``, which must be one line."""
    text = str(exc)
    assert text and "\n" not in text, text
    return text


def lockable(directory: Path) -> bool:
    """Whether nobody (this process included: a second lock conflicts with the first) holds the lock."""
    try:
        RunLock(directory).acquire().release()
    except RunLocked:
        return False
    return True
