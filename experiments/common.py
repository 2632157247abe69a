"""The command line every experiment shares (--quick, --out, --backends, --seed, --resume; --executor,
--scheduler, --workers, --allow-version-mismatch: where the cells run) and the run directory it writes:
``results/<experiment>/<run-id>/`` with meta.json, rows.jsonl, results.csv, report.md and PNG figures (see
results/README.md).

A run directory is locked from :func:`start_run` to :func:`finish` (or the end of the process): a second run
into it stops at once, naming the holder's pid. Without ``--resume`` a directory that holds a run is refused;
with it, the command's arguments must be those the run recorded in meta.json (``arguments``). Both checks
happen before anything is written.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np

from experiments.harness.metadata import PROJECT_ROOT, collect_metadata, git_state, run_id
from experiments.harness.storage import (
    HarnessError,
    RowLog,
    atomic_write_json,
    lock_run_directory,
    to_jsonable,
    unlock_run_directory,
    writing,
)
from testbed.registry import available_backends, get_backend, list_backends

RESULTS_ROOT = PROJECT_ROOT / "results"
EXECUTORS = ("local", "dask")


def backend_list(text: str) -> list[str]:
    """argparse type: a comma-separated list of registered backend names."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = list_backends()
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--backends must be a comma list of {', '.join(known)}; got {text!r}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return names


def available_backend(text: str) -> str:
    """argparse type: one registered backend that can run here."""
    name, known = text.strip(), list_backends()
    if name not in known:
        raise argparse.ArgumentTypeError(f"unknown backend {text!r}; registered: {', '.join(known)}")
    ok, why = get_backend(name).probe()
    if not ok:
        raise argparse.ArgumentTypeError(
            f"backend {name!r} is not available here ({why}); available: {', '.join(available_backends())}"
        )
    return name


def dtype_list(text: str) -> list[np.dtype]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or any(name not in ("float32", "float64") for name in names):
        raise argparse.ArgumentTypeError(f"--dtypes must be a comma list of float32, float64; got {text!r}")
    return [np.dtype(name) for name in names]


def executor_name(text: str) -> str:
    """argparse type of --executor: ``local``, or ``dask`` where Dask distributed is installed."""
    name = text.strip().lower()
    if name not in EXECUTORS:
        raise argparse.ArgumentTypeError(f"--executor must be one of {', '.join(EXECUTORS)}; got {text!r}")
    if name == "dask":
        from experiments.harness.executors import DaskUnavailable, require_dask

        try:
            require_dask()
        except DaskUnavailable as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"--workers must be a whole number >= 1; got {text!r}")
    return count


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the cells run (see experiments/harness/executors.py)")
    group.add_argument(
        "--executor",
        type=executor_name,
        default="local",
        help="local: every cell in this process, in order (default); dask: every cell a task of a "
        "Dask distributed cluster (needs the dask extra)",
    )
    group.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="with --executor dask: the scheduler of a running cluster, e.g. tcp://host:8786 "
        "(default: start a local cluster for the run and close it afterwards)",
    )
    group.add_argument(
        "--workers",
        type=worker_count,
        default=2,
        help="with --executor dask and no --scheduler: worker processes of the local cluster, one "
        "thread each (default 2)",
    )
    group.add_argument(
        "--allow-version-mismatch",
        action="store_true",
        help="with --executor dask: go on (and record it) when workers run other versions of "
        "NumPy, SciPy, Numba, torch or the testbed than this process",
    )


#: Fresh worker processes per timed cell under process isolation (``--rounds`` of speed and tune).
DEFAULT_ROUNDS = 3


