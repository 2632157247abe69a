"""The machine: one description of the host and of this process, for everything that must say where a result
comes from (after pyperf's ``_collect_metadata``, which keeps this in one module too).

Read by the wisdom fingerprint (:func:`testbed.wisdom.machine_fingerprint`: which decisions apply here), the
timing metadata (:func:`testbed.timing.machine_state`), a run's ``meta.json`` and reports
(``experiments.harness.metadata``), the Dask version check (``experiments.harness.dask_worker.describe``) and the
device field of a wisdom signature (:func:`gpu_name`). Each part is a function of its own, so that a caller pays
only for what it reads; :func:`describe` gives them all:

- the CPU: model name, architecture, the instruction-set row the kernels use (:mod:`testbed.isa`), the CPU
  Numba compiles for, core count and the CPUs this process may run on (its affinity), memory;
- threads: Numba's (now and as configured at start), torch's where torch is loaded, and every BLAS/OpenMP pool
  loaded in the process with its thread count (``threadpoolctl``);
- versions: Python, the testbed (and the git commit of its checkout), and the libraries of :data:`LIBRARIES`,
  read from the installed package metadata (nothing is imported for it);
- the GPU numba.cuda sees (or the CUDA simulator);
- the environment that changes timings (allocator, OpenBLAS, OpenMP, Numba, torch, testbed variables that are
  set), the load average and the CPU frequency governor.

Examples
--------
>>> from testbed import machine
>>> machine.cpu()["isa"] in ("generic", "avx2", "avx512")
True
>>> sorted(machine.library_versions())
['llvmlite', 'numba', 'numba-cuda', 'numpy', 'python', 'scipy', 'testbed', 'torch']
"""

from __future__ import annotations

import functools
import glob
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from ._version import __version__

__all__ = [
    "LIBRARIES",
    "ENVIRONMENT_PREFIXES",
    "cpu_model",
    "cpu",
    "threads",
    "thread_pools",
    "library_versions",
    "git_state",
    "environment",
    "load_average",
    "cpu_governors",
    "gpu",
    "gpu_name",
    "describe",
]

#: The distributions whose versions describe a result (besides Python and the testbed): the array library, the
#: FFTs and BLAS behind scipy, the compiler and its LLVM binding, the CUDA target and the torch peer.
LIBRARIES = ("numpy", "scipy", "numba", "llvmlite", "numba-cuda", "torch")
#: The environment variables that change what a timing measures: the allocator (glibc's mmap threshold moves
#: times 6×), preloaded libraries, OpenBLAS's forced kernels and thread counts, OpenMP/MKL threads, Numba's
#: settings, torch's and the testbed's own.
ENVIRONMENT_PREFIXES = (
    "MALLOC_",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
    "OPENBLAS_",
    "GOTO",
    "OMP_",
    "GOMP_",
    "KMP_",
    "MKL_",
    "NUMBA_",
    "TORCH_",
    "TESTBED_",
)
#: The checkout the testbed package is imported from, where it is one (a wheel's site-packages is not).
_CHECKOUT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return None


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu() -> dict[str, Any]:
    """``model``, ``architecture`` (``platform.machine()``), ``isa`` (the instruction-set row the kernels use,
    :func:`testbed.isa.selected_isa`) and its ``vector_bytes``, ``target_cpu`` (the CPU Numba compiles for),
    ``count`` (logical CPUs), ``affinity`` (those this process may run on) and ``memory_bytes`` (physical memory)."""
    from .isa import selected_isa, target_cpu, vector_bytes

    row = selected_isa()
    return {
        "model": cpu_model(),
        "architecture": platform.machine(),
        "isa": row,
        "vector_bytes": vector_bytes(row),
        "target_cpu": target_cpu()[0],
        "count": os.cpu_count(),
        "affinity": _affinity(),
        "memory_bytes": _memory_bytes(),
    }


