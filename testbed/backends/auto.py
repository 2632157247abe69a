"""``auto``: dispatch each configuration to the backend measured fastest for its class.

The rule is a four-class model of side-by-side timings (float32, batch 1, round-robin over the backends,
median of 7 repeats after warm-up, ``testbed.cases`` suites ``unet`` and ``decoder``, 2-core AVX-512 host
shared with other jobs; milliseconds, ``numba_cpu`` / ``torch``):

==========  ==================  =================================================================
class       numba_cpu vs torch  shapes: ms numba_cpu / ms torch
==========  ==================  =================================================================
nonoverlap  1.5–2.7× faster     unet1 73/112, unet2 78/121, unet3 62/147, unet4 105/285
general     1.15–2.3× faster    k4s2p1 28/44, k3s2p1op1 21/27, k3s1p1 24/32, k3d2 24/28, k5s3 13/30
depthwise   1.85× faster        depthwise 8.8/16
grouped     0.3–0.6× (slower)   k4s2g8 137/41 (one BLAS call per group, each waits for a thread)
==========  ==================  =================================================================

So ``numba_cpu`` comes first except for grouped (non-depthwise) problems, where ``torch`` does. Within a
class the first *available* backend that *supports* the problem wins, so ``auto`` works without torch and
never raises ``UnsupportedConfiguration`` for a valid configuration (``naive`` supports everything). CUDA
device arrays go to the CUDA backends as before. Re-measure (the speed experiment over the ``unet`` and
``decoder`` suites) and revise :data:`PREFERENCE` when the host or the backends change.
"""

from ..registry import Backend, get_backend, is_device_array, register

#: Per configuration class (see :func:`problem_class`), tried in order; first available + supporting wins.
PREFERENCE = {
    "nonoverlapping": ("numba_cpu", "torch", "kron", "col2im", "polyphase", "naive"),
    "depthwise": ("numba_cpu", "torch", "polyphase", "col2im", "naive"),
    "grouped": ("torch", "numba_cpu", "col2im", "polyphase", "naive"),
    "general": ("numba_cpu", "torch", "col2im", "polyphase", "naive"),
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
    description="fastest measured backend for the configuration's class (see testbed.backends.auto.PREFERENCE)",
    run=dispatch,
    device="any",
))
