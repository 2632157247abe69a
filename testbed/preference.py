"""``auto``'s class rule: configuration classes, the measured preference table and the rule that follows it.

A configuration belongs to one of four classes (:func:`problem_class`): ``nonoverlapping`` (stride == kernel,
dilation 1: the U-Net up-convolution), ``depthwise``, ``grouped`` or ``general``. Each class has an ordered list
of backends; the rule runs the first one that is *available* on this machine and *supports* the configuration
(:meth:`PreferenceTable.choose`). CUDA device arrays go to the CUDA backends, in their own order (the ``device``
entry). So the rule works without torch, and never fails for a valid configuration (``naive``, last in every
list, supports everything).

The lists are data, not code: the table (``preference_tables/<row>.json``, shipped with the package) holds, per
class, the measured medians (ms per call of every backend on every shape of the class) and the order they give
(:func:`preference_order`: fastest geometric mean first, then the unmeasured fallbacks), with the run, machine,
command and date they come from. Regenerate it with ``python -m experiments.tune --suite unet,decoder
--write-table`` (every candidate timed in fresh processes), or from a speed run with ``python -m
experiments.auto_preference RUN_DIR``.

This module sits between the planner (:mod:`testbed.planner`, which asks wisdom and measurements first and
falls back to this rule) and the registry: it imports neither the planner nor any backend.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .problem import Problem
from .registry import Backend, get_backend

__all__ = ["CLASSES", "DEVICE", "TABLES", "PreferenceTable", "problem_class", "preference_order",
           "load_preference", "table_path", "preference_table"]

#: The configuration classes of :func:`problem_class`, and the key of the CUDA device-array list.
CLASSES = ("nonoverlapping", "depthwise", "grouped", "general")
DEVICE = "device"
#: The package folder holding the tables, one ``<row>.json`` per ISA row.
TABLES = "preference_tables"
#: The row the shipped table was measured on (its ``source.machine``: AMD EPYC, Zen 3, AVX2).
MEASURED_ROW = "avx2"


def problem_class(problem: Problem) -> str:
    """The class of ``problem`` in the table: "nonoverlapping", "depthwise", "grouped" or "general"."""
    if problem.is_nonoverlapping:
        return "nonoverlapping"
    if problem.is_depthwise:
        return "depthwise"
    return "grouped" if problem.groups > 1 else "general"


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


def load_preference(text: str, source: str = "preference table") -> dict[str, Any]:
    """The parsed table ``text``, checked: every class and the device entry present, each ``order`` a
    non-empty list of backend names (ValueError naming ``source`` otherwise)."""
    table = json.loads(text)
    for key in (*CLASSES, DEVICE):
        order = table.get("classes", {}).get(key, {}).get("order")
        if not order or not all(isinstance(name, str) for name in order):
            raise ValueError(f"{source}: class {key!r} needs a non-empty 'order' list of backend names, got "
                             f"{order!r}")
    return table


def table_path(row: str) -> Path:
    """Where the table of ISA row ``row`` lives in this package (what ``--write-table`` rewrites)."""
    return Path(__file__).with_name(TABLES) / f"{row}.json"


@dataclass(frozen=True)
class PreferenceTable:
    """The class table the rule follows: ``orders`` per class (and ``device``), measured on ISA row ``row``,
    with the provenance of the measurement (``source``: run, date, machine, command)."""

    row: str
    orders: Mapping[str, tuple[str, ...]]
    source: Mapping[str, Any]

    def order_for(self, problem: Problem, on_device: bool = False) -> tuple[str, tuple[str, ...]]:
        """``(class, order)``: the table entry the rule reads for ``problem`` (the device entry for CUDA arrays)."""
        key = DEVICE if on_device else problem_class(problem)
        return key, self.orders[key]

    def choose(self, problem: Problem, on_device: bool = False) -> Backend:
        """The first backend of ``problem``'s entry that is registered, available and supports it
        (RuntimeError if none: only possible for device arrays without a CUDA backend)."""
        for name in self.order_for(problem, on_device)[1]:
            try:
                candidate = get_backend(name)
            except ValueError:
                continue
            if candidate.available and candidate.supports(problem):
                return candidate
        raise RuntimeError(f"no available backend computes {problem} (on_device={on_device})")


@functools.cache
def preference_table() -> PreferenceTable:
    """The shipped table (read once)."""
    name = f"{MEASURED_ROW}.json"
    table = load_preference(resources.files(__package__).joinpath(TABLES).joinpath(name).read_text(encoding="utf-8"),
                            f"{TABLES}/{name}")
    orders = {key: tuple(table["classes"][key]["order"]) for key in (*CLASSES, DEVICE)}
    return PreferenceTable(row=MEASURED_ROW, orders=orders, source=dict(table.get("source", {})))
