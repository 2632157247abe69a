"""An output folder that cannot be written: the one-line error names the path the user gave and the real cause.

Before: ``--out /proc/x`` said "the directory /proc does not exist" (procfs answers ENOENT to a mkdir), and a
deeper missing folder was blamed on the wrong level."""

import errno
import os
from pathlib import Path

import pytest

from experiments import seed
from experiments.harness.storage import ResultsNotWritten, write_error


@pytest.mark.skipif(not Path("/proc/mounts").exists(), reason="needs Linux's /proc")
def test_out_on_proc_names_the_path_and_the_file_system():
    with pytest.raises(ResultsNotWritten) as info:
        seed.main(["--quick", "--no-progress", "--out", "/proc/x"])
    message = str(info.value)
    assert message.startswith("cannot write /proc/x: ") and "does not exist" not in message
    assert "/proc is on a 'proc' file system, which holds no user files" in message


def test_a_missing_folder_is_the_first_one_that_is_missing(tmp_path):
    target = tmp_path / "missing" / "deeper" / "report.md"
    message = str(write_error(target, OSError(errno.ENOENT, os.strerror(errno.ENOENT))))
    assert message == f"cannot write {target}: the directory {tmp_path / 'missing'} does not exist [ENOENT]"


def test_an_existing_folder_that_refuses_an_entry_is_not_called_missing(tmp_path):
    target = tmp_path / "x"
    message = str(write_error(target, OSError(errno.ENOENT, os.strerror(errno.ENOENT))))
    assert message == f"cannot write {target}: {tmp_path} refused a new entry (No such file or directory) [ENOENT]"
