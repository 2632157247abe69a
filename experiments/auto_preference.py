"""Regenerate ``auto``'s preference table of this host's ISA row (``testbed/preference_tables/<row>.json``) from a
speed run made on this host.

    python -m experiments.speed --suite unet,decoder --budget 1.0      # writes RUN_DIR
    python -m experiments.auto_preference RUN_DIR                       # rewrites this row's table from it

There is one table per ISA row (:mod:`testbed.preference`); a host writes only the table of the row it runs
(:func:`testbed.isa.selected_isa`, which ``TESTBED_ISA`` caps), never another row's, and a run from another
machine is refused: regenerate that row's table on a host of its kind.

Per configuration class (``testbed.preference.problem_class``) the file keeps every shape's median ms per
backend (``ok`` cells of one dtype, float32 by default) and the order ``preference_order`` derives from them:
host backends for the four CPU classes, CUDA backends (timed on a real GPU) for the device-array list. A class
the run did not measure keeps its entry from the current file (or, for a row without one, from the table that
answers for it now). The run's id, machine, command and date, and the ISA row, go into ``source``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from experiments.harness.descriptor import parse_descriptor
from experiments.harness.reporting import load_run
from experiments.harness.storage import atomic_write_text
from testbed import isa, preference
from testbed.machine import cpu_model
from testbed.registry import get_backend, list_backends

#: Tried after the measured backends of each CPU class: the oracle supports every configuration.
CPU_FALLBACK = ["naive"]


def table_destination(path: Path | None = None) -> Path:
    """Where a regenerated table goes: the shipped table of the ISA row this host runs (``path`` None), or
    ``path`` outside the package's tables folder (a copy to review). Refused (ValueError), since each row's table
    is measured on a host of that kind: another row's table or any other file in that folder, and the shipped
    table while ``TESTBED_ISA`` caps the row below the CPU's own (torch and BLAS would still run their wider
    kernels, so the timings would not be those of a host of the capped row)."""
    row, native = isa.selected_isa(), isa.host_isa()
    own = preference.table_path(row).resolve()
    target = own if path is None else path.resolve()
    if target.parent != own.parent:
        return target
    if target != own:
        raise ValueError(
            f"table path {path}: this host runs the {row!r} ISA row, so only its table ({own}) may be "
            f"written here; each row's table is regenerated on a host of that kind"
        )
    if row != native:
        raise ValueError(
            f"{isa.ISA_ENV}={row!r} caps this {native!r} host: torch and BLAS still run {native!r} "
            f"kernels, so its timings are not those of an {row!r} host; write the table outside "
            f"{own.parent} to review it, or regenerate it on an {row!r} host"
        )
    return target


def row_provenance() -> dict:
    """The ISA row a table is measured for (``isa_row``) and the widest row this host's CPU has (``host_isa``; wider
    when ``TESTBED_ISA`` capped the row: then torch and BLAS still ran their own wider kernels)."""
    return {"isa_row": isa.selected_isa(), "host_isa": isa.host_isa()}


def current_table(path: Path) -> dict:
    """The table ``path`` replaces (its unmeasured classes are kept), or where there is none yet the table that
    answers for this host's row now (the nearest measured row's)."""
    base = path if path.exists() else preference.table_path(preference.preference_table().measured_row)
    text = base.read_text(encoding="utf-8")
    try:
        return preference.load_preference(text, str(base))
    except ValueError:  # written before a class was added: what it has is kept, the new class must be measured
        table = json.loads(text)
        if not table.get("classes", {}).get(preference.DEVICE, {}).get("order"):
            raise
        return table


def build_table(meta: dict, frame, current: dict, dtype: str = "float32") -> dict:
    """The preference table of run ``meta``/``frame`` (a speed ``results.csv``); unmeasured classes from
    ``current``."""
    classes: dict[str, dict] = {}
    registered = set(list_backends())
    for row in frame.itertuples(index=False):
        if (
            row.status != "ok"
            or str(row.dtype) != dtype
            or row.backend not in registered
            or not math.isfinite(float(row.median_s))
        ):
            continue
        backend = get_backend(row.backend)
        if backend.choose is not None:  # a dispatcher is what the table configures, not a candidate
            continue
        key = (
            preference.DEVICE
            if backend.device == "cuda"
            else preference.problem_class(parse_descriptor(row.descriptor))
        )
        entry = classes.setdefault(key, {"descriptors": {}, "median_ms": {}})
        entry["descriptors"][row.case] = row.descriptor
        entry["median_ms"].setdefault(row.case, {})[row.backend] = round(float(row.median_s) * 1e3, 4)
    table_classes = {}
    for key in (*preference.CLASSES, preference.DEVICE):
        if key not in classes:
            if key not in current["classes"]:
                raise ValueError(f"class {key!r}: not measured in this run, and the current table has none")
            table_classes[key] = current["classes"][key]
            continue
        fallback = CPU_FALLBACK if key != preference.DEVICE else list(current["classes"][key]["order"])
        order = preference.preference_order(classes[key]["median_ms"], fallback)
        table_classes[key] = {"order": order, "fallback": fallback, **classes[key]}
    threads, git = meta.get("threads", {}), meta.get("git", {})
    gpu = meta.get("device", {}).get("gpu") or "no GPU"
    return {
        "about": current.get("about", ""),
        "source": {
            **row_provenance(),
            "run_id": meta.get("run_id"),
            "date": meta.get("utc_time"),
            "commit": git.get("commit"),
            "machine": f"{meta.get('cpu_model')}, {threads.get('cpu_count')} cores, {gpu}; numba threads "
            f"{threads.get('numba_threads')}, torch threads {threads.get('torch_threads')}; load "
            f"average at start {threads.get('load_average_1_5_15min')}",
            "command": " ".join(str(a) for a in meta.get("command", [])),
            "settings": f"{dtype}, medians of warm calls through conv_transpose2d (see the run's report.md)",
        },
        "classes": table_classes,
    }


def dumps(table: dict) -> str:
    """JSON with two-space indents, short innermost objects and lists on one line (reviewable diffs)."""
    text = json.dumps(table, indent=2, ensure_ascii=False)
    short = re.compile(r"[\[{][^\[\]{}]*[\]}]")
    return short.sub(lambda m: " ".join(m.group(0).split()) if len(m.group(0)) < 400 else m.group(0), text) + "\n"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a speed run's directory (meta.json, results.csv)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: the table of the ISA row this host runs, testbed/preference_tables/<row>.json",
    )
    args = parser.parse_args(argv)
    try:
        out = table_destination(args.out)
    except ValueError as exc:
        parser.error(str(exc))
    meta, frame = load_run(args.run_dir)
    if frame.empty:
        parser.error(f"{args.run_dir} has no results")
    if meta.get("cpu_model") != cpu_model():
        parser.error(
            f"{args.run_dir} was measured on {meta.get('cpu_model')!r}, this host is {cpu_model()!r}: a "
            f"host writes only the table of its own ISA row ({isa.selected_isa()!r})"
        )
    text = dumps(build_table(meta, frame, current_table(out), args.dtype))
    preference.load_preference(text, str(out), isa.selected_isa())  # the file auto will load must parse
    atomic_write_text(out, text)
    print(f"wrote {out} (the {isa.selected_isa()!r} row's table)")
    return out


if __name__ == "__main__":
    main()
