"""Crash-safe result files, one-line errors when they cannot be written, and the lock of a run directory.

Whole files are written to a temporary sibling and renamed into place (``os.replace`` is atomic on POSIX), with
the mode a plain ``open`` would give them (``0o666 & ~umask``; the library's :mod:`testbed.files`, which the
wisdom file uses too); sweep rows are appended to a JSON-lines log, one
flushed and fsynced line per finished row, so a killed run loses at most the row it was computing. Writes never
create directories: a missing one is an error (only the run directory itself is created, by whoever starts
the run).

An ``OSError`` while writing (disk full, read-only or unwritable directory, a directory that vanished) becomes
:class:`ResultsNotWritten`, whose message names the file and the cause in one line. It and the other errors a
user must act on derive from :class:`HarnessError`, a ``SystemExit``: ``python -m experiments.<name>`` prints
the message and exits with status 1 instead of printing a traceback, and library callers catch it by class.

:class:`RunLock` is an exclusive ``fcntl.flock`` on ``<run dir>/.run.lock`` (the file holds the owner's pid), so
two runs never write into one directory; the kernel drops the lock when its process dies, so a lock file left
by a killed run does not block the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import io
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from testbed import files
from testbed.files import current_umask

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "save_figure",
    "save_arrays",
    "RowLog",
    "RowLogWarning",
    "to_jsonable",
    "HarnessError",
    "ResultsNotWritten",
    "RunLocked",
    "RunLock",
    "lock_run_directory",
    "unlock_run_directory",
    "holds_run_lock",
    "writing",
    "current_umask",
]


class HarnessError(SystemExit):
    """A problem the user must fix, not a bug: its message is one line, and being a ``SystemExit`` the command
    line prints just that message (exit status 1) rather than a traceback."""


class ResultsNotWritten(HarnessError):
    """A result file could not be written (disk full, read-only or unwritable directory, missing directory)."""


class RunLocked(HarnessError):
    """Another process holds the lock of the run directory."""


#: The cause of a failed write, by errno; any other errno is described by its strerror.
_WRITE_CAUSES = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (the directory is not writable by this user)",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.EISDIR: "it is a directory",
}


def _file_system_type(path: Path) -> str | None:
    """The type of the file system ``path`` is on (``/proc/mounts``: the longest mount point above it), or None."""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            points = [line.split()[1:3] for line in mounts if len(line.split()) >= 3]
    except OSError:
        return None
    resolved = str(path.resolve())
    above = [
        (point, kind) for point, kind in points if resolved == point or resolved.startswith(point.rstrip("/") + "/")
    ]
    return max(above, key=lambda item: len(item[0]))[1] if above else None


#: File systems the kernel makes up, where results can never be written.
_VIRTUAL_FILE_SYSTEMS = (
    "proc",
    "sysfs",
    "devtmpfs",
    "cgroup",
    "cgroup2",
    "debugfs",
    "securityfs",
    "tracefs",
    "configfs",
    "pstore",
    "bpf",
    "fusectl",
    "mqueue",
    "hugetlbfs",
)


def _on_virtual_file_system(path: Path) -> str | None:
    """``/proc is on a 'proc' file system, which holds no user files`` when the nearest existing folder of
    ``path`` is on a file system the kernel makes up; else None."""
    existing = next((folder for folder in (path, *path.parents) if folder.exists()), None)
    kind = None if existing is None else _file_system_type(existing)
    return (
        f"{existing} is on a {kind!r} file system, which holds no user files" if kind in _VIRTUAL_FILE_SYSTEMS else None
    )


def write_error(path, exc: OSError) -> ResultsNotWritten:
    """The one-line :class:`ResultsNotWritten` of ``exc``, an error while writing ``path`` (the path as given)."""
    path = Path(path)
    missing = next((folder for folder in reversed(path.parents) if not folder.exists()), None)
    virtual = _on_virtual_file_system(path)
    if virtual is not None:  # /proc answers ENOENT, /sys EPERM: neither says why
        cause = virtual
    elif exc.errno == errno.ENOENT and missing is not None:
        cause = f"the directory {missing} does not exist"
    elif exc.errno == errno.ENOENT:  # every folder exists, yet the entry could not be made
        cause = f"{path.parent} refused a new entry ({exc.strerror or exc})"
    else:
        cause = _WRITE_CAUSES.get(exc.errno, exc.strerror or str(exc))
    code = errno.errorcode.get(exc.errno)
    return ResultsNotWritten(f"cannot write {path}: {cause}" + (f" [{code}]" if code else ""))


@contextlib.contextmanager
def writing(path):
    """Turn an ``OSError`` raised inside the block into :class:`ResultsNotWritten` naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc) from exc


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one, with the mode a
    plain ``open`` would give it (:func:`testbed.files.atomic_write_bytes`, the library's); an ``OSError``
    becomes :class:`ResultsNotWritten`."""
    with writing(path):
        return files.atomic_write_bytes(path, data)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value):
    """``value`` with NumPy scalars/arrays, tuples and non-finite floats made JSON-safe (NaN/inf -> None)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path, frame) -> Path:
    """A pandas DataFrame as CSV (no index)."""
    return atomic_write_text(path, frame.to_csv(index=False))