def round_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_rounds_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--rounds N``: under process isolation each of ``what`` timed in N fresh workers, taking turns, samples
    pooled (:class:`testbed.timing.TimingSettings`); read it with :func:`rounds_of`."""
    parser.add_argument(
        "--rounds",
        type=round_count,
        default=None,
        help=f"under process isolation, time each {what} in this many fresh worker processes, "
        f"taking turns, and pool their samples (default {DEFAULT_ROUNDS}; 1 with --quick): a "
        f"burst of other load then falls on all of them alike",
    )


def rounds_of(args) -> int:
    return args.rounds if args.rounds is not None else (1 if args.quick else DEFAULT_ROUNDS)


def make_parser(name: str, description: str, *, dtypes: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats: seconds, for tests")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"run directory (default: results/{name}/<UTC time>-<git hash>/)"
    )
    parser.add_argument(
        "--backends",
        type=backend_list,
        default=None,
        help="comma list of backends (default: every backend available here)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inputs (default 0)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="complete the run in --out (default: the latest run of this experiment), skipping rows already on disk",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if dtypes is not None:
        parser.add_argument(
            "--dtypes",
            type=dtype_list,
            default=dtype_list(dtypes),
            help=f"comma list of float32, float64 (default {dtypes})",
        )
    add_executor_arguments(parser)
    return parser


def sweep_executor(args):
    """The executor of the run's sweep, from --executor, --scheduler, --workers and --allow-version-mismatch."""
    from experiments.harness.executors import DaskExecutor, LocalExecutor

    if args.executor != "dask":
        return LocalExecutor()
    return DaskExecutor(args.scheduler, args.workers, allow_version_mismatch=args.allow_version_mismatch)


def executor_argv(args) -> list[str]:
    """The executor arguments of ``args`` as a command line (for a job that runs other experiments)."""
    argv = ["--executor", args.executor, "--workers", str(args.workers)]
    if args.scheduler is not None:
        argv += ["--scheduler", args.scheduler]
    if args.allow_version_mismatch:
        argv.append("--allow-version-mismatch")
    return argv


def selected_backends(args) -> list[str]:
    return list(args.backends) if args.backends else available_backends()


def latest_run(name: str) -> Path:
    runs = sorted(p for p in (RESULTS_ROOT / name).glob("*") if (p / "meta.json").exists())
    if not runs:
        raise SystemExit(f"--resume: no earlier run of {name!r} under {RESULTS_ROOT / name}; pass --out DIR")
    return runs[-1]


class RunRefused(HarnessError):
    """``--out`` holds a run that this command must not write into."""


#: Arguments that say how to run, not what to compute: they may change on --resume and are not recorded.
OPERATIONAL_ARGUMENTS = ("out", "resume", "no_progress", "executor", "scheduler", "workers", "allow_version_mismatch")
#: Experiments whose work is not a sweep of cells that may run elsewhere: why --executor dask is refused.
LOCAL_ONLY = {"tune": "tuning keeps the winners as wisdom for the machine it runs on: run it on each machine"}
#: What a meta.json written before ``arguments`` was recorded can be compared on.
LEGACY_ARGUMENTS = ("seed", "quick", "backends", "fill")


def recorded_arguments(args) -> dict:
    """The run's arguments as meta.json records them and ``--resume`` compares them: every parsed argument but
    the operational ones, as JSON values, with ``backends`` resolved to the backends the run uses."""
    values = {name: value for name, value in vars(args).items() if name not in OPERATIONAL_ARGUMENTS}
    values["backends"] = selected_backends(args)
    return json.loads(json.dumps(to_jsonable(values)))


def _shown(value) -> str:
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(":".join(map(str, v)) if isinstance(v, list) else str(v) for v in value) or "none"
    return str(value)


def argument_differences(meta: dict, arguments: dict) -> list[str]:
    """``--name: run X, this command Y`` for each argument of the run's meta.json that ``arguments`` differs in
    (arguments only one side knows, from another version of the code, are not compared)."""
    recorded = meta.get("arguments")
    if recorded is None:
        recorded = {name: meta[name] for name in LEGACY_ARGUMENTS if name in meta}
    return [
        f"--{name.replace('_', '-')}: run {_shown(recorded[name])}, this command {_shown(arguments[name])}"
        for name in recorded
        if name in arguments and recorded[name] != arguments[name]
    ]