def thread_pools() -> list | None:
    """``threadpoolctl.threadpool_info()`` of this process (each loaded BLAS/OpenMP library, its thread count
    and, for OpenBLAS, the kernel ``architecture``), or None without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return threadpool_info()


def threads() -> dict[str, Any]:
    """``cpu_count``, ``affinity``, ``numba_threads`` (``numba.get_num_threads()`` now),
    ``numba_threads_at_start`` (``NUMBA_NUM_THREADS``, what Numba's pool starts with) and ``torch_threads``
    (None where torch is not loaded: a description does not load libraries). The BLAS/OpenMP pools are
    :func:`thread_pools`."""
    import numba

    torch = sys.modules.get("torch")
    return {
        "cpu_count": os.cpu_count(),
        "affinity": _affinity(),
        "numba_threads": numba.get_num_threads(),
        "numba_threads_at_start": int(numba.config.NUMBA_NUM_THREADS),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
    }


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str | None]:
    """``{"python": ..., "testbed": ..., name: version or None}`` for each distribution of ``names``, from the
    installed package metadata (none is imported). The testbed's is that of the checkout imported, installed or
    only on the path."""
    return {
        "python": platform.python_version(),
        "testbed": __version__,
        **{name: _distribution_version(name) for name in names},
    }


def git_state(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": full hash or None, "short": 7 characters or "nogit", "dirty": bool or None}`` of the git
    checkout at ``root`` (default: the one the testbed is imported from; "nogit" for an installed wheel)."""
    root = _CHECKOUT if root is None else Path(root)
    nothing = {"commit": None, "short": "nogit", "dirty": None}
    if not (root / ".git").exists():  # a directory, or a file in a worktree; never a parent's repository
        return nothing

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return nothing
    return {"commit": commit, "short": commit[:7], "dirty": dirty}


def environment(names: Iterable[str] = (), prefixes: tuple[str, ...] = ENVIRONMENT_PREFIXES) -> dict[str, str]:
    """The environment variables that are set among ``names`` or start with one of ``prefixes`` (default: those
    that change timings, :data:`ENVIRONMENT_PREFIXES`), sorted by name."""
    names = frozenset(names)
    return {key: value for key, value in sorted(os.environ.items()) if key in names or key.startswith(prefixes)}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: above the core count, other processes shared the CPUs."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def cpu_governors() -> dict[str, int] | None:
    """``{governor: number of CPUs}`` from cpufreq, or None where it is not exposed (VMs, containers)."""
    found: dict[str, int] = {}
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"):
        try:
            with open(path, encoding="ascii") as handle:
                name = handle.read().strip()
        except OSError:
            continue
        found[name] = found.get(name, 0) + 1
    return found or None


@functools.lru_cache(maxsize=1)
def gpu_name() -> str:
    """The name of the CUDA device numba.cuda uses (``"simulator"`` under the CUDA simulator); raises what
    numba.cuda raises where there is none. Cached: the device of a process does not change."""
    from numba import config, cuda

    if config.ENABLE_CUDASIM:
        return "simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def gpu() -> dict[str, Any]:
    """``cuda_simulator`` (numba.cuda runs in its simulator), ``gpu`` (the real device's name, or None) and,
    where numba.cuda cannot start, ``gpu_error``."""
    from numba import config

    info: dict[str, Any] = {"cuda_simulator": bool(config.ENABLE_CUDASIM), "gpu": None}
    if info["cuda_simulator"]:
        return info
    try:
        from numba import cuda

        if cuda.is_available():
            info["gpu"] = gpu_name()
    except Exception as exc:  # numba-cuda missing or a broken driver: no GPU, and why
        info["gpu_error"] = f"{type(exc).__name__}: {exc}"
    return info


def describe() -> dict[str, Any]:
    """All of it: ``hostname``, ``platform``, ``cpu_model``, ``cpu`` (:func:`cpu`), ``versions``
    (:func:`library_versions`), ``git`` (:func:`git_state`), ``threads`` (:func:`threads`), ``threadpools``
    (:func:`thread_pools`), ``environment`` (:func:`environment`), ``load_average``, ``cpu_governor`` and
    ``device`` (:func:`gpu`)."""
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu": cpu(),
        "versions": library_versions(),
        "git": git_state(),
        "threads": threads(),
        "threadpools": thread_pools(),
        "environment": environment(),
        "load_average": load_average(),
        "cpu_governor": cpu_governors(),
        "device": gpu(),
    }
