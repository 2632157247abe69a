"""Properties every backend must have: agreement with the oracle on random configurations (hypothesis), the
adjoint identity, the seed's bitwise block check, bilinearity, group decomposition, output_size rules.

Only the tests named ``*torch*`` need PyTorch; the adjoint is testbed.testing's, cross-checked against
torch's conv2d once."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import testbed
import testbed.cases
from helpers import call_problem, run_or_skip
from reference import torch_conv2d, torch_conv_transpose2d, torch_or_skip
from testbed.testing import (
    adjoint_residual,
    assert_close,
    assert_close_to_oracle,
    call_kwargs,
    conv2d_adjoint,
    oracle,
    tolerance,
)

pairs = lambda lo, hi: st.tuples(st.integers(lo, hi), st.integers(lo, hi))  # noqa: E731


@st.composite
def problems(draw):
    """A random valid configuration (small enough for every backend, the oracle included)."""
    groups = draw(st.integers(1, 3))
    kernel, stride, dilation = draw(pairs(1, 4)), draw(pairs(1, 3)), draw(pairs(1, 3))
    if draw(st.integers(0, 2)) == 0:  # a third of the cases are U-Net-like (stride == kernel, no dilation)
        stride, dilation = kernel, (1, 1)
    padding = draw(pairs(0, 3))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    try:
        problem = testbed.Problem(
            batch=draw(st.integers(1, 2)),
            in_channels=groups * draw(st.integers(1, 3)),
            in_size=draw(pairs(1, 5)),
            out_channels=groups * draw(st.integers(1, 3)),
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
            dtype=draw(st.sampled_from([np.float32, np.float64])),
            has_bias=draw(st.booleans()),
        )
    except ValueError:
        assume(False)
    return problem


@pytest.mark.reference_backends("naive")
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(problem=problems(), seed=st.integers(0, 2**32 - 1))
def test_random_configurations_match_oracle(backend, problem, seed):
    assume(backend.supports(problem))  # declared limits only: an undeclared refusal fails the test
    x, w, b = problem.random_arrays(seed)
    y = testbed.conv_transpose2d(x, w, b, backend=backend.name, **call_kwargs(problem))
    assert y.shape == problem.output_shape
    assert_close_to_oracle(y, x, w, b, err_msg=backend.name, **call_kwargs(problem))


@settings(max_examples=200, deadline=None)
@given(problem=problems())
def test_auto_supports_every_random_configuration(problem):
    assert testbed.get_backend("auto").unsupported_reason(problem) is None


ADJOINT_PARAMS = [
    dict(stride=2),
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(2, 3), padding=(0, 2), dilation=(1, 2)),
    dict(stride=3, padding=1, output_padding=2, groups=2),
    dict(stride=1, padding=2, dilation=2, groups=4),
]
ADJOINT_IDS = ["k2s2", "s2p1op1", "asym_dil", "s3_groups", "depthwise_dil"]


def adjoint_call(params, dtype=np.float64):
    """``(x, w, z, problem)``: input and weight of a call with ``params``, and a ``z`` of its output shape."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 5, 6)).astype(dtype)
    w = rng.standard_normal((4, 8 // params.get("groups", 1), 3, 3)).astype(dtype)
    problem = call_problem(x, w, **params)
    return x, w, rng.standard_normal(problem.output_shape), problem


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("params", ADJOINT_PARAMS, ids=ADJOINT_IDS)
def test_adjoint_identity(backend, params, dtype):
    """<conv2d(z), x> = <z, conv_transpose2d(x)>: the transposed convolution is the adjoint of the strided
    convolution with the same weight, stride, padding, dilation and groups (Dumoulin & Visin, ch. 4); the
    conv2d is testbed.testing's, independent of every backend (naive included)."""
    x, w, z, problem = adjoint_call(params, dtype)
    y = run_or_skip(backend, x, w, **params)
    assert adjoint_residual(x, w, y, z, problem) <= tolerance(dtype)


@pytest.mark.parametrize("params", ADJOINT_PARAMS, ids=ADJOINT_IDS)
def test_adjoint_matches_torch_conv2d(params):
    """testbed.testing's conv2d_adjoint is PyTorch's conv2d with the same weight and parameters."""
    _x, w, z, problem = adjoint_call(params)
    assert_close(conv2d_adjoint(z, w, problem), torch_conv2d(z, w, **params))


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seed_blocks_are_kernel_times_pixel_bitwise(backend, n, dtype):
    """The seed post's check: with one channel, kernel n×n, stride n, no padding, every n×n output block is
    exactly ``weight × pixel`` (a single product, so no rounding difference is allowed; fft excepted)."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((1, 1, 2, 3)).astype(dtype)
    w = rng.standard_normal((1, 1, n, n)).astype(dtype)
    y = run_or_skip(backend, x, w, stride=n)
    assert y.shape == (1, 1, 2 * n, 3 * n)
    expected = np.kron(x[0, 0], np.ones((n, n), dtype)) * np.tile(w[0, 0], (2, 3))
    if backend.name == "fft":
        assert_close(y[0, 0], expected)
    else:
        for i in range(2):
            for j in range(3):
                block = y[0, 0, n * i : n * (i + 1), n * j : n * (j + 1)]
                assert np.array_equal(block, w[0, 0] * x[0, 0, i, j]), (i, j)


def test_bilinear_and_bias_additive(backend):
    rng = np.random.default_rng(3)
    params = dict(stride=2, padding=1, output_padding=1)
    x1, x2 = rng.standard_normal((2, 2, 3, 5, 4))
    w1, w2 = rng.standard_normal((2, 3, 2, 3, 3))
    b = rng.standard_normal(2)
    f = lambda x, w, b=None: run_or_skip(backend, x, w, b, **params)  # noqa: E731
    assert_close(f(2 * x1 - 3 * x2, w1), 2 * f(x1, w1) - 3 * f(x2, w1))
    assert_close(f(x1, w1 + w2), f(x1, w1) + f(x1, w2))
    assert_close(f(x1, w1, b), f(x1, w1) + b[:, None, None])


def test_groups_are_concatenated_independent_convolutions(backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 4, 5))
    w = rng.standard_normal((6, 2, 3, 2))
    params = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    y = run_or_skip(backend, x, w, groups=3, **params)
    parts = [run_or_skip(backend, x[:, 2 * g : 2 * g + 2], w[2 * g : 2 * g + 2], **params) for g in range(3)]
    assert_close(y, np.concatenate(parts, axis=1))


def test_deterministic_backends_repeat_bitwise(backend):
    if not backend.deterministic:
        pytest.skip(f"{backend.name} is documented as nondeterministic")
    x, w, b = testbed.cases.suite("tiny")["tiny_k3s2"].random_arrays(5)
    params = dict(stride=2, padding=1, output_padding=1)
    first = run_or_skip(backend, x, w, b, **params)
    assert np.array_equal(first, run_or_skip(backend, x, w, b, **params))


@pytest.mark.reference_backends("naive")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_propagate(backend):
    """A non-finite input pixel makes non-finite exactly the outputs it reaches (fft: the whole plane)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 5, 5))
    x[0, 0, 2, 3], x[0, 1, 0, 0] = np.nan, np.inf
    w = rng.standard_normal((2, 3, 3, 3))
    params = dict(stride=2, padding=1)
    y = run_or_skip(backend, x, w, **params)
    reference = oracle(x, w, **params)
    bad = ~np.isfinite(reference)
    assert bad.any() and (~np.isfinite(y[bad])).all()
    if backend.name != "fft":
        assert np.array_equal(np.isnan(y), np.isnan(reference))
        assert_close(y[~bad], reference[~bad])


