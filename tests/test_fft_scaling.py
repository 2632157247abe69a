"""The fft backend over the dtype's range: huge values with small weights are scaled (no overflow), and a
range its rounding would swamp is declined, naming it (at every spatial rank)."""

import numpy as np
import pytest

import testbed
from testbed.testing import TOLERANCES, relative_error

#: Spatial sizes of the input per rank.
SIZES = {1: (16,), 2: (16, 16), 3: (6, 7, 5)}


def _conv_transpose(rank):
    return getattr(testbed, f"conv_transpose{rank}d")


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fft_scales_values_near_the_top_of_float32(rank):
    """Uniformly huge inputs (3e37, ~10⁵× below overflow) with small weights: before, the FFT's sums
    overflowed and every output became inf/NaN although the true outputs are ~1e35."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 3, *SIZES[rank])) * 3e37).astype(np.float32)
    w = (rng.standard_normal((3, 2, *(3,) * rank)) * 1e-3).astype(np.float32)
    conv_transpose = _conv_transpose(rank)
    y = conv_transpose(x, w, stride=2, padding=1, backend="fft")
    oracle = conv_transpose(x.astype(np.float64), w.astype(np.float64), stride=2, padding=1, backend="naive")
    assert np.isfinite(y).all() and relative_error(y, oracle) < TOLERANCES[np.dtype(np.float32)]


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("dtype,big", [(np.float32, 1e38), (np.float32, 1e30), (np.float64, 1e30)])
@pytest.mark.parametrize("where", ["input", "weight"])
def test_fft_refuses_ranges_its_rounding_would_swamp(dtype, big, where, rank):
    """One huge value among ones: the FFT's error (ε × largest, over the whole volume) turned outputs that
    should be ~1 into ~1e23 (or all of them into NaN at 1e38); now fft declines, naming the range."""
    x, w = np.ones((1, 2, *(7,) * rank), dtype), np.ones((2, 2, *(3,) * rank), dtype)
    huge_pixel, huge_tap = (0, 0, *(3, 2, 4)[:rank]), (0, 0, *(2, 1, 0)[:rank])
    if where == "input":
        x[huge_pixel] = big
    else:
        w[huge_tap] = big
    conv_transpose = _conv_transpose(rank)
    with pytest.raises(testbed.UnsupportedConfiguration, match=r"spans .*× between its largest"):
        conv_transpose(x, w, stride=2, backend="fft")
    x[huge_pixel], w[huge_tap] = 100.0, 1.0  # a range the dtype carries is computed
    y = conv_transpose(x, w, stride=2, backend="fft")
    assert relative_error(y, conv_transpose(x, w, stride=2, backend="naive")) < TOLERANCES[np.dtype(dtype)]
