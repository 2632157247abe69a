"""The command line every experiment shares (--quick, --out, --backends, --seed, --resume) and the run
directory it writes: ``results/<experiment>/<run-id>/`` with meta.json, rows.jsonl, results.csv, report.md
and PNG figures (see results/README.md).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np

from experiments.harness.metadata import PROJECT_ROOT, collect_metadata, git_state, run_id
from testbed.registry import available_backends, list_backends
from experiments.harness.storage import atomic_write_json

RESULTS_ROOT = PROJECT_ROOT / "results"


def backend_list(text: str) -> list[str]:
    """argparse type: a comma-separated list of registered backend names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = list_backends()
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--backends must be a comma list of {', '.join(known)}; got {text!r}"
                                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return names


def dtype_list(text: str) -> list[np.dtype]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in ("float32", "float64") for name in names):
        raise argparse.ArgumentTypeError(f"--dtypes must be a comma list of float32, float64; got {text!r}")
    return [np.dtype(name) for name in names]


def make_parser(name: str, description: str, *, dtypes: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats: seconds, for tests")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"run directory (default: results/{name}/<UTC time>-<git hash>/)")
    parser.add_argument("--backends", type=backend_list, default=None,
                        help="comma list of backends (default: every backend available here)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inputs (default 0)")
    parser.add_argument("--resume", action="store_true",
                        help="complete the run in --out (default: the latest run of this experiment), "
                             "skipping rows already on disk")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if dtypes is not None:
        parser.add_argument("--dtypes", type=dtype_list, default=dtype_list(dtypes),
                            help=f"comma list of float32, float64 (default {dtypes})")
    return parser


def selected_backends(args) -> list[str]:
    return list(args.backends) if args.backends else available_backends()


def latest_run(name: str) -> Path:
    runs = sorted(p for p in (RESULTS_ROOT / name).glob("*") if (p / "meta.json").exists())
    if not runs:
        raise SystemExit(f"--resume: no earlier run of {name!r} under {RESULTS_ROOT / name}; pass --out DIR")
    return runs[-1]


def start_run(name: str, args, argv, extra_meta: dict | None = None, *, out: Path | None = None):
    """Create (or, with ``--resume``, reopen) the run directory and write its meta.json; ``(dir, meta)``."""
    command = [f"-m experiments.{name}", *(sys.argv[1:] if argv is None else argv)]
    rid = run_id()
    out = out or args.out
    if out is None:
        out = latest_run(name) if args.resume else RESULTS_ROOT / name / rid
    out = Path(out)
    meta_path = out / "meta.json"
    if args.resume and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta.setdefault("resumed", []).append({
            "utc_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "git": git_state()})
    else:
        out.mkdir(parents=True, exist_ok=True)
        extra = dict(extra_meta() if callable(extra_meta) else (extra_meta or {}))
        meta = collect_metadata(name, rid, seed=args.seed, argv=command, quick=args.quick,
                                extra={"backends": selected_backends(args), **extra})
    atomic_write_json(meta_path, meta)
    return out, meta


def finish(run_dir: Path, name: str) -> None:
    print(f"{name}: report written to {run_dir / 'report.md'}")
