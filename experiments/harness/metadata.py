"""What a result needs to be reproducible: run id, code version, library versions, the machine, and its
measured float32 GEMM rate and copy bandwidth (the roofline ceilings).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["PROJECT_ROOT", "git_state", "run_id", "collect_metadata", "measure_gemm_gflops",
           "measure_copy_gbps", "cpu_model", "device_info"]

#: The repository checkout the experiments run from (this file is never installed as a wheel).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def git_state(root=PROJECT_ROOT) -> dict:
    """``{"commit": full hash or None, "short": 7 chars or "nogit", "dirty": bool or None}``."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "short": "nogit", "dirty": None}
    return {"commit": commit, "short": commit[:7], "dirty": dirty}


def run_id(now: _dt.datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSZ-<short git hash>``, e.g. ``20250101T120000Z-a3e5f7c``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{git_state()['short']}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for module in ("numpy", "scipy", "numba", "pandas", "matplotlib", "torch"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    try:
        from importlib.metadata import version
        versions["numba-cuda"] = version("numba-cuda")
    except Exception:  # noqa: BLE001 - optional package
        versions["numba-cuda"] = None
    return versions


def device_info() -> dict:
    """GPU presence: the CUDA simulator flag, and the device name if numba.cuda sees a real GPU."""
    info = {"cuda_simulator": os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "gpu": None}
    try:
        from numba import cuda
        if cuda.is_available() and not info["cuda_simulator"]:
            info["gpu"] = cuda.get_current_device().name
            if isinstance(info["gpu"], bytes):
                info["gpu"] = info["gpu"].decode()
    except Exception as exc:  # noqa: BLE001 - any driver trouble just means "no GPU"
        info["gpu_error"] = f"{type(exc).__name__}: {exc}"
    return info


def _threads() -> dict:
    threads = {"cpu_count": os.cpu_count()}
    try:  # other processes on a shared machine are the main source of timing noise: record how busy it was
        threads["load_average_1_5_15min"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        threads["load_average_1_5_15min"] = None
    try:
        threads["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        threads["affinity"] = None
    try:
        import numba
        threads["numba_threads"] = numba.get_num_threads()
    except Exception:  # noqa: BLE001
        threads["numba_threads"] = None
    try:
        import torch
        threads["torch_threads"] = torch.get_num_threads()
    except ImportError:
        threads["torch_threads"] = None
    return threads


def collect_metadata(experiment: str, run: str, *, seed, argv, quick: bool, extra: dict | None = None) -> dict:
    """The meta.json of a run (everything but the experiment-specific ``extra``)."""
    from testbed.registry import backend_status

    meta = {
        "experiment": experiment,
        "run_id": run,
        "utc_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "versions": _versions(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "threads": _threads(),
        "device": device_info(),
        "seed": seed,
        "quick": quick,
        "command": [sys.executable, *argv],
        "backend_status": backend_status(),
    }
    meta.update(extra or {})
    return meta


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
    return _best_rate(lambda: np.matmul(a, b, out=out), 2 * n ** 3, seconds, repeats) / 1e9


def measure_copy_gbps(megabytes: int = 256, seconds: float = 1.0, repeats: int = 10) -> float:
    """Memory bandwidth of ``np.copyto`` on a ``megabytes`` array, best of a few runs, counting bytes read
    plus bytes written (the STREAM "copy" convention, the same as ``Problem.bytes_moved``), in GB/s."""
    source = np.ones(megabytes * 2 ** 20 // 8)
    target = np.empty_like(source)
    np.copyto(target, source)
    return _best_rate(lambda: np.copyto(target, source), 2 * source.nbytes, seconds, repeats) / 1e9
