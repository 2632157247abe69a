"""The runner never loses or mixes results: a refused run writes nothing, --resume refuses other arguments, one
run at a time per directory (flock), reports rebuilt from rows.jsonl, non-row lines skipped with a warning,
one-line errors for disk full / read-only / missing directories, file modes that follow the umask, and an
unavailable --baseline refused while parsing.

The tests run as root in CI, where chmod does not stop writes: read-only directories are simulated by making
the os functions raise, and the chmod variant is skipped when the effective uid is 0.
"""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments import checkerboard, correctness, report, scaling, seed, speed
from experiments import main as main_job
from experiments.common import RunRefused
from experiments.harness import storage
from experiments.harness.metadata import PROJECT_ROOT
from experiments.harness.reporting import load_run
from experiments.harness.runner import grid, run_sweep
from experiments.harness.storage import (
    ResultsNotWritten,
    RowLog,
    RowLogWarning,
    RunLock,
    RunLocked,
    current_umask,
    holds_run_lock,
)
from testbed.problem import Problem
from testbed.registry import Backend, available_backends, get_backend, list_backends

EXPERIMENTS = (correctness, speed, scaling, seed, checkerboard, main_job)
#: The seed experiment on the oracle alone: 4 cells in well under a second, a complete run directory.
SEED_RUN = ["--quick", "--no-progress", "--backends", "naive"]
ENV = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` but the lock file, with its bytes and mode."""
    return {str(p.relative_to(directory)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != RunLock.FILENAME}


def seed_run(out: Path, *extra: str) -> Path:
    return seed.main([*SEED_RUN, *extra, "--out", str(out)])


def one_line(exc) -> str:
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


# ---- a refused run writes nothing -----------------------------------------------------------------------

@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.NAME)
def test_a_run_refused_because_out_holds_rows_writes_nothing(tmp_path, module):
    out = tmp_path / "run"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"experiment": module.NAME, "seed": 0}))
    (out / "rows.jsonl").write_text(json.dumps({"cell_key": "earlier", "status": "ok"}) + "\n")
    before = snapshot(out)
    with pytest.raises(RunRefused, match=r"already holds a run \(meta\.json, 1 rows in rows\.jsonl\).*--resume"):
        module.main(["--quick", "--no-progress", "--out", str(out)])
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "rows.jsonl"]     # no lock file left either
    assert lockable(out)


def test_the_main_job_is_refused_when_only_a_part_holds_rows(tmp_path):
    part = tmp_path / "run" / "correctness"
    part.mkdir(parents=True)
    (part / "rows.jsonl").write_text(json.dumps({"cell_key": "earlier"}) + "\n")
    before = snapshot(tmp_path / "run")
    with pytest.raises(RunRefused, match=r"1 rows in correctness/rows\.jsonl"):
        main_job.main(["--quick", "--no-progress", "--out", str(tmp_path / "run")])
    assert snapshot(tmp_path / "run") == before


# ---- --resume with other arguments ----------------------------------------------------------------------

@pytest.mark.parametrize("module, first, then, named", [
    (seed, ["--seed", "0"], ["--seed", "1"], "--seed: run 0, this command 1"),
    (seed, [], ["--dtypes", "float64"], "--dtypes: run float32, this command float64"),
    (seed, [], ["--backends", "naive,col2im"], "--backends: run naive, this command naive,col2im"),
    (correctness, ["--dtypes", "float64"], ["--dtypes", "float64", "--fill", "int"],
     "--fill: run normal, this command int"),
    (speed, ["--budget", "0.01"], ["--budget", "0.02"], "--budget: run 0.01, this command 0.02"),
    (speed, ["--budget", "0.01"], ["--budget", "0.01", "--suite", "decoder"],
     "--suite: run default, this command decoder"),
    (speed, ["--budget", "0.01"], ["--budget", "0.01", "--exclude", "none"],
     "--exclude: run unet:naive,unet:fft, this command none"),
    (checkerboard, ["--size", "4"], ["--size", "5"], "--size: run 4, this command 5"),
], ids=["seed", "dtypes", "backends", "fill", "budget", "suite", "exclude", "size"])
def test_resume_refuses_other_arguments_naming_them_and_writes_nothing(tmp_path, module, first, then, named):
    out = tmp_path / "run"
    module.main([*SEED_RUN, *first, "--out", str(out)])
    assert "arguments" in json.loads((out / "meta.json").read_text())
    before = snapshot(out)
    with pytest.raises(RunRefused, match="cannot resume") as info:
        module.main([*SEED_RUN, *then, "--out", str(out), "--resume"])
    assert named in one_line(info.value)
    assert snapshot(out) == before and lockable(out)


def test_resume_names_every_differing_argument_and_quick(tmp_path):
    out = seed_run(tmp_path / "run")
    with pytest.raises(RunRefused) as info:
        seed.main(["--no-progress", "--backends", "naive", "--seed", "7", "--out", str(out), "--resume"])
    message = one_line(info.value)
    assert "--quick: run on, this command off" in message and "--seed: run 0, this command 7" in message


def test_resume_with_the_same_arguments_completes_and_records_the_resume(tmp_path):
    out = seed_run(tmp_path / "run")
    rows = (out / "rows.jsonl").read_text()
    seed.main([*SEED_RUN, "--out", str(out), "--resume", "--seed", "0"])    # the default, spelled out
    assert (out / "rows.jsonl").read_text() == rows                          # nothing left to compute
    assert len(json.loads((out / "meta.json").read_text())["resumed"]) == 1


def test_resume_compares_a_meta_json_from_before_arguments_were_recorded(tmp_path):
    out = seed_run(tmp_path / "run")
    meta = json.loads((out / "meta.json").read_text())
    del meta["arguments"]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RunRefused, match="--seed: run 0, this command 3"):
        seed_run(out, "--seed", "3", "--resume")


def test_resume_refuses_a_run_of_another_experiment(tmp_path):
    out = seed_run(tmp_path / "run")
    before = snapshot(out)
    with pytest.raises(RunRefused, match="it is a 'seed' run, not 'checkerboard'"):
        checkerboard.main([*SEED_RUN, "--out", str(out), "--resume"])
    assert snapshot(out) == before


# ---- one run per directory ------------------------------------------------------------------------------

HOLD_LOCK = ("import sys; from experiments.harness.storage import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
             "print('locked', flush=True); sys.stdin.read()")


def test_a_second_run_into_a_locked_directory_fails_at_once_naming_it_and_the_holder(tmp_path):
    out = seed_run(tmp_path / "run")
    before = snapshot(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=PROJECT_ROOT, env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked) as info:
            seed_run(out, "--resume")
        message = one_line(info.value)
        assert str(out) in message and f"pid {holder.pid}" in message
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            run_sweep(grid({"c": Problem(1, 1, 3, 1, 2)}, ["naive"]), lambda c, b: {}, out, resume=True,
                      progress=False)
        # the command line says it in one line too, exit status 1, within the timeout (it never waits)
        cli = subprocess.run([sys.executable, "-m", "experiments.seed", *SEED_RUN, "--resume", "--out", str(out)],
                             cwd=PROJECT_ROOT, env=ENV, capture_output=True, text=True, timeout=120)
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
    seed_run(out, "--resume")                              # and the run can be completed at once
    assert len(pd.read_csv(out / "results.csv")) == 4


def test_the_lock_is_released_when_the_process_ends_with_an_exception(tmp_path):
    code = ("import sys; from experiments.harness.storage import lock_run_directory; "
            "lock_run_directory(sys.argv[1]); print('locked', flush=True); raise RuntimeError('during the run')")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=PROJECT_ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "locked" and "RuntimeError: during the run" in done.stderr
    assert not (tmp_path / RunLock.FILENAME).exists() and lockable(tmp_path)     # atexit removed it


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=PROJECT_ROOT, env=ENV,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=60)
    holder.stdin.close()
    holder.stdout.close()
    assert (out / RunLock.FILENAME).read_text().strip() == str(holder.pid)      # stale: its owner is dead
    seed_run(out)
    assert len(pd.read_csv(out / "results.csv")) == 4


def test_run_lock_unit(tmp_path):
    first = RunLock(tmp_path).acquire()
    assert (tmp_path / RunLock.FILENAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(RunLocked, match=f"{tmp_path} is in use by another run \\(pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    first.release()                                         # idempotent
    assert not (tmp_path / RunLock.FILENAME).exists()
    with RunLock(tmp_path) as again:
        assert again.held
    assert not again.held and lockable(tmp_path)


# ---- reports from rows.jsonl ----------------------------------------------------------------------------

def test_report_is_rebuilt_from_rows_when_results_csv_is_missing(tmp_path):
    out = seed_run(tmp_path / "run")
    table = pd.read_csv(out / "results.csv")
    (out / "results.csv").unlink()                          # as after a SIGKILL before the first table
    _, frame = load_run(out)
    assert list(frame["cell_key"]) == list(table["cell_key"]) and (frame["status"] == "ok").all()
    report.main([str(out)])
    text = (out / "report.md").read_text()
    assert "(no rows)" not in text and text.count("PASS") == 4
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)     # and results.csv is back


def test_load_run_prefers_the_log_when_results_csv_is_stale(tmp_path):
    out = seed_run(tmp_path / "run")
    table = pd.read_csv(out / "results.csv")
    table.iloc[:2].to_csv(out / "results.csv", index=False)  # a table from before the last rows were logged
    old = (out / "rows.jsonl").stat().st_mtime_ns - 10 ** 9
    os.utime(out / "results.csv", ns=(old, old))
    _, frame = load_run(out)
    assert len(frame) == 4
    # same cells but a newer log (the same mtime on coarse file systems): the log still wins
    table.iloc[:2].to_csv(out / "results.csv", index=False)
    os.utime(out / "rows.jsonl", ns=(old + 2 * 10 ** 9,) * 2)
    assert len(load_run(out)[1]) == 4
    # an up-to-date table is read as it is
    table.assign(extra=1).to_csv(out / "results.csv", index=False)
    os.utime(out / "rows.jsonl", ns=(old, old))
    assert "extra" in load_run(out)[1]


def test_lines_that_are_not_row_objects_are_skipped_with_a_warning_naming_them(tmp_path):
    cells = grid({"c": Problem(1, 1, 3, 1, 2), "d": Problem(1, 1, 4, 1, 2)}, ["naive"])
    first = {"cell_key": cells[0].key, "case": "c", "status": "ok"}
    (tmp_path / "rows.jsonl").write_text("\n".join([json.dumps(first), "5", "[1, 2]", '"text"', "null", "{oops",
                                                    ""]))
    with pytest.warns(RowLogWarning) as caught:
        rows = RowLog(tmp_path / "rows.jsonl").read()
    assert rows == [first]
    messages = [str(w.message) for w in caught]
    for number, kind in ((2, "int"), (3, "list"), (4, "str"), (5, "NoneType")):
        assert any(f"line {number} is a JSON {kind}, not a row object" in m for m in messages), messages
    assert any("line 6 is not valid JSON" in m for m in messages)
    with pytest.warns(RowLogWarning):
        frame = run_sweep(cells, lambda c, b: {}, tmp_path, resume=True, progress=False)
    assert list(frame["cell_key"]) == [c.key for c in cells]


# ---- one-line errors when results cannot be written -----------------------------------------------------

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
    disk_full_after(monkeypatch, 3)                          # meta.json, two rows, then the third row's fsync
    with pytest.raises(ResultsNotWritten) as info:
        seed_run(out)
    assert "rows.jsonl" in one_line(info.value) and "[ENOSPC]" in str(info.value)
    monkeypatch.undo()
    assert not (out / "results.csv").exists()               # its write failed too; the first error is reported
    assert len(RowLog(out / "rows.jsonl").read()) == 3 and no_temporary_files(out) and lockable(out)
    seed_run(out, "--resume")
    assert len(pd.read_csv(out / "results.csv")) == 4


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_directory_is_one_line(tmp_path, monkeypatch, code):
    out = seed_run(tmp_path / "run")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "open", refuse)                  # the lock file
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
    assert not out.exists()                                  # not silently recreated


def test_write_errors_on_the_command_line_are_one_line_without_traceback(tmp_path):
    run = seed_run(tmp_path / "run")
    target = tmp_path / "missing" / "compare.md"
    cli = subprocess.run([sys.executable, "-m", "experiments.report", str(run), str(run), "--out", str(target)],
                         cwd=PROJECT_ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
    assert cli.stderr.strip() == f"cannot write {target}: the directory {target.parent} does not exist [ENOENT]"
    (tmp_path / "file").write_text("")
    cli = subprocess.run([sys.executable, "-m", "experiments.seed", *SEED_RUN, "--out", str(tmp_path / "file" / "x")],
                         cwd=PROJECT_ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "file" / "x") in cli.stderr


# ---- file modes -----------------------------------------------------------------------------------------

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


# ---- --baseline -----------------------------------------------------------------------------------------

def test_an_unknown_baseline_is_refused_while_parsing(capsys):
    with pytest.raises(SystemExit) as info:
        speed.build_parser().parse_args(["--baseline", "nonesuch"])
    assert info.value.code == 2
    assert "--baseline: unknown backend 'nonesuch'; registered: naive" in capsys.readouterr().err


def unavailable_names():
    return [name for name in list_backends() if name not in available_backends()] or \
        [pytest.param("none", marks=pytest.mark.skip(reason="every registered backend is available here"))]


@pytest.mark.parametrize("name", unavailable_names())
def test_an_unavailable_baseline_is_refused_while_parsing(capsys, name):
    with pytest.raises(SystemExit):
        speed.build_parser().parse_args(["--baseline", name])
    err = capsys.readouterr().err
    assert f"backend {name!r} is not available here ({get_backend(name).status}" in err


def test_an_unavailable_test_backend_is_refused_as_baseline(capsys, monkeypatch):
    from testbed import registry
    list_backends()                                          # load the real ones first
    ghost = Backend("t_ghost", "test: never available", get_backend("naive").run,
                    probe=lambda: (False, "no such device"))
    monkeypatch.setitem(registry._REGISTRY, ghost.name, ghost)
    with pytest.raises(SystemExit):
        speed.build_parser().parse_args(["--baseline", "t_ghost"])
    assert "backend 't_ghost' is not available here (no such device); available: naive" in capsys.readouterr().err
    assert speed.build_parser().parse_args(["--baseline", "naive"]).baseline == "naive"
