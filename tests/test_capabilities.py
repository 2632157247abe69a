"""Each registered backend's declared capabilities, pinned: what it says it supports is what it supports.

The registry-wide tests skip a configuration only where the backend *declares* it unsupported
(``helpers.run_or_skip``), so a backend that quietly declared less (say, groups switched off) would turn
failing tests into skips. This table pins the declarations: changing one, or registering a backend, means
editing ``EXPECTED`` here, on purpose (it is the one edit outside its own module a new backend needs).

The spatial ranks a backend computes (``Backend.ranks``: 1-D, 2-D, 3-D) are pinned the same way, and at every
declared rank the probes it declines must be the same as in 2-D: a rank is all or nothing.
"""

from dataclasses import dataclass

import numpy as np
import pytest

import testbed
from helpers import CONV_TRANSPOSE, run_or_skip
from testbed.problem import RANKS
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
    #: the spatial ranks it computes (conv_transpose1d/2d/3d); it refuses the others.
    ranks: tuple = RANKS
    #: the PROBES (in every dtype, at every declared rank) the backend declares unsupported; all others it must
    #: compute.
    unsupported: frozenset = frozenset()
    #: the directions it computes (Backend.directions)
    directions: tuple = FORWARD


#: The probes' input size at each spatial rank.
PROBE_SIZES = {1: (5,), 2: (4, 5), 3: (3, 4, 5)}


def _probe(c_in=4, c_out=6, kernel=3, stride=1, padding=0, dilation=1, groups=1, rank=2):
    return testbed.Problem(
        batch=2,
        in_channels=c_in,
        in_size=PROBE_SIZES[rank],
        out_channels=c_out,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        has_bias=True,
    )


def at_rank(problem, rank):
    """A 2-D probe with the same (square) parameters over ``rank`` spatial axes."""
    return _probe(
        c_in=problem.in_channels,
        c_out=problem.out_channels,
        kernel=problem.kernel_size[0],
        stride=problem.stride[0],
        padding=problem.padding[0],
        dilation=problem.dilation[0],
        groups=problem.groups,
        rank=rank,
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
    "fft": Capabilities(directions=EVERY_DIRECTION),
    "kron": Capabilities(unsupported=NOT_NONOVERLAPPING),  # stride == kernel, dilation 1 only
    "polyphase": Capabilities(),
    "torch": Capabilities(directions=EVERY_DIRECTION),
    "numba_cpu": Capabilities(directions=EVERY_DIRECTION),
    "numba_cuda": Capabilities(device="cuda", directions=EVERY_DIRECTION),
    "numba_cuda_atomic": Capabilities(device="cuda", deterministic=False, ranks=(1, 2)),
    "numba_cuda_tiled": Capabilities(device="cuda", ranks=(2,)),
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
    unsupported = {
        rank: frozenset(
            name
            for name, problem in PROBES.items()
            for dtype in BOTH
            if impl.unsupported_reason(at_rank(problem, rank).with_(dtype=dtype))
        )
        for rank in impl.ranks
    }
    declared = Capabilities(
        device=impl.device,
        deterministic=impl.deterministic,
        groups=impl.groups,
        dilation=impl.dilation,
        dtypes=tuple(np.dtype(d) for d in impl.dtypes),
        ranks=tuple(impl.ranks),
        unsupported=unsupported.get(2, frozenset(PROBES)),
        directions=impl.directions,
    )
    assert declared == expected
    assert unsupported == dict.fromkeys(impl.ranks, expected.unsupported), "the declined probes differ per rank"


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("dtype", BOTH, ids=str)
@pytest.mark.parametrize("probe", PROBES)
def test_declared_support_is_honoured(backend, probe, dtype, rank):
    """Where the backend declares support it computes the probe (at each rank); elsewhere the call raises
    UnsupportedConfiguration naming the backend (values are the parity tests' job)."""
    problem = at_rank(PROBES[probe], rank).with_(dtype=dtype)
    x, weight, bias = problem.random_arrays(0)
    params = call_kwargs(problem)
    if backend.supports(problem):
        y = run_or_skip(backend, x, weight, bias, **params)
        assert y.shape == problem.output_shape and y.dtype == dtype
    else:
        with pytest.raises(testbed.UnsupportedConfiguration, match=backend.name):
            CONV_TRANSPOSE[rank](x, weight, bias, backend=backend.name, **params)
