"""``conv_transpose2d(..., out=)`` (numpy's convention) for every registered backend, and its validation."""

import tracemalloc

import numpy as np
import pytest

import testbed
from helpers import call_arrays, run_or_skip

# (name, batch, C_in, C_out, (H, W), (kH, kW), params)
CASES = [
    ("k3s2p1op1_bias", 2, 4, 6, (5, 4), (3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("unet_k2s2", 1, 4, 2, (3, 5), (2, 2), dict(stride=2)),
    ("groups_dilation", 1, 4, 6, (4, 4), (3, 2), dict(stride=(1, 2), dilation=(2, 1), groups=2)),
    ("depthwise", 1, 3, 3, (5, 5), (4, 4), dict(stride=2, padding=1, groups=3)),
]


def _expected_and_out(impl, x, w, b, params, make_out):
    expected = run_or_skip(impl, x, w, b, **params)
    out = make_out(expected.shape, expected.dtype)
    return expected, out


def _check_same(impl, result, expected):
    if impl.deterministic:
        np.testing.assert_array_equal(result, expected)  # same code path, same summation order
    else:
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_out_receives_the_result(backend, case, dtype):
    _, batch, c_in, c_out, size, kernel, params = case
    x, w, b = call_arrays(batch, c_in, c_out, size, kernel, params, dtype, bias=case[0].endswith("bias"))
    copies = [None if a is None else a.copy() for a in (x, w, b)]
    expected, out = _expected_and_out(backend, x, w, b, params, lambda s, d: np.full(s, np.nan, dtype=d))
    result = testbed.conv_transpose2d(x, w, b, backend=backend.name, out=out, **params)
    assert result is out
    _check_same(backend, out, expected)
    for before, after in zip(copies, (x, w, b)):
        if before is not None:
            np.testing.assert_array_equal(before, after)


def test_out_unbatched_and_non_contiguous(backend):
    params = dict(stride=2, padding=1, output_padding=1)
    x, w, b = call_arrays(1, 3, 4, (4, 5), (3, 3), params, np.float32, bias=True)
    expected = run_or_skip(backend, x[0], w, b, **params)  # (C_out, H_out, W_out)
    out = np.full(expected.shape, np.nan, dtype=np.float32)
    assert testbed.conv_transpose2d(x[0], w, b, backend=backend.name, out=out, **params) is out
    _check_same(backend, out, expected)
    # every other column of a wider array: written through the view, the neighbours untouched
    wide = np.full((*expected.shape[:2], 2 * expected.shape[2]), -7.0, dtype=np.float32)
    strided = wide[:, :, ::2]
    assert testbed.conv_transpose2d(x[0], w, b, backend=backend.name, out=strided, **params) is strided
    _check_same(backend, strided, expected)
    assert (wide[:, :, 1::2] == -7.0).all()


def test_out_with_empty_batch(backend):
    x, w, _ = call_arrays(0, 2, 2, (3, 3), (2, 2), {}, np.float64, bias=False)
    out = np.empty((0, 2, 4, 4))
    assert run_or_skip(backend, x, w, None, stride=1, out=out) is out


def test_numba_cpu_writes_in_place():
    """With ``out`` the direct path allocates nothing output-sized (tracemalloc sees numpy's allocations)."""
    if not testbed.get_backend("numba_cpu").writes_out:
        pytest.fail("numba_cpu must compute into out in place")
    x, w, _ = call_arrays(1, 32, 32, (64, 64), (4, 4), dict(groups=32), np.float32, bias=False)
    params = dict(stride=2, padding=1, groups=32)
    out = np.empty(testbed.output_shape(x.shape, w.shape, **params), np.float32)
    testbed.conv_transpose2d(x, w, backend="numba_cpu", out=out, **params)  # compile / load first
    tracemalloc.start()
    try:
        testbed.conv_transpose2d(x, w, backend="numba_cpu", out=out, **params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < out.nbytes / 4, (peak, out.nbytes)


@pytest.fixture
def arrays():
    x, w, b = call_arrays(2, 3, 4, (4, 4), (3, 3), {}, np.float32, bias=True)
    return x, w, b, np.empty((2, 4, 6, 6), dtype=np.float32)


@pytest.mark.parametrize(
    "make_out, error, match",
    [
        (lambda out: out[:, :, :5], ValueError, r"out must have the output's shape \(2, 4, 6, 6\), got \(2, 4, 5, 6\)"),
        (lambda out: out[0], ValueError, "out must have the output's shape"),
        (lambda out: out.astype(np.float64), TypeError, "out must have the result's dtype float32, got float64"),
        (lambda out: out.tolist(), TypeError, "out must be a NumPy array"),
        (lambda out: np.broadcast_to(out, out.shape), ValueError, "out must be writable"),
    ],
    ids=["shape", "rank", "dtype", "list", "read-only"],
)
def test_bad_out_is_rejected(arrays, make_out, error, match):
    x, w, b, out = arrays
    with pytest.raises(error, match=match):
        testbed.conv_transpose2d(x, w, b, backend="naive", out=make_out(out))


def test_out_overlapping_an_operand_is_rejected():
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
    w = np.random.default_rng(1).standard_normal((2, 2, 1, 1))
    with pytest.raises(ValueError, match="out must not share memory with input"):
        testbed.conv_transpose2d(x, w, backend="naive", out=x)
    storage = np.zeros(2 * 2 + 32)
    bias, out = storage[:2], storage[2:34].reshape(1, 2, 4, 4)
    with pytest.raises(ValueError, match="out must not share memory with bias"):
        testbed.conv_transpose2d(x, w, storage[:2], backend="naive", out=storage[1:33].reshape(1, 2, 4, 4))
    testbed.conv_transpose2d(x, w, bias, backend="naive", out=out)  # adjacent, not overlapping: fine
    np.testing.assert_allclose(out, testbed.conv_transpose2d(x, w, bias, backend="naive"))


def test_integer_inputs_need_a_float64_out():
    x, w = np.ones((1, 1, 2, 2), dtype=np.int64), np.ones((1, 1, 2, 2), dtype=np.int32)
    with pytest.raises(TypeError, match="dtype float64"):
        testbed.conv_transpose2d(x, w, stride=2, backend="naive", out=np.empty((1, 1, 4, 4), np.float32))
    out = np.empty((1, 1, 4, 4))
    assert testbed.conv_transpose2d(x, w, stride=2, backend="naive", out=out) is out and (out == 1).all()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_out_nhwc(backend, case):
    """out= in channels last: (N, H_out, W_out, C_out), batched and unbatched."""
    _, batch, c_in, c_out, size, kernel, params = case
    x, w, b = call_arrays(batch, c_in, c_out, size, kernel, params, np.float32, bias=True)
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    expected = run_or_skip(backend, x, w, b, layout="NHWC", **params)
    out = np.full(expected.shape, np.nan, dtype=np.float32)
    assert testbed.conv_transpose2d(x, w, b, backend=backend.name, out=out, layout="NHWC", **params) is out
    _check_same(backend, out, expected)
    alone = run_or_skip(backend, x[0], w, b, layout="NHWC", **params)
    single = np.full(alone.shape, np.nan, dtype=np.float32)
    assert testbed.conv_transpose2d(x[0], w, b, backend=backend.name, out=single, layout="NHWC", **params) is single
    _check_same(backend, single, alone)
