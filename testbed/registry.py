"""The backend registry: one small table of interchangeable implementations (after scipy.fft's backends).

A backend module builds a :class:`Backend` and calls :func:`register`; nothing else in the project names it.
Backends know nothing of each other; only ``auto`` (the dispatcher) looks others up by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .problem import SUPPORTED_DTYPES, Problem

__all__ = ["Backend", "BackendUnavailable", "register", "get_backend", "list_backends", "available_backends",
           "backend_status"]


class BackendUnavailable(RuntimeError):
    """The backend exists but cannot run on this machine (e.g. torch not installed, no CUDA GPU)."""


def _always_available() -> tuple[bool, str]:
    return True, "available"


@dataclass(frozen=True)
class Backend:
    """One implementation of ``conv_transpose2d``.

    ``run(x, weight, bias, problem)`` receives the batched input ``(N, C_in, H, W)``, the weight and the bias
    (or ``None``) already validated, in ``problem.dtype``, and returns the ``problem.output_shape`` result. It
    must not modify its arguments. Host backends get C-contiguous NumPy arrays; ``device="cuda"`` backends
    also accept CUDA device arrays and then return one. A backend with ``writes_out`` also takes ``out=`` (a
    C-contiguous, writable array of ``problem.output_shape`` and dtype, overlapping no argument), writes the
    result there and returns it; :meth:`compute` copies into ``out`` for the others.
    """

    name: str
    description: str
    run: Callable
    groups: bool = True                 # groups > 1 supported
    dilation: bool = True               # dilation > 1 supported
    dtypes: tuple = SUPPORTED_DTYPES
    device: str = "cpu"                 # "cpu", "cuda", or "any" (the dispatcher)
    deterministic: bool = True          # bitwise-repeatable results
    check: Optional[Callable[[Problem], Optional[str]]] = None   # extra limits: a reason, or None if supported
    probe: Callable[[], tuple[bool, str]] = _always_available   # (usable here?, why / how)
    writes_out: bool = False            # run(..., out=...) computes in place

    def unsupported_reason(self, problem: Problem) -> Optional[str]:
        """Why this backend cannot compute ``problem`` (a valid configuration), or None if it can."""
        if problem.dtype not in self.dtypes:
            return f"dtype {problem.dtype} not in {[str(d) for d in self.dtypes]}"
        if problem.groups > 1 and not self.groups:
            return f"groups={problem.groups} not supported"
        if problem.dilation != (1, 1) and not self.dilation:
            return f"dilation={problem.dilation} not supported"
        return self.check(problem) if self.check else None

    def compute(self, x, weight, bias, problem: Problem, out=None):
        """``run``, with the result written into ``out`` when given (validated by ``conv_transpose2d``): in
        place if the backend ``writes_out`` and ``out`` is C-contiguous, else computed and copied in."""
        if out is None:
            return self.run(x, weight, bias, problem)
        device_out = is_device_array(out)
        if self.writes_out and (device_out or (out.flags.c_contiguous and out.flags.aligned)):
            return self.run(x, weight, bias, problem, out=out)
        result = self.run(x, weight, bias, problem)
        if device_out:
            from numba import cuda
            (out if hasattr(out, "copy_to_device") else cuda.as_cuda_array(out)).copy_to_device(result)
        else:
            np.copyto(out, result)
        return out

    def supports(self, problem: Problem) -> bool:
        return self.unsupported_reason(problem) is None

    @property
    def available(self) -> bool:
        return self.probe()[0]

    @property
    def status(self) -> str:
        return self.probe()[1]

    @property
    def timing_kind(self) -> Optional[str]:
        """"cpu", "gpu", or None when timings would be meaningless (unavailable, or the CUDA simulator)."""
        ok, why = self.probe()
        if not ok or "simulator" in why:
            return None
        return "gpu" if self.device == "cuda" else "cpu"


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    if backend.name in _REGISTRY:
        raise ValueError(f"backend {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def _loaded() -> dict[str, Backend]:
    from . import backends  # noqa: F401  (importing the package registers every backend module)
    return _REGISTRY


def get_backend(name) -> Backend:
    registry = _loaded()
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"backend must be one of {sorted(registry)}, got {name!r}")
    return registry[name]


def list_backends() -> list[str]:
    """Every registered backend, usable here or not."""
    return list(_loaded())


def available_backends() -> list[str]:
    """The backends that can run on this machine (the CUDA simulator counts as available)."""
    return [name for name, b in _loaded().items() if b.available]


def backend_status() -> dict[str, str]:
    """For each backend, "available", "simulator (…)" or the reason it is unavailable."""
    return {name: b.status for name, b in _loaded().items()}


def is_device_array(value) -> bool:
    """A CUDA device array: anything with ``__cuda_array_interface__``, or the CUDA simulator's stand-in."""
    if isinstance(value, np.ndarray):
        return False
    return hasattr(value, "__cuda_array_interface__") or type(value).__module__.startswith("numba.cuda.simulator")
