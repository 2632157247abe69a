"""``auto``: dispatch each configuration to the backend measured fastest for its class.

The rule is a three-class model of side-by-side timings (float32, batch 1, median of 7 runs after warm-up,
``numba_cpu``, ``torch`` and the NumPy backends on ``testbed.cases`` suites ``unet`` and ``decoder``, 2-core
AVX-512 host; the table is in the ``numba_cpu`` work's report):

* **non-overlapping** (stride == kernel, dilation 1; U-Net up-convolution): ``numba_cpu`` (one GEMM on the
  input as laid out + one fused parallel pixel shuffle) beat ``torch`` by 1.1–2.8× on all four U-Net shapes;
  ``torch`` does a GEMM into a column buffer and a col2im pass. ``kron`` is the NumPy fallback.
* **depthwise** (groups == C_in, one output channel per group): ``numba_cpu``'s output-stationary gather and
  ``torch`` were within noise of each other; ``numba_cpu`` first (deterministic, no torch needed).
* **general** (overlapping taps, GEMM-sized channels): ``torch`` (oneDNN) first; ``numba_cpu``'s per-phase
  im2col GEMMs came within 0.2–0.9× of it, ahead of the NumPy backends, so it is next.

Within a class the first *available* backend that *supports* the problem wins, so ``auto`` works without
torch and never raises ``UnsupportedConfiguration`` for a valid configuration (``naive`` supports
everything). CUDA device arrays go to the CUDA backends as before.
"""

from ..registry import Backend, get_backend, is_device_array, register

#: Per configuration class (see :func:`problem_class`), tried in order; first available + supporting wins.
PREFERENCE = {
    "nonoverlapping": ("numba_cpu", "kron", "torch", "col2im", "polyphase", "naive"),
    "depthwise": ("numba_cpu", "torch", "polyphase", "col2im", "naive"),
    "general": ("torch", "numba_cpu", "col2im", "polyphase", "naive"),
}
DEVICE_PREFERENCE = ("numba_cuda", "numba_cuda_tiled", "numba_cuda_atomic")


def problem_class(problem) -> str:
    """The key of :data:`PREFERENCE` for ``problem``: "nonoverlapping", "depthwise" or "general"."""
    if problem.is_nonoverlapping:
        return "nonoverlapping"
    if problem.is_depthwise:
        return "depthwise"
    return "general"


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
