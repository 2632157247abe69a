"""Shared fixtures: every test that takes ``backend_name`` runs once per registered backend."""

import numpy as np
import pytest

import testbed

# Tolerances on the relative L2 error ||y - ref|| / ||ref|| (the core issue's acceptance criteria).
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


def rel_error(y, ref):
    y, ref = np.asarray(y, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    scale = np.linalg.norm(ref)
    return np.linalg.norm(y - ref) / (scale if scale else 1.0)


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
        metafunc.parametrize("backend_name", testbed.list_backends())


@pytest.fixture
def backend(backend_name):
    """The backend object; skipped (with the registry's reason) where it cannot run here."""
    impl = testbed.get_backend(backend_name)
    if not impl.available:
        pytest.skip(f"{backend_name}: {impl.status}")
    return impl


def run_or_skip(impl, *args, **kwargs):
    """Call ``conv_transpose2d`` with ``impl``; a documented UnsupportedConfiguration skips the test."""
    try:
        return testbed.conv_transpose2d(*args, backend=impl.name, **kwargs)
    except testbed.UnsupportedConfiguration as exc:
        if impl.name == "auto":
            raise AssertionError(f"auto must support every valid configuration: {exc}") from exc
        pytest.skip(str(exc))