@pytest.mark.parametrize("stride,padding,dilation", [(2, 1, 1), (3, 0, 1), ((3, 2), (1, 0), (2, 1))])
def test_output_size_picks_torchs_output_padding(stride, padding, dilation):
    torch = torch_or_skip()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 4, 5))
    module = torch.nn.ConvTranspose2d(2, 3, 3, stride=stride, padding=padding, dilation=dilation, bias=False)
    module = module.double()
    w = module.weight.detach().numpy()
    smallest = testbed.output_shape(x.shape, w.shape, stride=stride, padding=padding, dilation=dilation)[2:]
    s = (stride, stride) if isinstance(stride, int) else stride
    for extra_h in range(s[0]):
        for extra_w in range(s[1]):
            size = (smallest[0] + extra_h, smallest[1] + extra_w)
            expected = module(torch.from_numpy(x), output_size=size).detach().numpy()
            for request in (size, (1, 3, *size)):
                y = testbed.conv_transpose2d(
                    x, w, stride=stride, padding=padding, dilation=dilation, output_size=request, backend="naive"
                )
                assert_close(y, expected)


@settings(max_examples=60, deadline=None)
@given(problem=problems())
def test_output_shape_formula_matches_torch(problem):
    x, w, _ = problem.random_arrays(0)
    expected = torch_conv_transpose2d(x, w, **call_kwargs(problem)).shape
    assert problem.output_shape == expected
    assert testbed.output_shape(x.shape, w.shape, **call_kwargs(problem)) == expected
    assert testbed.output_shape(x.shape[1:], w.shape, **call_kwargs(problem)) == expected[1:]
