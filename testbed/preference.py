"""``auto``'s class rule: configuration classes, the measured preference table and the rule that follows it.

A configuration belongs to one of five classes (:func:`problem_class`): ``nonoverlapping`` (stride == kernel,
dilation 1: the U-Net up-convolution), ``depthwise``, ``grouped``, ``stride1`` (dense, every stride 1: a correlation
with the flipped kernel, where convolution libraries are at their best) or ``general``. Each class has an ordered
list of backends; the rule runs the first one that is *available* on this machine and *supports* the configuration
(:meth:`PreferenceTable.choose`). CUDA device arrays go to the CUDA backends, in their own order (the ``device``
entry). So the rule works without torch, and never fails for a valid configuration (``naive``, last in every list,
supports everything).

The lists are data, not code, and there is one table per instruction-set row (:mod:`testbed.isa`: ``avx512``,
``avx2``, ``generic``), since the backends' speeds, and so their order, change with the vector width: the table
``preference_tables/<row>.json`` (shipped with the package) holds, per class, the measured medians (ms per call of
every backend on every shape of the class) and the order they give (:func:`preference_order`: fastest geometric
mean first, then the unmeasured fallbacks), with the run, machine, command, date and row they come from. The
rule reads the table of the row this process runs (:func:`testbed.isa.selected_isa`), or where that row was never
measured, the nearest measured row's (:data:`NEAREST_ROWS`; :func:`preference_table`). Regenerate the table of the
row a host runs on that host, with ``python -m experiments.tune --suite unet,decoder --write-table`` (every
candidate timed in fresh processes), or from a speed run with ``python -m experiments.auto_preference RUN_DIR``.

This module sits between the planner (:mod:`testbed.planner`, which asks wisdom and measurements first and
falls back to this rule) and the registry: it imports neither the planner nor any backend (only the problem,
the registry and the ISA row).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import isa
from .problem import Problem
from .registry import Backend, get_backend

__all__ = [
    "CLASSES",
    "DEVICE",
    "TABLES",
    "NEAREST_ROWS",
    "PreferenceTable",
    "problem_class",
    "preference_order",
    "load_preference",
    "tables_folder",
    "table_path",
    "measured_rows",
    "preference_table",
]

#: The configuration classes of :func:`problem_class`, and the key of the CUDA device-array list.
CLASSES = ("nonoverlapping", "depthwise", "grouped", "stride1", "general")
DEVICE = "device"
#: The package folder holding the tables, one ``<row>.json`` per ISA row.
TABLES = "preference_tables"
#: For a row without a measured table, the rows whose table answers instead, nearest first: AVX-512 and 128-bit
#: hosts are closest to AVX2's (the next vector width, and the row of the most measured host kind).
NEAREST_ROWS = {"avx512": ("avx2", "generic"), "avx2": ("avx512", "generic"), "generic": ("avx2", "avx512")}


def problem_class(problem: Problem) -> str:
    """The class of ``problem`` in the table: "nonoverlapping", "depthwise", "grouped", "stride1" (one group, every
    stride 1, the taps overlapping) or "general" for a 2-D problem; for 1-D and 3-D the same with the rank
    appended ("nonoverlapping-3d", "general-1d"), since the fastest backend of a class need not be the same at
    every rank."""
    if problem.is_nonoverlapping:
        kind = "nonoverlapping"
    elif problem.is_depthwise:
        kind = "depthwise"
    elif problem.groups > 1:
        kind = "grouped"
    else:
        kind = "stride1" if all(s == 1 for s in problem.stride) else "general"
    return kind if problem.rank == 2 else f"{kind}-{problem.rank}d"


def preference_order(median_ms: Mapping[str, Mapping[str, float]], fallback: Iterable[str] = ()) -> list[str]:
    """The backends of one class, fastest first, from their measured medians.

    ``median_ms`` maps each shape of the class to ``{backend: median ms per call}``. Backends measured on every
    shape are ranked by the geometric mean of their medians (each shape weighs the same, whatever its size);
    the ``fallback`` backends not ranked so follow in the given order.
    """
    shapes = list(median_ms.values())
    measured = set.intersection(*(set(times) for times in shapes)) if shapes else set()
    ranked = sorted(measured, key=lambda name: (sum(math.log(times[name]) for times in shapes), name))
    return ranked + [name for name in fallback if name not in measured]


def load_preference(text: str, source: str = "preference table", row: str | None = None) -> dict[str, Any]:
    """The parsed table ``text``, checked: every class and the device entry present, each ``order`` a
    non-empty list of backend names, and where ``row`` is given, measured on that ISA row (``source.isa_row``);
    ValueError naming ``source`` otherwise."""
    table = json.loads(text)
    for key in (*CLASSES, DEVICE):
        order = table.get("classes", {}).get(key, {}).get("order")
        if not order or not all(isinstance(name, str) for name in order):
            raise ValueError(f"{source}: class {key!r} needs a non-empty 'order' list of backend names, got {order!r}")
    measured_on = table.get("source", {}).get("isa_row")
    if row is not None and measured_on != row:
        raise ValueError(
            f"{source}: source.isa_row must be {row!r} (the row this file is the table of), got {measured_on!r}"
        )
    return table


def _checked_row(row: str) -> str:
    if row not in isa.ISA_ROWS:
        raise ValueError(f"row: expected one of {', '.join(isa.ISA_ROWS)}, got {row!r}")
    return row


def tables_folder() -> Path:
    """The package folder of the tables, ``testbed/preference_tables`` (package data)."""
    return Path(__file__).with_name(TABLES)


def table_path(row: str) -> Path:
    """Where the table of ISA row ``row`` lives in this package (what ``--write-table`` rewrites)."""
    return tables_folder() / f"{_checked_row(row)}.json"


def measured_rows() -> tuple[str, ...]:
    """The ISA rows this package ships a measured table for."""
    return tuple(row for row in isa.ISA_ROWS if table_path(row).is_file())


@dataclass(frozen=True)
class PreferenceTable:
    """The class table the rule follows for ISA row ``row``: ``orders`` per class (and ``device``), measured on
    row ``measured_row`` (``row`` itself, or the nearest measured row where ``row`` has no table: then
    ``fallback`` is true), with the provenance of the measurement (``source``: run, date, machine, command)."""

    row: str
    measured_row: str
    orders: Mapping[str, tuple[str, ...]]
    source: Mapping[str, Any]

    @property
    def fallback(self) -> bool:
        """Whether another row's table answers for ``row`` (``row`` was never measured)."""
        return self.row != self.measured_row

    def describe(self) -> str:
        """One line: which row's table this is, from which machine and run, and whether it stands in."""
        where = f"{str(self.source.get('machine', '?')).split(';')[0]}, run {self.source.get('run_id', '?')}"
        text = f"{TABLES}/{self.measured_row}.json (measured on {where})"
        if self.fallback:
            text += (
                f"; a fallback: this process runs the {self.row!r} row, which has no measured table, so the "
                f"nearest measured row's answers"
            )
        return text

    def order_for(self, problem: Problem, on_device: bool = False) -> tuple[str, tuple[str, ...]]:
        """``(class, order)``: the table entry the rule reads for ``problem`` (the device entry for CUDA arrays). A
        1-D or 3-D class the table has not measured reads the 2-D class's order (backends that do not compute
        the rank are passed over by :meth:`choose`)."""
        key = DEVICE if on_device else problem_class(problem)
        return key, self.orders.get(key) or self.orders[key.split("-")[0]]

    def choose(self, problem: Problem, on_device: bool = False, direction: str = "forward") -> Backend:
        """The first backend of ``problem``'s entry that is registered, available and supports it in
        ``direction`` (RuntimeError if none: only possible for device arrays without a CUDA backend). The
        backward directions follow the forward's order, filtered to the backends that declare the direction
        (no backward table is measured yet)."""
        for name in self.order_for(problem, on_device)[1]:
            try:
                candidate = get_backend(name)
            except ValueError:
                continue
            if candidate.available and candidate.supports(problem, direction):
                return candidate
        raise RuntimeError(f"no available backend computes {problem} (on_device={on_device}, {direction})")


