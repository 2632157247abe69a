"""Every registered backend against the float64 oracle (no torch needed) and, as separate tests, against
PyTorch, on a fixed grid; batch handling and unusual memory layouts. No backend is compared with itself:
``naive`` (the oracle's backend) is not parametrised for the oracle test, nor ``torch`` for the torch test."""

import numpy as np
import pytest

import testbed
from helpers import call_arrays, call_problem, run_or_skip
from reference import torch_conv_transpose2d
from testbed.planner import choose_backend
from testbed.testing import assert_close, assert_close_to_oracle

# (name, batch, C_in, C_out, (H, W), (kH, kW), params): odd sizes, asymmetric everything, groups, depthwise,
# output_padding, dilation, stride > kernel, padding that crops into the kernel's reach.
GRID = [
    ("unet_k2s2", 2, 4, 3, (5, 7), (2, 2), dict(stride=2)),
    ("k3s2p1op1", 3, 3, 5, (6, 5), (3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("k4s2p1", 1, 6, 4, (7, 7), (4, 4), dict(stride=2, padding=1)),
    ("asym", 2, 4, 6, (5, 6), (3, 4), dict(stride=(2, 3), padding=(1, 2), output_padding=(1, 0))),
    ("groups2", 1, 4, 6, (5, 6), (3, 4), dict(stride=(2, 3), padding=(1, 2), output_padding=(1, 0), groups=2)),
    ("depthwise", 2, 6, 6, (4, 5), (3, 3), dict(stride=2, padding=1, groups=6)),
    ("depthwise_mult", 1, 3, 6, (4, 5), (3, 2), dict(stride=(1, 2), groups=3)),
    ("dilation", 3, 4, 4, (4, 5), (3, 3), dict(stride=1, padding=1, dilation=(2, 1))),
    ("dilated_strided_op", 1, 2, 3, (3, 4), (2, 3), dict(stride=(3, 2), output_padding=(2, 1), dilation=(3, 2))),
    ("op_lt_dilation", 1, 2, 2, (3, 4), (2, 2), dict(stride=1, output_padding=1, dilation=2)),
    ("stride_gt_kernel", 1, 3, 2, (4, 3), (2, 2), dict(stride=3, padding=0, output_padding=2)),
    ("k5s3", 1, 2, 3, (4, 4), (5, 5), dict(stride=3, padding=2, output_padding=(2, 1))),
    ("big_padding", 2, 3, 2, (6, 6), (3, 3), dict(stride=2, padding=3)),
    ("k1", 2, 5, 3, (4, 6), (1, 1), dict(stride=1)),
    ("k1s2", 1, 2, 3, (3, 3), (1, 1), dict(stride=2, output_padding=1)),
    ("s_eq_k_padded", 1, 3, 4, (5, 4), (3, 2), dict(stride=(3, 2), padding=(1, 1), output_padding=(2, 1))),
    ("groups_s_eq_k", 2, 4, 6, (3, 3), (2, 2), dict(stride=2, groups=2)),
    ("batch1_1x1_image", 1, 3, 2, (1, 1), (3, 3), dict(stride=2)),
]


GRID_IDS = [c[0] for c in GRID]


def grid_call(case, bias, dtype):
    """``(x, w, b, params)`` of a GRID case."""
    _, batch, c_in, c_out, size, kernel, params = case
    return (*call_arrays(batch, c_in, c_out, size, kernel, params, dtype, bias), params)


@pytest.mark.reference_backends("naive")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", GRID, ids=GRID_IDS)
def test_matches_oracle(backend, case, bias, dtype):
    x, w, b, params = grid_call(case, bias, dtype)
    y = run_or_skip(backend, x, w, b, **params)
    assert_close_to_oracle(y, x, w, b, err_msg=backend.name, **params)


@pytest.mark.reference_backends("torch")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", GRID, ids=GRID_IDS)
def test_matches_torch(backend, case, bias, dtype):
    """PyTorch's float64 result on the widened inputs, an oracle independent of this project."""
    pytest.importorskip("torch")
    x, w, b, params = grid_call(case, bias, dtype)
    if backend.name == "auto" and choose_backend(call_problem(x, w, b, **params)).name == "torch":
        pytest.skip("auto dispatches this case to torch: it would be compared with itself")
    y = run_or_skip(backend, x, w, b, **params)
    assert y.dtype == np.dtype(dtype)
    widened = [None if a is None else a.astype(np.float64) for a in (x, w, b)]
    assert_close(y, torch_conv_transpose2d(*widened, **params), err_msg=backend.name)


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_batch_sizes_and_unbatched(backend, batch):
    """Every image of a batch is computed as if alone, and an unbatched (C_in, H, W) input as a batch of one
    (values against the oracle are test_matches_oracle's: this needs no reference backend)."""
    params = dict(stride=2, padding=1, output_padding=1)
    x, w, b = call_arrays(batch, 3, 4, (4, 5), (3, 3), params, np.float64, True)
    y = run_or_skip(backend, x, w, b, **params)
    assert y.shape == testbed.output_shape(x.shape, w.shape, **params) and y.dtype == np.float64
    for image in range(batch):
        alone = run_or_skip(backend, x[image], w, b, **params)  # unbatched (C_in, H, W)
        assert alone.shape == y.shape[1:]
        assert_close(alone, y[image])


def test_noncontiguous_and_readonly_inputs(backend):
    """Strided, Fortran-ordered and read-only inputs give the result of their contiguous copies."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((2, 6, 10, 9))
    x = base[:, ::2, ::2, 1:]  # strided view, not contiguous
    w = np.asfortranarray(rng.standard_normal((3, 2, 3, 3)))
    b = rng.standard_normal(2)
    for a in (base, w, b):
        a.flags.writeable = False
    contiguous = [np.ascontiguousarray(a) for a in (x, w, b)]
    y = run_or_skip(backend, x, w, b, stride=2, padding=1)
    assert_close(y, run_or_skip(backend, *contiguous, stride=2, padding=1))
    for view, copy in zip((x, w, b), contiguous):
        assert np.array_equal(view, copy)


def _nhwc(array):
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1))


@pytest.mark.reference_backends("naive")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", GRID, ids=GRID_IDS)
def test_nhwc_matches_oracle(backend, case, dtype):
    """Channels last: input (N, H, W, C_in) and result (N, H_out, W_out, C_out), computed natively or through
    the dispatcher's conversion, against the NCHW oracle transposed."""
    x, w, b, params = grid_call(case, True, dtype)
    y = run_or_skip(backend, _nhwc(x), w, b, layout="NHWC", **params)
    assert y.dtype == np.dtype(dtype) and y.flags.c_contiguous
    assert_close_to_oracle(y.transpose(0, 3, 1, 2), x, w, b, err_msg=f"{backend.name} NHWC", **params)


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_nhwc_batches_unbatched_and_strided(backend, batch):
    """NHWC batches agree with NCHW image by image; an unbatched (H, W, C_in) input is a batch of one; a
    strided NHWC view gives its contiguous copy's result."""
    params = dict(stride=2, padding=1, output_padding=1)
    x, w, b = call_arrays(batch, 3, 4, (4, 5), (2, 2), params, np.float64, True)
    nchw = run_or_skip(backend, x, w, b, **params)
    y = run_or_skip(backend, _nhwc(x), w, b, layout="NHWC", **params)
    assert y.shape == testbed.output_shape(_nhwc(x).shape, w.shape, layout="NHWC", **params)
    assert_close(y.transpose(0, 3, 1, 2), nchw)
    for image in range(batch):
        alone = run_or_skip(backend, _nhwc(x)[image], w, b, layout="NHWC", **params)
        assert_close(alone, y[image])
    wide = np.zeros((batch, 4, 5, 6))
    wide[..., ::2] = _nhwc(x)
    assert_close(run_or_skip(backend, wide[..., ::2], w, b, layout="NHWC", **params), y)
