"""What a result needs to be reproducible: run id, code version, library versions, the machine, and its
measured float32 GEMM rate and copy bandwidth (the roofline ceilings).

The machine is :mod:`testbed.machine`'s description, under meta.json's keys (:func:`machine_meta`); this module
adds what only the harness knows: the run, the experiment's own libraries, the ceilings and the report lines.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import sys
import time
from pathlib import Path

import numpy as np

from testbed import machine

__all__ = [
    "PROJECT_ROOT",
    "EXPERIMENT_LIBRARIES",
    "git_state",
    "run_id",
    "collect_metadata",
    "machine_meta",
    "measure_gemm_gflops",
    "measure_copy_gbps",
    "record_end_state",
    "thread_pools_after_every_backend",
    "machine_state_lines",
]

#: The repository checkout the experiments run from (this file is never installed as a wheel).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The harness's own libraries, recorded besides the library's (:data:`testbed.machine.LIBRARIES`).
EXPERIMENT_LIBRARIES = ("pandas", "matplotlib")


def git_state(root=PROJECT_ROOT) -> dict:
    """``{"commit": full hash or None, "short": 7 chars or "nogit", "dirty": bool or None}`` of the checkout."""
    return machine.git_state(root)


def run_id(now: _dt.datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSZ-<short git hash>``, e.g. ``20250101T120000Z-a3e5f7c``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{git_state()['short']}"


def machine_meta() -> dict:
    """This process and its host (:func:`testbed.machine.describe`) under meta.json's keys: ``hostname``,
    ``platform``, ``cpu_model``, ``cpu`` (ISA row, cores, affinity, memory), ``versions`` (with
    :data:`EXPERIMENT_LIBRARIES`), ``git`` (of :data:`PROJECT_ROOT`), ``threads`` (with
    ``load_average_1_5_15min``), ``device``, ``threadpools``, ``environment``, ``load_average_before`` and
    ``cpu_governor``. Nothing is imported for it: torch's threads are recorded where torch is loaded."""
    described = machine.describe()
    load = described.pop("load_average")
    return {
        **described,
        "versions": {**described["versions"], **machine.library_versions(EXPERIMENT_LIBRARIES)},
        "git": git_state(),
        "threads": {**described["threads"], "load_average_1_5_15min": load},
        "load_average_before": load,
    }


def collect_metadata(experiment: str, run: str, *, seed, argv, quick: bool, extra: dict | None = None) -> dict:
    """The meta.json of a run (everything but the experiment-specific ``extra``)."""
    from testbed.registry import backend_status

    # the run loads torch anyway (the peer and oracle): loaded first, its threads and OpenMP pool are described
    with contextlib.suppress(ImportError):
        import torch  # noqa: F401

    meta = {
        "experiment": experiment,
        "run_id": run,
        "utc_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **machine_meta(),
        "seed": seed,
        "quick": quick,
        "command": [sys.executable, *argv],
        "backend_status": backend_status(),
    }
    meta.update(extra or {})
    return meta


def record_end_state(run_dir) -> dict:
    """Add ``load_average_after`` (and the time) to ``run_dir/meta.json``, atomically; returns the meta."""
    import json

    from .storage import atomic_write_json

    path = Path(run_dir) / "meta.json"
    meta = json.loads(path.read_text())
    meta["load_average_after"] = machine.load_average()
    meta["utc_time_end"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(path, meta)
    return meta


def _pools_after_calls(names) -> list:
    """(In a worker.) Call each backend once on a small problem, then list the thread pools now loaded."""
    from testbed.cases import suite
    from testbed.registry import get_backend

    from .cells import call_backend

    problem = suite("tiny")["tiny_k3s2"]
    x, weight, bias = problem.random_arrays(0)
    for name in names:
        backend = get_backend(name)
        if backend.available and backend.device == "cpu" and backend.supports(problem):
            call_backend(name, problem, x, weight, bias)
    return machine.thread_pools() or []


def thread_pools_after_every_backend(names) -> list | str:
    """threadpoolctl's view of a fresh process after one call of each CPU backend in ``names``: the pools a
    sweep's process accumulates (numba's OpenMP, scipy's second OpenBLAS, torch's ...), or why it failed."""
    from testbed.timing import WorkerError, run_in_worker

    try:
        return run_in_worker(_pools_after_calls, list(names), timeout_s=300)
    except WorkerError as exc:
        return f"not recorded: {exc}"


def _best_rate(fn, work: float, seconds: float, repeats: int) -> float:
    best = float("inf")
    deadline = time.perf_counter() + seconds
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline and i >= 2:
            break
    return work / best


def measure_gemm_gflops(n: int = 1024, seconds: float = 1.0, repeats: int = 20) -> float:
    """float32 ``n×n @ n×n`` GEMM rate with NumPy's BLAS, best of a few runs (GFLOP/s, 2·n³ flops)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up: thread pool start
    return _best_rate(lambda: np.matmul(a, b, out=out), 2 * n**3, seconds, repeats) / 1e9


def measure_copy_gbps(megabytes: int = 256, seconds: float = 1.0, repeats: int = 10) -> float:
    """Memory bandwidth of ``np.copyto`` on a ``megabytes`` array, best of a few runs, counting bytes read
    plus bytes written (the STREAM "copy" convention, the same as ``Problem.bytes_moved``), in GB/s."""
    source = np.ones(megabytes * 2**20 // 8)
    target = np.empty_like(source)
    np.copyto(target, source)
    return _best_rate(lambda: np.copyto(target, source), 2 * source.nbytes, seconds, repeats) / 1e9


def _pool_text(pool: dict) -> str:
    arch = f", {pool['architecture']} kernels" if pool.get("architecture") else ""
    library = Path(pool.get("filepath", "?")).name
    return f"{pool.get('internal_api')} ({library}, {pool.get('num_threads')} threads{arch})"


def machine_state_lines(meta: dict) -> str:
    """A report paragraph on the recorded machine state: load before/after, thread pools, environment."""
    pools = meta.get("threadpools")
    after = meta.get("threadpools_after_every_backend")
    lines = [
        f"- load average (1/5/15 min) before {meta.get('load_average_before')}, after "
        f"{meta.get('load_average_after')} on {meta.get('threads', {}).get('cpu_count')} cores; CPU "
        f"frequency governor {meta.get('cpu_governor') or 'not readable'}",
        "- thread pools in the driver process: "
        + ("; ".join(map(_pool_text, pools)) if pools else "not recorded (threadpoolctl missing)"),
    ]
    if isinstance(after, list):
        lines.append(
            "- thread pools of a fresh process after one call of each backend: " + "; ".join(map(_pool_text, after))
        )
    environment = meta.get("environment")
    lines.append(
        "- allocator / threading environment: "
        + (
            ", ".join(f"`{k}={v}`" for k, v in environment.items())
            if environment
            else "none set (glibc malloc defaults)"
        )
    )
    return "\n".join(lines) + "\n"