def run_contents(out: Path) -> list[str]:
    """What makes ``out`` (or a part of it, one level down: the main job's correctness/ and speed/) a run:
    its meta.json and the rows of its log."""
    if not out.is_dir():
        return []
    found = []
    for directory in [out, *sorted(p for p in out.iterdir() if p.is_dir())]:
        prefix = "" if directory == out else f"{directory.name}/"
        if (directory / "meta.json").exists():
            found.append(f"{prefix}meta.json")
        rows = len(RowLog(directory / "rows.jsonl").read())
        if rows:
            found.append(f"{rows} rows in {prefix}rows.jsonl")
    return found


def check_executor_arguments(name: str, args) -> None:
    """:class:`RunRefused` for executor arguments that do not go together, or --executor dask where the
    experiment runs no sweep (:data:`LOCAL_ONLY`)."""
    executor = getattr(args, "executor", "local")
    if executor != "dask" and getattr(args, "scheduler", None) is not None:
        raise RunRefused(f"--scheduler {args.scheduler} needs --executor dask")
    if executor == "dask" and name in LOCAL_ONLY:
        raise RunRefused(f"--executor dask: {name} runs here only ({LOCAL_ONLY[name]})")


def start_run(name: str, args, argv, extra_meta: dict | None = None, *, out: Path | None = None):
    """Create (or, with ``--resume``, reopen) the run directory, lock it and write its meta.json; ``(dir, meta)``.

    Refused (:class:`RunRefused`, before anything is written) without ``--resume`` when the directory holds a
    run, and with it when the run is another experiment's or was made with other arguments (each named with
    both values). ``extra_meta`` (a dict, or a callable giving one, called only for a new run) adds the
    experiment's settings to meta.json. The lock is held until :func:`finish` or the end of the process.
    """
    check_executor_arguments(name, args)
    command = [f"-m experiments.{name}", *(sys.argv[1:] if argv is None else argv)]
    rid = run_id()
    out = out or args.out
    if out is None:
        out = latest_run(name) if args.resume else RESULTS_ROOT / name / rid
    out = Path(out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    lock_run_directory(out)
    try:
        meta = _run_meta(name, rid, args, command, out, extra_meta)
        atomic_write_json(out / "meta.json", meta)
    except BaseException:
        unlock_run_directory(out)
        raise
    return out, meta


def _run_meta(name: str, rid: str, args, command: list, out: Path, extra_meta) -> dict:
    meta_path = out / "meta.json"
    arguments = recorded_arguments(args)
    if args.resume and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("experiment") != name:
            raise RunRefused(f"cannot resume {out}: it is a {meta.get('experiment')!r} run, not {name!r}")
        differences = argument_differences(meta, arguments)
        if differences:
            raise RunRefused(
                f"cannot resume {out}: this command's arguments differ from the run's: "
                f"{'; '.join(differences)}. Resume with the run's arguments (meta.json, "
                f'"arguments"), or start a new run in another --out'
            )
        meta.setdefault("resumed", []).append(
            {
                "utc_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": command,
                "git": git_state(),
            }
        )
        return meta
    if not args.resume:
        found = run_contents(out)
        if found:
            raise RunRefused(
                f"{out} already holds a run ({', '.join(found)}); pass --resume to complete it, or choose another --out"
            )
    extra = dict(extra_meta() if callable(extra_meta) else (extra_meta or {}))
    return collect_metadata(
        name,
        rid,
        seed=args.seed,
        argv=command,
        quick=args.quick,
        extra={"backends": arguments["backends"], "arguments": arguments, **extra},
    )


def finish(run_dir: Path, name: str) -> None:
    """The end of a run: release its directory and say where the report is."""
    unlock_run_directory(run_dir)
    print(f"{name}: report written to {run_dir / 'report.md'}")
