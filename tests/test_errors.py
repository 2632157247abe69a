"""Bad input gets a clear ValueError/TypeError naming the argument, the value and what is expected; valid
edge cases work; inputs are never modified."""

import re

import numpy as np
import pytest

import testbed
from helpers import run_or_skip
from testbed.testing import assert_close

rng = np.random.default_rng(0)
X = rng.standard_normal((2, 4, 5, 5))
W = rng.standard_normal((4, 3, 3, 3))
B = rng.standard_normal(3)

# (id, kwargs overriding a valid call, expected exception, regex the message must match)
BAD_CALLS = [
    ("input_2d", dict(input=X[0, 0]), ValueError, r"input must be 4-D .* got shape \(5, 5\)"),
    ("input_5d", dict(input=X[None]), ValueError, r"input must be 4-D"),
    ("weight_3d", dict(weight=W[0]), ValueError, r"weight must be 4-D .* got shape \(3, 3, 3\)"),
    ("channel_mismatch", dict(weight=W[:3]), ValueError, r"weight.shape\[0\] \(3\) must equal .* \(4\)"),
    ("groups_not_divisor", dict(groups=3), ValueError, r"input channels \(4\) must be divisible by groups \(3\)"),
    ("groups_zero", dict(groups=0), ValueError, r"groups must be a positive int, got 0"),
    ("groups_float", dict(groups=2.0), ValueError, r"groups must be a positive int, got 2.0"),
    ("stride_zero", dict(stride=0), ValueError, r"stride must be positive .* got 0"),
    ("stride_negative_pair", dict(stride=(2, -1)), ValueError, r"stride must be positive .* got \(2, -1\)"),
    ("stride_float", dict(stride=1.5), TypeError, r"stride must be an int or a pair of ints, got 1.5"),
    ("stride_triple", dict(stride=(1, 2, 3)), TypeError, r"stride must be an int or a pair of ints"),
    ("stride_bool", dict(stride=True), TypeError, r"stride must be an int or a pair of ints, got True"),
    ("dilation_zero", dict(dilation=0), ValueError, r"dilation must be positive .* got 0"),
    ("padding_negative", dict(padding=-1), ValueError, r"padding must be non-negative .* got -1"),
    (
        "output_padding_too_big",
        dict(stride=2, output_padding=2),
        ValueError,
        r"output_padding must be smaller than either stride or dilation, got output_padding=\(2, 2\)",
    ),
    ("output_padding_stride1", dict(output_padding=1), ValueError, r"output_padding must be smaller"),
    ("nonpositive_output", dict(padding=4), ValueError, r"non-positive size \(-1, -1\)"),
    ("bias_shape", dict(bias=B[:2]), ValueError, r"bias must have shape \(C_out,\) = \(3,\), got \(2,\)"),
    ("bias_2d", dict(bias=B[None]), ValueError, r"bias must have shape \(C_out,\) = \(3,\), got \(1, 3\)"),
    (
        "output_size_unreachable",
        dict(stride=2, output_size=(20, 11)),
        ValueError,
        r"output_size \(20, 11\) is unreachable: valid sizes range from \(11, 11\) to \(12, 12\)",
    ),
    ("output_size_length", dict(output_size=(7, 7, 7)), ValueError, r"output_size must have 2 spatial entries"),
    (
        "output_size_and_padding",
        dict(stride=2, output_padding=1, output_size=(12, 12)),
        ValueError,
        r"give either output_size or output_padding",
    ),
    ("unknown_backend", dict(backend="cudnn"), ValueError, r"backend must be one of \[.*'naive'.*\], got 'cudnn'"),
    ("backend_not_str", dict(backend=3), ValueError, r"backend must be one of"),
    (
        "complex_input",
        dict(input=X.astype(complex)),
        TypeError,
        r"input must have dtype float32 or float64.*complex128",
    ),
    ("string_input", dict(input=np.array([["a"]])), TypeError, r"input must have dtype float32 or float64.*<U1"),
    ("str_input", dict(input="abc"), TypeError, r"input must be a real numeric array, got str"),
    ("object_weight", dict(weight=W.astype(object)), TypeError, r"weight must have dtype float32 or float64.*object"),
    ("bool_input", dict(input=X > 0), TypeError, r"input must have dtype float32 or float64 .* got bool"),
    (
        "float16_input",
        dict(input=X.astype(np.float16), weight=W.astype(np.float16)),
        TypeError,
        r"input must have dtype float32 or float64 .* got float16",
    ),
    (
        "dtype_mismatch",
        dict(weight=W.astype(np.float32)),
        TypeError,
        r"weight dtype \(float32\) must match the input dtype \(float64\)",
    ),
    ("bias_dtype_mismatch", dict(bias=B.astype(np.float32)), TypeError, r"bias dtype \(float32\) must match"),
]


def call(**overrides):
    kwargs = dict(input=X, weight=W, bias=B)
    kwargs.update(overrides)
    return testbed.conv_transpose2d(kwargs.pop("input"), kwargs.pop("weight"), kwargs.pop("bias"), **kwargs)


@pytest.mark.parametrize("overrides,error,message", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_clear_error(overrides, error, message):
    with pytest.raises(error, match=message):
        call(**overrides)


def test_unsupported_configuration_names_backend_and_reason():
    with pytest.raises(testbed.UnsupportedConfiguration, match=r"backend 'kron' .* stride == kernel") as info:
        call(backend="kron", stride=2)
    assert isinstance(info.value, ValueError) and info.value.backend == "kron"


def test_unavailable_backend_says_why():
    for name, status in testbed.backend_status().items():
        impl = testbed.get_backend(name)
        assert name in testbed.list_backends()
        assert (name in testbed.available_backends()) == impl.available
        if not impl.available:
            with pytest.raises(testbed.BackendUnavailable, match=re.escape(status)):
                call(backend=name)


def test_integer_inputs_promote_to_float64(backend):
    xi = rng.integers(-3, 4, size=(1, 2, 3, 3))
    wi = rng.integers(-3, 4, size=(2, 2, 2, 2))
    y = run_or_skip(backend, xi, wi, stride=2)
    assert y.dtype == np.float64
    assert_close(y, run_or_skip(backend, xi.astype(float), wi.astype(float), stride=2))


def test_python_lists_are_accepted():
    y = testbed.conv_transpose2d([[[[1.0, 2.0]]]], [[[[1.0, -1.0]]]], stride=2, backend="naive")
    assert y.tolist() == [[[[1.0, -1.0, 2.0, -2.0]]]]


def test_inputs_are_never_modified(backend):
    x, w, b = X.copy(), W.copy(), B.copy()
    for params in (dict(stride=2, padding=1, output_padding=1), dict(stride=3), dict(stride=1, dilation=2)):
        run_or_skip(backend, x, w, b, **params)
        run_or_skip(backend, x[0], w, b, **params)
        assert np.array_equal(x, X) and np.array_equal(w, W) and np.array_equal(b, B)


def test_zero_batch_gives_empty_result(backend):
    y = run_or_skip(backend, X[:0], W, B, stride=2, padding=1)
    assert y.shape == (0, 3, 9, 9) and y.dtype == X.dtype


def test_float32_result_stays_float32(backend):
    x32, w32 = X.astype(np.float32), W.astype(np.float32)
    y = run_or_skip(backend, x32, w32, stride=2)
    assert y.dtype == np.float32
