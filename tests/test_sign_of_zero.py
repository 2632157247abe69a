"""The sign of zero is PyTorch's on every backend: outputs are never -0.0 (sums start from +0.0, the bias is
added last), whatever the bias."""

import numpy as np
import pytest

from helpers import run_or_skip
from reference import torch_conv_transpose2d

ZERO_CASES = [  # (C_in, C_out, groups, kernel, stride, padding): every numba_cpu path, outputs no tap reaches
    (1, 1, 1, 2, 2, 0),
    (4, 4, 1, 2, 2, 0),
    (8, 8, 1, 1, 5, 2),
    (4, 8, 1, 3, 2, 1),
    (4, 4, 4, 3, 1, 0),
]


@pytest.mark.parametrize("bias", ["none", "+0", "-0"])
@pytest.mark.parametrize("case", ZERO_CASES, ids=[str(c) for c in ZERO_CASES])
def test_sign_of_zero_is_torchs(backend, case, bias):
    """-0.0 inputs times ±1 weights, bias none/+0/-0: PyTorch's output is never -0.0 (+0-started sums, bias
    last); numba_cpu's bias-first accumulation gave -0.0."""
    c_in, c_out, groups, k, s, p = case
    x = np.full((2, c_in, 3, 3), -0.0)
    w = np.where(np.random.default_rng(0).random((c_in, c_out // groups, k, k)) < 0.5, 1.0, -1.0)
    b = {"none": None, "+0": np.zeros(c_out), "-0": np.full(c_out, -0.0)}[bias]
    params = dict(stride=s, padding=p, groups=groups)
    y = run_or_skip(backend, x, w, b, **params)
    reference = torch_conv_transpose2d(x, w, b, **params)
    assert np.array_equal(y, reference) and np.array_equal(np.signbit(y), np.signbit(reference))