def preference_table(row: str | None = None) -> PreferenceTable:
    """The table the class rule follows for ISA row ``row`` (default: the row this process runs,
    :func:`testbed.isa.selected_isa`); each file is read once.

    Each row's table is measured on a host of that kind (``python -m experiments.tune --suite unet,decoder
    --write-table`` writes the table of the row its host runs, and only that one). A row never measured gets the
    table of the nearest measured row (:data:`NEAREST_ROWS`: ``avx512`` and ``generic`` both fall back to
    ``avx2``), marked ``fallback``, and :func:`testbed.explain` says so.

    Known limitation of the fallback: the shipped ``avx2`` table was measured on an AMD EPYC (Zen 3, AVX2). On an
    AVX-512 host (an Intel Xeon, Sapphire Rapids) ``numba_cpu`` ran the decoder's k3s1p1 at 0.58× torch (issue
    20), when the table's ``general`` class still held stride 1; the ``stride1`` class now has its own order (on
    the AVX2 host, too, torch is ahead there). No AVX-512 host was available to measure that row; the AVX2 table
    is the honest answer until one is (run the command above there), and wisdom (:func:`testbed.tune`) overrides
    it per problem meanwhile.

    Raises
    ------
    ValueError
        ``row`` is not one of :data:`testbed.isa.ISA_ROWS`.
    FileNotFoundError
        No row near ``row`` has a table (a broken installation: the package ships ``avx2.json``).
    """
    return _table_for(isa.selected_isa() if row is None else _checked_row(row))


@functools.cache
def _table_for(row: str) -> PreferenceTable:
    measured = measured_rows()
    for candidate in (row, *NEAREST_ROWS[row]):
        if candidate in measured:
            path = table_path(candidate)
            table = load_preference(path.read_text(encoding="utf-8"), str(path), candidate)
            orders = {key: tuple(entry["order"]) for key, entry in table["classes"].items()}
            return PreferenceTable(
                row=row,
                measured_row=candidate,
                orders=MappingProxyType(orders),
                source=MappingProxyType(table["source"]),
            )
    raise FileNotFoundError(
        f"no preference table for ISA row {row!r} nor its nearest rows {NEAREST_ROWS[row]} in {tables_folder()}"
    )
