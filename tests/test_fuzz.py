"""Differential fuzz: every host backend against an independent scatter over (pixel, tap) pairs and against
PyTorch, on random configurations that include huge strides, dilations and paddings cropped to small outputs
(up to 2⁶², where only the taps near the centre of a gigantic canvas land), every spelling of a pair argument
and signed zeros. A backend may decline (UnsupportedConfiguration), never answer wrongly or run out of memory."""

import resource

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import testbed
from reference import torch_conv_transpose2d
from testbed.testing import TOLERANCES, relative_error

#: Address space the fuzzing process may add while it runs: a backend whose memory follows the parameters
#: (a canvas of 10¹² samples, a 2⁶¹-long accumulator) must fail here, not exhaust the machine.
FUZZ_ADDRESS_SPACE = 2 * 2**30

HOST_BACKENDS = [name for name in testbed.list_backends() if testbed.get_backend(name).device != "cuda"]
SCALES = [1, 2, 3, 10**6, 10**9 + 7, 2**40, 2**61]


@st.composite
def axes(draw):
    """One spatial axis: (input size, kernel, stride, dilation, padding, output_padding). Huge strides and
    dilations come with the padding that crops the canvas to a few outputs around a tap that lands."""
    size, kernel = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    scale = draw(st.sampled_from(SCALES))
    if scale <= 3:  # an ordinary configuration
        stride, dilation = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        padding = draw(st.integers(0, 3))
    else:
        stride, dilation = scale + draw(st.integers(0, 2)), scale * draw(st.integers(1, 2)) + draw(st.integers(0, 2))
        # Land tap (i, k) a few outputs into the window: padding = i·s + k·d - o.
        i, k = draw(st.integers(0, size - 1)), draw(st.integers(0, kernel - 1))
        padding = max(0, i * stride + k * dilation - draw(st.integers(0, 3)))
    output_padding = draw(st.integers(0, min(max(stride, dilation) - 1, 2)))
    out = (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
    assume(1 <= out <= 40)
    # Valid calls only: the uncropped extent must fit int64 (beyond it Problem refuses, tested elsewhere).
    assume((size - 1) * stride + dilation * (kernel - 1) + output_padding + 1 <= 2**63 - 1)
    return size, kernel, stride, dilation, padding, output_padding


def spell(draw, pair):
    """``pair`` as an int (when equal), tuple, list, NumPy array or torch.Size."""
    kinds = ["tuple", "list", "array"] + (["int"] if pair[0] == pair[1] else [])
    try:
        import torch

        kinds.append("torch.Size")
    except ImportError:
        torch = None
    kind = draw(st.sampled_from(kinds))
    return {
        "int": lambda: pair[0],
        "tuple": lambda: tuple(pair),
        "list": lambda: list(pair),
        "array": lambda: np.array(pair, dtype=np.int64),
        "torch.Size": lambda: torch.Size(pair),
    }[kind]()


@st.composite
def calls(draw):
    h_axis, w_axis = draw(axes()), draw(axes())
    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    (h, kh, *_), (w, kw, *_) = h_axis, w_axis
    params = {
        name: spell(draw, (h_axis[i], w_axis[i]))
        for i, name in enumerate(["", "", "stride", "dilation", "padding", "output_padding"])
        if name
    }
    params["groups"] = groups
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((draw(st.integers(1, 2)), c_in, h, w)).astype(dtype)
    weight = rng.standard_normal((c_in, c_out // groups, kh, kw)).astype(dtype)
    x[rng.random(x.shape) < 0.2] = -0.0  # signed zeros: the result must never be -0.0
    bias = draw(st.sampled_from([None, "random", "-0"]))
    bias = {None: None, "random": rng.standard_normal(c_out), "-0": np.full(c_out, -0.0)}[bias]
    return x, weight, None if bias is None else bias.astype(dtype), params, (h_axis, w_axis)


def definition(x, weight, bias, params, axes_):
    """The definition, one (pixel, tap) product at a time, in float64 (independent of testbed's code)."""
    (_, _, sh, dh, ph, oph), (_, _, sw, dw, pw, opw) = axes_
    groups = params["groups"]
    n, c_in, h, w = x.shape
    cog, kh, kw = weight.shape[1:]
    cig = c_in // groups
    out_h = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    out_w = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    y = np.zeros((n, groups * cog, out_h, out_w))
    for b, ci, ih, iw, co, a, c in np.ndindex(n, c_in, h, w, cog, kh, kw):
        oh, ow = ih * sh - ph + a * dh, iw * sw - pw + c * dw
        if 0 <= oh < out_h and 0 <= ow < out_w:
            y[b, (ci // cig) * cog + co, oh, ow] += float(x[b, ci, ih, iw]) * float(weight[ci, co, a, c])
    return y if bias is None else y + bias.astype(np.float64)[None, :, None, None]


@pytest.fixture
def bounded_address_space():
    """This process's address-space soft limit lowered to what it holds plus FUZZ_ADDRESS_SPACE for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/status") as status:
            held = int(status.read().split("VmSize:")[1].split()[0]) * 1024
    except (OSError, IndexError):
        held = None  # not Linux: no limit
    if held is not None:
        limit = held + FUZZ_ADDRESS_SPACE
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(call=calls())
def test_every_backend_matches_the_definition(bounded_address_space, call):
    x, weight, bias, params, axes_ = call
    expected = definition(x, weight, bias, params, axes_)
    plain = dict(
        stride=tuple(a[2] for a in axes_),
        dilation=tuple(a[3] for a in axes_),
        padding=tuple(a[4] for a in axes_),
        output_padding=tuple(a[5] for a in axes_),
        groups=params["groups"],
    )
    if max(max(v) if isinstance(v, tuple) else v for v in plain.values()) < 2**31:
        try:
            reference = torch_conv_transpose2d(
                x.astype(np.float64),
                weight.astype(np.float64),
                None if bias is None else bias.astype(np.float64),
                **plain,
            )
            assert relative_error(reference, expected) < 1e-12
        except pytest.skip.Exception:
            pass
    for name in HOST_BACKENDS:
        backend = testbed.get_backend(name)
        if not backend.available:
            continue
        try:
            y = testbed.conv_transpose2d(x, weight, bias, backend=name, **params)
        except testbed.UnsupportedConfiguration:
            assert name != "auto"
            continue
        assert y.shape == expected.shape and y.dtype == x.dtype, name
        assert relative_error(y, expected) < TOLERANCES[np.dtype(x.dtype)], name
        assert not np.signbit(y[y == 0]).any(), f"{name} returned -0.0"
