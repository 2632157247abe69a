"""Writing results: disk full, read-only and removed directories give one-line errors (on the command line
too, without a traceback) and keep the rows written before; result files follow the umask.

The tests run as root in CI, where chmod does not stop writes: read-only directories are simulated by making
the os functions raise, and the chmod variant is skipped when the effective uid is 0."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments import report
from experiments.harness import storage
from experiments.harness.metadata import PROJECT_ROOT
from experiments.harness.runner import grid, run_sweep
from experiments.harness.storage import ResultsNotWritten, RowLog, RunLock, current_umask
from run_helpers import ENV, SEED_RUN, lockable, one_line, seed_run, snapshot
from testbed.problem import Problem

# ---- write errors are one line ---------------------------------------------------------------------------


def disk_full_after(monkeypatch, calls: int):
    """``os.fsync`` fails with ENOSPC from its ``calls + 1``-th call on."""
    real, count = os.fsync, []

    def fsync(fd):
        count.append(fd)
        if len(count) > calls:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def no_temporary_files(directory: Path) -> bool:
    return not any(directory.rglob("*.tmp"))


def test_disk_full_while_starting_is_one_line_naming_meta_json(tmp_path, monkeypatch):
    disk_full_after(monkeypatch, 0)
    with pytest.raises(ResultsNotWritten) as info:
        seed_run(tmp_path / "run")
    message = one_line(info.value)
    assert "meta.json" in message and "disk full" in message and "[ENOSPC]" in message
    assert no_temporary_files(tmp_path) and lockable(tmp_path / "run")


def test_disk_full_during_the_sweep_keeps_the_rows_before_it(tmp_path, monkeypatch):
    out = tmp_path / "run"
    disk_full_after(monkeypatch, 3)  # meta.json, two rows, then the third row's fsync
    with pytest.raises(ResultsNotWritten) as info:
        seed_run(out)
    assert "rows.jsonl" in one_line(info.value) and "[ENOSPC]" in str(info.value)
    monkeypatch.undo()
    assert not (out / "results.csv").exists()  # its write failed too; the first error is reported
    assert len(RowLog(out / "rows.jsonl").read()) == 3 and no_temporary_files(out) and lockable(out)
    seed_run(out, "--resume")
    assert len(pd.read_csv(out / "results.csv")) == 4


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_directory_is_one_line(tmp_path, monkeypatch, code):
    out = seed_run(tmp_path / "run")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "open", refuse)  # the lock file
    with pytest.raises(ResultsNotWritten, match=f"{RunLock.FILENAME}: .*\\[{errno.errorcode[code]}\\]") as info:
        seed_run(out, "--resume")
    one_line(info.value)
    monkeypatch.undo()
    monkeypatch.setattr(storage.files.tempfile, "mkstemp", refuse)  # an atomically written file (the library's)
    with pytest.raises(ResultsNotWritten, match=f"cannot write {out}/.*\\[{errno.errorcode[code]}\\]"):
        report.main([str(out)])
    assert lockable(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 0555 directory anyway")
def test_a_chmod_read_only_directory_is_one_line(tmp_path):
    out = seed_run(tmp_path / "run")
    out.chmod(0o555)
    try:
        with pytest.raises(ResultsNotWritten, match=r"\[EACCES\]") as info:
            report.main([str(out)])
        one_line(info.value)
    finally:
        out.chmod(0o755)


def test_a_run_directory_removed_during_the_run_is_one_line(tmp_path):
    out = tmp_path / "run"
    cells = grid({"c": Problem(1, 1, 3, 1, 2), "d": Problem(1, 1, 4, 1, 2)}, ["naive"])

    def remove_the_directory(cell, backend):
        shutil.rmtree(out)
        return {}

    with pytest.raises(ResultsNotWritten, match=f"the directory {out} does not exist") as info:
        run_sweep(cells, remove_the_directory, out, progress=False)
    one_line(info.value)
    assert not out.exists()  # not silently recreated


def test_write_errors_on_the_command_line_are_one_line_without_traceback(tmp_path):
    run = seed_run(tmp_path / "run")
    target = tmp_path / "missing" / "compare.md"
    cli = subprocess.run(
        [sys.executable, "-m", "experiments.report", str(run), str(run), "--out", str(target)],
        cwd=PROJECT_ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
    assert cli.stderr.strip() == f"cannot write {target}: the directory {target.parent} does not exist [ENOENT]"
    (tmp_path / "file").write_text("")
    cli = subprocess.run(
        [sys.executable, "-m", "experiments.seed", *SEED_RUN, "--out", str(tmp_path / "file" / "x")],
        cwd=PROJECT_ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1 and "Traceback" not in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "file" / "x") in cli.stderr


# ---- file modes follow the umask -------------------------------------------------------------------------


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_result_files_follow_the_umask(tmp_path, umask):
    assert current_umask() == umask
    out = seed_run(tmp_path / "run")
    modes = {name: mode for name, (_, mode) in snapshot(out).items()}
    assert {"meta.json", "rows.jsonl", "results.csv", "report.md", "seed.png", "seed_arrays.npz"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}


def test_the_umask_fallback_reads_it_without_changing_it(monkeypatch, umask):
    def no_proc(*args, **kwargs):
        raise OSError(errno.ENOENT, "no /proc")

    monkeypatch.setattr(storage, "open", no_proc, raising=False)
    assert current_umask() == umask
    monkeypatch.undo()
    assert current_umask() == umask
