"""Backend-specific paths of the NumPy backends that the registry-wide tests would not force."""

import numpy as np

import testbed
import testbed.backends.fft as fft_backend
from testbed.testing import assert_close, assert_close_to_oracle


def test_fft_blocks_of_output_channels_match_one_block(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 4))
    w = rng.standard_normal((6, 2, 3, 3))
    params = dict(stride=2, padding=1, output_padding=1, groups=3)
    whole = testbed.conv_transpose2d(x, w, backend="fft", **params)
    monkeypatch.setattr(fft_backend, "SPECTRUM_BUDGET_BYTES", 1)      # one output channel per block
    blocked = testbed.conv_transpose2d(x, w, backend="fft", **params)
    assert_close(blocked, whole, rtol=1e-14)
    assert_close_to_oracle(blocked, x, w, **params)


def test_polyphase_phase_subkernels_cover_every_tap_once():
    from testbed.backends.polyphase import phase_subkernels
    for kernel, stride, padding, dilation in [(3, 2, 1, 1), (5, 3, 2, 1), (2, 3, 0, 1), (3, 2, 0, 2), (4, 1, 1, 3)]:
        in_len = 6
        out_len = (in_len - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1
        pairs = set()
        for ph, _rows, taps in phase_subkernels(out_len, in_len, kernel, stride, padding, dilation):
            for k, offset, m_lo, m_hi in taps:
                for m in range(m_lo, m_hi):
                    o, i = ph + stride * m, m + offset
                    assert o + padding == i * stride + k * dilation   # the scatter definition's index rule
                    pairs.add((o, k, i))
        expected = {(i * stride + k * dilation - padding, k, i) for i in range(in_len) for k in range(kernel)
                    if 0 <= i * stride + k * dilation - padding < out_len}
        assert pairs == expected
