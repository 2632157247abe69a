"""Backend-specific paths of the NumPy backends that the registry-wide tests would not force."""

import numpy as np
import pytest

import testbed
import testbed.backends.fft as fft_backend
from testbed.testing import assert_close, assert_close_to_oracle


@pytest.mark.parametrize("blocks", [(1, 1, 1), (2, 1, 2), (1, 2, 4)])
def test_fft_blocks_match_one_block(monkeypatch, blocks):
    """Images, output channels and column frequencies in blocks (kernel spectra recomputed per image block,
    one slab of columns at a time) give the one-block result."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 5, 4))
    w = rng.standard_normal((6, 2, 3, 3))
    params = dict(stride=2, padding=1, output_padding=1, groups=3)
    whole = testbed.conv_transpose2d(x, w, backend="fft", **params)
    problem = testbed.Problem.from_shapes(x.shape, w.shape, **params)
    fft_shape = fft_backend._fft_shape(problem)
    assert fft_backend._blocks(problem, fft_shape) == (3, 2, fft_shape[1] // 2 + 1)  # one block each
    monkeypatch.setattr(fft_backend, "_blocks", lambda problem, fft_shape: fft_backend.Blocks(*blocks))
    blocked = testbed.conv_transpose2d(x, w, backend="fft", **params)
    assert_close(blocked, whole, rtol=1e-14)
    assert_close_to_oracle(blocked, x, w, **params)


@pytest.mark.parametrize("limit_mib", [0, 1, 4])
@pytest.mark.parametrize(
    "shape",
    [
        dict(batch=8, in_channels=64, in_size=(32, 32), out_channels=64, kernel_size=3, stride=2, padding=1),
        dict(batch=2, in_channels=256, in_size=(16, 16), out_channels=128, kernel_size=4, stride=2, padding=1),
        dict(batch=4, in_channels=32, in_size=(24, 24), out_channels=32, kernel_size=2, stride=2, groups=4),
    ],
)
def test_fft_blocks_hold_at_most_the_workspace_limit(monkeypatch, shape, limit_mib):
    """The blocks chosen keep the modelled peak under Problem.workspace_limit (the model itself is checked
    against measured memory in test_memory_limits)."""
    monkeypatch.setattr(testbed.problem, "WORKSPACE_BYTES", limit_mib * 2**20)
    problem = testbed.Problem(**shape, dtype="float32")
    fft_shape = fft_backend._fft_shape(problem)
    blocks = fft_backend._blocks(problem, fft_shape)
    assert testbed.get_backend("fft").supports(problem)
    assert fft_backend._peak_bytes(problem, fft_shape, blocks) <= problem.workspace_limit
    assert blocks.images <= problem.batch and blocks.channels <= problem.out_per_group


def test_fft_declines_naming_the_bytes_it_would_need(monkeypatch):
    """Stride 4 spreads one image's 64 channels over 128×128 transforms (about 8.5 MB with one output channel):
    above a workspace limit of twice the 0.3 MB of arrays, fft declines with that size; with 16 MiB it fits."""
    problem = testbed.Problem(
        batch=1, in_channels=64, in_size=(32, 32), out_channels=1, kernel_size=3, stride=4, dtype="float32"
    )
    need = fft_backend._peak_bytes(problem, fft_backend._fft_shape(problem), fft_backend.Blocks(1, 1, 1))
    monkeypatch.setattr(testbed.problem, "WORKSPACE_BYTES", 0)
    reason = testbed.get_backend("fft").unsupported_reason(problem)
    assert problem.workspace_limit < need and reason is not None
    assert f"{need:.3g} bytes" in reason and f"{problem.workspace_limit:.3g} bytes" in reason, reason
    x, w, _ = problem.random_arrays(0)
    with pytest.raises(testbed.UnsupportedConfiguration, match="workspace limit"):
        testbed.conv_transpose2d(x, w, stride=4, backend="fft")
    monkeypatch.setattr(testbed.problem, "WORKSPACE_BYTES", 16 * 2**20)
    assert_close_to_oracle(testbed.conv_transpose2d(x, w, stride=4, backend="fft"), x, w, stride=4)


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
                    assert o + padding == i * stride + k * dilation  # the scatter definition's index rule
                    pairs.add((o, k, i))
        expected = {
            (i * stride + k * dilation - padding, k, i)
            for i in range(in_len)
            for k in range(kernel)
            if 0 <= i * stride + k * dilation - padding < out_len
        }
        assert pairs == expected


def test_single_threaded_blas_holds_in_every_thread():
    """fft and numba_cpu run their small GEMMs with BLAS on one thread; the limit must hold in whichever
    Python thread calls. Before, threadpoolctl ignored every thread but the first that had set a limit (the
    main thread, here), so a second thread's GEMMs ran on all cores and fft took 7× as long there."""
    import threading

    from threadpoolctl import threadpool_info

    from testbed.backends._blas import single_threaded_blas

    def blas_threads():
        return {info["filepath"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    default = blas_threads()
    if all(count == 1 for count in default.values()):
        pytest.skip("BLAS runs on one thread here already: nothing to limit")
    seen = {}

    def record(name):
        with single_threaded_blas():
            seen[name] = blas_threads()

    record("main")
    for name in ("second", "third"):
        thread = threading.Thread(target=record, args=(name,))
        thread.start()
        thread.join()
    record("main again")
    assert all(set(counts.values()) == {1} for counts in seen.values()), seen
    assert blas_threads() == default  # restored after each block
