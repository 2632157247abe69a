"""1-D and 3-D transposed convolution (``conv_transpose1d``/``conv_transpose3d``) for every registered backend.

What the 2-D files (test_parity.py, test_properties.py, test_errors.py, test_out.py) check for ``conv_transpose2d``,
at ranks 1 and 3: parity with the float64 oracle and with PyTorch on a grid and on random configurations; batches,
unbatched input and both layouts; ``out=``; the adjoint identity; the seed's block identity; a backend that does
not declare a rank (``Backend.ranks``) refuses it, ``auto`` never refuses; every bad argument is named in its
error; the API (signatures, ``output_size``, ``output_shape``, ``resolve_backend``, ``explain``, ``tune``, the
wisdom signature and the preference class) at every rank.

Tests that take ``backend`` run once per registered backend and skip where it is unavailable or declares the
configuration unsupported (``helpers.run_or_skip``); what each backend declares is pinned in
test_capabilities.py. Shapes are tiny: the file runs in seconds.
"""

import ast
import inspect
import itertools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import testbed
from helpers import CONV_TRANSPOSE, call_arrays, call_problem, run_or_skip
from reference import torch_conv, torch_conv_transpose, torch_or_skip
from testbed import preference, wisdom
from testbed.planner import choose_backend
from testbed.problem import LAYOUTS_BY_RANK, RANKS
from testbed.testing import (
    adjoint_residual,
    assert_close,
    assert_close_to_oracle,
    call_kwargs,
    conv2d_adjoint,
    conv_adjoint,
    oracle,
    tolerance,
)
from testbed.timing import TimingSettings

#: The ranks this file covers; rank 2 is the other files'.
OTHER_RANKS = (1, 3)

# (name, batch, C_in, C_out, spatial size, kernel, bias, params): odd sizes, asymmetric per-axis stride / padding /
# dilation / output_padding, groups, depthwise, stride > kernel, padding that crops into the kernel's reach.
GRID = {
    1: [
        ("k2s2", 2, 4, 3, (7,), (2,), True, dict(stride=2)),
        ("k3s2p1op1", 3, 3, 5, (6,), (3,), False, dict(stride=2, padding=1, output_padding=1)),
        ("hifigan_k16s8p4", 1, 2, 3, (5,), (16,), True, dict(stride=8, padding=4)),
        ("groups2", 1, 4, 6, (5,), (4,), False, dict(stride=3, padding=2, output_padding=1, groups=2)),
        ("depthwise", 2, 6, 6, (5,), (3,), True, dict(stride=2, padding=1, groups=6)),
        ("depthwise_mult", 1, 3, 6, (4,), (2,), False, dict(stride=1, groups=3)),
        ("dilated_strided_op", 1, 2, 3, (4,), (3,), True, dict(stride=3, output_padding=2, dilation=3)),
        ("op_lt_dilation", 1, 2, 2, (3,), (2,), False, dict(stride=1, output_padding=1, dilation=2)),
        ("stride_gt_kernel", 1, 3, 2, (4,), (2,), True, dict(stride=3, output_padding=2)),
        ("big_padding", 2, 3, 2, (6,), (3,), False, dict(stride=2, padding=3)),
        ("k1s2", 1, 2, 3, (3,), (1,), True, dict(stride=2, output_padding=1)),
        ("length1", 1, 3, 2, (1,), (3,), False, dict(stride=2)),
    ],
    3: [
        ("k2s2", 2, 4, 3, (3, 4, 5), (2, 2, 2), True, dict(stride=2)),
        (
            "asym",
            1,
            3,
            4,
            (3, 4, 5),
            (3, 2, 3),
            False,
            dict(stride=(2, 1, 3), padding=(1, 0, 2), output_padding=(1, 0, 2), dilation=(1, 2, 1)),
        ),
        (
            "groups2",
            1,
            4,
            6,
            (3, 3, 4),
            (3, 2, 2),
            True,
            dict(stride=(2, 1, 2), padding=(1, 0, 1), output_padding=(1, 0, 0), groups=2),
        ),
        ("depthwise", 2, 4, 4, (3, 3, 3), (3, 3, 3), False, dict(stride=2, padding=1, groups=4)),
        ("depthwise_mult", 1, 2, 4, (2, 3, 2), (2, 1, 3), True, dict(stride=(1, 2, 1), groups=2)),
        (
            "dilated_op",
            1,
            2,
            2,
            (3, 3, 3),
            (2, 2, 2),
            False,
            dict(stride=1, padding=1, output_padding=(1, 0, 2), dilation=(2, 1, 3)),
        ),
        ("stride_gt_kernel", 1, 2, 3, (2, 3, 2), (2, 2, 1), True, dict(stride=3, output_padding=(2, 1, 2))),
        ("k1", 2, 3, 2, (2, 3, 4), (1, 1, 1), False, dict(stride=(1, 2, 1))),
        ("unit_volume", 1, 2, 3, (1, 1, 1), (3, 3, 3), True, dict(stride=2)),
    ],
}
GRID_CASES = [(rank, case) for rank in OTHER_RANKS for case in GRID[rank]]
GRID_IDS = [f"{rank}d-{case[0]}" for rank, case in GRID_CASES]


