"""Every registered backend against PyTorch and against the float64 scatter oracle, on a fixed grid."""

import numpy as np
import pytest

import testbed
from conftest import RTOL, call_arrays, rel_error, run_or_skip
from reference import torch_conv_transpose2d

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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", GRID, ids=[c[0] for c in GRID])
def test_matches_torch_and_oracle(backend, case, bias, dtype):
    _, batch, c_in, c_out, size, kernel, params = case
    x, w, b = call_arrays(batch, c_in, c_out, size, kernel, params, dtype, bias)
    y = run_or_skip(backend, x, w, b, **params)
    assert y.dtype == np.dtype(dtype)
    ref = torch_conv_transpose2d(x.astype(np.float64), w.astype(np.float64),
                                 None if b is None else b.astype(np.float64), **params)
    assert y.shape == ref.shape
    assert rel_error(y, ref) < RTOL[np.dtype(dtype)]
    oracle = testbed.conv_transpose2d(x.astype(np.float64), w.astype(np.float64),
                                      None if b is None else b.astype(np.float64), backend="naive", **params)
    assert rel_error(y, oracle) < RTOL[np.dtype(dtype)]


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_batch_sizes_and_unbatched(backend, batch):
    params = dict(stride=2, padding=1, output_padding=1)
    x, w, b = call_arrays(batch, 3, 4, (4, 5), (3, 3), params, np.float64, True)
    y = run_or_skip(backend, x, w, b, **params)
    assert y.shape == testbed.output_shape(x.shape, w.shape, **params)
    if batch:
        assert rel_error(y, torch_conv_transpose2d(x, w, b, **params)) < 1e-12
        y1 = run_or_skip(backend, x[0], w, b, **params)      # unbatched (C_in, H, W)
        assert y1.shape == y.shape[1:]
        assert rel_error(y1, y[0]) < 1e-12


def test_noncontiguous_and_readonly_inputs(backend):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((2, 6, 10, 9))
    x = base[:, ::2, ::2, 1:]                              # strided view, not contiguous
    w = np.asfortranarray(rng.standard_normal((3, 2, 3, 3)))
    b = rng.standard_normal(2)
    for a in (base, w, b):
        a.flags.writeable = False
    y = run_or_skip(backend, x, w, b, stride=2, padding=1)
    assert rel_error(y, torch_conv_transpose2d(x, w, b, stride=2, padding=1)) < 1e-12
