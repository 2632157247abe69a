"""Each registered backend's declared capabilities, pinned: what it says it supports is what it supports.

The registry-wide tests skip a configuration only where the backend *declares* it unsupported
(``helpers.run_or_skip``), so a backend that quietly declared less (say, groups switched off) would turn
failing tests into skips. This table pins the declarations: changing one, or registering a backend, means
editing ``EXPECTED`` here, on purpose (it is the one edit outside its own module a new backend needs).
"""

from dataclasses import dataclass

import numpy as np
import pytest

import testbed
from helpers import run_or_skip
from testbed.testing import call_kwargs

BOTH = (np.dtype(np.float32), np.dtype(np.float64))
FORWARD = ("forward",)
#: forward and both gradients (testbed.conv_transpose_backward)
EVERY_DIRECTION = ("forward", "backward_data", "backward_weight")


@dataclass(frozen=True)
class Capabilities:
    device: str = "cpu"
    deterministic: bool = True
    groups: bool = True
    dilation: bool = True
    dtypes: tuple = BOTH
    #: the PROBES (in every dtype) the backend declares unsupported; all others it must compute.
    unsupported: frozenset = frozenset()
    #: the directions it computes (Backend.directions)
    directions: tuple = FORWARD


def _probe(c_in=4, c_out=6, kernel=3, stride=1, padding=0, dilation=1, groups=1):
    return testbed.Problem(
        batch=2,
        in_channels=c_in,
        in_size=(4, 5),
        out_channels=c_out,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        has_bias=True,
    )


#: Configurations that each isolate one capability.
PROBES = {
    "nonoverlapping": _probe(kernel=2, stride=2),
    "overlapping": _probe(kernel=3, stride=2, padding=1),
    "grouped_nonoverlapping": _probe(kernel=2, stride=2, groups=2),
    "grouped": _probe(kernel=3, stride=1, groups=2),
    "depthwise": _probe(c_in=4, c_out=4, kernel=3, stride=2, groups=4),
    "dilated": _probe(kernel=3, stride=1, dilation=2),
    "stride_gt_kernel": _probe(kernel=2, stride=3),
}
NOT_NONOVERLAPPING = frozenset(PROBES) - {"nonoverlapping", "grouped_nonoverlapping"}

EXPECTED = {
    "naive": Capabilities(directions=EVERY_DIRECTION),
    "col2im": Capabilities(directions=EVERY_DIRECTION),
    "fft": Capabilities(),
    "kron": Capabilities(unsupported=NOT_NONOVERLAPPING),  # stride == kernel, dilation 1 only
    "polyphase": Capabilities(),
    "torch": Capabilities(directions=EVERY_DIRECTION),
    "numba_cpu": Capabilities(),
    "numba_cuda": Capabilities(device="cuda"),
    "numba_cuda_atomic": Capabilities(device="cuda", deterministic=False),
    "numba_cuda_tiled": Capabilities(device="cuda"),
    "auto": Capabilities(device="any", directions=EVERY_DIRECTION),  # every valid configuration, always
}


def test_every_registered_backend_is_in_the_table():
    registered = set(testbed.list_backends())
    assert registered - set(EXPECTED) == set(), "registered backends missing from EXPECTED: declare them there"
    assert set(EXPECTED) - registered == set(), "EXPECTED names backends that are not registered"


def test_declared_capabilities(backend_name):
    """Pinned for every registered backend, available here or not (the declaration is what is tested)."""
    if backend_name not in EXPECTED:
        pytest.fail(f"{backend_name} is registered but not in EXPECTED: add its capabilities to the table")
    impl, expected = testbed.get_backend(backend_name), EXPECTED[backend_name]
    declared = Capabilities(
        device=impl.device,
        deterministic=impl.deterministic,
        groups=impl.groups,
        dilation=impl.dilation,
        dtypes=tuple(np.dtype(d) for d in impl.dtypes),
        unsupported=frozenset(
            name
            for name, problem in PROBES.items()
            for dtype in BOTH
            if impl.unsupported_reason(problem.with_(dtype=dtype))
        ),
        directions=impl.directions,
    )
    assert declared == expected


@pytest.mark.parametrize("dtype", BOTH, ids=str)
@pytest.mark.parametrize("probe", PROBES)
def test_declared_support_is_honoured(backend, probe, dtype):
    """Where the backend declares support it computes the probe; elsewhere the call raises
    UnsupportedConfiguration naming the backend (values are the parity tests' job)."""
    problem = PROBES[probe].with_(dtype=dtype)
    x, weight, bias = problem.random_arrays(0)
    params = call_kwargs(problem)
    if backend.supports(problem):
        y = run_or_skip(backend, x, weight, bias, **params)
        assert y.shape == problem.output_shape and y.dtype == dtype
    else:
        with pytest.raises(testbed.UnsupportedConfiguration, match=backend.name):
            testbed.conv_transpose2d(x, weight, bias, backend=backend.name, **params)