def to_channels_last(array):
    """A batched channels-first array ``(N, C, *spatial)`` as a C-contiguous ``(N, *spatial, C)``."""
    return np.ascontiguousarray(np.moveaxis(array, 1, -1))


def to_channels_first(array):
    return np.moveaxis(array, -1, 1)


def grid_call(rank, case, dtype, layout):
    """``(x, w, b, params)`` of a GRID case, ``x`` in ``layout`` and ``params`` naming it."""
    _, batch, c_in, c_out, size, kernel, bias, params = case
    x, w, b = call_arrays(batch, c_in, c_out, size, kernel, params, dtype, bias)
    if layout == LAYOUTS_BY_RANK[rank][1]:
        x = to_channels_last(x)
    return x, w, b, {**params, "layout": layout}


def layouts_of(rank):
    return [pytest.param(layout, id=layout) for layout in LAYOUTS_BY_RANK[rank]]


GRID_WITH_LAYOUTS = [
    pytest.param(rank, case, layout, id=f"{case_id}-{layout}")
    for (rank, case), case_id in zip(GRID_CASES, GRID_IDS)
    for layout in LAYOUTS_BY_RANK[rank]
]


# ---- parity ----------------------------------------------------------------------------------------------------


@pytest.mark.reference_backends("naive")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rank,case,layout", GRID_WITH_LAYOUTS)
def test_matches_oracle(backend, rank, case, layout, dtype):
    x, w, b, params = grid_call(rank, case, dtype, layout)
    y = run_or_skip(backend, x, w, b, **params)
    assert y.dtype == np.dtype(dtype) and y.flags.c_contiguous
    assert y.shape == testbed.output_shape(x.shape, w.shape, **params)
    assert_close_to_oracle(y, x, w, b, err_msg=f"{backend.name} {case[0]} {layout}", **params)


@pytest.mark.reference_backends("torch")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rank,case,layout", GRID_WITH_LAYOUTS)
def test_matches_torch(backend, rank, case, layout, dtype):
    """PyTorch's ``conv_transpose1d``/``3d`` in float64 on the widened inputs, independent of this project (the
    oracle's backend, naive, included)."""
    torch_or_skip()
    x, w, b, params = grid_call(rank, case, dtype, layout)
    if backend.name == "auto" and choose_backend(call_problem(x, w, b, **params)).name == "torch":
        pytest.skip("auto dispatches this case to torch: it would be compared with itself")
    y = run_or_skip(backend, x, w, b, **params)
    assert y.dtype == np.dtype(dtype)
    widened = [None if a is None else a.astype(np.float64) for a in (x, w, b)]
    assert_close(y, torch_conv_transpose(*widened, **params), err_msg=f"{backend.name} {case[0]} {layout}")


@pytest.mark.parametrize("batch", [0, 1, 3])
@pytest.mark.parametrize("rank", OTHER_RANKS)
def test_batches_unbatched_and_layouts(backend, rank, batch):
    """Every item of a batch is computed as if alone; an unbatched input is a batch of one; the channels-last
    result is the channels-first one transposed; a batch of 0 gives an empty result of the right shape."""
    params = dict(stride=2, padding=1, output_padding=1)
    size, kernel = {1: ((5,), (3,)), 3: ((2, 3, 2), (3, 2, 2))}[rank]
    x, w, b = call_arrays(batch, 3, 4, size, kernel, params, np.float64, True)
    first, last = LAYOUTS_BY_RANK[rank]
    y = run_or_skip(backend, x, w, b, **params)
    assert y.shape == testbed.output_shape(x.shape, w.shape, **params) and y.dtype == np.float64
    y_last = run_or_skip(backend, to_channels_last(x), w, b, layout=last, **params)
    assert y_last.shape == testbed.output_shape(to_channels_last(x).shape, w.shape, layout=last, **params)
    assert_close(to_channels_first(y_last), y)
    if batch:
        assert_close_to_oracle(y, x, w, b, **params)
    for item in range(batch):
        alone = run_or_skip(backend, x[item], w, b, **params)  # unbatched (C_in, *spatial)
        assert alone.shape == y.shape[1:]
        assert_close(alone, y[item])
        alone_last = run_or_skip(backend, to_channels_last(x)[item], w, b, layout=last, **params)
        assert_close(alone_last, y_last[item])
    assert first == call_problem(x, w, **params).layout


@st.composite
def problems(draw, rank):
    """A random valid configuration of ``rank`` spatial axes, small enough for every backend and the oracle."""
    axes = lambda lo, hi: st.tuples(*[st.integers(lo, hi)] * rank)  # noqa: E731
    groups = draw(st.integers(1, 3))
    kernel, stride, dilation = draw(axes(1, 4 if rank == 1 else 3)), draw(axes(1, 3)), draw(axes(1, 2))
    if draw(st.integers(0, 2)) == 0:  # a third U-Net-like (stride == kernel, no dilation)
        stride, dilation = kernel, (1,) * rank
    padding = draw(axes(0, 2))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    try:
        return testbed.Problem(
            batch=draw(st.integers(1, 2)),
            in_channels=groups * draw(st.integers(1, 2)),
            in_size=draw(axes(1, 6 if rank == 1 else 3)),
            out_channels=groups * draw(st.integers(1, 2)),
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
            dtype=draw(st.sampled_from([np.float32, np.float64])),
            has_bias=draw(st.booleans()),
            layout=draw(st.sampled_from(LAYOUTS_BY_RANK[rank])),
        )
    except ValueError:
        assume(False)


