"""Sizes at the int64 limits: parameters and outputs beyond what int64 addresses are refused with a
ValueError naming the argument, and the landing windows stay exact at strides of 10⁹."""

import numpy as np
import pytest

import testbed


@pytest.mark.parametrize(
    "params,argument",
    [
        (dict(stride=2**63), "stride"),
        (dict(stride=(1, 2**64 + 2)), "stride"),
        (dict(padding=2**63), "padding"),
        (dict(dilation=2**64), "dilation"),
        (dict(stride=2**63 - 1, output_padding=2**63), "output_padding"),
        (dict(stride=2**62), "stride"),  # the 3·2⁶² extent of a 4-row input overflows
        (dict(dilation=2**62), "dilation"),
    ],
)
def test_problem_refuses_sizes_beyond_int64(backend_name, params, argument):
    """Before: OverflowError from NumPy, TypingError from Numba or a C++ trace from torch."""
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match=argument):
        testbed.conv_transpose2d(x, w, backend=backend_name, **params)


def test_problem_refuses_outputs_int64_cannot_address():
    with pytest.raises(ValueError, match="beyond what int64 can address"):
        testbed.output_shape((2**40, 1, 2**20, 1), (1, 2**20, 1, 1), stride=1)


def test_landing_windows_are_the_definitions():
    """Problem.landing gives exactly the (input, output) index pairs of the scatter definition."""
    for n, k, s, p, d, op in [
        (5, 3, 2, 1, 1, 1),
        (4, 2, 3, 4, 2, 0),
        (1, 4, 5, 2, 3, 4),
        (6, 3, 1, 0, 2, 1),
        (2, 2, 10**9, 10**9 - 1, 10**9, 0),
        (3, 1, 7, 9, 1, 6),
    ]:
        problem = testbed.Problem(
            batch=1,
            in_channels=1,
            in_size=(n, 1),
            out_channels=1,
            kernel_size=(k, 1),
            stride=(s, 1),
            padding=(p, 0),
            output_padding=(op, 0),
            dilation=(d, 1),
        )
        out = problem.out_size[0]
        for tap in range(k):
            expected = [(i, i * s - p + tap * d) for i in range(n) if 0 <= i * s - p + tap * d < out]
            span = problem.landing(0, tap)
            got = [] if span is None else list(zip(range(n)[span[0]], range(out)[span[1]]))
            assert got == expected, (n, k, s, p, d, op, tap)
