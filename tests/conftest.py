"""Shared fixtures: every test that takes ``backend_name`` runs once per registered backend.

A test whose reference is computed by some backend names it with ``@pytest.mark.reference_backends(name,
...)``; those backends are then not parametrised for it (a backend is never compared with itself).
``TESTBED_MUTANT=<name>`` replaces a registered backend with a deliberately broken one (tests/mutants.py), to
show that the suite fails.
"""

import inspect
import os

import numpy as np
import pytest

import testbed
from testbed.testing import TOLERANCES, relative_error

if os.environ.get("TESTBED_MUTANT"):
    import mutants

    mutants.install(os.environ["TESTBED_MUTANT"])

# test_cuda_sim.py still imports these two names from here; they are testbed.testing's, not copies.
RTOL, rel_error = TOLERANCES, relative_error


def pytest_configure(config):
    config.addinivalue_line("markers", "reference_backends(*names): the test's reference is computed by these "
                                       "backends, so they are not parametrised (no backend checks itself)")


def call_arrays(batch, c_in, c_out, size, kernel, params, dtype, bias, seed=0):
    """Standard-normal ``(input, weight, bias)`` for a call with ``params`` (only ``groups`` is read)."""
    rng = np.random.default_rng(seed)
    groups = params.get("groups", 1)
    x = rng.standard_normal((batch, c_in, *size)).astype(dtype)
    w = rng.standard_normal((c_in, c_out // groups, *kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if bias else None
    return x, w, b


def pytest_generate_tests(metafunc):
    if "backend_name" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("reference_backends")
        references = set(marker.args) if marker else set()
        metafunc.parametrize("backend_name", [name for name in testbed.list_backends() if name not in references])


@pytest.fixture
def backend(backend_name):
    """The backend object; skipped (with the registry's reason) where it cannot run here."""
    impl = testbed.get_backend(backend_name)
    if not impl.available:
        pytest.skip(f"{backend_name}: {impl.status}")
    return impl


_SIGNATURE = inspect.signature(testbed.conv_transpose2d)


def call_problem(*args, **kwargs) -> testbed.Problem:
    """The :class:`~testbed.Problem` of the call ``conv_transpose2d(*args, **kwargs)`` (host arrays)."""
    call = _SIGNATURE.bind(*args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    x = a["input"] if hasattr(a["input"], "shape") else np.asarray(a["input"])
    dtype = np.dtype(x.dtype)
    if dtype.kind in "iub":
        dtype = np.dtype(np.float64)                      # the API's promotion rule
    return testbed.Problem.from_shapes(
        tuple(x.shape), tuple(np.shape(a["weight"])), stride=a["stride"], padding=a["padding"],
        output_padding=a["output_padding"], dilation=a["dilation"], groups=a["groups"], dtype=dtype,
        has_bias=a["bias"] is not None, output_size=a["output_size"], layout=a["layout"])


def run_or_skip(impl, *args, **kwargs):
    """Call ``conv_transpose2d`` with backend ``impl``; skip only where ``impl`` declares the call unsupported.

    An ``UnsupportedConfiguration`` from a backend that declared support fails the test, and so does any
    declared limit of ``auto``: the declarations are what the capability table (test_capabilities.py) pins.
    """
    reason = impl.unsupported_reason(call_problem(*args, **kwargs))
    if reason is not None:
        if impl.name == "auto":
            pytest.fail(f"auto must support every valid configuration, but declares: {reason}")
        pytest.skip(f"{impl.name} declares this configuration unsupported: {reason}")
    return testbed.conv_transpose2d(*args, backend=impl.name, **kwargs)
