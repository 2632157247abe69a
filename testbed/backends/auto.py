"""``auto``: dispatch to a supported backend for the configuration.

Plain rule (until the performance table of the Numba work replaces it): ``kron`` for stride == kernel
(one GEMM, no accumulation), else ``polyphase`` (no zero work, GEMM-shaped). Both are complete for their
configurations, so ``auto`` never raises ``UnsupportedConfiguration`` for a valid one.
"""

from ..registry import Backend, get_backend, is_device_array, register

#: Tried in order; the first available backend that supports the problem wins.
PREFERENCE = ("kron", "polyphase", "col2im", "naive")
DEVICE_PREFERENCE = ("numba_cuda", "numba_cuda_tiled", "numba_cuda_atomic")


def choose_backend(problem, on_device=False):
    """The backend ``auto`` runs for ``problem`` (``on_device``: the arrays are CUDA device arrays)."""
    for name in DEVICE_PREFERENCE if on_device else PREFERENCE:
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
    description="picks a supported backend for the configuration (see testbed.backends.auto.PREFERENCE)",
    run=dispatch,
    device="any",
))
