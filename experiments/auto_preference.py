"""Regenerate ``auto``'s preference table (``testbed/preference_tables/``) from a speed run.

    python -m experiments.speed --suite unet,decoder --budget 1.0      # writes RUN_DIR
    python -m experiments.auto_preference RUN_DIR                       # rewrites the table from it

Per configuration class (``testbed.preference.problem_class``) the file keeps every shape's median ms per
backend (``ok`` cells of one dtype, float32 by default) and the order ``preference_order`` derives from them:
host backends for the four CPU classes, CUDA backends (timed on a real GPU) for the device-array list. A class
the run did not measure keeps its entry from the current file. The run's id, machine, command and date go
into ``source``.
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
from testbed import preference
from testbed.registry import get_backend, list_backends

DEFAULT_OUT = preference.table_path(preference.MEASURED_ROW)
#: Tried after the measured backends of each CPU class: the oracle supports every configuration.
CPU_FALLBACK = ["naive"]


def build_table(meta: dict, frame, current: dict, dtype: str = "float32") -> dict:
    """The preference table of run ``meta``/``frame`` (a speed ``results.csv``); unmeasured classes from
    ``current``."""
    classes: dict[str, dict] = {}
    registered = set(list_backends())
    for row in frame.itertuples(index=False):
        if (row.status != "ok" or str(row.dtype) != dtype or row.backend not in registered
                or not math.isfinite(float(row.median_s))):
            continue
        backend = get_backend(row.backend)
        if backend.choose is not None:  # a dispatcher is what the table configures, not a candidate
            continue
        key = (preference.DEVICE if backend.device == "cuda"
               else preference.problem_class(parse_descriptor(row.descriptor)))
        entry = classes.setdefault(key, {"descriptors": {}, "median_ms": {}})
        entry["descriptors"][row.case] = row.descriptor
        entry["median_ms"].setdefault(row.case, {})[row.backend] = round(float(row.median_s) * 1e3, 4)
    table_classes = {}
    for key in (*preference.CLASSES, preference.DEVICE):
        if key not in classes:
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
    return short.sub(lambda m: " ".join(m.group(0).split()) if len(m.group(0)) < 400 else m.group(0),
                     text) + "\n"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a speed run's directory (meta.json, results.csv)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    meta, frame = load_run(args.run_dir)
    if frame.empty:
        parser.error(f"{args.run_dir} has no results")
    base = args.out if args.out.exists() else DEFAULT_OUT     # unmeasured classes: from the file replaced
    current = preference.load_preference(base.read_text(encoding="utf-8"), str(base))
    text = dumps(build_table(meta, frame, current, args.dtype))
    preference.load_preference(text, str(args.out))  # the file auto will load must parse
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
