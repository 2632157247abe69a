"""Files that are never half-written, and a lock between processes: the library's, which the harness uses too.

:func:`atomic_write_bytes` writes a temporary sibling (``.<name>.<random>.tmp``), fsyncs it and renames it over the
target (``os.replace`` is atomic on POSIX): a reader, or a process killed mid-write, sees the old file or the
whole new one, never part of one. The file gets the mode a plain ``open`` would create it with
(``0o666 & ~umask``; ``mkstemp`` alone gives 0600). :func:`locked` holds an exclusive ``fcntl.flock`` on
``<path>.lock`` for a read-merge-write of ``path`` (the wisdom file; where ``fcntl`` does not exist, no lock).
Neither creates folders: the caller decides whether a missing one is created or is an error.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write_bytes", "current_umask", "locked"]

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status``, Linux ≥ 4.7); elsewhere set and
    restored at once under a lock (another thread creating a file in that instant could see the wrong mask)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one (see the module
    docstring); the temporary file is removed on any failure. Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock between processes for ``path``: ``fcntl.flock`` on ``<path>.lock``, waited for (none
    where fcntl is missing — writes that merge then still merge, but two at the same instant may lose one)."""
    path = Path(path)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
