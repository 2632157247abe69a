"""One cell of a sweep: what it is (:class:`Cell`, :func:`grid`), the inputs it draws (:func:`cell_rng`), how
a backend is called for it (:func:`call_backend`) and its row (:func:`run_cell`, with the status).

Statuses (:data:`testbed.timing.STATUSES`, mapped by :func:`testbed.timing.not_run_status` and
:func:`testbed.timing.exception_status`, as the library's timings are): ``ok``; ``unsupported`` (the backend
declines a valid configuration, or raises :class:`~testbed.problem.UnsupportedConfiguration`: not a failure);
``unavailable`` (the backend cannot run here, with the reason); ``error`` (any other exception, with its
message; the sweep goes on); ``simulator: not timed`` (a timing experiment never times the CUDA simulator).

This module is the seam between the sweep (:mod:`~.runner`) and where its cells run (:mod:`~.executors`,
:mod:`~.dask_worker`): both import the cell from here, and nothing here imports them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from testbed import api
from testbed.problem import Problem
from testbed.registry import Backend, get_backend
from testbed.testing import call_kwargs
from testbed.timing import STATUSES, exception_status, not_run_status

from .descriptor import PROBLEM_COLUMNS, format_descriptor, problem_columns

__all__ = ["Cell", "grid", "cell_rng", "call_backend", "run_cell", "ROW_COLUMNS", "STATUSES"]

#: The leading columns of every results.csv, before the experiment's own metrics.
ROW_COLUMNS = (
    "cell_key",
    "case",
    "descriptor",
    "backend",
    "resolved_backend",
    "dtype",
    *PROBLEM_COLUMNS,
    "status",
    "message",
)


@dataclass(frozen=True)
class Cell:
    """One (case, problem in its dtype, backend) point of a sweep; ``tags`` are extra (column, value) pairs
    that distinguish cells sharing a case (e.g. ``(("threads", 2),)``) and become columns themselves. A
    ``("direction", d)`` tag (:data:`testbed.registry.DIRECTIONS`) says which computation the cell measures
    (:attr:`direction`; default the forward)."""

    case: str
    problem: Problem
    backend: object  # a registered name, or a Backend object (tests use unregistered ones)
    tags: tuple = ()

    @property
    def backend_name(self) -> str:
        return self.backend.name if isinstance(self.backend, Backend) else str(self.backend)

    @property
    def direction(self) -> str:
        """The direction its ``direction`` tag names, else ``"forward"``."""
        return str(dict(self.tags).get("direction", "forward"))

    @property
    def key(self) -> str:
        tags = ";".join(f"{name}={value}" for name, value in self.tags)
        return (
            f"{self.case}|{format_descriptor(self.problem)}|{self.backend_name}|{self.problem.dtype}|"
            f"{int(self.problem.has_bias)}|{tags}"
        )

    def columns(self) -> dict:
        row = {
            "cell_key": self.key,
            "case": self.case,
            "descriptor": format_descriptor(self.problem),
            "backend": self.backend_name,
            "dtype": str(self.problem.dtype),
        }
        row.update(dict(self.tags))
        row.update(problem_columns(self.problem))
        return row


def grid(cases: dict, backends: Iterable, dtypes: Iterable = (np.float32,), tags: tuple = ()) -> list[Cell]:
    """Every ``case × dtype × backend`` cell of ``cases`` (``{name: Problem}``), cases outermost."""
    dtypes, backends = [np.dtype(d) for d in dtypes], list(backends)
    return [
        Cell(name, problem.with_(dtype=dtype), backend, tags)
        for name, problem in cases.items()
        for dtype in dtypes
        for backend in backends
    ]


def cell_rng(seed: int, cell: Cell) -> np.random.Generator:
    """A generator that depends only on the seed, the case and its problem (not the backend), so every
    backend sees the same inputs and a resumed sweep draws what the interrupted one would have."""
    text = f"{cell.case}|{format_descriptor(cell.problem)}|{cell.problem.dtype}|{cell.problem.has_bias}"
    return np.random.default_rng([int(seed), zlib.crc32(text.encode())])


def call_backend(backend, problem: Problem, x, weight, bias=None):
    """``conv_transpose2d`` (``1d``/``3d`` at ``problem.rank``) of ``problem``'s parameters through the public API
    with the given backend."""
    conv_transpose = getattr(api, f"conv_transpose{problem.rank}d")
    return conv_transpose(x, weight, bias, backend=backend, **call_kwargs(problem))


def run_cell(cell: Cell, measure: Callable[[Cell, Backend], dict]) -> dict:
    """The row of one cell: its columns, a status and message, and ``measure(cell, backend)``'s metrics.

    ``measure`` may put ``"status"``/``"message"`` in its result to override ``ok``. ``resolved_backend`` is the
    backend that computes the cell in its direction (``auto``'s choice; the backend itself otherwise), empty when
    none runs; a backend that does not declare the cell's direction is ``unsupported``, not measured.
    """
    row = cell.columns()
    row.update(resolved_backend="", status="ok", message="")
    try:
        backend = get_backend(cell.backend)
        not_run = not_run_status(backend, cell.problem, cell.direction)
        if not_run is not None:
            row.update(not_run)
        else:
            row["resolved_backend"] = backend.resolve(cell.problem, direction=cell.direction).name
            row.update(measure(cell, backend))
    except Exception as exc:  # one bad cell must not stop the sweep
        row.update(exception_status(exc))
    return row
