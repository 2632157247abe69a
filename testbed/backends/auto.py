"""``auto``: dispatch each configuration to the backend measured fastest for its class.

The rule is a four-class model of side-by-side timings: ``python -m experiments.speed --suite unet,decoder
--budget 1.0`` (float32, batch 1, median of ≥ 5 warm calls through ``conv_transpose2d``, every backend in
one run, 2-core AVX-512 host, load average 0.7 at the start). ms of ``numba_cpu`` / ``torch`` / best NumPy:

==============  =====================================================================  ==================
class           shapes: numba_cpu / torch / col2im ms                                  fastest
==============  =====================================================================  ==================
nonoverlapping  unet1 24/40/41, unet2 36/37/27, unet3 40/65/52, unet4 53/116/84          numba_cpu (1.0–2.2×)
general         k4s2p1 11.9/7.9/12.7, k3s2p1op1 7.2/6.1/10.9, k3s1p1 5.8/2.0/6.2,        torch (oneDNN)
                k3d2 6.3/2.0/6.6, k5s3 4.8/1.6/3.6
grouped         k4s2g8 12.0/5.5/16.1                                                    torch
depthwise       depthwise 2.9/1.9/54.6                                                  torch
==============  =====================================================================  ==================

On a host shared with other jobs (load 2–5) the order of the overlapping classes flips: torch's oneDNN
kernels lose more to a busy second core than ``numba_cpu`` does (measured 1.2–3× in ``numba_cpu``'s favour
there); ``auto`` follows the quiet-machine table. Without torch, ``numba_cpu`` is next in every class (it
beats the NumPy backends on all shapes but k5s3 and unet2, within 1.1–1.35× of ``col2im`` there).

Within a class the first *available* backend that *supports* the problem wins, so ``auto`` works without
torch and never raises ``UnsupportedConfiguration`` for a valid configuration (``naive`` supports
everything). CUDA device arrays go to the CUDA backends. Re-measure (the speed experiment over the ``unet``
and ``decoder`` suites) and revise :data:`PREFERENCE` when the host or the backends change.
"""

from ..planner import planned_backend
from ..registry import Backend, get_backend, is_device_array, register

#: Per configuration class (see :func:`problem_class`), tried in order; first available + supporting wins.
PREFERENCE = {
    "nonoverlapping": ("numba_cpu", "torch", "kron", "col2im", "polyphase", "naive"),
    "depthwise": ("torch", "numba_cpu", "polyphase", "col2im", "naive"),
    "grouped": ("torch", "numba_cpu", "col2im", "polyphase", "naive"),
    "general": ("torch", "numba_cpu", "col2im", "polyphase", "naive"),
}
DEVICE_PREFERENCE = ("numba_cuda", "numba_cuda_tiled", "numba_cuda_atomic")


def problem_class(problem) -> str:
    """The key of :data:`PREFERENCE` for ``problem``: "nonoverlapping", "depthwise", "grouped" or "general"."""
    if problem.is_nonoverlapping:
        return "nonoverlapping"
    if problem.is_depthwise:
        return "depthwise"
    return "grouped" if problem.groups > 1 else "general"


def choose_backend(problem, on_device=False):
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


def dispatch(x, weight, bias, problem, out=None):
    return choose_backend(problem, on_device=is_device_array(x)).compute(x, weight, bias, problem, out)


register(Backend(
    name="auto",
    description="fastest measured backend for the configuration's class (see testbed.backends.auto.PREFERENCE)",
    run=dispatch,
    device="any",
    writes_out=True,
))
