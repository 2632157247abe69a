"""``auto``: dispatch each configuration to the backend measured fastest for its class.

The rule: a configuration belongs to one of four classes (:func:`problem_class`): ``nonoverlapping``
(stride == kernel, dilation 1: the U-Net up-convolution), ``depthwise``, ``grouped`` or ``general``. Each class
has an ordered list of backends, and ``auto`` runs the first one that is *available* on this machine and
*supports* the configuration (:func:`choose_backend`). CUDA device arrays go to the CUDA backends, in their
own order. So ``auto`` works without torch, and never raises ``UnsupportedConfiguration`` for a valid
configuration (``naive``, last in every list, supports everything).

The lists are data, not code: :data:`PREFERENCE_FILE` (``auto_preference.json``, shipped with the package)
holds, per class, the measured medians (ms per call of every backend on every shape of the class) and the
order they give (:func:`preference_order`: fastest geometric mean first, then the unmeasured fallbacks),
with the run, machine, command and date they come from. Re-measure and regenerate the file when the host or
the backends change, with ``python -m experiments.tune --suite unet,decoder --write-table`` (every candidate
timed in fresh processes), or from a speed run with ``python -m experiments.auto_preference RUN_DIR``. Before
the table, ``auto`` asks the planner (:mod:`testbed.planner`): wisdom measured for the exact problem wins.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from ..planner import planned_backend
from ..problem import Problem
from ..registry import Backend, get_backend, is_device_array, register

__all__ = ["PREFERENCE", "DEVICE_PREFERENCE", "PREFERENCE_FILE", "CLASSES", "DEVICE", "problem_class", "choose_backend",
           "preference_order", "load_preference"]

#: The measured preference table (a file of this package).
PREFERENCE_FILE = "auto_preference.json"
#: The configuration classes of :func:`problem_class`, and the key of the CUDA device-array list.
CLASSES = ("nonoverlapping", "depthwise", "grouped", "general")
DEVICE = "device"


def problem_class(problem: Problem) -> str:
    """The key of :data:`PREFERENCE` for ``problem``: "nonoverlapping", "depthwise", "grouped" or "general"."""
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


def load_preference(text: str | None = None) -> dict[str, Any]:
    """The parsed preference file (or ``text``), checked: every class present, each ``order`` a list of names."""
    table = json.loads(text if text is not None else
                       resources.files(__package__).joinpath(PREFERENCE_FILE).read_text(encoding="utf-8"))
    for key in (*CLASSES, DEVICE):
        order = table.get("classes", {}).get(key, {}).get("order")
        if not order or not all(isinstance(name, str) for name in order):
            raise ValueError(f"{PREFERENCE_FILE}: class {key!r} needs a non-empty 'order' list of backend names")
    return table


_TABLE = load_preference()
#: Per configuration class (see :func:`problem_class`), tried in order; first available + supporting wins.
PREFERENCE: dict[str, tuple[str, ...]] = {key: tuple(_TABLE["classes"][key]["order"]) for key in CLASSES}
#: The same for CUDA device arrays.
DEVICE_PREFERENCE: tuple[str, ...] = tuple(_TABLE["classes"][DEVICE]["order"])


def choose_backend(problem: Problem, on_device: bool = False) -> Backend:
    """The backend ``auto`` runs for ``problem`` (``on_device``: the arrays are CUDA device arrays)."""
    planned = planned_backend(problem, on_device)   # wisdom, or a measurement now (testbed.planner), first
    if planned is not None:
        return planned
    for name in DEVICE_PREFERENCE if on_device else PREFERENCE[problem_class(problem)]:
        try:
            candidate = get_backend(name)
        except ValueError:
            continue
        if candidate.available and candidate.supports(problem):
            return candidate
    raise RuntimeError(f"no available backend computes {problem} (on_device={on_device})")


def dispatch(x, weight, bias, problem):
    return choose_backend(problem, on_device=is_device_array(x)).run(x, weight, bias, problem)


register(Backend(
    name="auto",
    description="fastest measured backend for the configuration's class (see testbed/backends/auto_preference.json)",
    run=dispatch,
    device="any",
    choose=choose_backend,
))