def save_figure(fig, path, dpi: int = 120) -> Path:
    """A matplotlib figure as PNG, atomically. ``savefig`` picks the PNG renderer (Agg) for this call only;
    pyplot is not imported.

    A figure that pyplot manages (made with ``plt.figure``/``plt.subplots``) is closed afterwards, so loops of
    figures do not accumulate; figures from :func:`~experiments.harness.reporting.new_figure` are not pyplot's.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # only if the caller uses pyplot: importing it here would pick a global backend
        pyplot.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def save_arrays(path, **arrays) -> Path:
    """NumPy arrays as one ``.npz``, atomically (for figures that a report rebuild redraws)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


class RowLogWarning(UserWarning):
    """A line of a row log that is not a row (torn by a killed run, corrupted, or not a JSON object): skipped."""


class RowLog:
    """An append-only JSON-lines file of result rows: each :meth:`append` is one line, flushed and fsynced.

    :meth:`read` returns the JSON objects and skips, with a :class:`RowLogWarning` naming the line, every line
    that is not one: a torn line (a run killed mid-write; :meth:`append` starts the next row on a line of its
    own) or anything else that is not valid JSON, and valid JSON that is not an object (a number, a list...).
    """

    def __init__(self, path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    self._skip(number, "is not valid JSON (torn by a killed run?)")
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    self._skip(number, f"is a JSON {type(row).__name__}, not a row object")
        return rows

    def _skip(self, number: int, why: str) -> None:
        warnings.warn(f"{self.path}, line {number} {why}; skipped", RowLogWarning, stacklevel=3)

    def append(self, row: dict) -> None:
        line = json.dumps(to_jsonable(row)) + "\n"
        with writing(self.path), open(self.path, "a", encoding="utf-8") as handle:
            if handle.tell() and not self._ends_with_newline():
                handle.write("\n")  # a torn line from a killed run stays on its own, unreadable line
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class RunLock:
    """An exclusive lock on a run directory: ``fcntl.flock`` on ``<directory>/.run.lock``, which holds the
    owner's pid for the message a second run gets. Non-blocking: :meth:`acquire` raises :class:`RunLocked` at
    once. :meth:`release` removes the file while still holding the lock; a process that opened the old file just
    before then finds, once it gets the lock, that the path names another file, and starts over."""

    FILENAME = ".run.lock"

    def __init__(self, directory):
        self.directory = Path(directory)
        self.path = self.directory / self.FILENAME
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        with writing(self.path):
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = self._holder(fd)
                    os.close(fd)
                    raise RunLocked(
                        f"{self.directory} is in use by another run (pid {holder}, which holds "
                        f"{self.path}); wait for it to finish, or choose another --out"
                    ) from None
                except BaseException:
                    os.close(fd)
                    raise
                if self._names(fd):
                    break
                os.close(fd)  # locked a file its owner has just removed: try the current one
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except BaseException:
                self._fd = fd
                self.release()
                raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._names(fd):
                self.path.unlink()
        except OSError:
            pass  # a lock file left behind does not block: nobody holds its lock
        finally:
            os.close(fd)  # closing the descriptor drops the lock

    def _names(self, fd: int) -> bool:
        """Whether the lock file's path still names the file open as ``fd``."""
        try:
            on_disk, ours = os.stat(self.path), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (on_disk.st_dev, on_disk.st_ino) == (ours.st_dev, ours.st_ino)

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        return text if text.isdigit() else "unknown"

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


#: The run directories this process holds locked (resolved path: lock), released by unlock_run_directory or
#: at interpreter exit.
_HELD: dict[Path, RunLock] = {}


def lock_run_directory(directory) -> RunLock:
    """Lock ``directory`` for this process (:class:`RunLocked` if another holds it); a no-op if this process
    holds it already (a run started again in the same process after one that ended by an exception)."""
    key = Path(directory).resolve()
    lock = _HELD.get(key)
    if lock is None:
        lock = _HELD[key] = RunLock(key)
        try:
            lock.acquire()
        except BaseException:
            del _HELD[key]
            raise
    return lock


def unlock_run_directory(directory) -> None:
    """Release this process's lock of ``directory``, if it holds one."""
    lock = _HELD.pop(Path(directory).resolve(), None)
    if lock is not None:
        lock.release()


def holds_run_lock(directory) -> bool:
    return Path(directory).resolve() in _HELD


def _release_all() -> None:
    for directory in list(_HELD):
        unlock_run_directory(directory)


atexit.register(_release_all)
