"""``auto``: dispatch each configuration to the backend measured fastest for its class.

The rule is a four-class model of side-by-side timings (float32, batch 1, round-robin over the backends,
median of 7 repeats after warm-up, ``testbed.cases`` suites ``unet`` and ``decoder``, 2-core AVX-512 host
shared with other jobs). Speed-up of ``numba_cpu`` over ``torch`` in two runs, a busy host (load ≈ 2.3) and
a quieter one (load ≈ 1.9); ms are numba_cpu / torch in the quieter run:

==========  ==========  ==========  ================================================================
class       busy        quieter     shapes (quieter run, ms numba_cpu / ms torch)
==========  ==========  ==========  ================================================================
nonoverlap  1.5–2.7×    1.8–2.7×    unet1 35/64, unet2 41/91, unet3 40/108, unet4 75/164
general     1.15–2.3×   1.2–3.0×    k4s2p1 13/31, k3s2p1op1 9.5/28, k3s1p1 6.5/17, k3d2 5.9/15, k5s3 5.6/6.9
depthwise   1.85×       0.60×       depthwise 4.6/2.8
grouped     0.30×       2.07×       k4s2g8 13/26 (one BLAS call per group; each waits for a thread)
==========  ==========  ==========  ================================================================

So ``numba_cpu`` comes first for non-overlapping and general problems (it wins in both runs). For the two
classes whose winner flipped with the load, ``auto`` takes the backend whose *worse* run is less bad:
``numba_cpu`` for depthwise (0.60× at worst, vs torch's 0.54×) and ``torch`` for grouped (numba_cpu's
0.30× at worst, vs torch's 0.48×).

Within a class the first *available* backend that *supports* the problem wins, so ``auto`` works without
torch and never raises ``UnsupportedConfiguration`` for a valid configuration (``naive`` supports everything). CUDA
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