@pytest.mark.reference_backends("naive")
@pytest.mark.parametrize("rank", OTHER_RANKS)
def test_random_configurations_match_oracle(backend, rank):
    """Held-out configurations (hypothesis), beyond the grid; a backend that does not declare them is skipped."""
    if rank not in backend.ranks:
        pytest.skip(f"{backend.name} declares ranks {backend.ranks}")

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(problem=problems(rank), seed=st.integers(0, 2**32 - 1))
    def check(problem, seed):
        assume(backend.supports(problem))  # declared limits only: an undeclared refusal fails the test
        x, w, b = problem.random_arrays(seed)
        y = CONV_TRANSPOSE[rank](x, w, b, backend=backend.name, **call_kwargs(problem))
        assert y.shape == problem.output_shape
        assert_close_to_oracle(y, x, w, b, err_msg=backend.name, **call_kwargs(problem))

    check()


@pytest.mark.parametrize("rank", OTHER_RANKS)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_auto_never_refuses(rank, data):
    problem = data.draw(problems(rank))
    assert testbed.get_backend("auto").unsupported_reason(problem) is None


# ---- declared ranks --------------------------------------------------------------------------------------------


def unet_call(rank, dtype=np.float32):
    """A kernel 2, stride 2 up-convolution of ``rank`` spatial axes: the configuration every backend computes."""
    size = (5,) if rank == 1 else (3,) * rank
    return call_arrays(1, 2, 3, size, (2,) * rank, {}, dtype, True), dict(stride=2)


@pytest.mark.parametrize("rank", RANKS)
def test_undeclared_rank_is_refused_naming_it(backend_name, rank):
    """Declared (available here or not): a backend computes the ranks it declares and refuses the others with
    UnsupportedConfiguration naming the rank and the layout, before it is even asked whether it can run."""
    impl = testbed.get_backend(backend_name)
    (x, w, b), params = unet_call(rank)
    problem = call_problem(x, w, b, **params)
    assert set(impl.ranks) <= set(RANKS) and impl.ranks
    if rank in impl.ranks:
        assert impl.unsupported_reason(problem) is None
        return
    assert backend_name != "auto", "auto must declare every rank"
    reason = impl.unsupported_reason(problem)
    assert reason is not None and f"{rank}-D" in reason and problem.layout in reason
    with pytest.raises(testbed.UnsupportedConfiguration, match=rf"{backend_name}.*{rank}-D") as info:
        CONV_TRANSPOSE[rank](x, w, b, backend=backend_name, **params)
    assert info.value.backend == backend_name
    with pytest.raises(testbed.UnsupportedConfiguration, match=rf"{rank}-D"):
        testbed.resolve_backend(x, w, b, backend=backend_name, **params)


def test_auto_declares_every_rank():
    assert tuple(testbed.get_backend("auto").ranks) == RANKS


# ---- adjoint and block identities ------------------------------------------------------------------------------

# (rank, params, layout)
ADJOINT = [
    (1, dict(stride=2), None),
    (1, dict(stride=3, padding=2, output_padding=1, dilation=2, groups=2), None),
    (1, dict(stride=2, padding=1, output_padding=1, groups=4), "NLC"),
    (3, dict(stride=2), None),
    (3, dict(stride=(2, 1, 3), padding=(1, 0, 2), output_padding=(1, 0, 2), dilation=(1, 2, 1), groups=2), None),
    (3, dict(stride=(1, 2, 2), padding=(0, 1, 1), groups=4), "NDHWC"),
]
ADJOINT_IDS = ["1d-k3s2", "1d-dil_groups", "1d-depthwise-NLC", "3d-k3s2", "3d-asym_groups", "3d-depthwise-NDHWC"]


