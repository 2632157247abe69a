"""Crash-safe result files: whole files are written to a temporary sibling and renamed into place
(``os.replace`` is atomic on POSIX), and sweep rows are appended to a JSON-lines log, one flushed and
fsynced line per finished row, so a killed run loses at most the row it was computing.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_csv", "save_figure",
           "save_arrays", "RowLog", "to_jsonable"]


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


class RowLog:
    """An append-only JSON-lines file of result rows: each :meth:`append` is one line, flushed and fsynced.

    :meth:`read` tolerates a torn last line (a run killed mid-write) by ignoring it.
    """

    def __init__(self, path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # only a torn final line can be undecodable
                    continue
        return rows

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(to_jsonable(row)) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
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