def adjoint_call(rank, params, layout, dtype=np.float64):
    """``(x, w, z, problem, params)``: input and weight of a call, a ``z`` of its output shape (all in
    ``layout``), its problem and its keyword arguments."""
    rng = np.random.default_rng(7)
    size = (6,) if rank == 1 else (3, 4, 3)
    groups = params.get("groups", 1)
    x = rng.standard_normal((2, 4, *size)).astype(dtype)
    w = rng.standard_normal((4, 4 // groups, *(3,) * rank)).astype(dtype)
    if layout is not None:
        x, params = to_channels_last(x), {**params, "layout": layout}
    problem = call_problem(x, w, **params)
    return x, w, rng.standard_normal(problem.output_shape), problem, params


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rank,params,layout", ADJOINT, ids=ADJOINT_IDS)
def test_adjoint_identity(backend, rank, params, layout, dtype):
    """<conv(z), x> = <z, conv_transpose(x)>, with testbed.testing's strided convolution (independent of every
    backend, checked against PyTorch's below)."""
    x, w, z, problem, params = adjoint_call(rank, params, layout, dtype)
    y = run_or_skip(backend, x, w, **params)
    assert adjoint_residual(x, w, y, z, problem) <= tolerance(dtype)


@pytest.mark.parametrize("rank,params,layout", ADJOINT, ids=ADJOINT_IDS)
def test_conv_adjoint_is_torchs_conv(rank, params, layout):
    """testbed.testing.conv_adjoint is PyTorch's conv1d/conv3d with the same weight and parameters, in both
    layouts."""
    _x, w, z, problem, params = adjoint_call(rank, params, layout)
    forward = {k: v for k, v in params.items() if k != "layout"}
    z_first = z if layout is None else np.ascontiguousarray(to_channels_first(z))
    expected = torch_conv(z_first, w, **forward)
    got = conv_adjoint(z, w, problem)
    assert got.shape == problem.input_shape and got.flags.c_contiguous
    assert_close(got if layout is None else to_channels_first(got), expected)


def test_conv_adjoint_refuses_wrong_shapes_and_conv2d_adjoint_other_ranks():
    _x, w, z, problem, _ = adjoint_call(1, dict(stride=2), None)
    with pytest.raises(ValueError, match=r"z must have the transposed convolution's output shape \(2, 4, 13\)"):
        conv_adjoint(z[..., 1:], w, problem)
    with pytest.raises(ValueError, match=r"weight must have the problem's weight shape \(4, 4, 3\)"):
        conv_adjoint(z, w[None], problem)
    with pytest.raises(ValueError, match=r"conv2d_adjoint takes 2-D problems, got a 1-D one .*use conv_adjoint"):
        conv2d_adjoint(z, w, problem)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rank", OTHER_RANKS)
def test_seed_blocks_are_kernel_times_element_bitwise(backend, rank, n, dtype):
    """The seed post's check in 1-D and 3-D: one channel, kernel n, stride n, no padding: every output block is
    exactly ``weight × input element`` (one product, so no rounding difference is allowed; fft excepted)."""
    rng = np.random.default_rng(n)
    size = (3,) if rank == 1 else (2, 1, 3)
    x = rng.standard_normal((1, 1, *size)).astype(dtype)
    w = rng.standard_normal((1, 1, *(n,) * rank)).astype(dtype)
    y = run_or_skip(backend, x, w, stride=n)
    assert y.shape == (1, 1, *(n * s for s in size))
    for index in itertools.product(*(range(s) for s in size)):
        block = y[(0, 0, *(slice(n * i, n * (i + 1)) for i in index))]
        expected = w[0, 0] * x[(0, 0, *index)]
        if backend.name == "fft":
            assert_close(block, expected, rtol=tolerance(dtype), err_msg=str(index))
        else:
            assert np.array_equal(block, expected), index


# ---- out= ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", OTHER_RANKS)
def test_out_receives_the_result(backend, rank):
    """``out=`` of the exact output shape (unbatched: without N; channels last: channels last) is written and
    returned, in both layouts; a batched-shape ``out`` for an unbatched input is refused naming both shapes."""
    params = dict(stride=2, padding=1, output_padding=1)
    size, kernel = {1: ((5,), (3,)), 3: ((2, 3, 2), (3, 2, 2))}[rank]
    x, w, b = call_arrays(2, 3, 4, size, kernel, params, np.float32, True)
    last = LAYOUTS_BY_RANK[rank][1]
    for inputs, layout in ((x, None), (x[0], None), (to_channels_last(x), last), (to_channels_last(x)[1], last)):
        expected = run_or_skip(backend, inputs, w, b, layout=layout, **params)
        out = np.full(expected.shape, np.nan, dtype=np.float32)
        result = CONV_TRANSPOSE[rank](inputs, w, b, backend=backend.name, out=out, layout=layout, **params)
        assert result is out
        if backend.deterministic:
            np.testing.assert_array_equal(out, expected)
        else:
            assert_close(out, expected)
    unbatched_shape = testbed.output_shape(x[0].shape, w.shape, **params)
    wrong = np.empty((1, *unbatched_shape), np.float32)
    with pytest.raises(ValueError, match=re.escape(f"out must have the output's shape {unbatched_shape}")):
        CONV_TRANSPOSE[rank](x[0], w, b, backend=backend.name, out=wrong, **params)


# ---- bad input -------------------------------------------------------------------------------------------------

_rng = np.random.default_rng(0)
VALID = {
    1: (_rng.standard_normal((2, 4, 5)), _rng.standard_normal((4, 3, 3)), _rng.standard_normal(3)),
    3: (_rng.standard_normal((2, 4, 3, 4, 5)), _rng.standard_normal((4, 3, 3, 2, 2)), _rng.standard_normal(3)),
}
X1, W1, B1 = VALID[1]
X3, W3, B3 = VALID[3]

# (id, rank, overrides of the valid call, expected exception, regex the message must match)
BAD_CALLS = [
    (
        "input_4d",
        1,
        dict(input=X1[None]),
        ValueError,
        r"input must be 3-D \(N, C_in, L\) or 2-D \(C_in, L\), got shape \(1, 2, 4, 5\)",
    ),
    ("input_1d", 1, dict(input=X1[0, 0]), ValueError, r"input must be 3-D .* got shape \(5,\)"),
    (
        "weight_4d",
        1,
        dict(weight=W1[None]),
        ValueError,
        r"weight must be 3-D \(C_in, C_out/groups, kL\), got shape \(1, 4, 3, 3\)",
    ),
    ("weight_2d", 1, dict(weight=W1[0]), ValueError, r"weight must be 3-D .* got shape \(3, 3\)"),
    ("stride_pair", 1, dict(stride=(1, 2)), TypeError, r"stride must be an int or a 1-tuple of ints, got \(1, 2\)"),
    ("stride_zero", 1, dict(stride=0), ValueError, r"stride must be positive \(>= 1\), got 0"),
    ("padding_negative", 1, dict(padding=(-1,)), ValueError, r"padding must be non-negative \(>= 0\), got \(-1,\)"),
    ("padding_pair", 1, dict(padding=(1, 1)), TypeError, r"padding must be an int or a 1-tuple of ints, got \(1, 1\)"),
    ("dilation_zero", 1, dict(dilation=(0,)), ValueError, r"dilation must be positive \(>= 1\), got \(0,\)"),
    ("dilation_float", 1, dict(dilation=1.5), TypeError, r"dilation must be an int or a 1-tuple of ints, got 1.5"),
    (
        "output_padding_pair",
        1,
        dict(output_padding=(0, 0)),
        TypeError,
        r"output_padding must be an int or a 1-tuple of ints",
    ),
    (
        "output_padding_negative",
        1,
        dict(output_padding=-1),
        ValueError,
        r"output_padding must be non-negative .* got -1",
    ),
    (
        "output_padding_too_big",
        1,
        dict(stride=2, output_padding=2),
        ValueError,
        r"output_padding must be smaller than either stride or dilation, got output_padding=\(2,\), stride=\(2,\), "
        r"dilation=\(1,\) \(axis l\)",
    ),
    (
        "output_size_unreachable",
        1,
        dict(stride=2, output_size=(20,)),
        ValueError,
        r"output_size \(20,\) is unreachable: valid sizes range from \(11,\) to \(12,\) for an input of spatial size "
        r"\(5,\)",
    ),
    (
        "output_size_length",
        1,
        dict(output_size=(11, 12)),
        ValueError,
        r"output_size must have 1 spatial entry \(or 3 for a full shape\), got \(11, 12\)",
    ),
    (
        "layout_2d",
        1,
        dict(layout="NHWC"),
        ValueError,
        r"layout must be one of \('NCL', 'NLC'\) for a 1-D transposed convolution, got 'NHWC'",
    ),
    ("layout_3d", 1, dict(layout="NCDHW"), ValueError, r"layout must be one of \('NCL', 'NLC'\) .* got 'NCDHW'"),
    ("bias_shape", 1, dict(bias=B1[:2]), ValueError, r"bias must have shape \(C_out,\) = \(3,\), got \(2,\)"),
    (
        "channel_mismatch",
        1,
        dict(weight=W1[:3]),
        ValueError,
        r"weight.shape\[0\] \(3\) must equal the input's channel count \(4\)",
    ),
    ("groups_not_dividing", 1, dict(groups=3), ValueError, r"input channels \(4\) must be divisible by groups \(3\)"),
    ("groups_zero", 1, dict(groups=0), ValueError, r"groups must be a positive int, got 0"),
    ("empty_output", 1, dict(padding=4), ValueError, r"non-positive size \(-1,\) for input size \(5,\), kernel \(3,\)"),
    (
        "input_3d",
        3,
        dict(input=X3[0, 0]),
        ValueError,
        r"input must be 5-D \(N, C_in, D, H, W\) or 4-D \(C_in, D, H, W\), got shape \(3, 4, 5\)",
    ),
    ("input_6d", 3, dict(input=X3[None]), ValueError, r"input must be 5-D .* got shape \(1, 2, 4, 3, 4, 5\)"),
    (
        "weight_4d",
        3,
        dict(weight=W3[0]),
        ValueError,
        r"weight must be 5-D \(C_in, C_out/groups, kD, kH, kW\), got shape \(3, 3, 2, 2\)",
    ),
    ("stride_pair", 3, dict(stride=(1, 2)), TypeError, r"stride must be an int or a 3-tuple of ints, got \(1, 2\)"),
    ("stride_negative", 3, dict(stride=(1, -2, 1)), ValueError, r"stride must be positive \(>= 1\), got \(1, -2, 1\)"),
    (
        "padding_negative",
        3,
        dict(padding=(1, -1, 0)),
        ValueError,
        r"padding must be non-negative \(>= 0\), got \(1, -1, 0\)",
    ),
    (
        "padding_4",
        3,
        dict(padding=(0, 0, 0, 0)),
        TypeError,
        r"padding must be an int or a 3-tuple of ints, got \(0, 0, 0, 0\)",
    ),
    ("dilation_zero", 3, dict(dilation=(1, 1, 0)), ValueError, r"dilation must be positive \(>= 1\), got \(1, 1, 0\)"),
    (
        "output_padding_pair",
        3,
        dict(output_padding=(1, 0)),
        TypeError,
        r"output_padding must be an int or a 3-tuple of ints, got \(1, 0\)",
    ),
    (
        "output_padding_too_big",
        3,
        dict(stride=(2, 1, 2), output_padding=(1, 1, 0)),
        ValueError,
        r"output_padding must be smaller than either stride or dilation, got output_padding=\(1, 1, 0\), "
        r"stride=\(2, 1, 2\), dilation=\(1, 1, 1\) \(axis h\)",
    ),
    (
        "output_size_unreachable",
        3,
        dict(stride=2, output_size=(7, 8, 20)),
        ValueError,
        r"output_size \(7, 8, 20\) is unreachable: valid sizes range from \(7, 8, 10\) to \(8, 9, 11\)",
    ),
    (
        "output_size_length",
        3,
        dict(output_size=(7, 8)),
        ValueError,
        r"output_size must have 3 spatial entries \(or 5 for a full shape\), got \(7, 8\)",
    ),
    (
        "layout_1d",
        3,
        dict(layout="NCL"),
        ValueError,
        r"layout must be one of \('NCDHW', 'NDHWC'\) for a 3-D transposed convolution, got 'NCL'",
    ),
    ("layout_2d", 3, dict(layout="NHWC"), ValueError, r"layout must be one of \('NCDHW', 'NDHWC'\) .* got 'NHWC'"),
    ("bias_2d", 3, dict(bias=B3[None]), ValueError, r"bias must have shape \(C_out,\) = \(3,\), got \(1, 3\)"),
    (
        "channel_mismatch",
        3,
        dict(weight=W3[:3]),
        ValueError,
        r"weight.shape\[0\] \(3\) must equal the input's channel count \(4\)",
    ),
    ("groups_not_dividing", 3, dict(groups=3), ValueError, r"input channels \(4\) must be divisible by groups \(3\)"),
    (
        "empty_output",
        3,
        dict(padding=(0, 3, 0)),
        ValueError,
        r"non-positive size \(5, -1, 6\) for input size \(3, 4, 5\)",
    ),
]


def bad_call(function, rank, overrides):
    kwargs = dict(zip(("input", "weight", "bias"), VALID[rank]))
    kwargs.update(overrides)
    return function(kwargs.pop("input"), kwargs.pop("weight"), kwargs.pop("bias"), **kwargs)


@pytest.mark.parametrize(
    "rank,overrides,error,message", [c[1:] for c in BAD_CALLS], ids=[f"{c[1]}d-{c[0]}" for c in BAD_CALLS]
)
def test_bad_input_raises_clear_error(rank, overrides, error, message):
    """The call, resolve_backend, explain and (where only shapes are involved) output_shape name the argument,
    its value and what is expected, the same way. (These four take the rank from the weight, so a weight of
    another rank is the call's error only: they read it as a valid weight of that rank.)"""
    with pytest.raises(error, match=message):
        bad_call(CONV_TRANSPOSE[rank], rank, overrides)
    if np.ndim(overrides.get("weight", VALID[rank][1])) != rank + 2:
        return
    for function in (testbed.resolve_backend, testbed.explain):
        with pytest.raises(error, match=message):
            bad_call(function, rank, overrides)
    if not {"bias", "output_size"} & set(overrides):
        shapes = {name: np.shape(value) for name, value in overrides.items() if name in ("input", "weight")}
        x_shape, w_shape = shapes.get("input", VALID[rank][0].shape), shapes.get("weight", VALID[rank][1].shape)
        rest = {k: v for k, v in overrides.items() if k not in ("input", "weight")}
        with pytest.raises(error, match=message):
            testbed.output_shape(x_shape, w_shape, **rest)


# ---- the API at every rank -------------------------------------------------------------------------------------


def _torch_signature(rank):
    """``[(name, default), ...]`` of ``torch.nn.functional.conv_transpose{rank}d``: its inspect signature where
    torch exposes one, else the one its docstring documents (a builtin's first line)."""
    torch = torch_or_skip()
    function = getattr(torch.nn.functional, f"conv_transpose{rank}d")
    try:
        parameters = inspect.signature(function).parameters.values()
        return [(p.name, p.default) for p in parameters]
    except (ValueError, TypeError):
        match = re.search(rf"conv_transpose{rank}d\((.*?)\) -> Tensor", function.__doc__)
        assert match, f"torch's conv_transpose{rank}d documents no signature"
        pairs = [item.strip().partition("=") for item in match.group(1).split(",")]
        return [(name, ast.literal_eval(default) if eq else inspect.Parameter.empty) for name, eq, default in pairs]


@pytest.mark.parametrize("rank", RANKS)
def test_signature_is_torchs(rank):
    """The positional arguments, their order and defaults are torch.nn.functional's; the rest keyword-only."""
    ours = inspect.signature(CONV_TRANSPOSE[rank]).parameters.values()
    positional = [(p.name, p.default) for p in ours if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == _torch_signature(rank)
    keyword_only = [p.name for p in ours if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only == ["backend", "output_size", "out", "layout"]
    assert inspect.signature(CONV_TRANSPOSE[rank]) == inspect.signature(testbed.conv_transpose2d)


@pytest.mark.parametrize("rank", OTHER_RANKS)
def test_output_size_picks_torchs_output_padding(rank):
    """``output_size``, spatial or a full shape (channels last too), gives what ``ConvTranspose1d/3d.forward(x,
    output_size=...)`` gives, for every reachable size."""
    torch = torch_or_skip()
    stride, padding = {1: (3, 1), 3: ((2, 1, 3), (1, 0, 1))}[rank]
    size = (5,) if rank == 1 else (2, 3, 2)
    x = np.random.default_rng(8).standard_normal((1, 2, *size))
    module = getattr(torch.nn, f"ConvTranspose{rank}d")(2, 3, 3, stride=stride, padding=padding, bias=False).double()
    w = module.weight.detach().numpy()
    smallest = testbed.output_shape(x.shape, w.shape, stride=stride, padding=padding)[2:]
    strides = (stride,) * rank if isinstance(stride, int) else stride
    last = LAYOUTS_BY_RANK[rank][1]
    for extra in itertools.product(*(range(s) for s in strides)):
        out_size = tuple(lo + e for lo, e in zip(smallest, extra))
        expected = module(torch.from_numpy(x), output_size=out_size).detach().numpy()
        for request in (out_size, list(out_size), (1, 3, *out_size)):
            y = CONV_TRANSPOSE[rank](x, w, stride=stride, padding=padding, output_size=request, backend="naive")
            assert_close(y, expected)
        for request in (out_size, (3, *out_size)):  # unbatched: the full shape has no N
            alone = CONV_TRANSPOSE[rank](x[0], w, stride=stride, padding=padding, output_size=request)
            assert_close(alone, expected[0])
        y_last = CONV_TRANSPOSE[rank](
            to_channels_last(x), w, stride=stride, padding=padding, output_size=(1, *out_size, 3), layout=last
        )
        assert_close(to_channels_first(y_last), expected)


@pytest.mark.parametrize("rank,case", GRID_CASES, ids=GRID_IDS)
def test_output_shape_is_torchs(rank, case):
    """output_shape, batched and unbatched, both layouts, is the shape of PyTorch's result."""
    x, w, _b, params = grid_call(rank, case, np.float64, LAYOUTS_BY_RANK[rank][0])
    expected = torch_conv_transpose(x, w, **{k: v for k, v in params.items() if k != "layout"}).shape
    assert testbed.output_shape(x.shape, w.shape, **params) == expected
    assert testbed.output_shape(x.shape[1:], w.shape, **params) == expected[1:]
    last = LAYOUTS_BY_RANK[rank][1]
    channels_last = (expected[0], *expected[2:], expected[1])
    assert testbed.output_shape(to_channels_last(x).shape, w.shape, **{**params, "layout": last}) == channels_last


@pytest.mark.parametrize("rank", OTHER_RANKS)
def test_resolve_backend_at_every_rank(rank):
    """Every registered backend: resolve_backend names it (or auto's choice, which declares the rank) where it
    declares the rank and can run, and refuses the rank otherwise."""
    (x, w, b), params = unet_call(rank)
    for name in testbed.list_backends():
        impl = testbed.get_backend(name)
        if rank not in impl.ranks:
            with pytest.raises(testbed.UnsupportedConfiguration, match=rf"{rank}-D"):
                testbed.resolve_backend(x, w, b, backend=name, **params)
        elif impl.available and impl.device in ("cpu", "any"):
            resolved = testbed.resolve_backend(x, w, b, backend=name, **params)
            assert resolved.name == name if name != "auto" else rank in resolved.ranks
    with testbed.use_backend("naive"):
        assert testbed.resolve_backend(x, w, b, **params).name == "naive"


def test_preference_class_names_the_rank():
    def klass(rank, kernel, stride, groups=1, c_out=4):
        size = {1: 6, 2: (6, 6), 3: (3, 3, 3)}[rank]
        return preference.problem_class(
            testbed.Problem(
                batch=1,
                in_channels=4,
                in_size=size,
                out_channels=c_out,
                kernel_size=kernel,
                stride=stride,
                groups=groups,
                rank=rank,
            )
        )

    for rank, suffix in ((1, "-1d"), (2, ""), (3, "-3d")):
        assert klass(rank, 2, 2) == "nonoverlapping" + suffix
        assert klass(rank, 3, 2) == "general" + suffix
        assert klass(rank, 3, 1) == "stride1" + suffix
        assert klass(rank, 3, 2, groups=4) == "depthwise" + suffix
        assert klass(rank, 3, 1, groups=2) == "grouped" + suffix


def test_wisdom_signature_differs_per_rank():
    """The same sizes at three ranks (a 1-D signal, one row of an image, one plane of a volume) never share a
    wisdom entry: the signature names the layout (hence the rank) and each axis."""
    common = dict(batch=1, in_channels=4, out_channels=2, dtype=np.float32)
    one = testbed.Problem(in_size=(6,), kernel_size=(2,), stride=(2,), **common)
    two = testbed.Problem(in_size=(1, 6), kernel_size=(1, 2), stride=(1, 2), **common)
    three = testbed.Problem(in_size=(1, 1, 6), kernel_size=(1, 1, 2), stride=(1, 1, 2), **common)
    signatures = [wisdom.signature(problem) for problem in (one, two, three)]
    assert len(set(signatures)) == 3
    assert " NCL " in signatures[0] and " L6 " in signatures[0] and " k2 " in signatures[0]
    assert " NCDHW " in signatures[2] and " D1 H1 W6 " in signatures[2] and " k1x1x2 " in signatures[2]
    channels_last = wisdom.signature(one.with_(layout="NLC"))
    assert channels_last != signatures[0] and " NLC " in channels_last


@pytest.mark.parametrize("rank", OTHER_RANKS)
def test_explain_and_tune_at_every_rank(rank, wisdom_file):
    """explain names the rank's class and signature; tune (inline, tiny shapes) stores a winner that declares
    the rank, under the rank's own signature, which explain then reports; the same sizes at rank 2 stay
    undecided."""
    (x, w, b), params = unet_call(rank)
    why = testbed.explain(x, w, b, **params)
    assert why.reason == "rule" and why.problem_class == f"nonoverlapping-{rank}d"
    assert f" {LAYOUTS_BY_RANK[rank][0]} " in why.signature
    assert rank in testbed.get_backend(why.backend).ranks and why.backend in str(why)
    quick = TimingSettings(warmup=0, min_repeats=2, max_repeats=2, budget_s=0.0, min_sample_s=0.0, warmup_s=0.0)
    result = testbed.tune(x, w, b, isolation="inline", settings=quick, **params)
    assert result.winner is not None and rank in testbed.get_backend(result.winner).ranks
    assert result.problem.rank == rank and result.signature == why.signature
    for candidate in result.candidates:
        assert candidate.status != "ok" or rank in testbed.get_backend(candidate.backend).ranks
    assert wisdom.load_entries()[result.signature]["backend"] == result.winner
    after = testbed.explain(x, w, b, **params)
    assert after.reason == "wisdom" and after.backend == result.winner
    row = x.reshape(*x.shape[:2], 1, -1) if rank == 1 else x[:, :, 0]  # the same sizes at rank 2
    planar = w.reshape(*w.shape[:2], 1, -1) if rank == 1 else w[:, :, 0]
    assert testbed.explain(row, planar, b, stride=(1, 2) if rank == 1 else 2).reason == "rule"


def test_oracle_and_call_kwargs_at_every_rank():
    """testbed.testing's oracle takes the rank from the weight and call_kwargs reproduces a problem of any rank."""
    for rank in RANKS:
        problem = testbed.Problem(
            batch=2,
            in_channels=2,
            in_size=(3,) * rank,
            out_channels=4,
            kernel_size=3,
            stride=2,
            padding=1,
            groups=2,
            has_bias=True,
            layout=LAYOUTS_BY_RANK[rank][1],
        )
        x, w, b = problem.random_arrays(0)
        y = oracle(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), **call_kwargs(problem))
        assert y.dtype == np.float64 and y.shape == problem.output_shape
        assert call_problem(x, w, b, **call_kwargs(problem)) == problem
    with pytest.raises(ValueError, match=r"weight must be 3-D, 4-D or 5-D .* got shape \(1, 1\)"):
        oracle(np.ones((1, 1)), np.ones((1, 1)))


# (overrides of a valid 1-D Problem, expected exception, regex the message must match)
BAD_PROBLEMS = [
    (dict(rank=4), ValueError, r"rank must be one of \(1, 2, 3\) \(the number of spatial axes\), got 4"),
    (dict(rank=True), ValueError, r"rank must be one of \(1, 2, 3\) .* got True"),
    (dict(kernel_size=(2, 2)), ValueError, r"disagree on the number of spatial axes: in_size has 1, kernel_size has 2"),
    (dict(stride=(1, 2, 1)), ValueError, r"disagree on the number of spatial axes: in_size has 1, stride has 3"),
    (dict(in_size=(3, 4), layout="NCL"), ValueError, r"layout must be one of \('NCHW', 'NHWC'\) for the 2 spatial"),
    (dict(rank=1, layout="NCHW"), ValueError, r"layout must be one of \('NCL', 'NLC'\) for a 1-D .* got 'NCHW'"),
    (dict(rank=3), TypeError, r"input spatial size must be an int or a 3-tuple of ints, got \(3,\)"),
    (dict(layout="NCXW"), ValueError, r"layout must be one of \('NCL', 'NLC', 'NCHW', 'NHWC', 'NCDHW', 'NDHWC'\)"),
]


@pytest.mark.parametrize("overrides,error,message", BAD_PROBLEMS, ids=[str(b[0]) for b in BAD_PROBLEMS])
def test_problem_of_a_rank_names_what_disagrees(overrides, error, message):
    """A Problem's rank comes from ``rank``, else the layout, else the per-axis sequences: whatever contradicts
    it is named with its value."""
    with pytest.raises(error, match=message):
        testbed.Problem(**{**dict(batch=1, in_channels=2, in_size=(3,), out_channels=2, kernel_size=2), **overrides})
